//! How much would compressing several chunks together save, and at what cost?
//!
//! ```sh
//! cargo run --release --example compression_study -- IMAGE [LEVEL ...]
//! ```
//!
//! Cuts IMAGE the way a backup does (16 MiB segments, zero runs, FastCDC with the default
//! parameters), keeps each distinct chunk once, in disk order, then compresses them with zstd at
//! each LEVEL (default 1 3 5): one frame per chunk (what format version 1 stores), frames of 4,
//! 16, 64 and 128 consecutive chunks, and frames of `FRAME_TARGET` bytes (1 MiB) and twice that
//! (chunks added until a frame holds at least that many bytes, as a backup groups them). Prints
//! stored bytes and single-threaded compression time.
//! Used for the study in docs/BENCHMARKS.md; it reads the whole image into memory.

use std::collections::HashSet;
use std::time::Instant;

use strata::backup::split_segment;
use strata::config::ChunkerParams;
use strata::crypto::Protection;
use strata::manifest::Content;
use strata::pack::FRAME_TARGET;

/// How chunks are grouped into frames: a fixed number each, or until a frame holds this many bytes.
#[derive(Clone, Copy, PartialEq)]
enum Grouping {
    Chunks(usize),
    Bytes(usize),
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: compression_study IMAGE [LEVEL ...]")?;
    let levels: Vec<i32> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    let levels = if levels.is_empty() { vec![1, 3, 5] } else { levels };
    let data = std::fs::read(&path)?;
    let params = ChunkerParams::default();
    let segment = params.segment_size as usize;
    let mut chunks: Vec<(usize, usize)> = Vec::new();
    let mut seen = HashSet::new();
    let mut extents = Vec::new();
    for start in (0..data.len()).step_by(segment) {
        let end = (start + segment).min(data.len());
        extents.clear();
        split_segment(&data[start..end], start as u64, &[0..end - start], &params, &Protection::none(), &mut extents);
        for e in &extents {
            if let Content::Chunk { id, .. } = e.content {
                if seen.insert(id) {
                    chunks.push((e.offset as usize, e.len as usize));
                }
            }
        }
    }
    let raw: usize = chunks.iter().map(|c| c.1).sum();
    println!("{path}: {} distinct chunks, {:.1} MB", chunks.len(), raw as f64 / 1e6);
    println!("| zstd level | chunks per frame | stored MB | vs one frame per chunk | compression s (1 core) |");
    println!("|---|---|---|---|---|");
    for level in levels {
        let mut single = 0usize;
        let groupings = [1usize, 4, 16, 64, 128].map(Grouping::Chunks).into_iter();
        for grouping in groupings.chain([Grouping::Bytes(FRAME_TARGET), Grouping::Bytes(2 * FRAME_TARGET)]) {
            let mut compressor = zstd::bulk::Compressor::new(level)?;
            let started = Instant::now();
            let mut stored = 0usize;
            let mut frame = Vec::new();
            let mut in_frame = 0;
            for (i, &(offset, len)) in chunks.iter().enumerate() {
                frame.extend_from_slice(&data[offset..offset + len]);
                in_frame += 1;
                let full = match grouping {
                    Grouping::Chunks(n) => in_frame == n,
                    Grouping::Bytes(n) => frame.len() >= n,
                };
                if full || i + 1 == chunks.len() {
                    stored += compressor.compress(&frame)?.len().min(frame.len());
                    frame.clear();
                    in_frame = 0;
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            if grouping == Grouping::Chunks(1) {
                single = stored;
            }
            let group = match grouping {
                Grouping::Chunks(n) => n.to_string(),
                Grouping::Bytes(n) => format!("{} MiB of them", n >> 20),
            };
            println!(
                "| {level} | {group} | {:.1} | {:+.1} % | {seconds:.2} |",
                stored as f64 / 1e6,
                (stored as f64 / single as f64 - 1.0) * 100.0
            );
        }
    }
    Ok(())
}
