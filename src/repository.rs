//! The repository facade: creates and opens repositories and hands out the pieces (config,
//! storage, index, catalog) that the operations work with. Operations live in their own modules.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::{Backend, LocalDir};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::id::{ImageId, PackId};
use crate::index::{image_key, put_image, Batch, RocksIndex};
use crate::lock::RepoLock;
use crate::manifest::{open_manifest, peek_info, read_info, ImageInfo, Kind, Overlay, View};
use crate::pack::read_trailer_at;
use crate::refs;

pub struct Repository {
    root: PathBuf,
    config: Config,
    backend: Arc<dyn Backend>,
    index: RocksIndex,
    health: IndexHealth,
    /// Temporary files of dead writers that opening for writing removed: (count, bytes).
    temporaries_removed: (usize, u64),
    _lock: Option<RepoLock>,
}

/// Whether the index can be trusted to know everything the packs and manifests hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexHealth {
    Current,
    /// Never finished: a rebuild that was interrupted, or an index of an older strata.
    Incomplete,
    /// Older than the repository: records that a finished command wrote are missing (a damaged
    /// write-ahead log, an older copy put back).
    Stale {
        index: u64,
        repository: u64,
    },
}

impl IndexHealth {
    /// The error a command that must trust the index gives for an unhealthy one.
    pub fn require_current(&self, index_path: &Path) -> Result<()> {
        match *self {
            IndexHealth::Current => Ok(()),
            IndexHealth::Incomplete => Err(Error::IndexUnusable {
                path: index_path.into(),
                reason: "it is incomplete: a rebuild was interrupted, or an older strata made it".into(),
            }),
            IndexHealth::Stale { index, repository } => Err(Error::IndexStale { index, repository }),
        }
    }
}

/// The generation file (docs/FORMAT.md, "generation"): the number of the last writing command
/// that finished, written after that command's last index batch. The index records the same
/// number in that batch, so an index whose number is lower lost records that a finished command
/// wrote: its write-ahead log was damaged, or an older copy was put back.
const GENERATION_FILE: &str = "generation";
const GENERATION_MAGIC: &[u8; 8] = b"STRATAGN";

fn read_generation(backend: &dyn Backend) -> Result<u64> {
    let bytes = match backend.get(GENERATION_FILE) {
        Ok(b) => b,
        Err(Error::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let bad =
        || Error::BadConfig { reason: "the generation file is damaged; `strata rebuild-index` writes it again".into() };
    if bytes.len() != 24 || &bytes[..8] != GENERATION_MAGIC || blake3::hash(&bytes[..16]).as_bytes()[..8] != bytes[16..]
    {
        return Err(bad());
    }
    Ok(u64::from_le_bytes(bytes[8..16].try_into().map_err(|_| bad())?))
}

fn write_generation(backend: &dyn Backend, generation: u64) -> Result<()> {
    // magic [8] | generation u64 LE | first 8 bytes of BLAKE3 of the 16 bytes before
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(GENERATION_MAGIC);
    b.extend_from_slice(&generation.to_le_bytes());
    let sum = blake3::hash(&b);
    b.extend_from_slice(&sum.as_bytes()[..8]);
    backend.put(GENERATION_FILE, &b)
}

fn health_of(index: &RocksIndex, repository_generation: u64) -> Result<IndexHealth> {
    if !index.is_complete()? {
        return Ok(IndexHealth::Incomplete);
    }
    let g = index.generation()?;
    Ok(if g < repository_generation {
        IndexHealth::Stale { index: g, repository: repository_generation }
    } else {
        IndexHealth::Current
    })
}

/// The one item of `items` whose id starts with `spec` (case-insensitive): none is
/// `ImageNotFound`, several are `AmbiguousImage` (listing them) unless the spec is empty.
pub(crate) fn find_by_prefix<T>(spec: &str, items: Vec<T>, id: impl Fn(&T) -> ImageId) -> Result<T> {
    let spec_l = spec.to_ascii_lowercase();
    let mut matches: Vec<T> = items.into_iter().filter(|i| id(i).to_string().starts_with(&spec_l)).collect();
    match matches.len() {
        1 => matches.pop().ok_or_else(|| Error::ImageNotFound { spec: spec.into() }),
        0 => Err(Error::ImageNotFound { spec: spec.into() }),
        _ if spec_l.is_empty() => Err(Error::ImageNotFound { spec: spec.into() }),
        _ => Err(Error::AmbiguousImage {
            spec: spec.into(),
            candidates: matches.iter().map(|i| id(i).short()).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// An image whose manifest cannot be read.
#[derive(Clone, Debug, PartialEq)]
pub struct DamagedImage {
    pub id: ImageId,
    /// What the manifest's footer says, when it still decodes (the damage is elsewhere).
    pub info: Option<ImageInfo>,
    pub reason: String,
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

/// Options fixed when a repository is created.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub chunker: crate::config::ChunkerParams,
    pub compression_level: i32,
    /// A pack is sealed once it holds this many bytes.
    pub pack_target_size: u64,
    /// Chains deeper than this get a synthetic full (0: unbounded).
    pub max_chain_depth: u32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: Default::default(),
            compression_level: 3,
            pack_target_size: 32 * 1024 * 1024,
            max_chain_depth: crate::config::DEFAULT_MAX_CHAIN_DEPTH,
        }
    }
}

fn read_config(root: &Path) -> Result<Config> {
    let path = root.join("config");
    match std::fs::read(&path) {
        Ok(bytes) => Config::decode(&bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::NotADirectory => {
            if root.join("packs").is_dir() || root.join("images").is_dir() {
                return Err(Error::ConfigMissing { path: root.into() });
            }
            Err(Error::NotARepository { path: root.into() })
        }
        Err(e) => Err(Error::io("read", &path, e)),
    }
}

impl Repository {
    /// Creates a repository in `path`, which must not exist or be an empty directory. The config
    /// is written last, so a directory is a repository only once it is complete.
    pub fn init(path: &Path, opts: &InitOptions) -> Result<Config> {
        if path.exists() {
            let mut entries = std::fs::read_dir(path).map_err(|e| Error::io("list", path, e))?;
            if entries.next().is_some() {
                return Err(Error::RepositoryExists { path: path.into() });
            }
        }
        let mut config = Config::new(opts.chunker.clone(), opts.compression_level);
        config.pack_target_size = opts.pack_target_size;
        config.max_chain_depth = opts.max_chain_depth;
        config.validate()?;
        for dir in ["packs", "images", "index"] {
            let d = path.join(dir);
            std::fs::create_dir_all(&d).map_err(|e| Error::io("create directory", &d, e))?;
        }
        let index = RocksIndex::create(&path.join("index"))?;
        let mut b = Batch::default();
        RocksIndex::mark_complete(&mut b);
        index.write(b)?;
        drop(index);
        LocalDir::new(path).put("config", &config.encode()?)?;
        Ok(config)
    }

    /// Opens for reading: takes no lock and works beside a running writer.
    /// The index's health is recorded, not enforced: readers that only list or restore work
    /// with what the index knows, `check` reports it, writers refuse an unhealthy index.
    pub fn open(path: &Path) -> Result<Repository> {
        Self::open_on(path, Arc::new(LocalDir::new(path)))
    }

    /// `open` with packs, manifests and the other repository objects stored in `backend` (the
    /// index and the lock stay in `path`): the seam for other storage and for fault-injecting
    /// doubles in tests.
    pub fn open_on(path: &Path, backend: Arc<dyn Backend>) -> Result<Repository> {
        let config = read_config(path)?;
        // The generation first: a writer that finishes meanwhile raises the index's before the
        // file's, so this order never mistakes a current index for a stale one.
        let generation = read_generation(backend.as_ref())?;
        let index = RocksIndex::open_read_only(&path.join("index"))?;
        let health = health_of(&index, generation)?;
        Ok(Repository { root: path.into(), config, backend, index, health, temporaries_removed: (0, 0), _lock: None })
    }

    /// Runs a read-only operation so that its answer describes one consistent state. Readers
    /// take no lock, so a forget or prune running meanwhile can delete a manifest or pack between
    /// two of its reads; the answer would then show damage that does not exist. When `run` fails,
    /// or `suspect` says its answer shows damage, and a writer was active or finished during the
    /// run, this waits for the writer and runs again on a fresh view (up to 5 times).
    pub fn read_consistently<T>(
        path: &Path,
        mut run: impl FnMut(&Repository) -> Result<T>,
        suspect: impl Fn(&T) -> bool,
    ) -> Result<T> {
        let generation = || read_generation(&LocalDir::new(path)).ok();
        for attempt in 0.. {
            let before = (crate::lock::writer_active(path), generation());
            let result = Repository::open(path).and_then(|repo| run(&repo));
            let doubtful = result.as_ref().map_or(true, &suspect);
            let raced = before.0 || crate::lock::writer_active(path) || generation() != before.1;
            if !doubtful || !raced || attempt >= 4 {
                return result;
            }
            crate::lock::wait_for_writers(path, std::time::Duration::from_secs(3600));
        }
        unreachable!()
    }

    /// `read_consistently` for an operation on one image, named by `spec` (id, prefix, `latest`):
    /// the image is resolved once, so a rerun after a racing writer works on the same image.
    pub fn read_image_consistently<T>(
        path: &Path,
        spec: &str,
        mut run: impl FnMut(&Repository, &ImageInfo) -> Result<T>,
        suspect: impl Fn(&T) -> bool,
    ) -> Result<(ImageInfo, T)> {
        let mut chosen: Option<String> = None;
        Self::read_consistently(
            path,
            |repo| {
                let info = repo.find_image(chosen.as_deref().unwrap_or(spec))?;
                chosen = Some(info.id.to_string());
                let out = run(repo, &info)?;
                Ok((info, out))
            },
            |(_, out)| suspect(out),
        )
    }

    /// Opens for writing: takes the exclusive lock (naming `command` as the holder) and brings
    /// the catalog up to date with manifests published by a run that died before cataloguing.
    pub fn open_writer(path: &Path, command: &str) -> Result<Repository> {
        Self::open_writer_on(path, command, Arc::new(LocalDir::new(path)))
    }

    /// `open_writer` with the repository's objects in `backend` (see `open_on`).
    pub fn open_writer_on(path: &Path, command: &str, backend: Arc<dyn Backend>) -> Result<Repository> {
        let config = read_config(path)?;
        let lock = crate::lock::acquire(path, command)?;
        let generation = read_generation(backend.as_ref())?;
        let index_dir = path.join("index");
        let index = RocksIndex::open(&index_dir)?;
        // A writer never builds on an index that may lack what the repository holds: a backup
        // would miss dedup and counters, and prune could take live data for garbage.
        let health = health_of(&index, generation)?;
        health.require_current(&index_dir)?;
        // Holding the lock, every temporary object belongs to a writer that died.
        let mut temporaries_removed = (0, 0);
        for (tmp, size) in backend.temporaries()? {
            backend.remove_temporary(&tmp)?;
            temporaries_removed = (temporaries_removed.0 + 1, temporaries_removed.1 + size);
        }
        let repo =
            Repository { root: path.into(), config, backend, index, health, temporaries_removed, _lock: Some(lock) };
        for info in repo.uncatalogued()? {
            repo.index.put_image(&info)?;
        }
        if let Some(journal) = refs::pending(&repo.index)? {
            repo.recover(&journal)?;
        }
        Ok(repo)
    }

    /// Finishes what an interrupted operation left, exactly as its journal says: the catalog
    /// follows the manifests, a forget that had begun deleting is finished (the listed manifests
    /// go), one that was still rewriting is undone (its rewrites stand: each restores what its
    /// image always restored), and the reference counters are rebuilt from the manifests.
    fn recover(&self, journal: &refs::Journal) -> Result<()> {
        let deleting = journal.op == "forget" && journal.phase == "delete";
        if deleting {
            self.delete_manifests(journal)?;
        }
        let manifests = self.manifest_infos()?;
        let catalog: HashMap<ImageId, ImageInfo> = self.index.images()?.into_iter().map(|i| (i.id, i)).collect();
        let mut b = Batch::default();
        for m in &manifests {
            if catalog.get(&m.id) != Some(m) {
                put_image(&mut b, m)?;
            }
        }
        // Catalogued images whose manifests a forget deleted leave the catalog; any other
        // catalogued image stays (a damaged one is reported by check, and can be forgotten).
        let listed: HashSet<String> = self.backend.list("images")?.into_iter().collect();
        for id in catalog.keys().filter(|id| !listed.contains(&format!("images/{id}"))) {
            if journal.forget.contains(id) {
                b.delete(image_key(id));
            }
        }
        self.index.write(b)?;
        refs::rebuild(&self.index, self.backend(), &manifests)
    }

    /// Deletes the manifests a forget's journal lists, in its order (a manifest already gone is
    /// fine: an earlier, interrupted run deleted it).
    pub(crate) fn delete_manifests(&self, journal: &refs::Journal) -> Result<()> {
        for id in &journal.forget {
            match self.backend.remove(&format!("images/{id}")) {
                Ok(()) => {}
                Err(Error::Io { cause, .. }) if cause.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            crate::failpoint::hit!("forget-after-delete");
        }
        Ok(())
    }

    /// Images whose manifests are in `images/` but cannot be read and that the catalog does not
    /// list (a rebuild could not read them): with what their footer still says, if anything.
    pub fn damaged_images(&self) -> Result<Vec<DamagedImage>> {
        let known: HashSet<ImageId> = self.index.images()?.into_iter().map(|i| i.id).collect();
        let mut out = Vec::new();
        for name in self.backend.list("images")? {
            let Some(id) = name.strip_prefix("images/").and_then(ImageId::parse) else { continue };
            if known.contains(&id) {
                continue;
            }
            if let Err(e) = read_info(self.backend(), &id) {
                out.push(DamagedImage { id, info: peek_info(self.backend(), &id).ok(), reason: e.to_string() });
            }
        }
        Ok(out)
    }

    /// The info of every readable manifest (damaged ones are left for `check`).
    pub fn manifest_infos(&self) -> Result<Vec<ImageInfo>> {
        let mut out = Vec::new();
        for name in self.backend.list("images")? {
            let Some(id) = name.strip_prefix("images/").and_then(ImageId::parse) else { continue };
            if let Ok(info) = read_info(self.backend(), &id) {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Recreates the index from the packs' trailers and the manifests alone, for an index that
    /// is lost or damaged. The new index is built beside the old one (`index.rebuild-<pid>`) and
    /// switched in only once complete; the old one is moved aside (`index.old-<ms>`), never
    /// deleted. A rebuild killed part-way leaves the old index in place (or, killed between the
    /// two renames, no index, which every command reports). Packs or manifests that cannot be
    /// read are reported and left in place.
    pub fn rebuild_index(path: &Path) -> Result<RebuildReport> {
        let config = read_config(path)?;
        let lock = crate::lock::acquire(path, "rebuild-index")?;
        let backend = LocalDir::new(path);
        // Builds left by killed rebuilds: we hold the lock, so no live process owns them.
        for entry in std::fs::read_dir(path).map_err(|e| Error::io("list", path, e))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("index.rebuild-") {
                let p = entry.path();
                std::fs::remove_dir_all(&p).map_err(|e| Error::io("remove", &p, e))?;
            }
        }
        let building = path.join(format!("index.rebuild-{}", std::process::id()));
        let generation = read_generation(&backend).unwrap_or(0).max(Self::old_generation(path)) + 1;
        let mut report = RebuildReport::default();
        let repo = Repository {
            root: path.into(),
            config,
            backend: Arc::new(backend),
            index: RocksIndex::create(&building)?,
            health: IndexHealth::Incomplete,
            temporaries_removed: (0, 0),
            _lock: Some(lock),
        };
        repo.fill_index(&mut report)?;
        let mut b = Batch::default();
        RocksIndex::mark_complete(&mut b);
        RocksIndex::set_generation(&mut b, generation);
        repo.index.write(b)?;
        crate::failpoint::hit!("rebuild-before-switch");
        let Repository { index, backend, _lock, .. } = repo;
        drop(index);
        let index_dir = path.join("index");
        crate::failpoint::step!();
        if index_dir.exists() {
            let aside = path.join(format!("index.old-{}", crate::timefmt::now_ms()));
            std::fs::rename(&index_dir, &aside).map_err(|e| Error::io("move aside", &index_dir, e))?;
            report.old_index = Some(aside);
        }
        crate::failpoint::hit!("rebuild-between-renames");
        crate::failpoint::step!();
        std::fs::rename(&building, &index_dir).map_err(|e| Error::io("rename", &building, e))?;
        crate::backend::sync_dir(path)?;
        write_generation(backend.as_ref(), generation)?;
        Ok(report)
    }

    /// The generation the current index records, when it can be read (a rebuild must end above
    /// it, so that a copy of it put back later is recognised as stale).
    fn old_generation(path: &Path) -> u64 {
        RocksIndex::open_read_only(&path.join("index")).and_then(|i| i.generation()).unwrap_or(0)
    }

    /// Adds every readable pack trailer and manifest to the (new, empty) index, then the counters.
    fn fill_index(&self, report: &mut RebuildReport) -> Result<()> {
        for name in self.backend.list("packs")? {
            let Some(pack) = name.rsplit('/').next().and_then(PackId::parse) else {
                report.unreadable_packs.push((name, "not a pack name".into()));
                continue;
            };
            let read = self.backend.size(&name).and_then(|size| {
                read_trailer_at(&pack, size, |o, n| self.backend.read_at(&name, o, n)).map(|e| (size, e))
            });
            match read {
                Ok((size, entries)) => {
                    report.chunks += entries.len();
                    self.index.add_pack(pack, size, &entries)?;
                    report.packs += 1;
                }
                Err(e) => report.unreadable_packs.push((name, e.to_string())),
            }
        }
        let manifests = self.manifest_infos()?;
        let mut b = Batch::default();
        for m in &manifests {
            put_image(&mut b, m)?;
        }
        for name in self.backend.list("images")? {
            let Some(id) = name.strip_prefix("images/").and_then(ImageId::parse) else { continue };
            if !manifests.iter().any(|m| m.id == id) {
                report.unreadable_manifests.push(id);
            }
        }
        self.index.write(b)?;
        refs::rebuild(&self.index, self.backend(), &manifests)?;
        report.images = manifests.len();
        Ok(())
    }

    /// Records that a writing command finished: its last index batch is followed by the next
    /// generation, first in the index (synced), then in the generation file. Every writing
    /// command calls this once its index writes are done.
    pub fn commit_generation(&self) -> Result<()> {
        let next = self.index.generation()?.max(read_generation(self.backend())?) + 1;
        let mut b = Batch::default();
        RocksIndex::set_generation(&mut b, next);
        self.index.write(b)?;
        write_generation(self.backend(), next)
    }

    /// Temporary files left by writers that died, removed when this writer opened: (count, bytes).
    pub fn temporaries_removed(&self) -> (usize, u64) {
        self.temporaries_removed
    }

    /// What the index's completeness and generation records say (see `IndexHealth`).
    pub fn index_health(&self) -> IndexHealth {
        self.health
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn index(&self) -> &RocksIndex {
        &self.index
    }

    /// Manifests that are published but not (yet) in the catalog. Damaged ones are left for
    /// `check` to report rather than hiding the rest.
    fn uncatalogued(&self) -> Result<Vec<ImageInfo>> {
        let known: HashSet<ImageId> = self.index.images()?.into_iter().map(|i| i.id).collect();
        let mut out = Vec::new();
        for name in self.backend.list("images")? {
            let Some(id) = name.strip_prefix("images/").and_then(ImageId::parse) else {
                continue;
            };
            if !known.contains(&id) {
                if let Ok(info) = read_info(self.backend(), &id) {
                    out.push(info);
                }
            }
        }
        Ok(out)
    }

    /// Every image, oldest first: the catalog plus manifests not yet catalogued.
    pub fn images(&self) -> Result<Vec<ImageInfo>> {
        let mut all = self.index.images()?;
        if self._lock.is_none() {
            all.extend(self.uncatalogued()?);
        }
        all.sort_by(|a, b| (a.created_ms, a.id).cmp(&(b.created_ms, b.id)));
        Ok(all)
    }

    /// Finds an image by full id, unique id prefix, or `latest` (the newest image).
    pub fn find_image(&self, spec: &str) -> Result<ImageInfo> {
        let images = self.images()?;
        if spec == "latest" {
            return images.into_iter().last().ok_or_else(|| Error::ImageNotFound { spec: spec.into() });
        }
        find_by_prefix(spec, images, |i| i.id)
    }

    /// The images needed to restore `image`, full first, as their manifests say (the catalog
    /// is a cache and may lag behind a rewrite that an interrupted forget made).
    pub fn chain(&self, image: &ImageInfo) -> Result<Vec<ImageInfo>> {
        // Footers only: `view` verifies every manifest whole before its extents are used.
        let mut chain = vec![peek_info(self.backend(), &image.id)?];
        while let Some(base) = chain.last().and_then(|i| i.base) {
            if chain.len() > 100_000 || chain.iter().any(|i| i.id == base) {
                return Err(Error::CorruptManifest { image: image.id.to_string(), reason: "chain loops".into() });
            }
            chain.push(peek_info(self.backend(), &base)?);
        }
        let full = chain.last().ok_or_else(|| Error::ImageNotFound { spec: image.id.to_string() })?;
        if full.kind != Kind::Full {
            return Err(Error::CorruptManifest {
                image: full.id.to_string(),
                reason: "chain does not start at a full".into(),
            });
        }
        chain.reverse();
        Ok(chain)
    }

    /// The resolved extents of the last image of `chain`, streamed; every manifest in the chain
    /// is checked (checksum, footer) before the first extent comes out.
    pub fn view(&self, chain: &[ImageInfo]) -> Result<View> {
        let mut view: View = Box::new(std::iter::empty());
        for info in chain {
            let (stored, extents) = open_manifest(self.backend(), &info.id)?;
            if stored.id != info.id || stored.base != info.base {
                return Err(Error::CorruptManifest {
                    image: info.id.to_string(),
                    reason: "does not match the catalog".into(),
                });
            }
            view = Box::new(Overlay::new(view, extents, info.logical_bytes));
        }
        Ok(view)
    }
}
