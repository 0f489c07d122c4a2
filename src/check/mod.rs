//! Proving images restorable, in three steps: the structure (catalog ↔ manifests ↔ index ↔
//! packs, chains, counters: `structure`), the data (every chunk decoded and re-hashed: `data`),
//! and which images the damage found keeps from restoring (`attribution`, through the image
//! reader's maps). Reports each problem and, for every image, whether it restores. Reads only;
//! works beside a running backup.

mod attribution;
mod data;
mod structure;
mod table;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

use crate::error::Result;
use crate::id::{ChunkId, ImageId, PackId};
use crate::index::ChunkLoc;
use crate::manifest::ImageInfo;
use crate::progress::Progress;
use crate::repository::Repository;
use table::{ChunkIdx, ChunkTable};

/// How much chunk data to read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReadData {
    /// Structure only.
    None,
    All,
    /// This percentage of the packs, chosen by their names (so reruns with the same percentage
    /// read the same packs, and a rising percentage reads a superset).
    Subset(f64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong: "manifest", "chain", "pack", "chunk", "index", "counters".
    pub kind: &'static str,
    /// The object: an image, pack or chunk id.
    pub object: String,
    pub detail: String,
    /// Images that this problem keeps from restoring.
    pub images: Vec<ImageId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageStatus {
    pub id: ImageId,
    pub restorable: bool,
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckReport {
    pub problems: Vec<Problem>,
    pub images: Vec<ImageStatus>,
    /// Pack files the index does not know (left by interrupted runs; prune deletes them).
    pub orphan_packs: Vec<String>,
    pub packs_read: usize,
    pub chunks_read: u64,
    pub bytes_read: u64,
    pub seconds: f64,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the whole repository.
pub fn check(repo: &Repository, read: ReadData, progress: &dyn Progress) -> Result<CheckReport> {
    let images = repo.images()?;
    let mut report = run(repo, &images, None, read, progress)?;
    // Manifests that cannot be read and that the catalog does not list (after a rebuild): damaged
    // images, reported as such, with the images whose chains pass through them.
    let damaged = repo.damaged_images()?;
    let by_id: HashMap<ImageId, &ImageInfo> = images.iter().map(|i| (i.id, i)).collect();
    for d in &damaged {
        let broken: Vec<ImageId> =
            report.images.iter().filter(|s| chain_passes(&by_id, s.id, d.id)).map(|s| s.id).collect();
        for s in report.images.iter_mut().filter(|s| broken.contains(&s.id)) {
            s.restorable = false;
            s.reasons = vec![format!("its chain includes damaged image {}", d.id.short())];
        }
        report.problems.retain(|p| !(p.kind == "chain" && broken.iter().any(|b| b.to_string() == p.object)));
        report.problems.push(Problem {
            kind: "manifest",
            object: d.id.to_string(),
            detail: format!("{}; `strata forget {}` removes it", d.reason, d.id.short()),
            images: broken.clone(),
        });
        report.images.push(ImageStatus {
            id: d.id,
            restorable: false,
            reasons: vec![format!("manifest of {} is damaged or missing", d.id.short())],
        });
    }
    Ok(report)
}

/// Whether the chain of `image` (through the bases the catalog records) includes `through`.
fn chain_passes(by_id: &HashMap<ImageId, &ImageInfo>, image: ImageId, through: ImageId) -> bool {
    let mut cur = by_id.get(&image).and_then(|i| i.base);
    for _ in 0..=by_id.len() {
        match cur {
            Some(b) if b == through => return true,
            Some(b) => cur = by_id.get(&b).and_then(|i| i.base),
            None => return false,
        }
    }
    false
}

/// Checks what one image needs: its chain's manifests and every chunk of its view, read.
pub fn verify(repo: &Repository, image: &ImageInfo, progress: &dyn Progress) -> Result<CheckReport> {
    verify_partition(repo, image, None, progress)
}

/// `verify`, reading only the chunks of partition `partition` when one is named (`IMAGE:N`); the
/// structure of the whole chain is checked either way.
pub fn verify_partition(
    repo: &Repository,
    image: &ImageInfo,
    partition: Option<u32>,
    progress: &dyn Progress,
) -> Result<CheckReport> {
    let all = repo.images()?;
    let chain = repo.chain(image).unwrap_or_else(|_| vec![image.clone()]);
    let ids: HashSet<ImageId> = chain.iter().map(|i| i.id).collect();
    let chain_infos: Vec<ImageInfo> = all.into_iter().filter(|i| ids.contains(&i.id)).collect();
    run(repo, &chain_infos, Some((image.id, partition)), ReadData::All, progress)
}

/// What the steps of a check find, passed from one to the next.
#[derive(Default)]
struct Findings {
    /// Every chunk the manifests reference: by whom, and where the index places it.
    chunks: ChunkTable,
    /// Images that cannot restore for a reason of their own chain, with that reason.
    bad_images: BTreeMap<ImageId, String>,
    /// For each such image, the image whose damage is the root cause.
    root: BTreeMap<ImageId, ImageId>,
    /// The referenced chunks the index places in each pack.
    by_pack: BTreeMap<PackId, Vec<ChunkIdx>>,
    bad_chunks: BTreeMap<ChunkId, String>,
    bad_packs: BTreeMap<PackId, String>,
    /// Images whose resolved views use bad chunks, with those chunks.
    affected: BTreeMap<ImageId, BTreeSet<ChunkId>>,
}

impl Findings {
    /// Where the index places chunk `id`, if the manifests reference it and the index has it.
    fn loc(&self, id: &ChunkId) -> Option<ChunkLoc> {
        self.chunks.loc(id)
    }

    /// The referenced chunks the index places in `pack`.
    fn in_pack(&self, pack: &PackId) -> impl Iterator<Item = ChunkId> + '_ {
        self.by_pack.get(pack).into_iter().flatten().map(|&i| self.chunks.id(i))
    }
}

fn run(
    repo: &Repository,
    images: &[ImageInfo],
    only: Option<(ImageId, Option<u32>)>,
    read: ReadData,
    progress: &dyn Progress,
) -> Result<CheckReport> {
    let (only, partition) = (only.map(|(i, _)| i), only.and_then(|(_, p)| p));
    let started = Instant::now();
    let mut report = CheckReport::default();
    let mut f = Findings::default();
    let by_id: HashMap<ImageId, &ImageInfo> = images.iter().map(|i| (i.id, i)).collect();
    let journal_pending = repo.index().journal()?.is_some();
    structure::manifests(repo, images, &mut f, &mut report);
    structure::chains(images, &by_id, &mut f, &mut report);
    structure::locate(repo, &mut f)?;
    structure::index_health(repo, &mut report);
    let indexed_packs: BTreeSet<PackId> = repo.index().packs()?.into_iter().map(|(p, _)| p).collect();
    // `check` looks at every pack the index knows, referenced or not (a damaged pack is damage
    // even while no readable manifest needs it); `verify` only at what its chain needs.
    let packs: BTreeSet<PackId> = match only {
        Some(_) => f.by_pack.keys().copied().collect(),
        None => f.by_pack.keys().chain(indexed_packs.iter()).copied().collect(),
    };
    structure::packs(repo, &packs, &mut f);
    match only {
        Some(image) => data::read_image(repo, images, (image, partition), &mut f, &mut report, progress)?,
        None => data::read_packs(repo, &packs, read, &mut f, &mut report, progress)?,
    }
    attribution::spread_pack_damage(&mut f);
    if only.is_none() {
        structure::orphans(repo, &indexed_packs, &f, &mut report)?;
    }
    attribution::other_copies(repo, &mut f, &mut report)?;
    attribution::affected(repo, images, only, &by_id, &mut f);
    attribution::report(&mut f, &mut report);
    // Counters (only when no interrupted operation is waiting to rebuild them).
    if only.is_none() && !journal_pending {
        structure::counters(repo, images, &f, &mut report)?;
    }
    attribution::statuses(images, only, &f, &mut report);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
