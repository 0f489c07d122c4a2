//! Jobs: job files, calendar expressions (checked against `systemd-analyze calendar`), `strata
//! run` choosing kinds by its scheme over simulated months, retention, hooks and bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assert_clean_failure, strata_cmd, Disk, TestRepo};
use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use strata::job::Calendar;

const MIB: usize = 1 << 20;

/// The next `n` occurrences after `base` (Unix seconds) that `systemd-analyze calendar` gives
/// in zone `tz`, in UTC seconds, and its normalised form; `None` when it rejects `expr`.
fn systemd(expr: &str, base: i64, tz: &str, n: usize) -> Option<(String, Vec<i64>)> {
    let out = Command::new("systemd-analyze")
        .env("TZ", tz)
        .args(["calendar", &format!("--base-time=@{base}"), &format!("--iterations={n}"), expr])
        .output()
        .expect("systemd-analyze runs");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let normal = text.lines().find_map(|l| l.trim().strip_prefix("Normalized form: ")).unwrap().to_string();
    // With TZ=UTC each time line is in UTC already; otherwise "(in UTC): ..." follows it.
    let times = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let t = l.strip_prefix("(in UTC): ").or_else(|| {
                (tz == "UTC").then(|| l.strip_prefix("Next elapse: ").or_else(|| l.split_once(": ").map(|x| x.1)))?
            })?;
            // "Tue 2026-09-22 00:00:00 UTC"
            let mut parts = t.split_whitespace().skip(1);
            let civil = format!("{}T{}", parts.next()?, parts.next()?);
            let dt: jiff::civil::DateTime = civil.parse().ok()?;
            Some(dt.to_zoned(TimeZone::UTC).ok()?.timestamp().as_second())
        })
        .collect::<Vec<_>>();
    let mut times = times;
    times.dedup();
    Some((normal, times))
}

#[test]
fn calendar_expressions_occur_when_systemd_says_they_do() {
    let exprs = [
        "minutely",
        "hourly",
        "daily",
        "weekly",
        "monthly",
        "quarterly",
        "semiannually",
        "yearly",
        "daily UTC",
        "*-*-01 02:00",
        "Sun *-*-1..7",
        "Sun *-*-1..7 03:30",
        "Mon..Fri 22:15",
        "Mon,Wed *-*-* 1..3:00",
        "Sat,Sun 12:00:30",
        "*-*-1/7 04:00",
        "*:0/15",
        "*-*-* 10,2:00",
        "*-02-29 00:00",
        "2027..2028-02-29",
        "Fri *-1,4..6-1..7/2 02:00:05",
        "12:00 UTC",
        "*-*-31",
    ];
    // 2026-03-29 00:30 UTC, an hour before Europe's clocks go forward; 2026-10-25 00:30 UTC
    // before they go back; 2026-11-30 23:59:59 UTC; 2028-02-28 12:00 UTC.
    let bases = [1_774_744_200, 1_792_888_200, 1_796_083_199, 1_835_438_400];
    for tz in ["UTC", "Europe/Berlin", "America/New_York"] {
        let zone = TimeZone::get(tz).unwrap();
        for expr in exprs {
            let cal = Calendar::parse(expr).unwrap_or_else(|e| panic!("{e}"));
            for base in bases {
                let (normal, want) = systemd(expr, base, tz, 4).unwrap_or_else(|| panic!("systemd rejects {expr:?}"));
                assert_eq!(cal.to_string(), normal, "normal form of {expr:?}");
                let mut got = Vec::new();
                let mut at = Timestamp::from_second(base).unwrap();
                for _ in 0..want.len() {
                    at = cal.next_after(at, &zone).unwrap();
                    got.push(at.as_second());
                }
                assert_eq!(got, want, "{expr:?} after {base} in {tz}");
            }
        }
    }
}

#[test]
fn calendar_expressions_systemd_rejects_or_we_do_not_support_are_errors() {
    for bad in ["", "Mon..Funday", "*-13-01", "25:00", "*-*-* 1:2:3:4", "Sat..Mon", "1/0:00"] {
        assert!(systemd(bad, 0, "UTC", 1).is_none(), "systemd accepts {bad:?}");
        let e = Calendar::parse(bad).expect_err(bad);
        assert!(e.contains("bad calendar expression"), "{e}");
    }
    // Accepted by systemd, refused here with a reason.
    for (unsupported, why) in [("*-02~1", "~"), ("*:*:1.5", "fraction"), ("daily Europe/Berlin", "time zone")] {
        let e = Calendar::parse(unsupported).expect_err(unsupported);
        assert!(e.contains(why), "{e}");
    }
}

/// A job directory with one job file; `run` and `jobs` see it through STRATA_CONFIG_DIR.
struct Jobs {
    config: PathBuf,
}

impl Jobs {
    fn new(repo: &TestRepo, name: &str, toml: &str) -> Jobs {
        let config = repo.file("config");
        std::fs::create_dir_all(config.join("jobs")).unwrap();
        std::fs::write(config.join("jobs").join(format!("{name}.toml")), toml).unwrap();
        Jobs { config }
    }

    fn strata(&self, now: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = strata_cmd();
        cmd.env("STRATA_CONFIG_DIR", &self.config).env("TZ", "UTC").env_remove("STRATA_REPO").args(args);
        match now {
            Some(n) => cmd.env("STRATA_NOW", n),
            None => cmd.env_remove("STRATA_NOW"),
        };
        cmd.output().expect("run strata")
    }

    fn run_json(&self, now: &str) -> serde_json::Value {
        let out = self.strata(Some(now), &["run", "nightly", "--json"]);
        assert!(out.status.success(), "{now}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn job_toml(repo: &Path, source: &Path, extra: &str) -> String {
    format!(
        "repository = {:?}\nsource = {:?}\nsource_id = \"disk\"\ncomment = \"test\"\n{extra}",
        repo.to_str().unwrap(),
        source.to_str().unwrap()
    )
}

/// A repository, a disk image of `size` bytes (its first MiB random) and the job `nightly` that
/// backs it up with `extra` (scheme, hooks, ...) in its file.
fn nightly(seed: u64, size: usize, extra: &str) -> (TestRepo, PathBuf, Jobs) {
    let repo = TestRepo::new();
    let disk_path = repo.file("disk.img");
    Disk::new(seed, size).random(0..MIB).write_to(&disk_path);
    let jobs = Jobs::new(&repo, "nightly", &job_toml(&repo.path, &disk_path, extra));
    (repo, disk_path, jobs)
}

fn sha(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// The kind a monthly-full, weekly-differential, daily-incremental scheme makes due on `day`
/// (runs at 02:00): the first run and the 1st of a month are fulls, Mondays differentials.
fn expected_kind(first: bool, day: jiff::civil::Date) -> &'static str {
    if first || day.day() == 1 {
        "full"
    } else if day.weekday() == Weekday::Monday {
        "differential"
    } else {
        "incremental"
    }
}

#[test]
fn seventy_days_of_a_monthly_weekly_daily_scheme_choose_their_kinds_and_keep_two_sets() {
    let repo = TestRepo::new();
    let disk_path = repo.file("disk.img");
    let mut disk = Disk::new(70, 4 * MIB).random(0..2 * MIB).text(2 * MIB..3 * MIB);
    disk.write_to(&disk_path);
    let scheme = "[scheme]\nfull = \"monthly\"\ndifferential = \"weekly\"\nincremental = \"daily\"\n\n\
                  [retention]\nkeep_sets = 2\nprune = true\n\n[verify]\nafter_backup = \"image\"\n";
    let jobs = Jobs::new(&repo, "nightly", &job_toml(&repo.path, &disk_path, scheme));

    let start: jiff::civil::Date = "2026-01-01".parse().unwrap();
    let mut content = std::collections::HashMap::new();
    for d in 0..70 {
        let day = start.checked_add(jiff::Span::new().days(d)).unwrap();
        if d > 0 {
            disk = disk.scatter_blocks(8);
            disk.write_in_place(&disk_path);
        }
        let now = format!("{day}T02:00:00Z");
        let v = jobs.run_json(&now);
        assert_eq!(v["kind"], expected_kind(d == 0, day), "{now}: {v}");
        assert_eq!(v["job"], "nightly");
        assert_eq!(v["verified"], true, "{now}");
        assert_eq!(v["result"], "ok");
        let created = v["created"].as_str().unwrap();
        assert!(created.starts_with(&format!("{day}T02:00:00")), "image time {created} is not the clock's {now}");
        content.insert(v["image"].as_str().unwrap().to_string(), sha(&disk.bytes));
    }

    let images = repo.images();
    let sets: std::collections::BTreeSet<_> = images.iter().map(|i| i.set).collect();
    assert_eq!(sets.len(), 2, "keep_sets = 2 leaves two sets");
    // March's set (days 1 to 11) and February's (28 days).
    assert_eq!(images.len(), 28 + 11);
    for info in &images {
        let out = repo.file("restored.img");
        let run = repo.cli(&["restore", &info.id.to_string(), out.to_str().unwrap(), "--force"]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        assert_eq!(sha(&std::fs::read(&out).unwrap()), content[&info.id.to_string()], "{}", info.id);
    }

    // Each run left its record; `jobs` shows the last and what is due next.
    assert_eq!(repo.stored().list("runs/nightly").unwrap().len(), 70);
    let out = jobs.strata(Some("2026-03-12T01:00:00Z"), &["jobs", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["job"], "nightly");
    assert_eq!(listed[0]["last_run"]["result"], "ok");
    assert_eq!(listed[0]["last_run"]["kind"], "incremental");
    assert_eq!(listed[0]["due_kind"], "incremental");
    let next = Timestamp::from_millisecond(listed[0]["next_run_ms"].as_i64().unwrap()).unwrap();
    assert_eq!(next.to_string(), "2026-03-13T00:00:00Z");
}

#[test]
fn explicit_kinds_and_a_scheme_of_differentials_only() {
    let (_repo, _disk, jobs) = nightly(3, 2 * MIB, "[scheme]\nfull = \"monthly\"\ndifferential = \"daily\"\n");
    assert_eq!(jobs.run_json("2026-05-03T10:00:00Z")["kind"], "full");
    // Later the same day: no occurrence of `daily` since the full, and no incrementals in the
    // scheme: a differential all the same.
    assert_eq!(jobs.run_json("2026-05-03T11:00:00Z")["kind"], "differential");
    let out = jobs.strata(Some("2026-05-03T12:00:00Z"), &["run", "nightly", "--kind", "full", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["kind"].as_str(), v["reason"].as_str()), (Some("full"), Some("asked for")));
    assert_eq!(v["verified"], serde_json::Value::Null, "verification was not asked for");
}

#[test]
fn hooks_run_around_a_backup_and_a_failing_before_hook_cancels_it() {
    let repo = TestRepo::new();
    let disk_path = repo.file("disk.img");
    Disk::new(4, 2 * MIB).random(0..MIB).write_to(&disk_path);
    let log = repo.file("hooks.log");
    let ok = format!(
        "[hooks]\nbefore = [\"echo before $STRATA_JOB $STRATA_KIND >> {l}\"]\n\
         after = [\"echo after $STRATA_RESULT $STRATA_IMAGE >> {l}\", \"exit 3\"]\n",
        l = log.display()
    );
    let jobs = Jobs::new(&repo, "nightly", &job_toml(&repo.path, &disk_path, &ok));
    let v = jobs.run_json("2026-05-03T10:00:00Z");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text, format!("before nightly full\nafter ok {}\n", v["image"].as_str().unwrap()));

    // A before hook that fails, and one that hangs past its timeout: cancelled, no image, the
    // after hooks still run, and the record says so.
    for (i, before) in ["exit 7", "sleep 30"].iter().enumerate() {
        std::fs::remove_file(&log).unwrap();
        let toml = format!(
            "[hooks]\ntimeout = \"1s\"\nbefore = [{before:?}]\nafter = [\"echo after $STRATA_RESULT >> {}\"]\n",
            log.display()
        );
        let jobs = Jobs::new(&repo, "nightly", &job_toml(&repo.path, &disk_path, &toml));
        let started = std::time::Instant::now();
        let now = format!("2026-05-0{}T10:00:00Z", 4 + i);
        let out = jobs.strata(Some(&now), &["run", "nightly"]);
        assert_clean_failure(&out, "cancelled");
        assert!(started.elapsed().as_secs() < 20, "a hanging hook was not killed");
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "after cancelled\n");
        assert_eq!(repo.images().len(), 1, "a cancelled run backed up");
    }
    let out = jobs.strata(Some("2026-05-09T00:00:00Z"), &["jobs", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["last_run"]["result"], "cancelled");
    assert!(listed[0]["last_run"]["error"].as_str().unwrap().contains("sleep 30"), "{listed}");
}

#[test]
fn bad_job_files_and_bad_runs_are_clear_errors_that_change_nothing() {
    let repo = TestRepo::new();
    let disk_path = repo.file("disk.img");
    Disk::new(5, 2 * MIB).random(0..MIB).write_to(&disk_path);
    let base = job_toml(&repo.path, &disk_path, "");
    let cases: Vec<(String, &str)> = vec![
        (format!("{base}colour = \"blue\"\n"), "unknown field `colour`"),
        (format!("{base}[scheme]\nfull = \"monthly\"\nweekly = \"Mon\"\n"), "unknown field `weekly`"),
        (format!("{base}[scheme]\nfull = \"Mon..Funday\"\n"), "line 6, column 8: scheme.full"),
        (format!("{base}[scheme]\nfull = \"2020-01-01\"\n"), "never occurs"),
        (format!("{base}[retention]\nkeep_last = 0\n"), "keeps no image"),
        (format!("{base}[retention]\nmin_free = \"lots\"\n"), "retention.min_free"),
        (format!("{base}[verify]\nafter_backup = \"sometimes\"\n"), "unknown variant `sometimes`"),
        (format!("{base}source = \"twice\"\n"), "duplicate key"),
        ("source = [1, 2\n".to_string(), "line 1"),
        (job_toml(&repo.path, &repo.file("no-such-disk"), ""), "no-such-disk"),
        (job_toml(&repo.file("no-such-repo"), &disk_path, ""), "no-such-repo"),
    ];
    for (toml, want) in &cases {
        let jobs = Jobs::new(&repo, "bad", toml);
        let out = jobs.strata(Some("2026-05-03T10:00:00Z"), &["run", "bad"]);
        assert_clean_failure(&out, want);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("bad.toml") || stderr.contains("no-such"), "the file is not named: {stderr}");
    }
    assert!(repo.images().is_empty(), "a bad job backed up");

    let jobs = Jobs::new(&repo, "good", &base);
    for (name, want) in [("no-such-job", "no job no-such-job"), ("../x", "no job ../x"), (".hidden", "job name")] {
        assert_clean_failure(&jobs.strata(None, &["run", name]), want);
    }
    assert_clean_failure(&jobs.strata(Some("yesterday"), &["run", "good"]), "STRATA_NOW");
    assert_clean_failure(&jobs.strata(None, &["run", "good", "--kind", "prompt"]), "terminal");
    assert!(jobs.strata(Some("2026-05-03T10:00:00Z"), &["run", "good"]).status.success());
    assert_clean_failure(
        &jobs.strata(Some("2026-05-02T10:00:00Z"), &["run", "good"]),
        "earlier than the newest image in",
    );

    // Two runs at once: the second finds the repository locked by the first (held in its hook).
    let slow = format!("{base}[hooks]\nbefore = [\"sleep 3\"]\n");
    let jobs = Jobs::new(&repo, "slow", &slow);
    let mut first = strata_cmd();
    first.env("STRATA_CONFIG_DIR", &jobs.config).env("STRATA_NOW", "2026-05-04T10:00:00Z").args(["run", "slow"]);
    let mut first = first.stdout(std::process::Stdio::null()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert_clean_failure(&jobs.strata(Some("2026-05-04T10:00:01Z"), &["run", "slow"]), "locked");
    assert!(first.wait().unwrap().success());
    assert_eq!(repo.images().len(), 2);
}

#[test]
fn schedule_writes_units_systemd_accepts_and_cron_lines() {
    let scheme = "[scheme]\nfull = \"Sun *-*-1..7 03:30\"\ndifferential = \"weekly\"\nincremental = \"*-*-* 02:00\"\n";
    let (repo, disk_path, jobs) = nightly(6, MIB, scheme);
    let units = repo.file("units");
    let out = jobs.strata(None, &["schedule", "nightly", "--systemd", "--out", units.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (service, timer) = (units.join("strata-job-nightly.service"), units.join("strata-job-nightly.timer"));
    let verify = Command::new("systemd-analyze").arg("verify").arg(&service).arg(&timer).output().unwrap();
    assert!(verify.status.success() && verify.stderr.is_empty(), "{}", String::from_utf8_lossy(&verify.stderr));
    let service_text = std::fs::read_to_string(&service).unwrap();
    let job_file = jobs.config.join("jobs/nightly.toml");
    let exec = format!("ExecStart={} run {}", env!("CARGO_BIN_EXE_strata"), job_file.display());
    assert!(service_text.contains(&exec), "{service_text}");
    for line in ["Type=oneshot", "Nice=10", "IOSchedulingClass=idle"] {
        assert!(service_text.contains(line), "{service_text}");
    }
    let timer_text = std::fs::read_to_string(&timer).unwrap();
    let calendars: Vec<&str> = timer_text.lines().filter_map(|l| l.strip_prefix("OnCalendar=")).collect();
    assert_eq!(calendars, ["Sun *-*-01..07 03:30:00", "Mon *-*-* 00:00:00", "*-*-* 02:00:00"]);
    for c in &calendars {
        let (normal, _) = systemd(c, 0, "UTC", 1).unwrap_or_else(|| panic!("systemd rejects {c:?}"));
        assert_eq!(&normal, c);
    }
    assert!(timer_text.contains("Persistent=true") && timer_text.contains("RandomizedDelaySec="));

    let out = jobs.strata(None, &["schedule", "nightly", "--cron"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect();
    let cmd = format!("'{}' 'run' '{}'", env!("CARGO_BIN_EXE_strata"), job_file.display());
    assert_eq!(
        lines,
        [
            format!("30 3 1-7 * * case $(date +\\%u) in 7) {cmd} ;; esac"),
            format!("0 0 * * 1 {cmd}"),
            format!("0 2 * * * {cmd}"),
        ]
    );

    // Nothing to schedule without a scheme; no repository to name without one.
    let bare = Jobs::new(&repo, "bare", &job_toml(&repo.path, &disk_path, ""));
    assert_clean_failure(&bare.strata(None, &["schedule", "bare", "--cron"]), "no [scheme]");
    let toml = format!("source = {:?}\n{scheme}", disk_path.to_str().unwrap());
    let norepo = Jobs::new(&repo, "norepo", &toml);
    assert_clean_failure(&norepo.strata(None, &["schedule", "norepo", "--cron"]), "names no repository");
    let out = norepo.strata(None, &["-r", repo.path.to_str().unwrap(), "schedule", "norepo", "--cron"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("'-r' '{}'", repo.path.display())));
    assert_clean_failure(&norepo.strata(None, &["schedule", "norepo"]), "--systemd");
    let seconds = format!("repository = {:?}\nsource = \"x\"\n[scheme]\nfull = \"*-*-* 02:00:30\"\n", repo.path);
    let seconds = Jobs::new(&repo, "seconds", &seconds);
    assert_clean_failure(&seconds.strata(None, &["schedule", "seconds", "--cron"]), "seconds");
}

#[test]
fn backup_base_makes_an_image_on_an_older_one_without_breaking_a_chain() {
    let repo = TestRepo::new();
    let disk_path = repo.file("disk.img");
    let mut disk = Disk::new(8, 2 * MIB).random(0..MIB);
    let mut states = Vec::new();
    let mut ids = Vec::new();
    for kind in ["full", "incremental", "incremental"] {
        disk = disk.scatter_blocks(4);
        disk.write_to(&disk_path);
        let out = repo.cli(&["backup", "--source-id", "disk", "--kind", kind, "--json", disk_path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.push(v["image"].as_str().unwrap().to_string());
        states.push(disk.bytes.clone());
    }
    let backup_on = |kind: &str, base: &str| {
        repo.cli(&[
            "backup",
            "--source-id",
            "disk",
            "--kind",
            kind,
            "--base",
            base,
            "--json",
            disk_path.to_str().unwrap(),
        ])
    };
    disk = disk.scatter_blocks(4);
    disk.write_to(&disk_path);
    let out = backup_on("incremental", &ids[1][..12]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["base"].as_str(), v["depth"].as_u64()),
        (Some("incremental"), Some(&ids[1][..]), Some(2))
    );
    let out = backup_on("differential", &ids[2]);
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((d["kind"].as_str(), d["base"].as_str()), (Some("differential"), Some(&ids[0][..])));

    // Every image restores as its disk was, the branch and the chain it left alike.
    let check = |id: &str, want: &[u8]| {
        let to = repo.file("restored.img");
        let run = repo.cli(&["restore", id, to.to_str().unwrap(), "--force"]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        assert!(std::fs::read(&to).unwrap() == want, "image {id} restores wrong");
    };
    for (id, state) in ids.iter().zip(&states) {
        check(id, state);
    }
    check(v["image"].as_str().unwrap(), &disk.bytes);
    check(d["image"].as_str().unwrap(), &disk.bytes);

    assert_clean_failure(&backup_on("full", &ids[1]), "a full has no base");
    let other = repo.cli(&["backup", "--kind", "incremental", "--base", &ids[1], disk_path.to_str().unwrap()]);
    assert_clean_failure(&other, "--source-id");
    assert_clean_failure(&backup_on("incremental", "ffffffff"), "ffffffff");
    assert_eq!(repo.images().len(), 5);
    let check = repo.cli(&["check", "--read-data"]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    // Forgetting the image the branch grew from keeps both branches restorable.
    let forget = repo.cli(&["forget", &ids[1]]);
    assert!(forget.status.success(), "{}", String::from_utf8_lossy(&forget.stderr));
    let to = repo.file("after-forget.img");
    for (id, want) in [(&ids[2], &states[2]), (&v["image"].as_str().unwrap().to_string(), &disk.bytes)] {
        let run = repo.cli(&["restore", id, to.to_str().unwrap(), "--force"]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        assert!(std::fs::read(&to).unwrap() == *want, "image {id} restores wrong after the forget");
    }
}

/// The job files of docs/JOBS.md (the field reference and the three classic schemes) are valid,
/// and `examples/jobs/` holds the schemes exactly as the page shows them.
#[test]
fn the_documented_job_files_are_valid_and_the_examples_match_the_docs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/JOBS.md")).unwrap();
    let blocks: Vec<&str> = doc.split("```toml\n").skip(1).map(|b| b.split("```").next().unwrap()).collect();
    assert_eq!(blocks.len(), 5, "the field reference, three schemes and freezing for used blocks");
    for block in &blocks {
        strata::job::Job::parse(Path::new("docs/JOBS.md"), block).unwrap_or_else(|e| panic!("{e}\n{block}"));
    }
    let mut examples: Vec<PathBuf> =
        std::fs::read_dir(root.join("examples/jobs")).unwrap().map(|e| e.unwrap().path()).collect();
    examples.sort();
    assert_eq!(examples.len(), 3);
    for path in examples {
        let text = std::fs::read_to_string(&path).unwrap();
        let job = strata::job::Job::parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        assert!(!job.scheme.calendars().is_empty() && !job.policy.is_empty(), "{}", path.display());
        let body = text.split_once("\n\n").unwrap().1;
        assert!(blocks.contains(&body), "{} is not the scheme docs/JOBS.md shows", path.display());
    }
}

#[test]
fn man_pages_and_completions_come_from_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out = strata_cmd().arg("man").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in ["strata.1", "strata-run.1", "strata-schedule.1", "strata-backup.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
    let run = std::fs::read_to_string(dir.path().join("strata-run.1")).unwrap();
    assert!(run.contains("prompt") && run.contains("STRATA_NOW"), "strata-run.1 lacks its options");
    let script = dir.path().join("strata.bash");
    let out = strata_cmd().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    std::fs::write(&script, &out.stdout).unwrap();
    let check = Command::new("bash").arg("-n").arg(&script).status().unwrap();
    assert!(check.success(), "the bash completion script does not parse");
    assert!(String::from_utf8_lossy(&out.stdout).contains("schedule"));
}

/// Retention and `min_free` touch the job's own source only, and `min_free` never forgets the
/// newest set.
#[test]
fn retention_and_min_free_forget_only_the_jobs_own_older_sets() {
    let repo = TestRepo::new();
    let other = repo.file("other.img");
    Disk::new(9, MIB).random(0..MIB).write_to(&other);
    for _ in 0..3 {
        let out = repo.cli(&["backup", "--source-id", "other", "--kind", "full", other.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let disk_path = repo.file("disk.img");
    let mut disk = Disk::new(10, 2 * MIB).random(0..MIB);
    disk.write_to(&disk_path);
    // No filesystem has a zettabyte free: every run forgets all but the newest set first.
    let extra = "[retention]\nkeep_last = 50\nprune = true\nmin_free = \"1000000 TiB\"\n";
    let jobs = Jobs::new(&repo, "nightly", &job_toml(&repo.path, &disk_path, extra));
    let mut forgotten = 0;
    for day in 1..=3 {
        disk = disk.scatter_blocks(4);
        disk.write_in_place(&disk_path);
        let out =
            jobs.strata(Some(&format!("2030-06-0{day}T02:00:00Z")), &["run", "nightly", "--kind", "full", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        forgotten += v["forgotten"].as_array().unwrap().len();
    }
    let images = repo.images();
    let mine: Vec<_> = images.iter().filter(|i| i.source_id == "disk").collect();
    assert_eq!(mine.len(), 2, "min_free keeps the newest set before each backup, and the backup adds one");
    assert_eq!(forgotten, 1);
    assert_eq!(images.iter().filter(|i| i.source_id == "other").count(), 3, "another source's images were touched");
}

/// `--kind prompt` on a terminal (a pty from `script`) shows the choices and takes the answer.
#[test]
fn prompt_on_a_terminal_shows_the_choices_and_takes_the_answer() {
    let scheme = "[scheme]\nfull = \"monthly\"\nincremental = \"daily\"\n";
    let (repo, _disk, jobs) = nightly(11, MIB, scheme);
    assert_eq!(jobs.run_json("2030-05-03T10:00:00Z")["kind"], "full");
    let line = format!("{} run nightly --kind prompt --json", env!("CARGO_BIN_EXE_strata"));
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("STRATA_CONFIG_DIR", &jobs.config)
        .env("STRATA_NOW", "2030-05-04T10:00:00Z")
        .env("STRATA_PASSWORD", common::PASSWORD)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"d\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("the scheme says: incremental") && text.contains("differential: changes since the full"));
    let images = repo.images();
    assert_eq!(images.last().unwrap().kind, strata::Kind::Differential, "{text}");
}
