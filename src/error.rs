//! The library's error type: one typed, matchable enum; messages name the object and say what to do.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::timefmt::format_ms;

/// Who holds the writer lock, as its lock file says (see `lock`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub pid: u32,
    pub host: String,
    pub command: String,
    pub since_ms: u64,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pid == 0 {
            return write!(f, "another process (it has not written its name yet)");
        }
        write!(f, "pid {} on {} running `{}` since {}", self.pid, self.host, self.command, format_ms(self.since_ms))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path} is not a Strata repository (no readable config); create one with `strata init`")]
    NotARepository { path: PathBuf },

    #[error("repositories on {scheme} are not supported by this version of Strata, only local directories and S3 buckets (s3:http[s]://HOST[:PORT]/BUCKET[/PREFIX]); a local directory whose name has a colon can be given as ./NAME")]
    UnsupportedLocation { location: String, scheme: String },

    #[error("repository {location}: {reason}")]
    BadLocation { location: String, reason: String },

    #[error("cannot {op} {object}: {hint} ({detail})")]
    Remote { op: &'static str, object: String, hint: String, detail: String },

    #[error("the lock of {location} was removed while this command held it (`strata unlock` on another machine?); it stopped before writing more")]
    LockLost { location: String },

    #[error("the lock of {location} was left by {holder}, which has not renewed it since {}: if that process is gone, remove the lock with `strata unlock`", format_ms(*.refreshed_ms))]
    StaleLock { location: String, holder: LockHolder, refreshed_ms: u64 },

    #[error("{path} holds packs or images but no config: a Strata repository whose config file is lost or unreadable; restore `config` from a copy of the repository (`strata init` refuses a non-empty directory)")]
    ConfigMissing { path: PathBuf },

    #[error(
        "{path} already exists and is not empty; choose a new directory (or an empty bucket prefix) for the repository"
    )]
    RepositoryExists { path: PathBuf },

    #[error("the keys of {from} cannot be copied: {reason}")]
    KeysNotCopyable { from: String, reason: String },

    #[error("{to} names chunks differently from {from} (another chunk-id key), so copied images would not find their chunks; copy into a repository made with `strata init DEST --copy-keys-from SOURCE`")]
    CopyKeysDiffer { from: String, to: String },

    #[error("image {image} was rewritten in the source repository while it was copied (a forget there?); nothing of it was published: run the copy again")]
    CopiedImageChanged { image: String },

    #[error("repository format version {found} is not supported by this strata (supports {supported})")]
    UnsupportedFormat { found: u32, supported: u32 },

    #[error("the repository config is invalid: {reason}")]
    BadConfig { reason: String },

    #[error("job file {path}: {reason}")]
    BadJob { path: PathBuf, reason: String },

    #[error(
        "no job {name}: {path} does not exist (`strata jobs` lists the jobs; STRATA_CONFIG_DIR sets where they live)"
    )]
    JobNotFound { name: String, path: PathBuf },

    #[error("the before hook {hook:?} {reason}; the run of job {job} was cancelled and nothing was backed up")]
    HookFailed { job: String, hook: String, reason: String },

    #[error("the clock ({now}, from STRATA_NOW) is earlier than the newest image in the repository ({newest}); image times rise in backup order")]
    ClockBehind { now: String, newest: String },

    #[error("the repository is locked by {holder}; wait for it to finish (a lock held by a dead process is released automatically)")]
    RepositoryLocked { holder: LockHolder },

    // The cause is part of the message (and not also a `source`, which would print it twice).
    #[error("cannot {op} {path}: {cause}")]
    Io { op: &'static str, path: PathBuf, cause: io::Error },

    #[error(
        "no space left on the device holding {path}; free space there and run the command again (what the repository held before the command is intact)"
    )]
    NoSpace { path: PathBuf },

    #[error("cannot open source {path}: {cause}")]
    SourceOpen { path: PathBuf, cause: io::Error },

    #[error("source {path} is neither a regular file nor a block device")]
    SourceNotDisk { path: PathBuf },

    #[error("cannot read source {path} at offset {offset}: {cause}")]
    SourceRead { path: PathBuf, offset: u64, cause: io::Error },

    #[error(
        "source {path} shrank while it was read (expected {expected} bytes, it ended at {found}); nothing was recorded"
    )]
    SourceShrank { path: PathBuf, expected: u64, found: u64 },

    #[error("no image matches {spec:?}; list them with `strata images`")]
    ImageNotFound { spec: String },

    #[error("{spec:?} matches several images ({candidates}); give more characters of the id")]
    AmbiguousImage { spec: String, candidates: String },

    #[error("source {source_id:?} has no full image yet, so a {kind} image has no base; run with --kind full or --kind auto")]
    NoBaseImage { source_id: String, kind: &'static str },

    #[error(
        "a policy that keeps nothing (every --keep-* rule is 0) would forget every image; to forget images, name them"
    )]
    PolicyKeepsNothing,

    #[error("source id {shown:?} is not accepted: {reason}")]
    BadSourceId { shown: String, reason: String },

    #[error("the lock file {path} is not a regular file (a symlink or something else); remove it and run again")]
    LockNotAFile { path: PathBuf },

    #[error("--base {base}: {reason}")]
    BadBase { base: String, reason: String },

    #[error("the chain under base image {base} of this backup cannot be read ({reason}); take a full with `--kind full` (and `strata forget` the damaged image)")]
    BaseUnreadable { base: String, reason: String },

    #[error("{spec:?} does not name an image or a partition of one ({reason}); write IMAGE or IMAGE:N, N from 1")]
    BadImageSpec { spec: String, reason: String },

    #[error("image {image} has no partition table; name the whole image, without `:N`")]
    NoPartitionTable { image: String },

    #[error("image {image} has no partition {number} (it has {numbers}); list them with `strata partitions {image}`")]
    PartitionNotFound { image: String, number: u32, numbers: String },

    #[error("the partition table of image {image} cannot be used: {reason}")]
    BadPartitionTable { image: String, reason: String },

    #[error("manifest of image {image} is damaged: {reason}")]
    CorruptManifest { image: String, reason: String },

    #[error("manifest of image {image} is missing; the images whose chains include it cannot be restored")]
    MissingManifest { image: String },

    #[error("pack {pack} is damaged: {reason}")]
    CorruptPack { pack: String, reason: String },

    #[error("chunk {id} in pack {pack} is damaged: {reason}")]
    CorruptChunk { id: String, pack: String, reason: String },

    #[error("chunk {id} needed by image {image} is not in the index")]
    ChunkMissing { id: String, image: String },

    #[error("restore target {target} holds {available} bytes but the image needs {needed}; nothing was written")]
    TargetTooSmall { target: PathBuf, needed: u64, available: u64 },

    #[error("restore target {target} is in use{}; nothing was written (unmount it, or pass --force to write over it anyway)", mounted_at.as_ref().map(|m| format!(" (mounted at {m})")).unwrap_or_default())]
    TargetInUse { target: PathBuf, mounted_at: Option<String> },

    #[error("the delta restore to {target} stopped part-way ({reason}); the target now holds a mix of old and new data: run the same delta restore again to complete it")]
    DeltaIncomplete { target: PathBuf, reason: String },

    #[error(
        "a delta restore writes in place over what the target holds, so --partial cannot be combined with --delta"
    )]
    DeltaPartial,

    #[error("cannot mount on {path}: {reason}")]
    MountPoint { path: PathBuf, reason: String },

    #[error("{path} is busy (a program has a file open or its working directory under it); close them and unmount again, or detach it now with `umount -l {path}`")]
    MountBusy { path: PathBuf },

    #[error("FUSE is not available: {reason}")]
    FuseUnavailable { reason: String },

    #[error("image {image} holds no filesystem Strata can read (no signature of ext2/3/4, FAT12/16/32 or NTFS); name a partition as IMAGE:N (see `strata partitions`)")]
    NoFilesystem { image: String },

    #[error("image {image} holds a {filesystem} filesystem, which Strata cannot read files from (it reads ext2/3/4, FAT12/16/32 and NTFS)")]
    UnsupportedFilesystem { image: String, filesystem: String },

    #[error("no {path} in the filesystem of image {image}")]
    FileNotFound { image: String, path: String },

    #[error("the filesystem of image {image} cannot be read: {reason}")]
    Filesystem { image: String, reason: String },

    #[error("restore target {target} is neither a regular file nor a block device")]
    TargetNotDisk { target: PathBuf },

    #[error("index error: {reason}; if the index is damaged, `strata rebuild-index` recreates it from the packs and manifests")]
    Index { reason: String },

    #[error("the index {path} cannot be used ({reason}); run `strata rebuild-index`, which recreates it from the packs and manifests (nothing backed up is lost)")]
    IndexUnusable { path: PathBuf, reason: String },

    #[error("the index is older than the repository (index generation {index}, repository generation {repository}): it may lack packs and images written since (a damaged or replaced index); run `strata rebuild-index`")]
    IndexStale { index: u64, repository: u64 },

    #[error("image {image} needs chunk {chunk}, which the index does not know: the index is incomplete or out of date, so prune cannot tell which data is unused; run `strata rebuild-index` first")]
    IndexMissesChunk { image: String, chunk: String },

    #[error("the index marks chunk {chunk} as unused but image {image} needs it: the index disagrees with the manifests; run `strata rebuild-index` before pruning")]
    IndexDisagrees { image: String, chunk: String },

    #[error("chunk {id} failed verification before it was stored ({reason}); this points at memory or compressor trouble, nothing was published")]
    VerifyFailed { id: String, reason: String },

    #[error("the repository is encrypted and no password was given: set STRATA_PASSWORD, pass --password-file or --password-command, or run on a terminal to be asked")]
    PasswordNeeded,

    #[error("the password {source_name} {reason}")]
    PasswordSource { source_name: String, reason: String },

    #[error("no key file of this repository opens with that password (tried {tried}); check the password, or list the key files with `strata key list`")]
    WrongPassword { tried: usize },

    #[error("key file {path}: {reason}")]
    BadKeyFile { path: String, reason: String },

    #[error("cannot decrypt {what}: it was changed, damaged, moved from another place or sealed with another key; `strata check` lists what is affected")]
    Decrypt { what: String },

    #[error("the system's random number generator failed: {reason}")]
    Random { reason: String },

    #[error("internal error: {reason}; nothing was published")]
    Internal { reason: String },
}

impl Error {
    /// Whether this is a read, stat or removal of an object (or file) that does not exist.
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { cause, .. } if cause.kind() == std::io::ErrorKind::NotFound)
    }

    /// The same error again, for a request whose failure fails several reads: the kinds a
    /// storage request or a manifest read gives (`Io` keeps its kind and message, the others
    /// their fields), anything else as `Internal` with its message.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Io { op, path, cause } => {
                Error::Io { op, path: path.clone(), cause: io::Error::new(cause.kind(), cause.to_string()) }
            }
            Error::Remote { op, object, hint, detail } => {
                Error::Remote { op, object: object.clone(), hint: hint.clone(), detail: detail.clone() }
            }
            Error::CorruptManifest { image, reason } => {
                Error::CorruptManifest { image: image.clone(), reason: reason.clone() }
            }
            Error::MissingManifest { image } => Error::MissingManifest { image: image.clone() },
            Error::Decrypt { what } => Error::Decrypt { what: what.clone() },
            other => Error::Internal { reason: other.to_string() },
        }
    }

    /// Wraps an I/O error with the operation and path, turning ENOSPC into the typed `NoSpace`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, cause: io::Error) -> Error {
        let path = path.into();
        if cause.raw_os_error() == Some(libc::ENOSPC) || cause.raw_os_error() == Some(libc::EDQUOT) {
            Error::NoSpace { path }
        } else {
            Error::Io { op, path, cause }
        }
    }
}

thread_local! {
    /// Above zero while this thread runs code whose panics `contain_panics` turns into errors.
    static CONTAINING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs `run` and returns its value, or the message of a panic inside it. For the crates that
/// parse what a disk holds (`ntfs`, `ext4-view`, `fatfs`), which can panic on damaged metadata
/// they did not foresee: a damaged disk must be an error, never a crash. The panic message is not
/// printed (the library never prints): the process's panic hook is wrapped once so that it stays
/// quiet while a thread is inside `contain_panics`, and is otherwise unchanged.
pub(crate) fn contain_panics<T>(run: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CONTAINING.with(|c| c.get()) == 0 {
                previous(info);
            }
        }));
    });
    CONTAINING.with(|c| c.set(c.get() + 1));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
    CONTAINING.with(|c| c.set(c.get() - 1));
    outcome.map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default()
    })
}
