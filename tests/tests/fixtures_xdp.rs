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
//! SNAT port allocation is in `fixtures_xdp_snat`, TTL, ICMP errors, path MTU and fragments
//! in `fixtures_xdp_ip`; the helpers all three share are in `xdp_common`.
//!
//! Run as root: `cargo test -p tests --test fixtures_xdp`. Built without root, the tests that
//! load programs are reported as ignored (tests/build.rs); run without root anyway, they fail.
//! Without the object every test fails and says to run `cargo xtask build-ebpf`.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::net::{Ipv4Addr, SocketAddrV4};

use svc_common::{
    Reason, BACKEND_F_LOCAL, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_EXTERNAL, CT_F_NODEPORT, CT_F_SNAT,
    FRONTEND_F_DROP_NO_BACKEND, FRONTEND_F_EXTERNAL_SCOPE, PROTO_TCP, PROTO_UDP, SCOPE_ANY,
    SCOPE_EXTERNAL,
};
use svc_testkit::fixtures::*;

mod xdp_common;
use xdp_common::*;

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
