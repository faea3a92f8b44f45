//! The svc-agent binary: command line and logging; the work is in the library.
use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use svc_agent::{
    run::{RunConfig, Source},
    source::manifests,
};
use tracing::info;

#[derive(Parser)]
#[command(
    version,
    about = "svc-lb agent: keeps the eBPF service maps in sync with Services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the datapath and keep its maps in sync with the Services.
    Run(RunArgs),
    /// Detach the programs and remove every pinned map and link under --bpffs.
    Uninstall {
        #[arg(long, default_value = "/sys/fs/bpf/svc")]
        bpffs: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Fault {
    /// Rewrite addresses and ports without updating the L4 checksum.
    SkipL4Csum,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Directory of YAML manifests (Service, EndpointSlice, Endpoints), re-read on change.
    /// Without it, the agent follows the API server.
    #[arg(long, conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// Kubeconfig for the API server (default: in-cluster config, $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Address for /metrics and /healthz; `off` disables them.
    #[arg(long, default_value = "0.0.0.0:10249")]
    metrics_addr: String,
    /// This node's name (matches EndpointSlice nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// bpffs directory for the pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/svc")]
    bpffs: PathBuf,
    /// Node uplink interface(s) for the north-south XDP path (repeatable).
    #[arg(long)]
    uplink: Vec<String>,
    /// This node's address(es); endpoint addresses equal to one are refused (CVE-2021-25737).
    #[arg(long)]
    node_ip: Vec<Ipv4Addr>,
    /// Prefixes of the host-side pod veth names to attach to (comma-separated).
    #[arg(long, default_value = "veth", value_delimiter = ',')]
    pod_ifaces: Vec<String>,
    /// CIDRs of node addresses that serve NodePorts (kube-proxy's nodePortAddresses).
    #[arg(long, value_delimiter = ',')]
    nodeport_addresses: Vec<svc_agent::model::Ipv4Cidr>,
    /// cgroup v2 directory the socket hooks attach to.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Range ClusterIPs are allocated from for manifests that do not set one.
    #[arg(long, default_value = "10.96.0.0/16")]
    service_cidr: svc_agent::model::Ipv4Cidr,
    /// How often to check the --manifests directory for changes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// Test only: load a deliberately broken datapath to prove the tests catch it.
    #[arg(long, hide = true)]
    fault_inject: Vec<Fault>,
}

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
        Command::Run(args) => {
            if let Some(cgroup) = &args.cgroup {
                if !cgroup.join("cgroup.procs").exists() {
                    bail!("--cgroup {}: not a cgroup v2 directory", cgroup.display());
                }
            }
            if !args.uplink.is_empty()
                || !args.nodeport_addresses.is_empty()
                || args.cgroup.is_some()
            {
                info!(
                    uplink = ?args.uplink,
                    nodeport_addresses = ?args.nodeport_addresses,
                    cgroup = ?args.cgroup,
                    "north-south hooks (uplink XDP, NodePorts, cgroup socket hooks) are not in this \
                     build yet; these flags are recorded only"
                );
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
                bpffs: args.bpffs,
                pod_ifaces: args.pod_ifaces,
                metrics_addr,
                fault,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(svc_agent::run::run(cfg))
        }
    }
}
