//! IPv4 prefixes are `ipnet::Ipv4Net` (the crate the Rust ecosystem uses; its `Ipv6Net` is
//! what IPv6 Services will need). Here: how the agent's flags spell one ([`parse_cidr`]:
//! strict `ADDRESS/LENGTH`, host bits cleared, as `ip route` does) and [`CidrError`], why a
//! string is not one. The loose reading kube-proxy applies to `loadBalancerSourceRanges` is
//! `source_ranges`'s.

use std::net::Ipv4Addr;

pub use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A CIDR string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {} CIDR {input:?}: {why}", if input.contains(':') { "IPv6" } else { "IPv4" })]
pub struct CidrError {
    /// The text given.
    pub input: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// `addr/prefix_len` with the host bits of `addr` cleared; `None` when `prefix_len > 32`.
pub fn cidr(addr: Ipv4Addr, prefix_len: u8) -> Option<Ipv4Net> {
    Ipv4Net::new(addr, prefix_len).ok().map(|n| n.trunc())
}

/// `10.96.0.0/16`, kubeadm's and kind's default service CIDR.
pub fn default_service_cidr() -> Ipv4Net {
    cidr(Ipv4Addr::new(10, 96, 0, 0), 16).expect("a valid prefix")
}

/// Parses `ADDRESS/LENGTH` (both required), clearing host bits: `10.96.3.4/16` is
/// `10.96.0.0/16`. The error says which part is wrong.
pub fn parse_cidr(s: &str) -> Result<Ipv4Net, CidrError> {
    let err = |why| CidrError {
        input: s.to_owned(),
        why,
    };
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| err("expected ADDRESS/LENGTH"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| err("not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| err("prefix length is not a number"))?;
    cidr(addr, len).ok_or_else(|| err("prefix length above 32"))
}

/// [`parse_cidr`] of either family: `ADDRESS/LENGTH` with an IPv4 or an IPv6 address, host
/// bits cleared (`fd00::5/64` is `fd00::/64`). For the flags that take prefixes of both
/// families (`--nodeport-addresses`, `--external-ip-cidrs`), each family's prefixes then
/// applying to that family alone.
pub fn parse_cidr_any(s: &str) -> Result<IpNet, CidrError> {
    if !s.contains(':') {
        return parse_cidr(s).map(IpNet::V4);
    }
    let err = |why| CidrError {
        input: s.to_owned(),
        why,
    };
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| err("expected ADDRESS/LENGTH"))?;
    let addr: std::net::Ipv6Addr = addr.parse().map_err(|_| err("not an IPv6 address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| err("prefix length is not a number"))?;
    Ipv6Net::new(addr, len)
        .map(|n| IpNet::V6(n.trunc()))
        .map_err(|_| err("prefix length above 128"))
}

/// The IPv4 and the IPv6 prefixes of `list`, in order.
pub fn split_families(list: &[IpNet]) -> (Vec<Ipv4Net>, Vec<Ipv6Net>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for net in list {
        match net {
            IpNet::V4(n) => v4.push(*n),
            IpNet::V6(n) => v6.push(*n),
        }
    }
    (v4, v6)
}

/// `--service-cidr`: where the manifests source allocates ClusterIPs, kube-apiserver's
/// `--service-cluster-ip-range` spelled the same way: an IPv4 range, optionally followed by an
/// IPv6 one (`10.96.0.0/16,fd00:10:96::/112`), which makes the cluster dual-stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceCidrs {
    /// The primary range.
    pub v4: Ipv4Net,
    /// The secondary range, if any.
    pub v6: Option<Ipv6Net>,
}

/// The shortest IPv6 service range the API server accepts (2^20 addresses; its allocator's
/// bitmap limit).
const MIN_SERVICE_CIDR6_PREFIX: u8 = 108;

/// Parses [`ServiceCidrs`]; the error says which range is wrong and why.
pub fn parse_service_cidrs(s: &str) -> Result<ServiceCidrs, String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let v4 = match parts.first().map(|p| parse_cidr_any(p)) {
        Some(Ok(IpNet::V4(n))) => n,
        Some(Ok(IpNet::V6(_))) => {
            return Err(format!(
                "{s:?}: the first range must be IPv4 (an IPv6-primary cluster is not supported \
                 by the manifests source)"
            ))
        }
        Some(Err(e)) => return Err(e.to_string()),
        None => return Err("expected IPV4-CIDR[,IPV6-CIDR]".to_owned()),
    };
    let v6 = match parts.get(1).map(|p| parse_cidr_any(p)) {
        None => None,
        Some(Ok(IpNet::V6(n))) if n.prefix_len() >= MIN_SERVICE_CIDR6_PREFIX => Some(n),
        Some(Ok(IpNet::V6(n))) => {
            return Err(format!(
                "{n}: an IPv6 service range must be /{MIN_SERVICE_CIDR6_PREFIX} or longer, as \
                 the API server requires"
            ))
        }
        Some(Ok(IpNet::V4(n))) => {
            return Err(format!("{n}: the second range must be IPv6"));
        }
        Some(Err(e)) => return Err(e.to_string()),
    };
    if parts.len() > 2 {
        return Err(format!("{s:?}: at most two ranges, one IPv4 and one IPv6"));
    }
    Ok(ServiceCidrs { v4, v6 })
}
