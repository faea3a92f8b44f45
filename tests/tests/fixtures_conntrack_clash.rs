//! `BPF_PROG_TEST_RUN` fixtures for the conntrack lifecycle of the pod-veth programs: per-state
//! timeouts, a flow living while either direction is fresh, SYNs that reopen a closed flow or
//! one whose backend left, mid-stream packets without an entry, stale SYN-ACKs, the state
//! machine driven by real packets, and the reply-tuple clash of one client port to two
//! frontends sharing a backend.
//!
//! Old entries are made by rewriting `last_seen_ns` in `SVC_CT` relative to `CLOCK_MONOTONIC`
//! (the clock `bpf_ktime_get_ns` reads): `now − timeout − 1 s` is expired, `now − timeout + 5 s`
//! is not. Each case checks verdict, output bytes (etherparse-built), the one counter and the
//! entries read back from `SVC_CT`.
//!
//! Run as root: `cargo test -p tests --test fixtures_conntrack`.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::net::{Ipv4Addr, SocketAddrV4};

use svc_common::{
    CtEntry, CtKey, CtTimeouts, Reason, ALL_CT_STATES, CT_DIR_FORWARD, CT_DIR_REPLY,
    CT_STATE_CLOSED, CT_STATE_CLOSE_WAIT, CT_STATE_ESTABLISHED, CT_STATE_NONE, CT_STATE_SYN_SENT,
    CT_STATE_TIME_WAIT, CT_STATE_UDP_REPLIED, CT_STATE_UDP_UNREPLIED, GLOBAL_CT_TIMEOUTS,
    PROTO_TCP, PROTO_UDP, SNAT_PORT_MAX, SNAT_PORT_MIN,
};
use svc_testkit::fixtures::*;

const S: u64 = 1_000_000_000;

/// A second ClusterIP sharing [`BACKEND_A`] with [`SVC_VIP`].
const SVC_VIP2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 80);
const SVC2_ID: u32 = 3;

/// The timeouts the datapath of a test is loaded with. The defaults where the machine has been
/// up long enough to hold an entry older than them (`CLOCK_MONOTONIC` starts at boot, and a
/// timestamp cannot lie before it); otherwise the established and close-wait timeouts are
/// lowered (through the same load-time global the agent sets) to distinct values that fit.
fn timeouts_for_this_machine() -> CtTimeouts {
    let uptime_s = monotonic_ns() / S;
    let d = CtTimeouts::DEFAULT;
    if uptime_s > u64::from(d.tcp_established_s) + 60 {
        return d;
    }
    let t = CtTimeouts {
        tcp_established_s: 200,
        tcp_close_wait_s: 150,
        ..d
    };
    assert!(
        uptime_s > u64::from(t.tcp_established_s) + 60,
        "up {uptime_s} s: too short to write entries older than the timeouts"
    );
    t
}

/// The datapath for one test, loaded with `timeouts`; panics when not root.
fn datapath_with(timeouts: &CtTimeouts) -> Datapath {
    if let Err(e) = read_object() {
        panic!("{e:#}");
    }
    require_root();
    Datapath::load_with(aya::EbpfLoader::new().override_global(GLOBAL_CT_TIMEOUTS, timeouts, true))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn datapath() -> Datapath {
    datapath_with(&CtTimeouts::DEFAULT)
}

/// [`SVC_VIP`] over TCP and UDP, each balancing across [`BACKEND_A`] only.
fn one_backend(dp: &mut Datapath) {
    dp.add_service(SVC_VIP, PROTO_TCP, SVC_ID, &[(BACKEND_A_ID, BACKEND_A)])
        .unwrap();
    dp.add_service(
        SVC_VIP,
        PROTO_UDP,
        SVC_ID + 1,
        &[(BACKEND_A_ID + 10, BACKEND_A)],
    )
    .unwrap();
}

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(*CLIENT_POD.ip(), port)
}

fn state_name(s: u8) -> &'static str {
    ALL_CT_STATES
        .iter()
        .find(|(v, _)| *v == s)
        .map(|(_, n)| *n)
        .unwrap_or("?")
}

fn clear_ct(dp: &mut Datapath) {
    for (k, _) in dp.ct_entries() {
        dp.ct_remove(&k).unwrap();
    }
}

/// A packet of the flow `c` → `vip` from the client (TCP with `flags`, or UDP).
fn from_client(proto: u8, c: SocketAddrV4, vip: SocketAddrV4, flags: u8) -> Pkt {
    if proto == PROTO_TCP {
        Pkt::tcp(c, vip, flags)
    } else {
        Pkt::udp(c, vip)
    }
}

/// A packet of the same flow from the backend `b` to the client `c`.
fn from_backend(proto: u8, b: SocketAddrV4, c: SocketAddrV4, flags: u8) -> Pkt {
    if proto == PROTO_TCP {
        Pkt::tcp(b, c, flags)
    } else {
        Pkt::udp(b, c)
    }
}

/// Opens the flow `c` → [`SVC_VIP`] → [`BACKEND_A`] with a SYN (or a first datagram) and
/// returns its (forward, reply) keys.
fn open(dp: &Datapath, proto: u8, c: SocketAddrV4) -> (CtKey, CtKey) {
    let first = from_client(proto, c, SVC_VIP, TCP_SYN);
    dp.check(&Fixture::translate(
        "first packet of the flow",
        Program::Ingress,
        &first,
        &first.clone().with_dst(BACKEND_A),
        Reason::DnatNew,
    ));
    (ct_forward(c, SVC_VIP, proto), ct_reply(BACKEND_A, c, proto))
}

/// Rewrites the entry under `key`: `state`, last packet `last_ago` before now, created
/// `created_ago` before now, and a packet count no new entry has (so a reused entry shows).
fn rewrite(dp: &mut Datapath, key: &CtKey, state: u8, last_ago: u64, created_ago: u64) {
    let now = monotonic_ns();
    let mut e = dp
        .ct_get(key)
        .unwrap_or_else(|| panic!("no entry under {key:?} to rewrite"));
    e.state = state;
    e.last_seen_ns = now - last_ago;
    e.created_ns = now - created_ago;
    e.packets = 1000;
    dp.ct_put(key, e);
}

/// Both entries of a flow rewritten as [`rewrite`] does.
fn rewrite_flow(
    dp: &mut Datapath,
    keys: &(CtKey, CtKey),
    state: u8,
    last_ago: u64,
    created_ago: u64,
) {
    rewrite(dp, &keys.0, state, last_ago, created_ago);
    rewrite(dp, &keys.1, state, last_ago, created_ago);
}

/// Asserts the entry under `key` was written afresh at or after `since` by a new flow: state
/// `state`, `packets`, backend `backend`.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per asserted field keeps call sites readable as a table"
)]
fn assert_new_entry(
    dp: &Datapath,
    what: &str,
    key: &CtKey,
    since: u64,
    state: u8,
    packets: u64,
    backend: SocketAddrV4,
    backend_id: u32,
) -> CtEntry {
    let e = dp
        .ct_get(key)
        .unwrap_or_else(|| panic!("{what}: no entry under {key:?}"));
    assert!(
        e.created_ns >= since && e.last_seen_ns >= since,
        "{what}: not written afresh (created {}, since {since}): {e:?}",
        e.created_ns
    );
    assert_eq!(
        (state_name(e.state), e.packets, e.backend_id),
        (state_name(state), packets, backend_id),
        "{what}: (state, packets, backend id) of {e:?}"
    );
    let backend_end = if e.dir == CT_DIR_FORWARD {
        (e.dst_addr, e.dst_port)
    } else {
        (key.src_addr, key.src_port)
    };
    assert_eq!(
        backend_end,
        (backend.ip().octets(), backend.port()),
        "{what}: backend of {e:?}"
    );
    e
}

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

/// Backend id of [`BACKEND_A`] for `proto` in [`one_backend`].
fn bid(proto: u8) -> u32 {
    if proto == PROTO_TCP {
        BACKEND_A_ID
    } else {
        BACKEND_A_ID + 10
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

fn states(dp: &Datapath, keys: &(CtKey, CtKey)) -> (&'static str, &'static str) {
    let get = |k: &CtKey| {
        dp.ct_get(k)
            .map(|e| state_name(e.state))
            .unwrap_or("<absent>")
    };
    (get(&keys.0), get(&keys.1))
}

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

// ---------------------------------------------------------------------------------------------
// Reply-tuple clash
// ---------------------------------------------------------------------------------------------

/// [`SVC_VIP`] and [`SVC_VIP2`] (TCP), both balancing to [`BACKEND_A`] only.
fn two_frontends_one_backend(dp: &mut Datapath) {
    dp.add_service(SVC_VIP, PROTO_TCP, SVC_ID, &[(BACKEND_A_ID, BACKEND_A)])
        .unwrap();
    dp.add_service(SVC_VIP2, PROTO_TCP, SVC2_ID, &[(BACKEND_A_ID, BACKEND_A)])
        .unwrap();
}

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
