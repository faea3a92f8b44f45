//! The health checks kube-proxy answers for `externalTrafficPolicy: Local` Services
//! ([`HealthCheck`], [`health_checks`]): on which port, and how many ready endpoints this node has.

use std::collections::BTreeSet;
use std::net::IpAddr;

#[cfg(doc)]
use super::desired;
use super::endpoints::{ParsedSlice, SliceIndex};
use super::{Desired, ModelFamily, NodeContext, ObjectRef, Objects, SlimObjects};

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
    slim_health_checks(&SlimObjects::of(objects), node)
}

/// [`health_checks`] of the objects as the store keeps them.
pub fn slim_health_checks(objects: &SlimObjects, node: &NodeContext) -> Vec<HealthCheck> {
    let slices = SliceIndex::build(&objects.slices, None);
    // Problems found here are reported by `desired`; this pass only counts.
    let mut scratch = Desired::default();
    let mut out = Vec::new();
    for (svc_ref, svc) in &objects.services {
        if !node.claims_labelled(svc.proxy_name.as_deref()) {
            continue;
        }
        let Some(spec) = &svc.spec else { continue };
        if !spec.external_local
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
        // Both families' local endpoints: kube-proxy runs a responder per family, each
        // counting its own family's; ours is one responder, so a dual-stack Service's count
        // is their sum (a node with local endpoints of either family can serve).
        let mut local = BTreeSet::new();
        for (_, slice) in slices.of(svc_ref) {
            if let Some(parsed) = ParsedSlice::<[u8; 4]>::parse(slice, node, &mut scratch) {
                count_local(&parsed, &mut local);
            }
            if let Some(parsed) = ParsedSlice::<svc_common::Addr6>::parse(slice, node, &mut scratch)
            {
                count_local(&parsed, &mut local);
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

/// Adds the ready local `address:port` pairs of `parsed` to `local`.
fn count_local<A: ModelFamily>(parsed: &ParsedSlice<A>, local: &mut BTreeSet<(IpAddr, u16)>) {
    for ep in parsed.endpoints.iter().filter(|e| e.ready && e.local) {
        for (_, _, number) in parsed.ports {
            local.insert((ep.addr.into(), *number));
        }
    }
}
