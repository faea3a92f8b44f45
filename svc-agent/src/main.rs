//! The svc-agent binary: command line, `--config` and logging; the work is in the library.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the library.
#![allow(unused_crate_dependencies)]
use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{parser::ValueSource, CommandFactory, FromArgMatches};
use svc_agent::{
    cli::{Cli, Command, Fault, LogFormat, RunArgs},
    run::{RunConfig, Source},
    source::manifests,
};
use tracing::{info, warn};

/// Logs to stderr in `format`; the level is `-v` on kube-proxy's scale when given, else
/// RUST_LOG, else info.
fn init_logging(format: LogFormat, verbosity: Option<u8>) {
    use tracing_subscriber::EnvFilter;
    let filter = match verbosity {
        Some(0..=1) => EnvFilter::new("info"),
        Some(2..=4) => EnvFilter::new("debug"),
        Some(_) => EnvFilter::new("trace"),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// `addr`, or `None` for `off` or empty (kube-proxy: empty disables the server).
fn bind_address(flag: &str, addr: &str) -> Result<Option<SocketAddr>> {
    match addr {
        "off" | "" => Ok(None),
        addr => Ok(Some(
            addr.parse().with_context(|| format!("{flag} {addr}"))?,
        )),
    }
}

/// Applies `--config` to `args` (flags on the command line or from the environment win) and
/// returns the warnings to log.
fn load_config(args: &mut RunArgs, matches: &clap::ArgMatches) -> Result<Vec<String>> {
    let Some(path) = args.config.clone() else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading --config {}", path.display()))?;
    let given = |id: &str| {
        matches.try_get_raw(id).ok().flatten().is_some()
            && matches
                .value_source(id)
                .is_some_and(|s| s != ValueSource::DefaultValue)
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let report = svc_agent::kpconfig::apply(&text, args, &given, cpus)
        .with_context(|| format!("in {}", path.display()))?;
    Ok(report
        .warnings
        .into_iter()
        .map(|w| format!("--config {}: {w}", path.display()))
        .collect())
}

/// kube-proxy's default node name: the host name, trimmed and lower-cased.
fn hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("no --node-name / --hostname-override, and the host name cannot be read")?;
    Ok(name.trim().to_lowercase())
}

fn main() -> Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let Command::Run(mut args) = cli.command else {
        init_logging(LogFormat::Text, None);
        return match cli.command {
            Command::Uninstall { bpffs } => svc_agent::datapath::uninstall(&bpffs),
            Command::Inspect(cmd) => Ok(svc_agent::inspect::run_inspect(&cmd)?),
            Command::Explain(args) => Ok(svc_agent::inspect::run_explain(&args)?),
            Command::Trace(args) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(svc_agent::trace::run_trace(args)),
            Command::Run(_) => unreachable!("handled below"),
        };
    };
    let run_matches = matches
        .subcommand_matches("run")
        .context("the `run` arguments")?;
    let notes = load_config(&mut args, run_matches)?;
    init_logging(args.log_format, args.verbosity);
    for note in &notes {
        warn!("{note}");
    }
    if args.cleanup {
        return svc_agent::datapath::uninstall(&args.bpffs);
    }
    if let Some(cgroup) = &args.cgroup {
        if !cgroup.join("cgroup.procs").exists() {
            bail!("--cgroup {}: not a cgroup v2 directory", cgroup.display());
        }
    }
    // Before anything is loaded: a bad --snat-port-range must not leave a half-programmed node.
    let snat_ports = snat_ports(args.snat_port_range.as_ref())?;
    let fault = args.fault_inject.iter().fold(0, |acc, f| {
        acc | match f {
            Fault::SkipL4Csum => svc_common::FAULT_SKIP_L4_CSUM,
            Fault::StallProgramming | Fault::NoBudget => 0,
        }
    });
    if args.manifests.is_some() && args.kubeconfig.is_some() {
        bail!("--manifests and --kubeconfig (or clientConnection.kubeconfig) exclude each other");
    }
    let source = match args.manifests {
        Some(dir) => Source::Manifests {
            dir,
            options: manifests::Options {
                service_cidr: args.service_cidr.v4,
                service_cidr6: args.service_cidr.v6,
                ..Default::default()
            },
            poll: Duration::from_millis(args.poll_ms.max(10)),
        },
        None => Source::Kube {
            kubeconfig: args.kubeconfig,
        },
    };
    let node_name = match args.node_name.filter(|n| !n.trim().is_empty()) {
        Some(name) => name,
        None => hostname()?,
    };
    let (node_ips, node_ips6) = split_ips(&args.node_ip);
    let (nodeport_addresses, nodeport_addresses6) =
        svc_core::model::split_families(&args.nodeport_addresses);
    let (external_ip_cidrs, external_ip_cidrs6) = match &args.external_ip_cidrs {
        Some(list) => {
            let (v4, v6) = svc_core::model::split_families(list);
            (Some(v4), v6)
        }
        None => (None, Vec::new()),
    };
    let cfg = RunConfig {
        source,
        node_name,
        node_ips,
        node_ips6,
        nodeport_addresses,
        nodeport_addresses6,
        external_ip_cidrs,
        external_ip_cidrs6,
        service_proxy_name: args.service_proxy_name,
        bpffs: args.bpffs,
        pod_ifaces: args.pod_ifaces,
        uplinks: args.uplink,
        cgroup: args.cgroup,
        pod_socket_lb: args.pod_socket_lb,
        xdp: args.xdp_mode,
        tc: args.tc_attach,
        metrics_addr: bind_address("--metrics-bind-address", &args.metrics_bind_address)?,
        healthz_addr: bind_address("--healthz-bind-address", &args.healthz_bind_address)?,
        health_timeout: 2 * Duration::from_secs(args.sync_period.0.into()),
        cluster_cidrs: args.cluster_cidr,
        stall_programming: args.fault_inject.contains(&Fault::StallProgramming),
        no_budget: args.fault_inject.contains(&Fault::NoBudget),
        fault,
        bpf_debug_log: args.bpf_debug_log,
        snat_ports,
        ct_timeouts: args.conntrack.timeouts(),
        ct_max: args.conntrack.conntrack_max,
        service_maps: args.service_maps.clone(),
        ct_gc_interval: Duration::from_secs(args.conntrack.conntrack_gc_interval.0.into()),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(svc_agent::run::run(cfg))
}

/// `--snat-port-range` checked against this node, or the default computed from it
/// (`svc_agent::snat_ports`), logged.
fn snat_ports(
    given: Option<&svc_agent::snat_ports::SnatRangeArg>,
) -> Result<svc_common::SnatPorts> {
    use svc_agent::snat_ports::{
        choose, describe, parse_ephemeral, EPHEMERAL_SYSCTL, NODEPORT_RANGE,
    };
    let text = std::fs::read_to_string(EPHEMERAL_SYSCTL)
        .with_context(|| format!("reading {EPHEMERAL_SYSCTL} (the ephemeral port range)"))?;
    let ephemeral =
        parse_ephemeral(&text).map_err(|e| anyhow::anyhow!("{EPHEMERAL_SYSCTL}: {e}"))?;
    let ports = choose(given, &ephemeral, &NODEPORT_RANGE).map_err(|e| anyhow::anyhow!(e))?;
    info!(
        snat_ports = %describe(&ports),
        total = ports.total(),
        ephemeral = %format!("{}-{}", ephemeral.start(), ephemeral.end()),
        from_flag = given.is_some(),
        "source ports for SNAT chosen"
    );
    Ok(ports)
}

/// The IPv4 and the IPv6 addresses of `ips`, in order.
fn split_ips(ips: &[std::net::IpAddr]) -> (Vec<std::net::Ipv4Addr>, Vec<std::net::Ipv6Addr>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for ip in ips {
        match ip {
            std::net::IpAddr::V4(ip) => v4.push(*ip),
            std::net::IpAddr::V6(ip) => v6.push(*ip),
        }
    }
    (v4, v6)
}
