//! `BPF_PROG_TEST_RUN` fixtures for the IPv6 tc programs (`svc_pod_ingress6`, …): an IPv6
//! ClusterIP translated both ways, the IPv4 programs handing IPv6 frames over, the extension
//! headers walked or refused, fragments, hairpin, what passes untouched, the answers to a
//! frontend without endpoints (TCP RST, ICMPv6 port unreachable, rate-limited), Packet Too Big
//! (on a device of an [`XdpNode`] whose route to a backend has MTU 1280), and ICMPv6 errors
//! about translated flows, both ways and redirected to an external client. Expected frames are
//! built with etherparse from the rewritten fields, so every checksum the datapath updates
//! incrementally or computes is compared with one computed from scratch.
//!
//! Run as root: `cargo test -p tests --test fixtures_ipv6`.
#![allow(unused_crate_dependencies)]

use std::net::SocketAddrV6;

use etherparse::{
    icmpv6::{DestUnreachableCode, TimeExceededCode},
    Icmpv6Type,
};
use svc_common::{
    Hook, Reason, CT_DIR_FORWARD, CT_DIR_REPLY, CT_STATE_SYN_SENT, FRONTEND_F_NODEPORT, PROTO_TCP,
    PROTO_UDP,
};
use svc_testkit::fixtures::{
    ipv6::{
        addr6, assert_icmp6_checksum, icmp6, Datapath6, Ext, Pkt6, BACKEND6_B, BACKEND6_NARROW,
        CLIENT6, EXT_CLIENT6, NODE6, OTHER6, PATH_MTU6, ROUTER6, SVC6,
    },
    require_root, XdpNode, CLIENT_MAC, GATEWAY_MAC, PAYLOAD,
};

/// `TC_ACT_UNSPEC`: the packet continues.
const PASS: i32 = -1;
/// `TC_ACT_SHOT`.
const DROP: i32 = 2;
/// `TC_ACT_REDIRECT`.
const REDIRECT: i32 = 7;
const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;

fn datapath() -> Datapath6 {
    require_root();
    let mut dp = Datapath6::load().unwrap_or_else(|e| panic!("{e:#}"));
    for proto in [PROTO_TCP, PROTO_UDP] {
        dp.add_service(SVC6, proto, proto as u32, &[BACKEND6_B])
            .unwrap_or_else(|e| panic!("programming the Service: {e:#}"));
    }
    dp
}

/// Runs `prog` on `input` and checks verdict and output frame byte for byte.
fn expect(dp: &Datapath6, prog: &str, input: &Pkt6, verdict: i32, output: &[u8]) {
    let (rc, out) = dp
        .run(prog, &input.build())
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(rc, verdict, "{prog}: verdict for {input:?}");
    assert_eq!(
        hex(&out),
        hex(output),
        "{prog}: output frame for {input:?} (expected built by etherparse)"
    );
}

fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| c.iter().map(|x| format!("{x:02x}")).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn tcp_to_an_ipv6_clusterip_is_translated_both_ways() {
    let dp = datapath();
    let syn = Pkt6::tcp(CLIENT6, SVC6, SYN);
    expect(
        &dp,
        "svc_pod_ingress6",
        &syn,
        PASS,
        &syn.clone().with_dst(BACKEND6_B).build(),
    );
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::DnatNew), 1);
    let key = svc_common::CtKey6::new(
        addr6(&CLIENT6),
        addr6(&SVC6),
        CLIENT6.port(),
        SVC6.port(),
        PROTO_TCP,
    );
    let fwd = dp.ct_get(&key).expect("forward entry client→SVC6");
    assert_eq!(
        (fwd.dst_addr, fwd.dst_port, fwd.dir, fwd.state),
        (
            addr6(&BACKEND6_B),
            BACKEND6_B.port(),
            CT_DIR_FORWARD,
            CT_STATE_SYN_SENT
        )
    );
    let rep_key = svc_common::CtKey6::new(
        addr6(&BACKEND6_B),
        addr6(&CLIENT6),
        BACKEND6_B.port(),
        CLIENT6.port(),
        PROTO_TCP,
    );
    let rep = dp.ct_get(&rep_key).expect("reply entry backend→client");
    assert_eq!(
        (rep.src_addr, rep.src_port, rep.dir),
        (addr6(&SVC6), 80, CT_DIR_REPLY)
    );

    // The backend's answer, entering the client pod: the frontend comes back as source.
    let syn_ack = Pkt6::tcp(BACKEND6_B, CLIENT6, SYN_ACK);
    expect(
        &dp,
        "svc_pod_egress6",
        &syn_ack,
        PASS,
        &syn_ack.clone().with_src(SVC6).build(),
    );
    assert_eq!(dp.counter(Hook::PodEgress6, Reason::RevNat), 1);
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn udp_to_an_ipv6_clusterip_is_translated_both_ways() {
    let dp = datapath();
    let query = Pkt6::udp(CLIENT6, SVC6);
    expect(
        &dp,
        "svc_pod_ingress6",
        &query,
        PASS,
        &query.clone().with_dst(BACKEND6_B).build(),
    );
    let answer = Pkt6::udp(BACKEND6_B, CLIENT6).with_payload(&[0xab; 700]);
    expect(
        &dp,
        "svc_pod_egress6",
        &answer,
        PASS,
        &answer.clone().with_src(SVC6).build(),
    );
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn the_ipv4_programs_hand_ipv6_frames_to_their_ipv6_siblings() {
    let dp = datapath();
    let syn = Pkt6::tcp(CLIENT6, SVC6, SYN);
    expect(
        &dp,
        "svc_pod_ingress",
        &syn,
        PASS,
        &syn.clone().with_dst(BACKEND6_B).build(),
    );
    let syn_ack = Pkt6::tcp(BACKEND6_B, CLIENT6, SYN_ACK);
    expect(
        &dp,
        "svc_pod_egress",
        &syn_ack,
        PASS,
        &syn_ack.clone().with_src(SVC6).build(),
    );
    // Counted by the IPv6 programs alone: a tail call does not return to the IPv4 program.
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::DnatNew), 1);
    assert_eq!(dp.counter(Hook::PodEgress6, Reason::RevNat), 1);
    assert_eq!(dp.counter(Hook::PodIngress, Reason::NotIpv4), 0);
    assert_eq!(dp.counter(Hook::PodEgress, Reason::NotIpv4), 0);
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn options_headers_are_walked_and_a_live_routing_header_is_refused() {
    let dp = datapath();
    for ext in [Ext::HopByHop, Ext::DestOpts, Ext::Routing(0)] {
        let syn =
            Pkt6::tcp(CLIENT6, SVC6, SYN)
                .with_ext(ext)
                .with_src(std::net::SocketAddrV6::new(
                    *CLIENT6.ip(),
                    41000 + ext_no(ext),
                    0,
                    0,
                ));
        expect(
            &dp,
            "svc_pod_ingress6",
            &syn,
            PASS,
            &syn.clone().with_dst(BACKEND6_B).build(),
        );
    }
    // Two headers in a row.
    let udp = Pkt6::udp(CLIENT6, SVC6)
        .with_ext(Ext::HopByHop)
        .with_ext(Ext::DestOpts);
    expect(
        &dp,
        "svc_pod_ingress6",
        &udp,
        PASS,
        &udp.clone().with_dst(BACKEND6_B).build(),
    );
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::DnatNew), 4);

    // Segments left: the address in the header is not the packet's final destination.
    let routed = Pkt6::tcp(CLIENT6, SVC6, SYN).with_ext(Ext::Routing(1));
    expect(&dp, "svc_pod_ingress6", &routed, PASS, &routed.build());
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::ExtHeader), 1);
}

fn ext_no(e: Ext) -> u16 {
    match e {
        Ext::HopByHop => 1,
        Ext::DestOpts => 2,
        Ext::Routing(_) => 3,
    }
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn esp_and_unknown_headers_pass_untouched_and_are_counted() {
    let dp = datapath();
    let mut esp = Pkt6::udp(CLIENT6, SVC6).build();
    esp[14 + 6] = 50; // ESP: the L4 header is encrypted
    let (rc, out) = dp.run("svc_pod_ingress6", &esp).unwrap();
    assert_eq!((rc, &out), (PASS, &esp));
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::ExtHeader), 1);
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn both_fragments_of_a_datagram_are_translated() {
    let dp = datapath();
    let big = Pkt6::udp(CLIENT6, SVC6).with_payload(&[0x5a; 100]);
    let [first, later] = big.fragments(0x1234_5678, 48);
    let [want_first, want_later] = big.clone().with_dst(BACKEND6_B).fragments(0x1234_5678, 48);
    let (rc, out) = dp.run("svc_pod_ingress6", &first).unwrap();
    assert_eq!(rc, PASS);
    assert_eq!(hex(&out), hex(&want_first), "first fragment");
    let (rc, out) = dp.run("svc_pod_ingress6", &later).unwrap();
    assert_eq!(rc, PASS);
    assert_eq!(hex(&out), hex(&want_later), "later fragment");
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::DnatNew), 1);
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::FragTranslated), 1);

    // A later fragment of a datagram whose first fragment was never seen.
    let [_, stray] = big.fragments(0x0bad_cafe, 48);
    let (rc, out) = dp.run("svc_pod_ingress6", &stray).unwrap();
    assert_eq!((rc, &out), (PASS, &stray));
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::Fragment), 1);
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn a_pod_reaching_itself_gets_the_frontend_as_source_and_the_frame_back() {
    let mut dp = datapath();
    let me = std::net::SocketAddrV6::new(*CLIENT6.ip(), 8080, 0, 0);
    let svc = std::net::SocketAddrV6::new(*SVC6.ip(), 81, 0, 0);
    dp.add_service(svc, PROTO_TCP, 81, &[me]).unwrap();
    let syn = Pkt6::tcp(CLIENT6, svc, SYN);
    // Source: the frontend's address with the client's own port (the reply tuple stays
    // unique); destination: the pod itself; one hop used up.
    let mut want = syn
        .clone()
        .with_src(std::net::SocketAddrV6::new(*svc.ip(), CLIENT6.port(), 0, 0))
        .with_dst(me);
    want.hop_limit -= 1;
    let mut want = want.build();
    // Sent back out of the veth it came from: addressed to the pod's own MAC.
    let (dst, src) = (want[0..6].to_vec(), want[6..12].to_vec());
    want[0..6].copy_from_slice(&src);
    want[6..12].copy_from_slice(&dst);
    let (rc, out) = dp.run("svc_pod_ingress6", &syn.build()).unwrap();
    assert_eq!(rc, REDIRECT);
    assert_eq!(hex(&out), hex(&want));
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::Hairpin), 1);
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn frames_not_for_a_service_pass_untouched() {
    let dp = datapath();
    let direct = Pkt6::tcp(CLIENT6, OTHER6, SYN);
    expect(&dp, "svc_pod_ingress6", &direct, PASS, &direct.build());
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::NotService), 1);
    // An IPv4 frame reaching an IPv6 program (never from the IPv4 program, which keeps them).
    let (rc, _) = dp.run("svc_pod_ingress6", &v4_frame()).unwrap();
    assert_eq!(rc, PASS);
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::NotIpv6), 1);
}

fn v4_frame() -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 244, 1, 2], [10, 96, 0, 10], 64)
        .udp(1000, 53)
        .write(&mut out, b"x")
        .unwrap();
    out
}

// ---------------------------------------------------------------------------------------------
// A frontend without endpoints: answered like kube-proxy's REJECT, over IPv6
// ---------------------------------------------------------------------------------------------

/// A frontend on [`SVC6`]'s address without endpoints, TCP and UDP.
fn empty_frontend(dp: &mut Datapath6) -> SocketAddrV6 {
    let empty = SocketAddrV6::new(*SVC6.ip(), 82, 0, 0);
    dp.add_service(empty, PROTO_TCP, 82, &[]).unwrap();
    dp.add_service(empty, PROTO_UDP, 83, &[]).unwrap();
    empty
}

/// The TCP RST `svc_pod_ingress6` must answer with: from the frontend back to the client, a
/// fresh IPv6 header (hop limit 64), Ethernet addresses reversed; built by etherparse.
fn rst6(fe: SocketAddrV6, seq: u32, ack: Option<u32>) -> Vec<u8> {
    let mut out = Vec::new();
    let tcp = etherparse::PacketBuilder::ethernet2(GATEWAY_MAC, CLIENT_MAC)
        .ipv6(fe.ip().octets(), CLIENT6.ip().octets(), 64)
        .tcp(fe.port(), CLIENT6.port(), seq, 0)
        .rst();
    match ack {
        Some(a) => tcp.ack(a).write(&mut out, &[]),
        None => tcp.write(&mut out, &[]),
    }
    .unwrap();
    out
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn a_frontend_without_endpoints_answers_tcp_with_a_reset() {
    let mut dp = datapath();
    let empty = empty_frontend(&mut dp);
    // SYN (seq 1000, 19 payload bytes) → RST|ACK, seq 0, ack 1000 + 19 + 1 (RFC 9293 3.10.7.1).
    let acked = 1000 + PAYLOAD.len() as u32 + 1;
    let syn = Pkt6::tcp(CLIENT6, empty, SYN);
    expect(
        &dp,
        "svc_pod_ingress6",
        &syn,
        REDIRECT,
        &rst6(empty, 0, Some(acked)),
    );
    // An extension header is no payload: the same acknowledgment number.
    let syn_ext = syn.clone().with_ext(Ext::HopByHop);
    expect(
        &dp,
        "svc_pod_ingress6",
        &syn_ext,
        REDIRECT,
        &rst6(empty, 0, Some(acked)),
    );
    // A segment carrying ACK (ack 2000) → RST with seq 2000 and no ACK.
    let ack = Pkt6::tcp(CLIENT6, empty, 0x10);
    expect(
        &dp,
        "svc_pod_ingress6",
        &ack,
        REDIRECT,
        &rst6(empty, 2000, None),
    );
    // Through the IPv4 program's hand-over too.
    expect(
        &dp,
        "svc_pod_ingress",
        &syn,
        REDIRECT,
        &rst6(empty, 0, Some(acked)),
    );
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::NoBackend), 4);

    // A RST is never answered.
    let rst = Pkt6::tcp(CLIENT6, empty, 0x04);
    let (rc, _) = dp.run("svc_pod_ingress6", &rst.build()).unwrap();
    assert_eq!(rc, DROP, "a RST to a frontend without endpoints is dropped");
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::NoBackend), 5);
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::RateLimited), 0);
    let key = svc_common::CtKey6::new(
        addr6(&CLIENT6),
        addr6(&empty),
        CLIENT6.port(),
        empty.port(),
        PROTO_TCP,
    );
    assert!(
        dp.ct_get(&key).is_none(),
        "no conntrack entry for a rejected flow"
    );
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn a_frontend_without_endpoints_answers_udp_with_port_unreachable() {
    let mut dp = datapath();
    let empty = empty_frontend(&mut dp);
    // A short datagram is quoted whole; a long one by its first 128 bytes (the datapath's
    // fixed bound, reject6.rs), IPv6 header included.
    for (what, payload) in [("short", PAYLOAD.to_vec()), ("long", vec![0x5a; 700])] {
        let dgram = Pkt6::udp(CLIENT6, empty).with_payload(&payload);
        let frame = dgram.build();
        let quote = &frame[14..frame.len().min(14 + 128)];
        let want = icmp6(
            &empty,
            &CLIENT6,
            Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port),
            quote,
            GATEWAY_MAC,
            CLIENT_MAC,
        );
        expect(&dp, "svc_pod_ingress6", &dgram, REDIRECT, &want);
        let (_, out) = dp.run("svc_pod_ingress6", &frame).unwrap();
        assert_icmp6_checksum(what, &out);
        assert_eq!(
            (out[14 + 40], out[14 + 41]),
            (1, 4),
            "{what}: type and code"
        );
    }
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::NoBackend), 4);
}

/// The IPv6 answers draw on the per-CPU budget of generated packets as the IPv4 ones do
/// (`svc_common::GENERATED_PER_CPU_PER_S` in a one-second window), then are dropped as
/// `rate_limited`. On a thread pinned to one CPU so every run draws on the same budget.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn ipv6_rejects_are_rate_limited_per_cpu() {
    let mut dp = datapath();
    let empty = empty_frontend(&mut dp);
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscalls on this thread with a zero-initialised cpu_set_t.
            unsafe {
                let cpu = libc::sched_getcpu();
                assert!(cpu >= 0, "sched_getcpu");
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu as usize, &mut set);
                assert_eq!(
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                    0,
                    "pinning the test thread"
                );
            }
            let dgram = Pkt6::udp(CLIENT6, empty).build();
            let budget = svc_common::GENERATED_PER_CPU_PER_S;
            let start = std::time::Instant::now();
            let mut answered = 0u64;
            for _ in 0..budget {
                if dp.run("svc_pod_ingress6", &dgram).unwrap().0 == REDIRECT {
                    answered += 1;
                }
            }
            let (rc, out) = dp.run("svc_pod_ingress6", &dgram).unwrap();
            let elapsed = start.elapsed();
            assert!(
                elapsed < std::time::Duration::from_millis(900),
                "{budget} runs took {elapsed:?}: the window may have rolled over"
            );
            assert_eq!(answered, budget, "every answer within the budget is sent");
            assert_eq!(
                (rc, out),
                (DROP, dgram),
                "one answer too many: dropped untouched"
            );
            assert_eq!(dp.counter(Hook::PodIngress6, Reason::RateLimited), 1);
            assert_eq!(dp.counter(Hook::PodIngress6, Reason::NoBackend), budget);
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    });
}

// ---------------------------------------------------------------------------------------------
// Packet Too Big
// ---------------------------------------------------------------------------------------------

/// Towards a remote backend behind a path of [`PATH_MTU6`] (an [`XdpNode`] with an IPv6
/// underlay): a datagram or segment larger than that is answered with ICMPv6 Packet Too Big
/// from the node's IPv6 address, MTU 1280, quoting the first 128 bytes of the packet as the
/// client sent it; one that fits is source-NATed and redirected. And a packet to a NodePort
/// whose hop limit would expire is answered with Time Exceeded.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn too_big_for_the_path_to_a_backend_gets_packet_too_big() {
    require_root();
    let node = XdpNode::create().unwrap_or_else(|e| panic!("{e:#}"));
    node.add_ipv6().unwrap_or_else(|e| panic!("{e:#}"));
    node.run(|uplink| {
        let mut dp = Datapath6::load().unwrap_or_else(|e| panic!("{e:#}"));
        dp.set_config6(*NODE6.ip()).unwrap();
        for proto in [PROTO_TCP, PROTO_UDP] {
            dp.add_service(NODE6, proto, 7 + proto as u32, &[BACKEND6_NARROW])
                .unwrap();
        }
        let prog = "svc_uplink_ingress6";
        let client = |port| SocketAddrV6::new(*EXT_CLIENT6.ip(), port, 0, 0);
        let ptb = |frame: &[u8]| {
            icmp6(
                &NODE6,
                &EXT_CLIENT6,
                Icmpv6Type::PacketTooBig {
                    mtu: PATH_MTU6 as u32,
                },
                &frame[14..14 + 128],
                GATEWAY_MAC,
                CLIENT_MAC,
            )
        };
        // 1300 bytes of IPv6 packet: too big.
        let big = Pkt6::udp(client(40000), NODE6).with_payload(&[0x42; 1300 - 48]);
        let frame = big.build();
        let (rc, out) = dp.run_on(prog, &frame, uplink.ifindex).unwrap();
        assert_eq!(rc, REDIRECT, "1300-byte UDP → Packet Too Big");
        assert_eq!(hex(&out), hex(&ptb(&frame)), "Packet Too Big (etherparse)");
        assert_icmp6_checksum("UDP", &out);
        assert_eq!(
            u32::from_be_bytes(out[14 + 44..14 + 48].try_into().unwrap()),
            PATH_MTU6 as u32,
            "the MTU in bytes 4–7"
        );
        assert_eq!(dp.counter(Hook::UplinkIngress6, Reason::FragNeeded), 1);

        // Exactly 1280 fits: translated and redirected to the next hop.
        let fits = Pkt6::udp(client(40001), NODE6).with_payload(&[0x42; 1280 - 48]);
        let (rc, out) = dp.run_on(prog, &fits.build(), uplink.ifindex).unwrap();
        assert_eq!(rc, REDIRECT, "1280-byte UDP fits");
        assert_eq!(&out[14 + 24..14 + 40], &BACKEND6_NARROW.ip().octets());
        assert_eq!(&out[14 + 8..14 + 24], &NODE6.ip().octets(), "source-NATed");
        assert_eq!(dp.counter(Hook::UplinkIngress6, Reason::DnatNew), 1);

        // TCP: the handshake fits, a full-size segment does not.
        let syn = Pkt6::tcp(client(40002), NODE6, SYN);
        let (rc, _) = dp.run_on(prog, &syn.build(), uplink.ifindex).unwrap();
        assert_eq!(rc, REDIRECT, "SYN fits");
        let seg = Pkt6::tcp(client(40002), NODE6, 0x10).with_payload(&[0x43; 1400 - 60]);
        let frame = seg.build();
        let (rc, out) = dp.run_on(prog, &frame, uplink.ifindex).unwrap();
        assert_eq!(rc, REDIRECT, "1400-byte TCP segment → Packet Too Big");
        assert_eq!(hex(&out), hex(&ptb(&frame)), "Packet Too Big (etherparse)");
        assert_icmp6_checksum("TCP", &out);
        assert_eq!(dp.counter(Hook::UplinkIngress6, Reason::FragNeeded), 2);

        // Hop limit 1 to a NodePort of this node whose backend is remote: answered with Time
        // Exceeded from the NodePort's address (passed on, the stack would deliver it locally
        // and refuse it), quoting the packet as the client sent it.
        let np = SocketAddrV6::new(*NODE6.ip(), 30080, 0, 0);
        dp.add_service_flags(np, PROTO_UDP, 30, &[BACKEND6_NARROW], FRONTEND_F_NODEPORT)
            .unwrap();
        let mut expiring = Pkt6::udp(client(40003), np);
        expiring.hop_limit = 1;
        let frame = expiring.build();
        let (rc, out) = dp.run_on(prog, &frame, uplink.ifindex).unwrap();
        assert_eq!(rc, REDIRECT, "hop limit 1 to the NodePort → Time Exceeded");
        let want = icmp6(
            &np,
            &EXT_CLIENT6,
            Icmpv6Type::TimeExceeded(TimeExceededCode::HopLimitExceeded),
            &frame[14..],
            GATEWAY_MAC,
            CLIENT_MAC,
        );
        assert_eq!(hex(&out), hex(&want), "Time Exceeded (etherparse)");
        assert_icmp6_checksum("hop limit 1", &out);
        assert_eq!(dp.counter(Hook::UplinkIngress6, Reason::TtlExceeded), 1);
    });
}

// ---------------------------------------------------------------------------------------------
// ICMPv6 errors about translated flows
// ---------------------------------------------------------------------------------------------

/// The IPv6 packet of `p` (no Ethernet header), cut to `len` bytes when given.
fn quote(p: &Pkt6, len: Option<usize>) -> Vec<u8> {
    let f = p.build();
    let q = &f[14..];
    q[..len.unwrap_or(q.len()).min(q.len())].to_vec()
}

/// Errors travelling to a client about its TCP and UDP flows to [`SVC6`] (translated to
/// [`BACKEND6_B`]), entering the client pod: a Destination Unreachable from the backend
/// (outer source becomes the frontend; for UDP the port unreachable a connected socket must
/// see) and a Parameter Problem from the backend, a Time Exceeded and a Packet Too Big from a
/// router (outer source kept). The quoted
/// packet becomes the client's own (client → frontend): its addresses, ports, the quoted UDP
/// checksum, the quoted TCP checksum when the whole header is quoted, and the ICMPv6 checksum.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn icmpv6_errors_about_translated_tcp_and_udp_flows_reach_the_client_translated() {
    let dp = datapath();
    let mut translated = 0;
    for (flow, unreachable) in [
        (
            Pkt6::tcp(CLIENT6, SVC6, SYN),
            DestUnreachableCode::Prohibited,
        ),
        (
            Pkt6::udp(CLIENT6, SVC6).with_payload(&[0x33; 60]),
            DestUnreachableCode::Port,
        ),
    ] {
        let proto = if flow.tcp.is_some() { "TCP" } else { "UDP" };
        let (rc, _) = dp.run("svc_pod_ingress6", &flow.build()).unwrap();
        assert_eq!(rc, PASS, "{proto}: the flow's first packet");
        let sent = flow.clone().with_dst(BACKEND6_B);
        for (what, from, kind, len) in [
            (
                "destination unreachable from the backend, whole quote",
                BACKEND6_B,
                Icmpv6Type::DestinationUnreachable(unreachable),
                None,
            ),
            (
                "time exceeded from a router, 8 L4 bytes quoted",
                ROUTER6,
                Icmpv6Type::TimeExceeded(TimeExceededCode::HopLimitExceeded),
                Some(48),
            ),
            (
                "packet too big from a router, whole quote",
                ROUTER6,
                Icmpv6Type::PacketTooBig { mtu: 1280 },
                None,
            ),
            (
                "parameter problem from the backend (pointer 6: next header), whole quote",
                BACKEND6_B,
                Icmpv6Type::ParameterProblem(etherparse::icmpv6::ParameterProblemHeader {
                    code: etherparse::icmpv6::ParameterProblemCode::UnrecognizedNextHeader,
                    pointer: 6,
                }),
                None,
            ),
        ] {
            let input = icmp6(
                &from,
                &CLIENT6,
                kind,
                &quote(&sent, len),
                GATEWAY_MAC,
                CLIENT_MAC,
            );
            let outer_src = if from == BACKEND6_B { SVC6 } else { from };
            let want = icmp6(
                &outer_src,
                &CLIENT6,
                kind,
                &quote(&flow, len),
                GATEWAY_MAC,
                CLIENT_MAC,
            );
            let (rc, out) = dp.run("svc_pod_egress6", &input).unwrap();
            assert_eq!(rc, PASS, "{proto}: {what}");
            assert_eq!(
                hex(&out),
                hex(&want),
                "{proto}: {what} (expected built by etherparse)"
            );
            assert_icmp6_checksum(what, &out);
            translated += 1;
        }
    }
    assert_eq!(
        dp.counter(Hook::PodEgress6, Reason::IcmpTranslated),
        translated
    );
}

/// An external client's UDP flow to a NodePort-like frontend on [`NODE6`], source-NATed to a
/// remote backend: the backend's port unreachable comes back to the node and leaves again
/// towards the client, redirected by `forward6` (hop limit decremented) with the frontend as
/// outer source and the client's own datagram quoted.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn an_icmpv6_error_from_a_remote_backend_is_forwarded_to_the_external_client_translated() {
    require_root();
    let node = XdpNode::create().unwrap_or_else(|e| panic!("{e:#}"));
    node.add_ipv6().unwrap_or_else(|e| panic!("{e:#}"));
    node.run(|uplink| {
        let mut dp = Datapath6::load().unwrap_or_else(|e| panic!("{e:#}"));
        dp.set_config6(*NODE6.ip()).unwrap();
        dp.add_service(NODE6, PROTO_UDP, 7, &[BACKEND6_NARROW])
            .unwrap();
        let prog = "svc_uplink_ingress6";
        let client = SocketAddrV6::new(*EXT_CLIENT6.ip(), 40010, 0, 0);
        let dgram = Pkt6::udp(client, NODE6).with_payload(&[0x44; 50]);
        let (rc, _) = dp.run_on(prog, &dgram.build(), uplink.ifindex).unwrap();
        assert_eq!(rc, REDIRECT, "the datagram to the remote backend");
        let key = svc_common::CtKey6::new(
            addr6(&client),
            addr6(&NODE6),
            client.port(),
            NODE6.port(),
            PROTO_UDP,
        );
        let snat_port = dp.ct_get(&key).expect("forward entry").src_port;
        let sent = dgram
            .clone()
            .with_src(SocketAddrV6::new(*NODE6.ip(), snat_port, 0, 0))
            .with_dst(BACKEND6_NARROW);
        let kind = Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port);
        let input = icmp6(
            &BACKEND6_NARROW,
            &NODE6,
            kind,
            &quote(&sent, None),
            CLIENT_MAC,
            GATEWAY_MAC,
        );
        let mut want = icmp6(
            &NODE6,
            &client,
            kind,
            &quote(&dgram, None),
            CLIENT_MAC,
            GATEWAY_MAC,
        );
        want[14 + 7] -= 1; // hop limit: forwarded by the datapath
        let (rc, out) = dp.run_on(prog, &input, uplink.ifindex).unwrap();
        assert_eq!(rc, REDIRECT);
        assert_eq!(hex(&out), hex(&want), "expected built by etherparse");
        assert_icmp6_checksum("port unreachable", &out);
        assert_eq!(dp.counter(Hook::UplinkIngress6, Reason::IcmpTranslated), 1);
    });
}

/// A UDP flow's reply was translated back to the client (source [`SVC6`]); the client answers
/// it with port unreachable (its socket is gone). Leaving the client pod, the error goes to
/// the backend, about the reply as the backend sent it.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn a_clients_port_unreachable_about_a_udp_reply_goes_to_the_backend_translated() {
    let dp = datapath();
    let query = Pkt6::udp(CLIENT6, SVC6);
    assert_eq!(dp.run("svc_pod_ingress6", &query.build()).unwrap().0, PASS);
    let answer = Pkt6::udp(BACKEND6_B, CLIENT6).with_payload(&[0xab; 100]);
    assert_eq!(dp.run("svc_pod_egress6", &answer.build()).unwrap().0, PASS);

    let received = answer.clone().with_src(SVC6);
    let kind = Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port);
    let input = icmp6(
        &CLIENT6,
        &SVC6,
        kind,
        &quote(&received, None),
        CLIENT_MAC,
        GATEWAY_MAC,
    );
    let want = icmp6(
        &CLIENT6,
        &BACKEND6_B,
        kind,
        &quote(&answer, None),
        CLIENT_MAC,
        GATEWAY_MAC,
    );
    let (rc, out) = dp.run("svc_pod_ingress6", &input).unwrap();
    assert_eq!(rc, PASS);
    assert_eq!(hex(&out), hex(&want), "expected built by etherparse");
    assert_icmp6_checksum("port unreachable", &out);
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::IcmpTranslated), 1);
}

/// Neighbor Discovery and every other ICMPv6 message that is not an error about a TCP/UDP
/// packet pass untouched as `not_tcp_udp`; an error about a flow conntrack does not know
/// passes untouched as `not_service`.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn neighbour_discovery_and_other_icmpv6_pass_untouched() {
    let dp = datapath();
    let solicited = SocketAddrV6::new("ff02::1:ff00:2".parse().unwrap(), 0, 0, 0);
    let mut ns_body = SVC6.ip().octets().to_vec();
    ns_body.extend_from_slice(&[1, 1, 0x02, 0x00, 0x0a, 0xf4, 0x01, 0x02]);
    let echo = etherparse::IcmpEchoHeader { id: 7, seq: 1 };
    let messages = [
        (
            "neighbour solicitation",
            icmp6(
                &CLIENT6,
                &solicited,
                Icmpv6Type::NeighborSolicitation,
                &ns_body,
                CLIENT_MAC,
                GATEWAY_MAC,
            ),
        ),
        (
            "neighbour advertisement",
            icmp6(
                &CLIENT6,
                &SVC6,
                Icmpv6Type::NeighborAdvertisement(
                    etherparse::icmpv6::NeighborAdvertisementHeader {
                        router: false,
                        solicited: true,
                        r#override: true,
                    },
                ),
                &ns_body[..16],
                CLIENT_MAC,
                GATEWAY_MAC,
            ),
        ),
        (
            "router solicitation",
            icmp6(
                &CLIENT6,
                &solicited,
                Icmpv6Type::RouterSolicitation,
                &[],
                CLIENT_MAC,
                GATEWAY_MAC,
            ),
        ),
        (
            "echo request to the frontend, 100 bytes",
            icmp6(
                &CLIENT6,
                &SVC6,
                Icmpv6Type::EchoRequest(echo),
                &[0x5a; 100],
                CLIENT_MAC,
                GATEWAY_MAC,
            ),
        ),
        (
            "destination unreachable quoting an echo",
            icmp6(
                &CLIENT6,
                &SVC6,
                Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port),
                &icmp6(
                    &SVC6,
                    &CLIENT6,
                    Icmpv6Type::EchoReply(echo),
                    &[0x5a; 40],
                    CLIENT_MAC,
                    GATEWAY_MAC,
                )[14..],
                CLIENT_MAC,
                GATEWAY_MAC,
            ),
        ),
    ];
    for prog in ["svc_pod_ingress6", "svc_pod_egress6", "svc_pod_ingress"] {
        for (what, frame) in &messages {
            let (rc, out) = dp.run(prog, frame).unwrap();
            assert_eq!((rc, hex(&out)), (PASS, hex(frame)), "{prog}: {what}");
        }
    }
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::NotTcpUdp), 10);
    assert_eq!(dp.counter(Hook::PodEgress6, Reason::NotTcpUdp), 5);

    // An error about a flow that was never translated.
    let unknown = icmp6(
        &ROUTER6,
        &CLIENT6,
        Icmpv6Type::TimeExceeded(TimeExceededCode::HopLimitExceeded),
        &quote(&Pkt6::tcp(CLIENT6, OTHER6, SYN), None),
        GATEWAY_MAC,
        CLIENT_MAC,
    );
    let (rc, out) = dp.run("svc_pod_egress6", &unknown).unwrap();
    assert_eq!((rc, hex(&out)), (PASS, hex(&unknown)));
    assert_eq!(dp.counter(Hook::PodEgress6, Reason::NotService), 1);
    assert_eq!(dp.counter(Hook::PodEgress6, Reason::IcmpTranslated), 0);
}
