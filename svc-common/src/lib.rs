//! The ABI shared by the kernel programs (`svc-ebpf`) and the agent (`svc-agent`).
//!
//! # Layout
//! This crate alone defines the map names, key/value structs, capacities, flag bits and counter
//! indices. Both sides compile against it, so a layout mismatch is a compile error, not a silent
//! corruption. Every type is `#[repr(C)]` with explicit `_pad` fields and a size assertion; none
//! holds a `bool`, enum or `Option`. Addresses are `[u8; 4]` in network order (so
//! `bpftool map dump` prints `[10,96,0,10]`), ports are `u16` in **host** order (so a dump prints
//! `80`, not `20480`).
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
/// Every map the agent pins, in the order it lists them.
pub const ALL_MAPS: [&str; 8] = [
    MAP_FRONTENDS,
    MAP_SLOTS,
    MAP_BACKENDS,
    MAP_CONNTRACK,
    MAP_STATS,
    MAP_CONFIG,
    MAP_SOCK_REVNAT,
    MAP_AFFINITY,
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

/// First port of the range the uplink path allocates for source NAT (remote backends of
/// external traffic). Above Linux's default ephemeral range (32768–60999) so node sockets never
/// collide with it, and above the NodePort range (30000–32767).
pub const SNAT_PORT_MIN: u16 = 61_000;
/// Last port of the SNAT range.
pub const SNAT_PORT_MAX: u16 = 65_535;
/// How many random ports a new flow tries before giving up with [`Reason::SnatNoPort`].
pub const SNAT_ATTEMPTS: u32 = 8;

/// Lookup key of [`MAP_FRONTENDS`]: one address, port and protocol a Service is reached on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    /// [`Frontend::id`] of the owning frontend.
    pub frontend_id: u32,
    /// Slot number, `1..=Frontend::backend_count`.
    pub slot: u32,
}
const _: () = assert!(core::mem::size_of::<SlotKey>() == 8);

/// Value of [`MAP_SLOTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    /// Key into [`MAP_BACKENDS`]; never 0.
    pub backend_id: u32,
}
const _: () = assert!(core::mem::size_of::<Slot>() == 4);

/// Value of [`MAP_BACKENDS`] (keyed by a `u32` backend id, never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// Key of [`MAP_CONNTRACK`]: the packet's 5-tuple as it arrives at the hook. Direction is in
/// the value (see the module docs for why the two directions' tuples never coincide).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// Value of [`MAP_CONNTRACK`]. Written by the datapath when a flow starts; `last_seen_ns`,
/// `tcp_flags`, `packets` and `bytes` are updated per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
    /// Always zero.
    pub _pad: u8,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// This node's primary address (network order): the SNAT source when the FIB names none.
    pub node_addr: [u8; 4],
    /// `CONFIG_F_*` bits.
    pub flags: u32,
    /// Network-namespace cookie of the node (`SO_NETNS_COOKIE`): cgroup socket hooks translate
    /// only sockets of this namespace, so pods (own namespaces) never see localhost NodePorts.
    pub netns_cookie: u64,
}
const _: () = assert!(core::mem::size_of::<Config>() == 16);

/// Key of [`MAP_SOCK_REVNAT`]: a socket and the backend it was sent to by a cgroup hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
/// Capacity of [`MAP_AFFINITY`] (LRU).
pub const MAX_AFFINITY: u32 = 131_072;

/// [`CtEntry::tcp_flags`] bits (the TCP header's own flag bit values).
pub const CT_TCP_FIN: u8 = 0x01;
/// See [`CT_TCP_FIN`].
pub const CT_TCP_SYN: u8 = 0x02;
/// See [`CT_TCP_FIN`].
pub const CT_TCP_RST: u8 = 0x04;

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
}
/// Number of [`Hook`] values.
pub const HOOK_COUNT: u32 = 5;
/// Every hook, in index order.
pub const ALL_HOOKS: [Hook; HOOK_COUNT as usize] = [
    Hook::PodIngress,
    Hook::PodEgress,
    Hook::Xdp,
    Hook::UplinkIngress,
    Hook::Sock,
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
    /// Passed untouched: an IPv4 fragment; we do not translate these.
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
}
/// Number of [`Reason`] values.
pub const REASON_COUNT: u32 = 21;
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
];
/// Entries in [`MAP_STATS`].
pub const STATS_LEN: u32 = HOOK_COUNT * REASON_COUNT;

/// Index of the counter for `reason` at `hook` in [`MAP_STATS`].
#[inline(always)]
pub const fn stat_index(hook: Hook, reason: Reason) -> u32 {
    hook as u32 * REASON_COUNT + reason as u32
}

/// Name of the load-time global (`.rodata`) the agent may override to inject a fault in tests.
/// 0 in production. See [`FAULT_SKIP_L4_CSUM`].
pub const GLOBAL_FAULT_INJECT: &str = "SVC_FAULT_INJECT";
/// Fault bit: rewrite addresses and ports but skip the L4 checksum update. Exists only so the
/// network tests can prove they detect a broken checksum; the verifier removes the branch when
/// the bit is clear.
pub const FAULT_SKIP_L4_CSUM: u32 = 1;

#[cfg(feature = "user")]
mod user {
    // SAFETY: each type is `#[repr(C)]`, has only integer/array fields, no implicit padding
    // (checked by the size assertions above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::FrontendKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Frontend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SlotKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Slot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockRevNat {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AffinityKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Affinity {}
}

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
    }
}
