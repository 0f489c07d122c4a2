//! Strata: deduplicating backups of whole disks as full, differential and incremental images.
//!
//! The modules follow the data: [`source`] → [`chunker`] → [`pack`] → [`index`] → [`manifest`],
//! driven by [`backup`](mod@backup) and read back by [`restore`](mod@restore); [`repository`] is
//! the thin facade that opens and creates repositories. The library never prints; progress goes
//! to a [`progress::Progress`].

pub mod backend;
pub mod backup;
pub mod check;
pub mod chunker;
pub mod config;
pub mod copies;
pub mod error;
pub mod extent;
pub mod failpoint;
pub mod forget;
pub mod id;
pub mod index;
pub mod lock;
pub mod manifest;
pub mod pack;
pub mod progress;
pub mod prune;
pub mod refs;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod source;
pub mod stats;
pub mod timefmt;

pub use backup::{backup, BackupOptions, KindRequest};
pub use error::{Error, Result};
pub use manifest::{ImageInfo, Kind};
pub use repository::{InitOptions, Repository};
pub use restore::{restore, restore_with, RestoreOptions, RestoreReport};
