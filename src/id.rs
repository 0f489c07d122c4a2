//! Content and object identifiers: chunk ids (BLAKE3 of the chunk), pack ids, image ids.

use std::fmt;

use serde::{Deserialize, Serialize};

/// BLAKE3 hash of a chunk's raw bytes; the chunk's name everywhere.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

/// BLAKE3 hash of a whole pack file; also its file name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PackId(pub [u8; 32]);

/// 128 random-ish bits naming one image; shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ImageId(pub [u8; 16]);

impl ChunkId {
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }
}

impl PackId {
    pub fn of(data: &[u8]) -> PackId {
        PackId(*blake3::hash(data).as_bytes())
    }

    /// Path of the pack relative to the repository root.
    pub fn path(&self) -> String {
        let hex = self.to_string();
        format!("packs/{}/{}", &hex[..2], hex)
    }
}

impl ImageId {
    /// A fresh id: hash of random bytes, the time, the process and a counter, so two ids never
    /// collide in practice and none tells anything about its source.
    pub(crate) fn generate(source_id: &str) -> ImageId {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let mut h = blake3::Hasher::new();
        // 16 random bytes: without them an id would be a guessable function of the time, the
        // process and the source, and would confirm a guessed source name in an encrypted
        // repository. The rest keeps ids distinct should the system's generator fail.
        let mut random = [0u8; 16];
        let _ = getrandom::getrandom(&mut random);
        h.update(&random);
        h.update(&now.to_le_bytes());
        h.update(&std::process::id().to_le_bytes());
        h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        h.update(source_id.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.finalize().as_bytes()[..16]);
        ImageId(id)
    }

    pub fn parse(hex: &str) -> Option<ImageId> {
        parse_hex::<16>(hex).map(ImageId)
    }

    pub fn short(&self) -> String {
        self.to_string()[..8].to_string()
    }
}

impl PackId {
    pub fn parse(hex: &str) -> Option<PackId> {
        parse_hex::<32>(hex).map(PackId)
    }
}

fn parse_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    if hex.len() != 2 * N || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

macro_rules! hex_display {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }
    };
}
hex_display!(ChunkId);
hex_display!(PackId);
hex_display!(ImageId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_id_hex_round_trip() {
        let id = ImageId::generate("x");
        assert_eq!(ImageId::parse(&id.to_string()), Some(id));
        assert_eq!(ImageId::parse("zz"), None);
        assert_eq!(ImageId::parse(&"é".repeat(16)), None);
    }
}
