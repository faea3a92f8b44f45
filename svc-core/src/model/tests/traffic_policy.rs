//! `internalTrafficPolicy` / `externalTrafficPolicy`: local flags, the external-scope entry,
//! drop vs reject, terminating fallback.

use super::*;

#[test]
fn local_backends_are_flagged() {
    let d = desired(
        &objects(
            vec![web(json!({}))],
            vec![web_slice(
                "web-1",
                8080,
                vec![
                    ep_on("10.244.1.5", "node-a"),
                    ep_on("10.244.2.7", "node-b"),
                    ep("10.244.3.9"),
                ],
            )],
        ),
        &node(),
    );
    assert_eq!(
        only(&d).backends,
        vec![
            local(be([10, 244, 1, 5], 8080)),
            be([10, 244, 2, 7], 8080),
            be([10, 244, 3, 9], 8080)
        ]
    );
}

#[test]
fn external_traffic_policy_local_adds_an_external_scope_with_local_endpoints() {
    let d = desired(
        &objects(
            vec![web_np(json!({"externalTrafficPolicy": "Local",
                              "externalIPs": ["198.51.100.10"]}))],
            local_and_remote(),
        ),
        &node_with(&["172.18.0.0/16"]),
    );
    let all = vec![local(be([10, 244, 1, 5], 8080)), be([10, 244, 2, 7], 8080)];
    let mine = vec![local(be([10, 244, 1, 5], 8080))];
    let np = key(NODE_IP, 30080, PROTO_TCP);
    let xip = key([198, 51, 100, 10], 80, PROTO_TCP);
    assert_eq!(
        summary(&d),
        BTreeMap::from([
            (key([10, 96, 0, 10], 80, PROTO_TCP), (0, all.clone())),
            (
                np,
                (FRONTEND_F_NODEPORT | FRONTEND_F_EXTERNAL_SCOPE, all.clone())
            ),
            (external(np), (FRONTEND_F_NODEPORT, mine.clone())),
            (
                xip,
                (
                    FRONTEND_F_EXTERNAL_IP | FRONTEND_F_EXTERNAL_SCOPE,
                    all.clone()
                )
            ),
            (external(xip), (FRONTEND_F_EXTERNAL_IP, mine.clone())),
        ])
    );
    assert_eq!(
        d.frontends[&external(np)].service,
        ObjectRef::new("default", "web")
    );
}

#[test]
fn external_traffic_policy_local_without_local_endpoints_drops() {
    let d = desired(
        &objects(
            vec![web_np(json!({"externalTrafficPolicy": "Local"}))],
            vec![web_slice(
                "web-1",
                8080,
                vec![ep_on("10.244.2.7", "node-b")],
            )],
        ),
        &node_with(&["172.18.0.0/16"]),
    );
    let np = key(NODE_IP, 30080, PROTO_TCP);
    let scoped = &d.frontends[&external(np)];
    assert!(scoped.backends.is_empty());
    assert_eq!(
        scoped.flags,
        FRONTEND_F_NODEPORT | FRONTEND_F_DROP_NO_BACKEND
    );
    // In-cluster clients of the NodePort still reach the remote endpoint.
    assert_eq!(d.frontends[&np].backends, vec![be([10, 244, 2, 7], 8080)]);
}

#[test]
fn traffic_policy_local_without_any_endpoint_rejects() {
    // kube-proxy checks "no endpoint at all" (REJECT) before the policies (DROP).
    let d = desired(
        &objects(
            vec![web_np(json!({"externalTrafficPolicy": "Local",
                              "internalTrafficPolicy": "Local"}))],
            vec![],
        ),
        &node_with(&["172.18.0.0/16"]),
    );
    for (k, f) in &d.frontends {
        assert!(f.backends.is_empty());
        assert_eq!(f.flags & FRONTEND_F_DROP_NO_BACKEND, 0, "{k:?}");
    }
    assert_eq!(d.frontends.len(), 3);
}

#[test]
fn external_traffic_policy_does_not_touch_cluster_ip() {
    let d = desired(
        &objects(
            vec![web_np(json!({"externalTrafficPolicy": "Local"}))],
            vec![web_slice(
                "web-1",
                8080,
                vec![ep_on("10.244.2.7", "node-b")],
            )],
        ),
        &node_with(&["172.18.0.0/16"]),
    );
    let cip = key([10, 96, 0, 10], 80, PROTO_TCP);
    assert_eq!(d.frontends[&cip].backends, vec![be([10, 244, 2, 7], 8080)]);
    assert_eq!(d.frontends[&cip].flags, 0);
    assert!(!d.frontends.contains_key(&external(cip)));
}

#[test]
fn external_traffic_policy_local_spares_the_localhost_node_port() {
    // 127.0.0.1 is reached only by the node's own processes, which kube-proxy sends to
    // every endpoint: no external scope there, while the node address gets one.
    let d = desired(
        &objects(
            vec![web_np(json!({"externalTrafficPolicy": "Local"}))],
            local_and_remote(),
        ),
        &node_with(&["127.0.0.0/8", "172.18.0.0/16"]),
    );
    let lo = key([127, 0, 0, 1], 30080, PROTO_TCP);
    assert_eq!(d.frontends[&lo].flags, FRONTEND_F_NODEPORT);
    assert_eq!(d.frontends[&lo].backends.len(), 2);
    assert!(!d.frontends.contains_key(&external(lo)));
    assert!(d
        .frontends
        .contains_key(&external(key(NODE_IP, 30080, PROTO_TCP))));
}

#[test]
fn internal_traffic_policy_local_uses_local_endpoints_only() {
    let objs = objects(
        vec![web_np(json!({"internalTrafficPolicy": "Local"}))],
        local_and_remote(),
    );
    let d = desired(&objs, &node_with(&["172.18.0.0/16"]));
    let cip = key([10, 96, 0, 10], 80, PROTO_TCP);
    assert_eq!(
        summary(&d),
        BTreeMap::from([
            (cip, (0, vec![local(be([10, 244, 1, 5], 8080))])),
            // The NodePort is external: iTP does not apply, even to in-cluster clients.
            (
                key(NODE_IP, 30080, PROTO_TCP),
                (
                    FRONTEND_F_NODEPORT,
                    vec![local(be([10, 244, 1, 5], 8080)), be([10, 244, 2, 7], 8080)]
                )
            ),
        ])
    );
    // On node-b's neighbour node-c there is no local endpoint: drop, not reject.
    let node_c = NodeContext {
        node_name: "node-c".into(),
        ..node()
    };
    let d = desired(&objs, &node_c);
    assert!(d.frontends[&cip].backends.is_empty());
    assert_eq!(d.frontends[&cip].flags, FRONTEND_F_DROP_NO_BACKEND);
}

#[test]
fn local_policy_falls_back_to_local_terminating_endpoints() {
    // As CategorizeEndpoints: the local fallback is decided among local endpoints alone.
    let d = desired(
        &objects(
            vec![web(json!({"internalTrafficPolicy": "Local"}))],
            vec![web_slice(
                "web-1",
                8080,
                vec![
                    json!({"addresses": ["10.244.1.5"], "nodeName": "node-a",
                           "conditions": {"ready": false, "serving": true, "terminating": true}}),
                    ep_on("10.244.2.7", "node-b"),
                ],
            )],
        ),
        &node(),
    );
    assert_eq!(
        only(&d).backends,
        vec![Backend {
            flags: BACKEND_F_LOCAL | BACKEND_F_TERMINATING,
            ..be([10, 244, 1, 5], 8080)
        }]
    );
}
