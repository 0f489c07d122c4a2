//! Cuts one segment of a disk into extents: holes and zero runs become zero extents, the rest is
//! split by FastCDC v2020 and each chunk is named by its BLAKE3 hash (keyed, with a secret gear
//! seed, in an encrypted repository: `Protection`). Pure: no I/O.

use std::ops::Range;

use crate::config::ChunkerParams;
use crate::crypto::Protection;
use crate::manifest::extent::{push_coalesced, Extent};
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
    split_regions(buf, seg_offset, data, &[], p, n, out)
}

/// `split_segment` with `unused`, ranges of `buf` that the filesystem does not use (sorted,
/// disjoint, and disjoint from `data`): they become unused extents, their bytes never looked at.
pub fn split_regions(
    buf: &[u8],
    seg_offset: u64,
    data: &[Range<usize>],
    unused: &[Range<usize>],
    p: &ChunkerParams,
    n: &Protection,
    out: &mut Vec<Extent>,
) {
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
            split_data(buf, seg_offset, r.clone(), p, n, out);
        }
        pos = r.end;
    }
    if pos < buf.len() {
        push_coalesced(out, Extent::zero(seg_offset + pos as u64, (buf.len() - pos) as u64));
    }
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
fn split_data(buf: &[u8], seg_offset: u64, r: Range<usize>, p: &ChunkerParams, n: &Protection, out: &mut Vec<Extent>) {
    let min_run = p.zero_run_min as usize;
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
                cdc(buf, seg_offset, data_start..rs, p, n, out);
                push_coalesced(out, Extent::zero(seg_offset + rs as u64, (b - rs) as u64));
                data_start = b;
            }
        }
        b += BLOCK;
    }
    if let Some(rs) = run_start {
        if b - rs >= min_run {
            cdc(buf, seg_offset, data_start..rs, p, n, out);
            push_coalesced(out, Extent::zero(seg_offset + rs as u64, (b - rs) as u64));
            data_start = b;
        }
    }
    cdc(buf, seg_offset, data_start..r.end, p, n, out);
}

fn cdc(buf: &[u8], seg_offset: u64, r: Range<usize>, p: &ChunkerParams, n: &Protection, out: &mut Vec<Extent>) {
    if r.is_empty() {
        return;
    }
    let data = &buf[r.clone()];
    use fastcdc::v2020::{FastCDC, Normalization};
    let seed = n.chunker_seed();
    for c in FastCDC::with_level_and_seed(data, p.min_size, p.avg_size, p.max_size, Normalization::Level1, seed) {
        let bytes = &data[c.offset..c.offset + c.length];
        let offset = seg_offset + (r.start + c.offset) as u64;
        if is_zero(bytes) {
            push_coalesced(out, Extent::zero(offset, c.length as u64));
        } else {
            out.push(Extent::chunk(offset, c.length as u64, n.chunk_id(bytes)));
        }
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
            &params(),
            &Protection::none(),
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
}
