//! Every image of every kind restores byte for byte, over chains, growth, shrinkage and holes.

mod common;

use common::{allocated_bytes, Disk, TestRepo};
use proptest::prelude::*;
use strata::{Kind, KindRequest};

const MIB: usize = 1 << 20;

#[test]
fn a_chain_of_full_incrementals_and_a_differential_restores_every_image_byte_for_byte() {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let mut disk =
        Disk::new(1, 4 * MIB).random(0..MIB).text(MIB..2 * MIB).hole(2 * MIB..3 * MIB).random(3 * MIB..4 * MIB);
    let mut expected = Vec::new();
    let steps = [
        KindRequest::Full,
        KindRequest::Incremental,
        KindRequest::Incremental,
        KindRequest::Differential,
        KindRequest::Incremental,
        KindRequest::Incremental,
        KindRequest::Differential,
        KindRequest::Auto,
    ];
    for (day, kind) in steps.iter().enumerate() {
        if day > 0 {
            disk = disk.scatter_blocks(20).text(day * 100_000..day * 100_000 + 5000);
        }
        disk.write_to(&src);
        let info = repo.backup(&src, *kind);
        expected.push((info, disk.bytes.clone()));
    }
    let kinds: Vec<Kind> = expected.iter().map(|(i, _)| i.kind).collect();
    use Kind::*;
    assert_eq!(
        kinds,
        [Full, Incremental, Incremental, Differential, Incremental, Incremental, Differential, Incremental]
    );
    // Bases follow the brief: a differential's base is the set's full, an incremental's the
    // previous image of the set.
    let full = expected[0].0.id;
    for (n, (info, _)) in expected.iter().enumerate().skip(1) {
        assert_eq!(info.set, full);
        match info.kind {
            Differential => assert_eq!(info.base, Some(full)),
            _ => assert_eq!(info.base, Some(expected[n - 1].0.id)),
        }
    }
    for (info, bytes) in &expected {
        assert!(repo.restore_bytes(info) == *bytes, "image {} ({:?}) differs", info.id, info.kind);
    }
    // Deltas list only what changed: an incremental one day's changes; a differential everything
    // since the full, so the later differential holds at least what the earlier one did.
    let len = disk.len() as u64;
    for (info, _) in &expected[1..] {
        let bound = if info.kind == Incremental { len / 8 } else { len / 2 };
        assert!(info.changed_bytes < bound, "{:?} listed {} changed bytes", info.kind, info.changed_bytes);
    }
    assert!(expected[6].0.changed_bytes > expected[3].0.changed_bytes, "differentials accumulate");
}

#[test]
fn a_backup_called_from_the_only_thread_of_a_pool_reads_every_segment_while_it_waits() {
    // The pipeline reads segments on the pool while its caller waits for them in disk order; a
    // caller that is itself the pool's only thread must run those reads instead of blocking.
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let disk = Disk::new(7, 3 * MIB + 5000).random(0..MIB).text(MIB..3 * MIB + 5000);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a pool of one thread");
    disk.write_to(&src);
    let full = pool.install(|| repo.backup(&src, KindRequest::Full));
    let changed = disk.clone().scatter_blocks(20);
    changed.write_to(&src);
    let incremental = pool.install(|| repo.backup(&src, KindRequest::Incremental));
    assert!(repo.restore_bytes(&full) == disk.bytes, "the full differs");
    assert!(repo.restore_bytes(&incremental) == changed.bytes, "the incremental differs");
}

#[test]
fn a_disk_that_grows_and_shrinks_between_images_restores_at_each_size() {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let sizes = [MIB, 3 * MIB, 3 * MIB / 2 + 17, 2 * MIB + 4095, 100];
    let mut disk = Disk::new(2, sizes[0]).random(0..sizes[0]);
    let mut expected = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        disk = disk.resize(size);
        if size > 4096 {
            disk = disk.random(size - 4096..size);
        }
        disk.write_to(&src);
        let kind = if i == 0 { KindRequest::Full } else { KindRequest::Incremental };
        expected.push((repo.backup(&src, kind), disk.bytes.clone()));
    }
    for (info, bytes) in &expected {
        assert_eq!(info.logical_bytes, bytes.len() as u64);
        assert!(repo.restore_bytes(info) == *bytes, "size {}", bytes.len());
    }
}

#[test]
fn edge_sizes_round_trip() {
    let p = common::small_params();
    let sizes = [
        0,
        1,
        511,
        513,
        4095,
        4097,
        p.min_size as usize - 1,
        p.min_size as usize,
        p.min_size as usize + 1,
        p.avg_size as usize,
        p.max_size as usize - 1,
        p.max_size as usize,
        p.max_size as usize + 1,
        p.segment_size as usize - 1,
        p.segment_size as usize + 1,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let repo = TestRepo::small();
        let src = repo.file("disk.img");
        for disk in [Disk::new(i as u64, size).random(0..size), Disk::new(i as u64, size).zeros(0..size)] {
            disk.write_to(&src);
            let info = repo.backup(&src, KindRequest::Full);
            assert_eq!(repo.restore_bytes(&info), disk.bytes, "size {size}");
        }
    }
}

#[test]
fn holes_and_zero_runs_cost_nothing_and_restore_as_holes() {
    let repo = TestRepo::new();
    let src = repo.file("sparse.img");
    let disk = Disk::new(3, 64 * MIB).random(0..MIB).zeros(8 * MIB..16 * MIB).random(40 * MIB..41 * MIB);
    disk.write_to(&src);
    let info = repo.backup(&src, KindRequest::Full);
    assert!(
        info.new_raw_bytes <= 2 * MIB as u64 + 64 * 1024,
        "stored {} raw bytes for 2 MiB of data",
        info.new_raw_bytes
    );
    let target = repo.file("out.img");
    repo.try_restore("latest", &target).unwrap();
    assert!(std::fs::read(&target).unwrap() == disk.bytes);
    let allocated = allocated_bytes(&target);
    assert!(allocated < 8 * MIB as u64, "restored file allocates {allocated} bytes; zero extents should be holes");
}

#[test]
fn restore_overwrites_an_existing_larger_file() {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let disk = Disk::new(4, MIB).random(0..MIB);
    disk.write_to(&src);
    repo.backup(&src, KindRequest::Full);
    let target = repo.file("out.img");
    std::fs::write(&target, vec![0xEE; 3 * MIB]).unwrap();
    repo.try_restore("latest", &target).unwrap();
    assert!(std::fs::read(&target).unwrap() == disk.bytes);
}

/// One step of a random history: how the disk changes and which kind of image follows.
#[derive(Debug, Clone)]
enum Change {
    Scatter(usize),
    Text(usize, usize),
    Hole(usize, usize),
    Repeat(usize, usize, usize),
    Resize(usize),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (1usize..30).prop_map(Change::Scatter),
        (0usize..2 * MIB, 1usize..200_000).prop_map(|(a, n)| Change::Text(a, n)),
        (0usize..2 * MIB, 1usize..300_000).prop_map(|(a, n)| Change::Hole(a, n)),
        (0usize..MIB, 0usize..MIB, 1usize..100_000).prop_map(|(a, b, n)| Change::Repeat(a, b, n)),
        (1usize..3 * MIB).prop_map(Change::Resize),
    ]
}

fn apply(disk: Disk, c: &Change) -> Disk {
    let len = disk.len();
    let clamp = |a: usize, n: usize| (a.min(len), (a + n).min(len));
    match *c {
        Change::Scatter(n) => disk.scatter_blocks(n),
        Change::Text(a, n) => {
            let (s, e) = clamp(a, n);
            disk.text(s..e)
        }
        Change::Hole(a, n) => {
            let (s, e) = clamp(a, n);
            disk.hole(s..e)
        }
        Change::Repeat(a, b, n) => {
            let n = n.min(len.saturating_sub(a.max(b)));
            if n == 0 || a >= len || b >= len {
                disk
            } else {
                disk.repeat(a, b, n)
            }
        }
        Change::Resize(size) => disk.resize(size),
    }
}

fn kind() -> impl Strategy<Value = KindRequest> {
    prop_oneof![
        Just(KindRequest::Full),
        Just(KindRequest::Differential),
        Just(KindRequest::Incremental),
        Just(KindRequest::Incremental),
        Just(KindRequest::Auto),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random histories of a mutating disk with random image kinds: after every backup, every
    /// image taken so far still restores to exactly the disk it was taken from.
    #[test]
    fn random_histories_restore_every_image(seed in any::<u64>(), steps in proptest::collection::vec((change(), kind()), 1..7)) {
        let repo = TestRepo::small();
        let src = repo.file("disk.img");
        let mut disk = Disk::new(seed, 2 * MIB).random(0..MIB).text(MIB..2 * MIB);
        disk.write_to(&src);
        let mut taken = vec![(repo.backup(&src, KindRequest::Full), disk.bytes.clone())];
        for (c, k) in &steps {
            disk = apply(disk, c);
            disk.write_to(&src);
            taken.push((repo.backup(&src, *k), disk.bytes.clone()));
        }
        for (info, bytes) in &taken {
            prop_assert!(repo.restore_bytes(info) == *bytes, "image {:?} depth {} differs", info.kind, info.depth);
        }
    }
}
