//! `svc-agent explain`'s decision: what the datapath would do with a flow, decided over a [`Snapshot`] of
//! the maps by the datapath's own rules.
//!
//! [`explain`] is pure and mirrors, branch for branch:
//! - `svc-ebpf/src/lb.rs` `new_flow` for [`Origin::Pod`] (tc `svc_pod_ingress`) and
//!   [`Origin::Uplink`] (XDP `svc_xdp`, and tc `svc_uplink_ingress` for what XDP hands on);
//! - the conntrack lookup each of those hooks does first (`programs.rs`, `uplink.rs`, `xdp.rs`);
//! - `svc-ebpf/src/socklb.rs` `translate` for [`Origin::Host`] (cgroup `connect4`/`sendmsg4`,
//!   `connect6`/`sendmsg6`).
//!
//! What it cannot know is said, not guessed: the backend of a new flow is a uniformly random
//! slot (`bpf_get_prandom_u32`) unless a fresh session-affinity entry names one (`SVC_AFFINITY`,
//! lb.rs `pick_backend`), so every eligible slot is listed with what choosing it does; a
//! source-NAT port is random among the SNAT ports ([`Snapshot::snat_ports`]); whether the socket
//! hooks are attached to the caller's cgroup is not in any map. When the datapath changes, this
//! file must change with it: its table tests name each branch of `new_flow`.
use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};
use svc_common::{
    ct_peer_key, ct_state_closed, Affinity, Affinity6, AffinityKey, AffinityKey6, AffinityKeyOf,
    BackendOf, Config, CtEntry, CtEntry6, CtEntryOf, CtKey, CtKey6, CtKeyOf, CtTimeouts, Frontend,
    FrontendKeyOf, Reason, SlotKey, SnatPorts, ALL_REASONS, BACKEND_F_LOCAL, CT_DIR_FORWARD,
    CT_F_EXTERNAL, CT_F_HAIRPIN, CT_F_SNAT, CT_STATE_CLOSE_WAIT, FRONTEND_F_DENY_NODE,
    FRONTEND_F_DROP_NO_BACKEND, FRONTEND_F_EXTERNAL_SCOPE, FRONTEND_F_SOURCE_RANGES, PROTO_TCP,
    SCOPE_ANY, SCOPE_EXTERNAL,
};

use crate::dataplane::MapSnapshot;
use crate::family::{host_port, Family};
use crate::names::{
    backend_flag_words, ct_flag_words, ct_state_name, frontend_flag_words, proto_name,
    remaining_ms, scope_name, source_ranges_of,
};

/// Where the flow's first packet meets the datapath (`--from`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A pod on this node: tc ingress on the host side of its veth.
    Pod,
    /// The wire, through a node uplink: XDP, then tc ingress for what XDP passes on.
    Uplink,
    /// A process in the node's network namespace: the cgroup socket hooks.
    Host,
}

/// The flow to explain: `SRC_IP[:PORT] DST_IP:PORT/PROTO --from ORIGIN`, IPv4 or IPv6 (both
/// addresses of one family: the IPv6 maps decide an IPv6 flow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub src: IpAddr,
    /// The client's port, when known: only then can an existing conntrack entry be found.
    pub src_port: Option<u16>,
    pub dst: IpAddr,
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    pub origin: Origin,
}

/// Everything [`explain`] reads: the service maps, the node config and the conntrack table.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub maps: MapSnapshot,
    /// `SVC_CONFIG[0]`; `None` when the agent never wrote it.
    pub config: Option<Config>,
    pub conntrack: BTreeMap<CtKey, CtEntry>,
    /// `SVC_AFFINITY`: the backend each (frontend, client) of a `sessionAffinity: ClientIP`
    /// frontend last used.
    pub affinity: BTreeMap<AffinityKey, Affinity>,
    /// `SVC_CT6`.
    pub conntrack6: BTreeMap<CtKey6, CtEntry6>,
    /// `SVC_AFFINITY6`.
    pub affinity6: BTreeMap<AffinityKey6, Affinity6>,
    /// `CLOCK_MONOTONIC` now, to judge whether an affinity or conntrack entry is still fresh.
    pub now_ns: u64,
    /// The conntrack timeouts the agent gave the datapath; `None`: the defaults.
    pub ct_timeouts: Option<CtTimeouts>,
    /// The SNAT ports the agent gave the datapath (`SVC_SNAT_PORTS` pin); `None`: the object's
    /// built-in [`SnatPorts::DEFAULT`] (pins of an agent that predates them).
    pub snat_ports: Option<SnatPorts>,
}

/// One frontend map entry as `explain` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendEntry {
    pub id: u32,
    pub scope: String,
    pub flags: Vec<String>,
    pub backend_count: u32,
}

/// The result of picking one slot of the frontend used for the new flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Slot number (`1..=backend_count`).
    pub slot: u32,
    /// Backend id the slot names; `None` when the slot entry is missing.
    pub backend_id: Option<u32>,
    /// Backend address; `None` when the slot or the backend entry is missing.
    pub address: Option<IpAddr>,
    pub port: Option<u16>,
    /// `local`, `terminating`.
    pub backend_flags: Vec<String>,
    /// What choosing this slot does.
    pub outcome: Outcome,
}

/// What one packet (or one socket call) gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Outcome {
    /// Rewritten to `new_src:new_src_port → new_dst:new_dst_port`.
    Translate {
        new_src: IpAddr,
        /// The source port written; `None` when it is the client's own (unknown without
        /// `SRC:PORT`) or a random SNAT port (see `new_src_port_ranges`).
        new_src_port: Option<u16>,
        /// With `snat`: `[first, last]` of each range of SNAT ports the random port is drawn
        /// from (the agent's `--snat-port-range` or its default from the node).
        new_src_port_ranges: Option<Vec<[u16; 2]>>,
        new_dst: IpAddr,
        new_dst_port: u16,
        /// `CT_F_*` words the conntrack entries get: `snat`, `hairpin`, `external`.
        flags: Vec<String>,
        /// The `SVC_STATS` reason it is counted under.
        counter: String,
    },
    /// Passed on untouched (or, for a socket, the call proceeds to the address it named).
    Pass {
        counter: Option<String>,
        why: String,
    },
    /// A new flow draws one of `slots` slots uniformly at random (`bpf_get_prandom_u32`); each
    /// [`Candidate`] says what that slot does, `translating` of them translate.
    Balance { slots: u32, translating: u32 },
    /// `sessionAffinity: ClientIP`: this client used `backend_id` `idle_ms` ago, less than the
    /// timeout, so a new flow goes there again (the one [`Candidate`]) and refreshes the entry.
    Sticky {
        backend_id: u32,
        idle_ms: u64,
        timeout_s: u32,
    },
    /// Answered at once: `tcp_rst`, `icmp_port_unreachable` or `econnrefused`.
    Reject {
        reply: String,
        counter: String,
        why: String,
    },
    /// Dropped silently (a socket call fails with EPERM).
    Drop { counter: String, why: String },
}

/// An existing conntrack entry for the exact tuple (`SRC:PORT` given).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracked {
    /// `forward` or `reply`.
    pub dir: String,
    pub frontend_id: u32,
    pub backend_id: u32,
    /// `CT_STATE_*` name (`established`, `time_wait`, …).
    pub state: String,
    /// The entry and its peer have outlived their timeouts: the datapath ignores the entry,
    /// and `outcome` is the new-flow decision.
    pub expired: bool,
    /// Seconds the flow lives without another packet; `None` when expired.
    pub expires_in_s: Option<u64>,
    /// What the packet gets because of the entry (instead of the new-flow decision).
    pub outcome: Outcome,
}

/// Everything `explain` found, in the order the datapath looks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub src: IpAddr,
    pub src_port: Option<u16>,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub protocol: String,
    pub from: Origin,
    /// The program(s) that decide.
    pub hook: String,
    /// The [`SCOPE_ANY`] entry for the destination; `None`: not a Service frontend.
    pub frontend: Option<FrontendEntry>,
    /// The [`SCOPE_EXTERNAL`] entry, when the uplink path uses it (`external-scope` flag).
    pub external_frontend: Option<FrontendEntry>,
    /// The entry whose slots a new flow picks from: `any` or `external`.
    pub scope_used: Option<String>,
    /// The eligible slots, in slot order, each with what choosing it does.
    pub candidates: Vec<Candidate>,
    /// What the first packet of a new flow gets (`balance`: see `candidates`).
    pub new_flow: Outcome,
    /// The entry that already pins this exact tuple (and so decides instead of `new_flow`).
    pub conntrack: Option<Tracked>,
    /// Without `SRC:PORT`: how many forward conntrack entries go from SRC to this destination.
    pub tracked_flows_from_src: Option<usize>,
    /// Things worth knowing that fit no field.
    pub notes: Vec<String>,
}

fn counter(reason: Reason) -> String {
    ALL_REASONS[reason as usize].1.to_string()
}

fn drop(reason: Reason, why: impl Into<String>) -> Outcome {
    Outcome::Drop {
        counter: counter(reason),
        why: why.into(),
    }
}

fn entry_view(fe: &Frontend, scope: u8) -> FrontendEntry {
    FrontendEntry {
        id: fe.id,
        scope: scope_name(scope),
        flags: frontend_flag_words(fe.flags),
        backend_count: fe.backend_count,
    }
}

/// What a packet gets from an existing conntrack entry at the hooks of `q.origin` (the
/// `ct_lookup` branch every packet hook takes first).
fn tracked<A: ExplainFamily>(q: &Q<A>, entry: &CtEntryOf<A>) -> Tracked {
    let forward = entry.dir == CT_DIR_FORWARD;
    let translate = |reason: Reason| Outcome::Translate {
        new_src: ip(entry.src_addr),
        new_src_port: Some(entry.src_port),
        new_src_port_ranges: None,
        new_dst: ip(entry.dst_addr),
        new_dst_port: entry.dst_port,
        flags: ct_flag_words(entry.flags),
        counter: counter(reason),
    };
    let outcome = match (q.origin, forward) {
        (_, true) => translate(Reason::DnatEstablished),
        // pod ingress translates a reply in either case (the pod is a backend answering).
        (Origin::Pod, false) => translate(Reason::RevNat),
        (Origin::Uplink, false) if entry.flags & CT_F_EXTERNAL != 0 => translate(Reason::RevNat),
        (_, false) => Outcome::Pass {
            counter: Some(counter(Reason::NotService)),
            why: "a reply to a flow a pod started: the pod veth's egress hook translates it".into(),
        },
    };
    Tracked {
        dir: if forward { "forward" } else { "reply" }.into(),
        frontend_id: entry.frontend_id,
        backend_id: entry.backend_id,
        state: ct_state_name(entry.state),
        expired: false,
        expires_in_s: None,
        outcome,
    }
}

/// [`tracked`], judged for expiry at `snap.now_ns`, with the notes that go with its state.
fn tracked_at<A: ExplainFamily>(
    snap: &Snapshot,
    q: &Q<A>,
    key: &CtKeyOf<A>,
    entry: &CtEntryOf<A>,
) -> (Tracked, Vec<String>) {
    let timeouts = snap.ct_timeouts.unwrap_or(CtTimeouts::DEFAULT);
    let peer = A::conntrack(snap).get(&ct_peer_key(key, entry));
    let remaining = remaining_ms(key, entry, peer, snap.now_ns, &timeouts);
    let mut t = tracked(q, entry);
    t.expired = remaining.is_none();
    t.expires_in_s = remaining.map(|ms| ms.div_ceil(1000));
    let idle_s = snap.now_ns.saturating_sub(entry.last_seen_ns) / 1_000_000_000;
    let timeout_s = timeouts.for_entry(key.proto, entry) / 1_000_000_000;
    let mut notes = Vec::new();
    if t.expired {
        notes.push(format!(
            "the {} entry for this tuple has expired (state {}, idle {idle_s}s, timeout \
             {timeout_s}s; its peer has expired or is gone too): the datapath ignores it and \
             decides the packet as a new flow, and the collector deletes it at its next pass",
            t.dir, t.state
        ));
        if q.proto == PROTO_TCP {
            notes.push(format!(
                "a SYN opens a new TCP flow ({}); a mid-stream packet is picked up onto the \
                 backend the tuple hashes to, the one its SYN got while the backends are \
                 unchanged ({}); a RST is dropped ({})",
                counter(Reason::CtReopened),
                counter(Reason::CtPickedUp),
                counter(Reason::NonSynNoEntry)
            ));
        }
    } else if q.proto == PROTO_TCP && entry.dir == CT_DIR_FORWARD {
        // lb.rs: a SYN from the client reopens a closing flow, or one whose backend is no longer
        // the frontend's; a retransmitted SYN of a live flow keeps its backend.
        let why = if ct_state_closed(entry.state) || entry.state == CT_STATE_CLOSE_WAIT {
            Some(format!("the flow is closing (state {})", t.state))
        } else if !backend_current(snap, q, entry) {
            Some(format!(
                "backend {} is no longer one of this frontend's",
                entry.backend_id
            ))
        } else {
            None
        };
        if let Some(why) = why {
            notes.push(format!(
                "{why}: a SYN on this tuple opens a new flow balanced afresh ({}); other \
                 packets follow the entry for {}s more",
                counter(Reason::CtReopened),
                t.expires_in_s.unwrap_or(0)
            ));
        }
    }
    (t, notes)
}

/// Frontends with more backends than this are not scanned for membership (lb.rs
/// `MEMBERSHIP_SCAN`): their flows' backends count as current.
const MEMBERSHIP_SCAN: u32 = 16;

/// Mirrors lb.rs `backend_current`: the entry's frontend is the one the query's destination
/// resolves to (the external-scope entry from the uplink when flagged), its backend still has
/// the address the entry translates to, and a counted slot names it.
fn backend_current<A: ExplainFamily>(snap: &Snapshot, q: &Q<A>, e: &CtEntryOf<A>) -> bool {
    let mut key = FrontendKeyOf {
        addr: q.dst,
        port: q.dst_port,
        proto: q.proto,
        scope: SCOPE_ANY,
    };
    let Some(mut fe) = A::snap_frontends(&snap.maps).get(&key) else {
        return false;
    };
    if q.origin == Origin::Uplink && fe.flags & FRONTEND_F_EXTERNAL_SCOPE != 0 {
        key.scope = SCOPE_EXTERNAL;
        let Some(external) = A::snap_frontends(&snap.maps).get(&key) else {
            return false;
        };
        fe = external;
    }
    if fe.id != e.frontend_id {
        return false;
    }
    match A::snap_backends(&snap.maps).get(&e.backend_id) {
        Some(b) if b.addr == e.dst_addr && b.port == e.dst_port => {}
        _ => return false,
    }
    fe.backend_count > MEMBERSHIP_SCAN
        || (1..=fe.backend_count).any(|slot| {
            snap.maps
                .slots
                .get(&SlotKey {
                    frontend_id: fe.id,
                    slot,
                })
                .is_some_and(|s| s.backend_id == e.backend_id)
        })
}

/// What picking `slot` of `fe` does to a new flow from `origin` (lb.rs `new_flow` after the
/// random draw; socklb.rs `translate` for [`Origin::Host`]).
///
/// `sticky`: the backend session affinity names instead of a slot's (`slot` is then the slot
/// holding it, 0 if none does any more).
fn candidate<A: ExplainFamily>(
    snap: &Snapshot,
    q: &Q<A>,
    fe: &Frontend,
    slot: u32,
    sticky: Option<u32>,
) -> Candidate {
    let backend_id = sticky.or_else(|| {
        snap.maps
            .slots
            .get(&SlotKey {
                frontend_id: fe.id,
                slot,
            })
            .map(|s| s.backend_id)
    });
    let backend: Option<BackendOf<A>> =
        backend_id.and_then(|id| A::snap_backends(&snap.maps).get(&id).copied());
    let mut c = Candidate {
        slot,
        backend_id,
        address: backend.map(|b| ip(b.addr)),
        port: backend.map(|b| b.port),
        backend_flags: backend
            .map(|b| backend_flag_words(b.flags))
            .unwrap_or_default(),
        outcome: Outcome::Pass {
            counter: None,
            why: String::new(),
        },
    };
    let Some(backend) = backend else {
        let what = match backend_id {
            None => format!("slot {slot} of frontend {} is missing", fe.id),
            Some(id) => format!("backend {id} (slot {slot}) is missing"),
        };
        c.outcome = match q.origin {
            // sock.rs lets the call proceed untranslated.
            Origin::Host => Outcome::Pass {
                counter: Some(counter(Reason::BackendMissing)),
                why: format!("{what}: the socket call proceeds untranslated"),
            },
            _ => drop(
                Reason::BackendMissing,
                format!("{what} (an agent update-order bug)"),
            ),
        };
        return c;
    };
    let mut new_src = q.src;
    let mut new_src_port = q.src_port;
    let mut new_src_port_ranges = None;
    let mut flags = 0u8;
    let mut reason = match sticky {
        Some(_) => Reason::Affinity,
        None => Reason::DnatNew,
    };
    match q.origin {
        Origin::Host => reason = Reason::SockTranslated,
        Origin::Pod => {
            if backend.addr == q.src {
                new_src = q.dst;
                flags |= CT_F_HAIRPIN;
                reason = Reason::Hairpin;
            }
        }
        Origin::Uplink => {
            flags |= CT_F_EXTERNAL;
            if backend.flags & BACKEND_F_LOCAL == 0 {
                let node_addr = snap
                    .config
                    .map(|c| A::node_addr(&c))
                    .filter(|a| *a != A::UNSPECIFIED);
                let Some(node_addr) = node_addr else {
                    c.outcome = drop(
                        A::NO_SNAT_ADDRESS,
                        format!(
                            "the backend is remote and needs source NAT, but SVC_CONFIG holds \
                             no {} node address",
                            A::NAME
                        ),
                    );
                    return c;
                };
                new_src = node_addr;
                new_src_port = None;
                let ports = snap.snat_ports.unwrap_or(SnatPorts::DEFAULT);
                new_src_port_ranges = Some(
                    (0..2)
                        .filter_map(|k| ports.range(k))
                        .map(|r| [*r.start(), *r.end()])
                        .collect(),
                );
                flags |= CT_F_SNAT;
            }
        }
    }
    c.outcome = Outcome::Translate {
        new_src: ip(new_src),
        new_src_port,
        new_src_port_ranges,
        new_dst: ip(backend.addr),
        new_dst_port: backend.port,
        flags: ct_flag_words(flags),
        counter: counter(reason),
    };
    c
}

/// lb.rs `pick_backend`'s affinity branch: `true` (and `out` filled) when a fresh entry for
/// this client names a backend that is still the same, so the new flow goes there.
fn sticky<A: ExplainFamily>(
    snap: &Snapshot,
    q: &Q<A>,
    fe: &Frontend,
    out: &mut Explanation,
) -> bool {
    // Node processes (socket hooks) key on the node's address.
    let client = match q.origin {
        Origin::Host => snap
            .config
            .map(|c| A::node_addr(&c))
            .unwrap_or(A::UNSPECIFIED),
        _ => q.src,
    };
    let timeout_ns = u64::from(fe.affinity_timeout_s) * 1_000_000_000;
    let key = AffinityKeyOf {
        frontend_id: fe.id,
        client_addr: client,
    };
    let Some(a) = A::affinity_table(snap).get(&key) else {
        out.notes.push(format!(
            "sessionAffinity: ClientIP ({} s): no recent flow from {}; the backend drawn is \
             recorded and this client's next flows follow it",
            fe.affinity_timeout_s,
            ip(client)
        ));
        return false;
    };
    let (a_backend_id, a_addr, a_port, a_last_used) = A::affinity_parts(a);
    let idle = snap.now_ns.wrapping_sub(a_last_used);
    let same = A::snap_backends(&snap.maps)
        .get(&a_backend_id)
        .is_some_and(|b| b.addr == a_addr && b.port == a_port);
    if idle >= timeout_ns || !same {
        out.notes.push(format!(
            "sessionAffinity: ClientIP ({} s): this client's entry (backend {}) is {}; a slot is \
             drawn afresh and recorded",
            fe.affinity_timeout_s,
            a_backend_id,
            if same {
                "expired"
            } else {
                "for a backend that changed"
            }
        ));
        return false;
    }
    let slot = (1..=fe.backend_count)
        .find(|&n| {
            snap.maps.slots.get(&SlotKey {
                frontend_id: fe.id,
                slot: n,
            }) == Some(&svc_common::Slot {
                backend_id: a_backend_id,
            })
        })
        .unwrap_or(0);
    out.candidates = vec![candidate(snap, q, fe, slot, Some(a_backend_id))];
    out.new_flow = Outcome::Sticky {
        backend_id: a_backend_id,
        idle_ms: idle / 1_000_000,
        timeout_s: fe.affinity_timeout_s,
    };
    true
}

/// Explains what the datapath does with the flow `q`, reading only `snap`: an IPv4 flow by
/// the IPv4 maps, an IPv6 one by the IPv6 maps (the datapath's hooks do the same per
/// family). Addresses of two families name no flow.
pub fn explain(snap: &Snapshot, q: &Query) -> Explanation {
    let mut out = match (q.src, q.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => decide(snap, &Q::of(q, src.octets(), dst.octets())),
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            decide(snap, &Q::<svc_common::Addr6>::of(q, src.into(), dst.into()))
        }
        _ => {
            let mut out = skeleton(q);
            out.new_flow = Outcome::Pass {
                counter: None,
                why: format!(
                    "{} and {} are of two address families: no packet carries both",
                    q.src, q.dst
                ),
            };
            out
        }
    };
    // An expired entry is no entry: the packet gets the new-flow decision.
    if let Some(t) = out.conntrack.as_mut().filter(|t| t.expired) {
        t.outcome = out.new_flow.clone();
    }
    out
}

/// The query, its addresses as the family's maps hold them.
#[derive(Clone, Copy, Debug)]
struct Q<A> {
    src: A,
    src_port: Option<u16>,
    dst: A,
    dst_port: u16,
    proto: u8,
    origin: Origin,
}

impl<A> Q<A> {
    fn of(q: &Query, src: A, dst: A) -> Self {
        Self {
            src,
            src_port: q.src_port,
            dst,
            dst_port: q.dst_port,
            proto: q.proto,
            origin: q.origin,
        }
    }
}

/// An address as `explain` shows it.
fn ip<A: Family>(a: A) -> IpAddr {
    A::to_ip(a).into()
}

/// What `explain` reads per family beyond [`Family`]: its conntrack and affinity tables, its
/// node address and the hook names.
trait ExplainFamily: Family {
    /// What a remote backend's flow is dropped as when there is no SNAT source.
    const NO_SNAT_ADDRESS: Reason;
    fn conntrack(s: &Snapshot) -> &BTreeMap<CtKeyOf<Self>, CtEntryOf<Self>>;
    fn affinity_table(s: &Snapshot) -> &BTreeMap<AffinityKeyOf<Self>, Self::Affinity>;
    fn node_addr(c: &Config) -> Self;
    /// The hooks of `origin` for this family.
    fn hook(origin: Origin) -> &'static str;
}

impl ExplainFamily for [u8; 4] {
    const NO_SNAT_ADDRESS: Reason = Reason::SnatNoPort;
    fn conntrack(s: &Snapshot) -> &BTreeMap<CtKey, CtEntry> {
        &s.conntrack
    }
    fn affinity_table(s: &Snapshot) -> &BTreeMap<AffinityKey, Affinity> {
        &s.affinity
    }
    fn node_addr(c: &Config) -> Self {
        c.node_addr
    }
    fn hook(origin: Origin) -> &'static str {
        match origin {
            Origin::Pod => "tc svc_pod_ingress (host side of the pod's veth)",
            Origin::Uplink => {
                "XDP svc_xdp on the uplink, then tc svc_uplink_ingress for what it passes on"
            }
            Origin::Host => {
                "cgroup svc_sock_connect4 / svc_sock_sendmsg4 (socket calls, not packets)"
            }
        }
    }
}

impl ExplainFamily for svc_common::Addr6 {
    // svc-common `Config::node_addr6`: IPv6 flows that need SNAT without one are dropped.
    const NO_SNAT_ADDRESS: Reason = Reason::SnatNoAddress;
    fn conntrack(s: &Snapshot) -> &BTreeMap<CtKey6, CtEntry6> {
        &s.conntrack6
    }
    fn affinity_table(s: &Snapshot) -> &BTreeMap<AffinityKey6, Affinity6> {
        &s.affinity6
    }
    fn node_addr(c: &Config) -> Self {
        c.node_addr6
    }
    fn hook(origin: Origin) -> &'static str {
        match origin {
            Origin::Pod => "tc on the host side of the pod's veth, IPv6 (hook pod_ingress6)",
            Origin::Uplink => {
                "tc ingress on the uplink, IPv6 (hook uplink_ingress6; IPv6 has no XDP fast \
                 path)"
            }
            Origin::Host => {
                "cgroup connect6 / sendmsg6, IPv6 (hook sock6; socket calls, not packets)"
            }
        }
    }
}

/// An explanation of `q` with nothing decided yet.
fn skeleton(q: &Query) -> Explanation {
    Explanation {
        src: q.src,
        src_port: q.src_port,
        dst: q.dst,
        dst_port: q.dst_port,
        protocol: proto_name(q.proto),
        from: q.origin,
        hook: String::new(),
        frontend: None,
        external_frontend: None,
        scope_used: None,
        candidates: Vec::new(),
        new_flow: Outcome::Pass {
            counter: None,
            why: String::new(),
        },
        conntrack: None,
        tracked_flows_from_src: None,
        notes: Vec::new(),
    }
}

fn decide<A: ExplainFamily>(snap: &Snapshot, q: &Q<A>) -> Explanation {
    let hook = A::hook(q.origin);
    let mut out = Explanation {
        hook: hook.into(),
        ..skeleton(&Query {
            src: ip(q.src),
            src_port: q.src_port,
            dst: ip(q.dst),
            dst_port: q.dst_port,
            proto: q.proto,
            origin: q.origin,
        })
    };

    // Conntrack first, as every packet hook does; the socket hooks keep none.
    match (q.origin, q.src_port) {
        (Origin::Host, _) => out.notes.push(
            "socket hooks keep no conntrack: every connect() (and every UDP sendmsg() to a \
             frontend) picks a backend anew"
                .into(),
        ),
        (_, Some(sport)) => {
            let key = A::ct_key(q.src, q.dst, sport, q.dst_port, q.proto);
            if let Some(e) = A::conntrack(snap).get(&key) {
                let (t, notes) = tracked_at(snap, q, &key, e);
                out.conntrack = Some(t);
                out.notes.extend(notes);
            }
        }
        (_, None) => {
            out.tracked_flows_from_src = Some(
                A::conntrack(snap)
                    .iter()
                    .filter(|(k, e)| {
                        e.dir == CT_DIR_FORWARD
                            && k.src_addr == q.src
                            && k.dst_addr == q.dst
                            && k.dst_port == q.dst_port
                            && k.proto == q.proto
                    })
                    .count(),
            );
        }
    }
    if q.origin == Origin::Host {
        match snap.config {
            Some(c) if c.netns_cookie != 0 => {}
            _ => out.notes.push(
                "SVC_CONFIG holds no network-namespace cookie: the socket hooks translate \
                 nothing"
                    .into(),
            ),
        }
        out.notes.push(
            "applies only to processes in the cgroup the agent's socket hooks are attached to \
             (--cgroup)"
                .into(),
        );
    }

    let mut key = FrontendKeyOf {
        addr: q.dst,
        port: q.dst_port,
        proto: q.proto,
        scope: SCOPE_ANY,
    };
    let Some(mut fe) = A::snap_frontends(&snap.maps).get(&key).copied() else {
        out.new_flow = Outcome::Pass {
            counter: match q.origin {
                Origin::Host => None,
                _ => Some(counter(Reason::NotService)),
            },
            why: format!(
                "not a Service frontend: no {} entry for {}/{}",
                scope_name(SCOPE_ANY),
                host_port(ip(q.dst), q.dst_port),
                proto_name(q.proto)
            ),
        };
        return out;
    };
    out.frontend = Some(entry_view(&fe, SCOPE_ANY));
    if q.origin == Origin::Uplink && fe.flags & FRONTEND_F_EXTERNAL_SCOPE != 0 {
        key.scope = SCOPE_EXTERNAL;
        match A::snap_frontends(&snap.maps).get(&key).copied() {
            Some(ext) => {
                fe = ext;
                out.external_frontend = Some(entry_view(&fe, SCOPE_EXTERNAL));
            }
            None => {
                out.new_flow = drop(
                    Reason::BackendMissing,
                    "the frontend is flagged external-scope but has no external entry \
                     (an agent update-order bug)",
                );
                return out;
            }
        }
    }
    out.scope_used = Some(scope_name(key.scope));
    let set = match key.scope {
        SCOPE_EXTERNAL => "this node's endpoints (externalTrafficPolicy: Local)",
        _ => "the Service's endpoints",
    };
    // lb.rs `new_flow` checks the source before the backend count.
    if q.origin != Origin::Host && fe.flags & FRONTEND_F_SOURCE_RANGES != 0 {
        let ranges = source_ranges_of::<A>(&snap.maps, fe.id);
        match A::snap_ranges(&snap.maps)
            .iter()
            .find(|r| r.frontend_id == fe.id && r.contains(q.src))
        {
            Some(r) => out.notes.push(format!(
                "loadBalancerSourceRanges: {} is inside {}/{}",
                ip(q.src),
                ip(r.addr),
                r.len
            )),
            None => {
                out.new_flow = drop(
                    Reason::SourceRangeDenied,
                    format!(
                        "denied by loadBalancerSourceRanges: {} is outside [{}]",
                        ip(q.src),
                        ranges.join(", ")
                    ),
                );
                return out;
            }
        }
    }

    if fe.backend_count == 0 {
        out.new_flow = if fe.flags & FRONTEND_F_DROP_NO_BACKEND != 0 {
            let why = format!("no backend among {set}, and the policy is Local: dropped so that a load balancer's health check moves the client to another node");
            match q.origin {
                Origin::Host => drop(
                    Reason::NoBackend,
                    format!("{why}; connect() fails with EPERM"),
                ),
                _ => drop(Reason::PolicyDrop, why),
            }
        } else {
            let reply = match (q.origin, q.proto) {
                (Origin::Host, _) => "econnrefused",
                (_, PROTO_TCP) => "tcp_rst",
                _ => "icmp_port_unreachable",
            };
            Outcome::Reject {
                reply: reply.into(),
                counter: counter(Reason::NoBackend),
                why: format!("no usable backend among {set} (as kube-proxy's REJECT)"),
            }
        };
        return out;
    }
    // sock.rs `translate` checks the node's standing after the backend count.
    if q.origin == Origin::Host && fe.flags & FRONTEND_F_DENY_NODE != 0 {
        out.new_flow = drop(
            Reason::SourceRangeDenied,
            format!(
                "denied by loadBalancerSourceRanges: no range contains a node address \
                 (allowed: [{}]); connect() and sendmsg() fail with EPERM",
                source_ranges_of::<A>(&snap.maps, fe.id).join(", ")
            ),
        );
        return out;
    }

    if fe.affinity_timeout_s != 0 && sticky(snap, q, &fe, &mut out) {
        return out;
    }
    out.candidates = (1..=fe.backend_count)
        .map(|slot| candidate(snap, q, &fe, slot, None))
        .collect();
    let translating = out
        .candidates
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Translate { .. }))
        .count();
    out.new_flow = if translating == 0 {
        // Every slot fails; they fail alike in practice (same config, same agent bug).
        out.candidates[0].outcome.clone()
    } else {
        if translating < out.candidates.len() {
            out.notes.push(format!(
                "{} of {} slots fail (see candidates): a new flow that draws one of them is not \
                 translated",
                out.candidates.len() - translating,
                out.candidates.len()
            ));
        }
        Outcome::Balance {
            slots: fe.backend_count,
            translating: translating as u32,
        }
    };
    out
}

#[cfg(test)]
mod tests;
