//! Dual-stack and IPv6-only Services through the planner: one id space for both families,
//! each family's maps written in the update order, adoption of IPv6 state, and family changes
//! of a Service. The objects go through the model, so these are the model's decisions as the
//! maps get them.

use std::net::Ipv6Addr;

use serde_json::json;
use svc_common::{Backend6, FrontendKey6, MAP_FRONTENDS6};

use super::*;
use crate::budget::{admit, Entries, Limits};
use crate::dataplane::fake::canonical6;
use crate::model::tests::{objects, slice, svc as service};
use crate::model::{desired, NodeContext, Objects};

const SVC6: &str = "fd00:10:96::10";

fn v6(text: &str) -> svc_common::Addr6 {
    text.parse::<Ipv6Addr>().expect("IPv6").into()
}

fn fk6(ip: &str, port: u16) -> FrontendKey6 {
    FrontendKey6 {
        addr: v6(ip),
        port,
        proto: PROTO_TCP,
        scope: SCOPE_ANY,
    }
}

fn be6(ip: &str) -> Backend6 {
    Backend6 {
        addr: v6(ip),
        port: 8080,
        proto: PROTO_TCP,
        flags: 0,
    }
}

/// `web` with `spec` (ports 80 → 8080), an IPv4 slice (10.244.1.5, .6) and an IPv6 one
/// (`pods6`).
fn web(spec: serde_json::Value, pods6: &[&str]) -> Objects {
    let mut spec_full = json!({"ports": [{"port": 80, "targetPort": 8080}]});
    if let (Some(full), Some(extra)) = (spec_full.as_object_mut(), spec.as_object()) {
        full.extend(extra.clone());
    }
    let eps = |ips: &[&str]| -> Vec<serde_json::Value> {
        ips.iter().map(|ip| json!({"addresses": [ip]})).collect()
    };
    objects(
        vec![service("default", "web", spec_full)],
        vec![
            slice(
                "default",
                "web-v4",
                "web",
                json!({"ports": [{"port": 8080}], "endpoints": eps(&["10.244.1.5", "10.244.1.6"])}),
            ),
            slice(
                "default",
                "web-v6",
                "web",
                json!({"addressType": "IPv6", "ports": [{"port": 8080}], "endpoints": eps(pods6)}),
            ),
        ],
    )
}

fn single_v4() -> serde_json::Value {
    json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"],
           "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"]})
}

fn dual() -> serde_json::Value {
    json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"],
           "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", SVC6]})
}

fn single_v6() -> serde_json::Value {
    json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"],
           "clusterIP": SVC6, "clusterIPs": [SVC6]})
}

fn node() -> NodeContext {
    NodeContext::default()
}

/// Plans `objects` on `state`, applies to `fake` (invariant checked per op), returns the plan.
fn step(state: &Programmed, fake: &mut FakeDataplane, objects: &Objects) -> Plan {
    let p = plan(state, &desired(objects, &node()));
    apply(fake, &p);
    p
}

#[test]
fn a_dual_stack_service_gets_both_families_in_one_id_space() {
    let mut fake = FakeDataplane::new();
    let p = step(
        &Programmed::default(),
        &mut fake,
        &web(dual(), &["fd00:10:244:1::5"]),
    );
    let snap = &fake.snapshot;
    assert_eq!(snap.frontends.len(), 1);
    assert_eq!(snap.frontends6.len(), 1);
    assert_eq!(snap.backends.len(), 2);
    assert_eq!(snap.backends6.len(), 1);
    let id4 = snap.frontends[&fk(10, 80)].id;
    let id6 = snap.frontends6[&fk6(SVC6, 80)].id;
    assert_ne!(id4, id6, "frontend ids are one space");
    let ids4: BTreeSet<u32> = snap.backends.keys().copied().collect();
    assert!(
        snap.backends6.keys().all(|id| !ids4.contains(id)),
        "backend ids are one space: {snap:#?}"
    );
    // The IPv6 frontend's one slot names its IPv6 backend.
    let slot = snap.slots[&SlotKey {
        frontend_id: id6,
        slot: 1,
    }];
    assert_eq!(snap.backends6[&slot.backend_id], be6("fd00:10:244:1::5"));
    // Per family, backends before slots before the frontend.
    let kinds = op_kinds(&p.ops);
    let at = |k: &str| kinds.iter().position(|x| *x == k).expect(k);
    assert!(at("PutBackend6") < at("PutFrontend6"), "{kinds:?}");
    assert!(at("PutBackend") < at("PutFrontend"), "{kinds:?}");
    // Nothing left to do, and a restart adopts both families without a write.
    assert!(plan(
        &p.next,
        &desired(&web(dual(), &["fd00:10:244:1::5"]), &node())
    )
    .ops
    .is_empty());
    let adopted = Programmed::from_snapshot(&fake.snapshot);
    let again = plan(
        &adopted,
        &desired(&web(dual(), &["fd00:10:244:1::5"]), &node()),
    );
    assert!(again.ops.is_empty(), "{:?}", again.ops);
}

#[test]
fn family_changes_add_and_remove_one_family_without_touching_the_other() {
    let pods6 = ["fd00:10:244:1::5", "fd00:10:244:1::6"];
    let mut fake = FakeDataplane::new();
    let p1 = step(&Programmed::default(), &mut fake, &web(single_v4(), &pods6));
    assert!(
        fake.snapshot.frontends6.is_empty(),
        "SingleStack IPv4 has no IPv6 frontend"
    );
    assert!(
        fake.snapshot.backends6.is_empty(),
        "the IPv6 slice of an IPv4-only Service is ignored"
    );
    let v4_before = canonical(&fake.snapshot);

    // SingleStack → PreferDualStack: only IPv6 ops.
    let p2 = step(&p1.next, &mut fake, &web(dual(), &pods6));
    let kinds = op_kinds(&p2.ops);
    assert!(
        kinds.iter().all(|k| k.ends_with('6') || *k == "PutSlot"),
        "{kinds:?}"
    );
    assert_eq!(canonical(&fake.snapshot), v4_before, "IPv4 untouched");
    let six = canonical6(&fake.snapshot);
    assert_eq!(
        six[&fk6(SVC6, 80)].backends,
        pods6.iter().map(|p| be6(p)).collect()
    );

    // And back: the IPv6 frontend, its slots and backends go, IPv4 stays as it was.
    let p3 = step(&p2.next, &mut fake, &web(single_v4(), &pods6));
    let kinds = op_kinds(&p3.ops);
    assert!(
        kinds.iter().all(|k| k.ends_with('6') || *k == "DeleteSlot"),
        "{kinds:?}"
    );
    assert!(fake.snapshot.frontends6.is_empty());
    assert!(fake.snapshot.backends6.is_empty());
    assert_eq!(canonical(&fake.snapshot), v4_before);
    assert_eq!(
        p3.removals.frontend_ids,
        vec![p2.next.frontend(fk6(SVC6, 80)).expect("programmed").id]
    );
    assert_eq!(p3.removals.backends.len(), 2, "{:?}", p3.removals);

    // IPv4 → IPv6 only: the IPv4 side goes, the IPv6 side comes, the maps stay consistent.
    let p4 = step(&p3.next, &mut fake, &web(single_v6(), &pods6));
    assert!(fake.snapshot.frontends.is_empty());
    assert!(fake.snapshot.backends.is_empty());
    assert_eq!(fake.snapshot.frontends6.len(), 1);
    assert!(plan(&p4.next, &desired(&web(single_v6(), &pods6), &node()))
        .ops
        .is_empty());
}

#[test]
fn an_ipv6_backend_leaving_is_a_removal_of_the_ipv6_frontend() {
    let mut fake = FakeDataplane::new();
    let p1 = step(
        &Programmed::default(),
        &mut fake,
        &web(single_v6(), &["fd00:10:244:1::5", "fd00:10:244:1::6"]),
    );
    let id6 = p1.next.frontend(fk6(SVC6, 80)).expect("programmed").id;
    let gone = p1
        .next
        .backend_id(&be6("fd00:10:244:1::6"))
        .expect("programmed");
    let p2 = step(
        &p1.next,
        &mut fake,
        &web(single_v6(), &["fd00:10:244:1::5"]),
    );
    assert_eq!(
        p2.removals.backends,
        vec![RemovedBackend {
            frontend_id: id6,
            proto: PROTO_TCP,
            backend_id: gone,
        }]
    );
    assert!(p2.ops.contains(&MapOp::DeleteBackend6 { id: gone }));
}

#[test]
fn adoption_of_junk_across_families_is_cleaned_up_in_order() {
    // An IPv6 frontend whose slot names an id that is an IPv4 backend (no agent writes that),
    // and an id in both backend maps.
    let mut snap = MapSnapshot::default();
    snap.backends.insert(1, be(5));
    snap.backends.insert(2, be(6));
    snap.backends6.insert(2, be6("fd00::2"));
    snap.frontends6.insert(
        fk6(SVC6, 80),
        Frontend {
            id: 7,
            backend_count: 1,
            flags: 0,
            affinity_timeout_s: 0,
        },
    );
    snap.slots.insert(
        SlotKey {
            frontend_id: 7,
            slot: 1,
        },
        Slot { backend_id: 1 },
    );
    let mut fake = FakeDataplane::with_snapshot(snap.clone());
    let adopted = Programmed::from_snapshot(&snap);
    let p = plan(
        &adopted,
        &desired(&web(single_v6(), &["fd00:10:244:1::5"]), &node()),
    );
    for op in &p.ops {
        // The starting state breaks the invariant, so apply without the per-op check of the
        // frontend being rewritten: check the end state instead.
        let _ = fake.apply(op);
    }
    let mut clean = FakeDataplane::with_snapshot(p.next.to_snapshot());
    clean.writes = 0;
    clean.check_all().expect("consistent after one plan");
    assert!(clean.snapshot.backends.is_empty(), "{:#?}", clean.snapshot);
    assert_eq!(
        clean
            .snapshot
            .backends6
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![be6("fd00:10:244:1::5")]
    );
    assert!(p.ops.contains(&MapOp::DeleteBackend6 { id: 2 }));
    assert!(plan(
        &p.next,
        &desired(&web(single_v6(), &["fd00:10:244:1::5"]), &node())
    )
    .ops
    .is_empty());
}

#[test]
fn the_ipv6_maps_have_their_own_capacity_in_the_budget() {
    let d = || desired(&web(dual(), &["fd00:10:244:1::5"]), &node());
    let limits = |frontends6: u64| Limits {
        capacity: Entries {
            frontends6,
            ..Entries::abi()
        },
        service_share_percent: 100,
    };
    let mut fits = d();
    let a = admit(&Programmed::default(), &mut fits, None, &limits(1));
    assert!(a.refused.is_empty(), "{:?}", a.problems);
    assert_eq!(a.usage.frontends6, 1);
    assert_eq!(a.usage.backends6, 1);
    assert_eq!(a.usage.frontends, 1);
    assert_eq!(a.usage.backends, 2);

    let mut full = d();
    let a = admit(&Programmed::default(), &mut full, None, &limits(0));
    assert_eq!(a.refused, [svc("web")].into());
    let problem = &a.problems[&svc("web")];
    assert!(problem.message.contains(MAP_FRONTENDS6), "{problem}");
    assert_eq!(problem.field, "spec.ports");
    assert!(full.is_empty(), "both families of a refused Service go");
}
