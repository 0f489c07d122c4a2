//! What a repository argument names: a local directory, or a prefix of an S3 bucket
//! (`s3:http[s]://HOST[:PORT]/BUCKET[/PREFIX]`). An argument that names another remote store
//! (`sftp:host:/dir`, anything `scheme://…`) is refused instead of being taken for a local
//! directory called `sftp:host:`.

use std::path::{Path, PathBuf};

use super::s3::S3Url;
use crate::error::{Error, Result};

/// Schemes other backup tools use for remote repositories (restic, rustic, borg, rclone).
const REMOTE_SCHEMES: &[&str] =
    &["s3", "sftp", "ssh", "rest", "rclone", "b2", "azure", "gs", "swift", "http", "https", "opendal"];

/// Where a repository lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3(S3Url),
}

impl Location {
    /// Parses a repository argument: `s3:…` is a bucket, another remote scheme is an error,
    /// anything else a local directory.
    pub fn parse(arg: &Path) -> Result<Location> {
        match remote_scheme(arg) {
            Some(scheme) if scheme == "s3" => {
                // remote_scheme only answers for UTF-8 arguments.
                let text = arg.to_str().unwrap_or_default();
                let rest = text.split_once(':').map(|(_, r)| r).unwrap_or_default();
                Ok(Location::S3(S3Url::parse(rest)?))
            }
            Some(scheme) => Err(Error::UnsupportedLocation { location: arg.display().to_string(), scheme }),
            None => Ok(Location::Local(arg.into())),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3(u) => write!(f, "{u}"),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_stores_are_told_apart_from_local_directories() {
        for remote in ["sftp:user@host:/srv/repo", "rest:http://host/", "ftp://host/dir", "b2:bucket"] {
            assert!(remote_scheme(Path::new(remote)).is_some(), "{remote} taken for a local directory");
            assert!(matches!(Location::parse(Path::new(remote)), Err(Error::UnsupportedLocation { .. })));
        }
        for bucket in ["s3:http://127.0.0.1:9000/bucket", "S3:https://h/b/prefix"] {
            assert!(matches!(Location::parse(Path::new(bucket)), Ok(Location::S3(_))), "{bucket}");
        }
        assert!(matches!(Location::parse(Path::new("s3:bucket")), Err(Error::BadLocation { .. })));
        for local in
            ["/var/backups/strata", "repo", "./s3:http://x", "backup:2026-12-01", "/mnt/s3:http://x", "1s3:x", ""]
        {
            assert_eq!(remote_scheme(Path::new(local)), None, "{local} taken for a remote store");
            assert_eq!(Location::parse(Path::new(local)).unwrap(), Location::Local(local.into()));
        }
    }
}
