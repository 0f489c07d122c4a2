//! Cuts one segment of a disk into extents: holes and zero runs become zero extents, the rest is
//! split by FastCDC v2020 and each chunk is named by its BLAKE3 hash. Pure: no I/O.

use std::ops::Range;

use crate::config::ChunkerParams;
use crate::id::ChunkId;
use crate::manifest::extent::{push_coalesced, Extent};

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
pub fn split_segment(buf: &[u8], seg_offset: u64, data: &[Range<usize>], p: &ChunkerParams, out: &mut Vec<Extent>) {
    split_regions(buf, seg_offset, data, &[], p, out)
}

/// `split_segment` with `unused`, ranges of `buf` that the filesystem does not use (sorted,
/// disjoint, and disjoint from `data`): they become unused extents, their bytes never looked at.
pub fn split_regions(
    buf: &[u8],
    seg_offset: u64,
    data: &[Range<usize>],
    unused: &[Range<usize>],
    p: &ChunkerParams,
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
            split_data(buf, seg_offset, r.clone(), p, out);
        }
        pos = r.end;
    }
    if pos < buf.len() {
        push_coalesced(out, Extent::zero(seg_offset + pos as u64, (buf.len() - pos) as u64));
    }
}

/// Separates long zero runs (whole 4 KiB blocks, aligned on the disk) from the data in between.
fn split_data(buf: &[u8], seg_offset: u64, r: Range<usize>, p: &ChunkerParams, out: &mut Vec<Extent>) {
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
                cdc(buf, seg_offset, data_start..rs, p, out);
                push_coalesced(out, Extent::zero(seg_offset + rs as u64, (b - rs) as u64));
                data_start = b;
            }
        }
        b += BLOCK;
    }
    if let Some(rs) = run_start {
        if b - rs >= min_run {
            cdc(buf, seg_offset, data_start..rs, p, out);
            push_coalesced(out, Extent::zero(seg_offset + rs as u64, (b - rs) as u64));
            data_start = b;
        }
    }
    cdc(buf, seg_offset, data_start..r.end, p, out);
}

fn cdc(buf: &[u8], seg_offset: u64, r: Range<usize>, p: &ChunkerParams, out: &mut Vec<Extent>) {
    if r.is_empty() {
        return;
    }
    let data = &buf[r.clone()];
    for c in fastcdc::v2020::FastCDC::new(data, p.min_size, p.avg_size, p.max_size) {
        let bytes = &data[c.offset..c.offset + c.length];
        let offset = seg_offset + (r.start + c.offset) as u64;
        if is_zero(bytes) {
            push_coalesced(out, Extent::zero(offset, c.length as u64));
        } else {
            out.push(Extent::chunk(offset, c.length as u64, ChunkId::of(bytes)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        split_segment(&buf, 1 << 20, &data, &params(), &mut out);
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
        split_regions(&buf, 0, &[0..20000, 40000..60000], &[20000..30000, 32000..40000], &params(), &mut out);
        assert_covers(&out, 0, 65536);
        let unused: Vec<(u64, u64)> = out.iter().filter(|e| e.is_unused()).map(|e| (e.offset, e.len)).collect();
        assert_eq!(unused, vec![(20000, 10000), (32000, 8000)]);
        let zero: Vec<(u64, u64)> = out.iter().filter(|e| e.is_zero()).map(|e| (e.offset, e.len)).collect();
        assert_eq!(zero, vec![(30000, 2000), (60000, 5536)]);
    }

    #[test]
    fn an_all_zero_segment_is_one_zero_extent() {
        let mut out = Vec::new();
        split_segment(&vec![0u8; 65536], 0, &[0..65536], &params(), &mut out);
        assert_eq!(out, vec![Extent::zero(0, 65536)]);
    }

    #[test]
    fn unchanged_bytes_away_from_an_edit_give_the_same_chunks() {
        let a = noise(65536, 3);
        let mut b = a.clone();
        b[30000..30100].fill(0xAA);
        let (mut ea, mut eb) = (Vec::new(), Vec::new());
        split_segment(&a, 0, &[0..65536], &params(), &mut ea);
        split_segment(&b, 0, &[0..65536], &params(), &mut eb);
        let same = ea.iter().filter(|e| eb.contains(e)).count();
        assert!(same + 3 >= ea.len(), "an edit of 100 bytes changed {} of {} chunks", ea.len() - same, ea.len());
    }
}
