//! Criterion benchmarks of the backup and restore stages, each with `Throughput::Bytes`.
//!
//! Run: `cargo bench --bench stages` (add `-- <filter>` for one stage, e.g. `-- chunking`).
//! Compare two versions: `cargo bench --bench stages -- --save-baseline before`, change the code,
//! then `cargo bench --bench stages -- --baseline before`. Inputs are seeded, so runs compare.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use strata::backup::{is_zero, split_segment};
use strata::config::ChunkerParams;
use strata::id::ChunkId;
use strata::id::PackId;
use strata::index::{ChunkLookup, Index};
use strata::manifest::Extent;
use strata::manifest::{ChangeFilter, Overlay, View};
use strata::pack::{
    chunk_of_frame, compress_chunk, compress_frame, decode_chunk, decode_frame, Codec, PackBuilder, PackEntry, Slot,
};

mod common;

use common::data;

const SEGMENT: usize = 16 << 20;

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
                split_segment(buf, 0, &[0..buf.len()], &p, &strata::crypto::Protection::none(), &mut out);
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
                    .map(|(id, (codec, s), n)| {
                        decode_chunk(&strata::crypto::Protection::none(), *id, *codec, s, *n)
                            .map(|r| r.len())
                            .unwrap_or(0)
                    })
                    .sum::<usize>()
            })
        });
        // Frames of 16 chunks (256 KiB) compressed together (backup uses 1 MiB), then each frame
        // decoded once and every chunk cut out of it and verified (restore, check).
        g.bench_with_input(BenchmarkId::new("zstd3_frames16_verify", kind), &chunks, |b, chunks| {
            b.iter(|| chunks.chunks(16).map(|f| compress_frame(f, 3).map(|s| s.1.len()).unwrap_or(0)).sum::<usize>())
        });
        let framed: Vec<_> = chunks.chunks(16).map(|f| (f, compress_frame(f, 3).unwrap())).collect();
        g.bench_with_input(BenchmarkId::new("decode_frames16_verify", kind), &framed, |b, framed| {
            b.iter(|| {
                let mut n = 0;
                for (f, (codec, s)) in framed {
                    let total: usize = f.iter().map(|(_, c)| c.len()).sum();
                    let frame = decode_frame(*codec, s, total as u32).unwrap();
                    let mut at = 0;
                    for (id, c) in f.iter() {
                        n += chunk_of_frame(&strata::crypto::Protection::none(), *id, &frame, at, c.len() as u32)
                            .map(<[u8]>::len)
                            .unwrap_or(0);
                        at += c.len() as u32;
                    }
                }
                n
            })
        });
    }
    g.finish();
}

fn encryption(c: &mut Criterion) {
    // XChaCha20-Poly1305 over frames as backup seals them and restore and check open them.
    use strata::crypto::{MasterKey, ObjectKind};
    let keys = MasterKey::from_bytes([7; 32]).keys();
    let mut g = c.benchmark_group("encryption");
    for len in [16usize << 10, 1 << 20] {
        let buf = data("random", len);
        g.throughput(Throughput::Bytes(len as u64));
        g.sample_size(20);
        let mut work = buf.clone();
        let mut nonce = [0u8; 24];
        g.bench_with_input(BenchmarkId::new("seal", len), &len, |b, _| {
            b.iter(|| keys.seal_detached(ObjectKind::Frame, b"pack", &mut nonce, &mut work).map(|t| t[0]))
        });
        let sealed = keys.seal(ObjectKind::Frame, b"pack", &buf).expect("sealed");
        let mut opened = sealed.clone();
        g.bench_with_input(BenchmarkId::new("open", len), &len, |b, _| {
            b.iter(|| {
                opened.copy_from_slice(&sealed);
                keys.open_in_place(ObjectKind::Frame, b"pack", &mut opened, &|| "frame".into()).map(|p| p.len())
            })
        });
        g.bench_with_input(BenchmarkId::new("keyed_blake3", len), &len, |b, _| {
            b.iter(|| blake3::keyed_hash(keys.chunk_id_key(), &buf))
        });
    }
    g.finish();
}

fn pack_writing(c: &mut Criterion) {
    // Already compressed frames of ~16 KiB, as the pipeline hands them over.
    let buf = data("mixed", 32 << 20);
    let frames: Vec<(ChunkId, Vec<u8>)> = buf.chunks(16 << 10).map(|c| (ChunkId::of(c), c.to_vec())).collect();
    let mut g = c.benchmark_group("pack");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.sample_size(10);
    g.bench_function("build_32MiB", |b| {
        b.iter(|| {
            let mut p = PackBuilder::new();
            for (id, f) in &frames {
                p.add(*id, Codec::Raw, f.len() as u32, f).expect("a plain pack");
            }
            p.finish().map(|(_, bytes, _)| bytes.len()).unwrap_or(0)
        })
    });
    g.finish();
}

fn index_lookups(c: &mut Criterion) {
    // 200,000 chunks indexed (about 3 GiB of data at 16 KiB), looked up in batches of 4,096.
    let dir = tempfile::tempdir().expect("temp dir");
    let index = Index::create(&dir.path().join("index"), &strata::crypto::Protection::none()).expect("index");
    let ids: Vec<ChunkId> = (0u32..200_000).map(|i| ChunkId::of(&i.to_le_bytes())).collect();
    for (n, part) in ids.chunks(2000).enumerate() {
        let entries: Vec<PackEntry> = part
            .iter()
            .enumerate()
            .map(|(i, id)| PackEntry {
                id: *id,
                slot: Slot {
                    offset: 12 + i as u64 * 100,
                    stored_len: 100,
                    raw_len: 16384,
                    codec: Codec::Zstd,
                    skip: 0,
                    frame_raw: 16384,
                },
            })
            .collect();
        index.add_pack(PackId::of(&(n as u64).to_le_bytes()), 1 << 25, &entries).expect("add");
    }
    let hits: Vec<ChunkId> = ids.iter().step_by(48).take(4096).copied().collect();
    let misses: Vec<ChunkId> = (0u32..4096).map(|i| ChunkId::of(&(i + 1_000_000).to_le_bytes())).collect();
    let mut g = c.benchmark_group("index");
    // Throughput in bytes of data the looked-up chunks stand for (16 KiB each).
    g.throughput(Throughput::Bytes(4096 * 16384));
    g.sample_size(20);
    g.bench_function("locate_4096_hits", |b| b.iter(|| index.locate(&hits).map(|v| v.len()).unwrap_or(0)));
    g.bench_function("locate_4096_misses", |b| b.iter(|| index.locate(&misses).map(|v| v.len()).unwrap_or(0)));
    g.finish();
}

/// A 2 GiB disk's view at 16 KiB chunks, and a delta touching `every`-th extent.
fn views(every: usize) -> (Vec<Extent>, Vec<Extent>) {
    let n = 131_072u64;
    let base: Vec<Extent> = (0..n).map(|i| Extent::chunk(i * 16384, 16384, ChunkId::of(&i.to_le_bytes()))).collect();
    let delta: Vec<Extent> = base
        .iter()
        .step_by(every)
        .map(|e| Extent::chunk(e.offset, e.len, ChunkId::of(&(e.offset + 1).to_le_bytes())))
        .collect();
    (base, delta)
}

fn manifests(c: &mut Criterion) {
    let (base, delta) = views(100);
    let mut new_view = base.clone();
    for d in &delta {
        new_view[(d.offset / 16384) as usize] = *d;
    }
    let mut g = c.benchmark_group("manifest");
    g.throughput(Throughput::Bytes(2 << 30));
    g.sample_size(10);
    g.bench_function("diff_2GiB_view_1pct_changed", |b| {
        b.iter(|| {
            let view: View = Box::new(base.clone().into_iter().map(Ok));
            let mut f = ChangeFilter::new(Some(view));
            new_view.iter().filter(|e| f.is_changed(e).unwrap_or(true)).count()
        })
    });
    g.bench_function("resolve_chain_full_plus_10_deltas", |b| {
        b.iter(|| {
            let mut v: View = Box::new(base.clone().into_iter().map(Ok));
            for _ in 0..10 {
                v = Box::new(Overlay::new(v, delta.clone().into_iter().map(Ok), 2 << 30));
            }
            v.count()
        })
    });
    g.finish();
}

criterion_group!(benches, chunking, hashing_and_zeros, compression, encryption, pack_writing, index_lookups, manifests);
criterion_main!(benches);
