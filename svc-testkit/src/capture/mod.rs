//! Packet capture in a test namespace and independent checksum verification.
//!
//! The datapath rewrites addresses and ports and must fix IPv4, TCP and UDP checksums as it
//! goes; DESIGN §2 ("the checksum trap") explains how that goes wrong silently over veth.
//! Tests capture on the underlay, where every packet has passed a node `eth0` with TX checksum
//! offload off — so every checksum is real — and [`verify_checksums`] recomputes each one with
//! the RFC 1071 code in this file, which shares nothing with the kernel or with the eBPF
//! programs under test.
//!
//! Capturing on `br0` in the underlay namespace sees traffic forwarded between ports because
//! tcpdump puts the bridge into promiscuous mode, and a promiscuous bridge also delivers a copy
//! of every forwarded frame to itself.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pcap_file::pcap::PcapReader;
use pcap_file::DataLink;

use crate::topology::{NsChild, Topology};

/// How long tcpdump gets to open the interface and to flush and exit.
const TCPDUMP_TIMEOUT: Duration = Duration::from_secs(10);
/// [`Capture::stop`] waits for the capture file to stop growing for this long…
const QUIET_FOR: Duration = Duration::from_millis(50);
/// …but not longer than this in total (steady background traffic never goes quiet).
const QUIET_MAX: Duration = Duration::from_secs(1);
/// At most this many bad packets are described in a [`Report`] (the counts stay exact).
const MAX_DESCRIBED: usize = 50;

static CAPTURES: AtomicU32 = AtomicU32::new(0);

/// A running `tcpdump -i IFACE -w FILE -U -s 0 -n` in a namespace.
pub struct Capture {
    child: Option<NsChild>,
    file: CaptureFile,
}

impl Capture {
    /// Starts tcpdump in `ns` on `iface` and returns once it is capturing (it has printed
    /// `listening on`, which it does after the capture socket is bound and active).
    pub fn start(topology: &Topology, ns: &str, iface: &str) -> Result<Capture> {
        Self::start_filtered(topology, ns, iface, &[])
    }

    /// Like [`Capture::start`] with a tcpdump filter expression (e.g. `["icmp"]`): for tests
    /// that move megabytes and look only at a few packets, which a full capture would drop.
    pub fn start_filtered(
        topology: &Topology,
        ns: &str,
        iface: &str,
        filter: &[&str],
    ) -> Result<Capture> {
        let path = std::env::temp_dir().join(format!(
            "{}cap{}-{iface}.pcap",
            topology.prefix(),
            CAPTURES.fetch_add(1, Ordering::Relaxed)
        ));
        let path_s = path.to_string_lossy().into_owned();
        // --immediate-mode: without it libpcap's TPACKET_V3 ring hands packets to tcpdump
        //   only when a block fills or its timeout (1 s) expires, and tcpdump exits on SIGINT
        //   without draining the ring: the last second of traffic would be counted by the
        //   kernel ("received by filter") but never written;
        // -B 65536 (KiB): in immediate mode every ring slot holds one packet of up to the
        //   snap length (-s 0 = 256 KiB, needed for GSO packets on pod veths), so the default
        //   2 MiB ring has 8 slots and drops packets under the lightest burst; 64 MiB = 256;
        // -U: write each packet out as it arrives, so stopping loses nothing;
        // -Z root: Debian's tcpdump otherwise drops to user `tcpdump` before creating FILE;
        // -n: no DNS lookups (no packets outside the namespaces).
        let mut argv = vec![
            "tcpdump",
            "--immediate-mode",
            "-i",
            iface,
            "-w",
            &path_s,
            "-U",
            "-B",
            "65536",
            "-s",
            "0",
            "-n",
            "-Z",
            "root",
        ];
        argv.extend_from_slice(filter);
        let mut child = topology.spawn(ns, &argv)?;
        let file = CaptureFile {
            path,
            keep: std::env::var_os("SVCT_KEEP_PCAP").is_some(),
            captured: 0,
        };
        // tcpdump reports on stderr, which NsChild collects; poll it with a deadline.
        let deadline = std::time::Instant::now() + TCPDUMP_TIMEOUT;
        let mut step = Duration::from_millis(2);
        loop {
            let err = child.stderr();
            if err.contains("listening on") {
                break;
            }
            if let Ok(status) = child.wait_timeout(Duration::ZERO) {
                bail!(
                    "tcpdump on {iface} in {ns} exited ({status}): {}",
                    err.trim()
                );
            }
            if std::time::Instant::now() >= deadline {
                bail!("tcpdump on {iface} in {ns} not listening after {TCPDUMP_TIMEOUT:?}: {err}");
            }
            std::thread::sleep(step);
            step = (step * 2).min(Duration::from_millis(50));
        }
        Ok(Capture {
            child: Some(child),
            file,
        })
    }

    /// Stops tcpdump with SIGINT (it then flushes its buffer and writes its statistics) and
    /// waits for it. Fails if the kernel dropped packets: a verification over an incomplete
    /// capture would prove less than it claims.
    pub fn stop(mut self) -> Result<CaptureFile> {
        let child = self.child.take().context("capture already stopped")?;
        wait_until_quiet(&self.file.path);
        child.signal(libc::SIGINT)?;
        let fin = child.finish(TCPDUMP_TIMEOUT)?;
        let stat = |what: &str| {
            fin.stderr
                .lines()
                .find(|l| l.ends_with(what))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        };
        let captured = stat("packets captured").with_context(|| {
            format!(
                "tcpdump did not report its statistics: {}",
                fin.stderr.trim()
            )
        })?;
        if let Some(dropped @ 1..) = stat("packets dropped by kernel") {
            bail!(
                "tcpdump: {dropped} packets dropped by kernel: {}",
                fin.stderr
            );
        }
        // The file now belongs to the returned CaptureFile; the empty path left behind makes
        // our own field's drop a no-op.
        Ok(CaptureFile {
            path: std::mem::take(&mut self.file.path),
            keep: self.file.keep,
            captured,
        })
    }
}

/// Waits (at most [`QUIET_MAX`]) until the pcap file has not grown for [`QUIET_FOR`]: packets
/// the test's last exchange produced may still be on their way from the kernel to tcpdump, and
/// tcpdump does not drain its socket when it is told to stop.
fn wait_until_quiet(path: &Path) {
    let size = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let deadline = std::time::Instant::now() + QUIET_MAX;
    let mut last = (size(), std::time::Instant::now());
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        let now = size();
        if now != last.0 {
            last = (now, std::time::Instant::now());
        } else if last.1.elapsed() >= QUIET_FOR {
            return;
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }
}

/// A pcap written by a [`Capture`]. Deleted on drop, except while a test panics or when
/// `SVCT_KEEP_PCAP` is set (then its path is printed, for Wireshark).
pub struct CaptureFile {
    path: PathBuf,
    keep: bool,
    captured: u64,
}

impl CaptureFile {
    /// Where the pcap is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Packets tcpdump said it wrote (to compare with [`Report::packets`]).
    pub fn captured(&self) -> u64 {
        self.captured
    }
}

impl Drop for CaptureFile {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        if self.keep || std::thread::panicking() {
            eprintln!("capture kept at {}", self.path.display());
        } else if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("removing capture {}: {e}", self.path.display());
            }
        }
    }
}

/// What [`verify_checksums`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Packets in the file.
    pub packets: u64,
    /// IPv4 packets (others — ARP, IPv6 — are skipped).
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
    /// Packets with a wrong IPv4 header checksum (or a malformed header).
    pub bad_ip: Vec<String>,
    /// Packets with a wrong TCP/UDP/ICMP checksum.
    pub bad_l4: Vec<String>,
}

impl Report {
    /// No bad checksum at all.
    pub fn is_clean(&self) -> bool {
        self.bad_ip.is_empty() && self.bad_l4.is_empty()
    }
}

/// A datagram put together from the fragments in a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassembled {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
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

impl fmt::Display for Reassembled {
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

/// Fragments of one datagram seen so far, keyed by (src, dst, proto, id).
#[derive(Default)]
struct Partial {
    /// offset (bytes) → fragment payload.
    pieces: std::collections::BTreeMap<usize, Vec<u8>>,
    /// Known once the last fragment (MF clear) arrived: total L4 length.
    total: Option<usize>,
    /// Packet number of the first fragment seen, for messages.
    first_seen: u64,
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
/// independently of the kernel and the datapath). Link types: Ethernet (with 802.1Q tags),
/// Linux cooked v1/v2 (`-i any`), raw IP.
pub fn verify_checksums(path: &Path) -> Result<Report> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = PcapReader::new(BufReader::new(f))
        .with_context(|| format!("reading pcap header of {}", path.display()))?;
    let link = reader.header().datalink;
    let mut report = Report::default();
    let mut partial: std::collections::HashMap<FragId, Partial> = Default::default();
    while let Some(pkt) = reader.next_packet() {
        let pkt = pkt.with_context(|| {
            format!(
                "reading packet {} of {}",
                report.packets + 1,
                path.display()
            )
        })?;
        report.packets += 1;
        if let Some(ip) = ipv4_payload(link, &pkt.data)? {
            check_ipv4(report.packets, ip, &mut report);
            collect_fragment(report.packets, ip, &mut partial, &mut report);
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

/// Returns the bytes from the IPv4 header on, or None for anything that is not IPv4.
fn ipv4_payload(link: DataLink, frame: &[u8]) -> Result<Option<&[u8]>> {
    const ETH_P_IP: u16 = 0x0800;
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
        DataLink::RAW | DataLink::IPV4 => {
            return Ok(frame.first().filter(|b| *b >> 4 == 4).map(|_| frame));
        }
        other => bail!("unsupported pcap link type {other:?}"),
    };
    Ok(match ethertype {
        Some(ETH_P_IP) => frame.get(off..),
        _ => None,
    })
}

/// RFC 1071 one's-complement sum of `data` added to `acc` (not yet folded or inverted).
fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// A correct checksum makes the one's-complement sum over the covered bytes, checksum field
/// included, 0xffff. That also holds for a UDP checksum that computed to 0 and was sent as
/// 0xffff (RFC 768), so no special case is needed besides "0 = none".
fn sums_ok(acc: u32) -> bool {
    fold(acc) == 0xffff
}

/// The checksum value that would have been correct: `!sum` with the field taken as zero.
fn expected(acc_without_field: u32) -> u16 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

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
        let path =
            std::env::temp_dir().join(format!("svct-{}-unit-{name}.pcap", std::process::id()));
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
}
