//! The dual-stack topology on its own, without svc-lb (needs root): what every IPv6 network test
//! of svc-lb stands on. Node 1 runs client pod `c1` and server `s1`, node 2 server `s2`, plus the
//! external client. With `dual_stack` every link carries IPv6 as well (fd00:18::/64 underlay,
//! fd00:10:244:N::/64 pod CIDRs, /128s kindnet-ptp style), and the test proves, over IPv6, what
//! later tests will rely on: pod → pod on the same node and across nodes, external client → pod
//! (the client routes the pod /64s via the nodes, as it would a NodePort's node), bulk
//! transfers of several MiB both ways verified by SHA-256, UDP datagrams larger than the MTU
//! (fragments) verified byte for byte — and a capture on the underlay bridge in which every
//! IPv6 checksum verifies (nodes' `eth0` have TX checksum offload off, so they are all real).
//! IPv4 must still work in the same topology.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::net::{IpAddr, Ipv6Addr};

use svc_testkit::{
    capture::{verify_checksums, Capture, UNDERLAY_SNAPLEN},
    probe::Summary,
    topology::{ext_addr, host_port, require_root, Family, Topology, TopologySpec, EXT_IP6},
    traffic::{BulkResult, SizedUdpSummary},
};

const PROBE: &str = env!("CARGO_BIN_EXE_svc-probe");
/// Bytes of each IPv6 bulk transfer (each direction).
const BULK6: u64 = 6 << 20;
/// Bytes of each IPv4 bulk transfer: IPv4 only has to show it still works.
const BULK4: u64 = 1 << 20;
/// UDP request and reply sizes above the 1500-byte MTU: both directions fragment.
const UDP_REQUEST: usize = 3000;
const UDP_REPLY: usize = 5000;

fn probe(t: &Topology, ns: &str, args: &[&str]) -> String {
    let mut cmd = vec![PROBE];
    cmd.extend_from_slice(args);
    t.exec_ok(ns, &cmd)
        .unwrap_or_else(|e| panic!("svc-probe {args:?} in {ns}: {e:#}"))
}

fn last_line(out: &str) -> &str {
    out.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

/// 20 TCP and 20 UDP exchanges from `ns` (whose address is `client`) with `server`: all must
/// succeed, come back from the server's own address and show the client's own address to the
/// server (nothing translates anything here).
fn exchanges(t: &Topology, what: &str, ns: &str, client: IpAddr, server: IpAddr) {
    for (proto, port) in [("tcp", 8080), ("udp", 5353)] {
        let target = host_port(server, port);
        let out = probe(
            t,
            ns,
            &[
                proto,
                "--target",
                &target,
                "--count",
                "20",
                "--timeout-ms",
                "2000",
            ],
        );
        let s = Summary::from_output(&out).unwrap();
        assert_eq!((s.ok, s.failed), (20, 0), "{what} {proto}: {s:?}");
        assert_eq!(s.reply_from, vec![target.clone()], "{what} {proto}: {s:?}");
        let prefix = host_port(client, 0);
        let prefix = prefix.strip_suffix('0').expect("port 0");
        assert!(
            s.peers_seen_by_backend
                .iter()
                .all(|p| p.starts_with(prefix)),
            "{what} {proto}: the server must see the client's own address {client}: {s:?}"
        );
    }
}

fn bulk(t: &Topology, ns: &str, server: IpAddr, dir: &str, bytes: u64) -> BulkResult {
    let target = host_port(server, 9000);
    let out = probe(
        t,
        ns,
        &[
            "bulk",
            "--target",
            &target,
            "--dir",
            dir,
            "--bytes",
            &bytes.to_string(),
            "--deadline-ms",
            "60000",
        ],
    );
    let r: BulkResult = serde_json::from_str(last_line(&out)).unwrap();
    assert!(r.ok, "bulk {dir} {bytes} bytes with {target}: {r:?}");
    assert_eq!(r.reply_from, target, "{r:?}");
    r
}

fn sized_udp(t: &Topology, ns: &str, server: IpAddr) -> SizedUdpSummary {
    let target = host_port(server, 7053);
    let out = probe(
        t,
        ns,
        &[
            "sized-udp",
            "--target",
            &target,
            "--count",
            "3",
            "--request-len",
            &UDP_REQUEST.to_string(),
            "--reply-len",
            &UDP_REPLY.to_string(),
            "--timeout-ms",
            "2000",
        ],
    );
    let s: SizedUdpSummary = serde_json::from_str(last_line(&out)).unwrap();
    assert_eq!(
        (s.ok, s.failed, s.corrupt),
        (3, 0, 0),
        "sized UDP with {target}: {s:?}"
    );
    assert_eq!(s.reply_from, vec![target], "{s:?}");
    s
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn dual_stack_topology_carries_ipv6_and_ipv4_with_valid_checksums() {
    require_root();
    let t = Topology::build(
        &TopologySpec::new()
            .node(&["c1", "s1"])
            .node(&["s2"])
            .external_client(true)
            .dual_stack(true),
    )
    .expect("building the dual-stack topology");

    // The address plan, as DESIGN §3 mirrors it for IPv6.
    let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    assert_eq!(t.node_ip6(1), v6("fd00:18::2"));
    assert_eq!(t.node_ip6(2), v6("fd00:18::3"));
    assert_eq!(t.node(2).pod_cidr_of(Family::V6), "fd00:10:244:2::/64");
    assert_eq!(t.node(1).gateway6, Some(v6("fd00:10:244:1::1")));
    assert_eq!(t.pod_ip6("c1"), v6("fd00:10:244:1::2"));
    assert_eq!(t.pod_ip6("s1"), v6("fd00:10:244:1::3"));
    assert_eq!(t.pod_ip6("s2"), v6("fd00:10:244:2::2"));
    assert_eq!(ext_addr(Family::V6), IpAddr::V6(EXT_IP6));
    assert_eq!(t.families(), Family::BOTH);
    // Checksums as on real hardware, for both families: offload off on the underlay side.
    for n in 1..=2 {
        let on = t.offloads_on(&t.node(n).ns, "eth0").unwrap();
        assert!(
            !on.iter().any(|o| o == "tx-checksumming"),
            "node {n} eth0 must have TX checksum offload off: {on:?}"
        );
    }

    let _servers = t
        .serve(
            &["s1", "s2"],
            &[
                "--tcp",
                "8080",
                "--udp",
                "5353",
                "--bulk",
                "9000",
                "--sized-udp",
                "7053",
            ],
        )
        .unwrap();
    // The external client reaches pods through the node that hosts them (as it reaches a
    // NodePort): a route per pod CIDR, per family.
    let ext = t.ext_ns().unwrap().to_owned();
    for fam in Family::BOTH {
        for n in 1..=2 {
            let node = t.node(n);
            t.add_route(
                &ext,
                &format!("{} via {} dev eth0", node.pod_cidr_of(fam), node.addr(fam)),
            )
            .unwrap();
        }
    }

    let capture = Capture::start_snaplen(&t, t.underlay_ns(), "br0", UNDERLAY_SNAPLEN, &[])
        .expect("capturing on the underlay");
    let c1 = t.pod_ns("c1").to_owned();
    for fam in Family::BOTH {
        let me = t.pod_addr("c1", fam);
        exchanges(
            &t,
            &format!("{fam} same node"),
            &c1,
            me,
            t.pod_addr("s1", fam),
        );
        exchanges(
            &t,
            &format!("{fam} across nodes"),
            &c1,
            me,
            t.pod_addr("s2", fam),
        );
        for server in ["s1", "s2"] {
            exchanges(
                &t,
                &format!("{fam} external client to {server}"),
                &ext,
                ext_addr(fam),
                t.pod_addr(server, fam),
            );
        }
    }
    // Bulk both ways across the underlay: pod to pod, and external client to pod.
    for (fam, bytes) in [(Family::V6, BULK6), (Family::V4, BULK4)] {
        for dir in ["download", "upload"] {
            let r = bulk(&t, &c1, t.pod_addr("s2", fam), dir, bytes);
            assert_eq!(r.backend, "s2");
            bulk(&t, &ext, t.pod_addr("s1", fam), dir, bytes);
        }
    }
    // Datagrams above the MTU, across the underlay: fragments both ways.
    for fam in Family::BOTH {
        sized_udp(&t, &c1, t.pod_addr("s2", fam));
    }
    sized_udp(&t, &ext, t.pod_addr("s1", Family::V6));

    let file = capture.stop().expect("stopping the capture");
    let report = verify_checksums(file.path()).expect("reading the capture");
    eprintln!("underlay capture: {report}");
    assert_eq!(report.packets, file.captured(), "{report}");
    assert!(report.is_clean(), "bad checksums on the underlay: {report}");
    assert!(
        report.incomplete.is_empty(),
        "fragmented datagrams never completed on the underlay: {:?}",
        report.incomplete
    );
    // IPv6 test traffic crossed the underlay and was verified (an empty capture must fail).
    assert!(
        report.ipv6_verified() > 0,
        "no IPv6 packet verified: {report}"
    );
    assert!(
        report.tcp6 > 2 * BULK6 / 1500,
        "the IPv6 bulk transfers must cross the underlay: {report}"
    );
    assert!(
        report.udp6 >= 40,
        "IPv6 UDP exchanges across the underlay: {report}"
    );
    assert!(
        report.nd_mld > 0,
        "neighbour discovery on the underlay, verified: {report}"
    );
    // Every fragment was captured whole: nothing unverifiable but fragments.
    assert_eq!(report.l4_unverifiable6, report.fragments6, "{report}");
    let (c1_6, s2_6, s1_6) = (t.pod_ip6("c1"), t.pod_ip6("s2"), t.pod_ip6("s1"));
    let frag6 = |src: Ipv6Addr, dst: Ipv6Addr, min: usize| {
        report
            .datagrams6
            .iter()
            .any(|d| d.proto == 17 && d.src == src && d.dst == dst && d.len >= min && d.checksum_ok)
    };
    assert!(
        frag6(c1_6, s2_6, UDP_REQUEST),
        "request fragments c1 -> s2: {report}"
    );
    assert!(
        frag6(s2_6, c1_6, UDP_REPLY),
        "reply fragments s2 -> c1: {report}"
    );
    assert!(
        frag6(EXT_IP6, s1_6, UDP_REQUEST),
        "request fragments ext -> s1: {report}"
    );
    assert!(
        frag6(s1_6, EXT_IP6, UDP_REPLY),
        "reply fragments s1 -> ext: {report}"
    );
    // IPv4 crossed too, and verified.
    assert!(
        report.tcp > 2 * BULK4 / 1500 && report.udp >= 40 && report.reassembled >= 6,
        "IPv4 across the underlay: {report}"
    );
}

/// The proof that the test above would catch a wrong IPv6 checksum: with TX checksum offload
/// back on on node 1's `eth0`, its packets cross the underlay with partial checksums (the
/// pseudo-header sum only: no NIC completes them on a veth), which the receiving veth still
/// trusts — traffic works, and only the capture can tell. It must name the IPv6 packets.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn a_partial_ipv6_checksum_on_the_underlay_is_caught() {
    require_root();
    let t = Topology::build(
        &TopologySpec::new()
            .node(&["c1"])
            .node(&["s2"])
            .dual_stack(true),
    )
    .expect("building the dual-stack topology");
    let _servers = t
        .serve(&["s2"], &["--tcp", "8080", "--udp", "5353"])
        .unwrap();
    t.exec_ok(&t.node(1).ns, &["ethtool", "-K", "eth0", "tx", "on"])
        .unwrap();
    let capture = Capture::start_snaplen(&t, t.underlay_ns(), "br0", UNDERLAY_SNAPLEN, &[])
        .expect("capturing on the underlay");
    let (c1, s2) = (t.pod_ip6("c1"), t.pod_ip6("s2"));
    exchanges(
        &t,
        "IPv6 across nodes",
        t.pod_ns("c1"),
        c1.into(),
        s2.into(),
    );
    let report = verify_checksums(capture.stop().unwrap().path()).unwrap();
    for proto in ["TCP", "UDP"] {
        let want = format!("{proto} {c1} -> {s2}");
        assert!(
            report.bad_l4.iter().any(|m| m.contains(&want)),
            "the capture must name the partial {want} checksums: {report}"
        );
    }
    assert!(
        !report
            .bad_l4
            .iter()
            .any(|m| m.contains(&format!("{s2} -> {c1}"))),
        "node 2 still has offload off: its packets are right: {report}"
    );
}
