//! Program entry points and the per-flow logic.
use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::classifier,
    programs::TcContext,
};
use svc_common::{
    CtEntry, CtKey, FrontendKey, Hook, Reason, SlotKey, CT_DIR_FORWARD, CT_DIR_REPLY, SCOPE_ANY,
};

use crate::{
    maps::{SVC_BACKENDS, SVC_CT, SVC_FRONTENDS, SVC_SLOTS},
    nat::{rewrite, End},
    parse::{parse, Flow},
    reject::reject,
    stats::count,
    Outcome,
};

/// tc ingress on the host side of a pod veth: traffic leaving a pod.
#[classifier]
pub fn svc_pod_ingress(ctx: TcContext) -> i32 {
    let out = match pod_ingress(&ctx) {
        Ok(out) | Err(out) => out,
    };
    count(Hook::PodIngress, out.reason);
    out.verdict
}

/// tc egress on the host side of a pod veth: traffic entering a pod.
#[classifier]
pub fn svc_pod_egress(ctx: TcContext) -> i32 {
    let out = match pod_egress(&ctx) {
        Ok(out) | Err(out) => out,
    };
    count(Hook::PodEgress, out.reason);
    out.verdict
}

#[inline(always)]
fn ct_key(flow: &Flow, dir: u8) -> CtKey {
    CtKey {
        src_addr: flow.saddr,
        dst_addr: flow.daddr,
        src_port: flow.sport,
        dst_port: flow.dport,
        proto: flow.proto,
        dir,
        _pad: [0; 2],
    }
}

/// Refreshes a conntrack entry with this packet; returns where to translate to.
#[inline(always)]
fn ct_touch(entry: *mut CtEntry, flow: &Flow) -> ([u8; 4], u16) {
    // SAFETY: `entry` came from a successful map lookup. Concurrent updates of the same flow on
    // two CPUs can lose a counter increment; the counters are statistics, the NAT fields are
    // written once at creation.
    unsafe {
        (*entry).last_seen_ns = bpf_ktime_get_ns();
        (*entry).packets += 1;
        (*entry).bytes += flow.ip_len as u64;
        (*entry).tcp_flags |= flow.tcp_flags;
        ((*entry).nat_addr, (*entry).nat_port)
    }
}

#[inline(always)]
fn pod_ingress(ctx: &TcContext) -> Result<Outcome, Outcome> {
    let flow = parse(ctx)?;
    // Conntrack first: a known flow keeps its backend whatever has happened to its Service
    // since, including deletion; netfilter conntrack gives kube-proxy's flows the same
    // behaviour. The price is a second lookup for traffic that is not to a Service.
    let fwd = ct_key(&flow, CT_DIR_FORWARD);
    if let Some(entry) = SVC_CT.get_ptr_mut(&fwd) {
        let (addr, port) = ct_touch(entry, &flow);
        rewrite(ctx, &flow, End::Destination, addr, port)?;
        return Ok(Outcome::pass(Reason::DnatEstablished));
    }
    let fkey = FrontendKey {
        addr: flow.daddr,
        port: flow.dport,
        proto: flow.proto,
        scope: SCOPE_ANY,
    };
    // SAFETY: the value is copied out before any map update.
    let Some(frontend) = (unsafe { SVC_FRONTENDS.get(&fkey) }).copied() else {
        return Ok(Outcome::pass(Reason::NotService));
    };

    if frontend.backend_count == 0 {
        return reject(ctx, &flow);
    }
    let slot = SlotKey {
        frontend_id: frontend.id,
        // Multiply-shift maps a 32-bit random value onto 0..count: no division (cheaper than
        // `%` on BPF) and no modulo bias.
        // SAFETY: helper without arguments.
        slot: ((unsafe { bpf_get_prandom_u32() } as u64 * frontend.backend_count as u64) >> 32)
            as u32
            + 1,
    };
    // SAFETY: values copied out immediately.
    let backend_id = unsafe { SVC_SLOTS.get(&slot) }
        .map(|s| s.backend_id)
        .ok_or(Outcome::drop(Reason::BackendMissing))?;
    // SAFETY: as above.
    let backend = unsafe { SVC_BACKENDS.get(&backend_id) }
        .copied()
        .ok_or(Outcome::drop(Reason::BackendMissing))?;

    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut entry = CtEntry {
        nat_addr: backend.addr,
        nat_port: backend.port,
        tcp_flags: flow.tcp_flags,
        _pad: 0,
        backend_id,
        frontend_id: frontend.id,
        created_ns: now,
        last_seen_ns: now,
        packets: 1,
        bytes: flow.ip_len as u64,
    };
    // The reply entry is keyed by the tuple the backend will send, and restores the frontend.
    let reply = CtKey {
        src_addr: backend.addr,
        dst_addr: flow.saddr,
        src_port: backend.port,
        dst_port: flow.sport,
        proto: flow.proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    };
    let mut reason = Reason::DnatNew;
    if SVC_CT.insert(&fwd, &entry, 0).is_err() {
        reason = Reason::CtInsertFailed;
    }
    entry.nat_addr = flow.daddr;
    entry.nat_port = flow.dport;
    entry.tcp_flags = 0;
    entry.packets = 0;
    entry.bytes = 0;
    if SVC_CT.insert(&reply, &entry, 0).is_err() {
        reason = Reason::CtInsertFailed;
    }
    rewrite(ctx, &flow, End::Destination, backend.addr, backend.port)?;
    Ok(Outcome::pass(reason))
}

#[inline(always)]
fn pod_egress(ctx: &TcContext) -> Result<Outcome, Outcome> {
    let flow = parse(ctx)?;
    let reply = ct_key(&flow, CT_DIR_REPLY);
    let Some(entry) = SVC_CT.get_ptr_mut(&reply) else {
        return Ok(Outcome::pass(Reason::NotService));
    };
    let (addr, port) = ct_touch(entry, &flow);
    rewrite(ctx, &flow, End::Source, addr, port)?;
    Ok(Outcome::pass(Reason::RevNat))
}
