//! Layouts, name tables and the conntrack state machine, table-tested.
use super::*;

#[test]
fn reasons_are_indexed_in_order() {
    for (i, (reason, _)) in ALL_REASONS.iter().enumerate() {
        assert_eq!(*reason as usize, i);
    }
    for (i, hook) in ALL_HOOKS.iter().enumerate() {
        assert_eq!(*hook as usize, i);
    }
    assert_eq!(stat_index(Hook::PodEgress, Reason::NotIpv4), REASON_COUNT);
}

#[test]
fn no_implicit_padding() {
    use core::mem::{offset_of, size_of};
    assert_eq!(offset_of!(FrontendKey, scope) + 1, size_of::<FrontendKey>());
    assert_eq!(offset_of!(Backend, flags) + 1, size_of::<Backend>());
    assert_eq!(offset_of!(CtKey, _pad) + 3, size_of::<CtKey>());
    assert_eq!(offset_of!(CtEntry, backend_id), 16);
    assert_eq!(offset_of!(Config, netns_cookie), 8);
    assert_eq!(offset_of!(SockKey, _pad) + 1, size_of::<SockKey>());
    assert_eq!(offset_of!(CtEntry, bytes) + 8, size_of::<CtEntry>());
    assert_eq!(offset_of!(FragKey, _pad) + 1, size_of::<FragKey>());
    assert_eq!(offset_of!(FragPorts, created_ns), 8);
    // IPv6: the same fields after wider addresses.
    assert_eq!(
        offset_of!(FrontendKey6, scope) + 1,
        size_of::<FrontendKey6>()
    );
    assert_eq!(offset_of!(Backend6, flags) + 1, size_of::<Backend6>());
    assert_eq!(offset_of!(CtKey6, _pad) + 3, size_of::<CtKey6>());
    assert_eq!(offset_of!(CtEntry6, backend_id), 40);
    assert_eq!(offset_of!(CtEntry6, bytes) + 8, size_of::<CtEntry6>());
    assert_eq!(offset_of!(Config, node_addr6), 16);
    assert_eq!(offset_of!(SockKey6, _pad) + 5, size_of::<SockKey6>());
    assert_eq!(offset_of!(Affinity6, last_used_ns), 24);
    assert_eq!(offset_of!(FragKey6, _pad) + 3, size_of::<FragKey6>());
    assert_eq!(
        offset_of!(SockRevNat6, backend_id) + 4,
        size_of::<SockRevNat6>()
    );
}

#[test]
fn ipv6_keys_are_built_in_field_order() {
    let src = Addr6 {
        octets: core::array::from_fn(|i| i as u8),
    };
    let dst = Addr6 {
        octets: core::array::from_fn(|i| 0x80 | i as u8),
    };
    let key = CtKey6::new(src, dst, 40_000, 443, PROTO_TCP);
    assert_eq!(
        key,
        CtKeyOf {
            src_addr: src,
            dst_addr: dst,
            src_port: 40_000,
            dst_port: 443,
            proto: PROTO_TCP,
            _pad: [0; 3],
        }
    );
    assert_eq!(
        <Addr6 as Addr>::ct_key(src, dst, 40_000, 443, PROTO_TCP),
        key
    );
    let a = Affinity6::new(7, dst, 8080, 99);
    assert_eq!(
        (a.backend_id, a.backend_addr, a.backend_port, a.last_used_ns),
        (7, dst, 8080, 99)
    );
}

#[test]
fn peer_key_of_an_ipv6_entry_reverses_its_tuple() {
    let a = |b: u8| Addr6 { octets: [b; 16] };
    let (c, f, b) = (a(0xfd), a(0x20), a(0x30));
    let key = CtKey6::new(c, f, 5000, 80, PROTO_UDP);
    let e = CtEntry6 {
        src_addr: c,
        dst_addr: b,
        src_port: 5000,
        dst_port: 8080,
        dir: CT_DIR_FORWARD,
        flags: 0,
        tcp_flags: 0,
        state: CT_STATE_UDP_UNREPLIED,
        backend_id: 1,
        frontend_id: 1,
        created_ns: 0,
        last_seen_ns: 0,
        packets: 0,
        bytes: 0,
    };
    assert_eq!(
        ct_peer_key(&key, &e),
        CtKey6::new(b, c, 8080, 5000, PROTO_UDP)
    );
}

fn entry(state: u8, created_ns: u64, last_seen_ns: u64) -> CtEntry {
    CtEntry {
        src_addr: [10, 244, 1, 2],
        dst_addr: [10, 244, 2, 2],
        src_port: 40_000,
        dst_port: 8080,
        dir: CT_DIR_FORWARD,
        flags: 0,
        tcp_flags: 0,
        state,
        backend_id: 1,
        frontend_id: 1,
        created_ns,
        last_seen_ns,
        packets: 1,
        bytes: 60,
    }
}

const S: u64 = 1_000_000_000;

#[test]
fn tcp_timeouts_follow_the_state() {
    let t = CtTimeouts::DEFAULT;
    for (state, secs) in [
        (CT_STATE_SYN_SENT, 120),
        (CT_STATE_ESTABLISHED, 86_400),
        (CT_STATE_NONE, 86_400),
        (CT_STATE_CLOSE_WAIT, 3_600),
        (CT_STATE_TIME_WAIT, 10),
        (CT_STATE_CLOSED, 10),
    ] {
        let e = entry(state, 0, 5 * S);
        assert!(!t.expired(PROTO_TCP, &e, 5 * S + secs * S), "state {state}");
        assert!(
            t.expired(PROTO_TCP, &e, 5 * S + secs * S + 1),
            "state {state}"
        );
    }
}

#[test]
fn udp_becomes_a_stream_only_when_answered_and_active_past_two_seconds() {
    let t = CtTimeouts::DEFAULT;
    // A DNS query and its answer within a millisecond: 30 s, as netfilter.
    let short = entry(CT_STATE_UDP_REPLIED, 0, S / 1000);
    assert_eq!(t.for_entry(PROTO_UDP, &short), 30 * S);
    // Answered and still sending 3 s later: a stream.
    let stream = entry(CT_STATE_UDP_REPLIED, 0, 3 * S);
    assert_eq!(t.for_entry(PROTO_UDP, &stream), 120 * S);
    // Never answered, however long it sends.
    let oneway = entry(CT_STATE_UDP_UNREPLIED, 0, 300 * S);
    assert_eq!(t.for_entry(PROTO_UDP, &oneway), 30 * S);
}

#[test]
fn a_last_seen_ahead_of_now_is_fresh() {
    let e = entry(CT_STATE_CLOSED, 0, 100 * S);
    assert!(!CtTimeouts::DEFAULT.expired(PROTO_TCP, &e, 99 * S));
}

#[test]
fn tcp_state_transitions() {
    use CT_DIR_FORWARD as F;
    use CT_DIR_REPLY as R;
    let syn = CT_TCP_SYN;
    let synack = CT_TCP_SYN | CT_TCP_ACK;
    let ack = CT_TCP_ACK;
    let fin = CT_TCP_FIN | CT_TCP_ACK;
    let rst = CT_TCP_RST;
    for (state, dir, flags, peer_fin, want) in [
        (CT_STATE_SYN_SENT, F, syn, false, CT_STATE_SYN_SENT),
        (CT_STATE_SYN_SENT, R, synack, false, CT_STATE_ESTABLISHED),
        (CT_STATE_SYN_SENT, F, ack, false, CT_STATE_SYN_SENT),
        (CT_STATE_ESTABLISHED, F, ack, false, CT_STATE_ESTABLISHED),
        (CT_STATE_ESTABLISHED, F, fin, false, CT_STATE_CLOSE_WAIT),
        (CT_STATE_ESTABLISHED, R, fin, false, CT_STATE_CLOSE_WAIT),
        (CT_STATE_CLOSE_WAIT, R, ack, false, CT_STATE_CLOSE_WAIT),
        (CT_STATE_CLOSE_WAIT, R, fin, true, CT_STATE_TIME_WAIT),
        (CT_STATE_TIME_WAIT, F, ack, true, CT_STATE_TIME_WAIT),
        (CT_STATE_TIME_WAIT, F, fin, false, CT_STATE_TIME_WAIT),
        (CT_STATE_ESTABLISHED, R, rst, false, CT_STATE_CLOSED),
        (CT_STATE_SYN_SENT, R, rst | ack, false, CT_STATE_CLOSED),
        (CT_STATE_CLOSED, F, ack, false, CT_STATE_CLOSED),
        (CT_STATE_CLOSED, R, synack, false, CT_STATE_CLOSED),
    ] {
        assert_eq!(
            ct_next_state(PROTO_TCP, state, dir, flags, peer_fin),
            want,
            "state {state} dir {dir} flags {flags:#x} peer_fin {peer_fin}"
        );
    }
}

#[test]
fn udp_state_transitions() {
    assert_eq!(
        ct_next_state(PROTO_UDP, CT_STATE_UDP_UNREPLIED, CT_DIR_FORWARD, 0, false),
        CT_STATE_UDP_UNREPLIED
    );
    assert_eq!(
        ct_next_state(PROTO_UDP, CT_STATE_UDP_UNREPLIED, CT_DIR_REPLY, 0, false),
        CT_STATE_UDP_REPLIED
    );
    assert_eq!(
        ct_next_state(PROTO_UDP, CT_STATE_UDP_REPLIED, CT_DIR_FORWARD, 0, false),
        CT_STATE_UDP_REPLIED
    );
}

#[test]
fn word_built_keys_equal_field_built_ones() {
    let k = CtKey::new([10, 0, 0, 1], [10, 96, 0, 10], 40000, 80, PROTO_TCP);
    assert_eq!(
        k,
        CtKey {
            src_addr: [10, 0, 0, 1],
            dst_addr: [10, 96, 0, 10],
            src_port: 40000,
            dst_port: 80,
            proto: PROTO_TCP,
            _pad: [0; 3],
        }
    );
    let a = Affinity::new(0x0102_0304, [10, 244, 1, 2], 8080, u64::MAX - 1);
    assert_eq!(
        a,
        Affinity {
            backend_id: 0x0102_0304,
            backend_addr: [10, 244, 1, 2],
            backend_port: 8080,
            _pad: [0; 6],
            last_used_ns: u64::MAX - 1,
        }
    );
}

#[test]
fn peer_keys_pair_up_for_dnat_snat_and_remapped_flows() {
    // Client 10.244.1.2:40000 → frontend 10.96.0.10:80, backend 10.244.2.2:8080, SNAT to
    // 172.18.0.2:61234.
    let fwd_key = CtKey {
        src_addr: [10, 244, 1, 2],
        dst_addr: [10, 96, 0, 10],
        src_port: 40_000,
        dst_port: 80,
        proto: PROTO_TCP,
        _pad: [0; 3],
    };
    let mut fwd = entry(CT_STATE_SYN_SENT, 0, 0);
    fwd.src_addr = [172, 18, 0, 2];
    fwd.src_port = 61_234;
    let rep_key = ct_peer_key(&fwd_key, &fwd);
    assert_eq!(rep_key.src_addr, [10, 244, 2, 2]);
    assert_eq!(rep_key.dst_addr, [172, 18, 0, 2]);
    assert_eq!((rep_key.src_port, rep_key.dst_port), (8080, 61_234));
    let mut rep = fwd;
    rep.dir = CT_DIR_REPLY;
    rep.src_addr = fwd_key.dst_addr;
    rep.src_port = fwd_key.dst_port;
    rep.dst_addr = fwd_key.src_addr;
    rep.dst_port = fwd_key.src_port;
    assert_eq!(ct_peer_key(&rep_key, &rep), fwd_key);
}

#[test]
fn snat_ports_map_every_index_once() {
    // The built-in default: one range, 61000–65535.
    let d = SnatPorts::DEFAULT;
    assert_eq!(d.total(), 4536);
    assert_eq!(d.port(0), SNAT_PORT_MIN);
    assert_eq!(d.port(d.total() - 1), SNAT_PORT_MAX);
    assert_eq!(d.range(0), Some(SNAT_PORT_MIN..=SNAT_PORT_MAX));
    assert_eq!(d.range(1), None);
    // Two ranges (the agent's default on a Linux node with default sysctls), a one-port
    // second range, a second range alone, and the largest range a u16 count holds.
    for ports in [
        SnatPorts {
            first: [1024, 61_000],
            count: [28_976, 4536],
        },
        SnatPorts {
            first: [1024, 65_535],
            count: [100, 1],
        },
        SnatPorts {
            first: [0, 40_000],
            count: [0, 10],
        },
        SnatPorts {
            first: [1, 0],
            count: [65_535, 0],
        },
    ] {
        let expected = (0..2).filter_map(|k| ports.range(k)).flatten();
        let got = (0..ports.total()).map(|i| ports.port(i));
        assert!(got.clone().eq(expected), "{ports:?}");
        assert!(got.into_iter().all(|p| ports.contains(p)));
    }
    assert!(!SnatPorts {
        first: [1024, 61_000],
        count: [28_976, 4536]
    }
    .contains(30_000));
}
