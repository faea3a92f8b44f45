//! IPv6 address and port rewrites from tc, with their checksum updates.
//!
//! IPv6 has no header checksum; the addresses are part of the TCP/UDP checksum through the
//! pseudo-header (RFC 8200 §8.1), so a rewrite updates the L4 checksum through
//! `bpf_l4_csum_replace` with `BPF_F_PSEUDO_HDR`, the one helper that sees `skb->ip_summed`
//! and so also updates a `CHECKSUM_PARTIAL` field (the pseudo-header part only) correctly
//! (see `nat` and DESIGN §2). Both addresses change the checksum by the difference of their
//! folded sums, passed as one 32-bit replacement as `nat::rewrite` does for IPv4: the
//! one's-complement sum is associative, so 16 halves fold like 4 (inet_proto_csum_replace4,
//! net/core/utils.c, adds the halves of `~from` and `to`).
use aya_ebpf::{bindings::__sk_buff, helpers::bpf_skb_store_bytes, programs::TcContext};
use svc_common::{Addr6, CtEntry6, Reason, FAULT_SKIP_L4_CSUM, PROTO_UDP};

use crate::{
    csum::fold,
    family::Family,
    fault,
    parse::FRAG_LATER,
    parse6::{Flow6, IP6_HOP_OFF, IP6_SRC_OFF},
    Outcome,
};

/// `BPF_F_PSEUDO_HDR` (see `nat`).
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
/// `BPF_F_MARK_MANGLED_0` (see `nat`): a UDP checksum that becomes 0 is written as 0xffff.
/// Over IPv6 a UDP checksum is mandatory (RFC 8200 §8.1), so a zero field never occurs in a
/// valid datagram; the flag is passed for the computed-zero case alone.
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

/// The one's-complement sum of an address's 16-bit words (native order, as they sit in the
/// packet), unfolded: 8 words stay far below 2^32.
#[inline(always)]
pub(crate) fn sum16(a: &Addr6) -> u32 {
    let mut s = 0u32;
    for w in a.words() {
        s += (w & 0xffff) + (w >> 16);
    }
    s
}

/// Both ports as the 32-bit word they form in the packet.
#[inline(always)]
pub(crate) fn ports_word(sport: u16, dport: u16) -> u32 {
    let (s, d) = (sport.to_be_bytes(), dport.to_be_bytes());
    u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
}

/// Rewrites the packet to what conntrack `entry` says, in a BPF subprogram of its own (its
/// buffers stay off the program's stack; see `Outcome::pack`): its addresses and ports, or for
/// an ICMPv6 error its outer and quoted headers (`icmp6`).
#[inline(always)]
pub(crate) fn apply6(ctx: &TcContext, flow: &Flow6, entry: &CtEntry6) -> Result<(), Outcome> {
    if flow.icmp {
        return crate::icmp6::translate6_tc(ctx, flow, entry);
    }
    match apply6_sub(ctx.skb.skb, flow, entry) {
        0 => Ok(()),
        r => Err(Outcome::unpack(r)),
    }
}

#[inline(never)]
fn apply6_sub(skb: *mut __sk_buff, flow: &Flow6, entry: &CtEntry6) -> u64 {
    match rewrite6(&TcContext::new(skb), flow, entry) {
        Ok(()) => 0,
        Err(out) => out.pack(),
    }
}

/// Rewrites source and destination (addresses, and ports unless a later fragment) to
/// `entry`'s: the L4 checksum once for both addresses and once for both ports, then the 32
/// address bytes in one store and the 4 port bytes in another.
#[inline(always)]
fn rewrite6(ctx: &TcContext, flow: &Flow6, entry: &CtEntry6) -> Result<(), Outcome> {
    let failed = |_| Outcome::drop(Reason::RewriteFailed);
    let addrs_changed =
        !Addr6::same(flow.saddr, entry.src_addr) || !Addr6::same(flow.daddr, entry.dst_addr);
    // A later fragment has no L4 header: its datagram's checksum and ports were in the first.
    let l4 = flow.frag != FRAG_LATER;
    let ports_changed = l4 && (flow.sport != entry.src_port || flow.dport != entry.dst_port);
    let mangled = if flow.proto == PROTO_UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    };
    if l4 && !fault(FAULT_SKIP_L4_CSUM) {
        if addrs_changed {
            let old = fold(sum16(&flow.saddr) + sum16(&flow.daddr)) as u64;
            let new = fold(sum16(&entry.src_addr) + sum16(&entry.dst_addr)) as u64;
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
    if addrs_changed {
        let addrs: [Addr6; 2] = [entry.src_addr, entry.dst_addr];
        // SAFETY: `addrs` outlives the call and holds the 32 bytes; the helper bounds-checks
        // the packet side.
        let r = unsafe {
            bpf_skb_store_bytes(
                ctx.skb.skb.cast(),
                IP6_SRC_OFF as u32,
                addrs.as_ptr().cast(),
                32,
                0,
            )
        };
        if r < 0 {
            return Err(Outcome::drop(Reason::RewriteFailed));
        }
    }
    if ports_changed {
        let ports: [u16; 2] = [entry.src_port.to_be(), entry.dst_port.to_be()];
        // SAFETY: as above, 4 bytes.
        let r = unsafe {
            bpf_skb_store_bytes(
                ctx.skb.skb.cast(),
                flow.x.l4_off as u32,
                ports.as_ptr().cast(),
                4,
                0,
            )
        };
        if r < 0 {
            return Err(Outcome::drop(Reason::RewriteFailed));
        }
    }
    Ok(())
}

/// Decrements the hop limit of a packet that bypasses the stack's forwarding (no checksum
/// covers it). The caller made sure it is above 1.
#[inline(always)]
pub(crate) fn decrement_hop_limit(ctx: &TcContext, flow: &Flow6) -> Result<(), Outcome> {
    ctx.store(IP6_HOP_OFF, &(flow.ttl - 1), 0)
        .map_err(|_| Outcome::drop(Reason::RewriteFailed))
}
