//! One transaction type for every change to the index: typed puts and deletes gathered in a
//! batch that `Index::commit` writes atomically and durably.

use super::journal::Journal;
use super::keys;
use super::records::{encode_owners, ChunkLoc, PackRecord, SetCounters, SetId, Totals};
use crate::error::Result;
use crate::id::{ChunkId, ImageId, PackId};
use crate::pack::PackEntry;

#[derive(Default)]
pub struct Txn {
    pub(super) batch: Batch,
    /// Written without waiting for the disk (see `Txn::provisional`).
    pub(super) provisional: bool,
}

/// Puts and deletes in order (values sealed, in an encrypted repository, when committed).
#[derive(Default)]
pub(super) struct Batch(pub(super) Vec<(Vec<u8>, Option<Vec<u8>>)>);

impl Batch {
    pub(super) fn put(&mut self, key: impl Into<Vec<u8>>, value: impl AsRef<[u8]>) {
        self.0.push((key.into(), Some(value.as_ref().to_vec())));
    }

    pub(super) fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.0.push((key.into(), None));
    }
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }

    /// A transaction whose loss a crash repairs anyway: the changes of a run whose journal is
    /// set (a crash rebuilds them from the manifests), written to the index's log without
    /// syncing it. Still atomic; a later synced commit makes it durable with itself. Such a
    /// write is not one of the run's durable steps, so how many of them a run makes (a backup
    /// applies ready references as the pack writer acknowledges packs: a matter of timing) does
    /// not change where a crash test's kill lands.
    pub fn provisional() -> Txn {
        Txn { provisional: true, ..Txn::default() }
    }

    pub(crate) fn put_chunk(&mut self, id: &ChunkId, loc: &ChunkLoc) {
        self.batch.put(keys::chunk(id), loc.encode());
    }

    /// Removes a chunk (its location and its dead marker): prune, when the chunk itself goes.
    pub(crate) fn remove_chunk(&mut self, id: &ChunkId) {
        self.batch.delete(keys::chunk(id));
        self.batch.delete(keys::dead(id));
    }

    pub(crate) fn put_pack(&mut self, id: &PackId, record: &PackRecord) {
        self.batch.put(keys::pack(id), record.encode());
    }

    /// Records a pack and every chunk its trailer lists.
    pub fn add_pack(&mut self, pack: PackId, size: u64, entries: &[PackEntry]) {
        for e in entries {
            self.put_chunk(&e.id, &ChunkLoc::of(pack, e));
        }
        let record = PackRecord { size, chunks: entries.len() as u32, dead_bytes: 0, dead_chunks: 0 };
        self.put_pack(&pack, &record);
    }

    pub(crate) fn remove_pack(&mut self, id: &PackId) {
        self.batch.delete(keys::pack(id));
    }

    /// A catalog entry: the image's info, encoded as in its manifest's footer.
    pub(crate) fn put_image(&mut self, id: &ImageId, encoded_info: &[u8]) {
        self.batch.put(keys::image(id), encoded_info);
    }

    pub(crate) fn remove_image(&mut self, id: &ImageId) {
        self.batch.delete(keys::image(id));
    }

    /// Records (or replaces) the journal of the operation in progress.
    pub(crate) fn set_journal(&mut self, journal: &Journal) -> Result<()> {
        self.batch.put(keys::JOURNAL, journal.encode()?);
        Ok(())
    }

    /// The operation is complete when this commits.
    pub(crate) fn clear_journal(&mut self) {
        self.batch.delete(keys::JOURNAL);
    }

    /// Marks a new index complete (init, and the last batch of rebuild-index).
    pub(crate) fn mark_complete(&mut self) {
        self.batch.put(keys::COMPLETE, []);
    }

    pub(crate) fn set_generation(&mut self, generation: u64) {
        self.batch.put(keys::GENERATION, generation.to_le_bytes());
    }

    pub(super) fn set_version(&mut self) {
        self.batch.put(keys::VERSION, keys::INDEX_VERSION.to_le_bytes());
    }

    /// The chunk's owners; `was_dead`: it carries a dead marker, which goes (deleting a marker
    /// that is not there would cost a record in the memtable per chunk: a full's end waited on
    /// them).
    pub(super) fn put_owners(&mut self, id: &ChunkId, owners: &[(SetId, u32)], was_dead: bool) {
        self.batch.put(keys::owners(id), encode_owners(owners));
        if was_dead {
            self.batch.delete(keys::dead(id));
        }
    }

    /// The chunk has no owner left: prune's candidate.
    pub(super) fn mark_dead(&mut self, id: &ChunkId) {
        self.batch.delete(keys::owners(id));
        self.batch.put(keys::dead(id), []);
    }

    pub(super) fn put_set(&mut self, id: &SetId, c: &SetCounters) {
        if *c == SetCounters::default() {
            self.batch.delete(keys::set(id));
        } else {
            self.batch.put(keys::set(id), c.encode());
        }
    }

    pub(super) fn put_totals(&mut self, t: &Totals) {
        self.batch.put(keys::TOTALS, t.encode());
    }

    /// Marks a chunk unused although images may name it, and nothing else: for tests that
    /// damage an index on purpose (never used by Strata itself).
    #[doc(hidden)]
    pub fn damage_mark_dead(&mut self, id: &ChunkId) {
        self.mark_dead(id);
    }

    /// Forgets where a chunk is, and nothing else: for tests that damage an index on purpose.
    #[doc(hidden)]
    pub fn damage_forget_chunk(&mut self, id: &ChunkId) {
        self.batch.delete(keys::chunk(id));
    }

    /// Writes raw bytes as the journal: for tests that damage an index on purpose.
    #[doc(hidden)]
    pub fn damage_journal(&mut self, raw: &[u8]) {
        self.batch.put(keys::JOURNAL, raw);
    }
}
