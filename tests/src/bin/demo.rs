//! `cargo xtask demo`: the seed document's Services, served by svc-lb in a two-node kind-like
//! topology built from network namespaces, with traffic, a `bpftool` map dump, and cleanup.
//!
//! Everything runs inside namespaces this program creates; they, the agents' pins and the
//! attached programs are removed on exit, failure included (the `Topology` and `Agent` drops).
use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::{ensure, Context, Result};
use svc_agent::source::manifests;
use svc_common::PROTO_TCP;
use tests::{
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
            .node(&["test-app-2", "legacy-db"]),
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
            &[probe, "serve", "--id", pod, "--tcp", "9000,30050"],
        )?;
        s.wait_for_line(Duration::from_secs(5), |l| l == "ready")?;
        servers.push(s);
    }

    let dir = ManifestDir::new(&t)?;
    for (name, yaml) in manifests(&t) {
        dir.write(name, &yaml)?;
    }
    println!(
        "\n== kubectl apply -f {}  (the seed's ClusterIP examples)",
        dir.path().display()
    );
    let objects = manifests::load_dir(dir.path())?;
    println!(
        "   {:<24} {:<14} {:<15} {:<10}",
        "NAME", "TYPE", "CLUSTER-IP", "PORT(S)"
    );
    let mut targets = BTreeMap::new();
    for (r, svc) in &objects.services {
        let spec = svc.spec.clone().unwrap_or_default();
        let ip = spec.cluster_ip.clone().unwrap_or_else(|| "<none>".into());
        let ports: Vec<String> = spec
            .ports
            .unwrap_or_default()
            .iter()
            .map(|p| format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")))
            .collect();
        let ty = spec.type_.unwrap_or_else(|| "ClusterIP".into());
        println!(
            "   {:<24} {:<14} {:<15} {:<10}",
            r.to_string(),
            ty,
            ip,
            ports.join(",")
        );
        if ty == "ClusterIP" {
            if let Some(port) = ports.first().and_then(|p| p.split('/').next()) {
                targets.insert(r.to_string(), format!("{ip}:{port}"));
            }
        }
    }

    println!("\n== Starting svc-agent on both nodes");
    let mut agents = Vec::new();
    for node in 1..=2 {
        agents.push(Agent::start(&t, node, dir.path(), &[])?);
    }
    // Three ClusterIP Services, one TCP port each; ExternalName programs nothing.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while agents[0].frontends().map(|f| f.len()).unwrap_or(0) < 3 {
        ensure!(
            std::time::Instant::now() < deadline,
            "agent did not program:\n{}",
            agents[0].log()
        );
        std::thread::sleep(Duration::from_millis(50));
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
