//! The journal: an operation that changes manifests records itself under `"x"` before it
//! starts and clears the record in the synced batch that applies its counter changes. A writer
//! that finds it set finishes or undoes the operation as the record says (`crate::recover`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::ImageId;

/// An operation in progress that changes manifests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub op: String,
    /// Images being forgotten: recovery finishes forgetting those still there.
    pub forget: Vec<ImageId>,
    #[serde(default)]
    pub rebase: bool,
    /// forget: "rewrite" while kept images are rewritten (recovery undoes the forget), "delete"
    /// once the forgotten images left the catalog (recovery deletes the listed manifests).
    #[serde(default)]
    pub phase: String,
}

impl Journal {
    pub(super) fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| Error::Internal { reason: format!("journal does not encode: {e}") })
    }

    /// One that does not decode is an error, never an empty journal: it may list images that
    /// an interrupted forget was removing.
    pub(super) fn decode(b: &[u8]) -> Result<Journal> {
        serde_json::from_slice(b).map_err(|e| Error::Index {
            reason: format!(
                "the journal of an interrupted operation does not decode ({e}); images that an interrupted \
                 forget was removing may reappear after a rebuild: forget them again"
            ),
        })
    }
}
