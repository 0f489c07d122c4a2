//! The repository as the mount sees it: a view of its images that follows new backups (and
//! forgets) without remounting, image readers opened on demand and kept within a memory budget,
//! and what each image's files need to be described (partition table, allocated bytes).
//!
//! A view is replaced when the repository's generation or its set of manifests changed, looked
//! at most once a second. A new view lists the images first and opens the index after, so the
//! index knows every chunk of every image listed (a backup commits its chunks to the index
//! before it publishes the manifest). The mount takes no lock and writes nothing: backups,
//! forgets and prunes run beside it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::browse::Browser;
use super::layout::{Catalog, Holds};
use crate::crypto::Protection;
use crate::error::{Error, Result};
use crate::id::ImageId;
use crate::index::Index;
use crate::partition::{read_table, Table};
use crate::reader::{FrameCache, ImageMap, ImageReader, Piece};
use crate::repository::Credentials;
use crate::repository::Repository;
use crate::storage::{generation, paths, Backend};

/// Filesystems kept open for the file view (each on its own thread); the least recently
/// opened one is closed first.
const OPEN_FILESYSTEMS: usize = 16;

/// How often, at most, the repository is asked whether images came or went.
const RECHECK: Duration = Duration::from_secs(1);

/// Resolved image maps kept for reuse, in bytes (48 per chunk extent); the most recently used
/// one is kept even when it alone is larger.
const MAP_BUDGET: u64 = 128 << 20;

/// One consistent view of the repository.
pub(super) struct View {
    pub(super) catalog: Catalog,
    backend: Arc<dyn Backend>,
    index: Arc<Index>,
    protection: Protection,
    /// What the view was made from: the generation and the manifests present.
    stamp: (u64, Vec<ImageId>),
}

/// A file under the mount that reads image bytes: a whole image, or one partition of it.
pub(super) type Key = (ImageId, Option<u32>);

pub(super) struct Images {
    credentials: Arc<Credentials>,
    root: PathBuf,
    cache: Arc<FrameCache>,
    view: RwLock<Arc<View>>,
    checked: Mutex<Instant>,
    readers: Mutex<Readers>,
    tables: Mutex<HashMap<ImageId, Arc<Table>>>,
    allocated: Mutex<HashMap<Key, u64>>,
    holds: Mutex<HashMap<ImageId, Holds>>,
    browsers: Mutex<Vec<(Key, Arc<Browser>)>>,
}

#[derive(Default)]
struct Readers {
    open: HashMap<Key, (Arc<ImageReader>, u64)>,
    clock: u64,
}

impl Images {
    /// Opens the repository at `root` (errors here are the user's: not a repository, ...).
    pub(super) fn open(root: &Path, cache_bytes: u64, credentials: Arc<Credentials>) -> Result<Images> {
        let view = load(root, &credentials)?;
        Ok(Images {
            root: root.into(),
            credentials,
            cache: Arc::new(FrameCache::new(cache_bytes)),
            view: RwLock::new(Arc::new(view)),
            checked: Mutex::new(Instant::now()),
            readers: Mutex::new(Readers::default()),
            tables: Mutex::default(),
            allocated: Mutex::default(),
            holds: Mutex::default(),
            browsers: Mutex::default(),
        })
    }

    /// The current view, replaced first when the repository changed (asked at most once a
    /// second). A view that cannot be made is reported to `log` and the old one kept.
    pub(super) fn view(&self, log: &dyn Fn(String)) -> Arc<View> {
        let due = {
            let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
            let due = checked.elapsed() >= RECHECK;
            if due {
                *checked = Instant::now();
            }
            due
        };
        if due {
            if let Err(e) = self.refresh() {
                log(format!("cannot read the repository's new state (showing the old one): {e}"));
            }
        }
        self.current()
    }

    fn current(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the view when the repository changed; returns whether it did.
    fn refresh(&self) -> Result<bool> {
        let now = stamp(crate::storage::site::Site::open(&self.root)?.raw().as_ref())?;
        if now == self.current().stamp {
            return Ok(false);
        }
        let view = Arc::new(load(&self.root, &self.credentials)?);
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = view;
        Ok(true)
    }

    /// The bytes of `key` at `offset` into `buf` (see `ImageReader::read_at`). A read that fails
    /// while the repository changed (a prune moved the chunks, say) is tried once more on a
    /// fresh view.
    pub(super) fn read_at(&self, key: Key, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let first = self.reader(key).and_then(|r| r.read_at(offset, buf));
        match first {
            Err(e) if self.refresh().unwrap_or(false) => {
                self.forget_reader(key);
                self.reader(key).and_then(|r| r.read_at(offset, buf)).map_err(|_| e)
            }
            other => other,
        }
    }

    /// The reader of `key`, opened (and its image's chain resolved) unless one is kept.
    pub(super) fn reader(&self, key: Key) -> Result<Arc<ImageReader>> {
        {
            let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
            readers.clock += 1;
            let now = readers.clock;
            if let Some((r, used)) = readers.open.get_mut(&key) {
                *used = now;
                return Ok(r.clone());
            }
        }
        let view = self.current();
        let (id, partition) = key;
        let info = view.catalog.info(&id).ok_or_else(|| Error::ImageNotFound { spec: id.to_string() })?;
        let map = match partition {
            None => ImageMap::resolve(view.backend.as_ref(), info)?,
            Some(n) => {
                let disk = self.reader((id, None))?;
                let p = self.table(id)?.get(&id.short(), n)?.clone();
                disk.map().window(p.start..p.start.saturating_add(p.size))
            }
        };
        let reader = Arc::new(ImageReader::with_map(
            view.backend.clone(),
            view.index.clone(),
            view.protection.clone(),
            map,
            self.cache.clone(),
        ));
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        readers.clock += 1;
        let now = readers.clock;
        readers.open.insert(key, (reader.clone(), now));
        // Least recently used first, until the maps kept fit the budget (this one stays).
        let weight = |r: &ImageReader| (r.map().pieces().len() * std::mem::size_of::<Piece>()) as u64;
        let mut total: u64 = readers.open.values().map(|(r, _)| weight(r)).sum();
        while total > MAP_BUDGET && readers.open.len() > 1 {
            let Some((&old, _)) = readers.open.iter().filter(|(k, _)| **k != key).min_by_key(|(_, (_, used))| *used)
            else {
                break;
            };
            if let Some((r, _)) = readers.open.remove(&old) {
                total -= weight(&r);
            }
        }
        Ok(reader)
    }

    fn forget_reader(&self, key: Key) {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        readers.open.remove(&key);
        if key.1.is_none() {
            readers.open.retain(|k, _| k.0 != key.0);
        }
    }

    /// The partition table of image `id` (scheme `None` when it has none); read once.
    pub(super) fn table(&self, id: ImageId) -> Result<Arc<Table>> {
        if let Some(t) = self.tables.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Ok(t.clone());
        }
        let table = Arc::new(read_table(&*self.reader((id, None))?)?);
        self.tables.lock().unwrap_or_else(|p| p.into_inner()).insert(id, table.clone());
        Ok(table)
    }

    /// What image `id` holds: its partitions and which filesystems Strata reads; found once.
    pub(super) fn holds(&self, id: ImageId) -> Result<Holds> {
        if let Some(h) = self.holds.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Ok(h.clone());
        }
        let readable = |fs: Option<&str>| fs.is_some_and(|fs| crate::files::READABLE.contains(&fs));
        let table = self.table(id)?;
        let holds = Holds {
            partitions: table.partitions.iter().map(|p| (p.number, readable(p.filesystem))).collect(),
            files: table.scheme == crate::partition::Scheme::None
                && readable(crate::partition::filesystem(&*self.reader((id, None))?)?),
        };
        self.holds.lock().unwrap_or_else(|p| p.into_inner()).insert(id, holds.clone());
        Ok(holds)
    }

    /// The filesystem of `key`, opened on its own thread unless it is open already.
    pub(super) fn browser(&self, key: Key) -> Result<Arc<Browser>> {
        if let Some((_, b)) = self.browsers.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(k, _)| *k == key) {
            return Ok(b.clone());
        }
        let name = match key {
            (id, Some(n)) => format!("{}:{n}", id.short()),
            (id, None) => id.short(),
        };
        let browser = Arc::new(Browser::open(self.reader(key)?, name)?);
        // Dropped after the lock is released: dropping a browser waits for its thread.
        let evicted;
        let mut open = self.browsers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, b)) = open.iter().find(|(k, _)| *k == key) {
            return Ok(b.clone()); // another thread opened it meanwhile
        }
        evicted = (open.len() >= OPEN_FILESYSTEMS).then(|| open.remove(0));
        open.push((key, browser.clone()));
        drop(open);
        drop(evicted);
        Ok(browser)
    }

    /// The bytes of `key` that hold data (not zero runs), for `st_blocks`; computed once.
    pub(super) fn allocated(&self, key: Key) -> Result<u64> {
        if let Some(&n) = self.allocated.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(n);
        }
        let n = self.reader(key)?.map().pieces().iter().map(|p| p.len as u64).sum();
        self.allocated.lock().unwrap_or_else(|p| p.into_inner()).insert(key, n);
        Ok(n)
    }
}

/// What says that the repository changed: its generation (a writer finished) and its manifests
/// (one was published or deleted, also by a writer that died before finishing).
fn stamp(backend: &dyn Backend) -> Result<(u64, Vec<ImageId>)> {
    let generation = generation::read(backend)?;
    let mut manifests = paths::manifest_ids(backend)?;
    manifests.sort();
    Ok((generation, manifests))
}

fn load(root: &Path, credentials: &Credentials) -> Result<View> {
    let stamp = stamp(crate::storage::site::Site::open(root)?.raw().as_ref())?;
    let images = Repository::open_with(root, credentials)?.images()?;
    // Opened after the listing: its index knows every chunk the listed images need.
    let repo = Repository::open_with(root, credentials)?;
    Ok(View {
        catalog: Catalog::new(images),
        backend: repo.shared_backend(),
        index: repo.shared_index(),
        protection: repo.protection().clone(),
        stamp,
    })
}
