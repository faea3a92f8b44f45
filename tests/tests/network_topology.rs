//! Topology-aware routing end to end (needs root): agents follow the fake API server, whose
//! Node objects put node 1 in zone-a and node 2 in zone-b (`topology.kubernetes.io/zone`).
//!
//! Service `web` asks for `trafficDistribution: PreferClose`. The fake has no EndpointSlice
//! controller, so the test writes the slice the controller would: each endpoint hinted
//! `forZones` its own node's zone. Each node's pod then reaches only its zone's backend, as
//! kube-proxy routes by the hints (pkg/proxy/topology.go). A slice where one endpoint lacks its
//! hints turns topology off: every client reaches both backends again. Finally node 2 loses its
//! zone label, and its agent stops using hints while node 1's keeps them.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::core::v1::Node;
use svc_common::PROTO_TCP;
use svc_testkit::{
    agent::{fkey, node_name, Agent, ManifestDir},
    apiserver::ApiServer,
    probe::Summary,
    topology::{require_root, NsChild, Topology, TopologySpec},
};

const VIP: [u8; 4] = [10, 96, 0, 80];
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
                .node(&["client2", "be2"]),
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

    /// `web`'s slice: be1 and be2, each hinted for its node's zone unless listed in `unhinted`.
    fn slice(&self, unhinted: &[&str]) -> String {
        let mut eps = String::new();
        for pod in ["be1", "be2"] {
            let node = self.t.pod(pod).node;
            eps.push_str(&format!(
                "  - addresses: [\"{}\"]\n    nodeName: {}\n    zone: {}\n",
                self.t.pod_ip(pod),
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
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  \
             namespace: default\n  labels:\n    kubernetes.io/service-name: web\n\
             addressType: IPv4\nports:\n  - port: 8080\n    protocol: TCP\nendpoints:\n{eps}"
        )
    }

    /// Waits until agent `n`'s ClusterIP frontend holds `backends` backends.
    fn expect(&mut self, n: usize, backends: u32) {
        let want = BTreeMap::from([(fkey(VIP, 80, PROTO_TCP), backends)]);
        self.agents[n - 1]
            .wait_frontends(&want, Duration::from_secs(20))
            .unwrap();
    }

    /// Which backends `client` reaches over [`CONNS`] connections to the ClusterIP (all of
    /// which must succeed).
    fn reached(&self, client: &str) -> Vec<String> {
        let target = format!("{}:80", std::net::Ipv4Addr::from(VIP));
        let r = Summary::tcp_from(&self.t, self.t.pod_ns(client), &target, CONNS).unwrap();
        assert_eq!((r.ok, r.failed), (u64::from(CONNS), 0), "{client}: {r:?}");
        assert_eq!(r.reply_from, vec![target], "{client}: {r:?}");
        r.by_backend.into_keys().collect()
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
        .apply_yaml(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  \
             clusterIP: 10.96.0.80\n  trafficDistribution: PreferClose\n  ports:\n    \
             - {port: 80, targetPort: 8080, protocol: TCP}\n",
        )
        .unwrap();
    s.api.apply_yaml(&s.slice(&[])).unwrap();
    s.expect(1, 1);
    s.expect(2, 1);
    assert_eq!(s.reached("client1"), ["be1"]);
    assert_eq!(s.reached("client2"), ["be2"]);

    // One endpoint without hints (the controller's hints half-written, or a slice written by
    // hand): kube-proxy ignores the zone hints altogether, and so do we.
    s.api.apply_yaml(&s.slice(&["be2"])).unwrap();
    s.expect(1, 2);
    s.expect(2, 2);
    assert_eq!(s.reached("client1"), ["be1", "be2"]);
    assert_eq!(s.reached("client2"), ["be1", "be2"]);

    // Hints back; then node 2's Node loses its zone label: its agent ignores the hints (no
    // zone to match), node 1's keeps them.
    s.api.apply_yaml(&s.slice(&[])).unwrap();
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
    assert_eq!(s.reached("client1"), ["be1"]);
    assert_eq!(s.reached("client2"), ["be1", "be2"]);
}
