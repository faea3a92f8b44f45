//! What the `fixtures_forward*` test binaries share: the node datapath in a fresh [`XdpNode`],
//! the NodePort to one backend, external and far clients, frames from the wire, the SNAT port
//! of a flow, and the ICMP fragmentation-needed answer to expect and check.
// Each binary uses a part of these.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::{IpNumber, Ipv4Header};
use svc_common::{Frontend, FrontendKey, Reason, FRONTEND_F_NODEPORT, PROTO_TCP, SCOPE_ANY};
use svc_testkit::fixtures::*;

/// `TC_ACT_REDIRECT`.
pub(crate) const TC_ACT_REDIRECT: u32 = 7;
pub(crate) const NODEPORT_ID: u32 = 7;
/// The client pod itself as a backend of [`SVC_VIP`] (hairpin).
pub(crate) const SELF_BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 2), 8080);

/// Runs `body` with a datapath (pod and uplink programs, `SVC_CONFIG` naming [`NODE_IP`]) on a
/// thread inside a fresh [`XdpNode`].
pub(crate) fn node_test(body: impl FnOnce(&mut Datapath, XdpUplink) + Send) {
    node_datapath_test(
        NodePrograms {
            xdp: false,
            uplink_tc: true,
        },
        body,
    );
}

/// [`NODEPORT`] over `proto` to the one backend `addr` (`BACKEND_F_*` `flags`).
pub(crate) fn nodeport(dp: &mut Datapath, proto: u8, addr: SocketAddrV4, flags: u8) {
    dp.put_backend_flags(BACKEND_B_ID, addr, proto, flags)
        .unwrap();
    dp.put_slot(NODEPORT_ID, 1, BACKEND_B_ID).unwrap();
    dp.put_frontend_entry(
        FrontendKey {
            addr: NODE_IP.octets(),
            port: NODEPORT.port(),
            proto,
            scope: SCOPE_ANY,
        },
        Frontend {
            id: NODEPORT_ID,
            backend_count: 1,
            flags: FRONTEND_F_NODEPORT,
            affinity_timeout_s: 0,
        },
    )
    .unwrap();
}

pub(crate) fn ext(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(*EXT_CLIENT.ip(), port)
}

pub(crate) fn far(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(*FAR_CLIENT.ip(), port)
}

/// A frame from the wire (`src_mac` → this node).
pub(crate) fn wire(p: &Pkt, src_mac: [u8; 6]) -> Vec<u8> {
    p.build_eth(src_mac, NODE_MAC)
}

/// Sends a SYN from the external `client` to [`NODEPORT`] through the uplink's ingress and
/// returns the SNAT port its flow got.
pub(crate) fn syn_to_nodeport(dp: &mut Datapath, uplink: &XdpUplink, client: SocketAddrV4) -> u16 {
    let syn = Pkt::tcp(client, NODEPORT, TCP_SYN);
    dp.run_on(
        Program::UplinkIngress.name(),
        &wire(&syn, EXT_CLIENT_MAC),
        uplink.ifindex,
    )
    .unwrap();
    snat_port(dp, client, PROTO_TCP)
}

/// `syn` from the external client to a NodePort of the local [`BACKEND_A`]: DNATed and passed
/// to the stack (which forwards it to the pod).
pub(crate) fn to_local_backend(name: &str, syn: &Pkt) -> Fixture {
    Fixture {
        name: name.into(),
        program: Program::UplinkIngress,
        input: wire(syn, EXT_CLIENT_MAC),
        verdict: TC_ACT_UNSPEC,
        output: wire(&syn.clone().with_dst(BACKEND_A), EXT_CLIENT_MAC),
        reason: Reason::DnatNew,
    }
}

/// The SNAT port of the flow `client` → [`NODEPORT`].
pub(crate) fn snat_port(dp: &Datapath, client: SocketAddrV4, proto: u8) -> u16 {
    dp.ct_get(&ct_forward(client, NODEPORT, proto))
        .unwrap_or_else(|| panic!("no forward entry for {client}"))
        .src_port
}

/// The ICMP fragmentation-needed `svc-lb` answers `offending` with (the frame as it arrived,
/// from `peer_mac`): from this node to the packet's source, Ethernet addresses reversed, a
/// fresh IPv4 header (id 0, DF, TTL 64), quoting the IP header and the first `quote_l4` bytes
/// of the packet as its sender sent it. Built by etherparse.
pub(crate) fn frag_needed_answer(offending: &Pkt, quote_l4: usize, peer_mac: [u8; 6]) -> Vec<u8> {
    icmp_answer(offending, frag_needed(PATH_MTU), quote_l4, peer_mac)
}

/// The ICMP error of `icmp_type` `svc-lb` answers `offending` with, as
/// [`frag_needed_answer`] builds it: from this node's address (the NodePort's), Ethernet
/// addresses reversed, a fresh IPv4 header (id 0, DF, TTL 64), quoting the IP header and the
/// first `quote_l4` bytes of the packet as its sender sent it. Built by etherparse.
pub(crate) fn icmp_answer(
    offending: &Pkt,
    icmp_type: etherparse::Icmpv4Type,
    quote_l4: usize,
    peer_mac: [u8; 6],
) -> Vec<u8> {
    let mut ip = Ipv4Header::new(
        0,
        64,
        IpNumber(1),
        NODE_IP.octets(),
        offending.src.ip().octets(),
    )
    .unwrap();
    ip.identification = 0;
    ip.dont_fragment = true;
    icmp_frame(
        ip,
        icmp_type,
        &quote_of(offending, Some(quote_l4)),
        NODE_MAC,
        peer_mac,
    )
}

/// Checks what an ICMP fragmentation-needed must carry, field by field from the bytes (type 3,
/// code 4, the MTU in bytes 6–7), and every checksum with RFC 1071.
pub(crate) fn assert_frag_needed(what: &str, frame: &[u8]) {
    let icmp = &frame[14 + 20..];
    assert_eq!((icmp[0], icmp[1]), (3, 4), "{what}: type and code");
    assert_eq!(
        u16::from_be_bytes([icmp[6], icmp[7]]),
        PATH_MTU,
        "{what}: next-hop MTU in bytes 6–7"
    );
    verify_icmp_error_checksums(frame).unwrap_or_else(|e| panic!("{what}: {e}"));
}
