//! The SNAT source of north-south flows to remote backends (needs root).
//!
//! Node 1's Node object lists an `ExternalIP` that is on none of its interfaces — as on every
//! cloud, where the provider's NAT holds it — and that sorts before its `InternalIP`. The agents
//! run as kubeadm's kube-proxy does, without `--node-ip`. An agent that source-NATs to the
//! smallest address sends every NodePort connection to a remote backend from an address the
//! reply never comes back to (45 of 60 failed). The source must be an address the node owns on
//! its uplink (svc-agent/src/snat.rs).
//!
//! The topology is dual-stack and so is the Service: node 1's Node object also lists an IPv6
//! `ExternalIP` on none of its interfaces (2001:db8:ffff::1, sorting before its fd00:18::
//! InternalIP), and NodePort connections over IPv6 must be source-NATed to node 1's own IPv6
//! underlay address, chosen without `--node-ip` too.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::time::Duration;

use svc_common::{CT_DIR_REPLY, CT_F_SNAT, PROTO_TCP};
use svc_testkit::{
    agent::{fkey, node_name, Agent, ManifestDir},
    apiserver::ApiServer,
    probe::Summary,
    topology::{require_root, NsChild, Topology, TopologySpec},
};

const PROBE: &str = env!("CARGO_BIN_EXE_svc-probe");
const NODEPORT: u16 = 31090;
/// Not on any interface; sorts before the underlay's 172.18.0.0/16. It is never sent to: the
/// point is that nothing is.
const OFF_NODE_EXTERNAL_IP: &str = "10.250.0.1";
/// The same for IPv6: on no interface, sorts before fd00:18::/64.
const OFF_NODE_EXTERNAL_IP6: &str = "2001:db8:ffff::1";

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn off_interface_external_ip_is_never_the_snat_source() {
    require_root();
    let t = Topology::build(
        &TopologySpec::new()
            .node(&["client1"])
            .node(&["be2"])
            .external_client(true)
            .ext_gateway(1)
            .dual_stack(true),
    )
    .expect("building the topology");
    let mut server: NsChild = t
        .spawn(
            t.pod_ns("be2"),
            &[PROBE, "serve", "--id", "be2", "--tcp", "8080"],
        )
        .unwrap();
    server
        .wait_for_line(Duration::from_secs(5), |l| l == "ready")
        .unwrap();
    let dir = ManifestDir::new(&t).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let api = ApiServer::start_in_underlay(&t, &kubeconfig).unwrap();
    api.apply_yaml(&format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {}\nstatus:\n  addresses:\n    \
         - {{type: ExternalIP, address: {OFF_NODE_EXTERNAL_IP}}}\n    \
         - {{type: ExternalIP, address: \"{OFF_NODE_EXTERNAL_IP6}\"}}\n    \
         - {{type: InternalIP, address: {}}}\n    - {{type: InternalIP, address: \"{}\"}}\n    \
         - {{type: Hostname, address: {}}}\n",
        node_name(1),
        t.node_ip(1),
        t.node_ip6(1),
        node_name(1)
    ))
    .unwrap();
    api.create_node(&t, 2, &[]).unwrap();
    api.apply_yaml(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  \
         type: NodePort\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  \
         clusterIP: 10.96.0.90\n  clusterIPs: [10.96.0.90, \"fd00:10:96::90\"]\n  ports:\n    \
         - {{port: 80, targetPort: 8080, nodePort: {NODEPORT}, protocol: TCP}}\n"
    ))
    .unwrap();
    api.apply_yaml(&format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\n\
         ports:\n  - port: 8080\n    protocol: TCP\nendpoints:\n  - addresses: [\"{}\"]\n    \
         conditions: {{ready: true}}\n    nodeName: {}\n",
        t.pod_ip("be2"),
        node_name(2)
    ))
    .unwrap();
    api.apply_yaml(&format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-6\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv6\n\
         ports:\n  - port: 8080\n    protocol: TCP\nendpoints:\n  - addresses: [\"{}\"]\n    \
         conditions: {{ready: true}}\n    nodeName: {}\n",
        t.pod_ip6("be2"),
        node_name(2)
    ))
    .unwrap();
    let mut agents = Vec::new();
    for n in 1..=2 {
        let mut agent = Agent::start_kube(&t, n, &kubeconfig, &["--no-node-ip"]).unwrap();
        agent.wait_healthy(&t, Duration::from_secs(30)).unwrap();
        agents.push(agent);
    }
    // NodePorts are served on every node address, the unusable ExternalIP included (nothing
    // arrives there); only the SNAT source must be a local address.
    let ext_ip: std::net::Ipv4Addr = OFF_NODE_EXTERNAL_IP.parse().unwrap();
    agents[0]
        .wait_frontends(
            &std::collections::BTreeMap::from([
                (fkey([10, 96, 0, 90], 80, PROTO_TCP), 1),
                (fkey(t.node_ip(1).octets(), NODEPORT, PROTO_TCP), 1),
                (fkey(ext_ip.octets(), NODEPORT, PROTO_TCP), 1),
            ]),
            Duration::from_secs(20),
        )
        .unwrap();

    // 60 NodePort connections from outside through node 1 to the backend on node 2.
    let target = format!("{}:{NODEPORT}", t.node_ip(1));
    let r = Summary::tcp_from(&t, t.ext_ns().unwrap(), &target, 60).unwrap();
    let log = agents[0].log();
    assert_eq!(
        (r.ok, r.failed),
        (60, 0),
        "NodePort connections to the remote backend: {r:?}\nnode 1 agent log:\n{log}"
    );
    assert_eq!(r.by_backend.keys().collect::<Vec<_>>(), vec!["be2"]);
    // The agent said which address it chose and why the ExternalIP was not it.
    assert!(
        log.contains(&format!("SNAT source chosen addr={}", t.node_ip(1))),
        "node 1 agent log names its SNAT source:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(OFF_NODE_EXTERNAL_IP)
                && l.contains("not on any interface of this node")),
        "node 1 agent log says why {OFF_NODE_EXTERNAL_IP} is not the source:\n{log}"
    );
    // And the backend saw node 1's InternalIP: the SNAT reply entries name it.
    let snat: Vec<_> = svc_agent::inspect::read_conntrack(agents[0].bpffs())
        .unwrap()
        .into_iter()
        .filter(|(_, e)| e.dir == CT_DIR_REPLY && e.flags & CT_F_SNAT != 0)
        .collect();
    assert!(
        !snat.is_empty()
            && snat
                .iter()
                .all(|(k, _)| k.dst_addr == t.node_ip(1).octets()),
        "SNAT reply entries on node 1 name its InternalIP: {snat:?}"
    );

    // IPv6: the same through node 1's IPv6 NodePort; the source is node 1's own IPv6 underlay
    // address, never the off-node IPv6 ExternalIP.
    let target6 = format!("[{}]:{NODEPORT}", t.node_ip6(1));
    let r = Summary::tcp_from(&t, t.ext_ns().unwrap(), &target6, 60).unwrap();
    let log = agents[0].log();
    assert_eq!(
        (r.ok, r.failed),
        (60, 0),
        "IPv6 NodePort connections to the remote backend: {r:?}\nnode 1 agent log:\n{log}"
    );
    assert!(
        log.contains(&format!("IPv6 SNAT source chosen addr={}", t.node_ip6(1))),
        "node 1 agent log names its IPv6 SNAT source:\n{log}"
    );
    let snat6: Vec<_> = svc_agent::inspect::read_conntrack6(agents[0].bpffs())
        .unwrap()
        .into_iter()
        .filter(|(_, e)| e.dir == CT_DIR_REPLY && e.flags & CT_F_SNAT != 0)
        .collect();
    let node6 = svc_common::Addr6::from(t.node_ip6(1));
    assert!(
        !snat6.is_empty() && snat6.iter().all(|(k, _)| k.dst_addr == node6),
        "IPv6 SNAT reply entries on node 1 name its own IPv6 address: {snat6:?}"
    );
}
