//! The backup pipeline: read → cut (FastCDC) → hash (BLAKE3), segments in parallel → compare
//! with the base image → batched dedup lookups → frames of new chunks, zstd + verify in parallel
//! → packs, handed to the pack writer thread (`packer`). Segments are read and chunked on the
//! pool up to two windows ahead of the window being compressed. Memory is bounded by two windows
//! of segments and three packs, whatever the disk size.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::chunker::{split_regions, Cut, SegmentHasher};
use super::packer::{write_packs, Ack, Numbered};
use super::source::Source;
use crate::allocation::UsageMap;
use crate::config::ChunkerParams;
use crate::crypto::Protection;
use crate::error::{Error, Result};
use crate::id::{ChunkId, PackId};
use crate::index::{ChunkLookup, RefDelta, Txn};
use crate::manifest::{ChangeFilter, Content, Extent, Fingerprint, ImageInfo, ManifestWriter, View};
use crate::pack::{compress_frame, recycle_frame, Codec, PackBuilder, FRAME_TARGET, MAX_FRAME_LEN};
use crate::progress::Progress;
use crate::repository::Repository;

/// The pipeline's end of the pack writer: sealed packs go out (at most one waits, so memory stays
/// bounded), the stored size of each pack comes back once it is durable and indexed.
struct WriterLink {
    packs: SyncSender<Numbered>,
    acks: Receiver<Ack>,
}

fn writer_stopped() -> Error {
    Error::Internal { reason: "the pack writer stopped".into() }
}

/// One segment of the disk after reading and chunking.
struct Segment {
    buf: Vec<u8>,
    offset: u64,
    extents: Vec<Extent>,
    fingerprint: Fingerprint,
    /// Its fingerprint equals the base's for this segment: not chunked, its extents are the
    /// base's (so none of them is a change).
    reused: bool,
    /// Bytes of its chunks taken from the base without running the chunker (when not `reused`).
    chunks_taken: u64,
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

/// Where one segment is: its offset and length, the ranges of it that hold data (to be read),
/// those the filesystem does not use (never read), and the base image's extents there.
struct SegmentSpec {
    offset: u64,
    len: usize,
    data: Vec<Range<u64>>,
    unused: Vec<Range<u64>>,
    base: Vec<Extent>,
}

impl SegmentSpec {
    fn of(src: &Source, usage: &UsageMap, base: &mut BaseExtents, offset: u64, end: u64) -> Result<SegmentSpec> {
        let mut unused = Vec::new();
        usage.unused_in(offset..end, &mut unused);
        let data = subtract(&src.data_ranges(offset, end)?, &unused);
        Ok(SegmentSpec { offset, len: (end - offset) as usize, data, unused, base: base.within(offset, end)? })
    }
}

/// The base image's extents (the chunker's side of `manifest::tee`, a window ahead of the
/// change filter's), handed out segment by segment: a segment that changed takes the base's
/// chunks where its bytes did not (chunker.rs, `Cut`), instead of running the chunker over all
/// of it.
pub(super) struct BaseExtents {
    view: Option<View>,
    cur: Option<Extent>,
}

impl BaseExtents {
    pub(super) fn new(view: Option<View>) -> Self {
        BaseExtents { view, cur: None }
    }

    /// The extents that reach into `start .. end`; segments are asked for in disk order.
    fn within(&mut self, start: u64, end: u64) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        let Some(view) = self.view.as_mut() else { return Ok(out) };
        loop {
            let e = match self.cur.take() {
                Some(e) => e,
                None => match view.next() {
                    Some(e) => e?,
                    None => break,
                },
            };
            if e.end() <= start {
                continue;
            }
            if e.offset >= end {
                self.cur = Some(e);
                break;
            }
            out.push(e);
            if e.end() > end {
                self.cur = Some(e);
                break;
            }
        }
        Ok(out)
    }
}

/// The parts of the sorted, disjoint ranges `a` outside the sorted, disjoint ranges `b`.
fn subtract(a: &[Range<u64>], b: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut j = 0;
    for r in a {
        let mut start = r.start;
        while j < b.len() && b[j].end <= start {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].start < r.end {
            if b[k].start > start {
                out.push(start..b[k].start);
            }
            start = start.max(b[k].end);
            k += 1;
        }
        if start < r.end {
            out.push(start..r.end);
        }
    }
    out
}

fn read_segment(
    src: &Source,
    spec: &SegmentSpec,
    p: &ChunkerParams,
    n: &Protection,
    pool: &BufferPool,
    base: &[Fingerprint],
) -> Result<Segment> {
    let offset = spec.offset;
    let mut buf = pool.take(spec.len);
    let local = |r: &Range<u64>| (r.start - offset) as usize..(r.end - offset) as usize;
    let data: Vec<Range<usize>> = spec.data.iter().map(local).collect();
    let unused: Vec<Range<usize>> = spec.unused.iter().map(local).collect();
    // Read in pieces that stay in the cache while they are fingerprinted.
    let mut hasher = SegmentHasher::new(spec.len, offset, &data, &unused, p, n);
    for (l, r) in data.iter().zip(&spec.data) {
        let mut at = l.start;
        while at < l.end {
            let end = (at + READ_PIECE).min(l.end);
            src.read_exact_at(&mut buf[at..end], r.start + (at - l.start) as u64)?;
            hasher.update(&buf[at..end]);
            at = end;
        }
    }
    let fp = hasher.finish();
    let index = (offset / p.segment_size as u64) as usize;
    let reused = base.get(index).is_some_and(|b| *b == fp);
    let mut extents = Vec::new();
    let mut chunks_taken = 0;
    if !reused {
        extents.reserve(spec.len / p.avg_size as usize + 4);
        let cut = Cut { params: p, naming: n, base: &spec.base };
        chunks_taken = split_regions(&buf, offset, &data, &unused, &cut, &mut extents);
    }
    Ok(Segment { buf, offset, extents, fingerprint: fp, reused, chunks_taken })
}

/// Segment `i` as its reader sent it; segments that arrive before it wait in `arrived`. On a
/// thread of the pool (the library called from inside one) the wait runs other tasks instead
/// of blocking a thread that the reads may need.
fn segment_in_order(
    rx: &Receiver<(usize, Result<Segment>)>,
    arrived: &mut BTreeMap<usize, Result<Segment>>,
    i: usize,
) -> Result<Segment> {
    loop {
        if let Some(s) = arrived.remove(&i) {
            return s;
        }
        let got = if rayon::current_thread_index().is_none() {
            rx.recv().ok()
        } else {
            match rx.try_recv() {
                Ok(got) => Some(got),
                Err(TryRecvError::Empty) => {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::thread::yield_now();
                    }
                    continue;
                }
                Err(TryRecvError::Disconnected) => None,
            }
        };
        let (j, s) = got.ok_or_else(|| Error::Internal { reason: "a segment reader stopped".into() })?;
        arrived.insert(j, s);
    }
}

/// Sources are read in pieces of this size, each fingerprinted while it is in the L2 cache.
const READ_PIECE: usize = 256 * 1024;

/// The chunks of one frame to be, with their bytes (in the window's segment buffers).
type Framing<'s> = Vec<(ChunkId, &'s [u8])>;

/// What a run read, and the fingerprints of the segments it saw.
pub(super) struct RunOutcome {
    pub bytes_read: u64,
    /// Bytes of segments whose fingerprint matched the base's: read and hashed, not chunked.
    pub bytes_reused: u64,
    /// Bytes of chunks in the other segments that were the base's: hashed, not chunked.
    pub chunk_bytes_reused: u64,
    pub segments: Vec<Fingerprint>,
}

pub(super) struct Run<'a> {
    repo: &'a Repository,
    filter: ChangeFilter,
    manifest: &'a mut ManifestWriter,
    info: &'a mut ImageInfo,
    pack: PackBuilder,
    /// Chunks in the pack being built and in packs not yet acknowledged by the writer (not yet in
    /// the index, so lookups cannot find them).
    pending: HashSet<ChunkId>,
    /// Chunk ids of each pack sent to the writer and not yet acknowledged, oldest first.
    /// Packs handed to the writer and not yet acknowledged: their numbers and chunks.
    inflight: VecDeque<(u64, Vec<ChunkId>)>,
    /// The number of the next pack handed to the writer.
    next_pack: u64,
    writer: Option<WriterLink>,
    refs: &'a mut RefDelta,
    /// Chunks stored again because their pack was lost or cut short, with what their owners
    /// were charged for the old copy.
    restored: HashMap<ChunkId, u64>,
    /// Buffers of written packs, for the next packs.
    spare: Vec<Vec<u8>>,
    /// Sizes of the packs that dedup hits point into (None: missing).
    pack_sizes: HashMap<PackId, Option<u64>>,
    /// The base image's segment fingerprints (empty for a full), and this image's.
    base_segments: Vec<Fingerprint>,
    base_extents: BaseExtents,
    segments: Vec<Fingerprint>,
    bytes_reused: u64,
    chunk_bytes_reused: u64,
    /// Held while usage counters are read and written back: references applied on one core
    /// while the other recharges re-stored chunks must not lose each other's update.
    counting: Arc<Mutex<()>>,
}

/// Reference changes are applied in batches of at most this many chunks, so memory stays
/// bounded: applying one costs several times its own size at once (three lookups per chunk and
/// one RocksDB batch); batches of 200,000 lifted a big full's peak from 330 to 510 MiB
/// (docs/BENCHMARKS.md, "Memory"). Reaching it seals the pack and waits for the writer.
const REF_FLUSH: usize = 50_000;

/// The references of this many chunks that are already indexed are applied while the window
/// is compressed, without waiting for the writer: what is left for the end of the run (on one
/// core, after the manifest) is only what the last packs hold. Before, a full's last 0.3 s ran
/// on one core applying the last batch (docs/BENCHMARKS.md, "Speed at the machine's limit").
#[cfg(not(feature = "failpoints"))]
const REF_APPLY: usize = 8_192;
/// Test builds apply tiny batches, so that every test backup of a few megabytes takes this path
/// (and `check`, which compares the counters with the manifests, sees the result).
#[cfg(feature = "failpoints")]
const REF_APPLY: usize = 64;

impl<'a> Run<'a> {
    pub(super) fn new(
        repo: &'a Repository,
        filter: ChangeFilter,
        manifest: &'a mut ManifestWriter,
        info: &'a mut ImageInfo,
        refs: &'a mut RefDelta,
        base_segments: Vec<Fingerprint>,
        base_extents: BaseExtents,
    ) -> Self {
        Run {
            repo,
            filter,
            manifest,
            info,
            pack: repo.new_pack(),
            pending: HashSet::new(),
            inflight: VecDeque::new(),
            next_pack: 0,
            writer: None,
            spare: Vec::new(),
            restored: HashMap::new(),
            refs,
            pack_sizes: HashMap::new(),
            base_segments,
            base_extents,
            segments: Vec::new(),
            bytes_reused: 0,
            chunk_bytes_reused: 0,
            counting: Arc::new(Mutex::new(())),
        }
    }

    /// Reads, stores and indexes the whole source, with the pack writer on its own thread. Returns
    /// what it read once every pack is durable and indexed; the writer's error, if any, comes
    /// first.
    pub(super) fn run(mut self, src: &Source, usage: &UsageMap, progress: &dyn Progress) -> Result<RunOutcome> {
        let repo = self.repo;
        std::thread::scope(|scope| {
            let (packs_tx, packs_rx) = sync_channel::<Numbered>(1);
            let (acks_tx, acks_rx) = channel::<Ack>();
            let writer = scope.spawn(move || write_packs(repo, packs_rx, acks_tx));
            self.writer = Some(WriterLink { packs: packs_tx, acks: acks_rx });
            let piped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let pool = BufferPool(Mutex::new(Vec::new()));
                let n = self.read_all(src, usage, &pool, progress)?;
                self.seal_pack()?;
                // The segment buffers (two windows: 128 MiB on two cores) are handed back to the
                // kernel on a thread of their own while the writer stores the last pack: freed
                // here, that took 20-50 ms of a one-core end before the last pack could leave.
                scope.spawn(move || drop(pool));
                self.wait_acks()?;
                Ok(n)
            }));
            self.writer = None; // closes the channel: the writer finishes what it has and stops
            let written =
                writer.join().unwrap_or_else(|_| Err(Error::Internal { reason: "the pack writer panicked".into() }));
            // A panic (a bug) goes on once the writer has ended: the scope would otherwise wait
            // for a writer that waits for packs.
            let piped = piped.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            let bytes_read = written.and(piped)?;
            Ok(RunOutcome {
                bytes_read,
                bytes_reused: self.bytes_reused,
                chunk_bytes_reused: self.chunk_bytes_reused,
                segments: std::mem::take(&mut self.segments),
            })
        })
    }

    /// Reads segment after segment on the pool, at most two windows ahead of the stores, and
    /// stores them a window at a time in disk order. A window is not a barrier: while the main
    /// thread waits for the slowest segment of the next window (one that changed, chunked while
    /// the others were only hashed), the other core already reads the window after it.
    fn read_all(&mut self, src: &Source, usage: &UsageMap, pool: &BufferPool, progress: &dyn Progress) -> Result<u64> {
        let params = self.repo.config().chunker.clone();
        let naming = self.repo.protection().clone();
        let seg = params.segment_size as u64;
        let size = src.size();
        let count = size.div_ceil(seg) as usize;
        let window = (rayon::current_num_threads() * 2).max(2);
        let base = std::mem::take(&mut self.base_segments);
        let mut base_extents = std::mem::replace(&mut self.base_extents, BaseExtents::new(None));
        let (params, naming, pool_ref, base) = (&params, &naming, pool, &base);
        let (tx, rx) = channel::<(usize, Result<Segment>)>();
        let mut bytes_read = 0;
        progress.begin("backup", size);
        // Every segment spawned is waited for before the scope returns, also after an error.
        rayon::in_place_scope(|scope| -> Result<()> {
            let mut arrived = BTreeMap::new();
            let (mut spawned, mut stored) = (0, 0);
            while stored < count {
                // Memory: at most two windows of segment buffers, as read or being stored.
                while spawned < count && spawned < stored + 2 * window {
                    let off = spawned as u64 * seg;
                    let spec = SegmentSpec::of(src, usage, &mut base_extents, off, (off + seg).min(size))?;
                    bytes_read += spec.data.iter().map(|r| r.end - r.start).sum::<u64>();
                    let (tx, i) = (tx.clone(), spawned);
                    scope.spawn(move |_| {
                        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            read_segment(src, &spec, params, naming, pool_ref, base)
                        }));
                        // A panic (a bug) must still be answered, or the store would wait forever.
                        let read = read
                            .unwrap_or_else(|_| Err(Error::Internal { reason: "reading a segment panicked".into() }));
                        let _ = tx.send((i, read));
                    });
                    spawned += 1;
                }
                let end = (stored + window).min(count);
                let segments =
                    (stored..end).map(|i| segment_in_order(&rx, &mut arrived, i)).collect::<Result<Vec<_>>>()?;
                self.store_window(&segments)?;
                progress.advance(segments.iter().map(|s| s.buf.len() as u64).sum());
                for s in segments {
                    pool_ref.give(s.buf);
                }
                stored = end;
            }
            Ok(())
        })?;
        progress.end();
        Ok(bytes_read)
    }

    /// Records the changed extents of a window and stores the chunks the repository lacks: the
    /// named steps of a window.
    fn store_window(&mut self, segments: &[Segment]) -> Result<()> {
        let ready = self.ready_refs()?;
        let candidates = self.record_changes(segments)?;
        let (repo, counting) = (self.repo, self.counting.clone());
        // The ready references count on whichever core is free while this window compresses.
        let (stored, applied) = rayon::join(
            || -> Result<()> {
                if !candidates.is_empty() {
                    let frames = self.frames_of_missing(&candidates)?;
                    self.pack_frames(&frames)?;
                }
                Ok(())
            },
            || -> Result<()> {
                let Some(ready) = ready else { return Ok(()) };
                let _counting = counting.lock().unwrap_or_else(|p| p.into_inner());
                // Provisional: the journal is set, a crash rebuilds every count.
                repo.index().counters().apply(ready, Txn::provisional())
            },
        );
        stored.and(applied)?;
        if self.refs.len() >= REF_FLUSH {
            // Chunks must be indexed before their references count: seal the pack and wait for
            // the writer first. The journal stays set, so a crash after this point is repaired
            // by a rebuild.
            self.seal_pack()?;
            self.wait_acks()?;
            self.repo.index().counters().apply(std::mem::take(self.refs), Txn::provisional())?;
        }
        Ok(())
    }

    /// The references of chunks already in the index (stored before this run, or in packs the
    /// writer has acknowledged), once there are enough of them to be worth a batch: they may
    /// count now. Those of chunks still on their way into a pack wait.
    fn ready_refs(&mut self) -> Result<Option<RefDelta>> {
        if self.refs.len() < REF_APPLY {
            return Ok(None);
        }
        self.take_acks(usize::MAX)?;
        let pending = &self.pending;
        Ok(self.refs.take_ready(REF_APPLY / 2, |id| !pending.contains(id)))
    }

    /// Writes the extents that differ from the base into the manifest, counts their references,
    /// and returns the distinct chunks among them that are not already on their way into a pack.
    fn record_changes<'s>(&mut self, segments: &'s [Segment]) -> Result<Vec<(ChunkId, &'s [u8])>> {
        let mut candidates: Vec<(ChunkId, &[u8])> = Vec::new();
        let mut seen: HashSet<ChunkId> = HashSet::new();
        for s in segments {
            self.segments.push(s.fingerprint);
            if s.reused {
                let end = s.offset + s.buf.len() as u64;
                self.info.unused_bytes += self.filter.unused_between(s.offset, end)?;
                self.bytes_reused += s.buf.len() as u64;
                continue;
            }
            self.chunk_bytes_reused += s.chunks_taken;
            for e in &s.extents {
                if e.is_unused() {
                    self.info.unused_bytes += e.len;
                }
                if !self.filter.is_changed(e)? {
                    continue;
                }
                self.manifest.push(e)?;
                self.info.changed_bytes += e.len;
                match e.content {
                    Content::Zero => self.info.changed_zero_bytes += e.len,
                    Content::Unused => {}
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
        Ok(candidates)
    }

    /// The candidates the repository lacks (unknown to the index, or whose pack is gone or cut
    /// short: self-healing stores those again rather than trusting the index; one stat per pack
    /// and run), in disk order, grouped into frames of about `FRAME_TARGET` bytes.
    fn frames_of_missing<'s>(&mut self, candidates: &[(ChunkId, &'s [u8])]) -> Result<Vec<Framing<'s>>> {
        let ids: Vec<ChunkId> = candidates.iter().map(|(id, _)| *id).collect();
        let known = self.repo.index().locate(&ids)?;
        let mut frames: Vec<Framing> = Vec::new();
        let mut open = 0usize;
        for (&(id, data), loc) in candidates.iter().zip(&known) {
            if let Some(l) = loc {
                let size = match self.pack_sizes.get(&l.pack) {
                    Some(s) => *s,
                    None => {
                        let s = self.repo.backend().size(&l.pack.path()).ok();
                        self.pack_sizes.insert(l.pack, s);
                        s
                    }
                };
                if size.is_some_and(|s| l.slot.offset + l.slot.stored_len as u64 <= s) {
                    continue;
                }
                // Stored again: once indexed, its owners are charged its new share of a frame.
                self.restored.insert(id, l.charged());
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
        Ok(frames)
    }

    /// Compresses (and verifies) the frames in parallel and adds them to the pack being built,
    /// sealing it whenever it is full. A few frames per thread at a time, the next group
    /// compressed while the last is added: the compressed copies of a whole window would cost
    /// tens of megabytes more at the peak.
    fn pack_frames(&mut self, frames: &[Framing]) -> Result<()> {
        let level = self.repo.config().compression_level;
        let compress = |group: &[Framing]| -> Result<Vec<(Codec, Vec<u8>)>> {
            group.par_iter().map(|chunks| compress_frame(chunks, level)).collect()
        };
        let mut groups = frames.chunks(rayon::current_num_threads() * 4);
        let mut pending = groups.next().map(|g| compress(g).map(|c| (g, c))).transpose()?;
        while let Some((group, compressed)) = pending.take() {
            let next = groups.next();
            let (added, next) = rayon::join(
                || self.add_frames(group, compressed),
                || next.map(|g| compress(g).map(|c| (g, c))).transpose(),
            );
            added?;
            pending = next?;
        }
        Ok(())
    }

    /// Adds compressed frames to the pack being built, sealing it whenever it is full.
    fn add_frames(&mut self, frames: &[Framing], compressed: Vec<(Codec, Vec<u8>)>) -> Result<()> {
        for (chunks, (codec, stored)) in frames.iter().zip(compressed) {
            let lens: Vec<(ChunkId, u32)> = chunks.iter().map(|(id, data)| (*id, data.len() as u32)).collect();
            self.pack.add_frame(codec, &stored, &lens)?;
            recycle_frame(stored);
            for &(id, raw_len) in &lens {
                self.pending.insert(id);
                self.info.new_chunks += 1;
                self.info.new_raw_bytes += raw_len as u64;
            }
            if self.pack.len() as u64 >= self.repo.config().pack_target_size {
                self.seal_pack()?;
            }
        }
        Ok(())
    }

    /// Hands the pack being built to the writer (which makes it durable, then indexes it).
    fn seal_pack(&mut self) -> Result<()> {
        if self.pack.is_empty() {
            return Ok(());
        }
        if self.spare.is_empty() {
            // The channel holds one pack and the writer another: waiting here for one of them
            // costs nothing that sending would not, and its buffer comes back for the next pack
            // (pack buffers are most of a backup's memory: at most four live at once).
            self.take_acks(1)?;
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        let target = self.repo.config().pack_target_size as usize;
        buf.clear();
        buf.reserve_exact(target + target / 8 + MAX_FRAME_LEN as usize); // frames, one over, trailer
        let pack = std::mem::replace(&mut self.pack, PackBuilder::with_buffer(buf, self.repo.protection().clone()));
        let ids = pack.entries().iter().map(|e| e.id).collect();
        let link = self.writer.as_ref().ok_or_else(writer_stopped)?;
        let number = self.next_pack;
        self.next_pack += 1;
        link.packs.send((number, pack)).map_err(|_| writer_stopped())?;
        self.inflight.push_back((number, ids));
        self.take_acks(usize::MAX)
    }

    /// Waits until every pack sent to the writer is durable and indexed.
    fn wait_acks(&mut self) -> Result<()> {
        self.take_acks(0)
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
        let mut txn = Txn::new();
        let _counting = self.counting.lock().unwrap_or_else(|p| p.into_inner());
        self.repo.index().counters().recharge(&moves, &mut txn)?;
        self.repo.index().commit(txn)
    }

    /// Counts acknowledged packs and forgets their chunks as pending: from now on the index
    /// finds them. Waits until at most `in_flight` packs are unacknowledged, then takes what
    /// else has arrived.
    fn take_acks(&mut self, in_flight: usize) -> Result<()> {
        while !self.inflight.is_empty() {
            let link = self.writer.as_ref().ok_or_else(writer_stopped)?;
            let stored = if self.inflight.len() > in_flight {
                link.acks.recv().map_err(|_| writer_stopped())?
            } else {
                match link.acks.try_recv() {
                    Ok(stored) => stored,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Err(writer_stopped()),
                }
            };
            let Ack { number, stored, buffer } = stored;
            self.info.new_stored_bytes += stored;
            if self.spare.is_empty() {
                self.spare.push(buffer);
            }
            // Several writers (a bucket) acknowledge in the order their uploads end.
            let at = self.inflight.iter().position(|(n, _)| *n == number).ok_or_else(|| Error::Internal {
                reason: format!("the pack writer acknowledged pack {number}, which it was not given"),
            })?;
            let (_, ids) = self.inflight.remove(at).unwrap_or_default();
            for id in &ids {
                self.pending.remove(id);
            }
            self.recharge_restored(&ids)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{subtract, BaseExtents};
    use crate::manifest::Extent;

    #[test]
    fn subtract_leaves_what_is_outside() {
        assert_eq!(subtract(&[0..100], &[10..20, 30..40]), vec![0..10, 20..30, 40..100]);
        assert_eq!(subtract(&[0..10, 20..30], &[5..25]), vec![0..5, 25..30]);
        assert_eq!(subtract(&[0..10], &[0..10]), Vec::<std::ops::Range<u64>>::new());
        assert_eq!(subtract(&[0..10, 50..60], &[]), vec![0..10, 50..60]);
        assert_eq!(subtract(&[10..20], &[0..5, 25..30]), vec![10..20]);
    }

    #[test]
    fn each_segment_gets_the_base_extents_that_reach_into_it() {
        let e = |o: u64, l: u64| Extent::zero(o, l);
        let view = vec![e(0, 10), e(10, 30), e(40, 5), e(45, 55)].into_iter().map(Ok);
        let mut base = BaseExtents::new(Some(Box::new(view)));
        assert_eq!(base.within(0, 20).unwrap(), vec![e(0, 10), e(10, 30)]);
        assert_eq!(base.within(20, 40).unwrap(), vec![e(10, 30)]);
        assert_eq!(base.within(40, 60).unwrap(), vec![e(40, 5), e(45, 55)]);
        assert_eq!(base.within(60, 100).unwrap(), vec![e(45, 55)]);
        assert_eq!(base.within(100, 120).unwrap(), vec![]);
        assert_eq!(BaseExtents::new(None).within(0, 10).unwrap(), vec![]);
    }
}
