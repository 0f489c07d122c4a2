//! What a check knows of every referenced chunk: which images reference it and where the index
//! places it. A check holds every referenced chunk of the repository at once, so this is arrays
//! sorted by chunk id, not a map: about 80 bytes a chunk, allocated once at their final size. A
//! hash map of the same facts cost 300 bytes a chunk and, while it grew, briefly half as much
//! again (a 64 GiB disk's 1.24 million chunks took `check` past 512 MiB; docs/BENCHMARKS.md,
//! "A big disk").

use crate::id::{ChunkId, ImageId, PackId};
use crate::index::ChunkLoc;
use crate::pack::Slot;

/// A chunk's place in the table (its rank among the referenced chunks' ids).
pub(super) type ChunkIdx = u32;

#[derive(Default)]
pub(super) struct ChunkTable {
    /// Every referenced chunk, sorted, distinct.
    ids: Vec<ChunkId>,
    /// The images referencing chunk `i` are `refs[refs_start[i]..refs_start[i + 1]]`.
    refs_start: Vec<u32>,
    /// Positions in `images`.
    refs: Vec<u32>,
    images: Vec<ImageId>,
    /// Where the index places chunk `i` (`pack` is a position in `packs`).
    locs: Vec<Option<(u32, Slot)>>,
    packs: Vec<PackId>,
}

/// Collects who references what, then becomes a `ChunkTable`.
#[derive(Default)]
pub(super) struct References {
    images: Vec<ImageId>,
    /// (chunk, position of the image in `images`): one per chunk extent, dropped by `build`.
    pairs: Vec<(ChunkId, u32)>,
}

impl References {
    /// Room for `extents` references (the catalog's extent counts), so that the list does not
    /// double its memory while it grows.
    pub(super) fn with_capacity(extents: usize) -> References {
        References { images: Vec::new(), pairs: Vec::with_capacity(extents) }
    }

    /// Records the chunks of one image; the chunks of an image that did not read whole are
    /// still recorded (they are referenced as far as anyone can tell).
    pub(super) fn image(&mut self, image: ImageId) -> ImageRefs<'_> {
        self.images.push(image);
        let at = (self.images.len() - 1) as u32;
        ImageRefs { refs: self, at }
    }

    pub(super) fn build(self) -> ChunkTable {
        let References { images, mut pairs } = self;
        pairs.sort_unstable();
        pairs.dedup();
        let mut ids: Vec<ChunkId> = Vec::new();
        let mut refs_start = Vec::new();
        let mut refs = Vec::with_capacity(pairs.len());
        for (id, image) in &pairs {
            if ids.last() != Some(id) {
                ids.push(*id);
                refs_start.push(refs.len() as u32);
            }
            refs.push(*image);
        }
        drop(pairs);
        refs_start.push(refs.len() as u32);
        ids.shrink_to_fit();
        refs_start.shrink_to_fit();
        let locs = vec![None; ids.len()];
        ChunkTable { ids, refs_start, refs, images, locs, packs: Vec::new() }
    }
}

pub(super) struct ImageRefs<'r> {
    refs: &'r mut References,
    at: u32,
}

impl ImageRefs<'_> {
    pub(super) fn chunk(&mut self, id: ChunkId) {
        self.refs.pairs.push((id, self.at));
    }
}

impl ChunkTable {
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(super) fn ids(&self) -> &[ChunkId] {
        &self.ids
    }

    pub(super) fn id(&self, i: ChunkIdx) -> ChunkId {
        self.ids[i as usize]
    }

    pub(super) fn find(&self, id: &ChunkId) -> Option<ChunkIdx> {
        self.ids.binary_search(id).ok().map(|i| i as ChunkIdx)
    }

    pub(super) fn contains(&self, id: &ChunkId) -> bool {
        self.find(id).is_some()
    }

    /// The images that reference chunk `i`.
    pub(super) fn images_of(&self, i: ChunkIdx) -> impl Iterator<Item = ImageId> + '_ {
        let (a, b) = (self.refs_start[i as usize], self.refs_start[i as usize + 1]);
        self.refs[a as usize..b as usize].iter().map(|&at| self.images[at as usize])
    }

    /// The images that reference `id` (none when no manifest does).
    pub(super) fn images_of_id(&self, id: &ChunkId) -> Vec<ImageId> {
        self.find(id).map(|i| self.images_of(i).collect()).unwrap_or_default()
    }

    pub(super) fn loc_at(&self, i: ChunkIdx) -> Option<ChunkLoc> {
        self.locs[i as usize].map(|(p, slot)| ChunkLoc { pack: self.packs[p as usize], slot })
    }

    /// Where the index places `id`, if the manifests reference it and the index has it.
    pub(super) fn loc(&self, id: &ChunkId) -> Option<ChunkLoc> {
        self.find(id).and_then(|i| self.loc_at(i))
    }

    /// Records where the index places chunk `i`; `pack_at` is the position of its pack, kept by
    /// the caller (`pack_position`).
    pub(super) fn set_loc(&mut self, i: ChunkIdx, pack_at: u32, slot: Slot) {
        self.locs[i as usize] = Some((pack_at, slot));
    }

    /// The position of `pack` among the packs of the locations (added when new).
    pub(super) fn pack_position(&mut self, pack: PackId, known: &mut std::collections::HashMap<PackId, u32>) -> u32 {
        *known.entry(pack).or_insert_with(|| {
            self.packs.push(pack);
            (self.packs.len() - 1) as u32
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    #[test]
    fn the_table_lists_each_chunk_once_with_its_images_and_its_place() {
        let (a, b) = (ImageId([1; 16]), ImageId([2; 16]));
        let mut refs = References::with_capacity(8);
        let mut r = refs.image(a);
        r.chunk(c(9));
        r.chunk(c(3));
        r.chunk(c(9));
        let mut r = refs.image(b);
        r.chunk(c(3));
        let mut t = refs.build();
        assert_eq!(t.ids(), &[c(3), c(9)]);
        assert_eq!(t.images_of(t.find(&c(3)).unwrap()).collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(t.images_of_id(&c(9)), vec![a]);
        assert!(t.images_of_id(&c(4)).is_empty());
        assert_eq!(t.loc(&c(3)), None);
        let slot =
            Slot { offset: 12, stored_len: 5, raw_len: 7, codec: crate::pack::Codec::Raw, skip: 0, frame_raw: 7 };
        let mut known = std::collections::HashMap::new();
        let p = t.pack_position(PackId([5; 32]), &mut known);
        assert_eq!(t.pack_position(PackId([5; 32]), &mut known), p);
        t.set_loc(1, p, slot);
        assert_eq!(t.loc(&c(9)), Some(ChunkLoc { pack: PackId([5; 32]), slot }));
        assert_eq!(t.len(), 2);
    }
}
