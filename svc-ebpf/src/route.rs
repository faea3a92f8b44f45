//! Sending a translated packet on from tc: for packets whose new source is this node or a
//! frontend (SNAT towards a remote backend, replies to an external client), the stack must not
//! route them as received packets: it drops a local source address arriving on an interface as
//! "martian". They are redirected to the next hop instead, which bypasses the stack's
//! forwarding: this module does what `ip_forward` would (MTU check, TTL).
use aya_ebpf::{
    bindings::{
        __sk_buff, bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH,
    },
    helpers::{bpf_fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use network_types::ip::Ipv4Hdr;
use svc_common::{CtEntry, Reason, CT_DIR_FORWARD, CT_F_NODEPORT, FAULT_NO_SKIP_NEIGH};

use crate::{
    nat::{apply, decrement_ttl, ttl_expires},
    parse::{Flow, FRAG_NONE},
    reject::{frag_needed, time_exceeded},
    v4::lb::fib_params,
    Outcome,
};

/// The length the FIB checks against the egress MTU, GSO-aware.
///
/// `bpf_fib_lookup` checks `tot_len` against the route's MTU (net/core/filter.c,
/// `bpf_ipv4_fib_lookup`: `if (check_mtu) { mtu = ip_mtu_from_fib_result(...); if
/// (params->tot_len > mtu) ... return BPF_FIB_LKUP_RET_FRAG_NEEDED; }`). A GSO super-packet
/// (TSO from a pod's socket, or GRO-merged on a veth) carries up to 64 KB in one skb whose IP
/// `tot_len` says so, yet leaves as segments of `gso_size` payload: passing the IP length
/// made every such packet "too big" and stalled downloads after the first window. So for a
/// GSO skb the length of one segment is checked (IP header + L4 header + `gso_size`, what
/// `skb_gso_validate_network_len` checks in `ip_forward`), and for any other packet its own
/// length; both against the route's MTU, so a route with a lower `mtu` is honoured too
/// (`tot_len = 0` would check only the device MTU, `is_skb_forwardable`).
#[inline(always)]
fn mtu_check_len(ctx: &TcContext, flow: &Flow) -> u16 {
    // SAFETY: reading a field of the program's own context.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size != 0 && flow.frag == FRAG_NONE && !flow.icmp {
        let seg = Ipv4Hdr::LEN as u32 + flow.l4_hdr_len as u32 + gso_size;
        if seg < flow.ip_len as u32 {
            return seg as u16;
        }
    }
    flow.ip_len
}

/// Translates the packet as `entry` says and redirects it towards `entry.dst_addr`: the FIB
/// names the egress interface (checked against its MTU before anything is rewritten, so an
/// ICMP fragmentation-needed quotes the packet as its sender sent it), the TTL is decremented,
/// and `bpf_redirect_neigh` resolves the next hop's MAC (queueing the packet meanwhile).
/// A packet whose TTL would expire is passed to the stack untranslated: it answers
/// time-exceeded to the sender about the packet the sender knows. Except to a NodePort: its
/// address is this node's own, so the stack would deliver the packet locally and refuse it;
/// the program answers time-exceeded itself (`reject::time_exceeded`).
#[inline(always)]
pub(crate) fn forward(
    ctx: &TcContext,
    flow: &Flow,
    entry: &CtEntry,
    reason: Reason,
) -> Result<Outcome, Outcome> {
    if ttl_expires(flow) {
        if entry.dir == CT_DIR_FORWARD && entry.flags & CT_F_NODEPORT != 0 {
            return Ok(time_exceeded(ctx, flow));
        }
        return Ok(Outcome::pass(Reason::TtlExceeded));
    }
    let r = route_sub(ctx.skb.skb, flow, entry);
    if r & ROUTED != 0 {
        // Rewritten from the program itself, not from `route_sub`, so the subprograms'
        // frames never add up.
        apply(ctx, flow, entry)?;
        decrement_ttl(ctx, flow)?;
        // SAFETY: plain helper call with no parameters block.
        let verdict = unsafe { bpf_redirect_neigh(r as u32, core::ptr::null_mut(), 0, 0) } as i32;
        return Ok(Outcome { verdict, reason });
    }
    if r & TOO_BIG != 0 {
        return Err(frag_needed(ctx, flow, (r >> 40) as u16));
    }
    Err(Outcome::unpack(r))
}

/// [`route_sub`]'s tags: the egress ifindex is in the low 32 bits; the MTU at bit 40.
const ROUTED: u64 = 1 << 60;
const TOO_BIG: u64 = 1 << 61;

/// The FIB lookup of [`forward`] in a BPF subprogram of its own (its parameter block stays
/// off the program's stack): `ROUTED | ifindex`, `TOO_BIG | mtu << 40` for a packet that
/// does not fit and must not be fragmented, or a packed outcome (see `Outcome::pack`).
#[inline(never)]
fn route_sub(skb: *mut __sk_buff, flow: &Flow, entry: &CtEntry) -> u64 {
    let ctx = TcContext::new(skb);
    // SAFETY: reading the ifindex field of the program's own context.
    let ifindex = unsafe { (*skb).ifindex };
    let mut p = fib_params(flow, entry, ifindex, mtu_check_len(&ctx, flow));
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
        // A kernel without BPF_FIB_LOOKUP_SKIP_NEIGH (before 6.3, unless backported as in
        // Debian's 6.1.1xx) refuses the unknown flag before looking anything up
        // (`if (flags & ~BPF_FIB_LOOKUP_MASK) return -EINVAL;`, bpf_skb_fib_lookup in
        // net/core/filter.c) and leaves `p` as it was. Without the flag the same lookup also
        // resolves the neighbour, and answers NO_NEIGH when there is none yet; the egress
        // ifindex is already set then (`params->ifindex = dev->ifindex;` comes before the
        // neighbour lookup in bpf_ipv4_fib_lookup), and bpf_redirect_neigh resolves it.
        p = fib_params(flow, entry, ifindex, mtu_check_len(&ctx, flow));
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
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        if flow.df {
            // `mtu_result` shares its place with `tot_len` and holds the route's MTU now.
            // SAFETY: reading a plain integer field of the lookup's result.
            let mtu = unsafe { p.__bindgen_anon_1.mtu_result };
            return TOO_BIG | (mtu as u64) << 40;
        }
        // A BPF program cannot fragment; without DF the sender expects the path to.
        return Outcome::drop(Reason::TooBig).pack();
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Outcome::drop(Reason::FibFailed).pack();
    }
    ROUTED | p.ifindex as u64
}
