//! The diff itself ([`plan_core`]): wanted and removed frontends against a [`Programmed`] → the
//! map ops in the update order of the `reconcile` module docs, phase by phase, plus the
//! [`Removals`] they imply; with the slot assignment that keeps surviving backends in place.

use std::collections::HashSet;

use svc_common::{Frontend, Slot, SlotKey, MAX_BACKENDS_PER_FRONTEND, SCOPE_ANY};

use crate::dataplane::MapOp;
use crate::family::{AnyBackend, AnyFrontendKey};
use crate::model::DesiredRef;

use super::programmed::{range_of, slot_number, Programmed, ProgrammedFrontend};
use super::{removed_backend_ids, Prefix, Removals, RemovedBackend};

/// The diff itself; see the module docs for the phases.
pub(super) fn plan_core(
    state: &mut Programmed,
    wanted: &[(AnyFrontendKey, DesiredRef)],
    removed: &[AnyFrontendKey],
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
                .map(|range| range.delete_op()),
        )
        .collect();
    // Removed frontends first (phase 1 of the module docs): deleting them before anything is
    // put frees their entries when the maps are full. A scoped entry whose SCOPE_ANY sibling
    // stays is the exception: it goes last, after the sibling is rewritten without
    // FRONTEND_F_EXTERNAL_SCOPE (an uplink hook that sees the flag drops what has no scoped
    // entry).
    let wanted_keys: HashSet<&AnyFrontendKey> = wanted.iter().map(|(k, _)| k).collect();
    let mut early_removal_ops = Vec::new();
    let mut removal_ops = Vec::new();
    let mut freed_frontend_ids = Vec::new();
    // Backends the held-back scoped entries' slots name: live in the maps until step 4.
    let mut named_until_late: HashSet<u32> = HashSet::new();
    for key in removed {
        let Some(fe) = state.remove_frontend(key) else {
            continue;
        };
        let sibling_stays =
            key.scope() != SCOPE_ANY && wanted_keys.contains(&key.with_scope(SCOPE_ANY));
        let out = if sibling_stays {
            named_until_late.extend(fe.slots.iter().flatten());
            &mut removal_ops
        } else {
            &mut early_removal_ops
        };
        out.push(delete_frontend_op(key));
        if fe.id != 0 {
            removals.frontend_ids.push(fe.id);
            removals
                .backends
                .extend(
                    removed_backend_ids(&fe.slots, &[])
                        .into_iter()
                        .map(|backend_id| RemovedBackend {
                            frontend_id: fe.id,
                            proto: key.proto(),
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
                    .map(|&prefix| range_of(key, fe.id, prefix).delete_op()),
            );
            freed_frontend_ids.push(fe.id);
        }
        state.set_owner(*key, fe.owner.as_deref(), None);
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
        let wanted_backends: HashSet<AnyBackend> = wanted
            .iter()
            .flat_map(|(_, f)| f.backends(usize::MAX))
            .collect();
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
            MapOp::DeleteBackend { id } | MapOp::DeleteBackend6 { id } => Some(*id),
            _ => None,
        })
        .collect();

    // Straight into `ops`, in their phases' order (no per-phase vectors: at 100k Services
    // those held a second and third copy of the full plan's 2M ops at its peak).
    ops.extend(early_removal_ops);
    ops.extend(early_backend_deletes);

    // Scoped entries (SCOPE_EXTERNAL) before the SCOPE_ANY ones: an uplink hook that finds
    // FRONTEND_F_EXTERNAL_SCOPE on the SCOPE_ANY entry looks the scoped one up next and drops
    // the packet if it is missing, so it must exist before the flag is written. (Removal: a
    // scoped entry that goes while its SCOPE_ANY entry stays is removed after that entry is
    // rewritten without the flag, see the removal loop above.)
    let scoped_first = wanted
        .iter()
        .filter(|(k, _)| k.scope() != SCOPE_ANY)
        .chain(wanted.iter().filter(|(k, _)| k.scope() == SCOPE_ANY));
    // Phase 2 first, for every frontend: the new backends' ids are allocated in the same order
    // as the frontend pass below then looks them up.
    for &(_, want) in scoped_first.clone() {
        for backend in programmed_backends(&want) {
            state.backend_id_or_insert(backend, &mut ops);
        }
    }
    let frontend_ops = &mut ops;
    for &(key, want) in scoped_first {
        let mut ids: Vec<u32> = Vec::with_capacity(want.backend_len());
        for backend in programmed_backends(&want) {
            ids.push(state.backend_id_or_insert(backend, frontend_ops));
        }

        let old = state.remove_frontend(&key);
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
        let mut new_ranges: Vec<Prefix> = want.prefixes();
        new_ranges.sort_unstable();
        new_ranges.dedup();
        let range_op = |&prefix: &Prefix| range_of(&key, id, prefix);
        frontend_ops.extend(
            new_ranges
                .iter()
                .filter(|r| old_ranges.binary_search(r).is_err())
                .map(|r| range_op(r).put_op()),
        );
        let new_slots = assign_slots(&old_slots, &ids);
        removals
            .backends
            .extend(
                removed_backend_ids(&old_slots, &new_slots)
                    .into_iter()
                    .map(|backend_id| RemovedBackend {
                        frontend_id: id,
                        proto: key.proto(),
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
            flags: want.flags(),
            affinity_timeout_s: want.affinity_timeout_s(),
        };
        if old_value != Some(value) {
            frontend_ops.push(match key {
                AnyFrontendKey::V4(key) => MapOp::PutFrontend { key, value },
                AnyFrontendKey::V6(key) => MapOp::PutFrontend6 { key, value },
            });
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
                .map(|r| range_op(r).delete_op()),
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
        let owner = state.set_owner(key, old_owner.as_deref(), Some(want.service()));
        let slots = new_slots.into_iter().map(Some).collect();
        let fe = ProgrammedFrontend {
            id,
            value,
            slots,
            owner,
            source_ranges: new_ranges,
        };
        state.insert_frontend(key, fe);
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

    ops.extend(removal_ops);
    ops.extend(backend_deletes);
    // Adopted ids held by both families' maps: the IPv6 entry goes last, when no slot of a
    // live IPv6 frontend can name it any more (every such slot was rewritten or deleted).
    ops.extend(
        std::mem::take(&mut state.doubled_backends)
            .into_iter()
            .map(|id| MapOp::DeleteBackend6 { id }),
    );
    (ops, removals)
}

/// The `DeleteFrontend` or `DeleteFrontend6` of `key`.
fn delete_frontend_op(key: &AnyFrontendKey) -> MapOp {
    match *key {
        AnyFrontendKey::V4(key) => MapOp::DeleteFrontend { key },
        AnyFrontendKey::V6(key) => MapOp::DeleteFrontend6 { key },
    }
}

/// The backends a frontend's slots name: `want`'s, sorted and distinct, at most
/// [`MAX_BACKENDS_PER_FRONTEND`].
fn programmed_backends(want: &DesiredRef) -> Vec<AnyBackend> {
    let mut backends = want.backends(usize::MAX);
    let sorted = backends.windows(2).all(|w| w[0] < w[1]);
    if !sorted {
        backends.sort_unstable();
        backends.dedup();
    }
    backends.truncate(MAX_BACKENDS_PER_FRONTEND as usize);
    backends
}

/// Forgets backend `id` and queues its `DeleteBackend`; the caller releases the id once no
/// later op of the plan can allocate it.
fn delete_backend(state: &mut Programmed, id: u32, ops: &mut Vec<MapOp>) {
    let Some(entry) = state.remove_backend(id) else {
        return;
    };
    if state.backend_ids.get(&entry.backend) == Some(&id) {
        state.backend_ids.remove(&entry.backend);
    }
    ops.push(match entry.backend {
        AnyBackend::V4(_) => MapOp::DeleteBackend { id },
        AnyBackend::V6(_) => MapOp::DeleteBackend6 { id },
    });
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
