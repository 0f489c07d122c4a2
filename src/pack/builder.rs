//! Builds a pack in memory, with no I/O inside: add chunk frames, then `finish` for the bytes.
//! In an encrypted repository each frame is sealed as it is added (in place, in the pack's
//! buffer) and the trailer when the pack is finished; the pack's id is then random, chosen at
//! its first frame, because the frames' associated data names the pack.

use super::{frame_name, Codec, PackEntry, Slot, ENTRY_LEN, FLAG_ENCRYPTED, FOOTER_MAGIC, HEADER_MAGIC, PACK_VERSION};
use crate::crypto::{random_bytes, ObjectKind, Protection, NONCE_LEN};
use crate::error::Result;
use crate::id::{ChunkId, PackId};

pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
    protection: Protection,
    /// An encrypted pack's id, chosen at its first frame.
    id: Option<PackId>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    /// A builder of plain packs (`encryption: none`).
    pub fn new() -> PackBuilder {
        Self::with_buffer(Vec::new(), Protection::none())
    }

    /// A builder that writes into `buf` (cleared; its capacity is kept): reusing the buffer of a
    /// finished pack saves the page faults of a fresh one.
    pub(crate) fn with_buffer(mut buf: Vec<u8>, protection: Protection) -> PackBuilder {
        buf.clear();
        // header: magic | version u16 LE | flags u16 LE (bit 0: encrypted)
        let flags = if protection.is_encrypted() { FLAG_ENCRYPTED } else { 0 };
        buf.extend_from_slice(HEADER_MAGIC);
        buf.extend_from_slice(&PACK_VERSION.to_le_bytes());
        buf.extend_from_slice(&flags.to_le_bytes());
        PackBuilder { buf, entries: Vec::new(), protection, id: None }
    }

    /// Adds a frame holding one chunk.
    pub fn add(&mut self, id: ChunkId, codec: Codec, raw_len: u32, stored: &[u8]) -> Result<()> {
        self.add_frame(codec, stored, &[(id, raw_len)])
    }

    /// Adds a frame holding `chunks` (id and length), in the order they were put in the frame.
    pub(crate) fn add_frame(&mut self, codec: Codec, stored: &[u8], chunks: &[(ChunkId, u32)]) -> Result<()> {
        let offset = self.buf.len() as u64;
        let frame_raw: u32 = chunks.iter().map(|(_, n)| n).sum();
        match self.protection.keys() {
            None => self.buf.extend_from_slice(stored),
            Some(keys) => {
                let pack = match self.id {
                    Some(id) => id,
                    None => {
                        let mut id = [0u8; 32];
                        random_bytes(&mut id)?;
                        *self.id.insert(PackId(id))
                    }
                };
                // nonce | sealed bytes | tag, sealed in place in the pack's buffer
                let start = self.buf.len();
                self.buf.resize(start + NONCE_LEN, 0);
                self.buf.extend_from_slice(stored);
                let (nonce, body) = self.buf[start..].split_at_mut(NONCE_LEN);
                let tag =
                    keys.seal_detached(ObjectKind::Frame, &frame_name(&pack, offset, codec, frame_raw), nonce, body)?;
                self.buf.extend_from_slice(&tag);
            }
        }
        let stored_len = (self.buf.len() as u64 - offset) as u32;
        let mut skip = 0;
        for &(id, raw_len) in chunks {
            self.entries.push(PackEntry { id, slot: Slot { offset, stored_len, raw_len, codec, skip, frame_raw } });
            skip += raw_len;
        }
        Ok(())
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

    /// Appends trailer and footer; returns the pack's id (the hash of the file, or for an
    /// encrypted pack the id chosen at its first frame), bytes and entries.
    pub fn finish(mut self) -> Result<(PackId, Vec<u8>, Vec<PackEntry>)> {
        let trailer_start = self.buf.len();
        self.buf.reserve(self.entries.len() * ENTRY_LEN + 44 + crate::crypto::OVERHEAD);
        for e in &self.entries {
            e.encode(&mut self.buf);
        }
        let id = match (self.protection.keys(), self.id) {
            (Some(keys), Some(id)) => {
                let sealed = keys.seal(ObjectKind::Trailer, &id.0, &self.buf[trailer_start..])?;
                self.buf.truncate(trailer_start);
                self.buf.extend_from_slice(&sealed);
                Some(id)
            }
            _ => None,
        };
        let sum = blake3::hash(&self.buf[trailer_start..]);
        // footer: entry_count u32 LE | BLAKE3(trailer as stored) | magic
        self.buf.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(sum.as_bytes());
        self.buf.extend_from_slice(FOOTER_MAGIC);
        let id = id.unwrap_or_else(|| PackId::of(&self.buf));
        Ok((id, self.buf, self.entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use crate::pack::{compress_chunk, decode_chunk, read_trailer, ChunkError};
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn built_pack_lists_its_chunks_and_decodes() {
        let mut b = PackBuilder::new();
        let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + i as usize]).collect();
        for c in &chunks {
            let id = ChunkId::of(c);
            let (codec, stored) = compress_chunk(id, c, 1).unwrap();
            b.add(id, codec, c.len() as u32, &stored).unwrap();
        }
        let (pid, bytes, entries) = b.finish().unwrap();
        assert_eq!(pid, PackId::of(&bytes));
        let read = read_trailer(&pid, &Protection::none(), &bytes).unwrap();
        assert_eq!(read, entries);
        let at = |o: u64, n: usize| Ok(bytes[o as usize..o as usize + n].to_vec());
        assert_eq!(crate::pack::read_trailer_at(&pid, &Protection::none(), bytes.len() as u64, at).unwrap(), entries);
        for (e, c) in read.iter().zip(&chunks) {
            let stored = &bytes[e.slot.offset as usize..(e.slot.offset + e.slot.stored_len as u64) as usize];
            assert_eq!(&decode_chunk(&Protection::none(), e.id, e.slot.codec, stored, e.slot.raw_len).unwrap(), c);
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
            b.add_frame(codec, &stored, &lens).unwrap();
        }
        let (pid, mut bytes, entries) = b.finish().unwrap();
        assert_eq!(read_trailer(&pid, &Protection::none(), &bytes).unwrap(), entries);
        // Three frames; chunks 1..4 share one, at increasing skips.
        assert_eq!(entries.iter().map(|e| e.slot.offset).collect::<HashSet<_>>().len(), 3);
        assert_eq!((entries[2].slot.offset, entries[2].slot.skip), (entries[1].slot.offset, chunks[1].len() as u32));
        let shares: u64 = entries[1..4].iter().map(|e| e.charged()).sum();
        assert!(shares <= entries[1].slot.stored_len as u64 && shares + 3 > entries[1].slot.stored_len as u64);
        let decode = |bytes: &[u8], e: &PackEntry| {
            let stored = &bytes[e.slot.offset as usize..(e.slot.offset + e.slot.stored_len as u64) as usize];
            crate::pack::decode_entry(
                &Protection::none(),
                e.id,
                e.slot.codec,
                stored,
                e.slot.skip,
                e.slot.raw_len,
                e.slot.frame_raw,
            )
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

    /// An encrypted pack: its chunks decode with the key; its frames and trailer are opaque and
    /// bound to their place; a plain reader, another key or a moved frame is refused.
    #[test]
    fn encrypted_packs_seal_frames_and_trailer_and_bind_them_to_their_place() {
        let keys = Protection::keyed(MasterKey::generate().unwrap().keys());
        let text = b"a line of text that compresses well\n".repeat(400);
        let chunks: Vec<&[u8]> = vec![&text[..5000], &text[5000..9000], &text[9000..]];
        let build = || {
            let mut b = PackBuilder::with_buffer(Vec::new(), keys.clone());
            for c in &chunks {
                let id = keys.chunk_id(c);
                let (codec, stored) = compress_chunk(id, c, 3).unwrap();
                b.add(id, codec, c.len() as u32, &stored).unwrap();
            }
            b.finish().unwrap()
        };
        let (pid, bytes, entries) = build();
        assert_ne!(pid, PackId::of(&bytes), "an encrypted pack's id is chosen, not its hash");
        assert_eq!(u16::from_le_bytes([bytes[10], bytes[11]]), FLAG_ENCRYPTED);
        assert_eq!(read_trailer(&pid, &keys, &bytes).unwrap(), entries);
        let at = |o: u64, n: usize| Ok(bytes[o as usize..o as usize + n].to_vec());
        assert_eq!(crate::pack::read_trailer_at(&pid, &keys, bytes.len() as u64, at).unwrap(), entries);
        // Nothing readable: no chunk id, no plaintext, no zstd magic.
        for e in &entries {
            assert!(!bytes.windows(32).any(|w| w == e.id.0), "a chunk id in the clear");
        }
        assert!(!bytes.windows(16).any(|w| w == &text[..16]));
        assert!(!bytes.windows(4).any(|w| w == [0x28, 0xb5, 0x2f, 0xfd]), "a zstd frame in the clear");
        let decode = |n: &Protection, pack: &PackId, bytes: &[u8], e: &PackEntry| {
            let mut stored =
                bytes[e.slot.offset as usize..(e.slot.offset + e.slot.stored_len as u64) as usize].to_vec();
            let plain = crate::pack::unseal_frame(n, pack, &e.slot, &mut stored)?.to_vec();
            decode_chunk(n, e.id, e.slot.codec, &plain, e.slot.raw_len)
        };
        for (e, c) in entries.iter().zip(&chunks) {
            assert_eq!(&decode(&keys, &pid, &bytes, e).unwrap(), c);
        }
        // A plain reader, another key, another pack id: refused.
        assert!(read_trailer(&pid, &Protection::none(), &bytes).is_err());
        let other = Protection::keyed(MasterKey::generate().unwrap().keys());
        assert!(matches!(read_trailer(&pid, &other, &bytes), Err(crate::error::Error::Decrypt { .. })));
        assert!(read_trailer(&PackId([9; 32]), &keys, &bytes).is_err(), "a pack renamed");
        assert!(decode(&keys, &PackId([9; 32]), &bytes, &entries[0]).is_err());
        // A frame moved into the place of another frame (same length, other pack) is refused.
        let (pid2, bytes2, entries2) = build();
        let (a, b) = (entries[0].slot, entries2[0].slot);
        assert_eq!((a.offset, a.stored_len), (b.offset, b.stored_len));
        let mut swapped = bytes.clone();
        let r = a.offset as usize..(a.offset + a.stored_len as u64) as usize;
        swapped[r.clone()].copy_from_slice(&bytes2[r]);
        assert!(matches!(decode(&keys, &pid, &swapped, &entries[0]), Err(ChunkError::Sealed)));
        assert!(decode(&keys, &pid2, &bytes2, &entries2[0]).is_ok());
        // Any flipped bit of a frame is refused before zstd sees it.
        for i in [a.offset as usize, a.offset as usize + 30, (a.offset + a.stored_len as u64) as usize - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(matches!(decode(&keys, &pid, &bad, &entries[0]), Err(ChunkError::Sealed)));
        }
        // A plain pack in an encrypted repository is refused.
        let mut plain = PackBuilder::new();
        plain.add(ChunkId::of(b"x"), Codec::Raw, 1, b"x").unwrap();
        let (ppid, pbytes, _) = plain.finish().unwrap();
        assert!(read_trailer(&ppid, &keys, &pbytes).is_err());
    }

    /// Check and prune read a whole encrypted pack with a `FrameReader`, which opens each frame
    /// in place in their copy of the file, once: every chunk reads back in any order, the header
    /// is left as it was, and an entry that names an opened frame under another shape (its
    /// associated data would differ) is refused as opening it would refuse it.
    #[test]
    fn frame_reader_opens_encrypted_frames_in_place_once() {
        let keys = Protection::keyed(MasterKey::generate().unwrap().keys());
        let chunks: Vec<Vec<u8>> =
            (0..6u8).map(|i| format!("chunk {i} of a frame ").repeat(150 + i as usize).into_bytes()).collect();
        let ids: Vec<ChunkId> = chunks.iter().map(|c| keys.chunk_id(c)).collect();
        let mut b = PackBuilder::with_buffer(Vec::new(), keys.clone());
        for group in [0..3, 3..4, 4..6] {
            let frame: Vec<(ChunkId, &[u8])> = group.clone().map(|i| (ids[i], chunks[i].as_slice())).collect();
            let (codec, stored) = crate::pack::compress_frame(&frame, 3).unwrap();
            let lens: Vec<(ChunkId, u32)> = frame.iter().map(|(id, c)| (*id, c.len() as u32)).collect();
            b.add_frame(codec, &stored, &lens).unwrap();
        }
        let (pid, bytes, entries) = b.finish().unwrap();
        let header = bytes[..entries[0].slot.offset as usize].to_vec();
        // Trailer order, then back to the first frame after the others were opened.
        let mut file = bytes.clone();
        let mut frames = crate::pack::FrameReader::new(&mut file, &keys, pid);
        for i in [0, 1, 2, 3, 4, 5, 1, 0, 5] {
            assert_eq!(frames.chunk(&entries[i]).unwrap(), chunks[i].as_slice(), "chunk {i}");
        }
        assert_eq!(
            frames.frame_bytes,
            entries[0].slot.stored_len as u64 * 2
                + entries[4].slot.stored_len as u64 * 2
                + entries[3].slot.stored_len as u64
        );
        let mut forged = entries[1];
        forged.slot.frame_raw += 1;
        let mut other = entries[3];
        other.slot.codec = Codec::Raw;
        assert!(matches!(frames.chunk(&forged), Err(ChunkError::Sealed)), "an opened frame under another shape");
        assert!(matches!(frames.chunk(&other), Err(ChunkError::Sealed)));
        assert!(frames.chunk(&entries[3]).is_ok(), "the frame itself still reads");
        assert_eq!(&file[..header.len()], header.as_slice(), "the header is not touched");
        assert_ne!(file, bytes, "the frames were opened in the caller's copy, not in another");
        // A damaged frame: its chunks are refused every time they are asked for, the others read.
        let mut damaged = bytes.clone();
        damaged[entries[3].slot.offset as usize + 30] ^= 1;
        let mut frames = crate::pack::FrameReader::new(&mut damaged, &keys, pid);
        for i in [3, 0, 3, 5] {
            let got = frames.chunk(&entries[i]);
            assert_eq!(got.is_err(), i == 3, "chunk {i}");
        }
    }

    #[test]
    fn truncated_pack_is_reported() {
        let mut b = PackBuilder::new();
        b.add(ChunkId::of(b"x"), Codec::Raw, 1, b"x").unwrap();
        let (pid, bytes, _) = b.finish().unwrap();
        for cut in [0, 5, 12, bytes.len() - 1] {
            assert!(read_trailer(&pid, &Protection::none(), &bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn trailer_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), flip in any::<usize>()) {
            let _ = read_trailer(&PackId([0; 32]), &Protection::none(), &bytes);
            // Damage a valid pack anywhere: an error or the same entries, never a panic.
            let mut b = PackBuilder::new();
            b.add(ChunkId::of(&bytes), Codec::Raw, bytes.len() as u32, &bytes).unwrap();
            let (pid, mut valid, _) = b.finish().unwrap();
            let i = flip % valid.len();
            valid[i] ^= 0x01;
            let _ = read_trailer(&pid, &Protection::none(), &valid);
        }
    }
}
