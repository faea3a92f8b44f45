//! Header parsing. Each step starts with a bounds check and returns either what it parsed or the
//! [`Outcome`] that ends processing; frames we do not translate are refused here, by reason.
use core::mem::{offset_of, size_of};

use aya_ebpf::programs::{TcContext, XdpContext};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};
use svc_common::{Reason, PROTO_TCP, PROTO_UDP};

use crate::Outcome;

/// Offset of the IPv4 header: frames on veths and test runs start with an Ethernet header.
pub const IP_OFF: usize = EthHdr::LEN;
/// Offset of the L4 header. Only option-less IPv4 headers are translated, so it is fixed.
pub const L4_OFF: usize = IP_OFF + Ipv4Hdr::LEN;
pub const IP_CSUM_OFF: usize = IP_OFF + offset_of!(Ipv4Hdr, check);
pub const IP_SRC_OFF: usize = IP_OFF + offset_of!(Ipv4Hdr, src_addr);
pub const IP_DST_OFF: usize = IP_OFF + offset_of!(Ipv4Hdr, dst_addr);
/// TCP and UDP share the position of the ports.
pub const L4_SPORT_OFF: usize = L4_OFF + offset_of!(UdpHdr, src);
pub const L4_DPORT_OFF: usize = L4_OFF + offset_of!(UdpHdr, dst);
pub const TCP_CSUM_OFF: usize = L4_OFF + offset_of!(TcpHdr, check);
pub const UDP_CSUM_OFF: usize = L4_OFF + offset_of!(UdpHdr, check);
/// Byte 13 of the TCP header holds FIN/SYN/RST/PSH/ACK/URG/ECE/CWR.
const TCP_FLAGS_OFF: usize = L4_OFF + 13;
/// The most we ever read: Ethernet + IPv4 + TCP.
const MAX_HDRS: usize = L4_OFF + TcpHdr::LEN;

const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
/// Fragment offset and More-Fragments bits of `Ipv4Hdr::frags` (host order).
const IP_FRAG_MASK: u16 = 0x3fff;

/// What the programs need from a TCP/UDP over IPv4 packet. Addresses network order, ports host
/// order, like the map keys.
pub struct Flow {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// TCP flag byte (0 for UDP).
    pub tcp_flags: u8,
    /// IPv4 total length, for the byte counters.
    pub ip_len: u16,
    /// Offset of the L4 checksum field.
    pub csum_off: usize,
    /// UDP datagram sent without a checksum (field is 0): it must stay 0.
    pub udp_no_csum: bool,
    /// The L4 checksum field as it sits in the packet (XDP checks whether it is partial).
    pub l4_check: [u8; 2],
}

/// Bounds-checked pointer into the packet data `[start, end)`.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, off: usize) -> Result<*mut T, Outcome> {
    if start + off + size_of::<T>() > end {
        return Err(Outcome::pass(Reason::Truncated));
    }
    Ok((start + off) as *mut T)
}

/// Parses a tc packet, first making its headers linear when the skb is long enough.
#[inline(always)]
pub fn parse_tc(ctx: &TcContext) -> Result<Flow, Outcome> {
    // Headers of locally generated skbs can sit outside the linear area; make them linear when
    // the packet is long enough, so direct access below sees them.
    let linear = ctx.data_end() - ctx.data();
    let total = ctx.len() as usize;
    if linear < MAX_HDRS && total > linear {
        let want = if total < MAX_HDRS { total } else { MAX_HDRS };
        let _ = ctx.pull_data(want as u32);
    }
    parse(ctx.data(), ctx.data_end())
}

/// Parses an XDP frame (always linear for the headers we read).
#[inline(always)]
pub fn parse_xdp(ctx: &XdpContext) -> Result<Flow, Outcome> {
    parse(ctx.data(), ctx.data_end())
}

// Inlined: as a separate BPF function its `Result<Flow, Outcome>` return type is described in
// BTF in a form Linux 6.18 rejects ("Invalid member bits_offset"), which fails the whole load.
#[inline(always)]
fn parse(start: usize, end: usize) -> Result<Flow, Outcome> {
    let eth: *const EthHdr = ptr_at(start, end, 0)?;
    // SAFETY: `ptr_at` checked the bounds; the read is unaligned-safe.
    if unsafe { core::ptr::addr_of!((*eth).ether_type).read_unaligned() } != ETH_P_IP_BE {
        return Err(Outcome::pass(Reason::NotIpv4));
    }
    let ip: *const Ipv4Hdr = ptr_at(start, end, IP_OFF)?;
    // SAFETY: bounds checked above; all fields are byte arrays.
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Err(Outcome::pass(Reason::NotIpv4));
    }
    let ihl = ip.vihl & 0x0f;
    if ihl < 5 {
        return Err(Outcome::pass(Reason::Truncated));
    }
    if ihl > 5 {
        return Err(Outcome::pass(Reason::IpOptions));
    }
    if u16::from_be_bytes(ip.frags) & IP_FRAG_MASK != 0 {
        return Err(Outcome::pass(Reason::Fragment));
    }
    let proto = ip.proto;
    let csum_off = match proto {
        PROTO_TCP => TCP_CSUM_OFF,
        PROTO_UDP => UDP_CSUM_OFF,
        _ => return Err(Outcome::pass(Reason::NotTcpUdp)),
    };
    let saddr = ip.src_addr;
    let daddr = ip.dst_addr;
    let ip_len = u16::from_be_bytes(ip.tot_len);

    let (sport, dport, tcp_flags, l4_check) = if proto == PROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(start, end, L4_OFF)?;
        // SAFETY: bounds checked; the flag byte is inside the TcpHdr checked above.
        let (tcp, flags) = unsafe { (&*tcp, *((start + TCP_FLAGS_OFF) as *const u8)) };
        (
            u16::from_be_bytes(tcp.source),
            u16::from_be_bytes(tcp.dest),
            flags,
            tcp.check,
        )
    } else {
        let udp: *const UdpHdr = ptr_at(start, end, L4_OFF)?;
        // SAFETY: bounds checked.
        let udp = unsafe { &*udp };
        (
            u16::from_be_bytes(udp.src),
            u16::from_be_bytes(udp.dst),
            0,
            udp.check,
        )
    };
    let udp_no_csum = proto == PROTO_UDP && l4_check == [0, 0];
    Ok(Flow {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        tcp_flags,
        ip_len,
        csum_off,
        udp_no_csum,
        l4_check,
    })
}
