//! The `network_traffic` scene over IPv6 (needs root): the same two Services made dual-stack
//! (`RequireDualStack`; IPv6 ClusterIP, LB IP and external IP; an IPv6 EndpointSlice), in the
//! dual-stack topology, one agent per node with both node addresses. Every north-south and
//! east-west TCP path of `network_traffic`'s scenario 1 is taken over IPv6 with an 8 MB transfer
//! each way (SHA-256 checked by svc-probe), local and remote backend, pods keeping TSO/GSO; the
//! pod → NodePort paths also carry UDP; a UDP exchange larger than the MTU fragments; the
//! underlay capture verifies every IPv6 checksum (and must have seen IPv6 traffic); the same
//! paths over IPv4 keep working beside it. Once with XDP (generic) on the uplinks, where
//! `svc_xdp6` does the north-south work, and once with classic tc filters and no XDP.
//!
//! | Service | ClusterIP | LB IP | external IP | backend |
//! |---|---|---|---|---|
//! | one | fd00:10:96::1:1 | 2001:db8:2::11 | 2001:db8:100::11 | be1 (node 1) |
//! | two | fd00:10:96::1:2 | 2001:db8:2::12 | 2001:db8:100::12 | be2 (node 2) |
#![allow(unused_crate_dependencies)]
use std::time::Instant;

use svc_common::{Hook, Reason};
use svc_testkit::{
    capture::{verify_checksums, Capture, UNDERLAY_SNAPLEN},
    topology::require_root,
};

mod traffic_common;
use traffic_common::*;

/// A path through a Service over IPv6.
struct Path {
    client: &'static str,
    target: String,
    what: String,
    backend: &'static str,
    /// A pod → NodePort path, which also carries UDP.
    pod_nodeport: bool,
}

fn locality(frontend_node: usize, s: &Svc) -> &'static str {
    if frontend_node == s.backend_node {
        "local backend"
    } else {
        "remote backend"
    }
}

/// `network_traffic`'s paths with IPv6 frontends: NodePorts on the nodes' IPv6 addresses, the
/// IPv6 LB and external IPs (routed via node 1), the IPv6 ClusterIP from pods on both nodes.
fn paths6(scene: &Scene) -> Vec<Path> {
    let node6 = |n: usize| scene.t.node_ip6(n).to_string();
    let mut v = Vec::new();
    for s in SERVICES {
        for n in [1, 2] {
            v.push(Path {
                client: "ext",
                target: format!("[{}]:{}", node6(n), s.np_bulk),
                what: format!(
                    "external client -> IPv6 NodePort on node {n} (Service {}, {})",
                    s.name,
                    locality(n, s)
                ),
                backend: s.backend,
                pod_nodeport: false,
            });
        }
        for (ip, kind) in [
            (s.lb_ip6, "IPv6 LB IP"),
            (s.external_ip6, "IPv6 external IP"),
        ] {
            v.push(Path {
                client: "ext",
                target: format!("[{ip}]:9000"),
                what: format!(
                    "external client -> {kind} via node 1 (Service {}, {})",
                    s.name,
                    locality(1, s)
                ),
                backend: s.backend,
                pod_nodeport: false,
            });
        }
        for (pod, pn) in [("c1", 1), ("c2", 2)] {
            v.push(Path {
                client: pod,
                target: format!("[{}]:9000", s.cluster_ip6),
                what: format!(
                    "pod {pod} (node {pn}) -> IPv6 ClusterIP (Service {}, {})",
                    s.name,
                    locality(pn, s)
                ),
                backend: s.backend,
                pod_nodeport: false,
            });
            for n in [1, 2] {
                v.push(Path {
                    client: pod,
                    target: format!("[{}]:{}", node6(n), s.np_bulk),
                    what: format!(
                        "pod {pod} (node {pn}) -> IPv6 NodePort on node {n} (Service {}, {})",
                        s.name,
                        locality(n, s)
                    ),
                    backend: s.backend,
                    pod_nodeport: true,
                });
            }
        }
    }
    v
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn every_path_over_ipv6_bulk_both_ways_with_checksums_on_the_underlay() {
    require_root();
    let scene = Scene::start_dual_stack(&["--xdp-mode", "generic"]);
    every_path6(&scene, "xdp generic");
    xdp6_did_the_north_south_work(&scene);
    inspect_explain_and_bpftool_show_ipv6(&scene);
}

/// The same paths with the other attachment the agent falls back to: classic tc filters
/// (`--tc-attach classic`, kernels before 6.6) and no XDP (`--xdp-mode auto` on a veth), so
/// the IPv6 tc programs, reached by a tail call from `cls_bpf` filters, serve north-south
/// traffic alone.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn every_path_over_ipv6_with_classic_tc_filters_and_no_xdp() {
    require_root();
    let scene = Scene::start_dual_stack(&["--xdp-mode", "auto", "--tc-attach", "classic"]);
    every_path6(&scene, "classic tc, no xdp");
    let agent = &scene.agents[0];
    let xdp6: u64 = svc_common::ALL_REASONS
        .iter()
        .map(|&(r, _)| agent.counter(Hook::Xdp6, r).unwrap_or(0))
        .sum();
    assert_eq!(xdp6, 0, "node 1: no XDP program may have run");
    let tc_new = agent
        .counter(Hook::UplinkIngress6, Reason::DnatNew)
        .unwrap();
    assert!(
        tc_new >= 10,
        "node 1: uplink_ingress6 opened {tc_new} external IPv6 flows, one per external path \
         expected"
    );
}

/// Every path of [`paths6`] 8 MB each way (UDP beside the pod → NodePort ones, fragments,
/// IPv4 beside), the underlay capture verifying every checksum; `mode` names the run.
fn every_path6(scene: &Scene, mode: &str) {
    let capture = Capture::start_snaplen(
        &scene.t,
        scene.t.underlay_ns(),
        "br0",
        UNDERLAY_SNAPLEN,
        &[],
    )
    .expect("underlay capture");
    let mut failures = Vec::new();
    let started = Instant::now();
    for p in paths6(scene) {
        for dir in ["download", "upload"] {
            let r = scene.bulk(p.client, &p.target, dir);
            let path = (p.client, p.target.as_str(), p.what.as_str(), p.backend);
            failures.extend(bulk_failure(&format!("ipv6, {mode}"), &r, path, dir));
        }
        if p.pod_nodeport {
            let port = if p.backend == "be1" {
                ONE.np_sized
            } else {
                TWO.np_sized
            };
            let ip = p.target.rsplit_once(':').unwrap().0;
            let target = format!("{ip}:{port}");
            let r = scene.sized(p.client, &target, 50, 1200, 1200);
            if r.ok != 50 || r.reply_from != [target.clone()] {
                failures.push(format!(
                    "UDP 50 × 1200 B {} -> {target} [{}]: {} ok, {} failed, {} corrupt, replies from {:?}, errors {:?}",
                    p.client, p.what, r.ok, r.failed, r.corrupt, r.reply_from, r.errors
                ));
            }
        }
    }
    // Datagrams larger than the MTU over IPv6: the sender fragments (IPv6 routers never do),
    // and both fragments of each cross the datapath.
    for s in SERVICES {
        let target = format!("[{}]:7053", s.cluster_ip6);
        let r = scene.sized("c1", &target, 20, 3000, 4000);
        if r.ok != 20 || r.reply_from != [target.clone()] {
            failures.push(format!(
                "UDP 20 × 3000/4000 B c1 -> {target} (fragments): {} ok, {} failed, {} corrupt, replies from {:?}, errors {:?}",
                r.ok, r.failed, r.corrupt, r.reply_from, r.errors
            ));
        }
    }
    // IPv4 beside it, through the same agents: one path of each kind.
    for (client, target) in [
        ("c1", format!("{}:9000", TWO.cluster_ip)),
        ("ext", format!("{}:9000", ONE.lb_ip)),
    ] {
        let r = scene.bulk(client, &target, "download");
        if !r.ok {
            failures.push(format!("IPv4 {client} -> {target}: {:?}", r.error));
        }
    }
    eprintln!("[ipv6, {mode}] all paths in {:?}", started.elapsed());
    let file = capture.stop().expect("stopping the capture");
    let report = verify_checksums(file.path()).expect("reading the capture");
    eprintln!("[ipv6] underlay: {report}");
    assert!(report.is_clean(), "bad checksums on the underlay: {report}");
    assert!(
        report.tcp6 > 10_000 && report.udp6 > 100,
        "IPv6 traffic to and from node 2 must cross the underlay, checksums verified: {report}"
    );
    assert!(
        report.reassembled6 > 0,
        "fragmented IPv6 datagrams must cross the underlay: {report}"
    );
    for (n, agent) in scene.agents.iter().enumerate() {
        // Pods' flows open at pod_ingress6 (or in the socket hooks, with socket-level load
        // balancing), the external client's at xdp6 (or uplink_ingress6 when XDP passed the
        // frame on).
        let new6: u64 = [Hook::PodIngress6, Hook::UplinkIngress6, Hook::Xdp6]
            .into_iter()
            .map(|h| agent.counter(h, Reason::DnatNew).unwrap_or(0))
            .sum();
        assert!(new6 > 0, "{mode}: node {}: no IPv6 flow was opened", n + 1);
    }
    assert!(
        failures.is_empty(),
        "{mode}: {} of the IPv6 paths failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// The external client's paths enter node 1's uplink, where XDP runs in generic mode; the
/// client and the nodes send full checksums (TX checksum offload off on the underlay), so the
/// IPv6 XDP program (`svc_xdp6`, reached from `svc_xdp` by a tail call) must have translated
/// them itself, new flows, established ones and the remote backend's replies, rather than
/// passing everything to tc. Its counters on node 1 show it, next to what it left to tc.
fn xdp6_did_the_north_south_work(scene: &Scene) {
    let agent = &scene.agents[0];
    let c = |r: Reason| {
        agent
            .counter(Hook::Xdp6, r)
            .unwrap_or_else(|e| panic!("node 1: reading the xdp6 counter {r:?}: {e:#}"))
    };
    let (new, est, rev, to_tc) = (
        c(Reason::DnatNew),
        c(Reason::DnatEstablished),
        c(Reason::RevNat),
        c(Reason::ToTc),
    );
    eprintln!(
        "[ipv6] node 1 xdp6: dnat_new {new}, dnat_established {est}, rev_nat {rev}, to_tc {to_tc}"
    );
    // Ten external paths start on node 1 (its NodePorts, the LB and external IPs), each with a
    // download and an upload of 8 MB: at least one new flow each, and thousands of frames.
    assert!(
        new >= 10,
        "node 1: XDP translated {new} new IPv6 flows, expected one per external path \
         (dnat_established {est}, rev_nat {rev}, to_tc {to_tc})"
    );
    assert!(
        est > 1000 && rev > 1000,
        "node 1: XDP translated {est} established IPv6 frames and {rev} replies, expected \
         thousands of each from 8 MB transfers (to_tc {to_tc})"
    );
}

/// What an operator looks at, for the IPv6 state the transfers left on node 1: `inspect
/// services` lists the IPv6 frontends with their IPv6 backends, `inspect conntrack` the IPv6
/// flows, `explain` decides an IPv6 flow, and `bpftool map dump` prints the IPv6 frontend
/// map's fields by name.
fn inspect_explain_and_bpftool_show_ipv6(scene: &Scene) {
    let agent = &scene.agents[0];
    let be1 = scene.t.pod_ip6("be1").to_string();
    let services = agent.cli_json(&["inspect", "services"]).unwrap();
    let svc = services
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["address"] == ONE.cluster_ip6 && v["port"] == 9000)
        .unwrap_or_else(|| {
            panic!(
                "no [{}]:9000 in inspect services: {services:#}",
                ONE.cluster_ip6
            )
        });
    assert_eq!(svc["protocol"], "tcp", "{svc:#}");
    assert_eq!(svc["backends"][0]["address"], be1.as_str(), "{svc:#}");

    let c1 = scene.t.pod_ip6("c1").to_string();
    if scene.t.pod_socket_lb() {
        // Socket-level load balancing for pods: c1's connections went to the backend from
        // connect6(), so there is no flow to list; the hooks counted them.
        let sock = agent.counter(Hook::Sock6, Reason::SockTranslated).unwrap();
        assert!(sock > 0, "no IPv6 socket translated in node 1's cgroup");
    } else {
        let flows = agent
            .cli_json(&[
                "inspect",
                "conntrack",
                "--src",
                &c1,
                "--dst",
                ONE.cluster_ip6,
            ])
            .unwrap();
        let flows = flows.as_array().unwrap();
        assert!(
            !flows.is_empty(),
            "no IPv6 flow c1 -> {} in inspect conntrack",
            ONE.cluster_ip6
        );
        assert!(
            flows.iter().all(|f| f["new_dst"] == be1.as_str()),
            "IPv6 flows to {} must go to be1 ({be1}): {flows:#?}",
            ONE.cluster_ip6
        );
    }
    let e = agent
        .cli_json(&[
            "explain",
            &format!("[{c1}]:40000"),
            &format!("[{}]:9000/tcp", ONE.cluster_ip6),
            "--from",
            "pod",
        ])
        .unwrap();
    assert_eq!(e["new_flow"]["action"], "balance", "{e:#}");
    let cands: Vec<&str> = e["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["address"].as_str().unwrap())
        .collect();
    assert_eq!(cands, [be1.as_str()], "{e:#}");

    let pin = agent.bpffs().join(svc_common::MAP_FRONTENDS6);
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&pin)
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let want: Vec<u64> = ONE
        .cluster_ip6
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets()
        .iter()
        .map(|&b| u64::from(b))
        .collect();
    assert!(
        dump.as_array().unwrap().iter().any(|e| {
            let k = &e["formatted"]["key"];
            k["port"] == 9000
                && k["addr"]["octets"].as_array().is_some_and(|o| {
                    o.iter().map(|v| v.as_u64().unwrap()).collect::<Vec<_>>() == want
                })
        }),
        "bpftool's dump of {} must name the fields and hold [{}]:9000: {dump:#}",
        svc_common::MAP_FRONTENDS6,
        ONE.cluster_ip6
    );
}
