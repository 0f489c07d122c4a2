//! Where a password comes from: an environment variable, a file, or a command's output. Never a
//! plain command-line argument (it would show in `ps` and in shell histories). The terminal
//! prompt belongs to the CLI (the library never talks to a terminal).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A password: its bytes are wiped when it is dropped.
pub type Password = Zeroizing<Vec<u8>>;

/// How long `--password-command` may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The most bytes read from a password file or command (a password, not a disk).
const MAX_PASSWORD: u64 = 64 * 1024;

#[derive(Clone)]
pub enum PasswordSource {
    /// The value of an environment variable (`STRATA_PASSWORD`), read by the caller.
    Value { name: String, value: Password },
    /// The first line of a file (`--password-file`).
    File(PathBuf),
    /// The first line of a shell command's output (`--password-command`), run with `sh -c`.
    Command(String),
}

/// Names the source, never the password.
impl std::fmt::Debug for PasswordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordSource({})", self.describe())
    }
}

impl PasswordSource {
    /// What the source is, for messages (never the password).
    pub fn describe(&self) -> String {
        match self {
            PasswordSource::Value { name, .. } => name.clone(),
            PasswordSource::File(p) => format!("file {}", p.display()),
            PasswordSource::Command(c) => format!("command {c:?}"),
        }
    }

    /// Reads the password: the first line, without its line ending; an empty one is an error.
    pub fn read(&self) -> Result<Password> {
        self.read_with_timeout(COMMAND_TIMEOUT)
    }

    pub fn read_with_timeout(&self, timeout: Duration) -> Result<Password> {
        let failed = |reason: String| Error::PasswordSource { source_name: self.describe(), reason };
        let raw: Password = match self {
            PasswordSource::Value { value, .. } => value.clone(),
            PasswordSource::File(path) => {
                let mut buf = Zeroizing::new(Vec::new());
                std::fs::File::open(path)
                    .and_then(|f| f.take(MAX_PASSWORD).read_to_end(&mut buf))
                    .map_err(|e| failed(format!("cannot be read: {e}")))?;
                buf
            }
            PasswordSource::Command(cmd) => run_command(cmd, timeout).map_err(failed)?,
        };
        let line = first_line(&raw);
        if line.is_empty() {
            return Err(failed("is empty; an empty password is not accepted".into()));
        }
        Ok(Zeroizing::new(line.to_vec()))
    }
}

fn first_line(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == b'\n').unwrap_or(b.len());
    let line = &b[..end];
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Runs `sh -c cmd` with stdin closed, reading its output; kills its process group after
/// `timeout`.
fn run_command(cmd: &str, timeout: Duration) -> std::result::Result<Password, String> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot be started: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("has no output")?;
    let mut stderr = child.stderr.take().ok_or("has no error output")?;
    // Read on threads, so that a command writing much cannot block on a full pipe while we wait.
    let out = std::thread::spawn(move || {
        let mut b = Zeroizing::new(Vec::new());
        let _ = (&mut stdout).take(MAX_PASSWORD).read_to_end(&mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = (&mut stderr).take(4096).read_to_end(&mut b);
        b
    });
    let status = crate::process::wait_or_kill(&mut child, timeout)
        .map_err(|e| format!("cannot be waited for: {e}"))?
        .ok_or_else(|| format!("did not finish within {} s and was stopped", timeout.as_secs_f64()))?;
    let output = out.join().map_err(|_| "output could not be read")?;
    let errors = err.join().unwrap_or_default();
    if !status.success() {
        let msg = String::from_utf8_lossy(&errors);
        return Err(format!(
            "failed ({status}){}",
            if msg.trim().is_empty() { String::new() } else { format!(": {}", msg.trim()) }
        ));
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn files_and_commands_give_their_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "secret\r\nsecond line\n").unwrap();
        assert_eq!(&*PasswordSource::File(f).read().unwrap(), b"secret");
        assert_eq!(&*PasswordSource::Command("printf 'from cmd\\n'".into()).read().unwrap(), b"from cmd");
        let v = PasswordSource::Value { name: "STRATA_PASSWORD".into(), value: Zeroizing::new(b"env".to_vec()) };
        assert_eq!(&*v.read().unwrap(), b"env");
    }

    #[test]
    fn debug_output_never_shows_a_password() {
        let v = PasswordSource::Value { name: "STRATA_PASSWORD".into(), value: Zeroizing::new(b"hunter2".to_vec()) };
        assert!(!format!("{v:?}").contains("hunter2") && !format!("{v:?}").contains("104, 117"));
    }

    #[test]
    fn empty_missing_failing_and_hanging_sources_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = PasswordSource::File(empty).read().unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        let err = PasswordSource::File(dir.path().join("absent")).read().unwrap_err().to_string();
        assert!(err.contains("cannot be read"), "{err}");
        let err = PasswordSource::Command("echo nope >&2; exit 3".into()).read().unwrap_err().to_string();
        assert!(err.contains("failed") && err.contains("nope"), "{err}");
        let start = Instant::now();
        let err = PasswordSource::Command("sleep 30".into())
            .read_with_timeout(Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not finish"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
        let err = PasswordSource::Command("true".into()).read().unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }
}
