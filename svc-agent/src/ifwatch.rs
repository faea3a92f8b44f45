//! Interface discovery over rtnetlink: the current links, then every change.
//!
//! The agent runs inside the node's network namespace, so it must ask netlink (whose socket
//! belongs to that namespace) rather than /sys/class/net (which shows the namespace that mounted
//! sysfs). Subscription happens before the initial dump, so a link created in between is seen at
//! least once; consumers treat events idempotently.
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    packet_core::NetlinkPayload,
    packet_route::{
        link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
        RouteNetlinkMessage,
    },
    MulticastGroup,
};
use tokio::sync::mpsc;
use tracing::warn;

/// What the agent needs to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    /// Its kind (`IFLA_INFO_KIND`) is `veth`: native XDP there needs XDP on the peer too.
    pub veth: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link exists (new, or changed state). Sent again for every change.
    Present { index: u32, link: Link },
    /// A link was deleted.
    Gone { index: u32 },
}

/// The link a `RTM_NEWLINK` message describes; `None` without a name.
fn link_of(msg: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut veth = false;
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkInfo(infos) => {
                veth |= infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    Some(Link { name: name?, veth })
}

/// Returns the links that exist now and a channel of later changes.
pub async fn start() -> Result<(BTreeMap<u32, Link>, mpsc::UnboundedReceiver<LinkEvent>)> {
    let (conn, handle, mut messages) = rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
        .context("opening an rtnetlink socket subscribed to link events")?;
    tokio::spawn(conn);
    let mut links = BTreeMap::new();
    let mut dump = handle.link().get().execute();
    while let Some(msg) = dump
        .try_next()
        .await
        .context("dumping links over rtnetlink")?
    {
        if let Some(link) = link_of(&msg) {
            links.insert(msg.header.index, link);
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Keeps `handle` alive: the connection task ends when every handle is dropped.
        let _handle = handle;
        while let Some((msg, _)) = messages.next().await {
            let event = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    link_of(&l).map(|link| LinkEvent::Present {
                        index: l.header.index,
                        link,
                    })
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                    Some(LinkEvent::Gone {
                        index: l.header.index,
                    })
                }
                _ => None,
            };
            if let Some(event) = event {
                if tx.send(event).is_err() {
                    return;
                }
            }
        }
        warn!("rtnetlink link subscription ended");
    });
    Ok((links, rx))
}

/// The interface of the IPv4 default route (the default `--uplink`), by name.
pub async fn default_route_interface(links: &BTreeMap<u32, Link>) -> Result<Option<String>> {
    use rtnetlink::{packet_route::route::RouteAttribute, RouteMessageBuilder};
    let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    tokio::spawn(conn);
    let request = RouteMessageBuilder::<std::net::Ipv4Addr>::new().build();
    let mut routes = handle.route().get(request).execute();
    while let Some(route) = routes.try_next().await.context("dumping IPv4 routes")? {
        if route.header.destination_prefix_length != 0 {
            continue;
        }
        let oif = route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if let Some(link) = oif.and_then(|i| links.get(&i)) {
            return Ok(Some(link.name.clone()));
        }
    }
    Ok(None)
}

/// Every IPv4 address of this network namespace's interfaces, with its interface's name (the
/// address label, which the kernel sets to the interface name) and whether it is the
/// interface's primary address (no `IFA_F_SECONDARY`).
pub async fn ipv4_addresses() -> Result<Vec<crate::snat::LocalAddr>> {
    use rtnetlink::packet_route::{
        address::{AddressAttribute, AddressHeaderFlags},
        AddressFamily,
    };
    let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    tokio::spawn(conn);
    let mut dump = handle.address().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = dump.try_next().await.context("dumping IPv4 addresses")? {
        if msg.header.family != AddressFamily::Inet {
            continue;
        }
        let mut addr = None;
        let mut label = None;
        for a in &msg.attributes {
            match a {
                AddressAttribute::Local(std::net::IpAddr::V4(v4)) => addr = Some(*v4),
                AddressAttribute::Address(std::net::IpAddr::V4(v4)) if addr.is_none() => {
                    addr = Some(*v4)
                }
                AddressAttribute::Label(l) => label = Some(l.clone()),
                _ => {}
            }
        }
        if let (Some(addr), Some(ifname)) = (addr, label) {
            // An alias label (`eth0:1`) names its interface before the colon.
            let ifname = ifname.split(':').next().unwrap_or_default().to_owned();
            out.push(crate::snat::LocalAddr {
                ifname,
                addr,
                primary: !msg.header.flags.contains(AddressHeaderFlags::Secondary),
            });
        }
    }
    Ok(out)
}

/// Every IPv6 address of this network namespace's interfaces except link-local and host
/// ones (never a source for another node), with its interface's name (IPv6 addresses carry
/// no label: the name comes from a link dump) and whether it is a global, permanent one
/// (neither `IFA_F_TEMPORARY` nor deprecated nor tentative), the kind the kernel prefers as
/// source: what [`crate::snat::choose`] calls primary.
pub async fn ipv6_addresses() -> Result<Vec<crate::snat::LocalAddr<std::net::Ipv6Addr>>> {
    use rtnetlink::packet_route::{
        address::{AddressAttribute, AddressHeaderFlags, AddressScope},
        AddressFamily,
    };
    let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    tokio::spawn(conn);
    let mut names = BTreeMap::new();
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await.context("dumping links")? {
        if let Some(link) = link_of(&msg) {
            names.insert(msg.header.index, link.name);
        }
    }
    let mut dump = handle.address().get().execute();
    let mut out = Vec::new();
    while let Some(msg) = dump.try_next().await.context("dumping IPv6 addresses")? {
        if msg.header.family != AddressFamily::Inet6
            || matches!(msg.header.scope, AddressScope::Link | AddressScope::Host)
        {
            continue;
        }
        let addr = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(std::net::IpAddr::V6(v6))
            | AddressAttribute::Local(std::net::IpAddr::V6(v6)) => Some(*v6),
            _ => None,
        });
        let Some(addr) = addr else { continue };
        let Some(ifname) = names.get(&msg.header.index) else {
            continue;
        };
        // IFA_F_TEMPORARY is IFA_F_SECONDARY's bit, read for IPv6.
        let unpreferred = AddressHeaderFlags::Secondary
            | AddressHeaderFlags::Deprecated
            | AddressHeaderFlags::Tentative;
        out.push(crate::snat::LocalAddr {
            ifname: ifname.clone(),
            addr,
            primary: msg.header.scope == AddressScope::Universe
                && !msg.header.flags.intersects(unpreferred),
        });
    }
    Ok(out)
}
