//! What a repository argument names. Only local directories are built so far; an argument that
//! names a remote store (`s3:http://HOST/BUCKET`, `sftp:host:/dir`, anything `scheme://…`) is
//! refused instead of being taken for a local directory called `s3:http:`.

use std::path::Path;

use crate::error::{Error, Result};

/// Schemes other backup tools use for remote repositories (restic, rustic, borg, rclone).
const REMOTE_SCHEMES: &[&str] =
    &["s3", "sftp", "ssh", "rest", "rclone", "b2", "azure", "gs", "swift", "http", "https", "opendal"];

/// The scheme of `arg` when it names a remote store: a first component `SCHEME:REST` where
/// SCHEME is one of the known remote schemes or REST starts with `//`. A local directory whose
/// name has a colon is still reachable as `./NAME`.
pub fn remote_scheme(arg: &Path) -> Option<String> {
    let text = arg.to_str()?;
    let (scheme, rest) = text.split_once(':')?;
    let well_formed = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c));
    if !well_formed {
        return None;
    }
    let lower = scheme.to_ascii_lowercase();
    (REMOTE_SCHEMES.contains(&lower.as_str()) || rest.starts_with("//")).then_some(lower)
}

/// Refuses a repository argument that names a remote store (see `remote_scheme`).
pub fn refuse_remote(arg: &Path) -> Result<()> {
    match remote_scheme(arg) {
        Some(scheme) => Err(Error::UnsupportedLocation { location: arg.display().to_string(), scheme }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_stores_are_told_apart_from_local_directories() {
        for remote in [
            "s3:http://127.0.0.1:9000/bucket",
            "S3:https://h/b/prefix",
            "sftp:user@host:/srv/repo",
            "rest:http://host/",
            "ftp://host/dir",
            "b2:bucket",
        ] {
            assert!(remote_scheme(Path::new(remote)).is_some(), "{remote} taken for a local directory");
            assert!(matches!(refuse_remote(Path::new(remote)), Err(Error::UnsupportedLocation { .. })));
        }
        for local in
            ["/var/backups/strata", "repo", "./s3:http://x", "backup:2026-12-01", "/mnt/s3:http://x", "1s3:x", ""]
        {
            assert_eq!(remote_scheme(Path::new(local)), None, "{local} taken for a remote store");
            assert!(refuse_remote(Path::new(local)).is_ok());
        }
    }
}
