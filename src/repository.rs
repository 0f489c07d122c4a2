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
    _lock: Option<RepoLock>,
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
        drop(RocksIndex::create(&path.join("index"))?);
        LocalDir::new(path).put("config", &config.encode())?;
        Ok(config)
    }

    /// Opens for reading: takes no lock and works beside a running writer.
    pub fn open(path: &Path) -> Result<Repository> {
        let config = read_config(path)?;
        let index = RocksIndex::open_read_only(&path.join("index"))?;
        Ok(Repository { root: path.into(), config, backend: Arc::new(LocalDir::new(path)), index, _lock: None })
    }

    /// Opens for writing: takes the exclusive lock (naming `command` as the holder) and brings
    /// the catalog up to date with manifests published by a run that died before cataloguing.
    pub fn open_writer(path: &Path, command: &str) -> Result<Repository> {
        let config = read_config(path)?;
        let lock = crate::lock::acquire(path, command)?;
        let index = RocksIndex::open(&path.join("index"))?;
        let repo =
            Repository { root: path.into(), config, backend: Arc::new(LocalDir::new(path)), index, _lock: Some(lock) };
        for info in repo.uncatalogued()? {
            repo.index.put_image(&info)?;
        }
        if let Some(journal) = refs::pending(&repo.index)? {
            repo.recover(&journal)?;
        }
        Ok(repo)
    }

    /// Finishes what an interrupted operation left: the catalog follows the manifests, the
    /// reference counters are rebuilt from them, and an interrupted forget is rolled forward
    /// (planned again over what is left: rewrites never change what an image restores).
    fn recover(&self, journal: &refs::Journal) -> Result<()> {
        let manifests = self.manifest_infos()?;
        let catalog: HashMap<ImageId, ImageInfo> = self.index.images()?.into_iter().map(|i| (i.id, i)).collect();
        let mut b = Batch::default();
        for m in &manifests {
            if catalog.get(&m.id) != Some(m) {
                put_image(&mut b, m)?;
            }
        }
        let has_manifest = |id: &ImageId| manifests.iter().any(|m| m.id == *id);
        // Images being forgotten whose manifest is already deleted leave the catalog; any other
        // catalogued image without a readable manifest blocks prune (its chunks would look dead).
        for id in journal.forget.iter().filter(|id| !has_manifest(id)) {
            b.delete(image_key(id));
        }
        let unreadable: Vec<ImageId> =
            catalog.keys().filter(|id| !has_manifest(id) && !journal.forget.contains(id)).copied().collect();
        refs::set_prune_blocked(&mut b, &unreadable);
        self.index.write(b)?;
        refs::rebuild(&self.index, self.backend(), &manifests)?;
        let remaining: Vec<ImageId> = journal.forget.iter().filter(|id| has_manifest(id)).copied().collect();
        if journal.op == "forget" && !remaining.is_empty() {
            let req = crate::forget::ForgetRequest { ids: remaining, rebase: journal.rebase, ..Default::default() };
            let plan = crate::forget::plan(&self.images()?, &req)?;
            crate::forget::execute(self, &plan, false)?;
        }
        Ok(())
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
    /// is lost or damaged. The old index directory is moved aside (`index.old-<ms>`), never
    /// deleted. Packs or manifests that cannot be read are reported and left in place.
    pub fn rebuild_index(path: &Path) -> Result<RebuildReport> {
        read_config(path)?;
        let lock = crate::lock::acquire(path, "rebuild-index")?;
        let index_dir = path.join("index");
        let mut report = RebuildReport::default();
        if index_dir.exists() {
            let aside = path.join(format!("index.old-{}", crate::timefmt::now_ms()));
            std::fs::rename(&index_dir, &aside).map_err(|e| Error::io("move aside", &index_dir, e))?;
            report.old_index = Some(aside);
        }
        let index = RocksIndex::create(&index_dir)?;
        let backend = LocalDir::new(path);
        for name in backend.list("packs")? {
            let Some(pack) = name.rsplit('/').next().and_then(PackId::parse) else {
                report.unreadable_packs.push((name, "not a pack name".into()));
                continue;
            };
            let read = backend
                .size(&name)
                .and_then(|size| read_trailer_at(&pack, size, |o, n| backend.read_at(&name, o, n)).map(|e| (size, e)));
            match read {
                Ok((size, entries)) => {
                    report.chunks += entries.len();
                    index.add_pack(pack, size, &entries)?;
                    report.packs += 1;
                }
                Err(e) => report.unreadable_packs.push((name, e.to_string())),
            }
        }
        let repo = Repository {
            root: path.into(),
            config: read_config(path)?,
            backend: Arc::new(backend),
            index,
            _lock: Some(lock),
        };
        let manifests = repo.manifest_infos()?;
        let mut b = Batch::default();
        for m in &manifests {
            put_image(&mut b, m)?;
        }
        for name in repo.backend.list("images")? {
            let Some(id) = name.strip_prefix("images/").and_then(ImageId::parse) else { continue };
            if !manifests.iter().any(|m| m.id == id) {
                report.unreadable_manifests.push(id);
            }
        }
        // Unreadable manifests' chunks would look unreferenced: prune must wait for them.
        refs::set_prune_blocked(&mut b, &report.unreadable_manifests);
        repo.index.write(b)?;
        refs::rebuild(&repo.index, repo.backend(), &manifests)?;
        report.images = manifests.len();
        Ok(report)
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
        let spec_l = spec.to_ascii_lowercase();
        let matches: Vec<ImageInfo> = images.into_iter().filter(|i| i.id.to_string().starts_with(&spec_l)).collect();
        match matches.len() {
            0 => Err(Error::ImageNotFound { spec: spec.into() }),
            1 => Ok(matches.into_iter().next().ok_or_else(|| Error::ImageNotFound { spec: spec.into() })?),
            _ if spec_l.is_empty() => Err(Error::ImageNotFound { spec: spec.into() }),
            _ => Err(Error::AmbiguousImage {
                spec: spec.into(),
                candidates: matches.iter().map(|i| i.id.short()).collect::<Vec<_>>().join(", "),
            }),
        }
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
