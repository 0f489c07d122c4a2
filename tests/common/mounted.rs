//! `strata mount` as a user runs it: started in the background, ready once the kernel lists
//! the mount, stopped with a signal. Where FUSE cannot be used (not root, no /dev/fuse), `start`
//! says so and returns None, and the test checks nothing else (CI runs as root, with FUSE).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{strata_cmd, TestRepo};

pub struct MountedRepo {
    child: Child,
    pub dir: PathBuf,
    log: PathBuf,
}

/// Whether this process can mount FUSE filesystems directly.
pub fn fuse_usable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Path::new("/dev/fuse").exists()
}

/// Whether `dir` is a mount point of a Strata FUSE filesystem now.
pub fn is_mounted(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.into());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        // After " - ": the filesystem type (fuse, or fuse.SUBTYPE) and the source (strata).
        let after: Vec<&str> = l.split(" - ").nth(1).unwrap_or_default().split(' ').collect();
        f.get(4) == Some(&dir.to_str().unwrap_or_default())
            && after.first().is_some_and(|t| t.starts_with("fuse"))
            && after.get(1) == Some(&"strata")
    })
}

impl MountedRepo {
    /// Mounts `repo` on a new directory `name` beside it, with extra `args`.
    pub fn start(repo: &TestRepo, name: &str, args: &[&str]) -> Option<MountedRepo> {
        if !fuse_usable() {
            eprintln!("SKIP: mounting needs root and /dev/fuse");
            return None;
        }
        let dir = repo.file(name);
        std::fs::create_dir_all(&dir).unwrap();
        let log = repo.file(&format!("{name}.log"));
        let child = strata_cmd()
            .arg("-r")
            .arg(&repo.path)
            .arg("mount")
            .arg(&dir)
            .args(args)
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .expect("strata mount");
        let mut m = MountedRepo { child, dir, log };
        let start = Instant::now();
        while !is_mounted(&m.dir) {
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!("strata mount exited with {status}: {}", m.log());
            }
            assert!(start.elapsed() < Duration::from_secs(20), "not mounted after 20 s: {}", m.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(m)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// What the mount printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` and waits up to 20 s for the command to end; returns whether it ended.
    pub fn signal(&mut self, signal: i32) -> bool {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), signal) };
        self.wait_exit(Duration::from_secs(20))
    }

    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Unmounts as Ctrl-C would and checks that it ended cleanly; returns what it printed.
    pub fn stop(mut self) -> String {
        assert!(self.signal(libc::SIGTERM), "strata mount did not end on SIGTERM: {}", self.log());
        let status = self.child.wait().unwrap();
        let log = self.log();
        assert!(status.success(), "strata mount: {status}: {log}");
        assert!(!is_mounted(&self.dir), "still mounted after strata mount ended");
        assert!(!log.contains("panicked"), "{log}");
        log
    }
}

impl Drop for MountedRepo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A killed server leaves its mount behind ("transport endpoint is not connected").
        if is_mounted(&self.dir) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
