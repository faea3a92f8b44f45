//! The IPv6 half of [`super::verify_checksums`]: walks the extension headers of every IPv6
//! packet, reassembles fragments (RFC 8200 §4.5) and recomputes TCP, UDP and ICMPv6 checksums
//! over the RFC 8200 §8.1 pseudo-header (source, final destination, upper-layer length, next
//! header). IPv6 has no header checksum, and a UDP checksum of 0 is an error, not "none".
//! Neighbour discovery and MLD are verified like everything else but counted apart
//! ([`Report::nd_mld`]): every IPv6 link sends them by itself.

use std::{collections::HashMap, net::Ipv6Addr};

use super::verify::{expected, sum16, sums_ok, Partial, Reassembled, Report};

/// Fragments of IPv6 datagrams being reassembled, keyed by (source, destination, id).
pub(super) type Partials6 = HashMap<(Ipv6Addr, Ipv6Addr, u32), Partial>;

const HOP_BY_HOP: u8 = 0;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AH: u8 = 51;
const ICMPV6: u8 = 58;
const DEST_OPTS: u8 = 60;

/// Where the upper-layer header starts, once the extension headers are walked.
enum Walk<'a> {
    /// `next_header` and the bytes from the upper-layer header to the end of the payload.
    Upper(u8, &'a [u8]),
    /// A fragment header (not an atomic fragment): its fields and the fragmentable part.
    Fragment {
        next_header: u8,
        offset: usize,
        more: bool,
        id: u32,
        data: &'a [u8],
    },
    /// The final destination is not known from the headers (a routing header of a type we do
    /// not read, with segments left).
    Unknown(String),
    Malformed(String),
}

/// Walks the extension headers from `nh` at the start of `p`, updating `final_dst` from a
/// routing header (the pseudo-header takes the final destination, RFC 8200 §8.1).
fn walk<'a>(mut nh: u8, p: &'a [u8], final_dst: &mut Ipv6Addr) -> Walk<'a> {
    let mut off = 0;
    loop {
        let rest = &p[off..];
        match nh {
            HOP_BY_HOP | ROUTING | DEST_OPTS | AH => {
                if rest.len() < 8 {
                    return Walk::Malformed(format!("extension header {nh} truncated"));
                }
                let len = if nh == AH {
                    (usize::from(rest[1]) + 2) * 4
                } else {
                    (usize::from(rest[1]) + 1) * 8
                };
                if rest.len() < len {
                    return Walk::Malformed(format!(
                        "extension header {nh} of {len} bytes, {} left",
                        rest.len()
                    ));
                }
                if nh == ROUTING && rest[3] > 0 {
                    // Segments left: the destination field holds an intermediate hop.
                    match rest[2] {
                        // Type 2 (mobility) carries the one home address; type 4 (segment
                        // routing) lists the final segment first.
                        2 | 4 if len >= 24 => {
                            let a: [u8; 16] = rest[8..24].try_into().expect("16 bytes");
                            *final_dst = Ipv6Addr::from(a);
                        }
                        t => {
                            return Walk::Unknown(format!(
                                "routing header type {t} with {} segments left",
                                rest[3]
                            ))
                        }
                    }
                }
                nh = rest[0];
                off += len;
            }
            FRAGMENT => {
                if rest.len() < 8 {
                    return Walk::Malformed("fragment header truncated".into());
                }
                let field = u16::from_be_bytes([rest[2], rest[3]]);
                let offset = usize::from(field & 0xfff8);
                let more = field & 1 != 0;
                if offset == 0 && !more {
                    // An atomic fragment (RFC 6946): a whole datagram, read on.
                    nh = rest[0];
                    off += 8;
                    continue;
                }
                return Walk::Fragment {
                    next_header: rest[0],
                    offset,
                    more,
                    id: u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]),
                    data: &rest[8..],
                };
            }
            _ => return Walk::Upper(nh, rest),
        }
    }
}

/// Checks one IPv6 packet (`ip`: from the IPv6 header on).
pub(super) fn check_ipv6(n: u64, ip: &[u8], partial: &mut Partials6, r: &mut Report) {
    r.ipv6 += 1;
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        r.bad_ip.push(format!(
            "#{n}: malformed IPv6 header ({} bytes, byte 0 {:#04x})",
            ip.len(),
            ip.first().copied().unwrap_or(0)
        ));
        return;
    }
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).expect("16 bytes"));
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).expect("16 bytes"));
    let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if plen == 0 || ip.len() < 40 + plen {
        // A jumbogram (hop-by-hop jumbo option) or a packet captured short.
        r.l4_unverifiable6 += 1;
        return;
    }
    let mut final_dst = dst;
    match walk(ip[6], &ip[40..40 + plen], &mut final_dst) {
        Walk::Upper(nh, l4) => check_l4(&format!("#{n}"), src, final_dst, nh, l4, true, r),
        Walk::Unknown(_) => r.l4_unverifiable6 += 1,
        Walk::Malformed(why) => r
            .bad_ip
            .push(format!("#{n}: IPv6 {src} -> {dst}: malformed: {why}")),
        Walk::Fragment {
            next_header,
            offset,
            more,
            id,
            data,
        } => {
            r.fragments6 += 1;
            r.l4_unverifiable6 += 1;
            let key = (src, dst, id);
            let p = partial.entry(key).or_insert_with(|| Partial::new(n));
            if offset == 0 {
                p.next_header = Some(next_header);
            }
            p.final_dst = Some(final_dst);
            let (whole, conflict) = p.add(offset, more, data.to_vec());
            if let Some(c) = conflict {
                r.bad_ip.push(format!(
                    "#{n}: IPv6 fragment {src} -> {dst} id {id:#010x}: {c}"
                ));
            }
            if let Some(whole) = whole {
                let p = partial.remove(&key).expect("present");
                reassembled(n, src, dst, id, &p, &whole, r);
            }
        }
    }
}

/// Verifies the upper-layer checksum of a datagram reassembled from its fragments.
fn reassembled(
    n: u64,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    id: u32,
    p: &Partial,
    whole: &[u8],
    r: &mut Report,
) {
    r.reassembled6 += 1;
    let what = format!(
        "#{}..#{n}: reassembled (id {id:#010x}, {} fragments)",
        p.first_seen(),
        p.count()
    );
    let mut final_dst = p.final_dst.unwrap_or(dst);
    let bad_before = r.bad_l4.len();
    let (proto, l4) = match p.next_header {
        None => {
            r.bad_ip.push(format!(
                "{what} IPv6 {src} -> {dst}: no fragment at offset 0"
            ));
            (0, &whole[..0])
        }
        // The fragmentable part may start with more extension headers (destination options).
        Some(nh) => match walk(nh, whole, &mut final_dst) {
            Walk::Upper(proto, l4) => {
                // Counted in `reassembled6`, not with the single packets (as for IPv4).
                check_l4(&what, src, final_dst, proto, l4, false, r);
                (proto, l4)
            }
            Walk::Fragment { .. } => {
                r.bad_ip.push(format!(
                    "{what} IPv6 {src} -> {dst}: a fragment inside a fragment"
                ));
                (FRAGMENT, &whole[..0])
            }
            Walk::Unknown(why) | Walk::Malformed(why) => {
                r.bad_ip.push(format!("{what} IPv6 {src} -> {dst}: {why}"));
                (0, &whole[..0])
            }
        },
    };
    let ports = matches!(proto, TCP | UDP) && l4.len() >= 4;
    let port = |at: usize| {
        if ports {
            u16::from_be_bytes([l4[at], l4[at + 1]])
        } else {
            0
        }
    };
    r.datagrams6.push(Reassembled {
        src,
        dst: final_dst,
        proto,
        src_port: port(0),
        dst_port: port(2),
        len: l4.len(),
        fragments: p.count(),
        checksum_ok: r.bad_l4.len() == bad_before && !l4.is_empty(),
    });
}

/// Verifies a TCP, UDP or ICMPv6 checksum over the pseudo-header; other upper layers are left
/// alone. `what` names the packet in messages (`#n`, or the packet range of a reassembly);
/// `count`: add it to the per-protocol counters.
fn check_l4(
    what: &str,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    proto: u8,
    l4: &[u8],
    count: bool,
    r: &mut Report,
) {
    let (name, csum_at, min_len) = match proto {
        TCP => ("TCP", 16, 20),
        UDP => ("UDP", 6, 8),
        ICMPV6 => ("ICMPv6", 2, 4),
        _ => return,
    };
    if l4.len() < min_len {
        r.bad_l4.push(format!(
            "{what}: {name} {src} -> {dst}: truncated header ({} bytes)",
            l4.len()
        ));
        return;
    }
    let field = u16::from_be_bytes([l4[csum_at], l4[csum_at + 1]]);
    let detail = if proto == ICMPV6 {
        format!("type {} code {}", l4[0], l4[1])
    } else {
        format!(
            "ports {} -> {}",
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]])
        )
    };
    match proto {
        _ if !count => {}
        TCP => r.tcp6 += 1,
        UDP => r.udp6 += 1,
        // Neighbour discovery (RS, RA, NS, NA, redirect) and MLD (query, v1 report, done,
        // v2 report).
        _ if matches!(l4[0], 130..=137 | 143) => r.nd_mld += 1,
        _ => r.icmp6 += 1,
    }
    // RFC 8200 §8.1: source, destination, upper-layer length (32 bits), 3 zero bytes, next
    // header; the length is that of the upper-layer header and data.
    let len = l4.len() as u32;
    let mut pseudo = sum16(0, &src.octets());
    pseudo = sum16(pseudo, &dst.octets());
    pseudo += (len >> 16) + (len & 0xffff) + u32::from(proto);
    let acc = sum16(pseudo, l4);
    let correct = expected(acc + 0xffff - u32::from(field));
    if proto == UDP && field == 0 {
        r.bad_l4.push(format!(
            "{what}: UDP {src} -> {dst} {detail} len {}: checksum 0, which IPv6 forbids \
             (RFC 8200 §8.1), expected {correct:#06x}",
            l4.len()
        ));
    } else if !sums_ok(acc) {
        r.bad_l4.push(format!(
            "{what}: {name} {src} -> {dst} {detail} len {}: checksum {field:#06x}, expected {correct:#06x}",
            l4.len()
        ));
    }
    if proto == UDP {
        let udp_len = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
        if udp_len != l4.len() {
            r.bad_l4.push(format!(
                "{what}: UDP {src} -> {dst} {detail}: UDP length {udp_len}, datagram {} bytes",
                l4.len()
            ));
        }
    }
}

/// Reports every IPv6 datagram of which some fragment never appeared.
pub(super) fn report_incomplete(partial: Partials6, r: &mut Report) {
    let mut left: Vec<_> = partial.into_iter().collect();
    left.sort_by_key(|(_, p)| p.first_seen());
    for ((src, dst, id), p) in left {
        r.incomplete.push(format!(
            "#{}: fragmented IPv6 {src} -> {dst} id {id:#010x}: {} — never completed",
            p.first_seen(),
            p.describe()
        ));
    }
}
