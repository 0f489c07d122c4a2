//! FAT12/16/32 and NTFS inside images: filesystems made with the real tools (`mkfs.vfat` and
//! `mcopy`; `mkntfs` and an ntfs-3g mount) list, read and extract as the trees they hold, from
//! every image of a chain and from a partition of a GPT disk; compressed NTFS files read as
//! ntfs-3g wrote them; damaged filesystems are errors, never panics. The NTFS tests mount with ntfs-3g and need root;
//! without it they say so and skip.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{Disk, TestRepo};
use strata::KindRequest;

const MIB: usize = 1 << 20;

/// What a tree holds: each path (absolute, `/`-separated) and its bytes (`None` for a directory,
/// `Some(target)` with a leading `->` for a symlink).
type Snapshot = BTreeMap<String, Option<Vec<u8>>>;

fn snapshot(root: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let key = format!("/{}", path.strip_prefix(root).unwrap().to_str().unwrap());
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(key, Some(format!("->{}", target.display()).into_bytes()));
            } else if meta.is_dir() {
                out.insert(key, None);
                walk(root, &path, out);
            } else {
                out.insert(key, Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Snapshot::new();
    walk(root, root, &mut out);
    out
}

/// The tree of `spec` as the repository shows it: `ls -R --json` for the paths and kinds,
/// `cat` for each file's bytes.
fn listed(repo: &TestRepo, spec: &str) -> Snapshot {
    let out = repo.cli(&["ls", "--json", "-R", spec]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut tree = Snapshot::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let path = e["path"].as_str().unwrap().to_string();
        let value = match e["type"].as_str().unwrap() {
            "dir" => None,
            "symlink" => Some(format!("->{}", e["target"].as_str().unwrap()).into_bytes()),
            "file" => {
                let cat = repo.cli(&["cat", spec, &path]);
                assert!(cat.status.success(), "{path}: {}", String::from_utf8_lossy(&cat.stderr));
                assert_eq!(e["size"].as_u64(), Some(cat.stdout.len() as u64), "{path}");
                Some(cat.stdout)
            }
            other => panic!("{path}: {other}"),
        };
        tree.insert(path, value);
    }
    tree
}

/// `extract SPEC / --to DIR` gives back exactly `want`.
fn assert_extracts(repo: &TestRepo, spec: &str, want: &Snapshot, dir: &str) {
    let to = repo.file(dir);
    let out = repo.cli(&["extract", spec, "/", "--to", to.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same(&snapshot(&to), want, &format!("extract of {spec}"));
}

fn assert_same(got: &Snapshot, want: &Snapshot, what: &str) {
    let (g, w): (Vec<&String>, Vec<&String>) = (got.keys().collect(), want.keys().collect());
    assert_eq!(g, w, "{what}: other paths");
    for (path, bytes) in want {
        assert!(&got[path] == bytes, "{what}: {path} holds other bytes");
    }
}

/// A tree for FAT: long names with spaces, nested directories, random and text files, an
/// empty file, a file of several clusters.
fn fat_tree(dir: &Path, seed: u64) {
    std::fs::create_dir_all(dir.join("Some Long Directory Name/sub")).unwrap();
    std::fs::create_dir_all(dir.join("DOCS")).unwrap();
    std::fs::write(dir.join("hello.txt"), b"hello from FAT\n").unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::write(
        dir.join("Some Long Directory Name/sub/data.bin"),
        Disk::new(seed, 700_000).random(0..700_000).bytes,
    )
    .unwrap();
    std::fs::write(dir.join("DOCS/readme with a long name.md"), "line\n".repeat(3000)).unwrap();
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Copies `files`' contents into the FAT image with mtools (no mount, no root).
fn mcopy(image: &Path, files: &Path) {
    for e in std::fs::read_dir(files).unwrap() {
        let path = e.unwrap().path();
        run(Command::new("mcopy").env("TZ", "UTC").args(["-s", "-o", "-m", "-i"]).arg(image).arg(&path).arg("::/"));
    }
}

/// A FAT`bits` filesystem of `size` bytes at `image` made by `mkfs.vfat`, holding `files`.
fn fat_image(image: &Path, size: usize, bits: &str, files: &Path) {
    std::fs::write(image, vec![0u8; size]).unwrap();
    run(Command::new("mkfs.vfat").args(["-F", bits]).arg(image));
    mcopy(image, files);
}

#[test]
fn fat12_16_and_32_read_back_from_every_image_of_a_chain() {
    for (bits, size) in [("12", 4 * MIB), ("16", 32 * MIB), ("32", 48 * MIB)] {
        let repo = TestRepo::new();
        let files = repo.file("files");
        fat_tree(&files, 1);
        let image = repo.file("fat.img");
        fat_image(&image, size, bits, &files);
        let full = repo.backup(&image, KindRequest::Full).id.to_string();
        let day0 = snapshot(&files);

        // Day 1: a file rewritten bigger (its clusters move), one added, one removed.
        std::fs::write(files.join("hello.txt"), "hello again\n".repeat(5000)).unwrap();
        std::fs::write(files.join("DOCS/new.bin"), Disk::new(2, 300_000).random(0..300_000).bytes).unwrap();
        run(Command::new("mdel").arg("-i").arg(&image).arg("::/empty"));
        std::fs::remove_file(files.join("empty")).unwrap();
        mcopy(&image, &files);
        let day1_id = repo.backup(&image, KindRequest::Incremental).id.to_string();
        let day1 = snapshot(&files);

        // Day 2: the random file rewritten.
        std::fs::write(
            files.join("Some Long Directory Name/sub/data.bin"),
            Disk::new(3, 900_000).random(0..900_000).bytes,
        )
        .unwrap();
        mcopy(&image, &files);
        repo.backup(&image, KindRequest::Incremental);
        let day2 = snapshot(&files);

        for (spec, want) in [(full.as_str(), &day0), (day1_id.as_str(), &day1), ("latest", &day2)] {
            assert_same(&listed(&repo, spec), want, &format!("FAT{bits} {spec}"));
            assert_extracts(&repo, spec, want, &format!("out-{spec}"));
        }
        // FAT compares names without case, as the filesystem does.
        let out = repo.cli(&["cat", "latest", "/docs/NEW.BIN"]);
        assert!(out.status.success() && out.stdout == day2["/DOCS/new.bin"].clone().unwrap(), "FAT{bits}");
    }
}

#[test]
fn a_fat_partition_of_a_gpt_disk_reads_as_image_n() {
    let repo = TestRepo::new();
    let files = repo.file("files");
    fat_tree(&files, 4);
    let fs = repo.file("p2.img");
    fat_image(&fs, 16 * MIB, "16", &files);
    let disk = repo.file("disk.img");
    common::gpt_disk(&disk, 40 * MIB, &[(2048, 8192, None), (10240, 32768, Some(&fs))]);
    repo.backup(&disk, KindRequest::Full);
    let want = snapshot(&files);
    assert_same(&listed(&repo, "latest:2"), &want, "partition 2");
    assert_extracts(&repo, "latest:2", &want, "out");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An ntfs-3g mount of an image file, unmounted when dropped.
struct NtfsMount {
    dir: std::path::PathBuf,
}

impl NtfsMount {
    fn new(image: &Path, dir: &Path) -> NtfsMount {
        std::fs::create_dir_all(dir).unwrap();
        run(Command::new("ntfs-3g").args(["-o", "compression"]).arg(image).arg(dir));
        NtfsMount { dir: dir.to_path_buf() }
    }
}

impl Drop for NtfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

#[test]
fn ntfs_reads_back_from_every_image_of_a_chain_compressed_files_too() {
    if !is_root() {
        eprintln!("skipped: mounting NTFS with ntfs-3g needs root");
        return;
    }
    let repo = TestRepo::new();
    let image = repo.file("ntfs.img");
    std::fs::write(&image, vec![0u8; 64 * MIB]).unwrap();
    run(Command::new("mkntfs").args(["-q", "-F", "-f"]).arg(&image));
    let mnt = repo.file("mnt");
    let want = |mounted: &Path| snapshot(mounted);
    let day0 = {
        let m = NtfsMount::new(&image, &mnt);
        fat_tree(&m.dir, 5);
        std::os::unix::fs::symlink("hello.txt", m.dir.join("link")).unwrap();
        want(&m.dir)
    };
    let full = repo.backup(&image, KindRequest::Full).id.to_string();
    let day1 = {
        let m = NtfsMount::new(&image, &mnt);
        std::fs::write(m.dir.join("hello.txt"), "hello again\n".repeat(5000)).unwrap();
        std::fs::remove_file(m.dir.join("empty")).unwrap();
        std::fs::write(m.dir.join("DOCS/new.bin"), Disk::new(6, 300_000).random(0..300_000).bytes).unwrap();
        want(&m.dir)
    };
    repo.backup(&image, KindRequest::Incremental);
    for (spec, want) in [(full.as_str(), &day0), ("latest", &day1)] {
        assert_same(&listed(&repo, spec), want, &format!("NTFS {spec}"));
        assert_extracts(&repo, spec, want, &format!("out-{}", spec.len()));
    }

    // Compressed files (a directory flagged compressed, as Windows does it), which ntfs-3g
    // writes in LZNT1 units of 16 clusters: text (compressed units), random bytes (units stored
    // as they are), zeros (sparse units) and a mix, each reading back as the mount shows it.
    let day2 = {
        let m = NtfsMount::new(&image, &mnt);
        let packed = m.dir.join("packed");
        std::fs::create_dir(&packed).unwrap();
        let c = std::ffi::CString::new(packed.to_str().unwrap()).unwrap();
        let flags = 0x810u32.to_be_bytes(); // DIRECTORY | COMPRESSED
                                            // SAFETY: valid NUL-terminated strings and a 4-byte value.
        let rc = unsafe { libc::setxattr(c.as_ptr(), c"system.ntfs_attrib_be".as_ptr(), flags.as_ptr().cast(), 4, 0) };
        assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
        let text: Vec<u8> =
            (0..40_000).flat_map(|i| format!("line {i} of a compressible file\n").into_bytes()).collect();
        let random = Disk::new(7, 300_000).random(0..300_000).bytes;
        let mixed = [&text[..100_000], &vec![0u8; 200_000][..], &random[..150_000], &text[..12_345]].concat();
        std::fs::write(packed.join("text.txt"), &text).unwrap();
        std::fs::write(packed.join("random.bin"), &random).unwrap();
        std::fs::write(packed.join("zeros.bin"), vec![0u8; 256 * 1024]).unwrap();
        std::fs::write(packed.join("mixed.bin"), &mixed).unwrap();
        want(&m.dir)
    };
    repo.backup(&image, KindRequest::Incremental);
    assert_same(&listed(&repo, "latest"), &day2, "NTFS compressed");
    assert_extracts(&repo, "latest", &day2, "out-packed");
    // A read in the middle of a unit.
    let inside = repo.cli(&["cat", "latest", "/packed/mixed.bin"]);
    assert!(inside.stdout == day2["/packed/mixed.bin"].clone().unwrap());
}

/// A small xorshift generator: the damage is the same on every run of a seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Reads everything a damaged filesystem seems to hold, the way `ls -R` and `extract` do:
/// errors are fine, a panic fails the test.
fn read_all(repo: &strata::Repository, info: &strata::ImageInfo) {
    let reader = repo.reader(info, 4 * MIB as u64).unwrap();
    let Ok(files) = strata::files::Files::open(reader, "damaged") else { return };
    let Ok(entries) = files.list("/", true) else { return };
    for e in entries.iter().take(2000) {
        let _ = files.stat(&e.path);
        if e.kind == strata::files::EntryKind::File {
            let _ = files.copy(&e.path, &mut std::io::sink());
        }
    }
}

/// The glue code fuzzed with damaged filesystems: ext4, FAT16 and NTFS images made by the real
/// tools, with random bytes of their metadata flipped (seeded), are listed and read in full;
/// every outcome is a value or an error, never a panic or a hang.
#[test]
fn damaged_filesystems_are_errors_never_panics() {
    let repo = TestRepo::new();
    let files = repo.file("files");
    fat_tree(&files, 7);
    let mut made = Vec::new();
    let ext4 = repo.file("ext4.img");
    std::fs::write(&ext4, vec![0u8; 8 * MIB]).unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(&files).arg(&ext4));
    made.push(("ext4", ext4, 0..MIB));
    let fat = repo.file("fat.img");
    fat_image(&fat, 16 * MIB, "16", &files);
    made.push(("vfat", fat, 0..256 * 1024));
    let ntfs = repo.file("ntfs.img");
    std::fs::write(&ntfs, vec![0u8; 16 * MIB]).unwrap();
    run(Command::new("mkntfs").args(["-q", "-F", "-f"]).arg(&ntfs));
    run(Command::new("ntfscp").arg(&ntfs).arg(files.join("hello.txt")).arg("hello.txt"));
    let boot = std::fs::read(&ntfs).unwrap();
    let cluster = u16::from_le_bytes([boot[11], boot[12]]) as usize * boot[13] as usize;
    let mft = u64::from_le_bytes(boot[0x30..0x38].try_into().unwrap()) as usize * cluster;
    made.push(("ntfs", ntfs, mft..mft + 64 * 1024));

    let mut damaged_images = Vec::new();
    for (name, image, hot) in made {
        let clean = std::fs::read(&image).unwrap();
        for seed in 1..=24u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut bytes = clean.clone();
            for _ in 0..1 + rng.below(40) {
                // Mostly the superblock area and the metadata hot spot, sometimes anywhere.
                let at = match rng.below(4) {
                    0 => rng.below(8192),
                    1 => rng.below(bytes.len()),
                    _ => hot.start + rng.below(hot.len()),
                };
                bytes[at] ^= 1 << rng.below(8);
            }
            let damaged = repo.file(&format!("{name}-{seed}.img"));
            std::fs::write(&damaged, &bytes).unwrap();
            damaged_images.push((name, seed, repo.backup(&damaged, KindRequest::Full)));
        }
    }
    let r = common::open_repo(&repo.path).unwrap();
    for (name, seed, info) in damaged_images {
        let started = std::time::Instant::now();
        read_all(&r, &info);
        assert!(started.elapsed().as_secs() < 60, "{name} seed {seed}: reading took a minute (a loop?)");
    }
}

/// The mount's file view: `images/<ID>/p<N>.files/` for each partition Strata reads and
/// `images/<ID>/files/` for a whole-disk filesystem, browsed with ordinary calls (`read_dir`,
/// `read`, `read_link`) as `ls`, `find` and `cp` do.
#[test]
fn the_mount_shows_the_files_of_each_partition_and_of_a_whole_disk_filesystem() {
    let repo = TestRepo::new();
    let files = repo.file("files");
    fat_tree(&files, 8);
    let ext_files = repo.file("ext-files");
    fat_tree(&ext_files, 9);
    std::os::unix::fs::symlink("hello.txt", ext_files.join("link")).unwrap();
    let fat = repo.file("p1.img");
    fat_image(&fat, 16 * MIB, "16", &files);
    let ext4 = repo.file("p2.img");
    std::fs::write(&ext4, vec![0u8; 16 * MIB]).unwrap();
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(&ext_files).arg(&ext4));
    let disk = repo.file("disk.img");
    common::gpt_disk(&disk, 40 * MIB, &[(2048, 32768, Some(&fat)), (36864, 32768, Some(&ext4)), (69632, 8192, None)]);
    let gpt = repo.backup(&disk, KindRequest::Full).id;
    let whole = repo.backup(&ext4, KindRequest::Full).id;

    let Some(m) = common::mounted::MountedRepo::start(&repo, "mnt", &[]) else { return };
    let mut names: Vec<String> = std::fs::read_dir(m.path(&format!("images/{gpt}")))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    // Partition 3 holds no filesystem: its bytes, no files.
    assert_eq!(names, ["p1.files", "p1.img", "p2.files", "p2.img", "p3.img"]);
    let without_lost_found = |mut s: Snapshot| {
        s.remove("/lost+found");
        s
    };
    assert_same(&snapshot(&m.path(&format!("images/{gpt}/p1.files"))), &snapshot(&files), "p1.files");
    let want_ext = snapshot(&ext_files);
    assert_same(&without_lost_found(snapshot(&m.path(&format!("images/{gpt}/p2.files")))), &want_ext, "p2.files");
    assert_same(&without_lost_found(snapshot(&m.path(&format!("images/{whole}/files")))), &want_ext, "files");
    // Modes and times as the filesystem keeps them; a read at an offset; writes refused.
    let inside = m.path(&format!("images/{whole}/files/Some Long Directory Name/sub/data.bin"));
    let (a, b) = (
        std::fs::metadata(&inside).unwrap(),
        std::fs::metadata(ext_files.join("Some Long Directory Name/sub/data.bin")).unwrap(),
    );
    use std::os::unix::fs::{FileExt, MetadataExt};
    assert_eq!((a.mode() & 0o7777, a.mtime(), a.len()), (b.mode() & 0o7777, b.mtime(), b.len()));
    let mut buf = vec![0u8; 1000];
    std::fs::File::open(&inside).unwrap().read_exact_at(&mut buf, 123_456).unwrap();
    assert!(buf[..] == want_ext["/Some Long Directory Name/sub/data.bin"].as_ref().unwrap()[123_456..124_456]);
    assert!(std::fs::OpenOptions::new().write(true).open(&inside).is_err());
    assert!(!m.path(&format!("images/{gpt}/files")).exists());
    assert!(!m.path(&format!("images/{gpt}/p3.files")).exists());
    let log = m.stop();
    assert!(!log.contains("panicked"), "{log}");
}
