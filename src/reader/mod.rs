//! The one image reader: any byte range of any image, as restore, verify, check (and, next,
//! mount, NBD and the file browser) need it. An image's chain is resolved once into an
//! `ImageMap` (its chunk extents in disk order; everything between them reads as zeros); chunk
//! bytes come through a bounded cache of decoded frames, so each frame is read and decoded once
//! while cached, and every chunk is verified against its id before a byte of it is returned.
//! When the copy the index names is damaged or gone, an intact copy in another pack is used
//! (`Copies`).
//!
//! It depends on two narrow seams only: `storage::Backend` for bytes and `index::ChunkLookup`
//! for where chunks are, so object storage and test doubles plug in beneath it unchanged.

mod cache;
mod copies;

pub use cache::FrameCache;
pub use copies::Copies;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use crate::crypto::Protection;
use crate::error::{Error, Result};
use crate::id::{ChunkId, ImageId};
use crate::index::{ChunkLoc, ChunkLookup};
use crate::manifest::{catalog, Content, Extent, ImageInfo};
use crate::pack::{chunk_of_frame, decode_frame_into, unseal_frame};
use crate::storage::Backend;
use cache::{Decoded, Frame, FrameError};

/// Pieces are checked on the pool only when a read holds more than this many bytes of them;
/// below it the calling thread is faster than handing work to the pool (a file reader asking
/// 256 KiB at a time spent a quarter of its time waking pool threads).
const PARALLEL_BYTES: u64 = 1 << 20;

/// One chunk extent of an image's resolved view: bytes `skip .. skip + len` of chunk `id`, at
/// `offset` on the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub offset: u64,
    pub len: u32,
    pub skip: u32,
    pub id: ChunkId,
}

impl Piece {
    pub fn end(&self) -> u64 {
        self.offset + self.len as u64
    }
}

/// The resolved view of one image, held in memory (48 bytes per chunk extent; zeros cost
/// nothing): built once from the chain, every manifest of which is checked whole.
pub struct ImageMap {
    info: ImageInfo,
    pieces: Vec<Piece>,
}

impl ImageMap {
    /// Resolves `image`'s chain (as its manifests say) into its map.
    pub fn resolve(backend: &dyn Backend, image: &ImageInfo) -> Result<ImageMap> {
        let chain = catalog::chain(backend, image)?;
        Self::of_chain(backend, image, &chain)
    }

    /// A map that holds no piece: for a reader used only to fetch chunks by id (`copy`), whose
    /// errors name `image`.
    pub(crate) fn without_pieces(image: &ImageInfo) -> ImageMap {
        ImageMap { info: image.clone(), pieces: Vec::new() }
    }

    /// The map of the last image of `chain` (full first).
    pub fn of_chain(backend: &dyn Backend, image: &ImageInfo, chain: &[ImageInfo]) -> Result<ImageMap> {
        let mut pieces = Vec::new();
        for e in catalog::view(backend, chain)? {
            let e = e?;
            if let Content::Chunk { id, skip } = e.content {
                // A chunk extent is at most one chunk long, far below u32::MAX.
                pieces.push(Piece { offset: e.offset, len: e.len as u32, skip, id });
            }
        }
        Ok(ImageMap { info: image.clone(), pieces })
    }

    pub fn info(&self) -> &ImageInfo {
        &self.info
    }

    /// The disk's size.
    pub fn size(&self) -> u64 {
        self.info.logical_bytes
    }

    /// Every chunk extent, in disk order.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// The chunk extents that overlap `range`.
    pub fn pieces_in(&self, range: Range<u64>) -> &[Piece] {
        let first = self.pieces.partition_point(|p| p.end() <= range.start);
        let last = self.pieces.partition_point(|p| p.offset < range.end);
        &self.pieces[first..last.max(first)]
    }

    /// The map of the bytes in `range` alone, as a disk of its own (a partition): offsets start
    /// at 0 and the size is the range's length.
    pub fn window(&self, range: Range<u64>) -> ImageMap {
        let end = range.end.min(self.size());
        let pieces = self
            .pieces_in(range.start..end)
            .iter()
            .map(|p| {
                let (from, to) = (range.start.max(p.offset), end.min(p.end()));
                // Within one piece, so the clipped length and the new skip stay below u32::MAX.
                Piece {
                    offset: from - range.start,
                    len: (to - from) as u32,
                    skip: p.skip + (from - p.offset) as u32,
                    id: p.id,
                }
            })
            .collect();
        let mut info = self.info.clone();
        info.logical_bytes = end.saturating_sub(range.start);
        ImageMap { info, pieces }
    }

    /// The first offset at or after `from` that holds data (`SEEK_DATA`); None past the last.
    pub fn next_data(&self, from: u64) -> Option<u64> {
        if from >= self.size() {
            return None;
        }
        let first = self.pieces.partition_point(|p| p.end() <= from);
        self.pieces.get(first).map(|p| p.offset.max(from))
    }

    /// The first offset at or after `from` in a zero run, or the disk's end (`SEEK_HOLE`); None
    /// from the end on.
    pub fn next_hole(&self, from: u64) -> Option<u64> {
        if from >= self.size() {
            return None;
        }
        let mut at = from;
        for p in &self.pieces[self.pieces.partition_point(|p| p.end() <= from)..] {
            if p.offset > at {
                break;
            }
            at = p.end();
        }
        Some(at.min(self.size()))
    }

    /// The view's extents within `range`, clipped to it, zero runs included.
    pub fn extents(&self, range: Range<u64>) -> Vec<Extent> {
        let end = range.end.min(self.size());
        let mut out = Vec::new();
        let mut at = range.start;
        for p in self.pieces_in(range.start..end) {
            if p.offset > at {
                out.push(Extent::zero(at, p.offset - at));
            }
            let whole =
                Extent { offset: p.offset, len: p.len as u64, content: Content::Chunk { id: p.id, skip: p.skip } };
            let e = whole.slice(range.start.max(p.offset), end.min(p.end()));
            at = e.end();
            out.push(e);
        }
        if at < end {
            out.push(Extent::zero(at, end - at));
        }
        out
    }
}

/// Reads images: see the module documentation.
pub struct ImageReader {
    backend: Arc<dyn Backend>,
    index: Arc<dyn ChunkLookup>,
    protection: Protection,
    map: ImageMap,
    cache: Arc<FrameCache>,
    copies: Copies,
    /// Use other copies of a chunk whose indexed copy fails (see `strict`).
    fallback: bool,
}

/// The default cap on decoded frames held by one reader.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

impl ImageReader {
    /// A reader of `image`, its chain resolved once, holding at most `cache_bytes` of decoded
    /// frames.
    pub fn open(
        backend: Arc<dyn Backend>,
        index: Arc<dyn ChunkLookup>,
        protection: Protection,
        image: &ImageInfo,
        cache_bytes: u64,
    ) -> Result<ImageReader> {
        let map = ImageMap::resolve(backend.as_ref(), image)?;
        Ok(Self::with_map(backend, index, protection, map, Arc::new(FrameCache::new(cache_bytes))))
    }

    /// A reader of `map`'s image whose decoded frames go to `cache`, which several readers may
    /// share (frames are named by pack and offset, the same for every image).
    pub fn with_map(
        backend: Arc<dyn Backend>,
        index: Arc<dyn ChunkLookup>,
        protection: Protection,
        map: ImageMap,
        cache: Arc<FrameCache>,
    ) -> ImageReader {
        ImageReader { backend, index, protection, map, cache, copies: Copies::default(), fallback: true }
    }

    /// Reads only the copies the index names: a chunk whose indexed copy fails is an error even
    /// when another pack holds it intact (`check` reports those copies itself).
    pub fn strict(mut self) -> Self {
        self.fallback = false;
        self
    }

    /// This reader, reading only `range` of the image as a disk of its own (a partition).
    pub fn into_window(mut self, range: Range<u64>) -> Self {
        self.map = self.map.window(range);
        self
    }

    pub fn map(&self) -> &ImageMap {
        &self.map
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn index(&self) -> &dyn ChunkLookup {
        self.index.as_ref()
    }

    /// How the repository names chunks and seals objects.
    pub fn protection(&self) -> &Protection {
        &self.protection
    }

    /// Another copy of a chunk when the indexed one fails (see `Copies`).
    pub fn copies(&self) -> &Copies {
        &self.copies
    }

    fn image(&self) -> ImageId {
        self.map.info.id
    }

    /// Fills `buf` with the image's bytes at `offset` (fewer at the end of the disk) and returns
    /// how many. A range that meets a chunk which cannot be read intact is an error; no wrong
    /// byte is ever returned. Chunk bytes go from the decoded frame straight into `buf`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let end = offset.saturating_add(buf.len() as u64).min(self.map.size());
        if offset >= end {
            return Ok(0);
        }
        let n = (end - offset) as usize;
        let pieces = self.map.pieces_in(offset..end);
        // Each piece's share of `buf` (pieces are sorted and disjoint); zeros between them.
        let mut slots: Vec<(&mut [u8], usize, Result<()>)> = Vec::with_capacity(pieces.len());
        let mut rest = &mut buf[..n];
        let mut at = offset;
        for p in pieces {
            let (from, to) = (offset.max(p.offset), end.min(p.end()));
            let (gap, tail) = rest.split_at_mut((from - at) as usize);
            gap.fill(0);
            let (dst, tail) = tail.split_at_mut((to - from) as usize);
            slots.push((dst, (from - p.offset) as usize, Ok(())));
            rest = tail;
            at = to;
        }
        rest.fill(0);
        self.visit(pieces, &mut slots, |bytes, (dst, skip, result)| match bytes {
            Ok(b) => dst.copy_from_slice(&b[*skip..*skip + dst.len()]),
            Err(e) => *result = Err(e),
        })?;
        for (_, _, result) in slots {
            result?;
        }
        Ok(n)
    }

    /// The bytes of each piece, verified, in parallel: the outer error is the index's, an inner
    /// one says why that piece cannot be had (`ChunkMissing`, `CorruptChunk`, `CorruptPack`).
    pub fn fetch(&self, pieces: &[Piece]) -> Result<Vec<Result<Vec<u8>>>> {
        let mut out: Vec<Result<Vec<u8>>> = pieces.iter().map(|_| Ok(Vec::new())).collect();
        self.visit(pieces, &mut out, |bytes, slot| *slot = bytes.map(<[u8]>::to_vec))?;
        Ok(out)
    }

    /// Copies each piece's verified bytes into its buffer (exactly as long as the piece), pieces
    /// in parallel, and says for each whether it could (as `fetch`): for callers that reuse
    /// their buffers instead of receiving fresh ones.
    pub fn fetch_into(&self, pieces: &[Piece], bufs: &mut [&mut [u8]]) -> Result<Vec<Result<()>>> {
        let mut slots: Vec<(&mut [u8], Result<()>)> = bufs.iter_mut().map(|b| (&mut **b, Ok(()))).collect();
        self.visit(pieces, &mut slots, |bytes, (dst, result)| match bytes {
            Ok(b) if b.len() == dst.len() => dst.copy_from_slice(b),
            Ok(_) => *result = Err(Error::Internal { reason: "a buffer is not as long as its piece".into() }),
            Err(e) => *result = Err(e),
        })?;
        Ok(slots.into_iter().map(|(_, r)| r).collect())
    }

    /// The stored bytes of those of `frames` the cache lacks, read in one batch, when the
    /// storage takes several requests at once (a bucket); nothing for a disk, whose frames are
    /// read where they are decoded.
    fn prefetch(&self, frames: &[ChunkLoc]) -> HashMap<(crate::id::PackId, u64), Result<Vec<u8>>> {
        let backend = self.backend();
        if backend.concurrent_requests() <= 1 || frames.len() <= 1 {
            return HashMap::new();
        }
        let missing: Vec<&ChunkLoc> = frames.iter().filter(|l| !self.cache.holds((l.pack, l.slot.offset))).collect();
        let reads: Vec<(String, u64, usize)> =
            missing.iter().map(|l| (l.pack.path(), l.slot.offset, l.slot.stored_len as usize)).collect();
        missing.iter().map(|l| (l.pack, l.slot.offset)).zip(backend.read_ranges(&reads)).collect()
    }

    /// Calls `f` with each piece's verified bytes (or why they cannot be had) and that piece's
    /// slot, pieces in parallel. Decoded frames are held at most `cap / 2` at once per call, so
    /// a piece list that takes one chunk from each of many frames stays bounded too. The error
    /// returned is the index's or the storage's, not a piece's.
    fn visit<T: Send>(
        &self,
        pieces: &[Piece],
        slots: &mut [T],
        f: impl Fn(Result<&[u8]>, &mut T) + Sync,
    ) -> Result<()> {
        let ids: Vec<ChunkId> = pieces.iter().map(|p| p.id).collect();
        let locs = self.index.locate(&ids)?;
        let budget = (self.cache.cap() / 2).max(crate::pack::MAX_FRAME_LEN as u64);
        let fatal = std::sync::Mutex::new(None);
        let mut start = 0;
        while start < pieces.len() {
            let (end, frames) = frame_group(&locs[start..], budget);
            let end = start + end;
            // A store over the network gets the group's frames in one batch of requests sent at
            // once, instead of one round trip after another on the pool's threads.
            let mut fetched = self.prefetch(&frames);
            let fetched = std::sync::Mutex::new(&mut fetched);
            // The group's chunks of each frame, hashed by the thread that decoded it while its
            // bytes are in that core's cache (instead of read again from memory for each piece).
            let mut wanted: HashMap<(crate::id::PackId, u64), Vec<cache::ChunkAt>> = HashMap::new();
            for (p, l) in pieces[start..end].iter().zip(&locs[start..end]) {
                if let Some(l) = l {
                    wanted.entry((l.pack, l.slot.offset)).or_default().push((l.slot.skip, l.slot.raw_len, p.id));
                }
            }
            let frame = |loc: &ChunkLoc| {
                let key = (loc.pack, loc.slot.offset);
                let stored = fetched.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                let got = self.cache.get(key, |buf| read_frame(self.backend(), &self.protection, loc, stored, buf));
                if let (Ok(decoded), Some(chunks)) = (&got, wanted.get(&key)) {
                    decoded.check(chunks, |skip, len, id| {
                        chunk_of_frame(&self.protection, id, &decoded.bytes, skip, len).is_ok()
                    });
                }
                (key, got)
            };
            // Small reads stay on the calling thread: handing one frame to the pool costs more
            // than the work (mount and NBD serve many small reads, each on its own thread).
            let bytes: u64 = pieces[start..end].iter().map(|p| p.len as u64).sum();
            let decoded: HashMap<(crate::id::PackId, u64), Frame> = if frames.len() > 1 {
                frames.par_iter().map(frame).collect()
            } else {
                frames.iter().map(frame).collect()
            };
            let one = |((p, loc), slot): ((&Piece, &Option<ChunkLoc>), &mut T)| {
                let frame = loc.and_then(|l| decoded.get(&(l.pack, l.slot.offset)));
                if let Err(e) = self.with_piece(p, loc.as_ref(), frame, |bytes| f(bytes, slot)) {
                    *fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            };
            let (ps, ls, ss) = (&pieces[start..end], &locs[start..end], &mut slots[start..end]);
            // Checking a chunk costs microseconds; the pool pays off only for a megabyte or more.
            if bytes > PARALLEL_BYTES {
                ps.par_iter().zip(ls).zip(ss.par_iter_mut()).for_each(one);
            } else {
                ps.iter().zip(ls).zip(ss.iter_mut()).for_each(one);
            }
            if let Some(e) = fatal.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return Err(e);
            }
            start = end;
        }
        Ok(())
    }

    /// Calls `use_bytes` with one piece's bytes from its decoded frame, or from an intact copy
    /// elsewhere, or with why neither can be had. The error returned is the storage's, from
    /// looking for other copies.
    fn with_piece(
        &self,
        p: &Piece,
        loc: Option<&ChunkLoc>,
        frame: Option<&Frame>,
        use_bytes: impl FnOnce(Result<&[u8]>),
    ) -> Result<()> {
        match self.chunk_from(p.id, loc, frame) {
            Ok(raw) => use_bytes(self.piece_of(p, raw)),
            // The copy the index names is damaged or gone: another pack may hold an intact one.
            Err(err) if !self.fallback => use_bytes(Err(err)),
            Err(err) => match self.copies.intact(self.backend(), &self.protection, &p.id, loc)? {
                Some((_, raw)) => use_bytes(self.piece_of(p, &raw)),
                None => use_bytes(Err(err)),
            },
        }
        Ok(())
    }

    /// Piece `p`'s bytes out of its whole chunk `raw`.
    fn piece_of<'r>(&self, p: &Piece, raw: &'r [u8]) -> Result<&'r [u8]> {
        let (s, n) = (p.skip as usize, p.len as usize);
        raw.get(s..s + n).ok_or_else(|| Error::CorruptManifest {
            image: self.image().to_string(),
            reason: format!("extent at {} reaches past the end of chunk {}", p.offset, p.id),
        })
    }

    /// The chunk `id` (verified) out of its decoded frame.
    fn chunk_from<'f>(&self, id: ChunkId, loc: Option<&ChunkLoc>, frame: Option<&'f Frame>) -> Result<&'f [u8]> {
        let loc = loc.ok_or_else(|| Error::ChunkMissing { id: id.to_string(), image: self.image().to_string() })?;
        let corrupt = |reason: String| Error::CorruptChunk { id: id.to_string(), pack: loc.pack.to_string(), reason };
        match frame {
            Some(Ok(decoded)) => {
                let (skip, len) = (loc.slot.skip, loc.slot.raw_len);
                if decoded.was_checked(skip, len, &id) {
                    let end = skip as usize + len as usize;
                    return decoded.bytes.get(skip as usize..end).ok_or_else(|| corrupt("outside its frame".into()));
                }
                let raw = chunk_of_frame(&self.protection, id, &decoded.bytes, skip, len)
                    .map_err(|e| corrupt(e.to_string()))?;
                decoded.mark_checked(skip, len, id);
                Ok(raw)
            }
            Some(Err(FrameError::Undecodable(why))) => Err(corrupt(why.clone())),
            Some(Err(FrameError::Unreadable(why))) => Err(Error::CorruptPack {
                pack: loc.pack.to_string(),
                reason: format!("chunk {id} cannot be read: {why}"),
            }),
            None => Err(corrupt("its frame was not read".into())),
        }
    }
}

/// The first run of `locs` whose distinct frames decode to at most `budget` bytes (at least one
/// piece), with those frames.
fn frame_group(locs: &[Option<ChunkLoc>], budget: u64) -> (usize, Vec<ChunkLoc>) {
    let mut seen = std::collections::HashSet::new();
    let mut frames = Vec::new();
    let mut bytes = 0u64;
    for (i, loc) in locs.iter().enumerate() {
        if let Some(l) = loc {
            if seen.insert((l.pack, l.slot.offset)) {
                if bytes > 0 && bytes + l.slot.frame_raw as u64 > budget {
                    return (i, frames);
                }
                bytes += l.slot.frame_raw as u64;
                frames.push(*l);
            }
        }
    }
    (locs.len(), frames)
}

/// Reads (unless `fetched` already holds its stored bytes) and decodes the frame at `loc` (all
/// the chunks it holds) into `buf`.
fn read_frame(
    backend: &dyn Backend,
    n: &Protection,
    loc: &ChunkLoc,
    fetched: Option<Result<Vec<u8>>>,
    mut buf: Vec<u8>,
) -> Frame {
    let read = || backend.read_at(&loc.pack.path(), loc.slot.offset, loc.slot.stored_len as usize);
    let mut stored = fetched.unwrap_or_else(read).map_err(|err| FrameError::Unreadable(err.to_string()))?;
    let stored =
        unseal_frame(n, &loc.pack, &loc.slot, &mut stored).map_err(|err| FrameError::Undecodable(err.to_string()))?;
    decode_frame_into(loc.slot.codec, stored, loc.slot.frame_raw, &mut buf)
        .map_err(|err| FrameError::Undecodable(err.to_string()))?;
    Ok(Arc::new(Decoded::new(buf)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Kind;

    /// A 100-byte disk with data at 10..20, 20..30 and 50..60.
    fn map() -> ImageMap {
        let mut info = ImageInfo::fixture(1, Kind::Full, None, 1, 0);
        info.logical_bytes = 100;
        let piece = |offset| Piece { offset, len: 10, skip: 0, id: ChunkId([offset as u8; 32]) };
        ImageMap { info, pieces: vec![piece(10), piece(20), piece(50)] }
    }

    #[test]
    fn data_and_holes_are_found_as_seek_data_and_seek_hole_would() {
        let m = map();
        let data: Vec<_> = [0, 10, 15, 29, 30, 55, 60, 99, 100].iter().map(|&o| m.next_data(o)).collect();
        assert_eq!(data, [Some(10), Some(10), Some(15), Some(29), Some(50), Some(55), None, None, None]);
        let holes: Vec<_> = [0, 10, 25, 30, 50, 59, 60, 99, 100].iter().map(|&o| m.next_hole(o)).collect();
        assert_eq!(holes, [Some(0), Some(30), Some(30), Some(30), Some(60), Some(60), Some(60), Some(99), None]);
        // Data up to the end: the end is the hole.
        let w = m.window(50..60);
        assert_eq!((w.next_data(0), w.next_hole(0)), (Some(0), Some(10)));
    }
}
