//! Used-block imaging (docs/DESIGN.md, "Used blocks"): a backup reads only the blocks that the
//! filesystems' allocation maps call used, records the rest as unused, and restores them as
//! zeros. On aged filesystems made with the real tools (half of their files deleted, so free
//! space holds old data), bare and inside a GPT disk with two partitions, every restore passes
//! the filesystem's own check, every file equals the source's, and every byte outside the unused
//! extents equals the source. Maps that cannot be trusted make the partition "every block".
//! Needs root (loop and ntfs-3g mounts); skipped, and said so, without.

mod common;

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use common::disks::{self, Fs};
use common::TestRepo;
use strata::manifest::Content;
use strata::partition::Disk;

fn skip() -> bool {
    if disks::usable() {
        return false;
    }
    eprintln!("SKIP: used-block tests need root, loop devices, FUSE and the filesystem tools");
    true
}

/// `strata backup --json` (with `extra` arguments) of `source`.
fn backup(repo: &TestRepo, source: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["backup", "--json"];
    if !extra.contains(&"--source-id") {
        args.extend(["--source-id", "disk"]);
    }
    args.extend_from_slice(extra);
    let src = source.to_str().unwrap();
    args.push(src);
    let out = repo.cli(&args);
    assert!(out.status.success(), "backup failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The unused extents of image `id`, as its chain resolves.
fn unused_of(repo: &TestRepo, id: &str) -> Vec<Range<u64>> {
    let r = common::open_repo(&repo.path).unwrap();
    let info = r.find_image(id).unwrap();
    let view = r.view(&r.chain(&info).unwrap()).unwrap();
    let mut out: Vec<Range<u64>> = Vec::new();
    for e in view {
        let e = e.unwrap();
        if e.content == Content::Unused {
            match out.last_mut() {
                Some(last) if last.end == e.offset => last.end = e.end(),
                _ => out.push(e.offset..e.end()),
            }
        }
    }
    out
}

/// Restores image `id` to `target` through the CLI.
fn restore(repo: &TestRepo, id: &str, target: &Path) {
    let _ = std::fs::remove_file(target);
    let out = repo.cli(&["restore", id, target.to_str().unwrap()]);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Every byte of `restored` outside `unused` equals `source`'s; inside, zeros.
fn assert_same_outside_unused(source: &Path, restored: &Path, unused: &[Range<u64>]) {
    let (a, b) = (std::fs::File::open(source).unwrap(), std::fs::File::open(restored).unwrap());
    let size = a.metadata().unwrap().len();
    assert_eq!(b.metadata().unwrap().len(), size, "restored size");
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0;
    let mut u = 0;
    while at < size {
        let n = ((size - at) as usize).min(x.len());
        a.read_exact_at(&mut x[..n], at).unwrap();
        b.read_exact_at(&mut y[..n], at).unwrap();
        for i in 0..n {
            let pos = at + i as u64;
            while u < unused.len() && unused[u].end <= pos {
                u += 1;
            }
            let in_unused = u < unused.len() && unused[u].start <= pos;
            if in_unused {
                assert_eq!(y[i], 0, "unused byte {pos} restored as {}", y[i]);
            } else if x[i] != y[i] {
                panic!("used byte {pos} differs: source {} restored {}", x[i], y[i]);
            }
        }
        at += n as u64;
    }
}

/// The checks of the issue on one restored filesystem image: its own check passes and every
/// file equals the source's.
fn assert_filesystem(fs: Fs, source: &Path, restored: &Path) {
    if let Err(e) = disks::fsck(fs, restored) {
        panic!("{fs:?} check of the restore failed:\n{e}");
    }
    let (want, got) = (disks::file_hashes(fs, source), disks::file_hashes(fs, restored));
    assert!(!want.is_empty(), "the source holds files");
    assert_eq!(got, want, "{fs:?}: files differ after restore");
}

/// A partition of `disk` copied out to `to`.
fn partition(disk: &Path, range: &Range<u64>, to: &Path) {
    let _ = std::fs::remove_file(to);
    disks::copy_range(disk, range.start, to, 0, range.end - range.start);
}

/// The whole story on one filesystem kind: aged, backed up bare and inside a GPT disk beside a
/// second filesystem, restored and checked; more files deleted, an incremental stores almost
/// nothing and restores checked again.
fn aged_filesystem_round_trip(fs: Fs, mib: u64, other: Fs, other_mib: u64) {
    let repo = TestRepo::new();
    let bare = repo.file("bare.img");
    disks::aged(fs, &bare, mib);
    let full = backup(&repo, &bare, &[]);
    let size = mib << 20;
    let unused = full["unused_bytes"].as_u64().unwrap();
    // Half of about 60 % was deleted: at least a third of the disk is free.
    assert!(unused > size / 3, "{fs:?}: only {unused} of {size} bytes unused");
    assert!(full["bytes_read"].as_u64().unwrap() < size - unused + size / 50, "{fs:?}: read more than used: {full}");
    assert!(full["regions"][0]["notice"].is_null(), "{fs:?}: {}", full["regions"]);
    let restored = repo.file("bare-restored.img");
    let id = full["image"].as_str().unwrap().to_string();
    restore(&repo, &id, &restored);
    assert_same_outside_unused(&bare, &restored, &unused_of(&repo, &id));
    assert_filesystem(fs, &bare, &restored);

    // The same filesystem as partition 1 of a GPT disk, another as partition 2.
    let second = repo.file("second.img");
    disks::aged(other, &second, other_mib);
    let disk = repo.file("disk.img");
    let ranges = disks::gpt_disk(&disk, &[&bare, &second]);
    let image = backup(&repo, &disk, &["--source-id", "gpt"]);
    let regions = image["regions"].as_array().unwrap();
    let parts: Vec<&serde_json::Value> = regions.iter().filter(|r| r["name"] != "outside partitions").collect();
    assert_eq!(parts.len(), 2, "{regions:?}");
    assert!(parts.iter().all(|p| p["notice"].is_null() && p["unused_bytes"].as_u64().unwrap() > 0), "{regions:?}");
    let id = image["image"].as_str().unwrap().to_string();
    let restored_disk = repo.file("disk-restored.img");
    restore(&repo, &id, &restored_disk);
    assert_same_outside_unused(&disk, &restored_disk, &unused_of(&repo, &id));
    for ((kind, range), n) in [(fs, &ranges[0]), (other, &ranges[1])].into_iter().zip(1..) {
        let (src, got) = (repo.file(&format!("p{n}.img")), repo.file(&format!("p{n}-restored.img")));
        partition(&disk, range, &src);
        partition(&restored_disk, range, &got);
        assert_filesystem(kind, &src, &got);
    }
    let gpt = Command::new("sfdisk").arg("-d").arg(&restored_disk).output().unwrap();
    assert!(gpt.status.success() && String::from_utf8_lossy(&gpt.stdout).contains("label: gpt"));

    // More deletions: the incremental stores only metadata blocks.
    let deleted = disks::delete_files(fs, &bare, 3, 1);
    assert!(deleted > 0);
    let inc = backup(&repo, &bare, &[]);
    assert_eq!(inc["kind"], "incremental");
    let stored = inc["new_stored_bytes"].as_u64().unwrap();
    assert!(stored < size / 50, "{fs:?}: the incremental after deletions stored {stored} bytes");
    let id = inc["image"].as_str().unwrap().to_string();
    assert!(inc["unused_bytes"].as_u64().unwrap() > unused, "{fs:?}: more free after deleting");
    restore(&repo, &id, &restored);
    assert_same_outside_unused(&bare, &restored, &unused_of(&repo, &id));
    assert_filesystem(fs, &bare, &restored);
    let out = repo.cli(&["check", "--read-data"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn aged_ext4_restores_checked_bare_and_in_a_gpt_disk() {
    if skip() {
        return;
    }
    aged_filesystem_round_trip(Fs::Ext4, 128, Fs::Fat(32), 64);
}

#[test]
fn aged_fat_restores_checked_bare_and_in_a_gpt_disk() {
    if skip() {
        return;
    }
    aged_filesystem_round_trip(Fs::Fat(16), 64, Fs::Ext4, 64);
}

#[test]
fn aged_ntfs_restores_checked_bare_and_in_a_gpt_disk() {
    if skip() {
        return;
    }
    aged_filesystem_round_trip(Fs::Ntfs, 64, Fs::Fat(12), 8);
}

/// An MBR disk: a primary FAT16, then an extended partition holding a swap area and an ext4 as
/// logical partitions (their EBRs between them, always read). Swap keeps only its header.
#[test]
fn an_mbr_disk_with_logical_partitions_and_swap() {
    if skip() {
        return;
    }
    let repo = TestRepo::new();
    let (fat, ext, swap) = (repo.file("fat.img"), repo.file("ext.img"), repo.file("swap.img"));
    disks::aged(Fs::Fat(16), &fat, 32);
    disks::aged(Fs::Ext4, &ext, 64);
    std::fs::write(&swap, disks::content(16 << 20, 5)).unwrap(); // old data under the new swap
    disks::run(Command::new("mkswap").arg(&swap));
    let disk = repo.file("mbr.img");
    let ranges = disks::mbr_disk(&disk, &[(&fat, "6"), (&swap, "82"), (&ext, "83")]);
    let image = backup(&repo, &disk, &[]);
    let regions = image["regions"].as_array().unwrap();
    let fs: Vec<&str> = regions.iter().filter_map(|r| r["filesystem"].as_str()).collect();
    assert_eq!(fs, ["vfat", "swap", "ext4"], "{regions:?}");
    assert!(regions.iter().all(|r| r["notice"].is_null()), "{regions:?}");
    let swap_region = regions.iter().find(|r| r["filesystem"] == "swap").unwrap();
    assert_eq!(swap_region["unused_bytes"].as_u64().unwrap(), (16 << 20) - 4096, "swap keeps its header only");
    let id = image["image"].as_str().unwrap().to_string();
    let restored = repo.file("mbr-restored.img");
    restore(&repo, &id, &restored);
    assert_same_outside_unused(&disk, &restored, &unused_of(&repo, &id));
    for ((kind, range), n) in [(Fs::Fat(16), &ranges[0]), (Fs::Ext4, &ranges[2])].into_iter().zip(1..) {
        let (src, got) = (repo.file(&format!("p{n}.img")), repo.file(&format!("p{n}-restored.img")));
        partition(&disk, range, &src);
        partition(&restored, range, &got);
        assert_filesystem(kind, &src, &got);
    }
    let header = |p: &Path| read_at(p, ranges[1].start, 4096);
    assert_eq!(header(&restored), header(&disk), "the swap header");
    let dump = disks::run(Command::new("sfdisk").arg("-d").arg(&restored));
    assert_eq!(dump.lines().filter(|l| l.contains("start=")).count(), 4, "{dump}");
}

/// `--all-blocks` reads and restores every byte, as before used-block imaging.
#[test]
fn all_blocks_restores_every_byte() {
    if skip() {
        return;
    }
    let repo = TestRepo::new();
    let img = repo.file("fat32.img");
    disks::aged(Fs::Fat(32), &img, 64);
    let all = backup(&repo, &img, &["--all-blocks"]);
    assert_eq!(all["unused_bytes"], 0);
    let restored = repo.file("restored.img");
    restore(&repo, all["image"].as_str().unwrap(), &restored);
    assert!(std::fs::read(&img).unwrap() == std::fs::read(&restored).unwrap(), "every byte restored");
    // An incremental by used blocks on the all-blocks full records the free blocks as unused.
    let used = backup(&repo, &img, &[]);
    assert_eq!(used["kind"], "incremental");
    assert!(used["unused_bytes"].as_u64().unwrap() > 16 << 20);
    assert!(used["new_stored_bytes"].as_u64().unwrap() < 1 << 20, "{used}");
    // Free clusters that hold deleted files' data are read by --all-blocks only.
    let (all_read, used_read) = (all["bytes_read"].as_u64().unwrap(), used["bytes_read"].as_u64().unwrap());
    assert!(used_read + (8 << 20) < all_read, "read {used_read} by used blocks, {all_read} by all blocks");
    let out = repo.cli(&["images", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[1]["unused_bytes"], used["unused_bytes"]);
}

/// A disk file for the library's scan.
struct FileDisk(std::fs::File);

impl Disk for FileDisk {
    fn size(&self) -> u64 {
        self.0.metadata().unwrap().len()
    }
    fn read_at(&self, at: u64, buf: &mut [u8]) -> strata::Result<usize> {
        let size = self.size();
        let n = (buf.len() as u64).min(size.saturating_sub(at)) as usize;
        self.0.read_exact_at(&mut buf[..n], at).unwrap();
        Ok(n)
    }
    fn name(&self) -> String {
        "file".into()
    }
}

fn notice_of(image: &Path) -> Option<String> {
    let map = strata::allocation::scan(&FileDisk(std::fs::File::open(image).unwrap())).unwrap();
    assert_eq!(map.regions().len(), 1);
    let notice = map.regions()[0].notice.clone();
    assert_eq!(notice.is_some(), map.unused_bytes() == 0, "a notice exactly when every block is read");
    notice
}

fn patch(image: &Path, at: u64, bytes: &[u8]) {
    std::fs::OpenOptions::new().write(true).open(image).unwrap().write_all_at(bytes, at).unwrap();
}

fn read_at(image: &Path, at: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    std::fs::File::open(image).unwrap().read_exact_at(&mut b, at).unwrap();
    b
}

/// A value `dumpe2fs -h` prints for `field`.
fn dumpe2fs_field(image: &Path, field: &str) -> u64 {
    let text = disks::run(Command::new("dumpe2fs").arg("-h").arg(image));
    let line = text.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

#[test]
fn damaged_maps_fall_back_to_every_block() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ext = dir.path().join("ext4.img");
    disks::aged(Fs::Ext4, &ext, 64);
    assert_eq!(notice_of(&ext), None, "the intact filesystem is imaged by its map");
    let copy = |name: &str, from: &Path| {
        let p = dir.path().join(name);
        std::fs::copy(from, &p).unwrap();
        p
    };

    // A corrupt superblock: its checksum fails (metadata_csum).
    let sb = copy("sb.img", &ext);
    let free = read_at(&sb, 1024 + 0xC, 4);
    patch(&sb, 1024 + 0xC, &[free[0] ^ 0xFF, free[1], free[2], free[3]]);
    assert!(notice_of(&sb).unwrap().contains("superblock fails its checksum"));

    // A bitmap that fails its checksum.
    let bm = copy("bitmap.img", &ext);
    let text = disks::run(Command::new("dumpe2fs").arg(&bm));
    let block = dumpe2fs_field(&bm, "Block size");
    let at: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Block bitmap at "))
        .and_then(|rest| rest.split([' ', ',']).next())
        .unwrap()
        .parse()
        .unwrap();
    let byte = read_at(&bm, at * block + 100, 1)[0];
    patch(&bm, at * block + 100, &[byte ^ 0x10]);
    assert!(notice_of(&bm).unwrap().contains("fails its checksum"), "{:?}", notice_of(&bm));

    // Without checksums: a superblock free count below the bitmaps'.
    let plain = dir.path().join("plain.img");
    std::fs::File::create(&plain).unwrap().set_len(64 << 20).unwrap();
    disks::run(Command::new("mkfs.ext4").args(["-q", "-F", "-O", "^metadata_csum,^uninit_bg"]).arg(&plain));
    assert_eq!(notice_of(&plain), None);
    patch(&plain, 1024 + 0xC, &100u32.to_le_bytes());
    assert!(notice_of(&plain).unwrap().contains("the superblock says 100"));

    // A journal not yet replayed.
    let dirty = copy("recover.img", &ext);
    let incompat = read_at(&dirty, 1024 + 0x60, 4);
    patch(&dirty, 1024 + 0x60, &[incompat[0] | 0x4, incompat[1], incompat[2], incompat[3]]);
    assert!(notice_of(&dirty).unwrap().contains("needs recovery"));

    // A truncated FAT image, FAT copies that disagree, a FAT shorter than its clusters.
    let fat = dir.path().join("fat.img");
    disks::aged(Fs::Fat(16), &fat, 32);
    assert_eq!(notice_of(&fat), None);
    let cut = copy("cut.img", &fat);
    std::fs::OpenOptions::new().write(true).open(&cut).unwrap().set_len(1 << 20).unwrap();
    assert!(notice_of(&cut).unwrap().contains("larger than its partition"));
    let reserved = u16::from_le_bytes(read_at(&fat, 14, 2).try_into().unwrap()) as u64;
    let differ = copy("differ.img", &fat);
    patch(&differ, reserved * 512 + 40, &[0x5A]);
    assert!(notice_of(&differ).unwrap().contains("differs"));
    let short = copy("short.img", &fat);
    patch(&short, 22, &1u16.to_le_bytes());
    assert!(notice_of(&short).is_some());

    // An NTFS marked dirty ($Volume's flags).
    let ntfs = dir.path().join("ntfs.img");
    disks::aged(Fs::Ntfs, &ntfs, 32);
    assert_eq!(notice_of(&ntfs), None);
    disks::run(Command::new("ntfsfix").arg("-n").arg(&ntfs));
    let dirty = copy("ntfs-dirty.img", &ntfs);
    set_ntfs_dirty(&dirty);
    assert!(notice_of(&dirty).unwrap().contains("dirty"), "{:?}", notice_of(&dirty));

    // Through the CLI: a notice, every block read, the restore equal byte for byte.
    let repo = TestRepo::new();
    let out = repo.cli(&["backup", "--source-id", "bm", bm.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("note: disk (ext4): every block"));
    let restored = repo.file("r.img");
    restore(&repo, "latest", &restored);
    assert!(std::fs::read(&bm).unwrap() == std::fs::read(&restored).unwrap());
}

/// Sets the dirty flag in `$Volume`'s `$VOLUME_INFORMATION` (file record 3 of the MFT; the
/// attribute's flags are 10 bytes into its value).
fn set_ntfs_dirty(image: &Path) {
    let boot = read_at(image, 0, 512);
    let sector = u16::from_le_bytes([boot[11], boot[12]]) as u64;
    let cluster = sector * boot[13] as u64;
    let mft = u64::from_le_bytes(boot[48..56].try_into().unwrap()) * cluster;
    let record = mft + 3 * 1024;
    let rec = read_at(image, record, 1024);
    let mut at = u16::from_le_bytes([rec[0x14], rec[0x15]]) as usize;
    loop {
        let kind = u32::from_le_bytes(rec[at..at + 4].try_into().unwrap());
        let len = u32::from_le_bytes(rec[at + 4..at + 8].try_into().unwrap()) as usize;
        assert!(kind != 0xFFFF_FFFF && len > 0, "no $VOLUME_INFORMATION in record 3");
        if kind == 0x70 {
            let value = at + u16::from_le_bytes([rec[at + 0x14], rec[at + 0x15]]) as usize;
            patch(image, record + value as u64 + 10, &[rec[value + 10] | 1]);
            return;
        }
        at += len;
    }
}

/// Free blocks as `dumpe2fs` lists them, as byte ranges.
fn dumpe2fs_free(image: &Path) -> Vec<Range<u64>> {
    let block = dumpe2fs_field(image, "Block size");
    let text = disks::run(Command::new("dumpe2fs").arg(image));
    let mut out: Vec<Range<u64>> = Vec::new();
    for line in text.lines() {
        // Group lines are indented; the header's "Free blocks:" is a count.
        let Some(list) = line.strip_prefix("  Free blocks: ") else { continue };
        for part in list.split(", ").filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            match out.last_mut() {
                Some(last) if last.end == a * block => last.end = (b + 1) * block,
                _ => out.push(a * block..(b + 1) * block),
            }
        }
    }
    out
}

mod against_dumpe2fs {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 8, .. ProptestConfig::default() })]

        /// The ext2/3/4 map reader finds exactly the free blocks `dumpe2fs` lists, across block
        /// sizes, descriptor sizes and the features that move metadata.
        #[test]
        fn the_ext_map_is_dumpe2fs_free_list(
            block in prop_oneof![Just(1024u32), Just(2048), Just(4096)],
            features in prop_oneof![
                Just("^has_journal"),
                Just("^metadata_csum,uninit_bg"),
                Just("^64bit"),
                Just("^flex_bg"),
                Just("^resize_inode,^sparse_super"),
                Just("sparse_super2"),
                Just("^metadata_csum,^uninit_bg"),
                Just("metadata_csum_seed"),
            ],
            mib in 24u64..96,
            files in 1usize..60,
            seed in any::<u64>(),
        ) {
            if skip() {
                return Ok(());
            }
            let dir = tempfile::tempdir().unwrap();
            let tree = dir.path().join("tree");
            std::fs::create_dir(&tree).unwrap();
            for n in 0..files {
                let len = ((seed >> (n % 32)) as usize % 300_000) + n * 1000;
                std::fs::write(tree.join(format!("f{n}")), disks::content(len, seed ^ n as u64)).unwrap();
            }
            let img = dir.path().join("ext.img");
            std::fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
            disks::run(Command::new("mkfs.ext4").args(["-q", "-F", "-b", &block.to_string(), "-O", features, "-d"]).arg(&tree).arg(&img));
            // Delete every third file with debugfs, leaving its data in free space.
            let rm: String = (0..files).step_by(3).map(|n| format!("rm /f{n}\n")).collect();
            let script = dir.path().join("rm.txt");
            std::fs::write(&script, rm).unwrap();
            disks::run(Command::new("debugfs").args(["-w", "-f"]).arg(&script).arg(&img));
            let map = strata::allocation::scan_with(&FileDisk(std::fs::File::open(&img).unwrap()), 0).unwrap();
            prop_assert_eq!(&map.regions()[0].notice, &None);
            let free = dumpe2fs_free(&img);
            prop_assert!(!free.is_empty());
            prop_assert_eq!(map.unused_ranges(), free);
        }
    }
}

/// A filesystem mounted read-write while it is imaged: its journal needs recovery, so every
/// block is read (nothing a writer adds meanwhile can fall into a block called free). Frozen
/// (`fsfreeze`, as a job's `before` hook does), it is imaged by its map and restores checked.
#[test]
fn a_mounted_filesystem_is_read_whole_unless_frozen() {
    if skip() {
        return;
    }
    let repo = TestRepo::new();
    let img = repo.file("live.img");
    disks::aged(Fs::Ext4, &img, 64);
    let restored = repo.file("restored.img");
    disks::with_mounted(Fs::Ext4, &img, false, |dir| {
        // Files written during the backup: a writer keeps appending while it runs.
        let writer = {
            let dir = dir.to_path_buf();
            std::thread::spawn(move || {
                for n in 0..40 {
                    std::fs::write(dir.join(format!("during-{n}")), disks::content(100_000, n)).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            })
        };
        let out = repo.cli(&["backup", "--json", "--source-id", "live", img.to_str().unwrap()]);
        writer.join().unwrap();
        assert!(out.status.success());
        let live: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(live["unused_bytes"], 0, "mounted read-write: every block");
        assert!(live["regions"][0]["notice"].as_str().unwrap().contains("needs recovery"));

        disks::run(Command::new("fsfreeze").arg("-f").arg(dir));
        let frozen = repo.cli(&["backup", "--json", "--source-id", "live", img.to_str().unwrap()]);
        disks::run(Command::new("fsfreeze").arg("-u").arg(dir));
        assert!(frozen.status.success());
        let frozen: serde_json::Value = serde_json::from_slice(&frozen.stdout).unwrap();
        assert!(frozen["unused_bytes"].as_u64().unwrap() > 8 << 20, "frozen: imaged by its map: {frozen}");
        restore(&repo, frozen["image"].as_str().unwrap(), &restored);
    });
    // The frozen image is a consistent filesystem with every file written before the freeze.
    if let Err(e) = disks::fsck(Fs::Ext4, &restored) {
        panic!("the frozen image fails its check:\n{e}");
    }
    let files = disks::file_hashes(Fs::Ext4, &restored);
    assert!(files.contains_key("during-39"), "the files written before the freeze are in the image");
    assert_eq!(files, disks::file_hashes(Fs::Ext4, &img));

    // ntfs-3g does not mark a mounted NTFS dirty: Strata sees the mount itself.
    let ntfs = repo.file("live-ntfs.img");
    disks::aged(Fs::Ntfs, &ntfs, 32);
    disks::with_mounted(Fs::Ntfs, &ntfs, false, |dir| {
        std::fs::write(dir.join("new"), disks::content(300_000, 3)).unwrap();
        let live = backup(&repo, &ntfs, &["--source-id", "ntfs"]);
        assert_eq!(live["unused_bytes"], 0);
        assert!(live["regions"][0]["notice"].as_str().unwrap().contains("mounted read-write"), "{live}");
    });
    assert!(backup(&repo, &ntfs, &["--source-id", "ntfs"])["unused_bytes"].as_u64().unwrap() > 0, "unmounted");
}

/// A version 3 or 4 repository (before unused extents, before generations) is read as it is,
/// and its first writer marks it as the current version before writing, so that an older strata
/// refuses it rather than misread it.
#[test]
fn a_version_3_repository_is_read_and_upgraded_by_its_first_writer() {
    let current = strata::config::FORMAT_VERSION as u64;
    for older in [3u64, 4] {
        let repo = TestRepo::small();
        let disk = repo.file("disk.img");
        common::Disk::new(3, 4 << 20).random(0..4 << 20).write_to(&disk);
        repo.backup(&disk, strata::KindRequest::Full);
        let config = repo.path.join("config");
        let version = || -> u64 {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
            v["format_version"].as_u64().unwrap()
        };
        assert_eq!(version(), current);
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace(&format!("\"format_version\": {current}"), &format!("\"format_version\": {older}"));
        std::fs::write(&config, text).unwrap();
        assert_eq!(version(), older);
        let out = repo.cli(&["images", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(version(), older, "readers change nothing");
        repo.backup(&disk, strata::KindRequest::Incremental);
        assert_eq!(version(), current, "the first writer upgrades");
        assert!(repo.cli(&["check", "--read-data"]).status.success());
    }
}
