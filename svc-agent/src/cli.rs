//! The agent's command line, in the library so that everything that starts the agent (the
//! DaemonSet manifests in `deploy/`, tests) can be checked against the one definition with
//! `Cli::try_parse_from` instead of a hand-kept copy of the flag names.
use std::{net::Ipv4Addr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::model::Ipv4Cidr;

#[derive(Parser)]
#[command(
    name = "svc-agent",
    version,
    about = "svc-lb agent: keeps the eBPF service maps in sync with Services"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start-up; boxing would only obscure the match in main"
)]
pub enum Command {
    /// Load and attach the datapath and keep its maps in sync with the Services.
    Run(RunArgs),
    /// Detach the programs and remove every pinned map and link under --bpffs.
    Uninstall {
        #[arg(long, default_value = "/sys/fs/bpf/svc")]
        bpffs: PathBuf,
    },
    /// Read the pinned maps (services, conntrack, stats); no agent needed.
    #[command(subcommand)]
    Inspect(crate::inspect::InspectCommand),
    /// What the datapath would do with a new flow from SRC to DST, from the pinned maps.
    Explain(crate::inspect::ExplainArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Fault {
    /// Rewrite addresses and ports without updating the L4 checksum.
    SkipL4Csum,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Directory of YAML manifests (Service, EndpointSlice, Endpoints), re-read on change.
    /// Without it, the agent follows the API server.
    #[arg(long, conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig for the API server (default: in-cluster config, $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Address for /metrics and /healthz; `off` disables them.
    #[arg(long, default_value = "0.0.0.0:10249")]
    pub metrics_addr: String,
    /// This node's name (matches EndpointSlice nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// bpffs directory for the pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/svc")]
    pub bpffs: PathBuf,
    /// Node uplink interface(s) for the north-south XDP path (repeatable).
    #[arg(long)]
    pub uplink: Vec<String>,
    /// This node's address(es); endpoint addresses equal to one are refused (CVE-2021-25737).
    #[arg(long)]
    pub node_ip: Vec<Ipv4Addr>,
    /// Prefixes of the host-side pod veth names to attach to (comma-separated).
    #[arg(long, default_value = "veth", value_delimiter = ',')]
    pub pod_ifaces: Vec<String>,
    /// CIDRs of node addresses that serve NodePorts (kube-proxy's nodePortAddresses); default:
    /// every --node-ip / Node address. One containing 127.0.0.1 (e.g. 127.0.0.0/8) also serves
    /// localhost NodePorts to the node's own processes.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<Ipv4Cidr>,
    /// Allow-list for spec.externalIPs (comma-separated CIDRs): an external IP outside every
    /// CIDR is refused (CVE-2020-8554). Absent: every external IP is served, as kube-proxy does.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub external_ip_cidrs: Option<Vec<Ipv4Cidr>>,
    /// cgroup v2 directory the socket hooks attach to.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Range ClusterIPs are allocated from for manifests that do not set one.
    #[arg(long, default_value = "10.96.0.0/16")]
    pub service_cidr: Ipv4Cidr,
    /// How often to check the --manifests directory for changes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub poll_ms: u64,
    /// Test only: load a deliberately broken datapath to prove the tests catch it.
    /// How XDP is attached to uplinks: native where the driver supports it (auto), native,
    /// generic, or off (the tc uplink program alone then serves north-south traffic).
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: crate::datapath::XdpChoice,
    #[arg(long, hide = true)]
    pub fault_inject: Vec<Fault>,
}
