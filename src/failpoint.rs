//! Named points in the write paths where a test can make the process die on the spot
//! (`STRATA_FAILPOINT=<name>` aborts there), to prove the write order survives a crash at each
//! commit step. Costs one cached environment lookup when unset.

use std::sync::OnceLock;

/// Aborts the process, as a kill -9 would, when `STRATA_FAILPOINT` names this point.
pub fn hit(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    if ARMED.get_or_init(|| std::env::var("STRATA_FAILPOINT").ok()).as_deref() == Some(name) {
        std::process::abort();
    }
}
