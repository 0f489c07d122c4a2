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

/// The local directory backend with one fault injected.
pub struct Faulty {
    inner: LocalDir,
    trigger: Arc<Trigger>,
}

impl Faulty {
    pub fn new(root: &Path, fault: Fault, at: usize) -> Faulty {
        let trigger = Trigger { fault, at, calls: AtomicUsize::new(0), fired: AtomicBool::new(false) };
        Faulty { inner: LocalDir::new(root), trigger: Arc::new(trigger) }
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
