//! `cargo xtask demo`: the seed document's Services (ClusterIP allocated and chosen, without
//! selector, NodePort 30007, LoadBalancer with an ingress IP, external IP, ExternalName),
//! served by svc-lb in a two-node kind-like topology built from network namespaces, with
//! traffic from a pod and from an external client, a `bpftool` map dump, and cleanup.
//!
//! Everything runs inside namespaces this program creates; they, the agents' pins and the
//! attached programs are removed on exit, failure included (the `Topology` and `Agent` drops).
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::{ensure, Context, Result};
use svc_common::PROTO_TCP;
use svc_core::source::manifests;
use svc_testkit::{
    agent::{node_name, Agent, ManifestDir},
    probe::{probe_bin, Summary},
    topology::{is_root, Topology, TopologySpec},
};

/// The seed's manifests, adapted to the topology: pod labels become EndpointSlices (there is no
/// API server to make them), and the no-selector Service gets the hand-written Endpoints the
/// seed says you must create yourself.
fn manifests(t: &Topology) -> Vec<(&'static str, String)> {
    let app1 = t.pod_ip("test-app-1");
    let app2 = t.pod_ip("test-app-2");
    let legacy = t.pod_ip("legacy-db");
    let slice = |svc: &str| {
        format!(
            r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {svc}-abcde
  labels:
    kubernetes.io/service-name: {svc}
addressType: IPv4
ports:
  - port: 9000
    protocol: TCP
endpoints:
  - addresses: ["{app1}"]
    nodeName: {n1}
  - addresses: ["{app2}"]
    nodeName: {n2}
"#,
            n1 = node_name(1),
            n2 = node_name(2)
        )
    };
    // The MyApp pods' slices carry the targetPort each seed example names.
    // Slice ports carry the Service port's name; only the external-IP example names its port.
    let slice_on = |svc: &str, port: u16, name: &str| {
        format!(
            r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {svc}-abcde
  labels:
    kubernetes.io/service-name: {svc}
addressType: IPv4
ports:
  - port: {port}
    name: "{name}"
    protocol: TCP
endpoints:
  - addresses: ["{app1}"]
    nodeName: {n1}
  - addresses: ["{app2}"]
    nodeName: {n2}
"#,
            n1 = node_name(1),
            n2 = node_name(2)
        )
    };
    vec![
        (
            "test_app.yml",
            format!(
                r#"# The seed's first example: a selector Service; the ClusterIP is allocated.
apiVersion: v1
kind: Service
metadata:
  name: test-app
spec:
  selector:
    app: test-app-link
  ports:
    - protocol: TCP
      port: 9000
      targetPort: 9000
---
{}"#,
                slice("test-app")
            ),
        ),
        (
            "test_app_service_no_selector.yml",
            format!(
                r#"# No selector: the seed notes no Endpoints are created. We write them by hand,
# as the Kubernetes docs say, and svc-lb mirrors them into an EndpointSlice.
apiVersion: v1
kind: Service
metadata:
  name: test-app-no-selector
spec:
  ports:
    - protocol: TCP
      port: 30050
      targetPort: 30050
---
apiVersion: v1
kind: Endpoints
metadata:
  name: test-app-no-selector
subsets:
  - addresses:
      - ip: {legacy}
    ports:
      - port: 30050
"#
            ),
        ),
        (
            "test_cluster.ip.yml",
            format!(
                r#"# User-chosen clusterIP.
apiVersion: v1
kind: Service
metadata:
  name: test-cip-service
spec:
  type: ClusterIP
  clusterIP: 10.96.211.115
  selector:
    app: test-app-link
  ports:
    - protocol: TCP
      port: 9000
      targetPort: 9000
---
{}"#,
                slice("test-cip-service")
            ),
        ),
        (
            "test_nodeport.yml",
            format!(
                r#"# The seed's NodePort example: nodePort 30007 on every node address.
apiVersion: v1
kind: Service
metadata:
  name: test-service
spec:
  type: NodePort
  selector:
    app.kubernetes.io/name: MyApp
  ports:
    - port: 80
      targetPort: 80
      nodePort: 30007
---
{}"#,
                slice_on("test-service", 80, "")
            ),
        ),
        (
            "test_load_balancer.yml",
            format!(
                r#"# The seed's LoadBalancer example: the cloud's ingress IP is in status (here a
# documentation address, as a cloud controller would have written it).
apiVersion: v1
kind: Service
metadata:
  name: my-service
spec:
  selector:
    app.kubernetes.io/name: MyApp
  ports:
    - protocol: TCP
      port: 80
      targetPort: 9376
  clusterIP: 10.0.171.239
  type: LoadBalancer
status:
  loadBalancer:
    ingress:
    - ip: 192.0.2.127
---
{}"#,
                slice_on("my-service", 9376, "")
            ),
        ),
        (
            "test_external_ip.yml",
            format!(
                r#"# The seed's external-IP example, with 198.51.100.10 (documentation range) for the
# seed's 80.11.12.10.
apiVersion: v1
kind: Service
metadata:
  name: test-external-ip
spec:
  selector:
    app.kubernetes.io/name: MyApp
  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: 9376
  externalIPs:
    - 198.51.100.10
---
{}"#,
                slice_on("test-external-ip", 9376, "http")
            ),
        ),
        (
            "external_name.yml",
            r#"# ExternalName is DNS-only: svc-lb never programs it.
apiVersion: v1
kind: Service
metadata:
  name: my-service
  namespace: prod
spec:
  type: ExternalName
  externalName: my.database.example.com
"#
            .to_string(),
        ),
    ]
}

fn bpftool(args: &[&str]) -> Result<String> {
    let out = Command::new("bpftool")
        .args(args)
        .output()
        .context("running bpftool")?;
    ensure!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn main() -> Result<()> {
    ensure!(
        is_root(),
        "the demo creates network namespaces and loads BPF programs: run it as root"
    );
    let probe = probe_bin()?;
    let probe = probe.to_str().context("probe path")?;

    println!("== Building a two-node kind-like topology in network namespaces");
    let t = Topology::build(
        &TopologySpec::new()
            .node(&["client", "test-app-1"])
            .node(&["test-app-2", "legacy-db"])
            .external_client(true)
            // The documentation ranges (LB and external IPs) are routed via node 1, as a
            // router in front of the cluster would.
            .ext_gateway(1),
    )?;
    for node in 1..=2 {
        println!(
            "   {} (eth0 {}, pods 10.244.{node}.0/24)",
            node_name(node),
            t.node_ip(node)
        );
    }
    for pod in t.pods() {
        println!(
            "   pod {:<12} {:<12} on {}",
            pod.name,
            pod.ip,
            node_name(pod.node)
        );
    }
    let mut servers = Vec::new();
    for pod in ["test-app-1", "test-app-2", "legacy-db"] {
        let mut s = t.spawn(
            t.pod_ns(pod),
            &[probe, "serve", "--id", pod, "--tcp", "80,9000,9376,30050"],
        )?;
        s.wait_for_line(Duration::from_secs(5), |l| l == "ready")?;
        servers.push(s);
    }

    let dir = ManifestDir::new(&t)?;
    for (name, yaml) in manifests(&t) {
        dir.write(name, &yaml)?;
    }
    println!(
        "\n== kubectl apply -f {}  (every Service type in the seed document)",
        dir.path().display()
    );
    let objects = manifests::load_dir(dir.path())?;
    println!(
        "   {:<30} {:<13} {:<15} {:<14} {:<10}",
        "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"
    );
    let mut targets = BTreeMap::new();
    let mut external = Vec::new();
    for (r, svc) in &objects.services {
        let spec = svc.spec.clone().unwrap_or_default();
        let ip = spec.cluster_ip.clone().unwrap_or_else(|| "<none>".into());
        let ports = spec.ports.clone().unwrap_or_default();
        let shown: Vec<String> = ports
            .iter()
            .map(|p| match p.node_port {
                Some(np) => format!("{}:{np}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")),
                None => format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")),
            })
            .collect();
        let ty = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        let mut ext_ips: Vec<String> = spec.external_ips.clone().unwrap_or_default();
        if ty == "LoadBalancer" {
            let ingress = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref());
            ext_ips.extend(ingress.into_iter().flatten().filter_map(|i| i.ip.clone()));
        }
        let ext_col = if ext_ips.is_empty() {
            "<none>".to_string()
        } else {
            ext_ips.join(",")
        };
        println!(
            "   {:<30} {:<13} {:<15} {:<14} {:<10}",
            r.to_string(),
            ty,
            ip,
            ext_col,
            shown.join(",")
        );
        if ty == "ExternalName" {
            continue;
        }
        if let Some(p) = ports.first() {
            targets.insert(r.to_string(), format!("{ip}:{}", p.port));
            let specified = spec.external_ips.clone().unwrap_or_default();
            for e in &ext_ips {
                let kind = if specified.contains(e) {
                    "external IP"
                } else {
                    "LoadBalancer IP"
                };
                external.push((format!("{r} ({kind})"), format!("{e}:{}", p.port)));
            }
            if let Some(np) = p.node_port {
                for node in 1..=2 {
                    external.push((
                        format!("{r} (NodePort on {})", node_name(node)),
                        format!("{}:{np}", t.node_ip(node)),
                    ));
                }
            }
        }
    }

    println!("\n== Starting svc-agent on both nodes");
    let mut agents = Vec::new();
    for node in 1..=2 {
        agents.push(Agent::start(&t, node, dir.path(), &[])?);
    }
    // /healthz answers 200 once the first full sync has written the maps.
    for agent in &mut agents {
        agent.wait_healthy(&t, Duration::from_secs(20))?;
    }

    println!(
        "\n== Traffic from pod 'client' on {} (100 TCP connections each)",
        node_name(1)
    );
    for (svc, target) in &targets {
        let out = t.exec_ok(
            t.pod_ns("client"),
            &[
                probe,
                "tcp",
                "--target",
                target,
                "--count",
                "100",
                "--timeout-ms",
                "2000",
                "--parallel",
                "4",
            ],
        )?;
        let s = Summary::from_output(&out)?;
        println!(
            "   {svc:<30} {target:<20} ok {:>3} failed {:>3}  replies from {:?}  backends {:?}",
            s.ok, s.failed, s.reply_from, s.by_backend
        );
        ensure!(
            s.failed == 0,
            "{svc}: {} connections failed: {:?}",
            s.failed,
            s.errors
        );
    }

    let ext = t.ext_ns().context("the external client")?.to_owned();
    println!("\n== Traffic from the external client 172.18.0.100 (100 TCP connections each)");
    for (what, target) in &external {
        let out = t.exec_ok(
            &ext,
            &[
                probe,
                "tcp",
                "--target",
                target,
                "--count",
                "100",
                "--timeout-ms",
                "2000",
                "--parallel",
                "4",
            ],
        )?;
        let s = Summary::from_output(&out)?;
        println!(
            "   {what:<44} {target:<20} ok {:>3} failed {:>3}  replies from {:?}  backends {:?}",
            s.ok, s.failed, s.reply_from, s.by_backend
        );
        ensure!(
            s.failed == 0,
            "{what}: {} connections failed: {:?}",
            s.failed,
            s.errors
        );
    }

    let pin = agents[0].bpffs().to_path_buf();
    println!(
        "\n== bpftool map dump pinned {}/SVC_FRONTENDS",
        pin.display()
    );
    print!(
        "{}",
        bpftool(&[
            "map",
            "dump",
            "pinned",
            pin.join("SVC_FRONTENDS").to_str().unwrap()
        ])?
    );
    println!(
        "\n== bpftool map dump pinned {}/SVC_BACKENDS",
        pin.display()
    );
    print!(
        "{}",
        bpftool(&[
            "map",
            "dump",
            "pinned",
            pin.join("SVC_BACKENDS").to_str().unwrap()
        ])?
    );
    let tcp_frontends = agents[0]
        .frontends()?
        .keys()
        .filter(|k| k.proto == PROTO_TCP)
        .count();
    println!(
        "\n   {tcp_frontends} TCP frontends programmed on {}",
        node_name(1)
    );

    println!("\n== Cleaning up: agents stopped, pins removed, namespaces deleted");
    for mut agent in agents {
        agent.stop()?;
    }
    drop(servers);
    drop(t);
    println!("   done");
    Ok(())
}
