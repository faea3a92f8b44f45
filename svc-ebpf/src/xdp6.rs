//! XDP on node uplinks for IPv6: the north-south fast path of `xdp`, same rules, same reasons
//! to leave a frame to tc. `svc_xdp` hands every IPv6 frame over by a tail call
//! (`SVC_XDP_PROGS6`, checked first thing: one compare for an IPv4 frame); when the slot is
//! empty (the program failed to load, or an agent has not filled it yet) the frame goes on
//! through `svc_xdp`, which passes it counted `not_ipv4`, and the tc uplink program's IPv6
//! sibling (`programs6::svc_uplink_ingress6`) does the whole work.
//!
//! What differs from IPv4:
//! - The parse walks the extension headers as the tc path does (`parse6`): Hop-by-Hop and
//!   Destination Options and a Routing header with no segment left are skipped (the L4 header
//!   and checksum sit after them, `Flow6::x.l4_off`), everything else is refused by reason,
//!   untouched.
//! - There is no IP header checksum. The L4 checksum covers the addresses through the
//!   pseudo-header (RFC 8200 §8.1: source, destination, upper-layer length, next header), so
//!   the `CHECKSUM_PARTIAL` test and the incremental update run over 16-byte addresses; the
//!   upper-layer length excludes the extension headers.
//! - UDP without a checksum (0) is illegal over IPv6 (RFC 8200 §8.1; the stack drops it,
//!   `udp6_csum_init`): such a datagram goes to tc, which leaves the field alone
//!   (`BPF_F_MARK_MANGLED_0`) like the stack would see it. A computed 0 is sent as 0xffff.
//! - The hop limit of a frame sent back out by `XDP_TX` is decremented here (no checksum
//!   covers it); at 1 or below the frame goes to tc, whose IPv6 program passes it to the
//!   stack to answer Time Exceeded.
//! - Every fragment goes to tc, first and later ones alike (counted `to_tc`): tc translates
//!   them with the fragment map (`SVC_FRAGS6`), so the datagram's fragments take one path and
//!   a later fragment never depends on which program saw its first one. Fragmented IPv6
//!   traffic is rare (routers never fragment; only sources do, after Packet Too Big).
//! - ICMPv6 errors about translated flows (their quote must be rewritten) go to tc; every
//!   other ICMPv6 message, Neighbor Discovery included, passes untouched as `not_tcp_udp`.
//!
//! Counted under `Hook::Xdp6`, traced as IPv6 events (`v6::trace`).
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, xdp_md, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::bpf_fib_lookup,
    macros::xdp,
    programs::XdpContext,
};
use network_types::eth::EthHdr;
use svc_common::{
    CtEntry6, Hook, Reason, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_EXTERNAL, CT_F_SNAT, PROTO_UDP,
};

use crate::{
    csum::fold,
    maps::SVC_SCRATCH,
    nat6::{ports_word, sum16},
    parse::{ptr_at, FRAG_NONE, IP_OFF},
    parse6::{parse6_xdp, Flow6, IP6_HOP_OFF, IP6_SRC_OFF},
    reason_from,
    stats::count,
    v6::{
        lb::{blank_entry, decide, fib_params, Origin, Step},
        trace::trace,
    },
    Outcome, TC_ACT_SHOT,
};

/// [`svc_xdp6`]'s index in `SVC_XDP_PROGS6` (`svc_common::XDP_PROGS6`).
pub(crate) const PROG6_XDP: u32 = 0;

/// XDP on a node uplink, IPv6 (reached from `svc_xdp`).
#[xdp]
pub(crate) fn svc_xdp6(ctx: XdpContext) -> u32 {
    let Some(scratch) = SVC_SCRATCH.get_ptr_mut(0) else {
        // Never for index 0 of a per-CPU array; tc handles the frame if it ever happened.
        count(Hook::Xdp6, Reason::ToTc);
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's slot of a per-CPU array, used only while this program runs (programs
    // on one CPU never nest); `flow6` is large and aligned enough for a Flow6 (asserted in
    // `programs6`). The flow and the entry live there, not on the 512-byte stack, as in the
    // IPv6 tc programs.
    let (flow, entry) = unsafe {
        let flow = &mut *((*scratch).flow6.as_mut_ptr() as *mut Flow6);
        *flow = Flow6::EMPTY;
        let entry = &mut (*scratch).entry6;
        *entry = blank_entry();
        (flow, entry)
    };
    let (verdict, reason) = match run6(&ctx, flow, entry) {
        Ok(v) => v,
        // Parse and load-balancing outcomes are tc verdicts: pass or drop.
        Err(out) if out.verdict == TC_ACT_SHOT => (xdp_action::XDP_DROP, out.reason),
        Err(out) => (xdp_action::XDP_PASS, out.reason),
    };
    count(Hook::Xdp6, reason);
    let len = (ctx.data_end() - ctx.data()) as u32;
    let ifindex = ctx.ingress_ifindex() as u32;
    trace(
        Hook::Xdp6,
        flow,
        entry,
        verdict as i32,
        reason as u32,
        len,
        ifindex,
    );
    verdict
}

#[inline(always)]
fn to_tc() -> Result<(u32, Reason), Outcome> {
    Ok((xdp_action::XDP_PASS, Reason::ToTc))
}

#[inline(always)]
fn run6(
    ctx: &XdpContext,
    flow: &mut Flow6,
    entry: &mut CtEntry6,
) -> Result<(u32, Reason), Outcome> {
    parse6_xdp(ctx, flow)?;
    if flow.icmp {
        // ICMPv6 errors are rare and need the quote rewritten: the tc path does it.
        return to_tc();
    }
    if flow.frag != FRAG_NONE {
        // Fragments: tc (see the module doc).
        return to_tc();
    }
    if !checksum_is_full6(flow) {
        return to_tc();
    }
    let reason = match decide(flow, Origin::Uplink, true, entry)? {
        Step::Translate(reason) => reason,
        // The TCP RST / ICMPv6 port unreachable is built by tc (`reject6`).
        Step::Reject => return to_tc(),
    };
    if entry.dir == CT_DIR_REPLY && entry.flags & CT_F_EXTERNAL == 0 {
        // A reply to a flow a pod started: the pod veth's egress hook translates it.
        return Err(Outcome::pass(Reason::NotService));
    }
    // Local backend: the stack delivers it to the pod (and decrements the hop limit).
    let local = entry.dir == CT_DIR_FORWARD && entry.flags & CT_F_SNAT == 0;
    if !local && flow.ttl <= 1 {
        // XDP_TX bypasses ip6_forward: let tc hand it to the stack, which answers Time
        // Exceeded.
        return to_tc();
    }
    let r = finish_sub(
        ctx.ctx,
        flow,
        entry,
        reason as u32 as u64 | (local as u64) << 32,
    );
    Ok(((r >> 32) as u32, reason_from(r as u32)))
}

/// The rest of [`run6`] after the decision, in a BPF subprogram of its own: the verifier
/// limits the stack of a call chain to 512 bytes, and inlined next to the decision's new-flow
/// subprogram the FIB lookup's parameters and the rewrite's sums did not fit (560 bytes).
/// `arg`: the decision's reason, bit 32 set for a local backend. Returns the XDP action at
/// bit 32 and the reason to count.
#[inline(never)]
fn finish_sub(ctx: *mut xdp_md, flow: &Flow6, entry: &CtEntry6, arg: u64) -> u64 {
    let ctx = XdpContext::new(ctx);
    let reason = reason_from(arg as u32);
    let (verdict, reason) = match finish(&ctx, flow, entry, reason, arg >> 32 != 0) {
        Ok(v) => v,
        Err(out) if out.verdict == TC_ACT_SHOT => (xdp_action::XDP_DROP, out.reason),
        Err(out) => (xdp_action::XDP_PASS, out.reason),
    };
    (verdict as u64) << 32 | reason as u32 as u64
}

#[inline(always)]
fn finish(
    ctx: &XdpContext,
    flow: &Flow6,
    entry: &CtEntry6,
    reason: Reason,
    local: bool,
) -> Result<(u32, Reason), Outcome> {
    if local {
        rewrite6(ctx, flow, entry, false)?;
        return Ok((xdp_action::XDP_PASS, reason));
    }
    // Leaving the node again: find the next hop before touching the frame, so a frame we
    // cannot send ourselves reaches tc unchanged. The length is the IPv6 packet's (fixed
    // header included), which bpf_ipv6_fib_lookup compares with the route's MTU
    // (net/core/filter.c: `params->tot_len > mtu` → BPF_FIB_LKUP_RET_FRAG_NEEDED).
    let mut p = fib_params(flow, entry, ctx.ingress_ifindex() as u32, flow.ip_len);
    // SAFETY: `p` is a live, correctly sized bpf_fib_lookup on the stack.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 || rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        // No neighbour entry: tc's bpf_redirect_neigh resolves it. Too big: tc checks it
        // GSO-aware and answers Packet Too Big when it really does not fit (see `xdp`).
        return to_tc();
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(Outcome::drop(Reason::FibFailed));
    }
    if p.ifindex != ctx.ingress_ifindex() as u32 {
        // Another interface: tc's bpf_redirect_neigh sends it (see `xdp`).
        return to_tc();
    }
    rewrite6(ctx, flow, entry, true)?;
    let eth: *mut EthHdr = ptr_at(ctx.data(), ctx.data_end(), 0)?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe {
        (*eth).dst_addr = p.dmac;
        (*eth).src_addr = p.smac;
    }
    Ok((xdp_action::XDP_TX, reason))
}

/// Whether the L4 checksum field cannot be a `CHECKSUM_PARTIAL` placeholder, which holds the
/// folded (uncomplemented) pseudo-header sum (`__tcp_v6_send_check`, `udp6_hwcsum_outgoing`:
/// `~csum_ipv6_magic(saddr, daddr, len, proto, 0)`). The pseudo-header (RFC 8200 §8.1) is the
/// two addresses, the upper-layer length as 32 bits (the payload length less the extension
/// headers) and the next header as 32 bits; sums are over native-order words, which yields the
/// field's own representation (see `csum`). A UDP checksum of 0 is not full: see the module
/// doc.
#[inline(always)]
fn checksum_is_full6(flow: &Flow6) -> bool {
    if flow.proto == PROTO_UDP && flow.l4_check == [0, 0] {
        return false;
    }
    let ext_and_fixed = (flow.x.l4_off as u16).saturating_sub(IP_OFF as u16);
    let l4_len = flow.ip_len.saturating_sub(ext_and_fixed);
    let pseudo = sum16(&flow.saddr)
        + sum16(&flow.daddr)
        + u16::from_ne_bytes([0, flow.proto]) as u32
        + u16::from_ne_bytes(l4_len.to_be_bytes()) as u32;
    u16::from_ne_bytes(flow.l4_check) != fold(pseudo)
}

/// Rewrites source and destination (addresses and ports) to `entry`'s, updating the L4
/// checksum incrementally (RFC 1624: `HC' = ~(~HC + ~m + m')`, with `m` the sum of the 16
/// address words and the 2 port words, associative like every one's-complement sum; the
/// frame's checksum is full, see [`checksum_is_full6`]). `forwarded`: the frame leaves again
/// by XDP_TX, bypassing `ip6_forward`, so its hop limit is decremented here (the caller made
/// sure it is above 1).
#[inline(always)]
fn rewrite6(
    ctx: &XdpContext,
    flow: &Flow6,
    entry: &CtEntry6,
    forwarded: bool,
) -> Result<(), Outcome> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let hop: *mut u8 = ptr_at(start, end, IP6_HOP_OFF)?;
    let addrs: *mut [[u8; 16]; 2] = ptr_at(start, end, IP6_SRC_OFF)?;
    // `parse6` bounded both offsets (the L4 header within 200 bytes of the frame, the
    // checksum field a byte); the masks restate it for the verifier, which does not know what
    // the scratch memory holds.
    let ports: *mut [u8; 4] = ptr_at(start, end, flow.x.l4_off as usize & 0xff)?;
    let check: *mut [u8; 2] = ptr_at(start, end, flow.csum_off as usize)?;
    let (op, np) = (
        ports_word(flow.sport, flow.dport),
        ports_word(entry.src_port, entry.dst_port),
    );
    let old = sum16(&flow.saddr) + sum16(&flow.daddr) + (op & 0xffff) + (op >> 16);
    let new = sum16(&entry.src_addr) + sum16(&entry.dst_addr) + (np & 0xffff) + (np >> 16);
    // SAFETY: every pointer was bounds-checked by `ptr_at` against this frame.
    unsafe {
        // `FAULT_SKIP_L4_CSUM` (tests only) leaves the L4 checksum stale, as in tc and `xdp`,
        // so the tests that must catch a broken checksum are shown to catch it here too.
        if !crate::fault(svc_common::FAULT_SKIP_L4_CSUM) {
            let sum = !u16::from_ne_bytes(*check) as u32 + !fold(old) as u32 + fold(new) as u32;
            let mut l4 = !fold(sum);
            if flow.proto == PROTO_UDP && l4 == 0 {
                // 0 would mean "no checksum", illegal over IPv6: a computed zero is 0xffff.
                l4 = 0xffff;
            }
            *check = l4.to_ne_bytes();
        }
        if forwarded {
            *hop = flow.ttl - 1;
        }
        *addrs = [entry.src_addr.octets, entry.dst_addr.octets];
        let sp = entry.src_port.to_be_bytes();
        let dp = entry.dst_port.to_be_bytes();
        *ports = [sp[0], sp[1], dp[0], dp[1]];
    }
    Ok(())
}
