//! The protocol: handshake, option haggling, transmission. Numbers from `doc/proto.md`.

use std::io::{self, Read, Write};

use super::{Conn, Export};
use crate::manifest::Content;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const CLIENT_NO_ZEROES: u32 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_LIST_META_CONTEXT: u32 = 9;
const OPT_SET_META_CONTEXT: u32 = 10;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const TFLAG_HAS_FLAGS: u16 = 1;
const TFLAG_READ_ONLY: u16 = 1 << 1;
const TFLAG_SEND_FLUSH: u16 = 1 << 2;
const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
const TRANSMISSION_FLAGS: u16 = TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_CACHE: u16 = 5;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_BLOCK_STATUS: u16 = 7;
const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_TYPE_NONE: u16 = 0;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;

const STATE_HOLE: u32 = 1;
const STATE_ZERO: u32 = 2;

/// The one metadata context served.
const BASE_ALLOCATION: &str = "base:allocation";
const BASE_ALLOCATION_ID: u32 = 1;

/// Option data larger than this is refused (names and queries are short).
const MAX_OPTION: u32 = 64 * 1024;
/// The largest read or block-status request served (also advertised as the maximum block size).
pub const MAX_REQUEST: u32 = 32 << 20;
/// Zero runs shorter than this are reported as data by block status.
const MIN_HOLE: u64 = 1 << 20;
/// Block-status descriptors in one reply, at most.
const MAX_DESCRIPTORS: usize = 4096;

pub(super) struct Session<'e, 'r, 'c> {
    export: &'e Export<'r>,
    /// Requests are read through a buffer (a header is six fields); replies go out whole.
    conn: io::BufReader<Box<dyn Conn + 'c>>,
    structured: bool,
    allocation: bool,
}

fn read_u16(r: &mut impl Read) -> io::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A length-prefixed string inside option data.
fn take_string(data: &mut &[u8]) -> io::Result<String> {
    let (len, rest) = data.split_first_chunk::<4>().ok_or_else(|| invalid("option data ends early"))?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(invalid("option data ends early"));
    }
    let (s, rest) = rest.split_at(len);
    *data = rest;
    String::from_utf8(s.to_vec()).map_err(|_| invalid("a name that is not UTF-8"))
}

/// Why an option was refused: its reply type and message.
struct Refusal(u32, String);

impl<'e, 'r, 'c> Session<'e, 'r, 'c> {
    pub(super) fn new(export: &'e Export<'r>, conn: Box<dyn Conn + 'c>) -> Self {
        Session { export, conn: io::BufReader::with_capacity(64 * 1024, conn), structured: false, allocation: false }
    }

    fn size(&self) -> u64 {
        self.export.reader.map().size()
    }

    fn knows(&self, name: &str) -> bool {
        name.is_empty() || name == self.export.name
    }

    pub(super) fn run(mut self) -> io::Result<()> {
        let mut hello = Vec::with_capacity(18);
        hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
        hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
        hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        self.conn.get_mut().write_all(&hello)?;
        let client_flags = read_u32(&mut self.conn)?;
        if self.haggle(client_flags & CLIENT_NO_ZEROES != 0)? {
            self.transmit()?;
        }
        Ok(())
    }

    fn option_reply(&mut self, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
        let mut b = Vec::with_capacity(20 + data.len());
        b.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.conn.get_mut().write_all(&b)
    }

    /// Option haggling; true when the client moves on to transmission.
    fn haggle(&mut self, no_zeroes: bool) -> io::Result<bool> {
        loop {
            if read_u64(&mut self.conn)? != IHAVEOPT {
                return Err(invalid("an option without its magic"));
            }
            let option = read_u32(&mut self.conn)?;
            let len = read_u32(&mut self.conn)?;
            if len > MAX_OPTION {
                // Refused without buffering it; the client cannot be followed past it.
                self.option_reply(option, REP_ERR_TOO_BIG, b"option data too large")?;
                return Err(invalid("option data too large"));
            }
            let mut data = vec![0u8; len as usize];
            self.conn.read_exact(&mut data)?;
            match option {
                OPT_EXPORT_NAME => {
                    let name = String::from_utf8_lossy(&data).into_owned();
                    if !self.knows(&name) {
                        return Err(invalid("EXPORT_NAME of an unknown export"));
                    }
                    let mut b = Vec::with_capacity(10 + 124);
                    b.extend_from_slice(&self.size().to_be_bytes());
                    b.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                    if !no_zeroes {
                        b.extend_from_slice(&[0u8; 124]);
                    }
                    self.conn.get_mut().write_all(&b)?;
                    return Ok(true);
                }
                OPT_ABORT => {
                    self.option_reply(option, REP_ACK, &[])?;
                    return Ok(false);
                }
                _ => {
                    if self.answer(option, &data)? {
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// Answers one option that gets option replies; Ok(true) after a successful GO.
    fn answer(&mut self, option: u32, data: &[u8]) -> io::Result<bool> {
        let refuse = |kind: u32, msg: &str| Err(Refusal(kind, msg.to_string()));
        let result: Result<bool, Refusal> = (|| match option {
            OPT_LIST => {
                if !data.is_empty() {
                    return refuse(REP_ERR_INVALID, "LIST takes no data");
                }
                Ok(false)
            }
            OPT_INFO | OPT_GO => {
                let mut d = data;
                let name = take_string(&mut d).map_err(|e| Refusal(REP_ERR_INVALID, e.to_string()))?;
                if !self.knows(&name) {
                    return refuse(REP_ERR_UNKNOWN, "no such export");
                }
                Ok(option == OPT_GO)
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    return refuse(REP_ERR_INVALID, "STRUCTURED_REPLY takes no data");
                }
                Ok(false)
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                if option == OPT_SET_META_CONTEXT && !self.structured {
                    return refuse(REP_ERR_INVALID, "SET_META_CONTEXT needs structured replies");
                }
                let mut d = data;
                let bad = |e: io::Error| Refusal(REP_ERR_INVALID, e.to_string());
                let name = take_string(&mut d).map_err(bad)?;
                if !self.knows(&name) {
                    return refuse(REP_ERR_UNKNOWN, "no such export");
                }
                Ok(false)
            }
            _ => refuse(REP_ERR_UNSUP, "unsupported option"),
        })();
        let go = match result {
            Ok(go) => go,
            Err(r) => {
                self.option_reply(option, r.0, r.1.as_bytes())?;
                return Ok(false);
            }
        };
        match option {
            OPT_LIST => {
                let name = self.export.name.clone();
                for n in ["", name.as_str()] {
                    let mut b = (n.len() as u32).to_be_bytes().to_vec();
                    b.extend_from_slice(n.as_bytes());
                    self.option_reply(option, REP_SERVER, &b)?;
                }
            }
            OPT_INFO | OPT_GO => {
                let mut b = INFO_EXPORT.to_be_bytes().to_vec();
                b.extend_from_slice(&self.size().to_be_bytes());
                b.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                self.option_reply(option, REP_INFO, &b)?;
                let mut b = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                for v in [1u32, 4096, MAX_REQUEST] {
                    b.extend_from_slice(&v.to_be_bytes());
                }
                self.option_reply(option, REP_INFO, &b)?;
            }
            OPT_STRUCTURED_REPLY => self.structured = true,
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let wanted = meta_queries(data).map_err(|e| invalid(&e.to_string()))?;
                let serve = wanted.is_empty() && option == OPT_LIST_META_CONTEXT
                    || wanted.iter().any(|q| q == BASE_ALLOCATION || (option == OPT_LIST_META_CONTEXT && q == "base:"));
                if option == OPT_SET_META_CONTEXT {
                    self.allocation = serve;
                }
                if serve {
                    let mut b = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                    b.extend_from_slice(BASE_ALLOCATION.as_bytes());
                    self.option_reply(option, REP_META_CONTEXT, &b)?;
                }
            }
            _ => {}
        }
        self.option_reply(option, REP_ACK, &[])?;
        Ok(go)
    }

    /// Serves requests until the client disconnects. Reads and block-status requests are
    /// answered by `WORKERS` threads, so a client that keeps several requests in flight (as
    /// `qemu-img convert` does) is served in parallel; replies go out whole, in any order (each
    /// names its request).
    fn transmit(&mut self) -> io::Result<()> {
        let replies = Replies {
            out: std::sync::Mutex::new(self.conn.get_ref().writer()?),
            export: self.export,
            structured: self.structured,
            allocation: self.allocation,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Request>(WORKERS);
        let rx = std::sync::Mutex::new(rx);
        std::thread::scope(|scope| {
            for _ in 0..WORKERS {
                scope.spawn(|| loop {
                    let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(r) = next else { return };
                    // A reply that cannot be written means the client is gone: the reading
                    // side sees it too and ends the session.
                    let _ = replies.answer(&r);
                });
            }
            let read = self.requests(&replies, &tx);
            drop(tx);
            read
        })
    }

    /// Reads requests and hands them to the workers until `DISC` or the end of the stream.
    fn requests(&mut self, replies: &Replies, tx: &std::sync::mpsc::SyncSender<Request>) -> io::Result<()> {
        loop {
            let magic = match read_u32(&mut self.conn) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            };
            if magic != REQUEST_MAGIC {
                return Err(invalid("a request without its magic"));
            }
            let flags = read_u16(&mut self.conn)?;
            let kind = read_u16(&mut self.conn)?;
            let cookie = read_u64(&mut self.conn)?;
            let offset = read_u64(&mut self.conn)?;
            let len = read_u32(&mut self.conn)?;
            match kind {
                CMD_DISC => return Ok(()),
                CMD_WRITE => {
                    // Its payload follows: drain it (bounded), then refuse.
                    if len > MAX_REQUEST {
                        return Err(invalid("a write larger than any request served"));
                    }
                    io::copy(&mut (&mut self.conn).take(len as u64), &mut io::sink())?;
                    replies.error(cookie, EPERM, "the export is read-only")?;
                }
                _ => {
                    let request = Request { kind, flags, cookie, offset, len };
                    if tx.send(request).is_err() {
                        return Err(invalid("the workers stopped"));
                    }
                }
            }
        }
    }
}

/// Threads answering one client's requests.
const WORKERS: usize = 2;

/// A request in transmission (its payload, for a write, already read).
struct Request {
    kind: u16,
    flags: u16,
    cookie: u64,
    offset: u64,
    len: u32,
}

/// The sending side of a session in transmission, shared by its workers.
struct Replies<'e, 'r> {
    out: std::sync::Mutex<Box<dyn Write + Send>>,
    export: &'e Export<'r>,
    structured: bool,
    allocation: bool,
}

impl Replies<'_, '_> {
    fn size(&self) -> u64 {
        self.export.reader.map().size()
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        self.out.lock().unwrap_or_else(|p| p.into_inner()).write_all(bytes)
    }

    fn answer(&self, r: &Request) -> io::Result<()> {
        match r.kind {
            CMD_READ => self.read(r.cookie, r.offset, r.len),
            CMD_BLOCK_STATUS => self.block_status(r.cookie, r.offset, r.len, r.flags & CMD_FLAG_REQ_ONE != 0),
            CMD_FLUSH | CMD_CACHE => self.done(r.cookie),
            CMD_TRIM | CMD_WRITE_ZEROES => self.error(r.cookie, EPERM, "the export is read-only"),
            _ => self.error(r.cookie, EINVAL, "unknown command"),
        }
    }

    /// A request for `len` bytes at `offset` that the export can answer (else the error).
    fn in_bounds(&self, offset: u64, len: u32) -> Result<(), (u32, String)> {
        if len > MAX_REQUEST {
            return Err((EINVAL, format!("requests are at most {MAX_REQUEST} bytes")));
        }
        if offset.checked_add(len as u64).is_none_or(|end| end > self.size()) {
            return Err((EINVAL, "beyond the end of the export".into()));
        }
        Ok(())
    }

    fn read(&self, cookie: u64, offset: u64, len: u32) -> io::Result<()> {
        if let Err((errno, msg)) = self.in_bounds(offset, len) {
            return self.error(cookie, errno, &msg);
        }
        // The reply's header first, then the data read straight into its place.
        let header = if self.structured { 20 + 8 } else { 16 };
        let mut b = vec![0u8; header + len as usize];
        match self.export.reader.read_at(offset, &mut b[header..]) {
            Ok(n) if n == len as usize => {}
            Ok(_) => return self.error(cookie, EIO, "short read"),
            // Never wrong bytes: the range fails with EIO, and the client hears why.
            Err(e) => return self.error(cookie, EIO, &format!("{e} (at offset {offset})")),
        }
        if self.structured {
            b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
            b[4..6].copy_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
            b[6..8].copy_from_slice(&REPLY_TYPE_OFFSET_DATA.to_be_bytes());
            b[8..16].copy_from_slice(&cookie.to_be_bytes());
            b[16..20].copy_from_slice(&(8 + len).to_be_bytes());
            b[20..28].copy_from_slice(&offset.to_be_bytes());
        } else {
            b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
            b[8..16].copy_from_slice(&cookie.to_be_bytes());
        }
        self.send(&b)
    }

    fn block_status(&self, cookie: u64, offset: u64, len: u32, one: bool) -> io::Result<()> {
        if !self.structured || !self.allocation {
            return self.error(cookie, EINVAL, "no metadata context was negotiated");
        }
        // Block status may ask past the end: clip, but the start must lie inside.
        if offset >= self.size() {
            return self.error(cookie, EINVAL, "beyond the end of the export");
        }
        // A reply may describe less than was asked: at most one request's worth (the map is
        // searched, not walked, so this costs the same anywhere on the disk).
        let end = offset.saturating_add(len.clamp(1, MAX_REQUEST) as u64).min(self.size());
        let mut descriptors: Vec<(u32, u32)> = Vec::new();
        for e in self.export.reader.map().extents(offset..end) {
            // Short zero runs between chunks are reported as data: a client reads them (as
            // zeros, which costs the server nothing) rather than sending a request for each
            // piece of data between them.
            let hole = matches!(e.content, Content::Zero) && e.len >= MIN_HOLE;
            let state = if hole { STATE_HOLE | STATE_ZERO } else { 0 };
            let full = one || descriptors.len() >= MAX_DESCRIPTORS;
            match descriptors.last_mut() {
                Some((l, s)) if *s == state && (*l as u64 + e.len) <= u32::MAX as u64 => *l += e.len as u32,
                // With REQ_ONE, one descriptor: the run of the first state (adjacent chunks of
                // data are one run, not one descriptor each).
                Some(_) if full => break,
                _ => descriptors.push((e.len.min(u32::MAX as u64) as u32, state)),
            }
        }
        let mut payload = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
        for (l, s) in descriptors {
            payload.extend_from_slice(&l.to_be_bytes());
            payload.extend_from_slice(&s.to_be_bytes());
        }
        self.chunk(cookie, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, &payload)
    }

    fn done(&self, cookie: u64) -> io::Result<()> {
        if self.structured {
            self.chunk(cookie, REPLY_FLAG_DONE, REPLY_TYPE_NONE, &[])
        } else {
            self.simple(cookie, 0)
        }
    }

    fn simple(&self, cookie: u64, errno: u32) -> io::Result<()> {
        let mut b = Vec::with_capacity(16);
        b.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        b.extend_from_slice(&errno.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        self.send(&b)
    }

    fn error(&self, cookie: u64, errno: u32, msg: &str) -> io::Result<()> {
        if !self.structured {
            return self.simple(cookie, errno);
        }
        let msg = &msg.as_bytes()[..msg.len().min(4096)];
        let mut payload = errno.to_be_bytes().to_vec();
        payload.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        payload.extend_from_slice(msg);
        self.chunk(cookie, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, &payload)
    }

    fn chunk(&self, cookie: u64, flags: u16, kind: u16, payload: &[u8]) -> io::Result<()> {
        let mut b = Vec::with_capacity(20 + payload.len());
        b.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        b.extend_from_slice(payload);
        self.send(&b)
    }
}

/// The queries of a LIST/SET_META_CONTEXT option (after the export name).
fn meta_queries(data: &[u8]) -> io::Result<Vec<String>> {
    let mut d = data;
    take_string(&mut d)?;
    let (n, rest) = d.split_first_chunk::<4>().ok_or_else(|| invalid("meta context data ends early"))?;
    let n = u32::from_be_bytes(*n);
    d = rest;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(take_string(&mut d)?);
    }
    Ok(out)
}
