//! Other copies of a chunk: when the copy the index names is damaged or gone, another pack may
//! hold the same chunk (a pack of an interrupted run, or one written before the index knew the
//! chunk). Found by reading pack trailers, only on this failure path; trailers are cached.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::Result;
use crate::id::{ChunkId, PackId};
use crate::index::ChunkLoc;
use crate::pack::{decode_entry, read_trailer_at, PackEntry};
use crate::repository::Repository;

#[derive(Default)]
pub struct Copies {
    trailers: Mutex<Option<HashMap<PackId, Vec<PackEntry>>>>,
}

impl Copies {
    fn load(&self, repo: &Repository) -> Result<HashMap<PackId, Vec<PackEntry>>> {
        let mut slot = self.trailers.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let mut map = HashMap::new();
            for path in repo.backend().list("packs")? {
                let Some(pack) = path.rsplit('/').next().and_then(PackId::parse) else { continue };
                let entries = repo
                    .backend()
                    .size(&path)
                    .and_then(|size| read_trailer_at(&pack, size, |o, n| repo.backend().read_at(&path, o, n)));
                if let Ok(entries) = entries {
                    map.insert(pack, entries);
                }
            }
            *slot = Some(map);
        }
        Ok(slot.clone().unwrap_or_default())
    }

    /// An intact copy of `id` somewhere other than `not`, verified, with its bytes.
    pub fn intact(
        &self,
        repo: &Repository,
        id: &ChunkId,
        not: Option<&ChunkLoc>,
    ) -> Result<Option<(ChunkLoc, Vec<u8>)>> {
        for (pack, entries) in self.load(repo)? {
            for e in entries.iter().filter(|e| e.id == *id) {
                let loc = ChunkLoc::of(pack, e);
                if not.is_some_and(|n| n.pack == loc.pack && n.offset == loc.offset && n.skip == loc.skip) {
                    continue;
                }
                let Ok(stored) = repo.backend().read_at(&pack.path(), e.offset, e.stored_len as usize) else {
                    continue;
                };
                if let Ok(raw) = decode_entry(*id, e.codec, &stored, e.skip, e.raw_len, e.frame_raw) {
                    return Ok(Some((loc, raw)));
                }
            }
        }
        Ok(None)
    }
}
