//! Key files: the master key sealed under a password (`keys/<key id>`, one per password).
//!
//! A key file is UTF-8 JSON, so that a person can see which KDF and parameters it was made
//! with. Argon2id turns the password and the file's salt into a 32-byte wrapping key, which opens
//! the sealed master key (XChaCha20-Poly1305, kind `KeyFile`). The associated data binds the
//! sealed key to every other field of the file (`KeyFile::binding`): a key file whose
//! parameters, id, repository or generation were changed does not open, even with the right
//! password. Parameters are checked against limits before any memory is taken, so a planted key
//! file cannot make `strata` allocate gigabytes (a memory bomb) or run for hours.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{random_bytes, Keys, MasterKey, ObjectKind, OVERHEAD};
use crate::error::{Error, Result};

/// Argon2id's parameters as a key file records them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Always "argon2id" (version 0x13).
    pub algorithm: String,
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory (Argon2's t).
    pub passes: u32,
    /// Lanes (Argon2's p).
    pub lanes: u32,
}

/// The most memory a key file may ask for: 16 times the default.
pub const MAX_MEMORY_KIB: u32 = 1024 * 1024;
/// The most passes a key file may ask for.
pub const MAX_PASSES: u32 = 64;
/// The most lanes a key file may ask for.
pub const MAX_LANES: u32 = 16;

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 4 lanes (RFC 9106, second recommendation); the lanes run in parallel:
    /// 0.15 s on the project's 2 cores (0.22 s with 1 lane).
    fn default() -> Self {
        KdfParams { algorithm: "argon2id".into(), memory_kib: 64 * 1024, passes: 3, lanes: 4 }
    }
}

impl KdfParams {
    /// Weak parameters for tests only (`STRATA_TESTONLY_WEAK_KDF`): 64 KiB, 1 pass.
    pub fn weak_for_tests() -> KdfParams {
        KdfParams { algorithm: "argon2id".into(), memory_kib: 64, passes: 1, lanes: 1 }
    }

    /// The parameters new key files get: the default, or the weak ones when the environment
    /// variable `STRATA_TESTONLY_WEAK_KDF` is `1` (as borg's `BORG_TESTONLY_WEAKEN_KDF`, for test
    /// suites; never for a repository that matters).
    pub fn for_new_keys() -> KdfParams {
        if std::env::var_os("STRATA_TESTONLY_WEAK_KDF").is_some_and(|v| v == "1") {
            KdfParams::weak_for_tests()
        } else {
            KdfParams::default()
        }
    }

    /// Refuses parameters outside the limits (before any memory is taken).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.algorithm != "argon2id" {
            return Err(format!("KDF {:?} is not supported (argon2id)", self.algorithm));
        }
        if !(8..=MAX_MEMORY_KIB).contains(&self.memory_kib) {
            return Err(format!("Argon2 memory {} KiB is outside 8..={MAX_MEMORY_KIB} KiB", self.memory_kib));
        }
        if !(1..=MAX_PASSES).contains(&self.passes) {
            return Err(format!("Argon2 passes {} outside 1..={MAX_PASSES}", self.passes));
        }
        if !(1..=MAX_LANES).contains(&self.lanes) || self.memory_kib < 8 * self.lanes {
            return Err(format!("Argon2 lanes {} outside 1..={MAX_LANES} (and 8 KiB each)", self.lanes));
        }
        Ok(())
    }

    fn derive(&self, password: &[u8], salt: &[u8]) -> std::result::Result<Zeroizing<[u8; 32]>, String> {
        self.validate()?;
        let params =
            argon2::Params::new(self.memory_kib, self.passes, self.lanes, Some(32)).map_err(|e| e.to_string())?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon.hash_password_into(password, salt, &mut *out).map_err(|e| e.to_string())?;
        Ok(out)
    }
}

/// One key file as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFile {
    /// Key file format version: 1 (the sealed key is the repository's own master key), or 2
    /// (it is followed by the identity key of the repository it was copied from).
    pub version: u32,
    /// 16 hex digits (8 random bytes); the file's name under `keys/`.
    pub id: String,
    /// The repository this key opens (its config's `repository_id`).
    pub repository_id: String,
    pub created_ms: u64,
    /// Rises each time the key file is replaced (`key passwd`); the repository's key list
    /// records the generation of every live key file, so an older copy put back is refused.
    pub generation: u64,
    pub kdf: KdfParams,
    /// 32 hex digits: Argon2's salt (16 random bytes).
    pub salt: String,
    /// Hex: nonce (24) | master key sealed (32, or 64 in version 2: own key, identity) | tag (16).
    pub sealed_key: String,
}

/// The version of a key file that seals the repository's own key alone.
pub const KEY_FILE_VERSION: u32 = 1;
/// The version of a key file that seals the own key and a copied identity key.
pub const KEY_FILE_VERSION_COPIED_IDENTITY: u32 = 2;

/// How many bytes a key file of `version` seals, for the versions this strata reads.
fn sealed_len(version: u32) -> Option<usize> {
    match version {
        KEY_FILE_VERSION => Some(32),
        KEY_FILE_VERSION_COPIED_IDENTITY => Some(64),
        _ => None,
    }
}

impl KeyFile {
    /// Seals `master` under `password` as a new key file of generation `generation`.
    pub fn create(
        master: &MasterKey,
        password: &[u8],
        repository_id: &str,
        id: &str,
        generation: u64,
        kdf: KdfParams,
        created_ms: u64,
    ) -> Result<KeyFile> {
        if password.is_empty() {
            return Err(Error::PasswordSource { source_name: "given".into(), reason: "is empty".into() });
        }
        let mut salt = [0u8; 16];
        random_bytes(&mut salt)?;
        let mut kf = KeyFile {
            version: if master.has_copied_identity() { KEY_FILE_VERSION_COPIED_IDENTITY } else { KEY_FILE_VERSION },
            id: id.into(),
            repository_id: repository_id.into(),
            created_ms,
            generation,
            kdf,
            salt: hex(&salt),
            sealed_key: String::new(),
        };
        let wrap = kf.kdf.derive(password, &salt).map_err(|reason| kf.bad(reason))?;
        let sealed = wrapping_keys(&wrap).seal(ObjectKind::KeyFile, &kf.binding(), &master.sealed_bytes())?;
        kf.sealed_key = hex(&sealed);
        Ok(kf)
    }

    /// A fresh key file id: 8 random bytes as 16 hex digits.
    pub fn new_id() -> Result<String> {
        let mut b = [0u8; 8];
        random_bytes(&mut b)?;
        Ok(hex(&b))
    }

    /// Opens the master key with `password`: `Ok(None)` when the password is not this file's,
    /// an error when the file itself is unusable.
    pub fn open(&self, password: &[u8]) -> Result<Option<MasterKey>> {
        let Some(key_len) = sealed_len(self.version) else {
            return Err(self.bad(format!("version {} is not supported (1 or 2)", self.version)));
        };
        let salt = unhex(&self.salt).filter(|s| s.len() == 16).ok_or_else(|| self.bad("salt is not 32 hex digits"))?;
        let sealed = unhex(&self.sealed_key)
            .filter(|s| s.len() == key_len + OVERHEAD)
            .ok_or_else(|| self.bad(format!("sealed_key is not {} hex digits", 2 * (key_len + OVERHEAD))))?;
        let wrap = self.kdf.derive(password, &salt).map_err(|reason| self.bad(reason))?;
        let what = String::new;
        match wrapping_keys(&wrap).open(ObjectKind::KeyFile, &self.binding(), &sealed, &what) {
            Ok(plain) => {
                let plain = Zeroizing::new(plain);
                MasterKey::from_sealed(&plain).map(Some).ok_or_else(|| self.bad("the sealed key has the wrong length"))
            }
            Err(_) => Ok(None),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self).map_err(|e| self.bad(e.to_string()))?;
        v.push(b'\n');
        Ok(v)
    }

    /// Parses a key file; `name` (its path) names it in errors. Its size is bounded by the caller.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<KeyFile> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::BadKeyFile { path: name.into(), reason: format!("not a key file: {e}") })
    }

    /// What the sealed key is bound to: every other field, length-prefixed.
    fn binding(&self) -> Vec<u8> {
        let mut b = Vec::new();
        for s in [&self.id, &self.repository_id, &self.kdf.algorithm, &self.salt] {
            b.extend_from_slice(&(s.len() as u32).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        for n in [self.version as u64, self.created_ms, self.generation] {
            b.extend_from_slice(&n.to_le_bytes());
        }
        for n in [self.kdf.memory_kib, self.kdf.passes, self.kdf.lanes] {
            b.extend_from_slice(&n.to_le_bytes());
        }
        b
    }

    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::BadKeyFile { path: format!("keys/{}", self.id), reason: reason.into() }
    }
}

/// A `Keys` whose metadata key is the password-derived wrapping key (only `KeyFile` objects are
/// sealed with it).
fn wrapping_keys(wrap: &[u8; 32]) -> Keys {
    Keys { chunk_id: [0; 32], segment: [0; 32], data: [0; 32], meta: *wrap, chunker_seed: 0 }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(password: &[u8]) -> (MasterKey, KeyFile) {
        let m = MasterKey::generate().unwrap();
        let kf = KeyFile::create(&m, password, "repo1", "00112233aabbccdd", 1, KdfParams::weak_for_tests(), 5).unwrap();
        (m, kf)
    }

    #[test]
    fn the_right_password_opens_the_master_key_and_a_wrong_one_does_not() {
        let (m, kf) = make(b"correct horse");
        let back = KeyFile::decode("k", &kf.encode().unwrap()).unwrap();
        assert_eq!(back, kf);
        assert_eq!(*back.open(b"correct horse").unwrap().unwrap().sealed_bytes(), *m.sealed_bytes());
        assert!(back.open(b"correct hors").unwrap().is_none());
        assert!(back.open(b"").unwrap().is_none());
    }

    #[test]
    fn a_copied_identity_is_sealed_with_the_own_key_in_a_version_2_file() {
        let source = MasterKey::generate().unwrap();
        let copy = MasterKey::sharing_identity_of(&source).unwrap();
        let kf = KeyFile::create(&copy, b"pw", "repo2", "00112233aabbccdd", 1, KdfParams::weak_for_tests(), 5).unwrap();
        assert_eq!(kf.version, KEY_FILE_VERSION_COPIED_IDENTITY);
        let back = KeyFile::decode("k", &kf.encode().unwrap()).unwrap().open(b"pw").unwrap().unwrap();
        assert_eq!(*back.sealed_bytes(), *copy.sealed_bytes());
        let (a, b) = (source.keys(), back.keys());
        assert_eq!(
            (a.chunk_id_key(), a.segment_key(), a.chunker_seed()),
            (b.chunk_id_key(), b.segment_key(), b.chunker_seed())
        );
        // Data and metadata are the copy's own: the source's key does not open them.
        let sealed = b.seal(ObjectKind::Frame, b"n", b"data").unwrap();
        assert!(a.open(ObjectKind::Frame, b"n", &sealed, &String::new).is_err());
        // Copying again keeps the first identity.
        let again = MasterKey::sharing_identity_of(&back).unwrap();
        assert_eq!(again.keys().chunk_id_key(), a.chunk_id_key());
    }

    #[test]
    fn changing_any_field_stops_the_key_file_from_opening() {
        let (_, kf) = make(b"pw");
        let mut variants = Vec::new();
        let mut v = kf.clone();
        v.generation = 0; // an older generation replayed under the same id
        variants.push(v);
        let mut v = kf.clone();
        v.repository_id = "repo2".into();
        variants.push(v);
        let mut v = kf.clone();
        v.id = "00112233aabbccde".into();
        variants.push(v);
        let mut v = kf.clone();
        v.created_ms += 1;
        variants.push(v);
        let mut v = kf.clone();
        v.kdf.passes = 2;
        variants.push(v);
        for v in variants {
            assert!(v.open(b"pw").unwrap().is_none(), "{v:?}");
        }
    }

    #[test]
    fn absurd_parameters_and_damaged_fields_are_refused_before_deriving() {
        let (_, kf) = make(b"pw");
        let bomb = |f: &dyn Fn(&mut KdfParams)| {
            let mut v = kf.clone();
            f(&mut v.kdf);
            v
        };
        for v in [
            bomb(&|k| k.memory_kib = u32::MAX),
            bomb(&|k| k.memory_kib = MAX_MEMORY_KIB + 1),
            bomb(&|k| k.memory_kib = 0),
            bomb(&|k| k.passes = 1_000_000),
            bomb(&|k| k.passes = 0),
            bomb(&|k| k.lanes = 0),
            bomb(&|k| k.lanes = 1000),
            bomb(&|k| k.algorithm = "pbkdf2".into()),
        ] {
            assert!(matches!(v.open(b"pw"), Err(Error::BadKeyFile { .. })), "{:?}", v.kdf);
        }
        let mut v = kf.clone();
        v.salt = "zz".into();
        assert!(matches!(v.open(b"pw"), Err(Error::BadKeyFile { .. })));
        let mut v = kf.clone();
        v.sealed_key.pop();
        assert!(matches!(v.open(b"pw"), Err(Error::BadKeyFile { .. })));
        let mut v = kf.clone();
        v.version = 2; // a version 2 file seals 64 bytes
        assert!(matches!(v.open(b"pw"), Err(Error::BadKeyFile { .. })));
        let mut v = kf.clone();
        v.version = 3;
        assert!(matches!(v.open(b"pw"), Err(Error::BadKeyFile { .. })));
        assert!(matches!(KeyFile::decode("k", b"{\"not\": 1}"), Err(Error::BadKeyFile { .. })));
        assert!(
            KeyFile::create(&MasterKey::generate().unwrap(), b"", "r", "i", 1, KdfParams::weak_for_tests(), 0).is_err()
        );
    }

    #[test]
    fn default_parameters_are_about_64_mib_and_3_passes() {
        let d = KdfParams::default();
        assert_eq!((d.memory_kib, d.passes, d.lanes), (65536, 3, 4));
        assert!(d.validate().is_ok());
    }

    #[test]
    fn argon2id_is_pinned() {
        // Our use of the crate (no secret, no associated data, 32 bytes out), checked against
        // the `cryptography` package's Argon2id (OpenSSL) with the same parameters.
        let k = KdfParams::weak_for_tests().derive(b"password", b"somesalt16bytes!").unwrap();
        assert_eq!(&hex(&*k)[..16], "c552a71c0d023a9a");
        // Lanes are computed on several threads: the result must not depend on it.
        let lanes = |lanes, memory_kib, passes| KdfParams { lanes, memory_kib, passes, ..KdfParams::default() };
        let k = lanes(2, 64, 1).derive(b"password", b"somesalt16bytes!").unwrap();
        assert_eq!(&hex(&*k)[..16], "34100fc01c7ed0f9");
        let k = lanes(4, 64, 1).derive(b"password", b"somesalt16bytes!").unwrap();
        assert_eq!(&hex(&*k)[..16], "a114bbb765fca413");
        // The default parameters (RFC 9106's second recommendation: 64 MiB, 3 passes, 4 lanes).
        let k = KdfParams::default().derive(b"password", b"somesalt16bytes!").unwrap();
        assert_eq!(&hex(&*k)[..16], "f4b1623709702420");
    }
}
