//! Delta restore: a target holding an older copy gets only what differs, in place, and ends
//! byte-identical to the image; running it again writes nothing.

mod common;

use common::{assert_clean_failure, Disk, TestRepo};
use strata::KindRequest;

const MIB: usize = 1 << 20;

fn restore_json(repo: &TestRepo, args: &[&str]) -> serde_json::Value {
    let out = repo.cli(args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Bytes of the 4 KiB blocks that differ between two disks (of any sizes).
fn changed_bytes(a: &[u8], b: &[u8]) -> u64 {
    let n = a.len().max(b.len());
    (0..n)
        .step_by(4096)
        .filter(|&i| {
            let blk = |d: &[u8]| d.get(i..(i + 4096).min(d.len())).unwrap_or(&[]).to_vec();
            blk(a) != blk(b)
        })
        .count() as u64
        * 4096
}

#[test]
fn the_newest_image_onto_the_oldest_writes_only_what_changed() {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let mut disk = Disk::new(31, 8 * MIB).random(0..3 * MIB).text(3 * MIB..6 * MIB).zeros(6 * MIB..7 * MIB);
    let mut images = Vec::new();
    for day in 0..4 {
        disk = disk.scatter_blocks(25).random(day * MIB..day * MIB + 50_000);
        if day == 3 {
            disk = disk.zeros(MIB / 2..MIB); // data that became zeros: a hole to punch
        }
        disk.write_to(&src);
        let kind = if day == 0 { KindRequest::Full } else { KindRequest::Incremental };
        images.push((repo.try_backup(&src, kind, true).unwrap(), disk.bytes.clone()));
    }
    let (oldest, old_bytes) = &images[0];
    let (newest, new_bytes) = &images[3];
    let target = repo.file("target.img");
    let t = target.to_str().unwrap();
    restore_json(&repo, &["restore", &oldest.id.to_string(), t, "--json"]);
    let v = restore_json(&repo, &["restore", &newest.id.to_string(), t, "--delta", "--json"]);
    assert!(std::fs::read(&target).unwrap() == *new_bytes, "the delta restore left other bytes");
    let written = v["written_bytes"].as_u64().unwrap();
    let changed = changed_bytes(old_bytes, new_bytes);
    assert!(written <= 3 * changed, "wrote {written} bytes for {changed} changed");
    assert!(written > 0);
    // Again: nothing differs, nothing is written.
    let v = restore_json(&repo, &["restore", &newest.id.to_string(), t, "--delta", "--json"]);
    assert_eq!(v["written_bytes"].as_u64(), Some(0));
    assert!(std::fs::read(&target).unwrap() == *new_bytes);
}

#[test]
fn a_target_of_another_size_or_content_ends_as_the_image() {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let disk = Disk::new(32, 4 * MIB).random(0..MIB).zeros(MIB..2 * MIB).text(2 * MIB..4 * MIB);
    disk.write_to(&src);
    let id = repo.backup(&src, KindRequest::Full).id.to_string();
    let target = repo.file("target.img");
    let t = target.to_str().unwrap();
    // Larger, with data where the image has zeros: truncated, and the zeros restored.
    std::fs::write(&target, Disk::new(33, 5 * MIB).random(0..5 * MIB).bytes).unwrap();
    restore_json(&repo, &["restore", &id, t, "--delta", "--json"]);
    assert!(std::fs::read(&target).unwrap() == disk.bytes, "a larger target");
    // Smaller: grown.
    std::fs::write(&target, &disk.bytes[..MIB + 123]).unwrap();
    restore_json(&repo, &["restore", &id, t, "--delta", "--json"]);
    assert!(std::fs::read(&target).unwrap() == disk.bytes, "a smaller target");
}

#[test]
fn bad_delta_targets_are_clear_errors() {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    Disk::new(34, MIB).random(0..MIB).write_to(&src);
    let id = repo.backup(&src, KindRequest::Full).id.to_string();
    let dir = repo.file("a-dir");
    std::fs::create_dir(&dir).unwrap();
    assert_clean_failure(&repo.cli(&["restore", &id, dir.to_str().unwrap(), "--delta"]), "neither a regular file");
    let link = repo.file("a-link");
    std::os::unix::fs::symlink(&src, &link).unwrap();
    assert_clean_failure(&repo.cli(&["restore", &id, link.to_str().unwrap(), "--delta"]), "neither a regular file");
    let missing = repo.file("missing.img");
    assert_clean_failure(&repo.cli(&["restore", &id, missing.to_str().unwrap(), "--delta"]), "cannot open");
    assert_clean_failure(
        &repo.cli(&["restore", &id, src.to_str().unwrap(), "--delta", "--partial"]),
        "cannot be used with",
    );
}
