//! Builds a pack in memory, with no I/O inside: add chunk frames, then `finish` for the bytes.

use super::{Codec, PackEntry, Slot, ENTRY_LEN, FOOTER_MAGIC, HEADER_MAGIC, PACK_VERSION};
use crate::id::{ChunkId, PackId};

pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    pub fn new() -> PackBuilder {
        Self::with_buffer(Vec::new())
    }

    /// A builder that writes into `buf` (cleared; its capacity is kept): reusing the buffer of a
    /// finished pack saves the page faults of a fresh one.
    pub(crate) fn with_buffer(mut buf: Vec<u8>) -> PackBuilder {
        buf.clear();
        // header: magic | version u16 LE | flags u16 LE (0: not encrypted)
        buf.extend_from_slice(HEADER_MAGIC);
        buf.extend_from_slice(&PACK_VERSION.to_le_bytes());
        buf.extend_from_slice(&0u16.to_le_bytes());
        PackBuilder { buf, entries: Vec::new() }
    }

    /// Adds a frame holding one chunk.
    pub fn add(&mut self, id: ChunkId, codec: Codec, raw_len: u32, stored: &[u8]) {
        self.add_frame(codec, stored, &[(id, raw_len)]);
    }

    /// Adds a frame holding `chunks` (id and length), in the order they were put in the frame.
    pub(crate) fn add_frame(&mut self, codec: Codec, stored: &[u8], chunks: &[(ChunkId, u32)]) {
        let offset = self.buf.len() as u64;
        self.buf.extend_from_slice(stored);
        let frame_raw: u32 = chunks.iter().map(|(_, n)| n).sum();
        let mut skip = 0;
        for &(id, raw_len) in chunks {
            let stored_len = stored.len() as u32;
            self.entries.push(PackEntry { id, slot: Slot { offset, stored_len, raw_len, codec, skip, frame_raw } });
            skip += raw_len;
        }
    }

    /// Bytes so far, header and frames.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The chunks added so far, in order.
    pub fn entries(&self) -> &[PackEntry] {
        &self.entries
    }

    /// Appends trailer and footer; returns the pack's id (hash of the file), bytes and entries.
    pub fn finish(mut self) -> (PackId, Vec<u8>, Vec<PackEntry>) {
        let trailer_start = self.buf.len();
        self.buf.reserve(self.entries.len() * ENTRY_LEN + 44);
        for e in &self.entries {
            e.encode(&mut self.buf);
        }
        let sum = blake3::hash(&self.buf[trailer_start..]);
        // footer: entry_count u32 LE | BLAKE3(trailer) | magic
        self.buf.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(sum.as_bytes());
        self.buf.extend_from_slice(FOOTER_MAGIC);
        (PackId::of(&self.buf), self.buf, self.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{compress_chunk, decode_chunk, read_trailer};
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn built_pack_lists_its_chunks_and_decodes() {
        let mut b = PackBuilder::new();
        let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + i as usize]).collect();
        for c in &chunks {
            let id = ChunkId::of(c);
            let (codec, stored) = compress_chunk(id, c, 1).unwrap();
            b.add(id, codec, c.len() as u32, &stored);
        }
        let (pid, bytes, entries) = b.finish();
        assert_eq!(pid, PackId::of(&bytes));
        let read = read_trailer(&pid, &bytes).unwrap();
        assert_eq!(read, entries);
        let at = |o: u64, n: usize| Ok(bytes[o as usize..o as usize + n].to_vec());
        assert_eq!(crate::pack::read_trailer_at(&pid, bytes.len() as u64, at).unwrap(), entries);
        for (e, c) in read.iter().zip(&chunks) {
            let stored = &bytes[e.slot.offset as usize..(e.slot.offset + e.slot.stored_len as u64) as usize];
            assert_eq!(&decode_chunk(e.id, e.slot.codec, stored, e.slot.raw_len).unwrap(), c);
        }
    }

    #[test]
    fn chunks_framed_together_decode_one_by_one_and_damage_hits_the_whole_frame() {
        let chunks: Vec<Vec<u8>> =
            (0..6u8).map(|i| format!("chunk {i} ").repeat(200 + i as usize).into_bytes()).collect();
        let ids: Vec<ChunkId> = chunks.iter().map(|c| ChunkId::of(c)).collect();
        let mut b = PackBuilder::new();
        for group in [0..1, 1..4, 4..6] {
            let frame: Vec<(ChunkId, &[u8])> = group.clone().map(|i| (ids[i], chunks[i].as_slice())).collect();
            let (codec, stored) = crate::pack::compress_frame(&frame, 3).unwrap();
            assert_eq!(codec, Codec::Zstd);
            let lens: Vec<(ChunkId, u32)> = frame.iter().map(|(id, c)| (*id, c.len() as u32)).collect();
            b.add_frame(codec, &stored, &lens);
        }
        let (pid, mut bytes, entries) = b.finish();
        assert_eq!(read_trailer(&pid, &bytes).unwrap(), entries);
        // Three frames; chunks 1..4 share one, at increasing skips.
        assert_eq!(entries.iter().map(|e| e.slot.offset).collect::<HashSet<_>>().len(), 3);
        assert_eq!((entries[2].slot.offset, entries[2].slot.skip), (entries[1].slot.offset, chunks[1].len() as u32));
        let shares: u64 = entries[1..4].iter().map(|e| e.charged()).sum();
        assert!(shares <= entries[1].slot.stored_len as u64 && shares + 3 > entries[1].slot.stored_len as u64);
        let decode = |bytes: &[u8], e: &PackEntry| {
            let stored = &bytes[e.slot.offset as usize..(e.slot.offset + e.slot.stored_len as u64) as usize];
            crate::pack::decode_entry(e.id, e.slot.codec, stored, e.slot.skip, e.slot.raw_len, e.slot.frame_raw)
        };
        for (e, c) in entries.iter().zip(&chunks) {
            assert_eq!(&decode(&bytes, e).unwrap(), c);
        }
        // A flipped byte in the shared frame: all three of its chunks fail, the others decode.
        let mid = (entries[1].slot.offset + entries[1].slot.stored_len as u64 / 2) as usize;
        bytes[mid] ^= 0x40;
        let failed: Vec<bool> = entries.iter().map(|e| decode(&bytes, e).is_err()).collect();
        assert_eq!(failed, [false, true, true, true, false, false]);
    }

    #[test]
    fn truncated_pack_is_reported() {
        let mut b = PackBuilder::new();
        b.add(ChunkId::of(b"x"), Codec::Raw, 1, b"x");
        let (pid, bytes, _) = b.finish();
        for cut in [0, 5, 12, bytes.len() - 1] {
            assert!(read_trailer(&pid, &bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn trailer_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), flip in any::<usize>()) {
            let _ = read_trailer(&PackId([0; 32]), &bytes);
            // Damage a valid pack anywhere: an error or the same entries, never a panic.
            let mut b = PackBuilder::new();
            b.add(ChunkId::of(&bytes), Codec::Raw, bytes.len() as u32, &bytes);
            let (pid, mut valid, _) = b.finish();
            let i = flip % valid.len();
            valid[i] ^= 0x01;
            let _ = read_trailer(&pid, &valid);
        }
    }
}
