//! Pure: what the maps hold + what should be served → the ordered map operations between them.
//!
//! Both families are planned in one pass: frontends and backends are kept by their
//! family-tagged forms ([`crate::family`]), ids come from allocators shared by both (one id
//! space), and each phase below covers both families, so the update order holds within each
//! family and across them (removals of either family free slots before any slot is put).
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

// What each child owns (see its first lines); the update order above is documented here,
// where `svc_core::reconcile` renders it, and implemented in `diff`.
mod diff;
mod ids;
mod programmed;

pub use programmed::{Programmed, ProgrammedFrontend};

use std::collections::{BTreeSet, HashSet};

use crate::dataplane::MapOp;
use crate::family::AnyFrontendKey;
use crate::model::{Desired, ObjectRef};

use diff::plan_core;

/// A source prefix of a frontend: network address (of the frontend's family) and length.
pub type Prefix = (std::net::IpAddr, u8);

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
    let removed: Vec<AnyFrontendKey> = state
        .frontends
        .iter()
        .filter(|(k, fe)| {
            !desired.contains(k) && !fe.owner.as_ref().is_some_and(|o| held.contains(&**o))
        })
        .map(|(k, _)| *k)
        .collect();
    let wanted: Vec<_> = desired.iter_any().collect();
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
        .iter_any()
        .filter(|(k, f)| {
            changed.contains(f.service())
                && state
                    .frontends
                    .get(k)
                    .and_then(|fe| fe.owner.as_deref())
                    .is_none_or(|owner| changed.contains(owner))
        })
        .collect();
    let wanted_keys: HashSet<&AnyFrontendKey> = wanted.iter().map(|(k, _)| k).collect();
    let removed: Vec<AnyFrontendKey> = changed
        .iter()
        .filter_map(|svc| state.owners.get(svc))
        .flatten()
        .filter(|k| !wanted_keys.contains(k))
        .copied()
        .collect();
    plan_core(state, &wanted, &removed)
}

#[cfg(test)]
mod tests;
