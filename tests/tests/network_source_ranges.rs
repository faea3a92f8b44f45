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
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::time::Duration;

use svc_common::{Hook, Reason};
use svc_testkit::{
    agent::{ready_endpoints_yaml, Agent, ManifestDir},
    probe::Summary,
    topology::{require_root, Enter, NsChild, SpawnOpts, Topology, TopologySpec},
};

const PROBE: &str = env!("CARGO_BIN_EXE_svc-probe");
const OPEN_LB: &str = "192.0.2.10";
const CLOSED_LB: &str = "192.0.2.20";
const NODES_LB: &str = "192.0.2.30";

/// A LoadBalancer Service `name` (ClusterIP `cluster_ip`, NodePort `node_port`, ingress IP
/// `lb_ip`) with `ranges` (YAML flow sequence), over `endpoints` (address, node).
fn lb_service(
    name: &str,
    cluster_ip: &str,
    node_port: u16,
    lb_ip: &str,
    ranges: &str,
    endpoints: &[(String, usize)],
) -> String {
    let eps = ready_endpoints_yaml(endpoints);
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: LoadBalancer\n  \
         clusterIP: {cluster_ip}\n  loadBalancerSourceRanges: {ranges}\n  ports:\n    \
         - {{name: http, port: 80, targetPort: 8080, nodePort: {node_port}, protocol: TCP}}\n\
         status:\n  loadBalancer:\n    ingress:\n    - ip: {lb_ip}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  \
         labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n  \
         - {{name: http, port: 8080, protocol: TCP}}\nendpoints:\n{eps}"
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
                .ext_gateway(1),
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
        let ep = |p: &str| (t.pod_ip(p).to_string(), t.pod(p).node);
        let both = [ep("be1"), ep("be2")];
        let m = ManifestDir::new(&t).unwrap();
        for (name, cluster_ip, node_port, lb, ranges) in [
            (
                "open",
                "10.96.0.110",
                30110,
                OPEN_LB,
                "[\"172.18.0.100/32\", \"10.244.1.0/24\"]",
            ),
            (
                "closed",
                "10.96.0.120",
                30120,
                CLOSED_LB,
                "[\"203.0.113.0/24\", \"not-a-cidr\"]",
            ),
            (
                "nodes",
                "10.96.0.130",
                30130,
                NODES_LB,
                "[\"172.18.0.0/16\"]",
            ),
        ] {
            m.write(
                &format!("{name}.yaml"),
                &lb_service(name, cluster_ip, node_port, lb, ranges, &both),
            )
            .unwrap();
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
    // XDP drops them; a frame it cannot prove checksummed goes to tc, which drops it there.
    let denied_uplink = || {
        node1.counter(Hook::Xdp, Reason::SourceRangeDenied).unwrap()
            + node1
                .counter(Hook::UplinkIngress, Reason::SourceRangeDenied)
                .unwrap()
    };

    // The external client, over the uplink (XDP on node 1).
    let r = s.tcp(&ext, &format!("{OPEN_LB}:80"), 20, 2000);
    assert_served("the client inside `open`'s ranges", &r, 20);
    assert_eq!(r.reply_from, vec![format!("{OPEN_LB}:80")]);
    let before = denied_uplink();
    let r = s.tcp(&ext, &format!("{CLOSED_LB}:80"), 3, 500);
    assert_dropped("the client outside `closed`'s ranges", &r);
    assert!(
        denied_uplink() > before,
        "counted as source_range_denied on node 1's uplink"
    );
    for target in ["172.18.0.2:30120", "172.18.0.3:30120"] {
        let r = s.tcp(&ext, target, 10, 2000);
        assert_served(&format!("`closed`'s NodePort {target}"), &r, 10);
    }
    let r = s.tcp(&ext, &format!("{NODES_LB}:80"), 10, 2000);
    assert_served("the client inside `nodes`' 172.18.0.0/16", &r, 10);

    // A pod of node 1 (10.244.1.0/24), through its veth's hook.
    let r = s.tcp(&c1, &format!("{OPEN_LB}:80"), 10, 2000);
    assert_served("c1 inside `open`'s 10.244.1.0/24", &r, 10);
    let before = node1
        .counter(Hook::PodIngress, Reason::SourceRangeDenied)
        .unwrap();
    let r = s.tcp(&c1, &format!("{NODES_LB}:80"), 3, 500);
    assert_dropped("c1 outside `nodes`' ranges", &r);
    assert!(
        node1
            .counter(Hook::PodIngress, Reason::SourceRangeDenied)
            .unwrap()
            > before
    );
    let r = s.tcp(&c1, "10.96.0.120:80", 10, 2000);
    assert_served("`closed`'s ClusterIP from c1", &r, 10);

    // A process of node 1, through the socket hooks: allowed when a range contains the node's
    // address (kube-proxy's allowFromNode), refused at once (EPERM) otherwise, where
    // kube-proxy's output chain would drop the SYNs until the connect timed out.
    let r = s.tcp_on_node(&format!("{NODES_LB}:80"), 10, 2000);
    assert_served("node 1 inside `nodes`' 172.18.0.0/16", &r, 10);
    assert_eq!(r.reply_from, vec![format!("{NODES_LB}:80")]);
    let before = node1
        .counter(Hook::Sock, Reason::SourceRangeDenied)
        .unwrap();
    let r = s.tcp_on_node(&format!("{OPEN_LB}:80"), 3, 2000);
    assert_eq!(r.ok, 0, "node 1 is in none of `open`'s ranges: {r:?}");
    assert!(
        r.errors.iter().all(|e| e.contains("not permitted")),
        "refused with EPERM: {r:?}"
    );
    assert_eq!(
        node1
            .counter(Hook::Sock, Reason::SourceRangeDenied)
            .unwrap()
            - before,
        3
    );
    let r = s.tcp_on_node("10.96.0.110:80", 10, 2000);
    assert_served("`open`'s ClusterIP from node 1", &r, 10);

    // `inspect services` shows the ranges on the LB IP frontend only, and the malformed entry
    // is in the agent's log.
    let views = node1.cli_json(&["inspect", "services"]).unwrap();
    let views = views.as_array().unwrap();
    let ranges_of = |addr: &str| -> Vec<serde_json::Value> {
        views
            .iter()
            .filter(|v| v["address"] == addr)
            .map(|v| v["source_ranges"].clone())
            .collect()
    };
    assert_eq!(
        ranges_of(OPEN_LB),
        vec![serde_json::json!(["10.244.1.0/24", "172.18.0.100/32"])],
        "{views:?}"
    );
    assert_eq!(
        ranges_of("10.96.0.110"),
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
