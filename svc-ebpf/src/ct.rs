//! Conntrack on the datapath: the lookup every hook does first (either direction with one
//! key), expiry by state, the repair of a lost reply entry, and whether a live entry's
//! backend still belongs to its frontend. The decisions for new flows are in `lb`.
use super::A;
use svc_common::Addr as _;
use svc_common::{
    ct_next_state, ct_peer_key, ct_state_closed, CtEntryOf, CtKeyOf, CtTimeouts, SlotKey,
    SnatPorts, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_SNAT, CT_STATE_CLOSE_WAIT, CT_STATE_ESTABLISHED,
    CT_STATE_NONE, CT_STATE_SYN_SENT, CT_STATE_UDP_UNREPLIED, CT_TCP_ACK, CT_TCP_FIN, CT_TCP_RST,
    CT_TCP_SYN, PROTO_TCP, PROTO_UDP,
};

use super::lb::*;
use crate::{
    family::Family,
    maps::{SVC_SCRATCH, SVC_SLOTS},
    parse::FlowOf,
};

#[inline(always)]
pub(crate) fn timeouts() -> &'static CtTimeouts {
    let p: *const CtTimeouts = &crate::SVC_CT_TIMEOUTS;
    // SAFETY: `p` points at a static that lives as long as the program.
    unsafe { &*core::ptr::read_volatile(&p) }
}

/// The SNAT ports, read through a volatile pointer like [`timeouts`] so the compiler cannot
/// fold the built-in default the agent overrides.
#[inline(always)]
pub(crate) fn snat_ports() -> &'static SnatPorts {
    let p: *const SnatPorts = &crate::SVC_SNAT_PORTS;
    // SAFETY: `p` points at a static that lives as long as the program.
    unsafe { &*core::ptr::read_volatile(&p) }
}

#[inline(always)]
pub(crate) fn ct_key(flow: &FlowOf<A>) -> CtKeyOf<A> {
    A::ct_key(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto)
}

/// The other entry of the flow `e` (stored under `key`) belongs to, if it still pairs back
/// (an entry under that key written for another flow is not ours to touch).
#[inline(always)]
pub(crate) fn peer_of(key: &CtKeyOf<A>, e: &CtEntryOf<A>) -> Option<*mut CtEntryOf<A>> {
    let peer_key = ct_peer_key(key, e);
    let peer = A::ct().get_ptr_mut(&peer_key)?;
    // SAFETY: `peer` came from a successful lookup; copied fields only.
    let back = ct_peer_key(&peer_key, unsafe { &*peer });
    if A::same(back.src_addr, key.src_addr)
        && A::same(back.dst_addr, key.dst_addr)
        && back.src_port == key.src_port
        && back.dst_port == key.dst_port
    {
        Some(peer)
    } else {
        None
    }
}

/// Whether two conntrack keys are equal ([`Family::same`] on the addresses).
#[inline(always)]
fn same_key(a: &CtKeyOf<A>, b: &CtKeyOf<A>) -> bool {
    A::same(a.src_addr, b.src_addr)
        && A::same(a.dst_addr, b.dst_addr)
        && a.src_port == b.src_port
        && a.dst_port == b.dst_port
        && a.proto == b.proto
}

/// How long a forward entry must have been quiet before a packet checks that its reply entry
/// still exists.
pub(crate) const REPAIR_IDLE_NS: u64 = 500_000_000;

/// Writes the reply entry of forward entry `fwd` (stored under `key`) again if it is gone, or
/// if a flow that never got an answer ([`displaces`]) claimed its tuple while it was gone.
#[inline(always)]
pub(crate) fn repair_reply(key: &CtKeyOf<A>, fwd: &CtEntryOf<A>) {
    let rep_key = ct_peer_key(key, fwd);
    // Never over another flow's entry written meanwhile.
    let mut flags = BPF_NOEXIST;
    if let Some(old) = A::ct().get_ptr(&rep_key) {
        // SAFETY: pointer from a successful lookup; read in place.
        let old = unsafe { &*old };
        if !displaces(fwd, old) || same_key(&ct_peer_key(&rep_key, old), key) {
            return;
        }
        if peer_of(&rep_key, old).is_some() {
            let _ = A::ct().remove(&ct_peer_key(&rep_key, old));
        }
        flags = BPF_EXIST;
    }
    let Some(scratch) = SVC_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array, used only while this program runs.
    let rep = unsafe { &mut *A::scratch_rep(scratch) };
    reply_of(key, fwd, rep);
    let _ = A::ct().insert(&rep_key, &*rep, flags);
}

/// Whether the established flow `ours` takes its reply tuple back from `holder`, a TCP flow
/// whose SYN has had no answer. Both name the same backend-side tuple, which the backend can
/// hold only once: `holder` claimed it while `ours` had lost its entries to LRU eviction, and
/// the backend still has `ours`'s connection on it (its answer to `holder`'s SYN is a bare ACK,
/// which [`Lookup::Collision`] drops). Without this, `ours`'s next reply would be rewritten to
/// `holder`'s frontend and the client would reset the backend's connection.
#[inline(always)]
pub(crate) fn displaces(ours: &CtEntryOf<A>, holder: &CtEntryOf<A>) -> bool {
    ours.state == CT_STATE_ESTABLISHED && holder.state == CT_STATE_SYN_SENT
}

/// The reply entry of forward entry `fwd`, stored under `key` (the client's tuple): the
/// backend's packets get the frontend back as source and the client as destination.
#[inline(always)]
pub(crate) fn reply_of(key: &CtKeyOf<A>, fwd: &CtEntryOf<A>, rep: &mut CtEntryOf<A>) {
    *rep = *fwd;
    rep.dir = CT_DIR_REPLY;
    rep.src_addr = key.dst_addr;
    rep.src_port = key.dst_port;
    rep.dst_addr = key.src_addr;
    rep.dst_port = key.src_port;
    rep.tcp_flags = 0;
    // Volatile: two adjacent zero stores are otherwise merged into a call to an outlined
    // memset, one more frame on commit_sub's call chain (see `CtKey::new` for why that frame
    // is too many on Linux 6.1).
    // SAFETY: plain stores to fields of a live `&mut`.
    unsafe {
        core::ptr::write_volatile(&mut rep.packets, 0);
        core::ptr::write_volatile(&mut rep.bytes, 0);
    }
}

/// Whether the flow of `e` is over at `now`: its entry outlived its timeout and so did its
/// peer (a flow lives while either direction is fresh: a one-way UDP stream's reply entry
/// sees no packets, yet must translate the first reply that comes).
#[inline(always)]
pub(crate) fn flow_expired(t: &CtTimeouts, key: &CtKeyOf<A>, e: &CtEntryOf<A>, now: u64) -> bool {
    if !t.expired(key.proto, e, now) {
        return false;
    }
    match peer_of(key, e) {
        // SAFETY: pointer from a successful lookup.
        Some(peer) => t.expired(key.proto, unsafe { &*peer }, now),
        None => true,
    }
}

/// Deletes both entries of the flow stored under `key`.
#[inline(always)]
pub(crate) fn forget(key: &CtKeyOf<A>, e: &CtEntryOf<A>) {
    if peer_of(key, e).is_some() {
        let _ = A::ct().remove(&ct_peer_key(key, e));
    }
    let _ = A::ct().remove(key);
}

/// What conntrack says about a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// A live flow: translate as the (refreshed) entry says.
    Hit,
    /// No live flow.
    Miss,
    /// A SYN to a frontend whose entry is closed, or whose backend left the frontend: balance
    /// it afresh (the old flow's entries are gone).
    Reopen,
    /// A SYN-ACK that hit the reply entry of a flow that is over: it belongs to a new
    /// connection made without the Service (the client reused its port towards the backend's
    /// own address). The old entries are deleted; the packet passes untouched.
    Stale,
    /// A bare ACK from the backend to a flow whose SYN it has not answered: the backend holds
    /// another live connection on the tuple (see `Reason::CtCollision`). The new flow's
    /// entries are deleted; the packet is dropped.
    Collision,
}

#[inline(always)]
pub(crate) fn is_syn(flags: u8) -> bool {
    flags & (CT_TCP_SYN | CT_TCP_ACK | CT_TCP_RST) == CT_TCP_SYN
}

/// Looks the packet's tuple up in conntrack (either direction). A live entry is refreshed and
/// its flow's state advanced (`svc_common::ct_next_state`; both entries on a transition).
/// ICMP errors only read: they neither refresh nor change a flow.
#[inline(always)]
pub(crate) fn ct_lookup(
    flow: &FlowOf<A>,
    origin: Origin,
    now: u64,
    out: &mut CtEntryOf<A>,
) -> Lookup {
    match ct_lookup_sub(flow, (origin == Origin::Uplink) as u32, now, out) {
        0 => Lookup::Hit,
        1 => Lookup::Miss,
        2 => Lookup::Reopen,
        3 => Lookup::Stale,
        _ => Lookup::Collision,
    }
}

/// [`ct_lookup_inline`] in a BPF subprogram of its own (see `Outcome::pack`); the entry is
/// copied to `out` on a hit.
#[inline(never)]
pub(crate) fn ct_lookup_sub(
    flow: &FlowOf<A>,
    uplink: u32,
    now: u64,
    out: &mut CtEntryOf<A>,
) -> u32 {
    let origin = if uplink != 0 {
        Origin::Uplink
    } else {
        Origin::Pod
    };
    match ct_lookup_inline(flow, origin, now, out) {
        Lookup::Hit => 0,
        Lookup::Miss => 1,
        Lookup::Reopen => 2,
        Lookup::Stale => 3,
        Lookup::Collision => 4,
    }
}

#[inline(always)]
pub(crate) fn ct_lookup_inline(
    flow: &FlowOf<A>,
    origin: Origin,
    now: u64,
    out: &mut CtEntryOf<A>,
) -> Lookup {
    let key = ct_key(flow);
    let Some(ptr) = A::ct().get_ptr_mut(&key) else {
        return Lookup::Miss;
    };
    let t = timeouts();
    // SAFETY: `ptr` came from a successful lookup. Concurrent updates of one flow on two CPUs
    // can lose a counter increment or race two equal state transitions; the NAT fields are
    // written once.
    let e = unsafe { &mut *ptr };
    if flow_expired(t, &key, e, now) {
        return if is_syn(flow.tcp_flags) && e.dir == CT_DIR_FORWARD {
            Lookup::Reopen
        } else {
            Lookup::Miss
        };
    }
    if flow.icmp {
        *out = *e;
        return Lookup::Hit;
    }
    let flags = flow.tcp_flags;
    if flow.proto == PROTO_TCP
        && e.dir == CT_DIR_REPLY
        && e.state == CT_STATE_SYN_SENT
        && e.flags & CT_F_SNAT == 0
        && flags & (CT_TCP_SYN | CT_TCP_ACK | CT_TCP_RST) == CT_TCP_ACK
    {
        // The backend answers a SYN with a bare ACK when the tuple is its live connection
        // (RFC 5961 challenge ACK, tcp_validate_incoming) or one in TIME_WAIT that does not
        // take the SYN (tcp_timewait_state_process): not this flow's answer. Passed on, it
        // would make the client reset the backend's connection.
        // Not for source-NATed flows: their tuple's earlier holder was usually another
        // client's flow, now in TIME_WAIT on the backend, which the client's reset clears so
        // that its retransmitted SYN gets through; and a retransmitted SYN would be given the
        // same (hashed) SNAT port again, so dropping would stall it for the whole TIME_WAIT.
        forget(&key, e);
        return Lookup::Collision;
    }
    if flow.proto == PROTO_TCP && flags & CT_TCP_SYN != 0 {
        if e.dir == CT_DIR_FORWARD && is_syn(flags) {
            // A new connection from the same client port: a new flow once the old one is
            // over, or once its backend has left the frontend (a retransmitted SYN of a live
            // flow keeps its backend).
            if ct_state_closed(e.state)
                || e.state == CT_STATE_CLOSE_WAIT
                || !backend_current(flow, origin, e)
            {
                forget(&key, e);
                return Lookup::Reopen;
            }
        } else if e.dir == CT_DIR_REPLY
            && e.state != CT_STATE_SYN_SENT
            && e.state != CT_STATE_ESTABLISHED
            && e.state != CT_STATE_NONE
        {
            // A SYN-ACK comes only while a flow opens (or again, if the handshake's last ACK
            // was lost, while it is established); one on a closing flow is another
            // connection's.
            forget(&key, e);
            return Lookup::Stale;
        }
    }
    if e.dir == CT_DIR_FORWARD && now.saturating_sub(e.last_seen_ns) > REPAIR_IDLE_NS {
        // A flow quiet for a while may have lost its reply entry to LRU eviction; a busy one
        // keeps it recently used. Checked only after a pause, so it costs nothing per packet
        // of a busy flow.
        repair_reply(&key, e);
    }
    e.last_seen_ns = now;
    e.packets += 1;
    e.bytes += flow.ip_len as u64;
    e.tcp_flags |= flags;
    let transition = if flow.proto == PROTO_UDP {
        e.dir == CT_DIR_REPLY && e.state == CT_STATE_UDP_UNREPLIED
    } else {
        flags & (CT_TCP_FIN | CT_TCP_RST) != 0
            || (e.dir == CT_DIR_REPLY && e.state == CT_STATE_SYN_SENT)
    };
    if transition {
        let peer = peer_of(&key, e);
        // SAFETY: pointer from a successful lookup.
        let peer_fin = peer.is_some_and(|p| unsafe { (*p).tcp_flags } & CT_TCP_FIN != 0);
        let next = ct_next_state(flow.proto, e.state, e.dir, flags, peer_fin);
        e.state = next;
        if let Some(p) = peer {
            // SAFETY: as above.
            unsafe { (*p).state = next };
        }
    }
    *out = *e;
    Lookup::Hit
}

/// Whether the backend of forward entry `e` still serves the frontend `flow` is addressed to:
/// the frontend still exists with the same id and the backend is still the one its id names;
/// for frontends of up to [`MEMBERSHIP_SCAN`] backends, it is still in one of their slots.
/// Asked only for a SYN that hits a live entry, so the cost stays off the common path.
#[inline(always)]
pub(crate) fn backend_current(flow: &FlowOf<A>, origin: Origin, e: &CtEntryOf<A>) -> bool {
    let Ok(fe) = frontend_for(flow, origin) else {
        return false;
    };
    if fe.id != e.frontend_id {
        return false;
    }
    // SAFETY: value copied out at once.
    let Some(b) = (unsafe { A::backends().get(&e.backend_id) }).copied() else {
        return false;
    };
    if !A::same(b.addr, e.dst_addr) || b.port != e.dst_port {
        return false;
    }
    if fe.backend_count > MEMBERSHIP_SCAN {
        return true;
    }
    for slot in 1..=MEMBERSHIP_SCAN {
        if slot > fe.backend_count {
            break;
        }
        let key = SlotKey {
            frontend_id: fe.id,
            slot,
        };
        // SAFETY: value copied out at once.
        if unsafe { SVC_SLOTS.get(&key) }.is_some_and(|s| s.backend_id == e.backend_id) {
            return true;
        }
    }
    false
}

/// Frontends with at most this many backends get an exact membership check when a SYN hits a
/// live entry; larger ones only the "backend still exists" check (a bounded loop).
pub(crate) const MEMBERSHIP_SCAN: u32 = 16;
