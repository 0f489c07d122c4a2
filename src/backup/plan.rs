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
