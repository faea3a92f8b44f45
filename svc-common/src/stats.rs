//! The counters of `SVC_STATS`: where a program runs ([`Hook`]), why it returned what it did
//! ([`Reason`]), and the index of each pair.
// For the intra-doc links to the maps and types of the other modules.
#[cfg(doc)]
use crate::*;

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
    /// [`Hook::PodIngress`] for IPv6: the IPv6 program on the same veth, after the IPv4 one.
    PodIngress6 = 6,
    /// [`Hook::PodEgress`] for IPv6.
    PodEgress6 = 7,
    /// [`Hook::UplinkIngress`] for IPv6.
    UplinkIngress6 = 8,
    /// [`Hook::UplinkEgress`] for IPv6.
    UplinkEgress6 = 9,
    /// cgroup socket hooks for IPv6 (connect6, sendmsg6, recvmsg6, getpeername6).
    Sock6 = 10,
    /// [`Hook::Xdp`] for IPv6: the IPv6 XDP program on the same uplink, which the IPv4 one
    /// tail-calls for IPv6 frames ([`MAP_XDP_PROGS6`]).
    Xdp6 = 11,
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
            Hook::PodIngress6 => "pod_ingress6",
            Hook::PodEgress6 => "pod_egress6",
            Hook::UplinkIngress6 => "uplink_ingress6",
            Hook::UplinkEgress6 => "uplink_egress6",
            Hook::Sock6 => "sock6",
            Hook::Xdp6 => "xdp6",
        }
    }
}

/// Number of [`Hook`] values.
pub const HOOK_COUNT: u32 = 12;
/// Every hook, in index order.
pub const ALL_HOOKS: [Hook; HOOK_COUNT as usize] = [
    Hook::PodIngress,
    Hook::PodEgress,
    Hook::Xdp,
    Hook::UplinkIngress,
    Hook::Sock,
    Hook::UplinkEgress,
    Hook::PodIngress6,
    Hook::PodEgress6,
    Hook::UplinkIngress6,
    Hook::UplinkEgress6,
    Hook::Sock6,
    Hook::Xdp6,
];

/// Why a program returned what it did; the second dimension of [`MAP_STATS`]. Every packet a
/// program sees is counted under exactly one reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Passed: not an IPv4 frame (ARP, IPv6, …); the IPv4 programs' count of what the IPv6
    /// programs after them see.
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
    /// Socket hook, a pod's socket: left untranslated for the per-packet path, which decides
    /// what a socket call cannot (the client's address for session affinity and
    /// `loadBalancerSourceRanges`, the reject of a frontend without endpoints, a connected UDP
    /// socket where it could not be destroyed later, the pod's own loopback).
    SockPerPacket = 34,
    /// Socket iterator: a connected UDP socket whose backend left its frontend was destroyed
    /// (`bpf_sock_destroy`); the application sees ECONNABORTED and reconnects.
    SockDestroyed = 35,
    /// Passed: not an IPv6 frame (the IPv6 programs; IPv4 is the IPv4 programs' to count).
    NotIpv6 = 36,
    /// Passed untouched: an IPv6 header chain the datapath does not walk: a routing header
    /// with segments left (the destination is not final), ESP, AH, an unknown next header,
    /// or more extension headers than it skips.
    ExtHeader = 37,
}
/// Number of [`Reason`] values.
pub const REASON_COUNT: u32 = 38;
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
    (Reason::SockPerPacket, "sock_per_packet"),
    (Reason::SockDestroyed, "sock_destroyed"),
    (Reason::NotIpv6, "not_ipv6"),
    (Reason::ExtHeader, "ext_header"),
];
/// Entries in [`MAP_STATS`].
pub const STATS_LEN: u32 = HOOK_COUNT * REASON_COUNT;

/// Index of the counter for `reason` at `hook` in [`MAP_STATS`].
#[inline(always)]
pub const fn stat_index(hook: Hook, reason: Reason) -> u32 {
    hook as u32 * REASON_COUNT + reason as u32
}
