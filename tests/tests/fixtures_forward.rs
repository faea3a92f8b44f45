//! `BPF_PROG_TEST_RUN` fixtures for packets the tc programs send on themselves, bypassing the
//! stack's forwarding: the TTL they decrement (hairpin, SNAT towards a remote backend, replies
//! to external clients; TTL 1 is left to the stack), hostNetwork endpoints' replies at the
//! uplink's egress, and source NAT (an evicted flow keeps its port, no SNAT address, a bare
//! ACK to a source-NATed SYN).
//!
//! Runs that consult the FIB (`bpf_fib_lookup` in `route.rs`) happen on a device of an
//! [`XdpNode`] (`ctx_in.ifindex`), whose routes include a path locked to MTU [`PATH_MTU`]
//! towards [`BACKEND_NARROW`] and [`FAR_CLIENT`]. `bpf_redirect_neigh` resolves MACs only
//! after the program, so redirected outputs keep the input's Ethernet addresses.
//!
//! Path MTU checks and the limits on what the datapath generates (no ICMP error answered with
//! another, rate-limited rejects) are in `fixtures_forward_limits`; the helpers both share are
//! in `forward_common`.
//!
//! Run as root: `cargo test -p tests --test fixtures_forward`.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::net::{Ipv4Addr, SocketAddrV4};

use svc_common::{Reason, BACKEND_F_LOCAL, FAULT_NO_SKIP_NEIGH, PROTO_TCP, PROTO_UDP};
use svc_testkit::fixtures::*;

mod forward_common;
use forward_common::*;

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
/// `bpf_redirect_neigh`, TTL − 1, both directions. TTL 1 to the NodePort is answered with an
/// ICMP time exceeded from the NodePort's address (passed to the stack untranslated, it would
/// be delivered locally: the NodePort is the node's own address); a UDP datagram's answer
/// quotes 8 bytes, a TCP segment's the whole TCP header. To a local backend the stack forwards
/// (and decrements) it, so the TTL is left alone.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn uplink_redirects_decrement_the_ttl_and_answer_ttl_1_with_time_exceeded() {
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
        &Fixture {
            name: "SYN with TTL 1 to the NodePort, remote backend → ICMP time exceeded".into(),
            program: Program::UplinkIngress,
            input: wire(&syn, EXT_CLIENT_MAC),
            verdict: TC_ACT_REDIRECT,
            output: icmp_answer(&syn, time_exceeded(), 20, EXT_CLIENT_MAC),
            reason: Reason::TtlExceeded,
        },
    );
    nodeport(dp, PROTO_UDP, BACKEND_B, 0);
    let dgram = Pkt::udp(ext(41002), NODEPORT).with_ttl(1);
    dp.check_on(
        uplink.ifindex,
        &Fixture {
            name: "UDP with TTL 1 to the NodePort, remote backend → ICMP time exceeded".into(),
            program: Program::UplinkIngress,
            input: wire(&dgram, EXT_CLIENT_MAC),
            verdict: TC_ACT_REDIRECT,
            output: icmp_answer(&dgram, time_exceeded(), 8, EXT_CLIENT_MAC),
            reason: Reason::TtlExceeded,
        },
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
