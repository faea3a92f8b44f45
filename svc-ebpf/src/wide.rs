//! The design alternative IPv6 did not take, built so that its cost is measured rather than
//! guessed: one set of maps for both families with IPv6-wide keys ("family-generic keys",
//! Katran's and Calico's union-key style), through which IPv4 packets would go too.
//!
//! Not part of the datapath: the agent never loads it. svc-bench's `bench` runs it on the same
//! IPv4 frames as `svc_pod_ingress`, with the Services written into the IPv6 maps under
//! IPv4-mapped addresses (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2). It parses IPv4 as the IPv4
//! program does, widens the flow, takes the decision with the IPv6 instance of `lb` (40-byte
//! conntrack keys, 80-byte entries, 20-byte frontend keys), narrows the entry and rewrites with
//! the IPv4 `nat`: what an IPv4 packet costs when its keys are as wide as IPv6's. Counted under
//! `Hook::PodIngress6`. docs/ARCHITECTURE.md ("IPv6") reports the comparison.
use aya_ebpf::{macros::classifier, programs::TcContext};
use svc_common::{Addr6, CtEntry, CtEntry6, Hook, Reason};

use crate::{
    maps::SVC_SCRATCH,
    nat::apply,
    parse::{parse_tc, Flow},
    parse6::Flow6,
    stats::count,
    v6::lb::{blank_entry, decide, Origin, Step},
    Outcome,
};

/// `::ffff:a.b.c.d`.
#[inline(always)]
fn mapped(a: [u8; 4]) -> Addr6 {
    let mut octets = [0u8; 16];
    octets[10] = 0xff;
    octets[11] = 0xff;
    octets[12..].copy_from_slice(&a);
    Addr6 { octets }
}

#[inline(always)]
fn unmapped(a: &Addr6) -> [u8; 4] {
    [a.octets[12], a.octets[13], a.octets[14], a.octets[15]]
}

/// Benchmark only: `svc_pod_ingress`'s work for an IPv4 frame, with family-generic keys.
#[classifier]
pub(crate) fn svc_bench_wide4(ctx: TcContext) -> i32 {
    let out = match run(&ctx) {
        Ok(out) | Err(out) => out,
    };
    count(Hook::PodIngress6, out.reason);
    out.verdict
}

#[inline(always)]
fn run(ctx: &TcContext) -> Result<Outcome, Outcome> {
    let mut flow = Flow::EMPTY;
    parse_tc(ctx, &mut flow)?;
    let Some(scratch) = SVC_SCRATCH.get_ptr_mut(0) else {
        return Err(Outcome::drop(Reason::RewriteFailed));
    };
    // SAFETY: this CPU's slot of a per-CPU array, used only while this program runs.
    let (wide, entry) = unsafe {
        let wide = &mut *((*scratch).flow6.as_mut_ptr() as *mut Flow6);
        *wide = Flow6::EMPTY;
        let entry: &mut CtEntry6 = &mut (*scratch).entry6;
        *entry = blank_entry();
        (wide, entry)
    };
    wide.saddr = mapped(flow.saddr);
    wide.daddr = mapped(flow.daddr);
    wide.sport = flow.sport;
    wide.dport = flow.dport;
    wide.proto = flow.proto;
    wide.tcp_flags = flow.tcp_flags;
    wide.ip_len = flow.ip_len;
    wide.ttl = flow.ttl;
    let reason = match decide(wide, Origin::Pod, true, entry)? {
        Step::Translate(reason) => reason,
        Step::Reject => return Err(Outcome::drop(Reason::NoBackend)),
    };
    // In the scratch's IPv4 reply slot (free: the IPv6 decision used `rep6`), off the stack.
    // SAFETY: as above.
    let narrow = unsafe { &mut (*scratch).rep };
    *narrow = CtEntry {
        src_addr: unmapped(&entry.src_addr),
        dst_addr: unmapped(&entry.dst_addr),
        src_port: entry.src_port,
        dst_port: entry.dst_port,
        dir: entry.dir,
        flags: entry.flags,
        tcp_flags: entry.tcp_flags,
        state: entry.state,
        backend_id: entry.backend_id,
        frontend_id: entry.frontend_id,
        created_ns: entry.created_ns,
        last_seen_ns: entry.last_seen_ns,
        packets: entry.packets,
        bytes: entry.bytes,
    };
    apply(ctx, &flow, narrow)?;
    Ok(Outcome::pass(reason))
}
