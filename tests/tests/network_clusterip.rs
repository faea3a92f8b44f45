//! ClusterIP end to end, in the DESIGN §3 topology, with real sockets (needs root).
//!
//! Node 1 runs a client pod and backend `be1`; node 2 runs `be2` and `be3`. The Service `web`
//! (10.96.0.10, TCP 80 → named port `http` 8080, UDP 53 → `dns` 5353) takes its endpoints
//! from two EndpointSlices. Pods keep default offloads (partial checksums); node uplinks have
//! TX checksum offload off, so what crosses the underlay carries checksums computed from what
//! the datapath left, and a capture on the underlay bridge checks every one of them.
//!
//! Every case runs twice, as `CASE::ipv4` and `CASE::ipv6`: over IPv6 in the dual-stack
//! topology, `web` made dual-stack (`RequireDualStack`, IPv6 ClusterIP fd00:10:96::10) with an
//! IPv6 EndpointSlice beside each IPv4 one, and the clients talking to the IPv6 ClusterIP.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use svc_common::{Hook, Reason, PROTO_TCP, PROTO_UDP};
use svc_testkit::{
    agent::{node_name, Agent, ManifestDir},
    capture::{verify_checksums, Capture},
    probe::{HoldSummary, Summary},
    topology::{host_port, Family, NsChild, Topology, TopologySpec},
};

#[macro_use]
mod family_common;

const VIP: &str = "10.96.0.10";
const VIP6: &str = "fd00:10:96::10";
const PROBE: &str = env!("CARGO_BIN_EXE_svc-probe");

/// `web`'s ClusterIP in `family`.
fn vip(family: Family) -> IpAddr {
    match family {
        Family::V4 => VIP.parse().unwrap(),
        Family::V6 => VIP6.parse().unwrap(),
    }
}

/// `web`: IPv4 alone, or dual-stack for an IPv6 scene.
fn service_yaml(family: Family) -> String {
    let yaml = service_yaml_v4();
    match family {
        Family::V4 => yaml,
        Family::V6 => yaml.replace(
            &format!("  clusterIP: {VIP}\n"),
            &format!(
                "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  \
                 clusterIP: {VIP}\n  clusterIPs: [\"{VIP}\", \"{VIP6}\"]\n"
            ),
        ),
    }
}

fn service_yaml_v4() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: ClusterIP
  clusterIP: {VIP}
  selector:
    app: web
  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: http
    - name: dns
      protocol: UDP
      port: 53
      targetPort: 5353
"#
    )
}

/// EndpointSlice `name` for `web` holding the pods `pods` (name, node): the IPv4 slice, and
/// for an IPv6 scene an IPv6 slice `name-6` beside it.
fn slices_yaml(t: &Topology, family: Family, name: &str, pods: &[(&str, usize)]) -> String {
    let families = match family {
        Family::V4 => &[Family::V4][..],
        Family::V6 => &Family::BOTH[..],
    };
    let out: Vec<_> = families
        .iter()
        .map(|&f| {
            let eps: Vec<_> = pods
                .iter()
                .map(|&(p, n)| (t.pod_addr(p, f).to_string(), n))
                .collect();
            match f {
                Family::V4 => slice_yaml(name, "IPv4", &eps),
                Family::V6 => slice_yaml(&format!("{name}-6"), "IPv6", &eps),
            }
        })
        .collect();
    out.join("---\n")
}

/// An EndpointSlice for `web` holding `(ip, node)` endpoints of `address_type`.
fn slice_yaml(name: &str, address_type: &str, endpoints: &[(String, usize)]) -> String {
    let mut eps = String::new();
    for (ip, node) in endpoints {
        eps.push_str(&format!(
            "  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n    nodeName: {}\n",
            node_name(*node)
        ));
    }
    if endpoints.is_empty() {
        eps.push_str("  []\n");
    }
    format!(
        r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: default
  labels:
    kubernetes.io/service-name: web
addressType: {address_type}
ports:
  - name: http
    protocol: TCP
    port: 8080
  - name: dns
    protocol: UDP
    port: 5353
endpoints:
{eps}"#
    )
}

/// The whole scene: topology, servers in the backend pods, manifests, one agent per node.
struct Scene {
    /// The family the clients talk in.
    family: Family,
    agents: Vec<Agent>,
    _servers: Vec<NsChild>,
    manifests: ManifestDir,
    t: Topology,
}

impl Scene {
    fn start(family: Family, agent_flags: &[&str]) -> Self {
        let t = Topology::build(
            &TopologySpec::new()
                .node(&["client", "be1"])
                .node(&["be2", "be3"])
                .dual_stack(family == Family::V6),
        )
        .expect("building the topology");
        let mut servers = Vec::new();
        for be in ["be1", "be2", "be3"] {
            let mut s = t
                .spawn(
                    t.pod_ns(be),
                    &[PROBE, "serve", "--id", be, "--tcp", "8080", "--udp", "5353"],
                )
                .expect("starting a backend server");
            s.wait_for_line(Duration::from_secs(5), |l| l == "ready")
                .expect("backend server ready");
            servers.push(s);
        }
        let manifests = ManifestDir::new(&t).expect("manifest dir");
        manifests.write("web.yaml", &service_yaml(family)).unwrap();
        let mut agents = Vec::new();
        let mut scene = Self {
            family,
            agents: Vec::new(),
            _servers: servers,
            manifests,
            t,
        };
        scene.set_slices(&[("be1", 1), ("be2", 2)], &[("be3", 2)]);
        for node in 1..=2 {
            agents.push(
                Agent::start(&scene.t, node, scene.manifests.path(), agent_flags)
                    .expect("starting the agent"),
            );
        }
        scene.agents = agents;
        scene.expect_frontends(3);
        scene
    }

    /// Writes `web`'s two EndpointSlices (each family's in an IPv6 scene): `web-1` holding the
    /// pods `one`, `web-2` the pods `two` ((name, node) each).
    fn set_slices(&self, one: &[(&str, usize)], two: &[(&str, usize)]) {
        for (file, name, pods) in [
            ("web-slice-1.yaml", "web-1", one),
            ("web-slice-2.yaml", "web-2", two),
        ] {
            self.manifests
                .write(file, &slices_yaml(&self.t, self.family, name, pods))
                .unwrap();
        }
    }

    /// `web`'s ClusterIP in the scene's family, with `port`, as `--target` takes it.
    fn target(&self, port: u16) -> String {
        host_port(vip(self.family), port)
    }

    /// Waits until every agent has programmed both frontends (of each family in an IPv6 scene)
    /// with `backends` backends, and nothing else.
    fn expect_frontends(&mut self, backends: u32) {
        let mut want = BTreeMap::new();
        for family in self.t.families() {
            for (port, proto) in [(80, PROTO_TCP), (53, PROTO_UDP)] {
                want.insert((vip(family), port, proto), backends);
            }
        }
        for agent in &mut self.agents {
            agent
                .wait_backend_counts(&want, Duration::from_secs(10))
                .unwrap();
        }
    }

    fn client(&self, args: &[&str]) -> Summary {
        let mut cmd = vec![PROBE];
        cmd.extend_from_slice(args);
        let out = self
            .t
            .exec_ok(self.t.pod_ns("client"), &cmd)
            .expect("running the client");
        Summary::from_output(&out).expect("client summary")
    }

    fn tcp(&self, count: u32) -> Summary {
        self.client(&[
            "tcp",
            "--target",
            &self.target(80),
            "--count",
            &count.to_string(),
            "--timeout-ms",
            "2000",
            "--parallel",
            "4",
        ])
    }

    fn udp(&self, count: u32) -> Summary {
        self.client(&[
            "udp",
            "--target",
            &self.target(53),
            "--count",
            &count.to_string(),
            "--timeout-ms",
            "1000",
        ])
    }
}

fn assert_balanced(s: &Summary, total: u64, min_share: u64) {
    for be in ["be1", "be2", "be3"] {
        let got = s.by_backend.get(be).copied().unwrap_or(0);
        assert!(
            got >= min_share,
            "{be} got {got} of {total} (want ≥ {min_share}): {s:?}"
        );
    }
}

fn clusterip_balances_tcp_and_udp_across_nodes_with_correct_checksums(family: Family) {
    let scene = Scene::start(family, &[]);
    let capture = Capture::start(&scene.t, scene.t.underlay_ns(), "br0").expect("capture");

    let tcp = scene.tcp(200);
    assert_eq!(
        (tcp.ok, tcp.failed),
        (200, 0),
        "TCP through the ClusterIP: {tcp:?}"
    );
    assert_balanced(&tcp, 200, 20);
    assert_eq!(
        tcp.reply_from,
        vec![scene.target(80)],
        "replies must come from the ClusterIP"
    );
    let client_ip = scene.t.pod_addr("client", family);
    assert!(
        tcp.peers_seen_by_backend.iter().all(|p| p
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|p| p.ip() == client_ip)),
        "backends must see the client pod's own address {client_ip}: {:?}",
        tcp.peers_seen_by_backend
    );

    let udp = scene.udp(1000);
    assert_eq!(
        (udp.ok, udp.failed),
        (1000, 0),
        "UDP through the ClusterIP: {udp:?}"
    );
    assert_balanced(&udp, 1000, 150);
    assert_eq!(
        udp.reply_from,
        vec![scene.target(53)],
        "UDP replies must come from the ClusterIP"
    );

    let file = capture.stop().expect("stopping the capture");
    let report = verify_checksums(file.path()).expect("reading the capture");
    assert!(report.is_clean(), "bad checksums on the underlay: {report}");
    let (tcp_seen, udp_seen) = match family {
        Family::V4 => (report.tcp, report.udp),
        Family::V6 => (report.tcp6, report.udp6),
    };
    assert!(
        tcp_seen > 200 && udp_seen > 500,
        "{} traffic to node 2 must cross the underlay, checksums verified: {report}",
        family.name()
    );

    let node1 = &scene.agents[0];
    let hook = |h: Hook| family.hook(h);
    if scene.t.pod_socket_lb() {
        // Socket-level load balancing: every connection and every datagram's socket was
        // translated in the socket call, and no packet of the client needed NAT.
        let sock = node1
            .counter(hook(Hook::Sock), Reason::SockTranslated)
            .unwrap();
        assert!(sock >= 200 + 1000, "translated in the socket call: {sock}");
        let dnat = node1
            .counter(hook(Hook::PodIngress), Reason::DnatNew)
            .unwrap();
        assert_eq!(dnat, 0, "per-packet new flows on node 1");
        return;
    }
    // Every exchange was translated by node 1's datapath: a new flow, or a known one (a new
    // UDP socket may reuse an ephemeral port, and then it *is* the same 5-tuple, as for
    // netfilter conntrack). Every reply was reverse-translated.
    let new = node1
        .counter(hook(Hook::PodIngress), Reason::DnatNew)
        .unwrap();
    let known = node1
        .counter(hook(Hook::PodIngress), Reason::DnatEstablished)
        .unwrap();
    assert!(new >= 200, "dnat_new on node 1: {new}");
    assert!(
        new + known >= 200 * 3 + 1000,
        "translated on node 1: {new} new + {known} known"
    );
    // Replies are translated where they first meet node 1's datapath: at the local backend's
    // veth ingress, or at the client's veth egress for those from node 2.
    let rev = node1
        .counter(hook(Hook::PodIngress), Reason::RevNat)
        .unwrap()
        + node1
            .counter(hook(Hook::PodEgress), Reason::RevNat)
            .unwrap();
    assert!(rev >= 200 * 2 + 1000, "replies translated on node 1: {rev}");
    assert_eq!(
        node1
            .counter(hook(Hook::PodIngress), Reason::CtInsertFailed)
            .unwrap(),
        0
    );
}

per_family!(clusterip_balances_tcp_and_udp_across_nodes_with_correct_checksums);

fn bpftool_dump_shows_field_names_and_readable_frontends(family: Family) {
    let scene = Scene::start(family, &[]);
    // Each family has its frontend map; an IPv6 key's address is an `Addr6 { octets }`.
    let map = match family {
        Family::V4 => svc_common::MAP_FRONTENDS,
        Family::V6 => svc_common::MAP_FRONTENDS6,
    };
    let path = scene.agents[0].bpffs().join(map);
    let vip_bytes: Vec<u64> = match vip(family) {
        IpAddr::V4(a) => a.octets().iter().map(|&b| u64::from(b)).collect(),
        IpAddr::V6(a) => a.octets().iter().map(|&b| u64::from(b)).collect(),
    };
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&path)
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let mut seen = Vec::new();
    for entry in dump.as_array().expect("array of entries") {
        // With BTF, bpftool adds a "formatted" object with the svc-common field names.
        let f = &entry["formatted"];
        let key = &f["key"];
        let addr = match family {
            Family::V4 => &key["addr"],
            Family::V6 => &key["addr"]["octets"],
        };
        let addr: Vec<u64> = addr
            .as_array()
            .expect("key.addr")
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        seen.push((
            addr,
            key["port"].as_u64().unwrap(),
            key["proto"].as_u64().unwrap(),
        ));
        assert_eq!(f["value"]["backend_count"].as_u64(), Some(3), "{entry}");
        assert!(f["value"]["id"].as_u64().unwrap() > 0);
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![(vip_bytes.clone(), 53, 17), (vip_bytes.clone(), 80, 6)],
        "frontends in {map}'s dump must equal the manifests'"
    );
    // And the plain dump (what an operator types) prints names and host-order ports.
    let plain = std::process::Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&plain.stdout);
    let bytes: Vec<String> = vip_bytes.iter().map(u64::to_string).collect();
    // Compared without whitespace: bpftool breaks lines inside arrays and objects.
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let addr = match family {
        Family::V4 => format!("\"addr\":[{}]", bytes.join(",")),
        Family::V6 => format!("\"addr\":{{\"octets\":[{}]}}", bytes.join(",")),
    };
    assert!(
        compact.contains(&addr),
        "{map}'s plain dump must show {addr} (whitespace aside): {text}"
    );
    assert!(
        text.contains("\"port\": 80") && text.contains("\"backend_count\": 3"),
        "{text}"
    );
}

per_family!(bpftool_dump_shows_field_names_and_readable_frontends);

fn established_flows_keep_their_backend_while_the_backend_set_changes(family: Family) {
    let mut scene = Scene::start(family, &[]);
    let mut hold = scene
        .t
        .spawn(
            scene.t.pod_ns("client"),
            &[
                PROBE,
                "hold",
                "--target",
                &scene.target(80),
                "--conns",
                "30",
                "--duration-s",
                "4",
                "--interval-ms",
                "100",
            ],
        )
        .expect("starting long-lived connections");
    hold.wait_for_line(Duration::from_secs(10), |l| l == "ready")
        .expect("connections open");

    // Remove be1 and be2 from the Service while the connections exchange data.
    scene.set_slices(&[], &[("be3", 2)]);
    scene.expect_frontends(1);

    let done = hold.finish(Duration::from_secs(20)).expect("hold finished");
    let summary = HoldSummary::from_output(&done.stdout).expect("hold summary");
    assert_eq!(
        (summary.broken, summary.switched, summary.failed),
        (0, 0, 0),
        "every connection must survive on its own backend: {summary:?}"
    );
    let on_removed = summary
        .conns
        .iter()
        .filter(|c| c.backends.iter().any(|b| b == "be1" || b == "be2"))
        .count();
    assert!(
        on_removed > 0,
        "some connections must have been on a removed backend: {summary:?}"
    );

    // New connections only go to what is left.
    let after = scene.tcp(60);
    assert_eq!((after.ok, after.failed), (60, 0), "{after:?}");
    assert_eq!(
        after.by_backend.keys().collect::<Vec<_>>(),
        vec!["be3"],
        "{after:?}"
    );
}

per_family!(established_flows_keep_their_backend_while_the_backend_set_changes);

fn pods_created_after_the_agent_started_are_served(family: Family) {
    let mut scene = Scene::start(family, &[]);
    let late = scene.t.add_pod(1, "late").expect("adding a pod");
    // The agent attaches to the new veth on the netlink event; give it a moment to do so.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ingress_pin = loop {
        let found = std::fs::read_dir(scene.agents[0].bpffs().join("links"))
            .unwrap()
            .flatten()
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .contains(&format!("-{}-ingress", late.host_veth))
            });
        if found || std::time::Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        ingress_pin,
        "agent did not attach to {}: {}",
        late.host_veth,
        scene.agents[0].log()
    );
    let target = scene.target(80);
    let mut cmd = vec![
        PROBE,
        "tcp",
        "--target",
        &target,
        "--count",
        "30",
        "--timeout-ms",
        "2000",
    ];
    cmd.push("--parallel");
    cmd.push("2");
    let out = scene.t.exec_ok(&late.ns, &cmd).unwrap();
    let s = Summary::from_output(&out).unwrap();
    assert_eq!((s.ok, s.failed), (30, 0), "{s:?}");
    assert_eq!(s.reply_from, vec![target]);
}

per_family!(pods_created_after_the_agent_started_are_served);

fn a_broken_l4_checksum_update_is_caught(family: Family) {
    // Same scene, but the datapath skips the L4 checksum update (hidden test flag). Packets to
    // the local backend still work (veth trusts partial checksums); packets forwarded to node 2
    // get a checksum computed from the stale pseudo-header and are dropped there. Both the
    // connection results and the underlay capture must show it: this is the proof that the
    // passing test above would catch a checksum bug. Per packet in both test passes: socket-LB
    // rewrites no packet, so there is no checksum update to break.
    let scene = Scene::start(
        family,
        &["--fault-inject", "skip-l4-csum", "--pod-socket-lb", "off"],
    );
    let capture = Capture::start(&scene.t, scene.t.underlay_ns(), "br0").expect("capture");
    let tcp = scene.client(&[
        "tcp",
        "--target",
        &scene.target(80),
        "--count",
        "30",
        "--timeout-ms",
        "300",
        "--parallel",
        "6",
    ]);
    let report = verify_checksums(capture.stop().unwrap().path()).unwrap();
    assert!(
        tcp.failed > 0,
        "connections to node 2 must fail with a broken checksum: {tcp:?}"
    );
    assert!(
        !report.bad_l4.is_empty(),
        "the capture must show the bad checksums: {report}"
    );
    assert!(
        tcp.by_backend.get("be1").copied().unwrap_or(0) > 0,
        "the local backend still answers (partial checksums are trusted over veth): {tcp:?}"
    );
}

per_family!(a_broken_l4_checksum_update_is_caught);

fn a_service_without_endpoints_rejects_tcp_and_udp(family: Family) {
    let mut scene = Scene::start(family, &[]);
    scene.set_slices(&[], &[]);
    scene.expect_frontends(0);
    // Plain sockets in the client pod: a connected UDP socket sees ICMP (ICMPv6) port
    // unreachable as ECONNREFUSED, like TCP sees the RST. Timeouts would mean a silent drop.
    let vip = vip(family);
    let (tcp, udp) = scene
        .t
        .run_in(scene.t.pod_ns("client"), || {
            use std::net::{SocketAddr, TcpStream, UdpSocket};
            let tcp = TcpStream::connect_timeout(&SocketAddr::new(vip, 80), Duration::from_secs(3))
                .map(|_| ())
                .map_err(|e| e.kind());
            let s = UdpSocket::bind(SocketAddr::new(family.unspecified(), 0)).unwrap();
            s.connect(SocketAddr::new(vip, 53)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.send(b"anyone?").unwrap();
            let mut buf = [0u8; 64];
            let udp = s.recv(&mut buf).map(|_| ()).map_err(|e| e.kind());
            (tcp, udp)
        })
        .unwrap();
    use std::io::ErrorKind::ConnectionRefused;
    assert_eq!(
        tcp,
        Err(ConnectionRefused),
        "TCP to a Service without endpoints ({vip}) must be reset"
    );
    assert_eq!(
        udp,
        Err(ConnectionRefused),
        "UDP to {vip} must get ICMP (ICMPv6) port unreachable"
    );
    let rejected = scene.agents[0]
        .counter(family.hook(Hook::PodIngress), Reason::NoBackend)
        .unwrap();
    assert!(rejected >= 2, "no_backend counter on node 1: {rejected}");
}

per_family!(a_service_without_endpoints_rejects_tcp_and_udp);

fn kill_9_and_restart_breaks_no_connection_and_writes_nothing(family: Family) {
    let mut scene = Scene::start(family, &[]);
    for agent in &mut scene.agents {
        agent
            .wait_healthy(&scene.t, Duration::from_secs(10))
            .unwrap();
    }
    let mut hold = scene
        .t
        .spawn(
            scene.t.pod_ns("client"),
            &[
                PROBE,
                "hold",
                "--target",
                &scene.target(80),
                "--conns",
                "120",
                "--duration-s",
                "5",
                "--interval-ms",
                "100",
            ],
        )
        .expect("starting long-lived connections");
    hold.wait_for_line(Duration::from_secs(10), |l| l == "ready")
        .expect("connections open");

    // kill -9 both agents: programs stay attached through their pinned links, maps through
    // their pins. Then start new agents on the same pins.
    let old: Vec<Agent> = std::mem::take(&mut scene.agents);
    for agent in old {
        agent.kill9();
    }
    std::thread::sleep(Duration::from_millis(500));
    for node in 1..=2 {
        scene
            .agents
            .push(Agent::start(&scene.t, node, scene.manifests.path(), &[]).expect("restarting"));
    }
    for agent in &mut scene.agents {
        agent
            .wait_healthy(&scene.t, Duration::from_secs(10))
            .unwrap();
        let writes = agent.metric(&scene.t, "svc_map_writes_total").unwrap();
        assert_eq!(
            writes,
            0.0,
            "a restart with nothing changed must write nothing:\n{}",
            agent.log()
        );
        assert!(
            agent.log().contains("adopted=true"),
            "links must be adopted:\n{}",
            agent.log()
        );
    }

    let done = hold.finish(Duration::from_secs(20)).expect("hold finished");
    let summary = HoldSummary::from_output(&done.stdout).expect("hold summary");
    assert_eq!(summary.conns.len(), 120);
    assert_eq!(
        (summary.broken, summary.switched, summary.failed),
        (0, 0, 0),
        "no connection may break across kill -9 and restart: {summary:?}"
    );
    // And the restarted datapath still serves new connections.
    let after = scene.tcp(30);
    assert_eq!((after.ok, after.failed), (30, 0), "{after:?}");
}

per_family!(kill_9_and_restart_breaks_no_connection_and_writes_nothing);
