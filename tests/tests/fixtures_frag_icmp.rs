//! `BPF_PROG_TEST_RUN` fixtures for IPv4 fragments and ICMP errors of translated flows, on the
//! pod-veth programs (east-west) and on the uplink's tc program (north-south, in an
//! [`XdpNode`]).
//!
//! Fragments are cut from a whole datagram built by etherparse ([`fragments`]), so the first
//! fragment's L4 checksum is the whole datagram's; the expected output is the fragments of the
//! translated datagram, built the same way. ICMP errors are built with etherparse around a
//! quote of an etherparse-built packet; every checksum of the output is compared bytewise
//! with the expected frame *and* verified with the RFC 1071 code in `fixtures/checks.rs`
//! ([`verify_icmp_error_checksums`]).
//!
//! Run as root: `cargo test -p tests --test fixtures_frag_icmp`.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::net::{Ipv4Addr, SocketAddrV4};

use svc_common::{
    Frontend, FrontendKey, Reason, FRAG_TIMEOUT_NS, FRONTEND_F_NODEPORT, PROTO_TCP, PROTO_UDP,
    SCOPE_ANY,
};
use svc_testkit::fixtures::*;

/// `TC_ACT_REDIRECT`.
const TC_ACT_REDIRECT: u32 = 7;
/// The client pod's node as the pods see it (their gateway): the source of errors the node
/// itself sends.
const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

fn datapath() -> Datapath {
    if let Err(e) = read_object() {
        panic!("{e:#}");
    }
    require_root();
    Datapath::load().unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`SVC_VIP`] over UDP and TCP to `backend` (id [`BACKEND_A_ID`] / +10).
fn service_to(dp: &mut Datapath, backend: SocketAddrV4) {
    dp.add_service(SVC_VIP, PROTO_UDP, SVC_ID, &[(BACKEND_A_ID, backend)])
        .unwrap();
    dp.add_service(
        SVC_VIP,
        PROTO_TCP,
        SVC_ID + 1,
        &[(BACKEND_A_ID + 10, backend)],
    )
    .unwrap();
}

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(*CLIENT_POD.ip(), port)
}

/// Asserts every checksum of the ICMP error `frame` verifies with RFC 1071 code, including
/// the quoted L4 checksum when `whole_quote` (the quote holds the whole datagram).
fn assert_icmp_checksums(what: &str, frame: &[u8], whole_quote: bool) {
    let checked = verify_icmp_error_checksums(frame).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut want = vec!["outer ip", "icmp", "quoted ip"];
    if whole_quote {
        want.push(if frame[14 + 28 + 9] == PROTO_TCP {
            "quoted tcp"
        } else {
            "quoted udp"
        });
    }
    assert_eq!(checked, want, "{what}: checksums verified");
}

// ---------------------------------------------------------------------------------------------
// Fragments
// ---------------------------------------------------------------------------------------------

/// The first fragment of a UDP datagram to a frontend is DNATed (its L4 checksum updated for
/// the whole datagram) and its ports are remembered under (source, destination, id, protocol);
/// the later fragment gets the same addresses, a valid IP checksum and nothing else.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn fragments_of_a_datagram_to_a_frontend_are_translated() {
    let mut dp = datapath();
    service_to(&mut dp, BACKEND_A);
    let dgram = Pkt::udp(CLIENT_POD, SVC_VIP)
        .with_payload((0..120u8).collect())
        .with_ip_id(0x2222);
    let [first, later] = fragments(&dgram, 64);
    let [want_first, want_later] = fragments(&dgram.clone().with_dst(BACKEND_A), 64);
    dp.check(&Fixture {
        name: "first fragment client → SVC_VIP".into(),
        program: Program::Ingress,
        input: first,
        verdict: TC_ACT_UNSPEC,
        output: want_first,
        reason: Reason::DnatNew,
    });
    let ports = dp
        .frag_get(&frag_key(&dgram))
        .expect("SVC_FRAGS entry of the datagram");
    assert_eq!(
        (ports.src_port, ports.dst_port),
        (CLIENT_POD.port(), SVC_VIP.port()),
        "ports of the first fragment"
    );
    assert!(ports.created_ns > 0);
    let res = dp.check(&Fixture {
        name: "later fragment client → SVC_VIP".into(),
        program: Program::Ingress,
        input: later,
        verdict: TC_ACT_UNSPEC,
        output: want_later,
        reason: Reason::FragTranslated,
    });
    assert_eq!(
        rfc1071(&res.output[14..34]),
        0,
        "IP checksum of the later fragment"
    );
    let fwd = dp
        .ct_get(&ct_forward(CLIENT_POD, SVC_VIP, PROTO_UDP))
        .unwrap();
    assert_eq!(fwd.packets, 2, "both fragments counted on the flow");
    assert_eq!(dp.frag_count(), 1);
}

/// A later fragment whose first fragment has not been seen passes untouched as `fragment`:
/// overtaken by its follower, for a datagram to no frontend, under another IP id, or once its
/// first fragment is older than the reassembly timeout.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn later_fragments_without_their_first_pass_untouched() {
    let mut dp = datapath();
    service_to(&mut dp, BACKEND_A);
    // Out of order: the later fragment first.
    let dgram = Pkt::udp(client(40001), SVC_VIP)
        .with_payload((0..120u8).collect())
        .with_ip_id(0x3333);
    let [first, later] = fragments(&dgram, 64);
    let [want_first, want_later] = fragments(&dgram.clone().with_dst(BACKEND_A), 64);
    dp.check(&Fixture::untouched(
        "later fragment before its first",
        Program::Ingress,
        later.clone(),
        Reason::Fragment,
    ));
    assert_eq!(dp.ct_entries().len(), 0, "no flow from a later fragment");
    dp.check(&Fixture {
        name: "then the first fragment".into(),
        program: Program::Ingress,
        input: first,
        verdict: TC_ACT_UNSPEC,
        output: want_first,
        reason: Reason::DnatNew,
    });
    dp.check(&Fixture {
        name: "the later fragment again (retransmitted datagram)".into(),
        program: Program::Ingress,
        input: later.clone(),
        verdict: TC_ACT_UNSPEC,
        output: want_later,
        reason: Reason::FragTranslated,
    });
    // Same addresses, another id: another datagram.
    let [_, other_id] = fragments(&dgram.clone().with_ip_id(0x3334), 64);
    dp.check(&Fixture::untouched(
        "later fragment of another datagram (IP id) of the same flow",
        Program::Ingress,
        other_id,
        Reason::Fragment,
    ));
    // Not a frontend: its first fragment passes and is not remembered; so is its follower.
    let other = Pkt::udp(CLIENT_POD, SocketAddrV4::new(OTHER_POD, 53))
        .with_payload((0..120u8).collect())
        .with_ip_id(0x4444);
    let [ofirst, olater] = fragments(&other, 64);
    dp.check(&Fixture::untouched(
        "first fragment to a pod that is no frontend",
        Program::Ingress,
        ofirst,
        Reason::NotService,
    ));
    assert!(dp.frag_get(&frag_key(&other)).is_none());
    dp.check(&Fixture::untouched(
        "later fragment to a pod that is no frontend",
        Program::Ingress,
        olater,
        Reason::Fragment,
    ));
    // A first fragment seen longer ago than the reassembly timeout names another datagram.
    let key = frag_key(&dgram);
    let mut old = dp.frag_get(&key).unwrap();
    old.created_ns = monotonic_ns() - FRAG_TIMEOUT_NS - 1_000_000_000;
    dp.frag_put(&key, old);
    dp.check(&Fixture::untouched(
        "later fragment whose first is older than 30 s",
        Program::Ingress,
        later,
        Reason::Fragment,
    ));
}

/// Reply-direction fragments: the backend's fragmented reply gets the frontend as source on
/// the client's veth, first and later fragment alike.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn fragments_of_a_reply_are_translated() {
    let mut dp = datapath();
    service_to(&mut dp, BACKEND_B);
    let q = Pkt::udp(CLIENT_POD, SVC_VIP);
    dp.check(&Fixture::translate(
        "query",
        Program::Ingress,
        &q,
        &q.clone().with_dst(BACKEND_B),
        Reason::DnatNew,
    ));
    let reply = Pkt::udp(BACKEND_B, CLIENT_POD)
        .with_payload((0..200u8).collect())
        .with_ip_id(0x5555);
    let [first, later] = fragments(&reply, 104);
    let [want_first, want_later] = fragments(&reply.clone().with_src(SVC_VIP), 104);
    dp.check(&Fixture::untouched(
        "later fragment of the reply before its first",
        Program::Egress,
        later.clone(),
        Reason::Fragment,
    ));
    dp.check(&Fixture {
        name: "first fragment of the reply".into(),
        program: Program::Egress,
        input: first,
        verdict: TC_ACT_UNSPEC,
        output: want_first,
        reason: Reason::RevNat,
    });
    let ports = dp
        .frag_get(&frag_key(&reply))
        .expect("reply datagram remembered");
    assert_eq!(
        (ports.src_port, ports.dst_port),
        (BACKEND_B.port(), CLIENT_POD.port())
    );
    dp.check(&Fixture {
        name: "later fragment of the reply".into(),
        program: Program::Egress,
        input: later,
        verdict: TC_ACT_UNSPEC,
        output: want_later,
        reason: Reason::FragTranslated,
    });
}

// ---------------------------------------------------------------------------------------------
// ICMP errors, east-west
// ---------------------------------------------------------------------------------------------

/// Opens the UDP flow client → SVC_VIP → `backend` at the client's veth.
fn open_udp(dp: &Datapath, backend: SocketAddrV4) {
    let q = Pkt::udp(CLIENT_POD, SVC_VIP);
    dp.check(&Fixture::translate(
        "query",
        Program::Ingress,
        &q,
        &q.clone().with_dst(backend),
        Reason::DnatNew,
    ));
}

/// Port unreachable from a backend about a translated UDP flow (backend → client, quoting
/// client → backend) becomes frontend → client quoting client → frontend: outer source, quoted
/// destination address and port, and all four checksums. On the client's veth (remote
/// backend), on the backend's own veth (local backend), with a whole quote, an 8-byte quote and
/// a quoted datagram without UDP checksum. The flow's entries are neither refreshed nor
/// changed.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn port_unreachable_from_a_backend_gets_the_frontend_back() {
    let mut dp = datapath();
    for (prog, backend) in [(Program::Egress, BACKEND_B), (Program::Ingress, BACKEND_A)] {
        for (k, v) in dp.ct_entries() {
            let _ = v;
            dp.ct_remove(&k).unwrap();
        }
        service_to(&mut dp, backend);
        open_udp(&dp, backend);
        // What the backend received (one hop: TTL 63) and what the client sent.
        let at_backend = Pkt::udp(CLIENT_POD, backend).with_ttl(63);
        let as_sent = Pkt::udp(CLIENT_POD, SVC_VIP).with_ttl(63);
        let mut nocsum_at_backend = at_backend.clone();
        nocsum_at_backend.l4 = L4::Udp { zero_csum: true };
        let mut nocsum_as_sent = as_sent.clone();
        nocsum_as_sent.l4 = L4::Udp { zero_csum: true };
        for (quote, whole, what) in [
            (None, true, "whole datagram quoted"),
            (Some(8), false, "8 bytes quoted"),
        ] {
            for (inner, inner_out, csum) in [
                (&at_backend, &as_sent, "with UDP checksum"),
                (&nocsum_at_backend, &nocsum_as_sent, "UDP checksum 0"),
            ] {
                let name = format!("{prog:?}: port unreachable from {backend}, {what}, {csum}");
                let input = icmp_error(
                    *backend.ip(),
                    *CLIENT_POD.ip(),
                    port_unreachable(),
                    &quote_of(inner, quote),
                    64,
                    GATEWAY_MAC,
                    CLIENT_MAC,
                );
                let output = icmp_error(
                    *SVC_VIP.ip(),
                    *CLIENT_POD.ip(),
                    port_unreachable(),
                    &quote_of(inner_out, quote),
                    64,
                    GATEWAY_MAC,
                    CLIENT_MAC,
                );
                let before = dp.ct_entries();
                let res = dp.check(&Fixture {
                    name: name.clone(),
                    program: prog,
                    input,
                    verdict: TC_ACT_UNSPEC,
                    output,
                    reason: Reason::IcmpTranslated,
                });
                // A quoted UDP checksum of 0 ("none") must stay 0 (the bytes above) and has
                // nothing to verify.
                let verifiable = whole && inner.l4 == (L4::Udp { zero_csum: false });
                assert_icmp_checksums(&name, &res.output, verifiable);
                assert_eq!(dp.ct_entries(), before, "{name}: entries unchanged");
            }
        }
    }
}

/// An error about a translated flow from a node on the way (not the quoted packet's
/// destination) keeps its own source address; only the destination and the quote change. A
/// parameter problem from the backend is translated like a destination unreachable (its
/// source becomes the frontend).
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn time_exceeded_from_a_router_keeps_the_router_as_source() {
    let mut dp = datapath();
    service_to(&mut dp, BACKEND_B);
    open_udp(&dp, BACKEND_B);
    let input = icmp_error(
        POD_GATEWAY,
        *CLIENT_POD.ip(),
        time_exceeded(),
        &quote_of(&Pkt::udp(CLIENT_POD, BACKEND_B).with_ttl(1), None),
        64,
        GATEWAY_MAC,
        CLIENT_MAC,
    );
    let output = icmp_error(
        POD_GATEWAY,
        *CLIENT_POD.ip(),
        time_exceeded(),
        &quote_of(&Pkt::udp(CLIENT_POD, SVC_VIP).with_ttl(1), None),
        64,
        GATEWAY_MAC,
        CLIENT_MAC,
    );
    let res = dp.check(&Fixture {
        name: "time exceeded from the node about client → BACKEND_B".into(),
        program: Program::Egress,
        input,
        verdict: TC_ACT_UNSPEC,
        output,
        reason: Reason::IcmpTranslated,
    });
    assert_icmp_checksums("time exceeded", &res.output, true);

    // A parameter problem (pointer 8: the quoted TTL) from the backend about the same flow is
    // translated alike; its pointer stays valid (the quoted header's layout is unchanged).
    let param = etherparse::Icmpv4Type::ParameterProblem(
        etherparse::icmpv4::ParameterProblemHeader::PointerIndicatesError(8),
    );
    let quoted = Pkt::udp(CLIENT_POD, BACKEND_B).with_ttl(1);
    let input = icmp_error(
        *BACKEND_B.ip(),
        *CLIENT_POD.ip(),
        param.clone(),
        &quote_of(&quoted, None),
        64,
        GATEWAY_MAC,
        CLIENT_MAC,
    );
    let output = icmp_error(
        *SVC_VIP.ip(),
        *CLIENT_POD.ip(),
        param,
        &quote_of(&Pkt::udp(CLIENT_POD, SVC_VIP).with_ttl(1), None),
        64,
        GATEWAY_MAC,
        CLIENT_MAC,
    );
    let res = dp.check(&Fixture {
        name: "parameter problem from BACKEND_B about client → BACKEND_B".into(),
        program: Program::Egress,
        input,
        verdict: TC_ACT_UNSPEC,
        output,
        reason: Reason::IcmpTranslated,
    });
    assert_icmp_checksums("parameter problem", &res.output, true);
}

/// Forward direction: the client answers a reply it no longer wants (SVC_VIP → client) with
/// port unreachable; the error goes to the backend, quoting backend → client.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn port_unreachable_about_a_reply_goes_to_the_backend() {
    let mut dp = datapath();
    service_to(&mut dp, BACKEND_B);
    open_udp(&dp, BACKEND_B);
    let input = icmp_error(
        *CLIENT_POD.ip(),
        *SVC_VIP.ip(),
        port_unreachable(),
        &quote_of(&Pkt::udp(SVC_VIP, CLIENT_POD).with_ttl(63), None),
        64,
        CLIENT_MAC,
        GATEWAY_MAC,
    );
    let output = icmp_error(
        *CLIENT_POD.ip(),
        *BACKEND_B.ip(),
        port_unreachable(),
        &quote_of(&Pkt::udp(BACKEND_B, CLIENT_POD).with_ttl(63), None),
        64,
        CLIENT_MAC,
        GATEWAY_MAC,
    );
    let res = dp.check(&Fixture {
        name: "port unreachable client → SVC_VIP about SVC_VIP → client".into(),
        program: Program::Ingress,
        input,
        verdict: TC_ACT_UNSPEC,
        output,
        reason: Reason::IcmpTranslated,
    });
    assert_icmp_checksums("forward-direction error", &res.output, true);
}

/// An error quoting TCP: the ports in the first 8 quoted bytes are rewritten (the quoted TCP
/// checksum lies beyond them and, as in netfilter, is not touched).
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn port_unreachable_quoting_tcp_is_translated() {
    let mut dp = datapath();
    service_to(&mut dp, BACKEND_B);
    let syn = Pkt::tcp(CLIENT_POD, SVC_VIP, TCP_SYN);
    dp.check(&Fixture::translate(
        "SYN",
        Program::Ingress,
        &syn,
        &syn.clone().with_dst(BACKEND_B),
        Reason::DnatNew,
    ));
    let input = icmp_error(
        POD_GATEWAY,
        *CLIENT_POD.ip(),
        frag_needed(1400),
        &quote_of(&Pkt::tcp(CLIENT_POD, BACKEND_B, TCP_SYN), Some(8)),
        64,
        GATEWAY_MAC,
        CLIENT_MAC,
    );
    let output = icmp_error(
        POD_GATEWAY,
        *CLIENT_POD.ip(),
        frag_needed(1400),
        &quote_of(&syn, Some(8)),
        64,
        GATEWAY_MAC,
        CLIENT_MAC,
    );
    let res = dp.check(&Fixture {
        name: "fragmentation needed about client → BACKEND_B (TCP)".into(),
        program: Program::Egress,
        input,
        verdict: TC_ACT_UNSPEC,
        output,
        reason: Reason::IcmpTranslated,
    });
    assert_icmp_checksums("TCP quote", &res.output, false);
}

/// An ICMP error about no known flow passes untouched on every hook.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn icmp_error_about_no_known_flow_passes_untouched() {
    let mut dp = datapath();
    service_to(&mut dp, BACKEND_B);
    open_udp(&dp, BACKEND_B);
    for (name, inner) in [
        (
            "about another client port",
            Pkt::udp(client(40999), BACKEND_B),
        ),
        (
            "about another backend",
            Pkt::udp(CLIENT_POD, SocketAddrV4::new(OTHER_POD, 8080)),
        ),
        (
            "about TCP of a UDP flow",
            Pkt::tcp(CLIENT_POD, BACKEND_B, TCP_SYN),
        ),
    ] {
        let err = icmp_error(
            *inner.dst.ip(),
            *CLIENT_POD.ip(),
            port_unreachable(),
            &quote_of(&inner, None),
            64,
            GATEWAY_MAC,
            CLIENT_MAC,
        );
        for prog in [Program::Ingress, Program::Egress] {
            dp.check(&Fixture::untouched(
                &format!("port unreachable {name} ({prog:?})"),
                prog,
                err.clone(),
                Reason::NotService,
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ICMP errors, north-south (svc_uplink_ingress in an XdpNode)
// ---------------------------------------------------------------------------------------------

const NODEPORT_ID: u32 = 7;

/// Runs `body` with a datapath whose uplink programs are loaded too, on a thread inside a
/// fresh [`XdpNode`] (the tc runs' FIB lookups read its tables).
fn node_test(body: impl FnOnce(&mut Datapath, XdpUplink) + Send) {
    node_datapath_test(
        NodePrograms {
            xdp: false,
            uplink_tc: true,
        },
        body,
    );
}

/// A UDP NodePort to the remote [`BACKEND_B`]; returns the SNAT port of `EXT_CLIENT`'s flow,
/// opened by a first datagram through `svc_uplink_ingress`.
fn snat_udp_flow(dp: &mut Datapath, uplink: XdpUplink) -> u16 {
    dp.put_backend_flags(BACKEND_B_ID, BACKEND_B, PROTO_UDP, 0)
        .unwrap();
    dp.put_slot(NODEPORT_ID, 1, BACKEND_B_ID).unwrap();
    dp.put_frontend_entry(
        FrontendKey {
            addr: NODE_IP.octets(),
            port: NODEPORT.port(),
            proto: PROTO_UDP,
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
    let q = Pkt::udp(EXT_CLIENT, NODEPORT);
    let fwd_key = ct_forward(EXT_CLIENT, NODEPORT, PROTO_UDP);
    dp.check_after(
        Some(uplink.ifindex),
        &Fixture {
            name: "datagram client → NODEPORT → remote BACKEND_B".into(),
            program: Program::UplinkIngress,
            input: q.build_eth(EXT_CLIENT_MAC, NODE_MAC),
            verdict: TC_ACT_REDIRECT,
            output: Vec::new(),
            reason: Reason::DnatNew,
        },
        |dp| {
            let port = dp.ct_get(&fwd_key).expect("forward entry").src_port;
            q.clone()
                .with_src(SocketAddrV4::new(NODE_IP, port))
                .with_dst(BACKEND_B)
                .with_ttl(63)
                .build_eth(EXT_CLIENT_MAC, NODE_MAC)
        },
    );
    dp.ct_get(&fwd_key).unwrap().src_port
}

/// North-south: port unreachable from the remote backend of a SNATed NodePort flow (backend →
/// this node, quoting node:snat → backend) becomes NODEPORT → client quoting client →
/// NODEPORT, redirected towards the client with its TTL decremented.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn port_unreachable_of_a_snat_flow_is_translated_at_the_uplink() {
    node_test(|dp, uplink| {
        let port = snat_udp_flow(dp, uplink);
        let snat = SocketAddrV4::new(NODE_IP, port);
        for (quote, whole) in [(None, true), (Some(8), false)] {
            let input = icmp_error(
                *BACKEND_B.ip(),
                NODE_IP,
                port_unreachable(),
                &quote_of(&Pkt::udp(snat, BACKEND_B).with_ttl(62), quote),
                63,
                PEER_NODE_MAC,
                NODE_MAC,
            );
            let output = icmp_error(
                NODE_IP,
                *EXT_CLIENT.ip(),
                port_unreachable(),
                &quote_of(&Pkt::udp(EXT_CLIENT, NODEPORT).with_ttl(62), quote),
                62,
                PEER_NODE_MAC,
                NODE_MAC,
            );
            let name = format!("port unreachable BACKEND_B → node:snat, whole quote {whole}");
            let before = dp.ct_entries();
            let res = dp.check_on(
                uplink.ifindex,
                &Fixture {
                    name: name.clone(),
                    program: Program::UplinkIngress,
                    input,
                    verdict: TC_ACT_REDIRECT,
                    output,
                    reason: Reason::IcmpTranslated,
                },
            );
            assert_icmp_checksums(&name, &res.output, whole);
            assert_eq!(dp.ct_entries(), before, "{name}: entries unchanged");
        }
    });
}

/// North-south, forward direction: a router between this node and the client reports that a
/// reply (NODEPORT → client) expired; the error goes to the backend, quoting backend →
/// node:snat, the router's address kept as its source.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn time_exceeded_about_a_reply_goes_to_the_remote_backend() {
    node_test(|dp, uplink| {
        let port = snat_udp_flow(dp, uplink);
        let snat = SocketAddrV4::new(NODE_IP, port);
        let input = icmp_error(
            ROUTER,
            NODE_IP,
            time_exceeded(),
            &quote_of(&Pkt::udp(NODEPORT, EXT_CLIENT).with_ttl(1), None),
            64,
            ROUTER_MAC,
            NODE_MAC,
        );
        let output = icmp_error(
            ROUTER,
            *BACKEND_B.ip(),
            time_exceeded(),
            &quote_of(&Pkt::udp(BACKEND_B, snat).with_ttl(1), None),
            63,
            ROUTER_MAC,
            NODE_MAC,
        );
        let res = dp.check_on(
            uplink.ifindex,
            &Fixture {
                name: "time exceeded ROUTER → node about NODEPORT → client".into(),
                program: Program::UplinkIngress,
                input,
                verdict: TC_ACT_REDIRECT,
                output,
                reason: Reason::IcmpTranslated,
            },
        );
        assert_icmp_checksums("router's time exceeded", &res.output, true);
    });
}

/// North-south: an ICMP error about no known flow passes the uplink untouched.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn icmp_error_about_no_flow_passes_the_uplink_untouched() {
    node_test(|dp, uplink| {
        let _ = snat_udp_flow(dp, uplink);
        let unknown = icmp_error(
            *BACKEND_B.ip(),
            NODE_IP,
            port_unreachable(),
            &quote_of(
                &Pkt::udp(SocketAddrV4::new(NODE_IP, 61111), BACKEND_B),
                None,
            ),
            63,
            PEER_NODE_MAC,
            NODE_MAC,
        );
        dp.check_on(
            uplink.ifindex,
            &Fixture::untouched(
                "port unreachable about no flow",
                Program::UplinkIngress,
                unknown,
                Reason::NotService,
            ),
        );
    });
}

/// An ICMP error about a known flow whose quote holds fewer than the 8 L4 bytes RFC 792
/// requires (only the ports) cannot be rewritten completely; parse.rs documents such "quotes
/// we cannot read" as passed untouched (`not_tcp_udp`). It must never be dropped.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn icmp_error_with_a_short_quote_about_a_known_flow_passes_untouched() {
    let mut dp = datapath();
    service_to(&mut dp, BACKEND_B);
    open_udp(&dp, BACKEND_B);
    let err = icmp_error(
        *BACKEND_B.ip(),
        *CLIENT_POD.ip(),
        port_unreachable(),
        &quote_of(&Pkt::udp(CLIENT_POD, BACKEND_B), Some(4)),
        64,
        GATEWAY_MAC,
        CLIENT_MAC,
    );
    dp.check(&Fixture::untouched(
        "port unreachable quoting 20 + 4 bytes of client → BACKEND_B",
        Program::Egress,
        err,
        Reason::NotTcpUdp,
    ));
}

/// North-south fragments through tc: a fragmented datagram to a NodePort with a remote backend
/// is source-NATed and redirected fragment by fragment (TTL − 1 on each), and the backend's
/// fragmented reply gets the NodePort and client back, fragment by fragment.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn fragments_of_a_snat_flow_are_translated_at_the_uplink() {
    node_test(|dp, uplink| {
        let port = snat_udp_flow(dp, uplink);
        let snat = SocketAddrV4::new(NODE_IP, port);
        let dgram = Pkt::udp(EXT_CLIENT, NODEPORT)
            .with_payload((0..150u8).collect())
            .with_ip_id(0x6001);
        let out = dgram
            .clone()
            .with_src(snat)
            .with_dst(BACKEND_B)
            .with_ttl(63);
        let eth = |f: &Vec<u8>, mac: [u8; 6]| with_macs(f.clone(), mac, NODE_MAC);
        let input = fragments(&dgram, 96);
        let want = fragments(&out, 96);
        for (i, reason) in [(0, Reason::DnatEstablished), (1, Reason::FragTranslated)] {
            dp.check_on(
                uplink.ifindex,
                &Fixture {
                    name: format!("fragment {i} client → NODEPORT"),
                    program: Program::UplinkIngress,
                    input: eth(&input[i], EXT_CLIENT_MAC),
                    verdict: TC_ACT_REDIRECT,
                    output: eth(&want[i], EXT_CLIENT_MAC),
                    reason,
                },
            );
        }
        let reply = Pkt::udp(BACKEND_B, snat)
            .with_payload((0..150u8).rev().collect())
            .with_ip_id(0x6002);
        let out = reply
            .clone()
            .with_src(NODEPORT)
            .with_dst(EXT_CLIENT)
            .with_ttl(63);
        let input = fragments(&reply, 96);
        let want = fragments(&out, 96);
        for (i, reason) in [(0, Reason::RevNat), (1, Reason::FragTranslated)] {
            dp.check_on(
                uplink.ifindex,
                &Fixture {
                    name: format!("reply fragment {i} BACKEND_B → node:snat"),
                    program: Program::UplinkIngress,
                    input: eth(&input[i], PEER_NODE_MAC),
                    verdict: TC_ACT_REDIRECT,
                    output: eth(&want[i], PEER_NODE_MAC),
                    reason,
                },
            );
        }
    });
}
