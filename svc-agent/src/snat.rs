//! Which address north-south flows to remote backends are source-NATed to.
//!
//! The backend's reply must come back to this node, so the address must be one this node
//! owns, on an interface the packet can leave through. Sorting the candidates (what the agent
//! once did) picked a Node `ExternalIP` that, on every cloud, lives on the provider's NAT and
//! on no interface of the node: replies to it never arrive. The rules, first match wins:
//! 1. `--node-ip`, in the order given, if it is on an interface of this node (the operator's
//!    word; a `--node-ip` that is not is skipped and logged);
//! 2. the Node's `InternalIP`s on an uplink, then its `ExternalIP`s on an uplink;
//! 3. the primary address of the first uplink that has one (what the kernel would choose as
//!    source on that interface);
//! 4. the Node's addresses on any other interface of the node.
//!
//! No match: no SNAT address. The datapath then drops such flows and counts
//! `snat_no_address`, and the agent logs why — never 0.0.0.0 on the wire.
//!
//! The IPv6 source (`Config::node_addr6`) is chosen by the same rules from the IPv6
//! candidates ([`choose`] is generic over the address type): `--node-ip`s and Node addresses
//! of the family, and the interfaces' global IPv6 addresses, where "primary" means a global,
//! permanent (not temporary, not deprecated) one, the kind the kernel prefers as source.
use std::net::Ipv4Addr;

/// An address configured on an interface of this node (`Ipv4Addr` or `Ipv6Addr`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAddr<A = Ipv4Addr> {
    /// The interface (its name: uplinks are named by `--uplink`).
    pub ifname: String,
    pub addr: A,
    /// IPv4: not `IFA_F_SECONDARY`, the address the kernel uses as source on that interface.
    /// IPv6: global scope, neither temporary nor deprecated.
    pub primary: bool,
}

/// What the choice was made from.
#[derive(Clone, Debug)]
pub struct Candidates<'a, A = Ipv4Addr> {
    /// `--node-ip`, in the order given.
    pub flag_ips: &'a [A],
    /// The Node object's `InternalIP` and `ExternalIP` addresses (empty without a Node).
    pub internal: &'a [A],
    pub external: &'a [A],
    /// Every address of the family on this node's interfaces.
    pub local: &'a [LocalAddr<A>],
    /// The uplinks (`--uplink`, or the default route's interface), in order.
    pub uplinks: &'a [String],
}

impl<A> Default for Candidates<'_, A> {
    fn default() -> Self {
        Self {
            flag_ips: &[],
            internal: &[],
            external: &[],
            local: &[],
            uplinks: &[],
        }
    }
}

/// The chosen address (if any), which rule chose it, and the candidates passed over that an
/// operator would expect to be used (`--node-ip`s and Node addresses not on this node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice<A = Ipv4Addr> {
    pub addr: Option<A>,
    pub rule: &'static str,
    pub skipped: Vec<(A, &'static str)>,
}

const NOT_LOCAL: &str = "not on any interface of this node";

pub fn choose<A: Copy + PartialEq>(c: &Candidates<'_, A>) -> Choice<A> {
    let local = |a: &A| c.local.iter().any(|l| l.addr == *a);
    let on_uplink = |a: &A| {
        c.local
            .iter()
            .any(|l| l.addr == *a && c.uplinks.contains(&l.ifname))
    };
    let mut skipped: Vec<(A, &'static str)> = c
        .flag_ips
        .iter()
        .chain(c.internal)
        .chain(c.external)
        .filter(|a| !local(a))
        .map(|a| (*a, NOT_LOCAL))
        .collect();
    skipped.dedup();
    let pick = |addr: A, rule: &'static str, skipped: Vec<_>| Choice {
        addr: Some(addr),
        rule,
        skipped,
    };
    if let Some(a) = c.flag_ips.iter().find(|a| local(a)) {
        return pick(*a, "--node-ip", skipped);
    }
    if let Some(a) = c.internal.iter().find(|a| on_uplink(a)) {
        return pick(*a, "Node InternalIP on an uplink", skipped);
    }
    if let Some(a) = c.external.iter().find(|a| on_uplink(a)) {
        return pick(*a, "Node ExternalIP on an uplink", skipped);
    }
    for uplink in c.uplinks {
        if let Some(l) = c.local.iter().find(|l| l.primary && &l.ifname == uplink) {
            return pick(l.addr, "primary address of the uplink", skipped);
        }
    }
    if let Some(a) = c.internal.iter().chain(c.external).find(|a| local(a)) {
        return pick(*a, "Node address on another interface", skipped);
    }
    Choice {
        addr: None,
        rule: "none",
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn la(ifname: &str, addr: &str, primary: bool) -> LocalAddr {
        LocalAddr {
            ifname: ifname.into(),
            addr: ip(addr),
            primary,
        }
    }

    fn node_local() -> Vec<LocalAddr> {
        vec![
            la("lo", "127.0.0.1", true),
            la("eth0", "172.18.0.2", true),
            la("eth0", "172.18.0.200", false),
            la("dummy0", "192.0.2.9", true),
        ]
    }

    fn uplinks() -> Vec<String> {
        vec!["eth0".into()]
    }

    #[test]
    fn an_external_ip_on_no_interface_is_never_chosen_even_when_it_sorts_first() {
        let local = node_local();
        let up = uplinks();
        let c = choose(&Candidates {
            internal: &[ip("172.18.0.2")],
            external: &[ip("10.250.0.1")],
            local: &local,
            uplinks: &up,
            ..Default::default()
        });
        assert_eq!(c.addr, Some(ip("172.18.0.2")));
        assert_eq!(c.rule, "Node InternalIP on an uplink");
        assert_eq!(c.skipped, vec![(ip("10.250.0.1"), NOT_LOCAL)]);
    }

    #[test]
    fn node_ip_flag_comes_first_when_it_is_local() {
        let local = node_local();
        let up = uplinks();
        let c = choose(&Candidates {
            flag_ips: &[ip("192.0.2.9")],
            internal: &[ip("172.18.0.2")],
            local: &local,
            uplinks: &up,
            ..Default::default()
        });
        assert_eq!((c.addr, c.rule), (Some(ip("192.0.2.9")), "--node-ip"));
    }

    #[test]
    fn a_node_ip_flag_absent_from_the_node_is_skipped_and_reported() {
        let local = node_local();
        let up = uplinks();
        let c = choose(&Candidates {
            flag_ips: &[ip("198.51.100.1"), ip("172.18.0.200")],
            local: &local,
            uplinks: &up,
            ..Default::default()
        });
        assert_eq!(c.addr, Some(ip("172.18.0.200")));
        assert_eq!(c.skipped, vec![(ip("198.51.100.1"), NOT_LOCAL)]);
    }

    #[test]
    fn internal_ip_on_an_uplink_wins_over_external_ip_on_an_uplink() {
        let local = node_local();
        let up = uplinks();
        let c = choose(&Candidates {
            internal: &[ip("172.18.0.200")],
            external: &[ip("172.18.0.2")],
            local: &local,
            uplinks: &up,
            ..Default::default()
        });
        assert_eq!(c.addr, Some(ip("172.18.0.200")));
    }

    #[test]
    fn without_node_addresses_the_uplinks_primary_address_is_used() {
        let local = node_local();
        let up = uplinks();
        let c = choose(&Candidates {
            local: &local,
            uplinks: &up,
            ..Default::default()
        });
        assert_eq!(
            (c.addr, c.rule),
            (Some(ip("172.18.0.2")), "primary address of the uplink")
        );
    }

    #[test]
    fn a_node_address_on_a_non_uplink_interface_is_the_last_resort() {
        let local = vec![la("dummy0", "192.0.2.9", true)];
        let up = uplinks();
        let c = choose(&Candidates {
            internal: &[ip("192.0.2.9")],
            local: &local,
            uplinks: &up,
            ..Default::default()
        });
        assert_eq!(
            (c.addr, c.rule),
            (Some(ip("192.0.2.9")), "Node address on another interface")
        );
    }

    #[test]
    fn nothing_local_means_no_address_never_zero() {
        let up = uplinks();
        let c = choose(&Candidates {
            flag_ips: &[ip("198.51.100.1")],
            external: &[ip("203.0.113.5")],
            local: &[],
            uplinks: &up,
            ..Default::default()
        });
        assert_eq!(c.addr, None);
        assert_eq!(c.skipped.len(), 2);
    }
}
