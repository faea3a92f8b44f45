//! `BPF_PROG_TEST_RUN` fixtures for `svc_pod_ingress` and `svc_pod_egress`.
//!
//! Each test loads its own copy of `target/svc-ebpf.o` (nothing pinned: the maps die with the
//! test), programs the maps the way the agent would, and runs named [`Fixture`]s: input frame,
//! expected verdict, expected output frame (built independently with etherparse, which computes
//! the checksums) and the one counter that must move. See `svc-testkit/src/fixtures/`.
//!
//! Rejects, drops and the frames the programs must leave alone are in `fixtures_tc_reject`;
//! the helpers both share are in `tc_common`.
//!
//! Run as root: `cargo test -p tests --test fixtures_tc`. Built without root, the tests that
//! load programs are reported as ignored (tests/build.rs); run without root anyway, they fail.
//! Without the object every test fails and says to run `cargo xtask build-ebpf`.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::{net::SocketAddrV4, process::Command};

use svc_common::{
    Hook, Reason, ALL_MAPS, CT_DIR_FORWARD, CT_DIR_REPLY, CT_TCP_SYN, FAULT_SKIP_L4_CSUM,
    GLOBAL_FAULT_INJECT, MAP_FRONTENDS, PROTO_TCP,
};
use svc_testkit::fixtures::*;

mod tc_common;
use tc_common::*;

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn syn_to_frontend_is_dnatted_to_the_only_backend() {
    let mut dp = datapath();
    one_backend(&mut dp);
    dp.check(&Fixture::translate(
        "SYN client→SVC_VIP:80 becomes client→BACKEND_A:8080",
        Program::Ingress,
        &syn(),
        &syn().with_dst(BACKEND_A),
        Reason::DnatNew,
    ));

    let ip_len = (20 + 20 + PAYLOAD.len()) as u64;
    let fwd = dp
        .ct_get(&ct_forward(CLIENT_POD, SVC_VIP, PROTO_TCP))
        .expect("forward conntrack entry client→SVC_VIP");
    assert_eq!(
        (
            fwd.src_addr,
            fwd.src_port,
            fwd.dst_addr,
            fwd.dst_port,
            fwd.dir,
            fwd.flags
        ),
        (
            CLIENT_POD.ip().octets(),
            CLIENT_POD.port(),
            BACKEND_A.ip().octets(),
            BACKEND_A.port(),
            CT_DIR_FORWARD,
            0
        ),
        "forward entry: destination → backend, source unchanged"
    );
    assert_eq!(
        (fwd.backend_id, fwd.frontend_id),
        (BACKEND_A_ID, SVC_ID),
        "forward ids"
    );
    assert_eq!(
        (fwd.packets, fwd.bytes, fwd.tcp_flags),
        (1, ip_len, CT_TCP_SYN),
        "forward stats"
    );
    assert!(
        fwd.created_ns > 0 && fwd.last_seen_ns == fwd.created_ns,
        "forward timestamps {fwd:?}"
    );

    let rep = dp
        .ct_get(&ct_reply(BACKEND_A, CLIENT_POD, PROTO_TCP))
        .expect("reply conntrack entry BACKEND_A→client");
    assert_eq!(
        (
            rep.src_addr,
            rep.src_port,
            rep.dst_addr,
            rep.dst_port,
            rep.dir
        ),
        (
            SVC_VIP.ip().octets(),
            SVC_VIP.port(),
            CLIENT_POD.ip().octets(),
            CLIENT_POD.port(),
            CT_DIR_REPLY
        ),
        "reply entry: source → frontend, destination unchanged"
    );
    assert_eq!(
        (rep.backend_id, rep.frontend_id),
        (BACKEND_A_ID, SVC_ID),
        "reply ids"
    );
    assert_eq!(
        (rep.packets, rep.bytes, rep.tcp_flags),
        (0, 0, 0),
        "reply stats before any reply"
    );
    assert_eq!(
        rep.created_ns, fwd.created_ns,
        "both entries written by the same packet"
    );
    assert_eq!(dp.ct_count(), 2, "exactly the forward and reply entries");
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn established_flow_stays_on_its_backend_when_the_slot_changes() {
    let mut dp = datapath();
    one_backend(&mut dp);
    dp.check(&Fixture::translate(
        "SYN",
        Program::Ingress,
        &syn(),
        &syn().with_dst(BACKEND_A),
        Reason::DnatNew,
    ));
    let ack = Pkt::tcp(CLIENT_POD, SVC_VIP, TCP_ACK);
    dp.check(&Fixture::translate(
        "ACK of the same flow → BACKEND_A from conntrack",
        Program::Ingress,
        &ack,
        &ack.clone().with_dst(BACKEND_A),
        Reason::DnatEstablished,
    ));

    // Re-point the only slot at BACKEND_B (backend first, then the slot: the agent's order).
    dp.put_backend(BACKEND_B_ID, BACKEND_B, PROTO_TCP).unwrap();
    dp.put_slot(SVC_ID, 1, BACKEND_B_ID).unwrap();
    dp.check(&Fixture::translate(
        "ACK after the slot moved to BACKEND_B still → BACKEND_A (conntrack pins the flow)",
        Program::Ingress,
        &ack,
        &ack.clone().with_dst(BACKEND_A),
        Reason::DnatEstablished,
    ));
    // And the change is live for new flows, so the previous check was not vacuous.
    let new = Pkt::tcp(client(40001), SVC_VIP, TCP_SYN);
    dp.check(&Fixture::translate(
        "SYN of a new flow → BACKEND_B",
        Program::Ingress,
        &new,
        &new.clone().with_dst(BACKEND_B),
        Reason::DnatNew,
    ));
    let fwd = dp
        .ct_get(&ct_forward(CLIENT_POD, SVC_VIP, PROTO_TCP))
        .unwrap();
    assert_eq!(fwd.packets, 3, "SYN + 2 ACKs counted on the forward entry");
    assert_eq!(fwd.tcp_flags, TCP_SYN | TCP_ACK, "union of flags seen");
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn established_flow_survives_deletion_of_its_frontend() {
    let mut dp = datapath();
    one_backend(&mut dp);
    dp.check(&Fixture::translate(
        "SYN",
        Program::Ingress,
        &syn(),
        &syn().with_dst(BACKEND_A),
        Reason::DnatNew,
    ));
    // The Service goes away: the agent deletes the frontend first.
    dp.apply(MapOp::DeleteFrontend {
        key: frontend_key(SVC_VIP, PROTO_TCP),
    })
    .expect("deleting the frontend");
    let ack = Pkt::tcp(CLIENT_POD, SVC_VIP, TCP_ACK);
    dp.check(&Fixture::translate(
        "ACK of the established flow is still translated (conntrack before frontend)",
        Program::Ingress,
        &ack,
        &ack.clone().with_dst(BACKEND_A),
        Reason::DnatEstablished,
    ));
    // A new flow to the deleted frontend is no longer translated.
    let new = Pkt::tcp(client(40001), SVC_VIP, TCP_SYN);
    dp.check(&Fixture::untouched(
        "SYN of a new flow after deletion",
        Program::Ingress,
        new.build(),
        Reason::NotService,
    ));
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn reply_on_egress_comes_from_the_frontend() {
    let mut dp = datapath();
    one_backend(&mut dp);
    dp.check(&Fixture::translate(
        "SYN",
        Program::Ingress,
        &syn(),
        &syn().with_dst(BACKEND_A),
        Reason::DnatNew,
    ));
    let synack = Pkt::tcp(BACKEND_A, CLIENT_POD, TCP_SYN | TCP_ACK);
    dp.check(&Fixture::translate(
        "SYN-ACK BACKEND_A:8080→client becomes SVC_VIP:80→client",
        Program::Egress,
        &synack,
        &synack.clone().with_src(SVC_VIP),
        Reason::RevNat,
    ));
    let rep = dp
        .ct_get(&ct_reply(BACKEND_A, CLIENT_POD, PROTO_TCP))
        .unwrap();
    assert_eq!(
        (rep.packets, rep.tcp_flags),
        (1, TCP_SYN | TCP_ACK),
        "reply entry refreshed"
    );
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn reply_without_conntrack_entry_is_untouched() {
    let mut dp = datapath();
    one_backend(&mut dp);
    let synack = Pkt::tcp(BACKEND_A, CLIENT_POD, TCP_SYN | TCP_ACK);
    dp.check(&Fixture::untouched(
        "BACKEND_A→client, no flow",
        Program::Egress,
        synack.build(),
        Reason::NotService,
    ));
    // The ingress program never reverse-translates: a reply seen there is just traffic.
    dp.check(&Fixture::untouched(
        "BACKEND_A→client at ingress",
        Program::Ingress,
        synack.build(),
        Reason::NotService,
    ));
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn non_service_packets_are_untouched() {
    let mut dp = datapath();
    one_backend(&mut dp);
    let other = SocketAddrV4::new(OTHER_POD, 80);
    for (name, pkt) in [
        (
            "TCP SYN to OTHER_POD:80",
            Pkt::tcp(CLIENT_POD, other, TCP_SYN),
        ),
        ("UDP to OTHER_POD:80", Pkt::udp(CLIENT_POD, other)),
        (
            "TCP to SVC_VIP on a port it does not serve",
            Pkt::tcp(CLIENT_POD, SocketAddrV4::new(*SVC_VIP.ip(), 81), TCP_SYN),
        ),
    ] {
        dp.check(&Fixture::untouched(
            name,
            Program::Ingress,
            pkt.build(),
            Reason::NotService,
        ));
    }
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn udp_to_frontend_is_dnatted_with_and_without_checksum() {
    let mut dp = datapath();
    one_backend(&mut dp);
    let udp = Pkt::udp(CLIENT_POD, SVC_VIP);
    dp.check(&Fixture::translate(
        "UDP with checksum → BACKEND_A, checksum updated",
        Program::Ingress,
        &udp,
        &udp.clone().with_dst(BACKEND_A),
        Reason::DnatNew,
    ));
    let mut nocsum = Pkt::udp(client(40001), SVC_VIP);
    nocsum.l4 = L4::Udp { zero_csum: true };
    dp.check(&Fixture::translate(
        "UDP with zero checksum → BACKEND_A, checksum stays 0",
        Program::Ingress,
        &nocsum,
        &nocsum.clone().with_dst(BACKEND_A),
        Reason::DnatNew,
    ));
    let mut reply = Pkt::udp(BACKEND_A, client(40001));
    reply.l4 = L4::Udp { zero_csum: true };
    dp.check(&Fixture::translate(
        "UDP reply with zero checksum → from SVC_VIP, checksum stays 0",
        Program::Egress,
        &reply,
        &reply.clone().with_src(SVC_VIP),
        Reason::RevNat,
    ));
}

/// With two backends, 200 new flows (distinct source ports) land on both. The datapath picks
/// `bpf_get_prandom_u32() % 2`: a fair coin, so each backend gets 100 ± 7 (1σ); asserting at
/// least 40 each fails by chance with probability below 1e-17.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn new_flows_are_spread_over_backends() {
    let mut dp = datapath();
    dp.add_service(
        SVC_VIP,
        PROTO_TCP,
        SVC_ID,
        &[(BACKEND_A_ID, BACKEND_A), (BACKEND_B_ID, BACKEND_B)],
    )
    .unwrap();
    let (mut a, mut b) = (0, 0);
    let mut picks = Vec::new();
    for port in 40000..40200 {
        let pkt = Pkt::tcp(client(port), SVC_VIP, TCP_SYN);
        let res = dp.run(Program::Ingress.name(), &pkt.build(), 1).unwrap();
        assert_eq!(res.retval, TC_ACT_UNSPEC, "port {port}");
        if res.output == pkt.clone().with_dst(BACKEND_A).build() {
            a += 1;
            picks.push('A');
        } else if res.output == pkt.clone().with_dst(BACKEND_B).build() {
            b += 1;
            picks.push('B');
        } else {
            panic!(
                "port {port}: output is neither backend:\nvs A:\n{}\nvs B:\n{}",
                diff_frames(&pkt.clone().with_dst(BACKEND_A).build(), &res.output).join("\n"),
                diff_frames(&pkt.clone().with_dst(BACKEND_B).build(), &res.output).join("\n")
            );
        }
    }
    println!("200 new flows: {a} → BACKEND_A, {b} → BACKEND_B");
    assert_eq!(dp.counter(Hook::PodIngress, Reason::DnatNew), 200);
    assert!(a >= 40 && b >= 40, "skewed choice: A {a}, B {b}");
    // Independent choices switch backend about half the time (~100 of 199, sd ~7); a
    // round-robin or stuck choice would show ~199 or ~0.
    let switches = picks.windows(2).filter(|w| w[0] != w[1]).count();
    println!("{switches} switches between consecutive choices");
    assert!(
        (60..=140).contains(&switches),
        "choices are not independent: {switches} switches in {}",
        picks.iter().collect::<String>()
    );
}

/// `BPF_PROG_TEST_RUN` with `repeat > 1` runs the program again on the *same* skb (DESIGN §4's
/// trap holds for tc too, not only XDP): the second run of a SYN sees the DNATed packet, which
/// is no longer addressed to a frontend. This is why fixtures use `repeat = 1` and why the
/// benchmark needs self-reproducing setups.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn test_run_repeat_reuses_the_rewritten_skb() {
    let mut dp = datapath();
    one_backend(&mut dp);
    let res = dp.run(Program::Ingress.name(), &syn().build(), 2).unwrap();
    assert_eq!(
        res.output,
        syn().with_dst(BACKEND_A).build(),
        "rewritten once"
    );
    assert_eq!(
        dp.counter(Hook::PodIngress, Reason::DnatNew),
        1,
        "first iteration"
    );
    assert_eq!(
        dp.counter(Hook::PodIngress, Reason::NotService),
        1,
        "second iteration saw the rewrite"
    );
}

/// The fixtures catch a wrong L4 checksum: the same SYN fixture run against an object loaded
/// with `SVC_FAULT_INJECT = FAULT_SKIP_L4_CSUM` (addresses rewritten, L4 checksum not updated)
/// must fail, and its report must name the TCP checksum as the (only) wrong field.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn fixtures_detect_a_skipped_l4_checksum_update() {
    if let Err(e) = read_object() {
        panic!("{e:#}");
    }
    require_root();
    let mut dp = Datapath::load_with(aya::EbpfLoader::new().override_global(
        GLOBAL_FAULT_INJECT,
        &FAULT_SKIP_L4_CSUM,
        true,
    ))
    .unwrap_or_else(|e| panic!("{e:#}"));
    one_backend(&mut dp);
    let report = dp
        .try_check(&Fixture::translate(
            "SYN, L4 checksum fault",
            Program::Ingress,
            &syn(),
            &syn().with_dst(BACKEND_A),
            Reason::DnatNew,
        ))
        .expect_err("a skipped checksum update must not pass the fixture");
    println!("{report}");
    assert!(
        report.contains("tcp.checksum") && report.contains("INVALID"),
        "{report}"
    );
    let fields: Vec<&str> = report.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(fields.len(), 1, "only the TCP checksum differs: {fields:?}");
}

/// The object's map symbols are the ABI's names (the agent pins and tests look maps up by
/// them), and its BTF carries the ABI's struct names so `bpftool map dump` prints fields.
#[test]
fn object_map_names_and_btf_types_match_the_abi() {
    let object = read_object().unwrap_or_else(|e| panic!("{e:#}"));
    let obj = aya_obj_maps(&object);
    let want: std::collections::BTreeSet<String> = ALL_MAPS.iter().map(|s| s.to_string()).collect();
    // aya-log's ring (`--bpf-debug-log`): created with each load and read by that agent, never
    // pinned, so not one of ALL_MAPS.
    let obj: std::collections::BTreeSet<String> =
        obj.into_iter().filter(|m| m != "AYA_LOGS").collect();
    assert_eq!(
        obj, want,
        "map symbols in target/svc-ebpf.o vs svc_common::ALL_MAPS"
    );
    assert!(want.contains(MAP_FRONTENDS));

    let out = Command::new("/usr/sbin/bpftool")
        .args(["btf", "dump", "file"])
        .arg(ebpf_object())
        .output()
        .expect("running /usr/sbin/bpftool btf dump file target/svc-ebpf.o");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout);
    // The structs generic over the address width (`CtKeyOf<[u8; 4]>`, …) are named with
    // bpf-linker's escapes of `<`, `[`, `;`, ` `, `]`, `>`; `bpftool map dump` prints their
    // fields by name either way.
    let v4 = |ty: &str| format!("{ty}Of_3C__5B_u8_3B__20_4_5D__3E_");
    let v6 = |ty: &str| format!("{ty}Of_3C_svc_common_3A__3A_Addr6_3E_");
    let mut want = vec![
        "Frontend".to_string(),
        "SlotKey".to_string(),
        "Slot".to_string(),
        "Affinity6".to_string(),
        "SockKey6".to_string(),
        "FragKey6".to_string(),
        "Addr6".to_string(),
    ];
    for ty in ["FrontendKey", "Backend", "CtKey", "CtEntry", "AffinityKey"] {
        want.push(v4(ty));
        want.push(v6(ty));
    }
    for ty in want {
        let line = format!("STRUCT '{ty}'");
        assert!(
            dump.contains(&line),
            "BTF of target/svc-ebpf.o has no {line}"
        );
    }
}

/// Names of the object's maps that are not loader-made sections (`.rodata`, `.bss`, …).
fn aya_obj_maps(object: &[u8]) -> std::collections::BTreeSet<String> {
    // Parsing (not loading) needs no privilege, so this test runs for everyone.
    let obj = aya_obj::Object::parse(object).expect("parsing target/svc-ebpf.o");
    obj.maps
        .keys()
        .filter(|n| !n.starts_with('.'))
        .cloned()
        .collect()
}

/// `sessionAffinity: ClientIP`: every new flow of a client goes to the backend its first flow
/// got, while the timeout has not expired; without affinity the same flows are spread.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn session_affinity_keeps_a_client_on_one_backend() {
    let mut dp = datapath();
    dp.add_service(
        SVC_VIP,
        PROTO_TCP,
        SVC_ID,
        &[(BACKEND_A_ID, BACKEND_A), (BACKEND_B_ID, BACKEND_B)],
    )
    .unwrap();
    let backend_of = |dp: &Datapath, client: SocketAddrV4| -> SocketAddrV4 {
        let pkt = Pkt::tcp(client, SVC_VIP, TCP_SYN);
        let res = dp.run(Program::Ingress.name(), &pkt.build(), 1).unwrap();
        if res.output == pkt.clone().with_dst(BACKEND_A).build() {
            BACKEND_A
        } else if res.output == pkt.clone().with_dst(BACKEND_B).build() {
            BACKEND_B
        } else {
            panic!("output is neither backend")
        }
    };
    // Without affinity, 40 flows of one client use both backends.
    let spread: std::collections::BTreeSet<_> = (0..40)
        .map(|i| backend_of(&dp, client(41000 + i)))
        .collect();
    assert_eq!(spread.len(), 2, "without affinity the choice is random");

    // With affinity (kube-proxy's default 10800 s), every flow follows the first.
    let key = frontend_key(SVC_VIP, PROTO_TCP);
    let mut fe = dp.frontend(&key).unwrap();
    fe.affinity_timeout_s = 10_800;
    dp.put_frontend_entry(key, fe).unwrap();
    let before = dp.counter(Hook::PodIngress, Reason::Affinity);
    let first = backend_of(&dp, client(42000));
    for i in 1..30 {
        assert_eq!(
            backend_of(&dp, client(42000 + i)),
            first,
            "flow {i} left the affinity backend"
        );
    }
    assert_eq!(dp.counter(Hook::PodIngress, Reason::Affinity) - before, 29);
    // Another client has its own (random) affinity, kept as well.
    let other = SocketAddrV4::new(std::net::Ipv4Addr::new(10, 244, 1, 9), 43000);
    let theirs = backend_of(&dp, other);
    for i in 1..10 {
        let c = SocketAddrV4::new(*other.ip(), 43000 + i);
        assert_eq!(backend_of(&dp, c), theirs);
    }
}

/// A trace ring that fills up loses events without delaying packets, and every lost event is
/// counted in `SVC_TRACE_LOST` for the tracer to report: 10 000 traced packets into one ring
/// (room for about 7 280 events) are all passed, and the events read plus the events counted
/// lost are exactly 10 000, some of each. A slot whose filter does not match writes nothing
/// and loses nothing.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn a_full_trace_ring_counts_what_it_loses() {
    use svc_agent::dataplane::trace::{new_ring, RingReader};
    use svc_common::TraceFilter;
    let mut dp = datapath();
    let mut trace = dp
        .trace_maps()
        .unwrap()
        .expect("the object has the trace maps");
    let filter = |addr: std::net::Ipv4Addr| TraceFilter {
        src_addr: addr.octets(),
        ..bytemuck::Zeroable::zeroed()
    };
    // Slot 0 for the client, slot 1 for an address no packet has.
    let mut readers = Vec::new();
    for (slot, addr) in [
        (0, *CLIENT_POD.ip()),
        (1, std::net::Ipv4Addr::new(192, 0, 2, 99)),
    ] {
        let ring = new_ring().unwrap();
        trace.install(slot, &filter(addr), &ring).unwrap();
        readers.push(RingReader::new(ring).unwrap());
    }
    trace.set_on(0b11).unwrap();
    const PACKETS: u32 = 10_000;
    let miss = Pkt::tcp(CLIENT_POD, SocketAddrV4::new(OTHER_POD, 80), TCP_SYN).build();
    let res = dp.run(Program::Ingress.name(), &miss, PACKETS).unwrap();
    assert_eq!(
        res.retval as i32, -1,
        "passed (TC_ACT_UNSPEC) however full the ring"
    );
    assert_eq!(
        dp.counter(Hook::PodIngress, Reason::NotService),
        u64::from(PACKETS)
    );
    let mut read = [0u64; 2];
    for (n, r) in read.iter_mut().zip(&mut readers) {
        *n = r.drain().len() as u64;
    }
    let lost_of = |slot: u32| -> u64 { trace.lost(slot).unwrap() };
    println!(
        "slot 0: {} events read, {} lost; slot 1: {} read, {} lost",
        read[0],
        lost_of(0),
        read[1],
        lost_of(1)
    );
    assert!(read[0] > 0 && lost_of(0) > 0, "the ring filled up");
    assert_eq!(read[0] + lost_of(0), u64::from(PACKETS));
    assert_eq!(
        (read[1], lost_of(1)),
        (0, 0),
        "the other filter matched nothing"
    );
}
