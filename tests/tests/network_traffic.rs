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
//! Scenarios 2 and 3 (large UDP datagrams, ECONNREFUSED, the narrower hop) are in
//! `network_traffic_udp_mtu`; the scene both use is in `traffic_common`.
//!
//! Failures name the path (client, frontend, which node, where the backend is) and what broke.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::time::{Duration, Instant};

use svc_testkit::{agent::Agent, topology::require_root, traffic::BulkResult};

mod traffic_common;
use traffic_common::*;

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
            let path = (p.client, p.target.as_str(), p.what.as_str(), p.backend);
            failures.extend(bulk_failure(&format!("xdp {xdp_mode}"), &r, path, dir));
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
fn bulk_8mb_each_way_on_every_path_xdp_generic() {
    require_root();
    bulk_everywhere("generic");
}

/// The agent's default on a veth uplink: no XDP at all (`--xdp-mode auto`), the tc uplink
/// program serves north-south traffic alone.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn bulk_8mb_each_way_on_every_path_xdp_auto_is_tc_alone_on_veth() {
    require_root();
    bulk_everywhere_with(&["--xdp-mode", "auto"], "auto", |s| {
        for node in s.t.nodes() {
            let link =
                s.t.exec_ok(&node.ns, &["ip", "-d", "link", "show", "dev", "eth0"])
                    .unwrap();
            assert!(
                !link.split_whitespace().any(|w| w.starts_with("xdp")),
                "node {}: auto attached XDP to a veth uplink: {link}",
                node.index
            );
        }
    });
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
