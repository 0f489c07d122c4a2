//! The data: chunks decoded and re-hashed. `check` reads whole packs (every chunk, referenced or
//! not: damage nobody needs today is still damage), `verify` reads one image through the image
//! reader (exactly the chunks it needs).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::{CheckReport, Findings, Problem, ReadData};
use crate::error::{Error, Result};
use crate::id::{ChunkId, ImageId, PackId};
use crate::manifest::ImageInfo;
use crate::pack::FrameReader;
use crate::progress::Progress;
use crate::reader::{FrameCache, ImageMap, ImageReader};
use crate::repository::Repository;

/// What reading a pack found wrong.
enum Damage {
    Chunk(ChunkId),
    /// Bytes that no chunk decodes differently (the pack no longer matches its name).
    Pack(PackId),
}

/// What reading one pack found: its damage, chunks read, frame bytes read.
type PackRead = (Vec<(Damage, String)>, u64, u64);

/// Reads the selected packs whole, in parallel, each chunk decoded and re-hashed.
pub(super) fn read_packs(
    repo: &Repository,
    packs: &BTreeSet<PackId>,
    read: ReadData,
    f: &mut Findings,
    report: &mut CheckReport,
    progress: &dyn Progress,
) -> Result<()> {
    let selected: Vec<&PackId> = packs
        .iter()
        .filter(|p| !f.bad_packs.contains_key(p))
        .filter(|p| match read {
            ReadData::None => false,
            ReadData::All => true,
            ReadData::Subset(pct) => (u16::from_le_bytes([p.0[0], p.0[1]]) as f64) < pct / 100.0 * 65536.0,
        })
        .collect();
    let sizes: HashMap<PackId, u64> = repo.index().packs()?.into_iter().map(|(p, r)| (p, r.size)).collect();
    progress.begin("check", selected.iter().map(|p| sizes.get(*p).copied().unwrap_or(0)).sum());
    // Buffers reused from pack to pack (as many as packs are read at once): fresh memory for
    // every pack costs a page fault per 4 KiB read.
    let spare: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let results: Vec<PackRead> = selected
        .par_iter()
        .map(|pack| {
            let mut file = spare.lock().ok().and_then(|mut s| s.pop()).unwrap_or_default();
            let read = read_pack(repo, pack, f, progress, &mut file);
            if let Ok(mut s) = spare.lock() {
                s.push(file);
            }
            read
        })
        .collect();
    progress.end();
    report.packs_read = selected.len();
    for (damaged, n, bytes) in results {
        report.chunks_read += n;
        report.bytes_read += bytes;
        for (damage, why) in damaged {
            match damage {
                // Altered bytes that change no chunk: damage to report, no image affected.
                Damage::Pack(pack) => report.problems.push(Problem {
                    kind: "pack",
                    object: pack.to_string(),
                    detail: why,
                    images: vec![],
                }),
                Damage::Chunk(id) => {
                    f.bad_chunks.insert(id, why);
                }
            }
        }
    }
    Ok(())
}

/// One pack, read into `file`: what is damaged, chunks read, frame bytes read.
fn read_pack(
    repo: &Repository,
    pack: &PackId,
    f: &Findings,
    progress: &dyn Progress,
    file: &mut Vec<u8>,
) -> (Vec<(Damage, String)>, u64, u64) {
    let unreadable = |why: String| f.in_pack(pack).map(|id| (Damage::Chunk(id), why.clone())).collect();
    if let Err(e) = repo.backend().get_into(&pack.path(), file) {
        return (unreadable(format!("pack {pack} unreadable: {e}")), 0, 0);
    }
    let entries = match crate::pack::read_trailer(pack, repo.protection(), file) {
        Ok(e) => e,
        Err(e) => return (unreadable(e.to_string()), 0, 0),
    };
    let mut damaged = Vec::new();
    // Encrypted frames are opened in place in `file`: only its header and trailer, which the
    // tests below read, keep their stored bytes.
    let mut frames = FrameReader::new(file, repo.protection(), *pack);
    for e in &entries {
        if let Err(why) = frames.chunk(e) {
            // Only the copy the index points at decides restores; another damaged copy is
            // reported all the same.
            damaged.push((Damage::Chunk(e.id), format!("{why} (pack {pack}, offset {})", e.slot.offset)));
        }
    }
    let frame_bytes = frames.frame_bytes;
    // A plain pack is named by the hash of its bytes: this catches a flip that decodes to the
    // same chunk (zstd padding bits) or lies outside every chunk. An encrypted pack's name is
    // random; its frames and trailer authenticate every byte they cover, so what is left is
    // that they cover every byte between the header and the footer.
    let encrypted = repo.protection().is_encrypted();
    if damaged.is_empty() && encrypted && !crate::pack::frames_tile(file.len() as u64, &entries) {
        damaged.push((Damage::Pack(*pack), "holds bytes outside its frames and trailer".to_string()));
    }
    if damaged.is_empty() && encrypted && !crate::pack::known_flags(file) {
        damaged.push((Damage::Pack(*pack), "its header has flags that no version writes (altered)".to_string()));
    }
    if damaged.is_empty() && !encrypted && PackId::of(file) != *pack {
        damaged.push((
            Damage::Pack(*pack),
            "no longer matches its name (altered bytes that no chunk decodes differently)".to_string(),
        ));
    }
    progress.advance(file.len() as u64);
    (damaged, entries.len() as u64, frame_bytes)
}

/// Reads every chunk `image` needs through the image reader, taking only the copies the index
/// names (other copies are attribution's business).
pub(super) fn read_image(
    repo: &Repository,
    images: &[ImageInfo],
    (image, partition): (ImageId, Option<u32>),
    f: &mut Findings,
    report: &mut CheckReport,
    progress: &dyn Progress,
) -> Result<()> {
    let Some(info) = images.iter().find(|i| i.id == image) else { return Ok(()) };
    // A chain that cannot be resolved is the structure's finding already.
    let Ok(map) = ImageMap::resolve(repo.backend(), info) else { return Ok(()) };
    let cache = Arc::new(FrameCache::new(64 << 20));
    let mut reader =
        ImageReader::with_map(repo.shared_backend(), repo.shared_index(), repo.protection().clone(), map, cache)
            .strict();
    if let Some(n) = partition {
        reader = crate::partition::narrow(reader, n)?;
    }
    let pieces = reader.map().pieces();
    progress.begin("verify", pieces.iter().map(|p| p.len as u64).sum());
    let mut frames: HashSet<(PackId, u64)> = HashSet::new();
    let mut chunks: HashSet<ChunkId> = HashSet::new();
    for batch in pieces.chunks(4096) {
        for (p, data) in batch.iter().zip(reader.fetch(batch)?) {
            match data {
                Err(e @ (Error::ChunkMissing { .. } | Error::CorruptChunk { .. } | Error::CorruptPack { .. })) => {
                    f.bad_chunks.entry(p.id).or_insert_with(|| e.to_string());
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            if chunks.insert(p.id) {
                if let Some(l) = f.loc(&p.id) {
                    if frames.insert((l.pack, l.slot.offset)) {
                        report.bytes_read += l.slot.stored_len as u64;
                    }
                }
            }
            progress.advance(p.len as u64);
        }
    }
    progress.end();
    report.chunks_read = chunks.len() as u64;
    report.packs_read = frames.iter().map(|(p, _)| *p).collect::<HashSet<_>>().len();
    Ok(())
}
