//! Address and port rewrites with their checksum updates.
//!
//! Why the tc helpers and not hand-written incremental updates: a packet from a local socket is
//! `CHECKSUM_PARTIAL`, its L4 checksum field holding only the pseudo-header sum. Only
//! `bpf_l4_csum_replace` sees `skb->ip_summed` and, with `BPF_F_PSEUDO_HDR`, updates such a
//! field correctly (pseudo-header part only) as well as a full checksum (DESIGN §2).
use aya_ebpf::programs::TcContext;
use svc_common::{Reason, FAULT_SKIP_L4_CSUM};

use crate::{
    fault,
    parse::{Flow, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF, L4_DPORT_OFF, L4_SPORT_OFF},
    Outcome,
};

/// `BPF_F_PSEUDO_HDR`: the changed field is part of the pseudo-header (an address).
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
/// `BPF_F_MARK_MANGLED_0`: leave a zero UDP checksum (= "none") at zero, and write 0xffff
/// where an update would produce zero.
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

/// Which end of the packet to rewrite.
#[derive(Clone, Copy)]
pub enum End {
    Source,
    Destination,
}

/// Rewrites the `end` address and port of the packet to `addr`:`port` and fixes the IPv4 and
/// L4 checksums.
#[inline(always)]
pub fn rewrite(
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
    // A UDP datagram without checksum keeps none; TCP always has one.
    let mangled = if flow.udp_no_csum {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    };

    if !fault(FAULT_SKIP_L4_CSUM) {
        if old_addr != addr {
            ctx.l4_csum_replace(flow.csum_off, old_a, new_a, BPF_F_PSEUDO_HDR | mangled | 4)
                .map_err(failed)?;
        }
        if old_port != port {
            ctx.l4_csum_replace(flow.csum_off, old_p, new_p, mangled | 2)
                .map_err(failed)?;
        }
    }
    if old_addr != addr {
        ctx.l3_csum_replace(IP_CSUM_OFF, old_a, new_a, 4)
            .map_err(failed)?;
        ctx.store(addr_off, &addr, 0).map_err(failed)?;
    }
    if old_port != port {
        ctx.store(port_off, &port.to_be_bytes(), 0)
            .map_err(failed)?;
    }
    Ok(())
}

/// Rewrites source and destination to what conntrack `entry` says (each only if it differs).
#[inline(always)]
pub fn apply(ctx: &TcContext, flow: &Flow, entry: &svc_common::CtEntry) -> Result<(), Outcome> {
    rewrite(ctx, flow, End::Source, entry.src_addr, entry.src_port)?;
    rewrite(ctx, flow, End::Destination, entry.dst_addr, entry.dst_port)
}

/// Swaps the Ethernet addresses: a frame sent back out of the interface it came in on must be
/// addressed to its sender, or the sender drops it as meant for another host.
#[inline(always)]
pub fn swap_macs(ctx: &TcContext) -> Result<(), Outcome> {
    let failed = |_| Outcome::drop(Reason::RewriteFailed);
    let eth: [u8; 12] = ctx.load(0).map_err(failed)?;
    let mut out = [0u8; 12];
    out[..6].copy_from_slice(&eth[6..]);
    out[6..].copy_from_slice(&eth[..6]);
    ctx.store(0, &out, 0).map_err(failed)
}
