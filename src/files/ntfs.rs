//! NTFS through the `ntfs` crate, which reads the volume through `Stream`. NTFS keeps Windows
//! security descriptors, not Unix owners and modes: entries are shown owned by root,
//! directories 0755, files 0644 (0444 when read-only). The metafiles (`$MFT`, `$Bitmap`, ...,
//! records 0-15) are hidden, as ntfs-3g hides them. Symlinks that ntfs-3g made (system files
//! holding `IntxLNK\x01` and a UTF-16 target, its default) are symlinks; reparse points
//! (Windows symlinks, junctions) are listed as `other` and not followed. The crate does not decompress or decrypt: a compressed
//! or encrypted file is listed, and reading it is an error naming why.

use std::cell::RefCell;
use std::io::Write;
use std::sync::Arc;

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace};
use ntfs::{Ntfs, NtfsAttributeFlags, NtfsError, NtfsFile, NtfsReadSeek};

use super::{fill, read_full, Entry, EntryKind, Stream, Tree};
use crate::error::{Error, Result};
use crate::reader::ImageReader;

/// Records below this are NTFS's own metafiles (`$MFT` is 0, the root directory 5).
const FIRST_USER_RECORD: u64 = 16;
/// More entries than any directory holds: an index whose nodes loop.
const MAX_ENTRIES: usize = 1 << 22;
/// Seconds from 1601-01-01 (NTFS's epoch) to 1970-01-01.
const EPOCH_DELTA: u64 = 11_644_473_600;
const ROOT_RECORD: u64 = 5;

pub(super) struct NtfsFiles {
    ntfs: Ntfs,
    stream: RefCell<Stream>,
    image: String,
}

impl NtfsFiles {
    pub(super) fn open(reader: Arc<ImageReader>, image: &str) -> Result<NtfsFiles> {
        let mut stream = Stream::new(reader);
        let unreadable = |e: NtfsError| Error::Filesystem {
            image: image.into(),
            reason: format!("the NTFS filesystem cannot be read: {e}"),
        };
        let mut ntfs = Ntfs::new(&mut stream).map_err(unreadable)?;
        // Names are compared without case through the volume's own $UpCase table.
        ntfs.read_upcase_table(&mut stream).map_err(unreadable)?;
        Ok(NtfsFiles { ntfs, stream: RefCell::new(stream), image: image.into() })
    }

    fn error(&self, path: &str, e: NtfsError) -> Error {
        Error::Filesystem { image: self.image.clone(), reason: format!("{path}: {e}") }
    }

    fn not_found(&self, path: &str) -> Error {
        Error::FileNotFound { image: self.image.clone(), path: path.into() }
    }

    /// The file record at absolute `path`, looked up one component at a time.
    fn find(&self, path: &str, fs: &mut Stream) -> Result<NtfsFile<'_>> {
        let mut file = self.ntfs.root_directory(fs).map_err(|e| self.error(path, e))?;
        for name in path.split('/').filter(|n| !n.is_empty()) {
            if !file.is_directory() {
                return Err(self.not_found(path));
            }
            let index = file.directory_index(fs).map_err(|e| self.error(path, e))?;
            let mut finder = index.finder();
            let entry = match NtfsFileNameIndex::find(&mut finder, &self.ntfs, fs, name) {
                None => return Err(self.not_found(path)),
                Some(entry) => entry.map_err(|e| self.error(path, e))?,
            };
            if entry.file_reference().file_record_number() < FIRST_USER_RECORD {
                return Err(self.not_found(path));
            }
            file = entry.to_file(&self.ntfs, fs).map_err(|e| self.error(path, e))?;
        }
        Ok(file)
    }
}

impl NtfsFiles {
    /// The target of an Interix symlink (`IntxLNK\x01` and the target in UTF-16LE), which is
    /// how ntfs-3g stores symlinks by default; `None` for any other file.
    fn interix_target(&self, file: &NtfsFile<'_>, fs: &mut Stream, path: &str) -> Result<Option<String>> {
        let Some(item) = file.data(fs, "") else { return Ok(None) };
        let item = item.map_err(|e| self.error(path, e))?;
        let attribute = item.to_attribute().map_err(|e| self.error(path, e))?;
        let mut value = attribute.value(fs).map_err(|e| self.error(path, e))?;
        let mut bytes = Vec::new();
        fill(|buf| value.read(fs, buf).map_err(|e| self.error(path, e)), &mut bytes)?;
        let Some(utf16) = bytes.strip_prefix(b"IntxLNK\x01") else { return Ok(None) };
        if utf16.len() % 2 != 0 {
            return Ok(None);
        }
        let units: Vec<u16> = utf16.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        Ok(String::from_utf16(&units).ok())
    }
    /// Runs `read` on file `path`'s unnamed data stream (none: an empty file), refusing a
    /// compressed or encrypted one before any byte is read.
    fn with_data<T: Default>(
        &self,
        path: &str,
        read: impl FnOnce(&mut Stream, &mut ntfs::attribute_value::NtfsAttributeValue<'_, '_>) -> Result<T>,
    ) -> Result<T> {
        let fs = &mut *self.stream.borrow_mut();
        let file = self.find(path, fs)?;
        if file.is_directory() {
            return Err(Error::Filesystem { image: self.image.clone(), reason: format!("{path}: not a file") });
        }
        let item = match file.data(fs, "") {
            None => return Ok(T::default()),
            Some(item) => item.map_err(|e| self.error(path, e))?,
        };
        let attribute = item.to_attribute().map_err(|e| self.error(path, e))?;
        let flags = attribute.flags();
        for (flag, what) in
            [(NtfsAttributeFlags::COMPRESSED, "compressed"), (NtfsAttributeFlags::ENCRYPTED, "encrypted")]
        {
            if flags.contains(flag) {
                return Err(Error::Filesystem {
                    image: self.image.clone(),
                    reason: format!("{path}: the file is {what} on NTFS, which Strata cannot read yet"),
                });
            }
        }
        let mut value = attribute.value(fs).map_err(|e| self.error(path, e))?;
        read(fs, &mut value)
    }
}

impl Tree for NtfsFiles {
    fn stat(&self, path: &str) -> Result<Entry> {
        let fs = &mut *self.stream.borrow_mut();
        let file = self.find(path, fs)?;
        let info = file.info().map_err(|e| self.error(path, e))?;
        let flags = info.file_attributes();
        let kind = if flags.contains(NtfsFileAttributeFlags::REPARSE_POINT) {
            EntryKind::Other
        } else if file.is_directory() {
            EntryKind::Dir
        } else {
            EntryKind::File
        };
        let size = match (kind, file.data(fs, "")) {
            (EntryKind::File, Some(item)) => {
                let item = item.map_err(|e| self.error(path, e))?;
                item.to_attribute().map_err(|e| self.error(path, e))?.value_length()
            }
            _ => 0,
        };
        let (kind, target) = match kind {
            EntryKind::File if flags.contains(NtfsFileAttributeFlags::SYSTEM) && size < 8 + 2 * 4096 => {
                match self.interix_target(&file, fs, path)? {
                    Some(target) => (EntryKind::Symlink, Some(target)),
                    None => (kind, None),
                }
            }
            _ => (kind, None),
        };
        let mode = match kind {
            EntryKind::Symlink => 0o777,
            EntryKind::Dir => 0o755,
            _ if flags.contains(NtfsFileAttributeFlags::READ_ONLY) => 0o444,
            _ => 0o644,
        };
        let mtime = (info.modification_time().nt_timestamp() / 10_000_000) as i64 - EPOCH_DELTA as i64;
        let size = target.as_ref().map_or(size, |t| t.len() as u64);
        Ok(Entry { path: path.into(), kind, size, mode, mtime, target, ..Entry::empty() })
    }

    fn names(&self, path: &str) -> Result<Vec<String>> {
        let fs = &mut *self.stream.borrow_mut();
        let dir = self.find(path, fs)?;
        if !dir.is_directory() {
            return Err(Error::Filesystem { image: self.image.clone(), reason: format!("{path}: not a directory") });
        }
        let index = dir.directory_index(fs).map_err(|e| self.error(path, e))?;
        let mut entries = index.entries();
        let mut out = Vec::new();
        while let Some(entry) = entries.next(fs) {
            if out.len() >= MAX_ENTRIES {
                return Err(self.error(path, NtfsError::Io(std::io::Error::other("a directory index that loops"))));
            }
            let entry = entry.map_err(|e| self.error(path, e))?;
            let Some(key) = entry.key() else { continue };
            let name = key.map_err(|e| self.error(path, e))?;
            let record = entry.file_reference().file_record_number();
            // A DOS name repeats a long name of the same file; `.` is the root's own entry.
            if name.namespace() == NtfsFileNamespace::Dos || record < FIRST_USER_RECORD || record == ROOT_RECORD {
                continue;
            }
            out.push(name.name().to_string_lossy());
        }
        Ok(out)
    }

    fn copy(&self, path: &str, out: &mut dyn Write) -> Result<u64> {
        self.with_data(path, |fs, value| fill(|buf| value.read(fs, buf).map_err(|e| self.error(path, e)), out))
    }

    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.with_data(path, |fs, value| {
            if offset >= value.len() {
                return Ok(0);
            }
            value.seek(fs, std::io::SeekFrom::Start(offset)).map_err(|e| self.error(path, e))?;
            read_full(|b| value.read(fs, b).map_err(|e| self.error(path, e)), buf)
        })
    }
}
