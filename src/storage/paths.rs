//! The repository's layout (docs/FORMAT.md, "Repository layout"): which object lives where, and
//! the one place that lists packs and manifests.
//!
//! ```text
//! config              repository config (written last by init)
//! generation          the last finished writing command's number
//! packs/<xx>/<id>     pack files, named by the BLAKE3 of their bytes
//! images/<id>         one manifest per image
//! runs/<job>/<ms>.json the record of one run of a job
//! index/              the RocksDB index (local, never behind a Backend)
//! lock                the writer lock (local)
//! ```

use super::Backend;
use crate::error::Result;
use crate::id::{ImageId, PackId};

pub(crate) const CONFIG: &str = "config";
pub(crate) const GENERATION: &str = "generation";
pub(crate) const PACKS: &str = "packs";
pub(crate) const IMAGES: &str = "images";
pub(crate) const INDEX: &str = "index";
pub(crate) const RUNS: &str = "runs";

/// The record of the run of job `job` (a valid job name) that started at `started_ms`.
pub fn run_record(job: &str, started_ms: u64) -> String {
    format!("{RUNS}/{job}/{started_ms:013}.json")
}

/// The folder of job `job`'s run records.
pub fn run_records(job: &str) -> String {
    format!("{RUNS}/{job}")
}

pub fn manifest(id: &ImageId) -> String {
    format!("{IMAGES}/{id}")
}

/// A file in `packs/`: its path, and its id when it is named like a pack (a file that is not
/// is nothing of Strata's, and every command leaves it alone).
pub struct PackFile {
    pub path: String,
    pub id: Option<PackId>,
}

/// Every file in `packs/`.
pub fn pack_files(backend: &dyn Backend) -> Result<Vec<PackFile>> {
    Ok(backend
        .list(PACKS)?
        .into_iter()
        .map(|path| {
            let id = path.rsplit('/').next().and_then(PackId::parse);
            PackFile { path, id }
        })
        .collect())
}

/// The ids of every manifest in `images/` (files not named like an image are skipped).
pub(crate) fn manifest_ids(backend: &dyn Backend) -> Result<Vec<ImageId>> {
    Ok(backend.list(IMAGES)?.iter().filter_map(|name| name.strip_prefix("images/").and_then(ImageId::parse)).collect())
}
