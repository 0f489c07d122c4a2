//! Restore: an image's bytes, through the image reader, written to a file (zero runs stay holes)
//! or a block device, verifying every chunk against its id. Everything that can be checked
//! without reading chunk data is checked before the first byte is written.

mod delta;
mod target;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::id::PackId;
use crate::index::ChunkLoc;
use crate::manifest::ImageInfo;
use crate::progress::Progress;
use crate::reader::{ImageReader, Piece};
use crate::repository::Repository;
use target::{
    directory_of, open_device, open_direct, open_target, settle, start_writeback, write_run, write_zeros, Target, ALIGN,
};

/// A batch holds at most this many pieces and this many bytes of chunk data: memory stays a few
/// batches (three in flight: decoded, waiting, written) whatever the chunk size or disk size.
#[cfg(not(feature = "failpoints"))]
const BATCH: usize = 2048;
#[cfg(not(feature = "failpoints"))]
const BATCH_BYTES: u64 = 32 << 20;
/// Test builds use small batches, so that the small disks of the tests are restored in many
/// batches too: buffers are reused and settling lags as on a real disk.
#[cfg(feature = "failpoints")]
const BATCH: usize = 16;
#[cfg(feature = "failpoints")]
const BATCH_BYTES: u64 = 256 << 10;

/// A batch buffer's size: a batch's bytes, a last piece that passes `BATCH_BYTES`, and the padding
/// of `layout`, all but always within it.
const BUFFER_BYTES: usize = BATCH_BYTES as usize + BATCH_BYTES as usize / 8;

/// Batches written after the one a restore settles (waits for on the disk, drops from the page
/// cache): the disk has had this long for it, and its pages are soon written into again.
const SETTLE_LAG: usize = 3;

/// A batch is fetched in this many parts at once (see `decode`).
const PARTS: usize = 4;

/// Decoded frames a restore keeps: enough for a batch, whose pieces may each come from another
/// frame (the reader bounds each call at half of it).
const CACHE_BYTES: u64 = 64 << 20;

#[derive(Clone, Debug, PartialEq)]
pub struct RestoreReport {
    pub bytes: u64,
    pub zero_bytes: u64,
    /// Bytes written to the target (a delta restore writes only what differs; holes punched
    /// count as written).
    pub written_bytes: u64,
    /// With `partial`: the ranges written as zeros because their chunks are damaged or missing.
    pub damaged: Vec<DamagedRange>,
    pub seconds: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Restore what can be restored: ranges whose chunks are damaged or missing become zeros
    /// (holes in a file) and are listed in the report, instead of failing the restore.
    pub partial: bool,
    /// Write to a block device even when it is mounted or otherwise in use (opened without
    /// `O_EXCL`).
    pub force: bool,
    /// Restore only this partition of the image (`IMAGE:N`), as a disk of its own.
    pub partition: Option<u32>,
    /// The target holds an older copy: write only what differs, in place (see `delta`).
    pub delta: bool,
}

/// A range of the disk that a partial restore could not recover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedRange {
    pub offset: u64,
    pub len: u64,
    pub reason: String,
}

/// Restores `image` to `target`, which is created, replaced, or (a block device) written over.
pub fn restore(repo: &Repository, image: &ImageInfo, target: &Path, progress: &dyn Progress) -> Result<RestoreReport> {
    restore_with(repo, image, target, &RestoreOptions::default(), progress)
}

/// A file target is written under a temporary name beside it and renamed over it only when
/// everything was written and verified, so a failed restore leaves the target as it was. A block
/// device cannot be replaced: there every chunk is read and verified before the first write.
pub fn restore_with(
    repo: &Repository,
    image: &ImageInfo,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let started = Instant::now();
    if opts.delta {
        return restore_delta(repo, image, target, opts, progress);
    }
    let is_device = std::fs::metadata(target).map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    let is_device = is_device.unwrap_or(false);
    if is_device {
        // Before the (long) preflight: a device in use is refused at once.
        drop(open_device(target, opts.force)?);
    }
    let reader = open_reader(repo, image, opts.partition)?;
    let size = reader.map().size();
    preflight(&reader, opts.partial, is_device)?;
    let (out, temp) = open_target(target, size, opts.force)?;
    let direct = open_direct(temp.as_deref().unwrap_or(target));
    let finished = write_all(&reader, &out, direct, target, opts, progress).and_then(|damaged| {
        out.file().sync_all().map_err(|e| Error::io("fsync", target, e))?;
        if let Some(temp) = &temp {
            crate::failpoint::hit!("restore-before-rename");
            std::fs::rename(temp, target).map_err(|e| Error::io("rename", temp, e))?;
            crate::storage::sync_dir(directory_of(target))?;
        }
        Ok(damaged)
    });
    let damaged = match (finished, &temp) {
        (Ok(damaged), _) => damaged,
        // Whatever failed before the rename, the target keeps what it held and the temporary
        // file goes (a full disk must not stay full of a half-restored image); after the rename
        // (the directory's fsync) there is no temporary file left to remove.
        (Err(e), Some(temp)) => {
            let _ = std::fs::remove_file(temp);
            return Err(e);
        }
        (Err(e), None) => return Err(e),
    };
    progress.end();
    let data = data_bytes(&reader);
    Ok(report(&reader, if is_device { size } else { data }, damaged, started))
}

/// A reader of `image`, or of its partition `partition` as a disk of its own.
fn open_reader(repo: &Repository, image: &ImageInfo, partition: Option<u32>) -> Result<ImageReader> {
    let reader = repo.reader(image, CACHE_BYTES)?;
    match partition {
        Some(n) => crate::partition::narrow(reader, n),
        None => Ok(reader),
    }
}

/// `restore_with` for `opts.delta`: the target exists and holds an older copy (see `delta`).
/// Everything that can be checked without chunk data is checked before the first write.
fn restore_delta(
    repo: &Repository,
    image: &ImageInfo,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let started = Instant::now();
    if opts.partial {
        return Err(Error::DeltaPartial);
    }
    let (f, device) = delta::open(target, opts.force)?;
    let reader = open_reader(repo, image, opts.partition)?;
    preflight(&reader, false, false)?;
    let done = delta::apply(&reader, &f, device, target, progress)?;
    Ok(report(&reader, done.written, Vec::new(), started))
}

/// Bytes of chunk data in the image (the rest is zeros).
fn data_bytes(reader: &ImageReader) -> u64 {
    let data: u64 = reader.map().pieces().iter().map(|p| p.len as u64).sum();
    data.min(reader.map().size())
}

fn report(reader: &ImageReader, written_bytes: u64, damaged: Vec<DamagedRange>, started: Instant) -> RestoreReport {
    let size = reader.map().size();
    RestoreReport {
        bytes: size,
        zero_bytes: size - data_bytes(reader),
        written_bytes,
        damaged,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The pieces of the map in batches (see `BATCH`, `BATCH_BYTES`).
fn batches(pieces: &[Piece], max: usize) -> impl Iterator<Item = &[Piece]> {
    let mut rest = pieces;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (mut n, mut bytes) = (0, 0u64);
        while n < rest.len() && n < max && bytes < BATCH_BYTES {
            bytes += rest[n].len as u64;
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        Some(batch)
    })
}

/// Checks that every chunk is indexed and every pack present (an intact copy elsewhere will
/// do); with `read_data` also reads and verifies every chunk. With `partial`, chunk problems are
/// left for the writing pass to record.
fn preflight(reader: &ImageReader, partial: bool, read_data: bool) -> Result<()> {
    if partial {
        return Ok(());
    }
    // Batches in parallel: index lookups are most of a restore's time before its first write.
    let pack_sizes: std::sync::Mutex<HashMap<PackId, u64>> = Default::default();
    let all: Vec<&[Piece]> = batches(reader.map().pieces(), BATCH).collect();
    all.par_iter().try_for_each(|batch| {
        let ids: Vec<_> = batch.iter().map(|p| p.id).collect();
        for (p, loc) in batch.iter().zip(reader.index().locate(&ids)?) {
            if let Err(err) = chunk_present(reader, p, loc, &pack_sizes) {
                if reader.copies().intact(reader.backend(), reader.protection(), &p.id, loc.as_ref())?.is_none() {
                    return Err(err);
                }
            }
        }
        if read_data {
            for data in reader.fetch(batch)? {
                data?;
            }
        }
        Ok(())
    })
}

/// The chunk is indexed and its pack holds its bytes (without reading them).
fn chunk_present(
    reader: &ImageReader,
    p: &Piece,
    loc: Option<ChunkLoc>,
    pack_sizes: &std::sync::Mutex<HashMap<PackId, u64>>,
) -> Result<()> {
    let image = reader.map().info().id;
    let loc = loc.ok_or_else(|| Error::ChunkMissing { id: p.id.to_string(), image: image.to_string() })?;
    let known = pack_sizes.lock().unwrap_or_else(|p| p.into_inner()).get(&loc.pack).copied();
    let size = match known {
        Some(s) => s,
        None => {
            let s = reader.backend().size(&loc.pack.path()).map_err(|_| Error::CorruptPack {
                pack: loc.pack.to_string(),
                reason: format!("missing; image {image} needs it"),
            })?;
            pack_sizes.lock().unwrap_or_else(|p| p.into_inner()).insert(loc.pack, s);
            s
        }
    };
    if loc.slot.offset + loc.slot.stored_len as u64 > size {
        return Err(Error::CorruptPack {
            pack: loc.pack.to_string(),
            reason: format!("truncated to {size} bytes; chunk {} of image {image} lies beyond", p.id),
        });
    }
    Ok(())
}

/// A decoded batch: piece `i`'s bytes at `at[i]` in `bytes`, placed by `layout` (a piece that
/// could not be had, with `partial`, holds whatever the buffer held before and is not written).
struct Decoded<'m> {
    pieces: &'m [Piece],
    bytes: Vec<u8>,
    at: Vec<usize>,
    intact: Vec<bool>,
}

/// Where each piece of a batch goes in a buffer that starts at an aligned address: pieces
/// adjacent on the disk one after another, and each run of them at the same offset modulo
/// `ALIGN` as on the disk (at most `ALIGN - 1` bytes of padding before it), so that the whole
/// blocks of every run lie at aligned addresses and can be written with `O_DIRECT` straight from
/// the buffer. Returns each piece's start and the bytes the buffer needs.
fn layout(pieces: &[Piece]) -> (Vec<usize>, usize) {
    let mut at = Vec::with_capacity(pieces.len());
    let (mut next, mut disk_end) = (0usize, None);
    for p in pieces {
        if disk_end != Some(p.offset) {
            let want = (p.offset % ALIGN as u64) as usize;
            next += (want + ALIGN - next % ALIGN) % ALIGN;
        }
        at.push(next);
        next += p.len as usize;
        disk_end = Some(p.end());
    }
    (at, next)
}

/// The writing pass. Batches are decoded (frames in parallel on the pool) on the calling thread
/// and written by a thread of their own, at most one batch waiting between them: buffered
/// writes to one file serialise on its inode lock anyway, so one writer with large contiguous
/// writes beats many small concurrent ones, and while that writer waits for the disk the pool
/// goes on decoding (a writer inside the pool left one core idle for each wait). Each batch is
/// handed to writeback as soon as it is written and settled (waited for, its pages dropped)
/// `SETTLE_LAG` batches later: settled after the next one, the writer spent as long waiting for
/// the disk as writing. Its buffer goes back to the decoding side, so the same few buffers carry
/// the whole disk (fresh memory is slow to touch). Returns the damaged ranges (`partial`).
fn write_all(
    reader: &ImageReader,
    out: &Target,
    direct: Option<std::fs::File>,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<Vec<DamagedRange>> {
    let size = reader.map().size();
    progress.begin("restore", size);
    let mut damaged = Vec::new();
    let (to_writer, from_decoder) = std::sync::mpsc::sync_channel::<Decoded>(1);
    let (to_decoder, spare) = std::sync::mpsc::channel::<Vec<u8>>();
    let (written_to, mut direct) = std::thread::scope(|s| {
        let writer = s.spawn(move || {
            let mut direct = direct;
            let mut written_to = 0u64; // everything below is written (or a hole)
            let mut settled_to = 0u64; // everything below is on the disk and out of the page cache
            let mut ends = std::collections::VecDeque::new(); // of the batches written since
            for batch in from_decoder {
                let end = write_batch(out, &mut direct, target, written_to, &batch)?;
                let _ = to_decoder.send(batch.bytes);
                ends.push_back(end);
                if ends.len() > SETTLE_LAG {
                    let to = ends.pop_front().unwrap_or(settled_to);
                    settle(out.file(), settled_to, to - settled_to);
                    settled_to = to;
                }
                progress.advance(end - written_to);
                written_to = end;
            }
            Ok::<_, Error>((written_to, direct))
        });
        let decoded = (|| {
            for pieces in batches(reader.map().pieces(), BATCH) {
                let buf = spare.try_recv().unwrap_or_default();
                let (batch, lost) = decode(reader, pieces, opts.partial, buf)?;
                damaged.extend(lost);
                if to_writer.send(batch).is_err() {
                    break; // the writer failed: its error is returned below
                }
            }
            Ok::<_, Error>(())
        })();
        drop(to_writer);
        let written = writer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        decoded.and(written)
    })?;
    if let Target::Device(f) = out {
        write_zeros(f, &mut direct, written_to, size - written_to)
            .map_err(|e| Error::io("write", PathBuf::from(target), e))?;
    }
    progress.advance(size - written_to);
    Ok(damaged)
}

/// The bytes of a batch, into `buf` (grown when too short, never cleared: every byte used is
/// written over); with `partial`, a piece that cannot be had is recorded and not written (a
/// hole, or zeros on a device).
fn decode<'m>(
    reader: &ImageReader,
    pieces: &'m [Piece],
    partial: bool,
    mut buf: Vec<u8>,
) -> Result<(Decoded<'m>, Vec<DamagedRange>)> {
    let (mut at, total) = layout(pieces);
    if buf.len() < total + ALIGN {
        // Room for the batches after this one too (their padding and last piece vary): a
        // buffer too short for the next batch would be replaced by fresh memory, slow to touch.
        buf = vec![0; (total + ALIGN).max(BUFFER_BYTES)];
    }
    let base = crate::storage::first_aligned(&buf);
    let mut slices: Vec<&mut [u8]> = Vec::with_capacity(pieces.len());
    let mut rest = &mut buf[base..base + total];
    let mut consumed = 0;
    for (p, a) in pieces.iter().zip(&mut at) {
        let (slice, tail) = std::mem::take(&mut rest)[*a - consumed..].split_at_mut(p.len as usize);
        slices.push(slice);
        rest = tail;
        consumed = *a + p.len as usize;
        *a += base;
    }
    // Parts of the batch fetched at once: while one part waits for the last of its frames on
    // one core, the other core works on another part instead of idling at that part's end.
    let per_part = pieces.len().div_ceil(PARTS).max(1);
    let results: Vec<_> = pieces
        .par_chunks(per_part)
        .zip(slices.par_chunks_mut(per_part))
        .map(|(part, bufs)| reader.fetch_into(part, bufs))
        .collect::<Result<_>>()?;
    let mut lost = Vec::new();
    let mut intact = Vec::with_capacity(pieces.len());
    for (p, result) in pieces.iter().zip(results.into_iter().flatten()) {
        match result {
            Ok(()) => intact.push(true),
            Err(err @ (Error::ChunkMissing { .. } | Error::CorruptChunk { .. } | Error::CorruptPack { .. }))
                if partial =>
            {
                lost.push(DamagedRange { offset: p.offset, len: p.len as u64, reason: err.to_string() });
                intact.push(false);
            }
            Err(err) => return Err(err),
        }
    }
    Ok((Decoded { pieces, bytes: buf, at, intact }, lost))
}

/// Writes a decoded batch: each run of adjacent intact pieces (adjacent in the buffer too) with
/// one `write_run` (its whole blocks through `direct` when there is one); the zero runs between
/// them (from `from` on) stay holes in a file and are written as zeros on a block device, as are
/// damaged pieces. Returns the end of the batch.
fn write_batch(
    out: &Target,
    direct: &mut Option<std::fs::File>,
    target: &Path,
    from: u64,
    batch: &Decoded,
) -> Result<u64> {
    let fail = |err: std::io::Error| Error::io("write", PathBuf::from(target), err);
    let pieces = batch.pieces;
    let mut at = from;
    let mut i = 0;
    while i < pieces.len() {
        let start = pieces[i].offset;
        if let Target::Device(f) = out {
            write_zeros(f, direct, at, start - at).map_err(fail)?;
        }
        let (run_from, mut end) = (batch.at[i], start);
        while i < pieces.len() && pieces[i].offset == end && batch.intact[i] {
            end += pieces[i].len as u64;
            i += 1;
        }
        if end == start {
            // A damaged piece of a partial restore: zeros.
            if let Target::Device(f) = out {
                write_zeros(f, direct, start, pieces[i].len as u64).map_err(fail)?;
            }
            end = pieces[i].end();
            i += 1;
        } else {
            let run = &batch.bytes[run_from..run_from + (end - start) as usize];
            write_run(out.file(), direct, run, start).map_err(fail)?;
        }
        at = end;
    }
    if let Some(first) = pieces.first() {
        start_writeback(out.file(), first.offset, at - first.offset);
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(offset: u64, len: u32) -> Piece {
        Piece { offset, len, skip: 0, id: crate::id::ChunkId::of(&offset.to_le_bytes()) }
    }

    #[test]
    fn layout_keeps_runs_contiguous_and_aligned_as_on_the_disk() {
        // Two adjacent pieces, a hole, a run starting mid-block, a piece right after a hole of
        // less than a block, and a run starting on a block boundary.
        let pieces = [piece(100, 5000), piece(5100, 3000), piece(20000, 7000), piece(27010, 50), piece(40960, 4096)];
        let (at, len) = layout(&pieces);
        for (i, p) in pieces.iter().enumerate() {
            assert_eq!(
                at[i] % ALIGN,
                (p.offset % ALIGN as u64) as usize,
                "piece {i} at {} for disk offset {}",
                at[i],
                p.offset
            );
            if i > 0 {
                let prev = &pieces[i - 1];
                assert!(at[i] >= at[i - 1] + prev.len as usize, "piece {i} overlaps the one before");
                if prev.end() == p.offset {
                    assert_eq!(at[i], at[i - 1] + prev.len as usize, "adjacent pieces {} and {i} apart", i - 1);
                }
                assert!(at[i] - (at[i - 1] + prev.len as usize) < ALIGN, "more padding than a block before piece {i}");
            }
        }
        assert_eq!(len, at[4] + 4096);
    }
}
