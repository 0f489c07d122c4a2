//! Criterion benchmarks of the backup and restore stages, each with `Throughput::Bytes`.
//!
//! Run: `cargo bench --bench stages` (add `-- <filter>` for one stage, e.g. `-- chunking`).
//! Compare two versions: `cargo bench --bench stages -- --save-baseline before`, change the code,
//! then `cargo bench --bench stages -- --baseline before`. Inputs are seeded, so runs compare.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use strata::chunker::{is_zero, split_segment};
use strata::config::ChunkerParams;
use strata::id::ChunkId;
use strata::pack::{compress_chunk, decode_chunk};

const SEGMENT: usize = 16 << 20;

/// Seeded generators: random, text-like (compressible), all zeros, and a mix of the three.
fn data(kind: &str, len: usize) -> Vec<u8> {
    let mut x: u64 = 0x1234_5678_9ABC_DEF1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words: [&[u8]; 6] = [b"the ", b"disk ", b"image ", b"of ", b"backup\n", b"chunk "];
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let region = match kind {
            "mixed" => ["random", "text", "zeros"][(v.len() / (1 << 20)) % 3],
            k => k,
        };
        match region {
            "random" => v.extend_from_slice(&next().to_le_bytes()),
            "text" => v.extend_from_slice(words[(next() % 6) as usize]),
            _ => v.extend_from_slice(&[0u8; 64]),
        }
    }
    v.truncate(len);
    v
}

fn chunking(c: &mut Criterion) {
    let p = ChunkerParams::default();
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(SEGMENT as u64));
    g.sample_size(20);
    for kind in ["random", "text", "zeros", "mixed"] {
        let buf = data(kind, SEGMENT);
        g.bench_with_input(BenchmarkId::new("fastcdc_v2020", kind), &buf, |b, buf| {
            b.iter(|| fastcdc::v2020::FastCDC::new(buf, p.min_size, p.avg_size, p.max_size).count())
        });
        // The whole per-segment stage: zero runs, FastCDC and BLAKE3 of every chunk.
        let mut out = Vec::new();
        g.bench_with_input(BenchmarkId::new("split_segment", kind), &buf, |b, buf| {
            b.iter(|| {
                out.clear();
                split_segment(buf, 0, &[0..buf.len()], &p, &mut out);
                out.len()
            })
        });
    }
    g.finish();
}

fn hashing_and_zeros(c: &mut Criterion) {
    let buf = data("random", SEGMENT);
    let mut g = c.benchmark_group("hashing");
    g.throughput(Throughput::Bytes(SEGMENT as u64));
    g.sample_size(20);
    g.bench_function("blake3_16k_chunks", |b| b.iter(|| buf.chunks(16 << 10).map(ChunkId::of).last()));
    let zeros = vec![0u8; SEGMENT];
    g.bench_function("is_zero", |b| b.iter(|| is_zero(black_box(&zeros))));
    g.finish();
}

fn compression(c: &mut Criterion) {
    let mut g = c.benchmark_group("compression");
    let len = 4 << 20;
    g.throughput(Throughput::Bytes(len as u64));
    g.sample_size(10);
    for kind in ["text", "random", "mixed"] {
        let buf = data(kind, len);
        let chunks: Vec<(ChunkId, &[u8])> = buf.chunks(16 << 10).map(|c| (ChunkId::of(c), c)).collect();
        for level in [1, 3] {
            g.bench_with_input(BenchmarkId::new(format!("zstd{level}_verify"), kind), &chunks, |b, chunks| {
                b.iter(|| {
                    chunks
                        .iter()
                        .map(|(id, c)| compress_chunk(*id, c, level).map(|s| s.1.len()).unwrap_or(0))
                        .sum::<usize>()
                })
            });
        }
        let stored: Vec<_> =
            chunks.iter().map(|(id, c)| (*id, compress_chunk(*id, c, 3).unwrap(), c.len() as u32)).collect();
        g.bench_with_input(BenchmarkId::new("decode_verify", kind), &stored, |b, stored| {
            b.iter(|| {
                stored
                    .iter()
                    .map(|(id, (codec, s), n)| decode_chunk(*id, *codec, s, *n).map(|r| r.len()).unwrap_or(0))
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, chunking, hashing_and_zeros, compression);
criterion_main!(benches);
