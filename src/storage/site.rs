//! A repository's storage as one command sees it: the backend that holds its objects, the
//! local directory that holds its index, and the lock a writer takes. For a local repository
//! the directory is the repository itself and the lock a `flock` on its `lock` file; for a
//! bucket the directory is a cache (`$XDG_CACHE_HOME/strata/<repository id>/`, rebuilt from the
//! bucket whenever someone else wrote to it) and the lock an object in the bucket
//! (`remote_lock`) together with a `flock` on the cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::location::Location;
use super::lock::{self, FileLock};
use super::remote_lock;
use super::remote_lock::RemoteLock;
use super::s3::{S3Backend, S3Store};
use super::{paths, Backend, LocalDir};
use crate::error::{Error, Result};

pub(crate) enum Site {
    Local { root: PathBuf, backend: Arc<LocalDir> },
    S3 { store: Arc<S3Store>, backend: Arc<S3Backend> },
}

/// The file in a cache directory that records the version of the bucket's generation object
/// its index reflects (see `Site::cache_is_current`).
const SEEN: &str = "seen-generation";

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

    /// The lock of a writing command: the repository's `flock` for a local one; for a bucket,
    /// the lock object (held across machines) and then the cache's `flock` (two processes of
    /// one machine share the cache).
    pub fn lock(&self, work: &Path, command: &str) -> Result<Vec<RepoLock>> {
        match self {
            Site::Local { root, .. } => Ok(vec![RepoLock::File(lock::acquire(root, command)?)]),
            Site::S3 { store, .. } => {
                let remote = remote_lock::acquire(store.clone(), command)?;
                // Another writer of this machine cannot hold the cache (it would hold the lock
                // object); a reader refreshing the cache can, for as long as that takes.
                let cache = lock::acquire_waiting(work, command, std::time::Duration::from_secs(600))?;
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

    /// Whether the cache in `work` reflects the bucket as it is now: it recorded the version of
    /// the generation object that is in the bucket (every writing command rewrites that object
    /// last, so a writer on another machine changes it). Always true for a local repository.
    pub fn cache_is_current(&self, work: &Path) -> Result<bool> {
        let Site::S3 { store, .. } = self else { return Ok(true) };
        if !work.join(paths::INDEX).exists() {
            return Ok(false);
        }
        let seen = std::fs::read_to_string(work.join(SEEN)).ok();
        Ok(seen.is_some() && seen == Some(generation_version(store)?))
    }

    /// The bucket's generation version as the cache's index now reflects it (after the cache was
    /// rebuilt from the bucket, or after this command wrote the generation itself).
    pub fn record_seen(&self, work: &Path, version: &str) -> Result<()> {
        if self.is_remote() {
            let path = work.join(SEEN);
            std::fs::write(&path, version).map_err(|e| Error::io("write", &path, e))?;
        }
        Ok(())
    }

    /// The version of the bucket's generation object now ("" for a local repository).
    pub fn generation_version(&self) -> Result<String> {
        match self {
            Site::Local { .. } => Ok(String::new()),
            Site::S3 { store, .. } => generation_version(store),
        }
    }
}

fn generation_version(store: &S3Store) -> Result<String> {
    Ok(store.version(paths::GENERATION)?.unwrap_or_else(|| "none".into()))
}
