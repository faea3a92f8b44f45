//! North-south end to end (needs root): NodePorts, a LoadBalancer IP and an external IP
//! reached from the external client over the underlay, on XDP and the tc uplink path; traffic
//! policies, hairpin, localhost NodePorts through the cgroup socket hooks, and enough SNAT ports
//! for thousands of new UDP flows to a remote backend.
//!
//! Node 1 runs pods c1, be1 and hp; node 2 runs be2 and c2. The external client (172.18.0.100)
//! routes the documentation ranges via node 1, like a router in front of one node; NodePorts it
//! reaches on either node directly.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::time::Duration;

use svc_common::{Hook, Reason};
use svc_testkit::{
    agent::{http_get, node_name, Agent, ManifestDir},
    capture::{verify_checksums, Capture},
    probe::Summary,
    topology::{require_root, Enter, NsChild, SpawnOpts, Topology, TopologySpec},
};

const PROBE: &str = env!("CARGO_BIN_EXE_svc-probe");
const LB_IP: &str = "192.0.2.127";
const EXTERNAL_IP: &str = "198.51.100.10";

fn endpoint_slice(service: &str, endpoints: &[(String, usize)]) -> String {
    let mut eps = String::new();
    for (ip, node) in endpoints {
        eps.push_str(&format!(
            "  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n    nodeName: {}\n",
            node_name(*node)
        ));
    }
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  \
         labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n  \
         - {{name: http, port: 8080, protocol: TCP}}\n  - {{name: dns, port: 5353, protocol: UDP}}\n\
         endpoints:\n{eps}"
    )
}

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
                .ext_gateway(1),
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
        let ep = |p: &str| (t.pod_ip(p).to_string(), t.pod(p).node);
        let both = [ep("be1"), ep("be2")];
        let m = ManifestDir::new(&t).unwrap();
        // The seed's NodePort example (nodePort 30007), with a UDP port added.
        m.write(
            "test-service.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: test-service\nspec:\n  type: NodePort\n  \
                 selector:\n    app.kubernetes.io/name: MyApp\n  ports:\n    \
                 - {{name: http, port: 80, targetPort: 8080, nodePort: 30007, protocol: TCP}}\n    \
                 - {{name: dns, port: 53, targetPort: 5353, nodePort: 30053, protocol: UDP}}\n---\n{}",
                endpoint_slice("test-service", &both)
            ),
        )
        .unwrap();
        // The seed's LoadBalancer example (clusterIP 10.0.171.239, ingress 192.0.2.127).
        m.write(
            "my-service.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: my-service\nspec:\n  type: LoadBalancer\n  \
                 clusterIP: 10.0.171.239\n  selector:\n    app.kubernetes.io/name: MyApp\n{PORTS}\
                 status:\n  loadBalancer:\n    ingress:\n    - ip: {LB_IP}\n---\n{}",
                endpoint_slice("my-service", &both)
            ),
        )
        .unwrap();
        // The seed's external-IP example, with a documentation-range address.
        m.write(
            "test-external-ip.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: test-external-ip\nspec:\n  \
                 selector:\n    app.kubernetes.io/name: MyApp\n{PORTS}  externalIPs:\n    - {EXTERNAL_IP}\n---\n{}",
                endpoint_slice("test-external-ip", &both)
            ),
        )
        .unwrap();
        // externalTrafficPolicy: Local with its only endpoint on node 2.
        m.write(
            "local.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: local\nspec:\n  type: NodePort\n  \
                 externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n  ports:\n    \
                 - {{name: http, port: 80, targetPort: 8080, nodePort: 30100, protocol: TCP}}\n---\n{}",
                endpoint_slice("local", &[ep("be2")])
            ),
        )
        .unwrap();
        // Hairpin: the only endpoint is the client itself.
        m.write(
            "hairpin.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: hairpin\nspec:\n  clusterIP: 10.96.0.50\n{PORTS}---\n{}",
                endpoint_slice("hairpin", &[ep("hp")])
            ),
        )
        .unwrap();
        // internalTrafficPolicy: Local with an endpoint on each node.
        m.write(
            "itp.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: itp\nspec:\n  clusterIP: 10.96.0.60\n  \
                 internalTrafficPolicy: Local\n{PORTS}---\n{}",
                endpoint_slice("itp", &both)
            ),
        )
        .unwrap();
        // A UDP NodePort whose only endpoint is on node 2: every flow through node 1 is
        // source-NATed, so each new one holds one of node 1's SNAT ports.
        m.write(
            "remote-only.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: remote-only\nspec:\n  type: NodePort\n  \
                 ports:\n    - {{name: dns, port: 53, targetPort: 5353, nodePort: 30300, protocol: UDP}}\n---\n{}",
                endpoint_slice("remote-only", &[ep("be2")])
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

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn nodeport_lb_ip_and_external_ip_serve_the_external_client() {
    require_root();
    let s = Scene::start(&[]);
    let ext = s.ext();
    let capture = Capture::start(&s.t, s.t.underlay_ns(), "br0").unwrap();
    for (tcp, udp) in [
        ("172.18.0.2:30007", "172.18.0.2:30053"),
        ("172.18.0.3:30007", "172.18.0.3:30053"),
        (&*format!("{LB_IP}:80"), &*format!("{LB_IP}:53")),
        (&*format!("{EXTERNAL_IP}:80"), &*format!("{EXTERNAL_IP}:53")),
    ] {
        let r = s.tcp(&ext, tcp, 200, 2000);
        assert_both_backends(tcp, &r, 200);
        assert_eq!(
            r.reply_from,
            vec![tcp.to_string()],
            "TCP replies must come from {tcp}"
        );
        let r = s.udp(&ext, udp, 1000);
        assert_both_backends(udp, &r, 1000);
        assert_eq!(
            r.reply_from,
            vec![udp.to_string()],
            "UDP replies must come from {udp}"
        );
    }
    let report = verify_checksums(capture.stop().unwrap().path()).unwrap();
    assert!(report.is_clean(), "bad checksums on the underlay: {report}");
    // The fast path did the work: XDP translated new flows and replies on node 1.
    let node1 = &s.agents[0];
    let xdp_new = node1.counter(Hook::Xdp, Reason::DnatNew).unwrap();
    let xdp_rev = node1.counter(Hook::Xdp, Reason::RevNat).unwrap();
    assert!(
        xdp_new > 0 && xdp_rev > 0,
        "XDP on node 1: {xdp_new} new flows, {xdp_rev} replies"
    );
    assert_eq!(node1.counter(Hook::Xdp, Reason::SnatNoPort).unwrap(), 0);

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
    let r = s.tcp(&ext, "172.18.0.3:30100", 50, 2000);
    assert_eq!((r.ok, r.failed), (50, 0), "node 2 has the endpoint: {r:?}");
    assert!(
        r.peers_seen_by_backend
            .iter()
            .all(|p| p.starts_with("172.18.0.100:")),
        "the backend must see the external client's own address: {:?}",
        r.peers_seen_by_backend
    );
    let r = s.tcp(&ext, "172.18.0.2:30100", 5, 500);
    assert_eq!(r.ok, 0, "node 1 has no local endpoint and must drop: {r:?}");
    assert!(
        r.errors.iter().all(|e| e.contains("timed out")),
        "a drop, not a reject: {r:?}"
    );
    assert!(s.agents[0].counter(Hook::Xdp, Reason::PolicyDrop).unwrap() > 0);

    let (code, body) = http_get(&s.t, &ext, "172.18.0.2:32000", "/").unwrap();
    assert_eq!(code, 503, "node 1 health check: {body}");
    let (code, body) = http_get(&s.t, &ext, "172.18.0.3:32000", "/").unwrap();
    assert_eq!(code, 200, "node 2 health check: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    // be2, counted once per port its slice lists (http and dns), as kube-proxy counts
    // distinct ip:port pairs.
    assert_eq!(json["localEndpoints"], 2, "{body}");
    assert_eq!(json["service"]["name"], "local", "{body}");
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn a_pod_reaches_itself_through_its_service() {
    require_root();
    let s = Scene::start(&[]);
    let hp = s.t.pod_ns("hp").to_owned();
    let r = s.tcp(&hp, "10.96.0.50:80", 30, 2000);
    assert_eq!((r.ok, r.failed), (30, 0), "hairpin TCP: {r:?}");
    assert_eq!(r.by_backend.keys().collect::<Vec<_>>(), vec!["hp"]);
    assert_eq!(r.reply_from, vec!["10.96.0.50:80".to_string()]);
    let r = s.udp(&hp, "10.96.0.50:53", 50);
    assert_eq!((r.ok, r.failed), (50, 0), "hairpin UDP: {r:?}");
    let counter = |hook, reason| s.agents[0].counter(hook, reason).unwrap();
    if s.t.pod_socket_lb() {
        // The socket was connected to the pod's own address: no packet to hairpin.
        assert!(counter(Hook::Sock, Reason::SockTranslated) >= 30 + 50);
        assert_eq!(counter(Hook::PodIngress, Reason::Hairpin), 0);
    } else {
        assert!(counter(Hook::PodIngress, Reason::Hairpin) > 0);
    }
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn internal_traffic_policy_local_keeps_pods_on_their_node() {
    require_root();
    let s = Scene::start(&[]);
    let c1 = s.t.pod_ns("c1").to_owned();
    let c2 = s.t.pod_ns("c2").to_owned();
    let r = s.tcp(&c1, "10.96.0.60:80", 40, 2000);
    assert_eq!((r.ok, r.failed), (40, 0), "{r:?}");
    assert_eq!(
        r.by_backend.keys().collect::<Vec<_>>(),
        vec!["be1"],
        "node 1 pods use be1 only: {r:?}"
    );
    let r = s.tcp(&c2, "10.96.0.60:80", 40, 2000);
    assert_eq!((r.ok, r.failed), (40, 0), "{r:?}");
    assert_eq!(
        r.by_backend.keys().collect::<Vec<_>>(),
        vec!["be2"],
        "node 2 pods use be2 only: {r:?}"
    );
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn localhost_nodeports_serve_node_processes_only_without_route_localnet() {
    require_root();
    let s = Scene::start(&["--nodeport-addresses", "127.0.0.0/8"]);
    let node1 = s.t.node(1).ns.clone();
    // A process on node 1 (in the node's namespace, in the cgroup the agent's hooks serve).
    let on_node = |args: &[&str]| -> Summary {
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
        Summary::from_output(&done.stdout).unwrap()
    };
    let r = on_node(&[
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
    let r = on_node(&[
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
    // Not served on the node addresses, so the external client reaches nothing.
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
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn many_new_udp_flows_to_a_remote_backend_all_get_a_snat_port() {
    // 6000 new UDP flows (a socket each) through node 1's NodePort to the one backend, on node 2,
    // within a few seconds: each holds an SNAT port for 30 s, so with the former fixed
    // 61000–65535 (4536 ports) the flows past ~4500 were dropped as snat_no_port. The agent's
    // default from the node (1024–29999 and 61000–65535) leaves room for all of them.
    require_root();
    let s = Scene::start(&[]);
    let ext = s.ext();
    let started = std::time::Instant::now();
    let r = s.run(
        &ext,
        &[
            "udp",
            "--target",
            "172.18.0.2:30300",
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
        "6000 new UDP flows in {elapsed:?}: {} answered, {} failed, errors {:?}",
        r.ok, r.failed, r.errors
    );
    assert_eq!((r.ok, r.failed), (6000, 0), "errors: {:?}", r.errors);
    assert_eq!(r.by_backend.get("be2").copied(), Some(6000));
    assert_eq!(r.reply_from, vec!["172.18.0.2:30300".to_string()]);
    // The backend saw node 1's SNAT ports: both ranges, never an ephemeral or NodePort one.
    let ports: Vec<u16> = r
        .peers_seen_by_backend
        .iter()
        .map(|p| {
            let (addr, port) = p.rsplit_once(':').expect("ADDR:PORT");
            assert_eq!(addr, "172.18.0.2", "peer {p}: not node 1's address");
            port.parse().expect("a port")
        })
        .collect();
    assert!(
        ports
            .iter()
            .all(|p| (1024..=29_999).contains(p) || (61_000..=65_535).contains(p)),
        "a SNAT port outside 1024-29999 and 61000-65535"
    );
    assert!(ports.iter().any(|&p| p < 30_000) && ports.iter().any(|&p| p >= 61_000));
    // `explain` reports the ports the agent loaded (its SVC_SNAT_PORTS pin).
    let agent_bin = svc_testkit::agent::workspace_bin("svc-agent").unwrap();
    let bpffs = s.agents[0].bpffs().to_str().unwrap().to_owned();
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
    let node1 = &s.agents[0];
    let no_port = node1.counter(Hook::Xdp, Reason::SnatNoPort).unwrap()
        + node1
            .counter(Hook::UplinkIngress, Reason::SnatNoPort)
            .unwrap();
    assert_eq!(no_port, 0, "node 1 dropped flows for want of an SNAT port");
}
