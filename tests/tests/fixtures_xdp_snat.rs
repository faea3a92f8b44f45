//! `BPF_PROG_TEST_RUN` fixtures for `svc_xdp`'s SNAT port allocation: flows from the external
//! client to a NodePort with a remote backend take distinct ports, never a taken one, and drop
//! as `snat_no_port` only when none is free.
//!
//! Each test runs in an [`XdpNode`] of its own, as in `fixtures_xdp` (whose module docs say
//! how); run as root: `cargo test -p tests --test fixtures_xdp_snat`.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use svc_common::{
    CtEntry, Reason, SnatPorts, CT_DIR_REPLY, CT_F_EXTERNAL, CT_F_SNAT, PROTO_TCP, SNAT_ATTEMPTS,
    SNAT_PORT_MAX, SNAT_PORT_MIN,
};
use svc_testkit::fixtures::*;

mod xdp_common;
use xdp_common::*;

/// Every SNAT port there is.
const SNAT_SPAN: usize = (SNAT_PORT_MAX - SNAT_PORT_MIN) as usize + 1;

// ---------------------------------------------------------------------------------------------
// 5. SNAT port allocation
// ---------------------------------------------------------------------------------------------

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn snat_ports_of_concurrent_flows_are_distinct() {
    // 300 flows in 4536 ports: a birthday collision of the random first choice is all but
    // certain (expected ≈ 10), so this exercises the retry; a program that claimed a taken
    // port would show a duplicate here.
    const FLOWS: u16 = 300;
    xdp_test(|dp, uplink| {
        remote_nodeport(dp);
        let mut ports = BTreeMap::new();
        for i in 0..FLOWS {
            let client = ext_client(41000 + i);
            let port = remote_syn(dp, uplink, &format!("SYN of flow {i}"), client);
            if let Some(other) = ports.insert(port, client) {
                panic!("SNAT port {port} given to {client} and to {other}");
            }
        }
        assert_eq!(ports.len(), usize::from(FLOWS));
        // Every flow's reply entry names its own client.
        for (&port, &client) in &ports {
            let rep = dp
                .ct_get(&ct_key(BACKEND_B, snat(port), PROTO_TCP))
                .unwrap_or_else(|| panic!("no reply entry for SNAT port {port}"));
            assert_eq!(
                (rep.dst_addr, rep.dst_port, rep.dir),
                (client.ip().octets(), client.port(), CT_DIR_REPLY),
                "reply entry of SNAT port {port}"
            );
        }
        assert_eq!(dp.ct_count(), 2 * usize::from(FLOWS));
        assert_eq!(
            dp.counter(svc_common::Hook::Xdp, Reason::DnatNew),
            u64::from(FLOWS)
        );
    });
}

/// Pre-fills the reply entries (BACKEND_B → NODE:port) of `taken` ports with a sentinel that
/// no flow would write, as other live flows would hold them: established and seen just now
/// (an entry with old timestamps is expired and may be taken over).
fn occupy(dp: &mut Datapath, taken: &BTreeSet<u16>) -> CtEntry {
    let now = monotonic_ns();
    let mut sentinel = ct_value(
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 99), 9999),
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 98), 9998),
        CT_DIR_REPLY,
        CT_F_EXTERNAL | CT_F_SNAT,
        999,
        999,
        0,
        0,
        0,
    );
    sentinel.state = svc_common::CT_STATE_ESTABLISHED;
    sentinel.created_ns = now;
    sentinel.last_seen_ns = now;
    for &port in taken {
        dp.ct_put(&ct_key(BACKEND_B, snat(port), PROTO_TCP), sentinel);
    }
    sentinel
}

/// Runs `flows` new flows against the pre-filled ports and checks each outcome: either a
/// translation onto a port that was free (which it then holds), or a drop counted as
/// `SnatNoPort` that leaves no conntrack entry. Afterwards every pre-filled entry must be
/// unchanged: a program that overwrote a taken reply entry fails here even when the port it
/// took is not reused by a later flow. Returns (translated, dropped).
fn claim_against(
    dp: &mut Datapath,
    uplink: XdpUplink,
    taken: &BTreeSet<u16>,
    flows: u16,
    first_client_port: u16,
) -> (usize, usize) {
    let sentinel = occupy(dp, taken);
    let mut held: BTreeSet<u16> = taken.clone();
    let (mut translated, mut dropped) = (0, 0);
    for i in 0..flows {
        let client = ext_client(first_client_port + i);
        let syn = Pkt::tcp(client, NODEPORT, TCP_SYN);
        let before = dp.counters();
        let res = dp
            .run_xdp(XDP_PROGRAM, &from_client(&syn), 1, uplink.ifindex)
            .unwrap();
        let after = dp.counters();
        let moved = |r: Reason| {
            let i = svc_common::stat_index(svc_common::Hook::Xdp, r) as usize;
            after[i] - before[i]
        };
        let total: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
        assert_eq!(total, 1, "flow {i}: exactly one counter moves");
        match res.retval {
            XDP_TX => {
                assert_eq!(moved(Reason::DnatNew), 1, "flow {i}: counted as dnat_new");
                let port = snat_port_of(dp, client, PROTO_TCP);
                assert!(
                    !held.contains(&port),
                    "flow {i} got SNAT port {port}, whose reply entry already existed{}",
                    if taken.contains(&port) {
                        " (pre-filled)"
                    } else {
                        " (an earlier flow's)"
                    }
                );
                assert_snat_frame(i, &syn, port, &res.output);
                held.insert(port);
                translated += 1;
            }
            XDP_DROP => {
                assert_eq!(
                    moved(Reason::SnatNoPort),
                    1,
                    "flow {i}: a drop must be counted as snat_no_port"
                );
                assert_eq!(res.output, from_client(&syn), "flow {i}: dropped untouched");
                assert!(
                    dp.ct_get(&ct_forward(client, NODEPORT, PROTO_TCP))
                        .is_none(),
                    "flow {i}: a dropped flow leaves no forward entry"
                );
                dropped += 1;
            }
            v => panic!("flow {i}: verdict {v}, expected XDP_TX or XDP_DROP"),
        }
    }
    for &port in taken {
        let got = dp
            .ct_get(&ct_key(BACKEND_B, snat(port), PROTO_TCP))
            .unwrap_or_else(|| panic!("pre-filled reply entry of port {port} disappeared"));
        assert_eq!(
            got, sentinel,
            "pre-filled reply entry of port {port} was overwritten"
        );
    }
    assert_eq!(
        dp.ct_count(),
        taken.len() + 2 * translated,
        "pre-filled entries + forward and reply of each translated flow"
    );
    (translated, dropped)
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn snat_never_claims_a_taken_port_half_full() {
    // Every other port is held: each random try collides with probability 1/2, so about half
    // of the flows need the retry, and a program that did not check (or overwrote) would hand
    // out a held port about 50 times in 100 flows. All 16 tries fail with probability 2^-16.
    xdp_test(|dp, uplink| {
        remote_nodeport(dp);
        let taken: BTreeSet<u16> = (SNAT_PORT_MIN..=SNAT_PORT_MAX).step_by(2).collect();
        let (translated, dropped) = claim_against(dp, uplink, &taken, 100, 42000);
        assert!(
            translated >= 95,
            "{translated} of 100 flows translated ({dropped} dropped): with half the ports \
             free, {SNAT_ATTEMPTS} tries should almost always find one"
        );
    });
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn snat_with_almost_every_port_taken_finds_a_free_one_or_drops() {
    // 6 of 4536 ports free: 16 random tries find one with probability ≈ 2%, so most flows are
    // dropped as snat_no_port, and whichever succeed must be on one of the 6.
    xdp_test(|dp, uplink| {
        remote_nodeport(dp);
        let free = [61_000u16, 62_345, 63_333, 64_000, 65_000, 65_535];
        let taken: BTreeSet<u16> = (SNAT_PORT_MIN..=SNAT_PORT_MAX)
            .filter(|p| !free.contains(p))
            .collect();
        assert_eq!(taken.len(), SNAT_SPAN - free.len());
        let (translated, dropped) = claim_against(dp, uplink, &taken, 50, 43000);
        assert_eq!(translated + dropped, 50);
        assert!(
            dropped > 0,
            "all 50 flows found one of 6 free ports in {SNAT_ATTEMPTS} random tries each: \
             the program cannot be honouring the pre-filled entries"
        );
        println!("{translated} translated onto a free port, {dropped} dropped as snat_no_port");
    });
}

/// Checks that flow `i`'s SYN left as the source-NATed frame to the remote backend: source
/// `port` on the node, TTL decremented, MACs of the next hop.
fn assert_snat_frame(i: impl std::fmt::Display, syn: &Pkt, port: u16, output: &[u8]) {
    let want = syn
        .clone()
        .with_src(snat(port))
        .with_dst(BACKEND_B)
        .with_ttl(63)
        .build_eth(NODE_MAC, PEER_NODE_MAC);
    assert!(
        output == want,
        "flow {i}: output differs:\n{}",
        diff_frames(&want, output).join("\n")
    );
}

/// Two small ranges, so that both are certainly drawn from and their ends are reachable.
const TWO_RANGES: SnatPorts = SnatPorts {
    first: [2000, 61_000],
    count: [50, 50],
};

/// Runs the SYN of a new flow `client` → [`NODEPORT`] (remote backend): `Some(port)` with the
/// frame checked when it is translated, `None` when dropped as `snat_no_port`.
fn syn_with_ports(dp: &Datapath, uplink: XdpUplink, i: u16, client: SocketAddrV4) -> Option<u16> {
    let syn = Pkt::tcp(client, NODEPORT, TCP_SYN);
    let res = dp
        .run_xdp(XDP_PROGRAM, &from_client(&syn), 1, uplink.ifindex)
        .unwrap();
    match res.retval {
        XDP_TX => {
            let port = dp
                .ct_get(&ct_forward(client, NODEPORT, PROTO_TCP))
                .unwrap_or_else(|| panic!("flow {i}: no forward entry"))
                .src_port;
            assert_snat_frame(i, &syn, port, &res.output);
            Some(port)
        }
        XDP_DROP => None,
        v => panic!("flow {i}: verdict {v}, expected XDP_TX or XDP_DROP"),
    }
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn snat_ports_come_from_both_configured_ranges() {
    // 40 flows in 2 × 50 ports: every flow finds a free port, each port is in one of the two
    // ranges (not the built-in 61000–65535 beyond them), both ranges are used.
    let programs = NodePrograms {
        xdp: true,
        uplink_tc: false,
    };
    node_datapath_test_with_snat_ports(programs, TWO_RANGES, |dp, uplink| {
        remote_nodeport(dp);
        let mut ports = BTreeSet::new();
        for i in 0..40 {
            let port = syn_with_ports(dp, uplink, i, ext_client(44000 + i))
                .unwrap_or_else(|| panic!("flow {i} dropped with 60 of 100 ports free"));
            assert!(
                TWO_RANGES.contains(port),
                "flow {i}: port {port} outside {TWO_RANGES:?}"
            );
            assert!(ports.insert(port), "flow {i}: port {port} given twice");
        }
        assert!(ports.iter().any(|&p| p < 3000) && ports.iter().any(|&p| p >= 61_000));
    });
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn snat_reaches_the_ends_of_both_ranges() {
    // Every port but the first and last of each range is held: a flow that gets a port gets
    // one of those four (an off-by-one in the index-to-port mapping would hand out 1999, 2050,
    // 60999 or 61050, whose reply entries are free and would be claimed).
    let programs = NodePrograms {
        xdp: true,
        uplink_tc: false,
    };
    node_datapath_test_with_snat_ports(programs, TWO_RANGES, |dp, uplink| {
        remote_nodeport(dp);
        let free = [2000u16, 2049, 61_000, 61_049];
        let taken: BTreeSet<u16> = (0..TWO_RANGES.total())
            .map(|i| TWO_RANGES.port(i))
            .filter(|p| !free.contains(p))
            .collect();
        assert_eq!(taken.len(), 96);
        occupy(dp, &taken);
        let mut got = BTreeSet::new();
        for i in 0..60 {
            if let Some(port) = syn_with_ports(dp, uplink, i, ext_client(45000 + i)) {
                assert!(
                    free.contains(&port),
                    "flow {i}: port {port}, not one of {free:?}"
                );
                assert!(got.insert(port), "flow {i}: port {port} given twice");
            }
        }
        assert!(!got.is_empty(), "no flow found one of the 4 free ports");
        println!("free ports claimed: {got:?}");
    });
}
