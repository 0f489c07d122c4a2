//! Random reads through the image reader (`ImageReader::read_at`), the path that mount, NBD and
//! the file browser will take: 4 KiB, 64 KiB and 1 MiB reads at random offsets of a 512 MiB
//! image (a third random, a third text, a third zeros, per MiB), with a cache of decoded frames
//! too small to hold the image ("cold": almost every read decodes a frame) and one that holds it
//! all ("warm": after the first pass, no read decodes). Packs are in the page cache: this
//! measures the reader, not the disk.
//!
//! Run: `cargo bench --bench reader` (setup backs up the image once, about 5 s).

mod common;

use common::data;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use strata::progress::Silent;
use strata::{BackupOptions, InitOptions, Repository};

const DISK: usize = 512 << 20;

fn random_reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("disk.img");
    std::fs::write(&src, data("mixed", DISK)).expect("write disk");
    let repo_path = dir.path().join("repo");
    Repository::init(&repo_path, &InitOptions::default()).expect("init");
    let info = {
        let w = Repository::open_writer(&repo_path, "bench").expect("open");
        strata::backup(&w, &src, &BackupOptions::default(), &Silent).expect("backup")
    };
    let repo = Repository::open(&repo_path).expect("open");
    let mut g = c.benchmark_group("image_reader");
    g.sample_size(20);
    for (cache, cache_bytes) in [("cold", 8u64 << 20), ("warm", 1u64 << 30)] {
        let reader = repo.reader(&info, cache_bytes).expect("reader");
        for len in [4usize << 10, 64 << 10, 1 << 20] {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut buf = vec![0u8; len];
            g.throughput(Throughput::Bytes(len as u64));
            g.bench_function(BenchmarkId::new(format!("read_at_{cache}"), format!("{}KiB", len >> 10)), |b| {
                b.iter(|| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let at = (x % (DISK - len) as u64) & !4095;
                    reader.read_at(at, &mut buf).expect("read")
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, random_reads);
criterion_main!(benches);
