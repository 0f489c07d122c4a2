//! Decoded frames, shared by every read of one reader: each frame is read and decoded once while
//! it stays in the cache, however many chunks and reads use it, also when several threads ask
//! for it at the same moment (the first decodes, the others wait for its result). Bounded by a
//! byte cap; the least recently used frames go first.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use crate::id::PackId;

/// A decoded frame, or why it could not be had.
pub(super) type Frame = std::result::Result<Arc<Decoded>, FrameError>;

/// A chunk's place in a decoded frame and its id: (skip, length, id).
pub(super) type ChunkAt = (u32, u32, crate::id::ChunkId);

/// A frame's decoded bytes, and the chunks in it whose hash was checked already: the bytes
/// never change while the frame lives, so each chunk is hashed once per decode, not once per
/// read (a file reader that reads 4 KiB at a time hashed a 16 KiB chunk four times).
pub(super) struct Decoded {
    pub(super) bytes: Vec<u8>,
    /// (skip, length, id) of the chunks found intact.
    checked: Mutex<Vec<ChunkAt>>,
}

impl Decoded {
    pub(super) fn new(bytes: Vec<u8>) -> Decoded {
        Decoded { bytes, checked: Mutex::default() }
    }

    /// Whether chunk `id` at `skip..skip + len` was found intact in this frame before.
    pub(super) fn was_checked(&self, skip: u32, len: u32, id: &crate::id::ChunkId) -> bool {
        self.checked.lock().unwrap_or_else(|p| p.into_inner()).contains(&(skip, len, *id))
    }

    pub(super) fn mark_checked(&self, skip: u32, len: u32, id: crate::id::ChunkId) {
        self.checked.lock().unwrap_or_else(|p| p.into_inner()).push((skip, len, id));
    }

    /// Hashes those of `chunks` not found intact before with `intact` and records the ones
    /// that are (a damaged one stays unrecorded, and its reader finds out why).
    pub(super) fn check(&self, chunks: &[ChunkAt], intact: impl Fn(u32, u32, crate::id::ChunkId) -> bool) {
        let mut todo: Vec<_> = chunks.iter().filter(|(s, l, id)| !self.was_checked(*s, *l, id)).copied().collect();
        todo.sort_unstable_by_key(|c| (c.0, c.1));
        todo.dedup();
        let good: Vec<_> = todo.into_iter().filter(|&(s, l, id)| intact(s, l, id)).collect();
        self.checked.lock().unwrap_or_else(|p| p.into_inner()).extend(good);
    }
}

/// Why a frame could not be used: its pack could not be read there, or the bytes do not decode.
#[derive(Clone, Debug)]
pub(super) enum FrameError {
    Unreadable(String),
    Undecodable(String),
}

type Key = (PackId, u64);

struct Slot {
    frame: Arc<OnceLock<Frame>>,
    used: u64,
    bytes: u64,
}

#[derive(Default)]
struct Lru {
    slots: HashMap<Key, Slot>,
    order: BTreeMap<u64, Key>,
    clock: u64,
    bytes: u64,
}

/// Decoded frames, bounded by a byte cap (see the module documentation).
pub struct FrameCache {
    cap: u64,
    lru: Mutex<Lru>,
    /// Buffers of evicted frames that nobody used any more, for the next decodes: fresh memory
    /// is slow to touch here, and freeing and allocating megabyte buffers on many threads left
    /// glibc holding twice the cache (a mount's peak RSS was 524 MB with a 256 MiB cache).
    spare: Mutex<Vec<Vec<u8>>>,
}

/// Spare buffers kept at most.
const SPARE: usize = 16;

impl FrameCache {
    pub fn new(cap_bytes: u64) -> FrameCache {
        FrameCache { cap: cap_bytes, lru: Mutex::new(Lru::default()), spare: Mutex::default() }
    }

    /// The frame at `key`, decoded by `load` (into the empty buffer it is given, which may be
    /// reused) unless the cache holds it.
    pub(super) fn get(&self, key: Key, load: impl FnOnce(Vec<u8>) -> Frame) -> Frame {
        let frame = {
            let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
            lru.clock += 1;
            let now = lru.clock;
            let slot = lru.slots.entry(key).or_insert_with(|| Slot { frame: Arc::default(), used: 0, bytes: 0 });
            let (frame, was) = (slot.frame.clone(), std::mem::replace(&mut slot.used, now));
            lru.order.remove(&was);
            lru.order.insert(now, key);
            frame
        };
        let mut loaded = false;
        let out = frame
            .get_or_init(|| {
                loaded = true;
                let buf = self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
                load(buf)
            })
            .clone();
        if loaded {
            self.account(key, out.as_ref().map_or(64, |f| f.bytes.len() as u64));
        }
        out
    }

    /// Whether the frame at `key` is decoded and held (a read of it would not touch storage).
    pub(super) fn holds(&self, key: Key) -> bool {
        let lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        lru.slots.get(&key).is_some_and(|slot| slot.frame.get().is_some())
    }

    /// Counts a newly decoded frame and evicts the least recently used ones above the cap (a
    /// frame in use stays alive for its users; only the cache lets go of it).
    fn account(&self, key: Key, bytes: u64) {
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = lru.slots.get_mut(&key) {
            slot.bytes = bytes;
            lru.bytes += bytes;
        }
        let mut freed = Vec::new();
        while lru.bytes > self.cap && lru.order.len() > 1 {
            let Some((_, oldest)) = lru.order.pop_first() else { break };
            if let Some(slot) = lru.slots.remove(&oldest) {
                lru.bytes -= slot.bytes;
                freed.push(slot.frame);
            }
        }
        drop(lru);
        // A frame still in use by a read is freed by its last user instead.
        let unused = freed.into_iter().filter_map(|f| Arc::try_unwrap(f).ok()?.into_inner()?.ok());
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        for frame in unused.filter_map(|f| Arc::try_unwrap(f).ok()) {
            if spare.len() < SPARE {
                spare.push(frame.bytes);
            }
        }
    }

    pub(crate) fn cap(&self) -> u64 {
        self.cap
    }

    /// Bytes of decoded frames held now.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.lru.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_frame_is_decoded_once_while_cached_and_the_cap_holds() {
        let cache = FrameCache::new(250);
        let decodes = AtomicUsize::new(0);
        let load = |n: u8| {
            decodes.fetch_add(1, Ordering::SeqCst);
            Ok(Arc::new(Decoded::new(vec![n; 100])))
        };
        for _ in 0..3 {
            cache.get((PackId([1; 32]), 0), |_| load(1)).unwrap();
        }
        assert_eq!(decodes.load(Ordering::SeqCst), 1);
        cache.get((PackId([1; 32]), 100), |_| load(2)).unwrap();
        cache.get((PackId([1; 32]), 0), |_| load(1)).unwrap(); // used last: stays
        cache.get((PackId([1; 32]), 200), |_| load(3)).unwrap(); // evicts frame 100
        assert!(cache.bytes() <= 250, "{}", cache.bytes());
        cache.get((PackId([1; 32]), 0), |_| load(1)).unwrap();
        assert_eq!(decodes.load(Ordering::SeqCst), 3);
        cache.get((PackId([1; 32]), 100), |_| load(2)).unwrap();
        assert_eq!(decodes.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn buffers_of_evicted_frames_nobody_holds_are_reused() {
        let cache = FrameCache::new(100);
        let held = cache.get((PackId([1; 32]), 0), |_| Ok(Arc::new(Decoded::new(vec![1; 100])))).unwrap();
        cache.get((PackId([1; 32]), 1), |_| Ok(Arc::new(Decoded::new(vec![2; 100])))).unwrap(); // evicts 0, held
        cache.get((PackId([1; 32]), 2), |_| Ok(Arc::new(Decoded::new(vec![3; 100])))).unwrap(); // evicts 1
        let mut given = Vec::new();
        cache
            .get((PackId([1; 32]), 3), |buf| {
                given.push(buf.capacity());
                Ok(Arc::new(Decoded::new(buf)))
            })
            .unwrap();
        // Frame 1's buffer (nobody held it) came back, emptied; frame 0's is still the reader's.
        assert_eq!(given, [100]);
        assert_eq!(held.bytes.len(), 100);
    }
}
