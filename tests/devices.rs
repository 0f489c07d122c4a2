//! Real block devices (loop devices) as sources and restore targets, and a repository on a full
//! filesystem (a small tmpfs). Both need root; without it the tests say so and skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_clean_failure, Disk, TestRepo};
use strata::{Error, KindRequest};

const MIB: usize = 1 << 20;

/// A loop device over a file, detached when dropped.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    fn attach(file: &Path) -> Option<Loop> {
        let out = Command::new("losetup").args(["--find", "--show"]).arg(file).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Some(Loop { dev: PathBuf::from(dev) })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn loops(repo: &TestRepo, sizes: &[usize]) -> Option<Vec<(Loop, PathBuf)>> {
    let mut out = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let file = repo.file(&format!("backing{i}.img"));
        Disk::new(i as u64, size).write_to(&file);
        match Loop::attach(&file) {
            Some(l) => out.push((l, file)),
            None => {
                eprintln!("SKIP: cannot attach a loop device (needs root and /dev/loop-control)");
                return None;
            }
        }
    }
    Some(out)
}

#[test]
fn block_devices_back_up_and_restore_byte_for_byte() {
    let repo = TestRepo::small();
    let Some(devs) = loops(&repo, &[8 * MIB, 8 * MIB, 4 * MIB]) else { return };
    let (src, dst, small) = (&devs[0].0.dev, &devs[1].0.dev, &devs[2].0.dev);

    let mut disk = Disk::new(30, 8 * MIB).random(0..3 * MIB).text(3 * MIB..6 * MIB);
    std::fs::write(src, &disk.bytes).unwrap();
    let full = repo.backup(src, KindRequest::Full);
    assert!(full.source_stat.is_none(), "block devices are always read");
    assert_eq!(full.logical_bytes, 8 * MIB as u64);

    let at_full = disk.bytes.clone();
    disk = disk.scatter_blocks(25);
    std::fs::write(src, &disk.bytes).unwrap();
    let inc = repo.backup(src, KindRequest::Auto);
    assert!(!inc.read_skipped);
    assert!(inc.changed_bytes > 0 && inc.changed_bytes < 2 * MIB as u64);

    // Restore to a device filled with junk: zero extents must be written as zeros there.
    std::fs::write(dst, vec![0xCC; 8 * MIB]).unwrap();
    repo.try_restore(&inc.id.to_string(), dst).unwrap();
    assert!(std::fs::read(dst).unwrap() == disk.bytes);
    repo.try_restore(&full.id.to_string(), dst).unwrap();
    assert!(std::fs::read(dst).unwrap() == at_full);

    // A device too small is refused before anything is written.
    std::fs::write(small, vec![0x77; 4 * MIB]).unwrap();
    let err = repo.try_restore(&inc.id.to_string(), small).unwrap_err();
    assert!(
        matches!(err, Error::TargetTooSmall { needed, available, .. } if needed == 8 * MIB as u64 && available == 4 * MIB as u64)
    );
    assert!(std::fs::read(small).unwrap().iter().all(|&b| b == 0x77), "nothing may be written");
    let out = repo.cli(&["restore", &inc.id.to_string(), small.to_str().unwrap()]);
    assert_clean_failure(&out, "nothing was written");
}

/// A tmpfs mount, unmounted when dropped.
struct Mount {
    dir: PathBuf,
}

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status();
        ok.ok().filter(|s| s.success()).map(|_| Mount { dir: dir.into() })
    }

    fn resize(&self, size: &str) -> bool {
        let opts = format!("remount,size={size}");
        Command::new("mount").args(["-o", &opts]).arg(&self.dir).status().map(|s| s.success()).unwrap_or(false)
    }
}

/// A tmpfs of `size` in a temporary directory (unmounted before the directory goes), or `None`
/// with a SKIP line when this process may not mount.
fn small_tmpfs(size: &str) -> Option<(tempfile::TempDir, Mount)> {
    let scratch = tempfile::tempdir().unwrap();
    let Some(mount) = Mount::tmpfs(&scratch.path().join("fs"), size) else {
        eprintln!("SKIP: cannot mount a tmpfs (needs root)");
        return None;
    };
    Some((scratch, mount))
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

#[test]
fn a_full_disk_fails_the_backup_cleanly_and_the_repository_keeps_working() {
    let Some((_scratch, mount)) = small_tmpfs("40m") else { return };
    let repo_path = mount.dir.join("repo");
    let init = strata::InitOptions {
        chunker: common::small_params(),
        compression_level: 1,
        pack_target_size: 1 << 20,
        ..Default::default()
    };
    strata::Repository::init(&repo_path, &init).unwrap();
    let repo = TestRepo { dir: tempfile::tempdir().unwrap(), path: repo_path };
    let src = repo.file("disk.img");
    let small = Disk::new(31, 2 * MIB).random(0..MIB);
    small.write_to(&src);
    let first = repo.backup(&src, KindRequest::Full);

    // 48 MiB of incompressible data cannot fit in what is left of 40 MiB.
    let big = Disk::new(32, 48 * MIB).random(0..48 * MIB);
    big.write_to(&src);
    let out = repo.cli(&["backup", "--source-id", "disk", src.to_str().unwrap()]);
    assert_clean_failure(&out, "no space left");
    assert_eq!(repo.images().len(), 1, "the failed backup published nothing");
    assert!(repo.restore_bytes(&first) == small.bytes);

    // With space again, the same backup succeeds.
    assert!(mount.resize("160m"), "remount failed");
    let second = repo.try_backup(&src, KindRequest::Auto, false).expect("backup after freeing space");
    assert!(repo.restore_bytes(&second) == big.bytes);
    assert!(repo.restore_bytes(&first) == small.bytes);
}

/// A restore that fills its target's filesystem fails with a clear error and takes its
/// temporary file with it; the file it was to replace keeps its bytes.
#[test]
fn a_full_disk_fails_the_restore_cleanly_and_leaves_the_old_target_alone() {
    let Some((_scratch, mount)) = small_tmpfs("16m") else { return };
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let disk = Disk::new(33, 24 * MIB).random(0..24 * MIB);
    disk.write_to(&src);
    let image = repo.backup(&src, KindRequest::Full);

    let target = mount.dir.join("old.img");
    std::fs::write(&target, vec![0x55; MIB]).unwrap();
    let out = repo.cli(&["restore", &image.id.to_string(), target.to_str().unwrap()]);
    assert_clean_failure(&out, "no space left");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("restore") && !stderr.contains("backup again"), "{stderr}");
    assert!(std::fs::read(&target).unwrap() == vec![0x55; MIB], "the old target was changed");
    let left: Vec<_> = std::fs::read_dir(&mount.dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("old.img")], "the temporary file was left behind");

    // With space again, the same restore succeeds.
    assert!(mount.resize("64m"), "remount failed");
    repo.try_restore(&image.id.to_string(), &target).unwrap();
    assert!(std::fs::read(&target).unwrap() == disk.bytes);
}

/// A 10 KB backup once failed with "no space left" on a filesystem with 83 MB free: RocksDB
/// preallocated 70 MiB for its log, and the margin before each pack was 16 MiB on top. The
/// margin now follows what the backup can need.
#[test]
fn a_small_backup_fits_on_a_small_filesystem() {
    let scratch = tempfile::tempdir().unwrap();
    let image = scratch.path().join("fs.img");
    let mnt = scratch.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::File::create(&image).unwrap().set_len(100 << 20).unwrap();
    let mkfs = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image).status();
    if !mkfs.is_ok_and(|s| s.success()) {
        eprintln!("SKIP: mkfs.ext4 is not available");
        return;
    }
    if !Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mnt).status().is_ok_and(|s| s.success()) {
        eprintln!("SKIP: cannot mount a loop device (needs root)");
        return;
    }
    let mount = Mount { dir: mnt.clone() };
    let repo_path = mount.dir.join("repo");
    strata::Repository::init(&repo_path, &strata::InitOptions::default()).unwrap();
    let repo = TestRepo { dir: tempfile::tempdir().unwrap(), path: repo_path };
    let src = repo.file("small.img");
    Disk::new(41, 10_000).random(0..10_000).write_to(&src);
    for _ in 0..3 {
        let out = repo.cli(&["backup", "--force-read", src.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(repo.restore_bytes(&repo.images()[2]) == std::fs::read(&src).unwrap());
}

/// A restore onto a mounted block device once succeeded silently. It is refused, naming the
/// mount point, and the device is untouched; unmounted, the same restore works.
#[test]
fn a_mounted_block_device_is_refused_as_a_restore_target() {
    let repo = TestRepo::small();
    let Some(devs) = loops(&repo, &[8 * MIB]) else { return };
    let dev = &devs[0].0.dev;
    let src = repo.file("disk.img");
    let disk = Disk::new(50, 8 * MIB).random(0..4 * MIB);
    disk.write_to(&src);
    let full = repo.backup(&src, KindRequest::Full);
    if !Command::new("mkfs.ext4").args(["-q", "-F"]).arg(dev).status().is_ok_and(|s| s.success()) {
        eprintln!("SKIP: mkfs.ext4 is not available");
        return;
    }
    let mnt = repo.file("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    // Mounted read-only: a writable ext4 mount writes to its device on its own (lazy inode table
    // init, superblock updates) and once made this comparison fail while Strata wrote nothing.
    assert!(Command::new("mount").args(["-o", "ro,noload"]).arg(dev).arg(&mnt).status().unwrap().success());
    let mount = Mount { dir: mnt.clone() };
    let before = std::fs::read(dev).unwrap();
    let out = repo.cli(&["restore", &full.id.to_string(), dev.to_str().unwrap()]);
    assert_clean_failure(&out, "in use");
    assert_clean_failure(&out, mnt.to_str().unwrap());
    assert!(std::fs::read(dev).unwrap() == before, "the mounted device was written");
    drop(mount);
    let out = repo.cli(&["restore", &full.id.to_string(), dev.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(dev).unwrap() == disk.bytes);
}
