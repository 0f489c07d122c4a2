//! FAT12/16/32 through the `fatfs` crate, which reads the volume through an `io` adapter over
//! the image reader. FAT keeps no owners or permission bits: entries are shown as Linux's vfat
//! driver shows them with its defaults (owner root, directories 0755, files 0644, read-only
//! files 0444), with times taken as UTC (FAT stores local time without a zone).

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use fatfs::{Dir, FileAttributes, FileSystem, FsOptions};

use super::{fill, read_full, Entry, EntryKind, Stream, Tree};
use crate::error::{Error, Result};
use crate::reader::ImageReader;

/// More entries than a FAT directory can hold (65,536): a cluster chain that loops.
const MAX_ENTRIES: usize = 65_536;

/// `Stream` with writes refused: `fatfs` wants a writable volume, and writes only when
/// something changes, which nothing here does.
struct Volume(Stream);

impl Read for Volume {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Seek for Volume {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.0.seek(to)
    }
}

impl Write for Volume {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "images are read-only"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(super) struct FatFiles {
    fs: FileSystem<Volume>,
    image: String,
}

impl FatFiles {
    pub(super) fn open(reader: Arc<ImageReader>, image: &str) -> Result<FatFiles> {
        let fs = FileSystem::new(Volume(Stream::new(reader)), FsOptions::new()).map_err(|e| Error::Filesystem {
            image: image.into(),
            reason: format!("the FAT filesystem cannot be read: {e}"),
        })?;
        Ok(FatFiles { fs, image: image.into() })
    }

    fn error(&self, path: &str, e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::NotFound => Error::FileNotFound { image: self.image.clone(), path: path.into() },
            _ => Error::Filesystem { image: self.image.clone(), reason: format!("{path}: {e}") },
        }
    }

    fn not_dir(&self, path: &str) -> Error {
        Error::Filesystem { image: self.image.clone(), reason: format!("{path}: not a directory") }
    }

    /// The directory at absolute `path`.
    fn dir(&self, path: &str) -> Result<Dir<'_, Volume>> {
        let root = self.fs.root_dir();
        match path.trim_start_matches('/') {
            "" => Ok(root),
            rel => root.open_dir(rel).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => self.error(path, e),
                _ => self.not_dir(path),
            }),
        }
    }

    /// Each entry of directory `path` but `.` and `..`, as (name, entry), at most `MAX_ENTRIES`.
    fn each_entry(&self, path: &str, mut each: impl FnMut(&fatfs::DirEntry<'_, Volume>) -> bool) -> Result<()> {
        for (n, entry) in self.dir(path)?.iter().enumerate() {
            if n >= MAX_ENTRIES {
                return Err(Error::Filesystem {
                    image: self.image.clone(),
                    reason: format!("{path}: more than {MAX_ENTRIES} entries (a looping cluster chain)"),
                });
            }
            let entry = entry.map_err(|e| self.error(path, e))?;
            let name = entry.file_name();
            if name != "." && name != ".." && !each(&entry) {
                break;
            }
        }
        Ok(())
    }
}

impl Tree for FatFiles {
    fn stat(&self, path: &str) -> Result<Entry> {
        let Some((parent, name)) = path.rsplit_once('/').filter(|(_, name)| !name.is_empty()) else {
            return Ok(Entry { path: "/".into(), kind: EntryKind::Dir, size: 0, mode: 0o755, ..Entry::empty() });
        };
        let parent = if parent.is_empty() { "/" } else { parent };
        let mut found = None;
        // An exact match first; FAT itself compares names without case.
        self.each_entry(parent, |e| {
            let n = e.file_name();
            if n == name || (found.is_none() && n.eq_ignore_ascii_case(name)) {
                found = Some(entry_of(path, e));
                return n != name;
            }
            true
        })?;
        found.ok_or_else(|| Error::FileNotFound { image: self.image.clone(), path: path.into() })
    }

    fn entries(&self, dir: &str) -> Result<Vec<(String, Entry)>> {
        let mut out = Vec::new();
        self.each_entry(dir, |e| {
            let name = e.file_name();
            let entry = entry_of(&super::child(dir, &name), e);
            out.push((name, entry));
            true
        })?;
        Ok(out)
    }

    fn copy(&self, path: &str, out: &mut dyn Write) -> Result<u64> {
        let size = self.stat(path)?.size;
        let mut file = self.open_file(path)?;
        let total = fill(|buf| file.read(buf).map_err(|e| self.error(path, e)), out)?;
        if total != size {
            return Err(Error::Filesystem {
                image: self.image.clone(),
                reason: format!("{path}: {total} bytes read of {size} (a short cluster chain)"),
            });
        }
        Ok(total)
    }

    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut file = self.open_file(path)?;
        let size = file.seek(SeekFrom::End(0)).map_err(|e| self.error(path, e))?;
        if offset >= size {
            return Ok(0);
        }
        file.seek(SeekFrom::Start(offset)).map_err(|e| self.error(path, e))?;
        read_full(|b| file.read(b).map_err(|e| self.error(path, e)), buf)
    }
}

impl FatFiles {
    fn open_file(&self, path: &str) -> Result<fatfs::File<'_, Volume>> {
        if self.stat(path)?.kind != EntryKind::File {
            return Err(Error::Filesystem { image: self.image.clone(), reason: format!("{path}: not a file") });
        }
        self.fs.root_dir().open_file(path.trim_start_matches('/')).map_err(|e| self.error(path, e))
    }
}

fn entry_of(path: &str, e: &fatfs::DirEntry<'_, Volume>) -> Entry {
    let dir = e.is_dir();
    let read_only = e.attributes().contains(FileAttributes::READ_ONLY);
    let mode = match (dir, read_only) {
        (true, _) => 0o755,
        (false, true) => 0o444,
        (false, false) => 0o644,
    };
    Entry {
        path: path.into(),
        kind: if dir { EntryKind::Dir } else { EntryKind::File },
        size: if dir { 0 } else { e.len() },
        mode,
        mtime: seconds(e.modified()),
        ..Entry::empty()
    }
}

/// A FAT date and time as seconds since the epoch, read as UTC.
fn seconds(t: fatfs::DateTime) -> i64 {
    let days = crate::timefmt::days_from_civil(t.date.year as i64, t.date.month as u32, t.date.day as u32);
    days * 86_400 + t.time.hour as i64 * 3600 + t.time.min as i64 * 60 + t.time.sec as i64
}
