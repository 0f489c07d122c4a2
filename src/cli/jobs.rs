//! The job commands: `run` and `jobs`. The library decides and does; this reads the clock and the
//! terminal, and prints.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use jiff::tz::TimeZone;
use strata::job::{Job, RunOptions};
use strata::repository::Access;
use strata::{Kind, Repository};

use super::output::{self, human};
use super::progress;

/// `strata run --kind`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum RunKind {
    Auto,
    Full,
    Differential,
    Incremental,
    Prompt,
}

/// The clock: `STRATA_NOW` (RFC 3339) when set, for simulated runs and tests.
fn clock() -> Result<Option<u64>> {
    match std::env::var("STRATA_NOW") {
        Ok(text) if !text.is_empty() => {
            let t: jiff::Timestamp = text.parse().map_err(|e| {
                anyhow::anyhow!("STRATA_NOW {text:?} is not an RFC 3339 time such as 2026-12-01T02:00:00Z ({e})")
            })?;
            Ok(Some(t.as_millisecond().max(0) as u64))
        }
        _ => Ok(None),
    }
}

fn now_ms(clock: Option<u64>) -> u64 {
    clock.unwrap_or_else(|| jiff::Timestamp::now().as_millisecond().max(0) as u64)
}

/// The password of the job's repository: a flag on the command line wins, then the job's
/// `password_file` or `password_command`, then `STRATA_PASSWORD` or a prompt.
fn credentials(job: &Job) -> std::sync::Arc<strata::repository::Credentials> {
    match (&job.password, super::password_flag_given()) {
        (Some(source), false) => std::sync::Arc::new(strata::repository::Credentials::from_source(source.clone())),
        _ => super::credentials(),
    }
}

/// The job's repository, else `-r`/`STRATA_REPO`.
fn repository(job: &Job, cli_repo: &Option<PathBuf>) -> Result<PathBuf> {
    job.repository.clone().or_else(|| cli_repo.clone()).with_context(|| {
        format!("job {} names no repository: add `repository = ...` to {}, or pass -r", job.name, job.path.display())
    })
}

pub(super) fn run(cli_repo: &Option<PathBuf>, name: &str, kind: RunKind, json: bool) -> Result<()> {
    let job = Job::load(name)?;
    let clock = clock()?;
    let tz = TimeZone::system();
    let path = super::well_formed(repository(&job, cli_repo)?)?;
    let repo = Repository::open_writer_as(&path, "run", super::access(Access::exclusive()), &credentials(&job))
        .with_context(|| format!("cannot open repository {} of job {}", path.display(), job.name))?;
    let kind = match kind {
        RunKind::Auto => None,
        RunKind::Full => Some(Kind::Full),
        RunKind::Differential => Some(Kind::Differential),
        RunKind::Incremental => Some(Kind::Incremental),
        RunKind::Prompt => Some(prompt(&repo, &job, now_ms(clock), &tz)?),
    };
    let opts = RunOptions { kind, now_ms: clock, tz };
    let bar = progress::Bar::new(json);
    let outcome = strata::job::run(&repo, &job, &opts, &bar).with_context(|| format!("job {}", job.name))?;
    bar.clear();
    for w in &outcome.warnings {
        eprintln!("strata: warning: {w}");
    }
    let r = &outcome.record;
    if json {
        let mut v = match &outcome.backup {
            Some(b) => output::backup_json(b)?,
            None => serde_json::json!({}),
        };
        v["job"] = job.name.clone().into();
        v["result"] = r.result.clone().into();
        v["reason"] = outcome.due.reason.clone().into();
        v["forgotten"] = outcome.forgotten.iter().map(|i| i.to_string()).collect::<Vec<_>>().into();
        v["pruned_bytes"] = outcome.pruned_bytes.into();
        v["verified"] = outcome.verified.into();
        if let Some(e) = &r.error {
            v["error"] = e.clone().into();
        }
        println!("{v}");
    } else {
        println!("job {}: {} ({})", job.name, outcome.due.kind.name(), outcome.due.reason);
        if let Some(b) = &outcome.backup {
            output::backup(b, false)?;
        }
        if !outcome.forgotten.is_empty() || outcome.pruned_bytes > 0 {
            println!("retention: forgot {} images, pruned {}", outcome.forgotten.len(), human(outcome.pruned_bytes));
        }
        match outcome.verified {
            Some(true) => println!("verified: no problems"),
            Some(false) => println!("verified: PROBLEMS FOUND"),
            None => {}
        }
    }
    if let Some(e) = &r.error {
        anyhow::bail!("job {} failed: {e}", job.name);
    }
    Ok(())
}

/// `--kind prompt`: what each choice costs and means, then the user's answer.
fn prompt(repo: &Repository, job: &Job, now_ms: u64, tz: &TimeZone) -> Result<Kind> {
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        anyhow::bail!("--kind prompt asks on a terminal, and there is none; choose --kind auto, full, differential or incremental");
    }
    let id = strata::job::source_id(job)?;
    let images: Vec<_> = repo.images()?.into_iter().filter(|i| i.source_id == id).collect();
    let due = strata::job::due(&job.scheme, &images, jiff::Timestamp::from_millisecond(now_ms as i64)?, tz);
    let mut err = std::io::stderr().lock();
    writeln!(err, "job {} (source {id}); the scheme says: {} ({})", job.name, due.kind.name(), due.reason)?;
    let full = images.iter().rev().find(|i| i.kind == Kind::Full);
    match full {
        None => writeln!(err, "  the source has no backup set yet: only a full is possible")?,
        Some(f) => {
            let days = now_ms.saturating_sub(f.created_ms) as f64 / 86_400_000.0;
            let newest = images.last().unwrap_or(f);
            let last_diff = images.iter().rev().find(|i| i.set == f.set && i.kind == Kind::Differential);
            writeln!(err, "  f  full: a new set; reads and may store the whole disk ({})", human(f.logical_bytes))?;
            writeln!(
                err,
                "  d  differential: changes since the full of {:.1} days ago; the last one stored {}",
                days,
                last_diff.map_or("nothing (there is none yet)".into(), |d| human(d.new_stored_bytes))
            )?;
            writeln!(
                err,
                "  i  incremental: changes since the newest image; the chain becomes {} deep",
                newest.depth + 1
            )?;
        }
    }
    write!(err, "which kind? [f/d/i, Enter for {}] ", due.kind.name())?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "" => Ok(due.kind),
        "f" | "full" => Ok(Kind::Full),
        "d" | "differential" if full.is_some() => Ok(Kind::Differential),
        "i" | "incremental" if full.is_some() => Ok(Kind::Incremental),
        other => anyhow::bail!("{other:?} is not one of the kinds offered; nothing was backed up"),
    }
}

/// `strata jobs`: every job file in the config directory, with its last run and what is due.
pub(super) fn jobs(cli_repo: &Option<PathBuf>, json: bool) -> Result<()> {
    let dir = strata::job::config_dir().join("jobs");
    let mut names: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    names.sort();
    let clock = now_ms(clock()?);
    let tz = TimeZone::system();
    let mut rows = Vec::new();
    for path in &names {
        rows.push(job_status(path, cli_repo, clock, &tz));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no jobs in {}", dir.display());
    }
    for row in &rows {
        let name = row["job"].as_str().unwrap_or_default();
        if let Some(e) = row["error"].as_str() {
            println!("{name}: {e}");
            continue;
        }
        println!("{name}: {}", row["source"].as_str().unwrap_or_default());
        match row.get("last_run").filter(|r| !r.is_null()) {
            Some(r) => println!(
                "  last run  {} {} {} {}",
                strata::timefmt::format_ms(r["started_ms"].as_u64().unwrap_or(0)),
                r["kind"].as_str().unwrap_or("-"),
                r["result"].as_str().unwrap_or("-"),
                r["image"].as_str().map(|i| &i[..i.len().min(12)]).unwrap_or("no image"),
            ),
            None => println!("  last run  never"),
        }
        let next = row["next_run_ms"].as_u64().map_or("no scheme".into(), strata::timefmt::format_ms);
        let (kind, why) = (row["due_kind"].as_str().unwrap_or("-"), row["due_reason"].as_str().unwrap_or("-"));
        println!("  due now   {kind} ({why}); next timer {next}");
    }
    Ok(())
}

/// One job's status as JSON, or `{"job", "path", "error"}` when it cannot be read.
fn job_status(path: &Path, cli_repo: &Option<PathBuf>, now_ms: u64, tz: &TimeZone) -> serde_json::Value {
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let status = || -> Result<serde_json::Value> {
        let job = Job::load(&path.to_string_lossy())?;
        let repo_path = repository(&job, cli_repo)?;
        let repo = Repository::open_with(&repo_path, &credentials(&job))
            .with_context(|| format!("cannot open repository {}", repo_path.display()))?;
        Ok(serde_json::to_value(strata::job::status(&repo, &job, now_ms, tz)?)?)
    };
    status().unwrap_or_else(
        |e| serde_json::json!({"job": name, "path": path.display().to_string(), "error": format!("{e:#}")}),
    )
}

/// `strata schedule JOB --systemd|--cron`.
pub(super) fn schedule(
    cli_repo: &Option<PathBuf>,
    name: &str,
    cron: bool,
    user: bool,
    out: Option<&Path>,
) -> Result<()> {
    let job = Job::load(name)?;
    let exe = std::env::current_exe().context("cannot find the path of this strata binary")?;
    let repo = cli_repo.as_deref();
    if cron {
        for line in strata::job::units::cron_lines(&job, &exe, repo)? {
            println!("{line}");
        }
        return Ok(());
    }
    let units = strata::job::units::systemd_units(&job, &exe, repo)?;
    let dir = match out {
        Some(d) => d.to_path_buf(),
        None if user => {
            let base =
                strata::job::xdg_config_home().context("neither XDG_CONFIG_HOME nor HOME is set: pass --out DIR")?;
            base.join("systemd/user")
        }
        None => PathBuf::from("/etc/systemd/system"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (file, text) in &units {
        let path = dir.join(file);
        let tmp = dir.join(format!(".{file}.strata-tmp"));
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    let timer = format!("{}.timer", strata::job::units::unit_stem(&job.name));
    let scope: &[&str] = if user { &["--user"] } else { &[] };
    if out.is_some() {
        return Ok(());
    }
    if !Path::new("/run/systemd/system").exists() {
        println!(
            "systemd is not running here; once it is: systemctl {}enable --now {timer}",
            if user { "--user " } else { "" }
        );
        return Ok(());
    }
    for args in [&["daemon-reload"][..], &["enable", "--now", &timer][..]] {
        let status =
            std::process::Command::new("systemctl").args(scope).args(args).status().context("cannot run systemctl")?;
        if !status.success() {
            anyhow::bail!("systemctl {} failed ({status}); the units are written in {}", args.join(" "), dir.display());
        }
    }
    println!("enabled {timer}");
    Ok(())
}
