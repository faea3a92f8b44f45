//! EndpointSlices → backends: which slices count, named and unnamed ports, conditions, refused
//! addresses, hostNetwork endpoints, problems reported once.

use super::*;

#[test]
fn slice_labelled_headless_is_ignored() {
    let (r, mut s) = web_slice("web-1", 80, vec![ep("10.244.1.5")]);
    s.metadata
        .labels
        .get_or_insert_default()
        .insert(LABEL_HEADLESS.into(), String::new());
    let d = desired(&objects(vec![web(json!({}))], vec![(r, s)]), &node());
    assert!(only(&d).backends.is_empty());
}

#[test]
fn backends_come_from_slices_labelled_for_the_service_in_its_namespace() {
    let d = desired(
        &objects(
            vec![web(json!({}))],
            vec![
                web_slice("web-1", 8080, vec![ep("10.244.1.5")]),
                slice(
                    "other",
                    "web-x",
                    "web",
                    json!({"ports": [{"port": 1}], "endpoints": [ep("10.244.9.9")]}),
                ),
                slice(
                    "default",
                    "api-1",
                    "api",
                    json!({"ports": [{"port": 2}], "endpoints": [ep("10.244.8.8")]}),
                ),
            ],
        ),
        &node(),
    );
    assert_eq!(only(&d).backends, vec![be([10, 244, 1, 5], 8080)]);
}

#[test]
fn backends_are_merged_across_slices_sorted_and_deduplicated() {
    let d = desired(
        &objects(
            vec![web(json!({}))],
            vec![
                web_slice("web-b", 8080, vec![ep("10.244.2.7"), ep("10.244.1.5")]),
                web_slice("web-a", 8080, vec![ep("10.244.1.5"), ep("10.244.1.4")]),
            ],
        ),
        &node(),
    );
    assert_eq!(
        only(&d).backends,
        vec![
            be([10, 244, 1, 4], 8080),
            be([10, 244, 1, 5], 8080),
            be([10, 244, 2, 7], 8080)
        ]
    );
}

#[test]
fn non_ipv4_slices_are_ignored() {
    let (r6, mut s6) = web_slice("web-v6", 80, vec![ep("fd00::5")]);
    s6.address_type = "IPv6".into();
    let (rf, mut sf) = web_slice("web-fqdn", 80, vec![ep("example.com")]);
    sf.address_type = "FQDN".into();
    let d = desired(
        &objects(vec![web(json!({}))], vec![(r6, s6), (rf, sf)]),
        &node(),
    );
    assert!(only(&d).backends.is_empty());
    assert!(d.problems.is_empty(), "{:?}", d.problems);
}

#[test]
fn named_target_port_resolves_per_slice() {
    let d = desired(
        &objects(
            vec![web(
                json!({"ports": [{"name": "http", "port": 80, "targetPort": "web"}]}),
            )],
            vec![
                slice(
                    "default",
                    "web-v1",
                    "web",
                    json!({"ports": [{"name": "http", "port": 8080}], "endpoints": [ep("10.244.1.5")]}),
                ),
                slice(
                    "default",
                    "web-v2",
                    "web",
                    json!({"ports": [{"name": "http", "port": 9090}], "endpoints": [ep("10.244.1.6")]}),
                ),
            ],
        ),
        &node(),
    );
    assert_eq!(
        only(&d).backends,
        vec![be([10, 244, 1, 5], 8080), be([10, 244, 1, 6], 9090)]
    );
}

#[test]
fn unnamed_service_port_matches_unnamed_slice_port() {
    // Slice port name absent (None) and "" are the same name.
    let d = desired(
        &objects(
            vec![web(json!({}))],
            vec![slice(
                "default",
                "web-1",
                "web",
                json!({"ports": [{"port": 8080}], "endpoints": [ep("10.244.1.5")]}),
            )],
        ),
        &node(),
    );
    assert_eq!(only(&d).backends, vec![be([10, 244, 1, 5], 8080)]);
}

#[test]
fn slice_without_the_port_name_contributes_nothing() {
    let d = desired(
        &objects(
            vec![web(
                json!({"ports": [{"name": "http", "port": 80}, {"name": "metrics", "port": 9100}]}),
            )],
            vec![
                slice(
                    "default",
                    "web-1",
                    "web",
                    json!({"ports": [{"name": "http", "port": 8080}], "endpoints": [ep("10.244.1.5")]}),
                ),
                slice(
                    "default",
                    "web-2",
                    "web",
                    json!({"ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9100}], "endpoints": [ep("10.244.1.6")]}),
                ),
            ],
        ),
        &node(),
    );
    let http = &d.frontends[&key([10, 96, 0, 10], 80, PROTO_TCP)];
    let metrics = &d.frontends[&key([10, 96, 0, 10], 9100, PROTO_TCP)];
    assert_eq!(http.backends.len(), 2);
    assert_eq!(metrics.backends, vec![be([10, 244, 1, 6], 9100)]);
}

#[test]
fn slice_port_protocol_must_match_the_service_port() {
    let d = desired(
        &objects(
            vec![web(json!({"ports": [{"port": 53, "protocol": "UDP"}]}))],
            vec![slice(
                "default",
                "web-1",
                "web",
                json!({"ports": [{"port": 53, "protocol": "TCP"}], "endpoints": [ep("10.244.1.5")]}),
            )],
        ),
        &node(),
    );
    assert!(only(&d).backends.is_empty());
}

#[test]
fn ready_endpoints_are_used_and_ready_none_counts_as_ready() {
    let d = desired(
        &objects(
            vec![web(json!({}))],
            vec![web_slice(
                "web-1",
                80,
                vec![
                    ep_cond("10.244.1.1", None, None, None),
                    ep_cond("10.244.1.2", Some(true), None, None),
                    ep_cond("10.244.1.3", Some(false), Some(true), Some(true)),
                    ep_cond("10.244.1.4", Some(false), Some(false), Some(false)),
                ],
            )],
        ),
        &node(),
    );
    assert_eq!(
        only(&d).backends,
        vec![be([10, 244, 1, 1], 80), be([10, 244, 1, 2], 80)]
    );
}

#[test]
fn serving_terminating_endpoints_are_used_only_when_none_is_ready() {
    let d = desired(
        &objects(
            vec![web(json!({}))],
            vec![web_slice(
                "web-1",
                80,
                vec![
                    ep_cond("10.244.1.3", Some(false), Some(true), Some(true)),
                    ep_cond("10.244.1.4", Some(false), Some(false), Some(true)),
                    ep_cond("10.244.1.5", Some(false), Some(true), Some(false)),
                ],
            )],
        ),
        &node(),
    );
    assert_eq!(
        only(&d).backends,
        vec![Backend {
            flags: BACKEND_F_TERMINATING,
            ..be([10, 244, 1, 3], 80)
        }]
    );
}

#[test]
fn serving_none_falls_back_to_ready() {
    // ready=false, serving unset, terminating=true: serving is taken as false → unusable.
    let d = desired(
        &objects(
            vec![web(json!({}))],
            vec![web_slice(
                "web-1",
                80,
                vec![ep_cond("10.244.1.3", Some(false), None, Some(true))],
            )],
        ),
        &node(),
    );
    assert!(only(&d).backends.is_empty());
}

#[test]
fn frontend_without_usable_endpoint_is_programmed_with_zero_backends() {
    let d = desired(&objects(vec![web(json!({}))], vec![]), &node());
    assert!(only(&d).backends.is_empty());
}

#[test]
fn only_addresses_the_api_server_refuses_are_refused_endpoints() {
    // (address, refused?) across both sides of each range `ValidateEndpointIP` refuses.
    let table = [
        ("0.0.0.0", true),
        ("127.0.0.1", true),
        ("127.255.255.254", true),
        ("169.254.169.254", true),
        ("224.0.0.251", true),
        ("126.255.255.255", false),
        ("128.0.0.1", false),
        ("169.253.255.255", false),
        ("169.255.0.1", false),
        // Multicast outside 224.0.0.0/24 passes validation (and so reaches kube-proxy).
        ("224.0.1.1", false),
        // This node's own address: a hostNetwork endpoint, not special.
        ("172.18.0.2", false),
        ("10.244.1.5", false),
    ];
    let eps: Vec<_> = table
        .iter()
        .map(|(ip, _)| ep(ip))
        .chain([ep("bogus")])
        .collect();
    let d = desired(
        &objects(vec![web(json!({}))], vec![web_slice("web-1", 80, eps)]),
        &node(),
    );
    let mut expected: Vec<Backend> = table
        .iter()
        .filter(|(_, refused)| !refused)
        .map(|(ip, _)| {
            let b = be(ip.parse::<Ipv4Addr>().expect("ip").octets(), 80);
            if *ip == "172.18.0.2" {
                Backend {
                    flags: BACKEND_F_LOCAL,
                    ..b
                }
            } else {
                b
            }
        })
        .collect();
    expected.sort();
    assert_eq!(only(&d).backends, expected);
    for (i, (ip, refused)) in table.iter().enumerate() {
        assert_eq!(
            has_problem(
                &d,
                &format!("endpoints[{i}].addresses[0]"),
                "ValidateEndpointIP"
            ),
            *refused,
            "{ip}: {:#?}",
            d.problems
        );
    }
    assert!(has_problem(
        &d,
        "endpoints[1].addresses[0]",
        "loopback range (127.0.0.0/8)"
    ));
    assert!(has_problem(
        &d,
        &format!("endpoints[{}].addresses[0]", table.len()),
        "not an IPv4 address"
    ));
    assert_eq!(d.problems.len(), 6, "{:#?}", d.problems);
    assert_eq!(d.problems[0].object, "EndpointSlice default/web-1");
}

#[test]
fn node_address_endpoints_are_programmed_and_local_on_their_own_node() {
    // The `kubernetes` Service as kube-apiserver writes it: no selector, and a slice whose
    // endpoint is the API server's node address with no nodeName.
    let objs = objects(
        vec![svc(
            "default",
            "kubernetes",
            json!({"clusterIP": "10.96.0.1",
                   "ports": [{"name": "https", "port": 443, "targetPort": 6443}]}),
        )],
        vec![slice(
            "default",
            "kubernetes",
            "kubernetes",
            json!({"ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
                   "endpoints": [ep("172.18.0.2")]}),
        )],
    );
    let api = be([172, 18, 0, 2], 6443);
    // On the API server's node (172.18.0.2) the endpoint is local; elsewhere it is not.
    let d = desired(&objs, &node());
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    assert_eq!(
        *d.frontends.keys().next().expect("frontend"),
        key([10, 96, 0, 1], 443, PROTO_TCP)
    );
    assert_eq!(only(&d).backends, vec![local(api)]);
    let other = NodeContext {
        node_name: "node-b".into(),
        node_ips: vec![Ipv4Addr::new(172, 18, 0, 3)],
        ..Default::default()
    };
    let d = desired(&objs, &other);
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    assert_eq!(only(&d).backends, vec![api]);

    // hostNetwork pods on both nodes, with nodeName, behind a NodePort with
    // externalTrafficPolicy: Local: each node's external entry holds its own address.
    let objs = objects(
        vec![web_np(json!({"externalTrafficPolicy": "Local"}))],
        vec![web_slice(
            "web-1",
            8080,
            vec![ep_on("172.18.0.2", "node-a"), ep_on("172.18.0.3", "node-b")],
        )],
    );
    let here = local(be(NODE_IP, 8080));
    let there = be([172, 18, 0, 3], 8080);
    let d = desired(&objs, &node());
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    let nodeport = key(NODE_IP, 30080, PROTO_TCP);
    assert_eq!(d.frontends[&nodeport].backends, vec![here, there]);
    assert_eq!(d.frontends[&external(nodeport)].backends, vec![here]);
    assert_eq!(
        d.frontends[&key([10, 96, 0, 10], 80, PROTO_TCP)].backends,
        vec![here, there]
    );
}

#[test]
fn slice_problems_are_reported_once_not_per_port() {
    let d = desired(
        &objects(
            vec![web(
                json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}),
            )],
            vec![slice(
                "default",
                "web-1",
                "web",
                json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}], "endpoints": [ep("127.0.0.1")]}),
            )],
        ),
        &node(),
    );
    assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
}
