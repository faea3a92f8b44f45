//! Datapath fuzzing through `BPF_PROG_TEST_RUN` (tests/src/fuzz.rs, docs/RELIABILITY.md): every
//! program on generated and mutated frames against a realistic Service set, judged by an oracle
//! that does not trust the program; and, per program, proof that the oracle catches a datapath
//! loaded with a fault (`SVC_FAULT_INJECT`).
//!
//! - `fuzz_every_program`: 1 000 000 frames (CI), `SVC_FUZZ_PACKETS` / `SVC_FUZZ_SEED` override.
//! - `fuzz_long` (`#[ignore]`, run by `cargo xtask fuzz`): `SVC_FUZZ_PACKETS` frames.
//! - `fault_is_caught_*`: the L4-checksum fault makes the oracle fail on that program.
use aya::EbpfLoader;
use svc_common::{FAULT_SKIP_L4_CSUM, GLOBAL_FAULT_INJECT, PROTO_TCP};
use tests::{fixtures::*, fuzz::*};

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
/// installed. Skips (returns) when not root; fails when the object is missing.
fn fuzz_node(fault: u32, body: impl FnOnce(&mut Datapath, XdpUplink, &ServiceSet) + Send) {
    if let Err(e) = read_object() {
        panic!("{e:#}");
    }
    if require_root().is_none() {
        return;
    }
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

fn fuzz_clean(packets: u64) {
    let seed = env_u64("SVC_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    fuzz_node(0, |dp, uplink, set| {
        let rep = run(dp, uplink, set, &Options::all(seed, packets));
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
        for t in ALL_TARGETS {
            let translated = rep
                .classes
                .get(&(t, Class::Translated))
                .copied()
                .unwrap_or(0);
            assert!(translated > 0, "{} translated nothing", t.name());
        }
    });
}

#[test]
fn fuzz_every_program() {
    fuzz_clean(env_u64("SVC_FUZZ_PACKETS").unwrap_or(CI_PACKETS));
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
fn fault_is_caught_in_pod_ingress() {
    fault_is_caught(Target::PodIngress);
}

#[test]
fn fault_is_caught_in_pod_egress() {
    fault_is_caught(Target::PodEgress);
}

#[test]
fn fault_is_caught_in_uplink_ingress() {
    fault_is_caught(Target::UplinkIngress);
}

#[test]
fn fault_is_caught_in_uplink_egress() {
    fault_is_caught(Target::UplinkEgress);
}

/// `svc_xdp` rewrites with its own RFC 1624 code, which `SVC_FAULT_INJECT` does not reach: the
/// faulty object's XDP program is correct (the fuzzer passes it), so for XDP the oracle is shown
/// to catch the fault's effect on XDP's own output instead: a NodePort SYN translated by XDP,
/// with its TCP checksum put back to the input's (exactly what `FAULT_SKIP_L4_CSUM` does in tc),
/// must fail the oracle, while the real output passes.
#[test]
fn fault_is_caught_in_xdp() {
    fuzz_node(FAULT_SKIP_L4_CSUM, |dp, uplink, set| {
        let syn = Pkt::tcp(EXT_CLIENT, NODEPORT, TCP_SYN).build_eth(EXT_CLIENT_MAC, NODE_MAC);
        let res = dp
            .run_xdp(XDP_PROGRAM, &syn, 1, uplink.ifindex)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_ne!(res.output, syn, "the NodePort SYN is translated by XDP");
        assert_eq!(
            check(set, Target::Xdp, &syn, res.retval, &res.output),
            Ok(Class::Translated),
            "the faulty object's XDP program is correct: the fault bit does not reach it"
        );
        let mut broken = res.output.clone();
        broken[50..52].copy_from_slice(&syn[50..52]);
        let err = check(set, Target::Xdp, &syn, res.retval, &broken)
            .expect_err("a stale TCP checksum must fail the oracle");
        println!("caught: {err}");
        assert!(err.contains("TCP checksum"), "{err}");
        let _ = PROTO_TCP;
        // And the fuzzer itself on XDP alone stays clean on this object.
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
        assert!(rep.failures.is_empty(), "{}", rep.summary());
    });
}
