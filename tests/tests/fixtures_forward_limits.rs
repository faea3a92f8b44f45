//! `BPF_PROG_TEST_RUN` fixtures for the path MTU the tc programs check on packets they send on
//! themselves (a DF packet too big for the route is answered with ICMP fragmentation-needed,
//! one without DF dropped; GSO packets by their segment size), and the limits on what the
//! datapath generates: no ICMP error answered with another, rejects rate-limited per CPU.
//!
//! Runs happen on a device of an [`XdpNode`] as in `fixtures_forward` (whose module docs say
//! how); run as root: `cargo test -p tests --test fixtures_forward_limits`.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::net::SocketAddrV4;

use etherparse::{IpNumber, Ipv4Header};
use svc_common::{Reason, BACKEND_F_LOCAL, PROTO_TCP, PROTO_UDP};
use svc_testkit::fixtures::*;

mod forward_common;
use forward_common::*;

// ---------------------------------------------------------------------------------------------
// Path MTU
// ---------------------------------------------------------------------------------------------

/// Towards a remote backend behind a path of [`PATH_MTU`]: a DF datagram or segment larger
/// than that is answered with ICMP fragmentation-needed (MTU 1000, quoting the packet as the
/// client sent it) sent back to the client; without DF it is dropped (a BPF program cannot
/// fragment); one that fits is redirected.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn too_big_for_the_path_to_a_backend_gets_frag_needed_or_is_dropped() {
    node_test(|dp, uplink| {
        nodeport(dp, PROTO_UDP, BACKEND_NARROW, 0);
        let big =
            |c: SocketAddrV4, len: usize| Pkt::udp(c, NODEPORT).with_payload(vec![0x42; len - 28]);
        let p = big(ext(40000), 1100);
        let res = dp.check_on(
            uplink.ifindex,
            &Fixture {
                name: "1100-byte UDP with DF → ICMP fragmentation needed, MTU 1000".into(),
                program: Program::UplinkIngress,
                input: wire(&p, EXT_CLIENT_MAC),
                verdict: TC_ACT_REDIRECT,
                output: frag_needed_answer(&p, 8, EXT_CLIENT_MAC),
                reason: Reason::FragNeeded,
            },
        );
        assert_frag_needed("UDP", &res.output);

        let p = big(ext(40001), 1100).with_df(false);
        dp.check_on(
            uplink.ifindex,
            &Fixture {
                name: "1100-byte UDP without DF is dropped".into(),
                program: Program::UplinkIngress,
                input: wire(&p, EXT_CLIENT_MAC),
                verdict: TC_ACT_SHOT,
                output: wire(&p, EXT_CLIENT_MAC),
                reason: Reason::TooBig,
            },
        );

        let c = ext(40002);
        let p = big(c, 1000);
        dp.check_after(
            Some(uplink.ifindex),
            &Fixture {
                name: "1000-byte UDP fits".into(),
                program: Program::UplinkIngress,
                input: wire(&p, EXT_CLIENT_MAC),
                verdict: TC_ACT_REDIRECT,
                output: Vec::new(),
                reason: Reason::DnatNew,
            },
            |dp| {
                let port = snat_port(dp, c, PROTO_UDP);
                wire(
                    &p.clone()
                        .with_src(SocketAddrV4::new(NODE_IP, port))
                        .with_dst(BACKEND_NARROW)
                        .with_ttl(63),
                    EXT_CLIENT_MAC,
                )
            },
        );

        // TCP: the handshake fits; a full-size segment with DF does not. The answer quotes the
        // whole 20-byte TCP header.
        nodeport(dp, PROTO_TCP, BACKEND_NARROW, 0);
        let c = ext(40003);
        let syn = Pkt::tcp(c, NODEPORT, TCP_SYN);
        dp.check_after(
            Some(uplink.ifindex),
            &Fixture {
                name: "SYN fits".into(),
                program: Program::UplinkIngress,
                input: wire(&syn, EXT_CLIENT_MAC),
                verdict: TC_ACT_REDIRECT,
                output: Vec::new(),
                reason: Reason::DnatNew,
            },
            |dp| {
                let port = snat_port(dp, c, PROTO_TCP);
                wire(
                    &syn.clone()
                        .with_src(SocketAddrV4::new(NODE_IP, port))
                        .with_dst(BACKEND_NARROW)
                        .with_ttl(63),
                    EXT_CLIENT_MAC,
                )
            },
        );
        let seg = Pkt::tcp(c, NODEPORT, TCP_ACK | TCP_PSH).with_payload(vec![0x43; 1400 - 40]);
        let res = dp.check_on(
            uplink.ifindex,
            &Fixture {
                name: "1400-byte TCP segment with DF → ICMP fragmentation needed".into(),
                program: Program::UplinkIngress,
                input: wire(&seg, EXT_CLIENT_MAC),
                verdict: TC_ACT_REDIRECT,
                output: frag_needed_answer(&seg, 20, EXT_CLIENT_MAC),
                reason: Reason::FragNeeded,
            },
        );
        assert_frag_needed("TCP", &res.output);
    });
}

/// A local backend's reply to a client behind a path of [`PATH_MTU`]: too big with DF → the
/// backend gets ICMP fragmentation-needed back out of its veth, quoting its reply as it sent
/// it; without DF it is dropped.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn reply_too_big_for_the_path_to_the_client_gets_frag_needed() {
    node_test(|dp, uplink| {
        nodeport(dp, PROTO_TCP, BACKEND_A, BACKEND_F_LOCAL);
        for (port, df) in [(40000u16, true), (40001, false)] {
            let c = far(port);
            let syn = Pkt::tcp(c, NODEPORT, TCP_SYN);
            dp.check_on(
                uplink.ifindex,
                &Fixture {
                    name: "SYN from FAR_CLIENT → local BACKEND_A".into(),
                    program: Program::UplinkIngress,
                    input: wire(&syn, ROUTER_MAC),
                    verdict: TC_ACT_UNSPEC,
                    output: wire(&syn.clone().with_dst(BACKEND_A), ROUTER_MAC),
                    reason: Reason::DnatNew,
                },
            );
            // The handshake's SYN-ACK first: a data segment on a flow whose SYN had no answer
            // is a tuple collision (`Reason::CtCollision`), not a reply.
            let synack = Pkt::tcp(BACKEND_A, c, TCP_SYN | TCP_ACK);
            dp.run_on(
                Program::Ingress.name(),
                &synack.build(),
                uplink.peer_ifindex,
            )
            .unwrap();
            let reply = Pkt::tcp(BACKEND_A, c, TCP_ACK | TCP_PSH)
                .with_payload(vec![0x44; 1400 - 40])
                .with_df(df);
            if df {
                let res = dp.check_on(
                    uplink.peer_ifindex,
                    &Fixture {
                        name: "1400-byte reply with DF → fragmentation needed to BACKEND_A".into(),
                        program: Program::Ingress,
                        input: reply.build(),
                        verdict: TC_ACT_REDIRECT,
                        output: with_macs(
                            frag_needed_answer(&reply, 20, CLIENT_MAC),
                            GATEWAY_MAC,
                            CLIENT_MAC,
                        ),
                        reason: Reason::FragNeeded,
                    },
                );
                assert_frag_needed("reply", &res.output);
            } else {
                dp.check_on(
                    uplink.peer_ifindex,
                    &Fixture::dropped(
                        "1400-byte reply without DF is dropped",
                        Program::Ingress,
                        reply.build(),
                        Reason::TooBig,
                    ),
                );
            }
        }
    });
}

/// GSO-aware MTU check: a TCP super-packet (TSO, or GRO-merged) whose IP length exceeds the
/// path MTU is sent when its segments (IP + TCP header + `gso_size`) fit, and answered with
/// fragmentation-needed when they do not.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn gso_packets_are_checked_by_their_segment_size() {
    node_test(|dp, uplink| {
        nodeport(dp, PROTO_TCP, BACKEND_NARROW, 0);
        let c = ext(40010);
        let syn = Pkt::tcp(c, NODEPORT, TCP_SYN);
        dp.check_after(
            Some(uplink.ifindex),
            &Fixture {
                name: "SYN".into(),
                program: Program::UplinkIngress,
                input: wire(&syn, EXT_CLIENT_MAC),
                verdict: TC_ACT_REDIRECT,
                output: Vec::new(),
                reason: Reason::DnatNew,
            },
            |dp| {
                let port = snat_port(dp, c, PROTO_TCP);
                wire(
                    &syn.clone()
                        .with_src(SocketAddrV4::new(NODE_IP, port))
                        .with_dst(BACKEND_NARROW)
                        .with_ttl(63),
                    EXT_CLIENT_MAC,
                )
            },
        );
        let port = snat_port(dp, c, PROTO_TCP);
        let seg = Pkt::tcp(c, NODEPORT, TCP_ACK | TCP_PSH).with_payload(vec![0x45; 1800 - 40]);
        dp.check_on_gso(
            uplink.ifindex,
            900,
            &Fixture {
                name: "1800-byte GSO packet of 900-byte segments (960 ≤ 1000) is sent".into(),
                program: Program::UplinkIngress,
                input: wire(&seg, EXT_CLIENT_MAC),
                verdict: TC_ACT_REDIRECT,
                output: Vec::new(),
                reason: Reason::DnatEstablished,
            },
            |_| {
                wire(
                    &seg.clone()
                        .with_src(SocketAddrV4::new(NODE_IP, port))
                        .with_dst(BACKEND_NARROW)
                        .with_ttl(63),
                    EXT_CLIENT_MAC,
                )
            },
        );
        let res = dp.check_on_gso(
            uplink.ifindex,
            1200,
            &Fixture {
                name: "1800-byte GSO packet of 1200-byte segments (1240 > 1000)".into(),
                program: Program::UplinkIngress,
                input: wire(&seg, EXT_CLIENT_MAC),
                verdict: TC_ACT_REDIRECT,
                output: Vec::new(),
                reason: Reason::FragNeeded,
            },
            |_| frag_needed_answer(&seg, 20, EXT_CLIENT_MAC),
        );
        assert_frag_needed("GSO", &res.output);
    });
}

// ---------------------------------------------------------------------------------------------
// Limits on what the datapath generates
// ---------------------------------------------------------------------------------------------

/// An ICMP error is never answered with another (RFC 1122 §3.2.2): one too big for the path,
/// with DF, is dropped as too big instead of getting a fragmentation-needed.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn icmp_error_too_big_for_the_path_is_dropped_not_answered() {
    node_test(|dp, uplink| {
        nodeport(dp, PROTO_UDP, BACKEND_NARROW, 0);
        let c = ext(40020);
        let q = Pkt::udp(c, NODEPORT);
        dp.check_after(
            Some(uplink.ifindex),
            &Fixture {
                name: "datagram → BACKEND_NARROW".into(),
                program: Program::UplinkIngress,
                input: wire(&q, EXT_CLIENT_MAC),
                verdict: TC_ACT_REDIRECT,
                output: Vec::new(),
                reason: Reason::DnatNew,
            },
            |dp| {
                let port = snat_port(dp, c, PROTO_UDP);
                wire(
                    &q.clone()
                        .with_src(SocketAddrV4::new(NODE_IP, port))
                        .with_dst(BACKEND_NARROW)
                        .with_ttl(63),
                    EXT_CLIENT_MAC,
                )
            },
        );
        // The client's port unreachable about a big reply, quoting 1200 bytes of it, with DF.
        let reply = Pkt::udp(NODEPORT, c).with_payload(vec![0x46; 1200 - 28]);
        let mut ip =
            Ipv4Header::new(0, 64, IpNumber(1), c.ip().octets(), NODE_IP.octets()).unwrap();
        ip.dont_fragment = true;
        let err = icmp_frame(
            ip,
            port_unreachable(),
            &quote_of(&reply, None),
            EXT_CLIENT_MAC,
            NODE_MAC,
        );
        assert!(err.len() > 14 + usize::from(PATH_MTU));
        dp.check_on(
            uplink.ifindex,
            &Fixture::dropped(
                "1256-byte port unreachable with DF towards BACKEND_NARROW",
                Program::UplinkIngress,
                err,
                Reason::TooBig,
            ),
        );
    });
}

/// Rejects (and other generated packets) are rate-limited per CPU: 1000 in a one-second
/// window, then dropped as `rate_limited`. The thread is pinned to one CPU so every run
/// draws on the same budget.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn rejects_are_rate_limited_per_cpu() {
    if let Err(e) = read_object() {
        panic!("{e:#}");
    }
    require_root();
    let mut dp = Datapath::load().unwrap_or_else(|e| panic!("{e:#}"));
    dp.put_frontend(SVC_VIP, PROTO_UDP, SVC_ID, 0).unwrap();
    // On a thread of its own, so the pinning ends with it.
    let joined = std::thread::scope(|s| s.spawn(|| rate_limit_body(&dp)).join());
    joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

fn rate_limit_body(dp: &Datapath) {
    // SAFETY: plain syscalls on this thread with a valid, zero-initialised cpu_set_t.
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
    let dgram = Pkt::udp(CLIENT_POD, SVC_VIP).build();
    let budget = svc_common::GENERATED_PER_CPU_PER_S;
    let start = std::time::Instant::now();
    let mut answered = 0u64;
    for _ in 0..budget {
        let res = dp.run(Program::Ingress.name(), &dgram, 1).unwrap();
        if res.retval == TC_ACT_REDIRECT {
            answered += 1;
        }
    }
    let res = dp.run(Program::Ingress.name(), &dgram, 1).unwrap();
    let elapsed = start.elapsed();
    assert!(
        elapsed < std::time::Duration::from_millis(900),
        "{budget} runs took {elapsed:?}: the window may have rolled over"
    );
    assert_eq!(answered, budget, "every answer within the budget is sent");
    assert_eq!(
        (res.retval, res.output),
        (TC_ACT_SHOT, dgram.clone()),
        "answer number {} in the window is dropped, untouched",
        budget + 1
    );
    assert_eq!(
        dp.counter(svc_common::Hook::PodIngress, Reason::RateLimited),
        1
    );
    assert_eq!(
        dp.counter(svc_common::Hook::PodIngress, Reason::NoBackend),
        budget
    );
}
