//! `BPF_PROG_TEST_RUN` fixtures for the tc programs: the shared vocabulary, packet builders, a
//! loaded datapath whose maps the fixtures program directly, and a runner that checks verdict,
//! output bytes and counters, printing a field-by-field diff on mismatch.
//!
//! # Layout
//! - Vocabulary: [`CLIENT_POD`], [`SVC_VIP`], [`BACKEND_A`], [`BACKEND_B`], [`OTHER_POD`],
//!   [`PAYLOAD`], MACs. Every fixture speaks in these names (Cilium's `v4_svc_one`, …), so a
//!   failure message reads as a sentence about the cluster, not about bytes.
//! - Builders: [`Pkt`] describes one frame; [`Pkt::build`] writes it with etherparse, which
//!   computes every checksum. Expected outputs are *built*, not derived from the input by
//!   patching bytes: the rewritten fields go into a fresh [`Pkt`] and etherparse computes the
//!   checksums from scratch. That makes etherparse the independent checksum implementation the
//!   datapath's incremental updates (`bpf_l3/l4_csum_replace`) are checked against.
//! - [`Datapath`]: the object loaded from `target/svc-ebpf.o` (never pinned: its maps die with
//!   it), both programs loaded, typed handles on every map, and helpers that program a service
//!   in the agent's order (backends, slots, frontend last).
//! - [`Fixture`] + [`Datapath::check`]: one named case, its expected verdict, output and
//!   counter; a mismatch panics with a diff of parsed fields ([`describe`]).
//!
//! # How `BPF_PROG_TEST_RUN` treats a tc program (net/bpf/test_run.c, `bpf_prog_test_run_skb`)
//! The kernel copies `data_in` into a fresh linear skb (refusing fewer than `ETH_HLEN` = 14
//! bytes with `EINVAL`, in `bpf_test_init`), runs `eth_type_trans`, pushes the Ethernet header
//! back for tc programs, then calls the program `repeat` times **on that same skb**, and copies
//! the resulting skb to `data_out` (`ENOSPC` if the buffer is short). So with `repeat > 1` every
//! iteration after the first sees the previous iteration's rewrite; fixtures therefore use
//! `repeat = 1`, and the benchmark (`src/bin/bench.rs`) builds setups where the rewritten
//! packet takes the same path again.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
};

use anyhow::{bail, Context, Result};
use aya::{
    programs::{SchedClassifier, TestRun, TestRunOptions},
    Ebpf, EbpfLoader,
};
use etherparse::{
    ArpEthIpv4Packet, ArpOperation, IpFragOffset, IpHeaders, IpNumber, Ipv4Header, Ipv4Options,
    LaxPacketHeaders, LinkHeader, NetHeaders, PacketBuilder, TransportHeader,
};
pub use svc_agent::dataplane::MapOp;
use svc_agent::dataplane::{
    config::ConfigMap, pinned::PinnedMaps, read::Counters, Dataplane, SourceRange,
};
use svc_common::{
    stat_index, Backend, CtEntry, CtKey, Frontend, FrontendKey, Hook, Reason, Slot, SlotKey,
    ALL_HOOKS, ALL_REASONS, MAP_CONNTRACK, MAP_STATS, PROTO_TCP, PROTO_UDP, REASON_COUNT,
    SCOPE_ANY, STATS_LEN,
};

// ---------------------------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------------------------

/// The client pod and the source port of its flows.
pub const CLIENT_POD: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 2), 40000);
/// The Service frontend (a ClusterIP and its port).
pub const SVC_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
/// A backend on the client's node (`targetPort` 8080).
pub const BACKEND_A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 3), 8080);
/// A backend on another node.
pub const BACKEND_B: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 2), 8080);
/// A pod that is no Service: traffic to it must pass untouched.
pub const OTHER_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 9);
/// Application bytes every fixture carries; no rewrite may change them (Cilium's convention).
pub const PAYLOAD: &[u8] = b"Should not change!!";
/// The client pod's `eth0` MAC.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0xf4, 0x01, 0x02];
/// The host side of the pod's veth (the pod's gateway).
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0xf4, 0x01, 0x01];

/// Frontend id the fixtures give [`SVC_VIP`].
pub const SVC_ID: u32 = 1;
/// Backend id of [`BACKEND_A`].
pub const BACKEND_A_ID: u32 = 1;
/// Backend id of [`BACKEND_B`].
pub const BACKEND_B_ID: u32 = 2;

/// What `svc_pod_*` return to let a packet continue: `TC_ACT_UNSPEC` (-1) as the kernel reports
/// it in `retval`.
pub const TC_ACT_UNSPEC: u32 = -1i32 as u32;
/// `TC_ACT_SHOT`.
pub const TC_ACT_SHOT: u32 = 2;
/// Ethernet + IPv4 (no options) + TCP (no options): the shortest frame the datapath translates.
pub const TCP_HEADERS_LEN: usize = 14 + 20 + 20;
/// Ethernet + IPv4 + UDP.
pub const UDP_HEADERS_LEN: usize = 14 + 20 + 8;
/// Shortest `data_in` the kernel accepts for an skb test run (`ETH_HLEN`).
pub const MIN_TEST_RUN_LEN: usize = 14;

// ---------------------------------------------------------------------------------------------
// Packet builders
// ---------------------------------------------------------------------------------------------

/// Layer 4 of a [`Pkt`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP with these flags (`TCP_*` bits below) and sequence/ack numbers.
    Tcp { flags: u8, seq: u32, ack: u32 },
    /// UDP; `zero_csum` sends it without a checksum (field 0, RFC 768 "none").
    Udp { zero_csum: bool },
    /// ICMP echo request (neither TCP nor UDP).
    IcmpEcho,
}

/// TCP flag bits as on the wire.
pub const TCP_FIN: u8 = 0x01;
/// See [`TCP_FIN`].
pub const TCP_SYN: u8 = 0x02;
/// See [`TCP_FIN`].
pub const TCP_RST: u8 = 0x04;
/// See [`TCP_FIN`].
pub const TCP_PSH: u8 = 0x08;
/// See [`TCP_FIN`].
pub const TCP_ACK: u8 = 0x10;

/// One IPv4 frame, described by the fields fixtures care about. Everything else has a fixed
/// default (TTL 64, id 0x1234, DF set unless fragmented) so that an input and its expected
/// output differ only where the datapath is supposed to write.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub l4: L4,
    /// IPv4 options (makes IHL > 5); empty for none.
    pub ip_options: Vec<u8>,
    /// More-Fragments bit.
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    pub payload: Vec<u8>,
    /// Time to live (64 unless a fixture is about the TTL).
    pub ttl: u8,
    /// IP identification (0x1234 unless a fixture is about fragments).
    pub ip_id: u16,
    /// Don't Fragment; `None`: set unless the packet is a fragment.
    pub df: Option<bool>,
}

impl Pkt {
    /// TCP from `src` to `dst` with `flags`, carrying [`PAYLOAD`].
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Self {
        let ack = if flags & TCP_ACK != 0 { 1001 } else { 0 };
        Self::new(
            src,
            dst,
            L4::Tcp {
                flags,
                seq: 1000,
                ack,
            },
        )
    }

    /// UDP with a real checksum from `src` to `dst`, carrying [`PAYLOAD`].
    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Self::new(src, dst, L4::Udp { zero_csum: false })
    }

    /// Same packet with the addresses and ports of `src`/`dst` replaced, as a NAT would.
    pub fn with_src(mut self, src: SocketAddrV4) -> Self {
        self.src = src;
        self
    }

    /// See [`Pkt::with_src`].
    pub fn with_dst(mut self, dst: SocketAddrV4) -> Self {
        self.dst = dst;
        self
    }

    /// Same packet with time to live `ttl`.
    pub fn with_ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// Same packet with Don't Fragment set or clear.
    pub fn with_df(mut self, df: bool) -> Self {
        self.df = Some(df);
        self
    }

    /// Same packet carrying `payload` instead of [`PAYLOAD`].
    pub fn with_payload(mut self, payload: Vec<u8>) -> Self {
        self.payload = payload;
        self
    }

    /// Same packet with IP identification `id`.
    pub fn with_ip_id(mut self, id: u16) -> Self {
        self.ip_id = id;
        self
    }

    /// An ICMP echo request from `src` to `dst` (ports unused).
    pub fn icmp_echo(src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Self::new(src, dst, L4::IcmpEcho)
    }

    fn new(src: SocketAddrV4, dst: SocketAddrV4, l4: L4) -> Self {
        Self {
            src,
            dst,
            l4,
            ip_options: Vec::new(),
            more_fragments: false,
            frag_offset: 0,
            payload: PAYLOAD.to_vec(),
            ttl: 64,
            ip_id: 0x1234,
            df: None,
        }
    }

    /// The frame's bytes, every checksum computed by etherparse (except a UDP checksum
    /// deliberately left at zero).
    pub fn build(&self) -> Vec<u8> {
        let mut ip = Ipv4Header::new(
            0,
            self.ttl,
            IpNumber(0),
            self.src.ip().octets(),
            self.dst.ip().octets(),
        )
        .expect("payload length 0 fits");
        ip.identification = self.ip_id;
        ip.dont_fragment = self
            .df
            .unwrap_or(!self.more_fragments && self.frag_offset == 0);
        ip.more_fragments = self.more_fragments;
        ip.fragment_offset =
            IpFragOffset::try_new(self.frag_offset).expect("13-bit fragment offset");
        ip.options = Ipv4Options::try_from(&self.ip_options[..])
            .expect("options: a multiple of 4 bytes, at most 40");
        let step = PacketBuilder::ethernet2(CLIENT_MAC, GATEWAY_MAC)
            .ip(IpHeaders::Ipv4(ip, Default::default()));
        let mut out = Vec::new();
        match self.l4 {
            L4::Tcp { flags, seq, ack } => {
                let mut b = step.tcp(self.src.port(), self.dst.port(), seq, 64240);
                if flags & TCP_FIN != 0 {
                    b = b.fin();
                }
                if flags & TCP_SYN != 0 {
                    b = b.syn();
                }
                if flags & TCP_RST != 0 {
                    b = b.rst();
                }
                if flags & TCP_PSH != 0 {
                    b = b.psh();
                }
                if flags & TCP_ACK != 0 {
                    b = b.ack(ack);
                }
                b.write(&mut out, &self.payload)
                    .expect("writing a TCP frame");
            }
            L4::Udp { zero_csum } => {
                step.udp(self.src.port(), self.dst.port())
                    .write(&mut out, &self.payload)
                    .expect("writing a UDP frame");
                if zero_csum {
                    let off = 14 + 20 + self.ip_options.len() + 6;
                    out[off..off + 2].copy_from_slice(&[0, 0]);
                }
            }
            L4::IcmpEcho => {
                step.icmpv4_echo_request(7, 1)
                    .write(&mut out, &self.payload)
                    .expect("writing ICMP");
            }
        }
        out
    }
}

/// An ARP request for [`SVC_VIP`]'s address from the client (an Ethernet frame that is not IP).
pub fn arp_request() -> Vec<u8> {
    let arp = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: CLIENT_MAC,
        sender_ipv4: CLIENT_POD.ip().octets(),
        target_mac: [0; 6],
        target_ipv4: SVC_VIP.ip().octets(),
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, [0xff; 6])
        .arp(arp.into())
        .write(&mut out)
        .expect("writing an ARP frame");
    out
}

/// A TCP SYN over IPv6 (the datapath translates IPv4 only).
pub fn ipv6_syn() -> Vec<u8> {
    let src = [0xfd, 0, 0x10, 0x24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let dst = [0xfd, 0, 0x10, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, GATEWAY_MAC)
        .ipv6(src, dst, 64)
        .tcp(CLIENT_POD.port(), SVC_VIP.port(), 1000, 64240)
        .syn()
        .write(&mut out, PAYLOAD)
        .expect("writing an IPv6 frame");
    out
}

// ---------------------------------------------------------------------------------------------
// Field-by-field description and diff
// ---------------------------------------------------------------------------------------------

/// The frame as named fields, parsed by etherparse (leniently, so truncated frames describe
/// what is there). Checksums are listed with their validity as etherparse computes it.
pub fn describe(frame: &[u8]) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| f.push((k.to_string(), v));
    put("frame.len", frame.len().to_string());
    let h = match LaxPacketHeaders::from_ethernet(frame) {
        Ok(h) => h,
        Err(e) => {
            put("parse", format!("error: {e}"));
            return f;
        }
    };
    if let Some(LinkHeader::Ethernet2(eth)) = &h.link {
        put("eth.src", mac(&eth.source));
        put("eth.dst", mac(&eth.destination));
        put("eth.type", format!("{:#06x}", eth.ether_type.0));
    }
    let mut ip4 = None;
    match &h.net {
        Some(NetHeaders::Ipv4(ip, _)) => {
            put("ip.ihl", ip.ihl().to_string());
            put(
                "ip.tos",
                format!("dscp {} ecn {}", ip.dscp.value(), ip.ecn.value()),
            );
            put("ip.total_len", ip.total_len.to_string());
            put("ip.id", format!("{:#06x}", ip.identification));
            put("ip.df", ip.dont_fragment.to_string());
            put("ip.mf", ip.more_fragments.to_string());
            put("ip.frag_offset", ip.fragment_offset.value().to_string());
            put("ip.ttl", ip.time_to_live.to_string());
            put("ip.proto", ip.protocol.0.to_string());
            put("ip.src", Ipv4Addr::from(ip.source).to_string());
            put("ip.dst", Ipv4Addr::from(ip.destination).to_string());
            put("ip.options", format!("{:02x?}", ip.options.as_slice()));
            let valid = ip.header_checksum == ip.calc_header_checksum();
            put(
                "ip.checksum",
                format!("{:#06x} ({})", ip.header_checksum, validity(valid)),
            );
            ip4 = Some(ip.clone());
        }
        Some(NetHeaders::Ipv6(ip, _)) => {
            put("ip6.src", format!("{:02x?}", ip.source));
            put("ip6.dst", format!("{:02x?}", ip.destination));
        }
        Some(NetHeaders::Arp(arp)) => put("arp", format!("{arp:?}")),
        None => {}
    }
    let payload = h.payload.slice();
    match &h.transport {
        Some(TransportHeader::Tcp(t)) => {
            put("tcp.sport", t.source_port.to_string());
            put("tcp.dport", t.destination_port.to_string());
            put("tcp.seq", t.sequence_number.to_string());
            put("tcp.ack", t.acknowledgment_number.to_string());
            let flags = [
                (t.fin, "FIN"),
                (t.syn, "SYN"),
                (t.rst, "RST"),
                (t.psh, "PSH"),
                (t.ack, "ACK"),
                (t.urg, "URG"),
            ];
            let names: Vec<&str> = flags
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, n)| *n)
                .collect();
            put("tcp.flags", names.join("|"));
            put("tcp.window", t.window_size.to_string());
            let valid = ip4
                .as_ref()
                .and_then(|ip| t.calc_checksum_ipv4(ip, payload).ok());
            let v = match valid {
                Some(c) => validity(c == t.checksum),
                None => "unverifiable",
            };
            put("tcp.checksum", format!("{:#06x} ({v})", t.checksum));
        }
        Some(TransportHeader::Udp(u)) => {
            put("udp.sport", u.source_port.to_string());
            put("udp.dport", u.destination_port.to_string());
            put("udp.len", u.length.to_string());
            let v = if u.checksum == 0 {
                "none"
            } else {
                match ip4
                    .as_ref()
                    .and_then(|ip| u.calc_checksum_ipv4(ip, payload).ok())
                {
                    Some(c) => validity(c == u.checksum),
                    None => "unverifiable",
                }
            };
            put("udp.checksum", format!("{:#06x} ({v})", u.checksum));
        }
        Some(TransportHeader::Icmpv4(i)) => {
            for (k, v) in describe_icmp(i, payload) {
                put(&k, v);
            }
        }
        Some(other) => put("l4", format!("{other:?}")),
        None => {}
    }
    put("payload", format!("{:?}", String::from_utf8_lossy(payload)));
    if let Some((err, layer)) = &h.stop_err {
        put("parse.stopped", format!("{layer:?}: {err}"));
    }
    f
}

/// The fields of an ICMPv4 message; for an error (destination unreachable, time exceeded) also
/// the quoted datagram's header fields and every checksum in the quote, each with its validity.
fn describe_icmp(i: &etherparse::Icmpv4Header, payload: &[u8]) -> Vec<(String, String)> {
    use etherparse::Icmpv4Type;
    let mut f = vec![
        ("icmp.type".to_string(), format!("{:?}", i.icmp_type)),
        (
            "icmp.checksum".to_string(),
            format!(
                "{:#06x} ({})",
                i.checksum,
                validity(i.icmp_type.calc_checksum(payload) == i.checksum)
            ),
        ),
    ];
    if !matches!(
        i.icmp_type,
        Icmpv4Type::DestinationUnreachable(_) | Icmpv4Type::TimeExceeded(_)
    ) {
        return f;
    }
    let mut put = |k: &str, v: String| f.push((k.to_string(), v));
    let (ip, rest) = match Ipv4Header::from_slice(payload) {
        Ok(x) => x,
        Err(e) => {
            put("quote", format!("unparsable: {e}"));
            return f;
        }
    };
    put("quote.ip.src", Ipv4Addr::from(ip.source).to_string());
    put("quote.ip.dst", Ipv4Addr::from(ip.destination).to_string());
    put("quote.ip.ttl", ip.time_to_live.to_string());
    put("quote.ip.total_len", ip.total_len.to_string());
    put("quote.ip.proto", ip.protocol.0.to_string());
    put(
        "quote.ip.checksum",
        format!(
            "{:#06x} ({})",
            ip.header_checksum,
            validity(ip.header_checksum == ip.calc_header_checksum())
        ),
    );
    if rest.len() >= 4 {
        put(
            "quote.sport",
            u16::from_be_bytes([rest[0], rest[1]]).to_string(),
        );
        put(
            "quote.dport",
            u16::from_be_bytes([rest[2], rest[3]]).to_string(),
        );
    }
    // The quoted L4 checksum covers the whole datagram: verifiable only from a whole quote.
    let whole = rest.len() + ip.header_len() == usize::from(ip.total_len);
    if ip.protocol.0 == PROTO_UDP && rest.len() >= 8 {
        let c = u16::from_be_bytes([rest[6], rest[7]]);
        let v = if c == 0 {
            "none"
        } else if whole {
            validity(ip_l4_checksum_ok(&ip, rest))
        } else {
            "partial quote"
        };
        put("quote.udp.checksum", format!("{c:#06x} ({v})"));
    }
    if ip.protocol.0 == PROTO_TCP && rest.len() >= 18 {
        let c = u16::from_be_bytes([rest[16], rest[17]]);
        let v = if whole {
            validity(ip_l4_checksum_ok(&ip, rest))
        } else {
            "partial quote"
        };
        put("quote.tcp.checksum", format!("{c:#06x} ({v})"));
    }
    f
}

/// RFC 1071 Internet checksum of `data` (an odd length padded with a zero byte): the value a
/// zeroed checksum field gets; over data whose checksum field is right it is 0. Written here
/// from the RFC, independently of etherparse and of the datapath.
pub fn rfc1071(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for c in data.chunks(2) {
        sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether the TCP/UDP checksum of the whole L4 segment `l4` (header and payload) under IPv4
/// header `ip` verifies (RFC 1071 over the pseudo-header and the segment).
fn ip_l4_checksum_ok(ip: &Ipv4Header, l4: &[u8]) -> bool {
    let mut buf = Vec::with_capacity(12 + l4.len());
    buf.extend_from_slice(&ip.source);
    buf.extend_from_slice(&ip.destination);
    buf.extend_from_slice(&[0, ip.protocol.0]);
    buf.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    buf.extend_from_slice(l4);
    rfc1071(&buf) == 0
}

/// Verifies every checksum of an Ethernet + IPv4 + ICMP error frame with [`rfc1071`]: the
/// outer IPv4 header, the ICMP message (header and the whole quote), the quoted IPv4 header
/// and, when the quote holds the whole datagram, the quoted UDP/TCP checksum (a UDP checksum
/// of 0, "none", is accepted). Returns the names of the checksums it verified, or what failed.
pub fn verify_icmp_error_checksums(frame: &[u8]) -> Result<Vec<&'static str>, String> {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    if frame.len() < 14 + 20 + 8 + 20 {
        return Err(format!(
            "{} bytes: too short for an ICMP error",
            frame.len()
        ));
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    // The total length must cover the ICMP header and the quoted IPv4 header read below.
    if ihl != 20 || ip[9] != 1 || total > ip.len() || total < 20 + 8 + 20 {
        return Err(format!(
            "not an option-less IPv4 ICMP frame of its length (ihl {ihl}, proto {}, total {total}, {} bytes)",
            ip[9],
            ip.len()
        ));
    }
    let mut check = |name: &'static str, good: bool| {
        if good {
            ok.push(name)
        } else {
            bad.push(name)
        }
    };
    check("outer ip", rfc1071(&ip[..20]) == 0);
    let icmp = &ip[20..total];
    check("icmp", rfc1071(icmp) == 0);
    let quote = &icmp[8..];
    let qihl = usize::from(quote[0] & 0x0f) * 4;
    if quote[0] >> 4 != 4 || qihl < 20 || quote.len() < qihl {
        return Err("the quote is no IPv4 header".into());
    }
    check("quoted ip", rfc1071(&quote[..qihl]) == 0);
    let qtotal = usize::from(u16::from_be_bytes([quote[2], quote[3]]));
    let proto = quote[9];
    let l4 = &quote[qihl..];
    if qtotal == quote.len() && (proto == PROTO_UDP || proto == PROTO_TCP) {
        let (h, _) = Ipv4Header::from_slice(quote).map_err(|e| e.to_string())?;
        let none = proto == PROTO_UDP && l4.len() >= 8 && l4[6..8] == [0, 0];
        if !none {
            check(
                if proto == PROTO_UDP {
                    "quoted udp"
                } else {
                    "quoted tcp"
                },
                ip_l4_checksum_ok(&h, l4),
            );
        }
    }
    if bad.is_empty() {
        Ok(ok)
    } else {
        Err(format!(
            "invalid checksums: {bad:?} (valid: {ok:?}) in {}",
            hex(frame)
        ))
    }
}

fn validity(valid: bool) -> &'static str {
    if valid {
        "valid"
    } else {
        "INVALID"
    }
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Lines naming every field whose value differs between `expected` and `actual`; falls back to
/// the differing byte offsets if the parsed fields agree but the bytes do not.
pub fn diff_frames(expected: &[u8], actual: &[u8]) -> Vec<String> {
    let e = describe(expected);
    let a = describe(actual);
    let keys: BTreeSet<&String> = e.iter().chain(a.iter()).map(|(k, _)| k).collect();
    let find =
        |v: &[(String, String)], k: &str| v.iter().find(|(kk, _)| kk == k).map(|(_, x)| x.clone());
    let mut out = Vec::new();
    for k in keys {
        let (x, y) = (find(&e, k), find(&a, k));
        if x != y {
            out.push(format!(
                "  {k}: expected {}, got {}",
                x.unwrap_or_else(|| "<absent>".into()),
                y.unwrap_or_else(|| "<absent>".into())
            ));
        }
    }
    if out.is_empty() && expected != actual {
        let offs: Vec<usize> = (0..expected.len().max(actual.len()))
            .filter(|&i| expected.get(i) != actual.get(i))
            .collect();
        out.push(format!(
            "  bytes differ at offsets {offs:?} (no parsed field differs)"
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The loaded datapath
// ---------------------------------------------------------------------------------------------

/// Which program a fixture runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// `svc_pod_ingress`: packets from a pod (DNAT).
    Ingress,
    /// `svc_pod_egress`: packets to a pod (reverse NAT).
    Egress,
    /// `svc_uplink_ingress`: frames from the wire on a node uplink (the complete north-south
    /// path); loaded by [`Datapath::load_programs`].
    UplinkIngress,
    /// `svc_uplink_egress`: what the node's own stack sends out of an uplink.
    UplinkEgress,
}

impl Program {
    /// ELF name of the program.
    pub fn name(self) -> &'static str {
        match self {
            Program::Ingress => "svc_pod_ingress",
            Program::Egress => "svc_pod_egress",
            Program::UplinkIngress => "svc_uplink_ingress",
            Program::UplinkEgress => "svc_uplink_egress",
        }
    }
    /// The hook its counters are kept under.
    pub fn hook(self) -> Hook {
        match self {
            Program::Ingress => Hook::PodIngress,
            Program::Egress => Hook::PodEgress,
            Program::UplinkIngress => Hook::UplinkIngress,
            Program::UplinkEgress => Hook::UplinkEgress,
        }
    }
}

/// ELF name of the benchmark's empty program (svc-ebpf/src/floor.rs).
pub const FLOOR_PROGRAM: &str = "svc_floor";

/// Workspace root: the `tests` crate sits directly under it.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The kernel object `cargo xtask build-ebpf` writes, or the one `SVC_EBPF_OBJECT` names (to
/// run the fixtures against another build of the datapath, e.g. a deliberately broken one that
/// they must catch).
pub fn ebpf_object() -> PathBuf {
    match std::env::var_os("SVC_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("target/svc-ebpf.o"),
    }
}

/// True when the process may use `BPF_PROG_TEST_RUN` (we require root; CAP_BPF alone is not
/// enough for `CAP_NET_ADMIN`-gated tc program loads in our setup).
pub use crate::root::is_root;

/// Reads the object, failing with the command that produces it when it is missing: a fixture
/// run without the object must fail, not pass vacuously.
pub fn read_object() -> Result<Vec<u8>> {
    let path = ebpf_object();
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo xtask build-ebpf` first",
            path.display()
        );
    }
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// For root-only tests (marked `#[cfg_attr(svc_unprivileged, ignore = "needs root
/// (BPF_PROG_TEST_RUN)")]`): panics unless running as root, so they fail rather than pass
/// unrun.
#[track_caller]
pub fn require_root() {
    crate::root::require_root("BPF_PROG_TEST_RUN");
}

/// Output of one `BPF_PROG_TEST_RUN`.
#[derive(Debug)]
pub struct RunResult {
    /// The program's return value as the kernel reports it.
    pub retval: u32,
    /// The skb's data after the run(s).
    pub output: Vec<u8>,
    /// Mean time per repeat as measured by the kernel around the program calls.
    pub duration_ns: u64,
}

/// The object loaded, its tc programs verified, its maps behind svc-agent's dataplane (the
/// agent's own map I/O: service state is written as the agent's `MapOp`s). Nothing is pinned:
/// every map and program is freed when this is dropped, so each test has a private datapath.
pub struct Datapath {
    ebpf: Ebpf,
    /// The service and flow maps.
    pub maps: PinnedMaps,
    /// `SVC_STATS`.
    counters: Counters,
    /// `SVC_CONFIG`, taken from the object on first use.
    config: Option<ConfigMap>,
}

impl Datapath {
    /// Loads `target/svc-ebpf.o` with its maps at their ABI capacities.
    pub fn load() -> Result<Self> {
        Self::load_with(&mut EbpfLoader::new())
    }

    /// Loads with a caller-configured loader (the benchmark raises `SVC_FRONTENDS`' capacity).
    pub fn load_with(loader: &mut EbpfLoader<'_>) -> Result<Self> {
        let object = read_object()?;
        let mut ebpf = loader.load(&object).context("loading target/svc-ebpf.o")?;
        let mut names = vec![Program::Ingress.name(), Program::Egress.name()];
        if ebpf.program(FLOOR_PROGRAM).is_some() {
            names.push(FLOOR_PROGRAM);
        }
        for name in names {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} not in the object"))?
                .try_into()
                .with_context(|| format!("program {name} is not a tc classifier"))?;
            prog.load()
                .with_context(|| format!("loading (verifying) program {name}"))?;
        }
        let maps = PinnedMaps::from_loaded(&mut ebpf)?;
        let counters = Counters::from_loaded(&mut ebpf)?;
        Ok(Self {
            ebpf,
            maps,
            counters,
            config: None,
        })
    }

    /// A loaded tc program by ELF name.
    pub fn classifier(&self, name: &str) -> &SchedClassifier {
        self.ebpf
            .program(name)
            .unwrap_or_else(|| panic!("program {name} not in the object"))
            .try_into()
            .unwrap_or_else(|_| panic!("program {name} is not a tc classifier"))
    }

    /// Loads (verifies) further tc programs of the object, e.g. the uplink ones.
    pub fn load_programs(&mut self, progs: &[Program]) -> Result<()> {
        for p in progs {
            let name = p.name();
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} not in the object"))?
                .try_into()
                .with_context(|| format!("program {name} is not a tc classifier"))?;
            if prog.fd().is_err() {
                prog.load()
                    .with_context(|| format!("loading (verifying) program {name}"))?;
            }
        }
        Ok(())
    }

    /// Runs `prog` on `input` `repeat` times (see the module doc: the same skb each time).
    pub fn run(&self, prog: &str, input: &[u8], repeat: u32) -> Result<RunResult> {
        self.run_skb(prog, input, repeat, None)
    }

    /// [`Datapath::run`] with the skb's device set to `ifindex` (an interface of the calling
    /// thread's namespace: `ctx_in.ifindex`, which `bpf_prog_test_run_skb` makes `skb->dev`,
    /// so `skb->ifindex` and the namespace `bpf_fib_lookup` consults are that device's).
    /// Refuses to run with a device from the namespace the process started in: the program's
    /// FIB lookups would read the machine's tables. Use an [`XdpNode`].
    pub fn run_on(&self, prog: &str, input: &[u8], ifindex: u32) -> Result<RunResult> {
        self.run_on_gso(prog, input, ifindex, 0)
    }

    /// [`Datapath::run_on`] with `skb_shinfo(skb)->gso_size` = `gso_size` (0: not GSO), as a
    /// TSO or GRO super-packet carries it.
    pub fn run_on_gso(
        &self,
        prog: &str,
        input: &[u8],
        ifindex: u32,
        gso_size: u32,
    ) -> Result<RunResult> {
        if in_launch_netns()? {
            bail!("refusing to run {prog} on a device of the namespace the process started in: use an XdpNode");
        }
        self.run_skb(prog, input, 1, Some((ifindex, gso_size)))
    }

    fn run_skb(
        &self,
        prog: &str,
        input: &[u8],
        repeat: u32,
        device: Option<(u32, u32)>,
    ) -> Result<RunResult> {
        // The datapath never grows a packet by more than an ICMP error's headers; headroom so
        // ENOSPC cannot hide a bug.
        let mut out = vec![0u8; input.len() + 256];
        let ctx = device.map(|(ifindex, gso_size)| sk_buff_ctx(ifindex, gso_size));
        let res = self
            .classifier(prog)
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ctx_in: ctx.as_ref().map(|c| &c[..]),
                repeat,
                ..Default::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {prog} on {} bytes", input.len()))?;
        out.truncate(res.data_size_out as usize);
        Ok(RunResult {
            retval: res.return_value,
            output: out,
            duration_ns: res.duration.as_nanos() as u64,
        })
    }

    /// The trace maps, taken out of the object (`None`: an object built before tracing).
    pub fn trace_maps(&mut self) -> Result<Option<svc_agent::dataplane::trace::TraceMaps>> {
        svc_agent::dataplane::trace::TraceMaps::from_loaded(&mut self.ebpf)
    }

    /// Every counter of `SVC_STATS`, summed over CPUs, indexed by `stat_index`.
    pub fn counters(&self) -> Vec<u64> {
        let all = self
            .counters
            .all()
            .unwrap_or_else(|e| panic!("reading {MAP_STATS}: {e}"));
        assert_eq!(all.len(), STATS_LEN as usize, "{MAP_STATS} length");
        all.iter().map(|per_cpu| per_cpu.iter().sum()).collect()
    }

    /// One counter, summed over CPUs.
    pub fn counter(&self, hook: Hook, reason: Reason) -> u64 {
        self.counters()[stat_index(hook, reason) as usize]
    }

    /// Applies one of the agent's map operations.
    pub fn apply(&mut self, op: MapOp) -> Result<()> {
        self.maps
            .apply(&op)
            .with_context(|| format!("applying {op:?}"))
    }

    /// Writes `backend` under `id`.
    pub fn put_backend(&mut self, id: u32, addr: SocketAddrV4, proto: u8) -> Result<()> {
        self.put_backend_flags(id, addr, proto, 0)
    }

    /// Points slot `slot` of `frontend_id` at `backend_id`.
    pub fn put_slot(&mut self, frontend_id: u32, slot: u32, backend_id: u32) -> Result<()> {
        self.apply(MapOp::PutSlot {
            key: SlotKey { frontend_id, slot },
            slot: Slot { backend_id },
        })
    }

    /// Writes the frontend entry for `addr`/`proto` with `backend_count` valid slots.
    pub fn put_frontend(
        &mut self,
        addr: SocketAddrV4,
        proto: u8,
        id: u32,
        backend_count: u32,
    ) -> Result<()> {
        self.put_frontend_entry(
            frontend_key(addr, proto),
            Frontend {
                id,
                backend_count,
                flags: 0,
                affinity_timeout_s: 0,
            },
        )
    }

    /// A whole service in the agent's order (DESIGN §2): backends, slots `1..=n`, then the
    /// frontend with its count last. `backends` are (id, address).
    pub fn add_service(
        &mut self,
        vip: SocketAddrV4,
        proto: u8,
        id: u32,
        backends: &[(u32, SocketAddrV4)],
    ) -> Result<()> {
        for (bid, addr) in backends {
            self.put_backend(*bid, *addr, proto)?;
        }
        for (i, (bid, _)) in backends.iter().enumerate() {
            self.put_slot(id, i as u32 + 1, *bid)?;
        }
        self.put_frontend(vip, proto, id, backends.len() as u32)
    }

    /// Allows clients in `addr/len` to open flows to frontend `frontend_id`, as the agent
    /// writes a `loadBalancerSourceRanges` entry.
    pub fn put_source_range(&mut self, frontend_id: u32, addr: Ipv4Addr, len: u8) -> Result<()> {
        self.apply(MapOp::PutSourceRange {
            range: source_range(frontend_id, addr, len),
        })
    }

    /// Removes what [`Datapath::put_source_range`] wrote.
    pub fn delete_source_range(&mut self, frontend_id: u32, addr: Ipv4Addr, len: u8) -> Result<()> {
        self.apply(MapOp::DeleteSourceRange {
            range: source_range(frontend_id, addr, len),
        })
    }

    /// The frontend entry under `key`, if any.
    pub fn frontend(&self, key: &FrontendKey) -> Option<Frontend> {
        self.maps
            .frontend(key)
            .unwrap_or_else(|e| panic!("reading frontend {key:?}: {e}"))
    }

    /// The conntrack entry under `key`, if any.
    pub fn ct_get(&self, key: &CtKey) -> Option<CtEntry> {
        self.maps
            .ct_get(key)
            .unwrap_or_else(|e| panic!("reading conntrack {key:?}: {e}"))
    }

    /// Every conntrack key.
    pub fn ct_keys(&self) -> Vec<CtKey> {
        self.maps
            .ct_keys()
            .unwrap_or_else(|e| panic!("walking conntrack: {e}"))
    }

    /// Deletes conntrack entries (absent ones are skipped); returns how many were deleted.
    pub fn ct_delete(&mut self, keys: &[CtKey]) -> Result<usize> {
        Ok(self.maps.ct_delete(keys)?)
    }

    /// How many conntrack entries there are.
    pub fn ct_count(&self) -> usize {
        self.ct_keys().len()
    }

    /// Runs a fixture once and checks verdict, output bytes and that exactly its counter moved
    /// by one. Panics with everything that differs.
    pub fn check(&self, fx: &Fixture) -> RunResult {
        self.try_check(fx)
            .unwrap_or_else(|report| panic!("{report}"))
    }

    /// [`Datapath::check`] for a run on device `ifindex` of an [`XdpNode`] (see
    /// [`Datapath::run_on`]).
    pub fn check_on(&self, ifindex: u32, fx: &Fixture) -> RunResult {
        self.try_check_with(fx, Some(ifindex), |_| fx.output.clone())
            .unwrap_or_else(|report| panic!("{report}"))
    }

    /// [`Datapath::check_on`] for a GSO skb of segment size `gso_size`; `expected` builds the
    /// output after the run (see [`Datapath::check_after`]).
    pub fn check_on_gso(
        &self,
        ifindex: u32,
        gso_size: u32,
        fx: &Fixture,
        expected: impl FnOnce(&Self) -> Vec<u8>,
    ) -> RunResult {
        self.try_check_inner(fx, Some((ifindex, gso_size)), expected)
            .unwrap_or_else(|report| panic!("{report}"))
    }

    /// [`Datapath::check`] for outputs that depend on a choice the program makes (a SNAT
    /// port): `expected` builds the output after the run, from the maps the run wrote.
    /// `fx.output` is ignored. `ifindex` as in [`Datapath::run_on`].
    pub fn check_after(
        &self,
        ifindex: Option<u32>,
        fx: &Fixture,
        expected: impl FnOnce(&Self) -> Vec<u8>,
    ) -> RunResult {
        self.try_check_with(fx, ifindex, expected)
            .unwrap_or_else(|report| panic!("{report}"))
    }

    /// [`Datapath::check`] returning the mismatch report instead of panicking (for tests that
    /// prove the fixtures *detect* a fault).
    pub fn try_check(&self, fx: &Fixture) -> Result<RunResult, String> {
        self.try_check_with(fx, None, |_| fx.output.clone())
    }

    /// The checks of [`Datapath::check`], on device `ifindex` when given, against the output
    /// `expected` builds after the run; returns the mismatch report.
    pub fn try_check_with(
        &self,
        fx: &Fixture,
        ifindex: Option<u32>,
        expected: impl FnOnce(&Self) -> Vec<u8>,
    ) -> Result<RunResult, String> {
        self.try_check_inner(fx, ifindex.map(|i| (i, 0)), expected)
    }

    fn try_check_inner(
        &self,
        fx: &Fixture,
        device: Option<(u32, u32)>,
        expected: impl FnOnce(&Self) -> Vec<u8>,
    ) -> Result<RunResult, String> {
        let before = self.counters();
        let res = match device {
            Some((i, gso)) => self.run_on_gso(fx.program.name(), &fx.input, i, gso),
            None => self.run(fx.program.name(), &fx.input, 1),
        }
        .map_err(|e| format!("fixture {:?}: {e:#}", fx.name))?;
        let after = self.counters();
        let output = expected(self);
        let fx = &Fixture {
            output,
            ..fx.clone()
        };
        let mut problems = Vec::new();
        if res.retval != fx.verdict {
            problems.push(format!(
                "verdict: expected {} ({}), got {} ({})",
                fx.verdict as i32,
                verdict_name(fx.verdict),
                res.retval as i32,
                verdict_name(res.retval)
            ));
        }
        if res.output != fx.output {
            problems.push("output bytes differ (field: expected, got):".to_string());
            problems.extend(diff_frames(&fx.output, &res.output));
        }
        let want = stat_index(fx.program.hook(), fx.reason) as usize;
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            let delta = a - b;
            let expected = u64::from(i == want);
            if delta != expected {
                problems.push(format!(
                    "counter {}: expected +{expected}, got +{delta}",
                    stat_name(i)
                ));
            }
        }
        if problems.is_empty() {
            return Ok(res);
        }
        Err(format!(
            "fixture {:?} ({} on {} bytes):\n{}\ninput:    {}\nexpected: {}\nactual:   {}",
            fx.name,
            fx.program.name(),
            fx.input.len(),
            problems.join("\n"),
            hex(&fx.input),
            hex(&fx.output),
            hex(&res.output)
        ))
    }
}

/// The `SVC_SOURCE_RANGES` entry of prefix `addr/len` of frontend `frontend_id`.
fn source_range(frontend_id: u32, addr: Ipv4Addr, len: u8) -> SourceRange {
    SourceRange {
        frontend_id,
        addr: addr.octets(),
        len,
    }
}

/// The frontend key of `addr`/`proto`.
pub fn frontend_key(addr: SocketAddrV4, proto: u8) -> FrontendKey {
    FrontendKey {
        addr: addr.ip().octets(),
        port: addr.port(),
        proto,
        scope: SCOPE_ANY,
    }
}

/// The conntrack key of a packet `src` → `dst`.
pub fn ct_key(src: SocketAddrV4, dst: SocketAddrV4, proto: u8) -> CtKey {
    CtKey {
        src_addr: src.ip().octets(),
        dst_addr: dst.ip().octets(),
        src_port: src.port(),
        dst_port: dst.port(),
        proto,
        _pad: [0; 3],
    }
}

/// The key of the forward entry of a flow from `client` to `frontend`.
pub fn ct_forward(client: SocketAddrV4, frontend: SocketAddrV4, proto: u8) -> CtKey {
    ct_key(client, frontend, proto)
}

/// The key of the reply entry of a flow answered by `backend` to `client`.
pub fn ct_reply(backend: SocketAddrV4, client: SocketAddrV4, proto: u8) -> CtKey {
    ct_key(backend, client, proto)
}

/// `"pod_ingress/dnat_new"` for a `SVC_STATS` index.
pub fn stat_name(i: usize) -> String {
    let hook = ALL_HOOKS
        .get(i / REASON_COUNT as usize)
        .map(|h| h.name())
        .unwrap_or("?");
    let reason = ALL_REASONS
        .get(i % REASON_COUNT as usize)
        .map(|(_, n)| *n)
        .unwrap_or("?");
    format!("{hook}/{reason}")
}

fn verdict_name(v: u32) -> &'static str {
    match v {
        TC_ACT_UNSPEC => "TC_ACT_UNSPEC: pass",
        TC_ACT_SHOT => "TC_ACT_SHOT: drop",
        0 => "TC_ACT_OK",
        _ => "other",
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One named case: what goes in, which program, and everything expected to come out.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub name: String,
    pub program: Program,
    pub input: Vec<u8>,
    /// `TC_ACT_UNSPEC` or `TC_ACT_SHOT`.
    pub verdict: u32,
    /// The frame as the program must leave it.
    pub output: Vec<u8>,
    /// The one counter (at `program`'s hook) that must move, by exactly one.
    pub reason: Reason,
}

impl Fixture {
    /// A packet the program must translate into `expected` and pass.
    pub fn translate(
        name: &str,
        program: Program,
        input: &Pkt,
        expected: &Pkt,
        reason: Reason,
    ) -> Self {
        Self {
            name: name.into(),
            program,
            input: input.build(),
            verdict: TC_ACT_UNSPEC,
            output: expected.build(),
            reason,
        }
    }

    /// Bytes the program must pass unchanged, counting `reason`.
    pub fn untouched(name: &str, program: Program, input: Vec<u8>, reason: Reason) -> Self {
        Self {
            name: name.into(),
            program,
            output: input.clone(),
            input,
            verdict: TC_ACT_UNSPEC,
            reason,
        }
    }

    /// Bytes the program must drop (unchanged), counting `reason`.
    pub fn dropped(name: &str, program: Program, input: Vec<u8>, reason: Reason) -> Self {
        Self {
            name: name.into(),
            program,
            output: input.clone(),
            input,
            verdict: TC_ACT_SHOT,
            reason,
        }
    }
}

/// Protocol number of a [`Pkt`]'s layer 4 as stored in map keys.
pub fn proto_of(l4: L4) -> u8 {
    match l4 {
        L4::Tcp { .. } => PROTO_TCP,
        L4::Udp { .. } => PROTO_UDP,
        L4::IcmpEcho => 1,
    }
}

// ---------------------------------------------------------------------------------------------
// XDP: the uplink program `svc_xdp`
// ---------------------------------------------------------------------------------------------
//
// `svc_xdp` sees frames from the wire on a node's uplink. Translating towards a remote backend
// or back to a client calls `bpf_fib_lookup`, which consults the routing and neighbour tables
// of the network namespace of the thread that issued `BPF_PROG_TEST_RUN` (the test run's
// `xdp_rxq` device comes from `current->nsproxy->net_ns`, net/bpf/test_run.c
// `xdp_convert_md_to_buff`). So XDP fixtures never run in the machine's namespace: an
// [`XdpNode`] is a namespace of their own holding one node's uplink (an interface with
// [`NODE_IP`], routes to the other nodes' pod CIDRs, permanent neighbour entries), and
// [`Datapath::run_xdp`] refuses to run from a thread in the namespace the process started in.
//
// # How `BPF_PROG_TEST_RUN` treats an XDP program (`bpf_prog_test_run_xdp`)
// `ctx_in`, when given, must be a `struct xdp_md` with `data = 0` (no metadata),
// `data_end` = the length of `data_in`, `data_meta = 0`, `egress_ifindex = 0`, and
// `rx_queue_index` below the device's `real_num_rx_queues`; `ingress_ifindex` names a device
// of the caller's namespace, which becomes `ctx->ingress_ifindex` and `xdp_rxq->dev`. Without
// live-frames mode nothing is transmitted or delivered: `XDP_TX` and `XDP_PASS` are only
// return values, and the frame as the program left it comes back in `data_out`. With
// `repeat > 1` the program runs again on the *same* buffer, as for tc.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use aya::programs::Xdp;
use etherparse::checksum::Sum16BitWords;
use svc_common::{Config, FragKey, FragPorts, MAP_FRAGS};

/// ELF name of the uplink XDP program.
pub const XDP_PROGRAM: &str = "svc_xdp";
/// ELF name of the benchmark's empty XDP program (svc-ebpf/src/floor.rs).
pub const XDP_FLOOR_PROGRAM: &str = "svc_floor_xdp";

/// `XDP_ABORTED` (`enum xdp_action`).
pub const XDP_ABORTED: u32 = 0;
/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`: on to the stack (and the uplink's tc program).
pub const XDP_PASS: u32 = 2;
/// `XDP_TX`: back out of the interface it arrived on.
pub const XDP_TX: u32 = 3;
/// `XDP_REDIRECT`.
pub const XDP_REDIRECT: u32 = 4;

/// This node's address on the underlay (kind's first node); the SNAT source for remote
/// backends (`Config::node_addr`).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
/// MAC of this node's uplink (the [`XdpNode`]'s [`XDP_UPLINK`]).
pub const NODE_MAC: [u8; 6] = [0x02, 0x00, 0xac, 0x12, 0x00, 0x02];
/// A NodePort on [`NODE_IP`].
pub const NODEPORT: SocketAddrV4 = SocketAddrV4::new(NODE_IP, 30007);
/// The external client on the underlay and the source port of its flows.
pub const EXT_CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(172, 18, 0, 100), 40000);
/// The external client's MAC (a permanent neighbour entry in the [`XdpNode`]).
pub const EXT_CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0xac, 0x12, 0x00, 0x64];
/// The second node, owner of pod CIDR 10.244.2.0/24 ([`BACKEND_B`]'s node).
pub const PEER_NODE: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);
/// [`PEER_NODE`]'s MAC (a permanent neighbour entry).
pub const PEER_NODE_MAC: [u8; 6] = [0x02, 0x00, 0xac, 0x12, 0x00, 0x03];
/// The third node, owner of 10.244.3.0/24: routed, but with **no** neighbour entry.
pub const UNRESOLVED_NODE: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 4);
/// A backend on [`UNRESOLVED_NODE`]: XDP cannot address a frame to it.
pub const BACKEND_UNRESOLVED: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 3, 2), 8080);
/// The route MTU of the [`XdpNode`]'s narrow paths (towards [`BACKEND_NARROW`] and
/// [`FAR_CLIENT`]); the uplink itself has 1500.
pub const PATH_MTU: u16 = 1000;
/// A backend on a pod CIDR (10.244.4.0/24) routed via [`PEER_NODE`] over a path of
/// [`PATH_MTU`].
pub const BACKEND_NARROW: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 4, 2), 8080);
/// The underlay's router (a permanent neighbour entry in the [`XdpNode`]): the next hop
/// towards [`FAR_CLIENT`], and the source of the ICMP errors a router on the way sends.
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
/// [`ROUTER`]'s MAC.
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0xac, 0x12, 0x00, 0x01];
/// An external client beyond [`ROUTER`], over a path of [`PATH_MTU`].
pub const FAR_CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 40000);
/// Name of the uplink inside an [`XdpNode`] (as on a kind node).
pub const XDP_UPLINK: &str = "eth0";
/// Its veth peer, also inside the [`XdpNode`]: the other end of a wire going nowhere.
const XDP_UPLINK_PEER: &str = "wire0";

impl Pkt {
    /// [`Pkt::build`] with the Ethernet addresses of a frame on the underlay. MACs are outside
    /// every checksum, so setting them after the build leaves etherparse's checksums valid.
    pub fn build_eth(&self, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
        let mut out = self.build();
        out[0..6].copy_from_slice(&dst_mac);
        out[6..12].copy_from_slice(&src_mac);
        out
    }
}

/// `frame` with its TCP/UDP checksum field replaced by what a `CHECKSUM_PARTIAL` skb carries:
/// the folded, *uncomplemented* pseudo-header sum (Linux `~tcp_v4_check(len, s, d, 0)`),
/// computed here with etherparse's one's-complement arithmetic, independently of the datapath.
pub fn with_partial_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    let (src, dst, proto, ihl, total_len) = {
        let h = etherparse::SlicedPacket::from_ethernet(&frame).expect("an Ethernet/IPv4 frame");
        let Some(etherparse::NetSlice::Ipv4(ip)) = &h.net else {
            panic!("with_partial_checksum: not IPv4");
        };
        let ip = ip.header();
        (
            ip.source(),
            ip.destination(),
            ip.protocol().0,
            usize::from(ip.ihl()) * 4,
            ip.total_len(),
        )
    };
    let l4_len = total_len - ihl as u16;
    let csum_off = 14
        + ihl
        + match proto {
            PROTO_TCP => 16,
            PROTO_UDP => 6,
            p => panic!("with_partial_checksum: protocol {p} is neither TCP nor UDP"),
        };
    let sum = Sum16BitWords::new()
        .add_4bytes(src)
        .add_4bytes(dst)
        .add_2bytes([0, proto])
        .add_2bytes(l4_len.to_be_bytes());
    // `ones_complement` returns the complemented fold in the field's byte representation.
    let partial = !sum.ones_complement();
    frame[csum_off..csum_off + 2].copy_from_slice(&partial.to_ne_bytes());
    frame
}

/// Whether the calling thread is in the network namespace this process was started in (its
/// main thread's: nothing here ever moves the main thread), where no XDP fixture may run.
/// Only threads that entered an [`XdpNode`] are elsewhere. (Pid 1's namespace would be the
/// stricter reference, but it is not readable from inside a container.)
pub fn in_launch_netns() -> Result<bool> {
    let ino = |p: &str| {
        std::fs::metadata(p)
            .map(|m| (m.dev(), m.ino()))
            .with_context(|| format!("stat {p}"))
    };
    Ok(ino("/proc/thread-self/ns/net")? == ino("/proc/self/ns/net")?)
}

/// Source of unique [`XdpNode`] names within this process.
static XDP_NODE_SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace holding one node's uplink, for the XDP program's `bpf_fib_lookup`:
/// - [`XDP_UPLINK`] ([`NODE_MAC`], [`NODE_IP`]/16, up), IPv4 forwarding on (the FIB helper
///   refuses to route for an interface that does not forward). It is one end of a veth pair
///   whose other end is in the same namespace: the test kernel has no `dummy` driver
///   (`CONFIG_DUMMY` unset) and a veth is the other device that is always built in; like a
///   dummy it has one RX queue, which `ctx_in.rx_queue_index = 0` needs;
/// - `10.244.2.0/24 via` [`PEER_NODE`] and `10.244.3.0/24 via` [`UNRESOLVED_NODE`];
/// - permanent neighbour entries for [`PEER_NODE`] and [`EXT_CLIENT`], none for
///   [`UNRESOLVED_NODE`].
///
/// The name is `svct-<pid>-xdp<n>`, so `topology::cleanup_stale_namespaces` recognises a
/// leftover of a crashed run. Dropping it (also while unwinding from a panic, and when
/// [`XdpNode::create`] fails half way) deletes the namespace, and the interface with it. It is
/// not connected to anything: nothing in it can send a packet anywhere.
pub struct XdpNode {
    name: String,
}

/// What a thread running inside an [`XdpNode`] knows about its uplink.
#[derive(Clone, Copy, Debug)]
pub struct XdpUplink {
    /// [`XDP_UPLINK`]'s ifindex in the node's namespace: the `ingress_ifindex` of every run.
    pub ifindex: u32,
    /// The uplink's veth peer in the same namespace: the device tc fixtures of the pod
    /// programs run on when the program may consult the FIB (it stands for a pod's veth).
    pub peer_ifindex: u32,
}

impl XdpNode {
    /// Creates and configures the namespace (see the type's documentation).
    pub fn create() -> Result<Self> {
        let n = XDP_NODE_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}{}-xdp{n}",
            crate::topology::NS_PREFIX,
            std::process::id()
        );
        run_ip_cmd(&["netns", "add", &name])?;
        // From here on, Drop removes the namespace whatever fails next.
        let node = Self { name };
        for cmd in [
            // `ip -n` creates both ends in the namespace; neither ever exists elsewhere.
            format!(
                "link add {XDP_UPLINK} address {} type veth peer name {XDP_UPLINK_PEER}",
                mac(&NODE_MAC)
            ),
            format!("addr add {NODE_IP}/16 dev {XDP_UPLINK}"),
            format!("link set {XDP_UPLINK_PEER} up"),
            format!("link set {XDP_UPLINK} up"),
            format!("route add 10.244.2.0/24 via {PEER_NODE} dev {XDP_UPLINK}"),
            format!("route add 10.244.3.0/24 via {UNRESOLVED_NODE} dev {XDP_UPLINK}"),
            format!(
                "neigh add {PEER_NODE} lladdr {} dev {XDP_UPLINK} nud permanent",
                mac(&PEER_NODE_MAC)
            ),
            format!(
                "neigh add {} lladdr {} dev {XDP_UPLINK} nud permanent",
                EXT_CLIENT.ip(),
                mac(&EXT_CLIENT_MAC)
            ),
            // A path narrower than the uplink, towards a backend and towards a client. `lock`
            // makes the FIB honour the route's MTU (ip_mtu_from_fib_result reads a route MTU
            // only when it is locked or net.ipv4.ip_forward_use_pmtu is set).
            format!(
                "route add {}/24 via {PEER_NODE} dev {XDP_UPLINK} mtu lock {PATH_MTU}",
                Ipv4Addr::from(u32::from(*BACKEND_NARROW.ip()) & !0xff)
            ),
            format!(
                "neigh add {ROUTER} lladdr {} dev {XDP_UPLINK} nud permanent",
                mac(&ROUTER_MAC)
            ),
            format!(
                "route add {}/24 via {ROUTER} dev {XDP_UPLINK} mtu lock {PATH_MTU}",
                Ipv4Addr::from(u32::from(*FAR_CLIENT.ip()) & !0xff)
            ),
        ] {
            let mut argv = vec!["-n", node.name.as_str()];
            argv.extend(cmd.split_whitespace());
            run_ip_cmd(&argv)?;
        }
        node.run(|_| -> Result<()> {
            // /proc/sys/net shows the namespace of the thread that opens it: this one's.
            let path = "/proc/sys/net/ipv4/ip_forward";
            std::fs::write(path, "1").with_context(|| format!("writing 1 to {path}"))
        })
        .context("enabling IPv4 forwarding in the XDP node namespace")?;
        Ok(node)
    }

    /// The namespace's name (`ip netns list` shows it while this lives).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a fresh thread that entered the namespace with `setns(2)`, and returns its
    /// result; a panic in `f` is resumed on the caller's thread (so a failing fixture fails
    /// the test with its own message). The thread ends with `f`: no other code runs in the
    /// namespace, and the caller's thread never leaves its own.
    pub fn run<R: Send>(&self, f: impl FnOnce(XdpUplink) -> R + Send) -> R {
        let path = Path::new(crate::topology::NETNS_DIR).join(&self.name);
        let file = File::open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e} (namespace gone?)", path.display()));
        let joined = std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: plain syscall on an fd we own; affects only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    panic!(
                        "setns({}): {}",
                        path.display(),
                        std::io::Error::last_os_error()
                    );
                }
                assert!(
                    !in_launch_netns().expect("reading namespace ids"),
                    "setns({}) left the thread in the launch namespace",
                    path.display()
                );
                let index = |dev: &str| {
                    let name = std::ffi::CString::new(dev).expect("no NUL in the name");
                    // SAFETY: `name` is a valid NUL-terminated string.
                    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
                    assert!(
                        ifindex != 0,
                        "{dev} not found in {}: {}",
                        self.name,
                        std::io::Error::last_os_error()
                    );
                    ifindex
                };
                f(XdpUplink {
                    ifindex: index(XDP_UPLINK),
                    peer_ifindex: index(XDP_UPLINK_PEER),
                })
            })
            .join()
        });
        joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for XdpNode {
    fn drop(&mut self) {
        if let Err(e) = run_ip_cmd(&["netns", "delete", &self.name]) {
            eprintln!("xdp node: deleting namespace {}: {e:#}", self.name);
        }
    }
}

/// Which programs [`node_datapath_test`] loads besides the pod programs.
#[derive(Clone, Copy, Debug)]
pub struct NodePrograms {
    /// [`XDP_PROGRAM`] (and the XDP floor, when the object has it).
    pub xdp: bool,
    /// `svc_uplink_ingress` and `svc_uplink_egress`.
    pub uplink_tc: bool,
}

/// Runs `body` on a thread inside a fresh [`XdpNode`] with a datapath: the pod programs plus
/// `programs`, `SVC_CONFIG` naming [`NODE_IP`]; panics when not root. A missing object fails
/// first, so an unbuilt tree can never look green. The namespace is
/// deleted when this returns or panics.
pub fn node_datapath_test(
    programs: NodePrograms,
    body: impl FnOnce(&mut Datapath, XdpUplink) + Send,
) {
    node_datapath_test_with_fault(programs, 0, body);
}

/// [`node_datapath_test`] with the load-time global `SVC_FAULT_INJECT` set to `fault`
/// (`svc_common::FAULT_*` bits).
pub fn node_datapath_test_with_fault(
    programs: NodePrograms,
    fault: u32,
    body: impl FnOnce(&mut Datapath, XdpUplink) + Send,
) {
    if let Err(e) = read_object() {
        panic!("{e:#}");
    }
    require_root();
    let node = XdpNode::create().unwrap_or_else(|e| panic!("{e:#}"));
    node.run(|uplink| {
        let mut loader = EbpfLoader::new();
        if fault != 0 {
            loader.override_global(svc_common::GLOBAL_FAULT_INJECT, &fault, true);
        }
        let loaded = if programs.xdp {
            Datapath::load_xdp_with(&mut loader)
        } else {
            Datapath::load_with(&mut loader)
        };
        let mut dp = loaded.unwrap_or_else(|e| panic!("{e:#}"));
        if programs.uplink_tc {
            dp.load_programs(&[Program::UplinkIngress, Program::UplinkEgress])
                .unwrap_or_else(|e| panic!("{e:#}"));
        }
        dp.set_config(NODE_IP).unwrap();
        body(&mut dp, uplink);
    });
}

/// Runs `ip <args>`, failing with its stderr on a non-zero exit.
fn run_ip_cmd(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `struct xdp_md` as `BPF_PROG_TEST_RUN` takes it in `ctx_in` (see the section comment).
fn xdp_md(data_len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let fields: [u32; 6] = [
        0,               // data: no metadata in front of the frame
        data_len as u32, // data_end: must equal the length of data_in
        0,               // data_meta
        ingress_ifindex, // ingress_ifindex
        0,               // rx_queue_index: the veth's only queue
        0,               // egress_ifindex: must be 0
    ];
    let mut out = [0u8; 24];
    for (chunk, f) in out.chunks_exact_mut(4).zip(fields) {
        chunk.copy_from_slice(&f.to_ne_bytes());
    }
    out
}

/// One named XDP case: input frame, expected verdict, expected output frame and the one
/// counter (at [`Hook::Xdp`]) that must move, by exactly one.
#[derive(Clone, Debug)]
pub struct XdpFixture {
    pub name: String,
    pub input: Vec<u8>,
    /// An `XDP_*` action.
    pub verdict: u32,
    /// The frame as the program must leave it.
    pub output: Vec<u8>,
    pub reason: Reason,
}

impl XdpFixture {
    /// `input` must come out as `output` with `verdict`, counting `reason`.
    pub fn new(name: &str, input: Vec<u8>, verdict: u32, output: Vec<u8>, reason: Reason) -> Self {
        Self {
            name: name.into(),
            input,
            verdict,
            output,
            reason,
        }
    }

    /// Bytes the program must pass to the stack unchanged, counting `reason`.
    pub fn untouched(name: &str, input: Vec<u8>, reason: Reason) -> Self {
        Self::new(name, input.clone(), XDP_PASS, input, reason)
    }

    /// Bytes the program must drop (unchanged), counting `reason`.
    pub fn dropped(name: &str, input: Vec<u8>, reason: Reason) -> Self {
        Self::new(name, input.clone(), XDP_DROP, input, reason)
    }
}

fn xdp_verdict_name(v: u32) -> &'static str {
    match v {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "other",
    }
}

impl Datapath {
    /// [`Datapath::load`] plus the XDP programs ([`XDP_PROGRAM`], and [`XDP_FLOOR_PROGRAM`]
    /// when the object has it).
    pub fn load_xdp() -> Result<Self> {
        Self::load_xdp_with(&mut EbpfLoader::new())
    }

    /// [`Datapath::load_with`] plus the XDP programs.
    pub fn load_xdp_with(loader: &mut EbpfLoader<'_>) -> Result<Self> {
        let mut dp = Self::load_with(loader)?;
        let mut names = vec![XDP_PROGRAM];
        if dp.ebpf.program(XDP_FLOOR_PROGRAM).is_some() {
            names.push(XDP_FLOOR_PROGRAM);
        }
        for name in names {
            let prog: &mut Xdp = dp
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} not in the object"))?
                .try_into()
                .with_context(|| format!("program {name} is not an XDP program"))?;
            prog.load()
                .with_context(|| format!("loading (verifying) program {name}"))?;
        }
        Ok(dp)
    }

    /// A loaded XDP program by ELF name.
    pub fn xdp(&self, name: &str) -> &Xdp {
        self.ebpf
            .program(name)
            .unwrap_or_else(|| panic!("program {name} not in the object"))
            .try_into()
            .unwrap_or_else(|_| panic!("program {name} is not an XDP program"))
    }

    /// Runs the XDP program `prog` on `input` `repeat` times as if it arrived on
    /// `ingress_ifindex` (an interface of the calling thread's namespace). Refuses to run
    /// from the namespace the process started in: the program's FIB lookups would read the
    /// machine's tables.
    pub fn run_xdp(
        &self,
        prog: &str,
        input: &[u8],
        repeat: u32,
        ingress_ifindex: u32,
    ) -> Result<RunResult> {
        if in_launch_netns()? {
            bail!("refusing to run {prog} in the namespace the process started in: use an XdpNode");
        }
        let ctx = xdp_md(input.len(), ingress_ifindex);
        // The datapath never grows a frame; headroom so ENOSPC cannot hide a bug.
        let mut out = vec![0u8; input.len() + 256];
        let res = self
            .xdp(prog)
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat,
                ..Default::default()
            })
            .with_context(|| {
                format!(
                    "BPF_PROG_TEST_RUN of {prog} on {} bytes, ifindex {ingress_ifindex}",
                    input.len()
                )
            })?;
        out.truncate(res.data_size_out as usize);
        Ok(RunResult {
            retval: res.return_value,
            output: out,
            duration_ns: res.duration.as_nanos() as u64,
        })
    }

    /// Writes `SVC_CONFIG[0]` as the agent does at start (only the node address matters to
    /// the packet programs).
    pub fn set_config(&mut self, node_addr: Ipv4Addr) -> Result<()> {
        if self.config.is_none() {
            self.config = Some(ConfigMap::from_loaded(&mut self.ebpf)?);
        }
        let config = self.config.as_mut().expect("taken above");
        config.write(Config {
            node_addr: node_addr.octets(),
            flags: 0,
            netns_cookie: 0,
        })?;
        Ok(())
    }

    /// Writes `backend` under `id` with `BACKEND_F_*` `flags`.
    pub fn put_backend_flags(
        &mut self,
        id: u32,
        addr: SocketAddrV4,
        proto: u8,
        flags: u8,
    ) -> Result<()> {
        self.apply(MapOp::PutBackend {
            id,
            backend: Backend {
                addr: addr.ip().octets(),
                port: addr.port(),
                proto,
                flags,
            },
        })
    }

    /// Writes any frontend entry (any scope, any flags).
    pub fn put_frontend_entry(&mut self, key: FrontendKey, value: Frontend) -> Result<()> {
        self.apply(MapOp::PutFrontend { key, value })
    }

    /// Runs an XDP fixture once on `uplink` and checks verdict, output bytes and that exactly
    /// its counter moved by one. Panics with everything that differs.
    pub fn check_xdp(&self, uplink: XdpUplink, fx: &XdpFixture) -> RunResult {
        self.try_check_xdp_with(uplink, fx, |_| fx.output.clone())
            .unwrap_or_else(|report| panic!("{report}"))
    }

    /// [`Datapath::check_xdp`] for outputs that depend on a choice the program makes (the
    /// SNAT port): `expected` builds the output after the run, from the maps the run wrote.
    /// `fx.output` is ignored.
    pub fn check_xdp_after(
        &self,
        uplink: XdpUplink,
        fx: &XdpFixture,
        expected: impl FnOnce(&Self) -> Vec<u8>,
    ) -> RunResult {
        self.try_check_xdp_with(uplink, fx, expected)
            .unwrap_or_else(|report| panic!("{report}"))
    }

    /// The checks of [`Datapath::check_xdp`], returning the mismatch report.
    pub fn try_check_xdp_with(
        &self,
        uplink: XdpUplink,
        fx: &XdpFixture,
        expected: impl FnOnce(&Self) -> Vec<u8>,
    ) -> Result<RunResult, String> {
        let before = self.counters();
        let res = self
            .run_xdp(XDP_PROGRAM, &fx.input, 1, uplink.ifindex)
            .map_err(|e| format!("fixture {:?}: {e:#}", fx.name))?;
        let after = self.counters();
        let output = expected(self);
        let mut problems = Vec::new();
        if res.retval != fx.verdict {
            problems.push(format!(
                "verdict: expected {} ({}), got {} ({})",
                fx.verdict,
                xdp_verdict_name(fx.verdict),
                res.retval,
                xdp_verdict_name(res.retval)
            ));
        }
        if res.output != output {
            problems.push("output bytes differ (field: expected, got):".to_string());
            problems.extend(diff_frames(&output, &res.output));
        }
        let want = stat_index(Hook::Xdp, fx.reason) as usize;
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            let delta = a - b;
            let expected = u64::from(i == want);
            if delta != expected {
                problems.push(format!(
                    "counter {}: expected +{expected}, got +{delta}",
                    stat_name(i)
                ));
            }
        }
        if problems.is_empty() {
            return Ok(res);
        }
        Err(format!(
            "fixture {:?} ({XDP_PROGRAM} on {} bytes):\n{}\ninput:    {}\nexpected: {}\nactual:   {}",
            fx.name,
            fx.input.len(),
            problems.join("\n"),
            hex(&fx.input),
            hex(&output),
            hex(&res.output)
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// tc runs on a device, conntrack and fragment maps, fragments and ICMP errors
// ---------------------------------------------------------------------------------------------

/// `struct __sk_buff` as `BPF_PROG_TEST_RUN` takes it in `ctx_in` for a tc program: all zero
/// but `ifindex` (offset 40) and `gso_size` (offset 176). The kernel refuses non-zero fields other than mark, priority,
/// ingress_ifindex, ifindex, cb, tstamp, wire_len, gso_segs, gso_size and hwtstamp
/// (net/bpf/test_run.c, `convert___skb_to_skb`), and uses `ifindex` (when above 1) as the
/// skb's device, looked up in the calling thread's namespace.
fn sk_buff_ctx(ifindex: u32, gso_size: u32) -> [u8; 192] {
    let mut ctx = [0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[176..180].copy_from_slice(&gso_size.to_ne_bytes());
    ctx
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock `bpf_ktime_get_ns` reads, so conntrack
/// timestamps can be written relative to the datapath's "now".
pub fn monotonic_ns() -> u64 {
    svc_agent::conntrack::monotonic_now_ns().expect("clock_gettime(CLOCK_MONOTONIC)")
}

impl Datapath {
    /// Writes (or overwrites) the conntrack entry under `key`, as an earlier packet would have.
    pub fn ct_put(&mut self, key: &CtKey, entry: CtEntry) {
        self.maps
            .ct_insert(key, &entry)
            .unwrap_or_else(|e| panic!("writing {MAP_CONNTRACK} {key:?}: {e}"));
    }

    /// Deletes the conntrack entry under `key`, as LRU eviction or the collector would.
    pub fn ct_remove(&mut self, key: &CtKey) -> Result<()> {
        let deleted = self.maps.ct_delete(&[*key])?;
        anyhow::ensure!(deleted == 1, "no conntrack entry under {key:?}");
        Ok(())
    }

    /// Every conntrack entry, sorted by key.
    pub fn ct_entries(&self) -> Vec<(CtKey, CtEntry)> {
        let mut all: Vec<(CtKey, CtEntry)> = Vec::new();
        self.maps
            .ct_scan(&mut |k, e| all.extend(k.iter().copied().zip(e.iter().copied())))
            .unwrap_or_else(|e| panic!("reading {MAP_CONNTRACK}: {e}"));
        all.sort_by_key(|(k, _)| *k);
        all
    }

    /// The fragment entry under `key`, if any.
    pub fn frag_get(&self, key: &FragKey) -> Option<FragPorts> {
        self.maps
            .frag_get(key)
            .unwrap_or_else(|e| panic!("reading {MAP_FRAGS} {key:?}: {e}"))
    }

    /// Writes the fragment entry under `key`, as a first fragment would have.
    pub fn frag_put(&mut self, key: &FragKey, value: FragPorts) {
        self.maps
            .frag_insert(key, &value)
            .unwrap_or_else(|e| panic!("writing {MAP_FRAGS} {key:?}: {e}"));
    }

    /// How many datagrams `SVC_FRAGS` remembers.
    pub fn frag_count(&self) -> usize {
        self.maps
            .frag_count()
            .unwrap_or_else(|e| panic!("reading {MAP_FRAGS}: {e}"))
    }
}

/// The `SVC_FRAGS` key of the datagram `pkt` (as it arrives at the hook).
pub fn frag_key(pkt: &Pkt) -> FragKey {
    FragKey {
        src_addr: pkt.src.ip().octets(),
        dst_addr: pkt.dst.ip().octets(),
        id: pkt.ip_id,
        proto: proto_of(pkt.l4),
        _pad: 0,
    }
}

/// The datagram `pkt` as two IPv4 fragments (RFC 791 §3.2), split after `first_len` bytes of
/// its IP payload (a multiple of 8, at least the L4 header): the first carries the L4 header
/// (MF, offset 0), the second the rest (offset `first_len / 8`, no MF). The L4 checksum is the
/// whole datagram's, as the fragmenting sender computed it; DF is clear. Every header and
/// checksum is etherparse's.
pub fn fragments(pkt: &Pkt, first_len: usize) -> [Vec<u8>; 2] {
    assert!(
        first_len.is_multiple_of(8) && first_len >= 20,
        "fragment boundary {first_len}"
    );
    let mut whole = pkt.clone();
    whole.more_fragments = false;
    whole.frag_offset = 0;
    whole.df = Some(false);
    assert!(
        whole.ip_options.is_empty(),
        "fragments of option-less headers only"
    );
    let frame = whole.build();
    let (eth, ip_payload) = (&frame[..14], &frame[14 + 20..]);
    assert!(
        first_len < ip_payload.len(),
        "{first_len} bytes leave nothing for a second fragment of {}",
        ip_payload.len()
    );
    let build = |bytes: &[u8], offset_units: u16, more: bool| {
        let mut ip = Ipv4Header::new(
            bytes.len() as u16,
            pkt.ttl,
            IpNumber(proto_of(pkt.l4)),
            pkt.src.ip().octets(),
            pkt.dst.ip().octets(),
        )
        .expect("fragment length fits");
        ip.identification = pkt.ip_id;
        ip.dont_fragment = false;
        ip.more_fragments = more;
        ip.fragment_offset = IpFragOffset::try_new(offset_units).expect("13-bit offset");
        let mut out = eth.to_vec();
        ip.write(&mut out).expect("writing an IPv4 header");
        out.extend_from_slice(bytes);
        out
    };
    [
        build(&ip_payload[..first_len], 0, true),
        build(&ip_payload[first_len..], (first_len / 8) as u16, false),
    ]
}

/// What an ICMP error quotes of `pkt` (its IPv4 header and the first `l4_bytes` of its
/// payload; `None`: all of it, as Linux quotes up to 576 bytes).
pub fn quote_of(pkt: &Pkt, l4_bytes: Option<usize>) -> Vec<u8> {
    let frame = pkt.build();
    let ip = &frame[14..];
    match l4_bytes {
        Some(n) => ip[..20 + n].to_vec(),
        None => ip.to_vec(),
    }
}

/// An ICMP error frame from `src` to `dst` (Ethernet `src_mac` → `dst_mac`) of type
/// `icmp_type`, quoting `quote`; IPv4 TTL `ttl`, id 0x4321, DF clear. Both checksums are
/// etherparse's.
pub fn icmp_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp_type: etherparse::Icmpv4Type,
    quote: &[u8],
    ttl: u8,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Vec<u8> {
    let mut ip =
        Ipv4Header::new(0, ttl, IpNumber(1), src.octets(), dst.octets()).expect("length 0 fits");
    ip.identification = 0x4321;
    ip.dont_fragment = false;
    icmp_frame(ip, icmp_type, quote, src_mac, dst_mac)
}

/// An ICMP frame with outer IPv4 header `ip` (its length and checksum are filled in),
/// `icmp_type` and `quote`; checksums etherparse's.
pub fn icmp_frame(
    ip: Ipv4Header,
    icmp_type: etherparse::Icmpv4Type,
    quote: &[u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .icmpv4(icmp_type)
        .write(&mut out, quote)
        .expect("writing an ICMP error");
    out
}

/// ICMP destination unreachable, port unreachable.
pub fn port_unreachable() -> etherparse::Icmpv4Type {
    etherparse::Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port)
}

/// ICMP destination unreachable, fragmentation needed and DF set, with `mtu`.
pub fn frag_needed(mtu: u16) -> etherparse::Icmpv4Type {
    etherparse::Icmpv4Type::DestinationUnreachable(
        etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
    )
}

/// ICMP time exceeded in transit.
pub fn time_exceeded() -> etherparse::Icmpv4Type {
    etherparse::Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit)
}

/// `frame` with its Ethernet addresses replaced (outside every checksum).
pub fn with_macs(mut frame: Vec<u8>, src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}
