//! Restore: resolves an image's chain and writes its bytes to a file (zero extents stay holes) or
//! a block device, in parallel at their offsets, verifying every chunk against its id. Everything
//! that can be checked without reading chunk data is checked before the first byte is written.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::extent::{Content, Extent};
use crate::id::{ChunkId, PackId};
use crate::index::{ChunkLoc, ChunkLookup};
use crate::manifest::ImageInfo;
use crate::pack::decode_chunk;
use crate::progress::Progress;
use crate::repository::Repository;

/// Extents handled per parallel batch: bounds memory to a few batches of chunk data.
const BATCH: usize = 2048;

#[derive(Clone, Debug, PartialEq)]
pub struct RestoreReport {
    pub bytes: u64,
    pub zero_bytes: u64,
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

/// Restores `image` to `target`, which is created, overwritten, or (a block device) written over.
pub fn restore(repo: &Repository, image: &ImageInfo, target: &Path, progress: &dyn Progress) -> Result<RestoreReport> {
    let started = Instant::now();
    let chain = repo.chain(image)?;
    preflight(repo, &chain, image)?;
    let out = open_target(target, image.logical_bytes)?;
    progress.begin("restore", image.logical_bytes);
    let mut view = repo.view(&chain)?;
    let mut zero_bytes = 0;
    loop {
        let batch: Vec<Extent> = view.by_ref().take(BATCH).collect::<Result<_>>()?;
        if batch.is_empty() {
            break;
        }
        let ids: Vec<ChunkId> = batch.iter().filter_map(chunk_id).collect();
        let locs = repo.index().locate(&ids)?;
        let mut locs = locs.into_iter();
        let work: Vec<(Extent, Option<ChunkLoc>)> =
            batch.iter().map(|e| (*e, if chunk_id(e).is_some() { locs.next().flatten() } else { None })).collect();
        work.par_iter().try_for_each(|(e, loc)| write_extent(repo, &out, target, image, e, loc.as_ref()))?;
        let bytes: u64 = batch.iter().map(|e| e.len).sum();
        zero_bytes += batch.iter().filter(|e| e.is_zero()).map(|e| e.len).sum::<u64>();
        progress.advance(bytes);
    }
    out.file().sync_all().map_err(|e| Error::io("fsync", target, e))?;
    progress.end();
    Ok(RestoreReport { bytes: image.logical_bytes, zero_bytes, seconds: started.elapsed().as_secs_f64() })
}

fn chunk_id(e: &Extent) -> Option<ChunkId> {
    match e.content {
        Content::Chunk { id, .. } => Some(id),
        Content::Zero => None,
    }
}

/// Walks the whole chain (checksums, coverage) and checks that every chunk is indexed and every
/// pack present, without reading chunk data.
fn preflight(repo: &Repository, chain: &[ImageInfo], image: &ImageInfo) -> Result<()> {
    let mut view = repo.view(chain)?;
    let mut pack_sizes: HashMap<PackId, u64> = HashMap::new();
    loop {
        let batch: Vec<Extent> = view.by_ref().take(BATCH * 4).collect::<Result<_>>()?;
        if batch.is_empty() {
            return Ok(());
        }
        let ids: Vec<ChunkId> = batch.iter().filter_map(chunk_id).collect();
        for (id, loc) in ids.iter().zip(repo.index().locate(&ids)?) {
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
        }
    }
}

fn open_target(target: &Path, needed: u64) -> Result<Target> {
    match std::fs::metadata(target) {
        Ok(m) if m.file_type().is_block_device() => {
            let mut f = OpenOptions::new().write(true).open(target).map_err(|e| Error::io("open", target, e))?;
            let available = f.seek(SeekFrom::End(0)).map_err(|e| Error::io("size", target, e))?;
            if available < needed {
                return Err(Error::TargetTooSmall { target: target.into(), needed, available });
            }
            Ok(Target::Device(f))
        }
        Ok(m) if !m.file_type().is_file() => Err(Error::TargetNotDisk { target: target.into() }),
        _ => {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(target)
                .map_err(|e| Error::io("create", target, e))?;
            // Zero extents are never written: after truncation they read back as zeros (holes).
            f.set_len(needed).map_err(|e| Error::io("resize", target, e))?;
            Ok(Target::File(f))
        }
    }
}

fn write_extent(
    repo: &Repository,
    out: &Target,
    target: &Path,
    image: &ImageInfo,
    e: &Extent,
    loc: Option<&ChunkLoc>,
) -> Result<()> {
    let write = |data: &[u8], at: u64| {
        out.file().write_all_at(data, at).map_err(|err| Error::io("write", PathBuf::from(target), err))
    };
    match e.content {
        Content::Zero => {
            if let Target::Device(_) = out {
                let zeros = vec![0u8; (e.len as usize).min(1 << 20)];
                let mut at = e.offset;
                while at < e.end() {
                    let n = ((e.end() - at) as usize).min(zeros.len());
                    write(&zeros[..n], at)?;
                    at += n as u64;
                }
            }
            Ok(())
        }
        Content::Chunk { id, skip } => {
            let loc = loc.ok_or_else(|| Error::ChunkMissing { id: id.to_string(), image: image.id.to_string() })?;
            let stored =
                repo.backend().read_at(&loc.pack.path(), loc.offset, loc.stored_len as usize).map_err(|err| {
                    Error::CorruptPack {
                        pack: loc.pack.to_string(),
                        reason: format!("chunk {id} cannot be read: {err}"),
                    }
                })?;
            let raw = decode_chunk(id, loc.codec, &stored, loc.raw_len).map_err(|err| Error::CorruptChunk {
                id: id.to_string(),
                pack: loc.pack.to_string(),
                reason: err.to_string(),
            })?;
            let (s, n) = (skip as usize, e.len as usize);
            let piece = raw.get(s..s + n).ok_or_else(|| Error::CorruptManifest {
                image: image.id.to_string(),
                reason: format!("extent at {} reaches past the end of chunk {id}", e.offset),
            })?;
            write(piece, e.offset)
        }
    }
}
