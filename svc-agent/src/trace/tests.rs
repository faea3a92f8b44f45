//! The tracer's pure parts: Service → frontend ids, filters, slot planning, /proc stat parsing, event decoding.
use super::*;
use bytemuck::Zeroable;
use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
};
use std::net::{Ipv4Addr, Ipv6Addr};
use svc_common::{
    Addr6, Backend6, FrontendKey, FrontendKey6, TraceEvent, TraceEvent6, FRONTEND_F_EXTERNAL_IP,
    SCOPE_ANY, SCOPE_EXTERNAL,
};

fn v6(s: &str) -> Addr6 {
    s.parse::<Ipv6Addr>().unwrap().into()
}

fn fe_key<A>(addr: A, port: u16, proto: u8, scope: u8) -> FrontendKeyOf<A> {
    FrontendKeyOf {
        addr,
        port,
        proto,
        scope,
    }
}

fn fe(id: u32, flags: u32) -> Frontend {
    Frontend {
        id,
        backend_count: 1,
        flags,
        affinity_timeout_s: 0,
    }
}

fn service() -> Service {
    Service {
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            cluster_ips: Some(vec!["10.96.0.10".into(), "fd00:10:96::10".into()]),
            external_ips: Some(vec!["192.0.2.7".into(), "2001:db8::7".into()]),
            ports: Some(vec![
                ServicePort {
                    port: 80,
                    node_port: Some(30080),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                },
                ServicePort {
                    port: 53,
                    protocol: Some("UDP".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("203.0.113.9".into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_service_resolves_to_its_frontends_only() {
    let node = [198, 51, 100, 1];
    let frontends: BTreeMap<FrontendKey, Frontend> = [
        (fe_key([10, 96, 0, 10], 80, PROTO_TCP, SCOPE_ANY), fe(1, 0)),
        (fe_key([10, 96, 0, 10], 53, PROTO_UDP, SCOPE_ANY), fe(2, 0)),
        // Same address, a port of another protocol: not this Service's.
        (fe_key([10, 96, 0, 10], 53, PROTO_TCP, SCOPE_ANY), fe(3, 0)),
        (
            fe_key([192, 0, 2, 7], 80, PROTO_TCP, SCOPE_ANY),
            fe(4, FRONTEND_F_EXTERNAL_IP),
        ),
        (fe_key([203, 0, 113, 9], 80, PROTO_TCP, SCOPE_ANY), fe(5, 0)),
        (
            fe_key([203, 0, 113, 9], 80, PROTO_TCP, SCOPE_EXTERNAL),
            fe(6, 0),
        ),
        (
            fe_key(node, 30080, PROTO_TCP, SCOPE_ANY),
            fe(7, FRONTEND_F_NODEPORT),
        ),
        // Another Service's NodePort and ClusterIP.
        (
            fe_key(node, 30081, PROTO_TCP, SCOPE_ANY),
            fe(8, FRONTEND_F_NODEPORT),
        ),
        (fe_key([10, 96, 0, 11], 80, PROTO_TCP, SCOPE_ANY), fe(9, 0)),
        // Port 80 on a node address without the NodePort flag: not this Service.
        (fe_key(node, 80, PROTO_TCP, SCOPE_ANY), fe(10, 0)),
    ]
    .into_iter()
    .collect();
    let node6 = v6("fd00:18::1");
    // The IPv6 frontends share the id space.
    let frontends6: BTreeMap<FrontendKey6, Frontend> = [
        (
            fe_key(v6("fd00:10:96::10"), 80, PROTO_TCP, SCOPE_ANY),
            fe(11, 0),
        ),
        (
            fe_key(v6("2001:db8::7"), 80, PROTO_TCP, SCOPE_ANY),
            fe(12, FRONTEND_F_EXTERNAL_IP),
        ),
        (
            fe_key(node6, 30080, PROTO_TCP, SCOPE_ANY),
            fe(13, FRONTEND_F_NODEPORT),
        ),
        // Another Service's IPv6 ClusterIP.
        (
            fe_key(v6("fd00:10:96::11"), 80, PROTO_TCP, SCOPE_ANY),
            fe(14, 0),
        ),
        // The IPv4 ClusterIP's bytes as an IPv4-mapped IPv6 address: not the Service's.
        (
            fe_key(v6("::ffff:10.96.0.10"), 80, PROTO_TCP, SCOPE_ANY),
            fe(15, 0),
        ),
    ]
    .into_iter()
    .collect();
    let snap = MapSnapshot {
        frontends,
        frontends6,
        ..Default::default()
    };
    assert_eq!(
        service_frontend_ids(&service(), &snap, None),
        vec![1, 2, 4, 5, 6, 7, 11, 12, 13]
    );
    assert_eq!(service_frontend_ids(&service(), &snap, Some(53)), vec![2]);
    assert_eq!(
        service_frontend_ids(&service(), &snap, Some(30080)),
        vec![7, 13]
    );
}

fn args() -> TraceArgs {
    TraceArgs {
        src: Some(Ipv4Addr::new(10, 244, 1, 2).into()),
        dst: None,
        port: Some(80),
        proto: Some(Proto::Tcp),
        service: None,
        manifests: None,
        kubeconfig: None,
        count: None,
        common: Common {
            bpffs: crate::cli::DEFAULT_BPFFS.into(),
            output: Format::Table,
        },
    }
}

const ME: Owner = Owner {
    pid: 42,
    start: 7,
    pidns: 99,
};

#[test]
fn filters_carry_the_criteria_and_the_owner() {
    let f = filter_of(&args(), &[3, 5], ME).unwrap();
    assert_eq!(f.src_addr, [10, 244, 1, 2]);
    assert_eq!(f.dst_addr, [0; 4], "unset = any");
    assert_eq!(f.addr_family, AF_INET);
    assert_eq!(
        (f.src_addr6, f.dst_addr6),
        (Addr6::default(), Addr6::default())
    );
    assert_eq!((f.port, f.proto), (80, PROTO_TCP));
    assert_eq!(f.frontend_count, 2);
    assert_eq!(f.frontend_ids[..3], [3, 5, 0]);
    assert_eq!(Owner::of(&f), ME);
    let many: Vec<u32> = (1..=TRACE_FRONTENDS as u32 + 1).collect();
    let err = filter_of(&args(), &many, ME).unwrap_err().to_string();
    assert!(err.contains("narrow it with --port"), "{err}");
}

#[test]
fn ipv6_ends_make_an_ipv6_filter_and_families_do_not_mix() {
    let a = TraceArgs {
        src: Some("fd00:10:244:1::2".parse().unwrap()),
        dst: Some("fd00:10:96::10".parse().unwrap()),
        ..args()
    };
    let f = filter_of(&a, &[], ME).unwrap();
    assert_eq!(f.addr_family, AF_INET6);
    assert_eq!(f.src_addr6, v6("fd00:10:244:1::2"));
    assert_eq!(f.dst_addr6, v6("fd00:10:96::10"));
    assert_eq!((f.src_addr, f.dst_addr), ([0; 4], [0; 4]));
    assert!(f.wants_family(AF_INET6) && !f.wants_family(AF_INET));
    // No address: either family.
    let any = filter_of(
        &TraceArgs {
            src: None,
            ..args()
        },
        &[],
        ME,
    )
    .unwrap();
    assert_eq!(any.addr_family, 0);
    assert!(any.wants_family(AF_INET) && any.wants_family(AF_INET6));
    let mixed = TraceArgs {
        dst: Some("fd00:10:96::10".parse().unwrap()),
        ..args()
    };
    let err = filter_of(&mixed, &[], ME).unwrap_err().to_string();
    assert!(
        err.contains("--src 10.244.1.2 and --dst fd00:10:96::10 are of different families"),
        "{err}"
    );
}

fn owned(o: Owner) -> TraceFilter {
    TraceFilter {
        owner_pid: o.pid,
        owner_start: o.start,
        owner_pidns: o.pidns,
        ..TraceFilter::zeroed()
    }
}

#[test]
fn slots_of_dead_owners_are_freed_and_others_kept() {
    let live = Owner { pid: 1, ..ME };
    let dead = Owner { pid: 2, ..ME };
    let elsewhere = Owner {
        pid: 3,
        pidns: 1234,
        ..ME
    };
    let mut filters = vec![TraceFilter::zeroed(); TRACE_SLOTS as usize];
    filters[0] = owned(live);
    filters[1] = owned(dead);
    filters[2] = owned(elsewhere);
    let alive = |o: Owner| o.pid != 2 && o.pid != 3;
    // Slots 0–2 in use: 1 is dead (freed, and the first free); 2's owner is in another
    // pid namespace, so it is never judged from here even though `alive` says no.
    assert_eq!(
        plan_slots(0b111, &filters, ME.pidns, alive),
        (Some(1), vec![1])
    );
    // All live: the first clear bit.
    assert_eq!(
        plan_slots(0b101, &filters, ME.pidns, |_| true),
        (Some(1), vec![])
    );
    // Every slot in use by the living: none free.
    assert_eq!(
        plan_slots(0xff, &filters, ME.pidns, |_| true),
        (None, vec![])
    );
    // A filter left behind with its bit clear is simply free (no sweep needed).
    assert_eq!(
        plan_slots(0, &filters, ME.pidns, |_| false),
        (Some(0), vec![])
    );
}

#[test]
fn start_time_is_read_after_the_command_name() {
    // Field 22 (starttime) is 123456; the comm holds ") (" and spaces.
    let stat = "4242 (a) (b c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                123456 1000 200 18446744073709551615";
    assert_eq!(start_time_of(stat), Some(123456));
    assert_eq!(start_time_of("4242 (x) S 1"), None);
}

#[test]
fn events_are_decoded_as_inspect_decodes() {
    let mut snap = MapSnapshot::default();
    snap.frontends
        .insert(fe_key([10, 96, 0, 10], 80, PROTO_TCP, SCOPE_ANY), fe(3, 0));
    snap.backends.insert(
        7,
        svc_common::Backend {
            addr: [10, 244, 2, 5],
            port: 8080,
            proto: PROTO_TCP,
            flags: 0,
        },
    );
    let e = TraceEvent {
        ts_ns: 12_345_678_901,
        hook: Hook::PodIngress as u8,
        reason: svc_common::Reason::DnatNew as u8,
        proto: PROTO_TCP,
        tcp_flags: 0x02,
        verdict: -1,
        len: 60,
        ifindex: 4,
        src_addr: [10, 244, 1, 2],
        dst_addr: [10, 96, 0, 10],
        src_port: 40000,
        dst_port: 80,
        to_src_addr: [10, 244, 1, 2],
        to_dst_addr: [10, 244, 2, 5],
        to_src_port: 40000,
        to_dst_port: 8080,
        frontend_id: 3,
        backend_id: 7,
        ct_dir: CT_DIR_FORWARD,
        ct_flags: 0,
        ct_state: svc_common::CT_STATE_SYN_SENT,
        _pad: [0; 5],
    };
    let names = Names::of(&snap);
    let v = EventView::new(&e, &names);
    assert_eq!(v.hook, "pod_ingress");
    assert_eq!(v.verdict, "next");
    assert_eq!(v.frontend.as_deref(), Some("10.96.0.10:80/TCP"));
    assert_eq!(v.backend.as_deref(), Some("10.244.2.5:8080"));
    assert_eq!(v.ct_dir.as_deref(), Some("forward"));
    assert_eq!(
        v.line(),
        "    12.345678 pod_ingress    tcp 10.244.1.2:40000 -> 10.96.0.10:80 [SYN] => \
         10.244.1.2:40000 -> 10.244.2.5:8080 dnat_new next fe=3(10.96.0.10:80/TCP) \
         be=7(10.244.2.5:8080) ct=forward/syn_sent if=4 len=60"
    );
    // XDP actions by name; no entry, no rewrite.
    let x = TraceEvent {
        hook: Hook::Xdp as u8,
        verdict: 2,
        to_src_addr: [0; 4],
        to_dst_addr: [0; 4],
        frontend_id: 0,
        backend_id: 0,
        ..e
    };
    let v = EventView::new(&x, &names);
    assert_eq!(v.verdict, "pass");
    assert_eq!((v.new_src, v.ct_dir), (None, None));
}

#[test]
fn ipv6_events_are_told_by_their_length_and_shown_bracketed() {
    let mut snap = MapSnapshot::default();
    snap.frontends6.insert(
        fe_key(v6("fd00:10:96::10"), 80, PROTO_TCP, SCOPE_ANY),
        fe(3, 0),
    );
    snap.backends6.insert(
        7,
        Backend6 {
            addr: v6("fd00:10:244:2::5"),
            port: 8080,
            proto: PROTO_TCP,
            flags: 0,
        },
    );
    let e = TraceEvent6 {
        ts_ns: 1_000_000_000,
        hook: Hook::PodIngress6 as u8,
        reason: svc_common::Reason::DnatNew as u8,
        proto: PROTO_TCP,
        tcp_flags: 0x02,
        verdict: -1,
        len: 80,
        ifindex: 4,
        src_addr: v6("fd00:10:244:1::2"),
        dst_addr: v6("fd00:10:96::10"),
        src_port: 40000,
        dst_port: 80,
        to_src_addr: v6("fd00:10:244:1::2"),
        to_dst_addr: v6("fd00:10:244:2::5"),
        to_src_port: 40000,
        to_dst_port: 8080,
        frontend_id: 3,
        backend_id: 7,
        ct_dir: CT_DIR_FORWARD,
        ct_flags: 0,
        ct_state: svc_common::CT_STATE_SYN_SENT,
        _pad: [0; 5],
    };
    let any = AnyTraceEvent::decode(bytemuck::bytes_of(&e)).unwrap();
    assert_eq!(any, AnyTraceEvent::V6(e));
    let v = EventView::of(&any, &Names::of(&snap));
    assert_eq!(
        v.line(),
        "     1.000000 pod_ingress6   tcp [fd00:10:244:1::2]:40000 -> [fd00:10:96::10]:80 [SYN] \
         => [fd00:10:244:1::2]:40000 -> [fd00:10:244:2::5]:8080 dnat_new next \
         fe=3([fd00:10:96::10]:80/TCP) be=7([fd00:10:244:2::5]:8080) ct=forward/syn_sent \
         if=4 len=80"
    );
    // An IPv4 record is an IPv4 event; another length is nobody's.
    let e4 = TraceEvent::zeroed();
    assert_eq!(
        AnyTraceEvent::decode(bytemuck::bytes_of(&e4)),
        Some(AnyTraceEvent::V4(e4))
    );
    assert_eq!(AnyTraceEvent::decode(&[0u8; 80]), None);
}

#[test]
fn both_xdp_hooks_name_xdp_actions_and_the_tc_hooks_tc_verdicts() {
    for hook in [Hook::Xdp, Hook::Xdp6] {
        assert_eq!(verdict_name(Some(hook), 3), "tx", "{hook:?}");
        assert_eq!(verdict_name(Some(hook), 2), "pass", "{hook:?}");
    }
    assert_eq!(verdict_name(Some(Hook::UplinkIngress6), 2), "drop");
    assert_eq!(verdict_name(Some(Hook::UplinkIngress6), 3), "3");
}
