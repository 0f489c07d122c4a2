//! The writer lock of a repository in a bucket: the object `locks/writer`, created only when
//! no such object exists (a conditional put, `If-None-Match: *`), naming its holder and when it
//! last renewed the lock. A holder renews it every `RENEW` while it runs and removes it when
//! done; a lock not renewed for `STALE_AFTER` (long enough for clocks minutes apart) belongs to
//! a process that died, is reported as stale, and is removed only by `strata unlock`. A lock
//! whose holder was a process of this machine that is gone is released at once (replaced with a
//! conditional put on its ETag, so two processes cannot both take it over), as a local lock is.
//!
//! A store that ignores the condition (Garage does, `../GARAGE.md`) would let two writers in at
//! once; the lock is read back after it is written and refused when someone else's token is in
//! it, which catches all but a race within one round trip. docs/DESIGN.md says what that leaves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::s3::{S3Backend, S3Store};
use super::Backend;
use crate::error::{Error, LockHolder, Result};

pub(crate) const PATH: &str = "locks/writer";
const RENEW: Duration = Duration::from_secs(60);
/// A lock not renewed for this long is stale.
pub(crate) const STALE_AFTER_MS: u64 = 15 * 60 * 1000;

/// The lock object's contents (JSON; docs/FORMAT.md, "locks/writer").
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LockRecord {
    pub holder: LockHolder,
    /// The machine of the holder (`/etc/machine-id`, or the host name without one): a lock of
    /// this machine whose process is gone is released at once, as a local lock is.
    pub machine: String,
    pub refreshed_ms: u64,
    /// Random, to tell this holder's lock from another's.
    pub token: String,
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

/// Held while it lives; renewed by a thread, removed on drop.
pub(crate) struct RemoteLock {
    store: Arc<S3Store>,
    token: String,
    stop: Arc<(Mutex<bool>, Condvar)>,
    renewer: Option<std::thread::JoinHandle<()>>,
    lost: Arc<AtomicBool>,
}

/// The lock object and its ETag; a record that cannot be read names nobody.
fn read_tagged(store: &S3Store) -> Result<Option<(LockRecord, String)>> {
    Ok(store.get_tagged(PATH)?.map(|(bytes, tag)| {
        let record = serde_json::from_slice(&bytes).unwrap_or(LockRecord {
            holder: LockHolder { pid: 0, host: String::new(), command: String::new(), since_ms: 0 },
            machine: String::new(),
            refreshed_ms: 0,
            token: String::new(),
        });
        (record, tag)
    }))
}

fn read(store: &S3Store) -> Result<Option<LockRecord>> {
    Ok(read_tagged(store)?.map(|(r, _)| r))
}

fn locked_error(store: &S3Store, record: LockRecord) -> Error {
    if record.stale(crate::timefmt::now_ms()) {
        Error::StaleLock { location: store.url().to_string(), holder: record.holder, refreshed_ms: record.refreshed_ms }
    } else {
        Error::RepositoryLocked { holder: record.holder }
    }
}

pub(crate) fn acquire(store: Arc<S3Store>, command: &str) -> Result<RemoteLock> {
    let mut random = [0u8; 8];
    getrandom::getrandom(&mut random).map_err(|e| Error::Random { reason: e.to_string() })?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let record = LockRecord {
        holder: super::lock::holder(command),
        machine: machine_id(),
        refreshed_ms: crate::timefmt::now_ms(),
        token: token.clone(),
    };
    let bytes = serde_json::to_vec(&record).map_err(|e| Error::Internal { reason: format!("lock record: {e}") })?;
    let mut taken = false;
    for _ in 0..3 {
        // Looked at first, so a store without conditional puts overwrites a live lock only in a
        // race; a lock whose holder died on this machine is replaced only as it was read.
        let written = match read_tagged(&store)? {
            None => store.put_new(PATH, &bytes)?,
            Some((existing, tag)) if existing.holder_gone_here() => store.put_if(PATH, &bytes, &tag)?,
            Some((existing, _)) => return Err(locked_error(&store, existing)),
        };
        if !written {
            continue;
        }
        match read(&store)? {
            Some(r) if r.token == token => {
                taken = true;
                break;
            }
            Some(other) => return Err(locked_error(&store, other)),
            None => continue,
        }
    }
    if !taken {
        return Err(match read(&store)? {
            Some(existing) => locked_error(&store, existing),
            None => Error::RepositoryLocked { holder: record.holder },
        });
    }
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let lost = Arc::new(AtomicBool::new(false));
    let renewer = {
        let (store, stop, lost, mut record) = (store.clone(), stop.clone(), lost.clone(), record);
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
                // Renewed only while it is still ours, and only as it was read: a lock that
                // `unlock` removed or someone replaced is not written back.
                match read_tagged(&store) {
                    Ok(Some((r, tag))) if r.token == record.token => {
                        record.refreshed_ms = crate::timefmt::now_ms();
                        if let Ok(b) = serde_json::to_vec(&record) {
                            if let Ok(false) = store.put_if(PATH, &b, &tag) {
                                lost.store(true, Ordering::SeqCst);
                            }
                        }
                    }
                    Ok(_) => lost.store(true, Ordering::SeqCst),
                    Err(_) => {}
                }
            })
            .map_err(|e| Error::Internal { reason: format!("cannot start the lock's renewer: {e}") })?
    };
    Ok(RemoteLock { store, token, stop, renewer: Some(renewer), lost })
}

impl RemoteLock {
    /// Whether someone removed this lock while it was held (`strata unlock` on another machine).
    pub(crate) fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
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
        if let Ok(Some(r)) = read(&self.store) {
            if r.token == self.token {
                let _ = S3Backend(self.store.clone()).remove(PATH);
            }
        }
    }
}

/// Whether a live writer lock is in the bucket (not stale, and not of a process of this
/// machine that is gone).
pub(crate) fn writer_active(store: &Arc<S3Store>) -> bool {
    matches!(read(store), Ok(Some(r)) if !r.stale(crate::timefmt::now_ms()) && !r.holder_gone_here())
}

/// What `strata unlock` found and did.
#[derive(Clone, Debug, Serialize)]
pub struct Unlocked {
    /// A local repository (no lock object: its lock ends with its holder).
    pub local: bool,
    pub holder: Option<LockHolder>,
    pub refreshed_ms: u64,
    pub stale: bool,
    pub removed: bool,
}

/// Removes the lock object when it is stale, or whatever its age with `force`.
pub(crate) fn unlock(store: &Arc<S3Store>, force: bool) -> Result<Unlocked> {
    let Some(r) = read(store)? else {
        return Ok(Unlocked { local: false, holder: None, refreshed_ms: 0, stale: false, removed: false });
    };
    let stale = r.stale(crate::timefmt::now_ms()) || r.holder_gone_here();
    if stale || force {
        S3Backend(store.clone()).remove(PATH)?;
    }
    Ok(Unlocked { local: false, holder: Some(r.holder), refreshed_ms: r.refreshed_ms, stale, removed: stale || force })
}
