//! The runner: [`run`] and [`run_truncations`] drive every [`Target`] against one datapath
//! with [`Options`], judge each run with the oracle and collect a [`Report`].

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use svc_common::{PROTO_UDP, REASON_COUNT};

use super::{
    generate::{Gen, Kind},
    oracle::{be16, check, unrelated, Class},
    services::ServiceSet,
    Target, ALL_TARGETS,
};
use crate::fixtures::*;

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub packets: u64,
    pub elapsed: Duration,
    /// (target, verdict name) → packets.
    pub verdicts: BTreeMap<(Target, &'static str), u64>,
    /// (target, class) → packets.
    pub classes: BTreeMap<(Target, Class), u64>,
    /// Target → frames the oracle judged by rule (a): nothing to the datapath, so passed untouched.
    pub unrelated: BTreeMap<Target, u64>,
    /// Target → translated UDP datagrams that carried a checksum (the population in which a
    /// new checksum of 0 can occur, which must be sent as 0xffff).
    pub udp_csum_translated: BTreeMap<Target, u64>,
    /// Generator kinds → packets.
    pub kinds: BTreeMap<Kind, u64>,
    /// (hook, reason name) → packets counted by the datapath (`SVC_STATS`) during the run.
    pub reasons: BTreeMap<(String, &'static str), u64>,
    /// Failure reports (at most `Options::max_failures`; the run stops at the last).
    pub failures: Vec<String>,
}

/// A run stops after this many failures by default.
pub const MAX_FAILURES: usize = 5;

/// What [`run`] does.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub packets: u64,
    /// Programs the frames go to, round robin.
    pub targets: Vec<Target>,
    /// Programs whose failures are reported (the others only feed conntrack).
    pub judged: Vec<Target>,
    /// The run stops after this many failures.
    pub max_failures: usize,
}

impl Options {
    /// Every program, every one judged, stopping after [`MAX_FAILURES`].
    pub fn all(seed: u64, packets: u64) -> Self {
        Self {
            seed,
            packets,
            targets: ALL_TARGETS.to_vec(),
            judged: ALL_TARGETS.to_vec(),
            max_failures: MAX_FAILURES,
        }
    }
}

/// One `BPF_PROG_TEST_RUN` of `t` on `input` (repeat 1), on the device the program sits on in
/// the node: pod programs on the uplink's peer (standing for a pod's veth), uplink programs and
/// XDP on the uplink. What `Datapath::run_on` / `run_xdp` do, without their per-call namespace
/// check (done once per run: it costs two `stat`s a packet).
fn run_once(
    dp: &Datapath,
    uplink: XdpUplink,
    t: Target,
    input: &[u8],
) -> anyhow::Result<RunResult> {
    use aya::programs::{TestRun, TestRunOptions};
    let mut out = vec![0u8; input.len() + 256];
    let res = if t == Target::Xdp {
        let fields: [u32; 6] = [0, input.len() as u32, 0, uplink.ifindex, 0, 0];
        let mut ctx = [0u8; 24];
        for (c, f) in ctx.chunks_exact_mut(4).zip(fields) {
            c.copy_from_slice(&f.to_ne_bytes());
        }
        dp.xdp(XDP_PROGRAM).test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        })
    } else {
        let ifindex = if t.on_uplink() {
            uplink.ifindex
        } else {
            uplink.peer_ifindex
        };
        // `struct __sk_buff` with only `ifindex` (offset 40) set, as `Datapath::run_on` builds it.
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        dp.classifier(t.name()).test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        })
    }
    .map_err(|e| {
        anyhow::anyhow!(
            "BPF_PROG_TEST_RUN of {} on {} bytes: {e}",
            t.name(),
            input.len()
        )
    })?;
    out.truncate(res.data_size_out as usize);
    Ok(RunResult {
        retval: res.return_value,
        output: out,
        duration_ns: res.duration.as_nanos() as u64,
    })
}

/// `bpf_prog_test_run_skb` refuses (`EINVAL`) an IPv4 frame shorter than an IPv4 header (and an
/// IPv6 one shorter than an IPv6 header) before any program runs: its own sanity check of the
/// test input, not a verdict. Such frames cannot reach a tc program this way; XDP gets them.
fn kernel_refuses(t: Target, f: &[u8]) -> bool {
    t != Target::Xdp
        && ((f[12..14] == [0x08, 0x00] && f.len() < 14 + 20)
            || (f[12..14] == [0x86, 0xdd] && f.len() < 14 + 40))
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs `input` through `t` and judges it with [`check`], recording the outcome in `rep`.
/// `i` and `kind` only label a failure. Returns false when the run must stop (too many
/// failures).
#[allow(clippy::too_many_arguments)]
fn judge(
    dp: &Datapath,
    uplink: XdpUplink,
    set: &ServiceSet,
    opts: &Options,
    rep: &mut Report,
    i: u64,
    t: Target,
    input: &[u8],
    kind: Kind,
) -> bool {
    *rep.kinds.entry(kind).or_default() += 1;
    let res = run_once(dp, uplink, t, input);
    rep.packets += 1;
    if res.is_err() && kernel_refuses(t, input) {
        *rep.verdicts
            .entry((t, "refused by the kernel"))
            .or_default() += 1;
        return true;
    }
    let outcome = match &res {
        Ok(r) => check(set, t, input, r.retval, &r.output),
        Err(e) => Err(format!("BPF_PROG_TEST_RUN failed: {e:#}")),
    };
    match outcome {
        Ok(class) => {
            if unrelated(set, input) {
                *rep.unrelated.entry(t).or_default() += 1;
            }
            if class == Class::Translated
                && input[23] == PROTO_UDP
                && be16(input, 20) & 0x1fff == 0
                && input.len() >= 42
                && be16(input, 40) != 0
            {
                *rep.udp_csum_translated.entry(t).or_default() += 1;
            }
            let r = res.as_ref().unwrap();
            *rep.verdicts
                .entry((t, t.verdict_name(r.retval).unwrap()))
                .or_default() += 1;
            *rep.classes.entry((t, class)).or_default() += 1;
            true
        }
        Err(_) if !opts.judged.contains(&t) => true,
        Err(problem) => {
            let (verdict, output) = match &res {
                Ok(r) => (r.retval as i32, r.output.clone()),
                Err(_) => (0, Vec::new()),
            };
            let mut msg = format!(
                "FUZZ FAILURE seed={} packet={i} program={} kind={kind:?}: {problem}\n\
                 verdict: {verdict}\ninput:  {}\noutput: {}\n",
                opts.seed,
                t.name(),
                hexs(input),
                hexs(&output),
            );
            if !output.is_empty() {
                for line in diff_frames(input, &output) {
                    msg.push_str(&line);
                    msg.push('\n');
                }
            }
            rep.failures.push(msg);
            rep.failures.len() < opts.max_failures
        }
    }
}

/// Drives `frames` (called with the running frame number, the generator and the target; it
/// pushes the frames to judge) through `opts.targets` round robin, `opts.packets` calls in all.
fn drive(
    dp: &Datapath,
    uplink: XdpUplink,
    set: &ServiceSet,
    opts: &Options,
    mut frames: impl FnMut(&mut Gen, Target, &mut Vec<(Vec<u8>, Kind)>),
) -> Report {
    let mut gen = Gen::new(opts.seed, set.clone());
    let mut rep = Report {
        seed: opts.seed,
        ..Default::default()
    };
    assert!(
        !in_launch_netns().expect("reading namespace ids"),
        "fuzz::run must run inside an XdpNode: the programs' FIB lookups read its tables"
    );
    let targets = &opts.targets[..];
    let before = dp.counters();
    let start = Instant::now();
    let mut batch = Vec::new();
    let mut n = 0u64;
    'calls: for i in 0..opts.packets {
        // Early and then regularly, so replies match the flows the first frames opened.
        if i % 20_000 == 0 || i == 500 || i == 2_000 || i == 5_000 {
            gen.refresh_ct(dp);
        }
        let t = targets[(i % targets.len() as u64) as usize];
        batch.clear();
        frames(&mut gen, t, &mut batch);
        for (input, kind) in batch.drain(..) {
            let go_on = judge(dp, uplink, set, opts, &mut rep, n, t, &input, kind);
            n += 1;
            if !go_on {
                break 'calls;
            }
        }
    }
    rep.elapsed = start.elapsed();
    let after = dp.counters();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if a > b {
            let hook = svc_common::ALL_HOOKS[i / REASON_COUNT as usize];
            let reason = svc_common::ALL_REASONS[i % REASON_COUNT as usize].1;
            rep.reasons.insert((hook.name().to_string(), reason), a - b);
        }
    }
    rep
}

/// Runs `opts.packets` frames through `opts.targets` round robin, checking each with [`check`].
/// Must run on a thread inside an [`XdpNode`] (see [`node_datapath_test`]); `dp` holds the
/// Service set of [`install_services`].
pub fn run(dp: &Datapath, uplink: XdpUplink, set: &ServiceSet, opts: &Options) -> Report {
    drive(dp, uplink, set, opts, |gen, t, out| out.push(gen.next(t)))
}

/// Truncation at **every** offset: `opts.packets` unmutated frames (every generator kind,
/// round robin over `opts.targets`), each run whole and then cut to every length from 14 (the
/// Ethernet header) up, every prefix judged by [`check`]. [`run`] truncates at one random
/// offset per frame; this sweep leaves no offset of the frames it makes to chance.
pub fn run_truncations(
    dp: &Datapath,
    uplink: XdpUplink,
    set: &ServiceSet,
    opts: &Options,
) -> Report {
    drive(dp, uplink, set, opts, |gen, t, out| {
        let (f, kind) = gen.next_unmutated(t);
        for len in 14..=f.len() {
            out.push((f[..len].to_vec(), kind));
        }
    })
}

impl Report {
    /// Packets per second over the whole run (generation, run and oracle).
    pub fn rate(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The figures as printed by the tests and `cargo xtask fuzz`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "fuzz: seed {} — {} packets in {:.1} s ({:.0} packets/s), {} failures\n",
            self.seed,
            self.packets,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.failures.len()
        );
        s.push_str("generated (before mutation):\n");
        for (k, n) in &self.kinds {
            s.push_str(&format!("  {k:?}: {n}\n"));
        }
        let mut per: BTreeMap<Target, u64> = BTreeMap::new();
        for ((t, _), n) in &self.verdicts {
            *per.entry(*t).or_default() += n;
        }
        for (t, total) in per {
            s.push_str(&format!("{} ({total} packets):\n  verdicts:", t.name()));
            for ((tt, v), n) in &self.verdicts {
                if *tt == t {
                    s.push_str(&format!(" {v} {n}"));
                }
            }
            s.push_str("\n  output:");
            for ((tt, c), n) in &self.classes {
                if *tt == t {
                    s.push_str(&format!(" {c:?} {n}"));
                }
            }
            s.push_str(&format!(
                "\n  judged unrelated (must pass untouched): {}",
                self.unrelated.get(&t).copied().unwrap_or(0)
            ));
            s.push_str(&format!(
                "\n  translated UDP with a checksum: {}",
                self.udp_csum_translated.get(&t).copied().unwrap_or(0)
            ));
            s.push_str("\n  reasons:");
            let hook = t.hook().name();
            for ((h, r), n) in &self.reasons {
                if *h == hook {
                    s.push_str(&format!(" {r} {n}"));
                }
            }
            s.push('\n');
        }
        for f in &self.failures {
            s.push_str(f);
        }
        s
    }
}
