//! The repository config: format version and the parameters fixed at `init` (chunker, compression, packs).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::site::Site;

/// Version of the on-disk format described in docs/FORMAT.md.
pub const FORMAT_VERSION: u32 = 5;

/// The oldest format this version still reads: a version 3 repository differs only in having no
/// unused extents, and is marked version 4 by the first writer that opens it (`upgrade`).
pub const OLDEST_READABLE_VERSION: u32 = 3;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// FastCDC v2020 minimum, average and maximum chunk sizes in bytes.
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// The disk is cut into segments of this size that are chunked independently (in parallel);
    /// a chunk never crosses a segment boundary. Multiple of 4096.
    pub segment_size: u32,
    /// Runs of 4 KiB-aligned zero blocks at least this long become zero extents before chunking.
    pub zero_run_min: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        // 16 KiB average: the brief's measurement put incrementals at 0.23-0.42x restic's daily
        // growth at 16 KiB against 0.45-0.56x at 64 KiB; min = avg/4 and max = 8x avg as measured.
        ChunkerParams {
            min_size: 4 * 1024,
            avg_size: 16 * 1024,
            max_size: 128 * 1024,
            segment_size: 16 * 1024 * 1024,
            zero_run_min: 64 * 1024,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub format_version: u32,
    /// Random id of this repository, so that two repositories are never confused.
    pub repository_id: String,
    pub chunker: ChunkerParams,
    /// Only "zstd" exists in format version 1.
    pub compression: String,
    pub compression_level: i32,
    /// A pack is sealed once it holds at least this many bytes.
    pub pack_target_size: u64,
    /// "none", or "repokey": keyed chunk ids and sealed objects, the master key in key files
    /// (`keys/`) opened by passwords (docs/FORMAT.md, "Encryption").
    pub encryption: String,
    /// With "repokey": the live key files, sealed with the metadata key (hex;
    /// `crypto::keyring::KeyList`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_list: Option<String>,
    /// A backup whose chain would grow deeper than this writes a synthetic full instead
    /// (metadata only: its data is deduplicated). 0 disables the bound.
    #[serde(default = "default_max_chain_depth")]
    pub max_chain_depth: u32,
}

fn default_max_chain_depth() -> u32 {
    DEFAULT_MAX_CHAIN_DEPTH
}

/// The zstd level of a new repository. Level 1 rather than zstd's own default 3: on this
/// project's workloads it takes a full from 0.55x to 0.41x restic's time for 6.6 % more
/// repository, still smaller than restic's (docs/BENCHMARKS.md, "zstd level 1 by default").
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 1;

/// Restores resolve at most this many deltas, and a damaged old delta never takes down images
/// more than this many backups later.
pub(crate) const DEFAULT_MAX_CHAIN_DEPTH: u32 = 30;

impl Config {
    pub fn new(chunker: ChunkerParams, compression_level: i32) -> Config {
        let id = crate::id::ImageId::generate("repository");
        Config {
            format_version: FORMAT_VERSION,
            repository_id: id.to_string(),
            chunker,
            compression: "zstd".into(),
            compression_level,
            pack_target_size: 32 * 1024 * 1024,
            encryption: "none".into(),
            key_list: None,
            max_chain_depth: DEFAULT_MAX_CHAIN_DEPTH,
        }
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self).map_err(|e| Error::BadConfig { reason: e.to_string() })?;
        v.push(b'\n');
        Ok(v)
    }

    pub fn decode(bytes: &[u8]) -> Result<Config> {
        let c: Config = serde_json::from_slice(bytes).map_err(|e| Error::BadConfig { reason: e.to_string() })?;
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&c.format_version) {
            return Err(Error::UnsupportedFormat { found: c.format_version, supported: FORMAT_VERSION });
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks every parameter against the limits of fastcdc and our own format, so that no
    /// later stage can panic on a hand-edited config.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::BadConfig { reason });
        let p = &self.chunker;
        use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN};
        if !(MINIMUM_MIN..=MINIMUM_MAX).contains(&p.min_size)
            || !(AVERAGE_MIN..=AVERAGE_MAX).contains(&p.avg_size)
            || !(MAXIMUM_MIN..=MAXIMUM_MAX).contains(&p.max_size)
            || !(p.min_size <= p.avg_size && p.avg_size <= p.max_size)
        {
            return bad(format!(
                "chunk sizes min {} / avg {} / max {} are outside FastCDC's limits or out of order",
                p.min_size, p.avg_size, p.max_size
            ));
        }
        if p.segment_size % 4096 != 0 || p.segment_size < p.max_size || p.segment_size > 256 * 1024 * 1024 {
            return bad(format!(
                "segment size {} must be a multiple of 4096 between the maximum chunk size and 256 MiB",
                p.segment_size
            ));
        }
        if p.zero_run_min % 4096 != 0 || p.zero_run_min == 0 {
            return bad(format!("zero run minimum {} must be a positive multiple of 4096", p.zero_run_min));
        }
        if self.compression != "zstd" || !(1..=22).contains(&self.compression_level) {
            return bad(format!(
                "compression {} level {} is not supported (zstd, 1..=22)",
                self.compression, self.compression_level
            ));
        }
        match (self.encryption.as_str(), &self.key_list) {
            ("none", None) | ("repokey", Some(_)) => {}
            ("none", Some(_)) => return bad("encryption \"none\" with a key list".into()),
            ("repokey", None) => return bad("encryption \"repokey\" without its key list".into()),
            (other, _) => return bad(format!("encryption {other:?} is not supported by this version")),
        }
        if !(1024 * 1024..=1024 * 1024 * 1024).contains(&self.pack_target_size) {
            return bad(format!("pack target size {} must be between 1 MiB and 1 GiB", self.pack_target_size));
        }
        Ok(())
    }
}

/// Marks an older repository that this version reads (`OLDEST_READABLE_VERSION` on) as the
/// current version, before a writer stores anything an older strata would misread (a version 4
/// manifest): from then on an older strata refuses the repository instead of misreading it.
pub(crate) fn upgrade(site: &Site, config: &mut Config) -> Result<()> {
    if config.format_version < FORMAT_VERSION {
        config.format_version = FORMAT_VERSION;
        write(site, config)?;
    }
    Ok(())
}

/// The config of the repository at `root` (a directory or a bucket); a place without one is
/// not a repository (or, when it holds packs or images, one whose config is lost).
pub fn read(root: &std::path::Path) -> Result<Config> {
    read_from(&Site::open(root)?)
}

pub(crate) fn read_from(site: &Site) -> Result<Config> {
    Config::decode(&site.config_bytes()?)
}

pub(crate) fn write(site: &Site, config: &Config) -> Result<()> {
    site.put_config(&config.encode()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_rejects_nonsense() {
        let c = Config::new(ChunkerParams::default(), 3);
        assert_eq!(Config::decode(&c.encode().unwrap()).unwrap(), c);
        let mut bad = c.clone();
        bad.chunker.avg_size = 1;
        assert!(matches!(Config::decode(&bad.encode().unwrap()), Err(Error::BadConfig { .. })));
        let mut future = c;
        let mut old = future.clone();
        old.format_version = OLDEST_READABLE_VERSION;
        assert_eq!(Config::decode(&old.encode().unwrap()).unwrap().format_version, OLDEST_READABLE_VERSION);
        old.format_version = OLDEST_READABLE_VERSION - 1;
        assert!(matches!(Config::decode(&old.encode().unwrap()), Err(Error::UnsupportedFormat { .. })));
        future.format_version = 99;
        assert!(matches!(Config::decode(&future.encode().unwrap()), Err(Error::UnsupportedFormat { found: 99, .. })));
        assert!(Config::decode(b"\xff\x00garbage").is_err());
    }
}
