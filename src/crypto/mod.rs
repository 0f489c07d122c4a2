//! Encryption: the key hierarchy and the sealed envelope.
//!
//! An encrypted repository has one random 32-byte master key. It is never stored in the clear:
//! key files (`keyfile`) hold it sealed under keys derived from passwords (`password` says
//! where a password comes from). Everything else is derived from the master key with BLAKE3's
//! key derivation, one context string per purpose, so that no subkey tells anything about
//! another:
//!
//! - `chunk_id`: chunk ids are BLAKE3 keyed with it, so that equal content in two repositories
//!   gets different ids and nobody holding a repository can confirm that a known file is in it;
//! - `segment`: the same for segment fingerprints;
//! - `data`: seals frames (chunk data);
//! - `meta`: seals everything else (pack trailers, manifests, index values, run records);
//! - `chunker_seed`: a secret seed for FastCDC's gear table, so that the sizes of chunks do not
//!   reveal content either.
//!
//! Sealed objects are XChaCha20-Poly1305 with a random 24-byte nonce (safe to pick at random for
//! any number of objects) and associated data that binds the object to what it is: its kind and a
//! name that does not depend on its own ciphertext (`Seal`). docs/FORMAT.md, "Encryption",
//! describes every byte; the tests below pin the derivation and the envelope.

mod aead;
pub mod keyfile;
pub mod keyring;
pub mod objects;
pub mod password;

use std::sync::Arc;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};
use crate::id::ChunkId;

/// Bytes of the nonce in front of every sealed object.
pub const NONCE_LEN: usize = 24;
/// Bytes of the authentication tag after every sealed object.
pub const TAG_LEN: usize = 16;
/// What sealing adds to an object.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// The first bytes of every associated data: a sealed object of another scheme never opens.
const AD_MAGIC: &[u8; 8] = b"strata\x00\x01";

/// What a sealed object is. Part of its associated data, so that an object of one kind never
/// opens as another (a manifest put where a trailer belongs, a frame replayed as an index value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjectKind {
    /// The master key inside a key file.
    KeyFile = 1,
    /// The secret part of the config.
    Config = 2,
    Frame = 3,
    Trailer = 4,
    Manifest = 5,
    IndexValue = 6,
    RunRecord = 7,
}

/// What a repository's `encryption` means for the names it gives and the bytes it stores: plain
/// BLAKE3 names and nothing sealed (`none`), or keyed names and sealed objects. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Protection(Option<Arc<Keys>>);

/// The context of unkeyed segment fingerprints (`none`; docs/FORMAT.md, "Segment fingerprints").
const SEGMENT_CONTEXT: &str = "strata 2026-12-01 segment fingerprint";

impl Protection {
    pub fn none() -> Protection {
        Protection(None)
    }

    pub fn keyed(keys: Keys) -> Protection {
        Protection(Some(Arc::new(keys)))
    }

    pub fn keys(&self) -> Option<&Keys> {
        self.0.as_deref()
    }

    pub fn is_encrypted(&self) -> bool {
        self.0.is_some()
    }

    /// A chunk's id: BLAKE3 of its bytes, keyed with the chunk id key when encrypted (then a
    /// MAC: nobody without the key can name, or confirm, a chunk).
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        match &self.0 {
            None => ChunkId::of(data),
            Some(k) => ChunkId(*blake3::keyed_hash(&k.chunk_id, data).as_bytes()),
        }
    }

    /// A fresh hasher for a segment fingerprint.
    pub fn segment_hasher(&self) -> blake3::Hasher {
        match &self.0 {
            None => blake3::Hasher::new_derive_key(SEGMENT_CONTEXT),
            Some(k) => blake3::Hasher::new_keyed(&k.segment),
        }
    }

    /// FastCDC's gear seed: 0 (the crate's own table) when not encrypted.
    pub fn chunker_seed(&self) -> u64 {
        self.0.as_ref().map_or(0, |k| k.chunker_seed)
    }
}

/// Fills `buf` from the operating system's random number generator.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::getrandom(buf).map_err(|e| Error::Random { reason: e.to_string() })
}

/// The repository's master key: 32 random bytes from which every subkey is derived, and, in a
/// repository made with `init --copy-keys-from`, the identity key of the repository it copies:
/// then chunk ids, segment fingerprints and the chunker seed come from that identity (so both
/// repositories name equal content alike and `copy` moves chunks without reading them twice),
/// data and metadata from this repository's own key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    key: [u8; 32],
    identity: Option<[u8; 32]>,
}

impl MasterKey {
    pub fn generate() -> Result<MasterKey> {
        let mut key = [0u8; 32];
        random_bytes(&mut key)?;
        Ok(MasterKey { key, identity: None })
    }

    /// A fresh key that names content as `other` does: a new random key for data and metadata,
    /// `other`'s identity for chunk ids, segment fingerprints and the chunker seed.
    pub fn sharing_identity_of(other: &MasterKey) -> Result<MasterKey> {
        let mut m = MasterKey::generate()?;
        m.identity = Some(*other.identity());
        Ok(m)
    }

    /// A master key from its bytes (test vectors; a repository's key comes from `generate`).
    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        MasterKey { key: bytes, identity: None }
    }

    /// The key from what a key file seals: 32 bytes (own key), or 64 (own key, then identity).
    pub(crate) fn from_sealed(bytes: &[u8]) -> Option<MasterKey> {
        let key: [u8; 32] = bytes.get(..32)?.try_into().ok()?;
        match bytes.len() {
            32 => Some(MasterKey { key, identity: None }),
            64 => Some(MasterKey { key, identity: Some(bytes[32..].try_into().ok()?) }),
            _ => None,
        }
    }

    /// What a key file seals: the own key, followed by the identity when it is another's.
    pub(crate) fn sealed_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut v = zeroize::Zeroizing::new(self.key.to_vec());
        if let Some(i) = &self.identity {
            v.extend_from_slice(i);
        }
        v
    }

    /// Whether the identity is another repository's (the key file then seals 64 bytes).
    pub(crate) fn has_copied_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// The key that chunk ids, segment fingerprints and the chunker seed derive from.
    fn identity(&self) -> &[u8; 32] {
        self.identity.as_ref().unwrap_or(&self.key)
    }

    /// The subkeys, derived with BLAKE3 `derive_key` (contexts in docs/FORMAT.md).
    pub fn keys(&self) -> Keys {
        let own = |context: &str| blake3::derive_key(context, &self.key);
        let named = |context: &str| blake3::derive_key(context, self.identity());
        let seed = named("strata 2026-12-01 chunker seed");
        let mut s = [0u8; 8];
        s.copy_from_slice(&seed[..8]);
        Keys {
            chunk_id: named("strata 2026-12-01 chunk id"),
            segment: named("strata 2026-12-01 segment fingerprint key"),
            data: own("strata 2026-12-01 data"),
            meta: own("strata 2026-12-01 metadata"),
            // FastCDC's seed 0 means "no seed": a derived 0 (one in 2^64) becomes 1.
            chunker_seed: u64::from_le_bytes(s).max(1),
        }
    }
}

/// The subkeys of an encrypted repository.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Keys {
    chunk_id: [u8; 32],
    segment: [u8; 32],
    data: [u8; 32],
    meta: [u8; 32],
    chunker_seed: u64,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    pub fn chunk_id_key(&self) -> &[u8; 32] {
        &self.chunk_id
    }

    pub fn segment_key(&self) -> &[u8; 32] {
        &self.segment
    }

    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }

    fn key(&self, kind: ObjectKind) -> &[u8; 32] {
        if kind == ObjectKind::Frame {
            &self.data
        } else {
            &self.meta
        }
    }

    /// Seals `plain` as an object of `kind` named `name`: nonce, ciphertext, tag.
    pub fn seal(&self, kind: ObjectKind, name: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.resize(NONCE_LEN, 0);
        out.extend_from_slice(plain);
        let (nonce, rest) = out.split_at_mut(NONCE_LEN);
        let tag = self.seal_detached(kind, name, nonce, rest)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Seals `buf` in place; writes a fresh random nonce into `nonce` and returns the tag.
    /// Frames use it to be sealed without a copy (the pack builder writes nonce, bytes, tag).
    pub fn seal_detached(
        &self,
        kind: ObjectKind,
        name: &[u8],
        nonce: &mut [u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN]> {
        let len = nonce.len();
        let nonce: &mut [u8; NONCE_LEN] =
            nonce.try_into().map_err(|_| Error::Internal { reason: format!("a nonce of {len} bytes") })?;
        random_bytes(nonce)?;
        let ad = associated_data(kind, name);
        aead::seal(self.key(kind), nonce, &ad, buf)
            .ok_or_else(|| Error::Internal { reason: "encryption failed (an object above 256 GiB?)".into() })
    }

    /// Opens an object sealed by `seal` as `kind` named `name`; `what` names it in the error.
    pub fn open(&self, kind: ObjectKind, name: &[u8], sealed: &[u8], what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        let mut buf = sealed.to_vec();
        let n = self.open_in_place(kind, name, &mut buf, what)?.len();
        buf.copy_within(NONCE_LEN..NONCE_LEN + n, 0);
        buf.truncate(n);
        Ok(buf)
    }

    /// Opens a sealed object in place and returns its plaintext, a slice of `sealed`.
    pub fn open_in_place<'b>(
        &self,
        kind: ObjectKind,
        name: &[u8],
        sealed: &'b mut [u8],
        what: &dyn Fn() -> String,
    ) -> Result<&'b mut [u8]> {
        let failed = || Error::Decrypt { what: what() };
        // Shorter than OVERHEAD: no room for the tag and the nonce.
        let (head, tag) = sealed.split_last_chunk_mut::<TAG_LEN>().ok_or_else(failed)?;
        let (nonce, text) = head.split_first_chunk_mut::<NONCE_LEN>().ok_or_else(failed)?;
        let ad = associated_data(kind, name);
        if !aead::open(self.key(kind), nonce, &ad, text, tag) {
            return Err(failed());
        }
        Ok(text)
    }
}

/// `AD_MAGIC | kind u8 | name length u32 | name`.
fn associated_data(kind: ObjectKind, name: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_MAGIC.len() + 5 + name.len());
    ad.extend_from_slice(AD_MAGIC);
    ad.push(kind as u8);
    ad.extend_from_slice(&(name.len() as u32).to_le_bytes());
    ad.extend_from_slice(name);
    ad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        MasterKey::from_bytes([7u8; 32]).keys()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn subkeys_are_pinned_and_distinct() {
        // Test vectors: a change here changes every encrypted repository (a new format version).
        // Checked against Python's `blake3` package (`derive_key_context`).
        let k = keys();
        assert_eq!(hex(&k.chunk_id), hex(&blake3::derive_key("strata 2026-12-01 chunk id", &[7u8; 32])));
        assert_eq!(&hex(&k.chunk_id)[..16], "111480966f30bb08");
        assert_eq!(&hex(&k.data)[..16], "77907a98204fb872");
        assert_eq!(&hex(&k.meta)[..16], "27397ae2daa76bf2");
        assert_eq!(k.chunker_seed(), 0xa0e2_522c_9d91_ed5f);
        let all = [k.chunk_id, k.segment, k.data, k.meta];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn sealed_objects_open_only_as_what_they_are() {
        let k = keys();
        let sealed = k.seal(ObjectKind::Manifest, b"image 1", b"hello").unwrap();
        assert_eq!(sealed.len(), 5 + OVERHEAD);
        let what = || "the test object".to_string();
        assert_eq!(k.open(ObjectKind::Manifest, b"image 1", &sealed, &what).unwrap(), b"hello");
        // Another name, another kind, another key, any flipped bit, a truncation: refused.
        assert!(matches!(k.open(ObjectKind::Manifest, b"image 2", &sealed, &what), Err(Error::Decrypt { .. })));
        assert!(k.open(ObjectKind::Trailer, b"image 1", &sealed, &what).is_err());
        let other = MasterKey::from_bytes([8u8; 32]).keys();
        assert!(other.open(ObjectKind::Manifest, b"image 1", &sealed, &what).is_err());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(k.open(ObjectKind::Manifest, b"image 1", &bad, &what).is_err(), "bit flip at {i}");
        }
        assert!(k.open(ObjectKind::Manifest, b"image 1", &sealed[..sealed.len() - 1], &what).is_err());
        assert!(k.open(ObjectKind::Manifest, b"image 1", &sealed[..10], &what).is_err());
        // Nonces are random: sealing twice gives different bytes.
        assert_ne!(sealed, k.seal(ObjectKind::Manifest, b"image 1", b"hello").unwrap());
    }

    #[test]
    fn the_envelope_is_pinned() {
        // A fixed nonce through the detached path's building blocks: XChaCha20-Poly1305 over the
        // documented associated data (a test vector for other implementations; checked against
        // HChaCha20 written out in Python and the `cryptography` package's ChaCha20-Poly1305).
        let k = keys();
        let nonce = [1u8; NONCE_LEN];
        let mut buf = b"strata".to_vec();
        let ad = associated_data(ObjectKind::Frame, b"name");
        assert_eq!(hex(&ad), "737472617461000103040000006e616d65");
        let tag = aead::seal(k.key(ObjectKind::Frame), &nonce, &ad, &mut buf).unwrap();
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&buf);
        sealed.extend_from_slice(&tag);
        assert_eq!(hex(&sealed[NONCE_LEN..]), "250a89145cd09e5054bbb16350d00b6d08a07ed2808b");
        let what = || String::new();
        assert_eq!(k.open(ObjectKind::Frame, b"name", &sealed, &what).unwrap(), b"strata");
    }
}
