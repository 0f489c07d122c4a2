//! `extract`: files and directory trees out of an image's filesystem into a local directory,
//! keeping mode, mtime and symlinks (and ownership when run as root). Each regular file is
//! written under a temporary name and renamed into place only when all of it was read, so a
//! file that meets a damaged chunk is reported and left out, never written with wrong bytes;
//! the others are still extracted. Runs of zeros (4 KiB blocks) are left as holes.
//!
//! Nothing is written outside the target directory: paths are normal before they are joined
//! (`Files` refuses entry names holding `/` or `..`), and an existing symlink in the way is
//! replaced, never followed. Setuid and setgid bits are not recreated, nor are fifos, unless
//! asked for (`ExtractOptions::devices`); device nodes and sockets never are (they are listed in
//! `skipped`): no reader gives a device node's numbers (`ext4-view` 1.0 exposes neither them nor
//! inode numbers), and a socket belongs to a program that is not running.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Entry, EntryKind, Files};
use crate::error::{Error, Result};

/// How to extract.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExtractOptions {
    /// Keep setuid and setgid bits and recreate fifos (`extract --devices`, which the CLI allows
    /// only to root): what restoring a system's files needs (`/usr/bin/sudo` is setuid).
    pub devices: bool,
}

/// What an extraction did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ExtractReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes of regular files written (holes included).
    pub bytes: u64,
    /// Fifos recreated (only with `ExtractOptions::devices`).
    pub fifos: u64,
    /// Entries that are not extracted (devices, sockets, fifos unless asked for), with why.
    pub skipped: Vec<(String, String)>,
    /// Paths that could not be extracted, with why (a damaged chunk, say).
    pub failed: Vec<(String, String)>,
}

impl Files {
    /// Extracts each of `paths` (a file, symlink or directory tree) into `to`, under its own
    /// name, as `cp -a PATH TO/` would; `/` extracts the whole filesystem's contents. Existing
    /// files of the same names are replaced. Errors of the destination (cannot create, no space)
    /// end the run; a source file that cannot be read is reported in `failed`.
    pub fn extract(&self, paths: &[String], to: &Path, options: ExtractOptions) -> Result<ExtractReport> {
        fs::create_dir_all(to).map_err(|e| Error::io("create directory", to, e))?;
        let mut report = ExtractReport::default();
        for path in paths {
            let entry = self.stat(path)?;
            if entry.path == "/" {
                for child in self.list(&entry.path, false)? {
                    let dest = to.join(local_name(child.name()));
                    self.extract_entry(&child, &dest, 0, options, &mut report)?;
                }
            } else {
                let dest = to.join(local_name(entry.name()));
                self.extract_entry(&entry, &dest, 0, options, &mut report)?;
            }
        }
        Ok(report)
    }

    fn extract_entry(
        &self,
        entry: &Entry,
        dest: &Path,
        depth: usize,
        options: ExtractOptions,
        report: &mut ExtractReport,
    ) -> Result<()> {
        match entry.kind {
            EntryKind::Dir => {
                if depth >= super::MAX_DEPTH {
                    return Err(Error::Filesystem {
                        image: self.image.clone(),
                        reason: format!("{}: directories nested too deep (a directory loop?)", entry.path),
                    });
                }
                // `symlink_metadata`: a symlink in the way is replaced, never followed out of the
                // target directory.
                match fs::symlink_metadata(dest) {
                    Ok(m) if m.is_dir() => {}
                    found => {
                        if found.is_ok() {
                            fs::remove_file(dest).map_err(|e| Error::io("replace", dest, e))?;
                        }
                        fs::create_dir(dest).map_err(|e| Error::io("create directory", dest, e))?;
                    }
                }
                report.dirs += 1;
                for child in self.list(&entry.path, false)? {
                    self.extract_entry(&child, &dest.join(local_name(child.name())), depth + 1, options, report)?;
                }
                // After the children: writing them changed the directory's mtime.
                apply_metadata(entry, dest, options)?;
            }
            EntryKind::Symlink => {
                replace(dest)?;
                let target = super::unescape(entry.target.as_deref().unwrap_or_default());
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), dest)
                    .map_err(|e| Error::io("create symlink", dest, e))?;
                apply_metadata(entry, dest, options)?;
                report.symlinks += 1;
            }
            EntryKind::File => {
                let temp = temporary(dest);
                let written = self.write_file(entry, &temp);
                match written {
                    Ok(n) => {
                        apply_metadata(entry, &temp, options)?;
                        fs::rename(&temp, dest).map_err(|e| Error::io("rename into place", dest, e))?;
                        report.files += 1;
                        report.bytes += n;
                    }
                    Err(e) => {
                        let _ = fs::remove_file(&temp);
                        if matches!(e, Error::Io { .. } | Error::NoSpace { .. }) {
                            return Err(e);
                        }
                        report.failed.push((entry.path.clone(), e.to_string()));
                    }
                }
            }
            EntryKind::Fifo if options.devices => {
                replace(dest)?;
                let c = c_path(dest)?;
                // SAFETY: `c` is a valid NUL-terminated path.
                if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                    return Err(Error::io("create fifo", dest, std::io::Error::last_os_error()));
                }
                apply_metadata(entry, dest, options)?;
                report.fifos += 1;
            }
            EntryKind::Fifo => report.skipped.push((entry.path.clone(), "a fifo (extracted with --devices)".into())),
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                report.skipped.push((entry.path.clone(), "a device node (its numbers are not readable)".into()))
            }
            EntryKind::Socket => report.skipped.push((entry.path.clone(), "a socket".into())),
            EntryKind::Other => report.skipped.push((entry.path.clone(), "neither file, directory nor symlink".into())),
        }
        Ok(())
    }

    /// Writes `entry`'s bytes to the new file `path`, zero blocks as holes.
    fn write_file(&self, entry: &Entry, path: &Path) -> Result<u64> {
        // A new file, never through whatever is at the temporary name already.
        let _ = fs::remove_file(path);
        let file =
            fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| Error::io("create", path, e))?;
        let mut out = Sparse { file };
        let n = self.copy(&entry.path, &mut out).map_err(|e| match e {
            // The destination's own errors come back through `copy` as an I/O error on "the
            // output"; say which file.
            Error::Io { op, cause, .. } => Error::Io { op, path: path.into(), cause },
            e => e,
        })?;
        out.file.set_len(n).map_err(|e| Error::io("resize", path, e))?;
        out.file.sync_all().map_err(|e| Error::io("sync", path, e))?;
        Ok(n)
    }
}

/// A writer that seeks over whole 4 KiB blocks of zeros instead of writing them.
struct Sparse {
    file: File,
}

impl Write for Sparse {
    /// Runs of data blocks go out in one write each; whole zero blocks are skipped over.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let zero = |b: &[u8]| b.len() == 4096 && b.iter().all(|&x| x == 0);
        let mut at = 0;
        while at < buf.len() {
            let is_zero = zero(&buf[at..(at + 4096).min(buf.len())]);
            let mut end = at;
            while end < buf.len() && zero(&buf[end..(end + 4096).min(buf.len())]) == is_zero {
                end = (end + 4096).min(buf.len());
            }
            if is_zero {
                self.file.seek(SeekFrom::Current((end - at) as i64))?;
            } else {
                self.file.write_all(&buf[at..end])?;
            }
            at = end;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// A name as the local filesystem gets it: the bytes the image holds (`files::escape` undone).
fn local_name(name: &str) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(&super::unescape(name)))
}

fn temporary(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.strata-extract.{}", std::process::id()))
}

/// Removes what is at `dest` unless it is a directory (which stays, and makes the caller's
/// create fail with a clear error).
fn replace(dest: &Path) -> Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(m) if !m.is_dir() => fs::remove_file(dest).map_err(|e| Error::io("replace", dest, e)),
        _ => Ok(()),
    }
}

fn c_path(path: &Path) -> Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::io("use", path, std::io::ErrorKind::InvalidInput.into()))
}

/// Mode (not for symlinks; setuid and setgid only with `devices`), owner (when root) and mtime,
/// without following symlinks.
fn apply_metadata(entry: &Entry, path: &Path, options: ExtractOptions) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::lchown(path, Some(entry.uid), Some(entry.gid)).map_err(|e| Error::io("chown", path, e))?;
    }
    if entry.kind != EntryKind::Symlink {
        // Without setuid and setgid unless asked for: an extracted file must not carry
        // privileges by surprise. After chown, which clears them.
        let keep = if options.devices { 0o7777 } else { 0o1777 };
        fs::set_permissions(path, fs::Permissions::from_mode(entry.mode & keep))
            .map_err(|e| Error::io("chmod", path, e))?;
    }
    let c = c_path(path)?;
    let mtime = libc::timespec { tv_sec: entry.mtime as libc::time_t, tv_nsec: 0 };
    let times = [libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }, mtime];
    // SAFETY: `c` is a valid NUL-terminated path and `times` holds two timespecs.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(Error::io("set the time of", path, std::io::Error::last_os_error()));
    }
    Ok(())
}
