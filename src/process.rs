//! Child processes the user names (job hooks, a password command): waited for with a time limit,
//! past which their whole process group is killed (a shell's own children too).

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Waits for `child` (spawned with `process_group(0)`); past `timeout` kills its process group
/// and returns `Ok(None)`.
pub(crate) fn wait_or_kill(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let start = Instant::now();
    loop {
        match child.try_wait()? {
            Some(status) => return Ok(Some(status)),
            None if start.elapsed() >= timeout => {
                // SAFETY: kill has no memory preconditions; the group is the child's own.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Ok(None);
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
