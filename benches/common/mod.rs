//! Inputs shared by the benchmarks.

/// Seeded generators: random, text-like (compressible), all zeros, and a mix of the three.
pub fn data(kind: &str, len: usize) -> Vec<u8> {
    let mut x: u64 = 0x1234_5678_9ABC_DEF1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words: [&[u8]; 6] = [b"the ", b"disk ", b"image ", b"of ", b"backup\n", b"chunk "];
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        let region = match kind {
            "mixed" => ["random", "text", "zeros"][(v.len() / (1 << 20)) % 3],
            k => k,
        };
        match region {
            "random" => v.extend_from_slice(&next().to_le_bytes()),
            "text" => v.extend_from_slice(words[(next() % 6) as usize]),
            _ => v.extend_from_slice(&[0u8; 64]),
        }
    }
    v.truncate(len);
    v
}
