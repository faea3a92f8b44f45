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

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

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
}

static COUNTER: AtomicU32 = AtomicU32::new(0);
static STALE_CLEANUP: Once = Once::new();

impl Topology {
    /// Builds the topology of `spec`. On error everything created so far is removed again.
    pub fn build(spec: &TopologySpec) -> Result<Topology> {
        ensure!(
            is_root(),
            "building a test topology needs root (network namespaces)"
        );
        ensure!(
            (1..=MAX_NODES).contains(&spec.nodes.len()),
            "{} nodes requested; 1..={MAX_NODES} supported",
            spec.nodes.len()
        );
        let gw = if spec.ext_gateway == 0 {
            1
        } else {
            spec.ext_gateway
        };
        ensure!(
            gw <= spec.nodes.len(),
            "ext_gateway node {gw} does not exist"
        );
        STALE_CLEANUP.call_once(|| {
            for ns in cleanup_stale_namespaces() {
                eprintln!("topology: removed stale namespace {ns}");
            }
        });
        let prefix = format!(
            "{NS_PREFIX}{}-{}-",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut t = Topology {
            underlay: format!("{prefix}ul"),
            prefix,
            nodes: Vec::new(),
            pods: Vec::new(),
            ext: None,
            namespaces: Vec::new(),
            next_pod: vec![1; spec.nodes.len()],
            children: Arc::default(),
        };
        // From here on an early return drops `t`, which deletes what exists so far.
        let prefix = t.prefix.clone();
        t.populate(spec, gw)
            .with_context(|| format!("building topology {prefix}"))?;
        Ok(t)
    }

    fn populate(&mut self, spec: &TopologySpec, gw: usize) -> Result<()> {
        let t = self;
        let ul = t.underlay.clone();
        t.add_ns(&ul)?;
        t.ip(&ul, "link add br0 type bridge")?;
        t.ip(&ul, "link set br0 up")?;

        for n in 1..=spec.nodes.len() {
            t.add_node(n, spec.nodes.len())?;
        }
        if spec.external_client {
            t.add_ext(gw)?;
        }
        for (i, pods) in spec.nodes.iter().enumerate() {
            for name in pods {
                t.add_pod(i + 1, name)?;
            }
        }
        Ok(())
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        run_ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        self.ip(ns, "link set lo up")
    }

    /// Creates an underlay-attached namespace: `eth0` with `addr`/16, its peer `ul_port` in br0,
    /// TX checksum offload off.
    fn attach_underlay(&mut self, ns: &str, ul_port: &str, addr: Ipv4Addr) -> Result<()> {
        let ul = self.underlay.clone();
        self.ip(
            &ul,
            &format!("link add {ul_port} type veth peer name eth0 netns {ns}"),
        )?;
        self.ip(&ul, &format!("link set {ul_port} master br0"))?;
        self.ip(&ul, &format!("link set {ul_port} up"))?;
        self.ip(ns, &format!("addr add {addr}/16 dev eth0"))?;
        self.ip(ns, "link set eth0 up")?;
        // DESIGN §3: the underlay behaves like a wire behind a NIC without checksum offload.
        self.exec_ok(ns, &["ethtool", "-K", "eth0", "tx", "off"])?;
        Ok(())
    }

    fn add_node(&mut self, n: usize, count: usize) -> Result<()> {
        let ns = format!("{}n{n}", self.prefix);
        let ip = node_ip(n);
        self.add_ns(&ns)?;
        self.attach_underlay(&ns, &format!("ul-n{n}"), ip)?;
        self.sysctl(&ns, "net.ipv4.ip_forward", "1")?;
        for m in (1..=count).filter(|&m| m != n) {
            self.ip(
                &ns,
                &format!("route add 10.244.{m}.0/24 via {} dev eth0", node_ip(m)),
            )?;
        }
        self.nodes.push(Node {
            index: n,
            ns,
            ip,
            pod_cidr: format!("10.244.{n}.0/24"),
            gateway: Ipv4Addr::new(10, 244, n as u8, 1),
        });
        Ok(())
    }

    fn add_ext(&mut self, gw: usize) -> Result<()> {
        let ns = format!("{}ext", self.prefix);
        self.add_ns(&ns)?;
        self.attach_underlay(&ns, "ul-ext", EXT_IP)?;
        for dst in EXT_ROUTED {
            self.add_route(&ns, &format!("{dst} via {} dev eth0", node_ip(gw)))?;
        }
        self.ext = Some(ns);
        Ok(())
    }

    /// Adds a pod to node `node` (1-based), kindnet/CNI-ptp style. Works at any time, also
    /// after an agent started (to test that it attaches to new veths).
    pub fn add_pod(&mut self, node: usize, name: &str) -> Result<Pod> {
        ensure!(
            (1..=self.nodes.len()).contains(&node),
            "add_pod {name}: node {node} does not exist"
        );
        ensure!(
            self.pods.iter().all(|p| p.name != name),
            "add_pod {name}: a pod with this name exists"
        );
        let k = self.next_pod[node - 1];
        ensure!(k <= 253, "node {node} is full");
        self.next_pod[node - 1] += 1;
        let node_ns = self.nodes[node - 1].ns.clone();
        let gw = self.nodes[node - 1].gateway;
        let ns = format!("{}n{node}p{k}", self.prefix);
        let ip = Ipv4Addr::new(10, 244, node as u8, (k + 1) as u8);
        // kindnet names host veths `veth` + 8 random hex digits; a hash of the (unique)
        // namespace name gives the same shape, reproducibly. ≤ 15 chars (IFNAMSIZ - 1).
        let mut salt = 0u32;
        let host_veth = loop {
            let v = format!("veth{:08x}", fnv1a(&ns, salt));
            if self.pods.iter().all(|p| p.node != node || p.host_veth != v) {
                break v;
            }
            salt += 1;
        };
        self.add_ns(&ns)?;
        // Created inside the node namespace with the peer placed straight into the pod:
        // no interface ever exists in the root namespace.
        self.ip(
            &node_ns,
            &format!("link add {host_veth} type veth peer name eth0 netns {ns}"),
        )?;
        self.ip(&ns, &format!("addr add {ip}/24 dev eth0 noprefixroute"))?;
        self.ip(&ns, "link set eth0 up")?;
        self.ip(&ns, &format!("route add {gw} dev eth0 scope link"))?;
        self.ip(
            &ns,
            &format!("route add 10.244.{node}.0/24 via {gw} dev eth0 src {ip}"),
        )?;
        self.ip(&ns, &format!("route add default via {gw} dev eth0"))?;
        self.ip(&node_ns, &format!("addr add {gw}/32 dev {host_veth}"))?;
        self.ip(&node_ns, &format!("link set {host_veth} up"))?;
        self.ip(
            &node_ns,
            &format!("route add {ip}/32 dev {host_veth} scope link"),
        )?;
        let pod = Pod {
            name: name.to_owned(),
            node,
            index: k,
            ns,
            ip,
            host_veth,
        };
        self.pods.push(pod.clone());
        Ok(pod)
    }

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
        via: Ipv4Addr,
        dev: &str,
        mtu: u32,
    ) -> Result<()> {
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

    /// Runs `f` on a fresh thread that entered `ns` with `setns(2)`; sockets `f` creates
    /// live in `ns`. The thread ends with `f`, so no other code ever runs in the namespace
    /// by accident (a network namespace belongs to a thread, not the process).
    pub fn run_in<R: Send>(&self, ns: &str, f: impl FnOnce() -> R + Send) -> Result<R> {
        self.check_ours(ns)?;
        let path = Self::netns_path(ns);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                enter_netns(&file, &path)?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("thread running in {ns} panicked"))?
        })
    }

    /// Like [`Topology::run_in`] but in the background: for in-process servers. Join the
    /// handle (after stopping what `f` runs) before the topology drops.
    pub fn spawn_thread_in<R: Send + 'static>(
        &self,
        ns: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<JoinHandle<Result<R>>> {
        self.check_ours(ns)?;
        let path = Self::netns_path(ns);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(std::thread::spawn(move || {
            enter_netns(&file, &path)?;
            Ok(f())
        }))
    }

    // --- processes ---------------------------------------------------------------------------

    /// Runs `cmd` in `ns` via `ip netns exec` and returns its output, whatever the exit status.
    pub fn exec(&self, ns: &str, cmd: &[&str]) -> Result<Output> {
        self.check_ours(ns)?;
        ensure!(!cmd.is_empty(), "exec in {ns}: empty command");
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {cmd:?} in {ns}"))
    }

    /// Like [`Topology::exec`] but fails on a non-zero exit (with stderr in the error);
    /// returns stdout.
    pub fn exec_ok(&self, ns: &str, cmd: &[&str]) -> Result<String> {
        let out = self.exec(ns, cmd)?;
        ensure!(
            out.status.success(),
            "{cmd:?} in {ns} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8(out.stdout).with_context(|| format!("stdout of {cmd:?} in {ns}"))
    }

    /// Starts `cmd` in `ns` via `ip netns exec`. See [`NsChild`].
    pub fn spawn(&self, ns: &str, cmd: &[&str]) -> Result<NsChild> {
        self.spawn_opts(ns, cmd, &SpawnOpts::default())
    }

    /// Starts `svc-probe serve --id POD ARGS…` in each pod of `pods` (e.g. `args` =
    /// `["--tcp", "8080"]`) and waits until each says it is ready.
    pub fn serve(&self, pods: &[&str], args: &[&str]) -> Result<Vec<NsChild>> {
        let probe = crate::agent::workspace_bin("svc-probe")?;
        let probe = probe.to_str().context("svc-probe path is not UTF-8")?;
        let mut servers = Vec::new();
        for pod in pods {
            let mut cmd = vec![probe, "serve", "--id", pod];
            cmd.extend_from_slice(args);
            let mut s = self
                .spawn(self.pod_ns(pod), &cmd)
                .with_context(|| format!("starting a server in {pod}"))?;
            s.wait_for_line(Duration::from_secs(5), |l| l == "ready")
                .with_context(|| format!("server in {pod} ready"))?;
            servers.push(s);
        }
        Ok(servers)
    }

    /// Starts `cmd` in `ns` via `nsenter --net=/run/netns/NS` (the agent: keeps bpffs visible).
    pub fn spawn_nsenter(&self, ns: &str, cmd: &[&str]) -> Result<NsChild> {
        self.spawn_opts(
            ns,
            cmd,
            &SpawnOpts {
                enter: Enter::Nsenter,
                ..SpawnOpts::default()
            },
        )
    }

    /// Starts `cmd` in `ns` in its own process group, with stdout (and unless told otherwise
    /// stderr) captured. The topology kills the group when it drops if the caller has not
    /// reaped the process by then.
    pub fn spawn_opts(&self, ns: &str, cmd: &[&str], opts: &SpawnOpts) -> Result<NsChild> {
        self.check_ours(ns)?;
        ensure!(!cmd.is_empty(), "spawn in {ns}: empty command");
        let mut c = match opts.enter {
            // Both exec the command in place (no fork), so the pid we get is the command's.
            Enter::IpNetnsExec => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]);
                c
            }
            Enter::Nsenter => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", Self::netns_path(ns).display()));
                c
            }
        };
        c.args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if opts.inherit_stderr {
                Stdio::inherit()
            } else {
                Stdio::piped()
            })
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            // Own group: one kill(-pgid) also reaches anything the command forks.
            .process_group(0);
        let procs = match &opts.cgroup {
            Some(cg) => {
                let p = cg.join("cgroup.procs");
                Some(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .with_context(|| format!("opening {}", p.display()))?,
                )
            }
            None => None,
        };
        if let Some(procs) = &procs {
            let fd = procs.as_raw_fd();
            // SAFETY: the closure runs between fork and exec and only calls write(2), which is
            // async-signal-safe; `fd` stays open in the child until exec (it is CLOEXEC).
            // Writing "0" to cgroup.procs moves the writing process (cgroup v2).
            unsafe {
                c.pre_exec(move || {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let what = format!("{cmd:?} in {ns}");
        // Register under the lock so a concurrent drop cannot miss the new child.
        let mut reg = lock(&self.children);
        let mut child = c.spawn().with_context(|| format!("spawning {what}"))?;
        reg.insert(child.id());
        drop(reg);
        Ok(NsChild::new(&mut child, what, self.children.clone()).attach(child))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Hold the registry lock until every group is killed and reaped, so an NsChild living
        // on elsewhere cannot reap (and free the pid) between our kill and our waitpid.
        let mut reg = lock(&self.children);
        let pgids = std::mem::take(&mut *reg);
        for &pgid in &pgids {
            // SAFETY: plain syscall. The pgid is an unreaped child of ours (see Registry).
            if unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    eprintln!("topology: killing process group {pgid}: {e}");
                }
            }
        }
        for &pgid in &pgids {
            let mut status = 0;
            // SAFETY: plain syscall on our own child; reaps it. An NsChild still holding it
            // finds its pid gone from the registry and leaves it alone.
            if unsafe { libc::waitpid(pgid as i32, &mut status, 0) } < 0 {
                let e = std::io::Error::last_os_error();
                eprintln!("topology: reaping {pgid}: {e}");
            }
        }
        drop(reg);
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = run_ip(&["netns", "delete", ns]) {
                eprintln!("topology: deleting namespace {ns}: {e:#}");
            }
        }
    }
}

fn node_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 18, 0, (n + 1) as u8)
}

/// 32 bits of FNV-1a over `salt` and `s`: a short, stable interface-name suffix.
fn fnv1a(s: &str, salt: u32) -> u32 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(&salt.to_le_bytes());
    h.write(s.as_bytes());
    h.finish() as u32
}

fn enter_netns(file: &File, path: &Path) -> Result<()> {
    // SAFETY: plain syscall on an fd we own; affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns({})", path.display()));
    }
    Ok(())
}

/// Runs `ip <args>`, failing with its stderr on a non-zero exit.
fn run_ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes namespaces left by earlier runs that crashed (name `svct-<pid>-…` whose pid no
/// longer exists). Namespaces of live processes — other tests running now — are left alone.
/// Returns the names removed. Processes still inside such a namespace are not touched (they
/// are not ours to kill); the namespace then lingers unnamed until they exit.
pub fn cleanup_stale_namespaces() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        match run_ip(&["netns", "delete", &name]) {
            Ok(()) => removed.push(name),
            Err(e) => eprintln!("topology: removing stale namespace {name}: {e:#}"),
        }
    }
    removed
}

/// Namespaces of ours (`svct-` prefix) that exist now; for leak checks.
pub fn list_our_namespaces(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<String> = dir
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// What a finished [`NsChild`] left.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// All stdout lines (including any consumed by [`NsChild::wait_for_line`]).
    pub stdout: String,
    /// Captured stderr (empty when inherited).
    pub stderr: String,
}

/// A process running in a namespace. stdout is read by a thread into lines (so
/// [`NsChild::wait_for_line`] can wait for "ready" with a deadline); stderr is collected
/// (tail kept) for error messages. Dropping it kills the process group and reaps it.
pub struct NsChild {
    child: Option<Child>,
    what: String,
    pid: u32,
    lines: Receiver<String>,
    stdout: Vec<String>,
    stdout_thread: Option<JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
    registry: Registry,
}

/// How long [`NsChild::finish`] waits for the output pipes to close after the process exited.
const PIPE_DRAIN: Duration = Duration::from_secs(2);
/// Captured stderr keeps at most this much (the tail: the end of a log explains a failure).
const STDERR_CAP: usize = 256 * 1024;

impl NsChild {
    fn new(child: &mut Child, what: String, registry: Registry) -> NsChild {
        let (tx, rx) = mpsc::channel();
        let stdout_thread = child.stdout.take().map(|out| {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_thread = child.stderr.take().map(|mut err| {
            let buf = stderr.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = err.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let mut b = lock(&buf);
                    b.push_str(&String::from_utf8_lossy(&chunk[..n]));
                    if b.len() > STDERR_CAP {
                        let mut cut = b.len() - STDERR_CAP / 2;
                        while !b.is_char_boundary(cut) {
                            cut += 1;
                        }
                        b.drain(..cut);
                    }
                }
            })
        });
        NsChild {
            child: None,
            pid: child.id(),
            what,
            lines: rx,
            stdout: Vec::new(),
            stdout_thread,
            stderr,
            stderr_thread,
            registry,
        }
    }

    fn attach(mut self, child: Child) -> NsChild {
        self.child = Some(child);
        self
    }

    /// Process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Captured stderr so far.
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// stdout lines received so far.
    pub fn stdout_lines(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.stdout.push(l);
        }
        &self.stdout
    }

    /// Waits until a stdout line satisfies `pred` (e.g. `|l| l == "ready"`) and returns it.
    /// Fails at the deadline, or early if the process exits, with its stderr in the error.
    pub fn wait_for_line(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(l) => {
                    self.stdout.push(l.clone());
                    if pred(&l) {
                        return Ok(l);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_timeout(Duration::from_secs(2)).ok();
                    bail!(
                        "{} closed stdout (exit {status:?}) before the expected line; stderr: {}",
                        self.what,
                        self.stderr().trim()
                    );
                }
                Err(RecvTimeoutError::Timeout) if left.is_zero() => bail!(
                    "{}: expected line not seen within {timeout:?}; stdout: {:?}; stderr: {}",
                    self.what,
                    self.stdout,
                    self.stderr().trim()
                ),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Sends `sig` to the process group (e.g. `libc::SIGTERM` to stop `svc-probe hold` or the
    /// agent cleanly).
    pub fn signal(&self, sig: i32) -> Result<()> {
        // Under the lock: the pid is in the registry only while nobody has reaped it, so the
        // group id cannot belong to an unrelated process.
        let reg = lock(&self.registry);
        if self.child.is_none() || !reg.contains(&self.pid) {
            bail!("{}: already reaped", self.what);
        }
        // SAFETY: plain syscall; the group leader is our unreaped child (checked above).
        if unsafe { libc::kill(-(self.pid as i32), sig) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("signal {sig} to {}", self.what));
        }
        Ok(())
    }

    /// Polls for exit until `timeout`; reaps and unregisters the process when it exited.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self
            .child
            .as_mut()
            .with_context(|| format!("{}: already reaped", self.what))?;
        let mut step = Duration::from_millis(1);
        loop {
            // Unregister before reaping: once reaped, the pid may be reused and must not be
            // killed by the topology's drop.
            let mut reg = lock(&self.registry);
            match child.try_wait() {
                Ok(Some(status)) => {
                    reg.remove(&self.pid);
                    drop(reg);
                    self.child = None;
                    return Ok(status);
                }
                Ok(None) => {}
                Err(e) => {
                    // ECHILD: the topology's drop reaped it already.
                    reg.remove(&self.pid);
                    self.child = None;
                    return Err(e).with_context(|| format!("waiting for {}", self.what));
                }
            }
            drop(reg);
            if Instant::now() >= deadline {
                bail!(
                    "{} still running after {timeout:?}; stderr: {}",
                    self.what,
                    self.stderr().trim()
                );
            }
            std::thread::sleep(step.min(deadline.saturating_duration_since(Instant::now())));
            step = (step * 2).min(Duration::from_millis(50));
        }
    }

    /// Waits for exit (up to `timeout`, then kills) and returns status and all output.
    pub fn finish(mut self, timeout: Duration) -> Result<Finished> {
        let status = match self.wait_timeout(timeout) {
            Ok(s) => s,
            Err(e) => {
                self.kill();
                return Err(e);
            }
        };
        Ok(self.collect(status))
    }

    /// SIGTERM, then wait up to `timeout` (then SIGKILL); returns status and all output.
    pub fn terminate(self, timeout: Duration) -> Result<Finished> {
        self.signal(libc::SIGTERM)?;
        self.finish(timeout)
    }

    fn collect(&mut self, status: ExitStatus) -> Finished {
        // The pipes reach EOF when the last holder exits; join the readers so no line is lost.
        // A background grandchild may keep a pipe open indefinitely, so wait a bounded time
        // and then leave the reader detached rather than hang the test.
        let deadline = Instant::now() + PIPE_DRAIN;
        for t in [self.stdout_thread.take(), self.stderr_thread.take()]
            .into_iter()
            .flatten()
        {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                eprintln!(
                    "{}: output pipe still open after exit; not waiting",
                    self.what
                );
            }
        }
        while let Ok(l) = self.lines.try_recv() {
            self.stdout.push(l);
        }
        let mut stdout = self.stdout.join("\n");
        stdout.push('\n');
        Finished {
            status,
            stdout,
            stderr: self.stderr(),
        }
    }

    /// SIGKILLs the process group and reaps the process.
    pub fn kill(&mut self) {
        if self.child.is_some() {
            let _ = self.signal(libc::SIGKILL);
            let _ = self.wait_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{verify_checksums, Capture};
    use crate::probe::{self, ServeConfig, Server, TcpClientConfig, UdpClientConfig, UdpSockets};
    use std::net::SocketAddrV4;

    fn serve_in(t: &Topology, pod: &str, id: &str) -> Server {
        t.run_in(t.pod_ns(pod), || {
            Server::start(ServeConfig {
                id: id.into(),
                tcp: vec![8080],
                udp: vec![5353],
                bind: Ipv4Addr::UNSPECIFIED,
            })
        })
        .expect("enter pod namespace")
        .expect("start server")
    }

    /// 2 nodes × 2 pods + external client: pod → pod across nodes over the underlay (with a
    /// capture there whose checksums must all verify), a pod added later, and no namespace
    /// left after drop.
    #[test]
    #[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
    fn two_nodes_cross_node_traffic_and_cleanup() {
        require_root();
        let spec = TopologySpec::new()
            .node(&["a1", "a2"])
            .node(&["b1", "b2"])
            .external_client(true);
        let mut t = Topology::build(&spec).expect("build topology");
        let prefix = t.prefix().to_owned();
        assert_eq!(list_our_namespaces(&prefix).len(), 1 + 2 + 4 + 1);
        assert_eq!(t.pod_ip("b2"), Ipv4Addr::new(10, 244, 2, 3));
        assert_eq!(t.node_ip(2), Ipv4Addr::new(172, 18, 0, 3));
        assert!(t.pod("a1").host_veth.starts_with("veth") && t.pod("a1").host_veth.len() <= 15);
        let routes = t.exec_ok(t.pod_ns("a2"), &["ip", "route"]).unwrap();
        assert!(
            routes.contains("default via 10.244.1.1 dev eth0"),
            "{routes}"
        );
        assert!(
            routes.contains("10.244.1.0/24 via 10.244.1.1 dev eth0 src 10.244.1.3"),
            "{routes}"
        );
        let tx = t
            .exec_ok(&t.node(1).ns, &["ethtool", "-k", "eth0"])
            .unwrap();
        assert!(tx.contains("tx-checksumming: off"), "{tx}");

        let cap = Capture::start(&t, t.underlay_ns(), "br0").expect("start capture");
        let srv = serve_in(&t, "b2", "b2");
        let target = SocketAddrV4::new(t.pod_ip("b2"), 8080);
        let tcp = t
            .run_in(t.pod_ns("a1"), || {
                probe::run_tcp(&TcpClientConfig {
                    target,
                    count: 20,
                    timeout: Duration::from_secs(2),
                    parallel: 2,
                })
            })
            .unwrap()
            .unwrap();
        assert_eq!((tcp.ok, tcp.failed), (20, 0), "{tcp:?}");
        assert_eq!(tcp.by_backend.get("b2"), Some(&20));
        // No NAT between pods: the backend sees the client pod's own address.
        assert!(tcp
            .peers_seen_by_backend
            .iter()
            .all(|p| p.starts_with("10.244.1.2:")));

        let udp_target = SocketAddrV4::new(t.pod_ip("b2"), 5353);
        let udp = t
            .run_in(t.pod_ns("a1"), || {
                probe::run_udp(&UdpClientConfig {
                    target: udp_target,
                    count: 10,
                    timeout: Duration::from_secs(2),
                    sockets: UdpSockets::PerRequest,
                })
            })
            .unwrap()
            .unwrap();
        assert_eq!((udp.ok, udp.failed), (10, 0), "{udp:?}");
        assert_eq!(udp.reply_from, vec![udp_target.to_string()]);

        // A pod added after the fact is routed like the others.
        let late = t.add_pod(1, "late").unwrap();
        assert_eq!(late.ip, Ipv4Addr::new(10, 244, 1, 4));
        let s = t
            .run_in(&late.ns, || {
                probe::run_tcp(&TcpClientConfig {
                    target,
                    count: 3,
                    timeout: Duration::from_secs(2),
                    parallel: 1,
                })
            })
            .unwrap()
            .unwrap();
        assert_eq!((s.ok, s.failed), (3, 0), "{s:?}");
        assert_eq!(s.peers_seen_by_backend.len(), 3);
        assert!(s.peers_seen_by_backend[0].starts_with("10.244.1.4:"));

        // The external client reaches a node address over the underlay.
        let node_srv = t
            .run_in(&t.node(2).ns.clone(), || {
                Server::start(ServeConfig {
                    id: "node2".into(),
                    tcp: vec![9000],
                    udp: vec![],
                    bind: Ipv4Addr::UNSPECIFIED,
                })
            })
            .unwrap()
            .unwrap();
        let node_target = SocketAddrV4::new(t.node_ip(2), 9000);
        let s = t
            .run_in(t.ext_ns().unwrap(), || {
                probe::run_tcp(&TcpClientConfig {
                    target: node_target,
                    count: 2,
                    timeout: Duration::from_secs(2),
                    parallel: 1,
                })
            })
            .unwrap()
            .unwrap();
        assert_eq!((s.ok, s.failed), (2, 0), "{s:?}");
        assert!(s.peers_seen_by_backend[0].starts_with("172.18.0.100:"));
        node_srv.stop();
        srv.stop();

        let file = cap.stop().expect("stop capture");
        let report = verify_checksums(file.path()).unwrap();
        eprintln!("underlay capture: {report}");
        assert_eq!(report.packets, file.captured());
        assert!(report.tcp >= 20 * 6, "capture saw too little: {report}");
        assert!(report.udp >= 20, "{report}");
        assert!(report.is_clean(), "{report}");

        drop(t);
        assert_eq!(list_our_namespaces(&prefix), Vec::<String>::new());
    }

    /// Spawned processes are killed and namespaces deleted when the topology drops, also
    /// when a build fails half way.
    #[test]
    #[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
    fn drop_kills_children_and_failed_build_cleans_up() {
        require_root();
        let t = Topology::build(&TopologySpec::new().node(&["p"])).unwrap();
        let prefix = t.prefix().to_owned();
        let mut c = t
            .spawn(t.pod_ns("p"), &["sh", "-c", "echo ready; exec sleep 600"])
            .unwrap();
        c.wait_for_line(Duration::from_secs(5), |l| l == "ready")
            .unwrap();
        let pid = c.pid();
        std::mem::forget(c); // leaked on purpose: the topology must still kill it
        drop(t);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "child {pid} survived"
        );
        assert_eq!(list_our_namespaces(&prefix), Vec::<String>::new());

        let bad = TopologySpec::new().node(&["x", "x"]);
        let err = format!(
            "{:#}",
            Topology::build(&bad).err().expect("duplicate pod names")
        );
        let prefix = err
            .strip_prefix("building topology ")
            .and_then(|r| r.split(':').next())
            .unwrap_or_else(|| panic!("error names the prefix: {err}"));
        assert!(prefix.starts_with(NS_PREFIX), "{err}");
        assert_eq!(list_our_namespaces(prefix), Vec::<String>::new());
    }

    /// Negative control for the checksum check: with TX checksum offload left *on* at node 1's
    /// `eth0`, packets from node 1's pods cross the underlay veth still CHECKSUM_PARTIAL, so the
    /// capture sees pseudo-header-only TCP checksums — exactly what a datapath bug would leave
    /// — and the verifier must flag them. (The receiver still accepts them: over veth the
    /// partial state travels with the skb, which is why DESIGN §3 turns offload off.)
    #[test]
    #[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
    fn verifier_flags_partial_checksums_when_offload_is_on() {
        require_root();
        let t = Topology::build(&TopologySpec::new().node(&["c"]).node(&["s"])).unwrap();
        t.exec_ok(&t.node(1).ns, &["ethtool", "-K", "eth0", "tx", "on"])
            .unwrap();
        let cap = Capture::start(&t, t.underlay_ns(), "br0").unwrap();
        let srv = serve_in(&t, "s", "s");
        let target = SocketAddrV4::new(t.pod_ip("s"), 8080);
        let s = t
            .run_in(t.pod_ns("c"), || {
                probe::run_tcp(&TcpClientConfig {
                    target,
                    count: 5,
                    timeout: Duration::from_secs(2),
                    parallel: 1,
                })
            })
            .unwrap()
            .unwrap();
        assert_eq!((s.ok, s.failed), (5, 0), "{s:?}");
        srv.stop();
        let report = verify_checksums(cap.stop().unwrap().path()).unwrap();
        assert!(report.bad_ip.is_empty(), "{report}");
        assert!(
            report
                .bad_l4
                .iter()
                .any(|d| d.contains("TCP 10.244.1.2 -> 10.244.2.2")),
            "partial checksums from node 1 not flagged: {report}"
        );
        assert!(
            !report
                .bad_l4
                .iter()
                .any(|d| d.contains("TCP 10.244.2.2 -> ")),
            "node 2 (offload off) must send real checksums: {report}"
        );
    }

    /// The `svc-probe` binary end to end, as integration tests use it: servers in two pods,
    /// TCP/UDP clients and a held connection (stopped by SIGTERM) in a third.
    #[test]
    #[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
    fn svc_probe_binary_in_pods() {
        require_root();
        // Built with the package (`cargo test -p tests` builds it; `--lib` alone does not).
        let bin = probe::probe_bin().unwrap_or_else(|e| panic!("{e:#}"));
        let bin = bin.to_str().expect("utf-8 path").to_owned();
        let t = Topology::build(&TopologySpec::new().node(&["a", "client"]).node(&["b"])).unwrap();
        let mut servers = Vec::new();
        for name in ["a", "b"] {
            let mut s = t
                .spawn(
                    t.pod_ns(name),
                    &[&bin, "serve", "--id", name, "--tcp", "80,81", "--udp", "53"],
                )
                .unwrap();
            s.wait_for_line(Duration::from_secs(5), |l| l == "ready")
                .unwrap();
            servers.push(s);
        }
        let b = format!("{}:81", t.pod_ip("b"));
        let out = t
            .exec_ok(
                t.pod_ns("client"),
                &[
                    &bin,
                    "tcp",
                    "--target",
                    &b,
                    "--count",
                    "20",
                    "--parallel",
                    "4",
                ],
            )
            .unwrap();
        let s = probe::Summary::from_output(&out).unwrap();
        assert_eq!((s.ok, s.failed), (20, 0), "{s:?}");
        assert_eq!(s.by_backend.get("b"), Some(&20));
        assert_eq!(s.reply_from, vec![b.clone()]);

        let a = format!("{}:53", t.pod_ip("a"));
        let out = t
            .exec_ok(
                t.pod_ns("client"),
                &[
                    &bin,
                    "udp",
                    "--target",
                    &a,
                    "--count",
                    "5",
                    "--sockets",
                    "one",
                ],
            )
            .unwrap();
        let s = probe::Summary::from_output(&out).unwrap();
        assert_eq!((s.ok, s.by_backend.get("a")), (5, Some(&5)), "{s:?}");
        assert_eq!(
            s.peers_seen_by_backend.len(),
            1,
            "one socket, one flow: {s:?}"
        );

        let a80 = format!("{}:80", t.pod_ip("a"));
        let mut hold = t
            .spawn(
                t.pod_ns("client"),
                &[
                    &bin,
                    "hold",
                    "--target",
                    &a80,
                    "--conns",
                    "3",
                    "--duration-s",
                    "60",
                    "--interval-ms",
                    "20",
                ],
            )
            .unwrap();
        hold.wait_for_line(Duration::from_secs(5), |l| l == "ready")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200)); // let a few rounds of exchanges happen
        let fin = hold.terminate(Duration::from_secs(5)).unwrap();
        assert!(fin.status.success(), "{fin:?}");
        let h = probe::HoldSummary::from_output(&fin.stdout).unwrap();
        assert!(
            h.stopped_early && h.broken == 0 && h.switched == 0 && h.ok >= 6,
            "{h:?}"
        );
        assert!(h.conns.iter().all(|c| c.backends == ["a"]), "{h:?}");

        // Targets outside the address plan are refused before any packet is sent.
        let out = t
            .exec(t.pod_ns("client"), &[&bin, "tcp", "--target", "8.8.8.8:53"])
            .unwrap();
        assert!(!out.status.success());
        for s in servers {
            let fin = s.terminate(Duration::from_secs(5)).unwrap();
            assert!(fin.status.success(), "serve exits 0 on SIGTERM: {fin:?}");
        }
    }

    /// Leftovers of a crashed run (a prefix whose pid is gone) are removed; namespaces of a
    /// live process are not.
    #[test]
    #[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
    fn stale_namespaces_of_dead_pids_are_removed() {
        require_root();
        let mut dead = Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        let stale = format!("{NS_PREFIX}{dead_pid}-0-ul");
        let live = format!("{NS_PREFIX}{}-999-ul", std::process::id());
        run_ip(&["netns", "add", &stale]).unwrap();
        run_ip(&["netns", "add", &live]).unwrap();
        cleanup_stale_namespaces();
        let left = list_our_namespaces(NS_PREFIX);
        let _ = run_ip(&["netns", "delete", &live]);
        let _ = run_ip(&["netns", "delete", &stale]);
        assert!(!left.contains(&stale), "{left:?}");
        assert!(left.contains(&live), "{left:?}");
    }

    /// `SpawnOpts::cgroup` puts the process into the cgroup before it runs (for cgroup
    /// socket hooks, DESIGN §3).
    #[test]
    #[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
    fn spawn_into_cgroup() {
        require_root();
        // Required, not optional: every agent attaches its socket hooks to a cgroup v2.
        let root = crate::agent::cgroup2_root().unwrap_or_else(|e| panic!("{e:#}"));
        let t = Topology::build(&TopologySpec::new().node(&[])).unwrap();
        let name = format!("{}cgtest", t.prefix());
        let cg = root.join(&name);
        std::fs::create_dir(&cg).unwrap();
        let opts = SpawnOpts {
            enter: Enter::Nsenter,
            cgroup: Some(cg.clone()),
            ..SpawnOpts::default()
        };
        let res = t
            .spawn_opts(&t.node(1).ns, &["cat", "/proc/self/cgroup"], &opts)
            .and_then(|c| c.finish(Duration::from_secs(5)));
        std::fs::remove_dir(&cg).unwrap();
        let fin = res.unwrap();
        assert!(fin.stdout.contains(&format!("0::/{name}")), "{fin:?}");
    }

    /// The largest topology: every node routes every other node's pod CIDR.
    #[test]
    #[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
    fn four_nodes_full_mesh() {
        require_root();
        let started = Instant::now();
        let spec = TopologySpec::new()
            .node(&["p1"])
            .node(&["p2"])
            .node(&["p3"])
            .node(&["p4"])
            .external_client(true)
            .ext_gateway(3);
        let t = Topology::build(&spec).unwrap();
        eprintln!("4-node topology built in {:?}", started.elapsed());
        let ext_routes = t.exec_ok(t.ext_ns().unwrap(), &["ip", "route"]).unwrap();
        assert!(
            ext_routes.contains("10.96.0.0/16 via 172.18.0.4 dev eth0"),
            "{ext_routes}"
        );
        let servers: Vec<Server> = ["p1", "p4"].iter().map(|p| serve_in(&t, p, p)).collect();
        for (from, to) in [("p4", "p1"), ("p2", "p4"), ("p3", "p1")] {
            let target = SocketAddrV4::new(t.pod_ip(to), 8080);
            let s = t
                .run_in(t.pod_ns(from), || {
                    probe::run_tcp(&TcpClientConfig {
                        target,
                        count: 2,
                        timeout: Duration::from_secs(2),
                        parallel: 1,
                    })
                })
                .unwrap()
                .unwrap();
            assert_eq!(s.by_backend.get(to), Some(&2), "{from} -> {to}: {s:?}");
        }
        drop(servers);
    }
}
