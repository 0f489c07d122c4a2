//! Backup: plan the image (`plan`), run the pipeline that reads, chunks, deduplicates and packs
//! the source (`pipeline`, `packer`), then publish the manifest and bring the index up to date.
//!
//! Write order (docs/FORMAT.md, "Write order"): each pack is durable (fsync, rename, directory
//! fsync) before its index batch is committed (synced); all of an image's packs are indexed
//! before its manifest is published (the commit point); the catalog entry comes last.

mod chunker;
mod packer;
mod pipeline;
mod plan;
mod source;

pub use chunker::{is_zero, split_regions, split_segment};
pub(crate) use packer::{Repacker, StoredPack};
pub(crate) use plan::{plan_kind, plan_on, validate_source_id};
pub use plan::{KindRequest, MAX_SOURCE_ID_LEN};
pub(crate) use source::Source;

use std::path::Path;
use std::time::Instant;

use crate::allocation::{self, Region, UsageMap};
use crate::error::{Error, Result};
use crate::id::ImageId;
use crate::index::{Journal, RefDelta, Txn};
use crate::manifest::{catalog, tee, ChangeFilter, ImageInfo, Kind, ManifestWriter};
use crate::progress::Progress;
use crate::repository::Repository;
use pipeline::{BaseExtents, Run};

/// A file changed this close to the backup's start is read again by the next backup.
const RACY_WINDOW_NS: i128 = 1_000_000_000;

#[derive(Clone, Debug)]
pub struct BackupOptions {
    pub kind: KindRequest,
    /// Identity that joins repeated backups of one disk into sets; default: the canonical path.
    pub source_id: Option<String>,
    /// Read a regular file even when its stat says it is unchanged since the base image.
    pub force_read: bool,
    /// The clock for the image's time (`strata run` under `STRATA_NOW`); `None`: the system's.
    pub now_ms: Option<u64>,
    /// `backup --base IMAGE`: an incremental on IMAGE, or a differential on the full of IMAGE's
    /// set, instead of on the newest image of the source's newest set.
    pub base: Option<String>,
    /// Read every block (sector by sector), not only those the filesystems' allocation maps call
    /// used: for forensics, or a layout Strata misjudges.
    pub all_blocks: bool,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            kind: KindRequest::Auto,
            source_id: None,
            force_read: false,
            now_ms: None,
            base: None,
            all_blocks: false,
        }
    }
}

/// What a backup did besides publishing its image.
#[derive(Clone, Debug, PartialEq)]
pub struct BackupOutcome {
    pub info: ImageInfo,
    /// Bytes read from the source (holes of sparse files are not read; 0 when skipped by stat).
    pub bytes_read: u64,
    /// Bytes of segments whose fingerprint equalled the base's: read and hashed, not chunked
    /// (their extents are the base's).
    pub bytes_reused: u64,
    /// Bytes of chunks in the other segments that the base holds at the same place: hashed,
    /// not chunked again (chunker.rs, `Cut`).
    pub chunk_bytes_reused: u64,
    /// What went wrong after the image was stored (it is stored all the same).
    pub warnings: Vec<String>,
    /// The disk's partitions and filesystems, what of each was left unread as unused, and why
    /// a partition was read whole (empty when the source was not read).
    pub regions: Vec<Region>,
}

/// Backs up `source_path` into `repo` (opened for writing) and returns the published image.
pub fn backup(
    repo: &Repository,
    source_path: &Path,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<ImageInfo> {
    backup_outcome(repo, source_path, opts, progress).map(|o| o.info)
}

/// `backup`, with what it read. Named steps: plan the image, read the source (unless its stat
/// says it is unchanged), publish the manifest (the commit point), bring the index up to date.
pub fn backup_outcome(
    repo: &Repository,
    source_path: &Path,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupOutcome> {
    let started = Instant::now();
    let src = Source::open(source_path)?;
    let (mut info, base, chain) = plan_image(repo, &src, opts)?;
    repo.index().begin(&Journal { op: "backup".into(), ..Default::default() })?;
    let mut manifest = ManifestWriter::create(repo.backend(), &info.id)?;
    let mut delta = RefDelta::default();
    let mut bytes_read = 0;
    let mut bytes_reused = 0;
    let mut chunk_bytes_reused = 0;
    let mut regions = Vec::new();
    // A base written before segment fingerprints (or whose table cannot be read) has none: then
    // every segment is chunked.
    let base_segments =
        base.as_ref().and_then(|b| crate::manifest::read_fingerprints(repo.backend(), &b.id).ok()).unwrap_or_default();
    let segments;
    let unchanged_file = !opts.force_read
        && src.stat().is_some()
        && base.as_ref().is_some_and(|b| b.source_stat == src.stat() && b.logical_bytes == src.size());
    if unchanged_file {
        // Same size, inode, mtime and ctime as when the base was read: an empty delta.
        info.read_skipped = true;
        info.unused_bytes = base.as_ref().map_or(0, |b| b.unused_bytes);
        segments = base_segments;
    } else {
        // The allocation maps are read before the first data byte: see docs/DESIGN.md, "Used
        // blocks", for a filesystem that changes meanwhile.
        let usage = if opts.all_blocks { UsageMap::every_block() } else { allocation::scan(&src)? };
        regions = usage.regions().to_vec();
        crate::failpoint::hit!("backup-read-start");
        let view =
            if chain.is_empty() { None } else { Some(repo.view(&chain).map_err(|e| base_unreadable(&base, e))?) };
        // The base's extents go to the change filter and, a window ahead, to the chunker.
        let (filter_view, chunker_view) = view.map(tee).unzip();
        let filter = ChangeFilter::new(filter_view);
        let base_extents = BaseExtents::new(chunker_view);
        let run = Run::new(repo, filter, &mut manifest, &mut info, &mut delta, base_segments, base_extents);
        let outcome = run.run(&src, &usage, progress)?;
        (bytes_read, bytes_reused, chunk_bytes_reused) =
            (outcome.bytes_read, outcome.bytes_reused, outcome.chunk_bytes_reused);
        segments = outcome.segments;
        check_source_after_read(&src, &mut info)?;
    }
    // Timestamps come from a coarse clock: a file changed within the same tick as this backup
    // could keep its mtime and ctime. Such a "racy" stat is not recorded, so the next backup reads.
    let started_ns = info.created_ms as i128 * 1_000_000;
    if info.source_stat.is_some_and(|s| s.mtime_ns.max(s.ctime_ns) + RACY_WINDOW_NS > started_ns) {
        info.source_stat = None;
    }
    info.extent_count = manifest.count();
    info.seconds = started.elapsed().as_secs_f64();
    crate::failpoint::hit!("before-manifest");
    repo.verify_lock("backup")?;
    manifest.finish(&info, &segments)?; // the commit point: from here on the image is stored
    crate::failpoint::hit!("manifest-before-catalog");
    let warnings = update_index(repo, &info, delta);
    Ok(BackupOutcome { info, bytes_read, bytes_reused, chunk_bytes_reused, warnings, regions })
}

/// The new image's info (kind, base, set, depth), its base and the base's chain.
fn plan_image(
    repo: &Repository,
    src: &Source,
    opts: &BackupOptions,
) -> Result<(ImageInfo, Option<ImageInfo>, Vec<ImageInfo>)> {
    let source_id = opts.source_id.clone().unwrap_or_else(|| src.canonical_id());
    validate_source_id(&source_id)?;
    let images = repo.images()?;
    let (kind, base) = match &opts.base {
        None => plan_kind(&images, &source_id, opts.kind)?,
        Some(spec) => plan_on(repo.find_image(spec)?, &images, &source_id, opts.kind)?,
    };
    // The base's chain, as its manifests say: its length is the new image's depth.
    let chain =
        base.as_ref().map(|b| repo.chain(b)).transpose().map_err(|e| base_unreadable(&base, e))?.unwrap_or_default();
    // Depth bound: a chain that would grow past it gets a synthetic full (a new set) instead.
    let max_depth = repo.config().max_chain_depth;
    let too_deep = kind == Kind::Incremental && max_depth > 0 && chain.len() as u32 > max_depth;
    let (kind, base, chain, synthetic) =
        if too_deep { (Kind::Full, None, Vec::new(), true) } else { (kind, base, chain, false) };
    // Strictly after every earlier image, so that catalog order is backup order even within one
    // millisecond (writers are exclusive, so this cannot race).
    let created_ms = images
        .iter()
        .map(|i| i.created_ms + 1)
        .max()
        .unwrap_or(0)
        .max(opts.now_ms.unwrap_or_else(crate::timefmt::now_ms));
    let id = ImageId::generate(&source_id);
    let info = ImageInfo {
        id,
        kind,
        source_id,
        set: base.as_ref().map_or(id, |b| b.set),
        base: base.as_ref().map(|b| b.id),
        created_ms,
        logical_bytes: src.size(),
        changed_bytes: 0,
        new_stored_bytes: 0,
        new_raw_bytes: 0,
        new_chunks: 0,
        changed_zero_bytes: 0,
        extent_count: 0,
        depth: chain.len() as u32,
        seconds: 0.0,
        source_stat: src.stat(),
        read_skipped: false,
        synthetic,
        unused_bytes: 0,
        generation: repo.writing_generation()?,
        base_generation: chain.last().map_or(0, |b| b.generation),
    };
    Ok((info, base, chain))
}

/// A file that shrank while it was read is refused; one that changed must not let a later
/// backup skip reading it.
fn check_source_after_read(src: &Source, info: &mut ImageInfo) -> Result<()> {
    if src.current_size()? < src.size() {
        return Err(Error::SourceShrank { path: src.path().into(), expected: src.size(), found: src.current_size()? });
    }
    if src.current_stat() != src.stat() {
        info.source_stat = None;
    }
    Ok(())
}

/// After the commit point: catalog entry, counters, generation. This only brings the index up
/// to date; the next writer does it if this fails (the journal stays set), so a failure is a
/// warning on a stored image, not a failed backup.
fn update_index(repo: &Repository, info: &ImageInfo, delta: RefDelta) -> Vec<String> {
    let mut warnings = Vec::new();
    let catalogued = (|| {
        let mut txn = Txn::new();
        catalog::put(&mut txn, info)?;
        txn.clear_journal();
        repo.index().counters().apply(delta, txn)?;
        repo.commit_generation()
    })();
    if let Err(e) = catalogued {
        warnings.push(format!(
            "the image is stored, but bringing the index up to date after it failed ({e}); the next backup, forget or prune completes it"
        ));
    }
    warnings
}

/// An incremental or differential whose base cannot be read cannot be written; say what helps.
fn base_unreadable(base: &Option<ImageInfo>, e: Error) -> Error {
    match (base, e) {
        (Some(b), e @ (Error::CorruptManifest { .. } | Error::MissingManifest { .. } | Error::Decrypt { .. })) => {
            Error::BaseUnreadable { base: b.id.to_string(), reason: e.to_string() }
        }
        (_, e) => e,
    }
}
