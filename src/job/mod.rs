//! Jobs: a backup definition written once (a TOML file: source, repository, scheme, retention,
//! verification, hooks) and run again and again, by hand or by a timer. `file` reads and checks
//! a job file, `scheme` decides which kind of image is due, `run` carries a run out and keeps its
//! record in the repository, `units` writes the systemd units and the crontab lines.

pub mod calendar;
mod file;
pub mod run;
mod scheme;
pub mod units;

pub use calendar::Calendar;
pub use file::{config_dir, parse_duration_ms, parse_size, xdg_config_home, AfterBackup, Hooks, Job};
pub use run::{records, run, source_id, status, JobStatus, RunOptions, RunOutcome, RunRecord};
pub use scheme::{due, Due, Scheme};
