//! One run of a job, in this order, with the repository opened for writing by the caller (its
//! lock makes two runs at once impossible):
//!
//! 1. decide the kind (the scheme, or what the caller asks for) from the source's images;
//! 2. run the `before` hooks: one that fails cancels the run, and nothing is written;
//! 3. `min_free`: while the repository's filesystem has less free space, forget the source's
//!    oldest whole set (never the newest) and prune;
//! 4. back up (the commit point of the image is its manifest, as for `strata backup`);
//! 5. retention (`forget` on this source only, then `prune` when asked);
//! 6. verification of the new image, or of the whole repository;
//! 7. the `after` hooks, always, with `STRATA_RESULT` saying how the run went;
//! 8. the run's record, `runs/<job>/<start>.json`, put atomically (so `strata jobs` answers from
//!    any machine that opens the repository).
//!
//! A crash anywhere leaves what `backup`, `forget` and `prune` leave on their own: an image is
//! stored or it is not, and a forget or prune is resumed by the next writer. A run that dies
//! before step 8 has no record; the images it made are listed all the same.

use std::process::{Command, Stdio};
use std::time::Duration;

use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use super::file::{AfterBackup, Job};
use super::scheme::{at, due, Due};
use crate::backup::{BackupOptions, BackupOutcome, KindRequest};
use crate::check::ReadData;
use crate::error::{Error, Result};
use crate::forget::ForgetRequest;
use crate::id::ImageId;
use crate::manifest::{ImageInfo, Kind};
use crate::progress::Progress;
use crate::repository::Repository;
use crate::storage::paths;

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// `None`: the scheme decides (`--kind auto`).
    pub kind: Option<Kind>,
    /// The clock for every decision and for the new image's time: `None` is the system clock;
    /// `Some` (`STRATA_NOW`) must not be earlier than the repository's newest image.
    pub now_ms: Option<u64>,
    /// The zone calendar expressions are read in (the machine's, `TZ`).
    pub tz: TimeZone,
}

/// What `strata jobs` shows of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub job: String,
    /// Milliseconds since the epoch, on the run's clock.
    pub started_ms: u64,
    pub ended_ms: u64,
    /// `ok`, `failed` (backup, retention or verification), or `cancelled` (a `before` hook).
    pub result: String,
    pub kind: Option<String>,
    pub image: Option<String>,
    pub error: Option<String>,
}

/// What a run did.
#[derive(Debug)]
pub struct RunOutcome {
    pub due: Due,
    pub backup: Option<BackupOutcome>,
    /// Images forgotten by `min_free` and by retention.
    pub forgotten: Vec<ImageId>,
    pub pruned_bytes: u64,
    /// `None`: not asked for.
    pub verified: Option<bool>,
    pub record: RunRecord,
    /// Problems that did not fail the run (an `after` hook that failed).
    pub warnings: Vec<String>,
}

/// The source id a job's images carry: `source_id`, or the source's canonical path as `backup`
/// gives it.
pub fn source_id(job: &Job) -> Result<String> {
    if let Some(id) = &job.source_id {
        return Ok(id.clone());
    }
    std::fs::canonicalize(&job.source)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|cause| Error::SourceOpen { path: job.source.clone(), cause })
}

fn now_ms(opts: &RunOptions) -> u64 {
    opts.now_ms.unwrap_or_else(crate::timefmt::now_ms)
}

/// Runs `job` once into `repo` (opened for writing). `Err` only when nothing was attempted (a
/// bad clock, a missing source, a cancelled run); a run that fails later returns its outcome
/// with `record.result == "failed"` and the error, after the `after` hooks ran.
pub fn run(repo: &Repository, job: &Job, opts: &RunOptions, progress: &dyn Progress) -> Result<RunOutcome> {
    let started_ms = now_ms(opts);
    let id = source_id(job)?;
    if !job.source.exists() {
        let cause = std::io::Error::from(std::io::ErrorKind::NotFound);
        return Err(Error::SourceOpen { path: job.source.clone(), cause });
    }
    let all = repo.images()?;
    // Image times rise in catalog order across the repository (a backup's time is after every
    // earlier image's), so a simulated clock behind any image could not be the new image's.
    if let (Some(now), Some(newest)) = (opts.now_ms, all.iter().map(|i| i.created_ms).max()) {
        if now < newest {
            return Err(Error::ClockBehind { now: at(now).to_string(), newest: at(newest).to_string() });
        }
    }
    let images: Vec<ImageInfo> = all.into_iter().filter(|i| i.source_id == id).collect();
    let due = match opts.kind {
        Some(kind) => Due { kind, reason: "asked for".into() },
        None => due(&job.scheme, &images, at(started_ms), &opts.tz),
    };
    let mut record = RunRecord {
        job: job.name.clone(),
        started_ms,
        ended_ms: started_ms,
        result: "ok".into(),
        kind: Some(due.kind.name().into()),
        image: None,
        error: None,
    };
    let kind_name = due.kind.name();
    let env = |record: &RunRecord| {
        vec![
            ("STRATA_JOB", job.name.clone()),
            ("STRATA_KIND", kind_name.to_string()),
            ("STRATA_IMAGE", record.image.clone().unwrap_or_default()),
            ("STRATA_RESULT", record.result.clone()),
        ]
    };
    for hook in &job.hooks.before {
        if let Err(reason) = run_hook(hook, job.hooks.timeout, &env(&record)) {
            record.result = "cancelled".into();
            record.error = Some(format!("before hook {hook:?} {reason}"));
            let mut warnings = Vec::new();
            after_hooks(job, &env(&record), &mut warnings);
            record.ended_ms = now_ms(opts).max(started_ms);
            put_record(repo, &record)?;
            return Err(Error::HookFailed { job: job.name.clone(), hook: hook.clone(), reason });
        }
    }
    let mut outcome = RunOutcome {
        due,
        backup: None,
        forgotten: Vec::new(),
        pruned_bytes: 0,
        verified: None,
        record,
        warnings: vec![],
    };
    if let Err(e) = steps(repo, job, &id, opts, &mut outcome, progress) {
        outcome.record.result = "failed".into();
        outcome.record.error = Some(e.to_string());
    }
    let env = env(&outcome.record);
    after_hooks(job, &env, &mut outcome.warnings);
    outcome.record.ended_ms = now_ms(opts).max(started_ms);
    put_record(repo, &outcome.record)?;
    Ok(outcome)
}

/// Steps 3 to 6; the first error ends the run.
fn steps(
    repo: &Repository,
    job: &Job,
    id: &str,
    opts: &RunOptions,
    out: &mut RunOutcome,
    progress: &dyn Progress,
) -> Result<()> {
    if let Some(min_free) = job.min_free {
        if repo.backend().available().is_none() {
            // A bucket has no free space to speak of.
            out.warnings.push(format!(
                "min_free is not applied: {} cannot tell how much space is free",
                repo.location().display()
            ));
        }
        make_room(repo, id, min_free, out, progress)?;
    }
    let kind = match out.due.kind {
        Kind::Full => KindRequest::Full,
        Kind::Differential => KindRequest::Differential,
        Kind::Incremental => KindRequest::Incremental,
    };
    let bopts = BackupOptions {
        kind,
        source_id: Some(id.into()),
        now_ms: opts.now_ms,
        all_blocks: job.all_blocks,
        ..Default::default()
    };
    let backup = crate::backup::backup_outcome(repo, &job.source, &bopts, progress)?;
    let info = backup.info.clone();
    out.record.kind = Some(info.kind.name().into());
    out.record.image = Some(info.id.to_string());
    out.warnings.extend(backup.warnings.iter().cloned());
    out.backup = Some(backup);
    if !job.policy.is_empty() {
        let req = ForgetRequest { policy: job.policy.clone(), source_id: Some(id.into()), ..Default::default() };
        let plan = crate::forget::plan(&repo.images()?, &req)?;
        crate::forget::execute(repo, &plan, false)?;
        out.forgotten.extend(plan.forget.iter().map(|i| i.id));
    }
    if job.prune && !out.forgotten.is_empty() {
        prune(repo, out, progress)?;
    }
    let report = match job.verify {
        AfterBackup::None => None,
        AfterBackup::Image => Some(crate::check::verify(repo, &info, progress)?),
        AfterBackup::ReadData => Some(crate::check::check(repo, ReadData::All, progress)?),
    };
    if let Some(report) = report {
        out.verified = Some(report.is_clean());
        if !report.is_clean() {
            let first =
                report.problems.first().map(|p| format!("{} {}: {}", p.kind, p.object, p.detail)).unwrap_or_default();
            return Err(Error::VerifyFailed { id: info.id.short(), reason: first });
        }
    }
    Ok(())
}

fn prune(repo: &Repository, out: &mut RunOutcome, progress: &dyn Progress) -> Result<()> {
    let plan = crate::prune::plan(repo, 10.0)?;
    out.pruned_bytes += crate::prune::execute(repo, &plan, progress)?.bytes_freed;
    Ok(())
}

/// Forgets the source's oldest whole sets, never the newest, and prunes, while the repository's
/// filesystem has less than `min_free` bytes free.
fn make_room(repo: &Repository, id: &str, min_free: u64, out: &mut RunOutcome, progress: &dyn Progress) -> Result<()> {
    loop {
        let Some(free) = repo.backend().available() else { return Ok(()) };
        if free >= min_free {
            return Ok(());
        }
        let images: Vec<ImageInfo> = repo.images()?.into_iter().filter(|i| i.source_id == id).collect();
        let mut sets: Vec<ImageId> = Vec::new();
        for i in &images {
            if !sets.contains(&i.set) {
                sets.push(i.set);
            }
        }
        if sets.len() < 2 {
            return Ok(());
        }
        let oldest: Vec<ImageId> = images.iter().filter(|i| i.set == sets[0]).map(|i| i.id).collect();
        let req = ForgetRequest { ids: oldest, ..Default::default() };
        let plan = crate::forget::plan(&repo.images()?, &req)?;
        crate::forget::execute(repo, &plan, false)?;
        out.forgotten.extend(plan.forget.iter().map(|i| i.id));
        prune(repo, out, progress)?;
    }
}

fn after_hooks(job: &Job, env: &[(&str, String)], warnings: &mut Vec<String>) {
    for hook in &job.hooks.after {
        if let Err(reason) = run_hook(hook, job.hooks.timeout, env) {
            warnings.push(format!("after hook {hook:?} {reason}"));
        }
    }
}

/// Runs `sh -c hook` in its own process group, its output sent to our standard error (standard
/// output is for `--json`); past `timeout` the whole group is killed. `Err` says how it failed.
fn run_hook(hook: &str, timeout: Duration, env: &[(&str, String)]) -> std::result::Result<(), String> {
    use std::os::unix::process::CommandExt;
    let stderr = std::io::stderr();
    let out = std::os::fd::AsFd::as_fd(&stderr).try_clone_to_owned().map_err(|e| format!("could not start: {e}"))?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(hook)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("could not start: {e}"))?;
    match crate::process::wait_or_kill(&mut child, timeout) {
        Ok(Some(status)) if status.success() => Ok(()),
        Ok(Some(status)) => Err(format!("failed ({status})")),
        Ok(None) => Err(format!("ran longer than {} s and was killed", timeout.as_secs())),
        Err(e) => Err(format!("could not be waited for: {e}")),
    }
}

fn put_record(repo: &Repository, record: &RunRecord) -> Result<()> {
    let json = serde_json::to_vec_pretty(record).map_err(|e| Error::Internal { reason: e.to_string() })?;
    repo.backend().put(&paths::run_record(&record.job, record.started_ms), &json)
}

/// Every recorded run of job `name`, oldest first. A record that does not parse is skipped.
pub fn records(repo: &Repository, name: &str) -> Result<Vec<RunRecord>> {
    let mut out = Vec::new();
    for path in repo.backend().list(&paths::run_records(name))? {
        let Ok(bytes) = repo.backend().get(&path) else { continue };
        if let Ok(r) = serde_json::from_slice::<RunRecord>(&bytes) {
            out.push(r);
        }
    }
    out.sort_by_key(|r| r.started_ms);
    Ok(out)
}

/// What `strata jobs` shows of one job.
#[derive(Clone, Debug, Serialize)]
pub struct JobStatus {
    pub job: String,
    pub path: String,
    pub source: String,
    pub source_id: Option<String>,
    pub last_run: Option<RunRecord>,
    /// The kind the scheme makes due now, and why.
    pub due_kind: String,
    pub due_reason: String,
    /// When a timer next fires (the earliest occurrence of any scheme expression after now),
    /// in milliseconds since the epoch; `None` without a scheme.
    pub next_run_ms: Option<u64>,
}

/// The status of `job` in `repo` at `now`.
pub fn status(repo: &Repository, job: &Job, now_ms: u64, tz: &TimeZone) -> Result<JobStatus> {
    let id = source_id(job).ok();
    let images: Vec<ImageInfo> = match &id {
        Some(id) => repo.images()?.into_iter().filter(|i| &i.source_id == id).collect(),
        None => Vec::new(),
    };
    let now = at(now_ms);
    let due = due(&job.scheme, &images, now, tz);
    Ok(JobStatus {
        job: job.name.clone(),
        path: job.path.display().to_string(),
        source: job.source.display().to_string(),
        source_id: id,
        last_run: records(repo, &job.name)?.pop(),
        due_kind: due.kind.name().into(),
        due_reason: due.reason,
        next_run_ms: job.scheme.next_run(now, tz).map(|t| t.as_millisecond() as u64),
    })
}
