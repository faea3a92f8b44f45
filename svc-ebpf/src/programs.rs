//! The pod-veth programs (tc, host side of each pod veth).
use aya_ebpf::{helpers::bpf_redirect, macros::classifier, programs::TcContext};
use svc_common::{CtEntry, Hook, Reason, CT_DIR_REPLY, CT_F_EXTERNAL, CT_F_NODEPORT};

use crate::v4::trace::trace;

use crate::{
    maps::SVC_PROGS6,
    nat::{apply, decrement_ttl, swap_macs, ttl_expires},
    parse::{parse_tc, Flow},
    parse6::is_ipv6,
    programs6::{PROG6_POD_EGRESS, PROG6_POD_INGRESS},
    reject::reject,
    route::forward,
    stats::count,
    v4::lb::{blank_entry, decide, Origin, Step},
    Outcome,
};

/// tc ingress on the host side of a pod veth: traffic leaving a pod.
#[classifier]
pub(crate) fn svc_pod_ingress(ctx: TcContext) -> i32 {
    to_v6(&ctx, PROG6_POD_INGRESS);
    run_tc(&ctx, Hook::PodIngress, pod_ingress)
}

/// tc egress on the host side of a pod veth: traffic entering a pod.
#[classifier]
pub(crate) fn svc_pod_egress(ctx: TcContext) -> i32 {
    to_v6(&ctx, PROG6_POD_EGRESS);
    run_tc(&ctx, Hook::PodEgress, pod_egress)
}

/// Translates the packet and sends it on. A packet whose new destination is the pod that sent
/// it (hairpin, both directions) goes straight back out of the veth it came in on, addressed
/// to the pod's MAC, its TTL decremented as the stack would. A reply to a client outside the
/// node, or to any client of a NodePort, has a frontend (often this node's own address) as
/// source and is redirected to the next hop (see `route`). Everything else continues to the stack, which routes it.
#[inline(always)]
fn deliver(
    ctx: &TcContext,
    flow: &Flow,
    entry: &CtEntry,
    reason: Reason,
) -> Result<Outcome, Outcome> {
    if entry.dst_addr == flow.saddr {
        if ttl_expires(flow) {
            return Ok(Outcome::pass(Reason::TtlExceeded));
        }
        apply(ctx, flow, entry)?;
        decrement_ttl(ctx, flow)?;
        swap_macs(ctx)?;
        // SAFETY: reading the ifindex field of the program's own context.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        // SAFETY: plain helper call; TC_ACT_REDIRECT on success.
        let verdict = unsafe { bpf_redirect(ifindex, 0) } as i32;
        let reason = if flow.icmp {
            Reason::IcmpTranslated
        } else {
            Reason::Hairpin
        };
        return Ok(Outcome { verdict, reason });
    }
    if entry.dir == CT_DIR_REPLY && entry.flags & (CT_F_EXTERNAL | CT_F_NODEPORT) != 0 {
        // The new source is a frontend the stack may own (a NodePort's node address): routed
        // by the stack from this veth it would be dropped as martian.
        return forward(ctx, flow, entry, reason);
    }
    apply(ctx, flow, entry)?;
    Ok(Outcome::pass(reason))
}

/// Every tc program's entry: runs `body` with a flow and an entry that live here (so that
/// they can be traced after the decision), counts the outcome's reason, [`trace`]s it with
/// `ctx`'s length and interface, and returns its verdict.
#[inline(always)]
pub(crate) fn run_tc(
    ctx: &TcContext,
    hook: Hook,
    body: impl FnOnce(&TcContext, &mut Flow, &mut CtEntry) -> Result<Outcome, Outcome>,
) -> i32 {
    let (mut flow, mut entry) = (Flow::EMPTY, blank_entry());
    let out = match body(ctx, &mut flow, &mut entry) {
        Ok(out) | Err(out) => out,
    };
    count(hook, out.reason);
    // SAFETY: reading the ifindex field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    trace(
        hook,
        &flow,
        &entry,
        out.verdict,
        out.reason as u32,
        ctx.len(),
        ifindex,
    );
    out.verdict
}

/// Hands an IPv6 frame to the IPv6 program of the same hook, `programs6::PROG6_*` in
/// `SVC_PROGS6`, by a tail call that does not return. Checked first thing, before the IPv4
/// program sets anything up: an IPv4 frame pays one load and compare of its Ethernet type
/// (measured within noise), an IPv6 frame reaches its program without the IPv4 program's
/// prologue (it cost 47 ns when the check sat on the IPv4 parser's not-IPv4 branch). When
/// the slot is empty (an agent that has not filled it yet) the frame goes on through the
/// IPv4 program, which passes it counted `not_ipv4`.
#[inline(always)]
pub(crate) fn to_v6(ctx: &TcContext, prog: u32) {
    if is_ipv6(ctx.data(), ctx.data_end()) {
        // SAFETY: a tail call with the program's own context; it returns only on failure.
        unsafe { SVC_PROGS6.tail_call(ctx, prog) };
    }
}

#[inline(always)]
fn pod_ingress(ctx: &TcContext, flow: &mut Flow, entry: &mut CtEntry) -> Result<Outcome, Outcome> {
    parse_tc(ctx, flow)?;
    // Conntrack first: a known flow keeps its backend whatever has happened to its Service
    // since, including deletion, as netfilter conntrack does for kube-proxy. One lookup finds
    // either direction: forward (this pod is a client) or reply (this pod is a backend
    // answering an external client or itself).
    match decide(flow, Origin::Pod, true, entry)? {
        Step::Translate(reason) => deliver(ctx, flow, entry, reason),
        Step::Reject => reject(ctx, flow),
    }
}

#[inline(always)]
fn pod_egress(ctx: &TcContext, flow: &mut Flow, entry: &mut CtEntry) -> Result<Outcome, Outcome> {
    parse_tc(ctx, flow)?;
    match decide(flow, Origin::Pod, false, entry)? {
        Step::Translate(reason) if entry.dir == CT_DIR_REPLY => {
            apply(ctx, flow, entry)?;
            Ok(Outcome::pass(reason))
        }
        _ => Ok(Outcome::pass(Reason::NotService)),
    }
}
