//! What the `network_traffic*` test binaries share: the scene (two nodes, client pods, backends,
//! the external client, two Services pinning one backend each; see `network_traffic`'s module
//! docs for the table) and the probes run in it: bulk transfers, sized UDP, connected UDP.
// Each binary uses a part of these.
#![allow(dead_code)]

use std::time::Duration;

use svc_testkit::{
    agent::{node_name, Agent, ManifestDir},
    topology::{host_port, Family, NsChild, Topology, TopologySpec},
    traffic::{BulkResult, ConnectedUdpResult, SizedUdpSummary},
};

pub(crate) const PROBE: &str = env!("CARGO_BIN_EXE_svc-probe");
/// 8 MB each way.
pub(crate) const BULK: u64 = 8 << 20;
/// Every 8 MB transfer must finish within this.
pub(crate) const BULK_DEADLINE: Duration = Duration::from_secs(20);

/// One Service of the scene.
pub(crate) struct Svc {
    pub(crate) name: &'static str,
    pub(crate) cluster_ip: &'static str,
    pub(crate) lb_ip: &'static str,
    pub(crate) external_ip: &'static str,
    pub(crate) np_bulk: u16,
    pub(crate) np_sized: u16,
    pub(crate) np_closed: u16,
    pub(crate) backend: &'static str,
    pub(crate) backend_node: usize,
    /// The IPv6 ClusterIP, LB IP and external IP of the dual-stack scene
    /// ([`Scene::start_dual_stack`]).
    pub(crate) cluster_ip6: &'static str,
    pub(crate) lb_ip6: &'static str,
    pub(crate) external_ip6: &'static str,
}

pub(crate) const ONE: Svc = Svc {
    name: "one",
    cluster_ip: "10.96.1.1",
    lb_ip: "192.0.2.11",
    external_ip: "198.51.100.11",
    np_bulk: 31001,
    np_sized: 31053,
    np_closed: 31054,
    backend: "be1",
    backend_node: 1,
    cluster_ip6: "fd00:10:96::1:1",
    lb_ip6: "2001:db8:2::11",
    external_ip6: "2001:db8:100::11",
};
pub(crate) const TWO: Svc = Svc {
    name: "two",
    cluster_ip: "10.96.1.2",
    lb_ip: "192.0.2.12",
    external_ip: "198.51.100.12",
    np_bulk: 31002,
    np_sized: 31153,
    np_closed: 31154,
    backend: "be2",
    backend_node: 2,
    cluster_ip6: "fd00:10:96::1:2",
    lb_ip6: "2001:db8:2::12",
    external_ip6: "2001:db8:100::12",
};
pub(crate) const SERVICES: [&Svc; 2] = [&ONE, &TWO];

impl Svc {
    /// The ClusterIP of `family` (the IPv6 one exists in the dual-stack scene only).
    pub(crate) fn cluster_ip_of(&self, family: Family) -> &'static str {
        match family {
            Family::V4 => self.cluster_ip,
            Family::V6 => self.cluster_ip6,
        }
    }

    /// The LB IP of `family`.
    pub(crate) fn lb_ip_of(&self, family: Family) -> &'static str {
        match family {
            Family::V4 => self.lb_ip,
            Family::V6 => self.lb_ip6,
        }
    }
}

/// `ip:port` (`[ip]:port` for IPv6) of an address constant.
pub(crate) fn at(ip: &str, port: u16) -> String {
    host_port(ip.parse().expect("an address constant"), port)
}

pub(crate) fn manifest(s: &Svc, t: &Topology) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: LoadBalancer\n  \
         clusterIP: {cip}\n  externalIPs: [\"{eip}\"]\n  ports:\n    \
         - {{name: bulk, port: 9000, targetPort: 9000, nodePort: {nb}, protocol: TCP}}\n    \
         - {{name: sized, port: 7053, targetPort: 7053, nodePort: {ns}, protocol: UDP}}\n    \
         - {{name: closed, port: 5454, targetPort: 5454, nodePort: {nc}, protocol: UDP}}\n\
         status:\n  loadBalancer:\n    ingress:\n    - ip: {lb}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  \
         labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n  \
         - {{name: bulk, port: 9000, protocol: TCP}}\n  - {{name: sized, port: 7053, protocol: UDP}}\n  \
         - {{name: closed, port: 5454, protocol: UDP}}\nendpoints:\n  \
         - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n    nodeName: {node}\n",
        name = s.name,
        cip = s.cluster_ip,
        eip = s.external_ip,
        lb = s.lb_ip,
        nb = s.np_bulk,
        ns = s.np_sized,
        nc = s.np_closed,
        ip = t.pod_ip(s.backend),
        node = node_name(s.backend_node),
    )
}

/// [`manifest`] made dual-stack: `RequireDualStack` with both ClusterIPs, an external IP and
/// an LB ingress IP of each family, and an IPv6 EndpointSlice beside the IPv4 one.
pub(crate) fn manifest_dual_stack(s: &Svc, t: &Topology) -> String {
    let v4 = manifest(s, t);
    let v4 = v4
        .replace(
            &format!("  clusterIP: {}\n", s.cluster_ip),
            &format!(
                "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  \
                 clusterIP: {}\n  clusterIPs: [\"{}\", \"{}\"]\n",
                s.cluster_ip, s.cluster_ip, s.cluster_ip6
            ),
        )
        .replace(
            &format!("externalIPs: [\"{}\"]", s.external_ip),
            &format!(
                "externalIPs: [\"{}\", \"{}\"]",
                s.external_ip, s.external_ip6
            ),
        )
        .replace(
            &format!("    - ip: {}\n", s.lb_ip),
            &format!("    - ip: {}\n    - ip: {}\n", s.lb_ip, s.lb_ip6),
        );
    for want in [s.cluster_ip6, s.external_ip6, s.lb_ip6] {
        assert!(
            v4.contains(want),
            "{want} missing from the dual-stack manifest:\n{v4}"
        );
    }
    format!(
        "{v4}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-6\n  \
         labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv6\nports:\n  \
         - {{name: bulk, port: 9000, protocol: TCP}}\n  - {{name: sized, port: 7053, protocol: UDP}}\n  \
         - {{name: closed, port: 5454, protocol: UDP}}\nendpoints:\n  \
         - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n    nodeName: {node}\n",
        name = s.name,
        ip = t.pod_ip6(s.backend),
        node = node_name(s.backend_node),
    )
}

pub(crate) struct Scene {
    pub(crate) agents: Vec<Agent>,
    pub(crate) _servers: Vec<NsChild>,
    pub(crate) manifests: ManifestDir,
    pub(crate) t: Topology,
}

impl Scene {
    /// Builds the topology, starts the servers and one agent per node with `agent_flags`.
    /// `before_agents` runs on the bare topology (e.g. to lower a route's MTU).
    pub(crate) fn start(agent_flags: &[&str], before_agents: impl FnOnce(&Topology)) -> Self {
        Self::start_with(agent_flags, before_agents, false, None)
    }

    /// [`Scene::start`] in the dual-stack topology with the dual-stack Services
    /// ([`manifest_dual_stack`]).
    pub(crate) fn start_dual_stack(agent_flags: &[&str]) -> Self {
        Self::start_with(agent_flags, |_| {}, true, None)
    }

    /// [`Scene::start_dual_stack`] with `before_agents` run on the bare topology, as
    /// [`Scene::start`]'s.
    pub(crate) fn start_dual_stack_with(
        agent_flags: &[&str],
        before_agents: impl FnOnce(&Topology),
    ) -> Self {
        Self::start_with(agent_flags, before_agents, true, None)
    }

    /// [`Scene::start_dual_stack`] with the pods' processes in their node's cgroup (`true`:
    /// their sockets take the agents' socket hooks) or out of it (`false`), whatever
    /// `SVC_TEST_POD_SOCKET_LB` says.
    pub(crate) fn start_dual_stack_pod_socket_lb(agent_flags: &[&str], pods: bool) -> Self {
        Self::start_with(agent_flags, |_| {}, true, Some(pods))
    }

    fn start_with(
        agent_flags: &[&str],
        before_agents: impl FnOnce(&Topology),
        dual: bool,
        pod_socket_lb: Option<bool>,
    ) -> Self {
        let mut spec = TopologySpec::new()
            .node(&["c1", "be1"])
            .node(&["c2", "be2"])
            .external_client(true)
            .ext_gateway(1)
            .dual_stack(dual);
        if let Some(pods) = pod_socket_lb {
            spec = spec.pod_socket_lb(pods);
        }
        let t = Topology::build(&spec).expect("building the topology");
        for pod in ["c1", "c2", "be1", "be2"] {
            let on = t.offloads_on(t.pod_ns(pod), "eth0").unwrap();
            for f in [
                "tcp-segmentation-offload",
                "generic-segmentation-offload",
                "tx-checksumming",
            ] {
                assert!(
                    on.iter().any(|o| o == f),
                    "pod {pod} must keep {f} on (kernel default): on = {on:?}"
                );
            }
        }
        before_agents(&t);
        let mut servers = Vec::new();
        for be in ["be1", "be2"] {
            let mut s = t
                .spawn(
                    t.pod_ns(be),
                    &[
                        PROBE,
                        "serve",
                        "--id",
                        be,
                        "--bulk",
                        "9000",
                        "--sized-udp",
                        "7053",
                    ],
                )
                .unwrap();
            s.wait_for_line(Duration::from_secs(5), |l| l == "ready")
                .unwrap_or_else(|e| panic!("server in {be}: {e:#}"));
            servers.push(s);
        }
        let m = ManifestDir::new(&t).unwrap();
        for s in SERVICES {
            let text = if dual {
                manifest_dual_stack(s, &t)
            } else {
                manifest(s, &t)
            };
            m.write(&format!("{}.yaml", s.name), &text).unwrap();
        }
        let mut agents = Vec::new();
        for n in 1..=2 {
            let mut a = Agent::start(&t, n, m.path(), agent_flags).unwrap();
            a.wait_healthy(&t, Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("agent on node {n}: {e:#}"));
            agents.push(a);
        }
        Self {
            agents,
            _servers: servers,
            manifests: m,
            t,
        }
    }

    pub(crate) fn probe(&self, ns: &str, args: &[&str]) -> String {
        let mut cmd = vec![PROBE];
        cmd.extend_from_slice(args);
        self.t
            .exec_ok(ns, &cmd)
            .unwrap_or_else(|e| panic!("svc-probe {args:?}: {e:#}"))
    }

    pub(crate) fn ns_of(&self, client: &str) -> String {
        match client {
            "ext" => self.t.ext_ns().unwrap().to_owned(),
            pod => self.t.pod_ns(pod).to_owned(),
        }
    }

    pub(crate) fn bulk(&self, client: &str, target: &str, dir: &str) -> BulkResult {
        let out = self.probe(
            &self.ns_of(client),
            &[
                "bulk",
                "--target",
                target,
                "--dir",
                dir,
                "--bytes",
                &BULK.to_string(),
                "--stall-ms",
                "5000",
                "--deadline-ms",
                &BULK_DEADLINE.as_millis().to_string(),
            ],
        );
        serde_json::from_str(last_line(&out)).unwrap()
    }

    pub(crate) fn sized(
        &self,
        client: &str,
        target: &str,
        count: u32,
        request: usize,
        reply: usize,
    ) -> SizedUdpSummary {
        let out = self.probe(
            &self.ns_of(client),
            &[
                "sized-udp",
                "--target",
                target,
                "--count",
                &count.to_string(),
                "--request-len",
                &request.to_string(),
                "--reply-len",
                &reply.to_string(),
                "--timeout-ms",
                "500",
            ],
        );
        serde_json::from_str(last_line(&out)).unwrap()
    }

    pub(crate) fn connected_udp(&self, client: &str, target: &str) -> ConnectedUdpResult {
        self.connected_udp_hops(client, target, None)
    }

    /// [`Scene::connected_udp`] sending with a TTL / hop limit, reporting the ICMP error the
    /// socket got (`svc-probe udp-connected --hop-limit`).
    pub(crate) fn connected_udp_hops(
        &self,
        client: &str,
        target: &str,
        hop_limit: Option<u8>,
    ) -> ConnectedUdpResult {
        let hops = hop_limit.map(|h| h.to_string());
        let mut args = vec![
            "udp-connected",
            "--target",
            target,
            "--timeout-ms",
            "3000",
            "--resend-ms",
            "500",
        ];
        if let Some(h) = &hops {
            args.extend(["--hop-limit", h.as_str()]);
        }
        let out = self.probe(&self.ns_of(client), &args);
        serde_json::from_str(last_line(&out)).unwrap()
    }
}

/// What is wrong with an 8 MB transfer `dir` from `client` to `target` (`what`: the path in
/// words) that `backend` must serve, as one failure line; `None` when it is right. Also logs
/// the transfer (`tag`: the run).
pub(crate) fn bulk_failure(
    tag: &str,
    r: &BulkResult,
    (client, target, what, backend): (&str, &str, &str, &str),
    dir: &str,
) -> Option<String> {
    eprintln!(
        "[{tag}] {dir:8} {:>6} ms  {}  {client} -> {target}: {what}",
        r.elapsed_ms,
        if r.ok { "ok  " } else { "FAIL" },
    );
    let mut why = Vec::new();
    if !r.ok {
        why.push(r.error.clone().unwrap_or_else(|| "not ok".into()));
    }
    if r.ok && r.backend != backend {
        why.push(format!("served by {}, expected {backend}", r.backend));
    }
    if r.ok && r.reply_from != target {
        why.push(format!(
            "socket peer is {}, not the frontend (reverse NAT)",
            r.reply_from
        ));
    }
    (!why.is_empty()).then(|| {
        format!(
            "{dir} 8 MB {client} -> {target} [{what}]: {} (after {} ms, {} of {} bytes)",
            why.join("; "),
            r.elapsed_ms,
            r.bytes,
            r.expected_bytes
        )
    })
}

pub(crate) fn last_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}
