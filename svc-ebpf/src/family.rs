//! What the shared decisions (`lb`, `ct`, `frag`) need to know of an address family: its maps
//! and the few computations whose shape depends on the address width.
//!
//! Every decision is written once, generic over `A: Family` (`[u8; 4]` or `Addr6`, the
//! `svc_common::Addr` widths), and the compiler instantiates it per family: the IPv4 programs
//! use only IPv4 maps and 16-byte conntrack keys, the IPv6 programs only the `*6` maps. A
//! program is one family's, so the verifier never walks the other family's code in it.
use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    btf_maps::{HashMap, LpmTrie, LruHashMap},
};
use svc_common::{
    Addr, Addr6, AffinityKeyOf, BackendOf, Config, CtEntryOf, CtKeyOf, FragKey, FragKey6,
    FragPorts, Frontend, FrontendKeyOf, Scratch, SockKey, SockKey6, SockRevNatOf, SourceRangeKeyOf,
    TraceFilter, MAX_AFFINITY, MAX_BACKENDS, MAX_CONNTRACK, MAX_FRAGS, MAX_FRONTENDS,
    MAX_SOCK_REVNAT, MAX_SOURCE_RANGES,
};

use crate::{
    maps::{
        BPF_F_NO_COMMON_LRU, SVC_AFFINITY, SVC_AFFINITY6, SVC_BACKENDS, SVC_BACKENDS6, SVC_CT,
        SVC_CT6, SVC_FRAGS, SVC_FRAGS6, SVC_FRONTENDS, SVC_FRONTENDS6, SVC_SOCK_REV, SVC_SOCK_REV6,
        SVC_SOURCE_RANGES, SVC_SOURCE_RANGES6,
    },
    parse::FlowOf,
};

pub(crate) type Frontends<A> = HashMap<FrontendKeyOf<A>, Frontend, { MAX_FRONTENDS as usize }>;
pub(crate) type Backends<A> = HashMap<u32, BackendOf<A>, { MAX_BACKENDS as usize }>;
pub(crate) type Conntrack<A> =
    LruHashMap<CtKeyOf<A>, CtEntryOf<A>, { MAX_CONNTRACK as usize }, BPF_F_NO_COMMON_LRU>;
pub(crate) type Affinities<A> =
    LruHashMap<AffinityKeyOf<A>, <A as Addr>::Affinity, { MAX_AFFINITY as usize }>;
pub(crate) type SourceRanges<A> = LpmTrie<SourceRangeKeyOf<A>, u8, { MAX_SOURCE_RANGES as usize }>;
pub(crate) type SockRev<A> =
    LruHashMap<<A as Family>::SockKey, SockRevNatOf<A>, { MAX_SOCK_REVNAT as usize }>;

/// An address family as the programs see it (implemented for the two `svc_common::Addr`s).
pub(crate) trait Family: Addr {
    /// What a parsed packet of this family carries beyond the fields both share
    /// ([`FlowOf::x`]): nothing for IPv4 (the layout of its `Flow` is what the verifier
    /// budget was measured with), the L4 offset and the fragment id for IPv6.
    type Extra: Copy;
    /// [`Self::Extra`] of a flow not parsed yet.
    const EXTRA: Self::Extra;
    /// The IP protocol number of the family's ICMP (1, or 58 for ICMPv6).
    const PROTO_ICMP: u8;
    /// The key of the family's fragment map.
    type FragKey;

    fn frontends() -> &'static Frontends<Self>;
    fn backends() -> &'static Backends<Self>;
    fn ct() -> &'static Conntrack<Self>;
    fn affinities() -> &'static Affinities<Self>;
    fn source_ranges() -> &'static SourceRanges<Self>;
    fn frags() -> &'static LruHashMap<Self::FragKey, FragPorts, { MAX_FRAGS as usize }>;
    /// The fragment-map key of a (first or later) fragment.
    fn frag_key(flow: &FlowOf<Self>) -> Self::FragKey;
    /// This family's reply entry in the per-CPU scratch memory.
    fn scratch_rep(s: *mut Scratch) -> *mut CtEntryOf<Self>;
    /// This node's source-NAT address of the family (unspecified: none).
    fn snat_addr(c: &Config) -> Self;
    /// The address folded to 32 bits (xor of its words) for the flow hash.
    fn fold32(self) -> u32;
    /// Whether two addresses are equal, compared as whole words. Not `==`: in code generic
    /// over the family, `==` on `[u8; 4]` fields of map values was lowered to byte loads
    /// (the callee's `&[u8; 4]` has alignment 1), which cost the IPv4 programs ~20 % more
    /// verified instructions; taken by value, the caller loads each field with the alignment
    /// of its place in the struct.
    fn same(a: Self, b: Self) -> bool;
    /// Writes `src` and `dst` into a FIB lookup's parameters.
    fn fib_addrs(p: &mut FibParams, src: Self, dst: Self);

    /// The key of the family's socket-LB reverse map (`SockKey`, `SockKey6`: not one generic
    /// struct, their padding differs).
    type SockKey;
    /// The socket-LB reverse map (`SVC_SOCK_REV`, `SVC_SOCK_REV6`).
    fn sock_rev() -> &'static SockRev<Self>;
    /// The reverse-map key of a socket (`cookie`) sent to `backend`:`port` (host order).
    fn sock_key(cookie: u64, backend: Self, port: u16, proto: u8) -> Self::SockKey;
    /// A loopback address (127.0.0.0/8, ::1): a pod's own, never a Service for its sockets.
    fn is_loopback(self) -> bool;

    /// Whether `trace::emit` calls its filter match as a subprogram rather than inlining it.
    /// IPv4: inlined (as a subprogram, verified once per slot of the loop and call state, it
    /// cost the IPv4 programs 14–51 % more verified instructions). IPv6: a call. Inlined into
    /// the loop over the slots, LLVM hoisted the loads of the four addresses (sixteen words)
    /// out of it and spilled them, 8 bytes of stack each: the IPv6 `emit`'s frame was 336
    /// bytes, the tc programs' deepest chain 496 of the verifier's 512; as a call, 200 + 88.
    const TRACE_MATCH_CALL: bool;
    /// The two ends a trace filter names in this family (all zero: any).
    fn trace_ends(f: &TraceFilter) -> (Self, Self);
    /// The address as aya-log's `{:i}` takes it (`[u8; 4]`, `[u8; 16]`).
    type Log;
    fn log(self) -> Self::Log;
}

impl Family for [u8; 4] {
    type Extra = ();
    const EXTRA: () = ();
    const PROTO_ICMP: u8 = crate::parse::PROTO_ICMP;
    type FragKey = FragKey;

    #[inline(always)]
    fn frontends() -> &'static Frontends<Self> {
        &SVC_FRONTENDS
    }
    #[inline(always)]
    fn backends() -> &'static Backends<Self> {
        &SVC_BACKENDS
    }
    #[inline(always)]
    fn ct() -> &'static Conntrack<Self> {
        &SVC_CT
    }
    #[inline(always)]
    fn affinities() -> &'static Affinities<Self> {
        &SVC_AFFINITY
    }
    #[inline(always)]
    fn source_ranges() -> &'static SourceRanges<Self> {
        &SVC_SOURCE_RANGES
    }
    #[inline(always)]
    fn frags() -> &'static LruHashMap<FragKey, FragPorts, { MAX_FRAGS as usize }> {
        &SVC_FRAGS
    }
    #[inline(always)]
    fn frag_key(flow: &FlowOf<Self>) -> FragKey {
        FragKey {
            src_addr: flow.saddr,
            dst_addr: flow.daddr,
            id: flow.ip_id,
            proto: flow.proto,
            _pad: 0,
        }
    }
    #[inline(always)]
    fn scratch_rep(s: *mut Scratch) -> *mut CtEntryOf<Self> {
        // SAFETY: a field address of a valid pointer; nothing is read.
        unsafe { core::ptr::addr_of_mut!((*s).rep) }
    }
    #[inline(always)]
    fn snat_addr(c: &Config) -> Self {
        c.node_addr
    }
    #[inline(always)]
    fn fold32(self) -> u32 {
        u32::from_ne_bytes(self)
    }
    #[inline(always)]
    fn same(a: Self, b: Self) -> bool {
        u32::from_ne_bytes(a) == u32::from_ne_bytes(b)
    }
    #[inline(always)]
    fn fib_addrs(p: &mut FibParams, src: Self, dst: Self) {
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    }

    type SockKey = SockKey;
    #[inline(always)]
    fn sock_rev() -> &'static SockRev<Self> {
        &SVC_SOCK_REV
    }
    #[inline(always)]
    fn sock_key(cookie: u64, backend: Self, port: u16, proto: u8) -> SockKey {
        SockKey {
            cookie,
            backend_addr: backend,
            backend_port: port,
            proto,
            _pad: 0,
        }
    }
    #[inline(always)]
    fn is_loopback(self) -> bool {
        self[0] == 127
    }

    const TRACE_MATCH_CALL: bool = false;
    #[inline(always)]
    fn trace_ends(f: &TraceFilter) -> (Self, Self) {
        (f.src_addr, f.dst_addr)
    }
    type Log = [u8; 4];
    #[inline(always)]
    fn log(self) -> [u8; 4] {
        self
    }
}

/// [`FlowOf::x`] of an IPv6 packet.
#[derive(Clone, Copy)]
pub(crate) struct V6Extra {
    /// Offset of the L4 header (after the extension headers skipped).
    pub l4_off: u16,
    /// The Fragment header's identification, host order (fragments only).
    pub frag_id: u32,
}

impl Family for Addr6 {
    type Extra = V6Extra;
    const EXTRA: V6Extra = V6Extra {
        l4_off: 0,
        frag_id: 0,
    };
    const PROTO_ICMP: u8 = crate::parse::PROTO_ICMPV6;
    type FragKey = FragKey6;

    #[inline(always)]
    fn frontends() -> &'static Frontends<Self> {
        &SVC_FRONTENDS6
    }
    #[inline(always)]
    fn backends() -> &'static Backends<Self> {
        &SVC_BACKENDS6
    }
    #[inline(always)]
    fn ct() -> &'static Conntrack<Self> {
        &SVC_CT6
    }
    #[inline(always)]
    fn affinities() -> &'static Affinities<Self> {
        &SVC_AFFINITY6
    }
    #[inline(always)]
    fn source_ranges() -> &'static SourceRanges<Self> {
        &SVC_SOURCE_RANGES6
    }
    #[inline(always)]
    fn frags() -> &'static LruHashMap<FragKey6, FragPorts, { MAX_FRAGS as usize }> {
        &SVC_FRAGS6
    }
    #[inline(always)]
    fn frag_key(flow: &FlowOf<Self>) -> FragKey6 {
        FragKey6 {
            src_addr: flow.saddr,
            dst_addr: flow.daddr,
            id: flow.x.frag_id,
            proto: flow.proto,
            _pad: [0; 3],
        }
    }
    #[inline(always)]
    fn scratch_rep(s: *mut Scratch) -> *mut CtEntryOf<Self> {
        // SAFETY: a field address of a valid pointer; nothing is read.
        unsafe { core::ptr::addr_of_mut!((*s).rep6) }
    }
    #[inline(always)]
    fn snat_addr(c: &Config) -> Self {
        c.node_addr6
    }
    #[inline(always)]
    fn fold32(self) -> u32 {
        let w = self.words();
        w[0] ^ w[1] ^ w[2] ^ w[3]
    }
    #[inline(always)]
    fn same(a: Self, b: Self) -> bool {
        let (x, y) = (a.words(), b.words());
        (x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) == 0
    }
    #[inline(always)]
    fn fib_addrs(p: &mut FibParams, src: Self, dst: Self) {
        p.__bindgen_anon_3.ipv6_src = *src.words();
        p.__bindgen_anon_4.ipv6_dst = *dst.words();
    }

    type SockKey = SockKey6;
    #[inline(always)]
    fn sock_rev() -> &'static SockRev<Self> {
        &SVC_SOCK_REV6
    }
    #[inline(always)]
    fn sock_key(cookie: u64, backend: Self, port: u16, proto: u8) -> SockKey6 {
        let mut k = core::mem::MaybeUninit::<SockKey6>::uninit();
        let p = k.as_mut_ptr();
        // SAFETY: every field is written before `assume_init`. The pad as a byte and an
        // aligned word (offsets 27 and 28): written as `[0; 5]` it became a call of `memset`.
        unsafe {
            core::ptr::addr_of_mut!((*p).cookie).write(cookie);
            core::ptr::addr_of_mut!((*p).backend_addr).write(backend);
            core::ptr::addr_of_mut!((*p).backend_port).write(port);
            core::ptr::addr_of_mut!((*p).proto).write(proto);
            let pad = core::ptr::addr_of_mut!((*p)._pad) as *mut u8;
            pad.write(0);
            (pad.add(1) as *mut u32).write(0);
            k.assume_init()
        }
    }
    #[inline(always)]
    fn is_loopback(self) -> bool {
        // ::1, the only IPv6 loopback address.
        let w = self.words();
        w[0] | w[1] | w[2] == 0 && w[3] == u32::from_ne_bytes([0, 0, 0, 1])
    }

    const TRACE_MATCH_CALL: bool = true;
    #[inline(always)]
    fn trace_ends(f: &TraceFilter) -> (Self, Self) {
        (f.src_addr6, f.dst_addr6)
    }
    type Log = [u8; 16];
    #[inline(always)]
    fn log(self) -> [u8; 16] {
        self.octets
    }
}
