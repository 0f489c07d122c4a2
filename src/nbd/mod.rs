//! A read-only NBD server over the image reader: the newstyle fixed handshake and the small
//! subset of the protocol (NetworkBlockDevice's `doc/proto.md`) that `qemu-img`, `qemu-nbd`'s
//! clients and the kernel use. Written here because no crate we could find speaks the handshake
//! qemu 10 sends (see docs/DESIGN.md, "NBD").
//!
//! Options: `EXPORT_NAME`, `ABORT`, `LIST`, `INFO`, `GO`, `STRUCTURED_REPLY` and
//! `LIST/SET_META_CONTEXT` for `base:allocation`; every other option (`STARTTLS`, the extended
//! headers qemu 10 asks for first, ...) gets `NBD_REP_ERR_UNSUP`. Commands: `READ` (simple
//! replies, or structured ones once negotiated), `BLOCK_STATUS` (zero runs as holes), `FLUSH`,
//! `DISC`; writes are refused with `EPERM`. Work and memory per client are bounded: option data
//! over 64 KiB and requests over 32 MiB are refused without being buffered.

mod proto;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::reader::ImageReader;

pub use proto::MAX_REQUEST;

/// Clients served at once; a connection beyond this is closed at once (bounded threads).
pub const MAX_CLIENTS: usize = 64;

/// What the server serves: the reader of one image (or partition), under a name.
pub struct Export<'r> {
    /// The export's name besides the default (empty) one: the image id, or `ID:N`.
    pub name: String,
    pub reader: &'r ImageReader,
}

/// A connection from a client (a Unix or TCP stream).
pub trait Conn: Read + Write + Send {
    /// A second handle on the same connection, for writing replies while requests are read.
    fn writer(&self) -> std::io::Result<Box<dyn Write + Send>>;
}

impl Conn for std::os::unix::net::UnixStream {
    fn writer(&self) -> std::io::Result<Box<dyn Write + Send>> {
        Ok(Box::new(self.try_clone()?))
    }
}

impl Conn for std::net::TcpStream {
    fn writer(&self) -> std::io::Result<Box<dyn Write + Send>> {
        Ok(Box::new(self.try_clone()?))
    }
}

/// Serves clients that `accept` hands over, each on its own thread, until `accept` returns
/// `None` while `stop` is set (`accept` returns `None` also when no client came in a while, so
/// that the caller can notice a signal); then waits for the connected clients to leave.
/// Problems of one client end that client's connection only; they are passed to `log` (the
/// library never prints). A client that simply goes away is no problem.
pub fn serve<'c>(
    export: &Export,
    mut accept: impl FnMut() -> Option<Box<dyn Conn + 'c>>,
    stop: &AtomicBool,
    log: &(dyn Fn(String) + Sync),
) {
    let active = AtomicUsize::new(0);
    std::thread::scope(|scope| loop {
        let Some(conn) = accept() else {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            continue;
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            active.fetch_sub(1, Ordering::SeqCst);
            log(format!("refused a client: {MAX_CLIENTS} are connected"));
            continue;
        }
        let active = &active;
        scope.spawn(move || {
            match proto::Session::new(export, conn).run() {
                Ok(()) => {}
                Err(e) if gone(&e) => {}
                Err(e) => log(format!("client: {e}")),
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
    });
}

/// A client that closed its end (between or in the middle of messages).
fn gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), UnexpectedEof | BrokenPipe | ConnectionReset | ConnectionAborted)
}
