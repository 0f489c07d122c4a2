//! Reclaiming space: delete chunks no image references, delete packs with no live chunk, repack
//! packs whose dead fraction is above a threshold. A plan first, then the execution.
//!
//! Cost: the work starts from the dead-chunk markers that `forget` leaves in the index (so it
//! grows with what is removed), the pack records and one listing of `packs/` (for orphans of
//! interrupted runs); no manifest and no live pack is read, except the packs being repacked.
//!
//! Order: orphan packs deleted → new packs durable → one synced index batch that moves the live
//! chunks to them and drops the dead chunks and the old packs' records → old pack files deleted.
//! A crash before the batch leaves the new packs as orphans, after it the old ones; the next
//! prune deletes orphans — first, because pack names are content hashes and that prune may
//! write a pack under an orphan's very name (the crash test `a_kill_at_each_step_of_forget_and_
//! prune_loses_nothing_kept` caught exactly that).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::{Error, Result};
use crate::id::{ChunkId, PackId};
use crate::index::{chunk_key, pack_key, Batch, ChunkLoc, ChunkLookup, PackRecord};
use crate::pack::{compress_frame, read_trailer, FrameReader, PackBuilder, FRAME_TARGET};
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
    /// Pack files the index does not know (left by interrupted runs).
    pub orphans: Vec<(String, u64)>,
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
}

/// Packs whose dead bytes exceed `max_unused_percent` of their size are repacked.
pub fn plan(repo: &Repository, max_unused_percent: f64) -> Result<PrunePlan> {
    if let Some(blocked) = refs::prune_blocked(repo.index())? {
        return Err(Error::CorruptManifest {
            image: blocked,
            reason: "unreadable, so which chunks it needs is unknown; prune refuses to run until it is restored or forgotten".into(),
        });
    }
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
    for path in repo.backend().list("packs")? {
        let name = path.rsplit('/').next().unwrap_or_default();
        match PackId::parse(name) {
            Some(id) if records.contains_key(&id) => {}
            _ => plan.orphans.push((path.clone(), repo.backend().size(&path)?)),
        }
    }
    Ok(plan)
}

/// Carries out a plan on a repository opened for writing.
pub fn execute(repo: &Repository, plan: &PrunePlan, progress: &dyn Progress) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    let index = repo.index();
    let mut batch = Batch::default();
    let mut builder = PackBuilder::new();
    let mut written: Vec<(PackId, u64, Vec<crate::pack::PackEntry>)> = Vec::new();
    let dead: HashSet<ChunkId> = refs::dead_chunks(index)?.into_iter().collect();
    // Orphans go first, before anything is written: pack names are content hashes, so this run
    // may write a pack with the very name of an orphan that an interrupted run left.
    for (path, _) in &plan.orphans {
        repo.backend().remove(path)?;
    }
    progress.begin("prune", plan.bytes_rewritten());
    let seal = |builder: PackBuilder, written: &mut Vec<(PackId, u64, Vec<crate::pack::PackEntry>)>| -> Result<()> {
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
                 written: &mut Vec<(PackId, u64, Vec<crate::pack::PackEntry>)>|
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
    crate::failpoint::hit("prune-before-switch");
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
    crate::failpoint::hit("prune-after-switch");
    // A repacked pack whose content came out the same has the same name: it stays.
    let new: HashSet<PackId> = written.iter().map(|(id, _, _)| *id).collect();
    for pack in plan.packs.keys().filter(|p| !new.contains(p)) {
        repo.backend().remove(&pack.path())?;
    }
    progress.end();
    report.packs_written = written.len();
    let new_bytes: u64 = written.iter().map(|(_, s, _)| s).sum();
    report.bytes_freed = plan.bytes_removed().saturating_sub(new_bytes);
    Ok(report)
}
