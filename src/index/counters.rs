//! The usage counters as stored: owner records, dead markers, set counters and totals. The
//! manifests are the truth and these a cache of it: every change comes with the synced batch
//! that clears the journal, and a writer that finds the journal set rebuilds them (`rebuild`).

use std::collections::{HashMap, HashSet};

use super::records::{decode_owners, ChunkLoc, Owners, PackRecord, SetCounters, SetId, Totals};
use super::usage::{owners_after, RefDelta, Usage};
use super::{keys, ChunkLookup, Index, Txn};
use crate::error::Result;
use crate::id::{ChunkId, PackId};

/// The counters of an index (see `Index::counters`).
pub struct Counters<'a> {
    pub(super) index: &'a Index,
}

impl Counters<'_> {
    /// The counters of one set (zero for a set the index does not know).
    pub fn set(&self, set: &SetId) -> Result<SetCounters> {
        match self.index.db.get(&keys::set(set))? {
            Some(v) => SetCounters::decode(&v),
            None => Ok(SetCounters::default()),
        }
    }

    pub(crate) fn totals(&self) -> Result<Totals> {
        match self.index.db.get(keys::TOTALS)? {
            Some(v) => Totals::decode(&v),
            None => Ok(Totals::default()),
        }
    }

    /// Owners of a chunk (sets and counts); empty for a dead or unknown chunk.
    pub fn owners(&self, id: &ChunkId) -> Result<Owners> {
        Ok(self.owners_of(std::slice::from_ref(id))?.pop().unwrap_or_default())
    }

    fn owners_of(&self, ids: &[ChunkId]) -> Result<Vec<Owners>> {
        let raw = self.index.db.multi_get(&ids.iter().map(keys::owners).collect::<Vec<_>>())?;
        raw.into_iter().map(|v| v.map_or(Ok(Vec::new()), |b| decode_owners(&b))).collect()
    }

    /// The stored counters that `sets` and `packs` name, for changing them in memory.
    fn load(&self, sets: impl IntoIterator<Item = SetId>, packs: impl IntoIterator<Item = PackId>) -> Result<Usage> {
        let mut usage = Usage { totals: self.totals()?, ..Default::default() };
        for s in sets.into_iter().collect::<HashSet<_>>() {
            usage.sets.insert(s, self.set(&s)?);
        }
        let packs: Vec<PackId> = packs.into_iter().collect::<HashSet<_>>().into_iter().collect();
        let records = self.index.db.multi_get(&packs.iter().map(keys::pack).collect::<Vec<_>>())?;
        for (id, rec) in packs.into_iter().zip(records) {
            if let Some(r) = rec.as_deref().and_then(PackRecord::decode) {
                usage.packs.insert(id, r);
            }
        }
        Ok(usage)
    }

    fn store(usage: &Usage, txn: &mut Txn) {
        for (id, c) in &usage.sets {
            txn.put_set(id, c);
        }
        for (id, p) in &usage.packs {
            txn.put_pack(id, p);
        }
        txn.put_totals(&usage.totals);
    }

    /// Applies `delta` to the owner records and counters, adding everything to `txn`, and
    /// commits it in one synced write.
    pub fn apply(&self, delta: RefDelta, mut txn: Txn) -> Result<()> {
        let mut chunks: Vec<ChunkId> = delta.changes.keys().copied().collect();
        // In key order, so that the three lookups below go through the index in order. The
        // batch written at the end is put in key order by `rocks::Db::commit` itself, for every
        // batch (which is where sorting here first paid: a full's end waited 0.6-0.7 s on its
        // last batch, 0.3-0.5 s sorted and with the memtable's bloom filter).
        chunks.sort_unstable();
        let locs = self.index.locate(&chunks)?;
        let owners = self.owners_of(&chunks)?;
        let deads = self.index.db.multi_get(&chunks.iter().map(keys::dead).collect::<Vec<_>>())?;
        let mut changes = Vec::with_capacity(chunks.len());
        for (i, id) in chunks.iter().enumerate() {
            let loc = locs[i].ok_or_else(|| crate::error::Error::Index {
                reason: format!("referenced chunk {id} is not in the index"),
            })?;
            changes.push((loc, owners_after(id, &owners[i], &delta.changes[id])?));
        }
        // Only a chunk that becomes dead, or comes back from the dead, changes its pack's record.
        let flips = |i: usize, new: &Owners| {
            (owners[i].is_empty() && !new.is_empty() && deads[i].is_some()) || (!owners[i].is_empty() && new.is_empty())
        };
        let packs = changes.iter().enumerate().filter(|(i, (_, new))| flips(*i, new)).map(|(_, (l, _))| l.pack);
        let sets = owners.iter().flatten().map(|(s, _)| *s).chain(delta.changes.values().flatten().map(|(s, _)| *s));
        let mut usage = self.load(sets.collect::<Vec<_>>(), packs.collect::<Vec<_>>())?;
        for (i, (id, (loc, new))) in chunks.iter().zip(changes).enumerate() {
            usage.change(&loc, &owners[i], &new, deads[i].is_some())?;
            if new.is_empty() {
                txn.mark_dead(id);
            } else {
                txn.put_owners(id, &new, deads[i].is_some());
            }
        }
        Self::store(&usage, &mut txn);
        self.index.commit(txn)
    }

    /// Charges chunks that moved into new frames (prune re-framing them, or a backup storing
    /// again a chunk whose pack was lost) at their new share of stored bytes: `moves` lists
    /// (chunk, old charge, new charge). Adds the changes to `txn`, for the caller to commit.
    pub(crate) fn recharge(&self, moves: &[(ChunkId, u64, u64)], txn: &mut Txn) -> Result<()> {
        let moves: Vec<&(ChunkId, u64, u64)> = moves.iter().filter(|(_, old, new)| old != new).collect();
        if moves.is_empty() {
            return Ok(());
        }
        let owners = self.owners_of(&moves.iter().map(|(id, _, _)| *id).collect::<Vec<_>>())?;
        let mut usage = self.load(owners.iter().flatten().map(|(s, _)| *s).collect::<Vec<_>>(), [])?;
        for (&&(_, old, new), o) in moves.iter().zip(&owners) {
            usage.recharge(o, old, new);
        }
        usage.packs.clear(); // pack records are the caller's (prune writes new ones)
        Self::store(&usage, txn);
        Ok(())
    }

    /// Recomputes every owner record and counter from `refs` (the owners of each chunk, as the
    /// manifests say) and the chunk entries of the index, then clears the journal. Chunks no
    /// image references become dead.
    pub fn rebuild(&self, mut refs: HashMap<ChunkId, Owners>) -> Result<()> {
        let db = &self.index.db;
        let mut clear = Txn::new();
        for prefix in [keys::OWNERS, keys::DEAD, keys::SET, keys::TOTALS] {
            db.for_each_prefix(prefix, |k, _| {
                clear.batch.delete(k);
                Ok(())
            })?;
        }
        self.index.commit(clear)?;
        // Pack records keep size and chunk count; dead counters are recomputed.
        let packs =
            self.index.packs()?.into_iter().map(|(id, r)| (id, PackRecord { dead_bytes: 0, dead_chunks: 0, ..r }));
        let mut usage = Usage { packs: packs.collect(), ..Default::default() };
        let mut txn = Txn::new();
        let mut pending = 0;
        for (id, loc) in self.index.chunk_entries()? {
            if !usage.packs.contains_key(&loc.pack) {
                continue; // a chunk entry of a pack the index does not know: check reports it
            }
            let owners = refs.remove(&id).unwrap_or_default();
            if owners.is_empty() {
                usage.became_dead(&loc)?;
                txn.mark_dead(&id);
            } else {
                usage.change(&loc, &[], &owners, false)?;
                txn.put_owners(&id, &owners, false); // every dead marker was cleared above
            }
            pending += 1;
            if pending >= 50_000 {
                self.index.commit(std::mem::take(&mut txn))?;
                pending = 0;
            }
        }
        Self::store(&usage, &mut txn);
        txn.clear_journal();
        self.index.commit(txn)
    }

    /// Stored bytes of the chunks that `delta` would leave without any reference (a dry run).
    pub(crate) fn unreferenced_after(&self, delta: &RefDelta) -> Result<u64> {
        let chunks: Vec<ChunkId> = delta.changes.keys().copied().collect();
        let locs: Vec<Option<ChunkLoc>> = self.index.locate(&chunks)?;
        let owners = self.owners_of(&chunks)?;
        let mut freed = 0;
        for (i, id) in chunks.iter().enumerate() {
            let before: i64 = owners[i].iter().map(|(_, n)| *n as i64).sum();
            let after = before + delta.changes[id].iter().map(|(_, n)| n).sum::<i64>();
            if before > 0 && after <= 0 {
                freed += locs[i].map_or(0, |l| l.charged());
            }
        }
        Ok(freed)
    }

    /// Chunks that no image references.
    pub fn dead_chunks(&self) -> Result<Vec<ChunkId>> {
        let mut out = Vec::new();
        self.index.db.for_each_prefix(keys::DEAD, |k, _| {
            out.push(ChunkId(keys::id_of(k).ok_or_else(|| super::records::corrupt("dead key"))?));
            Ok(())
        })?;
        Ok(out)
    }
}
