//! One writer at a time: an exclusive `flock` on `<repo>/lock`, released by the kernel when the
//! holder exits or dies, so a kill -9 never leaves a stale lock. The file names the holder.
//! A repository in a bucket is locked with an object instead (`remote_lock`).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub use crate::error::LockHolder;
use crate::error::{Error, Result};

/// Held while it lives.
pub(crate) struct FileLock {
    _file: File,
}

/// This process, running `command`, as a lock names it.
pub(crate) fn holder(command: &str) -> LockHolder {
    LockHolder {
        pid: std::process::id(),
        host: hostname(),
        command: command.to_string(),
        since_ms: crate::timefmt::now_ms(),
    }
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

pub(crate) fn acquire(repo: &Path, command: &str) -> Result<FileLock> {
    let path = repo.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        // A symlink planted as the lock file must not make a writer overwrite its target.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP | libc::EISDIR) => Error::LockNotAFile { path: path.clone() },
            _ => Error::io("open", &path, e),
        })?;
    if !file.metadata().map_err(|e| Error::io("stat", &path, e))?.is_file() {
        return Err(Error::LockNotAFile { path });
    }
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = serde_json::from_str(&text).unwrap_or(LockHolder {
                pid: 0,
                host: String::new(),
                command: String::new(),
                since_ms: 0,
            });
            return Err(Error::RepositoryLocked { holder });
        }
        return Err(Error::io("lock", &path, err));
    }
    let holder = holder(command);
    let text = serde_json::to_vec(&holder).map_err(|e| Error::Internal { reason: format!("lock record: {e}") })?;
    file.set_len(0).map_err(|e| Error::io("write", &path, e))?;
    file.write_all_at(&text, 0).map_err(|e| Error::io("write", &path, e))?;
    Ok(FileLock { _file: file })
}

/// `acquire`, waiting up to `limit` while another process holds the lock.
pub(crate) fn acquire_waiting(dir: &Path, command: &str, limit: std::time::Duration) -> Result<FileLock> {
    let started = std::time::Instant::now();
    loop {
        match acquire(dir, command) {
            Err(Error::RepositoryLocked { .. }) if started.elapsed() < limit => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            other => return other,
        }
    }
}

/// Whether a writer holds the lock of the repository at `repo` now. Read from /proc/locks, so a
/// reader asks without taking any lock itself (which could make a starting writer fail).
pub fn writer_active(repo: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(repo.join("lock")) else { return false };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else { return false };
    // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:1311962 0 EOF": device major:minor in hex, inode.
    let want = (libc::major(meta.dev()) as u64, libc::minor(meta.dev()) as u64, meta.ino());
    locks.lines().filter(|l| !l.contains("->")).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let Some(id) = f.get(5) else { return false };
        let parts: Vec<&str> = id.split(':').collect();
        let parsed = match parts.as_slice() {
            [maj, min, ino] => (u64::from_str_radix(maj, 16), u64::from_str_radix(min, 16), ino.parse::<u64>()),
            _ => return false,
        };
        f.get(1) == Some(&"FLOCK") && matches!(parsed, (Ok(a), Ok(b), Ok(c)) if (a, b, c) == want)
    })
}
