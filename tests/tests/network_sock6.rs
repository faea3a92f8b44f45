//! The IPv6 cgroup socket hooks (`connect6`, `sendmsg6`, `recvmsg6`, `getpeername6`; svc-ebpf
//! `sock.rs`), end to end (needs root), in `network_traffic`'s dual-stack scene (see
//! `network_ipv6` for its Services: `one` → be1 on node 1, `two` → be2 on node 2):
//! - a process in node 1's namespace (in the cgroup of node 1's agent) reaches both IPv6
//!   ClusterIPs, which it has no route to otherwise: 8 MB each way over TCP, UDP exchanges, the
//!   frontend shown back by `getpeername` and as the source of every UDP reply, counted under
//!   `Hook::Sock6`;
//! - a dual-stack (`AF_INET6`) socket of the node reaches the IPv4 ClusterIPs through their
//!   IPv4-mapped addresses (`::ffff:10.96.1.1`): translated with the IPv4 maps in `connect6`,
//!   the backend written back IPv4-mapped, the mapped frontend shown back;
//! - with socket-level load balancing for pods, a pod's `connect6` to an IPv6 ClusterIP is
//!   translated in the call, and no packet of it needs per-packet NAT;
//! - a pod's UDP socket connected through `connect6` leaves a removed backend within a second
//!   (the socket reaper destroys IPv6 sockets too).
#![allow(unused_crate_dependencies)]
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use svc_common::{Hook, Reason};
use svc_testkit::{
    agent::node_name,
    probe::Summary,
    topology::{require_root, Enter, SpawnOpts, Topology},
    traffic::{BulkResult, SizedUdpSummary, StreamSummary},
};

mod traffic_common;
use traffic_common::*;

/// UDP exchanges per target.
const UDP_COUNT: u32 = 20;

/// Runs svc-probe `args` in node 1's namespace, in the cgroup node 1's agent serves (a node
/// process: the kubelet, a hostNetwork pod); returns its last stdout line.
fn on_node(scene: &Scene, args: &[&str]) -> String {
    let mut cmd = vec![PROBE];
    cmd.extend_from_slice(args);
    let opts = SpawnOpts {
        enter: Enter::Nsenter,
        cgroup: Some(scene.agents[0].cgroup().to_owned()),
        ..Default::default()
    };
    let done = scene
        .t
        .spawn_opts(&scene.t.node(1).ns, &cmd, &opts)
        .unwrap()
        .finish(Duration::from_secs(60))
        .unwrap();
    assert!(
        done.status.success(),
        "svc-probe {args:?} on node 1: {}",
        done.stderr
    );
    last_line(&done.stdout).to_owned()
}

fn node_bulk(scene: &Scene, target: &str, dir: &str) -> BulkResult {
    let out = on_node(
        scene,
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
    serde_json::from_str(&out).unwrap()
}

fn node_sized(scene: &Scene, target: &str) -> SizedUdpSummary {
    let out = on_node(
        scene,
        &[
            "sized-udp",
            "--target",
            target,
            "--count",
            &UDP_COUNT.to_string(),
            "--request-len",
            "200",
            "--reply-len",
            "1000",
            "--timeout-ms",
            "500",
        ],
    );
    serde_json::from_str(&out).unwrap()
}

/// 8 MB each way to `target` (bulk port) and UDP exchanges to `udp_target`, from node 1,
/// answered by `backend`, with the targets shown back.
fn node_reaches(scene: &Scene, target: &str, udp_target: &str, backend: &str, what: &str) {
    for dir in ["download", "upload"] {
        let r = node_bulk(scene, target, dir);
        assert!(r.ok, "{what}: TCP {dir}: {r:?}");
        assert_eq!(r.bytes, BULK, "{what}: TCP {dir}: {r:?}");
        assert_eq!(r.backend, backend, "{what}: TCP {dir}: {r:?}");
        assert_eq!(
            r.reply_from, target,
            "{what}: getpeername must show the frontend"
        );
    }
    let u = node_sized(scene, udp_target);
    assert_eq!(
        (u.ok, u.failed, u.corrupt),
        (UDP_COUNT as u64, 0, 0),
        "{what}: UDP: {u:?}"
    );
    assert_eq!(
        u.by_backend.keys().collect::<Vec<_>>(),
        vec![backend],
        "{what}: UDP: {u:?}"
    );
    assert_eq!(
        u.reply_from,
        vec![udp_target.to_owned()],
        "{what}: UDP replies must come from the frontend"
    );
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn node_processes_reach_ipv6_and_ipv4_mapped_cluster_ips_through_the_ipv6_hooks() {
    require_root();
    let scene = Scene::start_dual_stack_pod_socket_lb(&[], false);
    let node1 = &scene.agents[0];
    let counter = |hook, reason| node1.counter(hook, reason).unwrap();

    // IPv6 ClusterIPs: connect6 / sendmsg6 with the IPv6 maps.
    let translated4 = counter(Hook::Sock, Reason::SockTranslated);
    let translated6 = counter(Hook::Sock6, Reason::SockTranslated);
    let rev6 = counter(Hook::Sock6, Reason::SockRevNat);
    for s in SERVICES {
        node_reaches(
            &scene,
            &format!("[{}]:9000", s.cluster_ip6),
            &format!("[{}]:7053", s.cluster_ip6),
            s.backend,
            &format!("node 1 -> IPv6 ClusterIP of {}", s.name),
        );
    }
    // Two connects per Service (TCP), one sendmsg per datagram (UDP, unconnected).
    let n = counter(Hook::Sock6, Reason::SockTranslated) - translated6;
    assert!(
        n >= 2 * (2 + UDP_COUNT as u64),
        "connect6/sendmsg6 translations: {n}"
    );
    let n = counter(Hook::Sock6, Reason::SockRevNat) - rev6;
    assert!(
        n >= 2 * (2 + UDP_COUNT as u64),
        "getpeername6/recvmsg6 restorations: {n}"
    );
    assert_eq!(
        counter(Hook::Sock, Reason::SockTranslated),
        translated4,
        "IPv6 calls are not the IPv4 hooks'"
    );

    // IPv4 ClusterIPs through IPv4-mapped addresses of a dual-stack socket: connect6 with the
    // IPv4 maps (TCP); a sendmsg() to a mapped address runs sendmsg4 (udpv6_sendmsg hands it
    // to udp_sendmsg), its replies recvmsg6.
    let translated4 = counter(Hook::Sock, Reason::SockTranslated);
    let translated6 = counter(Hook::Sock6, Reason::SockTranslated);
    let rev6 = counter(Hook::Sock6, Reason::SockRevNat);
    for s in SERVICES {
        node_reaches(
            &scene,
            &format!("[::ffff:{}]:9000", s.cluster_ip),
            &format!("[::ffff:{}]:7053", s.cluster_ip),
            s.backend,
            &format!("node 1 -> IPv4-mapped ClusterIP of {}", s.name),
        );
    }
    let n = counter(Hook::Sock6, Reason::SockTranslated) - translated6;
    assert!(n >= 2 * 2, "connect6 translations of mapped addresses: {n}");
    let n = counter(Hook::Sock, Reason::SockTranslated) - translated4;
    assert!(
        n >= 2 * UDP_COUNT as u64,
        "sendmsg4 translations of mapped addresses: {n}"
    );
    let n = counter(Hook::Sock6, Reason::SockRevNat) - rev6;
    assert!(
        n >= 2 * (2 + UDP_COUNT as u64),
        "getpeername6/recvmsg6 restorations of mapped addresses: {n}"
    );
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn a_pods_connect6_is_translated_in_the_call_with_pod_socket_lb() {
    require_root();
    let scene = Scene::start_dual_stack_pod_socket_lb(&["--pod-socket-lb", "on"], true);
    let node1 = &scene.agents[0];
    let counter = |hook, reason| node1.counter(hook, reason).unwrap();
    let translated6 = counter(Hook::Sock6, Reason::SockTranslated);
    let dnat6 = counter(Hook::PodIngress6, Reason::DnatNew);
    let c1 = scene.t.pod_ip6("c1").to_string();
    for s in SERVICES {
        let target = format!("[{}]:9000", s.cluster_ip6);
        for dir in ["download", "upload"] {
            let r = scene.bulk("c1", &target, dir);
            assert!(r.ok, "c1 -> {target} {dir}: {r:?}");
            assert_eq!(r.backend, s.backend, "{r:?}");
            assert_eq!(r.reply_from, target, "getpeername6 shows the frontend");
            assert!(
                r.peer_seen_by_backend.starts_with(&format!("[{c1}]:")),
                "the backend sees the pod's own address: {r:?}"
            );
        }
        let udp_target = format!("[{}]:7053", s.cluster_ip6);
        let u = scene.sized("c1", &udp_target, UDP_COUNT, 200, 1000);
        assert_eq!((u.ok, u.failed), (UDP_COUNT as u64, 0), "{u:?}");
        assert_eq!(
            u.reply_from,
            vec![udp_target],
            "recvmsg6 shows the frontend"
        );
    }
    let n = counter(Hook::Sock6, Reason::SockTranslated) - translated6;
    assert!(
        n >= 2 * (2 + UDP_COUNT as u64),
        "translated in the socket call: {n}"
    );
    assert_eq!(
        counter(Hook::PodIngress6, Reason::DnatNew),
        dnat6,
        "no packet of the pod needed per-packet NAT"
    );
}

/// Service `dns6` (IPv6 only): UDP 53 → 5353 on `backends`.
const DNS6: &str = "fd00:10:96::53";

fn dns6_manifest(t: &Topology, backends: &[&str]) -> String {
    let mut eps = String::new();
    for be in backends {
        eps.push_str(&format!(
            "  - addresses: [\"{}\"]\n    conditions: {{ready: true}}\n    nodeName: {}\n",
            t.pod_ip6(be),
            node_name(t.pod(be).node)
        ));
    }
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dns6, namespace: default}}\nspec:\n  \
         ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n  clusterIP: {DNS6}\n  \
         clusterIPs: [\"{DNS6}\"]\n  ports:\n  \
         - {{name: dns, protocol: UDP, port: 53, targetPort: 5353}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: dns6-1\n  \
         namespace: default\n  labels: {{kubernetes.io/service-name: dns6}}\naddressType: IPv6\n\
         ports:\n  - {{name: dns, protocol: UDP, port: 5353}}\nendpoints:\n{eps}"
    )
}

/// Whether the running kernel has the kfunc (Linux 6.5): its name is in the kernel's BTF.
fn kernel_has_sock_destroy() -> bool {
    std::fs::read("/sys/kernel/btf/vmlinux")
        .is_ok_and(|btf| btf.windows(17).any(|w| w == b"bpf_sock_destroy\0"))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn a_pods_connected_ipv6_udp_socket_leaves_a_removed_backend_within_a_second() {
    require_root();
    if !kernel_has_sock_destroy() {
        eprintln!("skipped: this kernel has no bpf_sock_destroy (Linux 6.5)");
        return;
    }
    let scene = Scene::start_dual_stack_pod_socket_lb(&[], true);
    let _udp_servers = scene.t.serve(&["be1", "be2"], &["--udp", "5353"]).unwrap();
    scene
        .manifests
        .write("dns6.yaml", &dns6_manifest(&scene.t, &["be1", "be2"]))
        .unwrap();
    let target = format!("[{DNS6}]:53");
    // Until the agents have programmed the new Service.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = scene.probe(
            scene.t.pod_ns("c1"),
            &[
                "udp",
                "--target",
                &target,
                "--count",
                "1",
                "--timeout-ms",
                "300",
            ],
        );
        if Summary::from_output(&out).unwrap().ok == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{target} never answered: {out}");
    }
    let mut stream = scene
        .t
        .spawn(
            scene.t.pod_ns("c1"),
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
    std::thread::sleep(Duration::from_millis(500));
    let node1 = &scene.agents[0];
    let destroyed = node1.counter(Hook::Sock6, Reason::SockDestroyed).unwrap();
    let removed_ms = unix_ms();
    scene
        .manifests
        .write("dns6.yaml", &dns6_manifest(&scene.t, &[stays]))
        .unwrap();
    let done = stream.finish(Duration::from_secs(15)).unwrap();
    assert!(done.status.success(), "{}", done.stderr);
    let s: StreamSummary = serde_json::from_str(last_line(&done.stdout)).unwrap();
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
    assert!(
        s.replies
            .iter()
            .all(|r| r.sent_ms <= moved_ms || r.backend != gone),
        "{gone} still answered: {s:?}"
    );
    assert!(s.replies.iter().all(|r| r.from == target), "{s:?}");
    // Destroyed (ECONNABORTED, connected again through connect6), counted as IPv6.
    assert!(
        node1.counter(Hook::Sock6, Reason::SockDestroyed).unwrap() > destroyed,
        "no IPv6 socket destroyed"
    );
    assert_eq!(s.reconnects_ms.len(), 1, "{s:?}");
}
