//! Forgetting images without ever breaking a chain: a plan first (a value that can be printed
//! and tested), then an execution in an order that survives a crash at any point.
//!
//! Chain rules. An image whose base is forgotten is rewritten against its nearest kept ancestor
//! (its new manifest lists what differs between the two resolved views: metadata only, no data
//! is copied). A forgotten full takes its whole set, unless `rebase` is asked: then the oldest
//! kept image of the set becomes a synthetic full (its whole view, again metadata only). With a
//! policy, a set's full is kept whenever one of its images is (unless `rebase`).
//!
//! Execution order: preflight (every manifest a rewrite reads is read whole; a forget that
//! cannot be carried out fails here, before anything is written) → journal (the plan, phase
//! "rewrite") → rewritten manifests, each replacing its predecessor atomically and catalogued at
//! once → one batch: catalog entries of the forgotten images removed and the journal's phase set
//! to "delete" → their manifests deleted, newest first → one synced batch that applies the
//! reference changes and clears the journal. Rewriting never changes what an image restores, so
//! every image restores at every step. A writer that finds the journal does exactly what it
//! says, never something else: in phase "rewrite" it undoes the forget (the rewrites stand, as
//! equivalent images; nothing is removed), in phase "delete" it deletes the listed manifests
//! that remain.
//!
//! Damaged images. An image whose manifest cannot be read can be forgotten by id; the images
//! whose chains pass through it (which cannot be restored without it) go with it, and the
//! counters are rebuilt from the remaining manifests since its references cannot be read. With
//! `--rebase` such a forget is refused: the images resting on it cannot become a full.

pub mod retention;

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::id::ImageId;
use crate::index::{Journal, RefDelta, Txn};
use crate::manifest::{catalog, ChangeFilter, Content, ImageInfo, Kind, ManifestWriter};
use crate::recover;
use crate::repository::Repository;
use retention::Policy;

#[derive(Clone, Debug, Default)]
pub struct ForgetRequest {
    /// Images named by the user (full ids).
    pub ids: Vec<ImageId>,
    pub policy: Policy,
    /// Restrict a policy to one source (default: every source, each on its own).
    pub source_id: Option<String>,
    pub rebase: bool,
    /// Images whose manifests cannot be read (see `Repository::damaged_images`), named by the
    /// user; they may be absent from `images` (not catalogued).
    pub damaged: Vec<ImageId>,
}

/// How a kept image's manifest is rewritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    pub image: ImageId,
    /// The new base; `None`: the image becomes the synthetic full of its set.
    pub new_base: Option<ImageId>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ForgetPlan {
    pub forget: Vec<ImageInfo>,
    /// Damaged images with no catalog entry (nothing known of them but their id).
    pub forget_damaged: Vec<ImageId>,
    pub keep: Vec<ImageInfo>,
    /// In the order they must be written (a synthetic full before images based on it).
    pub rewrite: Vec<Rewrite>,
    /// Why each kept image is kept (policy rules), for the dry-run report.
    pub reasons: BTreeMap<ImageId, Vec<&'static str>>,
    pub rebase: bool,
}

/// Resolves the images a user names (ids, unique prefixes, `latest`) for a forget: catalogued
/// images and damaged ones that the catalog does not list. Returns the ids and, among them, the
/// images whose manifests cannot be read (`ForgetRequest::damaged`).
pub fn resolve(repo: &Repository, specs: &[String]) -> Result<(Vec<ImageId>, Vec<ImageId>)> {
    let uncatalogued = repo.damaged_images()?;
    let (mut ids, mut damaged) = (Vec::new(), Vec::new());
    for spec in specs {
        let id = match repo.find_image(spec) {
            Ok(info) => info.id,
            Err(Error::ImageNotFound { .. }) if !spec.is_empty() => {
                catalog::find_by_prefix(spec, uncatalogued.iter().map(|d| d.id).collect(), |id| *id)?
            }
            Err(e) => return Err(e),
        };
        if crate::manifest::read_info(repo.backend(), &id).is_err() {
            damaged.push(id);
        }
        ids.push(id);
    }
    Ok((ids, damaged))
}

/// Computes what goes, what stays and what is rewritten. Pure.
pub fn plan(images: &[ImageInfo], req: &ForgetRequest) -> Result<ForgetPlan> {
    if req.policy.keeps_nothing() {
        return Err(Error::PolicyKeepsNothing);
    }
    let by_id: BTreeMap<ImageId, &ImageInfo> = images.iter().map(|i| (i.id, i)).collect();
    let mut remove: BTreeSet<ImageId> = BTreeSet::new();
    let mut reasons = BTreeMap::new();
    for id in &req.ids {
        if !by_id.contains_key(id) && !req.damaged.contains(id) {
            return Err(Error::ImageNotFound { spec: id.to_string() });
        }
        remove.insert(*id);
    }
    if !req.policy.is_empty() {
        policy_removals(images, req, &mut remove, &mut reasons);
    }
    // A forgotten full takes its set, unless rebased.
    if !req.rebase {
        let gone_sets: BTreeSet<ImageId> =
            images.iter().filter(|i| i.kind == Kind::Full && remove.contains(&i.id)).map(|i| i.set).collect();
        remove.extend(images.iter().filter(|i| gone_sets.contains(&i.set)).map(|i| i.id));
    }
    let mut ordered: Vec<&ImageInfo> = images.iter().collect();
    ordered.sort_by_key(|i| (i.created_ms, i.id));
    // A damaged image that goes takes the images whose chains pass through it: they cannot be
    // restored without it, nor rewritten (their views are unknown). Dependents are newer than
    // their bases, so one pass, oldest first, finds them all.
    let mut broken: BTreeSet<ImageId> = req.damaged.iter().filter(|d| remove.contains(d)).copied().collect();
    for i in &ordered {
        if i.base.is_some_and(|b| broken.contains(&b)) {
            if req.rebase {
                return Err(Error::CorruptManifest {
                    image: i.base.map(|b| b.to_string()).unwrap_or_default(),
                    reason: format!(
                        "unreadable, so image {} that rests on it cannot be rebased; forget without --rebase to remove the images whose chains pass through it",
                        i.id
                    ),
                });
            }
            broken.insert(i.id);
            remove.insert(i.id);
        }
    }
    let mut rewrite = Vec::new();
    // Sets whose full goes: the oldest kept member becomes the new full.
    // Sets that keep a full (after a rebase the full's id is no longer the set's; while an
    // interrupted rebase is rolled forward a set can briefly have two fulls).
    let kept_full: BTreeMap<ImageId, ImageId> =
        images.iter().filter(|f| f.kind == Kind::Full && !remove.contains(&f.id)).map(|f| (f.set, f.id)).collect();
    let mut new_full: BTreeMap<ImageId, ImageId> = BTreeMap::new();
    for i in &ordered {
        let full_gone = !kept_full.contains_key(&i.set);
        if !remove.contains(&i.id) && i.kind != Kind::Full && full_gone && !new_full.contains_key(&i.set) {
            new_full.insert(i.set, i.id);
            rewrite.push(Rewrite { image: i.id, new_base: None });
        }
    }
    for i in &ordered {
        if remove.contains(&i.id) || new_full.get(&i.set) == Some(&i.id) {
            continue;
        }
        let Some(base) = i.base else { continue };
        if !remove.contains(&base) {
            continue;
        }
        // Nearest kept ancestor, else the set's new full, else the full the set keeps (after an
        // interrupted rebase the set can hold both the old full and the synthetic one).
        let mut cur = by_id.get(&base).and_then(|b| b.base);
        let new_base = loop {
            match cur {
                Some(a) if !remove.contains(&a) => break Some(a),
                Some(a) => cur = by_id.get(&a).and_then(|b| b.base),
                None => break new_full.get(&i.set).or(kept_full.get(&i.set)).copied(),
            }
        };
        if new_base.is_none() {
            return Err(Error::Index { reason: format!("image {} would lose every base; this is a bug", i.id) });
        }
        rewrite.push(Rewrite { image: i.id, new_base });
    }
    let (forget, keep): (Vec<ImageInfo>, Vec<ImageInfo>) =
        ordered.into_iter().cloned().partition(|i| remove.contains(&i.id));
    let forget_damaged = req.damaged.iter().filter(|d| remove.contains(d) && !by_id.contains_key(d)).copied().collect();
    Ok(ForgetPlan { forget, forget_damaged, keep, rewrite, reasons, rebase: req.rebase })
}

/// The images a retention policy does not keep (per source), added to `remove`, with why each
/// kept image is kept.
fn policy_removals(
    images: &[ImageInfo],
    req: &ForgetRequest,
    remove: &mut BTreeSet<ImageId>,
    reasons: &mut BTreeMap<ImageId, Vec<&'static str>>,
) {
    let mut sources: BTreeMap<&str, Vec<ImageInfo>> = BTreeMap::new();
    for i in images.iter().filter(|i| req.source_id.as_deref().is_none_or(|s| s == i.source_id)) {
        sources.entry(&i.source_id).or_default().push(i.clone());
    }
    for group in sources.values() {
        let kept = retention::apply(group, &req.policy);
        let mut keep: BTreeSet<ImageId> = kept.keys().copied().collect();
        reasons.extend(kept);
        if !req.rebase {
            // A kept image keeps its set's full: a policy never forgets a full under a kept image.
            let sets: BTreeSet<ImageId> = group.iter().filter(|i| keep.contains(&i.id)).map(|i| i.set).collect();
            for full in group.iter().filter(|i| i.kind == Kind::Full && sets.contains(&i.set)) {
                if keep.insert(full.id) {
                    reasons.entry(full.id).or_insert_with(Vec::new).push("full of kept images");
                }
            }
        }
        remove.extend(group.iter().filter(|i| !keep.contains(&i.id)).map(|i| i.id));
    }
}

/// What executing (or, for a dry run, simulating) a plan does to the repository.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForgetReport {
    pub forgotten: usize,
    pub rewritten: usize,
    /// Stored bytes of chunks that no image references afterwards: what `prune` can free.
    pub unreferenced_bytes: u64,
}

/// Writes (or, with `dry_run`, only computes) the new manifest of a rewritten image, adding its
/// reference changes to `delta`; returns its new info.
fn rewrite_one(repo: &Repository, rw: &Rewrite, delta: &mut RefDelta, dry_run: bool) -> Result<ImageInfo> {
    let info = repo.find_image(&rw.image.to_string())?;
    let view = repo.view(&repo.chain(&info)?)?;
    let base = match rw.new_base {
        Some(b) => Some(repo.find_image(&b.to_string())?),
        None => None,
    };
    let base_chain = match &base {
        Some(b) => repo.chain(b)?,
        None => Vec::new(),
    };
    let mut filter = ChangeFilter::new(if base_chain.is_empty() { None } else { Some(repo.view(&base_chain)?) });
    let mut new = info.clone();
    new.generation = repo.writing_generation()?;
    new.base_generation = base_chain.last().map_or(0, |m| m.generation);
    new.base = base.as_ref().map(|b| b.id);
    new.depth = base.as_ref().map_or(0, |b| b.depth + 1);
    if base.is_none() {
        new.kind = Kind::Full;
        new.synthetic = true;
    }
    new.changed_bytes = 0;
    new.changed_zero_bytes = 0;
    // The image's view does not change, so neither do its segment fingerprints.
    let segments = crate::manifest::read_fingerprints(repo.backend(), &info.id)?;
    let mut writer = if dry_run { None } else { Some(ManifestWriter::create(repo.backend(), &info.id)?) };
    let mut count = 0;
    for e in view {
        let e = e?;
        if !filter.is_changed(&e)? {
            continue;
        }
        new.changed_bytes += e.len;
        match e.content {
            Content::Zero => new.changed_zero_bytes += e.len,
            Content::Unused => {}
            Content::Chunk { id, .. } => delta.add(id, info.set, 1),
        }
        count += 1;
        if let Some(w) = writer.as_mut() {
            w.push(&e)?;
        }
    }
    new.extent_count = count;
    catalog::for_each_chunk(repo.backend(), &info.id, |id| delta.add(id, info.set, -1))?;
    if let Some(w) = writer {
        w.finish(&new, &segments)?;
        catalog::add(repo.index(), &new)?;
    }
    Ok(new)
}

/// Reads whole every manifest that a rewrite of the plan needs (the chains of the rewritten
/// images and of their new bases), so that a forget that cannot be carried out fails before it
/// writes anything.
fn preflight(repo: &Repository, plan: &ForgetPlan) -> Result<()> {
    for rw in &plan.rewrite {
        let info = repo.find_image(&rw.image.to_string())?;
        let mut needed = repo.chain(&info)?;
        if let Some(b) = rw.new_base {
            needed.extend(repo.chain(&repo.find_image(&b.to_string())?)?);
        }
        for n in needed {
            crate::manifest::read_info(repo.backend(), &n.id).map_err(|e| Error::CorruptManifest {
                image: n.id.to_string(),
                reason: format!(
                    "{e}; image {} must be rewritten and needs it, so nothing was forgotten (forget the images whose chains pass through it, or restore the file)",
                    rw.image
                ),
            })?;
        }
    }
    Ok(())
}

/// The journal of a forget: the images it removes, newest first (the order of deletion).
fn journal_of(plan: &ForgetPlan, phase: &str) -> Journal {
    let mut newest_first: Vec<&ImageInfo> = plan.forget.iter().collect();
    newest_first.sort_by_key(|i| std::cmp::Reverse((i.created_ms, i.id)));
    // Uncatalogued damaged images have no known time; the images resting on them are newer and
    // go in this plan too, so they go last.
    let forget = newest_first.iter().map(|i| i.id).chain(plan.forget_damaged.iter().copied()).collect();
    Journal { op: "forget".into(), forget, rebase: plan.rebase, phase: phase.into() }
}

/// Carries out a plan on a repository opened for writing (or only measures it with `dry_run`).
pub fn execute(repo: &Repository, plan: &ForgetPlan, dry_run: bool) -> Result<ForgetReport> {
    if !dry_run {
        repo.require_exclusive("forget")?;
    }
    preflight(repo, plan)?;
    let mut delta = RefDelta::default();
    let journal = journal_of(plan, "rewrite");
    if !dry_run {
        repo.index().begin(&journal)?;
    }
    for rw in &plan.rewrite {
        rewrite_one(repo, rw, &mut delta, dry_run)?;
        crate::failpoint::hit!("forget-after-rewrite");
    }
    // References of the forgotten images; one whose manifest cannot be read leaves the counters
    // to be rebuilt from the remaining manifests instead.
    let mut unreadable = !plan.forget_damaged.is_empty();
    for info in &plan.forget {
        if catalog::for_each_chunk(repo.backend(), &info.id, |id| delta.add(id, info.set, -1)).is_err() {
            unreadable = true;
        }
    }
    let unreferenced_bytes = if unreadable { 0 } else { repo.index().counters().unreferenced_after(&delta)? };
    if !dry_run {
        // Catalog first, with the phase that commits the forget: until a manifest is deleted an
        // uncatalogued image is still listed (and restorable) from it, so no reader ever lists
        // an image that is gone; from here on, recovery finishes the deletions.
        let mut txn = Txn::new();
        for info in &plan.forget {
            txn.remove_image(&info.id);
        }
        txn.set_journal(&journal_of(plan, "delete"))?;
        repo.index().commit(txn)?;
        recover::delete_manifests(repo.backend(), &journal)?;
        if unreadable {
            recover::rebuild_counters(repo.backend(), repo.index(), &catalog::manifest_infos(repo.backend())?)?;
        } else {
            let mut txn = Txn::new();
            txn.clear_journal();
            repo.index().counters().apply(delta, txn)?;
        }
        repo.commit_generation()?;
    }
    Ok(ForgetReport {
        forgotten: plan.forget.len() + plan.forget_damaged.len(),
        rewritten: plan.rewrite.len(),
        unreferenced_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(n: u8, kind: Kind, base: Option<u8>, set: u8) -> ImageInfo {
        ImageInfo::fixture(n, kind, base, set, n as u64)
    }

    /// An interrupted rebase left the set with its old full (1) and the synthetic one (3); rolled
    /// forward, the differential on the old full moves onto the synthetic full.
    #[test]
    fn roll_forward_of_an_interrupted_rebase() {
        use Kind::*;
        let images = vec![
            img(1, Full, None, 1),
            img(2, Incremental, Some(1), 1),
            img(3, Full, None, 1),
            img(4, Differential, Some(1), 1),
            img(5, Incremental, Some(3), 1),
        ];
        let req = ForgetRequest { ids: vec![ImageId([1; 16]), ImageId([2; 16])], rebase: true, ..Default::default() };
        let p = plan(&images, &req).unwrap();
        assert_eq!(p.rewrite, vec![Rewrite { image: ImageId([4; 16]), new_base: Some(ImageId([3; 16])) }]);
        assert_eq!(p.forget.len(), 2);
    }

    #[test]
    fn forgetting_a_full_without_rebase_takes_the_whole_set() {
        use Kind::*;
        let images = vec![img(1, Full, None, 1), img(2, Incremental, Some(1), 1), img(3, Full, None, 3)];
        let req = ForgetRequest { ids: vec![ImageId([1; 16])], ..Default::default() };
        let p = plan(&images, &req).unwrap();
        assert_eq!(p.forget.iter().map(|i| i.id.0[0]).collect::<Vec<_>>(), vec![1, 2]);
        assert!(p.rewrite.is_empty());
    }
}
