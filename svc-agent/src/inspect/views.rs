//! What `inspect` and `explain` print: the views (`-o json`'s stable field names) built from
//! map snapshots, and their aligned tables for people.
use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;
use svc_common::{
    stat_index, CtEntryOf, CtKeyOf, CtTimeouts, ALL_HOOKS, ALL_REASONS, CT_DIR_FORWARD,
};
use svc_core::family::{host_port, Family};

use super::*;

/// An address type of the views: `Ipv4Addr` or `Ipv6Addr` (printed `[addr]:port` before a
/// port).
pub trait ViewAddr:
    Copy + std::fmt::Display + Into<IpAddr> + Serialize + serde::de::DeserializeOwned
{
}
impl ViewAddr for Ipv4Addr {}
impl ViewAddr for Ipv6Addr {}

/// `addr:port`, `[addr]:port` for IPv6.
fn at<A: ViewAddr>(addr: A, port: impl std::fmt::Display) -> String {
    match addr.into() {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}
// ---------------------------------------------------------------------------------------------
// Services.

/// One frontend map entry and its backends (`inspect services -o json`): [`ServiceView`]
/// (IPv4, `SVC_FRONTENDS`) or [`ServiceView6`] (IPv6, `SVC_FRONTENDS6`), the same fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "A: ViewAddr")]
pub struct ServiceViewOf<A> {
    /// Frontend id (what slots and conntrack entries name).
    pub id: u32,
    pub address: A,
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
    pub backends: Vec<SlotViewOf<A>>,
    /// Slots or backends the counted range names but the maps lack (should be empty).
    pub problems: Vec<String>,
    /// The client prefixes allowed to open flows (`loadBalancerSourceRanges`), with
    /// `source-ranges`; empty otherwise.
    #[serde(default)]
    pub source_ranges: Vec<String>,
}

/// An IPv4 frontend's view.
pub type ServiceView = ServiceViewOf<Ipv4Addr>;
/// An IPv6 frontend's view.
pub type ServiceView6 = ServiceViewOf<Ipv6Addr>;

/// One slot of a frontend and the backend it names (in the frontend's family's backend map).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "A: ViewAddr")]
pub struct SlotViewOf<A> {
    pub slot: u32,
    pub backend_id: u32,
    pub address: A,
    pub port: u16,
    pub protocol: String,
    /// `local`, `terminating`.
    pub flags: Vec<String>,
    pub flags_raw: u8,
}

/// An IPv4 slot's view.
pub type SlotView = SlotViewOf<Ipv4Addr>;

/// Every IPv4 frontend with its slots resolved, ordered by (address, port, protocol, scope).
pub fn service_views(snap: &MapSnapshot) -> Vec<ServiceView> {
    service_views_of::<[u8; 4]>(snap)
}

/// [`service_views`] of the IPv6 frontends.
pub fn service_views6(snap: &MapSnapshot) -> Vec<ServiceView6> {
    service_views_of::<svc_common::Addr6>(snap)
}

/// Both families' frontends, IPv4 first: what `inspect services` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AnyServiceView {
    V4(ServiceView),
    V6(ServiceView6),
}

/// [`service_views`] and [`service_views6`] in one list.
pub fn all_service_views(snap: &MapSnapshot) -> Vec<AnyServiceView> {
    (service_views(snap).into_iter().map(AnyServiceView::V4))
        .chain(service_views6(snap).into_iter().map(AnyServiceView::V6))
        .collect()
}

fn service_views_of<F: Family>(snap: &MapSnapshot) -> Vec<ServiceViewOf<F::Ip>>
where
    F::Ip: ViewAddr,
{
    F::snap_frontends(snap)
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
                let Some(b) = F::snap_backends(snap).get(&s.backend_id) else {
                    problems.push(format!("slot {slot}: backend {} missing", s.backend_id));
                    continue;
                };
                backends.push(SlotViewOf {
                    slot,
                    backend_id: s.backend_id,
                    address: F::to_ip(b.addr),
                    port: b.port,
                    protocol: proto_name(b.proto),
                    flags: backend_flag_words(b.flags),
                    flags_raw: b.flags,
                });
            }
            ServiceViewOf {
                id: fe.id,
                address: F::to_ip(key.addr),
                port: key.port,
                protocol: proto_name(key.proto),
                scope: scope_name(key.scope),
                flags: frontend_flag_words(fe.flags),
                flags_raw: fe.flags,
                affinity_timeout_s: fe.affinity_timeout_s,
                backend_count: fe.backend_count,
                backends,
                problems,
                source_ranges: source_ranges_of::<F>(snap, fe.id),
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

pub(super) fn render_services(services: &Vec<AnyServiceView>) -> String {
    let mut t = Table::new(&[
        "ID", "FRONTEND", "SCOPE", "FLAGS", "COUNT", "SLOT", "BACKEND", "BE-ID", "BE-FLAGS",
    ]);
    for s in services {
        match s {
            AnyServiceView::V4(s) => service_rows(&mut t, s),
            AnyServiceView::V6(s) => service_rows(&mut t, s),
        }
    }
    let mut out = t.render();
    let _ = writeln!(out, "{} frontends", services.len());
    out
}

fn service_rows<A: ViewAddr>(t: &mut Table, s: &ServiceViewOf<A>) {
    {
        let head = vec![
            s.id.to_string(),
            format!("{}/{}", at(s.address, s.port), s.protocol),
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
                    format!("{}/{}", at(b.address, b.port), b.protocol),
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
}

// ---------------------------------------------------------------------------------------------
// Conntrack.

impl CtFilter {
    pub(super) fn matches<F: Family>(&self, k: &CtKeyOf<F>, e: &CtEntryOf<F>) -> bool {
        let ip = |a: F| -> IpAddr { F::to_ip(a).into() };
        self.src.is_none_or(|a| a == ip(k.src_addr))
            && self.dst.is_none_or(|a| a == ip(k.dst_addr))
            && self.port.is_none_or(|p| p == k.src_port || p == k.dst_port)
            && self.proto.is_none_or(|p| p.number() == k.proto)
            && self
                .dir
                .is_none_or(|d| (d == Dir::Forward) == (e.dir == CT_DIR_FORWARD))
            && self.frontend_id.is_none_or(|id| id == e.frontend_id)
    }
}

/// One conntrack entry (`inspect conntrack -o json`): [`FlowView`] (`SVC_CT`) or
/// [`FlowView6`] (`SVC_CT6`), the same fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "A: ViewAddr")]
pub struct FlowViewOf<A> {
    pub protocol: String,
    /// `forward` (client → frontend) or `reply` (backend → client or SNAT address).
    pub dir: String,
    /// The tuple as a packet arrives (the map key).
    pub src: A,
    pub src_port: u16,
    pub dst: A,
    pub dst_port: u16,
    /// What the entry rewrites it to.
    pub new_src: A,
    pub new_src_port: u16,
    pub new_dst: A,
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

/// An IPv4 flow's view.
pub type FlowView = FlowViewOf<Ipv4Addr>;
/// An IPv6 flow's view.
pub type FlowView6 = FlowViewOf<Ipv6Addr>;

/// Both families' flows, IPv4 first: what `inspect conntrack` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AnyFlowView {
    V4(FlowView),
    V6(FlowView6),
}

impl<A: ViewAddr> FlowViewOf<A> {
    /// The view of entry `e` at key `k`; `peer` is the entry at `ct_peer_key(k, e)`, if any.
    pub fn new<F: Family<Ip = A>>(
        k: &CtKeyOf<F>,
        e: &CtEntryOf<F>,
        peer: Option<&CtEntryOf<F>>,
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
            src: F::to_ip(k.src_addr),
            src_port: k.src_port,
            dst: F::to_ip(k.dst_addr),
            dst_port: k.dst_port,
            new_src: F::to_ip(e.src_addr),
            new_src_port: e.src_port,
            new_dst: F::to_ip(e.dst_addr),
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

pub(super) fn render_flows(flows: &Vec<AnyFlowView>) -> String {
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
        match f {
            AnyFlowView::V4(f) => flow_row(&mut t, f),
            AnyFlowView::V6(f) => flow_row(&mut t, f),
        }
    }
    let mut out = t.render();
    let _ = writeln!(out, "{} entries", flows.len());
    out
}

fn flow_row<A: ViewAddr>(t: &mut Table, f: &FlowViewOf<A>) {
    {
        t.row(vec![
            f.protocol.clone(),
            f.dir.clone(),
            format!("{} → {}", at(f.src, f.src_port), at(f.dst, f.dst_port)),
            "⇒".into(),
            format!(
                "{} → {}",
                at(f.new_src, f.new_src_port),
                at(f.new_dst, f.new_dst_port)
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
}

// ---------------------------------------------------------------------------------------------
// Stats.

/// One counter (`inspect stats -o json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatView {
    /// `pod_ingress`, `pod_egress`, `xdp`, `uplink_ingress`, `sock`, `uplink_egress`, and the
    /// IPv6 hooks `pod_ingress6`, `pod_egress6`, `uplink_ingress6`, `uplink_egress6`, `sock6`
    /// (svc-common's `ALL_HOOKS`).
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

pub(super) fn render_stats(stats: &Vec<StatView>, per_cpu: bool) -> String {
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

fn endpoint(addr: IpAddr, port: Option<u16>) -> String {
    match port {
        Some(p) => host_port(addr, p),
        None => match addr {
            IpAddr::V4(a) => format!("{a}:*"),
            IpAddr::V6(a) => format!("[{a}]:*"),
        },
    }
}

/// `addr:text`, `[addr]:text` for IPv6.
fn endpoint_text(addr: IpAddr, text: &str) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{text}"),
        IpAddr::V6(a) => format!("[{a}]:{text}"),
    }
}

fn outcome_line(o: &explain::Outcome) -> String {
    use explain::Outcome::*;
    match o {
        Translate {
            new_src,
            new_src_port,
            new_src_port_ranges,
            new_dst,
            new_dst_port,
            flags,
            counter,
        } => {
            let sport = match (new_src_port, new_src_port_ranges) {
                (_, Some(ranges)) => {
                    let ranges: Vec<String> =
                        ranges.iter().map(|[a, b]| format!("{a}-{b}")).collect();
                    format!("{} (random)", endpoint_text(*new_src, &ranges.join(",")))
                }
                (p, None) => endpoint(*new_src, *p),
            };
            let flags = if flags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", flags.join(","))
            };
            format!(
                "translate to {sport} → {}{flags} (counter {counter})",
                host_port(*new_dst, *new_dst_port)
            )
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
                (Some(a), Some(p)) => host_port(a, p),
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

pub(super) fn render_explanation(e: &explain::Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "flow:      {} → {}/{} from {}",
        endpoint(e.src, e.src_port),
        host_port(e.dst, e.dst_port),
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
                "frontend:  {}/{} {}",
                host_port(e.dst, e.dst_port),
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
