//! North-south frontends: NodePorts on node addresses (`--nodeport-addresses`), LoadBalancer
//! ingress IPs, `externalIPs` (`--external-ip-cidrs`), conflicts across kinds.

use super::*;

#[test]
fn nodeport_is_served_on_every_allowed_node_address() {
    let objs = objects(
        vec![web_np(json!({}))],
        vec![web_slice("web-1", 8080, vec![ep("10.244.1.5")])],
    );
    let backends = vec![be([10, 244, 1, 5], 8080)];
    // Default: every node address.
    let d = desired(&objs, &node_with(&[]));
    assert_eq!(
        summary(&d),
        BTreeMap::from([
            (key([10, 96, 0, 10], 80, PROTO_TCP), (0, backends.clone())),
            (
                key(NODE_IP, 30080, PROTO_TCP),
                (FRONTEND_F_NODEPORT, backends.clone())
            ),
            (
                key(NODE_IP_PUBLIC, 30080, PROTO_TCP),
                (FRONTEND_F_NODEPORT, backends.clone())
            ),
        ])
    );
    // --nodeport-addresses: only the node addresses inside a prefix.
    let d = desired(&objs, &node_with(&["172.18.0.0/16"]));
    let keys: Vec<_> = d.frontends.keys().copied().collect();
    assert_eq!(
        keys,
        [
            key([10, 96, 0, 10], 80, PROTO_TCP),
            key(NODE_IP, 30080, PROTO_TCP)
        ]
    );
    assert!(d.problems.is_empty(), "{:?}", d.problems);
}

#[test]
fn nodeport_is_served_only_for_type_node_port_or_load_balancer() {
    // A leftover nodePort on a ClusterIP Service (the API server clears it) serves nothing.
    let d = desired(
        &objects(
            vec![web(json!({"ports": [{"port": 80, "nodePort": 30080}]}))],
            vec![],
        ),
        &node_with(&[]),
    );
    assert_eq!(only(&d).flags, 0);
    // LoadBalancer with a nodePort serves it like a NodePort Service.
    let d = desired(
        &objects(vec![web_np(json!({"type": "LoadBalancer"}))], vec![]),
        &node_with(&["172.18.0.0/16"]),
    );
    assert_eq!(
        d.frontends[&key(NODE_IP, 30080, PROTO_TCP)].flags,
        FRONTEND_F_NODEPORT
    );
}

#[test]
fn load_balancer_without_node_port_serves_no_node_port() {
    // allocateLoadBalancerNodePorts: false → no nodePort in the object → no NodePort.
    let d = desired(
        &objects(
            vec![web(json!({"type": "LoadBalancer",
                           "allocateLoadBalancerNodePorts": false}))],
            vec![],
        ),
        &node_with(&[]),
    );
    assert_eq!(only(&d).flags, 0);
}

#[test]
fn invalid_node_port_is_refused_with_its_field_path() {
    let d = desired(
        &objects(
            vec![web_np(json!({"ports": [{"port": 80, "nodePort": 70000}]}))],
            vec![],
        ),
        &node_with(&[]),
    );
    assert_eq!(only(&d).flags, 0, "the ClusterIP frontend stays");
    assert!(has_problem(&d, "spec.ports[0].nodePort", "must be 1-65535"));
}

#[test]
fn nodeport_addresses_127_serves_localhost_only() {
    let objs = objects(vec![web_np(json!({}))], vec![]);
    let d = desired(&objs, &node_with(&["127.0.0.0/8"]));
    let keys: Vec<_> = d.frontends.keys().copied().collect();
    assert_eq!(
        keys,
        [
            key([10, 96, 0, 10], 80, PROTO_TCP),
            key([127, 0, 0, 1], 30080, PROTO_TCP)
        ]
    );
    assert_eq!(
        d.frontends[&keys[1]].flags, FRONTEND_F_NODEPORT,
        "a localhost NodePort is a NodePort"
    );
    // 0.0.0.0/0 contains 127.0.0.1 too: every node address and localhost.
    let d = desired(&objs, &node_with(&["0.0.0.0/0"]));
    let addrs: Vec<_> = d
        .frontends
        .keys()
        .filter(|k| k.port == 30080)
        .map(|k| k.addr)
        .collect();
    assert_eq!(addrs, [[127, 0, 0, 1], NODE_IP, NODE_IP_PUBLIC]);
}

#[test]
fn load_balancer_ingress_ips_are_frontends() {
    let (r, mut s) = web(json!({"type": "LoadBalancer"}));
    s.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
        {"ip": "192.0.2.127"},
        {"hostname": "lb.example.com"},
        {"ip": "2001:db8::1"},
        {"ip": "198.51.100.7", "ipMode": "VIP"},
        {"ip": "not-an-ip"},
    ]}}))
    .expect("status");
    let d = desired(
        &objects(
            vec![(r, s)],
            vec![web_slice("web-1", 8080, vec![ep("10.244.1.5")])],
        ),
        &node_with(&[]),
    );
    let backends = vec![be([10, 244, 1, 5], 8080)];
    assert_eq!(
        summary(&d),
        BTreeMap::from([
            (key([10, 96, 0, 10], 80, PROTO_TCP), (0, backends.clone())),
            (
                key([192, 0, 2, 127], 80, PROTO_TCP),
                (FRONTEND_F_EXTERNAL_IP, backends.clone())
            ),
            (
                key([198, 51, 100, 7], 80, PROTO_TCP),
                (FRONTEND_F_EXTERNAL_IP, backends.clone())
            ),
        ])
    );
    assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
    assert!(has_problem(
        &d,
        "status.loadBalancer.ingress[4].ip",
        "not an IP address"
    ));
}

#[test]
fn load_balancer_ingress_ip_mode_proxy_is_skipped() {
    let (r, mut s) = web(json!({"type": "LoadBalancer"}));
    s.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
        {"ip": "192.0.2.127", "ipMode": "Proxy"},
    ]}}))
    .expect("status");
    let d = desired(&objects(vec![(r, s)], vec![]), &node());
    assert_eq!(
        d.frontends.keys().copied().collect::<Vec<_>>(),
        [key([10, 96, 0, 10], 80, PROTO_TCP)]
    );
    assert!(d.problems.is_empty(), "{:?}", d.problems);
}

#[test]
fn load_balancer_ingress_is_ignored_unless_type_load_balancer() {
    let (r, mut s) = web(json!({}));
    s.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
        {"ip": "192.0.2.127"},
    ]}}))
    .expect("status");
    let d = desired(&objects(vec![(r, s)], vec![]), &node());
    assert_eq!(only(&d).flags, 0);
}

#[test]
fn external_ips_are_frontends_for_any_type() {
    let d = desired(
        &objects(
            vec![web(
                json!({"externalIPs": ["198.51.100.10", "2001:db8::10"],
                           "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}),
            )],
            vec![],
        ),
        &node(),
    );
    let ext: Vec<_> = d
        .frontends
        .iter()
        .filter(|(_, f)| f.flags == FRONTEND_F_EXTERNAL_IP)
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(
        ext,
        [
            key([198, 51, 100, 10], 53, PROTO_UDP),
            key([198, 51, 100, 10], 80, PROTO_TCP)
        ]
    );
    assert_eq!(d.frontends.len(), 4);
}

#[test]
fn headless_and_external_name_services_serve_no_external_ip() {
    for extra in [
        json!({"clusterIP": "None", "externalIPs": ["198.51.100.10"]}),
        json!({"type": "ExternalName", "externalName": "db.example.com",
               "externalIPs": ["198.51.100.10"]}),
    ] {
        let d = desired(&objects(vec![web(extra.clone())], vec![]), &node());
        assert!(d.frontends.is_empty(), "{extra}: {d:#?}");
    }
}

#[test]
fn external_ips_outside_the_allow_list_are_refused() {
    let objs = objects(
        vec![web(
            json!({"externalIPs": ["198.51.100.10", "203.0.113.9", "bogus"]}),
        )],
        vec![],
    );
    let node = NodeContext {
        external_ip_cidrs: Some(cidrs(&["198.51.100.0/24"])),
        ..node()
    };
    let d = desired(&objs, &node);
    let ext: Vec<_> = d.frontends.keys().map(|k| k.addr).collect();
    assert_eq!(ext, [[10, 96, 0, 10], [198, 51, 100, 10]]);
    assert!(has_problem(&d, "spec.externalIPs[1]", "CVE-2020-8554"));
    assert!(has_problem(&d, "spec.externalIPs[2]", "not an IP address"));
    assert_eq!(
        d.problems[0].to_string(),
        "Service default/web: spec.externalIPs[1]: 203.0.113.9 is outside every \
         --external-ip-cidrs prefix; refused (CVE-2020-8554)"
    );
    // Without an allow-list (the default), every external IP is served.
    let d = desired(&objs, &self::node());
    assert_eq!(d.frontends.len(), 3);
}

#[test]
fn frontend_claimed_twice_across_kinds_goes_to_the_first_service() {
    // a's external IP is b's LoadBalancer IP; b also wants eTP Local, whose scoped entry
    // must not appear for a frontend b does not own.
    let (b_ref, mut b) = svc(
        "default",
        "b",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.12",
               "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
    );
    b.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
        {"ip": "198.51.100.10"},
    ]}}))
    .expect("status");
    let a = svc(
        "default",
        "a",
        json!({"clusterIP": "10.96.0.11", "externalIPs": ["198.51.100.10"],
               "ports": [{"port": 80}]}),
    );
    let d = desired(&objects(vec![(b_ref, b), a], vec![]), &node());
    let fe = &d.frontends[&key([198, 51, 100, 10], 80, PROTO_TCP)];
    assert_eq!(fe.service, ObjectRef::new("default", "a"));
    assert_eq!(fe.flags, FRONTEND_F_EXTERNAL_IP);
    assert!(!d
        .frontends
        .contains_key(&external(key([198, 51, 100, 10], 80, PROTO_TCP))));
    assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
    assert_eq!(d.problems[0].object, "Service default/b");
    assert_eq!(d.problems[0].field, "status.loadBalancer.ingress[0].ip");
}
