//! Conntrack (`SVC_CT`): keys and entries, direction and flag bits, the TCP/UDP lifecycle
//! states with their transitions (`ct_next_state`) and timeouts (`CtTimeouts`).
use bytemuck::{Pod, Zeroable};

use crate::*;

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

/// Key of [`MAP_CONNTRACK`] ([`CtKey`]) and [`MAP_CONNTRACK6`] ([`CtKey6`]): the packet's
/// 5-tuple as it arrives at the hook. Direction is in the value (see the module docs for why
/// the two directions' tuples never coincide).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKeyOf<A> {
    /// Source address, network order.
    pub src_addr: A,
    /// Destination address, network order.
    pub dst_addr: A,
    /// Source port, host order.
    pub src_port: u16,
    /// Destination port, host order.
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// Always zero (part of the hash key).
    pub _pad: [u8; 3],
}
/// IPv4 key of [`MAP_CONNTRACK`].
pub type CtKey = CtKeyOf<[u8; 4]>;
/// IPv6 key of [`MAP_CONNTRACK6`].
pub type CtKey6 = CtKeyOf<Addr6>;
pod_per_family!(CtKeyOf, |a| 2 * a + 2 + 2 + 1 + 3);

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

impl CtKey6 {
    /// The key of an IPv6 5-tuple, built as 32-bit words for the reason [`CtKey::new`] gives.
    #[inline(always)]
    pub fn new(src: Addr6, dst: Addr6, sport: u16, dport: u16, proto: u8) -> Self {
        let (s, d) = (sport.to_ne_bytes(), dport.to_ne_bytes());
        let words = [
            src.words()[0],
            src.words()[1],
            src.words()[2],
            src.words()[3],
            dst.words()[0],
            dst.words()[1],
            dst.words()[2],
            dst.words()[3],
            u32::from_ne_bytes([s[0], s[1], d[0], d[1]]),
            u32::from_ne_bytes([proto, 0, 0, 0]),
        ];
        // SAFETY: CtKey6 is `Pod` and 40 bytes (asserted by `pod_per_family`), as is
        // [u32; 10]; its fields lie in the order the words hold them.
        unsafe { core::mem::transmute::<[u32; 10], CtKey6>(words) }
    }
}

/// Value of [`MAP_CONNTRACK`] ([`CtEntry`]) and [`MAP_CONNTRACK6`] ([`CtEntry6`]). Written by
/// the datapath when a flow starts; `last_seen_ns`, `tcp_flags`, `packets` and `bytes` are
/// updated per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtEntryOf<A> {
    /// Source address the packet leaves with (network order): unchanged for a forward entry
    /// without SNAT, this node's address with [`CT_F_SNAT`], the frontend for a reply entry.
    pub src_addr: A,
    /// Destination address the packet leaves with: the backend (forward), the client (reply).
    pub dst_addr: A,
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
/// IPv4 value of [`MAP_CONNTRACK`].
pub type CtEntry = CtEntryOf<[u8; 4]>;
/// IPv6 value of [`MAP_CONNTRACK6`].
pub type CtEntry6 = CtEntryOf<Addr6>;
pod_per_family!(CtEntryOf, |a| 2 * a + 2 + 2 + 4 + 4 + 4 + 4 * 8);
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
    pub fn for_entry<A>(&self, proto: u8, e: &CtEntryOf<A>) -> u64 {
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
    pub fn expired<A>(&self, proto: u8, e: &CtEntryOf<A>, now_ns: u64) -> bool {
        now_ns.saturating_sub(e.last_seen_ns) > self.for_entry(proto, e)
    }
}

/// The key of the other entry of `e`'s flow, whose key is `key`: a forward entry's reply key,
/// or a reply entry's forward key. Each entry holds the tuple its packets leave with, and the
/// other direction's packets arrive with exactly that tuple reversed.
#[inline(always)]
pub fn ct_peer_key<A: Addr>(key: &CtKeyOf<A>, e: &CtEntryOf<A>) -> CtKeyOf<A> {
    A::ct_key(e.dst_addr, e.src_addr, e.dst_port, e.src_port, key.proto)
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
