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
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use network_types::eth::EthHdr;
use svc_common::{Reason, PROTO_TCP};

use crate::{
    parse::{Flow, IP_OFF, L4_OFF},
    Outcome,
};

const IP_LEN: usize = 20;
const TCP_LEN: usize = 20;
const ICMP_HDR_LEN: usize = 8;
/// An ICMP error quotes the offending IP header and the first 8 bytes of its payload.
const QUOTE_L4: usize = 8;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;

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
    let mut s = sum as u64 & 0xffff_ffff;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    // The sum was taken over native-order words; storing it native-order puts the bytes right.
    Ok((!(s as u16)).to_ne_bytes())
}

#[inline(always)]
fn failed<T>(_: T) -> Outcome {
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
fn reverse_ethernet(ctx: &TcContext) -> Result<(), Outcome> {
    let eth: [u8; EthHdr::LEN] = ctx.load(0).map_err(failed)?;
    let mut out = eth;
    out[..6].copy_from_slice(&eth[6..12]);
    out[6..12].copy_from_slice(&eth[..6]);
    ctx.store(0, &out, 0).map_err(failed)
}

#[inline(always)]
fn send_back(ctx: &TcContext) -> Outcome {
    // SAFETY: reading the ifindex field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call; returns TC_ACT_REDIRECT on success.
    let verdict = unsafe { bpf_redirect(ifindex, 0) } as i32;
    Outcome {
        verdict,
        reason: Reason::NoBackend,
    }
}

/// Answers `flow` with a TCP RST (RFC 9293 §3.10.7.1) or an ICMP port unreachable.
#[inline(always)]
pub fn reject(ctx: &TcContext, flow: &Flow) -> Result<Outcome, Outcome> {
    if flow.proto == PROTO_TCP {
        tcp_reset(ctx, flow)
    } else {
        icmp_port_unreachable(ctx, flow)
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
    Ok(send_back(ctx))
}

#[inline(always)]
fn icmp_port_unreachable(ctx: &TcContext, flow: &Flow) -> Result<Outcome, Outcome> {
    // The quote: the datagram's IP header and first 8 bytes, exactly as the client sent them.
    let quoted_ip: [u8; IP_LEN] = ctx.load(IP_OFF).map_err(failed)?;
    let quoted_l4: [u8; QUOTE_L4] = ctx.load(L4_OFF).map_err(failed)?;
    let room = (IP_LEN + ICMP_HDR_LEN) as i32;
    ctx.adjust_room(room, BPF_ADJ_ROOM_MAC, 0).map_err(failed)?;
    let total = IP_LEN + ICMP_HDR_LEN + IP_LEN + QUOTE_L4;
    // SAFETY: resizing the program's own skb; no packet pointers are held.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (IP_OFF + total) as u32, 0) } != 0 {
        return Err(Outcome::drop(Reason::RewriteFailed));
    }
    reverse_ethernet(ctx)?;
    // From the frontend address the client used, as kube-proxy's REJECT answers.
    let ip = ip_header(flow.daddr, flow.saddr, 1, total as u16)?;
    ctx.store(IP_OFF, &ip.0, 0).map_err(failed)?;
    let mut icmp = Buf([0u8; ICMP_HDR_LEN + IP_LEN + QUOTE_L4]);
    icmp.0[0] = 3; // destination unreachable
    icmp.0[1] = 3; // port unreachable
    icmp.0[ICMP_HDR_LEN..ICMP_HDR_LEN + IP_LEN].copy_from_slice(&quoted_ip);
    icmp.0[ICMP_HDR_LEN + IP_LEN..].copy_from_slice(&quoted_l4);
    let c = checksum(&mut icmp)?;
    icmp.0[2] = c[0];
    icmp.0[3] = c[1];
    ctx.store(IP_OFF + IP_LEN, &icmp.0, 0).map_err(failed)?;
    Ok(send_back(ctx))
}
