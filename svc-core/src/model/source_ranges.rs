//! `spec.loadBalancerSourceRanges`: each entry read as kube-proxy reads it, and what the list
//! means for a Service's LoadBalancer IP frontends ([`SourceRanges::for_lb_ip`]: flags and
//! prefixes). The rules are "Source ranges" in the `model` module docs.

use std::net::{Ipv4Addr, Ipv6Addr};

use svc_common::{FRONTEND_F_DENY_NODE, FRONTEND_F_SOURCE_RANGES};

use super::slim_service::SlimSpec;
use super::{cidr, Ipv4Net, Ipv6Net, ModelFamily, NodeContext, Problem};

/// A Service's `loadBalancerSourceRanges`, as they apply to its LB IP frontends (see "Source
/// ranges" in the module docs), per family: each family's LB IPs are filtered by that
/// family's prefixes alone (kube-proxy's `MapCIDRsByIPFamily`, one proxier per family).
pub(super) struct SourceRanges {
    v4: FamilyRanges<[u8; 4]>,
    v6: FamilyRanges<svc_common::Addr6>,
}

/// The prefixes of one family.
struct FamilyRanges<A: ModelFamily> {
    /// Sorted and de-duplicated; empty: no filtering.
    allowed: Vec<A::Net>,
    /// No prefix contains a node address of the family: the node's own processes are refused.
    deny_node: bool,
}

impl<A: ModelFamily> FamilyRanges<A> {
    fn of(mut allowed: Vec<A::Net>, node: &NodeContext) -> Self {
        allowed.sort_unstable();
        allowed.dedup();
        let deny_node = !A::node_ips(node)
            .iter()
            .any(|ip| allowed.iter().any(|c| A::net_contains(c, ip)));
        Self { allowed, deny_node }
    }

    fn for_lb_ip(&self) -> (u32, Vec<A::Net>) {
        if self.allowed.is_empty() {
            return (0, Vec::new());
        }
        let mut flags = FRONTEND_F_SOURCE_RANGES;
        if self.deny_node {
            flags |= FRONTEND_F_DENY_NODE;
        }
        (flags, self.allowed.clone())
    }
}

/// A parsed `loadBalancerSourceRanges` entry.
enum Range {
    V4(Ipv4Net),
    V6(Ipv6Net),
}

impl SourceRanges {
    pub(super) fn of(
        spec: &SlimSpec,
        node: &NodeContext,
        object: &str,
        problems: &mut Vec<Problem>,
    ) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (i, text) in spec.source_ranges.iter().enumerate() {
            match parse_source_range(text) {
                Ok(Range::V4(cidr)) => v4.push(cidr),
                Ok(Range::V6(cidr)) => v6.push(cidr),
                Err(why) => problems.push(Problem::new(
                    object,
                    format!("spec.loadBalancerSourceRanges[{i}]"),
                    format!("{text:?} is not a CIDR ({why}); ignored"),
                )),
            }
        }
        Self {
            v4: FamilyRanges::of(v4, node),
            v6: FamilyRanges::of(v6, node),
        }
    }

    /// The extra flags and the prefixes of an IPv4 LB IP frontend.
    pub(super) fn for_lb_ip4(&self) -> (u32, Vec<Ipv4Net>) {
        self.v4.for_lb_ip()
    }

    /// The extra flags and the prefixes of an IPv6 LB IP frontend.
    pub(super) fn for_lb_ip6(&self) -> (u32, Vec<Ipv6Net>) {
        self.v6.for_lb_ip()
    }
}

/// One `loadBalancerSourceRanges` entry as kube-proxy reads it (`MapCIDRsByIPFamily`:
/// whitespace trimmed, netutils' `ParseCIDRSloppy`, so host bits are cleared and IPv4 octets
/// may have leading zeros; an IPv6 prefix is read as Go's `ParseCIDR` reads it, host bits
/// cleared).
fn parse_source_range(text: &str) -> Result<Range, &'static str> {
    let text = text.trim();
    let (addr, len) = text.split_once('/').ok_or("expected ADDRESS/LENGTH")?;
    if addr.contains(':') {
        let len_text = len;
        return match (addr.parse::<Ipv6Addr>(), len.parse::<u8>()) {
            (Ok(addr), Ok(len)) if is_decimal(len_text) => Ipv6Net::new(addr, len)
                .map(|n| Range::V6(n.trunc()))
                .map_err(|_| "prefix length above 128"),
            _ => Err("not an IPv6 prefix"),
        };
    }
    let mut octets = [0u8; 4];
    let mut parts = addr.split('.');
    for octet in &mut octets {
        let part = parts
            .next()
            .filter(|p| is_decimal(p))
            .ok_or("not an IPv4 address")?;
        *octet = part.parse().map_err(|_| "not an IPv4 address")?;
    }
    if parts.next().is_some() {
        return Err("not an IPv4 address");
    }
    let len: u8 = Some(len)
        .filter(|l| is_decimal(l))
        .and_then(|l| l.parse().ok())
        .ok_or("prefix length is not a number")?;
    cidr(Ipv4Addr::from(octets), len)
        .map(Range::V4)
        .ok_or("prefix length above 32")
}

/// Non-empty and ASCII digits only (`str::parse` would accept a leading `+`).
fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}
