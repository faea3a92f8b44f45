//! Pure: what the maps hold + what should be served → the ordered map operations between them.
//!
//! [`Programmed`] mirrors the three service maps with the bookkeeping the maps themselves do not
//! keep: which Service owns each frontend, which id each backend tuple has, and how many slots
//! name each backend. [`plan`] diffs it against a [`Desired`] and returns the [`MapOp`]s plus the
//! [`Programmed`] they lead to. Ops come out in the svc-common update order, so a packet arriving
//! between any two of them sees either the old or the new service, never a half-built one:
//!
//! 0. delete stray slots (beyond a count, or of no frontend): no packet can reach them;
//! 1. per removed frontend: `DeleteFrontend`, then its `DeleteSlot`s and `DeleteSourceRange`s;
//!    then `DeleteBackend` for backends only those frontends named and no wanted frontend
//!    names. Removals come first so that a plan frees entries before it puts any: when the maps
//!    are full, removals still apply (see [`crate::budget`]). Exception: a scoped entry whose
//!    `SCOPE_ANY` sibling stays goes in step 4;
//! 2. `PutBackend` for new backends;
//! 3. per new or changed frontend: `PutSlot` for every slot whose content changes, then
//!    `PutFrontend` (only if the value changed), then `DeleteSlot` past the new count;
//! 4. `DeleteFrontend` etc. of the scoped entries held back in step 1;
//! 5. `DeleteBackend` for backends no slot names any more.
//!
//! A frontend's `loadBalancerSourceRanges` prefixes go with its slots: new ones (`PutSourceRange`)
//! before its `PutFrontend`, which may set `FRONTEND_F_SOURCE_RANGES`, and those it no longer
//! has (`DeleteSourceRange`) after it, so a changing list is briefly the union of the old and
//! the new one, never empty under the flag. Prefixes of no frontend id are deleted in step 0.
//!
//! Ids freed in a plan (removed frontends, deleted backends) are not reused within the same
//! plan: until step 4/5 runs, the old owner of the id may still be live in the maps.
//!
//! If a [`crate::dataplane::Dataplane`] fails midway, the maps are somewhere between `current`
//! and `next`, still consistent (every prefix of a plan keeps the invariant). Recover by
//! re-reading them: `Programmed::from_snapshot(&dataplane.snapshot()?)` and planning again.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use svc_common::{
    Backend, Frontend, FrontendKey, Slot, SlotKey, MAX_BACKENDS_PER_FRONTEND, SCOPE_ANY,
};

use crate::dataplane::{MapOp, MapSnapshot, SourceRange};
use crate::model::{Desired, DesiredFrontend, ObjectRef};

/// A source prefix of a frontend: network address (network order) and length.
pub type Prefix = ([u8; 4], u8);

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
    /// owners) and not planned since.
    pub owner: Option<ObjectRef>,
    /// Its `SVC_SOURCE_RANGES` prefixes, sorted.
    pub source_ranges: Vec<Prefix>,
}

/// A backend entry and how many frontend slots name it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct BackendEntry {
    backend: Backend,
    refs: u32,
}

/// What the service maps hold, plus the bookkeeping to diff against it cheaply.
///
/// Built from the maps with [`Programmed::from_snapshot`] (restart: adopt what is pinned) or
/// [`Programmed::default`] (empty maps), then advanced by each [`Plan::next`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    frontends: BTreeMap<FrontendKey, ProgrammedFrontend>,
    backends: BTreeMap<u32, BackendEntry>,
    /// Backend tuple → the id slots should use for it (one id per tuple, shared by frontends).
    backend_ids: HashMap<Backend, u32>,
    /// Service → the frontend keys it owns, for [`plan_services`].
    owners: BTreeMap<ObjectRef, BTreeSet<FrontendKey>>,
    /// Slot entries no frontend counts (beyond a count, slot 0, or of an unknown frontend id):
    /// deleted by the next plan.
    strays: BTreeMap<SlotKey, Slot>,
    /// Source ranges of no frontend id: deleted by the next plan.
    range_strays: BTreeSet<SourceRange>,
    /// Backend ids whose refcount dropped to 0 (or that were adopted unreferenced): candidates
    /// for deletion at the end of the next plan.
    unreferenced: BTreeSet<u32>,
    frontend_id_alloc: IdAllocator,
    backend_id_alloc: IdAllocator,
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
            me.frontends.insert(
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
                Some(key) => me
                    .frontends
                    .get_mut(key)
                    .expect("key_of names programmed frontends")
                    .source_ranges
                    .push((range.addr, range.len)),
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

    fn set_owner(&mut self, key: FrontendKey, old: Option<&ObjectRef>, new: Option<&ObjectRef>) {
        if old == new {
            return;
        }
        if let Some(old) = old {
            if let Some(keys) = self.owners.get_mut(old) {
                keys.remove(&key);
                if keys.is_empty() {
                    self.owners.remove(old);
                }
            }
        }
        if let Some(new) = new {
            self.owners.entry(new.clone()).or_default().insert(key);
        }
    }

    fn unref(&mut self, backend_id: u32) {
        if let Some(entry) = self.backends.get_mut(&backend_id) {
            entry.refs = entry.refs.saturating_sub(1);
            if entry.refs == 0 {
                self.unreferenced.insert(backend_id);
            }
        }
    }

    /// The id for `backend`, allocating it (and queueing its `PutBackend`) if new.
    fn backend_id_or_insert(&mut self, backend: Backend, puts: &mut Vec<MapOp>) -> u32 {
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

fn slot_number(index: usize) -> u32 {
    // Slot vectors never exceed MAX_BACKENDS_PER_FRONTEND entries, so this cannot truncate.
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

/// The result of planning: ops to apply in order, and the state they lead to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Map writes, in the update order (see the module docs). Empty when nothing differs.
    pub ops: Vec<MapOp>,
    /// What the maps hold once every op is applied; the `current` of the next plan.
    pub next: Programmed,
    /// Backends the plan takes away from frontends, and frontends it deletes: the flow state
    /// (UDP conntrack, session affinity) to clear once `ops` are applied.
    pub removals: Removals,
}

/// A backend a frontend stops balancing to (or every backend of a deleted frontend).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemovedBackend {
    /// The frontend's id, as its conntrack and affinity entries record it.
    pub frontend_id: u32,
    /// The frontend's protocol.
    pub proto: u8,
    /// The backend id its slots named.
    pub backend_id: u32,
}

/// What a plan takes away, for the flushes that follow it (`crate::conntrack`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removals {
    /// (frontend, backend) pairs that no longer exist, in plan order.
    pub backends: Vec<RemovedBackend>,
    /// Ids of deleted frontends (free for reuse by later plans).
    pub frontend_ids: Vec<u32>,
}

impl Removals {
    /// Nothing was removed.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty() && self.frontend_ids.is_empty()
    }

    /// The removed (frontend id, backend id) pairs of UDP frontends: whose conntrack entries
    /// are deleted so the next datagram is balanced afresh.
    pub fn udp_pairs(&self) -> Vec<(u32, u32)> {
        self.backends
            .iter()
            .filter(|r| r.proto == svc_common::PROTO_UDP)
            .map(|r| (r.frontend_id, r.backend_id))
            .collect()
    }
}

/// Backend ids named by `old` slots that `new` slots no longer name, each once, in slot order.
pub fn removed_backend_ids(old: &[Option<u32>], new: &[u32]) -> Vec<u32> {
    let kept: HashSet<u32> = new.iter().copied().collect();
    let mut seen = HashSet::new();
    old.iter()
        .flatten()
        .copied()
        .filter(|id| !kept.contains(id) && seen.insert(*id))
        .collect()
}

/// Plans the ops that turn `current` into `desired`, for every frontend.
///
/// O(F log F + B log B) over the frontends and backends involved (plus a clone of `current`);
/// [`plan_in_place`] avoids the clone. When `current` already matches `desired`, `ops` is empty:
/// a restart that adopts the pinned maps writes nothing.
pub fn plan(current: &Programmed, desired: &Desired) -> Plan {
    let mut next = current.clone();
    let (ops, removals) = plan_in_place(&mut next, desired);
    Plan {
        ops,
        next,
        removals,
    }
}

/// [`plan`] without the clone: advances `state` and returns the ops and removals. If applying
/// the ops fails, `state` no longer describes the maps; re-adopt them (see the module docs).
pub fn plan_in_place(state: &mut Programmed, desired: &Desired) -> (Vec<MapOp>, Removals) {
    plan_in_place_holding(state, desired, &BTreeSet::new())
}

/// [`plan_in_place`], except that the programmed frontends of the Services in `held` stay as
/// they are (their Service's change was refused, see [`crate::budget`]). `desired` should hold
/// no frontend of theirs.
pub fn plan_in_place_holding(
    state: &mut Programmed,
    desired: &Desired,
    held: &BTreeSet<ObjectRef>,
) -> (Vec<MapOp>, Removals) {
    let removed: Vec<FrontendKey> = state
        .frontends
        .iter()
        .filter(|(k, fe)| {
            !desired.frontends.contains_key(k)
                && !fe.owner.as_ref().is_some_and(|o| held.contains(o))
        })
        .map(|(k, _)| *k)
        .collect();
    let wanted: Vec<_> = desired.frontends.iter().collect();
    plan_core(state, &wanted, &removed)
}

/// Plans only the frontends of the Services in `changed`: their desired frontends from
/// `desired` (which may be a full [`Desired`] or one from [`crate::model::desired_for`]), and
/// the removal of frontends they own in `current` but no longer want.
///
/// Frontends adopted from the maps have no owner yet and are never touched here: run one full
/// [`plan`] after adoption. Strays and unreferenced backends are still cleaned up.
pub fn plan_services(
    current: &Programmed,
    desired: &Desired,
    changed: &BTreeSet<ObjectRef>,
) -> Plan {
    let mut next = current.clone();
    let (ops, removals) = plan_services_in_place(&mut next, desired, changed);
    Plan {
        ops,
        next,
        removals,
    }
}

/// [`plan_services`] without the clone (see [`plan_in_place`]).
pub fn plan_services_in_place(
    state: &mut Programmed,
    desired: &Desired,
    changed: &BTreeSet<ObjectRef>,
) -> (Vec<MapOp>, Removals) {
    // A frontend another Service owns stays with it: `desired` was decided seeing only the
    // Services in `changed`, so it cannot settle a claim on a key held by one outside them
    // (the model gives a contested key to the Service whose name sorts first; the engine
    // widens `changed` to the holders of contested keys, see `crate::run`).
    let wanted: Vec<_> = desired
        .frontends
        .iter()
        .filter(|(k, f)| {
            changed.contains(&f.service)
                && state
                    .frontends
                    .get(k)
                    .and_then(|fe| fe.owner.as_ref())
                    .is_none_or(|owner| changed.contains(owner))
        })
        .collect();
    let wanted_keys: HashSet<&FrontendKey> = wanted.iter().map(|(k, _)| *k).collect();
    let removed: Vec<FrontendKey> = changed
        .iter()
        .filter_map(|svc| state.owners.get(svc))
        .flatten()
        .filter(|k| !wanted_keys.contains(k))
        .copied()
        .collect();
    plan_core(state, &wanted, &removed)
}

/// The diff itself; see the module docs for the phases.
fn plan_core(
    state: &mut Programmed,
    wanted: &[(&FrontendKey, &DesiredFrontend)],
    removed: &[FrontendKey],
) -> (Vec<MapOp>, Removals) {
    let mut removals = Removals::default();
    // Phase 0: strays are unreachable (no count covers them), so deleting them first is safe,
    // and it must happen before a new frontend could take their id or their backend goes.
    let mut ops: Vec<MapOp> = std::mem::take(&mut state.strays)
        .into_keys()
        .map(|key| MapOp::DeleteSlot { key })
        .chain(
            std::mem::take(&mut state.range_strays)
                .into_iter()
                .map(|range| MapOp::DeleteSourceRange { range }),
        )
        .collect();
    // Removed frontends first (phase 1 of the module docs): deleting them before anything is
    // put frees their entries when the maps are full. A scoped entry whose SCOPE_ANY sibling
    // stays is the exception: it goes last, after the sibling is rewritten without
    // FRONTEND_F_EXTERNAL_SCOPE (an uplink hook that sees the flag drops what has no scoped
    // entry).
    let wanted_keys: HashSet<&FrontendKey> = wanted.iter().map(|(k, _)| *k).collect();
    let mut early_removal_ops = Vec::new();
    let mut removal_ops = Vec::new();
    let mut freed_frontend_ids = Vec::new();
    // Backends the held-back scoped entries' slots name: live in the maps until step 4.
    let mut named_until_late: HashSet<u32> = HashSet::new();
    for key in removed {
        let Some(fe) = state.frontends.remove(key) else {
            continue;
        };
        let sibling_stays = key.scope != SCOPE_ANY
            && wanted_keys.contains(&FrontendKey {
                scope: SCOPE_ANY,
                ..*key
            });
        let out = if sibling_stays {
            named_until_late.extend(fe.slots.iter().flatten());
            &mut removal_ops
        } else {
            &mut early_removal_ops
        };
        out.push(MapOp::DeleteFrontend { key: *key });
        if fe.id != 0 {
            removals.frontend_ids.push(fe.id);
            removals
                .backends
                .extend(
                    removed_backend_ids(&fe.slots, &[])
                        .into_iter()
                        .map(|backend_id| RemovedBackend {
                            frontend_id: fe.id,
                            proto: key.proto,
                            backend_id,
                        }),
                );
            for (i, slot) in fe.slots.iter().enumerate() {
                if let Some(backend_id) = *slot {
                    let key = SlotKey {
                        frontend_id: fe.id,
                        slot: slot_number(i),
                    };
                    out.push(MapOp::DeleteSlot { key });
                    state.unref(backend_id);
                }
            }
            out.extend(
                fe.source_ranges
                    .iter()
                    .map(|&(addr, len)| MapOp::DeleteSourceRange {
                        range: SourceRange {
                            frontend_id: fe.id,
                            addr,
                            len,
                        },
                    }),
            );
            freed_frontend_ids.push(fe.id);
        }
        state.set_owner(*key, fe.owner.as_ref(), None);
    }
    // Backends only removed frontends named, and no wanted frontend names again, can go now
    // too (phase 1), unless a held-back scoped entry still names them; the rest of the
    // unreferenced ones go last (phase 5).
    let mut early_backend_deletes = Vec::new();
    if state
        .unreferenced
        .iter()
        .any(|id| state.backends.get(id).is_some_and(|e| e.refs == 0))
    {
        let wanted_backends: HashSet<&Backend> =
            wanted.iter().flat_map(|(_, f)| f.backends.iter()).collect();
        let early: Vec<u32> = state
            .unreferenced
            .iter()
            .copied()
            .filter(|id| {
                !named_until_late.contains(id)
                    && state
                        .backends
                        .get(id)
                        .is_some_and(|e| e.refs == 0 && !wanted_backends.contains(&e.backend))
            })
            .collect();
        for id in early {
            state.unreferenced.remove(&id);
            delete_backend(state, id, &mut early_backend_deletes);
        }
    }
    // Their ids are released at the end, with the others: ids are not reused within a plan.
    let early_freed: Vec<u32> = early_backend_deletes
        .iter()
        .filter_map(|op| match op {
            MapOp::DeleteBackend { id } => Some(*id),
            _ => None,
        })
        .collect();

    let mut backend_puts = Vec::new();
    let mut frontend_ops = Vec::new();

    // Scoped entries (SCOPE_EXTERNAL) before the SCOPE_ANY ones: an uplink hook that finds
    // FRONTEND_F_EXTERNAL_SCOPE on the SCOPE_ANY entry looks the scoped one up next and drops
    // the packet if it is missing, so it must exist before the flag is written. (Removal: a
    // scoped entry that goes while its SCOPE_ANY entry stays is removed after that entry is
    // rewritten without the flag, see the removal loop above.)
    let scoped_first = wanted
        .iter()
        .filter(|(k, _)| k.scope != SCOPE_ANY)
        .chain(wanted.iter().filter(|(k, _)| k.scope == SCOPE_ANY));
    for &(&key, want) in scoped_first {
        let mut ids: Vec<u32> = Vec::with_capacity(want.backends.len());
        let sorted = want.backends.windows(2).all(|w| w[0] < w[1]);
        let mut backends = want.backends.clone();
        if !sorted {
            backends.sort_unstable();
            backends.dedup();
        }
        backends.truncate(MAX_BACKENDS_PER_FRONTEND as usize);
        for backend in backends {
            ids.push(state.backend_id_or_insert(backend, &mut backend_puts));
        }

        let old = state.frontends.remove(&key);
        let (id, old_slots, old_value, old_owner, old_ranges) = match old {
            Some(fe) if fe.id != 0 => (fe.id, fe.slots, Some(fe.value), fe.owner, fe.source_ranges),
            // A conflicting adopted id: its slots belong to whoever owns the id.
            Some(fe) => (
                state.frontend_id_alloc.alloc(),
                Vec::new(),
                Some(fe.value),
                fe.owner,
                Vec::new(),
            ),
            None => (
                state.frontend_id_alloc.alloc(),
                Vec::new(),
                None,
                None,
                Vec::new(),
            ),
        };
        let mut new_ranges: Vec<Prefix> = want
            .source_ranges
            .iter()
            .map(|c| (c.network().octets(), c.prefix_len()))
            .collect();
        new_ranges.sort_unstable();
        new_ranges.dedup();
        let range_op = |&(addr, len): &Prefix| SourceRange {
            frontend_id: id,
            addr,
            len,
        };
        frontend_ops.extend(
            new_ranges
                .iter()
                .filter(|r| old_ranges.binary_search(r).is_err())
                .map(|r| MapOp::PutSourceRange { range: range_op(r) }),
        );
        let new_slots = assign_slots(&old_slots, &ids);
        removals
            .backends
            .extend(
                removed_backend_ids(&old_slots, &new_slots)
                    .into_iter()
                    .map(|backend_id| RemovedBackend {
                        frontend_id: id,
                        proto: key.proto,
                        backend_id,
                    }),
            );
        for (i, &backend_id) in new_slots.iter().enumerate() {
            if old_slots.get(i) != Some(&Some(backend_id)) {
                let key = SlotKey {
                    frontend_id: id,
                    slot: slot_number(i),
                };
                frontend_ops.push(MapOp::PutSlot {
                    key,
                    slot: Slot { backend_id },
                });
            }
        }
        let value = Frontend {
            id,
            backend_count: u32::try_from(new_slots.len()).unwrap_or(MAX_BACKENDS_PER_FRONTEND),
            flags: want.flags,
            affinity_timeout_s: want.affinity_timeout_s,
        };
        if old_value != Some(value) {
            frontend_ops.push(MapOp::PutFrontend { key, value });
        }
        for (i, slot) in old_slots.iter().enumerate().skip(new_slots.len()) {
            if slot.is_some() {
                let key = SlotKey {
                    frontend_id: id,
                    slot: slot_number(i),
                };
                frontend_ops.push(MapOp::DeleteSlot { key });
            }
        }
        frontend_ops.extend(
            old_ranges
                .iter()
                .filter(|r| new_ranges.binary_search(r).is_err())
                .map(|r| MapOp::DeleteSourceRange { range: range_op(r) }),
        );
        // Refcounts: take the new references before dropping the old, so a backend moving
        // between slots never looks unreferenced.
        for backend_id in &new_slots {
            if let Some(entry) = state.backends.get_mut(backend_id) {
                entry.refs += 1;
            }
        }
        for backend_id in old_slots.iter().flatten() {
            state.unref(*backend_id);
        }
        state.set_owner(key, old_owner.as_ref(), Some(&want.service));
        let slots = new_slots.into_iter().map(Some).collect();
        let fe = ProgrammedFrontend {
            id,
            value,
            slots,
            owner: Some(want.service.clone()),
            source_ranges: new_ranges,
        };
        state.frontends.insert(key, fe);
    }

    // Only now: a new frontend of this plan must not reuse an id whose old frontend was live
    // until its DeleteFrontend.
    for id in freed_frontend_ids {
        state.frontend_id_alloc.release(id);
    }

    let mut backend_deletes = Vec::new();
    for id in std::mem::take(&mut state.unreferenced) {
        if state.backends.get(&id).is_some_and(|e| e.refs == 0) {
            delete_backend(state, id, &mut backend_deletes);
            if id != 0 {
                state.backend_id_alloc.release(id);
            }
        }
    }
    for id in early_freed {
        if id != 0 {
            state.backend_id_alloc.release(id);
        }
    }

    ops.reserve(
        early_removal_ops.len()
            + early_backend_deletes.len()
            + backend_puts.len()
            + frontend_ops.len()
            + removal_ops.len()
            + backend_deletes.len(),
    );
    ops.extend(early_removal_ops);
    ops.extend(early_backend_deletes);
    ops.extend(backend_puts);
    ops.extend(frontend_ops);
    ops.extend(removal_ops);
    ops.extend(backend_deletes);
    (ops, removals)
}

/// Forgets backend `id` and queues its `DeleteBackend`; the caller releases the id once no
/// later op of the plan can allocate it.
fn delete_backend(state: &mut Programmed, id: u32, ops: &mut Vec<MapOp>) {
    if let Some(entry) = state.backends.remove(&id) {
        if state.backend_ids.get(&entry.backend) == Some(&id) {
            state.backend_ids.remove(&entry.backend);
        }
    }
    ops.push(MapOp::DeleteBackend { id });
}

/// New slot contents for a frontend whose slots held `old` and should hold the backend ids
/// `wanted` (distinct). A backend that stays keeps its slot if that slot still exists; the
/// others fill the remaining slots in `wanted` order. Fewer writes means fewer moments where
/// a slot points somewhere new, and it keeps `ops` empty when nothing changed.
fn assign_slots(old: &[Option<u32>], wanted: &[u32]) -> Vec<u32> {
    let n = wanted.len();
    let want: HashSet<u32> = wanted.iter().copied().collect();
    let mut placed: HashSet<u32> = HashSet::with_capacity(n);
    let mut new = vec![0u32; n];
    for (i, slot) in old.iter().take(n).enumerate() {
        if let Some(id) = *slot {
            if want.contains(&id) && placed.insert(id) {
                new[i] = id;
            }
        }
    }
    let mut rest = wanted.iter().copied().filter(|id| !placed.contains(id));
    for slot in new.iter_mut().filter(|s| **s == 0) {
        // `rest` has exactly as many ids as there are unfilled slots.
        *slot = rest.next().unwrap_or(0);
    }
    new
}

/// Hands out the lowest free id ≥ 1. Free ids are kept as disjoint ranges (start → end,
/// inclusive), so adopting maps with sparse or huge ids costs memory proportional to the number
/// of gaps, not to the largest id.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IdAllocator {
    free: BTreeMap<u32, u32>,
}

impl Default for IdAllocator {
    fn default() -> Self {
        Self {
            free: BTreeMap::from([(1, u32::MAX)]),
        }
    }
}

impl IdAllocator {
    fn excluding(used: impl Iterator<Item = u32>) -> Self {
        let used: BTreeSet<u32> = used.filter(|&id| id != 0).collect();
        let mut free = BTreeMap::new();
        let mut next = 1u32;
        for id in used {
            if id > next {
                free.insert(next, id - 1);
            }
            match id.checked_add(1) {
                Some(n) => next = n,
                None => return Self { free },
            }
        }
        free.insert(next, u32::MAX);
        Self { free }
    }

    fn alloc(&mut self) -> u32 {
        // Exhaustion needs 2^32 - 1 live ids, far beyond any map's capacity and this process's
        // memory; treat it as the bug it would be.
        let (start, end) = self.free.pop_first().expect("u32 id space exhausted");
        if start < end {
            self.free.insert(start + 1, end);
        }
        start
    }

    fn release(&mut self, id: u32) {
        let (mut start, mut end) = (id, id);
        if let Some((&s, &e)) = self.free.range(..id).next_back() {
            if e.checked_add(1) == Some(id) {
                start = s;
                self.free.remove(&s);
            }
        }
        if let Some(next) = id.checked_add(1) {
            if let Some(e) = self.free.remove(&next) {
                end = e;
            }
        }
        self.free.insert(start, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fake::{canonical, FakeDataplane};
    use crate::dataplane::Dataplane;
    use crate::model::Ipv4Cidr;
    use svc_common::{BACKEND_F_TERMINATING, FRONTEND_F_SOURCE_RANGES, PROTO_TCP, PROTO_UDP};

    fn fk(last: u8, port: u16) -> FrontendKey {
        FrontendKey {
            addr: [10, 96, 0, last],
            port,
            proto: PROTO_TCP,
            scope: SCOPE_ANY,
        }
    }

    fn be(last: u8) -> Backend {
        Backend {
            addr: [10, 244, 1, last],
            port: 8080,
            proto: PROTO_TCP,
            flags: 0,
        }
    }

    fn svc(name: &str) -> ObjectRef {
        ObjectRef::new("default", name)
    }

    fn fe(service: &str, backends: &[u8]) -> DesiredFrontend {
        let mut backends: Vec<Backend> = backends.iter().map(|&b| be(b)).collect();
        backends.sort();
        DesiredFrontend {
            service: svc(service),
            port_name: String::new(),
            backends,
            affinity_timeout_s: 0,
            flags: 0,
            source_ranges: vec![],
        }
    }

    fn desired(items: Vec<(FrontendKey, DesiredFrontend)>) -> Desired {
        Desired {
            frontends: items.into_iter().collect(),
            problems: vec![],
        }
    }

    /// Applies `plan` to `fake` (which checks the invariant after every op) and checks the
    /// result is exactly what the plan says.
    fn apply(fake: &mut FakeDataplane, plan: &Plan) {
        for op in &plan.ops {
            fake.apply(op)
                .unwrap_or_else(|e| panic!("{e}\nplan: {:#?}", plan.ops));
        }
        assert_eq!(fake.snapshot, plan.next.to_snapshot());
        fake.check_all().expect("invariant holds at the end");
    }

    fn op_kinds(ops: &[MapOp]) -> Vec<&'static str> {
        ops.iter()
            .map(|op| match op {
                MapOp::PutBackend { .. } => "PutBackend",
                MapOp::PutSlot { .. } => "PutSlot",
                MapOp::PutFrontend { .. } => "PutFrontend",
                MapOp::DeleteFrontend { .. } => "DeleteFrontend",
                MapOp::DeleteSlot { .. } => "DeleteSlot",
                MapOp::DeleteBackend { .. } => "DeleteBackend",
                MapOp::PutSourceRange { .. } => "PutSourceRange",
                MapOp::DeleteSourceRange { .. } => "DeleteSourceRange",
            })
            .collect()
    }

    #[test]
    fn plan_from_empty_writes_backends_then_slots_then_frontend() {
        let d = desired(vec![(fk(10, 80), fe("web", &[2, 1]))]);
        let p = plan(&Programmed::default(), &d);
        assert_eq!(
            p.ops,
            vec![
                MapOp::PutBackend {
                    id: 1,
                    backend: be(1)
                },
                MapOp::PutBackend {
                    id: 2,
                    backend: be(2)
                },
                MapOp::PutSlot {
                    key: SlotKey {
                        frontend_id: 1,
                        slot: 1
                    },
                    slot: Slot { backend_id: 1 }
                },
                MapOp::PutSlot {
                    key: SlotKey {
                        frontend_id: 1,
                        slot: 2
                    },
                    slot: Slot { backend_id: 2 }
                },
                MapOp::PutFrontend {
                    key: fk(10, 80),
                    value: Frontend {
                        id: 1,
                        backend_count: 2,
                        flags: 0,
                        affinity_timeout_s: 0
                    }
                },
            ]
        );
        let mut fake = FakeDataplane::default();
        apply(&mut fake, &p);
        assert_eq!(fake.writes, 5);
    }

    #[test]
    fn frontend_without_backends_is_programmed_with_count_zero() {
        let p = plan(
            &Programmed::default(),
            &desired(vec![(fk(10, 80), fe("web", &[]))]),
        );
        assert_eq!(op_kinds(&p.ops), ["PutFrontend"]);
        apply(&mut FakeDataplane::default(), &p);
    }

    #[test]
    fn unchanged_desired_state_plans_no_ops() {
        let d = desired(vec![
            (fk(10, 80), fe("web", &[1, 2, 3])),
            (fk(11, 53), fe("dns", &[4])),
        ]);
        let first = plan(&Programmed::default(), &d);
        let again = plan(&first.next, &d);
        assert!(again.ops.is_empty(), "{:?}", again.ops);
        assert_eq!(again.next, first.next);
    }

    #[test]
    fn restart_adoption_plans_no_ops() {
        let d = desired(vec![
            (fk(10, 80), fe("web", &[1, 2, 3])),
            (fk(10, 443), fe("web", &[1, 2, 3])),
            (fk(11, 53), fe("dns", &[4])),
            (fk(12, 80), fe("empty", &[])),
        ]);
        let mut fake = FakeDataplane::default();
        let p = plan(&Programmed::default(), &d);
        apply(&mut fake, &p);
        let adopted = Programmed::from_snapshot(&fake.snapshot().expect("snapshot"));
        let after = plan(&adopted, &d);
        assert!(after.ops.is_empty(), "{:?}", after.ops);
        assert_eq!(after.next.to_snapshot(), fake.snapshot);
        // Owners are learnt by that first plan, so incremental plans work afterwards.
        assert_eq!(after.next.frontends_of(&svc("web")).count(), 2);
    }

    #[test]
    fn from_snapshot_then_to_snapshot_round_trips_even_junk() {
        let mut snap = MapSnapshot::default();
        snap.frontends.insert(
            fk(1, 80),
            Frontend {
                id: 5,
                backend_count: 2,
                flags: 0,
                affinity_timeout_s: 0,
            },
        );
        snap.frontends.insert(
            fk(2, 80),
            Frontend {
                id: 5,
                backend_count: 1,
                flags: 0,
                affinity_timeout_s: 0,
            },
        );
        snap.frontends.insert(
            fk(3, 80),
            Frontend {
                id: 0,
                backend_count: 0,
                flags: 7,
                affinity_timeout_s: 0,
            },
        );
        snap.slots.insert(
            SlotKey {
                frontend_id: 5,
                slot: 1,
            },
            Slot { backend_id: 9 },
        );
        snap.slots.insert(
            SlotKey {
                frontend_id: 5,
                slot: 3,
            },
            Slot { backend_id: 9 },
        );
        snap.slots.insert(
            SlotKey {
                frontend_id: 77,
                slot: 1,
            },
            Slot { backend_id: 1234 },
        );
        snap.backends.insert(9, be(9));
        snap.backends.insert(10, be(9));
        snap.backends.insert(u32::MAX, be(200));
        assert_eq!(Programmed::from_snapshot(&snap).to_snapshot(), snap);
    }

    #[test]
    fn existing_frontends_keep_their_ids_and_new_ones_get_the_lowest_free() {
        let d1 = desired(vec![
            (fk(1, 80), fe("a", &[1])),
            (fk(2, 80), fe("b", &[1])),
            (fk(3, 80), fe("c", &[1])),
        ]);
        let p1 = plan(&Programmed::default(), &d1);
        let d2 = desired(vec![(fk(1, 80), fe("a", &[1])), (fk(3, 80), fe("c", &[1]))]);
        let p2 = plan(&p1.next, &d2);
        let d3 = desired(vec![
            (fk(1, 80), fe("a", &[1])),
            (fk(3, 80), fe("c", &[1])),
            (fk(9, 80), fe("z", &[1])),
        ]);
        let p3 = plan(&p2.next, &d3);
        let ids: Vec<u32> = p3.next.frontends().values().map(|f| f.id).collect();
        assert_eq!(ids, [1, 3, 2], "fk(9) takes the freed id 2");
    }

    #[test]
    fn ids_freed_in_a_plan_are_not_reused_by_the_same_plan() {
        let p1 = plan(
            &Programmed::default(),
            &desired(vec![(fk(1, 80), fe("a", &[1]))]),
        );
        // Replace frontend and backend in one plan: the new ones must not take id 1 while the
        // old frontend/backend 1 are still live in the maps.
        let p2 = plan(&p1.next, &desired(vec![(fk(2, 80), fe("b", &[2]))]));
        assert_eq!(p2.next.frontends()[&fk(2, 80)].id, 2);
        assert_eq!(p2.next.backend_id(&be(2)), Some(2));
        let mut fake = FakeDataplane::default();
        apply(&mut fake, &p1);
        apply(&mut fake, &p2);
        // And the next plan reuses the lowest free ids again.
        let p3 = plan(
            &p2.next,
            &desired(vec![(fk(2, 80), fe("b", &[2])), (fk(3, 80), fe("c", &[3]))]),
        );
        assert_eq!(p3.next.frontends()[&fk(3, 80)].id, 1);
        assert_eq!(p3.next.backend_id(&be(3)), Some(1));
    }

    #[test]
    fn a_backend_shared_by_frontends_has_one_id() {
        let d = desired(vec![
            (fk(1, 80), fe("a", &[1, 2])),
            (fk(2, 80), fe("b", &[2, 3])),
        ]);
        let p = plan(&Programmed::default(), &d);
        assert_eq!(
            p.ops
                .iter()
                .filter(|op| matches!(op, MapOp::PutBackend { .. }))
                .count(),
            3
        );
        let snap = p.next.to_snapshot();
        assert_eq!(snap.backends.len(), 3);
        // Removing one user keeps the shared backend.
        let p2 = plan(&p.next, &desired(vec![(fk(2, 80), fe("b", &[2, 3]))]));
        assert_eq!(
            p2.ops
                .iter()
                .filter(|op| matches!(op, MapOp::DeleteBackend { .. }))
                .collect::<Vec<_>>(),
            vec![&MapOp::DeleteBackend { id: 1 }]
        );
    }

    #[test]
    fn backend_ids_are_reused_for_the_same_tuple_and_distinct_per_flags() {
        let p1 = plan(
            &Programmed::default(),
            &desired(vec![(fk(1, 80), fe("a", &[1]))]),
        );
        let p2 = plan(
            &p1.next,
            &desired(vec![(fk(1, 80), fe("a", &[1])), (fk(2, 80), fe("b", &[1]))]),
        );
        assert!(p2
            .ops
            .iter()
            .all(|op| !matches!(op, MapOp::PutBackend { .. })));
        let mut term = fe("a", &[]);
        term.backends = vec![Backend {
            flags: BACKEND_F_TERMINATING,
            ..be(1)
        }];
        let p3 = plan(
            &p2.next,
            &desired(vec![(fk(1, 80), term), (fk(2, 80), fe("b", &[1]))]),
        );
        assert_eq!(p3.next.backend_count(), 2);
    }

    #[test]
    fn shrink_writes_the_count_before_deleting_slots() {
        let p1 = plan(
            &Programmed::default(),
            &desired(vec![(fk(1, 80), fe("a", &[1, 2, 3]))]),
        );
        let p2 = plan(&p1.next, &desired(vec![(fk(1, 80), fe("a", &[1]))]));
        assert_eq!(
            op_kinds(&p2.ops),
            [
                "PutFrontend",
                "DeleteSlot",
                "DeleteSlot",
                "DeleteBackend",
                "DeleteBackend"
            ]
        );
        let mut fake = FakeDataplane::default();
        apply(&mut fake, &p1);
        apply(&mut fake, &p2);
    }

    #[test]
    fn removed_backend_ids_are_those_no_new_slot_names() {
        assert_eq!(
            removed_backend_ids(&[Some(1), Some(2), Some(3)], &[3, 1]),
            vec![2]
        );
        assert_eq!(removed_backend_ids(&[Some(1), None, Some(1)], &[]), vec![1]);
        assert_eq!(
            removed_backend_ids(&[Some(1), Some(2)], &[2, 1, 4]),
            Vec::<u32>::new()
        );
        assert_eq!(removed_backend_ids(&[], &[1]), Vec::<u32>::new());
    }

    #[test]
    fn a_plan_reports_the_pairs_it_removes_and_the_frontends_it_deletes() {
        let udp = FrontendKey {
            proto: PROTO_UDP,
            ..fk(2, 53)
        };
        let p1 = plan(
            &Programmed::default(),
            &desired(vec![
                (fk(1, 80), fe("a", &[1, 2, 3])),
                (udp, fe("dns", &[1, 2])),
                (fk(3, 80), fe("c", &[4])),
            ]),
        );
        assert_eq!(p1.removals, Removals::default(), "nothing existed before");
        let id = |key: &FrontendKey| p1.next.frontends()[key].id;
        let backend = |last: u8| p1.next.backend_id(&be(last)).expect("programmed");
        // "a" loses backend 2 and gains 5; "dns" loses 1; "c" is deleted.
        let p2 = plan(
            &p1.next,
            &desired(vec![
                (fk(1, 80), fe("a", &[1, 3, 5])),
                (udp, fe("dns", &[2])),
            ]),
        );
        assert_eq!(
            p2.removals.backends,
            vec![
                // Removed frontends are planned (and written) first.
                RemovedBackend {
                    frontend_id: id(&fk(3, 80)),
                    proto: PROTO_TCP,
                    backend_id: backend(4),
                },
                RemovedBackend {
                    frontend_id: id(&fk(1, 80)),
                    proto: PROTO_TCP,
                    backend_id: backend(2),
                },
                RemovedBackend {
                    frontend_id: id(&udp),
                    proto: PROTO_UDP,
                    backend_id: backend(1),
                },
            ]
        );
        assert_eq!(p2.removals.frontend_ids, vec![id(&fk(3, 80))]);
        assert_eq!(p2.removals.udp_pairs(), vec![(id(&udp), backend(1))]);
        // The same state again removes nothing.
        assert!(plan(
            &p2.next,
            &desired(vec![
                (fk(1, 80), fe("a", &[1, 3, 5])),
                (udp, fe("dns", &[2])),
            ])
        )
        .removals
        .is_empty());
    }

    #[test]
    fn incremental_plans_report_removals_of_the_changed_services() {
        let p1 = plan(
            &Programmed::default(),
            &desired(vec![
                (fk(1, 80), fe("a", &[1, 2])),
                (fk(2, 80), fe("b", &[3])),
            ]),
        );
        let id_b = p1.next.frontends()[&fk(2, 80)].id;
        let changed: BTreeSet<ObjectRef> = [svc("b")].into();
        let p2 = plan_services(
            &p1.next,
            &desired(vec![(fk(1, 80), fe("a", &[1]))]),
            &changed,
        );
        assert_eq!(p2.removals.frontend_ids, vec![id_b]);
        assert_eq!(
            p2.removals.backends.len(),
            1,
            "only b's backend: a was not re-planned"
        );
        assert_eq!(p2.removals.backends[0].frontend_id, id_b);
    }

    #[test]
    fn grow_writes_slots_before_the_count() {
        let p1 = plan(
            &Programmed::default(),
            &desired(vec![(fk(1, 80), fe("a", &[1]))]),
        );
        let p2 = plan(&p1.next, &desired(vec![(fk(1, 80), fe("a", &[1, 2]))]));
        assert_eq!(op_kinds(&p2.ops), ["PutBackend", "PutSlot", "PutFrontend"]);
    }

    #[test]
    fn removed_frontend_is_deleted_before_its_slots_and_before_anything_is_put() {
        let p1 = plan(
            &Programmed::default(),
            &desired(vec![
                (fk(1, 80), fe("a", &[1, 2])),
                (fk(2, 80), fe("b", &[3])),
            ]),
        );
        let p2 = plan(&p1.next, &desired(vec![(fk(2, 80), fe("b", &[3, 4]))]));
        // Removals first, so a full map gets room before the puts; a's backends are named by
        // no wanted frontend, so they go at once too.
        assert_eq!(
            op_kinds(&p2.ops),
            [
                "DeleteFrontend",
                "DeleteSlot",
                "DeleteSlot",
                "DeleteBackend",
                "DeleteBackend",
                "PutBackend",
                "PutSlot",
                "PutFrontend",
            ]
        );
        let mut fake = FakeDataplane::default();
        apply(&mut fake, &p1);
        apply(&mut fake, &p2);
    }

    #[test]
    fn a_surviving_backend_keeps_its_slot() {
        let p1 = plan(
            &Programmed::default(),
            &desired(vec![(fk(1, 80), fe("a", &[1, 2, 3]))]),
        );
        let slot_of = |p: &Programmed, b: u8| {
            let id = p.backend_id(&be(b)).expect("programmed");
            p.frontends()[&fk(1, 80)]
                .slots
                .iter()
                .position(|s| *s == Some(id))
        };
        assert_eq!(slot_of(&p1.next, 3), Some(2));
        // Backend 1 goes, 4 comes: 2 and 3 stay where they are, 4 takes slot 1.
        let p2 = plan(&p1.next, &desired(vec![(fk(1, 80), fe("a", &[2, 3, 4]))]));
        assert_eq!(slot_of(&p2.next, 2), Some(1));
        assert_eq!(slot_of(&p2.next, 3), Some(2));
        assert_eq!(slot_of(&p2.next, 4), Some(0));
        assert_eq!(
            op_kinds(&p2.ops),
            ["PutBackend", "PutSlot", "DeleteBackend"]
        );
        // Shrinking moves a survivor from a vanishing slot into a hole.
        let p3 = plan(&p2.next, &desired(vec![(fk(1, 80), fe("a", &[3]))]));
        assert_eq!(slot_of(&p3.next, 3), Some(0));
        let mut fake = FakeDataplane::default();
        for p in [&p1, &p2, &p3] {
            apply(&mut fake, p);
        }
    }

    #[test]
    fn affinity_change_rewrites_only_the_frontend() {
        let p1 = plan(
            &Programmed::default(),
            &desired(vec![(fk(1, 80), fe("a", &[1]))]),
        );
        let mut sticky = fe("a", &[1]);
        sticky.affinity_timeout_s = 10_800;
        let p2 = plan(&p1.next, &desired(vec![(fk(1, 80), sticky)]));
        assert_eq!(op_kinds(&p2.ops), ["PutFrontend"]);
    }

    #[test]
    fn adoption_cleans_strays_and_unreferenced_backends() {
        let mut snap = MapSnapshot::default();
        snap.frontends.insert(
            fk(1, 80),
            Frontend {
                id: 1,
                backend_count: 1,
                flags: 0,
                affinity_timeout_s: 0,
            },
        );
        snap.slots.insert(
            SlotKey {
                frontend_id: 1,
                slot: 1,
            },
            Slot { backend_id: 1 },
        );
        snap.slots.insert(
            SlotKey {
                frontend_id: 1,
                slot: 2,
            },
            Slot { backend_id: 2 },
        ); // beyond count
        snap.slots.insert(
            SlotKey {
                frontend_id: 40,
                slot: 1,
            },
            Slot { backend_id: 99 },
        ); // no frontend
        snap.backends.insert(1, be(1));
        snap.backends.insert(2, be(2)); // named only by a stray
        snap.backends.insert(3, be(3)); // named by nothing
        let mut fake = FakeDataplane::with_snapshot(snap.clone());
        let adopted = Programmed::from_snapshot(&snap);
        let d = desired(vec![(fk(1, 80), fe("a", &[1]))]);
        let p = plan(&adopted, &d);
        assert_eq!(
            op_kinds(&p.ops),
            ["DeleteSlot", "DeleteSlot", "DeleteBackend", "DeleteBackend"]
        );
        apply(&mut fake, &p);
        assert_eq!(
            fake.snapshot,
            plan(&Programmed::default(), &d).next.to_snapshot()
        );
    }

    #[test]
    fn adoption_rewrites_dangling_and_missing_slots_and_conflicting_ids() {
        let mut snap = MapSnapshot::default();
        // fk1: slot 1 names a missing backend, slot 2 is missing.
        snap.frontends.insert(
            fk(1, 80),
            Frontend {
                id: 1,
                backend_count: 2,
                flags: 0,
                affinity_timeout_s: 0,
            },
        );
        snap.slots.insert(
            SlotKey {
                frontend_id: 1,
                slot: 1,
            },
            Slot { backend_id: 50 },
        );
        // fk2 reuses id 1: it must get its own id.
        snap.frontends.insert(
            fk(2, 80),
            Frontend {
                id: 1,
                backend_count: 2,
                flags: 0,
                affinity_timeout_s: 0,
            },
        );
        snap.backends.insert(7, be(1));
        let d = desired(vec![
            (fk(1, 80), fe("a", &[1, 2])),
            (fk(2, 80), fe("b", &[1])),
        ]);
        let p = plan(&Programmed::from_snapshot(&snap), &d);
        let next = p.next.to_snapshot();
        assert_eq!(
            canonical(&next),
            canonical(&plan(&Programmed::default(), &d).next.to_snapshot())
        );
        assert_ne!(
            p.next.frontends()[&fk(1, 80)].id,
            p.next.frontends()[&fk(2, 80)].id
        );
        assert_eq!(
            p.next.backend_id(&be(1)),
            Some(7),
            "adopted backend id reused"
        );
        // Applying it on top of the (already broken) maps leaves them exactly as planned.
        let mut dp = MapApply(snap);
        for op in &p.ops {
            dp.apply(op);
        }
        assert_eq!(dp.0, next);
        assert!(plan(&p.next, &d).ops.is_empty());
    }

    /// Applies ops without checks, for starting states that already break the invariant.
    struct MapApply(MapSnapshot);

    impl MapApply {
        fn apply(&mut self, op: &MapOp) {
            let s = &mut self.0;
            match op {
                MapOp::PutBackend { id, backend } => drop(s.backends.insert(*id, *backend)),
                MapOp::PutSlot { key, slot } => drop(s.slots.insert(*key, *slot)),
                MapOp::PutFrontend { key, value } => drop(s.frontends.insert(*key, *value)),
                MapOp::DeleteFrontend { key } => assert!(s.frontends.remove(key).is_some()),
                MapOp::DeleteSlot { key } => assert!(s.slots.remove(key).is_some(), "{key:?}"),
                MapOp::DeleteBackend { id } => assert!(s.backends.remove(id).is_some()),
                MapOp::PutSourceRange { range } => drop(s.source_ranges.insert(*range)),
                MapOp::DeleteSourceRange { range } => assert!(s.source_ranges.remove(range)),
            }
        }
    }

    #[test]
    fn plan_services_touches_only_the_changed_services() {
        let d1 = desired(vec![(fk(1, 80), fe("a", &[1])), (fk(2, 80), fe("b", &[2]))]);
        let p1 = plan(&Programmed::default(), &d1);
        // b changes; a changes too in `desired` but is not listed, so it is left alone.
        let d2 = desired(vec![
            (fk(1, 80), fe("a", &[9])),
            (fk(2, 80), fe("b", &[2, 3])),
        ]);
        let changed = BTreeSet::from([svc("b")]);
        let p2 = plan_services(&p1.next, &d2, &changed);
        assert_eq!(op_kinds(&p2.ops), ["PutBackend", "PutSlot", "PutFrontend"]);
        let mut fake = FakeDataplane::default();
        apply(&mut fake, &p1);
        apply(&mut fake, &p2);
        // A full plan afterwards catches up with a.
        let p3 = plan(&p2.next, &d2);
        apply(&mut fake, &p3);
        assert_eq!(
            canonical(&fake.snapshot),
            canonical(&plan(&Programmed::default(), &d2).next.to_snapshot())
        );
    }

    #[test]
    fn plan_services_removes_frontends_the_service_no_longer_has() {
        let d1 = desired(vec![
            (fk(1, 80), fe("a", &[1])),
            (fk(1, 443), fe("a", &[1])),
            (fk(2, 80), fe("b", &[2])),
        ]);
        let p1 = plan(&Programmed::default(), &d1);
        let d2 = desired(vec![(fk(1, 80), fe("a", &[1])), (fk(2, 80), fe("b", &[2]))]);
        let p2 = plan_services(&p1.next, &d2, &BTreeSet::from([svc("a")]));
        assert_eq!(op_kinds(&p2.ops), ["DeleteFrontend", "DeleteSlot"]);
        // Service deleted altogether.
        let d3 = desired(vec![(fk(2, 80), fe("b", &[2]))]);
        let p3 = plan_services(&p2.next, &d3, &BTreeSet::from([svc("a")]));
        assert_eq!(
            op_kinds(&p3.ops),
            ["DeleteFrontend", "DeleteSlot", "DeleteBackend"]
        );
        assert_eq!(
            canonical(&p3.next.to_snapshot()),
            canonical(&plan(&Programmed::default(), &d3).next.to_snapshot())
        );
        let mut fake = FakeDataplane::default();
        for p in [&p1, &p2, &p3] {
            apply(&mut fake, p);
        }
    }

    fn scoped(key: FrontendKey) -> FrontendKey {
        FrontendKey {
            scope: svc_common::SCOPE_EXTERNAL,
            ..key
        }
    }

    fn with_ranges(mut f: DesiredFrontend, ranges: &[&str]) -> DesiredFrontend {
        f.source_ranges = ranges.iter().map(|r| r.parse().unwrap()).collect();
        f.flags = if ranges.is_empty() {
            0
        } else {
            FRONTEND_F_SOURCE_RANGES
        };
        f
    }

    fn range(id: u32, text: &str) -> SourceRange {
        let c: Ipv4Cidr = text.parse().unwrap();
        SourceRange {
            frontend_id: id,
            addr: c.network().octets(),
            len: c.prefix_len(),
        }
    }

    #[test]
    fn source_ranges_are_put_before_the_flag_and_deleted_after_it() {
        let with =
            |ranges: &[&str]| desired(vec![(fk(10, 80), with_ranges(fe("lb", &[1]), ranges))]);
        let mut fake = FakeDataplane::default();
        let p1 = plan(
            &Programmed::default(),
            &with(&["198.51.100.0/24", "192.0.2.7/32"]),
        );
        assert_eq!(
            op_kinds(&p1.ops),
            [
                "PutBackend",
                "PutSourceRange",
                "PutSourceRange",
                "PutSlot",
                "PutFrontend"
            ]
        );
        apply(&mut fake, &p1);
        assert_eq!(
            fake.snapshot.source_ranges,
            [range(1, "192.0.2.7/32"), range(1, "198.51.100.0/24")].into()
        );
        // A restart over the same maps writes nothing.
        assert!(plan(
            &Programmed::from_snapshot(&fake.snapshot),
            &with(&["198.51.100.0/24", "192.0.2.7/32"])
        )
        .ops
        .is_empty());

        // Replacing a prefix: the new one first, the old one last (briefly both, never none).
        let p2 = plan(&p1.next, &with(&["198.51.100.0/24", "203.0.113.0/24"]));
        assert_eq!(
            p2.ops,
            vec![
                MapOp::PutSourceRange {
                    range: range(1, "203.0.113.0/24")
                },
                MapOp::DeleteSourceRange {
                    range: range(1, "192.0.2.7/32")
                },
            ]
        );
        apply(&mut fake, &p2);

        // No ranges any more: the flag goes first, then the prefixes.
        let p3 = plan(&p2.next, &with(&[]));
        assert_eq!(
            op_kinds(&p3.ops),
            ["PutFrontend", "DeleteSourceRange", "DeleteSourceRange"]
        );
        apply(&mut fake, &p3);
        assert!(fake.snapshot.source_ranges.is_empty());

        // Back on, then the frontend removed: its prefixes go after it.
        let p4 = plan(&p3.next, &with(&["192.0.2.0/24"]));
        apply(&mut fake, &p4);
        let p5 = plan(&p4.next, &desired(vec![]));
        assert_eq!(
            op_kinds(&p5.ops),
            [
                "DeleteFrontend",
                "DeleteSlot",
                "DeleteSourceRange",
                "DeleteBackend"
            ]
        );
        apply(&mut fake, &p5);
        assert_eq!(fake.snapshot, MapSnapshot::default());
    }

    #[test]
    fn adopted_source_ranges_of_no_frontend_are_deleted_first() {
        let d = desired(vec![(
            fk(10, 80),
            with_ranges(fe("lb", &[1]), &["192.0.2.0/24"]),
        )]);
        let mut snap = plan(&Programmed::default(), &d).next.to_snapshot();
        // Left by a crash: prefixes of a frontend id nobody has.
        snap.source_ranges.insert(range(77, "203.0.113.0/24"));
        let mut fake = FakeDataplane::with_snapshot(snap);
        let p = plan(&Programmed::from_snapshot(&fake.snapshot), &d);
        assert_eq!(
            p.ops,
            vec![MapOp::DeleteSourceRange {
                range: range(77, "203.0.113.0/24")
            }]
        );
        apply(&mut fake, &p);
    }

    fn with_flags(mut f: DesiredFrontend, flags: u32) -> DesiredFrontend {
        f.flags = flags;
        f
    }

    #[test]
    fn flags_are_written_and_a_flag_only_change_rewrites_the_frontend() {
        use svc_common::{FRONTEND_F_DROP_NO_BACKEND, FRONTEND_F_NODEPORT};
        let d1 = desired(vec![(
            fk(1, 30080),
            with_flags(fe("a", &[1]), FRONTEND_F_NODEPORT),
        )]);
        let p1 = plan(&Programmed::default(), &d1);
        assert_eq!(
            p1.next.frontends()[&fk(1, 30080)].value.flags,
            FRONTEND_F_NODEPORT
        );
        let d2 = desired(vec![(
            fk(1, 30080),
            with_flags(
                fe("a", &[]),
                FRONTEND_F_NODEPORT | FRONTEND_F_DROP_NO_BACKEND,
            ),
        )]);
        let p2 = plan(&p1.next, &d2);
        assert_eq!(
            op_kinds(&p2.ops),
            ["PutFrontend", "DeleteSlot", "DeleteBackend"]
        );
        let d3 = desired(vec![(fk(1, 30080), with_flags(fe("a", &[]), 0))]);
        let p3 = plan(&p2.next, &d3);
        assert_eq!(op_kinds(&p3.ops), ["PutFrontend"], "flags alone changed");
        let mut fake = FakeDataplane::default();
        for p in [&p1, &p2, &p3] {
            apply(&mut fake, p);
        }
        let adopted = Programmed::from_snapshot(&fake.snapshot);
        assert!(plan(&adopted, &d3).ops.is_empty());
    }

    #[test]
    fn external_scope_entry_is_written_before_the_flag_and_removed_after() {
        use svc_common::{FRONTEND_F_DROP_NO_BACKEND, FRONTEND_F_EXTERNAL_SCOPE};
        let np = fk(1, 30080);
        let cluster = desired(vec![(np, fe("a", &[1, 2]))]);
        let local = desired(vec![
            (np, with_flags(fe("a", &[1, 2]), FRONTEND_F_EXTERNAL_SCOPE)),
            (
                scoped(np),
                with_flags(fe("a", &[]), FRONTEND_F_DROP_NO_BACKEND),
            ),
        ]);
        let mut fake = FakeDataplane::default();
        let mut state = Programmed::default();
        // The fake rejects a flag written before its scoped entry, and a scoped entry deleted
        // while the flag is live; every transition goes through it, and through adoption.
        for d in [&local, &cluster, &local, &Desired::default(), &local] {
            let p = plan(&state, d);
            apply(&mut fake, &p);
            state = Programmed::from_snapshot(&fake.snapshot);
            let again = plan(&state, d);
            assert!(again.ops.is_empty(), "{:?}", again.ops);
            state = again.next;
        }
        assert_eq!(
            canonical(&fake.snapshot)[&scoped(np)].flags,
            FRONTEND_F_DROP_NO_BACKEND
        );
        // Removing the Service incrementally deletes the SCOPE_ANY entry first.
        let p = plan_services(&state, &Desired::default(), &BTreeSet::from([svc("a")]));
        assert_eq!(
            p.ops.first(),
            Some(&MapOp::DeleteFrontend { key: np }),
            "{:?}",
            p.ops
        );
        apply(&mut fake, &p);
        assert_eq!(fake.snapshot, MapSnapshot::default());
    }

    #[test]
    fn north_south_model_output_round_trips_through_the_fake_and_adoption() {
        use crate::model::tests::{slice, svc as k8s_svc};
        use crate::model::{desired as model_desired, NodeContext, Objects};
        use serde_json::json;
        let (lb_ref, mut lb) = k8s_svc(
            "default",
            "web",
            json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10",
                   "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
                   "externalIPs": ["198.51.100.10"],
                   "ports": [{"port": 80, "nodePort": 30080}]}),
        );
        lb.status =
            serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.127"}]}}))
                .expect("status");
        let eps = |nodes: [&str; 2]| {
            slice(
                "default",
                "web-1",
                "web",
                json!({"ports": [{"port": 8080}], "endpoints": [
                    {"addresses": ["10.244.1.5"], "nodeName": nodes[0]},
                    {"addresses": ["10.244.2.7"], "nodeName": nodes[1]},
                ]}),
            )
        };
        let node = NodeContext {
            node_name: "node-a".into(),
            node_ips: vec![[172, 18, 0, 2].into()],
            nodeport_addresses: vec![
                "127.0.0.0/8".parse().expect("cidr"),
                "172.18.0.0/16".parse().expect("cidr"),
            ],
            ..Default::default()
        };
        let objs = |nodes| Objects {
            services: [(lb_ref.clone(), lb.clone())].into(),
            slices: [eps(nodes)].into(),
            problems: vec![],
        };
        let mut fake = FakeDataplane::default();
        let mut state = Programmed::default();
        // Local endpoint; then the pod "moves" (locality flips, so backend tuples change);
        // then no local endpoint at all (scoped entries and the ClusterIP drop).
        for nodes in [
            ["node-a", "node-b"],
            ["node-b", "node-a"],
            ["node-b", "node-c"],
        ] {
            let d = model_desired(&objs(nodes), &node);
            assert!(d.problems.is_empty(), "{:?}", d.problems);
            // ClusterIP, localhost NodePort, and three external frontends with a scoped twin.
            assert_eq!(d.frontends.len(), 2 + 3 * 2);
            let p = plan(&state, &d);
            apply(&mut fake, &p);
            assert_eq!(
                canonical(&fake.snapshot),
                canonical(&plan(&Programmed::default(), &d).next.to_snapshot())
            );
            let adopted = Programmed::from_snapshot(&fake.snapshot);
            let again = plan(&adopted, &d);
            assert!(again.ops.is_empty(), "{nodes:?}: {:?}", again.ops);
            state = again.next;
        }
    }

    /// Deterministic xorshift64* PRNG: reproducible random-ish sequences without a crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_desired(rng: &mut Rng) -> Desired {
        let mut items = Vec::new();
        for f in 0..rng.below(12) {
            let key = FrontendKey {
                addr: [10, 96, 0, rng.below(6) as u8],
                port: 80 + rng.below(3) as u16,
                proto: if rng.below(4) == 0 {
                    PROTO_UDP
                } else {
                    PROTO_TCP
                },
                scope: SCOPE_ANY,
            };
            let mut backends: Vec<Backend> = (0..rng.below(7))
                .map(|_| Backend {
                    addr: [10, 244, 0, rng.below(10) as u8],
                    port: 8080,
                    proto: key.proto,
                    flags: if rng.below(8) == 0 {
                        BACKEND_F_TERMINATING
                    } else {
                        0
                    },
                })
                .collect();
            backends.sort();
            backends.dedup();
            let service = svc(&format!("s{}", f % 4));
            // Half the frontends filter sources, over a few overlapping prefixes.
            let source_ranges: Vec<Ipv4Cidr> = if rng.below(2) == 0 {
                Vec::new()
            } else {
                let mut r: Vec<Ipv4Cidr> = (0..1 + rng.below(3))
                    .filter_map(|_| {
                        Ipv4Cidr::new([198, 51, 100, rng.below(4) as u8 * 64].into(), 26)
                    })
                    .collect();
                r.sort();
                r.dedup();
                r
            };
            let flags = if source_ranges.is_empty() {
                0
            } else {
                FRONTEND_F_SOURCE_RANGES
            };
            items.push((
                key,
                DesiredFrontend {
                    service,
                    port_name: String::new(),
                    backends,
                    affinity_timeout_s: rng.below(2) as u32 * 60,
                    flags,
                    source_ranges,
                },
            ));
        }
        desired(items)
    }

    #[test]
    fn random_sequences_keep_the_invariant_and_converge() {
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut fake = FakeDataplane::default();
            let mut state = Programmed::default();
            let mut last = Desired::default();
            for step in 0..30 {
                let d = random_desired(&mut rng);
                let p = if step % 3 == 2 {
                    // Incremental for every service (the same as a full plan, by another path).
                    let all: BTreeSet<_> = (0..4).map(|i| svc(&format!("s{i}"))).collect();
                    plan_services(&state, &d, &all)
                } else {
                    plan(&state, &d)
                };
                apply(&mut fake, &p);
                state = p.next;
                if step % 7 == 6 {
                    // Restart: adopt the maps, nothing to write.
                    state = Programmed::from_snapshot(&fake.snapshot);
                    let again = plan(&state, &d);
                    assert!(
                        again.ops.is_empty(),
                        "seed {seed} step {step}: {:?}",
                        again.ops
                    );
                    state = again.next;
                }
                last = d;
            }
            let fresh = plan(&Programmed::default(), &last).next.to_snapshot();
            assert_eq!(canonical(&fake.snapshot), canonical(&fresh), "seed {seed}");
            assert!(plan(&state, &last).ops.is_empty());
        }
    }

    #[test]
    fn scales_to_10k_services_and_100k_backends() {
        let mut items = Vec::new();
        for s in 0..10_000u32 {
            let key = FrontendKey {
                addr: [10, 96, (s >> 8) as u8, s as u8],
                port: 80,
                proto: PROTO_TCP,
                scope: SCOPE_ANY,
            };
            let backends = (0..10u32)
                .map(|b| {
                    let n = s * 10 + b;
                    Backend {
                        addr: [10, 244, (n >> 8) as u8, n as u8],
                        port: 8080 + (n >> 16) as u16,
                        proto: PROTO_TCP,
                        flags: 0,
                    }
                })
                .collect();
            items.push((
                key,
                DesiredFrontend {
                    service: ObjectRef::new("ns", format!("s{s}")),
                    port_name: String::new(),
                    backends,
                    affinity_timeout_s: 0,
                    flags: 0,
                    source_ranges: vec![],
                },
            ));
        }
        let d = desired(items);
        let p = plan(&Programmed::default(), &d);
        assert_eq!(p.ops.len(), 100_000 + 100_000 + 10_000);
        assert_eq!(p.next.backend_count(), 100_000);
        let mut fake = FakeDataplane::default();
        apply(&mut fake, &p);
        let adopted = Programmed::from_snapshot(&fake.snapshot);
        assert!(plan(&adopted, &d).ops.is_empty());
        let p2 = plan(&p.next, &Desired::default());
        apply(&mut fake, &p2);
        assert_eq!(fake.snapshot, MapSnapshot::default());
    }

    #[test]
    fn id_allocator_hands_out_the_lowest_free_id() {
        let mut a = IdAllocator::excluding([3, 5, u32::MAX].into_iter());
        assert_eq!((a.alloc(), a.alloc(), a.alloc(), a.alloc()), (1, 2, 4, 6));
        a.release(2);
        a.release(1);
        assert_eq!(a.alloc(), 1);
        a.release(4);
        a.release(6);
        assert_eq!(a, IdAllocator::excluding([1, 3, 5, u32::MAX].into_iter()));
    }
}
