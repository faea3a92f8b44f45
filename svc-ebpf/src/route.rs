//! Sending a translated packet on from tc: for packets whose new source is this node or a
//! frontend (SNAT towards a remote backend, replies to an external client), the stack must not
//! route them as received packets: it drops a local source address arriving on an interface as
//! "martian". They are redirected to the next hop instead.
use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH},
    helpers::{bpf_fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use svc_common::{CtEntry, Reason};

use crate::{lb::fib_params, parse::Flow, Outcome};

/// Redirects the (already rewritten) packet towards `entry.dst_addr`: the FIB names the egress
/// interface, `bpf_redirect_neigh` resolves the next hop's MAC (queueing the packet meanwhile).
#[inline(always)]
pub fn forward(
    ctx: &TcContext,
    flow: &Flow,
    entry: &CtEntry,
    reason: Reason,
) -> Result<Outcome, Outcome> {
    // SAFETY: reading the ifindex field of the program's own context.
    let mut p = fib_params(flow, entry, unsafe { (*ctx.skb.skb).ifindex });
    // SAFETY: `p` is a live, correctly sized bpf_fib_lookup on the stack.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast(),
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(Outcome::drop(Reason::FibFailed));
    }
    // The neighbour subsystem resolves the next hop's address (and queues the packet meanwhile).
    // SAFETY: plain helper call with no parameters block.
    let verdict = unsafe { bpf_redirect_neigh(p.ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    Ok(Outcome { verdict, reason })
}
