//! The locks of a repository in a bucket: one object per holder, `locks/<token>`, naming the
//! holder, its machine, its mode and when it last renewed the lock. Backups take **shared**
//! locks, so several machines back up into one bucket at once; every other writing command
//! (forget, prune, key changes, a job's run) takes an **exclusive** one, which no other lock may
//! share (restic's model). A holder renews its lock every `RENEW` and removes it when done; a
//! lock not renewed for `STALE_AFTER_MS` (long enough for clocks minutes apart) belongs to a
//! process that died, is reported as stale, and is removed only by `strata unlock`. A lock
//! whose holder was a process of this machine that is gone is removed at once, as a local
//! lock would be.
//!
//! Taking a lock needs no conditional put (Garage honours none, `../GARAGE.md`): write the own
//! lock object under a fresh random name, wait `settle()`, list `locks/`, and when any live
//! lock that conflicts with the own one is there, remove the own one and try again later. Of two
//! conflicting takers, the one that lists second sees the other's lock (each writes before it
//! lists, and a store with read-after-write listings shows an object once its PUT returned), so
//! at least one of them withdraws; both may, and then both try again after a random pause.
//! docs/DESIGN.md, "Object storage", has the argument and what it leaves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::s3::{S3Backend, S3Store};
use super::Backend;
use crate::error::{Error, LockHolder, Result};

pub(crate) const DIR: &str = "locks";
const RENEW: Duration = Duration::from_secs(60);
/// A lock not renewed for this long is stale.
pub(crate) const STALE_AFTER_MS: u64 = 15 * 60 * 1000;
/// A holder that could not renew its lock for this long takes it for lost: others may soon
/// call it stale.
const LOST_AFTER_MS: u64 = 10 * 60 * 1000;
/// A conflicting lock counts as held once it has been seen this long: a taker that met another
/// taker withdraws its lock at once, so a lock seen only once may be on its way out.
const HELD_AFTER: Duration = Duration::from_secs(1);

/// How a writing command shares the repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Backups: any number at once.
    Shared,
    /// Everything else that writes: alone.
    Exclusive,
}

impl LockMode {
    /// As the lock object and `unlock --json` spell it.
    pub fn name(self) -> &'static str {
        match self {
            LockMode::Shared => "shared",
            LockMode::Exclusive => "exclusive",
        }
    }

    fn conflicts(self, other: LockMode) -> bool {
        self == LockMode::Exclusive || other == LockMode::Exclusive
    }
}

fn exclusive() -> LockMode {
    LockMode::Exclusive
}

/// A lock object's contents (JSON; docs/FORMAT.md, "locks/").
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LockRecord {
    pub holder: LockHolder,
    /// The machine of the holder (`/etc/machine-id`, or the host name without one): a lock of
    /// this machine whose process is gone is removed at once, as a local lock would be.
    pub machine: String,
    pub refreshed_ms: u64,
    /// Random; also the object's name.
    pub token: String,
    /// Absent in the one lock object (`locks/writer`) of strata before shared locks: exclusive.
    #[serde(default = "exclusive")]
    pub mode: LockMode,
}

impl LockRecord {
    fn stale(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.refreshed_ms) > STALE_AFTER_MS
    }

    /// Whether its holder was a process of this machine that no longer runs.
    fn holder_gone_here(&self) -> bool {
        if self.machine.is_empty() || self.machine != machine_id() || self.holder.pid == 0 {
            return false;
        }
        // SAFETY: signal 0 only asks whether the process exists.
        let rc = unsafe { libc::kill(self.holder.pid as libc::pid_t, 0) };
        rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    }
}

fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(super::lock::hostname)
}

/// How long a taker waits between writing its lock and listing the others: a margin for stores
/// whose listings lag behind their writes. `STRATA_LOCK_SETTLE_MS` sets it (default 200).
fn settle() -> Duration {
    let ms = std::env::var("STRATA_LOCK_SETTLE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    Duration::from_millis(ms)
}

/// The lock objects in the bucket, each with its path. One that cannot be read (a holder removed
/// it meanwhile) is left out; one that does not decode names nobody and is exclusive, so that
/// garbage under `locks/` stops writers rather than being ignored (`unlock --force` removes it).
fn all(store: &Arc<S3Store>) -> Result<Vec<(String, LockRecord)>> {
    let backend = S3Backend(store.clone());
    let mut out = Vec::new();
    for path in backend.list(DIR)? {
        let bytes = match backend.get(&path) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        let record = serde_json::from_slice(&bytes).unwrap_or(LockRecord {
            holder: LockHolder { pid: 0, host: String::new(), command: String::new(), since_ms: 0 },
            machine: String::new(),
            refreshed_ms: 0,
            token: String::new(),
            mode: LockMode::Exclusive,
        });
        out.push((path, record));
    }
    Ok(out)
}

/// The locks that count: a lock of a dead process of this machine is removed on the way.
fn live(store: &Arc<S3Store>) -> Result<Vec<(String, LockRecord)>> {
    let mut out = Vec::new();
    for (path, record) in all(store)? {
        if record.holder_gone_here() {
            S3Backend(store.clone()).remove(&path)?;
        } else {
            out.push((path, record));
        }
    }
    Ok(out)
}

fn locked_error(store: &S3Store, record: &LockRecord) -> Error {
    if record.stale(crate::timefmt::now_ms()) {
        Error::StaleLock {
            location: store.url().to_string(),
            holder: record.holder.clone(),
            refreshed_ms: record.refreshed_ms,
        }
    } else {
        Error::RepositoryLocked { holder: record.holder.clone() }
    }
}

/// The first lock among `locks` (other than `own`) that a `mode` lock cannot share the
/// repository with.
fn conflict<'a>(locks: &'a [(String, LockRecord)], own: &str, mode: LockMode) -> Option<&'a (String, LockRecord)> {
    locks.iter().filter(|(p, _)| p != own).find(|(_, r)| r.mode.conflicts(mode))
}

/// Held while it lives; renewed by a thread, removed on drop.
pub(crate) struct RemoteLock {
    store: Arc<S3Store>,
    path: String,
    stop: Arc<(Mutex<bool>, Condvar)>,
    renewer: Option<std::thread::JoinHandle<()>>,
    lost: Arc<AtomicBool>,
}

/// Takes a `mode` lock for `command`, trying again for up to `wait` while a live conflicting
/// lock is there (and until a conflicting lock has been there for `HELD_AFTER`, whatever the
/// wait). A stale conflicting lock fails at once: only `strata unlock` removes it.
pub(crate) fn acquire(store: Arc<S3Store>, command: &str, mode: LockMode, wait: Duration) -> Result<RemoteLock> {
    let started = Instant::now();
    let mut first_seen: std::collections::HashMap<String, Instant> = std::collections::HashMap::new();
    let backend = S3Backend(store.clone());
    loop {
        let token = random_hex(8)?;
        let path = format!("{DIR}/{token}");
        let record = LockRecord {
            holder: super::lock::holder(command),
            machine: machine_id(),
            refreshed_ms: crate::timefmt::now_ms(),
            token,
            mode,
        };
        // Looked at first, so that a taker does not even show itself while the way is blocked.
        let (at, blocker) = match conflict(&live(&store)?, &path, mode) {
            Some((p, r)) => (p.clone(), r.clone()),
            None => {
                let bytes =
                    serde_json::to_vec(&record).map_err(|e| Error::Internal { reason: format!("lock record: {e}") })?;
                backend.put(&path, &bytes)?;
                std::thread::sleep(settle());
                let others = match live(&store) {
                    Ok(l) => l,
                    Err(e) => {
                        // Not left behind for others to wait on.
                        let _ = backend.remove(&path);
                        return Err(e);
                    }
                };
                match conflict(&others, &path, mode) {
                    None => return hold(store, path, record),
                    Some((p, r)) => {
                        let found = (p.clone(), r.clone());
                        backend.remove(&path)?;
                        found
                    }
                }
            }
        };
        let held = first_seen.entry(at).or_insert_with(Instant::now).elapsed() >= HELD_AFTER;
        if blocker.stale(crate::timefmt::now_ms()) || (held && started.elapsed() >= wait) {
            return Err(locked_error(&store, &blocker));
        }
        // A random pause (0.2 to 1.2 s), so that two takers that met do not meet again.
        let mut r = [0u8; 1];
        getrandom::getrandom(&mut r).map_err(|e| Error::Random { reason: e.to_string() })?;
        std::thread::sleep(Duration::from_millis(200 + u64::from(r[0]) * 4));
    }
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut random = vec![0u8; bytes];
    getrandom::getrandom(&mut random).map_err(|e| Error::Random { reason: e.to_string() })?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

/// The lock taken: starts the thread that renews it.
fn hold(store: Arc<S3Store>, path: String, mut record: LockRecord) -> Result<RemoteLock> {
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let lost = Arc::new(AtomicBool::new(false));
    let renewer = {
        let (store, stop, lost, path) = (store.clone(), stop.clone(), lost.clone(), path.clone());
        std::thread::Builder::new()
            .name("strata-lock".into())
            .spawn(move || loop {
                let (flag, cv) = &*stop;
                let guard = flag.lock().unwrap_or_else(|p| p.into_inner());
                let (guard, _) = cv.wait_timeout(guard, RENEW).unwrap_or_else(|p| p.into_inner());
                if *guard {
                    return;
                }
                drop(guard);
                // Renewed only while it is still there: a lock that `unlock` removed is not
                // written back, and its holder writes nothing more.
                let backend = S3Backend(store.clone());
                match backend.get(&path) {
                    Ok(_) => {
                        record.refreshed_ms = crate::timefmt::now_ms();
                        if let Ok(b) = serde_json::to_vec(&record) {
                            let _ = backend.put(&path, &b);
                        }
                    }
                    Err(e) if e.is_not_found() => lost.store(true, Ordering::SeqCst),
                    Err(_) => {}
                }
                if crate::timefmt::now_ms().saturating_sub(record.refreshed_ms) > LOST_AFTER_MS {
                    lost.store(true, Ordering::SeqCst);
                }
            })
            .map_err(|e| Error::Internal { reason: format!("cannot start the lock's renewer: {e}") })?
    };
    Ok(RemoteLock { store, path, stop, renewer: Some(renewer), lost })
}

impl RemoteLock {
    /// Whether this lock was lost while it was held: removed by `strata unlock` on another
    /// machine, or not renewed for so long that others may call it stale.
    pub(crate) fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Asks the bucket whether the lock is still there, now (a backup asks right before it
    /// publishes its image: a holder whose lock was removed must not).
    pub(crate) fn verify(&self) -> Result<bool> {
        if self.lost() {
            return Ok(false);
        }
        match S3Backend(self.store.clone()).get(&self.path) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => {
                self.lost.store(true, Ordering::SeqCst);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for RemoteLock {
    fn drop(&mut self) {
        {
            let (flag, cv) = &*self.stop;
            *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        let _ = S3Backend(self.store.clone()).remove(&self.path);
    }
}

/// Whether a live lock is in the bucket (not stale, and not of a process of this machine that
/// is gone).
pub(crate) fn writer_active(store: &Arc<S3Store>) -> bool {
    let now = crate::timefmt::now_ms();
    matches!(all(store), Ok(locks) if locks.iter().any(|(_, r)| !r.stale(now) && !r.holder_gone_here()))
}

/// One lock as `strata unlock` found it.
#[derive(Clone, Debug, Serialize)]
pub struct LockState {
    pub holder: LockHolder,
    pub mode: LockMode,
    pub refreshed_ms: u64,
    pub stale: bool,
    pub removed: bool,
}

/// What `strata unlock` found and did.
#[derive(Clone, Debug, Serialize)]
pub struct Unlocked {
    /// A local repository (no lock objects: its lock ends with its holder).
    pub local: bool,
    pub locks: Vec<LockState>,
}

/// Removes the lock objects that are stale (or whose holder died on this machine), or all of
/// them with `force`.
pub(crate) fn unlock(store: &Arc<S3Store>, force: bool) -> Result<Unlocked> {
    let now = crate::timefmt::now_ms();
    let mut locks = Vec::new();
    for (path, r) in all(store)? {
        let stale = r.stale(now) || r.holder_gone_here();
        if stale || force {
            S3Backend(store.clone()).remove(&path)?;
        }
        locks.push(LockState {
            holder: r.holder,
            mode: r.mode,
            refreshed_ms: r.refreshed_ms,
            stale,
            removed: stale || force,
        });
    }
    Ok(Unlocked { local: false, locks })
}
