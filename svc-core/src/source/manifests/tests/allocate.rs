//! ClusterIP and NodePort allocation: deterministic, reserved values, conflicts, the types
//! that get none.

use std::{hash::Hasher, net::IpAddr};

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

fn dual() -> Options {
    Options {
        service_cidr6: Some("fd00:10:96::/112".parse().expect("cidr")),
        ..Options::default()
    }
}

fn spec_of(objects: &Objects, name: &str) -> (Vec<String>, Vec<String>, Option<String>) {
    let spec = objects
        .services
        .get(&r("ns", name))
        .unwrap_or_else(|| panic!("Service ns/{name} kept: {:?}", objects.problems))
        .spec
        .clone()
        .unwrap();
    assert_eq!(
        spec.cluster_ip.as_deref(),
        spec.cluster_ips
            .as_ref()
            .and_then(|c| c.first())
            .map(String::as_str),
        "clusterIP is clusterIPs[0]"
    );
    (
        spec.cluster_ips.unwrap_or_default(),
        spec.ip_families.unwrap_or_default(),
        spec.ip_family_policy,
    )
}

fn problem<'a>(objects: &'a Objects, name: &str) -> &'a Problem {
    objects
        .problems
        .iter()
        .find(|p| p.object == format!("Service ns/{name}"))
        .unwrap_or_else(|| panic!("no problem for ns/{name}: {:?}", objects.problems))
}

#[test]
fn families_follow_the_policy_and_the_clusters_ranges() {
    let texts =
        vec![(
        "a.yaml".to_owned(),
        svc_yaml("ns", "single", "")
            + &svc_yaml("ns", "prefer", ", ipFamilyPolicy: PreferDualStack")
            + &svc_yaml("ns", "require", ", ipFamilyPolicy: RequireDualStack")
            + &svc_yaml("ns", "v6-only", ", ipFamilies: [IPv6]")
            + &svc_yaml(
                "ns",
                "v6-first",
                ", ipFamilyPolicy: PreferDualStack, ipFamilies: [IPv6, IPv4]",
            )
            + &svc_yaml(
                "ns",
                "given-v4",
                ", ipFamilyPolicy: RequireDualStack, clusterIP: 10.96.5.5",
            )
            + &svc_yaml(
                "ns",
                "given-both",
                ", ipFamilyPolicy: RequireDualStack, clusterIPs: [10.96.5.6, \"fd00:10:96::56\"]",
            )
            + &svc_yaml("ns", "headless", ", clusterIP: None, ipFamilyPolicy: PreferDualStack"),
    )];
    let in_range = |ip: &str| {
        let ip: IpAddr = ip.parse().unwrap();
        match ip {
            IpAddr::V4(a) => dual().service_cidr.contains(&a),
            IpAddr::V6(a) => dual().service_cidr6.unwrap().contains(&a),
        }
    };
    let fams = |ips: &[String]| -> Vec<&'static str> {
        ips.iter()
            .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
            .collect()
    };

    // A dual-stack cluster.
    let objects = load_texts(&texts, &dual());
    assert!(objects.problems.is_empty(), "{:?}", objects.problems);
    for (name, want, policy) in [
        ("single", vec!["IPv4"], "SingleStack"),
        ("prefer", vec!["IPv4", "IPv6"], "PreferDualStack"),
        ("require", vec!["IPv4", "IPv6"], "RequireDualStack"),
        ("v6-only", vec!["IPv6"], "SingleStack"),
        ("v6-first", vec!["IPv6", "IPv4"], "PreferDualStack"),
        ("given-v4", vec!["IPv4", "IPv6"], "RequireDualStack"),
        ("given-both", vec!["IPv4", "IPv6"], "RequireDualStack"),
    ] {
        let (ips, families, got_policy) = spec_of(&objects, name);
        assert_eq!(families, want, "{name}: ipFamilies");
        assert_eq!(fams(&ips), want, "{name}: clusterIPs {ips:?}");
        assert_eq!(got_policy.as_deref(), Some(policy), "{name}");
        assert!(ips.iter().all(|ip| in_range(ip)), "{name}: {ips:?}");
    }
    assert_eq!(spec_of(&objects, "given-v4").0[0], "10.96.5.5");
    assert_eq!(
        spec_of(&objects, "given-both").0,
        ["10.96.5.6", "fd00:10:96::56"]
    );
    assert_eq!(spec_of(&objects, "headless").0, ["None"]);
    // Every allocated address is unique across the families.
    let mut all: Vec<String> = objects
        .services
        .values()
        .flat_map(|s| s.spec.clone().unwrap().cluster_ips.unwrap_or_default())
        .filter(|ip| ip != "None")
        .collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "no two Services share an address");

    // Deterministic: the same manifests, the same addresses.
    assert_eq!(load_texts(&texts, &dual()).services, objects.services);

    // An IPv4 single-stack cluster: PreferDualStack keeps IPv4; RequireDualStack and IPv6
    // allocation are refused, naming the field; a given IPv6 ClusterIP is accepted (the
    // cluster has no IPv6 range to check it against).
    let objects = load_texts(&texts, &Options::default());
    assert_eq!(spec_of(&objects, "prefer").1, ["IPv4"]);
    assert_eq!(spec_of(&objects, "single").1, ["IPv4"]);
    assert_eq!(spec_of(&objects, "given-both").1, ["IPv4", "IPv6"]);
    for (name, field, words) in [
        (
            "require",
            "spec.ipFamilyPolicy",
            "RequireDualStack on a cluster without an IPv6",
        ),
        (
            "given-v4",
            "spec.ipFamilyPolicy",
            "RequireDualStack on a cluster without an IPv6",
        ),
        (
            "v6-only",
            "spec.ipFamilies[0]",
            "IPv6 needs an IPv6 service range",
        ),
        (
            "v6-first",
            "spec.ipFamilies[0]",
            "IPv6 needs an IPv6 service range",
        ),
    ] {
        assert!(
            !objects.services.contains_key(&r("ns", name)),
            "{name} refused"
        );
        let p = problem(&objects, name);
        assert_eq!(p.field, field, "{name}: {p:?}");
        assert!(p.message.contains(words), "{name}: {p:?}");
    }
    assert!(
        !objects
            .problems
            .iter()
            .any(|p| p.object == "Service ns/given-both"),
        "{:?}",
        objects.problems
    );
}

#[test]
fn inconsistent_families_are_refused_naming_the_field() {
    let texts =
        vec![(
        "a.yaml".to_owned(),
        svc_yaml(
            "ns",
            "mismatch",
            ", ipFamilies: [IPv6], clusterIP: 10.96.1.1",
        ) + &svc_yaml(
            "ns",
            "single-two",
            ", ipFamilyPolicy: SingleStack, clusterIPs: [10.96.1.2, \"fd00:10:96::2\"]",
        ) + &svc_yaml("ns", "two-v4", ", clusterIPs: [10.96.1.3, 10.96.1.4]")
            + &svc_yaml("ns", "bad-family", ", ipFamilies: [IPv5]")
            + &svc_yaml("ns", "bad-policy", ", ipFamilyPolicy: Sometimes")
            + &svc_yaml(
                "ns",
                "taken-v6",
                ", ipFamilyPolicy: RequireDualStack, clusterIPs: [10.96.1.5, \"fd00:10:96::7\"]",
            )
            + &svc_yaml("ns", "user-v6", ", ipFamilies: [IPv6], clusterIP: \"fd00:10:96::7\""),
    )];
    let objects = load_texts(&texts, &dual());
    for (name, field, words) in [
        ("mismatch", "spec.clusterIPs[0]", "10.96.1.1 is not IPv6"),
        (
            "single-two",
            "spec.ipFamilyPolicy",
            "SingleStack with two families",
        ),
        ("two-v4", "spec.clusterIPs[1]", "a second IPv4 address"),
        (
            "bad-family",
            "spec.ipFamilies[0]",
            "unsupported value \"IPv5\"",
        ),
        (
            "bad-policy",
            "spec.ipFamilyPolicy",
            "unsupported value \"Sometimes\"",
        ),
        // Reserved in ObjectRef order: `taken-v6` comes first, `user-v6` is refused.
        (
            "user-v6",
            "spec.clusterIP",
            "fd00:10:96::7 is already allocated to Service ns/taken-v6",
        ),
    ] {
        assert!(
            !objects.services.contains_key(&r("ns", name)),
            "{name} refused"
        );
        let p = problem(&objects, name);
        assert_eq!(p.field, field, "{name}: {p:?}");
        assert!(p.message.contains(words), "{name}: {p:?}");
    }
    assert_eq!(
        spec_of(&objects, "taken-v6").0,
        ["10.96.1.5", "fd00:10:96::7"]
    );
}
