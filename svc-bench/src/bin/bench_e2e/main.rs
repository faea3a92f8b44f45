//! End-to-end benchmark (DESIGN §5): svc-lb beside kube-proxy-style iptables and nftables rules
//! and beside no translation at all, in one run, in the DESIGN §3 topology.
//!
//! `cargo xtask bench` runs this as root after the other benchmarks; `cargo xtask bench --only
//! e2e` runs it alone. Figures are printed and written to `target/bench/` (`e2e.json`,
//! `report.json`, `report.md`, `*.svg`), never asserted — except correctness: a mode that does
//! not balance across both backends fails the run, because its timings would measure
//! something else.
//!
//! # What is measured
//! Topology: node 1 runs the client pod and backend `be1`, node 2 runs backend `be2`. The
//! target Service `default/web` is ClusterIP 10.96.0.10, TCP 80 → 8080 and UDP 53 → 5353, with
//! `be1` and `be2` as endpoints. With N Services programmed, the other N−1 have the same two
//! ports and two endpoints at unused addresses (10.244.64.0 onwards); the target is written
//! last (the worst case for iptables' sequential KUBE-SERVICES chain).
//!
//! Modes, each in a topology built for it and deleted afterwards (so nothing of one mode — rules,
//! programs, pins, conntrack entries, TIME_WAIT sockets — survives into the next; the run also
//! checks that each node's nftables ruleset and XDP attachment are what the mode expects):
//! - `floor`: the client connects straight to `be1`/`be2` pod addresses, alternately; no agent,
//!   no rules (so no conntrack in the nodes either).
//! - `iptables`: kube-proxy's iptables-mode rules ([`svc_bench::kubeproxy::iptables_restore`]),
//!   loaded with `iptables-restore` in both node namespaces.
//! - `nftables`: kube-proxy's nftables-mode table ([`svc_bench::kubeproxy::nft_full`]) via `nft -f`.
//! - `svc-lb`: one `svc-agent --manifests` per node (release build via `SVC_AGENT_BIN`); the
//!   client pod's processes are outside the agents' cgroup, so pods are translated per packet.
//! - `svc-lb-sock`: the same with the client pod's processes in node 1's agent cgroup:
//!   socket-level load balancing (`--pod-socket-lb`).
//! - `svc-lb-direct`: the floor's traffic (pod IPs) with svc-lb loaded as in `svc-lb`: the
//!   cost of svc-lb to traffic that is not for a Service.
//!
//! Each svc-lb mode proves its path by the agent's counters after the correctness check
//! (socket-translated calls, per-packet new flows, or neither).
//!
//! Traffic (the release `svc-probe` in the client pod; see [`svc_testkit::probe`]): short TCP
//! connections (connect, one line each way, close) with `--parallel` threads, giving
//! connections/s and per-connection latency percentiles (connect → reply); and UDP
//! request/reply exchanges (a new socket each, i.e. a new flow each, like DNS clients) with
//! `--parallel` threads, giving exchanges/s and loss (no reply within 200 ms). Each is repeated
//! `--repeats` times after one warm-up run; the report gives median and min–max, and ratios to
//! the floor of the same size.
//!
//! # Control plane of the baselines
//! In a one-node topology: `iptables-restore` and `nft -f` programming 1k and 10k Services × 10
//! endpoints from an empty ruleset, then one endpoint change at that size (alternately adding
//! an 11th endpoint to one Service and removing it): for iptables both a full restore (what
//! kube-proxy's periodic full sync, and every sync before 1.28, writes) and the partial
//! `--noflush` restore of kube-proxy ≥ 1.28; for nftables the incremental transaction. Only the
//! command is timed, started from a thread inside the namespace (no `ip netns exec` remount);
//! generating the text is not (kube-proxy's own Go code would). svc-lb's own figures come from
//! `target/bench/control.json` (bench_control) when it exists.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use svc_bench::kubeproxy::{self, Port, Proto, Service};
use svc_testkit::{
    agent::{node_name, workspace_bin, Agent, ManifestDir},
    probe::{probe_bin, Summary},
    topology::{list_our_namespaces, Topology, TopologySpec, MAX_NODES, NS_PREFIX},
};

// What each module owns (see its first lines): measure.rs one mode at one size; control.rs the
// baselines' control plane; report.rs statistics, the printed runs and report.md; charts.rs the
// SVG charts.
mod charts;
mod control;
mod measure;
mod northsouth;
mod report;

use charts::*;
use control::*;
use measure::*;
use northsouth::*;
use report::*;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const TCP_PORT: u16 = 80;
const TCP_TARGET: u16 = 8080;
const UDP_PORT: u16 = 53;
const UDP_TARGET: u16 = 5353;
/// Connections/exchanges of the correctness check before any timing.
const CHECK_COUNT: u64 = 400;
/// Each backend must get at least this share of the correctness check (it expects 1/2).
const MIN_SHARE: f64 = 0.25;
/// How long the agents may take to program every frontend (10k Services: a few seconds).
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(120);
/// Services per manifest file for svc-lb: parsing is quadratic in file length (BENCHMARKS.md,
/// control plane), and 50 per file is the fastest layout measured there.
const PER_FILE: usize = 50;

#[derive(Parser)]
#[command(about = "svc-lb end to end beside kube-proxy's iptables and nftables modes")]
struct Args {
    /// Service counts to measure at.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 1_000, 10_000])]
    services: Vec<usize>,
    /// Modes to measure (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    modes: Vec<Mode>,
    /// Timed repetitions of each measurement (after one warm-up).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// TCP connections per repetition.
    #[arg(long, default_value_t = 8_000)]
    tcp_count: u64,
    /// UDP exchanges per repetition.
    #[arg(long, default_value_t = 20_000)]
    udp_count: u64,
    /// Client threads (TCP and UDP).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Service counts for the baselines' control-plane figures (10 endpoints each).
    /// The default leaves 10k out: `nft -f` of 10k Services takes minutes (see
    /// docs/BENCHMARKS.md), which would take `cargo xtask bench` past its time budget.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize])]
    control_services: Vec<usize>,
    /// Repetitions of each control-plane figure.
    #[arg(long, default_value_t = 3)]
    control_repeats: usize,
    /// Skip the baselines' control-plane figures.
    #[arg(long)]
    no_control: bool,
    /// Extra `svc-agent run` flags for the svc-lb modes (e.g. `--agent-arg=--xdp-mode=generic`),
    /// for A/B runs; the report records them.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// North-south modes (external client → NodePort / LB IP; default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    ns_modes: Vec<NsMode>,
    /// Skip the north-south rows.
    #[arg(long)]
    no_northsouth: bool,
    /// Only the north-south rows (no east-west modes).
    #[arg(long, conflicts_with = "no_northsouth")]
    only_northsouth: bool,
    /// MiB of each north-south bulk transfer.
    #[arg(long, default_value_t = 512)]
    ns_bulk_mib: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Mode {
    Floor,
    Iptables,
    Nftables,
    /// svc-lb, pods translated per packet (tc on their veths): the client pod's processes are
    /// outside the agent's cgroup.
    SvcLb,
    /// svc-lb with socket-level load balancing: the client pod's processes in the agent's
    /// cgroup (`--pod-socket-lb on`, the default).
    SvcLbSock,
    /// The floor's traffic (straight to pod IPs) with svc-lb loaded: what svc-lb costs traffic
    /// that is not for a Service.
    SvcLbDirect,
}

impl Mode {
    const ALL: [Mode; 6] = [
        Mode::Floor,
        Mode::Iptables,
        Mode::Nftables,
        Mode::SvcLb,
        Mode::SvcLbSock,
        Mode::SvcLbDirect,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Floor => "floor (pod IP)",
            Mode::Iptables => "kube-proxy iptables",
            Mode::Nftables => "kube-proxy nftables",
            Mode::SvcLb => "svc-lb (tc, per packet)",
            Mode::SvcLbSock => "svc-lb (socket-LB)",
            Mode::SvcLbDirect => "pod IP, svc-lb loaded",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Mode::Floor => "floor",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::SvcLb => "svc-lb",
            Mode::SvcLbSock => "svc-lb-sock",
            Mode::SvcLbDirect => "svc-lb-direct",
        }
    }

    /// svc-lb's agents run in this mode.
    fn svc_lb(self) -> bool {
        matches!(self, Mode::SvcLb | Mode::SvcLbSock | Mode::SvcLbDirect)
    }

    /// The client targets pod addresses, not the ClusterIP.
    fn direct(self) -> bool {
        matches!(self, Mode::Floor | Mode::SvcLbDirect)
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.modes.is_empty() {
        args.modes = Mode::ALL.to_vec();
    }
    ensure!(
        svc_testkit::topology::is_root(),
        "needs root (network namespaces, BPF, netfilter): run the benchmark as root"
    );
    let started = Instant::now();
    let agent = workspace_bin("svc-agent")?;
    let probe = probe_bin()?;
    let machine = machine();
    println!(
        "end-to-end benchmark: agent {}, probe {}\nmachine: {machine}",
        agent.display(),
        probe.display()
    );
    let out_dir = svc_testkit::fixtures::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;

    if args.ns_modes.is_empty() {
        args.ns_modes = NsMode::ALL.to_vec();
    }
    let mut runs = Vec::new();
    let sizes = if args.only_northsouth {
        Vec::new()
    } else {
        args.services.clone()
    };
    for &n in &sizes {
        for &mode in &args.modes {
            let load = loadavg();
            println!("== {n} Services, {} (load {load})", mode.name());
            let run = measure(mode, n, &args, &probe)
                .with_context(|| format!("{} with {n} Services", mode.name()))?;
            print_run(&run);
            runs.push(run);
            ensure_no_leftovers()?;
        }
    }
    let ns = if args.no_northsouth {
        (Vec::new(), Vec::new())
    } else {
        northsouth(&args.ns_modes, &args, &probe)?
    };
    // Written once without and once with the control-plane figures, so a run stopped during
    // the (slow, at 10k Services) baselines' control plane still leaves the end-to-end report.
    let md = write_reports(&out_dir, &runs, &ns, &[], &machine, &agent, &args, started)?;
    let control = if args.no_control || args.only_northsouth {
        Vec::new()
    } else {
        println!("== control plane of the baselines");
        control_baselines(&args.control_services, args.control_repeats)?
    };
    ensure_no_leftovers()?;
    let md = if control.is_empty() {
        md
    } else {
        write_reports(
            &out_dir, &runs, &ns, &control, &machine, &agent, &args, started,
        )?
    };
    println!("{md}");
    println!(
        "wrote {}/{{e2e.json,report.json,report.md,*.svg}} in {:.0} s",
        out_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes e2e.json, report.json, report.md and the charts; returns the Markdown.
#[allow(clippy::too_many_arguments)]
fn write_reports(
    out_dir: &Path,
    runs: &[Run],
    ns: &NsResults,
    control: &[ControlRow],
    machine: &str,
    agent: &Path,
    args: &Args,
    started: Instant,
) -> Result<String> {
    let svc_lb_control = std::fs::read_to_string(out_dir.join("control.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok());
    let perpacket = std::fs::read_to_string(out_dir.join("perpacket.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok());
    let doc = json!({
        "machine": machine,
        "agent": agent.display().to_string(),
        "args": {
            "repeats": args.repeats, "tcp_count": args.tcp_count, "udp_count": args.udp_count,
            "parallel": args.parallel, "agent_args": args.agent_args,
        },
        "e2e": runs.iter().map(Run::to_json).collect::<Vec<_>>(),
        "northsouth": ns.0.iter().map(NsRun::to_json).collect::<Vec<_>>(),
        "northsouth_failed": ns.1.iter().map(|(m, why)| json!({"mode": format!("{m:?}"), "error": why})).collect::<Vec<_>>(),
        "control_baselines": control.iter().map(ControlRow::to_json).collect::<Vec<_>>(),
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    write(
        &out_dir.join("e2e.json"),
        &serde_json::to_string_pretty(&doc)?,
    )?;
    let report = json!({"e2e": doc, "svc_lb_control": svc_lb_control, "perpacket": perpacket});
    write(
        &out_dir.join("report.json"),
        &serde_json::to_string_pretty(&report)?,
    )?;
    let mut md = report_md(runs, control, svc_lb_control.as_ref(), machine, args);
    md.push_str(&ns_report_md(&ns.0, &ns.1, args));
    write(&out_dir.join("report.md"), &md)?;
    for (name, svg) in charts(runs, control, svc_lb_control.as_ref()) {
        write(&out_dir.join(name), &svg)?;
    }
    Ok(md)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// The services
// ---------------------------------------------------------------------------------------------

fn ports() -> Vec<Port> {
    vec![
        Port {
            name: "http".into(),
            proto: Proto::Tcp,
            port: TCP_PORT,
            target_port: TCP_TARGET,
            node_port: None,
        },
        Port {
            name: "dns".into(),
            proto: Proto::Udp,
            port: UDP_PORT,
            target_port: UDP_TARGET,
            node_port: None,
        },
    ]
}

/// `n` Services, the target `default/web` last, the others at 10.96.1.1 onwards with two
/// endpoints each at unused pod addresses (10.244.64.0 onwards, beyond every node's CIDR).
fn e2e_services(n: usize, backends: [Ipv4Addr; 2]) -> Vec<Service> {
    let unused = |k: usize| {
        Ipv4Addr::from(
            u32::from(Ipv4Addr::new(10, 244, 64, 0)) + 2 + (k / 250 * 256 + k % 250) as u32,
        )
    };
    let mut v: Vec<Service> = (0..n - 1)
        .map(|i| Service {
            namespace: "default".into(),
            name: format!("svc-{i:05}"),
            cluster_ip: Ipv4Addr::new(10, 96, (1 + i / 250) as u8, (1 + i % 250) as u8),
            ports: ports(),
            endpoints: vec![unused(2 * i), unused(2 * i + 1)],
            lb_ips: Vec::new(),
        })
        .collect();
    v.push(Service {
        namespace: "default".into(),
        name: "web".into(),
        cluster_ip: VIP,
        ports: ports(),
        endpoints: backends.to_vec(),
        lb_ips: Vec::new(),
    });
    v
}

/// Service `s` and its EndpointSlice as manifests (JSON documents, which are YAML).
fn manifest(s: &Service) -> String {
    let mut svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": s.name, "namespace": s.namespace},
        "spec": {
            "clusterIP": s.cluster_ip.to_string(),
            "selector": {"app": s.name},
            "ports": s.ports.iter().map(|p| {
                let mut port = json!({
                    "name": p.name, "port": p.port, "targetPort": p.target_port,
                    "protocol": p.proto.lower().to_uppercase(),
                });
                if let Some(np) = p.node_port {
                    port["nodePort"] = json!(np);
                }
                port
            }).collect::<Vec<_>>(),
        },
    });
    if !s.lb_ips.is_empty() {
        svc["spec"]["type"] = json!("LoadBalancer");
        svc["status"] = json!({"loadBalancer": {"ingress":
            s.lb_ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>()}});
    } else if s.ports.iter().any(|p| p.node_port.is_some()) {
        svc["spec"]["type"] = json!("NodePort");
    }
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{}-1", s.name), "namespace": s.namespace,
            "labels": {"kubernetes.io/service-name": s.name},
        },
        "addressType": "IPv4",
        "ports": s.ports.iter().map(|p| json!({
            "name": p.name, "port": p.target_port, "protocol": p.proto.lower().to_uppercase(),
        })).collect::<Vec<_>>(),
        "endpoints": s.endpoints.iter().map(|ep| {
            let mut e = json!({"addresses": [ep.to_string()], "conditions": {"ready": true}});
            // Pods of the topology live on node N = third octet (10.244.N.k); the unused
            // addresses of the other Services are on no node.
            let n = usize::from(ep.octets()[2]);
            if (1..=MAX_NODES).contains(&n) {
                e["nodeName"] = json!(node_name(n));
            }
            e
        }).collect::<Vec<_>>(),
    });
    format!("---\n{svc}\n---\n{slice}\n")
}

// ---------------------------------------------------------------------------------------------
// Machine
// ---------------------------------------------------------------------------------------------

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// CPUs, memory, kernel, iptables/nft versions: what the figures depend on.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    format!(
        "{cpus} CPUs, {mem_gib:.0} GiB, Linux {}, {}, {}",
        kernel.trim(),
        version("iptables", "-V"),
        version("nft", "-v")
    )
}

/// Removes a file when dropped, failure included.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn target_service_is_written_last_and_addresses_are_unused() {
        let b = [Ipv4Addr::new(10, 244, 1, 3), Ipv4Addr::new(10, 244, 2, 2)];
        let v = e2e_services(10_000, b);
        assert_eq!(v.last().unwrap().cluster_ip, VIP);
        assert!(v[..v.len() - 1].iter().all(|s| s.cluster_ip != VIP
            && s.endpoints
                .iter()
                .all(|e| e.octets()[2] >= 64 && !b.contains(e))));
    }

    #[test]
    fn stats_take_the_median() {
        let s = stats([3.0, 1.0, 2.0].into_iter());
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    }
}
