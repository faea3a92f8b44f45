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
//! - `svc-lb`: one `svc-agent --manifests` per node (release build via `SVC_AGENT_BIN`).
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
    /// Modes to measure (default: all four).
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Mode {
    Floor,
    Iptables,
    Nftables,
    SvcLb,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Floor, Mode::Iptables, Mode::Nftables, Mode::SvcLb];

    fn name(self) -> &'static str {
        match self {
            Mode::Floor => "floor (pod IP)",
            Mode::Iptables => "kube-proxy iptables",
            Mode::Nftables => "kube-proxy nftables",
            Mode::SvcLb => "svc-lb",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Mode::Floor => "floor",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::SvcLb => "svc-lb",
        }
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

    let mut runs = Vec::new();
    for &n in &args.services {
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
    // Written once without and once with the control-plane figures, so a run stopped during
    // the (slow, at 10k Services) baselines' control plane still leaves the end-to-end report.
    let md = write_reports(&out_dir, &runs, &[], &machine, &agent, &args, started)?;
    let control = if args.no_control {
        Vec::new()
    } else {
        println!("== control plane of the baselines");
        control_baselines(&args.control_services, args.control_repeats)?
    };
    ensure_no_leftovers()?;
    let md = if control.is_empty() {
        md
    } else {
        write_reports(&out_dir, &runs, &control, &machine, &agent, &args, started)?
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
fn write_reports(
    out_dir: &Path,
    runs: &[Run],
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
            "parallel": args.parallel,
        },
        "e2e": runs.iter().map(Run::to_json).collect::<Vec<_>>(),
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
    let md = report_md(runs, control, svc_lb_control.as_ref(), machine, args);
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
        },
        Port {
            name: "dns".into(),
            proto: Proto::Udp,
            port: UDP_PORT,
            target_port: UDP_TARGET,
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
        })
        .collect();
    v.push(Service {
        namespace: "default".into(),
        name: "web".into(),
        cluster_ip: VIP,
        ports: ports(),
        endpoints: backends.to_vec(),
    });
    v
}

/// Service `s` and its EndpointSlice as manifests (JSON documents, which are YAML).
fn manifest(s: &Service) -> String {
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": s.name, "namespace": s.namespace},
        "spec": {
            "clusterIP": s.cluster_ip.to_string(),
            "selector": {"app": s.name},
            "ports": s.ports.iter().map(|p| json!({
                "name": p.name, "port": p.port, "targetPort": p.target_port,
                "protocol": p.proto.lower().to_uppercase(),
            })).collect::<Vec<_>>(),
        },
    });
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
// One mode at one size
// ---------------------------------------------------------------------------------------------

/// One timed repetition.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Successful exchanges per second.
    rate: f64,
    p50_us: u64,
    p99_us: u64,
    /// Failed / attempted.
    loss: f64,
}

struct Run {
    mode: Mode,
    services: usize,
    /// Time to program the mode on both nodes (rules loaded, or every frontend in both agents'
    /// maps), seconds; 0 for the floor.
    program_s: f64,
    /// What the nodes' uplinks carry (`xdpgeneric`, …), for the record.
    xdp: String,
    check_tcp: BTreeMap<String, u64>,
    check_udp: BTreeMap<String, u64>,
    tcp: Vec<Sample>,
    udp: Vec<Sample>,
    load_before: String,
    load_after: String,
}

impl Run {
    fn to_json(&self) -> Value {
        let samples = |v: &[Sample]| {
            v.iter()
                .map(|s| json!({"rate": s.rate, "p50_us": s.p50_us, "p99_us": s.p99_us, "loss": s.loss}))
                .collect::<Vec<_>>()
        };
        json!({
            "mode": self.mode.key(),
            "services": self.services,
            "program_s": self.program_s,
            "xdp": self.xdp,
            "check_by_backend": {"tcp": self.check_tcp, "udp": self.check_udp},
            "tcp": samples(&self.tcp),
            "udp": samples(&self.udp),
            "tcp_rate": stats(self.tcp.iter().map(|s| s.rate)).to_json(),
            "tcp_p50_us": stats(self.tcp.iter().map(|s| s.p50_us as f64)).to_json(),
            "tcp_p99_us": stats(self.tcp.iter().map(|s| s.p99_us as f64)).to_json(),
            "udp_rate": stats(self.udp.iter().map(|s| s.rate)).to_json(),
            "udp_p50_us": stats(self.udp.iter().map(|s| s.p50_us as f64)).to_json(),
            "udp_p99_us": stats(self.udp.iter().map(|s| s.p99_us as f64)).to_json(),
            "udp_loss": stats(self.udp.iter().map(|s| s.loss)).to_json(),
            "loadavg_before": self.load_before,
            "loadavg_after": self.load_after,
        })
    }
}

/// What a mode leaves running; dropped (agents uninstalled, manifests removed) before the
/// topology.
#[derive(Default)]
struct Programmed {
    agents: Vec<Agent>,
    _manifests: Option<ManifestDir>,
    _files: Vec<RemoveOnDrop>,
}

fn measure(mode: Mode, n: usize, args: &Args, probe: &Path) -> Result<Run> {
    let t = Topology::build(&TopologySpec::new().node(&["client", "be1"]).node(&["be2"]))?;
    let probe_s = probe.to_str().context("probe path is not UTF-8")?;
    let mut servers = Vec::new();
    for be in ["be1", "be2"] {
        let mut s = t.spawn(
            t.pod_ns(be),
            &[
                probe_s, "serve", "--id", be, "--tcp", "8080", "--udp", "5353",
            ],
        )?;
        s.wait_for_line(Duration::from_secs(5), |l| l == "ready")?;
        servers.push(s);
    }
    let client = t.pod_ns("client").to_owned();
    // Thousands of short connections from one address to one ip:port: let TIME_WAIT ports be
    // reused (timestamps make that safe) and use the whole port range, or later repetitions
    // would fail on ephemeral ports instead of measuring the datapath.
    t.sysctl(&client, "net.ipv4.tcp_tw_reuse", "1")?;
    t.sysctl(&client, "net.ipv4.ip_local_port_range", "1024 65535")?;

    let backends = [t.pod_ip("be1"), t.pod_ip("be2")];
    let services = e2e_services(n, backends);
    let load_before = loadavg();
    let began = Instant::now();
    let programmed = program(&t, mode, &services)?;
    let program_s = began.elapsed().as_secs_f64();
    let xdp = check_exclusive(&t, mode)?;

    let (tcp_targets, udp_targets) = match mode {
        Mode::Floor => (
            format!("{}:{TCP_TARGET},{}:{TCP_TARGET}", backends[0], backends[1]),
            format!("{}:{UDP_TARGET},{}:{UDP_TARGET}", backends[0], backends[1]),
        ),
        _ => (format!("{VIP}:{TCP_PORT}"), format!("{VIP}:{UDP_PORT}")),
    };
    let run_probe = |proto: &str, target: &str, count: u64| -> Result<Summary> {
        let (count, parallel) = (count.to_string(), args.parallel.to_string());
        let timeout = if proto == "tcp" { "2000" } else { "200" };
        let out = t.exec_ok(
            &client,
            &[
                probe_s,
                proto,
                "--target",
                target,
                "--count",
                &count,
                "--timeout-ms",
                timeout,
                "--parallel",
                &parallel,
            ],
        )?;
        Summary::from_output(&out)
    };

    // Correctness before timing: both backends answer, through the mode's translation.
    let check_tcp = run_probe("tcp", &tcp_targets, CHECK_COUNT)?;
    check_balanced("TCP", &check_tcp)?;
    let check_udp = run_probe("udp", &udp_targets, CHECK_COUNT)?;
    check_balanced("UDP", &check_udp)?;

    run_probe("tcp", &tcp_targets, args.tcp_count / 4)?;
    let (mut tcp, mut udp) = (Vec::new(), Vec::new());
    for _ in 0..args.repeats {
        tcp.push(sample(&run_probe("tcp", &tcp_targets, args.tcp_count)?)?);
        udp.push(sample(&run_probe("udp", &udp_targets, args.udp_count)?)?);
    }
    let load_after = loadavg();
    drop(programmed);
    drop(servers);
    drop(t);
    Ok(Run {
        mode,
        services: n,
        program_s,
        xdp,
        check_tcp: check_tcp.by_backend,
        check_udp: check_udp.by_backend,
        tcp,
        udp,
        load_before,
        load_after,
    })
}

fn sample(s: &Summary) -> Result<Sample> {
    let lat = s
        .latency_us
        .context("probe summary without latency_us (old svc-probe?)")?;
    let attempted = (s.ok + s.failed).max(1);
    ensure!(s.ok > 0, "no exchange succeeded: {:?}", s.errors);
    Ok(Sample {
        rate: s.ok as f64 / (s.elapsed_ms.max(1) as f64 / 1e3),
        p50_us: lat.p50,
        p99_us: lat.p99,
        loss: s.failed as f64 / attempted as f64,
    })
}

/// Fails unless both backends answered with at least [`MIN_SHARE`] each and nothing failed.
fn check_balanced(what: &str, s: &Summary) -> Result<()> {
    let total = (s.ok + s.failed) as f64;
    for be in ["be1", "be2"] {
        let got = s.by_backend.get(be).copied().unwrap_or(0);
        ensure!(
            got as f64 >= MIN_SHARE * total,
            "{what}: backend {be} answered {got} of {total} (want ≥ {:.0}%): not balanced; \
             by_backend {:?}, errors {:?}",
            MIN_SHARE * 100.0,
            s.by_backend,
            s.errors
        );
    }
    ensure!(
        s.failed == 0,
        "{what}: {} exchanges failed: {:?}",
        s.failed,
        s.errors
    );
    Ok(())
}

/// Programs `mode` on both nodes and waits until it is complete.
fn program(t: &Topology, mode: Mode, services: &[Service]) -> Result<Programmed> {
    let mut p = Programmed::default();
    match mode {
        Mode::Floor => {}
        Mode::Iptables | Mode::Nftables => {
            let (text, cmd): (String, &[&str]) = if mode == Mode::Iptables {
                (kubeproxy::iptables_restore(services), &["iptables-restore"])
            } else {
                (kubeproxy::nft_full(services), &["nft", "-f"])
            };
            let file = std::env::temp_dir().join(format!("{}{}.rules", t.prefix(), mode.key()));
            write(&file, &text)?;
            p._files.push(RemoveOnDrop(file.clone()));
            for node in t.nodes() {
                timed_cmd(t, &node.ns, cmd, &file)?;
            }
        }
        Mode::SvcLb => {
            let dir = ManifestDir::new(t)?;
            for (k, chunk) in services.chunks(PER_FILE).enumerate() {
                let text: String = chunk.iter().map(manifest).collect();
                dir.write(&format!("svc-{k:05}.yaml"), &text)?;
            }
            for node in 1..=2 {
                p.agents.push(Agent::start(t, node, dir.path(), &[])?);
            }
            p._manifests = Some(dir);
            let want = services.len() * 2;
            let deadline = Instant::now() + PROGRAM_TIMEOUT;
            for agent in &p.agents {
                loop {
                    let fe = agent.frontends().unwrap_or_default();
                    let target_ready = fe
                        .iter()
                        .filter(|(k, v)| k.addr == VIP.octets() && v.backend_count == 2)
                        .count()
                        == 2;
                    if fe.len() == want && target_ready {
                        break;
                    }
                    ensure!(
                        Instant::now() < deadline,
                        "agent on node {} programmed {} of {want} frontends in {PROGRAM_TIMEOUT:?}\n{}",
                        agent.node,
                        fe.len(),
                        agent.log()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    Ok(p)
}

/// Runs `cmd FILE` (or `iptables-restore < FILE` style tools given the file as last argument)
/// from a thread inside `ns`, returning the seconds it took; fails on a non-zero exit.
fn timed_cmd(t: &Topology, ns: &str, cmd: &[&str], file: &Path) -> Result<f64> {
    let (prog, rest) = cmd.split_first().context("empty command")?;
    let out = t.run_in(ns, || {
        let began = Instant::now();
        let out = Command::new(prog).args(rest).arg(file).output();
        (began.elapsed().as_secs_f64(), out)
    })?;
    let (secs, out) = (out.0, out.1.with_context(|| format!("spawning {prog}"))?);
    ensure!(
        out.status.success(),
        "{cmd:?} {} in {ns}: {}\n{}",
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(secs)
}

/// Checks that only `mode` is present in the nodes: no nftables ruleset but the mode's (the
/// iptables baseline is iptables-nft, so its tables show there too), XDP on the uplinks only
/// for svc-lb. Returns the XDP attachment kind seen on node 1's `eth0`.
fn check_exclusive(t: &Topology, mode: Mode) -> Result<String> {
    let mut xdp_seen = String::new();
    for node in t.nodes() {
        let rules = t.exec_ok(&node.ns, &["nft", "list", "ruleset"])?;
        let has_kube_iptables = rules.contains("KUBE-SERVICES");
        let has_kube_nft = rules.contains("table ip kube-proxy");
        let want = (mode == Mode::Iptables, mode == Mode::Nftables);
        ensure!(
            (has_kube_iptables, has_kube_nft) == want,
            "node {}: nftables ruleset does not match mode {}: {rules}",
            node.index,
            mode.key()
        );
        if matches!(mode, Mode::Floor | Mode::SvcLb) {
            ensure!(
                rules.trim().is_empty(),
                "node {}: unexpected ruleset: {rules}",
                node.index
            );
        }
        let link = t.exec_ok(&node.ns, &["ip", "-d", "link", "show", "dev", "eth0"])?;
        let xdp = ["xdpgeneric", "xdpdrv", "xdpoffload", "xdp"]
            .into_iter()
            .find(|k| link.split_whitespace().any(|w| w == *k))
            .unwrap_or("none");
        ensure!(
            (xdp != "none") == (mode == Mode::SvcLb),
            "node {}: XDP on eth0 is {xdp} in mode {}",
            node.index,
            mode.key()
        );
        if node.index == 1 {
            xdp_seen = xdp.to_owned();
        }
    }
    Ok(xdp_seen)
}

/// No namespace, bpffs directory or cgroup of this process is left between modes.
fn ensure_no_leftovers() -> Result<()> {
    let ours = format!("{NS_PREFIX}{}-", std::process::id());
    let ns = list_our_namespaces(&ours);
    ensure!(ns.is_empty(), "namespaces left behind: {ns:?}");
    let pins: Vec<_> = std::fs::read_dir("/sys/fs/bpf")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&ours))
                .collect()
        })
        .unwrap_or_default();
    ensure!(pins.is_empty(), "bpffs pins left behind: {pins:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Control plane of the baselines
// ---------------------------------------------------------------------------------------------

struct ControlRow {
    tool: &'static str,
    what: &'static str,
    services: usize,
    secs: Vec<f64>,
}

impl ControlRow {
    fn to_json(&self) -> Value {
        json!({
            "tool": self.tool, "what": self.what, "services": self.services,
            "samples_s": self.secs, "s": stats(self.secs.iter().copied()).to_json(),
        })
    }
}

/// Endpoints per Service for the control-plane figures (as bench_control).
const CONTROL_ENDPOINTS: usize = 10;

fn control_services(n: usize, endpoints: usize) -> Vec<Service> {
    (0..n)
        .map(|i| Service {
            namespace: "default".into(),
            name: format!("svc-{i:05}"),
            cluster_ip: Ipv4Addr::new(10, 96, (1 + i / 250) as u8, (1 + i % 250) as u8),
            ports: ports()[..1].to_vec(),
            // Distinct for every (Service, endpoint), 16 slots per Service (10.128.0.0/9).
            endpoints: (0..endpoints)
                .map(|j| {
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * 16 + j) as u32)
                })
                .collect(),
        })
        .collect()
}

fn control_baselines(sizes: &[usize], repeats: usize) -> Result<Vec<ControlRow>> {
    let t = Topology::build(&TopologySpec::new().node(&[]))?;
    let ns = t.node(1).ns.clone();
    let tmp = |name: &str| RemoveOnDrop(std::env::temp_dir().join(format!("{}{name}", t.prefix())));
    let flush = || -> Result<()> {
        t.exec_ok(&ns, &["nft", "flush", "ruleset"])?;
        Ok(())
    };
    let mut rows = Vec::new();
    for &n in sizes {
        let base = control_services(n, CONTROL_ENDPOINTS);
        let changed_at = n / 2;
        let mut grown = base.clone();
        let extra =
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (changed_at * 16 + 15) as u32);
        grown[changed_at].endpoints.push(extra);

        let files = [
            tmp("ipt-full"),
            tmp("ipt-grown"),
            tmp("ipt-partial-grow"),
            tmp("ipt-partial-shrink"),
            tmp("nft-full"),
            tmp("nft-grow"),
            tmp("nft-shrink"),
        ];
        write(&files[0].0, &kubeproxy::iptables_restore(&base))?;
        write(&files[1].0, &kubeproxy::iptables_restore(&grown))?;
        write(
            &files[2].0,
            &kubeproxy::iptables_partial(&grown, &grown[changed_at], &[]),
        )?;
        write(
            &files[3].0,
            &kubeproxy::iptables_partial(&base, &base[changed_at], &[extra]),
        )?;
        write(&files[4].0, &kubeproxy::nft_full(&base))?;
        write(
            &files[5].0,
            &kubeproxy::nft_endpoints_changed(&grown[changed_at], &[]),
        )?;
        write(
            &files[6].0,
            &kubeproxy::nft_endpoints_changed(&base[changed_at], &[extra]),
        )?;
        let mut row = |tool, what, secs| {
            let r = ControlRow {
                tool,
                what,
                services: n,
                secs,
            };
            println!(
                "   {n:>6} Services  {tool:<9} {what:<40} {}",
                stats(r.secs.iter().copied()).fmt(1e3, "ms")
            );
            rows.push(r);
        };
        let restore = &["iptables-restore"][..];
        let noflush = &["iptables-restore", "--noflush"][..];
        let nft = &["nft", "-f"][..];

        // At 10k Services one iptables-nft restore or nft transaction takes tens of seconds:
        // one repetition there keeps `cargo xtask bench` within its time budget.
        let repeats = if n >= 10_000 { 1 } else { repeats };
        let (mut full, mut resync, mut partial) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..repeats {
            flush()?;
            full.push(timed_cmd(&t, &ns, restore, &files[0].0)?);
            // Endpoint change, full table (grow), then back (full table of the base).
            resync.push(timed_cmd(&t, &ns, restore, &files[1].0)?);
            resync.push(timed_cmd(&t, &ns, restore, &files[0].0)?);
            partial.push(timed_cmd(&t, &ns, noflush, &files[2].0)?);
            partial.push(timed_cmd(&t, &ns, noflush, &files[3].0)?);
        }
        flush()?;
        row("iptables", "program from nothing (iptables-restore)", full);
        row("iptables", "1 endpoint change, full restore", resync);
        row(
            "iptables",
            "1 endpoint change, partial --noflush (≥1.28)",
            partial,
        );

        let (mut full, mut change) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            flush()?;
            full.push(timed_cmd(&t, &ns, nft, &files[4].0)?);
            change.push(timed_cmd(&t, &ns, nft, &files[5].0)?);
            change.push(timed_cmd(&t, &ns, nft, &files[6].0)?);
        }
        flush()?;
        row("nftables", "program from nothing (nft -f)", full);
        row("nftables", "1 endpoint change, incremental", change);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Statistics and output
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Default)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

/// Median (mean of the middle two for an even count), min and max.
fn stats(v: impl Iterator<Item = f64>) -> Stats {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Stats::default();
    }
    let m = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    };
    Stats {
        median,
        min: v[0],
        max: v[v.len() - 1],
        n: v.len(),
    }
}

impl Stats {
    fn to_json(self) -> Value {
        json!({"median": self.median, "min": self.min, "max": self.max, "n": self.n})
    }

    /// `median (min–max) unit`, values multiplied by `scale`.
    fn fmt(self, scale: f64, unit: &str) -> String {
        let d = |x: f64| {
            let x = x * scale;
            if x >= 100.0 {
                format!("{x:.0}")
            } else if x >= 10.0 {
                format!("{x:.1}")
            } else {
                format!("{x:.2}")
            }
        };
        let text = format!("{} ({}–{})", d(self.median), d(self.min), d(self.max));
        if unit.is_empty() {
            text
        } else {
            format!("{text} {unit}")
        }
    }
}

fn print_run(r: &Run) {
    println!(
        "   programmed in {:.2} s; XDP on node 1 eth0: {}; check by backend tcp {:?} udp {:?}",
        r.program_s, r.xdp, r.check_tcp, r.check_udp
    );
    println!(
        "   TCP {} conn/s, p50 {} µs, p99 {} µs",
        stats(r.tcp.iter().map(|s| s.rate)).fmt(1.0, ""),
        stats(r.tcp.iter().map(|s| s.p50_us as f64)).fmt(1.0, ""),
        stats(r.tcp.iter().map(|s| s.p99_us as f64)).fmt(1.0, ""),
    );
    println!(
        "   UDP {} exch/s, p50 {} µs, loss {}",
        stats(r.udp.iter().map(|s| s.rate)).fmt(1.0, ""),
        stats(r.udp.iter().map(|s| s.p50_us as f64)).fmt(1.0, ""),
        stats(r.udp.iter().map(|s| s.loss)).fmt(100.0, "%"),
    );
}

fn floor_of(runs: &[Run], n: usize) -> Option<&Run> {
    runs.iter()
        .find(|r| r.mode == Mode::Floor && r.services == n)
}

fn ratio(x: f64, floor: Option<f64>) -> String {
    match floor {
        Some(f) if f > 0.0 => format!("{:.2}×", x / f),
        _ => "–".into(),
    }
}

fn report_md(
    runs: &[Run],
    control: &[ControlRow],
    svc_lb: Option<&Value>,
    machine: &str,
    args: &Args,
) -> String {
    let mut md = String::new();
    writeln!(md, "# svc-lb end-to-end benchmark\n\nMachine: {machine}.\n").unwrap();
    writeln!(
        md,
        "Each cell: median (min–max) of {} repetitions; × = ratio to the floor of the same size. \
         TCP: {} short connections per repetition, {} threads; UDP: {} request/reply exchanges, \
         new socket each, {} threads, 200 ms timeout.\n",
        args.repeats, args.tcp_count, args.parallel, args.udp_count, args.parallel
    )
    .unwrap();
    md.push_str("| Services | mode | TCP conn/s | × floor | TCP p50 µs | TCP p99 µs | UDP exch/s | × floor | UDP p50 µs | UDP loss | load before → after |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in runs {
        let floor = floor_of(runs, r.services);
        let tcp = stats(r.tcp.iter().map(|s| s.rate));
        let udp = stats(r.udp.iter().map(|s| s.rate));
        let ftcp = floor.map(|f| stats(f.tcp.iter().map(|s| s.rate)).median);
        let fudp = floor.map(|f| stats(f.udp.iter().map(|s| s.rate)).median);
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} → {} |",
            r.services,
            r.mode.name(),
            tcp.fmt(1.0, ""),
            ratio(tcp.median, ftcp),
            stats(r.tcp.iter().map(|s| s.p50_us as f64)).fmt(1.0, ""),
            stats(r.tcp.iter().map(|s| s.p99_us as f64)).fmt(1.0, ""),
            udp.fmt(1.0, ""),
            ratio(udp.median, fudp),
            stats(r.udp.iter().map(|s| s.p50_us as f64)).fmt(1.0, ""),
            stats(r.udp.iter().map(|s| s.loss)).fmt(100.0, "%"),
            r.load_before,
            r.load_after,
        )
        .unwrap();
    }
    md.push_str("\nTime to program each mode on both nodes (rules loaded / every frontend in both agents' maps), s:\n\n| Services | iptables | nftables | svc-lb |\n|---|---|---|---|\n");
    let mut sizes: Vec<usize> = runs.iter().map(|r| r.services).collect();
    sizes.dedup();
    for n in sizes {
        let get = |m: Mode| {
            runs.iter()
                .find(|r| r.mode == m && r.services == n)
                .map_or("–".into(), |r| format!("{:.2}", r.program_s))
        };
        writeln!(
            md,
            "| {n} | {} | {} | {} |",
            get(Mode::Iptables),
            get(Mode::Nftables),
            get(Mode::SvcLb)
        )
        .unwrap();
    }
    if !control.is_empty() {
        md.push_str("\n## Control plane: baselines beside svc-lb\n\n10 endpoints per Service. Baselines: one node namespace, only the command timed, median (min–max) ms. svc-lb: `target/bench/control.json` (bench_control: API source, full sync from spawn to maps right; one EndpointSlice change, API commit → map, p50 of 200).\n\n| Services | system | program from nothing | one endpoint change |\n|---|---|---|---|\n");
        let mut sizes: Vec<usize> = control.iter().map(|r| r.services).collect();
        sizes.dedup();
        for n in sizes {
            let cell = |tool: &str, what: &str| {
                control
                    .iter()
                    .find(|r| r.services == n && r.tool == tool && r.what.starts_with(what))
                    .map_or("–".into(), |r| stats(r.secs.iter().copied()).fmt(1e3, ""))
            };
            writeln!(
                md,
                "| {n} | kube-proxy iptables | {} | full restore {}; partial `--noflush` {} |",
                cell("iptables", "program"),
                cell("iptables", "1 endpoint change, full"),
                cell("iptables", "1 endpoint change, partial")
            )
            .unwrap();
            writeln!(
                md,
                "| {n} | kube-proxy nftables | {} | {} |",
                cell("nftables", "program"),
                cell("nftables", "1 endpoint change")
            )
            .unwrap();
            let lb = svc_lb_size(svc_lb, n);
            writeln!(
                md,
                "| {n} | svc-lb | {} | {} |",
                lb.map_or("–".into(), |(full, _)| format!(
                    "{:.0} (one run)",
                    full * 1e3
                )),
                lb.map_or("–".into(), |(_, ch)| format!("{ch:.2} (p50)")),
            )
            .unwrap();
        }
    }
    md
}

/// svc-lb's full sync (s, API source, maps right) and slice-change p50 (ms) at `n` Services,
/// from bench_control's JSON.
fn svc_lb_size(v: Option<&Value>, n: usize) -> Option<(f64, f64)> {
    let size = v?["sizes"]
        .as_array()?
        .iter()
        .find(|s| s["services"].as_u64() == Some(n as u64))?;
    Some((
        size["full_sync_kube"]["maps_right_s"].as_f64()?,
        size["slice_change_ms"]["p50"].as_f64()?,
    ))
}

// ---------------------------------------------------------------------------------------------
// SVG charts (hand-written: a few grouped bar charts need no plotting dependency)
// ---------------------------------------------------------------------------------------------

/// One bar: label, median, min, max.
type Bar = (String, f64, f64, f64);

const COLOURS: [&str; 4] = ["#9e9e9e", "#e07b39", "#3b7dd8", "#2e9e5b"];

/// A grouped bar chart with min–max whiskers and the median printed on each bar. `log` uses a
/// log10 axis (for control-plane times spanning milliseconds to seconds).
fn bar_chart(title: &str, unit: &str, groups: &[(String, Vec<Bar>)], log: bool) -> String {
    let (w, h, left, top, bottom) = (820.0, 420.0, 70.0, 50.0, 90.0);
    let plot_h = h - top - bottom;
    let max = groups
        .iter()
        .flat_map(|(_, b)| b.iter().map(|x| x.3.max(x.1)))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let min_pos = groups
        .iter()
        .flat_map(|(_, b)| b.iter().map(|x| x.1.min(x.2)))
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let (lo, hi) = if log {
        (
            min_pos.log10().floor(),
            max.log10().ceil().max(min_pos.log10().floor() + 1.0),
        )
    } else {
        (0.0, max * 1.15)
    };
    let y = |v: f64| {
        let f = if log {
            (v.max(10f64.powf(lo)).log10() - lo) / (hi - lo)
        } else {
            v / hi
        };
        top + plot_h * (1.0 - f)
    };
    let mut s = String::new();
    writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        w / 2.0,
        esc(title)
    )
    .unwrap();
    // Axis and grid.
    let ticks: Vec<f64> = if log {
        (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=5).map(|i| hi / 5.0 * i as f64).collect()
    };
    for t in ticks {
        let ty = y(t);
        writeln!(
            s,
            r##"<line x1="{left}" y1="{ty:.1}" x2="{}" y2="{ty:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - 10.0,
            left - 6.0,
            ty + 4.0,
            short(t)
        )
        .unwrap();
    }
    writeln!(
        s,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">{}</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        esc(unit)
    )
    .unwrap();
    let group_w = (w - left - 10.0) / groups.len().max(1) as f64;
    let mut legend: Vec<String> = Vec::new();
    for (gi, (gname, bars)) in groups.iter().enumerate() {
        let gx = left + group_w * gi as f64;
        let bw = (group_w * 0.8) / bars.len().max(1) as f64;
        for (bi, (label, med, mn, mx)) in bars.iter().enumerate() {
            if !legend.contains(label) {
                legend.push(label.clone());
            }
            let colour =
                COLOURS[legend.iter().position(|l| l == label).unwrap_or(0) % COLOURS.len()];
            let x = gx + group_w * 0.1 + bw * bi as f64;
            let (top_y, base) = (y(*med), y(if log { 10f64.powf(lo) } else { 0.0 }));
            writeln!(
                s,
                r#"<rect x="{x:.1}" y="{top_y:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{}: {}</title></rect>"#,
                bw * 0.9,
                (base - top_y).max(0.0),
                esc(label),
                short(*med)
            )
            .unwrap();
            let cx = x + bw * 0.45;
            writeln!(
                s,
                r#"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="black"/><text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                y(*mn),
                y(*mx),
                y(mx.max(*med)) - 4.0,
                short(*med)
            )
            .unwrap();
        }
        writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + group_w / 2.0,
            top + plot_h + 18.0,
            esc(gname)
        )
        .unwrap();
    }
    for (i, label) in legend.iter().enumerate() {
        let lx = left + 190.0 * i as f64;
        let ly = h - 30.0;
        writeln!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 10.0,
            COLOURS[i % COLOURS.len()],
            lx + 16.0,
            esc(label)
        )
        .unwrap();
    }
    s.push_str("</svg>\n");
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A compact number: 12.3k, 450, 3.2, 0.041.
fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn charts(runs: &[Run], control: &[ControlRow], svc_lb: Option<&Value>) -> Vec<(String, String)> {
    let mut sizes: Vec<usize> = runs.iter().map(|r| r.services).collect();
    sizes.dedup();
    let by_size = |f: &dyn Fn(&Run) -> Stats| -> Vec<(String, Vec<Bar>)> {
        sizes
            .iter()
            .map(|&n| {
                let bars = runs
                    .iter()
                    .filter(|r| r.services == n)
                    .map(|r| {
                        let s = f(r);
                        (r.mode.name().to_owned(), s.median, s.min, s.max)
                    })
                    .collect();
                (format!("{n} Services"), bars)
            })
            .collect()
    };
    let mut out = vec![
        (
            "e2e-tcp-rate.svg".to_owned(),
            bar_chart(
                "Short TCP connections through the ClusterIP (higher is better)",
                "connections/s",
                &by_size(&|r| stats(r.tcp.iter().map(|s| s.rate))),
                false,
            ),
        ),
        (
            "e2e-tcp-p99.svg".to_owned(),
            bar_chart(
                "TCP connect→reply latency p99 (lower is better)",
                "µs",
                &by_size(&|r| stats(r.tcp.iter().map(|s| s.p99_us as f64))),
                false,
            ),
        ),
        (
            "e2e-udp-rate.svg".to_owned(),
            bar_chart(
                "UDP request/reply, new flow each (higher is better)",
                "exchanges/s",
                &by_size(&|r| stats(r.udp.iter().map(|s| s.rate))),
                false,
            ),
        ),
    ];
    if !control.is_empty() {
        let mut sizes: Vec<usize> = control.iter().map(|r| r.services).collect();
        sizes.dedup();
        let groups = |change: bool| -> Vec<(String, Vec<Bar>)> {
            sizes
                .iter()
                .map(|&n| {
                    let mut bars: Vec<Bar> = control
                        .iter()
                        .filter(|r| r.services == n && r.what.starts_with("1 endpoint") == change)
                        .map(|r| {
                            let s = stats(r.secs.iter().copied());
                            let label = match (r.tool, r.what.contains("partial")) {
                                ("iptables", true) => "iptables partial",
                                (t, _) => t,
                            };
                            (label.to_owned(), s.median * 1e3, s.min * 1e3, s.max * 1e3)
                        })
                        .collect();
                    if let Some((full, ch)) = svc_lb_size(svc_lb, n) {
                        let v = if change { ch } else { full * 1e3 };
                        bars.push(("svc-lb".to_owned(), v, v, v));
                    }
                    (format!("{n} Services × 10 endpoints"), bars)
                })
                .collect()
        };
        out.push((
            "control-program.svg".to_owned(),
            bar_chart(
                "Program every Service from nothing (log scale, lower is better)",
                "ms",
                &groups(false),
                true,
            ),
        ));
        out.push((
            "control-change.svg".to_owned(),
            bar_chart(
                "One endpoint change (log scale, lower is better)",
                "ms",
                &groups(true),
                true,
            ),
        ));
    }
    out
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
