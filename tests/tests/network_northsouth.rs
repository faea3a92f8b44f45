//! North-south end to end (needs root): NodePorts, a LoadBalancer IP and an external IP
//! reached from the external client over the underlay, on XDP and the tc uplink path; traffic
//! policies, hairpin, localhost NodePorts through the cgroup socket hooks, and enough SNAT ports
//! for thousands of new UDP flows to a remote backend.
//!
//! Node 1 runs pods c1, be1 and hp; node 2 runs be2 and c2. The external client (172.18.0.100)
//! routes the documentation ranges via node 1, like a router in front of one node; NodePorts it
//! reaches on either node directly.
//!
//! The topology is dual stack and every Service `RequireDualStack` (an IPv6 ClusterIP from
//! fd00:10:96::/112, LB and external IPs from 2001:db8::/32, an IPv6 EndpointSlice beside the
//! IPv4 one): each test runs its checks for IPv4, then the same ones for IPv6 (external client
//! fd00:18::100, NodePorts on the nodes' fd00:18::/64 addresses), in one scene.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use svc_common::{Hook, Reason};
use svc_testkit::{
    agent::{dual_stack_cluster_ips, endpoint_slices_dual_stack, http_get, Agent, ManifestDir},
    capture::{verify_checksums, Capture},
    probe::Summary,
    topology::{
        ext_addr, host_port, require_root, Enter, Family, NsChild, SpawnOpts, Topology,
        TopologySpec,
    },
};

const PROBE: &str = env!("CARGO_BIN_EXE_svc-probe");

/// The scene's frontend addresses in one family.
struct Addrs {
    lb_ip: &'static str,
    external_ip: &'static str,
    /// ClusterIPs, by Service.
    test_service: &'static str,
    my_service: &'static str,
    test_external_ip: &'static str,
    local: &'static str,
    hairpin: &'static str,
    itp: &'static str,
    remote_only: &'static str,
}

const V4: Addrs = Addrs {
    lb_ip: "192.0.2.127",
    external_ip: "198.51.100.10",
    test_service: "10.96.0.7",
    my_service: "10.0.171.239",
    test_external_ip: "10.96.0.10",
    local: "10.96.0.100",
    hairpin: "10.96.0.50",
    itp: "10.96.0.60",
    remote_only: "10.96.0.30",
};

const V6: Addrs = Addrs {
    lb_ip: "2001:db8:2::127",
    external_ip: "2001:db8:100::10",
    test_service: "fd00:10:96::7",
    my_service: "fd00:10:96::171:239",
    test_external_ip: "fd00:10:96::10",
    local: "fd00:10:96::100",
    hairpin: "fd00:10:96::50",
    itp: "fd00:10:96::60",
    remote_only: "fd00:10:96::30",
};

fn addrs(f: Family) -> &'static Addrs {
    match f {
        Family::V4 => &V4,
        Family::V6 => &V6,
    }
}

/// `ip:port` (`[ip]:port`) for an address constant.
fn at(ip: &str, port: u16) -> String {
    host_port(ip.parse().expect("an address constant"), port)
}

/// The `spec` lines that make a Service dual-stack with the ClusterIPs `pick` gives.
fn cluster_ips(pick: impl Fn(&Addrs) -> &'static str) -> String {
    dual_stack_cluster_ips(pick(&V4), pick(&V6))
}

/// The uplink hook that decides the external client's new flows on node 1: XDP, `svc_xdp` for
/// IPv4 and `svc_xdp6` for IPv6 (ARCHITECTURE, "IPv6 (datapath)").
fn uplink_hook(f: Family) -> Hook {
    match f {
        Family::V4 => Hook::Xdp,
        Family::V6 => Hook::Xdp6,
    }
}

fn pod_ingress_hook(f: Family) -> Hook {
    match f {
        Family::V4 => Hook::PodIngress,
        Family::V6 => Hook::PodIngress6,
    }
}

fn sock_hook(f: Family) -> Hook {
    match f {
        Family::V4 => Hook::Sock,
        Family::V6 => Hook::Sock6,
    }
}

/// The EndpointSlices' ports: http TCP 8080 and dns UDP 5353.
const SLICE_PORTS: &str =
    "  - {name: http, port: 8080, protocol: TCP}\n  - {name: dns, port: 5353, protocol: UDP}\n";

/// Two ports on every Service: http TCP 80 → 8080 and dns UDP 53 → 5353.
const PORTS: &str = "  ports:\n    - {name: http, port: 80, targetPort: 8080, protocol: TCP}\n    \
                     - {name: dns, port: 53, targetPort: 5353, protocol: UDP}\n";

struct Scene {
    agents: Vec<Agent>,
    _servers: Vec<NsChild>,
    _manifests: ManifestDir,
    t: Topology,
}

impl Scene {
    fn start(agent_flags: &[&str]) -> Self {
        let t = Topology::build(
            &TopologySpec::new()
                .node(&["c1", "be1", "hp"])
                .node(&["be2", "c2"])
                .external_client(true)
                .ext_gateway(1)
                .dual_stack(true),
        )
        .expect("building the topology");
        let mut servers = Vec::new();
        for be in ["be1", "be2", "hp"] {
            let mut s = t
                .spawn(
                    t.pod_ns(be),
                    &[PROBE, "serve", "--id", be, "--tcp", "8080", "--udp", "5353"],
                )
                .unwrap();
            s.wait_for_line(Duration::from_secs(5), |l| l == "ready")
                .unwrap();
            servers.push(s);
        }
        let slices =
            |svc: &str, pods: &[&str]| endpoint_slices_dual_stack(&t, svc, SLICE_PORTS, pods);
        let both = ["be1", "be2"];
        let m = ManifestDir::new(&t).unwrap();
        // The seed's NodePort example (nodePort 30007), with a UDP port added.
        m.write(
            "test-service.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: test-service\nspec:\n  type: NodePort\n{}  \
                 selector:\n    app.kubernetes.io/name: MyApp\n  ports:\n    \
                 - {{name: http, port: 80, targetPort: 8080, nodePort: 30007, protocol: TCP}}\n    \
                 - {{name: dns, port: 53, targetPort: 5353, nodePort: 30053, protocol: UDP}}\n{}",
                cluster_ips(|a| a.test_service),
                slices("test-service", &both)
            ),
        )
        .unwrap();
        // The seed's LoadBalancer example (clusterIP 10.0.171.239, ingress 192.0.2.127), and its
        // IPv6 twins.
        m.write(
            "my-service.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: my-service\nspec:\n  type: LoadBalancer\n\
                 {}  selector:\n    app.kubernetes.io/name: MyApp\n{PORTS}\
                 status:\n  loadBalancer:\n    ingress:\n    - ip: {}\n    - ip: {}\n{}",
                cluster_ips(|a| a.my_service),
                V4.lb_ip,
                V6.lb_ip,
                slices("my-service", &both)
            ),
        )
        .unwrap();
        // The seed's external-IP example, with a documentation-range address.
        m.write(
            "test-external-ip.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: test-external-ip\nspec:\n{}  \
                 selector:\n    app.kubernetes.io/name: MyApp\n{PORTS}  externalIPs:\n    - {}\n    - {}\n{}",
                cluster_ips(|a| a.test_external_ip),
                V4.external_ip,
                V6.external_ip,
                slices("test-external-ip", &both)
            ),
        )
        .unwrap();
        // externalTrafficPolicy: Local with its only endpoint on node 2.
        m.write(
            "local.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: local\nspec:\n  type: NodePort\n{}  \
                 externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n  ports:\n    \
                 - {{name: http, port: 80, targetPort: 8080, nodePort: 30100, protocol: TCP}}\n{}",
                cluster_ips(|a| a.local),
                slices("local", &["be2"])
            ),
        )
        .unwrap();
        // Hairpin: the only endpoint is the client itself.
        m.write(
            "hairpin.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: hairpin\nspec:\n{}{PORTS}{}",
                cluster_ips(|a| a.hairpin),
                slices("hairpin", &["hp"])
            ),
        )
        .unwrap();
        // internalTrafficPolicy: Local with an endpoint on each node.
        m.write(
            "itp.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: itp\nspec:\n{}  \
                 internalTrafficPolicy: Local\n{PORTS}{}",
                cluster_ips(|a| a.itp),
                slices("itp", &both)
            ),
        )
        .unwrap();
        // A UDP NodePort whose only endpoint is on node 2: every flow through node 1 is
        // source-NATed, so each new one holds one of node 1's SNAT ports.
        m.write(
            "remote-only.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: remote-only\nspec:\n  type: NodePort\n{}  \
                 ports:\n    - {{name: dns, port: 53, targetPort: 5353, nodePort: 30300, protocol: UDP}}\n{}",
                cluster_ips(|a| a.remote_only),
                slices("remote-only", &["be2"])
            ),
        )
        .unwrap();
        let mut agents = Vec::new();
        for n in 1..=2 {
            let mut a = Agent::start(&t, n, m.path(), agent_flags).unwrap();
            a.wait_healthy(&t, Duration::from_secs(20)).unwrap();
            agents.push(a);
        }
        Self {
            agents,
            _servers: servers,
            _manifests: m,
            t,
        }
    }

    fn run(&self, ns: &str, args: &[&str]) -> Summary {
        let mut cmd = vec![PROBE];
        cmd.extend_from_slice(args);
        Summary::from_output(&self.t.exec_ok(ns, &cmd).unwrap()).unwrap()
    }

    fn ext(&self) -> String {
        self.t.ext_ns().unwrap().to_owned()
    }

    fn tcp(&self, ns: &str, target: &str, count: u32, timeout_ms: u32) -> Summary {
        self.run(
            ns,
            &[
                "tcp",
                "--target",
                target,
                "--count",
                &count.to_string(),
                "--timeout-ms",
                &timeout_ms.to_string(),
                "--parallel",
                "4",
            ],
        )
    }

    fn udp(&self, ns: &str, target: &str, count: u32) -> Summary {
        self.run(
            ns,
            &[
                "udp",
                "--target",
                target,
                "--count",
                &count.to_string(),
                "--timeout-ms",
                "1000",
            ],
        )
    }
}

fn assert_both_backends(what: &str, s: &Summary, total: u64) {
    assert_eq!((s.ok, s.failed), (total, 0), "{what}: {s:?}");
    for be in ["be1", "be2"] {
        assert!(
            s.by_backend.get(be).copied().unwrap_or(0) > total / 10,
            "{what}: {be} got too few: {s:?}"
        );
    }
}

/// The address of a peer the backend reported (`ip:port`, `[ip]:port`).
fn peer_ip(p: &str) -> IpAddr {
    p.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("peer {p:?}: {e}"))
        .ip()
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn nodeport_lb_ip_and_external_ip_serve_the_external_client() {
    require_root();
    let s = Scene::start(&[]);
    let ext = s.ext();
    let capture = Capture::start(&s.t, s.t.underlay_ns(), "br0").unwrap();
    let node1 = &s.agents[0];
    for f in Family::BOTH {
        let started = Instant::now();
        let a = addrs(f);
        let node = |n: usize| s.t.node(n).addr(f);
        for (tcp, udp) in [
            (host_port(node(1), 30007), host_port(node(1), 30053)),
            (host_port(node(2), 30007), host_port(node(2), 30053)),
            (at(a.lb_ip, 80), at(a.lb_ip, 53)),
            (at(a.external_ip, 80), at(a.external_ip, 53)),
        ] {
            let r = s.tcp(&ext, &tcp, 200, 2000);
            assert_both_backends(&format!("{f} TCP {tcp}"), &r, 200);
            assert_eq!(
                r.reply_from,
                vec![tcp.clone()],
                "TCP replies must come from {tcp}"
            );
            let r = s.udp(&ext, &udp, 1000);
            assert_both_backends(&format!("{f} UDP {udp}"), &r, 1000);
            assert_eq!(
                r.reply_from,
                vec![udp.clone()],
                "UDP replies must come from {udp}"
            );
        }
        // The fast path did the work: node 1's uplink XDP program translated new flows and
        // replies.
        let hook = uplink_hook(f);
        let new = node1.counter(hook, Reason::DnatNew).unwrap();
        let rev = node1.counter(hook, Reason::RevNat).unwrap();
        assert!(
            new > 0 && rev > 0,
            "{f}: {} on node 1: {new} new flows, {rev} replies",
            hook.name()
        );
        assert_eq!(node1.counter(hook, Reason::SnatNoPort).unwrap(), 0, "{f}");
        println!(
            "{f}: NodePorts, LB IP and external IP in {:?}",
            started.elapsed()
        );
    }
    let report = verify_checksums(capture.stop().unwrap().path()).unwrap();
    assert!(report.is_clean(), "bad checksums on the underlay: {report}");
    assert!(
        report.tcp6 > 0 && report.udp6 > 0,
        "IPv6 TCP and UDP to and from node 2 must cross the underlay, checksums verified: {report}"
    );

    // `svc-agent inspect links` (in the node's namespace) says where everything is attached
    // and which XDP mode the uplink got: generic, as the harness asks (`auto` attaches none to a
    // veth).
    let agent_bin = svc_testkit::agent::workspace_bin("svc-agent").unwrap();
    // nsenter, not `ip netns exec` (which remounts /sys and hides bpffs).
    let bpffs = node1.bpffs().to_str().unwrap().to_owned();
    let cmd = [
        agent_bin.to_str().unwrap(),
        "inspect",
        "links",
        "--bpffs",
        &bpffs,
        "-o",
        "json",
    ];
    let done =
        s.t.spawn_nsenter(&s.t.node(1).ns, &cmd)
            .unwrap()
            .finish(Duration::from_secs(20))
            .unwrap();
    assert!(done.status.success(), "inspect links: {}", done.stderr);
    let out = done.stdout.clone();
    let links: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let find = |target: &str, hook: &str| {
        links
            .iter()
            .find(|l| l["target"] == target && l["hook"] == hook)
    };
    let xdp = find("eth0", "xdp").unwrap_or_else(|| panic!("no XDP link on eth0: {out}"));
    assert_eq!(xdp["xdp_mode"], "generic", "{out}");
    assert_eq!(xdp["link_type"], "xdp", "{out}");
    assert!(find("eth0", "uplink").is_some(), "{out}");
    assert_eq!(
        links.iter().filter(|l| l["hook"] == "ingress").count(),
        3,
        "3 pod veths: {out}"
    );
    assert_eq!(
        links.iter().filter(|l| l["target"] == "cgroup").count(),
        svc_agent::datapath::SOCK_PROGRAMS.len(),
        "socket hooks (IPv4 and IPv6): {out}"
    );
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn external_traffic_policy_local_keeps_the_client_address_and_drops_without_local_endpoint() {
    require_root();
    let s = Scene::start(&[]);
    let ext = s.ext();
    for f in Family::BOTH {
        let node = |n: usize| s.t.node(n).addr(f);
        let r = s.tcp(&ext, &host_port(node(2), 30100), 50, 2000);
        assert_eq!(
            (r.ok, r.failed),
            (50, 0),
            "{f}: node 2 has the endpoint: {r:?}"
        );
        assert!(
            r.peers_seen_by_backend
                .iter()
                .all(|p| peer_ip(p) == ext_addr(f)),
            "{f}: the backend must see the external client's own address {}: {:?}",
            ext_addr(f),
            r.peers_seen_by_backend
        );
        let hook = uplink_hook(f);
        let before = s.agents[0].counter(hook, Reason::PolicyDrop).unwrap();
        let r = s.tcp(&ext, &host_port(node(1), 30100), 5, 500);
        assert_eq!(
            r.ok, 0,
            "{f}: node 1 has no local endpoint and must drop: {r:?}"
        );
        assert!(
            r.errors.iter().all(|e| e.contains("timed out")),
            "{f}: a drop, not a reject: {r:?}"
        );
        assert!(
            s.agents[0].counter(hook, Reason::PolicyDrop).unwrap() > before,
            "{f}: counted as policy_drop on node 1's {}",
            hook.name()
        );
    }

    let (code, body) = http_get(&s.t, &ext, "172.18.0.2:32000", "/").unwrap();
    assert_eq!(code, 503, "node 1 health check: {body}");
    let (code, body) = http_get(&s.t, &ext, "172.18.0.3:32000", "/").unwrap();
    assert_eq!(code, 200, "node 2 health check: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    // be2, counted once per port its slices list (http and dns), as kube-proxy counts
    // distinct ip:port pairs, for each family: kube-proxy runs a responder per family, ours is
    // one responder that counts both (svc_core::model::health), so 2 × 2.
    assert_eq!(json["localEndpoints"], 4, "{body}");
    assert_eq!(json["service"]["name"], "local", "{body}");
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn a_pod_reaches_itself_through_its_service() {
    require_root();
    let s = Scene::start(&[]);
    let hp = s.t.pod_ns("hp").to_owned();
    let counter = |hook, reason| s.agents[0].counter(hook, reason).unwrap();
    for f in Family::BOTH {
        let vip = addrs(f).hairpin;
        let r = s.tcp(&hp, &at(vip, 80), 30, 2000);
        assert_eq!((r.ok, r.failed), (30, 0), "{f} hairpin TCP: {r:?}");
        assert_eq!(r.by_backend.keys().collect::<Vec<_>>(), vec!["hp"], "{f}");
        assert_eq!(r.reply_from, vec![at(vip, 80)], "{f}");
        assert!(
            r.peers_seen_by_backend
                .iter()
                .all(|p| Family::of(peer_ip(p)) == f),
            "{f}: the backend must be reached over {f}: {:?}",
            r.peers_seen_by_backend
        );
        let r = s.udp(&hp, &at(vip, 53), 50);
        assert_eq!((r.ok, r.failed), (50, 0), "{f} hairpin UDP: {r:?}");
        assert_eq!(r.reply_from, vec![at(vip, 53)], "{f}");
        let (sock, pod) = (sock_hook(f), pod_ingress_hook(f));
        if s.t.pod_socket_lb() {
            // The socket was connected to the pod's own address: no packet to hairpin.
            assert!(
                counter(sock, Reason::SockTranslated) >= 30 + 50,
                "{f}: {}",
                sock.name()
            );
            assert_eq!(counter(pod, Reason::Hairpin), 0, "{f}: {}", pod.name());
        } else {
            assert!(counter(pod, Reason::Hairpin) > 0, "{f}: {}", pod.name());
        }
    }
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn internal_traffic_policy_local_keeps_pods_on_their_node() {
    require_root();
    let s = Scene::start(&[]);
    for f in Family::BOTH {
        let target = at(addrs(f).itp, 80);
        for (client, backend) in [("c1", "be1"), ("c2", "be2")] {
            let r = s.tcp(s.t.pod_ns(client), &target, 40, 2000);
            assert_eq!((r.ok, r.failed), (40, 0), "{f} {client} -> {target}: {r:?}");
            assert_eq!(
                r.by_backend.keys().collect::<Vec<_>>(),
                vec![backend],
                "{f}: {client}'s node uses {backend} only: {r:?}"
            );
        }
    }
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn localhost_nodeports_serve_node_processes_only_without_route_localnet() {
    require_root();
    // 127.0.0.0/8 for IPv4; ::/0 for IPv6, where kube-proxy serves every local address but
    // never ::1 ("For IPv6, Regardless of the value of localhostNodePorts ... disable access to
    // the nodePort via localhost", `! -d ::1/128`, pkg/proxy/iptables/proxier.go): IPv6 has no
    // route_localnet, and the kernel never routes ::1 off the host.
    let s = Scene::start(&["--nodeport-addresses", "127.0.0.0/8,::/0"]);
    let node1 = s.t.node(1).ns.clone();
    // A process on node 1 (in the node's namespace, in the cgroup the agent's hooks serve).
    let on_node = |args: &[&str]| -> String {
        let mut cmd = vec![PROBE];
        cmd.extend_from_slice(args);
        let opts = SpawnOpts {
            enter: Enter::Nsenter,
            cgroup: Some(s.agents[0].cgroup().to_owned()),
            ..Default::default()
        };
        let done =
            s.t.spawn_opts(&node1, &cmd, &opts)
                .unwrap()
                .finish(Duration::from_secs(60))
                .unwrap();
        done.stdout
    };
    let summary = |args: &[&str]| Summary::from_output(&on_node(args)).unwrap();
    let r = summary(&[
        "tcp",
        "--target",
        "127.0.0.1:30007",
        "--count",
        "40",
        "--timeout-ms",
        "2000",
    ]);
    assert_both_backends("TCP 127.0.0.1:30007 from the node", &r, 40);
    assert_eq!(
        r.reply_from,
        vec!["127.0.0.1:30007".to_string()],
        "getpeername shows the NodePort"
    );
    let r = summary(&[
        "udp",
        "--target",
        "127.0.0.1:30053",
        "--count",
        "100",
        "--timeout-ms",
        "1000",
    ]);
    assert_both_backends("UDP 127.0.0.1:30053 from the node", &r, 100);
    assert_eq!(
        r.reply_from,
        vec!["127.0.0.1:30053".to_string()],
        "recvmsg shows the NodePort"
    );
    // Not served on the node's IPv4 addresses, so the external client reaches nothing.
    let ext = s.ext();
    for target in ["172.18.0.2:30007", "172.18.0.3:30007"] {
        let r = s.tcp(&ext, target, 3, 500);
        assert_eq!(r.ok, 0, "{target} must not be a NodePort here: {r:?}");
    }
    let out =
        s.t.exec_ok(
            &node1,
            &["sysctl", "-n", "net.ipv4.conf.all.route_localnet"],
        )
        .unwrap();
    assert_eq!(
        out.trim(),
        "0",
        "route_localnet must stay 0 (CVE-2020-8558)"
    );

    // IPv6: [::1]:NodePort is nothing (the node's own TCP stack refuses it, a connected UDP
    // socket gets the loopback's port unreachable), while the node's IPv6 addresses serve.
    let before = s.agents[0]
        .counter(Hook::Sock6, Reason::SockTranslated)
        .unwrap();
    let r = summary(&[
        "tcp",
        "--target",
        "[::1]:30007",
        "--count",
        "3",
        "--timeout-ms",
        "1000",
    ]);
    assert_eq!(r.ok, 0, "[::1]:30007 must not be a NodePort: {r:?}");
    assert!(
        r.errors.iter().all(|e| e.contains("refused")),
        "[::1]:30007: refused by the node's stack, no listener there: {r:?}"
    );
    let out = on_node(&[
        "udp-connected",
        "--target",
        "[::1]:30053",
        "--timeout-ms",
        "2000",
        "--resend-ms",
        "500",
    ]);
    let r: svc_testkit::traffic::ConnectedUdpResult =
        serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(
        r.outcome, "refused",
        "[::1]:30053 must not be a NodePort: {r:?}"
    );
    assert_eq!(
        s.agents[0]
            .counter(Hook::Sock6, Reason::SockTranslated)
            .unwrap(),
        before,
        "the IPv6 socket hooks translated a connection to ::1"
    );
    for n in [1, 2] {
        let target = host_port(s.t.node_ip6(n).into(), 30007);
        let r = s.tcp(&ext, &target, 20, 2000);
        assert_both_backends(
            &format!("{target} (::/0 serves every node IPv6 address)"),
            &r,
            20,
        );
    }
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn many_new_udp_flows_to_a_remote_backend_all_get_a_snat_port() {
    // 6000 new UDP flows (a socket each) through node 1's NodePort to the one backend, on node 2,
    // within a few seconds: each holds an SNAT port for 30 s, so with the former fixed
    // 61000–65535 (4536 ports) the flows past ~4500 were dropped as snat_no_port. The agent's
    // default from the node (1024–29999 and 61000–65535) leaves room for all of them, in each
    // family (IPv6 flows take their SNAT ports from node 1's IPv6 address).
    require_root();
    let s = Scene::start(&[]);
    let ext = s.ext();
    let node1 = &s.agents[0];
    for f in Family::BOTH {
        let target = host_port(s.t.node(1).addr(f), 30300);
        let started = Instant::now();
        let r = s.run(
            &ext,
            &[
                "udp",
                "--target",
                &target,
                "--count",
                "6000",
                "--timeout-ms",
                "1000",
                "--sockets",
                "per-request",
                "--parallel",
                "8",
            ],
        );
        let elapsed = started.elapsed();
        println!(
            "{f}: 6000 new UDP flows in {elapsed:?}: {} answered, {} failed, errors {:?}",
            r.ok, r.failed, r.errors
        );
        assert_eq!((r.ok, r.failed), (6000, 0), "{f} errors: {:?}", r.errors);
        assert_eq!(r.by_backend.get("be2").copied(), Some(6000), "{f}");
        assert_eq!(r.reply_from, vec![target.clone()], "{f}");
        // The backend saw node 1's SNAT ports: both ranges, never an ephemeral or NodePort one.
        let ports: Vec<u16> = r
            .peers_seen_by_backend
            .iter()
            .map(|p| {
                let p: SocketAddr = p.parse().expect("ADDR:PORT");
                assert_eq!(
                    p.ip(),
                    s.t.node(1).addr(f),
                    "{f} peer {p}: not node 1's address"
                );
                p.port()
            })
            .collect();
        assert!(
            ports
                .iter()
                .all(|p| (1024..=29_999).contains(p) || (61_000..=65_535).contains(p)),
            "{f}: a SNAT port outside 1024-29999 and 61000-65535"
        );
        assert!(
            ports.iter().any(|&p| p < 30_000) && ports.iter().any(|&p| p >= 61_000),
            "{f}: SNAT ports from both ranges"
        );
    }
    // `explain` reports the ports the agent loaded (its SVC_SNAT_PORTS pin).
    let agent_bin = svc_testkit::agent::workspace_bin("svc-agent").unwrap();
    let bpffs = node1.bpffs().to_str().unwrap().to_owned();
    let cmd = [
        agent_bin.to_str().unwrap(),
        "explain",
        "172.18.0.100",
        "172.18.0.2:30300/udp",
        "--from",
        "uplink",
        "--bpffs",
        &bpffs,
    ];
    let done =
        s.t.spawn_nsenter(&s.t.node(1).ns, &cmd)
            .unwrap()
            .finish(Duration::from_secs(20))
            .unwrap();
    assert!(done.status.success(), "explain: {}", done.stderr);
    assert!(
        done.stdout.contains(":1024-29999,61000-65535 (random)"),
        "explain does not show the loaded SNAT ports: {}",
        done.stdout
    );
    let no_port = [
        Hook::Xdp,
        Hook::UplinkIngress,
        Hook::Xdp6,
        Hook::UplinkIngress6,
    ]
    .into_iter()
    .map(|h| node1.counter(h, Reason::SnatNoPort).unwrap())
    .sum::<u64>();
    assert_eq!(no_port, 0, "node 1 dropped flows for want of an SNAT port");
}
