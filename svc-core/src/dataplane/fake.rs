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
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;

use svc_common::{
    Affinity, AffinityKey, Backend, CtEntry, CtKey, Frontend, FrontendKey, SlotKey,
    FRONTEND_F_EXTERNAL_SCOPE, FRONTEND_F_SOURCE_RANGES, MAP_AFFINITY, MAX_AFFINITY, MAX_CONNTRACK,
    SCOPE_ANY, SCOPE_EXTERNAL,
};

use super::{Dataplane, DataplaneError, MapFill, MapOp, MapSnapshot, SourceRange};

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
    /// Frontend id → key, for "is this slot's frontend present" and id uniqueness.
    ids: HashMap<u32, FrontendKey>,
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
            me.ids.insert(value.id, *key);
        }
        for (key, slot) in &me.snapshot.slots {
            me.users.entry(slot.backend_id).or_default().insert(*key);
        }
        me
    }

    /// Checks the whole invariant (and id uniqueness) from `snapshot`, independently of the
    /// per-op checks. Returns what is wrong.
    pub fn check_all(&self) -> Result<(), String> {
        let mut seen: HashMap<u32, FrontendKey> = HashMap::new();
        for (key, value) in &self.snapshot.frontends {
            if let Some(other) = seen.insert(value.id, *key) {
                return Err(format!(
                    "frontends {other:?} and {key:?} share id {}",
                    value.id
                ));
            }
            check_frontend(&self.snapshot, key, value)?;
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

    fn frontend_present(&self, id: u32) -> Option<&Frontend> {
        let key = self.ids.get(&id)?;
        self.snapshot.frontends.get(key)
    }
}

/// The [`SCOPE_EXTERNAL`] key beside `key`, if `value` tells the datapath to look it up.
fn external_scope_of(key: &FrontendKey, value: &Frontend) -> Option<FrontendKey> {
    (key.scope == SCOPE_ANY && value.flags & FRONTEND_F_EXTERNAL_SCOPE != 0).then_some(
        FrontendKey {
            scope: SCOPE_EXTERNAL,
            ..*key
        },
    )
}

/// The source ranges of frontend id `id`.
fn ranges_of(snap: &MapSnapshot, id: u32) -> impl Iterator<Item = &SourceRange> {
    let first = SourceRange {
        frontend_id: id,
        addr: [0; 4],
        len: 0,
    };
    let last = SourceRange {
        frontend_id: id,
        addr: [255; 4],
        len: u8::MAX,
    };
    snap.source_ranges.range(first..=last)
}

/// The invariant for one frontend: slots `1..=count` exist, every slot of it names a backend,
/// and the scoped entry its flags point at exists.
fn check_frontend(snap: &MapSnapshot, key: &FrontendKey, value: &Frontend) -> Result<(), String> {
    if value.id == 0 {
        return Err(format!("frontend {key:?} has id 0"));
    }
    if let Some(external) = external_scope_of(key, value) {
        if !snap.frontends.contains_key(&external) {
            return Err(format!(
                "frontend {key:?} has FRONTEND_F_EXTERNAL_SCOPE but {external:?} is missing"
            ));
        }
    }
    if value.flags & FRONTEND_F_SOURCE_RANGES != 0 && ranges_of(snap, value.id).next().is_none() {
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
        if !snap.backends.contains_key(&slot.backend_id) {
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
            _ => false,
        }
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
            MapOp::PutBackend { id, backend } => {
                if *id == 0 {
                    return Err(Self::invariant(op, "backend id 0".into()));
                }
                self.snapshot.backends.insert(*id, *backend);
            }
            MapOp::PutSlot { key, slot } => {
                if key.slot == 0 || slot.backend_id == 0 {
                    return Err(Self::invariant(op, "slot 0 or backend id 0".into()));
                }
                if self.frontend_present(key.frontend_id).is_some()
                    && !self.snapshot.backends.contains_key(&slot.backend_id)
                {
                    return Err(Self::invariant(
                        op,
                        format!(
                            "frontend is live and backend {} does not exist",
                            slot.backend_id
                        ),
                    ));
                }
                if let Some(old) = self.snapshot.slots.insert(*key, *slot) {
                    if let Some(users) = self.users.get_mut(&old.backend_id) {
                        users.remove(key);
                    }
                }
                self.users.entry(slot.backend_id).or_default().insert(*key);
            }
            MapOp::PutFrontend { key, value } => {
                if let Some(other) = self.ids.get(&value.id).filter(|k| *k != key) {
                    return Err(Self::invariant(
                        op,
                        format!("id {} is already used by {other:?}", value.id),
                    ));
                }
                check_frontend(&self.snapshot, key, value)
                    .map_err(|why| Self::invariant(op, why))?;
                if let Some(old) = self.snapshot.frontends.insert(*key, *value) {
                    if old.id != value.id {
                        self.ids.remove(&old.id);
                    }
                }
                self.ids.insert(value.id, *key);
            }
            MapOp::DeleteFrontend { key } => {
                if key.scope == SCOPE_EXTERNAL {
                    let any = FrontendKey {
                        scope: SCOPE_ANY,
                        ..*key
                    };
                    if let Some(value) = self.snapshot.frontends.get(&any) {
                        if external_scope_of(&any, value).is_some() {
                            return Err(Self::invariant(
                                op,
                                "the live SCOPE_ANY entry still has FRONTEND_F_EXTERNAL_SCOPE"
                                    .into(),
                            ));
                        }
                    }
                }
                let Some(old) = self.snapshot.frontends.remove(key) else {
                    return Err(Self::not_found(op));
                };
                if self.ids.get(&old.id) == Some(key) {
                    self.ids.remove(&old.id);
                }
            }
            MapOp::DeleteSlot { key } => {
                if let Some(fe) = self.frontend_present(key.frontend_id) {
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
            }
            MapOp::DeleteBackend { id } => {
                if !self.snapshot.backends.contains_key(id) {
                    return Err(Self::not_found(op));
                }
                for slot_key in self.users.get(id).into_iter().flatten() {
                    if self.frontend_present(slot_key.frontend_id).is_some() {
                        return Err(Self::invariant(
                            op,
                            format!("slot {slot_key:?} of a live frontend still names it"),
                        ));
                    }
                }
                self.snapshot.backends.remove(id);
            }
            MapOp::PutSourceRange { range } => {
                if range.frontend_id == 0 || range.len > 32 || !range.is_network() {
                    return Err(Self::invariant(
                        op,
                        "frontend id 0, length above 32 or host bits set".into(),
                    ));
                }
                self.snapshot.source_ranges.insert(*range);
            }
            MapOp::DeleteSourceRange { range } => {
                if !self.snapshot.source_ranges.contains(range) {
                    return Err(Self::not_found(op));
                }
                if let Some(fe) = self.frontend_present(range.frontend_id) {
                    if fe.flags & FRONTEND_F_SOURCE_RANGES != 0
                        && ranges_of(&self.snapshot, range.frontend_id).count() == 1
                    {
                        return Err(Self::invariant(
                            op,
                            "the last source range of a live frontend with \
                             FRONTEND_F_SOURCE_RANGES"
                                .into(),
                        ));
                    }
                }
                self.snapshot.source_ranges.remove(range);
            }
        }
        Ok(())
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

    fn lru_fill(&self) -> Result<Vec<MapFill>, DataplaneError> {
        Ok(vec![MapFill {
            map: MAP_AFFINITY,
            entries: self.affinity.len(),
            capacity: MAX_AFFINITY,
        }])
    }
}

/// A frontend as a packet experiences it: what [`canonical`] compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalFrontend {
    /// Backends reachable through slots `1..=backend_count`, as a set (slot order and ids are
    /// allocation history, not behaviour).
    pub backends: BTreeSet<Backend>,
    /// `Frontend::flags`.
    pub flags: u32,
    /// `Frontend::affinity_timeout_s`.
    pub affinity_timeout_s: u32,
    /// Its source ranges, `(network, prefix length)`.
    pub source_ranges: BTreeSet<([u8; 4], u8)>,
}

/// The maps' behaviour without ids: frontend → the backends it balances across. Two snapshots
/// reached by different histories (a restart, an incremental path) are equivalent when their
/// canonical forms are equal. A slot naming a missing backend shows up as no backend.
pub fn canonical(snapshot: &MapSnapshot) -> BTreeMap<FrontendKey, CanonicalFrontend> {
    snapshot
        .frontends
        .iter()
        .map(|(key, value)| {
            let backends = (1..=value.backend_count)
                .filter_map(|slot| {
                    snapshot.slots.get(&SlotKey {
                        frontend_id: value.id,
                        slot,
                    })
                })
                .filter_map(|s| snapshot.backends.get(&s.backend_id).copied())
                .collect();
            let canon = CanonicalFrontend {
                backends,
                flags: value.flags,
                affinity_timeout_s: value.affinity_timeout_s,
                source_ranges: ranges_of(snapshot, value.id)
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
    use svc_common::{Slot, PROTO_TCP, SCOPE_ANY};

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
