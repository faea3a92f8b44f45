//! The narrow interface between the agent's decisions and the BPF maps.
//!
//! Everything the agent writes to the service maps is a [`MapOp`]; everything it needs to read
//! back (to adopt pinned state after a restart, or to compare dumps in tests) is a
//! [`MapSnapshot`]. The flow maps the datapath writes (conntrack, session affinity) are only
//! scanned and pruned by the agent: the `ct_*` and `affinity_*` methods.
use std::collections::{BTreeMap, BTreeSet};

use svc_common::{
    Addr, Affinity, Affinity6, AffinityKey, AffinityKey6, Backend, Backend6, CtEntry, CtEntry6,
    CtKey, CtKey6, Frontend, FrontendKey, FrontendKey6, Slot, SlotKey, SourceRangeKeyOf,
    SOURCE_RANGE_ID_BITS,
};

pub mod fake;

/// One write to the service maps. [`crate::reconcile`] emits these in an order that keeps the
/// svc-common update-order invariant; implementations apply them exactly in that order.
/// A frontend's `loadBalancerSourceRanges` prefixes are put before the `PutFrontend` that may
/// set `FRONTEND_F_SOURCE_RANGES` and deleted after the frontend stopped needing them.
///
/// Each family has its own frontend, backend and source-range ops (the `…6` variants write
/// `SVC_FRONTENDS6`, `SVC_BACKENDS6`, `SVC_SOURCE_RANGES6`); slots are one map for both
/// (`PutSlot`/`DeleteSlot`): a slot of an IPv6 frontend names an `SVC_BACKENDS6` id. Frontend
/// and backend ids are one space over both families, so an id is in use in one family's maps
/// at most. The update order holds per family and across them alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutBackend { id: u32, backend: Backend },
    PutSlot { key: SlotKey, slot: Slot },
    PutFrontend { key: FrontendKey, value: Frontend },
    DeleteFrontend { key: FrontendKey },
    DeleteSlot { key: SlotKey },
    DeleteBackend { id: u32 },
    PutSourceRange { range: SourceRange },
    DeleteSourceRange { range: SourceRange },
    PutBackend6 { id: u32, backend: Backend6 },
    PutFrontend6 { key: FrontendKey6, value: Frontend },
    DeleteFrontend6 { key: FrontendKey6 },
    DeleteBackend6 { id: u32 },
    PutSourceRange6 { range: SourceRange6 },
    DeleteSourceRange6 { range: SourceRange6 },
}

/// One entry of `SVC_SOURCE_RANGES` ([`SourceRange`]) or `SVC_SOURCE_RANGES6`
/// ([`SourceRange6`]): client prefix `addr/len` may open flows to the frontend with id
/// `frontend_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeOf<A> {
    pub frontend_id: u32,
    /// Network address (host bits zero), network order.
    pub addr: A,
    /// CIDR prefix length, 0..=32 (IPv4) or 0..=128 (IPv6).
    pub len: u8,
}
/// An `SVC_SOURCE_RANGES` entry.
pub type SourceRange = SourceRangeOf<[u8; 4]>;
/// An `SVC_SOURCE_RANGES6` entry.
pub type SourceRange6 = SourceRangeOf<svc_common::Addr6>;

impl<A: Addr + AsRef<[u8]> + AsMut<[u8]>> SourceRangeOf<A> {
    /// The LPM trie key: prefix length (id bits + CIDR bits) and data.
    pub fn map_key(&self) -> (u32, SourceRangeKeyOf<A>) {
        (
            SOURCE_RANGE_ID_BITS + u32::from(self.len),
            SourceRangeKeyOf {
                frontend_id: self.frontend_id,
                addr: self.addr,
            },
        )
    }

    /// The entry a map key stands for; `None` for a prefix length no agent writes.
    pub fn from_map_key(prefix_len: u32, key: SourceRangeKeyOf<A>) -> Option<Self> {
        let len = prefix_len.checked_sub(SOURCE_RANGE_ID_BITS)?;
        (len <= A::BITS).then_some(Self {
            frontend_id: key.frontend_id,
            addr: key.addr,
            len: len as u8,
        })
    }

    /// Whether `addr` is inside the prefix.
    pub fn contains(&self, addr: A) -> bool {
        Self::masked(addr, self.len) == self.addr
    }

    /// Whether `addr` is a network address of this length (no host bit set), as the agent
    /// writes them.
    pub fn is_network(&self) -> bool {
        Self::masked(self.addr, self.len) == self.addr
    }

    /// `addr` with every bit past the first `len` cleared.
    fn masked(mut addr: A, len: u8) -> A {
        let mut left = u32::from(len);
        for byte in addr.as_mut() {
            let keep = left.min(8);
            // keep = 0 clears the byte: a shift by 8 of a u8 would overflow.
            *byte &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
            left -= keep;
        }
        addr
    }
}

/// The contents of the service maps, of both families (slots are one map).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapSnapshot {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    pub slots: BTreeMap<SlotKey, Slot>,
    pub backends: BTreeMap<u32, Backend>,
    /// `SVC_SOURCE_RANGES`.
    pub source_ranges: BTreeSet<SourceRange>,
    /// `SVC_FRONTENDS6`.
    pub frontends6: BTreeMap<FrontendKey6, Frontend>,
    /// `SVC_BACKENDS6`.
    pub backends6: BTreeMap<u32, Backend6>,
    /// `SVC_SOURCE_RANGES6`.
    pub source_ranges6: BTreeSet<SourceRange6>,
}

impl MapSnapshot {
    /// Adds a source-range entry to its family's trie.
    pub fn insert_range(&mut self, range: crate::family::AnySourceRange) {
        match range {
            crate::family::AnySourceRange::V4(r) => {
                self.source_ranges.insert(r);
            }
            crate::family::AnySourceRange::V6(r) => {
                self.source_ranges6.insert(r);
            }
        }
    }
}

/// Map I/O failed. Expected at runtime only when a map is full or the kernel refuses a write;
/// every variant names the operation and the object.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{op:?}: {source}")]
    Write { op: MapOp, source: std::io::Error },
    /// A write that is no [`MapOp`] (tests seeding a flow table).
    #[error("writing map {map}: {source}")]
    Put {
        map: &'static str,
        source: std::io::Error,
    },
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
    /// Capacity (`max_entries`) of each service map, for [`crate::budget`].
    fn service_capacity(&self) -> Result<crate::budget::Entries, DataplaneError>;
    /// Walks the session-affinity map (see [`Dataplane::ct_scan`]).
    fn affinity_scan(
        &self,
        each: &mut dyn FnMut(&[AffinityKey], &[Affinity]),
    ) -> Result<usize, DataplaneError>;
    /// Deletes affinity entries; absent ones are skipped. Returns how many were deleted.
    fn affinity_delete(&mut self, keys: &[AffinityKey]) -> Result<usize, DataplaneError>;
    /// [`Dataplane::ct_scan`] of the IPv6 conntrack map (`SVC_CT6`, as large as `SVC_CT`:
    /// [`Dataplane::ct_capacity`]).
    fn ct6_scan(
        &self,
        each: &mut dyn FnMut(&[CtKey6], &[CtEntry6]),
    ) -> Result<usize, DataplaneError>;
    /// [`Dataplane::ct_get`] of the IPv6 conntrack map.
    fn ct6_get(&self, key: &CtKey6) -> Result<Option<CtEntry6>, DataplaneError>;
    /// [`Dataplane::ct_delete`] of the IPv6 conntrack map.
    fn ct6_delete(&mut self, keys: &[CtKey6]) -> Result<usize, DataplaneError>;
    /// [`Dataplane::affinity_scan`] of the IPv6 session-affinity map.
    fn affinity6_scan(
        &self,
        each: &mut dyn FnMut(&[AffinityKey6], &[Affinity6]),
    ) -> Result<usize, DataplaneError>;
    /// [`Dataplane::affinity_delete`] of the IPv6 session-affinity map.
    fn affinity6_delete(&mut self, keys: &[AffinityKey6]) -> Result<usize, DataplaneError>;
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
