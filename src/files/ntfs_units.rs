//! NTFS compression units: LZNT1 (MS-XCA, section 2.5) as NTFS lays it out, which the `ntfs`
//! crate does not decode. The sub-blocks are decoded by the `lznt1` crate; what is NTFS's
//! own is here: a unit is a run of sub-blocks, each a 16-bit header (bits 0-11: its length in
//! bytes minus 3, header included; bit 15: compressed) and data, each standing for 4,096 bytes.
//! A compressed sub-block that decodes to fewer is followed by zeros (as ntfs-3g and Windows
//! read it, and the crate, which decodes plain LZNT1 streams, does not do); a header of 0 ends
//! the unit, and the rest of the unit is zeros.

/// Bytes a sub-block stands for once decoded.
const BLOCK: usize = 4096;

/// Decodes the compressed unit `input` into `out` (cleared first), `limit` bytes, zeros
/// filling what the unit does not hold; an error says why the bytes are not LZNT1.
pub(super) fn decompress(input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), String> {
    out.clear();
    let mut at = 0;
    while at + 2 <= input.len() && out.len() < limit {
        let header = u16::from_le_bytes([input[at], input[at + 1]]);
        if header == 0 {
            break;
        }
        let size = (header & 0x0fff) as usize + 1;
        let sub_block = input.get(at..at + 2 + size).ok_or("a sub-block runs past the end of its unit")?;
        at += 2 + size;
        let start = out.len();
        if header & 0x8000 == 0 {
            out.extend_from_slice(&sub_block[2..]);
        } else {
            lznt1::decompress(sub_block, out).map_err(|e| e.to_string())?;
        }
        if out.len() - start > BLOCK {
            return Err("a sub-block decodes to more than 4096 bytes".into());
        }
        out.resize(start + BLOCK, 0);
    }
    out.resize(limit, 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::decompress;

    #[test]
    fn literals_back_references_and_stored_blocks_decode() {
        // "abcabcabc": three literals, then a reference 3 back for 6 bytes (offset 2, length 3
        // at position 3: 4 offset bits, token (2 << 12) | 3).
        let token: u16 = (2 << 12) | 3;
        let mut unit = vec![0u8; 0];
        let body = [vec![0b0000_1000], b"abc".to_vec(), token.to_le_bytes().to_vec()].concat();
        unit.extend_from_slice(&((0x8000 | (body.len() + 2 - 3)) as u16).to_le_bytes());
        unit.extend_from_slice(&body);
        // A stored block of 4096 bytes.
        unit.extend_from_slice(&0x3fffu16.to_le_bytes());
        unit.extend_from_slice(&[7u8; 4096]);
        let mut out = Vec::new();
        decompress(&unit, &mut out, 3 * 4096).unwrap();
        assert_eq!(&out[..9], b"abcabcabc");
        assert!(out[9..4096].iter().all(|&b| b == 0), "a short block is followed by zeros");
        assert!(out[4096..8192].iter().all(|&b| b == 7));
        assert!(out[8192..].iter().all(|&b| b == 0), "the rest of the unit is zeros");
    }

    #[test]
    fn damaged_units_are_errors_never_panics() {
        let mut out = Vec::new();
        for input in [&[0x05u8, 0xb0, 0x01, 0x00, 0x00][..], &[0xff, 0xbf], &[0x02, 0xb0, 0x01, 0x10, 0x00]] {
            let _ = decompress(input, &mut out, 65536);
            assert!(out.len() <= 65536);
        }
        let mut state = 1u64;
        for _ in 0..2000 {
            let input: Vec<u8> = (0..64)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = decompress(&input, &mut out, 65536);
        }
    }
}
