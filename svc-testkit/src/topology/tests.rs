//! Topology tests: real namespaces, traffic across nodes, cleanup (root only).

use std::{
    net::{SocketAddr, SocketAddrV4},
    process::Command,
    time::{Duration, Instant},
};

use super::*;
use crate::{
    capture::{verify_checksums, Capture},
    probe::{self, ServeConfig, Server, TcpClientConfig, UdpClientConfig, UdpSockets},
};

fn serve_in(t: &Topology, pod: &str, id: &str) -> Server {
    t.run_in(t.pod_ns(pod), || {
        Server::start(ServeConfig {
            id: id.into(),
            tcp: vec![8080],
            udp: vec![5353],
            bind: Ipv4Addr::UNSPECIFIED.into(),
        })
    })
    .expect("enter pod namespace")
    .expect("start server")
}

/// 2 nodes × 2 pods + external client: pod → pod across nodes over the underlay (with a
/// capture there whose checksums must all verify), a pod added later, and no namespace
/// left after drop.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn two_nodes_cross_node_traffic_and_cleanup() {
    require_root();
    let spec = TopologySpec::new()
        .node(&["a1", "a2"])
        .node(&["b1", "b2"])
        .external_client(true);
    let mut t = Topology::build(&spec).expect("build topology");
    let prefix = t.prefix().to_owned();
    assert_eq!(list_our_namespaces(&prefix).len(), 1 + 2 + 4 + 1);
    assert_eq!(t.pod_ip("b2"), Ipv4Addr::new(10, 244, 2, 3));
    assert_eq!(t.node_ip(2), Ipv4Addr::new(172, 18, 0, 3));
    // Not dual stack unless asked: no IPv6 plan, nothing configured for it.
    assert_eq!((t.pod("a1").ipv6, t.node(1).ipv6), (None, None));
    assert_eq!(t.families(), [Family::V4]);
    let v6 = t
        .exec_ok(
            t.pod_ns("a1"),
            &["ip", "-6", "addr", "show", "scope", "global"],
        )
        .unwrap();
    assert!(v6.trim().is_empty(), "{v6}");
    assert!(t.pod("a1").host_veth.starts_with("veth") && t.pod("a1").host_veth.len() <= 15);
    let routes = t.exec_ok(t.pod_ns("a2"), &["ip", "route"]).unwrap();
    assert!(
        routes.contains("default via 10.244.1.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("10.244.1.0/24 via 10.244.1.1 dev eth0 src 10.244.1.3"),
        "{routes}"
    );
    let tx = t
        .exec_ok(&t.node(1).ns, &["ethtool", "-k", "eth0"])
        .unwrap();
    assert!(tx.contains("tx-checksumming: off"), "{tx}");

    let cap = Capture::start(&t, t.underlay_ns(), "br0").expect("start capture");
    let srv = serve_in(&t, "b2", "b2");
    let target = SocketAddr::from(SocketAddrV4::new(t.pod_ip("b2"), 8080));
    let tcp = t
        .run_in(t.pod_ns("a1"), || {
            probe::run_tcp(&TcpClientConfig {
                target,
                count: 20,
                timeout: Duration::from_secs(2),
                parallel: 2,
            })
        })
        .unwrap()
        .unwrap();
    assert_eq!((tcp.ok, tcp.failed), (20, 0), "{tcp:?}");
    assert_eq!(tcp.by_backend.get("b2"), Some(&20));
    // No NAT between pods: the backend sees the client pod's own address.
    assert!(tcp
        .peers_seen_by_backend
        .iter()
        .all(|p| p.starts_with("10.244.1.2:")));

    let udp_target = SocketAddr::from(SocketAddrV4::new(t.pod_ip("b2"), 5353));
    let udp = t
        .run_in(t.pod_ns("a1"), || {
            probe::run_udp(&UdpClientConfig {
                target: udp_target,
                count: 10,
                timeout: Duration::from_secs(2),
                sockets: UdpSockets::PerRequest,
            })
        })
        .unwrap()
        .unwrap();
    assert_eq!((udp.ok, udp.failed), (10, 0), "{udp:?}");
    assert_eq!(udp.reply_from, vec![udp_target.to_string()]);

    // A pod added after the fact is routed like the others.
    let late = t.add_pod(1, "late").unwrap();
    assert_eq!(late.ip, Ipv4Addr::new(10, 244, 1, 4));
    let s = t
        .run_in(&late.ns, || {
            probe::run_tcp(&TcpClientConfig {
                target,
                count: 3,
                timeout: Duration::from_secs(2),
                parallel: 1,
            })
        })
        .unwrap()
        .unwrap();
    assert_eq!((s.ok, s.failed), (3, 0), "{s:?}");
    assert_eq!(s.peers_seen_by_backend.len(), 3);
    assert!(s.peers_seen_by_backend[0].starts_with("10.244.1.4:"));

    // The external client reaches a node address over the underlay.
    let node_srv = t
        .run_in(&t.node(2).ns.clone(), || {
            Server::start(ServeConfig {
                id: "node2".into(),
                tcp: vec![9000],
                udp: vec![],
                bind: Ipv4Addr::UNSPECIFIED.into(),
            })
        })
        .unwrap()
        .unwrap();
    let node_target = SocketAddr::from(SocketAddrV4::new(t.node_ip(2), 9000));
    let s = t
        .run_in(t.ext_ns().unwrap(), || {
            probe::run_tcp(&TcpClientConfig {
                target: node_target,
                count: 2,
                timeout: Duration::from_secs(2),
                parallel: 1,
            })
        })
        .unwrap()
        .unwrap();
    assert_eq!((s.ok, s.failed), (2, 0), "{s:?}");
    assert!(s.peers_seen_by_backend[0].starts_with("172.18.0.100:"));
    node_srv.stop();
    srv.stop();

    let file = cap.stop().expect("stop capture");
    let report = verify_checksums(file.path()).unwrap();
    eprintln!("underlay capture: {report}");
    assert_eq!(report.packets, file.captured());
    assert!(report.tcp >= 20 * 6, "capture saw too little: {report}");
    assert!(report.udp >= 20, "{report}");
    assert!(report.is_clean(), "{report}");

    drop(t);
    assert_eq!(list_our_namespaces(&prefix), Vec::<String>::new());
}

/// Spawned processes are killed and namespaces deleted when the topology drops, also
/// when a build fails half way.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn drop_kills_children_and_failed_build_cleans_up() {
    require_root();
    let t = Topology::build(&TopologySpec::new().node(&["p"])).unwrap();
    let prefix = t.prefix().to_owned();
    let mut c = t
        .spawn(t.pod_ns("p"), &["sh", "-c", "echo ready; exec sleep 600"])
        .unwrap();
    c.wait_for_line(Duration::from_secs(5), |l| l == "ready")
        .unwrap();
    let pid = c.pid();
    std::mem::forget(c); // leaked on purpose: the topology must still kill it
    drop(t);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "child {pid} survived"
    );
    assert_eq!(list_our_namespaces(&prefix), Vec::<String>::new());

    let bad = TopologySpec::new().node(&["x", "x"]);
    let err = format!(
        "{:#}",
        Topology::build(&bad).err().expect("duplicate pod names")
    );
    let prefix = err
        .strip_prefix("building topology ")
        .and_then(|r| r.split(':').next())
        .unwrap_or_else(|| panic!("error names the prefix: {err}"));
    assert!(prefix.starts_with(NS_PREFIX), "{err}");
    assert_eq!(list_our_namespaces(prefix), Vec::<String>::new());
}

/// Negative control for the checksum check: with TX checksum offload left *on* at node 1's
/// `eth0`, packets from node 1's pods cross the underlay veth still CHECKSUM_PARTIAL, so the
/// capture sees pseudo-header-only TCP checksums — exactly what a datapath bug would leave
/// — and the verifier must flag them. (The receiver still accepts them: over veth the
/// partial state travels with the skb, which is why DESIGN §3 turns offload off.)
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn verifier_flags_partial_checksums_when_offload_is_on() {
    require_root();
    let t = Topology::build(&TopologySpec::new().node(&["c"]).node(&["s"])).unwrap();
    t.exec_ok(&t.node(1).ns, &["ethtool", "-K", "eth0", "tx", "on"])
        .unwrap();
    let cap = Capture::start(&t, t.underlay_ns(), "br0").unwrap();
    let srv = serve_in(&t, "s", "s");
    let target = SocketAddr::from(SocketAddrV4::new(t.pod_ip("s"), 8080));
    let s = t
        .run_in(t.pod_ns("c"), || {
            probe::run_tcp(&TcpClientConfig {
                target,
                count: 5,
                timeout: Duration::from_secs(2),
                parallel: 1,
            })
        })
        .unwrap()
        .unwrap();
    assert_eq!((s.ok, s.failed), (5, 0), "{s:?}");
    srv.stop();
    let report = verify_checksums(cap.stop().unwrap().path()).unwrap();
    assert!(report.bad_ip.is_empty(), "{report}");
    assert!(
        report
            .bad_l4
            .iter()
            .any(|d| d.contains("TCP 10.244.1.2 -> 10.244.2.2")),
        "partial checksums from node 1 not flagged: {report}"
    );
    assert!(
        !report
            .bad_l4
            .iter()
            .any(|d| d.contains("TCP 10.244.2.2 -> ")),
        "node 2 (offload off) must send real checksums: {report}"
    );
}

/// The `svc-probe` binary end to end, as integration tests use it: servers in two pods,
/// TCP/UDP clients and a held connection (stopped by SIGTERM) in a third.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn svc_probe_binary_in_pods() {
    require_root();
    // Built with the package (`cargo test -p tests` builds it; `--lib` alone does not).
    let bin = probe::probe_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let bin = bin.to_str().expect("utf-8 path").to_owned();
    let t = Topology::build(&TopologySpec::new().node(&["a", "client"]).node(&["b"])).unwrap();
    let mut servers = Vec::new();
    for name in ["a", "b"] {
        let mut s = t
            .spawn(
                t.pod_ns(name),
                &[&bin, "serve", "--id", name, "--tcp", "80,81", "--udp", "53"],
            )
            .unwrap();
        s.wait_for_line(Duration::from_secs(5), |l| l == "ready")
            .unwrap();
        servers.push(s);
    }
    let b = format!("{}:81", t.pod_ip("b"));
    let out = t
        .exec_ok(
            t.pod_ns("client"),
            &[
                &bin,
                "tcp",
                "--target",
                &b,
                "--count",
                "20",
                "--parallel",
                "4",
            ],
        )
        .unwrap();
    let s = probe::Summary::from_output(&out).unwrap();
    assert_eq!((s.ok, s.failed), (20, 0), "{s:?}");
    assert_eq!(s.by_backend.get("b"), Some(&20));
    assert_eq!(s.reply_from, vec![b.clone()]);

    let a = format!("{}:53", t.pod_ip("a"));
    let out = t
        .exec_ok(
            t.pod_ns("client"),
            &[
                &bin,
                "udp",
                "--target",
                &a,
                "--count",
                "5",
                "--sockets",
                "one",
            ],
        )
        .unwrap();
    let s = probe::Summary::from_output(&out).unwrap();
    assert_eq!((s.ok, s.by_backend.get("a")), (5, Some(&5)), "{s:?}");
    assert_eq!(
        s.peers_seen_by_backend.len(),
        1,
        "one socket, one flow: {s:?}"
    );

    let a80 = format!("{}:80", t.pod_ip("a"));
    let mut hold = t
        .spawn(
            t.pod_ns("client"),
            &[
                &bin,
                "hold",
                "--target",
                &a80,
                "--conns",
                "3",
                "--duration-s",
                "60",
                "--interval-ms",
                "20",
            ],
        )
        .unwrap();
    hold.wait_for_line(Duration::from_secs(5), |l| l == "ready")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200)); // let a few rounds of exchanges happen
    let fin = hold.terminate(Duration::from_secs(5)).unwrap();
    assert!(fin.status.success(), "{fin:?}");
    let h = probe::HoldSummary::from_output(&fin.stdout).unwrap();
    assert!(
        h.stopped_early && h.broken == 0 && h.switched == 0 && h.ok >= 6,
        "{h:?}"
    );
    assert!(h.conns.iter().all(|c| c.backends == ["a"]), "{h:?}");

    // Targets outside the address plan are refused before any packet is sent.
    let out = t
        .exec(t.pod_ns("client"), &[&bin, "tcp", "--target", "8.8.8.8:53"])
        .unwrap();
    assert!(!out.status.success());
    for s in servers {
        let fin = s.terminate(Duration::from_secs(5)).unwrap();
        assert!(fin.status.success(), "serve exits 0 on SIGTERM: {fin:?}");
    }
}

/// Leftovers of a crashed run (a prefix whose pid is gone) are removed; namespaces of a
/// live process are not.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn stale_namespaces_of_dead_pids_are_removed() {
    require_root();
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale = format!("{NS_PREFIX}{dead_pid}-0-ul");
    let live = format!("{NS_PREFIX}{}-999-ul", std::process::id());
    run_ip(&["netns", "add", &stale]).unwrap();
    run_ip(&["netns", "add", &live]).unwrap();
    cleanup_stale_namespaces();
    let left = list_our_namespaces(NS_PREFIX);
    let _ = run_ip(&["netns", "delete", &live]);
    let _ = run_ip(&["netns", "delete", &stale]);
    assert!(!left.contains(&stale), "{left:?}");
    assert!(left.contains(&live), "{left:?}");
}

/// `SpawnOpts::cgroup` puts the process into the cgroup before it runs (for cgroup
/// socket hooks, DESIGN §3).
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn spawn_into_cgroup() {
    require_root();
    // Required, not optional: every agent attaches its socket hooks to a cgroup v2.
    let root = crate::agent::cgroup2_root().unwrap_or_else(|e| panic!("{e:#}"));
    let t = Topology::build(&TopologySpec::new().node(&[])).unwrap();
    let name = format!("{}cgtest", t.prefix());
    let cg = root.join(&name);
    std::fs::create_dir(&cg).unwrap();
    let opts = SpawnOpts {
        enter: Enter::Nsenter,
        cgroup: Some(cg.clone()),
        ..SpawnOpts::default()
    };
    let res = t
        .spawn_opts(&t.node(1).ns, &["cat", "/proc/self/cgroup"], &opts)
        .and_then(|c| c.finish(Duration::from_secs(5)));
    std::fs::remove_dir(&cg).unwrap();
    let fin = res.unwrap();
    assert!(fin.stdout.contains(&format!("0::/{name}")), "{fin:?}");
}

/// The largest topology: every node routes every other node's pod CIDR.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn four_nodes_full_mesh() {
    require_root();
    let started = Instant::now();
    let spec = TopologySpec::new()
        .node(&["p1"])
        .node(&["p2"])
        .node(&["p3"])
        .node(&["p4"])
        .external_client(true)
        .ext_gateway(3);
    let t = Topology::build(&spec).unwrap();
    eprintln!("4-node topology built in {:?}", started.elapsed());
    let ext_routes = t.exec_ok(t.ext_ns().unwrap(), &["ip", "route"]).unwrap();
    assert!(
        ext_routes.contains("10.96.0.0/16 via 172.18.0.4 dev eth0"),
        "{ext_routes}"
    );
    let servers: Vec<Server> = ["p1", "p4"].iter().map(|p| serve_in(&t, p, p)).collect();
    for (from, to) in [("p4", "p1"), ("p2", "p4"), ("p3", "p1")] {
        let target = SocketAddr::from(SocketAddrV4::new(t.pod_ip(to), 8080));
        let s = t
            .run_in(t.pod_ns(from), || {
                probe::run_tcp(&TcpClientConfig {
                    target,
                    count: 2,
                    timeout: Duration::from_secs(2),
                    parallel: 1,
                })
            })
            .unwrap()
            .unwrap();
        assert_eq!(s.by_backend.get(to), Some(&2), "{from} -> {to}: {s:?}");
    }
    drop(servers);
}

/// Reads a sysctl in one of our namespaces.
fn read_sysctl(t: &Topology, ns: &str, key: &str) -> String {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    t.run_in(ns, move || std::fs::read_to_string(path).unwrap())
        .unwrap()
        .trim()
        .to_owned()
}

/// The dual-stack topology, driven in-process: the IPv6 layout, then every client of the probe
/// and traffic libraries over IPv6 across nodes — and IPv4 beside it, unchanged (a server bound
/// to the unspecified address reports IPv4 peers as plain IPv4, not `::ffff:`-mapped).
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn dual_stack_layout_and_ipv6_clients_in_process() {
    use crate::traffic;
    use std::sync::atomic::AtomicBool;

    require_root();
    let spec = TopologySpec::new()
        .node(&["a1", "a2"])
        .node(&["b1"])
        .external_client(true)
        .dual_stack(true);
    let t = Topology::build(&spec).expect("build topology");
    let a1 = t.pod_ip6("a1");
    assert_eq!(a1.to_string(), "fd00:10:244:1::2");
    assert_eq!(t.pod_ip6("b1").to_string(), "fd00:10:244:2::2");
    assert_eq!(
        t.node(1).gateway_of(Family::V6).to_string(),
        "fd00:10:244:1::1"
    );
    let routes = t.exec_ok(t.pod_ns("a2"), &["ip", "-6", "route"]).unwrap();
    for want in [
        "fd00:10:244:1::/64 via fd00:10:244:1::1 dev eth0 src fd00:10:244:1::3",
        "default via fd00:10:244:1::1 dev eth0",
    ] {
        assert!(routes.contains(want), "pod a2 needs {want:?}: {routes}");
    }
    let routes = t.exec_ok(&t.node(1).ns, &["ip", "-6", "route"]).unwrap();
    for want in [
        "fd00:10:244:1::2 dev veth",
        "fd00:10:244:2::/64 via fd00:18::3 dev eth0",
        "fd00:18::/64 dev eth0",
    ] {
        assert!(routes.contains(want), "node 1 needs {want:?}: {routes}");
    }
    let routes = t
        .exec_ok(t.ext_ns().unwrap(), &["ip", "-6", "route"])
        .unwrap();
    for want in [
        "fd00:10:96::/112 via fd00:18::2",
        "2001:db8::/32 via fd00:18::2",
    ] {
        assert!(routes.contains(want), "ext needs {want:?}: {routes}");
    }
    let node1 = t.node(1).ns.clone();
    assert_eq!(read_sysctl(&t, &node1, "net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(
        read_sysctl(&t, &node1, "net.ipv6.conf.eth0.accept_dad"),
        "0"
    );
    assert_eq!(
        read_sysctl(&t, t.pod_ns("a1"), "net.ipv6.conf.eth0.disable_ipv6"),
        "0"
    );
    // No address waits for DAD: all are usable at once.
    let addrs = t.exec_ok(t.pod_ns("a1"), &["ip", "-6", "addr"]).unwrap();
    assert!(!addrs.contains("tentative"), "{addrs}");

    let srv = serve_in(&t, "b1", "b1");
    let bulk_srv = t
        .run_in(t.pod_ns("b1"), || traffic::BulkServer::start("b1", &[9000]))
        .unwrap()
        .unwrap();
    let sized_srv = t
        .run_in(t.pod_ns("b1"), || {
            traffic::SizedUdpServer::start("b1", &[7053])
        })
        .unwrap()
        .unwrap();
    let cap = Capture::start(&t, t.underlay_ns(), "br0").expect("start capture");
    for fam in Family::BOTH {
        let b1 = t.pod_addr("b1", fam);
        let me = host_port(t.pod_addr("a1", fam), 0);
        let me = me.strip_suffix('0').expect("port 0").to_owned();
        let tcp_target = SocketAddr::new(b1, 8080);
        let udp_target = SocketAddr::new(b1, 5353);
        let (tcp, udp, hold) = t
            .run_in(t.pod_ns("a1"), || {
                let tcp = probe::run_tcp(&TcpClientConfig {
                    target: tcp_target,
                    count: 10,
                    timeout: Duration::from_secs(2),
                    parallel: 2,
                });
                let udp = probe::run_udp(&UdpClientConfig {
                    target: udp_target,
                    count: 10,
                    timeout: Duration::from_secs(2),
                    sockets: UdpSockets::One,
                });
                let hold = probe::run_hold(
                    &probe::HoldConfig {
                        target: tcp_target,
                        conns: 2,
                        duration: Duration::from_millis(300),
                        interval: Duration::from_millis(100),
                        timeout: Duration::from_secs(2),
                    },
                    &AtomicBool::new(false),
                    || {},
                );
                (tcp.unwrap(), udp.unwrap(), hold.unwrap())
            })
            .unwrap();
        assert_eq!((tcp.ok, tcp.failed), (10, 0), "{fam}: {tcp:?}");
        assert_eq!(tcp.reply_from, [tcp_target.to_string()], "{fam}: {tcp:?}");
        assert!(
            tcp.peers_seen_by_backend.iter().all(|p| p.starts_with(&me)),
            "{fam}: the backend must see {me}…: {tcp:?}"
        );
        assert_eq!((udp.ok, udp.failed), (10, 0), "{fam}: {udp:?}");
        assert_eq!(udp.reply_from, [udp_target.to_string()], "{fam}: {udp:?}");
        assert!(
            udp.peers_seen_by_backend[0].starts_with(&me),
            "{fam}: {udp:?}"
        );
        assert_eq!((hold.broken, hold.switched), (0, 0), "{fam}: {hold:?}");

        let (bulk, sized, rst, refused, stream) = t
            .run_in(t.pod_ns("a1"), || {
                let bulk = [traffic::BulkDir::Download, traffic::BulkDir::Upload].map(|dir| {
                    traffic::run_bulk(&traffic::BulkConfig {
                        target: SocketAddr::new(b1, 9000),
                        dir,
                        bytes: 1 << 20,
                        stall: Duration::from_secs(5),
                        deadline: Duration::from_secs(30),
                        raw: false,
                    })
                    .unwrap()
                });
                let sized = traffic::run_sized_udp(&traffic::SizedUdpConfig {
                    target: SocketAddr::new(b1, 7053),
                    count: 2,
                    request_len: 3000,
                    reply_len: 4000,
                    timeout: Duration::from_secs(2),
                });
                let rst = traffic::run_tcp_rst(
                    tcp_target,
                    41000,
                    3,
                    Duration::ZERO,
                    Duration::from_secs(2),
                );
                let refused = traffic::run_udp_connected(
                    SocketAddr::new(b1, 5999),
                    Duration::from_secs(2),
                    Duration::from_millis(200),
                );
                let stream = traffic::run_udp_stream(
                    udp_target,
                    Duration::from_millis(50),
                    Duration::from_millis(300),
                    true,
                    &AtomicBool::new(false),
                    |_| {},
                );
                (
                    bulk,
                    sized.unwrap(),
                    rst.unwrap(),
                    refused.unwrap(),
                    stream.unwrap(),
                )
            })
            .unwrap();
        for b in &bulk {
            assert!(b.ok && b.backend == "b1", "{fam}: {b:?}");
            assert!(b.path_mtu.is_some_and(|m| m >= 1280), "{fam}: {b:?}");
        }
        assert_eq!((sized.ok, sized.corrupt), (2, 0), "{fam}: {sized:?}");
        assert!(rst.attempts.iter().all(|a| a.ok), "{fam}: {rst:?}");
        assert!(
            rst.attempts.iter().all(|a| a.local.ends_with(":41000")),
            "{fam}: {rst:?}"
        );
        assert_eq!(
            refused.outcome, "refused",
            "{fam}: ICMP port unreachable: {refused:?}"
        );
        assert!(!stream.replies.is_empty(), "{fam}: {stream:?}");
        assert!(stream.local.starts_with(&me), "{fam}: {stream:?}");
    }
    let report = verify_checksums(cap.stop().unwrap().path()).unwrap();
    assert!(report.is_clean(), "{report}");
    assert!(
        report.tcp6 > 0 && report.udp6 > 0 && report.icmp6 > 0,
        "{report}"
    );
    assert!(
        report.reassembled6 >= 4 && report.incomplete.is_empty(),
        "{report}"
    );
    srv.stop();
    bulk_srv.stop();
    sized_srv.stop();
}
