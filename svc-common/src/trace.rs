//! Trace events (`svc-agent trace`): the slots, the filter a tracer writes and the event the
//! programs write into its ring.
use bytemuck::{Pod, Zeroable};

use crate::Addr6;

// For the intra-doc links to the maps and types of the other modules.
#[cfg(doc)]
use crate::*;

/// Trace slots: tracers (`svc-agent trace`) that can run at once.
pub const TRACE_SLOTS: u32 = 8;
/// Frontend ids one [`TraceFilter`] can name (a Service's frontends: ports × addresses).
pub const TRACE_FRONTENDS: usize = 16;
/// Bytes of each trace ring buffer (a power of two and a multiple of the page size, as
/// `BPF_MAP_TYPE_RINGBUF` requires): 7 281 events of [`TraceEvent`]'s 64 bytes with their
/// 8-byte record headers, 4 369 of [`TraceEvent6`]'s 112.
pub const TRACE_RING_BYTES: u32 = 512 * 1024;

/// Value of [`MAP_TRACE_FILTERS`]: which packets one tracer wants. A packet matches when every
/// criterion that is set matches, judged on its tuple as received **or** as translated, in
/// either direction, so a client's requests and the replies to it (backend → client before the
/// reverse NAT, frontend → client after it) both match `--src client --dst frontend`.
///
/// The addresses are of one family ([`Self::addr_family`]): a filter naming IPv4 addresses
/// never matches an IPv6 packet, and the other way round.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct TraceFilter {
    /// One end of the flow, IPv4 (network order); zero = any. Read with
    /// `addr_family == AF_INET`.
    pub src_addr: [u8; 4],
    /// The other end, IPv4 (network order); zero = any.
    pub dst_addr: [u8; 4],
    /// Either port of either tuple (host order); 0 = any.
    pub port: u16,
    /// `PROTO_*`; 0 = any.
    pub proto: u8,
    /// How many of `frontend_ids` are set; 0 = any frontend, or none.
    pub frontend_count: u8,
    /// The flow's frontend must be one of these (a `--service`'s frontends).
    pub frontend_ids: [u32; TRACE_FRONTENDS],
    /// The tracer's process id: a slot whose owner is gone is freed by the next tracer or
    /// the agent. Not read by the programs.
    pub owner_pid: u32,
    /// The owner's start time (`/proc/PID/stat` field 22, clock ticks since boot), so a
    /// recycled pid is not taken for the tracer. Not read by the programs.
    pub owner_start: u64,
    /// Inode of the owner's pid namespace (`/proc/self/ns/pid`): only a process in the same
    /// pid namespace can tell whether the owner lives. Not read by the programs.
    pub owner_pidns: u64,
    /// One end of the flow, IPv6; zero = any. Read with `addr_family == AF_INET6`.
    pub src_addr6: Addr6,
    /// The other end, IPv6; zero = any.
    pub dst_addr6: Addr6,
    /// The family of the addresses asked for: [`AF_INET`] (`src_addr`, `dst_addr`),
    /// [`AF_INET6`] (`src_addr6`, `dst_addr6`), or 0 when the filter names no address (every
    /// packet of either family passes this criterion).
    pub addr_family: u8,
    /// Always zero.
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<TraceFilter>() == 136);

impl TraceFilter {
    /// Whether a packet of `family` (`AF_INET`, `AF_INET6`) can match: the filter names no
    /// address, or addresses of that family.
    #[inline(always)]
    pub fn wants_family(&self, family: u8) -> bool {
        self.addr_family == 0 || self.addr_family == family
    }
}

/// One trace event, as the programs write it into a tracer's ring ([`MAP_TRACE_RINGS`]):
/// [`TraceEvent`] (64 bytes) for an IPv4 packet, [`TraceEvent6`] (112 bytes) for an IPv6 one.
/// A ring holds both; a reader tells them apart by the record's length (and the hook: the
/// IPv6 programs have hooks of their own).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceEventOf<A> {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// [`Hook`] index.
    pub hook: u8,
    /// [`Reason`] index: why the program gave its verdict.
    pub reason: u8,
    /// `PROTO_*` of the packet (0 if it was not parsed that far).
    pub proto: u8,
    /// TCP flag byte of the packet.
    pub tcp_flags: u8,
    /// The program's return value (tc verdict, or XDP action for [`Hook::Xdp`]).
    pub verdict: i32,
    /// Packet length in bytes (skb length; frame length for XDP).
    pub len: u32,
    /// Interface the program ran on.
    pub ifindex: u32,
    /// The packet as received: source, destination (network order), ports (host order).
    /// An ICMP error carries the tuple of the flow it reports (quoted, reversed).
    pub src_addr: A,
    pub dst_addr: A,
    pub src_port: u16,
    pub dst_port: u16,
    /// The conntrack entry the verdict used ([`CtEntry`]'s rewrite: what the packet leaves
    /// with); all zero when no entry was found or made.
    pub to_src_addr: A,
    pub to_dst_addr: A,
    pub to_src_port: u16,
    pub to_dst_port: u16,
    /// The flow's frontend (also set for a reject); 0 when none.
    pub frontend_id: u32,
    /// The flow's backend; 0 when none.
    pub backend_id: u32,
    /// The entry's `CT_DIR_*`, `CT_F_*` and `CT_STATE_*`.
    pub ct_dir: u8,
    pub ct_flags: u8,
    pub ct_state: u8,
    /// Always zero.
    pub _pad: [u8; 5],
}
/// An IPv4 packet's trace event.
pub type TraceEvent = TraceEventOf<[u8; 4]>;
/// An IPv6 packet's trace event.
pub type TraceEvent6 = TraceEventOf<Addr6>;
pod_per_family!(TraceEventOf, |a| 8
    + 4
    + 4
    + 4
    + 4
    + 4 * a
    + 4 * 2
    + 4
    + 4
    + 3
    + 5);
const _: () = assert!(core::mem::size_of::<TraceEvent>() == 64);
const _: () = assert!(core::mem::size_of::<TraceEvent6>() == 112);
