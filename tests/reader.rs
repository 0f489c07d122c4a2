//! The image reader: any byte range of any image of a chain reads back exactly as the disk was,
//! zero runs included; a range that meets a damaged chunk is an error and never wrong bytes,
//! while every other range still reads.

mod common;

use common::{Disk, TestRepo};
use strata::index::ChunkLookup;
use strata::KindRequest;

const MIB: usize = 1 << 20;

/// Deterministic offsets and lengths: small, chunk-sized and large reads, and reads that cross
/// the end of the disk.
fn reads(seed: u64, size: usize) -> Vec<(usize, usize)> {
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as usize
    };
    let mut out = vec![(0, size), (size - 10, 100), (size, 10)];
    for _ in 0..300 {
        let len = [1, 4096, 65536, MIB, 3 * MIB][next() % 5];
        out.push((next() % size, len));
    }
    out
}

#[test]
fn any_range_of_any_image_of_a_chain_reads_back_as_the_disk_was() {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let mut disk =
        Disk::new(5, 6 * MIB).random(0..2 * MIB).zeros(2 * MIB..3 * MIB).text(3 * MIB..5 * MIB).hole(5 * MIB..6 * MIB);
    let mut images = Vec::new();
    for (n, kind) in [KindRequest::Full, KindRequest::Incremental, KindRequest::Differential, KindRequest::Incremental]
        .iter()
        .enumerate()
    {
        disk = disk
            .scatter_blocks(40)
            .random(n * MIB..n * MIB + 70_000)
            .zeros(4 * MIB + n * 8192..4 * MIB + n * 8192 + 5000);
        disk.write_to(&src);
        images.push((repo.try_backup(&src, *kind, true).expect("backup"), disk.bytes.clone()));
    }
    let r = common::open_repo(&repo.path).unwrap();
    for (info, bytes) in &images {
        let reader = r.reader(info, 4 * MIB as u64).unwrap();
        for (offset, len) in reads(info.id.0[0] as u64 + 1, bytes.len()) {
            let mut buf = vec![0xA5u8; len];
            let n = reader.read_at(offset as u64, &mut buf).unwrap();
            let want = &bytes[offset.min(bytes.len())..(offset + len).min(bytes.len())];
            assert_eq!(n, want.len(), "image {} at {offset}+{len}", info.id.short());
            assert!(buf[..n] == *want, "image {} at {offset}+{len} reads other bytes", info.id.short());
        }
        // The map's extents tile the disk, and what it calls zeros is zeros.
        let extents = reader.map().extents(0..bytes.len() as u64);
        let mut at = 0;
        for e in &extents {
            assert_eq!(e.offset, at, "image {}: extents do not tile the disk", info.id.short());
            at = e.end();
            if e.is_zero() {
                assert!(bytes[e.offset as usize..e.end() as usize].iter().all(|&b| b == 0), "a zero extent holds data");
            }
        }
        assert_eq!(at, bytes.len() as u64);
        let zeros: u64 = extents.iter().filter(|e| e.is_zero()).map(|e| e.len).sum();
        assert!(zeros >= MIB as u64, "image {}: only {zeros} bytes of zero extents", info.id.short());
    }
}

#[test]
fn a_damaged_chunk_fails_its_range_only_and_never_returns_wrong_bytes() {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let disk = Disk::new(6, 4 * MIB).random(0..4 * MIB);
    disk.write_to(&src);
    let info = repo.try_backup(&src, KindRequest::Full, true).expect("backup");
    let r = common::open_repo(&repo.path).unwrap();
    let reader = r.reader(&info, 4 * MIB as u64).unwrap();
    // Damage the chunk at 2 MiB: one byte in the middle of its bytes (random data is stored raw,
    // so its stored bytes are the decoded frame).
    let victim = *reader.map().pieces_in(2 * MIB as u64..2 * MIB as u64 + 1).first().unwrap();
    let loc = r.index().locate(&[victim.id]).unwrap()[0].unwrap();
    let pack = repo.path.join(loc.pack.path());
    let mut b = std::fs::read(&pack).unwrap();
    assert_eq!(loc.slot.codec, strata::pack::Codec::Raw);
    b[(loc.slot.offset + (loc.slot.skip + loc.slot.raw_len / 2) as u64) as usize] ^= 0x40;
    std::fs::write(&pack, &b).unwrap();
    drop(reader);
    let reader = r.reader(&info, 4 * MIB as u64).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = reader.read_at(victim.offset + 10, &mut buf).expect_err("a damaged chunk read without error");
    assert!(matches!(err, strata::Error::CorruptChunk { .. }), "{err}");
    // Every range of other chunks still reads, exactly; in an encrypted repository, every
    // range of other frames (a frame is sealed as one, so a flipped byte fails all its chunks).
    let mut read_elsewhere = 0;
    for at in (0..4 * MIB as u64).step_by(64 * 1024) {
        let id = reader.map().pieces_in(at..at + 1)[0].id;
        let here = r.index().locate(&[id]).unwrap()[0].unwrap();
        if id == victim.id || (common::encrypted() && (here.pack, here.slot.offset) == (loc.pack, loc.slot.offset)) {
            continue;
        }
        let n = reader.read_at(at, &mut buf[..1]).unwrap();
        assert_eq!((n, buf[0]), (1, disk.bytes[at as usize]), "at {at}");
        read_elsewhere += 1;
    }
    assert!(read_elsewhere > 30, "{read_elsewhere}");
}
