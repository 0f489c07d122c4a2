//! The pack writer, shared by backup and prune: a pack is sealed (trailer, name = hash of its
//! bytes) and made durable (fsync, rename, directory fsync) before anything refers to it. Backup
//! indexes each pack as soon as it is durable (on its own thread, beside the pipeline); prune
//! indexes the packs it writes in the one batch that switches chunks over to them.

use std::sync::mpsc::{Receiver, Sender};

use crate::error::{Error, Result};
use crate::id::{ChunkId, PackId};
use rayon::prelude::*;

use crate::pack::{compress_frame, recycle_frame, Codec, PackBuilder, PackEntry, FRAME_TARGET};
use crate::repository::Repository;

/// A pack that is durable: its id, bytes and trailer entries.
pub(crate) struct StoredPack {
    pub id: PackId,
    pub bytes: Vec<u8>,
    pub entries: Vec<PackEntry>,
}

/// A pack handed to the writer, numbered in the order it was sealed.
pub(super) type Numbered = (u64, PackBuilder);

/// A pack that is durable and indexed: its number, stored size, and its buffer for reuse.
pub(super) struct Ack {
    pub number: u64,
    pub stored: u64,
    pub buffer: Vec<u8>,
}

/// Seals `pack` and stores it durably.
pub(crate) fn store(repo: &Repository, pack: PackBuilder) -> Result<StoredPack> {
    let (id, bytes, entries) = pack.finish()?;
    // Fail cleanly before the filesystem is full rather than at RocksDB's WAL: Debian's
    // librocksdb asserts (aborts) on a sync after a write error. Nothing is lost either way.
    if let Some(free) = repo.backend().available() {
        if free < bytes.len() as u64 + crate::index::headroom_for(entries.len()) {
            return Err(Error::NoSpace { path: repo.location() });
        }
    }
    repo.backend().put(&id.path(), &bytes)?;
    Ok(StoredPack { id, bytes, entries })
}

/// The pack writer of a backup: for each pack, stored durably, then its index batch committed.
/// Running beside the pipeline, this overlaps with reading, chunking and compressing; the order
/// per pack is the same as when it was inline. Acknowledges each pack with its stored size and
/// its buffer (to be filled by a later pack). Where the storage takes several objects at once
/// (`Backend::concurrent_requests`: a bucket), that many packs are stored in parallel, each indexed
/// once its own upload is done; the pipeline's four buffers still bound the memory.
pub(super) fn write_packs(repo: &Repository, packs: Receiver<Numbered>, acks: Sender<Ack>) -> Result<()> {
    let writers = repo.backend().concurrent_requests().clamp(1, 4);
    if writers == 1 {
        return write_each(repo, &std::sync::Mutex::new(packs), &acks);
    }
    let packs = std::sync::Mutex::new(packs);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers).map(|_| s.spawn(|| write_each(repo, &packs, &acks.clone()))).collect();
        let mut result = Ok(());
        for h in handles {
            let r = h.join().unwrap_or_else(|_| Err(Error::Internal { reason: "a pack writer panicked".into() }));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

fn write_each(repo: &Repository, packs: &std::sync::Mutex<Receiver<Numbered>>, acks: &Sender<Ack>) -> Result<()> {
    loop {
        let next = packs.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok((number, pack)) = next else { return Ok(()) };
        let stored = store(repo, pack)?;
        crate::failpoint::hit!("pack-before-index");
        repo.index().add_pack(stored.id, stored.bytes.len() as u64, &stored.entries)?;
        let ack = Ack { number, stored: stored.bytes.len() as u64, buffer: stored.bytes };
        if acks.send(ack).is_err() {
            return Ok(()); // the pipeline stopped; it has nothing more to send
        }
    }
}

/// Frames chunks that already exist (prune moves them out of packs it rewrites, copy brings them
/// from another repository) into new frames
/// of about `FRAME_TARGET` bytes, compressed and verified, and fills packs with them; each full
/// pack is stored at once and listed in `stored` for the caller to index (prune), or handed to
/// the pack writer, which stores and indexes it (`with_writers`, for copy).
pub(crate) struct Repacker<'a> {
    repo: &'a Repository,
    builder: PackBuilder,
    framing: Vec<(ChunkId, Vec<u8>)>,
    framed: usize,
    pub stored: Vec<StoredPack>,
    /// With `with_writers`: sealed packs go to the pack writer (stored and indexed there).
    writer: Option<(std::sync::mpsc::SyncSender<Numbered>, u64)>,
}

/// What `Repacker::with_writers` stored: packs and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Written {
    pub packs: usize,
    pub bytes: u64,
}

impl<'a> Repacker<'a> {
    pub fn new(repo: &'a Repository) -> Self {
        Repacker { repo, builder: repo.new_pack(), framing: Vec::new(), framed: 0, stored: Vec::new(), writer: None }
    }

    /// Runs `fill` with a repacker whose packs are stored and indexed by backup's pack writer
    /// (several at once into a bucket) while `fill` goes on framing, each pack indexed once it
    /// is durable; returns what `fill` returned once every pack is stored and indexed. At most
    /// one sealed pack waits for a writer, so memory stays bounded. For `copy`, whose images
    /// reference the packs only after this returns.
    pub fn with_writers<T>(
        repo: &'a Repository,
        fill: impl FnOnce(&mut Repacker) -> Result<T>,
    ) -> Result<(T, Written)> {
        let (packs, receiver) = std::sync::mpsc::sync_channel::<Numbered>(1);
        let (ack_sender, acks) = std::sync::mpsc::channel::<Ack>();
        std::thread::scope(|scope| {
            let writer = scope.spawn(move || write_packs(repo, receiver, ack_sender));
            // Acknowledgements carry the written pack's buffer: dropped as they come.
            let counter = scope.spawn(move || {
                acks.iter()
                    .fold(Written::default(), |t, ack| Written { packs: t.packs + 1, bytes: t.bytes + ack.stored })
            });
            let filled: Result<T> = (|| {
                let mut repacker = Repacker { writer: Some((packs, 0)), ..Repacker::new(repo) };
                let out = fill(&mut repacker)?;
                repacker.finish()?;
                Ok(out)
            })();
            // The sender is gone with the repacker: the writer stores what is queued and stops.
            let panicked = |_| Error::Internal { reason: "the pack writer panicked".into() };
            writer.join().map_err(panicked)??;
            let out = filled?;
            let written = counter.join().map_err(panicked)?;
            Ok((out, written))
        })
    }

    pub fn push(&mut self, id: ChunkId, raw: Vec<u8>) -> Result<()> {
        self.push_all(vec![(id, raw)])
    }

    /// `push` of every chunk of `chunks` in turn; the frames they fill are compressed (and
    /// verified) in parallel: what `copy` hands over comes in batches.
    pub fn push_all(&mut self, chunks: Vec<(ChunkId, Vec<u8>)>) -> Result<()> {
        let mut groups = Vec::new();
        for (id, raw) in chunks {
            self.framed += raw.len();
            self.framing.push((id, raw));
            if self.framed >= FRAME_TARGET {
                groups.push(std::mem::take(&mut self.framing));
                self.framed = 0;
            }
        }
        let level = self.repo.config().compression_level;
        let compress = |g: &Vec<(ChunkId, Vec<u8>)>| {
            compress_frame(&g.iter().map(|(id, raw)| (*id, raw.as_slice())).collect::<Vec<_>>(), level)
        };
        // One frame (or none: most single pushes) stays on this thread: handing it to the pool
        // costs a wake-up for nothing.
        let compressed: Vec<Result<(Codec, Vec<u8>)>> = if groups.len() > 1 {
            groups.par_iter().map(compress).collect()
        } else {
            groups.iter().map(compress).collect()
        };
        for (group, frame) in groups.iter().zip(compressed) {
            let (codec, stored) = frame?;
            self.add_frame(codec, stored, group)?;
        }
        Ok(())
    }

    fn frame(&mut self) -> Result<()> {
        if self.framing.is_empty() {
            return Ok(());
        }
        let chunks: Vec<(ChunkId, &[u8])> = self.framing.iter().map(|(id, raw)| (*id, raw.as_slice())).collect();
        let (codec, stored) = compress_frame(&chunks, self.repo.config().compression_level)?;
        let group = std::mem::take(&mut self.framing);
        self.framed = 0;
        self.add_frame(codec, stored, &group)
    }

    /// Adds one compressed frame of `group`'s chunks (its buffer goes back for the next frame);
    /// seals the pack once it is full.
    fn add_frame(&mut self, codec: Codec, stored: Vec<u8>, group: &[(ChunkId, Vec<u8>)]) -> Result<()> {
        let lens: Vec<(ChunkId, u32)> = group.iter().map(|(id, raw)| (*id, raw.len() as u32)).collect();
        self.builder.add_frame(codec, &stored, &lens)?;
        recycle_frame(stored);
        if self.builder.len() as u64 >= self.repo.config().pack_target_size {
            self.seal()?;
        }
        Ok(())
    }

    fn seal(&mut self) -> Result<()> {
        if !self.builder.is_empty() {
            let pack = std::mem::replace(&mut self.builder, self.repo.new_pack());
            match &mut self.writer {
                Some((sender, number)) => {
                    *number += 1;
                    // A writer that stopped has failed: its error is what `with_writers` returns.
                    if sender.send((*number, pack)).is_err() {
                        return Err(Error::Internal { reason: "the pack writer stopped".into() });
                    }
                }
                None => self.stored.push(store(self.repo, pack)?),
            }
        }
        Ok(())
    }

    /// Frames and stores what is left; returns every pack written (none `with_writers`: the
    /// writer stored and indexed them).
    pub fn finish(mut self) -> Result<Vec<StoredPack>> {
        self.frame()?;
        self.seal()?;
        Ok(self.stored)
    }
}
