//! `diff`: which files differ between two images of a filesystem. Both trees are listed, every
//! path of either is compared: added, removed, changed type, or modified (content, size, mode,
//! owner, mtime, symlink target). Regular files of equal size are compared by their bytes, so
//! the answer never rests on timestamps alone: both are read in step, 1 MiB at a time, up to
//! the first difference; when the two readers share a frame cache (the CLI's `diff` does), a
//! chunk both images hold is decoded once.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Entry, EntryKind, Files};
use crate::error::Result;
use crate::reader::ImageReader;

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
    if same_disk(&old.reader, &new.reader) {
        return Ok(Vec::new());
    }
    let (a, b) = (tree(old, path)?, tree(new, path)?);
    let paths: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = Vec::new();
    let mut bufs = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for p in paths {
        let change = |change, what| Change { path: p.clone(), change, what };
        match (a.get(p), b.get(p)) {
            (Some(_), None) => out.push(change(ChangeKind::Removed, Vec::new())),
            (None, Some(_)) => out.push(change(ChangeKind::Added, Vec::new())),
            (Some(x), Some(y)) if x.kind != y.kind => out.push(change(ChangeKind::Type, Vec::new())),
            (Some(x), Some(y)) => {
                let what = differences(old, new, x, y, &mut bufs)?;
                if !what.is_empty() {
                    out.push(change(ChangeKind::Modified, what));
                }
            }
            (None, None) => {}
        }
    }
    Ok(out)
}

/// Whether two readers give the same bytes everywhere, known from their maps alone: every byte
/// comes from the same chunk at the same place (chunk ids are content hashes), and the zero runs
/// between are the same. Then they hold the same filesystem, and nothing needs reading (an
/// unchanged incremental, or an image against itself).
pub fn same_disk(a: &ImageReader, b: &ImageReader) -> bool {
    let (x, y) = (a.map(), b.map());
    x.size() == y.size() && x.pieces() == y.pieces()
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

fn differences(
    old: &Files,
    new: &Files,
    x: &Entry,
    y: &Entry,
    bufs: &mut (Vec<u8>, Vec<u8>),
) -> Result<Vec<&'static str>> {
    let mut what = Vec::new();
    if x.kind == EntryKind::File && (x.size != y.size || !same_bytes(old, new, &x.path, bufs)?) {
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

/// Whether regular file `path` holds the same bytes in both filesystems.
fn same_bytes(old: &Files, new: &Files, path: &str, (a, b): &mut (Vec<u8>, Vec<u8>)) -> Result<bool> {
    let mut offset = 0u64;
    loop {
        let n = old.read_at(path, offset, a)?;
        let m = new.read_at(path, offset, b)?;
        if a[..n] != b[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
        offset += n as u64;
    }
}
