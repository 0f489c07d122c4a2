//! Pack files: immutable containers of compressed chunks, each ending in a trailer that lists its
//! chunks, so that the index can always be rebuilt from the packs alone.
//!
//! Layout (docs/FORMAT.md, "Pack file", version 2):
//! ```text
//! header   magic "STRATAPK" (8) | version u16 LE = 2 | flags u16 LE = 0 (reserved: encryption)
//! frames   back to back; each frame holds one or more consecutive chunks, compressed together
//!          (one zstd frame) or raw
//! trailer  entry_count × entry (57 bytes each), one per chunk:
//!            chunk id [32] | frame offset u64 LE | frame stored_len u32 LE | raw_len u32 LE |
//!            codec u8 | skip u32 LE (chunk's offset in the decoded frame) | frame_raw u32 LE
//! footer   entry_count u32 LE | BLAKE3 of the trailer entries [32] | magic "STRATAPE" (8)
//! ```
//! The pack's name is the BLAKE3 hash of the whole file.

mod builder;
mod codec;

pub use builder::PackBuilder;
pub use codec::{
    chunk_of_frame, compress_chunk, compress_frame, decode_chunk, decode_entry, decode_frame, decode_frame_into,
    recycle_frame, unseal_frame, ChunkError, Codec, FrameReader, FRAME_TARGET, MAX_CHUNK_LEN, MAX_FRAME_LEN,
};

use crate::crypto::{ObjectKind, Protection, OVERHEAD};
use crate::error::{Error, Result};
use crate::id::{ChunkId, PackId};
use crate::storage::{paths, Backend};

pub(crate) const HEADER_MAGIC: &[u8; 8] = b"STRATAPK";
pub(crate) const FOOTER_MAGIC: &[u8; 8] = b"STRATAPE";
pub(crate) const PACK_VERSION: u16 = 2;
/// Header flag: frames and trailer are sealed (docs/FORMAT.md, "Encryption").
pub(crate) const FLAG_ENCRYPTED: u16 = 1;
pub(crate) const HEADER_LEN: usize = 12;
pub(crate) const ENTRY_LEN: usize = 32 + SLOT_LEN;
pub(crate) const FOOTER_LEN: usize = 4 + 32 + 8;

/// Where a chunk lies: the frame that holds it (offset in the pack, stored length, codec, decoded
/// length) and the chunk's place in the decoded frame. A pack's trailer lists a chunk id and a
/// slot per chunk; the index locates a chunk by a pack id and a slot: one type, one codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
    pub skip: u32,
    pub frame_raw: u32,
}

/// Encoded length of a slot.
pub const SLOT_LEN: usize = 25;

impl Slot {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.push(self.codec as u8);
        out.extend_from_slice(&self.skip.to_le_bytes());
        out.extend_from_slice(&self.frame_raw.to_le_bytes());
    }

    pub fn decode(b: &[u8]) -> Option<Slot> {
        if b.len() != SLOT_LEN {
            return None;
        }
        Some(Slot {
            offset: u64::from_le_bytes(b[0..8].try_into().ok()?),
            stored_len: u32::from_le_bytes(b[8..12].try_into().ok()?),
            raw_len: u32::from_le_bytes(b[12..16].try_into().ok()?),
            codec: Codec::from_u8(b[16])?,
            skip: u32::from_le_bytes(b[17..21].try_into().ok()?),
            frame_raw: u32::from_le_bytes(b[21..25].try_into().ok()?),
        })
    }

    /// The chunk's share of its frame's stored bytes (the whole frame for a frame of one), as
    /// the counters charge it.
    pub fn charged(&self) -> u64 {
        charged(self.stored_len, self.raw_len, self.frame_raw)
    }

    /// Whether both name the same copy: the same frame, the same place in it.
    pub fn same_place(&self, other: &Slot) -> bool {
        self.offset == other.offset && self.skip == other.skip
    }
}

/// One chunk inside a pack, as its trailer lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ChunkId,
    pub slot: Slot,
}

impl PackEntry {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        self.slot.encode(out);
    }

    pub fn charged(&self) -> u64 {
        self.slot.charged()
    }

    pub fn decode(b: &[u8]) -> Option<PackEntry> {
        if b.len() != ENTRY_LEN {
            return None;
        }
        Some(PackEntry { id: ChunkId(b[0..32].try_into().ok()?), slot: Slot::decode(&b[32..])? })
    }
}

/// A chunk's share of a frame of `stored_len` bytes that decodes to `frame_raw` bytes, rounded
/// down: what the counters charge for it. The same function everywhere keeps them consistent.
pub fn charged(stored_len: u32, raw_len: u32, frame_raw: u32) -> u64 {
    if frame_raw == 0 || raw_len >= frame_raw {
        return stored_len as u64;
    }
    stored_len as u64 * raw_len as u64 / frame_raw as u64
}

/// Bytes of a trailer of `count` entries as stored (sealed in an encrypted repository).
fn stored_trailer_len(count: u64, n: &Protection) -> u64 {
    count * ENTRY_LEN as u64 + if n.is_encrypted() { OVERHEAD as u64 } else { 0 }
}

/// The associated data name of a frame: the pack's id and the frame's place and shape, none of
/// which depends on the frame's own ciphertext (an encrypted pack's id is chosen before writing).
pub(crate) fn frame_name(pack: &PackId, offset: u64, codec: Codec, frame_raw: u32) -> [u8; 45] {
    let mut n = [0u8; 45];
    n[..32].copy_from_slice(&pack.0);
    n[32..40].copy_from_slice(&offset.to_le_bytes());
    n[40] = codec as u8;
    n[41..45].copy_from_slice(&frame_raw.to_le_bytes());
    n
}

/// Whether the header's flags hold only bits this version writes (check reports others: no
/// reader needs them, but in an encrypted pack they are the one header field no open covers).
pub(crate) fn known_flags(file: &[u8]) -> bool {
    file.get(10..12).is_some_and(|f| u16::from_le_bytes([f[0], f[1]]) & !FLAG_ENCRYPTED == 0)
}

/// Whether the frames of an encrypted pack of `size` bytes, as its `entries` list them, follow
/// one another from the header to the sealed trailer with no byte between or after them.
pub(crate) fn frames_tile(size: u64, entries: &[PackEntry]) -> bool {
    let mut at = HEADER_LEN as u64;
    for e in entries {
        if e.slot.offset == at {
            at += e.slot.stored_len as u64;
        } else if e.slot.offset + e.slot.stored_len as u64 != at {
            return false; // neither the next frame nor the one just counted
        }
    }
    at + entries.len() as u64 * ENTRY_LEN as u64 + OVERHEAD as u64 + FOOTER_LEN as u64 == size
}

/// Reads the trailer of a pack through `read_at(offset, len)` without reading its frames.
pub(crate) fn read_trailer_at(
    pack: &PackId,
    n: &Protection,
    size: u64,
    read_at: impl Fn(u64, usize) -> Result<Vec<u8>>,
) -> Result<Vec<PackEntry>> {
    let corrupt = |reason: &str| Error::CorruptPack { pack: pack.to_string(), reason: reason.to_string() };
    if size < (HEADER_LEN + FOOTER_LEN) as u64 {
        return Err(corrupt("shorter than header and footer"));
    }
    let footer = read_at(size - FOOTER_LEN as u64, FOOTER_LEN)?;
    let count = u32::from_le_bytes(footer[0..4].try_into().map_err(|_| corrupt("footer"))?) as u64;
    let trailer_len = stored_trailer_len(count, n);
    if trailer_len > size - (HEADER_LEN + FOOTER_LEN) as u64 {
        return Err(corrupt("entry count larger than the file"));
    }
    let frames_end = size - FOOTER_LEN as u64 - trailer_len;
    let header = read_at(0, HEADER_LEN)?;
    let trailer = read_at(frames_end, trailer_len as usize)?;
    parse_trailer(pack, n, &header, &trailer, &footer, frames_end)
}

/// The size and trailer of the stored pack `pack` at `path`, read without its frames.
pub(crate) fn stored_trailer(
    backend: &dyn Backend,
    n: &Protection,
    pack: &PackId,
    path: &str,
) -> Result<(u64, Vec<PackEntry>)> {
    let size = backend.size(path)?;
    Ok((size, read_trailer_at(pack, n, size, |o, len| backend.read_at(path, o, len))?))
}

/// A file in `packs/` that the index does not know: left by an interrupted run (or, without an
/// id, a file not named like a pack, which nothing of Strata's touches).
pub(crate) struct Unindexed {
    pub path: String,
    pub id: Option<PackId>,
    /// Its size and trailer (not read for a file without an id).
    pub trailer: Result<(u64, Vec<PackEntry>)>,
}

/// Every file in `packs/` whose id `indexed` does not accept, each trailer read once: what both
/// `check` (orphans to report) and `prune` (orphans to prove unneeded) start from.
pub(crate) fn unindexed(
    backend: &dyn Backend,
    n: &Protection,
    indexed: impl Fn(&PackId) -> bool,
) -> Result<Vec<Unindexed>> {
    let mut out = Vec::new();
    for file in paths::pack_files(backend)? {
        let trailer = match &file.id {
            Some(id) if indexed(id) => continue,
            Some(id) => stored_trailer(backend, n, id, &file.path),
            None => Err(Error::CorruptPack { pack: file.path.clone(), reason: "not named like a pack".into() }),
        };
        out.push(Unindexed { path: file.path, id: file.id, trailer });
    }
    Ok(out)
}

/// Reads the trailer of a complete pack file, checking magic numbers, checksum and that every
/// entry lies inside the frame area. Never panics on arbitrary bytes.
pub(crate) fn read_trailer(pack: &PackId, n: &Protection, file: &[u8]) -> Result<Vec<PackEntry>> {
    let corrupt = |reason: &str| Error::CorruptPack { pack: pack.to_string(), reason: reason.to_string() };
    if file.len() < HEADER_LEN + FOOTER_LEN {
        return Err(corrupt("shorter than header and footer"));
    }
    let footer = &file[file.len() - FOOTER_LEN..];
    let count = u32::from_le_bytes(footer[0..4].try_into().map_err(|_| corrupt("footer"))?) as usize;
    let trailer_len = count
        .checked_mul(ENTRY_LEN)
        .and_then(|l| l.checked_add(if n.is_encrypted() { OVERHEAD } else { 0 }))
        .ok_or_else(|| corrupt("entry count overflows"))?;
    let frames_end = (file.len() - FOOTER_LEN).checked_sub(trailer_len).filter(|&e| e >= HEADER_LEN);
    let frames_end = frames_end.ok_or_else(|| corrupt("entry count larger than the file"))?;
    parse_trailer(pack, n, &file[..HEADER_LEN], &file[frames_end..file.len() - FOOTER_LEN], footer, frames_end as u64)
}

/// Checks header, footer and trailer of a pack whose frame area ends at `frames_end`.
fn parse_trailer(
    pack: &PackId,
    n: &Protection,
    header: &[u8],
    trailer: &[u8],
    footer: &[u8],
    frames_end: u64,
) -> Result<Vec<PackEntry>> {
    let corrupt = |reason: &str| Error::CorruptPack { pack: pack.to_string(), reason: reason.to_string() };
    let sealing = if n.is_encrypted() { OVERHEAD } else { 0 };
    if header.len() != HEADER_LEN
        || footer.len() != FOOTER_LEN
        || trailer.len() < sealing
        || (trailer.len() - sealing) % ENTRY_LEN != 0
    {
        return Err(corrupt("truncated"));
    }
    if &header[..8] != HEADER_MAGIC {
        return Err(corrupt("bad header magic"));
    }
    let version = u16::from_le_bytes([header[8], header[9]]);
    if version != PACK_VERSION {
        return Err(corrupt(&format!("unsupported pack version {version}")));
    }
    let flags = u16::from_le_bytes([header[10], header[11]]);
    if flags & FLAG_ENCRYPTED != 0 && !n.is_encrypted() {
        return Err(corrupt(
            "it is encrypted but the repository's config says it is not (a config replaced without the key?)",
        ));
    }
    if flags & FLAG_ENCRYPTED == 0 && n.is_encrypted() {
        return Err(corrupt("it is not encrypted but the repository is (a pack put there without the key)"));
    }
    if &footer[36..44] != FOOTER_MAGIC {
        return Err(corrupt("bad footer magic (truncated?)"));
    }
    if blake3::hash(trailer).as_bytes() != &footer[4..36] {
        return Err(corrupt("trailer checksum mismatch"));
    }
    let opened;
    let trailer = match n.keys() {
        None => trailer,
        Some(k) => {
            let what = || format!("the trailer of pack {pack}");
            opened = k.open(ObjectKind::Trailer, &pack.0, trailer, &what)?;
            &opened[..]
        }
    };
    let mut entries = Vec::with_capacity(trailer.len() / ENTRY_LEN);
    for raw in trailer.chunks_exact(ENTRY_LEN) {
        let e = PackEntry::decode(raw).ok_or_else(|| corrupt("unknown codec in trailer entry"))?;
        let end = e.slot.offset.checked_add(e.slot.stored_len as u64);
        if e.slot.offset < HEADER_LEN as u64 || end.is_none_or(|end| end > frames_end) {
            return Err(corrupt("trailer entry points outside the pack"));
        }
        if e.slot.frame_raw > MAX_FRAME_LEN || e.slot.skip as u64 + e.slot.raw_len as u64 > e.slot.frame_raw as u64 {
            return Err(corrupt("trailer entry lies outside its frame"));
        }
        entries.push(e);
    }
    Ok(entries)
}
