//! Hostile input: every decoder of repository bytes returns a value or a typed error on
//! arbitrary bytes, never panics, and never allocates without bound. (Pack trailers, chunk
//! frames and manifests have their own property tests next to their code.)

use proptest::prelude::*;
use strata::config::Config;
use strata::index::{ChunkLoc, PackRecord};
use strata::pack::{compress_frame, decode_chunk, decode_entry, Codec};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn config_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Config::decode(&bytes);
    }

    #[test]
    fn config_with_hostile_numbers(
        min in prop_oneof![0u32..2_000_000, any::<u32>()],
        avg in prop_oneof![0u32..5_000_000, any::<u32>()],
        max in prop_oneof![0u32..20_000_000, any::<u32>()],
        seg in prop_oneof![(0u32..70_000).prop_map(|k| k * 4096), any::<u32>()],
        zr in prop_oneof![(0u32..64).prop_map(|k| k * 4096), any::<u32>()],
        level in -5i32..30,
        pack in prop_oneof![0u64..2 << 30, any::<u64>()],
        depth in any::<u32>(),
    ) {
        let version = strata::config::FORMAT_VERSION;
        let text = format!(r#"{{"format_version":{version},"repository_id":"x","chunker":{{"min_size":{min},"avg_size":{avg},"max_size":{max},"segment_size":{seg},"zero_run_min":{zr}}},"compression":"zstd","compression_level":{level},"pack_target_size":{pack},"encryption":"none","max_chain_depth":{depth}}}"#);
        if let Ok(c) = Config::decode(text.as_bytes()) {
            // Whatever validates must be usable by the chunker without a panic.
            let buf = vec![7u8; 1 << 16];
            let mut out = Vec::new();
            let n = (c.chunker.segment_size as usize).min(buf.len());
            strata::backup::split_segment(&buf[..n], 0, &[0..n], &c.chunker, &strata::crypto::Protection::none(), &mut out);
        }
    }

    #[test]
    fn index_value_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        let _ = ChunkLoc::decode(&bytes);
        let _ = PackRecord::decode(&bytes);
    }

    /// A zstd frame whose size differs from the recorded length, garbage frames and lying
    /// lengths are errors; the recorded length bounds the allocation.
    #[test]
    fn chunk_frames(bytes in proptest::collection::vec(any::<u8>(), 0..300), raw_len in any::<u32>()) {
        let id = strata::id::ChunkId([0; 32]);
        prop_assert!(decode_chunk(&strata::crypto::Protection::none(), id, Codec::Zstd, &bytes, raw_len).is_err());
        let _ = decode_chunk(&strata::crypto::Protection::none(), id, Codec::Raw, &bytes, raw_len);
    }

    /// A chunk inside a frame: any recorded skip, length and frame length is an error or the
    /// chunk itself, never a panic or an allocation beyond the frame bound.
    #[test]
    fn chunks_inside_frames(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..6),
        skip in prop_oneof![0u32..400, any::<u32>()],
        raw_len in prop_oneof![0u32..400, any::<u32>()],
        frame_raw in prop_oneof![0u32..400, any::<u32>()],
    ) {
        let ids: Vec<strata::id::ChunkId> = chunks.iter().map(|c| strata::id::ChunkId::of(c)).collect();
        let refs: Vec<(strata::id::ChunkId, &[u8])> = ids.iter().copied().zip(chunks.iter().map(|c| c.as_slice())).collect();
        let (codec, stored) = compress_frame(&refs, 3).unwrap();
        for (i, id) in ids.iter().enumerate() {
            match decode_entry(&strata::crypto::Protection::none(), *id, codec, &stored, skip, raw_len, frame_raw) {
                Ok(raw) => prop_assert_eq!(&raw, &chunks[i]),
                Err(_) => {}
            }
        }
        // With the true layout every chunk comes back.
        let total: u32 = chunks.iter().map(|c| c.len() as u32).sum();
        let mut at = 0;
        for (i, id) in ids.iter().enumerate() {
            let raw = decode_entry(&strata::crypto::Protection::none(), *id, codec, &stored, at, chunks[i].len() as u32, total).unwrap();
            prop_assert_eq!(&raw, &chunks[i]);
            at += chunks[i].len() as u32;
        }
    }
}
