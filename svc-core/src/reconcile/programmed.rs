//! [`Programmed`]: the mirror of the three service maps with the bookkeeping the maps do not keep
//! (owner Service per frontend, one id per backend tuple, how many slots name each backend, what
//! the next plan must clean up), how it adopts pinned maps after a restart
//! ([`Programmed::from_snapshot`], tolerant of anything a crash left) and the map image it stands
//! for ([`Programmed::to_snapshot`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use svc_common::{Backend, Frontend, FrontendKey, Slot, SlotKey, MAX_BACKENDS_PER_FRONTEND};

use crate::dataplane::{MapOp, MapSnapshot, SourceRange};
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
    /// Its `SVC_SOURCE_RANGES` prefixes, sorted.
    pub source_ranges: Vec<Prefix>,
}

/// A backend entry and how many frontend slots name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct BackendEntry {
    pub(super) backend: Backend,
    pub(super) refs: u32,
}

/// What the service maps hold, plus the bookkeeping to diff against it cheaply.
///
/// Built from the maps with [`Programmed::from_snapshot`] (restart: adopt what is pinned) or
/// [`Programmed::default`] (empty maps), then advanced by each [`Plan::next`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    pub(super) frontends: BTreeMap<FrontendKey, ProgrammedFrontend>,
    pub(super) backends: BTreeMap<u32, BackendEntry>,
    /// Backend tuple → the id slots should use for it (one id per tuple, shared by frontends).
    pub(super) backend_ids: HashMap<Backend, u32>,
    /// Service → the frontend keys it owns, sorted, for [`plan_services`]. A sorted `Vec`:
    /// most Services own one to a few keys, and a one-key `BTreeSet` costs a whole node.
    pub(super) owners: BTreeMap<Arc<ObjectRef>, Vec<FrontendKey>>,
    /// Slot entries no frontend counts (beyond a count, slot 0, or of an unknown frontend id):
    /// deleted by the next plan.
    pub(super) strays: BTreeMap<SlotKey, Slot>,
    /// Source ranges of no frontend id: deleted by the next plan.
    pub(super) range_strays: BTreeSet<SourceRange>,
    /// Backend ids whose refcount dropped to 0 (or that were adopted unreferenced): candidates
    /// for deletion at the end of the next plan.
    pub(super) unreferenced: BTreeSet<u32>,
    pub(super) frontend_id_alloc: IdAllocator,
    pub(super) backend_id_alloc: IdAllocator,
    /// Slot entries the frontends hold (their `Some` slots), kept as frontends come and go
    /// ([`Programmed::insert_frontend`], [`Programmed::remove_frontend`]) so that what the
    /// maps use costs no pass over every frontend ([`Programmed::held`]).
    held_slots: u64,
    /// Source-range entries the frontends hold, kept the same way.
    held_ranges: u64,
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
        for (&id, &backend) in &snapshot.backends {
            me.backends.insert(id, BackendEntry { backend, refs: 0 });
            if id != 0 {
                // Duplicate tuples: the lowest id is canonical; the others lose their slots as
                // frontends are rewritten, then get deleted.
                me.backend_ids.entry(backend).or_insert(id);
            }
        }
        // Frontend id → number of slots it counts, for telling counted slots from strays.
        let mut counted: HashMap<u32, u32> = HashMap::new();
        let mut key_of: HashMap<u32, FrontendKey> = HashMap::new();
        for (&key, &value) in &snapshot.frontends {
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
                    if let Some(entry) = me.backends.get_mut(backend_id) {
                        entry.refs += 1;
                    }
                }
            }
            me.insert_frontend(
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
        // BTreeSet order: each frontend's prefixes come sorted.
        for range in &snapshot.source_ranges {
            match key_of.get(&range.frontend_id) {
                Some(key) => {
                    me.frontends
                        .get_mut(key)
                        .expect("key_of names programmed frontends")
                        .source_ranges
                        .push((range.addr, range.len));
                    me.held_ranges += 1;
                }
                None => {
                    me.range_strays.insert(*range);
                }
            }
        }
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
        me.backend_id_alloc = IdAllocator::excluding(me.backends.keys().copied());
        me
    }

    /// What the maps contain if every op planned so far has been applied. After a plan there are
    /// no strays or unreferenced backends, so this is exactly the desired state's map image.
    pub fn to_snapshot(&self) -> MapSnapshot {
        let mut snapshot = MapSnapshot::default();
        for (&key, fe) in &self.frontends {
            snapshot.frontends.insert(key, fe.value);
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
        }
        for (_, fe) in self.frontends.iter().filter(|(_, fe)| fe.id != 0) {
            snapshot
                .source_ranges
                .extend(fe.source_ranges.iter().map(|&(addr, len)| SourceRange {
                    frontend_id: fe.id,
                    addr,
                    len,
                }));
        }
        snapshot
            .source_ranges
            .extend(self.range_strays.iter().copied());
        snapshot
            .slots
            .extend(self.strays.iter().map(|(k, v)| (*k, *v)));
        snapshot
            .backends
            .extend(self.backends.iter().map(|(&id, e)| (id, e.backend)));
        snapshot
    }

    /// The programmed frontends.
    pub fn frontends(&self) -> &BTreeMap<FrontendKey, ProgrammedFrontend> {
        &self.frontends
    }

    /// Slot and source-range entries the programmed frontends hold: what a pass summing
    /// every frontend's `Some` slots and prefixes would find, in O(1).
    pub fn held(&self) -> (u64, u64) {
        (self.held_slots, self.held_ranges)
    }

    /// Inserts (or replaces) a frontend, keeping [`Programmed::held`] right.
    pub(super) fn insert_frontend(&mut self, key: FrontendKey, fe: ProgrammedFrontend) {
        self.held_slots += held_slots(&fe);
        self.held_ranges += fe.source_ranges.len() as u64;
        if let Some(old) = self.frontends.insert(key, fe) {
            self.forget(&old);
        }
    }

    /// Removes a frontend, keeping [`Programmed::held`] right.
    pub(super) fn remove_frontend(&mut self, key: &FrontendKey) -> Option<ProgrammedFrontend> {
        let fe = self.frontends.remove(key)?;
        self.forget(&fe);
        Some(fe)
    }

    fn forget(&mut self, fe: &ProgrammedFrontend) {
        self.held_slots -= held_slots(fe);
        self.held_ranges -= fe.source_ranges.len() as u64;
    }

    /// The id slots use for `backend`, if it is programmed.
    pub fn backend_id(&self, backend: &Backend) -> Option<u32> {
        self.backend_ids.get(backend).copied()
    }

    /// Number of backend entries (including any awaiting deletion).
    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    /// The frontends programmed for `service`.
    pub fn frontends_of(&self, service: &ObjectRef) -> impl Iterator<Item = &FrontendKey> {
        self.owners.get(service).into_iter().flatten()
    }

    /// Moves `key` from `old`'s frontends to `new`'s in the owner index, and returns the shared
    /// reference of `new` for the frontend to keep.
    pub(super) fn set_owner(
        &mut self,
        key: FrontendKey,
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
    pub(super) fn backend_id_or_insert(&mut self, backend: Backend, puts: &mut Vec<MapOp>) -> u32 {
        if let Some(&id) = self.backend_ids.get(&backend) {
            return id;
        }
        let id = self.backend_id_alloc.alloc();
        self.backends.insert(id, BackendEntry { backend, refs: 0 });
        self.backend_ids.insert(backend, id);
        puts.push(MapOp::PutBackend { id, backend });
        id
    }
}

fn held_slots(fe: &ProgrammedFrontend) -> u64 {
    fe.slots.iter().flatten().count() as u64
}

pub(super) fn slot_number(index: usize) -> u32 {
    // Slot vectors never exceed MAX_BACKENDS_PER_FRONTEND entries, so this cannot truncate.
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}
