//! A backup killed at any moment loses nothing already backed up, leaves a working repository,
//! and the next backup succeeds.

mod common;

use std::collections::HashMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{strata_cmd, Disk, TestRepo};
use strata::id::ImageId;
use strata::KindRequest;

const MIB: usize = 1 << 20;

fn spawn_backup(repo: &TestRepo, src: &std::path::Path, failpoint: Option<&str>) -> Child {
    let mut cmd = strata_cmd();
    cmd.arg("-r").arg(&repo.path).args(["backup", "--source-id", "disk", "--force-read"]).arg(src);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(fp) = failpoint {
        cmd.env("STRATA_FAILPOINT", fp);
    }
    cmd.spawn().expect("spawn strata")
}

/// Every image the repository lists restores to the bytes recorded for it; images published by
/// a killed run (its manifest made it) are checked against the disk of that run.
fn check_all(repo: &TestRepo, expected: &mut HashMap<ImageId, Vec<u8>>, in_flight: &[u8]) {
    for info in repo.images() {
        let want = expected.entry(info.id).or_insert_with(|| in_flight.to_vec()).clone();
        assert!(repo.restore_bytes(&info) == want, "image {} does not restore", info.id);
    }
}

fn history_disk(seed: u64) -> Disk {
    Disk::new(seed, 12 * MIB).random(0..4 * MIB).text(4 * MIB..8 * MIB).random(10 * MIB..12 * MIB)
}

#[test]
fn a_kill_at_each_commit_step_loses_nothing() {
    for point in ["object-before-rename", "pack-before-index", "before-manifest", "manifest-before-catalog"] {
        let repo = TestRepo::small();
        let src = repo.file("disk.img");
        let mut disk = history_disk(1);
        disk.write_to(&src);
        let mut expected = HashMap::new();
        let full = repo.backup(&src, KindRequest::Full);
        expected.insert(full.id, disk.bytes.clone());

        disk = disk.scatter_blocks(200).text(MIB..3 * MIB);
        disk.write_to(&src);
        let status = spawn_backup(&repo, &src, Some(point)).wait().unwrap();
        assert!(!status.success(), "failpoint {point} did not fire");
        check_all(&repo, &mut expected, &disk.bytes);
        let published = repo.images().len() == 2;
        // Only a run that got past the manifest's rename has published its image.
        assert_eq!(published, point == "manifest-before-catalog", "at {point}");

        // The repository works: the next backup succeeds and everything restores.
        let next = repo.try_backup(&src, KindRequest::Auto, true).expect("backup after crash");
        expected.insert(next.id, disk.bytes.clone());
        check_all(&repo, &mut expected, &disk.bytes);
        // Leftovers are orphans only: no temporary file remains visible as an object.
        for f in repo.files_in("images") {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            assert!(name.starts_with(".tmp.") || ImageId::parse(&name).is_some(), "stray {name}");
        }
    }
}

#[test]
fn kill_9_at_random_moments_during_backups() {
    let iterations: usize = std::env::var("STRATA_CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let mut disk = history_disk(2);
    disk.write_to(&src);
    let mut expected = HashMap::new();
    let full = repo.backup(&src, KindRequest::Full);
    expected.insert(full.id, disk.bytes.clone());

    // How long an uninterrupted backup takes, to spread the kills over its whole run.
    let t = Instant::now();
    assert!(spawn_backup(&repo, &src, None).wait().unwrap().success());
    let typical = t.elapsed().max(Duration::from_millis(50));
    check_all(&repo, &mut expected, &disk.bytes);

    let (mut killed, mut finished) = (0, 0);
    for i in 0..iterations {
        let (blocks, at_mib) = (50 + disk.below(300), disk.below(6) * MIB);
        disk = disk.scatter_blocks(blocks).text(at_mib..at_mib + 200_000);
        disk.write_to(&src);
        let mut child = spawn_backup(&repo, &src, None);
        let at = typical.mul_f64((i as f64 + 0.5) / iterations as f64 * 1.2);
        std::thread::sleep(at);
        match child.try_wait().unwrap() {
            Some(_) => finished += 1,
            None => {
                child.kill().unwrap(); // SIGKILL
                killed += 1;
            }
        }
        child.wait().unwrap();
        check_all(&repo, &mut expected, &disk.bytes);
        if i % 4 == 3 {
            let next = repo.try_backup(&src, KindRequest::Auto, true).expect("backup after kill");
            expected.insert(next.id, disk.bytes.clone());
        }
    }
    assert!(killed >= iterations / 2, "only {killed} of {iterations} runs were killed mid-way ({finished} finished)");
    let last = repo.try_backup(&src, KindRequest::Auto, true).expect("final backup");
    assert!(repo.restore_bytes(&last) == disk.bytes);
}
