//! Files inside images: the filesystem of a whole-disk image or of one partition (`IMAGE:N`),
//! read through the image reader, with no mount, no root and no restore: ext2/3/4 (the
//! `ext4-view` crate), FAT12/16/32 (`fatfs`) and NTFS (`ntfs`), each behind one small trait
//! (`Tree`) whose panics become errors (`Contained`). `ls` and `cat` use `list` and `copy`;
//! `extract` and `diff` have their own modules.

mod diff;
mod ext;
mod extract;
mod fat;
mod ntfs;
mod ntfs_units;

pub use diff::{diff, same_disk, Change, ChangeKind};
pub use extract::{ExtractOptions, ExtractReport};

use std::io::{self, Read, Seek, SeekFrom, Write};
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
    /// A named pipe: extracted only with `ExtractOptions::devices`.
    Fifo,
    /// Device nodes: listed, never extracted (no reader gives their device numbers).
    #[serde(rename = "char-device")]
    CharDevice,
    #[serde(rename = "block-device")]
    BlockDevice,
    /// A socket is a running program's, never extracted (as `tar` leaves them out).
    Socket,
    /// An NTFS reparse point that is not a symlink, or a name no reader could stat.
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
    /// Root-owned, size 0, mode 0, epoch: fields a filesystem does not keep.
    fn empty() -> Entry {
        Entry { path: String::new(), kind: EntryKind::Other, size: 0, mode: 0, uid: 0, gid: 0, mtime: 0, target: None }
    }

    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("/")
    }
}

/// The filesystems Strata reads files from, as `partition::filesystem` names them.
pub const READABLE: [&str; 5] = ["ext2", "ext3", "ext4", "vfat", "ntfs"];

/// What every filesystem reader answers, for absolute paths without a trailing slash.
trait Tree {
    /// What `path` is (a symlink itself, not its target).
    fn stat(&self, path: &str) -> Result<Entry>;
    /// Each name in directory `dir` (without `.` and `..`) with what it is, in any order; a
    /// name that is not `valid_name` comes with `Entry::empty()`. Readers answer from the
    /// directory's own entries where they can: a `stat` per name resolves the path from the
    /// root every time.
    fn entries(&self, dir: &str) -> Result<Vec<(String, Entry)>>;
    /// Writes regular file `path`'s bytes to `out`; returns how many.
    fn copy(&self, path: &str, out: &mut dyn Write) -> Result<u64>;
    /// Reads regular file `path` from `offset` into `buf`: all of it, or up to the end of the
    /// file; returns how many bytes.
    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize>;
}

/// A `Tree` whose panics become errors. The filesystem crates parse metadata that a damaged
/// or half-written filesystem may hold in any state, and one of them (`ntfs` 0.4) was found to
/// index out of bounds on such bytes (`tests/filesystems.rs`, the damaged-filesystem test):
/// whatever they did not foresee must be an error for that path, never the end of the process.
struct Contained {
    inner: Box<dyn Tree>,
    image: String,
}

impl Tree for Contained {
    fn stat(&self, path: &str) -> Result<Entry> {
        contained(&self.image, path, || self.inner.stat(path))
    }

    fn entries(&self, dir: &str) -> Result<Vec<(String, Entry)>> {
        contained(&self.image, dir, || self.inner.entries(dir))
    }

    fn copy(&self, path: &str, out: &mut dyn Write) -> Result<u64> {
        contained(&self.image, path, || self.inner.copy(path, out))
    }

    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        contained(&self.image, path, || self.inner.read_at(path, offset, buf))
    }
}

/// Runs `run`; a panic inside it (a filesystem crate tripping over damaged metadata) becomes
/// an error about `path` in `image` (see `error::contain_panics`).
fn contained<T>(image: &str, path: &str, run: impl FnOnce() -> Result<T>) -> Result<T> {
    crate::error::contain_panics(run).unwrap_or_else(|message| {
        Err(Error::Filesystem {
            image: image.into(),
            reason: format!(
                "{path}: the filesystem's metadata is damaged in a way its reader did not foresee ({message})"
            ),
        })
    })
}

/// Whether `name` can be a directory entry: not empty, not `.` or `..`, no `/` or NUL.
fn valid_name(name: &str) -> bool {
    !(name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']))
}

/// The path of `name` in directory `dir`.
fn child(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// A name or path as text. ext2/3/4 names are bytes: one that is not UTF-8 is written with each
/// byte outside valid UTF-8 as `\xNN` and each `\` as `\\`, so it round-trips through
/// `unescape` (a name that is UTF-8 stays as it is).
pub(crate) fn escape(bytes: &[u8]) -> String {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return text.into();
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The bytes of a path that `escape` wrote, component by component: a component that unescapes
/// to bytes that are not UTF-8 was escaped and is those bytes; any other is itself (so a UTF-8
/// name that happens to hold `\x..` is read as written).
pub(crate) fn unescape(path: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for (i, part) in path.split('/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        match unescape_name(part) {
            Some(bytes) => out.extend_from_slice(&bytes),
            None => out.extend_from_slice(part.as_bytes()),
        }
    }
    out
}

/// `Some(bytes)` when `name` is an escaped name (it unescapes to bytes that are not UTF-8).
fn unescape_name(name: &str) -> Option<Vec<u8>> {
    if !name.contains('\\') {
        return None;
    }
    let b = name.as_bytes();
    let hex = |i: usize| b.get(i).filter(|c| c.is_ascii_hexdigit()).is_some();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') && hex(i + 2) && hex(i + 3) {
            out.push(u8::from_str_radix(&name[i + 2..i + 4], 16).ok()?);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::str::from_utf8(&out).is_err().then_some(out)
}

/// Fills `buf` from `read` until it is full or `read` gives nothing more; returns how many.
fn read_full(mut read: impl FnMut(&mut [u8]) -> Result<usize>, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match read(&mut buf[n..])? {
            0 => break,
            got => n += got,
        }
    }
    Ok(n)
}

/// How much `Window` reads at once, and how many such windows it keeps. The filesystem crates
/// ask for a block or a cluster at a time, and each read of the image reader looks its chunks
/// up in the index and checks them; reading ahead makes those costs per window, not per block.
/// Several windows, because a file's data and the metadata that maps it lie apart and are
/// read in turn.
const WINDOW: usize = 256 << 10;
const WINDOWS: usize = 4;

/// The image's bytes with read-ahead: small reads are served from the last `WINDOWS` windows
/// of `WINDOW` bytes read. When a window cannot be read whole (a damaged chunk somewhere in
/// it), the exact range is read instead, so a damaged chunk fails only the reads that meet it.
pub(crate) struct Window {
    reader: Arc<ImageReader>,
    /// (start, valid length, bytes), most recently used last.
    slots: Vec<(u64, usize, Vec<u8>)>,
}

impl Window {
    pub(crate) fn new(reader: Arc<ImageReader>) -> Window {
        Window { reader, slots: Vec::new() }
    }

    /// Fills `dst` with the bytes at `offset`, fewer at the end of the image; returns how many.
    pub(crate) fn read_at(&mut self, offset: u64, dst: &mut [u8]) -> Result<usize> {
        let end = offset.saturating_add(dst.len() as u64);
        let hit = self.slots.iter().position(|&(start, len, _)| offset >= start && end <= start + len as u64);
        let slot = match hit {
            Some(i) => i,
            None if dst.len() >= WINDOW => return self.reader.read_at(offset, dst),
            None => {
                let mut buf = match self.slots.len() >= WINDOWS {
                    true => self.slots.remove(0).2,
                    false => vec![0u8; WINDOW],
                };
                match self.reader.read_at(offset, &mut buf) {
                    Ok(n) => self.slots.push((offset, n, buf)),
                    Err(_) => return self.reader.read_at(offset, dst),
                }
                self.slots.len() - 1
            }
        };
        let used = self.slots.remove(slot);
        let at = (offset - used.0) as usize;
        let n = dst.len().min(used.1 - at);
        dst[..n].copy_from_slice(&used.2[at..at + n]);
        self.slots.push(used);
        Ok(n)
    }
}

/// The image (or partition) as a seekable byte stream, for the filesystem crates that read
/// through `std::io`. A damaged chunk is an error, never bytes.
struct Stream {
    window: Window,
    size: u64,
    pos: u64,
}

impl Stream {
    fn new(reader: Arc<ImageReader>) -> Stream {
        let size = reader.map().size();
        Stream { window: Window::new(reader), size, pos: 0 }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.window.read_at(self.pos, buf).map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Stream {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// Copies what `read` gives to `out` in whole 1 MiB buffers (the readers hand out a block or a
/// cluster at a time; whole buffers let a sparse writer see whole runs of zeros); returns how
/// many bytes.
fn fill(mut read: impl FnMut(&mut [u8]) -> Result<usize>, out: &mut dyn Write) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = read_full(&mut read, &mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        out.write_all(&buf[..n]).map_err(|e| Error::io("write", "the output", e))?;
        total += n as u64;
    }
}

/// Directories nested deeper than this are taken for a loop (a path of 4,096 bytes holds at
/// most 2,048 levels).
const MAX_DEPTH: usize = 2048;

/// The filesystem of one image (or partition).
pub struct Files {
    fs: Box<dyn Tree>,
    /// Where the filesystem's bytes come from.
    reader: Arc<ImageReader>,
    /// What the filesystem is (`ext4`, `vfat`, ...), as `partitions` names it.
    kind: &'static str,
    image: String,
}

impl Files {
    /// Opens the filesystem `reader` reads, found by its signature; `image` names it in errors.
    pub fn open(reader: impl Into<Arc<ImageReader>>, image: &str) -> Result<Files> {
        let reader = reader.into();
        let kind = crate::partition::filesystem(&*reader)?;
        let inner = contained(image, "/", || {
            let tree: Box<dyn Tree> = match kind {
                // The arms follow READABLE.
                Some("ext2" | "ext3" | "ext4") => Box::new(ext::ExtFiles::open(reader.clone(), image)?),
                Some("vfat") => Box::new(fat::FatFiles::open(reader.clone(), image)?),
                Some("ntfs") => Box::new(ntfs::NtfsFiles::open(reader.clone(), image)?),
                Some(other) => {
                    return Err(Error::UnsupportedFilesystem { image: image.into(), filesystem: other.into() })
                }
                None => return Err(Error::NoFilesystem { image: image.into() }),
            };
            Ok(tree)
        })?;
        let fs = Box::new(Contained { inner, image: image.into() });
        Ok(Files { fs, reader, kind: kind.unwrap_or_default(), image: image.into() })
    }

    /// What the filesystem is: `ext2`, `ext3`, `ext4`, `vfat` or `ntfs`.
    pub fn kind(&self) -> &'static str {
        self.kind
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
        self.list_into(&top.path, recursive, 0, &mut out)?;
        Ok(out)
    }

    fn list_into(&self, dir: &str, recursive: bool, depth: usize, out: &mut Vec<Entry>) -> Result<()> {
        if depth >= MAX_DEPTH {
            return Err(Error::Filesystem {
                image: self.image.clone(),
                reason: format!("{dir}: directories nested {MAX_DEPTH} deep (a directory loop?)"),
            });
        }
        let mut entries = self.fs.entries(dir)?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, entry) in entries {
            // A name no filesystem allows (damage, or crafted to climb out of a directory) is
            // an error, never a path.
            if !valid_name(&name) {
                return Err(Error::Filesystem {
                    image: self.image.clone(),
                    reason: format!("{dir}: an entry is named {name:?}, which no filesystem allows"),
                });
            }
            let path = child(dir, &name);
            let descend = recursive && entry.kind == EntryKind::Dir;
            out.push(entry);
            if descend {
                self.list_into(&path, true, depth + 1, out)?;
            }
        }
        Ok(())
    }

    /// Reads regular file `path` (not a symlink) from `offset` into `buf`, up to its end;
    /// returns how many bytes.
    pub fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.fs.read_at(&absolute(path), offset, buf)
    }

    /// Writes regular file `path`'s bytes to `out` (a symlink is followed); returns how many.
    pub fn copy(&self, path: &str, out: &mut dyn Write) -> Result<u64> {
        let mut path = absolute(path);
        // As the kernel does: at most 40 symlinks on the way.
        for _ in 0..40 {
            let entry = self.fs.stat(&path)?;
            match (entry.kind, entry.target) {
                (EntryKind::Symlink, Some(target)) => {
                    let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
                    path =
                        if target.starts_with('/') { absolute(&target) } else { absolute(&format!("{dir}/{target}")) };
                }
                _ => return self.fs.copy(&path, out),
            }
        }
        Err(Error::Filesystem {
            image: self.image.clone(),
            reason: format!("{path}: too many levels of symbolic links"),
        })
    }
}

/// `path` made absolute and lexically normal: no trailing slash (except `/` itself), no empty,
/// `.` or `..` components (`..` at the root stays at the root), so no entry is named `..`.
fn absolute(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_that_are_not_utf8_round_trip_through_their_escaped_text() {
        for name in [&b"caf\xe9.txt"[..], b"\xff\xfe", b"back\\slash\x80", b"ok.txt", b"a\\x41"] {
            let text = super::escape(name);
            assert_eq!(super::unescape(&text), name, "{text}");
            assert_eq!(super::unescape(&format!("/dir/{text}")), [&b"/dir/"[..], name].concat(), "{text}");
        }
        assert_eq!(super::escape(b"caf\xe9"), "caf\\xe9");
        assert_eq!(super::escape(b"\\\x80"), "\\\\\\x80");
        // A UTF-8 name that holds `\x..` is itself.
        assert_eq!(super::unescape("a\\x41"), b"a\\x41");
    }

    #[test]
    fn paths_are_absolute_without_a_trailing_slash() {
        let cases = [
            ("", "/"),
            ("/", "/"),
            ("etc", "/etc"),
            ("/etc/", "/etc"),
            ("a/b", "/a/b"),
            ("a//b/./c", "/a/b/c"),
            ("/etc/..", "/"),
            ("../../x", "/x"),
            ("a/../../b/..", "/"),
        ];
        for (given, want) in cases {
            assert_eq!(super::absolute(given), want);
        }
    }
}
