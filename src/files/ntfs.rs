//! NTFS through the `ntfs` crate, which reads the volume through `Stream`. NTFS keeps Windows
//! security descriptors, not Unix owners and modes: entries are shown owned by root,
//! directories 0755, files 0644 (0444 when read-only). The metafiles (`$MFT`, `$Bitmap`, ...,
//! records 0-15) are hidden, as ntfs-3g hides them. Symlinks that ntfs-3g made (system files
//! holding `IntxLNK\x01` and a UTF-16 target, its default) are symlinks; reparse points
//! (Windows symlinks, junctions) are listed as `other` and not followed. The crate neither
//! decompresses nor decrypts, and would hand back raw clusters: a compressed stream is read in
//! its units of 16 clusters here (`ntfs_units`, LZNT1), and an encrypted one (EFS) is refused
//! before any byte is read.

use std::cell::RefCell;
use std::io::Write;
use std::sync::Arc;

use ntfs::attribute_value::NtfsAttributeValue;
use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace};
use ntfs::{Ntfs, NtfsAttributeFlags, NtfsError, NtfsFile, NtfsReadSeek};

use super::{fill, ntfs_units, read_full, Entry, EntryKind, Stream, Tree};
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
    /// Runs `read` on file `path`'s unnamed data stream (none: an empty file). An encrypted
    /// stream is refused before any byte is read.
    fn with_data<T: Default>(
        &self,
        path: &str,
        read: impl FnOnce(&mut Stream, &mut Data<'_, '_>) -> Result<T>,
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
        let refuse = |why: &str| Error::Filesystem {
            image: self.image.clone(),
            reason: format!("{path}: the file is {why} on NTFS, which Strata cannot read"),
        };
        if flags.contains(NtfsAttributeFlags::ENCRYPTED) {
            return Err(refuse("encrypted (EFS)"));
        }
        let value = attribute.value(fs).map_err(|e| self.error(path, e))?;
        let mut data = match (flags.contains(NtfsAttributeFlags::COMPRESSED), value) {
            (false, value) => Data::Plain(value),
            (true, NtfsAttributeValue::NonResident(value)) => {
                let mut runs = Vec::new();
                for run in value.data_runs() {
                    let run = run.map_err(|e| self.error(path, e))?;
                    runs.push((run.data_position().value().map(|p| p.get()), run.allocated_size()));
                }
                let unit = COMPRESSION_UNIT * self.ntfs.cluster_size() as u64;
                Data::Compressed { runs, unit, len: value.len(), buf: Vec::new(), raw: Vec::new() }
            }
            (true, _) => return Err(refuse("compressed and spread over an attribute list")),
        };
        read(fs, &mut data)
    }

    /// Reads `data` at `offset` into `buf`, up to its end; returns how many bytes.
    fn read_data(
        &self,
        path: &str,
        fs: &mut Stream,
        data: &mut Data<'_, '_>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        match data {
            Data::Plain(value) => {
                if offset >= value.len() {
                    return Ok(0);
                }
                value.seek(fs, std::io::SeekFrom::Start(offset)).map_err(|e| self.error(path, e))?;
                read_full(|b| value.read(fs, b).map_err(|e| self.error(path, e)), buf)
            }
            Data::Compressed { runs, unit, len, buf: decoded, raw } => {
                let end = (offset + buf.len() as u64).min(*len);
                let mut at = offset;
                while at < end {
                    let index = at / *unit;
                    unit_bytes(runs, *unit, index, fs, raw, decoded).map_err(|why| Error::Filesystem {
                        image: self.image.clone(),
                        reason: format!("{path}: compression unit {index}: {why}"),
                    })?;
                    let from = (at - index * *unit) as usize;
                    let n = ((end - at) as usize).min(*unit as usize - from);
                    let dst = (at - offset) as usize;
                    buf[dst..dst + n].copy_from_slice(&decoded[from..from + n]);
                    at += n as u64;
                }
                Ok((end.max(offset) - offset) as usize)
            }
        }
    }

    /// The names in directory `path`, without `.` and `..`.
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
}

/// Clusters per compression unit: NTFS compresses in units of 16 clusters (a compression unit
/// exponent of 4, the only one Windows writes; the crate does not expose the field).
const COMPRESSION_UNIT: u64 = 16;

/// A file's unnamed data stream.
enum Data<'n, 'f> {
    Plain(NtfsAttributeValue<'n, 'f>),
    /// Compressed in units of `unit` bytes: the data runs (volume offset, or `None` where
    /// sparse, and length), the stream's length, and buffers for one unit.
    Compressed {
        runs: Vec<(Option<u64>, u64)>,
        unit: u64,
        len: u64,
        buf: Vec<u8>,
        raw: Vec<u8>,
    },
}

/// Unit `index` of a compressed stream, decoded into `out`: all sparse is zeros, all allocated
/// is stored as is, partly allocated is LZNT1 in the allocated clusters.
fn unit_bytes(
    runs: &[(Option<u64>, u64)],
    unit: u64,
    index: u64,
    fs: &mut Stream,
    raw: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let (start, end) = (index * unit, (index + 1) * unit);
    raw.clear();
    let mut at = 0u64; // stream offset where the current run begins
    for &(position, length) in runs {
        let (from, to) = (start.max(at), end.min(at + length));
        if from < to {
            if let Some(position) = position {
                let old = raw.len();
                raw.resize(old + (to - from) as usize, 0);
                fs.seek(SeekFrom::Start(position + (from - at))).map_err(|e| e.to_string())?;
                fs.read_exact(&mut raw[old..]).map_err(|e| e.to_string())?;
            }
        }
        at += length;
        if at >= end {
            break;
        }
    }
    out.clear();
    match raw.len() as u64 {
        0 => out.resize(unit as usize, 0),
        n if n >= unit => out.extend_from_slice(&raw[..unit as usize]),
        _ => ntfs_units::decompress(raw, out, unit as usize)?,
    }
    Ok(())
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

    /// Looked up one by one in the directory's index after listing it (the index entries do
    /// not carry the standard information the entries need).
    fn entries(&self, dir: &str) -> Result<Vec<(String, Entry)>> {
        let mut out = Vec::new();
        for name in self.names(dir)? {
            let entry = match super::valid_name(&name) {
                true => self.stat(&super::child(dir, &name))?,
                false => Entry::empty(),
            };
            out.push((name, entry));
        }
        Ok(out)
    }

    fn copy(&self, path: &str, out: &mut dyn Write) -> Result<u64> {
        self.with_data(path, |fs, data| {
            let mut offset = 0u64;
            fill(
                |buf| {
                    let n = self.read_data(path, fs, data, offset, buf)?;
                    offset += n as u64;
                    Ok(n)
                },
                out,
            )
        })
    }

    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.with_data(path, |fs, data| self.read_data(path, fs, data, offset, buf))
    }
}
