//! What real applications send, end to end through the datapath (needs root), beyond bulk TCP:
//! large UDP datagrams that fragment (scenario 2), ECONNREFUSED on a connected UDP socket
//! (scenario 3a), and path MTU discovery across a narrower hop (scenario 3b).
//!
//! The scene (nodes, pods, Services, ports) is `network_traffic`'s, whose module docs describe
//! it; it lives in `traffic_common`.
//!
//! Failures name the path (client, frontend, which node, where the backend is) and what broke.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]

use svc_testkit::{
    capture::{read_packets, verify_checksums, Capture},
    topology::require_root,
};

mod traffic_common;
use traffic_common::*;

/// Scenario 2: UDP replies of 1400, 3000, 9000 and 30000 bytes to 3000-byte requests through a
/// ClusterIP (local and remote backend) and a NodePort (local and remote), every byte checked;
/// the underlay capture must hold the translated fragments, every fragment's IP header checksum
/// right and every reassembled datagram's UDP checksum right.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn large_udp_fragments_are_translated_and_arrive_intact() {
    require_root();
    let scene = Scene::start(&[], |_| {});
    let cap = Capture::start(&scene.t, scene.t.underlay_ns(), "br0").unwrap();
    let mut failures = Vec::new();
    // Controls first: straight to the backend pods (no Service, nothing to translate). If
    // these fail, the topology or the tool is broken, not the datapath.
    let be1 = format!("{}:7053", scene.t.pod_ip("be1"));
    let be2 = format!("{}:7053", scene.t.pod_ip("be2"));
    for (client, target) in [("c1", &be1), ("c1", &be2), ("c2", &be1)] {
        for reply in [1400, 30000] {
            let r = scene.sized(client, target, 2, 3000, reply);
            assert!(
                r.ok == 2 && r.reply_from == [target.clone()],
                "control without a Service failed, so the test itself is broken: {client} -> {target} \
                 3000/{reply} bytes: {r:?}"
            );
        }
    }
    let paths = [
        (
            "c1",
            format!("{}:7053", ONE.cluster_ip),
            "ClusterIP, local backend",
        ),
        (
            "c1",
            format!("{}:7053", TWO.cluster_ip),
            "ClusterIP, remote backend",
        ),
        (
            "ext",
            format!("172.18.0.2:{}", ONE.np_sized),
            "NodePort node 1, local backend",
        ),
        (
            "ext",
            format!("172.18.0.2:{}", TWO.np_sized),
            "NodePort node 1, remote backend",
        ),
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
    for (client, target, what) in &paths {
        for (request, reply) in SIZES {
            let r = scene.sized(client, target, COUNT, request, reply);
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
    let file = cap.stop().unwrap();
    let report = verify_checksums(file.path()).unwrap();
    eprintln!("underlay capture: {report}");
    for d in &report.datagrams {
        eprintln!("  reassembled: {d}");
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
    // What must have crossed the underlay, translated, in fragments.
    let be2 = scene.t.pod_ip("be2");
    let c1 = scene.t.pod_ip("c1");
    let node1 = scene.t.node_ip(1);
    let ext = svc_testkit::topology::EXT_IP;
    let has = |src, sport: Option<u16>, dst, dport: Option<u16>, min_len| {
        report.datagrams.iter().any(|d| {
            d.proto == 17
                && d.src == src
                && d.dst == dst
                && sport.is_none_or(|p| p == d.src_port)
                && dport.is_none_or(|p| p == d.dst_port)
                && d.len >= min_len
                && d.checksum_ok
        })
    };
    let expect = [
        (
            has(c1, None, be2, Some(7053), 3000),
            format!("request fragments {c1} -> {be2}:7053 (ClusterIP DNATed to the remote backend)"),
        ),
        (
            has(be2, Some(7053), c1, None, 30000),
            format!("30000-byte reply fragments {be2}:7053 -> {c1} (on their way to be reverse-NATed on node 1)"),
        ),
        (
            has(node1, None, be2, Some(7053), 3000),
            format!("request fragments {node1} -> {be2}:7053 (NodePort DNAT+SNAT to the remote backend)"),
        ),
        (
            has(node1, Some(TWO.np_sized), ext, None, 30000),
            format!("30000-byte reply fragments {node1}:{} -> {ext} (reverse-NATed on node 1)", TWO.np_sized),
        ),
        (
            has(node1, Some(ONE.np_sized), ext, None, 30000),
            format!("30000-byte reply fragments {node1}:{} -> {ext} (local backend)", ONE.np_sized),
        ),
    ];
    for (ok, what) in expect {
        if !ok {
            failures.push(format!(
                "no complete, checksum-valid datagram on the underlay for: {what}"
            ));
        }
    }
    if let Some(d) = report
        .datagrams
        .iter()
        .find(|d| d.dst.octets()[..2] == [10, 96] || d.src.octets()[..2] == [10, 96])
    {
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
/// must get ECONNREFUSED (the backend's ICMP port unreachable, translated back), within 1 s.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn connected_udp_to_a_port_without_listener_gets_econnrefused() {
    require_root();
    let scene = Scene::start(&[], |_| {});
    // Control without a Service: the backend's own ICMP port unreachable must reach the socket.
    let control = format!("{}:5454", scene.t.pod_ip("be2"));
    let r = scene.connected_udp("c2", &control);
    assert!(
        r.outcome == "refused" && r.elapsed_ms < 1000,
        "control without a Service failed, so the test itself is broken: c2 -> {control}: {r:?}"
    );
    let paths = [
        (
            "c1",
            format!("{}:5454", ONE.cluster_ip),
            "pod -> ClusterIP, local backend",
        ),
        (
            "c1",
            format!("{}:5454", TWO.cluster_ip),
            "pod -> ClusterIP, remote backend",
        ),
        (
            "ext",
            format!("172.18.0.2:{}", ONE.np_closed),
            "external -> NodePort, local backend",
        ),
        (
            "ext",
            format!("172.18.0.2:{}", TWO.np_closed),
            "external -> NodePort, remote backend",
        ),
        (
            "ext",
            format!("172.18.0.3:{}", ONE.np_closed),
            "external -> NodePort node 2, remote backend",
        ),
    ];
    let mut failures = Vec::new();
    for (client, target, what) in &paths {
        let r = scene.connected_udp(client, target);
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
    assert!(
        failures.is_empty(),
        "ICMP port unreachable did not reach the connected socket:\n  {}",
        failures.join("\n  ")
    );
}

/// Scenario 3b: node 1 routes node 2's pod CIDR over a hop with MTU 1300. A sender whose
/// packets cross it must get ICMP fragmentation-needed carrying 1300 (its socket's path MTU
/// drops to 1300) and an 8 MB TCP transfer must complete, for a pod through a ClusterIP and for
/// the external client through a NodePort (both to the remote backend be2).
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn lower_mtu_hop_sends_frag_needed_and_tcp_completes() {
    require_root();
    const MTU: u32 = 1300;
    let scene = Scene::start(&[], |t| {
        t.set_route_mtu(&t.node(1).ns, "10.244.2.0/24", t.node_ip(2), "eth0", MTU)
            .unwrap();
    });
    // ICMP only: the transfers themselves would overrun the capture.
    let cap = Capture::start_filtered(&scene.t, scene.t.underlay_ns(), "br0", &["icmp"]).unwrap();
    let paths = [
        (
            "c1",
            format!("{}:9000", TWO.cluster_ip),
            "pod c1 -> ClusterIP -> be2 on node 2",
        ),
        (
            "ext",
            format!("172.18.0.2:{}", TWO.np_bulk),
            "external -> NodePort node 1 -> be2 on node 2",
        ),
    ];
    let mut failures = Vec::new();
    for (client, target, what) in &paths {
        for dir in ["upload", "download"] {
            let r = scene.bulk(client, target, dir);
            eprintln!(
                "{dir} {client} -> {target} ({what}): ok {} in {} ms, path MTU {:?}, {:?}",
                r.ok, r.elapsed_ms, r.path_mtu, r.error
            );
            if !r.ok {
                failures.push(format!(
                    "{dir} 8 MB {client} -> {target} ({what}) across the MTU {MTU} hop: {} after {} ms ({} of {} bytes)",
                    r.error.unwrap_or_default(),
                    r.elapsed_ms,
                    r.bytes,
                    r.expected_bytes
                ));
            }
            if dir == "upload" && r.path_mtu != Some(MTU) {
                failures.push(format!(
                    "upload {client} -> {target} ({what}): the sender's path MTU is {:?}, want {MTU}: no ICMP fragmentation-needed (or an untranslated one) reached its socket",
                    r.path_mtu
                ));
            }
        }
    }
    // The external client's ICMP crosses the underlay: it must come from the NodePort's node,
    // carry MTU 1300 and quote the packet as the client sent it (translated back).
    let file = cap.stop().unwrap();
    let report = verify_checksums(file.path()).unwrap();
    if !report.is_clean() {
        failures.push(format!("bad checksums on the underlay: {report}"));
    }
    let (_, packets) = read_packets(file.path()).unwrap();
    let mut icmp_seen = Vec::new();
    for f in &packets {
        // Ethernet (no VLAN on our bridge), IPv4 without options, ICMP type 3 code 4.
        if f.len() < 14 + 20 + 8 + 20 + 8 || f[12..14] != [0x08, 0x00] || f[14 + 9] != 1 {
            continue;
        }
        let ip = &f[14..];
        let ihl = usize::from(ip[0] & 0xf) * 4;
        let icmp = &ip[ihl..];
        if icmp[0] != 3 || icmp[1] != 4 {
            continue;
        }
        let mtu = u16::from_be_bytes([icmp[6], icmp[7]]);
        let inner = &icmp[8..];
        let iihl = usize::from(inner[0] & 0xf) * 4;
        let src = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let isrc = std::net::Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]);
        let idst = std::net::Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]);
        let idport = inner
            .get(iihl + 2..iihl + 4)
            .map(|p| u16::from_be_bytes([p[0], p[1]]));
        icmp_seen.push(format!(
            "{src} -> {dst} frag-needed mtu {mtu}, quoting {isrc} -> {idst}:{idport:?}"
        ));
    }
    eprintln!("ICMP fragmentation-needed on the underlay: {icmp_seen:#?}");
    let want = format!(
        "172.18.0.2 -> {} frag-needed mtu {MTU}, quoting {} -> 172.18.0.2:Some({})",
        svc_testkit::topology::EXT_IP,
        svc_testkit::topology::EXT_IP,
        TWO.np_bulk
    );
    if !icmp_seen.contains(&want) {
        failures.push(format!(
            "the underlay never carried `{want}` (ICMP to the external client, translated to the NodePort it used); saw {icmp_seen:?}"
        ));
    }
    assert!(
        failures.is_empty(),
        "path MTU discovery through the datapath:\n  {}",
        failures.join("\n  ")
    );
}
