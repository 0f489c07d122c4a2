//! Aged filesystems made with the real tools, and disks that hold them: the material of the
//! used-block tests. ext4 comes from the reference workload (`examples/workload.py build`: real
//! files of this machine); FAT and NTFS are made by `mkfs.vfat` and `mkntfs` and filled with
//! files of varied sizes (FAT through mtools, as this kernel has no vfat driver; NTFS through
//! an ntfs-3g mount). Then half of the files are deleted, so free space holds their old data, as
//! on a disk in use. Everything here needs root (loop and FUSE mounts); `usable()` says whether
//! the tests can run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fs {
    Ext4,
    /// FAT12, FAT16 or FAT32: `mkfs.vfat -F` with this number.
    Fat(u8),
    Ntfs,
}

/// Root, loop devices and the filesystem tools: what the aged disks need.
pub fn usable() -> bool {
    let tools = ["mkfs.ext4", "mkfs.vfat", "mcopy", "mkntfs", "ntfs-3g", "sfdisk", "fsck.fat", "ntfsfix", "losetup"];
    super::mounted::fuse_usable() && tools.iter().all(|t| which(t))
}

fn which(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `image` mounted on a fresh directory beside it while `f` runs (read-only with `ro`), then
/// unmounted, also when `f` panics. Not for FAT (no vfat driver here: see `delete_files`).
pub fn with_mounted<T>(fs: Fs, image: &Path, ro: bool, f: impl FnOnce(&Path) -> T) -> T {
    assert!(!matches!(fs, Fs::Fat(_)), "FAT is handled through mtools");
    struct Mounted(PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            for _ in 0..50 {
                if Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success()) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let dir = image.with_extension(format!("mnt{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = match fs {
        Fs::Ntfs => {
            let mut c = Command::new("ntfs-3g");
            if ro {
                c.args(["-o", "ro"]);
            }
            c.arg(image).arg(&dir);
            c
        }
        Fs::Ext4 | Fs::Fat(_) => {
            let mut c = Command::new("mount");
            let opts = if ro { "loop,ro,noload" } else { "loop" };
            c.args(["-o", opts]).arg(image).arg(&dir);
            c
        }
    };
    run(&mut cmd);
    let m = Mounted(dir);
    let out = f(&m.0);
    run(&mut Command::new("sync"));
    drop(m);
    out
}

/// Deterministic bytes: a mix of text-like and random content, so compression and dedup see
/// what real files give them.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let words = [&b"strata "[..], b"block ", b"image ", b"backup ", b"disk\n", b"chunk "];
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if seed % 2 == 0 {
            out.extend_from_slice(words[(x % 6) as usize]);
        } else {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

/// Writes files of 1 KiB to 1.5 MiB into `dir` until about `bytes` are written.
fn fill(dir: &Path, bytes: u64, seed: u64) {
    let mut written = 0u64;
    let mut n = 0u64;
    while written < bytes {
        let len = [1024usize, 6000, 40_000, 200_000, 1_500_000][(n % 5) as usize] + (n as usize * 37) % 4096;
        let sub = dir.join(format!("d{}", n % 7));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("f{seed}-{n}.bin")), content(len, seed * 1_000_003 + n)).unwrap();
        written += len as u64;
        n += 1;
    }
}

/// Deletes every `nth` regular file under `dir` (sorted by path, the `skip`th one first).
pub fn delete_every(dir: &Path, nth: usize, skip: usize) -> usize {
    let mut files = Vec::new();
    walk(dir, &mut |p| files.push(p.to_path_buf()));
    files.sort();
    let doomed: Vec<&PathBuf> = files.iter().skip(skip).step_by(nth).collect();
    for f in &doomed {
        std::fs::remove_file(f).unwrap();
    }
    doomed.len()
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            if e.file_name() != "lost+found" && e.file_name() != "System Volume Information" {
                walk(&e.path(), f);
            }
        } else if t.is_file() {
            f(&e.path());
        }
    }
}

/// An aged filesystem of `mib` MiB at `image`: made, filled to about 60 %, half of its files
/// deleted (their data stays in free space).
pub fn aged(fs: Fs, image: &Path, mib: u64) {
    let _ = std::fs::remove_file(image);
    match fs {
        Fs::Ext4 => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/workload.py");
            run(Command::new("python3").arg(script).arg("build").arg(image).arg(mib.to_string()));
        }
        Fs::Fat(bits) => {
            std::fs::File::create(image).unwrap().set_len(mib << 20).unwrap();
            run(Command::new("mkfs.vfat").args(["-F", &bits.to_string()]).arg(image));
            let tree = tempfile::tempdir().unwrap();
            fill(tree.path(), (mib << 20) * 6 / 10, 1);
            let mut cmd = Command::new("mcopy");
            cmd.args(["-s", "-i"]).arg(image);
            for e in std::fs::read_dir(tree.path()).unwrap() {
                cmd.arg(e.unwrap().path());
            }
            run(cmd.arg("::/"));
        }
        Fs::Ntfs => {
            std::fs::File::create(image).unwrap().set_len(mib << 20).unwrap();
            run(Command::new("mkntfs").args(["-q", "-F", "-f"]).arg(image));
            with_mounted(fs, image, false, |d| fill(d, (mib << 20) * 6 / 10, 2));
        }
    }
    delete_files(fs, image, 2, 0);
}

/// Deletes every `nth` file of the filesystem at `image` (sorted by path, the `skip`th first)
/// and returns how many.
pub fn delete_files(fs: Fs, image: &Path, nth: usize, skip: usize) -> usize {
    if !matches!(fs, Fs::Fat(_)) {
        return with_mounted(fs, image, false, |d| delete_every(d, nth, skip));
    }
    let listing = run(Command::new("mdir").args(["-/", "-b", "-i"]).arg(image).arg("::/"));
    let mut files: Vec<&str> = listing.lines().filter(|l| !l.ends_with('/')).collect();
    files.sort();
    let doomed: Vec<&str> = files.into_iter().skip(skip).step_by(nth).collect();
    for group in doomed.chunks(100) {
        run(Command::new("mdel").arg("-i").arg(image).args(group));
    }
    doomed.len()
}

/// SHA-256 of every regular file in the filesystem at `image`, by path.
pub fn file_hashes(fs: Fs, image: &Path) -> BTreeMap<String, String> {
    if matches!(fs, Fs::Fat(_)) {
        let out = tempfile::tempdir().unwrap();
        run(Command::new("mcopy").args(["-s", "-n", "-i"]).arg(image).arg("::*").arg(out.path()));
        return hashes_in(out.path());
    }
    with_mounted(fs, image, true, hashes_in)
}

fn hashes_in(dir: &Path) -> BTreeMap<String, String> {
    let mut files = Vec::new();
    walk(dir, &mut |p| files.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned()));
    files.sort();
    let mut out = BTreeMap::new();
    for group in files.chunks(200) {
        let text = run(Command::new("sha256sum").current_dir(dir).args(group));
        for line in text.lines() {
            let (sum, name) = line.split_once("  ").unwrap();
            out.insert(name.to_string(), sum.to_string());
        }
    }
    out
}

/// The filesystem's own check, read-only: `e2fsck -fn`, `fsck.fat -n`, `ntfsfix -n`.
pub fn fsck(fs: Fs, image: &Path) -> Result<(), String> {
    let out = match fs {
        Fs::Ext4 => Command::new("e2fsck").arg("-fn").arg(image).output(),
        Fs::Fat(_) => Command::new("fsck.fat").arg("-n").arg(image).output(),
        Fs::Ntfs => Command::new("ntfsfix").arg("-n").arg(image).output(),
    }
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(())
    } else {
        Err(text)
    }
}

/// A GPT disk at `disk` holding `parts` (filesystem images) as partitions 1, 2, ... from 1 MiB,
/// with 1 MiB gaps and the backup GPT at the end; returns each partition's byte range.
pub fn gpt_disk(disk: &Path, parts: &[&Path]) -> Vec<std::ops::Range<u64>> {
    const MIB: u64 = 1 << 20;
    let sizes: Vec<u64> = parts.iter().map(|p| std::fs::metadata(p).unwrap().len()).collect();
    let total = MIB + sizes.iter().map(|s| s + MIB).sum::<u64>() + MIB;
    let _ = std::fs::remove_file(disk);
    std::fs::File::create(disk).unwrap().set_len(total).unwrap();
    let mut script = String::from("label: gpt\n");
    let mut ranges = Vec::new();
    let mut at = MIB;
    for s in &sizes {
        script.push_str(&format!("start={}, size={}, type=linux\n", at / 512, s / 512));
        ranges.push(at..at + s);
        at += s + MIB;
    }
    super::sfdisk(disk, &script);
    for (p, r) in parts.iter().zip(&ranges) {
        copy_range(p, 0, disk, r.start, r.end - r.start);
    }
    ranges
}

/// An MBR disk at `disk` holding `parts` (images) at the given partition types: the first as a
/// primary partition, the rest as logical partitions in an extended one (so the EBR chain lies
/// between them); returns each partition's byte range.
pub fn mbr_disk(disk: &Path, parts: &[(&Path, &str)]) -> Vec<std::ops::Range<u64>> {
    const MIB: u64 = 1 << 20;
    let sizes: Vec<u64> = parts.iter().map(|(p, _)| std::fs::metadata(p).unwrap().len()).collect();
    let total = MIB + sizes.iter().map(|s| s + 2 * MIB).sum::<u64>() + MIB;
    let _ = std::fs::remove_file(disk);
    std::fs::File::create(disk).unwrap().set_len(total).unwrap();
    let mut script = String::from("label: dos\n");
    let mut ranges = Vec::new();
    let mut at = MIB;
    for (i, (s, (_, kind))) in sizes.iter().zip(parts).enumerate() {
        if i == 1 {
            script.push_str(&format!("start={}, type=5\n", at / 512));
        }
        if i >= 1 {
            at += MIB; // room for the logical partition's EBR
        }
        script.push_str(&format!("start={}, size={}, type={kind}\n", at / 512, s / 512));
        ranges.push(at..at + s);
        at += s + MIB;
    }
    super::sfdisk(disk, &script);
    for ((p, _), r) in parts.iter().zip(&ranges) {
        copy_range(p, 0, disk, r.start, r.end - r.start);
    }
    ranges
}

/// Copies `len` bytes from `from` at `at` into `to` at `to_at` (sparse: zero blocks are skipped).
pub fn copy_range(from: &Path, at: u64, to: &Path, to_at: u64, len: u64) {
    use std::os::unix::fs::FileExt;
    let src = std::fs::File::open(from).unwrap();
    let dst = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(to).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        src.read_exact_at(&mut buf[..n], at + done).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], to_at + done).unwrap();
        }
        done += n as u64;
    }
    if dst.metadata().unwrap().len() < to_at + len {
        dst.set_len(to_at + len).unwrap();
    }
}
