//! `BPF_PROG_TEST_RUN` fixtures for the conntrack lifecycle of the pod-veth programs: per-state
//! timeouts, a flow living while either direction is fresh, and SYNs that reopen a closed flow
//! or one whose backend left.
//!
//! Old entries are made by rewriting `last_seen_ns` in `SVC_CT` relative to `CLOCK_MONOTONIC`
//! (the clock `bpf_ktime_get_ns` reads): `now − timeout − 1 s` is expired, `now − timeout + 5 s`
//! is not. Each case checks verdict, output bytes (etherparse-built), the one counter and the
//! entries read back from `SVC_CT`.
//!
//! Mid-stream packets without an entry, stale SYN-ACKs and the state machine driven by real
//! packets are in `fixtures_conntrack_packets`; the reply-tuple clash of one client port to two
//! frontends sharing a backend, and flows whose entries were lost, in `fixtures_conntrack_clash`.
//! The helpers all three share are in `ct_common`.
//!
//! Run as root: `cargo test -p tests --test fixtures_conntrack`.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]

use svc_common::{
    CtTimeouts, Reason, CT_STATE_CLOSED, CT_STATE_CLOSE_WAIT, CT_STATE_ESTABLISHED, CT_STATE_NONE,
    CT_STATE_SYN_SENT, CT_STATE_TIME_WAIT, CT_STATE_UDP_REPLIED, CT_STATE_UDP_UNREPLIED, PROTO_TCP,
    PROTO_UDP,
};
use svc_testkit::fixtures::*;

mod ct_common;
use ct_common::*;

// ---------------------------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------------------------

/// Every state's timeout, on both sides: an entry pair last seen `timeout − 5 s` ago still
/// translates both directions; one last seen `timeout + 1 s` ago is treated as absent — the
/// reply passes untranslated, a TCP segment without SYN is dropped as having no entry, and a
/// SYN (or, for UDP, any datagram) opens a new flow whose entries are written afresh.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn every_state_times_out_after_its_own_timeout() {
    let t = timeouts_for_this_machine();
    println!("timeouts: {t:?}");
    let mut dp = datapath_with(&t);
    one_backend(&mut dp);
    let sec = |s: u32| u64::from(s) * S;
    // (protocol, state, timeout, how long before the last packet the flow was created)
    let cases = [
        (PROTO_TCP, CT_STATE_SYN_SENT, t.tcp_syn_sent_s, 0),
        (PROTO_TCP, CT_STATE_ESTABLISHED, t.tcp_established_s, 0),
        (PROTO_TCP, CT_STATE_NONE, t.tcp_established_s, 0),
        (PROTO_TCP, CT_STATE_CLOSE_WAIT, t.tcp_close_wait_s, 0),
        (PROTO_TCP, CT_STATE_TIME_WAIT, t.tcp_close_s, 0),
        (PROTO_TCP, CT_STATE_CLOSED, t.tcp_close_s, 0),
        (PROTO_UDP, CT_STATE_UDP_UNREPLIED, t.udp_s, 0),
        // Unreplied stays on the short timeout however long it has been sending.
        (PROTO_UDP, CT_STATE_UDP_UNREPLIED, t.udp_s, 10 * S),
        // Answered within the first 2 s: still the short timeout.
        (PROTO_UDP, CT_STATE_UDP_REPLIED, t.udp_s, S),
        // Written by a datapath without states: as replied.
        (PROTO_UDP, CT_STATE_NONE, t.udp_stream_s, 3 * S),
        // Answered and active past 2 s: a stream.
        (PROTO_UDP, CT_STATE_UDP_REPLIED, t.udp_stream_s, 3 * S),
    ];
    for (i, &(proto, state, timeout_s, active)) in cases.iter().enumerate() {
        let what = format!(
            "case {i}: {} {} (timeout {timeout_s} s, active {} s)",
            if proto == PROTO_TCP { "TCP" } else { "UDP" },
            state_name(state),
            active / S
        );
        println!("{what}");
        clear_ct(&mut dp);
        let c = client(40000 + i as u16);
        let keys = open(&dp, proto, c);
        let live_ago = sec(timeout_s) - 5 * S;
        let dead_ago = sec(timeout_s) + S;

        // Live: both directions translate from the entries.
        rewrite_flow(&mut dp, &keys, state, live_ago, live_ago + active);
        let mid = from_client(proto, c, SVC_VIP, TCP_ACK);
        dp.check(&Fixture::translate(
            &format!("{what}: client packet {} s after the last", live_ago / S),
            Program::Ingress,
            &mid,
            &mid.clone().with_dst(BACKEND_A),
            Reason::DnatEstablished,
        ));
        rewrite_flow(&mut dp, &keys, state, live_ago, live_ago + active);
        // A flow in SYN_SENT gets the SYN-ACK; a bare ACK there is a collision (see
        // `bare_ack_to_an_unanswered_syn_is_a_collision_…`).
        let reply_flags = if state == CT_STATE_SYN_SENT {
            TCP_SYN | TCP_ACK
        } else {
            TCP_ACK
        };
        let reply = from_backend(proto, BACKEND_A, c, reply_flags);
        dp.check(&Fixture::translate(
            &format!("{what}: reply {} s after the last", live_ago / S),
            Program::Egress,
            &reply,
            &reply.clone().with_src(SVC_VIP),
            Reason::RevNat,
        ));

        // Expired: the pair is absent for a reply.
        rewrite_flow(&mut dp, &keys, state, dead_ago, dead_ago + active);
        dp.check(&Fixture::untouched(
            &format!("{what}: reply {} s after the last", dead_ago / S),
            Program::Egress,
            reply.build(),
            Reason::NotService,
        ));
        let since = monotonic_ns();
        if proto == PROTO_TCP {
            // (A mid-stream ACK here would be picked up: `tcp_without_syn_...` covers it.)
            let _ = &mid;
            let syn = from_client(proto, c, SVC_VIP, TCP_SYN);
            // A SYN that finds the expired forward entry reopens the flow.
            dp.check(&Fixture::translate(
                &format!(
                    "{what}: SYN {} s after the last opens a new flow",
                    dead_ago / S
                ),
                Program::Ingress,
                &syn,
                &syn.clone().with_dst(BACKEND_A),
                Reason::CtReopened,
            ));
        } else {
            dp.check(&Fixture::translate(
                &format!(
                    "{what}: datagram {} s after the last opens a new flow",
                    dead_ago / S
                ),
                Program::Ingress,
                &mid,
                &mid.clone().with_dst(BACKEND_A),
                Reason::DnatNew,
            ));
        }
        let new_state = if proto == PROTO_TCP {
            CT_STATE_SYN_SENT
        } else {
            CT_STATE_UDP_UNREPLIED
        };
        assert_new_entry(
            &dp,
            &what,
            &keys.0,
            since,
            new_state,
            1,
            BACKEND_A,
            bid(proto),
        );
        assert_new_entry(
            &dp,
            &what,
            &keys.1,
            since,
            new_state,
            0,
            BACKEND_A,
            bid(proto),
        );
        assert_eq!(dp.ct_entries().len(), 2, "{what}: exactly the new pair");
    }
}

/// A flow lives while either direction is fresh: an entry whose own direction has been idle
/// past its timeout still translates while its peer is fresh (a one-way UDP stream's reply
/// entry sees no packets, yet must translate the first reply).
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn an_idle_direction_lives_while_its_peer_is_fresh() {
    let mut dp = datapath();
    one_backend(&mut dp);
    let t = CtTimeouts::DEFAULT;
    for (proto, state, timeout_s) in [
        (PROTO_UDP, CT_STATE_UDP_UNREPLIED, t.udp_s),
        (PROTO_TCP, CT_STATE_SYN_SENT, t.tcp_syn_sent_s),
        (PROTO_TCP, CT_STATE_TIME_WAIT, t.tcp_close_s),
    ] {
        let name = if proto == PROTO_TCP { "TCP" } else { "UDP" };
        let stale = u64::from(timeout_s) * S + S;
        clear_ct(&mut dp);
        let c = client(41000);
        let keys = open(&dp, proto, c);
        // The forward direction keeps sending; the reply entry has not seen a packet since.
        rewrite(&mut dp, &keys.0, state, 0, stale);
        rewrite(&mut dp, &keys.1, state, stale, stale);
        // The SYN-ACK is the answer a SYN_SENT flow gets (a bare ACK is a collision).
        let reply_flags = if state == CT_STATE_SYN_SENT {
            TCP_SYN | TCP_ACK
        } else {
            TCP_ACK
        };
        let reply = from_backend(proto, BACKEND_A, c, reply_flags);
        dp.check(&Fixture::translate(
            &format!(
                "{name} {}: reply on a stale reply entry with a fresh peer",
                state_name(state)
            ),
            Program::Egress,
            &reply,
            &reply.clone().with_src(SVC_VIP),
            Reason::RevNat,
        ));
        // And the other way round.
        rewrite(&mut dp, &keys.0, state, stale, stale);
        rewrite(&mut dp, &keys.1, state, 0, stale);
        let mid = from_client(proto, c, SVC_VIP, TCP_ACK);
        dp.check(&Fixture::translate(
            &format!(
                "{name} {}: client packet on a stale forward entry with a fresh peer",
                state_name(state)
            ),
            Program::Ingress,
            &mid,
            &mid.clone().with_dst(BACKEND_A),
            Reason::DnatEstablished,
        ));
        let fwd = dp.ct_get(&keys.0).unwrap();
        assert_eq!(
            fwd.packets, 1001,
            "{name}: the old forward entry was used, not replaced"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// SYNs that reopen a flow
// ---------------------------------------------------------------------------------------------

/// A SYN on a flow that is over (TIME_WAIT, CLOSED) — and, as the datapath decides, on one in
/// CLOSE_WAIT — balances the flow afresh: counted as `ct_reopened`, both entries written anew.
/// A SYN on a live established flow whose backend still serves (a retransmission) keeps it.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn syn_on_a_closed_flow_is_balanced_afresh() {
    let mut dp = datapath();
    one_backend(&mut dp);
    let syn = Pkt::tcp(CLIENT_POD, SVC_VIP, TCP_SYN);
    for state in [CT_STATE_TIME_WAIT, CT_STATE_CLOSED, CT_STATE_CLOSE_WAIT] {
        clear_ct(&mut dp);
        let keys = open(&dp, PROTO_TCP, CLIENT_POD);
        rewrite_flow(&mut dp, &keys, state, S, 5 * S);
        let since = monotonic_ns();
        dp.check(&Fixture::translate(
            &format!("SYN on a {} flow", state_name(state)),
            Program::Ingress,
            &syn,
            &syn.clone().with_dst(BACKEND_A),
            Reason::CtReopened,
        ));
        let what = format!("after a SYN on {}", state_name(state));
        assert_new_entry(
            &dp,
            &what,
            &keys.0,
            since,
            CT_STATE_SYN_SENT,
            1,
            BACKEND_A,
            BACKEND_A_ID,
        );
        assert_new_entry(
            &dp,
            &what,
            &keys.1,
            since,
            CT_STATE_SYN_SENT,
            0,
            BACKEND_A,
            BACKEND_A_ID,
        );
        assert_eq!(dp.ct_entries().len(), 2, "{what}: exactly the new pair");
    }
    // Control: a live established flow keeps its entries on a retransmitted SYN.
    clear_ct(&mut dp);
    let keys = open(&dp, PROTO_TCP, CLIENT_POD);
    rewrite_flow(&mut dp, &keys, CT_STATE_ESTABLISHED, S, 5 * S);
    let before = dp.ct_get(&keys.0).unwrap();
    dp.check(&Fixture::translate(
        "SYN on a live established flow",
        Program::Ingress,
        &syn,
        &syn.clone().with_dst(BACKEND_A),
        Reason::DnatEstablished,
    ));
    let after = dp.ct_get(&keys.0).unwrap();
    assert_eq!(
        (after.created_ns, after.packets, after.state),
        (before.created_ns, 1001, CT_STATE_ESTABLISHED),
        "the live entry was refreshed, not replaced"
    );
}

/// A SYN on a live flow whose backend has left the frontend's slots is balanced afresh onto
/// a current backend; mid-stream packets of that flow keep the old backend.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn syn_on_a_live_flow_whose_backend_left_is_balanced_afresh() {
    let mut dp = datapath();
    one_backend(&mut dp);
    let keys = open(&dp, PROTO_TCP, CLIENT_POD);
    rewrite_flow(&mut dp, &keys, CT_STATE_ESTABLISHED, S, 5 * S);
    // BACKEND_A leaves: BACKEND_B takes its slot (backend first, then the slot).
    dp.put_backend(BACKEND_B_ID, BACKEND_B, PROTO_TCP).unwrap();
    dp.put_slot(SVC_ID, 1, BACKEND_B_ID).unwrap();
    let ack = Pkt::tcp(CLIENT_POD, SVC_VIP, TCP_ACK);
    dp.check(&Fixture::translate(
        "ACK of the live flow still goes to BACKEND_A",
        Program::Ingress,
        &ack,
        &ack.clone().with_dst(BACKEND_A),
        Reason::DnatEstablished,
    ));
    let since = monotonic_ns();
    let syn = Pkt::tcp(CLIENT_POD, SVC_VIP, TCP_SYN);
    dp.check(&Fixture::translate(
        "SYN on the live flow whose backend left → BACKEND_B",
        Program::Ingress,
        &syn,
        &syn.clone().with_dst(BACKEND_B),
        Reason::CtReopened,
    ));
    let what = "after the SYN";
    assert_new_entry(
        &dp,
        what,
        &keys.0,
        since,
        CT_STATE_SYN_SENT,
        1,
        BACKEND_B,
        BACKEND_B_ID,
    );
    assert_new_entry(
        &dp,
        what,
        &ct_reply(BACKEND_B, CLIENT_POD, PROTO_TCP),
        since,
        CT_STATE_SYN_SENT,
        0,
        BACKEND_B,
        BACKEND_B_ID,
    );
    assert!(
        dp.ct_get(&keys.1).is_none(),
        "the old flow's reply entry (BACKEND_A → client) is gone"
    );
    assert_eq!(dp.ct_entries().len(), 2);
}
