//! Trace events for `svc-agent trace` (svc_common::TraceFilter / TraceEvent, TraceEvent6).
//!
//! Compiled once per address family, like `lb` (see `v4`): `A` is `[u8; 4]` in `v4::trace`
//! and `Addr6` in `v6::trace`, so each family's programs write their family's event, and a
//! filter naming addresses of one family never matches a packet of the other
//! (`TraceFilter::addr_family`).
//!
//! Every packet program ends in [`trace`] with what it saw and did. The cost while nobody
//! traces is one lookup in a one-entry array (`SVC_TRACE_ON`, which the verifier inlines into
//! a load) and a branch. While a tracer runs, [`emit`] (a BPF subprogram of its own: its frame
//! stays off the callers' 512 bytes except while it runs, and its code is not inlined into
//! every exit of every program) checks the packet against each slot in use and writes one
//! event into the ring of each tracer whose filter matches.
//!
//! With `--bpf-debug-log` (`SVC_DEBUG_LOG`), [`emit`] runs for every packet and
//! [`log_outcome`] writes an aya-log message for the outcomes worth a line in the agent's log
//! (new flows, refusals, failures). It sits here, at the programs' exits, rather than where
//! each decision is made: inside the new-flow subprogram its formatting code pushed
//! `svc_xdp`'s deepest call chain past the verifier's 512 bytes, even with the messages off.
//!
//! The rings are created by the tracers and reach the programs through `SVC_TRACE_RINGS`, an
//! array of maps: each tracer consumes its own ring, so two tracers never take each other's
//! events (a ring buffer has one consumer position).
use aya_ebpf::helpers::bpf_ktime_get_ns;
use svc_common::{
    Addr, CtEntryOf, Hook, Reason, TraceEventOf, TraceFilter, TRACE_FRONTENDS, TRACE_SLOTS,
};

use super::A;
use crate::{
    family::Family,
    maps::{SVC_TRACE_FILTERS, SVC_TRACE_LOST, SVC_TRACE_ON, SVC_TRACE_RINGS},
    parse::FlowOf,
};

type Flow = FlowOf<A>;
type CtEntry = CtEntryOf<A>;

/// Records `flow`'s outcome for the tracers that asked for it. `verdict` is what the program
/// returns, `reason` its `Reason` index; `entry` the conntrack entry the decision used (all
/// zero when none).
#[inline(always)]
pub(crate) fn trace(
    hook: Hook,
    flow: &Flow,
    entry: &CtEntry,
    verdict: i32,
    reason: u32,
    len: u32,
    ifindex: u32,
) {
    let on = match SVC_TRACE_ON.get(0) {
        Some(on) => *on,
        None => 0,
    };
    // `debug_log()` is a load-time constant: without `--bpf-debug-log` the verifier removes
    // the second half of this test and everything it guards in `emit`.
    if on != 0 || crate::debug_log() {
        let how = (on as u64) << 40 | (hook as u64) << 32 | (verdict as u32 as u64);
        emit(
            how,
            flow,
            entry,
            reason as u64,
            (len as u64) << 32 | ifindex as u64,
        );
    }
}

/// Whether `f` wants the packet: its protocol, a port of its tuple as received (`flow`) or as
/// rewritten (`entry`, all zero when there is no translation), and its two ends in either
/// order, before or after translation; a criterion left zero matches anything.
#[inline(always)]
fn wants(f: &TraceFilter, flow: &Flow, entry: &CtEntry) -> bool {
    if f.proto != 0 && f.proto != flow.proto {
        return false;
    }
    if !f.wants_family(<A as Addr>::FAMILY) {
        return false;
    }
    if f.port != 0
        && f.port != flow.sport
        && f.port != flow.dport
        && f.port != entry.src_port
        && f.port != entry.dst_port
    {
        return false;
    }
    let (s, d) = A::trace_ends(f);
    let any = |x: A| A::same(x, A::UNSPECIFIED);
    let ends = |a: A, b: A| {
        ((any(s) || A::same(s, a)) && (any(d) || A::same(d, b)))
            || ((any(s) || A::same(s, b)) && (any(d) || A::same(d, a)))
    };
    if !ends(flow.saddr, flow.daddr) && !ends(entry.src_addr, entry.dst_addr) {
        return false;
    }
    if f.frontend_count == 0 {
        return true;
    }
    let mut i = 0;
    while i < TRACE_FRONTENDS {
        if i < f.frontend_count as usize && f.frontend_ids[i] == entry.frontend_id {
            return true;
        }
        i += 1;
    }
    false
}

/// [`wants`] as a subprogram, for the family whose `Family::TRACE_MATCH_CALL` says so.
#[inline(never)]
fn wants_call(f: &TraceFilter, flow: &Flow, entry: &CtEntry) -> bool {
    wants(f, flow, entry)
}

/// The slow half of [`trace`], with its arguments packed into registers (a BPF call passes
/// five): `how` = slots in use << 40 | hook << 32 | verdict; `meta` = length << 32 | ifindex.
#[inline(never)]
fn emit(how: u64, flow: &Flow, entry: &CtEntry, reason: u64, meta: u64) {
    if crate::debug_log() {
        log_outcome(how, flow, entry, reason);
    }
    let on = (how >> 40) as u32;
    let mut slot = 0u32;
    while slot < TRACE_SLOTS {
        if on & (1 << slot) != 0 {
            if let Some(f) = SVC_TRACE_FILTERS.get(slot) {
                let wanted = if A::TRACE_MATCH_CALL {
                    wants_call(f, flow, entry)
                } else {
                    wants(f, flow, entry)
                };
                if wanted {
                    write(slot, how, flow, entry, reason, meta);
                }
            }
        }
        slot += 1;
    }
}

#[inline(always)]
fn write(slot: u32, how: u64, flow: &Flow, entry: &CtEntry, reason: u64, meta: u64) {
    let Some(ring) = SVC_TRACE_RINGS.get(slot) else {
        return;
    };
    // A full ring loses the event: the tracer reads too slowly, and the packet must not wait.
    // The loss is counted per slot and CPU, for the tracer to report.
    let Some(mut e) = ring.reserve_untyped::<TraceEventOf<A>>(0) else {
        if let Some(lost) = SVC_TRACE_LOST.get_ptr_mut(slot) {
            // SAFETY: this CPU's slot of a per-CPU array; programs on one CPU never nest.
            unsafe { *lost += 1 };
        }
        return;
    };
    let ev = e.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned, 8-byte aligned TraceEvent-sized
    // record; every field is written before it is submitted.
    unsafe {
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).hook = (how >> 32) as u8;
        (*ev).reason = reason as u8;
        (*ev).proto = flow.proto;
        (*ev).tcp_flags = flow.tcp_flags;
        (*ev).verdict = how as u32 as i32;
        (*ev).len = (meta >> 32) as u32;
        (*ev).ifindex = meta as u32;
        (*ev).src_addr = flow.saddr;
        (*ev).dst_addr = flow.daddr;
        (*ev).src_port = flow.sport;
        (*ev).dst_port = flow.dport;
        (*ev).to_src_addr = entry.src_addr;
        (*ev).to_dst_addr = entry.dst_addr;
        (*ev).to_src_port = entry.src_port;
        (*ev).to_dst_port = entry.dst_port;
        (*ev).frontend_id = entry.frontend_id;
        (*ev).backend_id = entry.backend_id;
        (*ev).ct_dir = entry.dir;
        (*ev).ct_flags = entry.flags;
        (*ev).ct_state = entry.state;
        (*ev)._pad = [0; 5];
    }
    e.submit(0);
}

/// One aya-log line for an outcome an operator debugging the datapath wants to see: a new flow
/// and its backend (debug), a flow refused or failed (warn); other outcomes are left to the
/// counters and to `svc-agent trace`. `how` = hook << 32 | verdict. Inlined into [`emit`],
/// whose frame is off the deep call chains: inlined into the programs' main functions it grew
/// their frames past the 512-byte chain limit, and as a subprogram of its own it would stay in
/// the loaded program, dead, when the messages are off.
#[inline(always)]
fn log_outcome(how: u64, flow: &Flow, entry: &CtEntry, reason: u64) {
    let hook = (how >> 32) as u8 as u32;
    let verdict = how as u32 as i32;
    let reason = crate::reason_from(reason as u32);
    let (saddr, daddr, sport, dport) = (flow.saddr.log(), flow.daddr.log(), flow.sport, flow.dport);
    let (to_src, to_dst) = (entry.src_addr.log(), entry.dst_addr.log());
    let (fe, be) = (entry.frontend_id, entry.backend_id);
    // The contexts of aya-log's macros are unused (`let _ = ctx`); `()` stands in.
    match reason {
        Reason::DnatNew | Reason::ClashRemapped | Reason::CtReopened | Reason::CtPickedUp => {
            aya_log_ebpf::debug!(
                (),
                "hook {} new flow {:i}:{} -> {:i}:{} proto {}: frontend {} backend {} {:i}:{} \
                 from {:i}:{} (reason {})",
                hook,
                saddr,
                sport,
                daddr,
                dport,
                flow.proto,
                fe,
                be,
                to_dst,
                entry.dst_port,
                to_src,
                entry.src_port,
                reason as u32
            )
        }
        Reason::BackendMissing
        | Reason::SnatNoPort
        | Reason::SnatNoAddress
        | Reason::FibFailed
        | Reason::CtCollision
        | Reason::RewriteFailed => aya_log_ebpf::warn!(
            (),
            "hook {} {:i}:{} -> {:i}:{} proto {}: failed (reason {}, verdict {}), frontend {}",
            hook,
            saddr,
            sport,
            daddr,
            dport,
            flow.proto,
            reason as u32,
            verdict,
            fe
        ),
        Reason::NoBackend | Reason::SourceRangeDenied | Reason::PolicyDrop => {
            aya_log_ebpf::debug!(
                (),
                "hook {} {:i}:{} -> {:i}:{} proto {}: refused (reason {}, verdict {}), frontend {}",
                hook,
                saddr,
                sport,
                daddr,
                dport,
                flow.proto,
                reason as u32,
                verdict,
                fe
            )
        }
        _ => {}
    }
}
