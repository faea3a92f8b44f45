//! Socket-level load balancing for pods (`--pod-socket-lb`, on by default), end to end (needs
//! root).
//!
//! Pods' processes run in their node's cgroup, where that node's agent attaches its socket
//! hooks (`TopologySpec::pod_socket_lb`). Node 1 runs the client pod and `be1`, node 2 `be2`.
//! Service `dns` (10.96.0.53, UDP 53 → 5353, TCP 80 → 8080) has both as endpoints.
//!
//! The rest of the ClusterIP tests run in this mode too: `cargo xtask test` runs them a second
//! time with `SVC_TEST_POD_SOCKET_LB=1`.
#![allow(unused_crate_dependencies)]
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use svc_common::{Hook, Reason};
use svc_testkit::{
    agent::{node_name, Agent, ManifestDir},
    probe::Summary,
    topology::{require_root, NsChild, Topology, TopologySpec},
    traffic::StreamSummary,
};

const VIP: &str = "10.96.0.53";
/// Service `sticky`: the same backends, `sessionAffinity: ClientIP`.
const STICKY: &str = "10.96.0.54";
const PROBE: &str = env!("CARGO_BIN_EXE_svc-probe");

fn manifests(t: &Topology, backends: &[&str]) -> String {
    let mut eps = String::new();
    for be in backends {
        let node = t.pod(be).node;
        eps.push_str(&format!(
            "  - addresses: [\"{}\"]\n    conditions: {{ready: true}}\n    nodeName: {}\n",
            t.pod_ip(be),
            node_name(node)
        ));
    }
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dns, namespace: default}}\nspec:\n  \
         clusterIP: {VIP}\n  ports:\n  - {{name: dns, protocol: UDP, port: 53, targetPort: 5353}}\n  \
         - {{name: http, protocol: TCP, port: 80, targetPort: 8080}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: dns-1\n  \
         namespace: default\n  labels: {{kubernetes.io/service-name: dns}}\naddressType: IPv4\n\
         ports:\n  - {{name: dns, protocol: UDP, port: 5353}}\n  - {{name: http, protocol: TCP, port: 8080}}\n\
         endpoints:\n{eps}---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: sticky, namespace: default}}\nspec:\n  \
         clusterIP: {STICKY}\n  sessionAffinity: ClientIP\n  ports:\n  \
         - {{name: http, protocol: TCP, port: 80, targetPort: 8080}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: sticky-1\n  \
         namespace: default\n  labels: {{kubernetes.io/service-name: sticky}}\naddressType: IPv4\n\
         ports:\n  - {{name: http, protocol: TCP, port: 8080}}\nendpoints:\n{eps}"
    )
}

struct Scene {
    agents: Vec<Agent>,
    _servers: Vec<NsChild>,
    manifests: ManifestDir,
    t: Topology,
}

impl Scene {
    fn start() -> Self {
        let t = Topology::build(
            &TopologySpec::new()
                .node(&["client", "be1"])
                .node(&["be2"])
                .pod_socket_lb(true),
        )
        .expect("building the topology");
        let servers = t
            .serve(&["be1", "be2"], &["--udp", "5353", "--tcp", "8080"])
            .expect("backend servers");
        let m = ManifestDir::new(&t).expect("manifest dir");
        m.write("dns.yaml", &manifests(&t, &["be1", "be2"]))
            .unwrap();
        let mut agents = Vec::new();
        for n in 1..=2 {
            let mut a = Agent::start(&t, n, m.path(), &[]).expect("starting the agent");
            a.wait_healthy(&t, Duration::from_secs(60)).unwrap();
            agents.push(a);
        }
        Self {
            agents,
            _servers: servers,
            manifests: m,
            t,
        }
    }

    fn counter(&self, hook: Hook, reason: Reason) -> u64 {
        self.agents[0].counter(hook, reason).unwrap()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Whether the running kernel has the kfunc (Linux 6.5): its name is in the kernel's BTF.
fn kernel_has_sock_destroy() -> bool {
    std::fs::read("/sys/kernel/btf/vmlinux")
        .is_ok_and(|btf| btf.windows(17).any(|w| w == b"bpf_sock_destroy\0"))
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root")]
fn pod_connections_go_straight_to_backends_with_the_frontend_shown_back() {
    require_root();
    let scene = Scene::start();
    let client = scene.t.pod_ns("client");
    let translated = scene.counter(Hook::Sock, Reason::SockTranslated);
    let dnat = scene.counter(Hook::PodIngress, Reason::DnatNew);
    for (proto, count) in [("tcp", "40"), ("udp", "40")] {
        let target = if proto == "tcp" {
            format!("{VIP}:80")
        } else {
            format!("{VIP}:53")
        };
        let out = scene
            .t
            .exec_ok(
                client,
                &[PROBE, proto, "--target", &target, "--count", count],
            )
            .unwrap();
        let s = Summary::from_output(&out).unwrap();
        assert_eq!(s.ok, 40, "{proto}: {s:?}");
        // Both backends answer: a choice per connection (TCP) or per socket (UDP).
        assert!(s.by_backend.len() == 2, "{proto}: {:?}", s.by_backend);
        // The application sees the frontend as its peer (getpeername / recvmsg restored).
        assert_eq!(s.reply_from, vec![target.clone()], "{proto}");
    }
    assert!(
        scene.counter(Hook::Sock, Reason::SockTranslated) >= translated + 80,
        "every connection and datagram socket translated in the call"
    );
    assert_eq!(
        scene.counter(Hook::PodIngress, Reason::DnatNew),
        dnat,
        "no packet of the client needed per-packet NAT"
    );
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root")]
fn a_connected_udp_socket_leaves_a_removed_backend_within_a_second() {
    require_root();
    let scene = Scene::start();
    let client = scene.t.pod_ns("client");
    let target = format!("{VIP}:53");
    let mut stream = scene
        .t
        .spawn(
            client,
            &[
                PROBE,
                "udp-stream",
                "--target",
                &target,
                "--interval-ms",
                "20",
                "--duration-s",
                "6",
                "--connect",
            ],
        )
        .unwrap();
    let first = stream
        .wait_for_line(Duration::from_secs(5), |l| l.starts_with("first "))
        .unwrap();
    let gone = first.trim_start_matches("first ").to_owned();
    let stays = if gone == "be1" { "be2" } else { "be1" };
    // Let the stream run on its backend, then take that backend out of the Service.
    std::thread::sleep(Duration::from_millis(500));
    let destroyed = scene.counter(Hook::Sock, Reason::SockDestroyed);
    let removed_ms = unix_ms();
    scene
        .manifests
        .write("dns.yaml", &manifests(&scene.t, &[stays]))
        .unwrap();
    let done = stream.finish(Duration::from_secs(15)).unwrap();
    assert!(done.status.success(), "{}", done.stderr);
    let s: StreamSummary = serde_json::from_str(done.stdout.lines().last().unwrap()).unwrap();
    let moved_ms = s
        .replies
        .iter()
        .find(|r| r.sent_ms > removed_ms && r.backend == stays)
        .map(|r| r.recv_ms)
        .unwrap_or_else(|| panic!("never reached {stays}: {s:?}"));
    assert!(
        moved_ms - removed_ms <= 1000,
        "the socket reached {stays} {} ms after {gone} left: {s:?}",
        moved_ms - removed_ms
    );
    let late: Vec<_> = s
        .replies
        .iter()
        .filter(|r| r.sent_ms > moved_ms && r.backend == gone)
        .collect();
    assert!(late.is_empty(), "{gone} still answered: {late:?}");
    // Every reply shows the frontend, before and after the move.
    assert!(s.replies.iter().all(|r| r.from == target), "{s:?}");
    if kernel_has_sock_destroy() {
        // Destroyed (the application saw ECONNABORTED and connected again), not moved by
        // the per-packet path.
        assert!(
            scene.counter(Hook::Sock, Reason::SockDestroyed) > destroyed,
            "no socket destroyed"
        );
        assert_eq!(s.reconnects_ms.len(), 1, "{s:?}");
        assert!(
            s.errors
                .iter()
                .any(|e| e.contains("103") || e.contains("aborted")),
            "{:?}",
            s.errors
        );
    } else {
        // Without the kfunc the connect() stayed per packet and conntrack followed the change.
        assert!(s.reconnects_ms.is_empty(), "{s:?}");
    }
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root")]
fn session_affinity_stays_on_the_per_packet_path_and_keeps_the_client_on_one_backend() {
    require_root();
    let scene = Scene::start();
    let client = scene.t.pod_ns("client");
    let per_packet = scene.counter(Hook::Sock, Reason::SockPerPacket);
    let sticky = scene.counter(Hook::PodIngress, Reason::Affinity);
    let target = format!("{STICKY}:80");
    let out = scene
        .t
        .exec_ok(
            client,
            &[PROBE, "tcp", "--target", &target, "--count", "30"],
        )
        .unwrap();
    let s = Summary::from_output(&out).unwrap();
    assert_eq!(s.ok, 30, "{s:?}");
    assert_eq!(
        s.by_backend.len(),
        1,
        "ClientIP affinity: {:?}",
        s.by_backend
    );
    assert_eq!(s.reply_from, vec![target]);
    // Keyed on the client's address, which a socket call does not have: left to the pod's
    // veth, where the first connection chose and the other 29 followed the affinity entry.
    assert!(scene.counter(Hook::Sock, Reason::SockPerPacket) >= per_packet + 30);
    assert!(scene.counter(Hook::PodIngress, Reason::Affinity) >= sticky + 29);
}
