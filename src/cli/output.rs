//! What the commands print: human summaries and tables, or JSON for scripts.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use strata::timefmt::format_ms;
use strata::{ImageInfo, RestoreReport};

#[derive(Serialize)]
struct ImageJson<'a> {
    image: String,
    kind: &'a str,
    base: Option<String>,
    set: String,
    source: &'a str,
    created: String,
    logical_bytes: u64,
    changed_bytes: u64,
    new_stored_bytes: u64,
    new_raw_bytes: u64,
    new_chunks: u64,
    depth: u32,
    read_skipped: bool,
    seconds: f64,
}

fn to_json(i: &ImageInfo) -> ImageJson<'_> {
    ImageJson {
        image: i.id.to_string(),
        kind: i.kind.name(),
        base: i.base.map(|b| b.to_string()),
        set: i.set.to_string(),
        source: &i.source_id,
        created: format_ms(i.created_ms),
        logical_bytes: i.logical_bytes,
        changed_bytes: i.changed_bytes,
        new_stored_bytes: i.new_stored_bytes,
        new_raw_bytes: i.new_raw_bytes,
        new_chunks: i.new_chunks,
        depth: i.depth,
        read_skipped: i.read_skipped,
        seconds: i.seconds,
    }
}

pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn backup(i: &ImageInfo, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(&to_json(i))?);
        return Ok(());
    }
    let base = i.base.map(|b| format!(" on {}", b.short())).unwrap_or_default();
    let rate = if i.seconds > 0.0 { i.logical_bytes as f64 / i.seconds / 1e6 } else { 0.0 };
    println!("image {} ({}{}) of {}", i.id.short(), i.kind.name(), base, i.source_id);
    if i.read_skipped {
        println!("  source unchanged since its base (size, times, inode): not read; --force-read reads it");
    }
    println!(
        "  disk {}, changed {}, new data {} raw -> {} stored in {} chunks, {:.2} s ({:.0} MB/s)",
        human(i.logical_bytes),
        human(i.changed_bytes),
        human(i.new_raw_bytes),
        human(i.new_stored_bytes),
        i.new_chunks,
        i.seconds,
        rate
    );
    Ok(())
}

pub fn images(list: &[ImageInfo], json: bool) -> Result<()> {
    if json {
        let v: Vec<ImageJson> = list.iter().map(to_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no images yet");
        return Ok(());
    }
    println!(
        "{:<8}  {:<12}  {:<8}  {:<8}  {:<20}  {:>10}  {:>10}  {:>10}  source",
        "image", "kind", "base", "set", "created", "size", "changed", "stored"
    );
    for i in list {
        println!(
            "{:<8}  {:<12}  {:<8}  {:<8}  {:<20}  {:>10}  {:>10}  {:>10}  {}",
            i.id.short(),
            i.kind.name(),
            i.base.map(|b| b.short()).unwrap_or_else(|| "-".into()),
            i.set.short(),
            format_ms(i.created_ms),
            human(i.logical_bytes),
            human(i.changed_bytes),
            human(i.new_stored_bytes),
            i.source_id
        );
    }
    Ok(())
}

pub fn restore(i: &ImageInfo, r: &RestoreReport, target: &Path, json: bool) -> Result<()> {
    if json {
        let v = serde_json::json!({
            "image": i.id.to_string(),
            "target": target.display().to_string(),
            "bytes": r.bytes,
            "zero_bytes": r.zero_bytes,
            "seconds": r.seconds,
        });
        println!("{v}");
        return Ok(());
    }
    let rate = if r.seconds > 0.0 { r.bytes as f64 / r.seconds / 1e6 } else { 0.0 };
    println!(
        "restored image {} ({}) to {}: {} ({} as holes or zeros), {:.2} s ({:.0} MB/s)",
        i.id.short(),
        i.kind.name(),
        target.display(),
        human(r.bytes),
        human(r.zero_bytes),
        r.seconds,
        rate
    );
    Ok(())
}
