//! [`NodeContext`]: what the model knows about the node it runs on (name, addresses, zone, the
//! flags that shape what it serves) and the two questions asked of it: which Services are ours
//! ([`NodeContext::claims`]) and which addresses serve NodePorts ([`NodeContext::nodeport_ips`]).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
// Named by the docs only.
#[cfg(doc)]
use svc_common::BACKEND_F_LOCAL;

#[cfg(doc)]
use super::LABEL_TOPOLOGY_ZONE;
use super::{label, Ipv4Net, LABEL_SERVICE_PROXY_NAME};

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
    /// This node's own IPv6 addresses: [`NodeContext::node_ips`] for the IPv6 family (IPv6
    /// NodePorts are served on them, an IPv6 endpoint at one of them is a local hostNetwork
    /// endpoint).
    pub node_ips6: Vec<Ipv6Addr>,
    /// kube-proxy's `--nodeport-addresses`: which of [`NodeContext::node_ips`] serve NodePorts.
    /// Empty (the default) means all of them, kube-proxy's `primary`. With prefixes, the node
    /// addresses inside any of them; and if one contains `127.0.0.1` (`127.0.0.0/8`,
    /// `0.0.0.0/0`), also `127.0.0.1` itself, the localhost NodePort that only the node's own
    /// processes reach (through the cgroup socket hooks, never through `route_localnet`).
    pub nodeport_addresses: Vec<Ipv4Net>,
    /// The IPv6 prefixes of `--nodeport-addresses`: which of [`NodeContext::node_ips6`] serve
    /// NodePorts, empty meaning all of them. Each family is restricted by its own prefixes
    /// only, as kube-proxy's `NewNodePortAddresses(family, cidrs)` keeps the CIDRs of its
    /// family and matches every address when none is left (pkg/proxy/util/nodeport_addresses.go).
    /// No IPv6 localhost NodePort: kube-proxy serves localhost NodePorts for IPv4 only (there
    /// is no `route_localnet` for IPv6).
    pub nodeport_addresses6: Vec<Ipv6Net>,
    /// `--external-ip-cidrs`, the CVE-2020-8554 mitigation (what the upstream externalip-webhook
    /// enforces at admission): when set, a `spec.externalIPs` entry outside every prefix is
    /// refused, so whoever may create Services cannot capture traffic to an arbitrary address.
    /// `None` (the default) accepts every external IP, as kube-proxy does.
    pub external_ip_cidrs: Option<Vec<Ipv4Net>>,
    /// The IPv6 prefixes of `--external-ip-cidrs`, which apply only when it is set
    /// ([`NodeContext::external_ip_cidrs`] is `Some`): an IPv6 `externalIPs` entry outside all
    /// of them is refused, so a list of IPv4 prefixes alone refuses every IPv6 external IP.
    pub external_ip_cidrs6: Vec<Ipv6Net>,
    /// This node's zone, its Node object's [`LABEL_TOPOLOGY_ZONE`] label: endpoints hinted
    /// `forZones` it are preferred (see "Topology" in the module docs). `None` (no label, or no
    /// Node object as with `--manifests`) ignores zone hints, as kube-proxy on an unlabelled node
    /// does.
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
        self.claims_labelled(label(meta, LABEL_SERVICE_PROXY_NAME))
    }

    /// [`NodeContext::claims`] of a Service whose [`LABEL_SERVICE_PROXY_NAME`] label is
    /// `proxy_name` (`None`: no such label).
    pub fn claims_labelled(&self, proxy_name: Option<&str>) -> bool {
        match self.service_proxy_name.as_deref().filter(|n| !n.is_empty()) {
            None => proxy_name.is_none(),
            Some(name) => proxy_name == Some(name),
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
                .filter(|ip| self.nodeport_addresses.iter().any(|c| c.contains(ip)))
                .collect()
        };
        if self
            .nodeport_addresses
            .iter()
            .any(|c| c.contains(&Ipv4Addr::LOCALHOST))
        {
            ips.insert(Ipv4Addr::LOCALHOST);
        }
        ips.into_iter().collect()
    }

    /// The IPv6 addresses NodePorts are served on, sorted and de-duplicated (see
    /// [`NodeContext::nodeport_addresses6`]).
    pub fn nodeport_ips6(&self) -> Vec<Ipv6Addr> {
        let ips: BTreeSet<Ipv6Addr> = self
            .node_ips6
            .iter()
            .copied()
            .filter(|ip| {
                self.nodeport_addresses6.is_empty()
                    || self.nodeport_addresses6.iter().any(|c| c.contains(ip))
            })
            .collect();
        ips.into_iter().collect()
    }
}
