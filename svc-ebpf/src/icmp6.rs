//! ICMPv6 errors about translated flows (Destination Unreachable, Packet Too Big, Time
//! Exceeded, Parameter Problem), translated as `icmp` does for IPv4 (see its module docs for why and how): the
//! flow is the quoted tuple reversed (`parse6`), conntrack keyed by it says how a packet of
//! that flow travelling the way the error travels is rewritten, and the error follows:
//! - outer destination → `entry.dst_addr`; outer source → `entry.src_addr` when the error came
//!   from the quoted packet's destination itself (a router's address is kept);
//! - the quoted packet becomes `entry.dst` → `entry.src`: addresses and ports;
//! - the checksums: the quoted UDP checksum (inside the quoted 8 bytes), the quoted TCP
//!   checksum when the whole TCP header is quoted (as netfilter's `tcp_manip_pkt` does), and
//!   the ICMPv6 checksum, which unlike ICMPv4's covers the IPv6 pseudo-header (RFC 4443 §2.3):
//!   the outer addresses as well as the quote. IPv6 has no header checksum.
//!
//! Only errors with a fixed layout are translated (`parse6::parse_icmp6_error`): no extension
//! header before the ICMPv6 header or in the quoted packet, so everything rewritten lies in the
//! first [`ICMP6_ERR_LEN`] bytes after the Ethernet header. ICMPv6 checksums are complete (the
//! kernel computes them in software, `icmpv6_push_pending_frames`): the arithmetic is done on a
//! per-CPU copy and written back at once, `BPF_F_RECOMPUTE_CSUM` keeping a `CHECKSUM_COMPLETE`
//! skb's sum right.
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_csum_diff, bpf_skb_load_bytes, bpf_skb_store_bytes},
    programs::TcContext,
};
use svc_common::{Addr6, CtEntry6, Reason, PROTO_TCP, PROTO_UDP};

use crate::{
    family::Family,
    maps::SVC_SCRATCH,
    parse::IP_OFF,
    parse6::{Flow6, ICMP6_ERR_LEN},
    Outcome,
};

/// `BPF_F_RECOMPUTE_CSUM` for `bpf_skb_store_bytes`.
const BPF_F_RECOMPUTE_CSUM: u64 = 1;

// Offsets inside the copy (from the outer IPv6 header).
const OUT_SRC: usize = 8;
const OUT_DST: usize = 24;
const ICMP: usize = 40;
const ICMP_CSUM: usize = ICMP + 2;
const IN_IP: usize = ICMP + 8;
const IN_SRC: usize = IN_IP + 8;
const IN_DST: usize = IN_IP + 24;
const IN_L4: usize = IN_IP + 40;
const IN_UDP_CSUM: usize = IN_L4 + 6;
/// What the ICMPv6 checksum sees change besides the outer addresses: the quoted IPv6 header
/// and the first 8 L4 bytes.
const QUOTE: usize = ICMP6_ERR_LEN - IN_IP;
const _: () = assert!(ICMP6_ERR_LEN == 96 && IN_L4 + 8 == ICMP6_ERR_LEN);

type Buf = [u8; ICMP6_ERR_LEN];

/// One's-complement sum of `b[off..off + N]` (N a multiple of 4, `off` too), folded to 16
/// bits. Through `bpf_csum_diff`: summed in Rust the 96 bytes were kept in registers and
/// spilled past the verifier's 512 bytes of stack.
#[inline(always)]
fn sum<const N: usize>(b: &mut Buf, off: usize) -> u32 {
    // SAFETY: the range is inside `b`.
    let s = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            b.as_mut_ptr().add(off).cast(),
            N as u32,
            0,
        )
    };
    fold(s as u32) as u32
}

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// RFC 1624 eqn. 3 on a checksum value `check`: the covered words summing to `old` became
/// words summing to `new`.
#[inline(always)]
fn adjusted(check: u16, old: u32, new: u32) -> u16 {
    !fold(!check as u32 + !fold(old) as u32 + fold(new) as u32)
}

#[inline(always)]
fn adjust(b: &mut Buf, at: usize, old: u32, new: u32) {
    let c = adjusted(u16::from_ne_bytes([b[at], b[at + 1]]), old, new).to_ne_bytes();
    b[at] = c[0];
    b[at + 1] = c[1];
}

/// Writes `a` at `b[at..at + 16]` as four words.
#[inline(always)]
fn put_addr(b: &mut Buf, at: usize, a: &Addr6) {
    let w = a.words();
    // SAFETY: the 16 bytes are inside `b`; unaligned writes.
    unsafe {
        let p = b.as_mut_ptr().add(at) as *mut u32;
        p.write_unaligned(w[0]);
        p.add(1).write_unaligned(w[1]);
        p.add(2).write_unaligned(w[2]);
        p.add(3).write_unaligned(w[3]);
    }
}

/// The address at `b[at..at + 16]`.
#[inline(always)]
fn addr_at(b: &Buf, at: usize) -> Addr6 {
    let mut a = Addr6 { octets: [0; 16] };
    a.octets.copy_from_slice(&b[at..at + 16]);
    a
}

/// Rewrites an ICMPv6 error (outer IPv6 header at `b[0]`) about `flow` (the quoted tuple
/// reversed) as conntrack `entry` says. Returns the sums of what a quoted L4 checksum covers
/// of the rewritten fields, before and after, for a quoted TCP checksum beyond `b`.
#[inline(always)]
fn translate6(b: &mut Buf, flow: &Flow6, entry: &CtEntry6) -> (u32, u32) {
    let icmp_old = sum::<32>(b, OUT_SRC) + sum::<QUOTE>(b, IN_IP);
    // The quoted L4 checksum covers the quoted addresses (pseudo-header) and the ports.
    let l4_old = sum::<32>(b, IN_SRC) + sum::<4>(b, IN_L4);
    put_addr(b, IN_SRC, &entry.dst_addr);
    put_addr(b, IN_DST, &entry.src_addr);
    let ports = [entry.dst_port.to_be_bytes(), entry.src_port.to_be_bytes()];
    b[IN_L4] = ports[0][0];
    b[IN_L4 + 1] = ports[0][1];
    b[IN_L4 + 2] = ports[1][0];
    b[IN_L4 + 3] = ports[1][1];
    let l4_new = sum::<32>(b, IN_SRC) + sum::<4>(b, IN_L4);
    if flow.proto == PROTO_UDP && (b[IN_UDP_CSUM] | b[IN_UDP_CSUM + 1]) != 0 {
        adjust(b, IN_UDP_CSUM, l4_old, l4_new);
        if b[IN_UDP_CSUM] | b[IN_UDP_CSUM + 1] == 0 {
            // 0 means "no checksum" for UDP; a computed zero is sent as 0xffff.
            b[IN_UDP_CSUM] = 0xff;
            b[IN_UDP_CSUM + 1] = 0xff;
        }
    }
    // An error from the quoted packet's destination itself carries that address as source;
    // `flow.saddr` is it (the quoted tuple, reversed).
    if Addr6::same(addr_at(b, OUT_SRC), flow.saddr) {
        put_addr(b, OUT_SRC, &entry.src_addr);
    }
    put_addr(b, OUT_DST, &entry.dst_addr);
    let icmp_new = sum::<32>(b, OUT_SRC) + sum::<QUOTE>(b, IN_IP);
    adjust(b, ICMP_CSUM, icmp_old, icmp_new);
    (l4_old, l4_new)
}

/// Offset in the packet of the quoted TCP header's checksum.
const IN_TCP_CSUM_OFF: usize = IP_OFF + IN_L4 + 16;
/// The packet length from which the error quotes the whole TCP header (20 bytes).
const WHOLE_TCP_QUOTE_LEN: u32 = (IP_OFF + IN_L4 + 20) as u32;

/// [`translate6`] on a tc packet (`parse6_tc` made the headers linear).
#[inline(always)]
pub(crate) fn translate6_tc(
    ctx: &TcContext,
    flow: &Flow6,
    entry: &CtEntry6,
) -> Result<(), Outcome> {
    if translate6_sub(ctx.skb.skb, flow, entry) != 0 {
        return Err(Outcome::drop(Reason::RewriteFailed));
    }
    Ok(())
}

/// [`translate6_tc`] in a BPF subprogram of its own, on `Scratch::icmp6`. 0 on success.
#[inline(never)]
fn translate6_sub(skb: *mut __sk_buff, flow: &Flow6, entry: &CtEntry6) -> u32 {
    let Some(scratch) = SVC_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's own slot of a per-CPU array, used only while this program runs.
    let b = unsafe { &mut (*scratch).icmp6 };
    let p = b.as_mut_ptr().cast();
    // SAFETY: `b` is live memory of exactly the length passed.
    if unsafe { bpf_skb_load_bytes(skb.cast(), IP_OFF as u32, p, ICMP6_ERR_LEN as u32) } != 0 {
        return 1;
    }
    let (l4_old, l4_new) = translate6(b, flow, entry);
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
        // The ICMPv6 checksum covers the quoted TCP checksum too.
        adjust(b, ICMP_CSUM, old as u32, new as u32);
        tcp_csum = new.to_ne_bytes();
    }
    // SAFETY: as above.
    let rc = unsafe {
        bpf_skb_store_bytes(
            skb.cast(),
            IP_OFF as u32,
            p,
            ICMP6_ERR_LEN as u32,
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
