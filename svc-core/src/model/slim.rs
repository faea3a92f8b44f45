//! What the model keeps of each object between plans, and nothing more: an agent runs on every
//! node, so every byte kept per Service or endpoint is paid once per node. A Service is kept as
//! a [`SlimService`] (only the fields the model reads); an EndpointSlice as a [`SlimSlice`]: addresses as `Ipv4Addr`s or `Ipv6Addr`s (its `addressType`), conditions as bits, node and
//! zone names shared ([`Interner`]), and the problems its parsing found, kept to be reported
//! as before. Everything that depends on this node (which endpoints are local, which hints are
//! for it) is decided at plan time ([`super::endpoints::ParsedSlice`]), so a slim object stays
//! right when the Node changes.
//!
//! At 10k Services of 10 endpoints (bench_control's objects), the full objects cost ~6.8 KB per
//! Service in the store and the slim ones under 1 KB; objects from a real cluster (managedFields,
//! annotations, targetRefs) cost several times more in full, and the same slim
//! (docs/BENCHMARKS.md, "Memory and the pure part at 100k Services").

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use svc_common::{PROTO_TCP, PROTO_UDP};

use super::slim_service::SlimService;
use super::{label, ObjectRef, Objects, Problem, LABEL_HEADLESS, LABEL_SERVICE_NAME};
use crate::family::Family;

/// Shares the text of names that repeat across objects (node names, zones, port names): one
/// allocation per distinct name instead of one per endpoint.
#[derive(Debug, Default)]
pub struct Interner {
    names: HashSet<Arc<str>>,
}

impl Interner {
    /// The shared copy of `name`.
    pub fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.names.get(name) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(name);
        self.names.insert(shared.clone());
        shared
    }

    /// Forgets the names no object uses any more (nodes and zones that are gone).
    pub fn prune(&mut self) {
        self.names.retain(|n| Arc::strong_count(n) > 1);
    }

    /// Distinct names held.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// No name held.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The objects the model reads, as the store keeps them: [`SlimService`]s, [`SlimSlice`]s,
/// and the source's problems.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlimObjects {
    /// Services by namespace/name.
    pub services: BTreeMap<ObjectRef, SlimService>,
    /// EndpointSlices by namespace/name.
    pub slices: BTreeMap<ObjectRef, SlimSlice>,
    /// What the source refused or skipped while producing these objects.
    pub problems: Vec<Problem>,
}

impl SlimObjects {
    /// The slim form of every object in `objects`.
    pub fn from_objects(objects: Objects) -> Self {
        let mut names = Interner::default();
        Self {
            services: objects
                .services
                .into_iter()
                .map(|(r, s)| (r, SlimService::of(s, &mut names)))
                .collect(),
            slices: objects
                .slices
                .into_iter()
                .map(|(r, s)| {
                    let slim = SlimSlice::of(&r, &s, &mut names);
                    (r, slim)
                })
                .collect(),
            problems: objects.problems,
        }
    }

    /// [`SlimObjects::from_objects`] of a copy of `objects`.
    pub fn of(objects: &Objects) -> Self {
        Self::from_objects(objects.clone())
    }
}

/// One EndpointSlice as the model reads it (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlimSlice {
    /// Its [`LABEL_SERVICE_NAME`] label: the Service it belongs to, in its namespace.
    pub service: Option<Box<str>>,
    /// `None` for a slice proxies ignore (`addressType` neither IPv4 nor IPv6, or labelled
    /// [`LABEL_HEADLESS`]).
    pub(super) content: Option<Box<SliceContent>>,
    /// Its `endpoints.kubernetes.io/last-change-trigger-time`, if well formed.
    pub trigger: Option<SystemTime>,
}

/// What a slice proxies use holds: ports, endpoints, and the problems found reading them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SliceContent {
    /// (name, protocol, port number) of each usable `ports[]` entry.
    pub(super) ports: Box<[(Arc<str>, u8, u16)]>,
    /// The endpoints, of the slice's `addressType`.
    pub(super) endpoints: SliceEndpoints,
    /// Refused ports and endpoints, in the order found: reported each time the slice is read,
    /// as when it was parsed each time.
    pub(super) problems: Box<[Problem]>,
}

/// The endpoints of a slice: one family per slice (`addressType`), and a Service's frontends of
/// one family use only its slices of that family (kube-proxy runs one proxier per family, each
/// with an EndpointSlice cache of its own `addressType`: pkg/proxy/endpointslicecache.go).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum SliceEndpoints {
    /// `addressType: IPv4`.
    V4(Box<[SlimEndpoint<Ipv4Addr>]>),
    /// `addressType: IPv6`.
    V6(Box<[SlimEndpoint<Ipv6Addr>]>),
}

/// An endpoint's first address, its conditions and what decides whether it is local or
/// hinted here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SlimEndpoint<Ip> {
    pub(super) addr: Ip,
    /// `ready` (absent: true).
    pub(super) ready: bool,
    /// `serving && terminating` (`serving` absent: as `ready`; `terminating` absent: false).
    pub(super) serving_terminating: bool,
    /// `nodeName`.
    pub(super) node_name: Option<Arc<str>>,
    /// `hints`, when it names any zone or node.
    pub(super) hints: Option<Box<SlimHints>>,
}

/// An endpoint's `hints.forZones[].name` and `hints.forNodes[].name`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct SlimHints {
    pub(super) zones: Box<[Arc<str>]>,
    pub(super) nodes: Box<[Arc<str>]>,
}

impl SlimSlice {
    /// Reads `slice` (named `slice_ref`) once: what a proxy uses, with the problems found.
    pub fn of(slice_ref: &ObjectRef, slice: &EndpointSlice, names: &mut Interner) -> Self {
        let v6 = match slice.address_type.as_str() {
            "IPv4" => Some(false),
            "IPv6" => Some(true),
            // FQDN (deprecated, never read by kube-proxy) or unknown.
            _ => None,
        };
        let ignored = label(&slice.metadata, LABEL_HEADLESS).is_some();
        Self {
            service: label(&slice.metadata, LABEL_SERVICE_NAME).map(Box::from),
            content: v6
                .filter(|_| !ignored)
                .map(|v6| Box::new(SliceContent::of(slice_ref, slice, v6, names))),
            trigger: crate::store::trigger_time(slice),
        }
    }

    /// The slim form of `slice` with its reference, `None` when it has no name.
    pub fn keyed(slice: &EndpointSlice, names: &mut Interner) -> Option<(ObjectRef, Self)> {
        let r = ObjectRef::from_meta(&slice.metadata)?;
        let slim = Self::of(&r, slice, names);
        Some((r, slim))
    }
}

impl SliceContent {
    fn of(slice_ref: &ObjectRef, slice: &EndpointSlice, v6: bool, names: &mut Interner) -> Self {
        let object = format!("EndpointSlice {slice_ref}");
        let mut problems = Vec::new();
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
                Ok(n) if n != 0 => ports.push((
                    names.get(port.name.as_deref().unwrap_or_default()),
                    proto,
                    n,
                )),
                _ => problems.push(Problem::new(
                    &object,
                    format!("ports[{i}].port"),
                    "must be 1-65535",
                )),
            }
        }
        let endpoints = if v6 {
            SliceEndpoints::V6(endpoints_of::<svc_common::Addr6>(
                &object,
                slice,
                names,
                &mut problems,
            ))
        } else {
            SliceEndpoints::V4(endpoints_of::<[u8; 4]>(
                &object,
                slice,
                names,
                &mut problems,
            ))
        };
        Self {
            ports: ports.into(),
            endpoints,
            problems: problems.into(),
        }
    }
}

/// The endpoints of a slice of family `A` (its `addressType`), with the problems of those
/// refused added to `problems`.
fn endpoints_of<A: Family>(
    object: &str,
    slice: &EndpointSlice,
    names: &mut Interner,
    problems: &mut Vec<Problem>,
) -> Box<[SlimEndpoint<A::Ip>]> {
    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        // Addresses of one endpoint are fungible; consumers use the first (as kube-proxy
        // does, https://issue.k8s.io/106267).
        let Some(text) = ep.addresses.first() else {
            problems.push(Problem::new(
                object,
                format!("endpoints[{i}].addresses"),
                "empty",
            ));
            continue;
        };
        let field = format!("endpoints[{i}].addresses[0]");
        let Some(addr) = text.parse().ok().and_then(A::of) else {
            problems.push(Problem::new(
                object,
                field,
                format!("{text:?} is not an {} address", A::NAME),
            ));
            continue;
        };
        if let Some(why) = refused_endpoint(addr.into()) {
            problems.push(Problem::new(
                object,
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
        let hints = ep.hints.as_ref().map(|h| SlimHints {
            zones: h
                .for_zones
                .iter()
                .flatten()
                .map(|z| names.get(&z.name))
                .collect(),
            nodes: h
                .for_nodes
                .iter()
                .flatten()
                .map(|n| names.get(&n.name))
                .collect(),
        });
        endpoints.push(SlimEndpoint {
            addr,
            ready,
            serving_terminating: serving && terminating,
            node_name: ep.node_name.as_deref().map(|n| names.get(n)),
            hints: hints
                .filter(|h| !h.zones.is_empty() || !h.nodes.is_empty())
                .map(Box::new),
        });
    }
    endpoints.into()
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
///
/// IPv6 (Go's `net.IP` methods, which validation calls): `::`, `::1`, link-local unicast
/// `fe80::/10` and link-local multicast `ff02::/16` (`ff0X` with scope 2); an IPv4-mapped
/// address (`::ffff:127.0.0.1`) is judged as its IPv4 address, as Go's methods do.
fn refused_endpoint(addr: IpAddr) -> Option<&'static str> {
    let addr = match addr {
        IpAddr::V4(addr) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(addr) => addr,
            None => return refused_endpoint6(v6),
        },
    };
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

/// [`refused_endpoint`] of an IPv6 address that is no IPv4-mapped one.
fn refused_endpoint6(addr: Ipv6Addr) -> Option<&'static str> {
    let seg = addr.segments();
    if addr.is_unspecified() {
        Some("is unspecified")
    } else if addr.is_loopback() {
        Some("is the loopback address (::1)")
    } else if seg[0] & 0xffc0 == 0xfe80 {
        Some("is in the link-local range (fe80::/10)")
    } else if seg[0] & 0xff0f == 0xff02 {
        Some("is a link-local multicast address (ff02::/16)")
    } else {
        None
    }
}
