//! Hand-written `v1/Endpoints` → EndpointSlices, as Kubernetes' endpointslicemirroring controller
//! writes them ([`mirror_endpoints`]), and the labels and limits that controller uses.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{ObjectRef, Problem, LABEL_SERVICE_NAME};

/// Label the mirroring controller sets on the slices it writes, naming itself.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`] on mirrored slices.
pub const MIRRORING_CONTROLLER: &str = "endpointslicemirroring-controller.k8s.io";
/// An `Endpoints` carrying this label with value `"true"` is not mirrored.
pub const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Endpoints per mirrored slice, the mirroring controller's default `maxEndpointsPerSubset`.
pub const MAX_ENDPOINTS_PER_MIRRORED_SLICE: usize = 1000;
/// Annotations the mirroring controller does not copy from `Endpoints` to its slices.
const NOT_MIRRORED_ANNOTATIONS: [&str; 2] = [
    "endpoints.kubernetes.io/last-change-trigger-time",
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// Converts a hand-written `v1/Endpoints` into EndpointSlices as Kubernetes'
/// endpointslicemirroring controller does, or returns nothing when it would not mirror:
/// the Endpoints is labelled [`LABEL_SKIP_MIRROR`]`: "true"`, its Service does not exist, or the
/// Service has a selector (then the Service's slices come from its pods, not from here).
///
/// Subsets with the same ports share slices; each address family gets its own slices (IPv4
/// `<name>-mirror-<n>`, IPv6 `<name>-mirror-ipv6-<n>`; the real controller uses random
/// suffixes, ours must be deterministic), at most [`MAX_ENDPOINTS_PER_MIRRORED_SLICE`] endpoints
/// each. `addresses` become `ready: true`, `notReadyAddresses` `ready: false`; hostname,
/// nodeName and targetRef are carried. Slices are labelled with [`LABEL_SERVICE_NAME`] and
/// [`LABEL_MANAGED_BY`], and keep the Endpoints' own labels and annotations.
pub fn mirror_endpoints(
    ep_ref: &ObjectRef,
    ep: &Endpoints,
    service: Option<&Service>,
    problems: &mut Vec<Problem>,
) -> Vec<EndpointSlice> {
    let object = format!("Endpoints {ep_ref}");
    let labels = ep.metadata.labels.as_ref();
    if labels
        .and_then(|l| l.get(LABEL_SKIP_MIRROR))
        .map(String::as_str)
        == Some("true")
    {
        return Vec::new();
    }
    let Some(service) = service else {
        problems.push(Problem::new(
            &object,
            "",
            "no Service of that name; not mirrored",
        ));
        return Vec::new();
    };
    if service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty())
    {
        problems.push(Problem::new(
            &object,
            "",
            "its Service has a selector, so its endpoints come from the selected pods; \
             not mirrored",
        ));
        return Vec::new();
    }

    // Subsets grouped by their (sorted) port list, in first-seen order.
    struct Group<'a> {
        key: Vec<(String, i32, String)>,
        ports: Vec<EndpointPort>,
        v4: Vec<(IpAddr, bool, &'a EndpointAddress)>,
        v6: Vec<(IpAddr, bool, &'a EndpointAddress)>,
    }
    let mut groups: Vec<Group<'_>> = Vec::new();
    for (i, subset) in ep.subsets.iter().flatten().enumerate() {
        let ports: Vec<EndpointPort> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: p.name.clone(),
                port: Some(p.port),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".to_owned())),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let mut key: Vec<_> = ports
            .iter()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.port.unwrap_or(0),
                    p.protocol.clone().unwrap_or_default(),
                )
            })
            .collect();
        key.sort();
        let at = match groups.iter().position(|g| g.key == key) {
            Some(at) => at,
            None => {
                groups.push(Group {
                    key,
                    ports,
                    v4: Vec::new(),
                    v6: Vec::new(),
                });
                groups.len() - 1
            }
        };
        let group = &mut groups[at];
        let lists = [
            ("addresses", &subset.addresses, true),
            ("notReadyAddresses", &subset.not_ready_addresses, false),
        ];
        for (field, list, ready) in lists {
            for (j, address) in list.iter().flatten().enumerate() {
                match address.ip.parse::<IpAddr>() {
                    Ok(ip @ IpAddr::V4(_)) => group.v4.push((ip, ready, address)),
                    Ok(ip @ IpAddr::V6(_)) => group.v6.push((ip, ready, address)),
                    Err(_) => problems.push(Problem::new(
                        &object,
                        format!("subsets[{i}].{field}[{j}].ip"),
                        format!("{:?} is not an IP address; not mirrored", address.ip),
                    )),
                }
            }
        }
    }

    let mut slice_labels = labels.cloned().unwrap_or_default();
    slice_labels.insert(LABEL_SERVICE_NAME.to_owned(), ep_ref.name.clone());
    slice_labels.insert(LABEL_MANAGED_BY.to_owned(), MIRRORING_CONTROLLER.to_owned());
    let annotations = ep.metadata.annotations.as_ref().map(|a| {
        a.iter()
            .filter(|(k, _)| !NOT_MIRRORED_ANNOTATIONS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    });
    let mut slices = Vec::new();
    let mut counters = [0usize; 2];
    for group in &groups {
        for (family, addrs) in [(0, &group.v4), (1, &group.v6)] {
            let mut seen = std::collections::HashSet::new();
            let unique: Vec<_> = addrs.iter().filter(|(ip, _, _)| seen.insert(*ip)).collect();
            for chunk in unique.chunks(MAX_ENDPOINTS_PER_MIRRORED_SLICE) {
                let n = counters[family];
                counters[family] += 1;
                let (name, address_type) = match family {
                    0 => (format!("{}-mirror-{n}", ep_ref.name), "IPv4"),
                    _ => (format!("{}-mirror-ipv6-{n}", ep_ref.name), "IPv6"),
                };
                slices.push(EndpointSlice {
                    metadata: ObjectMeta {
                        name: Some(name),
                        namespace: Some(ep_ref.namespace.clone()),
                        labels: Some(slice_labels.clone()),
                        annotations: annotations.clone().filter(|a| !a.is_empty()),
                        ..ObjectMeta::default()
                    },
                    address_type: address_type.to_owned(),
                    ports: Some(group.ports.clone()),
                    endpoints: chunk
                        .iter()
                        .map(|(ip, ready, address)| Endpoint {
                            addresses: vec![ip.to_string()],
                            conditions: Some(EndpointConditions {
                                ready: Some(*ready),
                                ..EndpointConditions::default()
                            }),
                            hostname: address.hostname.clone(),
                            node_name: address.node_name.clone(),
                            target_ref: address.target_ref.clone(),
                            ..Endpoint::default()
                        })
                        .collect(),
                });
            }
        }
    }
    slices
}
