//! What real applications send, end to end through the datapath (needs root), beyond bulk TCP:
//! large UDP datagrams that fragment (scenario 2), ECONNREFUSED on a connected UDP socket
//! (scenario 3a), path MTU discovery across narrower hops (scenario 3b), and a packet whose
//! TTL / hop limit runs out where the datapath would forward it (scenario 3c).
//!
//! The scene (nodes, pods, Services, ports) is `network_traffic`'s, whose module docs describe
//! it; it lives in `traffic_common`. It is the dual-stack one here (`Scene::start_dual_stack`):
//! every scenario runs over IPv4, then over IPv6 (IPv6 ClusterIPs, NodePorts on the nodes'
//! fd00:18::/64 addresses, the external client fd00:18::100), with ICMPv6 in place of ICMP.
//!
//! Failures name the family and the path (client, frontend, which node, where the backend is)
//! and what broke.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use svc_common::{Hook, Reason};
use svc_testkit::{
    capture::{read_packets, verify_checksums, Capture, Reassembled},
    probe,
    topology::{ext_addr, host_port, require_root, Family, Topology},
};

mod traffic_common;
use traffic_common::*;

/// `(client, target, what)` for each path of a scenario in `family`: `nodeports` are
/// `(node, Service, port of the Service)`.
fn paths(
    t: &Topology,
    f: Family,
    cluster_port: u16,
    nodeports: &[(usize, &Svc, u16, &str)],
) -> Vec<(&'static str, String, String)> {
    let mut v = Vec::new();
    for (s, what) in [
        (&ONE, "ClusterIP, local backend"),
        (&TWO, "ClusterIP, remote backend"),
    ] {
        v.push((
            "c1",
            at(s.cluster_ip_of(f), cluster_port),
            format!("{f} pod c1 -> {what}"),
        ));
    }
    for &(n, _, port, what) in nodeports {
        v.push((
            "ext",
            host_port(t.node(n).addr(f), port),
            format!("{f} external -> NodePort node {n}, {what}"),
        ));
    }
    v
}

/// Whether `ds` holds a complete, checksum-valid UDP datagram `src[:sport] -> dst[:dport]` of
/// at least `min_len` bytes.
fn has<A: PartialEq + Copy>(
    ds: &[Reassembled<A>],
    (src, sport): (A, Option<u16>),
    (dst, dport): (A, Option<u16>),
    min_len: usize,
) -> bool {
    ds.iter().any(|d| {
        d.proto == 17
            && d.src == src
            && d.dst == dst
            && sport.is_none_or(|p| p == d.src_port)
            && dport.is_none_or(|p| p == d.dst_port)
            && d.len >= min_len
            && d.checksum_ok
    })
}

/// Scenario 2: UDP replies of 1400, 3000, 9000 and 30000 bytes to 3000-byte requests through a
/// ClusterIP (local and remote backend) and a NodePort (local and remote), every byte checked,
/// over IPv4 and IPv6; the underlay capture must hold the translated fragments, every IPv4
/// fragment's header checksum right and every reassembled datagram's UDP checksum right.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn large_udp_fragments_are_translated_and_arrive_intact() {
    require_root();
    let scene = Scene::start_dual_stack(&[]);
    let t = &scene.t;
    let cap = Capture::start(t, t.underlay_ns(), "br0").unwrap();
    let mut failures = Vec::new();
    for f in Family::BOTH {
        // Controls first: straight to the backend pods (no Service, nothing to translate). If
        // these fail, the topology or the tool is broken, not the datapath.
        let be1 = host_port(t.pod_addr("be1", f), 7053);
        let be2 = host_port(t.pod_addr("be2", f), 7053);
        for (client, target) in [("c1", &be1), ("c1", &be2), ("c2", &be1)] {
            for reply in [1400, 30000] {
                let r = scene.sized(client, target, 2, 3000, reply);
                assert!(
                    r.ok == 2 && r.reply_from == [target.clone()],
                    "{f} control without a Service failed, so the test itself is broken: \
                     {client} -> {target} 3000/{reply} bytes: {r:?}"
                );
            }
        }
        let nodeports = [
            (1, &ONE, ONE.np_sized, "local backend"),
            (1, &TWO, TWO.np_sized, "remote backend"),
        ];
        // (request, reply): the first pair fragments nothing, so a failure there is not about
        // fragments at all.
        const SIZES: [(usize, usize); 5] = [
            (64, 1400),
            (3000, 1400),
            (3000, 3000),
            (3000, 9000),
            (3000, 30000),
        ];
        const COUNT: u32 = 3;
        for (client, target, what) in paths(t, f, 7053, &nodeports) {
            for (request, reply) in SIZES {
                let r = scene.sized(client, &target, COUNT, request, reply);
                eprintln!(
                    "{client} -> {target} ({what}) request {request} reply {reply}: {} ok, {} failed, {} corrupt, from {:?} {:?}",
                    r.ok, r.failed, r.corrupt, r.reply_from, r.errors
                );
                if u64::from(COUNT) != r.ok || r.reply_from != [target.clone()] {
                    failures.push(format!(
                        "{client} -> {target} ({what}), {request}-byte requests, {reply}-byte replies: {} of {COUNT} intact, {} lost, {} corrupt; replies from {:?}; {:?}",
                        r.ok, r.failed, r.corrupt, r.reply_from, r.errors
                    ));
                }
            }
        }
    }
    let file = cap.stop().unwrap();
    let report = verify_checksums(file.path()).unwrap();
    eprintln!("underlay capture: {report}");
    for d in &report.datagrams {
        eprintln!("  reassembled: {d}");
    }
    for d in &report.datagrams6 {
        eprintln!("  reassembled (IPv6): {d}");
    }
    if !report.is_clean() {
        failures.push(format!("bad checksums on the underlay: {report}"));
    }
    if !report.incomplete.is_empty() {
        failures.push(format!(
            "fragmented datagrams never completed on the underlay: {:?}",
            report.incomplete
        ));
    }
    // What must have crossed the underlay, translated, in fragments, in each family.
    let expect = |f: Family| {
        let (c1, be2, node1, ext) = (
            t.pod_addr("c1", f),
            t.pod_addr("be2", f),
            t.node(1).addr(f),
            ext_addr(f),
        );
        let ok = |src: IpAddr, sport, dst: IpAddr, dport, min_len| match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                has(&report.datagrams, (s, sport), (d, dport), min_len)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                has(&report.datagrams6, (s, sport), (d, dport), min_len)
            }
            _ => unreachable!("one family per path"),
        };
        [
            (
                ok(c1, None, be2, Some(7053), 3000),
                format!("{f} request fragments {c1} -> {be2}:7053 (ClusterIP DNATed to the remote backend)"),
            ),
            (
                ok(be2, Some(7053), c1, None, 30000),
                format!("{f} 30000-byte reply fragments {be2}:7053 -> {c1} (on their way to be reverse-NATed on node 1)"),
            ),
            (
                ok(node1, None, be2, Some(7053), 3000),
                format!("{f} request fragments {node1} -> {be2}:7053 (NodePort DNAT+SNAT to the remote backend)"),
            ),
            (
                ok(node1, Some(TWO.np_sized), ext, None, 30000),
                format!("{f} 30000-byte reply fragments {node1}:{} -> {ext} (reverse-NATed on node 1)", TWO.np_sized),
            ),
            (
                ok(node1, Some(ONE.np_sized), ext, None, 30000),
                format!("{f} 30000-byte reply fragments {node1}:{} -> {ext} (local backend)", ONE.np_sized),
            ),
        ]
    };
    for f in Family::BOTH {
        for (ok, what) in expect(f) {
            if !ok {
                failures.push(format!(
                    "no complete, checksum-valid datagram on the underlay for: {what}"
                ));
            }
        }
    }
    let vip4 = |a: Ipv4Addr| a.octets()[..2] == [10, 96];
    let vip6 = |a: Ipv6Addr| a.segments()[..3] == [0xfd00, 0x10, 0x96];
    let untranslated = report
        .datagrams
        .iter()
        .find(|d| vip4(d.dst) || vip4(d.src))
        .map(ToString::to_string)
        .or_else(|| {
            report
                .datagrams6
                .iter()
                .find(|d| vip6(d.dst) || vip6(d.src))
                .map(ToString::to_string)
        });
    if let Some(d) = untranslated {
        failures.push(format!(
            "a fragmented datagram crossed the underlay with a ClusterIP address (untranslated): {d}"
        ));
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) with fragmented UDP:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// Scenario 3a: a connected UDP socket sending to a Service port whose backend does not listen
/// must get ECONNREFUSED (the backend's ICMP / ICMPv6 port unreachable, translated back),
/// within 1 s.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn connected_udp_to_a_port_without_listener_gets_econnrefused() {
    require_root();
    let scene = Scene::start_dual_stack(&[]);
    let t = &scene.t;
    let mut failures = Vec::new();
    for f in Family::BOTH {
        // Control without a Service: the backend's own port unreachable must reach the socket.
        let control = host_port(t.pod_addr("be2", f), 5454);
        let r = scene.connected_udp("c2", &control);
        assert!(
            r.outcome == "refused" && r.elapsed_ms < 1000,
            "{f} control without a Service failed, so the test itself is broken: c2 -> {control}: {r:?}"
        );
        let nodeports = [
            (1, &ONE, ONE.np_closed, "local backend"),
            (1, &TWO, TWO.np_closed, "remote backend"),
            (2, &ONE, ONE.np_closed, "remote backend"),
        ];
        for (client, target, what) in paths(t, f, 5454, &nodeports) {
            let r = scene.connected_udp(client, &target);
            eprintln!(
                "{client} -> {target} ({what}): {} after {} ms ({} sent) {:?}",
                r.outcome, r.elapsed_ms, r.sent, r.error
            );
            if r.outcome != "refused" || r.elapsed_ms >= 1000 {
                failures.push(format!(
                    "{client} -> {target} ({what}): outcome {:?} after {} ms with {} datagram(s) sent, want ECONNREFUSED in < 1000 ms{}",
                    r.outcome,
                    r.elapsed_ms,
                    r.sent,
                    r.error.map(|e| format!(" ({e})")).unwrap_or_default()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "port unreachable did not reach the connected socket:\n  {}",
        failures.join("\n  ")
    );
}

/// The MTU of node 1's route to node 2's pod CIDRs: node 1's datapath answers for it.
const NODE_HOP_MTU: u32 = 1400;
/// The MTU of node 2's host route to be2: a router past node 1 (node 2's stack) answers.
const ROUTER_HOP_MTU: u32 = 1300;

/// An ICMP "packet too big" seen on the underlay, as text: `SRC -> DST too-big mtu M, quoting
/// ISRC -> IDST:Some(IDPORT)` (IPv4 fragmentation-needed, ICMPv6 Packet Too Big).
fn too_big(f: &[u8]) -> Option<String> {
    let port = |l4: &[u8]| l4.get(2..4).map(|p| u16::from_be_bytes([p[0], p[1]]));
    match f.get(12..14)? {
        // Ethernet (no VLAN on our bridge), IPv4, ICMP type 3 code 4.
        [0x08, 0x00] => {
            let ip = f.get(14..)?;
            let ihl = usize::from(ip.first()? & 0xf) * 4;
            let icmp = ip.get(ihl..)?;
            if ip[9] != 1 || icmp.get(..2)? != [3, 4] {
                return None;
            }
            let inner = icmp.get(8..8 + 20)?;
            let iihl = usize::from(inner[0] & 0xf) * 4;
            let a4 = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Some(format!(
                "{} -> {} too-big mtu {}, quoting {} -> {}:{:?}",
                a4(&ip[12..16]),
                a4(&ip[16..20]),
                u16::from_be_bytes([icmp[6], icmp[7]]),
                a4(&inner[12..16]),
                a4(&inner[16..20]),
                icmp.get(8 + iihl..).and_then(port)
            ))
        }
        // IPv6 without extension headers, ICMPv6 type 2 (Packet Too Big) quoting an IPv6
        // header and the start of its payload.
        [0x86, 0xdd] => {
            let ip = f.get(14..14 + 40)?;
            let icmp = f.get(14 + 40..)?;
            if ip[6] != 58 || *icmp.first()? != 2 {
                return None;
            }
            let inner = icmp.get(8..8 + 40)?;
            let a6 = |b: &[u8]| Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes"));
            Some(format!(
                "{} -> {} too-big mtu {}, quoting {} -> {}:{:?}",
                a6(&ip[8..24]),
                a6(&ip[24..40]),
                u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
                a6(&inner[8..24]),
                a6(&inner[24..40]),
                icmp.get(8 + 40..).and_then(port)
            ))
        }
        _ => None,
    }
}

/// Scenario 3b: node 1 routes node 2's pod CIDRs over a hop with MTU 1400, and node 2 routes
/// be2 over one with MTU 1300 (a router past node 1). A sender whose packets cross them must
/// get ICMP fragmentation-needed (ICMPv6 Packet Too Big: IPv6 routers never fragment) from
/// both, node 2's translated back by node 1 (its socket's path MTU drops to 1300), and an 8 MB
/// TCP transfer must complete, for a pod through a ClusterIP and for the external client
/// through a NodePort (both to the remote backend be2), over IPv4 and IPv6.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn lower_mtu_hop_sends_frag_needed_and_tcp_completes() {
    require_root();
    let scene = Scene::start_dual_stack_with(&[], |t| {
        let be2 = t.pod("be2");
        for f in Family::BOTH {
            let node2 = t.node(2);
            t.set_route_mtu(
                &t.node(1).ns,
                node2.pod_cidr_of(f),
                node2.addr(f),
                "eth0",
                NODE_HOP_MTU,
            )
            .unwrap();
            let host = match f {
                Family::V4 => format!("{}/32", be2.ip),
                Family::V6 => format!("{}/128", be2.ip6()),
            };
            // Locked, as set_route_mtu does: the forwarding path honours it
            // (ip_dst_mtu_maybe_forward, ip6_dst_mtu_maybe_forward).
            t.replace_route(
                &node2.ns,
                &format!("{host} dev {} mtu lock {ROUTER_HOP_MTU}", be2.host_veth),
            )
            .unwrap();
        }
    });
    let t = &scene.t;
    // ICMP only: the transfers themselves would overrun the capture.
    let cap = Capture::start_filtered(t, t.underlay_ns(), "br0", &["icmp", "or", "icmp6"]).unwrap();
    let mut failures = Vec::new();
    for f in Family::BOTH {
        let paths = [
            (
                "c1",
                at(TWO.cluster_ip_of(f), 9000),
                format!("{f} pod c1 -> ClusterIP -> be2 on node 2"),
            ),
            (
                "ext",
                host_port(t.node(1).addr(f), TWO.np_bulk),
                format!("{f} external -> NodePort node 1 -> be2 on node 2"),
            ),
        ];
        for (client, target, what) in &paths {
            for dir in ["upload", "download"] {
                let r = scene.bulk(client, target, dir);
                eprintln!(
                    "{dir} {client} -> {target} ({what}): ok {} in {} ms, path MTU {:?}, {:?}",
                    r.ok, r.elapsed_ms, r.path_mtu, r.error
                );
                if !r.ok {
                    failures.push(format!(
                        "{dir} 8 MB {client} -> {target} ({what}) across the MTU {NODE_HOP_MTU} and {ROUTER_HOP_MTU} hops: {} after {} ms ({} of {} bytes)",
                        r.error.unwrap_or_default(),
                        r.elapsed_ms,
                        r.bytes,
                        r.expected_bytes
                    ));
                }
                if dir == "upload" && r.path_mtu != Some(ROUTER_HOP_MTU) {
                    failures.push(format!(
                        "upload {client} -> {target} ({what}): the sender's path MTU is {:?}, want {ROUTER_HOP_MTU}: no packet too big (or an untranslated one) from node 2 reached its socket",
                        r.path_mtu
                    ));
                }
            }
        }
    }
    // The external client's ICMP crosses the underlay: it must come from the NodePort's node,
    // carry each hop's MTU and quote the packet as the client sent it (translated back).
    let file = cap.stop().unwrap();
    let report = verify_checksums(file.path()).unwrap();
    if !report.is_clean() {
        failures.push(format!("bad checksums on the underlay: {report}"));
    }
    if report.icmp == 0 || report.icmp6 == 0 {
        failures.push(format!(
            "no ICMP and ICMPv6 error with a verified checksum on the underlay: {report}"
        ));
    }
    let (_, packets) = read_packets(file.path()).unwrap();
    let seen: Vec<String> = packets.iter().filter_map(|f| too_big(f)).collect();
    eprintln!("packet too big on the underlay: {seen:#?}");
    for f in Family::BOTH {
        let (node1, node2, ext) = (t.node(1).addr(f), t.node(2).addr(f), ext_addr(f));
        let be2 = t.pod_addr("be2", f);
        let np = TWO.np_bulk;
        for (want, what) in [
            (
                format!("{node1} -> {ext} too-big mtu {NODE_HOP_MTU}, quoting {ext} -> {node1}:Some({np})"),
                "node 1's own, to the external client, quoting the packet as the client sent it",
            ),
            (
                format!("{node2} -> {node1} too-big mtu {ROUTER_HOP_MTU}, quoting {node1} -> {be2}:Some(9000)"),
                "node 2's, about the translated flow (node 1's SNAT address to be2)",
            ),
            (
                // A router's error keeps the router as its source; its destination and quote
                // are translated back to what the client sent.
                format!("{node2} -> {ext} too-big mtu {ROUTER_HOP_MTU}, quoting {ext} -> {node1}:Some({np})"),
                "node 2's, translated back by node 1 to the NodePort the client used",
            ),
        ] {
            if !seen.contains(&want) {
                failures.push(format!(
                    "the underlay never carried `{want}` ({f}: {what}); saw {seen:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "path MTU discovery through the datapath:\n  {}",
        failures.join("\n  ")
    );
}

/// The scene of scenario 3c: node 1 has a default route (via the external client, which
/// never sees a translated flow's packet), as a real node does, so that its stack forwards
/// (and answers for) a packet to a frontend that the datapath leaves to it.
fn hop_limit_scene() -> Scene {
    Scene::start_dual_stack_with(&[], |t| {
        for f in Family::BOTH {
            t.add_route(
                &t.node(1).ns,
                &format!("default via {} dev eth0", ext_addr(f)),
            )
            .unwrap();
        }
    })
}

/// Sends from `client` to `target` (`what`: the path in words, its backend be2 on node 2, two
/// forwarding hops away: node 1, then node 2) on a connected UDP socket with hop limits 3, 2
/// and 1. The port has no listener, so 3 must reach be2 and come back as port unreachable
/// (ECONNREFUSED, the error's source translated to the frontend unless the socket hooks
/// connected the pod's socket to be2 itself); 2 must expire in node 2 (a router past node 1: its Time Exceeded quotes
/// the translated packet and node 1 must translate it back); 1 must expire in node 1, whose
/// stack answers from `node1_offender`. Returns what went wrong.
fn hop_limit_failures(
    scene: &Scene,
    f: Family,
    (client, target, what): (&str, &str, &str),
    node1_offender: IpAddr,
) -> Vec<String> {
    // (ICMP type, code) of "TTL / hop limit exceeded in transit".
    let want = match f {
        Family::V4 => (11, 0),
        Family::V6 => (3, 0),
    };
    // With socket-level load balancing for pods, a pod's socket is connected to be2 itself:
    // nothing to translate back.
    let control_from = if client != "ext" && scene.t.pod_socket_lb() {
        scene.t.pod_addr("be2", f)
    } else {
        probe::parse_target(target).expect("a target").ip()
    };
    let mut failures = Vec::new();
    for (hops, offender) in [
        (3, None),
        (2, Some(scene.t.node(2).addr(f))),
        (1, Some(node1_offender)),
    ] {
        let r = scene.connected_udp_hops(client, target, Some(hops));
        eprintln!(
            "{client} -> {target} ({what}) hop limit {hops}: {} after {} ms, {:?} {:?}",
            r.outcome, r.elapsed_ms, r.icmp, r.error
        );
        let got = r.icmp.as_ref().map(|i| (i.icmp_type, i.code));
        let from = r.icmp.as_ref().and_then(|i| i.offender.clone());
        let ok = match offender {
            // be2's port unreachable, translated back: from the frontend itself.
            None => r.outcome == "refused" && from == Some(control_from.to_string()),
            Some(o) => r.outcome == "icmp" && got == Some(want) && from == Some(o.to_string()),
        };
        if !ok {
            failures.push(format!(
                "{client} -> {target} ({what}) with hop limit {hops}: outcome {:?}, ICMP {got:?} from {from:?}; want {}",
                r.outcome,
                offender.map_or(format!("ECONNREFUSED from {control_from} (be2's port unreachable: the control)"), |o| format!(
                    "type/code {want:?} from {o}"
                )),
            ));
        }
    }
    failures
}

/// Scenario 3c: a datagram to a Service frontend whose backend is on the other node, sent with
/// TTL / hop limit 1, must be answered by node 1 with ICMP time exceeded (ICMPv6 Time
/// Exceeded, hop limit exceeded in transit), as a router that forwards it would answer (and as
/// kube-proxy's nodes do: DNAT, then ip_forward / ip6_forward refuse the expiring packet), not
/// be forwarded or lost. The datapath leaves such a packet to the stack untranslated
/// (`programs6::forward6`, `route::forward`), which forwards it by [`hop_limit_scene`]'s
/// default route and so answers. With 2 node 2 answers, and with 3 the backend does
/// ([`hop_limit_failures`]). LB IP and ClusterIP, IPv4 and IPv6.
///
/// And a NodePort of node 1: passed to the stack untranslated, the packet would be delivered
/// locally (the NodePort's address is node 1's own) and refused as port unreachable
/// (ECONNREFUSED; a TCP SYN would get a RST), a hard error for a Service that works. The
/// datapath answers Time Exceeded itself from the NodePort's address
/// (`reject::time_exceeded`, `reject6::time_exceeded6`), as it answers Packet Too Big.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn expiring_ttl_or_hop_limit_to_a_frontend_gets_time_exceeded() {
    require_root();
    let scene = hop_limit_scene();
    let t = &scene.t;
    let mut failures = Vec::new();
    for f in Family::BOTH {
        let lb = at(TWO.lb_ip_of(f), 5454);
        let what = format!("{f} external -> LB IP via node 1 -> be2 on node 2");
        failures.extend(hop_limit_failures(
            &scene,
            f,
            ("ext", &lb, &what),
            t.node(1).addr(f),
        ));
        let cip = at(TWO.cluster_ip_of(f), 5454);
        let what = format!("{f} pod c1 -> ClusterIP -> be2 on node 2");
        // Node 1 answers its pod from the pod gateway address (the host side of the veth).
        failures.extend(hop_limit_failures(
            &scene,
            f,
            ("c1", &cip, &what),
            t.node(1).gateway_of(f),
        ));
        let node1 = t.node(1).addr(f);
        let np = host_port(node1, TWO.np_closed);
        let what = format!("{f} external -> NodePort node 1 -> be2 on node 2");
        failures.extend(hop_limit_failures(&scene, f, ("ext", &np, &what), node1));
    }
    let node1 = &scene.agents[0];
    let expired: Vec<_> = [
        Hook::Xdp,
        Hook::UplinkIngress,
        Hook::PodIngress,
        Hook::Xdp6,
        Hook::UplinkIngress6,
        Hook::PodIngress6,
    ]
    .map(|h| (h.name(), node1.counter(h, Reason::TtlExceeded).unwrap()))
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect();
    eprintln!("node 1 ttl_exceeded: {expired:?}");
    assert!(
        failures.is_empty(),
        "an expiring TTL / hop limit to a frontend:\n  {}",
        failures.join("\n  ")
    );
}
