//! `BPF_PROG_TEST_RUN` fixtures for `svc_xdp` at the IP layer: TTL decrement and TTL 1, ICMP
//! errors, frames too big for the path, and fragments of a NodePort datagram.
//!
//! Each test runs in an [`XdpNode`] of its own, as in `fixtures_xdp` (whose module docs say
//! how); run as root: `cargo test -p tests --test fixtures_xdp_ip`.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]

use svc_common::{Reason, BACKEND_F_LOCAL, PROTO_TCP, PROTO_UDP};
use svc_testkit::fixtures::*;

mod xdp_common;
use xdp_common::*;

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
