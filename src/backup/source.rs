//! Where bytes come from: a raw image file or a block device, read hole-aware.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::manifest::SourceStat;

pub(crate) struct Source {
    path: PathBuf,
    file: File,
    size: u64,
    is_block_device: bool,
    stat: Option<SourceStat>,
}

impl Source {
    pub fn open(path: &Path) -> Result<Source> {
        // The type first: opening a FIFO would block until a writer appears (with the writer
        // lock held); O_NONBLOCK covers a swap between this check and the open.
        let meta = std::fs::metadata(path).map_err(|e| Error::SourceOpen { path: path.into(), cause: e })?;
        if !meta.file_type().is_file() && !meta.file_type().is_block_device() {
            return Err(Error::SourceNotDisk { path: path.into() });
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| Error::SourceOpen { path: path.into(), cause: e })?;
        let meta = file.metadata().map_err(|e| Error::SourceOpen { path: path.into(), cause: e })?;
        let ft = meta.file_type();
        let (size, is_block_device, stat) = if ft.is_file() {
            (meta.len(), false, Some(stat_of(&meta)))
        } else if ft.is_block_device() {
            let size = (&file).seek(SeekFrom::End(0)).map_err(|e| Error::SourceOpen { path: path.into(), cause: e })?;
            (size, true, None)
        } else {
            return Err(Error::SourceNotDisk { path: path.into() });
        };
        Ok(Source { path: path.into(), file, size, is_block_device, stat })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size, inode and times of a regular file (None for block devices, which are always read).
    pub fn stat(&self) -> Option<SourceStat> {
        self.stat
    }

    /// The default identity of a source: its canonical path.
    pub(crate) fn canonical_id(&self) -> String {
        std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone()).to_string_lossy().into_owned()
    }

    /// Ranges of `start..end` that hold data, from SEEK_DATA/SEEK_HOLE; the rest are holes that
    /// read as zeros and need not be read. A filesystem without support reports all data.
    pub(crate) fn data_ranges(&self, start: u64, end: u64) -> Result<Vec<Range<u64>>> {
        if self.is_block_device {
            return Ok(vec![start..end]);
        }
        let fd = self.file.as_raw_fd();
        let mut out = Vec::new();
        let mut pos = start;
        while pos < end {
            // SAFETY: lseek on a file descriptor we own; it only moves the file position, which
            // nothing else uses (all reads are positional).
            let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                let err = std::io::Error::last_os_error();
                return match err.raw_os_error() {
                    Some(libc::ENXIO) => Ok(out), // only a hole remains
                    Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
                        out.push(pos..end);
                        Ok(out)
                    }
                    _ => Err(Error::SourceRead { path: self.path.clone(), offset: pos, cause: err }),
                };
            }
            let data = data as u64;
            if data >= end {
                break;
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
            let hole = if hole < 0 { end } else { (hole as u64).min(end) };
            out.push(data..hole);
            pos = hole;
        }
        Ok(out)
    }

    /// Fills `buf` from `offset`; a source that ends early has shrunk while being read.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let read = if crate::failpoint::fails!("source-eio") && offset >= self.size / 2 {
            Err(std::io::Error::from_raw_os_error(libc::EIO))
        } else {
            self.file.read_exact_at(buf, offset)
        };
        read.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                let found = self.current_size().unwrap_or(offset);
                Error::SourceShrank { path: self.path.clone(), expected: self.size, found }
            } else {
                Error::SourceRead { path: self.path.clone(), offset, cause: e }
            }
        })
    }

    /// The size now, to detect a source that shrank during the backup.
    pub(crate) fn current_size(&self) -> Result<u64> {
        if self.is_block_device {
            return (&self.file).seek(SeekFrom::End(0)).map_err(|e| Error::SourceRead {
                path: self.path.clone(),
                offset: 0,
                cause: e,
            });
        }
        let meta =
            self.file.metadata().map_err(|e| Error::SourceRead { path: self.path.clone(), offset: 0, cause: e })?;
        Ok(meta.len())
    }

    /// The stat now, to notice a file changed while it was read (then it is not recorded as a
    /// stat that later backups may skip on).
    pub(crate) fn current_stat(&self) -> Option<SourceStat> {
        self.file.metadata().ok().filter(|m| m.file_type().is_file()).map(|m| stat_of(&m))
    }
}

/// The allocation maps and the partition table are read through this (`allocation::scan`).
impl crate::partition::Disk for Source {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, at: u64, buf: &mut [u8]) -> Result<usize> {
        let want = (buf.len() as u64).min(self.size.saturating_sub(at)) as usize;
        self.read_exact_at(&mut buf[..want], at)?;
        Ok(want)
    }
    fn name(&self) -> String {
        self.path.display().to_string()
    }
    fn mounted_read_write(&self) -> Option<String> {
        mounts::read_write(&self.path, self.is_block_device)
    }
}

/// Whether a source is mounted read-write: by the device numbers of the source (a block device
/// and its partitions, or the loop devices and their partitions whose backing file it is), and
/// by mounts whose source is its path (ntfs-3g on a file).
mod mounts {
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use crate::mountinfo::{device_numbers, mounts};

    /// The device numbers of the block device `/sys/dev/block/<dev>` and its partitions.
    fn with_partitions(dev: &str) -> Vec<String> {
        let mut out = vec![dev.to_string()];
        let dir = Path::new("/sys/dev/block").join(dev);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.path().join("partition").exists() {
                if let Ok(d) = std::fs::read_to_string(e.path().join("dev")) {
                    out.push(d.trim().to_string());
                }
            }
        }
        out
    }

    pub(super) fn read_write(path: &Path, block_device: bool) -> Option<String> {
        let canonical = std::fs::canonicalize(path).ok()?;
        let mut devs = Vec::new();
        if block_device {
            devs = with_partitions(&device_numbers(std::fs::metadata(&canonical).ok()?.rdev()));
        } else {
            for e in std::fs::read_dir("/sys/block").into_iter().flatten().flatten() {
                let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).unwrap_or_default();
                if Path::new(backing.trim_end().trim_end_matches(" (deleted)")) == canonical {
                    if let Ok(d) = std::fs::read_to_string(e.path().join("dev")) {
                        devs.extend(with_partitions(d.trim()));
                    }
                }
            }
        }
        mounts()
            .into_iter()
            .find(|m| m.read_write && (devs.contains(&m.device) || m.source == canonical))
            .map(|m| format!("{} at {}", m.fstype, m.point.display()))
    }
}

fn stat_of(m: &std::fs::Metadata) -> SourceStat {
    SourceStat {
        dev: m.dev(),
        ino: m.ino(),
        size: m.len(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sparse_file_reports_its_data_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse.img");
        let f = File::create(&p).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 4 << 20).unwrap();
        drop(f);
        let s = Source::open(&p).unwrap();
        let ranges = s.data_ranges(0, s.size()).unwrap();
        let data: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        // tmpfs and ext4 report the one written block; a filesystem without SEEK_DATA says all data.
        assert!(data == 4096 || data == 8 << 20, "data ranges {ranges:?}");
        assert!(ranges.iter().any(|r| r.contains(&(4 << 20))));
    }

    #[test]
    fn a_directory_is_not_a_disk() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Source::open(dir.path()), Err(Error::SourceNotDisk { .. })));
        assert!(matches!(Source::open(&dir.path().join("nope")), Err(Error::SourceOpen { .. })));
        let mut f = File::create(dir.path().join("f")).unwrap();
        f.write_all(b"x").unwrap();
        assert_eq!(Source::open(&dir.path().join("f")).unwrap().size(), 1);
    }
}
