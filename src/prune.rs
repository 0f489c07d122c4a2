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

use crate::error::{Error, Result};
use crate::extent::Content;
use crate::id::ImageId;
use crate::id::{ChunkId, PackId};
use crate::index::{chunk_key, pack_key, Batch, ChunkLoc, ChunkLookup, PackRecord};
use crate::manifest::open_manifest;
use crate::pack::{compress_frame, read_trailer, read_trailer_at, FrameReader, PackBuilder, PackEntry, FRAME_TARGET};
use crate::progress::Progress;
use crate::refs;
use crate::repository::Repository;

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
    repo.index_health().require_current(&repo.root().join("index"))?;
    let dead = refs::dead_chunks(repo.index())?;
    let locs = repo.index().locate(&dead)?;
    let mut dead_by_pack: HashMap<PackId, (u32, u64)> = HashMap::new();
    for loc in locs.iter().flatten() {
        let e = dead_by_pack.entry(loc.pack).or_default();
        e.0 += 1;
        e.1 += loc.charged();
    }
    let records: HashMap<PackId, PackRecord> = refs::packs(repo.index())?.into_iter().collect();
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
    for path in repo.backend().list("packs")? {
        let name = path.rsplit('/').next().unwrap_or_default();
        let id = PackId::parse(name);
        if id.is_some_and(|id| records.contains_key(&id)) {
            continue;
        }
        let Some(id) = id else {
            plan.kept_orphans.push((path, "not named like a pack, so prune leaves it alone".into()));
            continue;
        };
        let size = repo.backend().size(&path)?;
        let entries = read_trailer_at(&id, size, |o, n| repo.backend().read_at(&path, o, n));
        match entries {
            Ok(entries) => {
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
    for name in repo.backend().list("images")? {
        let Some(image) = name.strip_prefix("images/").and_then(ImageId::parse) else { continue };
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
        let path = loc.pack.path();
        repo.backend()
            .size(&path)
            .and_then(|size| read_trailer_at(&loc.pack, size, |o, n| repo.backend().read_at(&path, o, n)))
            .ok()
    });
    Ok(entries
        .as_ref()
        .is_some_and(|es| es.iter().any(|e| e.id == *chunk && e.offset == loc.offset && e.skip == loc.skip)))
}

/// Carries out a plan on a repository opened for writing.
pub fn execute(repo: &Repository, plan: &PrunePlan, progress: &dyn Progress) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    let index = repo.index();
    let mut batch = Batch::default();
    let mut builder = PackBuilder::new();
    let mut written: Vec<(PackId, u64, Vec<PackEntry>)> = Vec::new();
    let dead: HashSet<ChunkId> = refs::dead_chunks(index)?.into_iter().collect();
    // Orphans go first, before anything is written: pack names are content hashes, so this run
    // may write a pack with the very name of an orphan that an interrupted run left.
    for (path, _) in &plan.orphans {
        repo.backend().remove(path)?;
    }
    progress.begin("prune", plan.bytes_rewritten());
    let seal = |builder: PackBuilder, written: &mut Vec<(PackId, u64, Vec<PackEntry>)>| -> Result<()> {
        if builder.is_empty() {
            return Ok(());
        }
        let (pid, bytes, entries) = builder.finish();
        repo.backend().put(&pid.path(), &bytes)?;
        written.push((pid, bytes.len() as u64, entries));
        Ok(())
    };
    // Live chunks of repacked packs are framed again (a frame may have lost some of its chunks),
    // verified on the way out and on the way in.
    let level = repo.config().compression_level;
    let mut framing: Vec<(ChunkId, Vec<u8>)> = Vec::new();
    let mut old_charge: HashMap<ChunkId, u64> = HashMap::new();
    let flush = |framing: &mut Vec<(ChunkId, Vec<u8>)>,
                 builder: &mut PackBuilder,
                 written: &mut Vec<(PackId, u64, Vec<PackEntry>)>|
     -> Result<()> {
        if framing.is_empty() {
            return Ok(());
        }
        let chunks: Vec<(ChunkId, &[u8])> = framing.iter().map(|(id, raw)| (*id, raw.as_slice())).collect();
        let (codec, stored) = compress_frame(&chunks, level)?;
        let lens: Vec<(ChunkId, u32)> = framing.iter().map(|(id, raw)| (*id, raw.len() as u32)).collect();
        builder.add_frame(codec, &stored, &lens);
        framing.clear();
        if builder.len() as u64 >= repo.config().pack_target_size {
            seal(std::mem::take(builder), written)?;
        }
        Ok(())
    };
    for (pack, (action, _)) in &plan.packs {
        let file = repo.backend().get(&pack.path())?;
        let entries = read_trailer(pack, &file)?;
        let ids: Vec<ChunkId> = entries.iter().map(|e| e.id).collect();
        let current = index.locate(&ids)?;
        let mut frames = FrameReader::new(&file);
        for (e, loc) in entries.iter().zip(current) {
            // The index may name another copy of the chunk: then this one is not the live one.
            let here = loc.is_some_and(|l| l.pack == *pack && l.offset == e.offset && l.skip == e.skip);
            if !here {
                continue;
            }
            if dead.contains(&e.id) {
                batch.delete(chunk_key(&e.id));
                refs::forget_dead(&mut batch, &e.id);
                report.chunks_removed += 1;
            } else if *action == PackAction::Repack {
                // Never copy damage forward: every moved chunk is verified.
                let corrupt = |err: crate::pack::ChunkError| Error::CorruptChunk {
                    id: e.id.to_string(),
                    pack: pack.to_string(),
                    reason: err.to_string(),
                };
                let raw = frames.chunk(e).map_err(corrupt)?.to_vec();
                progress.advance(e.charged());
                old_charge.insert(e.id, e.charged());
                framing.push((e.id, raw));
                if framing.iter().map(|(_, r)| r.len()).sum::<usize>() >= FRAME_TARGET {
                    flush(&mut framing, &mut builder, &mut written)?;
                }
            }
        }
        batch.delete(pack_key(pack));
        match action {
            PackAction::Delete => report.packs_deleted += 1,
            PackAction::Repack => report.packs_repacked += 1,
        }
    }
    flush(&mut framing, &mut builder, &mut written)?;
    seal(builder, &mut written)?;
    crate::failpoint::hit!("prune-before-switch");
    for (pid, size, entries) in &written {
        for e in entries {
            let loc = ChunkLoc::of(*pid, e);
            batch.put(chunk_key(&e.id), loc.encode());
        }
        let rec = PackRecord { size: *size, chunks: entries.len() as u32, dead_bytes: 0, dead_chunks: 0 };
        batch.put(pack_key(pid), rec.encode());
    }
    // Re-framed chunks are charged their new share of stored bytes, in the same batch.
    let moves: Vec<(ChunkId, u64, u64)> = written
        .iter()
        .flat_map(|(_, _, entries)| entries.iter())
        .map(|e| (e.id, old_charge.get(&e.id).copied().unwrap_or(e.charged()), e.charged()))
        .collect();
    refs::recharge(index, &moves, &mut batch)?;
    index.write(batch)?;
    crate::failpoint::hit!("prune-after-switch");
    // A repacked pack whose content came out the same has the same name: it stays.
    let new: HashSet<PackId> = written.iter().map(|(id, _, _)| *id).collect();
    for pack in plan.packs.keys().filter(|p| !new.contains(p)) {
        repo.backend().remove(&pack.path())?;
    }
    repo.commit_generation()?;
    progress.end();
    report.packs_written = written.len();
    let new_bytes: u64 = written.iter().map(|(_, s, _)| s).sum();
    report.bytes_freed = plan.bytes_removed().saturating_sub(new_bytes);
    (report.temporaries_removed, report.temporary_bytes_removed) = repo.temporaries_removed();
    Ok(report)
}
