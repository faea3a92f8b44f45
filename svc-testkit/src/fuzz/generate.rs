//! The generator: [`Gen`] builds frames to frontends and non-frontends, conntrack tuples both
//! ways, ICMP errors quoting them and fragments, then mutates them ([`Kind`] names what it made).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use svc_common::{CtKey, PROTO_TCP, PROTO_UDP};

use super::{
    services::{sa, ServiceSet},
    Rng, Target,
};
use crate::fixtures::*;

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
