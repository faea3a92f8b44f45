//! EndpointSlices → backends: which slices belong to which Service ([`SliceOwners`], kept by the
//! watcher; [`SliceIndex`], built per pass), each slice resolved against this node
//! ([`ParsedSlice`]: which endpoints are local, which hints are for us; the slice itself was
//! read once into a [`SlimSlice`], with the addresses the API server would refuse reported),
//! the topology mode of each Service port ("Topology" in the `model` module docs) and the
//! endpoint sets of kube-proxy's `CategorizeEndpoints` ([`choose_backends`]).

use std::collections::{BTreeMap, BTreeSet};
use svc_common::{BackendOf, BACKEND_F_LOCAL, BACKEND_F_TERMINATING, FRONTEND_F_DROP_NO_BACKEND};

#[cfg(doc)]
use super::desired_for_indexed;
use super::slim::{SlimEndpoint, SlimHints, SlimSlice};
#[cfg(doc)]
use super::LABEL_SERVICE_NAME;
use super::{Desired, ModelFamily, NodeContext, ObjectRef};

/// Which EndpointSlices belong to which Service ([`LABEL_SERVICE_NAME`] in the slice's
/// namespace), maintained slice by slice with [`SliceOwners::update`] by a source that applies
/// changes one at a time (the API-server watcher), for [`desired_for_indexed`]. A slice's owner
/// is read from the slice itself ([`SlimSlice::service`]), so only the Service → slices
/// direction is kept, as a sorted list (most Services have one slice).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceOwners {
    by_service: BTreeMap<ObjectRef, Vec<ObjectRef>>,
}

impl SliceOwners {
    /// The index of every slice in `slices`.
    pub fn build(slices: &BTreeMap<ObjectRef, SlimSlice>) -> Self {
        let mut me = Self::default();
        for (r, slice) in slices {
            me.update(r, None, slice.service.as_deref());
        }
        me
    }

    /// Records that slice `slice_ref`, which named Service `old` (`None`: absent, or named
    /// none), now names `new` (`None`: deleted, or names none), both in its namespace.
    pub fn update(&mut self, slice_ref: &ObjectRef, old: Option<&str>, new: Option<&str>) {
        if old == new {
            return;
        }
        let owner = |name: &str| ObjectRef::new(slice_ref.namespace.clone(), name);
        if let Some(old) = old.map(owner) {
            if let Some(list) = self.by_service.get_mut(&old) {
                if let Ok(i) = list.binary_search(slice_ref) {
                    list.remove(i);
                }
                if list.is_empty() {
                    self.by_service.remove(&old);
                }
            }
        }
        if let Some(new) = new.map(owner) {
            let list = self.by_service.entry(new).or_default();
            if let Err(i) = list.binary_search(slice_ref) {
                list.insert(i, slice_ref.clone());
            }
        }
    }

    /// The slices of `service`, in [`ObjectRef`] order.
    pub fn slices_of(&self, service: &ObjectRef) -> impl Iterator<Item = &ObjectRef> {
        self.by_service.get(service).into_iter().flatten()
    }
}

/// EndpointSlices grouped by the Service they name in [`LABEL_SERVICE_NAME`].
pub(super) struct SliceIndex<'a> {
    by_service: BTreeMap<ObjectRef, Vec<(&'a ObjectRef, &'a SlimSlice)>>,
}

impl<'a> SliceIndex<'a> {
    pub(super) fn build(
        slices: &'a BTreeMap<ObjectRef, SlimSlice>,
        only: Option<&BTreeSet<ObjectRef>>,
    ) -> Self {
        let mut by_service: BTreeMap<ObjectRef, Vec<_>> = BTreeMap::new();
        for (slice_ref, slice) in slices {
            let Some(service) = slice.service.as_deref() else {
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

    pub(super) fn of(&self, service: &ObjectRef) -> &[(&'a ObjectRef, &'a SlimSlice)] {
        self.by_service
            .get(service)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// One slice of family `A` as it concerns this node: what backend selection needs.
pub(super) struct ParsedSlice<'a, A: ModelFamily> {
    /// (name, protocol, port number) of each usable `ports[]` entry.
    pub(super) ports: &'a [(std::sync::Arc<str>, u8, u16)],
    pub(super) endpoints: Vec<ParsedEndpoint<A>>,
}

pub(super) struct ParsedEndpoint<A: ModelFamily> {
    pub(super) addr: A::Ip,
    pub(super) ready: bool,
    /// `serving && terminating`: usable only as a fallback when nothing is ready.
    serving_terminating: bool,
    /// `nodeName` is this node ([`NodeContext::node_name`]).
    pub(super) local: bool,
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
    fn of(hints: Option<&SlimHints>, node: &NodeContext) -> Self {
        let Some(hints) = hints else {
            return Self::default();
        };
        let zone = node.zone.as_deref().filter(|z| !z.is_empty());
        Self {
            zoned: !hints.zones.is_empty(),
            for_zone: zone.is_some_and(|z| hints.zones.iter().any(|h| &**h == z)),
            noded: !hints.nodes.is_empty(),
            for_node: !node.node_name.is_empty()
                && hints.nodes.iter().any(|h| **h == *node.node_name),
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

impl<'a, A: ModelFamily> ParsedSlice<'a, A> {
    /// `slice` as it concerns `node`, with the problems found reading it added to `out`;
    /// `None` for slices a proxy ignores (headless-labelled, neither IPv4 nor IPv6) and for
    /// those of the other family (whose problems that family's pass reports).
    pub(super) fn parse(
        slice: &'a SlimSlice,
        node: &NodeContext,
        out: &mut Desired,
    ) -> Option<Self> {
        let content = slice.content.as_deref()?;
        let endpoints = A::slice_endpoints(&content.endpoints)?;
        out.problems.extend(content.problems.iter().cloned());
        let endpoints = endpoints
            .iter()
            .map(|ep| ParsedEndpoint::of(ep, node))
            .collect();
        Some(Self {
            ports: &content.ports,
            endpoints,
        })
    }

    fn port(&self, name: &str, proto: u8) -> Option<u16> {
        self.ports
            .iter()
            .find(|(n, p, _)| **n == *name && *p == proto)
            .map(|(_, _, port)| *port)
    }
}

impl<A: ModelFamily> ParsedEndpoint<A> {
    fn of(ep: &SlimEndpoint<A::Ip>, node: &NodeContext) -> Self {
        // A hostNetwork endpoint's address is its node's: local here whatever `nodeName`
        // says (the API server's own `kubernetes` slice has none).
        let local = (!node.node_name.is_empty()
            && ep.node_name.as_deref() == Some(node.node_name.as_str()))
            || A::node_ips(node).contains(&ep.addr);
        Self {
            addr: ep.addr,
            ready: ep.ready,
            serving_terminating: ep.serving_terminating,
            local,
            hints: HintsHere::of(ep.hints.as_deref(), node),
        }
    }
}

/// The endpoint sets of one Service port, as kube-proxy's `CategorizeEndpoints`
/// (pkg/proxy/topology.go) computes them; each sorted by [`BackendOf`]'s `Ord`, no duplicates.
pub(super) struct BackendSets<A: ModelFamily> {
    /// Traffic policy `Cluster`: ready endpoints anywhere that the [`Topology`] admits, else
    /// (no ready endpoint at all) serving+terminating ones, hints ignored.
    pub(super) cluster: Vec<BackendOf<A>>,
    /// Traffic policy `Local`: this node's ready endpoints, else this node's serving+terminating
    /// ones. The fallback is decided on the local endpoints alone: a remote ready endpoint does
    /// not stop a local terminating one from being used. Hints play no part.
    pub(super) local: Vec<BackendOf<A>>,
}

impl<A: ModelFamily> BackendSets<A> {
    /// Flags for an entry holding [`BackendSets::local`]: [`FRONTEND_F_DROP_NO_BACKEND`] when it
    /// is empty while the Service has usable endpoints elsewhere. kube-proxy drops then (an
    /// external load balancer retries another node; the health check already says "0 local"),
    /// but rejects, like any Service, when there is no usable endpoint at all (its
    /// `hasEndpoints` check comes before the policy ones).
    pub(super) fn drop_if_no_local(&self) -> u32 {
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
pub(super) fn choose_backends<A: ModelFamily>(
    slices: &[ParsedSlice<A>],
    port_name: &str,
    proto: u8,
) -> BackendSets<A> {
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
        let backend = BackendOf {
            addr: A::from_ip(ep.addr),
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
            terminating.insert(BackendOf {
                flags: backend.flags | BACKEND_F_TERMINATING,
                ..backend
            });
        }
    }
    // One backend per address and port, as kube-proxy keeps one endpoint per address:port
    // (pkg/proxy/endpointslicecache.go, addEndpoints): an address listed twice (two slices,
    // two nodes) is local if either listing says so, and ready if either is.
    let ready_at: BTreeSet<(A, u16)> = ready.iter().map(|b| (b.addr, b.port)).collect();
    terminating.retain(|b| !ready_at.contains(&(b.addr, b.port)));
    for set in [&mut ready, &mut near, &mut terminating] {
        let local_at: BTreeSet<(A, u16)> = set
            .iter()
            .filter(|b| b.flags & BACKEND_F_LOCAL != 0)
            .map(|b| (b.addr, b.port))
            .collect();
        set.retain(|b| b.flags & BACKEND_F_LOCAL != 0 || !local_at.contains(&(b.addr, b.port)));
    }
    let is_local = |b: &&BackendOf<A>| b.flags & BACKEND_F_LOCAL != 0;
    let local: Vec<BackendOf<A>> = if ready.iter().any(|b| is_local(&b)) {
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
