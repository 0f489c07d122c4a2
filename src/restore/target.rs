//! Restore targets: a file (written under a temporary name beside it and renamed over it at the
//! end) or a block device (opened exclusively unless forced), and the writes into them.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub(super) enum Target {
    File(File),
    Device(File),
}

impl Target {
    pub(super) fn file(&self) -> &File {
        match self {
            Target::File(f) | Target::Device(f) => f,
        }
    }
}

/// Opens the target; for a file, a temporary file beside it that replaces it at the end.
/// Opens a block device for writing; with `O_EXCL` (unless `force`), which Linux refuses with
/// EBUSY while the device is mounted or held by another exclusive user.
pub(super) fn open_device(target: &Path, force: bool) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = if force { 0 } else { libc::O_EXCL };
    OpenOptions::new().write(true).custom_flags(flags).open(target).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            Error::TargetInUse { target: target.into(), mounted_at: mount_point(target) }
        } else {
            Error::io("open", target, e)
        }
    })
}

/// Where a block device is mounted.
fn mount_point(device: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let want = crate::mountinfo::device_numbers(std::fs::metadata(device).ok()?.rdev());
    crate::mountinfo::mounts().into_iter().find(|m| m.device == want).map(|m| m.point.display().to_string())
}

pub(super) fn open_target(target: &Path, needed: u64, force: bool) -> Result<(Target, Option<PathBuf>)> {
    match std::fs::metadata(target) {
        Ok(m) if m.file_type().is_block_device() => {
            let mut f = open_device(target, force)?;
            let available = f.seek(SeekFrom::End(0)).map_err(|e| Error::io("size", target, e))?;
            if available < needed {
                return Err(Error::TargetTooSmall { target: target.into(), needed, available });
            }
            Ok((Target::Device(f), None))
        }
        Ok(m) if !m.file_type().is_file() => Err(Error::TargetNotDisk { target: target.into() }),
        _ => {
            let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            remove_dead_temporaries(target, &name);
            let temp = target.with_file_name(format!(".{name}.strata-restore.{}", std::process::id()));
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)
                .map_err(|e| Error::io("create", &temp, e))?;
            // Zero extents are never written: in a new file they read back as zeros (holes).
            f.set_len(needed).map_err(|e| Error::io("resize", &temp, e))?;
            Ok((Target::File(f), Some(temp)))
        }
    }
}

/// The directory a target file lies in (`.` for a bare name).
pub(super) fn directory_of(target: &Path) -> &Path {
    target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Removes the temporary files that killed restores to the same target left beside it (full
/// size each): those whose process no longer exists. Best effort: a leftover costs space only.
fn remove_dead_temporaries(target: &Path, name: &str) {
    let dir = directory_of(target);
    let prefix = format!(".{name}.strata-restore.");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix).and_then(|p| p.parse::<i32>().ok()) else { continue };
        // SAFETY: signal 0 only asks whether the process exists.
        let gone =
            unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Asks the kernel to start writing a range back now (`sync_file_range`, no waiting), so the
/// disk works while the next batches are decoded and the final fsync finds little left to do.
/// Only a hint: the fsync at the end is what makes the restore durable and reports errors.
pub(super) fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on an open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Waits until a range handed to `start_writeback` earlier is on the disk, then lets the kernel
/// drop its pages: a restored disk is not read again soon, and writing the next batches into
/// recycled pages costs a fraction of the kernel time of fresh ones (docs/BENCHMARKS.md, "Page
/// cache"). The wait is one the final fsync would make anyway. Hints only: that fsync is what
/// makes the restore durable and reports errors.
pub(super) fn settle(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return;
    }
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: plain system calls on an open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), offset as i64, len as i64, flags);
        libc::posix_fadvise(f.as_raw_fd(), offset as i64, len as i64, libc::POSIX_FADV_DONTNEED);
    }
}

use crate::storage::first_aligned;
/// The alignment of `O_DIRECT` writes: of the file offset, the length and the memory.
pub(super) use crate::storage::DIRECT_ALIGN as ALIGN;

/// The target opened a second time, with `O_DIRECT`: a restore writes its whole blocks through it,
/// straight from its batch buffers to the disk, so the kernel neither copies them into the page
/// cache (17 % of a restore's CPU before) nor has to write them back and drop them later
/// (docs/BENCHMARKS.md, "Restore past the page cache"). None where the filesystem refuses
/// `O_DIRECT` (tmpfs) or the open fails: everything then goes through `file`, as before.
pub(super) fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path).ok()
}

/// Writes `bytes` at `at`: the whole `ALIGN` blocks inside through `direct` when there is one and
/// they lie at an aligned address (`restore::layout` places them so), the partial blocks at either
/// end through `file` and the page cache. A direct write the target refuses (EINVAL: an alignment
/// it does not take) turns `direct` off, and the run goes through `file`. A page is written one
/// way only: a run's whole blocks are its own, and the partial ones at its ends are never direct.
pub(super) fn write_run(file: &File, direct: &mut Option<File>, bytes: &[u8], at: u64) -> std::io::Result<()> {
    if let Some(d) = direct {
        let head = ((at.next_multiple_of(ALIGN as u64) - at) as usize).min(bytes.len());
        let whole = (bytes.len() - head) / ALIGN * ALIGN;
        let middle = &bytes[head..head + whole];
        if whole > 0 && (middle.as_ptr() as usize) % ALIGN == 0 {
            match d.write_all_at(middle, at + head as u64) {
                Ok(()) => {
                    file.write_all_at(&bytes[..head], at)?;
                    return file.write_all_at(&bytes[head + whole..], at + (head + whole) as u64);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => *direct = None,
                Err(e) => return Err(e),
            }
        }
    }
    file.write_all_at(bytes, at)
}

/// Writes `len` zeros at `at` (on a block device: its holes), whole blocks through `direct` as
/// `write_run` writes them.
pub(super) fn write_zeros(f: &File, direct: &mut Option<File>, mut at: u64, len: u64) -> std::io::Result<()> {
    let most = (len as usize).min(1 << 20);
    // Room for `most` bytes from any offset within the first two blocks.
    let zeros = vec![0u8; most + 2 * ALIGN];
    let aligned = first_aligned(&zeros);
    let end = at + len;
    while at < end {
        let n = ((end - at) as usize).min(most);
        // At the same offset modulo ALIGN in memory as on the disk, as `write_run` wants.
        let from = aligned + (at % ALIGN as u64) as usize;
        write_run(f, direct, &zeros[from..from + n], at)?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` bytes of a pattern, at an address `misalign` bytes past an aligned one.
    fn bytes_at(buf: &mut Vec<u8>, misalign: usize, len: usize) -> &[u8] {
        *buf = vec![0; len + 2 * ALIGN];
        let base = first_aligned(buf) + misalign;
        for (i, b) in buf[base..base + len].iter_mut().enumerate() {
            *b = (i * 7 + i / 4093) as u8;
        }
        &buf[base..base + len]
    }

    #[test]
    fn runs_land_whole_whatever_their_alignment_and_direct_writes_stay_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target");
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&path).unwrap();
        file.set_len(1 << 20).unwrap();
        let mut direct = open_direct(&path);
        let opened = direct.is_some();
        let mut expect = vec![0u8; 1 << 20];
        let mut buf = Vec::new();
        // (disk offset, length): aligned both ends, a partial head and tail, shorter than a
        // block, inside one block, and ending at the file's end.
        for (at, len) in [
            (0, 3 * ALIGN),
            (5 * ALIGN + 100, 3 * ALIGN),
            (9 * ALIGN + 17, 300),
            (20 * ALIGN - 5, 10),
            ((1 << 20) - 5000, 5000),
        ] {
            // Placed as `restore::layout` places a run: its offset modulo ALIGN as on the disk.
            let run = bytes_at(&mut buf, at % ALIGN, len);
            write_run(&file, &mut direct, run, at as u64).unwrap();
            expect[at..at + len].copy_from_slice(run);
        }
        assert_eq!(std::fs::read(&path).unwrap(), expect);
        assert_eq!(direct.is_some(), opened, "aligned runs were refused by O_DIRECT and went through the page cache");
    }

    #[test]
    fn a_run_whose_blocks_are_not_aligned_in_memory_goes_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target");
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&path).unwrap();
        let mut direct = open_direct(&path);
        let mut buf = Vec::new();
        let run = bytes_at(&mut buf, 1, 4 * ALIGN); // on the disk at 0: aligned there, not in memory
        write_run(&file, &mut direct, run, 0).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), run);
    }

    #[test]
    fn zeros_land_where_asked_and_nowhere_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target");
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&path).unwrap();
        let len = (3 << 20) + 5000;
        let mut expect: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        file.write_all_at(&expect, 0).unwrap();
        let mut direct = open_direct(&path);
        let opened = direct.is_some();
        // More than one zero buffer's worth from mid-block, a part of one block, and whole blocks.
        for (at, n) in
            [(ALIGN + 300, (2 << 20) + 7 * ALIGN), (100, 200), (700 * ALIGN, 2 * ALIGN), (750 * ALIGN + 4000, 50)]
        {
            write_zeros(&file, &mut direct, at as u64, n as u64).unwrap();
            expect[at..at + n].fill(0);
        }
        assert_eq!(std::fs::read(&path).unwrap(), expect);
        assert_eq!(direct.is_some(), opened, "aligned zeros were refused by O_DIRECT");
    }
}
