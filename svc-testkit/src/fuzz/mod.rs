//! Structure-aware datapath fuzzing through `BPF_PROG_TEST_RUN` (docs/RELIABILITY.md).
//!
//! # Layout
//! - [`Rng`]: a seeded splitmix64; a run is reproducible from its seed and packet count.
//! - [`install_services`]: a realistic Service set (several Services with several backends, one
//!   without, a `loadBalancerSourceRanges` LB IP, a NodePort with `externalTrafficPolicy:
//!   Local`, an external IP behind a narrow path, a hairpin Service), written with the fixture
//!   helpers in the agent's order. Conntrack and fragment entries come from the traffic itself
//!   (flows to the frontends open them) and [`Gen`] re-reads `SVC_CT` so that replies and ICMP
//!   errors match live entries.
//! - [`Gen`]: frames to frontends, to non-frontends, conntrack tuples both ways, ICMP errors
//!   quoting them, fragments, then mutations (VLAN tag, IPv4 options, bad IHL / total length,
//!   fragment bits, TTL 0/1, partial checksums, truncation at any offset, byte flips, garbage).
//! - [`check`]: the oracle, which never consults the program's counters or maps to decide what
//!   is right (see its doc and docs/RELIABILITY.md).
//! - [`run`]: drives every [`Target`] round robin against one datapath and returns a [`Report`].
use std::{
    collections::{BTreeMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use svc_common::{
    CtKey, Frontend, FrontendKey, Hook, BACKEND_F_LOCAL, FRONTEND_F_DROP_NO_BACKEND,
    FRONTEND_F_EXTERNAL_IP, FRONTEND_F_EXTERNAL_SCOPE, FRONTEND_F_NODEPORT,
    FRONTEND_F_SOURCE_RANGES, PROTO_TCP, PROTO_UDP, REASON_COUNT, SCOPE_ANY, SCOPE_EXTERNAL,
};

use crate::fixtures::*;

// ---------------------------------------------------------------------------------------------
// RNG
// ---------------------------------------------------------------------------------------------

/// splitmix64 (Steele, Lea, Flood 2014): small, seedable, good enough to pick fields.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() >> 32) * n) >> 32
    }
    /// True with probability `percent` %.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

/// `TC_ACT_REDIRECT`.
pub const TC_ACT_REDIRECT: u32 = 7;

/// A program under fuzzing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    PodIngress,
    PodEgress,
    UplinkIngress,
    UplinkEgress,
    Xdp,
}

/// Every program, in the order the fuzzer cycles through them.
pub const ALL_TARGETS: [Target; 5] = [
    Target::PodIngress,
    Target::PodEgress,
    Target::UplinkIngress,
    Target::UplinkEgress,
    Target::Xdp,
];

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::PodIngress => Program::Ingress.name(),
            Target::PodEgress => Program::Egress.name(),
            Target::UplinkIngress => Program::UplinkIngress.name(),
            Target::UplinkEgress => Program::UplinkEgress.name(),
            Target::Xdp => XDP_PROGRAM,
        }
    }
    pub fn hook(self) -> Hook {
        match self {
            Target::PodIngress => Hook::PodIngress,
            Target::PodEgress => Hook::PodEgress,
            Target::UplinkIngress => Hook::UplinkIngress,
            Target::UplinkEgress => Hook::UplinkEgress,
            Target::Xdp => Hook::Xdp,
        }
    }
    /// The verdict that lets a packet continue untouched.
    pub fn pass(self) -> u32 {
        if self == Target::Xdp {
            XDP_PASS
        } else {
            TC_ACT_UNSPEC
        }
    }
    /// Name of a verdict this program may return; `None` for any other value (a failure).
    pub fn verdict_name(self, v: u32) -> Option<&'static str> {
        if self == Target::Xdp {
            match v {
                XDP_PASS => Some("pass"),
                XDP_DROP => Some("drop"),
                XDP_TX => Some("tx"),
                XDP_REDIRECT => Some("redirect"),
                _ => None,
            }
        } else {
            match v {
                TC_ACT_UNSPEC => Some("pass"),
                TC_ACT_SHOT => Some("drop"),
                TC_ACT_REDIRECT => Some("redirect"),
                _ => None,
            }
        }
    }
    /// Pod programs see pods' frames, uplink programs the wire's.
    fn on_uplink(self) -> bool {
        !matches!(self, Target::PodIngress | Target::PodEgress)
    }
}

// ---------------------------------------------------------------------------------------------
// The Service set
// ---------------------------------------------------------------------------------------------

/// ClusterIP of a Service with two backends (TCP 80, UDP 53).
pub const FZ_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// ClusterIP of a Service without endpoints (rejects).
pub const FZ_EMPTY_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// ClusterIP whose only backend is [`CLIENT_POD`] itself (hairpin).
pub const FZ_HAIRPIN_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
/// ClusterIP with session affinity.
pub const FZ_AFFINITY_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
/// LoadBalancer ingress IP with `loadBalancerSourceRanges`.
pub const FZ_LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// An `externalIP` whose backends sit behind a narrow path or an unresolved next hop.
pub const FZ_EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);

/// One frontend of the set.
#[derive(Clone, Copy, Debug)]
pub struct FrontendDesc {
    pub addr: SocketAddrV4,
    pub proto: u8,
}

/// What the generator knows about the maps it wrote: the frontends, and every address that
/// can appear in a frontend, backend or conntrack key (frontends, backends, the node).
#[derive(Clone, Debug)]
pub struct ServiceSet {
    pub frontends: Vec<FrontendDesc>,
    pub related: HashSet<[u8; 4]>,
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// (frontend address, proto, scope, id, `FRONTEND_F_*` flags, affinity timeout, backend ids).
type FrontendRow = (SocketAddrV4, u8, u8, u32, u32, u32, Vec<u32>);

/// Writes the Service set (backends, slots, source ranges, frontends last, as the agent does)
/// and returns what the generator and the oracle know about it.
pub fn install_services(dp: &mut Datapath) -> ServiceSet {
    let hairpin_backend = sa(*CLIENT_POD.ip(), 8080);
    // (id, address, proto, flags)
    let backends = [
        (1, BACKEND_A, PROTO_TCP, BACKEND_F_LOCAL),
        (2, BACKEND_B, PROTO_TCP, 0),
        (3, BACKEND_NARROW, PROTO_TCP, 0),
        (4, BACKEND_UNRESOLVED, PROTO_TCP, 0),
        (5, hairpin_backend, PROTO_TCP, BACKEND_F_LOCAL),
        (11, sa(*BACKEND_A.ip(), 5353), PROTO_UDP, BACKEND_F_LOCAL),
        (12, sa(*BACKEND_B.ip(), 5353), PROTO_UDP, 0),
    ];
    for (id, addr, proto, flags) in backends {
        dp.put_backend_flags(id, addr, proto, flags).unwrap();
    }
    let nodeport = NODEPORT.port();
    let frontends: Vec<FrontendRow> = vec![
        (
            sa(FZ_CLUSTER_IP, 80),
            PROTO_TCP,
            SCOPE_ANY,
            1,
            0,
            0,
            vec![1, 2],
        ),
        (
            sa(FZ_CLUSTER_IP, 53),
            PROTO_UDP,
            SCOPE_ANY,
            2,
            0,
            0,
            vec![11, 12],
        ),
        (sa(FZ_EMPTY_IP, 80), PROTO_TCP, SCOPE_ANY, 3, 0, 0, vec![]),
        (sa(FZ_EMPTY_IP, 53), PROTO_UDP, SCOPE_ANY, 4, 0, 0, vec![]),
        (
            sa(FZ_LB_IP, 80),
            PROTO_TCP,
            SCOPE_ANY,
            5,
            FRONTEND_F_EXTERNAL_IP | FRONTEND_F_SOURCE_RANGES,
            0,
            vec![1, 2],
        ),
        (
            sa(FZ_HAIRPIN_IP, 80),
            PROTO_TCP,
            SCOPE_ANY,
            6,
            0,
            0,
            vec![5],
        ),
        // NodePort, externalTrafficPolicy Local: the external scope holds the local endpoint.
        (
            sa(NODE_IP, nodeport),
            PROTO_TCP,
            SCOPE_EXTERNAL,
            8,
            FRONTEND_F_NODEPORT,
            0,
            vec![1],
        ),
        (
            sa(NODE_IP, nodeport),
            PROTO_TCP,
            SCOPE_ANY,
            7,
            FRONTEND_F_NODEPORT | FRONTEND_F_EXTERNAL_SCOPE,
            0,
            vec![1, 2],
        ),
        (
            sa(NODE_IP, nodeport),
            PROTO_UDP,
            SCOPE_ANY,
            10,
            FRONTEND_F_NODEPORT,
            0,
            vec![11, 12],
        ),
        (
            sa(FZ_EXTERNAL_IP, 443),
            PROTO_TCP,
            SCOPE_ANY,
            9,
            FRONTEND_F_EXTERNAL_IP,
            0,
            vec![3, 4, 2],
        ),
        // NodePort, policy Local, no local endpoint: external clients are dropped.
        (
            sa(NODE_IP, nodeport + 1),
            PROTO_TCP,
            SCOPE_EXTERNAL,
            14,
            FRONTEND_F_NODEPORT | FRONTEND_F_DROP_NO_BACKEND,
            0,
            vec![],
        ),
        (
            sa(NODE_IP, nodeport + 1),
            PROTO_TCP,
            SCOPE_ANY,
            13,
            FRONTEND_F_NODEPORT | FRONTEND_F_EXTERNAL_SCOPE,
            0,
            vec![2],
        ),
        (
            sa(FZ_AFFINITY_IP, 80),
            PROTO_TCP,
            SCOPE_ANY,
            15,
            0,
            10_800,
            vec![1, 2],
        ),
    ];
    let mut set = ServiceSet {
        frontends: Vec::new(),
        related: HashSet::new(),
    };
    for (_, addr, _, _) in backends {
        set.related.insert(addr.ip().octets());
    }
    set.related.insert(NODE_IP.octets());
    for (addr, proto, scope, id, flags, affinity, bids) in frontends {
        for (i, bid) in bids.iter().enumerate() {
            dp.put_slot(id, i as u32 + 1, *bid).unwrap();
        }
        if flags & FRONTEND_F_SOURCE_RANGES != 0 {
            // External clients on the underlay and the first pods of this node; FAR_CLIENT's
            // network (198.51.100.0/24) is outside.
            dp.put_source_range(id, Ipv4Addr::new(172, 18, 0, 0), 24)
                .unwrap();
            dp.put_source_range(id, Ipv4Addr::new(10, 244, 1, 0), 30)
                .unwrap();
        }
        dp.put_frontend_entry(
            FrontendKey {
                addr: addr.ip().octets(),
                port: addr.port(),
                proto,
                scope,
            },
            Frontend {
                id,
                backend_count: bids.len() as u32,
                flags,
                affinity_timeout_s: affinity,
            },
        )
        .unwrap();
        set.related.insert(addr.ip().octets());
        if scope == SCOPE_ANY {
            set.frontends.push(FrontendDesc { addr, proto });
        }
    }
    set
}

// ---------------------------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------------------------

/// Pods of this node (clients; 10.244.1.77 is outside the LB IP's source ranges).
const POD_CLIENTS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 244, 1, 2),
    Ipv4Addr::new(10, 244, 1, 10),
    Ipv4Addr::new(10, 244, 1, 11),
    Ipv4Addr::new(10, 244, 1, 77),
];
/// External clients: routed and resolved, beyond the narrow path, outside the source ranges.
const EXT_CLIENTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(172, 18, 0, 100),
    Ipv4Addr::new(198, 51, 100, 7),
    Ipv4Addr::new(198, 51, 100, 99),
];
/// Addresses that are nothing to svc-lb (pods and hosts without Services).
const UNRELATED: [Ipv4Addr; 6] = [
    Ipv4Addr::new(10, 244, 2, 9),
    Ipv4Addr::new(10, 244, 1, 50),
    Ipv4Addr::new(10, 96, 0, 99),
    Ipv4Addr::new(172, 18, 0, 50),
    Ipv4Addr::new(8, 8, 8, 8),
    Ipv4Addr::new(198, 51, 100, 200),
];

/// What the generator made, before mutation (for the distribution only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    ToFrontend,
    ToFrontendWrongPort,
    CtTuple,
    IcmpError,
    Fragment,
    Unrelated,
    NotIpv4,
    Garbage,
}

/// The frame generator: one per run, seeded.
pub struct Gen {
    pub rng: Rng,
    set: ServiceSet,
    /// Conntrack keys seen at the last refresh (replies, established flows, SNAT tuples).
    ct_keys: Vec<CtKey>,
    /// Second fragments waiting for the next packet of the same target.
    pending: BTreeMap<Target, Vec<u8>>,
}

fn key_src(k: &CtKey) -> SocketAddrV4 {
    sa(Ipv4Addr::from(k.src_addr), k.src_port)
}
fn key_dst(k: &CtKey) -> SocketAddrV4 {
    sa(Ipv4Addr::from(k.dst_addr), k.dst_port)
}

/// Recomputes the IPv4 header checksum over the 20 bytes at 14 (whatever the IHL says).
fn fix_ip_csum(f: &mut [u8]) {
    if f.len() >= 34 {
        f[24] = 0;
        f[25] = 0;
        let c = rfc1071(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }
}

impl Gen {
    pub fn new(seed: u64, set: ServiceSet) -> Self {
        Self {
            rng: Rng::new(seed),
            set,
            ct_keys: Vec::new(),
            pending: BTreeMap::new(),
        }
    }

    /// Re-reads up to 1024 conntrack keys, so generated replies match live flows.
    pub fn refresh_ct(&mut self, dp: &Datapath) {
        self.ct_keys = dp.ct_keys().into_iter().take(1024).collect();
    }

    fn port(&mut self) -> u16 {
        // A small pool, so flows repeat (established, replies, clashes).
        40000 + self.rng.below(48) as u16
    }

    fn client(&mut self, t: Target) -> Ipv4Addr {
        if t.on_uplink() == self.rng.chance(85) {
            *self.rng.pick(&EXT_CLIENTS)
        } else {
            *self.rng.pick(&POD_CLIENTS)
        }
    }

    fn payload(&mut self) -> Vec<u8> {
        let n = match self.rng.below(20) {
            0 => 1100 + self.rng.below(300) as usize, // over the narrow paths' MTU
            1 => 0,
            2..=9 => PAYLOAD.len(),
            _ => self.rng.below(120) as usize,
        };
        (0..n).map(|_| self.rng.byte()).collect()
    }

    fn l4(&mut self, proto: u8) -> L4 {
        match proto {
            PROTO_TCP => {
                let flags = match self.rng.below(10) {
                    0..=3 => TCP_SYN,
                    4 => TCP_SYN | TCP_ACK,
                    5 | 6 => TCP_ACK | TCP_PSH,
                    7 => TCP_FIN | TCP_ACK,
                    8 => TCP_RST | if self.rng.chance(50) { TCP_ACK } else { 0 },
                    _ => self.rng.byte() & 0x1f,
                };
                L4::Tcp {
                    flags,
                    seq: self.rng.next_u64() as u32,
                    ack: self.rng.next_u64() as u32,
                }
            }
            PROTO_UDP => L4::Udp {
                zero_csum: self.rng.chance(20),
            },
            _ => L4::IcmpEcho,
        }
    }

    fn pkt(&mut self, src: SocketAddrV4, dst: SocketAddrV4, proto: u8) -> Pkt {
        let l4 = self.l4(proto);
        let mut p = Pkt::tcp(src, dst, TCP_SYN);
        p.l4 = l4;
        p.payload = self.payload();
        p.ip_id = self.rng.next_u64() as u16;
        p.ttl = match self.rng.below(20) {
            0 => 0,
            1 => 1,
            2 => 2,
            _ => 64,
        };
        if self.rng.chance(10) {
            p.df = Some(false);
        }
        p
    }

    fn macs(&mut self, t: Target) -> ([u8; 6], [u8; 6]) {
        if t.on_uplink() {
            let src = *self.rng.pick(&[EXT_CLIENT_MAC, PEER_NODE_MAC, ROUTER_MAC]);
            (src, NODE_MAC)
        } else {
            (CLIENT_MAC, GATEWAY_MAC)
        }
    }

    fn frame(&mut self, t: Target, p: &Pkt) -> Vec<u8> {
        let (s, d) = self.macs(t);
        let mut f = p.build_eth(s, d);
        let proto = proto_of(p.l4);
        let partial_ok = (proto == PROTO_TCP || proto == PROTO_UDP)
            && p.ip_options.is_empty()
            && !matches!(p.l4, L4::Udp { zero_csum: true });
        if partial_ok && self.rng.chance(8) {
            f = with_partial_checksum(f);
        }
        f
    }

    /// The next frame for `t` as built (a pending second fragment first), before mutation.
    pub fn next_unmutated(&mut self, t: Target) -> (Vec<u8>, Kind) {
        match self.pending.remove(&t) {
            Some(f) => (f, Kind::Fragment),
            None => self.base(t),
        }
    }

    /// The next frame for `t`, and what it was made as.
    pub fn next(&mut self, t: Target) -> (Vec<u8>, Kind) {
        if let Some(f) = self.pending.remove(&t) {
            return (f, Kind::Fragment);
        }
        let (mut f, kind) = self.base(t);
        self.mutate(&mut f);
        (f, kind)
    }

    fn base(&mut self, t: Target) -> (Vec<u8>, Kind) {
        match self.rng.below(100) {
            0..=34 => {
                let fe = *self.rng.pick(&self.set.frontends);
                let src = sa(self.client(t), self.port());
                let mut p = self.pkt(src, fe.addr, fe.proto);
                if self.rng.chance(5) {
                    p.ip_options = (0..4 * (1 + self.rng.below(10)))
                        .map(|_| self.rng.byte())
                        .collect();
                }
                (self.frame(t, &p), Kind::ToFrontend)
            }
            35..=39 => {
                let fe = *self.rng.pick(&self.set.frontends);
                let dst = sa(*fe.addr.ip(), fe.addr.port() ^ 0x100);
                let proto = *self.rng.pick(&[PROTO_TCP, PROTO_UDP, 1]);
                let src = sa(self.client(t), self.port());
                let p = self.pkt(src, dst, proto);
                (self.frame(t, &p), Kind::ToFrontendWrongPort)
            }
            40..=64 if !self.ct_keys.is_empty() => {
                let k = *self.rng.pick(&self.ct_keys);
                let p = self.pkt(key_src(&k), key_dst(&k), k.proto);
                (self.frame(t, &p), Kind::CtTuple)
            }
            65..=74 => (self.icmp_error(t), Kind::IcmpError),
            75..=79 => (self.fragments(t), Kind::Fragment),
            80..=91 => {
                let src = sa(*self.rng.pick(&UNRELATED), self.port());
                let dst = sa(*self.rng.pick(&UNRELATED), self.rng.byte() as u16 + 1);
                let proto = *self.rng.pick(&[PROTO_TCP, PROTO_UDP, 1]);
                let p = self.pkt(src, dst, proto);
                (self.frame(t, &p), Kind::Unrelated)
            }
            92..=94 => {
                let f = if self.rng.chance(50) {
                    arp_request()
                } else {
                    ipv6_syn()
                };
                (f, Kind::NotIpv4)
            }
            _ => {
                let n = 14 + self.rng.below(100) as usize;
                let mut f: Vec<u8> = (0..n).map(|_| self.rng.byte()).collect();
                if self.rng.chance(60) {
                    f[12] = 0x08;
                    f[13] = 0x00;
                    if n > 14 && self.rng.chance(70) {
                        f[14] = 0x45;
                        fix_ip_csum(&mut f);
                    }
                }
                (f, Kind::Garbage)
            }
        }
    }

    /// An ICMP error about a conntrack tuple (as the error travels: quoting a packet the other
    /// way), or about a frontend flow, or about nothing.
    fn icmp_error(&mut self, t: Target) -> Vec<u8> {
        let (travel_src, travel_dst, proto) = if !self.ct_keys.is_empty() && self.rng.chance(70) {
            let k = *self.rng.pick(&self.ct_keys);
            (key_src(&k), key_dst(&k), k.proto)
        } else if self.rng.chance(50) {
            let fe = *self.rng.pick(&self.set.frontends);
            (fe.addr, sa(self.client(t), self.port()), fe.proto)
        } else {
            let a = sa(*self.rng.pick(&UNRELATED), 53);
            let b = sa(*self.rng.pick(&UNRELATED), self.port());
            (a, b, *self.rng.pick(&[PROTO_TCP, PROTO_UDP]))
        };
        // The offending packet went travel_dst -> travel_src.
        let mut quoted = self.pkt(travel_dst, travel_src, proto);
        quoted.ttl = 1 + self.rng.below(64) as u8;
        let l4_len = match proto_of(quoted.l4) {
            PROTO_TCP => 20,
            _ => 8,
        };
        let q = match self.rng.below(4) {
            0 => quote_of(&quoted, Some(8)),
            1 => quote_of(&quoted, None),
            2 => {
                let full = quote_of(&quoted, None);
                let n = (20 + l4_len).min(full.len());
                full[..n].to_vec()
            }
            _ => quote_of(&quoted, Some(self.rng.below(8) as usize)),
        };
        let icmp_type = match self.rng.below(3) {
            0 => port_unreachable(),
            1 => frag_needed(1000 + self.rng.below(500) as u16),
            _ => time_exceeded(),
        };
        // From the quoted destination itself, or from a router on the way.
        let outer_src = if self.rng.chance(60) {
            *travel_src.ip()
        } else {
            ROUTER
        };
        let (s, d) = self.macs(t);
        icmp_error(
            outer_src,
            *travel_dst.ip(),
            icmp_type,
            &q,
            64 - self.rng.below(3) as u8,
            s,
            d,
        )
    }

    /// The first fragment of a datagram now, the second with the next packet of `t`.
    fn fragments(&mut self, t: Target) -> Vec<u8> {
        let (src, dst, proto) = if !self.ct_keys.is_empty() && self.rng.chance(40) {
            let k = *self.rng.pick(&self.ct_keys);
            (key_src(&k), key_dst(&k), k.proto)
        } else {
            let fe = *self.rng.pick(&self.set.frontends);
            (sa(self.client(t), self.port()), fe.addr, fe.proto)
        };
        let mut p = self.pkt(src, dst, proto);
        p.payload = (0..64 + self.rng.below(64))
            .map(|_| self.rng.byte())
            .collect();
        p.ip_options.clear();
        let first_len = *self.rng.pick(&[24, 32, 48]);
        let [a, b] = fragments(&p, first_len);
        let (s, d) = self.macs(t);
        let (a, b) = (with_macs(a, s, d), with_macs(b, s, d));
        if self.rng.chance(20) {
            // Out of order: the later fragment first.
            self.pending.insert(t, a);
            return b;
        }
        self.pending.insert(t, b);
        a
    }

    fn mutate(&mut self, f: &mut Vec<u8>) {
        let r = self.rng.below(100);
        match r {
            // Most frames stay as built: the paths behind a valid header need coverage too.
            0..=54 => {}
            55..=61 => {
                // 802.1Q tag in front of the EtherType.
                let tci = (self.rng.next_u64() as u16 & 0x0fff).to_be_bytes();
                f.splice(12..12, [0x81, 0x00, tci[0], tci[1]]);
            }
            62..=66 if f.len() >= 34 => {
                // Bad IHL.
                f[14] = 0x40 | (self.rng.byte() & 0x0f);
                fix_ip_csum(f);
            }
            67..=71 if f.len() >= 34 => {
                // Bad total length.
                let tl = match self.rng.below(3) {
                    0 => self.rng.below(40) as u16,
                    1 => (f.len() - 14) as u16 + 1 + self.rng.below(100) as u16,
                    _ => self.rng.next_u64() as u16,
                };
                f[16..18].copy_from_slice(&tl.to_be_bytes());
                fix_ip_csum(f);
            }
            72..=75 if f.len() >= 34 => {
                // Fragment bits: MF and/or an offset.
                let v = match self.rng.below(3) {
                    0 => 0x2000,
                    1 => 1 + self.rng.below(0x1fff) as u16,
                    _ => 0x2000 | (1 + self.rng.below(0x1fff) as u16),
                };
                f[20..22].copy_from_slice(&v.to_be_bytes());
                fix_ip_csum(f);
            }
            76..=87 => {
                // Truncation at any offset the kernel accepts.
                let n = 14 + self.rng.below((f.len() - 14) as u64 + 1) as usize;
                f.truncate(n);
            }
            88..=97 => {
                for _ in 0..1 + self.rng.below(4) {
                    let i = self.rng.below(f.len() as u64) as usize;
                    f[i] ^= 1 | self.rng.byte();
                }
                if self.rng.chance(50) {
                    fix_ip_csum(f);
                }
            }
            _ => {
                // Garbage after the Ethernet header.
                for b in f.iter_mut().skip(14 + self.rng.below(40) as usize) {
                    *b = self.rng.byte();
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Oracle
// ---------------------------------------------------------------------------------------------

/// What the oracle made of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// Output bytes equal the input.
    Untouched,
    /// Addresses/ports rewritten in place.
    Translated,
    /// A TCP RST built from the input.
    GeneratedRst,
    /// An ICMP error (port unreachable, fragmentation needed) built from the input.
    GeneratedIcmp,
}

/// One's-complement sum of `data` (RFC 1071, odd length padded), folded, not complemented.
fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for data in parts {
        for c in data.chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        // Each part is an even length except possibly the last one.
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Equal as one's-complement numbers (0x0000 and 0xffff are both zero).
fn ones_eq(a: u16, b: u16) -> bool {
    a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0)
}

fn be16(f: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([f[off], f[off + 1]])
}

/// Whether the frame is certainly nothing to the datapath: no address of a frontend, backend or
/// the node appears anywhere after its Ethernet addresses, so no frontend, conntrack or fragment
/// entry can match whatever the program parses (conntrack keys always hold a frontend or
/// backend address). The MACs are skipped: no lookup uses them, and the fixtures' MACs embed
/// IPv4 addresses (`NODE_MAC` ends in 172.18.0.2, `CLIENT_MAC` in 10.244.1.2).
pub fn unrelated(set: &ServiceSet, f: &[u8]) -> bool {
    !f[12..]
        .windows(4)
        .any(|w| set.related.contains(&[w[0], w[1], w[2], w[3]]))
}

/// Whether the TCP/UDP checksum of a whole, unfragmented datagram in `f` (IHL 5) verifies with
/// RFC 1071 over the pseudo-header; `None` when it cannot be judged.
fn l4_valid(f: &[u8]) -> Option<bool> {
    if f.len() < 34 || f[14] != 0x45 || be16(f, 20) & 0x3fff != 0 {
        return None;
    }
    let total = usize::from(be16(f, 16));
    if total < 20 || 14 + total > f.len() {
        return None;
    }
    let proto = f[23];
    let l4 = &f[34..14 + total];
    let min = if proto == PROTO_TCP { 20 } else { 8 };
    if (proto != PROTO_TCP && proto != PROTO_UDP) || l4.len() < min {
        return None;
    }
    if proto == PROTO_UDP && be16(l4, 6) == 0 {
        return None;
    }
    let len = (l4.len() as u16).to_be_bytes();
    Some(rfc1071_parts(&[&f[26..34], &[0, proto], &len, l4]) == 0)
}

fn rfc1071_parts(parts: &[&[u8]]) -> u16 {
    !ones_sum(parts)
}

/// Checks one run. `Err` names what is wrong.
///
/// (a) A frame that is [`unrelated`] must be passed with its bytes untouched.
/// (b) A changed frame is either built by the program (TCP RST or ICMP error answering the
///     input: every checksum valid, addressed back to the input's source, quoting/answering the
///     input as sent) or the input translated in place: same length, only the bytes NAT may
///     write differ (MACs; IPv4 TTL (by at most one), checksum, source, destination; for
///     TCP/UDP with a header the ports and the L4 checksum; for ICMP errors the ICMP checksum
///     and the quoted source, destination, IPv4 checksum, ports and UDP checksum), and every
///     checksum is consistent: the one's-complement sums the IPv4, TCP/UDP (with pseudo-header),
///     ICMP and quoted checksums cover are what they were, so a valid checksum stays valid and
///     none is left behind by a rewrite; a zero UDP checksum stays zero and no other becomes zero.
pub fn check(
    set: &ServiceSet,
    t: Target,
    input: &[u8],
    verdict: u32,
    output: &[u8],
) -> Result<Class, String> {
    let vname = t.verdict_name(verdict).ok_or_else(|| {
        format!(
            "verdict {} is none of pass/drop/redirect/tx",
            verdict as i32
        )
    })?;
    if unrelated(set, input) {
        if verdict != t.pass() {
            return Err(format!("unrelated frame got verdict {vname}, not pass"));
        }
        if output != input {
            return Err("unrelated frame was modified".into());
        }
        return Ok(Class::Untouched);
    }
    if output == input {
        return Ok(Class::Untouched);
    }
    if output.len() < 34 || output[12..14] != [0x08, 0x00] || output[14] >> 4 != 4 {
        return Err("a changed frame is not Ethernet/IPv4".into());
    }
    let in_ip = input.len() >= 34 && input[12..14] == [0x08, 0x00];
    if !in_ip {
        return Err("a frame that was not Ethernet/IPv4 was changed".into());
    }
    let (in_proto, out_proto) = (input[23], output[23]);
    if out_proto == 1 && in_proto != 1 {
        return check_generated_icmp(input, output).map(|_| Class::GeneratedIcmp);
    }
    if in_proto == PROTO_TCP
        && out_proto == PROTO_TCP
        && input.len() >= 54
        && output.len() >= 54
        && output[47] & TCP_RST != 0
        && input[47] & TCP_RST == 0
    {
        return check_generated_rst(input, output).map(|_| Class::GeneratedRst);
    }
    check_translation(input, output)
}

fn check_generated_icmp(input: &[u8], output: &[u8]) -> Result<(), String> {
    if output.len() < 42 || output[14] != 0x45 || rfc1071(&output[14..34]) != 0 {
        return Err("generated ICMP error: outer IPv4 header invalid".into());
    }
    let total = usize::from(be16(output, 16));
    if total < 28 || 14 + total > output.len() || rfc1071(&output[34..14 + total]) != 0 {
        return Err("generated ICMP error: ICMP checksum invalid".into());
    }
    // The quote is the input as sent (checked below), so its checksums are the input's: they
    // must verify when the input's did.
    // (A fragment's L4 checksum covers the whole datagram: the quote cannot verify it.)
    let fragment = be16(input, 20) & 0x3fff != 0;
    if rfc1071(&input[14..34]) == 0
        && !fragment
        && l4_valid(input) != Some(false)
        && icmp_verifiable(output)
    {
        verify_icmp_error_checksums(output).map_err(|e| format!("generated ICMP error: {e}"))?;
    }
    if output[30..34] != input[26..30] {
        return Err("generated ICMP error is not addressed to the input's source".into());
    }
    let total = usize::from(be16(output, 16));
    if 14 + total != output.len() {
        return Err(format!(
            "generated ICMP error: IPv4 total length {total} for a {}-byte frame",
            output.len()
        ));
    }
    let t = output[34];
    if t != 3 {
        return Err(format!(
            "generated ICMP type {t} is not destination unreachable"
        ));
    }
    // The quote: the offending IPv4 header and the start of its payload, as the sender sent it.
    let quote = &output[42..];
    let n = quote.len().min(input.len() - 14);
    if quote.len() < 28 || quote[..n] != input[14..14 + n] {
        return Err("generated ICMP error does not quote the input as it was sent".into());
    }
    Ok(())
}

fn check_generated_rst(input: &[u8], output: &[u8]) -> Result<(), String> {
    if rfc1071(&output[14..34]) != 0 {
        return Err("generated RST: IPv4 checksum invalid".into());
    }
    if output[26..30] != input[30..34] || output[30..34] != input[26..30] {
        return Err("generated RST: addresses are not the input's swapped".into());
    }
    if output[34..36] != input[36..38] || output[36..38] != input[34..36] {
        return Err("generated RST: ports are not the input's swapped".into());
    }
    match l4_valid(output) {
        Some(true) => Ok(()),
        Some(false) => Err("generated RST: TCP checksum invalid".into()),
        None => Err("generated RST: not a whole TCP segment".into()),
    }
}

fn check_translation(input: &[u8], output: &[u8]) -> Result<Class, String> {
    if input.len() != output.len() {
        return Err(format!(
            "translated frame changed length {} -> {}",
            input.len(),
            output.len()
        ));
    }
    if input[14] != 0x45 {
        return Err(format!(
            "a frame with IHL byte {:#04x} was rewritten",
            input[14]
        ));
    }
    let len = input.len();
    let proto = input[23];
    let frag_off = be16(input, 20) & 0x1fff;
    let mut allowed: Vec<std::ops::Range<usize>> = vec![0..12, 22..23, 24..34];
    let l4 = frag_off == 0 && (proto == PROTO_TCP || proto == PROTO_UDP);
    let icmp = frag_off == 0 && proto == 1;
    if l4 {
        allowed.push(34..38);
        allowed.push(if proto == PROTO_TCP { 50..52 } else { 40..42 });
    }
    if icmp {
        // ICMP checksum; quoted checksum, addresses; quoted ports; quoted UDP checksum.
        allowed.push(36..38);
        allowed.push(52..62);
        allowed.push(62..66);
        if len > 51 && input[51] == PROTO_UDP {
            allowed.push(68..70);
        }
        // The quoted TCP checksum, when the frame holds the whole quoted TCP header (what
        // netfilter's `tcp_manip_pkt` requires to update it).
        if len >= WHOLE_QUOTED_TCP && input[51] == PROTO_TCP {
            allowed.push(78..80);
        }
    }
    let bad: Vec<usize> = (0..len)
        .filter(|&i| input[i] != output[i] && !allowed.iter().any(|r| r.contains(&i)))
        .collect();
    if !bad.is_empty() {
        return Err(format!(
            "bytes NAT may not write changed at offsets {bad:?}"
        ));
    }
    if output[22] != input[22] && output[22].wrapping_add(1) != input[22] {
        return Err(format!("TTL {} -> {}", input[22], output[22]));
    }
    if !ones_eq(ones_sum(&[&input[14..34]]), ones_sum(&[&output[14..34]])) {
        return Err("IPv4 header checksum not updated to match the rewrite".into());
    }
    if l4 {
        let csum_off = if proto == PROTO_TCP { 50 } else { 40 };
        if len >= csum_off + 2 {
            let (ci, co) = (be16(input, csum_off), be16(output, csum_off));
            if proto == PROTO_UDP && ci == 0 {
                if co != 0 {
                    return Err(format!("UDP checksum 0 (none) became {co:#06x}"));
                }
            } else {
                let zeroed = proto == PROTO_UDP && co == 0;
                let si = ones_sum(&[&input[26..34], &input[34..]]);
                let so = ones_sum(&[&output[26..34], &output[34..]]);
                if !ones_eq(si, so) {
                    return Err(format!(
                        "{} checksum not updated to match the rewrite ({ci:#06x} -> {co:#06x})",
                        if proto == PROTO_TCP { "TCP" } else { "UDP" }
                    ));
                }
                if zeroed {
                    // The sum is right (checked above) but 0 means "no checksum" in UDP: RFC 768
                    // transmits a computed 0 as 0xffff (defect 1 of docs/RELIABILITY.md).
                    return Err(format!(
                        "UDP checksum {ci:#06x} became 0 (none), not 0xffff"
                    ));
                }
                if l4_valid(input) == Some(true) && l4_valid(output) != Some(true) {
                    return Err("L4 checksum valid in the input, invalid in the output".into());
                }
            }
        } else if input[34..] != output[34..] {
            return Err("L4 bytes rewritten without the L4 checksum in the frame".into());
        }
    }
    if icmp && len >= 42 {
        if !ones_eq(ones_sum(&[&input[34..]]), ones_sum(&[&output[34..]])) {
            return Err("ICMP checksum not updated to match the rewrite".into());
        }
        if len >= 62 && !ones_eq(ones_sum(&[&input[42..62]]), ones_sum(&[&output[42..62]])) {
            return Err("quoted IPv4 checksum not updated to match the rewrite".into());
        }
        if len >= 70 && input[51] == PROTO_UDP && be16(input, 68) != 0 {
            let si = ones_sum(&[&input[54..62], &input[62..]]);
            let so = ones_sum(&[&output[54..62], &output[62..]]);
            if !ones_eq(si, so) {
                return Err("quoted UDP checksum not updated to match the rewrite".into());
            }
        }
        if len >= WHOLE_QUOTED_TCP && input[51] == PROTO_TCP {
            let si = ones_sum(&[&input[54..62], &input[62..]]);
            let so = ones_sum(&[&output[54..62], &output[62..]]);
            if !ones_eq(si, so) {
                return Err("quoted TCP checksum not updated to match the rewrite".into());
            }
        }
        if icmp_verifiable(input) && verify_icmp_error_checksums(input).is_ok() {
            if let Err(e) = verify_icmp_error_checksums(output) {
                return Err(format!(
                    "ICMP error valid in the input, not in the output: {e}"
                ));
            }
        }
    }
    Ok(Class::Translated)
}

/// Frame length from which an ICMP error (no IP options) quotes the whole TCP header: 14 + 20
/// + 8 + 20 + 20.
const WHOLE_QUOTED_TCP: usize = 82;

/// Whether [`verify_icmp_error_checksums`] can judge `f` (it expects an IPv4 total length that
/// holds an ICMP header and a quoted IPv4 header, within the frame).
fn icmp_verifiable(f: &[u8]) -> bool {
    if f.len() < 14 + 20 + 8 + 20 {
        return false;
    }
    let total = usize::from(be16(f, 16));
    total >= 20 + 8 + 20 && 14 + total <= f.len()
}

// ---------------------------------------------------------------------------------------------
// Runner
// ---------------------------------------------------------------------------------------------

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub packets: u64,
    pub elapsed: Duration,
    /// (target, verdict name) → packets.
    pub verdicts: BTreeMap<(Target, &'static str), u64>,
    /// (target, class) → packets.
    pub classes: BTreeMap<(Target, Class), u64>,
    /// Target → frames the oracle judged by rule (a): nothing to the datapath, so passed untouched.
    pub unrelated: BTreeMap<Target, u64>,
    /// Target → translated UDP datagrams that carried a checksum (the population in which a
    /// new checksum of 0 can occur, which must be sent as 0xffff).
    pub udp_csum_translated: BTreeMap<Target, u64>,
    /// Generator kinds → packets.
    pub kinds: BTreeMap<Kind, u64>,
    /// (hook, reason name) → packets counted by the datapath (`SVC_STATS`) during the run.
    pub reasons: BTreeMap<(String, &'static str), u64>,
    /// Failure reports (at most `Options::max_failures`; the run stops at the last).
    pub failures: Vec<String>,
}

/// A run stops after this many failures by default.
pub const MAX_FAILURES: usize = 5;

/// What [`run`] does.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub packets: u64,
    /// Programs the frames go to, round robin.
    pub targets: Vec<Target>,
    /// Programs whose failures are reported (the others only feed conntrack).
    pub judged: Vec<Target>,
    /// The run stops after this many failures.
    pub max_failures: usize,
}

impl Options {
    /// Every program, every one judged, stopping after [`MAX_FAILURES`].
    pub fn all(seed: u64, packets: u64) -> Self {
        Self {
            seed,
            packets,
            targets: ALL_TARGETS.to_vec(),
            judged: ALL_TARGETS.to_vec(),
            max_failures: MAX_FAILURES,
        }
    }
}

/// One `BPF_PROG_TEST_RUN` of `t` on `input` (repeat 1), on the device the program sits on in
/// the node: pod programs on the uplink's peer (standing for a pod's veth), uplink programs and
/// XDP on the uplink. What `Datapath::run_on` / `run_xdp` do, without their per-call namespace
/// check (done once per run: it costs two `stat`s a packet).
fn run_once(
    dp: &Datapath,
    uplink: XdpUplink,
    t: Target,
    input: &[u8],
) -> anyhow::Result<RunResult> {
    use aya::programs::{TestRun, TestRunOptions};
    let mut out = vec![0u8; input.len() + 256];
    let res = if t == Target::Xdp {
        let fields: [u32; 6] = [0, input.len() as u32, 0, uplink.ifindex, 0, 0];
        let mut ctx = [0u8; 24];
        for (c, f) in ctx.chunks_exact_mut(4).zip(fields) {
            c.copy_from_slice(&f.to_ne_bytes());
        }
        dp.xdp(XDP_PROGRAM).test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        })
    } else {
        let ifindex = if t.on_uplink() {
            uplink.ifindex
        } else {
            uplink.peer_ifindex
        };
        // `struct __sk_buff` with only `ifindex` (offset 40) set, as `Datapath::run_on` builds it.
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        dp.classifier(t.name()).test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        })
    }
    .map_err(|e| {
        anyhow::anyhow!(
            "BPF_PROG_TEST_RUN of {} on {} bytes: {e}",
            t.name(),
            input.len()
        )
    })?;
    out.truncate(res.data_size_out as usize);
    Ok(RunResult {
        retval: res.return_value,
        output: out,
        duration_ns: res.duration.as_nanos() as u64,
    })
}

/// `bpf_prog_test_run_skb` refuses (`EINVAL`) an IPv4 frame shorter than an IPv4 header (and an
/// IPv6 one shorter than an IPv6 header) before any program runs: its own sanity check of the
/// test input, not a verdict. Such frames cannot reach a tc program this way; XDP gets them.
fn kernel_refuses(t: Target, f: &[u8]) -> bool {
    t != Target::Xdp
        && ((f[12..14] == [0x08, 0x00] && f.len() < 14 + 20)
            || (f[12..14] == [0x86, 0xdd] && f.len() < 14 + 40))
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs `input` through `t` and judges it with [`check`], recording the outcome in `rep`.
/// `i` and `kind` only label a failure. Returns false when the run must stop (too many
/// failures).
#[allow(clippy::too_many_arguments)]
fn judge(
    dp: &Datapath,
    uplink: XdpUplink,
    set: &ServiceSet,
    opts: &Options,
    rep: &mut Report,
    i: u64,
    t: Target,
    input: &[u8],
    kind: Kind,
) -> bool {
    *rep.kinds.entry(kind).or_default() += 1;
    let res = run_once(dp, uplink, t, input);
    rep.packets += 1;
    if res.is_err() && kernel_refuses(t, input) {
        *rep.verdicts
            .entry((t, "refused by the kernel"))
            .or_default() += 1;
        return true;
    }
    let outcome = match &res {
        Ok(r) => check(set, t, input, r.retval, &r.output),
        Err(e) => Err(format!("BPF_PROG_TEST_RUN failed: {e:#}")),
    };
    match outcome {
        Ok(class) => {
            if unrelated(set, input) {
                *rep.unrelated.entry(t).or_default() += 1;
            }
            if class == Class::Translated
                && input[23] == PROTO_UDP
                && be16(input, 20) & 0x1fff == 0
                && input.len() >= 42
                && be16(input, 40) != 0
            {
                *rep.udp_csum_translated.entry(t).or_default() += 1;
            }
            let r = res.as_ref().unwrap();
            *rep.verdicts
                .entry((t, t.verdict_name(r.retval).unwrap()))
                .or_default() += 1;
            *rep.classes.entry((t, class)).or_default() += 1;
            true
        }
        Err(_) if !opts.judged.contains(&t) => true,
        Err(problem) => {
            let (verdict, output) = match &res {
                Ok(r) => (r.retval as i32, r.output.clone()),
                Err(_) => (0, Vec::new()),
            };
            let mut msg = format!(
                "FUZZ FAILURE seed={} packet={i} program={} kind={kind:?}: {problem}\n\
                 verdict: {verdict}\ninput:  {}\noutput: {}\n",
                opts.seed,
                t.name(),
                hexs(input),
                hexs(&output),
            );
            if !output.is_empty() {
                for line in diff_frames(input, &output) {
                    msg.push_str(&line);
                    msg.push('\n');
                }
            }
            rep.failures.push(msg);
            rep.failures.len() < opts.max_failures
        }
    }
}

/// Drives `frames` (called with the running frame number, the generator and the target; it
/// pushes the frames to judge) through `opts.targets` round robin, `opts.packets` calls in all.
fn drive(
    dp: &Datapath,
    uplink: XdpUplink,
    set: &ServiceSet,
    opts: &Options,
    mut frames: impl FnMut(&mut Gen, Target, &mut Vec<(Vec<u8>, Kind)>),
) -> Report {
    let mut gen = Gen::new(opts.seed, set.clone());
    let mut rep = Report {
        seed: opts.seed,
        ..Default::default()
    };
    assert!(
        !in_launch_netns().expect("reading namespace ids"),
        "fuzz::run must run inside an XdpNode: the programs' FIB lookups read its tables"
    );
    let targets = &opts.targets[..];
    let before = dp.counters();
    let start = Instant::now();
    let mut batch = Vec::new();
    let mut n = 0u64;
    'calls: for i in 0..opts.packets {
        // Early and then regularly, so replies match the flows the first frames opened.
        if i % 20_000 == 0 || i == 500 || i == 2_000 || i == 5_000 {
            gen.refresh_ct(dp);
        }
        let t = targets[(i % targets.len() as u64) as usize];
        batch.clear();
        frames(&mut gen, t, &mut batch);
        for (input, kind) in batch.drain(..) {
            let go_on = judge(dp, uplink, set, opts, &mut rep, n, t, &input, kind);
            n += 1;
            if !go_on {
                break 'calls;
            }
        }
    }
    rep.elapsed = start.elapsed();
    let after = dp.counters();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if a > b {
            let hook = svc_common::ALL_HOOKS[i / REASON_COUNT as usize];
            let reason = svc_common::ALL_REASONS[i % REASON_COUNT as usize].1;
            rep.reasons.insert((hook.name().to_string(), reason), a - b);
        }
    }
    rep
}

/// Runs `opts.packets` frames through `opts.targets` round robin, checking each with [`check`].
/// Must run on a thread inside an [`XdpNode`] (see [`node_datapath_test`]); `dp` holds the
/// Service set of [`install_services`].
pub fn run(dp: &Datapath, uplink: XdpUplink, set: &ServiceSet, opts: &Options) -> Report {
    drive(dp, uplink, set, opts, |gen, t, out| out.push(gen.next(t)))
}

/// Truncation at **every** offset: `opts.packets` unmutated frames (every generator kind,
/// round robin over `opts.targets`), each run whole and then cut to every length from 14 (the
/// Ethernet header) up, every prefix judged by [`check`]. [`run`] truncates at one random
/// offset per frame; this sweep leaves no offset of the frames it makes to chance.
pub fn run_truncations(
    dp: &Datapath,
    uplink: XdpUplink,
    set: &ServiceSet,
    opts: &Options,
) -> Report {
    drive(dp, uplink, set, opts, |gen, t, out| {
        let (f, kind) = gen.next_unmutated(t);
        for len in 14..=f.len() {
            out.push((f[..len].to_vec(), kind));
        }
    })
}

impl Report {
    /// Packets per second over the whole run (generation, run and oracle).
    pub fn rate(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The figures as printed by the tests and `cargo xtask fuzz`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "fuzz: seed {} — {} packets in {:.1} s ({:.0} packets/s), {} failures\n",
            self.seed,
            self.packets,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.failures.len()
        );
        s.push_str("generated (before mutation):\n");
        for (k, n) in &self.kinds {
            s.push_str(&format!("  {k:?}: {n}\n"));
        }
        let mut per: BTreeMap<Target, u64> = BTreeMap::new();
        for ((t, _), n) in &self.verdicts {
            *per.entry(*t).or_default() += n;
        }
        for (t, total) in per {
            s.push_str(&format!("{} ({total} packets):\n  verdicts:", t.name()));
            for ((tt, v), n) in &self.verdicts {
                if *tt == t {
                    s.push_str(&format!(" {v} {n}"));
                }
            }
            s.push_str("\n  output:");
            for ((tt, c), n) in &self.classes {
                if *tt == t {
                    s.push_str(&format!(" {c:?} {n}"));
                }
            }
            s.push_str(&format!(
                "\n  judged unrelated (must pass untouched): {}",
                self.unrelated.get(&t).copied().unwrap_or(0)
            ));
            s.push_str(&format!(
                "\n  translated UDP with a checksum: {}",
                self.udp_csum_translated.get(&t).copied().unwrap_or(0)
            ));
            s.push_str("\n  reasons:");
            let hook = t.hook().name();
            for ((h, r), n) in &self.reasons {
                if *h == hook {
                    s.push_str(&format!(" {r} {n}"));
                }
            }
            s.push('\n');
        }
        for f in &self.failures {
            s.push_str(f);
        }
        s
    }
}
