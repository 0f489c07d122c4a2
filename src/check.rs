//! Proving images restorable: the structure (catalog ↔ manifests ↔ index ↔ packs, chains,
//! counters) and, with read-data, every chunk decoded and re-hashed. Reports each problem and,
//! for every image, whether it restores. Reads only; works beside a running backup.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::extent::Content;
use crate::id::{ChunkId, ImageId, PackId};
use crate::index::{ChunkLoc, ChunkLookup};
use crate::manifest::{open_manifest, ImageInfo};
use crate::pack::{read_trailer_at, FrameReader};
use crate::progress::Progress;
use crate::refs;
use crate::repository::Repository;

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
    let all = repo.images()?;
    let chain = repo.chain(image).unwrap_or_else(|_| vec![image.clone()]);
    let ids: HashSet<ImageId> = chain.iter().map(|i| i.id).collect();
    let chain_infos: Vec<ImageInfo> = all.into_iter().filter(|i| ids.contains(&i.id)).collect();
    run(repo, &chain_infos, Some(image.id), ReadData::All, progress)
}

fn run(
    repo: &Repository,
    images: &[ImageInfo],
    only: Option<ImageId>,
    read: ReadData,
    progress: &dyn Progress,
) -> Result<CheckReport> {
    let started = Instant::now();
    let mut report = CheckReport::default();
    let by_id: HashMap<ImageId, &ImageInfo> = images.iter().map(|i| (i.id, i)).collect();

    // Manifests: each must read whole (checksum) and decode; collect who references what.
    let mut refs_of: HashMap<ChunkId, Vec<ImageId>> = HashMap::new();
    let journal_pending = refs::pending(repo.index())?.is_some();
    // Images that cannot restore for a reason of their own chain, with that reason, and the
    // image whose damage is the root cause.
    let mut bad_images: BTreeMap<ImageId, String> = BTreeMap::new();
    let mut root: BTreeMap<ImageId, ImageId> = BTreeMap::new();
    for info in images {
        let mut read_one = || -> Result<()> {
            let (stored, extents) = open_manifest(repo.backend(), &info.id)?;
            if stored.base != info.base {
                return Err(Error::CorruptManifest {
                    image: info.id.to_string(),
                    reason: "base differs from the catalog".into(),
                });
            }
            for e in extents {
                if let Content::Chunk { id, .. } = e?.content {
                    let v = refs_of.entry(id).or_default();
                    if v.last() != Some(&info.id) {
                        v.push(info.id);
                    }
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
            bad_images.insert(info.id, format!("manifest of {} is damaged or missing", info.id.short()));
            root.insert(info.id, info.id);
        }
    }
    // Chains: every base present.
    for info in images {
        if let Some(base) = info.base {
            if !by_id.contains_key(&base) {
                let detail = format!("its base {base} is not in the repository");
                report.problems.push(Problem { kind: "chain", object: info.id.to_string(), detail, images: vec![] });
                bad_images.insert(info.id, format!("base {} is missing", base.short()));
                root.insert(info.id, info.id);
            }
        }
    }

    // Index and packs: every referenced chunk located, in a pack that exists and lists it.
    let chunk_ids: Vec<ChunkId> = refs_of.keys().copied().collect();
    let mut locs: HashMap<ChunkId, ChunkLoc> = HashMap::new();
    let mut bad_chunks: BTreeMap<ChunkId, String> = BTreeMap::new();
    for batch in chunk_ids.chunks(8192) {
        for (id, loc) in batch.iter().zip(repo.index().locate(batch)?) {
            match loc {
                Some(l) => {
                    locs.insert(*id, l);
                }
                None => {
                    bad_chunks.insert(*id, "not in the index".into());
                }
            }
        }
    }
    let mut by_pack: BTreeMap<PackId, Vec<(ChunkId, ChunkLoc)>> = BTreeMap::new();
    for (id, l) in &locs {
        by_pack.entry(l.pack).or_default().push((*id, *l));
    }
    let indexed_packs: BTreeSet<PackId> = refs::packs(repo.index())?.into_iter().map(|(p, _)| p).collect();
    check_index_health(repo, &mut report);
    let checking_all = only.is_none();
    let mut bad_packs: BTreeMap<PackId, String> = BTreeMap::new();
    // Every pack the index knows, referenced or not: a damaged pack is damage even while no
    // readable manifest needs it (its manifest may be the other casualty).
    let no_chunks = Vec::new();
    // `verify` reads only what its chain needs; `check` every pack.
    let all_packs: BTreeSet<PackId> = match only {
        Some(_) => by_pack.keys().copied().collect(),
        None => by_pack.keys().chain(indexed_packs.iter()).copied().collect(),
    };
    for pack in &all_packs {
        let chunks = by_pack.get(pack).unwrap_or(&no_chunks);
        let path = pack.path();
        let structure = repo.backend().size(&path).and_then(|size| {
            let entries = read_trailer_at(pack, size, |o, n| repo.backend().read_at(&path, o, n))?;
            let listed: HashSet<(ChunkId, u64, u32)> = entries.iter().map(|e| (e.id, e.offset, e.stored_len)).collect();
            Ok(chunks.iter().filter(|(id, l)| !listed.contains(&(*id, l.offset, l.stored_len))).count())
        });
        match structure {
            Ok(0) => {}
            Ok(n) => {
                bad_packs.insert(*pack, format!("its trailer does not list {n} chunks the index places in it"));
            }
            Err(Error::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {
                bad_packs.insert(*pack, "missing".into());
            }
            Err(e) => {
                bad_packs.insert(*pack, e.to_string());
            }
        }
    }

    // Chunk data: every chunk of every pack, referenced or not (damage nobody needs today is
    // still damage), each decoded and re-hashed; packs in parallel.
    let selected: Vec<&PackId> = all_packs
        .iter()
        .filter(|p| !bad_packs.contains_key(p))
        .filter(|p| match read {
            ReadData::None => false,
            ReadData::All => true,
            ReadData::Subset(pct) => (u16::from_le_bytes([p.0[0], p.0[1]]) as f64) < pct / 100.0 * 65536.0,
        })
        .collect();
    let sizes: HashMap<PackId, u64> = refs::packs(repo.index())?.into_iter().map(|(p, r)| (p, r.size)).collect();
    progress.begin("check", selected.iter().map(|p| sizes.get(*p).copied().unwrap_or(0)).sum());
    let results: Vec<(Vec<(Damage, String)>, u64, u64)> = selected
        .par_iter()
        .map(|pack| {
            let mut damaged = Vec::new();
            let (mut n, mut bytes) = (0u64, 0u64);
            let unreadable = |why: String| {
                by_pack
                    .get(*pack)
                    .unwrap_or(&no_chunks)
                    .iter()
                    .map(|(id, _)| (Damage::Chunk(*id), why.clone()))
                    .collect()
            };
            let file = match repo.backend().get(&pack.path()) {
                Ok(f) => f,
                Err(e) => return (unreadable(format!("pack {pack} unreadable: {e}")), 0, 0),
            };
            let entries = match crate::pack::read_trailer(pack, &file) {
                Ok(e) => e,
                Err(e) => return (unreadable(e.to_string()), 0, 0),
            };
            let mut frames = FrameReader::new(&file);
            for e in &entries {
                if let Err(why) = frames.chunk(e) {
                    // Only the copy the index points at decides restores; another damaged copy
                    // is reported all the same.
                    damaged.push((Damage::Chunk(e.id), format!("{why} (pack {pack}, offset {})", e.offset)));
                }
                n += 1;
            }
            bytes += frames.frame_bytes;
            // A pack is named by the hash of its bytes: this catches a flip that decodes to the
            // same chunk (zstd padding bits) or lies outside every chunk.
            if damaged.is_empty() && PackId::of(&file) != **pack {
                damaged.push((
                    Damage::Pack(**pack),
                    "no longer matches its name (altered bytes that no chunk decodes differently)".to_string(),
                ));
            }
            progress.advance(file.len() as u64);
            (damaged, n, bytes)
        })
        .collect();
    progress.end();
    report.packs_read = selected.len();
    for (damaged, n, bytes) in results {
        report.chunks_read += n;
        report.bytes_read += bytes;
        for (damage, why) in damaged {
            match damage {
                // Altered bytes that change no chunk: damage to report, no image affected.
                Damage::Pack(pack) => report.problems.push(Problem {
                    kind: "pack",
                    object: pack.to_string(),
                    detail: why,
                    images: vec![],
                }),
                Damage::Chunk(id) => {
                    bad_chunks.insert(id, why);
                }
            }
        }
    }
    for (pack, why) in &bad_packs {
        for (id, _) in by_pack.get(pack).unwrap_or(&no_chunks) {
            bad_chunks.entry(*id).or_insert_with(|| format!("pack {pack} is {why}"));
        }
    }

    if checking_all {
        check_orphans(repo, &indexed_packs, &refs_of, &locs, &bad_packs, &mut report)?;
    }

    // A bad chunk with an intact copy in another pack is damage to report, but restores use
    // the copy, so it breaks no image.
    let copies = crate::copies::Copies::default();
    let ids: Vec<ChunkId> = bad_chunks.keys().copied().collect();
    for id in ids {
        if let Some((alt, _)) = copies.intact(repo, &id, locs.get(&id))? {
            let why = bad_chunks.remove(&id).unwrap_or_default();
            let detail = format!("{why}; an intact copy in pack {} is used instead", alt.pack);
            report.problems.push(Problem { kind: "chunk", object: id.to_string(), detail, images: vec![] });
        }
    }
    // Which images do the bad chunks affect? Only those whose resolved view still uses one (a
    // later delta may have replaced it), so no unaffected image is reported damaged.
    let suspects: BTreeSet<ImageId> =
        bad_chunks.keys().flat_map(|c| refs_of.get(c).cloned().unwrap_or_default()).collect();
    let mut affected: BTreeMap<ImageId, BTreeSet<ChunkId>> = BTreeMap::new();
    for info in images {
        if bad_images.contains_key(&info.id) || only.is_some_and(|o| o != info.id) {
            continue;
        }
        let chain = match chain_of(info, &by_id) {
            Ok(c) => c,
            Err(broken) => {
                // Attribute it to the image whose manifest or base broke the chain.
                let cause = root.get(&broken).copied().unwrap_or(broken);
                bad_images.insert(info.id, format!("its chain includes damaged image {}", cause.short()));
                root.insert(info.id, cause);
                continue;
            }
        };
        if let Some(r) = chain.iter().find_map(|c| root.get(&c.id).copied()) {
            bad_images.insert(info.id, format!("its chain includes damaged image {}", r.short()));
            root.insert(info.id, r);
            continue;
        }
        if !chain.iter().any(|c| suspects.contains(&c.id)) {
            continue;
        }
        let used = repo.view(&chain).and_then(|view| {
            let mut hit = BTreeSet::new();
            for e in view {
                if let Content::Chunk { id, .. } = e?.content {
                    if bad_chunks.contains_key(&id) {
                        hit.insert(id);
                    }
                }
            }
            Ok(hit)
        });
        match used {
            Ok(hit) if hit.is_empty() => {}
            Ok(hit) => {
                affected.insert(info.id, hit);
            }
            Err(e) => {
                bad_images.insert(info.id, e.to_string());
            }
        }
    }
    for (id, why) in &bad_chunks {
        let imgs: Vec<ImageId> = affected.iter().filter(|(_, c)| c.contains(id)).map(|(i, _)| *i).collect();
        report.problems.push(Problem { kind: "chunk", object: id.to_string(), detail: why.clone(), images: imgs });
    }
    for (pack, why) in &bad_packs {
        let imgs: Vec<ImageId> = affected
            .iter()
            .filter(|(_, c)| by_pack.get(pack).unwrap_or(&no_chunks).iter().any(|(id, _)| c.contains(id)))
            .map(|(i, _)| *i)
            .collect();
        report.problems.push(Problem { kind: "pack", object: pack.to_string(), detail: why.clone(), images: imgs });
    }
    for p in report.problems.iter_mut().filter(|p| p.kind == "manifest" || p.kind == "chain") {
        let cause = ImageId::parse(&p.object);
        p.images = root.iter().filter(|(_, r)| Some(**r) == cause).map(|(i, _)| *i).collect();
    }

    // Counters (only when no interrupted operation is waiting to rebuild them).
    if only.is_none() && !journal_pending {
        check_counters(repo, images, &refs_of, &locs, &mut report)?;
    }

    for info in images.iter().filter(|i| only.is_none_or(|o| o == i.id)) {
        let mut reasons = Vec::new();
        if let Some(why) = bad_images.get(&info.id) {
            reasons.push(why.clone());
        }
        if let Some(chunks) = affected.get(&info.id) {
            reasons.push(format!(
                "{} chunk{} it needs are damaged or missing",
                chunks.len(),
                if chunks.len() == 1 { "" } else { "s" }
            ));
        }
        report.images.push(ImageStatus { id: info.id, restorable: reasons.is_empty(), reasons });
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// What `--read-data` found wrong in a pack.
enum Damage {
    Chunk(ChunkId),
    /// Bytes that no chunk decodes differently (the pack no longer matches its name).
    Pack(PackId),
}

/// The chain of `info`, full first, from the images' bases; `Err` names the image whose base is
/// missing or whose chain does not start at a full (the structure checks report it).
fn chain_of(info: &ImageInfo, by_id: &HashMap<ImageId, &ImageInfo>) -> std::result::Result<Vec<ImageInfo>, ImageId> {
    let mut chain = vec![info.clone()];
    while let Some(base) = chain.last().and_then(|i| i.base) {
        match by_id.get(&base) {
            Some(b) if chain.len() <= by_id.len() => chain.push((*b).clone()),
            _ => return Err(chain.last().map_or(info.id, |i| i.id)),
        }
    }
    if chain.last().is_some_and(|full| full.kind != crate::manifest::Kind::Full) {
        return Err(chain.last().map_or(info.id, |i| i.id));
    }
    chain.reverse();
    Ok(chain)
}

/// An index that is incomplete or older than the repository cannot vouch for anything.
fn check_index_health(repo: &Repository, report: &mut CheckReport) {
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
fn check_orphans(
    repo: &Repository,
    indexed_packs: &BTreeSet<PackId>,
    refs_of: &HashMap<ChunkId, Vec<ImageId>>,
    locs: &HashMap<ChunkId, ChunkLoc>,
    bad_packs: &BTreeMap<PackId, String>,
    report: &mut CheckReport,
) -> Result<()> {
    // The indexed copy is missing or in a pack that is missing or damaged.
    let unserved = |id: &ChunkId| locs.get(id).is_none_or(|l| bad_packs.contains_key(&l.pack));
    for path in repo.backend().list("packs")? {
        let name = path.rsplit('/').next().unwrap_or_default();
        // A file not named like a pack is nothing of Strata's: prune leaves it, and so does check.
        let Some(pack) = PackId::parse(name) else { continue };
        if indexed_packs.contains(&pack) {
            continue;
        }
        let entries = repo
            .backend()
            .size(&path)
            .and_then(|size| read_trailer_at(&pack, size, |o, n| repo.backend().read_at(&path, o, n)));
        let entries = match entries {
            Ok(e) => e,
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
            entries.iter().map(|e| e.id).filter(|id| refs_of.contains_key(id) && unserved(id)).collect();
        if needed.is_empty() {
            report.orphan_packs.push(path);
            continue;
        }
        let images: BTreeSet<ImageId> = needed.iter().flat_map(|c| refs_of[c].iter().copied()).collect();
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
fn check_counters(
    repo: &Repository,
    images: &[ImageInfo],
    refs_of: &HashMap<ChunkId, Vec<ImageId>>,
    locs: &HashMap<ChunkId, ChunkLoc>,
    report: &mut CheckReport,
) -> Result<()> {
    let set_of: HashMap<ImageId, ImageId> = images.iter().map(|i| (i.id, i.set)).collect();
    let mut expect: BTreeMap<ImageId, (u64, u64)> = BTreeMap::new();
    for (chunk, imgs) in refs_of {
        let Some(l) = locs.get(chunk) else { continue };
        let sets: BTreeSet<ImageId> = imgs.iter().filter_map(|i| set_of.get(i).copied()).collect();
        for s in &sets {
            let e = expect.entry(*s).or_default();
            e.0 += l.charged();
            if sets.len() == 1 {
                e.1 += l.charged();
            }
        }
    }
    for (set, (stored, exclusive)) in expect {
        let c = refs::set_counters(repo.index(), &set)?;
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
