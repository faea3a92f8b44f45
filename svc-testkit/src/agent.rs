//! Running `svc-agent` inside a node namespace, as the DESIGN §3 contract says, and reading
//! what it pinned.
//!
//! Each [`Agent`] gets a bpffs directory named after the topology's unique prefix, and removes
//! it (`svc-agent uninstall`) when dropped, so a run leaves no pin behind, failure included.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use svc_common::{stat_index, Frontend, FrontendKey, Hook, Reason};

use crate::topology::{NsChild, Topology};

/// Path of a workspace binary built by `cargo build --workspace --bins` (xtask test does it).
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    // svc-agent → SVC_AGENT_BIN, svc-probe → SVC_PROBE_BIN (what probe.rs reads too).
    let short = name.strip_prefix("svc-").unwrap_or(name);
    let env = format!("SVC_{}_BIN", short.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&env) {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{name} not found next to {} (build it: cargo build --workspace --bins, or set {env})", exe.display())
        })
        .and_then(|bin| {
            // The agent embeds target/svc-ebpf.o at build time, and `cargo test -p tests` does
            // not rebuild other packages' binaries: refuse a stale agent rather than test old
            // kernel code.
            let object = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/svc-ebpf.o");
            let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            if name == "svc-agent" && mtime(&bin) < mtime(&object) {
                bail!("{} is older than {}: rebuild it (cargo build --workspace --bins; cargo xtask test does)", bin.display(), object.display());
            }
            Ok(bin)
        })
}

/// The node name an agent on topology node `n` uses (and EndpointSlices' `nodeName`).
pub fn node_name(n: usize) -> String {
    format!("node{n}")
}

/// The `endpoints:` items of an EndpointSlice (YAML, indented for a top-level `endpoints:`
/// key): one ready endpoint per (address, topology node).
pub fn ready_endpoints_yaml(endpoints: &[(String, usize)]) -> String {
    endpoints
        .iter()
        .map(|(ip, node)| {
            format!(
                "  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n    nodeName: {}\n",
                node_name(*node)
            )
        })
        .collect()
}

/// The `spec` lines (indented for a Service's `spec:`) of a dual-stack Service:
/// `RequireDualStack`, IPv4 first, ClusterIPs `v4` and `v6`, as a dual-stack API server writes
/// them (`clusterIP` is the first of `clusterIPs`).
pub fn dual_stack_cluster_ips(v4: &str, v6: &str) -> String {
    format!(
        "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: {v4}\n  \
         clusterIPs: [\"{v4}\", \"{v6}\"]\n"
    )
}

/// One EndpointSlice per family for `service` (`{service}-4`, `addressType: IPv4`, and
/// `{service}-6`, `addressType: IPv6`; both families in a single-stack topology would panic),
/// each listing `ports` (YAML items indented for a top-level `ports:` key) and the ready
/// `pods` of topology `t` at their address of that family, on their nodes.
pub fn endpoint_slices_dual_stack(
    t: &Topology,
    service: &str,
    ports: &str,
    pods: &[&str],
) -> String {
    let mut out = String::new();
    for family in crate::topology::Family::BOTH {
        let eps: Vec<(String, usize)> = pods
            .iter()
            .map(|p| (t.pod_addr(p, family).to_string(), t.pod(p).node))
            .collect();
        let (suffix, kind) = match family {
            crate::topology::Family::V4 => ("4", "IPv4"),
            crate::topology::Family::V6 => ("6", "IPv6"),
        };
        out.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
             name: {service}-{suffix}\n  labels:\n    kubernetes.io/service-name: {service}\n\
             addressType: {kind}\nports:\n{ports}endpoints:\n{}",
            ready_endpoints_yaml(&eps)
        ));
    }
    out
}

/// An EndpointSlice for `service` with one port, `http` TCP 8080, and one ready endpoint per
/// (address, topology node).
pub fn http_endpoint_slice(service: &str, endpoints: &[(std::net::Ipv4Addr, usize)]) -> String {
    let eps: Vec<(String, usize)> = endpoints
        .iter()
        .map(|(ip, n)| (ip.to_string(), *n))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  \
         labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n  \
         - {{name: http, port: 8080, protocol: TCP}}\nendpoints:\n{}",
        ready_endpoints_yaml(&eps)
    )
}

/// A directory of manifests the agents read. Files are written atomically (temp + rename) so an
/// agent never reads half a file. Removed on drop.
pub struct ManifestDir {
    path: PathBuf,
}

impl ManifestDir {
    pub fn new(topology: &Topology) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{}manifests", topology.prefix()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes (or replaces) `name` with `yaml`.
    pub fn write(&self, name: &str, yaml: &str) -> Result<()> {
        let tmp = self.path.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.path.join(name)).with_context(|| format!("renaming to {name}"))
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        std::fs::remove_file(self.path.join(name)).with_context(|| format!("removing {name}"))
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running agent on one node.
pub struct Agent {
    child: Option<NsChild>,
    bpffs: PathBuf,
    /// The cgroup this agent's socket hooks attach to: made for this run (never the
    /// machine's root cgroup), removed on drop. Run a node's "local processes" in it.
    cgroup: PathBuf,
    /// Node namespace the agent runs in (for reaching its metrics endpoint).
    ns: String,
    /// Where kube-proxy's /healthz and /livez answer (default `--healthz-bind-address`,
    /// 0.0.0.0:10256, reached at the node's address).
    healthz: String,
    /// Leave the pins on drop (after [`Agent::kill9`], for the next agent to adopt).
    keep_pins: bool,
    /// Topology node number (1-based).
    pub node: usize,
    /// The agent has logged that its programs are loaded (see [`Agent::wait_loaded`]).
    loaded: bool,
}

/// Bound on the agent's program load. The kernel verifier spends seconds on the larger
/// programs (about 8 s of system time for all of them on the 2-core reference machine, more
/// when two agents load at once); the waits below measure programming and health, not the
/// verifier, so their clocks start only once loading is done.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// What the agent logs once every program is loaded and the pinned maps are read.
const LOADED_LINE: &str = "adopted the service maps";

impl Agent {
    /// Starts `svc-agent run --manifests DIR` in node `node`'s namespace with the DESIGN §3
    /// flags plus `extra`.
    pub fn start(t: &Topology, node: usize, manifests: &Path, extra: &[&str]) -> Result<Self> {
        let dir = manifests.to_str().context("manifest path is not UTF-8")?;
        Self::start_with(t, node, "", &["--manifests", dir], extra)
    }

    /// [`Agent::start`] on nodes `1..=nodes`, each waited for until healthy (20 s after its
    /// programs are loaded).
    pub fn start_all(
        t: &Topology,
        nodes: usize,
        manifests: &Path,
        extra: &[&str],
    ) -> Result<Vec<Self>> {
        (1..=nodes)
            .map(|n| {
                let mut a = Self::start(t, n, manifests, extra)?;
                a.wait_healthy(t, Duration::from_secs(20))?;
                Ok(a)
            })
            .collect()
    }

    /// Starts `svc-agent run --kubeconfig FILE` (the API-server source) on node `node`.
    pub fn start_kube(
        t: &Topology,
        node: usize,
        kubeconfig: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let file = kubeconfig
            .to_str()
            .context("kubeconfig path is not UTF-8")?;
        Self::start_with(t, node, "", &["--kubeconfig", file], extra)
    }

    /// A second, independent agent on node `node` (its own pins, suffixed `tag`, attached to
    /// no interface and without metrics): a freshly started reference whose maps another
    /// agent's can be compared with.
    pub fn start_reference_kube(
        t: &Topology,
        node: usize,
        kubeconfig: &Path,
        tag: &str,
    ) -> Result<Self> {
        let file = kubeconfig
            .to_str()
            .context("kubeconfig path is not UTF-8")?;
        let mut agent = Self::start_with(
            t,
            node,
            tag,
            &["--kubeconfig", file],
            &[
                "--pod-ifaces",
                "none-such-iface",
                "--metrics-addr",
                "off",
                "--healthz-bind-address",
                "off",
            ],
        )?;
        agent.ns = t.node(node).ns.clone();
        Ok(agent)
    }

    fn start_with(
        t: &Topology,
        node: usize,
        tag: &str,
        source: &[&str],
        extra: &[&str],
    ) -> Result<Self> {
        let bin = workspace_bin("svc-agent")?;
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/{}n{node}{tag}", t.prefix()));
        let cgroup = test_cgroup(&format!("{}n{node}{tag}", t.prefix()))?;
        let node_ip = t.node_ip(node).to_string();
        // In a dual-stack topology the node's IPv6 address too (NodePorts on it, its IPv6 SNAT
        // source).
        let node_ip6 = t.dual_stack().then(|| t.node_ip6(node).to_string());
        // `--no-node-ip` (harness-only): start as kubeadm's kube-proxy does, without a node
        // address flag, so the agent learns its addresses from its Node object and interfaces.
        let with_node_ip = !extra.contains(&"--no-node-ip");
        let extra: Vec<&str> = extra
            .iter()
            .copied()
            .filter(|a| *a != "--no-node-ip")
            .collect();
        let name = node_name(node);
        let mut args: Vec<&str> = vec![bin.to_str().context("agent path is not UTF-8")?, "run"];
        args.extend_from_slice(source);
        args.extend_from_slice(&[
            "--node-name",
            &name,
            "--bpffs",
            bpffs.to_str().context("bpffs path is not UTF-8")?,
            "--cgroup",
            cgroup.to_str().context("cgroup path is not UTF-8")?,
            "--uplink",
            "eth0",
            "--poll-ms",
            "50",
        ]);
        if with_node_ip {
            args.extend_from_slice(&["--node-ip", &node_ip]);
            if let Some(ip6) = &node_ip6 {
                args.extend_from_slice(&["--node-ip", ip6]);
            }
        }
        if !extra.contains(&"--pod-ifaces") {
            args.extend_from_slice(&["--pod-ifaces", "veth"]);
        }
        // The network tests run the XDP path (what a native-XDP NIC runs) in generic mode on
        // the topology's veth uplinks unless a test chooses: `--xdp-mode auto`, the agent's
        // default, attaches no XDP to a veth (tests choose it where that is what they check).
        if !extra.iter().any(|a| a.starts_with("--xdp-mode")) {
            args.extend_from_slice(&["--xdp-mode", "generic"]);
        }
        args.extend_from_slice(&extra);
        let child = t.spawn_nsenter(&t.node(node).ns, &args)?;
        Ok(Self {
            child: Some(child),
            bpffs,
            cgroup,
            node,
            ns: t.node(node).ns.clone(),
            healthz: format!("{node_ip}:10256"),
            keep_pins: false,
            loaded: false,
        })
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// The cgroup the agent's socket hooks are attached to (see [`Agent::cgroup`]'s field).
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        self.child.as_ref().map(NsChild::stderr).unwrap_or_default()
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = &mut self.child {
            if let Ok(status) = child.wait_timeout(Duration::ZERO) {
                bail!(
                    "agent on node {} exited ({status}):\n{}",
                    self.node,
                    child.stderr()
                );
            }
        }
        Ok(())
    }

    /// The frontend map as the agent programmed it (read from the pin, no agent involved).
    pub fn frontends(&self) -> Result<BTreeMap<FrontendKey, Frontend>> {
        Ok(svc_agent::dataplane::read::read_frontends(&self.bpffs)?)
    }

    /// Every frontend of both families (`SVC_FRONTENDS`, `SVC_FRONTENDS6`) as (address, port,
    /// protocol, scope) → `backend_count`, read from the pins.
    pub fn backend_counts(&self) -> Result<BTreeMap<(IpAddr, u16, u8, u8), u32>> {
        let snap = self.snapshot()?;
        let v4 = snap.frontends.iter().map(|(k, f)| {
            (
                (IpAddr::from(k.addr), k.port, k.proto, k.scope),
                f.backend_count,
            )
        });
        let v6 = snap.frontends6.iter().map(|(k, f)| {
            (
                (IpAddr::from(k.addr.octets), k.port, k.proto, k.scope),
                f.backend_count,
            )
        });
        Ok(v4.chain(v6).collect())
    }

    /// [`Agent::wait_frontends`] over both families: waits until the two frontend maps hold
    /// exactly `want` ((address, port, protocol) with [`svc_common::SCOPE_ANY`] →
    /// `backend_count`).
    pub fn wait_backend_counts(
        &mut self,
        want: &BTreeMap<(IpAddr, u16, u8), u32>,
        timeout: Duration,
    ) -> Result<()> {
        let want: BTreeMap<_, _> = want
            .iter()
            .map(|(&(a, p, pr), &n)| ((a, p, pr, svc_common::SCOPE_ANY), n))
            .collect();
        self.wait_maps(&want, timeout, Self::backend_counts)
    }

    /// Waits (up to [`LOAD_TIMEOUT`]) until the agent has loaded its programs and read its
    /// pinned maps; fails if it exits first.
    pub fn wait_loaded(&mut self) -> Result<()> {
        let deadline = Instant::now() + LOAD_TIMEOUT;
        while !self.loaded {
            self.check_alive()?;
            self.loaded = self.log().contains(LOADED_LINE);
            if !self.loaded && Instant::now() > deadline {
                bail!(
                    "agent on node {} did not load its programs within {LOAD_TIMEOUT:?}:\n{}",
                    self.node,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits until the frontend map holds exactly `want` (by key, with `backend_count`s);
    /// `timeout` counts from the end of the program load.
    pub fn wait_frontends(
        &mut self,
        want: &BTreeMap<FrontendKey, u32>,
        timeout: Duration,
    ) -> Result<()> {
        self.wait_maps(want, timeout, |a| {
            a.frontends()
                .map(|m| m.into_iter().map(|(k, v)| (k, v.backend_count)).collect())
        })
    }

    /// Waits (polling every 20 ms, the agent alive) until `read` gives `want`; the error names
    /// what the maps held last.
    fn wait_maps<T: PartialEq + std::fmt::Debug>(
        &mut self,
        want: &T,
        timeout: Duration,
        read: impl Fn(&Self) -> Result<T>,
    ) -> Result<()> {
        self.wait_loaded()?;
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let got = read(self).ok();
            if got.as_ref() == Some(want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("agent on node {} did not program {want:?} within {timeout:?}; maps hold {got:?}\nlog:\n{}", self.node, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The three service maps, read from their pins (no agent involved).
    pub fn snapshot(&self) -> Result<svc_agent::dataplane::MapSnapshot> {
        Ok(svc_agent::dataplane::read::read_snapshot(&self.bpffs)?)
    }

    /// `svc-agent ARGS --bpffs <its pins> -o json` (`inspect services`, `explain …`), run
    /// from the test process: these commands read pins only, in no namespace in particular.
    pub fn cli_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let bin = workspace_bin("svc-agent")?;
        let bpffs = self.bpffs.to_str().context("bpffs path is not UTF-8")?;
        let out = std::process::Command::new(&bin)
            .args(args)
            .args(["--bpffs", bpffs, "-o", "json"])
            .output()
            .with_context(|| format!("running svc-agent {args:?}"))?;
        ensure!(
            out.status.success(),
            "svc-agent {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("svc-agent {args:?}: output is not JSON"))
    }

    /// A datapath counter summed over CPUs.
    pub fn counter(&self, hook: Hook, reason: Reason) -> Result<u64> {
        let per_cpu = svc_agent::dataplane::read::read_stat(&self.bpffs, stat_index(hook, reason))?;
        Ok(per_cpu.iter().sum())
    }

    /// `kill -9`: no chance to clean up. Pins stay for the next agent on this node to adopt
    /// (that agent removes them when it is dropped).
    pub fn kill9(mut self) -> String {
        let log = self.log();
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
        self.keep_pins = true;
        log
    }

    /// SIGTERM and wait, as a rolling DaemonSet update stops the old pod: the agent must exit
    /// 0 and leave its pins and links, which the next agent on this node adopts (and removes
    /// when it is dropped). Returns the log.
    pub fn sigterm(mut self) -> Result<String> {
        let log = self.stop()?;
        self.keep_pins = true;
        Ok(log)
    }

    /// GET `path` from the agent's metrics server (default `--metrics-bind-address`,
    /// 127.0.0.1:10249, inside the node's namespace): returns the status code and body.
    pub fn http_get(&self, t: &Topology, path: &str) -> Result<(u16, String)> {
        http_get(t, &self.ns, "127.0.0.1:10249", path)
    }

    /// GET `path` from the agent's kube-proxy health server (default `--healthz-bind-address`,
    /// at the node's address inside its namespace): status code and body.
    pub fn healthz_get(&self, t: &Topology, path: &str) -> Result<(u16, String)> {
        http_get(t, &self.ns, &self.healthz, path)
    }

    /// Waits until `/healthz` answers 200 (datapath loaded, first sync done); `timeout`
    /// counts from the end of the program load.
    pub fn wait_healthy(&mut self, t: &Topology, timeout: Duration) -> Result<()> {
        self.wait_loaded()?;
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if let Ok((200, _)) = self.http_get(t, "/healthz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "agent on node {} not healthy within {timeout:?}:\n{}",
                    self.node,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One sample from the agent's /metrics (the first line starting with `name`).
    pub fn metric(&self, t: &Topology, name: &str) -> Result<f64> {
        let (code, body) = self.http_get(t, "/metrics")?;
        ensure!(code == 200, "/metrics answered {code}");
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("metric {name} not in /metrics:\n{body}"))
    }

    /// SIGTERM and wait: the agent must exit 0 and leave its pins.
    pub fn stop(&mut self) -> Result<String> {
        let child = self.child.take().context("agent already stopped")?;
        let done = child.terminate(Duration::from_secs(10))?;
        let log = done.stderr.clone();
        ensure!(
            done.status.success(),
            "agent exited with {}:\n{log}",
            done.status
        );
        Ok(log)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
        if !self.keep_pins {
            // Empty by now (its processes were ours and are gone); attached hooks do not
            // prevent removal.
            let _ = std::fs::remove_dir(&self.cgroup);
        }
        if !self.keep_pins && self.bpffs.exists() {
            if let Ok(bin) = workspace_bin("svc-agent") {
                let _ = std::process::Command::new(bin)
                    .args(["uninstall", "--bpffs"])
                    .arg(&self.bpffs)
                    .status();
            }
        }
    }
}

/// The cgroup v2 mount (`/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a
/// hybrid one like this project's machines).
pub fn cgroup2_root() -> Result<PathBuf> {
    svc_agent::datapath::cgroup2_root()
}

/// Creates (or reuses) the cgroup `name` under the cgroup v2 root for one agent's socket hooks.
fn test_cgroup(name: &str) -> Result<PathBuf> {
    let path = cgroup2_root()?.join(name);
    std::fs::create_dir_all(&path)
        .with_context(|| format!("creating cgroup {}", path.display()))?;
    Ok(path)
}

/// `GET http://{addr}{path}` from inside namespace `ns` (plain HTTP/1.0): status and body.
pub fn http_get(t: &Topology, ns: &str, addr: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let target: std::net::SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    let path = path.to_string();
    t.run_in(ns, move || -> Result<(u16, String)> {
        let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))
            .with_context(|| format!("connecting to {target}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {target}\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status in the response")?;
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    })?
}

/// `addr:port/proto` → frontend key, for expectations.
pub fn fkey(addr: [u8; 4], port: u16, proto: u8) -> FrontendKey {
    FrontendKey {
        addr,
        port,
        proto,
        scope: svc_common::SCOPE_ANY,
    }
}
