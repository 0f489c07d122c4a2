//! What `strata schedule` writes: a systemd service and timer for a job, or a crontab line. The
//! timer fires at every expression of the scheme; the run itself decides the kind (`--kind
//! auto`), so firing when two expressions coincide makes one image, not two.

use std::path::Path;

use super::file::Job;
use crate::error::{Error, Result};

/// The unit name stem of job `name`: `strata-job-NAME` (job names are valid in unit names).
pub fn unit_stem(name: &str) -> String {
    format!("strata-job-{name}")
}

/// The command a timer or cron runs: the binary `exe` on the job file, with the repository when
/// the job file names none.
fn command(job: &Job, exe: &Path, repo: Option<&Path>) -> Result<Vec<String>> {
    let mut cmd = vec![exe.display().to_string()];
    if job.repository.is_none() {
        let repo = repo.ok_or_else(|| Error::BadJob {
            path: job.path.clone(),
            reason: "names no repository: add `repository = ...` so that a timer knows where to back up".into(),
        })?;
        cmd.extend(["-r".into(), repo.display().to_string()]);
    }
    let path = std::path::absolute(&job.path).map_err(|e| Error::io("resolve", &job.path, e))?;
    cmd.extend(["run".into(), path.display().to_string()]);
    Ok(cmd)
}

fn scheduled(job: &Job) -> Result<()> {
    if job.scheme.calendars().is_empty() {
        return Err(Error::BadJob {
            path: job.path.clone(),
            reason: "has no [scheme]: nothing says when to run it".into(),
        });
    }
    Ok(())
}

/// Quotes a word for `ExecStart=` (systemd's rules: double quotes, backslash escapes; `%` is a
/// specifier and doubled) and for `sh` in cron (single quotes).
fn systemd_word(w: &str) -> String {
    if !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+:=,@".contains(&b)) {
        return w.into();
    }
    format!("\"{}\"", w.replace('\\', "\\\\").replace('"', "\\\"").replace('%', "%%"))
}

/// The service and timer units of `job`: (file name, text) pairs.
pub fn systemd_units(job: &Job, exe: &Path, repo: Option<&Path>) -> Result<Vec<(String, String)>> {
    scheduled(job)?;
    let stem = unit_stem(&job.name);
    let exec: Vec<String> = command(job, exe, repo)?.iter().map(|w| systemd_word(w)).collect();
    let what = if job.comment.is_empty() { job.source.display().to_string() } else { job.comment.clone() };
    let service = format!(
        "[Unit]\n\
         Description=Strata backup job {name} ({what})\n\
         After=local-fs.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={exec}\n\
         Nice=10\n\
         IOSchedulingClass=idle\n",
        name = job.name,
        what = what.replace(['\n', '%'], " "),
        exec = exec.join(" "),
    );
    let mut calendars: Vec<String> = job.scheme.calendars().iter().map(|c| c.to_string()).collect();
    calendars.dedup();
    let on_calendar: String = calendars.iter().map(|c| format!("OnCalendar={c}\n")).collect();
    let timer = format!(
        "[Unit]\n\
         Description=Timer of Strata backup job {name}\n\
         \n\
         [Timer]\n\
         {on_calendar}\
         Persistent=true\n\
         RandomizedDelaySec=10min\n\
         \n\
         [Install]\n\
         WantedBy=timers.target\n",
        name = job.name,
    );
    Ok(vec![(format!("{stem}.service"), service), (format!("{stem}.timer"), timer)])
}

/// The crontab lines of `job`, one per scheme expression (cron fires on minutes, in the
/// machine's zone; an expression cron cannot say is an error naming it).
pub fn cron_lines(job: &Job, exe: &Path, repo: Option<&Path>) -> Result<Vec<String>> {
    scheduled(job)?;
    let words: Vec<String> = command(job, exe, repo)?
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .map(|w| w.replace('%', "\\%"))
        .collect();
    let cmd = words.join(" ");
    let mut lines: Vec<String> = Vec::new();
    for cal in job.scheme.calendars() {
        let (fields, weekday) = cal.to_cron().map_err(|reason| Error::BadJob { path: job.path.clone(), reason })?;
        let line = match weekday {
            // cron ORs day of month and day of week; systemd ANDs them: the weekday is tested.
            Some(days) => format!("{fields} case $(date +\\%u) in {days}) {cmd} ;; esac"),
            None => format!("{fields} {cmd}"),
        };
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    Ok(lines)
}
