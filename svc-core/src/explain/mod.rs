//! `svc-agent explain`'s decision: what the datapath would do with a flow, decided over a [`Snapshot`] of
//! the maps by the datapath's own rules.
//!
//! [`explain`] is pure and mirrors, branch for branch:
//! - `svc-ebpf/src/lb.rs` `new_flow` for [`Origin::Pod`] (tc `svc_pod_ingress`) and
//!   [`Origin::Uplink`] (XDP `svc_xdp`, and tc `svc_uplink_ingress` for what XDP hands on);
//! - the conntrack lookup each of those hooks does first (`programs.rs`, `uplink.rs`, `xdp.rs`);
//! - `svc-ebpf/src/sock.rs` `translate` for [`Origin::Host`] (cgroup `connect4`/`sendmsg4`).
//!
//! What it cannot know is said, not guessed: the backend of a new flow is a uniformly random
//! slot (`bpf_get_prandom_u32`) unless a fresh session-affinity entry names one (`SVC_AFFINITY`,
//! lb.rs `pick_backend`), so every eligible slot is listed with what choosing it does; a
//! source-NAT port is random in [`SNAT_PORT_MIN`]`..=`[`SNAT_PORT_MAX`]; whether the socket
//! hooks are attached to the caller's cgroup is not in any map. When the datapath changes, this
//! file must change with it: its table tests name each branch of `new_flow`.
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};
use svc_common::{
    ct_peer_key, ct_state_closed, Affinity, AffinityKey, Backend, Config, CtEntry, CtKey,
    CtTimeouts, Frontend, FrontendKey, Reason, SlotKey, ALL_REASONS, BACKEND_F_LOCAL,
    CT_DIR_FORWARD, CT_F_EXTERNAL, CT_F_HAIRPIN, CT_F_SNAT, CT_STATE_CLOSE_WAIT,
    FRONTEND_F_DENY_NODE, FRONTEND_F_DROP_NO_BACKEND, FRONTEND_F_EXTERNAL_SCOPE,
    FRONTEND_F_SOURCE_RANGES, PROTO_TCP, SCOPE_ANY, SCOPE_EXTERNAL, SNAT_PORT_MAX, SNAT_PORT_MIN,
};

use crate::dataplane::MapSnapshot;
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

/// The flow to explain: `SRC_IP[:PORT] DST_IP:PORT/PROTO --from ORIGIN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub src: Ipv4Addr,
    /// The client's port, when known: only then can an existing conntrack entry be found.
    pub src_port: Option<u16>,
    pub dst: Ipv4Addr,
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
    /// `CLOCK_MONOTONIC` now, to judge whether an affinity or conntrack entry is still fresh.
    pub now_ns: u64,
    /// The conntrack timeouts the agent gave the datapath; `None`: the defaults.
    pub ct_timeouts: Option<CtTimeouts>,
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
    pub address: Option<Ipv4Addr>,
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
        new_src: Ipv4Addr,
        /// The source port written; `None` when it is the client's own (unknown without
        /// `SRC:PORT`) or a random SNAT port (see `new_src_port_range`).
        new_src_port: Option<u16>,
        /// `[first, last]` of the random SNAT port range, with `snat`.
        new_src_port_range: Option<[u16; 2]>,
        new_dst: Ipv4Addr,
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
    pub src: Ipv4Addr,
    pub src_port: Option<u16>,
    pub dst: Ipv4Addr,
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
fn tracked(q: &Query, entry: &CtEntry) -> Tracked {
    let forward = entry.dir == CT_DIR_FORWARD;
    let translate = |reason: Reason| Outcome::Translate {
        new_src: entry.src_addr.into(),
        new_src_port: Some(entry.src_port),
        new_src_port_range: None,
        new_dst: entry.dst_addr.into(),
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
fn tracked_at(snap: &Snapshot, q: &Query, key: &CtKey, entry: &CtEntry) -> (Tracked, Vec<String>) {
    let timeouts = snap.ct_timeouts.unwrap_or(CtTimeouts::DEFAULT);
    let peer = snap.conntrack.get(&ct_peer_key(key, entry));
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
fn backend_current(snap: &Snapshot, q: &Query, e: &CtEntry) -> bool {
    let mut key = FrontendKey {
        addr: q.dst.octets(),
        port: q.dst_port,
        proto: q.proto,
        scope: SCOPE_ANY,
    };
    let Some(mut fe) = snap.maps.frontends.get(&key) else {
        return false;
    };
    if q.origin == Origin::Uplink && fe.flags & FRONTEND_F_EXTERNAL_SCOPE != 0 {
        key.scope = SCOPE_EXTERNAL;
        let Some(external) = snap.maps.frontends.get(&key) else {
            return false;
        };
        fe = external;
    }
    if fe.id != e.frontend_id {
        return false;
    }
    match snap.maps.backends.get(&e.backend_id) {
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
/// random draw; sock.rs `translate` for [`Origin::Host`]).
///
/// `sticky`: the backend session affinity names instead of a slot's (`slot` is then the slot
/// holding it, 0 if none does any more).
fn candidate(
    snap: &Snapshot,
    q: &Query,
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
    let backend: Option<Backend> = backend_id.and_then(|id| snap.maps.backends.get(&id).copied());
    let mut c = Candidate {
        slot,
        backend_id,
        address: backend.map(|b| b.addr.into()),
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
    let mut new_src_port_range = None;
    let mut flags = 0u8;
    let mut reason = match sticky {
        Some(_) => Reason::Affinity,
        None => Reason::DnatNew,
    };
    match q.origin {
        Origin::Host => reason = Reason::SockTranslated,
        Origin::Pod => {
            if Ipv4Addr::from(backend.addr) == q.src {
                new_src = q.dst;
                flags |= CT_F_HAIRPIN;
                reason = Reason::Hairpin;
            }
        }
        Origin::Uplink => {
            flags |= CT_F_EXTERNAL;
            if backend.flags & BACKEND_F_LOCAL == 0 {
                let Some(config) = snap.config else {
                    c.outcome = drop(
                        Reason::SnatNoPort,
                        "the backend is remote and needs source NAT, but SVC_CONFIG holds no \
                         node address",
                    );
                    return c;
                };
                new_src = config.node_addr.into();
                new_src_port = None;
                new_src_port_range = Some([SNAT_PORT_MIN, SNAT_PORT_MAX]);
                flags |= CT_F_SNAT;
            }
        }
    }
    c.outcome = Outcome::Translate {
        new_src,
        new_src_port,
        new_src_port_range,
        new_dst: backend.addr.into(),
        new_dst_port: backend.port,
        flags: ct_flag_words(flags),
        counter: counter(reason),
    };
    c
}

/// lb.rs `pick_backend`'s affinity branch: `true` (and `out` filled) when a fresh entry for
/// this client names a backend that is still the same, so the new flow goes there.
fn sticky(snap: &Snapshot, q: &Query, fe: &Frontend, out: &mut Explanation) -> bool {
    // Node processes (socket hooks) key on the node's address.
    let client = match q.origin {
        Origin::Host => snap.config.map(|c| c.node_addr).unwrap_or_default(),
        _ => q.src.octets(),
    };
    let timeout_ns = u64::from(fe.affinity_timeout_s) * 1_000_000_000;
    let key = AffinityKey {
        frontend_id: fe.id,
        client_addr: client,
    };
    let Some(a) = snap.affinity.get(&key) else {
        out.notes.push(format!(
            "sessionAffinity: ClientIP ({} s): no recent flow from {}; the backend drawn is \
             recorded and this client's next flows follow it",
            fe.affinity_timeout_s,
            Ipv4Addr::from(client)
        ));
        return false;
    };
    let idle = snap.now_ns.wrapping_sub(a.last_used_ns);
    let same = snap
        .maps
        .backends
        .get(&a.backend_id)
        .is_some_and(|b| b.addr == a.backend_addr && b.port == a.backend_port);
    if idle >= timeout_ns || !same {
        out.notes.push(format!(
            "sessionAffinity: ClientIP ({} s): this client's entry (backend {}) is {}; a slot is \
             drawn afresh and recorded",
            fe.affinity_timeout_s,
            a.backend_id,
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
                backend_id: a.backend_id,
            })
        })
        .unwrap_or(0);
    out.candidates = vec![candidate(snap, q, fe, slot, Some(a.backend_id))];
    out.new_flow = Outcome::Sticky {
        backend_id: a.backend_id,
        idle_ms: idle / 1_000_000,
        timeout_s: fe.affinity_timeout_s,
    };
    true
}

/// Explains what the datapath does with the flow `q`, reading only `snap`.
pub fn explain(snap: &Snapshot, q: &Query) -> Explanation {
    let mut out = decide(snap, q);
    // An expired entry is no entry: the packet gets the new-flow decision.
    if let Some(t) = out.conntrack.as_mut().filter(|t| t.expired) {
        t.outcome = out.new_flow.clone();
    }
    out
}

fn decide(snap: &Snapshot, q: &Query) -> Explanation {
    let hook = match q.origin {
        Origin::Pod => "tc svc_pod_ingress (host side of the pod's veth)",
        Origin::Uplink => {
            "XDP svc_xdp on the uplink, then tc svc_uplink_ingress for what it passes on"
        }
        Origin::Host => "cgroup svc_sock_connect4 / svc_sock_sendmsg4 (socket calls, not packets)",
    };
    let mut out = Explanation {
        src: q.src,
        src_port: q.src_port,
        dst: q.dst,
        dst_port: q.dst_port,
        protocol: proto_name(q.proto),
        from: q.origin,
        hook: hook.into(),
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
    };

    // Conntrack first, as every packet hook does; the socket hooks keep none.
    match (q.origin, q.src_port) {
        (Origin::Host, _) => out.notes.push(
            "socket hooks keep no conntrack: every connect() (and every UDP sendmsg() to a \
             frontend) picks a backend anew"
                .into(),
        ),
        (_, Some(sport)) => {
            let key = CtKey {
                src_addr: q.src.octets(),
                dst_addr: q.dst.octets(),
                src_port: sport,
                dst_port: q.dst_port,
                proto: q.proto,
                _pad: [0; 3],
            };
            if let Some(e) = snap.conntrack.get(&key) {
                let (t, notes) = tracked_at(snap, q, &key, e);
                out.conntrack = Some(t);
                out.notes.extend(notes);
            }
        }
        (_, None) => {
            out.tracked_flows_from_src = Some(
                snap.conntrack
                    .iter()
                    .filter(|(k, e)| {
                        e.dir == CT_DIR_FORWARD
                            && k.src_addr == q.src.octets()
                            && k.dst_addr == q.dst.octets()
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

    let mut key = FrontendKey {
        addr: q.dst.octets(),
        port: q.dst_port,
        proto: q.proto,
        scope: SCOPE_ANY,
    };
    let Some(mut fe) = snap.maps.frontends.get(&key).copied() else {
        out.new_flow = Outcome::Pass {
            counter: match q.origin {
                Origin::Host => None,
                _ => Some(counter(Reason::NotService)),
            },
            why: format!(
                "not a Service frontend: no {} entry for {}:{}/{}",
                scope_name(SCOPE_ANY),
                q.dst,
                q.dst_port,
                proto_name(q.proto)
            ),
        };
        return out;
    };
    out.frontend = Some(entry_view(&fe, SCOPE_ANY));
    if q.origin == Origin::Uplink && fe.flags & FRONTEND_F_EXTERNAL_SCOPE != 0 {
        key.scope = SCOPE_EXTERNAL;
        match snap.maps.frontends.get(&key).copied() {
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
        let ranges = source_ranges_of(&snap.maps, fe.id);
        match snap
            .maps
            .source_ranges
            .iter()
            .find(|r| r.frontend_id == fe.id && r.contains(q.src.octets()))
        {
            Some(r) => out.notes.push(format!(
                "loadBalancerSourceRanges: {} is inside {}/{}",
                q.src,
                Ipv4Addr::from(r.addr),
                r.len
            )),
            None => {
                out.new_flow = drop(
                    Reason::SourceRangeDenied,
                    format!(
                        "denied by loadBalancerSourceRanges: {} is outside [{}]",
                        q.src,
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
                source_ranges_of(&snap.maps, fe.id).join(", ")
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
mod tests {
    use svc_common::{Slot, BACKEND_F_TERMINATING, CT_DIR_REPLY, FRONTEND_F_NODEPORT, PROTO_UDP};

    use super::*;

    // Fixture vocabulary: a ClusterIP with a local and a remote backend, a NodePort with
    // externalTrafficPolicy: Local whose external entry is empty on this node, a Service
    // without endpoints, and a hairpin Service whose only backend is the client itself.
    const NODE: [u8; 4] = [172, 18, 0, 2];
    const CLIENT_POD: [u8; 4] = [10, 244, 1, 5];
    const EXTERNAL_CLIENT: [u8; 4] = [172, 18, 0, 100];
    const SVC_VIP: [u8; 4] = [10, 96, 0, 10];
    const SVC_EMPTY: [u8; 4] = [10, 96, 0, 20];
    const SVC_HAIRPIN: [u8; 4] = [10, 96, 0, 50];
    const BACKEND_LOCAL: [u8; 4] = [10, 244, 1, 2];
    const BACKEND_REMOTE: [u8; 4] = [10, 244, 2, 2];
    const NODEPORT: u16 = 30100;

    fn fe_key(addr: [u8; 4], port: u16, scope: u8) -> FrontendKey {
        FrontendKey {
            addr,
            port,
            proto: PROTO_TCP,
            scope,
        }
    }

    /// Frontend `id` at `key` over backend ids `backends`, with `flags`.
    fn add(snap: &mut Snapshot, key: FrontendKey, id: u32, flags: u32, backends: &[u32]) {
        for (i, b) in backends.iter().enumerate() {
            snap.maps.slots.insert(
                SlotKey {
                    frontend_id: id,
                    slot: i as u32 + 1,
                },
                Slot { backend_id: *b },
            );
        }
        snap.maps.frontends.insert(
            key,
            Frontend {
                id,
                backend_count: backends.len() as u32,
                flags,
                affinity_timeout_s: 0,
            },
        );
    }

    fn scene() -> Snapshot {
        let mut s = Snapshot {
            config: Some(Config {
                node_addr: NODE,
                flags: 0,
                netns_cookie: 4096,
            }),
            ..Default::default()
        };
        let backend = |addr, flags| Backend {
            addr,
            port: 8080,
            proto: PROTO_TCP,
            flags,
        };
        s.maps
            .backends
            .insert(1, backend(BACKEND_LOCAL, BACKEND_F_LOCAL));
        s.maps.backends.insert(2, backend(BACKEND_REMOTE, 0));
        s.maps
            .backends
            .insert(3, backend(CLIENT_POD, BACKEND_F_LOCAL));
        s.maps
            .backends
            .insert(4, backend(BACKEND_REMOTE, BACKEND_F_TERMINATING));
        add(&mut s, fe_key(SVC_VIP, 80, SCOPE_ANY), 10, 0, &[1, 2]);
        add(&mut s, fe_key(SVC_EMPTY, 80, SCOPE_ANY), 11, 0, &[]);
        add(&mut s, fe_key(SVC_HAIRPIN, 80, SCOPE_ANY), 12, 0, &[3]);
        // eTP Local NodePort on a node without a local endpoint: cluster-wide set in the any
        // entry (the remote backend), nothing in the external one.
        add(
            &mut s,
            fe_key(NODE, NODEPORT, SCOPE_ANY),
            13,
            FRONTEND_F_NODEPORT | FRONTEND_F_EXTERNAL_SCOPE,
            &[2],
        );
        add(
            &mut s,
            fe_key(NODE, NODEPORT, SCOPE_EXTERNAL),
            14,
            FRONTEND_F_NODEPORT | FRONTEND_F_DROP_NO_BACKEND,
            &[],
        );
        // A NodePort with cluster policy: remote backend from outside needs SNAT.
        add(
            &mut s,
            fe_key(NODE, 30007, SCOPE_ANY),
            15,
            FRONTEND_F_NODEPORT,
            &[1, 2],
        );
        s
    }

    fn q(src: [u8; 4], dst: [u8; 4], port: u16, origin: Origin) -> Query {
        Query {
            src: src.into(),
            src_port: None,
            dst: dst.into(),
            dst_port: port,
            proto: PROTO_TCP,
            origin,
        }
    }

    fn translate(
        src: [u8; 4],
        sport: Option<u16>,
        dst: [u8; 4],
        flags: &[&str],
        counter: &str,
    ) -> Outcome {
        Outcome::Translate {
            new_src: src.into(),
            new_src_port: sport,
            new_src_port_range: None,
            new_dst: dst.into(),
            new_dst_port: 8080,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            counter: counter.into(),
        }
    }

    fn snat(dst: [u8; 4]) -> Outcome {
        Outcome::Translate {
            new_src: NODE.into(),
            new_src_port: None,
            new_src_port_range: Some([SNAT_PORT_MIN, SNAT_PORT_MAX]),
            new_dst: dst.into(),
            new_dst_port: 8080,
            flags: vec!["snat".into(), "external".into()],
            counter: "dnat_new".into(),
        }
    }

    fn outcomes(e: &Explanation) -> Vec<(u32, Outcome)> {
        e.candidates
            .iter()
            .map(|c| (c.slot, c.outcome.clone()))
            .collect()
    }

    /// Name, query, expected new-flow outcome, expected (slot, outcome) candidates.
    type Row = (&'static str, Query, Outcome, Vec<(u32, Outcome)>);

    #[test]
    fn new_flow_decisions() {
        let snap = scene();
        let balance = |n| Outcome::Balance {
            slots: n,
            translating: n,
        };
        let cases: Vec<Row> = vec![
            (
                "hit from a pod: random among both backends, client address kept",
                q(CLIENT_POD, SVC_VIP, 80, Origin::Pod),
                balance(2),
                vec![
                    (1, translate(CLIENT_POD, None, BACKEND_LOCAL, &[], "dnat_new")),
                    (2, translate(CLIENT_POD, None, BACKEND_REMOTE, &[], "dnat_new")),
                ],
            ),
            (
                "miss: not a Service frontend, passed untouched",
                q(CLIENT_POD, SVC_VIP, 81, Origin::Pod),
                Outcome::Pass {
                    counter: Some("not_service".into()),
                    why: "not a Service frontend: no any entry for 10.96.0.10:81/tcp".into(),
                },
                vec![],
            ),
            (
                "no endpoints, TCP: reject with a RST",
                q(CLIENT_POD, SVC_EMPTY, 80, Origin::Pod),
                Outcome::Reject {
                    reply: "tcp_rst".into(),
                    counter: "no_backend".into(),
                    why: "no usable backend among the Service's endpoints (as kube-proxy's REJECT)"
                        .into(),
                },
                vec![],
            ),
            (
                "eTP Local from the uplink on a node without a local endpoint: drop",
                q(EXTERNAL_CLIENT, NODE, NODEPORT, Origin::Uplink),
                drop(Reason::PolicyDrop, "no backend among this node's endpoints (externalTrafficPolicy: Local), and the policy is Local: dropped so that a load balancer's health check moves the client to another node"),
                vec![],
            ),
            (
                "same eTP Local frontend from a pod: the cluster-wide set",
                q(CLIENT_POD, NODE, NODEPORT, Origin::Pod),
                balance(1),
                vec![(1, translate(CLIENT_POD, None, BACKEND_REMOTE, &[], "dnat_new"))],
            ),
            (
                "hairpin: the client is the backend, the frontend becomes the source",
                q(CLIENT_POD, SVC_HAIRPIN, 80, Origin::Pod),
                balance(1),
                vec![(1, translate(SVC_HAIRPIN, None, CLIENT_POD, &["hairpin"], "hairpin"))],
            ),
            (
                "hairpin is a pod-hook decision: the host path never rewrites the source",
                q(CLIENT_POD, SVC_HAIRPIN, 80, Origin::Host),
                balance(1),
                vec![(1, translate(CLIENT_POD, None, CLIENT_POD, &[], "sock_translated"))],
            ),
            (
                "from the uplink: local backend keeps the client, remote one is SNATed",
                q(EXTERNAL_CLIENT, NODE, 30007, Origin::Uplink),
                balance(2),
                vec![
                    (1, translate(EXTERNAL_CLIENT, None, BACKEND_LOCAL, &["external"], "dnat_new")),
                    (2, snat(BACKEND_REMOTE)),
                ],
            ),
        ];
        for (name, query, want, want_candidates) in cases {
            let e = explain(&snap, &query);
            assert_eq!(e.new_flow, want, "{name}");
            assert_eq!(outcomes(&e), want_candidates, "{name}");
        }
    }

    #[test]
    fn load_balancer_source_ranges_deny_outside_sources_and_the_node_per_its_flag() {
        use crate::dataplane::SourceRange;
        const LB_IP: [u8; 4] = [203, 0, 113, 10];
        let mut snap = scene();
        let flags = svc_common::FRONTEND_F_EXTERNAL_IP | FRONTEND_F_SOURCE_RANGES;
        add(&mut snap, fe_key(LB_IP, 80, SCOPE_ANY), 30, flags, &[1]);
        add(
            &mut snap,
            fe_key(LB_IP, 81, SCOPE_ANY),
            31,
            flags | FRONTEND_F_DENY_NODE,
            &[1],
        );
        // Port 80's ranges contain the node; port 81's do not (hence its deny-node).
        for (id, addr) in [(30, [172, 18, 0, 0]), (31, [192, 0, 2, 0])] {
            snap.maps.source_ranges.insert(SourceRange {
                frontend_id: id,
                addr,
                len: 24,
            });
        }
        let outside = [198, 51, 100, 7];
        let allowed = explain(&snap, &q(EXTERNAL_CLIENT, LB_IP, 80, Origin::Uplink));
        assert_eq!(allowed.candidates.len(), 1, "{allowed:?}");
        assert!(allowed
            .notes
            .contains(&"loadBalancerSourceRanges: 172.18.0.100 is inside 172.18.0.0/24".into()));
        let denied = explain(&snap, &q(outside, LB_IP, 80, Origin::Uplink));
        assert_eq!(
            denied.new_flow,
            drop(
                Reason::SourceRangeDenied,
                "denied by loadBalancerSourceRanges: 198.51.100.7 is outside [172.18.0.0/24]"
            )
        );
        let pod = explain(&snap, &q(CLIENT_POD, LB_IP, 80, Origin::Pod));
        assert!(matches!(pod.new_flow, Outcome::Drop { .. }), "{pod:?}");
        // The node: allowed on port 80 (no deny-node), refused on 81, whatever the query's
        // source (a socket call has none yet).
        let host = explain(&snap, &q(outside, LB_IP, 80, Origin::Host));
        assert!(matches!(host.new_flow, Outcome::Balance { .. }), "{host:?}");
        let host = explain(&snap, &q(NODE, LB_IP, 81, Origin::Host));
        assert_eq!(
            host.new_flow,
            drop(
                Reason::SourceRangeDenied,
                "denied by loadBalancerSourceRanges: no range contains a node address \
                 (allowed: [192.0.2.0/24]); connect() and sendmsg() fail with EPERM"
            )
        );
    }

    #[test]
    fn uplink_uses_the_external_entry_and_reports_both() {
        let mut snap = scene();
        // Now this node has a local endpoint for the eTP Local NodePort.
        add(
            &mut snap,
            fe_key(NODE, NODEPORT, SCOPE_EXTERNAL),
            14,
            FRONTEND_F_NODEPORT | FRONTEND_F_DROP_NO_BACKEND,
            &[1],
        );
        let e = explain(&snap, &q(EXTERNAL_CLIENT, NODE, NODEPORT, Origin::Uplink));
        assert_eq!(e.frontend.as_ref().map(|f| f.id), Some(13));
        assert_eq!(e.external_frontend.as_ref().map(|f| f.id), Some(14));
        assert_eq!(e.scope_used.as_deref(), Some("external"));
        assert_eq!(
            outcomes(&e),
            vec![(
                1,
                translate(
                    EXTERNAL_CLIENT,
                    None,
                    BACKEND_LOCAL,
                    &["external"],
                    "dnat_new"
                )
            )]
        );
        assert_eq!(e.candidates[0].backend_flags, vec!["local".to_string()]);
    }

    #[test]
    fn no_backend_replies_by_protocol_and_origin() {
        let mut snap = scene();
        add(
            &mut snap,
            FrontendKey {
                proto: PROTO_UDP,
                ..fe_key(SVC_EMPTY, 53, SCOPE_ANY)
            },
            20,
            0,
            &[],
        );
        let reply = |e: Explanation| match e.new_flow {
            Outcome::Reject { reply, .. } => reply,
            other => panic!("{other:?}"),
        };
        let mut udp = q(CLIENT_POD, SVC_EMPTY, 53, Origin::Pod);
        udp.proto = PROTO_UDP;
        assert_eq!(reply(explain(&snap, &udp)), "icmp_port_unreachable");
        assert_eq!(
            reply(explain(&snap, &q(NODE, SVC_EMPTY, 80, Origin::Host))),
            "econnrefused"
        );
    }

    #[test]
    fn broken_maps_and_missing_config_are_reported_as_the_datapath_acts() {
        let mut snap = scene();
        snap.maps.backends.remove(&2);
        snap.config = None;
        let e = explain(&snap, &q(EXTERNAL_CLIENT, NODE, 30007, Origin::Uplink));
        assert_eq!(
            e.new_flow,
            Outcome::Balance {
                slots: 2,
                translating: 1
            }
        );
        assert!(matches!(
            &e.candidates[1].outcome,
            Outcome::Drop { counter, .. } if counter == "backend_missing"
        ));
        // Without SVC_CONFIG a remote backend from the uplink cannot be source-NATed.
        let mut snap = scene();
        snap.config = None;
        let e = explain(&snap, &q(EXTERNAL_CLIENT, NODE, 30007, Origin::Uplink));
        assert!(matches!(
            &e.candidates[1].outcome,
            Outcome::Drop { counter, .. } if counter == "snat_no_port"
        ));
        // An external-scope flag without its entry.
        let mut snap = scene();
        snap.maps
            .frontends
            .remove(&fe_key(NODE, NODEPORT, SCOPE_EXTERNAL));
        let e = explain(&snap, &q(EXTERNAL_CLIENT, NODE, NODEPORT, Origin::Uplink));
        assert!(
            matches!(e.new_flow, Outcome::Drop { ref counter, .. } if counter == "backend_missing")
        );
    }

    #[test]
    fn an_existing_conntrack_entry_pins_the_flow() {
        let mut snap = scene();
        let key = CtKey {
            src_addr: CLIENT_POD,
            dst_addr: SVC_VIP,
            src_port: 40000,
            dst_port: 80,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let entry = CtEntry {
            src_addr: CLIENT_POD,
            dst_addr: BACKEND_REMOTE,
            src_port: 40000,
            dst_port: 8080,
            dir: CT_DIR_FORWARD,
            flags: 0,
            tcp_flags: 0x12,
            state: svc_common::CT_STATE_ESTABLISHED,
            backend_id: 2,
            frontend_id: 10,
            created_ns: 1,
            last_seen_ns: 2,
            packets: 3,
            bytes: 180,
        };
        snap.conntrack.insert(key, entry);
        // The reply entry: on the uplink it is not an external flow, so it passes.
        let rkey = CtKey {
            src_addr: BACKEND_REMOTE,
            dst_addr: CLIENT_POD,
            src_port: 8080,
            dst_port: 40000,
            ..key
        };
        snap.conntrack.insert(
            rkey,
            CtEntry {
                dir: CT_DIR_REPLY,
                ..entry
            },
        );

        let mut query = q(CLIENT_POD, SVC_VIP, 80, Origin::Pod);
        let e = explain(&snap, &query);
        assert_eq!(e.conntrack, None);
        assert_eq!(e.tracked_flows_from_src, Some(1));

        query.src_port = Some(40000);
        let e = explain(&snap, &query);
        let t = e.conntrack.expect("pinned");
        assert_eq!((t.dir.as_str(), t.backend_id), ("forward", 2));
        assert_eq!(
            t.outcome,
            translate(
                CLIENT_POD,
                Some(40000),
                BACKEND_REMOTE,
                &[],
                "dnat_established"
            )
        );

        query.src_port = Some(40001);
        assert_eq!(explain(&snap, &query).conntrack, None);

        let mut reply = q(BACKEND_REMOTE, CLIENT_POD, 40000, Origin::Uplink);
        reply.src_port = Some(8080);
        let t = explain(&snap, &reply).conntrack.expect("reply entry");
        assert!(
            matches!(t.outcome, Outcome::Pass { ref counter, .. } if counter.as_deref() == Some("not_service"))
        );
        reply.origin = Origin::Pod;
        let t = explain(&snap, &reply).conntrack.expect("reply entry");
        assert!(
            matches!(t.outcome, Outcome::Translate { ref counter, .. } if counter == "rev_nat")
        );
    }

    #[test]
    fn an_expired_entry_is_ignored_and_a_closed_one_reopens_on_a_syn() {
        const S: u64 = 1_000_000_000;
        let mut snap = scene();
        let key = CtKey {
            src_addr: CLIENT_POD,
            dst_addr: SVC_VIP,
            src_port: 40000,
            dst_port: 80,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let entry = CtEntry {
            src_addr: CLIENT_POD,
            dst_addr: BACKEND_REMOTE,
            src_port: 40000,
            dst_port: 8080,
            dir: CT_DIR_FORWARD,
            flags: 0,
            tcp_flags: 0x11,
            state: svc_common::CT_STATE_TIME_WAIT,
            backend_id: 2,
            frontend_id: 10,
            created_ns: 0,
            last_seen_ns: 100 * S,
            packets: 9,
            bytes: 900,
        };
        snap.conntrack.insert(key, entry);
        let mut query = q(CLIENT_POD, SVC_VIP, 80, Origin::Pod);
        query.src_port = Some(40000);

        // Closed 4 s ago (timeout 10 s): still translated, and a SYN would reopen it.
        snap.now_ns = 104 * S;
        let e = explain(&snap, &query);
        let t = e.conntrack.expect("tracked");
        assert_eq!(
            (t.state.as_str(), t.expired, t.expires_in_s),
            ("time_wait", false, Some(6))
        );
        assert!(
            matches!(t.outcome, Outcome::Translate { ref counter, .. } if counter == "dnat_established")
        );
        assert!(
            e.notes
                .iter()
                .any(|n| n.contains("a SYN on this tuple opens a new flow")),
            "{:?}",
            e.notes
        );

        // 11 s after: expired, no peer: ignored, the packet is a new flow.
        snap.now_ns = 111 * S;
        let e = explain(&snap, &query);
        let t = e.conntrack.expect("tracked");
        assert!(t.expired);
        assert_eq!(t.expires_in_s, None);
        assert_eq!(t.outcome, e.new_flow);
        assert!(
            e.notes.iter().any(|n| n.contains("has expired")),
            "{:?}",
            e.notes
        );
        assert!(
            e.notes.iter().any(|n| n.contains("ct_picked_up")),
            "{:?}",
            e.notes
        );

        // A shorter close timeout from the agent's pin expires it sooner.
        snap.now_ns = 104 * S;
        snap.ct_timeouts = Some(CtTimeouts {
            tcp_close_s: 2,
            ..CtTimeouts::DEFAULT
        });
        assert!(explain(&snap, &query).conntrack.expect("tracked").expired);
    }

    #[test]
    fn a_syn_reopens_a_flow_whose_backend_left_its_frontend() {
        let mut snap = scene();
        let key = CtKey {
            src_addr: CLIENT_POD,
            dst_addr: SVC_VIP,
            src_port: 40000,
            dst_port: 80,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let entry = |backend_id| CtEntry {
            src_addr: CLIENT_POD,
            dst_addr: BACKEND_REMOTE,
            src_port: 40000,
            dst_port: 8080,
            dir: CT_DIR_FORWARD,
            flags: 0,
            tcp_flags: 0x12,
            state: svc_common::CT_STATE_ESTABLISHED,
            backend_id,
            frontend_id: 10,
            created_ns: 0,
            last_seen_ns: 0,
            packets: 3,
            bytes: 180,
        };
        let mut query = q(CLIENT_POD, SVC_VIP, 80, Origin::Pod);
        query.src_port = Some(40000);
        // Backend 2 is in frontend 10's slots: the flow is current, no reopening.
        snap.conntrack.insert(key, entry(2));
        let e = explain(&snap, &query);
        assert!(
            !e.notes.iter().any(|n| n.contains("opens a new flow")),
            "{:?}",
            e.notes
        );
        // Backend 4 (same address, terminating) is in none: a SYN balances afresh.
        snap.conntrack.insert(key, entry(4));
        let e = explain(&snap, &query);
        assert!(!e.conntrack.expect("tracked").expired);
        assert!(
            e.notes
                .iter()
                .any(|n| n.contains("backend 4 is no longer") && n.contains("ct_reopened")),
            "{:?}",
            e.notes
        );
    }

    #[test]
    fn session_affinity_sends_a_recent_client_back_to_its_backend() {
        let mut snap = scene();
        snap.maps
            .frontends
            .get_mut(&fe_key(SVC_VIP, 80, SCOPE_ANY))
            .unwrap()
            .affinity_timeout_s = 10;
        snap.now_ns = 100_000_000_000;
        let key = AffinityKey {
            frontend_id: 10,
            client_addr: CLIENT_POD,
        };
        let recent = Affinity {
            backend_id: 2,
            backend_addr: BACKEND_REMOTE,
            backend_port: 8080,
            _pad: [0; 6],
            last_used_ns: snap.now_ns - 3_000_000_000,
        };
        snap.affinity.insert(key, recent);
        let query = q(CLIENT_POD, SVC_VIP, 80, Origin::Pod);
        let e = explain(&snap, &query);
        assert_eq!(
            e.new_flow,
            Outcome::Sticky {
                backend_id: 2,
                idle_ms: 3_000,
                timeout_s: 10
            }
        );
        assert_eq!(
            outcomes(&e),
            vec![(
                2,
                translate(CLIENT_POD, None, BACKEND_REMOTE, &[], "affinity")
            )]
        );
        // Expired, or the id now names another backend: drawn afresh.
        for stale in [
            Affinity {
                last_used_ns: snap.now_ns - 10_000_000_000,
                ..recent
            },
            Affinity {
                backend_port: 9090,
                ..recent
            },
        ] {
            snap.affinity.insert(key, stale);
            let e = explain(&snap, &query);
            assert_eq!(
                e.new_flow,
                Outcome::Balance {
                    slots: 2,
                    translating: 2
                }
            );
            assert!(
                e.notes.iter().any(|n| n.contains("sessionAffinity")),
                "{e:?}"
            );
        }
    }
}
