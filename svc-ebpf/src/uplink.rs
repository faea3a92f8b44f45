//! tc ingress on node uplinks: the complete north-south path.
//!
//! XDP (see `xdp`) handles what it can prove safe and passes the rest here untouched: frames
//! whose L4 checksum may be partial (only skb helpers update those correctly), flows whose next
//! hop has no neighbour entry yet (`bpf_redirect_neigh` resolves it), and flows to answer with
//! a reject (built with skb helpers). This program therefore implements every case itself; on
//! a node without XDP it is the whole north-south datapath.
use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH},
    helpers::{bpf_fib_lookup, bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
};
use svc_common::{CtEntry, Hook, Reason, CT_DIR_FORWARD, CT_F_EXTERNAL, CT_F_SNAT};

use crate::{
    lb::{ct_lookup, new_flow, Origin, Step},
    nat::apply,
    parse::{parse_tc, Flow},
    reject::reject,
    stats::count,
    Outcome,
};

const AF_INET: u8 = 2;

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

#[inline(always)]
fn forward(
    ctx: &TcContext,
    flow: &Flow,
    entry: &CtEntry,
    reason: Reason,
) -> Result<Outcome, Outcome> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid input.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = flow.proto;
    p.sport = entry.src_port.to_be();
    p.dport = entry.dst_port.to_be();
    p.__bindgen_anon_1.tot_len = flow.ip_len;
    // SAFETY: reading the ifindex field of the program's own context.
    p.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(entry.src_addr);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(entry.dst_addr);
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
