//! `mount`: the repository as a read-only FUSE filesystem, every image a raw disk file read
//! lazily through the image reader (see `layout` for the names). Built on the `fuser` crate
//! with its pure-Rust mount (no libfuse). The library mounts and serves; the caller decides
//! when to unmount (signals) and what to do with the log lines (a damaged range read, a
//! repository state that could not be read).
//!
//! Reads run on several FUSE threads at once and share one decoded-frame cache with a byte cap;
//! zero runs are holes (`SEEK_DATA`/`SEEK_HOLE`, `st_blocks`); a range that meets a damaged
//! chunk fails with EIO, never with wrong bytes. The mount takes no lock and writes nothing to
//! the repository; images published or forgotten while it is mounted show within a second.

mod browse;
mod fuse;
mod images;
mod layout;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
pub use layout::source_dir_name;

/// Where the mount's messages go (the library never prints).
pub type Log = Arc<dyn Fn(String) + Send + Sync>;

#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Decoded frames kept in memory, shared by every image read through the mount.
    pub cache_bytes: u64,
    /// Threads answering the kernel; reads on them run in parallel.
    pub threads: usize,
    /// The password of an encrypted repository (kept: the mount reopens the repository to
    /// follow new images).
    pub credentials: std::sync::Arc<crate::repository::Credentials>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions { cache_bytes: crate::reader::DEFAULT_CACHE_BYTES, threads: 4, credentials: Default::default() }
    }
}

/// A mounted repository, served by background threads until it is unmounted.
pub struct Mounted {
    session: fuser::BackgroundSession,
    at: PathBuf,
    images: usize,
}

impl Mounted {
    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.at
    }

    /// Images visible when it was mounted.
    pub fn images(&self) -> usize {
        self.images
    }

    /// Whether the filesystem is gone (unmounted by `umount`, `fusermount -u`, or `unmount`).
    pub fn finished(&self) -> bool {
        self.session.guard.is_finished()
    }

    /// Unmounts. Refused with `MountBusy` while a program has a file open or its working
    /// directory under the mount point; the mount then stays and keeps serving.
    pub fn unmount(&self) -> Result<()> {
        let path = std::ffi::CString::new(self.at.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::MountPoint { path: self.at.clone(), reason: "its path holds a NUL byte".into() })?;
        // SAFETY: `path` is a valid NUL-terminated string.
        if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EBUSY) => Err(Error::MountBusy { path: self.at.clone() }),
            // Not mounted (any more): gone already.
            Some(libc::EINVAL) if self.finished() => Ok(()),
            // Unprivileged: the setuid helper unmounts.
            Some(libc::EPERM) => {
                let out = std::process::Command::new("fusermount")
                    .arg("-u")
                    .arg(&self.at)
                    .output()
                    .map_err(|e| Error::io("run fusermount -u for", &self.at, e))?;
                if out.status.success() {
                    Ok(())
                } else if String::from_utf8_lossy(&out.stderr).contains("busy") {
                    Err(Error::MountBusy { path: self.at.clone() })
                } else {
                    Err(Error::MountPoint {
                        path: self.at.clone(),
                        reason: format!("fusermount -u failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
                    })
                }
            }
            _ => Err(Error::io("unmount", &self.at, err)),
        }
    }

    /// Waits until the filesystem is unmounted and its threads have ended.
    pub fn join(self) -> Result<()> {
        let at = self.at.clone();
        self.session.join().map_err(|e| Error::io("serve the filesystem mounted at", at, e))
    }
}

/// Mounts the repository at `repo` read-only on the directory `at` and serves it in the
/// background. Refused before anything is mounted: a mount point that is missing, not a
/// directory, not empty or already a mount point, and a system without a usable `/dev/fuse`.
pub fn mount(repo: &Path, at: &Path, opts: &MountOptions, log: Log) -> Result<Mounted> {
    check_mount_point(at)?;
    check_fuse()?;
    let images = images::Images::open(repo, opts.cache_bytes.max(1 << 20), opts.credentials.clone())?;
    let count = images.view(&*log).catalog.len();
    let fs = fuse::StrataFs::new(images, log);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::FSName("strata".into()),
        fuser::MountOption::Subtype("strata".into()),
    ];
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let session = fuser::spawn_mount(fs, at, &config).map_err(|e| Error::io("mount a filesystem on", at, e))?;
    raise_readahead(at);
    Ok(Mounted { session, at: at.canonicalize().unwrap_or_else(|_| at.into()), images: count })
}

/// Sequential reads through the mount: the kernel reads ahead 128 KiB on a new FUSE mount,
/// which leaves one request in flight at a time (`cat` of a 2 GiB image: 3.99 s); 1 MiB keeps
/// several FUSE threads busy (3.18 s; 4 and 16 MiB gained nothing). Only root may raise it; where
/// that fails the mount still works, reading sequentially more slowly.
const READ_AHEAD_KIB: u32 = 1024;

fn raise_readahead(at: &Path) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::metadata(at) {
        let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
        let _ = std::fs::write(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"), READ_AHEAD_KIB.to_string());
    }
}

fn check_mount_point(at: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let bad = |reason: &str| Error::MountPoint { path: at.into(), reason: reason.into() };
    let meta = match std::fs::metadata(at) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad("it does not exist; create the directory first"))
        }
        Err(e) => return Err(Error::io("look at", at, e)),
    };
    if !meta.is_dir() {
        return Err(bad("it is not a directory"));
    }
    let canonical = at.canonicalize().map_err(|e| Error::io("resolve", at, e))?;
    let parent_dev = canonical.parent().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.dev());
    if parent_dev != Some(meta.dev()) || mount_points().contains(&canonical) {
        return Err(bad("something is mounted there already (busy); unmount it or choose another directory"));
    }
    let mut entries = std::fs::read_dir(at).map_err(|e| Error::io("list", at, e))?;
    if entries.next().is_some() {
        return Err(bad("it is not empty (mounting would hide what it holds); choose an empty directory"));
    }
    Ok(())
}

/// Every mount point.
fn mount_points() -> Vec<PathBuf> {
    crate::mountinfo::mounts().into_iter().map(|m| m.point).collect()
}

fn check_fuse() -> Result<()> {
    let unavailable = |reason: String| Error::FuseUnavailable { reason };
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(unavailable("/dev/fuse does not exist (load the fuse kernel module: modprobe fuse)".into()))
        }
        Err(e) => Err(unavailable(format!("/dev/fuse cannot be opened: {e}"))),
    }
}
