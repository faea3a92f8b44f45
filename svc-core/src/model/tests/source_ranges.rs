//! `loadBalancerSourceRanges`, rule by rule ("Source ranges" in the `model` module docs).

use super::*;

/// A LoadBalancer Service `web` (ClusterIP 10.96.0.10, LB IP 203.0.113.10, NodePort 30080,
/// externalIP 198.51.100.10) with `loadBalancerSourceRanges: ranges` and `extra` merged
/// into its spec.
fn lb_with_ranges(ranges: serde_json::Value, extra: serde_json::Value) -> Desired {
    let mut spec = json!({"type": "LoadBalancer", "externalIPs": ["198.51.100.10"],
                          "ports": [{"port": 80, "nodePort": 30080}],
                          "loadBalancerSourceRanges": ranges});
    merge(&mut spec, extra);
    let (r, mut s) = web(spec);
    s.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
        {"ip": "203.0.113.10"},
    ]}}))
    .expect("status");
    desired(
        &objects(
            vec![(r, s)],
            vec![web_slice("web-1", 8080, vec![ep("10.244.1.5")])],
        ),
        &node(),
    )
}

const LB_IP: [u8; 4] = [203, 0, 113, 10];

type RangeCase = (
    &'static str,
    serde_json::Value,
    u32,
    Vec<Ipv4Net>,
    Vec<&'static str>,
);

/// Each rule of "Source ranges" (module docs): what the LB IP frontend gets.
#[test]
fn load_balancer_source_ranges_rules() {
    let sr = FRONTEND_F_SOURCE_RANGES;
    let deny = FRONTEND_F_DENY_NODE;
    // (rule, loadBalancerSourceRanges, flags beyond external-ip, ranges, problem fields)
    let cases: Vec<RangeCase> = vec![
        ("absent: no filtering", json!(null), 0, vec![], vec![]),
        ("empty list: no filtering", json!([]), 0, vec![], vec![]),
        (
            "ranges without the node: filtered, node processes refused",
            json!(["192.0.2.0/24", "198.51.100.7/32"]),
            sr | deny,
            cidrs(&["192.0.2.0/24", "198.51.100.7/32"]),
            vec![],
        ),
        (
            "a range contains the node IP: node processes allowed (allowFromNode)",
            json!(["192.0.2.0/24", "172.18.0.0/16"]),
            sr,
            cidrs(&["172.18.0.0/16", "192.0.2.0/24"]),
            vec![],
        ),
        (
            "whitespace trimmed, host bits cleared, leading zeros decimal, duplicates merged",
            json!([" 192.0.2.77/24 ", "192.000.002.000/24", "010.0.0.0/8"]),
            sr | deny,
            cidrs(&["10.0.0.0/8", "192.0.2.0/24"]),
            vec![],
        ),
        (
            "IPv6 prefixes: skipped silently (the other family's proxy)",
            json!(["2001:db8::/32", "192.0.2.0/24"]),
            sr | deny,
            cidrs(&["192.0.2.0/24"]),
            vec![],
        ),
        (
            "only IPv6 prefixes: no IPv4 ranges, so no filtering (as kube-proxy per family)",
            json!(["2001:db8::/32"]),
            0,
            vec![],
            vec![],
        ),
        (
            "malformed entries reported and skipped, the rest applied",
            json!([
                "192.0.2.0/24",
                "192.0.2.0",
                "300.0.0.0/8",
                "10.0.0.0/33",
                "+1.2.3.4/8",
                "10.0.0.0/+8",
                "fe80::/200",
                ""
            ]),
            sr | deny,
            cidrs(&["192.0.2.0/24"]),
            vec![
                "spec.loadBalancerSourceRanges[1]",
                "spec.loadBalancerSourceRanges[2]",
                "spec.loadBalancerSourceRanges[3]",
                "spec.loadBalancerSourceRanges[4]",
                "spec.loadBalancerSourceRanges[5]",
                "spec.loadBalancerSourceRanges[6]",
                "spec.loadBalancerSourceRanges[7]",
            ],
        ),
        (
            "only malformed entries: nothing parsed, no filtering (kube-proxy ignores them)",
            json!(["nonsense"]),
            0,
            vec![],
            vec!["spec.loadBalancerSourceRanges[0]"],
        ),
        (
            "0.0.0.0/0 allows everyone, the node included",
            json!(["0.0.0.0/0"]),
            sr,
            cidrs(&["0.0.0.0/0"]),
            vec![],
        ),
    ];
    for (rule, ranges, flags, want, problems) in cases {
        let d = lb_with_ranges(ranges, json!({}));
        let lb = &d.frontends[&key(LB_IP, 80, PROTO_TCP)];
        assert_eq!(lb.flags, FRONTEND_F_EXTERNAL_IP | flags, "{rule}");
        assert_eq!(lb.source_ranges, want, "{rule}");
        let fields: Vec<&str> = d.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, problems, "{rule}: {:?}", d.problems);
    }
}

#[test]
fn load_balancer_source_ranges_apply_to_lb_ips_only() {
    let d = lb_with_ranges(json!(["192.0.2.0/24"]), json!({}));
    for (k, f) in &d.frontends {
        let is_lb = k.addr == LB_IP;
        assert_eq!(
            f.flags & FRONTEND_F_SOURCE_RANGES != 0,
            is_lb,
            "{k:?}: ClusterIP, NodePort and externalIP frontends are not filtered"
        );
        assert_eq!(f.source_ranges.is_empty(), !is_lb, "{k:?}");
    }
    // ClusterIP, two NodePorts (node IP, none else), the externalIP and the LB IP.
    assert_eq!(d.frontends.len(), 4, "{:#?}", d.frontends.keys());
}

#[test]
fn load_balancer_source_ranges_apply_to_both_entries_under_external_policy_local() {
    let d = lb_with_ranges(
        json!(["192.0.2.0/24"]),
        json!({"externalTrafficPolicy": "Local"}),
    );
    let any = &d.frontends[&key(LB_IP, 80, PROTO_TCP)];
    let external = &d.frontends[&FrontendKey {
        scope: SCOPE_EXTERNAL,
        ..key(LB_IP, 80, PROTO_TCP)
    }];
    for f in [any, external] {
        assert_ne!(f.flags & FRONTEND_F_SOURCE_RANGES, 0);
        assert_eq!(f.source_ranges, cidrs(&["192.0.2.0/24"]));
    }
}
