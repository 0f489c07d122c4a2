//! The repository facade: creates and opens repositories and hands out the pieces (config,
//! storage, index) that the operations work with. Catalog and chains live in
//! `manifest::catalog`, crash recovery and rebuild-index in `recover`; operations in their own
//! folders.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::crypto::keyfile::{KdfParams, KeyFile};
use crate::crypto::keyring::{self, KeyInfo, KeyList};
use crate::crypto::objects::SealingBackend;
use crate::crypto::password::{Password, PasswordSource};
use crate::crypto::{MasterKey, Protection};
use crate::error::{Error, Result};
use crate::index::{Index, Txn};
use crate::manifest::{catalog, DamagedImage, ImageInfo, View};
use crate::reader::{FrameCache, ImageMap, ImageReader};
use crate::storage::remote_lock::LockMode;
use crate::storage::site::{Reflects, RepoLock, Site};
use crate::storage::{generation, paths, Backend};

pub struct Repository {
    site: Site,
    /// The local directory of the index: the repository's own, or a bucket's cache.
    work: PathBuf,
    config: Config,
    backend: Arc<dyn Backend>,
    index: Arc<Index>,
    health: IndexHealth,
    /// Temporary files of dead writers that opening for writing removed: (count, bytes).
    temporaries_removed: (usize, u64),
    /// After `index`: fields are dropped in order, so the index closes (and flushes its log,
    /// `index::rocks::Db`'s `Drop`) while this writer still holds the repository's lock.
    locks: Vec<RepoLock>,
    /// How the writer's lock shares the repository (`None` for a reader).
    mode: Option<LockMode>,
    /// Objects in the bucket that the cache could not read when this writer opened it.
    unreflected: std::collections::HashSet<String>,
    /// Plain, or the keys of an encrypted repository.
    protection: Protection,
    /// The master key and the id of the key file that opened it (encrypted repositories).
    key: Option<(MasterKey, String)>,
}

/// What unlocking found: how to protect objects, and the key that did it.
struct Unlocked {
    protection: Protection,
    key: Option<(MasterKey, String)>,
}

/// Opens the keys of an encrypted repository (and wraps its storage so that manifests and run
/// records are sealed); refuses a plain config beside key files (a config replaced by someone
/// without the key, to make the next backup write in the clear).
fn unlock(config: &Config, raw: Arc<dyn Backend>, credentials: &Credentials) -> Result<(Unlocked, Arc<dyn Backend>)> {
    let Some(list) = &config.key_list else {
        if !keyring::read_key_files(raw.as_ref())?.is_empty() {
            return Err(Error::BadConfig {
                reason: "it says the repository is not encrypted, but it holds key files (keys/): the config may have been replaced to make backups write in the clear; restore the config from a copy".into(),
            });
        }
        return Ok((Unlocked { protection: Protection::none(), key: None }, raw));
    };
    let password = credentials.password()?;
    let (master, id) = keyring::unlock(raw.as_ref(), &config.repository_id, list, &password)?;
    let protection = Protection::keyed(master.keys());
    let sealed: Arc<dyn Backend> = Arc::new(SealingBackend::new(raw, protection.clone())?);
    Ok((Unlocked { protection, key: Some((master, id)) }, sealed))
}

/// Whether the index can be trusted to know everything the packs and manifests hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IndexHealth {
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
    fn of(index: &Index, repository_generation: u64) -> Result<IndexHealth> {
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

    /// The error a command that must trust the index gives for an unhealthy one.
    pub(crate) fn require_current(&self, index_path: &Path) -> Result<()> {
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

/// Whether a new repository is encrypted, and its first password.
#[derive(Clone, Default)]
pub enum Encryption {
    #[default]
    None,
    /// A random master key in a key file opened by `password` (Argon2id with `kdf`).
    Repokey { password: Password, kdf: KdfParams },
}

/// Where the password of an encrypted repository comes from, asked only when the repository
/// is encrypted (a prompt must not appear for a plain one) and then kept, so that a command
/// that opens the repository again (a rerun after a racing writer, a mount that follows new
/// images) does not ask twice.
#[derive(Default)]
pub struct Credentials {
    ask: Option<Box<dyn Fn() -> Result<Password> + Send + Sync>>,
    known: std::sync::Mutex<Option<Password>>,
}

/// Never the password.
impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Encryption::None => f.write_str("None"),
            Encryption::Repokey { kdf, .. } => write!(f, "Repokey {{ kdf: {kdf:?}, .. }}"),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.ask.is_some() { "Credentials(..)" } else { "Credentials(none)" })
    }
}

impl Credentials {
    /// No password: an encrypted repository is refused with `Error::PasswordNeeded`.
    pub fn none() -> Credentials {
        Credentials::default()
    }

    pub fn from_source(source: PasswordSource) -> Credentials {
        Credentials::from_fn(move || source.read())
    }

    /// A password asked for when needed (a terminal prompt).
    pub fn from_fn(ask: impl Fn() -> Result<Password> + Send + Sync + 'static) -> Credentials {
        Credentials { ask: Some(Box::new(ask)), known: Default::default() }
    }

    fn password(&self) -> Result<Password> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = known.as_ref() {
            return Ok(p.clone());
        }
        let p = self.ask.as_ref().ok_or(Error::PasswordNeeded).and_then(|ask| ask())?;
        *known = Some(p.clone());
        Ok(p)
    }
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
    pub encryption: Encryption,
    /// `init --copy-keys-from`: name content as that repository does (its chunker and, when
    /// encrypted, its identity key), so that `copy` between them moves chunks as they are.
    pub copy_keys: Option<CopiedKeys>,
}

/// What a new repository takes from the one it will receive copies from: the chunker, and the
/// identity key (chunk ids, segment fingerprints, chunker seed) of an encrypted one. Data and
/// metadata keys are never copied: each repository seals with its own.
#[derive(Clone)]
pub struct CopiedKeys {
    pub chunker: crate::config::ChunkerParams,
    /// The source's master key (`None` for a plain source); only its identity is used.
    master: Option<MasterKey>,
    /// The source's name, for errors.
    from: String,
}

impl CopiedKeys {
    pub fn is_encrypted(&self) -> bool {
        self.master.is_some()
    }
}

/// Never a key.
impl std::fmt::Debug for CopiedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CopiedKeys {{ from: {:?}, encrypted: {} }}", self.from, self.master.is_some())
    }
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: Default::default(),
            compression_level: crate::config::DEFAULT_COMPRESSION_LEVEL,
            pack_target_size: 32 * 1024 * 1024,
            max_chain_depth: crate::config::DEFAULT_MAX_CHAIN_DEPTH,
            encryption: Encryption::None,
            copy_keys: None,
        }
    }
}

/// How a writer takes the repository's lock.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    /// Shared only for backups into a bucket; a local repository is always locked exclusively.
    pub mode: LockMode,
    /// How long to wait while another holder's lock is in the way.
    pub wait: std::time::Duration,
}

impl Access {
    pub fn exclusive() -> Access {
        Access { mode: LockMode::Exclusive, wait: std::time::Duration::ZERO }
    }

    pub fn shared() -> Access {
        Access { mode: LockMode::Shared, wait: std::time::Duration::ZERO }
    }

    pub fn waiting(self, wait: std::time::Duration) -> Access {
        Access { wait, ..self }
    }
}

impl Repository {
    /// Creates a repository in `path`, which must not exist or be an empty directory. The config
    /// is written last, so a directory is a repository only once it is complete.
    pub fn init(path: &Path, opts: &InitOptions) -> Result<Config> {
        let site = Site::open(path)?;
        if site.holds_anything()? {
            return Err(Error::RepositoryExists { path: site.name() });
        }
        let chunker = opts.copy_keys.as_ref().map_or(&opts.chunker, |c| &c.chunker);
        if let Some(c) = &opts.copy_keys {
            let encrypted = matches!(opts.encryption, Encryption::Repokey { .. });
            if c.is_encrypted() != encrypted {
                return Err(Error::KeysNotCopyable {
                    from: c.from.clone(),
                    reason: if encrypted {
                        "it is not encrypted: its chunk ids are plain BLAKE3, which an encrypted repository never uses; create this one with `--encryption none`".into()
                    } else {
                        "it is encrypted: its chunk ids are keyed, which a plain repository cannot follow; create this one encrypted".into()
                    },
                });
            }
        }
        let mut config = Config::new(chunker.clone(), opts.compression_level);
        config.pack_target_size = opts.pack_target_size;
        config.max_chain_depth = opts.max_chain_depth;
        config.validate()?;
        let work = site.work_dir(&config.repository_id)?;
        let mut dirs = vec![work.join(paths::INDEX)];
        if !site.is_remote() {
            dirs.extend([path.join(paths::PACKS), path.join(paths::IMAGES)]);
        }
        for d in dirs {
            std::fs::create_dir_all(&d).map_err(|e| Error::io("create directory", &d, e))?;
        }
        let dir = site.raw();
        let mut protection = Protection::none();
        if let Encryption::Repokey { password, kdf } = &opts.encryption {
            // The key file first, the config (which makes the directory a repository) last.
            let master = match opts.copy_keys.as_ref().and_then(|c| c.master.as_ref()) {
                Some(source) => MasterKey::sharing_identity_of(source)?,
                None => MasterKey::generate()?,
            };
            let id = KeyFile::new_id()?;
            let now = crate::timefmt::now_ms();
            let kf = KeyFile::create(&master, password, &config.repository_id, &id, 1, kdf.clone(), now)?;
            dir.put(&keyring::key_path(&id), &kf.encode()?)?;
            let list = KeyList { keys: [(id, 1)].into_iter().collect() };
            config.encryption = "repokey".into();
            config.key_list = Some(list.seal(&master.keys(), &config.repository_id)?);
            protection = Protection::keyed(master.keys());
        }
        let index = Index::create(&work.join(paths::INDEX), &protection)?;
        let mut txn = Txn::new();
        txn.mark_complete();
        index.commit(txn)?;
        drop(index);
        if site.is_remote() {
            Reflects::default().write(&work)?;
        }
        crate::config::write(&site, &config)?;
        Ok(config)
    }

    /// What `init --copy-keys-from path` takes from the repository at `path`: its chunker and,
    /// when it is encrypted, its key (opened with `credentials`). Reads the config and the key
    /// files only: no index, no cache.
    pub fn keys_to_copy(path: &Path, credentials: &Credentials) -> Result<CopiedKeys> {
        let site = Site::open(path)?;
        let config = crate::config::read_from(&site)?;
        let (unlocked, _) = unlock(&config, site.raw(), credentials)?;
        Ok(CopiedKeys {
            chunker: config.chunker,
            master: unlocked.key.map(|(m, _)| m),
            from: site.name().display().to_string(),
        })
    }

    /// Opens for reading: takes no lock and works beside a running writer.
    /// The index's health is recorded, not enforced: readers that only list or restore work
    /// with what the index knows, `check` reports it, writers refuse an unhealthy index.
    pub fn open(path: &Path) -> Result<Repository> {
        Self::open_with(path, &Credentials::none())
    }

    /// `open`, asking `credentials` for the password when the repository is encrypted.
    pub fn open_with(path: &Path, credentials: &Credentials) -> Result<Repository> {
        let site = Site::open(path)?;
        let raw = site.raw();
        Self::open_site(site, raw, credentials)
    }

    /// `open` with packs, manifests and the other repository objects stored in `backend` (the
    /// index and the lock stay in `path`): the seam for other storage and for fault-injecting
    /// doubles in tests.
    pub fn open_on(path: &Path, backend: Arc<dyn Backend>) -> Result<Repository> {
        Self::open_on_with(path, backend, &Credentials::none())
    }

    /// `open_on` with the password of an encrypted repository from `credentials`.
    pub fn open_on_with(path: &Path, backend: Arc<dyn Backend>, credentials: &Credentials) -> Result<Repository> {
        Self::open_site(Site::open(path)?, backend, credentials)
    }

    fn open_site(site: Site, backend: Arc<dyn Backend>, credentials: &Credentials) -> Result<Repository> {
        let config = crate::config::read_from(&site)?;
        let (unlocked, backend) = unlock(&config, backend, credentials)?;
        let work = site.work_dir(&config.repository_id)?;
        // For a local repository, the generation is read first: a writer that finishes
        // meanwhile raises the index's before the file's, so this order never mistakes a current
        // index for a stale one. A bucket's cache is brought up to date, and its generation is
        // the one it reflects (other machines may write a newer one at any time).
        let generation =
            crate::recover::update_cache(&site, &work, backend.as_ref(), &unlocked.protection, false)?.generation;
        let index = Arc::new(Index::open_read_only(&work.join(paths::INDEX), &unlocked.protection)?);
        let health = IndexHealth::of(&index, generation)?;
        Ok(Repository {
            site,
            work,
            config,
            backend,
            index,
            health,
            temporaries_removed: (0, 0),
            locks: Vec::new(),
            mode: None,
            unreflected: Default::default(),
            protection: unlocked.protection,
            key: unlocked.key,
        })
    }

    /// Runs a read-only operation so that its answer describes one consistent state. Readers
    /// take no lock, so a forget or prune running meanwhile can delete a manifest or pack between
    /// two of its reads; the answer would then show damage that does not exist. When `run` fails,
    /// or `suspect` says its answer shows damage, and a writer was active or finished during the
    /// run, this waits for the writer and runs again on a fresh view (up to 5 times).
    pub fn read_consistently<T>(
        path: &Path,
        credentials: &Credentials,
        mut run: impl FnMut(&Repository) -> Result<T>,
        suspect: impl Fn(&T) -> bool,
    ) -> Result<T> {
        let site = Site::open(path)?;
        let raw = site.raw();
        let generation = || generation::read(raw.as_ref()).ok();
        let mut attempt = 0;
        loop {
            let before = (site.writer_active(), generation());
            let result = Repository::open_with(path, credentials).and_then(|repo| run(&repo));
            let doubtful = result.as_ref().map_or(true, &suspect);
            let raced = before.0 || site.writer_active() || generation() != before.1;
            if !doubtful || !raced || attempt >= 4 {
                return result;
            }
            let started = std::time::Instant::now();
            while site.writer_active() && started.elapsed() < std::time::Duration::from_secs(3600) {
                std::thread::sleep(std::time::Duration::from_millis(if site.is_remote() { 2000 } else { 100 }));
            }
            attempt += 1;
        }
    }

    /// `read_consistently` for an operation on one image, named by `spec` (id, prefix, `latest`):
    /// the image is resolved once, so a rerun after a racing writer works on the same image.
    pub fn read_image_consistently<T>(
        path: &Path,
        credentials: &Credentials,
        spec: &str,
        mut run: impl FnMut(&Repository, &ImageInfo) -> Result<T>,
        suspect: impl Fn(&T) -> bool,
    ) -> Result<(ImageInfo, T)> {
        let mut chosen: Option<String> = None;
        Self::read_consistently(
            path,
            credentials,
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
        Self::open_writer_with(path, command, &Credentials::none())
    }

    /// `open_writer`, asking `credentials` for the password when the repository is encrypted.
    pub fn open_writer_with(path: &Path, command: &str, credentials: &Credentials) -> Result<Repository> {
        Self::open_writer_as(path, command, Access::exclusive(), credentials)
    }

    /// `open_writer_with`, the lock taken as `access` says: shared (backups into a bucket) or
    /// exclusive, waiting for it or not.
    pub fn open_writer_as(path: &Path, command: &str, access: Access, credentials: &Credentials) -> Result<Repository> {
        let site = Site::open(path)?;
        let raw = site.raw();
        Self::open_writer_site(site, command, access, raw, credentials)
    }

    /// `open_writer` with the repository's objects in `backend` (see `open_on`).
    pub fn open_writer_on(path: &Path, command: &str, backend: Arc<dyn Backend>) -> Result<Repository> {
        Self::open_writer_on_with(path, command, backend, &Credentials::none())
    }

    /// `open_writer_on` with the password of an encrypted repository from `credentials`.
    pub fn open_writer_on_with(
        path: &Path,
        command: &str,
        backend: Arc<dyn Backend>,
        credentials: &Credentials,
    ) -> Result<Repository> {
        Self::open_writer_site(Site::open(path)?, command, Access::exclusive(), backend, credentials)
    }

    fn open_writer_site(
        site: Site,
        command: &str,
        access: Access,
        backend: Arc<dyn Backend>,
        credentials: &Credentials,
    ) -> Result<Repository> {
        let mut config = crate::config::read_from(&site)?;
        let (unlocked, backend) = unlock(&config, backend, credentials)?;
        let work = site.work_dir(&config.repository_id)?;
        let locks = site.lock(&work, command, access.mode, access.wait)?;
        // Only alone: a shared writer (a backup into a bucket) changes nothing that others read
        // but its own new objects.
        let exclusive = access.mode == LockMode::Exclusive || !site.is_remote();
        if exclusive {
            crate::config::upgrade(&site, &mut config)?;
        }
        let cache = crate::recover::update_cache(&site, &work, backend.as_ref(), &unlocked.protection, true)?;
        let generation = cache.generation;
        let index_dir = work.join(paths::INDEX);
        let index = Arc::new(Index::open(&index_dir, &unlocked.protection)?);
        // A writer never builds on an index that may lack what the repository holds: a backup
        // would miss dedup and counters, and prune could take live data for garbage.
        let health = IndexHealth::of(&index, generation)?;
        health.require_current(&index_dir)?;
        // Holding the lock alone, every temporary object belongs to a writer that died.
        let mut temporaries_removed = (0, 0);
        for (tmp, size) in if exclusive { backend.temporaries()? } else { Vec::new() } {
            backend.remove_temporary(&tmp)?;
            temporaries_removed = (temporaries_removed.0 + 1, temporaries_removed.1 + size);
        }
        let repo = Repository {
            site,
            work,
            config,
            backend,
            index,
            health,
            temporaries_removed,
            locks,
            mode: Some(if exclusive { LockMode::Exclusive } else { LockMode::Shared }),
            unreflected: cache.unreflected,
            protection: unlocked.protection,
            key: unlocked.key,
        };
        // A bucket's cache catalogued every manifest in the bucket (with its references) just
        // now; one published since is another machine's, for the next update to add.
        if !repo.site.is_remote() {
            for info in catalog::uncatalogued(repo.backend(), &repo.index)? {
                catalog::add(&repo.index, &info)?;
            }
        }
        if let Some(journal) = repo.index.journal()? {
            crate::recover::finish(repo.backend(), &repo.index, &journal)?;
        }
        Ok(repo)
    }

    /// Whether a writer holds the lock of the repository at `path` now (false when it cannot be
    /// told: no such repository, a store that does not answer).
    pub fn writer_active(path: &Path) -> bool {
        Site::open(path).is_ok_and(|site| site.writer_active())
    }

    /// Removes the writer lock a dead process left in a bucket: only a stale one (not renewed
    /// for 15 minutes), or any with `force`. A local repository has nothing to remove.
    pub fn unlock(path: &Path, force: bool) -> Result<crate::storage::remote_lock::Unlocked> {
        match Site::open(path)? {
            Site::S3 { store, .. } => crate::storage::remote_lock::unlock(&store, force),
            Site::Local { .. } => Ok(crate::storage::remote_lock::Unlocked { local: true, locks: Vec::new() }),
        }
    }

    /// Recreates the index from the packs' trailers and the manifests alone (see
    /// `recover::rebuild_index`).
    pub fn rebuild_index(path: &Path) -> Result<crate::recover::RebuildReport> {
        Self::rebuild_index_with(path, &Credentials::none())
    }

    /// `rebuild_index` of a repository that may be encrypted (its packs and manifests are read
    /// with the key).
    pub fn rebuild_index_with(path: &Path, credentials: &Credentials) -> Result<crate::recover::RebuildReport> {
        let site = Site::open(path)?;
        let config = crate::config::read_from(&site)?;
        let (unlocked, backend) = unlock(&config, site.raw(), credentials)?;
        if site.is_remote() {
            // The index of a bucket is this machine's cache: rebuilt from the bucket, which it
            // never changes.
            let work = site.work_dir(&config.repository_id)?;
            let _cache = crate::storage::lock::acquire(&work, "rebuild-index")?;
            return crate::recover::refresh_cache(&site, &work, backend.as_ref(), &unlocked.protection);
        }
        crate::recover::rebuild_index(path, backend.as_ref(), &unlocked.protection)
    }

    /// The generation this writing command finishes with (`commit_generation`), which the
    /// manifests it writes carry.
    pub(crate) fn writing_generation(&self) -> Result<u64> {
        Ok(self.index.generation()?.max(generation::read(self.backend())?) + 1)
    }

    /// Records that a writing command finished: its last index batch is followed by the next
    /// generation, first in the index (synced), then in the generation file. Every writing
    /// command calls this once its index writes are done.
    pub(crate) fn commit_generation(&self) -> Result<()> {
        self.require_lock("a writing command")?;
        let next = self.writing_generation()?;
        let mut txn = Txn::new();
        txn.set_generation(next);
        self.index.commit(txn)?;
        generation::write(self.backend(), next)?;
        // Alone in a bucket, nobody else wrote: the cache reflects the bucket as it is now. A
        // backup shares the bucket, so the next command looks (and finds its objects known).
        // What it could not read when it opened, it still does not reflect.
        if self.site.is_remote() && self.mode == Some(LockMode::Exclusive) {
            let listing = self.site.listing()?.unwrap_or_default();
            Reflects::of(next, listing, &self.unreflected).write(&self.work)?;
        }
        Ok(())
    }

    /// Refuses a command that must run alone (forget, prune, key changes) on a repository
    /// opened with a shared lock.
    pub(crate) fn require_exclusive(&self, command: &str) -> Result<()> {
        self.require_lock(command)?;
        if self.mode != Some(LockMode::Exclusive) {
            return Err(Error::Internal { reason: format!("{command} needs the exclusive lock") });
        }
        Ok(())
    }

    /// Makes sure, asking the bucket, that this writer still holds its lock: a backup asks right
    /// before it publishes its image, so that a holder whose lock was removed (`strata unlock`
    /// on another machine, which then let a prune run) publishes nothing that may name data the
    /// prune deleted.
    pub(crate) fn verify_lock(&self, command: &str) -> Result<()> {
        self.require_lock(command)?;
        for l in &self.locks {
            if let RepoLock::Remote(r) = l {
                if !r.verify()? {
                    return Err(Error::LockLost { location: self.location().display().to_string() });
                }
            }
        }
        Ok(())
    }

    /// The key files of an encrypted repository, and which of them are live and current.
    pub fn key_files(&self) -> Result<Vec<KeyInfo>> {
        let (master, current) = self.master_key()?;
        let list = self.key_list(master)?;
        let mut out = Vec::new();
        for kf in keyring::read_key_files(self.backend())?.into_iter().flatten() {
            let live = list.keys.get(&kf.id) == Some(&kf.generation);
            out.push(KeyInfo { current: kf.id == *current, live, created_ms: kf.created_ms, kdf: kf.kdf, id: kf.id });
        }
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }

    /// Adds a password: a new key file for the master key, then the key list that makes it
    /// live (a crash between the two leaves a key file that unlocks nothing). Needs the writer
    /// lock. Returns the new key's id.
    pub fn add_key(&mut self, password: &[u8], kdf: KdfParams) -> Result<String> {
        self.require_exclusive("key add")?;
        let (master, _) = self.master_key()?;
        let mut list = self.key_list(master)?;
        let id = KeyFile::new_id()?;
        let kf = KeyFile::create(master, password, &self.config.repository_id, &id, 1, kdf, crate::timefmt::now_ms())?;
        self.backend.put(&keyring::key_path(&id), &kf.encode()?)?;
        list.keys.insert(id.clone(), 1);
        self.write_key_list(&list)?;
        Ok(id)
    }

    /// Removes a password: off the key list first, then its file. The last key, and the key
    /// this process opened the repository with, are refused (use `change_password` for that).
    pub fn remove_key(&mut self, id: &str) -> Result<()> {
        self.require_exclusive("key remove")?;
        let (master, current) = self.master_key()?;
        if id == current {
            return Err(Error::BadKeyFile {
                path: keyring::key_path(id),
                reason: "it is the key this command opened the repository with; open with another password to remove it, or change this one with `strata key passwd`".into(),
            });
        }
        let mut list = self.key_list(master)?;
        if list.keys.remove(id).is_none() && self.backend.size(&keyring::key_path(id)).is_err() {
            return Err(Error::BadKeyFile { path: keyring::key_path(id), reason: "no such key".into() });
        }
        if list.keys.is_empty() {
            return Err(Error::BadKeyFile { path: keyring::key_path(id), reason: "it is the last key".into() });
        }
        self.write_key_list(&list)?;
        match self.backend.remove(&keyring::key_path(id)) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Replaces the password of the current key: a new key file is added and made live, then
    /// the old one removed, so the old or the new password works at every step. Returns the
    /// new key's id.
    pub fn change_password(&mut self, password: &[u8], kdf: KdfParams) -> Result<String> {
        let old = self.master_key()?.1.clone();
        let new = self.add_key(password, kdf)?;
        if let Some((_, current)) = self.key.as_mut() {
            *current = new.clone();
        }
        self.remove_key(&old)?;
        Ok(new)
    }

    fn master_key(&self) -> Result<(&MasterKey, &String)> {
        self.key
            .as_ref()
            .map(|(m, id)| (m, id))
            .ok_or_else(|| Error::BadConfig { reason: "the repository is not encrypted: it has no keys".into() })
    }

    fn key_list(&self, master: &MasterKey) -> Result<KeyList> {
        let sealed = self.config.key_list.as_deref().unwrap_or_default();
        KeyList::open(sealed, &master.keys(), &self.config.repository_id)
    }

    fn write_key_list(&mut self, list: &KeyList) -> Result<()> {
        let (master, _) = self.master_key()?;
        let mut config = self.config.clone();
        config.key_list = Some(list.seal(&master.keys(), &config.repository_id)?);
        crate::config::write(&self.site, &config)?;
        self.config = config;
        Ok(())
    }

    fn require_lock(&self, command: &str) -> Result<()> {
        if self.locks.is_empty() {
            return Err(Error::Internal { reason: format!("{command} needs the writer lock") });
        }
        // A bucket's lock removed by `strata unlock` while this command held it: another writer
        // may be running, so nothing more is written.
        for l in &self.locks {
            if let RepoLock::Remote(r) = l {
                if r.lost() {
                    return Err(Error::LockLost { location: self.location().display().to_string() });
                }
            }
        }
        Ok(())
    }

    /// Temporary files left by writers that died, removed when this writer opened: (count, bytes).
    pub fn temporaries_removed(&self) -> (usize, u64) {
        self.temporaries_removed
    }

    /// What the index's completeness and generation records say (see `IndexHealth`).
    pub(crate) fn index_health(&self) -> IndexHealth {
        self.health
    }

    /// The repository as the user named it (a directory, or `s3:…`), for messages.
    pub fn location(&self) -> PathBuf {
        self.site.name()
    }

    /// The directory of the index: in the repository, or in this machine's cache of a bucket.
    pub fn index_dir(&self) -> PathBuf {
        self.work.join(paths::INDEX)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// An empty pack for this repository (sealed when it is encrypted).
    pub(crate) fn new_pack(&self) -> crate::pack::PackBuilder {
        crate::pack::PackBuilder::with_buffer(Vec::new(), self.protection.clone())
    }

    /// How this repository names chunks and seals objects (plain for `encryption: none`).
    pub fn protection(&self) -> &Protection {
        &self.protection
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Handles on the storage and the index that outlive a borrow of the repository: for
    /// readers that live as long as a mount or a server.
    pub fn shared_backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    pub fn shared_index(&self) -> Arc<Index> {
        self.index.clone()
    }

    /// A reader of `image` (see `ImageReader::open`) on this repository's storage and index.
    pub fn reader(&self, image: &ImageInfo, cache_bytes: u64) -> Result<ImageReader> {
        ImageReader::open(self.shared_backend(), self.shared_index(), self.protection.clone(), image, cache_bytes)
    }

    /// A reader of `image` whose decoded frames go to `cache`, shared with other readers (two
    /// images of one disk share most of their frames).
    pub fn reader_sharing(&self, image: &ImageInfo, cache: Arc<FrameCache>) -> Result<ImageReader> {
        let map = ImageMap::resolve(self.backend(), image)?;
        Ok(ImageReader::with_map(self.shared_backend(), self.shared_index(), self.protection.clone(), map, cache))
    }

    /// Every image, oldest first: the catalog plus (for a reader) manifests not yet catalogued.
    pub fn images(&self) -> Result<Vec<ImageInfo>> {
        let mut all = catalog::catalogued(&self.index)?;
        if self.locks.is_empty() {
            all.extend(catalog::uncatalogued(self.backend(), &self.index)?);
        }
        all.sort_by_key(|a| (a.created_ms, a.id));
        Ok(all)
    }

    /// Finds an image by full id, unique id prefix, or `latest` (the newest image).
    pub fn find_image(&self, spec: &str) -> Result<ImageInfo> {
        catalog::find(self.images()?, spec)
    }

    /// Images whose manifests cannot be read and that the catalog does not list.
    pub fn damaged_images(&self) -> Result<Vec<DamagedImage>> {
        catalog::damaged(self.backend(), &self.index)
    }

    /// The images needed to restore `image`, full first (see `catalog::chain`).
    pub fn chain(&self, image: &ImageInfo) -> Result<Vec<ImageInfo>> {
        catalog::chain(self.backend(), image)
    }

    /// The resolved extents of the last image of `chain` (see `catalog::view`).
    pub fn view(&self, chain: &[ImageInfo]) -> Result<View> {
        catalog::view(self.backend(), chain)
    }
}
