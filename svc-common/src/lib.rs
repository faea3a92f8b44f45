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
//!   ([`SNAT_PORT_MIN`]..) never overlap NodePorts.
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
/// Every map the agent pins, in the order it lists them.
pub const ALL_MAPS: [&str; 16] = [
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
];

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

/// First port of the range the uplink path allocates for source NAT (remote backends of
/// external traffic). Above Linux's default ephemeral range (32768–60999) so node sockets never
/// collide with it, and above the NodePort range (30000–32767).
pub const SNAT_PORT_MIN: u16 = 61_000;
/// Last port of the SNAT range.
pub const SNAT_PORT_MAX: u16 = 65_535;
/// How many random ports a new flow tries before giving up with [`Reason::SnatNoPort`]. A port
/// held by an expired or closed flow is taken over, so with short flows nearly every first try
/// succeeds; 16 tries fail only when more than ~75 % of the range is held by live flows to the
/// same backend (0.75^16 ≈ 1 %).
pub const SNAT_ATTEMPTS: u32 = 16;

/// Lookup key of [`MAP_FRONTENDS`]: one address, port and protocol a Service is reached on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct FrontendKey {
    /// Frontend IPv4 address, network order (a ClusterIP, node address, external or LB IP).
    pub addr: [u8; 4],
    /// Frontend port, host order (`spec.ports[].port`, or `nodePort`).
    pub port: u16,
    /// IP protocol number ([`PROTO_TCP`], [`PROTO_UDP`]).
    pub proto: u8,
    /// Which sources this entry applies to ([`SCOPE_ANY`]).
    pub scope: u8,
}
const _: () = assert!(core::mem::size_of::<FrontendKey>() == 8);

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

/// Value of [`MAP_BACKENDS`] (keyed by a `u32` backend id, never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct Backend {
    /// Endpoint IPv4 address, network order.
    pub addr: [u8; 4],
    /// Endpoint port, host order (the resolved `targetPort`).
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 8);

/// [`Backend::flags`]: the endpoint is terminating (used only because no ready one exists).
pub const BACKEND_F_TERMINATING: u8 = 1;
/// [`Backend::flags`]: the endpoint runs on this node (its `nodeName` is ours). External
/// traffic to a local backend keeps the client's address; to a remote one it is source-NATed
/// so the reply comes back through this node.
pub const BACKEND_F_LOCAL: u8 = 2;

/// [`CtEntry::dir`]: the entry is keyed by the client's tuple (client → frontend).
pub const CT_DIR_FORWARD: u8 = 0;
/// [`CtEntry::dir`]: the entry is keyed by the backend's tuple (backend → client or SNAT).
pub const CT_DIR_REPLY: u8 = 1;

/// [`CtEntry::flags`]: the flow is source-NATed to this node (remote backend, external client).
pub const CT_F_SNAT: u8 = 1;
/// [`CtEntry::flags`]: hairpin (a pod reaching itself through a Service): source-NATed to the
/// frontend address so the pod does not see a packet from itself.
pub const CT_F_HAIRPIN: u8 = 2;
/// [`CtEntry::flags`]: created by an uplink hook (traffic from outside the node).
pub const CT_F_EXTERNAL: u8 = 4;
/// [`CtEntry::flags`]: the frontend is a NodePort, so replies leave with one of this node's
/// own addresses as source. A pod on this node reaching it gets its replies redirected to its
/// veth: routed by the stack, a packet arriving on a veth from a local address is dropped as
/// martian.
pub const CT_F_NODEPORT: u8 = 8;

/// Key of [`MAP_CONNTRACK`]: the packet's 5-tuple as it arrives at the hook. Direction is in
/// the value (see the module docs for why the two directions' tuples never coincide).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct CtKey {
    /// Source address, network order.
    pub src_addr: [u8; 4],
    /// Destination address, network order.
    pub dst_addr: [u8; 4],
    /// Source port, host order.
    pub src_port: u16,
    /// Destination port, host order.
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Always zero (part of the hash key).
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 16);

impl CtKey {
    /// The key of a 5-tuple, built as four 32-bit words (`proto` and the zero `_pad` in one).
    ///
    /// Written field by field, the 3-byte pad becomes a call to an outlined `memset` in the
    /// BPF object (LLVM lowers the 3-byte zero array to a memset it does not expand inline).
    /// Such a call from a BPF subprogram is one more frame on the verifier's call chain, and
    /// the verifier of Linux 6.1 rounds every frame, an empty one too, up to 32 bytes
    /// (`round_up(max_t(u32, depth, 1), 32)` in check_max_stack_depth, kernel/bpf/verifier.c):
    /// `svc_xdp` → `commit_sub` → memset came to 288 + 224 + 32 = 544 bytes there, over the
    /// 512 allowed, and 6.1 refused the program (found by `cargo xtask test-kernels`).
    #[inline(always)]
    pub const fn new(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> Self {
        let (s, d) = (sport.to_ne_bytes(), dport.to_ne_bytes());
        let words = [
            u32::from_ne_bytes(src),
            u32::from_ne_bytes(dst),
            u32::from_ne_bytes([s[0], s[1], d[0], d[1]]),
            u32::from_ne_bytes([proto, 0, 0, 0]),
        ];
        // SAFETY: CtKey is `Pod` (repr(C), no padding, every bit pattern valid) and 16 bytes
        // (asserted above), as is [u32; 4]; its fields lie in the order the words hold them.
        unsafe { core::mem::transmute::<[u32; 4], CtKey>(words) }
    }
}

/// Value of [`MAP_CONNTRACK`]. Written by the datapath when a flow starts; `last_seen_ns`,
/// `tcp_flags`, `packets` and `bytes` are updated per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct CtEntry {
    /// Source address the packet leaves with (network order): unchanged for a forward entry
    /// without SNAT, this node's address with [`CT_F_SNAT`], the frontend for a reply entry.
    pub src_addr: [u8; 4],
    /// Destination address the packet leaves with: the backend (forward), the client (reply).
    pub dst_addr: [u8; 4],
    /// Source port to write, host order; pairs with `src_addr`.
    pub src_port: u16,
    /// Destination port to write, host order; pairs with `dst_addr`.
    pub dst_port: u16,
    /// [`CT_DIR_FORWARD`] or [`CT_DIR_REPLY`].
    pub dir: u8,
    /// `CT_F_*` bits.
    pub flags: u8,
    /// Union of the TCP flags seen in this direction (`CT_TCP_*`); 0 for UDP.
    pub tcp_flags: u8,
    /// `CT_STATE_*`: where the flow is in its lifecycle; kept equal in both entries of a flow
    /// (the datapath writes the peer on every transition). Chooses the timeout
    /// ([`CtTimeouts::for_entry`]).
    pub state: u8,
    /// Backend chosen for the flow.
    pub backend_id: u32,
    /// Frontend the flow was addressed to.
    pub frontend_id: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the flow was created.
    pub created_ns: u64,
    /// `bpf_ktime_get_ns()` of the last packet in this direction.
    pub last_seen_ns: u64,
    /// Packets seen in this direction.
    pub packets: u64,
    /// Bytes (L3 length) seen in this direction.
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 56);

/// Value of [`MAP_CONFIG`] (one entry, index 0), written by the agent at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Config {
    /// This node's primary address (network order): the SNAT source when the FIB names none.
    pub node_addr: [u8; 4],
    /// Reserved, always zero.
    pub flags: u32,
    /// Network-namespace cookie of the node (`SO_NETNS_COOKIE`): cgroup socket hooks translate
    /// only sockets of this namespace, so pods (own namespaces) never see localhost NodePorts.
    pub netns_cookie: u64,
}
const _: () = assert!(core::mem::size_of::<Config>() == 16);

/// The data of a [`MAP_SOURCE_RANGES`] key, after its `u32` prefix length (an LPM trie key is
/// `{prefix_len, data}`, aya's `lpm_trie::Key<SourceRangeKey>`, 12 bytes). The prefix length
/// is [`SOURCE_RANGE_ID_BITS`] + the CIDR length, so the frontend id always matches whole (its
/// byte order is then irrelevant, so it is kept in host order, readable in a dump) and the
/// address matches on the CIDR's bits. A lookup uses `SOURCE_RANGE_ID_BITS + 32` and the
/// packet's source.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct SourceRangeKey {
    /// [`Frontend::id`] of the frontend the prefix belongs to.
    pub frontend_id: u32,
    /// The prefix's network address (host bits zero), network order.
    pub addr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<SourceRangeKey>() == 8);
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

/// Value of [`MAP_SOCK_REVNAT`]: the frontend the application asked for, restored on
/// `recvmsg` (UDP replies) and `getpeername`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SockRevNat {
    /// Frontend address, network order.
    pub addr: [u8; 4],
    /// Frontend port, host order.
    pub port: u16,
    /// Always zero.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevNat>() == 8);
/// Capacity of [`MAP_SOCK_REVNAT`] (LRU).
pub const MAX_SOCK_REVNAT: u32 = 65_536;

/// Key of [`MAP_AFFINITY`]: a client of a frontend with `sessionAffinity: ClientIP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct AffinityKey {
    /// [`Frontend::id`].
    pub frontend_id: u32,
    /// Client address, network order.
    pub client_addr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 8);

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
/// Capacity of [`MAP_AFFINITY`] (LRU).
pub const MAX_AFFINITY: u32 = 131_072;

/// [`CtEntry::tcp_flags`] bits (the TCP header's own flag bit values).
pub const CT_TCP_FIN: u8 = 0x01;
/// See [`CT_TCP_FIN`].
pub const CT_TCP_SYN: u8 = 0x02;
/// See [`CT_TCP_FIN`].
pub const CT_TCP_RST: u8 = 0x04;
/// See [`CT_TCP_FIN`].
pub const CT_TCP_ACK: u8 = 0x10;

/// [`CtEntry::state`]: written by a datapath that did not track state (before the lifecycle
/// existed); timed out like an established TCP flow or a UDP stream.
pub const CT_STATE_NONE: u8 = 0;
/// TCP: the client's SYN was seen, no reply yet (netfilter `SYN_SENT`).
pub const CT_STATE_SYN_SENT: u8 = 1;
/// TCP: the backend answered (netfilter `ESTABLISHED`).
pub const CT_STATE_ESTABLISHED: u8 = 2;
/// TCP: a FIN was seen in one direction; the other may still send (netfilter `CLOSE_WAIT`,
/// kube-proxy's `tcpCloseWaitTimeout`).
pub const CT_STATE_CLOSE_WAIT: u8 = 3;
/// TCP: FINs were seen in both directions (netfilter `TIME_WAIT`/`LAST_ACK`). A SYN on it
/// opens a new flow; its reply tuple may be taken over by a new flow.
pub const CT_STATE_TIME_WAIT: u8 = 4;
/// TCP: a RST was seen (netfilter `CLOSE`). As [`CT_STATE_TIME_WAIT`].
pub const CT_STATE_CLOSED: u8 = 5;
/// UDP: no reply yet.
pub const CT_STATE_UDP_UNREPLIED: u8 = 6;
/// UDP: the backend answered.
pub const CT_STATE_UDP_REPLIED: u8 = 7;
/// Every state with its stable name (inspect, metrics).
pub const ALL_CT_STATES: [(u8, &str); 8] = [
    (CT_STATE_NONE, "none"),
    (CT_STATE_SYN_SENT, "syn_sent"),
    (CT_STATE_ESTABLISHED, "established"),
    (CT_STATE_CLOSE_WAIT, "close_wait"),
    (CT_STATE_TIME_WAIT, "time_wait"),
    (CT_STATE_CLOSED, "closed"),
    (CT_STATE_UDP_UNREPLIED, "udp_unreplied"),
    (CT_STATE_UDP_REPLIED, "udp_replied"),
];

/// Whether a flow in `state` is over: a SYN on it opens a new flow, and a new flow may take
/// over its reply tuple (netfilter re-creates a conntrack entry in `TIME_WAIT`/`CLOSE` on a
/// new SYN the same way).
#[inline(always)]
pub const fn ct_state_closed(state: u8) -> bool {
    state == CT_STATE_TIME_WAIT || state == CT_STATE_CLOSED
}

/// A UDP flow that is still active this long after it started is a stream and gets
/// [`CtTimeouts::udp_stream_s`] (netfilter: `stream_ts`, 2 s after the first packet).
pub const CT_UDP_STREAM_AFTER_NS: u64 = 2_000_000_000;

/// Conntrack timeouts in seconds, by protocol and state: how long an entry lives after the last
/// packet of its flow (in either direction: an entry whose own direction is idle lives as long
/// as its peer is fresh). Defaults are netfilter's where kube-proxy does not set them and
/// kube-proxy's where it does. The agent passes them to the programs as the load-time global
/// [`GLOBAL_CT_TIMEOUTS`] and uses the same values in its garbage collector.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct CtTimeouts {
    /// [`CT_STATE_SYN_SENT`]: netfilter `nf_conntrack_tcp_timeout_syn_sent`, 120 s.
    pub tcp_syn_sent_s: u32,
    /// [`CT_STATE_ESTABLISHED`]: kube-proxy `conntrack.tcpEstablishedTimeout`, 24 h.
    pub tcp_established_s: u32,
    /// [`CT_STATE_CLOSE_WAIT`]: kube-proxy `conntrack.tcpCloseWaitTimeout`, 1 h.
    pub tcp_close_wait_s: u32,
    /// [`CT_STATE_TIME_WAIT`] and [`CT_STATE_CLOSED`]: 10 s (netfilter `tcp_timeout_close`;
    /// Cilium's close timeout). Shorter than netfilter's 120 s `TIME_WAIT` because a closed
    /// entry never blocks a new flow here: a SYN reopens it and its reply tuple can be taken
    /// over, so the timeout only bounds how long a closed flow's stragglers are translated.
    pub tcp_close_s: u32,
    /// UDP without a reply, or a short exchange: kube-proxy `conntrack.udpTimeout`, 30 s.
    pub udp_s: u32,
    /// UDP answered and active beyond [`CT_UDP_STREAM_AFTER_NS`]: kube-proxy
    /// `conntrack.udpStreamTimeout`, 120 s.
    pub udp_stream_s: u32,
}
const _: () = assert!(core::mem::size_of::<CtTimeouts>() == 24);

impl CtTimeouts {
    /// The defaults described on each field.
    pub const DEFAULT: Self = Self {
        tcp_syn_sent_s: 120,
        tcp_established_s: 86_400,
        tcp_close_wait_s: 3_600,
        tcp_close_s: 10,
        udp_s: 30,
        udp_stream_s: 120,
    };

    /// Lifetime in nanoseconds of `e` after its last packet.
    #[inline(always)]
    pub const fn for_entry(&self, proto: u8, e: &CtEntry) -> u64 {
        let s = if proto == PROTO_UDP {
            if e.state == CT_STATE_UDP_REPLIED || e.state == CT_STATE_NONE {
                if e.last_seen_ns.saturating_sub(e.created_ns) > CT_UDP_STREAM_AFTER_NS {
                    self.udp_stream_s
                } else {
                    self.udp_s
                }
            } else {
                self.udp_s
            }
        } else {
            match e.state {
                CT_STATE_SYN_SENT => self.tcp_syn_sent_s,
                CT_STATE_CLOSE_WAIT => self.tcp_close_wait_s,
                CT_STATE_TIME_WAIT | CT_STATE_CLOSED => self.tcp_close_s,
                _ => self.tcp_established_s,
            }
        };
        s as u64 * 1_000_000_000
    }

    /// Whether `e` (of protocol `proto`) has outlived its timeout at `now_ns`
    /// (`CLOCK_MONOTONIC`, what `bpf_ktime_get_ns` returns). A `last_seen_ns` ahead of `now_ns`
    /// (written by another CPU a moment later) is fresh.
    #[inline(always)]
    pub const fn expired(&self, proto: u8, e: &CtEntry, now_ns: u64) -> bool {
        now_ns.saturating_sub(e.last_seen_ns) > self.for_entry(proto, e)
    }
}

/// The key of the other entry of `e`'s flow, whose key is `key`: a forward entry's reply key,
/// or a reply entry's forward key. Each entry holds the tuple its packets leave with, and the
/// other direction's packets arrive with exactly that tuple reversed.
#[inline(always)]
pub const fn ct_peer_key(key: &CtKey, e: &CtEntry) -> CtKey {
    CtKey::new(e.dst_addr, e.src_addr, e.dst_port, e.src_port, key.proto)
}

/// The state a flow moves to when a packet with TCP flags `flags` travels in direction `dir`
/// (`CT_DIR_*`) while the flow is in `state`; `peer_fin` says whether the other direction has
/// sent a FIN. Pure, so the agent's tests can walk every transition.
#[inline(always)]
pub const fn ct_next_state(proto: u8, state: u8, dir: u8, flags: u8, peer_fin: bool) -> u8 {
    if proto == PROTO_UDP {
        if dir == CT_DIR_REPLY && state == CT_STATE_UDP_UNREPLIED {
            return CT_STATE_UDP_REPLIED;
        }
        return state;
    }
    if flags & CT_TCP_RST != 0 {
        return CT_STATE_CLOSED;
    }
    if state == CT_STATE_CLOSED {
        return state;
    }
    if flags & CT_TCP_FIN != 0 {
        return if peer_fin {
            CT_STATE_TIME_WAIT
        } else if state == CT_STATE_TIME_WAIT {
            state
        } else {
            CT_STATE_CLOSE_WAIT
        };
    }
    if dir == CT_DIR_REPLY && state == CT_STATE_SYN_SENT {
        return CT_STATE_ESTABLISHED;
    }
    state
}

/// Where a program runs; the first dimension of [`MAP_STATS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// tc ingress on the host side of a pod veth: packets *from* a pod (forward NAT).
    PodIngress = 0,
    /// tc egress on the host side of a pod veth: packets *to* a pod (reverse NAT).
    PodEgress = 1,
    /// XDP on a node uplink: the fast path for frames from the wire.
    Xdp = 2,
    /// tc ingress on a node uplink: the complete path for what XDP passes on.
    UplinkIngress = 3,
    /// cgroup socket hooks (connect4, sendmsg4, recvmsg4, getpeername4).
    Sock = 4,
    /// tc egress on a node uplink: replies of node processes (hostNetwork endpoints) to
    /// external clients get their frontend back.
    UplinkEgress = 5,
}
impl Hook {
    /// The hook's stable name: the `hook` of `inspect stats`, of trace events and of the
    /// `svc_datapath_packets` metric.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::PodIngress => "pod_ingress",
            Hook::PodEgress => "pod_egress",
            Hook::Xdp => "xdp",
            Hook::UplinkIngress => "uplink_ingress",
            Hook::Sock => "sock",
            Hook::UplinkEgress => "uplink_egress",
        }
    }
}

/// Number of [`Hook`] values.
pub const HOOK_COUNT: u32 = 6;
/// Every hook, in index order.
pub const ALL_HOOKS: [Hook; HOOK_COUNT as usize] = [
    Hook::PodIngress,
    Hook::PodEgress,
    Hook::Xdp,
    Hook::UplinkIngress,
    Hook::Sock,
    Hook::UplinkEgress,
];

/// Why a program returned what it did; the second dimension of [`MAP_STATS`]. Every packet a
/// program sees is counted under exactly one reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Passed: not an IPv4 frame (ARP, IPv6, …).
    NotIpv4 = 0,
    /// Passed: IPv4 but neither TCP nor UDP.
    NotTcpUdp = 1,
    /// Passed untouched: a header was shorter than its fixed size (the stack will drop it).
    Truncated = 2,
    /// Passed untouched: IPv4 header with options (IHL > 5); we do not translate these.
    IpOptions = 3,
    /// Passed untouched: a later IPv4 fragment of no datagram whose first fragment was seen
    /// (not a translated flow's, or it arrived before its first fragment).
    Fragment = 4,
    /// Passed: destination is not a frontend (ingress) or no reply entry matched (egress).
    NotService = 5,
    /// Translated: first packet of a flow, a backend was chosen and conntrack written.
    DnatNew = 6,
    /// Translated: packet of a known flow, backend taken from conntrack.
    DnatEstablished = 7,
    /// Translated: reply packet, source restored to the frontend.
    RevNat = 8,
    /// Rejected: a new flow to a frontend with no usable backend, answered with a TCP RST or an
    /// ICMP port unreachable redirected back to the client (dropped if it was itself a RST).
    NoBackend = 9,
    /// Dropped: a slot or backend entry was missing (would be an agent ordering bug).
    BackendMissing = 10,
    /// Dropped: a helper that rewrites the packet failed.
    RewriteFailed = 11,
    /// Translated, but the conntrack write failed (the flow may be re-balanced later).
    CtInsertFailed = 12,
    /// XDP passed the frame untouched to the tc path: its checksum may be partial, the next hop
    /// has no neighbour entry yet, or it needs an answer only tc can build (reject).
    ToTc = 13,
    /// Dropped: no free source-NAT port after [`SNAT_ATTEMPTS`] tries.
    SnatNoPort = 14,
    /// Dropped: the FIB has no route to the backend or client.
    FibFailed = 15,
    /// Translated: a pod reaching itself through a Service, sent back with the frontend as
    /// source.
    Hairpin = 16,
    /// Dropped: traffic policy `Local` and no local endpoint.
    PolicyDrop = 17,
    /// Socket hook: the destination was rewritten to a backend.
    SockTranslated = 18,
    /// Socket hook: a reply's source (recvmsg) or the peer name was restored to the frontend.
    SockRevNat = 19,
    /// Translated: a new flow sent to the backend its client's session affinity names.
    Affinity = 20,
    /// Dropped: a TCP RST to a frontend with no live conntrack entry (nothing to pick up).
    NonSynNoEntry = 21,
    /// Translated: a SYN hit a closed flow, or one whose backend left its frontend; the flow
    /// was balanced afresh.
    CtReopened = 22,
    /// Translated: the new flow's reply tuple was held by another live flow (one client port
    /// to two frontends sharing a backend); its source port was remapped, as nf_nat does.
    ClashRemapped = 23,
    /// Translated: a later fragment of a translated datagram (ports from its first fragment).
    FragTranslated = 24,
    /// Translated: an ICMP error (destination unreachable, time exceeded) about a translated
    /// flow: outer and embedded headers and every checksum.
    IcmpTranslated = 25,
    /// Answered: the translated packet does not fit the egress MTU and has DF set; the sender
    /// got an ICMP fragmentation-needed with the MTU.
    FragNeeded = 26,
    /// Passed to the stack untranslated: TTL would expire on a path that bypasses the stack's
    /// forwarding (the stack answers time-exceeded).
    TtlExceeded = 27,
    /// Dropped: a reject or ICMP error this CPU would send was over its rate budget.
    RateLimited = 28,
    /// Dropped: the translated packet does not fit the egress MTU and DF is clear (a BPF
    /// program cannot fragment).
    TooBig = 29,
    /// Translated: a mid-stream TCP packet of a flow whose entries were lost (LRU eviction, a
    /// restart of the maps) was picked up: the backend is chosen by the same hash of the
    /// client's tuple that chose it when the flow opened, so the connection continues.
    CtPickedUp = 30,
    /// Dropped: the backend answered a new flow's SYN with a bare ACK, so it holds a live
    /// connection on the same tuple: a flow whose conntrack entries the LRU evicted, whose
    /// reply tuple the new flow then claimed. The ACK would make the client reset the
    /// backend's connection; instead it is dropped and the new flow's entries deleted, so the
    /// client's SYN retransmission is balanced afresh (and remapped if the old flow has its
    /// entries back by then). Not for source-NATed flows (see lb.rs: their earlier holder is
    /// usually another client's flow in TIME_WAIT, which the client's reset clears).
    CtCollision = 31,
    /// Dropped: a packet to a LoadBalancer IP from a source outside the Service's
    /// `loadBalancerSourceRanges`.
    SourceRangeDenied = 32,
    /// Dropped: a new flow needs source NAT, but this node has no usable SNAT address (none of
    /// `--node-ip` and the Node's addresses is on one of its interfaces; the agent logs why).
    SnatNoAddress = 33,
}
/// Number of [`Reason`] values.
pub const REASON_COUNT: u32 = 34;
/// Every reason, in index order, with a stable name for metrics and CLIs.
pub const ALL_REASONS: [(Reason, &str); REASON_COUNT as usize] = [
    (Reason::NotIpv4, "not_ipv4"),
    (Reason::NotTcpUdp, "not_tcp_udp"),
    (Reason::Truncated, "truncated"),
    (Reason::IpOptions, "ip_options"),
    (Reason::Fragment, "fragment"),
    (Reason::NotService, "not_service"),
    (Reason::DnatNew, "dnat_new"),
    (Reason::DnatEstablished, "dnat_established"),
    (Reason::RevNat, "rev_nat"),
    (Reason::NoBackend, "no_backend"),
    (Reason::BackendMissing, "backend_missing"),
    (Reason::RewriteFailed, "rewrite_failed"),
    (Reason::CtInsertFailed, "ct_insert_failed"),
    (Reason::ToTc, "to_tc"),
    (Reason::SnatNoPort, "snat_no_port"),
    (Reason::FibFailed, "fib_failed"),
    (Reason::Hairpin, "hairpin"),
    (Reason::PolicyDrop, "policy_drop"),
    (Reason::SockTranslated, "sock_translated"),
    (Reason::SockRevNat, "sock_rev_nat"),
    (Reason::Affinity, "affinity"),
    (Reason::NonSynNoEntry, "non_syn_no_entry"),
    (Reason::CtReopened, "ct_reopened"),
    (Reason::ClashRemapped, "clash_remapped"),
    (Reason::FragTranslated, "frag_translated"),
    (Reason::IcmpTranslated, "icmp_translated"),
    (Reason::FragNeeded, "frag_needed"),
    (Reason::TtlExceeded, "ttl_exceeded"),
    (Reason::RateLimited, "rate_limited"),
    (Reason::TooBig, "too_big"),
    (Reason::CtPickedUp, "ct_picked_up"),
    (Reason::CtCollision, "ct_collision"),
    (Reason::SourceRangeDenied, "source_range_denied"),
    (Reason::SnatNoAddress, "snat_no_address"),
];
/// Entries in [`MAP_STATS`].
pub const STATS_LEN: u32 = HOOK_COUNT * REASON_COUNT;

/// Index of the counter for `reason` at `hook` in [`MAP_STATS`].
#[inline(always)]
pub const fn stat_index(hook: Hook, reason: Reason) -> u32 {
    hook as u32 * REASON_COUNT + reason as u32
}

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

/// Value of [`MAP_FRAGS`]: the ports of the datagram, from its first fragment.
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
    /// A new flow's reply entry while its tuple is claimed.
    pub rep: CtEntry,
    /// An ICMP error's outer IPv4 header, ICMP header, quoted IPv4 header and quoted 8 L4
    /// bytes while they are rewritten.
    pub icmp: [u8; 56],
    /// A generated ICMP error (IPv4 header, ICMP header, quoted IPv4 header, up to 20 quoted
    /// L4 bytes) while it is built.
    pub gen: [u8; 68],
    /// Always zero.
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<Scratch>() == 184);

/// Trace slots: tracers (`svc-agent trace`) that can run at once.
pub const TRACE_SLOTS: u32 = 8;
/// Frontend ids one [`TraceFilter`] can name (a Service's frontends: ports × addresses).
pub const TRACE_FRONTENDS: usize = 16;
/// Bytes of each trace ring buffer (a power of two and a multiple of the page size, as
/// `BPF_MAP_TYPE_RINGBUF` requires): 4096 events of [`TraceEvent`]'s 64 bytes plus headers.
pub const TRACE_RING_BYTES: u32 = 512 * 1024;

/// Value of [`MAP_TRACE_FILTERS`]: which packets one tracer wants. A packet matches when every
/// criterion that is set matches, judged on its tuple as received **or** as translated, in
/// either direction, so a client's requests and the replies to it (backend → client before the
/// reverse NAT, frontend → client after it) both match `--src client --dst frontend`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct TraceFilter {
    /// One end of the flow (network order); zero = any.
    pub src_addr: [u8; 4],
    /// The other end (network order); zero = any.
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
}
const _: () = assert!(core::mem::size_of::<TraceFilter>() == 96);

/// One trace event, as the programs write it into a tracer's ring ([`MAP_TRACE_RINGS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct TraceEvent {
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
    pub src_addr: [u8; 4],
    pub dst_addr: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    /// The conntrack entry the verdict used ([`CtEntry`]'s rewrite: what the packet leaves
    /// with); all zero when no entry was found or made.
    pub to_src_addr: [u8; 4],
    pub to_dst_addr: [u8; 4],
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
const _: () = assert!(core::mem::size_of::<TraceEvent>() == 64);

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
    AffinityKey,
    Affinity,
    CtTimeouts,
    FragKey,
    FragPorts,
    RateWindow,
    Scratch,
    TraceFilter,
    TraceEvent,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, (reason, _)) in ALL_REASONS.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
        for (i, hook) in ALL_HOOKS.iter().enumerate() {
            assert_eq!(*hook as usize, i);
        }
        assert_eq!(stat_index(Hook::PodEgress, Reason::NotIpv4), REASON_COUNT);
    }

    #[test]
    fn no_implicit_padding() {
        use core::mem::{offset_of, size_of};
        assert_eq!(offset_of!(FrontendKey, scope) + 1, size_of::<FrontendKey>());
        assert_eq!(offset_of!(Backend, flags) + 1, size_of::<Backend>());
        assert_eq!(offset_of!(CtKey, _pad) + 3, size_of::<CtKey>());
        assert_eq!(offset_of!(CtEntry, backend_id), 16);
        assert_eq!(offset_of!(Config, netns_cookie), 8);
        assert_eq!(offset_of!(SockKey, _pad) + 1, size_of::<SockKey>());
        assert_eq!(offset_of!(CtEntry, bytes) + 8, size_of::<CtEntry>());
        assert_eq!(offset_of!(FragKey, _pad) + 1, size_of::<FragKey>());
        assert_eq!(offset_of!(FragPorts, created_ns), 8);
    }

    fn entry(state: u8, created_ns: u64, last_seen_ns: u64) -> CtEntry {
        CtEntry {
            src_addr: [10, 244, 1, 2],
            dst_addr: [10, 244, 2, 2],
            src_port: 40_000,
            dst_port: 8080,
            dir: CT_DIR_FORWARD,
            flags: 0,
            tcp_flags: 0,
            state,
            backend_id: 1,
            frontend_id: 1,
            created_ns,
            last_seen_ns,
            packets: 1,
            bytes: 60,
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn tcp_timeouts_follow_the_state() {
        let t = CtTimeouts::DEFAULT;
        for (state, secs) in [
            (CT_STATE_SYN_SENT, 120),
            (CT_STATE_ESTABLISHED, 86_400),
            (CT_STATE_NONE, 86_400),
            (CT_STATE_CLOSE_WAIT, 3_600),
            (CT_STATE_TIME_WAIT, 10),
            (CT_STATE_CLOSED, 10),
        ] {
            let e = entry(state, 0, 5 * S);
            assert!(!t.expired(PROTO_TCP, &e, 5 * S + secs * S), "state {state}");
            assert!(
                t.expired(PROTO_TCP, &e, 5 * S + secs * S + 1),
                "state {state}"
            );
        }
    }

    #[test]
    fn udp_becomes_a_stream_only_when_answered_and_active_past_two_seconds() {
        let t = CtTimeouts::DEFAULT;
        // A DNS query and its answer within a millisecond: 30 s, as netfilter.
        let short = entry(CT_STATE_UDP_REPLIED, 0, S / 1000);
        assert_eq!(t.for_entry(PROTO_UDP, &short), 30 * S);
        // Answered and still sending 3 s later: a stream.
        let stream = entry(CT_STATE_UDP_REPLIED, 0, 3 * S);
        assert_eq!(t.for_entry(PROTO_UDP, &stream), 120 * S);
        // Never answered, however long it sends.
        let oneway = entry(CT_STATE_UDP_UNREPLIED, 0, 300 * S);
        assert_eq!(t.for_entry(PROTO_UDP, &oneway), 30 * S);
    }

    #[test]
    fn a_last_seen_ahead_of_now_is_fresh() {
        let e = entry(CT_STATE_CLOSED, 0, 100 * S);
        assert!(!CtTimeouts::DEFAULT.expired(PROTO_TCP, &e, 99 * S));
    }

    #[test]
    fn tcp_state_transitions() {
        use CT_DIR_FORWARD as F;
        use CT_DIR_REPLY as R;
        let syn = CT_TCP_SYN;
        let synack = CT_TCP_SYN | CT_TCP_ACK;
        let ack = CT_TCP_ACK;
        let fin = CT_TCP_FIN | CT_TCP_ACK;
        let rst = CT_TCP_RST;
        for (state, dir, flags, peer_fin, want) in [
            (CT_STATE_SYN_SENT, F, syn, false, CT_STATE_SYN_SENT),
            (CT_STATE_SYN_SENT, R, synack, false, CT_STATE_ESTABLISHED),
            (CT_STATE_SYN_SENT, F, ack, false, CT_STATE_SYN_SENT),
            (CT_STATE_ESTABLISHED, F, ack, false, CT_STATE_ESTABLISHED),
            (CT_STATE_ESTABLISHED, F, fin, false, CT_STATE_CLOSE_WAIT),
            (CT_STATE_ESTABLISHED, R, fin, false, CT_STATE_CLOSE_WAIT),
            (CT_STATE_CLOSE_WAIT, R, ack, false, CT_STATE_CLOSE_WAIT),
            (CT_STATE_CLOSE_WAIT, R, fin, true, CT_STATE_TIME_WAIT),
            (CT_STATE_TIME_WAIT, F, ack, true, CT_STATE_TIME_WAIT),
            (CT_STATE_TIME_WAIT, F, fin, false, CT_STATE_TIME_WAIT),
            (CT_STATE_ESTABLISHED, R, rst, false, CT_STATE_CLOSED),
            (CT_STATE_SYN_SENT, R, rst | ack, false, CT_STATE_CLOSED),
            (CT_STATE_CLOSED, F, ack, false, CT_STATE_CLOSED),
            (CT_STATE_CLOSED, R, synack, false, CT_STATE_CLOSED),
        ] {
            assert_eq!(
                ct_next_state(PROTO_TCP, state, dir, flags, peer_fin),
                want,
                "state {state} dir {dir} flags {flags:#x} peer_fin {peer_fin}"
            );
        }
    }

    #[test]
    fn udp_state_transitions() {
        assert_eq!(
            ct_next_state(PROTO_UDP, CT_STATE_UDP_UNREPLIED, CT_DIR_FORWARD, 0, false),
            CT_STATE_UDP_UNREPLIED
        );
        assert_eq!(
            ct_next_state(PROTO_UDP, CT_STATE_UDP_UNREPLIED, CT_DIR_REPLY, 0, false),
            CT_STATE_UDP_REPLIED
        );
        assert_eq!(
            ct_next_state(PROTO_UDP, CT_STATE_UDP_REPLIED, CT_DIR_FORWARD, 0, false),
            CT_STATE_UDP_REPLIED
        );
    }

    #[test]
    fn word_built_keys_equal_field_built_ones() {
        let k = CtKey::new([10, 0, 0, 1], [10, 96, 0, 10], 40000, 80, PROTO_TCP);
        assert_eq!(
            k,
            CtKey {
                src_addr: [10, 0, 0, 1],
                dst_addr: [10, 96, 0, 10],
                src_port: 40000,
                dst_port: 80,
                proto: PROTO_TCP,
                _pad: [0; 3],
            }
        );
        let a = Affinity::new(0x0102_0304, [10, 244, 1, 2], 8080, u64::MAX - 1);
        assert_eq!(
            a,
            Affinity {
                backend_id: 0x0102_0304,
                backend_addr: [10, 244, 1, 2],
                backend_port: 8080,
                _pad: [0; 6],
                last_used_ns: u64::MAX - 1,
            }
        );
    }

    #[test]
    fn peer_keys_pair_up_for_dnat_snat_and_remapped_flows() {
        // Client 10.244.1.2:40000 → frontend 10.96.0.10:80, backend 10.244.2.2:8080, SNAT to
        // 172.18.0.2:61234.
        let fwd_key = CtKey {
            src_addr: [10, 244, 1, 2],
            dst_addr: [10, 96, 0, 10],
            src_port: 40_000,
            dst_port: 80,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let mut fwd = entry(CT_STATE_SYN_SENT, 0, 0);
        fwd.src_addr = [172, 18, 0, 2];
        fwd.src_port = 61_234;
        let rep_key = ct_peer_key(&fwd_key, &fwd);
        assert_eq!(rep_key.src_addr, [10, 244, 2, 2]);
        assert_eq!(rep_key.dst_addr, [172, 18, 0, 2]);
        assert_eq!((rep_key.src_port, rep_key.dst_port), (8080, 61_234));
        let mut rep = fwd;
        rep.dir = CT_DIR_REPLY;
        rep.src_addr = fwd_key.dst_addr;
        rep.src_port = fwd_key.dst_port;
        rep.dst_addr = fwd_key.src_addr;
        rep.dst_port = fwd_key.src_port;
        assert_eq!(ct_peer_key(&rep_key, &rep), fwd_key);
    }
}
