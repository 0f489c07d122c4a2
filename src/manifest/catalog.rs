//! The catalog and the chains: which images exist (the index's catalog, a cache of the manifests'
//! footers, plus manifests not yet catalogued), finding one by name, and the chain of manifests
//! an image's view is resolved from.

use std::collections::HashSet;

use super::chain::{Overlay, View};
use super::codec::{decode_info, encode_info, open_manifest, peek_info, read_info};
use super::extent::Content;
use super::{ImageInfo, Kind};
use crate::error::{Error, Result};
use crate::id::{ChunkId, ImageId};
use crate::index::{Index, Txn};
use crate::storage::{paths, Backend};

/// An image whose manifest cannot be read.
#[derive(Clone, Debug, PartialEq)]
pub struct DamagedImage {
    pub id: ImageId,
    /// What the manifest's footer says, when it still decodes (the damage is elsewhere).
    pub info: Option<ImageInfo>,
    pub reason: String,
}

/// Adds (or replaces) an image's catalog entry in a transaction.
pub fn put(txn: &mut Txn, info: &ImageInfo) -> Result<()> {
    txn.put_image(&info.id, &encode_info(info)?);
    Ok(())
}

/// Adds an image to the catalog (its own synced write); called only after its manifest is durable.
pub fn add(index: &Index, info: &ImageInfo) -> Result<()> {
    let mut txn = Txn::new();
    put(&mut txn, info)?;
    index.commit(txn)
}

/// The catalog, in no particular order. An entry that does not decode is an index error.
pub fn catalogued(index: &Index) -> Result<Vec<ImageInfo>> {
    index.catalog()?.iter().map(|(_, raw)| decode_info(raw)).collect()
}

/// Why manifest `m` is an older copy put back in its place, if it is: it is older than the
/// catalog's entry for it (`catalogued`), or the catalog lacks it although a command as new as
/// the manifest finished (`committed`, the index's generation) — a finished command catalogues
/// every manifest it writes, and a forgotten image leaves the catalog only after its manifest
/// is deleted. A manifest from before generations (0) cannot tell.
pub(crate) fn replayed(m: &ImageInfo, catalogued: Option<&ImageInfo>, committed: u64) -> Option<String> {
    match catalogued {
        Some(c) if m.generation < c.generation => Some(format!(
            "its manifest is an older copy put back in its place (generation {}; the catalog knew generation {})",
            m.generation, c.generation
        )),
        None if m.generation != 0 && m.generation <= committed => Some(format!(
            "its manifest (generation {}) is not in the catalog although every command up to generation {committed} \
             finished: a copy of a forgotten image's manifest put back?",
            m.generation
        )),
        _ => None,
    }
}

/// Manifests that are published but not (yet) in the catalog. Damaged ones, and older copies
/// put back (`replayed`), are left for `check` to report rather than hiding the rest.
pub(crate) fn uncatalogued(backend: &dyn Backend, index: &Index) -> Result<Vec<ImageInfo>> {
    // The generation before the catalog: a writer catalogues its manifests before it records
    // its generation, so a manifest newer than this generation is never taken for a replay.
    let committed = index.generation()?;
    let known: HashSet<ImageId> = index.catalog()?.into_iter().map(|(id, _)| id).collect();
    let ids = paths::manifest_ids(backend)?;
    Ok(ids
        .iter()
        .filter(|id| !known.contains(id))
        .filter_map(|id| read_info(backend, id).ok())
        .filter(|m| replayed(m, None, committed).is_none())
        .collect())
}

/// Images whose manifests are in `images/` but cannot be read, or are older copies put back,
/// and that the catalog does not list (a rebuild could not read them): with what their footer
/// still says, if anything.
pub fn damaged(backend: &dyn Backend, index: &Index) -> Result<Vec<DamagedImage>> {
    let committed = index.generation()?;
    let known: HashSet<ImageId> = index.catalog()?.into_iter().map(|(id, _)| id).collect();
    let mut out = Vec::new();
    for id in paths::manifest_ids(backend)?.into_iter().filter(|id| !known.contains(id)) {
        match read_info(backend, &id) {
            Err(e) => out.push(DamagedImage { id, info: peek_info(backend, &id).ok(), reason: e.to_string() }),
            Ok(m) => {
                if let Some(reason) = replayed(&m, None, committed) {
                    out.push(DamagedImage { id, info: Some(m), reason });
                }
            }
        }
    }
    Ok(out)
}

/// The info of every readable manifest (damaged ones are left for `check`).
pub(crate) fn manifest_infos(backend: &dyn Backend) -> Result<Vec<ImageInfo>> {
    Ok(paths::manifest_ids(backend)?.iter().filter_map(|id| read_info(backend, id).ok()).collect())
}

/// The one item of `items` whose id starts with `spec` (case-insensitive): none is
/// `ImageNotFound`, several are `AmbiguousImage` (listing them) unless the spec is empty.
pub(crate) fn find_by_prefix<T>(spec: &str, items: Vec<T>, id: impl Fn(&T) -> ImageId) -> Result<T> {
    let spec_l = spec.to_ascii_lowercase();
    let mut matches: Vec<T> = items.into_iter().filter(|i| id(i).to_string().starts_with(&spec_l)).collect();
    match matches.len() {
        1 => matches.pop().ok_or_else(|| Error::ImageNotFound { spec: spec.into() }),
        0 => Err(Error::ImageNotFound { spec: spec.into() }),
        _ if spec_l.is_empty() => Err(Error::ImageNotFound { spec: spec.into() }),
        _ => Err(Error::AmbiguousImage {
            spec: spec.into(),
            candidates: matches.iter().map(|i| id(i).short()).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Finds an image among `images` (oldest first) by full id, unique id prefix, or `latest`.
pub fn find(images: Vec<ImageInfo>, spec: &str) -> Result<ImageInfo> {
    if spec == "latest" {
        return images.into_iter().last().ok_or_else(|| Error::ImageNotFound { spec: spec.into() });
    }
    find_by_prefix(spec, images, |i| i.id)
}

/// The images needed to restore `image`, full first, as their manifests say (the catalog is a
/// cache and may lag behind a rewrite that an interrupted forget made). A manifest older than
/// what `image` (as the catalog has it) or the image above it in the chain knew is an older
/// copy put back in its place: refused, as damage.
pub fn chain(backend: &dyn Backend, image: &ImageInfo) -> Result<Vec<ImageInfo>> {
    // Footers only: `view` verifies every manifest whole before its extents are used.
    let head = peek_info(backend, &image.id)?;
    if let Some(reason) = replayed(&head, Some(image), 0) {
        return Err(Error::CorruptManifest { image: image.id.to_string(), reason });
    }
    let mut chain = vec![head];
    while let Some((base, needs)) = chain.last().and_then(|i| Some((i.base?, i.base_generation))) {
        if chain.len() > 100_000 || chain.iter().any(|i| i.id == base) {
            return Err(Error::CorruptManifest { image: image.id.to_string(), reason: "chain loops".into() });
        }
        let info = peek_info(backend, &base)?;
        if info.generation < needs {
            return Err(Error::CorruptManifest {
                image: base.to_string(),
                reason: format!(
                    "its manifest is an older copy put back in its place (generation {}; image {} was written on \
                     generation {needs} of it)",
                    info.generation,
                    chain.last().map(|i| i.id.short()).unwrap_or_default()
                ),
            });
        }
        chain.push(info);
    }
    let full = chain.last().ok_or_else(|| Error::ImageNotFound { spec: image.id.to_string() })?;
    if full.kind != Kind::Full {
        return Err(Error::CorruptManifest {
            image: full.id.to_string(),
            reason: "chain does not start at a full".into(),
        });
    }
    chain.reverse();
    Ok(chain)
}

/// The resolved extents of the last image of `chain`, streamed; every manifest in the chain is
/// checked (checksum, footer) before the first extent comes out.
pub fn view(backend: &dyn Backend, chain: &[ImageInfo]) -> Result<View> {
    let mut view: View = Box::new(std::iter::empty());
    for info in chain {
        let (stored, extents) = open_manifest(backend, &info.id)?;
        if stored.id != info.id || stored.base != info.base {
            return Err(Error::CorruptManifest {
                image: info.id.to_string(),
                reason: "does not match the catalog".into(),
            });
        }
        view = Box::new(Overlay::new(view, extents, info.logical_bytes));
    }
    Ok(view)
}

/// Calls `f` with the chunk of every chunk extent an image's manifest lists (its references).
pub(crate) fn for_each_chunk(backend: &dyn Backend, id: &ImageId, mut f: impl FnMut(ChunkId)) -> Result<()> {
    let (_, extents) = open_manifest(backend, id)?;
    for e in extents {
        if let Content::Chunk { id, .. } = e?.content {
            f(id);
        }
    }
    Ok(())
}
