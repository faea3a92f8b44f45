//! Table tests of the decision, one per branch of lb.rs's `new_flow` and each hook's conntrack lookup.
use svc_common::{
    Backend, FrontendKey, Slot, BACKEND_F_TERMINATING, CT_DIR_REPLY, FRONTEND_F_NODEPORT, PROTO_UDP,
};

use super::*;

// Fixture vocabulary: a ClusterIP with a local and a remote backend, a NodePort with
// externalTrafficPolicy: Local whose external entry is empty on this node, a Service
// without endpoints, and a hairpin Service whose only backend is the client itself.
const NODE: [u8; 4] = [172, 18, 0, 2];
const CLIENT_POD: [u8; 4] = [10, 244, 1, 5];
const EXTERNAL_CLIENT: [u8; 4] = [172, 18, 0, 100];
const SVC_VIP: [u8; 4] = [10, 96, 0, 10];
const SVC_EMPTY: [u8; 4] = [10, 96, 0, 20];
const SVC_HAIRPIN: [u8; 4] = [10, 96, 0, 50];
const BACKEND_LOCAL: [u8; 4] = [10, 244, 1, 2];
const BACKEND_REMOTE: [u8; 4] = [10, 244, 2, 2];
const NODEPORT: u16 = 30100;

fn fe_key(addr: [u8; 4], port: u16, scope: u8) -> FrontendKey {
    FrontendKey {
        addr,
        port,
        proto: PROTO_TCP,
        scope,
    }
}

/// Frontend `id` at `key` over backend ids `backends`, with `flags`.
fn add(snap: &mut Snapshot, key: FrontendKey, id: u32, flags: u32, backends: &[u32]) {
    for (i, b) in backends.iter().enumerate() {
        snap.maps.slots.insert(
            SlotKey {
                frontend_id: id,
                slot: i as u32 + 1,
            },
            Slot { backend_id: *b },
        );
    }
    snap.maps.frontends.insert(
        key,
        Frontend {
            id,
            backend_count: backends.len() as u32,
            flags,
            affinity_timeout_s: 0,
        },
    );
}

fn scene() -> Snapshot {
    let mut s = Snapshot {
        config: Some(Config {
            node_addr: NODE,
            flags: 0,
            netns_cookie: 4096,
            node_addr6: svc_common::Addr6::default(),
        }),
        ..Default::default()
    };
    let backend = |addr, flags| Backend {
        addr,
        port: 8080,
        proto: PROTO_TCP,
        flags,
    };
    s.maps
        .backends
        .insert(1, backend(BACKEND_LOCAL, BACKEND_F_LOCAL));
    s.maps.backends.insert(2, backend(BACKEND_REMOTE, 0));
    s.maps
        .backends
        .insert(3, backend(CLIENT_POD, BACKEND_F_LOCAL));
    s.maps
        .backends
        .insert(4, backend(BACKEND_REMOTE, BACKEND_F_TERMINATING));
    add(&mut s, fe_key(SVC_VIP, 80, SCOPE_ANY), 10, 0, &[1, 2]);
    add(&mut s, fe_key(SVC_EMPTY, 80, SCOPE_ANY), 11, 0, &[]);
    add(&mut s, fe_key(SVC_HAIRPIN, 80, SCOPE_ANY), 12, 0, &[3]);
    // eTP Local NodePort on a node without a local endpoint: cluster-wide set in the any
    // entry (the remote backend), nothing in the external one.
    add(
        &mut s,
        fe_key(NODE, NODEPORT, SCOPE_ANY),
        13,
        FRONTEND_F_NODEPORT | FRONTEND_F_EXTERNAL_SCOPE,
        &[2],
    );
    add(
        &mut s,
        fe_key(NODE, NODEPORT, SCOPE_EXTERNAL),
        14,
        FRONTEND_F_NODEPORT | FRONTEND_F_DROP_NO_BACKEND,
        &[],
    );
    // A NodePort with cluster policy: remote backend from outside needs SNAT.
    add(
        &mut s,
        fe_key(NODE, 30007, SCOPE_ANY),
        15,
        FRONTEND_F_NODEPORT,
        &[1, 2],
    );
    s
}

fn q(src: [u8; 4], dst: [u8; 4], port: u16, origin: Origin) -> Query {
    Query {
        src: src.into(),
        src_port: None,
        dst: dst.into(),
        dst_port: port,
        proto: PROTO_TCP,
        origin,
    }
}

fn translate(
    src: [u8; 4],
    sport: Option<u16>,
    dst: [u8; 4],
    flags: &[&str],
    counter: &str,
) -> Outcome {
    Outcome::Translate {
        new_src: src.into(),
        new_src_port: sport,
        new_src_port_ranges: None,
        new_dst: dst.into(),
        new_dst_port: 8080,
        flags: flags.iter().map(|f| f.to_string()).collect(),
        counter: counter.into(),
    }
}

fn snat(dst: [u8; 4]) -> Outcome {
    Outcome::Translate {
        new_src: NODE.into(),
        new_src_port: None,
        new_src_port_ranges: Some(vec![[svc_common::SNAT_PORT_MIN, svc_common::SNAT_PORT_MAX]]),
        new_dst: dst.into(),
        new_dst_port: 8080,
        flags: vec!["snat".into(), "external".into()],
        counter: "dnat_new".into(),
    }
}

fn outcomes(e: &Explanation) -> Vec<(u32, Outcome)> {
    e.candidates
        .iter()
        .map(|c| (c.slot, c.outcome.clone()))
        .collect()
}

/// Name, query, expected new-flow outcome, expected (slot, outcome) candidates.
type Row = (&'static str, Query, Outcome, Vec<(u32, Outcome)>);

#[test]
fn new_flow_decisions() {
    let snap = scene();
    let balance = |n| Outcome::Balance {
        slots: n,
        translating: n,
    };
    let cases: Vec<Row> = vec![
        (
            "hit from a pod: random among both backends, client address kept",
            q(CLIENT_POD, SVC_VIP, 80, Origin::Pod),
            balance(2),
            vec![
                (1, translate(CLIENT_POD, None, BACKEND_LOCAL, &[], "dnat_new")),
                (2, translate(CLIENT_POD, None, BACKEND_REMOTE, &[], "dnat_new")),
            ],
        ),
        (
            "miss: not a Service frontend, passed untouched",
            q(CLIENT_POD, SVC_VIP, 81, Origin::Pod),
            Outcome::Pass {
                counter: Some("not_service".into()),
                why: "not a Service frontend: no any entry for 10.96.0.10:81/tcp".into(),
            },
            vec![],
        ),
        (
            "no endpoints, TCP: reject with a RST",
            q(CLIENT_POD, SVC_EMPTY, 80, Origin::Pod),
            Outcome::Reject {
                reply: "tcp_rst".into(),
                counter: "no_backend".into(),
                why: "no usable backend among the Service's endpoints (as kube-proxy's REJECT)"
                    .into(),
            },
            vec![],
        ),
        (
            "eTP Local from the uplink on a node without a local endpoint: drop",
            q(EXTERNAL_CLIENT, NODE, NODEPORT, Origin::Uplink),
            drop(Reason::PolicyDrop, "no backend among this node's endpoints (externalTrafficPolicy: Local), and the policy is Local: dropped so that a load balancer's health check moves the client to another node"),
            vec![],
        ),
        (
            "same eTP Local frontend from a pod: the cluster-wide set",
            q(CLIENT_POD, NODE, NODEPORT, Origin::Pod),
            balance(1),
            vec![(1, translate(CLIENT_POD, None, BACKEND_REMOTE, &[], "dnat_new"))],
        ),
        (
            "hairpin: the client is the backend, the frontend becomes the source",
            q(CLIENT_POD, SVC_HAIRPIN, 80, Origin::Pod),
            balance(1),
            vec![(1, translate(SVC_HAIRPIN, None, CLIENT_POD, &["hairpin"], "hairpin"))],
        ),
        (
            "hairpin is a pod-hook decision: the host path never rewrites the source",
            q(CLIENT_POD, SVC_HAIRPIN, 80, Origin::Host),
            balance(1),
            vec![(1, translate(CLIENT_POD, None, CLIENT_POD, &[], "sock_translated"))],
        ),
        (
            "from the uplink: local backend keeps the client, remote one is SNATed",
            q(EXTERNAL_CLIENT, NODE, 30007, Origin::Uplink),
            balance(2),
            vec![
                (1, translate(EXTERNAL_CLIENT, None, BACKEND_LOCAL, &["external"], "dnat_new")),
                (2, snat(BACKEND_REMOTE)),
            ],
        ),
    ];
    for (name, query, want, want_candidates) in cases {
        let e = explain(&snap, &query);
        assert_eq!(e.new_flow, want, "{name}");
        assert_eq!(outcomes(&e), want_candidates, "{name}");
    }
}

#[test]
fn snat_reports_the_ports_the_agent_loaded() {
    // Pins of an agent that predates the SNAT ports pin: the object's built-in range (above);
    // with the pin, every range the agent gave the datapath.
    let mut snap = scene();
    snap.snat_ports = Some(svc_common::SnatPorts {
        first: [1024, 61_000],
        count: [28_976, 4536],
    });
    let e = explain(&snap, &q(EXTERNAL_CLIENT, NODE, 30007, Origin::Uplink));
    let want = Outcome::Translate {
        new_src: NODE.into(),
        new_src_port: None,
        new_src_port_ranges: Some(vec![[1024, 29_999], [61_000, 65_535]]),
        new_dst: BACKEND_REMOTE.into(),
        new_dst_port: 8080,
        flags: vec!["snat".into(), "external".into()],
        counter: "dnat_new".into(),
    };
    assert_eq!(outcomes(&e)[1], (2, want));
}

#[test]
fn load_balancer_source_ranges_deny_outside_sources_and_the_node_per_its_flag() {
    use crate::dataplane::SourceRange;
    const LB_IP: [u8; 4] = [203, 0, 113, 10];
    let mut snap = scene();
    let flags = svc_common::FRONTEND_F_EXTERNAL_IP | FRONTEND_F_SOURCE_RANGES;
    add(&mut snap, fe_key(LB_IP, 80, SCOPE_ANY), 30, flags, &[1]);
    add(
        &mut snap,
        fe_key(LB_IP, 81, SCOPE_ANY),
        31,
        flags | FRONTEND_F_DENY_NODE,
        &[1],
    );
    // Port 80's ranges contain the node; port 81's do not (hence its deny-node).
    for (id, addr) in [(30, [172, 18, 0, 0]), (31, [192, 0, 2, 0])] {
        snap.maps.source_ranges.insert(SourceRange {
            frontend_id: id,
            addr,
            len: 24,
        });
    }
    let outside = [198, 51, 100, 7];
    let allowed = explain(&snap, &q(EXTERNAL_CLIENT, LB_IP, 80, Origin::Uplink));
    assert_eq!(allowed.candidates.len(), 1, "{allowed:?}");
    assert!(allowed
        .notes
        .contains(&"loadBalancerSourceRanges: 172.18.0.100 is inside 172.18.0.0/24".into()));
    let denied = explain(&snap, &q(outside, LB_IP, 80, Origin::Uplink));
    assert_eq!(
        denied.new_flow,
        drop(
            Reason::SourceRangeDenied,
            "denied by loadBalancerSourceRanges: 198.51.100.7 is outside [172.18.0.0/24]"
        )
    );
    let pod = explain(&snap, &q(CLIENT_POD, LB_IP, 80, Origin::Pod));
    assert!(matches!(pod.new_flow, Outcome::Drop { .. }), "{pod:?}");
    // The node: allowed on port 80 (no deny-node), refused on 81, whatever the query's
    // source (a socket call has none yet).
    let host = explain(&snap, &q(outside, LB_IP, 80, Origin::Host));
    assert!(matches!(host.new_flow, Outcome::Balance { .. }), "{host:?}");
    let host = explain(&snap, &q(NODE, LB_IP, 81, Origin::Host));
    assert_eq!(
        host.new_flow,
        drop(
            Reason::SourceRangeDenied,
            "denied by loadBalancerSourceRanges: no range contains a node address \
             (allowed: [192.0.2.0/24]); connect() and sendmsg() fail with EPERM"
        )
    );
}

#[test]
fn uplink_uses_the_external_entry_and_reports_both() {
    let mut snap = scene();
    // Now this node has a local endpoint for the eTP Local NodePort.
    add(
        &mut snap,
        fe_key(NODE, NODEPORT, SCOPE_EXTERNAL),
        14,
        FRONTEND_F_NODEPORT | FRONTEND_F_DROP_NO_BACKEND,
        &[1],
    );
    let e = explain(&snap, &q(EXTERNAL_CLIENT, NODE, NODEPORT, Origin::Uplink));
    assert_eq!(e.frontend.as_ref().map(|f| f.id), Some(13));
    assert_eq!(e.external_frontend.as_ref().map(|f| f.id), Some(14));
    assert_eq!(e.scope_used.as_deref(), Some("external"));
    assert_eq!(
        outcomes(&e),
        vec![(
            1,
            translate(
                EXTERNAL_CLIENT,
                None,
                BACKEND_LOCAL,
                &["external"],
                "dnat_new"
            )
        )]
    );
    assert_eq!(e.candidates[0].backend_flags, vec!["local".to_string()]);
}

#[test]
fn no_backend_replies_by_protocol_and_origin() {
    let mut snap = scene();
    add(
        &mut snap,
        FrontendKey {
            proto: PROTO_UDP,
            ..fe_key(SVC_EMPTY, 53, SCOPE_ANY)
        },
        20,
        0,
        &[],
    );
    let reply = |e: Explanation| match e.new_flow {
        Outcome::Reject { reply, .. } => reply,
        other => panic!("{other:?}"),
    };
    let mut udp = q(CLIENT_POD, SVC_EMPTY, 53, Origin::Pod);
    udp.proto = PROTO_UDP;
    assert_eq!(reply(explain(&snap, &udp)), "icmp_port_unreachable");
    assert_eq!(
        reply(explain(&snap, &q(NODE, SVC_EMPTY, 80, Origin::Host))),
        "econnrefused"
    );
}

#[test]
fn broken_maps_and_missing_config_are_reported_as_the_datapath_acts() {
    let mut snap = scene();
    snap.maps.backends.remove(&2);
    snap.config = None;
    let e = explain(&snap, &q(EXTERNAL_CLIENT, NODE, 30007, Origin::Uplink));
    assert_eq!(
        e.new_flow,
        Outcome::Balance {
            slots: 2,
            translating: 1
        }
    );
    assert!(matches!(
        &e.candidates[1].outcome,
        Outcome::Drop { counter, .. } if counter == "backend_missing"
    ));
    // Without SVC_CONFIG a remote backend from the uplink cannot be source-NATed.
    let mut snap = scene();
    snap.config = None;
    let e = explain(&snap, &q(EXTERNAL_CLIENT, NODE, 30007, Origin::Uplink));
    assert!(matches!(
        &e.candidates[1].outcome,
        Outcome::Drop { counter, .. } if counter == "snat_no_port"
    ));
    // An external-scope flag without its entry.
    let mut snap = scene();
    snap.maps
        .frontends
        .remove(&fe_key(NODE, NODEPORT, SCOPE_EXTERNAL));
    let e = explain(&snap, &q(EXTERNAL_CLIENT, NODE, NODEPORT, Origin::Uplink));
    assert!(
        matches!(e.new_flow, Outcome::Drop { ref counter, .. } if counter == "backend_missing")
    );
}

#[test]
fn an_existing_conntrack_entry_pins_the_flow() {
    let mut snap = scene();
    let key = CtKey {
        src_addr: CLIENT_POD,
        dst_addr: SVC_VIP,
        src_port: 40000,
        dst_port: 80,
        proto: PROTO_TCP,
        _pad: [0; 3],
    };
    let entry = CtEntry {
        src_addr: CLIENT_POD,
        dst_addr: BACKEND_REMOTE,
        src_port: 40000,
        dst_port: 8080,
        dir: CT_DIR_FORWARD,
        flags: 0,
        tcp_flags: 0x12,
        state: svc_common::CT_STATE_ESTABLISHED,
        backend_id: 2,
        frontend_id: 10,
        created_ns: 1,
        last_seen_ns: 2,
        packets: 3,
        bytes: 180,
    };
    snap.conntrack.insert(key, entry);
    // The reply entry: on the uplink it is not an external flow, so it passes.
    let rkey = CtKey {
        src_addr: BACKEND_REMOTE,
        dst_addr: CLIENT_POD,
        src_port: 8080,
        dst_port: 40000,
        ..key
    };
    snap.conntrack.insert(
        rkey,
        CtEntry {
            dir: CT_DIR_REPLY,
            ..entry
        },
    );

    let mut query = q(CLIENT_POD, SVC_VIP, 80, Origin::Pod);
    let e = explain(&snap, &query);
    assert_eq!(e.conntrack, None);
    assert_eq!(e.tracked_flows_from_src, Some(1));

    query.src_port = Some(40000);
    let e = explain(&snap, &query);
    let t = e.conntrack.expect("pinned");
    assert_eq!((t.dir.as_str(), t.backend_id), ("forward", 2));
    assert_eq!(
        t.outcome,
        translate(
            CLIENT_POD,
            Some(40000),
            BACKEND_REMOTE,
            &[],
            "dnat_established"
        )
    );

    query.src_port = Some(40001);
    assert_eq!(explain(&snap, &query).conntrack, None);

    let mut reply = q(BACKEND_REMOTE, CLIENT_POD, 40000, Origin::Uplink);
    reply.src_port = Some(8080);
    let t = explain(&snap, &reply).conntrack.expect("reply entry");
    assert!(
        matches!(t.outcome, Outcome::Pass { ref counter, .. } if counter.as_deref() == Some("not_service"))
    );
    reply.origin = Origin::Pod;
    let t = explain(&snap, &reply).conntrack.expect("reply entry");
    assert!(matches!(t.outcome, Outcome::Translate { ref counter, .. } if counter == "rev_nat"));
}

#[test]
fn an_expired_entry_is_ignored_and_a_closed_one_reopens_on_a_syn() {
    const S: u64 = 1_000_000_000;
    let mut snap = scene();
    let key = CtKey {
        src_addr: CLIENT_POD,
        dst_addr: SVC_VIP,
        src_port: 40000,
        dst_port: 80,
        proto: PROTO_TCP,
        _pad: [0; 3],
    };
    let entry = CtEntry {
        src_addr: CLIENT_POD,
        dst_addr: BACKEND_REMOTE,
        src_port: 40000,
        dst_port: 8080,
        dir: CT_DIR_FORWARD,
        flags: 0,
        tcp_flags: 0x11,
        state: svc_common::CT_STATE_TIME_WAIT,
        backend_id: 2,
        frontend_id: 10,
        created_ns: 0,
        last_seen_ns: 100 * S,
        packets: 9,
        bytes: 900,
    };
    snap.conntrack.insert(key, entry);
    let mut query = q(CLIENT_POD, SVC_VIP, 80, Origin::Pod);
    query.src_port = Some(40000);

    // Closed 4 s ago (timeout 10 s): still translated, and a SYN would reopen it.
    snap.now_ns = 104 * S;
    let e = explain(&snap, &query);
    let t = e.conntrack.expect("tracked");
    assert_eq!(
        (t.state.as_str(), t.expired, t.expires_in_s),
        ("time_wait", false, Some(6))
    );
    assert!(
        matches!(t.outcome, Outcome::Translate { ref counter, .. } if counter == "dnat_established")
    );
    assert!(
        e.notes
            .iter()
            .any(|n| n.contains("a SYN on this tuple opens a new flow")),
        "{:?}",
        e.notes
    );

    // 11 s after: expired, no peer: ignored, the packet is a new flow.
    snap.now_ns = 111 * S;
    let e = explain(&snap, &query);
    let t = e.conntrack.expect("tracked");
    assert!(t.expired);
    assert_eq!(t.expires_in_s, None);
    assert_eq!(t.outcome, e.new_flow);
    assert!(
        e.notes.iter().any(|n| n.contains("has expired")),
        "{:?}",
        e.notes
    );
    assert!(
        e.notes.iter().any(|n| n.contains("ct_picked_up")),
        "{:?}",
        e.notes
    );

    // A shorter close timeout from the agent's pin expires it sooner.
    snap.now_ns = 104 * S;
    snap.ct_timeouts = Some(CtTimeouts {
        tcp_close_s: 2,
        ..CtTimeouts::DEFAULT
    });
    assert!(explain(&snap, &query).conntrack.expect("tracked").expired);
}

#[test]
fn a_syn_reopens_a_flow_whose_backend_left_its_frontend() {
    let mut snap = scene();
    let key = CtKey {
        src_addr: CLIENT_POD,
        dst_addr: SVC_VIP,
        src_port: 40000,
        dst_port: 80,
        proto: PROTO_TCP,
        _pad: [0; 3],
    };
    let entry = |backend_id| CtEntry {
        src_addr: CLIENT_POD,
        dst_addr: BACKEND_REMOTE,
        src_port: 40000,
        dst_port: 8080,
        dir: CT_DIR_FORWARD,
        flags: 0,
        tcp_flags: 0x12,
        state: svc_common::CT_STATE_ESTABLISHED,
        backend_id,
        frontend_id: 10,
        created_ns: 0,
        last_seen_ns: 0,
        packets: 3,
        bytes: 180,
    };
    let mut query = q(CLIENT_POD, SVC_VIP, 80, Origin::Pod);
    query.src_port = Some(40000);
    // Backend 2 is in frontend 10's slots: the flow is current, no reopening.
    snap.conntrack.insert(key, entry(2));
    let e = explain(&snap, &query);
    assert!(
        !e.notes.iter().any(|n| n.contains("opens a new flow")),
        "{:?}",
        e.notes
    );
    // Backend 4 (same address, terminating) is in none: a SYN balances afresh.
    snap.conntrack.insert(key, entry(4));
    let e = explain(&snap, &query);
    assert!(!e.conntrack.expect("tracked").expired);
    assert!(
        e.notes
            .iter()
            .any(|n| n.contains("backend 4 is no longer") && n.contains("ct_reopened")),
        "{:?}",
        e.notes
    );
}

#[test]
fn session_affinity_sends_a_recent_client_back_to_its_backend() {
    let mut snap = scene();
    snap.maps
        .frontends
        .get_mut(&fe_key(SVC_VIP, 80, SCOPE_ANY))
        .unwrap()
        .affinity_timeout_s = 10;
    snap.now_ns = 100_000_000_000;
    let key = AffinityKey {
        frontend_id: 10,
        client_addr: CLIENT_POD,
    };
    let recent = Affinity {
        backend_id: 2,
        backend_addr: BACKEND_REMOTE,
        backend_port: 8080,
        _pad: [0; 6],
        last_used_ns: snap.now_ns - 3_000_000_000,
    };
    snap.affinity.insert(key, recent);
    let query = q(CLIENT_POD, SVC_VIP, 80, Origin::Pod);
    let e = explain(&snap, &query);
    assert_eq!(
        e.new_flow,
        Outcome::Sticky {
            backend_id: 2,
            idle_ms: 3_000,
            timeout_s: 10
        }
    );
    assert_eq!(
        outcomes(&e),
        vec![(
            2,
            translate(CLIENT_POD, None, BACKEND_REMOTE, &[], "affinity")
        )]
    );
    // Expired, or the id now names another backend: drawn afresh.
    for stale in [
        Affinity {
            last_used_ns: snap.now_ns - 10_000_000_000,
            ..recent
        },
        Affinity {
            backend_port: 9090,
            ..recent
        },
    ] {
        snap.affinity.insert(key, stale);
        let e = explain(&snap, &query);
        assert_eq!(
            e.new_flow,
            Outcome::Balance {
                slots: 2,
                translating: 2
            }
        );
        assert!(
            e.notes.iter().any(|n| n.contains("sessionAffinity")),
            "{e:?}"
        );
    }
}

// IPv6: the same Service dual-stack, its IPv6 side in the IPv6 maps (one id space: the
// IPv6 frontends and backends have ids of their own).
const NODE6: &str = "fd00:18::2";
const CLIENT_POD6: &str = "fd00:10:244:1::5";
const SVC_VIP6: &str = "fd00:10:96::10";
const BACKEND_LOCAL6: &str = "fd00:10:244:1::2";
const BACKEND_REMOTE6: &str = "fd00:10:244:2::2";

fn a6(text: &str) -> svc_common::Addr6 {
    text.parse::<std::net::Ipv6Addr>().expect("IPv6").into()
}

fn ip6(text: &str) -> IpAddr {
    IpAddr::V6(text.parse().expect("IPv6"))
}

/// [`scene`] plus the IPv6 side: the ClusterIP over a local and a remote backend, and a
/// NodePort with cluster policy; the node's IPv6 SNAT source is `NODE6` when `node_addr6`.
fn scene6(node_addr6: bool) -> Snapshot {
    let mut s = scene();
    if let Some(c) = s.config.as_mut() {
        c.node_addr6 = if node_addr6 {
            a6(NODE6)
        } else {
            Default::default()
        };
    }
    let backend = |addr: &str, flags| svc_common::Backend6 {
        addr: a6(addr),
        port: 8080,
        proto: PROTO_TCP,
        flags,
    };
    s.maps
        .backends6
        .insert(21, backend(BACKEND_LOCAL6, BACKEND_F_LOCAL));
    s.maps.backends6.insert(22, backend(BACKEND_REMOTE6, 0));
    for (addr, port, id, flags) in [
        (SVC_VIP6, 80, 30, 0),
        (NODE6, 30007, 31, FRONTEND_F_NODEPORT),
    ] {
        for (i, b) in [21, 22].into_iter().enumerate() {
            s.maps.slots.insert(
                SlotKey {
                    frontend_id: id,
                    slot: i as u32 + 1,
                },
                Slot { backend_id: b },
            );
        }
        s.maps.frontends6.insert(
            svc_common::FrontendKey6 {
                addr: a6(addr),
                port,
                proto: PROTO_TCP,
                scope: SCOPE_ANY,
            },
            Frontend {
                id,
                backend_count: 2,
                flags,
                affinity_timeout_s: 0,
            },
        );
    }
    s
}

fn q6(src: &str, dst: &str, port: u16, origin: Origin) -> Query {
    Query {
        src: ip6(src),
        src_port: None,
        dst: ip6(dst),
        dst_port: port,
        proto: PROTO_TCP,
        origin,
    }
}

fn translate6(src: IpAddr, dst: &str, flags: &[&str], counter: &str) -> Outcome {
    Outcome::Translate {
        new_src: src,
        new_src_port: None,
        new_src_port_ranges: None,
        new_dst: ip6(dst),
        new_dst_port: 8080,
        flags: flags.iter().map(|f| f.to_string()).collect(),
        counter: counter.into(),
    }
}

#[test]
fn ipv6_flows_are_decided_by_the_ipv6_maps() {
    let snap = scene6(true);
    let snat6 = |dst: &str| Outcome::Translate {
        new_src: ip6(NODE6),
        new_src_port: None,
        new_src_port_ranges: Some(vec![[svc_common::SNAT_PORT_MIN, svc_common::SNAT_PORT_MAX]]),
        new_dst: ip6(dst),
        new_dst_port: 8080,
        flags: vec!["snat".into(), "external".into()],
        counter: "dnat_new".into(),
    };
    let cases: Vec<Row> = vec![
        (
            "a pod to the IPv6 ClusterIP: random among the IPv6 backends only",
            q6(CLIENT_POD6, SVC_VIP6, 80, Origin::Pod),
            Outcome::Balance {
                slots: 2,
                translating: 2,
            },
            vec![
                (
                    1,
                    translate6(ip6(CLIENT_POD6), BACKEND_LOCAL6, &[], "dnat_new"),
                ),
                (
                    2,
                    translate6(ip6(CLIENT_POD6), BACKEND_REMOTE6, &[], "dnat_new"),
                ),
            ],
        ),
        (
            "the IPv6 NodePort from the wire: the remote backend is source-NATed to node_addr6",
            q6("2001:db8::100", NODE6, 30007, Origin::Uplink),
            Outcome::Balance {
                slots: 2,
                translating: 2,
            },
            vec![
                (
                    1,
                    translate6(
                        ip6("2001:db8::100"),
                        BACKEND_LOCAL6,
                        &["external"],
                        "dnat_new",
                    ),
                ),
                (2, snat6(BACKEND_REMOTE6)),
            ],
        ),
        (
            "no IPv6 frontend on that port: passed untouched, named as [addr]:port",
            q6(CLIENT_POD6, SVC_VIP6, 81, Origin::Pod),
            Outcome::Pass {
                counter: Some("not_service".into()),
                why: "not a Service frontend: no any entry for [fd00:10:96::10]:81/tcp".into(),
            },
            vec![],
        ),
    ];
    for (name, query, new_flow, candidates) in cases {
        let e = explain(&snap, &query);
        assert_eq!(e.new_flow, new_flow, "{name}");
        assert_eq!(outcomes(&e), candidates, "{name}");
        assert_eq!((e.src, e.dst), (query.src, query.dst), "{name}");
    }
    let e = explain(&snap, &q6(CLIENT_POD6, SVC_VIP6, 80, Origin::Pod));
    assert_eq!(e.frontend.as_ref().map(|f| f.id), Some(30));
    assert!(e.hook.contains("pod_ingress6"), "{}", e.hook);
    assert_eq!(e.candidates[0].address, Some(ip6(BACKEND_LOCAL6)));
}

#[test]
fn an_ipv6_remote_backend_without_an_ipv6_snat_source_is_dropped() {
    let snap = scene6(false);
    let e = explain(&snap, &q6("2001:db8::100", NODE6, 30007, Origin::Uplink));
    assert_eq!(
        e.candidates[1].outcome,
        drop(
            Reason::SnatNoAddress,
            "the backend is remote and needs source NAT, but SVC_CONFIG holds no IPv6 node \
             address"
        )
    );
    // The IPv4 side still has its source.
    let e = explain(&snap, &q(EXTERNAL_CLIENT, NODE, 30007, Origin::Uplink));
    assert_eq!(e.candidates[1].outcome, snat(BACKEND_REMOTE));
}

#[test]
fn an_ipv6_conntrack_entry_pins_the_flow() {
    let mut snap = scene6(true);
    snap.now_ns = 10 * 1_000_000_000;
    let key = svc_common::CtKey6::new(a6(CLIENT_POD6), a6(SVC_VIP6), 40_000, 80, PROTO_TCP);
    let entry = svc_common::CtEntry6 {
        src_addr: a6(CLIENT_POD6),
        dst_addr: a6(BACKEND_REMOTE6),
        src_port: 40_000,
        dst_port: 8080,
        dir: CT_DIR_FORWARD,
        flags: 0,
        tcp_flags: 0,
        state: svc_common::CT_STATE_ESTABLISHED,
        backend_id: 22,
        frontend_id: 30,
        created_ns: snap.now_ns,
        last_seen_ns: snap.now_ns,
        packets: 3,
        bytes: 180,
    };
    snap.conntrack6.insert(key, entry);
    let mut query = q6(CLIENT_POD6, SVC_VIP6, 80, Origin::Pod);
    query.src_port = Some(40_000);
    let e = explain(&snap, &query);
    let t = e.conntrack.expect("the IPv6 entry is found");
    assert_eq!(
        (t.dir.as_str(), t.backend_id, t.expired),
        ("forward", 22, false)
    );
    assert_eq!(
        t.outcome,
        Outcome::Translate {
            new_src: ip6(CLIENT_POD6),
            new_src_port: Some(40_000),
            new_src_port_ranges: None,
            new_dst: ip6(BACKEND_REMOTE6),
            new_dst_port: 8080,
            flags: vec![],
            counter: "dnat_established".into(),
        }
    );
    // Without the port: counted among the client's tracked flows to the frontend.
    let e = explain(&snap, &q6(CLIENT_POD6, SVC_VIP6, 80, Origin::Pod));
    assert_eq!(e.tracked_flows_from_src, Some(1));
}

#[test]
fn addresses_of_two_families_name_no_flow() {
    let snap = scene6(true);
    let mut query = q6(CLIENT_POD6, SVC_VIP6, 80, Origin::Pod);
    query.dst = IpAddr::V4(SVC_VIP.into());
    let e = explain(&snap, &query);
    assert!(
        matches!(&e.new_flow, Outcome::Pass { counter: None, why } if why.contains("two address families")),
        "{:?}",
        e.new_flow
    );
    assert!(e.frontend.is_none() && e.candidates.is_empty());
}
