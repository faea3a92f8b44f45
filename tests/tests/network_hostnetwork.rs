//! hostNetwork endpoints end to end (needs root): Services whose endpoints are the nodes' own
//! underlay addresses, as every hostNetwork pod's endpoint and the `kubernetes` Service's API
//! server are.
//!
//! Node 1 runs pod c1, node 2 runs pod c2. A server listens in each *node* namespace on the
//! node's underlay address (TCP 6443, UDP 5353), in the agent's test cgroup like every
//! process of a real node (where the socket hooks sit at the root cgroup). Service `hostnet`
//! (ClusterIP 10.96.0.70, NodePorts 30443/30353, LB IP 192.0.2.70) has both as endpoints;
//! Service `kubernetes` (10.96.0.1:443) has node 1's address port 6443, written as kube-apiserver
//! writes it (no selector, no `nodeName`). The external client routes the documentation ranges
//! and 10.96/16 via node 1.
//!
//! The same scene runs over IPv6 in the dual-stack topology: the Services single-stack IPv6
//! (ClusterIP fd00:10:96::70, LB IP 2001:db8:2::70, `kubernetes` fd00:10:96::1 as an IPv6-first
//! cluster has it), the node servers on the nodes' IPv6 underlay addresses.
//!
//! What makes these flows different from pod endpoints: a node's reply to an external client
//! (or to a pod on another node that used this node's NodePort) is sent by the node's own
//! stack, so it never crosses a pod veth; it leaves through the uplink's egress, where
//! `svc_uplink_egress` restores the frontend.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use svc_common::{Hook, Reason};
use svc_testkit::{
    agent::{node_name, workspace_bin, Agent, ManifestDir},
    capture::{verify_checksums, Capture},
    probe::Summary,
    topology::{require_root, Enter, NsChild, SpawnOpts, Topology, TopologySpec},
};

const PROBE: &str = env!("CARGO_BIN_EXE_svc-probe");

/// The scene's addresses in one family.
#[derive(Clone, Copy)]
struct Family {
    v6: bool,
    cluster_ip: &'static str,
    lb_ip: &'static str,
    kubernetes_ip: &'static str,
}

const V4: Family = Family {
    v6: false,
    cluster_ip: "10.96.0.70",
    lb_ip: "192.0.2.70",
    kubernetes_ip: "10.96.0.1",
};
const V6: Family = Family {
    v6: true,
    cluster_ip: "fd00:10:96::70",
    lb_ip: "2001:db8:2::70",
    kubernetes_ip: "fd00:10:96::1",
};

impl Family {
    fn name(self) -> &'static str {
        if self.v6 {
            "IPv6"
        } else {
            "IPv4"
        }
    }

    /// `addr:port`, bracketed for IPv6.
    fn target(self, addr: impl std::fmt::Display, port: u16) -> String {
        if self.v6 {
            format!("[{addr}]:{port}")
        } else {
            format!("{addr}:{port}")
        }
    }
}
/// Backend ids the node servers answer with.
const BACKENDS: [&str; 2] = ["hn1", "hn2"];

/// Fields drop in order: the servers (members of the agents' cgroups) go before the agents,
/// which remove their cgroups, and the topology goes last.
struct Scene {
    _servers: Vec<NsChild>,
    agents: Vec<Agent>,
    manifests: ManifestDir,
    f: Family,
    t: Topology,
}

impl Scene {
    fn start(f: Family) -> Self {
        let t = Topology::build(
            &TopologySpec::new()
                .node(&["c1"])
                .node(&["c2"])
                .external_client(true)
                .ext_gateway(1)
                .dual_stack(f.v6),
        )
        .expect("building the topology");
        let m = ManifestDir::new(&t).unwrap();
        let node_ip = |n: usize| -> IpAddr {
            if f.v6 {
                t.node_ip6(n).into()
            } else {
                t.node_ip(n).into()
            }
        };
        let (n1, n2) = (node_ip(1), node_ip(2));
        let (cluster_ip, lb_ip, kubernetes_ip) = (f.cluster_ip, f.lb_ip, f.kubernetes_ip);
        let (family, policy) = (
            f.name(),
            "  ipFamilyPolicy: SingleStack\n  ipFamilies: [FAMILY]\n".replace("FAMILY", f.name()),
        );
        m.write(
            "hostnet.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: hostnet\n  namespace: default\n\
                 spec:\n  type: LoadBalancer\n{policy}  clusterIP: {cluster_ip}\n  ports:\n    \
                 - {{name: https, port: 443, targetPort: 6443, nodePort: 30443, protocol: TCP}}\n    \
                 - {{name: dns, port: 53, targetPort: 5353, nodePort: 30353, protocol: UDP}}\n\
                 status:\n  loadBalancer:\n    ingress:\n    - ip: {lb_ip}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: hostnet-1\n  \
                 namespace: default\n  labels:\n    kubernetes.io/service-name: hostnet\n\
                 addressType: {family}\nports:\n  - {{name: https, port: 6443, protocol: TCP}}\n  \
                 - {{name: dns, port: 5353, protocol: UDP}}\nendpoints:\n  \
                 - addresses: [\"{n1}\"]\n    conditions: {{ready: true}}\n    nodeName: {}\n  \
                 - addresses: [\"{n2}\"]\n    conditions: {{ready: true}}\n    nodeName: {}\n",
                node_name(1),
                node_name(2)
            ),
        )
        .unwrap();
        // The `kubernetes` Service as kube-apiserver creates it and the EndpointSlice its
        // endpoint reconciler writes: the API server's advertise address, no nodeName.
        m.write(
            "kubernetes.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: kubernetes\n  namespace: default\n  \
                 labels: {{component: apiserver, provider: kubernetes}}\nspec:\n  type: ClusterIP\n\
                 {policy}  clusterIP: {kubernetes_ip}\n  ports:\n    \
                 - {{name: https, port: 443, targetPort: 6443, protocol: TCP}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: kubernetes\n  \
                 namespace: default\n  labels:\n    kubernetes.io/service-name: kubernetes\n\
                 addressType: {family}\nports:\n  - {{name: https, port: 6443, protocol: TCP}}\n\
                 endpoints:\n  - addresses: [\"{n1}\"]\n    conditions: {{ready: true}}\n"
            ),
        )
        .unwrap();
        let mut agents = Vec::new();
        for n in 1..=2 {
            let mut a = Agent::start(&t, n, m.path(), &[]).unwrap();
            a.wait_healthy(&t, Duration::from_secs(60)).unwrap();
            agents.push(a);
        }
        let mut servers = Vec::new();
        for n in 1..=2 {
            let ip = node_ip(n).to_string();
            let opts = SpawnOpts {
                cgroup: Some(agents[n - 1].cgroup().to_owned()),
                ..Default::default()
            };
            let mut s = t
                .spawn_opts(
                    &t.node(n).ns,
                    &[
                        PROBE,
                        "serve",
                        "--id",
                        BACKENDS[n - 1],
                        "--bind",
                        &ip,
                        "--tcp",
                        "6443",
                        "--udp",
                        "5353",
                    ],
                    &opts,
                )
                .unwrap();
            s.wait_for_line(Duration::from_secs(5), |l| l == "ready")
                .unwrap();
            servers.push(s);
        }
        Self {
            _servers: servers,
            agents,
            manifests: m,
            f,
            t,
        }
    }

    fn ns(&self, from: &str) -> String {
        match from {
            "ext" => self.t.ext_ns().unwrap().to_owned(),
            pod => self.t.pod_ns(pod).to_owned(),
        }
    }

    /// Runs the probe in a pod or the external client (`from`).
    fn probe(&self, from: &str, args: &[&str]) -> Summary {
        let mut cmd = vec![PROBE];
        cmd.extend_from_slice(args);
        Summary::from_output(&self.t.exec_ok(&self.ns(from), &cmd).unwrap()).unwrap()
    }

    /// Runs the probe as a process of node `n` (its namespace, its agent's cgroup).
    fn probe_on_node(&self, n: usize, args: &[&str]) -> Summary {
        let mut cmd = vec![PROBE];
        cmd.extend_from_slice(args);
        let opts = SpawnOpts {
            enter: Enter::Nsenter,
            cgroup: Some(self.agents[n - 1].cgroup().to_owned()),
            ..Default::default()
        };
        let done = self
            .t
            .spawn_opts(&self.t.node(n).ns, &cmd, &opts)
            .unwrap()
            .finish(Duration::from_secs(60))
            .unwrap();
        Summary::from_output(&done.stdout)
            .unwrap_or_else(|e| panic!("probe on node {n}: {e:#}: {}", done.stderr))
    }

    /// The frontends of `hostnet` in the order a client on node `home` (a pod or a process of
    /// that node; `None` for the external client) tries them: (what, TCP target, UDP target).
    /// Such a client's flows to the *other* node's NodePort are translated on that node, all
    /// its other flows on its own node, and none is source-NATed; so a client port reused for
    /// both kinds within the UDP timeout (30 s) gives two flows the same tuple towards the
    /// same node server, translated on different nodes, and the reply entry of the first
    /// captures the replies of the second. (netfilter would refuse the second flow at confirm,
    /// its reply tuple being taken; the datapath cannot see a clash between entries on two
    /// nodes, whatever the endpoint kind.) That frontend therefore comes last.
    fn frontends(&self, home: Option<usize>) -> Vec<(&'static str, String, String)> {
        let mut all = self.all_frontends();
        let other_nodeport = match home {
            Some(1) => Some("NodePort on node 2"),
            Some(2) => Some("NodePort on node 1"),
            _ => None,
        };
        if let Some(last) = other_nodeport {
            let i = all.iter().position(|f| f.0 == last).expect("frontend");
            let f = all.remove(i);
            all.push(f);
        }
        all
    }

    fn all_frontends(&self) -> Vec<(&'static str, String, String)> {
        let f = self.f;
        let node = |n: usize| -> IpAddr {
            if f.v6 {
                self.t.node_ip6(n).into()
            } else {
                self.t.node_ip(n).into()
            }
        };
        let (n1, n2) = (node(1), node(2));
        vec![
            (
                "ClusterIP",
                f.target(f.cluster_ip, 443),
                f.target(f.cluster_ip, 53),
            ),
            (
                "NodePort on node 1",
                f.target(n1, 30443),
                f.target(n1, 30353),
            ),
            (
                "NodePort on node 2",
                f.target(n2, 30443),
                f.target(n2, 30353),
            ),
            ("LB IP", f.target(f.lb_ip, 443), f.target(f.lb_ip, 53)),
        ]
    }

    /// `svc-agent inspect links -o json` on node `n`.
    fn links(&self, n: usize) -> Vec<serde_json::Value> {
        let agent = workspace_bin("svc-agent").unwrap();
        let bpffs = self.agents[n - 1].bpffs().to_str().unwrap().to_owned();
        let cmd = [
            agent.to_str().unwrap(),
            "inspect",
            "links",
            "--bpffs",
            &bpffs,
            "-o",
            "json",
        ];
        // nsenter, not `ip netns exec` (which remounts /sys and hides bpffs).
        let done = self
            .t
            .spawn_nsenter(&self.t.node(n).ns, &cmd)
            .unwrap()
            .finish(Duration::from_secs(20))
            .unwrap();
        assert!(done.status.success(), "inspect links: {}", done.stderr);
        serde_json::from_str(&done.stdout).unwrap()
    }
}

fn tcp_args(target: &str, count: u32) -> Vec<String> {
    [
        "tcp",
        "--target",
        target,
        "--count",
        &count.to_string(),
        "--timeout-ms",
        "2000",
        "--parallel",
        "4",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn udp_args(target: &str, count: u32) -> Vec<String> {
    [
        "udp",
        "--target",
        target,
        "--count",
        &count.to_string(),
        "--timeout-ms",
        "1000",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Every exchange answered, from the frontend the client used, by both node servers.
fn assert_both_backends(what: &str, target: &str, s: &Summary, total: u64) {
    assert_eq!((s.ok, s.failed), (total, 0), "{what}: {s:?}");
    assert_eq!(
        s.reply_from,
        vec![target.to_string()],
        "{what}: replies must come from {target}: {s:?}"
    );
    for be in BACKENDS {
        assert!(
            s.by_backend.get(be).copied().unwrap_or(0) > total / 10,
            "{what}: {be} got too few: {s:?}"
        );
    }
}

/// The uplink egress link of `links` (one node's `inspect links`): (link id, program id, pin).
fn uplink_egress(links: &[serde_json::Value]) -> (u64, u64, String) {
    let l = links
        .iter()
        .find(|l| l["target"] == "eth0" && l["hook"] == "uplink_egress")
        .unwrap_or_else(|| panic!("no uplink_egress link on eth0: {links:#?}"));
    assert_eq!(l["link_type"], "tcx", "{l:#}");
    (
        l["link_id"].as_u64().expect("link id"),
        l["program_id"].as_u64().expect("program id"),
        l["pin"].as_str().expect("pin").to_owned(),
    )
}

/// Waits until kernel link `id` is gone (a link is freed once its last pin and fd are).
fn wait_link_gone(id: u64, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while link_exists(id) {
        assert!(
            Instant::now() < deadline,
            "link {id} still in the kernel {why}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn link_exists(id: u64) -> bool {
    std::process::Command::new("bpftool")
        .args(["link", "show", "id", &id.to_string()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn every_frontend_from_pods_and_the_external_client(f: Family) {
    require_root();
    let s = Scene::start(f);
    let capture = Capture::start(&s.t, s.t.underlay_ns(), "br0").unwrap();
    for (from, home) in [("c1", Some(1)), ("c2", Some(2)), ("ext", None)] {
        for (what, tcp, udp) in s.frontends(home) {
            let what = format!("{} {what} from {from}", f.name());
            let r = s.probe(from, &strs(&tcp_args(&tcp, 100)));
            assert_both_backends(&format!("TCP {what}"), &tcp, &r, 100);
            let r = s.probe(from, &strs(&udp_args(&udp, 200)));
            assert_both_backends(&format!("UDP {what}"), &udp, &r, 200);
        }
    }
    let report = verify_checksums(capture.stop().unwrap().path()).unwrap();
    assert!(report.is_clean(), "bad checksums on the underlay: {report}");
    if f.v6 {
        assert!(
            report.tcp6 > 0 && report.udp6 > 0,
            "IPv6 traffic must cross the underlay, checksums verified: {report}"
        );
    }
    // The node servers' replies to the external client (and to pods of the other node, which
    // reach a NodePort through the underlay) got their frontend back at each uplink's egress.
    let hook = if f.v6 {
        Hook::UplinkEgress6
    } else {
        Hook::UplinkEgress
    };
    for a in &s.agents {
        let rev = a.counter(hook, Reason::RevNat).unwrap_or(0);
        assert!(
            rev > 0,
            "node {}: uplink egress translated no {} reply:\n{}",
            a.node,
            f.name(),
            a.log()
        );
    }
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn hostnetwork_endpoints_serve_pods_and_the_external_client_through_every_frontend() {
    every_frontend_from_pods_and_the_external_client(V4);
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn ipv6_hostnetwork_endpoints_serve_pods_and_the_external_client_through_every_frontend() {
    every_frontend_from_pods_and_the_external_client(V6);
}

fn every_frontend_from_node_processes(f: Family) {
    require_root();
    let s = Scene::start(f);
    for n in 1..=2 {
        for (what, tcp, udp) in s.frontends(Some(n)) {
            let what = format!("{} {what} from a process of node {n}", f.name());
            let r = s.probe_on_node(n, &strs(&tcp_args(&tcp, 60)));
            assert_both_backends(&format!("TCP {what}"), &tcp, &r, 60);
            let r = s.probe_on_node(n, &strs(&udp_args(&udp, 120)));
            assert_both_backends(&format!("UDP {what}"), &udp, &r, 120);
        }
    }
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn node_processes_reach_hostnetwork_endpoints_through_every_frontend() {
    every_frontend_from_node_processes(V4);
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn ipv6_node_processes_reach_hostnetwork_endpoints_through_every_frontend() {
    every_frontend_from_node_processes(V6);
}

fn kubernetes_service_from_pods_and_a_node(f: Family) {
    require_root();
    let s = Scene::start(f);
    let target = f.target(f.kubernetes_ip, 443);
    for from in ["c1", "c2"] {
        let r = s.probe(from, &strs(&tcp_args(&target, 20)));
        assert_eq!((r.ok, r.failed), (20, 0), "{target} from {from}: {r:?}");
        assert_eq!(
            r.by_backend.keys().collect::<Vec<_>>(),
            vec!["hn1"],
            "the API server is node 1's: {r:?}"
        );
        assert_eq!(r.reply_from, vec![target.clone()], "{from}: {r:?}");
        // No SNAT for pods: the API server sees the pod's own address.
        let pod = if f.v6 {
            f.target(s.t.pod_ip6(from), 0)
        } else {
            f.target(s.t.pod_ip(from), 0)
        };
        let pod = pod.strip_suffix('0').unwrap();
        assert!(
            r.peers_seen_by_backend.iter().all(|p| p.starts_with(pod)),
            "{from}: {:?}",
            r.peers_seen_by_backend
        );
    }
    let r = s.probe_on_node(2, &strs(&tcp_args(&target, 20)));
    assert_eq!((r.ok, r.failed), (20, 0), "{target} from node 2: {r:?}");
    assert_eq!(r.reply_from, vec![target.clone()], "node 2: {r:?}");
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn the_kubernetes_service_reaches_the_api_server_from_pods_on_every_node() {
    kubernetes_service_from_pods_and_a_node(V4);
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn the_ipv6_kubernetes_service_reaches_the_api_server_from_pods_on_every_node() {
    kubernetes_service_from_pods_and_a_node(V6);
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn uplink_egress_link_is_listed_adopted_on_restart_needed_and_removed_by_uninstall() {
    require_root();
    let mut s = Scene::start(V4);
    let n1 = s.t.node_ip(1);
    let (tcp, udp) = (format!("{n1}:30443"), format!("{n1}:30353"));
    let first = uplink_egress(&s.links(1));
    assert!(link_exists(first.0), "link {} not in the kernel", first.0);

    // kill -9, then a new agent on the same pins: the same link, with the new agent's program.
    s.agents.remove(0).kill9();
    let mut a = Agent::start(&s.t, 1, s.manifests.path(), &[]).expect("restarting node 1");
    a.wait_healthy(&s.t, Duration::from_secs(60)).unwrap();
    s.agents.insert(0, a);
    let adopted = uplink_egress(&s.links(1));
    assert_eq!(
        adopted.0, first.0,
        "the pinned link must be adopted, not replaced"
    );
    assert_ne!(
        adopted.1, first.1,
        "the restarted agent's program must be swapped in"
    );
    // The adopted link translates: replies of node 1's own server (half of these flows)
    // leave with the NodePort as source.
    let r = s.probe("ext", &strs(&tcp_args(&tcp, 60)));
    assert_both_backends("TCP NodePort on node 1 after restart", &tcp, &r, 60);

    // Without the hook (its pin removed: nothing else holds the link) node 1's server answers
    // the external client from its own port: the hook is what translates these replies.
    let bpffs = s.agents[0].bpffs().to_owned();
    std::fs::remove_file(bpffs.join("links").join(&adopted.2)).unwrap();
    wait_link_gone(adopted.0, "after its pin was removed");
    let r = s.probe("ext", &strs(&udp_args(&udp, 100)));
    assert!(
        r.reply_from.contains(&format!("{n1}:5353")) && r.by_backend.contains_key("hn1"),
        "without svc_uplink_egress node 1's replies must leave untranslated: {r:?}"
    );

    // A restarted agent finds no pin and attaches afresh; everything is translated again.
    let mut old = s.agents.remove(0);
    old.stop().unwrap();
    // Dropped without `uninstall`: the pins are the next agent's now.
    old.kill9();
    let mut a = Agent::start(&s.t, 1, s.manifests.path(), &[]).expect("restarting node 1");
    a.wait_healthy(&s.t, Duration::from_secs(60)).unwrap();
    s.agents.insert(0, a);
    let fresh = uplink_egress(&s.links(1));
    assert_ne!(fresh.0, adopted.0, "a new link");
    let r = s.probe("ext", &strs(&udp_args(&udp, 100)));
    assert_both_backends("UDP NodePort on node 1 after re-attaching", &udp, &r, 100);

    // SIGTERM leaves the link; `svc-agent uninstall` removes it.
    s.agents[0].stop().unwrap();
    assert!(link_exists(fresh.0), "SIGTERM must leave the link attached");
    let agent = workspace_bin("svc-agent").unwrap();
    let st = std::process::Command::new(agent)
        .args(["uninstall", "--bpffs"])
        .arg(&bpffs)
        .status()
        .unwrap();
    assert!(st.success(), "uninstall failed");
    assert!(!bpffs.exists(), "uninstall left {}", bpffs.display());
    wait_link_gone(fresh.0, "after uninstall");
}
