//! The oracle: [`check`] classifies what a program did with a frame ([`Class`]) from the bytes
//! alone (checksums, translations, generated ICMP errors and RSTs), never from the program's
//! counters or maps.

use svc_common::{PROTO_TCP, PROTO_UDP};

use super::{services::ServiceSet, Target};
use crate::fixtures::*;

/// What the oracle made of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// Output bytes equal the input.
    Untouched,
    /// Addresses/ports rewritten in place.
    Translated,
    /// A TCP RST built from the input.
    GeneratedRst,
    /// An ICMP error (port unreachable, fragmentation needed) built from the input.
    GeneratedIcmp,
}

/// One's-complement sum of `data` (RFC 1071, odd length padded), folded, not complemented.
fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for data in parts {
        for c in data.chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        // Each part is an even length except possibly the last one.
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Equal as one's-complement numbers (0x0000 and 0xffff are both zero).
fn ones_eq(a: u16, b: u16) -> bool {
    a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0)
}

pub(super) fn be16(f: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([f[off], f[off + 1]])
}

/// Whether the frame is certainly nothing to the datapath: no address of a frontend, backend or
/// the node appears anywhere after its Ethernet addresses, so no frontend, conntrack or fragment
/// entry can match whatever the program parses (conntrack keys always hold a frontend or
/// backend address). The MACs are skipped: no lookup uses them, and the fixtures' MACs embed
/// IPv4 addresses (`NODE_MAC` ends in 172.18.0.2, `CLIENT_MAC` in 10.244.1.2).
pub fn unrelated(set: &ServiceSet, f: &[u8]) -> bool {
    !f[12..]
        .windows(4)
        .any(|w| set.related.contains(&[w[0], w[1], w[2], w[3]]))
}

/// Whether the TCP/UDP checksum of a whole, unfragmented datagram in `f` (IHL 5) verifies with
/// RFC 1071 over the pseudo-header; `None` when it cannot be judged.
fn l4_valid(f: &[u8]) -> Option<bool> {
    if f.len() < 34 || f[14] != 0x45 || be16(f, 20) & 0x3fff != 0 {
        return None;
    }
    let total = usize::from(be16(f, 16));
    if total < 20 || 14 + total > f.len() {
        return None;
    }
    let proto = f[23];
    let l4 = &f[34..14 + total];
    let min = if proto == PROTO_TCP { 20 } else { 8 };
    if (proto != PROTO_TCP && proto != PROTO_UDP) || l4.len() < min {
        return None;
    }
    if proto == PROTO_UDP && be16(l4, 6) == 0 {
        return None;
    }
    let len = (l4.len() as u16).to_be_bytes();
    Some(rfc1071_parts(&[&f[26..34], &[0, proto], &len, l4]) == 0)
}

fn rfc1071_parts(parts: &[&[u8]]) -> u16 {
    !ones_sum(parts)
}

/// Checks one run. `Err` names what is wrong.
///
/// (a) A frame that is [`unrelated`] must be passed with its bytes untouched.
/// (b) A changed frame is either built by the program (TCP RST or ICMP error answering the
///     input: every checksum valid, addressed back to the input's source, quoting/answering the
///     input as sent) or the input translated in place: same length, only the bytes NAT may
///     write differ (MACs; IPv4 TTL (by at most one), checksum, source, destination; for
///     TCP/UDP with a header the ports and the L4 checksum; for ICMP errors the ICMP checksum
///     and the quoted source, destination, IPv4 checksum, ports and UDP checksum), and every
///     checksum is consistent: the one's-complement sums the IPv4, TCP/UDP (with pseudo-header),
///     ICMP and quoted checksums cover are what they were, so a valid checksum stays valid and
///     none is left behind by a rewrite; a zero UDP checksum stays zero and no other becomes zero.
pub fn check(
    set: &ServiceSet,
    t: Target,
    input: &[u8],
    verdict: u32,
    output: &[u8],
) -> Result<Class, String> {
    let vname = t.verdict_name(verdict).ok_or_else(|| {
        format!(
            "verdict {} is none of pass/drop/redirect/tx",
            verdict as i32
        )
    })?;
    if unrelated(set, input) {
        if verdict != t.pass() {
            return Err(format!("unrelated frame got verdict {vname}, not pass"));
        }
        if output != input {
            return Err("unrelated frame was modified".into());
        }
        return Ok(Class::Untouched);
    }
    if output == input {
        return Ok(Class::Untouched);
    }
    if output.len() < 34 || output[12..14] != [0x08, 0x00] || output[14] >> 4 != 4 {
        return Err("a changed frame is not Ethernet/IPv4".into());
    }
    let in_ip = input.len() >= 34 && input[12..14] == [0x08, 0x00];
    if !in_ip {
        return Err("a frame that was not Ethernet/IPv4 was changed".into());
    }
    let (in_proto, out_proto) = (input[23], output[23]);
    if out_proto == 1 && in_proto != 1 {
        return check_generated_icmp(input, output).map(|_| Class::GeneratedIcmp);
    }
    if in_proto == PROTO_TCP
        && out_proto == PROTO_TCP
        && input.len() >= 54
        && output.len() >= 54
        && output[47] & TCP_RST != 0
        && input[47] & TCP_RST == 0
    {
        return check_generated_rst(input, output).map(|_| Class::GeneratedRst);
    }
    check_translation(input, output)
}

fn check_generated_icmp(input: &[u8], output: &[u8]) -> Result<(), String> {
    if output.len() < 42 || output[14] != 0x45 || rfc1071(&output[14..34]) != 0 {
        return Err("generated ICMP error: outer IPv4 header invalid".into());
    }
    let total = usize::from(be16(output, 16));
    if total < 28 || 14 + total > output.len() || rfc1071(&output[34..14 + total]) != 0 {
        return Err("generated ICMP error: ICMP checksum invalid".into());
    }
    // The quote is the input as sent (checked below), so its checksums are the input's: they
    // must verify when the input's did.
    // (A fragment's L4 checksum covers the whole datagram: the quote cannot verify it.)
    let fragment = be16(input, 20) & 0x3fff != 0;
    if rfc1071(&input[14..34]) == 0
        && !fragment
        && l4_valid(input) != Some(false)
        && icmp_verifiable(output)
    {
        verify_icmp_error_checksums(output).map_err(|e| format!("generated ICMP error: {e}"))?;
    }
    if output[30..34] != input[26..30] {
        return Err("generated ICMP error is not addressed to the input's source".into());
    }
    let total = usize::from(be16(output, 16));
    if 14 + total != output.len() {
        return Err(format!(
            "generated ICMP error: IPv4 total length {total} for a {}-byte frame",
            output.len()
        ));
    }
    let t = output[34];
    // Destination unreachable (a reject, fragmentation needed), or time exceeded in transit
    // for a packet whose TTL would expire (to a NodePort: the datapath answers for the
    // stack), never about a later fragment (RFC 1122 §3.2.2, as `icmp_send` refuses).
    let expiring = input[22] <= 1 && be16(input, 20) & 0x1fff == 0;
    if t != 3 && !(t == 11 && output[35] == 0 && expiring) {
        return Err(format!(
            "generated ICMP type {t} code {} is neither destination unreachable nor time \
             exceeded in transit for an expiring first packet (input TTL {})",
            output[35], input[22]
        ));
    }
    // The quote: the offending IPv4 header and the start of its payload, as the sender sent it.
    let quote = &output[42..];
    let n = quote.len().min(input.len() - 14);
    if quote.len() < 28 || quote[..n] != input[14..14 + n] {
        return Err("generated ICMP error does not quote the input as it was sent".into());
    }
    Ok(())
}

fn check_generated_rst(input: &[u8], output: &[u8]) -> Result<(), String> {
    if rfc1071(&output[14..34]) != 0 {
        return Err("generated RST: IPv4 checksum invalid".into());
    }
    if output[26..30] != input[30..34] || output[30..34] != input[26..30] {
        return Err("generated RST: addresses are not the input's swapped".into());
    }
    if output[34..36] != input[36..38] || output[36..38] != input[34..36] {
        return Err("generated RST: ports are not the input's swapped".into());
    }
    match l4_valid(output) {
        Some(true) => Ok(()),
        Some(false) => Err("generated RST: TCP checksum invalid".into()),
        None => Err("generated RST: not a whole TCP segment".into()),
    }
}

fn check_translation(input: &[u8], output: &[u8]) -> Result<Class, String> {
    if input.len() != output.len() {
        return Err(format!(
            "translated frame changed length {} -> {}",
            input.len(),
            output.len()
        ));
    }
    if input[14] != 0x45 {
        return Err(format!(
            "a frame with IHL byte {:#04x} was rewritten",
            input[14]
        ));
    }
    let len = input.len();
    let proto = input[23];
    let frag_off = be16(input, 20) & 0x1fff;
    let mut allowed: Vec<std::ops::Range<usize>> = vec![0..12, 22..23, 24..34];
    let l4 = frag_off == 0 && (proto == PROTO_TCP || proto == PROTO_UDP);
    let icmp = frag_off == 0 && proto == 1;
    if l4 {
        allowed.push(34..38);
        allowed.push(if proto == PROTO_TCP { 50..52 } else { 40..42 });
    }
    if icmp {
        // ICMP checksum; quoted checksum, addresses; quoted ports; quoted UDP checksum.
        allowed.push(36..38);
        allowed.push(52..62);
        allowed.push(62..66);
        if len > 51 && input[51] == PROTO_UDP {
            allowed.push(68..70);
        }
        // The quoted TCP checksum, when the frame holds the whole quoted TCP header (what
        // netfilter's `tcp_manip_pkt` requires to update it).
        if len >= WHOLE_QUOTED_TCP && input[51] == PROTO_TCP {
            allowed.push(78..80);
        }
    }
    let bad: Vec<usize> = (0..len)
        .filter(|&i| input[i] != output[i] && !allowed.iter().any(|r| r.contains(&i)))
        .collect();
    if !bad.is_empty() {
        return Err(format!(
            "bytes NAT may not write changed at offsets {bad:?}"
        ));
    }
    if output[22] != input[22] && output[22].wrapping_add(1) != input[22] {
        return Err(format!("TTL {} -> {}", input[22], output[22]));
    }
    if !ones_eq(ones_sum(&[&input[14..34]]), ones_sum(&[&output[14..34]])) {
        return Err("IPv4 header checksum not updated to match the rewrite".into());
    }
    if l4 {
        let csum_off = if proto == PROTO_TCP { 50 } else { 40 };
        if len >= csum_off + 2 {
            let (ci, co) = (be16(input, csum_off), be16(output, csum_off));
            if proto == PROTO_UDP && ci == 0 {
                if co != 0 {
                    return Err(format!("UDP checksum 0 (none) became {co:#06x}"));
                }
            } else {
                let zeroed = proto == PROTO_UDP && co == 0;
                let si = ones_sum(&[&input[26..34], &input[34..]]);
                let so = ones_sum(&[&output[26..34], &output[34..]]);
                if !ones_eq(si, so) {
                    return Err(format!(
                        "{} checksum not updated to match the rewrite ({ci:#06x} -> {co:#06x})",
                        if proto == PROTO_TCP { "TCP" } else { "UDP" }
                    ));
                }
                if zeroed {
                    // The sum is right (checked above) but 0 means "no checksum" in UDP: RFC 768
                    // transmits a computed 0 as 0xffff (defect 1 of docs/RELIABILITY.md).
                    return Err(format!(
                        "UDP checksum {ci:#06x} became 0 (none), not 0xffff"
                    ));
                }
                if l4_valid(input) == Some(true) && l4_valid(output) != Some(true) {
                    return Err("L4 checksum valid in the input, invalid in the output".into());
                }
            }
        } else if input[34..] != output[34..] {
            return Err("L4 bytes rewritten without the L4 checksum in the frame".into());
        }
    }
    if icmp && len >= 42 {
        if !ones_eq(ones_sum(&[&input[34..]]), ones_sum(&[&output[34..]])) {
            return Err("ICMP checksum not updated to match the rewrite".into());
        }
        if len >= 62 && !ones_eq(ones_sum(&[&input[42..62]]), ones_sum(&[&output[42..62]])) {
            return Err("quoted IPv4 checksum not updated to match the rewrite".into());
        }
        if len >= 70 && input[51] == PROTO_UDP && be16(input, 68) != 0 {
            let si = ones_sum(&[&input[54..62], &input[62..]]);
            let so = ones_sum(&[&output[54..62], &output[62..]]);
            if !ones_eq(si, so) {
                return Err("quoted UDP checksum not updated to match the rewrite".into());
            }
        }
        if len >= WHOLE_QUOTED_TCP && input[51] == PROTO_TCP {
            let si = ones_sum(&[&input[54..62], &input[62..]]);
            let so = ones_sum(&[&output[54..62], &output[62..]]);
            if !ones_eq(si, so) {
                return Err("quoted TCP checksum not updated to match the rewrite".into());
            }
        }
        if icmp_verifiable(input) && verify_icmp_error_checksums(input).is_ok() {
            if let Err(e) = verify_icmp_error_checksums(output) {
                return Err(format!(
                    "ICMP error valid in the input, not in the output: {e}"
                ));
            }
        }
    }
    Ok(Class::Translated)
}

/// Frame length from which an ICMP error (no IP options) quotes the whole TCP header: 14 + 20
/// + 8 + 20 + 20.
const WHOLE_QUOTED_TCP: usize = 82;

/// Whether [`verify_icmp_error_checksums`] can judge `f` (it expects an IPv4 total length that
/// holds an ICMP header and a quoted IPv4 header, within the frame).
fn icmp_verifiable(f: &[u8]) -> bool {
    if f.len() < 14 + 20 + 8 + 20 {
        return false;
    }
    let total = usize::from(be16(f, 16));
    total >= 20 + 8 + 20 && 14 + total <= f.len()
}
