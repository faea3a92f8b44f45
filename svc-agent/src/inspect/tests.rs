//! Views and rendering of the pinned maps, and the command line, table-tested.
use clap::Parser;
use svc_common::{
    Backend, CtEntry, CtKey, Frontend, FrontendKey, Slot, SlotKey, BACKEND_F_LOCAL,
    BACKEND_F_TERMINATING, CT_DIR_FORWARD, FRONTEND_F_DROP_NO_BACKEND, FRONTEND_F_NODEPORT,
    SCOPE_ANY,
};

use super::*;
use crate::cli::{Cli, Command};

#[test]
fn explain_arguments_parse() {
    let cli = Cli::try_parse_from([
        "svc-agent",
        "explain",
        "10.244.1.5:40000",
        "10.96.0.10:53/udp",
        "--from",
        "uplink",
        "-o",
        "json",
        "--bpffs",
        "/sys/fs/bpf/x",
    ])
    .unwrap();
    let Command::Explain(a) = cli.command else {
        panic!("not explain")
    };
    assert_eq!(
        (a.src.addr, a.src.port),
        (Ipv4Addr::new(10, 244, 1, 5), Some(40000))
    );
    assert_eq!((a.dst.port, a.dst.proto), (53, PROTO_UDP));
    assert_eq!(a.from, OriginArg::Uplink);
    assert_eq!(a.common.output, Format::Json);
    assert_eq!("10.96.0.10:80".parse::<DstArg>().unwrap().proto, PROTO_TCP);
    assert!("10.96.0.10/tcp".parse::<DstArg>().is_err());
    assert!("10.96.0.10:80/sctp".parse::<DstArg>().is_err());
    assert_eq!("10.0.0.1".parse::<SrcArg>().unwrap().port, None);
    assert!(Cli::try_parse_from(["svc-agent", "inspect", "stats", "--per-cpu", "--all"]).is_ok());
    assert!(Cli::try_parse_from([
        "svc-agent",
        "inspect",
        "conntrack",
        "--dir",
        "reply",
        "--proto",
        "udp",
        "--port",
        "53"
    ])
    .is_ok());
}

/// A forward entry (client 10.244.1.5:40000 → 10.96.0.10:53) and its reply entry, of
/// `proto` in `state`, last seen at `fwd_s` / `rep_s` seconds, created at 0.
fn ct_pair(proto: u8, state: u8, fwd_s: u64, rep_s: u64) -> [(CtKey, CtEntry); 2] {
    let fk = CtKey {
        src_addr: [10, 244, 1, 5],
        dst_addr: [10, 96, 0, 10],
        src_port: 40_000,
        dst_port: 53,
        proto,
        _pad: [0; 3],
    };
    let fe = CtEntry {
        src_addr: [10, 244, 1, 5],
        dst_addr: [10, 244, 2, 9],
        src_port: 40_000,
        dst_port: 5353,
        dir: CT_DIR_FORWARD,
        flags: 0,
        tcp_flags: 0,
        state,
        backend_id: 3,
        frontend_id: 1,
        created_ns: 0,
        last_seen_ns: fwd_s * 1_000_000_000,
        packets: 1,
        bytes: 80,
    };
    let rk = ct_peer_key(&fk, &fe);
    let re = CtEntry {
        src_addr: [10, 96, 0, 10],
        dst_addr: [10, 244, 1, 5],
        src_port: 53,
        dst_port: 40_000,
        dir: svc_common::CT_DIR_REPLY,
        last_seen_ns: rep_s * 1_000_000_000,
        ..fe
    };
    [(fk, fe), (rk, re)]
}

#[test]
fn conntrack_views_show_the_state_and_the_flow_s_remaining_lifetime() {
    use svc_common::{CT_STATE_TIME_WAIT, CT_STATE_UDP_UNREPLIED};
    const S: u64 = 1_000_000_000;
    let t = CtTimeouts::DEFAULT;
    // An unanswered datagram 12 s ago: 30 - 12 = 18 s left, on either entry.
    let [(fk, fe), (rk, re)] = ct_pair(PROTO_UDP, CT_STATE_UDP_UNREPLIED, 12, 0);
    let v = FlowView::new(&fk, &fe, Some(&re), 24 * S, &t);
    assert_eq!(
        (v.state.as_str(), v.expires_in_s, v.expired),
        ("udp_unreplied", Some(18), false)
    );
    let v = FlowView::new(&rk, &re, Some(&fe), 24 * S, &t);
    assert_eq!(
        v.expires_in_s,
        Some(18),
        "the idle reply entry lives as long as its peer"
    );
    // Without its peer the reply entry (last seen at 0) is expired at 31 s.
    let v = FlowView::new(&rk, &re, None, 31 * S, &t);
    assert_eq!((v.expires_in_s, v.expired), (None, true));
    // Closed: 10 s.
    let [(fk, fe), (_, re)] = ct_pair(PROTO_TCP, CT_STATE_TIME_WAIT, 5, 5);
    assert_eq!(
        FlowView::new(&fk, &fe, Some(&re), 6 * S, &t).expires_in_s,
        Some(9)
    );
    assert!(FlowView::new(&fk, &fe, Some(&re), 16 * S, &t).expired);
    assert_eq!(ct_state_name(200), "200");
    let table = render_flows(&vec![FlowView::new(&fk, &fe, Some(&re), 16 * S, &t)]);
    assert!(
        table.contains("time_wait") && table.contains("expired"),
        "{table}"
    );
}

#[test]
fn flags_decode_to_words_with_unknown_bits_kept() {
    assert_eq!(
        frontend_flag_words(FRONTEND_F_NODEPORT | FRONTEND_F_DROP_NO_BACKEND | 0x100),
        vec!["nodeport", "drop-no-backend", "0x100"]
    );
    assert_eq!(
        backend_flag_words(BACKEND_F_LOCAL | BACKEND_F_TERMINATING),
        vec!["local", "terminating"]
    );
    assert_eq!(tcp_flag_words(0x12), vec!["SYN", "ACK"]);
    assert!(ct_flag_words(0).is_empty());
}

#[test]
fn services_list_slots_in_order_and_report_holes() {
    let mut snap = MapSnapshot::default();
    let key = FrontendKey {
        addr: [10, 96, 0, 10],
        port: 80,
        proto: PROTO_TCP,
        scope: SCOPE_ANY,
    };
    snap.frontends.insert(
        key,
        Frontend {
            id: 7,
            backend_count: 3,
            flags: 0,
            affinity_timeout_s: 0,
        },
    );
    for (slot, id) in [(2, 20), (1, 10)] {
        snap.slots.insert(
            SlotKey {
                frontend_id: 7,
                slot,
            },
            Slot { backend_id: id },
        );
    }
    for (id, last) in [(10, 1), (20, 2)] {
        snap.backends.insert(
            id,
            Backend {
                addr: [10, 244, 0, last],
                port: 8080,
                proto: PROTO_TCP,
                flags: BACKEND_F_LOCAL,
            },
        );
    }
    let v = service_views(&snap);
    assert_eq!(v.len(), 1);
    let slots: Vec<(u32, u32)> = v[0]
        .backends
        .iter()
        .map(|b| (b.slot, b.backend_id))
        .collect();
    assert_eq!(slots, vec![(1, 10), (2, 20)]);
    assert_eq!(v[0].problems, vec!["slot 3 missing".to_string()]);
    let table = render_services(&v);
    assert!(table.starts_with("ID  FRONTEND"), "{table}");
    assert!(table.contains("10.244.0.2:8080/tcp"), "{table}");
}
