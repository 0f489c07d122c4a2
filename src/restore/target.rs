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

pub(super) fn write_zeros(f: &File, mut at: u64, len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; (len as usize).min(1 << 20)];
    let end = at + len;
    while at < end {
        let n = ((end - at) as usize).min(zeros.len());
        f.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}
