//! The test topology of DESIGN §3: a kind-like cluster built from network namespaces.
//!
//! # Layout
//! ```text
//!   <prefix>ul            underlay: bridge br0, ports ul-n1, ul-n2, …, ul-ext
//!     │ veth
//!   <prefix>n1  eth0 172.18.0.2/16 (tx csum off)   … <prefix>nN eth0 172.18.0.(N+1)/16
//!     │ veth<8 hex> 10.244.1.1/32 + 10.244.1.k/32 route (kindnet ptp)
//!   <prefix>n1p1  eth0 10.244.1.2/24 noprefixroute, default via 10.244.1.1
//!   <prefix>ext   eth0 172.18.0.100/16 (tx csum off), public ranges + 10.96/16 via node 1
//! ```
//!
//! # Dual stack (opt-in: [`TopologySpec::dual_stack`])
//! Every link also carries IPv6, mirroring the IPv4 plan number for number (only fd00::/8 and
//! 2001:db8::/32):
//! ```text
//!   underlay fd00:18::/64: node N eth0 fd00:18::(N+1)/64, external client fd00:18::100/64
//!   node N: pod CIDR fd00:10:244:N::/64, fd00:10:244:N::1/128 on every host-side veth,
//!           fd00:10:244:N::(k+1)/128 route per pod via its veth, other nodes' /64 via their
//!           underlay address, net.ipv6.conf.all.forwarding=1
//!   pod k:  eth0 fd00:10:244:N::(k+1)/128, route to fd00:10:244:N::1 on eth0, default via it
//!   ext:    fd00:10:96::/112 (services) and 2001:db8::/32 (public) via its gateway node
//! ```
//! Pod k's IPv6 address ends in the same number as its IPv4 one (10.244.1.2 ↔
//! fd00:10:244:1::2): `::1` is the gateway, as `.1` is. DAD is off (`accept_dad=0` and `nodad`)
//! so addresses are usable at once, and router solicitations, RA and autoconf are off so the
//! only IPv6 chatter is neighbour discovery and MLD. [`Family`] lets a test run the same
//! steps over either family ([`Pod::addr`], [`Node::addr`], [`ext_addr`]).
//! `<prefix>` is `svct-<pid>-<counter>-`: unique per topology, and the pid lets
//! [`cleanup_stale_namespaces`] recognise leftovers of crashed runs (their pid is gone).
//!
//! # Isolation
//! Nothing here touches the root namespace: every veth pair is created by an `ip` command
//! running *inside* one of our namespaces with its peer placed directly into another
//! (`ip -n NODE link add vethX type veth peer name eth0 netns POD`), and sysctls are written
//! only from threads that entered one of our namespaces.
//!
//! # Lifetime
//! [`Topology`] owns its namespaces and every process it spawned. Dropping it (also while
//! unwinding from a panic, and when [`Topology::build`] fails half way) kills those process
//! groups and deletes the namespaces in reverse creation order; deleting a namespace destroys
//! its veth ends, and with them the peers.
//!
//! # Checksums
//! Pods keep the kernel's offload defaults, so their packets carry partial checksums; node and
//! external-client `eth0` have TX checksum offload off, so the kernel computes every checksum
//! in software on the way onto the underlay — like a NIC would — and a capture on the underlay
//! ([`crate::capture`]) sees real checksums that must all verify.

// What each child owns (see its first lines); the spec, the handles and the per-namespace
// commands (routes, links, sysctls) stay here.
mod netns;
mod process;
#[cfg(test)]
mod tests;

pub use netns::*;
pub use process::*;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, Once};

use anyhow::{ensure, Context, Result};

/// Every namespace name of ours starts with this, followed by `<pid>-<counter>-`.
pub const NS_PREFIX: &str = "svct-";
/// Where `ip netns` keeps the namespace handles.
pub const NETNS_DIR: &str = "/run/netns";
/// Address of the external client on the underlay.
pub const EXT_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 100);
/// Destinations the external client routes via its gateway node by default: the three
/// documentation ranges ("public" addresses: externalIPs, LB IPs) and the service range.
pub const EXT_ROUTED: [&str; 4] = [
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "10.96.0.0/16",
];
/// IPv6 address of the external client on the underlay (dual stack).
pub const EXT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x100);
/// The IPv6 destinations the external client routes via its gateway node (dual stack): the
/// service range and the documentation range for "public" addresses.
pub const EXT_ROUTED6: [&str; 2] = ["fd00:10:96::/112", "2001:db8::/32"];
/// The IPv6 service range (dual stack).
pub const SERVICE_CIDR6: &str = "fd00:10:96::/112";
/// The IPv6 underlay prefix (dual stack).
pub const UNDERLAY_CIDR6: &str = "fd00:18::/64";

/// An address family: lets a test run the same steps over IPv4 and IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// The family of `addr`.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// "IPv4" / "IPv6", for messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The hook whose counters this family's packets take where IPv4's take `v4`'s
    /// ([`svc_common::Hook::PodIngress`] → [`svc_common::Hook::PodIngress6`],
    /// [`svc_common::Hook::Xdp`] → [`svc_common::Hook::Xdp6`], …).
    pub fn hook(self, v4: svc_common::Hook) -> svc_common::Hook {
        use svc_common::Hook::*;
        match (self, v4) {
            (Family::V4, h) => h,
            (Family::V6, PodIngress) => PodIngress6,
            (Family::V6, PodEgress) => PodEgress6,
            (Family::V6, UplinkIngress) => UplinkIngress6,
            (Family::V6, UplinkEgress) => UplinkEgress6,
            (Family::V6, Sock) => Sock6,
            (Family::V6, Xdp) => Xdp6,
            (Family::V6, h) => h,
        }
    }

    /// The unspecified address (`0.0.0.0` / `::`).
    pub fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
            Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// The external client's address in `family` ([`EXT_IP`] / [`EXT_IP6`]).
pub fn ext_addr(family: Family) -> IpAddr {
    match family {
        Family::V4 => EXT_IP.into(),
        Family::V6 => EXT_IP6.into(),
    }
}

/// `ip:port` for either family (`[v6]:port` for IPv6), as `--target` takes it.
pub fn host_port(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// Largest number of nodes (addresses 172.18.0.2..=5; pod CIDRs 10.244.1..=4.0/24).
pub const MAX_NODES: usize = 4;

pub use crate::root::is_root;

/// For root-only tests (marked `#[cfg_attr(svc_unprivileged, ignore = "needs root (network
/// namespaces)")]`): panics unless running as root, so they fail rather than pass unrun.
#[track_caller]
pub fn require_root() {
    crate::root::require_root("network namespaces");
}

/// What to build. Pod names are labels for [`Topology::pod`]; they must be unique.
#[derive(Debug, Clone, Default)]
pub struct TopologySpec {
    /// Pod names per node; `nodes.len()` is the node count (1..=[`MAX_NODES`]).
    pub nodes: Vec<Vec<String>>,
    /// Add the external client namespace (172.18.0.100).
    pub external_client: bool,
    /// Node (1-based) the external client routes [`EXT_ROUTED`] through; 0 means node 1.
    pub ext_gateway: usize,
    /// Pods' processes in their node's cgroup (socket-level load balancing); `None`: as
    /// [`POD_SOCKET_LB_ENV`] says.
    pub pod_socket_lb: Option<bool>,
    /// Give every link IPv6 as well (see "Dual stack" in the module docs). Off by default.
    pub dual_stack: bool,
}

impl TopologySpec {
    /// An empty spec; add nodes with [`TopologySpec::node`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node carrying pods with these names.
    pub fn node(mut self, pods: &[&str]) -> Self {
        self.nodes
            .push(pods.iter().map(|p| p.to_string()).collect());
        self
    }

    /// Adds (or not) the external client.
    pub fn external_client(mut self, yes: bool) -> Self {
        self.external_client = yes;
        self
    }

    /// Routes the external client's public/service destinations through node `n` (1-based).
    pub fn ext_gateway(mut self, n: usize) -> Self {
        self.ext_gateway = n;
        self
    }

    /// Builds (or not) the IPv6 half of a dual-stack topology (module docs, "Dual stack").
    pub fn dual_stack(mut self, yes: bool) -> Self {
        self.dual_stack = yes;
        self
    }

    /// Runs pods' processes in their node's cgroup whatever [`POD_SOCKET_LB_ENV`] says.
    pub fn pod_socket_lb(mut self, yes: bool) -> Self {
        self.pod_socket_lb = Some(yes);
        self
    }
}

/// A node namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// 1-based node number N.
    pub index: usize,
    /// Namespace name (`<prefix>nN`); also the node name to give the agent.
    pub ns: String,
    /// Underlay address of `eth0`: 172.18.0.(N+1).
    pub ip: Ipv4Addr,
    /// Pod CIDR 10.244.N.0/24, as text.
    pub pod_cidr: String,
    /// Pod gateway 10.244.N.1, carried by every host-side veth of the node.
    pub gateway: Ipv4Addr,
    /// Dual stack: underlay IPv6 address fd00:18::(N+1).
    pub ipv6: Option<Ipv6Addr>,
    /// Dual stack: IPv6 pod CIDR fd00:10:244:N::/64, as text.
    pub pod_cidr6: Option<String>,
    /// Dual stack: IPv6 pod gateway fd00:10:244:N::1 on every host-side veth.
    pub gateway6: Option<Ipv6Addr>,
}

impl Node {
    /// Underlay IPv6 address. Panics unless the topology is dual stack (a test bug).
    #[track_caller]
    pub fn ip6(&self) -> Ipv6Addr {
        self.ipv6
            .unwrap_or_else(|| panic!("node {} has no IPv6: build with dual_stack", self.ns))
    }

    /// Underlay address in `family`.
    #[track_caller]
    pub fn addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.ip.into(),
            Family::V6 => self.ip6().into(),
        }
    }

    /// Pod CIDR in `family`, as text.
    #[track_caller]
    pub fn pod_cidr_of(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.pod_cidr,
            Family::V6 => self
                .pod_cidr6
                .as_deref()
                .unwrap_or_else(|| panic!("node {} has no IPv6: build with dual_stack", self.ns)),
        }
    }

    /// Pod gateway in `family`.
    #[track_caller]
    pub fn gateway_of(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.gateway.into(),
            Family::V6 => self
                .gateway6
                .unwrap_or_else(|| panic!("node {} has no IPv6: build with dual_stack", self.ns))
                .into(),
        }
    }
}

/// A pod namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Name given in the spec or to [`Topology::add_pod`].
    pub name: String,
    /// 1-based number of the node hosting it.
    pub node: usize,
    /// k: 1-based number of the pod on its node (address 10.244.N.(k+1)).
    pub index: usize,
    /// Namespace name (`<prefix>nNpk`).
    pub ns: String,
    /// Address of the pod's `eth0`.
    pub ip: Ipv4Addr,
    /// Host-side veth in the node namespace (`veth` + 8 hex digits, like kindnet's).
    pub host_veth: String,
    /// Dual stack: IPv6 address of the pod's `eth0`, fd00:10:244:N::(k+1).
    pub ipv6: Option<Ipv6Addr>,
}

impl Pod {
    /// IPv6 address. Panics unless the topology is dual stack (a test bug).
    #[track_caller]
    pub fn ip6(&self) -> Ipv6Addr {
        self.ipv6
            .unwrap_or_else(|| panic!("pod {} has no IPv6: build with dual_stack", self.name))
    }

    /// Address in `family`.
    #[track_caller]
    pub fn addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.ip.into(),
            Family::V6 => self.ip6().into(),
        }
    }
}

/// How a spawned process enters its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enter {
    /// `ip netns exec NS …`: also remounts /sys for the namespace (hides bpffs).
    #[default]
    IpNetnsExec,
    /// `nsenter --net=/run/netns/NS …`: network namespace only, so /sys/fs/bpf stays the
    /// real bpffs (needed for the agent's pins, DESIGN §3).
    Nsenter,
}

/// Options of [`Topology::spawn_opts`].
#[derive(Debug, Clone, Default)]
pub struct SpawnOpts {
    /// How to enter the namespace.
    pub enter: Enter,
    /// A cgroup v2 directory to run the process in (written to `cgroup.procs` between fork
    /// and exec, so the process never runs outside it): for cgroup socket hooks.
    pub cgroup: Option<PathBuf>,
    /// Pass stderr through to ours instead of capturing it (live agent logs while debugging).
    pub inherit_stderr: bool,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

/// Process groups spawned by a topology and not yet reaped. Killing a listed pgid is safe: an
/// unreaped child keeps its pid, so the number cannot have been reused by another process.
type Registry = Arc<Mutex<BTreeSet<u32>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cluster of namespaces; see the module docs.
pub struct Topology {
    prefix: String,
    underlay: String,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    ext: Option<String>,
    /// Every namespace created, in creation order (deleted in reverse).
    namespaces: Vec<String>,
    /// Next pod number per node (index 0 = node 1).
    next_pod: Vec<usize>,
    children: Registry,
    /// [`POD_SOCKET_LB_ENV`] was set: pods' processes run in their node's cgroup.
    pod_socket_lb: bool,
    /// The node cgroups [`Topology::node_cgroup`] created (removed on drop).
    cgroups: Mutex<BTreeSet<PathBuf>>,
    /// Built with [`TopologySpec::dual_stack`].
    dual_stack: bool,
}

/// Set to `1`, the topology runs every process it starts in a pod namespace inside the pod's
/// node cgroup ([`Topology::node_cgroup`]), the one that node's agent attaches its socket
/// hooks to (`Agent::start`), as a real node's pods are under the cgroup root the agent
/// attaches to: the pods' sockets then take socket-level load balancing. `cargo xtask test`
/// runs the ClusterIP network tests once without and once with it. Threads of the test
/// process (`run_in`) stay in the test's own cgroup and keep the per-packet path.
pub const POD_SOCKET_LB_ENV: &str = "SVC_TEST_POD_SOCKET_LB";

static COUNTER: AtomicU32 = AtomicU32::new(0);
static STALE_CLEANUP: Once = Once::new();

impl Topology {
    // --- accessors ---------------------------------------------------------------------------

    /// The unique prefix of every namespace of this topology.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The underlay namespace (holds `br0`; capture there to see node-to-node traffic).
    pub fn underlay_ns(&self) -> &str {
        &self.underlay
    }

    /// All nodes, node 1 first.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `n` (1-based). Panics if it does not exist (a test bug).
    pub fn node(&self, n: usize) -> &Node {
        assert!(
            (1..=self.nodes.len()).contains(&n),
            "node {n} does not exist ({} nodes)",
            self.nodes.len()
        );
        &self.nodes[n - 1]
    }

    /// Namespace names of all nodes, node 1 first.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.ns.clone()).collect()
    }

    /// Underlay address of node `n` (1-based).
    pub fn node_ip(&self, n: usize) -> Ipv4Addr {
        self.node(n).ip
    }

    /// Underlay IPv6 address of node `n` (1-based); panics unless dual stack.
    #[track_caller]
    pub fn node_ip6(&self, n: usize) -> Ipv6Addr {
        self.node(n).ip6()
    }

    /// Whether the topology was built dual stack.
    pub fn dual_stack(&self) -> bool {
        self.dual_stack
    }

    /// The families this topology carries: IPv4, and IPv6 when dual stack.
    pub fn families(&self) -> Vec<Family> {
        if self.dual_stack {
            Family::BOTH.to_vec()
        } else {
            vec![Family::V4]
        }
    }

    /// All pods, in creation order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The pod named `name`. Panics if there is none (a test bug).
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod named {name:?}"))
    }

    /// Address of pod `name`.
    pub fn pod_ip(&self, name: &str) -> Ipv4Addr {
        self.pod(name).ip
    }

    /// IPv6 address of pod `name`; panics unless dual stack.
    #[track_caller]
    pub fn pod_ip6(&self, name: &str) -> Ipv6Addr {
        self.pod(name).ip6()
    }

    /// Address of pod `name` in `family`.
    #[track_caller]
    pub fn pod_addr(&self, name: &str, family: Family) -> IpAddr {
        self.pod(name).addr(family)
    }

    /// Namespace of pod `name`.
    pub fn pod_ns(&self, name: &str) -> &str {
        &self.pod(name).ns
    }

    /// The external client's namespace, if built.
    pub fn ext_ns(&self) -> Option<&str> {
        self.ext.as_deref()
    }

    /// `/run/netns/<ns>`: the handle `nsenter --net=` and `setns(2)` take.
    pub fn netns_path(ns: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(ns)
    }

    // --- configuration helpers --------------------------------------------------------------

    /// Whether pods' processes take socket-level load balancing ([`POD_SOCKET_LB_ENV`]).
    pub fn pod_socket_lb(&self) -> bool {
        self.pod_socket_lb
    }

    /// The cgroup of node `n`'s processes and (with [`POD_SOCKET_LB_ENV`]) its pods'
    /// (`<cgroup2 root>/<prefix>nN`, created on first use): where node `n`'s agent attaches its
    /// socket hooks.
    pub fn node_cgroup(&self, n: usize) -> Result<PathBuf> {
        let path = crate::agent::cgroup2_root()?.join(format!("{}n{n}", self.prefix));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        lock(&self.cgroups).insert(path.clone());
        Ok(path)
    }

    /// The cgroup a process started in `ns` runs in when the caller names none: its node's,
    /// for a pod namespace with [`POD_SOCKET_LB_ENV`].
    fn default_cgroup(&self, ns: &str) -> Result<Option<PathBuf>> {
        if !self.pod_socket_lb {
            return Ok(None);
        }
        match self.pods.iter().find(|p| p.ns == ns) {
            Some(pod) => self.node_cgroup(pod.node).map(Some),
            None => Ok(None),
        }
    }

    fn check_ours(&self, ns: &str) -> Result<()> {
        ensure!(
            self.namespaces.iter().any(|n| n == ns),
            "namespace {ns:?} does not belong to this topology; refusing to touch it"
        );
        Ok(())
    }

    /// Runs `ip -n NS <args>` (args split on whitespace) and fails on a non-zero exit.
    pub fn ip(&self, ns: &str, args: &str) -> Result<()> {
        self.check_ours(ns)?;
        let mut argv = vec!["-n", ns];
        argv.extend(args.split_whitespace());
        run_ip(&argv)
    }

    /// `ip route add <route>` in `ns`, e.g. `add_route(ext, "192.0.2.0/24 via 172.18.0.3")`.
    pub fn add_route(&self, ns: &str, route: &str) -> Result<()> {
        self.ip(ns, &format!("route add {route}"))
    }

    /// `ip route replace <route>` in `ns` (to move the external client to another gateway).
    pub fn replace_route(&self, ns: &str, route: &str) -> Result<()> {
        self.ip(ns, &format!("route replace {route}"))
    }

    /// `ip route del <route>` in `ns`.
    pub fn del_route(&self, ns: &str, route: &str) -> Result<()> {
        self.ip(ns, &format!("route del {route}"))
    }

    /// Gives the route to `dst` in `ns` a lower MTU, as a router in front of a narrower link
    /// would have it: `ip route replace DST via VIA dev DEV mtu lock MTU`. Packets forwarded along
    /// it that are bigger and carry DF get ICMP fragmentation-needed with this MTU.
    pub fn set_route_mtu(
        &self,
        ns: &str,
        dst: &str,
        via: impl Into<IpAddr>,
        dev: &str,
        mtu: u32,
    ) -> Result<()> {
        let via = via.into();
        ensure!(
            (576..=65535).contains(&mtu),
            "route MTU {mtu} is outside 576..=65535"
        );
        // Locked: bpf_fib_lookup honours a route's MTU only when it is locked or
        // net.ipv4.ip_forward_use_pmtu is set (net/ipv4/route.c, ip_mtu_from_fib_result),
        // while ip_forward always does (ip_dst_mtu_maybe_forward). A locked MTU is the one
        // both paths agree on, as a router's smaller next hop would be.
        self.replace_route(ns, &format!("{dst} via {via} dev {dev} mtu lock {mtu}"))
    }

    /// `ip link set DEV mtu MTU` in one of our namespaces.
    pub fn set_link_mtu(&self, ns: &str, dev: &str, mtu: u32) -> Result<()> {
        self.ip(ns, &format!("link set {dev} mtu {mtu}"))
    }

    /// The offload features of `dev` in `ns` that are on (`ethtool -k`), by name: to check
    /// that pods keep TSO/GSO (DESIGN §1: super-packets are normal).
    pub fn offloads_on(&self, ns: &str, dev: &str) -> Result<Vec<String>> {
        let out = self.exec_ok(ns, &["ethtool", "-k", dev])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(_, v)| v.trim_start().starts_with("on"))
            .map(|(k, _)| k.trim().to_owned())
            .collect())
    }

    /// Sets a sysctl (dotted name) in one of our namespaces, from a thread that entered it:
    /// `/proc/sys/net` shows the namespace of the task that opens it.
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        self.check_ours(ns)?;
        ensure!(
            key.starts_with("net."),
            "sysctl {key}: only per-namespace net.* sysctls may be set"
        );
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        let value = value.to_owned();
        self.run_in(ns, move || {
            std::fs::write(&path, &value)
                .with_context(|| format!("writing {value} to {}", path.display()))
        })?
        .with_context(|| format!("sysctl {key} in {ns}"))
    }
}
