//! One Service → its frontends ([`add_service`], what `desired` runs per Service): the addresses
//! it is reached on (ClusterIPs, NodePorts on the node's addresses, `externalIPs`, LoadBalancer
//! ingress IPs), its ports and protocols, session affinity, conflicts with Services already
//! served, and which endpoint set each frontend entry gets under the traffic policies
//! ("Frontends and traffic policies" in the `model` module docs).

use std::net::{IpAddr, Ipv4Addr};

use svc_common::{
    Backend, FrontendKey, FRONTEND_F_EXTERNAL_IP, FRONTEND_F_EXTERNAL_SCOPE, FRONTEND_F_NODEPORT,
    MAX_BACKENDS_PER_FRONTEND, PROTO_TCP, PROTO_UDP, SCOPE_ANY, SCOPE_EXTERNAL,
};

use super::endpoints::{choose_backends, ParsedSlice};
use super::slim::SlimSlice;
use super::slim_service::{SlimService, SlimSpec};
use super::source_ranges::SourceRanges;
use super::{
    Desired, DesiredFrontend, NodeContext, ObjectRef, Problem, DEFAULT_AFFINITY_TIMEOUT_S,
    MAX_AFFINITY_TIMEOUT_S,
};

/// Adds the frontends of one Service to `out`.
pub(super) fn add_service(
    svc_ref: &ObjectRef,
    svc: &SlimService,
    slices: &[(&ObjectRef, &SlimSlice)],
    node: &NodeContext,
    out: &mut Desired,
) {
    let object = format!("Service {svc_ref}");
    if !node.claims_labelled(svc.proxy_name.as_deref()) {
        // Meant for another proxy, or (with --service-proxy-name) not labelled for us.
        return;
    }
    let Some(spec) = &svc.spec else {
        out.problems.push(Problem::new(&object, "spec", "missing"));
        return;
    };
    match spec.type_.as_deref() {
        None | Some("ClusterIP" | "NodePort" | "LoadBalancer") => {}
        // DNS-only: there is no address to serve.
        Some("ExternalName") => return,
        Some(other) => {
            out.problems.push(Problem::new(
                &object,
                "spec.type",
                format!("unknown type {other:?}; Service not programmed"),
            ));
            return;
        }
    }
    let Some(addrs) = ServiceAddresses::of(spec, node, &object, &mut out.problems) else {
        return; // headless
    };
    let affinity_timeout_s = affinity_timeout(spec, &object, &mut out.problems);
    let ranges = SourceRanges::of(spec, node, &object, &mut out.problems);
    let policy = TrafficPolicy::of(spec);
    let parsed: Vec<ParsedSlice> = slices
        .iter()
        .filter_map(|(_, slice)| ParsedSlice::parse(slice, node, out))
        .collect();

    for (i, port) in spec.ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let Some(proto) = protocol(port.protocol.as_deref(), &object, &field, &mut out.problems)
        else {
            continue;
        };
        let Some(number) = port_number(port.port, &object, &format!("{field}.port"), out) else {
            continue;
        };
        let port_name = port.name.as_deref().unwrap_or_default().to_owned();
        let mut sets = choose_backends(&parsed, &port_name, proto);
        for set in [&mut sets.cluster, &mut sets.local] {
            if set.len() > MAX_BACKENDS_PER_FRONTEND as usize {
                out.problems.push(Problem::new(
                    &object,
                    &field,
                    format!(
                        "{} endpoints, more than the {MAX_BACKENDS_PER_FRONTEND} a frontend can \
                         hold; the rest are ignored",
                        set.len()
                    ),
                ));
                set.truncate(MAX_BACKENDS_PER_FRONTEND as usize);
            }
        }
        // NodePort: validated here, once per port, rather than per node address.
        let node_port = if addrs.node_port_ips.is_empty() {
            None
        } else {
            port.node_port
                .and_then(|n| port_number(n, &object, &format!("{field}.nodePort"), out))
        };
        for fe in addrs.frontends(&field, number, node_port, proto) {
            let key = fe.key;
            if let Some(existing) = out.frontends.get(&key) {
                if existing.service != *svc_ref {
                    out.lost.push((key, svc_ref.clone()));
                }
                out.problems.push(Problem::new(
                    &object,
                    &fe.field,
                    format!(
                        "{}:{}/{} is already served for Service {}; not programmed again",
                        Ipv4Addr::from(key.addr),
                        key.port,
                        api_protocol(key.proto),
                        existing.service
                    ),
                ));
                continue;
            }
            // Source ranges go on LB IP entries only (both scopes: the uplink hooks use the
            // external one for new flows).
            let (range_flags, source_ranges) = match fe.kind {
                FrontendKind::External { lb: true, .. } => ranges.for_lb_ip(),
                _ => (0, Vec::new()),
            };
            let make = |backends: &Vec<Backend>, flags: u32| DesiredFrontend {
                service: svc_ref.clone(),
                port_name: port_name.clone(),
                backends: backends.clone(),
                affinity_timeout_s,
                flags: flags | range_flags,
                source_ranges: source_ranges.clone(),
            };
            // Which endpoints each entry balances across, as kube-proxy's iptables rules route
            // each kind of traffic (pkg/proxy/iptables/proxier.go, with CategorizeEndpoints):
            match fe.kind {
                // In-cluster traffic only: `internalTrafficPolicy` alone decides.
                FrontendKind::ClusterIp if policy.internal_local => {
                    let flags = sets.drop_if_no_local();
                    out.frontends.insert(key, make(&sets.local, flags));
                }
                FrontendKind::ClusterIp => {
                    out.frontends.insert(key, make(&sets.cluster, 0));
                }
                // `externalTrafficPolicy: Local`: clients in the cluster (pods, the node's own
                // processes) keep every endpoint, as kube-proxy's "short circuit" sends pod and
                // LOCAL-source traffic to the Cluster chain; clients from the wire get only this
                // node's endpoints, through the SCOPE_EXTERNAL entry. A localhost NodePort is
                // reached only by the node's own processes (the socket hooks; the uplink never
                // sees 127.0.0.1), which kube-proxy routes to cluster endpoints too, so it needs
                // no external entry.
                FrontendKind::External {
                    flag, localhost, ..
                } if policy.external_local && !localhost => {
                    out.frontends
                        .insert(key, make(&sets.cluster, flag | FRONTEND_F_EXTERNAL_SCOPE));
                    let external = FrontendKey {
                        scope: SCOPE_EXTERNAL,
                        ..key
                    };
                    let flags = flag | sets.drop_if_no_local();
                    out.frontends.insert(external, make(&sets.local, flags));
                }
                // `internalTrafficPolicy` never applies to external frontends, even for clients
                // inside the cluster: kube-proxy sends them to the Cluster chain.
                FrontendKind::External { flag, .. } => {
                    out.frontends.insert(key, make(&sets.cluster, flag));
                }
            }
        }
    }
}

/// A `spec.ports[]` number (`port`, `nodePort`) as a `u16`, or `None` with a problem at
/// `field` when it is outside 1-65535.
fn port_number(n: i32, object: &str, field: &str, out: &mut Desired) -> Option<u16> {
    match u16::try_from(n) {
        Ok(n) if n != 0 => Some(n),
        _ => {
            out.problems
                .push(Problem::new(object, field, "must be 1-65535"));
            None
        }
    }
}

/// `internalTrafficPolicy` / `externalTrafficPolicy` of a Service, `Local` or not.
struct TrafficPolicy {
    internal_local: bool,
    external_local: bool,
}

impl TrafficPolicy {
    fn of(spec: &SlimSpec) -> Self {
        Self {
            internal_local: spec.internal_local,
            external_local: spec.external_local,
        }
    }
}

/// What kind of address a frontend is served on, which decides its flags and which endpoints
/// it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FrontendKind {
    /// A `clusterIPs` entry.
    ClusterIp,
    /// A NodePort on a node address ([`FRONTEND_F_NODEPORT`]), or an external or LoadBalancer
    /// ingress IP ([`FRONTEND_F_EXTERNAL_IP`]): reachable from outside the cluster.
    External {
        /// [`FRONTEND_F_NODEPORT`] or [`FRONTEND_F_EXTERNAL_IP`].
        flag: u32,
        /// The localhost NodePort (`127.0.0.1`), reached only by the node's own processes.
        localhost: bool,
        /// A LoadBalancer ingress IP (`loadBalancerSourceRanges` apply).
        lb: bool,
    },
}

/// One address × port a Service port is served on, before conflicts are settled.
struct FrontendAt {
    /// Its [`SCOPE_ANY`] key.
    key: FrontendKey,
    kind: FrontendKind,
    /// The field that put it there, for a conflict's [`Problem`].
    field: String,
}

/// The addresses a Service is reached on: its ClusterIPs, the node addresses its NodePorts are
/// served on, its `externalIPs` and its LoadBalancer ingress IPs. Each kind becomes frontend
/// keys in [`ServiceAddresses::frontends`]; backend choice does not depend on which.
struct ServiceAddresses {
    cluster_ips: Vec<Ipv4Addr>,
    /// [`NodeContext::nodeport_ips`] for a NodePort or LoadBalancer Service, else empty.
    node_port_ips: Vec<Ipv4Addr>,
    /// `spec.externalIPs` then `status.loadBalancer.ingress[].ip`, each with its field and
    /// whether it is an LB IP.
    external_ips: Vec<(Ipv4Addr, String, bool)>,
}

impl ServiceAddresses {
    /// `None` for a headless Service (`clusterIP: None`), which is never programmed (not even
    /// its external IPs: kube-proxy ignores headless Services altogether).
    fn of(
        spec: &SlimSpec,
        node: &NodeContext,
        object: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        // `clusterIPs` is authoritative when set (dual-stack); `clusterIP` is its first entry
        // and the only one older objects carry.
        let (field, ips): (&str, Vec<&str>) = match &spec.cluster_ips {
            ips if !ips.is_empty() => ("spec.clusterIPs", ips.iter().map(|s| &**s).collect()),
            _ => (
                "spec.clusterIP",
                spec.cluster_ip.as_deref().into_iter().collect(),
            ),
        };
        let mut cluster_ips = Vec::new();
        for (i, text) in ips.iter().enumerate() {
            let at = if field == "spec.clusterIP" {
                field.to_owned()
            } else {
                format!("{field}[{i}]")
            };
            match *text {
                "None" => return None,
                "" => {}
                _ => match text.parse::<IpAddr>() {
                    Ok(IpAddr::V4(ip)) if !cluster_ips.contains(&ip) => cluster_ips.push(ip),
                    Ok(IpAddr::V4(_)) => {}
                    // We serve IPv4 only; the IPv6 family is somebody else's (or nobody's).
                    Ok(IpAddr::V6(_)) => {}
                    Err(_) => problems.push(Problem::new(
                        object,
                        at,
                        format!("{text:?} is not an IP address"),
                    )),
                },
            }
        }
        if ips.iter().all(|s| s.is_empty()) {
            problems.push(Problem::new(
                object,
                "spec.clusterIP",
                "not set (not allocated)",
            ));
        }
        let is_lb = spec.type_.as_deref() == Some("LoadBalancer");
        let node_port_ips = if is_lb || spec.type_.as_deref() == Some("NodePort") {
            node.nodeport_ips()
        } else {
            Vec::new()
        };
        let mut external_ips = Vec::new();
        for (i, text) in spec.external_ips.iter().enumerate() {
            let field = format!("spec.externalIPs[{i}]");
            let Some(ip) = ipv4_field(text, object, &field, problems) else {
                continue;
            };
            if let Some(allowed) = &node.external_ip_cidrs {
                if !allowed.iter().any(|c| c.contains(&ip)) {
                    problems.push(Problem::new(
                        object,
                        field,
                        format!(
                            "{ip} is outside every --external-ip-cidrs prefix; refused \
                             (CVE-2020-8554)"
                        ),
                    ));
                    continue;
                }
            }
            external_ips.push((ip, field, false));
        }
        // The ingress status only means something for a LoadBalancer: the service controller
        // clears it when the type changes, and until then it is stale.
        let ingress = if is_lb { &spec.ingress[..] } else { &[] };
        for (i, ing) in ingress.iter().enumerate() {
            // Hostname-only entries name no address we could serve. `ipMode: Proxy`: the load
            // balancer proxies to the NodePorts itself, and kube-proxy deliberately does not
            // program the IP, so that pods reaching it go through the load balancer too.
            let Some(text) = ing.ip.as_deref().filter(|t| !t.is_empty()) else {
                continue;
            };
            if ing.proxy_mode {
                continue;
            }
            let field = format!("status.loadBalancer.ingress[{i}].ip");
            if let Some(ip) = ipv4_field(text, object, &field, problems) {
                external_ips.push((ip, field, true));
            }
        }
        Some(Self {
            cluster_ips,
            node_port_ips,
            external_ips,
        })
    }

    /// Every frontend of one `spec.ports[]` entry (at `field`), in the order conflicts are
    /// settled: ClusterIPs, NodePorts, external IPs, LoadBalancer IPs. `node_port` is the
    /// validated `nodePort`, `None` when absent (e.g. `allocateLoadBalancerNodePorts: false`).
    fn frontends(
        &self,
        field: &str,
        number: u16,
        node_port: Option<u16>,
        proto: u8,
    ) -> Vec<FrontendAt> {
        let key = |ip: Ipv4Addr, port: u16| FrontendKey {
            addr: ip.octets(),
            port,
            proto,
            scope: SCOPE_ANY,
        };
        let mut out: Vec<FrontendAt> = self
            .cluster_ips
            .iter()
            .map(|&ip| FrontendAt {
                key: key(ip, number),
                kind: FrontendKind::ClusterIp,
                field: field.to_owned(),
            })
            .collect();
        if let Some(node_port) = node_port {
            out.extend(self.node_port_ips.iter().map(|&ip| FrontendAt {
                key: key(ip, node_port),
                kind: FrontendKind::External {
                    flag: FRONTEND_F_NODEPORT,
                    localhost: ip == Ipv4Addr::LOCALHOST,
                    lb: false,
                },
                field: format!("{field}.nodePort"),
            }));
        }
        out.extend(self.external_ips.iter().map(|(ip, at, lb)| FrontendAt {
            key: key(*ip, number),
            kind: FrontendKind::External {
                flag: FRONTEND_F_EXTERNAL_IP,
                localhost: false,
                lb: *lb,
            },
            field: at.clone(),
        }));
        out
    }
}

/// An IPv4 address field: `None` for IPv6 (silently: another family's proxy serves it) and,
/// with a problem at `field`, for text that is no address.
fn ipv4_field(
    text: &str,
    object: &str,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Option<Ipv4Addr> {
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Some(ip),
        Ok(IpAddr::V6(_)) => None,
        Err(_) => {
            problems.push(Problem::new(
                object,
                field,
                format!("{text:?} is not an IP address"),
            ));
            None
        }
    }
}

fn affinity_timeout(spec: &SlimSpec, object: &str, problems: &mut Vec<Problem>) -> u32 {
    if !spec.client_ip_affinity {
        return 0;
    }
    match spec.affinity_timeout_s {
        None => DEFAULT_AFFINITY_TIMEOUT_S,
        Some(t) => match u32::try_from(t) {
            Ok(t) if (1..=MAX_AFFINITY_TIMEOUT_S).contains(&t) => t,
            _ => {
                problems.push(Problem::new(
                    object,
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!(
                        "{t} is outside 1-{MAX_AFFINITY_TIMEOUT_S}; \
                         using {DEFAULT_AFFINITY_TIMEOUT_S}"
                    ),
                ));
                DEFAULT_AFFINITY_TIMEOUT_S
            }
        },
    }
}

/// Maps a Kubernetes protocol name to the IP protocol number; `None` (with a problem) for what
/// the datapath does not translate.
fn protocol(
    name: Option<&str>,
    object: &str,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Option<u8> {
    match name.unwrap_or("TCP") {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        "SCTP" => {
            problems.push(Problem::new(
                object,
                format!("{field}.protocol"),
                "SCTP not supported by the datapath",
            ));
            None
        }
        other => {
            problems.push(Problem::new(
                object,
                format!("{field}.protocol"),
                format!("unknown protocol {other:?}"),
            ));
            None
        }
    }
}

/// The API's spelling of a protocol (`spec.ports[].protocol`), for problems; inspect's
/// lower-case names are for people reading maps.
fn api_protocol(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        _ => "?",
    }
}
