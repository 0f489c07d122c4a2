//! The index: chunk id → where the chunk is stored, plus the image catalog. It is an accelerator
//! rebuilt from packs and manifests; losing it loses no backup.
//!
//! Keys and values (docs/FORMAT.md, "Index", index version 3):
//! ```text
//! "c" ++ chunk id [32]  → pack id [32] | offset u64 LE | stored_len u32 LE | raw_len u32 LE | codec u8 |
//!                          skip u32 LE | frame_raw u32 LE   (the frame, and the chunk inside it)
//! "p" ++ pack id [32]   → pack size u64 | chunk count u32 | dead bytes u64 | dead chunks u32
//! "i" ++ image id [16]  → ImageInfo (bincode, as in the manifest footer)
//! "o" ++ chunk id [32]  → owners: n × (set id [16] | reference count u32)
//! "d" ++ chunk id [32]  → empty: the chunk is referenced by no image (prune's candidates)
//! "S" ++ set id [16]    → stored bytes u64 | exclusive bytes u64 | raw bytes u64 | chunks u64
//! "T"                   → live chunks u64 | live raw bytes u64 | live stored bytes u64
//! "x"                   → journal: present while an operation may have left counters stale
//! "C"                   → empty: the index is complete (init; last batch of rebuild-index)
//! "G"                   → generation u64 LE of the last writing command that finished
//! "v"                   → index version u32 LE
//! ```

mod rocks;

pub use rocks::{chunk_key, headroom_for, image_key, pack_key, put_image, Batch, RocksIndex, WRITE_BUFFER};

use crate::error::Result;
use crate::id::{ChunkId, PackId};
use crate::pack::{Codec, PackEntry};

/// Where one chunk is stored: its frame in a pack, and its place in the decoded frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLoc {
    pub pack: PackId,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
    pub skip: u32,
    pub frame_raw: u32,
}

pub const LOC_LEN: usize = 57;

impl ChunkLoc {
    /// The location a pack trailer entry gives.
    pub fn of(pack: PackId, e: &PackEntry) -> ChunkLoc {
        ChunkLoc {
            pack,
            offset: e.offset,
            stored_len: e.stored_len,
            raw_len: e.raw_len,
            codec: e.codec,
            skip: e.skip,
            frame_raw: e.frame_raw,
        }
    }

    /// The chunk's share of its frame's stored bytes, as the counters charge it.
    pub fn charged(&self) -> u64 {
        crate::pack::charged(self.stored_len, self.raw_len, self.frame_raw)
    }

    pub fn encode(&self) -> [u8; LOC_LEN] {
        let mut b = [0u8; LOC_LEN];
        b[0..32].copy_from_slice(&self.pack.0);
        b[32..40].copy_from_slice(&self.offset.to_le_bytes());
        b[40..44].copy_from_slice(&self.stored_len.to_le_bytes());
        b[44..48].copy_from_slice(&self.raw_len.to_le_bytes());
        b[48] = self.codec as u8;
        b[49..53].copy_from_slice(&self.skip.to_le_bytes());
        b[53..57].copy_from_slice(&self.frame_raw.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<ChunkLoc> {
        if b.len() != LOC_LEN {
            return None;
        }
        Some(ChunkLoc {
            pack: PackId(b[0..32].try_into().ok()?),
            offset: u64::from_le_bytes(b[32..40].try_into().ok()?),
            stored_len: u32::from_le_bytes(b[40..44].try_into().ok()?),
            raw_len: u32::from_le_bytes(b[44..48].try_into().ok()?),
            codec: Codec::from_u8(b[48])?,
            skip: u32::from_le_bytes(b[49..53].try_into().ok()?),
            frame_raw: u32::from_le_bytes(b[53..57].try_into().ok()?),
        })
    }
}

/// What the index knows of a pack: its size, chunks, and how much of it no image needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackRecord {
    pub size: u64,
    pub chunks: u32,
    pub dead_bytes: u64,
    pub dead_chunks: u32,
}

impl PackRecord {
    pub fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..12].copy_from_slice(&self.chunks.to_le_bytes());
        b[12..20].copy_from_slice(&self.dead_bytes.to_le_bytes());
        b[20..24].copy_from_slice(&self.dead_chunks.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<PackRecord> {
        if b.len() != 24 {
            return None;
        }
        Some(PackRecord {
            size: u64::from_le_bytes(b[0..8].try_into().ok()?),
            chunks: u32::from_le_bytes(b[8..12].try_into().ok()?),
            dead_bytes: u64::from_le_bytes(b[12..20].try_into().ok()?),
            dead_chunks: u32::from_le_bytes(b[20..24].try_into().ok()?),
        })
    }
}

/// The narrow view that backup (dedup) and restore need of the index.
pub trait ChunkLookup: Sync {
    /// Locations of `ids`, in order; `None` for a chunk the index does not know.
    fn locate(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkLoc>>>;
}
