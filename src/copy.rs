//! Copy: images from one repository into another (a local repository mirrored to a bucket, or
//! a bucket's images brought back), storing only the chunks the destination lacks.
//!
//! Chunks move as they are named: both repositories must compute chunk ids alike (two plain
//! repositories, or an encrypted destination made with `init --copy-keys-from`, which shares
//! the source's identity key but seals with its own keys). Each chunk is read and verified from
//! the source, framed, compressed and sealed anew in the destination's packs; the manifest's
//! extents and segment fingerprints are copied unchanged.
//!
//! Write order, per image, as a backup's (docs/FORMAT.md, "Write order"): the journal is set;
//! each new pack is durable, then indexed; the manifest is published (the commit point); the
//! catalog entry, the counters and the journal's end go in one synced batch; the generation
//! follows. An image's base is copied before it, so a copy killed at any point leaves every
//! image it reported copied restorable, and the next run copies the rest.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::backup::Repacker;
use crate::error::{Error, Result};
use crate::id::{ChunkId, ImageId};
use crate::index::{ChunkLookup, Journal, RefDelta, Txn};
use crate::manifest::{catalog, open_manifest, read_fingerprints, Content, ImageInfo, ManifestWriter};
use crate::progress::Progress;
use crate::reader::{FrameCache, ImageMap, ImageReader, Piece};
use crate::repository::Repository;

/// Chunks are fetched from the source in batches of about this many raw bytes.
const BATCH_BYTES: u64 = 32 << 20;

/// Decoded source frames held at once: chunks are read in pack order, so each frame is needed
/// only while its chunks are copied.
const CACHE_BYTES: u64 = 64 << 20;

/// What a copy did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CopyReport {
    /// The images copied, bases first, as the destination now has them.
    pub copied: Vec<ImageInfo>,
    /// Images asked for (or bases of them) that the destination already had.
    pub present: Vec<ImageId>,
    /// Chunks the destination lacked, and their raw bytes.
    pub chunks: u64,
    pub raw_bytes: u64,
    /// Chunks the copied images reference that the destination already held.
    pub chunks_present: u64,
    /// Packs written into the destination, and their bytes.
    pub packs: usize,
    pub stored_bytes: u64,
}

/// Copies the images `specs` name in `src` (every image when empty), with the images they
/// depend on, into `dst` (opened for writing). Images `dst` already has are left as they are.
pub fn copy(src: &Repository, dst: &Repository, specs: &[String], progress: &dyn Progress) -> Result<CopyReport> {
    require_same_naming(src, dst)?;
    let mut report = CopyReport::default();
    // The destination's images and their manifests' generations (a copied image records its
    // base's), with each image this copy adds.
    let mut have: HashMap<ImageId, u64> = dst.images()?.iter().map(|i| (i.id, i.generation)).collect();
    for image in selected(src, specs)? {
        if have.contains_key(&image.id) {
            report.present.push(image.id);
            continue;
        }
        let copied = copy_image(src, dst, &image, &have, &mut report, progress)?;
        have.insert(copied.id, copied.generation);
        report.copied.push(copied);
    }
    Ok(report)
}

/// Refuses a copy between repositories that name content differently, or onto itself.
fn require_same_naming(src: &Repository, dst: &Repository) -> Result<()> {
    let (from, to) = (src.location().display().to_string(), dst.location().display().to_string());
    if src.config().repository_id == dst.config().repository_id {
        return Err(Error::BadLocation {
            location: to,
            reason: "it is the source repository itself: copy into another repository".into(),
        });
    }
    const PROBE: &[u8] = b"strata: do these repositories name chunks alike?";
    let (a, b) = (src.protection(), dst.protection());
    if a.chunk_id(PROBE) != b.chunk_id(PROBE) || a.chunker_seed() != b.chunker_seed() {
        return Err(Error::CopyKeysDiffer { from, to });
    }
    Ok(())
}

/// The images to copy, each after the image it is based on: those `specs` name and every image
/// below them, as the source's catalog links them.
fn selected(src: &Repository, specs: &[String]) -> Result<Vec<ImageInfo>> {
    let all = src.images()?;
    let wanted: Vec<ImageInfo> =
        if specs.is_empty() { all.clone() } else { specs.iter().map(|s| src.find_image(s)).collect::<Result<_>>()? };
    let by_id: HashMap<ImageId, &ImageInfo> = all.iter().map(|i| (i.id, i)).collect();
    let mut picked: HashMap<ImageId, ImageInfo> = HashMap::new();
    for w in wanted {
        let mut next = Some(w);
        while let Some(image) = next.take() {
            if picked.contains_key(&image.id) {
                break;
            }
            if let Some(base) = image.base {
                let found = by_id.get(&base).ok_or_else(|| Error::BaseUnreadable {
                    base: base.to_string(),
                    reason: format!("image {} is based on it, but the source's catalog does not have it", image.id),
                })?;
                next = Some((*found).clone());
            }
            picked.insert(image.id, image);
        }
    }
    // A base is one level shallower than the images on it: by depth, bases come first.
    let mut order: Vec<ImageInfo> = picked.into_values().collect();
    order.sort_by_key(|i| (i.depth, i.created_ms, i.id));
    Ok(order)
}

/// Copies one image whose base (if any) `dst` already has (`have`: its images' generations).
fn copy_image(
    src: &Repository,
    dst: &Repository,
    image: &ImageInfo,
    have: &HashMap<ImageId, u64>,
    report: &mut CopyReport,
    progress: &dyn Progress,
) -> Result<ImageInfo> {
    // The manifest is the truth (the catalog a cache of it), read whole and checked first.
    let (info, extents) = open_manifest(src.backend(), &image.id)?;
    let mut delta = RefDelta::default();
    let mut chunks = Vec::new();
    let mut seen = HashSet::new();
    for e in extents {
        if let Content::Chunk { id, .. } = e?.content {
            delta.add(id, info.set, 1);
            if seen.insert(id) {
                chunks.push(id);
            }
        }
    }
    drop(seen);
    let held = dst.index().locate(&chunks)?;
    let missing: Vec<ChunkId> = chunks.iter().zip(&held).filter(|(_, h)| h.is_none()).map(|(c, _)| *c).collect();
    report.chunks_present += (chunks.len() - missing.len()) as u64;
    let mut copied = info.clone();
    copied.base_generation = match info.base {
        Some(base) => *have.get(&base).ok_or_else(|| Error::BaseUnreadable {
            base: base.to_string(),
            reason: format!("image {} is based on it, but the destination does not have it", info.id),
        })?,
        None => 0,
    };
    let journal = Journal { op: "copy".into(), ..Default::default() };
    dst.index().begin(&journal)?;
    let published = (|| {
        copy_chunks(src, dst, &info, &missing, report, progress)?;
        let segments = read_fingerprints(src.backend(), &info.id).unwrap_or_default();
        let mut manifest = ManifestWriter::create(dst.backend(), &info.id)?;
        let (again, extents) = open_manifest(src.backend(), &info.id)?;
        // A forget in the source may have rewritten the manifest since its chunks were listed
        // (readers take no lock): then what was copied may not be what it now names.
        if again != info {
            return Err(Error::CopiedImageChanged { image: info.id.to_string() });
        }
        for e in extents {
            manifest.push(&e?)?;
        }
        copied.generation = dst.writing_generation()?;
        crate::failpoint::hit!("copy-before-manifest");
        dst.verify_lock("copy")?;
        manifest.finish(&copied, &segments) // the commit point: from here on the image is copied
    })();
    if let Err(e) = published {
        // Nothing refers to the packs stored so far: settle the counters now, as the next
        // writer would (a failure here leaves that to it), so that `stats` stays exact.
        let _ = crate::recover::finish(dst.backend(), dst.index(), &journal);
        return Err(e);
    }
    crate::failpoint::hit!("copy-manifest-before-catalog");
    let mut txn = Txn::new();
    catalog::put(&mut txn, &copied)?;
    txn.clear_journal();
    dst.index().counters().apply(delta, txn)?;
    dst.commit_generation()?;
    Ok(copied)
}

/// Reads `missing` from the source (verified, another intact copy used where the indexed one
/// is damaged) and stores them in new packs of the destination, each indexed once durable.
fn copy_chunks(
    src: &Repository,
    dst: &Repository,
    info: &ImageInfo,
    missing: &[ChunkId],
    report: &mut CopyReport,
    progress: &dyn Progress,
) -> Result<()> {
    let locs = src.index().locate(missing)?;
    let mut pieces = Vec::with_capacity(missing.len());
    for (id, loc) in missing.iter().zip(&locs) {
        let loc = loc.ok_or_else(|| Error::ChunkMissing { id: id.to_string(), image: info.id.to_string() })?;
        pieces.push((loc, Piece { offset: 0, len: loc.slot.raw_len, skip: 0, id: *id }));
    }
    // In pack order: frames are read once and one after another.
    pieces.sort_by_key(|(loc, _)| (loc.pack, loc.slot.offset, loc.slot.skip));
    let total: u64 = pieces.iter().map(|(_, p)| p.len as u64).sum();
    progress.begin("copy", total);
    let index: Arc<dyn ChunkLookup> = src.shared_index();
    let reader = ImageReader::with_map(
        src.shared_backend(),
        index,
        src.protection().clone(),
        ImageMap::without_pieces(info),
        Arc::new(FrameCache::new(CACHE_BYTES)),
    );
    let mut batches = Vec::new();
    let mut start = 0;
    while start < pieces.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < pieces.len() && (end == start || bytes < BATCH_BYTES) {
            bytes += pieces[end].1.len as u64;
            end += 1;
        }
        batches.push(pieces[start..end].iter().map(|(_, p)| *p).collect::<Vec<Piece>>());
        start = end;
    }
    let ((), written) = Repacker::with_writers(dst, |repacker| {
        for batch in batches {
            let mut chunks = Vec::with_capacity(batch.len());
            for (piece, raw) in batch.iter().zip(reader.fetch(&batch)?) {
                chunks.push((piece.id, raw?));
            }
            let bytes: u64 = chunks.iter().map(|(_, raw)| raw.len() as u64).sum();
            report.chunks += chunks.len() as u64;
            report.raw_bytes += bytes;
            repacker.push_all(chunks)?;
            progress.advance(bytes);
        }
        Ok(())
    })?;
    report.packs += written.packs;
    report.stored_bytes += written.bytes;
    progress.end();
    Ok(())
}
