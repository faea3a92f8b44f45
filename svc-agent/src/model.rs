//! Pure: Kubernetes objects + this node → the frontends the maps should hold.
//!
//! [`desired`] applies kube-proxy's semantics (DESIGN §1) to a set of [`Objects`] and returns a
//! [`Desired`]: one [`DesiredFrontend`] per (address, port, protocol) this node serves, each with
//! its sorted, de-duplicated [`Backend`]s, plus the [`Problem`]s found on the way. Nothing here
//! does I/O or keeps state, so every rule is a table test, and the same function serves the
//! static manifest source and the API-server watcher.
//!
//! Refusal is always local: a bad port, address or endpoint costs only that port, address or
//! endpoint (recorded as a [`Problem`] naming the object and field), never the rest of the
//! Service and never another Service.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use svc_common::{
    Backend, FrontendKey, BACKEND_F_TERMINATING, MAX_BACKENDS_PER_FRONTEND, PROTO_TCP, PROTO_UDP,
    SCOPE_ANY,
};

/// Label naming the Service an EndpointSlice belongs to (set by the EndpointSlice controllers).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label asking for a Service to be handled by a non-default proxy. We are not named by any
/// value, so, like kube-proxy, we skip every Service carrying it.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label the EndpointSlice controller puts on slices of headless Services; proxies ignore them.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when `sessionAffinity: ClientIP` omits it
/// (the API server's default, 3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// Largest affinity timeout the API server accepts (1 day).
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;
/// Namespace of an object whose manifest omits it, as `kubectl apply` assumes.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A namespaced object name. `Ord` is (namespace, name), which is the order every deterministic
/// pass in the agent walks objects in (allocation, conflicts: "first" means smallest).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// `metadata.namespace` (`"default"` when the object omits it).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl ObjectRef {
    /// Builds a reference from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The reference of an object's metadata, `None` when it has no name. A missing namespace
    /// means [`DEFAULT_NAMESPACE`], as for `kubectl apply`.
    pub fn from_meta(meta: &ObjectMeta) -> Option<Self> {
        let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
        let namespace = meta
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE);
        Some(Self::new(namespace, name))
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Something refused or worth telling the operator, attached to the object and field it came
/// from. Problems are data, not errors: the agent reports them (logs, metrics, status) and keeps
/// programming everything else.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// What it is about: `"Service default/foo"`, `"EndpointSlice default/foo-abc"`, or a
    /// manifest position such as `"app.yaml#2"` when the object could not be identified.
    pub object: String,
    /// Field path inside the object (`"spec.ports[0].port"`); empty when about the whole object.
    pub field: String,
    /// Why, in words an operator can act on.
    pub message: String,
}

impl Problem {
    /// Builds a problem.
    pub fn new(
        object: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            object: object.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.object, self.message)
        } else {
            write!(f, "{}: {}: {}", self.object, self.field, self.message)
        }
    }
}

/// The Kubernetes objects a source delivers: what [`desired`] reads.
///
/// Keyed by [`ObjectRef`] so iteration (and therefore every result) is deterministic whatever
/// order the source saw the objects in. Slices are keyed by their own name; the Service they
/// belong to is their [`LABEL_SERVICE_NAME`] label.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Objects {
    /// Services by namespace/name.
    pub services: BTreeMap<ObjectRef, Service>,
    /// EndpointSlices by namespace/name (including slices mirrored from hand-written Endpoints).
    pub slices: BTreeMap<ObjectRef, EndpointSlice>,
    /// What the source refused or skipped while producing these objects.
    pub problems: Vec<Problem>,
}

/// What the model needs to know about the node it runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// This node's name (for `nodeName`-based choices such as traffic policy `Local`, later).
    pub node_name: String,
    /// This node's own addresses. An endpoint claiming one of them is refused: a Service must
    /// not be a way to reach the node's host-network sockets through a forged EndpointSlice
    /// (CVE-2021-25737).
    pub node_ips: Vec<Ipv4Addr>,
}

/// One frontend the node should serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFrontend {
    /// The Service it comes from; [`crate::reconcile`] records it as the frontend's owner so a
    /// change to one Service can be planned without looking at the others.
    pub service: ObjectRef,
    /// `spec.ports[].name` it was built from (`""` when unnamed); for logs and metrics.
    pub port_name: String,
    /// Where new flows go: sorted by [`Backend`]'s `Ord`, no duplicates. Empty means "no usable
    /// endpoint": the frontend is still programmed so the datapath rejects instead of letting the
    /// packet wander off to the ClusterIP's (non-existent) owner.
    pub backends: Vec<Backend>,
    /// `sessionAffinity: ClientIP` timeout in seconds, 0 for no affinity.
    pub affinity_timeout_s: u32,
}

/// Everything the node should serve, plus the problems found while deciding it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Frontends by map key; a `BTreeMap` so plans and dumps come out in a stable order.
    pub frontends: BTreeMap<FrontendKey, DesiredFrontend>,
    /// Refusals, in the order found (Services in [`ObjectRef`] order).
    pub problems: Vec<Problem>,
}

/// An IPv4 prefix such as `10.96.0.0/16`, used for `--service-cidr` and (later)
/// `--nodeport-addresses`. Host bits are cleared on parse, as `ip route` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

/// An [`Ipv4Cidr`] string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IPv4 CIDR {input:?}: {why}")]
pub struct CidrError {
    /// The text given.
    pub input: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl Ipv4Cidr {
    /// Builds a prefix; host bits of `addr` are cleared. `None` when `prefix_len > 32`.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        if prefix_len > 32 {
            return None;
        }
        let network = Ipv4Addr::from(u32::from(addr) & Self::mask(prefix_len));
        Some(Self {
            network,
            prefix_len,
        })
    }

    fn mask(prefix_len: u8) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0)
    }

    /// The network address (all host bits zero).
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The broadcast address (all host bits one).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !Self::mask(self.prefix_len))
    }

    /// Whether `addr` is inside the prefix.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & Self::mask(self.prefix_len) == u32::from(self.network)
    }
}

impl Default for Ipv4Cidr {
    /// `10.96.0.0/16`, kubeadm's and kind's default service CIDR.
    fn default() -> Self {
        Self {
            network: Ipv4Addr::new(10, 96, 0, 0),
            prefix_len: 16,
        }
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| CidrError {
            input: s.to_owned(),
            why,
        };
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| err("expected ADDRESS/LENGTH"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err("not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| err("prefix length is not a number"))?;
        Self::new(addr, len).ok_or_else(|| err("prefix length above 32"))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Computes what this node should serve for every Service in `objects`.
///
/// O(services × ports + slices × endpoints): slices are indexed by their Service once, and each
/// slice is parsed once per Service (not once per port), so a Service with many ports and many
/// endpoints costs ports × endpoints comparisons and no more.
pub fn desired(objects: &Objects, node: &NodeContext) -> Desired {
    let slices = SliceIndex::build(&objects.slices, None);
    let mut out = Desired::default();
    for (svc_ref, svc) in &objects.services {
        add_service(svc_ref, svc, slices.of(svc_ref), node, &mut out);
    }
    out
}

/// Like [`desired`], limited to the Services in `services` (those absent from `objects` simply
/// produce nothing, which is how a deletion looks). Meant for incremental updates with
/// [`crate::reconcile::plan_services`].
///
/// A frontend claimed by two Services is given to the smallest [`ObjectRef`] by [`desired`]; this
/// function sees only the listed Services, so such conflicts with unlisted Services are not
/// detected here (the periodic full [`desired`] settles them).
pub fn desired_for(
    objects: &Objects,
    node: &NodeContext,
    services: &BTreeSet<ObjectRef>,
) -> Desired {
    let slices = SliceIndex::build(&objects.slices, Some(services));
    let mut out = Desired::default();
    for svc_ref in services {
        if let Some(svc) = objects.services.get(svc_ref) {
            add_service(svc_ref, svc, slices.of(svc_ref), node, &mut out);
        }
    }
    out
}

/// [`desired_for`] with the slices of each Service looked up in `owners` (kept current by the
/// caller as objects change) instead of found by a pass over every slice: an incremental update
/// then costs O(changed Services × their slices), not O(all slices). The result equals
/// [`desired_for`]'s whenever `owners` describes `objects.slices`.
pub fn desired_for_indexed(
    objects: &Objects,
    node: &NodeContext,
    services: &BTreeSet<ObjectRef>,
    owners: &SliceOwners,
) -> Desired {
    let mut out = Desired::default();
    for svc_ref in services {
        if let Some(svc) = objects.services.get(svc_ref) {
            // Slice refs come sorted (a BTreeSet), as in SliceIndex::build, so the result
            // does not depend on which function built it.
            let slices: Vec<_> = owners
                .slices_of(svc_ref)
                .filter_map(|r| objects.slices.get_key_value(r))
                .collect();
            add_service(svc_ref, svc, &slices, node, &mut out);
        }
    }
    out
}

/// Which EndpointSlices belong to which Service ([`LABEL_SERVICE_NAME`] in the slice's
/// namespace), maintained slice by slice with [`SliceOwners::update`] by a source that applies
/// changes one at a time (the API-server watcher), for [`desired_for_indexed`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceOwners {
    by_service: BTreeMap<ObjectRef, BTreeSet<ObjectRef>>,
    owner_of: BTreeMap<ObjectRef, ObjectRef>,
}

impl SliceOwners {
    /// The index of every slice in `slices`.
    pub fn build(slices: &BTreeMap<ObjectRef, EndpointSlice>) -> Self {
        let mut me = Self::default();
        for (r, slice) in slices {
            me.update(r, Some(slice));
        }
        me
    }

    /// Records that slice `slice_ref` now is `slice` (`None`: deleted).
    pub fn update(&mut self, slice_ref: &ObjectRef, slice: Option<&EndpointSlice>) {
        if let Some(old) = self.owner_of.remove(slice_ref) {
            if let Some(set) = self.by_service.get_mut(&old) {
                set.remove(slice_ref);
                if set.is_empty() {
                    self.by_service.remove(&old);
                }
            }
        }
        let owner = slice
            .and_then(|s| label(&s.metadata, LABEL_SERVICE_NAME))
            .map(|name| ObjectRef::new(slice_ref.namespace.clone(), name));
        if let Some(owner) = owner {
            self.by_service
                .entry(owner.clone())
                .or_default()
                .insert(slice_ref.clone());
            self.owner_of.insert(slice_ref.clone(), owner);
        }
    }

    /// The slices of `service`, in [`ObjectRef`] order.
    pub fn slices_of(&self, service: &ObjectRef) -> impl Iterator<Item = &ObjectRef> {
        self.by_service.get(service).into_iter().flatten()
    }
}

/// EndpointSlices grouped by the Service they name in [`LABEL_SERVICE_NAME`].
struct SliceIndex<'a> {
    by_service: BTreeMap<ObjectRef, Vec<(&'a ObjectRef, &'a EndpointSlice)>>,
}

impl<'a> SliceIndex<'a> {
    fn build(
        slices: &'a BTreeMap<ObjectRef, EndpointSlice>,
        only: Option<&BTreeSet<ObjectRef>>,
    ) -> Self {
        let mut by_service: BTreeMap<ObjectRef, Vec<_>> = BTreeMap::new();
        for (slice_ref, slice) in slices {
            let Some(service) = label(&slice.metadata, LABEL_SERVICE_NAME) else {
                continue;
            };
            let owner = ObjectRef::new(slice_ref.namespace.clone(), service);
            if only.is_some_and(|set| !set.contains(&owner)) {
                continue;
            }
            by_service
                .entry(owner)
                .or_default()
                .push((slice_ref, slice));
        }
        Self { by_service }
    }

    fn of(&self, service: &ObjectRef) -> &[(&'a ObjectRef, &'a EndpointSlice)] {
        self.by_service
            .get(service)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

fn label<'m>(meta: &'m ObjectMeta, key: &str) -> Option<&'m str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// Adds the frontends of one Service to `out`.
fn add_service(
    svc_ref: &ObjectRef,
    svc: &Service,
    slices: &[(&ObjectRef, &EndpointSlice)],
    node: &NodeContext,
    out: &mut Desired,
) {
    let object = format!("Service {svc_ref}");
    if label(&svc.metadata, LABEL_SERVICE_PROXY_NAME).is_some() {
        // Meant for another proxy (we answer to no name), exactly as kube-proxy skips it.
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
    let Some(addrs) = ServiceAddresses::of(spec, &object, &mut out.problems) else {
        return; // headless
    };
    let affinity_timeout_s = affinity_timeout(spec, &object, &mut out.problems);
    let parsed: Vec<ParsedSlice> = slices
        .iter()
        .filter_map(|(slice_ref, slice)| ParsedSlice::parse(slice_ref, slice, node, out))
        .collect();

    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        let Some(proto) = protocol(port.protocol.as_deref(), &object, &field, &mut out.problems)
        else {
            continue;
        };
        let Ok(number) = u16::try_from(port.port) else {
            out.problems.push(Problem::new(
                &object,
                format!("{field}.port"),
                "must be 1-65535",
            ));
            continue;
        };
        if number == 0 {
            out.problems.push(Problem::new(
                &object,
                format!("{field}.port"),
                "must be 1-65535",
            ));
            continue;
        }
        let port_name = port.name.clone().unwrap_or_default();
        let mut backends = choose_backends(&parsed, &port_name, proto);
        if backends.len() > MAX_BACKENDS_PER_FRONTEND as usize {
            out.problems.push(Problem::new(
                &object,
                &field,
                format!(
                    "{} endpoints, more than the {MAX_BACKENDS_PER_FRONTEND} a frontend can \
                     hold; the rest are ignored",
                    backends.len()
                ),
            ));
            backends.truncate(MAX_BACKENDS_PER_FRONTEND as usize);
        }
        for key in addrs.frontend_keys(port, number, proto) {
            if let Some(existing) = out.frontends.get(&key) {
                out.problems.push(Problem::new(
                    &object,
                    &field,
                    format!(
                        "{}:{}/{} is already served for Service {}; not programmed again",
                        Ipv4Addr::from(key.addr),
                        key.port,
                        proto_name(key.proto),
                        existing.service
                    ),
                ));
                continue;
            }
            out.frontends.insert(
                key,
                DesiredFrontend {
                    service: svc_ref.clone(),
                    port_name: port_name.clone(),
                    backends: backends.clone(),
                    affinity_timeout_s,
                },
            );
        }
    }
}

/// The addresses a Service is reached on. Today only its ClusterIPs; NodePort node addresses,
/// `externalIPs` and LoadBalancer ingress IPs become more fields here and more keys from
/// [`ServiceAddresses::frontend_keys`], without touching the backend logic.
struct ServiceAddresses {
    cluster_ips: Vec<Ipv4Addr>,
}

impl ServiceAddresses {
    /// `None` for a headless Service (`clusterIP: None`), which is never programmed.
    fn of(spec: &ServiceSpec, object: &str, problems: &mut Vec<Problem>) -> Option<Self> {
        // `clusterIPs` is authoritative when set (dual-stack); `clusterIP` is its first entry
        // and the only one older objects carry.
        let (field, ips): (&str, Vec<&str>) = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => {
                ("spec.clusterIPs", ips.iter().map(|s| s.as_str()).collect())
            }
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
        Some(Self { cluster_ips })
    }

    /// Every frontend key for one `spec.ports[]` entry.
    fn frontend_keys(&self, _port: &ServicePort, number: u16, proto: u8) -> Vec<FrontendKey> {
        self.cluster_ips
            .iter()
            .map(|ip| FrontendKey {
                addr: ip.octets(),
                port: number,
                proto,
                scope: SCOPE_ANY,
            })
            .collect()
    }
}

fn affinity_timeout(spec: &ServiceSpec, object: &str, problems: &mut Vec<Problem>) -> u32 {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return 0;
    }
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    match timeout {
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

fn proto_name(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        _ => "?",
    }
}

/// One EndpointSlice reduced to what backend selection needs, with its problems reported once.
struct ParsedSlice {
    /// (name, protocol, port number) of each usable `ports[]` entry.
    ports: Vec<(String, u8, u16)>,
    endpoints: Vec<ParsedEndpoint>,
}

struct ParsedEndpoint {
    addr: Ipv4Addr,
    ready: bool,
    /// `serving && terminating`: usable only as a fallback when nothing is ready.
    serving_terminating: bool,
}

impl ParsedSlice {
    /// `None` for slices a proxy ignores (not IPv4, headless-labelled).
    fn parse(
        slice_ref: &ObjectRef,
        slice: &EndpointSlice,
        node: &NodeContext,
        out: &mut Desired,
    ) -> Option<Self> {
        if slice.address_type != "IPv4" || label(&slice.metadata, LABEL_HEADLESS).is_some() {
            return None;
        }
        let object = format!("EndpointSlice {slice_ref}");
        let mut ports = Vec::new();
        for (i, port) in slice.ports.iter().flatten().enumerate() {
            let proto = match port.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => PROTO_TCP,
                "UDP" => PROTO_UDP,
                // The Service port with that protocol is refused with its own problem.
                _ => continue,
            };
            // A port without a number means "all ports" to some consumers; kube-proxy skips it.
            let Some(number) = port.port else { continue };
            match u16::try_from(number) {
                Ok(n) if n != 0 => ports.push((port.name.clone().unwrap_or_default(), proto, n)),
                _ => out.problems.push(Problem::new(
                    &object,
                    format!("ports[{i}].port"),
                    "must be 1-65535",
                )),
            }
        }
        let mut endpoints = Vec::new();
        for (i, ep) in slice.endpoints.iter().enumerate() {
            // Addresses of one endpoint are fungible; consumers use the first (as kube-proxy
            // does, https://issue.k8s.io/106267).
            let Some(text) = ep.addresses.first() else {
                out.problems.push(Problem::new(
                    &object,
                    format!("endpoints[{i}].addresses"),
                    "empty",
                ));
                continue;
            };
            let field = format!("endpoints[{i}].addresses[0]");
            let Ok(addr) = text.parse::<Ipv4Addr>() else {
                out.problems.push(Problem::new(
                    &object,
                    field,
                    format!("{text:?} is not an IPv4 address"),
                ));
                continue;
            };
            if let Some(why) = refused_endpoint(addr, node) {
                out.problems.push(Problem::new(
                    &object,
                    field,
                    format!("{addr} is {why}; refused (CVE-2021-25737)"),
                ));
                continue;
            }
            let conditions = ep.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            endpoints.push(ParsedEndpoint {
                addr,
                ready,
                serving_terminating: serving && terminating,
            });
        }
        Some(Self { ports, endpoints })
    }

    fn port(&self, name: &str, proto: u8) -> Option<u16> {
        self.ports
            .iter()
            .find(|(n, p, _)| n == name && *p == proto)
            .map(|(_, _, port)| *port)
    }
}

/// Why an endpoint address must never be a backend, if it must not.
fn refused_endpoint(addr: Ipv4Addr, node: &NodeContext) -> Option<&'static str> {
    if addr.is_loopback() {
        Some("a loopback address")
    } else if addr.is_link_local() {
        Some("a link-local address")
    } else if node.node_ips.contains(&addr) {
        Some("this node's address")
    } else {
        None
    }
}

/// Backends of one Service port: ready endpoints, else serving+terminating ones (flagged),
/// else none. The port is matched by name and protocol in each slice separately, so a named
/// `targetPort` resolves to whatever number each slice (each pod template) gives it.
fn choose_backends(slices: &[ParsedSlice], port_name: &str, proto: u8) -> Vec<Backend> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        let Some(port) = slice.port(port_name, proto) else {
            continue;
        };
        for ep in &slice.endpoints {
            let backend = Backend {
                addr: ep.addr.octets(),
                port,
                proto,
                flags: 0,
            };
            if ep.ready {
                ready.insert(backend);
            } else if ep.serving_terminating {
                terminating.insert(Backend {
                    flags: BACKEND_F_TERMINATING,
                    ..backend
                });
            }
        }
    }
    if ready.is_empty() {
        terminating.into_iter().collect()
    } else {
        ready.into_iter().collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn svc(ns: &str, name: &str, spec: serde_json::Value) -> (ObjectRef, Service) {
        svc_labelled(ns, name, json!({}), spec)
    }

    pub(crate) fn svc_labelled(
        ns: &str,
        name: &str,
        labels: serde_json::Value,
        spec: serde_json::Value,
    ) -> (ObjectRef, Service) {
        let value = json!({
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": spec,
        });
        let svc = serde_json::from_value(value).expect("test Service");
        (ObjectRef::new(ns, name), svc)
    }

    pub(crate) fn slice(
        ns: &str,
        name: &str,
        service: &str,
        body: serde_json::Value,
    ) -> (ObjectRef, EndpointSlice) {
        let mut value = json!({
            "metadata": {"namespace": ns, "name": name,
                         "labels": {LABEL_SERVICE_NAME: service}},
            "addressType": "IPv4",
            "endpoints": [],
        });
        merge(&mut value, body);
        let slice = serde_json::from_value(value).expect("test EndpointSlice");
        (ObjectRef::new(ns, name), slice)
    }

    fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
        match (base, over) {
            (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
                for (k, v) in o {
                    merge(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, o) => *b = o,
        }
    }

    fn objects(
        services: Vec<(ObjectRef, Service)>,
        slices: Vec<(ObjectRef, EndpointSlice)>,
    ) -> Objects {
        Objects {
            services: services.into_iter().collect(),
            slices: slices.into_iter().collect(),
            problems: vec![],
        }
    }

    fn node() -> NodeContext {
        NodeContext {
            node_name: "node-a".into(),
            node_ips: vec![Ipv4Addr::new(172, 18, 0, 2)],
        }
    }

    fn key(ip: [u8; 4], port: u16, proto: u8) -> FrontendKey {
        FrontendKey {
            addr: ip,
            port,
            proto,
            scope: SCOPE_ANY,
        }
    }

    fn be(ip: [u8; 4], port: u16) -> Backend {
        Backend {
            addr: ip,
            port,
            proto: PROTO_TCP,
            flags: 0,
        }
    }

    fn ep(ip: &str) -> serde_json::Value {
        json!({"addresses": [ip]})
    }

    fn ep_cond(
        ip: &str,
        ready: Option<bool>,
        serving: Option<bool>,
        term: Option<bool>,
    ) -> serde_json::Value {
        json!({"addresses": [ip], "conditions": {"ready": ready, "serving": serving, "terminating": term}})
    }

    fn web_slice(name: &str, port: i32, eps: Vec<serde_json::Value>) -> (ObjectRef, EndpointSlice) {
        slice(
            "default",
            name,
            "web",
            json!({"ports": [{"name": "", "port": port}], "endpoints": eps}),
        )
    }

    fn web(spec_extra: serde_json::Value) -> (ObjectRef, Service) {
        let mut spec = json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]});
        merge(&mut spec, spec_extra);
        svc("default", "web", spec)
    }

    fn only(d: &Desired) -> &DesiredFrontend {
        assert_eq!(d.frontends.len(), 1, "{d:#?}");
        d.frontends.values().next().expect("one frontend")
    }

    fn has_problem(d: &Desired, field: &str, needle: &str) -> bool {
        d.problems
            .iter()
            .any(|p| p.field == field && p.message.contains(needle))
    }

    #[test]
    fn cluster_ip_service_serves_every_cluster_ip_times_every_port() {
        let d = desired(
            &objects(
                vec![svc(
                    "default",
                    "dns",
                    json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "10.96.0.11"],
                           "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                                     {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}),
                )],
                vec![],
            ),
            &node(),
        );
        let keys: Vec<_> = d.frontends.keys().copied().collect();
        assert_eq!(
            keys,
            vec![
                key([10, 96, 0, 10], 53, PROTO_TCP),
                key([10, 96, 0, 10], 53, PROTO_UDP),
                key([10, 96, 0, 11], 53, PROTO_TCP),
                key([10, 96, 0, 11], 53, PROTO_UDP),
            ]
        );
        assert_eq!(d.frontends[&keys[1]].port_name, "dns");
        assert!(d.problems.is_empty(), "{:?}", d.problems);
    }

    #[test]
    fn cluster_ip_is_used_when_cluster_ips_is_absent() {
        let d = desired(&objects(vec![web(json!({}))], vec![]), &node());
        assert_eq!(
            *d.frontends.keys().next().expect("frontend"),
            key([10, 96, 0, 10], 80, PROTO_TCP)
        );
    }

    #[test]
    fn protocol_defaults_to_tcp() {
        let d = desired(&objects(vec![web(json!({}))], vec![]), &node());
        assert_eq!(d.frontends.keys().next().map(|k| k.proto), Some(PROTO_TCP));
    }

    #[test]
    fn ipv6_cluster_ips_are_skipped_silently() {
        let d = desired(
            &objects(
                vec![web(
                    json!({"clusterIP": "fd00::10", "clusterIPs": ["fd00::10", "10.96.0.10"]}),
                )],
                vec![],
            ),
            &node(),
        );
        assert_eq!(d.frontends.len(), 1);
        assert!(d.problems.is_empty(), "{:?}", d.problems);
    }

    #[test]
    fn sctp_port_is_refused_and_the_rest_programmed() {
        let d = desired(
            &objects(
                vec![web(
                    json!({"ports": [{"port": 80}, {"port": 9, "protocol": "SCTP"}]}),
                )],
                vec![],
            ),
            &node(),
        );
        assert_eq!(d.frontends.len(), 1);
        assert!(has_problem(
            &d,
            "spec.ports[1].protocol",
            "SCTP not supported by the datapath"
        ));
    }

    #[test]
    fn invalid_port_is_refused_with_its_field_path() {
        let d = desired(
            &objects(
                vec![web(
                    json!({"ports": [{"port": 0}, {"port": 70000}, {"port": 81}]}),
                )],
                vec![],
            ),
            &node(),
        );
        assert_eq!(only(&d).port_name, "");
        assert_eq!(d.frontends.keys().next().map(|k| k.port), Some(81));
        assert!(has_problem(&d, "spec.ports[0].port", "must be 1-65535"));
        assert!(has_problem(&d, "spec.ports[1].port", "must be 1-65535"));
        assert_eq!(
            d.problems[0].to_string(),
            "Service default/web: spec.ports[0].port: must be 1-65535"
        );
    }

    #[test]
    fn unknown_protocol_is_refused() {
        let d = desired(
            &objects(
                vec![web(json!({"ports": [{"port": 80, "protocol": "ICMP"}]}))],
                vec![],
            ),
            &node(),
        );
        assert!(d.frontends.is_empty());
        assert!(has_problem(
            &d,
            "spec.ports[0].protocol",
            "unknown protocol"
        ));
    }

    #[test]
    fn unparsable_cluster_ip_is_refused_and_the_rest_programmed() {
        let d = desired(
            &objects(
                vec![web(json!({"clusterIPs": ["10.96.0.300", "10.96.0.10"]}))],
                vec![],
            ),
            &node(),
        );
        assert_eq!(d.frontends.len(), 1);
        assert!(has_problem(&d, "spec.clusterIPs[0]", "not an IP address"));
    }

    #[test]
    fn headless_service_is_never_programmed() {
        let d = desired(
            &objects(
                vec![web(json!({"clusterIP": "None"}))],
                vec![web_slice("web-1", 80, vec![ep("10.244.1.5")])],
            ),
            &node(),
        );
        assert!(d.frontends.is_empty());
        assert!(d.problems.is_empty(), "{:?}", d.problems);
    }

    #[test]
    fn external_name_service_is_never_programmed() {
        let d = desired(
            &objects(
                vec![svc(
                    "prod",
                    "db",
                    json!({"type": "ExternalName", "externalName": "my.database.example.com"}),
                )],
                vec![],
            ),
            &node(),
        );
        assert_eq!(d, Desired::default());
    }

    #[test]
    fn service_with_service_proxy_name_label_is_skipped() {
        let (r, s) = svc_labelled(
            "default",
            "web",
            json!({LABEL_SERVICE_PROXY_NAME: "other-proxy"}),
            json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
        );
        let d = desired(&objects(vec![(r, s)], vec![]), &node());
        assert_eq!(d, Desired::default());
    }

    #[test]
    fn slice_labelled_headless_is_ignored() {
        let (r, mut s) = web_slice("web-1", 80, vec![ep("10.244.1.5")]);
        s.metadata
            .labels
            .get_or_insert_default()
            .insert(LABEL_HEADLESS.into(), String::new());
        let d = desired(&objects(vec![web(json!({}))], vec![(r, s)]), &node());
        assert!(only(&d).backends.is_empty());
    }

    #[test]
    fn backends_come_from_slices_labelled_for_the_service_in_its_namespace() {
        let d = desired(
            &objects(
                vec![web(json!({}))],
                vec![
                    web_slice("web-1", 8080, vec![ep("10.244.1.5")]),
                    slice(
                        "other",
                        "web-x",
                        "web",
                        json!({"ports": [{"port": 1}], "endpoints": [ep("10.244.9.9")]}),
                    ),
                    slice(
                        "default",
                        "api-1",
                        "api",
                        json!({"ports": [{"port": 2}], "endpoints": [ep("10.244.8.8")]}),
                    ),
                ],
            ),
            &node(),
        );
        assert_eq!(only(&d).backends, vec![be([10, 244, 1, 5], 8080)]);
    }

    #[test]
    fn backends_are_merged_across_slices_sorted_and_deduplicated() {
        let d = desired(
            &objects(
                vec![web(json!({}))],
                vec![
                    web_slice("web-b", 8080, vec![ep("10.244.2.7"), ep("10.244.1.5")]),
                    web_slice("web-a", 8080, vec![ep("10.244.1.5"), ep("10.244.1.4")]),
                ],
            ),
            &node(),
        );
        assert_eq!(
            only(&d).backends,
            vec![
                be([10, 244, 1, 4], 8080),
                be([10, 244, 1, 5], 8080),
                be([10, 244, 2, 7], 8080)
            ]
        );
    }

    #[test]
    fn non_ipv4_slices_are_ignored() {
        let (r6, mut s6) = web_slice("web-v6", 80, vec![ep("fd00::5")]);
        s6.address_type = "IPv6".into();
        let (rf, mut sf) = web_slice("web-fqdn", 80, vec![ep("example.com")]);
        sf.address_type = "FQDN".into();
        let d = desired(
            &objects(vec![web(json!({}))], vec![(r6, s6), (rf, sf)]),
            &node(),
        );
        assert!(only(&d).backends.is_empty());
        assert!(d.problems.is_empty(), "{:?}", d.problems);
    }

    #[test]
    fn named_target_port_resolves_per_slice() {
        let d = desired(
            &objects(
                vec![web(
                    json!({"ports": [{"name": "http", "port": 80, "targetPort": "web"}]}),
                )],
                vec![
                    slice(
                        "default",
                        "web-v1",
                        "web",
                        json!({"ports": [{"name": "http", "port": 8080}], "endpoints": [ep("10.244.1.5")]}),
                    ),
                    slice(
                        "default",
                        "web-v2",
                        "web",
                        json!({"ports": [{"name": "http", "port": 9090}], "endpoints": [ep("10.244.1.6")]}),
                    ),
                ],
            ),
            &node(),
        );
        assert_eq!(
            only(&d).backends,
            vec![be([10, 244, 1, 5], 8080), be([10, 244, 1, 6], 9090)]
        );
    }

    #[test]
    fn unnamed_service_port_matches_unnamed_slice_port() {
        // Slice port name absent (None) and "" are the same name.
        let d = desired(
            &objects(
                vec![web(json!({}))],
                vec![slice(
                    "default",
                    "web-1",
                    "web",
                    json!({"ports": [{"port": 8080}], "endpoints": [ep("10.244.1.5")]}),
                )],
            ),
            &node(),
        );
        assert_eq!(only(&d).backends, vec![be([10, 244, 1, 5], 8080)]);
    }

    #[test]
    fn slice_without_the_port_name_contributes_nothing() {
        let d = desired(
            &objects(
                vec![web(
                    json!({"ports": [{"name": "http", "port": 80}, {"name": "metrics", "port": 9100}]}),
                )],
                vec![
                    slice(
                        "default",
                        "web-1",
                        "web",
                        json!({"ports": [{"name": "http", "port": 8080}], "endpoints": [ep("10.244.1.5")]}),
                    ),
                    slice(
                        "default",
                        "web-2",
                        "web",
                        json!({"ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9100}], "endpoints": [ep("10.244.1.6")]}),
                    ),
                ],
            ),
            &node(),
        );
        let http = &d.frontends[&key([10, 96, 0, 10], 80, PROTO_TCP)];
        let metrics = &d.frontends[&key([10, 96, 0, 10], 9100, PROTO_TCP)];
        assert_eq!(http.backends.len(), 2);
        assert_eq!(metrics.backends, vec![be([10, 244, 1, 6], 9100)]);
    }

    #[test]
    fn slice_port_protocol_must_match_the_service_port() {
        let d = desired(
            &objects(
                vec![web(json!({"ports": [{"port": 53, "protocol": "UDP"}]}))],
                vec![slice(
                    "default",
                    "web-1",
                    "web",
                    json!({"ports": [{"port": 53, "protocol": "TCP"}], "endpoints": [ep("10.244.1.5")]}),
                )],
            ),
            &node(),
        );
        assert!(only(&d).backends.is_empty());
    }

    #[test]
    fn ready_endpoints_are_used_and_ready_none_counts_as_ready() {
        let d = desired(
            &objects(
                vec![web(json!({}))],
                vec![web_slice(
                    "web-1",
                    80,
                    vec![
                        ep_cond("10.244.1.1", None, None, None),
                        ep_cond("10.244.1.2", Some(true), None, None),
                        ep_cond("10.244.1.3", Some(false), Some(true), Some(true)),
                        ep_cond("10.244.1.4", Some(false), Some(false), Some(false)),
                    ],
                )],
            ),
            &node(),
        );
        assert_eq!(
            only(&d).backends,
            vec![be([10, 244, 1, 1], 80), be([10, 244, 1, 2], 80)]
        );
    }

    #[test]
    fn serving_terminating_endpoints_are_used_only_when_none_is_ready() {
        let d = desired(
            &objects(
                vec![web(json!({}))],
                vec![web_slice(
                    "web-1",
                    80,
                    vec![
                        ep_cond("10.244.1.3", Some(false), Some(true), Some(true)),
                        ep_cond("10.244.1.4", Some(false), Some(false), Some(true)),
                        ep_cond("10.244.1.5", Some(false), Some(true), Some(false)),
                    ],
                )],
            ),
            &node(),
        );
        assert_eq!(
            only(&d).backends,
            vec![Backend {
                flags: BACKEND_F_TERMINATING,
                ..be([10, 244, 1, 3], 80)
            }]
        );
    }

    #[test]
    fn serving_none_falls_back_to_ready() {
        // ready=false, serving unset, terminating=true: serving is taken as false → unusable.
        let d = desired(
            &objects(
                vec![web(json!({}))],
                vec![web_slice(
                    "web-1",
                    80,
                    vec![ep_cond("10.244.1.3", Some(false), None, Some(true))],
                )],
            ),
            &node(),
        );
        assert!(only(&d).backends.is_empty());
    }

    #[test]
    fn frontend_without_usable_endpoint_is_programmed_with_zero_backends() {
        let d = desired(&objects(vec![web(json!({}))], vec![]), &node());
        assert!(only(&d).backends.is_empty());
    }

    #[test]
    fn loopback_link_local_and_node_ip_endpoints_are_refused() {
        let d = desired(
            &objects(
                vec![web(json!({}))],
                vec![web_slice(
                    "web-1",
                    80,
                    vec![
                        ep("127.0.0.1"),
                        ep("169.254.169.254"),
                        ep("172.18.0.2"),
                        ep("10.244.1.5"),
                        ep("bogus"),
                    ],
                )],
            ),
            &node(),
        );
        assert_eq!(only(&d).backends, vec![be([10, 244, 1, 5], 80)]);
        for i in 0..3 {
            assert!(
                has_problem(
                    &d,
                    &format!("endpoints[{i}].addresses[0]"),
                    "CVE-2021-25737"
                ),
                "{d:#?}"
            );
        }
        assert!(has_problem(
            &d,
            "endpoints[4].addresses[0]",
            "not an IPv4 address"
        ));
        assert_eq!(d.problems[0].object, "EndpointSlice default/web-1");
    }

    #[test]
    fn slice_problems_are_reported_once_not_per_port() {
        let d = desired(
            &objects(
                vec![web(
                    json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}),
                )],
                vec![slice(
                    "default",
                    "web-1",
                    "web",
                    json!({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}], "endpoints": [ep("127.0.0.1")]}),
                )],
            ),
            &node(),
        );
        assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
    }

    #[test]
    fn session_affinity_client_ip_uses_timeout_or_default() {
        let cases = [
            (json!({}), 0),
            (json!({"sessionAffinity": "None"}), 0),
            (
                json!({"sessionAffinity": "ClientIP"}),
                DEFAULT_AFFINITY_TIMEOUT_S,
            ),
            (
                json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
                60,
            ),
            (
                json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": -1}}}),
                DEFAULT_AFFINITY_TIMEOUT_S,
            ),
        ];
        for (extra, want) in cases {
            let d = desired(&objects(vec![web(extra.clone())], vec![]), &node());
            assert_eq!(only(&d).affinity_timeout_s, want, "{extra}");
        }
    }

    #[test]
    fn frontend_claimed_twice_goes_to_the_first_service() {
        let d = desired(
            &objects(
                vec![
                    svc(
                        "default",
                        "b",
                        json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
                    ),
                    svc(
                        "default",
                        "a",
                        json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
                    ),
                ],
                vec![],
            ),
            &node(),
        );
        assert_eq!(only(&d).service, ObjectRef::new("default", "a"));
        assert_eq!(d.problems.len(), 1);
        assert_eq!(d.problems[0].object, "Service default/b");
    }

    #[test]
    fn bad_service_does_not_prevent_others() {
        let d = desired(
            &objects(
                vec![
                    svc(
                        "default",
                        "bad",
                        json!({"clusterIP": "x", "type": "Weird", "ports": [{"port": 80}]}),
                    ),
                    svc("default", "nospec", json!(null)),
                    web(json!({})),
                ],
                vec![],
            ),
            &node(),
        );
        assert_eq!(only(&d).service, ObjectRef::new("default", "web"));
        assert_eq!(d.problems.len(), 2, "{:?}", d.problems);
    }

    #[test]
    fn output_is_deterministic_whatever_the_input_order() {
        let build = |rev: bool| {
            let mut eps = vec![ep("10.244.1.9"), ep("10.244.1.1"), ep("10.244.1.5")];
            if rev {
                eps.reverse();
            }
            desired(
                &objects(vec![web(json!({}))], vec![web_slice("web-1", 80, eps)]),
                &node(),
            )
        };
        assert_eq!(build(false), build(true));
    }

    #[test]
    fn desired_for_limits_itself_to_the_named_services() {
        let objs = objects(
            vec![
                web(json!({})),
                svc(
                    "default",
                    "api",
                    json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}),
                ),
            ],
            vec![web_slice("web-1", 80, vec![ep("10.244.1.5")])],
        );
        let set: BTreeSet<_> = [
            ObjectRef::new("default", "web"),
            ObjectRef::new("default", "gone"),
        ]
        .into();
        let part = desired_for(&objs, &node(), &set);
        let full = desired(&objs, &node());
        assert_eq!(part.frontends.len(), 1);
        let (k, f) = part.frontends.iter().next().expect("frontend");
        assert_eq!(full.frontends.get(k), Some(f));
    }

    #[test]
    fn slice_owners_follow_moves_and_deletes_and_match_desired_for() {
        let api = svc(
            "default",
            "api",
            json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}),
        );
        let mut objs = objects(
            vec![web(json!({})), api],
            vec![
                web_slice("web-1", 80, vec![ep("10.244.1.5")]),
                web_slice("web-2", 80, vec![ep("10.244.1.6")]),
            ],
        );
        let mut owners = SliceOwners::build(&objs.slices);
        // web-2 moves to api; web-1 is deleted; a slice without the label is ignored.
        let (r2, moved) = slice(
            "default",
            "web-2",
            "api",
            json!({"ports": [{"port": 80}], "endpoints": [ep("10.244.1.7")]}),
        );
        objs.slices.insert(r2.clone(), moved);
        owners.update(&r2, objs.slices.get(&r2));
        let r1 = ObjectRef::new("default", "web-1");
        objs.slices.remove(&r1);
        owners.update(&r1, None);
        let (r3, mut orphan) = web_slice("orphan", 80, vec![ep("10.244.1.8")]);
        orphan.metadata.labels = None;
        objs.slices.insert(r3.clone(), orphan);
        owners.update(&r3, objs.slices.get(&r3));

        assert_eq!(owners, SliceOwners::build(&objs.slices));
        let set: BTreeSet<_> = [
            ObjectRef::new("default", "web"),
            ObjectRef::new("default", "api"),
        ]
        .into();
        assert_eq!(
            desired_for_indexed(&objs, &node(), &set, &owners),
            desired_for(&objs, &node(), &set)
        );
    }

    #[test]
    fn cidr_parses_and_clears_host_bits() {
        let c: Ipv4Cidr = "10.96.3.4/16".parse().expect("cidr");
        assert_eq!(c.to_string(), "10.96.0.0/16");
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 96, 255, 255));
        assert!(c.contains(Ipv4Addr::new(10, 96, 200, 1)));
        assert!(!c.contains(Ipv4Addr::new(10, 97, 0, 1)));
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.0.0.0".parse::<Ipv4Cidr>().is_err());
        let all: Ipv4Cidr = "0.0.0.0/0".parse().expect("cidr");
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(Ipv4Cidr::default().to_string(), "10.96.0.0/16");
    }
}
