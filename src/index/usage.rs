//! Who references each chunk, as arithmetic: reference-count changes per chunk and set, and what
//! they do to the counters derived from them (per set: stored, exclusive and raw bytes; per
//! pack: dead bytes; repository totals). Pure: no storage here; `counters` loads and stores.

use std::collections::HashMap;

use super::records::{ChunkLoc, Owners, PackRecord, SetCounters, SetId, Totals};
use crate::error::{Error, Result};
use crate::id::{ChunkId, PackId};

/// Changes of reference counts, per chunk and set.
#[derive(Default, Debug)]
pub struct RefDelta {
    pub(super) changes: HashMap<ChunkId, Vec<(SetId, i64)>>,
}

impl RefDelta {
    pub fn add(&mut self, chunk: ChunkId, set: SetId, n: i64) {
        let v = self.changes.entry(chunk).or_default();
        match v.iter_mut().find(|(s, _)| *s == set) {
            Some((_, c)) => *c += n,
            None => v.push((set, n)),
        }
    }

    pub fn len(&self) -> usize {
        self.changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Moves the changes of the chunks `ready` accepts into a delta of their own, when there are
    /// at least `min` of them (counted first, so that too few leave the map untouched).
    pub fn take_ready(&mut self, min: usize, ready: impl Fn(&ChunkId) -> bool) -> Option<RefDelta> {
        if self.changes.keys().filter(|id| ready(id)).count() < min {
            return None;
        }
        let (now, later) = std::mem::take(&mut self.changes).into_iter().partition(|(id, _)| ready(id));
        self.changes = later;
        Some(RefDelta { changes: now })
    }

    /// The owners of every chunk as this delta, applied to no owners, gives them.
    pub(crate) fn into_owners(self) -> HashMap<ChunkId, Owners> {
        self.changes
            .into_iter()
            .map(|(id, sets)| (id, sets.into_iter().filter(|(_, n)| *n > 0).map(|(s, n)| (s, n as u32)).collect()))
            .collect()
    }
}

/// `old` owners after `changes`; a count that would fall below zero is an index error.
pub(super) fn owners_after(id: &ChunkId, old: &[(SetId, u32)], changes: &[(SetId, i64)]) -> Result<Owners> {
    let mut new = old.to_vec();
    for (set, n) in changes {
        match new.iter_mut().position(|(s, _)| s == set) {
            Some(p) => {
                let c = new[p].1 as i64 + n;
                if c < 0 {
                    return Err(Error::Index {
                        reason: format!("reference count of chunk {id} would fall below zero"),
                    });
                }
                new[p].1 = c as u32;
            }
            None if *n > 0 => new.push((*set, *n as u32)),
            None if *n < 0 => {
                return Err(Error::Index { reason: format!("chunk {id} loses a reference it never had") })
            }
            None => {}
        }
    }
    new.retain(|(_, c)| *c > 0);
    Ok(new)
}

/// The counters an operation changes, in memory: loaded before, stored after.
#[derive(Debug, Default)]
pub(super) struct Usage {
    pub sets: HashMap<SetId, SetCounters>,
    pub packs: HashMap<PackId, PackRecord>,
    pub totals: Totals,
}

impl Usage {
    fn set(&mut self, id: SetId) -> &mut SetCounters {
        self.sets.entry(id).or_default()
    }

    fn pack(&mut self, id: PackId) -> Result<&mut PackRecord> {
        self.packs
            .get_mut(&id)
            .ok_or_else(|| Error::Index { reason: format!("pack {id} holds a referenced chunk but is not indexed") })
    }

    /// Moves one chunk from `old` owners to `new` owners, updating every derived counter.
    pub fn change(&mut self, loc: &ChunkLoc, old: &[(SetId, u32)], new: &[(SetId, u32)], was_dead: bool) -> Result<()> {
        let (stored, raw) = (loc.charged(), loc.slot.raw_len as u64);
        for (s, _) in old.iter().filter(|(s, _)| !new.iter().any(|(n, _)| n == s)) {
            let c = self.set(*s);
            c.stored_bytes -= stored.min(c.stored_bytes);
            c.raw_bytes -= raw.min(c.raw_bytes);
            c.chunks = c.chunks.saturating_sub(1);
        }
        for (s, _) in new.iter().filter(|(s, _)| !old.iter().any(|(o, _)| o == s)) {
            let c = self.set(*s);
            c.stored_bytes += stored;
            c.raw_bytes += raw;
            c.chunks += 1;
        }
        let sole = |o: &[(SetId, u32)]| if o.len() == 1 { Some(o[0].0) } else { None };
        if sole(old) != sole(new) {
            if let Some(s) = sole(old) {
                let c = self.set(s);
                c.exclusive_bytes -= stored.min(c.exclusive_bytes);
            }
            if let Some(s) = sole(new) {
                self.set(s).exclusive_bytes += stored;
            }
        }
        if old.is_empty() && !new.is_empty() {
            let t = &mut self.totals;
            t.live_chunks += 1;
            t.live_raw += raw;
            t.live_stored += stored;
            if was_dead {
                let p = self.pack(loc.pack)?;
                p.dead_bytes -= stored.min(p.dead_bytes);
                p.dead_chunks = p.dead_chunks.saturating_sub(1);
            }
        } else if !old.is_empty() && new.is_empty() {
            let t = &mut self.totals;
            t.live_chunks = t.live_chunks.saturating_sub(1);
            t.live_raw -= raw.min(t.live_raw);
            t.live_stored -= stored.min(t.live_stored);
            self.became_dead(loc)?;
        }
        Ok(())
    }

    /// A chunk that no image references counts against its pack.
    pub(crate) fn became_dead(&mut self, loc: &ChunkLoc) -> Result<()> {
        let p = self.pack(loc.pack)?;
        p.dead_bytes += loc.charged();
        p.dead_chunks += 1;
        Ok(())
    }

    /// A chunk owned by `owners` moved into a new frame: its owners are charged `new` stored
    /// bytes instead of `old`.
    pub(crate) fn recharge(&mut self, owners: &[(SetId, u32)], old: u64, new: u64) {
        let shift = |v: u64| (v + new).saturating_sub(old);
        for (s, _) in owners {
            let c = self.set(*s);
            c.stored_bytes = shift(c.stored_bytes);
        }
        if let [(sole, _)] = owners {
            let c = self.set(*sole);
            c.exclusive_bytes = shift(c.exclusive_bytes);
        }
        if !owners.is_empty() {
            self.totals.live_stored = shift(self.totals.live_stored);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ImageId;
    use crate::pack::{Codec, Slot};

    fn loc(stored: u32, raw: u32) -> ChunkLoc {
        let slot = Slot { offset: 12, stored_len: stored, raw_len: raw, codec: Codec::Zstd, skip: 0, frame_raw: raw };
        ChunkLoc { pack: PackId([7; 32]), slot }
    }

    fn usage() -> Usage {
        let mut u = Usage::default();
        u.packs.insert(PackId([7; 32]), PackRecord { size: 100, chunks: 2, dead_bytes: 0, dead_chunks: 0 });
        u
    }

    #[test]
    fn a_chunk_shared_by_two_sets_is_exclusive_to_neither_and_counted_once_in_totals() {
        let (a, b) = (ImageId([1; 16]), ImageId([2; 16]));
        let mut u = usage();
        u.change(&loc(40, 100), &[], &[(a, 1)], false).unwrap();
        assert_eq!((u.sets[&a].stored_bytes, u.sets[&a].exclusive_bytes), (40, 40));
        u.change(&loc(40, 100), &[(a, 1)], &[(a, 1), (b, 2)], false).unwrap();
        assert_eq!((u.sets[&a].exclusive_bytes, u.sets[&b].exclusive_bytes), (0, 0));
        assert_eq!((u.sets[&b].stored_bytes, u.totals.live_chunks, u.totals.live_stored), (40, 1, 40));
    }

    #[test]
    fn the_last_reference_gone_makes_the_chunk_dead_in_its_pack_and_back() {
        let a = ImageId([1; 16]);
        let mut u = usage();
        u.change(&loc(40, 100), &[], &[(a, 1)], false).unwrap();
        u.change(&loc(40, 100), &[(a, 1)], &[], false).unwrap();
        assert_eq!(u.sets[&a], SetCounters::default());
        assert_eq!((u.totals, u.packs[&PackId([7; 32])].dead_bytes), (Totals::default(), 40));
        u.change(&loc(40, 100), &[], &[(a, 1)], true).unwrap();
        assert_eq!(u.packs[&PackId([7; 32])].dead_chunks, 0);
    }

    #[test]
    fn counts_never_fall_below_zero() {
        let id = ChunkId([3; 32]);
        let a = ImageId([1; 16]);
        assert!(owners_after(&id, &[(a, 1)], &[(a, -2)]).is_err());
        assert!(owners_after(&id, &[], &[(a, -1)]).is_err());
        assert_eq!(owners_after(&id, &[(a, 1)], &[(a, -1)]).unwrap(), vec![]);
    }
}
