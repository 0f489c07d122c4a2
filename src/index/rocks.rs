//! The RocksDB store under the index: the only place that names `rocksdb`. Every commit is one
//! synced `WriteBatch`.

use std::path::{Path, PathBuf};

use rocksdb::{BlockBasedOptions, Options, WriteBatch, WriteOptions, DB};

use super::txn::Batch;
use crate::crypto::{ObjectKind, Protection};
use crate::error::{Error, Result};

/// RocksDB's memtable size. It also sets how much RocksDB preallocates for each new write-ahead
/// log (1.1 × this): with the default 64 MiB, a 10 KB backup failed for lack of space on a
/// filesystem with 83 MB free. An index batch per pack is small, so a small memtable costs
/// only a few more (small) flushes.
pub(crate) const WRITE_BUFFER: u64 = 8 << 20;

/// Free space the index may take while a pack with `entries` chunks is indexed: a memtable flush
/// (a table file of at most one memtable) and the next log's preallocation, plus the records.
pub(crate) fn headroom_for(entries: usize) -> u64 {
    2 * WRITE_BUFFER + WRITE_BUFFER / 10 + entries as u64 * 160
}

/// RocksDB and, in an encrypted repository, the keys that seal every value: each value is
/// stored sealed (kind `IndexValue`) under its own key as the name, so no value can be read
/// without the key or moved to another key (docs/FORMAT.md, "Index"). Keys need no sealing:
/// they are keyed chunk ids, random pack and image ids, and one-letter tags.
pub(super) struct Db {
    db: DB,
    path: PathBuf,
    protection: Protection,
    /// Opened for writing: its memtable is flushed when it closes (`Drop`).
    writable: bool,
}

/// Free space needed before the memtable is flushed when a writable index closes.
const FLUSH_HEADROOM: u64 = 256 * 1024 * 1024;

fn options() -> Options {
    let mut opts = Options::default();
    opts.set_write_buffer_size(WRITE_BUFFER as usize);
    let mut table = BlockBasedOptions::default();
    // Misses are the common case when a backup meets new data: a bloom filter answers them
    // without reading blocks.
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);
    // The same for the memtable, which holds the newest records: the owners and dead-marks of
    // a full's new chunks are all misses there too.
    opts.set_memtable_prefix_bloom_ratio(0.1);
    opts.set_memtable_whole_key_filtering(true);
    opts.set_keep_log_file_num(2);
    opts.set_max_open_files(512);
    opts
}

impl Db {
    pub(super) fn create(path: &Path, protection: &Protection) -> Result<Db> {
        let mut opts = options();
        opts.create_if_missing(true);
        let db = DB::open(&opts, path)?;
        Ok(Db { db, path: path.into(), protection: protection.clone(), writable: true })
    }

    pub(super) fn open(path: &Path, protection: &Protection) -> Result<Db> {
        let db = DB::open(&options(), path).map_err(|e| unusable(path, e))?;
        Ok(Db { db, path: path.into(), protection: protection.clone(), writable: true })
    }

    /// A view that works beside a running writer (RocksDB's read-only mode takes no lock).
    pub(super) fn open_read_only(path: &Path, protection: &Protection) -> Result<Db> {
        let db = DB::open_for_read_only(&options(), path, false).map_err(|e| unusable(path, e))?;
        Ok(Db { db, path: path.into(), protection: protection.clone(), writable: false })
    }

    /// The value as stored: sealed under `key` when encrypted.
    fn seal(&self, key: &[u8], value: &[u8]) -> Result<Vec<u8>> {
        match self.protection.keys() {
            None => Ok(value.to_vec()),
            Some(k) => k.seal(ObjectKind::IndexValue, key, value),
        }
    }

    /// The value of `key` as stored, opened.
    fn open_value(&self, key: &[u8], stored: Vec<u8>) -> Result<Vec<u8>> {
        match self.protection.keys() {
            None => Ok(stored),
            Some(k) => {
                let what = || format!("the index record {:?}", String::from_utf8_lossy(&key[..1.min(key.len())]));
                k.open(ObjectKind::IndexValue, key, &stored, &what).map_err(|_| Error::Index {
                    reason: format!(
                        "the index record {:?}… does not decrypt (damaged, replaced, or written without the key)",
                        String::from_utf8_lossy(&key[..1.min(key.len())])
                    ),
                })
            }
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key)?.map(|v| self.open_value(key, v)).transpose()
    }

    pub(super) fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let found = self.db.multi_get(keys.iter());
        keys.iter().zip(found).map(|(k, r)| r?.map(|v| self.open_value(k, v)).transpose()).collect()
    }

    /// Calls `f` with every key and value under `prefix`, in key order.
    pub(super) fn for_each_prefix(&self, prefix: &[u8], mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        for item in self.db.prefix_iterator(prefix) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            if self.protection.is_encrypted() {
                let v = self.open_value(&k, v.into_vec())?;
                f(&k, &v)?;
            } else {
                f(&k, &v)?;
            }
        }
        Ok(())
    }

    /// Commits a batch: all of it or nothing survives a crash; with `durable`, the log is synced
    /// before this returns (a durable step for the crash tests).
    pub(super) fn commit(&self, mut ops: Batch, durable: bool) -> Result<()> {
        // In key order, as a stable sort (two changes to one key keep their order, so the batch
        // means what it did): RocksDB wrote a backup's batch of 10,000 owner records and as
        // many dead-marker deletes, interleaved, in 44-51 ms, and sorted in 12-18 ms (its
        // memtable's searches follow one another through the same nodes; docs/BENCHMARKS.md,
        // "Sorted index batches").
        ops.0.sort_by(|a, b| a.0.cmp(&b.0));
        let mut batch = WriteBatch::default();
        for (key, value) in ops.0 {
            match value {
                Some(v) => batch.put(&key, self.seal(&key, &v)?),
                None => batch.delete(&key),
            }
        }
        if durable {
            crate::failpoint::step!();
        }
        let mut w = WriteOptions::default();
        w.set_sync(durable);
        Ok(self.db.write_opt(batch, &w)?)
    }
}

/// A writer's records are durable in the write-ahead log when it commits, but a read-only open
/// replays that log into memory every time (0.2–0.4 s for the records of one 2 GiB full, in
/// every `images`, `restore` or `mount` until the next writer) and never writes it out. So a
/// writable index writes its memtable to a (compressed) table file when it closes, and the log
/// goes. Only when there is room: the records are safe in the log either way, a failed flush
/// changes nothing, and Debian's librocksdb aborts on some write errors of a full disk.
impl Drop for Db {
    fn drop(&mut self) {
        if self.writable && crate::storage::free_space(&self.path).is_none_or(|free| free > FLUSH_HEADROOM) {
            // A writer killed here leaves its records in the log (tests/index_trust.rs).
            crate::failpoint::hit!("index-before-flush");
            let _ = self.db.flush();
        }
    }
}

fn unusable(path: &Path, e: rocksdb::Error) -> Error {
    let reason = e.into_string();
    if reason.contains("No space left") {
        return Error::NoSpace { path: path.into() };
    }
    Error::IndexUnusable { path: path.into(), reason }
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        let reason = e.into_string();
        if reason.contains("No space left") {
            return Error::NoSpace { path: PathBuf::from("index") };
        }
        Error::Index { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Txn;

    /// Records in the memtable of a read-only open: what it replayed from the write-ahead log.
    fn replayed(path: &Path) -> u64 {
        let db = Db::open_read_only(path, &Protection::none()).unwrap();
        db.db.property_int_value("rocksdb.num-entries-active-mem-table").unwrap().unwrap()
    }

    #[test]
    fn a_writer_that_closes_leaves_no_log_for_readers_to_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let db = Db::create(&path, &Protection::none()).unwrap();
        for generation in 1..=100 {
            let mut txn = Txn::new();
            txn.set_generation(generation);
            db.commit(txn.batch, true).unwrap();
        }
        // While the writer is open its records are in the log only, and a reader replays them.
        assert_eq!(replayed(&path), 100);
        drop(db);
        assert_eq!(replayed(&path), 0);

        // The same for a writer that opened an existing index.
        let db = Db::open(&path, &Protection::none()).unwrap();
        let mut txn = Txn::new();
        txn.set_generation(101);
        db.commit(txn.batch, true).unwrap();
        drop(db);
        assert_eq!(replayed(&path), 0);
    }
}
