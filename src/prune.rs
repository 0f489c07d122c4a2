//! Reclaiming space: delete chunks no image references, delete packs with no live chunk, repack
//! packs whose dead fraction is above a threshold. A plan first, then the execution.
//!
//! Proof before deletion. The index says which chunks are dead (the `"d"` markers that `forget`
//! leaves) and which pack files it does not know (orphans of interrupted runs); but an index can
//! be wrong (a damaged log, an older copy put back), so the plan does not trust it with a
//! deletion: it streams every manifest in `images/` and checks every chunk that the plan would
//! drop. A dead-marked chunk that a manifest names, or a referenced chunk that the index does not
//! know, stops prune (run `rebuild-index`); a manifest that cannot be read stops it too. An
//! orphan pack goes only when each of its chunks that an image names has another copy, in a pack
//! that stays, whose trailer lists it where the index says. Cost: the dead markers, the pack
//! records, one listing of `packs/`, the trailers of orphans, and one read of every manifest
//! (small next to packs); no live pack is read except the packs being repacked.
//!
//! Order: orphan packs deleted → new packs durable → one synced index batch that moves the live
//! chunks to them and drops the dead chunks and the old packs' records → old pack files deleted.
//! A crash before the batch leaves the new packs as orphans, after it the old ones; the next
//! prune deletes orphans — first, because pack names are content hashes and that prune may
//! write a pack under an orphan's very name (the crash test `a_kill_at_each_step_of_forget_and_
//! prune_loses_nothing_kept` caught exactly that).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::backup::{Repacker, StoredPack};
use crate::error::{Error, Result};
use crate::id::{ChunkId, ImageId, PackId};
use crate::index::{ChunkLookup, PackRecord, Txn};
use crate::manifest::{open_manifest, Content};
use crate::pack::{read_trailer, stored_trailer, unindexed, FrameReader, PackEntry, Unindexed};
use crate::progress::Progress;
use crate::repository::Repository;
use crate::storage::paths;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PackAction {
    /// Every chunk is dead.
    Delete,
    /// Live chunks move to new packs.
    Repack,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrunePlan {
    pub packs: BTreeMap<PackId, (PackAction, PackRecord)>,
    /// Pack files the index does not know (left by interrupted runs), proven unneeded.
    pub orphans: Vec<(String, u64)>,
    /// Pack files the index does not know that prune keeps, and why.
    pub kept_orphans: Vec<(String, String)>,
    /// Manifests read to prove that no image needs what goes.
    pub manifests_read: usize,
    pub dead_chunks: usize,
    /// Dead bytes left in packs under the threshold.
    pub dead_bytes_kept: u64,
}

impl PrunePlan {
    /// Bytes of pack files that go (before the repacked live data is written again).
    pub fn bytes_removed(&self) -> u64 {
        self.packs.values().map(|(_, r)| r.size).sum::<u64>() + self.orphans.iter().map(|(_, s)| s).sum::<u64>()
    }

    /// Bytes that repacking writes again.
    pub fn bytes_rewritten(&self) -> u64 {
        self.packs
            .values()
            .filter(|(a, _)| *a == PackAction::Repack)
            .map(|(_, r)| r.size - r.dead_bytes.min(r.size))
            .sum()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub packs_deleted: usize,
    pub packs_repacked: usize,
    pub packs_written: usize,
    pub chunks_removed: usize,
    pub bytes_freed: u64,
    /// Temporary files of interrupted runs removed (when the repository was opened for writing).
    pub temporaries_removed: usize,
    pub temporary_bytes_removed: u64,
}

/// Packs whose dead bytes exceed `max_unused_percent` of their size are repacked.
pub fn plan(repo: &Repository, max_unused_percent: f64) -> Result<PrunePlan> {
    repo.index_health().require_current(&repo.index_dir())?;
    let dead = repo.index().counters().dead_chunks()?;
    let locs = repo.index().locate(&dead)?;
    let mut dead_by_pack: HashMap<PackId, (u32, u64)> = HashMap::new();
    for loc in locs.iter().flatten() {
        let e = dead_by_pack.entry(loc.pack).or_default();
        e.0 += 1;
        e.1 += loc.charged();
    }
    let records: HashMap<PackId, PackRecord> = repo.index().packs()?.into_iter().collect();
    let mut plan = PrunePlan { dead_chunks: dead.len(), ..Default::default() };
    for (pack, (n, bytes)) in dead_by_pack {
        let Some(rec) = records.get(&pack) else { continue };
        let rec = PackRecord { dead_bytes: bytes, dead_chunks: n, ..*rec };
        if n >= rec.chunks {
            plan.packs.insert(pack, (PackAction::Delete, rec));
        } else if bytes as f64 * 100.0 > max_unused_percent * rec.size as f64 {
            plan.packs.insert(pack, (PackAction::Repack, rec));
        } else {
            plan.dead_bytes_kept += bytes;
        }
    }
    // What the plan would drop: dead chunks of the packs it deletes or repacks, and every chunk
    // of the orphans.
    let mut dropped: HashMap<ChunkId, Vec<Dropped>> = HashMap::new();
    for (id, loc) in dead.iter().zip(&locs) {
        if loc.is_some_and(|l| plan.packs.contains_key(&l.pack)) {
            dropped.entry(*id).or_default().push(Dropped::Dead);
        }
    }
    let mut orphans: Vec<(String, u64)> = Vec::new();
    for Unindexed { path, id, trailer } in unindexed(repo.backend(), repo.protection(), |id| records.contains_key(id))?
    {
        if id.is_none() {
            plan.kept_orphans.push((path, "not named like a pack, so prune leaves it alone".into()));
            continue;
        }
        match trailer {
            Ok((size, entries)) => {
                for e in &entries {
                    dropped.entry(e.id).or_default().push(Dropped::Orphan(orphans.len()));
                }
                orphans.push((path, size));
            }
            Err(e) => {
                plan.kept_orphans.push((path, format!("its trailer cannot be read ({e}), so what it holds is unknown")))
            }
        }
    }
    let (needed, manifests_read) = needed_among(repo, &dropped)?;
    plan.manifests_read = manifests_read;
    let mut keep_orphan: BTreeMap<usize, String> = BTreeMap::new();
    let mut trailers: HashMap<PackId, Option<Vec<PackEntry>>> = HashMap::new();
    for (chunk, image) in &needed {
        for d in &dropped[chunk] {
            match d {
                Dropped::Dead => {
                    return Err(Error::IndexDisagrees { image: image.to_string(), chunk: chunk.to_string() })
                }
                Dropped::Orphan(i) => {
                    if !has_other_copy(repo, &plan, chunk, &mut trailers)? {
                        keep_orphan.entry(*i).or_insert_with(|| {
                            format!("holds chunk {chunk}, which image {image} needs and no other pack holds; run `strata rebuild-index`")
                        });
                    }
                }
            }
        }
    }
    for (i, (path, size)) in orphans.into_iter().enumerate() {
        match keep_orphan.remove(&i) {
            Some(why) => plan.kept_orphans.push((path, why)),
            None => plan.orphans.push((path, size)),
        }
    }
    Ok(plan)
}

/// Where a chunk that the plan drops lives.
enum Dropped {
    /// A dead-marked chunk in a pack the plan deletes or repacks.
    Dead,
    /// A chunk of an orphan pack (index into the orphan list).
    Orphan(usize),
}

/// Streams every manifest in `images/` (the catalog is a cache) and returns the chunks of
/// `dropped` that some image names, each with one such image. Refuses when a manifest cannot be
/// read or names a chunk the index does not know: the index would then be no guide to what is
/// unused.
fn needed_among(
    repo: &Repository,
    dropped: &HashMap<ChunkId, Vec<Dropped>>,
) -> Result<(HashMap<ChunkId, ImageId>, usize)> {
    /// Chunks already found in the index; cleared when full, to bound memory.
    const KNOWN_CAP: usize = 1 << 20;
    let mut needed = HashMap::new();
    let mut known: HashSet<ChunkId> = HashSet::new();
    let mut read = 0;
    for image in paths::manifest_ids(repo.backend())? {
        let unreadable = |e: Error| {
            Error::CorruptManifest {
            image: image.to_string(),
            reason: format!("{e}; prune cannot tell which data it needs: restore the file or forget the image (`strata forget {image}`)"),
        }
        };
        let (_, extents) = open_manifest(repo.backend(), &image).map_err(unreadable)?;
        let mut batch: Vec<ChunkId> = Vec::new();
        for e in extents {
            let Content::Chunk { id, .. } = e.map_err(unreadable)?.content else { continue };
            if dropped.contains_key(&id) {
                needed.entry(id).or_insert(image);
            }
            if !known.contains(&id) {
                batch.push(id);
            }
            if batch.len() >= 8192 {
                check_known(repo, &image, &mut batch, &mut known, KNOWN_CAP)?;
            }
        }
        check_known(repo, &image, &mut batch, &mut known, KNOWN_CAP)?;
        read += 1;
    }
    Ok((needed, read))
}

fn check_known(
    repo: &Repository,
    image: &ImageId,
    batch: &mut Vec<ChunkId>,
    known: &mut HashSet<ChunkId>,
    cap: usize,
) -> Result<()> {
    for (id, loc) in batch.iter().zip(repo.index().locate(batch)?) {
        if loc.is_none() {
            return Err(Error::IndexMissesChunk { image: image.to_string(), chunk: id.to_string() });
        }
        if known.len() >= cap {
            known.clear();
        }
        known.insert(*id);
    }
    batch.clear();
    Ok(())
}

/// Whether `chunk` has a copy that stays: where the index places it, in a pack the plan does not
/// delete, whose trailer (read from the pack itself) lists it there.
fn has_other_copy(
    repo: &Repository,
    plan: &PrunePlan,
    chunk: &ChunkId,
    trailers: &mut HashMap<PackId, Option<Vec<PackEntry>>>,
) -> Result<bool> {
    let Some(loc) = repo.index().locate(std::slice::from_ref(chunk))?.pop().flatten() else { return Ok(false) };
    if matches!(plan.packs.get(&loc.pack), Some((PackAction::Delete, _))) {
        return Ok(false);
    }
    let entries = trailers.entry(loc.pack).or_insert_with(|| {
        stored_trailer(repo.backend(), repo.protection(), &loc.pack, &loc.pack.path()).ok().map(|(_, e)| e)
    });
    Ok(entries.as_ref().is_some_and(|es| es.iter().any(|e| e.id == *chunk && loc.is(&loc.pack, e))))
}

/// Carries out a plan on a repository opened for writing.
pub fn execute(repo: &Repository, plan: &PrunePlan, progress: &dyn Progress) -> Result<PruneReport> {
    repo.require_exclusive("prune")?;
    let mut report = PruneReport::default();
    // Orphans go first, before anything is written: pack names are content hashes, so this run
    // may write a pack with the very name of an orphan that an interrupted run left.
    for (path, _) in &plan.orphans {
        repo.backend().remove(path)?;
    }
    progress.begin("prune", plan.bytes_rewritten());
    let mut txn = Txn::new();
    let mut repacker = Repacker::new(repo);
    let mut old_charge: HashMap<ChunkId, u64> = HashMap::new();
    let dead: HashSet<ChunkId> = repo.index().counters().dead_chunks()?.into_iter().collect();
    // One buffer for every pack read, so each is read into memory already touched.
    let mut file = Vec::new();
    for (pack, (action, _)) in &plan.packs {
        let repack = *action == PackAction::Repack;
        let moved = empty_pack(repo, pack, repack, &dead, &mut file, &mut txn, &mut repacker)?;
        progress.advance(moved.charged.iter().map(|(_, charge)| charge).sum());
        report.chunks_removed += moved.removed;
        old_charge.extend(moved.charged);
        match action {
            PackAction::Delete => report.packs_deleted += 1,
            PackAction::Repack => report.packs_repacked += 1,
        }
    }
    let written = repacker.finish()?;
    crate::failpoint::hit!("prune-before-switch");
    switch(repo, &written, &old_charge, txn)?;
    crate::failpoint::hit!("prune-after-switch");
    // A repacked pack whose content came out the same has the same name: it stays.
    let new: HashSet<PackId> = written.iter().map(|p| p.id).collect();
    for pack in plan.packs.keys().filter(|p| !new.contains(p)) {
        repo.backend().remove(&pack.path())?;
    }
    repo.commit_generation()?;
    progress.end();
    report.packs_written = written.len();
    let new_bytes: u64 = written.iter().map(|p| p.bytes.len() as u64).sum();
    report.bytes_freed = plan.bytes_removed().saturating_sub(new_bytes);
    (report.temporaries_removed, report.temporary_bytes_removed) = repo.temporaries_removed();
    Ok(report)
}

/// What emptying one pack did: dead chunks removed, live ones moved (with their old charge).
struct Emptied {
    removed: usize,
    charged: Vec<(ChunkId, u64)>,
}

/// Removes the dead chunks of `pack` from the index (in `txn`) and, when it is repacked, hands
/// its live chunks (verified: damage is never copied forward) to the repacker. `file` is the
/// buffer the pack is read into.
fn empty_pack(
    repo: &Repository,
    pack: &PackId,
    repack: bool,
    dead: &HashSet<ChunkId>,
    file: &mut Vec<u8>,
    txn: &mut Txn,
    repacker: &mut Repacker,
) -> Result<Emptied> {
    let mut out = Emptied { removed: 0, charged: Vec::new() };
    repo.backend().get_into(&pack.path(), file)?;
    let entries = read_trailer(pack, repo.protection(), file)?;
    let ids: Vec<ChunkId> = entries.iter().map(|e| e.id).collect();
    let current = repo.index().locate(&ids)?;
    let mut frames = FrameReader::new(file, repo.protection(), *pack);
    for (e, loc) in entries.iter().zip(current) {
        // The index may name another copy of the chunk: then this one is not the live one.
        if !loc.is_some_and(|l| l.is(pack, e)) {
            continue;
        }
        if dead.contains(&e.id) {
            txn.remove_chunk(&e.id);
            out.removed += 1;
        } else if repack {
            let corrupt = |err: crate::pack::ChunkError| Error::CorruptChunk {
                id: e.id.to_string(),
                pack: pack.to_string(),
                reason: err.to_string(),
            };
            let raw = frames.chunk(e).map_err(corrupt)?.to_vec();
            out.charged.push((e.id, e.charged()));
            repacker.push(e.id, raw)?;
        }
    }
    txn.remove_pack(pack);
    Ok(out)
}

/// The one synced batch that moves the live chunks to the new packs, charges them their new
/// share of stored bytes, and drops the dead chunks and the old packs' records (in `txn`).
fn switch(repo: &Repository, written: &[StoredPack], old_charge: &HashMap<ChunkId, u64>, mut txn: Txn) -> Result<()> {
    for p in written {
        txn.add_pack(p.id, p.bytes.len() as u64, &p.entries);
    }
    let moves: Vec<(ChunkId, u64, u64)> = written
        .iter()
        .flat_map(|p| p.entries.iter())
        .map(|e| (e.id, old_charge.get(&e.id).copied().unwrap_or(e.charged()), e.charged()))
        .collect();
    repo.index().counters().recharge(&moves, &mut txn)?;
    repo.index().commit(txn)
}
