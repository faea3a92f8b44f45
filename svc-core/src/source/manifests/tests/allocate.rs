//! ClusterIP and NodePort allocation: deterministic, reserved values, conflicts, the types
//! that get none.

use std::hash::Hasher;

use fnv::FnvHasher;

use super::*;

#[test]
fn cluster_ip_allocation_is_deterministic_and_independent_of_file_order() {
    let services: Vec<String> = (0..50)
        .map(|i| svc_yaml("ns", &format!("s{i}"), ""))
        .collect();
    let forward: Vec<(String, String)> = services
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("{i:03}.yaml"), t.clone()))
        .collect();
    let mut backward = forward.clone();
    backward.reverse();
    let a = load_texts(&forward, &Options::default());
    let b = load_texts(&backward, &Options::default());
    assert_eq!(a.services, b.services);
    let mut seen = std::collections::HashSet::new();
    for svc in a.services.values() {
        let ip = svc
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.clone())
            .expect("allocated");
        assert!(seen.insert(ip), "no two Services share an address");
    }
}

#[test]
fn allocation_probes_past_user_chosen_addresses_and_skips_reserved_ones() {
    // A /30 has exactly one allocatable address (.2): network .0, .1 and broadcast .3 are not.
    let options = Options {
        service_cidr: "10.0.0.0/30".parse().expect("cidr"),
        ..Options::default()
    };
    let texts = vec![(
        "a.yaml".to_owned(),
        svc_yaml("ns", "auto", "") + &svc_yaml("ns", "auto2", ""),
    )];
    let objects = load_texts(&texts, &options);
    assert_eq!(
        cluster_ip(&objects, "ns", "auto").as_deref(),
        Some("10.0.0.2")
    );
    assert!(
        !objects.services.contains_key(&r("ns", "auto2")),
        "CIDR full: refused"
    );
    assert!(objects
        .problems
        .iter()
        .any(|p| p.object == "Service ns/auto2" && p.message.contains("no free address")));

    // The user-chosen .2 is taken first even though the auto Service sorts before it.
    let texts = vec![(
        "a.yaml".to_owned(),
        svc_yaml("ns", "a-auto", "") + &svc_yaml("ns", "z-user", ", clusterIP: 10.0.0.2"),
    )];
    let objects = load_texts(&texts, &options);
    assert_eq!(
        cluster_ip(&objects, "ns", "z-user").as_deref(),
        Some("10.0.0.2")
    );
    assert!(!objects.services.contains_key(&r("ns", "a-auto")));

    // In a roomy CIDR, an auto Service whose hash lands on a user's address probes onward.
    let probe_start = |name: &str| {
        let mut h = FnvHasher::default();
        h.write(format!("ns/{name}").as_bytes());
        Ipv4Addr::from((10u32 << 24 | 96 << 16) + 2 + (h.finish() % 65533) as u32)
    };
    let natural = probe_start("auto");
    let texts = vec![(
        "a.yaml".to_owned(),
        svc_yaml("ns", "auto", "") + &svc_yaml("ns", "user", &format!(", clusterIP: {natural}")),
    )];
    let objects = load_texts(&texts, &Options::default());
    let got: Ipv4Addr = cluster_ip(&objects, "ns", "auto")
        .and_then(|s| s.parse().ok())
        .expect("ip");
    assert_ne!(got, natural);
    assert_eq!(u32::from(got), u32::from(natural) + 1);
}

#[test]
fn duplicate_user_cluster_ip_or_node_port_refuses_the_later_service() {
    let texts = vec![(
        "a.yaml".to_owned(),
        svc_yaml("ns", "a", ", clusterIP: 10.96.0.50")
            + &svc_yaml("ns", "b", ", clusterIP: 10.96.0.50")
            + "apiVersion: v1\nkind: Service\nmetadata: {name: c, namespace: ns}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 30100}]}\n---\n"
            + "apiVersion: v1\nkind: Service\nmetadata: {name: d, namespace: ns}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 30100}]}\n",
    )];
    let objects = load_texts(&texts, &Options::default());
    let names: Vec<String> = objects.services.keys().map(ToString::to_string).collect();
    assert_eq!(names, ["ns/a", "ns/c"]);
    assert_eq!(objects.problems.len(), 2, "{:?}", objects.problems);
}

#[test]
fn headless_and_external_name_services_get_no_cluster_ip() {
    let objects = load(&[(
        "a.yaml",
        &(svc_yaml("ns", "headless", ", clusterIP: None")
            + "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: ns}\nspec: {type: ExternalName, externalName: db.example.com}\n"),
    )]);
    assert_eq!(
        cluster_ip(&objects, "ns", "headless").as_deref(),
        Some("None")
    );
    let spec = objects.services[&r("ns", "headless")]
        .spec
        .clone()
        .expect("spec");
    assert_eq!(spec.cluster_ips, Some(vec!["None".to_owned()]));
    assert_eq!(cluster_ip(&objects, "ns", "ext"), None);
}

#[test]
fn load_balancer_without_node_port_allocation_gets_none() {
    let objects = load(&[(
        "a.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: lb}\nspec: {type: LoadBalancer, allocateLoadBalancerNodePorts: false, ports: [{port: 80}]}\n",
    )]);
    let spec = objects.services[&r("default", "lb")]
        .spec
        .clone()
        .expect("spec");
    assert_eq!(
        spec.ports.and_then(|p| p.first().and_then(|p| p.node_port)),
        None
    );
}
