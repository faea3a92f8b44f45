//! `BPF_PROG_TEST_RUN` fixtures for the conntrack of the pod-veth programs, packet by packet:
//! mid-stream packets to a frontend without an entry, stale SYN-ACKs on the reply entry of a
//! closed flow, and the TCP and UDP state machines driven by the packets of a connection.
//!
//! Entries are made and checked as in `fixtures_conntrack` (whose module docs say how); run as
//! root: `cargo test -p tests --test fixtures_conntrack_packets`.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]

use std::net::SocketAddrV4;

use svc_common::{
    Reason, CT_STATE_CLOSED, CT_STATE_CLOSE_WAIT, CT_STATE_ESTABLISHED, CT_STATE_SYN_SENT,
    CT_STATE_TIME_WAIT, PROTO_TCP, PROTO_UDP,
};
use svc_testkit::fixtures::*;

mod ct_common;
use ct_common::*;

// ---------------------------------------------------------------------------------------------
// Packets without an entry; stale SYN-ACKs
// ---------------------------------------------------------------------------------------------

/// Only a SYN opens a TCP flow: any other segment to a frontend without a live entry is
/// dropped and writes nothing. To a non-frontend it passes; UDP has no SYN and opens a flow.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn tcp_without_syn_and_without_entry_is_dropped() {
    let mut dp = datapath();
    one_backend(&mut dp);
    for (name, flags) in [
        ("RST", TCP_RST),
        ("RST|ACK", TCP_RST | TCP_ACK),
        ("SYN|RST", TCP_SYN | TCP_RST),
    ] {
        dp.check(&Fixture::dropped(
            &format!("{name} to SVC_VIP without an entry"),
            Program::Ingress,
            Pkt::tcp(CLIENT_POD, SVC_VIP, flags).build(),
            Reason::NonSynNoEntry,
        ));
    }
    assert_eq!(dp.ct_entries().len(), 0, "nothing written");
    dp.check(&Fixture::untouched(
        "ACK to a pod that is no frontend",
        Program::Ingress,
        Pkt::tcp(CLIENT_POD, SocketAddrV4::new(OTHER_POD, 80), TCP_ACK).build(),
        Reason::NotService,
    ));
    let udp = Pkt::udp(CLIENT_POD, SVC_VIP);
    dp.check(&Fixture::translate(
        "UDP to SVC_VIP opens a flow",
        Program::Ingress,
        &udp,
        &udp.clone().with_dst(BACKEND_A),
        Reason::DnatNew,
    ));
}

/// A SYN-ACK that hits the reply entry of a flow that is over belongs to another connection
/// (the client reused its port towards the backend's own address): it passes untranslated and
/// both entries of the old flow are deleted. On a live flow it is translated.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn syn_ack_on_the_reply_entry_of_a_closed_flow_passes_and_forgets_it() {
    let mut dp = datapath();
    one_backend(&mut dp);
    let synack = Pkt::tcp(BACKEND_A, CLIENT_POD, TCP_SYN | TCP_ACK);
    for (prog, state) in [
        (Program::Egress, CT_STATE_TIME_WAIT),
        (Program::Egress, CT_STATE_CLOSED),
        (Program::Egress, CT_STATE_CLOSE_WAIT),
        // A local backend's SYN-ACK seen leaving its own pod.
        (Program::Ingress, CT_STATE_TIME_WAIT),
    ] {
        clear_ct(&mut dp);
        let keys = open(&dp, PROTO_TCP, CLIENT_POD);
        rewrite_flow(&mut dp, &keys, state, S, 5 * S);
        dp.check(&Fixture::untouched(
            &format!(
                "SYN-ACK on the reply entry of a {} flow ({prog:?})",
                state_name(state)
            ),
            prog,
            synack.build(),
            Reason::NotService,
        ));
        assert_eq!(
            dp.ct_entries(),
            vec![],
            "both entries of the {} flow deleted",
            state_name(state)
        );
    }
    // Control: on a live flow (handshake in progress, or its last ACK lost) it is translated.
    for state in [CT_STATE_SYN_SENT, CT_STATE_ESTABLISHED] {
        clear_ct(&mut dp);
        let keys = open(&dp, PROTO_TCP, CLIENT_POD);
        rewrite_flow(&mut dp, &keys, state, S, 5 * S);
        dp.check(&Fixture::translate(
            &format!("SYN-ACK on a {} flow", state_name(state)),
            Program::Egress,
            &synack,
            &synack.clone().with_src(SVC_VIP),
            Reason::RevNat,
        ));
        assert_eq!(dp.ct_entries().len(), 2);
    }
}

// ---------------------------------------------------------------------------------------------
// The state machine, driven by packets
// ---------------------------------------------------------------------------------------------

/// SYN, SYN-ACK, ACK, FIN (client), ACK, FIN (backend), ACK, RST: each packet translated, the
/// state of both entries read back after each.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn tcp_states_follow_the_packets_of_a_connection() {
    let mut dp = datapath();
    one_backend(&mut dp);
    let c = CLIENT_POD;
    let keys = (
        ct_forward(c, SVC_VIP, PROTO_TCP),
        ct_reply(BACKEND_A, c, PROTO_TCP),
    );
    let steps: [(&str, bool, u8, Reason, u8); 8] = [
        ("SYN", true, TCP_SYN, Reason::DnatNew, CT_STATE_SYN_SENT),
        (
            "SYN-ACK",
            false,
            TCP_SYN | TCP_ACK,
            Reason::RevNat,
            CT_STATE_ESTABLISHED,
        ),
        (
            "ACK",
            true,
            TCP_ACK,
            Reason::DnatEstablished,
            CT_STATE_ESTABLISHED,
        ),
        (
            "client FIN",
            true,
            TCP_FIN | TCP_ACK,
            Reason::DnatEstablished,
            CT_STATE_CLOSE_WAIT,
        ),
        (
            "backend ACK",
            false,
            TCP_ACK,
            Reason::RevNat,
            CT_STATE_CLOSE_WAIT,
        ),
        (
            "backend FIN",
            false,
            TCP_FIN | TCP_ACK,
            Reason::RevNat,
            CT_STATE_TIME_WAIT,
        ),
        (
            "last ACK",
            true,
            TCP_ACK,
            Reason::DnatEstablished,
            CT_STATE_TIME_WAIT,
        ),
        (
            "RST",
            true,
            TCP_RST,
            Reason::DnatEstablished,
            CT_STATE_CLOSED,
        ),
    ];
    for (name, forward, flags, reason, want) in steps {
        if forward {
            let p = Pkt::tcp(c, SVC_VIP, flags);
            dp.check(&Fixture::translate(
                name,
                Program::Ingress,
                &p,
                &p.clone().with_dst(BACKEND_A),
                reason,
            ));
        } else {
            let p = Pkt::tcp(BACKEND_A, c, flags);
            dp.check(&Fixture::translate(
                name,
                Program::Egress,
                &p,
                &p.clone().with_src(SVC_VIP),
                reason,
            ));
        }
        assert_eq!(
            states(&dp, &keys),
            (state_name(want), state_name(want)),
            "(forward, reply) state after {name}"
        );
    }

    // A reset during the handshake, from the backend.
    clear_ct(&mut dp);
    let c = client(40001);
    let keys = (
        ct_forward(c, SVC_VIP, PROTO_TCP),
        ct_reply(BACKEND_A, c, PROTO_TCP),
    );
    let syn = Pkt::tcp(c, SVC_VIP, TCP_SYN);
    dp.check(&Fixture::translate(
        "SYN",
        Program::Ingress,
        &syn,
        &syn.clone().with_dst(BACKEND_A),
        Reason::DnatNew,
    ));
    let rst = Pkt::tcp(BACKEND_A, c, TCP_RST | TCP_ACK);
    dp.check(&Fixture::translate(
        "RST|ACK from the backend",
        Program::Egress,
        &rst,
        &rst.clone().with_src(SVC_VIP),
        Reason::RevNat,
    ));
    assert_eq!(
        states(&dp, &keys),
        ("closed", "closed"),
        "after the backend's RST"
    );

    // Both FINs crossing: the backend's FIN first this time.
    clear_ct(&mut dp);
    let c = client(40002);
    let keys = (
        ct_forward(c, SVC_VIP, PROTO_TCP),
        ct_reply(BACKEND_A, c, PROTO_TCP),
    );
    for (name, forward, flags, reason, want) in [
        ("SYN", true, TCP_SYN, Reason::DnatNew, "syn_sent"),
        (
            "SYN-ACK",
            false,
            TCP_SYN | TCP_ACK,
            Reason::RevNat,
            "established",
        ),
        (
            "backend FIN",
            false,
            TCP_FIN | TCP_ACK,
            Reason::RevNat,
            "close_wait",
        ),
        (
            "client FIN",
            true,
            TCP_FIN | TCP_ACK,
            Reason::DnatEstablished,
            "time_wait",
        ),
    ] {
        if forward {
            let p = Pkt::tcp(c, SVC_VIP, flags);
            dp.check(&Fixture::translate(
                name,
                Program::Ingress,
                &p,
                &p.clone().with_dst(BACKEND_A),
                reason,
            ));
        } else {
            let p = Pkt::tcp(BACKEND_A, c, flags);
            dp.check(&Fixture::translate(
                name,
                Program::Egress,
                &p,
                &p.clone().with_src(SVC_VIP),
                reason,
            ));
        }
        assert_eq!(states(&dp, &keys), (want, want), "after {name}");
    }
}

/// UDP: unreplied until the backend answers, replied after.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn udp_states_follow_the_first_reply() {
    let mut dp = datapath();
    one_backend(&mut dp);
    let keys = open(&dp, PROTO_UDP, CLIENT_POD);
    assert_eq!(states(&dp, &keys), ("udp_unreplied", "udp_unreplied"));
    let again = Pkt::udp(CLIENT_POD, SVC_VIP);
    dp.check(&Fixture::translate(
        "second datagram",
        Program::Ingress,
        &again,
        &again.clone().with_dst(BACKEND_A),
        Reason::DnatEstablished,
    ));
    assert_eq!(states(&dp, &keys), ("udp_unreplied", "udp_unreplied"));
    let reply = Pkt::udp(BACKEND_A, CLIENT_POD);
    dp.check(&Fixture::translate(
        "reply",
        Program::Egress,
        &reply,
        &reply.clone().with_src(SVC_VIP),
        Reason::RevNat,
    ));
    assert_eq!(states(&dp, &keys), ("udp_replied", "udp_replied"));
}
