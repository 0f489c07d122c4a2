//! Strata: deduplicating backups of whole disks as full, differential and incremental images.
//!
//! The modules follow the data (docs/DESIGN.md draws the map). Operations, top to bottom:
//! [`backup`](mod@backup) (source → chunker → frames → packs → index → manifest),
//! [`restore`](mod@restore) and [`check`] (both reading through the one [`reader`]),
//! [`forget`] and [`prune`] (retiring images and reclaiming space), [`stats`], and [`recover`]
//! (crash recovery, rebuild-index). Beneath them: [`repository`] (opens and hands out the
//! pieces), [`manifest`] (images, catalog, chains), [`index`] (every key of the RocksDB index),
//! [`pack`] (the pack format) and [`storage`] (where objects live). The library never prints;
//! progress goes to a [`progress::Progress`].

pub mod allocation;
pub mod backup;
pub mod check;
pub mod config;
pub mod copy;
pub mod crypto;
pub mod error;
pub(crate) mod failpoint;
pub mod files;
pub mod forget;
pub mod id;
pub mod index;
pub mod job;
pub mod manifest;
pub mod mount;
pub(crate) mod mountinfo;
pub mod nbd;
pub mod pack;
pub mod partition;
pub(crate) mod process;
pub mod progress;
pub mod prune;
pub mod reader;
pub mod recover;
pub mod repository;
pub mod restore;
pub mod stats;
pub mod storage;
pub mod timefmt;

pub use backup::{backup, BackupOptions, KindRequest};
pub use error::{Error, Result};
pub use manifest::{ImageInfo, Kind};
pub use repository::{InitOptions, Repository};
pub use restore::{restore, restore_with, RestoreOptions, RestoreReport};
