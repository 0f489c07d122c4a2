//! Chunks are stored once: unchanged data costs nothing, and an unchanged image file is not read.

mod common;

use std::time::Duration;

use common::{Disk, TestRepo};
use strata::KindRequest;

const MIB: usize = 1 << 20;

#[test]
fn re_reading_an_unchanged_disk_stores_under_one_percent() {
    let repo = TestRepo::new();
    let src = repo.file("disk.img");
    let disk = Disk::new(10, 32 * MIB).random(0..12 * MIB).text(12 * MIB..24 * MIB).random(28 * MIB..32 * MIB);
    disk.write_to(&src);
    let full = repo.backup(&src, KindRequest::Full);
    let again = repo.try_backup(&src, KindRequest::Incremental, true).unwrap();
    assert!(!again.read_skipped);
    assert_eq!(again.changed_bytes, 0);
    assert!(
        again.new_stored_bytes * 100 < full.new_stored_bytes,
        "unchanged re-backup stored {} bytes after a full of {}",
        again.new_stored_bytes,
        full.new_stored_bytes
    );
    // A new full of the same disk is a full image, yet stores nothing new either.
    let second_full = repo.try_backup(&src, KindRequest::Full, true).unwrap();
    assert_eq!(second_full.changed_bytes, disk.len() as u64);
    assert!(second_full.new_stored_bytes * 100 < full.new_stored_bytes);
    assert!(repo.restore_bytes(&second_full) == disk.bytes);
}

#[test]
fn repeated_blocks_inside_one_disk_are_stored_once() {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let disk = Disk::new(11, 8 * MIB).random(0..2 * MIB).repeat(0, 2 * MIB, 2 * MIB).repeat(0, 4 * MIB, 2 * MIB);
    disk.write_to(&src);
    let info = repo.backup(&src, KindRequest::Full);
    assert!(
        info.new_raw_bytes < 2 * MIB as u64 + 64 * 1024,
        "stored {} raw bytes for 2 MiB of distinct data",
        info.new_raw_bytes
    );
    assert!(repo.restore_bytes(&info) == disk.bytes);
}

#[test]
fn an_unchanged_image_file_is_recorded_without_reading_until_it_changes() {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let disk = Disk::new(12, 2 * MIB).random(0..2 * MIB);
    disk.write_to(&src);
    // A stat taken within the timestamp granularity of a write is not trusted: wait until the
    // file's change time is more than a second old (ctime cannot be set back).
    wait_until_older_than_a_second(&src);
    let full = repo.backup(&src, KindRequest::Full);
    assert!(full.source_stat.is_some());

    let skipped = repo.backup(&src, KindRequest::Auto);
    assert!(skipped.read_skipped, "an unchanged file should not be read");
    assert_eq!(skipped.changed_bytes, 0);
    assert!(repo.restore_bytes(&skipped) == disk.bytes);

    let forced = repo.try_backup(&src, KindRequest::Auto, true).unwrap();
    assert!(!forced.read_skipped, "--force-read reads");

    // Changed in place: same inode and size, new mtime/ctime, so it must be read.
    let changed = disk.clone().scatter_blocks(3);
    changed.write_in_place(&src);
    let after = repo.backup(&src, KindRequest::Auto);
    assert!(!after.read_skipped);
    assert!(after.changed_bytes > 0);
    assert!(repo.restore_bytes(&after) == changed.bytes);
}

fn wait_until_older_than_a_second(path: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    let changed = Duration::new(m.ctime().max(m.mtime()) as u64, 0)
        + Duration::from_nanos(m.ctime_nsec().max(m.mtime_nsec()) as u64);
    loop {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        if now > changed + Duration::from_millis(1100) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_file_changed_just_before_the_backup_is_read_by_the_next_one() {
    // Racy stat: a time within a second of the backup's start is not trusted, so its stat is not
    // recorded and the next backup reads it even though size, inode and times look the same.
    // The modification time is set a minute ahead, so "within a second" holds however slowly
    // the backup starts (it once had to start within 1 s of the write).
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let disk = Disk::new(13, MIB).random(0..MIB);
    disk.write_to(&src);
    let ahead = std::time::SystemTime::now() + Duration::from_secs(60);
    std::fs::File::options().write(true).open(&src).unwrap().set_modified(ahead).unwrap();
    let full = repo.backup(&src, KindRequest::Full);
    assert!(full.source_stat.is_none());
    let next = repo.backup(&src, KindRequest::Auto);
    assert!(!next.read_skipped);
}

/// `backup --force-read` of `disk` through the CLI: its JSON.
fn backup_json(repo: &TestRepo, disk: &std::path::Path) -> serde_json::Value {
    let out = repo.cli(&["backup", "--json", "--force-read", "--source-id", "disk", disk.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A segment whose fingerprint equals the base's is read and hashed but not chunked: its extents
/// are the base's. Only the edited segments are cut again, and in those only the chunks around
/// the edit (the rest are the base's, hashed again), every image restores exactly, and the
/// fingerprints survive `forget --rebase` rewriting the manifests they sit in.
#[test]
fn unchanged_segments_are_taken_from_the_base_and_every_image_restores() {
    let repo = TestRepo::small(); // 256 KiB segments
    let seg = 256 * 1024;
    let src = repo.file("disk.img");
    let mut disk = Disk::new(11, 32 * seg).random(0..32 * seg);
    disk.write_to(&src);
    let full = backup_json(&repo, &src);
    assert_eq!(full["bytes_reused"], 0, "a full has no base");
    let mut expected = vec![(full["image"].as_str().unwrap().to_string(), disk.bytes.clone())];
    for (n, at) in [5 * seg + 100, 9 * seg + 7, 31 * seg + 3].into_iter().enumerate() {
        disk.bytes[at] ^= 0xFF;
        disk.write_to(&src);
        let inc = backup_json(&repo, &src);
        assert_eq!(inc["bytes_reused"].as_u64().unwrap(), 31 * seg as u64, "step {n}: one segment cut again");
        // And in that segment, all but a few chunks around the edit and at its end are the
        // base's (4 KiB on average, at most 16 KiB).
        let taken = inc["chunk_bytes_reused"].as_u64().unwrap();
        assert!(taken > seg as u64 - 6 * 16384 && taken < seg as u64, "step {n}: {taken} bytes taken");
        assert!(inc["changed_bytes"].as_u64().unwrap() < 2 * seg as u64, "step {n}: {inc}");
        expected.push((inc["image"].as_str().unwrap().to_string(), disk.bytes.clone()));
    }
    for (id, bytes) in &expected {
        let info = common::open_repo(&repo.path).unwrap().find_image(id).unwrap();
        assert!(repo.restore_bytes(&info) == *bytes, "image {id} restores as it was read");
    }
    // Forget the full: the first incremental is rewritten as a synthetic full, its fingerprints
    // kept; the next backup still reuses segments, and everything restores.
    let out = repo.cli(&["forget", "--rebase", &expected[0].0]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    disk.bytes[2 * seg] ^= 1;
    disk.write_to(&src);
    let after = backup_json(&repo, &src);
    assert_eq!(after["bytes_reused"].as_u64().unwrap(), 31 * seg as u64);
    let info = common::open_repo(&repo.path).unwrap().find_image(after["image"].as_str().unwrap()).unwrap();
    assert!(repo.restore_bytes(&info) == disk.bytes);
    for (id, bytes) in &expected[1..] {
        let info = common::open_repo(&repo.path).unwrap().find_image(id).unwrap();
        assert!(repo.restore_bytes(&info) == *bytes, "image {id} after the rewrite");
    }
    assert!(repo.cli(&["check", "--read-data"]).status.success());
}
