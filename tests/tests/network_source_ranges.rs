//! `loadBalancerSourceRanges` end to end (needs root), with kube-proxy's semantics: only the
//! LoadBalancer IPs of a Service with ranges are filtered, for every source (the external
//! client, pods, the node's own processes), new connections only; its NodePort and ClusterIP
//! are not. A node process is allowed exactly when a range contains the node's address.
//!
//! Node 1 runs pods c1 and be1, node 2 runs be2. The external client (172.18.0.100) routes the
//! documentation ranges via node 1. Three LoadBalancer Services over be1 and be2:
//! - `open`: ranges 172.18.0.100/32 and 10.244.1.0/24 (the client and node 1's pods, not the
//!   nodes);
//! - `closed`: range 203.0.113.0/24 (nobody here), plus a malformed entry that is skipped;
//! - `nodes`: range 172.18.0.0/16 (the client and both nodes, not the pods).
//!
//! The topology is dual stack and the Services `RequireDualStack`, each with an IPv6 LB IP
//! (2001:db8:2::/64) and IPv6 ranges of the same meaning (`open`: fd00:18::100/128 and
//! fd00:10:244:1::/64; `closed`: 2001:db8:dead::/48; `nodes`: fd00:18::/64): every check runs
//! for IPv4, then for IPv6. Each family's LB IPs are filtered by that family's ranges alone, as
//! kube-proxy's per-family proxiers read the list (`MapCIDRsByIPFamily`,
//! pkg/proxy/serviceport.go): a fourth Service, `v4only` (range 203.0.113.0/24 only), refuses
//! the client on its IPv4 LB IP and serves it on its IPv6 one.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::time::Duration;

use svc_common::{Hook, Reason};
use svc_testkit::{
    agent::{dual_stack_cluster_ips, endpoint_slices_dual_stack, Agent, ManifestDir},
    probe::Summary,
    topology::{
        host_port, require_root, Enter, Family, NsChild, SpawnOpts, Topology, TopologySpec,
    },
};

const PROBE: &str = env!("CARGO_BIN_EXE_svc-probe");

/// The scene's addresses and ranges in one family.
struct Addrs {
    open_lb: &'static str,
    closed_lb: &'static str,
    nodes_lb: &'static str,
    v4only_lb: &'static str,
    open_cluster_ip: &'static str,
    closed_cluster_ip: &'static str,
    nodes_cluster_ip: &'static str,
    v4only_cluster_ip: &'static str,
    /// `open`'s ranges: the external client and node 1's pod CIDR, as `inspect` sorts them.
    open_ranges: [&'static str; 2],
    /// `closed`'s range (nobody here).
    closed_range: &'static str,
    /// `nodes`' range: the underlay (client and both nodes).
    nodes_range: &'static str,
}

const V4: Addrs = Addrs {
    open_lb: "192.0.2.10",
    closed_lb: "192.0.2.20",
    nodes_lb: "192.0.2.30",
    v4only_lb: "192.0.2.40",
    open_cluster_ip: "10.96.0.110",
    closed_cluster_ip: "10.96.0.120",
    nodes_cluster_ip: "10.96.0.130",
    v4only_cluster_ip: "10.96.0.140",
    open_ranges: ["10.244.1.0/24", "172.18.0.100/32"],
    closed_range: "203.0.113.0/24",
    nodes_range: "172.18.0.0/16",
};

const V6: Addrs = Addrs {
    open_lb: "2001:db8:2::10",
    closed_lb: "2001:db8:2::20",
    nodes_lb: "2001:db8:2::30",
    v4only_lb: "2001:db8:2::40",
    open_cluster_ip: "fd00:10:96::110",
    closed_cluster_ip: "fd00:10:96::120",
    nodes_cluster_ip: "fd00:10:96::130",
    v4only_cluster_ip: "fd00:10:96::140",
    open_ranges: ["fd00:10:244:1::/64", "fd00:18::100/128"],
    closed_range: "2001:db8:dead::/48",
    nodes_range: "fd00:18::/64",
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

/// A dual-stack LoadBalancer Service `name` (ClusterIPs and LB IPs from `pick`, NodePort
/// `node_port`) with `ranges` (YAML flow sequence), over be1 and be2.
fn lb_service(
    t: &Topology,
    name: &str,
    pick: impl Fn(&Addrs) -> (&'static str, &'static str),
    node_port: u16,
    ranges: &str,
) -> String {
    let (cip4, lb4) = pick(&V4);
    let (cip6, lb6) = pick(&V6);
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: LoadBalancer\n{}  \
         loadBalancerSourceRanges: {ranges}\n  ports:\n    \
         - {{name: http, port: 80, targetPort: 8080, nodePort: {node_port}, protocol: TCP}}\n\
         status:\n  loadBalancer:\n    ingress:\n    - ip: {lb4}\n    - ip: {lb6}\n{}",
        dual_stack_cluster_ips(cip4, cip6),
        endpoint_slices_dual_stack(
            t,
            name,
            "  - {name: http, port: 8080, protocol: TCP}\n",
            &["be1", "be2"]
        )
    )
}

struct Scene {
    agents: Vec<Agent>,
    _servers: Vec<NsChild>,
    _manifests: ManifestDir,
    t: Topology,
}

impl Scene {
    fn start() -> Self {
        let t = Topology::build(
            &TopologySpec::new()
                .node(&["c1", "be1"])
                .node(&["be2"])
                .external_client(true)
                .ext_gateway(1)
                .dual_stack(true),
        )
        .expect("building the topology");
        let mut servers = Vec::new();
        for be in ["be1", "be2"] {
            let mut s = t
                .spawn(t.pod_ns(be), &[PROBE, "serve", "--id", be, "--tcp", "8080"])
                .unwrap();
            s.wait_for_line(Duration::from_secs(5), |l| l == "ready")
                .unwrap();
            servers.push(s);
        }
        let m = ManifestDir::new(&t).unwrap();
        let ranges = |a: &Addrs| format!("\"{}\", \"{}\"", a.open_ranges[0], a.open_ranges[1]);
        let services = [
            (
                "open",
                lb_service(
                    &t,
                    "open",
                    |a| (a.open_cluster_ip, a.open_lb),
                    30110,
                    &format!("[{}, {}]", ranges(&V4), ranges(&V6)),
                ),
            ),
            (
                "closed",
                lb_service(
                    &t,
                    "closed",
                    |a| (a.closed_cluster_ip, a.closed_lb),
                    30120,
                    &format!(
                        "[\"{}\", \"not-a-cidr\", \"{}\"]",
                        V4.closed_range, V6.closed_range
                    ),
                ),
            ),
            (
                "nodes",
                lb_service(
                    &t,
                    "nodes",
                    |a| (a.nodes_cluster_ip, a.nodes_lb),
                    30130,
                    &format!("[\"{}\", \"{}\"]", V4.nodes_range, V6.nodes_range),
                ),
            ),
            (
                "v4only",
                lb_service(
                    &t,
                    "v4only",
                    |a| (a.v4only_cluster_ip, a.v4only_lb),
                    30140,
                    &format!("[\"{}\"]", V4.closed_range),
                ),
            ),
        ];
        for (name, text) in services {
            m.write(&format!("{name}.yaml"), &text).unwrap();
        }
        let agents = Agent::start_all(&t, 2, m.path(), &[]).unwrap();
        Self {
            agents,
            _servers: servers,
            _manifests: m,
            t,
        }
    }

    fn tcp_args(target: &str, count: u32, timeout_ms: u32) -> Vec<String> {
        [
            "tcp",
            "--target",
            target,
            "--count",
            &count.to_string(),
            "--timeout-ms",
            &timeout_ms.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `svc-probe tcp` from namespace `ns`.
    fn tcp(&self, ns: &str, target: &str, count: u32, timeout_ms: u32) -> Summary {
        let args = Self::tcp_args(target, count, timeout_ms);
        let mut cmd = vec![PROBE];
        cmd.extend(args.iter().map(String::as_str));
        Summary::from_output(&self.t.exec_ok(ns, &cmd).unwrap()).unwrap()
    }

    /// `svc-probe tcp` from a process of node 1 (its namespace, in the cgroup the agent's
    /// socket hooks serve).
    fn tcp_on_node(&self, target: &str, count: u32, timeout_ms: u32) -> Summary {
        let args = Self::tcp_args(target, count, timeout_ms);
        let mut cmd = vec![PROBE];
        cmd.extend(args.iter().map(String::as_str));
        let opts = SpawnOpts {
            enter: Enter::Nsenter,
            cgroup: Some(self.agents[0].cgroup().to_owned()),
            ..Default::default()
        };
        let done = self
            .t
            .spawn_opts(&self.t.node(1).ns, &cmd, &opts)
            .unwrap()
            .finish(Duration::from_secs(60))
            .unwrap();
        Summary::from_output(&done.stdout).unwrap()
    }
}

fn assert_served(what: &str, r: &Summary, n: u64) {
    assert_eq!((r.ok, r.failed), (n, 0), "{what} must be served: {r:?}");
}

/// Refused by a silent drop: every connect times out.
fn assert_dropped(what: &str, r: &Summary) {
    assert_eq!(r.ok, 0, "{what} must be refused: {r:?}");
    assert!(
        r.errors.iter().all(|e| e.contains("timed out")),
        "{what}: a drop (time-out), not a reject: {r:?}"
    );
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn load_balancer_source_ranges_filter_lb_ips_only() {
    require_root();
    let s = Scene::start();
    let ext = s.t.ext_ns().unwrap().to_owned();
    let c1 = s.t.pod_ns("c1").to_owned();
    let node1 = &s.agents[0];
    let count = |hook, reason| node1.counter(hook, reason).unwrap();
    for f in Family::BOTH {
        let a = addrs(f);
        let (uplink, pod, sock) = match f {
            // XDP drops them; a frame it cannot prove checksummed goes to tc, which drops it
            // there.
            Family::V4 => (
                [Hook::Xdp, Hook::UplinkIngress],
                Hook::PodIngress,
                Hook::Sock,
            ),
            // Likewise `svc_xdp6` and the IPv6 tc program.
            Family::V6 => (
                [Hook::Xdp6, Hook::UplinkIngress6],
                Hook::PodIngress6,
                Hook::Sock6,
            ),
        };
        let denied_uplink = || {
            count(uplink[0], Reason::SourceRangeDenied)
                + if uplink[1] == uplink[0] {
                    0
                } else {
                    count(uplink[1], Reason::SourceRangeDenied)
                }
        };

        // The external client, over the uplink (node 1).
        let r = s.tcp(&ext, &at(a.open_lb, 80), 20, 2000);
        assert_served(&format!("{f}: the client inside `open`'s ranges"), &r, 20);
        assert_eq!(r.reply_from, vec![at(a.open_lb, 80)], "{f}");
        let before = denied_uplink();
        let r = s.tcp(&ext, &at(a.closed_lb, 80), 3, 500);
        assert_dropped(&format!("{f}: the client outside `closed`'s ranges"), &r);
        assert!(
            denied_uplink() > before,
            "{f}: counted as source_range_denied on node 1's uplink"
        );
        for n in [1, 2] {
            let target = host_port(s.t.node(n).addr(f), 30120);
            let r = s.tcp(&ext, &target, 10, 2000);
            assert_served(&format!("{f}: `closed`'s NodePort {target}"), &r, 10);
        }
        let r = s.tcp(&ext, &at(a.nodes_lb, 80), 10, 2000);
        assert_served(
            &format!("{f}: the client inside `nodes`' {}", a.nodes_range),
            &r,
            10,
        );

        // A pod of node 1, through its veth's hook.
        let r = s.tcp(&c1, &at(a.open_lb, 80), 10, 2000);
        assert_served(
            &format!("{f}: c1 inside `open`'s {}", s.t.node(1).pod_cidr_of(f)),
            &r,
            10,
        );
        let before = count(pod, Reason::SourceRangeDenied);
        let r = s.tcp(&c1, &at(a.nodes_lb, 80), 3, 500);
        assert_dropped(&format!("{f}: c1 outside `nodes`' ranges"), &r);
        assert!(
            count(pod, Reason::SourceRangeDenied) > before,
            "{f}: counted as source_range_denied by {}",
            pod.name()
        );
        let r = s.tcp(&c1, &at(a.closed_cluster_ip, 80), 10, 2000);
        assert_served(&format!("{f}: `closed`'s ClusterIP from c1"), &r, 10);

        // A process of node 1, through the socket hooks: allowed when a range contains the
        // node's address (kube-proxy's allowFromNode), refused at once (EPERM) otherwise, where
        // kube-proxy's output chain would drop the SYNs until the connect timed out.
        let r = s.tcp_on_node(&at(a.nodes_lb, 80), 10, 2000);
        assert_served(
            &format!("{f}: node 1 inside `nodes`' {}", a.nodes_range),
            &r,
            10,
        );
        assert_eq!(r.reply_from, vec![at(a.nodes_lb, 80)], "{f}");
        let before = count(sock, Reason::SourceRangeDenied);
        let r = s.tcp_on_node(&at(a.open_lb, 80), 3, 2000);
        assert_eq!(r.ok, 0, "{f}: node 1 is in none of `open`'s ranges: {r:?}");
        assert!(
            r.errors.iter().all(|e| e.contains("not permitted")),
            "{f}: refused with EPERM: {r:?}"
        );
        assert_eq!(
            count(sock, Reason::SourceRangeDenied) - before,
            3,
            "{f}: counted by {}",
            sock.name()
        );
        let r = s.tcp_on_node(&at(a.open_cluster_ip, 80), 10, 2000);
        assert_served(&format!("{f}: `open`'s ClusterIP from node 1"), &r, 10);
    }

    // `v4only` has IPv4 ranges only: its IPv4 LB IP refuses the client, its IPv6 LB IP has no
    // ranges of its family and serves everyone (kube-proxy: one proxier per family, each with
    // its family's ranges).
    let r = s.tcp(&ext, &at(V4.v4only_lb, 80), 3, 500);
    assert_dropped("IPv4: the client outside `v4only`'s IPv4 ranges", &r);
    let r = s.tcp(&ext, &at(V6.v4only_lb, 80), 10, 2000);
    assert_served("IPv6: `v4only`'s IPv6 LB IP (no IPv6 ranges)", &r, 10);

    // `inspect services` shows each family's ranges on that family's LB IP frontend only, and
    // the malformed entry is in the agent's log.
    let views = node1.cli_json(&["inspect", "services"]).unwrap();
    let views = views.as_array().unwrap();
    let ranges_of = |addr: &str| -> Vec<serde_json::Value> {
        views
            .iter()
            .filter(|v| v["address"] == addr)
            .map(|v| v["source_ranges"].clone())
            .collect()
    };
    for a in [&V4, &V6] {
        assert_eq!(
            ranges_of(a.open_lb),
            vec![serde_json::json!(a.open_ranges)],
            "{views:?}"
        );
        assert_eq!(
            ranges_of(a.open_cluster_ip),
            vec![serde_json::json!([])],
            "{views:?}"
        );
    }
    assert_eq!(
        ranges_of(V6.v4only_lb),
        vec![serde_json::json!([])],
        "{views:?}"
    );
    let log = node1.log();
    assert!(
        log.lines().any(|l| l.contains("Service default/closed")
            && l.contains("spec.loadBalancerSourceRanges[1]")
            && l.contains("not-a-cidr")),
        "the malformed range is reported:\n{log}"
    );
}
