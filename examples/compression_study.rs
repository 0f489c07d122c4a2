//! How much would compressing several chunks together save, and at what cost?
//!
//! ```sh
//! cargo run --release --example compression_study -- IMAGE [LEVEL ...]
//! ```
//!
//! Cuts IMAGE the way a backup does (16 MiB segments, zero runs, FastCDC with the default
//! parameters), keeps each distinct chunk once, in disk order, then compresses them with zstd at
//! each LEVEL (default 1 3 5): one frame per chunk (what format version 1 stores), and frames of
//! 4, 16, 64 and 128 consecutive chunks. Prints stored bytes and single-threaded compression time.
//! Used for the study in docs/BENCHMARKS.md; it reads the whole image into memory.

use std::collections::HashSet;
use std::time::Instant;

use strata::backup::split_segment;
use strata::config::ChunkerParams;
use strata::crypto::Protection;
use strata::manifest::Content;

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
        for group in [1usize, 4, 16, 64, 128] {
            let mut compressor = zstd::bulk::Compressor::new(level)?;
            let started = Instant::now();
            let mut stored = 0usize;
            let mut frame = Vec::new();
            for g in chunks.chunks(group) {
                frame.clear();
                for &(offset, len) in g {
                    frame.extend_from_slice(&data[offset..offset + len]);
                }
                stored += compressor.compress(&frame)?.len().min(frame.len());
            }
            let seconds = started.elapsed().as_secs_f64();
            if group == 1 {
                single = stored;
            }
            println!(
                "| {level} | {group} | {:.1} | {:+.1} % | {seconds:.2} |",
                stored as f64 / 1e6,
                (stored as f64 / single as f64 - 1.0) * 100.0
            );
        }
    }
    Ok(())
}
