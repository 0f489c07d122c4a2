//! The generation file (docs/FORMAT.md, "generation"): the number of the last writing command
//! that finished, written after that command's last index batch. The index records the same
//! number in that batch, so an index whose number is lower lost records that a finished command
//! wrote: its write-ahead log was damaged, or an older copy was put back.

use super::{paths, Backend};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"STRATAGN";

/// The repository's generation (0 when no writing command has finished yet).
pub fn read(backend: &dyn Backend) -> Result<u64> {
    let bytes = match backend.get(paths::GENERATION) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(0),
        Err(e) => return Err(e),
    };
    let bad =
        || Error::BadConfig { reason: "the generation file is damaged; `strata rebuild-index` writes it again".into() };
    if bytes.len() != 24 || &bytes[..8] != MAGIC || blake3::hash(&bytes[..16]).as_bytes()[..8] != bytes[16..] {
        return Err(bad());
    }
    Ok(u64::from_le_bytes(bytes[8..16].try_into().map_err(|_| bad())?))
}

pub fn write(backend: &dyn Backend, generation: u64) -> Result<()> {
    // magic [8] | generation u64 LE | first 8 bytes of BLAKE3 of the 16 bytes before
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&generation.to_le_bytes());
    let sum = blake3::hash(&b);
    b.extend_from_slice(&sum.as_bytes()[..8]);
    backend.put(paths::GENERATION, &b)
}
