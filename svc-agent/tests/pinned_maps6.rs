//! The IPv6 service and flow maps through the pinned [`Dataplane`]: a dual-stack plan is
//! written to real (unpinned) kernel maps of the datapath's layouts and read back, adopted
//! as after a restart (nothing left to write), and the collector prunes `SVC_CT6`. They
//! create BPF maps, so they need root (or CAP_BPF) and are `#[ignore]`d:
//!
//! ```text
//! cargo test -p svc-agent --test pinned_maps6 -- --ignored
//! ```
// `unused_crate_dependencies` judges each target alone (see conntrack_maps.rs).
#![allow(unused_crate_dependencies)]
use std::net::Ipv6Addr;

use svc_agent::{
    conntrack::{flush_udp, gc_pass6},
    dataplane::{pinned::PinnedMaps, Dataplane},
};
use svc_common::{
    ct_peer_key, CtEntry6, CtKey6, CtTimeouts, FrontendKey6, CT_DIR_FORWARD, CT_DIR_REPLY,
    CT_STATE_UDP_REPLIED, CT_STATE_UDP_UNREPLIED, PROTO_TCP, PROTO_UDP, SCOPE_ANY,
};
use svc_core::model::{desired, NodeContext, Objects};
use svc_core::reconcile::{plan, Programmed};

const S: u64 = 1_000_000_000;

fn v6(text: &str) -> svc_common::Addr6 {
    text.parse::<Ipv6Addr>().expect("IPv6").into()
}

/// A dual-stack LoadBalancer Service with source ranges of both families, and its slices.
fn objects() -> Objects {
    let service = serde_json::json!({
        "metadata": {"namespace": "default", "name": "web"},
        "spec": {
            "type": "LoadBalancer",
            "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:10:96::10"],
            "loadBalancerSourceRanges": ["2001:db8:1::/48", "198.51.100.0/24"],
            "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}],
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "2001:db8::20"}, {"ip": "203.0.113.7"}]}},
    });
    let slice = |name: &str, family: &str, ips: &[&str]| {
        serde_json::json!({
            "metadata": {"namespace": "default", "name": name,
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": family,
            "ports": [{"port": 8080}],
            "endpoints": ips.iter().map(|ip| serde_json::json!({"addresses": [ip]}))
                .collect::<Vec<_>>(),
        })
    };
    let mut objects = Objects::default();
    let svc: k8s_openapi::api::core::v1::Service =
        serde_json::from_value(service).expect("Service");
    objects
        .services
        .insert(svc_core::model::ObjectRef::new("default", "web"), svc);
    for (name, family, ips) in [
        ("web-v4", "IPv4", &["10.244.1.5", "10.244.1.6"][..]),
        (
            "web-v6",
            "IPv6",
            &["fd00:10:244:1::5", "fd00:10:244:1::6"][..],
        ),
    ] {
        let s: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(slice(name, family, ips)).expect("slice");
        objects
            .slices
            .insert(svc_core::model::ObjectRef::new("default", name), s);
    }
    objects
}

fn node() -> NodeContext {
    NodeContext {
        node_ips: vec!["172.18.0.2".parse().expect("IPv4")],
        node_ips6: vec!["fd00:18::2".parse().expect("IPv6")],
        ..NodeContext::default()
    }
}

#[test]
#[ignore = "creates BPF maps: needs root"]
fn ipv6_service_maps_round_trip_and_are_adopted_without_a_write() {
    let mut maps = PinnedMaps::standalone(4096).expect("create maps (root?)");
    let d = desired(&objects(), &node());
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    assert_eq!(d.frontends6.len(), 3, "ClusterIP, NodePort, LB IP");
    let p = plan(&Programmed::default(), &d);
    for op in &p.ops {
        maps.apply(op).expect("write");
    }
    let snap = maps.snapshot().expect("read back");
    assert_eq!(
        snap,
        p.next.to_snapshot(),
        "the maps hold what the plan says"
    );
    assert_eq!(snap.frontends6.len(), 3);
    assert_eq!(snap.backends6.len(), 2);
    assert_eq!(snap.source_ranges6.len(), 1);
    let lb = snap.frontends6[&FrontendKey6 {
        addr: v6("2001:db8::20"),
        port: 80,
        proto: PROTO_TCP,
        scope: SCOPE_ANY,
    }];
    let range = snap.source_ranges6.iter().next().expect("one IPv6 range");
    assert_eq!(
        (range.frontend_id, range.addr, range.len),
        (lb.id, v6("2001:db8:1::"), 48)
    );
    assert!(range.contains(v6("2001:db8:1:2::3")) && !range.contains(v6("2001:db8:2::1")));
    assert_eq!(
        maps.frontend6(&FrontendKey6 {
            addr: v6("fd00:18::2"),
            port: 30080,
            proto: PROTO_TCP,
            scope: SCOPE_ANY,
        })
        .expect("lookup")
        .map(|f| f.backend_count),
        Some(2)
    );
    // A restart adopts both families and has nothing to write.
    let adopted = Programmed::from_snapshot(&snap);
    let again = plan(&adopted, &desired(&objects(), &node()));
    assert!(again.ops.is_empty(), "{:?}", again.ops);
    // Removing everything empties the IPv6 maps in order (the kernel refuses nothing).
    let gone = plan(&p.next, &desired(&Objects::default(), &node()));
    for op in &gone.ops {
        maps.apply(op).expect("delete");
    }
    let empty = maps.snapshot().expect("read back");
    assert!(empty.frontends6.is_empty() && empty.backends6.is_empty());
    assert!(empty.source_ranges6.is_empty() && empty.slots.is_empty());
    let capacity = maps.service_capacity().expect("capacity");
    assert_eq!((capacity.frontends6, capacity.backends6), (1024, 1024));
}

/// Both entries of a UDP flow from `[fd00::1]:port` to `[fd00:10:96::10]:53` on backend
/// `[fd00:10:244:1::5]:53` (frontend 1, backend `backend`), last seen at `seen`.
fn flow6(port: u16, state: u8, backend: u32, seen: u64) -> [(CtKey6, CtEntry6); 2] {
    let client = v6("fd00::1");
    let key = CtKey6::new(client, v6("fd00:10:96::10"), port, 53, PROTO_UDP);
    let fwd = CtEntry6 {
        src_addr: client,
        dst_addr: v6("fd00:10:244:1::5"),
        src_port: port,
        dst_port: 53,
        dir: CT_DIR_FORWARD,
        flags: 0,
        tcp_flags: 0,
        state,
        backend_id: backend,
        frontend_id: 1,
        created_ns: seen,
        last_seen_ns: seen,
        packets: 1,
        bytes: 80,
    };
    let rkey = ct_peer_key(&key, &fwd);
    let rep = CtEntry6 {
        src_addr: v6("fd00:10:96::10"),
        dst_addr: client,
        src_port: 53,
        dst_port: port,
        dir: CT_DIR_REPLY,
        ..fwd
    };
    assert_eq!(ct_peer_key(&rkey, &rep), key);
    [(key, fwd), (rkey, rep)]
}

#[test]
#[ignore = "creates BPF maps: needs root"]
fn the_collector_prunes_and_flushes_the_ipv6_conntrack_map() {
    let now = svc_agent::conntrack::monotonic_now_ns().expect("clock");
    let mut maps = PinnedMaps::standalone(4096).expect("create maps (root?)");
    let dead = flow6(40_000, CT_STATE_UDP_UNREPLIED, 7, now - 60 * S);
    let live = flow6(40_001, CT_STATE_UDP_REPLIED, 7, now);
    let other = flow6(40_002, CT_STATE_UDP_REPLIED, 8, now);
    for (k, e) in dead.iter().chain(&live).chain(&other) {
        maps.ct6_insert(k, e).expect("insert");
    }
    let stats = gc_pass6(&mut maps, now, &CtTimeouts::DEFAULT, usize::MAX).expect("pass");
    assert_eq!((stats.scanned, stats.removed), (6, 2));
    assert_eq!(maps.ct6_get(&dead[0].0).expect("get"), None);
    assert!(maps.ct6_get(&live[0].0).expect("get").is_some());
    // Backend 7 leaves frontend 1: its UDP flow goes (both entries), backend 8's stays.
    assert_eq!(flush_udp(&mut maps, &[(1, 7)].into()).expect("flush"), 2);
    let mut left = Vec::new();
    maps.ct6_scan(&mut |k, _| left.extend_from_slice(k))
        .expect("scan");
    left.sort();
    let mut want = vec![other[0].0, other[1].0];
    want.sort();
    assert_eq!(left, want);
    assert_eq!(maps.flows.ct6_capacity(), 4096);
}
