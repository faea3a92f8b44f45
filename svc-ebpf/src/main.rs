//! svc-lb kernel programs.
//!
//! # Layout
//! - `parse`: bounds-checked header parsing into a [`parse::Flow`]; refuses (and names the
//!   reason for) every frame it does not translate.
//! - `nat`: the rewrites and their checksum updates, through the tc helpers that know the skb's
//!   checksum state (DESIGN §2, "the checksum trap").
//! - `maps`: the BTF map definitions; layouts come from `svc-common` only.
//! - `lb`: the decisions every packet hook shares (conntrack, frontend, backend, SNAT); they
//!   never touch the packet.
//! - `reject`: the TCP RST / ICMP port unreachable answering a frontend with no endpoint, and
//!   the ICMP fragmentation-needed answering a packet too big for the next hop; rate-limited.
//! - `route`: redirecting a translated packet to its next hop as `ip_forward` would (GSO-aware
//!   MTU check, TTL).
//! - `frag`: later IPv4 fragments of a translated datagram (ports from its first fragment).
//! - `icmp`: ICMP errors about translated flows, outer and quoted headers.
//! - `parse6`, `nat6`, `reject6`, `icmp6`, `programs6`: the same for IPv6 (the decisions are
//!   shared: `v4` / `v6`).
//! - `stats`: per-CPU counters, one per (hook, reason).
//! - `trace`: events for `svc-agent trace`, only for packets a tracer's filter matches.
//!
//! Programs:
//! - [`svc_pod_ingress`] (tc, host side of pod veths): packets *from* a pod. A known flow in
//!   either direction is translated from conntrack; a new one to a frontend is balanced. Hairpin
//!   traffic goes straight back out of the same veth.
//! - [`svc_pod_egress`] (tc): packets *to* a pod: replies get the frontend back as source.
//! - [`svc_xdp`] (XDP, node uplinks): the north-south fast path (see `xdp` for what it leaves
//!   to tc and why); IPv6 frames are handed to `svc_xdp6` (`xdp6`) by a tail call.
//! - [`svc_uplink_ingress`] (tc, node uplinks): the complete north-south path.
//! - [`svc_uplink_egress`] (tc, node uplinks): replies of hostNetwork endpoints on this node
//!   to external clients.
//! - `svc_sock_*` (cgroup socket hooks, `*4` and `*6`): socket-level load balancing for the
//!   node's own processes (including localhost NodePorts without `route_localnet`) and for
//!   pods; the IPv6 hooks translate IPv4-mapped addresses with the IPv4 maps.
//! - `svc_sock_reap_udp` (`iter/udp`): destroys connected UDP sockets (both families) whose
//!   backend left.
//!
//! Every outcome is an [`Outcome`] (verdict + reason): stages return `Result<_, Outcome>`, the
//! program entry counts the reason and returns the verdict, so no verdict is dropped silently.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `asm!` on BPF: the socket iterator's kfunc call (sockreap.rs). The eBPF build is nightly.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
// Built for the host (cargo check/clippy of the workspace) every program is cfg'd out, so its
// dependencies are unused there.
#![cfg_attr(not(target_arch = "bpf"), allow(unused_crate_dependencies))]

#[cfg(target_arch = "bpf")]
mod csum;
/// Benchmark floors only (empty tc and XDP programs the agent never attaches); see `floor.rs`.
#[cfg(target_arch = "bpf")]
mod family;
#[cfg(target_arch = "bpf")]
mod floor;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod icmp6;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod nat6;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod parse6;
#[cfg(target_arch = "bpf")]
mod programs;
#[cfg(target_arch = "bpf")]
mod programs6;
#[cfg(target_arch = "bpf")]
mod reject;
#[cfg(target_arch = "bpf")]
mod reject6;
#[cfg(target_arch = "bpf")]
mod route;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod sockreap;
#[cfg(target_arch = "bpf")]
mod stats;
#[cfg(target_arch = "bpf")]
mod uplink;
#[cfg(target_arch = "bpf")]
mod v4;
#[cfg(target_arch = "bpf")]
mod v6;
/// Benchmark only: the family-generic-keys alternative, measured (see `wide.rs`).
#[cfg(target_arch = "bpf")]
mod wide;
#[cfg(target_arch = "bpf")]
mod xdp;
#[cfg(target_arch = "bpf")]
mod xdp6;

/// Host builds (`cargo check --workspace`) compile an empty binary: this crate is only
/// meaningful for `bpfel-unknown-none`, built by `cargo xtask build-ebpf`.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach this; it exists to satisfy
    // `no_std`.
    unsafe { core::hint::unreachable_unchecked() }
}

/// Fixed to 0 for the agent's normal load. Tests override it (`EbpfLoader::override_global`)
/// to prove that a broken rewrite is detected; see `svc_common::FAULT_SKIP_L4_CSUM`. It is a
/// `.rodata` constant, so the verifier prunes the fault branches when it is 0.
#[cfg(target_arch = "bpf")]
#[no_mangle]
static SVC_FAULT_INJECT: u32 = 0;

/// Conntrack timeouts (`svc_common::GLOBAL_CT_TIMEOUTS`): the agent overrides them from its
/// flags at load time; the defaults are netfilter's and kube-proxy's.
#[cfg(target_arch = "bpf")]
#[no_mangle]
static SVC_CT_TIMEOUTS: svc_common::CtTimeouts = svc_common::CtTimeouts::DEFAULT;

/// Source ports for source NAT and clash remapping (`svc_common::GLOBAL_SNAT_PORTS`): the agent
/// overrides them from `--snat-port-range` or the node's sysctls at load time; the built-in
/// default is 61000–65535 alone, what the fixture tests expect when they load the object as is.
#[cfg(target_arch = "bpf")]
#[no_mangle]
static SVC_SNAT_PORTS: svc_common::SnatPorts = svc_common::SnatPorts::DEFAULT;

/// Kernel debug messages (aya-log), off unless the agent runs with `--bpf-debug-log`
/// (`svc_common::GLOBAL_DEBUG_LOG`). A `.rodata` constant: at 0 the verifier removes every
/// message's code, so a datapath without the flag pays nothing for them. The messages say
/// what the trace events cannot: why a new flow found no backend or no SNAT port, which
/// route lookup failed, which live flow a newcomer collided with.
#[cfg(target_arch = "bpf")]
#[no_mangle]
static SVC_DEBUG_LOG: u32 = 0;

#[cfg(target_arch = "bpf")]
#[inline(always)]
pub fn debug_log() -> bool {
    // SAFETY: reading a plain static; volatile so the compiler keeps the load the loader patches.
    unsafe { core::ptr::read_volatile(&SVC_DEBUG_LOG) != 0 }
}

#[cfg(target_arch = "bpf")]
#[inline(always)]
fn fault(bit: u32) -> bool {
    // SAFETY: reading a plain static; volatile so the compiler keeps the load the loader patches.
    unsafe { core::ptr::read_volatile(&SVC_FAULT_INJECT) & bit != 0 }
}

/// A program's decision: what to return to tc, and why (the counter to bump).
#[cfg(target_arch = "bpf")]
#[must_use]
#[derive(Clone, Copy)]
pub struct Outcome {
    pub verdict: i32,
    pub reason: svc_common::Reason,
}

#[cfg(target_arch = "bpf")]
impl Outcome {
    /// Let the packet continue (tcx "next": later programs and the stack see it).
    pub const fn pass(reason: svc_common::Reason) -> Self {
        Self {
            verdict: TC_ACT_UNSPEC,
            reason,
        }
    }
    pub const fn drop(reason: svc_common::Reason) -> Self {
        Self {
            verdict: TC_ACT_SHOT,
            reason,
        }
    }

    /// The outcome as one integer, for the BPF subprograms that keep the large paths (new
    /// flow, rejects, redirects, ICMP rewrites) in stack frames of their own: the verifier
    /// limits a program's stack to 512 bytes, and inlined into one function the paths'
    /// buffers did not fit. Plain integers because a `Result` of structs crossing a BPF call
    /// is described in BTF in a form Linux 6.18 rejects (see `parse`). Verdicts are tc's
    /// (-1..=7), so the verdict + 1 fits 8 bits.
    #[inline(always)]
    pub fn pack(self) -> u64 {
        (((self.verdict + 1) as u64) & 0xff) << 32 | self.reason as u32 as u64
    }

    /// Inverse of [`Outcome::pack`] (bits 40 and up are free for the caller's tags).
    #[inline(always)]
    pub fn unpack(v: u64) -> Self {
        Self {
            verdict: ((v >> 32) & 0xff) as i32 - 1,
            reason: reason_from(v as u32),
        }
    }
}

/// The reason with index `i`, which came from `Reason as u32` (`Outcome::pack`).
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub fn reason_from(i: u32) -> svc_common::Reason {
    if i >= svc_common::REASON_COUNT {
        return svc_common::Reason::RewriteFailed;
    }
    // SAFETY: `Reason` is `repr(u32)` with the discriminants 0..REASON_COUNT, checked above.
    unsafe { core::mem::transmute::<u32, svc_common::Reason>(i) }
}

/// `TC_ACT_UNSPEC` (= `TCX_NEXT`): not our verdict to give; continue with the next program or
/// the stack. Chosen over `TC_ACT_OK` so svc-lb composes with other tcx programs on the veth.
#[cfg(target_arch = "bpf")]
pub const TC_ACT_UNSPEC: i32 = -1;
/// `TC_ACT_SHOT` (= `TCX_DROP`).
#[cfg(target_arch = "bpf")]
pub const TC_ACT_SHOT: i32 = 2;
