//! What the `fixtures_xdp*` test binaries share: the NodePort's frontend and backend ids,
//! `xdp_test` (a datapath in a fresh [`XdpNode`]), the maps written the agent's way, the
//! frames of the external client and the peer node, and the conntrack entries to expect.
// Each binary uses a part of these.
#![allow(dead_code)]

use std::net::SocketAddrV4;

use svc_common::{
    CtEntry, CtKey, Frontend, FrontendKey, Reason, BACKEND_F_LOCAL, FRONTEND_F_NODEPORT, PROTO_TCP,
    SCOPE_ANY, SNAT_PORT_MAX, SNAT_PORT_MIN,
};
use svc_testkit::fixtures::*;

/// Frontend id of [`NODEPORT`] (scope any).
pub(crate) const NODEPORT_ID: u32 = 7;
/// Frontend id of [`NODEPORT`]'s external-scope entry (`externalTrafficPolicy: Local`).
pub(crate) const NODEPORT_EXT_ID: u32 = 8;
/// Backend id of [`BACKEND_UNRESOLVED`].
pub(crate) const BACKEND_UNRESOLVED_ID: u32 = 3;

/// Runs `body` with a datapath (XDP programs loaded, `SVC_CONFIG` naming [`NODE_IP`]) on a
/// thread inside a fresh [`XdpNode`] (see [`node_datapath_test`]).
pub(crate) fn xdp_test(body: impl FnOnce(&mut Datapath, XdpUplink) + Send) {
    node_datapath_test(
        NodePrograms {
            xdp: true,
            uplink_tc: false,
        },
        body,
    );
}

/// [`NODEPORT`] over `proto` balancing across `backends` (id, address, `BACKEND_F_*`), written
/// in the agent's order: backends, slots, the frontend (with its count) last.
pub(crate) fn nodeport(
    dp: &mut Datapath,
    proto: u8,
    id: u32,
    backends: &[(u32, SocketAddrV4, u8)],
) {
    for &(bid, addr, flags) in backends {
        dp.put_backend_flags(bid, addr, proto, flags).unwrap();
    }
    for (i, &(bid, _, _)) in backends.iter().enumerate() {
        dp.put_slot(id, i as u32 + 1, bid).unwrap();
    }
    frontend(dp, NODEPORT, proto, SCOPE_ANY, id, backends.len() as u32, 0);
}

pub(crate) fn frontend(
    dp: &mut Datapath,
    addr: SocketAddrV4,
    proto: u8,
    scope: u8,
    id: u32,
    backend_count: u32,
    extra_flags: u32,
) {
    let key = FrontendKey {
        addr: addr.ip().octets(),
        port: addr.port(),
        proto,
        scope,
    };
    let value = Frontend {
        id,
        backend_count,
        flags: FRONTEND_F_NODEPORT | extra_flags,
        affinity_timeout_s: 0,
    };
    dp.put_frontend_entry(key, value).unwrap();
}

/// A TCP NodePort service with the local [`BACKEND_A`].
pub(crate) fn local_nodeport(dp: &mut Datapath) {
    nodeport(
        dp,
        PROTO_TCP,
        NODEPORT_ID,
        &[(BACKEND_A_ID, BACKEND_A, BACKEND_F_LOCAL)],
    );
}

/// A TCP NodePort service with the remote [`BACKEND_B`] (on [`PEER_NODE`]).
pub(crate) fn remote_nodeport(dp: &mut Datapath) {
    nodeport(dp, PROTO_TCP, NODEPORT_ID, &[(BACKEND_B_ID, BACKEND_B, 0)]);
}

pub(crate) fn ext_client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(*EXT_CLIENT.ip(), port)
}

pub(crate) fn snat(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(NODE_IP, port)
}

/// A frame from the external client, as it arrives on the uplink.
pub(crate) fn from_client(p: &Pkt) -> Vec<u8> {
    p.build_eth(EXT_CLIENT_MAC, NODE_MAC)
}

/// A frame from [`PEER_NODE`] (a remote backend's reply), as it arrives on the uplink.
pub(crate) fn from_peer(p: &Pkt) -> Vec<u8> {
    p.build_eth(PEER_NODE_MAC, NODE_MAC)
}

/// IPv4 total length of a TCP fixture frame (the conntrack byte counters count L3 bytes).
pub(crate) fn tcp_ip_len() -> u64 {
    (20 + 20 + PAYLOAD.len()) as u64
}

/// A conntrack value with everything a fixture asserts, for a flow of which only the SYN (or
/// first datagram) has been seen: state `syn_sent`. Timestamps are checked separately.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per asserted field keeps call sites readable as a table"
)]
pub(crate) fn ct_value(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    dir: u8,
    flags: u8,
    backend_id: u32,
    frontend_id: u32,
    packets: u64,
    bytes: u64,
    tcp_flags: u8,
) -> CtEntry {
    CtEntry {
        src_addr: src.ip().octets(),
        dst_addr: dst.ip().octets(),
        src_port: src.port(),
        dst_port: dst.port(),
        dir,
        flags,
        tcp_flags,
        state: svc_common::CT_STATE_SYN_SENT,
        backend_id,
        frontend_id,
        created_ns: 0,
        last_seen_ns: 0,
        packets,
        bytes,
    }
}

/// Asserts the entry under `key` equals `want` in every field but the timestamps, which must
/// be set and ordered. Returns the entry.
pub(crate) fn expect_ct(dp: &Datapath, what: &str, key: &CtKey, want: CtEntry) -> CtEntry {
    let got = dp
        .ct_get(key)
        .unwrap_or_else(|| panic!("{what}: no conntrack entry under {key:?}"));
    assert!(
        got.created_ns > 0 && got.last_seen_ns >= got.created_ns,
        "{what}: timestamps {got:?}"
    );
    let normalised = CtEntry {
        created_ns: 0,
        last_seen_ns: 0,
        ..got
    };
    assert_eq!(normalised, want, "{what}: conntrack entry under {key:?}");
    got
}

/// The SNAT port of the flow `client` → [`NODEPORT`], read from its forward entry; asserts it
/// lies in the SNAT range.
pub(crate) fn snat_port_of(dp: &Datapath, client: SocketAddrV4, proto: u8) -> u16 {
    let fwd = dp
        .ct_get(&ct_forward(client, NODEPORT, proto))
        .unwrap_or_else(|| panic!("no forward entry for {client} → {NODEPORT}"));
    assert!(
        (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&fwd.src_port),
        "SNAT port {} outside {SNAT_PORT_MIN}..={SNAT_PORT_MAX}",
        fwd.src_port
    );
    fwd.src_port
}

/// Runs the SYN of a new flow `client` → [`NODEPORT`] towards the remote [`BACKEND_B`] and
/// checks it completely: `XDP_TX`, source = this node and the SNAT port the program chose
/// (read from the forward entry), destination = the backend, MACs towards [`PEER_NODE`], the
/// `DnatNew` counter. Returns the port.
pub(crate) fn remote_syn(
    dp: &Datapath,
    uplink: XdpUplink,
    name: &str,
    client: SocketAddrV4,
) -> u16 {
    let syn = Pkt::tcp(client, NODEPORT, TCP_SYN);
    dp.check_xdp_after(
        uplink,
        &XdpFixture::new(name, from_client(&syn), XDP_TX, Vec::new(), Reason::DnatNew),
        |dp| {
            let port = snat_port_of(dp, client, PROTO_TCP);
            syn.clone()
                .with_src(snat(port))
                .with_dst(BACKEND_B)
                .with_ttl(63)
                .build_eth(NODE_MAC, PEER_NODE_MAC)
        },
    );
    snat_port_of(dp, client, PROTO_TCP)
}
