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
        (IpAddr::from([10, 244, 1, 5]), Some(40000))
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
    let table = render_flows(&vec![AnyFlowView::V4(FlowView::new(
        &fk,
        &fe,
        Some(&re),
        16 * S,
        &t,
    ))]);
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
    let table = render_services(&v.into_iter().map(AnyServiceView::V4).collect());
    assert!(table.starts_with("ID  FRONTEND"), "{table}");
    assert!(table.contains("10.244.0.2:8080/tcp"), "{table}");
}

#[test]
fn ipv6_arguments_parse_bare_or_bracketed() {
    let src: SrcArg = "[fd00:10:244:1::5]:40000".parse().unwrap();
    assert_eq!(
        (src.addr, src.port),
        ("fd00:10:244:1::5".parse().unwrap(), Some(40000))
    );
    let bare: SrcArg = "fd00:10:244:1::5".parse().unwrap();
    assert_eq!((bare.addr, bare.port), (src.addr, None));
    let dst: DstArg = "[fd00:10:96::10]:53/udp".parse().unwrap();
    assert_eq!(
        (dst.addr, dst.port, dst.proto),
        ("fd00:10:96::10".parse().unwrap(), 53, PROTO_UDP)
    );
    assert!("fd00:10:96::10/udp".parse::<DstArg>().is_err(), "no port");
    assert!("[fd00::1".parse::<SrcArg>().is_err());
    let filter = Cli::try_parse_from(["svc-agent", "inspect", "conntrack", "--src", "fd00::1"]);
    assert!(filter.is_ok());
}

#[test]
fn ipv6_services_and_flows_show_as_ipv6_text_with_brackets_before_ports() {
    let mut snap = MapSnapshot::default();
    let key = svc_common::FrontendKey6 {
        addr: "fd00:10:96::10"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .into(),
        port: 80,
        proto: PROTO_TCP,
        scope: SCOPE_ANY,
    };
    snap.frontends6.insert(
        key,
        Frontend {
            id: 9,
            backend_count: 1,
            flags: 0,
            affinity_timeout_s: 0,
        },
    );
    snap.slots.insert(
        SlotKey {
            frontend_id: 9,
            slot: 1,
        },
        Slot { backend_id: 30 },
    );
    snap.backends6.insert(
        30,
        svc_common::Backend6 {
            addr: "fd00:10:244:1::5"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .into(),
            port: 8080,
            proto: PROTO_TCP,
            flags: 0,
        },
    );
    let all = all_service_views(&snap);
    assert_eq!(all.len(), 1);
    let table = render_services(&all);
    assert!(table.contains("[fd00:10:96::10]:80/tcp"), "{table}");
    assert!(table.contains("[fd00:10:244:1::5]:8080/tcp"), "{table}");
    let json = serde_json::to_value(&all).unwrap();
    assert_eq!(json[0]["address"], "fd00:10:96::10");
    assert_eq!(json[0]["backends"][0]["address"], "fd00:10:244:1::5");

    let six = |a: [u8; 4]| {
        let mut o = [0u8; 16];
        o[0] = 0xfd;
        o[12..].copy_from_slice(&a);
        svc_common::Addr6::from(o)
    };
    let [(fk, fe), (rk, re)] = ct_pair(PROTO_TCP, svc_common::CT_STATE_ESTABLISHED, 5, 5);
    let k6 = svc_common::CtKey6::new(
        six(fk.src_addr),
        six(fk.dst_addr),
        fk.src_port,
        fk.dst_port,
        fk.proto,
    );
    let e6 = svc_common::CtEntry6 {
        src_addr: six(fe.src_addr),
        dst_addr: six(fe.dst_addr),
        src_port: fe.src_port,
        dst_port: fe.dst_port,
        dir: fe.dir,
        flags: fe.flags,
        tcp_flags: fe.tcp_flags,
        state: fe.state,
        backend_id: fe.backend_id,
        frontend_id: fe.frontend_id,
        created_ns: fe.created_ns,
        last_seen_ns: fe.last_seen_ns,
        packets: fe.packets,
        bytes: fe.bytes,
    };
    let _ = (rk, re);
    let t = CtTimeouts::DEFAULT;
    let v = FlowView6::new(&k6, &e6, None, 6_000_000_000, &t);
    assert_eq!(v.src, std::net::Ipv6Addr::from(six(fk.src_addr)));
    assert_eq!(v.src.to_string(), "fd00::af4:105");
    let table = render_flows(&vec![AnyFlowView::V6(v)]);
    assert!(table.contains("]:40000 → ["), "{table}");
    let filter = CtFilter {
        src: Some(IpAddr::V6(std::net::Ipv6Addr::from(six(fk.src_addr)))),
        ..CtFilter::default()
    };
    assert!(filter.matches(&k6, &e6));
    assert!(
        !filter.matches(&fk, &fe),
        "an IPv4 tuple never matches an IPv6 address"
    );
}

#[test]
fn stats_list_the_ipv6_hooks_from_all_hooks() {
    use svc_common::{stat_index, Hook, Reason, HOOK_COUNT, REASON_COUNT};
    let mut values = vec![vec![0u64; 2]; (HOOK_COUNT * REASON_COUNT) as usize];
    values[stat_index(Hook::PodIngress6, Reason::DnatNew) as usize] = vec![2, 3];
    values[stat_index(Hook::Sock6, Reason::SockTranslated) as usize] = vec![1, 0];
    let views = stat_views(&values, false, false);
    let rows: Vec<(&str, &str, u64)> = views
        .iter()
        .map(|v| (v.hook.as_str(), v.reason.as_str(), v.packets))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("pod_ingress6", "dnat_new", 5),
            ("sock6", "sock_translated", 1)
        ]
    );
    assert_eq!(stat_views(&values, false, true).len(), values.len());
}
