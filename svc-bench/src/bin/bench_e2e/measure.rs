//! One mode at one size: programming the mode on both nodes (agents, iptables or nftables
//! rules), checking that nothing of another mode is present and that traffic balances across
//! both backends, then the timed repetitions of TCP connections and UDP exchanges.

use svc_common::{Hook, Reason};

use super::*;

/// One timed repetition.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    /// Successful exchanges per second.
    pub(crate) rate: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    /// Failed / attempted.
    pub(crate) loss: f64,
}

pub(crate) struct Run {
    pub(crate) mode: Mode,
    pub(crate) services: usize,
    /// Time to program the mode on both nodes (rules loaded, or every frontend in both agents'
    /// maps), seconds; 0 for the floor.
    pub(crate) program_s: f64,
    /// What the nodes' uplinks carry (`xdpgeneric`, …), for the record.
    pub(crate) xdp: String,
    pub(crate) check_tcp: BTreeMap<String, u64>,
    pub(crate) check_udp: BTreeMap<String, u64>,
    pub(crate) tcp: Vec<Sample>,
    pub(crate) udp: Vec<Sample>,
    pub(crate) load_before: String,
    pub(crate) load_after: String,
}

impl Run {
    pub(crate) fn to_json(&self) -> Value {
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
pub(crate) struct Programmed {
    pub(crate) agents: Vec<Agent>,
    pub(crate) _manifests: Option<ManifestDir>,
    pub(crate) _files: Vec<RemoveOnDrop>,
}

pub(crate) fn measure(mode: Mode, n: usize, args: &Args, probe: &Path) -> Result<Run> {
    let t = Topology::build(
        &TopologySpec::new()
            .node(&["client", "be1"])
            .node(&["be2"])
            .pod_socket_lb(mode == Mode::SvcLbSock),
    )?;
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
    let agent_args: Vec<&str> = args.agent_args.iter().map(String::as_str).collect();
    let programmed = program(&t, mode, &services, &agent_args)?;
    let program_s = began.elapsed().as_secs_f64();
    // `--xdp-mode auto` (the default) attaches no XDP to a veth uplink; only an explicit
    // generic or native mode does.
    let xdp_on = ["generic", "native"].iter().any(|m| {
        agent_args.windows(2).any(|w| w == ["--xdp-mode", *m])
            || agent_args.contains(&format!("--xdp-mode={m}").as_str())
    });
    let xdp = check_exclusive(&t, mode, mode.svc_lb() && xdp_on)?;

    let (tcp_targets, udp_targets) = if mode.direct() {
        (
            format!("{}:{TCP_TARGET},{}:{TCP_TARGET}", backends[0], backends[1]),
            format!("{}:{UDP_TARGET},{}:{UDP_TARGET}", backends[0], backends[1]),
        )
    } else {
        (format!("{VIP}:{TCP_PORT}"), format!("{VIP}:{UDP_PORT}"))
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
    let before = path_counters(&programmed)?;
    let check_tcp = run_probe("tcp", &tcp_targets, CHECK_COUNT)?;
    check_balanced("TCP", &check_tcp)?;
    let check_udp = run_probe("udp", &udp_targets, CHECK_COUNT)?;
    check_balanced("UDP", &check_udp)?;
    check_path(mode, before, path_counters(&programmed)?)?;

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

pub(crate) fn sample(s: &Summary) -> Result<Sample> {
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
pub(crate) fn check_balanced(what: &str, s: &Summary) -> Result<()> {
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

/// Node 1's agent's (socket-translated calls, per-packet new flows from pods), if svc-lb runs.
pub(crate) fn path_counters(p: &Programmed) -> Result<Option<(u64, u64)>> {
    let Some(a) = p.agents.first() else {
        return Ok(None);
    };
    Ok(Some((
        a.counter(Hook::Sock, Reason::SockTranslated)?,
        a.counter(Hook::PodIngress, Reason::DnatNew)?,
    )))
}

/// Fails unless the correctness check went through the mode's own path: every exchange
/// translated in the socket call (socket-LB), per packet (tc), or not at all (pod IPs).
pub(crate) fn check_path(
    mode: Mode,
    before: Option<(u64, u64)>,
    after: Option<(u64, u64)>,
) -> Result<()> {
    let (Some(b), Some(a)) = (before, after) else {
        return Ok(());
    };
    let (sock, dnat) = (a.0 - b.0, a.1 - b.1);
    let want = 2 * CHECK_COUNT;
    let ok = match mode {
        Mode::SvcLbSock => sock >= want && dnat == 0,
        Mode::SvcLb => sock == 0 && dnat >= CHECK_COUNT,
        _ => sock == 0 && dnat == 0,
    };
    ensure!(
        ok,
        "mode {}: the check took another path ({sock} socket-translated calls, {dnat} \
         per-packet new flows on node 1 for {want} exchanges)",
        mode.key()
    );
    Ok(())
}

/// Programs `mode` on both nodes and waits until it is complete.
pub(crate) fn program(
    t: &Topology,
    mode: Mode,
    services: &[Service],
    agent_args: &[&str],
) -> Result<Programmed> {
    let mut p = Programmed::default();
    match mode {
        Mode::Floor => {}
        Mode::Iptables | Mode::Nftables => {
            let (text, cmd): (String, &[&str]) = if mode == Mode::Iptables {
                (kubeproxy::iptables_restore(services), &["iptables-restore"])
            } else {
                (kubeproxy::nft_full(services, &node_ips(t)), &["nft", "-f"])
            };
            let file = std::env::temp_dir().join(format!("{}{}.rules", t.prefix(), mode.key()));
            write(&file, &text)?;
            p._files.push(RemoveOnDrop(file.clone()));
            for node in t.nodes() {
                timed_cmd(t, &node.ns, cmd, &file)?;
            }
        }
        Mode::SvcLb | Mode::SvcLbSock | Mode::SvcLbDirect => {
            let dir = ManifestDir::new(t)?;
            for (k, chunk) in services.chunks(PER_FILE).enumerate() {
                let text: String = chunk.iter().map(manifest).collect();
                dir.write(&format!("svc-{k:05}.yaml"), &text)?;
            }
            // The agent as deployed (`--xdp-mode auto`) unless the run asks otherwise: the
            // harness alone would ask for generic XDP (what the network tests exercise).
            let mut agent_args = agent_args.to_vec();
            if !agent_args.iter().any(|a| a.starts_with("--xdp-mode")) {
                agent_args.extend(["--xdp-mode", "auto"]);
            }
            for node in 1..=2 {
                p.agents
                    .push(Agent::start(t, node, dir.path(), &agent_args)?);
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

/// Every node's underlay address (kube-proxy's NodePort addresses).
pub(crate) fn node_ips(t: &Topology) -> Vec<Ipv4Addr> {
    t.nodes().iter().map(|n| t.node_ip(n.index)).collect()
}

/// Runs `cmd FILE` (or `iptables-restore < FILE` style tools given the file as last argument)
/// from a thread inside `ns`, returning the seconds it took; fails on a non-zero exit.
pub(crate) fn timed_cmd(t: &Topology, ns: &str, cmd: &[&str], file: &Path) -> Result<f64> {
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
/// for svc-lb when asked for (`want_xdp`: `--xdp-mode generic` or `native`). Returns the XDP attachment kind seen on
/// node 1's `eth0`.
pub(crate) fn check_exclusive(t: &Topology, mode: Mode, want_xdp: bool) -> Result<String> {
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
        if mode == Mode::Floor || mode.svc_lb() {
            ensure!(
                rules.trim().is_empty(),
                "node {}: unexpected ruleset: {rules}",
                node.index
            );
        }
        let xdp = eth0_xdp(t, &node.ns)?;
        ensure!(
            (xdp != "none") == want_xdp,
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

/// What XDP `eth0` of namespace `ns` carries: `xdpgeneric`, `xdpdrv`, `xdpoffload`, `xdp`
/// (native, as `ip` shows a link-based attachment), or `none`.
pub(crate) fn eth0_xdp(t: &Topology, ns: &str) -> Result<&'static str> {
    let link = t.exec_ok(ns, &["ip", "-d", "link", "show", "dev", "eth0"])?;
    Ok(["xdpgeneric", "xdpdrv", "xdpoffload", "xdp"]
        .into_iter()
        .find(|k| link.split_whitespace().any(|w| w == *k))
        .unwrap_or("none"))
}

/// No namespace, bpffs directory or cgroup of this process is left between modes.
pub(crate) fn ensure_no_leftovers() -> Result<()> {
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
