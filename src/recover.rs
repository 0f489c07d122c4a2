//! Recovery: finishing what an interrupted operation left (as its journal says), and rebuilding
//! the index from the packs and manifests alone (`rebuild-index`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::crypto::Protection;
use crate::error::{Error, Result};
use crate::id::ImageId;
use crate::index::{Index, Journal, RefDelta, Txn};
use crate::manifest::{catalog, ImageInfo};
use crate::pack::stored_trailer;
use crate::storage::site::Site;
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
            Err(Error::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {}
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

/// Brings this machine's cache of a bucket's index up to date: rebuilt from the bucket's pack
/// trailers and manifests beside the old one, then switched in, and the old one removed (a
/// cache holds nothing that the bucket does not). The caller holds the cache's lock. With
/// `strict` (a command opening the repository), a pack or manifest that cannot be read fails
/// the refresh and nothing is recorded, so that no writer builds on an index that lacks what
/// the bucket holds; `rebuild-index` accepts and reports them, as for a local repository.
pub(crate) fn refresh_cache(
    site: &Site,
    work: &Path,
    backend: &dyn Backend,
    protection: &Protection,
    strict: bool,
) -> Result<RebuildReport> {
    // Read before anything else: a writer that finishes meanwhile changes it, and the next
    // command refreshes again.
    let version = site.generation_version()?;
    let generation = generation::read(backend)?;
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
    if strict && !(report.unreadable_packs.is_empty() && report.unreadable_manifests.is_empty()) {
        drop(index);
        let _ = std::fs::remove_dir_all(&building);
        let mut what: Vec<String> = report.unreadable_packs.iter().map(|(p, e)| format!("{p}: {e}")).collect();
        what.extend(report.unreadable_manifests.iter().map(|id| format!("images/{id}")));
        return Err(Error::CacheIncomplete {
            location: site.name().display().to_string(),
            unreadable: what.join("; "),
        });
    }
    let mut txn = Txn::new();
    txn.mark_complete();
    txn.set_generation(generation);
    index.commit(txn)?;
    drop(index);
    let index_dir = work.join(paths::INDEX);
    if index_dir.exists() {
        let aside = work.join(format!("index.old-{}", std::process::id()));
        std::fs::rename(&index_dir, &aside).map_err(|e| Error::io("move aside", &index_dir, e))?;
        std::fs::remove_dir_all(&aside).map_err(|e| Error::io("remove", &aside, e))?;
    }
    std::fs::rename(&building, &index_dir).map_err(|e| Error::io("rename", &building, e))?;
    sync_dir(work)?;
    site.record_seen(work, &version)?;
    Ok(report)
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
    let manifests = catalog::manifest_infos(backend)?;
    let mut txn = Txn::new();
    for m in &manifests {
        catalog::put(&mut txn, m)?;
    }
    let readable: HashSet<ImageId> = manifests.iter().map(|m| m.id).collect();
    report.unreadable_manifests =
        paths::manifest_ids(backend)?.into_iter().filter(|id| !readable.contains(id)).collect();
    index.commit(txn)?;
    rebuild_counters(backend, index, &manifests)?;
    report.images = manifests.len();
    Ok(())
}
