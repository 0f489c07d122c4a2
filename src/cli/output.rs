//! What the commands print: human summaries and tables, or JSON for scripts.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use strata::backup::BackupOutcome;
use strata::check::CheckReport;
use strata::forget::{ForgetPlan, ForgetReport};
use strata::manifest::DamagedImage;
use strata::prune::{PackAction, PrunePlan, PruneReport};
use strata::recover::RebuildReport;
use strata::stats::Stats;
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
    unused_bytes: u64,
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
        unused_bytes: i.unused_bytes,
        seconds: i.seconds,
    }
}

fn temporary_files(n: usize) -> String {
    format!("{n} temporary file{}", if n == 1 { "" } else { "s" })
}

/// A rate in MiB/s, the unit the progress bars use too.
fn mib_per_s(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds / (1024.0 * 1024.0)
    } else {
        0.0
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

/// The object `backup --json` prints (`run --json` adds to it).
pub fn backup_json(o: &BackupOutcome) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(to_json(&o.info))?;
    v["bytes_read"] = o.bytes_read.into();
    v["bytes_reused"] = o.bytes_reused.into();
    v["chunk_bytes_reused"] = o.chunk_bytes_reused.into();
    v["warnings"] = o.warnings.clone().into();
    v["regions"] = serde_json::to_value(&o.regions)?;
    Ok(v)
}

pub fn backup(o: &BackupOutcome, json: bool) -> Result<()> {
    let i = &o.info;
    for w in &o.warnings {
        eprintln!("strata: warning: {w}");
    }
    for r in o.regions.iter().filter(|r| r.notice.is_some()) {
        let fs = r.filesystem.as_deref().map(|f| format!(" ({f})")).unwrap_or_default();
        eprintln!("strata: note: {}{fs}: {}", r.name, r.notice.as_deref().unwrap_or_default());
    }
    if json {
        println!("{}", backup_json(o)?);
        return Ok(());
    }
    let base = i.base.map(|b| format!(" on {}", b.short())).unwrap_or_default();
    // Over the bytes read: holes of a sparse disk are not read and would inflate a rate.
    let rate = mib_per_s(o.bytes_read, i.seconds);
    println!("image {} ({}{}) of {}", i.id.short(), i.kind.name(), base, i.source_id);
    if i.read_skipped {
        println!("  source unchanged since its base (size, times, inode): not read; --force-read reads it");
    }
    println!(
        "  disk {}, read {}, changed {}, new data {} raw -> {} stored in {} chunks, {:.2} s ({:.0} MiB/s read)",
        human(i.logical_bytes),
        human(o.bytes_read),
        human(i.changed_bytes),
        human(i.new_raw_bytes),
        human(i.new_stored_bytes),
        i.new_chunks,
        i.seconds,
        rate
    );
    if i.unused_bytes > 0 {
        println!(
            "  {} the filesystems do not use: not read, restored as zeros (--all-blocks reads every block)",
            human(i.unused_bytes)
        );
    }
    Ok(())
}

pub fn images(list: &[ImageInfo], damaged: &[DamagedImage], json: bool) -> Result<()> {
    if json {
        // Damaged images carry `"damaged": true` and a `reason`; the fields their footer still
        // gives, when it decodes.
        let mut v: Vec<serde_json::Value> =
            list.iter().map(|i| serde_json::to_value(to_json(i))).collect::<Result<_, _>>()?;
        for d in damaged {
            let mut o = match &d.info {
                Some(i) => serde_json::to_value(to_json(i))?,
                None => serde_json::json!({"image": d.id.to_string()}),
            };
            o["damaged"] = true.into();
            o["reason"] = d.reason.clone().into();
            v.push(o);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if list.is_empty() && damaged.is_empty() {
        println!("no images yet");
        return Ok(());
    }
    println!(
        "{:<8}  {:<12}  {:<8}  {:<8}  {:<20}  {:>10}  {:>10}  {:>10}  {:>10}  source",
        "image", "kind", "base", "set", "created", "size", "changed", "stored", "unused"
    );
    for i in list {
        println!(
            "{:<8}  {:<12}  {:<8}  {:<8}  {:<20}  {:>10}  {:>10}  {:>10}  {:>10}  {}",
            i.id.short(),
            i.kind.name(),
            i.base.map(|b| b.short()).unwrap_or_else(|| "-".into()),
            i.set.short(),
            format_ms(i.created_ms),
            human(i.logical_bytes),
            human(i.changed_bytes),
            human(i.new_stored_bytes),
            human(i.unused_bytes),
            i.source_id
        );
    }
    for d in damaged {
        let what =
            d.info.as_ref().map(|i| format!(" ({} of {}, {})", i.kind.name(), i.source_id, format_ms(i.created_ms)));
        println!(
            "{}  DAMAGED{}: {}; `strata forget {}` removes it",
            d.id.short(),
            what.unwrap_or_default(),
            d.reason,
            d.id.short()
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
            "written_bytes": r.written_bytes,
            "seconds": r.seconds,
            "damaged": r.damaged.iter().map(|d| serde_json::json!({"offset": d.offset, "len": d.len, "reason": d.reason})).collect::<Vec<_>>(),
        });
        println!("{v}");
        return Ok(());
    }
    for d in &r.damaged {
        println!("damaged: bytes {}..{} ({}) written as zeros: {}", d.offset, d.offset + d.len, human(d.len), d.reason);
    }
    let written = r.written_bytes;
    let rate = mib_per_s(written, r.seconds);
    println!(
        "restored image {} ({}) to {}: {} ({} of data written, {} as holes or zeros), {:.2} s ({:.0} MiB/s written)",
        i.id.short(),
        i.kind.name(),
        target.display(),
        human(r.bytes),
        human(written),
        human(r.zero_bytes),
        r.seconds,
        rate
    );
    Ok(())
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

pub fn stats(s: &Stats, json: bool) -> Result<()> {
    if json {
        return stats_json(s);
    }
    stats_text(s);
    Ok(())
}

fn stats_json(s: &Stats) -> Result<()> {
    let r = &s.repository;
    {
        let sets: Vec<_> = s
            .sets
            .iter()
            .map(|x| {
                serde_json::json!({
                    "set": x.set.to_string(), "source": x.source_id, "images": x.images,
                    "logical_bytes": x.logical_bytes, "stored_bytes": x.stored_bytes,
                    "shared_bytes": x.shared_bytes, "exclusive_bytes": x.exclusive_bytes,
                    "raw_bytes": x.raw_bytes, "chunks": x.chunks,
                    "first": format_ms(x.first_ms), "last": format_ms(x.last_ms),
                })
            })
            .collect();
        let images: Vec<_> = s.images.iter().map(to_json).collect();
        let v = serde_json::json!({
            "images": images,
            "sets": sets,
            "repository": {
                "images": r.images, "sets": r.sets, "logical_bytes": r.logical_bytes,
                "raw_referenced_bytes": r.raw_referenced, "stored_referenced_bytes": r.stored_referenced,
                "chunks": r.chunks, "pack_bytes": r.pack_bytes, "packs": r.packs,
                "dead_bytes": r.dead_bytes, "dead_fraction": pct(r.dead_bytes, r.pack_bytes) / 100.0,
                "dedup_ratio": r.dedup_ratio, "compression_ratio": r.compression_ratio,
                "counters_stale": r.counters_stale,
                "temporary_files": r.temporary_files, "temporary_bytes": r.temporary_bytes,
            }
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

fn stats_text(s: &Stats) {
    let r = &s.repository;
    let mut source = None;
    for set in &s.sets {
        if source != Some(&set.source_id) {
            println!("source {}", set.source_id);
            source = Some(&set.source_id);
        }
        println!(
            "  set {}: {} image{}, {} logical; stores {} ({} shared with other sets, {} only here: forget + prune frees it)",
            set.set.short(),
            set.images,
            if set.images == 1 { "" } else { "s" },
            human(set.logical_bytes),
            human(set.stored_bytes),
            human(set.shared_bytes),
            human(set.exclusive_bytes)
        );
        println!(
            "    {:<8}  {:<12}  {:<20}  {:>10}  {:>10}  {:>10}",
            "image", "kind", "created", "size", "delta", "new stored"
        );
        for i in s.images.iter().filter(|i| i.set == set.set) {
            let kind = if i.synthetic { format!("{}*", i.kind.name()) } else { i.kind.name().to_string() };
            println!(
                "    {:<8}  {:<12}  {:<20}  {:>10}  {:>10}  {:>10}",
                i.id.short(),
                kind,
                format_ms(i.created_ms),
                human(i.logical_bytes),
                human(i.changed_bytes),
                human(i.new_stored_bytes)
            );
        }
    }
    if s.images.iter().any(|i| i.synthetic) {
        println!("  (* synthetic full: made from stored data, metadata only)");
    }
    println!(
        "repository: {} image{} in {} set{}, {} logical; {} raw data referenced in {} chunks, stored as {}",
        r.images,
        if r.images == 1 { "" } else { "s" },
        r.sets,
        if r.sets == 1 { "" } else { "s" },
        human(r.logical_bytes),
        human(r.raw_referenced),
        r.chunks,
        human(r.stored_referenced)
    );
    println!(
        "  packs: {} holding {}, {} ({:.1} %) no longer referenced (prune reclaims it)",
        r.packs,
        human(r.pack_bytes),
        human(r.dead_bytes),
        pct(r.dead_bytes, r.pack_bytes)
    );
    println!("  dedup ratio {:.2}, compression ratio {:.2}", r.dedup_ratio, r.compression_ratio);
    if r.counters_stale {
        println!(
            "  note: an interrupted operation left counters stale; the next backup, forget or prune rebuilds them"
        );
    }
    if r.temporary_files > 0 {
        println!(
            "  note: {} ({}) left by interrupted runs; the next backup, forget or prune removes them",
            temporary_files(r.temporary_files),
            human(r.temporary_bytes)
        );
    }
}

pub fn forget(
    plan: &ForgetPlan,
    report: &ForgetReport,
    pruned: Option<&PruneReport>,
    dry_run: bool,
    json: bool,
) -> Result<()> {
    if json {
        let rw: Vec<_> = plan
            .rewrite
            .iter()
            .map(|r| serde_json::json!({"image": r.image.to_string(), "new_base": r.new_base.map(|b| b.to_string())}))
            .collect();
        let v = serde_json::json!({
            "dry_run": dry_run,
            "forget": plan.forget.iter().map(|i| i.id).chain(plan.forget_damaged.iter().copied()).map(|i| i.to_string()).collect::<Vec<_>>(),
            "keep": plan.keep.iter().map(|i| i.id.to_string()).collect::<Vec<_>>(),
            "rewrite": rw,
            "unreferenced_bytes": report.unreferenced_bytes,
            "prune": pruned.map(prune_json),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let verb = if dry_run { "would" } else { "did" };
    for i in &plan.keep {
        let why = plan.reasons.get(&i.id).map(|r| r.join(", ")).unwrap_or_else(|| "not named".into());
        println!("keep    {}  {:<12}  {}  ({why})", i.id.short(), i.kind.name(), format_ms(i.created_ms));
    }
    for i in &plan.forget {
        println!("forget  {}  {:<12}  {}", i.id.short(), i.kind.name(), format_ms(i.created_ms));
    }
    for id in &plan.forget_damaged {
        println!("forget  {}  (damaged manifest, not catalogued)", id.short());
    }
    for r in &plan.rewrite {
        match r.new_base {
            Some(b) => println!("rewrite {}  onto {} (consolidated, metadata only)", r.image.short(), b.short()),
            None => println!("rewrite {}  into a synthetic full (metadata only)", r.image.short()),
        }
    }
    println!(
        "{verb} forget {} image{}, rewrite {}; {} of data is then unreferenced{}",
        report.forgotten,
        if report.forgotten == 1 { "" } else { "s" },
        report.rewritten,
        human(report.unreferenced_bytes),
        if pruned.is_none() { " (`strata prune` frees it)" } else { "" }
    );
    if let Some(p) = pruned {
        print_prune(p);
    }
    Ok(())
}

fn prune_json(p: &PruneReport) -> serde_json::Value {
    serde_json::json!({
        "packs_deleted": p.packs_deleted, "packs_repacked": p.packs_repacked,
        "packs_written": p.packs_written, "chunks_removed": p.chunks_removed, "bytes_freed": p.bytes_freed,
        "temporaries_removed": p.temporaries_removed, "temporary_bytes_removed": p.temporary_bytes_removed,
    })
}

fn print_prune(p: &PruneReport) {
    println!(
        "pruned: {} packs deleted, {} repacked into {}, {} chunks removed, {} freed",
        p.packs_deleted,
        p.packs_repacked,
        p.packs_written,
        p.chunks_removed,
        human(p.bytes_freed)
    );
    if p.temporaries_removed > 0 {
        println!(
            "removed {} ({}) left by interrupted runs",
            temporary_files(p.temporaries_removed),
            human(p.temporary_bytes_removed)
        );
    }
}

pub fn prune(plan: &PrunePlan, report: Option<&PruneReport>, json: bool) -> Result<()> {
    if json {
        let v = serde_json::json!({
            "dry_run": report.is_none(),
            "dead_chunks": plan.dead_chunks,
            "packs_to_delete": plan.packs.values().filter(|(a, _)| *a == PackAction::Delete).count(),
            "packs_to_repack": plan.packs.values().filter(|(a, _)| *a == PackAction::Repack).count(),
            "orphan_packs": plan.orphans.len(),
            "kept_orphan_packs": plan.kept_orphans.iter().map(|(p, why)| serde_json::json!({"pack": p, "why": why})).collect::<Vec<_>>(),
            "manifests_read": plan.manifests_read,
            "bytes_removed": plan.bytes_removed(),
            "bytes_rewritten": plan.bytes_rewritten(),
            "dead_bytes_kept": plan.dead_bytes_kept,
            "result": report.map(prune_json),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let deletes = plan.packs.values().filter(|(a, _)| *a == PackAction::Delete).count();
    println!(
        "{} unreferenced chunks; {} packs to delete, {} to repack ({} of live data copied), {} orphan pack files; frees about {}; {} of dead data stays in packs under the threshold",
        plan.dead_chunks,
        deletes,
        plan.packs.len() - deletes,
        human(plan.bytes_rewritten()),
        plan.orphans.len(),
        human(plan.bytes_removed().saturating_sub(plan.bytes_rewritten())),
        human(plan.dead_bytes_kept)
    );
    println!("  {} manifests read to prove that no image needs what goes", plan.manifests_read);
    for (p, why) in &plan.kept_orphans {
        println!("  kept pack file {p}: {why}");
    }
    match report {
        Some(p) => print_prune(p),
        None => println!("dry run: nothing changed"),
    }
    Ok(())
}

pub fn copy(r: &strata::copy::CopyReport, json: bool) -> Result<()> {
    if json {
        let v = serde_json::json!({
            "copied": r.copied.iter().map(|i| i.id.to_string()).collect::<Vec<_>>(),
            "present": r.present.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            "chunks": r.chunks,
            "raw_bytes": r.raw_bytes,
            "chunks_present": r.chunks_present,
            "packs": r.packs,
            "stored_bytes": r.stored_bytes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for i in &r.copied {
        println!("copied {} {} {} of {}", i.id.short(), i.kind.name(), format_ms(i.created_ms), i.source_id);
    }
    println!(
        "{} images copied, {} already there; {} chunks ({}) stored in {} packs ({}), {} chunks already there",
        r.copied.len(),
        r.present.len(),
        r.chunks,
        human(r.raw_bytes),
        r.packs,
        human(r.stored_bytes),
        r.chunks_present
    );
    Ok(())
}

pub fn check(r: &CheckReport, json: bool) -> Result<()> {
    if json {
        let problems: Vec<_> = r
            .problems
            .iter()
            .map(|p| {
                serde_json::json!({"kind": p.kind, "object": p.object, "detail": p.detail,
                    "images": p.images.iter().map(|i| i.to_string()).collect::<Vec<_>>()})
            })
            .collect();
        let images: Vec<_> = r
            .images
            .iter()
            .map(|i| serde_json::json!({"image": i.id.to_string(), "restorable": i.restorable, "reasons": i.reasons}))
            .collect();
        let v = serde_json::json!({
            "clean": r.is_clean(), "problems": problems, "images": images, "orphan_packs": r.orphan_packs,
            "packs_read": r.packs_read, "chunks_read": r.chunks_read, "bytes_read": r.bytes_read, "seconds": r.seconds,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for p in &r.problems {
        let imgs = if p.images.is_empty() {
            String::new()
        } else {
            format!(" (breaks {})", p.images.iter().map(|i| i.short()).collect::<Vec<_>>().join(", "))
        };
        println!("problem: {} {}: {}{imgs}", p.kind, p.object, p.detail);
    }
    for i in &r.images {
        if i.restorable {
            println!("image {}: restorable", i.id.short());
        } else {
            println!("image {}: DAMAGED: {}", i.id.short(), i.reasons.join("; "));
        }
    }
    if !r.orphan_packs.is_empty() {
        println!(
            "{} pack files are not in the index and no image needs them (left by interrupted runs; prune deletes them)",
            r.orphan_packs.len()
        );
    }
    let verdict = if r.is_clean() { "no problems found" } else { "problems found" };
    if r.packs_read == 0 {
        // The structure alone (without --read-data): say so, not "0 packs read and verified".
        let n = r.images.len();
        println!(
            "{verdict}: the structure of {n} image{} checked in {:.2} s, no chunk data read (--read-data reads and re-hashes every chunk)",
            if n == 1 { "" } else { "s" },
            r.seconds
        );
        return Ok(());
    }
    let rate = mib_per_s(r.bytes_read, r.seconds);
    println!(
        "{verdict}: {} packs, {} chunks ({}) read and verified in {:.2} s ({rate:.0} MiB/s)",
        r.packs_read,
        r.chunks_read,
        human(r.bytes_read),
        r.seconds
    );
    Ok(())
}

pub fn rebuild(r: &RebuildReport, json: bool) -> Result<()> {
    if json {
        let v = serde_json::json!({
            "packs": r.packs, "chunks": r.chunks, "images": r.images,
            "unreadable_packs": r.unreadable_packs.iter().map(|(p, why)| serde_json::json!({"pack": p, "error": why})).collect::<Vec<_>>(),
            "unreadable_manifests": r.unreadable_manifests.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            "old_index": r.old_index.as_ref().map(|p| p.display().to_string()),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("index rebuilt from {} packs ({} chunks) and {} manifests", r.packs, r.chunks, r.images);
    for (p, why) in &r.unreadable_packs {
        println!("  unreadable pack {p}: {why}");
    }
    for i in &r.unreadable_manifests {
        println!("  unreadable manifest of image {i}: listed as damaged; prune waits until it is restored or forgotten (`strata forget {}`)", i.short());
    }
    if let Some(old) = &r.old_index {
        println!("  the old index is kept in {} (delete it once all is well)", old.display());
    }
    Ok(())
}

pub fn unlocked(u: &strata::storage::remote_lock::Unlocked, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(u)?);
        return Ok(());
    }
    if u.local {
        println!("nothing to remove: a local repository's lock ends when its holder exits");
        return Ok(());
    }
    if u.locks.is_empty() {
        println!("the repository is not locked");
        return Ok(());
    }
    let mut alive = Vec::new();
    for l in &u.locks {
        let renewed = strata::timefmt::format_ms(l.refreshed_ms);
        let mode = l.mode.name();
        if l.removed {
            println!("removed the {mode} lock of {} (last renewed {renewed})", l.holder);
        } else {
            alive.push(format!("{} ({mode}, renewed {renewed})", l.holder));
        }
    }
    if !alive.is_empty() {
        anyhow::bail!(
            "the lock of {} looks alive: wait for it, or use --force if you know that process is gone",
            alive.join(", ")
        );
    }
    Ok(())
}

pub fn keys(keys: &[strata::crypto::keyring::KeyInfo], json: bool) -> Result<()> {
    if json {
        let v: Vec<_> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "id": k.id, "created_ms": k.created_ms, "current": k.current, "live": k.live,
                    "kdf": { "algorithm": k.kdf.algorithm, "memory_kib": k.kdf.memory_kib, "passes": k.kdf.passes, "lanes": k.kdf.lanes },
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{:<16}  {:<20}  {:<24}  note", "key", "created", "kdf");
    for k in keys {
        let kdf = format!("{} {} MiB, {} passes", k.kdf.algorithm, k.kdf.memory_kib / 1024, k.kdf.passes);
        let note = match (k.current, k.live) {
            (true, _) => "this password",
            (false, true) => "",
            (false, false) => "not live (unlocks nothing; delete it)",
        };
        println!("{:<16}  {:<20}  {:<24}  {note}", k.id, strata::timefmt::format_ms(k.created_ms), kdf);
    }
    Ok(())
}

pub fn partitions(info: &ImageInfo, table: &strata::partition::Table, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(table)?);
        return Ok(());
    }
    let scheme = match table.scheme {
        strata::partition::Scheme::Gpt => "GPT",
        strata::partition::Scheme::Mbr => "MBR",
        strata::partition::Scheme::None => {
            println!("image {}: no partition table ({})", info.id.short(), human(info.logical_bytes));
            return Ok(());
        }
    };
    println!(
        "image {}: {scheme}, sector size {}, {} partitions",
        info.id.short(),
        table.sector_size,
        table.partitions.len()
    );
    println!("  {:>3}  {:>14}  {:>10}  {:<36}  {:<12}  label", "#", "start", "size", "type", "filesystem");
    for p in &table.partitions {
        println!(
            "  {:>3}  {:>14}  {:>10}  {:<36}  {:<12}  {}",
            p.number,
            p.start,
            human(p.size),
            format!("{} ({})", p.type_name, if p.type_id.len() > 4 { &p.type_id[..8] } else { &p.type_id }),
            p.filesystem.unwrap_or("-"),
            p.label.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// `ls`: names (with `recursive`, paths); `long` adds type and mode, owner, size and mtime;
/// `json` prints one object per entry, one per line.
pub fn ls(entries: &[strata::files::Entry], long: bool, recursive: bool, json: bool) -> Result<()> {
    use std::io::Write;
    use strata::files::EntryKind;
    let mut out = std::io::stdout().lock();
    for e in entries {
        if json {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
            continue;
        }
        let name = if recursive { e.path.as_str() } else { e.name() };
        let link = e.target.as_ref().map(|t| format!(" -> {t}")).unwrap_or_default();
        if long {
            let kind = match e.kind {
                EntryKind::File => '-',
                EntryKind::Dir => 'd',
                EntryKind::Symlink => 'l',
                EntryKind::Fifo => 'p',
                EntryKind::CharDevice => 'c',
                EntryKind::BlockDevice => 'b',
                EntryKind::Socket => 's',
                EntryKind::Other => '?',
            };
            let time = strata::timefmt::format_ms(u64::try_from(e.mtime).unwrap_or(0).saturating_mul(1000));
            writeln!(out, "{kind}{:04o} {:>6} {:>6} {:>12} {time} {name}{link}", e.mode, e.uid, e.gid, e.size)?;
        } else {
            writeln!(out, "{name}")?;
        }
    }
    Ok(())
}

pub fn extract(report: &strata::files::ExtractReport, to: &Path, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!(
        "extracted into {}: {} files ({}), {} directories, {} symlinks{}",
        to.display(),
        report.files,
        human(report.bytes),
        report.dirs,
        report.symlinks,
        if report.fifos > 0 { format!(", {} fifos", report.fifos) } else { String::new() }
    );
    for (path, why) in &report.skipped {
        println!("  skipped {path}: {why}");
    }
    for (path, why) in &report.failed {
        eprintln!("  NOT extracted {path}: {why}");
    }
    Ok(())
}

pub fn diff(changes: &[strata::files::Change], json: bool) -> Result<()> {
    use strata::files::ChangeKind;
    if json {
        println!("{}", serde_json::to_string_pretty(changes)?);
        return Ok(());
    }
    for c in changes {
        let mark = match c.change {
            ChangeKind::Added => "+",
            ChangeKind::Removed => "-",
            ChangeKind::Modified => "M",
            ChangeKind::Type => "T",
        };
        let what = if c.what.is_empty() { String::new() } else { format!(" ({})", c.what.join(", ")) };
        println!("{mark} {}{what}", c.path);
    }
    Ok(())
}
