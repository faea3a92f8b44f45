//! `BPF_PROG_TEST_RUN` fixtures for `loadBalancerSourceRanges` (`FRONTEND_F_SOURCE_RANGES` and
//! `SVC_SOURCE_RANGES`): a new flow to a LoadBalancer IP from a source inside one of the
//! frontend's prefixes is translated as usual; from any other source it is dropped and counted
//! as `source_range_denied`, with no conntrack entry written. Other frontends of the same
//! Service (its ClusterIP, its NodePort) are not filtered, and a flow that already has a
//! conntrack entry is not checked again (kube-proxy filters `ct state new` only). Covered on
//! every hook that opens flows: `svc_pod_ingress`, `svc_uplink_ingress` and `svc_xdp`.
//!
//! Run as root: `cargo test -p tests --test fixtures_source_ranges`.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::net::{Ipv4Addr, SocketAddrV4};

use svc_common::{
    Frontend, FrontendKey, Reason, BACKEND_F_LOCAL, FRONTEND_F_EXTERNAL_IP, FRONTEND_F_NODEPORT,
    FRONTEND_F_SOURCE_RANGES, PROTO_TCP, SCOPE_ANY,
};
use svc_testkit::fixtures::*;

/// The Service's LoadBalancer ingress IP.
const LB: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);
const LB_ID: u32 = 5;
const CLUSTER_IP_ID: u32 = 6;
const NODEPORT_ID: u32 = 7;
/// A pod on this node outside the pods' allowed prefix (10.244.1.0/30 holds [`CLIENT_POD`]).
const DENIED_POD: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 77), 40000);

/// The Service: the local [`BACKEND_A`] behind its ClusterIP [`SVC_VIP`], its NodePort
/// [`NODEPORT`] and its LB IP [`LB`], the last one flagged; written as the agent does
/// (backend, slots, prefixes, then the frontends).
fn service(dp: &mut Datapath, allowed: &[(Ipv4Addr, u8)]) {
    dp.put_backend_flags(BACKEND_A_ID, BACKEND_A, PROTO_TCP, BACKEND_F_LOCAL)
        .unwrap();
    for id in [LB_ID, CLUSTER_IP_ID, NODEPORT_ID] {
        dp.put_slot(id, 1, BACKEND_A_ID).unwrap();
    }
    for &(addr, len) in allowed {
        dp.put_source_range(LB_ID, addr, len).unwrap();
    }
    let frontends = [
        (LB, LB_ID, FRONTEND_F_EXTERNAL_IP | FRONTEND_F_SOURCE_RANGES),
        (SVC_VIP, CLUSTER_IP_ID, 0),
        (NODEPORT, NODEPORT_ID, FRONTEND_F_NODEPORT),
    ];
    for (addr, id, flags) in frontends {
        dp.put_frontend_entry(
            FrontendKey {
                addr: addr.ip().octets(),
                port: addr.port(),
                proto: PROTO_TCP,
                scope: SCOPE_ANY,
            },
            Frontend {
                id,
                backend_count: 1,
                flags,
                affinity_timeout_s: 0,
            },
        )
        .unwrap();
    }
}

/// The datapath for one test; panics when not root.
fn datapath() -> Datapath {
    if let Err(e) = read_object() {
        panic!("{e:#}");
    }
    require_root();
    Datapath::load().unwrap_or_else(|e| panic!("{e:#}"))
}

/// XDP and the tc uplink program (both open flows from the wire).
const BOTH_UPLINK_PATHS: NodePrograms = NodePrograms {
    xdp: true,
    uplink_tc: true,
};

fn assert_no_flow(dp: &Datapath, client: SocketAddrV4, frontend: SocketAddrV4) {
    assert!(
        dp.ct_get(&ct_forward(client, frontend, PROTO_TCP))
            .is_none(),
        "a denied flow {client} → {frontend} must leave no conntrack entry"
    );
    assert!(
        dp.ct_get(&ct_reply(BACKEND_A, client, PROTO_TCP)).is_none(),
        "a denied flow {client} → {frontend} must claim no reply tuple"
    );
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn pod_sources_inside_the_ranges_reach_the_lb_ip_and_others_are_dropped() {
    let mut dp = datapath();
    service(&mut dp, &[(Ipv4Addr::new(10, 244, 1, 0), 30)]);
    let allowed = Pkt::tcp(CLIENT_POD, LB, TCP_SYN);
    dp.check(&Fixture::translate(
        "SYN from a pod inside 10.244.1.0/30 to the LB IP: DNAT as usual",
        Program::Ingress,
        &allowed,
        &allowed.clone().with_dst(BACKEND_A),
        Reason::DnatNew,
    ));
    let denied = Pkt::tcp(DENIED_POD, LB, TCP_SYN);
    dp.check(&Fixture::dropped(
        "SYN from a pod outside every range to the LB IP: dropped",
        Program::Ingress,
        denied.build(),
        Reason::SourceRangeDenied,
    ));
    assert_no_flow(&dp, DENIED_POD, LB);
    let retry = Pkt::tcp(DENIED_POD, LB, TCP_SYN);
    dp.check(&Fixture::dropped(
        "its retransmission: dropped again (nothing was remembered)",
        Program::Ingress,
        retry.build(),
        Reason::SourceRangeDenied,
    ));
    let cluster_ip = Pkt::tcp(DENIED_POD, SVC_VIP, TCP_SYN);
    dp.check(&Fixture::translate(
        "the same pod to the Service's ClusterIP: not filtered",
        Program::Ingress,
        &cluster_ip,
        &cluster_ip.clone().with_dst(BACKEND_A),
        Reason::DnatNew,
    ));
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn only_new_flows_are_checked() {
    let mut dp = datapath();
    let range = (Ipv4Addr::new(10, 244, 1, 0), 24);
    service(&mut dp, &[range]);
    let syn = Pkt::tcp(CLIENT_POD, LB, TCP_SYN);
    dp.check(&Fixture::translate(
        "SYN while allowed",
        Program::Ingress,
        &syn,
        &syn.clone().with_dst(BACKEND_A),
        Reason::DnatNew,
    ));
    // The range goes (the Service's ranges changed): the open connection keeps working, as
    // with kube-proxy (its chain sees `ct state new` only); a new one is refused.
    dp.delete_source_range(LB_ID, range.0, range.1).unwrap();
    let ack = Pkt::tcp(CLIENT_POD, LB, TCP_ACK);
    dp.check(&Fixture::translate(
        "ACK of the established flow: translated by its conntrack entry",
        Program::Ingress,
        &ack,
        &ack.clone().with_dst(BACKEND_A),
        Reason::DnatEstablished,
    ));
    let other = SocketAddrV4::new(*CLIENT_POD.ip(), 40001);
    dp.check(&Fixture::dropped(
        "a new connection from the same pod: dropped",
        Program::Ingress,
        Pkt::tcp(other, LB, TCP_SYN).build(),
        Reason::SourceRangeDenied,
    ));
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn uplink_tc_filters_the_lb_ip_and_not_the_node_port() {
    node_datapath_test(BOTH_UPLINK_PATHS, |dp, uplink| {
        service(dp, &[(Ipv4Addr::new(172, 18, 0, 0), 24)]);
        let allowed = Pkt::tcp(EXT_CLIENT, LB, TCP_SYN);
        dp.check_on(
            uplink.ifindex,
            &Fixture::translate(
                "SYN from 172.18.0.100 (inside 172.18.0.0/24) to the LB IP: DNAT to the local \
                 backend",
                Program::UplinkIngress,
                &allowed,
                &allowed.clone().with_dst(BACKEND_A),
                Reason::DnatNew,
            ),
        );
        let denied = Pkt::tcp(FAR_CLIENT, LB, TCP_SYN);
        dp.check_on(
            uplink.ifindex,
            &Fixture::dropped(
                "SYN from 198.51.100.7 to the LB IP: dropped",
                Program::UplinkIngress,
                denied.build(),
                Reason::SourceRangeDenied,
            ),
        );
        assert_no_flow(dp, FAR_CLIENT, LB);
        let nodeport = Pkt::tcp(FAR_CLIENT, NODEPORT, TCP_SYN);
        dp.check_on(
            uplink.ifindex,
            &Fixture::translate(
                "the same client to the Service's NodePort: not filtered (kube-proxy neither)",
                Program::UplinkIngress,
                &nodeport,
                &nodeport.clone().with_dst(BACKEND_A),
                Reason::DnatNew,
            ),
        );
    });
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn xdp_filters_the_lb_ip_and_not_the_node_port() {
    node_datapath_test(BOTH_UPLINK_PATHS, |dp, uplink| {
        service(dp, &[(Ipv4Addr::new(172, 18, 0, 0), 24)]);
        let from = |p: &Pkt, mac| p.build_eth(mac, NODE_MAC);
        let allowed = Pkt::tcp(EXT_CLIENT, LB, TCP_SYN);
        dp.check_xdp(
            uplink,
            &XdpFixture::new(
                "SYN from 172.18.0.100 to the LB IP: DNAT, passed to the local backend",
                from(&allowed, EXT_CLIENT_MAC),
                XDP_PASS,
                from(&allowed.clone().with_dst(BACKEND_A), EXT_CLIENT_MAC),
                Reason::DnatNew,
            ),
        );
        let denied = Pkt::tcp(FAR_CLIENT, LB, TCP_SYN);
        dp.check_xdp(
            uplink,
            &XdpFixture::dropped(
                "SYN from 198.51.100.7 to the LB IP: dropped in XDP",
                from(&denied, ROUTER_MAC),
                Reason::SourceRangeDenied,
            ),
        );
        assert_no_flow(dp, FAR_CLIENT, LB);
        let nodeport = Pkt::tcp(FAR_CLIENT, NODEPORT, TCP_SYN);
        dp.check_xdp(
            uplink,
            &XdpFixture::new(
                "the same client to the NodePort: translated",
                from(&nodeport, ROUTER_MAC),
                XDP_PASS,
                from(&nodeport.clone().with_dst(BACKEND_A), ROUTER_MAC),
                Reason::DnatNew,
            ),
        );
    });
}
