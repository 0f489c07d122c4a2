//! `strata mount`: the repository as a read-only FUSE filesystem, read by ordinary programs
//! (`std::fs`, `pread`, `lseek`) through the kernel. Needs root and /dev/fuse; where they are
//! missing each test says so and checks nothing (CI runs as root, with FUSE).

mod common;

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::mounted::{is_mounted, MountedRepo};
use common::{assert_clean_failure, Disk, TestRepo};
use strata::id::ImageId;
use strata::mount::source_dir_name;
use strata::{ImageInfo, KindRequest};

const MIB: usize = 1 << 20;

/// Every file below `dir` with its bytes (the repository's state, to prove the mount wrote
/// nothing, not even to RocksDB's own log).
fn snapshot(dir: &Path) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Waits up to 10 s for `cond`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(10), "not within 10 s: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn image_file(m: &MountedRepo, info: &ImageInfo) -> std::path::PathBuf {
    m.path(&format!("images/{}.img", info.id))
}

#[test]
fn every_image_of_a_chain_reads_identical_through_the_mount_and_the_repository_is_untouched() {
    use KindRequest::*;
    let (repo, bytes) = common::history(31, &[Full, Incremental, Differential, Incremental, Full]);
    let before = snapshot(&repo.path);
    let Some(m) = MountedRepo::start(&repo, "mnt", &[]) else { return };
    let images = repo.images();
    for info in &images {
        let file = image_file(&m, info);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), info.logical_bytes);
        assert!(std::fs::read(&file).unwrap() == bytes[&info.id], "image {} reads other bytes", info.id);
        assert!(m.path(&format!("images/{}", info.id)).is_dir());
    }
    // Several readers at once, each at random offsets and lengths, as a VM or a copy tool reads.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (m, images, bytes) = (&m, &images, &bytes);
            s.spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                for _ in 0..200 {
                    let info = &images[(next() % images.len() as u64) as usize];
                    let f = std::fs::File::open(image_file(m, info)).unwrap();
                    let len = 1 + (next() % (300 << 10)) as usize;
                    let at = (next() % info.logical_bytes) as usize;
                    let want = &bytes[&info.id][at..(at + len).min(info.logical_bytes as usize)];
                    let mut got = vec![0u8; want.len()];
                    f.read_exact_at(&mut got, at as u64).unwrap();
                    assert!(got == want, "image {} at {at}+{len}", info.id);
                }
            });
        }
    });
    // sources/<SOURCE>/: a link per image, named by time, kind and id, and latest.img.
    let source = m.path(&format!("sources/{}", source_dir_name(&images[0].source_id)));
    let mut links: Vec<String> =
        std::fs::read_dir(&source).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    links.sort();
    assert_eq!(links.len(), images.len() + 1, "{links:?}");
    for info in &images {
        let name = format!("{}-{}-{}.img", strata::timefmt::format_ms(info.created_ms), info.kind.name(), info.id);
        let link = source.join(&name);
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new(&format!("../../images/{}.img", info.id)));
        assert!(std::fs::read(&link).unwrap() == bytes[&info.id]);
    }
    let newest = images.last().unwrap();
    assert!(std::fs::read(source.join("latest.img")).unwrap() == bytes[&newest.id]);
    // Writes are refused.
    let err = std::fs::OpenOptions::new().write(true).open(image_file(&m, newest)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let log = m.stop();
    assert!(log.contains("unmounted"), "{log}");
    assert!(snapshot(&repo.path) == before, "the mount changed the repository");
}

#[test]
fn zero_runs_are_holes_to_seek_data_seek_hole_and_du() {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    Disk::new(32, 8 * MIB).random(0..2 * MIB).zeros(2 * MIB..6 * MIB).random(6 * MIB..7 * MIB).write_to(&src);
    let info = repo.backup(&src, KindRequest::Full);
    let Some(m) = MountedRepo::start(&repo, "mnt", &[]) else { return };
    let file = std::fs::File::open(image_file(&m, &info)).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let seek = |from: usize, whence| {
        // SAFETY: lseek on an open descriptor.
        let at = unsafe { libc::lseek(fd, from as libc::off_t, whence) };
        (at >= 0).then_some(at as usize)
    };
    // Chunks may run a little into a zero run; a chunk is at most 64 KiB here.
    let hole = seek(0, libc::SEEK_HOLE).unwrap();
    assert!((2 * MIB..2 * MIB + 64 * 1024).contains(&hole), "first hole at {hole}");
    let data = seek(hole, libc::SEEK_DATA).unwrap();
    assert!((6 * MIB - 64 * 1024..=6 * MIB).contains(&data), "data again at {data}");
    let hole = seek(data, libc::SEEK_HOLE).unwrap();
    assert!((7 * MIB..7 * MIB + 64 * 1024).contains(&hole), "second hole at {hole}");
    assert_eq!(seek(hole, libc::SEEK_DATA), None, "data after the last data");
    assert_eq!(seek(8 * MIB, libc::SEEK_HOLE), None, "a hole past the end");
    let used = file.metadata().unwrap().blocks() * 512;
    assert!((3 * MIB as u64..3 * MIB as u64 + 256 * 1024).contains(&used), "st_blocks say {used} bytes");
    drop(file);
    m.stop();
}

#[test]
fn a_damaged_chunk_fails_its_range_with_eio_and_is_logged_never_wrong_bytes() {
    let (repo, bytes) = common::history(33, &[KindRequest::Full]);
    let info = repo.images().remove(0);
    let pack = repo.files_in("packs").into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let mut b = std::fs::read(&pack).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x20;
    std::fs::write(&pack, &b).unwrap();
    let Some(m) = MountedRepo::start(&repo, "mnt", &[]) else { return };
    let f = std::fs::File::open(image_file(&m, &info)).unwrap();
    let (mut good, mut bad) = (0, 0);
    let want = &bytes[&info.id];
    for at in (0..want.len()).step_by(64 * 1024) {
        let mut got = vec![0u8; 64 * 1024];
        match f.read_exact_at(&mut got, at as u64) {
            Ok(()) => {
                assert!(got == want[at..at + got.len()], "wrong bytes at {at}");
                good += 1;
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "at {at}: {e}");
                bad += 1;
            }
        }
    }
    assert!(bad > 0, "the damaged chunk was read without an error");
    assert!(good > 0, "one damaged chunk failed the whole image");
    drop(f);
    let log = m.stop();
    assert!(log.contains(&info.id.to_string()) && log.contains("at offset"), "{log}");
}

#[test]
fn images_published_or_forgotten_while_mounted_show_without_remounting() {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let mut disk = Disk::new(34, 4 * MIB).random(0..4 * MIB);
    disk.write_to(&src);
    let first = repo.backup(&src, KindRequest::Full);
    let first_bytes = disk.bytes.clone();
    let Some(m) = MountedRepo::start(&repo, "mnt", &[]) else { return };
    // Backups run beside the mount, while it is being read.
    let mut ids: Vec<ImageId> = vec![first.id];
    let mut expected = HashMap::from([(first.id, first_bytes.clone())]);
    for n in 0..2 {
        disk = disk.scatter_blocks(20).random(n * MIB..n * MIB + 200_000);
        disk.write_to(&src);
        let reading = std::fs::read(image_file(&m, &first)).unwrap();
        assert!(reading == first_bytes);
        let out = repo.cli(&["backup", "--json", "--source-id", &first.source_id, src.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let id = ImageId::parse(v["image"].as_str().unwrap()).unwrap();
        ids.push(id);
        expected.insert(id, disk.bytes.clone());
        let file = m.path(&format!("images/{id}.img"));
        eventually("the new image shows", || file.exists());
        assert!(std::fs::read(&file).unwrap() == disk.bytes);
        let latest = m.path(&format!("sources/{}/latest.img", source_dir_name(&first.source_id)));
        eventually("latest.img names the new image", || std::fs::read(&latest).is_ok_and(|b| b == disk.bytes));
    }
    // Forget the middle image and prune: it goes, the others still read (their chunks may have
    // moved to other packs).
    let out = repo.cli(&["forget", &ids[1].to_string(), "--prune"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gone = m.path(&format!("images/{}.img", ids[1]));
    eventually("the forgotten image goes", || !gone.exists());
    for id in [ids[0], ids[2]] {
        assert!(std::fs::read(m.path(&format!("images/{id}.img"))).unwrap() == expected[&id], "image {id}");
    }
    m.stop();
}

#[test]
fn signals_and_umount_end_the_mount_and_a_busy_mount_stays() {
    let (repo, _) = common::history(35, &[KindRequest::Full]);
    let Some(mut m) = MountedRepo::start(&repo, "mnt", &[]) else { return };
    assert!(m.signal(libc::SIGINT), "SIGINT did not end it: {}", m.log());
    assert!(!is_mounted(&m.dir) && m.log().contains("unmounted"), "{}", m.log());

    // `umount` from outside: the command notices and ends.
    let mut m = MountedRepo::start(&repo, "mnt2", &[]).unwrap();
    let ok = std::process::Command::new("umount").arg(&m.dir).status().unwrap().success();
    assert!(ok && m.wait_exit(Duration::from_secs(20)), "umount did not end it: {}", m.log());

    // Busy: a file open under it keeps it mounted (and serving) until it is closed.
    let m = MountedRepo::start(&repo, "mnt3", &[]).unwrap();
    let info = repo.images().remove(0);
    let open = std::fs::File::open(image_file(&m, &info)).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(m.pid(), libc::SIGINT) };
    eventually("the busy mount says so", || m.log().contains("busy"));
    assert!(is_mounted(&m.dir));
    let mut b = [0u8; 10];
    open.read_exact_at(&mut b, 0).unwrap();
    drop(open);
    let log = m.stop();
    assert!(log.contains("unmounted"), "{log}");
}

#[test]
fn bad_mount_points_and_a_missing_fuse_device_are_clear_errors() {
    let (repo, _) = common::history(36, &[KindRequest::Full]);
    let mount = |dir: &Path| repo.cli(&["mount", dir.to_str().unwrap()]);
    assert_clean_failure(&mount(&repo.file("nosuchdir")), "does not exist");
    let file = repo.file("afile");
    std::fs::write(&file, b"x").unwrap();
    assert_clean_failure(&mount(&file), "not a directory");
    let full = repo.file("full");
    std::fs::create_dir_all(full.join("inside")).unwrap();
    assert_clean_failure(&mount(&full), "not empty");
    let out = common::strata_cmd().args(["-r", "/nonexistent/repo", "mount"]).arg(repo.file("full")).output().unwrap();
    assert_clean_failure(&out, "not empty");
    let empty = repo.file("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = common::strata_cmd().args(["-r", "/nonexistent/repo", "mount"]).arg(&empty).output().unwrap();
    assert_clean_failure(&out, "not a Strata repository");

    let Some(m) = MountedRepo::start(&repo, "mnt", &[]) else { return };
    assert_clean_failure(&mount(&m.dir), "busy");
    m.stop();

    // No /dev/fuse: a private mount namespace with an empty /dev.
    let unshare = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs none /dev && exec \"$0\" -r \"$1\" mount \"$2\""])
        .arg(env!("CARGO_BIN_EXE_strata"))
        .arg(&repo.path)
        .arg(&empty)
        .output();
    match unshare {
        Ok(out) if !String::from_utf8_lossy(&out.stderr).contains("unshare failed") => {
            assert_clean_failure(&out, "FUSE is not available")
        }
        _ => eprintln!("SKIP: no private mount namespace (unshare -m) to hide /dev/fuse in"),
    }
}
