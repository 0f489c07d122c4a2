//! Who references each chunk: reference counts per chunk and backup set, and the counters derived
//! from them (per set: stored, exclusive and raw bytes; per pack: dead bytes; repository totals).
//! `stats` reads these counters; `prune` starts from the chunks they mark dead.
//!
//! The manifests are the truth and these counters a cache of it. Every operation that changes
//! manifests first records itself in the journal (`"x"`), and applies its counter changes in
//! the same synced batch that clears the journal. A writer that finds the journal set (a crash
//! or an error in between) rebuilds the counters from the manifests.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::extent::Content;
use crate::id::{ChunkId, ImageId, PackId};
use crate::index::{pack_key, Batch, ChunkLoc, ChunkLookup, PackRecord, RocksIndex};
use crate::manifest::{open_manifest, ImageInfo};

/// A backup set is named by the id of its first full.
pub type SetId = ImageId;

const JOURNAL: &[u8] = b"x";
const TOTALS: &[u8] = b"T";

/// Changes of reference counts, per chunk and set.
#[derive(Default, Debug)]
pub struct RefDelta {
    changes: HashMap<ChunkId, Vec<(SetId, i64)>>,
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

    /// Adds (`sign` = 1) or removes (`sign` = -1) the references of every chunk extent of an
    /// image's manifest, as counted under its set.
    pub fn add_manifest(&mut self, backend: &dyn Backend, info: &ImageInfo, sign: i64) -> Result<()> {
        let (_, extents) = open_manifest(backend, &info.id)?;
        for e in extents {
            if let Content::Chunk { id, .. } = e?.content {
                self.add(id, info.set, sign);
            }
        }
        Ok(())
    }
}

/// What a backup set costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetCounters {
    /// Stored (compressed) bytes of the distinct chunks the set references.
    pub stored_bytes: u64,
    /// Of those, the bytes of chunks no other set references: what forgetting the set frees.
    pub exclusive_bytes: u64,
    pub raw_bytes: u64,
    pub chunks: u64,
}

impl SetCounters {
    fn encode(&self) -> Vec<u8> {
        [self.stored_bytes, self.exclusive_bytes, self.raw_bytes, self.chunks]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    fn decode(b: &[u8]) -> Option<SetCounters> {
        let v = le_u64s::<4>(b)?;
        Some(SetCounters { stored_bytes: v[0], exclusive_bytes: v[1], raw_bytes: v[2], chunks: v[3] })
    }
}

/// Chunks that some image references.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub live_chunks: u64,
    pub live_raw: u64,
    pub live_stored: u64,
}

impl Totals {
    fn encode(&self) -> Vec<u8> {
        [self.live_chunks, self.live_raw, self.live_stored].iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn decode(b: &[u8]) -> Option<Totals> {
        let v = le_u64s::<3>(b)?;
        Some(Totals { live_chunks: v[0], live_raw: v[1], live_stored: v[2] })
    }
}

fn le_u64s<const N: usize>(b: &[u8]) -> Option<[u64; N]> {
    if b.len() != N * 8 {
        return None;
    }
    let mut out = [0u64; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().ok()?);
    }
    Some(out)
}

fn owner_key(id: &ChunkId) -> Vec<u8> {
    let mut k = vec![b'o'];
    k.extend_from_slice(&id.0);
    k
}

fn dead_key(id: &ChunkId) -> Vec<u8> {
    let mut k = vec![b'd'];
    k.extend_from_slice(&id.0);
    k
}

fn set_key(id: &SetId) -> Vec<u8> {
    let mut k = vec![b'S'];
    k.extend_from_slice(&id.0);
    k
}

fn decode_owners(b: &[u8]) -> Option<Vec<(SetId, u32)>> {
    if b.len() % 20 != 0 {
        return None;
    }
    b.chunks_exact(20)
        .map(|c| Some((ImageId(c[0..16].try_into().ok()?), u32::from_le_bytes(c[16..20].try_into().ok()?))))
        .collect()
}

fn encode_owners(o: &[(SetId, u32)]) -> Vec<u8> {
    o.iter().flat_map(|(s, n)| s.0.iter().copied().chain(n.to_le_bytes())).collect()
}

fn corrupt(what: &str) -> Error {
    Error::Index { reason: format!("{what} does not decode; run the next writer to rebuild the counters") }
}

/// An operation in progress that changes manifests. Stored under `"x"` while it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub op: String,
    /// Images being forgotten: recovery finishes forgetting those still there.
    pub forget: Vec<ImageId>,
    #[serde(default)]
    pub rebase: bool,
    /// forget: "rewrite" while kept images are rewritten (recovery undoes the forget), "delete"
    /// once the forgotten images left the catalog (recovery deletes the listed manifests).
    #[serde(default)]
    pub phase: String,
}

pub fn begin(index: &RocksIndex, journal: &Journal) -> Result<()> {
    let mut b = Batch::default();
    put_journal(&mut b, journal)?;
    index.write(b)
}

/// Adds (or replaces) the journal in a batch.
pub fn put_journal(batch: &mut Batch, journal: &Journal) -> Result<()> {
    let encoded =
        serde_json::to_vec(journal).map_err(|e| Error::Internal { reason: format!("journal does not encode: {e}") })?;
    batch.put(JOURNAL, encoded);
    Ok(())
}

/// The journal of an interrupted operation. One that does not decode is an error, never an
/// empty journal: it may list images that an interrupted forget was removing.
pub fn pending(index: &RocksIndex) -> Result<Option<Journal>> {
    let Some(v) = index.get(JOURNAL)? else { return Ok(None) };
    serde_json::from_slice(&v).map(Some).map_err(|e| Error::Index {
        reason: format!(
            "the journal of an interrupted operation does not decode ({e}); images that an interrupted \
             forget was removing may reappear after a rebuild: forget them again"
        ),
    })
}

/// Adds the clearing of the journal to a batch: the operation is complete when it commits.
pub fn finish(batch: &mut Batch) {
    batch.delete(JOURNAL);
}

/// Reads counters once, changes them in memory, writes them into the batch.
struct Counters<'a> {
    index: &'a RocksIndex,
    sets: HashMap<SetId, SetCounters>,
    packs: HashMap<PackId, PackRecord>,
    totals: Totals,
}

impl<'a> Counters<'a> {
    fn load(index: &'a RocksIndex) -> Result<Self> {
        let totals = match index.get(TOTALS)? {
            Some(v) => Totals::decode(&v).ok_or_else(|| corrupt("totals"))?,
            None => Totals::default(),
        };
        Ok(Counters { index, sets: HashMap::new(), packs: HashMap::new(), totals })
    }

    fn set(&mut self, id: SetId) -> Result<&mut SetCounters> {
        if !self.sets.contains_key(&id) {
            let c = match self.index.get(&set_key(&id))? {
                Some(v) => SetCounters::decode(&v).ok_or_else(|| corrupt("set counters"))?,
                None => SetCounters::default(),
            };
            self.sets.insert(id, c);
        }
        self.sets.get_mut(&id).ok_or_else(|| corrupt("set counters"))
    }

    fn pack(&mut self, id: PackId) -> Result<&mut PackRecord> {
        if !self.packs.contains_key(&id) {
            let c = match self.index.get(&pack_key(&id))? {
                Some(v) => PackRecord::decode(&v).ok_or_else(|| corrupt("pack record"))?,
                None => {
                    return Err(Error::Index {
                        reason: format!("pack {id} holds a referenced chunk but is not indexed"),
                    })
                }
            };
            self.packs.insert(id, c);
        }
        self.packs.get_mut(&id).ok_or_else(|| corrupt("pack record"))
    }

    /// Moves one chunk from `old` owners to `new` owners, updating every derived counter.
    fn change(&mut self, loc: &ChunkLoc, old: &[(SetId, u32)], new: &[(SetId, u32)], was_dead: bool) -> Result<()> {
        let (stored, raw) = (loc.charged(), loc.raw_len as u64);
        for (s, _) in old.iter().filter(|(s, _)| !new.iter().any(|(n, _)| n == s)) {
            let c = self.set(*s)?;
            c.stored_bytes -= stored.min(c.stored_bytes);
            c.raw_bytes -= raw.min(c.raw_bytes);
            c.chunks = c.chunks.saturating_sub(1);
        }
        for (s, _) in new.iter().filter(|(s, _)| !old.iter().any(|(o, _)| o == s)) {
            let c = self.set(*s)?;
            c.stored_bytes += stored;
            c.raw_bytes += raw;
            c.chunks += 1;
        }
        let sole = |o: &[(SetId, u32)]| if o.len() == 1 { Some(o[0].0) } else { None };
        if sole(old) != sole(new) {
            if let Some(s) = sole(old) {
                let c = self.set(s)?;
                c.exclusive_bytes -= stored.min(c.exclusive_bytes);
            }
            if let Some(s) = sole(new) {
                self.set(s)?.exclusive_bytes += stored;
            }
        }
        let t = &mut self.totals;
        if old.is_empty() && !new.is_empty() {
            t.live_chunks += 1;
            t.live_raw += raw;
            t.live_stored += stored;
            if was_dead {
                let p = self.pack(loc.pack)?;
                p.dead_bytes -= stored.min(p.dead_bytes);
                p.dead_chunks = p.dead_chunks.saturating_sub(1);
            }
        } else if !old.is_empty() && new.is_empty() {
            t.live_chunks = t.live_chunks.saturating_sub(1);
            t.live_raw -= raw.min(t.live_raw);
            t.live_stored -= stored.min(t.live_stored);
            let p = self.pack(loc.pack)?;
            p.dead_bytes += stored;
            p.dead_chunks += 1;
        }
        Ok(())
    }

    fn write_into(self, batch: &mut Batch) {
        for (id, c) in &self.sets {
            if *c == SetCounters::default() {
                batch.delete(set_key(id));
            } else {
                batch.put(set_key(id), c.encode());
            }
        }
        for (id, p) in &self.packs {
            batch.put(pack_key(id), p.encode());
        }
        batch.put(TOTALS, self.totals.encode());
    }
}

/// Charges chunks that moved into new frames (prune re-framing them, or a backup storing again
/// a chunk whose pack was lost) at their new share of stored bytes: `moves` lists (chunk, old
/// charge, new charge). Adds the counter changes to `batch`, for the caller to commit (prune: with
/// the chunks' new locations).
pub fn recharge(index: &RocksIndex, moves: &[(ChunkId, u64, u64)], batch: &mut Batch) -> Result<()> {
    let moves: Vec<&(ChunkId, u64, u64)> = moves.iter().filter(|(_, old, new)| old != new).collect();
    if moves.is_empty() {
        return Ok(());
    }
    let owners = index.multi_get(&moves.iter().map(|(id, _, _)| owner_key(id)).collect::<Vec<_>>())?;
    let mut counters = Counters::load(index)?;
    let shift = |v: u64, old: u64, new: u64| (v + new).saturating_sub(old);
    for (&&(_, old, new), o) in moves.iter().zip(owners) {
        let owners = match o {
            Some(b) => decode_owners(&b).ok_or_else(|| corrupt("chunk owners"))?,
            None => continue, // not referenced: charged nowhere
        };
        for (s, _) in &owners {
            let c = counters.set(*s)?;
            c.stored_bytes = shift(c.stored_bytes, old, new);
        }
        if let [(sole, _)] = owners.as_slice() {
            let c = counters.set(*sole)?;
            c.exclusive_bytes = shift(c.exclusive_bytes, old, new);
        }
        if !owners.is_empty() {
            counters.totals.live_stored = shift(counters.totals.live_stored, old, new);
        }
    }
    counters.write_into(batch);
    Ok(())
}

/// Applies `delta` to the owner records and counters, adding everything to `batch`, and commits
/// it in one synced write.
pub fn apply(index: &RocksIndex, delta: RefDelta, mut batch: Batch) -> Result<()> {
    let chunks: Vec<ChunkId> = delta.changes.keys().copied().collect();
    let locs = index.locate(&chunks)?;
    let owners = index.multi_get(&chunks.iter().map(owner_key).collect::<Vec<_>>())?;
    let deads = index.multi_get(&chunks.iter().map(dead_key).collect::<Vec<_>>())?;
    let mut counters = Counters::load(index)?;
    for (i, id) in chunks.iter().enumerate() {
        let loc =
            locs[i].ok_or_else(|| Error::Index { reason: format!("referenced chunk {id} is not in the index") })?;
        let old = match &owners[i] {
            Some(v) => decode_owners(v).ok_or_else(|| corrupt("owner record"))?,
            None => Vec::new(),
        };
        let mut new = old.clone();
        for (set, n) in &delta.changes[id] {
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
                    return Err(Error::Index { reason: format!("chunk {id} loses a reference it never had") });
                }
                None => {}
            }
        }
        new.retain(|(_, c)| *c > 0);
        counters.change(&loc, &old, &new, deads[i].is_some())?;
        if new.is_empty() {
            batch.delete(owner_key(id));
            batch.put(dead_key(id), []);
        } else {
            batch.put(owner_key(id), encode_owners(&new));
            batch.delete(dead_key(id));
        }
    }
    counters.write_into(&mut batch);
    index.write(batch)
}

/// Recomputes every owner record and counter from the manifests of `images` and the chunk
/// entries of the index, then clears the journal. Chunks no image references become dead.
pub fn rebuild(index: &RocksIndex, backend: &dyn Backend, images: &[ImageInfo]) -> Result<()> {
    let mut refs: HashMap<ChunkId, Vec<(SetId, u32)>> = HashMap::new();
    for info in images {
        let mut delta = RefDelta::default();
        delta.add_manifest(backend, info, 1)?;
        for (chunk, sets) in delta.changes {
            let v = refs.entry(chunk).or_default();
            for (set, n) in sets {
                match v.iter_mut().find(|(s, _)| *s == set) {
                    Some((_, c)) => *c += n as u32,
                    None => v.push((set, n as u32)),
                }
            }
        }
    }
    for prefix in [&b"o"[..], b"d", b"S", TOTALS] {
        index.delete_prefix(prefix)?;
    }
    // Pack records keep size and chunk count; dead counters are recomputed.
    let packs: HashMap<PackId, PackRecord> =
        packs(index)?.into_iter().map(|(id, r)| (id, PackRecord { dead_bytes: 0, dead_chunks: 0, ..r })).collect();
    let mut counters = Counters { index, sets: HashMap::new(), packs, totals: Totals::default() };
    let mut batch = Batch::default();
    let mut pending = 0;
    let mut entries = Vec::new();
    index.for_each_prefix(b"c", |k, v| {
        let id = ChunkId(k[1..].try_into().map_err(|_| corrupt("chunk key"))?);
        entries.push((id, ChunkLoc::decode(v).ok_or_else(|| corrupt("chunk entry"))?));
        Ok(())
    })?;
    for (id, loc) in entries {
        let owners = refs.remove(&id).unwrap_or_default();
        if !counters.packs.contains_key(&loc.pack) {
            continue; // a chunk entry of a pack the index does not know: check reports it
        }
        counters.change(&loc, &[], &owners, false)?;
        if owners.is_empty() {
            // counted as live by `change` only when it has owners; mark dead for prune
            let p = counters.pack(loc.pack)?;
            p.dead_bytes += loc.charged();
            p.dead_chunks += 1;
            batch.put(dead_key(&id), []);
        } else {
            batch.put(owner_key(&id), encode_owners(&owners));
        }
        pending += 1;
        if pending >= 50_000 {
            index.write(std::mem::take(&mut batch))?;
            pending = 0;
        }
    }
    counters.write_into(&mut batch);
    finish(&mut batch);
    index.write(batch)
}

/// Stored bytes of the chunks that `delta` would leave without any reference (a dry run).
pub fn unreferenced_after(index: &RocksIndex, delta: &RefDelta) -> Result<u64> {
    let chunks: Vec<ChunkId> = delta.changes.keys().copied().collect();
    let locs = index.locate(&chunks)?;
    let owners = index.multi_get(&chunks.iter().map(owner_key).collect::<Vec<_>>())?;
    let mut freed = 0;
    for (i, id) in chunks.iter().enumerate() {
        let before: i64 = match &owners[i] {
            Some(v) => decode_owners(v).ok_or_else(|| corrupt("owner record"))?.iter().map(|(_, n)| *n as i64).sum(),
            None => 0,
        };
        let after = before + delta.changes[id].iter().map(|(_, n)| n).sum::<i64>();
        if before > 0 && after <= 0 {
            freed += locs[i].map_or(0, |l| l.charged());
        }
    }
    Ok(freed)
}

/// The counters of one set (zero for a set the index does not know).
pub fn set_counters(index: &RocksIndex, set: &SetId) -> Result<SetCounters> {
    match index.get(&set_key(set))? {
        Some(v) => SetCounters::decode(&v).ok_or_else(|| corrupt("set counters")),
        None => Ok(SetCounters::default()),
    }
}

pub fn totals(index: &RocksIndex) -> Result<Totals> {
    match index.get(TOTALS)? {
        Some(v) => Totals::decode(&v).ok_or_else(|| corrupt("totals")),
        None => Ok(Totals::default()),
    }
}

/// Every pack the index knows, with its record.
pub fn packs(index: &RocksIndex) -> Result<Vec<(PackId, PackRecord)>> {
    let mut out = Vec::new();
    index.for_each_prefix(b"p", |k, v| {
        let id = PackId(k[1..].try_into().map_err(|_| corrupt("pack key"))?);
        out.push((id, PackRecord::decode(v).ok_or_else(|| corrupt("pack record"))?));
        Ok(())
    })?;
    Ok(out)
}

/// Chunks that no image references.
pub fn dead_chunks(index: &RocksIndex) -> Result<Vec<ChunkId>> {
    let mut out = Vec::new();
    index.for_each_prefix(b"d", |k, _| {
        out.push(ChunkId(k[1..].try_into().map_err(|_| corrupt("dead key"))?));
        Ok(())
    })?;
    Ok(out)
}

/// Owners of a chunk (sets and counts); empty for a dead or unknown chunk.
pub fn owners(index: &RocksIndex, id: &ChunkId) -> Result<Vec<(SetId, u32)>> {
    match index.get(&owner_key(id))? {
        Some(v) => decode_owners(&v).ok_or_else(|| corrupt("owner record")),
        None => Ok(Vec::new()),
    }
}

/// Removes the dead marker of a chunk (prune, when the chunk itself goes).
pub fn forget_dead(batch: &mut Batch, id: &ChunkId) {
    batch.delete(dead_key(id));
}
