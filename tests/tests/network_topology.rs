//! Topology-aware routing end to end (needs root): agents follow the fake API server, whose
//! Node objects put node 1 in zone-a and node 2 in zone-b (`topology.kubernetes.io/zone`).
//!
//! Service `web` asks for `trafficDistribution: PreferClose`. The fake has no EndpointSlice
//! controller, so the test writes the slice the controller would: each endpoint hinted
//! `forZones` its own node's zone. Each node's pod then reaches only its zone's backend, as
//! kube-proxy routes by the hints (pkg/proxy/topology.go). A slice where one endpoint lacks its
//! hints turns topology off: every client reaches both backends again. Finally node 2 loses its
//! zone label, and its agent stops using hints while node 1's keeps them.
//!
//! The topology is dual stack and `web` `RequireDualStack`: every step holds for its IPv4
//! ClusterIP (10.96.0.80, over an IPv4 slice) and its IPv6 one (fd00:10:96::80, over an IPv6
//! slice with the same hints), the hints being per slice and per family as kube-proxy reads
//! them (one proxier per family, each with its own slices).
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use svc_testkit::{
    agent::{dual_stack_cluster_ips, node_name, Agent, ManifestDir},
    apiserver::ApiServer,
    probe::Summary,
    topology::{host_port, require_root, Family, NsChild, Topology, TopologySpec},
};

/// `web`'s ClusterIPs.
const VIP4: &str = "10.96.0.80";
const VIP6: &str = "fd00:10:96::80";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Connections per client and check: with two backends, 40 connections all landing on one by
/// chance is a 2^-39 event.
const CONNS: u32 = 40;

/// Fields drop in order: servers and agents before the API server and the topology.
struct Scene {
    _servers: Vec<NsChild>,
    agents: Vec<Agent>,
    api: ApiServer,
    _dir: ManifestDir,
    t: Topology,
}

impl Scene {
    fn start() -> Self {
        let t = Topology::build(
            &TopologySpec::new()
                .node(&["client1", "be1"])
                .node(&["client2", "be2"])
                .dual_stack(true),
        )
        .expect("building the topology");
        let servers = t.serve(&["be1", "be2"], &["--tcp", "8080"]).unwrap();
        let dir = ManifestDir::new(&t).unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let api = ApiServer::start_in_underlay(&t, &kubeconfig).unwrap();
        for n in 1..=2 {
            api.create_node(&t, n, &[(ZONE_LABEL, zone(n))]).unwrap();
        }
        let mut agents = Vec::new();
        for n in 1..=2 {
            let mut agent = Agent::start_kube(&t, n, &kubeconfig, &[]).expect("starting the agent");
            agent.wait_healthy(&t, Duration::from_secs(20)).unwrap();
            agents.push(agent);
        }
        Self {
            _servers: servers,
            agents,
            api,
            _dir: dir,
            t,
        }
    }

    /// `web`'s slices, one per family: be1 and be2, each hinted for its node's zone unless
    /// listed in `unhinted`.
    fn slices(&self, unhinted: &[&str]) -> Vec<String> {
        Family::BOTH
            .map(|f| {
                let mut eps = String::new();
                for pod in ["be1", "be2"] {
                    let node = self.t.pod(pod).node;
                    eps.push_str(&format!(
                        "  - addresses: [\"{}\"]\n    nodeName: {}\n    zone: {}\n",
                        self.t.pod_addr(pod, f),
                        node_name(node),
                        zone(node)
                    ));
                    if !unhinted.contains(&pod) {
                        eps.push_str(&format!(
                            "    hints:\n      forZones: [{{name: {}}}]\n",
                            zone(node)
                        ));
                    }
                }
                let (suffix, kind) = match f {
                    Family::V4 => ("1", "IPv4"),
                    Family::V6 => ("6", "IPv6"),
                };
                format!(
                    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-{suffix}\n  \
                     namespace: default\n  labels:\n    kubernetes.io/service-name: web\n\
                     addressType: {kind}\nports:\n  - port: 8080\n    protocol: TCP\nendpoints:\n{eps}"
                )
            })
            .to_vec()
    }

    fn apply_slices(&self, unhinted: &[&str]) {
        for slice in self.slices(unhinted) {
            self.api.apply_yaml(&slice).unwrap();
        }
    }

    /// Waits until agent `n` serves both ClusterIPs' port 80 with `backends` backends each
    /// (`inspect services`, which reads the programmed maps).
    fn expect(&mut self, n: usize, backends: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let views = self.agents[n - 1]
                .cli_json(&["inspect", "services"])
                .unwrap();
            let counts = [VIP4, VIP6].map(|vip| {
                views.as_array().and_then(|v| {
                    v.iter()
                        .find(|v| v["address"] == vip && v["port"] == 80)
                        .and_then(|v| v["backends"].as_array().map(Vec::len))
                })
            });
            if counts == [Some(backends); 2] {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent on node {n}: [{VIP4}, {VIP6}] port 80 must have {backends} backend(s) each, \
                 have {counts:?}:\n{views:#}\nlog:\n{}",
                self.agents[n - 1].log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Which backends `client` reaches over [`CONNS`] connections to the ClusterIP of `f` (all
    /// of which must succeed).
    fn reached(&self, client: &str, f: Family) -> Vec<String> {
        let vip = match f {
            Family::V4 => VIP4,
            Family::V6 => VIP6,
        };
        let target = host_port(vip.parse().unwrap(), 80);
        let r = Summary::tcp_from(&self.t, self.t.pod_ns(client), &target, CONNS).unwrap();
        assert_eq!(
            (r.ok, r.failed),
            (u64::from(CONNS), 0),
            "{f} {client}: {r:?}"
        );
        assert_eq!(r.reply_from, vec![target], "{f} {client}: {r:?}");
        r.by_backend.into_keys().collect()
    }

    /// Asserts what each client reaches, in both families.
    fn assert_reached(&self, want: [(&str, &[&str]); 2]) {
        for f in Family::BOTH {
            for (client, backends) in want {
                assert_eq!(self.reached(client, f), backends, "{f}: {client}");
            }
        }
    }
}

fn zone(n: usize) -> &'static str {
    ["zone-a", "zone-b"][n - 1]
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn prefer_close_keeps_each_zone_on_its_own_backends() {
    require_root();
    let mut s = Scene::start();
    s.api
        .apply_yaml(&format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n{}  \
             trafficDistribution: PreferClose\n  ports:\n    \
             - {{port: 80, targetPort: 8080, protocol: TCP}}\n",
            dual_stack_cluster_ips(VIP4, VIP6)
        ))
        .unwrap();
    s.apply_slices(&[]);
    s.expect(1, 1);
    s.expect(2, 1);
    s.assert_reached([("client1", &["be1"]), ("client2", &["be2"])]);

    // One endpoint without hints (the controller's hints half-written, or a slice written by
    // hand): kube-proxy ignores the zone hints altogether, and so do we.
    s.apply_slices(&["be2"]);
    s.expect(1, 2);
    s.expect(2, 2);
    s.assert_reached([("client1", &["be1", "be2"]), ("client2", &["be1", "be2"])]);

    // Hints back; then node 2's Node loses its zone label: its agent ignores the hints (no
    // zone to match), node 1's keeps them.
    s.apply_slices(&[]);
    s.expect(1, 1);
    s.expect(2, 1);
    let mut node2: Node = s.api.get("", &node_name(2)).unwrap().expect("node2");
    node2
        .metadata
        .labels
        .get_or_insert_default()
        .remove(ZONE_LABEL);
    s.api.replace(&node2).unwrap();
    s.expect(2, 2);
    s.expect(1, 1);
    s.assert_reached([("client1", &["be1"]), ("client2", &["be1", "be2"])]);
}
