//! Services one by one: ClusterIPs, ports and protocols, the types never programmed, which
//! Service is ours (`--service-proxy-name`), session affinity.

use super::*;

#[test]
fn cluster_ip_service_serves_every_cluster_ip_times_every_port() {
    let d = desired(
        &objects(
            vec![svc(
                "default",
                "dns",
                json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "10.96.0.11"],
                       "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                                 {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}),
            )],
            vec![],
        ),
        &node(),
    );
    let keys: Vec<_> = d.frontends.keys().copied().collect();
    assert_eq!(
        keys,
        vec![
            key([10, 96, 0, 10], 53, PROTO_TCP),
            key([10, 96, 0, 10], 53, PROTO_UDP),
            key([10, 96, 0, 11], 53, PROTO_TCP),
            key([10, 96, 0, 11], 53, PROTO_UDP),
        ]
    );
    assert_eq!(d.frontends[&keys[1]].port_name, "dns");
    assert!(d.problems.is_empty(), "{:?}", d.problems);
}

#[test]
fn cluster_ip_is_used_when_cluster_ips_is_absent() {
    let d = desired(&objects(vec![web(json!({}))], vec![]), &node());
    assert_eq!(
        *d.frontends.keys().next().expect("frontend"),
        key([10, 96, 0, 10], 80, PROTO_TCP)
    );
}

#[test]
fn protocol_defaults_to_tcp() {
    let d = desired(&objects(vec![web(json!({}))], vec![]), &node());
    assert_eq!(d.frontends.keys().next().map(|k| k.proto), Some(PROTO_TCP));
}

#[test]
fn ipv6_cluster_ips_are_skipped_silently() {
    let d = desired(
        &objects(
            vec![web(
                json!({"clusterIP": "fd00::10", "clusterIPs": ["fd00::10", "10.96.0.10"]}),
            )],
            vec![],
        ),
        &node(),
    );
    assert_eq!(d.frontends.len(), 1);
    assert!(d.problems.is_empty(), "{:?}", d.problems);
}

#[test]
fn sctp_port_is_refused_and_the_rest_programmed() {
    let d = desired(
        &objects(
            vec![web(
                json!({"ports": [{"port": 80}, {"port": 9, "protocol": "SCTP"}]}),
            )],
            vec![],
        ),
        &node(),
    );
    assert_eq!(d.frontends.len(), 1);
    assert!(has_problem(
        &d,
        "spec.ports[1].protocol",
        "SCTP not supported by the datapath"
    ));
}

#[test]
fn invalid_port_is_refused_with_its_field_path() {
    let d = desired(
        &objects(
            vec![web(
                json!({"ports": [{"port": 0}, {"port": 70000}, {"port": 81}]}),
            )],
            vec![],
        ),
        &node(),
    );
    assert_eq!(only(&d).port_name, "");
    assert_eq!(d.frontends.keys().next().map(|k| k.port), Some(81));
    assert!(has_problem(&d, "spec.ports[0].port", "must be 1-65535"));
    assert!(has_problem(&d, "spec.ports[1].port", "must be 1-65535"));
    assert_eq!(
        d.problems[0].to_string(),
        "Service default/web: spec.ports[0].port: must be 1-65535"
    );
}

#[test]
fn unknown_protocol_is_refused() {
    let d = desired(
        &objects(
            vec![web(json!({"ports": [{"port": 80, "protocol": "ICMP"}]}))],
            vec![],
        ),
        &node(),
    );
    assert!(d.frontends.is_empty());
    assert!(has_problem(
        &d,
        "spec.ports[0].protocol",
        "unknown protocol"
    ));
}

#[test]
fn unparsable_cluster_ip_is_refused_and_the_rest_programmed() {
    let d = desired(
        &objects(
            vec![web(json!({"clusterIPs": ["10.96.0.300", "10.96.0.10"]}))],
            vec![],
        ),
        &node(),
    );
    assert_eq!(d.frontends.len(), 1);
    assert!(has_problem(&d, "spec.clusterIPs[0]", "not an IP address"));
}

#[test]
fn headless_service_is_never_programmed() {
    let d = desired(
        &objects(
            vec![web(json!({"clusterIP": "None"}))],
            vec![web_slice("web-1", 80, vec![ep("10.244.1.5")])],
        ),
        &node(),
    );
    assert!(d.frontends.is_empty());
    assert!(d.problems.is_empty(), "{:?}", d.problems);
}

#[test]
fn external_name_service_is_never_programmed() {
    let d = desired(
        &objects(
            vec![svc(
                "prod",
                "db",
                json!({"type": "ExternalName", "externalName": "my.database.example.com"}),
            )],
            vec![],
        ),
        &node(),
    );
    assert_eq!(d, Desired::default());
}

#[test]
fn service_with_service_proxy_name_label_is_skipped() {
    let (r, s) = svc_labelled(
        "default",
        "web",
        json!({LABEL_SERVICE_PROXY_NAME: "other-proxy"}),
        json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
    );
    let d = desired(&objects(vec![(r, s)], vec![]), &node());
    assert_eq!(d, Desired::default());
}

#[test]
fn service_proxy_name_claims_exactly_the_services_labelled_with_it() {
    // (--service-proxy-name, the Service's label, served?)
    let table: [(Option<&str>, Option<&str>, bool); 8] = [
        (None, None, true),
        (None, Some("other-proxy"), false),
        (None, Some(""), false),
        (Some("svc-lb"), None, false),
        (Some("svc-lb"), Some("svc-lb"), true),
        (Some("svc-lb"), Some("other-proxy"), false),
        (Some("svc-lb"), Some(""), false),
        // An empty name is no name: kube-proxy's choice.
        (Some(""), None, true),
    ];
    for (name, value, served) in table {
        let labels = match value {
            Some(v) => json!({LABEL_SERVICE_PROXY_NAME: v}),
            None => json!({}),
        };
        let np = json!({"clusterIP": "10.96.0.10", "type": "LoadBalancer",
                        "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                        "ports": [{"port": 80}]});
        let objs = objects(vec![svc_labelled("default", "web", labels, np)], vec![]);
        let node = NodeContext {
            service_proxy_name: name.map(str::to_owned),
            ..node()
        };
        let d = desired(&objs, &node);
        assert_eq!(!d.frontends.is_empty(), served, "{name:?} {value:?}: {d:?}");
        // The health check follows the same claim.
        assert_eq!(
            health_checks(&objs, &node).len(),
            usize::from(served),
            "{name:?} {value:?}"
        );
    }
}

#[test]
fn session_affinity_client_ip_uses_timeout_or_default() {
    let cases = [
        (json!({}), 0),
        (json!({"sessionAffinity": "None"}), 0),
        (
            json!({"sessionAffinity": "ClientIP"}),
            DEFAULT_AFFINITY_TIMEOUT_S,
        ),
        (
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
            60,
        ),
        (
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": -1}}}),
            DEFAULT_AFFINITY_TIMEOUT_S,
        ),
    ];
    for (extra, want) in cases {
        let d = desired(&objects(vec![web(extra.clone())], vec![]), &node());
        assert_eq!(only(&d).affinity_timeout_s, want, "{extra}");
    }
}
