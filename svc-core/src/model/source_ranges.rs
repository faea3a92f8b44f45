//! `spec.loadBalancerSourceRanges`: each entry read as kube-proxy reads it, and what the list
//! means for a Service's LoadBalancer IP frontends ([`SourceRanges::for_lb_ip`]: flags and
//! prefixes). The rules are "Source ranges" in the `model` module docs.

use std::net::Ipv4Addr;

use svc_common::{FRONTEND_F_DENY_NODE, FRONTEND_F_SOURCE_RANGES};

use super::slim_service::SlimSpec;
use super::{cidr, Ipv4Net, NodeContext, Problem};

/// A Service's `loadBalancerSourceRanges`, as they apply to its LB IP frontends (see "Source
/// ranges" in the module docs).
pub(super) struct SourceRanges {
    /// The IPv4 prefixes, sorted and de-duplicated; empty: no filtering.
    allowed: Vec<Ipv4Net>,
    /// No prefix contains a node address: the node's own processes are refused.
    deny_node: bool,
}

impl SourceRanges {
    pub(super) fn of(
        spec: &SlimSpec,
        node: &NodeContext,
        object: &str,
        problems: &mut Vec<Problem>,
    ) -> Self {
        let mut allowed = Vec::new();
        for (i, text) in spec.source_ranges.iter().enumerate() {
            match parse_source_range(text) {
                Ok(Some(cidr)) => allowed.push(cidr),
                Ok(None) => {}
                Err(why) => problems.push(Problem::new(
                    object,
                    format!("spec.loadBalancerSourceRanges[{i}]"),
                    format!("{text:?} is not a CIDR ({why}); ignored"),
                )),
            }
        }
        allowed.sort_unstable();
        allowed.dedup();
        let deny_node = !node
            .node_ips
            .iter()
            .any(|ip| allowed.iter().any(|c| c.contains(ip)));
        Self { allowed, deny_node }
    }

    /// The extra flags and the prefixes of an LB IP frontend.
    pub(super) fn for_lb_ip(&self) -> (u32, Vec<Ipv4Net>) {
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

/// One `loadBalancerSourceRanges` entry as kube-proxy reads it (`MapCIDRsByIPFamily`:
/// whitespace trimmed, netutils' `ParseCIDRSloppy`, so host bits are cleared and IPv4 octets
/// may have leading zeros). `Ok(None)`: an IPv6 prefix, the other family's business.
fn parse_source_range(text: &str) -> Result<Option<Ipv4Net>, &'static str> {
    let text = text.trim();
    let (addr, len) = text.split_once('/').ok_or("expected ADDRESS/LENGTH")?;
    if addr.contains(':') {
        let len_text = len;
        return match (addr.parse::<std::net::Ipv6Addr>(), len.parse::<u8>()) {
            (Ok(_), Ok(len)) if len <= 128 && is_decimal(len_text) => Ok(None),
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
        .map(Some)
        .ok_or("prefix length above 32")
}

/// Non-empty and ASCII digits only (`str::parse` would accept a leading `+`).
fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}
