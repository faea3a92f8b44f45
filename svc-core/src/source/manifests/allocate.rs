//! What the API server does to a Service on create, without an API server: its defaults
//! ([`apply_service_defaults`]) and the ClusterIP and NodePort allocation ([`allocate`]), a pure
//! function of the directory so every node reaches the same answer (see the `manifests` module
//! docs), with user-chosen values reserved first and conflicts refused.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::net::Ipv4Addr;

use fnv::FnvHasher;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{ObjectRef, Problem};

use super::Options;

/// The API server's defaults that matter downstream.
pub(super) fn apply_service_defaults(svc: &mut Service) {
    let spec = svc.spec.get_or_insert_default();
    spec.type_.get_or_insert_with(|| "ClusterIP".to_owned());
    spec.session_affinity
        .get_or_insert_with(|| "None".to_owned());
    for port in spec.ports.iter_mut().flatten() {
        port.protocol.get_or_insert_with(|| "TCP".to_owned());
        port.target_port.get_or_insert(IntOrString::Int(port.port));
    }
    // `clusterIP` and `clusterIPs[0]` are the same address; either may be the one given.
    let first = spec
        .cluster_ips
        .as_ref()
        .and_then(|ips| ips.first())
        .cloned();
    match (spec.cluster_ip.as_deref(), first) {
        (None | Some(""), Some(first)) => spec.cluster_ip = Some(first),
        (Some(ip), None) if !ip.is_empty() => spec.cluster_ips = Some(vec![ip.to_owned()]),
        _ => {}
    }
}

fn service_type(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("ClusterIP")
}

fn wants_node_ports(svc: &Service) -> bool {
    match service_type(svc) {
        "NodePort" => true,
        "LoadBalancer" => {
            svc.spec
                .as_ref()
                .and_then(|s| s.allocate_load_balancer_node_ports)
                != Some(false)
        }
        _ => false,
    }
}

/// What allocation decided for one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Allocation {
    /// Refused: a user-chosen ClusterIP or NodePort another Service has, or no address left.
    Refused,
    /// Kept, with what was allocated to it: a ClusterIP (`None` when it chose one or needs
    /// none) and NodePorts by port index.
    Kept {
        cluster_ip: Option<Ipv4Addr>,
        node_ports: Vec<(usize, u16)>,
    },
}

/// Reserves user-chosen ClusterIPs and NodePorts (refusing Services that reuse one), then
/// allocates the missing ones. See the module docs for why it is a pure function of the input.
pub(super) fn allocate(
    services: &mut BTreeMap<ObjectRef, Service>,
    options: &Options,
    problems: &mut Vec<Problem>,
) {
    let all: Vec<(&ObjectRef, &Service)> = services.iter().collect();
    let decided = decide(&all, options, problems);
    let mut refused = Vec::new();
    for ((svc_ref, svc), allocation) in services.iter_mut().zip(&decided) {
        match allocation {
            Allocation::Refused => refused.push(svc_ref.clone()),
            Allocation::Kept { .. } => apply_allocation(svc, allocation),
        }
    }
    for svc_ref in refused {
        services.remove(&svc_ref);
    }
}

/// What [`allocate`] decides for `services` (in [`ObjectRef`] order, defaults applied), one
/// [`Allocation`] for each, in the same order, without changing them: O(Services), no clone.
pub(super) fn decide(
    services: &[(&ObjectRef, &Service)],
    options: &Options,
    problems: &mut Vec<Problem>,
) -> Vec<Allocation> {
    let mut ips: HashMap<Ipv4Addr, &ObjectRef> = HashMap::new();
    let mut node_ports: HashMap<u16, &ObjectRef> = HashMap::new();
    let mut decided = vec![
        Allocation::Kept {
            cluster_ip: None,
            node_ports: Vec::new(),
        };
        services.len()
    ];

    // Pass 1: user-chosen values, first come (in ObjectRef order) first served.
    for (at, &(svc_ref, svc)) in services.iter().enumerate() {
        let object = || format!("Service {svc_ref}");
        let spec = svc.spec.as_ref();
        let chosen_ip = match spec.and_then(|s| s.cluster_ip.as_deref()) {
            _ if service_type(svc) == "ExternalName" => None,
            Some(text) => text.parse::<Ipv4Addr>().ok(),
            None => None,
        };
        let mut chosen_ports = Vec::new();
        if wants_node_ports(svc) {
            for (i, port) in spec
                .and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
                .enumerate()
            {
                if let Some(n) = port.node_port.and_then(|n| u16::try_from(n).ok()) {
                    chosen_ports.push((i, n));
                }
            }
        }
        let ip_conflict = chosen_ip.and_then(|ip| ips.get(&ip).map(|owner| (ip, owner)));
        let port_conflict = chosen_ports
            .iter()
            .find_map(|(i, n)| node_ports.get(n).map(|owner| (*i, *n, owner)));
        if let Some((ip, owner)) = ip_conflict {
            problems.push(Problem::new(
                object(),
                "spec.clusterIP",
                format!("{ip} is already allocated to Service {owner}; Service refused"),
            ));
            decided[at] = Allocation::Refused;
            continue;
        }
        if let Some((i, n, owner)) = port_conflict {
            problems.push(Problem::new(
                object(),
                format!("spec.ports[{i}].nodePort"),
                format!("{n} is already allocated to Service {owner}; Service refused"),
            ));
            decided[at] = Allocation::Refused;
            continue;
        }
        if let Some(ip) = chosen_ip {
            if !options.service_cidr.contains(&ip) {
                problems.push(Problem::new(
                    object(),
                    "spec.clusterIP",
                    format!(
                        "{ip} is outside the service CIDR {}; accepted",
                        options.service_cidr
                    ),
                ));
            }
            ips.insert(ip, svc_ref);
        }
        for (i, n) in chosen_ports {
            if !options.node_port_range.contains(&n) {
                problems.push(Problem::new(
                    object(),
                    format!("spec.ports[{i}].nodePort"),
                    format!(
                        "{n} is outside the node-port range {}-{}; accepted",
                        options.node_port_range.start(),
                        options.node_port_range.end()
                    ),
                ));
            }
            node_ports.insert(n, svc_ref);
        }
    }

    // Pass 2: allocations, in ObjectRef order.
    let cidr = options.service_cidr;
    // Candidates: network+2 ..= broadcast-1 (not the network, the `.1`, or the broadcast).
    let first_ip = u64::from(u32::from(cidr.network())) + 2;
    let last_ip = u64::from(u32::from(cidr.broadcast())).saturating_sub(1);
    let ip_count = (last_ip + 1).saturating_sub(first_ip);
    let first_port = u64::from(*options.node_port_range.start());
    let port_count = (u64::from(*options.node_port_range.end()) + 1).saturating_sub(first_port);
    for (&(svc_ref, svc), decision) in services.iter().zip(decided.iter_mut()) {
        let Allocation::Kept {
            cluster_ip,
            node_ports: allocated_ports,
        } = decision
        else {
            continue;
        };
        let object = || format!("Service {svc_ref}");
        if needs_ip(svc) {
            let key = [svc_ref.namespace.as_str(), "/", svc_ref.name.as_str()];
            let found = probe(&key, ip_count, |offset| {
                let Ok(candidate) = u32::try_from(first_ip + offset) else {
                    return None;
                };
                let ip = Ipv4Addr::from(candidate);
                (!ips.contains_key(&ip)).then_some(ip)
            });
            let Some(ip) = found else {
                problems.push(Problem::new(
                    object(),
                    "spec.clusterIP",
                    format!("no free address left in the service CIDR {cidr}; Service refused"),
                ));
                *decision = Allocation::Refused;
                continue;
            };
            ips.insert(ip, svc_ref);
            *cluster_ip = Some(ip);
        }
        if !wants_node_ports(svc) {
            continue;
        }
        let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
        for (i, port) in ports.into_iter().flatten().enumerate() {
            if port.node_port.is_some() {
                continue;
            }
            let which = match port.name.as_deref() {
                Some(name) if !name.is_empty() => name.to_owned(),
                _ => format!(
                    "{}/{}",
                    port.port,
                    port.protocol.as_deref().unwrap_or("TCP")
                ),
            };
            let key = [&svc_ref.namespace, "/", &svc_ref.name, "/", &which];
            let found = probe(&key, port_count, |offset| {
                let n = u16::try_from(first_port + offset).ok()?;
                (!node_ports.contains_key(&n)).then_some(n)
            });
            match found {
                Some(n) => {
                    node_ports.insert(n, svc_ref);
                    allocated_ports.push((i, n));
                }
                None => problems.push(Problem::new(
                    object(),
                    format!("spec.ports[{i}].nodePort"),
                    "no free node port left in the range; port left without one",
                )),
            }
        }
    }
    decided
}

/// A Service that gets a ClusterIP allocated: not `ExternalName`, none given.
fn needs_ip(svc: &Service) -> bool {
    service_type(svc) != "ExternalName"
        && svc
            .spec
            .as_ref()
            .is_some_and(|s| s.cluster_ip.as_deref().unwrap_or("").is_empty())
}

/// Writes a kept Service's [`Allocation`] into it (a refused one is left alone: it is dropped).
pub(super) fn apply_allocation(svc: &mut Service, allocation: &Allocation) {
    let Allocation::Kept {
        cluster_ip,
        node_ports,
    } = allocation
    else {
        return;
    };
    let needs_ip = needs_ip(svc);
    let spec = svc.spec.get_or_insert_default();
    if needs_ip {
        if let Some(ip) = cluster_ip {
            spec.cluster_ip = Some(ip.to_string());
            spec.cluster_ips = Some(vec![ip.to_string()]);
            spec.ip_families
                .get_or_insert_with(|| vec!["IPv4".to_owned()]);
            spec.ip_family_policy
                .get_or_insert_with(|| "SingleStack".to_owned());
        }
    } else if spec.cluster_ip.as_deref() == Some("None") {
        spec.cluster_ips
            .get_or_insert_with(|| vec!["None".to_owned()]);
    }
    for &(i, n) in node_ports {
        if let Some(port) = spec.ports.as_mut().and_then(|p| p.get_mut(i)) {
            port.node_port = Some(i32::from(n));
        }
    }
}

/// What [`decide`] reads of a Service (besides its name): Services whose inputs are unchanged
/// cannot change any allocation, so an edit that keeps them (labels, selector, endpoints)
/// need not re-run it.
pub(super) fn allocation_inputs(svc: &Service) -> impl PartialEq + '_ {
    let spec = svc.spec.as_ref();
    let ports = spec.and_then(|s| s.ports.as_ref()).into_iter().flatten();
    (
        service_type(svc),
        spec.map(|s| s.cluster_ip.as_deref()),
        spec.map(|s| s.allocate_load_balancer_node_ports),
        ports
            .map(|p| {
                (
                    p.node_port,
                    p.name.as_deref(),
                    p.port,
                    p.protocol.as_deref(),
                )
            })
            .collect::<Vec<_>>(),
    )
}

/// Linear probing over `0..count` starting at FNV-1a(`key`, its parts concatenated: FNV-1a
/// reads bytes one at a time, so no string is built) mod `count`; returns the first
/// candidate `accept` takes. `accept` returns `None` for taken candidates. Allocation must give
/// the same answer on every node and across releases: std's `DefaultHasher` is seeded per
/// process and its algorithm may change, FNV-1a (64 bit, the `fnv` crate) is specified.
fn probe<T>(key: &[&str], count: u64, mut accept: impl FnMut(u64) -> Option<T>) -> Option<T> {
    if count == 0 {
        return None;
    }
    let mut hash = FnvHasher::default();
    for part in key {
        hash.write(part.as_bytes());
    }
    let start = hash.finish() % count;
    (0..count).find_map(|k| accept((start + k) % count))
}
