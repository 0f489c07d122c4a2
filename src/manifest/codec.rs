//! Manifest encoding, streamed in both directions so memory never grows with the disk.
//!
//! Layout (docs/FORMAT.md, "Manifest file", version 3; versions 1 and 2 are read too):
//! ```text
//! header   magic "STRATAIM" (8) | version u16 LE = 3 | flags u16 LE = 0 (reserved: encryption)
//! records  sorted by offset, disjoint:
//!            0x00 zero   | offset u64 LE | len u64 LE                            (17 bytes)
//!            0x01 chunk  | offset u64 LE | len u32 LE | skip u32 LE | id [32]     (49 bytes)
//!            0x02 unused | offset u64 LE | len u64 LE                 (17 bytes, version 2)
//! segments (version 2) the fingerprint of every segment of the disk, in order: [32] each
//! footer   info (bincode, see FORMAT.md) | info_len u32 LE | [segment_count u32 LE, version 2]
//!          | extent_count u64 LE | BLAKE3 of every preceding byte [32] | magic "STRATAIE" (8)
//! ```

use std::io::{Read, Write};

use super::extent::{Content, Extent};
use super::ImageInfo;
use crate::error::{Error, Result};
use crate::id::{ChunkId, ImageId};
use crate::pack::MAX_CHUNK_LEN;
use crate::storage::{paths, Backend, ObjectWriter};

pub(crate) const MANIFEST_VERSION: u16 = 3;
/// Version 2 manifests are version 3 without `generation` and `base_generation` in their info
/// (its last two fields, 16 bytes: decoded as 0).
const MANIFEST_VERSION_2: u16 = 2;
/// Version 1 manifests also have no unused extents, no segment table, and no `unused_bytes`
/// (the field before those two: decoded as 0).
const MANIFEST_VERSION_1: u16 = 1;
/// What a version 1 and a version 2 info lack at its end: zeros for the fields added since.
const MISSING_1: [u8; 24] = [0; 24];
const MISSING_2: [u8; 16] = [0; 16];
const HEADER_MAGIC: &[u8; 8] = b"STRATAIM";
const FOOTER_MAGIC: &[u8; 8] = b"STRATAIE";
const HEADER_LEN: u64 = 12;
/// The fixed part of a version 1 footer: info_len, extent_count, sum, magic.
const FOOTER_FIXED_1: u64 = 4 + 8 + 32 + 8;
/// Version 2 adds the segment count.
const FOOTER_FIXED: u64 = 4 + 4 + 8 + 32 + 8;
const TAG_ZERO: u8 = 0;
const TAG_CHUNK: u8 = 1;
const TAG_UNUSED: u8 = 2;
/// An info larger than this is damage, not an image.
const MAX_INFO_LEN: u32 = 64 * 1024;

fn info_config() -> impl bincode::config::Config {
    bincode::config::standard().with_little_endian().with_fixed_int_encoding().with_limit::<{ 64 * 1024 }>()
}

pub(crate) struct ManifestWriter {
    out: Box<dyn ObjectWriter>,
    hasher: blake3::Hasher,
    count: u64,
    end: u64,
    path: String,
}

impl ManifestWriter {
    pub fn create(backend: &dyn Backend, id: &ImageId) -> Result<ManifestWriter> {
        let path = paths::manifest(id);
        let out = backend.create(&path)?;
        let mut w = ManifestWriter { out, hasher: blake3::Hasher::new(), count: 0, end: 0, path };
        let mut header = Vec::with_capacity(12);
        header.extend_from_slice(HEADER_MAGIC);
        header.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
        header.extend_from_slice(&0u16.to_le_bytes());
        w.write(&header)?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.out.write_all(bytes).map_err(|e| Error::io("write", &self.path, e))
    }

    /// Appends one extent; extents must come in increasing offset order without overlap.
    pub fn push(&mut self, e: &Extent) -> Result<()> {
        debug_assert!(e.offset >= self.end && e.len > 0, "extents out of order");
        let mut rec = [0u8; 49];
        let n = match e.content {
            Content::Zero | Content::Unused => {
                rec[0] = if e.is_zero() { TAG_ZERO } else { TAG_UNUSED };
                rec[1..9].copy_from_slice(&e.offset.to_le_bytes());
                rec[9..17].copy_from_slice(&e.len.to_le_bytes());
                17
            }
            Content::Chunk { id, skip } => {
                rec[0] = TAG_CHUNK;
                rec[1..9].copy_from_slice(&e.offset.to_le_bytes());
                rec[9..13].copy_from_slice(&(e.len as u32).to_le_bytes());
                rec[13..17].copy_from_slice(&skip.to_le_bytes());
                rec[17..49].copy_from_slice(&id.0);
                49
            }
        };
        self.end = e.end();
        self.count += 1;
        self.write(&rec[..n])
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the segment fingerprints and the footer and makes the manifest durable under its
    /// name: the commit point.
    pub fn finish(mut self, info: &ImageInfo, segments: &[Fingerprint]) -> Result<()> {
        let encoded = bincode::serde::encode_to_vec(info, info_config())
            .map_err(|e| Error::CorruptManifest { image: info.id.to_string(), reason: e.to_string() })?;
        for f in segments {
            self.write(f)?;
        }
        self.write(&encoded)?;
        self.write(&(encoded.len() as u32).to_le_bytes())?;
        let segment_count = u32::try_from(segments.len())
            .map_err(|_| Error::Internal { reason: "more segments than a manifest can list".into() })?;
        self.write(&segment_count.to_le_bytes())?;
        let count = self.count;
        self.write(&count.to_le_bytes())?;
        let sum = *self.hasher.finalize().as_bytes();
        self.out.write_all(&sum).map_err(|e| Error::io("write", &self.path, e))?;
        self.out.write_all(FOOTER_MAGIC).map_err(|e| Error::io("write", &self.path, e))?;
        self.out.commit()
    }
}

/// The BLAKE3 of one segment as the backup saw it (its place, its layout of data, holes and
/// unused ranges, and its data bytes): equal fingerprints mean equal extents (backup/pipeline.rs).
pub type Fingerprint = [u8; 32];

struct Footer {
    info: ImageInfo,
    records_len: u64,
    count: u64,
    version: u16,
    /// Where the segment fingerprints start, and how many there are.
    segments_at: u64,
    segments: u32,
}

fn corrupt(id: &ImageId, reason: impl Into<String>) -> Error {
    Error::CorruptManifest { image: id.to_string(), reason: reason.into() }
}

fn missing_to_typed(id: &ImageId, e: Error) -> Error {
    match e {
        e if e.is_not_found() => Error::MissingManifest { image: id.to_string() },
        e => e,
    }
}

/// Reads and checks the footer, and with `verify` the checksum over the whole file (one
/// streaming pass).
fn read_footer(backend: &dyn Backend, id: &ImageId, verify: bool) -> Result<Footer> {
    let path = paths::manifest(id);
    let size = backend.size(&path).map_err(|e| missing_to_typed(id, e))?;
    if size < HEADER_LEN + FOOTER_FIXED_1 {
        return Err(corrupt(id, "shorter than header and footer"));
    }
    let head = backend.read_at(&path, 0, HEADER_LEN as usize)?;
    if &head[..8] != HEADER_MAGIC {
        return Err(corrupt(id, "bad header magic"));
    }
    let version = u16::from_le_bytes([head[8], head[9]]);
    if ![MANIFEST_VERSION, MANIFEST_VERSION_2, MANIFEST_VERSION_1].contains(&version) {
        return Err(corrupt(id, format!("unsupported manifest version {version}")));
    }
    let fixed = if version == MANIFEST_VERSION_1 { FOOTER_FIXED_1 } else { FOOTER_FIXED };
    if size < HEADER_LEN + fixed {
        return Err(corrupt(id, "shorter than header and footer"));
    }
    let tail = backend.read_at(&path, size - fixed, fixed as usize)?;
    let t = tail.len();
    if &tail[t - 8..] != FOOTER_MAGIC {
        return Err(corrupt(id, "bad footer magic (truncated?)"));
    }
    let info_len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let segments =
        if version == MANIFEST_VERSION_1 { 0 } else { u32::from_le_bytes([tail[4], tail[5], tail[6], tail[7]]) };
    let count = u64::from_le_bytes(tail[t - 48..t - 40].try_into().map_err(|_| corrupt(id, "footer"))?);
    let sum = &tail[t - 40..t - 8];
    let meta = info_len as u64 + segments as u64 * 32;
    if info_len > MAX_INFO_LEN || meta > size - HEADER_LEN - fixed {
        return Err(corrupt(id, "info or segment table length out of range"));
    }
    if verify {
        // Checksum over everything before the sum, streamed.
        let mut r = backend.open(&path)?;
        let mut hasher = blake3::Hasher::new();
        let mut left = size - 40;
        let mut buf = vec![0u8; 1 << 16];
        while left > 0 {
            let n = (left as usize).min(buf.len());
            r.read_exact(&mut buf[..n]).map_err(|e| Error::io("read", &path, e))?;
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        if hasher.finalize().as_bytes() != sum {
            return Err(corrupt(id, "checksum mismatch"));
        }
    }
    let info_at = size - fixed - info_len as u64;
    let mut raw = backend.read_at(&path, info_at, info_len as usize)?;
    match version {
        MANIFEST_VERSION_1 => raw.extend_from_slice(&MISSING_1),
        MANIFEST_VERSION_2 => raw.extend_from_slice(&MISSING_2),
        _ => {}
    }
    let (info, used): (ImageInfo, usize) =
        bincode::serde::decode_from_slice(&raw, info_config()).map_err(|e| corrupt(id, format!("info: {e}")))?;
    if used != raw.len() {
        return Err(corrupt(id, "trailing bytes after info"));
    }
    if info.id != *id {
        return Err(corrupt(id, format!("file holds image {}", info.id)));
    }
    let segments_at = info_at - segments as u64 * 32;
    Ok(Footer { info, records_len: segments_at - HEADER_LEN, count, version, segments_at, segments })
}

/// An image's info as the manifest footer and the catalog store it.
pub(crate) fn encode_info(info: &ImageInfo) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(info, info_config())
        .map_err(|e| Error::Internal { reason: format!("image info does not encode: {e}") })
}

/// A catalog entry (an info encoded as in the manifest footer). An entry written by a version 4
/// repository lacks `generation` and `base_generation`, one written by version 3 `unused_bytes`
/// too: it fails to decode whole (too short) and is decoded again with those fields as 0.
pub(crate) fn decode_info(raw: &[u8]) -> Result<ImageInfo> {
    let decode = |raw: &[u8]| -> Result<ImageInfo> {
        let (info, used): (ImageInfo, usize) = bincode::serde::decode_from_slice(raw, info_config())
            .map_err(|e| Error::Index { reason: format!("catalog entry does not decode: {e}") })?;
        if used != raw.len() {
            return Err(Error::Index { reason: "catalog entry has trailing bytes".into() });
        }
        Ok(info)
    };
    decode(raw)
        .or_else(|e| decode(&[raw, &MISSING_2].concat()).map_err(|_| e))
        .or_else(|e| decode(&[raw, &MISSING_1].concat()).map_err(|_| e))
}

/// The image info stored in a manifest, after checking the whole file.
pub(crate) fn read_info(backend: &dyn Backend, id: &ImageId) -> Result<ImageInfo> {
    Ok(read_footer(backend, id, true)?.info)
}

/// The image info from the footer alone (magic, version, bounds and decoding checked, not the
/// whole-file checksum): for walking chains, whose manifests are verified again whole when
/// their extents are read (`open_manifest`), before any of them is used.
pub(crate) fn peek_info(backend: &dyn Backend, id: &ImageId) -> Result<ImageInfo> {
    Ok(read_footer(backend, id, false)?.info)
}

/// The segment fingerprints of image `id` (none for a version 1 manifest), from its footer; the
/// whole file is not checked here (a damaged fingerprint only makes a segment be chunked again;
/// the extents are checked whole when the image's view is read).
pub(crate) fn read_fingerprints(backend: &dyn Backend, id: &ImageId) -> Result<Vec<Fingerprint>> {
    let f = read_footer(backend, id, false)?;
    let raw = backend.read_at(&paths::manifest(id), f.segments_at, f.segments as usize * 32)?;
    Ok(raw.chunks_exact(32).map(|c| c.try_into().unwrap_or([0; 32])).collect())
}

/// Opens a manifest (checked as a whole first) and returns its info and a stream of its extents.
pub fn open_manifest(backend: &dyn Backend, id: &ImageId) -> Result<(ImageInfo, ExtentReader)> {
    let f = read_footer(backend, id, true)?;
    let path = paths::manifest(id);
    let mut r = backend.open(&path)?;
    let mut head = [0u8; 12];
    r.read_exact(&mut head).map_err(|e| Error::io("read", &path, e))?;
    let version = f.version;
    Ok((f.info, ExtentReader { r, left: f.records_len, id: *id, end: 0, count: 0, expected: f.count, version }))
}

/// The extents of one manifest, in order, validated one by one.
pub struct ExtentReader {
    r: Box<dyn Read + Send>,
    left: u64,
    id: ImageId,
    end: u64,
    count: u64,
    expected: u64,
    version: u16,
}

impl ExtentReader {
    fn take(&mut self, buf: &mut [u8]) -> Result<()> {
        if (buf.len() as u64) > self.left {
            return Err(corrupt(&self.id, "record runs past the record area"));
        }
        self.r.read_exact(buf).map_err(|e| Error::io("read", paths::manifest(&self.id), e))?;
        self.left -= buf.len() as u64;
        Ok(())
    }

    fn next_extent(&mut self) -> Result<Option<Extent>> {
        if self.left == 0 {
            if self.count != self.expected {
                return Err(corrupt(&self.id, "extent count differs from the footer"));
            }
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.take(&mut tag)?;
        let e = match tag[0] {
            TAG_ZERO | TAG_UNUSED if tag[0] == TAG_ZERO || self.version >= 2 => {
                let mut b = [0u8; 16];
                self.take(&mut b)?;
                let offset = u64::from_le_bytes(b[0..8].try_into().map_err(|_| corrupt(&self.id, "record"))?);
                let len = u64::from_le_bytes(b[8..16].try_into().map_err(|_| corrupt(&self.id, "record"))?);
                if tag[0] == TAG_ZERO {
                    Extent::zero(offset, len)
                } else {
                    Extent::unused(offset, len)
                }
            }
            TAG_CHUNK => {
                let mut b = [0u8; 48];
                self.take(&mut b)?;
                let offset = u64::from_le_bytes(b[0..8].try_into().map_err(|_| corrupt(&self.id, "record"))?);
                let len = u32::from_le_bytes(b[8..12].try_into().map_err(|_| corrupt(&self.id, "record"))?);
                let skip = u32::from_le_bytes(b[12..16].try_into().map_err(|_| corrupt(&self.id, "record"))?);
                if len > MAX_CHUNK_LEN || skip > MAX_CHUNK_LEN - len {
                    return Err(corrupt(&self.id, "chunk extent larger than any chunk"));
                }
                let id = ChunkId(b[16..48].try_into().map_err(|_| corrupt(&self.id, "record"))?);
                Extent { offset, len: len as u64, content: Content::Chunk { id, skip } }
            }
            t => return Err(corrupt(&self.id, format!("unknown record tag {t}"))),
        };
        if e.len == 0 || e.offset < self.end || e.offset.checked_add(e.len).is_none() {
            return Err(corrupt(&self.id, format!("extent at {} is empty, out of order or overflows", e.offset)));
        }
        self.end = e.end();
        self.count += 1;
        Ok(Some(e))
    }
}

impl Iterator for ExtentReader {
    type Item = Result<Extent>;

    fn next(&mut self) -> Option<Result<Extent>> {
        match self.next_extent() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                self.left = 0;
                self.expected = self.count; // stop after the first error
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Kind, SourceStat};
    use crate::storage::LocalDir;
    use proptest::prelude::*;

    fn info(id: ImageId) -> ImageInfo {
        ImageInfo {
            id,
            kind: Kind::Incremental,
            source_id: "src".into(),
            set: ImageId([2; 16]),
            base: Some(ImageId([3; 16])),
            created_ms: 0x0102030405060708,
            logical_bytes: 10,
            changed_bytes: 11,
            new_stored_bytes: 12,
            new_raw_bytes: 13,
            new_chunks: 14,
            changed_zero_bytes: 15,
            extent_count: 2,
            depth: 4,
            seconds: 1.5,
            source_stat: Some(SourceStat { dev: 1, ino: 2, size: 3, mtime_ns: -4, ctime_ns: 5 }),
            read_skipped: true,
            synthetic: true,
            unused_bytes: 16,
            generation: 17,
            base_generation: 18,
        }
    }

    /// The info layout documented in docs/FORMAT.md, byte for byte.
    #[test]
    fn info_layout_matches_the_format_doc() {
        let b = bincode::serde::encode_to_vec(info(ImageId([1; 16])), info_config()).unwrap();
        assert_eq!(&b[0..16], &[1; 16], "id");
        assert_eq!(&b[16..20], &2u32.to_le_bytes(), "kind: variant index u32 (Incremental = 2)");
        assert_eq!(&b[20..28], &3u64.to_le_bytes(), "source_id length");
        assert_eq!(&b[28..31], b"src");
        assert_eq!(&b[31..47], &[2; 16], "set");
        assert_eq!(b[47], 1, "base: Some");
        assert_eq!(&b[48..64], &[3; 16]);
        assert_eq!(&b[64..72], &0x0102030405060708u64.to_le_bytes(), "created_ms");
        for (i, v) in [10u64, 11, 12, 13, 14, 15, 2].iter().enumerate() {
            assert_eq!(&b[72 + 8 * i..80 + 8 * i], &v.to_le_bytes(), "counter {i}");
        }
        assert_eq!(&b[128..132], &4u32.to_le_bytes(), "depth");
        assert_eq!(&b[132..140], &1.5f64.to_le_bytes(), "seconds");
        assert_eq!(b[140], 1, "source_stat: Some");
        assert_eq!(&b[141..149], &1u64.to_le_bytes(), "dev");
        assert_eq!(&b[165..181], &(-4i128).to_le_bytes(), "mtime_ns");
        assert_eq!(&b[181..197], &5i128.to_le_bytes(), "ctime_ns");
        assert_eq!(b[197], 1, "read_skipped");
        assert_eq!(b[198], 1, "synthetic");
        assert_eq!(&b[199..207], &16u64.to_le_bytes(), "unused_bytes");
        assert_eq!(&b[207..215], &17u64.to_le_bytes(), "generation");
        assert_eq!(&b[215..223], &18u64.to_le_bytes(), "base_generation");
        assert_eq!(b.len(), 223);
    }

    fn write_manifest(backend: &LocalDir, id: ImageId) {
        let mut w = ManifestWriter::create(backend, &id).unwrap();
        w.push(&Extent::zero(0, 4096)).unwrap();
        w.push(&Extent::chunk(4096, 100, ChunkId([9; 32]))).unwrap();
        w.push(&Extent::unused(8192, 1 << 20)).unwrap();
        w.finish(&info(id), &[[7; 32], [8; 32]]).unwrap();
    }

    #[test]
    fn manifest_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalDir::new(dir.path());
        let id = ImageId([1; 16]);
        write_manifest(&b, id);
        let (read, extents) = open_manifest(&b, &id).unwrap();
        assert_eq!(read, info(id));
        let ex: Vec<Extent> = extents.collect::<Result<_>>().unwrap();
        let expected =
            vec![Extent::zero(0, 4096), Extent::chunk(4096, 100, ChunkId([9; 32])), Extent::unused(8192, 1 << 20)];
        assert_eq!(ex, expected);
        assert_eq!(
            std::fs::metadata(dir.path().join(paths::manifest(&id))).unwrap().len(),
            12 + 17 + 49 + 17 + 2 * 32 + 223 + 56
        );
        assert_eq!(read_fingerprints(&b, &id).unwrap(), vec![[7; 32], [8; 32]]);
    }

    /// A version 1 manifest (before unused extents) still reads, its info's `unused_bytes` as 0;
    /// the unused tag is damage in it.
    #[test]
    fn version_1_manifests_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalDir::new(dir.path());
        let id = ImageId([1; 16]);
        let v1 = |records: &[u8]| {
            let mut bytes = b"STRATAIM".to_vec();
            bytes.extend_from_slice(&1u16.to_le_bytes());
            bytes.extend_from_slice(&0u16.to_le_bytes());
            bytes.extend_from_slice(records);
            let mut old = info(id);
            (old.unused_bytes, old.generation, old.base_generation) = (0, 0, 0);
            let encoded = bincode::serde::encode_to_vec(&old, info_config()).unwrap();
            bytes.extend_from_slice(&encoded[..encoded.len() - 24]); // no unused_bytes, no generations
            bytes.extend_from_slice(&((encoded.len() - 24) as u32).to_le_bytes());
            bytes.extend_from_slice(&1u64.to_le_bytes());
            write_with_footer(dir.path(), &id, bytes);
            (old, encoded)
        };
        let zero: Vec<u8> = [&[TAG_ZERO][..], &0u64.to_le_bytes(), &4096u64.to_le_bytes()].concat();
        let (old, encoded) = v1(&zero);
        let (read, ex) = open_manifest(&b, &id).unwrap();
        assert_eq!(read, old);
        assert_eq!(ex.collect::<Result<Vec<_>>>().unwrap(), vec![Extent::zero(0, 4096)]);
        assert_eq!(decode_info(&encoded[..encoded.len() - 24]).unwrap(), old, "a version 3 catalog entry");
        assert!(read_fingerprints(&b, &id).unwrap().is_empty(), "version 1 has no segment fingerprints");
        let unused: Vec<u8> = [&[TAG_UNUSED][..], &0u64.to_le_bytes(), &4096u64.to_le_bytes()].concat();
        v1(&unused);
        let (_, ex) = open_manifest(&b, &id).unwrap();
        assert!(ex.collect::<Result<Vec<_>>>().is_err());
    }

    /// Ends an older version's manifest as every version does (checksum, footer magic) and
    /// stores it where image `id`'s manifest belongs.
    fn write_with_footer(root: &std::path::Path, id: &ImageId, mut bytes: Vec<u8>) {
        let sum = *blake3::hash(&bytes).as_bytes();
        bytes.extend_from_slice(&sum);
        bytes.extend_from_slice(FOOTER_MAGIC);
        std::fs::create_dir_all(root.join("images")).unwrap();
        std::fs::write(root.join(paths::manifest(id)), &bytes).unwrap();
    }

    /// A version 2 manifest (before generations) still reads, its generations as 0; so does a
    /// catalog entry of a version 4 repository.
    #[test]
    fn version_2_manifests_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalDir::new(dir.path());
        let id = ImageId([1; 16]);
        let mut old = info(id);
        (old.generation, old.base_generation) = (0, 0);
        let encoded = bincode::serde::encode_to_vec(&old, info_config()).unwrap();
        let info_v2 = &encoded[..encoded.len() - 16];
        let mut bytes = b"STRATAIM".to_vec();
        bytes.extend_from_slice(&2u16.to_le_bytes());
        bytes.extend_from_slice(&0u16.to_le_bytes());
        bytes.extend_from_slice(&[&[TAG_UNUSED][..], &0u64.to_le_bytes(), &4096u64.to_le_bytes()].concat());
        bytes.extend_from_slice(&[5; 32]); // one segment fingerprint
        bytes.extend_from_slice(info_v2);
        bytes.extend_from_slice(&(info_v2.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        write_with_footer(dir.path(), &id, bytes);
        let (read, ex) = open_manifest(&b, &id).unwrap();
        assert_eq!(read, old);
        assert_eq!(ex.collect::<Result<Vec<_>>>().unwrap(), vec![Extent::unused(0, 4096)]);
        assert_eq!(read_fingerprints(&b, &id).unwrap(), vec![[5; 32]]);
        assert_eq!(decode_info(info_v2).unwrap(), old, "a version 4 catalog entry");
    }

    proptest! {
        /// Any damage to a manifest is an error, never a panic, and never silently accepted.
        #[test]
        fn damaged_manifests_are_errors(pos in any::<usize>(), bit in 0u8..8, cut in any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let b = LocalDir::new(dir.path());
            let id = ImageId([1; 16]);
            write_manifest(&b, id);
            let path = dir.path().join(paths::manifest(&id));
            let mut bytes = std::fs::read(&path).unwrap();
            let i = pos % bytes.len();
            if cut { bytes.truncate(i) } else { bytes[i] ^= 1 << bit }
            std::fs::write(&path, &bytes).unwrap();
            let r = open_manifest(&b, &id).and_then(|(_, ex)| ex.collect::<Result<Vec<_>>>());
            prop_assert!(r.is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let dir = tempfile::tempdir().unwrap();
            let b = LocalDir::new(dir.path());
            let id = ImageId([1; 16]);
            std::fs::create_dir_all(dir.path().join("images")).unwrap();
            std::fs::write(dir.path().join(paths::manifest(&id)), &bytes).unwrap();
            let _ = open_manifest(&b, &id).map(|(_, ex)| ex.count());
        }
    }
}
