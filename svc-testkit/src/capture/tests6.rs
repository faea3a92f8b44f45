//! Unit tests of the IPv6 checksum verification, on hand-built packets written to pcap files.
//! The good packets' checksums come from etherparse, not from the code under test.

use std::{fs::File, net::Ipv6Addr, path::PathBuf, time::Duration};

use etherparse::PacketBuilder;
use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    DataLink,
};

use super::*;

const SRC: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 2);
const DST: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 3);
const PAYLOAD: &[u8] = b"Should not change!!";
/// Ethernet header, then the fixed IPv6 header.
const IP: usize = 14;
const L4: usize = IP + 40;

fn eth6() -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv6(
        SRC.octets(),
        DST.octets(),
        64,
    )
}

fn tcp6() -> Vec<u8> {
    let mut v = Vec::new();
    eth6()
        .tcp(40000, 80, 1, 1024)
        .syn()
        .write(&mut v, PAYLOAD)
        .unwrap();
    v
}

fn udp6_len(len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let mut v = Vec::new();
    eth6().udp(40000, 53).write(&mut v, &payload).unwrap();
    v
}

fn udp6() -> Vec<u8> {
    let mut v = Vec::new();
    eth6().udp(40000, 53).write(&mut v, PAYLOAD).unwrap();
    v
}

fn echo6() -> Vec<u8> {
    let mut v = Vec::new();
    eth6()
        .icmpv6_echo_request(1, 1)
        .write(&mut v, PAYLOAD)
        .unwrap();
    v
}

/// A neighbour solicitation for DST (type 135: reserved word, then the target address).
fn ns6() -> Vec<u8> {
    let mut v = Vec::new();
    eth6()
        .icmpv6_raw(135, 0, [0; 4])
        .write(&mut v, &DST.octets())
        .unwrap();
    v
}

/// An MLDv2 report (type 143) behind a hop-by-hop header with the router alert option, as the
/// kernel sends them: the extension header is spliced in after etherparse computed the
/// checksum, which does not cover it.
fn mld6() -> Vec<u8> {
    let mut v = Vec::new();
    eth6()
        .icmpv6_raw(143, 0, [0, 0, 0, 1])
        .write(
            &mut v,
            &[
                4, 0, 0, 0, 0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16,
            ],
        )
        .unwrap();
    insert_ext(&mut v, 0, &[0, 0, 5, 2, 0, 0, 1, 0])
}

/// Inserts extension header `hdr` (its first byte is overwritten with the old next header)
/// right after the fixed IPv6 header, as next header `nh`.
fn insert_ext(frame: &mut [u8], nh: u8, hdr: &[u8]) -> Vec<u8> {
    let mut h = hdr.to_vec();
    h[0] = frame[IP + 6];
    let mut out = frame[..L4].to_vec();
    out[IP + 6] = nh;
    let plen = u16::from_be_bytes([out[IP + 4], out[IP + 5]]) + h.len() as u16;
    out[IP + 4..IP + 6].copy_from_slice(&plen.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&frame[L4..]);
    out
}

/// Splits an Ethernet+IPv6 frame's upper-layer bytes into fragments of at most `chunk` bytes
/// (a multiple of 8) behind fragment headers with identification `id`.
fn fragment6(frame: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
    let upper = &frame[L4..];
    let nh = frame[IP + 6];
    let mut out = Vec::new();
    let mut off = 0;
    while off < upper.len() {
        let end = (off + chunk).min(upper.len());
        let mut f = frame[..L4].to_vec();
        f[IP + 6] = 44;
        f[IP + 4..IP + 6].copy_from_slice(&((8 + end - off) as u16).to_be_bytes());
        let more = u16::from(end < upper.len());
        f.extend_from_slice(&[nh, 0]);
        f.extend_from_slice(&(off as u16 | more).to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&upper[off..end]);
        out.push(f);
        off = end;
    }
    out
}

fn verify6(name: &str, packets: &[Vec<u8>]) -> Report {
    let path: PathBuf =
        std::env::temp_dir().join(format!("svct-{}-unit6-{name}.pcap", std::process::id()));
    let mut w = PcapWriter::with_header(
        File::create(&path).unwrap(),
        PcapHeader {
            datalink: DataLink::ETHERNET,
            ..PcapHeader::default()
        },
    )
    .unwrap();
    for p in packets {
        w.write_packet(&PcapPacket::new(Duration::ZERO, p.len() as u32, p))
            .unwrap();
    }
    drop(w);
    let r = verify_checksums(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    r
}

fn csum(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[L4 + at], frame[L4 + at + 1]])
}

#[test]
fn good_ipv6_packets_verify_and_nd_mld_are_apart() {
    let r = verify6(
        "good",
        &[tcp6(), udp6(), echo6(), ns6(), mld6(), udp6_len(0)],
    );
    assert!(r.is_clean(), "{r}");
    assert_eq!(
        (r.packets, r.ipv4, r.ipv6, r.tcp6, r.udp6, r.icmp6, r.nd_mld),
        (6, 0, 6, 1, 2, 1, 2),
        "{r}"
    );
    assert_eq!((r.tcp, r.udp, r.icmp), (0, 0, 0), "IPv4 counters stay IPv4");
    assert_eq!(r.ipv6_verified(), 4, "ND and MLD are not test traffic: {r}");
}

/// Each row: a name, a packet made wrong in one way, and what the failure must say.
#[test]
fn broken_ipv6_checksums_are_found_and_named() {
    type Breaker = fn() -> Vec<u8>;
    let rows: &[(&str, Breaker, &str)] = &[
        (
            "payload byte flipped",
            || {
                let mut p = tcp6();
                *p.last_mut().unwrap() ^= 1;
                p
            },
            "#1: TCP fd00:10:244:1::2 -> fd00:10:244:2::3 ports 40000 -> 80 len 39: checksum",
        ),
        (
            "port rewritten, checksum not",
            || {
                let mut p = udp6();
                p[L4 + 2..L4 + 4].copy_from_slice(&8053u16.to_be_bytes());
                p
            },
            "#1: UDP fd00:10:244:1::2 -> fd00:10:244:2::3 ports 40000 -> 8053",
        ),
        (
            "destination rewritten (pseudo-header), checksum not",
            || {
                let mut p = tcp6();
                p[IP + 39] = 9;
                p
            },
            "#1: TCP fd00:10:244:1::2 -> fd00:10:244:2::9",
        ),
        (
            "UDP checksum 0",
            || {
                let mut p = udp6();
                p[L4 + 6..L4 + 8].copy_from_slice(&[0, 0]);
                p
            },
            "checksum 0, which IPv6 forbids",
        ),
        (
            "echo request turned reply, checksum not",
            || {
                let mut p = echo6();
                p[L4] = 129;
                p
            },
            "#1: ICMPv6 fd00:10:244:1::2 -> fd00:10:244:2::3 type 129 code 0",
        ),
        (
            "neighbour solicitation with a bad checksum",
            || {
                let mut p = ns6();
                p[L4 + 2] ^= 0x10;
                p
            },
            "#1: ICMPv6 fd00:10:244:1::2 -> fd00:10:244:2::3 type 135",
        ),
        (
            "MLD report behind hop-by-hop, target changed",
            || {
                let mut p = mld6();
                let last = p.len() - 1;
                p[last] ^= 0x80;
                p
            },
            "type 143 code 0",
        ),
        (
            "UDP length field wrong",
            || {
                let mut p = udp6();
                p[L4 + 5] += 1;
                p
            },
            "UDP length 28, datagram 27 bytes",
        ),
    ];
    for (name, make, want) in rows {
        let r = verify6("bad", &[make()]);
        assert!(!r.bad_l4.is_empty(), "{name}: not found: {r}");
        assert!(
            r.bad_l4.iter().any(|m| m.contains(want)),
            "{name}: want {want:?} in {:?}",
            r.bad_l4
        );
        assert!(r.bad_ip.is_empty(), "{name}: {r}");
    }
}

#[test]
fn expected_value_in_an_ipv6_description_is_the_right_one() {
    let good = tcp6();
    let right = csum(&good, 16);
    let mut bad = good.clone();
    bad[L4 + 16] ^= 0xff;
    let r = verify6("expected", &[bad]);
    assert!(
        r.bad_l4[0].ends_with(&format!("expected {right:#06x}")),
        "{r}"
    );
    let good = udp6();
    let right = csum(&good, 6);
    let mut zero = good.clone();
    zero[L4 + 6..L4 + 8].copy_from_slice(&[0, 0]);
    let r = verify6("expected0", &[zero]);
    assert!(
        r.bad_l4[0].ends_with(&format!("expected {right:#06x}")),
        "{r}"
    );
}

#[test]
fn ipv6_fragments_are_reassembled_and_verified() {
    let frags = fragment6(&udp6_len(3000), 1448, 0x1234);
    assert_eq!(frags.len(), 3);
    let r = verify6(
        "reasm",
        &[frags[1].clone(), frags[2].clone(), frags[0].clone()],
    );
    assert!(r.is_clean(), "{r}");
    assert_eq!((r.fragments6, r.reassembled6), (3, 1), "{r}");
    assert!(r.incomplete.is_empty(), "{r}");
    let d = &r.datagrams6[0];
    assert_eq!(
        (
            d.src,
            d.dst,
            d.proto,
            d.src_port,
            d.dst_port,
            d.len,
            d.fragments
        ),
        (SRC, DST, 17, 40000, 53, 3008, 3)
    );
    assert!(d.checksum_ok);
    assert_eq!(r.ipv6_verified(), 1, "{r}");

    // A port rewritten in the first fragment without the checksum: found only by reassembly.
    let mut bad = fragment6(&udp6_len(3000), 1448, 1);
    bad[0][L4 + 8 + 2..L4 + 8 + 4].copy_from_slice(&5353u16.to_be_bytes());
    // A byte flipped in the last fragment of a TCP segment.
    let mut big_tcp = Vec::new();
    eth6()
        .tcp(40000, 80, 1, 1024)
        .write(&mut big_tcp, &[7u8; 2500])
        .unwrap();
    let mut flip = fragment6(&big_tcp, 1448, 2);
    *flip[1].last_mut().unwrap() ^= 4;
    // A datagram that loses its middle fragment.
    let hole = fragment6(&udp6_len(4000), 1448, 3);
    let mut all = bad;
    all.extend(flip);
    all.push(hole[0].clone());
    all.push(hole[2].clone());
    let r = verify6("reasm-bad", &all);
    assert_eq!(r.reassembled6, 2, "{r}");
    assert_eq!(r.bad_l4.len(), 2, "{r}");
    assert!(
        r.bad_l4[0].starts_with("#1..#3: reassembled (id 0x00000001, 3 fragments): UDP")
            && r.bad_l4[0].contains("40000 -> 5353"),
        "{r}"
    );
    assert!(r.bad_l4[1].contains("TCP"), "{r}");
    assert!(!r.datagrams6[0].checksum_ok && !r.datagrams6[1].checksum_ok);
    assert_eq!(r.incomplete.len(), 1, "{r}");
    assert!(r.incomplete[0].contains("id 0x00000003"), "{r}");
}

#[test]
fn atomic_fragments_and_truncation_are_not_misreported() {
    // A fragment header with offset 0 and M clear (RFC 6946): a whole datagram.
    let atomic = insert_ext(&mut udp6(), 44, &[0; 8]);
    // Captured shorter than the payload length says (snap length).
    let mut short = tcp6();
    short.truncate(short.len() - 3);
    let r = verify6("atomic", &[atomic, short]);
    assert!(r.is_clean(), "{r}");
    assert_eq!((r.udp6, r.fragments6, r.l4_unverifiable6), (1, 0, 1), "{r}");
}

#[test]
fn ipv4_and_ipv6_in_one_capture_are_counted_apart() {
    let mut v4 = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 244, 1, 2], [10, 244, 2, 3], 64)
        .udp(40000, 53)
        .write(&mut v4, PAYLOAD)
        .unwrap();
    let r = verify6("mixed", &[v4, udp6(), tcp6()]);
    assert!(r.is_clean(), "{r}");
    assert_eq!((r.ipv4, r.udp, r.ipv6, r.udp6, r.tcp6), (1, 1, 2, 1, 1));
    assert!(r.to_string().contains("2 IPv6 (1 TCP, 1 UDP"), "{r}");
}
