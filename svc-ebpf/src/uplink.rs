//! tc ingress on node uplinks: the complete north-south path.
//!
//! XDP (see `xdp`) handles what it can prove safe and passes the rest here untouched: frames
//! whose L4 checksum may be partial (only skb helpers update those correctly), flows whose next
//! hop has no neighbour entry yet (`bpf_redirect_neigh` resolves it), and flows to answer with
//! a reject (built with skb helpers). This program therefore implements every case itself; on
//! a node without XDP it is the whole north-south datapath.
use aya_ebpf::{macros::classifier, programs::TcContext};
use svc_common::{CtEntry, Hook, Reason, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_EXTERNAL, CT_F_SNAT};

use crate::{
    nat::apply,
    parse::{parse_tc, Flow},
    programs::{run_tc, to_v6},
    programs6::{PROG6_UPLINK_EGRESS, PROG6_UPLINK_INGRESS},
    reject::reject,
    route::forward,
    v4::lb::{decide, Origin, Step},
    Outcome,
};

/// tc ingress on a node uplink (`--uplink`).
#[classifier]
pub(crate) fn svc_uplink_ingress(ctx: TcContext) -> i32 {
    to_v6(&ctx, PROG6_UPLINK_INGRESS);
    run_tc(&ctx, Hook::UplinkIngress, uplink_ingress)
}

#[inline(always)]
fn uplink_ingress(
    ctx: &TcContext,
    flow: &mut Flow,
    entry: &mut CtEntry,
) -> Result<Outcome, Outcome> {
    parse_tc(ctx, flow)?;
    let reason = match decide(flow, Origin::Uplink, true, entry)? {
        Step::Translate(reason) => reason,
        Step::Reject => return reject(ctx, flow),
    };
    if entry.dir == CT_DIR_REPLY && entry.flags & CT_F_EXTERNAL == 0 {
        // A reply to a flow a pod started: the pod veth's egress hook translates it.
        return Ok(Outcome::pass(Reason::NotService));
    }
    if entry.dir == CT_DIR_FORWARD && entry.flags & CT_F_SNAT == 0 {
        // A local backend: the stack routes the packet to its pod's veth (or delivers it to a
        // hostNetwork endpoint on this node).
        apply(ctx, flow, entry)?;
        return Ok(Outcome::pass(reason));
    }
    // Leaving the node again (to a remote backend, or a reply to the client): the packet's
    // source is now this node's address or a frontend, so the stack must not route it as a
    // received packet (it would drop a "martian" local source). Redirect it to the next hop.
    forward(ctx, flow, entry, reason)
}

/// tc egress on a node uplink: what this node's own stack sends out. A hostNetwork endpoint
/// on this node answering an external client replies from the node's address and the
/// endpoint's port; its reply entry restores the frontend (a NodePort, LB or external IP) as
/// source, as the pod veth's hooks do for pods. Everything else passes untouched.
#[classifier]
pub(crate) fn svc_uplink_egress(ctx: TcContext) -> i32 {
    to_v6(&ctx, PROG6_UPLINK_EGRESS);
    run_tc(&ctx, Hook::UplinkEgress, uplink_egress)
}

#[inline(always)]
fn uplink_egress(
    ctx: &TcContext,
    flow: &mut Flow,
    entry: &mut CtEntry,
) -> Result<Outcome, Outcome> {
    parse_tc(ctx, flow)?;
    match decide(flow, Origin::Uplink, false, entry)? {
        Step::Translate(reason)
            if entry.dir == CT_DIR_REPLY && entry.flags & CT_F_EXTERNAL != 0 =>
        {
            apply(ctx, flow, entry)?;
            Ok(Outcome::pass(reason))
        }
        _ => Ok(Outcome::pass(Reason::NotService)),
    }
}
