//! `BPF_PROG_TEST_RUN` fixtures for packets the tc programs send on themselves, bypassing the
//! stack's forwarding: the TTL they decrement (hairpin, SNAT towards a remote backend, replies
//! to external clients; TTL 1 is left to the stack), and the path MTU they check (a DF packet
//! too big for the route is answered with ICMP fragmentation-needed, one without DF dropped).
//!
//! Runs that consult the FIB (`bpf_fib_lookup` in `route.rs`) happen on a device of an
//! [`XdpNode`] (`ctx_in.ifindex`), whose routes include a path locked to MTU [`PATH_MTU`]
//! towards [`BACKEND_NARROW`] and [`FAR_CLIENT`]. `bpf_redirect_neigh` resolves MACs only
//! after the program, so redirected outputs keep the input's Ethernet addresses.
//!
//! Run as root: `cargo test -p tests --test fixtures_forward`.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::{IpNumber, Ipv4Header};
use svc_common::{
    Frontend, FrontendKey, Reason, BACKEND_F_LOCAL, FAULT_NO_SKIP_NEIGH, FRONTEND_F_NODEPORT,
    PROTO_TCP, PROTO_UDP, SCOPE_ANY,
};
use svc_testkit::fixtures::*;

/// `TC_ACT_REDIRECT`.
const TC_ACT_REDIRECT: u32 = 7;
const NODEPORT_ID: u32 = 7;
/// The client pod itself as a backend of [`SVC_VIP`] (hairpin).
const SELF_BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 2), 8080);

/// Runs `body` with a datapath (pod and uplink programs, `SVC_CONFIG` naming [`NODE_IP`]) on a
/// thread inside a fresh [`XdpNode`].
fn node_test(body: impl FnOnce(&mut Datapath, XdpUplink) + Send) {
    node_datapath_test(
        NodePrograms {
            xdp: false,
            uplink_tc: true,
        },
        body,
    );
}

/// [`NODEPORT`] over `proto` to the one backend `addr` (`BACKEND_F_*` `flags`).
fn nodeport(dp: &mut Datapath, proto: u8, addr: SocketAddrV4, flags: u8) {
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

fn ext(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(*EXT_CLIENT.ip(), port)
}

fn far(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(*FAR_CLIENT.ip(), port)
}

/// A frame from the wire (`src_mac` → this node).
fn wire(p: &Pkt, src_mac: [u8; 6]) -> Vec<u8> {
    p.build_eth(src_mac, NODE_MAC)
}

/// Sends a SYN from the external `client` to [`NODEPORT`] through the uplink's ingress and
/// returns the SNAT port its flow got.
fn syn_to_nodeport(dp: &mut Datapath, uplink: &XdpUplink, client: SocketAddrV4) -> u16 {
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
fn to_local_backend(name: &str, syn: &Pkt) -> Fixture {
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
fn snat_port(dp: &Datapath, client: SocketAddrV4, proto: u8) -> u16 {
    dp.ct_get(&ct_forward(client, NODEPORT, proto))
        .unwrap_or_else(|| panic!("no forward entry for {client}"))
        .src_port
}

/// The ICMP fragmentation-needed `svc-lb` answers `offending` with (the frame as it arrived,
/// from `peer_mac`): from this node to the packet's source, Ethernet addresses reversed, a
/// fresh IPv4 header (id 0, DF, TTL 64), quoting the IP header and the first `quote_l4` bytes
/// of the packet as its sender sent it. Built by etherparse.
fn frag_needed_answer(offending: &Pkt, quote_l4: usize, peer_mac: [u8; 6]) -> Vec<u8> {
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
        frag_needed(PATH_MTU),
        &quote_of(offending, Some(quote_l4)),
        NODE_MAC,
        peer_mac,
    )
}

/// Checks what an ICMP fragmentation-needed must carry, field by field from the bytes (type 3,
/// code 4, the MTU in bytes 6–7), and every checksum with RFC 1071.
fn assert_frag_needed(what: &str, frame: &[u8]) {
    let icmp = &frame[14 + 20..];
    assert_eq!((icmp[0], icmp[1]), (3, 4), "{what}: type and code");
    assert_eq!(
        u16::from_be_bytes([icmp[6], icmp[7]]),
        PATH_MTU,
        "{what}: next-hop MTU in bytes 6–7"
    );
    verify_icmp_error_checksums(frame).unwrap_or_else(|e| panic!("{what}: {e}"));
}

// ---------------------------------------------------------------------------------------------
// TTL
// ---------------------------------------------------------------------------------------------

/// A pod reaching itself through a Service: the packet goes straight back out of its veth with
/// TTL − 1 (and a valid IP checksum), both directions; with TTL 1 it is passed to the stack
/// untranslated.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn hairpin_decrements_the_ttl_and_leaves_ttl_1_to_the_stack() {
    if let Err(e) = read_object() {
        panic!("{e:#}");
    }
    require_root();
    let mut dp = Datapath::load().unwrap_or_else(|e| panic!("{e:#}"));
    dp.add_service(SVC_VIP, PROTO_TCP, SVC_ID, &[(BACKEND_A_ID, SELF_BACKEND)])
        .unwrap();
    let back = |f: Vec<u8>| with_macs(f, GATEWAY_MAC, CLIENT_MAC);
    for ttl in [64u8, 2] {
        let c = SocketAddrV4::new(*CLIENT_POD.ip(), 40000 + u16::from(ttl));
        let syn = Pkt::tcp(c, SVC_VIP, TCP_SYN).with_ttl(ttl);
        let src = SocketAddrV4::new(*SVC_VIP.ip(), c.port());
        dp.check(&Fixture {
            name: format!(
                "SYN with TTL {ttl} to itself → from SVC_VIP, TTL {}",
                ttl - 1
            ),
            program: Program::Ingress,
            input: syn.build(),
            verdict: TC_ACT_REDIRECT,
            output: back(
                syn.clone()
                    .with_src(src)
                    .with_dst(SELF_BACKEND)
                    .with_ttl(ttl - 1)
                    .build(),
            ),
            reason: Reason::Hairpin,
        });
        let synack = Pkt::tcp(SELF_BACKEND, src, TCP_SYN | TCP_ACK).with_ttl(ttl);
        dp.check(&Fixture {
            name: format!("its SYN-ACK with TTL {ttl} → from SVC_VIP:80"),
            program: Program::Ingress,
            input: synack.build(),
            verdict: TC_ACT_REDIRECT,
            output: back(
                synack
                    .clone()
                    .with_src(SVC_VIP)
                    .with_dst(c)
                    .with_ttl(ttl - 1)
                    .build(),
            ),
            reason: Reason::Hairpin,
        });
    }
    let syn = Pkt::tcp(CLIENT_POD, SVC_VIP, TCP_SYN).with_ttl(1);
    dp.check(&Fixture::untouched(
        "SYN with TTL 1 to itself",
        Program::Ingress,
        syn.build(),
        Reason::TtlExceeded,
    ));
    let synack = Pkt::tcp(
        SELF_BACKEND,
        SocketAddrV4::new(*SVC_VIP.ip(), CLIENT_POD.port()),
        TCP_SYN | TCP_ACK,
    )
    .with_ttl(1);
    dp.check(&Fixture::untouched(
        "its SYN-ACK with TTL 1",
        Program::Ingress,
        synack.build(),
        Reason::TtlExceeded,
    ));
}

/// North-south through tc: a flow to a remote backend is source-NATed and redirected with
/// `bpf_redirect_neigh`, TTL − 1, both directions; TTL 1 is passed untranslated. To a local
/// backend the stack forwards (and decrements) it, so the TTL is left alone.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn uplink_redirects_decrement_the_ttl_and_leave_ttl_1_to_the_stack() {
    node_test(uplink_redirects);
}

/// An external client's `syn` to [`NODEPORT`] leaves redirected from the node's SNAT port to
/// `backend`, with TTL − 1.
fn check_snat_redirect(
    dp: &mut Datapath,
    uplink: XdpUplink,
    name: String,
    syn: &Pkt,
    backend: SocketAddrV4,
) {
    let c = syn.src;
    dp.check_after(
        Some(uplink.ifindex),
        &Fixture {
            name,
            program: Program::UplinkIngress,
            input: wire(syn, EXT_CLIENT_MAC),
            verdict: TC_ACT_REDIRECT,
            output: Vec::new(),
            reason: Reason::DnatNew,
        },
        |dp| {
            let port = snat_port(dp, c, PROTO_TCP);
            wire(
                &syn.clone()
                    .with_src(SocketAddrV4::new(NODE_IP, port))
                    .with_dst(backend)
                    .with_ttl(syn.ttl - 1),
                EXT_CLIENT_MAC,
            )
        },
    );
}

fn uplink_redirects(dp: &mut Datapath, uplink: XdpUplink) {
    nodeport(dp, PROTO_TCP, BACKEND_B, 0);
    for ttl in [64u8, 2] {
        let c = ext(40000 + u16::from(ttl));
        let syn = Pkt::tcp(c, NODEPORT, TCP_SYN).with_ttl(ttl);
        let name = format!("SYN TTL {ttl} → node:snat → BACKEND_B, TTL {}", ttl - 1);
        check_snat_redirect(dp, uplink, name, &syn, BACKEND_B);
        let port = snat_port(dp, c, PROTO_TCP);
        let synack = Pkt::tcp(
            BACKEND_B,
            SocketAddrV4::new(NODE_IP, port),
            TCP_SYN | TCP_ACK,
        )
        .with_ttl(ttl);
        dp.check_on(
            uplink.ifindex,
            &Fixture {
                name: format!("SYN-ACK TTL {ttl} → NODEPORT → client, TTL {}", ttl - 1),
                program: Program::UplinkIngress,
                input: wire(&synack, PEER_NODE_MAC),
                verdict: TC_ACT_REDIRECT,
                output: wire(
                    &synack
                        .clone()
                        .with_src(NODEPORT)
                        .with_dst(c)
                        .with_ttl(ttl - 1),
                    PEER_NODE_MAC,
                ),
                reason: Reason::RevNat,
            },
        );
    }
    let syn = Pkt::tcp(ext(41000), NODEPORT, TCP_SYN).with_ttl(1);
    dp.check_on(
        uplink.ifindex,
        &Fixture::untouched(
            "SYN with TTL 1 towards a remote backend",
            Program::UplinkIngress,
            wire(&syn, EXT_CLIENT_MAC),
            Reason::TtlExceeded,
        ),
    );
    // Local backend: translated, passed to the stack, TTL untouched.
    nodeport(dp, PROTO_TCP, BACKEND_A, BACKEND_F_LOCAL);
    let syn = Pkt::tcp(ext(41001), NODEPORT, TCP_SYN).with_ttl(1);
    dp.check_on(
        uplink.ifindex,
        &to_local_backend(
            "SYN with TTL 1 to a local backend: the stack forwards it",
            &syn,
        ),
    );
}

/// A local backend's reply to an external client leaves its veth redirected to the next hop
/// with TTL − 1; with TTL 1 it is passed to the stack untranslated.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn reply_to_an_external_client_is_redirected_with_ttl_minus_1() {
    node_test(reply_to_an_external_client);
}

fn reply_to_an_external_client(dp: &mut Datapath, uplink: XdpUplink) {
    nodeport(dp, PROTO_TCP, BACKEND_A, BACKEND_F_LOCAL);
    for (port, ttl) in [(40000u16, 64u8), (40001, 1)] {
        let c = ext(port);
        let syn = Pkt::tcp(c, NODEPORT, TCP_SYN);
        dp.check_on(
            uplink.ifindex,
            &to_local_backend("SYN → local BACKEND_A", &syn),
        );
        let synack = Pkt::tcp(BACKEND_A, c, TCP_SYN | TCP_ACK).with_ttl(ttl);
        if ttl > 1 {
            dp.check_on(
                uplink.peer_ifindex,
                &Fixture {
                    name: "SYN-ACK BACKEND_A → client leaves as NODEPORT → client, TTL 63".into(),
                    program: Program::Ingress,
                    input: synack.build(),
                    verdict: TC_ACT_REDIRECT,
                    output: synack.clone().with_src(NODEPORT).with_ttl(ttl - 1).build(),
                    reason: Reason::RevNat,
                },
            );
        } else {
            dp.check_on(
                uplink.peer_ifindex,
                &Fixture::untouched(
                    "SYN-ACK with TTL 1",
                    Program::Ingress,
                    synack.build(),
                    Reason::TtlExceeded,
                ),
            );
        }
    }
}

/// A kernel without `BPF_FIB_LOOKUP_SKIP_NEIGH` (before 6.3), emulated by
/// `FAULT_NO_SKIP_NEIGH` (the flag is refused with -EINVAL as there): the lookup is retried
/// without it and forwards as before, including towards a next hop with no neighbour entry yet
/// (`BPF_FIB_LKUP_RET_NO_NEIGH`, which `bpf_redirect_neigh` resolves). Control: the same
/// unresolved next hop on the normal path.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn without_skip_neigh_the_fib_lookup_falls_back_and_forwards_alike() {
    let programs = || NodePrograms {
        xdp: false,
        uplink_tc: true,
    };
    node_datapath_test_with_fault(programs(), FAULT_NO_SKIP_NEIGH, uplink_redirects);
    node_datapath_test_with_fault(programs(), FAULT_NO_SKIP_NEIGH, reply_to_an_external_client);
    for fault in [0, FAULT_NO_SKIP_NEIGH] {
        node_datapath_test_with_fault(programs(), fault, |dp, uplink| {
            nodeport(dp, PROTO_TCP, BACKEND_UNRESOLVED, 0);
            let syn = Pkt::tcp(ext(42000), NODEPORT, TCP_SYN);
            let name =
                format!("fault {fault}: SYN → node:snat → BACKEND_UNRESOLVED (no neighbour yet)");
            check_snat_redirect(dp, uplink, name, &syn, BACKEND_UNRESOLVED);
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Path MTU
// ---------------------------------------------------------------------------------------------

/// Towards a remote backend behind a path of [`PATH_MTU`]: a DF datagram or segment larger
/// than that is answered with ICMP fragmentation-needed (MTU 1000, quoting the packet as the
/// client sent it) sent back to the client; without DF it is dropped (a BPF program cannot
/// fragment); one that fits is redirected.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn too_big_for_the_path_to_a_backend_gets_frag_needed_or_is_dropped() {
    node_test(|dp, uplink| {
        nodeport(dp, PROTO_UDP, BACKEND_NARROW, 0);
        let big =
            |c: SocketAddrV4, len: usize| Pkt::udp(c, NODEPORT).with_payload(vec![0x42; len - 28]);
        let p = big(ext(40000), 1100);
        let res = dp.check_on(
            uplink.ifindex,
            &Fixture {
                name: "1100-byte UDP with DF → ICMP fragmentation needed, MTU 1000".into(),
                program: Program::UplinkIngress,
                input: wire(&p, EXT_CLIENT_MAC),
                verdict: TC_ACT_REDIRECT,
                output: frag_needed_answer(&p, 8, EXT_CLIENT_MAC),
                reason: Reason::FragNeeded,
            },
        );
        assert_frag_needed("UDP", &res.output);

        let p = big(ext(40001), 1100).with_df(false);
        dp.check_on(
            uplink.ifindex,
            &Fixture {
                name: "1100-byte UDP without DF is dropped".into(),
                program: Program::UplinkIngress,
                input: wire(&p, EXT_CLIENT_MAC),
                verdict: TC_ACT_SHOT,
                output: wire(&p, EXT_CLIENT_MAC),
                reason: Reason::TooBig,
            },
        );

        let c = ext(40002);
        let p = big(c, 1000);
        dp.check_after(
            Some(uplink.ifindex),
            &Fixture {
                name: "1000-byte UDP fits".into(),
                program: Program::UplinkIngress,
                input: wire(&p, EXT_CLIENT_MAC),
                verdict: TC_ACT_REDIRECT,
                output: Vec::new(),
                reason: Reason::DnatNew,
            },
            |dp| {
                let port = snat_port(dp, c, PROTO_UDP);
                wire(
                    &p.clone()
                        .with_src(SocketAddrV4::new(NODE_IP, port))
                        .with_dst(BACKEND_NARROW)
                        .with_ttl(63),
                    EXT_CLIENT_MAC,
                )
            },
        );

        // TCP: the handshake fits; a full-size segment with DF does not. The answer quotes the
        // whole 20-byte TCP header.
        nodeport(dp, PROTO_TCP, BACKEND_NARROW, 0);
        let c = ext(40003);
        let syn = Pkt::tcp(c, NODEPORT, TCP_SYN);
        dp.check_after(
            Some(uplink.ifindex),
            &Fixture {
                name: "SYN fits".into(),
                program: Program::UplinkIngress,
                input: wire(&syn, EXT_CLIENT_MAC),
                verdict: TC_ACT_REDIRECT,
                output: Vec::new(),
                reason: Reason::DnatNew,
            },
            |dp| {
                let port = snat_port(dp, c, PROTO_TCP);
                wire(
                    &syn.clone()
                        .with_src(SocketAddrV4::new(NODE_IP, port))
                        .with_dst(BACKEND_NARROW)
                        .with_ttl(63),
                    EXT_CLIENT_MAC,
                )
            },
        );
        let seg = Pkt::tcp(c, NODEPORT, TCP_ACK | TCP_PSH).with_payload(vec![0x43; 1400 - 40]);
        let res = dp.check_on(
            uplink.ifindex,
            &Fixture {
                name: "1400-byte TCP segment with DF → ICMP fragmentation needed".into(),
                program: Program::UplinkIngress,
                input: wire(&seg, EXT_CLIENT_MAC),
                verdict: TC_ACT_REDIRECT,
                output: frag_needed_answer(&seg, 20, EXT_CLIENT_MAC),
                reason: Reason::FragNeeded,
            },
        );
        assert_frag_needed("TCP", &res.output);
    });
}

/// A local backend's reply to a client behind a path of [`PATH_MTU`]: too big with DF → the
/// backend gets ICMP fragmentation-needed back out of its veth, quoting its reply as it sent
/// it; without DF it is dropped.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn reply_too_big_for_the_path_to_the_client_gets_frag_needed() {
    node_test(|dp, uplink| {
        nodeport(dp, PROTO_TCP, BACKEND_A, BACKEND_F_LOCAL);
        for (port, df) in [(40000u16, true), (40001, false)] {
            let c = far(port);
            let syn = Pkt::tcp(c, NODEPORT, TCP_SYN);
            dp.check_on(
                uplink.ifindex,
                &Fixture {
                    name: "SYN from FAR_CLIENT → local BACKEND_A".into(),
                    program: Program::UplinkIngress,
                    input: wire(&syn, ROUTER_MAC),
                    verdict: TC_ACT_UNSPEC,
                    output: wire(&syn.clone().with_dst(BACKEND_A), ROUTER_MAC),
                    reason: Reason::DnatNew,
                },
            );
            // The handshake's SYN-ACK first: a data segment on a flow whose SYN had no answer
            // is a tuple collision (`Reason::CtCollision`), not a reply.
            let synack = Pkt::tcp(BACKEND_A, c, TCP_SYN | TCP_ACK);
            dp.run_on(
                Program::Ingress.name(),
                &synack.build(),
                uplink.peer_ifindex,
            )
            .unwrap();
            let reply = Pkt::tcp(BACKEND_A, c, TCP_ACK | TCP_PSH)
                .with_payload(vec![0x44; 1400 - 40])
                .with_df(df);
            if df {
                let res = dp.check_on(
                    uplink.peer_ifindex,
                    &Fixture {
                        name: "1400-byte reply with DF → fragmentation needed to BACKEND_A".into(),
                        program: Program::Ingress,
                        input: reply.build(),
                        verdict: TC_ACT_REDIRECT,
                        output: with_macs(
                            frag_needed_answer(&reply, 20, CLIENT_MAC),
                            GATEWAY_MAC,
                            CLIENT_MAC,
                        ),
                        reason: Reason::FragNeeded,
                    },
                );
                assert_frag_needed("reply", &res.output);
            } else {
                dp.check_on(
                    uplink.peer_ifindex,
                    &Fixture::dropped(
                        "1400-byte reply without DF is dropped",
                        Program::Ingress,
                        reply.build(),
                        Reason::TooBig,
                    ),
                );
            }
        }
    });
}

/// GSO-aware MTU check: a TCP super-packet (TSO, or GRO-merged) whose IP length exceeds the
/// path MTU is sent when its segments (IP + TCP header + `gso_size`) fit, and answered with
/// fragmentation-needed when they do not.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn gso_packets_are_checked_by_their_segment_size() {
    node_test(|dp, uplink| {
        nodeport(dp, PROTO_TCP, BACKEND_NARROW, 0);
        let c = ext(40010);
        let syn = Pkt::tcp(c, NODEPORT, TCP_SYN);
        dp.check_after(
            Some(uplink.ifindex),
            &Fixture {
                name: "SYN".into(),
                program: Program::UplinkIngress,
                input: wire(&syn, EXT_CLIENT_MAC),
                verdict: TC_ACT_REDIRECT,
                output: Vec::new(),
                reason: Reason::DnatNew,
            },
            |dp| {
                let port = snat_port(dp, c, PROTO_TCP);
                wire(
                    &syn.clone()
                        .with_src(SocketAddrV4::new(NODE_IP, port))
                        .with_dst(BACKEND_NARROW)
                        .with_ttl(63),
                    EXT_CLIENT_MAC,
                )
            },
        );
        let port = snat_port(dp, c, PROTO_TCP);
        let seg = Pkt::tcp(c, NODEPORT, TCP_ACK | TCP_PSH).with_payload(vec![0x45; 1800 - 40]);
        dp.check_on_gso(
            uplink.ifindex,
            900,
            &Fixture {
                name: "1800-byte GSO packet of 900-byte segments (960 ≤ 1000) is sent".into(),
                program: Program::UplinkIngress,
                input: wire(&seg, EXT_CLIENT_MAC),
                verdict: TC_ACT_REDIRECT,
                output: Vec::new(),
                reason: Reason::DnatEstablished,
            },
            |_| {
                wire(
                    &seg.clone()
                        .with_src(SocketAddrV4::new(NODE_IP, port))
                        .with_dst(BACKEND_NARROW)
                        .with_ttl(63),
                    EXT_CLIENT_MAC,
                )
            },
        );
        let res = dp.check_on_gso(
            uplink.ifindex,
            1200,
            &Fixture {
                name: "1800-byte GSO packet of 1200-byte segments (1240 > 1000)".into(),
                program: Program::UplinkIngress,
                input: wire(&seg, EXT_CLIENT_MAC),
                verdict: TC_ACT_REDIRECT,
                output: Vec::new(),
                reason: Reason::FragNeeded,
            },
            |_| frag_needed_answer(&seg, 20, EXT_CLIENT_MAC),
        );
        assert_frag_needed("GSO", &res.output);
    });
}

// ---------------------------------------------------------------------------------------------
// Uplink egress: hostNetwork endpoints
// ---------------------------------------------------------------------------------------------

/// A NodePort whose endpoint is a hostNetwork process on this node (NODE_IP:8080): the
/// request is DNATed at the uplink's ingress, and the process's reply leaving through the
/// uplink gets the NodePort back as source at its egress. Other traffic leaving the node is
/// untouched.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn host_network_endpoint_replies_get_the_nodeport_back_at_uplink_egress() {
    node_test(|dp, uplink| {
        let host_ep = SocketAddrV4::new(NODE_IP, 8080);
        nodeport(dp, PROTO_TCP, host_ep, BACKEND_F_LOCAL);
        let syn = Pkt::tcp(EXT_CLIENT, NODEPORT, TCP_SYN);
        dp.check_on(
            uplink.ifindex,
            &Fixture {
                name: "SYN client → NODEPORT → NODE_IP:8080 (hostNetwork)".into(),
                program: Program::UplinkIngress,
                input: wire(&syn, EXT_CLIENT_MAC),
                verdict: TC_ACT_UNSPEC,
                output: wire(&syn.clone().with_dst(host_ep), EXT_CLIENT_MAC),
                reason: Reason::DnatNew,
            },
        );
        let out = |p: &Pkt| p.build_eth(NODE_MAC, EXT_CLIENT_MAC);
        let synack = Pkt::tcp(host_ep, EXT_CLIENT, TCP_SYN | TCP_ACK);
        dp.check_on(
            uplink.ifindex,
            &Fixture {
                name: "SYN-ACK NODE_IP:8080 → client leaves as NODEPORT → client".into(),
                program: Program::UplinkEgress,
                input: out(&synack),
                verdict: TC_ACT_UNSPEC,
                output: out(&synack.clone().with_src(NODEPORT)),
                reason: Reason::RevNat,
            },
        );
        assert_eq!(
            dp.ct_get(&ct_reply(host_ep, EXT_CLIENT, PROTO_TCP))
                .map(|e| e.state),
            Some(svc_common::CT_STATE_ESTABLISHED),
            "the SYN-ACK established the flow"
        );
        let other = Pkt::tcp(SocketAddrV4::new(NODE_IP, 22), ext(50000), TCP_ACK);
        dp.check_on(
            uplink.ifindex,
            &Fixture::untouched(
                "the node's own ssh traffic",
                Program::UplinkEgress,
                out(&other),
                Reason::NotService,
            ),
        );
        // A flow's forward direction is never translated at egress (only replies are).
        let fwd = Pkt::tcp(EXT_CLIENT, NODEPORT, TCP_ACK);
        dp.check_on(
            uplink.ifindex,
            &Fixture::untouched(
                "a packet matching the forward entry, leaving",
                Program::UplinkEgress,
                out(&fwd),
                Reason::NotService,
            ),
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Limits on what the datapath generates
// ---------------------------------------------------------------------------------------------

/// An ICMP error is never answered with another (RFC 1122 §3.2.2): one too big for the path,
/// with DF, is dropped as too big instead of getting a fragmentation-needed.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn icmp_error_too_big_for_the_path_is_dropped_not_answered() {
    node_test(|dp, uplink| {
        nodeport(dp, PROTO_UDP, BACKEND_NARROW, 0);
        let c = ext(40020);
        let q = Pkt::udp(c, NODEPORT);
        dp.check_after(
            Some(uplink.ifindex),
            &Fixture {
                name: "datagram → BACKEND_NARROW".into(),
                program: Program::UplinkIngress,
                input: wire(&q, EXT_CLIENT_MAC),
                verdict: TC_ACT_REDIRECT,
                output: Vec::new(),
                reason: Reason::DnatNew,
            },
            |dp| {
                let port = snat_port(dp, c, PROTO_UDP);
                wire(
                    &q.clone()
                        .with_src(SocketAddrV4::new(NODE_IP, port))
                        .with_dst(BACKEND_NARROW)
                        .with_ttl(63),
                    EXT_CLIENT_MAC,
                )
            },
        );
        // The client's port unreachable about a big reply, quoting 1200 bytes of it, with DF.
        let reply = Pkt::udp(NODEPORT, c).with_payload(vec![0x46; 1200 - 28]);
        let mut ip =
            Ipv4Header::new(0, 64, IpNumber(1), c.ip().octets(), NODE_IP.octets()).unwrap();
        ip.dont_fragment = true;
        let err = icmp_frame(
            ip,
            port_unreachable(),
            &quote_of(&reply, None),
            EXT_CLIENT_MAC,
            NODE_MAC,
        );
        assert!(err.len() > 14 + usize::from(PATH_MTU));
        dp.check_on(
            uplink.ifindex,
            &Fixture::dropped(
                "1256-byte port unreachable with DF towards BACKEND_NARROW",
                Program::UplinkIngress,
                err,
                Reason::TooBig,
            ),
        );
    });
}

/// Rejects (and other generated packets) are rate-limited per CPU: 1000 in a one-second
/// window, then dropped as `rate_limited`. The thread is pinned to one CPU so every run
/// draws on the same budget.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn rejects_are_rate_limited_per_cpu() {
    if let Err(e) = read_object() {
        panic!("{e:#}");
    }
    require_root();
    let mut dp = Datapath::load().unwrap_or_else(|e| panic!("{e:#}"));
    dp.put_frontend(SVC_VIP, PROTO_UDP, SVC_ID, 0).unwrap();
    // On a thread of its own, so the pinning ends with it.
    let joined = std::thread::scope(|s| s.spawn(|| rate_limit_body(&dp)).join());
    joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

fn rate_limit_body(dp: &Datapath) {
    // SAFETY: plain syscalls on this thread with a valid, zero-initialised cpu_set_t.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning the test thread"
        );
    }
    let dgram = Pkt::udp(CLIENT_POD, SVC_VIP).build();
    let budget = svc_common::GENERATED_PER_CPU_PER_S;
    let start = std::time::Instant::now();
    let mut answered = 0u64;
    for _ in 0..budget {
        let res = dp.run(Program::Ingress.name(), &dgram, 1).unwrap();
        if res.retval == TC_ACT_REDIRECT {
            answered += 1;
        }
    }
    let res = dp.run(Program::Ingress.name(), &dgram, 1).unwrap();
    let elapsed = start.elapsed();
    assert!(
        elapsed < std::time::Duration::from_millis(900),
        "{budget} runs took {elapsed:?}: the window may have rolled over"
    );
    assert_eq!(answered, budget, "every answer within the budget is sent");
    assert_eq!(
        (res.retval, res.output),
        (TC_ACT_SHOT, dgram.clone()),
        "answer number {} in the window is dropped, untouched",
        budget + 1
    );
    assert_eq!(
        dp.counter(svc_common::Hook::PodIngress, Reason::RateLimited),
        1
    );
    assert_eq!(
        dp.counter(svc_common::Hook::PodIngress, Reason::NoBackend),
        budget
    );
}

// ---------------------------------------------------------------------------------------------
// Source NAT
// ---------------------------------------------------------------------------------------------

/// An external flow source-NATed towards a remote backend whose conntrack entries were evicted
/// is picked up onto the same SNAT port: the port is first tried at a hash of the client's
/// tuple, so the backend keeps seeing the same 4-tuple and the connection continues.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn an_evicted_snat_flow_is_picked_up_onto_its_port() {
    node_test(|dp, uplink| {
        nodeport(dp, PROTO_TCP, BACKEND_NARROW, 0);
        for port in 40100u16..40116 {
            let c = ext(port);
            let first = syn_to_nodeport(dp, &uplink, c);
            for (k, _) in dp.ct_entries() {
                dp.ct_remove(&k).unwrap();
            }
            let picked = dp.counter(Program::UplinkIngress.hook(), Reason::CtPickedUp);
            let ack = Pkt::tcp(c, NODEPORT, TCP_ACK);
            dp.run_on(
                Program::UplinkIngress.name(),
                &wire(&ack, EXT_CLIENT_MAC),
                uplink.ifindex,
            )
            .unwrap();
            assert_eq!(
                dp.counter(Program::UplinkIngress.hook(), Reason::CtPickedUp),
                picked + 1,
                "{c}: the ACK was picked up"
            );
            assert_eq!(
                snat_port(dp, c, PROTO_TCP),
                first,
                "{c}: picked up onto the SNAT port its SYN got"
            );
        }
    });
}

/// With no SNAT address (the agent found none of the node's addresses usable and wrote
/// 0.0.0.0), a flow to a remote backend is dropped and counted, never sent from 0.0.0.0; a
/// local backend needs no SNAT and is still served.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn without_a_snat_address_remote_flows_are_dropped_and_counted() {
    node_test(|dp, uplink| {
        dp.set_config(Ipv4Addr::UNSPECIFIED).unwrap();
        nodeport(dp, PROTO_TCP, BACKEND_NARROW, 0);
        let syn = Pkt::tcp(ext(40200), NODEPORT, TCP_SYN);
        dp.check_on(
            uplink.ifindex,
            &Fixture::dropped(
                "SYN to a remote backend without a SNAT address",
                Program::UplinkIngress,
                wire(&syn, EXT_CLIENT_MAC),
                Reason::SnatNoAddress,
            ),
        );
        assert_eq!(dp.ct_entries(), vec![], "nothing written");
        nodeport(dp, PROTO_TCP, BACKEND_A, BACKEND_F_LOCAL);
        let syn = Pkt::tcp(ext(40201), NODEPORT, TCP_SYN);
        dp.check_on(
            uplink.ifindex,
            &to_local_backend("SYN to a local backend without a SNAT address", &syn),
        );
    });
}

/// A bare ACK from a remote backend to a source-NATed flow whose SYN it has not answered is
/// passed on (translated), not dropped as a collision: the tuple's earlier holder is usually
/// another client's flow in TIME_WAIT on the backend, which the client's reset clears; the
/// client's retransmitted SYN would get the same hashed SNAT port again.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn a_bare_ack_to_a_source_natted_syn_is_passed_on() {
    node_test(|dp, uplink| {
        nodeport(dp, PROTO_TCP, BACKEND_NARROW, 0);
        let port = syn_to_nodeport(dp, &uplink, ext(40300));
        let collisions = dp.counter(Program::UplinkIngress.hook(), Reason::CtCollision);
        let rev_nat = dp.counter(Program::UplinkIngress.hook(), Reason::RevNat);
        let ack = Pkt::tcp(BACKEND_NARROW, SocketAddrV4::new(NODE_IP, port), TCP_ACK);
        dp.run_on(
            Program::UplinkIngress.name(),
            &wire(&ack, ROUTER_MAC),
            uplink.ifindex,
        )
        .unwrap();
        assert_eq!(
            dp.counter(Program::UplinkIngress.hook(), Reason::CtCollision),
            collisions,
            "not a collision"
        );
        assert_eq!(
            dp.counter(Program::UplinkIngress.hook(), Reason::RevNat),
            rev_nat + 1,
            "translated back to the client"
        );
        assert_eq!(dp.ct_entries().len(), 2, "the flow's entries stay");
    });
}
