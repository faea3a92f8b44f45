//! Endpoints mirrored to EndpointSlices, and when they are not.

use super::*;

#[test]
fn endpoints_of_selectorless_service_are_mirrored_like_the_controller() {
    let objects = load(&[("a.yaml", SEED_NO_SELECTOR)]);
    let names: Vec<String> = objects.slices.keys().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "default/test-app-no-selector-mirror-0",
            "default/test-app-no-selector-mirror-ipv6-0"
        ]
    );
    let v4 = &objects.slices[&r("default", "test-app-no-selector-mirror-0")];
    assert_eq!(v4.address_type, "IPv4");
    let labels = v4.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(LABEL_SERVICE_NAME).map(String::as_str),
        Some("test-app-no-selector")
    );
    assert_eq!(
        labels.get(LABEL_MANAGED_BY).map(String::as_str),
        Some(MIRRORING_CONTROLLER)
    );
    let ports = v4.ports.clone().unwrap_or_default();
    assert_eq!(
        ports,
        vec![EndpointPort {
            name: None,
            port: Some(30050),
            protocol: Some("TCP".into()),
            app_protocol: None
        }]
    );
    let eps: Vec<_> = v4
        .endpoints
        .iter()
        .map(|e| {
            (
                e.addresses.clone(),
                e.conditions.as_ref().and_then(|c| c.ready),
                e.node_name.clone(),
            )
        })
        .collect();
    assert_eq!(
        eps,
        vec![
            (
                vec!["192.0.2.42".to_owned()],
                Some(true),
                Some("node-b".to_owned())
            ),
            (vec!["192.0.2.43".to_owned()], Some(false), None),
        ]
    );
    let v6 = &objects.slices[&r("default", "test-app-no-selector-mirror-ipv6-0")];
    assert_eq!(v6.address_type, "IPv6");
    assert_eq!(v6.endpoints.len(), 1);
}

#[test]
fn subsets_with_the_same_ports_share_a_slice() {
    let objects = load(&[(
        "a.yaml",
        "\
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {ports: [{name: a, port: 80}, {name: b, port: 81}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: ext}
subsets:
  - addresses: [{ip: 192.0.2.1}]
    ports: [{name: a, port: 80}, {name: b, port: 81}]
  - addresses: [{ip: 192.0.2.2}]
    ports: [{name: b, port: 81}, {name: a, port: 80}]
  - addresses: [{ip: 192.0.2.3}]
    ports: [{name: a, port: 8080}]
",
    )]);
    assert_eq!(objects.slices.len(), 2);
    assert_eq!(
        objects.slices[&r("default", "ext-mirror-0")]
            .endpoints
            .len(),
        2
    );
    assert_eq!(
        objects.slices[&r("default", "ext-mirror-1")]
            .endpoints
            .len(),
        1
    );
}

#[test]
fn endpoints_are_not_mirrored_for_selector_missing_service_or_skip_label() {
    let objects = load(&[(
        "a.yaml",
        "\
apiVersion: v1
kind: Service
metadata: {name: sel}
spec: {selector: {app: x}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: sel}
subsets: [{addresses: [{ip: 192.0.2.1}], ports: [{port: 80}]}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: orphan}
subsets: [{addresses: [{ip: 192.0.2.1}], ports: [{port: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: skip}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Endpoints
metadata:
  name: skip
  labels: {endpointslice.kubernetes.io/skip-mirror: \"true\"}
subsets: [{addresses: [{ip: 192.0.2.1}], ports: [{port: 80}]}]
",
    )]);
    assert!(objects.slices.is_empty(), "{:?}", objects.slices.keys());
    let objs: Vec<_> = objects.problems.iter().map(|p| p.object.as_str()).collect();
    assert_eq!(objs, ["Endpoints default/orphan", "Endpoints default/sel"]);
}
