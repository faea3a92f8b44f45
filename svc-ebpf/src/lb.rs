//! The load-balancing decisions shared by every packet hook: conntrack lookup, and for a new
//! flow the frontend, the backend, source NAT when needed, and the two conntrack entries.
//!
//! These functions decide; they never touch the packet. Each hook applies the decision with
//! the rewrite primitives of its own program type (`nat` for tc, `xdp` for XDP).
use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use svc_common::{
    Affinity, AffinityKey, Backend, CtEntry, CtKey, Frontend, FrontendKey, Reason, SlotKey,
    BACKEND_F_LOCAL, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_EXTERNAL, CT_F_HAIRPIN, CT_F_SNAT,
    FRONTEND_F_DROP_NO_BACKEND, FRONTEND_F_EXTERNAL_SCOPE, SCOPE_ANY, SCOPE_EXTERNAL,
    SNAT_ATTEMPTS, SNAT_PORT_MAX, SNAT_PORT_MIN,
};

use crate::{
    maps::{SVC_AFFINITY, SVC_BACKENDS, SVC_CONFIG, SVC_CT, SVC_FRONTENDS, SVC_SLOTS},
    parse::Flow,
    Outcome,
};

/// Where a packet entered: from a pod on this node, or from the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Pod,
    Uplink,
}

/// What to do with the first packet of a flow.
pub enum Step {
    /// Rewrite the packet as `entry` says (its forward entry, already stored).
    Translate { entry: CtEntry, reason: Reason },
    /// No usable backend: answer with a TCP RST or ICMP port unreachable.
    Reject,
}

/// A uniformly random number in `0..n` (multiply-shift: no division, no modulo bias).
#[inline(always)]
fn random_below(n: u32) -> u32 {
    // SAFETY: helper without arguments.
    ((unsafe { bpf_get_prandom_u32() } as u64 * n as u64) >> 32) as u32
}

#[inline(always)]
pub fn ct_key(flow: &Flow) -> CtKey {
    CtKey {
        src_addr: flow.saddr,
        dst_addr: flow.daddr,
        src_port: flow.sport,
        dst_port: flow.dport,
        proto: flow.proto,
        _pad: [0; 3],
    }
}

/// Looks the packet's tuple up in conntrack (either direction) and, on a hit, refreshes the
/// entry and returns a copy of it.
#[inline(always)]
pub fn ct_lookup(flow: &Flow) -> Option<CtEntry> {
    let entry = SVC_CT.get_ptr_mut(ct_key(flow))?;
    // SAFETY: `entry` came from a successful lookup. Concurrent updates of one flow on two CPUs
    // can lose a counter increment; counters are statistics, the NAT fields are written once.
    unsafe {
        (*entry).last_seen_ns = bpf_ktime_get_ns();
        (*entry).packets += 1;
        (*entry).bytes += flow.ip_len as u64;
        (*entry).tcp_flags |= flow.tcp_flags;
        Some(*entry)
    }
}

#[inline(always)]
fn frontend(key: &FrontendKey) -> Option<Frontend> {
    // SAFETY: the value is copied out before any map update.
    unsafe { SVC_FRONTENDS.get(key) }.copied()
}

/// Chooses the backend of a new flow from `client` to frontend `fe` (`backend_count > 0`):
/// the one its session affinity names while that is fresh and still the same backend, else a
/// uniformly random slot. Records the choice for affinity. Returns (id, backend, from
/// affinity); `None` if a slot or backend entry is missing.
#[inline(always)]
pub fn pick_backend(fe: &Frontend, client: [u8; 4], now: u64) -> Option<(u32, Backend, bool)> {
    let akey = AffinityKey {
        frontend_id: fe.id,
        client_addr: client,
    };
    if fe.affinity_timeout_s != 0 {
        // SAFETY: values copied out immediately.
        if let Some(a) = unsafe { SVC_AFFINITY.get(&akey) }.copied() {
            let fresh =
                now.wrapping_sub(a.last_used_ns) < fe.affinity_timeout_s as u64 * 1_000_000_000;
            // SAFETY: as above.
            let current = unsafe { SVC_BACKENDS.get(&a.backend_id) }.copied();
            if let Some(b) = current {
                // Still the backend chosen before (an id can be reused for another one).
                if fresh && b.addr == a.backend_addr && b.port == a.backend_port {
                    remember(&akey, a.backend_id, &b, now);
                    return Some((a.backend_id, b, true));
                }
            }
        }
    }
    let slot = SlotKey {
        frontend_id: fe.id,
        slot: random_below(fe.backend_count) + 1,
    };
    // SAFETY: values copied out immediately.
    let backend_id = unsafe { SVC_SLOTS.get(&slot) }.map(|s| s.backend_id)?;
    // SAFETY: as above.
    let backend = unsafe { SVC_BACKENDS.get(&backend_id) }.copied()?;
    if fe.affinity_timeout_s != 0 {
        remember(&akey, backend_id, &backend, now);
    }
    Some((backend_id, backend, false))
}

#[inline(always)]
fn remember(key: &AffinityKey, backend_id: u32, backend: &Backend, now: u64) {
    let value = Affinity {
        backend_id,
        backend_addr: backend.addr,
        backend_port: backend.port,
        _pad: [0; 6],
        last_used_ns: now,
    };
    // Best effort: without the entry the next flow is merely balanced afresh.
    let _ = SVC_AFFINITY.insert(key, &value, 0);
}

/// Decides a new flow to `flow.daddr:dport`. `Err` carries the outcome when there is nothing
/// to translate (not a frontend) or the packet must be dropped.
#[inline(always)]
pub fn new_flow(flow: &Flow, origin: Origin) -> Result<Step, Outcome> {
    let mut key = FrontendKey {
        addr: flow.daddr,
        port: flow.dport,
        proto: flow.proto,
        scope: SCOPE_ANY,
    };
    let Some(mut fe) = frontend(&key) else {
        return Err(Outcome::pass(Reason::NotService));
    };
    // externalTrafficPolicy: Local: traffic from outside uses the node-local backend set.
    if origin == Origin::Uplink && fe.flags & FRONTEND_F_EXTERNAL_SCOPE != 0 {
        key.scope = SCOPE_EXTERNAL;
        fe = frontend(&key).ok_or(Outcome::drop(Reason::BackendMissing))?;
    }
    if fe.backend_count == 0 {
        if fe.flags & FRONTEND_F_DROP_NO_BACKEND != 0 {
            return Err(Outcome::drop(Reason::PolicyDrop));
        }
        return Ok(Step::Reject);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let (backend_id, backend, sticky) =
        pick_backend(&fe, flow.saddr, now).ok_or(Outcome::drop(Reason::BackendMissing))?;
    // Forward: the client's tuple → the backend, source as decided below.
    let mut fwd = CtEntry {
        src_addr: flow.saddr,
        dst_addr: backend.addr,
        src_port: flow.sport,
        dst_port: backend.port,
        dir: CT_DIR_FORWARD,
        flags: 0,
        tcp_flags: flow.tcp_flags,
        state: if flow.proto == svc_common::PROTO_UDP { svc_common::CT_STATE_UDP_UNREPLIED } else { svc_common::CT_STATE_SYN_SENT },
        backend_id,
        frontend_id: fe.id,
        created_ns: now,
        last_seen_ns: now,
        packets: 1,
        bytes: flow.ip_len as u64,
    };
    let mut reason = if sticky {
        Reason::Affinity
    } else {
        Reason::DnatNew
    };
    if origin == Origin::Uplink {
        fwd.flags |= CT_F_EXTERNAL;
    }
    if origin == Origin::Pod && backend.addr == flow.saddr {
        // Hairpin: the pod reaches itself. It must not see a packet from its own address (the
        // stack would drop it as martian), so the frontend becomes the source; the client port
        // is kept, which keeps the reply tuple unique.
        fwd.src_addr = flow.daddr;
        fwd.flags |= CT_F_HAIRPIN;
        reason = Reason::Hairpin;
    }
    // Reply: the backend's tuple → restores the frontend as source and the client as destination.
    let mut rep = fwd;
    rep.dir = CT_DIR_REPLY;
    rep.src_addr = flow.daddr;
    rep.src_port = flow.dport;
    rep.dst_addr = flow.saddr;
    rep.dst_port = flow.sport;
    rep.tcp_flags = 0;
    rep.packets = 0;
    rep.bytes = 0;
    let mut rep_key = CtKey {
        src_addr: backend.addr,
        dst_addr: fwd.src_addr,
        src_port: backend.port,
        dst_port: fwd.src_port,
        proto: flow.proto,
        _pad: [0; 3],
    };

    if origin == Origin::Uplink && backend.flags & BACKEND_F_LOCAL == 0 {
        // External client, backend on another node: source-NAT to this node so the reply comes
        // back here to be translated. The port is chosen at random in the SNAT range and
        // claimed by inserting the reply entry with BPF_NOEXIST: two flows can never share a
        // reply tuple.
        let Some(config) = SVC_CONFIG.get(0) else {
            return Err(Outcome::drop(Reason::SnatNoPort));
        };
        fwd.src_addr = config.node_addr;
        fwd.flags |= CT_F_SNAT;
        rep.flags = fwd.flags;
        rep_key.dst_addr = config.node_addr;
        let span = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
        let mut claimed = false;
        for _ in 0..SNAT_ATTEMPTS {
            let port = SNAT_PORT_MIN + random_below(span) as u16;
            rep_key.dst_port = port;
            if SVC_CT.insert(&rep_key, &rep, BPF_NOEXIST).is_ok() {
                fwd.src_port = port;
                claimed = true;
                break;
            }
        }
        if !claimed {
            return Err(Outcome::drop(Reason::SnatNoPort));
        }
    } else {
        rep.flags = fwd.flags;
        if SVC_CT.insert(&rep_key, &rep, 0).is_err() {
            reason = Reason::CtInsertFailed;
        }
    }
    if SVC_CT.insert(ct_key(flow), &fwd, 0).is_err() {
        reason = Reason::CtInsertFailed;
    }
    Ok(Step::Translate { entry: fwd, reason })
}

/// `BPF_NOEXIST`: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

const AF_INET: u8 = 2;

/// `bpf_fib_lookup` input for a packet translated as `entry` says, arriving on `ifindex`:
/// shared by XDP and tc, which differ only in the context they pass and the flags.
#[inline(always)]
pub fn fib_params(flow: &Flow, entry: &CtEntry, ifindex: u32) -> FibParams {
    // SAFETY: an all-zero bpf_fib_lookup is a valid input.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = flow.proto;
    p.sport = entry.src_port.to_be();
    p.dport = entry.dst_port.to_be();
    p.__bindgen_anon_1.tot_len = flow.ip_len;
    p.ifindex = ifindex;
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(entry.src_addr);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(entry.dst_addr);
    p
}
