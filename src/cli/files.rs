//! The commands that read files inside images: `ls`, `cat`, `extract`, `diff`.

use std::path::Path;

use anyhow::{Context, Result};

use super::output;
use strata::Repository;

pub(super) fn ls(repo: &Path, image: &str, path: &str, long: bool, recursive: bool, json: bool) -> Result<()> {
    let entries = with_files(repo, image, |files| files.list(path, recursive))
        .with_context(|| format!("cannot list {path} in image {image}"))?;
    output::ls(&entries, long, recursive, json)
}

pub(super) fn cat(repo: &Path, image: &str, path: &str) -> Result<()> {
    // One attempt only: a rerun after a racing writer would print the bytes before the failure
    // twice.
    let files = open_files(repo, image).with_context(|| format!("cannot open image {image}"))?;
    files.copy(path, &mut std::io::stdout().lock()).with_context(|| format!("cannot read {path} in image {image}"))?;
    Ok(())
}

pub(super) fn extract(repo: &Path, image: &str, paths: &[String], to: &Path, devices: bool, json: bool) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if devices && unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("--devices recreates setuid files and fifos as they were, which only root may do");
    }
    let options = strata::files::ExtractOptions { devices };
    let report = with_files(repo, image, |files| files.extract(paths, to, options))
        .with_context(|| format!("cannot extract from image {image} into {}", to.display()))?;
    output::extract(&report, to, json)?;
    if !report.failed.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

pub(super) fn diff(root: &Path, old: &str, new: &str, path: &str, json: bool) -> Result<()> {
    // One repository, one frame cache: the chunks the two images share are decoded once.
    let repo = Repository::open_with(root, &super::credentials())?;
    let cache = std::sync::Arc::new(strata::reader::FrameCache::new(strata::reader::DEFAULT_CACHE_BYTES));
    let open = |spec: &str| -> Result<(strata::reader::ImageReader, String)> {
        let spec_ = strata::partition::Spec::parse(spec)?;
        let info = repo.find_image(&spec_.image)?;
        Ok(reader_of(&repo, &info, spec_.partition, Some(cache.clone()))?)
    };
    let (ra, na) = open(old).with_context(|| format!("cannot open image {old}"))?;
    let (rb, nb) = open(new).with_context(|| format!("cannot open image {new}"))?;
    if strata::files::same_disk(&ra, &rb) {
        return output::diff(&[], json);
    }
    let a = strata::files::Files::open(ra, &na).with_context(|| format!("cannot open image {old}"))?;
    let b = strata::files::Files::open(rb, &nb).with_context(|| format!("cannot open image {new}"))?;
    let changes = strata::files::diff(&a, &b, path).with_context(|| format!("cannot compare {old} and {new}"))?;
    output::diff(&changes, json)
}

/// Runs `run` on the filesystem of image `spec` (`IMAGE[:N]`).
fn with_files<T>(
    path: &Path,
    spec: &str,
    mut run: impl FnMut(&strata::files::Files) -> strata::Result<T>,
) -> Result<T> {
    let spec = strata::partition::Spec::parse(spec)?;
    let (_, out) = Repository::read_image_consistently(
        path,
        &super::credentials(),
        &spec.image,
        |repo, info| run(&files_of(repo, info, spec.partition, None)?),
        |_| false,
    )?;
    Ok(out)
}

/// The filesystem of image `spec` (`IMAGE[:N]`), for as long as it is used.
fn open_files(path: &Path, spec: &str) -> Result<strata::files::Files> {
    let spec = strata::partition::Spec::parse(spec)?;
    let repo = Repository::open_with(path, &super::credentials())?;
    let info = repo.find_image(&spec.image)?;
    Ok(files_of(&repo, &info, spec.partition, None)?)
}

fn files_of(
    repo: &Repository,
    info: &strata::ImageInfo,
    partition: Option<u32>,
    cache: Option<std::sync::Arc<strata::reader::FrameCache>>,
) -> strata::Result<strata::files::Files> {
    let (reader, name) = reader_of(repo, info, partition, cache)?;
    strata::files::Files::open(reader, &name)
}

/// The reader of image `info` (or its partition), and the name errors give it.
fn reader_of(
    repo: &Repository,
    info: &strata::ImageInfo,
    partition: Option<u32>,
    cache: Option<std::sync::Arc<strata::reader::FrameCache>>,
) -> strata::Result<(strata::reader::ImageReader, String)> {
    let mut reader = match cache {
        Some(cache) => repo.reader_sharing(info, cache)?,
        None => repo.reader(info, strata::reader::DEFAULT_CACHE_BYTES)?,
    };
    let mut name = info.id.short();
    if let Some(n) = partition {
        reader = strata::partition::narrow(reader, n)?;
        name = format!("{name}:{n}");
    }
    Ok((reader, name))
}
