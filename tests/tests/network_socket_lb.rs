//! Socket-level load balancing for pods (`--pod-socket-lb`, on by default), end to end (needs
//! root).
//!
//! Pods' processes run in their node's cgroup, where that node's agent attaches its socket
//! hooks (`TopologySpec::pod_socket_lb`). Node 1 runs the client pod and `be1`, node 2 `be2`.
//! Service `dns` (10.96.0.53, UDP 53 → 5353, TCP 80 → 8080) has both as endpoints.
//!
//! In the dual-stack topology, service `sticky6` (fd00:10:96::54, IPv6 only) has the same
//! backends and `sessionAffinity: ClientIP` over IPv6.
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
/// Service `sticky6`: `sticky` over IPv6 (dual-stack scene only).
const STICKY6: &str = "fd00:10:96::54";
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

/// `sticky6`: an IPv6 single-stack Service with ClientIP affinity on `backends`' IPv6
/// addresses.
fn sticky6_manifest(t: &Topology, backends: &[&str]) -> String {
    let mut eps = String::new();
    for be in backends {
        eps.push_str(&format!(
            "  - addresses: [\"{}\"]\n    conditions: {{ready: true}}\n    nodeName: {}\n",
            t.pod_ip6(be),
            node_name(t.pod(be).node)
        ));
    }
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: sticky6, namespace: default}}\nspec:\n  \
         ipFamilies: [IPv6]\n  clusterIP: \"{STICKY6}\"\n  sessionAffinity: ClientIP\n  ports:\n  \
         - {{name: http, protocol: TCP, port: 80, targetPort: 8080}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: sticky6-1\n  \
         namespace: default\n  labels: {{kubernetes.io/service-name: sticky6}}\naddressType: IPv6\n\
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
        Self::start_with(false)
    }

    /// The scene; in the dual-stack topology with `sticky6` when `dual`.
    fn start_with(dual: bool) -> Self {
        let t = Topology::build(
            &TopologySpec::new()
                .node(&["client", "be1"])
                .node(&["be2"])
                .pod_socket_lb(true)
                .dual_stack(dual),
        )
        .expect("building the topology");
        let servers = t
            .serve(&["be1", "be2"], &["--udp", "5353", "--tcp", "8080"])
            .expect("backend servers");
        let m = ManifestDir::new(&t).expect("manifest dir");
        m.write("dns.yaml", &manifests(&t, &["be1", "be2"]))
            .unwrap();
        if dual {
            m.write("sticky6.yaml", &sticky6_manifest(&t, &["be1", "be2"]))
                .unwrap();
        }
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

/// 30 connections from the client pod to `target` (a ClientIP-affinity Service) stay on one
/// backend, decided per packet on the pod's veth (`ingress`): the socket hook (`sock`) leaves
/// them there, the first chose and the other 29 followed the affinity entry.
fn affinity_keeps_the_client_on_one_backend(
    scene: &Scene,
    target: &str,
    sock: Hook,
    ingress: Hook,
) {
    let client = scene.t.pod_ns("client");
    let per_packet = scene.counter(sock, Reason::SockPerPacket);
    let sticky = scene.counter(ingress, Reason::Affinity);
    let out = scene
        .t
        .exec_ok(client, &[PROBE, "tcp", "--target", target, "--count", "30"])
        .unwrap();
    let s = Summary::from_output(&out).unwrap();
    assert_eq!(s.ok, 30, "{target}: {s:?}");
    assert_eq!(
        s.by_backend.len(),
        1,
        "ClientIP affinity to {target}: {:?}",
        s.by_backend
    );
    assert_eq!(s.reply_from, vec![target.to_owned()]);
    // Keyed on the client's address, which a socket call does not have: left to the pod's
    // veth.
    assert!(scene.counter(sock, Reason::SockPerPacket) >= per_packet + 30);
    assert!(scene.counter(ingress, Reason::Affinity) >= sticky + 29);
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root")]
fn session_affinity_stays_on_the_per_packet_path_and_keeps_the_client_on_one_backend() {
    require_root();
    let scene = Scene::start();
    affinity_keeps_the_client_on_one_backend(
        &scene,
        &format!("{STICKY}:80"),
        Hook::Sock,
        Hook::PodIngress,
    );
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root")]
fn ipv6_session_affinity_keeps_the_client_on_one_backend() {
    require_root();
    let scene = Scene::start_with(true);
    affinity_keeps_the_client_on_one_backend(
        &scene,
        &format!("[{STICKY6}]:80"),
        Hook::Sock6,
        Hook::PodIngress6,
    );
    // The affinity entry is an IPv6 one (SVC_AFFINITY6), keyed on the client's IPv6 address.
    let pin = scene.agents[0].bpffs().join(svc_common::MAP_AFFINITY6);
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
    let client: Vec<serde_json::Value> = scene
        .t
        .pod_ip6("client")
        .octets()
        .iter()
        .map(|&b| serde_json::json!(b))
        .collect();
    let keyed_on_client = dump.as_array().into_iter().flatten().any(|e| {
        e["formatted"]["key"]
            .to_string()
            .contains(&serde_json::Value::Array(client.clone()).to_string())
    });
    assert!(
        keyed_on_client,
        "{} must hold an entry keyed on the client's IPv6 address: {dump:#}",
        svc_common::MAP_AFFINITY6
    );
}
