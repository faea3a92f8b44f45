//! Independent checksum verification of a capture: [`verify_checksums`] reads a pcap file,
//! reassembles IPv4 and IPv6 fragments and recomputes every IPv4, TCP, UDP, ICMP and ICMPv6
//! checksum with the RFC 1071 code here, reporting what it found as a [`Report`]. The IPv6
//! half (pseudo-header of RFC 8200 §8.1, extension headers, fragments) is in `verify6.rs`.

use std::{
    fmt,
    fs::File,
    io::{BufReader, Read},
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{bail, Context, Result};
use pcap_file::{pcap::PcapReader, DataLink};

use super::MAX_DESCRIBED;

/// What [`verify_checksums`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Packets in the file.
    pub packets: u64,
    /// IPv4 packets (IPv6 ones are counted in [`Report::ipv6`]; others, ARP, are skipped).
    pub ipv4: u64,
    /// TCP segments whose checksum was verified.
    pub tcp: u64,
    /// UDP datagrams whose checksum was verified (or that carry none: checksum 0).
    pub udp: u64,
    /// ICMP messages whose checksum was verified (the datapath's reject path builds them).
    pub icmp: u64,
    /// IPv4 packets whose L4 checksum could not be verified on their own: fragments (their
    /// datagram is verified once reassembled, see [`Report::reassembled`]), or packets captured
    /// shorter than the IP total length.
    pub l4_unverifiable: u64,
    /// IPv4 fragments (MF set or a non-zero offset); each one's header checksum is verified.
    pub fragments: u64,
    /// Datagrams reassembled from fragments (RFC 791) whose TCP/UDP checksum was then verified
    /// over the whole datagram. Described in [`Report::datagrams`].
    pub reassembled: u64,
    /// Fragmented datagrams of which some fragment never appeared in the capture.
    pub incomplete: Vec<String>,
    /// Every reassembled datagram, in order of completion.
    pub datagrams: Vec<Reassembled>,
    /// Packets with a wrong IPv4 header checksum (or a malformed IPv4 or IPv6 header).
    pub bad_ip: Vec<String>,
    /// Packets with a wrong TCP/UDP/ICMP/ICMPv6 checksum (over IPv6 also: UDP checksum 0).
    pub bad_l4: Vec<String>,
    /// IPv6 packets (the counters above, but `bad_*` and `incomplete`, are IPv4 only).
    pub ipv6: u64,
    /// TCP segments over IPv6 whose checksum was verified.
    pub tcp6: u64,
    /// UDP datagrams over IPv6 whose checksum was verified (0 is never accepted: RFC 8200
    /// §8.1 makes it mandatory).
    pub udp6: u64,
    /// ICMPv6 messages other than neighbour discovery and MLD whose checksum was verified:
    /// echo, errors — test traffic.
    pub icmp6: u64,
    /// Neighbour discovery (types 133–137) and MLD (130–132, 143) messages: verified like the
    /// rest, counted apart because every IPv6 link sends them by itself.
    pub nd_mld: u64,
    /// IPv6 packets whose L4 checksum could not be verified on their own: fragments (verified
    /// once reassembled), packets captured short, a routing header hiding the final
    /// destination, jumbograms.
    pub l4_unverifiable6: u64,
    /// IPv6 packets carrying a fragment header (other than atomic fragments).
    pub fragments6: u64,
    /// IPv6 datagrams reassembled from fragments (RFC 8200 §4.5) whose TCP/UDP/ICMPv6
    /// checksum was then verified over the whole datagram. Described in
    /// [`Report::datagrams6`].
    pub reassembled6: u64,
    /// Every reassembled IPv6 datagram, in order of completion.
    pub datagrams6: Vec<Reassembled<Ipv6Addr>>,
}

impl Report {
    /// No bad checksum at all.
    pub fn is_clean(&self) -> bool {
        self.bad_ip.is_empty() && self.bad_l4.is_empty()
    }

    /// IPv6 test traffic whose checksums were verified: TCP, UDP and ICMPv6 packets (not
    /// neighbour discovery or MLD) and reassembled datagrams. A test over IPv6 checks this is
    /// not zero, so that a capture which saw none of its traffic cannot pass.
    pub fn ipv6_verified(&self) -> u64 {
        self.tcp6 + self.udp6 + self.icmp6 + self.reassembled6
    }
}

/// A datagram put together from the fragments in a capture (`A`: [`Ipv4Addr`] in
/// [`Report::datagrams`], [`Ipv6Addr`] in [`Report::datagrams6`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassembled<A = Ipv4Addr> {
    pub src: A,
    pub dst: A,
    pub proto: u8,
    /// From the first fragment's L4 header (0 for other protocols).
    pub src_port: u16,
    pub dst_port: u16,
    /// Length of the reassembled L4 datagram (header + payload).
    pub len: usize,
    /// How many fragments it was made of.
    pub fragments: usize,
    /// Its L4 checksum verified (UDP checksum 0 counts as verified: none was sent).
    pub checksum_ok: bool,
}

impl<A: fmt::Display> fmt::Display for Reassembled<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "proto {} {}:{} -> {}:{} len {} in {} fragments{}",
            self.proto,
            self.src,
            self.src_port,
            self.dst,
            self.dst_port,
            self.len,
            self.fragments,
            if self.checksum_ok {
                ""
            } else {
                " BAD CHECKSUM"
            }
        )
    }
}

/// Fragments of one datagram seen so far, keyed by (src, dst, proto, id) (IPv6: (src, dst,
/// id)).
#[derive(Default)]
pub(super) struct Partial {
    /// offset (bytes) → fragment payload.
    pieces: std::collections::BTreeMap<usize, Vec<u8>>,
    /// Known once the last fragment (MF clear) arrived: total L4 length.
    total: Option<usize>,
    /// Packet number of the first fragment seen, for messages.
    first_seen: u64,
    /// IPv6: the next header of the fragmentable part (from the fragment header of the
    /// fragment at offset 0) and the pseudo-header destination (final destination).
    pub(super) next_header: Option<u8>,
    pub(super) final_dst: Option<Ipv6Addr>,
}

impl Partial {
    pub(super) fn new(first_seen: u64) -> Partial {
        Partial {
            first_seen,
            ..Partial::default()
        }
    }

    /// Files `data` at `offset` (`more`: MF set). Returns the reassembled bytes once the pieces
    /// cover 0..total without a hole, or a message if a piece contradicts an earlier copy.
    pub(super) fn add(
        &mut self,
        offset: usize,
        more: bool,
        data: Vec<u8>,
    ) -> (Option<Vec<u8>>, Option<String>) {
        if !more {
            self.total = Some(offset + data.len());
        }
        let mut conflict = None;
        match self.pieces.get(&offset) {
            Some(old) if *old != data => {
                conflict = Some(format!(
                    "offset {offset} seen twice with different contents"
                ))
            }
            Some(_) => {} // an identical copy
            None => {
                self.pieces.insert(offset, data);
            }
        }
        let Some(total) = self.total else {
            return (None, conflict);
        };
        let mut covered = 0;
        for (&off, d) in &self.pieces {
            if off > covered {
                return (None, conflict);
            }
            covered = covered.max(off + d.len());
        }
        if covered < total {
            return (None, conflict);
        }
        let mut whole = vec![0u8; total];
        for (off, d) in &self.pieces {
            let end = (off + d.len()).min(total);
            whole[*off..end].copy_from_slice(&d[..end - off]);
        }
        (Some(whole), conflict)
    }

    pub(super) fn first_seen(&self) -> u64 {
        self.first_seen
    }

    pub(super) fn count(&self) -> usize {
        self.pieces.len()
    }

    /// `N fragments, B bytes[ of T]` for an incomplete datagram.
    pub(super) fn describe(&self) -> String {
        let have: usize = self.pieces.values().map(Vec::len).sum();
        format!(
            "{} fragments, {have} bytes{}",
            self.pieces.len(),
            self.total.map(|t| format!(" of {t}")).unwrap_or_default()
        )
    }
}

type FragId = (Ipv4Addr, Ipv4Addr, u8, u16);

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} packets, {} IPv4 ({} TCP, {} UDP, {} ICMP, {} L4 unverifiable; {} fragments, \
             {} datagrams reassembled, {} incomplete); {} bad IP checksums, {} bad L4 checksums",
            self.packets,
            self.ipv4,
            self.tcp,
            self.udp,
            self.icmp,
            self.l4_unverifiable,
            self.fragments,
            self.reassembled,
            self.incomplete.len(),
            self.bad_ip.len(),
            self.bad_l4.len()
        )?;
        if self.ipv6 > 0 {
            write!(
                f,
                "; {} IPv6 ({} TCP, {} UDP, {} ICMPv6, {} ND/MLD, {} L4 unverifiable; {} \
                 fragments, {} datagrams reassembled)",
                self.ipv6,
                self.tcp6,
                self.udp6,
                self.icmp6,
                self.nd_mld,
                self.l4_unverifiable6,
                self.fragments6,
                self.reassembled6
            )?;
        }
        for d in self
            .bad_ip
            .iter()
            .chain(&self.bad_l4)
            .chain(&self.incomplete)
            .take(MAX_DESCRIBED)
        {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

/// Reads a pcap file and checks the IPv4 header checksum of every IPv4 packet (fragments
/// included), the TCP/UDP/ICMP checksum of every complete, unfragmented one, and the TCP/UDP
/// checksum of every datagram reassembled from its fragments (RFC 791 reassembly, written here
/// independently of the kernel and the datapath). IPv6 likewise: the TCP/UDP/ICMPv6 checksum
/// (with the RFC 8200 §8.1 pseudo-header, after any extension headers) of every packet, or of
/// the datagram reassembled from its fragments (RFC 8200 §4.5). Link types: Ethernet (with
/// 802.1Q tags), Linux cooked v1/v2 (`-i any`), raw IP.
pub fn verify_checksums(path: &Path) -> Result<Report> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = PcapReader::new(BufReader::new(f))
        .with_context(|| format!("reading pcap header of {}", path.display()))?;
    let link = reader.header().datalink;
    let mut report = Report::default();
    let mut partial: std::collections::HashMap<FragId, Partial> = Default::default();
    let mut partial6: super::verify6::Partials6 = Default::default();
    while let Some(pkt) = reader.next_packet() {
        let pkt = pkt.with_context(|| {
            format!(
                "reading packet {} of {}",
                report.packets + 1,
                path.display()
            )
        })?;
        report.packets += 1;
        match ip_payload(link, &pkt.data)? {
            Some((4, ip)) => {
                check_ipv4(report.packets, ip, &mut report);
                collect_fragment(report.packets, ip, &mut partial, &mut report);
            }
            Some((_, ip)) => {
                super::verify6::check_ipv6(report.packets, ip, &mut partial6, &mut report)
            }
            None => {}
        }
    }
    let mut left: Vec<_> = partial.into_iter().collect();
    left.sort_by_key(|(_, p)| p.first_seen);
    for ((src, dst, proto, id), p) in left {
        let have: usize = p.pieces.values().map(Vec::len).sum();
        report.incomplete.push(format!(
            "#{}: fragmented proto {proto} {src} -> {dst} id {id:#06x}: {} fragments, {have} bytes{} — never completed",
            p.first_seen,
            p.pieces.len(),
            p.total.map(|t| format!(" of {t}")).unwrap_or_default()
        ));
    }
    super::verify6::report_incomplete(partial6, &mut report);
    Ok(report)
}

/// Files a fragment under its datagram and, when the datagram is complete, verifies its L4
/// checksum over the reassembled bytes.
fn collect_fragment(
    n: u64,
    ip: &[u8],
    partial: &mut std::collections::HashMap<FragId, Partial>,
    r: &mut Report,
) {
    let Some(&vihl) = ip.first() else { return };
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 || ip.len() < ihl {
        return;
    }
    let hdr = &ip[..ihl];
    let frag = u16::from_be_bytes([hdr[6], hdr[7]]);
    let more = frag & 0x2000 != 0;
    let offset = usize::from(frag & 0x1fff) * 8;
    if !more && offset == 0 {
        return;
    }
    r.fragments += 1;
    let total = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
    if total < ihl || ip.len() < total {
        r.bad_ip.push(format!(
            "#{n}: fragment captured short ({} of {total} bytes)",
            ip.len()
        ));
        return;
    }
    let src = Ipv4Addr::new(hdr[12], hdr[13], hdr[14], hdr[15]);
    let dst = Ipv4Addr::new(hdr[16], hdr[17], hdr[18], hdr[19]);
    let proto = hdr[9];
    let id = u16::from_be_bytes([hdr[4], hdr[5]]);
    let key = (src, dst, proto, id);
    let data = ip[ihl..total].to_vec();
    let p = partial.entry(key).or_insert_with(|| Partial {
        first_seen: n,
        ..Partial::default()
    });
    if !more {
        p.total = Some(offset + data.len());
    }
    match p.pieces.get(&offset) {
        Some(old) if *old != data => r.bad_ip.push(format!(
            "#{n}: fragment {src} -> {dst} id {id:#06x} offset {offset} seen twice with different contents"
        )),
        Some(_) => {} // an identical copy
        None => {
            p.pieces.insert(offset, data);
        }
    }
    let Some(total) = p.total else { return };
    // Complete when the pieces cover 0..total without a hole.
    let mut covered = 0;
    for (&off, d) in &p.pieces {
        if off > covered {
            return;
        }
        covered = covered.max(off + d.len());
    }
    if covered < total {
        return;
    }
    let p = partial.remove(&key).expect("present");
    let mut l4 = vec![0u8; total];
    for (off, d) in &p.pieces {
        let end = (off + d.len()).min(total);
        l4[*off..end].copy_from_slice(&d[..end - off]);
    }
    r.reassembled += 1;
    let (ports, csum_at) = match proto {
        6 if l4.len() >= 20 => (true, 16),
        17 if l4.len() >= 8 => (true, 6),
        _ => (false, 0),
    };
    let (src_port, dst_port) = if ports {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    } else {
        (0, 0)
    };
    let mut checksum_ok = true;
    if ports {
        let field = u16::from_be_bytes([l4[csum_at], l4[csum_at + 1]]);
        if !(proto == 17 && field == 0) {
            let mut pseudo = sum16(0, &hdr[12..20]);
            pseudo += u32::from(proto);
            pseudo += l4.len() as u32;
            let acc = sum16(pseudo, &l4);
            if !sums_ok(acc) {
                checksum_ok = false;
                r.bad_l4.push(format!(
                    "#{}..#{n}: reassembled {} {src} -> {dst} ports {src_port} -> {dst_port} len {} ({} fragments): checksum {field:#06x}, expected {:#06x}",
                    p.first_seen,
                    if proto == 6 { "TCP" } else { "UDP" },
                    l4.len(),
                    p.pieces.len(),
                    expected(acc + 0xffff - u32::from(field))
                ));
            }
        }
        if proto == 17 {
            let udp_len = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
            if udp_len != l4.len() {
                checksum_ok = false;
                r.bad_l4.push(format!(
                    "#{}..#{n}: reassembled UDP {src} -> {dst}: UDP length {udp_len}, datagram {} bytes",
                    p.first_seen,
                    l4.len()
                ));
            }
        }
    }
    r.datagrams.push(Reassembled {
        src,
        dst,
        proto,
        src_port,
        dst_port,
        len: l4.len(),
        fragments: p.pieces.len(),
        checksum_ok,
    });
}

/// Returns the IP version (4 or 6) and the bytes from the IP header on, or None for anything
/// that is neither IPv4 nor IPv6.
fn ip_payload(link: DataLink, frame: &[u8]) -> Result<Option<(u8, &[u8])>> {
    const ETH_P_IP: u16 = 0x0800;
    const ETH_P_IPV6: u16 = 0x86dd;
    let be16 = |b: &[u8], at: usize| b.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]]));
    let (ethertype, off) = match link {
        DataLink::ETHERNET => {
            let mut off = 12;
            let mut et = be16(frame, off);
            // 802.1Q / 802.1ad tags: skip 4 bytes each.
            while matches!(et, Some(0x8100 | 0x88a8)) {
                off += 4;
                et = be16(frame, off);
            }
            (et, off + 2)
        }
        DataLink::LINUX_SLL => (be16(frame, 14), 16),
        DataLink::LINUX_SLL2 => (be16(frame, 0), 20),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => {
            return Ok(frame
                .first()
                .map(|b| b >> 4)
                .filter(|v| matches!(v, 4 | 6))
                .map(|v| (v, frame)));
        }
        other => bail!("unsupported pcap link type {other:?}"),
    };
    Ok(match ethertype {
        Some(ETH_P_IP) => frame.get(off..).map(|ip| (4, ip)),
        Some(ETH_P_IPV6) => frame.get(off..).map(|ip| (6, ip)),
        _ => None,
    })
}

/// RFC 1071 one's-complement sum of `data` added to `acc` (not yet folded or inverted).
pub(super) fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

pub(super) fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// A correct checksum makes the one's-complement sum over the covered bytes, checksum field
/// included, 0xffff. That also holds for a UDP checksum that computed to 0 and was sent as
/// 0xffff (RFC 768), so no special case is needed besides "0 = none".
pub(super) fn sums_ok(acc: u32) -> bool {
    fold(acc) == 0xffff
}

/// The checksum value that would have been correct: `!sum` with the field taken as zero.
pub(super) fn expected(acc_without_field: u32) -> u16 {
    !fold(acc_without_field)
}

fn check_ipv4(n: u64, ip: &[u8], r: &mut Report) {
    r.ipv4 += 1;
    let Some(&vihl) = ip.first() else {
        r.bad_ip.push(format!("#{n}: empty IPv4 packet"));
        return;
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 || ip.len() < ihl {
        r.bad_ip.push(format!(
            "#{n}: malformed IPv4 header (byte 0 {vihl:#04x}, {} bytes)",
            ip.len()
        ));
        return;
    }
    let hdr = &ip[..ihl];
    let src = Ipv4Addr::new(hdr[12], hdr[13], hdr[14], hdr[15]);
    let dst = Ipv4Addr::new(hdr[16], hdr[17], hdr[18], hdr[19]);
    let proto = hdr[9];
    if !sums_ok(sum16(0, hdr)) {
        let field = u16::from_be_bytes([hdr[10], hdr[11]]);
        let without = sum16(0, hdr) + 0xffff - u32::from(field); // remove the field, keep ≥ 0
        r.bad_ip.push(format!(
            "#{n}: IPv4 {src} -> {dst} proto {proto}: header checksum {field:#06x}, expected {:#06x}",
            expected(without)
        ));
    }
    let total = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
    let frag = u16::from_be_bytes([hdr[6], hdr[7]]);
    let fragmented = frag & 0x2000 != 0 || frag & 0x1fff != 0;
    if !matches!(proto, 1 | 6 | 17) {
        return;
    }
    if fragmented || total < ihl || ip.len() < total {
        r.l4_unverifiable += 1;
        return;
    }
    let l4 = &ip[ihl..total];
    let (name, csum_at, min_len) = match proto {
        6 => ("TCP", 16, 20),
        17 => ("UDP", 6, 8),
        _ => ("ICMP", 2, 4),
    };
    if l4.len() < min_len {
        r.bad_l4.push(format!(
            "#{n}: {name} {src} -> {dst}: truncated header ({} bytes)",
            l4.len()
        ));
        return;
    }
    let field = u16::from_be_bytes([l4[csum_at], l4[csum_at + 1]]);
    match proto {
        6 => r.tcp += 1,
        17 => r.udp += 1,
        _ => r.icmp += 1,
    }
    if proto == 17 && field == 0 {
        return; // UDP over IPv4: no checksum
    }
    // TCP and UDP cover a pseudo-header (addresses, protocol, L4 length); ICMP does not.
    let pseudo = if proto == 1 {
        0
    } else {
        let mut p = sum16(0, &hdr[12..20]);
        p += u32::from(proto);
        p += l4.len() as u32;
        p
    };
    let acc = sum16(pseudo, l4);
    if !sums_ok(acc) {
        let ports = if proto == 1 {
            format!("type {} code {}", l4[0], l4[1])
        } else {
            format!(
                "ports {} -> {}",
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]])
            )
        };
        r.bad_l4.push(format!(
            "#{n}: {name} {src} -> {dst} {ports} len {}: checksum {field:#06x}, expected {:#06x}",
            l4.len(),
            expected(acc + 0xffff - u32::from(field))
        ));
    }
}

/// Reads the whole pcap (for tests that want to inspect packets themselves).
pub fn read_packets(path: &Path) -> Result<(DataLink, Vec<Vec<u8>>)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", path.display()))?;
    let mut reader = PcapReader::new(&bytes[..]).context("pcap header")?;
    let link = reader.header().datalink;
    let mut out = Vec::new();
    while let Some(p) = reader.next_packet() {
        out.push(p.context("pcap packet")?.data.into_owned());
    }
    Ok((link, out))
}
