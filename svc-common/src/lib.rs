//! The ABI shared by the kernel programs (`svc-ebpf`) and the agent (`svc-agent`).
//!
//! # Layout
//! This crate alone defines the map names, key/value structs, capacities, flag bits and counter
//! indices. Both sides compile against it, so a layout mismatch is a compile error, not a silent
//! corruption. Every type is `#[repr(C)]` with explicit `_pad` fields and a size assertion, and
//! derives `bytemuck::Pod`, so the compiler proves it has no padding; none holds a `bool`, enum
//! or `Option`. Addresses are `[u8; 4]` in network order (so `bpftool map dump` prints
//! `[10,96,0,10]`), ports are `u16` in **host** order (so a dump prints `80`, not `20480`).
//!
//! The service model follows Cilium's `lb4_*` maps:
//! - [`FrontendKey`] → [`Frontend`] in [`MAP_FRONTENDS`]: one entry per (address, port, protocol)
//!   the node serves; the value carries the frontend id and how many backend slots are valid.
//! - [`SlotKey`] `{frontend_id, slot}` → [`Slot`] in [`MAP_SLOTS`]: slots `1..=backend_count`
//!   name the backend ids the frontend balances across. There is no slot 0 entry: the count that
//!   Cilium keeps in slot 0 lives in the frontend value itself, one lookup earlier.
//! - backend id → [`Backend`] in [`MAP_BACKENDS`]: address and port of one endpoint. Backends are
//!   shared by every frontend that uses the same (address, port, protocol).
//! - [`CtKey`] → [`CtEntry`] in [`MAP_CONNTRACK`]: an LRU connection table. A new flow writes two
//!   entries: the *forward* one (keyed by the tuple the client sends: client → frontend) and the
//!   *reply* one (keyed by the tuple the backend sends: backend → client, or → the SNAT address).
//!   Each entry holds the complete source and destination to write, so one entry serves DNAT,
//!   DNAT+SNAT (remote backends of external traffic) and hairpin alike. The reply entry **is**
//!   the reverse-NAT table: replies cost a single lookup, and an established flow keeps its
//!   translation after its Service is removed, as netfilter conntrack does for kube-proxy.
//!   The direction is in the value, not the key, so every hook finds either direction with one
//!   lookup. The two tuples never coincide: a forward tuple's destination is a frontend, a reply
//!   tuple's source is a backend; frontends are never pod addresses, and SNAT ports
//!   ([`SnatPorts`]) never overlap NodePorts.
//! - [`SourceRangeKey`] in [`MAP_SOURCE_RANGES`]: an LPM trie of the client prefixes allowed to
//!   open flows to frontends flagged [`FRONTEND_F_SOURCE_RANGES`] (`loadBalancerSourceRanges`).
//! - [`Config`] in [`MAP_CONFIG`]: per-node settings the agent writes once at start.
//! - per-CPU counters in [`MAP_STATS`], indexed by [`stat_index`]`(hook, reason)`.
//!
//! # Update order (the invariant the agent keeps)
//! A packet reads the frontend, then one slot, then one backend. So the agent writes backends,
//! then slots, then the frontend (with its count) last; it shrinks by writing the smaller count
//! first and deleting the surplus slots after; it deletes a frontend before its slots, and a
//! backend only when no slot names it. A packet therefore never sees a count that points at a
//! missing slot or a slot that names a missing backend.
#![no_std]

use bytemuck::{Pod, Zeroable};

/// `bytemuck::Pod` and `Zeroable` for both instantiations of a struct generic over its address
/// width. bytemuck's derive does not take generic `repr(C)` structs (it cannot prove the
/// absence of padding for every parameter), so the proof is written here per instantiation:
/// `$size` computes the sum of the field sizes from the address width `a`, and the assertion
/// that the struct is exactly that large is the proof that it has no padding (every field is
/// itself `Pod`: arrays of `u8` and unsigned integers).
macro_rules! pod_per_family {
    ($t:ident, |$a:ident| $size:expr) => {
        pod_per_family!(@one $t, [u8; 4], 4, |$a| $size);
        pod_per_family!(@one $t, Addr6, 16, |$a| $size);
    };
    (@one $t:ident, $ty:ty, $width:expr, |$a:ident| $size:expr) => {
        const _: () = {
            let $a: usize = $width;
            assert!(core::mem::size_of::<$t<$ty>>() == $size);
        };
        // SAFETY: repr(C), every field Pod (u8 arrays and unsigned integers), and no padding:
        // the size equals the sum of the field sizes (asserted just above). An all-zero value
        // is valid.
        unsafe impl Zeroable for $t<$ty> {}
        // SAFETY: as above; `Copy + 'static` by derive.
        unsafe impl Pod for $t<$ty> {}
    };
}

mod ct;
mod stats;
mod trace;
pub use ct::*;
pub use stats::*;
pub use trace::*;

/// Pinned name (and ELF symbol name) of the frontend map.
pub const MAP_FRONTENDS: &str = "SVC_FRONTENDS";
/// Pinned name of the backend-slot map.
pub const MAP_SLOTS: &str = "SVC_SLOTS";
/// Pinned name of the backend map.
pub const MAP_BACKENDS: &str = "SVC_BACKENDS";
/// Pinned name of the conntrack map.
pub const MAP_CONNTRACK: &str = "SVC_CT";
/// Pinned name of the per-CPU counter array.
pub const MAP_STATS: &str = "SVC_STATS";
/// Pinned name of the one-entry node configuration array.
pub const MAP_CONFIG: &str = "SVC_CONFIG";
/// Pinned name of the socket-LB reverse map (cgroup hooks: socket + backend → frontend).
pub const MAP_SOCK_REVNAT: &str = "SVC_SOCK_REV";
/// Pinned name of the set of removed (frontend, backend) UDP pairs whose connected sockets
/// the socket iterator destroys; filled and emptied by the agent around each run.
pub const MAP_SOCK_DOOMED: &str = "SVC_SOCK_DOOMED";
/// Pinned name of the session-affinity map (`sessionAffinity: ClientIP`).
pub const MAP_AFFINITY: &str = "SVC_AFFINITY";
/// Pinned name of the IPv4 fragment map: the ports of a datagram whose first fragment was seen,
/// so that its later fragments (which carry no L4 header) are translated too.
pub const MAP_FRAGS: &str = "SVC_FRAGS";
/// Pinned name of the per-CPU budget for packets the datapath generates (rejects, ICMP errors).
pub const MAP_RATELIMIT: &str = "SVC_RATELIMIT";
/// Pinned name of the per-CPU scratch memory of the programs (kept off the 512-byte BPF
/// stack).
pub const MAP_SCRATCH: &str = "SVC_SCRATCH";
/// Pinned name of the `loadBalancerSourceRanges` LPM trie: (frontend id, client prefix) → 1.
pub const MAP_SOURCE_RANGES: &str = "SVC_SOURCE_RANGES";
/// Pinned name of the tracing switch: one `u32` (index 0) whose bit `i` says that trace slot
/// `i` is in use ([`TraceFilter`]). The programs read it once per packet; 0 means nobody traces.
pub const MAP_TRACE_ON: &str = "SVC_TRACE_ON";
/// Pinned name of the trace filters: [`TRACE_SLOTS`] × [`TraceFilter`], one per tracer.
pub const MAP_TRACE_FILTERS: &str = "SVC_TRACE_FILTERS";
/// Pinned name of the trace rings: an array of [`TRACE_SLOTS`] ring buffers (map in map),
/// each created by the tracer that owns the slot and read by it alone ([`TraceEvent`]s).
pub const MAP_TRACE_RINGS: &str = "SVC_TRACE_RINGS";
/// Pinned name of the lost-event counters: per CPU, per trace slot, the events the programs
/// could not write because the slot's ring was full. A tracer zeroes its slot's counters when
/// it claims the slot and reports them when it exits.
pub const MAP_TRACE_LOST: &str = "SVC_TRACE_LOST";
/// Pinned name of the IPv6 frontend map ([`FrontendKey6`] → [`Frontend`]).
pub const MAP_FRONTENDS6: &str = "SVC_FRONTENDS6";
/// Pinned name of the IPv6 backend map (backend id → [`Backend6`]).
pub const MAP_BACKENDS6: &str = "SVC_BACKENDS6";
/// Pinned name of the IPv6 conntrack map ([`CtKey6`] → [`CtEntry6`]).
pub const MAP_CONNTRACK6: &str = "SVC_CT6";
/// Pinned name of the IPv6 session-affinity map ([`AffinityKey6`] → [`Affinity6`]).
pub const MAP_AFFINITY6: &str = "SVC_AFFINITY6";
/// Pinned name of the IPv6 fragment map ([`FragKey6`] → [`FragPorts`]).
pub const MAP_FRAGS6: &str = "SVC_FRAGS6";
/// Pinned name of the IPv6 `loadBalancerSourceRanges` trie ([`SourceRangeKey6`]).
pub const MAP_SOURCE_RANGES6: &str = "SVC_SOURCE_RANGES6";
/// Pinned name of the IPv6 socket-LB reverse map ([`SockKey6`] → [`SockRevNat6`]).
pub const MAP_SOCK_REVNAT6: &str = "SVC_SOCK_REV6";
/// Pinned name of the IPv6 tc programs' array: the IPv4 program of each tc hook tail-calls
/// entry [`PROGS6`]`[i].1` for IPv6 frames.
pub const MAP_PROGS6: &str = "SVC_PROGS6";
/// The IPv6 tc programs by their index in [`MAP_PROGS6`], with the IPv4 program that hands
/// IPv6 frames over to each.
pub const PROGS6: [(&str, u32, &str); 4] = [
    ("svc_pod_ingress6", 0, "svc_pod_ingress"),
    ("svc_pod_egress6", 1, "svc_pod_egress"),
    ("svc_uplink_ingress6", 2, "svc_uplink_ingress"),
    ("svc_uplink_egress6", 3, "svc_uplink_egress"),
];
/// Entries of [`MAP_PROGS6`].
pub const PROGS6_LEN: u32 = PROGS6.len() as u32;
/// Pinned name of the IPv6 XDP program's array: `svc_xdp` tail-calls entry
/// [`XDP_PROGS6`]`[i].1` for IPv6 frames. A tail call's target must have its caller's program
/// type, so the XDP program cannot share [`MAP_PROGS6`] with the tc ones.
pub const MAP_XDP_PROGS6: &str = "SVC_XDP_PROGS6";
/// The IPv6 XDP programs by their index in [`MAP_XDP_PROGS6`], with the IPv4 program that
/// hands IPv6 frames over to each.
pub const XDP_PROGS6: [(&str, u32, &str); 1] = [("svc_xdp6", 0, "svc_xdp")];
/// Entries of [`MAP_XDP_PROGS6`].
pub const XDP_PROGS6_LEN: u32 = XDP_PROGS6.len() as u32;
/// Every map the agent pins, in the order it lists them.
pub const ALL_MAPS: [&str; 26] = [
    MAP_FRONTENDS,
    MAP_SLOTS,
    MAP_BACKENDS,
    MAP_CONNTRACK,
    MAP_STATS,
    MAP_CONFIG,
    MAP_SOCK_REVNAT,
    MAP_AFFINITY,
    MAP_FRAGS,
    MAP_RATELIMIT,
    MAP_SCRATCH,
    MAP_SOURCE_RANGES,
    MAP_TRACE_ON,
    MAP_TRACE_FILTERS,
    MAP_TRACE_RINGS,
    MAP_TRACE_LOST,
    MAP_SOCK_DOOMED,
    MAP_FRONTENDS6,
    MAP_BACKENDS6,
    MAP_CONNTRACK6,
    MAP_AFFINITY6,
    MAP_FRAGS6,
    MAP_SOURCE_RANGES6,
    MAP_SOCK_REVNAT6,
    MAP_PROGS6,
    MAP_XDP_PROGS6,
];

/// An address as the maps hold it, network order: `[u8; 4]` (IPv4) or [`Addr6`] (IPv6).
/// The structs that differ between the families only in the width of their addresses are
/// generic over it (`FrontendKeyOf<A>`, `CtKeyOf<A>`, …, with the aliases `FrontendKey` /
/// `FrontendKey6` …), so the kernel programs and the agent write one decision for both
/// families and the compiler instantiates it per family. Each family has maps of its own
/// (`SVC_CT` / `SVC_CT6`, …): an IPv4 packet never pays for an IPv6-wide key (see
/// docs/ARCHITECTURE.md, "IPv6", for the measured choice).
pub trait Addr:
    Copy + Eq + Ord + core::hash::Hash + core::fmt::Debug + Pod + sealed::Sealed + 'static
{
    /// `AF_INET` or `AF_INET6` (what `bpf_fib_lookup` and socket addresses name).
    const FAMILY: u8;
    /// The address's width in bits (an LPM trie lookup of a whole address).
    const BITS: u32;
    /// The all-zero address (`0.0.0.0`, `::`): "none" where a value needs one.
    const UNSPECIFIED: Self;
    /// The family's session-affinity value ([`Affinity`], [`Affinity6`]).
    type Affinity: Pod + core::fmt::Debug + PartialEq;
    /// `(backend_id, backend_addr, backend_port, last_used_ns)` of an affinity value (for the
    /// agent; the kernel programs, compiled per family, read the fields).
    fn affinity_parts(a: &Self::Affinity) -> (u32, Self, u16, u64);

    /// The conntrack key of a 5-tuple ([`CtKeyOf::new`] for IPv4, built without a `memset`).
    fn ct_key(src: Self, dst: Self, sport: u16, dport: u16, proto: u8) -> CtKeyOf<Self>;
}

mod sealed {
    /// Only the two address widths are [`super::Addr`]s.
    pub trait Sealed {}
    impl Sealed for [u8; 4] {}
    impl Sealed for super::Addr6 {}
}

/// `AF_INET`.
pub const AF_INET: u8 = 2;
/// `AF_INET6`.
pub const AF_INET6: u8 = 10;

impl Addr for [u8; 4] {
    const FAMILY: u8 = AF_INET;
    const BITS: u32 = 32;
    const UNSPECIFIED: Self = [0; 4];
    type Affinity = Affinity;

    fn affinity_parts(a: &Affinity) -> (u32, Self, u16, u64) {
        (a.backend_id, a.backend_addr, a.backend_port, a.last_used_ns)
    }

    #[inline(always)]
    fn ct_key(src: Self, dst: Self, sport: u16, dport: u16, proto: u8) -> CtKey {
        CtKey::new(src, dst, sport, dport, proto)
    }
}

/// An IPv6 address as the maps hold it: 16 bytes in network order (`bpftool map dump` prints
/// them as bytes, like the IPv4 `[u8; 4]`), 4-byte aligned. A bare `[u8; 16]` has alignment 1,
/// and inside keys aligned to 2 (ports) the eBPF programs moved and compared every address
/// byte by byte or half-word by half-word: the IPv6 programs came out twice the size of the
/// IPv4 ones with frames over the verifier's 512 bytes. Aligned, they move words.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct Addr6 {
    /// The address, network order.
    pub octets: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Addr6>() == 16);

impl Addr6 {
    /// The address as four 32-bit words, as they lie in memory.
    #[inline(always)]
    pub fn words(&self) -> &[u32; 4] {
        bytemuck::cast_ref(self)
    }
}

impl AsRef<[u8]> for Addr6 {
    fn as_ref(&self) -> &[u8] {
        &self.octets
    }
}

impl AsMut<[u8]> for Addr6 {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.octets
    }
}

impl From<[u8; 16]> for Addr6 {
    fn from(octets: [u8; 16]) -> Self {
        Self { octets }
    }
}

impl From<core::net::Ipv6Addr> for Addr6 {
    fn from(a: core::net::Ipv6Addr) -> Self {
        Self { octets: a.octets() }
    }
}

impl From<Addr6> for core::net::Ipv6Addr {
    fn from(a: Addr6) -> Self {
        core::net::Ipv6Addr::from(a.octets)
    }
}

impl Addr for Addr6 {
    const FAMILY: u8 = AF_INET6;
    const BITS: u32 = 128;
    const UNSPECIFIED: Self = Self { octets: [0; 16] };
    type Affinity = Affinity6;

    fn affinity_parts(a: &Affinity6) -> (u32, Self, u16, u64) {
        (a.backend_id, a.backend_addr, a.backend_port, a.last_used_ns)
    }

    #[inline(always)]
    fn ct_key(src: Self, dst: Self, sport: u16, dport: u16, proto: u8) -> CtKey6 {
        CtKey6::new(src, dst, sport, dport, proto)
    }
}

/// Capacity of [`MAP_FRONTENDS`]: 128k frontends (the benchmarks program 100k; a large
/// cluster has 10k Services × a few ports × a few addresses).
pub const MAX_FRONTENDS: u32 = 131_072;
/// Capacity of [`MAP_SLOTS`]: total backend slots over all frontends.
pub const MAX_SLOTS: u32 = 1_048_576;
/// Capacity of [`MAP_BACKENDS`].
pub const MAX_BACKENDS: u32 = 262_144;
/// Capacity of [`MAP_CONNTRACK`] (LRU: the least recently used flow is evicted when full).
/// Two entries per flow.
pub const MAX_CONNTRACK: u32 = 262_144;
/// Most backends one frontend may balance across (slot numbers are `1..=MAX_BACKENDS_PER_FRONTEND`).
pub const MAX_BACKENDS_PER_FRONTEND: u32 = 65_535;

/// IP protocol numbers as stored in [`FrontendKey::proto`], [`Backend::proto`], [`CtKey::proto`].
pub const PROTO_TCP: u8 = 6;
/// See [`PROTO_TCP`].
pub const PROTO_UDP: u8 = 17;

/// [`FrontendKey::scope`]: the entry every hook looks up first.
pub const SCOPE_ANY: u8 = 0;
/// [`FrontendKey::scope`]: the backends for traffic from *outside* the cluster (the uplink
/// hooks), present only when the [`SCOPE_ANY`] entry has [`FRONTEND_F_EXTERNAL_SCOPE`]. This is
/// how `externalTrafficPolicy: Local` keeps in-cluster clients on every endpoint (as
/// kube-proxy does) while external ones get only this node's.
pub const SCOPE_EXTERNAL: u8 = 1;

/// [`Frontend::flags`]: an entry with [`SCOPE_EXTERNAL`] exists for this key; uplink hooks use
/// it for new flows instead of this one.
pub const FRONTEND_F_EXTERNAL_SCOPE: u32 = 1;
/// [`Frontend::flags`]: with no backend, drop instead of rejecting (traffic policy `Local`
/// with no local endpoint: kube-proxy drops so that the client's load balancer retries
/// another node).
pub const FRONTEND_F_DROP_NO_BACKEND: u32 = 2;
/// [`Frontend::flags`]: a NodePort or localhost NodePort (for inspection).
pub const FRONTEND_F_NODEPORT: u32 = 4;
/// [`Frontend::flags`]: an external IP or LoadBalancer ingress IP (for inspection).
pub const FRONTEND_F_EXTERNAL_IP: u32 = 8;
/// [`Frontend::flags`]: a LoadBalancer ingress IP of a Service with `loadBalancerSourceRanges`.
/// A new flow whose source is in no [`MAP_SOURCE_RANGES`] prefix of this frontend's id is
/// dropped ([`Reason::SourceRangeDenied`]), as kube-proxy's `firewall-check` chain drops it.
/// The agent writes the prefixes before the flag and removes them after it.
pub const FRONTEND_F_SOURCE_RANGES: u32 = 16;
/// [`Frontend::flags`], only with [`FRONTEND_F_SOURCE_RANGES`]: no prefix contains a node
/// address, so the node's own processes are refused too (the socket hooks fail `connect()` and
/// `sendmsg()` with `EPERM`). Decided by the agent because a socket call has no source address
/// yet; kube-proxy allows node traffic exactly when a range contains the node IP.
pub const FRONTEND_F_DENY_NODE: u32 = 32;

/// First port of the object's built-in SNAT range ([`SnatPorts::DEFAULT`]), the one a datapath
/// loaded without the agent uses. Above Linux's default ephemeral range (32768–60999) so node
/// sockets never collide with it, and above the NodePort range (30000–32767). The agent
/// replaces it at load time with `--snat-port-range` or a larger range computed from the node.
pub const SNAT_PORT_MIN: u16 = 61_000;
/// Last port of the built-in SNAT range.
pub const SNAT_PORT_MAX: u16 = 65_535;

/// Name of the load-time global (`.rodata`, a [`SnatPorts`]) holding the source ports the
/// datapath allocates for source NAT (remote backends of external traffic) and for the
/// remapping of a client port that clashes with a live flow.
pub const GLOBAL_SNAT_PORTS: &str = "SVC_SNAT_PORTS";

/// The source ports source NAT allocates from: up to two contiguous ranges, range `k` being
/// `first[k]..first[k] + count[k]`. A zero count means range `k` is unused; the agent always
/// passes a total of at least one port, and ranges that do not overlap (overlapping ranges
/// would only make some ports likelier). Two ranges, not one, because the ports that are safe
/// on a node are the complement of the ephemeral range and the NodePort range, which is two
/// pieces on a default Linux node (1024–29999 and 61000–65535).
///
/// The datapath names a port by an index in `0..`[`total`](Self::total) and maps it with
/// [`port`](Self::port), without a branch (the index is random, so a branch would double the
/// verifier's paths in every retry of `commit`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SnatPorts {
    /// First port of each range, host order.
    pub first: [u16; 2],
    /// Number of ports of each range (0: unused). A `u16` holds any valid range: ports
    /// 1–65535 are 65535 ports.
    pub count: [u16; 2],
}
const _: () = assert!(core::mem::size_of::<SnatPorts>() == 8);

impl SnatPorts {
    /// [`SNAT_PORT_MIN`]`..=`[`SNAT_PORT_MAX`] alone: the object's built-in default (what
    /// fixture tests get when they load the object without the agent).
    pub const DEFAULT: Self = Self {
        first: [SNAT_PORT_MIN, 0],
        count: [SNAT_PORT_MAX - SNAT_PORT_MIN + 1, 0],
    };

    /// How many ports the two ranges hold.
    #[inline(always)]
    pub const fn total(&self) -> u32 {
        self.count[0] as u32 + self.count[1] as u32
    }

    /// The `i`-th port, `i` in `0..total()`: ports of range 0 first, then range 1. Branch
    /// free: `i - count[0]` wraps (bit 31 set) exactly when `i` lies in range 0, and the sign
    /// spreads into an all-ones mask that selects between the two candidates.
    #[inline(always)]
    pub const fn port(&self, i: u32) -> u16 {
        let c0 = self.count[0] as u32;
        let off1 = i.wrapping_sub(c0);
        let in_first = ((off1 as i32) >> 31) as u32;
        let p0 = (self.first[0] as u32).wrapping_add(i);
        let p1 = (self.first[1] as u32).wrapping_add(off1);
        ((p0 & in_first) | (p1 & !in_first)) as u16
    }

    /// Range `k` (0 or 1) as an inclusive range, `None` when unused.
    pub fn range(&self, k: usize) -> Option<core::ops::RangeInclusive<u16>> {
        let count = *self.count.get(k)?;
        (count != 0).then(|| {
            let first = self.first[k];
            first..=first.wrapping_add(count - 1)
        })
    }

    /// Whether `port` is one of the ports.
    pub fn contains(&self, port: u16) -> bool {
        (0..2).any(|k| self.range(k).is_some_and(|r| r.contains(&port)))
    }
}
/// How many random ports a new flow tries before giving up with [`Reason::SnatNoPort`]. A port
/// held by an expired or closed flow is taken over, so with short flows nearly every first try
/// succeeds; 16 tries fail only when more than ~75 % of the range is held by live flows to the
/// same backend (0.75^16 ≈ 1 %).
pub const SNAT_ATTEMPTS: u32 = 16;

/// Lookup key of [`MAP_FRONTENDS`] ([`FrontendKey`]) and [`MAP_FRONTENDS6`] ([`FrontendKey6`]):
/// one address, port and protocol a Service is reached on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKeyOf<A> {
    /// Frontend address, network order (a ClusterIP, node address, external or LB IP).
    pub addr: A,
    /// Frontend port, host order (`spec.ports[].port`, or `nodePort`).
    pub port: u16,
    /// IP protocol number ([`PROTO_TCP`], [`PROTO_UDP`]).
    pub proto: u8,
    /// Which sources this entry applies to ([`SCOPE_ANY`]).
    pub scope: u8,
}
/// IPv4 key of [`MAP_FRONTENDS`].
pub type FrontendKey = FrontendKeyOf<[u8; 4]>;
/// IPv6 key of [`MAP_FRONTENDS6`].
pub type FrontendKey6 = FrontendKeyOf<Addr6>;
pod_per_family!(FrontendKeyOf, |a| a + 2 + 1 + 1);

/// Value of [`MAP_FRONTENDS`]. Written by the agent only, always *after* the slots it counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Frontend {
    /// Frontend id: the first half of every [`SlotKey`] of this frontend, and what conntrack
    /// entries record. Allocated by the agent, unique among live frontends, never 0.
    pub id: u32,
    /// Number of valid slots, `1..=backend_count`. 0 means "no usable endpoint": the datapath
    /// rejects new flows to this frontend with a TCP RST or ICMP port unreachable, as
    /// kube-proxy does (counted as [`Reason::NoBackend`]).
    pub backend_count: u32,
    /// `FRONTEND_F_*` bits.
    pub flags: u32,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 = no affinity.
    pub affinity_timeout_s: u32,
}
const _: () = assert!(core::mem::size_of::<Frontend>() == 16);

/// Key of [`MAP_SLOTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct SlotKey {
    /// [`Frontend::id`] of the owning frontend.
    pub frontend_id: u32,
    /// Slot number, `1..=Frontend::backend_count`.
    pub slot: u32,
}
const _: () = assert!(core::mem::size_of::<SlotKey>() == 8);

/// Value of [`MAP_SLOTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Slot {
    /// Key into [`MAP_BACKENDS`]; never 0.
    pub backend_id: u32,
}
const _: () = assert!(core::mem::size_of::<Slot>() == 4);

/// Value of [`MAP_BACKENDS`] ([`Backend`]) and [`MAP_BACKENDS6`] ([`Backend6`]), keyed by a
/// `u32` backend id, never 0. Ids are one space over both maps: a slot names an id, and the
/// family of the frontend that owns the slot says which map holds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendOf<A> {
    /// Endpoint address, network order.
    pub addr: A,
    /// Endpoint port, host order (the resolved `targetPort`).
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
}
/// IPv4 value of [`MAP_BACKENDS`].
pub type Backend = BackendOf<[u8; 4]>;
/// IPv6 value of [`MAP_BACKENDS6`].
pub type Backend6 = BackendOf<Addr6>;
pod_per_family!(BackendOf, |a| a + 2 + 1 + 1);

/// [`Backend::flags`]: the endpoint is terminating (used only because no ready one exists).
pub const BACKEND_F_TERMINATING: u8 = 1;
/// [`Backend::flags`]: the endpoint runs on this node (its `nodeName` is ours). External
/// traffic to a local backend keeps the client's address; to a remote one it is source-NATed
/// so the reply comes back through this node.
pub const BACKEND_F_LOCAL: u8 = 2;

/// Value of [`MAP_CONFIG`] (one entry, index 0), written by the agent at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Config {
    /// This node's primary address (network order): the SNAT source when the FIB names none.
    pub node_addr: [u8; 4],
    /// `CONFIG_F_*` bits.
    pub flags: u32,
    /// Network-namespace cookie of the node (`SO_NETNS_COOKIE`): cgroup socket hooks tell the
    /// node's own sockets (every Service, localhost NodePorts included) from pods' sockets
    /// (translated only with [`CONFIG_F_SOCK_PODS`], never for their own loopback).
    pub netns_cookie: u64,
    /// This node's primary IPv6 address: the SNAT source of IPv6 flows when the FIB names
    /// none; all zero when the node has none (IPv6 flows that need SNAT are then dropped).
    pub node_addr6: Addr6,
}
const _: () = assert!(core::mem::size_of::<Config>() == 32);
/// [`Config::flags`]: socket-level load balancing for pods (`--pod-socket-lb on`). The cgroup
/// hooks translate sockets of every other network namespace of their cgroup too, so a pod's
/// connection goes straight to its backend and its packets need no NAT.
pub const CONFIG_F_SOCK_PODS: u32 = 1;
/// [`Config::flags`]: the agent can destroy sockets (`bpf_sock_destroy`, Linux 6.5, from its
/// UDP socket iterator). Without it a pod's `connect()` on a UDP socket is left to the
/// per-packet path, where conntrack follows backend changes: a connected socket translated in
/// the call would keep a backend that left the Service until the application closed it.
pub const CONFIG_F_SOCK_DESTROY: u32 = 2;

/// The data of a [`MAP_SOURCE_RANGES`] ([`SourceRangeKey`]) or [`MAP_SOURCE_RANGES6`]
/// ([`SourceRangeKey6`]) key, after its `u32` prefix length (an LPM trie key is
/// `{prefix_len, data}`, aya's `lpm_trie::Key<SourceRangeKey>`, 12 bytes). The prefix length
/// is [`SOURCE_RANGE_ID_BITS`] + the CIDR length, so the frontend id always matches whole (its
/// byte order is then irrelevant, so it is kept in host order, readable in a dump) and the
/// address matches on the CIDR's bits. A lookup uses `SOURCE_RANGE_ID_BITS` + the address's
/// bits (32 or 128) and the packet's source.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeKeyOf<A> {
    /// [`Frontend::id`] of the frontend the prefix belongs to.
    pub frontend_id: u32,
    /// The prefix's network address (host bits zero), network order.
    pub addr: A,
}
/// IPv4 [`MAP_SOURCE_RANGES`] key data.
pub type SourceRangeKey = SourceRangeKeyOf<[u8; 4]>;
/// IPv6 [`MAP_SOURCE_RANGES6`] key data.
pub type SourceRangeKey6 = SourceRangeKeyOf<Addr6>;
pod_per_family!(SourceRangeKeyOf, |a| 4 + a);
/// Bits of a [`SourceRangeKey`] before the address: the frontend id.
pub const SOURCE_RANGE_ID_BITS: u32 = 32;
/// Value of every [`MAP_SOURCE_RANGES`] entry (the trie is a set).
pub const SOURCE_RANGE_ALLOW: u8 = 1;
/// Capacity of [`MAP_SOURCE_RANGES`]: (frontend × prefix) entries over all Services. An LPM
/// trie is never preallocated, so the capacity costs nothing until used.
pub const MAX_SOURCE_RANGES: u32 = 262_144;

/// Key of [`MAP_SOCK_REVNAT`]: a socket and the backend it was sent to by a cgroup hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct SockKey {
    /// `bpf_get_socket_cookie()` of the socket.
    pub cookie: u64,
    /// Backend address, network order.
    pub backend_addr: [u8; 4],
    /// Backend port, host order.
    pub backend_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Always zero.
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<SockKey>() == 16);

/// Key of [`MAP_SOCK_REVNAT6`]: [`SockKey`] for an IPv6 socket (the pad makes the size a
/// multiple of the cookie's alignment).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct SockKey6 {
    /// `bpf_get_socket_cookie()` of the socket.
    pub cookie: u64,
    /// Backend address, network order.
    pub backend_addr: Addr6,
    /// Backend port, host order.
    pub backend_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Always zero.
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<SockKey6>() == 32);

/// Value of [`MAP_SOCK_REVNAT`] ([`SockRevNat`]) and [`MAP_SOCK_REVNAT6`] ([`SockRevNat6`]):
/// the frontend the application asked for, restored on `recvmsg` (UDP replies) and
/// `getpeername`, and the (frontend, backend) pair the choice was made from, which the socket
/// iterator matches against [`MAP_SOCK_DOOMED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNatOf<A> {
    /// Frontend address, network order.
    pub addr: A,
    /// Frontend port, host order.
    pub port: u16,
    /// Always zero.
    pub _pad: u16,
    /// [`Frontend::id`] of the frontend.
    pub frontend_id: u32,
    /// Backend id the socket was sent to (a [`MAP_BACKENDS`] key when chosen).
    pub backend_id: u32,
}
/// IPv4 value of [`MAP_SOCK_REVNAT`].
pub type SockRevNat = SockRevNatOf<[u8; 4]>;
/// IPv6 value of [`MAP_SOCK_REVNAT6`].
pub type SockRevNat6 = SockRevNatOf<Addr6>;
pod_per_family!(SockRevNatOf, |a| a + 2 + 2 + 4 + 4);

/// Key of [`MAP_SOCK_DOOMED`]: a (frontend, backend) pair a plan removed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct DoomedPair {
    /// [`Frontend::id`].
    pub frontend_id: u32,
    /// Backend id.
    pub backend_id: u32,
}
const _: () = assert!(core::mem::size_of::<DoomedPair>() == 8);
/// The immediate of the placeholder `call` the socket iterator makes for `bpf_sock_destroy`
/// (svc-ebpf `sockreap.rs`); the agent rewrites that instruction into the kfunc call. Not a
/// helper id any kernel has (they are below 300).
pub const SOCK_DESTROY_MARK: i32 = 0x5d5e_0001;
/// ELF section of the socket iterator, where the agent looks for [`SOCK_DESTROY_MARK`].
pub const SOCK_REAP_SECTION: &str = "iter/udp";
/// Name of the socket iterator program.
pub const SOCK_REAP_PROGRAM: &str = "svc_sock_reap_udp";
/// Capacity of [`MAP_SOCK_DOOMED`]: removed UDP pairs per iterator run (the agent runs the
/// iterator again for more).
pub const MAX_SOCK_DOOMED: u32 = 4096;
/// Capacity of [`MAP_SOCK_REVNAT`] (LRU).
pub const MAX_SOCK_REVNAT: u32 = 65_536;

/// Key of [`MAP_AFFINITY`] ([`AffinityKey`]) and [`MAP_AFFINITY6`] ([`AffinityKey6`]): a
/// client of a frontend with `sessionAffinity: ClientIP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKeyOf<A> {
    /// [`Frontend::id`].
    pub frontend_id: u32,
    /// Client address, network order.
    pub client_addr: A,
}
/// IPv4 key of [`MAP_AFFINITY`].
pub type AffinityKey = AffinityKeyOf<[u8; 4]>;
/// IPv6 key of [`MAP_AFFINITY6`].
pub type AffinityKey6 = AffinityKeyOf<Addr6>;
pod_per_family!(AffinityKeyOf, |a| 4 + a);

/// Value of [`MAP_AFFINITY`]: the backend new flows of this client go to while
/// `now - last_used_ns < Frontend::affinity_timeout_s`. Written by the datapath on every new
/// flow (kube-proxy's `recent` match refreshes on every new connection the same way). The
/// backend's address is kept so an id reused for another backend is not followed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Affinity {
    /// Key into [`MAP_BACKENDS`].
    pub backend_id: u32,
    /// The backend's address when chosen, network order.
    pub backend_addr: [u8; 4],
    /// The backend's port when chosen, host order.
    pub backend_port: u16,
    /// Always zero.
    pub _pad: [u8; 6],
    /// `bpf_ktime_get_ns()` of the last new flow that used it.
    pub last_used_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Affinity>() == 24);

impl Affinity {
    /// The entry for `backend_id` at `addr`:`port`, used at `now_ns`, built as three 64-bit
    /// words so the 6-byte zero pad is no outlined `memset` call in the BPF object (see
    /// [`CtKey::new`] for why such a call is one frame too many on Linux 6.1).
    #[inline(always)]
    pub const fn new(backend_id: u32, addr: [u8; 4], port: u16, now_ns: u64) -> Self {
        let (id, p) = (backend_id.to_ne_bytes(), port.to_ne_bytes());
        let words = [
            u64::from_ne_bytes([
                id[0], id[1], id[2], id[3], addr[0], addr[1], addr[2], addr[3],
            ]),
            u64::from_ne_bytes([p[0], p[1], 0, 0, 0, 0, 0, 0]),
            now_ns,
        ];
        // SAFETY: Affinity is `Pod` (repr(C), no padding, every bit pattern valid) and 24
        // bytes (asserted above), as is [u64; 3]; its fields lie in the order the words hold
        // them (backend_id, backend_addr, backend_port + _pad, last_used_ns).
        unsafe { core::mem::transmute::<[u64; 3], Affinity>(words) }
    }
}
/// Value of [`MAP_AFFINITY6`]: [`Affinity`] for IPv6 (one struct per family because the
/// timestamp must stay 8-byte aligned, which takes a pad of another size in each).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Affinity6 {
    /// Key into [`MAP_BACKENDS6`].
    pub backend_id: u32,
    /// The backend's address when chosen, network order.
    pub backend_addr: Addr6,
    /// The backend's port when chosen, host order.
    pub backend_port: u16,
    /// Always zero.
    pub _pad: [u8; 2],
    /// `bpf_ktime_get_ns()` of the last new flow that used it.
    pub last_used_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Affinity6>() == 32);

impl Affinity6 {
    /// The entry for `backend_id` at `addr`:`port`, used at `now_ns` ([`Affinity::new`]).
    #[inline(always)]
    pub const fn new(backend_id: u32, addr: Addr6, port: u16, now_ns: u64) -> Self {
        Self {
            backend_id,
            backend_addr: addr,
            backend_port: port,
            _pad: [0; 2],
            last_used_ns: now_ns,
        }
    }
}

/// Capacity of [`MAP_AFFINITY`] (LRU).
pub const MAX_AFFINITY: u32 = 131_072;

/// Name of the load-time global (`.rodata`, a [`CtTimeouts`]) holding the conntrack timeouts.
pub const GLOBAL_CT_TIMEOUTS: &str = "SVC_CT_TIMEOUTS";

/// Key of [`MAP_FRAGS`]: what identifies the fragments of one datagram (RFC 791), as they
/// arrive at the hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct FragKey {
    /// Source address, network order.
    pub src_addr: [u8; 4],
    /// Destination address, network order.
    pub dst_addr: [u8; 4],
    /// IP identification, host order.
    pub id: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Always zero.
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 12);

/// Key of [`MAP_FRAGS6`]: what identifies the fragments of one IPv6 datagram (RFC 8200 §4.5:
/// source, destination and the Fragment header's 32-bit identification).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct FragKey6 {
    /// Source address, network order.
    pub src_addr: Addr6,
    /// Destination address, network order.
    pub dst_addr: Addr6,
    /// Fragment identification, host order.
    pub id: u32,
    /// Upper-layer protocol (the Fragment header's next header).
    pub proto: u8,
    /// Always zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FragKey6>() == 40);

/// Value of [`MAP_FRAGS`] and [`MAP_FRAGS6`]: the ports of the datagram, from its first
/// fragment.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FragPorts {
    /// Source port, host order.
    pub src_port: u16,
    /// Destination port, host order.
    pub dst_port: u16,
    /// Always zero.
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` when the first fragment was seen; entries older than
    /// [`FRAG_TIMEOUT_NS`] are ignored (an IP id reused much later is another datagram).
    pub created_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FragPorts>() == 16);
/// Capacity of [`MAP_FRAGS`] (LRU): datagrams in flight at once.
pub const MAX_FRAGS: u32 = 16_384;
/// How long the ports of a fragmented datagram are remembered: Linux's `ipfrag_time`, 30 s.
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;

/// Value of [`MAP_RATELIMIT`] (per CPU, one entry): a one-second window and how many packets
/// this CPU generated in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct RateWindow {
    /// `bpf_ktime_get_ns()` at the window's start.
    pub start_ns: u64,
    /// Packets generated in the window.
    pub count: u64,
}
const _: () = assert!(core::mem::size_of::<RateWindow>() == 16);
/// Rejects and ICMP errors one CPU may generate per second (Linux's `icmp_ratelimit` allows a
/// burst of 50 and one per second per destination; this is a node-wide guard against being
/// used as an amplifier, per CPU so it needs no lock).
pub const GENERATED_PER_CPU_PER_S: u64 = 1_000;

/// Value of [`MAP_SCRATCH`] (per CPU, one entry): working memory the programs keep off the
/// 512-byte BPF stack. Contents are meaningless between packets (a program uses it only
/// while it runs, and programs on one CPU never nest).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Scratch {
    /// A new IPv4 flow's reply entry while its tuple is claimed.
    pub rep: CtEntry,
    /// A new IPv6 flow's reply entry while its tuple is claimed.
    pub rep6: CtEntry6,
    /// The IPv6 programs' conntrack entry while they run: kept off their stack, whose 512
    /// bytes the IPv6 decisions' frames (40-byte keys, 80-byte entries) need.
    pub entry6: CtEntry6,
    /// The IPv6 programs' parsed packet (`svc-ebpf`'s `Flow6`, which asserts that it fits).
    pub flow6: [u64; 10],
    /// An ICMP error's outer IPv4 header, ICMP header, quoted IPv4 header and quoted 8 L4
    /// bytes while they are rewritten.
    pub icmp: [u8; 56],
    /// A generated ICMP error (IPv4 header, ICMP header, quoted IPv4 header, up to 20 quoted
    /// L4 bytes) while it is built.
    pub gen: [u8; 68],
    /// Always zero.
    pub _pad: [u8; 4],
    /// An ICMPv6 error's outer IPv6 header, ICMPv6 header, quoted IPv6 header and quoted 8 L4
    /// bytes while they are rewritten (after the IPv4 fields, whose offsets stay put).
    pub icmp6: [u8; 96],
    /// A generated IPv6 answer while it is built: an IPv6 header and a TCP RST, or an IPv6
    /// header, an ICMPv6 header and up to 128 quoted bytes of the offending packet.
    pub gen6: [u8; 176],
}
const _: () = assert!(core::mem::size_of::<Scratch>() == 696);

/// Name of the load-time global (`.rodata`, `u32`) that switches the programs' aya-log debug
/// messages on (1) or off (0, the default: the verifier then removes them).
pub const GLOBAL_DEBUG_LOG: &str = "SVC_DEBUG_LOG";

/// Name of the load-time global (`.rodata`) the agent may override to inject a fault in tests.
/// 0 in production. See [`FAULT_SKIP_L4_CSUM`].
pub const GLOBAL_FAULT_INJECT: &str = "SVC_FAULT_INJECT";
/// Fault bit: rewrite addresses and ports but skip the L4 checksum update. Exists only so the
/// network tests can prove they detect a broken checksum; the verifier removes the branch when
/// the bit is clear.
pub const FAULT_SKIP_L4_CSUM: u32 = 1;
/// Not a fault but an old kernel: the tc forward path's FIB lookup adds an unknown flag bit,
/// which every kernel refuses with -EINVAL as kernels before 6.3 refuse
/// `BPF_FIB_LOOKUP_SKIP_NEIGH`, so the fixtures prove that fallback on any kernel.
pub const FAULT_NO_SKIP_NEIGH: u32 = 2;

/// `unsafe impl aya::Pod for T {}` for each `T`, allowed only if `T: bytemuck::Pod`.
///
/// Why this `unsafe impl` cannot be a derive: aya (0.14) ships no derive for `aya::Pod` and no
/// blanket impl over `bytemuck::Pod`, so it accepts only an `unsafe impl` per type. One is
/// generated here, and the proof it rests on is compiler-checked. Every ABI type derives
/// `bytemuck::Pod`, whose derive refuses to compile unless the type is `#[repr(C)]`, `Copy`,
/// has no padding (the field sizes must sum to the type's size) and has only `Pod` fields. A
/// type missing the derive fails the bound below, so no type gets aya's `Pod` on a comment's
/// word.
#[cfg(feature = "user")]
macro_rules! aya_pod {
    ($($t:ty),+ $(,)?) => {$(
        const _: () = {
            const fn bytemuck_pod<T: bytemuck::Pod>() {}
            bytemuck_pod::<$t>()
        };
        // SAFETY: aya::Pod requires a `Copy + 'static` type that can be converted to and from
        // bytes: no padding (uninitialised bytes) and every bit pattern valid. `$t: bytemuck::Pod`
        // (asserted just above, derived and so compiler-checked) guarantees exactly that:
        // `#[repr(C)]`, `Copy + 'static`, no padding, and only fields that are themselves Pod.
        unsafe impl aya::Pod for $t {}
    )+};
}

#[cfg(feature = "user")]
aya_pod!(
    FrontendKey,
    Frontend,
    SlotKey,
    Slot,
    Backend,
    SourceRangeKey,
    CtKey,
    CtEntry,
    Config,
    SockKey,
    SockRevNat,
    DoomedPair,
    AffinityKey,
    Affinity,
    CtTimeouts,
    SnatPorts,
    FragKey,
    FragPorts,
    RateWindow,
    Scratch,
    TraceFilter,
    TraceEvent,
    TraceEvent6,
    FrontendKey6,
    Backend6,
    SourceRangeKey6,
    CtKey6,
    CtEntry6,
    SockKey6,
    SockRevNat6,
    AffinityKey6,
    Affinity6,
    FragKey6,
);

#[cfg(test)]
mod tests;
