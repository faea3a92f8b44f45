//! Rejecting a new flow to a frontend that has no usable endpoint, as kube-proxy's `REJECT`
//! rule does: the client gets a TCP RST or an ICMP port unreachable at once, instead of waiting
//! out a timeout for a packet that was silently dropped.
//!
//! The packet is turned into the answer in place and redirected back out of the interface it
//! came from (the host side of the client pod's veth, whose egress leads to the pod). Buffers
//! are built on the stack and written with `bpf_skb_store_bytes`; checksums are computed from
//! scratch with `bpf_csum_diff`, so the answer's checksums do not depend on the incoming skb's
//! checksum state.
use aya_ebpf::{
    bindings::{__sk_buff, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::{
        bpf_csum_diff, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes,
    },
    programs::TcContext,
};
use network_types::eth::EthHdr;
use svc_common::{Reason, GENERATED_PER_CPU_PER_S, PROTO_TCP};

use crate::{
    maps::{SVC_CONFIG, SVC_RATELIMIT, SVC_SCRATCH},
    parse::{Flow, FRAG_LATER, ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, IP_OFF, L4_OFF},
    Outcome,
};

const IP_LEN: usize = 20;
const TCP_LEN: usize = 20;
const ICMP_HDR_LEN: usize = 8;
/// An ICMP error quotes the offending IP header and the first 8 bytes of its payload.
const QUOTE_L4: usize = 8;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_ACK: u8 = 0x10;
pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;

/// A stack buffer `bpf_csum_diff` can read: 4-byte aligned, length a multiple of 4.
#[repr(C, align(4))]
struct Buf<const N: usize>([u8; N]);

/// One's-complement checksum of `buf` (folded, complemented), as it goes into the packet.
#[inline(always)]
fn checksum<const N: usize>(buf: &mut Buf<N>) -> Result<[u8; 2], Outcome> {
    // SAFETY: `buf` is a live, aligned stack buffer of N bytes, N a multiple of 4.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            buf.0.as_mut_ptr().cast(),
            N as u32,
            0,
        )
    };
    if sum < 0 {
        return Err(Outcome::drop(Reason::RewriteFailed));
    }
    Ok(fold_complement(sum as u64))
}

/// A `bpf_csum_diff` result folded to 16 bits and complemented, as it goes into the packet.
#[inline(always)]
pub(crate) fn fold_complement(sum: u64) -> [u8; 2] {
    let mut s = sum & 0xffff_ffff;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    // The sum was taken over native-order words; storing it native-order puts the bytes right.
    (!(s as u16)).to_ne_bytes()
}

#[inline(always)]
pub(crate) fn failed<T>(_: T) -> Outcome {
    Outcome::drop(Reason::RewriteFailed)
}

/// An IPv4 header from `src` to `dst` carrying `total` bytes of `proto`, checksum filled in.
#[inline(always)]
fn ip_header(src: [u8; 4], dst: [u8; 4], proto: u8, total: u16) -> Result<Buf<IP_LEN>, Outcome> {
    let len = total.to_be_bytes();
    let mut ip = Buf([
        0x45, 0, len[0], len[1], 0, 0, 0x40, 0, 64, proto, 0, 0, src[0], src[1], src[2], src[3],
        dst[0], dst[1], dst[2], dst[3],
    ]);
    let c = checksum(&mut ip)?;
    ip.0[10] = c[0];
    ip.0[11] = c[1];
    Ok(ip)
}

/// Swaps the Ethernet addresses so the frame goes back where it came from.
#[inline(always)]
pub(crate) fn reverse_ethernet(ctx: &TcContext) -> Result<(), Outcome> {
    let eth: [u8; EthHdr::LEN] = ctx.load(0).map_err(failed)?;
    let mut out = eth;
    out[..6].copy_from_slice(&eth[6..12]);
    out[6..12].copy_from_slice(&eth[..6]);
    ctx.store(0, &out, 0).map_err(failed)
}

#[inline(always)]
pub(crate) fn send_back(ctx: &TcContext, reason: Reason) -> Outcome {
    // SAFETY: reading the ifindex field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call; returns TC_ACT_REDIRECT on success.
    let verdict = unsafe { bpf_redirect(ifindex, 0) } as i32;
    Outcome { verdict, reason }
}

/// Whether this CPU may generate one more packet (reject or ICMP error) in the current
/// one-second window (`svc_common::GENERATED_PER_CPU_PER_S`). Keeps a flood of packets to a
/// frontend without endpoints, or of oversized packets, from turning the node into an
/// amplifier; per CPU, so no lock and no shared cache line.
#[inline(always)]
pub(crate) fn within_budget() -> bool {
    let Some(w) = SVC_RATELIMIT.get_ptr_mut(0) else {
        return false;
    };
    let now = crate::v4::lb::now_ns();
    // SAFETY: this CPU's own slot of a per-CPU array; nothing else writes it meanwhile.
    unsafe {
        if now.saturating_sub((*w).start_ns) >= 1_000_000_000 {
            (*w).start_ns = now;
            (*w).count = 0;
        }
        if (*w).count >= GENERATED_PER_CPU_PER_S {
            return false;
        }
        (*w).count += 1;
    }
    true
}

/// Answers `flow` with a TCP RST (RFC 9293 §3.10.7.1) or an ICMP port unreachable.
#[inline(always)]
pub(crate) fn reject(ctx: &TcContext, flow: &Flow) -> Result<Outcome, Outcome> {
    if !within_budget() {
        return Err(Outcome::drop(Reason::RateLimited));
    }
    let r = if flow.proto == PROTO_TCP && !flow.icmp {
        tcp_reset_sub(ctx.skb.skb, flow)
    } else {
        // From the frontend address the client used, as kube-proxy's REJECT answers.
        icmp_error_sub(
            ctx.skb.skb,
            flow,
            (ICMP_DEST_UNREACH as u32) << 24 | (ICMP_PORT_UNREACHABLE as u32) << 16,
            u32::from_ne_bytes(flow.daddr),
            Reason::NoBackend as u32,
        )
    };
    Ok(Outcome::unpack(r))
}

/// Answers a packet that does not fit the next hop's `mtu` and must not be fragmented with an
/// ICMP fragmentation-needed (RFC 1191), from this node's address, so that the sender lowers
/// its path MTU. Never about an ICMP error itself (RFC 1122 §3.2.2).
#[inline(always)]
pub(crate) fn frag_needed(ctx: &TcContext, flow: &Flow, mtu: u16) -> Outcome {
    if flow.icmp {
        return Outcome::drop(Reason::TooBig);
    }
    if !within_budget() {
        return Outcome::drop(Reason::RateLimited);
    }
    let Some(config) = SVC_CONFIG.get(0) else {
        return Outcome::drop(Reason::TooBig);
    };
    Outcome::unpack(icmp_error_sub(
        ctx.skb.skb,
        flow,
        (ICMP_DEST_UNREACH as u32) << 24 | (ICMP_FRAG_NEEDED as u32) << 16 | mtu as u32,
        u32::from_ne_bytes(config.node_addr),
        Reason::FragNeeded as u32,
    ))
}

/// Answers a packet to a NodePort whose TTL would expire on the way to its backend with an
/// ICMP time exceeded in transit (RFC 792) from the NodePort's address, quoting the packet as
/// its sender sent it. kube-proxy DNATs before routing, so `ip_forward` answers it; passed to
/// the stack untranslated, the packet would be delivered locally (the NodePort is this node's
/// own address) and refused as port unreachable. Other frontends are not local addresses: the
/// stack forwards them and answers itself. Never about an ICMP error or a fragment other than
/// the first (RFC 1122 §3.2.2; `icmp_send` refuses both): those are passed on untranslated as
/// before.
#[inline(always)]
pub(crate) fn time_exceeded(ctx: &TcContext, flow: &Flow) -> Outcome {
    Outcome::unpack(time_exceeded_sub(ctx.skb.skb, flow))
}

/// [`time_exceeded`] in a BPF subprogram of its own: its checks inlined into every forward
/// path split the verifier's states (svc_uplink_ingress verified 547 079 instructions instead
/// of 310 049).
#[inline(never)]
fn time_exceeded_sub(skb: *mut __sk_buff, flow: &Flow) -> u64 {
    if flow.icmp || flow.frag == FRAG_LATER {
        return Outcome::pass(Reason::TtlExceeded).pack();
    }
    if !within_budget() {
        return Outcome::drop(Reason::RateLimited).pack();
    }
    icmp_error_sub(
        skb,
        flow,
        (ICMP_TIME_EXCEEDED as u32) << 24,
        u32::from_ne_bytes(flow.daddr),
        Reason::TtlExceeded as u32,
    )
}

/// [`tcp_reset`] in a BPF subprogram of its own (see `Outcome::pack`).
#[inline(never)]
fn tcp_reset_sub(skb: *mut __sk_buff, flow: &Flow) -> u64 {
    let ctx = TcContext::new(skb);
    match tcp_reset(&ctx, flow) {
        Ok(out) | Err(out) => out.pack(),
    }
}

/// [`icmp_error`] in a BPF subprogram of its own; `code_mtu` = type << 24 | code << 16 | MTU,
/// `src` the source address as its bytes in memory order.
#[inline(never)]
fn icmp_error_sub(skb: *mut __sk_buff, flow: &Flow, code_mtu: u32, src: u32, reason: u32) -> u64 {
    let ctx = TcContext::new(skb);
    match icmp_error(
        &ctx,
        flow,
        (code_mtu >> 24) as u8,
        (code_mtu >> 16) as u8,
        code_mtu as u16,
        src.to_ne_bytes(),
        crate::reason_from(reason),
    ) {
        Ok(out) | Err(out) => out.pack(),
    }
}

#[inline(always)]
fn tcp_reset(ctx: &TcContext, flow: &Flow) -> Result<Outcome, Outcome> {
    if flow.tcp_flags & TCP_RST != 0 {
        // Never answer a reset with a reset.
        return Err(Outcome::drop(Reason::NoBackend));
    }
    let seq: [u8; 4] = ctx.load(L4_OFF + 4).map_err(failed)?;
    let ack: [u8; 4] = ctx.load(L4_OFF + 8).map_err(failed)?;
    let doff: u8 = ctx.load(L4_OFF + 12).map_err(failed)?;
    // If the segment acknowledged something, the reset takes that sequence number; otherwise
    // it has sequence 0 and acknowledges everything the segment occupied.
    let (rst_seq, rst_ack, flags) = if flow.tcp_flags & TCP_ACK != 0 {
        (ack, [0; 4], TCP_RST)
    } else {
        let header = ((doff >> 4) as u32) * 4;
        let payload = (flow.ip_len as u32).saturating_sub(IP_LEN as u32 + header);
        let mut occupied = payload;
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

    // SAFETY: resizing the program's own skb; pointers into it are not used afterwards.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (L4_OFF + TCP_LEN) as u32, 0) } != 0 {
        return Err(Outcome::drop(Reason::RewriteFailed));
    }
    reverse_ethernet(ctx)?;
    let ip = ip_header(flow.daddr, flow.saddr, PROTO_TCP, (IP_LEN + TCP_LEN) as u16)?;
    ctx.store(IP_OFF, &ip.0, 0).map_err(failed)?;

    let (s, d) = (flow.daddr, flow.saddr);
    let (sp, dp) = (flow.dport.to_be_bytes(), flow.sport.to_be_bytes());
    // Pseudo-header (12 bytes) followed by the TCP header (20 bytes), checksummed together.
    let mut seg = Buf([
        s[0],
        s[1],
        s[2],
        s[3],
        d[0],
        d[1],
        d[2],
        d[3],
        0,
        PROTO_TCP,
        0,
        TCP_LEN as u8,
        sp[0],
        sp[1],
        dp[0],
        dp[1],
        rst_seq[0],
        rst_seq[1],
        rst_seq[2],
        rst_seq[3],
        rst_ack[0],
        rst_ack[1],
        rst_ack[2],
        rst_ack[3],
        0x50,
        flags,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    let c = checksum(&mut seg)?;
    seg.0[12 + 16] = c[0];
    seg.0[12 + 17] = c[1];
    let mut tcp = [0u8; TCP_LEN];
    tcp.copy_from_slice(&seg.0[12..]);
    ctx.store(L4_OFF, &tcp, 0).map_err(failed)?;
    Ok(send_back(ctx, Reason::NoBackend))
}

/// ICMP destination unreachable, code port unreachable.
const ICMP_PORT_UNREACHABLE: u8 = 3;
/// ICMP destination unreachable, code fragmentation needed and DF set.
const ICMP_FRAG_NEEDED: u8 = 4;

/// Turns the packet into an ICMP error of type `ty` (destination unreachable, time exceeded)
/// with `code` (and next-hop `mtu` for fragmentation-needed) from `src` to its sender, quoting
/// its IP header and first 8 bytes as the sender sent them, and sends it back out of the
/// interface it came in on.
#[inline(always)]
fn icmp_error(
    ctx: &TcContext,
    flow: &Flow,
    ty: u8,
    code: u8,
    mtu: u16,
    src: [u8; 4],
    reason: Reason,
) -> Result<Outcome, Outcome> {
    // The message is built in per-CPU scratch memory, laid out as it goes on the wire:
    // IPv4 header, ICMP header, quoted IPv4 header, quoted L4 bytes.
    let Some(scratch) = SVC_SCRATCH.get_ptr_mut(0) else {
        return Err(Outcome::drop(Reason::RewriteFailed));
    };
    // SAFETY: this CPU's slot of a per-CPU array, used only while this program runs.
    let g = unsafe { &mut (*scratch).gen };
    *g = [0; GEN_LEN];
    // The quote: the datagram's IP header and the start of its payload, exactly as the client
    // sent them: 8 bytes (RFC 792's minimum; a later fragment's first 8 payload bytes all the
    // same), and for TCP the whole 20-byte header. TCP because the packet is cut down to the
    // quote below, and a CHECKSUM_PARTIAL skb may not be cut short of its checksum field
    // (net/core/filter.c, __bpf_skb_min_len: csum_start + csum_offset + 2).
    let tcp = flow.proto == PROTO_TCP && !flow.icmp && flow.frag != FRAG_LATER;
    let quote = if tcp { TCP_LEN } else { QUOTE_L4 };
    let skb = ctx.skb.skb;
    let base: *mut u8 = g.as_mut_ptr();
    // SAFETY (of every use): `off` is a constant inside `g`'s GEN_LEN bytes.
    let at = |off: usize| -> *mut core::ffi::c_void { unsafe { base.add(off) }.cast() };
    // SAFETY: each destination is inside `g` for the length given.
    let loaded = unsafe {
        bpf_skb_load_bytes(skb.cast(), IP_OFF as u32, at(Q_IP), IP_LEN as u32) == 0
            && bpf_skb_load_bytes(skb.cast(), L4_OFF as u32, at(Q_L4), QUOTE_L4 as u32) == 0
            && (!tcp
                || bpf_skb_load_bytes(
                    skb.cast(),
                    (L4_OFF + QUOTE_L4) as u32,
                    at(Q_L4 + QUOTE_L4),
                    (TCP_LEN - QUOTE_L4) as u32,
                ) == 0)
    };
    if !loaded {
        return Err(Outcome::drop(Reason::RewriteFailed));
    }
    // Cut the packet down to the quote first: bpf_skb_change_tail also ends GSO on a
    // super-packet (net/core/filter.c, __bpf_skb_change_tail: `if (!ret && skb_is_gso(skb))
    // skb_gso_reset(skb)`), so the room added next is a plain header push.
    // SAFETY: resizing the program's own skb; no packet pointers are held.
    if unsafe { bpf_skb_change_tail(skb, (L4_OFF + quote) as u32, 0) } != 0 {
        return Err(Outcome::drop(Reason::RewriteFailed));
    }
    let room = (IP_LEN + ICMP_HDR_LEN) as i32;
    ctx.adjust_room(room, BPF_ADJ_ROOM_MAC, 0).map_err(failed)?;
    let total = IP_LEN + ICMP_HDR_LEN + IP_LEN + quote;
    reverse_ethernet(ctx)?;
    let ip = ip_header(src, flow.saddr, 1, total as u16)?;
    g[..IP_LEN].copy_from_slice(&ip.0);
    g[IP_LEN] = ty;
    g[IP_LEN + 1] = code;
    let mtu = mtu.to_be_bytes();
    g[IP_LEN + 6] = mtu[0];
    g[IP_LEN + 7] = mtu[1];
    // Summed at the longest size: the bytes past a short quote are zero and add nothing.
    // SAFETY: the range is inside `g`; its length is a multiple of 4 as bpf_csum_diff needs.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, at(IP_LEN).cast(), 48, 0) };
    if sum < 0 {
        return Err(Outcome::drop(Reason::RewriteFailed));
    }
    let c = fold_complement(sum as u64);
    g[IP_LEN + 2] = c[0];
    g[IP_LEN + 3] = c[1];
    let len = if tcp {
        GEN_LEN
    } else {
        GEN_LEN - (TCP_LEN - QUOTE_L4)
    };
    // SAFETY: `g` holds at least `len` bytes.
    if unsafe { bpf_skb_store_bytes(skb.cast(), IP_OFF as u32, at(0), len as u32, 0) } != 0 {
        return Err(Outcome::drop(Reason::RewriteFailed));
    }
    Ok(send_back(ctx, reason))
}

/// Length of a generated ICMP error with the longest quote (`Scratch::gen`).
const GEN_LEN: usize = IP_LEN + ICMP_HDR_LEN + IP_LEN + TCP_LEN;
/// Where the quoted IPv4 header and L4 bytes sit in it.
const Q_IP: usize = IP_LEN + ICMP_HDR_LEN;
const Q_L4: usize = Q_IP + IP_LEN;
