//! XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha-03): HChaCha20 turns the key and the first 16
//! bytes of the 24-byte nonce into a subkey, and the IETF ChaCha20-Poly1305 of RFC 8439 seals
//! under that subkey with the nonce `0u32 | nonce[16..24]`.
//!
//! Built from two pieces rather than taken whole from `chacha20poly1305`: the system OpenSSL's
//! ChaCha20-Poly1305 (its AVX-512 code where the CPU has it) is 1.4 to 1.8 times as fast here
//! as ring's (2.9-3.9 against 2.0-2.1 GiB/s per core for 16 KiB to 1 MiB, measured back to back
//! with `cargo bench --bench stages -- encryption`; RustCrypto's ran at half of ring's), and
//! neither OpenSSL nor ring has XChaCha; `chacha20`'s `hchacha` supplies the extension. The bytes are the same: a
//! test compares them with RustCrypto's on random inputs, and the envelope test pins a vector
//! checked against other implementations.

use chacha20::cipher::consts::U10;
use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use zeroize::Zeroize;

use super::{NONCE_LEN, TAG_LEN};

/// OpenSSL takes lengths as C ints: longer input goes in pieces of this size.
const PIECE: usize = 1 << 30;

/// A context set up for ChaCha20-Poly1305 under the subkey and 12-byte nonce that a 24-byte
/// XChaCha nonce stands for, with the associated data already in.
fn context(key: &[u8; 32], nonce: &[u8; NONCE_LEN], ad: &[u8], seal: bool) -> Option<CipherCtx> {
    let mut sub = chacha20::hchacha::<U10>(key.into(), (&nonce[..16]).into());
    let mut short = [0u8; 12];
    short[4..].copy_from_slice(&nonce[16..]);
    let mut ctx = CipherCtx::new().ok()?;
    let cipher = Cipher::chacha20_poly1305();
    let init = if seal {
        ctx.encrypt_init(Some(cipher), Some(sub.as_slice()), Some(&short))
    } else {
        ctx.decrypt_init(Some(cipher), Some(sub.as_slice()), Some(&short))
    };
    sub.as_mut_slice().zeroize();
    init.ok()?;
    for piece in ad.chunks(PIECE) {
        ctx.cipher_update(piece, None).ok()?;
    }
    Some(ctx)
}

/// Runs `buf` through the context in place, piece by piece.
fn update(ctx: &mut CipherCtx, buf: &mut [u8]) -> Option<()> {
    for piece in buf.chunks_mut(PIECE) {
        let n = piece.len();
        (ctx.cipher_update_inplace(piece, n).ok()? == n).then_some(())?;
    }
    Some(())
}

/// Encrypts `buf` in place and returns the tag; `None` only if OpenSSL fails (out of memory).
pub(super) fn seal(key: &[u8; 32], nonce: &[u8; NONCE_LEN], ad: &[u8], buf: &mut [u8]) -> Option<[u8; TAG_LEN]> {
    let mut ctx = context(key, nonce, ad, true)?;
    update(&mut ctx, buf)?;
    ctx.cipher_final(&mut []).ok()?;
    let mut tag = [0u8; TAG_LEN];
    ctx.tag(&mut tag).ok()?;
    Some(tag)
}

/// Checks `tag` and decrypts `buf` in place; `false` (and `buf` undefined) when anything differs.
pub(super) fn open(key: &[u8; 32], nonce: &[u8; NONCE_LEN], ad: &[u8], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
    let Some(mut ctx) = context(key, nonce, ad, false) else { return false };
    update(&mut ctx, buf).is_some() && ctx.set_tag(tag).is_ok() && ctx.cipher_final(&mut []).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};

    #[test]
    fn equals_the_rustcrypto_xchacha20poly1305() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        };
        for len in [0usize, 1, 15, 16, 63, 64, 65, 255, 1000, 16 << 10, (64 << 10) + 3] {
            let key: [u8; 32] = std::array::from_fn(|_| next());
            let nonce: [u8; NONCE_LEN] = std::array::from_fn(|_| next());
            let ad: Vec<u8> = (0..len % 40).map(|_| next()).collect();
            let plain: Vec<u8> = (0..len).map(|_| next()).collect();

            let mut ours = plain.clone();
            let tag = seal(&key, &nonce, &ad, &mut ours).unwrap();
            let mut theirs = plain.clone();
            let reference = XChaCha20Poly1305::new((&key).into())
                .encrypt_in_place_detached(XNonce::from_slice(&nonce), &ad, &mut theirs)
                .unwrap();
            assert_eq!(ours, theirs, "ciphertext of {len} bytes");
            assert_eq!(&tag[..], reference.as_slice(), "tag of {len} bytes");

            assert!(open(&key, &nonce, &ad, &mut ours, &tag));
            assert_eq!(ours, plain);
            let mut bad = tag;
            bad[len % TAG_LEN] ^= 0x10;
            let mut again = theirs.clone();
            assert!(!open(&key, &nonce, &ad, &mut again, &bad), "a flipped tag opens");
        }
    }
}
