//! A job file: `$STRATA_CONFIG_DIR/jobs/NAME.toml`, or any path. Every key is known (an unknown
//! one is an error with its line and column), every calendar expression parses, every size and
//! duration reads; what is wrong is said with the file and the field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::calendar::Calendar;
use super::scheme::Scheme;
use crate::error::{Error, Result};
use crate::forget::retention::Policy;

/// What `[verify] after_backup` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterBackup {
    #[default]
    None,
    /// Read back every chunk of the new image and check its hash (`strata verify`).
    Image,
    /// Check the whole repository with every chunk read (`strata check --read-data`).
    ReadData,
}

/// Commands run around a backup, each through `sh -c` with a time limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    /// A failing one (non-zero exit, killed, past its time) cancels the run.
    pub before: Vec<String>,
    /// Always run, also after a failed or cancelled run.
    pub after: Vec<String>,
    pub timeout: Duration,
}

/// A checked job.
#[derive(Clone, Debug)]
pub struct Job {
    /// The name (the file's stem).
    pub name: String,
    pub path: PathBuf,
    /// `None`: the repository comes from `STRATA_REPO` or `-r`.
    pub repository: Option<PathBuf>,
    /// Where the password of an encrypted repository comes from (`password_file` or
    /// `password_command`); a flag on the command line wins, and without either
    /// `STRATA_PASSWORD` or a prompt is used.
    pub password: Option<crate::crypto::password::PasswordSource>,
    pub source: PathBuf,
    pub source_id: Option<String>,
    /// Read every block, as `backup --all-blocks`.
    pub all_blocks: bool,
    pub comment: String,
    pub scheme: Scheme,
    pub policy: Policy,
    pub prune: bool,
    /// Free bytes the repository's filesystem should keep before a backup.
    pub min_free: Option<u64>,
    pub verify: AfterBackup,
    pub hooks: Hooks,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    repository: Option<String>,
    password_file: Option<String>,
    password_command: Option<String>,
    source: String,
    source_id: Option<String>,
    #[serde(default)]
    all_blocks: bool,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    scheme: SchemeFile,
    #[serde(default)]
    retention: RetentionFile,
    #[serde(default)]
    verify: VerifyFile,
    #[serde(default)]
    hooks: HooksFile,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemeFile {
    full: Option<Spanned<String>>,
    differential: Option<Spanned<String>>,
    incremental: Option<Spanned<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionFile {
    keep_sets: Option<usize>,
    keep_last: Option<usize>,
    keep_daily: Option<usize>,
    keep_weekly: Option<usize>,
    keep_monthly: Option<usize>,
    keep_yearly: Option<usize>,
    keep_within: Option<Spanned<String>>,
    #[serde(default)]
    prune: bool,
    min_free: Option<Spanned<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyFile {
    #[serde(default)]
    after_backup: AfterBackup,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HooksFile {
    #[serde(default)]
    before: Vec<String>,
    #[serde(default)]
    after: Vec<String>,
    timeout: Option<Spanned<String>>,
}

/// Where job files live: `$STRATA_CONFIG_DIR`, else `/etc/strata` for root, else
/// `$XDG_CONFIG_HOME/strata` (`~/.config/strata`).
pub fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STRATA_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return "/etc/strata".into();
    }
    xdg_config_home().unwrap_or_else(|| ".config".into()).join("strata")
}

/// `$XDG_CONFIG_HOME`, else `~/.config`; `None` when neither variable is set.
pub fn xdg_config_home() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()).map(PathBuf::from);
    xdg.or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
}

/// Letters, digits, `.`, `_` and `-`, not starting with `.`: a name can never leave `jobs/`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Job {
    /// The job `arg` names: a path when it contains `/` or ends in `.toml`, else the name of a
    /// file in `config_dir()/jobs/`.
    pub fn load(arg: &str) -> Result<Job> {
        let path = if arg.contains('/') || arg.ends_with(".toml") {
            PathBuf::from(arg)
        } else if valid_name(arg) {
            config_dir().join("jobs").join(format!("{arg}.toml"))
        } else {
            return Err(Error::BadJob {
                path: arg.into(),
                reason: "a job name holds only letters, digits, `.`, `_` and `-` and does not start with `.` \
                         (give a path to use a file elsewhere)"
                    .into(),
            });
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::JobNotFound { name: arg.into(), path });
            }
            Err(e) => return Err(Error::io("read job file", &path, e)),
        };
        Job::parse(&path, &text)
    }

    /// Checks the text of job file `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Job> {
        let bad = |reason: String| Error::BadJob { path: path.into(), reason };
        let file: JobFile = toml::from_str(text).map_err(|e| bad(e.to_string().trim_end().to_string()))?;
        // "line L, column C: field: what is wrong" for a value that parsed as TOML.
        let at = |span: std::ops::Range<usize>, field: &str, why: String| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            bad(format!("line {line}, column {column}: {field}: {why}"))
        };
        let calendar = |v: &Option<Spanned<String>>, field: &str| -> Result<Option<Calendar>> {
            v.as_ref()
                .map(|s| {
                    let cal = Calendar::parse(s.get_ref()).map_err(|e| at(s.span(), field, e))?;
                    // An expression that can never occur (`*-02-30`) would never make its kind due.
                    let now = jiff::Timestamp::now();
                    if cal.next_after(now, &jiff::tz::TimeZone::UTC).is_none() {
                        return Err(at(s.span(), field, format!("{:?} never occurs", s.get_ref())));
                    }
                    Ok(cal)
                })
                .transpose()
        };
        let scheme = Scheme {
            full: calendar(&file.scheme.full, "scheme.full")?,
            differential: calendar(&file.scheme.differential, "scheme.differential")?,
            incremental: calendar(&file.scheme.incremental, "scheme.incremental")?,
        };
        let r = &file.retention;
        let keep_within_ms = r
            .keep_within
            .as_ref()
            .map(|s| parse_duration_ms(s.get_ref()).map_err(|e| at(s.span(), "retention.keep_within", e)))
            .transpose()?;
        let policy = Policy {
            keep_sets: r.keep_sets,
            keep_last: r.keep_last,
            keep_daily: r.keep_daily,
            keep_weekly: r.keep_weekly,
            keep_monthly: r.keep_monthly,
            keep_yearly: r.keep_yearly,
            keep_within_ms,
        };
        if policy.keeps_nothing() {
            return Err(bad("[retention] keeps no image at all (every keep_* is 0); \
                            remove the section to keep everything"
                .into()));
        }
        let min_free = r
            .min_free
            .as_ref()
            .map(|s| parse_size(s.get_ref()).map_err(|e| at(s.span(), "retention.min_free", e)))
            .transpose()?;
        let timeout = match &file.hooks.timeout {
            Some(s) => {
                Duration::from_millis(parse_duration_ms(s.get_ref()).map_err(|e| at(s.span(), "hooks.timeout", e))?)
            }
            None => Duration::from_secs(3600),
        };
        if file.source.is_empty() {
            return Err(bad("source: is empty; name the disk or image file to back up".into()));
        }
        use crate::crypto::password::PasswordSource;
        let password =
            match (file.password_file.filter(|f| !f.is_empty()), file.password_command.filter(|c| !c.is_empty())) {
                (Some(_), Some(_)) => {
                    return Err(bad("password_file and password_command: give one of them, not both".into()));
                }
                (Some(f), None) => Some(PasswordSource::File(PathBuf::from(f))),
                (None, Some(c)) => Some(PasswordSource::Command(c)),
                (None, None) => None,
            };
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Job {
            name,
            path: path.into(),
            repository: file.repository.filter(|r| !r.is_empty()).map(PathBuf::from),
            password,
            source: PathBuf::from(file.source),
            source_id: file.source_id.filter(|s| !s.is_empty()),
            all_blocks: file.all_blocks,
            comment: file.comment,
            scheme,
            policy,
            prune: r.prune,
            min_free,
            verify: file.verify.after_backup,
            hooks: Hooks { before: file.hooks.before, after: file.hooks.after, timeout },
        })
    }
}

/// `7d`, `12h`, `1y6m`, `30s` (y = 365 days, m = 30 days, w, d, h, min, s), as `forget
/// --keep-within` reads it.
pub fn parse_duration_ms(text: &str) -> std::result::Result<u64, String> {
    let mut total = 0u64;
    let mut num = String::new();
    let mut chars = text.trim().chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| format!("bad duration {text:?}: a number must come before {c:?}"))?;
        let unit = match c {
            'y' => 365 * 86_400,
            'm' if chars.peek() == Some(&'i') => {
                chars.next();
                if chars.next() != Some('n') {
                    return Err(format!("bad duration {text:?}: unknown unit (use y, m, w, d, h, min, s)"));
                }
                60
            }
            'm' => 30 * 86_400,
            'w' => 7 * 86_400,
            'd' => 86_400,
            'h' => 3600,
            's' => 1,
            _ => return Err(format!("bad duration {text:?}: unknown unit {c:?} (use y, m, w, d, h, min, s)")),
        };
        total = total.saturating_add(n.saturating_mul(unit * 1000));
        num.clear();
        any = true;
    }
    if !num.is_empty() || !any {
        return Err(format!("bad duration {text:?}: every number needs a unit, e.g. 7d"));
    }
    Ok(total)
}

/// `50 GiB`, `500MB`, `1.5 TiB`, `4096` (bytes): binary and decimal units.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let n: f64 = num.parse().map_err(|_| format!("bad size {text:?}: it must start with a number"))?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "bad size {text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB or KB, MB, GB, TB)"
            ))
        }
    };
    Ok((n * scale as f64) as u64)
}
