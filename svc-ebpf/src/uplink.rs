//! tc ingress on node uplinks: the complete north-south path.
//!
//! XDP (see `xdp`) handles what it can prove safe and passes the rest here untouched: frames
//! whose L4 checksum may be partial (only skb helpers update those correctly), flows whose next
//! hop has no neighbour entry yet (`bpf_redirect_neigh` resolves it), and flows to answer with
//! a reject (built with skb helpers). This program therefore implements every case itself; on
//! a node without XDP it is the whole north-south datapath.
use aya_ebpf::{macros::classifier, programs::TcContext};
use svc_common::{Hook, Reason, CT_DIR_FORWARD, CT_F_EXTERNAL, CT_F_SNAT};

use crate::{
    lb::{ct_lookup, new_flow, Origin, Step},
    nat::apply,
    parse::parse_tc,
    reject::reject,
    route::forward,
    stats::count,
    Outcome,
};

/// tc ingress on a node uplink (`--uplink`).
#[classifier]
pub fn svc_uplink_ingress(ctx: TcContext) -> i32 {
    let out = match uplink_ingress(&ctx) {
        Ok(out) | Err(out) => out,
    };
    count(Hook::UplinkIngress, out.reason);
    out.verdict
}

#[inline(always)]
fn uplink_ingress(ctx: &TcContext) -> Result<Outcome, Outcome> {
    let flow = parse_tc(ctx)?;
    let (entry, reason) = match ct_lookup(&flow) {
        Some(entry) if entry.dir == CT_DIR_FORWARD => (entry, Reason::DnatEstablished),
        Some(entry) if entry.flags & CT_F_EXTERNAL != 0 => (entry, Reason::RevNat),
        // A reply to a flow a pod started: the pod veth's egress hook translates it.
        Some(_) => return Ok(Outcome::pass(Reason::NotService)),
        None => match new_flow(&flow, Origin::Uplink)? {
            Step::Translate { entry, reason } => (entry, reason),
            Step::Reject => return reject(ctx, &flow),
        },
    };
    apply(ctx, &flow, &entry)?;
    if entry.dir == CT_DIR_FORWARD && entry.flags & CT_F_SNAT == 0 {
        // A local backend: the stack routes the packet to its pod's veth.
        return Ok(Outcome::pass(reason));
    }
    // Leaving the node again (to a remote backend, or a reply to the client): the packet's
    // source is now this node's address or a frontend, so the stack must not route it as a
    // received packet (it would drop a "martian" local source). Redirect it to the next hop.
    forward(ctx, &flow, &entry, reason)
}
