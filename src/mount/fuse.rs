//! The FUSE adapter: answers the kernel's requests from the namespace (`layout`) and the image
//! readers (`images`). Read-only: every call that would change something is refused by the
//! kernel (the filesystem is mounted `ro`) or left to fuser's default reply.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenAccMode,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, Request,
};

use super::images::{Images, Key, View};
use super::layout::{Holds, Inodes, Node, Type};
use super::Log;
use crate::files::{Entry, EntryKind};

/// How long the kernel may keep names and attributes: new images show within about this.
const TTL: Duration = Duration::from_secs(1);

pub(super) struct StrataFs {
    images: Images,
    inodes: Mutex<Inodes>,
    log: Log,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

thread_local! {
    /// Each FUSE thread reuses one read buffer (fresh memory is slow to touch).
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl StrataFs {
    pub(super) fn new(images: Images, log: Log) -> StrataFs {
        // SAFETY: getuid and getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        StrataFs { images, inodes: Mutex::new(Inodes::new()), log, uid, gid, started: SystemTime::now() }
    }

    fn view(&self) -> std::sync::Arc<View> {
        self.images.view(&*self.log)
    }

    fn node(&self, ino: INodeNo) -> Option<Node> {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner()).node(ino.0).cloned()
    }

    fn number(&self, node: &Node) -> INodeNo {
        INodeNo(self.inodes.lock().unwrap_or_else(|p| p.into_inner()).number(node))
    }

    /// What image `id` holds; nothing when its partition table cannot be read (logged: the
    /// image file itself still reads, or fails with EIO where it is damaged).
    fn holds(&self, id: crate::id::ImageId) -> Holds {
        self.images.holds(id).unwrap_or_else(|e| {
            (self.log)(format!("image {id}: cannot read its partition table or filesystem: {e}"));
            Holds::default()
        })
    }

    /// A filesystem's root or a path inside one: which filesystem, and the path in it.
    fn in_fs(node: &Node) -> Option<(Key, String)> {
        match node {
            Node::Files(id, p) => Some(((*id, *p), "/".into())),
            Node::InFs(id, p, path, _) => Some(((*id, *p), path.clone())),
            _ => None,
        }
    }

    /// Asks the filesystem of `key`; a failure is logged (the caller answers EIO).
    fn ask<T: Send + 'static>(
        &self,
        key: Key,
        ask: impl FnOnce(&crate::files::Files) -> crate::Result<T> + Send + 'static,
    ) -> Option<T> {
        match self.images.browser(key).and_then(|b| b.ask(ask)) {
            Ok(answer) => Some(answer),
            Err(crate::Error::FileNotFound { .. }) => None,
            Err(e) => {
                (self.log)(format!("image {}: {e}", describe(key)));
                None
            }
        }
    }

    /// The node and attributes of `entry`, in the filesystem of `key`.
    fn entry_attr(&self, key: Key, entry: &Entry) -> (Node, FileAttr) {
        let kind = match entry.kind {
            EntryKind::Dir => Type::Dir,
            EntryKind::Symlink => Type::Symlink,
            _ => Type::File,
        };
        let node = if entry.path == "/" {
            Node::Files(key.0, key.1)
        } else {
            Node::InFs(key.0, key.1, entry.path.clone(), kind)
        };
        let time = UNIX_EPOCH + Duration::from_secs(entry.mtime.max(0) as u64);
        let (kind, perm) = match entry.kind {
            EntryKind::Dir => (FileType::Directory, entry.mode),
            EntryKind::Symlink => (FileType::Symlink, 0o777),
            EntryKind::File => (FileType::RegularFile, entry.mode),
            // A device, fifo, socket or reparse point: shown, not readable.
            _ => (FileType::RegularFile, 0),
        };
        let size = match entry.kind {
            EntryKind::Symlink => entry.target.as_ref().map_or(0, |t| t.len() as u64),
            EntryKind::File | EntryKind::Dir => entry.size,
            _ => 0,
        };
        let attr = FileAttr {
            ino: self.number(&node),
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm: (perm & 0o7777) as u16,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: entry.uid,
            gid: entry.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        (node, attr)
    }

    fn stat(&self, key: Key, path: String) -> Option<Entry> {
        self.ask(key, move |files| files.stat(&path))
    }

    fn key(node: &Node) -> Option<Key> {
        match node {
            Node::Image(id) => Some((*id, None)),
            Node::Partition(id, n) => Some((*id, Some(*n))),
            _ => None,
        }
    }

    /// The attributes of `node` in `view`, or None when it is not there (any more).
    fn attr(&self, view: &View, node: &Node) -> Option<FileAttr> {
        let cat = &view.catalog;
        if !cat.exists(node) {
            return None;
        }
        if let Some((key, path)) = Self::in_fs(node) {
            return self.stat(key, path).map(|e| self.entry_attr(key, &e).1);
        }
        let time = cat.created_ms(node).map_or(self.started, |ms| UNIX_EPOCH + Duration::from_millis(ms));
        let (kind, perm, size, blocks) = match node.kind() {
            Type::Dir => (FileType::Directory, 0o555u16, 0, 0),
            Type::Symlink => (FileType::Symlink, 0o777, cat.link_target(node)?.len() as u64, 0),
            Type::File => {
                let key = Self::key(node)?;
                let size = match key {
                    (id, None) => cat.info(&id)?.logical_bytes,
                    (id, Some(n)) => {
                        let (disk, table) = (cat.info(&id)?.logical_bytes, self.images.table(id).ok()?);
                        let p = table.partitions.iter().find(|p| p.number == n)?;
                        p.start.saturating_add(p.size).min(disk).saturating_sub(p.start)
                    }
                };
                // Zero runs are holes: `du` counts the data only. An image whose chain cannot be
                // resolved counts whole (its reads fail with EIO, and say why).
                let data = self.images.allocated(key).unwrap_or(size);
                (FileType::RegularFile, 0o444, size, data.div_ceil(512))
            }
        };
        Some(FileAttr {
            ino: self.number(node),
            size,
            blocks,
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for StrataFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let view = self.view();
        let parent = self.node(parent);
        if let (Some((key, dir)), Some(name)) = (parent.as_ref().and_then(Self::in_fs), name.to_str()) {
            let path = if dir == "/" { format!("/{name}") } else { format!("{dir}/{name}") };
            return match self.stat(key, path) {
                Some(entry) => reply.entry(&TTL, &self.entry_attr(key, &entry).1, Generation(0)),
                None => reply.error(Errno::ENOENT),
            };
        }
        let child = match (parent, name.to_str()) {
            (Some(parent), Some(name)) => view.catalog.child(&parent, name, |id| self.holds(id)),
            _ => None,
        };
        match child.and_then(|c| self.attr(&view, &c)) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let view = self.view();
        match self.node(ino).and_then(|n| self.attr(&view, &n)) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let node = self.node(ino);
        if let Some((key, path)) = node.as_ref().and_then(Self::in_fs) {
            return match self.stat(key, path).and_then(|e| e.target) {
                Some(target) => reply.data(target.as_bytes()),
                None => reply.error(Errno::ENOENT),
            };
        }
        match node.and_then(|n| self.view().catalog.link_target(&n)) {
            Some(target) => reply.data(target.as_bytes()),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let node = self.node(ino);
        if let Some((key, path)) = node.as_ref().and_then(Self::in_fs) {
            return match self.stat(key, path) {
                Some(e) if e.kind == EntryKind::File => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
                Some(_) => reply.error(Errno::EACCES),
                None => reply.error(Errno::ENOENT),
            };
        }
        let Some(key) = node.as_ref().and_then(Self::key) else {
            return reply.error(Errno::ENOENT);
        };
        // The chain is resolved here, so that a damaged manifest fails the open, not each read.
        match self.images.reader(key) {
            // An image's bytes never change: the kernel may keep its pages between opens.
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => {
                (self.log)(format!("image {}: cannot open: {e}", describe(key)));
                reply.error(Errno::EIO)
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let node = self.node(ino);
        if let Some((key, path)) = node.as_ref().and_then(Self::in_fs) {
            let read = self.ask(key, move |files| {
                let mut buf = vec![0u8; size as usize];
                let n = files.read_at(&path, offset, &mut buf)?;
                buf.truncate(n);
                Ok(buf)
            });
            return match read {
                Some(bytes) => reply.data(&bytes),
                None => reply.error(Errno::EIO),
            };
        }
        let Some(key) = node.as_ref().and_then(Self::key) else {
            return reply.error(Errno::ENOENT);
        };
        BUF.with_borrow_mut(|buf| {
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            let buf = &mut buf[..size as usize];
            match self.images.read_at(key, offset, buf) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => {
                    // Never wrong bytes: the range fails, and the log says where and why.
                    (self.log)(format!("image {}: read of {size} bytes at offset {offset} failed: {e}", describe(key)));
                    reply.error(Errno::EIO)
                }
            }
        });
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let view = self.view();
        let Some(dir) = self.node(ino).filter(|n| n.kind() == Type::Dir && view.catalog.exists(n)) else {
            return reply.error(Errno::ENOENT);
        };
        let mut entries = vec![(ino, FileType::Directory, ".".to_string()), (ino, FileType::Directory, "..".into())];
        if let Some((key, path)) = Self::in_fs(&dir) {
            let Some(list) = self.ask(key, move |files| files.list(&path, false)) else {
                return reply.error(Errno::EIO);
            };
            for entry in list {
                let (_, attr) = self.entry_attr(key, &entry);
                entries.push((attr.ino, attr.kind, entry.name().to_string()));
            }
        }
        for (node, name) in view.catalog.children(&dir, |id| self.holds(id)) {
            let kind = match node.kind() {
                Type::Dir => FileType::Directory,
                Type::File => FileType::RegularFile,
                Type::Symlink => FileType::Symlink,
            };
            entries.push((self.number(&node), kind, name));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn lseek(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let node = self.node(ino);
        if let Some((key, path)) = node.as_ref().and_then(Self::in_fs) {
            // Files inside filesystems are shown without holes.
            let (Some(entry), Ok(from)) = (self.stat(key, path), u64::try_from(offset)) else {
                return reply.error(Errno::EINVAL);
            };
            return match whence {
                _ if from >= entry.size => reply.error(Errno::from_i32(libc::ENXIO)),
                libc::SEEK_DATA => reply.offset(offset),
                libc::SEEK_HOLE => reply.offset(entry.size as i64),
                _ => reply.error(Errno::EINVAL),
            };
        }
        let Some(key) = node.as_ref().and_then(Self::key) else {
            return reply.error(Errno::ENOENT);
        };
        let reader = match self.images.reader(key) {
            Ok(r) => r,
            Err(e) => {
                (self.log)(format!("image {}: cannot open: {e}", describe(key)));
                return reply.error(Errno::EIO);
            }
        };
        let map = reader.map();
        let Ok(from) = u64::try_from(offset) else { return reply.error(Errno::EINVAL) };
        let found = match whence {
            libc::SEEK_DATA => map.next_data(from),
            libc::SEEK_HOLE => map.next_hole(from),
            _ => return reply.error(Errno::EINVAL),
        };
        match found {
            Some(at) => reply.offset(at as i64),
            None => reply.error(Errno::from_i32(libc::ENXIO)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let images = self.view().catalog.len() as u64;
        reply.statfs(0, 0, 0, images, 0, 4096, 255, 4096);
    }
}

fn describe((id, partition): Key) -> String {
    match partition {
        Some(n) => format!("{id}:{n}"),
        None => id.to_string(),
    }
}
