//! A repository's storage as one command sees it: the backend that holds its objects, the
//! local directory that holds its index, and the lock a writer takes. For a local repository
//! the directory is the repository itself and the lock a `flock` on its `lock` file; for a
//! bucket the directory is a cache (`$XDG_CACHE_HOME/strata/<repository id>/`, brought up to
//! date from the bucket's listing, `recover::update_cache`, with what it reflects recorded in
//! `Reflects`) and the lock an object in the bucket (`remote_lock`, shared by backups) together
//! with a `flock` on the cache.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::location::Location;
use super::lock::{self, FileLock};
use super::remote_lock;
use super::remote_lock::{LockMode, RemoteLock};
use super::s3::{S3Backend, S3Store};
use super::{paths, Backend, LocalDir};
use crate::error::{Error, Result};

pub(crate) enum Site {
    Local { root: PathBuf, backend: Arc<LocalDir> },
    S3 { store: Arc<S3Store>, backend: Arc<S3Backend> },
}

/// The file in a cache directory that records what of the bucket its index reflects.
const REFLECTS: &str = "reflects";

/// A writer's lock, held while it lives.
pub(crate) enum RepoLock {
    File(#[allow(dead_code)] FileLock),
    Remote(RemoteLock),
}

impl Site {
    /// The storage that the repository argument `arg` names. A bucket is asked to list itself
    /// first, so a wrong endpoint, bucket or key is reported before anything else.
    pub fn open(arg: &Path) -> Result<Site> {
        match Location::parse(arg)? {
            Location::Local(root) => Ok(Site::Local { backend: Arc::new(LocalDir::new(&root)), root }),
            Location::S3(url) => {
                let store = Arc::new(S3Store::new(&url)?);
                store.probe()?;
                Ok(Site::S3 { backend: Arc::new(S3Backend(store.clone())), store })
            }
        }
    }

    /// Whether anything is stored where the repository would be (`init` wants nothing).
    pub fn holds_anything(&self) -> Result<bool> {
        match self {
            Site::Local { root, .. } => match std::fs::read_dir(root) {
                Ok(mut entries) => Ok(entries.next().is_some()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(Error::io("list", root, e)),
            },
            Site::S3 { store, .. } => store.probe(),
        }
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, Site::S3 { .. })
    }

    /// The repository's objects, as stored (sealed ones still sealed).
    pub fn raw(&self) -> Arc<dyn Backend> {
        match self {
            Site::Local { backend, .. } => backend.clone(),
            Site::S3 { backend, .. } => backend.clone(),
        }
    }

    /// The repository's name in messages.
    pub fn name(&self) -> PathBuf {
        match self {
            Site::Local { root, .. } => root.clone(),
            Site::S3 { store, .. } => PathBuf::from(store.url().to_string()),
        }
    }

    /// The config's bytes; a place without one is not a repository (or, when it holds packs or
    /// images, one whose config is lost).
    pub fn config_bytes(&self) -> Result<Vec<u8>> {
        match self.raw().get(paths::CONFIG) {
            Ok(bytes) => Ok(bytes),
            Err(Error::Io { cause, .. })
                if cause.kind() == std::io::ErrorKind::NotFound
                    || cause.kind() == std::io::ErrorKind::NotADirectory =>
            {
                let holds = |dir: &str| self.raw().list(dir).map(|l| !l.is_empty()).unwrap_or(true);
                if holds(paths::PACKS) || holds(paths::IMAGES) {
                    return Err(Error::ConfigMissing { path: self.name() });
                }
                Err(Error::NotARepository { path: self.name() })
            }
            Err(e) => Err(e),
        }
    }

    pub fn put_config(&self, bytes: &[u8]) -> Result<()> {
        self.raw().put(paths::CONFIG, bytes)
    }

    /// The local directory of the index (`index/` inside it) and of the local lock.
    pub fn work_dir(&self, repository_id: &str) -> Result<PathBuf> {
        match self {
            Site::Local { root, .. } => Ok(root.clone()),
            Site::S3 { .. } => {
                let base = match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
                    (Some(x), _) if !x.is_empty() => PathBuf::from(x),
                    (_, Some(h)) if !h.is_empty() => PathBuf::from(h).join(".cache"),
                    _ => {
                        return Err(Error::BadLocation {
                            location: self.name().display().to_string(),
                            reason: "a bucket needs a local cache for its index: set XDG_CACHE_HOME or HOME".into(),
                        })
                    }
                };
                // Under the repository id, one cache per URL: a copy of a bucket keeps the id, and
                // must not take the original's index for its own.
                let url = self.name().display().to_string();
                let place = blake3::hash(url.as_bytes()).to_hex();
                let dir = base.join("strata").join(repository_id).join(&place.as_str()[..16]);
                std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
                Ok(dir)
            }
        }
    }

    /// The lock of a writing command, taken in `mode` and waited for up to `wait`: the
    /// repository's `flock` for a local one (always exclusive: its index is one RocksDB that one
    /// process writes); for a bucket, a lock object (held across machines, shared by backups)
    /// and then the cache's `flock` (two processes of one machine share the cache).
    pub fn lock(&self, work: &Path, command: &str, mode: LockMode, wait: Duration) -> Result<Vec<RepoLock>> {
        match self {
            Site::Local { root, .. } => Ok(vec![RepoLock::File(lock::acquire_waiting(root, command, wait)?)]),
            Site::S3 { store, .. } => {
                let remote = remote_lock::acquire(store.clone(), command, mode, wait)?;
                // Another backup of this machine may hold the cache for as long as it runs.
                let cache = lock::acquire_waiting(work, command, wait.max(Duration::from_secs(600)))?;
                Ok(vec![RepoLock::Remote(remote), RepoLock::File(cache)])
            }
        }
    }

    /// Whether a writer holds the repository's lock now (readers ask, to tell a racing writer
    /// from damage).
    pub fn writer_active(&self) -> bool {
        match self {
            Site::Local { root, .. } => lock::writer_active(root),
            Site::S3 { store, .. } => remote_lock::writer_active(store),
        }
    }

    /// What the bucket holds now that a cache reflects: every pack and manifest with its
    /// version (ETag and size). `None` for a local repository. Manifests are listed before packs,
    /// so that every manifest listed has its packs listed too (a backup uploads them first).
    pub fn listing(&self) -> Result<Option<BTreeMap<String, String>>> {
        let Site::S3 { store, .. } = self else { return Ok(None) };
        let mut out = BTreeMap::new();
        for dir in [paths::IMAGES, paths::PACKS] {
            let folder = format!("{dir}/");
            out.extend(store.list_versions(&folder)?);
        }
        Ok(Some(out))
    }
}

/// What a cache's index reflects of its bucket (the file `reflects` in the cache directory;
/// docs/FORMAT.md, "Directory layout"): the generation, the packs and manifests with their
/// versions, and the objects that could not be read when it was written (`unread`, not among
/// `objects`: the next update tries them again).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Reflects {
    pub generation: u64,
    pub objects: BTreeMap<String, String>,
    pub unread: BTreeSet<String>,
}

impl Reflects {
    /// The bucket's objects as listed (`listing`) less those that could not be read.
    pub fn of(generation: u64, mut listing: BTreeMap<String, String>, unread: &HashSet<String>) -> Reflects {
        listing.retain(|p, _| !unread.contains(p));
        Reflects { generation, objects: listing, unread: unread.iter().cloned().collect() }
    }

    pub fn read(work: &Path) -> Option<Reflects> {
        let text = std::fs::read_to_string(work.join(REFLECTS)).ok()?;
        let mut lines = text.lines();
        let generation = lines.next()?.strip_prefix("generation ")?.parse().ok()?;
        let mut r = Reflects { generation, ..Default::default() };
        for line in lines {
            match line.split_once('\t')? {
                ("unread", path) => r.unread.insert(path.to_string()),
                (path, version) => r.objects.insert(path.to_string(), version.to_string()).is_none(),
            };
        }
        Some(r)
    }

    /// Written whole under another name and renamed: a killed write leaves the old record.
    pub fn write(&self, work: &Path) -> Result<()> {
        let mut text = format!("generation {}\n", self.generation);
        for (path, version) in &self.objects {
            text.push_str(&format!("{path}\t{version}\n"));
        }
        for path in &self.unread {
            text.push_str(&format!("unread\t{path}\n"));
        }
        let tmp = work.join(format!("{REFLECTS}.tmp-{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(|e| Error::io("write", &tmp, e))?;
        crate::failpoint::step!();
        let path = work.join(REFLECTS);
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &tmp, e))
    }
}
