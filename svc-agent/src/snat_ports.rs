//! Which source ports source NAT (remote backends of external traffic) and the remapping of a
//! clashing client port allocate from: `--snat-port-range`, or a default computed from the
//! node. The datapath gets them as the load-time global `svc_common::GLOBAL_SNAT_PORTS`.
//!
//! The rules, and why:
//! - never the node's ephemeral range (`net.ipv4.ip_local_port_range`): the node's own
//!   sockets take their ports from it, and the datapath does not see their flows (no
//!   conntrack entry of ours names them), so an SNAT tuple could be identical to a node
//!   socket's and the backend's replies would go to the wrong one;
//! - never the NodePort range (30000–32767): a reply tuple whose port is a NodePort could be
//!   mistaken for a new flow to that NodePort, and the forward and reply tuples of
//!   `svc_common`'s conntrack must never coincide;
//! - never 0–1023: privileged ports, where the node's well-known services listen;
//! - anything else is acceptable, including ports below 30000 where node services may
//!   listen: a collision needs a node socket bound to that exact port *and* talking to that
//!   exact backend ip:port, which a listener (it is the one connected to) does not do.
//!
//! The default is the complement of those three within 1–65535, keeping the two largest
//! pieces (the datapath holds two ranges): with Linux's defaults 1024–29999 and 61000–65535,
//! 33512 ports, 7.4 times the former fixed 61000–65535. Every SNAT flow to one backend
//! ip:port holds one port for its lifetime (30 s after a UDP reply), so the range bounds the
//! rate of new flows per backend.
use std::ops::RangeInclusive;

use svc_common::SnatPorts;

/// Kubernetes' default NodePort range (`--service-node-port-range` of the API server).
pub const NODEPORT_RANGE: RangeInclusive<u16> = 30_000..=32_767;

/// Ports below this are privileged (and where well-known node services listen).
const FIRST_UNPRIVILEGED: u16 = 1024;

/// Where the node's ephemeral range is read, in the agent's own network namespace (the
/// node's: the agent runs with host networking).
pub const EPHEMERAL_SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// `--snat-port-range LOW-HIGH[,LOW-HIGH]` as given (checked against the node later, by
/// [`choose`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnatRangeArg(pub Vec<RangeInclusive<u16>>);

impl std::str::FromStr for SnatRangeArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let (low, high) = part
                .split_once('-')
                .ok_or_else(|| format!("{part:?}: expected LOW-HIGH, e.g. 1024-29999"))?;
            let port = |t: &str| -> Result<u16, String> {
                let n: u32 = t
                    .trim()
                    .parse()
                    .map_err(|_| format!("{part:?}: {t:?} is not a port number"))?;
                u16::try_from(n)
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| format!("{part:?}: port {n} is not in 1–65535"))
            };
            let (low, high) = (port(low)?, port(high)?);
            if low > high {
                return Err(format!("{part:?}: empty range (LOW above HIGH)"));
            }
            ranges.push(low..=high);
        }
        if ranges.len() > 2 {
            return Err(format!(
                "{} ranges given; the datapath holds at most two",
                ranges.len()
            ));
        }
        if let [a, b] = &ranges[..] {
            if a.start() <= b.end() && b.start() <= a.end() {
                return Err(format!("{a:?} and {b:?} overlap"));
            }
        }
        Ok(Self(ranges))
    }
}

/// Parses the contents of `ip_local_port_range` ("32768\t60999\n").
pub fn parse_ephemeral(text: &str) -> Result<RangeInclusive<u16>, String> {
    let nums: Vec<u16> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{text:?}: {e}"))?;
    match nums[..] {
        [low, high] if low <= high => Ok(low..=high),
        _ => Err(format!("{text:?}: expected two ports, low then high")),
    }
}

fn overlaps(a: &RangeInclusive<u16>, b: &RangeInclusive<u16>) -> bool {
    a.start() <= b.end() && b.start() <= a.end()
}

fn to_snat_ports(ranges: &[RangeInclusive<u16>]) -> SnatPorts {
    let mut ports = SnatPorts {
        first: [0; 2],
        count: [0; 2],
    };
    for (k, r) in ranges.iter().take(2).enumerate() {
        ports.first[k] = *r.start();
        // 1–65535 is the largest range: 65535 ports fit a u16.
        ports.count[k] = r.end() - r.start() + 1;
    }
    ports
}

/// The default: the complement of {0–1023, `nodeport`, `ephemeral`} within 1–65535, its two
/// largest pieces (the lower one first on a tie), in port order. `None` when nothing is left.
pub fn default_ranges(
    ephemeral: &RangeInclusive<u16>,
    nodeport: &RangeInclusive<u16>,
) -> Option<SnatPorts> {
    let mut excluded = [
        0..=FIRST_UNPRIVILEGED - 1,
        nodeport.clone(),
        ephemeral.clone(),
    ];
    excluded.sort_by_key(|r| *r.start());
    let mut pieces: Vec<RangeInclusive<u16>> = Vec::new();
    // `next`: the first port not yet covered by an excluded range (u32: may pass 65535).
    let mut next: u32 = 1;
    for r in &excluded {
        if u32::from(*r.start()) > next {
            pieces.push(next as u16..=r.start() - 1);
        }
        next = next.max(u32::from(*r.end()) + 1);
    }
    if next <= 65_535 {
        pieces.push(next as u16..=65_535);
    }
    // Largest first; a stable sort keeps the lower piece first on a tie.
    pieces.sort_by_key(|r| std::cmp::Reverse(r.end() - r.start()));
    pieces.truncate(2);
    pieces.sort_by_key(|r| *r.start());
    (!pieces.is_empty()).then(|| to_snat_ports(&pieces))
}

/// The ports to use: `given` (`--snat-port-range`) checked against the node's ephemeral range
/// and the NodePort range, or [`default_ranges`] without it. The error names the flag and the
/// overlap; the agent fails before loading anything.
pub fn choose(
    given: Option<&SnatRangeArg>,
    ephemeral: &RangeInclusive<u16>,
    nodeport: &RangeInclusive<u16>,
) -> Result<SnatPorts, String> {
    let Some(SnatRangeArg(ranges)) = given else {
        return default_ranges(ephemeral, nodeport).ok_or_else(|| {
            format!(
                "no source ports are left for SNAT outside 0–1023, the NodePort range \
                 {nodeport:?} and the ephemeral range {ephemeral:?} \
                 (net.ipv4.ip_local_port_range): narrow the ephemeral range or set \
                 --snat-port-range"
            )
        });
    };
    if ranges.is_empty() {
        return Err("--snat-port-range: no range given".into());
    }
    for r in ranges {
        if overlaps(r, ephemeral) {
            return Err(format!(
                "--snat-port-range {}-{} overlaps this node's ephemeral range {}-{} \
                 (net.ipv4.ip_local_port_range): node sockets take those ports and their \
                 flows are invisible to the datapath",
                r.start(),
                r.end(),
                ephemeral.start(),
                ephemeral.end()
            ));
        }
        if overlaps(r, nodeport) {
            return Err(format!(
                "--snat-port-range {}-{} overlaps the NodePort range {}-{}",
                r.start(),
                r.end(),
                nodeport.start(),
                nodeport.end()
            ));
        }
    }
    Ok(to_snat_ports(ranges))
}

/// Human form of `ports`, e.g. `1024-29999,61000-65535`.
pub fn describe(ports: &SnatPorts) -> String {
    (0..2)
        .filter_map(|k| ports.range(k))
        .map(|r| format!("{}-{}", r.start(), r.end()))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(ranges: &[RangeInclusive<u16>]) -> SnatPorts {
        to_snat_ports(ranges)
    }

    #[test]
    fn default_is_the_two_largest_safe_pieces() {
        let np = NODEPORT_RANGE;
        for (ephemeral, want) in [
            // Linux's default: 1024–29999 and 61000–65535, 33512 ports.
            (32_768..=60_999, Some(sp(&[1024..=29_999, 61_000..=65_535]))),
            // Ephemeral range covering everything above the NodePorts: one piece is left.
            (32_768..=65_535, Some(sp(&[1024..=29_999]))),
            // Ephemeral range below the NodePort range: three pieces (1024–9999 the smallest),
            // the two largest kept.
            (
                10_000..=20_000,
                Some(sp(&[20_001..=29_999, 32_768..=65_535])),
            ),
            // A one-port ephemeral range inside the top piece splits it.
            (50_000..=50_000, Some(sp(&[1024..=29_999, 32_768..=49_999]))),
            // Ephemeral range overlapping the NodePort range.
            (31_000..=40_000, Some(sp(&[1024..=29_999, 40_001..=65_535]))),
            // Ephemeral range covering everything unprivileged: nothing left.
            (1024..=65_535, None),
            // Covering only the top: the piece below NodePorts remains.
            (20_000..=65_535, Some(sp(&[1024..=19_999]))),
        ] {
            let got = default_ranges(&ephemeral, &np);
            assert_eq!(got, want, "ephemeral {ephemeral:?}");
        }
        let linux = default_ranges(&(32_768..=60_999), &np).expect("ports left");
        assert_eq!(linux.total(), 33_512);
        assert_eq!(describe(&linux), "1024-29999,61000-65535");
    }

    #[test]
    fn flag_parses_one_or_two_ranges() {
        assert_eq!(
            "61000-65535".parse::<SnatRangeArg>(),
            Ok(SnatRangeArg(vec![61_000..=65_535]))
        );
        assert_eq!(
            "1024-29999, 61000-65535".parse::<SnatRangeArg>(),
            Ok(SnatRangeArg(vec![1024..=29_999, 61_000..=65_535]))
        );
        assert_eq!(
            "5000-5000".parse::<SnatRangeArg>(),
            Ok(SnatRangeArg(vec![5000..=5000]))
        );
        for bad in [
            "",
            "61000",
            "65535-61000",
            "61000-65536",
            "0-100",
            "a-b",
            "1-2,3-4,5-6",
            "1024-2000,1500-3000",
            "-5",
        ] {
            assert!(
                bad.parse::<SnatRangeArg>().is_err(),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn given_ranges_are_checked_against_the_node() {
        let eph = 32_768..=60_999;
        let np = NODEPORT_RANGE;
        let arg = |s: &str| s.parse::<SnatRangeArg>().unwrap();
        assert_eq!(
            choose(Some(&arg("61000-65535")), &eph, &np),
            Ok(SnatPorts::DEFAULT)
        );
        assert_eq!(
            choose(Some(&arg("2000-2999,61000-61999")), &eph, &np),
            Ok(sp(&[2000..=2999, 61_000..=61_999]))
        );
        let err = choose(Some(&arg("60000-65535")), &eph, &np).unwrap_err();
        assert!(
            err.contains("--snat-port-range 60000-65535") && err.contains("32768-60999"),
            "{err}"
        );
        let err = choose(Some(&arg("20000-30000")), &eph, &np).unwrap_err();
        assert!(err.contains("NodePort range 30000-32767"), "{err}");
        assert_eq!(
            choose(None, &eph, &np),
            Ok(sp(&[1024..=29_999, 61_000..=65_535]))
        );
        assert!(choose(None, &(1..=65_535), &np).is_err());
    }

    #[test]
    fn ephemeral_sysctl_parses() {
        assert_eq!(parse_ephemeral("32768\t60999\n"), Ok(32_768..=60_999));
        assert!(parse_ephemeral("60999 32768").is_err());
        assert!(parse_ephemeral("32768").is_err());
        assert!(parse_ephemeral("x y").is_err());
    }
}
