//! North-south: an external client (DESIGN §3's `ext`, 172.18.0.100 on the underlay, routing
//! the documentation ranges through node 1) reaching a backend on node 1 (local) or node 2
//! (remote) through node 1's NodePort or a LoadBalancer IP.
//!
//! Modes, each target of each mode in a topology of its own:
//! - `floor`: the client reaches the pod addresses with node 1 as a plain router (a route to
//!   10.244.0.0/16 via node 1); no agent, no rules. Node 2 routes replies to the client via
//!   node 1 too, so a remote backend's packets cross node 1 both ways, as they do through a
//!   NodePort that source-NATs (node 1 sends no ICMP redirects for that).
//! - `nftables`: kube-proxy's nftables table with NodePorts and LB IPs
//!   ([`svc_bench::kubeproxy::nft_full`]): `externalTrafficPolicy: Cluster`, so everything from
//!   outside is masqueraded, as kube-proxy does.
//! - `svc-lb-tc`: the agent as deployed on a veth uplink (`--xdp-mode auto`: no XDP, the tc
//!   uplink program translates).
//! - `svc-lb-generic`: `--xdp-mode generic`.
//! - `svc-lb-native`: `--xdp-mode native`, with GRO turned on on the underlay's side of every
//!   node's veth (a veth delivers native `XDP_TX` frames only to a peer running NAPI, which GRO
//!   turns on: drivers/net/veth.c, `veth_xdp_xmit` drops when the peer's `rq->napi` is NULL).
//!   A mode that fails (on this machine: native XDP on veth, remote backends) is reported as
//!   such and the run goes on.
//!
//! Per target, after a correctness check (every exchange answered by the expected backend, and
//! the agent's counters showing the mode's own path): short TCP connections (conn/s, p99), new
//! UDP flows (a new socket per exchange), one UDP flow (one socket, one exchange at a time: its
//! exchanges/s), and one TCP stream each way (`svc-probe bulk --raw`: zeros, no hashing).

use std::net::SocketAddrV4;

use svc_common::{Hook, Reason};
use svc_testkit::topology::EXT_IP;
use svc_testkit::traffic::BulkResult;

use super::*;

/// TCP port of the bulk servers (and of the Services' bulk port).
const BULK_PORT: u16 = 5001;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub(crate) enum NsMode {
    Floor,
    Nftables,
    SvcLbTc,
    SvcLbGeneric,
    SvcLbNative,
}

impl NsMode {
    pub(crate) const ALL: [NsMode; 5] = [
        NsMode::Floor,
        NsMode::Nftables,
        NsMode::SvcLbTc,
        NsMode::SvcLbGeneric,
        NsMode::SvcLbNative,
    ];

    fn name(self) -> &'static str {
        match self {
            NsMode::Floor => "floor (node 1 routes)",
            NsMode::Nftables => "kube-proxy nftables",
            NsMode::SvcLbTc => "svc-lb, tc (auto on veth)",
            NsMode::SvcLbGeneric => "svc-lb, generic XDP",
            NsMode::SvcLbNative => "svc-lb, native XDP",
        }
    }

    fn key(self) -> &'static str {
        match self {
            NsMode::Floor => "floor",
            NsMode::Nftables => "nftables",
            NsMode::SvcLbTc => "svc-lb-tc",
            NsMode::SvcLbGeneric => "svc-lb-generic",
            NsMode::SvcLbNative => "svc-lb-native",
        }
    }

    fn xdp_mode(self) -> Option<&'static str> {
        match self {
            NsMode::SvcLbTc => Some("auto"),
            NsMode::SvcLbGeneric => Some("generic"),
            NsMode::SvcLbNative => Some("native"),
            _ => None,
        }
    }
}

/// One way in: a frontend kind and where its backend is.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) frontend: &'static str,
    pub(crate) local: bool,
    tcp: SocketAddrV4,
    udp: SocketAddrV4,
    bulk: SocketAddrV4,
}

impl Target {
    fn backend(&self) -> &'static str {
        if self.local {
            "be1"
        } else {
            "be2"
        }
    }

    fn where_(&self) -> &'static str {
        if self.local {
            "local"
        } else {
            "remote"
        }
    }
}

/// One mode's figures for one target.
pub(crate) struct NsRun {
    pub(crate) mode: NsMode,
    pub(crate) target: Target,
    pub(crate) xdp: String,
    tcp: Vec<Sample>,
    udp: Vec<Sample>,
    one_flow: Vec<Sample>,
    /// Gbit/s of each repetition.
    down: Vec<f64>,
    up: Vec<f64>,
    load_before: String,
    load_after: String,
}

/// The Services: `ns-local` (endpoint be1) and `ns-remote` (endpoint be2), each with a NodePort
/// per port and one LB IP.
fn ns_services(be1: Ipv4Addr, be2: Ipv4Addr) -> Vec<Service> {
    let svc = |k: u16, name: &str, ep: Ipv4Addr| {
        let port = |name: &str, proto, port, target_port, node_port| Port {
            name: name.into(),
            proto,
            port,
            target_port,
            node_port: Some(node_port),
        };
        Service {
            namespace: "default".into(),
            name: name.into(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 20 + k as u8),
            ports: vec![
                port("http", Proto::Tcp, TCP_PORT, TCP_TARGET, 30080 + k),
                port("dns", Proto::Udp, UDP_PORT, UDP_TARGET, 30053 + k),
                port("bulk", Proto::Tcp, BULK_PORT, BULK_PORT, 30500 + k),
            ],
            endpoints: vec![ep],
            lb_ips: vec![Ipv4Addr::new(203, 0, 113, 10 + k as u8)],
        }
    };
    vec![svc(0, "ns-local", be1), svc(1, "ns-remote", be2)]
}

fn targets(mode: NsMode, t: &Topology, services: &[Service]) -> Vec<Target> {
    let v4 = SocketAddrV4::new;
    if mode == NsMode::Floor {
        return [("be1", true), ("be2", false)]
            .into_iter()
            .map(|(be, local)| {
                let ip = t.pod_ip(be);
                Target {
                    frontend: "pod IP",
                    local,
                    tcp: v4(ip, TCP_TARGET),
                    udp: v4(ip, UDP_TARGET),
                    bulk: v4(ip, BULK_PORT),
                }
            })
            .collect();
    }
    let node = t.node_ip(1);
    let mut v = Vec::new();
    for (s, local) in services.iter().zip([true, false]) {
        let np = |i: usize| s.ports[i].node_port.expect("ns services have node ports");
        v.push(Target {
            frontend: "NodePort",
            local,
            tcp: v4(node, np(0)),
            udp: v4(node, np(1)),
            bulk: v4(node, np(2)),
        });
        let lb = s.lb_ips[0];
        v.push(Target {
            frontend: "LB IP",
            local,
            tcp: v4(lb, TCP_PORT),
            udp: v4(lb, UDP_PORT),
            bulk: v4(lb, BULK_PORT),
        });
    }
    v
}

/// The north-south rows, and the modes that failed with why.
pub(crate) type NsResults = (Vec<NsRun>, Vec<(NsMode, String)>);

/// Every mode of `modes`, every target: the rows of the north-south table, and the modes that
/// failed with why.
pub(crate) fn northsouth(modes: &[NsMode], args: &Args, probe: &Path) -> Result<NsResults> {
    let (mut runs, mut failed) = (Vec::new(), Vec::new());
    for &mode in modes {
        println!("== north-south, {} (load {})", mode.name(), loadavg());
        // Each target in a topology of its own: a target's conntrack entries (tens of
        // thousands of UDP flows live for 30 s) must not hold the source ports the next
        // target's flows need, or the rows would measure the previous row's leftovers.
        let targets = if mode == NsMode::Floor { 2 } else { 4 };
        for only in 0..targets {
            match ns_measure(mode, only, args, probe) {
                Ok(rows) => {
                    for r in &rows {
                        print_ns_run(r);
                    }
                    runs.extend(rows);
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    println!("  FAILED: {why}");
                    failed.push((mode, why));
                }
            }
            ensure_no_leftovers()?;
        }
    }
    Ok((runs, failed))
}

/// Target number `only` of `mode` (see [`targets`]) in a topology built for it.
fn ns_measure(mode: NsMode, only: usize, args: &Args, probe: &Path) -> Result<Vec<NsRun>> {
    let t = Topology::build(
        &TopologySpec::new()
            .node(&["be1"])
            .node(&["be2"])
            .external_client(true)
            .pod_socket_lb(false),
    )?;
    let ext = t.ext_ns().context("no external client")?.to_owned();
    let probe_s = probe.to_str().context("probe path is not UTF-8")?;
    let bulk_port = BULK_PORT.to_string();
    let mut servers = Vec::new();
    for be in ["be1", "be2"] {
        let mut s = t.spawn(
            t.pod_ns(be),
            &[
                probe_s, "serve", "--id", be, "--tcp", "8080", "--udp", "5353", "--bulk",
                &bulk_port,
            ],
        )?;
        s.wait_for_line(Duration::from_secs(5), |l| l == "ready")?;
        servers.push(s);
    }
    t.sysctl(&ext, "net.ipv4.tcp_tw_reuse", "1")?;
    t.sysctl(&ext, "net.ipv4.ip_local_port_range", "1024 65535")?;
    let services = ns_services(t.pod_ip("be1"), t.pod_ip("be2"));

    let mut programmed = Programmed::default();
    match mode {
        NsMode::Floor => {
            t.add_route(&ext, &format!("10.244.0.0/16 via {}", t.node_ip(1)))?;
            t.add_route(&t.node(2).ns, &format!("{EXT_IP}/32 via {}", t.node_ip(1)))?;
            for key in ["all", "eth0"] {
                t.sysctl(
                    &t.node(1).ns,
                    &format!("net.ipv4.conf.{key}.send_redirects"),
                    "0",
                )?;
            }
        }
        NsMode::Nftables => {
            let file = std::env::temp_dir().join(format!("{}ns-nftables.rules", t.prefix()));
            write(&file, &kubeproxy::nft_full(&services, &node_ips(&t)))?;
            programmed._files.push(RemoveOnDrop(file.clone()));
            for node in t.nodes() {
                timed_cmd(&t, &node.ns, &["nft", "-f"], &file)?;
            }
        }
        NsMode::SvcLbTc | NsMode::SvcLbGeneric | NsMode::SvcLbNative => {
            if mode == NsMode::SvcLbNative {
                for node in t.nodes() {
                    let port = format!("ul-n{}", node.index);
                    t.exec_ok(t.underlay_ns(), &["ethtool", "-K", &port, "gro", "on"])?;
                }
            }
            let dir = ManifestDir::new(&t)?;
            dir.write(
                "ns.yaml",
                &services.iter().map(manifest).collect::<String>(),
            )?;
            let mut agent_args = vec!["--xdp-mode", mode.xdp_mode().unwrap_or("auto")];
            agent_args.extend(args.agent_args.iter().map(String::as_str));
            for node in 1..=2 {
                programmed
                    .agents
                    .push(Agent::start(&t, node, dir.path(), &agent_args)?);
            }
            programmed._manifests = Some(dir);
            // Every port of both Services: ClusterIP, NodePort and LB IP frontends.
            let want = 2 * 3 * 3;
            let deadline = Instant::now() + PROGRAM_TIMEOUT;
            for agent in &programmed.agents {
                while agent.frontends().unwrap_or_default().len() < want {
                    ensure!(
                        Instant::now() < deadline,
                        "agent on node {} did not program {want} frontends\n{}",
                        agent.node,
                        agent.log()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    let xdp = uplink_xdp(&t)?;
    let want_xdp = matches!(mode, NsMode::SvcLbGeneric | NsMode::SvcLbNative);
    ensure!(
        (xdp != "none") == want_xdp,
        "mode {}: node 1's eth0 has XDP {xdp}",
        mode.key()
    );

    let run_probe = |args: &[&str]| -> Result<String> {
        let mut cmd = vec![probe_s];
        cmd.extend_from_slice(args);
        t.exec_ok(&ext, &cmd)
    };
    let parallel = args.parallel.to_string();
    let tcp = |target: SocketAddrV4, count: u64| -> Result<Summary> {
        let (target, count) = (target.to_string(), count.to_string());
        Summary::from_output(&run_probe(&[
            "tcp",
            "--target",
            &target,
            "--count",
            &count,
            "--timeout-ms",
            "2000",
            "--parallel",
            &parallel,
        ])?)
    };
    let udp = |target: SocketAddrV4, count: u64, one: bool| -> Result<Summary> {
        let (target, count) = (target.to_string(), count.to_string());
        let (sockets, par) = if one {
            ("one", "1")
        } else {
            ("per-request", parallel.as_str())
        };
        Summary::from_output(&run_probe(&[
            "udp",
            "--target",
            &target,
            "--count",
            &count,
            "--timeout-ms",
            "200",
            "--sockets",
            sockets,
            "--parallel",
            par,
        ])?)
    };
    let bytes = (args.ns_bulk_mib << 20).to_string();
    let bulk = |target: SocketAddrV4, dir: &str| -> Result<BulkResult> {
        let out = run_probe(&[
            "bulk",
            "--target",
            &target.to_string(),
            "--dir",
            dir,
            "--bytes",
            &bytes,
            "--raw",
        ])?;
        let r: BulkResult = serde_json::from_str(out.trim())
            .with_context(|| format!("svc-probe bulk printed {out:?}"))?;
        ensure!(r.ok, "bulk {dir} to {target}: {:?}", r.error);
        Ok(r)
    };
    let gbit = |r: &BulkResult| r.bytes as f64 * 8.0 / (r.elapsed_ms.max(1) as f64 * 1e6);

    let mut rows = Vec::new();
    for target in targets(mode, &t, &services).into_iter().skip(only).take(1) {
        let load_before = loadavg();
        // Correctness first: the expected backend answers everything, through the mode's path.
        let before = ns_path_counters(&programmed)?;
        for (what, s) in [
            ("TCP", tcp(target.tcp, CHECK_COUNT / 4)?),
            ("UDP", udp(target.udp, CHECK_COUNT / 4, false)?),
        ] {
            ensure!(
                s.failed == 0 && s.by_backend.get(target.backend()) == Some(&s.ok),
                "{what} to {} ({} backend): {:?}, errors {:?}",
                target.tcp,
                target.where_(),
                s.by_backend,
                s.errors
            );
        }
        for dir in ["download", "upload"] {
            let r = bulk(target.bulk, dir)?;
            ensure!(
                r.backend == target.backend(),
                "bulk {dir} to {} reached {}",
                target.bulk,
                r.backend
            );
        }
        ns_check_path(mode, before, ns_path_counters(&programmed)?)?;

        tcp(target.tcp, args.tcp_count / 8)?;
        let mut run = NsRun {
            mode,
            target: target.clone(),
            xdp: xdp.clone(),
            tcp: Vec::new(),
            udp: Vec::new(),
            one_flow: Vec::new(),
            down: Vec::new(),
            up: Vec::new(),
            load_before,
            load_after: String::new(),
        };
        for _ in 0..args.repeats {
            run.tcp.push(sample(&tcp(target.tcp, args.tcp_count / 2)?)?);
            run.udp
                .push(sample(&udp(target.udp, args.udp_count / 2, false)?)?);
            run.one_flow
                .push(sample(&udp(target.udp, args.udp_count / 2, true)?)?);
            run.down.push(gbit(&bulk(target.bulk, "download")?));
            run.up.push(gbit(&bulk(target.bulk, "upload")?));
        }
        run.load_after = loadavg();
        rows.push(run);
    }
    drop(programmed);
    drop(servers);
    drop(t);
    Ok(rows)
}

/// What XDP node 1's `eth0` carries (`xdpgeneric`, `xdpdrv`, or `none`); fails if node 2's
/// differs.
fn uplink_xdp(t: &Topology) -> Result<String> {
    let mut seen = Vec::new();
    for node in t.nodes() {
        seen.push(eth0_xdp(t, &node.ns)?.to_owned());
    }
    ensure!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "the nodes' uplinks differ: {seen:?}"
    );
    Ok(seen.swap_remove(0))
}

/// Node 1's agent's new flows translated by XDP and by the tc uplink program.
fn ns_path_counters(p: &Programmed) -> Result<Option<(u64, u64)>> {
    let Some(a) = p.agents.first() else {
        return Ok(None);
    };
    Ok(Some((
        a.counter(Hook::Xdp, Reason::DnatNew)?,
        a.counter(Hook::UplinkIngress, Reason::DnatNew)?,
    )))
}

/// Fails unless the check's new flows were translated where the mode says: by XDP, or by tc
/// with XDP translating nothing.
fn ns_check_path(
    mode: NsMode,
    before: Option<(u64, u64)>,
    after: Option<(u64, u64)>,
) -> Result<()> {
    let (Some(b), Some(a)) = (before, after) else {
        return Ok(());
    };
    let (xdp, tc) = (a.0 - b.0, a.1 - b.1);
    let ok = match mode {
        NsMode::SvcLbTc => xdp == 0 && tc > 0,
        _ => xdp > 0,
    };
    ensure!(
        ok,
        "mode {}: the check took another path ({xdp} new flows by XDP, {tc} by tc on node 1)",
        mode.key()
    );
    Ok(())
}

fn print_ns_run(r: &NsRun) {
    let g = |v: &[f64]| stats(v.iter().copied()).fmt(1.0, "Gbit/s");
    println!(
        "  {} {} ({}, XDP {}): TCP {} conn/s, p99 {} µs; new UDP flows {} /s; one flow {} /s; \
         down {}; up {}",
        r.target.frontend,
        r.target.where_(),
        r.mode.name(),
        r.xdp,
        stats(r.tcp.iter().map(|s| s.rate)).fmt(1.0, ""),
        stats(r.tcp.iter().map(|s| s.p99_us as f64)).fmt(1.0, ""),
        stats(r.udp.iter().map(|s| s.rate)).fmt(1.0, ""),
        stats(r.one_flow.iter().map(|s| s.rate)).fmt(1.0, ""),
        g(&r.down),
        g(&r.up)
    );
}

impl NsRun {
    pub(crate) fn to_json(&self) -> Value {
        let rates = |v: &[Sample]| stats(v.iter().map(|s| s.rate)).to_json();
        json!({
            "mode": self.mode.key(),
            "frontend": self.target.frontend,
            "backend": self.target.where_(),
            "xdp": self.xdp,
            "client": EXT_IP.to_string(),
            "tcp_rate": rates(&self.tcp),
            "tcp_p99_us": stats(self.tcp.iter().map(|s| s.p99_us as f64)).to_json(),
            "udp_new_flows_rate": rates(&self.udp),
            "udp_loss": stats(self.udp.iter().map(|s| s.loss)).to_json(),
            "one_flow_rate": rates(&self.one_flow),
            "bulk_down_gbit_s": stats(self.down.iter().copied()).to_json(),
            "bulk_up_gbit_s": stats(self.up.iter().copied()).to_json(),
            "loadavg_before": self.load_before,
            "loadavg_after": self.load_after,
        })
    }
}

/// The north-south table: each row with its ratios to the floor of the same backend locality.
pub(crate) fn ns_report_md(runs: &[NsRun], failed: &[(NsMode, String)], args: &Args) -> String {
    let mut md = String::new();
    if runs.is_empty() && failed.is_empty() {
        return md;
    }
    let _ = writeln!(
        md,
        "\n## North-south\n\nExternal client 172.18.0.100 → node 1's NodePort or an LB IP (routed via \
         node 1); backend on node 1 (local) or node 2 (remote). The floor reaches the pod address \
         with node 1 as a plain router. {} repetitions: median (min–max); × = ratio of medians to \
         the floor with the backend on the same node. TCP: {} short connections, {} threads; new \
         UDP flows: {} exchanges, a new socket each, {} threads; one flow: {} exchanges on one \
         socket, one at a time; bulk: one TCP stream of {} MiB each way, zeros, not hashed.\n\n\
         | frontend | backend | mode | XDP | TCP conn/s | × | TCP p99 µs | new UDP flows/s | × | \
         one flow exch/s | × | download Gbit/s | × | upload Gbit/s | × | load |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        args.repeats,
        args.tcp_count / 2,
        args.parallel,
        args.udp_count / 2,
        args.parallel,
        args.udp_count / 2,
        args.ns_bulk_mib
    );
    let med = |v: &[f64]| stats(v.iter().copied()).median;
    let rate = |v: &[Sample]| v.iter().map(|s| s.rate).collect::<Vec<_>>();
    for r in runs {
        let floor = runs
            .iter()
            .find(|f| f.mode == NsMode::Floor && f.target.local == r.target.local);
        let x =
            |pick: &dyn Fn(&NsRun) -> Vec<f64>| ratio(med(&pick(r)), floor.map(|f| med(&pick(f))));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} → {} |",
            r.target.frontend,
            r.target.where_(),
            r.mode.name(),
            r.xdp,
            stats(rate(&r.tcp).into_iter()).fmt(1.0, ""),
            x(&|n| rate(&n.tcp)),
            stats(r.tcp.iter().map(|s| s.p99_us as f64)).fmt(1.0, ""),
            stats(rate(&r.udp).into_iter()).fmt(1.0, ""),
            x(&|n| rate(&n.udp)),
            stats(rate(&r.one_flow).into_iter()).fmt(1.0, ""),
            x(&|n| rate(&n.one_flow)),
            stats(r.down.iter().copied()).fmt(1.0, ""),
            x(&|n| n.down.clone()),
            stats(r.up.iter().copied()).fmt(1.0, ""),
            x(&|n| n.up.clone()),
            r.load_before,
            r.load_after
        );
    }
    for (mode, why) in failed {
        let _ = writeln!(md, "\n{} failed, not measured: {why}", mode.name());
    }
    md
}
