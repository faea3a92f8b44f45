//! `svc-agent inspect` and `svc-agent explain` against real pinned maps (needs root).
//!
//! Node 1 runs pods `client` and `be1`, node 2 runs `be2`. Three Services: `web` (ClusterIP
//! 10.96.0.10, endpoints be1 and be2 on both nodes), `local` (NodePort 30100 with
//! externalTrafficPolicy: Local, its only endpoint be2 on node 2) and `empty` (ClusterIP
//! 10.96.0.20, no endpoints). The commands run as subprocesses of the built binary, outside
//! every namespace: they only read pins. Each claim is checked three ways where it can be:
//! against the manifests, against `bpftool -j map dump`, and against the traffic sent.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
    process::Command,
    time::Duration,
};

use serde_json::Value;
use svc_agent::inspect::{FlowView, ServiceView, StatView};
use svc_common::{PROTO_TCP, SCOPE_ANY, SCOPE_EXTERNAL};
use svc_testkit::{
    agent::{http_endpoint_slice, workspace_bin, Agent, ManifestDir},
    probe::Summary,
    topology::{require_root, NsChild, Topology, TopologySpec},
};

const PROBE: &str = env!("CARGO_BIN_EXE_svc-probe");
const WEB: [u8; 4] = [10, 96, 0, 10];
const EMPTY: [u8; 4] = [10, 96, 0, 20];
const LOCAL_CLUSTER_IP: [u8; 4] = [10, 96, 0, 30];
const NODEPORT: u16 = 30100;

/// Runs `svc-agent ARGS` and returns its stdout; fails with its stderr.
fn agent_cli(args: &[&str]) -> String {
    let bin = workspace_bin("svc-agent").unwrap();
    let out = Command::new(&bin).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "svc-agent {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str], bpffs: &Path) -> Value {
    let mut all = args.to_vec();
    all.extend(["--bpffs", bpffs.to_str().unwrap(), "-o", "json"]);
    serde_json::from_str(&agent_cli(&all)).unwrap()
}

/// `bpftool -j map dump pinned DIR/MAP` as (key, value) pairs of BTF-formatted JSON.
fn bpftool_dump(bpffs: &Path, map: &str) -> Vec<(Value, Value)> {
    let path = bpffs.join(map);
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&path)
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool map dump {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    entries
        .into_iter()
        .map(|e| {
            // With BTF, `-j` gives raw bytes plus a `formatted` object with field names.
            let f = e.get("formatted").cloned().unwrap_or(e);
            (f["key"].clone(), f["value"].clone())
        })
        .collect()
}

fn addr(v: &Value) -> Ipv4Addr {
    let o: Vec<u8> = serde_json::from_value(v.clone()).unwrap();
    Ipv4Addr::new(o[0], o[1], o[2], o[3])
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// One frontend as both sources can state it: key, id, count, flags and the backends of its
/// slots in slot order as (address, port, flags).
type Frontend = (
    Ipv4Addr,
    u16,
    String,
    String,
    u64,
    u64,
    u64,
    Vec<(Ipv4Addr, u16, u64)>,
);

fn from_bpftool(bpffs: &Path) -> BTreeSet<Frontend> {
    let backends: BTreeMap<u64, (Ipv4Addr, u16, u64)> = bpftool_dump(bpffs, "SVC_BACKENDS")
        .into_iter()
        .map(|(k, v)| {
            (
                num(&k),
                (addr(&v["addr"]), num(&v["port"]) as u16, num(&v["flags"])),
            )
        })
        .collect();
    let slots: BTreeMap<(u64, u64), u64> = bpftool_dump(bpffs, "SVC_SLOTS")
        .into_iter()
        .map(|(k, v)| {
            (
                (num(&k["frontend_id"]), num(&k["slot"])),
                num(&v["backend_id"]),
            )
        })
        .collect();
    bpftool_dump(bpffs, "SVC_FRONTENDS")
        .into_iter()
        .map(|(k, v)| {
            let id = num(&v["id"]);
            let count = num(&v["backend_count"]);
            let proto = match num(&k["proto"]) as u8 {
                PROTO_TCP => "tcp".to_string(),
                p => p.to_string(),
            };
            let scope = match num(&k["scope"]) as u8 {
                SCOPE_ANY => "any".to_string(),
                SCOPE_EXTERNAL => "external".to_string(),
                s => s.to_string(),
            };
            let bes = (1..=count)
                .map(|slot| backends[&slots[&(id, slot)]])
                .collect();
            (
                addr(&k["addr"]),
                num(&k["port"]) as u16,
                proto,
                scope,
                id,
                count,
                num(&v["flags"]),
                bes,
            )
        })
        .collect()
}

fn from_inspect(services: &[ServiceView]) -> BTreeSet<Frontend> {
    services
        .iter()
        .map(|s| {
            assert!(s.problems.is_empty(), "{s:?}");
            let bes = s
                .backends
                .iter()
                .map(|b| (b.address, b.port, u64::from(b.flags_raw)))
                .collect();
            (
                s.address,
                s.port,
                s.protocol.clone(),
                s.scope.clone(),
                u64::from(s.id),
                u64::from(s.backend_count),
                u64::from(s.flags_raw),
                bes,
            )
        })
        .collect()
}

struct Scene {
    agents: Vec<Agent>,
    _servers: Vec<NsChild>,
    _manifests: ManifestDir,
    t: Topology,
}

impl Scene {
    fn start() -> Self {
        let t = Topology::build(&TopologySpec::new().node(&["client", "be1"]).node(&["be2"]))
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
        let ep = |p: &str| (t.pod_ip(p), t.pod(p).node);
        let m = ManifestDir::new(&t).unwrap();
        let port = "  ports:\n    - {name: http, port: 80, targetPort: 8080, protocol: TCP}\n";
        m.write(
            "web.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.10\n{port}---\n{}",
                http_endpoint_slice("web", &[ep("be1"), ep("be2")])
            ),
        )
        .unwrap();
        m.write(
            "local.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: local\nspec:\n  type: NodePort\n  \
                 clusterIP: 10.96.0.30\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n  ports:\n    \
                 - {{name: http, port: 80, targetPort: 8080, nodePort: {NODEPORT}, protocol: TCP}}\n---\n{}",
                http_endpoint_slice("local", &[ep("be2")])
            ),
        )
        .unwrap();
        m.write(
            "empty.yaml",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: empty\nspec:\n  clusterIP: 10.96.0.20\n{port}"
            ),
        )
        .unwrap();
        let mut agents = Vec::new();
        for n in 1..=2 {
            let mut a = Agent::start(&t, n, m.path(), &[]).unwrap();
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

    fn bpffs(&self, node: usize) -> &Path {
        self.agents[node - 1].bpffs()
    }
}

fn explain(bpffs: &Path, src: &str, dst: &str, from: &str) -> Value {
    json(&["explain", src, dst, "--from", from], bpffs)
}

fn candidate_addrs(e: &Value) -> BTreeSet<String> {
    e["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["address"].as_str().unwrap().to_string())
        .collect()
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn inspect_and_explain_agree_with_the_maps_the_manifests_and_the_traffic() {
    require_root();
    let s = Scene::start();
    let (be1, be2, client) = (s.t.pod_ip("be1"), s.t.pod_ip("be2"), s.t.pod_ip("client"));
    let node = |n: usize| s.t.node_ip(n);

    // (a) services: the CLI's JSON, bpftool's dump and the manifests say the same.
    for n in 1..=2 {
        let services: Vec<ServiceView> =
            serde_json::from_value(json(&["inspect", "services"], s.bpffs(n))).unwrap();
        assert_eq!(
            from_inspect(&services),
            from_bpftool(s.bpffs(n)),
            "node {n}: inspect services and bpftool disagree"
        );
        let by_key: BTreeMap<(Ipv4Addr, u16, &str), &ServiceView> = services
            .iter()
            .map(|v| ((v.address, v.port, v.scope.as_str()), v))
            .collect();
        let want_keys: BTreeSet<_> = [
            (WEB.into(), 80, "any"),
            (EMPTY.into(), 80, "any"),
            (LOCAL_CLUSTER_IP.into(), 80, "any"),
            (node(n), NODEPORT, "any"),
            (node(n), NODEPORT, "external"),
        ]
        .into();
        assert_eq!(
            by_key.keys().copied().collect::<BTreeSet<_>>(),
            want_keys,
            "node {n}: frontends"
        );
        let backends = |key: (Ipv4Addr, u16, &str)| -> Vec<(Ipv4Addr, u16, Vec<String>)> {
            by_key[&key]
                .backends
                .iter()
                .map(|b| (b.address, b.port, b.flags.clone()))
                .collect()
        };
        let local = |n_of: usize| -> Vec<String> {
            if n_of == n {
                vec!["local".into()]
            } else {
                vec![]
            }
        };
        let mut web = backends((WEB.into(), 80, "any"));
        web.sort();
        let mut want_web = vec![(be1, 8080, local(1)), (be2, 8080, local(2))];
        want_web.sort();
        assert_eq!(web, want_web, "node {n}: web's backends");
        assert!(backends((EMPTY.into(), 80, "any")).is_empty());
        assert_eq!(by_key[&(EMPTY.into(), 80, "any")].backend_count, 0);
        // externalTrafficPolicy: Local: the any entry keeps every endpoint and points at the
        // external one, which holds this node's endpoints only.
        let np_any = by_key[&(node(n), NODEPORT, "any")];
        assert_eq!(np_any.flags, ["nodeport", "external-scope"], "node {n}");
        assert_eq!(
            backends((node(n), NODEPORT, "any")),
            [(be2, 8080, local(2))]
        );
        let np_ext = by_key[&(node(n), NODEPORT, "external")];
        // Drop (not reject) only where this node has no endpoint while others have.
        let want_flags: &[&str] = if n == 1 {
            &["nodeport", "drop-no-backend"]
        } else {
            &["nodeport"]
        };
        assert_eq!(np_ext.flags, want_flags, "node {n}");
        let want_ext: Vec<_> = if n == 2 {
            vec![(be2, 8080, local(2))]
        } else {
            vec![]
        };
        assert_eq!(
            backends((node(n), NODEPORT, "external")),
            want_ext,
            "node {n}"
        );
    }
    let table = agent_cli(&[
        "inspect",
        "services",
        "--bpffs",
        s.bpffs(1).to_str().unwrap(),
    ]);
    assert!(table.starts_with("ID  FRONTEND"), "{table}");
    assert!(table.contains(&format!("{be1}:8080/tcp")), "{table}");

    // (b) explain.
    let src = client.to_string();
    let e = explain(s.bpffs(1), &src, "10.96.0.10:80/tcp", "pod");
    assert_eq!(e["new_flow"]["action"], "balance", "{e:#}");
    assert_eq!(e["new_flow"]["slots"], 2, "{e:#}");
    assert_eq!(
        candidate_addrs(&e),
        [be1.to_string(), be2.to_string()].into(),
        "{e:#}"
    );
    for c in e["candidates"].as_array().unwrap() {
        assert_eq!(c["outcome"]["action"], "translate", "{e:#}");
        assert_eq!(
            c["outcome"]["new_src"],
            src.as_str(),
            "no SNAT from a pod: {e:#}"
        );
    }
    let e = explain(s.bpffs(1), &src, "10.96.0.99:80/tcp", "pod");
    assert_eq!(e["new_flow"]["action"], "pass", "{e:#}");
    assert_eq!(e["new_flow"]["counter"], "not_service", "{e:#}");
    assert_eq!(e["frontend"], Value::Null);
    let e = explain(s.bpffs(1), &src, "10.96.0.20:80/tcp", "pod");
    assert_eq!(e["new_flow"]["action"], "reject", "{e:#}");
    assert_eq!(e["new_flow"]["reply"], "tcp_rst", "{e:#}");
    let ext = "172.18.0.100";
    let e = explain(
        s.bpffs(1),
        ext,
        &format!("{}:{NODEPORT}/tcp", node(1)),
        "uplink",
    );
    assert_eq!(e["new_flow"]["action"], "drop", "{e:#}");
    assert_eq!(e["new_flow"]["counter"], "policy_drop", "{e:#}");
    assert_eq!(e["scope_used"], "external", "{e:#}");
    let e = explain(
        s.bpffs(2),
        ext,
        &format!("{}:{NODEPORT}/tcp", node(2)),
        "uplink",
    );
    assert_eq!(e["new_flow"]["action"], "balance", "{e:#}");
    assert_eq!(candidate_addrs(&e), [be2.to_string()].into(), "{e:#}");
    let c = &e["candidates"][0];
    assert_eq!(c["backend_flags"], serde_json::json!(["local"]), "{e:#}");
    assert_eq!(
        c["outcome"]["new_src"], ext,
        "eTP Local keeps the client: {e:#}"
    );
    assert_eq!(
        c["outcome"]["flags"],
        serde_json::json!(["external"]),
        "{e:#}"
    );
    // From a pod, the same NodePort uses the cluster-wide set (be2, remote on node 1).
    let e = explain(
        s.bpffs(1),
        &src,
        &format!("{}:{NODEPORT}/tcp", node(1)),
        "pod",
    );
    assert_eq!(e["new_flow"]["action"], "balance", "{e:#}");
    assert_eq!(candidate_addrs(&e), [be2.to_string()].into(), "{e:#}");

    // (c) traffic, then conntrack and stats.
    let out =
        s.t.exec_ok(
            s.t.pod_ns("client"),
            &[
                PROBE,
                "tcp",
                "--target",
                "10.96.0.10:80",
                "--count",
                "20",
                "--timeout-ms",
                "2000",
            ],
        )
        .unwrap();
    let summary = Summary::from_output(&out).unwrap();
    assert_eq!((summary.ok, summary.failed), (20, 0), "{summary:?}");

    let flows: Vec<FlowView> = serde_json::from_value(json(
        &[
            "inspect",
            "conntrack",
            "--src",
            &src,
            "--dst",
            "10.96.0.10",
            "--dir",
            "forward",
        ],
        s.bpffs(1),
    ))
    .unwrap();
    assert_eq!(
        flows.len(),
        20,
        "one forward entry per connection: {flows:#?}"
    );
    let fe_id = services_id(s.bpffs(1), WEB.into());
    for f in &flows {
        assert_eq!(
            (f.protocol.as_str(), f.dst_port, f.frontend_id),
            ("tcp", 80, fe_id)
        );
        assert!(
            [be1, be2].contains(&f.new_dst) && f.new_dst_port == 8080,
            "{f:?}"
        );
        assert_eq!((f.new_src, f.new_src_port), (client, f.src_port), "{f:?}");
        assert!(
            f.packets >= 3 && f.tcp_flags.contains(&"SYN".to_string()),
            "{f:?}"
        );
        assert!(
            f.last_seen_ns >= f.created_ns && f.age_ms < 120_000,
            "{f:?}"
        );
    }
    let backends_used: BTreeSet<Ipv4Addr> = flows.iter().map(|f| f.new_dst).collect();
    let by_backend: BTreeSet<Ipv4Addr> = summary.by_backend.keys().map(|b| s.t.pod_ip(b)).collect();
    assert_eq!(backends_used, by_backend, "conntrack and the servers agree");
    let replies: Vec<FlowView> = serde_json::from_value(json(
        &[
            "inspect",
            "conntrack",
            "--dst",
            &src,
            "--dir",
            "reply",
            "--proto",
            "tcp",
        ],
        s.bpffs(1),
    ))
    .unwrap();
    assert_eq!(replies.len(), 20, "{replies:#?}");
    assert!(replies
        .iter()
        .all(|r| r.new_src == Ipv4Addr::from(WEB) && r.new_src_port == 80));

    // explain with the client's port finds the flow pinned to the backend conntrack holds.
    let f = &flows[0];
    let e = explain(
        s.bpffs(1),
        &format!("{src}:{}", f.src_port),
        "10.96.0.10:80/tcp",
        "pod",
    );
    assert_eq!(e["conntrack"]["dir"], "forward", "{e:#}");
    assert_eq!(e["conntrack"]["backend_id"], f.backend_id, "{e:#}");
    assert_eq!(
        e["conntrack"]["outcome"]["new_dst"],
        f.new_dst.to_string(),
        "{e:#}"
    );
    let e = explain(s.bpffs(1), &src, "10.96.0.10:80/tcp", "pod");
    assert_eq!(e["tracked_flows_from_src"], 20, "{e:#}");

    let stats: Vec<StatView> =
        serde_json::from_value(json(&["inspect", "stats"], s.bpffs(1))).unwrap();
    let dnat_new = stats
        .iter()
        .find(|c| c.hook == "pod_ingress" && c.reason == "dnat_new")
        .map_or(0, |c| c.packets);
    assert_eq!(dnat_new, 20, "{stats:#?}");
    assert!(
        stats.iter().all(|c| c.packets > 0),
        "zeros are skipped without --all"
    );
    let all: Vec<StatView> = serde_json::from_value(json(
        &["inspect", "stats", "--all", "--per-cpu"],
        s.bpffs(1),
    ))
    .unwrap();
    assert_eq!(all.len(), svc_common::STATS_LEN as usize);
    assert!(all.iter().all(|c| c
        .per_cpu
        .as_ref()
        .is_some_and(|v| v.iter().sum::<u64>() == c.packets)));

    // A wrong --bpffs is a clear error naming the path and the flag.
    let bin = workspace_bin("svc-agent").unwrap();
    let out = Command::new(bin)
        .args([
            "inspect",
            "services",
            "--bpffs",
            "/sys/fs/bpf/svc-lb-no-such-dir",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("/sys/fs/bpf/svc-lb-no-such-dir/SVC_FRONTENDS") && err.contains("--bpffs"),
        "{err}"
    );

    for (args, n) in [
        (vec!["inspect", "services"], 1),
        (vec!["inspect", "conntrack", "--port", "80"], 1),
        (vec!["inspect", "stats"], 1),
        (vec!["explain", &src, "10.96.0.10:80/tcp"], 1),
        (
            vec!["explain", ext, "172.18.0.2:30100/tcp", "--from", "uplink"],
            1,
        ),
        (
            vec!["explain", ext, "172.18.0.3:30100/tcp", "--from", "uplink"],
            2,
        ),
        (vec!["explain", "10.244.1.2", "10.96.0.20:80/tcp"], 1),
    ] {
        let mut a = args.clone();
        a.extend(["--bpffs", s.bpffs(n).to_str().unwrap()]);
        eprintln!("$ svc-agent {}\n{}", args.join(" "), agent_cli(&a));
    }
}

fn services_id(bpffs: &Path, addr: Ipv4Addr) -> u32 {
    let services: Vec<ServiceView> =
        serde_json::from_value(json(&["inspect", "services"], bpffs)).unwrap();
    services
        .iter()
        .find(|v| v.address == addr && v.scope == "any")
        .map(|v| v.id)
        .unwrap()
}
