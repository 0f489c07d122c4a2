//! Restore: resolves an image's chain and writes its bytes to a file (zero extents stay holes) or
//! a block device, in parallel at their offsets, verifying every chunk against its id. Everything
//! that can be checked without reading chunk data is checked before the first byte is written.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use rayon::prelude::*;

use crate::copies::Copies;
use crate::error::{Error, Result};
use crate::extent::{Content, Extent};
use crate::id::{ChunkId, PackId};
use crate::index::{ChunkLoc, ChunkLookup};
use crate::manifest::{ImageInfo, View};
use crate::pack::{chunk_of_frame, decode_frame};
use crate::progress::Progress;
use crate::repository::Repository;

/// A batch holds at most this many extents and, once it reaches `BATCH_BYTES` of chunk data,
/// stops: memory stays a few batches (two in flight) whatever the chunk size or disk size.
const BATCH: usize = 2048;
const BATCH_BYTES: u64 = 32 << 20;

/// The next batch of the view: up to `max` extents, ending once `BATCH_BYTES` of chunk data
/// (zero extents cost nothing) are in it.
fn next_batch(view: &mut View, max: usize) -> Result<Vec<Extent>> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while batch.len() < max && bytes < BATCH_BYTES {
        match view.next() {
            Some(e) => {
                let e = e?;
                if !e.is_zero() {
                    bytes += e.len;
                }
                batch.push(e);
            }
            None => break,
        }
    }
    Ok(batch)
}

#[derive(Clone, Debug, PartialEq)]
pub struct RestoreReport {
    pub bytes: u64,
    pub zero_bytes: u64,
    /// With `partial`: the ranges written as zeros because their chunks are damaged or missing.
    pub damaged: Vec<DamagedRange>,
    pub seconds: f64,
}

enum Target {
    File(File),
    Device(File),
}

impl Target {
    fn file(&self) -> &File {
        match self {
            Target::File(f) | Target::Device(f) => f,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Restore what can be restored: ranges whose chunks are damaged or missing become zeros
    /// (holes in a file) and are listed in the report, instead of failing the restore.
    pub partial: bool,
    /// Write to a block device even when it is mounted or otherwise in use (opened without
    /// `O_EXCL`).
    pub force: bool,
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
    let chain = repo.chain(image)?;
    let is_device = std::fs::metadata(target).map(|m| m.file_type().is_block_device()).unwrap_or(false);
    let copies = Copies::default();
    if is_device {
        // Before the (long) preflight: a device in use is refused at once.
        drop(open_device(target, opts.force)?);
    }
    preflight(repo, &chain, image, opts.partial, is_device, &copies)?;
    let (out, temp) = open_target(target, image.logical_bytes, opts.force)?;
    let result = write_all(repo, image, &chain, &out, target, opts, &copies, progress);
    match (result, temp) {
        (Ok((zero_bytes, damaged)), temp) => {
            out.file().sync_all().map_err(|e| Error::io("fsync", target, e))?;
            if let Some(temp) = temp {
                crate::failpoint::hit!("restore-before-rename");
                std::fs::rename(&temp, target).map_err(|e| Error::io("rename", &temp, e))?;
                crate::backend::sync_dir(
                    target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")),
                )?;
            }
            progress.end();
            Ok(RestoreReport {
                bytes: image.logical_bytes,
                zero_bytes,
                damaged,
                seconds: started.elapsed().as_secs_f64(),
            })
        }
        (Err(e), Some(temp)) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
        (Err(e), None) => Err(e),
    }
}

/// The writing pass. Batch k+1 is read and decoded in parallel while one thread writes batch
/// k: buffered writes to one file serialise on its inode lock anyway, so one writer with large
/// contiguous writes beats many small concurrent ones.
fn write_all(
    repo: &Repository,
    image: &ImageInfo,
    chain: &[ImageInfo],
    out: &Target,
    target: &Path,
    opts: &RestoreOptions,
    copies: &Copies,
    progress: &dyn Progress,
) -> Result<(u64, Vec<DamagedRange>)> {
    progress.begin("restore", image.logical_bytes);
    let mut view = repo.view(chain)?;
    let mut zero_bytes = 0;
    let damaged = Mutex::new(Vec::new());
    let mut pending: Option<(Vec<Extent>, Vec<Option<Vec<u8>>>)> = None;
    loop {
        let batch = next_batch(&mut view, BATCH)?;
        if batch.is_empty() && pending.is_none() {
            break;
        }
        let writing = pending.take();
        let lost = opts.partial.then_some(&damaged);
        let (written, decoded) = rayon::join(
            || writing.map(|(extents, data)| write_batch(out, target, &extents, &data).map(|()| extents)).transpose(),
            || decode_batch(repo, image, &batch, lost, copies),
        );
        if let Some(extents) = written? {
            zero_bytes += extents.iter().filter(|e| e.is_zero()).map(|e| e.len).sum::<u64>();
            progress.advance(extents.iter().map(|e| e.len).sum());
        }
        if !batch.is_empty() {
            pending = Some((batch, decoded?));
        }
    }
    let mut damaged = damaged.into_inner().unwrap_or_else(|p| p.into_inner());
    damaged.sort_by_key(|d| d.offset);
    Ok((zero_bytes, damaged))
}

fn chunk_id(e: &Extent) -> Option<ChunkId> {
    match e.content {
        Content::Chunk { id, .. } => Some(id),
        Content::Zero => None,
    }
}

/// Walks the whole chain (checksums, coverage) and checks that every chunk is indexed and every
/// pack present; with `read_data` also decodes and verifies every chunk. With `partial`, chunk
/// problems are left for the writing pass to record.
fn preflight(
    repo: &Repository,
    chain: &[ImageInfo],
    image: &ImageInfo,
    partial: bool,
    read_data: bool,
    copies: &Copies,
) -> Result<()> {
    let mut view = repo.view(chain)?;
    let mut pack_sizes: HashMap<PackId, u64> = HashMap::new();
    loop {
        let batch = next_batch(&mut view, BATCH * 4)?;
        if batch.is_empty() {
            return Ok(());
        }
        let ids: Vec<ChunkId> = batch.iter().filter_map(chunk_id).collect();
        for (id, loc) in ids.iter().zip(repo.index().locate(&ids)?) {
            let checked = chunk_present(repo, image, id, loc, &mut pack_sizes);
            if let Err(err) = checked {
                if !partial && copies.intact(repo, id, loc.as_ref())?.is_none() {
                    return Err(err);
                }
            }
        }
        if read_data && !partial {
            decode_batch(repo, image, &batch, None, copies)?;
        }
    }
}

/// The chunk is indexed and its pack holds its bytes (without reading them).
fn chunk_present(
    repo: &Repository,
    image: &ImageInfo,
    id: &ChunkId,
    loc: Option<ChunkLoc>,
    pack_sizes: &mut HashMap<PackId, u64>,
) -> Result<()> {
    let loc = loc.ok_or_else(|| Error::ChunkMissing { id: id.to_string(), image: image.id.to_string() })?;
    let size = match pack_sizes.get(&loc.pack) {
        Some(s) => *s,
        None => {
            let s = repo.backend().size(&loc.pack.path()).map_err(|_| Error::CorruptPack {
                pack: loc.pack.to_string(),
                reason: format!("missing; image {} needs it", image.id),
            })?;
            pack_sizes.insert(loc.pack, s);
            s
        }
    };
    if loc.offset + loc.stored_len as u64 > size {
        return Err(Error::CorruptPack {
            pack: loc.pack.to_string(),
            reason: format!("truncated to {size} bytes; chunk {id} of image {} lies beyond", image.id),
        });
    }
    Ok(())
}

/// Opens the target; for a file, a temporary file beside it that replaces it at the end.
/// Opens a block device for writing; with `O_EXCL` (unless `force`), which Linux refuses with
/// EBUSY while the device is mounted or held by another exclusive user.
fn open_device(target: &Path, force: bool) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = if force { 0 } else { libc::O_EXCL };
    OpenOptions::new().write(true).custom_flags(flags).open(target).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            Error::TargetInUse { target: target.into(), mounted_at: mount_point(target) }
        } else {
            Error::io("open", target, e)
        }
    })
}

/// Where a block device is mounted, from /proc/self/mountinfo (field 3 is the device's
/// major:minor, field 5 the mount point).
fn mount_point(device: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(device).ok()?.rdev();
    let want = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(2) == Some(&want.as_str())).then(|| f.get(4).map(|m| m.to_string())).flatten()
    })
}

fn open_target(target: &Path, needed: u64, force: bool) -> Result<(Target, Option<PathBuf>)> {
    match std::fs::metadata(target) {
        Ok(m) if m.file_type().is_block_device() => {
            let mut f = open_device(target, force)?;
            let available = f.seek(SeekFrom::End(0)).map_err(|e| Error::io("size", target, e))?;
            if available < needed {
                return Err(Error::TargetTooSmall { target: target.into(), needed, available });
            }
            Ok((Target::Device(f), None))
        }
        Ok(m) if !m.file_type().is_file() => Err(Error::TargetNotDisk { target: target.into() }),
        _ => {
            let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            remove_dead_temporaries(target, &name);
            let temp = target.with_file_name(format!(".{name}.strata-restore.{}", std::process::id()));
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)
                .map_err(|e| Error::io("create", &temp, e))?;
            // Zero extents are never written: in a new file they read back as zeros (holes).
            f.set_len(needed).map_err(|e| Error::io("resize", &temp, e))?;
            Ok((Target::File(f), Some(temp)))
        }
    }
}

/// Removes the temporary files that killed restores to the same target left beside it (full
/// size each): those whose process no longer exists. Best effort: a leftover costs space only.
fn remove_dead_temporaries(target: &Path, name: &str) {
    let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let prefix = format!(".{name}.strata-restore.");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix).and_then(|p| p.parse::<i32>().ok()) else { continue };
        // SAFETY: signal 0 only asks whether the process exists.
        let gone =
            unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Reads and verifies the chunk data of a batch, in parallel: for each extent its bytes, or
/// `None` for a zero extent.
/// With `lost`, a chunk that cannot be read is recorded there and comes back as `None`.
fn decode_batch(
    repo: &Repository,
    image: &ImageInfo,
    batch: &[Extent],
    lost: Option<&Mutex<Vec<DamagedRange>>>,
    copies: &Copies,
) -> Result<Vec<Option<Vec<u8>>>> {
    let ids: Vec<ChunkId> = batch.iter().filter_map(chunk_id).collect();
    let mut locs = repo.index().locate(&ids)?.into_iter();
    let work: Vec<(Extent, Option<ChunkLoc>)> =
        batch.iter().map(|e| (*e, if chunk_id(e).is_some() { locs.next().flatten() } else { None })).collect();
    // Each frame is read and decoded once, however many of its chunks are used. Decoded frames
    // can be far larger than the chunks taken from them (one chunk of each of many frames), so
    // they are decoded in groups of at most FRAME_BUDGET bytes.
    let mut out = Vec::with_capacity(work.len());
    let mut start = 0;
    while start < work.len() {
        let mut frame_of: HashMap<(PackId, u64), usize> = HashMap::new();
        let mut frames: Vec<ChunkLoc> = Vec::new();
        let (mut budget, mut end) = (0u64, start);
        while end < work.len() {
            if let Some(loc) = &work[end].1 {
                if !frame_of.contains_key(&(loc.pack, loc.offset)) {
                    if budget > 0 && budget + loc.frame_raw as u64 > FRAME_BUDGET {
                        break;
                    }
                    budget += loc.frame_raw as u64;
                    frame_of.insert((loc.pack, loc.offset), frames.len());
                    frames.push(*loc);
                }
            }
            end += 1;
        }
        let decoded: Vec<std::result::Result<Vec<u8>, FrameError>> =
            frames.par_iter().map(|loc| read_frame(repo, loc)).collect();
        let part: Vec<Option<Vec<u8>>> = work[start..end]
            .par_iter()
            .map(|(e, loc)| {
                let frame = loc.and_then(|l| frame_of.get(&(l.pack, l.offset))).map(|&i| &decoded[i]);
                match (decode_extent(repo, image, e, loc.as_ref(), frame, copies), lost) {
                    (
                        Err(
                            err @ (Error::ChunkMissing { .. } | Error::CorruptChunk { .. } | Error::CorruptPack { .. }),
                        ),
                        Some(lost),
                    ) => {
                        let range = DamagedRange { offset: e.offset, len: e.len, reason: err.to_string() };
                        lost.lock().unwrap_or_else(|p| p.into_inner()).push(range);
                        Ok(None)
                    }
                    (r, _) => r,
                }
            })
            .collect::<Result<_>>()?;
        out.extend(part);
        start = end;
    }
    Ok(out)
}

/// Decoded frames held at once by one restore batch.
const FRAME_BUDGET: u64 = 64 * 1024 * 1024;

/// Why a frame could not be used: its pack could not be read there, or the bytes do not decode.
enum FrameError {
    Unreadable(String),
    Undecodable(String),
}

/// Reads and decodes the frame at `loc` (all the chunks it holds).
fn read_frame(repo: &Repository, loc: &ChunkLoc) -> std::result::Result<Vec<u8>, FrameError> {
    let stored = repo
        .backend()
        .read_at(&loc.pack.path(), loc.offset, loc.stored_len as usize)
        .map_err(|err| FrameError::Unreadable(err.to_string()))?;
    decode_frame(loc.codec, &stored, loc.frame_raw).map_err(|err| FrameError::Undecodable(err.to_string()))
}

fn decode_extent(
    repo: &Repository,
    image: &ImageInfo,
    e: &Extent,
    loc: Option<&ChunkLoc>,
    frame: Option<&std::result::Result<Vec<u8>, FrameError>>,
    copies: &Copies,
) -> Result<Option<Vec<u8>>> {
    let Content::Chunk { id, skip } = e.content else { return Ok(None) };
    // The extent's part of the chunk, copied once.
    let take = |raw: &[u8]| -> Result<Option<Vec<u8>>> {
        let (s, n) = (skip as usize, e.len as usize);
        if s + n > raw.len() {
            return Err(Error::CorruptManifest {
                image: image.id.to_string(),
                reason: format!("extent at {} reaches past the end of chunk {id}", e.offset),
            });
        }
        Ok(Some(raw[s..s + n].to_vec()))
    };
    let read = || -> Result<&[u8]> {
        let loc = loc.ok_or_else(|| Error::ChunkMissing { id: id.to_string(), image: image.id.to_string() })?;
        let corrupt = |reason: String| Error::CorruptChunk { id: id.to_string(), pack: loc.pack.to_string(), reason };
        match frame {
            Some(Ok(decoded)) => {
                chunk_of_frame(id, decoded, loc.skip, loc.raw_len).map_err(|err| corrupt(err.to_string()))
            }
            Some(Err(FrameError::Undecodable(why))) => Err(corrupt(why.clone())),
            Some(Err(FrameError::Unreadable(why))) => Err(Error::CorruptPack {
                pack: loc.pack.to_string(),
                reason: format!("chunk {id} cannot be read: {why}"),
            }),
            None => Err(corrupt("its frame was not read".into())),
        }
    };
    // The copy the index names is damaged or gone: another pack may hold an intact one.
    match read() {
        Ok(raw) => take(raw),
        Err(err) => match copies.intact(repo, &id, loc)? {
            Some((_, raw)) => take(&raw),
            None => Err(err),
        },
    }
}

/// Writes a decoded batch: each run of adjacent chunk extents with one `pwritev`; zero extents
/// stay holes in a file and are written as zeros on a block device.
fn write_batch(out: &Target, target: &Path, extents: &[Extent], data: &[Option<Vec<u8>>]) -> Result<()> {
    let fail = |err: std::io::Error| Error::io("write", PathBuf::from(target), err);
    let mut i = 0;
    while i < extents.len() {
        let start = extents[i].offset;
        if data[i].is_none() {
            if let Target::Device(f) = out {
                write_zeros(f, start, extents[i].len).map_err(fail)?;
            }
            i += 1;
            continue;
        }
        let mut run: Vec<&[u8]> = Vec::new();
        let mut end = start;
        while i < extents.len() && extents[i].offset == end && run.len() < IOV_MAX {
            let Some(d) = &data[i] else { break };
            run.push(d);
            end += d.len() as u64;
            i += 1;
        }
        pwrite_all(out.file(), &run, start).map_err(fail)?;
    }
    if let (Some(first), Some(last)) = (extents.first(), extents.last()) {
        start_writeback(out.file(), first.offset, last.offset + last.len - first.offset);
    }
    Ok(())
}

/// Asks the kernel to start writing a range back now (`sync_file_range`, no waiting), so the
/// disk works while the next batches are decoded and the final fsync finds little left to do.
/// Only a hint: the fsync at the end is what makes the restore durable and reports errors.
fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on an open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// At most this many buffers go into one `pwritev` (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

fn pwrite_all(f: &File, bufs: &[&[u8]], mut at: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut slices: Vec<std::io::IoSlice> = bufs.iter().map(|b| std::io::IoSlice::new(b)).collect();
    let mut rest: &mut [std::io::IoSlice] = &mut slices;
    while !rest.is_empty() {
        // SAFETY: IoSlice is ABI-compatible with iovec on Unix; the buffers outlive the call.
        let n =
            unsafe { libc::pwritev(f.as_raw_fd(), rest.as_ptr() as *const libc::iovec, rest.len() as i32, at as i64) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "pwritev wrote nothing"));
        }
        at += n as u64;
        std::io::IoSlice::advance_slices(&mut rest, n as usize);
    }
    Ok(())
}

fn write_zeros(f: &File, mut at: u64, len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; (len as usize).min(1 << 20)];
    let end = at + len;
    while at < end {
        let n = ((end - at) as usize).min(zeros.len());
        f.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}
