//! Cuts one segment of a disk into extents: holes and zero runs become zero extents, the rest is
//! split by FastCDC v2020 and each chunk is named by its BLAKE3 hash (keyed, with a secret gear
//! seed, in an encrypted repository: `Protection`). Pure: no I/O.

use std::ops::Range;

use crate::config::ChunkerParams;
use crate::crypto::Protection;
use crate::id::ChunkId;
use crate::manifest::extent::{push_coalesced, Content, Extent};
use crate::manifest::Fingerprint;

const BLOCK: usize = 4096;

/// True when every byte is zero. Works on u64 words so the compiler vectorises it.
pub fn is_zero(buf: &[u8]) -> bool {
    let (head, words, tail) = unsafe { buf.align_to::<u64>() };
    head.iter().all(|&b| b == 0)
        && words.chunks(64).all(|w| w.iter().fold(0u64, |acc, &x| acc | x) == 0)
        && tail.iter().all(|&b| b == 0)
}

/// Splits `buf`, the bytes of the disk at `seg_offset ..`, into extents covering `0..buf.len()`.
/// `data` lists the ranges of `buf` that hold data (sorted, disjoint); everything else is a hole.
/// The result is deterministic in the bytes and the offset alone, which is what makes unchanged
/// regions of a disk produce the same chunks in every backup.
pub fn split_segment(
    buf: &[u8],
    seg_offset: u64,
    data: &[Range<usize>],
    p: &ChunkerParams,
    n: &Protection,
    out: &mut Vec<Extent>,
) {
    split_regions(buf, seg_offset, data, &[], &Cut { params: p, naming: n, base: &[] }, out);
}

/// How a segment is cut: the repository's chunker parameters and chunk naming, and the base
/// image's extents of the same segment (empty for none), whose chunks are taken again without
/// running the chunker where the segment still holds their bytes and the chunker would cut
/// there anyway (`Base::reusable`), so the result is the same as without them.
pub struct Cut<'a> {
    pub params: &'a ChunkerParams,
    pub naming: &'a Protection,
    /// Sorted by offset, as a disk view lists them.
    pub base: &'a [Extent],
}

/// `split_segment` with `unused`, ranges of `buf` that the filesystem does not use (sorted,
/// disjoint, and disjoint from `data`): they become unused extents, their bytes never looked at.
/// Returns the bytes of the chunks taken from `cut.base` instead of found by the chunker.
pub fn split_regions(
    buf: &[u8],
    seg_offset: u64,
    data: &[Range<usize>],
    unused: &[Range<usize>],
    cut: &Cut,
    out: &mut Vec<Extent>,
) -> u64 {
    let mut base = Base::new(cut, buf, seg_offset);
    let mut pos = 0usize;
    let (mut d, mut u) = (data.iter().peekable(), unused.iter().peekable());
    loop {
        let (r, is_unused) = match (d.peek(), u.peek()) {
            (Some(a), Some(b)) if a.start <= b.start => (d.next(), false),
            (Some(_), Some(_)) | (None, Some(_)) => (u.next(), true),
            (Some(_), None) => (d.next(), false),
            (None, None) => break,
        };
        let Some(r) = r else { break };
        if r.start > pos {
            push_coalesced(out, Extent::zero(seg_offset + pos as u64, (r.start - pos) as u64));
        }
        if is_unused {
            push_coalesced(out, Extent::unused(seg_offset + r.start as u64, (r.end - r.start) as u64));
        } else {
            split_data(&mut base, r.clone(), out);
        }
        pos = r.end;
    }
    if pos < buf.len() {
        push_coalesced(out, Extent::zero(seg_offset + pos as u64, (buf.len() - pos) as u64));
    }
    base.taken
}

/// The fingerprint of a segment: BLAKE3 over everything `split_regions` reads (the segment's
/// place and length, the chunker's parameters, its data and unused ranges, and its data bytes),
/// so that equal fingerprints give equal extents and a backup can take a segment's extents from
/// its base instead of cutting and hashing it again (docs/FORMAT.md, "Segment fingerprints").
/// The pipeline feeds a `SegmentHasher` as it reads; this is the same over a whole buffer.
#[cfg(test)]
pub fn fingerprint(
    buf: &[u8],
    seg_offset: u64,
    data: &[Range<usize>],
    unused: &[Range<usize>],
    p: &ChunkerParams,
    n: &Protection,
) -> Fingerprint {
    let mut h = SegmentHasher::new(buf.len(), seg_offset, data, unused, p, n);
    for r in data {
        h.update(&buf[r.clone()]);
    }
    h.finish()
}

/// `fingerprint` fed piece by piece: the data bytes are hashed as they are read, while they are
/// still in the CPU's cache, instead of in a second pass over the segment.
pub struct SegmentHasher(blake3::Hasher);

impl SegmentHasher {
    /// Hashes the segment's place, length and layout; its data bytes follow with `update`, in
    /// order.
    pub fn new(
        len: usize,
        seg_offset: u64,
        data: &[Range<usize>],
        unused: &[Range<usize>],
        p: &ChunkerParams,
        n: &Protection,
    ) -> SegmentHasher {
        let mut h = n.segment_hasher();
        let (min, avg, max, zero) = (p.min_size as u64, p.avg_size as u64, p.max_size as u64, p.zero_run_min as u64);
        for v in [seg_offset, len as u64, min, avg, max, zero, data.len() as u64, unused.len() as u64] {
            h.update(&v.to_le_bytes());
        }
        for r in data.iter().chain(unused) {
            h.update(&(r.start as u64).to_le_bytes());
            h.update(&(r.end as u64).to_le_bytes());
        }
        SegmentHasher(h)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(&self) -> Fingerprint {
        *self.0.finalize().as_bytes()
    }
}

/// Separates long zero runs (whole 4 KiB blocks, aligned on the disk) from the data in between.
fn split_data(base: &mut Base, r: Range<usize>, out: &mut Vec<Extent>) {
    let buf = base.buf;
    let min_run = base.cut.params.zero_run_min as usize;
    // Block alignment is relative to the disk; segments start on 4 KiB multiples.
    let first = r.start.next_multiple_of(BLOCK);
    let mut data_start = r.start;
    let mut run_start: Option<usize> = None;
    let mut b = first;
    while b + BLOCK <= r.end {
        if is_zero(&buf[b..b + BLOCK]) {
            run_start.get_or_insert(b);
        } else if let Some(rs) = run_start.take() {
            if b - rs >= min_run {
                cdc(base, data_start..rs, out);
                push_coalesced(out, Extent::zero(base.seg_offset + rs as u64, (b - rs) as u64));
                data_start = b;
            }
        }
        b += BLOCK;
    }
    if let Some(rs) = run_start {
        if b - rs >= min_run {
            cdc(base, data_start..rs, out);
            push_coalesced(out, Extent::zero(base.seg_offset + rs as u64, (b - rs) as u64));
            data_start = b;
        }
    }
    cdc(base, data_start..r.end, out);
}

/// FastCDC over `r`, from its start as a chunker always begins: where a cut point starts a
/// base chunk that `Base::reusable` takes, that chunk is taken and the chunker begins again
/// after it, which is where it would have cut anyway.
fn cdc(base: &mut Base, r: Range<usize>, out: &mut Vec<Extent>) {
    use fastcdc::v2020::{FastCDC, Normalization};
    let (buf, seg_offset, p, n) = (base.buf, base.seg_offset, base.cut.params, base.cut.naming);
    let mut pos = r.start;
    while pos < r.end {
        if let Some((len, id)) = base.reusable(pos, r.end) {
            out.push(Extent::chunk(seg_offset + pos as u64, len as u64, id));
            base.taken += len as u64;
            pos += len;
            continue;
        }
        let data = &buf[pos..r.end];
        let mut next = r.end;
        for c in FastCDC::with_level_and_seed(
            data,
            p.min_size,
            p.avg_size,
            p.max_size,
            Normalization::Level1,
            n.chunker_seed(),
        ) {
            let bytes = &data[c.offset..c.offset + c.length];
            let offset = seg_offset + (pos + c.offset) as u64;
            if is_zero(bytes) {
                push_coalesced(out, Extent::zero(offset, c.length as u64));
            } else {
                // A chunk the base also has here was hashed already if it was looked at.
                let id = base.hashed(pos + c.offset, c.length).unwrap_or_else(|| n.chunk_id(bytes));
                out.push(Extent::chunk(offset, c.length as u64, id));
            }
            let end = pos + c.offset + c.length;
            if end < r.end && base.starts_chunk(end) {
                next = end;
                break;
            }
        }
        pos = next;
    }
}

/// The base image's extents of the segment being cut, and which of its chunks the segment
/// still holds (the bytes at each hashed at most once).
struct Base<'a> {
    cut: &'a Cut<'a>,
    buf: &'a [u8],
    seg_offset: u64,
    /// Per base extent: `None` not looked at yet, then the hash of `buf`'s bytes where that
    /// chunk lies (`Some(None)`: not a chunk, or not inside `buf`).
    hashes: Vec<Option<Option<ChunkId>>>,
    /// Bytes of chunks taken from the base.
    taken: u64,
}

impl<'a> Base<'a> {
    fn new(cut: &'a Cut<'a>, buf: &'a [u8], seg_offset: u64) -> Self {
        Base { cut, buf, seg_offset, hashes: vec![None; cut.base.len()], taken: 0 }
    }

    /// The index of the base extent that starts at `pos` of the segment.
    fn at(&self, pos: usize) -> Option<usize> {
        self.cut.base.binary_search_by_key(&(self.seg_offset + pos as u64), |e| e.offset).ok()
    }

    fn starts_chunk(&self, pos: usize) -> bool {
        self.at(pos).is_some_and(|k| matches!(self.cut.base[k].content, Content::Chunk { .. }))
    }

    /// The hash of `buf`'s bytes where base chunk `k` lies.
    fn hash(&mut self, k: usize) -> Option<ChunkId> {
        if let Some(known) = self.hashes[k] {
            return known;
        }
        let e = &self.cut.base[k];
        let hash = match e.content {
            Content::Chunk { skip: 0, .. } => {
                let start = e.offset.checked_sub(self.seg_offset).map(|s| s as usize);
                let range = start.and_then(|s| Some(s..s.checked_add(e.len as usize)?));
                range.and_then(|r| self.buf.get(r)).map(|b| self.cut.naming.chunk_id(b))
            }
            _ => None,
        };
        self.hashes[k] = Some(hash);
        hash
    }

    /// Whether base extent `k` is a whole chunk whose bytes `buf` holds at the same place: its
    /// id is the hash of those bytes (a chunk the base's chain holds only in part does not hash
    /// to its id).
    fn holds(&mut self, k: usize) -> bool {
        let Content::Chunk { id, .. } = self.cut.base[k].content else { return false };
        self.hash(k) == Some(id)
    }

    /// The hash of `buf[pos .. pos + len]` if it was computed for the base chunk lying there.
    fn hashed(&self, pos: usize, len: usize) -> Option<ChunkId> {
        let k = self.at(pos)?;
        if self.cut.base[k].len != len as u64 {
            return None;
        }
        self.hashes[k].flatten()
    }

    /// The base chunk starting at `pos`, a point where the chunker (re)starts, if the chunker
    /// run from `pos` over the data range ending at `end` would cut it just as the base's did.
    /// FastCDC's cut after `pos` depends on the bytes from `pos` up to and including the first
    /// byte after the cut, and on how far the range reaches only where the range ends before
    /// the cut would be found. So: the chunk and the base chunk right after it (for that first
    /// byte) are both held, which also says the base's range went on past the chunk (the
    /// base's consecutive chunks lie in one range: ranges end at zero or unused extents or the
    /// segment's end), and this range goes on past it too.
    fn reusable(&mut self, pos: usize, end: usize) -> Option<(usize, ChunkId)> {
        let k = self.at(pos)?;
        let e = self.cut.base[k];
        let Content::Chunk { id, .. } = e.content else { return None };
        let len = e.len as usize;
        let next = self.cut.base.get(k + 1)?;
        if pos.saturating_add(len) >= end || next.offset != e.end() || !matches!(next.content, Content::Chunk { .. }) {
            return None;
        }
        if !self.holds(k) || !self.holds(k + 1) {
            return None;
        }
        Some((len, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ChunkId;
    use crate::manifest::Content;

    fn params() -> ChunkerParams {
        ChunkerParams { min_size: 1024, avg_size: 4096, max_size: 16384, segment_size: 65536, zero_run_min: 8192 }
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// The invariant every consumer relies on: extents are contiguous and cover every byte.
    fn assert_covers(ex: &[Extent], start: u64, len: u64) {
        let mut pos = start;
        for e in ex {
            assert_eq!(e.offset, pos, "gap or overlap at {pos}");
            assert!(e.len > 0);
            pos = e.end();
        }
        assert_eq!(pos, start + len);
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&vec![0u8; 10007]));
        for i in [0, 1, 4095, 9999, 10006] {
            let mut v = vec![0u8; 10007];
            v[i] = 1;
            assert!(!is_zero(&v), "missed byte {i}");
        }
    }

    #[test]
    fn holes_zero_runs_and_data_cover_the_segment() {
        let mut buf = noise(65536, 7);
        buf[16384..40960].fill(0); // a 24 KiB zero run, above zero_run_min
        let data = [0..50000, 52000..65536];
        let mut out = Vec::new();
        split_segment(&buf, 1 << 20, &data, &params(), &Protection::none(), &mut out);
        assert_covers(&out, 1 << 20, 65536);
        let zero_bytes: u64 = out.iter().filter(|e| e.is_zero()).map(|e| e.len).sum();
        assert!(zero_bytes >= 24576 + 2000, "zero run and hole recorded as zeros, got {zero_bytes}");
        for e in &out {
            if let Content::Chunk { id, skip } = e.content {
                assert_eq!(skip, 0);
                let at = (e.offset - (1 << 20)) as usize;
                assert_eq!(id, ChunkId::of(&buf[at..at + e.len as usize]));
                assert!(e.len <= 16384);
            }
        }
    }

    #[test]
    fn unused_ranges_become_unused_extents_between_data_and_holes() {
        let buf = noise(65536, 5);
        let mut out = Vec::new();
        split_regions(
            &buf,
            0,
            &[0..20000, 40000..60000],
            &[20000..30000, 32000..40000],
            &Cut { params: &params(), naming: &Protection::none(), base: &[] },
            &mut out,
        );
        assert_covers(&out, 0, 65536);
        let unused: Vec<(u64, u64)> = out.iter().filter(|e| e.is_unused()).map(|e| (e.offset, e.len)).collect();
        assert_eq!(unused, vec![(20000, 10000), (32000, 8000)]);
        let zero: Vec<(u64, u64)> = out.iter().filter(|e| e.is_zero()).map(|e| (e.offset, e.len)).collect();
        assert_eq!(zero, vec![(30000, 2000), (60000, 5536)]);
    }

    #[test]
    fn fingerprints_change_with_any_input_of_the_split() {
        let buf = noise(65536, 9);
        let p = params();
        let base = fingerprint(&buf, 0, &[0..65536], &[], &p, &Protection::none());
        assert_eq!(base, fingerprint(&buf, 0, &[0..65536], &[], &p, &Protection::none()));
        let mut edited = buf.clone();
        edited[40000] ^= 1;
        assert_ne!(base, fingerprint(&edited, 0, &[0..65536], &[], &p, &Protection::none()), "a byte");
        assert_ne!(base, fingerprint(&buf, 65536, &[0..65536], &[], &p, &Protection::none()), "the place");
        assert_ne!(
            base,
            fingerprint(&buf, 0, &[0..32768], &[32768..65536], &p, &Protection::none()),
            "an unused range"
        );
        assert_ne!(base, fingerprint(&buf, 0, &[0..32768, 32768..65536], &[], &p, &Protection::none()), "the layout");
        let other = ChunkerParams { avg_size: 8192, ..params() };
        assert_ne!(base, fingerprint(&buf, 0, &[0..65536], &[], &other, &Protection::none()), "the chunker");
        let mut stale = buf.clone();
        stale[50000] ^= 1; // bytes outside the data ranges are not read and do not count
        assert_eq!(
            fingerprint(&buf, 0, &[0..40000], &[], &p, &Protection::none()),
            fingerprint(&stale, 0, &[0..40000], &[], &p, &Protection::none())
        );
    }

    #[test]
    fn an_encrypted_repository_names_and_cuts_with_its_keys() {
        let buf = noise(262144, 11);
        let plain = Protection::none();
        let keyed = Protection::keyed(crate::crypto::MasterKey::generate().unwrap().keys());
        let other = Protection::keyed(crate::crypto::MasterKey::generate().unwrap().keys());
        let split = |n: &Protection| {
            let mut out = Vec::new();
            split_segment(&buf, 0, &[0..buf.len()], &params(), n, &mut out);
            assert_covers(&out, 0, buf.len() as u64);
            out
        };
        let (a, b, c) = (split(&plain), split(&keyed), split(&other));
        assert_eq!(b, split(&keyed), "deterministic under one key");
        let cuts = |v: &[Extent]| v.iter().map(|e| e.offset).collect::<Vec<_>>();
        // The gear seed moves the cut points, so chunk sizes do not reveal content either.
        assert_ne!(cuts(&a), cuts(&b));
        assert_ne!(cuts(&b), cuts(&c));
        for e in &b {
            if let Content::Chunk { id, .. } = e.content {
                let bytes = &buf[e.offset as usize..e.end() as usize];
                assert_eq!(id, keyed.chunk_id(bytes));
                assert_ne!(id, ChunkId::of(bytes), "no unkeyed BLAKE3 of the content");
            }
        }
        let fp = |n: &Protection| fingerprint(&buf, 0, &[0..buf.len()], &[], &params(), n);
        assert_ne!(fp(&plain), fp(&keyed));
        assert_ne!(fp(&keyed), fp(&other));
    }

    #[test]
    fn an_all_zero_segment_is_one_zero_extent() {
        let mut out = Vec::new();
        split_segment(&vec![0u8; 65536], 0, &[0..65536], &params(), &Protection::none(), &mut out);
        assert_eq!(out, vec![Extent::zero(0, 65536)]);
    }

    #[test]
    fn unchanged_bytes_away_from_an_edit_give_the_same_chunks() {
        let a = noise(65536, 3);
        let mut b = a.clone();
        b[30000..30100].fill(0xAA);
        let (mut ea, mut eb) = (Vec::new(), Vec::new());
        split_segment(&a, 0, &[0..65536], &params(), &Protection::none(), &mut ea);
        split_segment(&b, 0, &[0..65536], &params(), &Protection::none(), &mut eb);
        let same = ea.iter().filter(|e| eb.contains(e)).count();
        assert!(same + 3 >= ea.len(), "an edit of 100 bytes changed {} of {} chunks", ea.len() - same, ea.len());
    }

    /// A 64 KiB segment of noise with up to three zero runs of all lengths (some long enough to
    /// end a range), and all data, a hole, or an unused range.
    struct Layout {
        buf: Vec<u8>,
        data: Vec<Range<usize>>,
        unused: Vec<Range<usize>>,
    }

    fn layout(seed: u64) -> Layout {
        let mut rng = noise(64, seed).into_iter().cycle();
        let mut next = move || rng.next().unwrap_or(0) as usize;
        let mut buf = noise(65536, seed);
        for _ in 0..next() % 4 {
            let at = next() * 250;
            let len = (next() % 5) * 4096 + next() * 8;
            let end = (at + len).min(buf.len());
            buf[at..end].fill(0);
        }
        let (data, unused) = match next() % 3 {
            0 => (vec![0..65536], vec![]),
            1 => (vec![0..30000, 34000..65536], vec![]),
            _ => (vec![0..20480, 36864..65536], vec![20480..36864]),
        };
        Layout { buf, data, unused }
    }

    /// Edits like a day's: scattered small writes, a run written over, a zero run filled or a
    /// data run zeroed.
    fn edit(buf: &mut [u8], seed: u64) {
        let mut rng = noise(64, seed ^ 0x5eed).into_iter().cycle();
        let mut next = move || rng.next().unwrap_or(0) as usize;
        for _ in 0..1 + next() % 3 {
            let at = next() * 255 + next();
            let len = match next() % 4 {
                0 => 1,
                1 => 4096,
                2 => next() * 40,
                _ => 12288,
            };
            let end = (at + len).min(buf.len());
            let fill = if next() % 3 == 0 { 0 } else { next() as u8 | 1 };
            buf[at.min(end)..end].fill(fill);
        }
        match next() % 3 {
            // Data written into a zero run (all of it, or up to a point): a range grows.
            0 => {
                if let Some(z) = (0..buf.len() / BLOCK).find(|b| is_zero(&buf[b * BLOCK..(b + 1) * BLOCK])) {
                    let from = z * BLOCK + next() % BLOCK;
                    let to = (from + next() * 64).min(buf.len());
                    buf[from..to].copy_from_slice(&noise(to - from, seed + 1000));
                }
            }
            // A new zero run of whole blocks: a range ends early.
            1 => {
                let at = (next() * 255).next_multiple_of(BLOCK).min(buf.len() - 2 * BLOCK);
                let to = (at + 2 * BLOCK + (next() % 3) * BLOCK).min(buf.len());
                buf[at..to].fill(0);
            }
            _ => {}
        }
    }

    fn split_with(l: &Layout, base: &[Extent], naming: &Protection) -> (Vec<Extent>, u64) {
        let mut out = Vec::new();
        let cut = Cut { params: &params(), naming, base };
        let taken = split_regions(&l.buf, 1 << 20, &l.data, &l.unused, &cut, &mut out);
        (out, taken)
    }

    #[test]
    fn chunks_taken_from_the_base_give_exactly_what_the_chunker_gives() {
        let (mut taken, mut data) = (0u64, 0u64);
        for naming in [Protection::none(), Protection::keyed(crate::crypto::MasterKey::generate().unwrap().keys())] {
            for seed in 1..1000u64 {
                let old = layout(seed);
                let (base, _) = split_with(&old, &[], &naming);
                let mut new = Layout { buf: old.buf.clone(), data: old.data.clone(), unused: old.unused.clone() };
                edit(&mut new.buf, seed);
                if seed % 5 == 0 {
                    // The layout changed too: the hole or unused range is data now.
                    new = Layout { data: vec![0..65536], unused: vec![], ..new };
                }
                let (plain, none_taken) = split_with(&new, &[], &naming);
                let (walked, t) = split_with(&new, &base, &naming);
                assert_eq!(none_taken, 0);
                assert_eq!(walked, plain, "seed {seed}: the base changed the chunks");
                assert_covers(&walked, 1 << 20, 65536);
                taken += t;
                data += plain.iter().filter(|e| !e.is_zero() && !e.is_unused()).map(|e| e.len).sum::<u64>();
            }
        }
        // Much of each segment is the base's: a walk that never reused would pass the above.
        assert!(taken * 3 > data, "only {taken} of {data} bytes were taken from the base");
    }

    #[test]
    fn a_base_chunk_is_not_taken_past_the_end_of_its_range() {
        // The filesystem freed the disk's second half: those bytes are not read (here they are
        // still in the buffer, as a recycled buffer may hold them), so chunks must end at 36864.
        let old = Layout { buf: noise(65536, 12), data: vec![0..65536], unused: vec![] };
        let (base, _) = split_with(&old, &[], &Protection::none());
        assert!(!base.iter().any(|e| e.offset == 36864), "a base chunk reaches across the new range end");
        let new = Layout { data: vec![0..36864], unused: vec![36864..65536], ..old };
        let (plain, _) = split_with(&new, &[], &Protection::none());
        let (walked, taken) = split_with(&new, &base, &Protection::none());
        assert_eq!(walked, plain);
        assert_covers(&walked, 1 << 20, 65536);
        assert!(taken > 0);
    }

    #[test]
    fn one_changed_byte_leaves_the_chunks_around_it_to_the_base() {
        let old = Layout { buf: noise(65536, 77), data: vec![0..65536], unused: vec![] };
        let (base, _) = split_with(&old, &[], &Protection::none());
        let mut new = Layout { buf: old.buf.clone(), ..old };
        new.buf[33333] ^= 0x40;
        let (plain, _) = split_with(&new, &[], &Protection::none());
        let (walked, taken) = split_with(&new, &base, &Protection::none());
        assert_eq!(walked, plain);
        // All but the changed chunk, the one before it (its cut depends on the changed chunk's
        // first byte) and the range's last (no base chunk follows it) come from the base.
        let mut lens: Vec<u64> = base.iter().map(|e| e.len).collect();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        assert!(taken >= 65536 - lens.iter().take(3).sum::<u64>(), "{taken} bytes taken of {} chunks", base.len());
    }

    #[test]
    fn a_base_that_does_not_match_is_only_a_hint() {
        let l = layout(42);
        let (plain, _) = split_with(&l, &[], &Protection::none());
        // Base extents of another disk, a chunk cut in two, a chunk whose id lies: all ignored.
        let (other, _) = split_with(&layout(43), &[], &Protection::none());
        let mut lying = plain.clone();
        for e in lying.iter_mut() {
            if let Content::Chunk { ref mut id, .. } = e.content {
                *id = ChunkId::of(b"something else");
            }
        }
        let mut split = plain.clone();
        if let Some(i) = split.iter().position(|e| matches!(e.content, Content::Chunk { .. }) && e.len > 2048) {
            let e = split[i];
            let Content::Chunk { id, .. } = e.content else { unreachable!() };
            split[i] = Extent::chunk(e.offset, 1024, id);
            split.insert(
                i + 1,
                Extent { offset: e.offset + 1024, len: e.len - 1024, content: Content::Chunk { id, skip: 1024 } },
            );
        }
        for base in [&other, &lying, &split] {
            assert_eq!(split_with(&l, base, &Protection::none()).0, plain);
        }
        assert_eq!(split_with(&l, &lying, &Protection::none()).1, 0, "no chunk whose bytes differ is taken");
        let (_, all) = split_with(&l, &plain, &Protection::none());
        assert!(all > 0, "an unchanged base is taken");
    }
}
