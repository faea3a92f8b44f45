//! `BPF_PROG_TEST_RUN` fixtures for `svc_xdp6`, the uplink's IPv6 fast path, reached the way
//! the agent wires it: every frame is run through `svc_xdp` (the IPv4 program), which hands
//! IPv6 frames to `svc_xdp6` by a tail call (`SVC_XDP_PROGS6`).
//!
//! Each test creates an [`XdpNode`] with an IPv6 underlay ([`XdpNode::add_ipv6`]), loads its
//! own copy of the object on a thread inside that namespace ([`Datapath6::load_with_xdp`]) and
//! checks verdict, output frame byte for byte and the `Hook::Xdp6` counters. Expected frames
//! are built with etherparse from the rewritten fields (it computes the L4 checksum from
//! scratch over the IPv6 pseudo-header), so the program's incremental checksum update is
//! compared with an independent computation; the MACs of an `XDP_TX` frame are the neighbour
//! entries the namespace was given.
//!
//! Run as root: `cargo test -p tests --test fixtures_xdp6`.
#![allow(unused_crate_dependencies)]

use std::net::SocketAddrV6;

use etherparse::{
    icmpv6::{DestUnreachableCode, TimeExceededCode},
    Icmpv6Type,
};
use svc_common::{
    CtKey6, Hook, Reason, BACKEND_F_LOCAL, CT_DIR_FORWARD, CT_F_EXTERNAL, CT_F_SNAT, PROTO_TCP,
    PROTO_UDP,
};
use svc_testkit::fixtures::{
    ipv6::{
        addr6, icmp6, Datapath6, Ext, Pkt6, BACKEND6_B, BACKEND6_NARROW, BACKEND6_OTHER_DEV,
        BACKEND6_UNRESOLVED, EXT_CLIENT6, NODE6, PEER_NODE6,
    },
    require_root, XdpNode, XdpUplink, CLIENT_MAC, EXT_CLIENT_MAC, GATEWAY_MAC, NODE_MAC,
    PEER_NODE_MAC,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;
/// The program every frame enters by, as on a real uplink.
const XDP: &str = "svc_xdp";

/// A pod on this node (node 1's IPv6 pod CIDR).
const BACKEND6_LOCAL: SocketAddrV6 = SocketAddrV6::new(
    std::net::Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 3),
    8080,
    0,
    0,
);

fn node_port(port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(*NODE6.ip(), port, 0, 0)
}

fn client(port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(*EXT_CLIENT6.ip(), port, 0, 0)
}

fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| c.iter().map(|x| format!("{x:02x}")).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `body` in a fresh node namespace with an IPv6 underlay and a datapath whose XDP
/// programs are loaded and wired, `node_addr6` = [`NODE6`].
fn xdp6_test(body: impl FnOnce(&mut Datapath6, XdpUplink) + Send) {
    require_root();
    let node = XdpNode::create().unwrap_or_else(|e| panic!("{e:#}"));
    node.add_ipv6().unwrap_or_else(|e| panic!("{e:#}"));
    node.run(|uplink| {
        let mut dp = Datapath6::load_with_xdp().unwrap_or_else(|e| panic!("{e:#}"));
        dp.set_config6(*NODE6.ip()).unwrap();
        body(&mut dp, uplink);
    });
}

/// Every `Hook::Xdp6` counter.
fn xdp6_counts(dp: &Datapath6) -> Vec<(Reason, u64)> {
    svc_common::ALL_REASONS
        .iter()
        .map(|(r, _)| (*r, dp.counter(Hook::Xdp6, *r)))
        .collect()
}

/// The `Hook::Xdp6` counters that differ between `before` and `after`, with the difference.
fn moved(before: &[(Reason, u64)], after: &[(Reason, u64)]) -> Vec<(Reason, i64)> {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b.1 != a.1)
        .map(|(b, a)| (b.0, a.1 as i64 - b.1 as i64))
        .collect()
}

/// Runs `input` through `svc_xdp` and checks the action and the output frame, and that the
/// one counter `reason` of `Hook::Xdp6` moved by one and nothing else moved.
fn check(
    dp: &Datapath6,
    uplink: XdpUplink,
    what: &str,
    input: &[u8],
    verdict: u32,
    output: &[u8],
    reason: Reason,
) {
    let before = xdp6_counts(dp);
    let (rc, out) = dp
        .run_xdp(XDP, input, uplink.ifindex)
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    assert_eq!(rc, verdict, "{what}: XDP action");
    assert_eq!(
        hex(&out),
        hex(output),
        "{what}: output frame (expected built by etherparse)"
    );
    assert_eq!(
        moved(&before, &xdp6_counts(dp)),
        vec![(reason, 1)],
        "{what}: Hook::Xdp6 counters that moved"
    );
    assert_eq!(
        dp.counter(Hook::Xdp, Reason::NotIpv4),
        0,
        "{what}: svc_xdp must hand IPv6 over, not count it not_ipv4"
    );
}

/// `input` must come out of XDP untouched, passed, counted `reason`.
fn untouched(dp: &Datapath6, uplink: XdpUplink, what: &str, input: &[u8], reason: Reason) {
    check(dp, uplink, what, input, XDP_PASS, input, reason);
}

/// `p` as it leaves by `XDP_TX`: hop limit one less, MACs from the neighbour entry of the next
/// hop (`dmac`) and the uplink's own.
fn transmitted(mut p: Pkt6, dmac: [u8; 6]) -> Vec<u8> {
    p.hop_limit -= 1;
    let mut f = p.build();
    f[..6].copy_from_slice(&dmac);
    f[6..12].copy_from_slice(&NODE_MAC);
    f
}

/// The forward conntrack entry's source port (with SNAT: the port the program chose).
fn snat_port(dp: &Datapath6, from: SocketAddrV6, to: SocketAddrV6, proto: u8) -> u16 {
    let key = CtKey6::new(addr6(&from), addr6(&to), from.port(), to.port(), proto);
    let e = dp
        .ct_get(&key)
        .unwrap_or_else(|| panic!("no forward entry {from} → {to}"));
    assert_eq!(e.dir, CT_DIR_FORWARD, "forward entry {from} → {to}");
    assert_eq!(
        e.flags & (CT_F_SNAT | CT_F_EXTERNAL),
        CT_F_SNAT | CT_F_EXTERNAL,
        "forward entry {from} → {to}: source-NATed, external"
    );
    assert_eq!(
        (e.src_addr, e.dst_addr),
        (addr6(&NODE6), addr6(&BACKEND6_NARROW)),
        "forward entry {from} → {to}: node address → backend"
    );
    e.src_port
}

/// The folded, uncomplemented pseudo-header sum (RFC 8200 §8.1) of `frame`'s TCP/UDP segment
/// (no extension header): what a `CHECKSUM_PARTIAL` skb holds in its checksum field. Computed
/// here from the bytes, independently of the program.
fn partial_csum(frame: &[u8]) -> u16 {
    let ip = &frame[14..54];
    let l4_len = u16::from_be_bytes([ip[4], ip[5]]) as u32;
    let mut sum: u32 = ip[8..40]
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    sum += l4_len + ip[6] as u32;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

// ---------------------------------------------------------------------------------------------

/// A frontend on the node's IPv6 address whose backend is a pod on this node: the client's
/// frame gets the backend as destination (source kept), its checksum updated, and goes up the
/// stack (`XDP_PASS`), TCP and UDP, with Hop-by-Hop and Destination Options headers walked
/// and a Routing header with no segment left skipped; one with segments left is refused.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn a_frontend_with_a_local_backend_is_translated_and_passed_up() {
    xdp6_test(|dp, uplink| {
        for proto in [PROTO_TCP, PROTO_UDP] {
            dp.add_service(node_port(30007), proto, proto as u32, &[BACKEND6_LOCAL])
                .unwrap();
            dp.set_backend_flags(proto as u32 * 100 + 1, BACKEND_F_LOCAL)
                .unwrap();
        }
        let fe = node_port(30007);
        let cases = [
            (
                "TCP SYN",
                Pkt6::tcp(client(40000), fe, SYN),
                Reason::DnatNew,
            ),
            (
                "TCP ACK of the same flow",
                Pkt6::tcp(client(40000), fe, ACK),
                Reason::DnatEstablished,
            ),
            ("UDP", Pkt6::udp(client(40001), fe), Reason::DnatNew),
            (
                "TCP SYN after Hop-by-Hop and Destination Options",
                Pkt6::tcp(client(40002), fe, SYN)
                    .with_ext(Ext::HopByHop)
                    .with_ext(Ext::DestOpts),
                Reason::DnatNew,
            ),
            (
                "UDP after a Routing header with no segment left",
                Pkt6::udp(client(40003), fe).with_ext(Ext::Routing(0)),
                Reason::DnatNew,
            ),
        ];
        for (what, p, reason) in cases {
            let want = p.clone().with_dst(BACKEND6_LOCAL).build();
            check(dp, uplink, what, &p.build(), XDP_PASS, &want, reason);
        }
        let live_routing = Pkt6::tcp(client(40004), fe, SYN).with_ext(Ext::Routing(1));
        untouched(
            dp,
            uplink,
            "Routing header with segments left",
            &live_routing.build(),
            Reason::ExtHeader,
        );
    });
}

/// A frontend whose backend is on another node: the client's frame is source-NATed to the
/// node's address and a port conntrack names, its hop limit decremented, and sent back out of
/// the uplink (`XDP_TX`) to the peer node's MAC; the backend's reply gets the frontend back as
/// source and goes to the client's MAC the same way. TCP and UDP.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn a_frontend_with_a_remote_backend_is_source_natted_and_transmitted_both_ways() {
    xdp6_test(|dp, uplink| {
        for proto in [PROTO_TCP, PROTO_UDP] {
            dp.add_service(node_port(30008), proto, proto as u32, &[BACKEND6_NARROW])
                .unwrap();
        }
        let fe = node_port(30008);
        for (proto, flags, reply_flags) in [(PROTO_TCP, Some(SYN), SYN_ACK), (PROTO_UDP, None, 0)] {
            let c = client(41000 + proto as u16);
            let mk = |src, dst| match flags {
                Some(f) => Pkt6::tcp(src, dst, f),
                None => Pkt6::udp(src, dst),
            };
            let p = mk(c, fe);
            let (rc, out) = dp.run_xdp(XDP, &p.build(), uplink.ifindex).unwrap();
            let port = snat_port(dp, c, fe, proto);
            let snat = SocketAddrV6::new(*NODE6.ip(), port, 0, 0);
            let want = transmitted(mk(snat, BACKEND6_NARROW), PEER_NODE_MAC);
            assert_eq!(rc, XDP_TX, "proto {proto}: client → remote backend");
            assert_eq!(
                hex(&out),
                hex(&want),
                "proto {proto}: client → remote backend, source-NATed (etherparse)"
            );
            let reply = match flags {
                Some(_) => Pkt6::tcp(BACKEND6_NARROW, snat, reply_flags),
                None => Pkt6::udp(BACKEND6_NARROW, snat),
            };
            let want_reply = transmitted(
                match flags {
                    Some(_) => Pkt6::tcp(fe, c, reply_flags),
                    None => Pkt6::udp(fe, c),
                },
                EXT_CLIENT_MAC,
            );
            check(
                dp,
                uplink,
                &format!("proto {proto}: backend's reply → client"),
                &reply.build(),
                XDP_TX,
                &want_reply,
                Reason::RevNat,
            );
        }
        assert_eq!(dp.counter(Hook::Xdp6, Reason::DnatNew), 2);
        assert_eq!(dp.counter(Hook::Xdp6, Reason::RevNat), 2);

        // Hop limit 1: XDP_TX would bypass ip6_forward, so tc gets it untouched (it hands it
        // to the stack, which answers Time Exceeded).
        let mut last_hop = Pkt6::tcp(client(41100), fe, SYN);
        last_hop.hop_limit = 1;
        untouched(dp, uplink, "hop limit 1", &last_hop.build(), Reason::ToTc);
        // At 2 it leaves with 1.
        let mut p = Pkt6::udp(client(41101), fe);
        p.hop_limit = 2;
        let (rc, out) = dp.run_xdp(XDP, &p.build(), uplink.ifindex).unwrap();
        assert_eq!(
            (rc, out[14 + 7]),
            (XDP_TX, 1),
            "hop limit 2 → XDP_TX with 1"
        );
    });
}

/// What XDP cannot finish without an skb reaches tc untouched, counted `to_tc`: a next hop
/// without a neighbour entry, a next hop on another interface, a packet too big for the path,
/// a checksum field that may be a `CHECKSUM_PARTIAL` placeholder, a UDP checksum of 0, a
/// frontend without endpoints (tc answers), fragments (tc translates them with the fragment
/// map), ICMPv6 errors about a translated flow (tc rewrites the quote). Neighbor Discovery and
/// other ICMPv6 pass untouched as `not_tcp_udp`, frames for no Service as `not_service`, and
/// IPv4 frames stay with `svc_xdp`.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn what_xdp_cannot_finish_goes_to_tc_untouched() {
    xdp6_test(|dp, uplink| {
        let services = [
            (30010, BACKEND6_UNRESOLVED),
            (30011, BACKEND6_OTHER_DEV),
            (30012, BACKEND6_NARROW),
        ];
        for (i, (port, backend)) in services.iter().enumerate() {
            for proto in [PROTO_TCP, PROTO_UDP] {
                let id = 10 * (i as u32 + 1) + proto as u32 % 10;
                dp.add_service(node_port(*port), proto, id, &[*backend])
                    .unwrap();
            }
        }
        dp.add_service(node_port(30013), PROTO_TCP, 90, &[])
            .unwrap();
        // A backend the node has no route to: dropped, as the tc path drops it.
        dp.add_service(node_port(30014), PROTO_TCP, 91, &[BACKEND6_B])
            .unwrap();
        let unroutable = Pkt6::tcp(client(42004), node_port(30014), SYN).build();
        check(
            dp,
            uplink,
            "backend without a route",
            &unroutable,
            XDP_DROP,
            &unroutable,
            Reason::FibFailed,
        );
        let cases = [
            (
                "next hop without a neighbour entry",
                Pkt6::tcp(client(42000), node_port(30010), SYN).build(),
            ),
            (
                "next hop on another interface",
                Pkt6::tcp(client(42001), node_port(30011), SYN).build(),
            ),
            (
                "1300 bytes towards a 1280-byte path",
                Pkt6::udp(client(42002), node_port(30012))
                    .with_payload(&[0x42; 1300 - 48])
                    .build(),
            ),
            (
                "frontend without endpoints",
                Pkt6::tcp(client(42003), node_port(30013), SYN).build(),
            ),
        ];
        for (what, frame) in &cases {
            untouched(dp, uplink, what, frame, Reason::ToTc);
        }

        // The checksum field holding the pseudo-header sum, as a CHECKSUM_PARTIAL skb's does.
        for (what, p, off) in [
            (
                "TCP with a partial-looking checksum",
                Pkt6::tcp(client(42010), node_port(30012), SYN),
                14 + 40 + 16,
            ),
            (
                "UDP with a partial-looking checksum",
                Pkt6::udp(client(42011), node_port(30012)),
                14 + 40 + 6,
            ),
        ] {
            let mut f = p.build();
            let c = partial_csum(&f);
            f[off..off + 2].copy_from_slice(&c.to_be_bytes());
            untouched(dp, uplink, what, &f, Reason::ToTc);
        }
        let mut zero = Pkt6::udp(client(42012), node_port(30012)).build();
        zero[14 + 40 + 6..14 + 40 + 8].copy_from_slice(&[0, 0]);
        untouched(dp, uplink, "UDP with checksum 0", &zero, Reason::ToTc);

        // Fragments, first and later.
        let big = Pkt6::udp(client(42020), node_port(30012)).with_payload(&[0x17; 600]);
        let [first, later] = big.fragments(0x1234_5678, 256);
        untouched(dp, uplink, "first fragment", &first, Reason::ToTc);
        untouched(dp, uplink, "later fragment", &later, Reason::ToTc);

        // An ICMPv6 error about a flow conntrack knows (the remote backend's, translated at
        // its start by tc in real life, here by XDP) goes to tc.
        let c = client(42030);
        let fe = node_port(30012);
        let (rc, _) = dp
            .run_xdp(XDP, &Pkt6::udp(c, fe).build(), uplink.ifindex)
            .unwrap();
        assert_eq!(rc, XDP_TX, "UDP flow for the ICMPv6 error");
        let key = CtKey6::new(addr6(&c), addr6(&fe), c.port(), fe.port(), PROTO_UDP);
        let snat = dp.ct_get(&key).expect("forward entry").src_port;
        let sent = Pkt6::udp(SocketAddrV6::new(*NODE6.ip(), snat, 0, 0), BACKEND6_NARROW).build();
        let error = icmp6(
            &PEER_NODE6,
            &NODE6,
            Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port),
            &sent[14..],
            PEER_NODE_MAC,
            NODE_MAC,
        );
        untouched(
            dp,
            uplink,
            "ICMPv6 error about a translated flow",
            &error,
            Reason::ToTc,
        );

        // ICMPv6 that is not ours: untouched, not_tcp_udp.
        let solicited = SocketAddrV6::new("ff02::1:ff00:2".parse().unwrap(), 0, 0, 0);
        let mut ns_body = NODE6.ip().octets().to_vec();
        ns_body.extend_from_slice(&[1, 1, 0x02, 0x00, 0x0a, 0xf4, 0x01, 0x02]);
        let echo = etherparse::IcmpEchoHeader { id: 7, seq: 1 };
        let not_ours = [
            (
                "neighbour solicitation",
                icmp6(
                    &EXT_CLIENT6,
                    &solicited,
                    Icmpv6Type::NeighborSolicitation,
                    &ns_body,
                    EXT_CLIENT_MAC,
                    NODE_MAC,
                ),
            ),
            (
                "neighbour advertisement",
                icmp6(
                    &EXT_CLIENT6,
                    &NODE6,
                    Icmpv6Type::NeighborAdvertisement(
                        etherparse::icmpv6::NeighborAdvertisementHeader {
                            router: false,
                            solicited: true,
                            r#override: true,
                        },
                    ),
                    &ns_body[..16],
                    EXT_CLIENT_MAC,
                    NODE_MAC,
                ),
            ),
            (
                "echo request to the frontend address",
                icmp6(
                    &EXT_CLIENT6,
                    &NODE6,
                    Icmpv6Type::EchoRequest(echo),
                    &[0x5a; 64],
                    EXT_CLIENT_MAC,
                    NODE_MAC,
                ),
            ),
            (
                "time exceeded quoting a flow nobody translated",
                icmp6(
                    &PEER_NODE6,
                    &EXT_CLIENT6,
                    Icmpv6Type::TimeExceeded(TimeExceededCode::HopLimitExceeded),
                    &Pkt6::tcp(EXT_CLIENT6, PEER_NODE6, SYN).build()[14..],
                    PEER_NODE_MAC,
                    NODE_MAC,
                ),
            ),
        ];
        for (what, frame) in &not_ours[..3] {
            untouched(dp, uplink, what, frame, Reason::NotTcpUdp);
        }
        // An error (parsed as one) about a flow conntrack does not know: tc, untouched (tc
        // passes it as not_service).
        untouched(dp, uplink, not_ours[3].0, &not_ours[3].1, Reason::ToTc);

        untouched(
            dp,
            uplink,
            "TCP to an address and port that is no frontend",
            &Pkt6::tcp(client(42040), node_port(31999), SYN).build(),
            Reason::NotService,
        );

        // An IPv4 frame stays with svc_xdp: counted there, not under Hook::Xdp6.
        let v4 = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, GATEWAY_MAC)
            .ipv4([192, 0, 2, 1], [198, 51, 100, 1], 64)
            .udp(5000, 53);
        let mut frame = Vec::new();
        v4.write(&mut frame, b"v4").unwrap();
        let before = xdp6_counts(dp);
        let (rc, out) = dp.run_xdp(XDP, &frame, uplink.ifindex).unwrap();
        assert_eq!((rc, hex(&out)), (XDP_PASS, hex(&frame)), "IPv4 frame");
        assert_eq!(dp.counter(Hook::Xdp, Reason::NotService), 1, "IPv4 frame");
        assert_eq!(xdp6_counts(dp), before, "IPv4 frame: Hook::Xdp6 unchanged");
    });
}
