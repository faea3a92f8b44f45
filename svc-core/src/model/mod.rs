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
//! # Families
//! kube-proxy runs one proxier per IP family (pkg/proxy/: each sees only its family's
//! addresses; `pkg/proxy/util` `GetClusterIPByFamily`, `MapIPsByIPFamily`,
//! `MapCIDRsByIPFamily`), and this model decides the same way, family by family, into
//! [`Desired::frontends`] (IPv4) and [`Desired::frontends6`] (IPv6):
//! - a Service is served in family F exactly when it has a ClusterIP of family F: with
//!   `spec.ipFamilies`, `clusterIPs[i]` is the family `ipFamilies[i]` one (a mismatch is a
//!   [`Problem`], that address is skipped); without (objects older than dual-stack, hand-written
//!   manifests), each `clusterIPs` entry (or `clusterIP`) counts for its own family, the first
//!   of each family winning. `ipFamilyPolicy` decides nothing here (the API server allocated
//!   the ClusterIPs by it): a policy the ClusterIPs contradict is reported;
//! - its `externalIPs`, LoadBalancer ingress IPs and `loadBalancerSourceRanges` of family F
//!   apply to its family-F frontends only; those of a family it is not served in are skipped
//!   without a word (kube-proxy logs them at V(4));
//! - NodePorts are served on the node's addresses of each family it is served in
//!   ([`NodeContext::nodeport_ips`], [`NodeContext::nodeport_ips6`]);
//! - a family-F frontend takes its backends from `addressType: F` EndpointSlices only, never
//!   mixed; an endpoint at one of the node's own addresses of that family is local.
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
//!   each family's LB IPs get that family's prefixes only (kube-proxy's per-family proxiers);
//!   a malformed entry is reported ([`Problem`] at `spec.loadBalancerSourceRanges[i]`) and
//!   skipped, the others apply;
//! - an empty list of a family (absent, empty, only the other family's, or nothing parsed)
//!   filters nothing in that family: kube-proxy builds no firewall chain without ranges of
//!   its family;
//! - node processes: kube-proxy's chain allows the node's packets by their source address, and
//!   when a range contains the node IP it also allows the LB IPs as sources (a VIP bound on the
//!   node is then the source). A socket call has no source yet, so the agent decides: when no
//!   range contains a node address of the family ([`NodeContext::node_ips`],
//!   [`NodeContext::node_ips6`]), [`FRONTEND_F_DENY_NODE`] makes
//!   the socket hooks refuse the call.

// What each child owns (see its first lines); the rules above are documented here, where
// `svc_core::model` renders them, and implemented there.
mod cidr;
mod endpoints;
mod health;
mod node;
mod service;
mod slim;
mod slim_service;
mod source_ranges;

pub use cidr::{
    cidr, default_service_cidr, parse_cidr, parse_cidr_any, parse_service_cidrs, split_families,
    CidrError, IpNet, Ipv4Net, Ipv6Net, ServiceCidrs,
};
pub use endpoints::SliceOwners;
pub use health::{health_checks, slim_health_checks, HealthCheck};
pub use node::NodeContext;
pub use slim::{Interner, SlimObjects, SlimSlice};
pub use slim_service::{SlimIngress, SlimPort, SlimService, SlimSpec};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use svc_common::{BackendOf, FrontendKey, FrontendKey6, FrontendKeyOf};

use crate::family::{AnyBackend, AnyFrontendKey, Family};
// Named by the docs above only.
#[cfg(doc)]
use svc_common::{
    BACKEND_F_LOCAL, FRONTEND_F_DENY_NODE, FRONTEND_F_DROP_NO_BACKEND, FRONTEND_F_SOURCE_RANGES,
    SCOPE_EXTERNAL,
};

use endpoints::SliceIndex;
use service::add_service;
use slim::{SliceEndpoints, SlimEndpoint};

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

/// One frontend the node should serve, of the family of its address `A` (`[u8; 4]`,
/// `svc_common::Addr6`): [`DesiredFrontend`] or [`DesiredFrontend6`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFrontendOf<A: Family> {
    /// The Service it comes from; [`crate::reconcile`] records it as the frontend's owner so a
    /// change to one Service can be planned without looking at the others.
    pub service: ObjectRef,
    /// `spec.ports[].name` it was built from (`""` when unnamed); for logs and metrics.
    pub port_name: String,
    /// Where new flows go: sorted by [`BackendOf`]'s `Ord`, no duplicates, all of the
    /// frontend's family. Empty means "no usable endpoint": the frontend is still programmed so
    /// the datapath rejects instead of letting the packet wander off to the ClusterIP's
    /// (non-existent) owner.
    pub backends: Vec<BackendOf<A>>,
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
    pub source_ranges: Vec<A::Net>,
}

/// An IPv4 frontend the node should serve (an `SVC_FRONTENDS` entry).
pub type DesiredFrontend = DesiredFrontendOf<[u8; 4]>;
/// An IPv6 frontend the node should serve (an `SVC_FRONTENDS6` entry).
pub type DesiredFrontend6 = DesiredFrontendOf<svc_common::Addr6>;

/// Everything the node should serve, plus the problems found while deciding it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// IPv4 frontends by map key; a `BTreeMap` so plans and dumps come out in a stable order.
    pub frontends: BTreeMap<FrontendKey, DesiredFrontend>,
    /// IPv6 frontends by map key (see "Families" in the module docs).
    pub frontends6: BTreeMap<FrontendKey6, DesiredFrontend6>,
    /// Refusals, in the order found (Services in [`ObjectRef`] order).
    pub problems: Vec<Problem>,
    /// Frontends a Service claims that another Service, planned before it, holds: the key and
    /// the Service that lost it. A planner that re-plans only some Services uses them to plan
    /// a loser again when the holder lets the key go.
    pub lost: Vec<(AnyFrontendKey, ObjectRef)>,
}

impl Desired {
    /// Whether a frontend of either family is desired at `key`.
    pub fn contains(&self, key: &AnyFrontendKey) -> bool {
        match key {
            AnyFrontendKey::V4(k) => self.frontends.contains_key(k),
            AnyFrontendKey::V6(k) => self.frontends6.contains_key(k),
        }
    }

    /// The Service a desired frontend at `key` belongs to.
    pub fn service_of(&self, key: &AnyFrontendKey) -> Option<&ObjectRef> {
        match key {
            AnyFrontendKey::V4(k) => self.frontends.get(k).map(|f| &f.service),
            AnyFrontendKey::V6(k) => self.frontends6.get(k).map(|f| &f.service),
        }
    }

    /// Every desired frontend key, IPv4 ones first.
    pub fn keys(&self) -> impl Iterator<Item = AnyFrontendKey> + '_ {
        (self.frontends.keys().map(|&k| AnyFrontendKey::V4(k)))
            .chain(self.frontends6.keys().map(|&k| AnyFrontendKey::V6(k)))
    }

    /// Number of desired frontends of both families.
    pub fn len(&self) -> usize {
        self.frontends.len() + self.frontends6.len()
    }

    /// No frontend is desired.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A desired frontend of either family, borrowed: what the family-neutral passes (budget,
/// reconcile) read.
#[derive(Clone, Copy, Debug)]
pub enum DesiredRef<'a> {
    /// An IPv4 frontend.
    V4(&'a DesiredFrontend),
    /// An IPv6 frontend.
    V6(&'a DesiredFrontend6),
}

impl<'a> DesiredRef<'a> {
    /// [`DesiredFrontendOf::service`].
    pub fn service(&self) -> &'a ObjectRef {
        match self {
            Self::V4(f) => &f.service,
            Self::V6(f) => &f.service,
        }
    }
    /// [`DesiredFrontendOf::flags`].
    pub fn flags(&self) -> u32 {
        match self {
            Self::V4(f) => f.flags,
            Self::V6(f) => f.flags,
        }
    }
    /// [`DesiredFrontendOf::affinity_timeout_s`].
    pub fn affinity_timeout_s(&self) -> u32 {
        match self {
            Self::V4(f) => f.affinity_timeout_s,
            Self::V6(f) => f.affinity_timeout_s,
        }
    }
    /// Number of [`DesiredFrontendOf::backends`].
    pub fn backend_len(&self) -> usize {
        match self {
            Self::V4(f) => f.backends.len(),
            Self::V6(f) => f.backends.len(),
        }
    }
    /// The first `n` backends, family-tagged.
    pub fn backends(&self, n: usize) -> Vec<AnyBackend> {
        match self {
            Self::V4(f) => f
                .backends
                .iter()
                .take(n)
                .map(|&b| AnyBackend::V4(b))
                .collect(),
            Self::V6(f) => f
                .backends
                .iter()
                .take(n)
                .map(|&b| AnyBackend::V6(b))
                .collect(),
        }
    }
    /// [`DesiredFrontendOf::source_ranges`] as (network address, length).
    pub fn prefixes(&self) -> Vec<(IpAddr, u8)> {
        match self {
            Self::V4(f) => f
                .source_ranges
                .iter()
                .map(|c| (IpAddr::V4(c.network()), c.prefix_len()))
                .collect(),
            Self::V6(f) => f
                .source_ranges
                .iter()
                .map(|c| (IpAddr::V6(c.network()), c.prefix_len()))
                .collect(),
        }
    }
    /// Number of [`DesiredFrontendOf::source_ranges`].
    pub fn prefix_len(&self) -> usize {
        match self {
            Self::V4(f) => f.source_ranges.len(),
            Self::V6(f) => f.source_ranges.len(),
        }
    }
}

impl Desired {
    /// Every desired frontend of both families, IPv4 ones first, each in key order.
    pub fn iter_any(&self) -> impl Iterator<Item = (AnyFrontendKey, DesiredRef<'_>)> + '_ {
        (self.frontends.iter())
            .map(|(&k, f)| (AnyFrontendKey::V4(k), DesiredRef::V4(f)))
            .chain(
                self.frontends6
                    .iter()
                    .map(|(&k, f)| (AnyFrontendKey::V6(k), DesiredRef::V6(f))),
            )
    }

    /// Keeps the frontends of both families whose Service `keep` accepts.
    pub fn retain_services(&mut self, mut keep: impl FnMut(&ObjectRef) -> bool) {
        self.frontends.retain(|_, f| keep(&f.service));
        self.frontends6.retain(|_, f| keep(&f.service));
    }
}

/// What the model needs per family beyond [`Family`]: where a family's endpoints, node
/// addresses and frontends are kept.
pub(in crate::model) trait ModelFamily: Family {
    /// The endpoints of a slice if it is of this family.
    fn slice_endpoints(e: &SliceEndpoints) -> Option<&[SlimEndpoint<Self::Ip>]>;
    /// [`NodeContext::node_ips`] of this family.
    fn node_ips(node: &NodeContext) -> &[Self::Ip];
    /// [`NodeContext::nodeport_ips`] of this family.
    fn nodeport_ips(node: &NodeContext) -> Vec<Self::Ip>;
    /// `--external-ip-cidrs` of this family; `None` when the flag is not set.
    fn external_ip_cidrs(node: &NodeContext) -> Option<&[Self::Net]>;
    /// The family's frontends in `out`.
    fn frontends(out: &mut Desired) -> &mut BTreeMap<FrontendKeyOf<Self>, DesiredFrontendOf<Self>>;
}

impl ModelFamily for [u8; 4] {
    fn slice_endpoints(e: &SliceEndpoints) -> Option<&[SlimEndpoint<Self::Ip>]> {
        match e {
            SliceEndpoints::V4(e) => Some(e),
            SliceEndpoints::V6(_) => None,
        }
    }
    fn node_ips(node: &NodeContext) -> &[Self::Ip] {
        &node.node_ips
    }
    fn nodeport_ips(node: &NodeContext) -> Vec<Self::Ip> {
        node.nodeport_ips()
    }
    fn external_ip_cidrs(node: &NodeContext) -> Option<&[Self::Net]> {
        node.external_ip_cidrs.as_deref()
    }
    fn frontends(out: &mut Desired) -> &mut BTreeMap<FrontendKey, DesiredFrontend> {
        &mut out.frontends
    }
}

impl ModelFamily for svc_common::Addr6 {
    fn slice_endpoints(e: &SliceEndpoints) -> Option<&[SlimEndpoint<Self::Ip>]> {
        match e {
            SliceEndpoints::V6(e) => Some(e),
            SliceEndpoints::V4(_) => None,
        }
    }
    fn node_ips(node: &NodeContext) -> &[Self::Ip] {
        &node.node_ips6
    }
    fn nodeport_ips(node: &NodeContext) -> Vec<Self::Ip> {
        node.nodeport_ips6()
    }
    fn external_ip_cidrs(node: &NodeContext) -> Option<&[Self::Net]> {
        node.external_ip_cidrs
            .as_ref()
            .map(|_| node.external_ip_cidrs6.as_slice())
    }
    fn frontends(out: &mut Desired) -> &mut BTreeMap<FrontendKey6, DesiredFrontend6> {
        &mut out.frontends6
    }
}

/// Computes what this node should serve for every Service in `objects`.
///
/// O(services × ports + slices × endpoints): slices are indexed by their Service once, and each
/// slice is parsed once per Service (not once per port), so a Service with many ports and many
/// endpoints costs ports × endpoints comparisons and no more.
pub fn desired(objects: &Objects, node: &NodeContext) -> Desired {
    slim_desired(&SlimObjects::of(objects), node)
}

/// [`desired`] of the objects as the store keeps them.
pub fn slim_desired(objects: &SlimObjects, node: &NodeContext) -> Desired {
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
/// detected here: the caller lists them too (the engine adds the Services holding a key the
/// listed ones claim, and those that lost a key the listed ones let go, [`Desired::lost`]).
pub fn desired_for(
    objects: &Objects,
    node: &NodeContext,
    services: &BTreeSet<ObjectRef>,
) -> Desired {
    let objects = SlimObjects::of(objects);
    let slices = SliceIndex::build(&objects.slices, Some(services));
    let mut out = Desired::default();
    for svc_ref in services {
        if let Some(svc) = objects.services.get(svc_ref) {
            add_service(svc_ref, svc, slices.of(svc_ref), node, &mut out);
        }
    }
    out
}

/// [`desired_for`] of the objects as the store keeps them, with the slices of each Service
/// looked up in `owners` (kept current by the caller as objects change) instead of found by a
/// pass over every slice: an incremental update then costs O(changed Services × their
/// slices), not O(all slices). The result equals [`desired_for`]'s whenever `owners` describes
/// `objects.slices`.
pub fn desired_for_indexed(
    objects: &SlimObjects,
    node: &NodeContext,
    services: &BTreeSet<ObjectRef>,
    owners: &SliceOwners,
) -> Desired {
    let mut out = Desired::default();
    for svc_ref in services {
        if let Some(svc) = objects.services.get(svc_ref) {
            // Slice refs come sorted, as in SliceIndex::build, so the result does not depend
            // on which function built it.
            let slices: Vec<_> = owners
                .slices_of(svc_ref)
                .filter_map(|r| objects.slices.get_key_value(r))
                .collect();
            add_service(svc_ref, svc, &slices, node, &mut out);
        }
    }
    out
}

fn label<'m>(meta: &'m ObjectMeta, key: &str) -> Option<&'m str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

#[cfg(test)]
pub(crate) mod tests;
