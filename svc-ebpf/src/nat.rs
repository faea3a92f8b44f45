//! Address and port rewrites with their checksum updates.
//!
//! Why the tc helpers and not hand-written incremental updates: a packet from a local socket is
//! `CHECKSUM_PARTIAL`, its L4 checksum field holding only the pseudo-header sum. Only
//! `bpf_l4_csum_replace` sees `skb->ip_summed` and, with `BPF_F_PSEUDO_HDR`, updates such a
//! field correctly (pseudo-header part only) as well as a full checksum (DESIGN §2).
use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use svc_common::{Reason, FAULT_SKIP_L4_CSUM};

use crate::{
    fault,
    parse::{Flow, FRAG_LATER, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, L4_DPORT_OFF, L4_SPORT_OFF},
    Outcome,
};

/// `BPF_F_PSEUDO_HDR`: the changed field is part of the pseudo-header (an address).
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
/// `BPF_F_MARK_MANGLED_0`: leave a zero UDP checksum (= "none") at zero, and write 0xffff
/// where an update would produce zero.
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

/// Which end of the packet to rewrite.
#[derive(Clone, Copy)]
pub(crate) enum End {
    Source,
    Destination,
}

/// Rewrites the `end` address and port of the packet to `addr`:`port` and fixes the IPv4 and
/// L4 checksums.
#[inline(always)]
pub(crate) fn rewrite(
    ctx: &TcContext,
    flow: &Flow,
    end: End,
    addr: [u8; 4],
    port: u16,
) -> Result<(), Outcome> {
    let failed = |_| Outcome::drop(Reason::RewriteFailed);
    let (addr_off, port_off, old_addr, old_port) = match end {
        End::Source => (IP_SRC_OFF, L4_SPORT_OFF, flow.saddr, flow.sport),
        End::Destination => (IP_DST_OFF, L4_DPORT_OFF, flow.daddr, flow.dport),
    };
    // The helpers take the old and new values as they sit in the packet (network order).
    let old_a = u32::from_ne_bytes(old_addr) as u64;
    let new_a = u32::from_ne_bytes(addr) as u64;
    let old_p = old_port.to_be() as u64;
    let new_p = port.to_be() as u64;
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

    // A later fragment has no L4 header: its datagram's L4 checksum and ports are in the first
    // fragment, which was rewritten already.
    let l4 = flow.frag != FRAG_LATER;
    if l4 && !fault(FAULT_SKIP_L4_CSUM) {
        if old_addr != addr {
            ctx.l4_csum_replace(
                flow.csum_off as usize,
                old_a,
                new_a,
                BPF_F_PSEUDO_HDR | mangled | 4,
            )
            .map_err(failed)?;
        }
        if old_port != port {
            ctx.l4_csum_replace(flow.csum_off as usize, old_p, new_p, mangled | 2)
                .map_err(failed)?;
        }
    }
    if old_addr != addr {
        ctx.l3_csum_replace(IP_CSUM_OFF, old_a, new_a, 4)
            .map_err(failed)?;
        ctx.store(addr_off, &addr, 0).map_err(failed)?;
    }
    if l4 && old_port != port {
        ctx.store(port_off, &port.to_be_bytes(), 0)
            .map_err(failed)?;
    }
    Ok(())
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
    rewrite(ctx, flow, End::Source, entry.src_addr, entry.src_port)?;
    rewrite(ctx, flow, End::Destination, entry.dst_addr, entry.dst_port)
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
