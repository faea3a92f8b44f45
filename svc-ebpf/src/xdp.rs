//! XDP on node uplinks: the fast path for north-south frames.
//!
//! It translates only what it can do correctly without an skb:
//! - The L4 checksum must be provably full. A `CHECKSUM_PARTIAL` frame (from a local socket,
//!   or a peer that offloads) holds the folded pseudo-header sum in its checksum field; XDP
//!   cannot see `skb->ip_summed`, so a frame whose field equals that sum is passed untouched to
//!   the tc program (`uplink`), whose helpers handle both states (DESIGN §2). A full checksum
//!   equal to it by coincidence (1 in 65536) takes the tc path too, which is merely slower.
//! - A frame leaving the node again (remote backend, reply to the client) needs a next hop:
//!   `bpf_fib_lookup` gives the MACs; without a neighbour entry the frame goes to tc, where
//!   `bpf_redirect_neigh` resolves it.
//! - A reject is built by tc, and so are ICMP errors about translated flows (their quote is
//!   rewritten too) and fragmentation-needed answers.
//! - A frame the FIB finds too big (a GRO-merged skb under generic XDP carries its merged
//!   length) or whose TTL would expire goes to tc, which checks GSO-aware and answers.
//! - A frame for another interface (`XDP_REDIRECT` would need the target to accept XDP frames;
//!   a veth does only when its peer runs XDP or GRO) goes to tc too.
//! - Replies of flows that pods started are left to the pod veth's egress hook.
//! Everything else is done here: translate, then `XDP_PASS` to a local backend's pod, or
//! `XDP_TX` towards a remote backend or back to the client.
//!
//! IPv6 frames are handed first thing to `svc_xdp6` (`xdp6`, by a tail call through
//! `SVC_XDP_PROGS6`), which follows the same rules over IPv6 (pseudo-header with 16-byte
//! addresses, hop limit, extension headers; fragments and ICMPv6 errors to tc); with its slot
//! empty they are passed here as `not_ipv4`, to tc.
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::bpf_fib_lookup,
    macros::xdp,
    programs::XdpContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use svc_common::{
    CtEntry, Hook, Reason, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_EXTERNAL, CT_F_SNAT, PROTO_UDP,
};

use crate::{
    csum::{csum_update, fold, halves, words},
    maps::SVC_XDP_PROGS6,
    parse::{parse_xdp, ptr_at, Flow, FRAG_LATER, IP_OFF, L4_OFF},
    parse6::is_ipv6,
    stats::count,
    v4::lb::{blank_entry, decide, fib_params, Origin, Step},
    v4::trace::trace,
    xdp6::PROG6_XDP,
    Outcome, TC_ACT_SHOT,
};

/// XDP on a node uplink (`--uplink`).
#[xdp]
pub(crate) fn svc_xdp(ctx: XdpContext) -> u32 {
    // IPv6: the IPv6 program (`xdp6`), as `programs::to_v6` does for the tc hooks. First thing,
    // so an IPv4 frame pays one load and compare.
    if is_ipv6(ctx.data(), ctx.data_end()) {
        // SAFETY: a tail call with the program's own context; it returns only on failure (an
        // empty slot: the frame goes on here and is passed `not_ipv4`, to tc).
        unsafe { SVC_XDP_PROGS6.tail_call(&ctx, PROG6_XDP) };
    }
    let (mut flow, mut entry) = (Flow::EMPTY, blank_entry());
    let (verdict, reason) = match run(&ctx, &mut flow, &mut entry) {
        Ok(v) => v,
        // Parse and load-balancing outcomes are tc verdicts: pass or drop.
        Err(out) if out.verdict == TC_ACT_SHOT => (xdp_action::XDP_DROP, out.reason),
        Err(out) => (xdp_action::XDP_PASS, out.reason),
    };
    count(Hook::Xdp, reason);
    // IPv4 events only: IPv6 frames were handed to `svc_xdp6` above, which traces them.
    let len = (ctx.data_end() - ctx.data()) as u32;
    let ifindex = ctx.ingress_ifindex() as u32;
    trace(
        Hook::Xdp,
        &flow,
        &entry,
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
fn run(ctx: &XdpContext, flow: &mut Flow, entry: &mut CtEntry) -> Result<(u32, Reason), Outcome> {
    parse_xdp(ctx, flow)?;
    if flow.icmp {
        // ICMP errors are rare and need the quote rewritten: the tc path does it.
        return to_tc();
    }
    // A later fragment has no L4 checksum to worry about.
    if flow.frag != FRAG_LATER && !checksum_is_full(flow) {
        return to_tc();
    }
    let reason = match decide(flow, Origin::Uplink, true, entry)? {
        Step::Translate(reason) => reason,
        Step::Reject => return to_tc(),
    };
    if entry.dir == CT_DIR_REPLY && entry.flags & CT_F_EXTERNAL == 0 {
        // A reply to a flow a pod started: the pod veth's egress hook translates it.
        return Err(Outcome::pass(Reason::NotService));
    }
    if entry.dir == CT_DIR_FORWARD && entry.flags & CT_F_SNAT == 0 {
        // Local backend: the stack delivers it to the pod (and decrements the TTL).
        rewrite(ctx, flow, entry, false)?;
        return Ok((xdp_action::XDP_PASS, reason));
    }
    if flow.ttl <= 1 {
        // XDP_TX bypasses ip_forward: let tc hand it to the stack, which answers
        // time-exceeded.
        return to_tc();
    }
    // Leaving the node again: find the next hop before touching the frame, so a frame we
    // cannot send ourselves reaches tc unchanged.
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
        // No neighbour entry: tc's bpf_redirect_neigh resolves it. Too big: with generic XDP
        // the frame may be a GRO-merged skb whose IP length is the merged one; tc checks it
        // GSO-aware and answers fragmentation-needed when it really does not fit.
        return to_tc();
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(Outcome::drop(Reason::FibFailed));
    }
    if p.ifindex != ctx.ingress_ifindex() as u32 {
        // Another interface: XDP_REDIRECT needs the target to accept XDP frames (a veth only
        // does when its peer runs XDP or GRO), so let tc's bpf_redirect_neigh send it.
        return to_tc();
    }
    rewrite(ctx, flow, entry, true)?;
    let eth: *mut EthHdr = ptr_at(ctx.data(), ctx.data_end(), 0)?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe {
        (*eth).dst_addr = p.dmac;
        (*eth).src_addr = p.smac;
    }
    Ok((xdp_action::XDP_TX, reason))
}

/// Whether the L4 checksum field cannot be a `CHECKSUM_PARTIAL` placeholder: a partial field
/// holds the folded (uncomplemented) pseudo-header sum. Sums are taken over the packet's bytes
/// read as native-order words, which yields the field's own representation.
#[inline(always)]
fn checksum_is_full(flow: &Flow) -> bool {
    if flow.udp_no_csum {
        return true;
    }
    let l4_len = flow.ip_len.saturating_sub(Ipv4Hdr::LEN as u16);
    let pseudo = words(flow.saddr)
        + words(flow.daddr)
        + u16::from_ne_bytes([0, flow.proto]) as u32
        + u16::from_ne_bytes(l4_len.to_be_bytes()) as u32;
    u16::from_ne_bytes(flow.l4_check) != fold(pseudo)
}

/// Rewrites source and destination to `entry`'s, updating both checksums incrementally (the
/// frame's checksums are full: see [`checksum_is_full`]); a later fragment has only its
/// addresses. `forwarded`: the frame leaves again by XDP_TX, bypassing `ip_forward`, so its
/// TTL is decremented here (the caller made sure it is above 1).
#[inline(always)]
fn rewrite(ctx: &XdpContext, flow: &Flow, entry: &CtEntry, forwarded: bool) -> Result<(), Outcome> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let ip: *mut Ipv4Hdr = ptr_at(start, end, IP_OFF)?;
    let (os, od, ns, nd) = (
        halves(flow.saddr),
        halves(flow.daddr),
        halves(entry.src_addr),
        halves(entry.dst_addr),
    );
    let old_ports = [flow.sport.to_be(), flow.dport.to_be()];
    let new_ports = [entry.src_port.to_be(), entry.dst_port.to_be()];
    let old = [os[0], os[1], od[0], od[1], old_ports[0], old_ports[1]];
    let new = [ns[0], ns[1], nd[0], nd[1], new_ports[0], new_ports[1]];
    // SAFETY: every pointer was bounds-checked by `ptr_at` against this frame.
    unsafe {
        let mut ip_check = csum_update(u16::from_ne_bytes((*ip).check), &old, &new, 4);
        if forwarded {
            // The TTL and protocol bytes form one checksum word.
            let old_word = [u16::from_ne_bytes([flow.ttl, flow.proto]), 0, 0, 0, 0, 0];
            let new_word = [
                u16::from_ne_bytes([flow.ttl - 1, flow.proto]),
                0,
                0,
                0,
                0,
                0,
            ];
            ip_check = csum_update(ip_check, &old_word, &new_word, 1);
            (*ip).ttl = flow.ttl - 1;
        }
        (*ip).check = ip_check.to_ne_bytes();
        (*ip).src_addr = entry.src_addr;
        (*ip).dst_addr = entry.dst_addr;
        if flow.frag == FRAG_LATER {
            return Ok(());
        }
        let ports: *mut [u8; 4] = ptr_at(start, end, L4_OFF)?;
        let check: *mut [u8; 2] = ptr_at(start, end, flow.csum_off as usize)?;
        // `FAULT_SKIP_L4_CSUM` (tests only) leaves the L4 checksum stale, as in tc, so the
        // tests that must catch a broken checksum are shown to catch it here too.
        if !flow.udp_no_csum && !crate::fault(svc_common::FAULT_SKIP_L4_CSUM) {
            let mut l4 = csum_update(u16::from_ne_bytes(*check), &old, &new, 6);
            if flow.proto == PROTO_UDP && l4 == 0 {
                // 0 means "no checksum" for UDP; a computed zero is sent as 0xffff.
                l4 = 0xffff;
            }
            *check = l4.to_ne_bytes();
        }
        let sp = entry.src_port.to_be_bytes();
        let dp = entry.dst_port.to_be_bytes();
        *ports = [sp[0], sp[1], dp[0], dp[1]];
    }
    Ok(())
}
