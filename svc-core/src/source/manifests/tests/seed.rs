//! The seed document's manifests, loaded from a directory and served by the model.

use super::*;

#[test]
fn seed_manifests_load_as_the_api_server_would_accept_them() {
    let dir = TempDir::new("seed");
    for (name, text) in seed_files() {
        dir.write(&name, &text);
    }
    dir.write("README.md", "not a manifest");
    let objects = load_dir(&dir.0).expect("load");
    let names: Vec<String> = objects.services.keys().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "default/my-service",
            "default/test-app",
            "default/test-app-no-selector",
            "default/test-cip-service",
            "default/test-external-ip",
            "default/test-service",
            "prod/my-service",
        ]
    );
    let cidr = default_service_cidr();
    for name in [
        "test-app",
        "test-app-no-selector",
        "test-external-ip",
        "test-service",
    ] {
        let ip: Ipv4Addr = cluster_ip(&objects, "default", name)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name} has an allocated clusterIP"));
        assert!(cidr.contains(&ip) && ip.octets()[2..] != [0, 0] && ip.octets()[2..] != [0, 1]);
        assert_ne!(ip.octets()[2..], [255, 255]);
        let spec = objects.services[&r("default", name)]
            .spec
            .as_ref()
            .expect("spec");
        assert_eq!(spec.cluster_ips, Some(vec![ip.to_string()]));
    }
    assert_eq!(
        cluster_ip(&objects, "default", "test-cip-service").as_deref(),
        Some("10.96.211.115")
    );
    assert_eq!(
        cluster_ip(&objects, "default", "my-service").as_deref(),
        Some("10.0.171.239")
    );
    assert_eq!(cluster_ip(&objects, "prod", "my-service"), None);

    let port = |name: &str| {
        objects.services[&r("default", name)]
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p.first().cloned())
            .expect("port")
    };
    assert_eq!(port("test-service").node_port, Some(30007));
    let lb_node_port = port("my-service")
        .node_port
        .expect("LoadBalancer gets a nodePort");
    assert!((30000..=32767).contains(&lb_node_port) && lb_node_port != 30007);
    assert_eq!(port("test-app").node_port, None);
    assert_eq!(port("test-app").protocol.as_deref(), Some("TCP"));
    let lb = &objects.services[&r("default", "my-service")];
    let ingress = lb
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref());
    assert_eq!(
        ingress
            .and_then(|i| i.first())
            .and_then(|i| i.ip.as_deref()),
        Some("192.0.2.127")
    );
    let ext = objects.services[&r("default", "test-external-ip")]
        .spec
        .as_ref()
        .and_then(|s| s.external_ips.clone());
    assert_eq!(ext, Some(vec!["198.51.100.10".to_owned()]));

    // Only the out-of-CIDR clusterIP is worth a word.
    assert_eq!(objects.problems.len(), 1, "{:?}", objects.problems);
    assert_eq!(objects.problems[0].field, "spec.clusterIP");

    // The frontends the model derives from them: one ClusterIP frontend per Service with a
    // clusterIP, plus two NodePorts on the node address, the LB IP and the external IP
    // (seed_north_south_services_serve_node_ports_lb_and_external_ips checks those);
    // ExternalName none; only the mirrored Service has (IPv4, ready) backends.
    let node = NodeContext {
        node_name: "node-a".into(),
        node_ips: vec![Ipv4Addr::new(172, 18, 0, 2)],
        ..Default::default()
    };
    let d = desired(&objects, &node);
    assert_eq!(d.frontends.len(), 10, "{:#?}", d.frontends.keys());
    let cip = FrontendKey {
        addr: [10, 96, 211, 115],
        port: 9000,
        proto: PROTO_TCP,
        scope: SCOPE_ANY,
    };
    assert!(d.frontends[&cip].backends.is_empty());
    let no_sel_ip: Ipv4Addr = cluster_ip(&objects, "default", "test-app-no-selector")
        .and_then(|s| s.parse().ok())
        .expect("ip");
    let no_sel = FrontendKey {
        addr: no_sel_ip.octets(),
        port: 30050,
        proto: PROTO_TCP,
        scope: SCOPE_ANY,
    };
    assert_eq!(
        d.frontends[&no_sel].backends,
        vec![Backend {
            addr: [192, 0, 2, 42],
            port: 30050,
            proto: PROTO_TCP,
            flags: 0
        }]
    );
    assert!(d.problems.is_empty(), "{:?}", d.problems);
}

#[test]
fn seed_north_south_services_serve_node_ports_lb_and_external_ips() {
    use svc_common::{FRONTEND_F_EXTERNAL_IP, FRONTEND_F_NODEPORT};
    let objects = load(&[
        ("nodeport.yaml", SEED_NODEPORT),
        ("lb.yaml", SEED_LB),
        ("test_external_ip.yml", SEED_EXTERNAL_IP),
    ]);
    let node = NodeContext {
        node_name: "node-a".into(),
        node_ips: vec![Ipv4Addr::new(172, 18, 0, 2)],
        ..Default::default()
    };
    let d = desired(&objects, &node);
    let key = |addr: [u8; 4], port: u16| FrontendKey {
        addr,
        port,
        proto: PROTO_TCP,
        scope: SCOPE_ANY,
    };
    let ip_of = |name: &str| -> [u8; 4] {
        cluster_ip(&objects, "default", name)
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
            .expect("clusterIP")
            .octets()
    };
    let lb_node_port = objects.services[&r("default", "my-service")]
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.first())
        .and_then(|p| p.node_port)
        .and_then(|n| u16::try_from(n).ok())
        .expect("allocated nodePort");
    let node_ip = [172, 18, 0, 2];
    let got: BTreeMap<FrontendKey, (String, u32)> = d
        .frontends
        .iter()
        .map(|(k, f)| (*k, (f.service.name.clone(), f.flags)))
        .collect();
    let want: BTreeMap<FrontendKey, (String, u32)> = [
        (key(ip_of("test-service"), 80), ("test-service", 0)),
        (key(node_ip, 30007), ("test-service", FRONTEND_F_NODEPORT)),
        (key([10, 0, 171, 239], 80), ("my-service", 0)),
        (
            key(node_ip, lb_node_port),
            ("my-service", FRONTEND_F_NODEPORT),
        ),
        (
            key([192, 0, 2, 127], 80),
            ("my-service", FRONTEND_F_EXTERNAL_IP),
        ),
        (key(ip_of("test-external-ip"), 80), ("test-external-ip", 0)),
        (
            key([198, 51, 100, 10], 80),
            ("test-external-ip", FRONTEND_F_EXTERNAL_IP),
        ),
    ]
    .into_iter()
    .map(|(k, (n, f))| (k, (n.to_owned(), f)))
    .collect();
    assert_eq!(got, want);
    assert!(d.problems.is_empty(), "{:?}", d.problems);
}
