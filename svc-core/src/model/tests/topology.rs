//! Topology hints (`forZones`, `forNodes`): when they apply, when they fall back, and what wins
//! over them ("Topology" in the `model` module docs).

use super::*;

/// `node-a` in zone-a (the Node's zone label).
fn node_in_zone_a() -> NodeContext {
    NodeContext {
        zone: Some("zone-a".into()),
        ..node()
    }
}

/// A ready endpoint on `node` hinted for `zones` and `nodes` (`hints` omitted when both
/// are empty).
fn ep_hinted(ip: &str, node: &str, zones: &[&str], nodes: &[&str]) -> serde_json::Value {
    let mut ep = ep_on(ip, node);
    let mut hints = json!({});
    if !zones.is_empty() {
        hints["forZones"] = zones.iter().map(|z| json!({"name": z})).collect();
    }
    if !nodes.is_empty() {
        hints["forNodes"] = nodes.iter().map(|n| json!({"name": n})).collect();
    }
    if hints != json!({}) {
        ep["hints"] = hints;
    }
    ep
}

/// Backends of the only frontend of `web` (`spec` merged in) over one slice of `eps`.
fn web_backends(
    spec: serde_json::Value,
    eps: Vec<serde_json::Value>,
    node: &NodeContext,
) -> Vec<Backend> {
    let d = desired(
        &objects(vec![web(spec)], vec![web_slice("web-1", 8080, eps)]),
        node,
    );
    only(&d).backends.clone()
}

/// Two endpoints in zone-a (one on this node, node-a) and one in zone-b, zone-hinted.
fn zoned_endpoints() -> Vec<serde_json::Value> {
    vec![
        ep_hinted("10.244.1.5", "node-a", &["zone-a"], &[]),
        ep_hinted("10.244.3.5", "node-c", &["zone-a"], &[]),
        ep_hinted("10.244.2.7", "node-b", &["zone-b"], &[]),
    ]
}

#[test]
fn hints_for_this_zone_are_used_when_every_endpoint_has_hints() {
    let near = vec![local(be([10, 244, 1, 5], 8080)), be([10, 244, 3, 5], 8080)];
    assert_eq!(
        web_backends(json!({}), zoned_endpoints(), &node_in_zone_a()),
        near
    );
    // The same slice from node-b in zone-b: only the zone-b endpoint.
    let node_b = NodeContext {
        node_name: "node-b".into(),
        zone: Some("zone-b".into()),
        ..node()
    };
    assert_eq!(
        web_backends(json!({}), zoned_endpoints(), &node_b),
        vec![local(be([10, 244, 2, 7], 8080))]
    );
    // An endpoint may be hinted for several zones (the controller's overload spreading).
    let mut eps = zoned_endpoints();
    eps[2] = ep_hinted("10.244.2.7", "node-b", &["zone-b", "zone-a"], &[]);
    assert_eq!(
        web_backends(json!({}), eps, &node_in_zone_a()).len(),
        3,
        "zone-b's endpoint is lent to zone-a"
    );
}

#[test]
fn an_endpoint_without_hints_disables_topology() {
    let mut eps = zoned_endpoints();
    eps.push(ep_on("10.244.2.8", "node-b"));
    assert_eq!(web_backends(json!({}), eps, &node_in_zone_a()).len(), 4);
    // Across slices too: the rule is over the port's endpoints, not per slice.
    let d = desired(
        &objects(
            vec![web(json!({}))],
            vec![
                web_slice("web-1", 8080, zoned_endpoints()),
                web_slice("web-2", 8080, vec![ep_on("10.244.2.8", "node-b")]),
            ],
        ),
        &node_in_zone_a(),
    );
    assert_eq!(only(&d).backends.len(), 4);
}

#[test]
fn hints_are_judged_on_ready_endpoints_only() {
    // A not-ready endpoint without hints does not turn topology off.
    let mut eps = zoned_endpoints();
    eps.push(json!({"addresses": ["10.244.2.8"], "nodeName": "node-b",
                    "conditions": {"ready": false}}));
    assert_eq!(web_backends(json!({}), eps, &node_in_zone_a()).len(), 2);
}

#[test]
fn no_endpoint_for_this_zone_falls_back_to_all() {
    let node_d = NodeContext {
        node_name: "node-d".into(),
        zone: Some("zone-c".into()),
        ..node()
    };
    assert_eq!(web_backends(json!({}), zoned_endpoints(), &node_d).len(), 3);
    // zone-b's only endpoint is not ready: no ready endpoint is hinted for zone-b, so
    // node-b uses every ready one (zone-a's) rather than none.
    let eps = vec![
        ep_hinted("10.244.1.5", "node-a", &["zone-a"], &[]),
        json!({"addresses": ["10.244.2.7"], "nodeName": "node-b", "conditions": {"ready": false},
               "hints": {"forZones": [{"name": "zone-b"}]}}),
    ];
    let node_b = NodeContext {
        node_name: "node-b".into(),
        zone: Some("zone-b".into()),
        ..node()
    };
    assert_eq!(
        web_backends(json!({}), eps, &node_b),
        vec![be([10, 244, 1, 5], 8080)]
    );
}

#[test]
fn node_without_zone_label_ignores_hints() {
    assert_eq!(web_backends(json!({}), zoned_endpoints(), &node()).len(), 3);
    let empty = NodeContext {
        zone: Some(String::new()),
        ..node()
    };
    assert_eq!(web_backends(json!({}), zoned_endpoints(), &empty).len(), 3);
}

#[test]
fn service_traffic_distribution_alone_changes_nothing() {
    // kube-proxy reads hints, never spec.trafficDistribution (the controller writes hints).
    let eps = vec![ep_on("10.244.1.5", "node-a"), ep_on("10.244.2.7", "node-b")];
    for td in ["PreferClose", "PreferSameZone", "PreferSameNode"] {
        assert_eq!(
            web_backends(
                json!({"trafficDistribution": td}),
                eps.clone(),
                &node_in_zone_a()
            )
            .len(),
            2,
            "{td}"
        );
    }
}

#[test]
fn for_nodes_hint_prefers_this_node() {
    // PreferSameNode: the controller writes forNodes and forZones.
    let eps = vec![
        ep_hinted("10.244.1.5", "node-a", &["zone-a"], &["node-a"]),
        ep_hinted("10.244.3.5", "node-c", &["zone-a"], &["node-c"]),
        ep_hinted("10.244.2.7", "node-b", &["zone-b"], &["node-b"]),
    ];
    assert_eq!(
        web_backends(json!({}), eps.clone(), &node_in_zone_a()),
        vec![local(be([10, 244, 1, 5], 8080))]
    );
    // No endpoint for this node: the zone hints decide.
    let node_e = NodeContext {
        node_name: "node-e".into(),
        ..node_in_zone_a()
    };
    assert_eq!(
        web_backends(json!({}), eps.clone(), &node_e),
        vec![be([10, 244, 1, 5], 8080), be([10, 244, 3, 5], 8080)]
    );
    // Node hints work without any zone (a node without the zone label, --manifests).
    assert_eq!(
        web_backends(json!({}), eps.clone(), &node()),
        vec![local(be([10, 244, 1, 5], 8080))]
    );
    // One endpoint without a node hint: node hints are off, zone hints still apply.
    let mut eps = eps;
    eps[2] = ep_hinted("10.244.2.7", "node-b", &["zone-b"], &[]);
    assert_eq!(web_backends(json!({}), eps, &node_in_zone_a()).len(), 2);
}

#[test]
fn without_ready_endpoints_the_terminating_fallback_ignores_hints() {
    let term = |ip: &str, node: &str, zone: &str| {
        json!({"addresses": [ip], "nodeName": node,
               "conditions": {"ready": false, "serving": true, "terminating": true},
               "hints": {"forZones": [{"name": zone}]}})
    };
    let eps = vec![
        term("10.244.1.5", "node-a", "zone-a"),
        term("10.244.2.7", "node-b", "zone-b"),
    ];
    assert_eq!(web_backends(json!({}), eps, &node_in_zone_a()).len(), 2);
}

#[test]
fn local_traffic_policy_wins_over_hints() {
    // node-a's only endpoint is hinted for zone-b (and zone-a has node-c's): the Local set
    // is this node's endpoints whatever the hints say.
    let eps = vec![
        ep_hinted("10.244.1.5", "node-a", &["zone-b"], &[]),
        ep_hinted("10.244.3.5", "node-c", &["zone-a"], &[]),
        ep_hinted("10.244.2.7", "node-b", &["zone-b"], &[]),
    ];
    let mine = vec![local(be([10, 244, 1, 5], 8080))];
    let zone_a = vec![be([10, 244, 3, 5], 8080)];
    assert_eq!(
        web_backends(
            json!({"internalTrafficPolicy": "Local"}),
            eps.clone(),
            &node_in_zone_a()
        ),
        mine
    );
    // eTP Local: wire clients get this node's endpoints, in-cluster clients (and the
    // ClusterIP) the zone's.
    let d = desired(
        &objects(
            vec![web_np(json!({"externalTrafficPolicy": "Local"}))],
            vec![web_slice("web-1", 8080, eps)],
        ),
        &NodeContext {
            zone: Some("zone-a".into()),
            ..node_with(&["172.18.0.0/16"])
        },
    );
    let np = key(NODE_IP, 30080, PROTO_TCP);
    assert_eq!(d.frontends[&external(np)].backends, mine);
    assert_eq!(d.frontends[&np].backends, zone_a);
    assert_eq!(
        d.frontends[&key([10, 96, 0, 10], 80, PROTO_TCP)].backends,
        zone_a
    );
}

#[test]
fn hints_apply_to_node_ports_and_external_ips() {
    // kube-proxy's external chains under eTP Cluster jump to the (topology-filtered)
    // cluster endpoints.
    let d = desired(
        &objects(
            vec![web_np(json!({"externalIPs": ["198.51.100.10"]}))],
            vec![web_slice("web-1", 8080, zoned_endpoints())],
        ),
        &NodeContext {
            zone: Some("zone-a".into()),
            ..node_with(&["172.18.0.0/16"])
        },
    );
    assert_eq!(d.frontends.len(), 3);
    for (k, f) in &d.frontends {
        assert_eq!(f.backends.len(), 2, "{k:?}");
    }
}
