//! Header parsing. Each step starts with a bounds check and returns either what it parsed or the
//! [`Outcome`] that ends processing; frames we do not translate are refused here, by reason.
use core::mem::{offset_of, size_of};

use aya_ebpf::programs::{TcContext, XdpContext};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};
use svc_common::{Reason, PROTO_TCP, PROTO_UDP};

use crate::{family::Family, Outcome};

/// Offset of the IPv4 header: frames on veths and test runs start with an Ethernet header.
pub(crate) const IP_OFF: usize = EthHdr::LEN;
/// Offset of the L4 header. Only option-less IPv4 headers are translated, so it is fixed.
pub(crate) const L4_OFF: usize = IP_OFF + Ipv4Hdr::LEN;
pub(crate) const IP_CSUM_OFF: usize = IP_OFF + offset_of!(Ipv4Hdr, check);
pub(crate) const IP_SRC_OFF: usize = IP_OFF + offset_of!(Ipv4Hdr, src_addr);
pub(crate) const IP_DST_OFF: usize = IP_OFF + offset_of!(Ipv4Hdr, dst_addr);
/// TCP and UDP share the position of the ports.
pub(crate) const L4_SPORT_OFF: usize = L4_OFF + offset_of!(UdpHdr, src);
pub(crate) const L4_DPORT_OFF: usize = L4_OFF + offset_of!(UdpHdr, dst);
pub(crate) const TCP_CSUM_OFF: usize = L4_OFF + offset_of!(TcpHdr, check);
pub(crate) const UDP_CSUM_OFF: usize = L4_OFF + offset_of!(UdpHdr, check);
/// Byte 13 of the TCP header holds FIN/SYN/RST/PSH/ACK/URG/ECE/CWR.
const TCP_FLAGS_OFF: usize = L4_OFF + 13;
/// The most we ever read: Ethernet + IPv4 + TCP, or an ICMP error with its quote.
const MAX_HDRS: usize = IP_OFF + ICMP_ERR_LEN;

const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
/// Fragment offset bits of `Ipv4Hdr::frags` (host order).
const IP_OFFSET_MASK: u16 = 0x1fff;
/// More Fragments.
const IP_MF: u16 = 0x2000;
/// Don't Fragment.
const IP_DF: u16 = 0x4000;

/// [`Flow::frag`]: not a fragment.
pub(crate) const FRAG_NONE: u8 = 0;
/// [`Flow::frag`]: the first fragment of a datagram (offset 0, more fragments): it carries the
/// L4 header, and its ports are remembered for the later fragments (`frag`).
pub(crate) const FRAG_FIRST: u8 = 1;
/// [`Flow::frag`]: a later fragment: no L4 header; the ports come from the first fragment.
pub(crate) const FRAG_LATER: u8 = 2;

/// IP protocol number of ICMP.
pub(crate) const PROTO_ICMP: u8 = 1;
/// IP protocol number (next header) of ICMPv6.
pub(crate) const PROTO_ICMPV6: u8 = 58;

/// What the programs need from a TCP/UDP over IPv4 packet. Addresses network order, ports host
/// order, like the map keys.
///
/// For an ICMP error (`icmp` set) the tuple is that of the datagram the error quotes,
/// *reversed*: the tuple a packet of the quoted flow has when it travels the way the error
/// travels. Conntrack keyed by it says how such a packet is translated, and the error is
/// translated to match (see `icmp`).
pub(crate) struct FlowOf<A: Family> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// TCP flag byte (0 for UDP, later fragments and ICMP errors).
    pub tcp_flags: u8,
    /// IPv4 total length of the packet (for counters, MTU checks and quoting).
    pub ip_len: u16,
    /// Offset of the L4 checksum field.
    pub csum_off: u8,
    /// UDP datagram sent without a checksum (field is 0): it must stay 0.
    pub udp_no_csum: bool,
    /// The L4 checksum field as it sits in the packet (XDP checks whether it is partial).
    pub l4_check: [u8; 2],
    /// `FRAG_*`.
    pub frag: u8,
    /// IP identification, host order (the fragment map's key).
    pub ip_id: u16,
    /// Time to live as received.
    pub ttl: u8,
    /// Don't Fragment is set.
    pub df: bool,
    /// Length of the L4 header (TCP data offset × 4, or 8 for UDP): GSO segments' size.
    pub l4_hdr_len: u8,
    /// An ICMP destination-unreachable or time-exceeded error (tuple reversed, see above).
    pub icmp: bool,
    /// What only this family's packets carry (`Family::Extra`; nothing for IPv4).
    pub x: A::Extra,
}

/// An IPv4 packet's flow.
pub(crate) type Flow = FlowOf<[u8; 4]>;

impl<A: Family> FlowOf<A> {
    /// A flow for [`parse_tc`] / [`parse_xdp`] to fill in. The hooks keep it in memory and
    /// pass it by reference: built field by field and returned by value, its fields were
    /// spilled to the stack and copied once more, and the programs ran out of the verifier's
    /// 512 bytes.
    pub(crate) const EMPTY: Self = Self {
        saddr: A::UNSPECIFIED,
        daddr: A::UNSPECIFIED,
        sport: 0,
        dport: 0,
        proto: 0,
        tcp_flags: 0,
        ip_len: 0,
        csum_off: 0,
        udp_no_csum: false,
        l4_check: [0; 2],
        frag: FRAG_NONE,
        ip_id: 0,
        ttl: 0,
        df: false,
        l4_hdr_len: 0,
        icmp: false,
        x: A::EXTRA,
    };

    /// The IP protocol byte as it sits in the packet's own header (ICMP for an ICMP error,
    /// whose `proto` names the quoted datagram's).
    #[inline(always)]
    pub(crate) fn proto_on_wire(&self) -> u8 {
        if self.icmp {
            A::PROTO_ICMP
        } else {
            self.proto
        }
    }
}

/// Bounds-checked pointer into the packet data `[start, end)`.
#[inline(always)]
pub(crate) fn ptr_at<T>(start: usize, end: usize, off: usize) -> Result<*mut T, Outcome> {
    if start + off + size_of::<T>() > end {
        return Err(Outcome::pass(Reason::Truncated));
    }
    Ok((start + off) as *mut T)
}

/// Parses a tc packet, first making its headers linear when the skb is long enough.
#[inline(always)]
pub(crate) fn parse_tc(ctx: &TcContext, flow: &mut Flow) -> Result<(), Outcome> {
    // Headers of locally generated skbs can sit outside the linear area; make them linear when
    // the packet is long enough, so direct access below sees them.
    let linear = ctx.data_end() - ctx.data();
    let total = ctx.len() as usize;
    if linear < MAX_HDRS && total > linear {
        let want = if total < MAX_HDRS { total } else { MAX_HDRS };
        let _ = ctx.pull_data(want as u32);
    }
    parse(ctx.data(), ctx.data_end(), flow)
}

/// Parses an XDP frame (always linear for the headers we read).
#[inline(always)]
pub(crate) fn parse_xdp(ctx: &XdpContext, flow: &mut Flow) -> Result<(), Outcome> {
    parse(ctx.data(), ctx.data_end(), flow)
}

// Inlined: as a separate BPF function its `Result<Flow, Outcome>` return type is described in
// BTF in a form Linux 6.18 rejects ("Invalid member bits_offset"), which fails the whole load.
#[inline(always)]
fn parse(start: usize, end: usize, flow: &mut Flow) -> Result<(), Outcome> {
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
    let frags = u16::from_be_bytes(ip.frags);
    let frag = if frags & IP_OFFSET_MASK != 0 {
        FRAG_LATER
    } else if frags & IP_MF != 0 {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };
    let proto = ip.proto;
    *flow = Flow {
        saddr: ip.src_addr,
        daddr: ip.dst_addr,
        sport: 0,
        dport: 0,
        proto,
        tcp_flags: 0,
        ip_len: u16::from_be_bytes(ip.tot_len),
        csum_off: 0,
        udp_no_csum: false,
        l4_check: [0; 2],
        frag,
        ip_id: u16::from_be_bytes(ip.id),
        ttl: ip.ttl,
        df: frags & IP_DF != 0,
        l4_hdr_len: 0,
        icmp: false,
        x: (),
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        if proto == PROTO_ICMP && frag == FRAG_NONE {
            return parse_icmp_error(start, end, flow);
        }
        return Err(Outcome::pass(Reason::NotTcpUdp));
    }
    if frag == FRAG_LATER {
        // No L4 header: the ports come from the fragment map (`frag::later`).
        return Ok(());
    }
    if proto == PROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(start, end, L4_OFF)?;
        // SAFETY: bounds checked; the flag and offset bytes are inside the TcpHdr checked above.
        let (tcp, flags, doff) = unsafe {
            (
                &*tcp,
                *((start + TCP_FLAGS_OFF) as *const u8),
                *((start + TCP_FLAGS_OFF - 1) as *const u8),
            )
        };
        flow.sport = u16::from_be_bytes(tcp.source);
        flow.dport = u16::from_be_bytes(tcp.dest);
        flow.tcp_flags = flags;
        flow.l4_check = tcp.check;
        flow.csum_off = TCP_CSUM_OFF as u8;
        flow.l4_hdr_len = (doff >> 4) * 4;
    } else {
        let udp: *const UdpHdr = ptr_at(start, end, L4_OFF)?;
        // SAFETY: bounds checked.
        let udp = unsafe { &*udp };
        flow.sport = u16::from_be_bytes(udp.src);
        flow.dport = u16::from_be_bytes(udp.dst);
        flow.l4_check = udp.check;
        flow.csum_off = UDP_CSUM_OFF as u8;
        flow.l4_hdr_len = UdpHdr::LEN as u8;
        flow.udp_no_csum = udp.check == [0, 0];
    }
    Ok(())
}

/// Offset of the IPv4 header an ICMP error quotes (after the outer IPv4 and the 8-byte ICMP
/// header).
pub(crate) const ICMP_INNER_IP_OFF: usize = L4_OFF + 8;
/// Offset of the quoted datagram's L4 header (RFC 792: at least its first 8 bytes are quoted).
pub(crate) const ICMP_INNER_L4_OFF: usize = ICMP_INNER_IP_OFF + Ipv4Hdr::LEN;
/// Everything an ICMP error translation reads and rewrites: outer IPv4, ICMP header, quoted
/// IPv4 header and the quoted datagram's first 8 bytes.
pub(crate) const ICMP_ERR_LEN: usize = ICMP_INNER_L4_OFF + 8 - IP_OFF;

pub(crate) const ICMP_DEST_UNREACH: u8 = 3;
pub(crate) const ICMP_TIME_EXCEEDED: u8 = 11;
/// Parameter problem (RFC 792): its pointer is an offset into the quoted IPv4 header, which
/// the translation does not move, so it is translated like the other two.
const ICMP_PARAM_PROB: u8 = 12;

/// An ICMP destination-unreachable, time-exceeded or parameter-problem quoting an option-less
/// IPv4 TCP/UDP header (a first fragment or a whole datagram): the flow is the quoted tuple
/// reversed (see [`Flow`]). The error types netfilter's NAT translates for kube-proxy
/// (`icmp_is_err`), less the obsolete source quench and redirects, which name no flow a
/// Service translated. Any other ICMP (echo, redirects, quotes we cannot read) is passed as
/// `NotTcpUdp`.
#[inline(always)]
fn parse_icmp_error(start: usize, end: usize, flow: &mut Flow) -> Result<(), Outcome> {
    let not_ours = Outcome::pass(Reason::NotTcpUdp);
    // The type first: echo and the rest are not ours whatever their length.
    let icmp: *const [u8; 8] = ptr_at(start, end, L4_OFF)?;
    // SAFETY: bounds-checked above.
    let kind = unsafe { (*icmp)[0] };
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED && kind != ICMP_PARAM_PROB {
        return Err(not_ours);
    }
    // An error whose quote is shorter than an IPv4 header and 8 L4 bytes (what `icmp`
    // rewrites) cannot be translated: passed untouched, like any other ICMP.
    let (Ok(inner), Ok(ports)) = (
        ptr_at::<Ipv4Hdr>(start, end, ICMP_INNER_IP_OFF),
        ptr_at::<[u8; 8]>(start, end, ICMP_INNER_L4_OFF),
    ) else {
        return Err(not_ours);
    };
    // SAFETY: both bounds-checked above.
    let (inner, ports) = unsafe { (&*inner, &*ports) };
    if inner.vihl != 0x45
        || u16::from_be_bytes(inner.frags) & IP_OFFSET_MASK != 0
        || (inner.proto != PROTO_TCP && inner.proto != PROTO_UDP)
    {
        return Err(not_ours);
    }
    flow.icmp = true;
    flow.saddr = inner.dst_addr;
    flow.daddr = inner.src_addr;
    flow.sport = u16::from_be_bytes([ports[2], ports[3]]);
    flow.dport = u16::from_be_bytes([ports[0], ports[1]]);
    flow.proto = inner.proto;
    Ok(())
}
