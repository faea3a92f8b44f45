//! IPv6 and dual-stack Services ("Families" in the `model` module docs): which family each
//! address serves, which slices each family's frontends balance to, and the problems a bad
//! IPv6 value gets.

use std::net::Ipv6Addr;

use svc_common::{Backend6, FrontendKey6};

use super::*;

const SVC6: &str = "fd00:10:96::10";
const POD6: &str = "fd00:10:244:1::5";
const NODE6: &str = "fd00:18::2";

fn v6(text: &str) -> svc_common::Addr6 {
    text.parse::<Ipv6Addr>().expect("IPv6").into()
}

fn key6(ip: &str, port: u16, proto: u8) -> FrontendKey6 {
    FrontendKey6 {
        addr: v6(ip),
        port,
        proto,
        scope: SCOPE_ANY,
    }
}

fn be6(ip: &str, port: u16) -> Backend6 {
    Backend6 {
        addr: v6(ip),
        port,
        proto: PROTO_TCP,
        flags: 0,
    }
}

fn node6() -> NodeContext {
    NodeContext {
        node_ips6: vec![NODE6.parse().expect("IPv6")],
        ..node()
    }
}

/// `web` with both families' slices: 10.244.1.5 (IPv4) and `POD6` (IPv6), port 8080.
fn both_slices() -> Vec<(ObjectRef, EndpointSlice)> {
    let (r6, mut s6) = web_slice("web-v6", 8080, vec![ep(POD6)]);
    s6.address_type = "IPv6".into();
    vec![web_slice("web-v4", 8080, vec![ep("10.244.1.5")]), (r6, s6)]
}

fn dual_stack(extra: serde_json::Value) -> (ObjectRef, Service) {
    let mut spec = json!({
        "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
        "clusterIPs": ["10.96.0.10", SVC6],
    });
    merge(&mut spec, extra);
    web(spec)
}

#[test]
fn each_family_gets_its_own_frontends_and_only_its_own_slices() {
    struct Case {
        what: &'static str,
        spec: serde_json::Value,
        v4: Option<Vec<Backend>>,
        v6: Option<Vec<Backend6>>,
    }
    let cases = [
        Case {
            what: "dual-stack: both families, never mixed",
            spec: json!({"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
                         "clusterIPs": ["10.96.0.10", SVC6]}),
            v4: Some(vec![be([10, 244, 1, 5], 8080)]),
            v6: Some(vec![be6(POD6, 8080)]),
        },
        Case {
            what: "dual-stack, IPv6 primary: clusterIP is clusterIPs[0]",
            spec: json!({"ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "PreferDualStack",
                         "clusterIP": SVC6, "clusterIPs": [SVC6, "10.96.0.10"]}),
            v4: Some(vec![be([10, 244, 1, 5], 8080)]),
            v6: Some(vec![be6(POD6, 8080)]),
        },
        Case {
            what: "single-stack IPv6: the IPv4 slice is ignored",
            spec: json!({"ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack",
                         "clusterIP": SVC6, "clusterIPs": [SVC6]}),
            v4: None,
            v6: Some(vec![be6(POD6, 8080)]),
        },
        Case {
            what: "single-stack IPv4: the IPv6 slice is ignored",
            spec: json!({"ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                         "clusterIPs": ["10.96.0.10"]}),
            v4: Some(vec![be([10, 244, 1, 5], 8080)]),
            v6: None,
        },
        Case {
            what: "no ipFamilies (a hand-written manifest): each clusterIPs entry its own family",
            spec: json!({"clusterIPs": [SVC6, "10.96.0.10"]}),
            v4: Some(vec![be([10, 244, 1, 5], 8080)]),
            v6: Some(vec![be6(POD6, 8080)]),
        },
    ];
    for c in cases {
        let d = desired(&objects(vec![web(c.spec)], both_slices()), &node6());
        assert!(d.problems.is_empty(), "{}: {:?}", c.what, d.problems);
        let got4 = d
            .frontends
            .get(&key([10, 96, 0, 10], 80, PROTO_TCP))
            .map(|f| f.backends.clone());
        let got6 = d
            .frontends6
            .get(&key6(SVC6, 80, PROTO_TCP))
            .map(|f| f.backends.clone());
        assert_eq!(got4, c.v4, "{}", c.what);
        assert_eq!(got6, c.v6, "{}", c.what);
        assert_eq!(
            d.len(),
            usize::from(c.v4.is_some()) + usize::from(c.v6.is_some()),
            "{}: {d:#?}",
            c.what
        );
    }
}

#[test]
fn bad_family_values_are_problems_naming_the_field_and_cost_only_themselves() {
    struct Case {
        what: &'static str,
        spec: serde_json::Value,
        field: &'static str,
        needle: &'static str,
        /// Frontends still served (IPv4, IPv6).
        served: (usize, usize),
    }
    let cases = [
        Case {
            what: "ipFamilies says IPv6, the address is IPv4",
            spec: json!({"ipFamilies": ["IPv6", "IPv4"], "clusterIPs": ["10.96.0.10", SVC6]}),
            field: "spec.clusterIPs[0]",
            needle: "is an IPv4 address but spec.ipFamilies[0] is IPv6",
            served: (0, 0),
        },
        Case {
            what: "an IPv6 ClusterIP that does not parse",
            spec: json!({"ipFamilies": ["IPv4", "IPv6"], "clusterIPs": ["10.96.0.10", "fd00::zz"]}),
            field: "spec.clusterIPs[1]",
            needle: "is not an IP address",
            served: (1, 0),
        },
        Case {
            what: "an unknown family",
            spec: json!({"ipFamilies": ["IPv4", "IPv7"], "clusterIPs": ["10.96.0.10", SVC6]}),
            field: "spec.ipFamilies[1]",
            needle: "unknown IP family",
            served: (1, 0),
        },
        Case {
            what: "a family without its ClusterIP",
            spec: json!({"ipFamilies": ["IPv4", "IPv6"], "clusterIPs": ["10.96.0.10"]}),
            field: "spec.ipFamilies[1]",
            needle: "IPv6 has no spec.clusterIPs[1]",
            served: (1, 0),
        },
        Case {
            what: "a bad IPv6 external IP",
            spec: json!({"ipFamilies": ["IPv4", "IPv6"], "clusterIPs": ["10.96.0.10", SVC6],
                         "externalIPs": ["2001:db8::zz", "2001:db8::10"]}),
            field: "spec.externalIPs[0]",
            needle: "\"2001:db8::zz\" is not an IP address",
            served: (1, 2),
        },
        Case {
            what: "SingleStack with two families: both served, as kube-proxy would",
            spec: json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"],
                         "clusterIPs": ["10.96.0.10", SVC6]}),
            field: "spec.ipFamilyPolicy",
            needle: "SingleStack, but the ClusterIPs are both IPv4 and IPv6",
            served: (1, 1),
        },
        Case {
            what: "RequireDualStack with one family",
            spec: json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6"],
                         "clusterIPs": [SVC6]}),
            field: "spec.ipFamilyPolicy",
            needle: "RequireDualStack, but the ClusterIPs are IPv6 only",
            served: (0, 1),
        },
    ];
    for c in cases {
        let d = desired(&objects(vec![web(c.spec)], both_slices()), &node6());
        assert!(
            has_problem(&d, c.field, c.needle),
            "{}: {:?}",
            c.what,
            d.problems
        );
        assert!(
            d.problems.iter().all(|p| p.object == "Service default/web"),
            "{}",
            c.what
        );
        assert_eq!(
            (d.frontends.len(), d.frontends6.len()),
            c.served,
            "{}: {d:#?}",
            c.what
        );
    }
}

#[test]
fn external_and_lb_ips_and_source_ranges_apply_per_family() {
    let (r, mut s) = dual_stack(json!({
        "type": "LoadBalancer",
        "externalIPs": ["192.0.2.10", "2001:db8::10"],
        "loadBalancerSourceRanges": ["2001:db8:1::7/48", "198.51.100.0/24", "2001:db8::/200"],
        "ports": [{"port": 80, "nodePort": 30080}],
    }));
    s.status = Some(
        serde_json::from_value(json!({"loadBalancer": {"ingress": [
            {"ip": "203.0.113.7"}, {"ip": "2001:db8::20"}]}}))
        .expect("status"),
    );
    let d = desired(&objects(vec![(r, s)], both_slices()), &node6());
    assert!(
        has_problem(
            &d,
            "spec.loadBalancerSourceRanges[2]",
            "prefix length above 128"
        ),
        "{:?}",
        d.problems
    );
    assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
    let ext6 = &d.frontends6[&key6("2001:db8::10", 80, PROTO_TCP)];
    assert_eq!(
        ext6.flags, FRONTEND_F_EXTERNAL_IP,
        "no ranges on an external IP"
    );
    let lb6 = &d.frontends6[&key6("2001:db8::20", 80, PROTO_TCP)];
    assert_eq!(
        lb6.flags,
        FRONTEND_F_EXTERNAL_IP | FRONTEND_F_SOURCE_RANGES | FRONTEND_F_DENY_NODE
    );
    assert_eq!(
        lb6.source_ranges,
        vec!["2001:db8:1::/48".parse::<Ipv6Net>().expect("prefix")],
        "host bits cleared, IPv6 prefixes only"
    );
    assert_eq!(lb6.backends, vec![be6(POD6, 8080)]);
    let lb4 = &d.frontends[&key([203, 0, 113, 7], 80, PROTO_TCP)];
    assert_eq!(lb4.source_ranges, cidrs(&["198.51.100.0/24"]));
    let np6 = &d.frontends6[&key6(NODE6, 30080, PROTO_TCP)];
    assert_eq!(np6.flags, FRONTEND_F_NODEPORT);
    assert_eq!(
        d.frontends6.len(),
        4,
        "ClusterIP, NodePort, external IP, LB IP: {:#?}",
        d.frontends6.keys()
    );
}

#[test]
fn other_family_addresses_of_a_single_stack_service_are_skipped_silently() {
    let d = desired(
        &objects(
            vec![web(json!({
                "type": "LoadBalancer",
                "ipFamilies": ["IPv4"], "clusterIPs": ["10.96.0.10"],
                "externalIPs": ["2001:db8::10"],
                "loadBalancerSourceRanges": ["2001:db8::/32"],
                "ports": [{"port": 80, "nodePort": 30080}],
            }))],
            both_slices(),
        ),
        &node6(),
    );
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    assert!(d.frontends6.is_empty(), "{:#?}", d.frontends6);
}

#[test]
fn ipv6_nodeports_follow_the_ipv6_nodeport_addresses_only() {
    let public6: Ipv6Addr = "2001:db8:ff::2".parse().expect("IPv6");
    struct Case {
        what: &'static str,
        v4: &'static [&'static str],
        v6: &'static [&'static str],
        served: Vec<&'static str>,
    }
    let cases = [
        Case {
            what: "no prefixes: every IPv6 node address",
            v4: &[],
            v6: &[],
            served: vec![NODE6, "2001:db8:ff::2"],
        },
        Case {
            what: "IPv4 prefixes only: IPv6 unrestricted (kube-proxy per family)",
            v4: &["172.18.0.0/16"],
            v6: &[],
            served: vec![NODE6, "2001:db8:ff::2"],
        },
        Case {
            what: "an IPv6 prefix restricts IPv6",
            v4: &[],
            v6: &["fd00:18::/64"],
            served: vec![NODE6],
        },
        Case {
            what: "::/0 serves every node address but never ::1",
            v4: &[],
            v6: &["::/0"],
            served: vec![NODE6, "2001:db8:ff::2"],
        },
    ];
    for c in cases {
        let node = NodeContext {
            node_ips6: vec![NODE6.parse().expect("IPv6"), public6],
            nodeport_addresses: cidrs(c.v4),
            nodeport_addresses6: c.v6.iter().map(|t| t.parse().expect("prefix")).collect(),
            ..node6()
        };
        let d = desired(
            &objects(
                vec![dual_stack(
                    json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
                )],
                both_slices(),
            ),
            &node,
        );
        let got: Vec<FrontendKey6> = d
            .frontends6
            .keys()
            .filter(|k| k.port == 30080)
            .copied()
            .collect();
        let mut want: Vec<FrontendKey6> = c
            .served
            .iter()
            .map(|ip| key6(ip, 30080, PROTO_TCP))
            .collect();
        want.sort();
        assert_eq!(got, want, "{}", c.what);
    }
}

#[test]
fn an_ipv6_endpoint_at_a_node_address_is_local() {
    let (r6, mut s6) = web_slice("web-v6", 6443, vec![ep(NODE6), ep(POD6)]);
    s6.address_type = "IPv6".into();
    let d = desired(
        &objects(vec![dual_stack(json!({}))], vec![(r6, s6)]),
        &node6(),
    );
    let fe = &d.frontends6[&key6(SVC6, 80, PROTO_TCP)];
    let local6 = Backend6 {
        flags: BACKEND_F_LOCAL,
        ..be6(NODE6, 6443)
    };
    let mut want = vec![local6, be6(POD6, 6443)];
    want.sort();
    assert_eq!(fe.backends, want);
}

#[test]
fn an_ipv6_frontend_claimed_twice_goes_to_the_first_service_and_is_recorded_lost() {
    let spec = json!({"ipFamilies": ["IPv6"], "clusterIPs": [SVC6], "ports": [{"port": 80}]});
    let d = desired(
        &objects(
            vec![svc("default", "b", spec.clone()), svc("default", "a", spec)],
            vec![],
        ),
        &node6(),
    );
    let fe = &d.frontends6[&key6(SVC6, 80, PROTO_TCP)];
    assert_eq!(fe.service, ObjectRef::new("default", "a"));
    assert_eq!(
        d.lost,
        vec![(
            AnyFrontendKey::V6(key6(SVC6, 80, PROTO_TCP)),
            ObjectRef::new("default", "b")
        )]
    );
    assert!(
        has_problem(
            &d,
            "spec.ports[0]",
            "[fd00:10:96::10]:80/TCP is already served"
        ),
        "{:?}",
        d.problems
    );
}
