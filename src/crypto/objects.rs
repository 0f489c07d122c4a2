//! Whole objects sealed in blocks: the `Backend` of an encrypted repository.
//!
//! Manifests (`images/`) and run records (`runs/`) are stored as a sequence of sealed blocks of
//! up to `BLOCK` plaintext bytes each, so that they can still be written and read as streams
//! and read at any offset (a manifest's footer, its segment table) without opening all of it.
//! Block `i` is sealed (kind from the path) with the name `path | i u64 | last u8`: a block
//! moved to another object or place does not open, and an object cut after any block is caught
//! because its new last block was not sealed as the last. Every other path (packs, which seal
//! their frames themselves, key files, the config, the generation file) passes through as is.
//! To the code above it the adapter is just another `Backend` serving plaintext, so the manifest
//! and run record codecs do not change.

use std::io::{Read, Write};
use std::sync::Arc;

use super::{Keys, ObjectKind, Protection, NONCE_LEN, OVERHEAD, TAG_LEN};
use crate::error::{Error, Result};
use crate::storage::{paths, Backend, ObjectWriter};

/// Plaintext bytes per sealed block (the last block of an object may hold fewer, even none).
pub const BLOCK: usize = 64 * 1024;
const SEALED_BLOCK: u64 = (BLOCK + OVERHEAD) as u64;

/// Seals the objects of `images/` and `runs/` over `inner`; see the module documentation.
pub struct SealingBackend {
    inner: Arc<dyn Backend>,
    keys: Arc<Keys>,
}

impl SealingBackend {
    /// `protection` must hold keys; a plain repository uses its backend directly.
    pub fn new(inner: Arc<dyn Backend>, protection: Protection) -> Result<SealingBackend> {
        match protection.0 {
            Some(keys) => Ok(SealingBackend { inner, keys }),
            None => Err(Error::Internal { reason: "a sealing backend without keys".into() }),
        }
    }

    /// How an object at `path` is sealed, if it is.
    fn kind(path: &str) -> Option<ObjectKind> {
        let under = |dir: &str| path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'));
        if under(paths::IMAGES) {
            Some(ObjectKind::Manifest)
        } else if under(paths::RUNS) {
            Some(ObjectKind::RunRecord)
        } else {
            None
        }
    }

    /// Number of blocks and plaintext size of an object stored in `stored` bytes.
    fn layout(path: &str, stored: u64) -> Result<(u64, u64)> {
        let n = stored.div_ceil(SEALED_BLOCK).max(1);
        let last = stored.checked_sub((n - 1) * SEALED_BLOCK).filter(|&l| l >= OVERHEAD as u64);
        match last {
            Some(_) => Ok((n, stored - n * OVERHEAD as u64)),
            None => Err(Error::Decrypt { what: format!("{path} (its length fits no sequence of sealed blocks)") }),
        }
    }

    /// Opens block `i` of `n` of the object at `path`.
    fn block(&self, path: &str, kind: ObjectKind, i: u64, n: u64, stored: u64) -> Result<Vec<u8>> {
        let start = i * SEALED_BLOCK;
        let len = (stored - start).min(SEALED_BLOCK) as usize;
        let mut sealed = self.inner.read_at(path, start, len)?;
        open_block(&self.keys, kind, path, i, i + 1 == n, &mut sealed)
    }
}

fn block_name(path: &str, i: u64, last: bool) -> Vec<u8> {
    let mut name = Vec::with_capacity(path.len() + 9);
    name.extend_from_slice(path.as_bytes());
    name.extend_from_slice(&i.to_le_bytes());
    name.push(last as u8);
    name
}

fn open_block(keys: &Keys, kind: ObjectKind, path: &str, i: u64, last: bool, sealed: &mut Vec<u8>) -> Result<Vec<u8>> {
    let what = || format!("{path} (block {i})");
    let n = keys.open_in_place(kind, &block_name(path, i, last), sealed, &what)?.len();
    sealed.copy_within(NONCE_LEN..NONCE_LEN + n, 0);
    sealed.truncate(n);
    Ok(std::mem::take(sealed))
}

fn seal_block(
    keys: &Keys,
    kind: ObjectKind,
    path: &str,
    i: u64,
    last: bool,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    let start = out.len();
    out.resize(start + NONCE_LEN, 0);
    out.extend_from_slice(plain);
    let (nonce, body) = out[start..].split_at_mut(NONCE_LEN);
    let tag = keys.seal_detached(kind, &block_name(path, i, last), nonce, body)?;
    out.extend_from_slice(&tag);
    debug_assert_eq!(out.len() - start, plain.len() + NONCE_LEN + TAG_LEN);
    Ok(())
}

impl Backend for SealingBackend {
    fn put(&self, path: &str, data: &[u8]) -> Result<()> {
        let Some(kind) = Self::kind(path) else { return self.inner.put(path, data) };
        let mut out = Vec::with_capacity(data.len() + (data.len() / BLOCK + 1) * OVERHEAD);
        let blocks: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(BLOCK).collect() };
        let n = blocks.len() as u64;
        for (i, b) in blocks.into_iter().enumerate() {
            seal_block(&self.keys, kind, path, i as u64, i as u64 + 1 == n, b, &mut out)?;
        }
        self.inner.put(path, &out)
    }

    fn create(&self, path: &str) -> Result<Box<dyn ObjectWriter>> {
        let out = self.inner.create(path)?;
        match Self::kind(path) {
            None => Ok(out),
            Some(kind) => Ok(Box::new(SealedWriter {
                out,
                keys: self.keys.clone(),
                kind,
                path: path.into(),
                pending: Vec::with_capacity(BLOCK),
                sealed: Vec::with_capacity(BLOCK + OVERHEAD),
                index: 0,
            })),
        }
    }

    fn get(&self, path: &str) -> Result<Vec<u8>> {
        let Some(_) = Self::kind(path) else { return self.inner.get(path) };
        let mut out = Vec::new();
        self.open(path)?.read_to_end(&mut out).map_err(|e| unwrap_io(path, e))?;
        Ok(out)
    }

    fn get_into(&self, path: &str, buf: &mut Vec<u8>) -> Result<()> {
        let Some(_) = Self::kind(path) else { return self.inner.get_into(path, buf) };
        *buf = self.get(path)?;
        Ok(())
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + Send>> {
        let Some(kind) = Self::kind(path) else { return self.inner.open(path) };
        let stored = self.inner.size(path)?;
        let (n, _) = Self::layout(path, stored)?;
        Ok(Box::new(SealedReader {
            inner: self.inner.open(path)?,
            keys: self.keys.clone(),
            kind,
            path: path.into(),
            stored,
            n,
            next: 0,
            plain: Vec::new(),
            at: 0,
        }))
    }

    fn read_at(&self, path: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let Some(kind) = Self::kind(path) else { return self.inner.read_at(path, offset, len) };
        let stored = self.inner.size(path)?;
        let (n, size) = Self::layout(path, stored)?;
        let end = offset.checked_add(len as u64).filter(|&e| e <= size).ok_or_else(|| {
            Error::io("read", path, std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past the end"))
        })?;
        let mut out = Vec::with_capacity(len);
        let mut at = offset;
        while at < end {
            let i = at / BLOCK as u64;
            let plain = self.block(path, kind, i, n, stored)?;
            let from = (at - i * BLOCK as u64) as usize;
            let to = ((end - i * BLOCK as u64) as usize).min(plain.len());
            let piece = plain
                .get(from..to)
                .filter(|p| !p.is_empty())
                .ok_or_else(|| Error::Decrypt { what: format!("{path} (block {i} is shorter than its place says)") })?;
            out.extend_from_slice(piece);
            at += piece.len() as u64;
        }
        Ok(out)
    }

    fn size(&self, path: &str) -> Result<u64> {
        let stored = self.inner.size(path)?;
        match Self::kind(path) {
            None => Ok(stored),
            Some(_) => Self::layout(path, stored).map(|(_, size)| size),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn remove(&self, path: &str) -> Result<()> {
        self.inner.remove(path)
    }

    fn temporaries(&self) -> Result<Vec<(String, u64)>> {
        self.inner.temporaries()
    }

    fn remove_temporary(&self, path: &str) -> Result<()> {
        self.inner.remove_temporary(path)
    }

    fn available(&self) -> Option<u64> {
        self.inner.available()
    }

    fn concurrent_requests(&self) -> usize {
        self.inner.concurrent_requests()
    }

    fn read_ranges(&self, reads: &[(String, u64, usize)]) -> Vec<Result<Vec<u8>>> {
        // Packs are stored as they are (their frames are sealed inside): the inner store's batch.
        if reads.iter().all(|(path, _, _)| Self::kind(path).is_none()) {
            return self.inner.read_ranges(reads);
        }
        reads.iter().map(|(path, offset, len)| self.read_at(path, *offset, *len)).collect()
    }
}

/// An error of the sealed reader, carried through `std::io` and unwrapped again.
fn unwrap_io(path: &str, e: std::io::Error) -> Error {
    match e.into_inner().map(|inner| inner.downcast::<Error>()) {
        Some(Ok(err)) => *err,
        Some(Err(other)) => Error::io("read", path, std::io::Error::other(other)),
        None => Error::io("read", path, std::io::Error::other("read failed")),
    }
}

/// Seals what is written, a block at a time; the block that is pending at `commit` is the last.
struct SealedWriter {
    out: Box<dyn ObjectWriter>,
    keys: Arc<Keys>,
    kind: ObjectKind,
    path: String,
    pending: Vec<u8>,
    sealed: Vec<u8>,
    index: u64,
}

impl SealedWriter {
    fn flush_block(&mut self, last: bool) -> std::io::Result<()> {
        self.sealed.clear();
        seal_block(&self.keys, self.kind, &self.path, self.index, last, &self.pending, &mut self.sealed)
            .map_err(std::io::Error::other)?;
        self.out.write_all(&self.sealed)?;
        self.pending.clear();
        self.index += 1;
        Ok(())
    }
}

impl Write for SealedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.pending.len() == BLOCK {
            // Full and more is coming: not the last block.
            self.flush_block(false)?;
        }
        let n = buf.len().min(BLOCK - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for SealedWriter {
    fn commit(mut self: Box<Self>) -> Result<()> {
        let path = self.path.clone();
        self.flush_block(true).map_err(|e| Error::io("write", &path, e))?;
        self.out.commit()
    }
}

/// Opens the blocks of an object in order.
struct SealedReader {
    inner: Box<dyn Read + Send>,
    keys: Arc<Keys>,
    kind: ObjectKind,
    path: String,
    stored: u64,
    n: u64,
    next: u64,
    plain: Vec<u8>,
    at: usize,
}

impl Read for SealedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.plain.len() {
            if self.next == self.n {
                return Ok(0);
            }
            let len = (self.stored - self.next * SEALED_BLOCK).min(SEALED_BLOCK) as usize;
            let mut sealed = vec![0u8; len];
            self.inner.read_exact(&mut sealed)?;
            self.plain = open_block(&self.keys, self.kind, &self.path, self.next, self.next + 1 == self.n, &mut sealed)
                .map_err(std::io::Error::other)?;
            self.at = 0;
            self.next += 1;
        }
        let n = buf.len().min(self.plain.len() - self.at);
        buf[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use crate::storage::LocalDir;

    fn setup() -> (tempfile::TempDir, Arc<dyn Backend>, SealingBackend) {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Backend> = Arc::new(LocalDir::new(dir.path()));
        let keys = Protection::keyed(MasterKey::generate().unwrap().keys());
        let sealed = SealingBackend::new(raw.clone(), keys).unwrap();
        (dir, raw, sealed)
    }

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn sealed_objects_read_back_whole_streamed_and_at_any_offset() {
        let (_dir, raw, b) = setup();
        for (name, n) in [("empty", 0), ("small", 100), ("one", BLOCK), ("more", BLOCK + 1), ("big", 3 * BLOCK + 777)] {
            let path = format!("images/{name}");
            let data = bytes(n);
            b.put(&path, &data).unwrap();
            assert_eq!(b.get(&path).unwrap(), data, "{name}");
            assert_eq!(b.size(&path).unwrap(), n as u64);
            assert_eq!(raw.size(&path).unwrap(), (n + n.div_ceil(BLOCK).max(1) * OVERHEAD) as u64);
            for (off, len) in [(0, n.min(10)), (n / 2, n / 3), (n.saturating_sub(5), n.min(5))] {
                assert_eq!(b.read_at(&path, off as u64, len).unwrap(), &data[off..off + len], "{name} at {off}");
            }
            assert!(b.read_at(&path, n as u64, 1).is_err());
            // Streamed writes give the same object as a put.
            let streamed = format!("runs/job/{name}");
            let mut w = b.create(&streamed).unwrap();
            for piece in data.chunks(1000) {
                w.write_all(piece).unwrap();
            }
            w.commit().unwrap();
            let mut back = Vec::new();
            b.open(&streamed).unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back, data);
            if n > 16 {
                let stored = raw.get(&path).unwrap();
                assert!(!stored.windows(16).any(|w| w == &data[..16]), "plaintext in the clear");
            }
        }
        // Other paths pass through unsealed.
        b.put("packs/ab/cd", b"raw").unwrap();
        assert_eq!(raw.get("packs/ab/cd").unwrap(), b"raw");
    }

    #[test]
    fn moved_truncated_or_altered_objects_do_not_open() {
        let (_dir, raw, b) = setup();
        let data = bytes(2 * BLOCK + 10);
        b.put("images/a", &data).unwrap();
        b.put("images/b", &data).unwrap();
        let stored = raw.get("images/a").unwrap();
        // Moved: image b's bytes under a's name.
        raw.put("images/a", &raw.get("images/b").unwrap()).unwrap();
        assert!(matches!(b.get("images/a"), Err(Error::Decrypt { .. })));
        // Cut after a whole block: the new last block was not sealed as the last.
        raw.put("images/a", &stored[..2 * SEALED_BLOCK as usize]).unwrap();
        assert!(b.get("images/a").is_err());
        assert!(b.read_at("images/a", BLOCK as u64, 10).is_err());
        // Cut inside a block, a flipped bit, blocks swapped.
        raw.put("images/a", &stored[..stored.len() - 1]).unwrap();
        assert!(b.get("images/a").is_err());
        let mut flipped = stored.clone();
        flipped[SEALED_BLOCK as usize + 100] ^= 1;
        raw.put("images/a", &flipped).unwrap();
        assert!(b.get("images/a").is_err());
        assert_eq!(b.read_at("images/a", 0, 10).unwrap(), &data[..10], "other blocks still open");
        let mut swapped = stored.clone();
        let (x, y) = swapped.split_at_mut(SEALED_BLOCK as usize);
        x.swap_with_slice(&mut y[..SEALED_BLOCK as usize]);
        raw.put("images/a", &swapped).unwrap();
        assert!(b.get("images/a").is_err());
        // A plain object where a sealed one belongs.
        raw.put("images/a", &data).unwrap();
        assert!(b.get("images/a").is_err());
        raw.put("images/a", b"tiny").unwrap();
        assert!(b.size("images/a").is_err());
    }
}
