//! Image manifests: what one image records (its info and its extents), how manifests are encoded,
//! the catalog of images, and how a chain of manifests resolves to the full view of a disk.

pub mod catalog;
mod chain;
mod codec;
pub mod extent;

pub use catalog::DamagedImage;
pub use chain::{tee, ChangeFilter, Overlay, View};
pub use codec::open_manifest;
pub use codec::Fingerprint;
pub(crate) use codec::{read_fingerprints, read_info, ManifestWriter};
pub use extent::{Content, Extent};

use serde::{Deserialize, Serialize};

use crate::id::ImageId;

/// The three image kinds known from Macrium Reflect and AOMEI Backupper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Lists every extent of the disk.
    Full,
    /// Lists the extents that differ from its set's full.
    Differential,
    /// Lists the extents that differ from the previous image of its set.
    Incremental,
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Differential => "differential",
            Kind::Incremental => "incremental",
        }
    }
}

/// What a regular-file source looked like when it was read; equal stats mean unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStat {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

/// Everything the catalog knows of an image; stored in the manifest's footer and, as a cache,
/// in the index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub id: ImageId,
    pub kind: Kind,
    pub source_id: String,
    /// The full that starts this image's backup set (its own id for a full).
    pub set: ImageId,
    /// The image whose view this manifest's extents are applied on (None for a full).
    pub base: Option<ImageId>,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Size of the disk when it was read.
    pub logical_bytes: u64,
    /// Bytes of the extents this manifest lists (that differ from the base).
    pub changed_bytes: u64,
    /// Bytes this image added to packs (compressed), and their raw size and count.
    pub new_stored_bytes: u64,
    pub new_raw_bytes: u64,
    pub new_chunks: u64,
    /// Bytes of zero extents among the changed ones.
    pub changed_zero_bytes: u64,
    pub extent_count: u64,
    /// Number of images below this one in its chain (0 for a full).
    pub depth: u32,
    pub seconds: f64,
    /// Present for regular-file sources.
    pub source_stat: Option<SourceStat>,
    /// True when the source was found unchanged by its stat and not read.
    pub read_skipped: bool,
    /// A full written in place of a delta (chain depth bound) or made from a kept image when its
    /// full was forgotten (`forget --rebase`): metadata only, its data was already stored.
    pub synthetic: bool,
    /// Bytes of the disk its filesystems' allocation maps called free: not read, not stored,
    /// restored as zeros (0 with `--all-blocks`, for unknown layouts and in manifest version 1).
    pub unused_bytes: u64,
    /// The number of the writing command that wrote this manifest (the generation it finished
    /// with; see `storage::generation`): a rewrite by `forget` gets a higher one. An older copy
    /// of a manifest put back in its place has a lower one than the catalog or its dependents
    /// knew, and is refused (see `catalog::chain`). 0 before manifest version 3.
    pub generation: u64,
    /// The generation of the base's manifest when this one was written (0 for a full and before
    /// manifest version 3): the base's manifest must be at least this new.
    pub base_generation: u64,
}

#[cfg(test)]
impl ImageInfo {
    /// A bare image for planning tests: its id is `n` repeated, its set `set` repeated.
    pub(crate) fn fixture(n: u8, kind: Kind, base: Option<u8>, set: u8, created_ms: u64) -> ImageInfo {
        ImageInfo {
            id: ImageId([n; 16]),
            kind,
            source_id: "s".into(),
            set: ImageId([set; 16]),
            base: base.map(|b| ImageId([b; 16])),
            created_ms,
            logical_bytes: 1,
            changed_bytes: 0,
            new_stored_bytes: 0,
            new_raw_bytes: 0,
            new_chunks: 0,
            changed_zero_bytes: 0,
            extent_count: 0,
            depth: 0,
            seconds: 0.0,
            source_stat: None,
            read_skipped: false,
            synthetic: false,
            unused_bytes: 0,
            generation: 0,
            base_generation: 0,
        }
    }
}
