//! The narrow interface between the agent's decisions and the BPF maps.
//!
//! Everything the agent writes is a [`MapOp`]; everything it needs to read back (to adopt
//! pinned state after a restart, or to compare dumps in tests) is a [`MapSnapshot`].
use std::collections::BTreeMap;

use svc_common::{Backend, Frontend, FrontendKey, Slot, SlotKey};

pub mod fake;
pub mod pinned;

/// One write to the service maps. [`crate::reconcile`] emits these in an order that keeps the
/// svc-common update-order invariant; implementations apply them exactly in that order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutBackend { id: u32, backend: Backend },
    PutSlot { key: SlotKey, slot: Slot },
    PutFrontend { key: FrontendKey, value: Frontend },
    DeleteFrontend { key: FrontendKey },
    DeleteSlot { key: SlotKey },
    DeleteBackend { id: u32 },
}

/// The contents of the three service maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapSnapshot {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    pub slots: BTreeMap<SlotKey, Slot>,
    pub backends: BTreeMap<u32, Backend>,
}

/// Map I/O failed. Expected at runtime only when a map is full or the kernel refuses a write;
/// every variant names the operation and the object.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{op:?}: {source}")]
    Write { op: MapOp, source: std::io::Error },
    #[error("reading map {map}: {source}")]
    Read {
        map: &'static str,
        source: std::io::Error,
    },
    /// Only the fake reports this: an operation would have broken the update-order invariant.
    #[error("{op:?} breaks the update-order invariant: {why}")]
    Invariant { op: MapOp, why: String },
}

/// Map I/O behind one trait, so the agent's logic runs against the real maps and against an
/// in-memory fake alike.
pub trait Dataplane {
    /// Applies one operation.
    fn apply(&mut self, op: &MapOp) -> Result<(), DataplaneError>;
    /// Reads the service maps.
    fn snapshot(&self) -> Result<MapSnapshot, DataplaneError>;
}
