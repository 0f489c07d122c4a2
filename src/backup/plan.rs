//! What a backup makes before it reads a byte: the image kind and its base (from the catalog),
//! and a valid source id.

use crate::error::{Error, Result};
use crate::manifest::{ImageInfo, Kind};

/// Which kind of image to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindRequest {
    /// Full when the source has no backup set yet, else incremental.
    Auto,
    Full,
    Differential,
    Incremental,
}

/// The longest source id accepted, in bytes (ids are often device paths; Linux paths are at
/// most 4096 bytes). Checked before anything is written: the catalog and every manifest carry it.
pub const MAX_SOURCE_ID_LEN: usize = 4096;

/// A source id is 1 to `MAX_SOURCE_ID_LEN` bytes of UTF-8 without control characters (which
/// would garble listings).
pub(crate) fn validate_source_id(id: &str) -> Result<()> {
    let shown: String = id.chars().take(40).collect();
    let bad = |reason: String| Err(Error::BadSourceId { shown: shown.clone(), reason });
    if id.is_empty() {
        return bad("it is empty".into());
    }
    if id.len() > MAX_SOURCE_ID_LEN {
        return bad(format!("it is {} bytes long; the limit is {MAX_SOURCE_ID_LEN}", id.len()));
    }
    if id.chars().any(char::is_control) {
        return bad("it contains control characters".into());
    }
    Ok(())
}

/// Chooses kind and base from the catalog: the base of a differential is the set's full, the base
/// of an incremental is the newest image of the set.
pub(crate) fn plan_kind(images: &[ImageInfo], source_id: &str, req: KindRequest) -> Result<(Kind, Option<ImageInfo>)> {
    let of_source: Vec<&ImageInfo> = images.iter().filter(|i| i.source_id == source_id).collect();
    let latest_full = of_source.iter().rev().find(|i| i.kind == Kind::Full).copied();
    let kind = match req {
        KindRequest::Full => return Ok((Kind::Full, None)),
        KindRequest::Auto if latest_full.is_none() => return Ok((Kind::Full, None)),
        KindRequest::Auto | KindRequest::Incremental => Kind::Incremental,
        KindRequest::Differential => Kind::Differential,
    };
    let full = latest_full.ok_or(Error::NoBaseImage { source_id: source_id.into(), kind: kind.name() })?;
    let base = match kind {
        Kind::Differential => full,
        // By the set's label, not the full's id: after `forget --rebase` the set's full is a
        // synthetic one whose id differs from the label.
        _ => of_source.iter().rev().find(|i| i.set == full.set).copied().unwrap_or(full),
    };
    Ok((kind, Some(base.clone())))
}

/// The kind and base of `backup --base IMAGE` (`image`): an incremental on it (`auto` too), or a
/// differential on its set's full. The new image joins IMAGE's set; images already based on
/// IMAGE keep their chains (the set branches, as Macrium's "from an existing image" does).
pub(crate) fn plan_on(
    image: ImageInfo,
    images: &[ImageInfo],
    source_id: &str,
    req: KindRequest,
) -> Result<(Kind, Option<ImageInfo>)> {
    let bad = |reason: String| Error::BadBase { base: image.id.short(), reason };
    if image.source_id != source_id {
        return Err(bad(format!(
            "it is an image of source {:?}, not of {source_id:?}; pass --source-id {:?} if this is the same disk",
            image.source_id, image.source_id
        )));
    }
    match req {
        KindRequest::Full => Err(bad("a full has no base; use --kind incremental or differential".into())),
        KindRequest::Auto | KindRequest::Incremental => Ok((Kind::Incremental, Some(image))),
        KindRequest::Differential => {
            let full = images
                .iter()
                .find(|i| i.set == image.set && i.base.is_none())
                .ok_or_else(|| bad("its set has no full in the catalog".into()))?;
            Ok((Kind::Differential, Some(full.clone())))
        }
    }
}
