//! How one chunk is stored inside a pack: zstd-compressed, or raw when compression does not help.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;

use super::{frame_name, PackEntry, Slot};
use crate::crypto::{ObjectKind, Protection};
use crate::error::{Error, Result};
use crate::id::{ChunkId, PackId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

impl Codec {
    pub(crate) fn from_u8(b: u8) -> Option<Codec> {
        match b {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

thread_local! {
    // One context per thread, reused across chunks: up to 2x faster than a context per chunk.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    // The chunks of a frame, concatenated: reused, so a frame costs no fresh pages.
    static FRAME_INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static VERIFY_OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Buffers of compressed frames, handed back by whoever added them to a pack (`recycle_frame`).
/// A fresh buffer of about 1 MiB per frame cost a page fault per 4 KiB whenever the allocator
/// had given its pages back to the kernel: half of a full's page faults.
static SPARE_OUTPUTS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// At most this many spare buffers are kept (a few groups of frames in flight).
const SPARE_KEPT: usize = 32;

fn spare_output(capacity: usize) -> Vec<u8> {
    let mut out = SPARE_OUTPUTS.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
    out.clear();
    out.reserve(capacity);
    out
}

/// Gives back the buffer of a frame returned by `compress_frame` once its bytes are in a pack,
/// for the next frame.
pub fn recycle_frame(buf: Vec<u8>) {
    let mut spare = SPARE_OUTPUTS.lock().unwrap_or_else(|p| p.into_inner());
    if spare.len() < SPARE_KEPT {
        spare.push(buf);
    }
}

/// Compresses one chunk as a frame of its own (see `compress_frame`).
pub fn compress_chunk(id: ChunkId, raw: &[u8], level: i32) -> Result<(Codec, Vec<u8>)> {
    compress_frame(&[(id, raw)], level)
}

/// Compresses consecutive chunks together as one frame at `level` (zstd sees more than one small
/// chunk, which compresses better), falls back to raw storage when that is not smaller, and
/// verifies the frame by decoding it and comparing with the input before anyone may store it.
/// The chunks were hashed to their ids, so equal bytes prove the frame as well as re-hashing would.
pub fn compress_frame(chunks: &[(ChunkId, &[u8])], level: i32) -> Result<(Codec, Vec<u8>)> {
    let first = chunks.first().map(|(id, _)| *id);
    FRAME_INPUT.with(|cell| {
        let mut input = cell.borrow_mut();
        input.clear();
        for (_, c) in chunks {
            input.extend_from_slice(c);
        }
        compress_input(&input, first, level)
    })
}

/// `first` names the frame in an error: the id of its first chunk.
fn compress_input(raw: &[u8], first: Option<ChunkId>, level: i32) -> Result<(Codec, Vec<u8>)> {
    let mut out = spare_output(zstd::zstd_safe::compress_bound(raw.len()));
    let compressed = COMPRESSOR.with(|cell| -> std::io::Result<usize> {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, c) = slot.as_mut().ok_or_else(|| std::io::Error::other("no compressor"))?;
        c.compress_to_buffer(raw, &mut out)
    });
    let (codec, mut stored) = match compressed {
        Ok(n) if n < raw.len() => (Codec::Zstd, out),
        _ => {
            out.clear();
            out.extend_from_slice(raw);
            (Codec::Raw, out)
        }
    };
    if crate::failpoint::fails!("corrupt-frame") && codec == Codec::Zstd {
        let last = stored.len() - 1;
        stored[last] ^= 0x55; // as a bit flip in memory or a compressor bug would
    }
    if codec == Codec::Zstd {
        // Decoded into a reused buffer: a fresh one per frame would cost a page fault per 4 KiB.
        let same = VERIFY_OUTPUT.with(|cell| -> std::result::Result<bool, String> {
            let mut out = cell.borrow_mut();
            out.clear();
            out.reserve(raw.len());
            with_decompressor(|d| d.decompress_to_buffer(&stored, &mut *out)).map_err(|e| e.to_string())?;
            Ok(out.as_slice() == raw)
        });
        let failed =
            |reason: String| Error::VerifyFailed { id: first.map(|id| id.to_string()).unwrap_or_default(), reason };
        match same {
            Ok(true) => {}
            Ok(false) => return Err(failed("decoded bytes differ from the input".into())),
            Err(reason) => return Err(failed(reason)),
        }
    }
    Ok((codec, stored))
}

/// Decodes a frame stored on its own and checks it against the chunk id (a frame of one chunk).
pub fn decode_chunk(
    n: &Protection,
    id: ChunkId,
    codec: Codec,
    stored: &[u8],
    raw_len: u32,
) -> Result<Vec<u8>, ChunkError> {
    decode_entry(n, id, codec, stored, 0, raw_len, raw_len)
}

/// Decodes the frame a chunk lies in and returns the chunk, checked against its id.
pub fn decode_entry(
    n: &Protection,
    id: ChunkId,
    codec: Codec,
    stored: &[u8],
    skip: u32,
    raw_len: u32,
    frame_raw: u32,
) -> Result<Vec<u8>, ChunkError> {
    let frame = decode_frame(codec, stored, frame_raw)?;
    chunk_of_frame(n, id, &frame, skip, raw_len).map(<[u8]>::to_vec)
}

/// Finds one chunk in a decoded frame and checks it against its id (no copy: callers that keep
/// it copy it, those that only verify do not).
pub fn chunk_of_frame<'f>(
    n: &Protection,
    id: ChunkId,
    frame: &'f [u8],
    skip: u32,
    raw_len: u32,
) -> Result<&'f [u8], ChunkError> {
    if raw_len > MAX_CHUNK_LEN {
        return Err(ChunkError::TooLarge(raw_len));
    }
    let end = skip as usize + raw_len as usize;
    let raw = frame.get(skip as usize..end).ok_or(ChunkError::Length { expected: end as u32, found: frame.len() })?;
    if n.chunk_id(raw) != id {
        return Err(ChunkError::Hash);
    }
    Ok(raw)
}

/// Reads the chunks of a whole pack file in trailer order, decoding each frame once however
/// many of its chunks follow one another (check, prune). An encrypted frame is opened in place
/// in the caller's copy of the pack (which is why it is lent mutably): no second copy of the
/// stored bytes. The file's bytes outside the frames (header, trailer) are left as they were.
pub struct FrameReader<'a> {
    file: &'a mut [u8],
    naming: &'a Protection,
    pack: PackId,
    /// The encrypted frames opened so far, by offset: the shape they were opened as and where
    /// their plaintext now lies in `file`, or why they did not open (their bytes are then
    /// undefined). A frame is opened once; a second entry at the same offset with another
    /// shape gets what opening it under that shape would have given: refused.
    opened: HashMap<u64, (FrameShape, Result<Range<usize>, ChunkError>)>,
    /// The frame decoded last: its offset and shape, and its bytes or why it does not decode.
    last: Option<((u64, FrameShape), DecodedFrame)>,
    /// Stored bytes of the frames decoded so far.
    pub frame_bytes: u64,
}

/// What an encrypted frame is opened as (its associated data names the offset, codec and
/// decoded length; the stored length places its tag).
type FrameShape = (u32, Codec, u32);

/// A frame's decoded bytes, or why it does not decode.
type DecodedFrame = std::result::Result<Vec<u8>, ChunkError>;

impl<'a> FrameReader<'a> {
    /// `file` is the whole pack, whose trailer has been checked (`read_trailer`), so every
    /// entry's frame lies inside it. Encrypted frames are opened in it, in place.
    pub fn new(file: &'a mut [u8], naming: &'a Protection, pack: PackId) -> Self {
        FrameReader { file, naming, pack, opened: HashMap::new(), last: None, frame_bytes: 0 }
    }

    /// The chunk `e` names, checked against its id.
    pub fn chunk(&mut self, e: &PackEntry) -> std::result::Result<&[u8], ChunkError> {
        let frame = (e.slot.offset, (e.slot.stored_len, e.slot.codec, e.slot.frame_raw));
        if self.last.as_ref().is_none_or(|(last, _)| *last != frame) {
            let at = e.slot.offset as usize..(e.slot.offset + e.slot.stored_len as u64) as usize;
            let decoded = if self.naming.is_encrypted() {
                self.open(&e.slot, at).and_then(|plain| decode_frame(e.slot.codec, &self.file[plain], e.slot.frame_raw))
            } else {
                decode_frame(e.slot.codec, &self.file[at], e.slot.frame_raw)
            };
            self.last = Some((frame, decoded));
            self.frame_bytes += e.slot.stored_len as u64;
        }
        match self.last.as_ref().map(|(_, f)| f) {
            Some(Ok(frame)) => chunk_of_frame(self.naming, e.id, frame, e.slot.skip, e.slot.raw_len),
            Some(Err(why)) => Err(why.clone()),
            None => Err(ChunkError::Decompress("no frame".into())),
        }
    }

    /// Opens the encrypted frame at `at` (once) and returns where its plaintext lies in the file.
    fn open(&mut self, slot: &Slot, at: Range<usize>) -> Result<Range<usize>, ChunkError> {
        let shape: FrameShape = (slot.stored_len, slot.codec, slot.frame_raw);
        if let Some((opened_as, plain)) = self.opened.get(&slot.offset) {
            return if *opened_as == shape { plain.clone() } else { Err(ChunkError::Sealed) };
        }
        let start = at.start + crate::crypto::NONCE_LEN;
        let plain = unseal_frame(self.naming, &self.pack, slot, &mut self.file[at]).map(|p| start..start + p.len());
        self.opened.insert(slot.offset, (shape, plain.clone()));
        plain
    }
}

/// The bytes to decode of a stored frame: itself in a plain repository; in an encrypted one,
/// opened in place (it must authenticate as the frame of `pack` at `slot`'s place and shape).
pub fn unseal_frame<'s>(
    n: &Protection,
    pack: &PackId,
    slot: &Slot,
    stored: &'s mut [u8],
) -> Result<&'s [u8], ChunkError> {
    match n.keys() {
        None => Ok(stored),
        Some(keys) => {
            let name = frame_name(pack, slot.offset, slot.codec, slot.frame_raw);
            let what = String::new;
            keys.open_in_place(ObjectKind::Frame, &name, stored, &what).map(|p| &*p).map_err(|_| ChunkError::Sealed)
        }
    }
}

/// Runs `f` with this thread's zstd decompression context, made on first use.
fn with_decompressor<T>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        let d = slot.as_mut().ok_or_else(|| std::io::Error::other("no decompressor"))?;
        f(d)
    })
}

/// Decodes one stored frame to exactly `frame_raw` bytes. Bounded: never allocates more than
/// that, a recorded length above any frame is damage, and a frame that decodes to another length
/// is an error.
pub fn decode_frame(codec: Codec, stored: &[u8], frame_raw: u32) -> Result<Vec<u8>, ChunkError> {
    let mut raw = Vec::new();
    decode_frame_into(codec, stored, frame_raw, &mut raw)?;
    Ok(raw)
}

/// `decode_frame` into `raw`, whose allocation is reused (it holds the frame's bytes after, and
/// nothing else).
pub fn decode_frame_into(codec: Codec, stored: &[u8], frame_raw: u32, raw: &mut Vec<u8>) -> Result<(), ChunkError> {
    if frame_raw > MAX_FRAME_LEN {
        return Err(ChunkError::TooLarge(frame_raw));
    }
    raw.clear();
    match codec {
        Codec::Raw => raw.extend_from_slice(stored),
        Codec::Zstd => {
            // Never more than the frame's recorded length (plus what a reused buffer has spare,
            // at most one largest frame): the length check below refuses anything else.
            raw.reserve(frame_raw as usize);
            with_decompressor(|d| d.decompress_to_buffer(stored, raw))
                .map_err(|e| ChunkError::Decompress(e.to_string()))?;
        }
    }
    if raw.len() != frame_raw as usize {
        return Err(ChunkError::Length { expected: frame_raw, found: raw.len() });
    }
    Ok(())
}

/// Backup closes a frame once its chunks reach this many bytes (before compression): 1 MiB
/// (about 64 chunks) saved 11 % over one frame per chunk on the reference workload at the same
/// speed, 256 KiB 8 % (docs/BENCHMARKS.md, compression study), while a restore that needs one
/// chunk of a frame decodes at most this much more.
pub const FRAME_TARGET: usize = 1024 * 1024;

/// No frame decodes to more than this: a full frame plus one largest chunk.
pub const MAX_FRAME_LEN: u32 = FRAME_TARGET as u32 + MAX_CHUNK_LEN;

/// No chunk is larger than FastCDC's largest maximum size; a recorded length above it is damage.
pub const MAX_CHUNK_LEN: u32 = fastcdc::v2020::MAXIMUM_MAX;

#[derive(Clone, Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("recorded length {0} is larger than any chunk or frame")]
    TooLarge(u32),
    #[error("zstd frame does not decode: {0}")]
    Decompress(String),
    #[error("decoded length {found} differs from the recorded {expected}")]
    Length { expected: u32, found: usize },
    #[error("content does not match its id")]
    Hash,
    #[error("the sealed frame does not open: changed, moved from another place, or sealed with another key")]
    Sealed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_chunks_are_zstd_random_ones_raw() {
        let text = b"hello strata ".repeat(1000);
        let id = ChunkId::of(&text);
        let (codec, stored) = compress_chunk(id, &text, 3).unwrap();
        assert_eq!(codec, Codec::Zstd);
        assert!(stored.len() < text.len() / 10);
        assert_eq!(decode_chunk(&Protection::none(), id, codec, &stored, text.len() as u32).unwrap(), text);

        // xorshift64* bytes: zstd cannot shrink them, so the chunk must be stored raw, as is.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let random: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect();
        let rid = ChunkId::of(&random);
        let (codec, stored) = compress_chunk(rid, &random, 3).unwrap();
        assert_eq!(codec, Codec::Raw);
        assert_eq!(stored, random);
        assert_eq!(decode_chunk(&Protection::none(), rid, codec, &stored, random.len() as u32).unwrap(), random);
    }

    #[test]
    fn damaged_frames_are_errors_not_panics() {
        let text = b"abcabcabc".repeat(500);
        let id = ChunkId::of(&text);
        let (_, mut stored) = compress_chunk(id, &text, 3).unwrap();
        assert!(decode_chunk(&Protection::none(), id, Codec::Zstd, &stored, 10).is_err(), "length lie");
        assert!(matches!(
            decode_chunk(&Protection::none(), id, Codec::Zstd, &stored, u32::MAX),
            Err(ChunkError::TooLarge(_))
        ));
        let mid = stored.len() / 2;
        stored[mid] ^= 0x40;
        assert!(decode_chunk(&Protection::none(), id, Codec::Zstd, &stored, text.len() as u32).is_err());
        assert!(decode_chunk(&Protection::none(), id, Codec::Zstd, &[], 100).is_err());
    }
}
