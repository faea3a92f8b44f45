//! What real applications send, end to end through the datapath (needs root): 8 MB transfers
//! each way verified by SHA-256 over every kind of frontend, large UDP datagrams that fragment,
//! ECONNREFUSED on a connected UDP socket, and path MTU discovery across a narrower hop.
//!
//! Node 1 runs the client pod c1 and backend be1; node 2 runs c2 and be2; the external client
//! routes the documentation ranges via node 1. Two Services pin one backend each, so every path
//! is tried with a local and with a remote backend:
//!
//! | Service | ClusterIP | LB IP | external IP | backend |
//! |---|---|---|---|---|
//! | one | 10.96.1.1 | 192.0.2.11 | 198.51.100.11 | be1 (node 1) |
//! | two | 10.96.1.2 | 192.0.2.12 | 198.51.100.12 | be2 (node 2) |
//!
//! Ports: bulk TCP 9000 (NodePort 31001 / 31002), sized UDP 7053 (31053 / 31153), and UDP 5454
//! where no backend listens (31054 / 31154). Pods keep the kernel's offload defaults (TSO and
//! GSO on), so they send super-packets; node uplinks have TX checksum offload off (DESIGN §3).
//!
//! Failures name the path (client, frontend, which node, where the backend is) and what broke.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::time::{Duration, Instant};

use svc_testkit::{
    agent::{node_name, Agent, ManifestDir},
    capture::{read_packets, verify_checksums, Capture},
    topology::{require_root, NsChild, Topology, TopologySpec},
    traffic::{BulkResult, ConnectedUdpResult, SizedUdpSummary},
};

const PROBE: &str = env!("CARGO_BIN_EXE_svc-probe");
/// 8 MB each way.
const BULK: u64 = 8 << 20;
/// Every 8 MB transfer must finish within this.
const BULK_DEADLINE: Duration = Duration::from_secs(20);

/// One Service of the scene.
struct Svc {
    name: &'static str,
    cluster_ip: &'static str,
    lb_ip: &'static str,
    external_ip: &'static str,
    np_bulk: u16,
    np_sized: u16,
    np_closed: u16,
    backend: &'static str,
    backend_node: usize,
}

const ONE: Svc = Svc {
    name: "one",
    cluster_ip: "10.96.1.1",
    lb_ip: "192.0.2.11",
    external_ip: "198.51.100.11",
    np_bulk: 31001,
    np_sized: 31053,
    np_closed: 31054,
    backend: "be1",
    backend_node: 1,
};
const TWO: Svc = Svc {
    name: "two",
    cluster_ip: "10.96.1.2",
    lb_ip: "192.0.2.12",
    external_ip: "198.51.100.12",
    np_bulk: 31002,
    np_sized: 31153,
    np_closed: 31154,
    backend: "be2",
    backend_node: 2,
};
const SERVICES: [&Svc; 2] = [&ONE, &TWO];

fn manifest(s: &Svc, t: &Topology) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: LoadBalancer\n  \
         clusterIP: {cip}\n  externalIPs: [\"{eip}\"]\n  ports:\n    \
         - {{name: bulk, port: 9000, targetPort: 9000, nodePort: {nb}, protocol: TCP}}\n    \
         - {{name: sized, port: 7053, targetPort: 7053, nodePort: {ns}, protocol: UDP}}\n    \
         - {{name: closed, port: 5454, targetPort: 5454, nodePort: {nc}, protocol: UDP}}\n\
         status:\n  loadBalancer:\n    ingress:\n    - ip: {lb}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  \
         labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n  \
         - {{name: bulk, port: 9000, protocol: TCP}}\n  - {{name: sized, port: 7053, protocol: UDP}}\n  \
         - {{name: closed, port: 5454, protocol: UDP}}\nendpoints:\n  \
         - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n    nodeName: {node}\n",
        name = s.name,
        cip = s.cluster_ip,
        eip = s.external_ip,
        lb = s.lb_ip,
        nb = s.np_bulk,
        ns = s.np_sized,
        nc = s.np_closed,
        ip = t.pod_ip(s.backend),
        node = node_name(s.backend_node),
    )
}

struct Scene {
    agents: Vec<Agent>,
    _servers: Vec<NsChild>,
    manifests: ManifestDir,
    t: Topology,
}

impl Scene {
    /// Builds the topology, starts the servers and one agent per node with `agent_flags`.
    /// `before_agents` runs on the bare topology (e.g. to lower a route's MTU).
    fn start(agent_flags: &[&str], before_agents: impl FnOnce(&Topology)) -> Self {
        let t = Topology::build(
            &TopologySpec::new()
                .node(&["c1", "be1"])
                .node(&["c2", "be2"])
                .external_client(true)
                .ext_gateway(1),
        )
        .expect("building the topology");
        for pod in ["c1", "c2", "be1", "be2"] {
            let on = t.offloads_on(t.pod_ns(pod), "eth0").unwrap();
            for f in [
                "tcp-segmentation-offload",
                "generic-segmentation-offload",
                "tx-checksumming",
            ] {
                assert!(
                    on.iter().any(|o| o == f),
                    "pod {pod} must keep {f} on (kernel default): on = {on:?}"
                );
            }
        }
        before_agents(&t);
        let mut servers = Vec::new();
        for be in ["be1", "be2"] {
            let mut s = t
                .spawn(
                    t.pod_ns(be),
                    &[
                        PROBE,
                        "serve",
                        "--id",
                        be,
                        "--bulk",
                        "9000",
                        "--sized-udp",
                        "7053",
                    ],
                )
                .unwrap();
            s.wait_for_line(Duration::from_secs(5), |l| l == "ready")
                .unwrap_or_else(|e| panic!("server in {be}: {e:#}"));
            servers.push(s);
        }
        let m = ManifestDir::new(&t).unwrap();
        for s in SERVICES {
            m.write(&format!("{}.yaml", s.name), &manifest(s, &t))
                .unwrap();
        }
        let mut agents = Vec::new();
        for n in 1..=2 {
            let mut a = Agent::start(&t, n, m.path(), agent_flags).unwrap();
            a.wait_healthy(&t, Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("agent on node {n}: {e:#}"));
            agents.push(a);
        }
        Self {
            agents,
            _servers: servers,
            manifests: m,
            t,
        }
    }

    fn probe(&self, ns: &str, args: &[&str]) -> String {
        let mut cmd = vec![PROBE];
        cmd.extend_from_slice(args);
        self.t
            .exec_ok(ns, &cmd)
            .unwrap_or_else(|e| panic!("svc-probe {args:?}: {e:#}"))
    }

    fn ns_of(&self, client: &str) -> String {
        match client {
            "ext" => self.t.ext_ns().unwrap().to_owned(),
            pod => self.t.pod_ns(pod).to_owned(),
        }
    }

    fn bulk(&self, client: &str, target: &str, dir: &str) -> BulkResult {
        let out = self.probe(
            &self.ns_of(client),
            &[
                "bulk",
                "--target",
                target,
                "--dir",
                dir,
                "--bytes",
                &BULK.to_string(),
                "--stall-ms",
                "5000",
                "--deadline-ms",
                &BULK_DEADLINE.as_millis().to_string(),
            ],
        );
        serde_json::from_str(last_line(&out)).unwrap()
    }

    fn sized(
        &self,
        client: &str,
        target: &str,
        count: u32,
        request: usize,
        reply: usize,
    ) -> SizedUdpSummary {
        let out = self.probe(
            &self.ns_of(client),
            &[
                "sized-udp",
                "--target",
                target,
                "--count",
                &count.to_string(),
                "--request-len",
                &request.to_string(),
                "--reply-len",
                &reply.to_string(),
                "--timeout-ms",
                "500",
            ],
        );
        serde_json::from_str(last_line(&out)).unwrap()
    }

    fn connected_udp(&self, client: &str, target: &str) -> ConnectedUdpResult {
        let out = self.probe(
            &self.ns_of(client),
            &[
                "udp-connected",
                "--target",
                target,
                "--timeout-ms",
                "3000",
                "--resend-ms",
                "500",
            ],
        );
        serde_json::from_str(last_line(&out)).unwrap()
    }
}

fn last_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}

/// A path through a Service: who sends, to which frontend, and what that means.
struct Path {
    client: &'static str,
    target: String,
    what: String,
    backend: &'static str,
}

/// Whether the frontend's node hosts the Service's backend.
fn locality(frontend_node: usize, s: &Svc) -> &'static str {
    if frontend_node == s.backend_node {
        "local backend"
    } else {
        "remote backend"
    }
}

/// Every TCP path of scenario 1 for the bulk port.
fn bulk_paths() -> Vec<Path> {
    let mut v = Vec::new();
    for s in SERVICES {
        for (n, ip) in [(1, "172.18.0.2"), (2, "172.18.0.3")] {
            v.push(Path {
                client: "ext",
                target: format!("{ip}:{}", s.np_bulk),
                what: format!(
                    "external client -> NodePort on node {n} (Service {}, {} on node {})",
                    s.name,
                    locality(n, s),
                    s.backend_node
                ),
                backend: s.backend,
            });
        }
        for (ip, kind) in [(s.lb_ip, "LB IP"), (s.external_ip, "external IP")] {
            v.push(Path {
                client: "ext",
                target: format!("{ip}:9000"),
                what: format!(
                    "external client -> {kind} via node 1 (Service {}, {})",
                    s.name,
                    locality(1, s)
                ),
                backend: s.backend,
            });
        }
        for (pod, pn) in [("c1", 1), ("c2", 2)] {
            v.push(Path {
                client: pod,
                target: format!("{}:9000", s.cluster_ip),
                what: format!(
                    "pod {pod} (node {pn}) -> ClusterIP (Service {}, {})",
                    s.name,
                    locality(pn, s)
                ),
                backend: s.backend,
            });
            for (n, ip) in [(1, "172.18.0.2"), (2, "172.18.0.3")] {
                v.push(Path {
                    client: pod,
                    target: format!("{ip}:{}", s.np_bulk),
                    what: format!(
                        "pod {pod} (node {pn}) -> NodePort on {} node {n} (Service {}, {} on node {})",
                        if n == pn { "its own" } else { "the other" },
                        s.name,
                        locality(n, s),
                        s.backend_node
                    ),
                    backend: s.backend,
                });
            }
        }
    }
    v
}

/// Scenario 1: every path, 8 MB down and 8 MB up, each checked by SHA-256 and timed; UDP over
/// the pod → NodePort paths. All failures are collected and reported together.
fn bulk_everywhere(xdp_mode: &str) {
    bulk_everywhere_with(&["--xdp-mode", xdp_mode], xdp_mode, |_| {});
}

/// [`bulk_everywhere`] with agents started with `flags`; `check` looks at the scene first.
fn bulk_everywhere_with(flags: &[&str], xdp_mode: &str, check: impl FnOnce(&Scene)) {
    let scene = Scene::start(flags, |_| {});
    check(&scene);
    let mut failures = Vec::new();
    let started = Instant::now();
    for p in bulk_paths() {
        for dir in ["download", "upload"] {
            let r = scene.bulk(p.client, &p.target, dir);
            eprintln!(
                "[xdp {xdp_mode}] {dir:8} {:>6} ms  {}  {} -> {}: {}",
                r.elapsed_ms,
                if r.ok { "ok  " } else { "FAIL" },
                p.client,
                p.target,
                p.what
            );
            let mut why = Vec::new();
            if !r.ok {
                why.push(r.error.clone().unwrap_or_else(|| "not ok".into()));
            }
            if r.ok && r.backend != p.backend {
                why.push(format!("served by {}, expected {}", r.backend, p.backend));
            }
            if r.ok && r.reply_from != p.target {
                why.push(format!(
                    "socket peer is {}, not the frontend (reverse NAT)",
                    r.reply_from
                ));
            }
            if !why.is_empty() {
                failures.push(format!(
                    "{dir} 8 MB {} -> {} [{}]: {} (after {} ms, {} of {} bytes)",
                    p.client,
                    p.target,
                    p.what,
                    why.join("; "),
                    r.elapsed_ms,
                    r.bytes,
                    r.expected_bytes
                ));
            }
        }
        // UDP on the pod → NodePort paths (TCP and UDP, brief §1): 1400-byte exchanges, content
        // checked both ways.
        if p.client != "ext" && p.target.starts_with("172.18.") {
            let port = if p.backend == "be1" {
                ONE.np_sized
            } else {
                TWO.np_sized
            };
            let ip = p.target.split(':').next().unwrap();
            let target = format!("{ip}:{port}");
            let r = scene.sized(p.client, &target, 50, 1400, 1400);
            eprintln!(
                "[xdp {xdp_mode}] udp      {:>6} ms  {}  {} -> {target}: {} ok, {} failed, {} corrupt",
                r.elapsed_ms,
                if r.ok == 50 { "ok  " } else { "FAIL" },
                p.client,
                r.ok,
                r.failed,
                r.corrupt
            );
            if r.ok != 50 || r.reply_from != [target.clone()] {
                failures.push(format!(
                    "UDP 50 × 1400 B {} -> {target} [{}]: {} ok, {} failed, {} corrupt, replies from {:?}, errors {:?}",
                    p.client, p.what, r.ok, r.failed, r.corrupt, r.reply_from, r.errors
                ));
            }
        }
    }
    eprintln!("[xdp {xdp_mode}] all paths in {:?}", started.elapsed());
    drop(scene.agents);
    assert!(
        failures.is_empty(),
        "--xdp-mode {xdp_mode}: {} of the transfers failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn bulk_8mb_each_way_on_every_path_xdp_auto() {
    require_root();
    bulk_everywhere("auto");
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn bulk_8mb_each_way_on_every_path_xdp_off() {
    require_root();
    bulk_everywhere("off");
}

/// svc-lb's classic tc filters (`--tc-attach classic`) on `dev` of node `n` at `hook`
/// (`ingress`/`egress`): (program name, program id) of each `bpf` filter at svc-lb's priority,
/// from `tc -j filter show`.
fn classic_filters(scene: &Scene, n: usize, dev: &str, hook: &str) -> Vec<(String, u64)> {
    let out = scene
        .t
        .exec_ok(
            &scene.t.node(n).ns,
            &["tc", "-j", "filter", "show", "dev", dev, hook],
        )
        .unwrap_or_else(|e| panic!("tc filter show dev {dev} {hook}: {e:#}"));
    let filters: Vec<serde_json::Value> = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("tc filter show dev {dev} {hook}: {e}: {out}"));
    filters
        .iter()
        .filter(|f| f["pref"] == 0x5356 && f["kind"] == "bpf")
        .filter_map(|f| {
            let o = &f["options"];
            Some((
                o["bpf_name"].as_str()?.to_owned(),
                o["prog"]["id"].as_u64()?,
            ))
        })
        .collect()
}

/// The tcx programs attached in node `n`'s namespace (`bpftool net -j`).
fn tcx_programs(scene: &Scene, n: usize) -> String {
    let out = scene
        .t
        .exec_ok(&scene.t.node(n).ns, &["bpftool", "-j", "net", "show"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["tcx"].to_string()
}

/// Classic tc (the fallback for kernels before 6.6, forced here with `--tc-attach classic`):
/// every path of [`bulk_everywhere`] carries 8 MB each way through `cls_bpf` filters instead
/// of tcx links, with XDP on; the filters are svc-lb's and no tcx program is attached.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn bulk_8mb_each_way_on_every_path_classic_tc() {
    require_root();
    bulk_everywhere_with(&["--tc-attach", "classic"], "auto, classic tc", |scene| {
        for n in 1..=2 {
            let veth = &scene.t.pod(&format!("c{n}")).host_veth;
            for (hook, prog) in [("ingress", "svc_pod_ingress"), ("egress", "svc_pod_egress")] {
                let f = classic_filters(scene, n, veth, hook);
                assert!(
                    f.len() == 1 && f[0].0.starts_with(prog),
                    "node {n} {veth} {hook}: want one {prog} filter, have {f:?}"
                );
            }
            let tcx = tcx_programs(scene, n);
            assert!(
                !tcx.contains("svc_"),
                "node {n}: classic mode must attach no tcx program: {tcx}"
            );
        }
    });
}

/// Classic tc across restarts: a restarted agent (kill -9, then SIGTERM) replaces its
/// filter's program in place (one filter, a new program id) while an 8 MB transfer over the
/// old one keeps going and new ones work; a stopped agent leaves the filters; `svc-agent
/// uninstall` removes them.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn classic_tc_filters_are_adopted_on_restart_and_removed_by_uninstall() {
    require_root();
    let mut scene = Scene::start(&["--tc-attach", "classic"], |_| {});
    let veth = scene.t.pod("c1").host_veth.clone();
    let first = classic_filters(&scene, 1, &veth, "egress");
    assert_eq!(first.len(), 1, "{first:?}");
    let bpffs = scene.agents[0].bpffs().to_owned();
    let flags = ["--tc-attach", "classic"];
    for how in ["kill -9", "SIGTERM"] {
        let before = classic_filters(&scene, 1, &veth, "egress");
        // A transfer that runs across the restart (ClusterIP, remote backend).
        let target = format!("{}:9000", TWO.cluster_ip);
        let ns = scene.ns_of("c1");
        let long = scene
            .t
            .spawn(
                &ns,
                &[
                    PROBE,
                    "bulk",
                    "--target",
                    &target,
                    "--dir",
                    "download",
                    "--bytes",
                    "67108864",
                    "--stall-ms",
                    "5000",
                    "--deadline-ms",
                    "60000",
                ],
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let old = scene.agents.remove(0);
        match how {
            "kill -9" => {
                old.kill9();
            }
            _ => {
                old.sigterm().unwrap();
            }
        }
        let gone = classic_filters(&scene, 1, &veth, "egress");
        assert_eq!(
            gone, before,
            "{how}: the filter must stay while no agent runs"
        );
        let mut a = Agent::start(&scene.t, 1, scene.manifests.path(), &flags).unwrap();
        a.wait_healthy(&scene.t, Duration::from_secs(60)).unwrap();
        scene.agents.insert(0, a);
        let after = classic_filters(&scene, 1, &veth, "egress");
        assert_eq!(after.len(), 1, "{how}: one filter, not two: {after:?}");
        assert_ne!(
            after[0].1, before[0].1,
            "{how}: the new agent's program is swapped in"
        );
        let fin = long.finish(Duration::from_secs(90)).unwrap();
        let r: BulkResult = serde_json::from_str(last_line(&fin.stdout)).unwrap();
        assert!(
            r.ok && r.backend == "be2" && r.reply_from == target,
            "{how}: a 64 MB download across the restart: {r:?}"
        );
        for dir in ["download", "upload"] {
            let r = scene.bulk("c1", &target, dir);
            assert!(
                r.ok && r.backend == "be2",
                "{how}: {dir} after restart: {r:?}"
            );
        }
    }
    scene.agents[0].stop().unwrap();
    assert_eq!(classic_filters(&scene, 1, &veth, "egress").len(), 1);
    // In the node's namespace, as the DaemonSet's uninstall runs on its node: a classic filter
    // is found by the interface it was recorded with.
    let agent = svc_testkit::agent::workspace_bin("svc-agent").unwrap();
    // `nsenter --net` (not `ip netns exec`, which mounts a sysfs of its own over the bpffs).
    let agent = agent.to_str().unwrap();
    let done = scene
        .t
        .spawn_nsenter(
            &scene.t.node(1).ns,
            &[agent, "uninstall", "--bpffs", bpffs.to_str().unwrap()],
        )
        .unwrap()
        .finish(Duration::from_secs(30))
        .unwrap();
    assert!(done.status.success(), "uninstall: {}", done.stderr);
    assert!(!bpffs.exists(), "uninstall left {}", bpffs.display());
    for hook in ["ingress", "egress"] {
        let left = classic_filters(&scene, 1, &veth, hook);
        assert!(left.is_empty(), "uninstall left {hook} filters: {left:?}");
    }
}

/// Scenario 2: UDP replies of 1400, 3000, 9000 and 30000 bytes to 3000-byte requests through a
/// ClusterIP (local and remote backend) and a NodePort (local and remote), every byte checked;
/// the underlay capture must hold the translated fragments, every fragment's IP header checksum
/// right and every reassembled datagram's UDP checksum right.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn large_udp_fragments_are_translated_and_arrive_intact() {
    require_root();
    let scene = Scene::start(&[], |_| {});
    let cap = Capture::start(&scene.t, scene.t.underlay_ns(), "br0").unwrap();
    let mut failures = Vec::new();
    // Controls first: straight to the backend pods (no Service, nothing to translate). If
    // these fail, the topology or the tool is broken, not the datapath.
    let be1 = format!("{}:7053", scene.t.pod_ip("be1"));
    let be2 = format!("{}:7053", scene.t.pod_ip("be2"));
    for (client, target) in [("c1", &be1), ("c1", &be2), ("c2", &be1)] {
        for reply in [1400, 30000] {
            let r = scene.sized(client, target, 2, 3000, reply);
            assert!(
                r.ok == 2 && r.reply_from == [target.clone()],
                "control without a Service failed, so the test itself is broken: {client} -> {target} \
                 3000/{reply} bytes: {r:?}"
            );
        }
    }
    let paths = [
        (
            "c1",
            format!("{}:7053", ONE.cluster_ip),
            "ClusterIP, local backend",
        ),
        (
            "c1",
            format!("{}:7053", TWO.cluster_ip),
            "ClusterIP, remote backend",
        ),
        (
            "ext",
            format!("172.18.0.2:{}", ONE.np_sized),
            "NodePort node 1, local backend",
        ),
        (
            "ext",
            format!("172.18.0.2:{}", TWO.np_sized),
            "NodePort node 1, remote backend",
        ),
    ];
    // (request, reply): the first pair fragments nothing, so a failure there is not about
    // fragments at all.
    const SIZES: [(usize, usize); 5] = [
        (64, 1400),
        (3000, 1400),
        (3000, 3000),
        (3000, 9000),
        (3000, 30000),
    ];
    const COUNT: u32 = 3;
    for (client, target, what) in &paths {
        for (request, reply) in SIZES {
            let r = scene.sized(client, target, COUNT, request, reply);
            eprintln!(
                "{client} -> {target} ({what}) request {request} reply {reply}: {} ok, {} failed, {} corrupt, from {:?} {:?}",
                r.ok, r.failed, r.corrupt, r.reply_from, r.errors
            );
            if u64::from(COUNT) != r.ok || r.reply_from != [target.clone()] {
                failures.push(format!(
                    "{client} -> {target} ({what}), {request}-byte requests, {reply}-byte replies: {} of {COUNT} intact, {} lost, {} corrupt; replies from {:?}; {:?}",
                    r.ok, r.failed, r.corrupt, r.reply_from, r.errors
                ));
            }
        }
    }
    let file = cap.stop().unwrap();
    let report = verify_checksums(file.path()).unwrap();
    eprintln!("underlay capture: {report}");
    for d in &report.datagrams {
        eprintln!("  reassembled: {d}");
    }
    if !report.is_clean() {
        failures.push(format!("bad checksums on the underlay: {report}"));
    }
    if !report.incomplete.is_empty() {
        failures.push(format!(
            "fragmented datagrams never completed on the underlay: {:?}",
            report.incomplete
        ));
    }
    // What must have crossed the underlay, translated, in fragments.
    let be2 = scene.t.pod_ip("be2");
    let c1 = scene.t.pod_ip("c1");
    let node1 = scene.t.node_ip(1);
    let ext = svc_testkit::topology::EXT_IP;
    let has = |src, sport: Option<u16>, dst, dport: Option<u16>, min_len| {
        report.datagrams.iter().any(|d| {
            d.proto == 17
                && d.src == src
                && d.dst == dst
                && sport.is_none_or(|p| p == d.src_port)
                && dport.is_none_or(|p| p == d.dst_port)
                && d.len >= min_len
                && d.checksum_ok
        })
    };
    let expect = [
        (
            has(c1, None, be2, Some(7053), 3000),
            format!("request fragments {c1} -> {be2}:7053 (ClusterIP DNATed to the remote backend)"),
        ),
        (
            has(be2, Some(7053), c1, None, 30000),
            format!("30000-byte reply fragments {be2}:7053 -> {c1} (on their way to be reverse-NATed on node 1)"),
        ),
        (
            has(node1, None, be2, Some(7053), 3000),
            format!("request fragments {node1} -> {be2}:7053 (NodePort DNAT+SNAT to the remote backend)"),
        ),
        (
            has(node1, Some(TWO.np_sized), ext, None, 30000),
            format!("30000-byte reply fragments {node1}:{} -> {ext} (reverse-NATed on node 1)", TWO.np_sized),
        ),
        (
            has(node1, Some(ONE.np_sized), ext, None, 30000),
            format!("30000-byte reply fragments {node1}:{} -> {ext} (local backend)", ONE.np_sized),
        ),
    ];
    for (ok, what) in expect {
        if !ok {
            failures.push(format!(
                "no complete, checksum-valid datagram on the underlay for: {what}"
            ));
        }
    }
    if let Some(d) = report
        .datagrams
        .iter()
        .find(|d| d.dst.octets()[..2] == [10, 96] || d.src.octets()[..2] == [10, 96])
    {
        failures.push(format!(
            "a fragmented datagram crossed the underlay with a ClusterIP address (untranslated): {d}"
        ));
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) with fragmented UDP:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// Scenario 3a: a connected UDP socket sending to a Service port whose backend does not listen
/// must get ECONNREFUSED (the backend's ICMP port unreachable, translated back), within 1 s.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn connected_udp_to_a_port_without_listener_gets_econnrefused() {
    require_root();
    let scene = Scene::start(&[], |_| {});
    // Control without a Service: the backend's own ICMP port unreachable must reach the socket.
    let control = format!("{}:5454", scene.t.pod_ip("be2"));
    let r = scene.connected_udp("c2", &control);
    assert!(
        r.outcome == "refused" && r.elapsed_ms < 1000,
        "control without a Service failed, so the test itself is broken: c2 -> {control}: {r:?}"
    );
    let paths = [
        (
            "c1",
            format!("{}:5454", ONE.cluster_ip),
            "pod -> ClusterIP, local backend",
        ),
        (
            "c1",
            format!("{}:5454", TWO.cluster_ip),
            "pod -> ClusterIP, remote backend",
        ),
        (
            "ext",
            format!("172.18.0.2:{}", ONE.np_closed),
            "external -> NodePort, local backend",
        ),
        (
            "ext",
            format!("172.18.0.2:{}", TWO.np_closed),
            "external -> NodePort, remote backend",
        ),
        (
            "ext",
            format!("172.18.0.3:{}", ONE.np_closed),
            "external -> NodePort node 2, remote backend",
        ),
    ];
    let mut failures = Vec::new();
    for (client, target, what) in &paths {
        let r = scene.connected_udp(client, target);
        eprintln!(
            "{client} -> {target} ({what}): {} after {} ms ({} sent) {:?}",
            r.outcome, r.elapsed_ms, r.sent, r.error
        );
        if r.outcome != "refused" || r.elapsed_ms >= 1000 {
            failures.push(format!(
                "{client} -> {target} ({what}): outcome {:?} after {} ms with {} datagram(s) sent, want ECONNREFUSED in < 1000 ms{}",
                r.outcome,
                r.elapsed_ms,
                r.sent,
                r.error.map(|e| format!(" ({e})")).unwrap_or_default()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "ICMP port unreachable did not reach the connected socket:\n  {}",
        failures.join("\n  ")
    );
}

/// Scenario 3b: node 1 routes node 2's pod CIDR over a hop with MTU 1300. A sender whose
/// packets cross it must get ICMP fragmentation-needed carrying 1300 (its socket's path MTU
/// drops to 1300) and an 8 MB TCP transfer must complete, for a pod through a ClusterIP and for
/// the external client through a NodePort (both to the remote backend be2).
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn lower_mtu_hop_sends_frag_needed_and_tcp_completes() {
    require_root();
    const MTU: u32 = 1300;
    let scene = Scene::start(&[], |t| {
        t.set_route_mtu(&t.node(1).ns, "10.244.2.0/24", t.node_ip(2), "eth0", MTU)
            .unwrap();
    });
    // ICMP only: the transfers themselves would overrun the capture.
    let cap = Capture::start_filtered(&scene.t, scene.t.underlay_ns(), "br0", &["icmp"]).unwrap();
    let paths = [
        (
            "c1",
            format!("{}:9000", TWO.cluster_ip),
            "pod c1 -> ClusterIP -> be2 on node 2",
        ),
        (
            "ext",
            format!("172.18.0.2:{}", TWO.np_bulk),
            "external -> NodePort node 1 -> be2 on node 2",
        ),
    ];
    let mut failures = Vec::new();
    for (client, target, what) in &paths {
        for dir in ["upload", "download"] {
            let r = scene.bulk(client, target, dir);
            eprintln!(
                "{dir} {client} -> {target} ({what}): ok {} in {} ms, path MTU {:?}, {:?}",
                r.ok, r.elapsed_ms, r.path_mtu, r.error
            );
            if !r.ok {
                failures.push(format!(
                    "{dir} 8 MB {client} -> {target} ({what}) across the MTU {MTU} hop: {} after {} ms ({} of {} bytes)",
                    r.error.unwrap_or_default(),
                    r.elapsed_ms,
                    r.bytes,
                    r.expected_bytes
                ));
            }
            if dir == "upload" && r.path_mtu != Some(MTU) {
                failures.push(format!(
                    "upload {client} -> {target} ({what}): the sender's path MTU is {:?}, want {MTU}: no ICMP fragmentation-needed (or an untranslated one) reached its socket",
                    r.path_mtu
                ));
            }
        }
    }
    // The external client's ICMP crosses the underlay: it must come from the NodePort's node,
    // carry MTU 1300 and quote the packet as the client sent it (translated back).
    let file = cap.stop().unwrap();
    let report = verify_checksums(file.path()).unwrap();
    if !report.is_clean() {
        failures.push(format!("bad checksums on the underlay: {report}"));
    }
    let (_, packets) = read_packets(file.path()).unwrap();
    let mut icmp_seen = Vec::new();
    for f in &packets {
        // Ethernet (no VLAN on our bridge), IPv4 without options, ICMP type 3 code 4.
        if f.len() < 14 + 20 + 8 + 20 + 8 || f[12..14] != [0x08, 0x00] || f[14 + 9] != 1 {
            continue;
        }
        let ip = &f[14..];
        let ihl = usize::from(ip[0] & 0xf) * 4;
        let icmp = &ip[ihl..];
        if icmp[0] != 3 || icmp[1] != 4 {
            continue;
        }
        let mtu = u16::from_be_bytes([icmp[6], icmp[7]]);
        let inner = &icmp[8..];
        let iihl = usize::from(inner[0] & 0xf) * 4;
        let src = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let isrc = std::net::Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]);
        let idst = std::net::Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]);
        let idport = inner
            .get(iihl + 2..iihl + 4)
            .map(|p| u16::from_be_bytes([p[0], p[1]]));
        icmp_seen.push(format!(
            "{src} -> {dst} frag-needed mtu {mtu}, quoting {isrc} -> {idst}:{idport:?}"
        ));
    }
    eprintln!("ICMP fragmentation-needed on the underlay: {icmp_seen:#?}");
    let want = format!(
        "172.18.0.2 -> {} frag-needed mtu {MTU}, quoting {} -> 172.18.0.2:Some({})",
        svc_testkit::topology::EXT_IP,
        svc_testkit::topology::EXT_IP,
        TWO.np_bulk
    );
    if !icmp_seen.contains(&want) {
        failures.push(format!(
            "the underlay never carried `{want}` (ICMP to the external client, translated to the NodePort it used); saw {icmp_seen:?}"
        ));
    }
    assert!(
        failures.is_empty(),
        "path MTU discovery through the datapath:\n  {}",
        failures.join("\n  ")
    );
}
