//! The answers the IPv6 programs generate, as `reject` does for IPv4: a TCP RST or an ICMPv6
//! Destination Unreachable (port unreachable, RFC 4443 §3.1) to a new flow whose frontend has
//! no usable endpoint, an ICMPv6 Packet Too Big (RFC 4443 §3.2) to a packet that does not
//! fit the next hop, and an ICMPv6 Time Exceeded (RFC 4443 §3.3) to a packet to a NodePort
//! whose hop limit would expire on the way to its backend. All rate-limited with the IPv4 answers (`reject::within_budget`).
//!
//! The packet is turned into the answer in place and redirected back out of the interface it
//! came from. The headers are built in per-CPU scratch memory (`Scratch::gen6`: the IPv6
//! programs' stack is taken by their decisions) and their checksums computed from scratch with
//! `bpf_csum_diff`, over the IPv6 pseudo-header (RFC 8200 §8.1) too: unlike ICMPv4, the ICMPv6
//! checksum covers it (RFC 4443 §2.3).
//!
//! The quote of an ICMPv6 error: RFC 4443 asks for as much of the offending packet as fits in
//! the minimum MTU (1280). A fixed bound is quoted instead, like the IPv4 answers' 28 or 40
//! bytes: the first [`QUOTE6`] = 128 bytes of the packet from its IPv6 header on (the whole
//! packet when it is shorter): the IPv6 header, the extension headers and the L4 header a
//! sender needs to find its socket, a TCP header with options included. Bounded so that the
//! checksum is one `bpf_csum_diff` over a fixed length (the bytes past a shorter quote are zero
//! and add nothing), and so that a `CHECKSUM_PARTIAL` skb is never cut short of its checksum
//! field unless its L4 header starts past byte 110 of the packet (then the cut fails and the
//! packet is dropped as `rewrite_failed`, never answered wrong).
use aya_ebpf::{
    bindings::{__sk_buff, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::{bpf_csum_diff, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes},
    programs::TcContext,
};
use svc_common::{Addr as _, Addr6, Reason, PROTO_TCP};

use crate::{
    family::Family,
    maps::{SVC_CONFIG, SVC_SCRATCH},
    parse::{IP_OFF, PROTO_ICMPV6},
    parse6::{Flow6, ICMP6_DEST_UNREACH, ICMP6_PACKET_TOO_BIG, ICMP6_TIME_EXCEEDED, IP6_LEN},
    reject::{
        failed, fold_complement, reverse_ethernet, send_back, within_budget, TCP_ACK, TCP_FIN,
        TCP_RST, TCP_SYN,
    },
    Outcome,
};

const TCP_LEN: usize = 20;
const ICMP6_HDR_LEN: usize = 8;
/// The most of the offending packet an ICMPv6 error quotes (see the module docs).
pub(crate) const QUOTE6: usize = 128;
/// Length of `Scratch::gen6`: IPv6 header, ICMPv6 header, the longest quote.
const GEN6_LEN: usize = IP6_LEN + ICMP6_HDR_LEN + QUOTE6;
const _: () = assert!(GEN6_LEN == 176 && GEN6_LEN % 4 == 0);
/// Where the quote sits in `Scratch::gen6`.
const Q6: usize = IP6_LEN + ICMP6_HDR_LEN;

/// Destination Unreachable's code "port unreachable".
const ICMP6_PORT_UNREACH: u8 = 4;

/// Answers `flow` (a new flow to a frontend without endpoints) with a TCP RST, or an ICMPv6
/// port unreachable from the frontend address the client sent to.
#[inline(always)]
pub(crate) fn reject6(ctx: &TcContext, flow: &Flow6) -> Result<Outcome, Outcome> {
    Ok(Outcome::unpack(reject6_sub(ctx.skb.skb, flow)))
}

/// [`reject6`] in a BPF subprogram of its own: the budget check and the choice of answer
/// stay out of the program's own frame, which holds the decisions' state.
#[inline(never)]
fn reject6_sub(skb: *mut __sk_buff, flow: &Flow6) -> u64 {
    if !within_budget() {
        return Outcome::drop(Reason::RateLimited).pack();
    }
    if flow.proto == PROTO_TCP && !flow.icmp {
        tcp_reset6_sub(skb, flow)
    } else {
        icmp6_error_sub(
            skb,
            flow,
            (ICMP6_DEST_UNREACH as u32) << 8 | ICMP6_PORT_UNREACH as u32,
            0,
            Reason::NoBackend as u32,
        )
    }
}

/// Answers a packet that does not fit the next hop's `mtu` with an ICMPv6 Packet Too Big from
/// this node's IPv6 address, quoting the packet as its sender sent it (the check comes before
/// the rewrite). Never about an ICMPv6 error itself (RFC 4443 §2.4 (e)); without an IPv6
/// address of the node (`Config::node_addr6` unspecified) the packet is dropped as `too_big`.
#[inline(always)]
pub(crate) fn packet_too_big6(ctx: &TcContext, flow: &Flow6, mtu: u32) -> Outcome {
    Outcome::unpack(packet_too_big6_sub(ctx.skb.skb, flow, mtu))
}

/// [`packet_too_big6`] in a BPF subprogram of its own (see [`reject6_sub`]).
#[inline(never)]
fn packet_too_big6_sub(skb: *mut __sk_buff, flow: &Flow6, mtu: u32) -> u64 {
    if flow.icmp {
        return Outcome::drop(Reason::TooBig).pack();
    }
    if !within_budget() {
        return Outcome::drop(Reason::RateLimited).pack();
    }
    icmp6_error_sub(
        skb,
        flow,
        (ICMP6_PACKET_TOO_BIG as u32) << 8,
        mtu,
        Reason::FragNeeded as u32,
    )
}

/// `reject::time_exceeded` for IPv6: an ICMPv6 Time Exceeded, hop limit exceeded in transit
/// (RFC 4443 §3.3), from the NodePort's address, for a packet to a NodePort of this node whose
/// hop limit would expire on the way to its backend (passed to the stack untranslated, it would
/// be delivered locally and refused). Never about an ICMPv6 error (RFC 4443 §2.4 (e)).
#[inline(always)]
pub(crate) fn time_exceeded6(ctx: &TcContext, flow: &Flow6) -> Outcome {
    Outcome::unpack(time_exceeded6_sub(ctx.skb.skb, flow))
}

/// [`time_exceeded6`] in a BPF subprogram of its own (see [`reject6_sub`]).
#[inline(never)]
fn time_exceeded6_sub(skb: *mut __sk_buff, flow: &Flow6) -> u64 {
    if flow.icmp {
        return Outcome::pass(Reason::TtlExceeded).pack();
    }
    if !within_budget() {
        return Outcome::drop(Reason::RateLimited).pack();
    }
    icmp6_error_sub(
        skb,
        flow,
        (ICMP6_TIME_EXCEEDED as u32) << 8,
        0,
        Reason::TtlExceeded as u32,
    )
}

/// [`tcp_reset6`] in a BPF subprogram of its own (see `Outcome::pack`).
#[inline(never)]
fn tcp_reset6_sub(skb: *mut __sk_buff, flow: &Flow6) -> u64 {
    let ctx = TcContext::new(skb);
    match tcp_reset6(&ctx, flow) {
        Ok(out) | Err(out) => out.pack(),
    }
}

/// [`icmp6_error`] in a BPF subprogram of its own; `kind` = type << 8 | code.
#[inline(never)]
fn icmp6_error_sub(skb: *mut __sk_buff, flow: &Flow6, kind: u32, mtu: u32, reason: u32) -> u64 {
    let ctx = TcContext::new(skb);
    match icmp6_error(&ctx, flow, kind, mtu, crate::reason_from(reason)) {
        Ok(out) | Err(out) => out.pack(),
    }
}

/// This CPU's `Scratch::gen6`, zeroed.
#[inline(always)]
fn gen6() -> Result<&'static mut [u8; GEN6_LEN], Outcome> {
    let Some(scratch) = SVC_SCRATCH.get_ptr_mut(0) else {
        return Err(Outcome::drop(Reason::RewriteFailed));
    };
    // SAFETY: this CPU's slot of a per-CPU array, used only while this program runs.
    let g = unsafe { &mut (*scratch).gen6 };
    *g = [0; GEN6_LEN];
    Ok(g)
}

/// Writes a fixed IPv6 header (no flow label, hop limit 64) into `g[..40]`.
#[inline(always)]
fn ip6_header(g: &mut [u8; GEN6_LEN], src: Addr6, dst: Addr6, next: u8, payload: u16) {
    let len = payload.to_be_bytes();
    g[0] = 0x60;
    g[4] = len[0];
    g[5] = len[1];
    g[6] = next;
    g[7] = 64;
    g[8..24].copy_from_slice(&src.octets);
    g[24..40].copy_from_slice(&dst.octets);
}

/// The checksum of the upper-layer message `g[40..40 + N]` (zero beyond its `len` bytes) of
/// protocol `next`, with the pseudo-header of the IPv6 header in `g[..40]` (RFC 8200 §8.1).
#[inline(always)]
fn l4_checksum6<const N: usize>(
    g: &mut [u8; GEN6_LEN],
    len: u32,
    next: u8,
) -> Result<[u8; 2], Outcome> {
    // The pseudo-header's upper-layer length and next header, as they sit in memory.
    let mut tail = [0u8; 8];
    tail[..4].copy_from_slice(&len.to_be_bytes());
    tail[7] = next;
    let base = g.as_mut_ptr();
    // SAFETY: every range is inside `g` or `tail`, lengths multiples of 4.
    let sum = unsafe {
        let s = bpf_csum_diff(core::ptr::null_mut(), 0, base.add(8).cast(), 32, 0);
        let s = bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            tail.as_mut_ptr().cast(),
            8,
            s as u32,
        );
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            base.add(IP6_LEN).cast(),
            N as u32,
            s as u32,
        )
    };
    if sum < 0 {
        return Err(Outcome::drop(Reason::RewriteFailed));
    }
    Ok(fold_complement(sum as u64))
}

/// RFC 9293 §3.10.7.1 as `reject::tcp_reset` applies it: never a reset to a reset; to a
/// segment with ACK, a reset with its acknowledgment number as sequence; otherwise RST|ACK
/// acknowledging everything the segment occupied.
#[inline(always)]
fn tcp_reset6(ctx: &TcContext, flow: &Flow6) -> Result<Outcome, Outcome> {
    if flow.tcp_flags & TCP_RST != 0 {
        return Err(Outcome::drop(Reason::NoBackend));
    }
    let l4 = flow.x.l4_off as usize;
    let seq: [u8; 4] = ctx.load(l4 + 4).map_err(failed)?;
    let ack: [u8; 4] = ctx.load(l4 + 8).map_err(failed)?;
    let (rst_seq, rst_ack, flags) = if flow.tcp_flags & TCP_ACK != 0 {
        (ack, [0; 4], TCP_RST)
    } else {
        // The payload: what the IPv6 payload holds past the extension and TCP headers.
        let headers = (l4 - IP_OFF) as u32 + flow.l4_hdr_len as u32;
        let mut occupied = (flow.ip_len as u32).saturating_sub(headers);
        if flow.tcp_flags & TCP_SYN != 0 {
            occupied += 1;
        }
        if flow.tcp_flags & TCP_FIN != 0 {
            occupied += 1;
        }
        (
            [0; 4],
            u32::from_be_bytes(seq).wrapping_add(occupied).to_be_bytes(),
            TCP_RST | TCP_ACK,
        )
    };
    let g = gen6()?;
    // SAFETY: resizing the program's own skb; no packet pointers are held.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (IP_OFF + IP6_LEN + TCP_LEN) as u32, 0) } != 0 {
        return Err(Outcome::drop(Reason::RewriteFailed));
    }
    reverse_ethernet(ctx)?;
    ip6_header(g, flow.daddr, flow.saddr, PROTO_TCP, TCP_LEN as u16);
    let t = IP6_LEN;
    g[t..t + 2].copy_from_slice(&flow.dport.to_be_bytes());
    g[t + 2..t + 4].copy_from_slice(&flow.sport.to_be_bytes());
    g[t + 4..t + 8].copy_from_slice(&rst_seq);
    g[t + 8..t + 12].copy_from_slice(&rst_ack);
    g[t + 12] = 0x50;
    g[t + 13] = flags;
    let c = l4_checksum6::<TCP_LEN>(g, TCP_LEN as u32, PROTO_TCP)?;
    g[t + 16] = c[0];
    g[t + 17] = c[1];
    let p = g.as_ptr() as *const core::ffi::c_void;
    // SAFETY: `g` holds the 60 bytes written.
    let rc = unsafe {
        bpf_skb_store_bytes(
            ctx.skb.skb.cast(),
            IP_OFF as u32,
            p,
            (IP6_LEN + TCP_LEN) as u32,
            0,
        )
    };
    if rc != 0 {
        return Err(Outcome::drop(Reason::RewriteFailed));
    }
    Ok(send_back(ctx, Reason::NoBackend))
}

/// Turns the packet into an ICMPv6 error of `kind` (type << 8 | code; `mtu` in bytes 4–7
/// for Packet Too Big) to its sender, quoting its first [`QUOTE6`] bytes as the sender sent
/// them, and sends it back out of the interface it came in on. From the frontend the client
/// sent to (port unreachable), or from this node's IPv6 address (Packet Too Big).
#[inline(always)]
fn icmp6_error(
    ctx: &TcContext,
    flow: &Flow6,
    kind: u32,
    mtu: u32,
    reason: Reason,
) -> Result<Outcome, Outcome> {
    let ty = (kind >> 8) as u8;
    let src = if ty == ICMP6_PACKET_TOO_BIG {
        let Some(config) = SVC_CONFIG.get(0) else {
            return Err(Outcome::drop(Reason::TooBig));
        };
        if Addr6::same(config.node_addr6, Addr6::UNSPECIFIED) {
            return Err(Outcome::drop(Reason::TooBig));
        }
        config.node_addr6
    } else {
        flow.daddr
    };
    let skb = ctx.skb.skb;
    // SAFETY: reading a field of the program's own context.
    let avail = unsafe { (*skb).len }.saturating_sub(IP_OFF as u32);
    let mut q = QUOTE6 as u32;
    if avail < q {
        q = avail;
    }
    if q < IP6_LEN as u32 || q > QUOTE6 as u32 {
        return Err(Outcome::drop(Reason::RewriteFailed));
    }
    let g = gen6()?;
    let at = g.as_mut_ptr();
    // SAFETY: `q` ≤ QUOTE6 bytes from Q6 stay inside `g`.
    if unsafe { bpf_skb_load_bytes(skb.cast(), IP_OFF as u32, at.add(Q6).cast(), q) } != 0 {
        return Err(Outcome::drop(Reason::RewriteFailed));
    }
    // Cut the packet down to the quote (which also ends GSO on a super-packet, see
    // `reject::icmp_error`), then push room for the new IPv6 and ICMPv6 headers in front of
    // it: the quote stays in place and only the 48 new bytes are written.
    // SAFETY: resizing the program's own skb; no packet pointers are held.
    if unsafe { bpf_skb_change_tail(skb, IP_OFF as u32 + q, 0) } != 0 {
        return Err(Outcome::drop(Reason::RewriteFailed));
    }
    ctx.adjust_room(Q6 as i32, BPF_ADJ_ROOM_MAC, 0)
        .map_err(failed)?;
    reverse_ethernet(ctx)?;
    let len = ICMP6_HDR_LEN as u32 + q;
    ip6_header(g, src, flow.saddr, PROTO_ICMPV6, len as u16);
    g[IP6_LEN] = ty;
    g[IP6_LEN + 1] = kind as u8;
    g[IP6_LEN + 4..IP6_LEN + 8].copy_from_slice(&mtu.to_be_bytes());
    let c = l4_checksum6::<{ ICMP6_HDR_LEN + QUOTE6 }>(g, len, PROTO_ICMPV6)?;
    g[IP6_LEN + 2] = c[0];
    g[IP6_LEN + 3] = c[1];
    // SAFETY: `g` holds at least the Q6 bytes written.
    if unsafe { bpf_skb_store_bytes(skb.cast(), IP_OFF as u32, at.cast(), Q6 as u32, 0) } != 0 {
        return Err(Outcome::drop(Reason::RewriteFailed));
    }
    Ok(send_back(ctx, reason))
}
