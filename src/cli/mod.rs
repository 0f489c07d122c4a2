//! Command-line adapter: arguments become library options; results become tables or JSON.

mod files;
mod install;
mod jobs;
mod output;
mod progress;
mod serve;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use strata::check::ReadData;
use strata::config::ChunkerParams;
use strata::crypto::password::{Password, PasswordSource};
use strata::forget::retention::Policy;
use strata::forget::ForgetRequest;
use strata::repository::{Access, Encryption};
use strata::{BackupOptions, InitOptions, KindRequest, Repository};

#[derive(Parser)]
#[command(name = "strata", version, about = "Deduplicating full, differential and incremental disk images")]
struct Cli {
    /// Repository: a directory, or a bucket `s3:http[s]://HOST[:PORT]/BUCKET[/PREFIX]` (credentials
    /// from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE; the index is cached in
    /// $XDG_CACHE_HOME/strata). Other schemes are refused: write ./NAME for a directory whose
    /// name has a colon
    #[arg(short = 'r', long = "repo", env = "STRATA_REPO", global = true)]
    repo: Option<PathBuf>,

    /// Read the password of an encrypted repository from the first line of FILE (wins over
    /// STRATA_PASSWORD). Without either, or --password-command, strata asks on the terminal
    #[arg(long, value_name = "FILE", global = true, conflicts_with = "password_command")]
    password_file: Option<PathBuf>,

    /// Run CMD (with `sh -c`) for the password: the first line of its output (wins over
    /// STRATA_PASSWORD; stopped after 60 s)
    #[arg(long, value_name = "CMD", global = true)]
    password_command: Option<String>,

    /// When another command holds the repository's lock, try again for up to DURATION (`30s`,
    /// `10m`, `2h`) instead of failing at once: a forget or prune waits for the backups that
    /// share a bucket to finish
    #[arg(long, value_name = "DURATION", global = true)]
    retry_lock: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a repository (chunk sizes, compression and encryption are fixed here)
    Init {
        /// Directory to create (or an empty one), or an empty bucket or prefix `s3:…`; defaults
        /// to --repo
        path: Option<PathBuf>,
        /// `repokey`: a random key, kept in the repository sealed by the password (asked
        /// twice on a terminal, or from STRATA_PASSWORD / --password-file / --password-command);
        /// chunk ids keyed, every object sealed (see docs/DESIGN.md, "Encryption"). `none`:
        /// plain zstd, readable by anyone who can read the directory
        /// (default: `repokey`, or what the repository of --copy-keys-from uses)
        #[arg(long, value_enum)]
        encryption: Option<EncryptionArg>,
        /// Name content as the repository SOURCE does (its chunker and, when encrypted, its
        /// chunk-id key; its password from STRATA_PASSWORD2 or --from-password-file), so that
        /// `strata -r SOURCE copy --to` this one stores only what it lacks. Encryption follows
        /// SOURCE's; data is sealed with this repository's own key
        #[arg(long, value_name = "SOURCE")]
        copy_keys_from: Option<PathBuf>,
        /// The password of --copy-keys-from's repository, from the first line of FILE (wins
        /// over STRATA_PASSWORD2)
        #[arg(long, value_name = "FILE", requires = "copy_keys_from")]
        from_password_file: Option<PathBuf>,
        /// Average chunk size in KiB, 4 to 2048 (min = avg/4, max = 8 x avg); with
        /// --copy-keys-from, the source's
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(4..=2048),
              conflicts_with = "copy_keys_from")]
        avg_chunk_kib: u32,
        /// zstd level for chunk data, 1 (fastest) to 22 (smallest); fixed for the repository
        #[arg(long, default_value_t = strata::config::DEFAULT_COMPRESSION_LEVEL)]
        compression_level: i32,
    },
    /// The passwords of an encrypted repository: list, add, remove, passwd
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Back up a disk image file or block device
    Backup {
        source: PathBuf,
        #[arg(long, value_enum, default_value_t = KindArg::Auto)]
        kind: KindArg,
        /// Stable identity of the source (default: its canonical path)
        #[arg(long)]
        source_id: Option<String>,
        /// Read an image file even if its size, times and inode are unchanged since its base
        #[arg(long)]
        force_read: bool,
        /// Make the image on IMAGE instead of the newest one: `--kind incremental` on IMAGE
        /// itself, `--kind differential` on the full of IMAGE's set; no chain is broken
        #[arg(long, value_name = "IMAGE")]
        base: Option<String>,
        /// Read and store every block, sector by sector (for forensics or a layout Strata
        /// misjudges). By default only the blocks the filesystems' allocation maps call used
        /// are read (ext2/3/4, FAT, NTFS, swap); free blocks are restored as zeros
        #[arg(long)]
        all_blocks: bool,
        /// Print one JSON object instead of a summary
        #[arg(long)]
        json: bool,
    },
    /// Run a backup job (a TOML file of source, repository, scheme, retention, verification and
    /// hooks): the scheme chooses full, differential or incremental, then retention, verification
    /// and the hooks follow. STRATA_NOW (an RFC 3339 time) replaces the clock, to simulate runs
    Run {
        /// A job name (a file in $STRATA_CONFIG_DIR/jobs/NAME.toml) or a path to a job file
        job: String,
        /// `auto`: as the scheme says; `prompt`: show each choice's cost and ask (on a terminal)
        #[arg(long, value_enum, default_value_t = jobs::RunKind::Auto)]
        kind: jobs::RunKind,
        /// Print one JSON object: every field of `backup --json` plus job, result, reason,
        /// forgotten, pruned_bytes, verified (and error)
        #[arg(long)]
        json: bool,
    },
    /// List the jobs in $STRATA_CONFIG_DIR/jobs/: source, last run, the kind due and the next
    /// timer
    Jobs {
        /// Print JSON for scripts instead of text
        #[arg(long)]
        json: bool,
    },
    /// Schedule a job: write a systemd service and timer (OnCalendar= from its scheme) and
    /// enable them where systemd runs, or print crontab lines
    #[command(group(clap::ArgGroup::new("how").required(true).args(["systemd", "cron"])))]
    Schedule {
        /// A job name or a path to a job file
        job: String,
        /// Write `strata-job-NAME.service` and `.timer` (to /etc/systemd/system, or the user's
        /// systemd directory with --user) and enable the timer
        #[arg(long)]
        systemd: bool,
        /// With --systemd: units of the user's systemd instance
        #[arg(long, requires = "systemd")]
        user: bool,
        /// With --systemd: only write the units into DIR, enable nothing
        #[arg(long, value_name = "DIR", requires = "systemd")]
        out: Option<PathBuf>,
        /// Print crontab lines instead
        #[arg(long)]
        cron: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) for installing
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (strata.1 and strata-COMMAND.1) into DIR, for installing
    Man {
        /// The directory to write them into (created when missing)
        dir: PathBuf,
    },
    /// List images, oldest first
    Images {
        /// Print JSON for scripts instead of text
        #[arg(long)]
        json: bool,
    },
    /// Restore an image (id, unique id prefix, or `latest`) to a file or block device
    Restore {
        /// The image (id, unique prefix or `latest`), or one partition of it as IMAGE:N
        image: String,
        target: PathBuf,
        /// Restore what can be restored: damaged or missing chunks become zeros, their ranges are
        /// listed, and the exit code says the restore is incomplete
        #[arg(long)]
        partial: bool,
        /// Write to a block device even if it is mounted or in use (otherwise refused)
        #[arg(long)]
        force: bool,
        /// The target holds an older copy of the disk: write only what differs, in place (a
        /// failure half-way leaves a mix of old and new data; run it again to complete it)
        #[arg(long, conflicts_with = "partial")]
        delta: bool,
        /// Print JSON for scripts instead of text
        #[arg(long)]
        json: bool,
    },
    /// What images, backup sets and the repository cost (from the index's counters)
    Stats {
        /// Print JSON for scripts instead of text
        #[arg(long)]
        json: bool,
        /// Only this set (id or unique prefix)
        #[arg(long, conflicts_with = "image")]
        set: Option<String>,
        /// Only this image and its set
        #[arg(long)]
        image: Option<String>,
    },
    /// Forget images by id or by policy; chains are never broken
    Forget {
        /// Images to forget (ids or unique prefixes); forgetting a full forgets its set unless --rebase
        images: Vec<String>,
        /// Keep the N most recent backup sets of each source
        #[arg(long)]
        keep_sets: Option<usize>,
        /// Keep the N newest images of each source
        #[arg(long)]
        keep_last: Option<usize>,
        /// Keep the newest image of each of the last N days that have one
        #[arg(long)]
        keep_daily: Option<usize>,
        /// Keep the newest image of each of the last N weeks (Monday to Sunday, UTC)
        #[arg(long)]
        keep_weekly: Option<usize>,
        /// Keep the newest image of each of the last N months
        #[arg(long)]
        keep_monthly: Option<usize>,
        /// Keep the newest image of each of the last N years
        #[arg(long)]
        keep_yearly: Option<usize>,
        /// Keep images taken within this long of the newest one, e.g. 7d, 12h, 1y6m
        #[arg(long)]
        keep_within: Option<String>,
        /// Apply the policy to this source only
        #[arg(long)]
        source_id: Option<String>,
        /// When a set's full goes, turn its oldest kept image into a synthetic full instead of
        /// forgetting the set
        #[arg(long)]
        rebase: bool,
        /// Print the plan and change nothing
        #[arg(long)]
        dry_run: bool,
        /// Run prune afterwards
        #[arg(long)]
        prune: bool,
        /// With --prune: repack packs with more than this percentage of dead bytes (0-100)
        #[arg(long, default_value_t = 10.0, value_parser = percentage)]
        max_unused: f64,
        /// Print JSON for scripts instead of text
        #[arg(long)]
        json: bool,
    },
    /// Check the repository: structure, and with --read-data every chunk re-hashed
    Check {
        /// Read and verify every chunk
        #[arg(long, conflicts_with = "read_data_subset")]
        read_data: bool,
        /// Read and verify this percentage of the packs
        #[arg(long, value_name = "PERCENT")]
        read_data_subset: Option<f64>,
        /// Print JSON for scripts instead of text
        #[arg(long)]
        json: bool,
    },
    /// Verify one image: its chain and every chunk it needs, read and re-hashed
    Verify {
        /// The image (id, unique prefix or `latest`), or one partition of it as IMAGE:N
        image: String,
        /// Print JSON for scripts instead of text
        #[arg(long)]
        json: bool,
    },
    /// List the partition table of an image: scheme, and each partition's number, place, type and
    /// filesystem
    Partitions {
        /// The image (id, unique prefix or `latest`)
        image: String,
        /// Print JSON for scripts instead of text
        #[arg(long)]
        json: bool,
    },
    /// List a directory of the filesystem inside an image (or IMAGE:N, one partition), without
    /// a restore (ext2/3/4, FAT12/16/32, NTFS)
    Ls {
        /// The image (id, unique prefix or `latest`), or one partition of it as IMAGE:N
        image: String,
        /// The directory (or file) inside the filesystem
        #[arg(default_value = "/")]
        path: String,
        /// Type, mode, owner, size and modification time
        #[arg(short = 'l')]
        long: bool,
        /// Everything below the directory
        #[arg(short = 'R')]
        recursive: bool,
        /// One JSON object per entry, one per line
        #[arg(long)]
        json: bool,
    },
    /// Write a file from the filesystem inside an image (or IMAGE:N) to standard output
    Cat {
        /// The image (id, unique prefix or `latest`), or one partition of it as IMAGE:N
        image: String,
        /// The file inside the filesystem
        path: String,
    },
    /// Copy files and directory trees out of the filesystem inside an image (or IMAGE:N) into a
    /// directory, keeping mode, mtime and symlinks (and owners, as root); each lands under its
    /// own name, as with `cp -a`. A file that cannot be read intact is reported and left out
    /// (exit code 1); the others are extracted
    Extract {
        /// The image (id, unique prefix or `latest`), or one partition of it as IMAGE:N
        image: String,
        /// Files or directories inside the filesystem (`/` for all of it)
        #[arg(required = true)]
        paths: Vec<String>,
        /// The local directory to extract into (created when missing)
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Keep setuid and setgid bits and recreate fifos, as a system restore needs (root
        /// only). Device nodes and sockets are never recreated: they are listed as skipped
        #[arg(long)]
        devices: bool,
        /// Print JSON for scripts instead of text
        #[arg(long)]
        json: bool,
    },
    /// Which files were added, removed, modified (content, size, mode, owner, mtime, target) or
    /// changed type between two images (or IMAGE:N partitions) of one filesystem
    Diff {
        /// The older image (id, unique prefix or `latest`), or IMAGE:N
        old: String,
        /// The newer image, or IMAGE:N
        new: String,
        /// Only below this path inside the filesystem
        #[arg(default_value = "/")]
        path: String,
        /// Print a JSON array of {"path", "change", "what"} instead of text
        #[arg(long)]
        json: bool,
    },
    /// Mount the repository read-only with FUSE: images/<ID>.img for every image (a raw disk
    /// file), images/<ID>/p<N>.img for its partitions, images/<ID>/files/ and p<N>.files/ for the
    /// files inside (ext2/3/4, FAT, NTFS), sources/<SOURCE>/ with a link per image and
    /// latest.img. Runs in the foreground until unmounted (`umount MOUNTPOINT`) or interrupted;
    /// images backed up meanwhile appear within a second
    Mount {
        /// An empty directory to mount on
        mountpoint: PathBuf,
        /// Decoded frames kept in memory, MiB (shared by every file read through the mount)
        #[arg(long, default_value_t = 256)]
        cache_mib: u64,
    },
    /// Serve an image (or IMAGE:N, one partition) read-only over NBD, until interrupted; the
    /// default export (empty name) and the export named after the image both serve it
    #[command(group(clap::ArgGroup::new("listen").required(true).args(["unix", "tcp"])))]
    ServeNbd {
        /// The image (id, unique prefix or `latest`), or one partition of it as IMAGE:N
        image: String,
        /// Listen on this Unix socket (created; refused when the path exists)
        #[arg(long, value_name = "PATH")]
        unix: Option<PathBuf>,
        /// Listen on this TCP address, e.g. 127.0.0.1:10809
        #[arg(long, value_name = "ADDR:PORT")]
        tcp: Option<String>,
        /// Decoded frames kept in memory, MiB
        #[arg(long, default_value_t = 256)]
        cache_mib: u64,
    },
    /// Remove the lock a dead process left in a bucket (a local repository's lock needs no
    /// removal: it ends with its holder)
    Unlock {
        /// Remove the lock even though its holder renewed it recently (only when you know that
        /// process is gone: two writers at once can lose each other's images)
        #[arg(long)]
        force: bool,
        /// Print JSON for scripts instead of text
        #[arg(long)]
        json: bool,
    },
    /// Copy images (with the images they depend on) into another repository, storing only the
    /// chunks it lacks: mirror a local repository to a bucket, or bring images back. Both must
    /// name chunks alike: plain repositories, or a destination made with `init --copy-keys-from`
    Copy {
        /// The destination repository (a directory or `s3:…`); its password from
        /// STRATA_PASSWORD2 or --to-password-file (-r's from the usual sources)
        #[arg(long, value_name = "REPO")]
        to: PathBuf,
        /// Images to copy (id prefixes, as `images` lists them); default: every image
        images: Vec<String>,
        /// The destination's password, from the first line of FILE (wins over STRATA_PASSWORD2)
        #[arg(long, value_name = "FILE")]
        to_password_file: Option<PathBuf>,
        /// Print JSON for scripts instead of text
        #[arg(long)]
        json: bool,
    },
    /// Recreate the index from the packs and manifests (the old one is moved aside; for a
    /// bucket, this machine's cache of it is rebuilt)
    RebuildIndex {
        /// Print JSON for scripts instead of text
        #[arg(long)]
        json: bool,
    },
    /// Delete data no image references and repack mostly-dead packs
    Prune {
        #[arg(long)]
        dry_run: bool,
        /// Repack packs with more than this percentage of dead bytes (0-100)
        #[arg(long, default_value_t = 10.0, value_parser = percentage)]
        max_unused: f64,
        /// Print JSON for scripts instead of text
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Auto,
    Full,
    Differential,
    Incremental,
}

/// A percentage: a number from 0 to 100.
fn percentage(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a percentage from 0 to 100")),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum EncryptionArg {
    Repokey,
    None,
}

#[derive(Subcommand)]
enum KeyAction {
    /// The key files: id, when made, KDF parameters, which one this password opened
    List {
        /// Print JSON for scripts instead of text
        #[arg(long)]
        json: bool,
    },
    /// Add a password (the new one from STRATA_NEW_PASSWORD, --new-password-file, or asked
    /// twice on a terminal)
    Add {
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// Remove a key file (not the last one, nor the one this password opened)
    Remove { id: String },
    /// Change the password this command opened the repository with (a new key file replaces
    /// the old one; the old or the new password works at every moment)
    Passwd {
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
}

/// Where the password comes from, once per process: `--password-command`, `--password-file`,
/// `STRATA_PASSWORD`, else a prompt on a terminal (asked only if the repository is encrypted).
static CREDENTIALS: std::sync::OnceLock<std::sync::Arc<strata::repository::Credentials>> = std::sync::OnceLock::new();

fn password_source(cli: &Cli) -> Option<PasswordSource> {
    if let Some(cmd) = &cli.password_command {
        return Some(PasswordSource::Command(cmd.clone()));
    }
    if let Some(file) = &cli.password_file {
        return Some(PasswordSource::File(file.clone()));
    }
    env_password("STRATA_PASSWORD")
}

/// The password in the environment variable `name`, if it is set.
fn env_password(name: &str) -> Option<PasswordSource> {
    std::env::var_os(name)
        .map(|v| PasswordSource::Value { name: name.into(), value: zeroize::Zeroizing::new(v.into_encoded_bytes()) })
}

/// Credentials that read `source`, else ask with `prompt` on a terminal (only when the
/// repository turns out to be encrypted), else have no password.
fn credentials_from(source: Option<PasswordSource>, prompt: String) -> strata::repository::Credentials {
    use std::io::IsTerminal;
    match source {
        Some(source) => strata::repository::Credentials::from_source(source),
        None if std::io::stdin().is_terminal() => strata::repository::Credentials::from_fn(move || {
            let p = rpassword::prompt_password(&prompt)
                .map_err(|e| strata::Error::PasswordSource { source_name: "prompt".into(), reason: e.to_string() })?;
            Ok(zeroize::Zeroizing::new(p.into_bytes()))
        }),
        None => strata::repository::Credentials::none(),
    }
}

fn set_credentials(cli: &Cli) {
    let flag = cli.password_file.is_some() || cli.password_command.is_some();
    PASSWORD_FLAG.store(flag, std::sync::atomic::Ordering::Relaxed);
    let creds = credentials_from(password_source(cli), "strata: repository password: ".into());
    let _ = CREDENTIALS.set(std::sync::Arc::new(creds));
}

static PASSWORD_FLAG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `--password-file` or `--password-command` was given (a job's own source yields).
pub(crate) fn password_flag_given() -> bool {
    PASSWORD_FLAG.load(std::sync::atomic::Ordering::Relaxed)
}

pub(crate) fn credentials() -> std::sync::Arc<strata::repository::Credentials> {
    CREDENTIALS.get().cloned().unwrap_or_default()
}

/// A new password: from `file`, the environment variable `env`, or asked twice on a terminal.
fn new_password(file: Option<&std::path::Path>, env: &str) -> Result<Password> {
    use std::io::IsTerminal;
    if let Some(f) = file {
        return Ok(PasswordSource::File(f.into()).read()?);
    }
    if let Some(source) = env_password(env) {
        return Ok(source.read()?);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("no new password: set {env}, pass a file, or run on a terminal to be asked");
    }
    let a = zeroize::Zeroizing::new(rpassword::prompt_password("strata: new password: ")?);
    let b = zeroize::Zeroizing::new(rpassword::prompt_password("strata: the same again: ")?);
    if *a != *b {
        anyhow::bail!("the two passwords differ; nothing was changed");
    }
    if a.is_empty() {
        anyhow::bail!("an empty password is not accepted");
    }
    Ok(zeroize::Zeroizing::new(a.as_bytes().to_vec()))
}

fn key(path: &std::path::Path, action: KeyAction) -> Result<()> {
    let kdf = strata::crypto::keyfile::KdfParams::for_new_keys();
    match action {
        KeyAction::List { json } => {
            let repo = Repository::open_with(path, &credentials())
                .with_context(|| format!("cannot open repository {}", path.display()))?;
            output::keys(&repo.key_files()?, json)?;
        }
        KeyAction::Add { new_password_file } => {
            let password = new_password(new_password_file.as_deref(), "STRATA_NEW_PASSWORD")?;
            let mut repo = open_writer(path, "key add")?;
            let id = repo.add_key(&password, kdf)?;
            println!("added key {id}");
        }
        KeyAction::Remove { id } => {
            let mut repo = open_writer(path, "key remove")?;
            repo.remove_key(&id)?;
            println!("removed key {id}");
        }
        KeyAction::Passwd { new_password_file } => {
            let password = new_password(new_password_file.as_deref(), "STRATA_NEW_PASSWORD")?;
            let mut repo = open_writer(path, "key passwd")?;
            let id = repo.change_password(&password, kdf)?;
            println!("changed the password: key {id} replaces the old one");
        }
    }
    Ok(())
}

fn repo_path(cli_repo: &Option<PathBuf>) -> Result<PathBuf> {
    let path = cli_repo.clone().context("no repository given: pass -r/--repo or set STRATA_REPO")?;
    well_formed(path)
}

/// A repository argument that names no place Strata can reach is reported as the library words
/// it, before any message repeats the argument (a URL with a secret in it, say).
pub(crate) fn well_formed(path: PathBuf) -> Result<PathBuf> {
    strata::storage::location::Location::parse(&path)?;
    Ok(path)
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    set_credentials(&cli);
    if let Some(d) = &cli.retry_lock {
        let ms = parse_duration_ms(d).context("--retry-lock")?;
        let _ = LOCK_WAIT.set(std::time::Duration::from_millis(ms));
    }
    let source = password_source(&cli);
    match cli.command {
        Command::Init { path, avg_chunk_kib, compression_level, encryption, copy_keys_from, from_password_file } => {
            let path = match path {
                Some(p) => well_formed(p)?,
                None => repo_path(&cli.repo)?,
            };
            let copy_keys = match copy_keys_from {
                Some(from) => {
                    let from = well_formed(from)?;
                    let creds = second_credentials(from_password_file, &from);
                    let keys = Repository::keys_to_copy(&from, &creds)
                        .with_context(|| format!("cannot read the keys of repository {}", from.display()))?;
                    Some(keys)
                }
                None => None,
            };
            let encryption = match encryption {
                Some(e) => e,
                None if copy_keys.as_ref().is_some_and(|k| !k.is_encrypted()) => EncryptionArg::None,
                None => EncryptionArg::Repokey,
            };
            let encryption = match encryption {
                EncryptionArg::None => Encryption::None,
                EncryptionArg::Repokey => {
                    let password = match source {
                        Some(s) => s.read()?,
                        None => new_password(None, "STRATA_PASSWORD").context(
                            "an encrypted repository (the default) needs a password; \
                             `--encryption none` makes a plain one",
                        )?,
                    };
                    Encryption::Repokey { password, kdf: strata::crypto::keyfile::KdfParams::for_new_keys() }
                }
            };
            init(&path, avg_chunk_kib, compression_level, encryption, copy_keys)?;
        }
        Command::Key { action } => key(&repo_path(&cli.repo)?, action)?,
        Command::Backup { source, kind, source_id, force_read, base, all_blocks, json } => {
            let path = repo_path(&cli.repo)?;
            // The lock record names the command only: no paths or ids (an encrypted repository
            // must not leak them through its lock file).
            // Shared: backups into one bucket run at once (a local repository locks exclusively).
            let repo = Repository::open_writer_as(&path, "backup", access(Access::shared()), &credentials())
                .with_context(|| format!("cannot open repository {}", path.display()))?;
            let kind = match kind {
                KindArg::Auto => KindRequest::Auto,
                KindArg::Full => KindRequest::Full,
                KindArg::Differential => KindRequest::Differential,
                KindArg::Incremental => KindRequest::Incremental,
            };
            let opts = BackupOptions { kind, source_id, force_read, now_ms: None, base, all_blocks };
            let bar = progress::Bar::new(json);
            let outcome = strata::backup::backup_outcome(&repo, &source, &opts, &bar)
                .with_context(|| format!("backup of {} failed", source.display()))?;
            bar.clear();
            output::backup(&outcome, json)?;
        }
        Command::Images { json } => {
            let path = repo_path(&cli.repo)?;
            let repo = Repository::open_with(&path, &credentials())
                .with_context(|| format!("cannot open repository {}", path.display()))?;
            output::images(&repo.images()?, &repo.damaged_images()?, json)?;
        }
        Command::Restore { image, target, partial, force, delta, json } => {
            let spec = strata::partition::Spec::parse(&image)?;
            let opts = strata::RestoreOptions { partial, force, partition: spec.partition, delta };
            restore(&repo_path(&cli.repo)?, &spec.image, &target, opts, json)?;
        }
        Command::Stats { json, set, image } => stats(&repo_path(&cli.repo)?, set, image, json)?,
        Command::Forget {
            images,
            keep_sets,
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            keep_within,
            source_id,
            rebase,
            dry_run,
            prune,
            max_unused,
            json,
        } => {
            let keep_within_ms = keep_within.map(|d| parse_duration_ms(&d)).transpose()?;
            let policy =
                Policy { keep_sets, keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within_ms };
            if images.is_empty() && policy.is_empty() {
                anyhow::bail!("nothing to forget: name images or give a --keep-* policy");
            }
            let repo = open_writer(&repo_path(&cli.repo)?, "forget")?;
            let (ids, damaged) = strata::forget::resolve(&repo, &images)?;
            let req = ForgetRequest { ids, policy, source_id, rebase, damaged };
            forget(&repo, &req, dry_run, prune.then_some(max_unused), json)?;
        }
        Command::Check { read_data, read_data_subset, json } => {
            check(&repo_path(&cli.repo)?, read_data, read_data_subset, json)?;
        }
        Command::Partitions { image, json } => partitions(&repo_path(&cli.repo)?, &image, json)?,
        Command::Ls { image, path, long, recursive, json } => {
            files::ls(&repo_path(&cli.repo)?, &image, &path, long, recursive, json)?
        }
        Command::Cat { image, path } => files::cat(&repo_path(&cli.repo)?, &image, &path)?,
        Command::Extract { image, paths, to, devices, json } => {
            files::extract(&repo_path(&cli.repo)?, &image, &paths, &to, devices, json)?
        }
        Command::Diff { old, new, path, json } => files::diff(&repo_path(&cli.repo)?, &old, &new, &path, json)?,
        Command::Mount { mountpoint, cache_mib } => serve::mount(&repo_path(&cli.repo)?, &mountpoint, cache_mib)?,
        Command::ServeNbd { image, unix, tcp, cache_mib } => {
            serve::nbd(&repo_path(&cli.repo)?, &image, unix.as_deref(), tcp.as_deref(), cache_mib)?
        }
        Command::Verify { image, json } => verify(&repo_path(&cli.repo)?, &image, json)?,
        Command::Run { job, kind, json } => jobs::run(&cli.repo, &job, kind, json)?,
        Command::Jobs { json } => jobs::jobs(&cli.repo, json)?,
        Command::Completions { shell } => install::completions(shell)?,
        Command::Man { dir } => install::man(&dir)?,
        Command::Schedule { job, systemd: _, user, out, cron } => {
            jobs::schedule(&cli.repo, &job, cron, user, out.as_deref())?
        }
        Command::Unlock { force, json } => {
            let path = repo_path(&cli.repo)?;
            let u = Repository::unlock(&path, force).with_context(|| format!("cannot unlock {}", path.display()))?;
            output::unlocked(&u, json)?;
        }
        Command::RebuildIndex { json } => {
            let path = repo_path(&cli.repo)?;
            let r = Repository::rebuild_index_with(&path, &credentials())
                .with_context(|| format!("cannot rebuild the index of {}", path.display()))?;
            output::rebuild(&r, json)?;
        }
        Command::Prune { dry_run, max_unused, json } => prune(&repo_path(&cli.repo)?, dry_run, max_unused, json)?,
        Command::Copy { to, images, to_password_file, json } => {
            copy(&repo_path(&cli.repo)?, to, &images, to_password_file, json)?
        }
    }
    Ok(())
}

fn verify(path: &std::path::Path, image: &str, json: bool) -> Result<()> {
    let bar = progress::Bar::new(json);
    let spec = strata::partition::Spec::parse(image)?;
    let (info, report) = Repository::read_image_consistently(
        path,
        &credentials(),
        &spec.image,
        |repo, info| strata::check::verify_partition(repo, info, spec.partition, &bar),
        |r| !r.is_clean(),
    )
    .with_context(|| format!("cannot verify image {image}"))?;
    bar.clear();
    output::check(&report, json)?;
    if !report.is_clean() {
        anyhow::bail!("image {} is damaged", info.id.short());
    }
    Ok(())
}

/// Forgets what `req` names (with `prune_above`: then prunes packs with more unused bytes than
/// that percentage).
fn forget(repo: &Repository, req: &ForgetRequest, dry_run: bool, prune_above: Option<f64>, json: bool) -> Result<()> {
    let plan = strata::forget::plan(&repo.images()?, req)?;
    let report = strata::forget::execute(repo, &plan, dry_run).context("forget failed")?;
    let pruned = match prune_above {
        Some(max_unused) if !dry_run => {
            let p = strata::prune::plan(repo, max_unused)?;
            Some(strata::prune::execute(repo, &p, &progress::Bar::new(json))?)
        }
        _ => None,
    };
    output::forget(&plan, &report, pruned.as_ref(), dry_run, json)
}

fn prune(path: &std::path::Path, dry_run: bool, max_unused: f64, json: bool) -> Result<()> {
    let repo = open_writer(path, "prune")?;
    let plan = strata::prune::plan(&repo, max_unused)?;
    let report = if dry_run {
        None
    } else {
        let bar = progress::Bar::new(json);
        let r = strata::prune::execute(&repo, &plan, &bar).context("prune failed")?;
        bar.clear();
        Some(r)
    };
    output::prune(&plan, report.as_ref(), json)
}

fn partitions(path: &std::path::Path, image: &str, json: bool) -> Result<()> {
    let (info, table) = Repository::read_image_consistently(
        path,
        &credentials(),
        image,
        |repo, info| {
            let reader = repo.reader(info, strata::reader::DEFAULT_CACHE_BYTES)?;
            strata::partition::read_table(&reader)
        },
        |_| false,
    )
    .with_context(|| format!("cannot read the partition table of image {image}"))?;
    output::partitions(&info, &table, json)
}

fn init(
    path: &std::path::Path,
    avg_chunk_kib: u32,
    compression_level: i32,
    encryption: Encryption,
    copy_keys: Option<strata::repository::CopiedKeys>,
) -> Result<()> {
    let avg = avg_chunk_kib.checked_mul(1024).context("--avg-chunk-kib is too large")?;
    let chunker =
        ChunkerParams { min_size: avg / 4, avg_size: avg, max_size: avg.saturating_mul(8), ..ChunkerParams::default() };
    let copied = copy_keys.is_some();
    let opts = InitOptions { chunker, compression_level, encryption, copy_keys, ..InitOptions::default() };
    let config =
        Repository::init(path, &opts).with_context(|| format!("cannot create a repository in {}", path.display()))?;
    println!(
        "created repository {} in {} (chunks {}/{}/{} KiB, zstd level {}, encryption {})",
        &config.repository_id[..8],
        path.display(),
        config.chunker.min_size / 1024,
        config.chunker.avg_size / 1024,
        config.chunker.max_size / 1024,
        config.compression_level,
        config.encryption
    );
    if copied {
        println!("  chunks are named as in the repository it copies keys from: `copy --to` this one stores only what it lacks");
    }
    Ok(())
}

/// The password of the second repository a command names (`copy --to`, `init
/// --copy-keys-from`): from `file`, else STRATA_PASSWORD2, else asked on a terminal (only if
/// that repository is encrypted).
fn second_credentials(file: Option<PathBuf>, repo: &std::path::Path) -> strata::repository::Credentials {
    let source = file.map(PasswordSource::File).or_else(|| env_password("STRATA_PASSWORD2"));
    credentials_from(source, format!("strata: password of {}: ", repo.display()))
}

/// `copy --to`: the source read without a lock, the destination written as a backup writes
/// (a shared lock in a bucket).
fn copy(
    src: &std::path::Path,
    to: PathBuf,
    images: &[String],
    to_password_file: Option<PathBuf>,
    json: bool,
) -> Result<()> {
    let to = well_formed(to)?;
    let from = Repository::open_with(src, &credentials())
        .with_context(|| format!("cannot open repository {}", src.display()))?;
    let creds = second_credentials(to_password_file, &to);
    let dst = Repository::open_writer_as(&to, "copy", access(Access::shared()), &creds)
        .with_context(|| format!("cannot open the destination repository {}", to.display()))?;
    let bar = progress::Bar::new(json);
    let report = strata::copy::copy(&from, &dst, images, &bar)
        .with_context(|| format!("copy from {} to {} failed", src.display(), to.display()))?;
    bar.clear();
    output::copy(&report, json)
}

fn restore(
    path: &std::path::Path,
    image: &str,
    target: &std::path::Path,
    opts: strata::RestoreOptions,
    json: bool,
) -> Result<()> {
    let bar = progress::Bar::new(json);
    let (info, report) = Repository::read_image_consistently(
        path,
        &credentials(),
        image,
        |repo, info| strata::restore_with(repo, info, target, &opts, &bar),
        |_| false,
    )
    .with_context(|| format!("restore of image {image} to {} failed", target.display()))?;
    bar.clear();
    output::restore(&info, &report, target, json)?;
    if !report.damaged.is_empty() {
        let lost: u64 = report.damaged.iter().map(|d| d.len).sum();
        anyhow::bail!("partial restore: {} damaged ranges ({lost} bytes) were written as zeros", report.damaged.len());
    }
    Ok(())
}

fn stats(path: &std::path::Path, set: Option<String>, image: Option<String>, json: bool) -> Result<()> {
    let repo = Repository::open_with(path, &credentials())
        .with_context(|| format!("cannot open repository {}", path.display()))?;
    let mut stats = strata::stats::stats(&repo)?;
    let set_filter = match (set, image) {
        (Some(s), _) => Some(find_set(&stats, &s)?),
        (_, Some(i)) => {
            let info = repo.find_image(&i)?;
            stats.images.retain(|x| x.id == info.id);
            Some(info.set)
        }
        _ => None,
    };
    if let Some(set) = set_filter {
        stats.sets.retain(|s| s.set == set);
        stats.images.retain(|i| i.set == set);
    }
    output::stats(&stats, json)
}

fn check(path: &std::path::Path, read_data: bool, read_data_subset: Option<f64>, json: bool) -> Result<()> {
    let read = match (read_data, read_data_subset) {
        (true, _) => ReadData::All,
        (_, Some(p)) if (0.0..=100.0).contains(&p) => ReadData::Subset(p),
        (_, Some(p)) => anyhow::bail!("--read-data-subset {p} is not a percentage between 0 and 100"),
        _ => ReadData::None,
    };
    let bar = progress::Bar::new(json);
    let report = Repository::read_consistently(
        path,
        &credentials(),
        |repo| strata::check::check(repo, read, &bar),
        |r| !r.is_clean(),
    )
    .with_context(|| format!("cannot check repository {}", path.display()))?;
    bar.clear();
    output::check(&report, json)?;
    if !report.is_clean() {
        anyhow::bail!("check found {} problem(s)", report.problems.len());
    }
    Ok(())
}

fn open_writer(path: &std::path::Path, command: &str) -> Result<Repository> {
    Repository::open_writer_as(path, command, access(Access::exclusive()), &credentials())
        .with_context(|| format!("cannot open repository {}", path.display()))
}

/// How long `--retry-lock` lets a writer wait for the lock, once per process.
static LOCK_WAIT: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();

/// `access`, waiting for the lock as `--retry-lock` says.
pub(crate) fn access(access: Access) -> Access {
    access.waiting(LOCK_WAIT.get().copied().unwrap_or_default())
}

fn find_set(stats: &strata::stats::Stats, spec: &str) -> Result<strata::id::ImageId> {
    let found: Vec<_> =
        stats.sets.iter().filter(|s| s.set.to_string().starts_with(&spec.to_ascii_lowercase())).collect();
    match found.as_slice() {
        [one] => Ok(one.set),
        [] => anyhow::bail!("no backup set matches {spec:?}; `strata stats` lists them"),
        _ => anyhow::bail!("{spec:?} matches several sets; give more characters"),
    }
}

/// `7d`, `12h`, `1y6m` (as a job file's `keep_within`).
fn parse_duration_ms(text: &str) -> Result<u64> {
    strata::job::parse_duration_ms(text).map_err(anyhow::Error::msg)
}
