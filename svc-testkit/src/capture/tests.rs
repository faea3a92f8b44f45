//! Unit tests of the checksum verification, on pcap files written here.

use std::fs::File;

use etherparse::PacketBuilder;
use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    DataLink,
};

use super::*;

const SRC: [u8; 4] = [10, 244, 1, 2];
const DST: [u8; 4] = [10, 96, 0, 10];
const PAYLOAD: &[u8] = b"Should not change!!";

fn eth() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
}

fn tcp_pkt() -> Vec<u8> {
    let mut v = Vec::new();
    eth()
        .ipv4(SRC, DST, 64)
        .tcp(40000, 80, 1, 1024)
        .syn()
        .write(&mut v, PAYLOAD)
        .unwrap();
    v
}

fn udp_pkt() -> Vec<u8> {
    let mut v = Vec::new();
    eth()
        .ipv4(SRC, DST, 64)
        .udp(40000, 53)
        .write(&mut v, PAYLOAD)
        .unwrap();
    v
}

fn icmp_pkt() -> Vec<u8> {
    let mut v = Vec::new();
    eth()
        .ipv4(DST, SRC, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut v, PAYLOAD)
        .unwrap();
    v
}

const IP: usize = 14; // Ethernet header
const L4: usize = IP + 20;

fn write_pcap(name: &str, packets: &[Vec<u8>]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("svct-{}-unit-{name}.pcap", std::process::id()));
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
    path
}

fn verify(name: &str, packets: &[Vec<u8>]) -> Report {
    let path = write_pcap(name, packets);
    let r = verify_checksums(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    r
}

#[test]
fn good_packets_verify() {
    let mut arp = vec![0u8; 42];
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let r = verify("good", &[tcp_pkt(), udp_pkt(), icmp_pkt(), arp]);
    assert!(r.is_clean(), "{r}");
    assert_eq!((r.packets, r.ipv4, r.tcp, r.udp, r.icmp), (4, 3, 1, 1, 1));
}

#[test]
fn corruption_is_found_and_attributed() {
    // Payload byte flipped: L4 checksum wrong, IP header fine.
    let mut payload = tcp_pkt();
    *payload.last_mut().unwrap() ^= 0x01;
    // TTL changed without fixing the header checksum: IP wrong, TCP fine (TTL is not in
    // the pseudo-header).
    let mut ttl = tcp_pkt();
    ttl[IP + 8] -= 1;
    // Destination port rewritten without a checksum update (the classic NAT bug).
    let mut port = udp_pkt();
    port[L4 + 2..L4 + 4].copy_from_slice(&8080u16.to_be_bytes());
    // Destination address rewritten, IP checksum fixed but not the L4 (pseudo-header).
    let mut addr = tcp_pkt();
    addr[IP + 16..IP + 20].copy_from_slice(&[10, 244, 2, 3]);
    addr[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
    let c = fold(sum16(0, &addr[IP..L4]));
    addr[IP + 10..IP + 12].copy_from_slice(&(!c).to_be_bytes());
    let mut icmp = icmp_pkt();
    icmp[L4] = 0; // echo request → echo reply, checksum untouched

    let r = verify("bad", &[payload, ttl, port, addr, icmp]);
    assert_eq!(r.bad_ip.len(), 1, "{r}");
    assert!(
        r.bad_ip[0].starts_with("#2: IPv4 10.244.1.2 -> 10.96.0.10"),
        "{r}"
    );
    assert_eq!(r.bad_l4.len(), 4, "{r}");
    assert!(r.bad_l4[0].starts_with("#1: TCP"), "{r}");
    assert!(
        r.bad_l4[1].contains("UDP") && r.bad_l4[1].contains("40000 -> 8080"),
        "{r}"
    );
    assert!(
        r.bad_l4[2].starts_with("#4: TCP 10.244.1.2 -> 10.244.2.3"),
        "{r}"
    );
    assert!(r.bad_l4[3].starts_with("#5: ICMP"), "{r}");
}

#[test]
fn expected_value_in_description_is_the_right_one() {
    let good = tcp_pkt();
    let right = u16::from_be_bytes([good[L4 + 16], good[L4 + 17]]);
    let mut bad = good.clone();
    bad[L4 + 16] ^= 0xff;
    let r = verify("expected", &[bad]);
    assert!(
        r.bad_l4[0].ends_with(&format!("expected {right:#06x}")),
        "{r}"
    );
}

#[test]
fn udp_zero_is_none_and_ffff_is_a_real_checksum() {
    let mut none = udp_pkt();
    none[L4 + 6..L4 + 8].copy_from_slice(&[0, 0]);
    let r = verify("udp0", &[none]);
    assert!(r.is_clean() && r.udp == 1, "{r}");

    // Find a payload whose UDP checksum computes to 0, which must be sent as 0xffff.
    let mut found = None;
    for x in 0..=u16::MAX {
        let mut v = Vec::new();
        eth()
            .ipv4(SRC, DST, 64)
            .udp(40000, 53)
            .write(&mut v, &x.to_be_bytes())
            .unwrap();
        if v[L4 + 6..L4 + 8] == [0xff, 0xff] {
            found = Some(v);
            break;
        }
    }
    let pkt = found.expect("some 2-byte payload sums to zero");
    let r = verify("udpffff", &[pkt]);
    assert!(r.is_clean() && r.udp == 1, "{r}");
}

/// Splits an Ethernet+IPv4 frame into IPv4 fragments of at most `chunk` payload bytes
/// (a multiple of 8), fixing each header's length, flags, offset and checksum.
fn fragment(frame: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    let payload = &frame[L4..];
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let end = (off + chunk).min(payload.len());
        let mut f = frame[..L4].to_vec();
        f.extend_from_slice(&payload[off..end]);
        let tot = (20 + end - off) as u16;
        f[IP + 2..IP + 4].copy_from_slice(&tot.to_be_bytes());
        let mf = if end < payload.len() { 0x2000 } else { 0 };
        f[IP + 6..IP + 8].copy_from_slice(&((mf | (off / 8)) as u16).to_be_bytes());
        f[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
        let c = !fold(sum16(0, &f[IP..L4]));
        f[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
        out.push(f);
        off = end;
    }
    out
}

fn big_udp(len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let mut v = Vec::new();
    eth()
        .ipv4(SRC, DST, 64)
        .udp(40000, 53)
        .write(&mut v, &payload)
        .unwrap();
    v
}

#[test]
fn fragments_are_reassembled_and_verified() {
    let frags = fragment(&big_udp(3000), 1480);
    assert_eq!(frags.len(), 3);
    // Out of order, as a capture may see them across CPUs.
    let r = verify(
        "reasm",
        &[frags[2].clone(), frags[0].clone(), frags[1].clone()],
    );
    assert!(r.is_clean(), "{r}");
    assert_eq!((r.fragments, r.reassembled), (3, 1), "{r}");
    assert!(r.incomplete.is_empty(), "{r}");
    let d = &r.datagrams[0];
    assert_eq!(
        (d.src_port, d.dst_port, d.len, d.fragments),
        (40000, 53, 3008, 3)
    );
    assert!(d.checksum_ok);

    // A port rewritten in the first fragment without fixing the checksum (the NAT bug the
    // datapath must avoid): caught only by reassembling.
    let mut bad = fragment(&big_udp(3000), 1480);
    bad[0][L4 + 2..L4 + 4].copy_from_slice(&5353u16.to_be_bytes());
    // A payload byte flipped in a later fragment.
    let mut flip = fragment(&big_udp(2000), 1480);
    flip[1][L4 + 10] ^= 0x40;
    // Make the second datagram's id differ from the first.
    for f in &mut flip {
        f[IP + 4] = 0x77;
        f[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
        let c = !fold(sum16(0, &f[IP..L4]));
        f[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
    }
    // A fragment whose own header checksum is wrong.
    let mut hdr = fragment(&big_udp(1600), 1480);
    for f in &mut hdr {
        f[IP + 4] = 0x66;
        f[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
        let c = !fold(sum16(0, &f[IP..L4]));
        f[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
    }
    hdr[1][IP + 8] -= 1; // TTL changed, checksum not fixed
    let mut all = bad;
    all.extend(flip);
    all.extend(hdr);
    let r = verify("reasm-bad", &all);
    assert_eq!(r.reassembled, 3, "{r}");
    assert_eq!(r.bad_l4.len(), 2, "{r}");
    assert!(
        r.bad_l4[0].contains("reassembled UDP") && r.bad_l4[0].contains("40000 -> 5353"),
        "{r}"
    );
    assert!(r.bad_l4[1].contains("reassembled UDP"), "{r}");
    assert_eq!(r.bad_ip.len(), 1, "{r}");
    assert!(!r.datagrams[0].checksum_ok && !r.datagrams[1].checksum_ok);
    assert!(
        r.datagrams[2].checksum_ok,
        "TTL is outside the UDP checksum: {r}"
    );

    // A datagram missing its middle fragment is reported, not silently passed.
    let frags = fragment(&big_udp(4000), 1480);
    let r = verify("reasm-hole", &[frags[0].clone(), frags[2].clone()]);
    assert_eq!(r.reassembled, 0, "{r}");
    assert_eq!(r.incomplete.len(), 1, "{r}");
}

#[test]
fn fragments_and_truncation_are_not_misreported() {
    let mut frag = udp_pkt();
    frag[IP + 6] |= 0x20; // MF
    let c = {
        frag[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
        !fold(sum16(0, &frag[IP..L4]))
    };
    frag[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
    frag[L4 + 8] ^= 0xff; // would be a bad checksum if it were checked
    let mut short = tcp_pkt();
    short.truncate(short.len() - 3); // snaplen cut
    let r = verify("frag", &[frag, short]);
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.l4_unverifiable, 2, "{r}");
    assert_eq!(
        (r.fragments, r.reassembled, r.incomplete.len()),
        (1, 0, 1),
        "{r}"
    );
}
