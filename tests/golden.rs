//! Pins chunk boundaries and ids for a seeded fixture with the default parameters, so that a
//! change of fastcdc, of our chunking rules or of the hash can never slip in unnoticed: such a
//! change breaks dedup against every existing repository and needs a format version bump.

use strata::backup::split_segment;
use strata::config::ChunkerParams;
use strata::crypto::{MasterKey, Protection};
use strata::manifest::{Content, Extent};

/// 4 MiB of seeded, partly compressible bytes with a zero run and a hole.
fn fixture() -> Vec<u8> {
    let mut x: u64 = 0x5EED;
    let mut v = Vec::with_capacity(4 << 20);
    while v.len() < 4 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Low-entropy bytes half of the time, like real disk data.
        let b = if (x >> 40) & 1 == 0 { (x & 0x0F) as u8 + b'a' } else { x as u8 };
        v.push(b);
    }
    v[1 << 20..(1 << 20) + 200 * 1024].fill(0);
    v
}

fn extents() -> Vec<Extent> {
    extents_with(&Protection::none())
}

fn extents_with(n: &Protection) -> Vec<Extent> {
    let buf = fixture();
    let data = [0..3 << 20, (3 << 20) + 65536..4 << 20];
    let mut out = Vec::new();
    split_segment(&buf, 0, &data, &ChunkerParams::default(), n, &mut out);
    out
}

/// An encrypted repository (master key 32 bytes of 7) cuts with its secret gear seed and names
/// with its chunk id key: pinned as well.
#[test]
fn keyed_boundaries_and_ids_are_pinned() {
    let ex = extents_with(&Protection::keyed(MasterKey::from_bytes([7; 32]).keys()));
    let offsets: Vec<u64> = ex.iter().map(|e| e.offset).take(6).collect();
    assert_eq!(offsets, KEYED_OFFSETS, "keyed chunk boundaries changed");
    let first = ex.iter().find_map(|e| match e.content {
        Content::Chunk { id, .. } => Some(id.to_string()),
        _ => None,
    });
    assert_eq!(first.as_deref(), Some(KEYED_FIRST_ID), "keyed chunk ids changed");
}

#[test]
fn chunk_boundaries_are_pinned() {
    let ex = extents();
    let offsets: Vec<u64> = ex.iter().map(|e| e.offset).take(12).collect();
    assert_eq!(offsets, GOLDEN_OFFSETS, "chunk boundaries changed: see the note at the top of this file");
    assert_eq!(ex.len(), GOLDEN_COUNT);
    // Zero runs and holes are zero extents.
    assert!(ex.iter().any(|e| e.is_zero() && e.offset <= 1 << 20 && e.end() >= (1 << 20) + 196 * 1024));
    assert!(ex.iter().any(|e| e.is_zero() && e.offset <= 3 << 20 && e.end() >= (3 << 20) + 65536));
}

#[test]
fn chunk_ids_are_pinned() {
    let ex = extents();
    let ids: Vec<String> = ex
        .iter()
        .filter_map(|e| match e.content {
            Content::Chunk { id, .. } => Some(id.to_string()),
            Content::Zero | Content::Unused => None,
        })
        .take(3)
        .collect();
    assert_eq!(ids, GOLDEN_IDS, "chunk ids changed: see the note at the top of this file");
    let mut all = blake3::Hasher::new();
    for e in &ex {
        all.update(&e.offset.to_le_bytes());
        all.update(&e.len.to_le_bytes());
        if let Content::Chunk { id, .. } = e.content {
            all.update(&id.0);
        }
    }
    assert_eq!(all.finalize().to_hex().as_str(), GOLDEN_ALL);
}

// Recorded from this implementation on 2026-11-22 (fastcdc 3.1.0, v2020; unchanged by 3.2.1). The first id was
// checked independently: BLAKE3 (the Python `blake3` package) of fixture bytes 0..15978.
const GOLDEN_OFFSETS: [u64; 12] =
    [0, 15978, 29291, 46241, 65239, 87682, 131437, 150620, 186613, 195803, 214800, 240087];
const GOLDEN_COUNT: usize = 196;
const GOLDEN_IDS: [&str; 3] = [
    "d74ce0de19e4377a393f7d97235f5cbcf31b8610a2ba0274e66a0a0fbe217db8",
    "a43053b3ed69dad6f1d623afa97bdd757a4a84e0f1444484ee6aaf0f1dce2fa0",
    "5c4b40270a99c6a9a98d0191a8491ae3c1e8122b27de56cdce0f8d81fae95c12",
];
const GOLDEN_ALL: &str = "227159f706fa676d31276ad977b27e0e9b11151235ce88eaa700a2e1c9935658";

// Recorded on 2026-12-01 (fastcdc 3.2.1, seed = the chunker seed of master key [7; 32],
// 0xa0e2522c9d91ed5f); the first id was checked with the Python `blake3` package: BLAKE3 keyed
// with the chunk id key (derive_key "strata 2026-12-01 chunk id" of the master key) of fixture
// bytes 0..KEYED_OFFSETS[1].
const KEYED_OFFSETS: [u64; 6] = [0, 62867, 81006, 97611, 121445, 168298];
const KEYED_FIRST_ID: &str = "bfa4a258b105b398ac6b869c06a8c73e38eef946a0c7c55acbb44061cebe9cf4";
