//! The load-balancing decisions shared by every packet hook: conntrack lookup, and for a new
//! flow the frontend, the backend, source NAT when needed, and the two conntrack entries.
//!
//! These functions decide; they never touch the packet. Each hook applies the decision with
//! the rewrite primitives of its own program type (`nat` for tc, `xdp` for XDP).
use super::A;
use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    btf_maps::lpm_trie::Key,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
};
use svc_common::Addr;
use svc_common::{
    ct_peer_key, ct_state_closed, AffinityKeyOf, BackendOf, CtEntryOf, CtKeyOf, CtTimeouts,
    Frontend, FrontendKeyOf, Reason, SlotKey, SnatPorts, SourceRangeKeyOf, BACKEND_F_LOCAL,
    CT_DIR_FORWARD, CT_F_EXTERNAL, CT_F_HAIRPIN, CT_F_NODEPORT, CT_F_SNAT, CT_STATE_ESTABLISHED,
    CT_STATE_SYN_SENT, CT_STATE_UDP_UNREPLIED, CT_TCP_RST, FRONTEND_F_DROP_NO_BACKEND,
    FRONTEND_F_EXTERNAL_SCOPE, FRONTEND_F_NODEPORT, FRONTEND_F_SOURCE_RANGES, PROTO_TCP, PROTO_UDP,
    SCOPE_ANY, SCOPE_EXTERNAL, SNAT_ATTEMPTS, SOURCE_RANGE_ID_BITS,
};

use super::ct::*;
use super::frag;
use crate::{
    family::Family,
    maps::{SVC_CONFIG, SVC_SCRATCH, SVC_SLOTS},
    parse::{FlowOf, FRAG_LATER},
    Outcome,
};

/// Where a packet entered: from a pod on this node, or from the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Pod,
    Uplink,
}

/// What to do with a packet.
pub(crate) enum Step {
    /// Rewrite the packet as the conntrack entry [`decide`] wrote out says (for a new flow,
    /// its forward entry, already stored).
    Translate(Reason),
    /// No usable backend: answer with a TCP RST or ICMP port unreachable.
    Reject,
}

/// An entry for [`decide`] to fill in (the hooks keep it in their own stack frame).
#[inline(always)]
pub(crate) fn blank_entry() -> CtEntryOf<A> {
    // SAFETY: an all-zero CtEntry is a valid value.
    unsafe { core::mem::zeroed() }
}

/// A hash of the client's tuple that chooses a new flow's backend: flows spread over the
/// backends as evenly as with a random choice (every connection has its own source port), and
/// a flow whose entries were lost maps to the same backend again.
#[inline(always)]
fn flow_hash(flow: &FlowOf<A>) -> u32 {
    let mut h = flow.saddr.fold32() ^ HASH_SEED;
    h = mix(h ^ flow.daddr.fold32());
    h = mix(h ^ ((flow.sport as u32) << 16 | flow.dport as u32));
    mix(h ^ flow.proto as u32)
}

/// `v` (uniform over u32) scaled to `0..n` (multiply-shift: no division, no modulo bias).
#[inline(always)]
pub(crate) fn scale(v: u32, n: u32) -> u32 {
    ((v as u64 * n as u64) >> 32) as u32
}

/// Salt of the first SNAT port's hash (see `commit`).
const SNAT_PORT_SALT: u32 = 0x5bd1_e995;

/// A fixed seed: every node and every restart must map a tuple to the same slot.
const HASH_SEED: u32 = 0x9e37_79b9;

/// murmur3's 32-bit finaliser: every input bit affects every output bit.
#[inline(always)]
pub(crate) fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// [`SnatPorts`] prepared for [`snat_port`]: what depends on the ranges only, computed once
/// before the retry loops of `commit` so that each try adds a few ALU instructions.
#[derive(Clone, Copy)]
pub(crate) struct SnatMap {
    /// Ports in range 0: indexes below it are in range 0.
    c0: u32,
    /// First port of range 1.
    f1: u32,
    /// What range 0 adds on top of range 1's mapping: `first[0] + count[0] - first[1]`.
    d: u32,
    /// Ports in both ranges.
    total: u32,
}

impl SnatMap {
    #[inline(always)]
    pub(crate) fn new(p: &SnatPorts) -> Self {
        let c0 = p.count[0] as u32;
        let f1 = p.first[1] as u32;
        Self {
            c0,
            f1,
            d: (p.first[0] as u32).wrapping_add(c0).wrapping_sub(f1),
            total: p.total(),
        }
    }
}

/// The `i`-th SNAT port, `i` in `0..total`: `SnatPorts::port` (table-tested in svc-common) in
/// fewer instructions and without a branch. `t = i - c0` maps into range 1 (`t + f1`); when it
/// wraps (`i` in range 0) its sign bit spreads into a mask that adds `d`, giving
/// `i + first[0]`. LLVM would turn the mask back into a select, which BPF can only lower as a
/// branch on the random index in every retry of `commit`: the mask goes through a volatile
/// stack slot so it stays arithmetic.
#[inline(always)]
pub(crate) fn snat_port(m: &SnatMap, i: u32) -> u16 {
    let t = i.wrapping_sub(m.c0);
    let mut mask = ((t as i32) >> 31) as u32;
    // SAFETY: a local read back at once.
    mask = unsafe { core::ptr::read_volatile(&mask) };
    t.wrapping_add(m.f1).wrapping_add(m.d & mask) as u16
}

/// A uniformly random number in `0..n`.
#[inline(always)]
fn random_below(n: u32) -> u32 {
    // SAFETY: helper without arguments.
    scale(unsafe { bpf_get_prandom_u32() }, n)
}

#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The conntrack timeouts the agent loaded the programs with. The pointer is read through a
/// volatile load so the compiler cannot fold the defaults into the code (the loader patches
/// them), and the fields are read in place rather than copied to the stack.

#[inline(always)]
fn frontend(key: &FrontendKeyOf<A>) -> Option<Frontend> {
    // SAFETY: the value is copied out before any map update.
    unsafe { A::frontends().get(key) }.copied()
}

/// Whether `saddr` is inside one of the `loadBalancerSourceRanges` prefixes the agent wrote for
/// frontend `frontend_id` (`SVC_SOURCE_RANGES`, a longest-prefix-match lookup).
#[inline(always)]
fn source_allowed(frontend_id: u32, saddr: A) -> bool {
    let key = Key::new(
        SOURCE_RANGE_ID_BITS + A::BITS,
        SourceRangeKeyOf {
            frontend_id,
            addr: saddr,
        },
    );
    A::source_ranges().get(&key).is_some()
}

/// The frontend entry new flows of `flow` use: `SCOPE_EXTERNAL` for traffic from outside when
/// the frontend has one (externalTrafficPolicy: Local). `Err(false)`: not a frontend;
/// `Err(true)`: a frontend whose external entry is missing (no local endpoint). Telling the two
/// apart here keeps packets not for a Service, the most common ones, at one frontend lookup.
#[inline(always)]
pub(crate) fn frontend_for(flow: &FlowOf<A>, origin: Origin) -> Result<Frontend, bool> {
    let mut key = FrontendKeyOf {
        addr: flow.daddr,
        port: flow.dport,
        proto: flow.proto,
        scope: SCOPE_ANY,
    };
    let Some(fe) = frontend(&key) else {
        return Err(false);
    };
    if origin == Origin::Uplink && fe.flags & FRONTEND_F_EXTERNAL_SCOPE != 0 {
        key.scope = SCOPE_EXTERNAL;
        return frontend(&key).ok_or(true);
    }
    Ok(fe)
}

/// The whole decision for a packet at a hook that may open flows (`open`) or only translate
/// known ones: conntrack first, then a new flow. Later fragments get their ports from their
/// first fragment; ICMP errors are only ever translated for a known flow.
#[inline(always)]
pub(crate) fn decide(
    flow: &mut FlowOf<A>,
    origin: Origin,
    open: bool,
    entry: &mut CtEntryOf<A>,
) -> Result<Step, Outcome> {
    let now = now_ns();
    if flow.frag == FRAG_LATER {
        frag::later(flow, now)?;
    }
    let step = match ct_lookup(flow, origin, now, entry) {
        Lookup::Hit => {
            let reason = if flow.icmp {
                Reason::IcmpTranslated
            } else if flow.frag == FRAG_LATER {
                Reason::FragTranslated
            } else if entry.dir == CT_DIR_FORWARD {
                Reason::DnatEstablished
            } else {
                Reason::RevNat
            };
            Step::Translate(reason)
        }
        Lookup::Stale => return Err(Outcome::pass(Reason::NotService)),
        Lookup::Collision => return Err(Outcome::drop(Reason::CtCollision)),
        _ if flow.icmp => return Err(Outcome::pass(Reason::NotService)),
        _ if flow.frag == FRAG_LATER => return Err(Outcome::pass(Reason::Fragment)),
        _ if !open => return Err(Outcome::pass(Reason::NotService)),
        Lookup::Miss => open_flow(flow, origin, now, false, entry)?,
        Lookup::Reopen => open_flow(flow, origin, now, true, entry)?,
    };
    if let Step::Translate(_) = step {
        frag::remember(flow, now);
    }
    Ok(step)
}

/// Chooses the backend of a new flow from `client` to frontend `fe` (`backend_count > 0`):
/// the one its session affinity names while that is fresh and still the same backend, else a
/// uniformly random slot. Records the choice for affinity. Returns (id, backend, from
/// affinity); `None` if a slot or backend entry is missing.
#[inline(always)]
pub(crate) fn pick_backend(
    fe: &Frontend,
    client: A,
    now: u64,
    choice: u32,
) -> Option<(u32, BackendOf<A>, bool)> {
    let akey = AffinityKeyOf {
        frontend_id: fe.id,
        client_addr: client,
    };
    if fe.affinity_timeout_s != 0 {
        // SAFETY: values copied out immediately.
        if let Some(a) = unsafe { A::affinities().get(&akey) }.copied() {
            let fresh =
                now.wrapping_sub(a.last_used_ns) < fe.affinity_timeout_s as u64 * 1_000_000_000;
            // SAFETY: as above.
            let current = unsafe { A::backends().get(&a.backend_id) }.copied();
            if let Some(b) = current {
                // Still the backend chosen before (an id can be reused for another one).
                if fresh && A::same(b.addr, a.backend_addr) && b.port == a.backend_port {
                    remember(&akey, a.backend_id, &b, now);
                    return Some((a.backend_id, b, true));
                }
            }
        }
    }
    let slot = SlotKey {
        frontend_id: fe.id,
        slot: scale(choice, fe.backend_count) + 1,
    };
    // SAFETY: values copied out immediately.
    let backend_id = unsafe { SVC_SLOTS.get(&slot) }.map(|s| s.backend_id)?;
    // SAFETY: as above.
    let backend = unsafe { A::backends().get(&backend_id) }.copied()?;
    if fe.affinity_timeout_s != 0 {
        remember(&akey, backend_id, &backend, now);
    }
    Some((backend_id, backend, false))
}

#[inline(always)]
fn remember(key: &AffinityKeyOf<A>, backend_id: u32, backend: &BackendOf<A>, now: u64) {
    let value = <A as Addr>::Affinity::new(backend_id, backend.addr, backend.port, now);
    // Best effort: without the entry the next flow is merely balanced afresh.
    let _ = A::affinities().insert(key, &value, 0);
}

/// Stores reply entry `rep` under `key` unless a live flow holds that tuple: an absent key is
/// inserted (`BPF_NOEXIST`, so two new flows never share a reply tuple), and a key held by a
/// flow that is over (closed, or expired in both directions) is taken over, its other entry
/// deleted. Never overwrites a live flow's reverse NAT, except, with `OWN`, the same flow's own
/// (a picked-up flow whose forward entry alone was lost).
#[inline(always)]
fn claim<const OWN: bool>(t: &CtTimeouts, key: &CtKeyOf<A>, rep: &CtEntryOf<A>, now: u64) -> bool {
    if A::ct().insert(key, rep, BPF_NOEXIST).is_ok() {
        return true;
    }
    let Some(old) = A::ct().get_ptr_mut(key) else {
        // Deleted meanwhile (GC, LRU): try once more.
        return A::ct().insert(key, rep, BPF_NOEXIST).is_ok();
    };
    // SAFETY: pointer from a successful lookup; read in place (no copy on the stack).
    let old = unsafe { &*old };
    // A closed flow's tuple is taken over only after it has been quiet for a moment: the
    // backend may hold the same 4-tuple in TIME_WAIT, and accepts a new SYN on it only when
    // its timestamp is newer than the old connection's last (tcp_timewait_state_process);
    // within the same millisecond it answers with an ACK instead, and the SYN is lost.
    let closed_quiet =
        ct_state_closed(old.state) && now.saturating_sub(old.last_seen_ns) > TAKEOVER_QUIET_NS;
    // The same flow's own reply entry (a picked-up flow whose forward entry alone was
    // evicted): it names the same client tuple and frontend, so it is simply rewritten.
    let own = OWN
        && A::same(old.dst_addr, rep.dst_addr)
        && old.dst_port == rep.dst_port
        && A::same(old.src_addr, rep.src_addr)
        && old.src_port == rep.src_port;
    // A picked-up flow takes its tuple back from a flow that claimed it while the picked-up
    // one had no entries (see `displaces`).
    let displaced = OWN && displaces(rep, old);
    if !own && !closed_quiet && !displaced && !flow_expired(t, key, old, now) {
        return false;
    }
    if own {
        return A::ct().insert(key, rep, BPF_EXIST).is_ok();
    }
    if peer_of(key, old).is_some() {
        let _ = A::ct().remove(&ct_peer_key(key, old));
    }
    A::ct().insert(key, rep, BPF_EXIST).is_ok()
}

/// Tags on [`new_flow_sub`]'s result (above `Outcome::pack`'s bits).
const NEW_TRANSLATE: u64 = 1 << 40;
const NEW_REJECT: u64 = 2 << 40;

/// [`new_flow`] through a BPF subprogram of its own (its entries and keys stay off the
/// callers' stack; see `Outcome::pack`).
#[inline(always)]
fn open_flow(
    flow: &FlowOf<A>,
    origin: Origin,
    now: u64,
    reopened: bool,
    entry: &mut CtEntryOf<A>,
) -> Result<Step, Outcome> {
    let how = (origin == Origin::Uplink) as u32 | (reopened as u32) << 1;
    let r = new_flow_sub(flow, how, now, entry);
    if r & NEW_TRANSLATE != 0 {
        let r = commit_sub(flow, now, entry, r as u32);
        if r & NEW_TRANSLATE != 0 {
            return Ok(Step::Translate(crate::reason_from(r as u32)));
        }
        return Err(Outcome::unpack(r));
    }
    if r & NEW_REJECT != 0 {
        return Ok(Step::Reject);
    }
    Err(Outcome::unpack(r))
}

#[inline(never)]
fn new_flow_sub(flow: &FlowOf<A>, how: u32, now: u64, out: &mut CtEntryOf<A>) -> u64 {
    let origin = if how & 1 != 0 {
        Origin::Uplink
    } else {
        Origin::Pod
    };
    match new_flow(flow, origin, now, how & 2 != 0, out) {
        Ok(Step::Translate(reason)) => NEW_TRANSLATE | reason as u32 as u64,
        Ok(Step::Reject) => NEW_REJECT,
        Err(out) => out.pack(),
    }
}

/// Decides a new flow to `flow.daddr:dport`: its frontend, backend and source (first half;
/// [`commit`] stores it). `Err` carries the outcome when there is nothing to translate (not a
/// frontend) or the packet must be dropped. `reopened`: a SYN replaced a flow that was over
/// (counted as such).
/// The forward entry is built in `fwd` (the caller's memory).
#[inline(always)]
fn new_flow(
    flow: &FlowOf<A>,
    origin: Origin,
    now: u64,
    reopened: bool,
    fwd: &mut CtEntryOf<A>,
) -> Result<Step, Outcome> {
    let fe = match frontend_for(flow, origin) {
        Ok(fe) => fe,
        Err(false) => return Err(Outcome::pass(Reason::NotService)),
        // externalTrafficPolicy: Local without a local endpoint.
        Err(true) => return Err(Outcome::drop(Reason::BackendMissing)),
    };
    // `loadBalancerSourceRanges`, as kube-proxy's `firewall-check` chain applies them (filter
    // prerouting, `ct state new`: this runs only for packets without a live conntrack entry).
    // Before the no-backend reject, as prerouting comes before kube-proxy's endpoint check.
    // The frontend is named in the entry from here on, also when the flow is refused, so a
    // trace event (`trace`) says which frontend refused it.
    fwd.frontend_id = fe.id;
    if fe.flags & FRONTEND_F_SOURCE_RANGES != 0 && !source_allowed(fe.id, flow.saddr) {
        return Err(Outcome::drop(Reason::SourceRangeDenied));
    }
    if fe.backend_count == 0 {
        if fe.flags & FRONTEND_F_DROP_NO_BACKEND != 0 {
            return Err(Outcome::drop(Reason::PolicyDrop));
        }
        return Ok(Step::Reject);
    }
    // A mid-stream TCP packet without a live entry: its flow's entries were evicted from the
    // LRU (or lost with the maps). It is picked up, as nf_conntrack does (tcp_loose), but
    // onto the same backend: backends are chosen by a hash of the client's tuple, so while
    // the frontend's backends are unchanged the choice is the one made at the SYN. A RST has
    // nothing left to carry and is dropped.
    let pickup = flow.proto == PROTO_TCP && !is_syn(flow.tcp_flags);
    if pickup && flow.tcp_flags & CT_TCP_RST != 0 {
        return Err(Outcome::drop(Reason::NonSynNoEntry));
    }
    let (backend_id, backend, sticky) = pick_backend(&fe, flow.saddr, now, flow_hash(flow))
        .ok_or(Outcome::drop(Reason::BackendMissing))?;
    // Forward: the client's tuple → the backend, source as decided below.
    *fwd = CtEntryOf {
        src_addr: flow.saddr,
        dst_addr: backend.addr,
        src_port: flow.sport,
        dst_port: backend.port,
        dir: CT_DIR_FORWARD,
        flags: 0,
        tcp_flags: flow.tcp_flags,
        state: if flow.proto == PROTO_UDP {
            CT_STATE_UDP_UNREPLIED
        } else if pickup {
            CT_STATE_ESTABLISHED
        } else {
            CT_STATE_SYN_SENT
        },
        backend_id,
        frontend_id: fe.id,
        created_ns: now,
        last_seen_ns: now,
        packets: 1,
        bytes: flow.ip_len as u64,
    };
    let mut reason = if pickup {
        Reason::CtPickedUp
    } else if sticky {
        Reason::Affinity
    } else if reopened {
        Reason::CtReopened
    } else {
        Reason::DnatNew
    };
    if origin == Origin::Uplink {
        fwd.flags |= CT_F_EXTERNAL;
    }
    if fe.flags & FRONTEND_F_NODEPORT != 0 {
        fwd.flags |= CT_F_NODEPORT;
    }
    if origin == Origin::Pod && A::same(backend.addr, flow.saddr) {
        // Hairpin: the pod reaches itself. It must not see a packet from its own address (the
        // stack would drop it as martian), so the frontend becomes the source; the client port
        // is kept, which keeps the reply tuple unique.
        fwd.src_addr = flow.daddr;
        fwd.flags |= CT_F_HAIRPIN;
        reason = Reason::Hairpin;
    }
    let snat = origin == Origin::Uplink && backend.flags & BACKEND_F_LOCAL == 0;
    if snat {
        // External client, backend on another node: source-NAT to this node so the reply comes
        // back here to be translated.
        let Some(config) = SVC_CONFIG.get(0) else {
            return Err(Outcome::drop(Reason::SnatNoAddress));
        };
        // The agent writes 0.0.0.0 when no address of this node qualifies (run.rs,
        // `snat_source`): a packet from 0.0.0.0 would never be answered.
        let node_addr = A::snat_addr(config);
        if A::same(node_addr, A::UNSPECIFIED) {
            return Err(Outcome::drop(Reason::SnatNoAddress));
        }
        fwd.src_addr = node_addr;
        fwd.flags |= CT_F_SNAT;
        // The first SNAT port tried is named by a hash of the client's tuple (salted, so it
        // does not follow the backend choice, which uses the same hash); `commit` claims it as
        // it claims a client's own port: a flow whose entries were evicted is picked up onto
        // the port its SYN got, so the backend keeps seeing the same 4-tuple. Computed here,
        // not in `commit`: there, the extra branch cost the verifier ~100k instructions in
        // svc_pod_ingress, which never source-NATs.
        let ports = SnatMap::new(snat_ports());
        let i = scale(mix(flow_hash(flow) ^ SNAT_PORT_SALT), ports.total);
        fwd.src_port = snat_port(&ports, i);
    }
    Ok(Step::Translate(reason))
}

/// Second half of a new flow, in a BPF subprogram of its own (a sibling of [`new_flow_sub`],
/// so their frames never add up): claims the reply tuple, remapping the source port on a
/// clash, and stores both entries. Returns the (possibly changed) reason, or a packed
/// outcome tagged [`NEW_REJECT`]-free (see [`open_flow`]).
#[inline(never)]
fn commit_sub(flow: &FlowOf<A>, now: u64, fwd: &mut CtEntryOf<A>, reason: u32) -> u64 {
    match commit(flow, now, fwd, crate::reason_from(reason)) {
        Ok(reason) => NEW_TRANSLATE | reason as u32 as u64,
        Err(out) => out.pack(),
    }
}

#[inline(always)]
fn commit(
    flow: &FlowOf<A>,
    now: u64,
    fwd: &mut CtEntryOf<A>,
    mut reason: Reason,
) -> Result<Reason, Outcome> {
    let snat = fwd.flags & CT_F_SNAT != 0;
    let Some(scratch) = SVC_SCRATCH.get_ptr_mut(0) else {
        return Err(Outcome::drop(Reason::CtInsertFailed));
    };
    // SAFETY: this CPU's slot of a per-CPU array, used only while this program runs.
    let rep = unsafe { &mut *A::scratch_rep(scratch) };
    reply_of(&ct_key(flow), fwd, rep);
    let mut rep_key = A::ct_key(
        fwd.dst_addr,
        fwd.src_addr,
        fwd.dst_port,
        fwd.src_port,
        flow.proto,
    );
    let t = timeouts();
    // The forward entry's source port is tried first: the client's own port, or with SNAT the
    // one `new_flow` named by a hash of the client's tuple. When a live flow holds that reply
    // tuple (one client port to two frontends sharing a backend; another client's SNAT flow),
    // a port is chosen at random among the SNAT ports, as nf_nat picks another source port on
    // a clash: free ports first (a plain insert each: the loop stays cheap for the verifier),
    // then a few ports whose flows may be over and can be taken over. `snat_port` maps
    // the random index across the (up to two) ranges without a branch.
    let ports = SnatMap::new(snat_ports());
    let span = ports.total;
    let mut claimed = claim::<true>(t, &rep_key, rep, now);
    if !claimed {
        for _ in 0..SNAT_ATTEMPTS {
            rep_key.dst_port = snat_port(&ports, random_below(span));
            if A::ct().insert(&rep_key, &*rep, BPF_NOEXIST).is_ok() {
                claimed = true;
                break;
            }
        }
        for _ in 0..TAKEOVER_ATTEMPTS {
            if claimed {
                break;
            }
            rep_key.dst_port = snat_port(&ports, random_below(span));
            claimed = claim::<false>(t, &rep_key, rep, now);
        }
        if !claimed {
            return Err(Outcome::drop(Reason::SnatNoPort));
        }
        if !snat {
            reason = Reason::ClashRemapped;
        }
    }
    fwd.src_port = rep_key.dst_port;
    if A::ct().insert(ct_key(flow), &*fwd, 0).is_err() {
        // The reply entry alone would hold its tuple until it expires.
        let _ = A::ct().remove(&rep_key);
        reason = Reason::CtInsertFailed;
    }
    Ok(reason)
}

/// Ports a new flow tries to take over from a flow that is over once [`SNAT_ATTEMPTS`] free
/// ones failed: under a burst of short connections every port is held by a closed flow, and a
/// single try that hit one of the few live flows dropped the SYN (seen: 6 in 1000).
const TAKEOVER_ATTEMPTS: u32 = 8;

/// How long a closed flow must have been quiet before a new flow takes its reply tuple over:
/// TCP timestamps tick in milliseconds (tcp_clock_ms), so 100 ms puts the new SYN's well
/// past the old connection's.
const TAKEOVER_QUIET_NS: u64 = 100_000_000;

/// `BPF_NOEXIST`: insert only if the key is absent.
pub(crate) const BPF_NOEXIST: u64 = 1;
/// `BPF_EXIST`: update only if the key is present.
pub(crate) const BPF_EXIST: u64 = 2;

/// `bpf_fib_lookup` input for a packet translated as `entry` says, arriving on `ifindex`,
/// whose length to check against the MTU is `tot_len`: shared by XDP and tc, which differ in
/// the context they pass, the flags and the length (`route::mtu_check_len`).
#[inline(always)]
pub(crate) fn fib_params(
    flow: &FlowOf<A>,
    entry: &CtEntryOf<A>,
    ifindex: u32,
    tot_len: u16,
) -> FibParams {
    // SAFETY: an all-zero bpf_fib_lookup is a valid input.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = A::FAMILY;
    p.l4_protocol = flow.proto_on_wire();
    p.sport = entry.src_port.to_be();
    p.dport = entry.dst_port.to_be();
    p.__bindgen_anon_1.tot_len = tot_len;
    p.ifindex = ifindex;
    A::fib_addrs(&mut p, entry.src_addr, entry.dst_addr);
    p
}
