//! The IPv6 tc programs: the IPv4 programs of the same hooks hand every IPv6 frame over to
//! them by a tail call (`SVC_PROGS6`, `programs::to_v6`: the Ethernet type checked first thing,
//! one compare for an IPv4 frame), so a hook keeps one attached program. Each program is
//! verified on its own, within its own instruction budget.
//!
//! The decisions are the IPv4 ones compiled for IPv6 (`v6`); what differs is the parsing
//! (`parse6`), the rewrite (`nat6`: no IP checksum, the hop limit) and the FIB lookup's family.
//!
//! As for IPv4: a new flow to a frontend without endpoints is answered in place with a TCP RST
//! or an ICMPv6 port unreachable (`reject6`), a packet too big for the next hop with an ICMPv6
//! Packet Too Big from the node's IPv6 address (`reject6`; both rate-limited with the IPv4
//! answers), and ICMPv6 Destination Unreachable / Packet Too Big / Time Exceeded / Parameter
//! Problem errors about translated flows are translated, outer and quoted headers (`icmp6`; Neighbor Discovery and
//! every other ICMPv6 message pass untouched).
//!
//! The uplink's XDP fast path has its IPv6 program too (`xdp6`, reached from `svc_xdp` through
//! `SVC_XDP_PROGS6`); what it leaves to tc arrives here untouched.
//!
//! Not yet for IPv6 (counted, never silently wrong): ICMPv6 errors
//! with an extension header before the ICMPv6 header or in the quoted packet pass untranslated
//! (`not_tcp_udp`); an answer's quote is the offending packet's first 128 bytes, not as much
//! as fits 1280 bytes (see `reject6`).
use aya_ebpf::{
    bindings::{
        __sk_buff, bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
};
use svc_common::{
    Addr6, CtEntry6, Hook, Reason, CT_DIR_FORWARD, CT_DIR_REPLY, CT_F_EXTERNAL, CT_F_NODEPORT,
    CT_F_SNAT, FAULT_NO_SKIP_NEIGH,
};

use crate::{
    family::Family,
    maps::SVC_SCRATCH,
    nat::swap_macs,
    nat6::{apply6, decrement_hop_limit},
    parse::{FRAG_NONE, IP_OFF},
    parse6::{parse6_tc, Flow6},
    reject6::{packet_too_big6, reject6, time_exceeded6},
    stats::count,
    v6::{
        lb::{blank_entry, decide, fib_params, Origin, Step},
        trace::trace,
    },
    Outcome, TC_ACT_SHOT,
};

/// [`svc_pod_ingress6`]'s index in `SVC_PROGS6`.
pub(crate) const PROG6_POD_INGRESS: u32 = 0;
/// [`svc_pod_egress6`]'s index in `SVC_PROGS6`.
pub(crate) const PROG6_POD_EGRESS: u32 = 1;
/// [`svc_uplink_ingress6`]'s index in `SVC_PROGS6`.
pub(crate) const PROG6_UPLINK_INGRESS: u32 = 2;
/// [`svc_uplink_egress6`]'s index in `SVC_PROGS6`.
pub(crate) const PROG6_UPLINK_EGRESS: u32 = 3;

/// tc ingress on a pod veth, IPv6 (reached from `svc_pod_ingress`).
#[classifier]
pub(crate) fn svc_pod_ingress6(ctx: TcContext) -> i32 {
    run_tc6(&ctx, Hook::PodIngress6, pod_ingress6)
}

/// tc egress on a pod veth, IPv6 (reached from `svc_pod_egress`).
#[classifier]
pub(crate) fn svc_pod_egress6(ctx: TcContext) -> i32 {
    run_tc6(&ctx, Hook::PodEgress6, pod_egress6)
}

/// tc ingress on a node uplink, IPv6 (reached from `svc_uplink_ingress`).
#[classifier]
pub(crate) fn svc_uplink_ingress6(ctx: TcContext) -> i32 {
    run_tc6(&ctx, Hook::UplinkIngress6, uplink_ingress6)
}

/// tc egress on a node uplink, IPv6 (reached from `svc_uplink_egress`).
#[classifier]
pub(crate) fn svc_uplink_egress6(ctx: TcContext) -> i32 {
    run_tc6(&ctx, Hook::UplinkEgress6, uplink_egress6)
}

/// Every IPv6 tc program's entry: runs `body`, counts the outcome's reason, traces it (an
/// IPv6 event, `v6::trace`) and returns its verdict.
#[inline(always)]
fn run_tc6(
    ctx: &TcContext,
    hook: Hook,
    body: impl FnOnce(&TcContext, &mut Flow6, &mut CtEntry6) -> Result<Outcome, Outcome>,
) -> i32 {
    let Some(scratch) = SVC_SCRATCH.get_ptr_mut(0) else {
        count(hook, Reason::RewriteFailed);
        return TC_ACT_SHOT;
    };
    // SAFETY: this CPU's slot of a per-CPU array, used only while this program runs (programs
    // on one CPU never nest); `flow6` is large and aligned enough for a Flow6 (asserted below).
    let (flow, entry) = unsafe {
        let flow = &mut *((*scratch).flow6.as_mut_ptr() as *mut Flow6);
        *flow = Flow6::EMPTY;
        let entry = &mut (*scratch).entry6;
        *entry = blank_entry();
        (flow, entry)
    };
    let out = match body(ctx, flow, entry) {
        Ok(out) | Err(out) => out,
    };
    count(hook, out.reason);
    // SAFETY: reading the ifindex field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    trace(
        hook,
        flow,
        entry,
        out.verdict,
        out.reason as u32,
        ctx.len(),
        ifindex,
    );
    out.verdict
}

const _: () = assert!(
    core::mem::size_of::<Flow6>() <= core::mem::size_of::<[u64; 10]>()
        && core::mem::align_of::<Flow6>() <= core::mem::align_of::<u64>()
);

#[inline(always)]
fn pod_ingress6(
    ctx: &TcContext,
    flow: &mut Flow6,
    entry: &mut CtEntry6,
) -> Result<Outcome, Outcome> {
    parse6_tc(ctx, flow)?;
    let reason = match decide(flow, Origin::Pod, true, entry)? {
        Step::Translate(reason) => reason,
        Step::Reject => return reject6(ctx, flow),
    };
    if Addr6::same(entry.dst_addr, flow.saddr) {
        // Hairpin (see `programs::deliver`): straight back out of the veth.
        if flow.ttl <= 1 {
            return Ok(Outcome::pass(Reason::TtlExceeded));
        }
        apply6(ctx, flow, entry)?;
        decrement_hop_limit(ctx, flow)?;
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
        // A reply with a frontend the stack may own as source (see `programs::deliver`).
        return forward6(ctx, flow, entry, reason);
    }
    apply6(ctx, flow, entry)?;
    Ok(Outcome::pass(reason))
}

#[inline(always)]
fn pod_egress6(
    ctx: &TcContext,
    flow: &mut Flow6,
    entry: &mut CtEntry6,
) -> Result<Outcome, Outcome> {
    parse6_tc(ctx, flow)?;
    match decide(flow, Origin::Pod, false, entry)? {
        Step::Translate(reason) if entry.dir == CT_DIR_REPLY => {
            apply6(ctx, flow, entry)?;
            Ok(Outcome::pass(reason))
        }
        _ => Ok(Outcome::pass(Reason::NotService)),
    }
}

#[inline(always)]
fn uplink_ingress6(
    ctx: &TcContext,
    flow: &mut Flow6,
    entry: &mut CtEntry6,
) -> Result<Outcome, Outcome> {
    parse6_tc(ctx, flow)?;
    let reason = match decide(flow, Origin::Uplink, true, entry)? {
        Step::Translate(reason) => reason,
        Step::Reject => return reject6(ctx, flow),
    };
    if entry.dir == CT_DIR_REPLY && entry.flags & CT_F_EXTERNAL == 0 {
        // A reply to a flow a pod started: the pod veth's egress hook translates it.
        return Ok(Outcome::pass(Reason::NotService));
    }
    if entry.dir == CT_DIR_FORWARD && entry.flags & CT_F_SNAT == 0 {
        // A local backend: the stack routes it (see `uplink`).
        apply6(ctx, flow, entry)?;
        return Ok(Outcome::pass(reason));
    }
    forward6(ctx, flow, entry, reason)
}

#[inline(always)]
fn uplink_egress6(
    ctx: &TcContext,
    flow: &mut Flow6,
    entry: &mut CtEntry6,
) -> Result<Outcome, Outcome> {
    parse6_tc(ctx, flow)?;
    match decide(flow, Origin::Uplink, false, entry)? {
        Step::Translate(reason)
            if entry.dir == CT_DIR_REPLY && entry.flags & CT_F_EXTERNAL != 0 =>
        {
            apply6(ctx, flow, entry)?;
            Ok(Outcome::pass(reason))
        }
        _ => Ok(Outcome::pass(Reason::NotService)),
    }
}

/// `route::forward` for IPv6: FIB lookup (MTU checked, GSO-aware, before anything is
/// rewritten), rewrite, hop limit, `bpf_redirect_neigh`. A packet whose hop limit would expire
/// is passed untranslated for the stack to answer Time Exceeded, except to a NodePort (this
/// node's own address: the stack would deliver it locally), which is answered here
/// (`reject6::time_exceeded6`).
#[inline(always)]
fn forward6(
    ctx: &TcContext,
    flow: &Flow6,
    entry: &CtEntry6,
    reason: Reason,
) -> Result<Outcome, Outcome> {
    if flow.ttl <= 1 {
        if entry.dir == CT_DIR_FORWARD && entry.flags & CT_F_NODEPORT != 0 {
            return Ok(time_exceeded6(ctx, flow));
        }
        return Ok(Outcome::pass(Reason::TtlExceeded));
    }
    let r = route6_sub(ctx.skb.skb, flow, entry);
    if r & TOO_BIG != 0 {
        return Err(packet_too_big6(ctx, flow, (r >> 40) as u16 as u32));
    }
    if r & ROUTED == 0 {
        return Err(Outcome::unpack(r));
    }
    apply6(ctx, flow, entry)?;
    decrement_hop_limit(ctx, flow)?;
    // SAFETY: plain helper call with no parameters block.
    let verdict = unsafe { bpf_redirect_neigh(r as u32, core::ptr::null_mut(), 0, 0) } as i32;
    Ok(Outcome { verdict, reason })
}

/// [`route6_sub`]'s tags: the egress ifindex is in the low 32 bits; the MTU at bit 40.
const ROUTED: u64 = 1 << 60;
const TOO_BIG: u64 = 1 << 61;

/// The FIB lookup of [`forward6`] in a BPF subprogram of its own: `ROUTED | ifindex`,
/// `TOO_BIG | mtu << 40` for a packet that does not fit (IPv6 routers never fragment), or a
/// packed outcome.
#[inline(never)]
fn route6_sub(skb: *mut __sk_buff, flow: &Flow6, entry: &CtEntry6) -> u64 {
    let ctx = TcContext::new(skb);
    // SAFETY: reading fields of the program's own context.
    let (ifindex, gso_size) = unsafe { ((*skb).ifindex, (*skb).gso_size) };
    // GSO-aware length (see `route::mtu_check_len`): one segment of a super-packet.
    let mut len = flow.ip_len;
    if gso_size != 0 && flow.frag == FRAG_NONE && !flow.icmp {
        let seg = (flow.x.l4_off as u32 - IP_OFF as u32) + flow.l4_hdr_len as u32 + gso_size;
        if seg < len as u32 {
            len = seg as u16;
        }
    }
    let _ = ctx;
    let mut p = fib_params(flow, entry, ifindex, len);
    let flags = if crate::fault(FAULT_NO_SKIP_NEIGH) {
        BPF_FIB_LOOKUP_SKIP_NEIGH | 1 << 31
    } else {
        BPF_FIB_LOOKUP_SKIP_NEIGH
    };
    // SAFETY: `p` is a live, correctly sized bpf_fib_lookup on the stack.
    let mut rc = unsafe {
        bpf_fib_lookup(
            skb.cast(),
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            flags,
        )
    };
    if rc < 0 {
        // A kernel without BPF_FIB_LOOKUP_SKIP_NEIGH (see `route::route_sub`).
        p = fib_params(flow, entry, ifindex, len);
        // SAFETY: as above.
        rc = unsafe {
            bpf_fib_lookup(
                skb.cast(),
                &mut p,
                core::mem::size_of::<FibParams>() as i32,
                0,
            )
        };
        if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
            rc = BPF_FIB_LKUP_RET_SUCCESS as i64;
        }
    }
    if rc == aya_ebpf::bindings::BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        // `mtu_result` shares its place with `tot_len` and holds the route's MTU now.
        // SAFETY: reading a plain integer field of the lookup's result.
        let mtu = unsafe { p.__bindgen_anon_1.mtu_result };
        return TOO_BIG | (mtu as u64) << 40;
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Outcome::drop(Reason::FibFailed).pack();
    }
    ROUTED | p.ifindex as u64
}
