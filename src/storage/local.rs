//! The local-directory backend: temp file, fsync, rename, directory fsync for every object.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Backend, ObjectWriter};
use crate::error::{Error, Result};

const TMP_PREFIX: &str = ".tmp.";
const MAX_OPEN_READERS: usize = 256;

pub struct LocalDir {
    root: PathBuf,
    /// Pack read handles kept open across `read_at` calls: restore reads many chunks of few packs.
    readers: Mutex<HashMap<String, Arc<File>>>,
    staging: Mutex<Staging>,
}

impl LocalDir {
    pub fn new(root: impl Into<PathBuf>) -> LocalDir {
        LocalDir { root: root.into(), readers: Mutex::new(HashMap::new()), staging: Mutex::new(Staging(Vec::new())) }
    }

    fn full(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    fn temp_for(&self, target: &Path) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("object");
        let unique = format!("{TMP_PREFIX}{name}.{}.{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        target.with_file_name(unique)
    }

    fn reader(&self, path: &str) -> Result<Arc<File>> {
        // Only packs are immutable; a manifest can be replaced (forget rewrites it), and a cached
        // handle would keep reading the old file.
        if !path.starts_with("packs/") {
            let full = self.full(path);
            return Ok(Arc::new(File::open(&full).map_err(|e| Error::io("open", &full, e))?));
        }
        let mut map = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(path) {
            return Ok(f.clone());
        }
        let full = self.full(path);
        let f = Arc::new(File::open(&full).map_err(|e| Error::io("open", &full, e))?);
        if map.len() >= MAX_OPEN_READERS {
            map.clear();
        }
        map.insert(path.to_string(), f.clone());
        Ok(f)
    }
}

impl LocalDir {
    /// Calls `visit` with the path relative to the root, the name and the entry of every file
    /// under `dir` (in subfolders too with `recurse`). A missing folder has no files; one that
    /// cannot be read is an error, never an empty listing.
    fn walk(
        &self,
        dir: &str,
        recurse: bool,
        visit: &mut dyn FnMut(String, &str, &fs::DirEntry) -> Result<()>,
    ) -> Result<()> {
        let base = self.full(dir);
        if !base.exists() {
            return Ok(());
        }
        let mut stack = vec![(base, dir.trim_end_matches('/').to_string())];
        while let Some((path, rel)) = stack.pop() {
            for entry in fs::read_dir(&path).map_err(|e| Error::io("list", &path, e))? {
                let entry = entry.map_err(|e| Error::io("list", &path, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let child_rel = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
                let ft = entry.file_type().map_err(|e| Error::io("stat", entry.path(), e))?;
                if ft.is_dir() {
                    if recurse {
                        stack.push((entry.path(), child_rel));
                    }
                } else {
                    visit(child_rel, &name, &entry)?;
                }
            }
        }
        Ok(())
    }
}

/// Free space for an unprivileged writer on the filesystem holding `path` (`None`: unknown).
pub(crate) fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed out-parameter of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// fsync of the directory makes a rename inside it durable (restic #3436).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("sync directory", dir, e))
}

fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.exists() {
            fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
            if let Some(grand) = parent.parent() {
                sync_dir(grand)?;
            }
        }
    }
    Ok(())
}

struct LocalWriter {
    tmp: PathBuf,
    target: PathBuf,
    out: Option<BufWriter<File>>,
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.as_mut().ok_or_else(|| std::io::Error::other("writer already committed"))?.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.out.as_mut() {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }
}

impl ObjectWriter for LocalWriter {
    fn commit(mut self: Box<Self>) -> Result<()> {
        let out = self.out.take().ok_or_else(|| Error::io("commit", &self.target, std::io::Error::other("twice")))?;
        crate::failpoint::step!();
        let file = out.into_inner().map_err(|e| Error::io("write", &self.tmp, e.into_error()))?;
        publish(file, &self.tmp, &self.target)
    }
}

/// The end of every object's write, once its bytes are in `tmp`: fsync, drop its cached pages,
/// rename to `target`, fsync the directory.
fn publish(file: File, tmp: &Path, target: &Path) -> Result<()> {
    file.sync_all().map_err(|e| Error::io("fsync", tmp, e))?;
    drop_cached(&file);
    drop(file);
    crate::failpoint::hit!("object-before-rename");
    fs::rename(tmp, target).map_err(|e| Error::io("rename", tmp, e))?;
    sync_dir(target.parent().unwrap_or(Path::new(".")))
}

/// Lets the kernel drop a durable file's pages from its cache. A backup writes gigabytes that
/// nobody reads soon: kept, they would push the machine's own working set out of the page cache,
/// and each new pack would be copied into fresh pages, which costs 4-8 times the kernel time of
/// recycled ones on this project's machine (docs/BENCHMARKS.md, "Page cache"). Advice only: an
/// error changes nothing.
fn drop_cached(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on an open descriptor; no memory is passed.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Objects at least this large (packs) are written with `O_DIRECT`: from a recycled aligned
/// buffer straight to the disk, instead of copied into fresh page-cache pages that are dropped
/// again once durable (docs/DESIGN.md, "The page cache").
const DIRECT_MIN: usize = 1 << 20;
/// Larger objects (packs of a repository configured for bigger ones) are written the usual way:
/// the aligned buffer, kept for the process's life, stays at most this size.
const DIRECT_MAX: usize = 64 << 20;
/// `O_DIRECT` wants the buffer, the file offset and the length aligned to the logical block size
/// (4 KiB serves devices of 512-byte and of 4 KiB logical blocks and the usual filesystem blocks).
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// The index of `buf`'s first byte at an address aligned for `O_DIRECT`.
pub(crate) fn first_aligned(buf: &[u8]) -> usize {
    let at = buf.as_ptr() as usize;
    at.next_multiple_of(DIRECT_ALIGN) - at
}

/// A buffer for `O_DIRECT`, kept for the next pack (one writer thread writes packs; a second
/// `put` waits for it): allocated `DIRECT_ALIGN` bytes longer than needed and used from its
/// first aligned byte.
struct Staging(Vec<u8>);

impl Staging {
    /// `len` writable bytes at an aligned address (contents unspecified), growing the buffer if
    /// it is smaller.
    fn get(&mut self, len: usize) -> &mut [u8] {
        if self.0.len() < len + DIRECT_ALIGN {
            self.0 = vec![0; len + DIRECT_ALIGN];
        }
        let from = first_aligned(&self.0);
        &mut self.0[from..from + len]
    }
}

impl LocalDir {
    /// `put` with `O_DIRECT` for the block-aligned part of `data` (the tail goes through the page
    /// cache); None where the filesystem refuses `O_DIRECT`, so the caller writes as usual. The
    /// same step and `publish` as `LocalWriter::commit`.
    fn put_direct(&self, path: &str, data: &[u8]) -> Option<Result<()>> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let target = self.full(path);
        if let Err(e) = ensure_parent(&target) {
            return Some(Err(e));
        }
        let tmp = self.temp_for(&target);
        let file = match OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_DIRECT).open(&tmp) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return None,
            Err(e) => return Some(Err(Error::io("create", &tmp, e))),
        };
        let written = (|| -> std::io::Result<()> {
            let aligned = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
            {
                let mut staging = self.staging.lock().unwrap_or_else(|p| p.into_inner());
                let buf = staging.get(aligned);
                buf.copy_from_slice(&data[..aligned]);
                // Nothing touches the buffer while the write runs (the lock is held): btrfs
                // checksums a direct write from the caller's memory as the device reads it.
                file.write_all_at(buf, 0)?;
            }
            // The tail through the page cache: O_DIRECT off for it.
            // SAFETY: fcntl on a descriptor we own.
            let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
            if flags < 0 || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            file.write_all_at(&data[aligned..], aligned as u64)
        })();
        if written.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL)) {
            // Accepted at open, refused at the write (an alignment this filesystem or device
            // does not take): written the usual way instead.
            drop(file);
            let _ = fs::remove_file(&tmp);
            return None;
        }
        let committed = written.map_err(|e| Error::io("write", &tmp, e)).and_then(|()| {
            crate::failpoint::step!();
            publish(file, &tmp, &target)
        });
        if committed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        Some(committed)
    }
}

impl Backend for LocalDir {
    fn put(&self, path: &str, data: &[u8]) -> Result<()> {
        if (DIRECT_MIN..=DIRECT_MAX).contains(&data.len()) {
            if let Some(done) = self.put_direct(path, data) {
                return done;
            }
        }
        let mut w = self.create(path)?;
        w.write_all(data).map_err(|e| Error::io("write", self.full(path), e))?;
        w.commit()
    }

    fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>> {
        let target = self.full(path);
        ensure_parent(&target)?;
        let tmp = self.temp_for(&target);
        let file =
            OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        Ok(Box::new(LocalWriter { tmp, target, out: Some(BufWriter::with_capacity(1 << 20, file)) }))
    }

    fn get(&self, path: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.get_into(path, &mut buf)?;
        Ok(buf)
    }

    fn get_into(&self, path: &str, buf: &mut Vec<u8>) -> Result<()> {
        let full = self.full(path);
        buf.clear();
        File::open(&full).and_then(|mut f| f.read_to_end(buf)).map_err(|e| Error::io("read", &full, e))?;
        Ok(())
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + Send>> {
        let full = self.full(path);
        let f = File::open(&full).map_err(|e| Error::io("open", &full, e))?;
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
    }

    fn read_at(&self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let f = self.reader(path)?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).map_err(|e| Error::io("read", self.full(path), e))?;
        Ok(buf)
    }

    fn size(&self, path: &str) -> Result<u64> {
        let full = self.full(path);
        fs::metadata(&full).map(|m| m.len()).map_err(|e| Error::io("stat", &full, e))
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.walk(dir, true, &mut |rel, name, _| {
            if !name.starts_with(TMP_PREFIX) {
                out.push(rel);
            }
            Ok(())
        })?;
        out.sort();
        Ok(out)
    }

    fn available(&self) -> Option<u64> {
        free_space(&self.root)
    }

    fn temporaries(&self) -> Result<Vec<(String, u64)>> {
        // Objects live at the top and under packs/, images/ and runs/; the index is RocksDB's.
        let mut out = Vec::new();
        for (dir, recurse) in [("", false), ("packs", true), ("images", true), ("runs", true)] {
            self.walk(dir, recurse, &mut |rel, name, entry| {
                if name.starts_with(TMP_PREFIX) {
                    out.push((rel, entry.metadata().map(|m| m.len()).unwrap_or(0)));
                }
                Ok(())
            })?;
        }
        out.sort();
        Ok(out)
    }

    fn remove_temporary(&self, path: &str) -> Result<()> {
        let full = self.full(path);
        match fs::remove_file(&full) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &full, e)),
        }
    }

    fn remove(&self, path: &str) -> Result<()> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).remove(path);
        crate::failpoint::step!();
        let full = self.full(path);
        fs::remove_file(&full).map_err(|e| Error::io("remove", &full, e))?;
        sync_dir(full.parent().unwrap_or(Path::new(".")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_objects_written_direct_read_back_whole_at_any_length() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalDir::new(dir.path());
        for (i, len) in [DIRECT_MIN, DIRECT_MIN + 1, 3 * DIRECT_MIN + 4095, 2 * DIRECT_MIN - 1].into_iter().enumerate()
        {
            let data: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8).collect();
            let path = format!("packs/0{i}/object");
            b.put(&path, &data).unwrap();
            assert_eq!(b.get(&path).unwrap(), data, "length {len}");
            assert_eq!(b.size(&path).unwrap(), len as u64);
        }
        let mut names = Vec::new();
        b.walk("", true, &mut |rel, _, _| {
            names.push(rel);
            Ok(())
        })
        .unwrap();
        assert!(names.iter().all(|n| !n.contains(TMP_PREFIX)), "temporary files left: {names:?}");
        assert_eq!(names.len(), 4);
    }

    #[test]
    fn put_get_list_and_uncommitted_writers_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalDir::new(dir.path());
        b.put("packs/ab/abc", b"hello").unwrap();
        assert_eq!(b.get("packs/ab/abc").unwrap(), b"hello");
        assert_eq!(b.read_at("packs/ab/abc", 1, 3).unwrap(), b"ell");
        assert!(b.read_at("packs/ab/abc", 3, 5).is_err());
        let mut w = b.create("images/x").unwrap();
        w.write_all(b"partial").unwrap();
        drop(w); // never committed
        assert_eq!(b.list("").unwrap(), vec!["packs/ab/abc".to_string()]);
        assert_eq!(b.list("missing").unwrap(), Vec::<String>::new());
    }
}
