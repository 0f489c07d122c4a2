//! ext2/3/4 through the `ext4-view` crate, which replays the journal in memory and reads the
//! filesystem's blocks from the image reader. It is neither `Send` nor `Sync`: one thread owns it.
//! Names are bytes here: one that is not UTF-8 is shown escaped (`files::escape`) and looked up
//! by its bytes again.

use std::io::Write;
use std::sync::Arc;

use ext4_view::{Ext4, Ext4Error, Ext4Read};

use super::{escape, fill, read_full, unescape, Entry, EntryKind, Tree, Window};
use crate::error::{Error, Result};
use crate::reader::ImageReader;

/// The image's bytes as `ext4-view` asks for them: whole ranges, or an error (a damaged chunk
/// never becomes wrong bytes).
struct Blocks(Window);

impl Ext4Read for Blocks {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let n = self.0.read_at(start, dst)?;
        if n < dst.len() {
            return Err(format!("{} bytes asked for at {start}, past the end of the image", dst.len()).into());
        }
        Ok(())
    }
}

pub(super) struct ExtFiles {
    fs: Ext4,
    image: String,
    /// The file `read_at` read last, kept open: reading a file in steps resolves its path once.
    last: std::cell::RefCell<Option<(String, ext4_view::File)>>,
}

impl ExtFiles {
    pub(super) fn open(reader: Arc<ImageReader>, image: &str) -> Result<ExtFiles> {
        let fs = Ext4::load(Box::new(Blocks(Window::new(reader)))).map_err(|e| Error::Filesystem {
            image: image.into(),
            reason: format!("the ext2/3/4 filesystem cannot be read: {e}"),
        })?;
        Ok(ExtFiles { fs, image: image.into(), last: Default::default() })
    }

    fn error(&self, path: &str, e: Ext4Error) -> Error {
        match e {
            Ext4Error::NotFound => Error::FileNotFound { image: self.image.clone(), path: path.into() },
            e => Error::Filesystem { image: self.image.clone(), reason: format!("{path}: {e}") },
        }
    }
}

impl ExtFiles {
    /// The entry at `path` with metadata `meta` (a symlink's target is read by its path).
    fn entry(&self, path: &str, meta: ext4_view::Metadata) -> Result<Entry> {
        let kind = if meta.is_dir() {
            EntryKind::Dir
        } else if meta.is_symlink() {
            EntryKind::Symlink
        } else {
            let t = meta.file_type();
            if t.is_regular_file() {
                EntryKind::File
            } else if t.is_fifo() {
                EntryKind::Fifo
            } else if t.is_char_dev() {
                EntryKind::CharDevice
            } else if t.is_block_dev() {
                EntryKind::BlockDevice
            } else if t.is_socket() {
                EntryKind::Socket
            } else {
                EntryKind::Other
            }
        };
        let target = match kind {
            EntryKind::Symlink => {
                Some(escape(self.fs.read_link(&unescape(path)[..]).map_err(|e| self.error(path, e))?.as_ref()))
            }
            _ => None,
        };
        Ok(Entry {
            path: path.into(),
            kind,
            size: meta.len(),
            mode: meta.mode() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.modified().seconds(),
            target,
        })
    }
}

impl Tree for ExtFiles {
    fn stat(&self, path: &str) -> Result<Entry> {
        let meta = self.fs.symlink_metadata(&unescape(path)[..]).map_err(|e| self.error(path, e))?;
        self.entry(path, meta)
    }

    /// From the directory's own entries: each inode read once, no path resolved per name.
    fn entries(&self, dir: &str) -> Result<Vec<(String, Entry)>> {
        let mut out = Vec::new();
        for entry in self.fs.read_dir(&unescape(dir)[..]).map_err(|e| self.error(dir, e))? {
            let entry = entry.map_err(|e| self.error(dir, e))?;
            let name = escape(entry.file_name().as_ref());
            if name == "." || name == ".." {
                continue;
            }
            if !super::valid_name(&name) {
                out.push((name, Entry::empty()));
                continue;
            }
            let path = super::child(dir, &name);
            let meta = entry.metadata().map_err(|e| self.error(&path, e))?;
            out.push((name, self.entry(&path, meta)?));
        }
        Ok(out)
    }

    fn copy(&self, path: &str, out: &mut dyn Write) -> Result<u64> {
        let mut file = self.fs.open(&unescape(path)[..]).map_err(|e| self.error(path, e))?;
        fill(|buf| file.read_bytes(buf).map_err(|e| self.error(path, e)), out)
    }

    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut last = self.last.borrow_mut();
        if last.as_ref().is_none_or(|(p, _)| p != path) {
            *last = None;
            let file = self.fs.open(&unescape(path)[..]).map_err(|e| self.error(path, e))?;
            *last = Some((path.to_string(), file));
        }
        let Some((_, file)) = last.as_mut() else { return Ok(0) };
        if offset >= file.metadata().len() {
            return Ok(0);
        }
        if file.position() != offset {
            file.seek_to(offset).map_err(|e| self.error(path, e))?;
        }
        read_full(|b| file.read_bytes(b).map_err(|e| self.error(path, e)), buf)
    }
}
