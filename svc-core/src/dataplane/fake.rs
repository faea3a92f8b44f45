//! An in-memory [`Dataplane`] that enforces the update-order invariant after every operation.
//!
//! The real maps accept any write in any order; a wrong order shows up only as a packet dropped
//! (or misrouted) in the instant between two writes. The fake turns that instant into a test
//! failure: after each [`MapOp`] it checks that
//! - every present frontend's slots `1..=backend_count` exist, and
//! - every existing slot of a present frontend names an existing backend, and
//! - a [`SCOPE_ANY`] frontend with [`FRONTEND_F_EXTERNAL_SCOPE`] has its [`SCOPE_EXTERNAL`]
//!   entry (the uplink hooks look it up next and drop the packet when it is missing), and
//! - a frontend with [`FRONTEND_F_SOURCE_RANGES`] has at least one source range (without one
//!   the datapath would drop every new flow to it),
//!
//! which is exactly what a packet may read (frontend → one slot → one backend). Slots beyond a
//! count and backends no slot names are allowed: they are unreachable, and the agent removes
//! them a few operations later. It also rejects what the kernel would reject or what would be an
//! agent bug outright: deleting an absent entry (the kernel says `ENOENT`), id 0, and two
//! frontends sharing an id.
//!
//! Both families are checked alike: frontend and backend ids are one space over both (an id
//! in one family's map may not be put into the other's), and the slots of a frontend must
//! name backends of its own family's map.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;

use svc_common::{
    Affinity, Affinity6, AffinityKey, AffinityKey6, BackendOf, CtEntry, CtEntry6, CtKey, CtKey6,
    Frontend, FrontendKey, FrontendKeyOf, SlotKey, FRONTEND_F_EXTERNAL_SCOPE,
    FRONTEND_F_SOURCE_RANGES, MAP_AFFINITY, MAP_AFFINITY6, MAX_AFFINITY, MAX_CONNTRACK, SCOPE_ANY,
    SCOPE_EXTERNAL,
};

use super::{Dataplane, DataplaneError, MapFill, MapOp, MapSnapshot, SourceRangeOf};
use crate::family::{AnyFrontendKey, Family};

/// In-memory service maps with the invariant checked on every write.
///
/// `snapshot` is public for assertions; change it only through [`Dataplane::apply`] (or start
/// from [`FakeDataplane::with_snapshot`]), because the per-op checks use indexes derived from it.
/// [`FakeDataplane::check_all`] re-checks everything from `snapshot` alone.
#[derive(Clone, Debug, Default)]
pub struct FakeDataplane {
    /// The maps' contents.
    pub snapshot: MapSnapshot,
    /// Operations applied (including a rejected one), to assert how much a plan writes.
    pub writes: usize,
    /// The conntrack map (the datapath's: tests fill it directly).
    pub ct: BTreeMap<CtKey, CtEntry>,
    /// The session-affinity map (likewise).
    pub affinity: BTreeMap<AffinityKey, Affinity>,
    /// The IPv6 conntrack map (likewise).
    pub ct6: BTreeMap<CtKey6, CtEntry6>,
    /// The IPv6 session-affinity map (likewise).
    pub affinity6: BTreeMap<AffinityKey6, Affinity6>,
    /// Frontend id → key, for "is this slot's frontend present" and id uniqueness (over both
    /// families: ids are one space).
    ids: HashMap<u32, AnyFrontendKey>,
    /// Backend id → slots naming it, so deleting a backend checks only its users.
    users: HashMap<u32, BTreeSet<SlotKey>>,
    /// `max_entries` of the service maps; `None`: the ABI's sizes. A put of a new key into a
    /// full map fails with `E2BIG`, as the kernel's hash maps do.
    pub capacity: Option<crate::budget::Entries>,
    /// The [`Dataplane::apply`] calls with these numbers (as [`FakeDataplane::writes`] counts
    /// them: 1 is the first) fail, changing nothing, as a kernel refusing a write would; to
    /// exercise the caller's recovery.
    pub fail_writes: BTreeSet<usize>,
}

impl FakeDataplane {
    /// An empty dataplane.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty dataplane whose service maps hold at most `capacity` entries each.
    pub fn with_capacity(capacity: crate::budget::Entries) -> Self {
        Self {
            capacity: Some(capacity),
            ..Self::default()
        }
    }

    /// A dataplane holding `snapshot` (for adoption tests). It is not checked: junk is allowed
    /// in, as it may be in pinned maps; call [`FakeDataplane::check_all`] to check it.
    pub fn with_snapshot(snapshot: MapSnapshot) -> Self {
        let mut me = Self {
            snapshot,
            ..Self::default()
        };
        for (key, value) in &me.snapshot.frontends {
            me.ids.insert(value.id, AnyFrontendKey::V4(*key));
        }
        for (key, value) in &me.snapshot.frontends6 {
            me.ids.insert(value.id, AnyFrontendKey::V6(*key));
        }
        for (key, slot) in &me.snapshot.slots {
            me.users.entry(slot.backend_id).or_default().insert(*key);
        }
        me
    }

    /// Checks the whole invariant (and id uniqueness) from `snapshot`, independently of the
    /// per-op checks. Returns what is wrong.
    pub fn check_all(&self) -> Result<(), String> {
        let mut seen: HashMap<u32, AnyFrontendKey> = HashMap::new();
        check_all_of::<[u8; 4]>(&self.snapshot, &mut seen)?;
        check_all_of::<svc_common::Addr6>(&self.snapshot, &mut seen)?;
        if let Some(id) = self
            .snapshot
            .backends
            .keys()
            .find(|id| self.snapshot.backends6.contains_key(id))
        {
            return Err(format!("backend id {id} is in both families' maps"));
        }
        Ok(())
    }

    fn invariant(op: &MapOp, why: String) -> DataplaneError {
        DataplaneError::Invariant {
            op: op.clone(),
            why,
        }
    }

    fn not_found(op: &MapOp) -> DataplaneError {
        DataplaneError::Write {
            op: op.clone(),
            source: io::Error::from(io::ErrorKind::NotFound),
        }
    }

    /// The live frontend with id `id` and whether it is an IPv6 one.
    fn frontend_present(&self, id: u32) -> Option<(&Frontend, bool)> {
        match self.ids.get(&id)? {
            AnyFrontendKey::V4(key) => self.snapshot.frontends.get(key).map(|f| (f, false)),
            AnyFrontendKey::V6(key) => self.snapshot.frontends6.get(key).map(|f| (f, true)),
        }
    }
}

/// [`FakeDataplane::check_all`] of one family's frontends.
fn check_all_of<A: Family>(
    snap: &MapSnapshot,
    seen: &mut HashMap<u32, AnyFrontendKey>,
) -> Result<(), String> {
    for (key, value) in A::snap_frontends(snap) {
        if let Some(other) = seen.insert(value.id, A::any_key(*key)) {
            return Err(format!(
                "frontends {other:?} and {key:?} share id {}",
                value.id
            ));
        }
        check_frontend::<A>(snap, key, value)?;
    }
    Ok(())
}

/// Whether family `A` is IPv6 (its frontends' slots name `SVC_BACKENDS6` ids).
fn is_v6<A: Family>() -> bool {
    A::BITS == 128
}

/// The [`SCOPE_EXTERNAL`] key beside `key`, if `value` tells the datapath to look it up.
fn external_scope_of<A: Family>(
    key: &FrontendKeyOf<A>,
    value: &Frontend,
) -> Option<FrontendKeyOf<A>> {
    (key.scope == SCOPE_ANY && value.flags & FRONTEND_F_EXTERNAL_SCOPE != 0).then_some(
        FrontendKeyOf {
            scope: SCOPE_EXTERNAL,
            ..*key
        },
    )
}

/// The source ranges of frontend id `id` in family `A`'s trie.
fn ranges_of<A: Family>(snap: &MapSnapshot, id: u32) -> impl Iterator<Item = &SourceRangeOf<A>> {
    let mut top = A::UNSPECIFIED;
    top.as_mut().fill(255);
    let first = SourceRangeOf {
        frontend_id: id,
        addr: A::UNSPECIFIED,
        len: 0,
    };
    let last = SourceRangeOf {
        frontend_id: id,
        addr: top,
        len: u8::MAX,
    };
    A::snap_ranges(snap).range(first..=last)
}

/// The invariant for one frontend: slots `1..=count` exist, every slot of it names a backend
/// of its family, and the scoped entry its flags point at exists.
fn check_frontend<A: Family>(
    snap: &MapSnapshot,
    key: &FrontendKeyOf<A>,
    value: &Frontend,
) -> Result<(), String> {
    if value.id == 0 {
        return Err(format!("frontend {key:?} has id 0"));
    }
    if let Some(external) = external_scope_of(key, value) {
        if !A::snap_frontends(snap).contains_key(&external) {
            return Err(format!(
                "frontend {key:?} has FRONTEND_F_EXTERNAL_SCOPE but {external:?} is missing"
            ));
        }
    }
    if value.flags & FRONTEND_F_SOURCE_RANGES != 0
        && ranges_of::<A>(snap, value.id).next().is_none()
    {
        return Err(format!(
            "frontend {key:?} has FRONTEND_F_SOURCE_RANGES but no source range"
        ));
    }
    for slot in 1..=value.backend_count {
        if !snap.slots.contains_key(&SlotKey {
            frontend_id: value.id,
            slot,
        }) {
            return Err(format!(
                "frontend {key:?} counts {} slots but slot {slot} is missing",
                value.backend_count
            ));
        }
    }
    let range = SlotKey {
        frontend_id: value.id,
        slot: 0,
    }..=SlotKey {
        frontend_id: value.id,
        slot: u32::MAX,
    };
    for (slot_key, slot) in snap.slots.range(range) {
        if !A::snap_backends(snap).contains_key(&slot.backend_id) {
            return Err(format!(
                "slot {slot_key:?} of frontend {key:?} names missing backend {}",
                slot.backend_id
            ));
        }
    }
    Ok(())
}

impl FakeDataplane {
    /// Whether `op` puts a new key into a map that holds its `capacity` already.
    fn is_full_for(&self, op: &MapOp) -> bool {
        let Some(cap) = self.capacity else {
            return false;
        };
        let m = &self.snapshot;
        match op {
            MapOp::PutFrontend { key, .. } => {
                !m.frontends.contains_key(key) && m.frontends.len() as u64 >= cap.frontends
            }
            MapOp::PutSlot { key, .. } => {
                !m.slots.contains_key(key) && m.slots.len() as u64 >= cap.slots
            }
            MapOp::PutBackend { id, .. } => {
                !m.backends.contains_key(id) && m.backends.len() as u64 >= cap.backends
            }
            MapOp::PutSourceRange { range } => {
                !m.source_ranges.contains(range)
                    && m.source_ranges.len() as u64 >= cap.source_ranges
            }
            MapOp::PutFrontend6 { key, .. } => {
                !m.frontends6.contains_key(key) && m.frontends6.len() as u64 >= cap.frontends6
            }
            MapOp::PutBackend6 { id, .. } => {
                !m.backends6.contains_key(id) && m.backends6.len() as u64 >= cap.backends6
            }
            MapOp::PutSourceRange6 { range } => {
                !m.source_ranges6.contains(range)
                    && m.source_ranges6.len() as u64 >= cap.source_ranges6
            }
            _ => false,
        }
    }
}

impl FakeDataplane {
    fn put_backend<A: Family>(
        &mut self,
        op: &MapOp,
        id: u32,
        backend: &BackendOf<A>,
    ) -> Result<(), DataplaneError> {
        if id == 0 {
            return Err(Self::invariant(op, "backend id 0".into()));
        }
        let other_family = if is_v6::<A>() {
            self.snapshot.backends.contains_key(&id)
        } else {
            self.snapshot.backends6.contains_key(&id)
        };
        if other_family {
            return Err(Self::invariant(
                op,
                format!("backend id {id} is in the other family's map (ids are one space)"),
            ));
        }
        A::snap_backends_mut(&mut self.snapshot).insert(id, *backend);
        Ok(())
    }

    fn put_frontend<A: Family>(
        &mut self,
        op: &MapOp,
        key: &FrontendKeyOf<A>,
        value: &Frontend,
    ) -> Result<(), DataplaneError> {
        let any = A::any_key(*key);
        if let Some(other) = self.ids.get(&value.id).filter(|k| **k != any) {
            return Err(Self::invariant(
                op,
                format!("id {} is already used by {other:?}", value.id),
            ));
        }
        check_frontend::<A>(&self.snapshot, key, value).map_err(|why| Self::invariant(op, why))?;
        if let Some(old) = A::snap_frontends_mut(&mut self.snapshot).insert(*key, *value) {
            if old.id != value.id {
                self.ids.remove(&old.id);
            }
        }
        self.ids.insert(value.id, any);
        Ok(())
    }

    fn delete_frontend<A: Family>(
        &mut self,
        op: &MapOp,
        key: &FrontendKeyOf<A>,
    ) -> Result<(), DataplaneError> {
        if key.scope == SCOPE_EXTERNAL {
            let any = FrontendKeyOf {
                scope: SCOPE_ANY,
                ..*key
            };
            if let Some(value) = A::snap_frontends(&self.snapshot).get(&any) {
                if external_scope_of(&any, value).is_some() {
                    return Err(Self::invariant(
                        op,
                        "the live SCOPE_ANY entry still has FRONTEND_F_EXTERNAL_SCOPE".into(),
                    ));
                }
            }
        }
        let Some(old) = A::snap_frontends_mut(&mut self.snapshot).remove(key) else {
            return Err(Self::not_found(op));
        };
        if self.ids.get(&old.id) == Some(&A::any_key(*key)) {
            self.ids.remove(&old.id);
        }
        Ok(())
    }

    fn delete_backend<A: Family>(&mut self, op: &MapOp, id: u32) -> Result<(), DataplaneError> {
        if !A::snap_backends(&self.snapshot).contains_key(&id) {
            return Err(Self::not_found(op));
        }
        for slot_key in self.users.get(&id).into_iter().flatten() {
            // Only a live frontend of this family reads this map through its slots.
            if self
                .frontend_present(slot_key.frontend_id)
                .is_some_and(|(_, v6)| v6 == is_v6::<A>())
            {
                return Err(Self::invariant(
                    op,
                    format!("slot {slot_key:?} of a live frontend still names it"),
                ));
            }
        }
        A::snap_backends_mut(&mut self.snapshot).remove(&id);
        Ok(())
    }

    fn put_range<A: Family>(
        &mut self,
        op: &MapOp,
        range: &SourceRangeOf<A>,
    ) -> Result<(), DataplaneError> {
        if range.frontend_id == 0 || u32::from(range.len) > A::BITS || !range.is_network() {
            return Err(Self::invariant(
                op,
                format!("frontend id 0, length above {} or host bits set", A::BITS),
            ));
        }
        A::snap_ranges_mut(&mut self.snapshot).insert(*range);
        Ok(())
    }

    fn delete_range<A: Family>(
        &mut self,
        op: &MapOp,
        range: &SourceRangeOf<A>,
    ) -> Result<(), DataplaneError> {
        if !A::snap_ranges(&self.snapshot).contains(range) {
            return Err(Self::not_found(op));
        }
        if let Some((fe, _)) = self.frontend_present(range.frontend_id) {
            if fe.flags & FRONTEND_F_SOURCE_RANGES != 0
                && ranges_of::<A>(&self.snapshot, range.frontend_id).count() == 1
            {
                return Err(Self::invariant(
                    op,
                    "the last source range of a live frontend with FRONTEND_F_SOURCE_RANGES".into(),
                ));
            }
        }
        A::snap_ranges_mut(&mut self.snapshot).remove(range);
        Ok(())
    }
}

impl Dataplane for FakeDataplane {
    /// Checks the state `op` would produce, then applies it; a rejected op changes nothing.
    fn apply(&mut self, op: &MapOp) -> Result<(), DataplaneError> {
        self.writes += 1;
        if self.fail_writes.remove(&self.writes) {
            return Err(DataplaneError::Write {
                op: op.clone(),
                source: io::Error::other("injected failure (FakeDataplane::fail_writes)"),
            });
        }
        if self.is_full_for(op) {
            // E2BIG: what htab_map_update_elem returns for a new key when the map holds
            // max_entries (kernel/bpf/hashtab.c, alloc_htab_elem).
            return Err(DataplaneError::Write {
                op: op.clone(),
                source: io::Error::from_raw_os_error(7),
            });
        }
        match op {
            MapOp::PutBackend { id, backend } => self.put_backend::<[u8; 4]>(op, *id, backend),
            MapOp::PutBackend6 { id, backend } => {
                self.put_backend::<svc_common::Addr6>(op, *id, backend)
            }
            MapOp::PutSlot { key, slot } => {
                if key.slot == 0 || slot.backend_id == 0 {
                    return Err(Self::invariant(op, "slot 0 or backend id 0".into()));
                }
                if let Some((_, v6)) = self.frontend_present(key.frontend_id) {
                    let exists = if v6 {
                        self.snapshot.backends6.contains_key(&slot.backend_id)
                    } else {
                        self.snapshot.backends.contains_key(&slot.backend_id)
                    };
                    if !exists {
                        return Err(Self::invariant(
                            op,
                            format!(
                                "frontend is live and backend {} does not exist in its \
                                 family's map",
                                slot.backend_id
                            ),
                        ));
                    }
                }
                if let Some(old) = self.snapshot.slots.insert(*key, *slot) {
                    if let Some(users) = self.users.get_mut(&old.backend_id) {
                        users.remove(key);
                    }
                }
                self.users.entry(slot.backend_id).or_default().insert(*key);
                Ok(())
            }
            MapOp::PutFrontend { key, value } => self.put_frontend::<[u8; 4]>(op, key, value),
            MapOp::PutFrontend6 { key, value } => {
                self.put_frontend::<svc_common::Addr6>(op, key, value)
            }
            MapOp::DeleteFrontend { key } => self.delete_frontend::<[u8; 4]>(op, key),
            MapOp::DeleteFrontend6 { key } => self.delete_frontend::<svc_common::Addr6>(op, key),
            MapOp::DeleteSlot { key } => {
                if let Some((fe, _)) = self.frontend_present(key.frontend_id) {
                    if (1..=fe.backend_count).contains(&key.slot) {
                        return Err(Self::invariant(
                            op,
                            format!("the live frontend counts {} slots", fe.backend_count),
                        ));
                    }
                }
                let Some(old) = self.snapshot.slots.remove(key) else {
                    return Err(Self::not_found(op));
                };
                if let Some(users) = self.users.get_mut(&old.backend_id) {
                    users.remove(key);
                }
                Ok(())
            }
            MapOp::DeleteBackend { id } => self.delete_backend::<[u8; 4]>(op, *id),
            MapOp::DeleteBackend6 { id } => self.delete_backend::<svc_common::Addr6>(op, *id),
            MapOp::PutSourceRange { range } => self.put_range::<[u8; 4]>(op, range),
            MapOp::PutSourceRange6 { range } => self.put_range::<svc_common::Addr6>(op, range),
            MapOp::DeleteSourceRange { range } => self.delete_range::<[u8; 4]>(op, range),
            MapOp::DeleteSourceRange6 { range } => {
                self.delete_range::<svc_common::Addr6>(op, range)
            }
        }
    }

    fn snapshot(&self) -> Result<MapSnapshot, DataplaneError> {
        Ok(self.snapshot.clone())
    }

    /// Hands out the entries in chunks of 3, so callers are tested across chunk boundaries.
    fn ct_scan(&self, each: &mut dyn FnMut(&[CtKey], &[CtEntry])) -> Result<usize, DataplaneError> {
        let (keys, entries): (Vec<CtKey>, Vec<CtEntry>) =
            self.ct.iter().map(|(k, e)| (*k, *e)).unzip();
        for (k, e) in keys.chunks(3).zip(entries.chunks(3)) {
            each(k, e);
        }
        Ok(keys.len())
    }

    fn ct_get(&self, key: &CtKey) -> Result<Option<CtEntry>, DataplaneError> {
        Ok(self.ct.get(key).copied())
    }

    fn ct_delete(&mut self, keys: &[CtKey]) -> Result<usize, DataplaneError> {
        Ok(keys.iter().filter(|k| self.ct.remove(k).is_some()).count())
    }

    fn ct_capacity(&self) -> u32 {
        MAX_CONNTRACK
    }

    fn service_capacity(&self) -> Result<crate::budget::Entries, DataplaneError> {
        Ok(self.capacity.unwrap_or_else(crate::budget::Entries::abi))
    }

    fn affinity_scan(
        &self,
        each: &mut dyn FnMut(&[AffinityKey], &[Affinity]),
    ) -> Result<usize, DataplaneError> {
        let (keys, values): (Vec<AffinityKey>, Vec<Affinity>) =
            self.affinity.iter().map(|(k, a)| (*k, *a)).unzip();
        for (k, a) in keys.chunks(3).zip(values.chunks(3)) {
            each(k, a);
        }
        Ok(keys.len())
    }

    fn affinity_delete(&mut self, keys: &[AffinityKey]) -> Result<usize, DataplaneError> {
        Ok(keys
            .iter()
            .filter(|k| self.affinity.remove(k).is_some())
            .count())
    }

    fn ct6_scan(
        &self,
        each: &mut dyn FnMut(&[CtKey6], &[CtEntry6]),
    ) -> Result<usize, DataplaneError> {
        let (keys, entries): (Vec<CtKey6>, Vec<CtEntry6>) =
            self.ct6.iter().map(|(k, e)| (*k, *e)).unzip();
        for (k, e) in keys.chunks(3).zip(entries.chunks(3)) {
            each(k, e);
        }
        Ok(keys.len())
    }

    fn ct6_get(&self, key: &CtKey6) -> Result<Option<CtEntry6>, DataplaneError> {
        Ok(self.ct6.get(key).copied())
    }

    fn ct6_delete(&mut self, keys: &[CtKey6]) -> Result<usize, DataplaneError> {
        Ok(keys.iter().filter(|k| self.ct6.remove(k).is_some()).count())
    }

    fn affinity6_scan(
        &self,
        each: &mut dyn FnMut(&[AffinityKey6], &[Affinity6]),
    ) -> Result<usize, DataplaneError> {
        let (keys, values): (Vec<AffinityKey6>, Vec<Affinity6>) =
            self.affinity6.iter().map(|(k, a)| (*k, *a)).unzip();
        for (k, a) in keys.chunks(3).zip(values.chunks(3)) {
            each(k, a);
        }
        Ok(keys.len())
    }

    fn affinity6_delete(&mut self, keys: &[AffinityKey6]) -> Result<usize, DataplaneError> {
        Ok(keys
            .iter()
            .filter(|k| self.affinity6.remove(k).is_some())
            .count())
    }

    fn lru_fill(&self) -> Result<Vec<MapFill>, DataplaneError> {
        Ok(vec![
            MapFill {
                map: MAP_AFFINITY,
                entries: self.affinity.len(),
                capacity: MAX_AFFINITY,
            },
            MapFill {
                map: MAP_AFFINITY6,
                entries: self.affinity6.len(),
                capacity: MAX_AFFINITY,
            },
        ])
    }
}

/// A frontend as a packet experiences it: what [`canonical`] compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalFrontendOf<A: Family> {
    /// Backends reachable through slots `1..=backend_count`, as a set (slot order and ids are
    /// allocation history, not behaviour).
    pub backends: BTreeSet<BackendOf<A>>,
    /// `Frontend::flags`.
    pub flags: u32,
    /// `Frontend::affinity_timeout_s`.
    pub affinity_timeout_s: u32,
    /// Its source ranges, `(network, prefix length)`.
    pub source_ranges: BTreeSet<(A, u8)>,
}
/// [`CanonicalFrontendOf`] an IPv4 frontend.
pub type CanonicalFrontend = CanonicalFrontendOf<[u8; 4]>;

/// The maps' behaviour without ids: frontend → the backends it balances across. Two snapshots
/// reached by different histories (a restart, an incremental path) are equivalent when their
/// canonical forms are equal. A slot naming a missing backend shows up as no backend. IPv4
/// frontends; [`canonical6`] for the IPv6 ones.
pub fn canonical(snapshot: &MapSnapshot) -> BTreeMap<FrontendKey, CanonicalFrontend> {
    canonical_of::<[u8; 4]>(snapshot)
}

/// [`canonical`] of the IPv6 frontends.
pub fn canonical6(
    snapshot: &MapSnapshot,
) -> BTreeMap<svc_common::FrontendKey6, CanonicalFrontendOf<svc_common::Addr6>> {
    canonical_of::<svc_common::Addr6>(snapshot)
}

fn canonical_of<A: Family>(
    snapshot: &MapSnapshot,
) -> BTreeMap<FrontendKeyOf<A>, CanonicalFrontendOf<A>> {
    A::snap_frontends(snapshot)
        .iter()
        .map(|(key, value)| {
            let backends = (1..=value.backend_count)
                .filter_map(|slot| {
                    snapshot.slots.get(&SlotKey {
                        frontend_id: value.id,
                        slot,
                    })
                })
                .filter_map(|s| A::snap_backends(snapshot).get(&s.backend_id).copied())
                .collect();
            let canon = CanonicalFrontendOf {
                backends,
                flags: value.flags,
                affinity_timeout_s: value.affinity_timeout_s,
                source_ranges: ranges_of::<A>(snapshot, value.id)
                    .map(|r| (r.addr, r.len))
                    .collect(),
            };
            (*key, canon)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use svc_common::{Backend, Slot, PROTO_TCP, SCOPE_ANY};

    const KEY: FrontendKey = FrontendKey {
        addr: [10, 96, 0, 10],
        port: 80,
        proto: PROTO_TCP,
        scope: SCOPE_ANY,
    };
    const BACKEND: Backend = Backend {
        addr: [10, 244, 1, 5],
        port: 8080,
        proto: PROTO_TCP,
        flags: 0,
    };

    fn put_backend(id: u32) -> MapOp {
        MapOp::PutBackend {
            id,
            backend: BACKEND,
        }
    }
    fn put_slot(frontend_id: u32, slot: u32, backend_id: u32) -> MapOp {
        MapOp::PutSlot {
            key: SlotKey { frontend_id, slot },
            slot: Slot { backend_id },
        }
    }
    fn put_frontend(key: FrontendKey, id: u32, count: u32) -> MapOp {
        MapOp::PutFrontend {
            key,
            value: Frontend {
                id,
                backend_count: count,
                flags: 0,
                affinity_timeout_s: 0,
            },
        }
    }

    /// Frontend id 1 at KEY with one slot naming backend 1.
    fn one_service() -> FakeDataplane {
        let mut fake = FakeDataplane::new();
        for op in [put_backend(1), put_slot(1, 1, 1), put_frontend(KEY, 1, 1)] {
            fake.apply(&op).expect("valid order");
        }
        fake
    }

    fn rejected(fake: &mut FakeDataplane, op: MapOp) -> DataplaneError {
        let before = fake.snapshot.clone();
        let err = fake.apply(&op).expect_err("must be rejected");
        assert_eq!(fake.snapshot, before, "a rejected op changes nothing");
        err
    }

    #[test]
    fn the_update_order_is_accepted_and_writes_are_counted() {
        let fake = one_service();
        assert_eq!(fake.writes, 3);
        fake.check_all().expect("consistent");
    }

    #[test]
    fn frontend_before_its_slots_is_rejected() {
        let mut fake = FakeDataplane::new();
        fake.apply(&put_backend(1)).expect("backend");
        let err = rejected(&mut fake, put_frontend(KEY, 1, 1));
        assert!(matches!(err, DataplaneError::Invariant { .. }), "{err}");
    }

    #[test]
    fn slot_naming_a_missing_backend_is_rejected_for_a_live_frontend_only() {
        let mut fake = one_service();
        rejected(&mut fake, put_slot(1, 2, 9));
        // Beyond the count it is still a slot of a live frontend: rejected.
        // For a frontend id not (yet) present it is unreachable: allowed.
        fake.apply(&put_slot(2, 1, 9)).expect("unreachable slot");
        // …but that frontend cannot then go live.
        rejected(
            &mut fake,
            put_frontend(FrontendKey { port: 81, ..KEY }, 2, 1),
        );
    }

    #[test]
    fn deleting_a_counted_slot_is_rejected_and_an_extra_one_allowed() {
        let mut fake = one_service();
        rejected(
            &mut fake,
            MapOp::DeleteSlot {
                key: SlotKey {
                    frontend_id: 1,
                    slot: 1,
                },
            },
        );
        fake.apply(&put_slot(1, 2, 1))
            .expect("slot beyond the count");
        fake.apply(&MapOp::DeleteSlot {
            key: SlotKey {
                frontend_id: 1,
                slot: 2,
            },
        })
        .expect("extra slot");
        fake.apply(&MapOp::DeleteFrontend { key: KEY })
            .expect("frontend first");
        fake.apply(&MapOp::DeleteSlot {
            key: SlotKey {
                frontend_id: 1,
                slot: 1,
            },
        })
        .expect("then slot");
    }

    #[test]
    fn deleting_a_backend_a_live_slot_names_is_rejected() {
        let mut fake = one_service();
        rejected(&mut fake, MapOp::DeleteBackend { id: 1 });
        fake.apply(&put_backend(2))
            .expect("unreferenced backend is fine");
        fake.apply(&MapOp::DeleteBackend { id: 2 })
            .expect("unreferenced delete");
        fake.apply(&MapOp::DeleteFrontend { key: KEY })
            .expect("frontend");
        // The slot still names backend 1, but no live frontend reads it.
        fake.apply(&MapOp::DeleteBackend { id: 1 })
            .expect("orphaned slot's backend");
    }

    #[test]
    fn two_frontends_sharing_an_id_are_rejected() {
        let mut fake = one_service();
        rejected(
            &mut fake,
            put_frontend(FrontendKey { port: 81, ..KEY }, 1, 1),
        );
    }

    #[test]
    fn external_scope_flag_needs_its_scoped_entry_first_and_last() {
        let external = FrontendKey {
            scope: SCOPE_EXTERNAL,
            ..KEY
        };
        let flagged = MapOp::PutFrontend {
            key: KEY,
            value: Frontend {
                id: 1,
                backend_count: 1,
                flags: FRONTEND_F_EXTERNAL_SCOPE,
                affinity_timeout_s: 0,
            },
        };
        let mut fake = one_service();
        rejected(&mut fake, flagged.clone());
        fake.apply(&put_frontend(external, 2, 0))
            .expect("the scoped entry first");
        fake.apply(&flagged).expect("then the flag");
        rejected(&mut fake, MapOp::DeleteFrontend { key: external });
        fake.check_all().expect("consistent");
        let mut broken = fake.snapshot.clone();
        broken.frontends.remove(&external);
        assert!(FakeDataplane::with_snapshot(broken).check_all().is_err());
    }

    #[test]
    fn deleting_an_absent_entry_fails_like_the_kernel() {
        let mut fake = FakeDataplane::new();
        for op in [
            MapOp::DeleteFrontend { key: KEY },
            MapOp::DeleteSlot {
                key: SlotKey {
                    frontend_id: 1,
                    slot: 1,
                },
            },
            MapOp::DeleteBackend { id: 1 },
        ] {
            let err = fake.apply(&op).expect_err("absent");
            assert!(
                matches!(&err, DataplaneError::Write { source, .. } if source.kind() == io::ErrorKind::NotFound),
                "{err}"
            );
        }
    }

    #[test]
    fn check_all_finds_what_per_op_checks_would() {
        let mut snap = one_service().snapshot;
        snap.backends.clear();
        let fake = FakeDataplane::with_snapshot(snap);
        assert!(fake.check_all().is_err());
    }

    #[test]
    fn canonical_ignores_ids_and_slot_order() {
        let mut a = FakeDataplane::new();
        for op in [put_backend(1), put_slot(1, 1, 1), put_frontend(KEY, 1, 1)] {
            a.apply(&op).expect("a");
        }
        let mut b = FakeDataplane::new();
        for op in [put_backend(7), put_slot(3, 1, 7), put_frontend(KEY, 3, 1)] {
            b.apply(&op).expect("b");
        }
        assert_ne!(a.snapshot, b.snapshot);
        assert_eq!(canonical(&a.snapshot), canonical(&b.snapshot));
    }
}
