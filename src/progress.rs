//! Progress reporting: the library reports to a sink, the CLI draws it, tests stay silent.

pub trait Progress: Sync {
    /// A phase of work starts, measured in bytes.
    fn begin(&self, _phase: &str, _total_bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn end(&self) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
