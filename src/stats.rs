//! What images, backup sets and the repository cost, from the counters kept in the index (no
//! pack or manifest is read, so it stays fast however large the repository).

use std::collections::BTreeMap;

use crate::error::Result;
use crate::index::SetId;
use crate::manifest::ImageInfo;
use crate::repository::Repository;

#[derive(Clone, Debug, PartialEq)]
pub struct SetStats {
    pub set: SetId,
    pub source_id: String,
    pub images: usize,
    /// Sum of the images' disk sizes.
    pub logical_bytes: u64,
    /// Stored bytes of the distinct chunks the set references.
    pub stored_bytes: u64,
    /// Of those, bytes also referenced by another set.
    pub shared_bytes: u64,
    /// Bytes that `forget` of the whole set followed by `prune` frees (within pack slack).
    pub exclusive_bytes: u64,
    pub raw_bytes: u64,
    pub chunks: u64,
    pub first_ms: u64,
    pub last_ms: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RepoStats {
    pub images: usize,
    pub sets: usize,
    pub logical_bytes: u64,
    /// Raw bytes of the chunks some image references.
    pub raw_referenced: u64,
    /// Stored bytes of those chunks.
    pub stored_referenced: u64,
    pub chunks: u64,
    /// Bytes of all pack files.
    pub pack_bytes: u64,
    pub packs: usize,
    /// Bytes in packs that no image needs (what `prune` can reclaim).
    pub dead_bytes: u64,
    /// Logical bytes of all images per raw byte referenced.
    pub dedup_ratio: f64,
    /// Raw bytes per stored byte of the referenced chunks.
    pub compression_ratio: f64,
    /// True while an interrupted operation's counters wait for the next writer to rebuild them.
    pub counters_stale: bool,
    /// Temporary files left by interrupted runs (the next writer removes them).
    pub temporary_files: usize,
    pub temporary_bytes: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub images: Vec<ImageInfo>,
    pub sets: Vec<SetStats>,
    pub repository: RepoStats,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

pub fn stats(repo: &Repository) -> Result<Stats> {
    let index = repo.index();
    let images = repo.images()?;
    // A set is named by its label (the id of its first full, kept when that full is forgotten
    // with --rebase), and ordered by its oldest member.
    let mut members_of: BTreeMap<(String, SetId), Vec<&ImageInfo>> = BTreeMap::new();
    for i in &images {
        members_of.entry((i.source_id.clone(), i.set)).or_default().push(i);
    }
    let mut by_set: Vec<((String, SetId), Vec<&ImageInfo>)> = members_of.into_iter().collect();
    by_set.sort_by_key(|((source, set), m)| (source.clone(), m.iter().map(|i| i.created_ms).min().unwrap_or(0), *set));
    let mut sets = Vec::new();
    for ((source_id, set), members) in by_set {
        let c = index.counters().set(&set)?;
        sets.push(SetStats {
            set,
            source_id,
            images: members.len(),
            logical_bytes: members.iter().map(|i| i.logical_bytes).sum(),
            stored_bytes: c.stored_bytes,
            shared_bytes: c.stored_bytes - c.exclusive_bytes.min(c.stored_bytes),
            exclusive_bytes: c.exclusive_bytes,
            raw_bytes: c.raw_bytes,
            chunks: c.chunks,
            first_ms: members.iter().map(|i| i.created_ms).min().unwrap_or(0),
            last_ms: members.iter().map(|i| i.created_ms).max().unwrap_or(0),
        });
    }
    let totals = index.counters().totals()?;
    let temporaries = repo.backend().temporaries()?;
    let packs = index.packs()?;
    let logical: u64 = images.iter().map(|i| i.logical_bytes).sum();
    let repository = RepoStats {
        images: images.len(),
        sets: sets.len(),
        logical_bytes: logical,
        raw_referenced: totals.live_raw,
        stored_referenced: totals.live_stored,
        chunks: totals.live_chunks,
        pack_bytes: packs.iter().map(|(_, p)| p.size).sum(),
        packs: packs.len(),
        dead_bytes: packs.iter().map(|(_, p)| p.dead_bytes).sum(),
        dedup_ratio: ratio(logical, totals.live_raw),
        compression_ratio: ratio(totals.live_raw, totals.live_stored),
        counters_stale: index.journal()?.is_some(),
        temporary_files: temporaries.len(),
        temporary_bytes: temporaries.iter().map(|(_, s)| s).sum(),
    };
    Ok(Stats { images, sets, repository })
}
