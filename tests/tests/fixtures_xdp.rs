//! `BPF_PROG_TEST_RUN` fixtures for `svc_xdp`, the uplink's north-south fast path.
//!
//! Each test creates an [`XdpNode`] (a network namespace of its own with the node's uplink
//! `eth0`, routes and neighbour entries, deleted on drop), loads its own copy of
//! `target/svc-ebpf.o` on a thread inside that namespace, programs the maps the way the agent
//! would, and runs named [`XdpFixture`]s with `ingress_ifindex` = `eth0`: input frame,
//! expected verdict, expected output frame (built independently with etherparse, which computes
//! the checksums) and the one `Hook::Xdp` counter that must move. The conntrack entries each
//! new flow writes are read back from `SVC_CT` and compared field by field.
//!
//! Run as root: `cargo test -p tests --test fixtures_xdp`. Built without root, the tests that
//! load programs are reported as ignored (tests/build.rs); run without root anyway, they fail.
//! Without the object every test fails and says to run `cargo xtask build-ebpf`.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use svc_common::{
    CtEntry, CtKey, Frontend, FrontendKey, Reason, BACKEND_F_LOCAL, CT_DIR_FORWARD, CT_DIR_REPLY,
    CT_F_EXTERNAL, CT_F_NODEPORT, CT_F_SNAT, FRONTEND_F_DROP_NO_BACKEND, FRONTEND_F_EXTERNAL_SCOPE,
    FRONTEND_F_NODEPORT, PROTO_TCP, PROTO_UDP, SCOPE_ANY, SCOPE_EXTERNAL, SNAT_ATTEMPTS,
    SNAT_PORT_MAX, SNAT_PORT_MIN,
};
use svc_testkit::fixtures::*;

/// Frontend id of [`NODEPORT`] (scope any).
const NODEPORT_ID: u32 = 7;
/// Frontend id of [`NODEPORT`]'s external-scope entry (`externalTrafficPolicy: Local`).
const NODEPORT_EXT_ID: u32 = 8;
/// Backend id of [`BACKEND_UNRESOLVED`].
const BACKEND_UNRESOLVED_ID: u32 = 3;
/// Every SNAT port there is.
const SNAT_SPAN: usize = (SNAT_PORT_MAX - SNAT_PORT_MIN) as usize + 1;

/// Runs `body` with a datapath (XDP programs loaded, `SVC_CONFIG` naming [`NODE_IP`]) on a
/// thread inside a fresh [`XdpNode`] (see [`node_datapath_test`]).
fn xdp_test(body: impl FnOnce(&mut Datapath, XdpUplink) + Send) {
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
fn nodeport(dp: &mut Datapath, proto: u8, id: u32, backends: &[(u32, SocketAddrV4, u8)]) {
    for &(bid, addr, flags) in backends {
        dp.put_backend_flags(bid, addr, proto, flags).unwrap();
    }
    for (i, &(bid, _, _)) in backends.iter().enumerate() {
        dp.put_slot(id, i as u32 + 1, bid).unwrap();
    }
    frontend(dp, NODEPORT, proto, SCOPE_ANY, id, backends.len() as u32, 0);
}

fn frontend(
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
fn local_nodeport(dp: &mut Datapath) {
    nodeport(
        dp,
        PROTO_TCP,
        NODEPORT_ID,
        &[(BACKEND_A_ID, BACKEND_A, BACKEND_F_LOCAL)],
    );
}

/// A TCP NodePort service with the remote [`BACKEND_B`] (on [`PEER_NODE`]).
fn remote_nodeport(dp: &mut Datapath) {
    nodeport(dp, PROTO_TCP, NODEPORT_ID, &[(BACKEND_B_ID, BACKEND_B, 0)]);
}

fn ext_client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(*EXT_CLIENT.ip(), port)
}

fn snat(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(NODE_IP, port)
}

/// A frame from the external client, as it arrives on the uplink.
fn from_client(p: &Pkt) -> Vec<u8> {
    p.build_eth(EXT_CLIENT_MAC, NODE_MAC)
}

/// A frame from [`PEER_NODE`] (a remote backend's reply), as it arrives on the uplink.
fn from_peer(p: &Pkt) -> Vec<u8> {
    p.build_eth(PEER_NODE_MAC, NODE_MAC)
}

/// IPv4 total length of a TCP fixture frame (the conntrack byte counters count L3 bytes).
fn tcp_ip_len() -> u64 {
    (20 + 20 + PAYLOAD.len()) as u64
}

/// A conntrack value with everything a fixture asserts, for a flow of which only the SYN (or
/// first datagram) has been seen: state `syn_sent`. Timestamps are checked separately.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per asserted field keeps call sites readable as a table"
)]
fn ct_value(
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
fn expect_ct(dp: &Datapath, what: &str, key: &CtKey, want: CtEntry) -> CtEntry {
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
fn snat_port_of(dp: &Datapath, client: SocketAddrV4, proto: u8) -> u16 {
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
fn remote_syn(dp: &Datapath, uplink: XdpUplink, name: &str, client: SocketAddrV4) -> u16 {
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

// ---------------------------------------------------------------------------------------------
// 1. NodePort to a local backend
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn nodeport_syn_to_local_backend_keeps_the_client_source() {
    xdp_test(|dp, uplink| {
        local_nodeport(dp);
        let syn = Pkt::tcp(EXT_CLIENT, NODEPORT, TCP_SYN);
        dp.check_xdp(
            uplink,
            &XdpFixture::new(
                "SYN client→NODEPORT becomes client→BACKEND_A, passed to the stack",
                from_client(&syn),
                XDP_PASS,
                // Destination only: the source (client address and port) and both MACs stay.
                from_client(&syn.clone().with_dst(BACKEND_A)),
                Reason::DnatNew,
            ),
        );
        let fwd = expect_ct(
            dp,
            "forward",
            &ct_forward(EXT_CLIENT, NODEPORT, PROTO_TCP),
            ct_value(
                EXT_CLIENT,
                BACKEND_A,
                CT_DIR_FORWARD,
                CT_F_EXTERNAL | CT_F_NODEPORT,
                BACKEND_A_ID,
                NODEPORT_ID,
                1,
                tcp_ip_len(),
                TCP_SYN,
            ),
        );
        let rep = expect_ct(
            dp,
            "reply",
            &ct_reply(BACKEND_A, EXT_CLIENT, PROTO_TCP),
            ct_value(
                NODEPORT,
                EXT_CLIENT,
                CT_DIR_REPLY,
                CT_F_EXTERNAL | CT_F_NODEPORT,
                BACKEND_A_ID,
                NODEPORT_ID,
                0,
                0,
                0,
            ),
        );
        assert_eq!(rep.created_ns, fwd.created_ns, "both written by one packet");
        assert_eq!(dp.ct_count(), 2, "exactly forward + reply");
    });
}

// ---------------------------------------------------------------------------------------------
// 2–4. NodePort to a remote backend: SNAT, reply, established
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn nodeport_flow_to_remote_backend_is_snatted_and_replies_come_back() {
    xdp_test(|dp, uplink| {
        remote_nodeport(dp);

        // 2. The SYN: source NAT to this node, straight back out of the uplink.
        let port = remote_syn(
            dp,
            uplink,
            "SYN client→NODEPORT becomes NODE:snat→BACKEND_B, XDP_TX towards PEER_NODE",
            EXT_CLIENT,
        );
        let flags = CT_F_EXTERNAL | CT_F_SNAT | CT_F_NODEPORT;
        let fwd_key = ct_forward(EXT_CLIENT, NODEPORT, PROTO_TCP);
        let rep_key = ct_key(BACKEND_B, snat(port), PROTO_TCP);
        let fwd = expect_ct(
            dp,
            "forward",
            &fwd_key,
            ct_value(
                snat(port),
                BACKEND_B,
                CT_DIR_FORWARD,
                flags,
                BACKEND_B_ID,
                NODEPORT_ID,
                1,
                tcp_ip_len(),
                TCP_SYN,
            ),
        );
        let rep = expect_ct(
            dp,
            "reply (keyed BACKEND_B → NODE:snat)",
            &rep_key,
            ct_value(
                NODEPORT,
                EXT_CLIENT,
                CT_DIR_REPLY,
                flags,
                BACKEND_B_ID,
                NODEPORT_ID,
                0,
                0,
                0,
            ),
        );
        assert_eq!(rep.created_ns, fwd.created_ns, "both written by one packet");
        assert_eq!(dp.ct_count(), 2, "exactly forward + reply");

        // 3. The backend's SYN-ACK to the SNAT port: reverse NAT, back out towards the client.
        let synack = Pkt::tcp(BACKEND_B, snat(port), TCP_SYN | TCP_ACK);
        dp.check_xdp(
            uplink,
            &XdpFixture::new(
                "SYN-ACK BACKEND_B→NODE:snat becomes NODEPORT→client, XDP_TX towards the client",
                from_peer(&synack),
                XDP_TX,
                synack
                    .clone()
                    .with_src(NODEPORT)
                    .with_dst(EXT_CLIENT)
                    .with_ttl(63)
                    .build_eth(NODE_MAC, EXT_CLIENT_MAC),
                Reason::RevNat,
            ),
        );
        let rep_after = dp.ct_get(&rep_key).unwrap();
        assert_eq!(
            (rep_after.packets, rep_after.bytes, rep_after.tcp_flags),
            (1, tcp_ip_len(), TCP_SYN | TCP_ACK),
            "reply entry counts the SYN-ACK"
        );
        assert_eq!(
            (rep_after.state, dp.ct_get(&fwd_key).unwrap().state),
            (
                svc_common::CT_STATE_ESTABLISHED,
                svc_common::CT_STATE_ESTABLISHED
            ),
            "the SYN-ACK established the flow (both entries)"
        );

        // 4. The client's ACK: the same SNAT port, from conntrack.
        let ack = Pkt::tcp(EXT_CLIENT, NODEPORT, TCP_ACK);
        dp.check_xdp(
            uplink,
            &XdpFixture::new(
                "ACK client→NODEPORT of the same flow becomes NODE:snat→BACKEND_B again",
                from_client(&ack),
                XDP_TX,
                ack.clone()
                    .with_src(snat(port))
                    .with_dst(BACKEND_B)
                    .with_ttl(63)
                    .build_eth(NODE_MAC, PEER_NODE_MAC),
                Reason::DnatEstablished,
            ),
        );
        let fwd_after = dp.ct_get(&fwd_key).unwrap();
        assert_eq!(
            (fwd_after.src_port, fwd_after.packets, fwd_after.tcp_flags),
            (port, 2, TCP_SYN | TCP_ACK),
            "forward entry: same port, SYN + ACK counted"
        );
        assert_eq!(dp.ct_count(), 2, "no entry added by the established flow");
    });
}

// ---------------------------------------------------------------------------------------------
// 5. SNAT port allocation
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn snat_ports_of_concurrent_flows_are_distinct() {
    // 300 flows in 4536 ports: a birthday collision of the random first choice is all but
    // certain (expected ≈ 10), so this exercises the retry; a program that claimed a taken
    // port would show a duplicate here.
    const FLOWS: u16 = 300;
    xdp_test(|dp, uplink| {
        remote_nodeport(dp);
        let mut ports = BTreeMap::new();
        for i in 0..FLOWS {
            let client = ext_client(41000 + i);
            let port = remote_syn(dp, uplink, &format!("SYN of flow {i}"), client);
            if let Some(other) = ports.insert(port, client) {
                panic!("SNAT port {port} given to {client} and to {other}");
            }
        }
        assert_eq!(ports.len(), usize::from(FLOWS));
        // Every flow's reply entry names its own client.
        for (&port, &client) in &ports {
            let rep = dp
                .ct_get(&ct_key(BACKEND_B, snat(port), PROTO_TCP))
                .unwrap_or_else(|| panic!("no reply entry for SNAT port {port}"));
            assert_eq!(
                (rep.dst_addr, rep.dst_port, rep.dir),
                (client.ip().octets(), client.port(), CT_DIR_REPLY),
                "reply entry of SNAT port {port}"
            );
        }
        assert_eq!(dp.ct_count(), 2 * usize::from(FLOWS));
        assert_eq!(
            dp.counter(svc_common::Hook::Xdp, Reason::DnatNew),
            u64::from(FLOWS)
        );
    });
}

/// Pre-fills the reply entries (BACKEND_B → NODE:port) of `taken` ports with a sentinel that
/// no flow would write, as other live flows would hold them: established and seen just now
/// (an entry with old timestamps is expired and may be taken over).
fn occupy(dp: &mut Datapath, taken: &BTreeSet<u16>) -> CtEntry {
    let now = monotonic_ns();
    let mut sentinel = ct_value(
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 99), 9999),
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 98), 9998),
        CT_DIR_REPLY,
        CT_F_EXTERNAL | CT_F_SNAT,
        999,
        999,
        0,
        0,
        0,
    );
    sentinel.state = svc_common::CT_STATE_ESTABLISHED;
    sentinel.created_ns = now;
    sentinel.last_seen_ns = now;
    for &port in taken {
        dp.ct_put(&ct_key(BACKEND_B, snat(port), PROTO_TCP), sentinel);
    }
    sentinel
}

/// Runs `flows` new flows against the pre-filled ports and checks each outcome: either a
/// translation onto a port that was free (which it then holds), or a drop counted as
/// `SnatNoPort` that leaves no conntrack entry. Afterwards every pre-filled entry must be
/// unchanged: a program that overwrote a taken reply entry fails here even when the port it
/// took is not reused by a later flow. Returns (translated, dropped).
fn claim_against(
    dp: &mut Datapath,
    uplink: XdpUplink,
    taken: &BTreeSet<u16>,
    flows: u16,
    first_client_port: u16,
) -> (usize, usize) {
    let sentinel = occupy(dp, taken);
    let mut held: BTreeSet<u16> = taken.clone();
    let (mut translated, mut dropped) = (0, 0);
    for i in 0..flows {
        let client = ext_client(first_client_port + i);
        let syn = Pkt::tcp(client, NODEPORT, TCP_SYN);
        let before = dp.counters();
        let res = dp
            .run_xdp(XDP_PROGRAM, &from_client(&syn), 1, uplink.ifindex)
            .unwrap();
        let after = dp.counters();
        let moved = |r: Reason| {
            let i = svc_common::stat_index(svc_common::Hook::Xdp, r) as usize;
            after[i] - before[i]
        };
        let total: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
        assert_eq!(total, 1, "flow {i}: exactly one counter moves");
        match res.retval {
            XDP_TX => {
                assert_eq!(moved(Reason::DnatNew), 1, "flow {i}: counted as dnat_new");
                let port = snat_port_of(dp, client, PROTO_TCP);
                assert!(
                    !held.contains(&port),
                    "flow {i} got SNAT port {port}, whose reply entry already existed{}",
                    if taken.contains(&port) {
                        " (pre-filled)"
                    } else {
                        " (an earlier flow's)"
                    }
                );
                let want = syn
                    .clone()
                    .with_src(snat(port))
                    .with_dst(BACKEND_B)
                    .with_ttl(63)
                    .build_eth(NODE_MAC, PEER_NODE_MAC);
                assert!(
                    res.output == want,
                    "flow {i}: output differs:\n{}",
                    diff_frames(&want, &res.output).join("\n")
                );
                held.insert(port);
                translated += 1;
            }
            XDP_DROP => {
                assert_eq!(
                    moved(Reason::SnatNoPort),
                    1,
                    "flow {i}: a drop must be counted as snat_no_port"
                );
                assert_eq!(res.output, from_client(&syn), "flow {i}: dropped untouched");
                assert!(
                    dp.ct_get(&ct_forward(client, NODEPORT, PROTO_TCP))
                        .is_none(),
                    "flow {i}: a dropped flow leaves no forward entry"
                );
                dropped += 1;
            }
            v => panic!("flow {i}: verdict {v}, expected XDP_TX or XDP_DROP"),
        }
    }
    for &port in taken {
        let got = dp
            .ct_get(&ct_key(BACKEND_B, snat(port), PROTO_TCP))
            .unwrap_or_else(|| panic!("pre-filled reply entry of port {port} disappeared"));
        assert_eq!(
            got, sentinel,
            "pre-filled reply entry of port {port} was overwritten"
        );
    }
    assert_eq!(
        dp.ct_count(),
        taken.len() + 2 * translated,
        "pre-filled entries + forward and reply of each translated flow"
    );
    (translated, dropped)
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn snat_never_claims_a_taken_port_half_full() {
    // Every other port is held: each random try collides with probability 1/2, so about half
    // of the flows need the retry, and a program that did not check (or overwrote) would hand
    // out a held port about 50 times in 100 flows. All 16 tries fail with probability 2^-16.
    xdp_test(|dp, uplink| {
        remote_nodeport(dp);
        let taken: BTreeSet<u16> = (SNAT_PORT_MIN..=SNAT_PORT_MAX).step_by(2).collect();
        let (translated, dropped) = claim_against(dp, uplink, &taken, 100, 42000);
        assert!(
            translated >= 95,
            "{translated} of 100 flows translated ({dropped} dropped): with half the ports \
             free, {SNAT_ATTEMPTS} tries should almost always find one"
        );
    });
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn snat_with_almost_every_port_taken_finds_a_free_one_or_drops() {
    // 6 of 4536 ports free: 16 random tries find one with probability ≈ 2%, so most flows are
    // dropped as snat_no_port, and whichever succeed must be on one of the 6.
    xdp_test(|dp, uplink| {
        remote_nodeport(dp);
        let free = [61_000u16, 62_345, 63_333, 64_000, 65_000, 65_535];
        let taken: BTreeSet<u16> = (SNAT_PORT_MIN..=SNAT_PORT_MAX)
            .filter(|p| !free.contains(p))
            .collect();
        assert_eq!(taken.len(), SNAT_SPAN - free.len());
        let (translated, dropped) = claim_against(dp, uplink, &taken, 50, 43000);
        assert_eq!(translated + dropped, 50);
        assert!(
            dropped > 0,
            "all 50 flows found one of 6 free ports in {SNAT_ATTEMPTS} random tries each: \
             the program cannot be honouring the pre-filled entries"
        );
        println!("{translated} translated onto a free port, {dropped} dropped as snat_no_port");
    });
}

// ---------------------------------------------------------------------------------------------
// 6. Traffic that is no frontend
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn non_frontend_traffic_is_untouched() {
    xdp_test(|dp, uplink| {
        local_nodeport(dp);
        let ssh = Pkt::tcp(EXT_CLIENT, SocketAddrV4::new(NODE_IP, 22), TCP_SYN);
        dp.check_xdp(
            uplink,
            &XdpFixture::untouched(
                "SYN to NODE:22 (no NodePort) passes untouched",
                from_client(&ssh),
                Reason::NotService,
            ),
        );
        let other = Pkt::tcp(
            EXT_CLIENT,
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 50), NODEPORT.port()),
            TCP_SYN,
        );
        dp.check_xdp(
            uplink,
            &XdpFixture::untouched(
                "SYN to an unrelated address on the NodePort's port passes untouched",
                from_client(&other),
                Reason::NotService,
            ),
        );
        let udp = Pkt::udp(EXT_CLIENT, NODEPORT);
        dp.check_xdp(
            uplink,
            &XdpFixture::untouched(
                "UDP to the TCP-only NodePort passes untouched",
                from_client(&udp),
                Reason::NotService,
            ),
        );
        assert_eq!(dp.ct_count(), 0, "no conntrack entry");
    });
}

// ---------------------------------------------------------------------------------------------
// 7. The checksum trap (DESIGN §2)
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn partial_checksum_goes_to_tc_untouched() {
    xdp_test(|dp, uplink| {
        local_nodeport(dp);
        let syn = Pkt::tcp(EXT_CLIENT, NODEPORT, TCP_SYN);
        let full = from_client(&syn);
        let partial = with_partial_checksum(full.clone());
        assert_ne!(
            partial, full,
            "the fixture's partial checksum differs from the real one"
        );
        dp.check_xdp(
            uplink,
            &XdpFixture::untouched(
                "SYN whose TCP checksum holds the pseudo-header sum (CHECKSUM_PARTIAL)",
                partial,
                Reason::ToTc,
            ),
        );
        assert_eq!(dp.ct_count(), 0, "tc decides the flow, XDP wrote nothing");
        dp.check_xdp(
            uplink,
            &XdpFixture::new(
                "the same SYN with its real checksum is translated",
                full,
                XDP_PASS,
                from_client(&syn.clone().with_dst(BACKEND_A)),
                Reason::DnatNew,
            ),
        );

        // UDP too (the field is at another offset).
        nodeport(
            dp,
            PROTO_UDP,
            NODEPORT_ID + 1,
            &[(BACKEND_A_ID + 10, BACKEND_A, BACKEND_F_LOCAL)],
        );
        let udp = Pkt::udp(ext_client(40100), NODEPORT);
        dp.check_xdp(
            uplink,
            &XdpFixture::untouched(
                "UDP whose checksum holds the pseudo-header sum",
                with_partial_checksum(from_client(&udp)),
                Reason::ToTc,
            ),
        );
        assert!(
            dp.ct_get(&ct_forward(ext_client(40100), NODEPORT, PROTO_UDP))
                .is_none(),
            "no UDP conntrack entry"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 8. Next hop without a neighbour entry
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn remote_backend_without_neighbour_goes_to_tc_with_conntrack_written() {
    xdp_test(|dp, uplink| {
        nodeport(
            dp,
            PROTO_TCP,
            NODEPORT_ID,
            &[(BACKEND_UNRESOLVED_ID, BACKEND_UNRESOLVED, 0)],
        );
        let syn = Pkt::tcp(EXT_CLIENT, NODEPORT, TCP_SYN);
        dp.check_xdp(
            uplink,
            &XdpFixture::untouched(
                "SYN to a backend behind UNRESOLVED_NODE (no neighbour entry) passes untouched",
                from_client(&syn),
                Reason::ToTc,
            ),
        );
        // The decision is made and stored: tc (svc_uplink_ingress) finds the forward entry and
        // finishes the job with bpf_redirect_neigh.
        let port = snat_port_of(dp, EXT_CLIENT, PROTO_TCP);
        let flags = CT_F_EXTERNAL | CT_F_SNAT | CT_F_NODEPORT;
        expect_ct(
            dp,
            "forward",
            &ct_forward(EXT_CLIENT, NODEPORT, PROTO_TCP),
            ct_value(
                snat(port),
                BACKEND_UNRESOLVED,
                CT_DIR_FORWARD,
                flags,
                BACKEND_UNRESOLVED_ID,
                NODEPORT_ID,
                1,
                tcp_ip_len(),
                TCP_SYN,
            ),
        );
        expect_ct(
            dp,
            "reply",
            &ct_key(BACKEND_UNRESOLVED, snat(port), PROTO_TCP),
            ct_value(
                NODEPORT,
                EXT_CLIENT,
                CT_DIR_REPLY,
                flags,
                BACKEND_UNRESOLVED_ID,
                NODEPORT_ID,
                0,
                0,
                0,
            ),
        );
        assert_eq!(dp.ct_count(), 2);
        // The retransmitted SYN (or tc's own pass over it) is a conntrack hit, still for tc.
        dp.check_xdp(
            uplink,
            &XdpFixture::untouched(
                "the same SYN again: established, still no neighbour",
                from_client(&syn),
                Reason::ToTc,
            ),
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 9. externalTrafficPolicy: Local
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn external_traffic_policy_local_uses_the_external_scope() {
    xdp_test(|dp, uplink| {
        // Scope any: the remote BACKEND_B (what in-cluster clients get).
        dp.put_backend_flags(BACKEND_B_ID, BACKEND_B, PROTO_TCP, 0)
            .unwrap();
        dp.put_slot(NODEPORT_ID, 1, BACKEND_B_ID).unwrap();
        // Scope external: no local endpoint yet → drop, so the client's LB retries elsewhere.
        frontend(
            dp,
            NODEPORT,
            PROTO_TCP,
            SCOPE_EXTERNAL,
            NODEPORT_EXT_ID,
            0,
            FRONTEND_F_DROP_NO_BACKEND,
        );
        frontend(
            dp,
            NODEPORT,
            PROTO_TCP,
            SCOPE_ANY,
            NODEPORT_ID,
            1,
            FRONTEND_F_EXTERNAL_SCOPE,
        );
        let syn = Pkt::tcp(EXT_CLIENT, NODEPORT, TCP_SYN);
        dp.check_xdp(
            uplink,
            &XdpFixture::dropped(
                "SYN with no local endpoint under externalTrafficPolicy Local is dropped",
                from_client(&syn),
                Reason::PolicyDrop,
            ),
        );
        assert_eq!(dp.ct_count(), 0, "a dropped SYN leaves no entry");

        // A local endpoint appears: backend, slot, then the external entry's count.
        dp.put_backend_flags(BACKEND_A_ID, BACKEND_A, PROTO_TCP, BACKEND_F_LOCAL)
            .unwrap();
        dp.put_slot(NODEPORT_EXT_ID, 1, BACKEND_A_ID).unwrap();
        frontend(
            dp,
            NODEPORT,
            PROTO_TCP,
            SCOPE_EXTERNAL,
            NODEPORT_EXT_ID,
            1,
            FRONTEND_F_DROP_NO_BACKEND,
        );
        for i in 0..8u16 {
            let client = ext_client(44000 + i);
            let syn = Pkt::tcp(client, NODEPORT, TCP_SYN);
            dp.check_xdp(
                uplink,
                &XdpFixture::new(
                    &format!("SYN {i} goes to the local BACKEND_A, never the remote BACKEND_B"),
                    from_client(&syn),
                    XDP_PASS,
                    from_client(&syn.clone().with_dst(BACKEND_A)),
                    Reason::DnatNew,
                ),
            );
            expect_ct(
                dp,
                "forward (external scope)",
                &ct_forward(client, NODEPORT, PROTO_TCP),
                ct_value(
                    client,
                    BACKEND_A,
                    CT_DIR_FORWARD,
                    CT_F_EXTERNAL | CT_F_NODEPORT,
                    BACKEND_A_ID,
                    NODEPORT_EXT_ID,
                    1,
                    tcp_ip_len(),
                    TCP_SYN,
                ),
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 10. No backend: tc builds the reject
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn frontend_without_backend_goes_to_tc_for_the_reject() {
    xdp_test(|dp, uplink| {
        nodeport(dp, PROTO_TCP, NODEPORT_ID, &[]);
        let syn = Pkt::tcp(EXT_CLIENT, NODEPORT, TCP_SYN);
        dp.check_xdp(
            uplink,
            &XdpFixture::untouched(
                "SYN to a NodePort without endpoints passes untouched (tc answers with a RST)",
                from_client(&syn),
                Reason::ToTc,
            ),
        );
        assert_eq!(dp.ct_count(), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// 11. UDP checksums
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn udp_nodeport_zero_checksum_stays_zero_and_real_one_is_updated() {
    xdp_test(|dp, uplink| {
        nodeport(
            dp,
            PROTO_UDP,
            NODEPORT_ID,
            &[(BACKEND_A_ID, BACKEND_A, BACKEND_F_LOCAL)],
        );
        for (i, zero_csum) in [(0u16, true), (1, false)] {
            let mut dgram = Pkt::udp(ext_client(45000 + i), NODEPORT);
            dgram.l4 = L4::Udp { zero_csum };
            let what = if zero_csum { "zero" } else { "real" };
            dp.check_xdp(
                uplink,
                &XdpFixture::new(
                    &format!("UDP with a {what} checksum → local BACKEND_A"),
                    from_client(&dgram),
                    XDP_PASS,
                    from_client(&dgram.clone().with_dst(BACKEND_A)),
                    Reason::DnatNew,
                ),
            );
        }

        // Remote: source and destination change, the checksum covers both.
        nodeport(dp, PROTO_UDP, NODEPORT_ID, &[(BACKEND_B_ID, BACKEND_B, 0)]);
        for (i, zero_csum) in [(2u16, true), (3, false)] {
            let client = ext_client(45000 + i);
            let mut dgram = Pkt::udp(client, NODEPORT);
            dgram.l4 = L4::Udp { zero_csum };
            let what = if zero_csum { "zero" } else { "real" };
            dp.check_xdp_after(
                uplink,
                &XdpFixture::new(
                    &format!("UDP with a {what} checksum → remote BACKEND_B via SNAT"),
                    from_client(&dgram),
                    XDP_TX,
                    Vec::new(),
                    Reason::DnatNew,
                ),
                |dp| {
                    let port = snat_port_of(dp, client, PROTO_UDP);
                    dgram
                        .clone()
                        .with_src(snat(port))
                        .with_dst(BACKEND_B)
                        .with_ttl(63)
                        .build_eth(NODE_MAC, PEER_NODE_MAC)
                },
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The harness itself
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn xdp_runs_are_refused_outside_a_node_namespace_and_namespaces_are_removed() {
    if let Err(e) = read_object() {
        panic!("{e:#}");
    }
    require_root();
    // This test's own thread is in the namespace the test binary started in: run_xdp must
    // refuse (the program's FIB lookups would read the machine's tables).
    assert!(in_launch_netns().unwrap());
    {
        let dp = Datapath::load_xdp().unwrap();
        let err = dp
            .run_xdp(
                XDP_PROGRAM,
                &from_client(&Pkt::tcp(EXT_CLIENT, NODEPORT, TCP_SYN)),
                1,
                1,
            )
            .expect_err("run_xdp in the launch namespace");
        assert!(format!("{err}").contains("refusing"), "{err:#}");
    }
    let node = XdpNode::create().unwrap();
    let name = node.name().to_string();
    let path = std::path::Path::new("/run/netns").join(&name);
    assert!(path.exists(), "{name} exists while the node lives");
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        node.run(|_| panic!("deliberate panic inside the namespace"))
    }));
    assert!(panicked.is_err(), "the panic reaches the caller");
    drop(node);
    assert!(!path.exists(), "{name} removed on drop");
}

// ---------------------------------------------------------------------------------------------
// 12. TTL, ICMP errors, path MTU and fragments
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn xdp_tx_decrements_the_ttl_and_ttl_1_goes_to_tc_untouched() {
    xdp_test(|dp, uplink| {
        remote_nodeport(dp);
        // TTL 2 → 1 on the way out, IP checksum updated (etherparse computes the expected one).
        let syn = Pkt::tcp(ext_client(46000), NODEPORT, TCP_SYN).with_ttl(2);
        dp.check_xdp_after(
            uplink,
            &XdpFixture::new(
                "SYN with TTL 2 → XDP_TX with TTL 1",
                from_client(&syn),
                XDP_TX,
                Vec::new(),
                Reason::DnatNew,
            ),
            |dp| {
                let port = snat_port_of(dp, ext_client(46000), PROTO_TCP);
                syn.clone()
                    .with_src(snat(port))
                    .with_dst(BACKEND_B)
                    .with_ttl(1)
                    .build_eth(NODE_MAC, PEER_NODE_MAC)
            },
        );
        // TTL 1 would expire: XDP leaves it to tc (which passes it to the stack to answer).
        let syn = Pkt::tcp(ext_client(46001), NODEPORT, TCP_SYN).with_ttl(1);
        dp.check_xdp(
            uplink,
            &XdpFixture::untouched(
                "SYN with TTL 1 towards a remote backend",
                from_client(&syn),
                Reason::ToTc,
            ),
        );
        // To a local backend the stack forwards (and decrements): XDP translates it, TTL kept.
        local_nodeport(dp);
        let syn = Pkt::tcp(ext_client(46002), NODEPORT, TCP_SYN).with_ttl(1);
        dp.check_xdp(
            uplink,
            &XdpFixture::new(
                "SYN with TTL 1 to a local backend is translated, TTL untouched",
                from_client(&syn),
                XDP_PASS,
                from_client(&syn.clone().with_dst(BACKEND_A)),
                Reason::DnatNew,
            ),
        );
    });
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn icmp_errors_go_to_tc_untouched() {
    xdp_test(|dp, uplink| {
        nodeport(dp, PROTO_UDP, NODEPORT_ID, &[(BACKEND_B_ID, BACKEND_B, 0)]);
        let dgram = Pkt::udp(EXT_CLIENT, NODEPORT);
        dp.check_xdp_after(
            uplink,
            &XdpFixture::new(
                "UDP datagram → remote BACKEND_B",
                from_client(&dgram),
                XDP_TX,
                Vec::new(),
                Reason::DnatNew,
            ),
            |dp| {
                let port = snat_port_of(dp, EXT_CLIENT, PROTO_UDP);
                dgram
                    .clone()
                    .with_src(snat(port))
                    .with_dst(BACKEND_B)
                    .with_ttl(63)
                    .build_eth(NODE_MAC, PEER_NODE_MAC)
            },
        );
        let port = snat_port_of(dp, EXT_CLIENT, PROTO_UDP);
        let quoted = Pkt::udp(snat(port), BACKEND_B).with_ttl(63);
        let err = icmp_error(
            *BACKEND_B.ip(),
            NODE_IP,
            port_unreachable(),
            &quote_of(&quoted, None),
            63,
            PEER_NODE_MAC,
            NODE_MAC,
        );
        let before = dp.ct_entries();
        dp.check_xdp(
            uplink,
            &XdpFixture::untouched(
                "port unreachable about a translated flow: tc rewrites the quote",
                err,
                Reason::ToTc,
            ),
        );
        assert_eq!(dp.ct_entries(), before, "an ICMP error changes no entry");
    });
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn frame_too_big_for_the_path_goes_to_tc_untouched() {
    xdp_test(|dp, uplink| {
        nodeport(
            dp,
            PROTO_UDP,
            NODEPORT_ID,
            &[(BACKEND_B_ID, BACKEND_NARROW, 0)],
        );
        // 1100 bytes of IP over a path of PATH_MTU (1000): tc answers (or drops) it.
        let big = Pkt::udp(EXT_CLIENT, NODEPORT).with_payload(vec![0x42; 1100 - 28]);
        assert_eq!(big.build().len(), 14 + 1100);
        dp.check_xdp(
            uplink,
            &XdpFixture::untouched(
                "1100-byte datagram towards a backend behind a 1000-byte path",
                from_client(&big),
                Reason::ToTc,
            ),
        );
        // One that fits is sent by XDP itself.
        let fits = Pkt::udp(ext_client(40001), NODEPORT).with_payload(vec![0x42; 1000 - 28]);
        dp.check_xdp_after(
            uplink,
            &XdpFixture::new(
                "1000-byte datagram on the same path",
                from_client(&fits),
                XDP_TX,
                Vec::new(),
                Reason::DnatNew,
            ),
            |dp| {
                let port = snat_port_of(dp, ext_client(40001), PROTO_UDP);
                fits.clone()
                    .with_src(snat(port))
                    .with_dst(BACKEND_NARROW)
                    .with_ttl(63)
                    .build_eth(NODE_MAC, PEER_NODE_MAC)
            },
        );
    });
}

/// A UDP datagram in two fragments to a NodePort: the first is translated like any datagram
/// and its ports remembered, the second gets the same addresses (and nothing else); towards a
/// remote backend both leave by XDP_TX with the TTL decremented.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn fragments_of_a_nodeport_datagram_are_translated() {
    xdp_test(|dp, uplink| {
        nodeport(
            dp,
            PROTO_UDP,
            NODEPORT_ID,
            &[(BACKEND_A_ID, BACKEND_A, BACKEND_F_LOCAL)],
        );
        let dgram = Pkt::udp(EXT_CLIENT, NODEPORT)
            .with_payload((0..100u8).collect())
            .with_ip_id(0x7001);
        let [first, later] = fragments(&dgram, 64);
        let [want_first, want_later] = fragments(&dgram.clone().with_dst(BACKEND_A), 64);
        let eth = |f: Vec<u8>| with_macs(f, EXT_CLIENT_MAC, NODE_MAC);
        dp.check_xdp(
            uplink,
            &XdpFixture::untouched(
                "later fragment before its first",
                eth(later.clone()),
                Reason::Fragment,
            ),
        );
        dp.check_xdp(
            uplink,
            &XdpFixture::new(
                "first fragment → local BACKEND_A",
                eth(first),
                XDP_PASS,
                eth(want_first),
                Reason::DnatNew,
            ),
        );
        let ports = dp.frag_get(&frag_key(&dgram)).expect("ports remembered");
        assert_eq!(
            (ports.src_port, ports.dst_port),
            (EXT_CLIENT.port(), NODEPORT.port())
        );
        dp.check_xdp(
            uplink,
            &XdpFixture::new(
                "later fragment → local BACKEND_A (addresses only)",
                eth(later),
                XDP_PASS,
                eth(want_later),
                Reason::FragTranslated,
            ),
        );

        // Remote backend: SNAT, XDP_TX, TTL − 1 on both fragments.
        nodeport(dp, PROTO_UDP, NODEPORT_ID, &[(BACKEND_B_ID, BACKEND_B, 0)]);
        let c = ext_client(40002);
        let dgram = Pkt::udp(c, NODEPORT)
            .with_payload((0..100u8).collect())
            .with_ip_id(0x7002);
        let [first, later] = fragments(&dgram, 64);
        dp.check_xdp_after(
            uplink,
            &XdpFixture::new(
                "first fragment → remote BACKEND_B",
                eth(first),
                XDP_TX,
                Vec::new(),
                Reason::DnatNew,
            ),
            |dp| {
                let port = snat_port_of(dp, c, PROTO_UDP);
                let out = dgram
                    .clone()
                    .with_src(snat(port))
                    .with_dst(BACKEND_B)
                    .with_ttl(63);
                with_macs(fragments(&out, 64)[0].clone(), NODE_MAC, PEER_NODE_MAC)
            },
        );
        let port = snat_port_of(dp, c, PROTO_UDP);
        let out = dgram
            .clone()
            .with_src(snat(port))
            .with_dst(BACKEND_B)
            .with_ttl(63);
        dp.check_xdp(
            uplink,
            &XdpFixture::new(
                "later fragment → remote BACKEND_B",
                eth(later),
                XDP_TX,
                with_macs(fragments(&out, 64)[1].clone(), NODE_MAC, PEER_NODE_MAC),
                Reason::FragTranslated,
            ),
        );
    });
}
