//! Datapath fuzzing through `BPF_PROG_TEST_RUN` (svc-testkit/src/fuzz/, docs/RELIABILITY.md): every
//! program on generated and mutated frames against a realistic Service set, judged by an oracle
//! that does not trust the program; and, per program, proof that the oracle catches a datapath
//! loaded with a fault (`SVC_FAULT_INJECT`).
//!
//! - `fuzz_every_program`: 1 000 000 frames (CI), `SVC_FUZZ_PACKETS` / `SVC_FUZZ_SEED` override.
//! - `truncation_at_every_offset`: 3 000 frames, each cut to every length.
//! - `fuzz_long` (`#[ignore]`, run by `cargo xtask fuzz`): `SVC_FUZZ_PACKETS` frames.
//! - `fault_is_caught_*`: the L4-checksum fault makes the oracle fail on that program.
//! - `defect_*` (`#[ignore]`d until fixed): minimal reproducers of the defects the fuzzer found
//!   (docs/RELIABILITY.md, "Defects found") that fail today; a fixed one loses its `defect_`
//!   prefix and `#[ignore]` and stays as a regression test.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use aya::EbpfLoader;
use std::net::{Ipv4Addr, SocketAddrV4};

use svc_common::{FAULT_SKIP_L4_CSUM, GLOBAL_FAULT_INJECT, PROTO_TCP, PROTO_UDP};
use svc_testkit::{fixtures::*, fuzz::*};

/// Frames the CI run sends (over all five programs).
const CI_PACKETS: u64 = 1_000_000;
/// Default seed (any value reproduces its own run).
const DEFAULT_SEED: u64 = 0x5eed_f00d;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: not a number: {e}"))
    })
}

/// Runs `body` in a fresh node namespace with every program loaded from a datapath loaded with
/// `fault` as `SVC_FAULT_INJECT`, `SVC_CONFIG` naming [`NODE_IP`], and the fuzzer's Service set
/// installed. Panics when not root or when the object is missing.
fn fuzz_node(fault: u32, body: impl FnOnce(&mut Datapath, XdpUplink, &ServiceSet) + Send) {
    if let Err(e) = read_object() {
        panic!("{e:#}");
    }
    require_root();
    let node = XdpNode::create().unwrap_or_else(|e| panic!("{e:#}"));
    node.run(|uplink| {
        let mut dp = Datapath::load_xdp_with(EbpfLoader::new().override_global(
            GLOBAL_FAULT_INJECT,
            &fault,
            true,
        ))
        .unwrap_or_else(|e| panic!("{e:#}"));
        dp.load_programs(&[Program::UplinkIngress, Program::UplinkEgress])
            .unwrap_or_else(|e| panic!("{e:#}"));
        dp.set_config(NODE_IP).unwrap();
        let set = install_services(&mut dp);
        body(&mut dp, uplink, &set);
    });
}

/// Every program translated some frames, so the run exercised translations, not only
/// refusals.
fn every_program_translated(rep: &Report) {
    for t in ALL_TARGETS {
        let translated = rep
            .classes
            .get(&(t, Class::Translated))
            .copied()
            .unwrap_or(0);
        assert!(translated > 0, "{} translated nothing", t.name());
    }
}

fn fuzz_clean(packets: u64) {
    let seed = env_u64("SVC_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    fuzz_node(0, |dp, uplink, set| {
        let opts = Options::all(seed, packets);
        let rep = run(dp, uplink, set, &opts);
        println!("{}", rep.summary());
        assert!(
            rep.failures.is_empty(),
            "the oracle failed {} time(s); first:\n{}",
            rep.failures.len(),
            rep.failures[0]
        );
        assert_eq!(rep.packets, packets);
        // Every program saw every outcome class it can produce at least once, so the run
        // exercised translations, not only refusals.
        every_program_translated(&rep);
    });
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn fuzz_every_program() {
    fuzz_clean(env_u64("SVC_FUZZ_PACKETS").unwrap_or(CI_PACKETS));
}

/// Frames the truncation sweep makes (each then cut to every length: ~80 runs per frame).
const SWEEP_FRAMES: u64 = 3_000;

/// Truncation at every offset (`fuzz::run_truncations`): unmutated frames of every generator
/// kind, on every program, each judged whole and cut to every length from the Ethernet header
/// up. `SVC_FUZZ_SWEEP_FRAMES` overrides the frame count.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn truncation_at_every_offset() {
    let seed = env_u64("SVC_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let frames = env_u64("SVC_FUZZ_SWEEP_FRAMES").unwrap_or(SWEEP_FRAMES);
    fuzz_node(0, |dp, uplink, set| {
        let rep = run_truncations(dp, uplink, set, &Options::all(seed, frames));
        println!("{}", rep.summary());
        assert!(
            rep.failures.is_empty(),
            "the oracle failed {} time(s); first:\n{}",
            rep.failures.len(),
            rep.failures[0]
        );
        // Every prefix of every frame ran: more runs than frames by the frames' mean length.
        assert!(rep.packets > frames * 40, "{} runs", rep.packets);
        for kind in [
            Kind::ToFrontend,
            Kind::CtTuple,
            Kind::IcmpError,
            Kind::Fragment,
        ] {
            assert!(
                rep.kinds.get(&kind).copied().unwrap_or(0) > 0,
                "no {kind:?} frame was swept"
            );
        }
        every_program_translated(&rep);
    });
}

#[test]
#[ignore = "long run: cargo xtask fuzz --packets N"]
fn fuzz_long() {
    fuzz_clean(env_u64("SVC_FUZZ_PACKETS").unwrap_or(100_000_000));
}

/// Fuzzes a datapath loaded with `FAULT_SKIP_L4_CSUM` (addresses and ports rewritten, the L4
/// checksum not updated) and requires the oracle to fail on `target` with a checksum report.
/// The pod and uplink ingress programs run too, to open the flows the egress programs reply to;
/// only `target`'s failures count.
fn fault_is_caught(target: Target) {
    fuzz_node(FAULT_SKIP_L4_CSUM, |dp, uplink, set| {
        let mut targets = vec![Target::PodIngress, Target::UplinkIngress];
        if !targets.contains(&target) {
            targets.push(target);
        }
        let opts = Options {
            seed: DEFAULT_SEED,
            packets: 300_000,
            targets,
            judged: vec![target],
            max_failures: 1,
        };
        let rep = run(dp, uplink, set, &opts);
        let first = rep.failures.first().unwrap_or_else(|| {
            panic!(
                "the oracle did not catch the L4 checksum fault in {}:\n{}",
                target.name(),
                rep.summary()
            )
        });
        println!("caught after {} packets:\n{first}", rep.packets);
        assert!(first.contains(target.name()), "{first}");
        assert!(first.contains("checksum"), "{first}");
    });
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn fault_is_caught_in_pod_ingress() {
    fault_is_caught(Target::PodIngress);
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn fault_is_caught_in_pod_egress() {
    fault_is_caught(Target::PodEgress);
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn fault_is_caught_in_uplink_ingress() {
    fault_is_caught(Target::UplinkIngress);
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn fault_is_caught_in_uplink_egress() {
    fault_is_caught(Target::UplinkEgress);
}

/// `FAULT_SKIP_L4_CSUM` reaches `svc_xdp` too (its own incremental L4 update is skipped): a
/// NodePort SYN translated by the faulty XDP program fails the oracle, and so does the fuzzer
/// on XDP alone.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn fault_is_caught_in_xdp() {
    fuzz_node(FAULT_SKIP_L4_CSUM, |dp, uplink, set| {
        let syn = Pkt::tcp(EXT_CLIENT, NODEPORT, TCP_SYN).build_eth(EXT_CLIENT_MAC, NODE_MAC);
        let res = dp
            .run_xdp(XDP_PROGRAM, &syn, 1, uplink.ifindex)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_ne!(res.output, syn, "the NodePort SYN is translated by XDP");
        let err = check(set, Target::Xdp, &syn, res.retval, &res.output)
            .expect_err("the faulty XDP program's stale TCP checksum must fail the oracle");
        println!("caught: {err}");
        assert!(err.contains("TCP checksum"), "{err}");
        let rep = run(
            dp,
            uplink,
            set,
            &Options {
                seed: DEFAULT_SEED,
                packets: 20_000,
                targets: vec![Target::Xdp],
                judged: vec![Target::Xdp],
                max_failures: 1,
            },
        );
        assert!(
            !rep.failures.is_empty(),
            "the fuzzer must catch the faulty XDP program: {}",
            rep.summary()
        );
    });
}

/// A Service of its own for the reproducers: one backend, so the translation is known.
const REPRO_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 77);

/// Defect 1 of docs/RELIABILITY.md, fixed in 6ef4a37, kept as a regression test: a UDP datagram
/// whose checksum after DNAT computes to 0 must leave `svc_pod_ingress` with 0xffff, not 0x0000
/// ("no checksum", RFC 768). The tc rewrite passed `BPF_F_MARK_MANGLED_0` to
/// `bpf_l4_csum_replace` only for datagrams without a checksum. (XDP wrote 0xffff already.)
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn udp_checksum_computing_to_zero_is_sent_as_0xffff() {
    fuzz_node(0, |dp, uplink, _| {
        let vip = SocketAddrV4::new(REPRO_VIP, 53);
        let backend = SocketAddrV4::new(*BACKEND_A.ip(), 5353);
        dp.add_service(vip, PROTO_UDP, 77, &[(77, backend)])
            .unwrap();
        // A payload word that makes the translated datagram's checksum compute to 0.
        let payload = (0..=u16::MAX)
            .map(|w| w.to_be_bytes().to_vec())
            .find(|p| {
                let mut out = Pkt::udp(CLIENT_POD, backend)
                    .with_payload(p.clone())
                    .build();
                out[40..42].copy_from_slice(&[0, 0]);
                let l4 = &out[34..];
                let mut pseudo = out[26..34].to_vec();
                pseudo.extend_from_slice(&[0, PROTO_UDP]);
                pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                pseudo.extend_from_slice(l4);
                rfc1071(&pseudo) == 0
            })
            .expect("some payload word makes the checksum 0");
        let input = Pkt::udp(CLIENT_POD, vip).with_payload(payload).build();
        assert_ne!(input[40..42], [0, 0], "the client sent a checksum");
        let res = dp
            .run_on(Program::Ingress.name(), &input, uplink.peer_ifindex)
            .unwrap_or_else(|e| panic!("{e:#}"));
        println!("input:  {input:02x?}\noutput: {:02x?}", res.output);
        assert_eq!(res.output[30..34], backend.ip().octets(), "translated");
        assert_eq!(
            res.output[40..42],
            [0xff, 0xff],
            "a computed UDP checksum of 0 must be sent as 0xffff, not as 0 (no checksum)"
        );
    });
}

/// Defect 2 of docs/RELIABILITY.md (found by the fuzzer, fixed): an ICMP error quoting a whole
/// TCP segment of a translated flow had its quoted addresses and ports rewritten but not the
/// quoted TCP checksum, which then no longer verified. Linux's `nf_nat_icmp_reply_translation`
/// updates it (`tcp_manip_pkt` does when the quote holds the whole TCP header); so does the
/// datapath now.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn icmp_error_quoting_a_whole_tcp_segment_keeps_it_valid() {
    fuzz_node(0, |dp, uplink, _| {
        let vip = SocketAddrV4::new(REPRO_VIP, 80);
        dp.add_service(vip, PROTO_TCP, 78, &[(78, BACKEND_B)])
            .unwrap();
        let syn = Pkt::tcp(CLIENT_POD, vip, TCP_SYN);
        let res = dp
            .run_on(Program::Ingress.name(), &syn.build(), uplink.peer_ifindex)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            res.output[30..34],
            BACKEND_B.ip().octets(),
            "SYN translated"
        );
        // BACKEND_B answers the translated SYN with port unreachable, quoting all of it.
        let sent = syn.clone().with_dst(BACKEND_B);
        let error = icmp_error(
            *BACKEND_B.ip(),
            *CLIENT_POD.ip(),
            port_unreachable(),
            &quote_of(&sent, None),
            62,
            GATEWAY_MAC,
            CLIENT_MAC,
        );
        verify_icmp_error_checksums(&error).expect("the error as built is valid");
        let res = dp
            .run_on(Program::Egress.name(), &error, uplink.peer_ifindex)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(res.output[26..30], REPRO_VIP.octets(), "translated");
        verify_icmp_error_checksums(&res.output).unwrap_or_else(|e| panic!("{e}"));
    });
}
