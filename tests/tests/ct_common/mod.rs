//! What the `fixtures_conntrack*` test binaries share: the datapath loaded with the timeouts
//! this machine's uptime allows, the services they program, client and backend packets,
//! opening a flow, rewriting its entries' age and state, and asserting entries written afresh.
// Each binary uses a part of these.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};

use svc_common::{
    CtEntry, CtKey, CtTimeouts, Reason, ALL_CT_STATES, CT_DIR_FORWARD, GLOBAL_CT_TIMEOUTS,
    PROTO_TCP, PROTO_UDP,
};
use svc_testkit::fixtures::*;

pub(crate) const S: u64 = 1_000_000_000;

/// A second ClusterIP sharing [`BACKEND_A`] with [`SVC_VIP`].
pub(crate) const SVC_VIP2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 80);
pub(crate) const SVC2_ID: u32 = 3;

/// The timeouts the datapath of a test is loaded with. The defaults where the machine has been
/// up long enough to hold an entry older than them (`CLOCK_MONOTONIC` starts at boot, and a
/// timestamp cannot lie before it); otherwise the established and close-wait timeouts are
/// lowered (through the same load-time global the agent sets) to distinct values that fit.
pub(crate) fn timeouts_for_this_machine() -> CtTimeouts {
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
pub(crate) fn datapath_with(timeouts: &CtTimeouts) -> Datapath {
    if let Err(e) = read_object() {
        panic!("{e:#}");
    }
    require_root();
    Datapath::load_with(aya::EbpfLoader::new().override_global(GLOBAL_CT_TIMEOUTS, timeouts, true))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

pub(crate) fn datapath() -> Datapath {
    datapath_with(&CtTimeouts::DEFAULT)
}

/// [`SVC_VIP`] over TCP and UDP, each balancing across [`BACKEND_A`] only.
pub(crate) fn one_backend(dp: &mut Datapath) {
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

pub(crate) fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(*CLIENT_POD.ip(), port)
}

pub(crate) fn state_name(s: u8) -> &'static str {
    ALL_CT_STATES
        .iter()
        .find(|(v, _)| *v == s)
        .map(|(_, n)| *n)
        .unwrap_or("?")
}

pub(crate) fn clear_ct(dp: &mut Datapath) {
    for (k, _) in dp.ct_entries() {
        dp.ct_remove(&k).unwrap();
    }
}

/// A packet of the flow `c` → `vip` from the client (TCP with `flags`, or UDP).
pub(crate) fn from_client(proto: u8, c: SocketAddrV4, vip: SocketAddrV4, flags: u8) -> Pkt {
    if proto == PROTO_TCP {
        Pkt::tcp(c, vip, flags)
    } else {
        Pkt::udp(c, vip)
    }
}

/// A packet of the same flow from the backend `b` to the client `c`.
pub(crate) fn from_backend(proto: u8, b: SocketAddrV4, c: SocketAddrV4, flags: u8) -> Pkt {
    if proto == PROTO_TCP {
        Pkt::tcp(b, c, flags)
    } else {
        Pkt::udp(b, c)
    }
}

/// Opens the flow `c` → [`SVC_VIP`] → [`BACKEND_A`] with a SYN (or a first datagram) and
/// returns its (forward, reply) keys.
pub(crate) fn open(dp: &Datapath, proto: u8, c: SocketAddrV4) -> (CtKey, CtKey) {
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
pub(crate) fn rewrite(dp: &mut Datapath, key: &CtKey, state: u8, last_ago: u64, created_ago: u64) {
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
pub(crate) fn rewrite_flow(
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
pub(crate) fn assert_new_entry(
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

/// Backend id of [`BACKEND_A`] for `proto` in [`one_backend`].
pub(crate) fn bid(proto: u8) -> u32 {
    if proto == PROTO_TCP {
        BACKEND_A_ID
    } else {
        BACKEND_A_ID + 10
    }
}

pub(crate) fn states(dp: &Datapath, keys: &(CtKey, CtKey)) -> (&'static str, &'static str) {
    let get = |k: &CtKey| {
        dp.ct_get(k)
            .map(|e| state_name(e.state))
            .unwrap_or("<absent>")
    };
    (get(&keys.0), get(&keys.1))
}

/// [`SVC_VIP`] and [`SVC_VIP2`] (TCP), both balancing to [`BACKEND_A`] only.
pub(crate) fn two_frontends_one_backend(dp: &mut Datapath) {
    dp.add_service(SVC_VIP, PROTO_TCP, SVC_ID, &[(BACKEND_A_ID, BACKEND_A)])
        .unwrap();
    dp.add_service(SVC_VIP2, PROTO_TCP, SVC2_ID, &[(BACKEND_A_ID, BACKEND_A)])
        .unwrap();
}
