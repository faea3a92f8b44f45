//! The svc-agent binary: command line and logging; the work is in the library.
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use svc_agent::{
    cli::{Cli, Command, Fault},
    run::{RunConfig, Source},
    source::manifests,
};

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Uninstall { bpffs } => svc_agent::datapath::uninstall(&bpffs),
        Command::Inspect(cmd) => Ok(svc_agent::inspect::run_inspect(&cmd)?),
        Command::Explain(args) => Ok(svc_agent::inspect::run_explain(&args)?),
        Command::Run(args) => {
            if let Some(cgroup) = &args.cgroup {
                if !cgroup.join("cgroup.procs").exists() {
                    bail!("--cgroup {}: not a cgroup v2 directory", cgroup.display());
                }
            }
            let fault = args.fault_inject.iter().fold(0, |acc, f| {
                acc | match f {
                    Fault::SkipL4Csum => svc_common::FAULT_SKIP_L4_CSUM,
                }
            });
            let source = match args.manifests {
                Some(dir) => Source::Manifests {
                    dir,
                    options: manifests::Options {
                        service_cidr: args.service_cidr,
                        ..Default::default()
                    },
                    poll: Duration::from_millis(args.poll_ms.max(10)),
                },
                None => Source::Kube {
                    kubeconfig: args.kubeconfig,
                },
            };
            let metrics_addr = match args.metrics_addr.as_str() {
                "off" => None,
                addr => Some(
                    addr.parse()
                        .with_context(|| format!("--metrics-addr {addr}"))?,
                ),
            };
            let cfg = RunConfig {
                source,
                node_name: args.node_name,
                node_ips: args.node_ip,
                nodeport_addresses: args.nodeport_addresses,
                external_ip_cidrs: args.external_ip_cidrs,
                bpffs: args.bpffs,
                pod_ifaces: args.pod_ifaces,
                uplinks: args.uplink,
                cgroup: args.cgroup,
                xdp: args.xdp_mode,
                metrics_addr,
                fault,
                ct_timeouts: args.conntrack.timeouts(),
                ct_max: args.conntrack.conntrack_max,
                ct_gc_interval: Duration::from_secs(args.conntrack.conntrack_gc_interval.0.into()),
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(svc_agent::run::run(cfg))
        }
    }
}
