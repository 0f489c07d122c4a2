//! Command-line adapter: arguments become library options; results become tables or JSON.

mod output;
mod progress;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use strata::config::ChunkerParams;
use strata::{BackupOptions, InitOptions, KindRequest, Repository};

#[derive(Parser)]
#[command(name = "strata", version, about = "Deduplicating full, differential and incremental disk images")]
struct Cli {
    /// Repository directory
    #[arg(short = 'r', long = "repo", env = "STRATA_REPO", global = true)]
    repo: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a repository (chunk sizes and compression are fixed here)
    Init {
        /// Directory to create (or an empty one); defaults to --repo
        path: Option<PathBuf>,
        /// Average chunk size in KiB (min = avg/4, max = 8 x avg)
        #[arg(long, default_value_t = 16)]
        avg_chunk_kib: u32,
        /// zstd level for chunk data
        #[arg(long, default_value_t = 3)]
        compression_level: i32,
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
        /// Print one JSON object instead of a summary
        #[arg(long)]
        json: bool,
    },
    /// List images, oldest first
    Images {
        #[arg(long)]
        json: bool,
    },
    /// Restore an image (id, unique id prefix, or `latest`) to a file or block device
    Restore {
        image: String,
        target: PathBuf,
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

fn repo_path(cli_repo: &Option<PathBuf>) -> Result<PathBuf> {
    cli_repo.clone().context("no repository given: pass -r/--repo or set STRATA_REPO")
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init { path, avg_chunk_kib, compression_level } => {
            let path = match path {
                Some(p) => p,
                None => repo_path(&cli.repo)?,
            };
            let avg = avg_chunk_kib.checked_mul(1024).context("--avg-chunk-kib is too large")?;
            let chunker = ChunkerParams {
                min_size: avg / 4,
                avg_size: avg,
                max_size: avg.saturating_mul(8),
                ..ChunkerParams::default()
            };
            let config = Repository::init(&path, &InitOptions { chunker, compression_level, ..InitOptions::default() })
                .with_context(|| format!("cannot create a repository in {}", path.display()))?;
            println!(
                "created repository {} in {} (chunks {}/{}/{} KiB, zstd level {})",
                &config.repository_id[..8],
                path.display(),
                config.chunker.min_size / 1024,
                config.chunker.avg_size / 1024,
                config.chunker.max_size / 1024,
                config.compression_level
            );
        }
        Command::Backup { source, kind, source_id, force_read, json } => {
            let path = repo_path(&cli.repo)?;
            let repo = Repository::open_writer(&path, &format!("backup {}", source.display()))
                .with_context(|| format!("cannot open repository {}", path.display()))?;
            let kind = match kind {
                KindArg::Auto => KindRequest::Auto,
                KindArg::Full => KindRequest::Full,
                KindArg::Differential => KindRequest::Differential,
                KindArg::Incremental => KindRequest::Incremental,
            };
            let opts = BackupOptions { kind, source_id, force_read };
            let bar = progress::Bar::new(json);
            let info = strata::backup(&repo, &source, &opts, &bar)
                .with_context(|| format!("backup of {} failed", source.display()))?;
            bar.clear();
            output::backup(&info, json)?;
        }
        Command::Images { json } => {
            let path = repo_path(&cli.repo)?;
            let repo = Repository::open(&path).with_context(|| format!("cannot open repository {}", path.display()))?;
            output::images(&repo.images()?, json)?;
        }
        Command::Restore { image, target, json } => {
            let path = repo_path(&cli.repo)?;
            let repo = Repository::open(&path).with_context(|| format!("cannot open repository {}", path.display()))?;
            let info = repo.find_image(&image)?;
            let bar = progress::Bar::new(json);
            let report = strata::restore(&repo, &info, &target, &bar)
                .with_context(|| format!("restore of image {} to {} failed", info.id.short(), target.display()))?;
            bar.clear();
            output::restore(&info, &report, &target, json)?;
        }
    }
    Ok(())
}
