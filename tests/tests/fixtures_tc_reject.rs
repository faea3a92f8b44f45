//! `BPF_PROG_TEST_RUN` fixtures for what `svc_pod_ingress` and `svc_pod_egress` reject, drop or
//! leave alone: a frontend without backends (answered like kube-proxy), a missing slot or
//! backend, non-IPv4 frames, ICMP, IP options, later fragments without a first, and headers
//! truncated at every length.
//!
//! Each test loads its own datapath, as in `fixtures_tc` (whose module docs say how); run as
//! root: `cargo test -p tests --test fixtures_tc_reject`.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use svc_common::{Reason, PROTO_TCP, PROTO_UDP};
use svc_testkit::fixtures::*;

mod tc_common;
use tc_common::*;

/// `TC_ACT_REDIRECT`: the program sent the (rewritten) packet out of an interface.
const TC_ACT_REDIRECT: u32 = 7;

/// The answer svc-lb must send for a rejected packet: from the frontend back to the client, a
/// fresh IPv4 header (id 0, DF, TTL 64), built by etherparse so its checksums are independent
/// of the datapath's.
fn answer_ip(
    payload_len: usize,
    proto: u8,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let mut ip = etherparse::Ipv4Header::new(
        payload_len as u16,
        64,
        etherparse::IpNumber(proto),
        SVC_VIP.ip().octets(),
        CLIENT_POD.ip().octets(),
    )
    .unwrap();
    ip.dont_fragment = true;
    ip.identification = 0;
    etherparse::PacketBuilder::ethernet2(GATEWAY_MAC, CLIENT_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn frontend_without_backends_rejects_like_kube_proxy() {
    let mut dp = datapath();
    dp.put_frontend(SVC_VIP, PROTO_TCP, SVC_ID, 0).unwrap();
    dp.put_frontend(SVC_VIP, PROTO_UDP, SVC_ID + 1, 0).unwrap();

    // SYN (seq 1000, 19 payload bytes) → RST|ACK, seq 0, ack 1000 + 19 + 1 (RFC 9293 3.10.7.1).
    let mut rst = Vec::new();
    answer_ip(0, 6)
        .tcp(SVC_VIP.port(), CLIENT_POD.port(), 0, 0)
        .rst()
        .ack(1000 + PAYLOAD.len() as u32 + 1)
        .write(&mut rst, &[])
        .unwrap();
    dp.check(&Fixture {
        name: "SYN to a frontend with no endpoint → TCP RST back to the client".into(),
        program: Program::Ingress,
        input: syn().build(),
        verdict: TC_ACT_REDIRECT,
        output: rst,
        reason: Reason::NoBackend,
    });

    // A segment carrying ACK (ack 1001) → RST with seq 1001 and no ACK.
    let mut rst = Vec::new();
    answer_ip(0, 6)
        .tcp(SVC_VIP.port(), CLIENT_POD.port(), 1001, 0)
        .rst()
        .write(&mut rst, &[])
        .unwrap();
    dp.check(&Fixture {
        name: "ACK to a frontend with no endpoint → RST seq = its ack".into(),
        program: Program::Ingress,
        input: Pkt::tcp(CLIENT_POD, SVC_VIP, TCP_ACK).build(),
        verdict: TC_ACT_REDIRECT,
        output: rst,
        reason: Reason::NoBackend,
    });

    // A RST is never answered.
    dp.check(&Fixture::dropped(
        "RST to a frontend with no endpoint is dropped",
        Program::Ingress,
        Pkt::tcp(CLIENT_POD, SVC_VIP, TCP_RST).build(),
        Reason::NoBackend,
    ));

    // UDP → ICMP port unreachable quoting the datagram's IP header and first 8 bytes.
    let datagram = Pkt::udp(CLIENT_POD, SVC_VIP).build();
    let quote = &datagram[14..14 + 28];
    let mut icmp = Vec::new();
    answer_ip(0, 1)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut icmp, quote)
        .unwrap();
    dp.check(&Fixture {
        name: "UDP to a frontend with no endpoint → ICMP port unreachable".into(),
        program: Program::Ingress,
        input: datagram,
        verdict: TC_ACT_REDIRECT,
        output: icmp,
        reason: Reason::NoBackend,
    });
    assert_eq!(dp.ct_count(), 0, "no conntrack entry for a rejected flow");
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn missing_slot_or_backend_drops() {
    let mut dp = datapath();
    // Count 1 but no slot: what an agent writing the frontend before its slots would cause.
    dp.put_frontend(SVC_VIP, PROTO_TCP, SVC_ID, 1).unwrap();
    dp.check(&Fixture::dropped(
        "slot 1 missing",
        Program::Ingress,
        syn().build(),
        Reason::BackendMissing,
    ));
    // Slot present, backend missing.
    dp.put_slot(SVC_ID, 1, BACKEND_A_ID).unwrap();
    dp.check(&Fixture::dropped(
        "backend of slot 1 missing",
        Program::Ingress,
        syn().build(),
        Reason::BackendMissing,
    ));
    assert_eq!(dp.ct_count(), 0, "no conntrack entry for a refused flow");
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn non_ipv4_frames_pass() {
    let mut dp = datapath();
    one_backend(&mut dp);
    for prog in [Program::Ingress, Program::Egress] {
        dp.check(&Fixture::untouched(
            "ARP request",
            prog,
            arp_request(),
            Reason::NotIpv4,
        ));
        dp.check(&Fixture::untouched(
            "IPv6 TCP SYN",
            prog,
            ipv6_syn(),
            Reason::NotIpv4,
        ));
        // Ethertype IPv4 but version nibble 6: not an IPv4 header whatever the frame claims.
        let mut v6_in_v4 = syn().build();
        v6_in_v4[14] = 0x65;
        dp.check(&Fixture::untouched(
            "ethertype IPv4, version 6",
            prog,
            v6_in_v4,
            Reason::NotIpv4,
        ));
    }
}

/// ICMP that is not an error about TCP/UDP is passed as `not_tcp_udp`, whatever its length:
/// an echo request (short, as `ping -s 0` sends, and long), an error quoting an ICMP echo, and
/// an error whose quote is cut short of the 8 L4 bytes (parse.rs: "quotes we cannot read").
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn icmp_is_not_tcp_udp() {
    let mut dp = datapath();
    one_backend(&mut dp);
    let echo = Pkt::icmp_echo(CLIENT_POD, SVC_VIP);
    dp.check(&Fixture::untouched(
        "ICMP echo to SVC_VIP, 240 payload bytes",
        Program::Ingress,
        echo.clone().with_payload(vec![0x5a; 240]).build(),
        Reason::NotTcpUdp,
    ));
    let mut failures = Vec::new();
    let quoted_echo = quote_of(&Pkt::icmp_echo(SVC_VIP, CLIENT_POD), None);
    dp.check(&Fixture::untouched(
        "port unreachable quoting an ICMP echo",
        Program::Ingress,
        icmp_error(
            *CLIENT_POD.ip(),
            *SVC_VIP.ip(),
            port_unreachable(),
            &quoted_echo,
            64,
            CLIENT_MAC,
            GATEWAY_MAC,
        ),
        Reason::NotTcpUdp,
    ));
    for (name, pkt) in [
        (
            "ICMP echo to SVC_VIP, 19 payload bytes (61-byte frame)",
            echo.build(),
        ),
        (
            "ICMP echo to SVC_VIP, no payload (42-byte frame)",
            echo.clone().with_payload(Vec::new()).build(),
        ),
        (
            "port unreachable quoting 20 + 4 bytes of a UDP datagram",
            icmp_error(
                *BACKEND_A.ip(),
                *CLIENT_POD.ip(),
                port_unreachable(),
                &quote_of(&Pkt::udp(CLIENT_POD, BACKEND_A), Some(4)),
                64,
                CLIENT_MAC,
                GATEWAY_MAC,
            ),
        ),
    ] {
        if let Err(report) = dp.try_check(&Fixture::untouched(
            name,
            Program::Ingress,
            pkt,
            Reason::NotTcpUdp,
        )) {
            failures.push(report);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn ip_options_are_refused_untouched() {
    let mut dp = datapath();
    one_backend(&mut dp);
    let mut pkt = syn();
    pkt.ip_options = vec![0x01, 0x01, 0x01, 0x00]; // NOP NOP NOP EOL: IHL 6
    let bytes = pkt.build();
    assert_eq!(bytes[14], 0x46, "builder wrote IHL 6");
    dp.check(&Fixture::untouched(
        "SYN to SVC_VIP with IP options",
        Program::Ingress,
        bytes,
        Reason::IpOptions,
    ));
    // IHL below 5 cannot hold an IPv4 header: refused as truncated, never parsed further.
    let mut short_ihl = syn().build();
    short_ihl[14] = 0x44;
    dp.check(&Fixture::untouched(
        "IHL 4",
        Program::Ingress,
        short_ihl,
        Reason::Truncated,
    ));
    assert_eq!(dp.ct_count(), 0);
}

/// A later fragment of a datagram whose first fragment was never seen passes untouched as
/// `fragment` (first fragments and their followers are translated: `fixtures_frag_icmp`).
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn later_fragments_without_a_first_are_refused_untouched() {
    let mut dp = datapath();
    one_backend(&mut dp);
    let mut later = syn();
    later.frag_offset = 185;
    dp.check(&Fixture::untouched(
        "later TCP fragment (offset 185)",
        Program::Ingress,
        later.build(),
        Reason::Fragment,
    ));
    let [_, udp_later] = fragments(&Pkt::udp(CLIENT_POD, SVC_VIP), 24);
    for prog in [Program::Ingress, Program::Egress] {
        dp.check(&Fixture::untouched(
            "later UDP fragment",
            prog,
            udp_later.clone(),
            Reason::Fragment,
        ));
    }
    assert_eq!(dp.ct_count(), 0);
}

/// Every cut of a TCP and a UDP frame to the frontend, up to one byte short of the full L4
/// header: each is refused as `Truncated`, untouched, on both hooks — or refused by the kernel
/// before the program runs. The kernel's rules (net/bpf/test_run.c, `bpf_prog_test_run_skb`):
/// - fewer than `ETH_HLEN` (14) bytes: `EINVAL` for every frame (`bpf_test_init`);
/// - ethertype IPv4 with fewer than 20 bytes after the Ethernet header: `EINVAL` since upstream
///   12bec2bd4b76 ("bpf: reject short IPv4/IPv6 inputs in bpf_prog_test_run_skb", 2026,
///   backported to stable; Linux 6.18.44 has it). Older kernels ran the program on such frames.
///
/// Which rule this kernel applies is probed with the empty `svc_floor` program, then asserted
/// exactly: on a kernel with the check, cuts 14..=33 must fail with `EINVAL` (and the datapath's
/// own IPv4-header bound is unreachable through test runs); without it they must be `Truncated`.
/// A 14-byte non-IP frame is always accepted, so the shortest frame the datapath can see is
/// covered by the ARP cut at the end.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn truncated_headers_at_every_length() {
    let mut dp = datapath();
    one_backend(&mut dp);
    let errno = |r: anyhow::Result<RunResult>| -> Option<i32> {
        let err = r.err()?;
        err.chain()
            .find_map(|e| e.downcast_ref::<std::io::Error>())
            .and_then(|e| e.raw_os_error())
    };
    let syn_bytes = syn().build();
    let kernel_refuses_short_ipv4 =
        match errno(dp.run(FLOOR_PROGRAM, &syn_bytes[..MIN_TEST_RUN_LEN], 1)) {
            Some(libc::EINVAL) => true,
            None => false,
            Some(e) => panic!("probing the kernel with svc_floor on 14 bytes: errno {e}"),
        };
    println!("kernel refuses IPv4 frames shorter than 34 bytes: {kernel_refuses_short_ipv4}");
    for (what, full, headers) in [
        ("TCP", syn_bytes.clone(), TCP_HEADERS_LEN),
        (
            "UDP",
            Pkt::udp(CLIENT_POD, SVC_VIP).build(),
            UDP_HEADERS_LEN,
        ),
    ] {
        for len in 0..headers {
            for prog in [Program::Ingress, Program::Egress] {
                let kernel_refuses =
                    len < MIN_TEST_RUN_LEN || (kernel_refuses_short_ipv4 && len < 14 + 20);
                if kernel_refuses {
                    let before = dp.counters();
                    let got = errno(dp.run(prog.name(), &full[..len], 1));
                    assert_eq!(
                        got,
                        Some(libc::EINVAL),
                        "{what} cut to {len} bytes on {}",
                        prog.name()
                    );
                    assert_eq!(
                        before,
                        dp.counters(),
                        "refused run must not reach the program"
                    );
                } else {
                    let name = format!("{what} frame cut to {len} bytes");
                    dp.check(&Fixture::untouched(
                        &name,
                        prog,
                        full[..len].to_vec(),
                        Reason::Truncated,
                    ));
                }
            }
        }
        // The full headers with no payload are translated: the bound is exact.
        let keys = dp.ct_keys();
        dp.ct_delete(&keys).unwrap();
        let mut headers_only = if what == "TCP" {
            syn()
        } else {
            Pkt::udp(CLIENT_POD, SVC_VIP)
        };
        headers_only.payload.clear();
        dp.check(&Fixture::translate(
            &format!("{what} headers, no payload"),
            Program::Ingress,
            &headers_only,
            &headers_only.clone().with_dst(BACKEND_A),
            Reason::DnatNew,
        ));
    }
    for prog in [Program::Ingress, Program::Egress] {
        dp.check(&Fixture::untouched(
            "ARP cut to its Ethernet header",
            prog,
            arp_request()[..14].to_vec(),
            Reason::NotIpv4,
        ));
    }
}
