//! Other copies of a chunk: when the copy the index names is damaged or gone, another pack may
//! hold the same chunk (a pack of an interrupted run, or one written before the index knew the
//! chunk). Found by reading pack trailers, only on this failure path; trailers are cached.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::crypto::Protection;
use crate::error::Result;
use crate::id::{ChunkId, PackId};
use crate::index::ChunkLoc;
use crate::pack::{decode_entry, stored_trailer, unseal_frame, PackEntry};
use crate::storage::{paths, Backend};

#[derive(Default)]
pub struct Copies {
    trailers: Mutex<Option<HashMap<PackId, Vec<PackEntry>>>>,
}

impl Copies {
    fn load(&self, backend: &dyn Backend, n: &Protection) -> Result<HashMap<PackId, Vec<PackEntry>>> {
        let mut slot = self.trailers.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let mut map = HashMap::new();
            for file in paths::pack_files(backend)? {
                let Some(pack) = file.id else { continue };
                if let Ok((_, entries)) = stored_trailer(backend, n, &pack, &file.path) {
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
        backend: &dyn Backend,
        n: &Protection,
        id: &ChunkId,
        not: Option<&ChunkLoc>,
    ) -> Result<Option<(ChunkLoc, Vec<u8>)>> {
        for (pack, entries) in self.load(backend, n)? {
            for e in entries.iter().filter(|e| e.id == *id) {
                if not.is_some_and(|n| n.is(&pack, e)) {
                    continue;
                }
                let Ok(mut stored) = backend.read_at(&pack.path(), e.slot.offset, e.slot.stored_len as usize) else {
                    continue;
                };
                let Ok(stored) = unseal_frame(n, &pack, &e.slot, &mut stored) else { continue };
                if let Ok(raw) =
                    decode_entry(n, *id, e.slot.codec, stored, e.slot.skip, e.slot.raw_len, e.slot.frame_raw)
                {
                    return Ok(Some((ChunkLoc::of(pack, e), raw)));
                }
            }
        }
        Ok(None)
    }
}
