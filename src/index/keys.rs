//! Every key of the index, in one place: the table of docs/FORMAT.md ("Index", index version 3)
//! as code. Nothing outside this folder builds or parses a key.
//!
//! ```text
//! "c" ++ chunk id [32]  → ChunkLoc (57 bytes): where the chunk is stored
//! "p" ++ pack id [32]   → PackRecord (24 bytes): size, chunks, dead bytes and chunks
//! "i" ++ image id [16]  → ImageInfo, encoded as in the manifest footer (the catalog)
//! "o" ++ chunk id [32]  → owners: n × (set id [16] | reference count u32)
//! "d" ++ chunk id [32]  → empty: no image references the chunk (prune's candidates)
//! "S" ++ set id [16]    → SetCounters (32 bytes)
//! "T"                   → Totals (24 bytes)
//! "x"                   → the journal of an operation in progress (JSON)
//! "C"                   → empty: the index is complete
//! "G"                   → generation u64 LE of the last writing command that finished
//! "v"                   → index version u32 LE
//! ```

use crate::id::{ChunkId, ImageId, PackId};

pub(super) const CHUNK: &[u8] = b"c";
pub(super) const PACK: &[u8] = b"p";
pub(super) const IMAGE: &[u8] = b"i";
pub(super) const OWNERS: &[u8] = b"o";
pub(super) const DEAD: &[u8] = b"d";
pub(super) const SET: &[u8] = b"S";
pub(super) const TOTALS: &[u8] = b"T";
pub(super) const JOURNAL: &[u8] = b"x";
pub(super) const COMPLETE: &[u8] = b"C";
pub(super) const GENERATION: &[u8] = b"G";
pub(super) const VERSION: &[u8] = b"v";

pub(super) const INDEX_VERSION: u32 = 3;

fn key(tag: &[u8], id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(tag.len() + id.len());
    k.extend_from_slice(tag);
    k.extend_from_slice(id);
    k
}

pub(super) fn chunk(id: &ChunkId) -> Vec<u8> {
    key(CHUNK, &id.0)
}

pub(super) fn pack(id: &PackId) -> Vec<u8> {
    key(PACK, &id.0)
}

pub(super) fn image(id: &ImageId) -> Vec<u8> {
    key(IMAGE, &id.0)
}

pub(super) fn owners(id: &ChunkId) -> Vec<u8> {
    key(OWNERS, &id.0)
}

pub(super) fn dead(id: &ChunkId) -> Vec<u8> {
    key(DEAD, &id.0)
}

pub(super) fn set(id: &ImageId) -> Vec<u8> {
    key(SET, &id.0)
}

/// The id in a key of `N`-byte ids under a one-byte tag.
pub(super) fn id_of<const N: usize>(key: &[u8]) -> Option<[u8; N]> {
    key.get(1..)?.try_into().ok()
}
