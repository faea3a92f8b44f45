//! `svc-agent inspect …` and `svc-agent explain …`: the datapath's state read straight from
//! the maps pinned under `--bpffs`, with no agent running (in the spirit of
//! `cilium-dbg service list`).
//!
//! # Layout
//! - reading: [`read_snapshot`], [`read_conntrack`], [`read_stats`] open the pins read-only in
//!   spirit (they never write) and fail with an [`InspectError`] naming the path.
//! - views: [`ServiceView`], [`FlowView`], [`StatView`] and [`explain::Explanation`] are what
//!   `-o json` prints. Their field names are the stable interface for tools; flags are decoded
//!   to words (`nodeport`, `local`, `snat`, …) with the raw bits beside them.
//! - [`explain`]: the pure decision for one flow, table-tested against lb.rs's branches.
//! - rendering: aligned tables for people, written with [`Table`].
//!
//! # JSON
//! - `inspect services`: an array of [`ServiceView`] ordered by (address, port, protocol,
//!   scope), IPv4 frontends then IPv6 ones ([`ServiceView6`], the same fields with IPv6
//!   addresses); `backends` in slot order; `problems` lists slots or backends the maps lack.
//! - `inspect conntrack`: an array of [`FlowView`], `SVC_CT`'s then `SVC_CT6`'s
//!   ([`FlowView6`]); `src…dst_port` is the tuple a packet
//!   arrives with, `new_*` what the entry rewrites it to, `age_ms`/`idle_ms` relative to
//!   `CLOCK_MONOTONIC` now (the clock `bpf_ktime_get_ns` reads), `state` the lifecycle state
//!   and `expires_in_s` how long the flow lives without another packet (`null`, with
//!   `expired: true`, once it has expired), judged with the timeouts the agent pinned.
//! - `inspect stats`: an array of [`StatView`] (`hook`, `reason`, `packets`; `per_cpu` with
//!   `--per-cpu`).
//! - `explain`: one [`explain::Explanation`].
use std::{collections::BTreeMap, io::Write as _, net::IpAddr, path::PathBuf, str::FromStr};

use serde::{Deserialize, Serialize};
use svc_common::{ct_peer_key, CtTimeouts, PROTO_TCP, PROTO_UDP};

use crate::datapath::TIMEOUTS_PIN;
pub use crate::dataplane::read::{
    read_affinity, read_affinity6, read_config, read_conntrack, read_conntrack6, read_snapshot,
    read_snat_ports, read_stats, read_timeouts, PinError,
};
use crate::dataplane::MapSnapshot;
pub use svc_core::names::{
    backend_flag_words, ct_flag_words, ct_state_name, frontend_flag_words, proto_name,
    remaining_ms, scope_name, source_ranges_of, tcp_flag_words,
};

pub use svc_core::explain;
pub mod links;
mod views;

pub use views::{
    all_service_views, service_views, service_views6, stat_views, AnyFlowView, AnyServiceView,
    FlowView, FlowView6, FlowViewOf, ServiceView, ServiceView6, ServiceViewOf, SlotView,
    SlotViewOf, StatView, Table,
};
use views::{render_explanation, render_flows, render_services, render_stats};

pub use crate::cli::DEFAULT_BPFFS;

/// `inspect`/`explain` failed: reading the pins (see [`PinError`]), the clock, or the output.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("reading CLOCK_MONOTONIC: {0}")]
    Clock(std::io::Error),
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("writing to stdout: {0}")]
    Output(std::io::Error),
}

// ---------------------------------------------------------------------------------------------
// Command line (wired into `crate::cli::Command`).

/// Output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, for people.
    #[default]
    Table,
    /// Stable field names, for tools (see the module docs of `svc_agent::inspect`).
    Json,
}

/// Options every inspect command takes.
#[derive(Clone, Debug, clap::Args)]
pub struct Common {
    /// bpffs directory the agent pinned its maps under (its --bpffs).
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum InspectCommand {
    /// Every frontend (address:port/proto, scope, flags) with its backends in slot order.
    Services(Common),
    /// Tracked flows: tuple → rewrite, flags, TCP flags seen, packets/bytes, age and idle time.
    Conntrack {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        filter: CtFilter,
    },
    /// Where the programs are attached (pinned links), with each uplink's XDP mode (native or
    /// generic) as the kernel reports it. Run it in the node's network namespace.
    Links(Common),
    /// Datapath packet counters by hook and reason, summed over CPUs. The datapath keeps no
    /// per-interface counters (SVC_STATS is indexed by hook × reason only).
    Stats {
        #[command(flatten)]
        common: Common,
        /// One column per CPU as well as the sum.
        #[arg(long)]
        per_cpu: bool,
        /// Also list counters that are zero.
        #[arg(long)]
        all: bool,
    },
}

/// `inspect conntrack` filters; all given must match. They apply to the tuple a packet
/// arrives with (the map key), not to the rewrite.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct CtFilter {
    /// Source address of the tuple (IPv4 or IPv6).
    #[arg(long)]
    pub src: Option<IpAddr>,
    /// Destination address of the tuple (IPv4 or IPv6).
    #[arg(long)]
    pub dst: Option<IpAddr>,
    /// Source or destination port of the tuple.
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(long, value_enum)]
    pub proto: Option<Proto>,
    #[arg(long, value_enum)]
    pub dir: Option<Dir>,
    #[arg(long)]
    pub frontend_id: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dir {
    Forward,
    Reply,
}

/// `svc-agent explain SRC_IP[:PORT] DST_IP:PORT[/PROTO]`.
#[derive(Clone, Debug, clap::Args)]
pub struct ExplainArgs {
    /// Client address, with its port to look for an existing conntrack entry (10.244.1.5:41234).
    pub src: SrcArg,
    /// Destination as the client addresses it: IP:PORT/PROTO (proto tcp or udp; default tcp).
    pub dst: DstArg,
    /// Where the flow enters: a pod on this node, the wire through an uplink, or a process of
    /// the node (socket hooks).
    #[arg(long, value_enum, default_value = "pod")]
    pub from: OriginArg,
    #[command(flatten)]
    pub common: Common,
}

/// `--from`: svc-core's [`explain::Origin`] as the command line names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OriginArg {
    /// A pod on this node: tc ingress on the host side of its veth.
    Pod,
    /// The wire, through a node uplink: XDP, then tc ingress for what XDP passes on.
    Uplink,
    /// A process in the node's network namespace: the cgroup socket hooks.
    Host,
}

impl From<OriginArg> for explain::Origin {
    fn from(o: OriginArg) -> Self {
        match o {
            OriginArg::Pod => Self::Pod,
            OriginArg::Uplink => Self::Uplink,
            OriginArg::Host => Self::Host,
        }
    }
}

/// `IP` or `IP:PORT`; an IPv6 address is bare (`fd00::5`) or bracketed, and bracketed
/// before a port (`[fd00::5]:41234`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SrcArg {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

/// `addr` and the text after `addr:` of `IPV4[:REST]`, `[IPV6][:REST]` or a bare IPv6.
fn split_host(s: &str) -> Result<(IpAddr, Option<&str>), String> {
    let (addr, rest) = if let Some(inner) = s.strip_prefix('[') {
        let (addr, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: no ']' after the IPv6 address"))?;
        let rest = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("{s:?}: expected ':' after ']'"))?,
            ),
        };
        (addr, rest)
    } else if s.matches(':').count() > 1 {
        (s, None)
    } else {
        match s.split_once(':') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        }
    };
    let addr = addr.parse().map_err(|e| format!("address {addr:?}: {e}"))?;
    Ok((addr, rest))
}

impl FromStr for SrcArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, port) = split_host(s)?;
        let port = port
            .map(|p| p.parse().map_err(|e| format!("port {p:?}: {e}")))
            .transpose()?;
        Ok(Self { addr, port })
    }
}

/// `IP:PORT/PROTO` (`/PROTO` optional, default tcp); IPv6 as `[IP]:PORT/PROTO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DstArg {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
}

impl FromStr for DstArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (rest, proto) = match s.rsplit_once('/') {
            Some((r, "tcp")) => (r, PROTO_TCP),
            Some((r, "udp")) => (r, PROTO_UDP),
            Some((_, p)) => return Err(format!("protocol {p:?}: expected tcp or udp")),
            None => (s, PROTO_TCP),
        };
        let (addr, port) = split_host(rest)?;
        let port = port.ok_or_else(|| format!("{s:?}: expected IP:PORT/PROTO"))?;
        Ok(Self {
            addr,
            port: port.parse().map_err(|e| format!("port {port:?}: {e}"))?,
            proto,
        })
    }
}

/// Runs one `inspect` subcommand, printing to stdout.
pub fn run_inspect(cmd: &InspectCommand) -> Result<(), InspectError> {
    let text =
        match cmd {
            InspectCommand::Services(c) => {
                let services = all_service_views(&read_snapshot(&c.bpffs)?);
                render(c.output, &services, render_services)?
            }
            InspectCommand::Conntrack { common, filter } => {
                let now = monotonic_now_ns()?;
                let timeouts = read_timeouts(&common.bpffs)?.unwrap_or(CtTimeouts::DEFAULT);
                let table = read_conntrack(&common.bpffs)?;
                // Pins of an agent that predates IPv6 have no SVC_CT6: no IPv6 flows then.
                let table6 = match read_conntrack6(&common.bpffs) {
                    Err(PinError::NotPinned { .. }) => BTreeMap::new(),
                    other => other?,
                };
                let mut flows: Vec<AnyFlowView> = table
                    .iter()
                    .filter(|(k, e)| filter.matches(*k, *e))
                    .map(|(k, e)| {
                        let peer = table.get(&ct_peer_key(k, e));
                        AnyFlowView::V4(FlowView::new(k, e, peer, now, &timeouts))
                    })
                    .collect();
                flows.extend(table6.iter().filter(|(k, e)| filter.matches(*k, *e)).map(
                    |(k, e)| {
                        let peer = table6.get(&ct_peer_key(k, e));
                        AnyFlowView::V6(FlowView6::new(k, e, peer, now, &timeouts))
                    },
                ));
                let timeouts = read_timeouts(&common.bpffs)?;
                let mut text = render(common.output, &flows, render_flows)?;
                if timeouts.is_none() && common.output == Format::Table {
                    text.push_str(&format!(
                        "(no {TIMEOUTS_PIN} pinned: lifetimes use the default timeouts)\n"
                    ));
                }
                text
            }
            InspectCommand::Links(c) => {
                let links = links::link_views(&c.bpffs)?;
                render(c.output, &links, links::render_links)?
            }
            InspectCommand::Stats {
                common,
                per_cpu,
                all,
            } => {
                let stats = stat_views(&read_stats(&common.bpffs)?, *per_cpu, *all);
                render(common.output, &stats, |s| render_stats(s, *per_cpu))?
            }
        };
    print(&text)
}

/// Runs `explain`, printing to stdout.
pub fn run_explain(args: &ExplainArgs) -> Result<(), InspectError> {
    let bpffs = &args.common.bpffs;
    let snap = explain::Snapshot {
        maps: read_snapshot(bpffs)?,
        config: read_config(bpffs)?,
        conntrack: read_conntrack(bpffs)?,
        // Pins of an agent older than session affinity lack the map: nothing is sticky then.
        affinity: match read_affinity(bpffs) {
            Err(PinError::NotPinned { .. }) => BTreeMap::new(),
            other => other?,
        },
        // Likewise for the IPv6 maps of an agent that predates them.
        conntrack6: match read_conntrack6(bpffs) {
            Err(PinError::NotPinned { .. }) => BTreeMap::new(),
            other => other?,
        },
        affinity6: match read_affinity6(bpffs) {
            Err(PinError::NotPinned { .. }) => BTreeMap::new(),
            other => other?,
        },
        now_ns: monotonic_now_ns()?,
        ct_timeouts: read_timeouts(bpffs)?,
        snat_ports: read_snat_ports(bpffs)?,
    };
    let query = explain::Query {
        src: args.src.addr,
        src_port: args.src.port,
        dst: args.dst.addr,
        dst_port: args.dst.port,
        proto: args.dst.proto,
        origin: args.from.into(),
    };
    let e = explain::explain(&snap, &query);
    let text = render(args.common.output, &e, render_explanation)?;
    print(&text)
}

fn render<T: Serialize + ?Sized>(
    format: Format,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<String, InspectError> {
    Ok(match format {
        Format::Table => table(value),
        Format::Json => serde_json::to_string_pretty(value)? + "\n",
    })
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not an error.
fn print(text: &str) -> Result<(), InspectError> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(InspectError::Output),
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding.

/// `CLOCK_MONOTONIC` now, in ns: the clock of `bpf_ktime_get_ns`, which stamps conntrack.
pub fn monotonic_now_ns() -> Result<u64, InspectError> {
    crate::conntrack::monotonic_now_ns().map_err(InspectError::Clock)
}

fn words_or_dash(w: &[String]) -> String {
    if w.is_empty() {
        "-".into()
    } else {
        w.join(",")
    }
}

#[cfg(test)]
mod tests;
