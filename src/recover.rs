//! Recovery: finishing what an interrupted operation left (as its journal says), and rebuilding
//! the index from the packs and manifests alone (`rebuild-index`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::crypto::Protection;
use crate::error::{Error, Result};
use crate::id::ImageId;
use crate::index::{ChunkLookup, Index, Journal, RefDelta, Txn};
use crate::manifest::{catalog, ImageInfo};
use crate::pack::stored_trailer;
use crate::storage::site::{Reflects, Site};
use crate::storage::{generation, lock, paths, sync_dir, Backend};

/// Finishes what an interrupted operation left, exactly as its journal says: the catalog
/// follows the manifests, a forget that had begun deleting is finished (the listed manifests
/// go), one that was still rewriting is undone (its rewrites stand: each restores what its
/// image always restored), and the reference counters are rebuilt from the manifests.
pub(crate) fn finish(backend: &dyn Backend, index: &Index, journal: &Journal) -> Result<()> {
    if journal.op == "forget" && journal.phase == "delete" {
        delete_manifests(backend, journal)?;
    }
    let committed = index.generation()?;
    let manifests = catalog::manifest_infos(backend)?;
    let catalogued: HashMap<ImageId, ImageInfo> = catalog::catalogued(index)?.into_iter().map(|i| (i.id, i)).collect();
    let mut txn = Txn::new();
    for m in &manifests {
        // An older copy put back never replaces what the catalog knew (check reports it).
        if catalogued.get(&m.id) != Some(m) && catalog::replayed(m, catalogued.get(&m.id), committed).is_none() {
            catalog::put(&mut txn, m)?;
        }
    }
    // Catalogued images whose manifests a forget deleted leave the catalog; any other
    // catalogued image stays (a damaged one is reported by check, and can be forgotten).
    let listed: HashSet<ImageId> = paths::manifest_ids(backend)?.into_iter().collect();
    for id in catalogued.keys().filter(|id| !listed.contains(id) && journal.forget.contains(id)) {
        txn.remove_image(id);
    }
    index.commit(txn)?;
    rebuild_counters(backend, index, &manifests)
}

/// Deletes the manifests a forget's journal lists, in its order (a manifest already gone is
/// fine: an earlier, interrupted run deleted it).
pub(crate) fn delete_manifests(backend: &dyn Backend, journal: &Journal) -> Result<()> {
    for id in &journal.forget {
        match backend.remove(&paths::manifest(id)) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        crate::failpoint::hit!("forget-after-delete");
    }
    Ok(())
}

/// Recomputes every owner record and counter from the manifests of `images`.
pub(crate) fn rebuild_counters(backend: &dyn Backend, index: &Index, images: &[ImageInfo]) -> Result<()> {
    let mut refs = RefDelta::default();
    for info in images {
        catalog::for_each_chunk(backend, &info.id, |id| refs.add(id, info.set, 1))?;
    }
    index.counters().rebuild(refs.into_owners())
}

/// What `rebuild_index` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub packs: usize,
    pub chunks: usize,
    pub images: usize,
    pub unreadable_packs: Vec<(String, String)>,
    pub unreadable_manifests: Vec<ImageId>,
    pub old_index: Option<PathBuf>,
}

/// Recreates the index from the packs' trailers and the manifests alone, for an index that is
/// lost or damaged. The new index is built beside the old one (`index.rebuild-<pid>`) and
/// switched in only once complete; the old one is moved aside (`index.old-<ms>`), never
/// deleted. A rebuild killed part-way leaves the old index in place (or, killed between the two
/// renames, no index, which every command reports). Packs or manifests that cannot be read are
/// reported and left in place.
/// `backend` serves the repository's objects (sealed ones opened: see `crypto::objects`), and
/// `protection` opens pack trailers.
pub fn rebuild_index(path: &Path, backend: &dyn Backend, protection: &Protection) -> Result<RebuildReport> {
    crate::config::read(path)?;
    let _lock = lock::acquire(path, "rebuild-index")?;
    remove_dead_builds(path)?;
    let building = path.join(format!("index.rebuild-{}", std::process::id()));
    let next = generation::read(backend).unwrap_or(0).max(old_generation(path, protection)) + 1;
    let mut report = RebuildReport::default();
    let index = Index::create(&building, protection)?;
    fill(backend, protection, &index, &mut report)?;
    let mut txn = Txn::new();
    txn.mark_complete();
    txn.set_generation(next);
    index.commit(txn)?;
    crate::failpoint::hit!("rebuild-before-switch");
    drop(index);
    let index_dir = path.join(paths::INDEX);
    crate::failpoint::step!();
    if index_dir.exists() {
        let aside = path.join(format!("index.old-{}", crate::timefmt::now_ms()));
        std::fs::rename(&index_dir, &aside).map_err(|e| Error::io("move aside", &index_dir, e))?;
        report.old_index = Some(aside);
    }
    crate::failpoint::hit!("rebuild-between-renames");
    crate::failpoint::step!();
    std::fs::rename(&building, &index_dir).map_err(|e| Error::io("rename", &building, e))?;
    sync_dir(path)?;
    generation::write(backend, next)?;
    Ok(report)
}

/// The command a process refreshing a cache names in the cache's lock.
const REFRESH: &str = "refresh the cache";

/// Brings this machine's cache of a bucket's index up to date and returns the generation it
/// reflects (a local repository: its generation, nothing to do). What the cache reflects is
/// recorded beside it (`site::Reflects`): when the bucket holds exactly that, the cache is
/// current; when it holds more (other machines' backups), the new packs' trailers and the new
/// manifests are added; when an object is gone or a manifest was rewritten by a forget or prune
/// elsewhere, or there is no record or an interrupted backup's journal, the cache is rebuilt
/// whole; what can only be damage (docs/DESIGN.md, "Object storage") is kept as the cache knew
/// it, as a local repository's index keeps it, so readers meet the damage and `check` reports
/// it. An object that cannot be read is not recorded as reflected, so the next command tries
/// it again. `locked`: the caller already holds the cache's lock (a writer); otherwise it
/// is taken when work is needed, and the state looked at again under it.
pub(crate) fn update_cache(
    site: &Site,
    work: &Path,
    backend: &dyn Backend,
    protection: &Protection,
    locked: bool,
) -> Result<CacheState> {
    if !site.is_remote() {
        return Ok(CacheState { generation: generation::read(backend)?, unreflected: HashSet::new() });
    }
    let done = |generation| Ok(CacheState { generation, unreflected: HashSet::new() });
    let _cache = if locked {
        None
    } else {
        if let Some(g) = current(site, work, backend)? {
            return done(g);
        }
        match lock::acquire(work, REFRESH) {
            Ok(l) => Some(l),
            // A writer of this machine holds the cache (a backup, for as long as it runs): a
            // reader goes on with the cache as it is, which lags behind the bucket as a read
            // started a moment earlier would.
            Err(Error::RepositoryLocked { holder })
                if holder.command != REFRESH && work.join(paths::INDEX).exists() && Reflects::read(work).is_some() =>
            {
                let index = Index::open_read_only(&work.join(paths::INDEX), protection)?;
                return done(index.generation()?);
            }
            Err(Error::RepositoryLocked { .. }) => {
                Some(lock::acquire_waiting(work, REFRESH, std::time::Duration::from_secs(3600))?)
            }
            Err(e) => return Err(e),
        }
    };
    // The generation before the listing: a writer that finishes meanwhile changes it, and the
    // next command looks again.
    let generation = generation::read(backend)?;
    let now = site.listing()?.unwrap_or_default();
    let index_dir = work.join(paths::INDEX);
    let rebuilt = |report: RebuildReport| Ok(CacheState { generation, unreflected: report.unreadable_paths() });
    let Some(was) = Reflects::read(work).filter(|_| index_dir.exists()) else {
        return rebuilt(refresh_cache(site, work, backend, protection)?);
    };
    if was.generation == generation && was.objects == now {
        return done(generation);
    }
    // A pack that could not be read before and reads now may hold chunks that manifests already
    // counted (as missing): only a rebuild counts them right.
    let unread_pack_reads = was.unread.iter().filter(|p| now.contains_key(*p)).any(|p| {
        let id = p.rsplit('/').next().and_then(crate::id::PackId::parse);
        p.starts_with("packs/") && id.is_some_and(|id| stored_trailer(backend, protection, &id, p).is_ok())
    });
    let gone: Vec<&String> = was.objects.keys().filter(|p| !now.contains_key(*p)).collect();
    let added = now.keys().any(|p| !was.objects.contains_key(p));
    let changed: Vec<&String> =
        was.objects.iter().filter(|(p, v)| now.get(*p).is_some_and(|n| n != *v)).map(|(p, _)| p).collect();
    // Objects go and manifests are rewritten only by forget and prune, which write a new
    // generation and, when they repack, new packs. An object gone or changed while the generation
    // stayed and nothing was added is damage (or an interrupted forget or prune, which its next
    // run finishes): the cache keeps what it knew of it, as a local index does, so that readers
    // and `check` name what is missing. A pack is never rewritten (its name is its content's);
    // a manifest that reads but is older than the catalog's copy is a replay, damage too.
    let damage_only = was.generation == generation && !added;
    let rewritten = !damage_only && !changed.is_empty() && {
        let index = Index::open_read_only(&index_dir, protection)?;
        let known: HashMap<ImageId, ImageInfo> = catalog::catalogued(&index)?.into_iter().map(|i| (i.id, i)).collect();
        changed.iter().any(|p| {
            let Some(id) = p.strip_prefix("images/").and_then(ImageId::parse) else { return false };
            crate::manifest::read_info(backend, &id)
                .is_ok_and(|m| known.get(&id).is_none_or(|c| catalog::replayed(&m, Some(c), 0).is_none()))
        })
    };
    if unread_pack_reads || rewritten || (!damage_only && !gone.is_empty()) {
        return rebuilt(refresh_cache(site, work, backend, protection)?);
    }
    // What is gone or changed stays recorded as the cache knew it: looked at again next time,
    // so that a forget's rewrite seen before its generation (damage, then) is taken in once the
    // generation is written, and a cache that lacks what is gone is rebuilt once a forget or
    // prune writes one.
    let mut reflected = now;
    for p in gone.iter().chain(&changed) {
        reflected.insert((*p).clone(), was.objects[*p].clone());
    }
    match add_to_cache(&index_dir, backend, protection, &was, &reflected, generation)? {
        None => rebuilt(refresh_cache(site, work, backend, protection)?),
        Some(unreadable) => {
            Reflects::of(generation, reflected, &unreadable).write(work)?;
            Ok(CacheState { generation, unreflected: unreadable })
        }
    }
}

/// What `update_cache` left: the generation the cache reflects, and the objects in the bucket
/// it could not read (which a writer alone in the bucket must not record as reflected when it
/// records the bucket after its own writes).
pub(crate) struct CacheState {
    pub generation: u64,
    pub unreflected: HashSet<String>,
}

/// The generation the cache reflects, when it is current (one listing and one read, no lock).
fn current(site: &Site, work: &Path, backend: &dyn Backend) -> Result<Option<u64>> {
    let Some(r) = Reflects::read(work) else { return Ok(None) };
    if !work.join(paths::INDEX).exists() {
        return Ok(None);
    }
    let generation = generation::read(backend)?;
    let now = site.listing()?.unwrap_or_default();
    Ok((r.generation == generation && r.objects == now).then_some(generation))
}

/// Adds what the bucket gained since `was` to the cache's index: the trailers of packs it does
/// not know, and manifests it has not catalogued, each with its references in one batch (so a
/// killed update leaves no manifest half counted, and the next one skips what is done). A chunk
/// the index already knows keeps its place, so the counters computed with it stay true; a new
/// pack with only such chunks (an interrupted prune's, or a backup's that lost a race) is left
/// out, as an orphan for prune. Returns the objects that could not be read, or `None` when the
/// cache must be rebuilt instead (it holds an interrupted backup's journal).
fn add_to_cache(
    index_dir: &Path,
    backend: &dyn Backend,
    n: &Protection,
    was: &Reflects,
    now: &std::collections::BTreeMap<String, String>,
    generation: u64,
) -> Result<Option<HashSet<String>>> {
    let index = Index::open(index_dir, n)?;
    if index.journal()?.is_some() || !index.is_complete()? {
        return Ok(None);
    }
    let mut unreadable = HashSet::new();
    let new: Vec<&String> = now.keys().filter(|p| !was.objects.contains_key(*p)).collect();
    let known_packs: HashSet<crate::id::PackId> = index.packs()?.into_iter().map(|(id, _)| id).collect();
    for path in new.iter().filter(|p| p.starts_with("packs/")) {
        let Some(pack) = path.rsplit('/').next().and_then(crate::id::PackId::parse) else { continue };
        if known_packs.contains(&pack) {
            continue;
        }
        let Ok((size, entries)) = stored_trailer(backend, n, &pack, path) else {
            unreadable.insert(path.to_string());
            continue;
        };
        let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
        let fresh: Vec<_> =
            entries.iter().zip(index.locate(&ids)?).filter(|(_, at)| at.is_none()).map(|(e, _)| *e).collect();
        if !fresh.is_empty() {
            let mut txn = Txn::new();
            txn.add_pack(pack, size, &fresh);
            index.commit(txn)?;
        }
    }
    let catalogued: HashSet<ImageId> = index.catalog()?.into_iter().map(|(id, _)| id).collect();
    for path in new.iter().filter(|p| p.starts_with("images/")) {
        let Some(id) = path.strip_prefix("images/").and_then(ImageId::parse) else { continue };
        if catalogued.contains(&id) {
            continue;
        }
        let mut chunks = Vec::new();
        let read = crate::manifest::read_info(backend, &id)
            .and_then(|info| catalog::for_each_chunk(backend, &id, |c| chunks.push(c)).map(|_| info));
        let Ok(info) = read else {
            unreadable.insert(path.to_string());
            continue;
        };
        // Only chunks the index knows are counted, as a rebuild counts them; one it does not
        // know (in a pack that is lost or could not be read) is for `check` to report.
        let mut refs = RefDelta::default();
        for (c, at) in chunks.iter().zip(index.locate(&chunks)?) {
            if at.is_some() {
                refs.add(*c, info.set, 1);
            }
        }
        let mut txn = Txn::new();
        catalog::put(&mut txn, &info)?;
        index.counters().apply(refs, txn)?;
    }
    let mut txn = Txn::new();
    txn.set_generation(generation);
    index.commit(txn)?;
    Ok(Some(unreadable))
}

/// Rebuilds this machine's cache of a bucket's index whole: from the bucket's pack trailers and
/// manifests beside the old one, then switched in, and the old one removed (a cache holds
/// nothing that the bucket does not), and records what it reflects: what it listed first, less
/// what could not be read (which the next command tries again). The caller holds the cache's
/// lock.
pub(crate) fn refresh_cache(
    site: &Site,
    work: &Path,
    backend: &dyn Backend,
    protection: &Protection,
) -> Result<RebuildReport> {
    // Read before anything else: what is added meanwhile, the next command adds.
    let generation = generation::read(backend)?;
    let listing = site.listing()?.unwrap_or_default();
    let _ = std::fs::remove_file(work.join("seen-generation")); // the record of strata before shared locks
    remove_dead_builds(work)?;
    // An old cache a killed refresh moved aside and did not get to remove.
    for entry in std::fs::read_dir(work).map_err(|e| Error::io("list", work, e))?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("index.old-") {
            let p = entry.path();
            std::fs::remove_dir_all(&p).map_err(|e| Error::io("remove", &p, e))?;
        }
    }
    let building = work.join(format!("index.rebuild-{}", std::process::id()));
    let mut report = RebuildReport::default();
    let index = Index::create(&building, protection)?;
    fill(backend, protection, &index, &mut report)?;
    let mut txn = Txn::new();
    txn.mark_complete();
    txn.set_generation(generation);
    index.commit(txn)?;
    drop(index);
    let index_dir = work.join(paths::INDEX);
    if index_dir.exists() {
        let aside = work.join(format!("index.old-{}", std::process::id()));
        crate::failpoint::step!();
        std::fs::rename(&index_dir, &aside).map_err(|e| Error::io("move aside", &index_dir, e))?;
        std::fs::remove_dir_all(&aside).map_err(|e| Error::io("remove", &aside, e))?;
    }
    crate::failpoint::step!();
    std::fs::rename(&building, &index_dir).map_err(|e| Error::io("rename", &building, e))?;
    sync_dir(work)?;
    Reflects::of(generation, listing, &report.unreadable_paths()).write(work)?;
    Ok(report)
}

impl RebuildReport {
    /// The paths of the packs and manifests that could not be read.
    fn unreadable_paths(&self) -> HashSet<String> {
        let packs = self.unreadable_packs.iter().map(|(p, _)| p.clone());
        packs.chain(self.unreadable_manifests.iter().map(paths::manifest)).collect()
    }
}

/// Builds left by killed rebuilds: the caller holds the lock, so no live process owns them.
fn remove_dead_builds(path: &Path) -> Result<()> {
    for entry in std::fs::read_dir(path).map_err(|e| Error::io("list", path, e))?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("index.rebuild-") {
            let p = entry.path();
            std::fs::remove_dir_all(&p).map_err(|e| Error::io("remove", &p, e))?;
        }
    }
    Ok(())
}

/// The generation the current index records, when it can be read (a rebuild must end above it,
/// so that a copy of it put back later is recognised as stale).
fn old_generation(path: &Path, protection: &Protection) -> u64 {
    Index::open_read_only(&path.join(paths::INDEX), protection).and_then(|i| i.generation()).unwrap_or(0)
}

/// Adds every readable pack trailer and manifest to the (new, empty) index, then the counters.
fn fill(backend: &dyn Backend, n: &Protection, index: &Index, report: &mut RebuildReport) -> Result<()> {
    // Manifests before packs: every manifest listed then has its packs in the listing after
    // (a backup uploads them first), even while backups run.
    let manifest_ids = paths::manifest_ids(backend)?;
    let manifests: Vec<ImageInfo> =
        manifest_ids.iter().filter_map(|id| crate::manifest::read_info(backend, id).ok()).collect();
    for file in paths::pack_files(backend)? {
        let Some(pack) = file.id else {
            report.unreadable_packs.push((file.path, "not a pack name".into()));
            continue;
        };
        match stored_trailer(backend, n, &pack, &file.path) {
            Ok((size, entries)) => {
                report.chunks += entries.len();
                index.add_pack(pack, size, &entries)?;
                report.packs += 1;
            }
            Err(e) => report.unreadable_packs.push((file.path, e.to_string())),
        }
    }
    let mut txn = Txn::new();
    for m in &manifests {
        catalog::put(&mut txn, m)?;
    }
    let readable: HashSet<ImageId> = manifests.iter().map(|m| m.id).collect();
    report.unreadable_manifests = manifest_ids.into_iter().filter(|id| !readable.contains(id)).collect();
    index.commit(txn)?;
    rebuild_counters(backend, index, &manifests)?;
    report.images = manifests.len();
    Ok(())
}
