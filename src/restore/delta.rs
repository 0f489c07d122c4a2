//! Delta restore: the target already holds an older copy of the disk (any image of it, or the
//! disk itself after changes). Its bytes are read at the place of each chunk of the image and
//! hashed: a range that hashes to the chunk's id is already right and is not written; the rest
//! is fetched (verified) and written in place. Ranges the image holds as zeros are made zero
//! (holes punched in a file). A delta restore writes in place, so a failure half-way leaves a
//! mix of old and new data: the error says so, and running it again completes it.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use super::target::write_zeros;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::progress::Progress;
use crate::reader::{ImageReader, Piece};

/// Target bytes read and compared at once, at most.
const RUN_BYTES: u64 = 32 << 20;

/// Opens an existing target for reading and writing in place: a regular file or a block device
/// (exclusively unless `force`), never a directory or a symlink.
pub(super) fn open(target: &Path, force: bool) -> Result<(File, bool)> {
    let meta = std::fs::symlink_metadata(target).map_err(|e| Error::io("open", target, e))?;
    let kind = meta.file_type();
    let device = kind.is_block_device();
    if !kind.is_file() && !device {
        return Err(Error::TargetNotDisk { target: target.into() });
    }
    let flags = libc::O_NOFOLLOW | if device && !force { libc::O_EXCL } else { 0 };
    let f = OpenOptions::new().read(true).write(true).custom_flags(flags).open(target).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            Error::TargetInUse { target: target.into(), mounted_at: None }
        } else {
            Error::io("open", target, e)
        }
    })?;
    Ok((f, device))
}

/// What a delta restore did.
pub(super) struct Delta {
    pub written: u64,
}

/// Brings `f` (a file or device holding an older copy) to the image's bytes; returns what it
/// wrote. Every error after the first write says that the target holds a mix.
pub(super) fn apply(
    reader: &ImageReader,
    f: &File,
    device: bool,
    target: &Path,
    progress: &dyn Progress,
) -> Result<Delta> {
    let size = reader.map().size();
    let len = f.metadata().map_err(|e| Error::io("stat", target, e))?.len();
    let available = if device { device_size(f, target)? } else { len };
    if device && available < size {
        return Err(Error::TargetTooSmall { target: target.into(), needed: size, available });
    }
    let mut d = Delta { written: 0 };
    let result: Result<()> = (|| {
        if !device && len < size {
            f.set_len(size).map_err(|e| Error::io("resize", target, e))?;
        }
        progress.begin("restore", size);
        let mut at = 0u64;
        for run in runs(reader.map().pieces()) {
            let start = run[0].offset;
            make_zero(f, device, target, at, start, &mut d)?;
            update_run(reader, f, target, run, &mut d)?;
            at = run[run.len() - 1].end();
            progress.advance(at - start);
        }
        make_zero(f, device, target, at, size, &mut d)?;
        if !device && len > size {
            f.set_len(size).map_err(|e| Error::io("truncate", target, e))?;
        }
        f.sync_all().map_err(|e| Error::io("fsync", target, e))?;
        progress.end();
        Ok(())
    })();
    result.map(|()| d).map_err(|e| Error::DeltaIncomplete { target: target.into(), reason: e.to_string() })
}

fn device_size(f: &File, target: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = f;
    f.seek(SeekFrom::End(0)).map_err(|e| Error::io("size", target, e))
}

/// Runs of adjacent pieces, each at most `RUN_BYTES`.
fn runs(pieces: &[Piece]) -> impl Iterator<Item = &[Piece]> {
    let mut rest = pieces;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut n = 1;
        while n < rest.len() && rest[n].offset == rest[n - 1].end() && rest[n].end() - rest[0].offset <= RUN_BYTES {
            n += 1;
        }
        let (run, tail) = rest.split_at(n);
        rest = tail;
        Some(run)
    })
}

/// Reads the target under a run of pieces and writes the pieces whose bytes differ.
fn update_run(reader: &ImageReader, f: &File, target: &Path, run: &[Piece], d: &mut Delta) -> Result<()> {
    let start = run[0].offset;
    let mut old = vec![0u8; (run[run.len() - 1].end() - start) as usize];
    f.read_exact_at(&mut old, start).map_err(|e| Error::io("read", target, e))?;
    let ids: Vec<ChunkId> = run.iter().map(|p| p.id).collect();
    let locs = reader.index().locate(&ids)?;
    let mut changed: Vec<Piece> = Vec::new();
    for (p, loc) in run.iter().zip(&locs) {
        let cur = &old[(p.offset - start) as usize..(p.end() - start) as usize];
        // A whole chunk is compared by its hash; a clipped one by its bytes (below).
        let whole = loc.is_some_and(|l| p.skip == 0 && p.len == l.slot.raw_len);
        if !(whole && reader.protection().chunk_id(cur) == p.id) {
            changed.push(*p);
        }
    }
    for (p, data) in changed.iter().zip(reader.fetch(&changed)?) {
        let data = data?;
        let cur = &old[(p.offset - start) as usize..(p.end() - start) as usize];
        if data != cur {
            f.write_all_at(&data, p.offset).map_err(|e| Error::io("write", target, e))?;
            d.written += data.len() as u64;
        }
    }
    Ok(())
}

/// Makes `[from, to)` zero: in a file, ranges that are not already zero become holes; on a
/// device they are written as zeros.
fn make_zero(f: &File, device: bool, target: &Path, from: u64, to: u64, d: &mut Delta) -> Result<()> {
    let mut buf = vec![0u8; (to - from).min(1 << 20) as usize];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], at).map_err(|e| Error::io("read", target, e))?;
        if !crate::backup::is_zero(&buf[..n]) {
            if device {
                write_zeros(f, &mut None, at, n as u64).map_err(|e| Error::io("write", target, e))?;
            } else {
                punch_hole(f, at, n as u64).map_err(|e| Error::io("punch a hole in", target, e))?;
            }
            d.written += n as u64;
        }
        at += n as u64;
    }
    Ok(())
}

fn punch_hole(f: &File, at: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on a descriptor we own; no memory is passed.
    let rc = unsafe {
        libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, at as i64, len as i64)
    };
    if rc == 0 {
        return Ok(());
    }
    // A filesystem that cannot punch holes gets zeros written instead.
    write_zeros(f, &mut None, at, len)
}
