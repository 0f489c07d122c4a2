//! Extents: the unit a manifest lists, a run of the disk that is either zeros or (part of) a chunk.

use crate::id::ChunkId;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Content {
    /// A hole or a run of zero bytes: never hashed, never stored.
    Zero,
    /// Blocks the filesystem's allocation map called free when the image was made: never read,
    /// never stored, restored as zeros (used-block imaging, docs/FORMAT.md).
    Unused,
    /// Bytes `skip .. skip + len` of the chunk `id`. Backups always write whole chunks
    /// (`skip == 0`, `len` = chunk length); chain resolution can clip a chunk that a later
    /// image partly overwrote.
    Chunk { id: ChunkId, skip: u32 },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub content: Content,
}

impl Extent {
    pub fn zero(offset: u64, len: u64) -> Extent {
        Extent { offset, len, content: Content::Zero }
    }

    pub fn unused(offset: u64, len: u64) -> Extent {
        Extent { offset, len, content: Content::Unused }
    }

    pub fn chunk(offset: u64, len: u64, id: ChunkId) -> Extent {
        Extent { offset, len, content: Content::Chunk { id, skip: 0 } }
    }

    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    pub fn is_zero(&self) -> bool {
        matches!(self.content, Content::Zero)
    }

    pub fn is_unused(&self) -> bool {
        matches!(self.content, Content::Unused)
    }

    /// The part of this extent inside `[from, to)`; the caller guarantees the ranges overlap.
    pub(crate) fn slice(&self, from: u64, to: u64) -> Extent {
        let start = from.max(self.offset);
        let end = to.min(self.end());
        debug_assert!(start < end, "slice outside the extent");
        let content = match self.content {
            Content::Zero => Content::Zero,
            Content::Unused => Content::Unused,
            // The clipped length of a chunk extent is below the chunk length, a u32.
            Content::Chunk { id, skip } => Content::Chunk { id, skip: skip + (start - self.offset) as u32 },
        };
        Extent { offset: start, len: end - start, content }
    }
}

/// Appends `e` to `out`, merging it into the previous extent when both are zeros (or both
/// unused) and adjacent.
pub(crate) fn push_coalesced(out: &mut Vec<Extent>, e: Extent) {
    if let Some(last) = out.last_mut() {
        let alike = (last.is_zero() && e.is_zero()) || (last.is_unused() && e.is_unused());
        if alike && last.end() == e.offset {
            last.len += e.len;
            return;
        }
    }
    out.push(e);
}
