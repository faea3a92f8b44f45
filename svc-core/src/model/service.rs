//! One Service → its frontends ([`add_service`], what `desired` runs per Service): the addresses
//! it is reached on (ClusterIPs, NodePorts on the node's addresses, `externalIPs`, LoadBalancer
//! ingress IPs), its ports and protocols, session affinity, conflicts with Services already
//! served, and which endpoint set each frontend entry gets under the traffic policies
//! ("Frontends and traffic policies" in the `model` module docs).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use svc_common::{
    BackendOf, FrontendKeyOf, FRONTEND_F_EXTERNAL_IP, FRONTEND_F_EXTERNAL_SCOPE,
    FRONTEND_F_NODEPORT, MAX_BACKENDS_PER_FRONTEND, PROTO_TCP, PROTO_UDP, SCOPE_ANY,
    SCOPE_EXTERNAL,
};

use super::endpoints::{choose_backends, ParsedSlice};
use super::slim::SlimSlice;
use super::slim_service::{SlimService, SlimSpec};
use super::source_ranges::SourceRanges;
use super::{
    Desired, DesiredFrontendOf, ModelFamily, NodeContext, ObjectRef, Problem,
    DEFAULT_AFFINITY_TIMEOUT_S, MAX_AFFINITY_TIMEOUT_S,
};
use crate::family::host_port;

/// Adds the frontends of one Service to `out`: per family it is served in (see "Families" in
/// the `model` module docs), IPv4 first.
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
    let parsed4 = parse_slices::<[u8; 4]>(addrs.v4.is_some(), slices, node, out);
    let parsed6 = parse_slices::<svc_common::Addr6>(addrs.v6.is_some(), slices, node, out);

    for (i, port) in spec.ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let Some(proto) = protocol(port.protocol.as_deref(), &object, &field, &mut out.problems)
        else {
            continue;
        };
        let Some(number) = port_number(port.port, &object, &format!("{field}.port"), out) else {
            continue;
        };
        // NodePort: validated here, once per port, rather than per node address.
        let node_port = if addrs.node_port_ips_empty() {
            None
        } else {
            port.node_port
                .and_then(|n| port_number(n, &object, &format!("{field}.nodePort"), out))
        };
        let at = PortAt {
            svc_ref,
            object: &object,
            field: &field,
            port_name: port.name.as_deref().unwrap_or_default(),
            number,
            node_port,
            proto,
            affinity_timeout_s,
            policy: &policy,
        };
        if let Some(v4) = &addrs.v4 {
            at.add(v4, &parsed4, ranges.for_lb_ip4(), out);
        }
        if let Some(v6) = &addrs.v6 {
            at.add(v6, &parsed6, ranges.for_lb_ip6(), out);
        }
    }
}

/// The slices of family `A` of a Service served in that family (`serve`), parsed; none when
/// it is not (the other family's slices are ignored, kube-proxy's per-family proxier never
/// sees them).
fn parse_slices<'a, A: ModelFamily>(
    serve: bool,
    slices: &[(&ObjectRef, &'a SlimSlice)],
    node: &NodeContext,
    out: &mut Desired,
) -> Vec<ParsedSlice<'a, A>> {
    if !serve {
        return Vec::new();
    }
    slices
        .iter()
        .filter_map(|(_, slice)| ParsedSlice::parse(slice, node, out))
        .collect()
}

/// One validated `spec.ports[]` entry of a Service and what applies to all its frontends.
struct PortAt<'a> {
    svc_ref: &'a ObjectRef,
    object: &'a str,
    field: &'a str,
    port_name: &'a str,
    number: u16,
    node_port: Option<u16>,
    proto: u8,
    affinity_timeout_s: u32,
    policy: &'a TrafficPolicy,
}

impl PortAt<'_> {
    /// Adds the frontends of this port in family `A` to `out`: on `addrs`, balancing across
    /// the endpoints of `parsed` (the family's slices); `lb_ranges` are the flags and prefixes
    /// of the family's `loadBalancerSourceRanges`.
    fn add<A: ModelFamily>(
        &self,
        addrs: &FamilyAddresses<A>,
        parsed: &[ParsedSlice<A>],
        lb_ranges: (u32, Vec<A::Net>),
        out: &mut Desired,
    ) {
        let object = self.object;
        let mut sets = choose_backends(parsed, self.port_name, self.proto);
        for set in [&mut sets.cluster, &mut sets.local] {
            if set.len() > MAX_BACKENDS_PER_FRONTEND as usize {
                out.problems.push(Problem::new(
                    object,
                    self.field,
                    format!(
                        "{} endpoints, more than the {MAX_BACKENDS_PER_FRONTEND} a frontend can \
                         hold; the rest are ignored",
                        set.len()
                    ),
                ));
                set.truncate(MAX_BACKENDS_PER_FRONTEND as usize);
            }
        }
        for fe in addrs.frontends(self.field, self.number, self.node_port, self.proto) {
            let key = fe.key;
            if let Some(existing) = A::frontends(out).get(&key) {
                let holder = existing.service.clone();
                if holder != *self.svc_ref {
                    out.lost.push((A::any_key(key), self.svc_ref.clone()));
                }
                out.problems.push(Problem::new(
                    object,
                    &fe.field,
                    format!(
                        "{}/{} is already served for Service {holder}; not programmed again",
                        host_port(A::to_ip(key.addr).into(), key.port),
                        api_protocol(key.proto),
                    ),
                ));
                continue;
            }
            // Source ranges go on LB IP entries only (both scopes: the uplink hooks use the
            // external one for new flows).
            let (range_flags, source_ranges) = match fe.kind {
                FrontendKind::External { lb: true, .. } => lb_ranges.clone(),
                _ => (0, Vec::new()),
            };
            let make = |backends: &Vec<BackendOf<A>>, flags: u32| DesiredFrontendOf {
                service: self.svc_ref.clone(),
                port_name: self.port_name.to_owned(),
                backends: backends.clone(),
                affinity_timeout_s: self.affinity_timeout_s,
                flags: flags | range_flags,
                source_ranges: source_ranges.clone(),
            };
            let frontends = A::frontends(out);
            // Which endpoints each entry balances across, as kube-proxy's iptables rules route
            // each kind of traffic (pkg/proxy/iptables/proxier.go, with CategorizeEndpoints):
            match fe.kind {
                // In-cluster traffic only: `internalTrafficPolicy` alone decides.
                FrontendKind::ClusterIp if self.policy.internal_local => {
                    let flags = sets.drop_if_no_local();
                    frontends.insert(key, make(&sets.local, flags));
                }
                FrontendKind::ClusterIp => {
                    frontends.insert(key, make(&sets.cluster, 0));
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
                } if self.policy.external_local && !localhost => {
                    frontends.insert(key, make(&sets.cluster, flag | FRONTEND_F_EXTERNAL_SCOPE));
                    let external = FrontendKeyOf {
                        scope: SCOPE_EXTERNAL,
                        ..key
                    };
                    let flags = flag | sets.drop_if_no_local();
                    frontends.insert(external, make(&sets.local, flags));
                }
                // `internalTrafficPolicy` never applies to external frontends, even for clients
                // inside the cluster: kube-proxy sends them to the Cluster chain.
                FrontendKind::External { flag, .. } => {
                    frontends.insert(key, make(&sets.cluster, flag));
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
struct FrontendAt<A: ModelFamily> {
    /// Its [`SCOPE_ANY`] key.
    key: FrontendKeyOf<A>,
    kind: FrontendKind,
    /// The field that put it there, for a conflict's [`Problem`].
    field: String,
}

/// The addresses a Service is reached on, per family; `None` for a family it is not served in
/// (no ClusterIP of that family).
struct ServiceAddresses {
    v4: Option<FamilyAddresses<[u8; 4]>>,
    v6: Option<FamilyAddresses<svc_common::Addr6>>,
}

/// The addresses a Service is reached on in one family: its ClusterIPs, the node addresses
/// its NodePorts are served on, its `externalIPs` and its LoadBalancer ingress IPs. Each kind
/// becomes frontend keys in [`FamilyAddresses::frontends`]; backend choice does not depend on
/// which.
struct FamilyAddresses<A: ModelFamily> {
    cluster_ips: Vec<A::Ip>,
    /// The family's NodePort addresses for a NodePort or LoadBalancer Service, else empty.
    node_port_ips: Vec<A::Ip>,
    /// `spec.externalIPs` then `status.loadBalancer.ingress[].ip`, each with its field and
    /// whether it is an LB IP.
    external_ips: Vec<(A::Ip, String, bool)>,
}

impl<A: ModelFamily> FamilyAddresses<A> {
    fn new(cluster_ips: Vec<A::Ip>, spec: &SlimSpec, node: &NodeContext) -> Option<Self> {
        if cluster_ips.is_empty() {
            return None;
        }
        let node_port_ips = if matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) {
            A::nodeport_ips(node)
        } else {
            Vec::new()
        };
        Some(Self {
            cluster_ips,
            node_port_ips,
            external_ips: Vec::new(),
        })
    }

    /// Adds an external or LB IP (`lb`) found at `field`, if it is of this family and (an
    /// external IP) allowed by `--external-ip-cidrs`.
    fn add_external(
        &mut self,
        ip: IpAddr,
        field: String,
        lb: bool,
        node: &NodeContext,
        object: &str,
        problems: &mut Vec<Problem>,
    ) {
        let Some(ip) = A::of(ip) else { return };
        if !lb {
            if let Some(allowed) = A::external_ip_cidrs(node) {
                if !allowed.iter().any(|c| A::net_contains(c, &ip)) {
                    problems.push(Problem::new(
                        object,
                        field,
                        format!(
                            "{ip} is outside every --external-ip-cidrs prefix; refused \
                             (CVE-2020-8554)"
                        ),
                    ));
                    return;
                }
            }
        }
        self.external_ips.push((ip, field, lb));
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
    ) -> Vec<FrontendAt<A>> {
        let key = |ip: A::Ip, port: u16| FrontendKeyOf {
            addr: A::from_ip(ip),
            port,
            proto,
            scope: SCOPE_ANY,
        };
        let mut out: Vec<FrontendAt<A>> = self
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
                    localhost: ip.into() == IpAddr::V4(Ipv4Addr::LOCALHOST),
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

impl ServiceAddresses {
    /// `None` for a headless Service (`clusterIP: None`), which is never programmed (not even
    /// its external IPs: kube-proxy ignores headless Services altogether).
    fn of(
        spec: &SlimSpec,
        node: &NodeContext,
        object: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        let (v4, v6) = cluster_ips(spec, object, problems)?;
        let mut v4 = FamilyAddresses::<[u8; 4]>::new(v4, spec, node);
        let mut v6 = FamilyAddresses::<svc_common::Addr6>::new(v6, spec, node);
        check_family_policy(spec, v4.is_some(), v6.is_some(), object, problems);
        let mut add = |ip: IpAddr, field: String, lb: bool, problems: &mut Vec<Problem>| {
            if let Some(v4) = &mut v4 {
                v4.add_external(ip, field.clone(), lb, node, object, problems);
            }
            if let Some(v6) = &mut v6 {
                v6.add_external(ip, field, lb, node, object, problems);
            }
        };
        for (i, text) in spec.external_ips.iter().enumerate() {
            let field = format!("spec.externalIPs[{i}]");
            if let Some(ip) = ip_field(text, object, &field, problems) {
                add(ip, field, false, problems);
            }
        }
        // The ingress status only means something for a LoadBalancer: the service controller
        // clears it when the type changes, and until then it is stale.
        let is_lb = spec.type_.as_deref() == Some("LoadBalancer");
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
            if let Some(ip) = ip_field(text, object, &field, problems) {
                add(ip, field, true, problems);
            }
        }
        Some(Self { v4, v6 })
    }

    /// No family serves NodePorts on any address.
    fn node_port_ips_empty(&self) -> bool {
        self.v4.as_ref().is_none_or(|a| a.node_port_ips.is_empty())
            && self.v6.as_ref().is_none_or(|a| a.node_port_ips.is_empty())
    }
}

/// The ClusterIPs of each family, `None` for a headless Service. kube-proxy's
/// `GetClusterIPByFamily` (pkg/proxy/util/utils.go): with `spec.ipFamilies`, the family
/// `ipFamilies[i]` ClusterIP is `clusterIPs[i]`; without, `clusterIP` counts for its own
/// family. Objects without `ipFamilies` never went through a dual-stack API server
/// (hand-written manifests), so there each `clusterIPs` entry counts for its own family.
fn cluster_ips(
    spec: &SlimSpec,
    object: &str,
    problems: &mut Vec<Problem>,
) -> Option<(Vec<Ipv4Addr>, Vec<Ipv6Addr>)> {
    // `clusterIPs` is authoritative when set (dual-stack); `clusterIP` is its first entry
    // and the only one older objects carry.
    let (field, ips): (&str, Vec<&str>) = match &spec.cluster_ips {
        ips if !ips.is_empty() => ("spec.clusterIPs", ips.iter().map(|s| &**s).collect()),
        _ => (
            "spec.clusterIP",
            spec.cluster_ip.as_deref().into_iter().collect(),
        ),
    };
    if ips.contains(&"None") {
        return None;
    }
    let at = |i: usize| {
        if field == "spec.clusterIP" {
            field.to_owned()
        } else {
            format!("{field}[{i}]")
        }
    };
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    // (index into `ips`, the family it must be of: `None` when `ipFamilies` is absent).
    let wanted: Vec<(usize, Option<&str>)> = if spec.ip_families.is_empty() {
        (0..ips.len()).map(|i| (i, None)).collect()
    } else {
        let mut wanted = Vec::new();
        for (i, family) in spec.ip_families.iter().enumerate() {
            match &**family {
                "IPv4" | "IPv6" if i < ips.len() => wanted.push((i, Some(&**family))),
                "IPv4" | "IPv6" => problems.push(Problem::new(
                    object,
                    format!("spec.ipFamilies[{i}]"),
                    format!("{family} has no {field}[{i}]; not served in {family}"),
                )),
                other => problems.push(Problem::new(
                    object,
                    format!("spec.ipFamilies[{i}]"),
                    format!("unknown IP family {other:?} (IPv4 or IPv6)"),
                )),
            }
        }
        wanted
    };
    for (i, family) in wanted {
        let text = ips[i];
        if text.is_empty() {
            continue;
        }
        let ip = match text.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                problems.push(Problem::new(
                    object,
                    at(i),
                    format!("{text:?} is not an IP address"),
                ));
                continue;
            }
        };
        let actual = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        if family.is_some_and(|f| f != actual) {
            problems.push(Problem::new(
                object,
                at(i),
                format!(
                    "{ip} is an {actual} address but spec.ipFamilies[{i}] is {}; not served",
                    family.unwrap_or_default()
                ),
            ));
            continue;
        }
        match ip {
            IpAddr::V4(ip) if !v4.contains(&ip) => v4.push(ip),
            IpAddr::V6(ip) if !v6.contains(&ip) => v6.push(ip),
            _ => {}
        }
    }
    if ips.iter().all(|s| s.is_empty()) {
        problems.push(Problem::new(
            object,
            "spec.clusterIP",
            "not set (not allocated)",
        ));
    }
    Some((v4, v6))
}

/// Reports an `ipFamilyPolicy` the ClusterIPs contradict (which the API server would not
/// have admitted). It decides nothing: kube-proxy never reads it, it serves the families the
/// ClusterIPs have.
fn check_family_policy(
    spec: &SlimSpec,
    v4: bool,
    v6: bool,
    object: &str,
    problems: &mut Vec<Problem>,
) {
    let Some(policy) = spec.ip_family_policy.as_deref() else {
        return;
    };
    let served = match (v4, v6) {
        (true, true) => "both IPv4 and IPv6",
        (true, false) => "IPv4 only",
        (false, true) => "IPv6 only",
        (false, false) => return,
    };
    let contradicted = match policy {
        "SingleStack" => v4 && v6,
        "RequireDualStack" => !(v4 && v6),
        "PreferDualStack" => false,
        other => {
            problems.push(Problem::new(
                object,
                "spec.ipFamilyPolicy",
                format!(
                    "unknown policy {other:?} (SingleStack, PreferDualStack or \
                     RequireDualStack); serving {served}, as the ClusterIPs say"
                ),
            ));
            return;
        }
    };
    if contradicted {
        problems.push(Problem::new(
            object,
            "spec.ipFamilyPolicy",
            format!("{policy}, but the ClusterIPs are {served}; serving {served}"),
        ));
    }
}

/// An address field: `None`, with a problem at `field`, for text that is no address.
fn ip_field(text: &str, object: &str, field: &str, problems: &mut Vec<Problem>) -> Option<IpAddr> {
    match text.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
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
