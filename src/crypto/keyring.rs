//! The key files of a repository and the list that says which of them are live.
//!
//! Key files live under `keys/`, one per password. Which ones are live is recorded in the
//! config's `key_list`, sealed with the metadata key (kind `Config`, named by the repository id):
//! a key file that opens with the password but is not on the list (a removed key put back, a
//! key file copied from another repository, one left by an interrupted `key add`) does not
//! unlock the repository. Changes keep at least one password working at every step: `add`
//! writes the key file, then the list; `remove` drops it from the list, then deletes the file;
//! a password change is an `add` of a new key file and a `remove` of the old one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::keyfile::{hex, unhex, KdfParams, KeyFile};
use super::{Keys, MasterKey, ObjectKind};
use crate::error::{Error, Result};
use crate::storage::Backend;

/// Where key files live.
pub const KEYS: &str = "keys";

/// At most this many key files are tried (each costs one Argon2 derivation): a repository
/// stuffed with key files cannot make opening it take hours.
pub const MAX_KEY_FILES: usize = 32;

/// A key file is small; anything larger is not one.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// The live key files: id → generation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    pub keys: BTreeMap<String, u64>,
}

impl KeyList {
    /// Sealed for the config's `key_list` (hex).
    pub fn seal(&self, keys: &Keys, repository_id: &str) -> Result<String> {
        let plain = serde_json::to_vec(self).map_err(|e| Error::Internal { reason: e.to_string() })?;
        Ok(hex(&keys.seal(ObjectKind::Config, repository_id.as_bytes(), &plain)?))
    }

    pub fn open(sealed_hex: &str, keys: &Keys, repository_id: &str) -> Result<KeyList> {
        let what = || "the config's key list".to_string();
        let sealed = unhex(sealed_hex).ok_or_else(|| Error::Decrypt { what: what() })?;
        let plain = keys.open(ObjectKind::Config, repository_id.as_bytes(), &sealed, &what)?;
        serde_json::from_slice(&plain).map_err(|e| Error::Decrypt { what: format!("{} ({e})", what()) })
    }
}

pub fn key_path(id: &str) -> String {
    format!("{KEYS}/{id}")
}

/// What `list` shows of one key file (nothing secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub created_ms: u64,
    pub kdf: KdfParams,
    /// On the repository's list of live keys.
    pub live: bool,
    /// The key file that opened the repository in this process.
    pub current: bool,
}

/// The key files under `keys/`, parsed (a file that does not parse is an error naming it).
pub fn read_key_files(backend: &dyn Backend) -> Result<Vec<Result<KeyFile>>> {
    let mut out = Vec::new();
    for path in backend.list(KEYS)? {
        let name = path.rsplit('/').next().unwrap_or(&path).to_string();
        if name.starts_with(".tmp.") {
            continue;
        }
        let read = || -> Result<KeyFile> {
            if backend.size(&path)? > MAX_KEY_FILE_LEN {
                return Err(Error::BadKeyFile { path: path.clone(), reason: "larger than any key file".into() });
            }
            let kf = KeyFile::decode(&path, &backend.get(&path)?)?;
            if kf.id != name {
                return Err(Error::BadKeyFile { path: path.clone(), reason: format!("it says it is key {}", kf.id) });
            }
            Ok(kf)
        };
        out.push(read());
    }
    Ok(out)
}

/// Opens the repository's master key with `password`: the first key file that opens with it
/// and is on the sealed key list. Returns the master key and the key file's id.
pub fn unlock(
    backend: &dyn Backend,
    repository_id: &str,
    key_list: &str,
    password: &[u8],
) -> Result<(MasterKey, String)> {
    let files = read_key_files(backend)?;
    if files.is_empty() {
        return Err(Error::BadKeyFile {
            path: KEYS.into(),
            reason: "the repository is encrypted but has no key file (the keys/ folder is empty or missing); restore it from a copy".into(),
        });
    }
    let mut tried = 0;
    let mut unlisted = None;
    let mut damaged = Vec::new();
    for file in files {
        let kf = match file {
            Ok(kf) => kf,
            Err(e) => {
                damaged.push(e.to_string());
                continue;
            }
        };
        if kf.repository_id != repository_id {
            damaged.push(format!("keys/{} belongs to repository {}", kf.id, kf.repository_id));
            continue;
        }
        if tried == MAX_KEY_FILES {
            break;
        }
        tried += 1;
        let master = match kf.open(password) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => {
                damaged.push(e.to_string());
                continue;
            }
        };
        let list = KeyList::open(key_list, &master.keys(), repository_id)?;
        if list.keys.get(&kf.id) == Some(&kf.generation) {
            return Ok((master, kf.id));
        }
        unlisted = Some(kf.id);
    }
    if let Some(id) = unlisted {
        return Err(Error::BadKeyFile {
            path: key_path(&id),
            reason: "it opens with this password but is not one of the repository's live keys (a removed key put back, or one left by an interrupted `key add`); use another password, or delete it".into(),
        });
    }
    if tried == 0 && !damaged.is_empty() {
        return Err(Error::BadKeyFile { path: KEYS.into(), reason: damaged.join("; ") });
    }
    Err(Error::WrongPassword { tried })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalDir;

    fn repo_with_key(password: &[u8]) -> (tempfile::TempDir, LocalDir, MasterKey, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalDir::new(dir.path());
        let m = MasterKey::generate().unwrap();
        let id = KeyFile::new_id().unwrap();
        let kf = KeyFile::create(&m, password, "repo", &id, 1, KdfParams::weak_for_tests(), 1).unwrap();
        b.put(&key_path(&id), &kf.encode().unwrap()).unwrap();
        let mut list = KeyList::default();
        list.keys.insert(id.clone(), 1);
        let sealed = list.seal(&m.keys(), "repo").unwrap();
        (dir, b, m, id, sealed)
    }

    #[test]
    fn the_right_password_unlocks_and_others_do_not() {
        let (_d, b, m, id, list) = repo_with_key(b"pw");
        let (got, got_id) = unlock(&b, "repo", &list, b"pw").unwrap();
        assert_eq!((got.sealed_bytes().to_vec(), got_id), (m.sealed_bytes().to_vec(), id));
        assert!(matches!(unlock(&b, "repo", &list, b"nope"), Err(Error::WrongPassword { tried: 1 })));
        assert!(matches!(unlock(&b, "other repo", &list, b"pw"), Err(Error::BadKeyFile { .. })));
    }

    #[test]
    fn a_key_file_not_on_the_list_does_not_unlock() {
        let (_d, b, m, _id, list) = repo_with_key(b"pw");
        // A second key file for the same master key, never listed (a removed key put back).
        let extra = KeyFile::new_id().unwrap();
        let kf = KeyFile::create(&m, b"old", "repo", &extra, 1, KdfParams::weak_for_tests(), 2).unwrap();
        b.put(&key_path(&extra), &kf.encode().unwrap()).unwrap();
        let err = unlock(&b, "repo", &list, b"old").unwrap_err().to_string();
        assert!(err.contains("not one of the repository's live keys"), "{err}");
        assert!(unlock(&b, "repo", &list, b"pw").is_ok());
        // A key list from another key does not open.
        let other = MasterKey::generate().unwrap();
        let forged = KeyList::default().seal(&other.keys(), "repo").unwrap();
        assert!(matches!(unlock(&b, "repo", &forged, b"pw"), Err(Error::Decrypt { .. })));
    }

    #[test]
    fn missing_damaged_and_renamed_key_files_are_clear_errors() {
        let (_d, b, _m, id, list) = repo_with_key(b"pw");
        b.put(&key_path("0000000000000000"), b"{ not json").unwrap();
        assert!(unlock(&b, "repo", &list, b"pw").is_ok(), "a damaged key file beside a good one");
        b.remove(&key_path(&id)).unwrap();
        let err = unlock(&b, "repo", &list, b"pw").unwrap_err();
        assert!(matches!(err, Error::BadKeyFile { .. }), "{err}");
        b.remove(&key_path("0000000000000000")).unwrap();
        let err = unlock(&b, "repo", &list, b"pw").unwrap_err().to_string();
        assert!(err.contains("no key file"), "{err}");
    }
}
