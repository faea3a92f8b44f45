//! ICMP errors about translated flows (destination unreachable — port unreachable,
//! fragmentation needed, … —, time exceeded and parameter problem), translated as netfilter's
//! `nf_nat_icmp_reply_translation` does for kube-proxy: without it a connected UDP socket
//! never learns that its Service's backend has no listener, and path-MTU discovery through
//! a Service breaks.
//!
//! The error quotes the offending packet's IP header and first 8 bytes. `parse` turns the
//! quoted tuple around, which gives the tuple a packet of the same flow has when it travels
//! the way the error travels; conntrack keyed by it says how such a packet is rewritten
//! (`entry.src` → `entry.dst`). The error is rewritten to match:
//! - outer destination → `entry.dst_addr` (the client, or the backend);
//! - outer source → `entry.src_addr` when the error came from the quoted packet's
//!   destination itself (a backend answering port unreachable shows up as the frontend);
//!   an error from a router on the way keeps the router's address;
//! - the quoted packet, which travelled the other way, becomes `entry.dst` → `entry.src`:
//!   addresses and ports;
//! - every checksum: the outer IPv4 header's, the quoted IPv4 header's, the quoted UDP
//!   checksum (inside the quoted 8 bytes), the quoted TCP checksum when the error quotes the
//!   whole TCP header (past the 8 bytes an error must quote: netfilter's `tcp_manip_pkt`
//!   updates it exactly then, "if (skb->len >= hdroff + sizeof(*hdr))", and leaves a shorter
//!   quote's alone), and the ICMP checksum, which covers the quote and has no pseudo-header.
//!
//! ICMP checksums are always complete (the kernel computes them in software,
//! `icmp_push_reply`), so the arithmetic is done here on a stack copy of the 56 bytes and
//! written back at once; `BPF_F_RECOMPUTE_CSUM` keeps a `CHECKSUM_COMPLETE` skb's sum right.
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_skb_load_bytes, bpf_skb_store_bytes},
    programs::TcContext,
};
use svc_common::{CtEntry, Reason, PROTO_TCP, PROTO_UDP};

use crate::{
    maps::SVC_SCRATCH,
    parse::{Flow, ICMP_ERR_LEN, IP_OFF},
    Outcome,
};

/// `BPF_F_RECOMPUTE_CSUM` for `bpf_skb_store_bytes`.
const BPF_F_RECOMPUTE_CSUM: u64 = 1;

// Offsets inside the 56-byte copy (from the outer IPv4 header).
const OUT_CSUM: usize = 10;
const OUT_SRC: usize = 12;
const OUT_DST: usize = 16;
const ICMP_CSUM: usize = 22;
const IN_IP: usize = 28;
const IN_CSUM: usize = IN_IP + 10;
const IN_SRC: usize = IN_IP + 12;
const IN_DST: usize = IN_IP + 16;
const IN_L4: usize = IN_IP + 20;
const IN_UDP_CSUM: usize = IN_L4 + 6;
/// The quote the ICMP checksum sees change: quoted IPv4 header and first 8 L4 bytes.
const QUOTE: usize = ICMP_ERR_LEN - IN_IP;

/// One's-complement sum of the 16-bit words of `b[off..off + N]` (N even), unfolded.
#[inline(always)]
fn sum<const N: usize>(b: &[u8; ICMP_ERR_LEN], off: usize) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i < N {
        s += u16::from_ne_bytes([b[off + i], b[off + i + 1]]) as u32;
        i += 2;
    }
    s
}

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// RFC 1624 eqn. 3: the checksum at `at` after the covered words summing to `old` became words
/// summing to `new`.
#[inline(always)]
fn adjust(b: &mut [u8; ICMP_ERR_LEN], at: usize, old: u32, new: u32) {
    let c = adjusted(u16::from_ne_bytes([b[at], b[at + 1]]), old, new).to_ne_bytes();
    b[at] = c[0];
    b[at + 1] = c[1];
}

/// RFC 1624 eqn. 3 on a checksum value `check`.
#[inline(always)]
fn adjusted(check: u16, old: u32, new: u32) -> u16 {
    !fold(!check as u32 + !fold(old) as u32 + new)
}

#[inline(always)]
fn put(b: &mut [u8; ICMP_ERR_LEN], at: usize, v: &[u8]) {
    let mut i = 0;
    while i < v.len() {
        b[at + i] = v[i];
        i += 1;
    }
}

/// Rewrites an ICMP error (outer IPv4 header at `b[0]`) about the flow `flow` (the quoted
/// tuple reversed) as conntrack `entry` says; see the module docs. Returns the sums of what a
/// quoted L4 checksum covers of the rewritten fields, before and after, for a quoted TCP
/// checksum beyond `b`.
#[inline(always)]
pub(crate) fn translate(b: &mut [u8; ICMP_ERR_LEN], flow: &Flow, entry: &CtEntry) -> (u32, u32) {
    let quote_before = sum::<QUOTE>(b, IN_IP);

    // The quoted L4 checksum (UDP only) covers the quoted addresses (pseudo-header) and ports.
    let l4_old = sum::<8>(b, IN_SRC) + sum::<4>(b, IN_L4);
    // The quoted IPv4 header's checksum covers its addresses.
    let ip_old = sum::<8>(b, IN_SRC);
    put(b, IN_SRC, &entry.dst_addr);
    put(b, IN_DST, &entry.src_addr);
    put(b, IN_L4, &entry.dst_port.to_be_bytes());
    put(b, IN_L4 + 2, &entry.src_port.to_be_bytes());
    let ip_new = sum::<8>(b, IN_SRC);
    let l4_new = sum::<8>(b, IN_SRC) + sum::<4>(b, IN_L4);
    adjust(b, IN_CSUM, ip_old, ip_new);
    if flow.proto == PROTO_UDP && (b[IN_UDP_CSUM] | b[IN_UDP_CSUM + 1]) != 0 {
        adjust(b, IN_UDP_CSUM, l4_old, l4_new);
        if b[IN_UDP_CSUM] | b[IN_UDP_CSUM + 1] == 0 {
            // 0 means "no checksum" for UDP; a computed zero is sent as 0xffff.
            b[IN_UDP_CSUM] = 0xff;
            b[IN_UDP_CSUM + 1] = 0xff;
        }
    }
    let quote_after = sum::<QUOTE>(b, IN_IP);
    adjust(b, ICMP_CSUM, quote_before, quote_after);

    let out_old = sum::<8>(b, OUT_SRC);
    // An error from the quoted packet's destination itself carries that address as source;
    // `flow.saddr` is it (the quoted tuple, reversed).
    if b[OUT_SRC..OUT_SRC + 4] == flow.saddr {
        put(b, OUT_SRC, &entry.src_addr);
    }
    put(b, OUT_DST, &entry.dst_addr);
    let out_new = sum::<8>(b, OUT_SRC);
    adjust(b, OUT_CSUM, out_old, out_new);
    (l4_old, l4_new)
}

/// Offset in the packet of the quoted TCP header's checksum.
const IN_TCP_CSUM_OFF: usize = IP_OFF + IN_L4 + 16;
/// The packet length from which the error quotes the whole TCP header (20 bytes).
const WHOLE_TCP_QUOTE_LEN: u32 = (IP_OFF + IN_L4 + 20) as u32;

/// [`translate`] on a tc packet (the headers were made linear by `parse_tc`).
#[inline(always)]
pub(crate) fn translate_tc(ctx: &TcContext, flow: &Flow, entry: &CtEntry) -> Result<(), Outcome> {
    if translate_sub(ctx.skb.skb, flow, entry) != 0 {
        return Err(Outcome::drop(Reason::RewriteFailed));
    }
    Ok(())
}

/// [`translate_tc`] in a BPF subprogram of its own (its 56-byte copy stays off the callers'
/// stack; see `Outcome::pack`). 0 on success.
#[inline(never)]
fn translate_sub(skb: *mut __sk_buff, flow: &Flow, entry: &CtEntry) -> u32 {
    // The 56 bytes are worked on in a per-CPU buffer: on the stack, with the hooks' own
    // frames, they went past the verifier's 512 bytes.
    let Some(scratch) = SVC_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's own slot of a per-CPU array, used only while this program runs.
    let b = unsafe { &mut (*scratch).icmp };
    let p = b.as_mut_ptr().cast();
    // SAFETY: `b` is live memory of exactly the length passed.
    if unsafe { bpf_skb_load_bytes(skb.cast(), IP_OFF as u32, p, ICMP_ERR_LEN as u32) } != 0 {
        return 1;
    }
    let (l4_old, l4_new) = translate(b, flow, entry);
    // SAFETY: reading a field of the program's own context.
    let whole_tcp = flow.proto == PROTO_TCP && unsafe { (*skb).len } >= WHOLE_TCP_QUOTE_LEN;
    let mut tcp_csum = [0u8; 2];
    if whole_tcp {
        let t = tcp_csum.as_mut_ptr().cast();
        // SAFETY: `tcp_csum` is live memory of the 2 bytes read.
        if unsafe { bpf_skb_load_bytes(skb.cast(), IN_TCP_CSUM_OFF as u32, t, 2) } != 0 {
            return 1;
        }
        let old = u16::from_ne_bytes(tcp_csum);
        let new = adjusted(old, l4_old, l4_new);
        // The ICMP checksum covers the quoted TCP checksum too.
        adjust(b, ICMP_CSUM, old as u32, new as u32);
        tcp_csum = new.to_ne_bytes();
    }
    // SAFETY: as above.
    let rc = unsafe {
        bpf_skb_store_bytes(
            skb.cast(),
            IP_OFF as u32,
            p,
            ICMP_ERR_LEN as u32,
            BPF_F_RECOMPUTE_CSUM,
        )
    };
    if rc != 0 {
        return 1;
    }
    if whole_tcp {
        let t = tcp_csum.as_ptr() as *const core::ffi::c_void;
        // SAFETY: `tcp_csum` is live memory of the 2 bytes written.
        let rc = unsafe {
            bpf_skb_store_bytes(
                skb.cast(),
                IN_TCP_CSUM_OFF as u32,
                t,
                2,
                BPF_F_RECOMPUTE_CSUM,
            )
        };
        return (rc != 0) as u32;
    }
    0
}
