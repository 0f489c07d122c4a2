//! The structure: manifests read whole, chains complete, every referenced chunk indexed in a pack
//! that exists and lists it, the index complete and current, orphan packs, and the counters.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::table::{ChunkIdx, References};
use super::{CheckReport, Findings, Problem};
use crate::error::{Error, Result};
use crate::id::{ChunkId, ImageId, PackId};
use crate::index::ChunkLookup;
use crate::manifest::{open_manifest, Content, ImageInfo};
use crate::pack::{stored_trailer, unindexed, Unindexed};
use crate::repository::Repository;

/// Each manifest must read whole (checksum) and decode; collects who references what.
pub(super) fn manifests(repo: &Repository, images: &[ImageInfo], f: &mut Findings, report: &mut CheckReport) {
    // Room for every extent the catalog lists (bounded: a damaged catalog must not reserve
    // gigabytes); more than that grows as needed.
    let extents = images.iter().fold(0u64, |n, i| n.saturating_add(i.extent_count));
    let mut refs = References::with_capacity(extents.min(4 << 20) as usize);
    for info in images {
        let mut image_refs = refs.image(info.id);
        let mut read_one = || -> Result<()> {
            let (stored, extents) = open_manifest(repo.backend(), &info.id)?;
            if let Some(reason) = crate::manifest::catalog::replayed(&stored, Some(info), 0) {
                return Err(Error::CorruptManifest { image: info.id.to_string(), reason });
            }
            if stored.base != info.base {
                return Err(Error::CorruptManifest {
                    image: info.id.to_string(),
                    reason: "base differs from the catalog".into(),
                });
            }
            for e in extents {
                if let Content::Chunk { id, .. } = e?.content {
                    image_refs.chunk(id);
                }
            }
            Ok(())
        };
        if let Err(e) = read_one() {
            report.problems.push(Problem {
                kind: "manifest",
                object: info.id.to_string(),
                detail: e.to_string(),
                images: vec![],
            });
            f.bad_images.insert(info.id, format!("manifest of {} is damaged or missing", info.id.short()));
            f.root.insert(info.id, info.id);
        }
    }
    f.chunks = refs.build();
}

/// Every base present.
pub(super) fn chains(
    images: &[ImageInfo],
    by_id: &HashMap<ImageId, &ImageInfo>,
    f: &mut Findings,
    report: &mut CheckReport,
) {
    for info in images {
        if let Some(base) = info.base {
            if !by_id.contains_key(&base) {
                let detail = format!("its base {base} is not in the repository");
                report.problems.push(Problem { kind: "chain", object: info.id.to_string(), detail, images: vec![] });
                f.bad_images.insert(info.id, format!("base {} is missing", base.short()));
                f.root.insert(info.id, info.id);
            }
        }
    }
}

/// Where the index places every referenced chunk.
pub(super) fn locate(repo: &Repository, f: &mut Findings) -> Result<()> {
    let mut packs = HashMap::new();
    for start in (0..f.chunks.len()).step_by(8192) {
        let end = (start + 8192).min(f.chunks.len());
        let found = repo.index().locate(&f.chunks.ids()[start..end])?;
        for (i, loc) in (start..end).zip(found) {
            let i = i as ChunkIdx;
            match loc {
                Some(l) => {
                    f.by_pack.entry(l.pack).or_default().push(i);
                    let at = f.chunks.pack_position(l.pack, &mut packs);
                    f.chunks.set_loc(i, at, l.slot);
                }
                None => {
                    f.bad_chunks.insert(f.chunks.id(i), "not in the index".into());
                }
            }
        }
    }
    Ok(())
}

/// Every pack exists and its trailer lists the chunks the index places in it.
pub(super) fn packs(repo: &Repository, packs: &BTreeSet<PackId>, f: &mut Findings) {
    let no_chunks = Vec::new();
    for pack in packs {
        let chunks = f.by_pack.get(pack).unwrap_or(&no_chunks);
        let misplaced = |listed: &HashSet<(ChunkId, u64, u32)>, i: &ChunkIdx| {
            f.chunks.loc_at(*i).is_some_and(|l| !listed.contains(&(f.chunks.id(*i), l.slot.offset, l.slot.stored_len)))
        };
        let path = pack.path();
        let structure = stored_trailer(repo.backend(), repo.protection(), pack, &path).map(|(_, entries)| {
            let listed: HashSet<(ChunkId, u64, u32)> =
                entries.iter().map(|e| (e.id, e.slot.offset, e.slot.stored_len)).collect();
            chunks.iter().filter(|i| misplaced(&listed, i)).count()
        });
        match structure {
            Ok(0) => {}
            Ok(n) => {
                f.bad_packs.insert(*pack, format!("its trailer does not list {n} chunks the index places in it"));
            }
            Err(e) if e.is_not_found() => {
                f.bad_packs.insert(*pack, "missing".into());
            }
            Err(e) => {
                f.bad_packs.insert(*pack, e.to_string());
            }
        }
    }
}

/// An index that is incomplete or older than the repository cannot vouch for anything.
pub(super) fn index_health(repo: &Repository, report: &mut CheckReport) {
    use crate::repository::IndexHealth;
    let detail = match repo.index_health() {
        IndexHealth::Current => return,
        IndexHealth::Incomplete => {
            "the index is incomplete (an interrupted rebuild, or an older strata made it); run `strata rebuild-index` before any backup or prune".to_string()
        }
        IndexHealth::Stale { index, repository } => format!(
            "the index is older than the repository (generation {index} < {repository}): it may lack packs and images; run `strata rebuild-index` before any backup or prune"
        ),
    };
    report.problems.push(Problem { kind: "index", object: "index".into(), detail, images: vec![] });
}

/// Pack files the index does not know: an orphan whose chunks no image needs (or that an intact
/// indexed copy serves) is left by an interrupted run and `prune` deletes it; one that holds a
/// chunk an image needs which the index does not place, or places in a missing or damaged pack,
/// is reported as needed, never as garbage (prune keeps it too).
pub(super) fn orphans(
    repo: &Repository,
    indexed_packs: &BTreeSet<PackId>,
    f: &Findings,
    report: &mut CheckReport,
) -> Result<()> {
    // The indexed copy is missing or in a pack that is missing or damaged.
    let unserved = |id: &ChunkId| f.loc(id).is_none_or(|l| f.bad_packs.contains_key(&l.pack));
    for Unindexed { path, id, trailer } in
        unindexed(repo.backend(), repo.protection(), |id| indexed_packs.contains(id))?
    {
        // A file not named like a pack is nothing of Strata's: prune leaves it, and so does check.
        let Some(pack) = id else { continue };
        let entries = match trailer {
            Ok((_, e)) => e,
            Err(e) => {
                report.problems.push(Problem {
                    kind: "pack",
                    object: pack.to_string(),
                    detail: format!("not in the index and its trailer cannot be read ({e}); prune keeps it"),
                    images: vec![],
                });
                continue;
            }
        };
        let needed: BTreeSet<ChunkId> =
            entries.iter().map(|e| e.id).filter(|id| f.chunks.contains(id) && unserved(id)).collect();
        if needed.is_empty() {
            report.orphan_packs.push(path);
            continue;
        }
        let images: BTreeSet<ImageId> = needed.iter().flat_map(|c| f.chunks.images_of_id(c)).collect();
        report.problems.push(Problem {
            kind: "index",
            object: pack.to_string(),
            detail: format!(
                "this pack is not in the index but holds {} chunks that images need and whose indexed copies are missing or damaged; run `strata rebuild-index` (never delete this pack)",
                needed.len()
            ),
            images: images.into_iter().collect(),
        });
    }
    Ok(())
}

/// Compares the counters behind `stats` with what the manifests say.
pub(super) fn counters(repo: &Repository, images: &[ImageInfo], f: &Findings, report: &mut CheckReport) -> Result<()> {
    let set_of: HashMap<ImageId, ImageId> = images.iter().map(|i| (i.id, i.set)).collect();
    let mut expect: BTreeMap<ImageId, (u64, u64)> = BTreeMap::new();
    for i in 0..f.chunks.len() as ChunkIdx {
        let Some(l) = f.chunks.loc_at(i) else { continue };
        let sets: BTreeSet<ImageId> = f.chunks.images_of(i).filter_map(|i| set_of.get(&i).copied()).collect();
        for s in &sets {
            let e = expect.entry(*s).or_default();
            e.0 += l.charged();
            if sets.len() == 1 {
                e.1 += l.charged();
            }
        }
    }
    for (set, (stored, exclusive)) in expect {
        let c = repo.index().counters().set(&set)?;
        if (c.stored_bytes, c.exclusive_bytes) != (stored, exclusive) {
            report.problems.push(Problem {
                kind: "counters",
                object: set.to_string(),
                detail: format!(
                    "index says stored {} / exclusive {}, manifests say {stored} / {exclusive}; `strata rebuild-index` repairs it",
                    c.stored_bytes, c.exclusive_bytes
                ),
                images: vec![],
            });
        }
    }
    Ok(())
}
