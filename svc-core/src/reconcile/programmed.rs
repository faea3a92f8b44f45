//! [`Programmed`]: the mirror of the service maps (both families) with the bookkeeping the maps do not keep
//! (owner Service per frontend, one id per backend tuple, how many slots name each backend, what
//! the next plan must clean up), how it adopts pinned maps after a restart
//! ([`Programmed::from_snapshot`], tolerant of anything a crash left) and the map image it stands
//! for ([`Programmed::to_snapshot`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use svc_common::{Frontend, Slot, SlotKey, MAX_BACKENDS_PER_FRONTEND};

use crate::dataplane::{MapOp, MapSnapshot, SourceRangeOf};

use crate::family::{AnyBackend, AnyFrontendKey, AnySourceRange, Family};
use crate::model::ObjectRef;

use super::ids::IdAllocator;
use super::Prefix;
#[cfg(doc)]
use super::{plan_services, Plan};

/// One programmed frontend, as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedFrontend {
    /// Our id for it, the first half of its slot keys. 0 when the map's value carries an id we
    /// cannot keep (0, or one already used by another frontend, found when adopting maps): the
    /// next plan gives it a fresh id.
    pub id: u32,
    /// The value exactly as in the frontend map.
    pub value: Frontend,
    /// Backend id in slot 1, 2, … (index + 1). `None` when the slot entry is absent (only after
    /// adopting broken maps). May name an id with no backend entry (adopted junk): such a slot
    /// never equals a desired one, so the next plan rewrites it.
    pub slots: Vec<Option<u32>>,
    /// The Service it was programmed for; `None` when adopted from the maps (which do not record
    /// owners) and not planned since. Shared with the owner index: one copy per Service, not
    /// one per frontend.
    pub owner: Option<Arc<ObjectRef>>,
    /// Its `SVC_SOURCE_RANGES` (`SVC_SOURCE_RANGES6`) prefixes, sorted, all of its family.
    pub source_ranges: Vec<Prefix>,
}

/// A backend entry and how many frontend slots name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct BackendEntry {
    /// The backend, and by its family the map holding it.
    pub(super) backend: AnyBackend,
    pub(super) refs: u32,
}

/// What the service maps hold, plus the bookkeeping to diff against it cheaply.
///
/// Both families in one: frontends and backends are keyed by their family-tagged forms, and
/// one id allocator of each kind serves both (ids are one space, svc-common's module docs).
///
/// Built from the maps with [`Programmed::from_snapshot`] (restart: adopt what is pinned) or
/// [`Programmed::default`] (empty maps), then advanced by each [`Plan::next`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    pub(super) frontends: BTreeMap<AnyFrontendKey, ProgrammedFrontend>,
    pub(super) backends: BTreeMap<u32, BackendEntry>,
    /// Backend tuple → the id slots should use for it (one id per tuple, shared by frontends).
    pub(super) backend_ids: HashMap<AnyBackend, u32>,
    /// Service → the frontend keys it owns, sorted, for [`plan_services`]. A sorted `Vec`:
    /// most Services own one to a few keys, and a one-key `BTreeSet` costs a whole node.
    pub(super) owners: BTreeMap<Arc<ObjectRef>, Vec<AnyFrontendKey>>,
    /// Slot entries no frontend counts (beyond a count, slot 0, or of an unknown frontend id):
    /// deleted by the next plan.
    pub(super) strays: BTreeMap<SlotKey, Slot>,
    /// Source ranges of no frontend id (of its family): deleted by the next plan.
    pub(super) range_strays: BTreeSet<AnySourceRange>,
    /// Backend ids found in both families' backend maps when adopting (no agent writes that):
    /// the IPv6 entry is deleted at the end of the next plan, once no slot can name it.
    pub(super) doubled_backends: BTreeSet<u32>,
    /// Backend ids whose refcount dropped to 0 (or that were adopted unreferenced): candidates
    /// for deletion at the end of the next plan.
    pub(super) unreferenced: BTreeSet<u32>,
    pub(super) frontend_id_alloc: IdAllocator,
    pub(super) backend_id_alloc: IdAllocator,
    /// Slot entries the frontends hold (their `Some` slots), kept as frontends come and go
    /// ([`Programmed::insert_frontend`], [`Programmed::remove_frontend`]) so that what the
    /// maps use costs no pass over every frontend ([`Programmed::held`]).
    held_slots: u64,
    /// Source-range entries the frontends hold, kept the same way (IPv4, IPv6).
    held_ranges: (u64, u64),
    /// IPv6 frontends among `frontends`, kept the same way.
    frontends6: u64,
    /// IPv6 backends among `backends`, kept as backends come and go
    /// ([`Programmed::insert_backend`], [`Programmed::remove_backend`]).
    backends6: u64,
}

impl Programmed {
    /// Adopts the contents of the maps (after a restart), so the first plan changes only what
    /// differs and traffic never stops.
    ///
    /// Tolerates anything a crash or an older agent may have left: slots beyond a frontend's
    /// count or of no frontend are scheduled for deletion; backends no slot names are scheduled
    /// for deletion; a slot naming a missing backend, a missing slot within the count, a
    /// frontend with id 0 or an id already used by another frontend are all rewritten by the
    /// next plan (if the frontend is still desired) or deleted (if not).
    pub fn from_snapshot(snapshot: &MapSnapshot) -> Self {
        let mut me = Self::default();
        // Ids are one space: an id in both backend maps (which no agent writes) is adopted in
        // the first family only; the other entry is deleted by the next plan.
        let mut both_families = BTreeSet::new();
        me.adopt_backends::<[u8; 4]>(snapshot, &mut both_families);
        me.adopt_backends::<svc_common::Addr6>(snapshot, &mut both_families);
        // Frontend id → number of slots it counts, for telling counted slots from strays.
        let mut counted: HashMap<u32, u32> = HashMap::new();
        let mut key_of: HashMap<u32, AnyFrontendKey> = HashMap::new();
        me.adopt_frontends::<[u8; 4]>(snapshot, &mut counted, &mut key_of);
        me.adopt_frontends::<svc_common::Addr6>(snapshot, &mut counted, &mut key_of);
        me.adopt_ranges::<[u8; 4]>(snapshot, &key_of);
        me.adopt_ranges::<svc_common::Addr6>(snapshot, &key_of);
        for (&key, &slot) in &snapshot.slots {
            let is_counted = counted
                .get(&key.frontend_id)
                .is_some_and(|&len| (1..=len).contains(&key.slot));
            if !is_counted {
                me.strays.insert(key, slot);
            }
        }
        me.unreferenced = me
            .backends
            .iter()
            .filter(|(_, e)| e.refs == 0)
            .map(|(&id, _)| id)
            .collect();
        me.frontend_id_alloc = IdAllocator::excluding(counted.keys().copied());
        me.backend_id_alloc = IdAllocator::excluding(
            me.backends
                .keys()
                .copied()
                .chain(both_families.iter().copied()),
        );
        me.doubled_backends = both_families;
        me
    }

    fn adopt_backends<A: Family>(&mut self, snapshot: &MapSnapshot, both: &mut BTreeSet<u32>) {
        for (&id, &backend) in A::snap_backends(snapshot) {
            let backend = A::any_backend(backend);
            if self.backends.contains_key(&id) {
                both.insert(id);
                continue;
            }
            self.insert_backend(id, backend);
            if id != 0 {
                // Duplicate tuples: the lowest id is canonical; the others lose their slots as
                // frontends are rewritten, then get deleted.
                self.backend_ids.entry(backend).or_insert(id);
            }
        }
    }

    fn adopt_frontends<A: Family>(
        &mut self,
        snapshot: &MapSnapshot,
        counted: &mut HashMap<u32, u32>,
        key_of: &mut HashMap<u32, AnyFrontendKey>,
    ) {
        for (&key, &value) in A::snap_frontends(snapshot) {
            let key = A::any_key(key);
            let id = if value.id != 0 && !counted.contains_key(&value.id) {
                value.id
            } else {
                0
            };
            let len = value.backend_count.min(MAX_BACKENDS_PER_FRONTEND);
            let mut slots = Vec::new();
            if id != 0 {
                counted.insert(id, len);
                key_of.insert(id, key);
                slots = (1..=len)
                    .map(|slot| {
                        snapshot
                            .slots
                            .get(&SlotKey {
                                frontend_id: id,
                                slot,
                            })
                            .map(|s| s.backend_id)
                    })
                    .collect();
                for backend_id in slots.iter().flatten() {
                    // A slot naming an id of the other family's map names nothing the
                    // datapath reads: like a missing backend, the next plan rewrites it.
                    if let Some(entry) = self
                        .backends
                        .get_mut(backend_id)
                        .filter(|e| family_of(&e.backend) == A::BITS)
                    {
                        entry.refs += 1;
                    }
                }
            }
            self.insert_frontend(
                key,
                ProgrammedFrontend {
                    id,
                    value,
                    slots,
                    owner: None,
                    source_ranges: Vec::new(),
                },
            );
        }
    }

    fn adopt_ranges<A: Family>(
        &mut self,
        snapshot: &MapSnapshot,
        key_of: &HashMap<u32, AnyFrontendKey>,
    ) {
        // BTreeSet order: each frontend's prefixes come sorted.
        for range in A::snap_ranges(snapshot) {
            let key = key_of
                .get(&range.frontend_id)
                .filter(|k| key_bits(k) == A::BITS);
            match key {
                Some(key) => {
                    self.frontends
                        .get_mut(key)
                        .expect("key_of names programmed frontends")
                        .source_ranges
                        .push((A::to_ip(range.addr).into(), range.len));
                    if A::BITS == 128 {
                        self.held_ranges.1 += 1;
                    } else {
                        self.held_ranges.0 += 1;
                    }
                }
                None => {
                    self.range_strays.insert(A::any_range(*range));
                }
            }
        }
    }

    /// What the maps contain if every op planned so far has been applied. After a plan there are
    /// no strays or unreferenced backends, so this is exactly the desired state's map image.
    pub fn to_snapshot(&self) -> MapSnapshot {
        let mut snapshot = MapSnapshot::default();
        for (&key, fe) in &self.frontends {
            match key {
                AnyFrontendKey::V4(k) => {
                    snapshot.frontends.insert(k, fe.value);
                }
                AnyFrontendKey::V6(k) => {
                    snapshot.frontends6.insert(k, fe.value);
                }
            }
            if fe.id == 0 {
                continue;
            }
            for (i, backend_id) in fe.slots.iter().enumerate() {
                if let Some(backend_id) = *backend_id {
                    let key = SlotKey {
                        frontend_id: fe.id,
                        slot: slot_number(i),
                    };
                    snapshot.slots.insert(key, Slot { backend_id });
                }
            }
            for &prefix in &fe.source_ranges {
                snapshot.insert_range(range_of(&key, fe.id, prefix));
            }
        }
        for range in &self.range_strays {
            snapshot.insert_range(*range);
        }
        snapshot
            .slots
            .extend(self.strays.iter().map(|(k, v)| (*k, *v)));
        for (&id, e) in &self.backends {
            match e.backend {
                AnyBackend::V4(b) => {
                    snapshot.backends.insert(id, b);
                }
                AnyBackend::V6(b) => {
                    snapshot.backends6.insert(id, b);
                }
            }
        }
        snapshot
    }

    /// The programmed frontends of both families.
    pub fn frontends(&self) -> &BTreeMap<AnyFrontendKey, ProgrammedFrontend> {
        &self.frontends
    }

    /// The programmed frontend at `key` (of either family).
    pub fn frontend(&self, key: impl Into<AnyFrontendKey>) -> Option<&ProgrammedFrontend> {
        self.frontends.get(&key.into())
    }

    /// Slot and source-range entries (IPv4, IPv6) the programmed frontends hold: what a pass
    /// summing every frontend's `Some` slots and prefixes would find, in O(1).
    pub fn held(&self) -> (u64, (u64, u64)) {
        (self.held_slots, self.held_ranges)
    }

    /// Programmed frontends (IPv4, IPv6), in O(1).
    pub fn frontend_counts(&self) -> (u64, u64) {
        let all = self.frontends.len() as u64;
        (all - self.frontends6, self.frontends6)
    }

    /// Backend entries (IPv4, IPv6), including any awaiting deletion, in O(1).
    pub fn backend_counts(&self) -> (u64, u64) {
        (self.backends.len() as u64 - self.backends6, self.backends6)
    }

    /// Adds backend `id` (unreferenced), keeping [`Programmed::backend_counts`] right.
    fn insert_backend(&mut self, id: u32, backend: AnyBackend) {
        if matches!(backend, AnyBackend::V6(_)) {
            self.backends6 += 1;
        }
        if let Some(old) = self.backends.insert(id, BackendEntry { backend, refs: 0 }) {
            if matches!(old.backend, AnyBackend::V6(_)) {
                self.backends6 -= 1;
            }
        }
    }

    /// Removes backend `id`, keeping [`Programmed::backend_counts`] right.
    pub(super) fn remove_backend(&mut self, id: u32) -> Option<BackendEntry> {
        let entry = self.backends.remove(&id)?;
        if matches!(entry.backend, AnyBackend::V6(_)) {
            self.backends6 -= 1;
        }
        Some(entry)
    }

    /// Inserts (or replaces) a frontend, keeping [`Programmed::held`] right.
    pub(super) fn insert_frontend(&mut self, key: AnyFrontendKey, fe: ProgrammedFrontend) {
        self.held_slots += held_slots(&fe);
        let ranges = fe.source_ranges.len() as u64;
        if key_bits(&key) == 128 {
            self.held_ranges.1 += ranges;
            self.frontends6 += 1;
        } else {
            self.held_ranges.0 += ranges;
        }
        if let Some(old) = self.frontends.insert(key, fe) {
            self.forget(&key, &old);
        }
    }

    /// Removes a frontend, keeping [`Programmed::held`] right.
    pub(super) fn remove_frontend(&mut self, key: &AnyFrontendKey) -> Option<ProgrammedFrontend> {
        let fe = self.frontends.remove(key)?;
        self.forget(key, &fe);
        Some(fe)
    }

    fn forget(&mut self, key: &AnyFrontendKey, fe: &ProgrammedFrontend) {
        self.held_slots -= held_slots(fe);
        let ranges = fe.source_ranges.len() as u64;
        if key_bits(key) == 128 {
            self.held_ranges.1 -= ranges;
            self.frontends6 -= 1;
        } else {
            self.held_ranges.0 -= ranges;
        }
    }

    /// The id slots use for `backend` (a `Backend`, `Backend6` or [`AnyBackend`]), if it is
    /// programmed.
    pub fn backend_id<B: Copy + Into<AnyBackend>>(&self, backend: &B) -> Option<u32> {
        self.backend_ids.get(&(*backend).into()).copied()
    }

    /// Number of backend entries (including any awaiting deletion).
    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    /// The frontends programmed for `service`.
    pub fn frontends_of(&self, service: &ObjectRef) -> impl Iterator<Item = &AnyFrontendKey> {
        self.owners.get(service).into_iter().flatten()
    }

    /// Moves `key` from `old`'s frontends to `new`'s in the owner index, and returns the shared
    /// reference of `new` for the frontend to keep.
    pub(super) fn set_owner(
        &mut self,
        key: AnyFrontendKey,
        old: Option<&ObjectRef>,
        new: Option<&ObjectRef>,
    ) -> Option<Arc<ObjectRef>> {
        if let Some(old) = old.filter(|old| Some(*old) != new) {
            if let Some(keys) = self.owners.get_mut(old) {
                if let Ok(i) = keys.binary_search(&key) {
                    keys.remove(i);
                }
                if keys.is_empty() {
                    self.owners.remove(old);
                }
            }
        }
        let new = new?;
        let shared = match self.owners.get_key_value(new) {
            Some((shared, _)) => shared.clone(),
            None => Arc::new(new.clone()),
        };
        let keys = self.owners.entry(shared.clone()).or_default();
        if let Err(i) = keys.binary_search(&key) {
            keys.insert(i, key);
        }
        Some(shared)
    }

    pub(super) fn unref(&mut self, backend_id: u32) {
        if let Some(entry) = self.backends.get_mut(&backend_id) {
            entry.refs = entry.refs.saturating_sub(1);
            if entry.refs == 0 {
                self.unreferenced.insert(backend_id);
            }
        }
    }

    /// The id for `backend`, allocating it (and queueing its `PutBackend`) if new.
    pub(super) fn backend_id_or_insert(
        &mut self,
        backend: AnyBackend,
        puts: &mut Vec<MapOp>,
    ) -> u32 {
        if let Some(&id) = self.backend_ids.get(&backend) {
            return id;
        }
        let id = self.backend_id_alloc.alloc();
        self.insert_backend(id, backend);
        self.backend_ids.insert(backend, id);
        puts.push(match backend {
            AnyBackend::V4(backend) => MapOp::PutBackend { id, backend },
            AnyBackend::V6(backend) => MapOp::PutBackend6 { id, backend },
        });
        id
    }
}

/// The source-range entry of prefix `(addr, len)` of frontend `id` at `key` (the key's
/// family; a prefix of the other family, which no plan makes, falls back to the unspecified
/// address of the key's family).
pub(super) fn range_of(
    key: &AnyFrontendKey,
    frontend_id: u32,
    (addr, len): Prefix,
) -> AnySourceRange {
    match key {
        AnyFrontendKey::V4(_) => AnySourceRange::V4(SourceRangeOf {
            frontend_id,
            addr: match addr {
                IpAddr::V4(a) => a.octets(),
                IpAddr::V6(_) => [0; 4],
            },
            len,
        }),
        AnyFrontendKey::V6(_) => AnySourceRange::V6(SourceRangeOf {
            frontend_id,
            addr: match addr {
                IpAddr::V6(a) => a.into(),
                IpAddr::V4(a) => a.to_ipv6_mapped().into(),
            },
            len,
        }),
    }
}

/// The address width of a backend's family.
fn family_of(b: &AnyBackend) -> u32 {
    match b {
        AnyBackend::V4(_) => 32,
        AnyBackend::V6(_) => 128,
    }
}

/// The address width of a frontend key's family.
fn key_bits(k: &AnyFrontendKey) -> u32 {
    match k {
        AnyFrontendKey::V4(_) => 32,
        AnyFrontendKey::V6(_) => 128,
    }
}

fn held_slots(fe: &ProgrammedFrontend) -> u64 {
    fe.slots.iter().flatten().count() as u64
}

pub(super) fn slot_number(index: usize) -> u32 {
    // Slot vectors never exceed MAX_BACKENDS_PER_FRONTEND entries, so this cannot truncate.
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}
