//! Where the repository's objects live: the `Backend` trait (the seam for object storage and for
//! fault-injecting doubles), the local directory and the S3 bucket that implement it, the
//! repository's layout (`paths`), its generation file, and the writer locks; `site` puts them
//! together for one repository argument. The RocksDB index is always local and not behind the
//! trait (for a bucket it is a cache).

pub mod generation;
mod local;
pub mod location;
pub mod lock;
pub mod paths;
pub mod remote_lock;
pub mod s3;
pub(crate) mod site;

pub use local::LocalDir;
pub(crate) use local::{first_aligned, free_space, sync_dir, DIRECT_ALIGN};

use std::io::{Read, Write};

use crate::error::Result;

/// Storage for immutable objects named by slash-separated relative paths.
pub trait Backend: Send + Sync {
    /// Stores `data` under `path`, durably and atomically: after `Ok`, a crash cannot lose it, and
    /// before it no reader ever sees a partial object.
    fn put(&self, path: &str, data: &[u8]) -> Result<()>;
    /// Begins a streamed object, invisible under `path` until it is committed.
    fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>>;
    fn get(&self, path: &str) -> Result<Vec<u8>>;
    /// `get` into `buf`, replacing what it held: a command that reads many whole objects one
    /// after another (`check` reading packs) keeps one buffer, whose pages are already touched,
    /// instead of faulting in fresh memory for every object.
    fn get_into(&self, path: &str, buf: &mut Vec<u8>) -> Result<()> {
        *buf = self.get(path)?;
        Ok(())
    }
    fn open(&self, path: &str) -> Result<Box<dyn Read + Send>>;
    /// Reads exactly `len` bytes at `offset`; fewer bytes is an error.
    fn read_at(&self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
    fn size(&self, path: &str) -> Result<u64>;
    /// Object paths under `dir` (recursively), relative to the backend root; a missing folder is
    /// an empty list, while a folder that cannot be read is an error, never an empty list.
    fn list(&self, dir: &str) -> Result<Vec<String>>;
    fn remove(&self, path: &str) -> Result<()>;
    /// Objects that were being written and never committed (left by a process that died), with
    /// their sizes: safe to remove only while no writer runs.
    fn temporaries(&self) -> Result<Vec<(String, u64)>>;
    fn remove_temporary(&self, path: &str) -> Result<()>;
    /// Bytes that can still be written, where the storage can tell.
    fn available(&self) -> Option<u64>;
    /// How many requests a command should have in flight at once: one for a disk (a second
    /// stream only competes for the same queue), several for a store reached over the network,
    /// where each request waits on round trips.
    fn concurrent_requests(&self) -> usize {
        1
    }

    /// `read_at` for each of `reads` (path, offset, length), in that order; a store reached over
    /// the network sends them at once (and may merge neighbours), a disk reads one after another.
    fn read_ranges(&self, reads: &[(String, u64, usize)]) -> Vec<Result<Vec<u8>>> {
        reads.iter().map(|(path, offset, len)| self.read_at(path, *offset, *len)).collect()
    }
}

pub trait ObjectWriter: Write + Send {
    /// Makes the object durable and visible under its name (the commit point for manifests).
    fn commit(self: Box<Self>) -> Result<()>;
}
