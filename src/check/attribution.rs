//! Which images the damage found keeps from restoring: a bad chunk with an intact copy breaks
//! nothing; otherwise only the images whose resolved views (the image reader's maps) still use a
//! bad chunk are affected, so no unaffected image is reported damaged.

use std::collections::{BTreeSet, HashMap};

use super::{CheckReport, Findings, ImageStatus, Problem};
use crate::error::Result;
use crate::id::{ChunkId, ImageId};
use crate::manifest::{ImageInfo, Kind};
use crate::reader::{Copies, ImageMap};
use crate::repository::Repository;

/// A bad chunk with an intact copy in another pack is damage to report, but restores use the
/// copy, so it breaks no image.
pub(super) fn other_copies(repo: &Repository, f: &mut Findings, report: &mut CheckReport) -> Result<()> {
    let copies = Copies::default();
    let ids: Vec<ChunkId> = f.bad_chunks.keys().copied().collect();
    for id in ids {
        if let Some((alt, _)) = copies.intact(repo.backend(), repo.protection(), &id, f.loc(&id).as_ref())? {
            let why = f.bad_chunks.remove(&id).unwrap_or_default();
            let detail = format!("{why}; an intact copy in pack {} is used instead", alt.pack);
            report.problems.push(Problem { kind: "chunk", object: id.to_string(), detail, images: vec![] });
        }
    }
    Ok(())
}

/// Every chunk the index places in a missing or damaged pack is bad.
pub(super) fn spread_pack_damage(f: &mut Findings) {
    for (pack, why) in &f.bad_packs {
        for i in f.by_pack.get(pack).map(Vec::as_slice).unwrap_or_default() {
            f.bad_chunks.entry(f.chunks.id(*i)).or_insert_with(|| format!("pack {pack} is {why}"));
        }
    }
}

/// The images whose views use a bad chunk, and the images whose chains are broken.
pub(super) fn affected(
    repo: &Repository,
    images: &[ImageInfo],
    only: Option<ImageId>,
    by_id: &HashMap<ImageId, &ImageInfo>,
    f: &mut Findings,
) {
    let suspects: BTreeSet<ImageId> = f.bad_chunks.keys().flat_map(|c| f.chunks.images_of_id(c)).collect();
    for info in images {
        if f.bad_images.contains_key(&info.id) || only.is_some_and(|o| o != info.id) {
            continue;
        }
        let chain = match chain_of(info, by_id) {
            Ok(c) => c,
            Err(broken) => {
                // Attribute it to the image whose manifest or base broke the chain.
                let cause = f.root.get(&broken).copied().unwrap_or(broken);
                f.bad_images.insert(info.id, format!("its chain includes damaged image {}", cause.short()));
                f.root.insert(info.id, cause);
                continue;
            }
        };
        if let Some(r) = chain.iter().find_map(|c| f.root.get(&c.id).copied()) {
            f.bad_images.insert(info.id, format!("its chain includes damaged image {}", r.short()));
            f.root.insert(info.id, r);
            continue;
        }
        if !chain.iter().any(|c| suspects.contains(&c.id)) {
            continue;
        }
        match ImageMap::of_chain(repo.backend(), info, &chain) {
            Ok(map) => {
                let hit: BTreeSet<ChunkId> =
                    map.pieces().iter().map(|p| p.id).filter(|id| f.bad_chunks.contains_key(id)).collect();
                if !hit.is_empty() {
                    f.affected.insert(info.id, hit);
                }
            }
            Err(e) => {
                f.bad_images.insert(info.id, e.to_string());
            }
        }
    }
}

/// Reports every bad chunk and pack with the images it affects, and every broken manifest or
/// chain with the images that rest on it.
pub(super) fn report(f: &mut Findings, report: &mut CheckReport) {
    for (id, why) in &f.bad_chunks {
        let imgs: Vec<ImageId> = f.affected.iter().filter(|(_, c)| c.contains(id)).map(|(i, _)| *i).collect();
        report.problems.push(Problem { kind: "chunk", object: id.to_string(), detail: why.clone(), images: imgs });
    }
    for (pack, why) in &f.bad_packs {
        let imgs: Vec<ImageId> =
            f.affected.iter().filter(|(_, c)| f.in_pack(pack).any(|id| c.contains(&id))).map(|(i, _)| *i).collect();
        report.problems.push(Problem { kind: "pack", object: pack.to_string(), detail: why.clone(), images: imgs });
    }
    for p in report.problems.iter_mut().filter(|p| p.kind == "manifest" || p.kind == "chain") {
        let cause = ImageId::parse(&p.object);
        p.images = f.root.iter().filter(|(_, r)| Some(**r) == cause).map(|(i, _)| *i).collect();
    }
}

/// Whether each image restores, and why not.
pub(super) fn statuses(images: &[ImageInfo], only: Option<ImageId>, f: &Findings, report: &mut CheckReport) {
    for info in images.iter().filter(|i| only.is_none_or(|o| o == i.id)) {
        let mut reasons = Vec::new();
        if let Some(why) = f.bad_images.get(&info.id) {
            reasons.push(why.clone());
        }
        if let Some(chunks) = f.affected.get(&info.id) {
            reasons.push(format!(
                "{} chunk{} it needs are damaged or missing",
                chunks.len(),
                if chunks.len() == 1 { "" } else { "s" }
            ));
        }
        report.images.push(ImageStatus { id: info.id, restorable: reasons.is_empty(), reasons });
    }
}

/// The chain of `info`, full first, from the images' bases; `Err` names the image whose base is
/// missing or whose chain does not start at a full (the structure checks report it).
fn chain_of(info: &ImageInfo, by_id: &HashMap<ImageId, &ImageInfo>) -> std::result::Result<Vec<ImageInfo>, ImageId> {
    let mut chain = vec![info.clone()];
    while let Some(base) = chain.last().and_then(|i| i.base) {
        match by_id.get(&base) {
            Some(b) if chain.len() <= by_id.len() => chain.push((*b).clone()),
            _ => return Err(chain.last().map_or(info.id, |i| i.id)),
        }
    }
    if chain.last().is_some_and(|full| full.kind != Kind::Full) {
        return Err(chain.last().map_or(info.id, |i| i.id));
    }
    chain.reverse();
    Ok(chain)
}
