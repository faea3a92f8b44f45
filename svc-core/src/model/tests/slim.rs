//! What the store keeps of each object ([`SlimService`], [`SlimSlice`]): exactly what the model
//! reads, names shared, and the same decisions as from the full objects.

use std::sync::Arc;

use super::*;

/// A Service with every field set: those the model reads and those it does not.
fn everything() -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "web", "namespace": "shop", "uid": "0000-1", "resourceVersion": "42",
            "generation": 3, "creationTimestamp": "2026-11-26T10:00:00Z",
            "labels": {"app": "web", LABEL_SERVICE_PROXY_NAME: "svc-lb"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "0000-2"}],
            "managedFields": [{"manager": "kubectl", "operation": "Update",
                               "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {
            "type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "externalIPs": ["192.0.2.1"], "externalTrafficPolicy": "Local",
            "internalTrafficPolicy": "Local", "healthCheckNodePort": 30999,
            "loadBalancerSourceRanges": ["198.51.100.0/24"],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080,
                       "targetPort": 8080, "appProtocol": "http"}],
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "selector": {"app": "web"}, "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "loadBalancerClass": "x", "publishNotReadyAddresses": true,
            "trafficDistribution": "PreferClose", "allocateLoadBalancerNodePorts": true,
        },
        "status": {
            "loadBalancer": {"ingress": [
                {"hostname": "lb.example"},
                {"ip": "203.0.113.7", "ipMode": "VIP", "hostname": "lb.example",
                 "ports": [{"port": 80, "protocol": "TCP"}]},
            ]},
            "conditions": [{"type": "x", "status": "True", "lastTransitionTime":
                            "2026-11-26T10:00:00Z", "reason": "r", "message": "m"}],
        },
    })
}

#[test]
fn a_slim_service_keeps_exactly_what_the_model_reads() {
    let full: Service = serde_json::from_value(everything()).expect("a Service");
    let mut names = Interner::default();
    let slim = SlimService::of(full, &mut names);
    let text = |t: &str| Some(Box::<str>::from(t));
    let texts = |t: &[&str]| t.iter().map(|t| Box::<str>::from(*t)).collect::<Box<[_]>>();
    assert_eq!(
        slim,
        SlimService {
            proxy_name: text("svc-lb"),
            spec: Some(SlimSpec {
                type_: Some(Arc::from("LoadBalancer")),
                cluster_ip: text("10.96.0.10"),
                cluster_ips: texts(&["10.96.0.10"]),
                ip_families: texts(&["IPv4"]),
                ip_family_policy: text("SingleStack"),
                external_ips: texts(&["192.0.2.1"]),
                external_local: true,
                internal_local: true,
                health_check_node_port: Some(30999),
                source_ranges: texts(&["198.51.100.0/24"]),
                ports: vec![SlimPort {
                    name: Some(Arc::from("http")),
                    protocol: Some(Arc::from("TCP")),
                    port: 80,
                    node_port: Some(30080),
                }]
                .into(),
                client_ip_affinity: true,
                affinity_timeout_s: Some(60),
                // Every ingress entry stays (problems name them by index).
                ingress: vec![
                    SlimIngress::default(),
                    SlimIngress {
                        ip: text("203.0.113.7"),
                        proxy_mode: false,
                    },
                ]
                .into(),
            }),
        }
    );
    assert_eq!(names.len(), 3, "LoadBalancer, http, TCP");
}

#[test]
fn values_the_model_only_compares_become_flags() {
    for (spec, labels, want) in [
        (
            json!({"externalTrafficPolicy": "Cluster", "internalTrafficPolicy": "Cluster",
                   "sessionAffinity": "None",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 5}}}),
            json!({"app": "web"}),
            (false, false, false, None),
        ),
        (
            json!({"externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP"}),
            json!({LABEL_SERVICE_PROXY_NAME: ""}),
            (true, false, true, Some("")),
        ),
    ] {
        let (_, svc) = svc_labelled("default", "web", labels.clone(), spec.clone());
        let slim = SlimService::of(svc, &mut Interner::default());
        let s = slim.spec.as_ref().expect("a spec");
        assert_eq!(
            (
                s.external_local,
                s.internal_local,
                s.client_ip_affinity,
                slim.proxy_name.as_deref()
            ),
            want,
            "{spec} {labels}"
        );
    }
    let (_, ipvs) = svc("default", "web", json!({}));
    let mut no_spec = ipvs.clone();
    no_spec.spec = None;
    assert_eq!(
        SlimService::of(no_spec, &mut Interner::default()).spec,
        None
    );
}

#[test]
fn a_service_with_every_field_is_planned_from_its_slim_form() {
    let full: Service = serde_json::from_value(everything()).expect("a Service");
    let r = ObjectRef::new("shop", "web");
    let node = NodeContext {
        service_proxy_name: Some("svc-lb".into()),
        ..node_with(&[])
    };
    let (sr, slice) = slice(
        "shop",
        "web-1",
        "web",
        json!({"ports": [{"name": "http", "port": 8080}],
               "endpoints": [ep("10.244.1.5"), ep("10.244.2.5")]}),
    );
    let objs = objects(vec![(r.clone(), full)], vec![(sr, slice)]);
    let d = desired(&objs, &node);
    // The ClusterIP; the NodePort on both node addresses, the external IP and the LB IP, each
    // with its external-scope twin (externalTrafficPolicy: Local).
    assert_eq!(d.frontends.len(), 9, "{:#?}", d.frontends.keys());
    assert!(d.frontends.values().all(|f| f.affinity_timeout_s == 60));
    let checks = health_checks(&objs, &node);
    assert_eq!((checks.len(), checks[0].port), (1, 30999));
}

#[test]
fn a_slim_slice_keeps_what_backend_choice_reads_and_shares_names() {
    let mut names = Interner::default();
    let body = |addr: &str| {
        json!({"ports": [{"name": "http", "port": 8080}],
               "metadata": {"annotations": {crate::store::LAST_CHANGE_TRIGGER_TIME:
                                            "2025-12-01T02:00:00Z"}},
               "endpoints": [{"addresses": [addr, "10.244.9.9"], "nodeName": "node-b",
                              "zone": "zone-b", "conditions": {"ready": false,
                              "serving": true, "terminating": true},
                              "hints": {"forZones": [{"name": "zone-b"}]},
                              "targetRef": {"kind": "Pod", "name": "web-1"}}]})
    };
    let (r1, s1) = slice("default", "web-1", "web", body("10.244.1.5"));
    let (r2, s2) = slice("default", "web-2", "web", body("10.244.1.6"));
    let a = SlimSlice::of(&r1, &s1, &mut names);
    let b = SlimSlice::of(&r2, &s2, &mut names);
    assert_eq!(a.service.as_deref(), Some("web"));
    assert_eq!(
        a.trigger,
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_764_554_400))
    );
    fn v4(s: &SlimSlice) -> &SlimEndpoint<Ipv4Addr> {
        match &s.content.as_ref().expect("IPv4").endpoints {
            SliceEndpoints::V4(e) => &e[0],
            SliceEndpoints::V6(_) => panic!("an IPv4 slice"),
        }
    }
    let (ea, eb) = (v4(&a), v4(&b));
    assert_eq!(ea.addr, Ipv4Addr::new(10, 244, 1, 5), "the first address");
    assert!(!ea.ready && ea.serving_terminating);
    let (na, nb) = (ea.node_name.as_ref(), eb.node_name.as_ref());
    assert!(
        Arc::ptr_eq(na.expect("node"), nb.expect("node")),
        "one copy"
    );
    assert_eq!(names.len(), 3, "node-b, zone-b, http");
    drop((a, b));
    names.prune();
    assert!(names.is_empty(), "names no slice uses are forgotten");
}

#[test]
fn slices_proxies_ignore_keep_their_owner_and_nothing_else() {
    let mut names = Interner::default();
    for body in [
        json!({"addressType": "FQDN", "endpoints": [{"addresses": ["web.example"]}]}),
        json!({"metadata": {"labels": {LABEL_HEADLESS: ""}},
               "endpoints": [{"addresses": ["10.244.1.5"]}]}),
    ] {
        let (r, s) = slice("default", "web-1", "web", body.clone());
        let slim = SlimSlice::of(&r, &s, &mut names);
        assert_eq!(slim.service.as_deref(), Some("web"), "{body}");
        assert!(slim.content.is_none(), "{body}");
    }
    assert!(names.is_empty());
}

#[test]
fn an_ipv6_slice_keeps_ipv6_endpoints_and_refuses_what_validation_refuses() {
    let mut names = Interner::default();
    let body = json!({"addressType": "IPv6", "endpoints": [
        {"addresses": ["fd00:10:244:1::5"]},
        {"addresses": ["10.244.1.5"]},
        {"addresses": ["::1"]},
        {"addresses": ["fe80::1"]},
        {"addresses": ["ff02::1"]},
        {"addresses": ["::"]},
        {"addresses": ["::ffff:127.0.0.1"]},
    ]});
    let (r, s) = slice("default", "web-v6", "web", body);
    let slim = SlimSlice::of(&r, &s, &mut names);
    let content = slim.content.as_ref().expect("an IPv6 slice is read");
    let SliceEndpoints::V6(eps) = &content.endpoints else {
        panic!("IPv6 endpoints");
    };
    assert_eq!(eps.len(), 1);
    assert_eq!(
        eps[0].addr,
        "fd00:10:244:1::5".parse::<std::net::Ipv6Addr>().unwrap()
    );
    let fields: Vec<(&str, &str)> = content
        .problems
        .iter()
        .map(|p| (p.field.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(fields.len(), 6, "{fields:?}");
    assert!(fields[0].1.contains("not an IPv6 address"), "{fields:?}");
    for (i, why) in [
        (1, "loopback"),
        (2, "link-local range (fe80::/10)"),
        (3, "link-local multicast"),
        (4, "unspecified"),
        (5, "loopback range (127.0.0.0/8)"),
    ] {
        assert!(fields[i].1.contains(why), "{i}: {fields:?}");
        assert_eq!(fields[i].0, format!("endpoints[{}].addresses[0]", i + 1));
    }
}
