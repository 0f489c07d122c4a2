//! The RocksDB implementation of the index. Every commit is one synced `WriteBatch`.

use std::path::{Path, PathBuf};

use rocksdb::{BlockBasedOptions, Options, WriteBatch, WriteOptions, DB};

use super::{ChunkLoc, ChunkLookup, PackRecord};
use crate::error::{Error, Result};
use crate::id::{ChunkId, ImageId, PackId};
use crate::manifest::ImageInfo;
use crate::pack::PackEntry;

pub const INDEX_VERSION: u32 = 3;

/// Present once the index holds everything the repository had when it was made (written by
/// `init` and as the last record of `rebuild-index`): an index without it was never finished.
const COMPLETE: &[u8] = b"C";
/// The generation of the last writing command that finished (u64 LE); see `Repository`.
const GENERATION: &[u8] = b"G";

pub use rocksdb::WriteBatch as Batch;

pub struct RocksIndex {
    db: DB,
    path: PathBuf,
}

/// RocksDB's memtable size. It also sets how much RocksDB preallocates for each new write-ahead
/// log (1.1 × this): with the default 64 MiB, a 10 KB backup failed for lack of space on a
/// filesystem with 83 MB free. An index batch per pack is small, so a small memtable costs
/// only a few more (small) flushes.
pub const WRITE_BUFFER: u64 = 8 << 20;

/// Free space the index may take while a pack with `entries` chunks is indexed: a memtable flush
/// (a table file of at most one memtable) and the next log's preallocation, plus the records.
pub fn headroom_for(entries: usize) -> u64 {
    2 * WRITE_BUFFER + WRITE_BUFFER / 10 + entries as u64 * 160
}

fn options() -> Options {
    let mut opts = Options::default();
    opts.set_write_buffer_size(WRITE_BUFFER as usize);
    let mut table = BlockBasedOptions::default();
    // Misses are the common case when a backup meets new data: a bloom filter answers them
    // without reading blocks.
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);
    opts.set_keep_log_file_num(2);
    opts.set_max_open_files(512);
    opts
}

fn info_config() -> impl bincode::config::Config {
    bincode::config::standard().with_little_endian().with_fixed_int_encoding().with_limit::<{ 64 * 1024 }>()
}

impl RocksIndex {
    pub fn create(path: &Path) -> Result<RocksIndex> {
        let mut opts = options();
        opts.create_if_missing(true);
        let db = DB::open(&opts, path)?;
        let idx = RocksIndex { db, path: path.into() };
        let mut batch = WriteBatch::default();
        batch.put(b"v", INDEX_VERSION.to_le_bytes());
        idx.commit(batch)?;
        Ok(idx)
    }

    pub fn open(path: &Path) -> Result<RocksIndex> {
        let db = DB::open(&options(), path).map_err(|e| unusable(path, e))?;
        Ok(RocksIndex { db, path: path.into() })
    }

    /// Opens a view that works beside a running writer (RocksDB's read-only mode takes no lock).
    pub fn open_read_only(path: &Path) -> Result<RocksIndex> {
        let db = DB::open_for_read_only(&options(), path, false).map_err(|e| unusable(path, e))?;
        Ok(RocksIndex { db, path: path.into() })
    }

    /// True when the index was finished by `init` or `rebuild-index` (see `COMPLETE`).
    pub fn is_complete(&self) -> Result<bool> {
        let version = self.get(b"v")?;
        Ok(self.get(COMPLETE)?.is_some() && version.as_deref() == Some(&INDEX_VERSION.to_le_bytes()[..]))
    }

    /// Marks a new index complete; the caller commits it as the index's last batch.
    pub fn mark_complete(batch: &mut WriteBatch) {
        batch.put(COMPLETE, []);
    }

    /// The generation of the last writing command that finished with this index (0: none).
    pub fn generation(&self) -> Result<u64> {
        match self.get(GENERATION)? {
            None => Ok(0),
            Some(v) => v
                .as_slice()
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| Error::Index { reason: "the generation record does not decode".into() }),
        }
    }

    pub fn set_generation(batch: &mut WriteBatch, generation: u64) {
        batch.put(GENERATION, generation.to_le_bytes());
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits a batch durably (synced WAL): all of it or nothing survives a crash.
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        self.commit(batch)
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key)?)
    }

    pub fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.db.multi_get(keys.iter()).into_iter().map(|r| r.map_err(Error::from)).collect()
    }

    /// Calls `f` with every key and value under `prefix`, in key order.
    pub fn for_each_prefix(&self, prefix: &[u8], mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        for item in self.db.prefix_iterator(prefix) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            f(&k, &v)?;
        }
        Ok(())
    }

    /// Deletes every key under `prefix`, in synced batches.
    pub fn delete_prefix(&self, prefix: &[u8]) -> Result<()> {
        let mut batch = WriteBatch::default();
        self.for_each_prefix(prefix, |k, _| {
            batch.delete(k);
            Ok(())
        })?;
        self.commit(batch)
    }

    fn commit(&self, batch: WriteBatch) -> Result<()> {
        crate::failpoint::step!();
        let mut w = WriteOptions::default();
        w.set_sync(true);
        Ok(self.db.write_opt(batch, &w)?)
    }

    /// Writes the memtable to a (compressed) table file so that the write-ahead log, which holds
    /// the same records uncompressed, can go. Everything was already durable through the WAL.
    pub fn flush(&self) -> Result<()> {
        Ok(self.db.flush()?)
    }

    /// Records a pack and all its chunks in one durable batch; called only after the pack
    /// itself is durable.
    pub fn add_pack(&self, pack: PackId, size: u64, entries: &[PackEntry]) -> Result<()> {
        let mut batch = WriteBatch::default();
        for e in entries {
            let loc = ChunkLoc::of(pack, e);
            batch.put(chunk_key(&e.id), loc.encode());
        }
        let record = PackRecord { size, chunks: entries.len() as u32, dead_bytes: 0, dead_chunks: 0 };
        batch.put(pack_key(&pack), record.encode());
        self.commit(batch)
    }

    /// Adds an image to the catalog; called only after its manifest is durable.
    pub fn put_image(&self, info: &ImageInfo) -> Result<()> {
        let v =
            bincode::serde::encode_to_vec(info, info_config()).map_err(|e| Error::Index { reason: e.to_string() })?;
        let mut batch = WriteBatch::default();
        batch.put(image_key(&info.id), v);
        self.commit(batch)
    }

    /// The catalog, in no particular order. An entry that does not decode is an index error.
    pub fn images(&self) -> Result<Vec<ImageInfo>> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator(b"i") {
            let (k, v) = item?;
            if k.first() != Some(&b'i') {
                break;
            }
            let (info, _): (ImageInfo, usize) = bincode::serde::decode_from_slice(&v, info_config())
                .map_err(|e| Error::Index { reason: format!("catalog entry does not decode: {e}") })?;
            out.push(info);
        }
        Ok(out)
    }
}

fn unusable(path: &Path, e: rocksdb::Error) -> Error {
    let reason = e.into_string();
    if reason.contains("No space left") {
        return Error::NoSpace { path: path.into() };
    }
    Error::IndexUnusable { path: path.into(), reason }
}

impl ChunkLookup for RocksIndex {
    fn locate(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkLoc>>> {
        let keys: Vec<Vec<u8>> = ids.iter().map(chunk_key).collect();
        self.db
            .multi_get(keys.iter())
            .into_iter()
            .zip(ids)
            .map(|(r, id)| match r? {
                None => Ok(None),
                Some(v) => ChunkLoc::decode(&v)
                    .map(Some)
                    .ok_or_else(|| Error::Index { reason: format!("entry of chunk {id} does not decode") }),
            })
            .collect()
    }
}

/// Adds a catalog entry to a batch.
pub fn put_image(batch: &mut WriteBatch, info: &ImageInfo) -> Result<()> {
    let v = bincode::serde::encode_to_vec(info, info_config()).map_err(|e| Error::Index { reason: e.to_string() })?;
    batch.put(image_key(&info.id), v);
    Ok(())
}

fn key<const N: usize>(tag: u8, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(N + 1);
    k.push(tag);
    k.extend_from_slice(id);
    k
}

pub fn chunk_key(id: &ChunkId) -> Vec<u8> {
    key::<32>(b'c', &id.0)
}

pub fn pack_key(id: &PackId) -> Vec<u8> {
    key::<32>(b'p', &id.0)
}

pub fn image_key(id: &ImageId) -> Vec<u8> {
    key::<16>(b'i', &id.0)
}
