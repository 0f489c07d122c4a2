//! Files inside images: the filesystem of a whole-disk image or of one partition (`IMAGE:N`),
//! read through the image reader, with no mount, no root and no restore. So far ext2/3/4 (the
//! `ext4-view` crate); FAT and NTFS come with the rest of this feature (docs/DESIGN.md).
//! `ls` and `cat` use `list` and `copy`; `extract` and `diff` have their own modules.

mod diff;
mod ext;
mod extract;

pub use diff::{diff, Change, ChangeKind};
pub use extract::ExtractReport;

use std::io::Write;
use std::sync::Arc;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::reader::ImageReader;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// A device, fifo or socket.
    Other,
}

/// One file or directory, as `ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Absolute inside the filesystem (`/etc/hostname`).
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    pub size: u64,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// A symlink's target.
    pub target: Option<String>,
}

impl Entry {
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("/")
    }
}

/// The filesystem of one image (or partition).
pub struct Files {
    fs: ext::ExtFiles,
}

impl Files {
    /// Opens the filesystem `reader` reads, found by its signature; `image` names it in errors.
    pub fn open(reader: ImageReader, image: &str) -> Result<Files> {
        match crate::partition::filesystem(&reader)? {
            Some("ext2" | "ext3" | "ext4") => Ok(Files { fs: ext::ExtFiles::open(Arc::new(reader), image)? }),
            Some(other) => Err(Error::UnsupportedFilesystem { image: image.into(), filesystem: other.into() }),
            None => Err(Error::NoFilesystem { image: image.into() }),
        }
    }

    /// What `path` is.
    pub fn stat(&self, path: &str) -> Result<Entry> {
        self.fs.stat(&absolute(path))
    }

    /// The entries of directory `path` sorted by name, or `path` alone when it is not a
    /// directory; with `recursive`, every entry below it, depth first.
    pub fn list(&self, path: &str, recursive: bool) -> Result<Vec<Entry>> {
        let top = self.stat(path)?;
        if top.kind != EntryKind::Dir {
            return Ok(vec![top]);
        }
        let mut out = Vec::new();
        self.list_into(&top.path, recursive, &mut out)?;
        Ok(out)
    }

    fn list_into(&self, dir: &str, recursive: bool, out: &mut Vec<Entry>) -> Result<()> {
        let mut names = self.fs.names(dir)?;
        names.sort();
        for name in names {
            let path = if dir == "/" { format!("/{name}") } else { format!("{dir}/{name}") };
            let entry = self.fs.stat(&path)?;
            let descend = recursive && entry.kind == EntryKind::Dir;
            out.push(entry);
            if descend {
                self.list_into(&path, true, out)?;
            }
        }
        Ok(())
    }

    /// Writes regular file `path`'s bytes to `out` (a symlink is followed); returns how many.
    pub fn copy(&self, path: &str, out: &mut dyn Write) -> Result<u64> {
        self.fs.copy(&absolute(path), out)
    }
}

/// `path` made absolute, without a trailing slash (except `/` itself).
fn absolute(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    match trimmed {
        "" => "/".into(),
        p if p.starts_with('/') => p.into(),
        p => format!("/{p}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_are_absolute_without_a_trailing_slash() {
        for (given, want) in [("", "/"), ("/", "/"), ("etc", "/etc"), ("/etc/", "/etc"), ("a/b", "/a/b")] {
            assert_eq!(super::absolute(given), want);
        }
    }
}
