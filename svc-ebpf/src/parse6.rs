//! IPv6 header parsing (RFC 8200) into a [`Flow6`], bounds-checked at every step like
//! `parse`. The extension headers a translated packet may carry are walked; the rest are
//! refused by reason:
//! - Hop-by-Hop Options and Destination Options: skipped (their options concern the nodes on
//!   the path and the final destination; a backend that is the new destination reads them as
//!   the frontend would have).
//! - Routing with Segments Left 0: skipped (the destination is final). With segments left the
//!   destination in the header is an intermediate hop, not the Service: refused
//!   (`Reason::ExtHeader`), as Cilium refuses it.
//! - Fragment: the first fragment (offset 0) is translated and its ports remembered under the
//!   fragment's identification (`frag`); later fragments get them from there. An atomic
//!   fragment (offset 0, no More Fragments, RFC 8021) is a whole datagram.
//! - ESP, AH (the L4 header is encrypted or authenticated over the addresses), No Next Header,
//!   anything unknown, or more than [`MAX_EXT_HEADERS`] headers: refused, `Reason::ExtHeader`.
//!
//! ICMPv6 Destination Unreachable, Packet Too Big and Time Exceeded quoting a TCP/UDP packet
//! become a flow with `icmp` set, the quoted tuple reversed (`icmp6` translates them); every
//! other ICMPv6 message, Neighbor Discovery included, passes untouched as `not_tcp_udp`.
//!
//! Unlike IPv4 there is no header checksum, and routers never fragment: a packet too big for
//! the next hop is answered with Packet Too Big whatever it carries, so [`Flow6::df`] is
//! always set.
use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use network_types::{eth::EthHdr, tcp::TcpHdr, udp::UdpHdr};
use svc_common::{Addr6, Reason, PROTO_TCP, PROTO_UDP};

use crate::{
    family::V6Extra,
    parse::{ptr_at, FlowOf, FRAG_FIRST, FRAG_LATER, FRAG_NONE, IP_OFF, PROTO_ICMPV6},
    Outcome,
};

/// An IPv6 packet's flow.
pub(crate) type Flow6 = FlowOf<Addr6>;

/// Length of the fixed IPv6 header.
pub(crate) const IP6_LEN: usize = 40;
/// Offset of the source address (the destination follows it: 32 contiguous bytes).
pub(crate) const IP6_SRC_OFF: usize = IP_OFF + 8;
/// Offset of the hop limit.
pub(crate) const IP6_HOP_OFF: usize = IP_OFF + 7;
/// The extension headers walked before the L4 header at most.
pub(crate) const MAX_EXT_HEADERS: usize = 4;
/// The L4 header must start within this many bytes of the frame: offsets into the packet stay
/// bounded for the verifier, and the checksum's offset fits `Flow::csum_off` (a byte).
const MAX_L4_OFF: usize = 200;
/// What a tc program makes linear before parsing: the headers, extension headers included.
const MAX_HDRS6: usize = MAX_L4_OFF + 60;

const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;

/// Whether the frame is IPv6 (its Ethernet type), for the IPv4 programs' hand-over.
#[inline(always)]
pub(crate) fn is_ipv6(start: usize, end: usize) -> bool {
    match ptr_at::<EthHdr>(start, end, 0) {
        // SAFETY: `ptr_at` checked the bounds; the read is unaligned-safe.
        Ok(eth) => {
            let ty = unsafe { core::ptr::addr_of!((*eth).ether_type).read_unaligned() };
            ty == ETH_P_IPV6_BE
        }
        Err(_) => false,
    }
}

/// Parses a tc packet, first making its headers linear when the skb is long enough.
#[inline(always)]
pub(crate) fn parse6_tc(ctx: &TcContext, flow: &mut Flow6) -> Result<(), Outcome> {
    let linear = ctx.data_end() - ctx.data();
    let total = ctx.len() as usize;
    if linear < MAX_HDRS6 && total > linear {
        let want = if total < MAX_HDRS6 { total } else { MAX_HDRS6 };
        let _ = ctx.pull_data(want as u32);
    }
    parse6(ctx.data(), ctx.data_end(), flow)
}

/// Parses an XDP frame: its headers are in the linear buffer (generic XDP linearizes the skb
/// first, `netif_receive_generic_xdp`; a driver's first buffer holds them), and a header cut
/// off by the frame's end is refused as `truncated` like in tc.
#[inline(always)]
pub(crate) fn parse6_xdp(ctx: &XdpContext, flow: &mut Flow6) -> Result<(), Outcome> {
    parse6(ctx.data(), ctx.data_end(), flow)
}

#[inline(always)]
fn parse6(start: usize, end: usize, flow: &mut Flow6) -> Result<(), Outcome> {
    let eth: *const EthHdr = ptr_at(start, end, 0)?;
    // SAFETY: `ptr_at` checked the bounds; the read is unaligned-safe.
    if unsafe { core::ptr::addr_of!((*eth).ether_type).read_unaligned() } != ETH_P_IPV6_BE {
        return Err(Outcome::pass(Reason::NotIpv6));
    }
    let ip: *const [u8; IP6_LEN] = ptr_at(start, end, IP_OFF)?;
    // SAFETY: bounds checked above.
    let ip = unsafe { &*ip };
    if ip[0] >> 4 != 6 {
        return Err(Outcome::pass(Reason::NotIpv6));
    }
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]);
    if payload_len == 0 {
        // A jumbogram (RFC 2675: the length is in a Hop-by-Hop option) or a malformed header.
        return Err(Outcome::pass(Reason::ExtHeader));
    }
    *flow = Flow6 {
        saddr: Addr6 { octets: [0; 16] },
        daddr: Addr6 { octets: [0; 16] },
        sport: 0,
        dport: 0,
        proto: ip[6],
        tcp_flags: 0,
        ip_len: (IP6_LEN as u16).saturating_add(payload_len),
        csum_off: 0,
        udp_no_csum: false,
        l4_check: [0; 2],
        frag: FRAG_NONE,
        ip_id: 0,
        ttl: ip[7],
        df: true,
        l4_hdr_len: 0,
        icmp: false,
        x: V6Extra {
            l4_off: 0,
            frag_id: 0,
        },
    };
    flow.saddr.octets.copy_from_slice(&ip[8..24]);
    flow.daddr.octets.copy_from_slice(&ip[24..40]);
    let mut off = IP_OFF + IP6_LEN;
    let mut next = ip[6];
    for _ in 0..MAX_EXT_HEADERS {
        if next == PROTO_TCP || next == PROTO_UDP || next == PROTO_ICMPV6 {
            break;
        }
        let h: *const [u8; 8] = ptr_at(start, end, off)?;
        // SAFETY: bounds checked above (every extension header is at least 8 bytes).
        let h = unsafe { &*h };
        match next {
            NEXTHDR_HOP | NEXTHDR_DEST => off += (h[1] as usize + 1) * 8,
            NEXTHDR_ROUTING => {
                if h[3] != 0 {
                    // Segments left: the destination is not the final one.
                    return Err(Outcome::pass(Reason::ExtHeader));
                }
                off += (h[1] as usize + 1) * 8;
            }
            NEXTHDR_FRAGMENT => {
                let offset_flags = u16::from_be_bytes([h[2], h[3]]);
                flow.x.frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                off += 8;
                if offset_flags >> 3 != 0 {
                    // A later fragment: no L4 header; the ports come from the fragment map.
                    flow.frag = FRAG_LATER;
                    flow.proto = h[0];
                    flow.x.l4_off = off as u16;
                    return Ok(());
                }
                if offset_flags & 1 != 0 {
                    flow.frag = FRAG_FIRST;
                }
            }
            _ => return Err(Outcome::pass(Reason::ExtHeader)),
        }
        next = h[0];
        if off > MAX_L4_OFF {
            return Err(Outcome::pass(Reason::ExtHeader));
        }
    }
    flow.proto = next;
    if next == PROTO_ICMPV6 {
        return parse_icmp6_error(start, end, off, flow);
    }
    if next != PROTO_TCP && next != PROTO_UDP {
        return Err(Outcome::pass(Reason::ExtHeader));
    }
    // Bounded for the verifier and for `csum_off` (checked in the loop too).
    if off > MAX_L4_OFF {
        return Err(Outcome::pass(Reason::ExtHeader));
    }
    flow.x.l4_off = off as u16;
    if next == PROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(start, end, off)?;
        // SAFETY: bounds checked; bytes 12 and 13 lie inside the TcpHdr checked above.
        let (tcp, flags, doff) = unsafe {
            (
                &*tcp,
                *((start + off + 13) as *const u8),
                *((start + off + 12) as *const u8),
            )
        };
        flow.sport = u16::from_be_bytes(tcp.source);
        flow.dport = u16::from_be_bytes(tcp.dest);
        flow.tcp_flags = flags;
        flow.l4_check = tcp.check;
        flow.csum_off = (off + 16) as u8;
        flow.l4_hdr_len = (doff >> 4) * 4;
    } else {
        let udp: *const UdpHdr = ptr_at(start, end, off)?;
        // SAFETY: bounds checked.
        let udp = unsafe { &*udp };
        flow.sport = u16::from_be_bytes(udp.src);
        flow.dport = u16::from_be_bytes(udp.dst);
        flow.l4_check = udp.check;
        flow.csum_off = (off + 6) as u8;
        flow.l4_hdr_len = size_of::<UdpHdr>() as u8;
    }
    Ok(())
}

/// Offset of the ICMPv6 header of an error [`parse_icmp6_error`] translates (no extension
/// header before it).
pub(crate) const ICMP6_OFF: usize = IP_OFF + IP6_LEN;
/// Everything an ICMPv6 error translation reads and rewrites: outer IPv6 header, ICMPv6
/// header, quoted IPv6 header and the quoted datagram's first 8 bytes.
pub(crate) const ICMP6_ERR_LEN: usize = IP6_LEN + 8 + IP6_LEN + 8;

pub(crate) const ICMP6_DEST_UNREACH: u8 = 1;
pub(crate) const ICMP6_PACKET_TOO_BIG: u8 = 2;
pub(crate) const ICMP6_TIME_EXCEEDED: u8 = 3;
/// Parameter Problem (RFC 4443 §3.4): its pointer is an offset into the quoted packet, which
/// the translation does not move.
const ICMP6_PARAM_PROB: u8 = 4;

/// An ICMPv6 Destination Unreachable, Packet Too Big, Time Exceeded or Parameter Problem (RFC
/// 4443 §3.1–3.4: every ICMPv6 error type, as netfilter's NAT translates them) quoting a TCP/UDP
/// packet: the flow is the quoted tuple reversed (see `parse::FlowOf`), as
/// for IPv4. Only errors with a fixed layout are taken: the ICMPv6 header right after the
/// IPv6 header (`off`), a quoted IPv6 header followed directly by TCP or UDP, and the quote's
/// first 8 L4 bytes present. Everything else ICMPv6 (informational messages, Neighbor
/// Discovery 133–137 above all, other errors, quotes we cannot read) is passed untouched as
/// `not_tcp_udp`, never parsed as an error.
#[inline(always)]
fn parse_icmp6_error(
    start: usize,
    end: usize,
    off: usize,
    flow: &mut Flow6,
) -> Result<(), Outcome> {
    let not_ours = Outcome::pass(Reason::NotTcpUdp);
    if off != ICMP6_OFF || flow.frag != FRAG_NONE {
        return Err(not_ours);
    }
    // One bounds check for the ICMPv6 header, the quoted IPv6 header and the 8 L4 bytes (three
    // `ptr_at` results were merged by LLVM into a select the verifier could not follow).
    let Ok(m) = ptr_at::<[u8; ICMP6_ERR_LEN - IP6_LEN]>(start, end, ICMP6_OFF) else {
        return Err(not_ours);
    };
    // SAFETY: bounds-checked above.
    let m = unsafe { &*m };
    let kind = m[0];
    if kind != ICMP6_DEST_UNREACH
        && kind != ICMP6_PACKET_TOO_BIG
        && kind != ICMP6_TIME_EXCEEDED
        && kind != ICMP6_PARAM_PROB
    {
        return Err(not_ours);
    }
    let inner = &m[8..8 + IP6_LEN];
    let ports = &m[8 + IP6_LEN..];
    if inner[0] >> 4 != 6 || (inner[6] != PROTO_TCP && inner[6] != PROTO_UDP) {
        return Err(not_ours);
    }
    flow.icmp = true;
    flow.saddr.octets.copy_from_slice(&inner[24..40]);
    flow.daddr.octets.copy_from_slice(&inner[8..24]);
    flow.sport = u16::from_be_bytes([ports[2], ports[3]]);
    flow.dport = u16::from_be_bytes([ports[0], ports[1]]);
    flow.proto = inner[6];
    flow.x.l4_off = ICMP6_OFF as u16;
    Ok(())
}
