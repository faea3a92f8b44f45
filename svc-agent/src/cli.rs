//! The agent's command line, in the library so that everything that starts the agent (the
//! DaemonSet manifests in `deploy/`, tests) can be checked against the one definition with
//! `Cli::try_parse_from` instead of a hand-kept copy of the flag names.
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use svc_common::{CtTimeouts, MAX_BACKENDS, MAX_CONNTRACK, MAX_FRONTENDS, MAX_SLOTS};

use crate::model::{parse_cidr_any, parse_service_cidrs, IpNet, ServiceCidrs};

/// Where the maps and links are pinned unless `--bpffs` says otherwise (every subcommand).
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/svc";

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
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// Read the pinned maps (services, conntrack, stats); no agent needed.
    #[command(subcommand)]
    Inspect(crate::inspect::InspectCommand),
    /// What the datapath would do with a new flow from SRC to DST, from the pinned maps.
    Explain(crate::inspect::ExplainArgs),
    /// What the datapath does with the packets of the flows given, one line per packet and
    /// program, until --count events or Ctrl-C; no agent needed.
    Trace(crate::trace::TraceArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Fault {
    /// Rewrite addresses and ports without updating the L4 checksum.
    SkipL4Csum,
    /// After the first sync, stop writing the maps while changes keep arriving (the health
    /// servers must then report the agent unhealthy).
    StallProgramming,
    /// Plan every Service whether it fits the service maps or not, as before the per-Service
    /// budget (`svc_core::budget`): one oversized Service then stops the whole plan.
    NoBudget,
}

/// `--log-format` / `logging.format`: kube-proxy's two formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// A kube-proxy configuration file (`KubeProxyConfiguration`, kubeproxy.config.k8s.io/
    /// v1alpha1, as in kubeadm's `kube-proxy` ConfigMap). Flags given on the command line win
    /// over the file; fields that do not apply to svc-lb are named in a warning.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Remove every pinned map and link under --bpffs (detaching the programs) and exit, as
    /// kube-proxy's --cleanup removes its rules; same as `svc-agent uninstall`.
    #[arg(long)]
    pub cleanup: bool,
    /// Directory of YAML manifests (Service, EndpointSlice, Endpoints), re-read on change.
    /// Without it, the agent follows the API server.
    #[arg(long, conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig for the API server (default: in-cluster config, $KUBECONFIG, ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Address for /metrics and our /healthz (200 once the first sync is programmed); `off` or
    /// empty disables them. kube-proxy's flag and default.
    #[arg(
        long,
        visible_alias = "metrics-addr",
        default_value = "127.0.0.1:10249"
    )]
    pub metrics_bind_address: String,
    /// Address for kube-proxy's /healthz and /livez (503 when a change has waited longer than
    /// 2 × --sync-period; /healthz also while the node is being deleted); `off` or empty
    /// disables them. kube-proxy's flag and default.
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: String,
    /// kube-proxy's sync period. svc-lb writes every change at once; this sets how long a
    /// change may wait before the health servers report the agent unhealthy (twice this).
    #[arg(long, value_name = "DURATION", default_value_t = Secs(30))]
    pub sync_period: Secs,
    /// This node's name (matches EndpointSlice nodeName); default: the host name, as
    /// kube-proxy.
    #[arg(long, visible_alias = "hostname-override", env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// The pods' CIDR range(s) (kube-proxy's --cluster-cidr): recorded and logged. svc-lb tells
    /// pod traffic by interface (--pod-ifaces), so nothing depends on it.
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Vec<String>,
    /// Log format: text, or json (one JSON object a line). `--logging-format` is kube-proxy's
    /// spelling.
    #[arg(
        long,
        visible_alias = "logging-format",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Log verbosity, kube-proxy's scale: 0–1 info, 2–4 debug, 5 and more trace. Without it,
    /// RUST_LOG (default info).
    #[arg(short = 'v', long = "v", value_name = "LEVEL")]
    pub verbosity: Option<u8>,
    /// bpffs directory for the pinned maps and links.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Node uplink interface(s) for the north-south XDP path (repeatable).
    #[arg(long)]
    pub uplink: Vec<String>,
    /// This node's address(es), IPv4 or IPv6: NodePorts are served on them, and endpoints at
    /// one of them (hostNetwork pods, the API server behind the `kubernetes` Service) are local
    /// backends. The first one of each family on this node is the preferred SNAT source.
    #[arg(long)]
    pub node_ip: Vec<std::net::IpAddr>,
    /// Prefixes of the host-side pod veth names to attach to (comma-separated).
    #[arg(long, default_value = "veth", value_delimiter = ',')]
    pub pod_ifaces: Vec<String>,
    /// CIDRs of node addresses that serve NodePorts (kube-proxy's nodePortAddresses); default:
    /// every --node-ip / Node address. One containing 127.0.0.1 (e.g. 127.0.0.0/8) also serves
    /// localhost NodePorts to the node's own processes. IPv4 and IPv6 CIDRs: each family's
    /// NodePorts are restricted by that family's CIDRs only (none: every address of it).
    #[arg(long, value_delimiter = ',', value_parser = parse_cidr_any)]
    pub nodeport_addresses: Vec<IpNet>,
    /// Allow-list for spec.externalIPs (comma-separated CIDRs): an external IP outside every
    /// CIDR is refused (CVE-2020-8554). Absent: every external IP is served, as kube-proxy does.
    /// IPv4 and IPv6 CIDRs; an external IP of a family no CIDR is of is refused.
    #[arg(long, value_delimiter = ',', num_args = 1.., value_parser = parse_cidr_any)]
    pub external_ip_cidrs: Option<Vec<IpNet>>,
    /// Serve exactly the Services labelled service.kubernetes.io/service-proxy-name=NAME, so
    /// this agent can run beside another proxy. Absent or empty: the Services without that
    /// label, as kube-proxy.
    #[arg(long, value_name = "NAME")]
    pub service_proxy_name: Option<String>,
    /// cgroup v2 directory the socket hooks attach to.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Socket-level load balancing for pods: the socket hooks also translate the sockets of
    /// pods in --cgroup (every other network namespace than the node's), so their connections
    /// go straight to a backend with no per-packet NAT. What a socket call cannot decide
    /// exactly as the per-packet path would (session affinity, loadBalancerSourceRanges, no
    /// endpoints, UDP connect() on kernels without bpf_sock_destroy) stays per packet.
    #[arg(long, default_value = "on", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), value_name = "on|off")]
    pub pod_socket_lb: bool,
    /// Ranges ClusterIPs are allocated from for manifests that do not set them: an IPv4 range
    /// and optionally an IPv6 one (`10.96.0.0/16,fd00:10:96::/112`: dual-stack, as
    /// kube-apiserver's --service-cluster-ip-range).
    #[arg(long, default_value = "10.96.0.0/16", value_parser = parse_service_cidrs,
          value_name = "IPV4-CIDR[,IPV6-CIDR]")]
    pub service_cidr: ServiceCidrs,
    /// How often to check the --manifests directory for changes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub poll_ms: u64,
    /// How XDP is attached to uplinks: auto (native where the driver supports it, never on a
    /// veth, otherwise none), native, generic, or off. Without XDP the tc uplink program alone
    /// serves north-south traffic.
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: crate::datapath::XdpChoice,
    /// How tc programs are attached: tcx links where the kernel has them (6.6+) and classic
    /// tc filters (clsact qdisc, cls_bpf at priority 0x5356) otherwise (auto), tcx, or classic.
    #[arg(long, value_enum, default_value = "auto")]
    pub tc_attach: crate::datapath::TcChoice,
    /// Source ports for source NAT of external traffic to remote backends (and for remapping
    /// a clashing client port): one or two ranges, e.g. `1024-29999,61000-65535`. Each new
    /// flow to one backend ip:port holds a port until it expires, so the ranges bound the
    /// rate of new flows per backend. A range may not overlap the node's ephemeral range
    /// (net.ipv4.ip_local_port_range: node sockets use it and the datapath does not see their
    /// flows) nor the NodePort range 30000–32767. Default: everything else above 1023, its
    /// two largest pieces (1024–29999 and 61000–65535 with Linux's defaults).
    #[arg(long, value_name = "LOW-HIGH[,LOW-HIGH]")]
    pub snat_port_range: Option<crate::snat_ports::SnatRangeArg>,
    /// Load the programs with their kernel debug messages (aya-log) on and show them in this
    /// log (target `svc_ebpf`, level warn/debug). Off by default: the verifier then removes
    /// the messages' code, so the datapath pays nothing for them. Changing it reloads the
    /// programs (flows are kept: the maps are pinned).
    #[arg(long)]
    pub bpf_debug_log: bool,
    /// Test only: load a deliberately broken datapath to prove the tests catch it.
    #[arg(long, hide = true)]
    pub fault_inject: Vec<Fault>,
    #[command(flatten)]
    pub conntrack: ConntrackArgs,
    #[command(flatten)]
    pub service_maps: ServiceMapArgs,
}

/// Sizes of the service maps and the share one Service may take of them.
///
/// Sizing rule: frontends = Σ over Services of ports × (1 ClusterIP + external IPs + LB IPs +
/// node addresses for NodePorts, twice where `externalTrafficPolicy: Local` adds a scoped
/// entry); slots = Σ over frontends of their endpoints; backends = distinct (endpoint address,
/// target port) pairs. Add 50 % headroom for rollouts (old and new pods are both endpoints for
/// a while). Sizes apply when a map is created; a pinned map keeps its size (`svc-agent
/// uninstall` removes them). A Service that does not fit is reported and not programmed (or
/// kept as it was), never at the cost of the others (see `svc_core::budget`).
#[derive(Clone, Debug, clap::Args)]
pub struct ServiceMapArgs {
    /// Entries of SVC_FRONTENDS (~100 bytes each in the kernel).
    #[arg(long, value_name = "ENTRIES", default_value_t = MAX_FRONTENDS,
          value_parser = clap::value_parser!(u32).range(16..))]
    pub max_frontends: u32,
    /// Entries of SVC_SLOTS (~80 bytes each).
    #[arg(long, value_name = "ENTRIES", default_value_t = MAX_SLOTS,
          value_parser = clap::value_parser!(u32).range(16..))]
    pub max_slots: u32,
    /// Entries of SVC_BACKENDS (~90 bytes each).
    #[arg(long, value_name = "ENTRIES", default_value_t = MAX_BACKENDS,
          value_parser = clap::value_parser!(u32).range(16..))]
    pub max_backends: u32,
    /// The largest share of each service map one Service may use, in percent: a Service over
    /// it is refused (and reported) however empty the maps are, so one object can never take
    /// Service routing away from the rest of the node.
    #[arg(long, value_name = "PERCENT", default_value_t = 25,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub max_service_share: u8,
}

/// Conntrack lifecycle flags, spelled as kube-proxy's where kube-proxy has them. Durations are
/// Go durations (`24h`, `1h0m0s`, `30s`, `1m30s`), whole seconds, at least `1s`.
#[derive(Clone, Debug, clap::Args)]
pub struct ConntrackArgs {
    /// Idle timeout of an established TCP flow (kube-proxy's flag and default).
    #[arg(long, value_name = "DURATION", default_value_t = Secs(CtTimeouts::DEFAULT.tcp_established_s))]
    pub conntrack_tcp_timeout_established: Secs,
    /// Idle timeout of a TCP flow after the first FIN (kube-proxy's flag and default).
    #[arg(long, value_name = "DURATION", default_value_t = Secs(CtTimeouts::DEFAULT.tcp_close_wait_s))]
    pub conntrack_tcp_timeout_close_wait: Secs,
    /// Idle timeout of a UDP flow that is unanswered or a short exchange (kube-proxy's flag).
    #[arg(long, value_name = "DURATION", default_value_t = Secs(CtTimeouts::DEFAULT.udp_s))]
    pub conntrack_udp_timeout: Secs,
    /// Idle timeout of a UDP flow answered and active for more than 2 s (kube-proxy's flag).
    #[arg(long, value_name = "DURATION", default_value_t = Secs(CtTimeouts::DEFAULT.udp_stream_s))]
    pub conntrack_udp_timeout_stream: Secs,
    /// Timeout of a TCP flow whose SYN was not answered (netfilter's default).
    #[arg(long, value_name = "DURATION", default_value_t = Secs(CtTimeouts::DEFAULT.tcp_syn_sent_s))]
    pub conntrack_tcp_timeout_syn_sent: Secs,
    /// Timeout of a TCP flow after FINs both ways or a RST. Short because a closed entry never
    /// blocks a new flow (a SYN reopens it); it only bounds how long stragglers are translated.
    #[arg(long, value_name = "DURATION", default_value_t = Secs(CtTimeouts::DEFAULT.tcp_close_s))]
    pub conntrack_tcp_timeout_close: Secs,
    /// Entries of the conntrack map (SVC_CT), applied when the map is created (a pinned map
    /// keeps its size). Every flow takes 2 entries (forward and reply); size it as
    /// new flows/s × mean flow lifetime in s (including the idle timeout that ends it) × 2,
    /// plus 50 % headroom. When full, the least recently used entry is evicted and that flow's
    /// next packet is balanced afresh (a TCP mid-stream packet is dropped). The kernel
    /// allocates ~145 bytes per entry up front: ~36 MiB for the default, ~146 MiB for 1M.
    #[arg(long, value_name = "ENTRIES", default_value_t = MAX_CONNTRACK,
          value_parser = clap::value_parser!(u32).range(1024..))]
    pub conntrack_max: u32,
    /// How often the garbage collector scans the conntrack map for expired flows.
    #[arg(long, value_name = "DURATION", default_value_t = Secs(10))]
    pub conntrack_gc_interval: Secs,
}

impl ConntrackArgs {
    /// The timeouts the datapath and the garbage collector use.
    pub fn timeouts(&self) -> CtTimeouts {
        CtTimeouts {
            tcp_syn_sent_s: self.conntrack_tcp_timeout_syn_sent.0,
            tcp_established_s: self.conntrack_tcp_timeout_established.0,
            tcp_close_wait_s: self.conntrack_tcp_timeout_close_wait.0,
            tcp_close_s: self.conntrack_tcp_timeout_close.0,
            udp_s: self.conntrack_udp_timeout.0,
            udp_stream_s: self.conntrack_udp_timeout_stream.0,
        }
    }
}

/// A whole number of seconds (≥ 1), written and read as a Go duration (`time.ParseDuration`
/// syntax, what kube-proxy's flags take): `24h`, `1h0m0s`, `90s`, `1.5m`, `120000ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Secs(pub u32);

impl std::fmt::Display for Secs {
    /// Go's `Duration.String()`: `24h0m0s`, `1m30s`, `30s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (h, m, s) = (self.0 / 3600, self.0 / 60 % 60, self.0 % 60);
        if h > 0 {
            write!(f, "{h}h{m}m{s}s")
        } else if m > 0 {
            write!(f, "{m}m{s}s")
        } else {
            write!(f, "{s}s")
        }
    }
}

impl std::str::FromStr for Secs {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad =
            |why: &str| format!("{text:?} is not a duration such as 24h, 1h0m0s or 30s: {why}");
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(bad("empty"));
        }
        if rest.starts_with(['-', '+']) {
            return Err(bad("a timeout cannot be signed"));
        }
        let mut nanos: u128 = 0;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let (num, tail) = rest.split_at(num_len);
            if num.is_empty() || num == "." || num.matches('.').count() > 1 {
                return Err(bad("expected a number"));
            }
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let per: u128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "" => return Err(bad("missing unit (ns, us, ms, s, m, h)")),
                _ => return Err(bad(&format!("unknown unit {unit:?}"))),
            };
            let (int, frac) = num.split_once('.').unwrap_or((num, ""));
            let int: u128 = if int.is_empty() {
                0
            } else {
                int.parse().map_err(|_| bad("number too large"))?
            };
            let mut value = int.checked_mul(per).ok_or_else(|| bad("too large"))?;
            let mut scale = per;
            for d in frac.chars().take(18) {
                scale /= 10;
                value += u128::from(d.to_digit(10).unwrap_or(0)) * scale;
            }
            nanos = nanos.checked_add(value).ok_or_else(|| bad("too large"))?;
            rest = tail;
        }
        if !nanos.is_multiple_of(1_000_000_000) {
            return Err(bad("timeouts are whole seconds"));
        }
        let secs = nanos / 1_000_000_000;
        if secs == 0 {
            return Err(bad("must be at least 1s"));
        }
        u32::try_from(secs)
            .map(Secs)
            .map_err(|_| bad("more than 2^32 - 1 seconds"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_to_whole_seconds() {
        for (text, secs) in [
            ("24h", 86_400),
            ("1h0m0s", 3_600),
            ("30s", 30),
            ("120s", 120),
            ("2m", 120),
            ("1m30s", 90),
            ("1.5h", 5_400),
            ("120000ms", 120),
            ("10000000000ns", 10),
            ("1h1s", 3_601),
        ] {
            assert_eq!(text.parse::<Secs>(), Ok(Secs(secs)), "{text}");
        }
        for text in [
            "", "30", "-30s", "1.5s", "500ms", "0s", "3d", "1x", "h", "..5s", "5000000h",
        ] {
            assert!(text.parse::<Secs>().is_err(), "{text} must be refused");
        }
    }

    #[test]
    fn durations_print_as_go_does_and_read_back() {
        for (secs, text) in [
            (86_400, "24h0m0s"),
            (3_600, "1h0m0s"),
            (90, "1m30s"),
            (30, "30s"),
        ] {
            assert_eq!(Secs(secs).to_string(), text);
            assert_eq!(text.parse::<Secs>(), Ok(Secs(secs)));
        }
    }

    fn run_args(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec!["svc-agent", "run", "--node-name", "n1"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Run(args) => args,
            _ => unreachable!("parsed `run`"),
        })
    }

    #[test]
    fn snat_port_range_parses_or_is_refused() {
        use crate::snat_ports::SnatRangeArg;
        assert_eq!(run_args(&[]).expect("defaults parse").snat_port_range, None);
        let args = run_args(&["--snat-port-range", "1024-29999,61000-65535"]).expect("valid");
        assert_eq!(
            args.snat_port_range,
            Some(SnatRangeArg(vec![1024..=29_999, 61_000..=65_535]))
        );
        for bad in ["65535-61000", "1-2,3-4,5-6", "61000-70000", "61000"] {
            let err = run_args(&["--snat-port-range", bad])
                .err()
                .expect(bad)
                .to_string();
            assert!(err.contains("--snat-port-range"), "{bad}: {err}");
        }
    }

    #[test]
    fn conntrack_flags_default_to_the_abi_defaults() {
        let args = run_args(&[]).expect("defaults parse");
        assert_eq!(args.conntrack.timeouts(), CtTimeouts::DEFAULT);
        assert_eq!(args.conntrack.conntrack_max, MAX_CONNTRACK);
        assert_eq!(args.conntrack.conntrack_gc_interval, Secs(10));
    }

    #[test]
    fn conntrack_flags_take_kube_proxy_spellings() {
        let args = run_args(&[
            "--conntrack-tcp-timeout-established=1h0m0s",
            "--conntrack-tcp-timeout-close-wait",
            "30m",
            "--conntrack-udp-timeout=10s",
            "--conntrack-udp-timeout-stream=5m",
            "--conntrack-tcp-timeout-syn-sent=60s",
            "--conntrack-tcp-timeout-close=5s",
            "--conntrack-max=1048576",
        ])
        .expect("valid flags");
        assert_eq!(
            args.conntrack.timeouts(),
            CtTimeouts {
                tcp_syn_sent_s: 60,
                tcp_established_s: 3_600,
                tcp_close_wait_s: 1_800,
                tcp_close_s: 5,
                udp_s: 10,
                udp_stream_s: 300,
            }
        );
        assert_eq!(args.conntrack.conntrack_max, 1_048_576);
    }

    #[test]
    fn a_bad_duration_names_its_flag() {
        let err = run_args(&["--conntrack-udp-timeout=30"])
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("--conntrack-udp-timeout"), "{err}");
        assert!(err.contains("missing unit"), "{err}");
        let err = run_args(&["--conntrack-max=10"])
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("--conntrack-max"), "{err}");
    }

    #[test]
    fn pod_socket_lb_is_on_unless_turned_off() {
        assert!(run_args(&[]).unwrap().pod_socket_lb);
        for (value, on) in [
            ("on", true),
            ("off", false),
            ("true", true),
            ("false", false),
        ] {
            let args = run_args(&["--pod-socket-lb", value]).unwrap();
            assert_eq!(args.pod_socket_lb, on, "--pod-socket-lb {value}");
        }
        let err = run_args(&["--pod-socket-lb", "maybe"])
            .err()
            .expect("refused");
        assert!(err.to_string().contains("--pod-socket-lb"), "{err}");
    }
}
