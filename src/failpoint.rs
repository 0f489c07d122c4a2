//! Named points in the write paths where a test can make the process die on the spot
//! (`STRATA_FAILPOINT=<name>` aborts there), to prove the write order survives a crash at each
//! commit step. They exist only with the `failpoints` cargo feature, which the test suite
//! enables (`.ci/test`) and release builds do not: there the macros expand to nothing, so the
//! binary holds no failpoint name and reads no environment variable on any path.

/// Aborts (or stalls) here when `STRATA_FAILPOINT` names this point.
macro_rules! hit {
    ($name:literal) => {{
        #[cfg(feature = "failpoints")]
        $crate::failpoint::imp::hit($name);
    }};
}

/// True when `STRATA_FAILPOINT` names this point: the caller then fails as the disk would.
macro_rules! fails {
    ($name:literal) => {{
        #[cfg(feature = "failpoints")]
        let armed = $crate::failpoint::imp::fails($name);
        #[cfg(not(feature = "failpoints"))]
        let armed = false;
        armed
    }};
}

/// Counts one durable write; `STRATA_FAILPOINT=step:N` aborts before the Nth.
macro_rules! step {
    () => {{
        #[cfg(feature = "failpoints")]
        $crate::failpoint::imp::step();
    }};
}

pub(crate) use {fails, hit, step};

#[cfg(feature = "failpoints")]
pub(crate) mod imp {
    use std::sync::OnceLock;

    fn armed() -> Option<&'static str> {
        static ARMED: OnceLock<Option<String>> = OnceLock::new();
        ARMED.get_or_init(|| std::env::var("STRATA_FAILPOINT").ok()).as_deref()
    }

    /// Aborts the process, as a kill -9 would, when `STRATA_FAILPOINT` names this point; with
    /// `stall:<name>` it pauses there once instead (a writer caught mid-way, for tests of
    /// readers racing it).
    pub(crate) fn hit(name: &str) {
        match armed() {
            Some(a) if a == name => std::process::abort(),
            Some(a) if a.strip_prefix("stall:") == Some(name) => {
                use std::sync::atomic::{AtomicBool, Ordering};
                static ONCE: AtomicBool = AtomicBool::new(false);
                if !ONCE.swap(true, Ordering::Relaxed) {
                    // While the file `STRATA_STALL_WHILE` names exists (up to 2 minutes), so a
                    // test decides when the writer goes on; 3 s without one.
                    match std::env::var_os("STRATA_STALL_WHILE") {
                        Some(gate) => {
                            let started = std::time::Instant::now();
                            while std::path::Path::new(&gate).exists() && started.elapsed().as_secs() < 120 {
                                std::thread::sleep(std::time::Duration::from_millis(20));
                            }
                        }
                        None => std::thread::sleep(std::time::Duration::from_secs(3)),
                    }
                }
            }
            _ => {}
        }
    }

    /// True when `STRATA_FAILPOINT` names this point: the caller then fails as the disk would
    /// (used where the machine offers no real faulty device to test with).
    pub fn fails(name: &str) -> bool {
        armed() == Some(name)
    }

    /// Marks one durable write (an index batch, an object committed, a file removed or renamed).
    /// With `STRATA_FAILPOINT=step:N` the process aborts just before its Nth such write, so a test
    /// can stop a command at every step of its run in turn, without depending on timing.
    pub fn step() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
        static DONE: AtomicU64 = AtomicU64::new(0);
        let limit = LIMIT.get_or_init(|| armed().and_then(|a| a.strip_prefix("step:")).and_then(|n| n.parse().ok()));
        if let Some(limit) = *limit {
            if DONE.fetch_add(1, Ordering::Relaxed) + 1 >= limit {
                std::process::abort();
            }
        }
        // `count:<file>`: one byte appended per durable write, so a test learns how many steps
        // a run has before it picks one to kill at.
        if let Some(file) = armed().and_then(|a| a.strip_prefix("count:")) {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(file) {
                let _ = f.write_all(b".");
            }
        }
    }
}
