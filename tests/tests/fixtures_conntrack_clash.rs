//! `BPF_PROG_TEST_RUN` fixtures for the conntrack of the pod-veth programs when flows meet:
//! the reply-tuple clash of one client port to two frontends sharing a backend (the second
//! flow's port remapped, a closed flow's tuple taken over), and flows whose entries were lost
//! (picked up mid-stream, a bare ACK to an unanswered SYN treated as a collision).
//!
//! Entries are made and checked as in `fixtures_conntrack` (whose module docs say how); run as
//! root: `cargo test -p tests --test fixtures_conntrack_clash`.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]

use std::net::SocketAddrV4;

use svc_common::{
    CtTimeouts, Reason, CT_DIR_REPLY, CT_STATE_SYN_SENT, PROTO_TCP, SNAT_PORT_MAX, SNAT_PORT_MIN,
};
use svc_testkit::fixtures::*;

mod ct_common;
use ct_common::*;

// ---------------------------------------------------------------------------------------------
// Reply-tuple clash
// ---------------------------------------------------------------------------------------------

/// One client port to two frontends sharing a backend: both flows' replies would come from
/// BACKEND_A:8080 to the same client port. While the first flow lives, the second gets its
/// source port remapped into the SNAT range (as nf_nat does), the first flow's reply entry is
/// untouched, and each flow's replies get their own frontend back.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn reply_tuple_clash_remaps_the_second_flows_port() {
    let mut dp = datapath();
    two_frontends_one_backend(&mut dp);
    let c = CLIENT_POD;
    let syn1 = Pkt::tcp(c, SVC_VIP, TCP_SYN);
    dp.check(&Fixture::translate(
        "SYN client:40000 → SVC_VIP",
        Program::Ingress,
        &syn1,
        &syn1.clone().with_dst(BACKEND_A),
        Reason::DnatNew,
    ));
    let rep1_key = ct_reply(BACKEND_A, c, PROTO_TCP);
    let rep1 = dp.ct_get(&rep1_key).unwrap();

    let syn2 = Pkt::tcp(c, SVC_VIP2, TCP_SYN);
    let fwd2_key = ct_forward(c, SVC_VIP2, PROTO_TCP);
    dp.check_after(
        None,
        &Fixture::translate(
            "SYN client:40000 → SVC_VIP2 while the first flow lives",
            Program::Ingress,
            &syn2,
            &syn2,
            Reason::ClashRemapped,
        ),
        |dp| {
            let port = dp
                .ct_get(&fwd2_key)
                .expect("forward entry of the second flow")
                .src_port;
            syn2.clone()
                .with_src(client(port))
                .with_dst(BACKEND_A)
                .build()
        },
    );
    let fwd2 = dp.ct_get(&fwd2_key).unwrap();
    let port = fwd2.src_port;
    assert!(
        (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port),
        "remapped port {port} outside {SNAT_PORT_MIN}..={SNAT_PORT_MAX}"
    );
    assert_eq!(
        (
            fwd2.src_addr,
            fwd2.dst_addr,
            fwd2.dst_port,
            fwd2.frontend_id
        ),
        (
            c.ip().octets(),
            BACKEND_A.ip().octets(),
            BACKEND_A.port(),
            SVC2_ID
        ),
        "second flow's forward entry"
    );
    assert_eq!(
        dp.ct_get(&rep1_key),
        Some(rep1),
        "the first flow's reply entry is unchanged"
    );
    let rep2 = dp
        .ct_get(&ct_reply(BACKEND_A, client(port), PROTO_TCP))
        .expect("second flow's reply entry under the remapped port");
    assert_eq!(
        (
            rep2.src_addr,
            rep2.src_port,
            rep2.dst_addr,
            rep2.dst_port,
            rep2.dir
        ),
        (
            SVC_VIP2.ip().octets(),
            SVC_VIP2.port(),
            c.ip().octets(),
            c.port(),
            CT_DIR_REPLY
        ),
        "second flow's reply entry restores SVC_VIP2 and the client's own port"
    );
    assert_eq!(dp.ct_entries().len(), 4);

    // Replies of both flows.
    let r1 = Pkt::tcp(BACKEND_A, c, TCP_SYN | TCP_ACK);
    dp.check(&Fixture::translate(
        "first flow's SYN-ACK → from SVC_VIP",
        Program::Egress,
        &r1,
        &r1.clone().with_src(SVC_VIP),
        Reason::RevNat,
    ));
    let r2 = Pkt::tcp(BACKEND_A, client(port), TCP_SYN | TCP_ACK);
    dp.check(&Fixture::translate(
        "second flow's SYN-ACK to the remapped port → from SVC_VIP2 to client:40000",
        Program::Egress,
        &r2,
        &r2.clone().with_src(SVC_VIP2).with_dst(c),
        Reason::RevNat,
    ));
    // The second flow's next segment keeps its remapped port.
    let ack2 = Pkt::tcp(c, SVC_VIP2, TCP_ACK);
    dp.check(&Fixture::translate(
        "second flow's ACK keeps the remapped port",
        Program::Ingress,
        &ack2,
        &ack2.clone().with_src(client(port)).with_dst(BACKEND_A),
        Reason::DnatEstablished,
    ));
}

/// When the flow holding the reply tuple is over (closed by a RST, or expired), the new flow
/// takes the tuple over with the client's own port, and the old flow's forward entry goes.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn reply_tuple_of_a_closed_flow_is_taken_over() {
    let mut dp = datapath();
    two_frontends_one_backend(&mut dp);
    for how in ["closed by RST", "expired"] {
        clear_ct(&mut dp);
        let c = CLIENT_POD;
        let syn1 = Pkt::tcp(c, SVC_VIP, TCP_SYN);
        dp.check(&Fixture::translate(
            "SYN client:40000 → SVC_VIP",
            Program::Ingress,
            &syn1,
            &syn1.clone().with_dst(BACKEND_A),
            Reason::DnatNew,
        ));
        let keys1 = (
            ct_forward(c, SVC_VIP, PROTO_TCP),
            ct_reply(BACKEND_A, c, PROTO_TCP),
        );
        if how == "expired" {
            let ago = u64::from(CtTimeouts::DEFAULT.tcp_syn_sent_s) * S + S;
            rewrite_flow(&mut dp, &keys1, CT_STATE_SYN_SENT, ago, ago);
        } else {
            let rst = Pkt::tcp(c, SVC_VIP, TCP_RST);
            dp.check(&Fixture::translate(
                "RST of the first flow",
                Program::Ingress,
                &rst,
                &rst.clone().with_dst(BACKEND_A),
                Reason::DnatEstablished,
            ));
            assert_eq!(states(&dp, &keys1), ("closed", "closed"));
            // A closed flow's tuple is taken over once it has been quiet for 100 ms (lb.rs,
            // TAKEOVER_QUIET_NS: the backend may still hold it in TIME_WAIT); sooner, the new
            // flow gets a remapped port.
            std::thread::sleep(std::time::Duration::from_millis(150));
        }
        let syn2 = Pkt::tcp(c, SVC_VIP2, TCP_SYN);
        dp.check(&Fixture::translate(
            &format!("SYN client:40000 → SVC_VIP2, first flow {how}: the client's own port"),
            Program::Ingress,
            &syn2,
            &syn2.clone().with_dst(BACKEND_A),
            Reason::DnatNew,
        ));
        let rep = dp
            .ct_get(&keys1.1)
            .expect("reply entry BACKEND_A → client:40000");
        assert_eq!(
            (rep.src_addr, rep.src_port, rep.frontend_id, rep.state),
            (
                SVC_VIP2.ip().octets(),
                SVC_VIP2.port(),
                SVC2_ID,
                CT_STATE_SYN_SENT
            ),
            "{how}: the reply tuple now belongs to the flow to SVC_VIP2"
        );
        assert!(
            dp.ct_get(&keys1.0).is_none(),
            "{how}: the old flow's forward entry was deleted"
        );
        assert_eq!(dp.ct_entries().len(), 2, "{how}: exactly the new pair");
        let r = Pkt::tcp(BACKEND_A, c, TCP_SYN | TCP_ACK);
        dp.check(&Fixture::translate(
            &format!("{how}: SYN-ACK → from SVC_VIP2"),
            Program::Egress,
            &r,
            &r.clone().with_src(SVC_VIP2),
            Reason::RevNat,
        ));
    }
}

/// A mid-stream TCP packet whose flow's entries were lost (LRU eviction) is picked up onto the
/// backend the tuple hashes to, which is the one its SYN got: both entries are written again,
/// established, and the connection goes on.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn tcp_without_entry_is_picked_up_onto_the_backend_its_syn_got() {
    let mut dp = datapath();
    dp.add_service(
        SVC_VIP,
        PROTO_TCP,
        SVC_ID,
        &[(BACKEND_A_ID, BACKEND_A), (BACKEND_A_ID + 1, BACKEND_B)],
    )
    .unwrap();
    let mut picked = std::collections::BTreeSet::new();
    for (i, (name, flags)) in [
        ("ACK", TCP_ACK),
        ("PSH|ACK", TCP_PSH | TCP_ACK),
        ("FIN|ACK", TCP_FIN | TCP_ACK),
        ("SYN|ACK", TCP_SYN | TCP_ACK),
    ]
    .into_iter()
    .enumerate()
    {
        for port in 0..8u16 {
            let c = SocketAddrV4::new(*CLIENT_POD.ip(), 42_000 + i as u16 * 100 + port);
            // The SYN chooses the backend; then both entries are lost.
            let syn = Pkt::tcp(c, SVC_VIP, TCP_SYN);
            dp.run(Program::Ingress.name(), &syn.build(), 1).unwrap();
            let fwd = ct_forward(c, SVC_VIP, PROTO_TCP);
            let first = dp.ct_get(&fwd).expect("the SYN wrote its forward entry");
            let backend = SocketAddrV4::new(first.dst_addr.into(), first.dst_port);
            assert_eq!(first.src_port, c.port(), "no remap on a fresh tuple");
            for (k, _) in dp.ct_entries() {
                dp.ct_remove(&k).unwrap();
            }
            let mid = Pkt::tcp(c, SVC_VIP, flags);
            dp.check(&Fixture::translate(
                &format!("{name} from {c} after its entries were evicted"),
                Program::Ingress,
                &mid,
                &mid.clone().with_dst(backend),
                Reason::CtPickedUp,
            ));
            let again = dp.ct_get(&fwd).expect("picked up: forward entry written");
            assert!(
                again.state >= svc_common::CT_STATE_ESTABLISHED,
                "picked up as established or later"
            );
            assert!(
                dp.ct_get(&ct_reply(backend, c, PROTO_TCP)).is_some(),
                "picked up: reply entry written"
            );
            picked.insert(backend);
        }
    }
    assert_eq!(
        picked.len(),
        2,
        "tuples hash onto both backends: {picked:?}"
    );
}

/// A flow to SVC_VIP2 claimed the reply tuple of a live connection to SVC_VIP whose entries the
/// LRU had evicted (same client port, same backend). The backend answers the newcomer's SYN
/// with a bare ACK (its challenge ACK for the live connection): that ACK is dropped and the
/// newcomer's entries deleted, so the client never resets the backend's connection. Then the
/// old connection's next packet is picked up and, when a newcomer holds its tuple with an
/// unanswered SYN, takes the tuple back.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn bare_ack_to_an_unanswered_syn_is_a_collision_and_the_live_flow_keeps_its_tuple() {
    let mut dp = datapath();
    two_frontends_one_backend(&mut dp);
    let c = CLIENT_POD;
    let rep_key = ct_reply(BACKEND_A, c, PROTO_TCP);
    let fwd2_key = ct_forward(c, SVC_VIP2, PROTO_TCP);
    // The newcomer's SYN: its reply tuple is free (the live flow's entries are gone).
    let syn2 = Pkt::tcp(c, SVC_VIP2, TCP_SYN);
    dp.check(&Fixture::translate(
        "SYN client → SVC_VIP2 while the live flow to SVC_VIP has no entries",
        Program::Ingress,
        &syn2,
        &syn2.clone().with_dst(BACKEND_A),
        Reason::DnatNew,
    ));
    let challenge = Pkt::tcp(BACKEND_A, c, TCP_ACK);
    for prog in [Program::Egress, Program::Ingress] {
        let before = dp.counter(prog.hook(), Reason::CtCollision);
        dp.check(&Fixture::dropped(
            &format!("backend's bare ACK to the unanswered SYN ({prog:?})"),
            prog,
            challenge.build(),
            Reason::CtCollision,
        ));
        assert_eq!(dp.counter(prog.hook(), Reason::CtCollision), before + 1);
        assert_eq!(
            dp.ct_entries(),
            vec![],
            "the newcomer's entries are deleted"
        );
        // The client's SYN retransmission opens it again for the next round.
        dp.run(Program::Ingress.name(), &syn2.build(), 1).unwrap();
    }

    // The newcomer holds the tuple again (SYN sent, unanswered); the live flow's next
    // segment is picked up and takes the tuple back; the newcomer's forward entry goes, so
    // its next SYN is balanced afresh (and remapped).
    let data = Pkt::tcp(c, SVC_VIP, TCP_PSH | TCP_ACK);
    dp.check(&Fixture::translate(
        "live flow's segment, entries evicted, tuple held by an unanswered SYN",
        Program::Ingress,
        &data,
        &data.clone().with_dst(BACKEND_A),
        Reason::CtPickedUp,
    ));
    let rep = dp.ct_get(&rep_key).expect("reply entry");
    assert_eq!(
        (rep.src_addr, rep.src_port),
        (SVC_VIP.ip().octets(), SVC_VIP.port()),
        "the reply tuple names the live flow's frontend again"
    );
    assert!(
        dp.ct_get(&fwd2_key).is_none(),
        "the newcomer's forward entry is gone"
    );
    let reply = Pkt::tcp(BACKEND_A, c, TCP_PSH | TCP_ACK);
    dp.check(&Fixture::translate(
        "the backend's reply on the live flow",
        Program::Egress,
        &reply,
        &reply.clone().with_src(SVC_VIP),
        Reason::RevNat,
    ));
    dp.check_after(
        None,
        &Fixture::translate(
            "the newcomer's SYN retransmission, now remapped",
            Program::Ingress,
            &syn2,
            &syn2,
            Reason::ClashRemapped,
        ),
        |dp| {
            let port = dp
                .ct_get(&fwd2_key)
                .expect("newcomer's forward entry")
                .src_port;
            syn2.clone()
                .with_src(client(port))
                .with_dst(BACKEND_A)
                .build()
        },
    );
}
