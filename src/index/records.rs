//! The values the index stores, each with its fixed little-endian codec (docs/FORMAT.md).

use crate::error::{Error, Result};
use crate::id::{ImageId, PackId};
use crate::pack::{PackEntry, Slot};

/// A backup set is named by the id of its first full.
pub type SetId = ImageId;

/// Where one chunk is stored: a pack, and the chunk's slot in it (its frame, and its place in
/// the decoded frame). Encoded as a trailer entry with the pack id in the place of the chunk id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLoc {
    pub pack: PackId,
    pub slot: Slot,
}

pub const LOC_LEN: usize = 32 + crate::pack::SLOT_LEN;

impl ChunkLoc {
    /// The location a pack trailer entry gives.
    pub fn of(pack: PackId, e: &PackEntry) -> ChunkLoc {
        ChunkLoc { pack, slot: e.slot }
    }

    /// Whether `e`, in `pack`, is the copy this location names.
    pub fn is(&self, pack: &PackId, e: &PackEntry) -> bool {
        self.pack == *pack && self.slot.same_place(&e.slot)
    }

    /// The chunk's share of its frame's stored bytes, as the counters charge it.
    pub fn charged(&self) -> u64 {
        self.slot.charged()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(LOC_LEN);
        b.extend_from_slice(&self.pack.0);
        self.slot.encode(&mut b);
        b
    }

    pub fn decode(b: &[u8]) -> Option<ChunkLoc> {
        if b.len() != LOC_LEN {
            return None;
        }
        Some(ChunkLoc { pack: PackId(b[0..32].try_into().ok()?), slot: Slot::decode(&b[32..])? })
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
    pub(crate) fn encode(&self) -> [u8; 24] {
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

/// What a backup set costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetCounters {
    /// Stored (compressed) bytes of the distinct chunks the set references.
    pub stored_bytes: u64,
    /// Of those, the bytes of chunks no other set references: what forgetting the set frees.
    pub exclusive_bytes: u64,
    pub raw_bytes: u64,
    pub chunks: u64,
}

impl SetCounters {
    pub(super) fn encode(&self) -> Vec<u8> {
        le_bytes(&[self.stored_bytes, self.exclusive_bytes, self.raw_bytes, self.chunks])
    }

    pub(super) fn decode(b: &[u8]) -> Result<SetCounters> {
        let v = le_u64s::<4>(b).ok_or_else(|| corrupt("set counters"))?;
        Ok(SetCounters { stored_bytes: v[0], exclusive_bytes: v[1], raw_bytes: v[2], chunks: v[3] })
    }
}

/// Chunks that some image references.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub live_chunks: u64,
    pub live_raw: u64,
    pub live_stored: u64,
}

impl Totals {
    pub(super) fn encode(&self) -> Vec<u8> {
        le_bytes(&[self.live_chunks, self.live_raw, self.live_stored])
    }

    pub(super) fn decode(b: &[u8]) -> Result<Totals> {
        let v = le_u64s::<3>(b).ok_or_else(|| corrupt("totals"))?;
        Ok(Totals { live_chunks: v[0], live_raw: v[1], live_stored: v[2] })
    }
}

/// The sets that reference a chunk, each with its reference count.
pub type Owners = Vec<(SetId, u32)>;

pub(super) fn encode_owners(o: &[(SetId, u32)]) -> Vec<u8> {
    o.iter().flat_map(|(s, n)| s.0.iter().copied().chain(n.to_le_bytes())).collect()
}

pub(super) fn decode_owners(b: &[u8]) -> Result<Owners> {
    if b.len() % 20 != 0 {
        return Err(corrupt("owner record"));
    }
    b.chunks_exact(20)
        .map(|c| {
            let set = c[0..16].try_into().map(ImageId);
            let n = c[16..20].try_into().map(u32::from_le_bytes);
            set.and_then(|s| n.map(|n| (s, n))).map_err(|_| corrupt("owner record"))
        })
        .collect()
}

fn le_bytes(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn le_u64s<const N: usize>(b: &[u8]) -> Option<[u64; N]> {
    if b.len() != N * 8 {
        return None;
    }
    let mut out = [0u64; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().ok()?);
    }
    Some(out)
}

pub(super) fn corrupt(what: &str) -> Error {
    Error::Index { reason: format!("{what} does not decode; run the next writer to rebuild the counters") }
}
