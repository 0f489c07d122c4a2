//! The NBD server, tested with a real client (`qemu-img` 10, which asks for extended headers
//! first and then negotiates structured replies and `base:allocation`) and with raw protocol
//! messages for the cases a well-behaved client never sends.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{assert_clean_failure, strata_cmd, TestRepo};
use strata::KindRequest;

/// `strata serve-nbd` running on a Unix socket; stopped with SIGTERM when dropped.
struct Server {
    child: Child,
    socket: PathBuf,
}

impl Server {
    fn start(repo: &TestRepo, image: &str) -> Server {
        let socket = repo.file(&format!("nbd-{}.sock", image.replace(':', "-")));
        let child = strata_cmd()
            .arg("-r")
            .arg(&repo.path)
            .args(["serve-nbd", image, "--unix"])
            .arg(&socket)
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve-nbd");
        for _ in 0..400 {
            if socket.exists() {
                return Server { child, socket };
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("the server did not listen on {}", socket.display());
    }

    fn url(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// Stops it as Ctrl-C would; returns its stderr.
    fn stop(mut self) -> String {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait");
        let mut err = String::new();
        self.child.stderr.take().map(|mut e| e.read_to_string(&mut err));
        assert!(status.success(), "serve-nbd: {status}: {err}");
        assert!(!self.socket.exists(), "the socket was left behind");
        err
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img").args(args).output().expect("qemu-img")
}

fn assert_identical(original: &Path, url: &str) {
    let out = qemu_img(&["compare", "-f", "raw", "-F", "raw", original.to_str().unwrap(), url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Images are identical"),
        "{url}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_image_of_a_chain_reads_identical_through_qemu_img() {
    use KindRequest::*;
    let (repo, bytes) = common::history(21, &[Full, Incremental, Differential, Incremental]);
    for info in repo.images() {
        let original = repo.file("original.img");
        std::fs::write(&original, &bytes[&info.id]).unwrap();
        let id = info.id.to_string();
        let server = Server::start(&repo, &id[..10]);
        let out = qemu_img(&["info", "--output=json", &server.url("")]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("qemu-img info");
        assert_eq!(v["virtual-size"].as_u64(), Some(info.logical_bytes));
        assert_identical(&original, &server.url(""));
        assert_identical(&original, &server.url(&id));
        let qcow = repo.file("copy.qcow2");
        let out = qemu_img(&["convert", "-O", "qcow2", &server.url(""), qcow.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = qemu_img(&["compare", original.to_str().unwrap(), qcow.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let out = qemu_img(&["info", &server.url("no-such-export")]);
        assert!(!out.status.success(), "an unknown export was served");
        let err = server.stop();
        assert!(err.contains("stopped"), "{err}");
    }
}

/// A raw NBD client speaking the protocol by hand.
struct Client(UnixStream);

impl Client {
    /// `connect`, again and again for up to 20 s while the server refuses (closes at once).
    fn connect_when_served(server: &Server) -> Client {
        let start = std::time::Instant::now();
        loop {
            let mut s = UnixStream::connect(&server.socket).unwrap();
            let mut hello = [0u8; 18];
            match s.read_exact(&mut hello) {
                Ok(()) => {
                    assert_eq!(&hello[..16], b"NBDMAGICIHAVEOPT");
                    s.write_all(&3u32.to_be_bytes()).unwrap();
                    return Client(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    assert!(start.elapsed().as_secs() < 20, "still refused after 20 s");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn connect(server: &Server) -> Client {
        let mut c = Client(UnixStream::connect(&server.socket).unwrap());
        let mut hello = [0u8; 18];
        c.0.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..8], b"NBDMAGIC");
        assert_eq!(&hello[8..16], b"IHAVEOPT");
        c.0.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
        c
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let mut b = b"IHAVEOPT".to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.0.write_all(&b).unwrap();
    }

    /// The next option reply: (option, type, data).
    fn reply(&mut self) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.0.read_exact(&mut h).unwrap();
        assert_eq!(u64::from_be_bytes(h[..8].try_into().unwrap()), 0x3e889045565a9);
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        self.0.read_exact(&mut data).unwrap();
        (u32::from_be_bytes(h[8..12].try_into().unwrap()), u32::from_be_bytes(h[12..16].try_into().unwrap()), data)
    }

    fn go(&mut self, name: &str) -> u64 {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        self.option(7, &d);
        let (_, kind, info) = self.reply();
        assert_eq!(kind, 3, "INFO expected");
        let size = u64::from_be_bytes(info[2..10].try_into().unwrap());
        loop {
            let (_, kind, _) = self.reply();
            if kind == 1 {
                return size;
            }
        }
    }

    /// Sends a request; returns the simple reply's error and the data of a successful read.
    fn request(&mut self, kind: u16, offset: u64, len: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        let mut b = 0x25609513u32.to_be_bytes().to_vec();
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&77u64.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.0.write_all(&b).unwrap();
        let mut r = [0u8; 16];
        self.0.read_exact(&mut r).unwrap();
        assert_eq!(u32::from_be_bytes(r[..4].try_into().unwrap()), 0x67446698);
        assert_eq!(u64::from_be_bytes(r[8..16].try_into().unwrap()), 77);
        let error = u32::from_be_bytes(r[4..8].try_into().unwrap());
        let mut data = Vec::new();
        if error == 0 && kind == 0 {
            data = vec![0u8; len as usize];
            self.0.read_exact(&mut data).unwrap();
        }
        (error, data)
    }
}

#[test]
fn bad_options_and_requests_get_the_protocols_errors_and_good_ones_the_bytes() {
    let (repo, bytes) = common::history(22, &[KindRequest::Full]);
    let info = repo.images().remove(0);
    let disk = &bytes[&info.id];
    let server = Server::start(&repo, "latest");

    let mut c = Client::connect(&server);
    c.option(11, &[]); // extended headers, which qemu 10 asks for first
    assert_eq!(c.reply().1, (1 << 31) + 1, "ERR_UNSUP");
    c.option(5, &[]); // STARTTLS
    assert_eq!(c.reply().1, (1 << 31) + 1, "ERR_UNSUP");
    c.option(3, &[]); // LIST: the default export and the image's id
    let names: Vec<String> = (0..2).map(|_| String::from_utf8(c.reply().2[4..].to_vec()).unwrap()).collect();
    assert_eq!(names, vec![String::new(), info.id.to_string()]);
    assert_eq!(c.reply().1, 1, "ACK after LIST");
    let mut d = 6u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"nosuch");
    d.extend_from_slice(&0u16.to_be_bytes());
    c.option(7, &d);
    assert_eq!(c.reply().1, (1 << 31) + 6, "ERR_UNKNOWN");
    let size = c.go("");
    assert_eq!(size, disk.len() as u64);
    let (err, data) = c.request(0, 4096, 65536, &[]);
    assert_eq!((err, data == disk[4096..4096 + 65536]), (0, true));
    assert_eq!(c.request(0, size - 10, 20, &[]).0, 22, "EINVAL past the end");
    assert_eq!(c.request(0, u64::MAX - 5, 10, &[]).0, 22, "EINVAL on an overflowing offset");
    assert_eq!(c.request(0, 0, u32::MAX, &[]).0, 22, "EINVAL on a 4 GiB read");
    assert_eq!(c.request(1, 0, 4, b"abcd").0, 1, "EPERM on a write");
    assert_eq!(c.request(3, 0, 0, &[]).0, 0, "FLUSH is fine");
    assert_eq!(c.request(42, 0, 0, &[]).0, 22, "EINVAL on an unknown command");
    assert_eq!(c.request(0, 0, 512, &[]).1, disk[..512], "still serving after the errors");
    c.request_disc();

    // An option of 4 GiB is refused without being read, and the connection ends.
    let mut c = Client::connect(&server);
    let mut b = b"IHAVEOPT".to_vec();
    b.extend_from_slice(&3u32.to_be_bytes());
    b.extend_from_slice(&u32::MAX.to_be_bytes());
    c.0.write_all(&b).unwrap();
    assert_eq!(c.reply().1, (1 << 31) + 9, "ERR_TOO_BIG");
    let mut rest = Vec::new();
    c.0.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // Floods of connections: each is served or refused, none stops the server.
    let many: Vec<Client> = (0..80).map(|_| Client(UnixStream::connect(&server.socket).unwrap())).collect();
    drop(many);
    // The flood's sessions end as their threads notice the closed ends; until then a new client
    // may be refused (the limit is doing its job), so it tries again for a while.
    let mut c = Client::connect_when_served(&server);
    c.go(&info.id.to_string());
    assert_eq!(c.request(0, 0, 512, &[]).1, disk[..512]);
    server.stop();
}

impl Client {
    fn request_disc(&mut self) {
        let mut b = 0x25609513u32.to_be_bytes().to_vec();
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&2u16.to_be_bytes());
        b.extend_from_slice(&[0u8; 20]);
        self.0.write_all(&b).unwrap();
        let mut rest = Vec::new();
        self.0.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "DISC has no reply");
    }
}

#[test]
fn a_damaged_chunk_is_an_error_to_the_client_never_wrong_bytes() {
    let (repo, _) = common::history(23, &[KindRequest::Full]);
    for pack in repo.files_in("packs") {
        let mut b = std::fs::read(&pack).unwrap();
        for at in (100..b.len() - 200).step_by(50_000) {
            b[at] ^= 0x20;
        }
        std::fs::write(&pack, &b).unwrap();
    }
    let server = Server::start(&repo, "latest");
    let out = qemu_img(&["convert", "-O", "raw", &server.url(""), repo.file("out.img").to_str().unwrap()]);
    assert!(!out.status.success(), "qemu-img read a damaged image without error");
    let err = server.stop();
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_to_serve_nbd_is_a_clear_error() {
    let (repo, _) = common::history(24, &[KindRequest::Full]);
    let taken = repo.file("taken.sock");
    std::fs::write(&taken, b"").unwrap();
    assert_clean_failure(&repo.cli(&["serve-nbd", "latest", "--unix", taken.to_str().unwrap()]), "exists");
    let sock = repo.file("s.sock");
    let s = sock.to_str().unwrap();
    assert_clean_failure(&repo.cli(&["serve-nbd", "nosuchimage", "--unix", s]), "no image matches");
    assert_clean_failure(&repo.cli(&["serve-nbd", "latest:0", "--unix", s]), "IMAGE:N");
    assert_clean_failure(&repo.cli(&["serve-nbd", "latest:1", "--unix", s]), "no partition table");
    assert_clean_failure(&repo.cli(&["serve-nbd", "latest"]), "--unix");
    assert!(!sock.exists());
}

/// The kernel path without the nbd module: `qemu-storage-daemon` as the NBD client exporting
/// the image as a FUSE file, `losetup -r`, `mount -o ro,noload`, and a file inside compared by
/// checksum. Needs root, /dev/fuse and the tools; where they are missing it says so and checks
/// nothing else (CI runs as root, with them).
#[test]
fn a_filesystem_in_a_served_image_mounts_through_the_kernel() {
    let have = |tool: &str| Command::new("which").arg(tool).output().is_ok_and(|o| o.status.success());
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/dev/fuse").exists() || !have("qemu-storage-daemon") || !have("losetup") {
        eprintln!("skipped: needs root, /dev/fuse, qemu-storage-daemon and losetup");
        return;
    }
    let repo = TestRepo::new();
    let fs = repo.file("fs.img");
    let files = repo.file("files");
    std::fs::create_dir(&files).unwrap();
    let blob = common::Disk::new(41, 3_000_000).random(0..3_000_000).bytes;
    std::fs::write(files.join("blob.bin"), &blob).unwrap();
    std::fs::write(&fs, vec![0u8; 64 << 20]).unwrap();
    let out = Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(&files).arg(&fs).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    repo.backup(&fs, KindRequest::Full);
    let server = Server::start(&repo, "latest");
    let export = repo.file("export.raw");
    std::fs::write(&export, b"").unwrap();
    let blockdev =
        format!("driver=nbd,node-name=n0,server.type=unix,server.path={},read-only=on", server.socket.display());
    let fuse = format!("type=fuse,id=e0,node-name=n0,mountpoint={},writable=off", export.display());
    let mut qsd = Command::new("qemu-storage-daemon")
        .args(["--blockdev", &blockdev, "--export", &fuse])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if std::fs::metadata(&export).is_ok_and(|m| m.len() == 64 << 20) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let out = Command::new("losetup").args(["-r", "-f", "--show"]).arg(&export).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let loop_dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mnt = repo.file("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount").args(["-o", "ro,noload", &loop_dev]).arg(&mnt).output().unwrap();
    let read = mounted.status.success().then(|| std::fs::read(mnt.join("blob.bin")));
    let _ = Command::new("umount").arg(&mnt).output();
    let _ = Command::new("losetup").args(["-d", &loop_dev]).output();
    // SIGTERM lets qemu-storage-daemon unmount its FUSE export; a kill would leave it mounted.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(qsd.id() as i32, libc::SIGTERM) };
    let _ = qsd.wait();
    let _ = Command::new("umount").arg("-l").arg(&export).output(); // in case it did not
    server.stop();
    assert!(mounted.status.success(), "mount: {}", String::from_utf8_lossy(&mounted.stderr));
    let read = read.unwrap().expect("read the file through the kernel");
    assert!(read == blob, "the file read through the kernel differs");
}
