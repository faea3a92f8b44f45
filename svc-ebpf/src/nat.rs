//! Address and port rewrites with their checksum updates.
//!
//! Why the tc helpers and not hand-written incremental updates: a packet from a local socket is
//! `CHECKSUM_PARTIAL`, its L4 checksum field holding only the pseudo-header sum. Only
//! `bpf_l4_csum_replace` sees `skb->ip_summed` and, with `BPF_F_PSEUDO_HDR`, updates such a
//! field correctly (pseudo-header part only) as well as a full checksum (DESIGN §2).
use aya_ebpf::{bindings::__sk_buff, helpers::bpf_skb_store_bytes, programs::TcContext};
use svc_common::{Reason, FAULT_SKIP_L4_CSUM};

use crate::{
    csum::{csum_update, fold, halves},
    fault,
    parse::{
        ptr_at, Flow, FRAG_LATER, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, L4_DPORT_OFF, L4_SPORT_OFF,
    },
    Outcome,
};

/// `BPF_F_PSEUDO_HDR`: the changed field is part of the pseudo-header (an address).
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
/// `BPF_F_MARK_MANGLED_0`: leave a zero UDP checksum (= "none") at zero, and write 0xffff
/// where an update would produce zero.
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

/// Rewrites source and destination (addresses, and ports unless a later fragment) to `entry`'s
/// with three helper calls whatever changed (a DNAT took five, a DNAT with SNAT ten):
/// - the L4 checksum through `bpf_l4_csum_replace`, which alone sees `skb->ip_summed`: once
///   for both addresses (pseudo-header) and once for both ports. Replacing two 32-bit words by
///   two others is the same one's-complement update as replacing their folded sum by the
///   other's (inet_proto_csum_replace4, net/core/utils.c, sums the 16-bit halves of `~from`
///   and `to` into the field); the ports are adjacent, one 32-bit word as they sit in the
///   packet. Under `CHECKSUM_PARTIAL` the helper updates the field for the pseudo-header call
///   only, as before.
/// - the IPv4 checksum, computed here (RFC 1624; an IPv4 header checksum is never partial),
///   written with both addresses and both ports in one `bpf_skb_store_bytes` of the 14 bytes
///   from the checksum to the destination port (10 for a later fragment, which has no ports).
#[inline(always)]
pub(crate) fn rewrite(
    ctx: &TcContext,
    flow: &Flow,
    entry: &svc_common::CtEntry,
) -> Result<(), Outcome> {
    let failed = |_| Outcome::drop(Reason::RewriteFailed);
    // The IPv4 checksum as it sits in the packet, read before the helpers below invalidate
    // packet pointers (`parse` made the headers linear). Not carried in `Flow`: two more
    // bytes there cost the verifier ~130k instructions in svc_pod_ingress (stack layout).
    let ip_check: *const [u8; 2] = ptr_at(ctx.data(), ctx.data_end(), IP_CSUM_OFF)?;
    // SAFETY: bounds checked by `ptr_at`.
    let ip_check = u16::from_ne_bytes(unsafe { *ip_check });
    let (os, od, ns, nd) = (
        halves(flow.saddr),
        halves(flow.daddr),
        halves(entry.src_addr),
        halves(entry.dst_addr),
    );
    let addrs_changed = flow.saddr != entry.src_addr || flow.daddr != entry.dst_addr;
    // A later fragment has no L4 header: its datagram's L4 checksum and ports are in the first
    // fragment, which was rewritten already.
    let l4 = flow.frag != FRAG_LATER;
    let ports_changed = l4 && (flow.sport != entry.src_port || flow.dport != entry.dst_port);
    // Every UDP rewrite passes BPF_F_MARK_MANGLED_0, which does two things (net/core/filter.c,
    // bpf_l4_csum_replace): a zero field ("no checksum") is left alone, and an update whose
    // result is zero is written as 0xffff (CSUM_MANGLED_0), since a computed 0 is sent as
    // 0xffff in UDP (RFC 768). Passing it only for datagrams without checksum let about one
    // translated datagram in 65 536 leave with checksum 0, i.e. none (found by the fuzzer).
    // TCP always has a checksum and 0 is a valid one.
    let mangled = if flow.proto == svc_common::PROTO_UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    };
    if l4 && !fault(FAULT_SKIP_L4_CSUM) {
        if addrs_changed {
            let old = fold(os[0] as u32 + os[1] as u32 + od[0] as u32 + od[1] as u32) as u64;
            let new = fold(ns[0] as u32 + ns[1] as u32 + nd[0] as u32 + nd[1] as u32) as u64;
            ctx.l4_csum_replace(
                flow.csum_off as usize,
                old,
                new,
                BPF_F_PSEUDO_HDR | mangled | 4,
            )
            .map_err(failed)?;
        }
        if ports_changed {
            let old = ports_word(flow.sport, flow.dport) as u64;
            let new = ports_word(entry.src_port, entry.dst_port) as u64;
            ctx.l4_csum_replace(flow.csum_off as usize, old, new, mangled | 4)
                .map_err(failed)?;
        }
    }
    if !addrs_changed && !ports_changed {
        return Ok(());
    }
    let check = csum_update(
        ip_check,
        &[os[0], os[1], od[0], od[1], 0, 0],
        &[ns[0], ns[1], nd[0], nd[1], 0, 0],
        4,
    );
    // The 14 bytes as 16-bit words in packet order (a byte array cost the verifier ~170k more
    // instructions in svc_pod_ingress: one store per byte).
    let hdr: [u16; 7] = [
        check,
        ns[0],
        ns[1],
        nd[0],
        nd[1],
        entry.src_port.to_be(),
        entry.dst_port.to_be(),
    ];
    let len: u32 = if l4 { 14 } else { 10 };
    // SAFETY: `hdr` outlives the call and holds at least `len` bytes; the helper bounds-checks
    // the packet side.
    let r = unsafe {
        bpf_skb_store_bytes(
            ctx.skb.skb.cast(),
            IP_CSUM_OFF as u32,
            hdr.as_ptr().cast(),
            len,
            0,
        )
    };
    if r < 0 {
        return Err(Outcome::drop(Reason::RewriteFailed));
    }
    Ok(())
}

// The one store of [`rewrite`] covers these fields in this order (an IPv4 header without
// options, which `parse` refuses, then the ports).
const _: () = assert!(
    IP_SRC_OFF == IP_CSUM_OFF + 2
        && IP_DST_OFF == IP_CSUM_OFF + 6
        && L4_SPORT_OFF == IP_CSUM_OFF + 10
        && L4_DPORT_OFF == IP_CSUM_OFF + 12
);

/// Both ports as the 32-bit word they form in the packet.
#[inline(always)]
fn ports_word(sport: u16, dport: u16) -> u32 {
    let (s, d) = (sport.to_be_bytes(), dport.to_be_bytes());
    u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
}

/// Rewrites the packet to what conntrack `entry` says: source and destination (each only if
/// it differs), or, for an ICMP error, its outer and quoted headers (`icmp`).
#[inline(always)]
pub(crate) fn apply(
    ctx: &TcContext,
    flow: &Flow,
    entry: &svc_common::CtEntry,
) -> Result<(), Outcome> {
    if flow.icmp {
        // Called from here, not from `apply_sub`, so the two frames never add up.
        return crate::icmp::translate_tc(ctx, flow, entry);
    }
    match apply_sub(ctx.skb.skb, flow, entry) {
        0 => Ok(()),
        r => Err(Outcome::unpack(r)),
    }
}

/// [`apply`] in a BPF subprogram of its own (see `Outcome::pack`); 0 on success.
#[inline(never)]
fn apply_sub(skb: *mut __sk_buff, flow: &Flow, entry: &svc_common::CtEntry) -> u64 {
    let ctx = TcContext::new(skb);
    match apply_inline(&ctx, flow, entry) {
        Ok(()) => 0,
        Err(out) => out.pack(),
    }
}

#[inline(always)]
fn apply_inline(ctx: &TcContext, flow: &Flow, entry: &svc_common::CtEntry) -> Result<(), Outcome> {
    rewrite(ctx, flow, entry)
}

/// Offset of the TTL byte; the TTL and protocol bytes form one 16-bit checksum word.
const IP_TTL_OFF: usize = crate::parse::IP_OFF + 8;

/// Decrements the TTL of a packet that bypasses the stack's forwarding (redirected, or sent
/// back out of its interface), as `ip_forward` would, updating the IPv4 checksum. The caller
/// has made sure the TTL is above 1 ([`ttl_expires`]).
#[inline(always)]
pub(crate) fn decrement_ttl(ctx: &TcContext, flow: &Flow) -> Result<(), Outcome> {
    let failed = |_| Outcome::drop(Reason::RewriteFailed);
    let old = u16::from_be_bytes([flow.ttl, flow.proto_on_wire()]);
    let new = u16::from_be_bytes([flow.ttl - 1, flow.proto_on_wire()]);
    ctx.l3_csum_replace(IP_CSUM_OFF, old.to_be() as u64, new.to_be() as u64, 2)
        .map_err(failed)?;
    ctx.store(IP_TTL_OFF, &(flow.ttl - 1), 0).map_err(failed)
}

/// Whether forwarding the packet ourselves would expire its TTL: such a packet is passed to
/// the stack untranslated instead, which answers ICMP time-exceeded about the packet its
/// sender sent (RFC 1812 §5.3.1).
#[inline(always)]
pub(crate) fn ttl_expires(flow: &Flow) -> bool {
    flow.ttl <= 1
}

/// Swaps the Ethernet addresses: a frame sent back out of the interface it came in on must be
/// addressed to its sender, or the sender drops it as meant for another host.
#[inline(always)]
pub(crate) fn swap_macs(ctx: &TcContext) -> Result<(), Outcome> {
    let failed = |_| Outcome::drop(Reason::RewriteFailed);
    let eth: [u8; 12] = ctx.load(0).map_err(failed)?;
    let mut out = [0u8; 12];
    out[..6].copy_from_slice(&eth[6..]);
    out[6..].copy_from_slice(&eth[..6]);
    ctx.store(0, &out, 0).map_err(failed)
}
