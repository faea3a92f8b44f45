//! Building and tearing down the namespaces: [`Topology::build`] (underlay, nodes, pods, the
//! external client), [`Topology::add_pod`], the drop that kills every process group and deletes
//! every namespace, and [`cleanup_stale_namespaces`] for the leftovers of crashed runs.

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::Path,
    process::{Command, Stdio},
    sync::{atomic::Ordering, Arc},
};

use anyhow::{bail, ensure, Context, Result};

use super::{
    lock, Node, Pod, Topology, TopologySpec, COUNTER, EXT_IP, EXT_IP6, EXT_ROUTED, EXT_ROUTED6,
    MAX_NODES, NETNS_DIR, NS_PREFIX, STALE_CLEANUP,
};
use crate::root::is_root;

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
            pod_socket_lb: spec
                .pod_socket_lb
                .unwrap_or_else(|| std::env::var(super::POD_SOCKET_LB_ENV).is_ok_and(|v| v == "1")),
            cgroups: std::sync::Mutex::default(),
            dual_stack: spec.dual_stack,
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
        if self.dual_stack {
            // Before any interface exists: a new device (a veth end created in or moved into
            // this namespace) takes the namespace's `default` settings.
            self.ipv6_sysctls(ns)?;
        }
        self.ip(ns, "link set lo up")
    }

    /// IPv6 on and quiet in `ns` (dual stack): enabled whatever the namespace was born with,
    /// addresses usable at once (no DAD), no router solicitations, RA or autoconf (our routes
    /// are static, as the IPv4 ones are). Neighbour discovery and MLD remain, as on any link.
    fn ipv6_sysctls(&self, ns: &str) -> Result<()> {
        for scope in ["all", "default"] {
            for (key, value) in [
                ("disable_ipv6", "0"),
                ("accept_dad", "0"),
                ("dad_transmits", "0"),
                ("accept_ra", "0"),
                ("autoconf", "0"),
                ("router_solicitations", "0"),
            ] {
                self.sysctl(ns, &format!("net.ipv6.conf.{scope}.{key}"), value)?;
            }
        }
        self.sysctl(ns, "net.ipv6.conf.lo.disable_ipv6", "0")
    }

    /// Creates an underlay-attached namespace: `eth0` with `addr`/16 (and `addr6`/64), its peer
    /// `ul_port` in br0, TX checksum offload off (for both families: it is per device).
    fn attach_underlay(
        &mut self,
        ns: &str,
        ul_port: &str,
        addr: Ipv4Addr,
        addr6: Option<Ipv6Addr>,
    ) -> Result<()> {
        let ul = self.underlay.clone();
        self.ip(
            &ul,
            &format!("link add {ul_port} type veth peer name eth0 netns {ns}"),
        )?;
        self.ip(&ul, &format!("link set {ul_port} master br0"))?;
        self.ip(&ul, &format!("link set {ul_port} up"))?;
        self.ip(ns, &format!("addr add {addr}/16 dev eth0"))?;
        if let Some(addr6) = addr6 {
            self.ip(ns, &format!("-6 addr add {addr6}/64 dev eth0 nodad"))?;
        }
        self.ip(ns, "link set eth0 up")?;
        // DESIGN §3: the underlay behaves like a wire behind a NIC without checksum offload.
        self.exec_ok(ns, &["ethtool", "-K", "eth0", "tx", "off"])?;
        Ok(())
    }

    fn add_node(&mut self, n: usize, count: usize) -> Result<()> {
        let ns = format!("{}n{n}", self.prefix);
        let ip = node_ip(n);
        let ip6 = self.dual_stack.then(|| node_ip6(n));
        self.add_ns(&ns)?;
        self.attach_underlay(&ns, &format!("ul-n{n}"), ip, ip6)?;
        self.sysctl(&ns, "net.ipv4.ip_forward", "1")?;
        if self.dual_stack {
            self.sysctl(&ns, "net.ipv6.conf.all.forwarding", "1")?;
        }
        for m in (1..=count).filter(|&m| m != n) {
            self.ip(
                &ns,
                &format!("route add 10.244.{m}.0/24 via {} dev eth0", node_ip(m)),
            )?;
            if self.dual_stack {
                self.ip(
                    &ns,
                    &format!("-6 route add {} via {} dev eth0", pod_cidr6(m), node_ip6(m)),
                )?;
            }
        }
        self.nodes.push(Node {
            index: n,
            ns,
            ip,
            pod_cidr: format!("10.244.{n}.0/24"),
            gateway: Ipv4Addr::new(10, 244, n as u8, 1),
            ipv6: ip6,
            pod_cidr6: self.dual_stack.then(|| pod_cidr6(n)),
            gateway6: self.dual_stack.then(|| pod_ip6(n, 1)),
        });
        Ok(())
    }

    fn add_ext(&mut self, gw: usize) -> Result<()> {
        let ns = format!("{}ext", self.prefix);
        self.add_ns(&ns)?;
        let ip6 = self.dual_stack.then_some(EXT_IP6);
        self.attach_underlay(&ns, "ul-ext", EXT_IP, ip6)?;
        for dst in EXT_ROUTED {
            self.add_route(&ns, &format!("{dst} via {} dev eth0", node_ip(gw)))?;
        }
        if self.dual_stack {
            for dst in EXT_ROUTED6 {
                self.add_route(&ns, &format!("{dst} via {} dev eth0", node_ip6(gw)))?;
            }
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
        let ip6 = self.dual_stack.then(|| pod_ip6(node, k + 1));
        let gw6 = self.nodes[node - 1].gateway6;
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
        if let (Some(ip6), Some(gw6)) = (ip6, gw6) {
            // The same ptp layout: a /128 on eth0, the gateway reachable on the link, the
            // node's pod /64 and the default route through it.
            self.ip(&ns, &format!("-6 addr add {ip6}/128 dev eth0 nodad"))?;
            self.ip(&ns, &format!("-6 route add {gw6} dev eth0"))?;
            self.ip(
                &ns,
                &format!(
                    "-6 route add {} via {gw6} dev eth0 src {ip6}",
                    pod_cidr6(node)
                ),
            )?;
            self.ip(&ns, &format!("-6 route add default via {gw6} dev eth0"))?;
            self.ip(
                &node_ns,
                &format!("-6 addr add {gw6}/128 dev {host_veth} nodad"),
            )?;
        }
        self.ip(&node_ns, &format!("addr add {gw}/32 dev {host_veth}"))?;
        self.ip(&node_ns, &format!("link set {host_veth} up"))?;
        self.ip(
            &node_ns,
            &format!("route add {ip}/32 dev {host_veth} scope link"),
        )?;
        if let Some(ip6) = ip6 {
            self.ip(&node_ns, &format!("-6 route add {ip6}/128 dev {host_veth}"))?;
        }
        let pod = Pod {
            name: name.to_owned(),
            node,
            index: k,
            ns,
            ip,
            host_veth,
            ipv6: ip6,
        };
        self.pods.push(pod.clone());
        Ok(pod)
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
        // Empty once the processes above are gone (an exiting process leaves its cgroup
        // before it is reaped); an agent may have removed its own already.
        for cg in std::mem::take(&mut *lock(&self.cgroups)) {
            if cg.exists() {
                if let Err(e) = std::fs::remove_dir(&cg) {
                    eprintln!("topology: removing cgroup {}: {e}", cg.display());
                }
            }
        }
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

/// Underlay IPv6 address of node `n`: fd00:18::(n+1).
fn node_ip6(n: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, (n + 1) as u16)
}

/// IPv6 pod CIDR of node `n`: fd00:10:244:n::/64.
fn pod_cidr6(n: usize) -> String {
    format!("{}/64", pod_ip6(n, 0))
}

/// fd00:10:244:n::h (h = 1: the gateway; pod k: h = k + 1).
fn pod_ip6(n: usize, h: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, n as u16, 0, 0, 0, h as u16)
}

/// 32 bits of FNV-1a over `salt` and `s`: a short, stable interface-name suffix.
fn fnv1a(s: &str, salt: u32) -> u32 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(&salt.to_le_bytes());
    h.write(s.as_bytes());
    h.finish() as u32
}

pub(super) fn enter_netns(file: &File, path: &Path) -> Result<()> {
    // SAFETY: plain syscall on an fd we own; affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns({})", path.display()));
    }
    Ok(())
}

/// Runs `ip <args>`, failing with its stderr on a non-zero exit.
pub(super) fn run_ip(args: &[&str]) -> Result<()> {
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
