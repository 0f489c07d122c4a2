//! The index: where each chunk is stored, what each pack holds, the image catalog, the usage
//! counters and the journal of the operation in progress. It is an accelerator rebuilt from
//! packs and manifests (`crate::recover`); losing it loses no backup.
//!
//! This folder owns every key (`keys`, the table of docs/FORMAT.md as code) and is the only
//! place that names RocksDB (`rocks`). Everything else changes the index through one
//! transaction type (`Txn`) and reads it through typed handles: chunk locations (`ChunkLookup`),
//! pack records, the catalog, the counters (`Counters`, over the pure arithmetic of `usage`)
//! and the journal.

mod counters;
mod journal;
mod keys;
mod records;
mod rocks;
mod txn;
mod usage;

pub use counters::Counters;
pub use journal::Journal;
pub use records::{ChunkLoc, Owners, PackRecord, SetCounters, SetId, Totals, LOC_LEN};
pub(crate) use rocks::headroom_for;
pub use txn::Txn;
pub use usage::RefDelta;

use std::path::Path;

use crate::crypto::Protection;
use crate::error::{Error, Result};
use crate::id::{ChunkId, ImageId, PackId};
use records::corrupt;

/// The narrow view of the index that dedup and reading need: where chunks are.
pub trait ChunkLookup: Send + Sync {
    /// Locations of `ids`, in order; `None` for a chunk the index does not know.
    fn locate(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkLoc>>>;
}

pub struct Index {
    db: rocks::Db,
}

impl Index {
    /// Creates an empty index (not yet complete: see `Txn::mark_complete`).
    /// `protection` seals every value in an encrypted repository (plain: `Protection::none()`).
    pub fn create(path: &Path, protection: &Protection) -> Result<Index> {
        let index = Index { db: rocks::Db::create(path, protection)? };
        let mut txn = Txn::new();
        txn.set_version();
        index.commit(txn)?;
        Ok(index)
    }

    pub fn open(path: &Path, protection: &Protection) -> Result<Index> {
        Ok(Index { db: rocks::Db::open(path, protection)? })
    }

    /// Opens a view that works beside a running writer.
    pub(crate) fn open_read_only(path: &Path, protection: &Protection) -> Result<Index> {
        Ok(Index { db: rocks::Db::open_read_only(path, protection)? })
    }

    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// Commits a transaction durably (synced WAL): all of it or nothing survives a crash. A
    /// provisional one (`Txn::provisional`) is as atomic, but not synced.
    pub fn commit(&self, txn: Txn) -> Result<()> {
        self.db.commit(txn.batch, !txn.provisional)
    }

    /// True when the index was finished by `init` or `rebuild-index` and has this version.
    pub(crate) fn is_complete(&self) -> Result<bool> {
        let version = self.db.get(keys::VERSION)?;
        Ok(self.db.get(keys::COMPLETE)?.is_some() && version.as_deref() == Some(&keys::INDEX_VERSION.to_le_bytes()[..]))
    }

    /// The generation of the last writing command that finished with this index (0: none).
    pub(crate) fn generation(&self) -> Result<u64> {
        match self.db.get(keys::GENERATION)? {
            None => Ok(0),
            Some(v) => v
                .as_slice()
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| Error::Index { reason: "the generation record does not decode".into() }),
        }
    }

    /// Records a pack and all its chunks in one durable batch; called only after the pack
    /// itself is durable.
    pub fn add_pack(&self, pack: PackId, size: u64, entries: &[crate::pack::PackEntry]) -> Result<()> {
        let mut txn = Txn::new();
        txn.add_pack(pack, size, entries);
        self.commit(txn)
    }

    /// Every pack the index knows, with its record.
    pub fn packs(&self) -> Result<Vec<(PackId, PackRecord)>> {
        let mut out = Vec::new();
        self.db.for_each_prefix(keys::PACK, |k, v| {
            let id = PackId(keys::id_of(k).ok_or_else(|| corrupt("pack key"))?);
            out.push((id, PackRecord::decode(v).ok_or_else(|| corrupt("pack record"))?));
            Ok(())
        })?;
        Ok(out)
    }

    /// Every chunk the index knows, with its location.
    pub fn chunk_entries(&self) -> Result<Vec<(ChunkId, ChunkLoc)>> {
        let mut out = Vec::new();
        self.db.for_each_prefix(keys::CHUNK, |k, v| {
            let id = ChunkId(keys::id_of(k).ok_or_else(|| corrupt("chunk key"))?);
            out.push((id, ChunkLoc::decode(v).ok_or_else(|| corrupt("chunk entry"))?));
            Ok(())
        })?;
        Ok(out)
    }

    /// The catalog: every entry, its info encoded as in the manifest footer (the manifest
    /// module decodes it).
    pub fn catalog(&self) -> Result<Vec<(ImageId, Vec<u8>)>> {
        let mut out = Vec::new();
        self.db.for_each_prefix(keys::IMAGE, |k, v| {
            out.push((ImageId(keys::id_of(k).ok_or_else(|| corrupt("catalog key"))?), v.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    /// The usage counters (see `Counters`).
    pub fn counters(&self) -> Counters<'_> {
        Counters { index: self }
    }

    /// The journal of an interrupted operation, if one is recorded.
    pub fn journal(&self) -> Result<Option<Journal>> {
        self.db.get(keys::JOURNAL)?.map(|v| Journal::decode(&v)).transpose()
    }

    /// Records that an operation begins (its own synced write).
    pub fn begin(&self, journal: &Journal) -> Result<()> {
        let mut txn = Txn::new();
        txn.set_journal(journal)?;
        self.commit(txn)
    }
}

impl ChunkLookup for Index {
    fn locate(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkLoc>>> {
        let found = self.db.multi_get(&ids.iter().map(keys::chunk).collect::<Vec<_>>())?;
        found
            .into_iter()
            .zip(ids)
            .map(|(v, id)| match v {
                None => Ok(None),
                Some(v) => ChunkLoc::decode(&v)
                    .map(Some)
                    .ok_or_else(|| Error::Index { reason: format!("entry of chunk {id} does not decode") }),
            })
            .collect()
    }
}
