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
//!   scope); `backends` in slot order; `problems` lists slots or backends the maps lack.
//! - `inspect conntrack`: an array of [`FlowView`]; `src…dst_port` is the tuple a packet
//!   arrives with, `new_*` what the entry rewrites it to, `age_ms`/`idle_ms` relative to
//!   `CLOCK_MONOTONIC` now (the clock `bpf_ktime_get_ns` reads), `state` the lifecycle state
//!   and `expires_in_s` how long the flow lives without another packet (`null`, with
//!   `expired: true`, once it has expired), judged with the timeouts the agent pinned.
//! - `inspect stats`: an array of [`StatView`] (`hook`, `reason`, `packets`; `per_cpu` with
//!   `--per-cpu`).
//! - `explain`: one [`explain::Explanation`].
use std::{
    collections::BTreeMap, fmt::Write as _, io::Write as _, net::Ipv4Addr, path::PathBuf,
    str::FromStr,
};

use serde::{Deserialize, Serialize};
use svc_common::{
    ct_peer_key, stat_index, CtEntry, CtKey, CtTimeouts, ALL_HOOKS, ALL_REASONS, CT_DIR_FORWARD,
    PROTO_TCP, PROTO_UDP,
};

use crate::datapath::TIMEOUTS_PIN;
pub use crate::dataplane::read::{
    read_affinity, read_config, read_conntrack, read_snapshot, read_stats, read_timeouts, PinError,
};
use crate::dataplane::MapSnapshot;
pub use svc_core::names::{
    backend_flag_words, ct_flag_words, ct_state_name, frontend_flag_words, proto_name,
    remaining_ms, scope_name, source_ranges_of, tcp_flag_words,
};

pub use svc_core::explain;
pub mod links;

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
    /// Source address of the tuple.
    #[arg(long)]
    pub src: Option<Ipv4Addr>,
    /// Destination address of the tuple.
    #[arg(long)]
    pub dst: Option<Ipv4Addr>,
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

/// `IP` or `IP:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SrcArg {
    pub addr: Ipv4Addr,
    pub port: Option<u16>,
}

impl FromStr for SrcArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, port) = match s.split_once(':') {
            Some((a, p)) => (a, Some(p.parse().map_err(|e| format!("port {p:?}: {e}"))?)),
            None => (s, None),
        };
        Ok(Self {
            addr: addr.parse().map_err(|e| format!("address {addr:?}: {e}"))?,
            port,
        })
    }
}

/// `IP:PORT/PROTO` (`/PROTO` optional, default tcp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DstArg {
    pub addr: Ipv4Addr,
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
        let (addr, port) = rest
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected IP:PORT/PROTO"))?;
        Ok(Self {
            addr: addr.parse().map_err(|e| format!("address {addr:?}: {e}"))?,
            port: port.parse().map_err(|e| format!("port {port:?}: {e}"))?,
            proto,
        })
    }
}

/// Runs one `inspect` subcommand, printing to stdout.
pub fn run_inspect(cmd: &InspectCommand) -> Result<(), InspectError> {
    let text = match cmd {
        InspectCommand::Services(c) => {
            let services = service_views(&read_snapshot(&c.bpffs)?);
            render(c.output, &services, render_services)?
        }
        InspectCommand::Conntrack { common, filter } => {
            let now = monotonic_now_ns()?;
            let timeouts = read_timeouts(&common.bpffs)?;
            let table = read_conntrack(&common.bpffs)?;
            let flows: Vec<FlowView> = table
                .iter()
                .filter(|(k, e)| filter.matches(k, e))
                .map(|(k, e)| {
                    let peer = table.get(&ct_peer_key(k, e));
                    FlowView::new(k, e, peer, now, &timeouts.unwrap_or(CtTimeouts::DEFAULT))
                })
                .collect();
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
        now_ns: monotonic_now_ns()?,
        ct_timeouts: read_timeouts(bpffs)?,
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

// ---------------------------------------------------------------------------------------------
// Services.

/// One frontend map entry and its backends (`inspect services -o json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    /// Frontend id (what slots and conntrack entries name).
    pub id: u32,
    pub address: Ipv4Addr,
    pub port: u16,
    /// `tcp`, `udp` (or the protocol number).
    pub protocol: String,
    /// `any` (every hook) or `external` (uplink hooks, `externalTrafficPolicy: Local`).
    pub scope: String,
    /// `nodeport`, `external-ip`, `external-scope`, `drop-no-backend`, `source-ranges`,
    /// `deny-node`.
    pub flags: Vec<String>,
    pub flags_raw: u32,
    pub affinity_timeout_s: u32,
    /// Valid slots (`1..=backend_count`); 0: new flows are rejected (or dropped).
    pub backend_count: u32,
    /// Slots `1..=backend_count` in order, those present in the maps.
    pub backends: Vec<SlotView>,
    /// Slots or backends the counted range names but the maps lack (should be empty).
    pub problems: Vec<String>,
    /// The client prefixes allowed to open flows (`loadBalancerSourceRanges`), with
    /// `source-ranges`; empty otherwise.
    #[serde(default)]
    pub source_ranges: Vec<String>,
}

/// One slot of a frontend and the backend it names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotView {
    pub slot: u32,
    pub backend_id: u32,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    /// `local`, `terminating`.
    pub flags: Vec<String>,
    pub flags_raw: u8,
}

/// Every frontend with its slots resolved, ordered by (address, port, protocol, scope).
pub fn service_views(snap: &MapSnapshot) -> Vec<ServiceView> {
    snap.frontends
        .iter()
        .map(|(key, fe)| {
            let mut backends = Vec::new();
            let mut problems = Vec::new();
            for slot in 1..=fe.backend_count {
                let sk = svc_common::SlotKey {
                    frontend_id: fe.id,
                    slot,
                };
                let Some(s) = snap.slots.get(&sk) else {
                    problems.push(format!("slot {slot} missing"));
                    continue;
                };
                let Some(b) = snap.backends.get(&s.backend_id) else {
                    problems.push(format!("slot {slot}: backend {} missing", s.backend_id));
                    continue;
                };
                backends.push(SlotView {
                    slot,
                    backend_id: s.backend_id,
                    address: b.addr.into(),
                    port: b.port,
                    protocol: proto_name(b.proto),
                    flags: backend_flag_words(b.flags),
                    flags_raw: b.flags,
                });
            }
            ServiceView {
                id: fe.id,
                address: key.addr.into(),
                port: key.port,
                protocol: proto_name(key.proto),
                scope: scope_name(key.scope),
                flags: frontend_flag_words(fe.flags),
                flags_raw: fe.flags,
                affinity_timeout_s: fe.affinity_timeout_s,
                backend_count: fe.backend_count,
                backends,
                problems,
                source_ranges: source_ranges_of(snap, fe.id),
            }
        })
        .collect()
}

/// Left-aligned columns separated by two spaces; trailing blanks trimmed.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let _ = write!(line, "{cell:<w$}  ", w = width[c]);
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn render_services(services: &Vec<ServiceView>) -> String {
    let mut t = Table::new(&[
        "ID", "FRONTEND", "SCOPE", "FLAGS", "COUNT", "SLOT", "BACKEND", "BE-ID", "BE-FLAGS",
    ]);
    for s in services {
        let head = vec![
            s.id.to_string(),
            format!("{}:{}/{}", s.address, s.port, s.protocol),
            s.scope.clone(),
            words_or_dash(&s.flags),
            s.backend_count.to_string(),
        ];
        let mut tails: Vec<Vec<String>> = s
            .backends
            .iter()
            .map(|b| {
                vec![
                    b.slot.to_string(),
                    format!("{}:{}/{}", b.address, b.port, b.protocol),
                    b.backend_id.to_string(),
                    words_or_dash(&b.flags),
                ]
            })
            .collect();
        tails.extend(s.problems.iter().map(|p| vec!["!".into(), p.clone()]));
        if !s.source_ranges.is_empty() {
            tails.push(vec![
                "src".into(),
                format!("allowed from {}", s.source_ranges.join(", ")),
            ]);
        }
        if tails.is_empty() {
            tails.push(vec![
                "-".into(),
                "(none: new flows rejected or dropped)".into(),
            ]);
        }
        for (i, tail) in tails.into_iter().enumerate() {
            let mut row = if i == 0 {
                head.clone()
            } else {
                vec![String::new(); head.len()]
            };
            row.extend(tail);
            t.row(row);
        }
    }
    let mut out = t.render();
    let _ = writeln!(out, "{} frontends", services.len());
    out
}

// ---------------------------------------------------------------------------------------------
// Conntrack.

impl CtFilter {
    fn matches(&self, k: &CtKey, e: &CtEntry) -> bool {
        self.src.is_none_or(|a| a.octets() == k.src_addr)
            && self.dst.is_none_or(|a| a.octets() == k.dst_addr)
            && self.port.is_none_or(|p| p == k.src_port || p == k.dst_port)
            && self.proto.is_none_or(|p| p.number() == k.proto)
            && self
                .dir
                .is_none_or(|d| (d == Dir::Forward) == (e.dir == CT_DIR_FORWARD))
            && self.frontend_id.is_none_or(|id| id == e.frontend_id)
    }
}

/// One conntrack entry (`inspect conntrack -o json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    pub protocol: String,
    /// `forward` (client → frontend) or `reply` (backend → client or SNAT address).
    pub dir: String,
    /// The tuple as a packet arrives (the map key).
    pub src: Ipv4Addr,
    pub src_port: u16,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
    /// What the entry rewrites it to.
    pub new_src: Ipv4Addr,
    pub new_src_port: u16,
    pub new_dst: Ipv4Addr,
    pub new_dst_port: u16,
    /// `snat`, `hairpin`, `external`.
    pub flags: Vec<String>,
    pub flags_raw: u8,
    /// TCP flags seen in this direction (`SYN`, `ACK`, `FIN`, …).
    pub tcp_flags: Vec<String>,
    pub tcp_flags_raw: u8,
    pub frontend_id: u32,
    pub backend_id: u32,
    /// `CT_STATE_*` name: `syn_sent`, `established`, `close_wait`, `time_wait`, `closed`,
    /// `udp_unreplied`, `udp_replied`, `none`.
    pub state: String,
    pub state_raw: u8,
    /// Whether the flow has expired (this entry and its peer outlived their timeouts): the
    /// datapath ignores it and the collector deletes it.
    pub expired: bool,
    /// Seconds the flow lives without another packet (the longer-lived of its two entries);
    /// `null` when expired.
    pub expires_in_s: Option<u64>,
    pub packets: u64,
    pub bytes: u64,
    /// CLOCK_MONOTONIC ns, as the datapath stamped them.
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// Since created / since the last packet, in ms.
    pub age_ms: u64,
    pub idle_ms: u64,
}

impl FlowView {
    /// The view of entry `e` at key `k`; `peer` is the entry at `ct_peer_key(k, e)`, if any.
    pub fn new(
        k: &CtKey,
        e: &CtEntry,
        peer: Option<&CtEntry>,
        now_ns: u64,
        timeouts: &CtTimeouts,
    ) -> Self {
        let remaining = remaining_ms(k, e, peer, now_ns, timeouts);
        Self {
            protocol: proto_name(k.proto),
            dir: if e.dir == CT_DIR_FORWARD {
                "forward"
            } else {
                "reply"
            }
            .into(),
            src: k.src_addr.into(),
            src_port: k.src_port,
            dst: k.dst_addr.into(),
            dst_port: k.dst_port,
            new_src: e.src_addr.into(),
            new_src_port: e.src_port,
            new_dst: e.dst_addr.into(),
            new_dst_port: e.dst_port,
            flags: ct_flag_words(e.flags),
            flags_raw: e.flags,
            tcp_flags: tcp_flag_words(e.tcp_flags),
            tcp_flags_raw: e.tcp_flags,
            frontend_id: e.frontend_id,
            backend_id: e.backend_id,
            state: ct_state_name(e.state),
            state_raw: e.state,
            expired: remaining.is_none(),
            expires_in_s: remaining.map(|ms| ms.div_ceil(1000)),
            packets: e.packets,
            bytes: e.bytes,
            created_ns: e.created_ns,
            last_seen_ns: e.last_seen_ns,
            age_ms: now_ns.saturating_sub(e.created_ns) / 1_000_000,
            idle_ms: now_ns.saturating_sub(e.last_seen_ns) / 1_000_000,
        }
    }
}

fn duration(ms: u64) -> String {
    match ms {
        0..=9_999 => format!("{:.1}s", ms as f64 / 1000.0),
        10_000..=5_999_999 => format!("{}s", ms / 1000),
        _ => format!("{}m", ms / 60_000),
    }
}

fn render_flows(flows: &Vec<FlowView>) -> String {
    let mut t = Table::new(&[
        "PROTO",
        "DIR",
        "TUPLE",
        "",
        "REWRITTEN TO",
        "FLAGS",
        "TCP",
        "FE",
        "BE",
        "STATE",
        "EXPIRES",
        "PKTS",
        "BYTES",
        "AGE",
        "IDLE",
    ]);
    for f in flows {
        t.row(vec![
            f.protocol.clone(),
            f.dir.clone(),
            format!("{}:{} → {}:{}", f.src, f.src_port, f.dst, f.dst_port),
            "⇒".into(),
            format!(
                "{}:{} → {}:{}",
                f.new_src, f.new_src_port, f.new_dst, f.new_dst_port
            ),
            words_or_dash(&f.flags),
            words_or_dash(&f.tcp_flags),
            f.frontend_id.to_string(),
            f.backend_id.to_string(),
            f.state.clone(),
            match f.expires_in_s {
                Some(s) => format!("{s}s"),
                None => "expired".into(),
            },
            f.packets.to_string(),
            f.bytes.to_string(),
            duration(f.age_ms),
            duration(f.idle_ms),
        ]);
    }
    let mut out = t.render();
    let _ = writeln!(out, "{} entries", flows.len());
    out
}

// ---------------------------------------------------------------------------------------------
// Stats.

/// One counter (`inspect stats -o json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatView {
    /// `pod_ingress`, `pod_egress`, `xdp`, `uplink_ingress`, `sock`, `uplink_egress`.
    pub hook: String,
    /// A reason name from svc-common's `ALL_REASONS` (`dnat_new`, `no_backend`, …).
    pub reason: String,
    /// Packets (socket calls for `sock`), summed over CPUs.
    pub packets: u64,
    /// One value per possible CPU, with `--per-cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_cpu: Option<Vec<u64>>,
}

/// Counters in hook, reason order; zeros skipped unless `all`.
pub fn stat_views(values: &[Vec<u64>], per_cpu: bool, all: bool) -> Vec<StatView> {
    let mut out = Vec::new();
    for hook in ALL_HOOKS {
        for (reason, name) in ALL_REASONS {
            let cpus = values
                .get(stat_index(hook, reason) as usize)
                .cloned()
                .unwrap_or_default();
            let packets = cpus.iter().sum();
            if packets == 0 && !all {
                continue;
            }
            out.push(StatView {
                hook: hook.name().into(),
                reason: name.into(),
                packets,
                per_cpu: per_cpu.then_some(cpus),
            });
        }
    }
    out
}

fn render_stats(stats: &Vec<StatView>, per_cpu: bool) -> String {
    let cpus = stats
        .iter()
        .filter_map(|s| s.per_cpu.as_ref().map(Vec::len))
        .max()
        .unwrap_or(0);
    let mut header: Vec<String> = ["HOOK", "REASON", "PACKETS"].map(String::from).into();
    if per_cpu {
        header.extend((0..cpus).map(|c| format!("CPU{c}")));
    }
    let mut t = Table::new(&header.iter().map(String::as_str).collect::<Vec<_>>());
    for s in stats {
        let mut row = vec![s.hook.clone(), s.reason.clone(), s.packets.to_string()];
        row.extend(s.per_cpu.iter().flatten().map(u64::to_string));
        t.row(row);
    }
    let mut out = t.render();
    if stats.is_empty() {
        out.push_str("(every counter is zero; --all lists them)\n");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Explain.

fn endpoint(addr: Ipv4Addr, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("{addr}:{p}"),
        None => format!("{addr}:*"),
    }
}

fn outcome_line(o: &explain::Outcome) -> String {
    use explain::Outcome::*;
    match o {
        Translate {
            new_src,
            new_src_port,
            new_src_port_range,
            new_dst,
            new_dst_port,
            flags,
            counter,
        } => {
            let sport = match (new_src_port, new_src_port_range) {
                (_, Some([a, b])) => format!("{new_src}:{a}-{b} (random)"),
                (p, None) => endpoint(*new_src, *p),
            };
            let flags = if flags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", flags.join(","))
            };
            format!("translate to {sport} → {new_dst}:{new_dst_port}{flags} (counter {counter})")
        }
        Balance { .. } => "balance (see backends)".into(),
        Sticky { backend_id, .. } => format!("session affinity to backend {backend_id}"),
        Pass { counter, why } => match counter {
            Some(c) => format!("PASS untouched: {why} (counter {c})"),
            None => format!("PASS untouched: {why}"),
        },
        Reject {
            reply,
            counter,
            why,
        } => format!("REJECT with {reply}: {why} (counter {counter})"),
        Drop { counter, why } => format!("DROP: {why} (counter {counter})"),
    }
}

fn candidate_table(out: &mut String, candidates: &[explain::Candidate]) {
    let mut t = Table::new(&["SLOT", "BACKEND", "BE-ID", "BE-FLAGS", "THEN"]);
    for c in candidates {
        t.row(vec![
            c.slot.to_string(),
            match (c.address, c.port) {
                (Some(a), Some(p)) => format!("{a}:{p}"),
                _ => "(missing)".into(),
            },
            c.backend_id.map_or("-".into(), |id| id.to_string()),
            words_or_dash(&c.backend_flags),
            outcome_line(&c.outcome),
        ]);
    }
    for line in t.render().lines() {
        let _ = writeln!(out, "           {line}");
    }
}

fn render_explanation(e: &explain::Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "flow:      {} → {}:{}/{} from {}",
        endpoint(e.src, e.src_port),
        e.dst,
        e.dst_port,
        e.protocol,
        match e.from {
            explain::Origin::Pod => "a pod",
            explain::Origin::Uplink => "the uplink",
            explain::Origin::Host => "the host",
        }
    );
    let _ = writeln!(out, "hook:      {}", e.hook);
    let fe_line = |f: &explain::FrontendEntry| {
        format!(
            "id {}, scope {}, flags {}, {} backend(s)",
            f.id,
            f.scope,
            words_or_dash(&f.flags),
            f.backend_count
        )
    };
    match &e.frontend {
        Some(f) => {
            let _ = writeln!(
                out,
                "frontend:  {}:{}/{} {}",
                e.dst,
                e.dst_port,
                e.protocol,
                fe_line(f)
            );
        }
        None => {
            let _ = writeln!(out, "frontend:  none");
        }
    }
    if let Some(f) = &e.external_frontend {
        let _ = writeln!(
            out,
            "external:  {} (used: traffic from the uplink)",
            fe_line(f)
        );
    }
    match &e.new_flow {
        explain::Outcome::Balance { slots, translating } => {
            let usable = if translating < slots {
                format!(" ({translating} of them usable)")
            } else {
                String::new()
            };
            let scope = e.scope_used.as_deref().unwrap_or("any");
            let _ = match slots {
                1 => writeln!(out, "new flow:  TRANSLATE to the only backend{usable} (scope {scope}):"),
                n => writeln!(
                    out,
                    "new flow:  TRANSLATE, choice by the client tuple's hash among {n} backends{usable} (scope {scope}):"
                ),
            };
            candidate_table(&mut out, &e.candidates);
        }
        explain::Outcome::Sticky {
            backend_id,
            idle_ms,
            timeout_s,
        } => {
            let _ = writeln!(
                out,
                "new flow:  TRANSLATE to backend {backend_id} by session affinity (this client's \
                 last flow {} ago, timeout {timeout_s}s):",
                duration(*idle_ms)
            );
            candidate_table(&mut out, &e.candidates);
        }
        other => {
            let _ = writeln!(out, "new flow:  {}", outcome_line(other));
        }
    }
    match (&e.conntrack, e.src_port, e.tracked_flows_from_src) {
        (Some(t), _, _) if t.expired => {
            let _ = writeln!(
                out,
                "conntrack: the {} entry for this tuple (state {}, frontend {}, backend {}) has \
                 expired and is ignored: the packet is a new flow",
                t.dir, t.state, t.frontend_id, t.backend_id
            );
        }
        (Some(t), _, _) => {
            let _ = writeln!(
                out,
                "conntrack: an existing {} entry pins this flow (state {}, frontend {}, backend \
                 {}, expires in {}s without traffic): {}",
                t.dir,
                t.state,
                t.frontend_id,
                t.backend_id,
                t.expires_in_s.unwrap_or(0),
                outcome_line(&t.outcome)
            );
        }
        (None, Some(_), _) => {
            let _ = writeln!(
                out,
                "conntrack: no entry for this tuple: its next packet is a new flow"
            );
        }
        (None, None, Some(0)) => {
            let _ = writeln!(
                out,
                "conntrack: no tracked flow from {} to this destination",
                e.src
            );
        }
        (None, None, Some(n)) => {
            let _ = writeln!(
                out,
                "conntrack: {n} tracked flow(s) from {} to this destination; give SRC:PORT to check one",
                e.src
            );
        }
        (None, None, None) => {}
    }
    for n in &e.notes {
        let _ = writeln!(out, "note:      {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use svc_common::{
        Backend, Frontend, FrontendKey, Slot, SlotKey, BACKEND_F_LOCAL, BACKEND_F_TERMINATING,
        FRONTEND_F_DROP_NO_BACKEND, FRONTEND_F_NODEPORT, SCOPE_ANY,
    };

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn explain_arguments_parse() {
        let cli = Cli::try_parse_from([
            "svc-agent",
            "explain",
            "10.244.1.5:40000",
            "10.96.0.10:53/udp",
            "--from",
            "uplink",
            "-o",
            "json",
            "--bpffs",
            "/sys/fs/bpf/x",
        ])
        .unwrap();
        let Command::Explain(a) = cli.command else {
            panic!("not explain")
        };
        assert_eq!(
            (a.src.addr, a.src.port),
            (Ipv4Addr::new(10, 244, 1, 5), Some(40000))
        );
        assert_eq!((a.dst.port, a.dst.proto), (53, PROTO_UDP));
        assert_eq!(a.from, OriginArg::Uplink);
        assert_eq!(a.common.output, Format::Json);
        assert_eq!("10.96.0.10:80".parse::<DstArg>().unwrap().proto, PROTO_TCP);
        assert!("10.96.0.10/tcp".parse::<DstArg>().is_err());
        assert!("10.96.0.10:80/sctp".parse::<DstArg>().is_err());
        assert_eq!("10.0.0.1".parse::<SrcArg>().unwrap().port, None);
        assert!(
            Cli::try_parse_from(["svc-agent", "inspect", "stats", "--per-cpu", "--all"]).is_ok()
        );
        assert!(Cli::try_parse_from([
            "svc-agent",
            "inspect",
            "conntrack",
            "--dir",
            "reply",
            "--proto",
            "udp",
            "--port",
            "53"
        ])
        .is_ok());
    }

    /// A forward entry (client 10.244.1.5:40000 → 10.96.0.10:53) and its reply entry, of
    /// `proto` in `state`, last seen at `fwd_s` / `rep_s` seconds, created at 0.
    fn ct_pair(proto: u8, state: u8, fwd_s: u64, rep_s: u64) -> [(CtKey, CtEntry); 2] {
        let fk = CtKey {
            src_addr: [10, 244, 1, 5],
            dst_addr: [10, 96, 0, 10],
            src_port: 40_000,
            dst_port: 53,
            proto,
            _pad: [0; 3],
        };
        let fe = CtEntry {
            src_addr: [10, 244, 1, 5],
            dst_addr: [10, 244, 2, 9],
            src_port: 40_000,
            dst_port: 5353,
            dir: CT_DIR_FORWARD,
            flags: 0,
            tcp_flags: 0,
            state,
            backend_id: 3,
            frontend_id: 1,
            created_ns: 0,
            last_seen_ns: fwd_s * 1_000_000_000,
            packets: 1,
            bytes: 80,
        };
        let rk = ct_peer_key(&fk, &fe);
        let re = CtEntry {
            src_addr: [10, 96, 0, 10],
            dst_addr: [10, 244, 1, 5],
            src_port: 53,
            dst_port: 40_000,
            dir: svc_common::CT_DIR_REPLY,
            last_seen_ns: rep_s * 1_000_000_000,
            ..fe
        };
        [(fk, fe), (rk, re)]
    }

    #[test]
    fn conntrack_views_show_the_state_and_the_flow_s_remaining_lifetime() {
        use svc_common::{CT_STATE_TIME_WAIT, CT_STATE_UDP_UNREPLIED};
        const S: u64 = 1_000_000_000;
        let t = CtTimeouts::DEFAULT;
        // An unanswered datagram 12 s ago: 30 - 12 = 18 s left, on either entry.
        let [(fk, fe), (rk, re)] = ct_pair(PROTO_UDP, CT_STATE_UDP_UNREPLIED, 12, 0);
        let v = FlowView::new(&fk, &fe, Some(&re), 24 * S, &t);
        assert_eq!(
            (v.state.as_str(), v.expires_in_s, v.expired),
            ("udp_unreplied", Some(18), false)
        );
        let v = FlowView::new(&rk, &re, Some(&fe), 24 * S, &t);
        assert_eq!(
            v.expires_in_s,
            Some(18),
            "the idle reply entry lives as long as its peer"
        );
        // Without its peer the reply entry (last seen at 0) is expired at 31 s.
        let v = FlowView::new(&rk, &re, None, 31 * S, &t);
        assert_eq!((v.expires_in_s, v.expired), (None, true));
        // Closed: 10 s.
        let [(fk, fe), (_, re)] = ct_pair(PROTO_TCP, CT_STATE_TIME_WAIT, 5, 5);
        assert_eq!(
            FlowView::new(&fk, &fe, Some(&re), 6 * S, &t).expires_in_s,
            Some(9)
        );
        assert!(FlowView::new(&fk, &fe, Some(&re), 16 * S, &t).expired);
        assert_eq!(ct_state_name(200), "200");
        let table = render_flows(&vec![FlowView::new(&fk, &fe, Some(&re), 16 * S, &t)]);
        assert!(
            table.contains("time_wait") && table.contains("expired"),
            "{table}"
        );
    }

    #[test]
    fn flags_decode_to_words_with_unknown_bits_kept() {
        assert_eq!(
            frontend_flag_words(FRONTEND_F_NODEPORT | FRONTEND_F_DROP_NO_BACKEND | 0x100),
            vec!["nodeport", "drop-no-backend", "0x100"]
        );
        assert_eq!(
            backend_flag_words(BACKEND_F_LOCAL | BACKEND_F_TERMINATING),
            vec!["local", "terminating"]
        );
        assert_eq!(tcp_flag_words(0x12), vec!["SYN", "ACK"]);
        assert!(ct_flag_words(0).is_empty());
    }

    #[test]
    fn services_list_slots_in_order_and_report_holes() {
        let mut snap = MapSnapshot::default();
        let key = FrontendKey {
            addr: [10, 96, 0, 10],
            port: 80,
            proto: PROTO_TCP,
            scope: SCOPE_ANY,
        };
        snap.frontends.insert(
            key,
            Frontend {
                id: 7,
                backend_count: 3,
                flags: 0,
                affinity_timeout_s: 0,
            },
        );
        for (slot, id) in [(2, 20), (1, 10)] {
            snap.slots.insert(
                SlotKey {
                    frontend_id: 7,
                    slot,
                },
                Slot { backend_id: id },
            );
        }
        for (id, last) in [(10, 1), (20, 2)] {
            snap.backends.insert(
                id,
                Backend {
                    addr: [10, 244, 0, last],
                    port: 8080,
                    proto: PROTO_TCP,
                    flags: BACKEND_F_LOCAL,
                },
            );
        }
        let v = service_views(&snap);
        assert_eq!(v.len(), 1);
        let slots: Vec<(u32, u32)> = v[0]
            .backends
            .iter()
            .map(|b| (b.slot, b.backend_id))
            .collect();
        assert_eq!(slots, vec![(1, 10), (2, 20)]);
        assert_eq!(v[0].problems, vec!["slot 3 missing".to_string()]);
        let table = render_services(&v);
        assert!(table.starts_with("ID  FRONTEND"), "{table}");
        assert!(table.contains("10.244.0.2:8080/tcp"), "{table}");
    }
}
