//! The benchmark floor: an empty tc classifier.
//!
//! Not part of the datapath — the agent never attaches it. `tests/src/bin/bench.rs` times it
//! with `BPF_PROG_TEST_RUN` beside `svc_pod_ingress`/`svc_pod_egress`, so the per-packet cost
//! it reports is the programs' own work, with the test harness's fixed cost (skb setup per
//! run, program dispatch per repeat) subtracted. It must stay a tc program (same program type,
//! same `bpf_test_run` path) and must not touch the packet or any map.
use aya_ebpf::{macros::classifier, programs::TcContext};

/// Returns `TC_ACT_UNSPEC` like the real programs' pass verdict, doing nothing else.
#[classifier]
pub fn svc_floor(_ctx: TcContext) -> i32 {
    crate::TC_ACT_UNSPEC
}
