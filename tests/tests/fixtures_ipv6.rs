//! `BPF_PROG_TEST_RUN` fixtures for the IPv6 tc programs (`svc_pod_ingress6`, …): an IPv6
//! ClusterIP translated both ways, the IPv4 programs handing IPv6 frames over, the extension
//! headers walked or refused, fragments, hairpin, and what passes untouched. Expected frames
//! are built with etherparse from the rewritten fields, so every checksum the datapath updates
//! incrementally is compared with one computed from scratch.
//!
//! Run as root: `cargo test -p tests --test fixtures_ipv6`.
#![allow(unused_crate_dependencies)]

use svc_common::{
    Hook, Reason, CT_DIR_FORWARD, CT_DIR_REPLY, CT_STATE_SYN_SENT, PROTO_TCP, PROTO_UDP,
};
use svc_testkit::fixtures::{
    ipv6::{addr6, Datapath6, Ext, Pkt6, BACKEND6_B, CLIENT6, OTHER6, SVC6},
    require_root,
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
    let mut dp = datapath();
    let direct = Pkt6::tcp(CLIENT6, OTHER6, SYN);
    expect(&dp, "svc_pod_ingress6", &direct, PASS, &direct.build());
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::NotService), 1);
    // An IPv4 frame reaching an IPv6 program (never from the IPv4 program, which keeps them).
    let (rc, _) = dp.run("svc_pod_ingress6", &v4_frame()).unwrap();
    assert_eq!(rc, PASS);
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::NotIpv6), 1);
    // A frontend without endpoints: not answered over IPv6 yet, dropped and counted.
    let empty = std::net::SocketAddrV6::new(*SVC6.ip(), 82, 0, 0);
    dp.add_service(empty, PROTO_TCP, 82, &[]).unwrap();
    let (rc, _) = dp
        .run("svc_pod_ingress6", &Pkt6::tcp(CLIENT6, empty, SYN).build())
        .unwrap();
    assert_eq!(rc, DROP);
    assert_eq!(dp.counter(Hook::PodIngress6, Reason::NoBackend), 1);
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
