//! `diff`: which files differ between two images of a filesystem. Both trees are listed, every
//! path of either is compared: added, removed, changed type, or modified (content, size, mode,
//! owner, mtime, symlink target). Regular files of equal size are compared by their bytes
//! (BLAKE3 of each, streamed), so the answer never rests on timestamps alone.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Entry, EntryKind, Files};
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Removed,
    Modified,
    /// The path is a different type of file (a file became a directory, say).
    Type,
}

/// One path that differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub path: String,
    pub change: ChangeKind,
    /// For `modified`: `content`, `size`, `mode`, `owner`, `mtime`, `target`.
    pub what: Vec<&'static str>,
}

/// The changes from `old` to `new` below `path` (inclusive), sorted by path.
pub fn diff(old: &Files, new: &Files, path: &str) -> Result<Vec<Change>> {
    let (a, b) = (tree(old, path)?, tree(new, path)?);
    let paths: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = Vec::new();
    for p in paths {
        let change = |change, what| Change { path: p.clone(), change, what };
        match (a.get(p), b.get(p)) {
            (Some(_), None) => out.push(change(ChangeKind::Removed, Vec::new())),
            (None, Some(_)) => out.push(change(ChangeKind::Added, Vec::new())),
            (Some(x), Some(y)) if x.kind != y.kind => out.push(change(ChangeKind::Type, Vec::new())),
            (Some(x), Some(y)) => {
                let what = differences(old, new, x, y)?;
                if !what.is_empty() {
                    out.push(change(ChangeKind::Modified, what));
                }
            }
            (None, None) => {}
        }
    }
    Ok(out)
}

/// Every entry at and below `path` (a missing path is an empty tree), by path.
fn tree(files: &Files, path: &str) -> Result<BTreeMap<String, Entry>> {
    let top = match files.stat(path) {
        Ok(top) => top,
        Err(crate::Error::FileNotFound { .. }) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let mut all = BTreeMap::new();
    if top.kind == EntryKind::Dir {
        for e in files.list(&top.path, true)? {
            all.insert(e.path.clone(), e);
        }
    }
    all.insert(top.path.clone(), top);
    Ok(all)
}

fn differences(old: &Files, new: &Files, x: &Entry, y: &Entry) -> Result<Vec<&'static str>> {
    let mut what = Vec::new();
    if x.kind == EntryKind::File && (x.size != y.size || hash(old, &x.path)? != hash(new, &y.path)?) {
        what.push("content");
    }
    if x.size != y.size && x.kind == EntryKind::File {
        what.push("size");
    }
    if x.mode != y.mode {
        what.push("mode");
    }
    if (x.uid, x.gid) != (y.uid, y.gid) {
        what.push("owner");
    }
    if x.mtime != y.mtime {
        what.push("mtime");
    }
    if x.target != y.target {
        what.push("target");
    }
    Ok(what)
}

fn hash(files: &Files, path: &str) -> Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    files.copy(path, &mut hasher)?;
    Ok(hasher.finalize())
}
