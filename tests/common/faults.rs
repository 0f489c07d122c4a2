//! A storage double that fails the Nth storage call as a failing disk would: EIO on a read, EIO
//! on a write, ENOSPC, or an fsync that fails when an object is committed. Fault tests built on
//! it need no root, no timing and no environment variable: they step N through every call of
//! an operation.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use strata::storage::{Backend, LocalDir, ObjectWriter};
use strata::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A read (get, open, read_at, size, list) fails with EIO.
    ReadEio,
    /// A write (put, create, commit, remove) fails with EIO.
    WriteEio,
    /// A write fails with ENOSPC.
    NoSpace,
    /// Making an object durable (put, commit) fails: its fsync reported an error.
    FsyncFails,
}

/// Counts the calls a fault applies to and fails the `at`-th.
struct Trigger {
    fault: Fault,
    at: usize,
    calls: AtomicUsize,
    fired: AtomicBool,
}

impl Trigger {
    fn trip(&self, applies: bool, op: &'static str, path: &str) -> Result<()> {
        if !applies || self.calls.fetch_add(1, Ordering::SeqCst) + 1 != self.at {
            return Ok(());
        }
        self.fired.store(true, Ordering::SeqCst);
        let errno = if self.fault == Fault::NoSpace { libc::ENOSPC } else { libc::EIO };
        Err(Error::io(op, path, std::io::Error::from_raw_os_error(errno)))
    }

    fn read(&self, op: &'static str, path: &str) -> Result<()> {
        self.trip(self.fault == Fault::ReadEio, op, path)
    }

    fn write(&self, op: &'static str, path: &str) -> Result<()> {
        self.trip(matches!(self.fault, Fault::WriteEio | Fault::NoSpace), op, path)
    }

    fn sync(&self, op: &'static str, path: &str) -> Result<()> {
        self.trip(matches!(self.fault, Fault::WriteEio | Fault::NoSpace | Fault::FsyncFails), op, path)
    }
}

/// The repository's backend (its directory, or its bucket in an S3 run) with one fault injected.
pub struct Faulty {
    inner: Box<dyn Backend>,
    trigger: Arc<Trigger>,
}

impl Faulty {
    pub fn new(root: &Path, fault: Fault, at: usize) -> Faulty {
        let trigger = Trigger { fault, at, calls: AtomicUsize::new(0), fired: AtomicBool::new(false) };
        Faulty { inner: super::raw_backend(root), trigger: Arc::new(trigger) }
    }

    /// Whether the fault was injected (the operation reached its `at`-th call).
    pub fn fired(&self) -> bool {
        self.trigger.fired.load(Ordering::SeqCst)
    }
}

struct FaultyWriter {
    inner: Box<dyn ObjectWriter>,
    trigger: Arc<Trigger>,
    path: String,
}

impl Write for FaultyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl ObjectWriter for FaultyWriter {
    fn commit(self: Box<Self>) -> Result<()> {
        // An fsync that fails leaves the object unpublished: never retried, never assumed done.
        self.trigger.sync("fsync", &self.path)?;
        self.inner.commit()
    }
}

impl Backend for Faulty {
    fn put(&self, path: &str, data: &[u8]) -> Result<()> {
        self.trigger.sync("fsync", path)?;
        self.inner.put(path, data)
    }
    fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>> {
        self.trigger.write("create", path)?;
        let inner = self.inner.create(path)?;
        Ok(Box::new(FaultyWriter { inner, trigger: self.trigger.clone(), path: path.to_string() }))
    }
    fn get(&self, path: &str) -> Result<Vec<u8>> {
        self.trigger.read("read", path)?;
        self.inner.get(path)
    }
    fn open(&self, path: &str) -> Result<Box<dyn Read + Send>> {
        self.trigger.read("open", path)?;
        self.inner.open(path)
    }
    fn read_at(&self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.trigger.read("read", path)?;
        self.inner.read_at(path, offset, len)
    }
    fn size(&self, path: &str) -> Result<u64> {
        self.trigger.read("stat", path)?;
        self.inner.size(path)
    }
    fn list(&self, dir: &str) -> Result<Vec<String>> {
        self.trigger.read("list", dir)?;
        self.inner.list(dir)
    }
    fn remove(&self, path: &str) -> Result<()> {
        self.trigger.write("remove", path)?;
        self.inner.remove(path)
    }
    fn temporaries(&self) -> Result<Vec<(String, u64)>> {
        self.inner.temporaries()
    }
    fn remove_temporary(&self, path: &str) -> Result<()> {
        self.inner.remove_temporary(path)
    }
    fn available(&self) -> Option<u64> {
        self.inner.available()
    }
}

/// The local directory behind a volatile write cache that ignored every flush: each object the
/// backend reported durable is remembered (with what it replaced), and `power_cut` undoes the
/// writes after the first `keep`, as if they had never reached the disk. The index, which is
/// local and syncs itself, keeps what it recorded: it is ahead of the storage after the cut.
pub struct Lossy {
    inner: LocalDir,
    root: std::path::PathBuf,
    /// Every durable write in order: the object's path and its previous bytes (None: it was new).
    log: std::sync::Mutex<Vec<(String, Option<Vec<u8>>)>>,
}

impl Lossy {
    pub fn new(root: &Path) -> Lossy {
        Lossy { inner: LocalDir::new(root), root: root.into(), log: Default::default() }
    }

    fn remember(&self, path: &str) {
        let previous = std::fs::read(self.root.join(path)).ok();
        self.log.lock().unwrap().push((path.to_string(), previous));
    }

    /// Writes reported durable so far.
    pub fn writes(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Loses every write after the first `keep` (newest first, so each object falls back to
    /// what it held before); returns the paths of the objects lost.
    pub fn power_cut(&self, keep: usize) -> Vec<String> {
        let mut log = self.log.lock().unwrap();
        let keep = keep.min(log.len());
        let lost = log.split_off(keep);
        for (path, previous) in lost.iter().rev() {
            let full = self.root.join(path);
            match previous {
                Some(bytes) => std::fs::write(&full, bytes).unwrap(),
                None => {
                    let _ = std::fs::remove_file(&full);
                }
            }
        }
        lost.into_iter().map(|(path, _)| path).collect()
    }
}

struct LossyWriter {
    inner: Box<dyn ObjectWriter>,
    owner: Arc<Lossy>,
    path: String,
}

impl Write for LossyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl ObjectWriter for LossyWriter {
    fn commit(self: Box<Self>) -> Result<()> {
        self.owner.remember(&self.path);
        self.inner.commit()
    }
}

/// `Lossy` shared between the repository (as its backend) and the test (which cuts the power).
pub struct LossyBackend(pub Arc<Lossy>);

impl Backend for LossyBackend {
    fn put(&self, path: &str, data: &[u8]) -> Result<()> {
        self.0.remember(path);
        self.0.inner.put(path, data)
    }
    fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>> {
        let inner = self.0.inner.create(path)?;
        Ok(Box::new(LossyWriter { inner, owner: self.0.clone(), path: path.to_string() }))
    }
    fn get(&self, path: &str) -> Result<Vec<u8>> {
        self.0.inner.get(path)
    }
    fn open(&self, path: &str) -> Result<Box<dyn Read + Send>> {
        self.0.inner.open(path)
    }
    fn read_at(&self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.0.inner.read_at(path, offset, len)
    }
    fn size(&self, path: &str) -> Result<u64> {
        self.0.inner.size(path)
    }
    fn list(&self, dir: &str) -> Result<Vec<String>> {
        self.0.inner.list(dir)
    }
    fn remove(&self, path: &str) -> Result<()> {
        self.0.inner.remove(path)
    }
    fn temporaries(&self) -> Result<Vec<(String, u64)>> {
        self.0.inner.temporaries()
    }
    fn remove_temporary(&self, path: &str) -> Result<()> {
        self.0.inner.remove_temporary(path)
    }
    fn available(&self) -> Option<u64> {
        self.0.inner.available()
    }
}
