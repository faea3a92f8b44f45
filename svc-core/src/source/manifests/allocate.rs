//! What the API server does to a Service on create, without an API server: its defaults
//! ([`apply_service_defaults`]) and the ClusterIP and NodePort allocation ([`allocate`]), a pure
//! function of the directory so every node reaches the same answer (see the `manifests` module
//! docs), with user-chosen values reserved first and conflicts refused.
//!
//! Families follow the API server's rules (KEP-563, `pkg/registry/core/service/storage`): a
//! Service gets one ClusterIP per family of `spec.ipFamilies`, which defaults from the given
//! `clusterIPs` and then from the cluster's families, the primary (IPv4, `--service-cidr`'s
//! first range) first; `SingleStack` (the default policy) keeps one family, `PreferDualStack`
//! both when the cluster has an IPv6 range, `RequireDualStack` both or the Service is refused.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
    /// Refused: a user-chosen ClusterIP or NodePort another Service has, no address left, or
    /// families the cluster cannot give.
    Refused,
    /// Kept, with what was allocated to it: its families (`spec.ipFamilies`, empty when it
    /// needs no ClusterIP), the ClusterIPs allocated for the families after the given ones
    /// (empty when it chose them all), and NodePorts by port index.
    Kept {
        families: Vec<Fam>,
        cluster_ips: Vec<IpAddr>,
        node_ports: Vec<(usize, u16)>,
    },
}

/// An IP family as `spec.ipFamilies` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fam {
    V4,
    V6,
}

impl Fam {
    fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() {
            Self::V4
        } else {
            Self::V6
        }
    }

    /// `IPv4`, `IPv6`.
    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(Self::V4),
            "IPv6" => Some(Self::V6),
            _ => None,
        }
    }
}

/// The given ClusterIPs of a Service that gets some (`clusterIPs`, else `clusterIP`; not
/// `None`), parsed; `Err` names the first field that is no address.
pub fn given_ips(svc: &Service) -> Result<Vec<IpAddr>, String> {
    let spec = svc.spec.as_ref();
    let list: Vec<&str> = match spec.and_then(|s| s.cluster_ips.as_ref()) {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec
            .and_then(|s| s.cluster_ip.as_deref())
            .into_iter()
            .collect(),
    };
    let mut out = Vec::new();
    for (i, text) in list.iter().enumerate() {
        if text.is_empty() || *text == "None" {
            continue;
        }
        out.push(text.parse::<IpAddr>().map_err(|_| {
            format!("spec.clusterIPs[{i}]: {text:?} is not an IP address; Service refused")
        })?);
    }
    Ok(out)
}

/// The families a Service's ClusterIPs are of, in order (the API server's defaulting and
/// validation of `ipFamilies`, `ipFamilyPolicy` and `clusterIPs`) on a cluster with an IPv4
/// service range and, if `dual_cluster`, an IPv6 one; `Err` is the problem (field, message)
/// that refuses it. Empty for a Service that has no ClusterIP. Public for the test API server,
/// which allocates by the same rules.
pub fn families(svc: &Service, dual_cluster: bool) -> Result<Vec<Fam>, (String, String)> {
    if service_type(svc) == "ExternalName" {
        return Ok(Vec::new());
    }
    let spec = svc.spec.as_ref();
    if spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        return Ok(Vec::new());
    }
    let given = given_ips(svc).map_err(|m| ("spec.clusterIPs".to_owned(), m))?;
    let policy = spec
        .and_then(|s| s.ip_family_policy.as_deref())
        .unwrap_or("SingleStack");
    if !["SingleStack", "PreferDualStack", "RequireDualStack"].contains(&policy) {
        return Err((
            "spec.ipFamilyPolicy".to_owned(),
            format!("unsupported value {policy:?}; Service refused"),
        ));
    }
    let mut fams = Vec::new();
    for (i, name) in spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let f = Fam::parse(name).ok_or_else(|| {
            (
                format!("spec.ipFamilies[{i}]"),
                format!("unsupported value {name:?} (IPv4 or IPv6); Service refused"),
            )
        })?;
        if fams.contains(&f) {
            return Err((
                format!("spec.ipFamilies[{i}]"),
                format!("{name} is listed twice; Service refused"),
            ));
        }
        fams.push(f);
    }
    for (i, ip) in given.iter().enumerate() {
        match fams.get(i) {
            Some(f) if *f != Fam::of(ip) => {
                return Err((
                    format!("spec.clusterIPs[{i}]"),
                    format!(
                        "{ip} is not {} as spec.ipFamilies[{i}] says; Service refused",
                        f.name()
                    ),
                ))
            }
            Some(_) => {}
            None if fams.contains(&Fam::of(ip)) => {
                return Err((
                    format!("spec.clusterIPs[{i}]"),
                    format!("a second {} address; Service refused", Fam::of(ip).name()),
                ))
            }
            None => fams.push(Fam::of(ip)),
        }
    }
    if fams.is_empty() {
        fams.push(Fam::V4);
    }
    let dual_wanted = policy != "SingleStack";
    if dual_wanted && fams.len() == 1 && dual_cluster {
        fams.push(if fams[0] == Fam::V4 { Fam::V6 } else { Fam::V4 });
    }
    if policy == "SingleStack" && fams.len() > 1 {
        return Err((
            "spec.ipFamilyPolicy".to_owned(),
            "SingleStack with two families; Service refused".to_owned(),
        ));
    }
    if policy == "RequireDualStack" && fams.len() < 2 {
        return Err((
            "spec.ipFamilyPolicy".to_owned(),
            "RequireDualStack on a cluster without an IPv6 service range (--service-cidr \
             IPV4-CIDR,IPV6-CIDR); Service refused"
                .to_owned(),
        ));
    }
    if policy == "PreferDualStack" && !dual_cluster && given.len() < 2 {
        // A single-stack cluster keeps the families it can allocate.
        fams.truncate(given.len().max(1));
    }
    for (i, f) in fams.iter().enumerate().skip(given.len()) {
        if *f == Fam::V6 && !dual_cluster {
            return Err((
                format!("spec.ipFamilies[{i}]"),
                "IPv6 needs an IPv6 service range to allocate from (--service-cidr \
                 IPV4-CIDR,IPV6-CIDR); Service refused"
                    .to_owned(),
            ));
        }
    }
    Ok(fams)
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
    let mut ips: HashMap<IpAddr, &ObjectRef> = HashMap::new();
    let mut node_ports: HashMap<u16, &ObjectRef> = HashMap::new();
    let mut decided = vec![
        Allocation::Kept {
            families: Vec::new(),
            cluster_ips: Vec::new(),
            node_ports: Vec::new(),
        };
        services.len()
    ];

    // Pass 1: user-chosen values, first come (in ObjectRef order) first served.
    for (at, &(svc_ref, svc)) in services.iter().enumerate() {
        let object = || format!("Service {svc_ref}");
        let spec = svc.spec.as_ref();
        let fams = match families(svc, options.service_cidr6.is_some()) {
            Ok(f) => f,
            Err((field, message)) => {
                problems.push(Problem::new(object(), field, message));
                decided[at] = Allocation::Refused;
                continue;
            }
        };
        let chosen_ips = if fams.is_empty() {
            Vec::new()
        } else {
            given_ips(svc).unwrap_or_default()
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
        let ip_conflict = chosen_ips
            .iter()
            .find_map(|ip| ips.get(ip).map(|owner| (ip, owner)));
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
        for ip in &chosen_ips {
            // Outside the range: noted, accepted. An IPv6 address on a cluster without an IPv6
            // range has nothing to be checked against (the flag only says where to allocate).
            let outside = match ip {
                IpAddr::V4(a) => {
                    (!options.service_cidr.contains(a)).then(|| options.service_cidr.to_string())
                }
                IpAddr::V6(a) => options
                    .service_cidr6
                    .filter(|c| !c.contains(a))
                    .map(|c| c.to_string()),
            };
            if let Some(range) = outside {
                problems.push(Problem::new(
                    object(),
                    "spec.clusterIP",
                    format!("{ip} is outside the service CIDR {range}; accepted"),
                ));
            }
            ips.insert(*ip, svc_ref);
        }
        if let Allocation::Kept { families, .. } = &mut decided[at] {
            *families = fams;
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
    // IPv6 likewise: network+2 ..= last-1 (the range is at most 2^20 addresses: `--service-cidr`
    // refuses a prefix shorter than /108, as the API server does).
    let (first_ip6, ip6_count) = options.service_cidr6.map_or((0, 0), |c| {
        let first = u128::from(c.network()) + 2;
        let last = u128::from(c.broadcast()).saturating_sub(1);
        (
            first,
            u64::try_from((last + 1).saturating_sub(first)).unwrap_or(u64::MAX),
        )
    });
    let first_port = u64::from(*options.node_port_range.start());
    let port_count = (u64::from(*options.node_port_range.end()) + 1).saturating_sub(first_port);
    for (&(svc_ref, svc), decision) in services.iter().zip(decided.iter_mut()) {
        let Allocation::Kept {
            families,
            cluster_ips,
            node_ports: allocated_ports,
        } = decision
        else {
            continue;
        };
        let object = || format!("Service {svc_ref}");
        let given = given_ips(svc).unwrap_or_default().len();
        let key = [svc_ref.namespace.as_str(), "/", svc_ref.name.as_str()];
        let mut refused = false;
        for fam in families.iter().skip(given) {
            let found = match fam {
                Fam::V4 => probe(&key, ip_count, |offset| {
                    let candidate = u32::try_from(first_ip + offset).ok()?;
                    let ip = IpAddr::V4(Ipv4Addr::from(candidate));
                    (!ips.contains_key(&ip)).then_some(ip)
                }),
                Fam::V6 => probe(&key, ip6_count, |offset| {
                    let ip = IpAddr::V6(Ipv6Addr::from(first_ip6 + u128::from(offset)));
                    (!ips.contains_key(&ip)).then_some(ip)
                }),
            };
            let Some(ip) = found else {
                let range = match fam {
                    Fam::V4 => cidr.to_string(),
                    Fam::V6 => options
                        .service_cidr6
                        .map(|c| c.to_string())
                        .unwrap_or_default(),
                };
                problems.push(Problem::new(
                    object(),
                    "spec.clusterIP",
                    format!("no free address left in the service CIDR {range}; Service refused"),
                ));
                refused = true;
                break;
            };
            ips.insert(ip, svc_ref);
            cluster_ips.push(ip);
        }
        if refused {
            *decision = Allocation::Refused;
            continue;
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

/// Writes a kept Service's [`Allocation`] into it (a refused one is left alone: it is dropped).
pub(super) fn apply_allocation(svc: &mut Service, allocation: &Allocation) {
    let Allocation::Kept {
        families,
        cluster_ips,
        node_ports,
    } = allocation
    else {
        return;
    };
    let given = given_ips(svc).unwrap_or_default();
    let spec = svc.spec.get_or_insert_default();
    if !families.is_empty() {
        let all: Vec<String> = given
            .iter()
            .chain(cluster_ips)
            .map(ToString::to_string)
            .collect();
        spec.cluster_ip = all.first().cloned();
        spec.cluster_ips = Some(all);
        spec.ip_families = Some(families.iter().map(|f| f.name().to_owned()).collect());
        spec.ip_family_policy
            .get_or_insert_with(|| "SingleStack".to_owned());
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
        spec.map(|s| (&s.cluster_ips, &s.ip_families, &s.ip_family_policy)),
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
