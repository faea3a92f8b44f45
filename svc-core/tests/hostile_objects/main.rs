//! Hostile objects: property tests of the model (and of the planner fed by it) over arbitrary
//! Services and EndpointSlices, of the kind a `--manifests` directory or a careless (or
//! malicious) user with Service rights can produce: long port lists with duplicates, protocols
//! and addresses that are no such thing, ClusterIPs shared by several Services, names at and past
//! the length limits, Unicode, slices labelled for the wrong Service, out-of-range numbers.
//!
//! Every target is its own test, run with [`cases`] cases (10 000 unless `PROPTEST_CASES` says
//! otherwise; `PROPTEST_RNG_SEED` fixes the seed). Seeds are random per run, so each CI run
//! explores new objects; a failure prints the shrunk objects as JSON manifests, which is the
//! reproducer. Nothing is written to disk (no regression files).
//!
//! 1. Target 1, [`desired_never_panics_and_names_every_problem`]: `desired()` (and the
//!    incremental `desired_for*`, and `health_checks`) never panic; every problem names an
//!    object given and a non-empty field of it; the output is well formed (sorted backends, no
//!    refused address, source-range flags matching ranges, scoped entries paired) and bounded by
//!    the input, in entries, in memory allocated and in time.
//! 2. Target 2, [`refusals_are_local`]: adding one hostile Service (and its slices) to valid
//!    Services changes none of their frontends, except the keys it claims first. What the model
//!    does, and this test pins: an address:port:protocol claimed by two Services goes to the
//!    smallest `namespace/name` (`desired()`'s walk order), the other gets a problem at the
//!    field that claimed it. So a hostile Service sorting *before* a valid one takes exactly the
//!    keys they share (with their `SCOPE_EXTERNAL` siblings), whether it claims them as
//!    ClusterIP, NodePort, external or ingress IP, and the valid Service is told (one problem
//!    per key taken); one sorting after gets nothing there and is told. Nothing else of the
//!    valid Services changes, and they gain nothing.
//!    [`hostile_slices_only_add_endpoints`]: a hostile slice labelled for a valid Service costs
//!    only its own bad endpoints: that Service keeps every frontend and every backend.
//! 3. Target 3, [`hostile_sequences_keep_the_invariant_and_converge`]: reconcile.rs's
//!    `random_sequences_keep_the_invariant_and_converge` drives the planner with synthetic
//!    `Desired`s; this feeds it the model's output for sequences of hostile changes (Services
//!    added or removed, slices put or removed) instead, through both paths the agent uses
//!    (incremental `plan_services` for the touched Services, then a full `plan`), applying every
//!    op to the `FakeDataplane`, which checks the update-order invariant after each one. After
//!    each step a second plan is empty (converged) and no frontend of an untouched Service was
//!    lost (except a key a touched Service claims first, as in 2); after the last, the maps hold
//!    what the planner believes and adopting them plans nothing.
//!
//! [`one_slice_of_10k_endpoints_in_a_service_of_3000_ports`] is the one-off size case. The last
//! three tests are defects the targets found, reduced to plain objects.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the library.
#![allow(unused_crate_dependencies)]
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use svc_common::{
    FrontendKey, BACKEND_F_LOCAL, BACKEND_F_TERMINATING, FRONTEND_F_EXTERNAL_SCOPE,
    FRONTEND_F_SOURCE_RANGES, MAX_BACKENDS_PER_FRONTEND, PROTO_TCP, PROTO_UDP, SCOPE_ANY,
    SCOPE_EXTERNAL,
};
use svc_core::dataplane::fake::FakeDataplane;
use svc_core::dataplane::{Dataplane, MapOp};
use svc_core::model::{
    desired, desired_for, desired_for_indexed, health_checks, Desired, NodeContext, ObjectRef,
    Objects, SliceOwners, SlimObjects, LABEL_HEADLESS, LABEL_SERVICE_NAME,
    LABEL_SERVICE_PROXY_NAME, MAX_AFFINITY_TIMEOUT_S,
};
use svc_core::reconcile::{plan, plan_in_place, plan_services_in_place, Plan, Programmed};

mod checks;
mod generators;
mod manifests;
mod memory;
mod runner;

use checks::*;
use generators::*;
use manifests::*;
use memory::*;
use runner::*;

// ---------------------------------------------------------------------------------------------
// Target 1.

#[derive(Clone, Debug)]
struct Hostile {
    services: Vec<Manifest>,
    slices: Vec<Manifest>,
}

fn hostile_objects(max_ports: usize, max_endpoints: usize) -> BoxedStrategy<Hostile> {
    (
        prop::collection::vec(hostile_service(max_ports), 0..5),
        prop::collection::vec(hostile_slice(max_endpoints), 0..6),
    )
        .prop_map(|(services, slices)| Hostile { services, slices })
        .boxed()
}

#[test]
fn desired_never_panics_and_names_every_problem() {
    let worst = Cell::new((Duration::ZERO, 0usize, 0f64));
    // Coverage: how often each kind of problem (field without indices) came up.
    let fields = RefCell::new(BTreeMap::<String, usize>::new());
    let served = Cell::new(0usize);
    run(
        "desired_never_panics_and_names_every_problem",
        (hostile_objects(50, 20), node_context()),
        |(h, node)| {
            let objects = objects(&h.services, &h.slices)?;
            let (d, took, peak) = measured(|| desired(&objects, &node));
            check_desired(&objects, &d)?;
            served.set(served.get() + usize::from(!d.frontends.is_empty()));
            for p in &d.problems {
                let kind: String = p
                    .field
                    .split('[')
                    .map(|s| s.split_once(']').map_or(s, |(_, r)| r))
                    .collect::<Vec<_>>()
                    .join("[]");
                *fields.borrow_mut().entry(kind).or_default() += 1;
            }

            // Bounded: entries by the input; memory by input and output; time, generously.
            let (max_frontends, max_problems) = bounds(&h.services, &h.slices, &node);
            prop_assert!(
                d.frontends.len() <= max_frontends,
                "{} frontends",
                d.frontends.len()
            );
            prop_assert!(
                d.problems.len() <= max_problems,
                "{} problems",
                d.problems.len()
            );
            let input: usize = h
                .services
                .iter()
                .chain(&h.slices)
                .map(|m| m.0.to_string().len())
                .sum();
            let output: usize = d
                .frontends
                .values()
                .map(|f| 1 + f.backends.len())
                .sum::<usize>()
                + d.problems.len();
            let allowed = 64 * 1024 + 32 * input + 1024 * output;
            prop_assert!(
                peak <= allowed,
                "{peak} bytes allocated at once; {allowed} allowed"
            );
            prop_assert!(
                took < Duration::from_secs(1),
                "desired() took {took:?} of CPU"
            );
            let (t, p, r) = worst.get();
            worst.set((
                t.max(took),
                p.max(peak),
                r.max(peak as f64 / allowed as f64),
            ));

            // One backend per address:port of a frontend (kube-proxy keeps one endpoint per
            // address:port; see one_endpoint_address_on_two_nodes_is_one_backend).
            for (key, f) in &d.frontends {
                let at: BTreeSet<([u8; 4], u16)> =
                    f.backends.iter().map(|b| (b.addr, b.port)).collect();
                prop_assert_eq!(at.len(), f.backends.len(), "{:?}: {:?}", key, f.backends);
            }

            // Deterministic, and the incremental paths see the same objects the same way.
            prop_assert_eq!(&desired(&objects, &node), &d);
            let all: BTreeSet<ObjectRef> = objects.services.keys().cloned().collect();
            prop_assert_eq!(&desired_for(&objects, &node, &all), &d);
            let slim = SlimObjects::of(&objects);
            let owners = SliceOwners::build(&slim.slices);
            prop_assert_eq!(&desired_for_indexed(&slim, &node, &all, &owners), &d);
            for hc in health_checks(&objects, &node) {
                prop_assert!(objects.services.contains_key(&hc.service) && hc.port != 0);
            }
            Ok(())
        },
    );
    let (t, p, r) = worst.get();
    eprintln!(
        "  slowest desired(): {t:.1?} of CPU; most allocated at once: {p} bytes ({:.0}% of the \
         bound)",
        r * 100.0
    );
    eprintln!(
        "  cases serving something: {}; problems by field: {:?}",
        served.get(),
        fields.borrow()
    );
}

// ---------------------------------------------------------------------------------------------
// Target 2.

/// Points `hostile` at one address:port of `victim` (a valid Service's manifest), the way
/// `how` says: its ClusterIP, an external IP, a LoadBalancer ingress IP (both the CVE-2020-8554
/// shape), or its NodePort. Most random objects would never meet the valid ones otherwise.
fn aim_at(hostile: &mut Manifest, victim: &Manifest, how: usize) {
    let vspec = &victim.0["spec"];
    let vip = vspec["clusterIP"].clone();
    let mut port = vspec["ports"][0].clone();
    let Some(spec) = hostile.0.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    match how {
        0 => {
            spec.insert("clusterIP".into(), vip);
            spec.remove("clusterIPs");
        }
        1 => drop(spec.insert("externalIPs".into(), json!([vip]))),
        2 => {
            spec.insert("type".into(), "LoadBalancer".into());
            hostile.0["status"] = json!({"loadBalancer": {"ingress": [{"ip": vip}]}});
        }
        _ => {
            spec.insert("type".into(), "NodePort".into());
            port["port"] = 9999.into();
        }
    }
    let Some(spec) = hostile.0.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    match spec.get_mut("ports").and_then(Value::as_array_mut) {
        Some(ports) => ports.push(port),
        None => drop(spec.insert("ports".into(), json!([port]))),
    }
}

#[test]
fn refusals_are_local() {
    let strategy = (
        valid_services(4),
        hostile_service(12),
        prop::option::of((any::<Index>(), 0..4usize)),
        prop::collection::vec((any::<bool>(), hostile_slice(8)), 0..3),
    );
    // Coverage: cases where the hostile Service took keys, and where it lost a conflict.
    let (took_keys, lost) = (Cell::new(0usize), Cell::new(0usize));
    run(
        "refusals_are_local",
        strategy,
        |(valid, mut hostile, aim, hostile_slices)| {
            if let Some((victim, how)) = aim {
                aim_at(&mut hostile, &victim.get(&valid).0, how);
            }
            let node = base_node();
            let (svcs, slices): (Vec<Manifest>, Vec<Manifest>) = valid.into_iter().unzip();
            let base_objects = objects(&svcs, &slices)?;
            let base = desired(&base_objects, &node);
            prop_assert!(
                base.problems.is_empty(),
                "valid Services have problems: {:?}",
                base.problems
            );
            prop_assert!(!base.frontends.is_empty());

            let (h_ref, _) = to_service(&hostile)?;
            prop_assume!(!base_objects.services.contains_key(&h_ref));
            let mut all_svcs = svcs.clone();
            all_svcs.push(hostile);
            let mut all_slices = slices.clone();
            for (own, mut s) in hostile_slices {
                if own {
                    label_for(&mut s, &h_ref);
                }
                all_slices.push(s);
            }
            let with_objects = objects(&all_svcs, &all_slices)?;
            // Slices that replace a valid one or join a valid Service are the next test's business.
            for (r, s) in &with_objects.slices {
                let owner = s
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_SERVICE_NAME))
                    .map(|n| ObjectRef::new(r.namespace.clone(), n.clone()));
                prop_assume!(base_objects.slices.get(r).is_none_or(|b| b == s));
                prop_assume!(
                    base_objects.slices.contains_key(r)
                        || !owner.is_some_and(|o| base_objects.services.contains_key(&o))
                );
            }
            let with = desired(&with_objects, &node);

            // Every frontend of a valid Service is unchanged, unless the hostile one took its key
            // (the SCOPE_ANY one: the scoped sibling goes with it) by sorting first.
            let mut taken = BTreeMap::<ObjectRef, usize>::new();
            for (key, fe) in &base.frontends {
                if with.frontends.get(key) == Some(fe) {
                    continue;
                }
                let any = FrontendKey {
                    scope: SCOPE_ANY,
                    ..*key
                };
                let owner = with.frontends.get(&any).map(|f| &f.service);
                prop_assert!(
                    owner == Some(&h_ref) && h_ref < fe.service,
                    "{key:?} of {} changed by adding {h_ref}: {:?} -> {:?}",
                    fe.service,
                    fe,
                    with.frontends.get(key)
                );
                if key.scope == SCOPE_ANY {
                    *taken.entry(fe.service.clone()).or_default() += 1;
                }
            }
            // Valid Services gain nothing either.
            for (key, fe) in &with.frontends {
                if fe.service != h_ref {
                    prop_assert_eq!(base.frontends.get(key), Some(fe), "{:?} appeared", key);
                }
            }
            // Each key taken is reported on the valid Service, at a field; nothing else is.
            let mut told = BTreeMap::<ObjectRef, usize>::new();
            for p in &with.problems {
                let Some(victim) = base_objects
                    .services
                    .keys()
                    .find(|r| p.object == format!("Service {r}"))
                else {
                    prop_assert!(
                        p.object == format!("Service {h_ref}")
                            || p.object.starts_with("EndpointSlice "),
                        "problem on an object not added: {p:?}"
                    );
                    continue;
                };
                prop_assert!(
                    !p.field.is_empty()
                        && p.message
                            .contains(&format!("already served for Service {h_ref}")),
                    "valid Service {victim} refused for another reason: {p:?}"
                );
                *told.entry(victim.clone()).or_default() += 1;
            }
            took_keys.set(took_keys.get() + usize::from(!taken.is_empty()));
            prop_assert_eq!(taken, told);
            let h_object = format!("Service {h_ref}");
            lost.set(
                lost.get()
                    + usize::from(with.problems.iter().any(|p| {
                        p.object == h_object
                            && p.message.contains("already served for Service default/m")
                    })),
            );
            check_desired(&with_objects, &with)?;
            Ok(())
        },
    );
    eprintln!(
        "  cases where the hostile Service took keys first: {}; lost a conflict: {}",
        took_keys.get(),
        lost.get()
    );
}

#[test]
fn hostile_slices_only_add_endpoints() {
    let strategy = (
        valid_services(4),
        prop::collection::vec((any::<Index>(), hostile_slice(12)), 1..4),
    );
    run(
        "hostile_slices_only_add_endpoints",
        strategy,
        |(valid, extra)| {
            let node = base_node();
            let (svcs, slices): (Vec<Manifest>, Vec<Manifest>) = valid.into_iter().unzip();
            let base_objects = objects(&svcs, &slices)?;
            let base = desired(&base_objects, &node);
            prop_assert!(base.problems.is_empty(), "{:?}", base.problems);
            let refs: Vec<ObjectRef> = base_objects.services.keys().cloned().collect();
            let mut all_slices = slices.clone();
            for (n, (i, mut s)) in extra.into_iter().enumerate() {
                label_for(&mut s, i.get(&refs));
                // A distinct name: one that replaced a slice would not be *adding* endpoints.
                let name = format!(
                    "{}-extra{n}",
                    s.0["metadata"]["name"].as_str().unwrap_or("")
                );
                s.0["metadata"]["name"] = name.into();
                all_slices.push(s);
            }
            let with_objects = objects(&svcs, &all_slices)?;
            prop_assert_eq!(with_objects.slices.len(), all_slices.len());
            let with = desired(&with_objects, &node);
            check_desired(&with_objects, &with)?;
            prop_assert_eq!(
                base.frontends.keys().collect::<Vec<_>>(),
                with.frontends.keys().collect::<Vec<_>>()
            );
            for (key, before) in &base.frontends {
                let after = &with.frontends[key];
                let tuple = |b: &svc_common::Backend| (b.addr, b.port, b.proto);
                let had: BTreeSet<_> = before.backends.iter().map(tuple).collect();
                let has: BTreeSet<_> = after.backends.iter().map(tuple).collect();
                prop_assert!(
                    had.is_subset(&has),
                    "{key:?} lost backends: {before:?} -> {after:?}"
                );
                prop_assert_eq!(&before.service, &after.service);
                prop_assert_eq!(&before.source_ranges, &after.source_ranges);
                prop_assert_eq!(before.affinity_timeout_s, after.affinity_timeout_s);
            }
            // The slices' problems are theirs.
            for p in &with.problems {
                prop_assert!(p.object.starts_with("EndpointSlice "), "{p:?}");
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Target 3.

#[derive(Clone, Debug)]
enum Step {
    /// A hostile Service, with slices labelled for it.
    AddService(Manifest, Vec<Manifest>),
    RemoveService(Index),
    /// A hostile slice labelled for one of the Services there are (or as generated).
    PutSlice(Option<Index>, Manifest),
    RemoveSlice(Index),
}

fn step() -> BoxedStrategy<Step> {
    prop_oneof![
        3 => (hostile_service(6), prop::collection::vec(hostile_slice(6), 0..2))
            .prop_map(|(s, slices)| Step::AddService(s, slices)),
        1 => any::<Index>().prop_map(Step::RemoveService),
        2 => (prop::option::weighted(0.8, any::<Index>()), hostile_slice(6))
            .prop_map(|(i, s)| Step::PutSlice(i, s)),
        1 => any::<Index>().prop_map(Step::RemoveSlice),
    ]
    .boxed()
}

/// The Service a slice belongs to (its label, in its namespace).
fn owner(slice_ref: &ObjectRef, slice: &EndpointSlice) -> Option<ObjectRef> {
    let name = slice.metadata.labels.as_ref()?.get(LABEL_SERVICE_NAME)?;
    Some(ObjectRef::new(slice_ref.namespace.clone(), name.clone()))
}

fn keys<V>(m: &BTreeMap<ObjectRef, V>) -> Vec<ObjectRef> {
    m.keys().cloned().collect()
}

/// Applies `step` to `o`; returns the Services whose own frontends may have changed: those
/// put or removed, and the owners (before and after) of slices put or removed.
fn apply_step(o: &mut Objects, step: &Step) -> Result<BTreeSet<ObjectRef>, TestCaseError> {
    let mut touched = BTreeSet::new();
    let mut put_slice = |o: &mut Objects, r: ObjectRef, s: EndpointSlice| {
        touched.extend(owner(&r, &s));
        if let Some(old) = o.slices.insert(r.clone(), s) {
            touched.extend(owner(&r, &old));
        }
    };
    match step {
        Step::AddService(svc, slices) => {
            let (r, s) = to_service(svc)?;
            for slice in slices {
                let mut slice = slice.clone();
                label_for(&mut slice, &r);
                let (sr, sl) = to_slice(&slice)?;
                put_slice(o, sr, sl);
            }
            o.services.insert(r.clone(), s);
            touched.insert(r);
        }
        Step::RemoveService(i) => {
            if !o.services.is_empty() {
                let r = i.get(&keys(&o.services)).clone();
                o.services.remove(&r);
                touched.insert(r);
            }
        }
        Step::PutSlice(i, slice) => {
            let mut slice = slice.clone();
            if let Some(i) = i.filter(|_| !o.services.is_empty()) {
                label_for(&mut slice, i.get(&keys(&o.services)));
            }
            let (r, s) = to_slice(&slice)?;
            put_slice(o, r, s);
        }
        Step::RemoveSlice(i) => {
            if !o.slices.is_empty() {
                let r = i.get(&keys(&o.slices)).clone();
                let old = o.slices.remove(&r).expect("listed");
                touched.extend(owner(&r, &old));
            }
        }
    }
    Ok(touched)
}

/// Applies `ops` to the fake, which checks the update-order invariant after every one.
fn apply_ops(fake: &mut FakeDataplane, ops: &[MapOp]) -> Result<(), TestCaseError> {
    for op in ops {
        if let Err(e) = fake.apply(op) {
            return Err(TestCaseError::fail(format!("{e}\nplan: {ops:#?}")));
        }
    }
    Ok(())
}

/// [`apply_ops`], then the fake must hold what the plan says it leads to.
fn apply(fake: &mut FakeDataplane, p: &Plan) -> Result<(), TestCaseError> {
    apply_ops(fake, &p.ops)?;
    prop_assert_eq!(&fake.snapshot, &p.next.to_snapshot());
    fake.check_all().map_err(TestCaseError::fail)?;
    Ok(())
}

/// Whether `ops` write any frontend of `keys` (its entry or its slots), given their ids.
fn writes_to(ops: &[MapOp], keys: &BTreeSet<FrontendKey>, ids: &BTreeSet<u32>) -> bool {
    ops.iter().any(|op| match op {
        MapOp::PutFrontend { key, .. } | MapOp::DeleteFrontend { key } => keys.contains(key),
        MapOp::PutSlot { key, .. } | MapOp::DeleteSlot { key } => ids.contains(&key.frontend_id),
        _ => false,
    })
}

#[test]
fn hostile_sequences_keep_the_invariant_and_converge() {
    let strategy = (valid_services(3), prop::collection::vec(step(), 1..4));
    // Coverage, and a measure of what the incremental plan alone does: steps where it rewrote a
    // frontend of an untouched Service for a touched one, which the full plan then gave back.
    let (steps_run, hijacked) = (Cell::new(0usize), Cell::new(0usize));
    run(
        "hostile_sequences_keep_the_invariant_and_converge",
        strategy,
        |(valid, steps)| {
            let node = base_node();
            let (svcs, slices): (Vec<Manifest>, Vec<Manifest>) = valid.into_iter().unzip();
            let mut objects = objects(&svcs, &slices)?;
            let mut fake = FakeDataplane::default();
            let mut last = desired(&objects, &node);
            let first = plan(&Programmed::default(), &last);
            apply(&mut fake, &first)?;
            let mut state = first.next;
            for (n, step) in steps.iter().enumerate() {
                let changed = apply_step(&mut objects, step)?;
                steps_run.set(steps_run.get() + 1);

                // The incremental path, as the agent runs it for a batch of changes…
                let partial = desired_for(&objects, &node, &changed);
                let (incremental_ops, _) = plan_services_in_place(&mut state, &partial, &changed);
                apply_ops(&mut fake, &incremental_ops)?;
                // …then the full plan that settles what it cannot see.
                let d = desired(&objects, &node);
                let (ops, _) = plan_in_place(&mut state, &d);
                apply_ops(&mut fake, &ops)?;

                // Converged: nothing left to write, from the state or (last step, for time) from
                // the maps re-read; and the maps hold what the state says.
                let again = plan(&state, &d);
                prop_assert!(again.ops.is_empty(), "second plan writes {:?}", again.ops);
                prop_assert!(fake.snapshot.frontends.keys().eq(d.frontends.keys()));
                if n + 1 == steps.len() {
                    prop_assert_eq!(&fake.snapshot, &state.to_snapshot());
                    fake.check_all().map_err(TestCaseError::fail)?;
                    check_desired(&objects, &d)?;
                    let adopted = plan(&Programmed::from_snapshot(&fake.snapshot), &d);
                    prop_assert!(adopted.ops.is_empty(), "adopting writes {:?}", adopted.ops);
                }

                // Nothing already programmed for an untouched Service was lost, unless a touched
                // Service sorting before it now claims the key.
                let mut kept = BTreeSet::new();
                for (key, fe) in &last.frontends {
                    if changed.contains(&fe.service) {
                        continue;
                    }
                    if d.frontends.get(key) == Some(fe) {
                        kept.insert(*key);
                        continue;
                    }
                    let any = FrontendKey {
                        scope: SCOPE_ANY,
                        ..*key
                    };
                    let owner = d.frontends.get(&any).map(|f| &f.service);
                    prop_assert!(
                        owner.is_some_and(|o| changed.contains(o) && *o < fe.service),
                        "{key:?} of untouched {} lost after {step:?}: now {:?}",
                        fe.service,
                        d.frontends.get(key)
                    );
                }
                let ids: BTreeSet<u32> = kept
                    .iter()
                    .filter_map(|k| state.frontend(*k))
                    .map(|f| f.id)
                    .collect();
                hijacked
                    .set(hijacked.get() + usize::from(writes_to(&incremental_ops, &kept, &ids)));
                last = d;
            }
            Ok(())
        },
    );
    eprintln!(
        "  steps: {}; steps whose incremental plan wrote to a frontend an untouched Service \
         keeps (given back by the full plan): {}",
        steps_run.get(),
        hijacked.get()
    );
    assert_eq!(
        hijacked.get(),
        0,
        "the incremental plan must leave frontends of Services outside its scope alone"
    );
}

// ---------------------------------------------------------------------------------------------
// The one-off size case.

/// One Service with 3 000 ports (NodePort, `externalTrafficPolicy: Local`), one slice of 10 000
/// ready endpoints and 100 ports: `desired()` completes, in bounded time and memory, without a
/// problem. Prints both.
#[test]
fn one_slice_of_10k_endpoints_in_a_service_of_3000_ports() {
    let ports: Vec<Value> = (0..3_000)
        .map(|j| json!({"name": format!("p{j}"), "port": 1 + j, "nodePort": 30_000 + j}))
        .collect();
    let svc = json!({
        "metadata": {"namespace": "default", "name": "big"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": ports,
                 "externalTrafficPolicy": "Local"},
    });
    let slice_ports: Vec<Value> = (0..100)
        .map(|j| json!({"name": format!("p{j}"), "port": 8_000 + j}))
        .collect();
    let eps: Vec<Value> = (0..10_000u32)
        .map(|k| {
            let [_, _, c, d] = k.to_be_bytes();
            json!({"addresses": [format!("10.1.{c}.{d}")],
                   "nodeName": if k % 10 == 0 { "node-a" } else { "node-b" }})
        })
        .collect();
    let slice = json!({
        "metadata": {"namespace": "default", "name": "big-0",
                     "labels": {LABEL_SERVICE_NAME: "big"}},
        "addressType": "IPv4",
        "ports": slice_ports,
        "endpoints": eps,
    });
    let objects = objects(&[Manifest(svc)], &[Manifest(slice)]).expect("objects");
    let node = base_node();
    let (d, took, peak) = measured(|| desired(&objects, &node));
    eprintln!(
        "desired() of 3000 ports x 10000 endpoints: {took:.2?} of CPU, {} frontends, {} MiB \
         allocated at once",
        d.frontends.len(),
        peak >> 20
    );
    assert!(
        d.problems.is_empty(),
        "{:?}",
        &d.problems[..d.problems.len().min(5)]
    );
    // Per port: the ClusterIP, and the NodePort on the node's address in both scopes.
    assert_eq!(d.frontends.len(), 3 * 3_000);
    let full = d
        .frontends
        .values()
        .filter(|f| f.backends.len() == 10_000)
        .count();
    let local = d
        .frontends
        .values()
        .filter(|f| f.backends.len() == 1_000)
        .count();
    assert_eq!((full, local), (200, 100));
    // Linear: ~300 frontends of 10 000 backends (12 bytes each) is ~36 MB; allow 8x.
    assert!(peak < 300 << 20, "{peak} bytes");
    assert!(took < Duration::from_secs(60), "{took:?} of CPU");
}

/// Found by [`hostile_sequences_keep_the_invariant_and_converge`], reduced to ordinary objects:
/// `externalTrafficPolicy: Local` → `Cluster` while this node's only endpoint is terminating
/// (so the `SCOPE_EXTERNAL` entry names a backend the `SCOPE_ANY` one does not). The scoped
/// entry is removed after its sibling is rewritten, but its backend must not go before it.
#[test]
fn etp_local_to_cluster_with_a_terminating_local_endpoint() {
    let svc = |etp: &str| {
        Manifest(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "externalIPs": ["192.0.2.10"],
                     "ports": [{"port": 80}], "externalTrafficPolicy": etp},
        }))
    };
    let slice = Manifest(json!({
        "metadata": {"namespace": "default", "name": "web-0",
                     "labels": {LABEL_SERVICE_NAME: "web"}},
        "addressType": "IPv4",
        "ports": [{"port": 8080}],
        "endpoints": [
            {"addresses": ["10.244.0.5"], "nodeName": "node-a",
             "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.244.1.5"], "nodeName": "node-b"},
        ],
    }));
    let node = base_node();
    let mut fake = FakeDataplane::default();
    let mut state = Programmed::default();
    for etp in ["Local", "Cluster"] {
        let objects = objects(&[svc(etp)], std::slice::from_ref(&slice)).expect("objects");
        let p = plan(&state, &desired(&objects, &node));
        apply(&mut fake, &p).unwrap_or_else(|e| panic!("externalTrafficPolicy {etp}: {e}"));
        state = p.next;
    }
}

/// Found by [`hostile_sequences_keep_the_invariant_and_converge`] (its "incremental plan wrote
/// to a frontend an untouched Service keeps" count): the incremental path (`desired_for` +
/// `plan_services`, what the agent runs for every batch of changes) does not see Services
/// outside the batch, so a new Service whose external IP is another Service's ClusterIP takes
/// that ClusterIP:port over (CVE-2020-8554's shape) although `desired()` gives it to the
/// Service that had it (the smaller name) and refuses the newcomer. The full plan gives it back;
/// the agent runs one every 60 s, so the takeover lasted up to that, and again after every
/// change to the newcomer. Fixed: the incremental plan leaves frontends of Services outside
/// its scope alone (and the engine widens the scope to their holders).
#[test]
fn incremental_plan_leaves_a_frontend_another_service_owns() {
    let svc = |name: &str, spec: Value| {
        Manifest(json!({"metadata": {"namespace": "default", "name": name}, "spec": spec}))
    };
    let slice = |name: &str, ip: &str| {
        Manifest(json!({
            "metadata": {"namespace": "default", "name": format!("{name}-0"),
                         "labels": {LABEL_SERVICE_NAME: name}},
            "addressType": "IPv4",
            "ports": [{"port": 8080}],
            "endpoints": [{"addresses": [ip]}],
        }))
    };
    let aaa = svc(
        "aaa",
        json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
    );
    let zzz = svc(
        "zzz",
        json!({"clusterIP": "10.96.0.20", "externalIPs": ["10.96.0.10"], "ports": [{"port": 80}]}),
    );
    let node = base_node();
    let before =
        objects(std::slice::from_ref(&aaa), &[slice("aaa", "10.244.0.1")]).expect("objects");
    let p = plan(&Programmed::default(), &desired(&before, &node));
    let mut fake = FakeDataplane::default();
    apply(&mut fake, &p).expect("first plan");
    let mut state = p.next;

    let after = objects(
        &[aaa, zzz],
        &[slice("aaa", "10.244.0.1"), slice("zzz", "10.244.9.9")],
    )
    .expect("objects");
    let full = desired(&after, &node);
    let key = FrontendKey {
        addr: [10, 96, 0, 10],
        port: 80,
        proto: PROTO_TCP,
        scope: SCOPE_ANY,
    };
    assert_eq!(
        full.frontends[&key].service,
        ObjectRef::new("default", "aaa")
    );
    let scope: BTreeSet<_> = [ObjectRef::new("default", "zzz")].into();
    let (ops, _) = plan_services_in_place(&mut state, &desired_for(&after, &node, &scope), &scope);
    apply_ops(&mut fake, &ops).expect("incremental plan");
    assert_eq!(
        state.frontend(key).expect("programmed").owner.as_deref(),
        Some(&ObjectRef::new("default", "aaa")),
        "10.96.0.10:80 was taken over by the incremental plan: {ops:?}"
    );
}

/// Found by [`desired_never_panics_and_names_every_problem`] (which now checks that no
/// address:port is a backend twice): the same endpoint address twice,
/// once on this node and once not (two slices, or one hand-written slice), becomes two backends
/// `10.244.0.2:8080` and `10.244.0.2:8080 LOCAL` of one frontend, so that pod gets twice the
/// share of new flows. kube-proxy keeps one endpoint per address:port, the local one if any
/// (pkg/proxy/endpointslicecache.go `addEndpoints` deduplicates them, favouring `isLocal`).
#[test]
fn one_endpoint_address_on_two_nodes_is_one_backend() {
    let svc = Manifest(json!({
        "metadata": {"namespace": "default", "name": "web"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
    }));
    let slice = Manifest(json!({
        "metadata": {"namespace": "default", "name": "web-0",
                     "labels": {LABEL_SERVICE_NAME: "web"}},
        "addressType": "IPv4",
        "ports": [{"port": 8080}],
        "endpoints": [
            {"addresses": ["10.244.0.2"], "nodeName": "node-a"},
            {"addresses": ["10.244.0.2"], "nodeName": "node-b"},
        ],
    }));
    let objects = objects(&[svc], &[slice]).expect("objects");
    let d = desired(&objects, &base_node());
    let backends = &d.frontends.values().next().expect("a frontend").backends;
    assert_eq!(backends.len(), 1, "{backends:?}");
    assert_eq!(backends[0].flags, BACKEND_F_LOCAL, "{backends:?}");
}
