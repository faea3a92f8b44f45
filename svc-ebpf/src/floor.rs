//! The benchmark floors: an empty tc classifier and an empty XDP program.
//!
//! Not part of the datapath — the agent never attaches either. svc-bench's `bench` binary times
//! them with `BPF_PROG_TEST_RUN` beside the real programs of the same type, so the per-packet
//! cost it reports is the programs' own work, with the test harness's fixed cost (skb or
//! xdp_buff setup per run, program dispatch per repeat) subtracted. Each must stay the program
//! type of the programs it is the floor for (same `bpf_test_run` path) and must not touch the
//! packet or any map.
use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// Returns `TC_ACT_UNSPEC` like the real programs' pass verdict, doing nothing else. Floor of
/// `svc_pod_ingress`/`svc_pod_egress`.
#[classifier]
pub(crate) fn svc_floor(_ctx: TcContext) -> i32 {
    crate::TC_ACT_UNSPEC
}

/// Benchmark floor only: returns `XDP_PASS` (2), like `svc_xdp`'s pass verdict, doing nothing
/// else. Floor of `svc_xdp`.
#[xdp]
pub(crate) fn svc_floor_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
