//! Restore: an image's bytes, through the image reader, written to a file (zero runs stay holes)
//! or a block device, verifying every chunk against its id. Everything that can be checked
//! without reading chunk data is checked before the first byte is written.

mod delta;
mod target;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::id::PackId;
use crate::index::ChunkLoc;
use crate::manifest::ImageInfo;
use crate::progress::Progress;
use crate::reader::{ImageReader, Piece};
use crate::repository::Repository;
use target::{open_device, open_target, pwrite_all, settle, start_writeback, write_zeros, Target, IOV_MAX};

/// A batch holds at most this many pieces and this many bytes of chunk data: memory stays a few
/// batches (two in flight) whatever the chunk size or disk size.
const BATCH: usize = 2048;
const BATCH_BYTES: u64 = 32 << 20;

/// Decoded frames a restore keeps: enough for a batch, whose pieces may each come from another
/// frame (the reader bounds each call at half of it).
const CACHE_BYTES: u64 = 64 << 20;

#[derive(Clone, Debug, PartialEq)]
pub struct RestoreReport {
    pub bytes: u64,
    pub zero_bytes: u64,
    /// Bytes written to the target (a delta restore writes only what differs; holes punched
    /// count as written).
    pub written_bytes: u64,
    /// With `partial`: the ranges written as zeros because their chunks are damaged or missing.
    pub damaged: Vec<DamagedRange>,
    pub seconds: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Restore what can be restored: ranges whose chunks are damaged or missing become zeros
    /// (holes in a file) and are listed in the report, instead of failing the restore.
    pub partial: bool,
    /// Write to a block device even when it is mounted or otherwise in use (opened without
    /// `O_EXCL`).
    pub force: bool,
    /// Restore only this partition of the image (`IMAGE:N`), as a disk of its own.
    pub partition: Option<u32>,
    /// The target holds an older copy: write only what differs, in place (see `delta`).
    pub delta: bool,
}

/// A range of the disk that a partial restore could not recover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedRange {
    pub offset: u64,
    pub len: u64,
    pub reason: String,
}

/// Restores `image` to `target`, which is created, replaced, or (a block device) written over.
pub fn restore(repo: &Repository, image: &ImageInfo, target: &Path, progress: &dyn Progress) -> Result<RestoreReport> {
    restore_with(repo, image, target, &RestoreOptions::default(), progress)
}

/// A file target is written under a temporary name beside it and renamed over it only when
/// everything was written and verified, so a failed restore leaves the target as it was. A block
/// device cannot be replaced: there every chunk is read and verified before the first write.
pub fn restore_with(
    repo: &Repository,
    image: &ImageInfo,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let started = Instant::now();
    if opts.delta {
        return restore_delta(repo, image, target, opts, progress);
    }
    let is_device = std::fs::metadata(target).map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    let is_device = is_device.unwrap_or(false);
    if is_device {
        // Before the (long) preflight: a device in use is refused at once.
        drop(open_device(target, opts.force)?);
    }
    let reader = open_reader(repo, image, opts.partition)?;
    let size = reader.map().size();
    preflight(&reader, opts.partial, is_device)?;
    let (out, temp) = open_target(target, size, opts.force)?;
    match (write_all(&reader, &out, target, opts, progress), temp) {
        (Ok(damaged), temp) => {
            out.file().sync_all().map_err(|e| Error::io("fsync", target, e))?;
            if let Some(temp) = temp {
                crate::failpoint::hit!("restore-before-rename");
                std::fs::rename(&temp, target).map_err(|e| Error::io("rename", &temp, e))?;
                crate::storage::sync_dir(
                    target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")),
                )?;
            }
            progress.end();
            let data = data_bytes(&reader);
            Ok(report(&reader, if is_device { size } else { data }, damaged, started))
        }
        (Err(e), Some(temp)) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
        (Err(e), None) => Err(e),
    }
}

/// A reader of `image`, or of its partition `partition` as a disk of its own.
fn open_reader(repo: &Repository, image: &ImageInfo, partition: Option<u32>) -> Result<ImageReader> {
    let reader = repo.reader(image, CACHE_BYTES)?;
    match partition {
        Some(n) => crate::partition::narrow(reader, n),
        None => Ok(reader),
    }
}

/// `restore_with` for `opts.delta`: the target exists and holds an older copy (see `delta`).
/// Everything that can be checked without chunk data is checked before the first write.
fn restore_delta(
    repo: &Repository,
    image: &ImageInfo,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let started = Instant::now();
    if opts.partial {
        return Err(Error::DeltaPartial);
    }
    let (f, device) = delta::open(target, opts.force)?;
    let reader = open_reader(repo, image, opts.partition)?;
    preflight(&reader, false, false)?;
    let done = delta::apply(&reader, &f, device, target, progress)?;
    Ok(report(&reader, done.written, Vec::new(), started))
}

/// Bytes of chunk data in the image (the rest is zeros).
fn data_bytes(reader: &ImageReader) -> u64 {
    let data: u64 = reader.map().pieces().iter().map(|p| p.len as u64).sum();
    data.min(reader.map().size())
}

fn report(reader: &ImageReader, written_bytes: u64, damaged: Vec<DamagedRange>, started: Instant) -> RestoreReport {
    let size = reader.map().size();
    RestoreReport {
        bytes: size,
        zero_bytes: size - data_bytes(reader),
        written_bytes,
        damaged,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The pieces of the map in batches (see `BATCH`, `BATCH_BYTES`).
fn batches(pieces: &[Piece], max: usize) -> impl Iterator<Item = &[Piece]> {
    let mut rest = pieces;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (mut n, mut bytes) = (0, 0u64);
        while n < rest.len() && n < max && bytes < BATCH_BYTES {
            bytes += rest[n].len as u64;
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        Some(batch)
    })
}

/// Checks that every chunk is indexed and every pack present (an intact copy elsewhere will
/// do); with `read_data` also reads and verifies every chunk. With `partial`, chunk problems are
/// left for the writing pass to record.
fn preflight(reader: &ImageReader, partial: bool, read_data: bool) -> Result<()> {
    if partial {
        return Ok(());
    }
    let mut pack_sizes: HashMap<PackId, u64> = HashMap::new();
    for batch in batches(reader.map().pieces(), BATCH * 4) {
        let ids: Vec<_> = batch.iter().map(|p| p.id).collect();
        for (p, loc) in batch.iter().zip(reader.index().locate(&ids)?) {
            if let Err(err) = chunk_present(reader, p, loc, &mut pack_sizes) {
                if reader.copies().intact(reader.backend(), reader.protection(), &p.id, loc.as_ref())?.is_none() {
                    return Err(err);
                }
            }
        }
        if read_data {
            for data in reader.fetch(batch)? {
                data?;
            }
        }
    }
    Ok(())
}

/// The chunk is indexed and its pack holds its bytes (without reading them).
fn chunk_present(
    reader: &ImageReader,
    p: &Piece,
    loc: Option<ChunkLoc>,
    pack_sizes: &mut HashMap<PackId, u64>,
) -> Result<()> {
    let image = reader.map().info().id;
    let loc = loc.ok_or_else(|| Error::ChunkMissing { id: p.id.to_string(), image: image.to_string() })?;
    let size = match pack_sizes.get(&loc.pack) {
        Some(s) => *s,
        None => {
            let s = reader.backend().size(&loc.pack.path()).map_err(|_| Error::CorruptPack {
                pack: loc.pack.to_string(),
                reason: format!("missing; image {image} needs it"),
            })?;
            pack_sizes.insert(loc.pack, s);
            s
        }
    };
    if loc.slot.offset + loc.slot.stored_len as u64 > size {
        return Err(Error::CorruptPack {
            pack: loc.pack.to_string(),
            reason: format!("truncated to {size} bytes; chunk {} of image {image} lies beyond", p.id),
        });
    }
    Ok(())
}

/// The writing pass. Batch k+1 is read and decoded in parallel while one thread writes batch
/// k: buffered writes to one file serialise on its inode lock anyway, so one writer with large
/// contiguous writes beats many small concurrent ones. Each batch is handed to writeback as
/// soon as it is written and settled (waited for, its pages dropped) after the next one.
/// Returns the damaged ranges (`partial`).
fn write_all(
    reader: &ImageReader,
    out: &Target,
    target: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<Vec<DamagedRange>> {
    let size = reader.map().size();
    progress.begin("restore", size);
    let mut damaged = Vec::new();
    let mut written_to = 0u64; // everything below is written (or a hole)
    let mut settled_to = 0u64; // everything below is on the disk and out of the page cache
    let mut pending: Option<(&[Piece], Vec<Option<Vec<u8>>>)> = None;
    let mut batches = batches(reader.map().pieces(), BATCH);
    loop {
        let batch = batches.next();
        if batch.is_none() && pending.is_none() {
            break;
        }
        let writing = pending.take();
        let write = |(pieces, data): (&[Piece], Vec<Option<Vec<u8>>>)| {
            let end = write_batch(out, target, written_to, pieces, &data)?;
            settle(out.file(), settled_to, written_to - settled_to);
            Ok::<_, Error>(end)
        };
        let (written, decoded) = rayon::join(
            || writing.map(write).transpose(),
            || batch.map(|b| decode(reader, b, opts.partial)).transpose(),
        );
        settled_to = written_to;
        if let Some(end) = written? {
            progress.advance(end - written_to);
            written_to = end;
        }
        if let (Some(b), Some((data, lost))) = (batch, decoded?) {
            damaged.extend(lost);
            pending = Some((b, data));
        }
    }
    if let Target::Device(f) = out {
        write_zeros(f, written_to, size - written_to).map_err(|e| Error::io("write", PathBuf::from(target), e))?;
    }
    progress.advance(size - written_to);
    Ok(damaged)
}

/// The bytes of a batch; with `partial`, a piece that cannot be had is recorded and comes back
/// as `None` (a hole, or zeros on a device).
fn decode(reader: &ImageReader, batch: &[Piece], partial: bool) -> Result<(Vec<Option<Vec<u8>>>, Vec<DamagedRange>)> {
    let mut lost = Vec::new();
    let mut data = Vec::with_capacity(batch.len());
    for (p, d) in batch.iter().zip(reader.fetch(batch)?) {
        match d {
            Ok(bytes) => data.push(Some(bytes)),
            Err(err @ (Error::ChunkMissing { .. } | Error::CorruptChunk { .. } | Error::CorruptPack { .. }))
                if partial =>
            {
                lost.push(DamagedRange { offset: p.offset, len: p.len as u64, reason: err.to_string() });
                data.push(None);
            }
            Err(err) => return Err(err),
        }
    }
    Ok((data, lost))
}

/// Writes a decoded batch: each run of adjacent pieces with one `pwritev`; the zero runs between
/// them (from `from` on) stay holes in a file and are written as zeros on a block device.
/// Returns the end of the batch.
fn write_batch(out: &Target, target: &Path, from: u64, pieces: &[Piece], data: &[Option<Vec<u8>>]) -> Result<u64> {
    let fail = |err: std::io::Error| Error::io("write", PathBuf::from(target), err);
    let mut at = from;
    let mut i = 0;
    while i < pieces.len() {
        let start = pieces[i].offset;
        if let Target::Device(f) = out {
            write_zeros(f, at, start - at).map_err(fail)?;
        }
        let mut run: Vec<&[u8]> = Vec::new();
        let mut end = start;
        while i < pieces.len() && pieces[i].offset == end && run.len() < IOV_MAX {
            let Some(d) = &data[i] else { break };
            run.push(d);
            end += d.len() as u64;
            i += 1;
        }
        if run.is_empty() {
            // A damaged piece of a partial restore: zeros.
            if let Target::Device(f) = out {
                write_zeros(f, start, pieces[i].len as u64).map_err(fail)?;
            }
            end = pieces[i].end();
            i += 1;
        }
        pwrite_all(out.file(), &run, start).map_err(fail)?;
        at = end;
    }
    if let Some(first) = pieces.first() {
        start_writeback(out.file(), first.offset, at - first.offset);
    }
    Ok(at)
}
