//! Files inside images (`ls`, `cat`), read straight from the repository: an ext4 filesystem
//! made by `mkfs.ext4 -d` from a directory tree lists and reads back as that tree, whole-disk
//! and as a partition (`IMAGE:N`); what cannot be read is a clear error.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{assert_clean_failure, Disk, TestRepo};
use strata::KindRequest;

const MIB: usize = 1 << 20;

/// A tree of files: nested directories, a file of random bytes, text, an empty file, a symlink,
/// modes other than the default.
fn tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("etc/deep/deeper")).unwrap();
    std::fs::write(dir.join("etc/hostname"), b"strata-test\n").unwrap();
    std::fs::write(dir.join("etc/deep/deeper/data.bin"), Disk::new(5, 700_000).random(0..700_000).bytes).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::set_permissions(dir.join("empty"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("etc/hostname", dir.join("name-link")).unwrap();
}

fn mkfs_ext4(image: &Path, files: &Path, size: usize) {
    std::fs::write(image, vec![0u8; size]).unwrap();
    let out = Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(files).arg(image).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A repository holding one full image of an ext4 filesystem made from `tree` (and `extra`
/// files written into it first): the repository, the tree, the filesystem image, the image id.
fn ext4_image(
    size: usize,
    extra: impl FnOnce(&Path),
) -> (TestRepo, std::path::PathBuf, std::path::PathBuf, strata::ImageInfo) {
    let repo = TestRepo::new();
    let files = repo.file("files");
    tree(&files);
    extra(&files);
    let image = repo.file("fs.img");
    mkfs_ext4(&image, &files, size);
    let info = repo.backup(&image, KindRequest::Full);
    (repo, files, image, info)
}

fn ls_json(repo: &TestRepo, args: &[&str]) -> Vec<serde_json::Value> {
    let out = repo.cli(&[&["ls", "--json"], args].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every entry `ls -R` lists under `/` matches the source tree: type, size, mode, symlink
/// target; and every regular file reads back through `cat` byte for byte.
fn assert_matches_tree(repo: &TestRepo, spec: &str, files: &Path) {
    let entries = ls_json(repo, &[spec, "-R"]);
    let listed: Vec<&str> =
        entries.iter().map(|e| e["path"].as_str().unwrap()).filter(|p| !p.starts_with("/lost+found")).collect();
    assert_eq!(
        listed,
        ["/empty", "/etc", "/etc/deep", "/etc/deep/deeper", "/etc/deep/deeper/data.bin", "/etc/hostname", "/name-link"]
    );
    for e in entries.iter().filter(|e| !e["path"].as_str().unwrap().starts_with("/lost+found")) {
        let path = e["path"].as_str().unwrap();
        let local = files.join(&path[1..]);
        let meta = std::fs::symlink_metadata(&local).unwrap();
        assert_eq!(e["mode"].as_u64(), Some((meta.mode() & 0o7777) as u64), "{path}");
        match e["type"].as_str().unwrap() {
            "file" => {
                assert_eq!(e["size"].as_u64(), Some(meta.len()), "{path}");
                let out = repo.cli(&["cat", spec, path]);
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                assert!(out.stdout == std::fs::read(&local).unwrap(), "{path} reads other bytes");
            }
            "dir" => assert!(meta.is_dir(), "{path}"),
            "symlink" => {
                assert_eq!(e["target"].as_str(), Some(std::fs::read_link(&local).unwrap().to_str().unwrap()));
            }
            other => panic!("{path}: {other}"),
        }
    }
    // A file alone, and a directory's own entries.
    let one = ls_json(repo, &[spec, "/etc/hostname"]);
    assert_eq!((one.len(), one[0]["size"].as_u64()), (1, Some(12)));
    let etc: Vec<String> =
        ls_json(repo, &[spec, "etc"]).iter().map(|e| e["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(etc, ["/etc/deep", "/etc/hostname"]);
    // `cat` follows a symlink.
    assert_eq!(repo.cli(&["cat", spec, "/name-link"]).stdout, b"strata-test\n");
}

#[test]
fn an_ext4_image_lists_and_reads_back_as_its_tree() {
    let (repo, files, _, _) = ext4_image(32 * MIB, |_| {});
    assert_matches_tree(&repo, "latest", &files);
}

#[test]
fn an_ext4_partition_of_a_gpt_disk_lists_and_reads_as_image_n() {
    let repo = TestRepo::new();
    let files = repo.file("files");
    tree(&files);
    let fs = repo.file("p1.img");
    mkfs_ext4(&fs, &files, 20 * MIB);
    let disk = repo.file("disk.img");
    common::gpt_disk(&disk, 32 * MIB, &[(2048, 40960, Some(&fs))]);
    repo.backup(&disk, KindRequest::Full);
    assert_matches_tree(&repo, "latest:1", &files);
    assert_clean_failure(&repo.cli(&["ls", "latest"]), "no filesystem");
}

#[test]
fn what_cannot_be_read_is_a_clear_error() {
    let (repo, files, _, info) = ext4_image(32 * MIB, |_| {});
    let id = info.id.to_string();
    assert_clean_failure(&repo.cli(&["cat", &id, "/nope"]), "no /nope");
    assert_clean_failure(&repo.cli(&["ls", &id, "/etc/nope"]), "no /etc/nope");
    assert_clean_failure(&repo.cli(&["cat", &id, "/etc"]), "cannot read /etc");
    assert_clean_failure(&repo.cli(&["ls", "nosuchimage"]), "no image matches");
    assert_clean_failure(&repo.cli(&["ls", &format!("{id}:1")]), "no partition table");

    let swap = repo.file("swap.img");
    std::fs::write(&swap, vec![0u8; 8 * MIB]).unwrap();
    let made = Command::new("mkswap").arg(&swap).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let v = repo.backup(&swap, KindRequest::Full).id.to_string();
    assert_clean_failure(
        &repo.cli(&["ls", &v]),
        "swap filesystem, which Strata cannot read files from (it reads ext2/3/4",
    );
    let random = repo.file("random.img");
    Disk::new(9, 4 * MIB).random(0..4 * MIB).write_to(&random);
    let r = repo.backup(&random, KindRequest::Full).id.to_string();
    assert_clean_failure(&repo.cli(&["ls", &r]), "no filesystem");

    // Damage every pack: reading fails with an error, never with wrong bytes.
    for pack in repo.files_in("packs") {
        let mut b = std::fs::read(&pack).unwrap();
        for at in (100..b.len().saturating_sub(200)).step_by(20_000) {
            b[at] ^= 0x20;
        }
        std::fs::write(&pack, &b).unwrap();
    }
    let out = repo.cli(&["cat", &id, "/etc/deep/deeper/data.bin"]);
    assert_clean_failure(&out, "cannot");
    let want = std::fs::read(files.join("etc/deep/deeper/data.bin")).unwrap();
    assert!(want.starts_with(&out.stdout), "cat wrote bytes that are not the file's");
}

/// Allocated bytes of a local file.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn extract_keeps_modes_times_links_and_holes_and_leaves_out_only_a_damaged_file() {
    let big = Disk::new(11, 4 * MIB).random(0..4 * MIB).bytes;
    let (repo, files, image, info) = ext4_image(64 * MIB, |files| {
        std::fs::write(files.join("big.bin"), &big).unwrap();
        let f = std::fs::File::create(files.join("sparse.bin")).unwrap();
        f.set_len(8 * MIB as u64).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"start", 0).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"end", 8 * MIB as u64 - 3).unwrap();
    });

    let out = repo.file("out");
    let run = repo.cli(&["extract", "latest", "/", "--to", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let mut stack = vec![files.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let src = e.unwrap().path();
            let got = out.join(src.strip_prefix(&files).unwrap());
            let (a, b) = (std::fs::symlink_metadata(&src).unwrap(), std::fs::symlink_metadata(&got).unwrap());
            assert_eq!(a.file_type(), b.file_type(), "{}", got.display());
            assert_eq!(a.mtime(), b.mtime(), "{}", got.display());
            if a.is_symlink() {
                assert_eq!(std::fs::read_link(&src).unwrap(), std::fs::read_link(&got).unwrap());
                continue;
            }
            assert_eq!(a.mode() & 0o7777, b.mode() & 0o7777, "{}", got.display());
            if a.is_dir() {
                stack.push(src);
            } else {
                assert!(std::fs::read(&src).unwrap() == std::fs::read(&got).unwrap(), "{}", got.display());
            }
        }
    }
    assert!(allocated(&out.join("sparse.bin")) < MIB as u64, "the sparse file was written whole");

    // Named paths land under their own names, as with `cp -a`.
    let out2 = repo.file("out2");
    let run = repo.cli(&["extract", "latest", "/etc/hostname", "/etc/deep", "--to", out2.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(std::fs::read(out2.join("hostname")).unwrap(), b"strata-test\n");
    assert!(out2.join("deep/deeper/data.bin").is_file());

    // Damage one chunk in the middle of big.bin (random data is stored raw: its stored bytes are
    // the chunk's).
    let disk = std::fs::read(&image).unwrap();
    let start = disk.windows(64).position(|w| w == &big[..64]).expect("big.bin's blocks in the image") as u64;
    damage_chunk_at(&repo, &info, start + MIB as u64);

    let out3 = repo.file("out3");
    let run = repo.cli(&["extract", "latest", "/", "--to", out3.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/big.bin") && !stderr.contains("panicked"), "{stderr}");
    assert!(!out3.join("big.bin").exists(), "a damaged file was written");
    assert_eq!(std::fs::read(out3.join("etc/hostname")).unwrap(), b"strata-test\n");
    assert!(
        std::fs::read(out3.join("etc/deep/deeper/data.bin")).unwrap()
            == std::fs::read(files.join("etc/deep/deeper/data.bin")).unwrap()
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out3)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("strata-extract"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
}

/// Setuid bits and fifos come back only with `--devices` (root only); device nodes and sockets
/// never, and each one left out is named.
#[test]
fn setuid_bits_and_fifos_need_devices_and_device_nodes_are_never_made() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: making a device node needs root");
        return;
    }
    let (repo, _files, _image, _info) = ext4_image(32 * MIB, |files| {
        std::fs::write(files.join("tool"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(files.join("tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        let c = |p: &Path| std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated paths.
        unsafe {
            assert_eq!(libc::mkfifo(c(&files.join("pipe")).as_ptr(), 0o640), 0);
            assert_eq!(libc::mknod(c(&files.join("null")).as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)), 0);
        }
    });
    let kinds: std::collections::BTreeMap<String, String> = ls_json(&repo, &["latest"])
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e["type"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(kinds["/pipe"], "fifo");
    assert_eq!(kinds["/null"], "char-device");

    let plain = repo.file("plain");
    let run = repo.cli(&["extract", "latest", "/", "--to", plain.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(std::fs::metadata(plain.join("tool")).unwrap().mode() & 0o7777, 0o755, "setuid kept by default");
    assert!(!plain.join("pipe").exists() && !plain.join("null").exists());
    assert!(stdout.contains("skipped /pipe") && stdout.contains("skipped /null"), "{stdout}");

    let full = repo.file("full");
    let run = repo.cli(&["extract", "latest", "/", "--devices", "--to", full.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(std::fs::metadata(full.join("tool")).unwrap().mode() & 0o7777, 0o4755);
    let pipe = std::fs::symlink_metadata(full.join("pipe")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&pipe.file_type()));
    assert_eq!(pipe.mode() & 0o7777, 0o640);
    assert!(!full.join("null").exists(), "a device node was made");
    assert!(stdout.contains("skipped /null") && stdout.contains("1 fifos"), "{stdout}");
}

#[test]
fn diff_names_every_added_removed_modified_and_retyped_path() {
    let (repo, files, image, info) = ext4_image(32 * MIB, |_| {});
    let old = info.id.to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a new mtime second
    std::fs::write(files.join("etc/hostname"), b"strata-tesx\n").unwrap(); // same size
    std::fs::remove_file(files.join("empty")).unwrap();
    std::fs::create_dir_all(files.join("new/dir")).unwrap();
    std::fs::write(files.join("new/dir/file"), b"new\n").unwrap();
    let data = files.join("etc/deep/deeper/data.bin");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::remove_file(files.join("name-link")).unwrap();
    std::fs::write(files.join("name-link"), b"now a file\n").unwrap();
    mkfs_ext4(&image, &files, 32 * MIB);
    let new = repo.backup(&image, KindRequest::Auto).id.to_string();

    let out = repo.cli(&["diff", &old, &new, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let changes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<(String, String, Vec<String>)> = changes
        .iter()
        .map(|c| {
            let what = c["what"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect();
            (c["path"].as_str().unwrap().to_string(), c["change"].as_str().unwrap().to_string(), what)
        })
        // Directories' own times change with their entries (and mkfs makes lost+found anew).
        .filter(|(p, change, what)| !(change == "modified" && what == &["mtime"]) && !p.starts_with("/lost+found"))
        .collect();
    let s = |p: &str, c: &str, w: &[&str]| (p.to_string(), c.to_string(), w.iter().map(|x| x.to_string()).collect());
    assert_eq!(
        got,
        vec![
            s("/empty", "removed", &[]),
            s("/etc/deep/deeper/data.bin", "modified", &["mode"]),
            s("/etc/hostname", "modified", &["content", "mtime"]),
            s("/name-link", "type", &[]),
            s("/new", "added", &[]),
            s("/new/dir", "added", &[]),
            s("/new/dir/file", "added", &[]),
        ]
    );
    // Below a path only; text form.
    let out = repo.cli(&["diff", &old, &new, "/etc/deep"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "M /etc/deep/deeper/data.bin (mode)\n");
    // The same image: no change.
    let out = repo.cli(&["diff", &new, &new, "--json"]);
    assert_eq!(serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap().len(), 0);
    assert_clean_failure(&repo.cli(&["diff", &old, "nosuchimage"]), "no image matches");
    // Two images whose every byte comes from the same chunks need no reading at all: with
    // every pack damaged, comparing an image with itself still answers, and a real
    // comparison fails cleanly.
    for pack in repo.files_in("packs") {
        let mut b = std::fs::read(&pack).unwrap();
        for at in (100..b.len().saturating_sub(200)).step_by(4096) {
            b[at] ^= 0x20;
        }
        std::fs::write(&pack, &b).unwrap();
    }
    let out = repo.cli(&["diff", &new, &new, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap().len(), 0);
    assert_clean_failure(&repo.cli(&["diff", &old, &new]), "cannot");
}

#[test]
fn names_that_are_not_utf8_are_listed_escaped_and_extracted_as_their_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9 \\ x.txt");
    let (repo, _, _, _) = ext4_image(32 * MIB, |files| {
        std::fs::write(files.join(name), b"latin-1 name\n").unwrap();
        std::os::unix::fs::symlink(name, files.join("to-latin1")).unwrap();
    });
    let entries = ls_json(&repo, &["latest"]);
    let escaped = r"caf\xe9 \\ x.txt";
    assert!(entries.iter().any(|e| e["path"] == format!("/{escaped}")), "{entries:?}");
    let link = entries.iter().find(|e| e["path"] == "/to-latin1").unwrap();
    assert_eq!(link["target"], escaped);
    assert_eq!(repo.cli(&["cat", "latest", &format!("/{escaped}")]).stdout, b"latin-1 name\n");
    let out = repo.file("out");
    let run = repo.cli(&["extract", "latest", "/", "--to", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(std::fs::read(out.join(name)).unwrap(), b"latin-1 name\n");
    assert_eq!(std::fs::read_link(out.join("to-latin1")).unwrap().as_os_str(), name);
}

/// Flips a byte of the chunk at disk offset `at` (raw-stored random data, so that chunk alone
/// fails its check). In an encrypted repository a flipped byte fails its whole frame (about
/// 1 MiB of chunks, sealed as one), so the damage moves to the first frame at or after `at` that
/// holds random data only: no byte before `at` is lost, and none outside the file, provided the
/// file goes on for a frame (up to 2 MiB) after `at`.
fn damage_chunk_at(repo: &TestRepo, info: &strata::ImageInfo, at: u64) {
    let r = common::open_repo(&repo.path).unwrap();
    let reader = r.reader(info, 4 * MIB as u64).unwrap();
    let locate = |id| strata::index::ChunkLookup::locate(r.index(), &[id]).unwrap()[0].unwrap();
    let victim = if common::encrypted() {
        *reader
            .map()
            .pieces_in(at..info.logical_bytes)
            .iter()
            .find(|p| {
                p.offset >= at && locate(p.id).slot.skip == 0 && locate(p.id).slot.codec == strata::pack::Codec::Raw
            })
            .unwrap()
    } else {
        *reader.map().pieces_in(at..at + 1).first().unwrap()
    };
    let loc = locate(victim.id);
    // Sealed frames fail as a whole, whatever their codec: any byte of the frame will do.
    let within = if common::encrypted() {
        loc.slot.stored_len / 2
    } else {
        assert_eq!(loc.slot.codec, strata::pack::Codec::Raw);
        loc.slot.skip + loc.slot.raw_len / 2
    };
    let pack = repo.path.join(loc.pack.path());
    let mut b = std::fs::read(&pack).unwrap();
    b[(loc.slot.offset + within as u64) as usize] ^= 0x40;
    std::fs::write(&pack, &b).unwrap();
}

/// The filesystem readers read ahead (256 KiB at a time): a damaged chunk next to a file, inside
/// the same read-ahead window, must not make that file unreadable, and the damaged file must
/// fail, never read wrong.
#[test]
fn a_damaged_chunk_fails_only_the_file_that_holds_it_even_next_door() {
    // Big enough that their frames hold random bytes only, which are stored raw.
    let a = Disk::new(21, 3 * MIB).random(0..3 * MIB).bytes;
    let b = Disk::new(22, 3 * MIB).random(0..3 * MIB).bytes;
    let (repo, _, image, info) = ext4_image(32 * MIB, |files| {
        std::fs::write(files.join("a.bin"), &a).unwrap();
        std::fs::write(files.join("b.bin"), &b).unwrap();
    });
    let disk = std::fs::read(&image).unwrap();
    let find = |bytes: &[u8]| disk.windows(64).position(|w| w == &bytes[..64]).expect("file in image") as u64;
    let (at_a, at_b) = (find(&a), find(&b));
    let (first, second) = (at_a.min(at_b), at_a.max(at_b));
    assert!(second - first <= 3 * MIB as u64 + 64 * 1024, "a.bin and b.bin are not neighbours: {at_a} {at_b}");
    // 64 KiB into whichever file lies second: the read-ahead window that serves the last blocks
    // of the first file reaches it.
    damage_chunk_at(&repo, &info, second + 64 * 1024);
    let (damaged, intact, intact_bytes) = if at_a < at_b { ("/b.bin", "/a.bin", &a) } else { ("/a.bin", "/b.bin", &b) };
    let out = repo.cli(&["cat", "latest", intact]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(&out.stdout == intact_bytes, "{intact} reads other bytes");
    let out = repo.cli(&["cat", "latest", damaged]);
    assert_clean_failure(&out, "cannot read");
}
