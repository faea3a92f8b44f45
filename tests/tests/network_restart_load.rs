//! Restart under load (needs root): the agent on the client's node is stopped and started
//! again, alternately with `kill -9` and with SIGTERM (a rolling DaemonSet update), while
//! long-lived connections exchange data every second and new connections arrive at a set
//! rate, and Services change while it is down. Every other restart also changes the
//! programs it loads (another `--conntrack-tcp-timeout-close`, a different load-time global),
//! so the new agent swaps in a different program, as an upgrade does.
//!
//! After each restart: the maps equal, without ids, what a fresh agent computes from the same
//! manifests on the same node (the agent's own pure pipeline: manifests → model → plan →
//! in-memory maps), the Service created meanwhile answers, and the one deleted meanwhile is
//! gone. At the end: 0 long-lived connections broken or moved to another backend, 0 new
//! connections failed.
//!
//! The topology is dual-stack and `web` too: the same load runs over its IPv6 ClusterIP at the
//! same time (a third of the long-lived connections, half the rate), and no IPv6 connection
//! may break or fail either. (The maps are compared for IPv4; the IPv6 ones are pinned and
//! adopted alike.)
//!
//! Sizes: the CI run uses 4 restarts, 300 long-lived connections and 100 new connections/s;
//! `cargo xtask soak` sets `SVC_SOAK_RESTARTS=20 SVC_SOAK_CONNS=1000 SVC_SOAK_RATE=500`.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::time::{Duration, Instant};

use svc_core::{
    dataplane::{
        fake::{canonical, CanonicalFrontend, FakeDataplane},
        Dataplane,
    },
    model::{self, NodeContext},
    reconcile::{plan, Programmed},
    source::manifests,
};
use svc_testkit::{
    agent::{node_name, ready_endpoints_yaml, Agent, ManifestDir},
    probe::{HoldSummary, Summary},
    topology::{require_root, Topology, TopologySpec},
};

const PROBE: &str = env!("CARGO_BIN_EXE_svc-probe");
const VIP: &str = "10.96.0.10";
const VIP6: &str = "fd00:10:96::10";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

fn service_yaml(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  clusterIP: {ip}\n  ports:\n    - {{port: 80, targetPort: 8080, protocol: TCP}}\n"
    )
}

fn slice_yaml(name: &str, endpoints: &[(String, usize)]) -> String {
    slice_yaml_of(name, "1", "IPv4", endpoints)
}

/// EndpointSlice `{name}-{suffix}` of `family` (`IPv4`, `IPv6`).
fn slice_yaml_of(name: &str, suffix: &str, family: &str, endpoints: &[(String, usize)]) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{suffix}\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\n\
         addressType: {family}\nports:\n  - {{port: 8080, protocol: TCP}}\nendpoints:\n{}",
        ready_endpoints_yaml(endpoints)
    )
}

/// The churn Service of round `i`: 10.96.1.`i` → one backend.
fn churn(i: u64) -> (String, String) {
    (format!("churn-{i}"), format!("10.96.1.{}", i + 1))
}

/// What a fresh agent on `node` programs from `dir`: the agent's own pipeline in memory.
fn fresh_maps(
    t: &Topology,
    node: usize,
    dir: &std::path::Path,
) -> std::collections::BTreeMap<svc_common::FrontendKey, CanonicalFrontend> {
    let objects = manifests::load_dir(dir).expect("manifests load");
    let ctx = NodeContext {
        node_name: node_name(node),
        node_ips: vec![t.node_ip(node)],
        ..NodeContext::default()
    };
    let desired = model::desired(&objects, &ctx);
    let p = plan(&Programmed::default(), &desired);
    let mut fake = FakeDataplane::new();
    for op in &p.ops {
        fake.apply(op).expect("a fresh plan applies");
    }
    canonical(&fake.snapshot)
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn restarts_under_load_break_no_connection_and_converge() {
    require_root();
    let restarts = env_or("SVC_SOAK_RESTARTS", 4);
    let conns = env_or("SVC_SOAK_CONNS", 300);
    let rate = env_or("SVC_SOAK_RATE", 100);

    let t = Topology::build(
        &TopologySpec::new()
            .node(&["client", "be1"])
            .node(&["be2", "be3"])
            .dual_stack(true),
    )
    .expect("building the topology");
    let _servers = t
        .serve(&["be1", "be2", "be3"], &["--tcp", "8080"])
        .expect("backend servers");
    let ep = |p: &str, n: usize| (t.pod_ip(p).to_string(), n);
    let dir = ManifestDir::new(&t).expect("manifest dir");
    dir.write(
        "web.yaml",
        &service_yaml("web", VIP).replace(
            &format!("  clusterIP: {VIP}\n"),
            &format!(
                "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  \
                 clusterIP: {VIP}\n  clusterIPs: [\"{VIP}\", \"{VIP6}\"]\n"
            ),
        ),
    )
    .unwrap();
    dir.write(
        "web-slice.yaml",
        &slice_yaml("web", &[ep("be1", 1), ep("be2", 2), ep("be3", 2)]),
    )
    .unwrap();
    let ep6 = |p: &str, n: usize| (t.pod_ip6(p).to_string(), n);
    dir.write(
        "web-slice6.yaml",
        &slice_yaml_of(
            "web",
            "6",
            "IPv6",
            &[ep6("be1", 1), ep6("be2", 2), ep6("be3", 2)],
        ),
    )
    .unwrap();
    let (name, ip) = churn(0);
    dir.write(&format!("{name}.yaml"), &service_yaml(&name, &ip))
        .unwrap();
    dir.write(
        &format!("{name}-slice.yaml"),
        &slice_yaml(&name, &[ep("be2", 2)]),
    )
    .unwrap();
    let mut agents = Agent::start_all(&t, 2, dir.path(), &[]).expect("agents");
    // The load opens `rate` connections/s from one address to one frontend, and the client
    // keeps each closed one in TIME_WAIT for 60 s: the default 28 232 ephemeral ports last
    // only to ~470/s (EADDRNOTAVAIL beyond). Widen the client pod's range (its own namespace).
    t.exec_ok(
        t.pod_ns("client"),
        &["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"],
    )
    .expect("widening the client's port range");

    // Long enough for every restart (program loads take seconds of verifier time each).
    let duration_s = 60 + restarts * 30;
    // The same load over each family: IPv4 at the full size, IPv6 at a third of the
    // long-lived connections and half the rate, at the same time.
    let loads = [
        (format!("{VIP}:80"), conns, rate),
        (format!("[{VIP6}]:80"), conns.div_ceil(3), rate.div_ceil(2)),
    ];
    let mut holds = Vec::new();
    for (target, conns, _) in &loads {
        let mut hold = t
            .spawn(
                t.pod_ns("client"),
                &[
                    PROBE,
                    "hold",
                    "--target",
                    target,
                    "--conns",
                    &conns.to_string(),
                    "--duration-s",
                    &duration_s.to_string(),
                    "--interval-ms",
                    "1000",
                    "--timeout-ms",
                    "5000",
                ],
            )
            .expect("long-lived connections");
        hold.wait_for_line(Duration::from_secs(60), |l| l == "ready")
            .unwrap_or_else(|e| panic!("long-lived connections to {target} open: {e:#}"));
        holds.push(hold);
    }
    // New connections at `rate`/s for as long as the restarts may take.
    let mut news = Vec::new();
    for (target, _, rate) in &loads {
        let load = t
            .spawn(
                t.pod_ns("client"),
                &[
                    PROBE,
                    "tcp",
                    "--target",
                    target,
                    "--count",
                    &(rate * duration_s).to_string(),
                    "--parallel",
                    "32",
                    "--rate",
                    &rate.to_string(),
                    "--timeout-ms",
                    "5000",
                ],
            )
            .expect("new connections");
        news.push(load);
    }
    let started = Instant::now();

    let mut agent = agents.remove(0);
    for i in 0..restarts {
        let how = if i % 2 == 0 { "kill -9" } else { "SIGTERM" };
        if i % 2 == 0 {
            agent.kill9();
        } else {
            agent
                .sigterm()
                .unwrap_or_else(|e| panic!("restart {i}: {e:#}"));
        }
        // While it is down: a Service comes, the previous one goes.
        let (old, _) = churn(i);
        let (new, new_ip) = churn(i + 1);
        dir.remove(&format!("{old}.yaml")).unwrap();
        dir.remove(&format!("{old}-slice.yaml")).unwrap();
        dir.write(&format!("{new}.yaml"), &service_yaml(&new, &new_ip))
            .unwrap();
        dir.write(
            &format!("{new}-slice.yaml"),
            &slice_yaml(
                &new,
                &[ep(
                    if i % 2 == 0 { "be1" } else { "be3" },
                    1 + i as usize % 2,
                )],
            ),
        )
        .unwrap();
        // Every other agent loads a different program (another load-time global).
        let flags: &[&str] = if i % 2 == 0 {
            &["--conntrack-tcp-timeout-close", "11s"]
        } else {
            &[]
        };
        agent = Agent::start(&t, 1, dir.path(), flags).expect("restarting the agent");
        agent
            .wait_healthy(&t, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("restart {i} ({how}): {e:#}"));
        let want = fresh_maps(&t, 1, dir.path());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = canonical(&agent.snapshot().unwrap());
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "restart {i} ({how}): maps differ from a fresh agent's\n got: {got:?}\nwant: {want:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let s = Summary::tcp_from(&t, t.pod_ns("client"), &format!("{new_ip}:80"), 10).unwrap();
        assert_eq!(
            (s.ok, s.failed),
            (10, 0),
            "restart {i}: {new} answers: {s:?}"
        );
        println!(
            "restart {i} ({how}) done at {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    let elapsed = started.elapsed().as_secs_f64();
    for ((hold, load), (target, conns, rate)) in holds.into_iter().zip(news).zip(&loads) {
        hold.signal(libc::SIGTERM).unwrap();
        let done = hold.finish(Duration::from_secs(60)).expect("hold finished");
        let held = HoldSummary::from_output(&done.stdout).expect("hold summary");
        let load = load
            .terminate(Duration::from_secs(10))
            .expect("load stopped");
        let fresh = Summary::from_output(&load.stdout).ok();
        println!(
            "{target}: {restarts} restarts in {elapsed:.1} s; long-lived: {} conns, broken {}, \
             switched {}, failed {}; new: {} ok, {} failed ({:.0}/s)",
            held.conns.len(),
            held.broken,
            held.switched,
            held.failed,
            fresh.as_ref().map_or(0, |f| f.ok),
            fresh.as_ref().map_or(0, |f| f.failed),
            fresh.as_ref().map_or(0.0, |f| f.ok as f64 / elapsed),
        );
        assert_eq!(held.conns.len() as u64, *conns, "{target}");
        assert_eq!(
            (held.broken, held.switched, held.failed),
            (0, 0, 0),
            "{target}: no long-lived connection may break or move: {held:?}"
        );
        let fresh = fresh.expect("the load's summary (it prints one on SIGTERM)");
        assert_eq!(
            fresh.failed, 0,
            "{target}: no new connection may fail: {} failed, errors {:?}",
            fresh.failed, fresh.errors
        );
        assert!(fresh.ok > rate * 10, "{target}: the load ran: {fresh:?}");
    }
}
