//! North-south entries: source ranges, flags and `SCOPE_EXTERNAL` twins in the update order, and
//! the model's north-south output through the fake and adoption.

use super::*;

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
    let c = crate::model::parse_cidr(text).unwrap();
    SourceRange {
        frontend_id: id,
        addr: c.network().octets(),
        len: c.prefix_len(),
    }
}

#[test]
fn source_ranges_are_put_before_the_flag_and_deleted_after_it() {
    let with = |ranges: &[&str]| desired(vec![(fk(10, 80), with_ranges(fe("lb", &[1]), ranges))]);
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
        p1.next
            .frontend(fk(1, 30080))
            .expect("programmed")
            .value
            .flags,
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
