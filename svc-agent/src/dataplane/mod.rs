//! The narrow interface between the agent's decisions and the BPF maps.
//!
//! Everything the agent writes to the service maps is a [`MapOp`]; everything it needs to read
//! back (to adopt pinned state after a restart, or to compare dumps in tests) is a
//! [`MapSnapshot`]. The flow maps the datapath writes (conntrack, session affinity) are only
//! scanned and pruned by the agent: the `ct_*` and `affinity_*` methods.
use std::collections::BTreeMap;

use svc_common::{
    Affinity, AffinityKey, Backend, CtEntry, CtKey, Frontend, FrontendKey, Slot, SlotKey,
};

pub mod batch;
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
    #[error("deleting from map {map}: {source}")]
    Delete {
        map: &'static str,
        source: std::io::Error,
    },
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

    /// Walks the conntrack map, a chunk of entries at a time (keys and values index alike).
    /// Entries the datapath adds or the LRU evicts meanwhile may or may not be seen. Returns how
    /// many entries were read.
    fn ct_scan(&self, each: &mut dyn FnMut(&[CtKey], &[CtEntry])) -> Result<usize, DataplaneError>;
    /// One conntrack entry, `None` when absent.
    fn ct_get(&self, key: &CtKey) -> Result<Option<CtEntry>, DataplaneError>;
    /// Deletes conntrack entries; absent ones are skipped. Returns how many were deleted.
    fn ct_delete(&mut self, keys: &[CtKey]) -> Result<usize, DataplaneError>;
    /// Capacity (`max_entries`) of the conntrack map.
    fn ct_capacity(&self) -> u32;
    /// Walks the session-affinity map (see [`Dataplane::ct_scan`]).
    fn affinity_scan(
        &self,
        each: &mut dyn FnMut(&[AffinityKey], &[Affinity]),
    ) -> Result<usize, DataplaneError>;
    /// Deletes affinity entries; absent ones are skipped. Returns how many were deleted.
    fn affinity_delete(&mut self, keys: &[AffinityKey]) -> Result<usize, DataplaneError>;
    /// Entries and capacity of each LRU map other than conntrack (whose count a GC pass
    /// takes as it scans), for the fill-ratio metrics and warnings.
    fn lru_fill(&self) -> Result<Vec<MapFill>, DataplaneError>;
}

/// How full a map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: usize,
    pub capacity: u32,
}
