//! The backup pipeline: read → cut (FastCDC) → hash (BLAKE3), segments in parallel → compare
//! with the base image → batched dedup lookups → frames of new chunks, zstd + verify in parallel
//! → packs → index → manifest → catalog. The next window of segments is read and chunked while
//! the current one is compressed, and a pack writer thread makes packs durable and indexes them
//! meanwhile. Memory is bounded by two windows of segments and three packs, whatever the disk
//! size.
//!
//! Write order (docs/FORMAT.md, "Write order"): each pack is durable (fsync, rename, directory
//! fsync) before its index batch is committed (synced); all of an image's packs are indexed
//! before its manifest is published (the commit point); the catalog entry comes last.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::path::Path;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::Mutex;
use std::time::Instant;

use rayon::prelude::*;

use crate::chunker::split_segment;
use crate::config::ChunkerParams;
use crate::error::{Error, Result};
use crate::extent::{Content, Extent};
use crate::id::{ChunkId, ImageId, PackId};
use crate::index::{put_image, Batch, ChunkLookup};
use crate::manifest::{ChangeFilter, ImageInfo, Kind, ManifestWriter};
use crate::pack::{compress_frame, Codec, PackBuilder, FRAME_TARGET, MAX_FRAME_LEN};
use crate::progress::Progress;
use crate::refs::{self, RefDelta};
use crate::repository::Repository;
use crate::source::Source;

/// Free space needed before the index's memtable is flushed at the end of a backup (RocksDB's
/// memtable is at most 64 MiB by default).
const FLUSH_HEADROOM: u64 = 256 * 1024 * 1024;

/// A file changed this close to the backup's start is read again by the next backup.
const RACY_WINDOW_NS: i128 = 1_000_000_000;

/// Which kind of image to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindRequest {
    /// Full when the source has no backup set yet, else incremental.
    Auto,
    Full,
    Differential,
    Incremental,
}

#[derive(Clone, Debug)]
pub struct BackupOptions {
    pub kind: KindRequest,
    /// Identity that joins repeated backups of one disk into sets; default: the canonical path.
    pub source_id: Option<String>,
    /// Read a regular file even when its stat says it is unchanged since the base image.
    pub force_read: bool,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions { kind: KindRequest::Auto, source_id: None, force_read: false }
    }
}

/// The longest source id accepted, in bytes (ids are often device paths; Linux paths are at
/// most 4096 bytes). Checked before anything is written: the catalog and every manifest carry it.
pub const MAX_SOURCE_ID_LEN: usize = 4096;

/// A source id is 1 to `MAX_SOURCE_ID_LEN` bytes of UTF-8 without control characters (which
/// would garble listings).
pub fn validate_source_id(id: &str) -> Result<()> {
    let shown: String = id.chars().take(40).collect();
    let bad = |reason: String| Err(Error::BadSourceId { shown: shown.clone(), reason });
    if id.is_empty() {
        return bad("it is empty".into());
    }
    if id.len() > MAX_SOURCE_ID_LEN {
        return bad(format!("it is {} bytes long; the limit is {MAX_SOURCE_ID_LEN}", id.len()));
    }
    if id.chars().any(char::is_control) {
        return bad("it contains control characters".into());
    }
    Ok(())
}

/// Chooses kind and base from the catalog: the base of a differential is the set's full, the base
/// of an incremental is the newest image of the set.
pub fn plan_kind(images: &[ImageInfo], source_id: &str, req: KindRequest) -> Result<(Kind, Option<ImageInfo>)> {
    let of_source: Vec<&ImageInfo> = images.iter().filter(|i| i.source_id == source_id).collect();
    let latest_full = of_source.iter().rev().find(|i| i.kind == Kind::Full).copied();
    let kind = match req {
        KindRequest::Full => return Ok((Kind::Full, None)),
        KindRequest::Auto if latest_full.is_none() => return Ok((Kind::Full, None)),
        KindRequest::Auto | KindRequest::Incremental => Kind::Incremental,
        KindRequest::Differential => Kind::Differential,
    };
    let full = latest_full.ok_or(Error::NoBaseImage { source_id: source_id.into(), kind: kind.name() })?;
    let base = match kind {
        Kind::Differential => full,
        // By the set's label, not the full's id: after `forget --rebase` the set's full is a
        // synthetic one whose id differs from the label.
        _ => of_source.iter().rev().find(|i| i.set == full.set).copied().unwrap_or(full),
    };
    Ok((kind, Some(base.clone())))
}

/// What a backup did besides publishing its image.
#[derive(Clone, Debug, PartialEq)]
pub struct BackupOutcome {
    pub info: ImageInfo,
    /// Bytes read from the source (holes of sparse files are not read; 0 when skipped by stat).
    pub bytes_read: u64,
    /// What went wrong after the image was stored (it is stored all the same).
    pub warnings: Vec<String>,
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

/// `backup`, with what it read.
pub fn backup_outcome(
    repo: &Repository,
    source_path: &Path,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupOutcome> {
    let started = Instant::now();
    let src = Source::open(source_path)?;
    let source_id = opts.source_id.clone().unwrap_or_else(|| src.canonical_id());
    validate_source_id(&source_id)?;
    let images = repo.images()?;
    let (kind, base) = plan_kind(&images, &source_id, opts.kind)?;
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
    let created_ms = images.iter().map(|i| i.created_ms + 1).max().unwrap_or(0).max(crate::timefmt::now_ms());
    let id = ImageId::generate(&source_id);
    let mut info = ImageInfo {
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
    };
    refs::begin(repo.index(), &refs::Journal { op: "backup".into(), ..Default::default() })?;
    let mut manifest = ManifestWriter::create(repo.backend(), &id)?;
    let mut delta = RefDelta::default();
    let mut bytes_read = 0;

    let unchanged_file = !opts.force_read
        && src.stat().is_some()
        && base.as_ref().is_some_and(|b| b.source_stat == src.stat() && b.logical_bytes == src.size());
    if unchanged_file {
        // Same size, inode, mtime and ctime as when the base was read: an empty delta.
        info.read_skipped = true;
    } else {
        let view =
            if chain.is_empty() { None } else { Some(repo.view(&chain).map_err(|e| base_unreadable(&base, e))?) };
        let filter = ChangeFilter::new(view);
        bytes_read = Run::new(repo, filter, &mut manifest, &mut info, &mut delta).run(&src, progress)?;
        // A file that changed while it was read must not let a later backup skip reading it.
        if src.current_size()? < src.size() {
            return Err(Error::SourceShrank {
                path: src.path().into(),
                expected: src.size(),
                found: src.current_size()?,
            });
        }
        if src.current_stat() != src.stat() {
            info.source_stat = None;
        }
    }
    // Timestamps come from a coarse clock: a file changed within the same tick as this backup
    // could keep its mtime and ctime. Such a "racy" stat is not recorded, so the next backup reads.
    let started_ns = created_ms as i128 * 1_000_000;
    if info.source_stat.is_some_and(|s| s.mtime_ns.max(s.ctime_ns) + RACY_WINDOW_NS > started_ns) {
        info.source_stat = None;
    }
    info.extent_count = manifest.count();
    info.seconds = started.elapsed().as_secs_f64();
    crate::failpoint::hit!("before-manifest");
    manifest.finish(&info)?; // the commit point: from here on the image is stored
    crate::failpoint::hit!("manifest-before-catalog");
    // What follows only brings the index up to date; the next writer does it if this fails (the
    // journal stays set), so a failure here is a warning on a stored image, not a failed backup.
    let mut warnings = Vec::new();
    let catalogued = (|| {
        let mut batch = Batch::default();
        put_image(&mut batch, &info)?;
        refs::finish(&mut batch);
        refs::apply(repo.index(), delta, batch)?;
        repo.commit_generation()
    })();
    if let Err(e) = catalogued {
        warnings.push(format!(
            "the image is stored, but bringing the index up to date after it failed ({e}); the next backup, forget or prune completes it"
        ));
    }
    // The image is published and durable. Writing the index's log out as a compressed table file
    // only saves space (the log holds the same records uncompressed), so it is skipped when space
    // is short (Debian's librocksdb aborts on some write errors) and its failure is not the
    // backup's: the log stays and is replayed at the next open.
    if repo.backend().available().is_none_or(|free| free > FLUSH_HEADROOM) {
        let _ = repo.index().flush();
    }
    Ok(BackupOutcome { info, bytes_read, warnings })
}

/// An incremental or differential whose base cannot be read cannot be written; say what helps.
fn base_unreadable(base: &Option<ImageInfo>, e: Error) -> Error {
    match (base, e) {
        (Some(b), e @ (Error::CorruptManifest { .. } | Error::MissingManifest { .. })) => {
            Error::BaseUnreadable { base: b.id.to_string(), reason: e.to_string() }
        }
        (_, e) => e,
    }
}

/// One segment of the disk after reading and chunking.
struct Segment {
    buf: Vec<u8>,
    offset: u64,
    extents: Vec<Extent>,
}

/// Buffers are recycled: a fresh 16 MiB allocation costs thousands of page faults.
struct BufferPool(Mutex<Vec<Vec<u8>>>);

impl BufferPool {
    fn take(&self, len: usize) -> Vec<u8> {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
        b.resize(len, 0);
        b
    }
    fn give(&self, b: Vec<u8>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(b);
    }
}

fn read_segment(
    src: &Source,
    offset: u64,
    len: usize,
    data: &[Range<u64>],
    p: &ChunkerParams,
    pool: &BufferPool,
) -> Result<Segment> {
    let mut buf = pool.take(len);
    let mut local = Vec::with_capacity(data.len());
    for r in data {
        let (s, e) = ((r.start - offset) as usize, (r.end - offset) as usize);
        src.read_exact_at(&mut buf[s..e], r.start)?;
        local.push(s..e);
    }
    let mut extents = Vec::with_capacity(len / p.avg_size as usize + 4);
    split_segment(&buf, offset, &local, p, &mut extents);
    Ok(Segment { buf, offset, extents })
}

/// The pipeline's end of the pack writer: sealed packs go out (at most one waits, so memory stays
/// bounded), the stored size of each pack comes back once it is durable and indexed.
struct WriterLink {
    packs: SyncSender<PackBuilder>,
    acks: Receiver<(u64, Vec<u8>)>,
}

/// The pack writer thread: for each pack in turn, trailer and name (a hash of the whole pack), pack
/// durable (fsync, rename, directory fsync), then its index batch committed. Running beside the
/// pipeline, this overlaps with reading, chunking and compressing; the order per pack is the same
/// as when it was inline.
fn write_packs(repo: &Repository, packs: Receiver<PackBuilder>, acks: Sender<(u64, Vec<u8>)>) -> Result<()> {
    for pack in packs {
        let (pid, bytes, entries) = pack.finish();
        // Fail cleanly before the filesystem is full rather than at RocksDB's WAL: Debian's
        // librocksdb asserts (aborts) on a sync after a write error. Nothing is lost either way.
        if let Some(free) = repo.backend().available() {
            if free < bytes.len() as u64 + crate::index::headroom_for(entries.len()) {
                return Err(Error::NoSpace { path: repo.root().into() });
            }
        }
        repo.backend().put(&pid.path(), &bytes)?;
        crate::failpoint::hit!("pack-before-index");
        repo.index().add_pack(pid, bytes.len() as u64, &entries)?;
        // The buffer goes back with the acknowledgement, to be filled by a later pack.
        if acks.send((bytes.len() as u64, bytes)).is_err() {
            break; // the pipeline stopped; it has nothing more to send
        }
    }
    Ok(())
}

fn writer_stopped() -> Error {
    Error::Internal { reason: "the pack writer stopped".into() }
}

struct Run<'a> {
    repo: &'a Repository,
    filter: ChangeFilter,
    manifest: &'a mut ManifestWriter,
    info: &'a mut ImageInfo,
    pack: PackBuilder,
    /// Chunks in the pack being built and in packs not yet acknowledged by the writer (not yet in
    /// the index, so lookups cannot find them).
    pending: HashSet<ChunkId>,
    /// Chunk ids of each pack sent to the writer and not yet acknowledged, oldest first.
    inflight: VecDeque<Vec<ChunkId>>,
    writer: Option<WriterLink>,
    refs: &'a mut RefDelta,
    /// Chunks stored again because their pack was lost or cut short, with what their owners
    /// were charged for the old copy.
    restored: HashMap<ChunkId, u64>,
    /// Buffers of written packs, for the next packs.
    spare: Vec<Vec<u8>>,
    /// Sizes of the packs that dedup hits point into (None: missing).
    pack_sizes: HashMap<PackId, Option<u64>>,
}

/// Reference changes are applied in batches of this many chunks, so memory stays bounded.
const REF_FLUSH: usize = 200_000;

impl<'a> Run<'a> {
    fn new(
        repo: &'a Repository,
        filter: ChangeFilter,
        manifest: &'a mut ManifestWriter,
        info: &'a mut ImageInfo,
        refs: &'a mut RefDelta,
    ) -> Self {
        Run {
            repo,
            filter,
            manifest,
            info,
            pack: PackBuilder::new(),
            pending: HashSet::new(),
            inflight: VecDeque::new(),
            writer: None,
            spare: Vec::new(),
            restored: HashMap::new(),
            refs,
            pack_sizes: HashMap::new(),
        }
    }

    /// Reads, stores and indexes the whole source, with the pack writer on its own thread. Returns
    /// the bytes read once every pack is durable and indexed; the writer's error, if any, comes
    /// first.
    fn run(mut self, src: &Source, progress: &dyn Progress) -> Result<u64> {
        let repo = self.repo;
        std::thread::scope(|scope| {
            let (packs_tx, packs_rx) = sync_channel::<PackBuilder>(1);
            let (acks_tx, acks_rx) = channel::<(u64, Vec<u8>)>();
            let writer = scope.spawn(move || write_packs(repo, packs_rx, acks_tx));
            self.writer = Some(WriterLink { packs: packs_tx, acks: acks_rx });
            let piped =
                self.read_all(src, progress).and_then(|n| self.seal_pack().and_then(|()| self.wait_acks()).map(|()| n));
            self.writer = None; // closes the channel: the writer finishes what it has and stops
            let written =
                writer.join().unwrap_or_else(|_| Err(Error::Internal { reason: "the pack writer panicked".into() }));
            written.and(piped)
        })
    }

    /// Reads window after window of segments; the next window is read and chunked while the
    /// current one is compared, compressed and packed.
    fn read_all(&mut self, src: &Source, progress: &dyn Progress) -> Result<u64> {
        let params = self.repo.config().chunker.clone();
        let seg = params.segment_size as u64;
        let size = src.size();
        let window = (rayon::current_num_threads() * 2).max(2) as u64;
        let pool = BufferPool(Mutex::new(Vec::new()));
        let read_window = |start: u64| -> Result<(Vec<Segment>, u64)> {
            let mut specs = Vec::new();
            for i in 0..window {
                let off = start + i * seg;
                if off >= size {
                    break;
                }
                let end = (off + seg).min(size);
                specs.push((off, (end - off) as usize, src.data_ranges(off, end)?));
            }
            let read: u64 = specs.iter().flat_map(|(_, _, d)| d.iter().map(|r| r.end - r.start)).sum();
            let segments: Result<Vec<Segment>> =
                specs.par_iter().map(|(off, len, data)| read_segment(src, *off, *len, data, &params, &pool)).collect();
            segments.map(|s| (s, read))
        };
        progress.begin("backup", size);
        let (mut current, mut bytes_read) = read_window(0)?;
        let mut next_start = window * seg;
        while !current.is_empty() {
            let (stored, next) = rayon::join(|| self.store_window(&current), || read_window(next_start));
            stored?;
            progress.advance(current.iter().map(|s| s.buf.len() as u64).sum());
            for s in current {
                pool.give(s.buf);
            }
            let (segments, read) = next?;
            current = segments;
            bytes_read += read;
            next_start += window * seg;
        }
        progress.end();
        Ok(bytes_read)
    }

    /// Records the changed extents of a window and stores the chunks the repository lacks.
    fn store_window(&mut self, segments: &[Segment]) -> Result<()> {
        let mut candidates: Vec<(ChunkId, &[u8])> = Vec::new();
        let mut seen: HashSet<ChunkId> = HashSet::new();
        for s in segments {
            for e in &s.extents {
                if !self.filter.is_changed(e)? {
                    continue;
                }
                self.manifest.push(e)?;
                self.info.changed_bytes += e.len;
                match e.content {
                    Content::Zero => self.info.changed_zero_bytes += e.len,
                    Content::Chunk { id, .. } => {
                        self.refs.add(id, self.info.set, 1);
                        if !self.pending.contains(&id) && seen.insert(id) {
                            let at = (e.offset - s.offset) as usize;
                            candidates.push((id, &s.buf[at..at + e.len as usize]));
                        }
                    }
                }
            }
        }
        if candidates.is_empty() {
            return Ok(());
        }
        let ids: Vec<ChunkId> = candidates.iter().map(|(id, _)| *id).collect();
        let known = self.repo.index().locate(&ids)?;
        // Self-healing: a chunk whose pack is gone or cut short is stored again rather than
        // trusted to the index (one stat per pack and run).
        let mut stored_ok = Vec::with_capacity(known.len());
        for loc in &known {
            stored_ok.push(match loc {
                Some(l) => {
                    let size = match self.pack_sizes.get(&l.pack) {
                        Some(s) => *s,
                        None => {
                            let s = self.repo.backend().size(&l.pack.path()).ok();
                            self.pack_sizes.insert(l.pack, s);
                            s
                        }
                    };
                    size.is_some_and(|s| l.offset + l.stored_len as u64 <= s)
                }
                None => false,
            });
        }
        // New chunks, in disk order, go into frames of about FRAME_TARGET bytes, compressed
        // (and verified) in parallel.
        let mut frames: Vec<Vec<(ChunkId, &[u8])>> = Vec::new();
        let mut open = 0usize;
        for ((&(id, data), ok), loc) in candidates.iter().zip(&stored_ok).zip(&known) {
            if *ok {
                continue;
            }
            if let Some(lost) = loc {
                // Stored again: once indexed, its owners are charged its new share of a frame.
                self.restored.insert(id, lost.charged());
            }
            if frames.is_empty() || open >= FRAME_TARGET {
                frames.push(Vec::new());
                open = 0;
            }
            if let Some(frame) = frames.last_mut() {
                frame.push((id, data));
            }
            open += data.len();
        }
        let level = self.repo.config().compression_level;
        let compressed: Vec<(Codec, Vec<u8>)> =
            frames.par_iter().map(|chunks| compress_frame(chunks, level)).collect::<Result<_>>()?;
        for (chunks, (codec, stored)) in frames.iter().zip(compressed) {
            let lens: Vec<(ChunkId, u32)> = chunks.iter().map(|(id, data)| (*id, data.len() as u32)).collect();
            self.pack.add_frame(codec, &stored, &lens);
            for &(id, raw_len) in &lens {
                self.pending.insert(id);
                self.info.new_chunks += 1;
                self.info.new_raw_bytes += raw_len as u64;
            }
            if self.pack.len() as u64 >= self.repo.config().pack_target_size {
                self.seal_pack()?;
            }
        }
        if self.refs.len() >= REF_FLUSH {
            // Chunks must be indexed before their references count: seal the pack and wait for
            // the writer first. The journal stays set, so a crash after this point is repaired
            // by a rebuild.
            self.seal_pack()?;
            self.wait_acks()?;
            refs::apply(self.repo.index(), std::mem::take(self.refs), Batch::default())?;
        }
        Ok(())
    }

    /// Hands the pack being built to the writer (which makes it durable, then indexes it).
    fn seal_pack(&mut self) -> Result<()> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        let target = self.repo.config().pack_target_size as usize;
        buf.clear();
        buf.reserve(target + target / 8 + MAX_FRAME_LEN as usize); // frames, one over, trailer
        let pack = std::mem::replace(&mut self.pack, PackBuilder::with_buffer(buf));
        let ids = pack.entries().iter().map(|e| e.id).collect();
        let link = self.writer.as_ref().ok_or_else(writer_stopped)?;
        link.packs.send(pack).map_err(|_| writer_stopped())?;
        self.inflight.push_back(ids);
        self.take_acks(false)
    }

    /// Waits until every pack sent to the writer is durable and indexed.
    fn wait_acks(&mut self) -> Result<()> {
        self.take_acks(true)
    }

    /// Chunks stored again (self-healing) now sit in a new frame: their owners' counters are
    /// charged the new share instead of the old one. Under the backup's journal, so a crash
    /// before the image is published rebuilds the counters anyway.
    fn recharge_restored(&mut self, ids: &[ChunkId]) -> Result<()> {
        let healed: Vec<ChunkId> = ids.iter().filter(|id| self.restored.contains_key(id)).copied().collect();
        if healed.is_empty() {
            return Ok(());
        }
        let locs = self.repo.index().locate(&healed)?;
        let mut moves = Vec::with_capacity(healed.len());
        for (id, loc) in healed.iter().zip(locs) {
            if let (Some(old), Some(new)) = (self.restored.remove(id), loc) {
                moves.push((*id, old, new.charged()));
            }
        }
        let mut batch = Batch::default();
        refs::recharge(self.repo.index(), &moves, &mut batch)?;
        self.repo.index().write(batch)
    }

    /// Counts acknowledged packs and forgets their chunks as pending: from now on the index
    /// finds them.
    fn take_acks(&mut self, wait: bool) -> Result<()> {
        while !self.inflight.is_empty() {
            let link = self.writer.as_ref().ok_or_else(writer_stopped)?;
            let stored = if wait {
                link.acks.recv().map_err(|_| writer_stopped())?
            } else {
                match link.acks.try_recv() {
                    Ok(stored) => stored,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Err(writer_stopped()),
                }
            };
            let (stored, buf) = stored;
            self.info.new_stored_bytes += stored;
            if self.spare.len() < 2 {
                self.spare.push(buf);
            }
            let ids = self.inflight.pop_front().unwrap_or_default();
            for id in &ids {
                self.pending.remove(id);
            }
            self.recharge_restored(&ids)?;
        }
        Ok(())
    }
}
