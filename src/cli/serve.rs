//! `serve-nbd` and `mount`: listeners, signals and logging around the library's NBD server and
//! FUSE filesystem.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

use strata::nbd::{Conn, Export};
use strata::partition::Spec;
use strata::Repository;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

enum Listener {
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
}

impl Listener {
    /// The next client, or None after a short wait (so that a signal is noticed).
    fn accept(&self) -> Option<Box<dyn Conn>> {
        let accepted: std::io::Result<Box<dyn Conn>> = match self {
            Listener::Unix(l) => l.accept().and_then(|(s, _)| s.set_nonblocking(false).map(|()| Box::new(s) as _)),
            Listener::Tcp(l) => l.accept().and_then(|(s, _)| {
                s.set_nodelay(true)?;
                s.set_nonblocking(false).map(|()| Box::new(s) as _)
            }),
        };
        match accepted {
            Ok(c) => Some(c),
            Err(e) => {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    eprintln!("strata: accept: {e}");
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
                None
            }
        }
    }
}

/// Mounts, then waits for an unmount from outside or a signal (which unmounts; refused while
/// busy, and then the mount keeps serving until the next signal).
pub fn mount(path: &Path, at: &Path, cache_mib: u64) -> Result<()> {
    let opts = strata::mount::MountOptions {
        cache_bytes: cache_mib.max(1) << 20,
        credentials: super::credentials(),
        ..Default::default()
    };
    let log: strata::mount::Log = std::sync::Arc::new(|msg| eprintln!("strata: {msg}"));
    // Before the mount appears: a Ctrl-C the moment it does must unmount, not kill the process
    // and leave a dead mount behind.
    on_signals();
    let mounted = strata::mount::mount(path, at, &opts, log)
        .with_context(|| format!("cannot mount repository {} on {}", path.display(), at.display()))?;
    eprintln!(
        "mounted repository {} read-only on {} ({} images); `umount {}` or Ctrl-C unmounts",
        path.display(),
        mounted.path().display(),
        mounted.images(),
        mounted.path().display()
    );
    while !mounted.finished() {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if STOP.swap(false, Ordering::SeqCst) {
            if let Err(e) = mounted.unmount() {
                eprintln!("strata: {e}");
            }
        }
    }
    mounted.join()?;
    eprintln!("strata: unmounted");
    Ok(())
}

fn on_signals() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn nbd(path: &Path, image: &str, unix: Option<&Path>, tcp: Option<&str>, cache_mib: u64) -> Result<()> {
    // Before the socket appears: a signal the moment it does must stop the server cleanly
    // (and remove the socket), not kill the process.
    on_signals();
    let spec = Spec::parse(image)?;
    let repo = Repository::open_with(path, &super::credentials())
        .with_context(|| format!("cannot open repository {}", path.display()))?;
    let info = repo.find_image(&spec.image)?;
    let reader =
        repo.reader(&info, cache_mib.max(1) << 20).with_context(|| format!("cannot read image {}", info.id))?;
    let (reader, name) = match spec.partition {
        Some(n) => (strata::partition::narrow(reader, n)?, format!("{}:{n}", info.id)),
        None => (reader, info.id.to_string()),
    };
    let listener = match (unix, tcp) {
        (Some(socket), _) => {
            if std::fs::symlink_metadata(socket).is_ok() {
                anyhow::bail!("{} exists; remove it or choose another socket path", socket.display());
            }
            let l = std::os::unix::net::UnixListener::bind(socket)
                .with_context(|| format!("cannot listen on {}", socket.display()))?;
            l.set_nonblocking(true)?;
            Listener::Unix(l)
        }
        (None, Some(addr)) => {
            let l = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
            l.set_nonblocking(true)?;
            Listener::Tcp(l)
        }
        (None, None) => anyhow::bail!("give --unix PATH or --tcp ADDR:PORT"),
    };
    let at = unix.map(|p| format!("unix:{}", p.display())).or(tcp.map(|a| format!("tcp:{a}"))).unwrap_or_default();
    eprintln!(
        "serving image {name} ({} bytes) read-only on {at}; exports \"\" and \"{name}\"; Ctrl-C stops",
        reader.map().size()
    );
    let export = Export { name, reader: &reader };
    let socket = unix.map(Path::to_path_buf);
    // Clients still connected are cut off: the server writes nothing, so nothing is lost.
    let shutdown = || {
        if let Some(s) = &socket {
            let _ = std::fs::remove_file(s);
        }
        eprintln!("strata: stopped");
        std::process::exit(0);
    };
    let accept = || {
        let conn = listener.accept();
        if STOP.load(Ordering::SeqCst) {
            shutdown();
        }
        conn
    };
    strata::nbd::serve(&export, accept, &STOP, &|msg| eprintln!("strata: {msg}"));
    shutdown();
    Ok(())
}
