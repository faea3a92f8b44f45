//! Pure: Kubernetes objects + this node → the frontends the maps should hold.
//!
//! [`desired`] applies kube-proxy's semantics (DESIGN §1) to a set of [`Objects`] and returns a
//! [`Desired`]: one [`DesiredFrontend`] per (address, port, protocol, scope) this node serves,
//! each with its sorted, de-duplicated [`Backend`]s and its flags, plus the [`Problem`]s found on
//! the way. Nothing here does I/O or keeps state, so every rule is a table test, and the same
//! function serves the static manifest source and the API-server watcher.
//!
//! Refusal is always local: a bad port, address or endpoint costs only that port, address or
//! endpoint (recorded as a [`Problem`] naming the object and field), never the rest of the
//! Service and never another Service.
//!
//! # Frontends and traffic policies
//! Per `spec.ports[]` entry a Service is served on its ClusterIPs, on
//! [`NodeContext::nodeport_ips`] × `nodePort` (NodePort and LoadBalancer types), and on its
//! `externalIPs` and LoadBalancer ingress IPs. Backends follow kube-proxy's
//! `CategorizeEndpoints` (pkg/proxy/topology.go): ClusterIPs use this node's endpoints only under
//! `internalTrafficPolicy: Local`; the other frontends ignore it and, under
//! `externalTrafficPolicy: Local`, get a second, [`SCOPE_EXTERNAL`] entry holding this node's
//! endpoints for clients from the wire while in-cluster clients keep every endpoint (kube-proxy's
//! "short circuit"). An empty `Local` set drops ([`FRONTEND_F_DROP_NO_BACKEND`]) unless the
//! Service has no usable endpoint anywhere, which rejects as kube-proxy does.
//!
//! # Topology
//! The `Cluster` endpoint set (what every entry but the `Local` ones holds) follows the
//! EndpointSlice hints as kube-proxy's `topologyModeFromHints` / `availableForTopology`
//! (pkg/proxy/topology.go, Kubernetes 1.34) apply them, all or nothing per Service port: node
//! hints when every ready endpoint has some and one names this node, else zone hints on the
//! same terms against [`NodeContext::zone`], else every ready endpoint. kube-proxy reads the
//! hints only, never `spec.trafficDistribution`: the EndpointSlice controller turns
//! `PreferClose`/`PreferSameZone` into `forZones` and `PreferSameNode` into `forNodes` (plus
//! `forZones`), so we do the same. Where no controller writes hints (`--manifests`), the hints
//! written in the slices are used as they are, and a Service's `trafficDistribution` alone
//! changes nothing. `Local` traffic policies win: their sets ignore hints.
//!
//! # Source ranges
//! `spec.loadBalancerSourceRanges` as kube-proxy applies them (pkg/proxy/nftables/proxier.go:
//! the per-Service-port `firewall` chain, reached through `firewall-check` from filter
//! `prerouting` and `output` for `ct state new`; pkg/proxy/serviceport.go and
//! pkg/proxy/util/utils.go `MapCIDRsByIPFamily` for the parsing):
//! - only LoadBalancer ingress IP frontends ([`FRONTEND_F_SOURCE_RANGES`], both scopes) are
//!   filtered; ClusterIPs, NodePorts and `externalIPs` of the same Service never are;
//! - every source is checked: clients from the wire, pods, and the node's own processes;
//! - entries are trimmed and parsed loosely (host bits cleared, leading zeros accepted);
//!   IPv6 prefixes belong to the other family's proxy and are skipped without a word; a
//!   malformed entry is reported ([`Problem`] at `spec.loadBalancerSourceRanges[i]`) and
//!   skipped, the others apply;
//! - an empty IPv4 list (absent, empty, only IPv6, or nothing parsed) filters nothing:
//!   kube-proxy builds no firewall chain without ranges of its family;
//! - node processes: kube-proxy's chain allows the node's packets by their source address, and
//!   when a range contains the node IP it also allows the LB IPs as sources (a VIP bound on the
//!   node is then the source). A socket call has no source yet, so the agent decides: when no
//!   range contains a node address ([`NodeContext::node_ips`]), [`FRONTEND_F_DENY_NODE`] makes
//!   the socket hooks refuse the call.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::{EndpointHints, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use svc_common::{
    Backend, FrontendKey, BACKEND_F_LOCAL, BACKEND_F_TERMINATING, FRONTEND_F_DENY_NODE,
    FRONTEND_F_DROP_NO_BACKEND, FRONTEND_F_EXTERNAL_IP, FRONTEND_F_EXTERNAL_SCOPE,
    FRONTEND_F_NODEPORT, FRONTEND_F_SOURCE_RANGES, MAX_BACKENDS_PER_FRONTEND, PROTO_TCP, PROTO_UDP,
    SCOPE_ANY, SCOPE_EXTERNAL,
};

/// Label naming the Service an EndpointSlice belongs to (set by the EndpointSlice controllers).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label asking for a Service to be handled by a non-default proxy (KEP-2447). Which Services
/// we claim by it is [`NodeContext::service_proxy_name`]'s business.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// The Node label naming its zone, which `forZones` hints are matched against.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
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
    /// This node's name. An endpoint whose `nodeName` equals it is *local*: its backend gets
    /// [`BACKEND_F_LOCAL`] and it is what traffic policy `Local` keeps. Empty matches nothing.
    /// (An endpoint at one of [`NodeContext::node_ips`] is local too.)
    pub node_name: String,
    /// This node's own addresses (`--node-ip`, plus the Node object's InternalIP/ExternalIP when
    /// the API server is the source). NodePorts are served on them (see
    /// [`NodeContext::nodeport_addresses`]). An endpoint at one of them is a hostNetwork
    /// endpoint on this node (the `kubernetes` Service's API server, a hostNetwork pod): an
    /// ordinary backend, and a local one even when its slice names no node (the API server
    /// writes the `kubernetes` slice without `nodeName`).
    pub node_ips: Vec<Ipv4Addr>,
    /// kube-proxy's `--nodeport-addresses`: which of [`NodeContext::node_ips`] serve NodePorts.
    /// Empty (the default) means all of them, kube-proxy's `primary`. With prefixes, the node
    /// addresses inside any of them; and if one contains `127.0.0.1` (`127.0.0.0/8`,
    /// `0.0.0.0/0`), also `127.0.0.1` itself, the localhost NodePort that only the node's own
    /// processes reach (through the cgroup socket hooks, never through `route_localnet`).
    pub nodeport_addresses: Vec<Ipv4Cidr>,
    /// `--external-ip-cidrs`, the CVE-2020-8554 mitigation (what the upstream externalip-webhook
    /// enforces at admission): when set, a `spec.externalIPs` entry outside every prefix is
    /// refused, so whoever may create Services cannot capture traffic to an arbitrary address.
    /// `None` (the default) accepts every external IP, as kube-proxy does.
    pub external_ip_cidrs: Option<Vec<Ipv4Cidr>>,
    /// This node's zone, its Node object's [`LABEL_TOPOLOGY_ZONE`] label: endpoints hinted
    /// `forZones` it are preferred (see "Topology" above). `None` (no label, or no Node object as
    /// with `--manifests`) ignores zone hints, as kube-proxy on an unlabelled node does.
    pub zone: Option<String>,
    /// `--service-proxy-name`: which Services are ours by their [`LABEL_SERVICE_PROXY_NAME`]
    /// label. `None` (the default): those without the label, exactly kube-proxy's choice.
    /// `Some(name)`: exactly those whose label equals `name`, so this agent can run beside
    /// kube-proxy or another proxy, each serving its own Services (as Cilium's
    /// `--k8s-service-proxy-name`). See [`NodeContext::claims`].
    pub service_proxy_name: Option<String>,
}

impl NodeContext {
    /// Whether a Service with this metadata is ours to serve (see
    /// [`NodeContext::service_proxy_name`]). A label with an empty value is still a label
    /// (kube-proxy selects "label absent"), so it is never ours; an empty name means `None`.
    pub fn claims(&self, meta: &ObjectMeta) -> bool {
        match self.service_proxy_name.as_deref().filter(|n| !n.is_empty()) {
            None => label(meta, LABEL_SERVICE_PROXY_NAME).is_none(),
            Some(name) => label(meta, LABEL_SERVICE_PROXY_NAME) == Some(name),
        }
    }

    /// The addresses NodePorts are served on, sorted and de-duplicated (see
    /// [`NodeContext::nodeport_addresses`]). Only node addresses we know of are candidates:
    /// kube-proxy would also match other local interface addresses inside the prefixes, which
    /// an agent that is told its addresses cannot see.
    pub fn nodeport_ips(&self) -> Vec<Ipv4Addr> {
        let mut ips: BTreeSet<Ipv4Addr> = if self.nodeport_addresses.is_empty() {
            self.node_ips.iter().copied().collect()
        } else {
            self.node_ips
                .iter()
                .copied()
                .filter(|ip| self.nodeport_addresses.iter().any(|c| c.contains(*ip)))
                .collect()
        };
        if self
            .nodeport_addresses
            .iter()
            .any(|c| c.contains(Ipv4Addr::LOCALHOST))
        {
            ips.insert(Ipv4Addr::LOCALHOST);
        }
        ips.into_iter().collect()
    }
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
    /// `FRONTEND_F_*` bits for [`svc_common::Frontend::flags`]: what kind of frontend it is
    /// (NodePort, external/LB IP), whether a [`SCOPE_EXTERNAL`] entry exists beside this one,
    /// whether an empty backend set means "drop" (traffic policy `Local`) not "reject", and
    /// whether source ranges apply ([`FRONTEND_F_SOURCE_RANGES`], [`FRONTEND_F_DENY_NODE`]).
    pub flags: u32,
    /// The client prefixes allowed to open flows (`loadBalancerSourceRanges`), sorted and
    /// de-duplicated; non-empty exactly when `flags` has [`FRONTEND_F_SOURCE_RANGES`] (see
    /// "Source ranges" in the module docs).
    pub source_ranges: Vec<Ipv4Cidr>,
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
    if !node.claims(&svc.metadata) {
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
    let Some(addrs) = ServiceAddresses::of(spec, svc, node, &object, &mut out.problems) else {
        return; // headless
    };
    let affinity_timeout_s = affinity_timeout(spec, &object, &mut out.problems);
    let ranges = SourceRanges::of(spec, node, &object, &mut out.problems);
    let policy = TrafficPolicy::of(spec);
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
        let Some(number) = port_number(port.port, &object, &format!("{field}.port"), out) else {
            continue;
        };
        let port_name = port.name.clone().unwrap_or_default();
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
    fn of(spec: &ServiceSpec) -> Self {
        Self {
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
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
        spec: &ServiceSpec,
        svc: &Service,
        node: &NodeContext,
        object: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
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
        let is_lb = spec.type_.as_deref() == Some("LoadBalancer");
        let node_port_ips = if is_lb || spec.type_.as_deref() == Some("NodePort") {
            node.nodeport_ips()
        } else {
            Vec::new()
        };
        let mut external_ips = Vec::new();
        for (i, text) in spec.external_ips.iter().flatten().enumerate() {
            let field = format!("spec.externalIPs[{i}]");
            let Some(ip) = ipv4_field(text, object, &field, problems) else {
                continue;
            };
            if let Some(allowed) = &node.external_ip_cidrs {
                if !allowed.iter().any(|c| c.contains(ip)) {
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
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .filter(|_| is_lb);
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            // Hostname-only entries name no address we could serve. `ipMode: Proxy`: the load
            // balancer proxies to the NodePorts itself, and kube-proxy deliberately does not
            // program the IP, so that pods reaching it go through the load balancer too.
            let Some(text) = ing.ip.as_deref().filter(|t| !t.is_empty()) else {
                continue;
            };
            if ing.ip_mode.as_deref() == Some("Proxy") {
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

/// A Service's `loadBalancerSourceRanges`, as they apply to its LB IP frontends (see "Source
/// ranges" in the module docs).
struct SourceRanges {
    /// The IPv4 prefixes, sorted and de-duplicated; empty: no filtering.
    allowed: Vec<Ipv4Cidr>,
    /// No prefix contains a node address: the node's own processes are refused.
    deny_node: bool,
}

impl SourceRanges {
    fn of(
        spec: &ServiceSpec,
        node: &NodeContext,
        object: &str,
        problems: &mut Vec<Problem>,
    ) -> Self {
        let mut allowed = Vec::new();
        for (i, text) in spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .enumerate()
        {
            match parse_source_range(text) {
                Ok(Some(cidr)) => allowed.push(cidr),
                Ok(None) => {}
                Err(why) => problems.push(Problem::new(
                    object,
                    format!("spec.loadBalancerSourceRanges[{i}]"),
                    format!("{text:?} is not a CIDR ({why}); ignored"),
                )),
            }
        }
        allowed.sort_unstable();
        allowed.dedup();
        let deny_node = !node
            .node_ips
            .iter()
            .any(|ip| allowed.iter().any(|c| c.contains(*ip)));
        Self { allowed, deny_node }
    }

    /// The extra flags and the prefixes of an LB IP frontend.
    fn for_lb_ip(&self) -> (u32, Vec<Ipv4Cidr>) {
        if self.allowed.is_empty() {
            return (0, Vec::new());
        }
        let mut flags = FRONTEND_F_SOURCE_RANGES;
        if self.deny_node {
            flags |= FRONTEND_F_DENY_NODE;
        }
        (flags, self.allowed.clone())
    }
}

/// One `loadBalancerSourceRanges` entry as kube-proxy reads it (`MapCIDRsByIPFamily`:
/// whitespace trimmed, netutils' `ParseCIDRSloppy`, so host bits are cleared and IPv4 octets
/// may have leading zeros). `Ok(None)`: an IPv6 prefix, the other family's business.
fn parse_source_range(text: &str) -> Result<Option<Ipv4Cidr>, &'static str> {
    let text = text.trim();
    let (addr, len) = text.split_once('/').ok_or("expected ADDRESS/LENGTH")?;
    if addr.contains(':') {
        let len_text = len;
        return match (addr.parse::<std::net::Ipv6Addr>(), len.parse::<u8>()) {
            (Ok(_), Ok(len)) if len <= 128 && is_decimal(len_text) => Ok(None),
            _ => Err("not an IPv6 prefix"),
        };
    }
    let mut octets = [0u8; 4];
    let mut parts = addr.split('.');
    for octet in &mut octets {
        let part = parts
            .next()
            .filter(|p| is_decimal(p))
            .ok_or("not an IPv4 address")?;
        *octet = part.parse().map_err(|_| "not an IPv4 address")?;
    }
    if parts.next().is_some() {
        return Err("not an IPv4 address");
    }
    let len: u8 = Some(len)
        .filter(|l| is_decimal(l))
        .and_then(|l| l.parse().ok())
        .ok_or("prefix length is not a number")?;
    Ipv4Cidr::new(Ipv4Addr::from(octets), len)
        .map(Some)
        .ok_or("prefix length above 32")
}

/// Non-empty and ASCII digits only (`str::parse` would accept a leading `+`).
fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
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

/// The API's spelling of a protocol (`spec.ports[].protocol`), for problems; inspect's
/// lower-case names are for people reading maps.
fn api_protocol(proto: u8) -> &'static str {
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
    /// `nodeName` is this node ([`NodeContext::node_name`]).
    local: bool,
    /// Its `hints`, as they concern this node.
    hints: HintsHere,
}

/// An endpoint's `hints` (`forZones`, `forNodes`) resolved against this node, as kube-proxy's
/// endpoint cache reads them (pkg/proxy/endpointslicecache.go). `forNodes` is read as with
/// the `PreferSameTrafficDistribution` gate on (beta and on by default since 1.34).
#[derive(Clone, Copy, Debug, Default)]
struct HintsHere {
    /// `forZones` names some zone.
    zoned: bool,
    /// `forZones` names [`NodeContext::zone`].
    for_zone: bool,
    /// `forNodes` names some node.
    noded: bool,
    /// `forNodes` names [`NodeContext::node_name`].
    for_node: bool,
}

impl HintsHere {
    fn of(hints: Option<&EndpointHints>, node: &NodeContext) -> Self {
        let zones = hints
            .and_then(|h| h.for_zones.as_deref())
            .unwrap_or_default();
        let nodes = hints
            .and_then(|h| h.for_nodes.as_deref())
            .unwrap_or_default();
        let zone = node.zone.as_deref().filter(|z| !z.is_empty());
        Self {
            zoned: !zones.is_empty(),
            for_zone: zone.is_some_and(|z| zones.iter().any(|h| h.name == z)),
            noded: !nodes.is_empty(),
            for_node: !node.node_name.is_empty() && nodes.iter().any(|h| h.name == node.node_name),
        }
    }
}

/// Which ready endpoints the `Cluster` set of one Service port keeps: kube-proxy's "topology
/// mode" (`topologyModeFromHints`, pkg/proxy/topology.go).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// Every ready endpoint (no hints, or hints that cannot be honoured).
    Any,
    /// Those hinted `forNodes` this node.
    SameNode,
    /// Those hinted `forZones` this node's zone.
    SameZone,
}

impl Topology {
    /// Decided over the ready endpoints of one port, all or nothing: one ready endpoint
    /// without node hints rules out [`Topology::SameNode`], one without zone hints rules out
    /// [`Topology::SameZone`] (hints half-written by the controller, or a hand-written slice),
    /// and a mode no ready endpoint is hinted for here is no mode: traffic then goes to every
    /// ready endpoint rather than to none. So a chosen mode always keeps at least one.
    fn of<'a>(ready: impl Iterator<Item = &'a HintsHere>) -> Self {
        let (mut any, mut all_noded, mut all_zoned) = (false, true, true);
        let (mut for_node, mut for_zone) = (false, false);
        for h in ready {
            any = true;
            all_noded &= h.noded;
            all_zoned &= h.zoned;
            for_node |= h.for_node;
            for_zone |= h.for_zone;
        }
        if any && all_noded && for_node {
            Self::SameNode
        } else if any && all_zoned && for_zone {
            Self::SameZone
        } else {
            Self::Any
        }
    }

    fn admits(self, h: &HintsHere) -> bool {
        match self {
            Self::Any => true,
            Self::SameNode => h.for_node,
            Self::SameZone => h.for_zone,
        }
    }
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
            if let Some(why) = refused_endpoint(addr) {
                out.problems.push(Problem::new(
                    &object,
                    field,
                    format!(
                        "{addr} {why}; refused, as the API server's endpoint validation \
                         refuses it (ValidateEndpointIP, CVE-2021-25737)"
                    ),
                ));
                continue;
            }
            let conditions = ep.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            // A hostNetwork endpoint's address is its node's: local here whatever `nodeName`
            // says (the API server's own `kubernetes` slice has none).
            let local = (!node.node_name.is_empty()
                && ep.node_name.as_deref() == Some(node.node_name.as_str()))
                || node.node_ips.contains(&addr);
            endpoints.push(ParsedEndpoint {
                addr,
                ready,
                serving_terminating: serving && terminating,
                local,
                hints: HintsHere::of(ep.hints.as_ref(), node),
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

/// Why an endpoint address must never be a backend, if it must not: exactly the addresses the
/// API server refuses in Endpoints and EndpointSlices. Kubernetes `pkg/apis/core/validation`
/// `ValidateEndpointIP` (formerly `ValidateNonSpecialIP`), called for every IPv4/IPv6 address
/// by `pkg/apis/discovery/validation` (EndpointSlices, since the CVE-2021-25737 fix,
/// kubernetes#101084) and by `validateEndpointAddress` (v1 Endpoints), refuses the unspecified
/// address, loopback (127.0.0.0/8), link-local unicast (169.254.0.0/16) and link-local
/// multicast (224.0.0.0/24). kube-proxy applies no filter of its own on top: it programs what
/// validation admitted. We repeat the check because `--manifests` objects never went through
/// an API server.
///
/// A node's own address is *not* special: it is what every hostNetwork pod's endpoint is, and
/// what the `kubernetes` Service (10.96.0.1:443 → the API server's node:6443) points to.
fn refused_endpoint(addr: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = addr.octets();
    if addr.is_unspecified() {
        Some("is unspecified")
    } else if addr.is_loopback() {
        Some("is in the loopback range (127.0.0.0/8)")
    } else if addr.is_link_local() {
        Some("is in the link-local range (169.254.0.0/16)")
    } else if (a, b, c) == (224, 0, 0) {
        Some("is in the link-local multicast range (224.0.0.0/24)")
    } else {
        None
    }
}

/// The endpoint sets of one Service port, as kube-proxy's `CategorizeEndpoints`
/// (pkg/proxy/topology.go) computes them; each sorted by [`Backend`]'s `Ord`, no duplicates.
struct BackendSets {
    /// Traffic policy `Cluster`: ready endpoints anywhere that the [`Topology`] admits, else
    /// (no ready endpoint at all) serving+terminating ones, hints ignored.
    cluster: Vec<Backend>,
    /// Traffic policy `Local`: this node's ready endpoints, else this node's serving+terminating
    /// ones. The fallback is decided on the local endpoints alone: a remote ready endpoint does
    /// not stop a local terminating one from being used. Hints play no part.
    local: Vec<Backend>,
}

impl BackendSets {
    /// Flags for an entry holding [`BackendSets::local`]: [`FRONTEND_F_DROP_NO_BACKEND`] when it
    /// is empty while the Service has usable endpoints elsewhere. kube-proxy drops then (an
    /// external load balancer retries another node; the health check already says "0 local"),
    /// but rejects, like any Service, when there is no usable endpoint at all (its
    /// `hasEndpoints` check comes before the policy ones).
    fn drop_if_no_local(&self) -> u32 {
        if self.local.is_empty() && !self.cluster.is_empty() {
            FRONTEND_F_DROP_NO_BACKEND
        } else {
            0
        }
    }
}

/// Backends of one Service port: see [`BackendSets`]. The port is matched by name and protocol
/// in each slice separately, so a named `targetPort` resolves to whatever number each slice
/// (each pod template) gives it. Local endpoints carry [`BACKEND_F_LOCAL`] in both sets, so a
/// backend is one tuple whichever frontend names it; fallback ones [`BACKEND_F_TERMINATING`].
fn choose_backends(slices: &[ParsedSlice], port_name: &str, proto: u8) -> BackendSets {
    // The endpoints of this port, each with the number its slice gives the port.
    let endpoints = || {
        slices
            .iter()
            .filter_map(|s| Some((s, s.port(port_name, proto)?)))
            .flat_map(|(s, port)| s.endpoints.iter().map(move |ep| (ep, port)))
    };
    let topology = Topology::of(
        endpoints()
            .filter(|(ep, _)| ep.ready)
            .map(|(ep, _)| &ep.hints),
    );
    let mut ready = BTreeSet::new();
    let mut near = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for (ep, port) in endpoints() {
        let backend = Backend {
            addr: ep.addr.octets(),
            port,
            proto,
            flags: if ep.local { BACKEND_F_LOCAL } else { 0 },
        };
        if ep.ready {
            ready.insert(backend);
            if topology.admits(&ep.hints) {
                near.insert(backend);
            }
        } else if ep.serving_terminating {
            terminating.insert(Backend {
                flags: backend.flags | BACKEND_F_TERMINATING,
                ..backend
            });
        }
    }
    // One backend per address and port, as kube-proxy keeps one endpoint per address:port
    // (pkg/proxy/endpointslicecache.go, addEndpoints): an address listed twice (two slices,
    // two nodes) is local if either listing says so, and ready if either is.
    let ready_at: BTreeSet<([u8; 4], u16)> = ready.iter().map(|b| (b.addr, b.port)).collect();
    terminating.retain(|b| !ready_at.contains(&(b.addr, b.port)));
    for set in [&mut ready, &mut near, &mut terminating] {
        let local_at: BTreeSet<([u8; 4], u16)> = set
            .iter()
            .filter(|b| b.flags & BACKEND_F_LOCAL != 0)
            .map(|b| (b.addr, b.port))
            .collect();
        set.retain(|b| b.flags & BACKEND_F_LOCAL != 0 || !local_at.contains(&(b.addr, b.port)));
    }
    let is_local = |b: &&Backend| b.flags & BACKEND_F_LOCAL != 0;
    let local: Vec<Backend> = if ready.iter().any(|b| is_local(&b)) {
        ready.iter().filter(is_local).copied().collect()
    } else {
        terminating.iter().filter(is_local).copied().collect()
    };
    // A chosen topology keeps at least one ready endpoint, so `near` is empty only when
    // `ready` is; the terminating fallback then ignores hints, as kube-proxy's does.
    let cluster = if ready.is_empty() {
        terminating.into_iter().collect()
    } else {
        near.into_iter().collect()
    };
    BackendSets { cluster, local }
}

/// One health-check responder kube-proxy would run for a Service: `GET /` on
/// `healthCheckNodePort` answers 200 when the node has local endpoints, 503 when not, so an
/// external load balancer sends `externalTrafficPolicy: Local` traffic only to nodes that can
/// serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// The Service.
    pub service: ObjectRef,
    /// `spec.healthCheckNodePort`.
    pub port: u16,
    /// What the responder reports as `localEndpoints`: the number of distinct `address:port`
    /// pairs of ready endpoints on this node over all the Service's slice ports, as
    /// kube-proxy's `EndpointsMap::LocalReadyEndpoints` counts (so a pod serving two ports
    /// counts twice). Terminating endpoints do not count, even when traffic falls back to
    /// them: the load balancer should move new connections away from a draining node.
    pub local_endpoints: usize,
}

/// The health checks this node should answer: every Service with `externalTrafficPolicy:
/// Local` and a `healthCheckNodePort` (the API server allocates one for such LoadBalancer
/// Services), in [`ObjectRef`] order. Services [`desired`] never programs (another proxy's,
/// ExternalName, headless) get none, nor does a port outside 1-65535 (which the API server
/// never accepts).
pub fn health_checks(objects: &Objects, node: &NodeContext) -> Vec<HealthCheck> {
    let slices = SliceIndex::build(&objects.slices, None);
    // Problems found here are reported by `desired`; this pass only counts.
    let mut scratch = Desired::default();
    let mut out = Vec::new();
    for (svc_ref, svc) in &objects.services {
        if !node.claims(&svc.metadata) {
            continue;
        }
        let Some(spec) = &svc.spec else { continue };
        if spec.external_traffic_policy.as_deref() != Some("Local")
            || spec.type_.as_deref() == Some("ExternalName")
            || spec.cluster_ip.as_deref() == Some("None")
        {
            continue;
        }
        let Some(port) = spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        let mut local = BTreeSet::new();
        for (slice_ref, slice) in slices.of(svc_ref) {
            let Some(parsed) = ParsedSlice::parse(slice_ref, slice, node, &mut scratch) else {
                continue;
            };
            for ep in parsed.endpoints.iter().filter(|e| e.ready && e.local) {
                for (_, _, number) in &parsed.ports {
                    local.insert((ep.addr, *number));
                }
            }
        }
        out.push(HealthCheck {
            service: svc_ref.clone(),
            port,
            local_endpoints: local.len(),
        });
    }
    out
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
            ..Default::default()
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
    fn service_proxy_name_claims_exactly_the_services_labelled_with_it() {
        // (--service-proxy-name, the Service's label, served?)
        let table: [(Option<&str>, Option<&str>, bool); 8] = [
            (None, None, true),
            (None, Some("other-proxy"), false),
            (None, Some(""), false),
            (Some("svc-lb"), None, false),
            (Some("svc-lb"), Some("svc-lb"), true),
            (Some("svc-lb"), Some("other-proxy"), false),
            (Some("svc-lb"), Some(""), false),
            // An empty name is no name: kube-proxy's choice.
            (Some(""), None, true),
        ];
        for (name, value, served) in table {
            let labels = match value {
                Some(v) => json!({LABEL_SERVICE_PROXY_NAME: v}),
                None => json!({}),
            };
            let np = json!({"clusterIP": "10.96.0.10", "type": "LoadBalancer",
                            "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                            "ports": [{"port": 80}]});
            let objs = objects(vec![svc_labelled("default", "web", labels, np)], vec![]);
            let node = NodeContext {
                service_proxy_name: name.map(str::to_owned),
                ..node()
            };
            let d = desired(&objs, &node);
            assert_eq!(!d.frontends.is_empty(), served, "{name:?} {value:?}: {d:?}");
            // The health check follows the same claim.
            assert_eq!(
                health_checks(&objs, &node).len(),
                usize::from(served),
                "{name:?} {value:?}"
            );
        }
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
    fn only_addresses_the_api_server_refuses_are_refused_endpoints() {
        // (address, refused?) across both sides of each range `ValidateEndpointIP` refuses.
        let table = [
            ("0.0.0.0", true),
            ("127.0.0.1", true),
            ("127.255.255.254", true),
            ("169.254.169.254", true),
            ("224.0.0.251", true),
            ("126.255.255.255", false),
            ("128.0.0.1", false),
            ("169.253.255.255", false),
            ("169.255.0.1", false),
            // Multicast outside 224.0.0.0/24 passes validation (and so reaches kube-proxy).
            ("224.0.1.1", false),
            // This node's own address: a hostNetwork endpoint, not special.
            ("172.18.0.2", false),
            ("10.244.1.5", false),
        ];
        let eps: Vec<_> = table
            .iter()
            .map(|(ip, _)| ep(ip))
            .chain([ep("bogus")])
            .collect();
        let d = desired(
            &objects(vec![web(json!({}))], vec![web_slice("web-1", 80, eps)]),
            &node(),
        );
        let mut expected: Vec<Backend> = table
            .iter()
            .filter(|(_, refused)| !refused)
            .map(|(ip, _)| {
                let b = be(ip.parse::<Ipv4Addr>().expect("ip").octets(), 80);
                if *ip == "172.18.0.2" {
                    Backend {
                        flags: BACKEND_F_LOCAL,
                        ..b
                    }
                } else {
                    b
                }
            })
            .collect();
        expected.sort();
        assert_eq!(only(&d).backends, expected);
        for (i, (ip, refused)) in table.iter().enumerate() {
            assert_eq!(
                has_problem(
                    &d,
                    &format!("endpoints[{i}].addresses[0]"),
                    "ValidateEndpointIP"
                ),
                *refused,
                "{ip}: {:#?}",
                d.problems
            );
        }
        assert!(has_problem(
            &d,
            "endpoints[1].addresses[0]",
            "loopback range (127.0.0.0/8)"
        ));
        assert!(has_problem(
            &d,
            &format!("endpoints[{}].addresses[0]", table.len()),
            "not an IPv4 address"
        ));
        assert_eq!(d.problems.len(), 6, "{:#?}", d.problems);
        assert_eq!(d.problems[0].object, "EndpointSlice default/web-1");
    }

    #[test]
    fn node_address_endpoints_are_programmed_and_local_on_their_own_node() {
        // The `kubernetes` Service as kube-apiserver writes it: no selector, and a slice whose
        // endpoint is the API server's node address with no nodeName.
        let objs = objects(
            vec![svc(
                "default",
                "kubernetes",
                json!({"clusterIP": "10.96.0.1",
                       "ports": [{"name": "https", "port": 443, "targetPort": 6443}]}),
            )],
            vec![slice(
                "default",
                "kubernetes",
                "kubernetes",
                json!({"ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
                       "endpoints": [ep("172.18.0.2")]}),
            )],
        );
        let api = be([172, 18, 0, 2], 6443);
        // On the API server's node (172.18.0.2) the endpoint is local; elsewhere it is not.
        let d = desired(&objs, &node());
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(
            *d.frontends.keys().next().expect("frontend"),
            key([10, 96, 0, 1], 443, PROTO_TCP)
        );
        assert_eq!(only(&d).backends, vec![local(api)]);
        let other = NodeContext {
            node_name: "node-b".into(),
            node_ips: vec![Ipv4Addr::new(172, 18, 0, 3)],
            ..Default::default()
        };
        let d = desired(&objs, &other);
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(only(&d).backends, vec![api]);

        // hostNetwork pods on both nodes, with nodeName, behind a NodePort with
        // externalTrafficPolicy: Local: each node's external entry holds its own address.
        let objs = objects(
            vec![web_np(json!({"externalTrafficPolicy": "Local"}))],
            vec![web_slice(
                "web-1",
                8080,
                vec![ep_on("172.18.0.2", "node-a"), ep_on("172.18.0.3", "node-b")],
            )],
        );
        let here = local(be(NODE_IP, 8080));
        let there = be([172, 18, 0, 3], 8080);
        let d = desired(&objs, &node());
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        let nodeport = key(NODE_IP, 30080, PROTO_TCP);
        assert_eq!(d.frontends[&nodeport].backends, vec![here, there]);
        assert_eq!(d.frontends[&external(nodeport)].backends, vec![here]);
        assert_eq!(
            d.frontends[&key([10, 96, 0, 10], 80, PROTO_TCP)].backends,
            vec![here, there]
        );
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

    // ---- North-south frontends and traffic policies ----

    const NODE_IP: [u8; 4] = [172, 18, 0, 2];
    /// A second node address, outside the kind network (an "ExternalIP" of the Node).
    const NODE_IP_PUBLIC: [u8; 4] = [203, 0, 113, 2];

    fn cidrs(list: &[&str]) -> Vec<Ipv4Cidr> {
        list.iter().map(|c| c.parse().expect("cidr")).collect()
    }

    fn node_with(nodeport_addresses: &[&str]) -> NodeContext {
        NodeContext {
            node_ips: vec![Ipv4Addr::from(NODE_IP), Ipv4Addr::from(NODE_IP_PUBLIC)],
            nodeport_addresses: cidrs(nodeport_addresses),
            ..node()
        }
    }

    /// An endpoint on node `node`.
    fn ep_on(ip: &str, node: &str) -> serde_json::Value {
        json!({"addresses": [ip], "nodeName": node})
    }

    fn local(b: Backend) -> Backend {
        Backend {
            flags: b.flags | BACKEND_F_LOCAL,
            ..b
        }
    }

    fn external(k: FrontendKey) -> FrontendKey {
        FrontendKey {
            scope: SCOPE_EXTERNAL,
            ..k
        }
    }

    /// `web` as a NodePort Service on nodePort 30080, with `extra` merged into its spec.
    fn web_np(extra: serde_json::Value) -> (ObjectRef, Service) {
        let mut spec = json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]});
        merge(&mut spec, extra);
        web(spec)
    }

    /// One endpoint on this node (node-a) and one on node-b.
    fn local_and_remote() -> Vec<(ObjectRef, EndpointSlice)> {
        vec![web_slice(
            "web-1",
            8080,
            vec![ep_on("10.244.1.5", "node-a"), ep_on("10.244.2.7", "node-b")],
        )]
    }

    /// Frontend key → (flags, backends), the part of a [`Desired`] these tests compare.
    fn summary(d: &Desired) -> BTreeMap<FrontendKey, (u32, Vec<Backend>)> {
        d.frontends
            .iter()
            .map(|(k, f)| (*k, (f.flags, f.backends.clone())))
            .collect()
    }

    #[test]
    fn nodeport_is_served_on_every_allowed_node_address() {
        let objs = objects(
            vec![web_np(json!({}))],
            vec![web_slice("web-1", 8080, vec![ep("10.244.1.5")])],
        );
        let backends = vec![be([10, 244, 1, 5], 8080)];
        // Default: every node address.
        let d = desired(&objs, &node_with(&[]));
        assert_eq!(
            summary(&d),
            BTreeMap::from([
                (key([10, 96, 0, 10], 80, PROTO_TCP), (0, backends.clone())),
                (
                    key(NODE_IP, 30080, PROTO_TCP),
                    (FRONTEND_F_NODEPORT, backends.clone())
                ),
                (
                    key(NODE_IP_PUBLIC, 30080, PROTO_TCP),
                    (FRONTEND_F_NODEPORT, backends.clone())
                ),
            ])
        );
        // --nodeport-addresses: only the node addresses inside a prefix.
        let d = desired(&objs, &node_with(&["172.18.0.0/16"]));
        let keys: Vec<_> = d.frontends.keys().copied().collect();
        assert_eq!(
            keys,
            [
                key([10, 96, 0, 10], 80, PROTO_TCP),
                key(NODE_IP, 30080, PROTO_TCP)
            ]
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
    }

    #[test]
    fn nodeport_is_served_only_for_type_node_port_or_load_balancer() {
        // A leftover nodePort on a ClusterIP Service (the API server clears it) serves nothing.
        let d = desired(
            &objects(
                vec![web(json!({"ports": [{"port": 80, "nodePort": 30080}]}))],
                vec![],
            ),
            &node_with(&[]),
        );
        assert_eq!(only(&d).flags, 0);
        // LoadBalancer with a nodePort serves it like a NodePort Service.
        let d = desired(
            &objects(vec![web_np(json!({"type": "LoadBalancer"}))], vec![]),
            &node_with(&["172.18.0.0/16"]),
        );
        assert_eq!(
            d.frontends[&key(NODE_IP, 30080, PROTO_TCP)].flags,
            FRONTEND_F_NODEPORT
        );
    }

    #[test]
    fn load_balancer_without_node_port_serves_no_node_port() {
        // allocateLoadBalancerNodePorts: false → no nodePort in the object → no NodePort.
        let d = desired(
            &objects(
                vec![web(json!({"type": "LoadBalancer",
                               "allocateLoadBalancerNodePorts": false}))],
                vec![],
            ),
            &node_with(&[]),
        );
        assert_eq!(only(&d).flags, 0);
    }

    #[test]
    fn invalid_node_port_is_refused_with_its_field_path() {
        let d = desired(
            &objects(
                vec![web_np(json!({"ports": [{"port": 80, "nodePort": 70000}]}))],
                vec![],
            ),
            &node_with(&[]),
        );
        assert_eq!(only(&d).flags, 0, "the ClusterIP frontend stays");
        assert!(has_problem(&d, "spec.ports[0].nodePort", "must be 1-65535"));
    }

    #[test]
    fn nodeport_addresses_127_serves_localhost_only() {
        let objs = objects(vec![web_np(json!({}))], vec![]);
        let d = desired(&objs, &node_with(&["127.0.0.0/8"]));
        let keys: Vec<_> = d.frontends.keys().copied().collect();
        assert_eq!(
            keys,
            [
                key([10, 96, 0, 10], 80, PROTO_TCP),
                key([127, 0, 0, 1], 30080, PROTO_TCP)
            ]
        );
        assert_eq!(
            d.frontends[&keys[1]].flags, FRONTEND_F_NODEPORT,
            "a localhost NodePort is a NodePort"
        );
        // 0.0.0.0/0 contains 127.0.0.1 too: every node address and localhost.
        let d = desired(&objs, &node_with(&["0.0.0.0/0"]));
        let addrs: Vec<_> = d
            .frontends
            .keys()
            .filter(|k| k.port == 30080)
            .map(|k| k.addr)
            .collect();
        assert_eq!(addrs, [[127, 0, 0, 1], NODE_IP, NODE_IP_PUBLIC]);
    }

    #[test]
    fn load_balancer_ingress_ips_are_frontends() {
        let (r, mut s) = web(json!({"type": "LoadBalancer"}));
        s.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
            {"ip": "192.0.2.127"},
            {"hostname": "lb.example.com"},
            {"ip": "2001:db8::1"},
            {"ip": "198.51.100.7", "ipMode": "VIP"},
            {"ip": "not-an-ip"},
        ]}}))
        .expect("status");
        let d = desired(
            &objects(
                vec![(r, s)],
                vec![web_slice("web-1", 8080, vec![ep("10.244.1.5")])],
            ),
            &node_with(&[]),
        );
        let backends = vec![be([10, 244, 1, 5], 8080)];
        assert_eq!(
            summary(&d),
            BTreeMap::from([
                (key([10, 96, 0, 10], 80, PROTO_TCP), (0, backends.clone())),
                (
                    key([192, 0, 2, 127], 80, PROTO_TCP),
                    (FRONTEND_F_EXTERNAL_IP, backends.clone())
                ),
                (
                    key([198, 51, 100, 7], 80, PROTO_TCP),
                    (FRONTEND_F_EXTERNAL_IP, backends.clone())
                ),
            ])
        );
        assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
        assert!(has_problem(
            &d,
            "status.loadBalancer.ingress[4].ip",
            "not an IP address"
        ));
    }

    /// A LoadBalancer Service `web` (ClusterIP 10.96.0.10, LB IP 203.0.113.10, NodePort 30080,
    /// externalIP 198.51.100.10) with `loadBalancerSourceRanges: ranges` and `extra` merged
    /// into its spec.
    fn lb_with_ranges(ranges: serde_json::Value, extra: serde_json::Value) -> Desired {
        let mut spec = json!({"type": "LoadBalancer", "externalIPs": ["198.51.100.10"],
                              "ports": [{"port": 80, "nodePort": 30080}],
                              "loadBalancerSourceRanges": ranges});
        merge(&mut spec, extra);
        let (r, mut s) = web(spec);
        s.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
            {"ip": "203.0.113.10"},
        ]}}))
        .expect("status");
        desired(
            &objects(
                vec![(r, s)],
                vec![web_slice("web-1", 8080, vec![ep("10.244.1.5")])],
            ),
            &node(),
        )
    }

    const LB_IP: [u8; 4] = [203, 0, 113, 10];

    type RangeCase = (
        &'static str,
        serde_json::Value,
        u32,
        Vec<Ipv4Cidr>,
        Vec<&'static str>,
    );

    /// Each rule of "Source ranges" (module docs): what the LB IP frontend gets.
    #[test]
    fn load_balancer_source_ranges_rules() {
        let sr = FRONTEND_F_SOURCE_RANGES;
        let deny = FRONTEND_F_DENY_NODE;
        // (rule, loadBalancerSourceRanges, flags beyond external-ip, ranges, problem fields)
        let cases: Vec<RangeCase> =
            vec![
            ("absent: no filtering", json!(null), 0, vec![], vec![]),
            ("empty list: no filtering", json!([]), 0, vec![], vec![]),
            (
                "ranges without the node: filtered, node processes refused",
                json!(["192.0.2.0/24", "198.51.100.7/32"]),
                sr | deny,
                cidrs(&["192.0.2.0/24", "198.51.100.7/32"]),
                vec![],
            ),
            (
                "a range contains the node IP: node processes allowed (allowFromNode)",
                json!(["192.0.2.0/24", "172.18.0.0/16"]),
                sr,
                cidrs(&["172.18.0.0/16", "192.0.2.0/24"]),
                vec![],
            ),
            (
                "whitespace trimmed, host bits cleared, leading zeros decimal, duplicates merged",
                json!([" 192.0.2.77/24 ", "192.000.002.000/24", "010.0.0.0/8"]),
                sr | deny,
                cidrs(&["10.0.0.0/8", "192.0.2.0/24"]),
                vec![],
            ),
            (
                "IPv6 prefixes: skipped silently (the other family's proxy)",
                json!(["2001:db8::/32", "192.0.2.0/24"]),
                sr | deny,
                cidrs(&["192.0.2.0/24"]),
                vec![],
            ),
            (
                "only IPv6 prefixes: no IPv4 ranges, so no filtering (as kube-proxy per family)",
                json!(["2001:db8::/32"]),
                0,
                vec![],
                vec![],
            ),
            (
                "malformed entries reported and skipped, the rest applied",
                json!(["192.0.2.0/24", "192.0.2.0", "300.0.0.0/8", "10.0.0.0/33", "+1.2.3.4/8",
                       "10.0.0.0/+8", "fe80::/200", ""]),
                sr | deny,
                cidrs(&["192.0.2.0/24"]),
                vec![
                    "spec.loadBalancerSourceRanges[1]",
                    "spec.loadBalancerSourceRanges[2]",
                    "spec.loadBalancerSourceRanges[3]",
                    "spec.loadBalancerSourceRanges[4]",
                    "spec.loadBalancerSourceRanges[5]",
                    "spec.loadBalancerSourceRanges[6]",
                    "spec.loadBalancerSourceRanges[7]",
                ],
            ),
            (
                "only malformed entries: nothing parsed, no filtering (kube-proxy ignores them)",
                json!(["nonsense"]),
                0,
                vec![],
                vec!["spec.loadBalancerSourceRanges[0]"],
            ),
            (
                "0.0.0.0/0 allows everyone, the node included",
                json!(["0.0.0.0/0"]),
                sr,
                cidrs(&["0.0.0.0/0"]),
                vec![],
            ),
        ];
        for (rule, ranges, flags, want, problems) in cases {
            let d = lb_with_ranges(ranges, json!({}));
            let lb = &d.frontends[&key(LB_IP, 80, PROTO_TCP)];
            assert_eq!(lb.flags, FRONTEND_F_EXTERNAL_IP | flags, "{rule}");
            assert_eq!(lb.source_ranges, want, "{rule}");
            let fields: Vec<&str> = d.problems.iter().map(|p| p.field.as_str()).collect();
            assert_eq!(fields, problems, "{rule}: {:?}", d.problems);
        }
    }

    #[test]
    fn load_balancer_source_ranges_apply_to_lb_ips_only() {
        let d = lb_with_ranges(json!(["192.0.2.0/24"]), json!({}));
        for (k, f) in &d.frontends {
            let is_lb = k.addr == LB_IP;
            assert_eq!(
                f.flags & FRONTEND_F_SOURCE_RANGES != 0,
                is_lb,
                "{k:?}: ClusterIP, NodePort and externalIP frontends are not filtered"
            );
            assert_eq!(f.source_ranges.is_empty(), !is_lb, "{k:?}");
        }
        // ClusterIP, two NodePorts (node IP, none else), the externalIP and the LB IP.
        assert_eq!(d.frontends.len(), 4, "{:#?}", d.frontends.keys());
    }

    #[test]
    fn load_balancer_source_ranges_apply_to_both_entries_under_external_policy_local() {
        let d = lb_with_ranges(
            json!(["192.0.2.0/24"]),
            json!({"externalTrafficPolicy": "Local"}),
        );
        let any = &d.frontends[&key(LB_IP, 80, PROTO_TCP)];
        let external = &d.frontends[&FrontendKey {
            scope: SCOPE_EXTERNAL,
            ..key(LB_IP, 80, PROTO_TCP)
        }];
        for f in [any, external] {
            assert_ne!(f.flags & FRONTEND_F_SOURCE_RANGES, 0);
            assert_eq!(f.source_ranges, cidrs(&["192.0.2.0/24"]));
        }
    }

    #[test]
    fn load_balancer_ingress_ip_mode_proxy_is_skipped() {
        let (r, mut s) = web(json!({"type": "LoadBalancer"}));
        s.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
            {"ip": "192.0.2.127", "ipMode": "Proxy"},
        ]}}))
        .expect("status");
        let d = desired(&objects(vec![(r, s)], vec![]), &node());
        assert_eq!(
            d.frontends.keys().copied().collect::<Vec<_>>(),
            [key([10, 96, 0, 10], 80, PROTO_TCP)]
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
    }

    #[test]
    fn load_balancer_ingress_is_ignored_unless_type_load_balancer() {
        let (r, mut s) = web(json!({}));
        s.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
            {"ip": "192.0.2.127"},
        ]}}))
        .expect("status");
        let d = desired(&objects(vec![(r, s)], vec![]), &node());
        assert_eq!(only(&d).flags, 0);
    }

    #[test]
    fn external_ips_are_frontends_for_any_type() {
        let d = desired(
            &objects(
                vec![web(
                    json!({"externalIPs": ["198.51.100.10", "2001:db8::10"],
                               "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}),
                )],
                vec![],
            ),
            &node(),
        );
        let ext: Vec<_> = d
            .frontends
            .iter()
            .filter(|(_, f)| f.flags == FRONTEND_F_EXTERNAL_IP)
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(
            ext,
            [
                key([198, 51, 100, 10], 53, PROTO_UDP),
                key([198, 51, 100, 10], 80, PROTO_TCP)
            ]
        );
        assert_eq!(d.frontends.len(), 4);
    }

    #[test]
    fn headless_and_external_name_services_serve_no_external_ip() {
        for extra in [
            json!({"clusterIP": "None", "externalIPs": ["198.51.100.10"]}),
            json!({"type": "ExternalName", "externalName": "db.example.com",
                   "externalIPs": ["198.51.100.10"]}),
        ] {
            let d = desired(&objects(vec![web(extra.clone())], vec![]), &node());
            assert!(d.frontends.is_empty(), "{extra}: {d:#?}");
        }
    }

    #[test]
    fn external_ips_outside_the_allow_list_are_refused() {
        let objs = objects(
            vec![web(
                json!({"externalIPs": ["198.51.100.10", "203.0.113.9", "bogus"]}),
            )],
            vec![],
        );
        let node = NodeContext {
            external_ip_cidrs: Some(cidrs(&["198.51.100.0/24"])),
            ..node()
        };
        let d = desired(&objs, &node);
        let ext: Vec<_> = d.frontends.keys().map(|k| k.addr).collect();
        assert_eq!(ext, [[10, 96, 0, 10], [198, 51, 100, 10]]);
        assert!(has_problem(&d, "spec.externalIPs[1]", "CVE-2020-8554"));
        assert!(has_problem(&d, "spec.externalIPs[2]", "not an IP address"));
        assert_eq!(
            d.problems[0].to_string(),
            "Service default/web: spec.externalIPs[1]: 203.0.113.9 is outside every \
             --external-ip-cidrs prefix; refused (CVE-2020-8554)"
        );
        // Without an allow-list (the default), every external IP is served.
        let d = desired(&objs, &self::node());
        assert_eq!(d.frontends.len(), 3);
    }

    #[test]
    fn frontend_claimed_twice_across_kinds_goes_to_the_first_service() {
        // a's external IP is b's LoadBalancer IP; b also wants eTP Local, whose scoped entry
        // must not appear for a frontend b does not own.
        let (b_ref, mut b) = svc(
            "default",
            "b",
            json!({"type": "LoadBalancer", "clusterIP": "10.96.0.12",
                   "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
        );
        b.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
            {"ip": "198.51.100.10"},
        ]}}))
        .expect("status");
        let a = svc(
            "default",
            "a",
            json!({"clusterIP": "10.96.0.11", "externalIPs": ["198.51.100.10"],
                   "ports": [{"port": 80}]}),
        );
        let d = desired(&objects(vec![(b_ref, b), a], vec![]), &node());
        let fe = &d.frontends[&key([198, 51, 100, 10], 80, PROTO_TCP)];
        assert_eq!(fe.service, ObjectRef::new("default", "a"));
        assert_eq!(fe.flags, FRONTEND_F_EXTERNAL_IP);
        assert!(!d
            .frontends
            .contains_key(&external(key([198, 51, 100, 10], 80, PROTO_TCP))));
        assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
        assert_eq!(d.problems[0].object, "Service default/b");
        assert_eq!(d.problems[0].field, "status.loadBalancer.ingress[0].ip");
    }

    #[test]
    fn local_backends_are_flagged() {
        let d = desired(
            &objects(
                vec![web(json!({}))],
                vec![web_slice(
                    "web-1",
                    8080,
                    vec![
                        ep_on("10.244.1.5", "node-a"),
                        ep_on("10.244.2.7", "node-b"),
                        ep("10.244.3.9"),
                    ],
                )],
            ),
            &node(),
        );
        assert_eq!(
            only(&d).backends,
            vec![
                local(be([10, 244, 1, 5], 8080)),
                be([10, 244, 2, 7], 8080),
                be([10, 244, 3, 9], 8080)
            ]
        );
    }

    #[test]
    fn external_traffic_policy_local_adds_an_external_scope_with_local_endpoints() {
        let d = desired(
            &objects(
                vec![web_np(json!({"externalTrafficPolicy": "Local",
                                  "externalIPs": ["198.51.100.10"]}))],
                local_and_remote(),
            ),
            &node_with(&["172.18.0.0/16"]),
        );
        let all = vec![local(be([10, 244, 1, 5], 8080)), be([10, 244, 2, 7], 8080)];
        let mine = vec![local(be([10, 244, 1, 5], 8080))];
        let np = key(NODE_IP, 30080, PROTO_TCP);
        let xip = key([198, 51, 100, 10], 80, PROTO_TCP);
        assert_eq!(
            summary(&d),
            BTreeMap::from([
                (key([10, 96, 0, 10], 80, PROTO_TCP), (0, all.clone())),
                (
                    np,
                    (FRONTEND_F_NODEPORT | FRONTEND_F_EXTERNAL_SCOPE, all.clone())
                ),
                (external(np), (FRONTEND_F_NODEPORT, mine.clone())),
                (
                    xip,
                    (
                        FRONTEND_F_EXTERNAL_IP | FRONTEND_F_EXTERNAL_SCOPE,
                        all.clone()
                    )
                ),
                (external(xip), (FRONTEND_F_EXTERNAL_IP, mine.clone())),
            ])
        );
        assert_eq!(
            d.frontends[&external(np)].service,
            ObjectRef::new("default", "web")
        );
    }

    #[test]
    fn external_traffic_policy_local_without_local_endpoints_drops() {
        let d = desired(
            &objects(
                vec![web_np(json!({"externalTrafficPolicy": "Local"}))],
                vec![web_slice(
                    "web-1",
                    8080,
                    vec![ep_on("10.244.2.7", "node-b")],
                )],
            ),
            &node_with(&["172.18.0.0/16"]),
        );
        let np = key(NODE_IP, 30080, PROTO_TCP);
        let scoped = &d.frontends[&external(np)];
        assert!(scoped.backends.is_empty());
        assert_eq!(
            scoped.flags,
            FRONTEND_F_NODEPORT | FRONTEND_F_DROP_NO_BACKEND
        );
        // In-cluster clients of the NodePort still reach the remote endpoint.
        assert_eq!(d.frontends[&np].backends, vec![be([10, 244, 2, 7], 8080)]);
    }

    #[test]
    fn traffic_policy_local_without_any_endpoint_rejects() {
        // kube-proxy checks "no endpoint at all" (REJECT) before the policies (DROP).
        let d = desired(
            &objects(
                vec![web_np(json!({"externalTrafficPolicy": "Local",
                                  "internalTrafficPolicy": "Local"}))],
                vec![],
            ),
            &node_with(&["172.18.0.0/16"]),
        );
        for (k, f) in &d.frontends {
            assert!(f.backends.is_empty());
            assert_eq!(f.flags & FRONTEND_F_DROP_NO_BACKEND, 0, "{k:?}");
        }
        assert_eq!(d.frontends.len(), 3);
    }

    #[test]
    fn external_traffic_policy_does_not_touch_cluster_ip() {
        let d = desired(
            &objects(
                vec![web_np(json!({"externalTrafficPolicy": "Local"}))],
                vec![web_slice(
                    "web-1",
                    8080,
                    vec![ep_on("10.244.2.7", "node-b")],
                )],
            ),
            &node_with(&["172.18.0.0/16"]),
        );
        let cip = key([10, 96, 0, 10], 80, PROTO_TCP);
        assert_eq!(d.frontends[&cip].backends, vec![be([10, 244, 2, 7], 8080)]);
        assert_eq!(d.frontends[&cip].flags, 0);
        assert!(!d.frontends.contains_key(&external(cip)));
    }

    #[test]
    fn external_traffic_policy_local_spares_the_localhost_node_port() {
        // 127.0.0.1 is reached only by the node's own processes, which kube-proxy sends to
        // every endpoint: no external scope there, while the node address gets one.
        let d = desired(
            &objects(
                vec![web_np(json!({"externalTrafficPolicy": "Local"}))],
                local_and_remote(),
            ),
            &node_with(&["127.0.0.0/8", "172.18.0.0/16"]),
        );
        let lo = key([127, 0, 0, 1], 30080, PROTO_TCP);
        assert_eq!(d.frontends[&lo].flags, FRONTEND_F_NODEPORT);
        assert_eq!(d.frontends[&lo].backends.len(), 2);
        assert!(!d.frontends.contains_key(&external(lo)));
        assert!(d
            .frontends
            .contains_key(&external(key(NODE_IP, 30080, PROTO_TCP))));
    }

    #[test]
    fn internal_traffic_policy_local_uses_local_endpoints_only() {
        let objs = objects(
            vec![web_np(json!({"internalTrafficPolicy": "Local"}))],
            local_and_remote(),
        );
        let d = desired(&objs, &node_with(&["172.18.0.0/16"]));
        let cip = key([10, 96, 0, 10], 80, PROTO_TCP);
        assert_eq!(
            summary(&d),
            BTreeMap::from([
                (cip, (0, vec![local(be([10, 244, 1, 5], 8080))])),
                // The NodePort is external: iTP does not apply, even to in-cluster clients.
                (
                    key(NODE_IP, 30080, PROTO_TCP),
                    (
                        FRONTEND_F_NODEPORT,
                        vec![local(be([10, 244, 1, 5], 8080)), be([10, 244, 2, 7], 8080)]
                    )
                ),
            ])
        );
        // On node-b's neighbour node-c there is no local endpoint: drop, not reject.
        let node_c = NodeContext {
            node_name: "node-c".into(),
            ..node()
        };
        let d = desired(&objs, &node_c);
        assert!(d.frontends[&cip].backends.is_empty());
        assert_eq!(d.frontends[&cip].flags, FRONTEND_F_DROP_NO_BACKEND);
    }

    #[test]
    fn local_policy_falls_back_to_local_terminating_endpoints() {
        // As CategorizeEndpoints: the local fallback is decided among local endpoints alone.
        let d = desired(
            &objects(
                vec![web(json!({"internalTrafficPolicy": "Local"}))],
                vec![web_slice(
                    "web-1",
                    8080,
                    vec![
                        json!({"addresses": ["10.244.1.5"], "nodeName": "node-a",
                               "conditions": {"ready": false, "serving": true, "terminating": true}}),
                        ep_on("10.244.2.7", "node-b"),
                    ],
                )],
            ),
            &node(),
        );
        assert_eq!(
            only(&d).backends,
            vec![Backend {
                flags: BACKEND_F_LOCAL | BACKEND_F_TERMINATING,
                ..be([10, 244, 1, 5], 8080)
            }]
        );
    }

    #[test]
    fn health_check_reports_local_endpoints() {
        let (lb_ref, lb) = svc(
            "default",
            "web",
            json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10",
                   "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                   "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}),
        );
        let cluster = svc(
            "default",
            "other",
            json!({"type": "LoadBalancer", "clusterIP": "10.96.0.11",
                   "healthCheckNodePort": 32001, "ports": [{"port": 80}]}),
        );
        let eps = slice(
            "default",
            "web-1",
            "web",
            json!({"ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 53, "protocol": "UDP"}],
            "endpoints": [
                ep_on("10.244.1.5", "node-a"),
                ep_on("10.244.1.6", "node-a"),
                {"addresses": ["10.244.1.7"], "nodeName": "node-a",
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
                ep_on("10.244.2.7", "node-b"),
            ]}),
        );
        let objs = objects(vec![(lb_ref.clone(), lb), cluster], vec![eps]);
        // Two local ready pods × two distinct address:port pairs each; the terminating and
        // the remote one do not count; "other" (eTP Cluster) has no health check.
        assert_eq!(
            health_checks(&objs, &node()),
            vec![HealthCheck {
                service: lb_ref.clone(),
                port: 32000,
                local_endpoints: 4
            }]
        );
        let node_b = NodeContext {
            node_name: "node-b".into(),
            ..node()
        };
        assert_eq!(health_checks(&objs, &node_b)[0].local_endpoints, 2);
        let node_c = NodeContext {
            node_name: "node-c".into(),
            ..node()
        };
        assert_eq!(health_checks(&objs, &node_c)[0].local_endpoints, 0);
    }

    /// `node-a` in zone-a (the Node's zone label).
    fn node_in_zone_a() -> NodeContext {
        NodeContext {
            zone: Some("zone-a".into()),
            ..node()
        }
    }

    /// A ready endpoint on `node` hinted for `zones` and `nodes` (`hints` omitted when both
    /// are empty).
    fn ep_hinted(ip: &str, node: &str, zones: &[&str], nodes: &[&str]) -> serde_json::Value {
        let mut ep = ep_on(ip, node);
        let mut hints = json!({});
        if !zones.is_empty() {
            hints["forZones"] = zones.iter().map(|z| json!({"name": z})).collect();
        }
        if !nodes.is_empty() {
            hints["forNodes"] = nodes.iter().map(|n| json!({"name": n})).collect();
        }
        if hints != json!({}) {
            ep["hints"] = hints;
        }
        ep
    }

    /// Backends of the only frontend of `web` (`spec` merged in) over one slice of `eps`.
    fn web_backends(
        spec: serde_json::Value,
        eps: Vec<serde_json::Value>,
        node: &NodeContext,
    ) -> Vec<Backend> {
        let d = desired(
            &objects(vec![web(spec)], vec![web_slice("web-1", 8080, eps)]),
            node,
        );
        only(&d).backends.clone()
    }

    /// Two endpoints in zone-a (one on this node, node-a) and one in zone-b, zone-hinted.
    fn zoned_endpoints() -> Vec<serde_json::Value> {
        vec![
            ep_hinted("10.244.1.5", "node-a", &["zone-a"], &[]),
            ep_hinted("10.244.3.5", "node-c", &["zone-a"], &[]),
            ep_hinted("10.244.2.7", "node-b", &["zone-b"], &[]),
        ]
    }

    #[test]
    fn hints_for_this_zone_are_used_when_every_endpoint_has_hints() {
        let near = vec![local(be([10, 244, 1, 5], 8080)), be([10, 244, 3, 5], 8080)];
        assert_eq!(
            web_backends(json!({}), zoned_endpoints(), &node_in_zone_a()),
            near
        );
        // The same slice from node-b in zone-b: only the zone-b endpoint.
        let node_b = NodeContext {
            node_name: "node-b".into(),
            zone: Some("zone-b".into()),
            ..node()
        };
        assert_eq!(
            web_backends(json!({}), zoned_endpoints(), &node_b),
            vec![local(be([10, 244, 2, 7], 8080))]
        );
        // An endpoint may be hinted for several zones (the controller's overload spreading).
        let mut eps = zoned_endpoints();
        eps[2] = ep_hinted("10.244.2.7", "node-b", &["zone-b", "zone-a"], &[]);
        assert_eq!(
            web_backends(json!({}), eps, &node_in_zone_a()).len(),
            3,
            "zone-b's endpoint is lent to zone-a"
        );
    }

    #[test]
    fn an_endpoint_without_hints_disables_topology() {
        let mut eps = zoned_endpoints();
        eps.push(ep_on("10.244.2.8", "node-b"));
        assert_eq!(web_backends(json!({}), eps, &node_in_zone_a()).len(), 4);
        // Across slices too: the rule is over the port's endpoints, not per slice.
        let d = desired(
            &objects(
                vec![web(json!({}))],
                vec![
                    web_slice("web-1", 8080, zoned_endpoints()),
                    web_slice("web-2", 8080, vec![ep_on("10.244.2.8", "node-b")]),
                ],
            ),
            &node_in_zone_a(),
        );
        assert_eq!(only(&d).backends.len(), 4);
    }

    #[test]
    fn hints_are_judged_on_ready_endpoints_only() {
        // A not-ready endpoint without hints does not turn topology off.
        let mut eps = zoned_endpoints();
        eps.push(json!({"addresses": ["10.244.2.8"], "nodeName": "node-b",
                        "conditions": {"ready": false}}));
        assert_eq!(web_backends(json!({}), eps, &node_in_zone_a()).len(), 2);
    }

    #[test]
    fn no_endpoint_for_this_zone_falls_back_to_all() {
        let node_d = NodeContext {
            node_name: "node-d".into(),
            zone: Some("zone-c".into()),
            ..node()
        };
        assert_eq!(web_backends(json!({}), zoned_endpoints(), &node_d).len(), 3);
        // zone-b's only endpoint is not ready: no ready endpoint is hinted for zone-b, so
        // node-b uses every ready one (zone-a's) rather than none.
        let eps = vec![
            ep_hinted("10.244.1.5", "node-a", &["zone-a"], &[]),
            json!({"addresses": ["10.244.2.7"], "nodeName": "node-b", "conditions": {"ready": false},
                   "hints": {"forZones": [{"name": "zone-b"}]}}),
        ];
        let node_b = NodeContext {
            node_name: "node-b".into(),
            zone: Some("zone-b".into()),
            ..node()
        };
        assert_eq!(
            web_backends(json!({}), eps, &node_b),
            vec![be([10, 244, 1, 5], 8080)]
        );
    }

    #[test]
    fn node_without_zone_label_ignores_hints() {
        assert_eq!(web_backends(json!({}), zoned_endpoints(), &node()).len(), 3);
        let empty = NodeContext {
            zone: Some(String::new()),
            ..node()
        };
        assert_eq!(web_backends(json!({}), zoned_endpoints(), &empty).len(), 3);
    }

    #[test]
    fn service_traffic_distribution_alone_changes_nothing() {
        // kube-proxy reads hints, never spec.trafficDistribution (the controller writes hints).
        let eps = vec![ep_on("10.244.1.5", "node-a"), ep_on("10.244.2.7", "node-b")];
        for td in ["PreferClose", "PreferSameZone", "PreferSameNode"] {
            assert_eq!(
                web_backends(
                    json!({"trafficDistribution": td}),
                    eps.clone(),
                    &node_in_zone_a()
                )
                .len(),
                2,
                "{td}"
            );
        }
    }

    #[test]
    fn for_nodes_hint_prefers_this_node() {
        // PreferSameNode: the controller writes forNodes and forZones.
        let eps = vec![
            ep_hinted("10.244.1.5", "node-a", &["zone-a"], &["node-a"]),
            ep_hinted("10.244.3.5", "node-c", &["zone-a"], &["node-c"]),
            ep_hinted("10.244.2.7", "node-b", &["zone-b"], &["node-b"]),
        ];
        assert_eq!(
            web_backends(json!({}), eps.clone(), &node_in_zone_a()),
            vec![local(be([10, 244, 1, 5], 8080))]
        );
        // No endpoint for this node: the zone hints decide.
        let node_e = NodeContext {
            node_name: "node-e".into(),
            ..node_in_zone_a()
        };
        assert_eq!(
            web_backends(json!({}), eps.clone(), &node_e),
            vec![be([10, 244, 1, 5], 8080), be([10, 244, 3, 5], 8080)]
        );
        // Node hints work without any zone (a node without the zone label, --manifests).
        assert_eq!(
            web_backends(json!({}), eps.clone(), &node()),
            vec![local(be([10, 244, 1, 5], 8080))]
        );
        // One endpoint without a node hint: node hints are off, zone hints still apply.
        let mut eps = eps;
        eps[2] = ep_hinted("10.244.2.7", "node-b", &["zone-b"], &[]);
        assert_eq!(web_backends(json!({}), eps, &node_in_zone_a()).len(), 2);
    }

    #[test]
    fn without_ready_endpoints_the_terminating_fallback_ignores_hints() {
        let term = |ip: &str, node: &str, zone: &str| {
            json!({"addresses": [ip], "nodeName": node,
                   "conditions": {"ready": false, "serving": true, "terminating": true},
                   "hints": {"forZones": [{"name": zone}]}})
        };
        let eps = vec![
            term("10.244.1.5", "node-a", "zone-a"),
            term("10.244.2.7", "node-b", "zone-b"),
        ];
        assert_eq!(web_backends(json!({}), eps, &node_in_zone_a()).len(), 2);
    }

    #[test]
    fn local_traffic_policy_wins_over_hints() {
        // node-a's only endpoint is hinted for zone-b (and zone-a has node-c's): the Local set
        // is this node's endpoints whatever the hints say.
        let eps = vec![
            ep_hinted("10.244.1.5", "node-a", &["zone-b"], &[]),
            ep_hinted("10.244.3.5", "node-c", &["zone-a"], &[]),
            ep_hinted("10.244.2.7", "node-b", &["zone-b"], &[]),
        ];
        let mine = vec![local(be([10, 244, 1, 5], 8080))];
        let zone_a = vec![be([10, 244, 3, 5], 8080)];
        assert_eq!(
            web_backends(
                json!({"internalTrafficPolicy": "Local"}),
                eps.clone(),
                &node_in_zone_a()
            ),
            mine
        );
        // eTP Local: wire clients get this node's endpoints, in-cluster clients (and the
        // ClusterIP) the zone's.
        let d = desired(
            &objects(
                vec![web_np(json!({"externalTrafficPolicy": "Local"}))],
                vec![web_slice("web-1", 8080, eps)],
            ),
            &NodeContext {
                zone: Some("zone-a".into()),
                ..node_with(&["172.18.0.0/16"])
            },
        );
        let np = key(NODE_IP, 30080, PROTO_TCP);
        assert_eq!(d.frontends[&external(np)].backends, mine);
        assert_eq!(d.frontends[&np].backends, zone_a);
        assert_eq!(
            d.frontends[&key([10, 96, 0, 10], 80, PROTO_TCP)].backends,
            zone_a
        );
    }

    #[test]
    fn hints_apply_to_node_ports_and_external_ips() {
        // kube-proxy's external chains under eTP Cluster jump to the (topology-filtered)
        // cluster endpoints.
        let d = desired(
            &objects(
                vec![web_np(json!({"externalIPs": ["198.51.100.10"]}))],
                vec![web_slice("web-1", 8080, zoned_endpoints())],
            ),
            &NodeContext {
                zone: Some("zone-a".into()),
                ..node_with(&["172.18.0.0/16"])
            },
        );
        assert_eq!(d.frontends.len(), 3);
        for (k, f) in &d.frontends {
            assert_eq!(f.backends.len(), 2, "{k:?}");
        }
    }
}
