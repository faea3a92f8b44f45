//! Pure: which Services fit into the service maps, decided before planning.
//!
//! The service maps have a fixed size (`--max-frontends`, `--max-slots`, `--max-backends`,
//! and `SVC_SOURCE_RANGES`' capacity). A plan that does not fit fails at the first put the
//! kernel refuses (`E2BIG`), and the engine then writes nothing after it. So one Service with
//! thousands of ports and endpoints (a mistake, or a hostile tenant) would take Service routing
//! away from every other Service on the node. [`admit`] prevents that: it walks the Services of
//! a plan and lets in only those whose maps entries fit, within two limits:
//!
//! - **A budget per Service**: no Service may use more than `--max-service-share` percent of any
//!   service map, however empty the maps are, so one object can never take a map for itself.
//! - **What is free**: what the maps hold now, minus what the plan deletes (removed frontends
//!   are deleted before anything is put, see [`crate::reconcile`]), plus what the Services let
//!   in so far need. Backends freed by this plan are not credited (they are deleted last): the
//!   count is conservative, and a Service refused for that reason gets in on the next plan.
//!
//! Services already programmed are walked first (in name order), then new ones smallest first:
//! a Service that is already served keeps being served when a newcomer would not fit, and the
//! most Services fit when the maps run short. A refused Service that was programmed before is
//! **held**: its frontends stay exactly as they were (its change is not applied). A refused new
//! Service is not programmed. Each refusal is a [`Problem`] naming the Service, the field and
//! the numbers. Refused Services are planned again with every later change, so they get in as
//! soon as space returns.
//!
//! Counting follows the maps' peak during the plan, not only its end: a frontend that grows
//! holds its old slots and its new ones until its count is written (slots are put first), so a
//! kept frontend counts `max(old, new)` slots and the union of its old and new source ranges.
use std::collections::{BTreeMap, BTreeSet, HashSet};

use svc_common::MAX_BACKENDS_PER_FRONTEND;

use crate::family::{AnyBackend, AnyFrontendKey};
use crate::model::{Desired, DesiredRef, ObjectRef, Problem};
use crate::reconcile::{Programmed, ProgrammedFrontend};

/// Entries of each service map: a capacity, a usage, or a need. The IPv6 maps have their own
/// capacities (the ABI gives them the IPv4 maps' sizes); `SVC_SLOTS` serves both families.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entries {
    /// `SVC_FRONTENDS`.
    pub frontends: u64,
    /// `SVC_SLOTS`.
    pub slots: u64,
    /// `SVC_BACKENDS`.
    pub backends: u64,
    /// `SVC_SOURCE_RANGES`.
    pub source_ranges: u64,
    /// `SVC_FRONTENDS6`.
    pub frontends6: u64,
    /// `SVC_BACKENDS6`.
    pub backends6: u64,
    /// `SVC_SOURCE_RANGES6`.
    pub source_ranges6: u64,
}

impl Entries {
    /// The maps' names with their counts, in a fixed order.
    pub fn named(&self) -> [(&'static str, u64); 7] {
        [
            (svc_common::MAP_FRONTENDS, self.frontends),
            (svc_common::MAP_SLOTS, self.slots),
            (svc_common::MAP_BACKENDS, self.backends),
            (svc_common::MAP_SOURCE_RANGES, self.source_ranges),
            (svc_common::MAP_FRONTENDS6, self.frontends6),
            (svc_common::MAP_BACKENDS6, self.backends6),
            (svc_common::MAP_SOURCE_RANGES6, self.source_ranges6),
        ]
    }

    /// The ABI's default map sizes (`MAX_*` in svc-common): what the maps hold unless the
    /// agent was told otherwise, and what is assumed when their sizes cannot be read.
    pub fn abi() -> Entries {
        Entries {
            frontends: svc_common::MAX_FRONTENDS.into(),
            slots: svc_common::MAX_SLOTS.into(),
            backends: svc_common::MAX_BACKENDS.into(),
            source_ranges: svc_common::MAX_SOURCE_RANGES.into(),
            frontends6: svc_common::MAX_FRONTENDS.into(),
            backends6: svc_common::MAX_BACKENDS.into(),
            source_ranges6: svc_common::MAX_SOURCE_RANGES.into(),
        }
    }

    /// One entry more of the frontend (`v6`: IPv6) map.
    fn add_frontend(&mut self, v6: bool, n: u64) {
        *if v6 {
            &mut self.frontends6
        } else {
            &mut self.frontends
        } += n;
    }

    /// `n` entries more of a backend map.
    fn add_backends(&mut self, v6: bool, n: u64) {
        *if v6 {
            &mut self.backends6
        } else {
            &mut self.backends
        } += n;
    }

    /// `n` entries more of a source-range map.
    fn add_ranges(&mut self, v6: bool, n: u64) {
        *if v6 {
            &mut self.source_ranges6
        } else {
            &mut self.source_ranges
        } += n;
    }
}

impl Entries {
    fn zip(&self, o: &Entries, f: impl Fn(u64, u64) -> u64) -> Entries {
        Entries {
            frontends: f(self.frontends, o.frontends),
            slots: f(self.slots, o.slots),
            backends: f(self.backends, o.backends),
            source_ranges: f(self.source_ranges, o.source_ranges),
            frontends6: f(self.frontends6, o.frontends6),
            backends6: f(self.backends6, o.backends6),
            source_ranges6: f(self.source_ranges6, o.source_ranges6),
        }
    }

    fn plus(&self, o: &Entries) -> Entries {
        self.zip(o, |a, b| a + b)
    }

    fn minus(&self, o: &Entries) -> Entries {
        self.zip(o, u64::saturating_sub)
    }
}

/// Whether a frontend key is an IPv6 one.
fn is_v6(key: &AnyFrontendKey) -> bool {
    matches!(key, AnyFrontendKey::V6(_))
}

/// The entries a programmed frontend holds (its backends are shared, so not counted here).
fn held_by(key: &AnyFrontendKey, fe: &ProgrammedFrontend) -> Entries {
    let mut e = Entries {
        slots: fe.slots.iter().flatten().count() as u64,
        ..Entries::default()
    };
    e.add_frontend(is_v6(key), 1);
    e.add_ranges(is_v6(key), fe.source_ranges.len() as u64);
    e
}

/// The limits [`admit`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The maps' `max_entries`.
    pub capacity: Entries,
    /// The largest share of each map one Service may use, in percent (1–100).
    pub service_share_percent: u8,
}

impl Limits {
    /// The per-Service budget: `service_share_percent` of each map, at least one entry.
    pub fn per_service(&self) -> Entries {
        let share =
            |cap: u64| (cap * u64::from(self.service_share_percent.clamp(1, 100)) / 100).max(1);
        self.capacity.zip(&Entries::default(), |cap, _| share(cap))
    }
}

/// What [`admit`] decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// Refused Services that were programmed before: leave their frontends as they are.
    pub held: BTreeSet<ObjectRef>,
    /// Refused Services that were not programmed: not programmed now either.
    pub refused: BTreeSet<ObjectRef>,
    /// One per refused or held Service: the object, the field and the numbers.
    pub problems: BTreeMap<ObjectRef, Problem>,
    /// The maps' entries once the plan is written (an upper bound; see the module docs).
    pub usage: Entries,
}

impl Admission {
    /// Every Service not let in, held or not.
    pub fn not_admitted(&self) -> impl Iterator<Item = &ObjectRef> {
        self.held.iter().chain(&self.refused)
    }
}

/// What the maps hold now, counted from `state`.
pub fn usage(state: &Programmed) -> Entries {
    // Kept by `Programmed` as frontends come and go: called after every plan, a sum over
    // every frontend here cost a few ms per change at 100k Services.
    let (slots, (source_ranges, source_ranges6)) = state.held();
    let (frontends, frontends6) = state.frontend_counts();
    let (backends, backends6) = state.backend_counts();
    Entries {
        frontends,
        slots,
        backends,
        source_ranges,
        frontends6,
        backends6,
        source_ranges6,
    }
}

/// Decides which Services of `desired` fit (see the module docs) and removes the frontends of
/// those that do not from `desired`. `scope`: the Services this plan covers (`None`: every
/// Service, a full plan); programmed frontends of Services outside it stay as they are and are
/// counted as such. Frontends of `state` that the plan removes (owned by a Service in scope that
/// no longer wants them, or, in a full plan, wanted by nobody) are credited first.
pub fn admit(
    state: &Programmed,
    desired: &mut Desired,
    scope: Option<&BTreeSet<ObjectRef>>,
    limits: &Limits,
) -> Admission {
    let in_scope = |s: &ObjectRef| scope.is_none_or(|set| set.contains(s));
    let mut by_service: BTreeMap<&ObjectRef, Vec<(AnyFrontendKey, DesiredRef)>> = BTreeMap::new();
    for (key, f) in desired.iter_any() {
        if in_scope(f.service()) {
            by_service.entry(f.service()).or_default().push((key, f));
        }
    }

    // Start from what the maps hold, less what the plan deletes before it puts anything:
    // frontends nobody wants any more whose owner is not in `by_service` (a full plan deletes
    // unowned ones; a Service in scope that wants nothing loses all of its). The frontends a
    // Service let in drops are credited when it is let in (a held one keeps them).
    let mut used = usage(state);
    let goes = |key: &AnyFrontendKey, fe: &ProgrammedFrontend| {
        let unwanted = !desired.contains(key);
        let goes = match fe.owner.as_deref() {
            Some(owner) => in_scope(owner) && !by_service.contains_key(owner),
            None => scope.is_none(),
        };
        unwanted && goes
    };
    // An incremental plan can only remove frontends its Services own: walk those, not every
    // frontend (the same set, in O(scope) rather than O(all frontends)).
    let candidates: Box<dyn Iterator<Item = (&AnyFrontendKey, &ProgrammedFrontend)>> = match scope {
        None => Box::new(state.frontends().iter()),
        Some(set) => Box::new(
            set.iter()
                .flat_map(|svc| state.frontends_of(svc))
                .filter_map(|k| state.frontends().get_key_value(k)),
        ),
    };
    for (key, fe) in candidates {
        if goes(key, fe) {
            used = used.minus(&held_by(key, fe));
        }
    }

    // Programmed Services first (name order), then new ones smallest first.
    let mut order: Vec<(bool, Entries, &ObjectRef)> = by_service
        .iter()
        .map(|(svc, fes)| {
            let programmed = state.frontends_of(svc).next().is_some();
            (!programmed, own_need(fes), *svc)
        })
        .collect();
    order.sort_by(|a, b| {
        (a.0, if a.0 { sort_key(&a.1) } else { [0; 4] }, a.2).cmp(&(
            b.0,
            if b.0 { sort_key(&b.1) } else { [0; 4] },
            b.2,
        ))
    });

    let budget = limits.per_service();
    let cap = limits.capacity;
    let mut new_backends: HashSet<AnyBackend> = HashSet::new();
    let mut out = Admission::default();
    for (is_new, need, svc) in order {
        let fes = &by_service[svc];
        let over_budget = need
            .named()
            .into_iter()
            .zip(budget.named())
            .find(|((_, n), (_, b))| n > b);
        let refusal = if let Some(((map, n), (_, b))) = over_budget {
            let c = capacity_of(&cap, map);
            Some((
                map,
                if n > c {
                    format!("needs {n} entries of {map}, more than the map holds ({c})")
                } else {
                    format!(
                        "needs {n} entries of {map}, over the per-Service budget of {b} \
                     ({}% of {c}, --max-service-share)",
                        limits.service_share_percent,
                    )
                },
            ))
        } else {
            let (delta, added) = growth(state, fes, &new_backends);
            // Frontends this Service drops go before anything is put.
            let dropped = state
                .frontends_of(svc)
                .filter(|k| !desired.contains(k))
                .filter_map(|k| state.frontends().get_key_value(k))
                .fold(Entries::default(), |acc, (k, fe)| acc.plus(&held_by(k, fe)));
            let mut after = used.minus(&dropped).plus(&delta);
            after = after.plus(&backend_entries(new_backends.iter().chain(&added)));
            match after
                .named()
                .into_iter()
                .zip(cap.named())
                .find(|((_, a), (_, c))| a > c)
            {
                Some(((map, a), (_, c))) => {
                    let n = need
                        .named()
                        .into_iter()
                        .find(|(m, _)| *m == map)
                        .map_or(0, |(_, n)| n);
                    Some((
                        map,
                        format!(
                            "needs {n} entries of {map}, which would then hold {a} of its {c}: \
                             the map is full"
                        ),
                    ))
                }
                None => {
                    used = used.minus(&dropped).plus(&delta);
                    new_backends.extend(added);
                    None
                }
            }
        };
        let Some((map, why)) = refusal else { continue };
        // The part of the Service that fills `map`: its ports make frontends, its source
        // ranges entries of their own, its endpoints (per port) slots and backends.
        let field = match map {
            svc_common::MAP_FRONTENDS | svc_common::MAP_FRONTENDS6 => "spec.ports",
            svc_common::MAP_SOURCE_RANGES | svc_common::MAP_SOURCE_RANGES6 => {
                "spec.loadBalancerSourceRanges"
            }
            _ => "endpoints",
        };
        let fate = if is_new {
            out.refused.insert(svc.clone());
            "not programmed"
        } else {
            out.held.insert(svc.clone());
            "kept as programmed before, this change not applied"
        };
        out.problems.insert(
            svc.clone(),
            Problem::new(format!("Service {svc}"), field, format!("{why}; {fate}")),
        );
    }
    used = used.plus(&backend_entries(new_backends.iter()));
    out.usage = used;

    if !out.held.is_empty() || !out.refused.is_empty() {
        desired.retain_services(|s| !out.held.contains(s) && !out.refused.contains(s));
    }
    out
}

/// The backend-map entries `backends` take, per family.
fn backend_entries<'a>(backends: impl Iterator<Item = &'a AnyBackend>) -> Entries {
    let mut e = Entries::default();
    for b in backends {
        e.add_backends(matches!(b, AnyBackend::V6(_)), 1);
    }
    e
}

/// Smallest first: slots, then backends, frontends and source ranges (both families summed).
fn sort_key(n: &Entries) -> [u64; 4] {
    [
        n.slots,
        n.backends + n.backends6,
        n.frontends + n.frontends6,
        n.source_ranges + n.source_ranges6,
    ]
}

fn capacity_of(cap: &Entries, map: &str) -> u64 {
    cap.named()
        .into_iter()
        .find(|(m, _)| *m == map)
        .map_or(0, |(_, c)| c)
}

/// Slots a desired frontend writes: one per distinct backend, at most
/// [`MAX_BACKENDS_PER_FRONTEND`] (what [`crate::reconcile`] programs).
fn slots_of(f: &DesiredRef) -> u64 {
    (f.backend_len() as u64).min(u64::from(MAX_BACKENDS_PER_FRONTEND))
}

/// A Service's own need, as if the maps were empty: for the per-Service budget and the order.
fn own_need(fes: &[(AnyFrontendKey, DesiredRef)]) -> Entries {
    let mut backends: HashSet<AnyBackend> = HashSet::new();
    let mut need = Entries::default();
    for (key, f) in fes {
        need.add_frontend(is_v6(key), 1);
        need.slots += slots_of(f);
        need.add_ranges(is_v6(key), f.prefix_len() as u64);
        backends.extend(f.backends(MAX_BACKENDS_PER_FRONTEND as usize));
    }
    need.plus(&backend_entries(backends.iter()))
}

/// What letting a Service in adds to the maps' peak: new frontends, slots beyond each kept
/// frontend's current ones, source ranges it does not hold yet, and backends neither
/// programmed nor added by a Service let in before (`taken`); plus those backends.
fn growth(
    state: &Programmed,
    fes: &[(AnyFrontendKey, DesiredRef)],
    taken: &HashSet<AnyBackend>,
) -> (Entries, HashSet<AnyBackend>) {
    let mut delta = Entries::default();
    let mut added = HashSet::new();
    for (key, f) in fes {
        let slots = slots_of(f);
        match state.frontends().get(key) {
            Some(old) => {
                let old_slots = old.slots.iter().flatten().count() as u64;
                delta.slots += slots.saturating_sub(old_slots);
                let new_ranges = f
                    .prefixes()
                    .iter()
                    .filter(|p| old.source_ranges.binary_search(p).is_err())
                    .count() as u64;
                delta.add_ranges(is_v6(key), new_ranges);
            }
            None => {
                delta.add_frontend(is_v6(key), 1);
                delta.slots += slots;
                delta.add_ranges(is_v6(key), f.prefix_len() as u64);
            }
        }
        for b in f.backends(MAX_BACKENDS_PER_FRONTEND as usize) {
            if state.backend_id(&b).is_none() && !taken.contains(&b) {
                added.insert(b);
            }
        }
    }
    (delta, added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fake::FakeDataplane;
    use crate::dataplane::Dataplane;
    use crate::model::DesiredFrontend;
    use crate::reconcile::{plan_in_place_holding, plan_services_in_place};
    use svc_common::{Backend, FrontendKey, PROTO_TCP, SCOPE_ANY};

    /// Frontend `port` of Service `name` (each Service has its own ClusterIP 10.96.0.`ip`).
    fn fk(ip: u8, port: u16) -> FrontendKey {
        FrontendKey {
            addr: [10, 96, 0, ip],
            port,
            proto: PROTO_TCP,
            scope: SCOPE_ANY,
        }
    }

    fn be(n: u16) -> Backend {
        Backend {
            addr: [10, 244, (n >> 8) as u8, n as u8],
            port: 8080,
            proto: PROTO_TCP,
            flags: 0,
        }
    }

    /// Service `name` at 10.96.0.`ip` with `ports` ports, each to backends `backends`.
    fn service(ip: u8, name: &str, ports: u16, backends: std::ops::Range<u16>) -> Desired {
        let backends: Vec<Backend> = backends.map(be).collect();
        Desired {
            frontends: (0..ports)
                .map(|p| {
                    (
                        fk(ip, 80 + p),
                        DesiredFrontend {
                            service: ObjectRef::new("default", name),
                            port_name: String::new(),
                            backends: backends.clone(),
                            affinity_timeout_s: 0,
                            flags: 0,
                            source_ranges: vec![],
                        },
                    )
                })
                .collect(),
            ..Desired::default()
        }
    }

    fn union(parts: Vec<Desired>) -> Desired {
        let mut d = Desired::default();
        for p in parts {
            d.frontends.extend(p.frontends);
        }
        d
    }

    fn limits(frontends: u64, slots: u64, backends: u64, share: u8) -> Limits {
        Limits {
            capacity: Entries {
                frontends,
                slots,
                backends,
                source_ranges: 64,
                ..Entries::abi()
            },
            service_share_percent: share,
        }
    }

    fn svc(name: &str) -> ObjectRef {
        ObjectRef::new("default", name)
    }

    /// A fake with `limits`' capacity: a put that does not fit fails with E2BIG.
    fn fake(limits: &Limits) -> FakeDataplane {
        FakeDataplane::with_capacity(limits.capacity)
    }

    /// A full plan with admission, written to `fake`; panics on a failed write.
    fn sync(
        state: &mut Programmed,
        fake: &mut FakeDataplane,
        mut desired: Desired,
        limits: &Limits,
    ) -> Admission {
        let admission = admit(state, &mut desired, None, limits);
        let (ops, _) = plan_in_place_holding(state, &desired, &admission.held);
        for op in &ops {
            fake.apply(op).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(fake.snapshot, state.to_snapshot());
        assert!(usage(state).frontends <= limits.capacity.frontends);
        admission
    }

    #[test]
    fn the_fake_refuses_a_put_into_a_full_map_as_the_kernel_does() {
        // Without admission, the plan's first put that does not fit fails, and nothing after it
        // is written: what took every Service's routing away.
        let limits = limits(8, 16, 16, 100);
        let mut fake = fake(&limits);
        let desired = union(vec![
            service(1, "huge", 1, 0..20),
            service(2, "small", 1, 100..102),
        ]);
        let mut state = Programmed::default();
        let (ops, _) = plan_in_place_holding(&mut state, &desired, &BTreeSet::new());
        let failed = ops.iter().position(|op| fake.apply(op).is_err());
        assert!(failed.is_some(), "a put beyond capacity must fail");
        assert!(
            fake.snapshot.frontends.is_empty(),
            "the small Service never got written"
        );
    }

    #[test]
    fn a_service_over_its_share_is_refused_however_empty_the_maps() {
        let limits = limits(100, 100, 100, 25);
        let mut desired = service(1, "greedy", 1, 0..26);
        let a = admit(&Programmed::default(), &mut desired, None, &limits);
        assert!(desired.frontends.is_empty());
        assert_eq!(a.refused, BTreeSet::from([svc("greedy")]));
        let p = &a.problems[&svc("greedy")];
        assert_eq!(p.object, "Service default/greedy");
        assert_eq!(p.field, "endpoints");
        assert!(
            p.message.contains("needs 26 entries of SVC_SLOTS")
                && p.message.contains("per-Service budget of 25"),
            "{p}"
        );
        // 25 is exactly the share: let in.
        let mut desired = service(1, "greedy", 1, 0..25);
        assert!(admit(&Programmed::default(), &mut desired, None, &limits)
            .problems
            .is_empty());
        // Too many ports: the field is spec.ports.
        let mut desired = service(1, "ports", 26, 0..1);
        let a = admit(&Programmed::default(), &mut desired, None, &limits);
        assert_eq!(a.problems[&svc("ports")].field, "spec.ports");
    }

    #[test]
    fn every_valid_service_is_programmed_and_the_one_that_does_not_fit_is_refused() {
        // The case in small: valid Services plus one whose ports × endpoints (60
        // slots) fit the map alone but not beside the others (13). New Services go smallest first, so the offender is the one left out, whatever
        // its name sorts as.
        let limits = limits(64, 64, 64, 100);
        let mut state = Programmed::default();
        let mut fake = fake(&limits);
        let desired = union(vec![
            service(1, "a-hostile", 30, 0..2),
            service(2, "web", 2, 100..103),
            service(3, "dns", 2, 200..202),
            service(4, "api", 1, 100..103),
        ]);
        let a = sync(&mut state, &mut fake, desired, &limits);
        assert_eq!(a.refused, BTreeSet::from([svc("a-hostile")]));
        assert!(a.held.is_empty());
        for s in ["web", "dns", "api"] {
            assert!(
                state.frontends_of(&svc(s)).next().is_some(),
                "{s} programmed"
            );
        }
        // Backends shared by web and api count once: 3 + 2.
        assert_eq!(fake.snapshot.backends.len(), 5);
        assert_eq!(a.usage, usage(&state));
        let why = &a.problems[&svc("a-hostile")].message;
        assert!(
            why.contains("the map is full") && why.contains("not programmed"),
            "{why}"
        );
    }

    #[test]
    fn a_programmed_service_that_no_longer_fits_is_held_as_it_was() {
        let limits = limits(64, 20, 64, 100);
        let mut state = Programmed::default();
        let mut fake = fake(&limits);
        let base = || vec![service(1, "web", 1, 0..8), service(2, "api", 1, 100..108)];
        sync(&mut state, &mut fake, union(base()), &limits);
        let before = fake.snapshot.clone();
        // web scales to 16 endpoints: 16 + 8 slots > 20.
        let grown = union(vec![
            service(1, "web", 1, 0..16),
            service(2, "api", 1, 100..108),
        ]);
        let a = sync(&mut state, &mut fake, grown, &limits);
        assert_eq!(a.held, BTreeSet::from([svc("web")]));
        assert_eq!(
            fake.snapshot, before,
            "web keeps its 8 backends, api is untouched"
        );
        assert!(a.problems[&svc("web")]
            .message
            .contains("kept as programmed before"));
        // api shrinks: the room lets web's change in on the next plan.
        let shrunk = union(vec![
            service(1, "web", 1, 0..16),
            service(2, "api", 1, 100..102),
        ]);
        // api's shrink frees its slots only after its count is written (the peak is the old
        // count), so web is still held in this plan...
        let a = sync(&mut state, &mut fake, shrunk.clone(), &limits);
        assert_eq!(a.held, BTreeSet::from([svc("web")]));
        assert_eq!(fake.snapshot.slots.len(), 8 + 2);
        // ...and gets in with the next one.
        let a = sync(&mut state, &mut fake, shrunk, &limits);
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        assert_eq!(fake.snapshot.slots.len(), 16 + 2);
    }

    #[test]
    fn removals_apply_while_the_maps_are_full_and_a_refused_service_gets_in_after() {
        let limits = limits(4, 64, 64, 100);
        let mut state = Programmed::default();
        let mut fake = fake(&limits);
        sync(&mut state, &mut fake, service(1, "old", 4, 0..2), &limits);
        // A programmed Service keeps its place, though the newcomer is smaller.
        let a = sync(
            &mut state,
            &mut fake,
            union(vec![service(1, "old", 4, 0..2), service(2, "new", 2, 0..2)]),
            &limits,
        );
        assert_eq!(
            a.refused,
            BTreeSet::from([svc("new")]),
            "4 frontends are taken"
        );
        assert_eq!(
            a.problems[&svc("new")].field,
            "spec.ports",
            "frontends come from ports"
        );
        assert_eq!(fake.snapshot.frontends.len(), 4);
        // "old" is deleted while the map is full: its frontends go first, so "new" fits in
        // the same plan.
        let a = sync(&mut state, &mut fake, service(2, "new", 2, 0..2), &limits);
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        assert_eq!(fake.snapshot.frontends.len(), 2);
        assert!(state.frontends_of(&svc("old")).next().is_none());
    }

    #[test]
    fn an_incremental_plan_counts_the_services_outside_it_as_they_are() {
        let limits = limits(64, 10, 64, 100);
        let mut state = Programmed::default();
        let mut fake = fake(&limits);
        sync(&mut state, &mut fake, service(1, "web", 1, 0..8), &limits);
        // Only "api" changed: 8 + 4 slots > 10, refused; web untouched.
        let mut desired = union(vec![
            service(1, "web", 1, 0..8),
            service(2, "api", 1, 100..104),
        ]);
        let scope = BTreeSet::from([svc("api")]);
        let a = admit(&state, &mut desired, Some(&scope), &limits);
        assert_eq!(a.refused, BTreeSet::from([svc("api")]));
        let (ops, _) = plan_services_in_place(&mut state, &desired, &scope);
        assert!(ops.is_empty(), "nothing to write: {ops:?}");
        // With 2 endpoints it fits.
        let mut desired = union(vec![
            service(1, "web", 1, 0..8),
            service(2, "api", 1, 100..102),
        ]);
        let a = admit(&state, &mut desired, Some(&scope), &limits);
        assert!(a.problems.is_empty());
        let (ops, _) = plan_services_in_place(&mut state, &desired, &scope);
        for op in &ops {
            fake.apply(op).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(fake.snapshot.slots.len(), 10);
    }

    #[test]
    fn a_growing_frontend_counts_its_old_and_new_slots_at_the_peak() {
        // 6 slots programmed; growing to 8 peaks at 8 (slots are put before the count), not 14.
        let limits = limits(64, 8, 64, 100);
        let mut state = Programmed::default();
        let mut fake = fake(&limits);
        sync(&mut state, &mut fake, service(1, "web", 1, 0..6), &limits);
        let a = sync(&mut state, &mut fake, service(1, "web", 1, 0..8), &limits);
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        // Replacing every backend (0..8 → 100..108) keeps 8 slots: fits too.
        let a = sync(
            &mut state,
            &mut fake,
            service(1, "web", 1, 100..108),
            &limits,
        );
        assert!(a.problems.is_empty(), "{:?}", a.problems);
    }
}
