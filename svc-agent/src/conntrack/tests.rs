//! The collector's decisions (which entries a pass or a flush deletes), table-tested, and its passes and flushes on the fake.
use std::collections::BTreeMap;

use svc_common::{
    Affinity, Affinity6, CtEntry6, CtKey6, CT_DIR_FORWARD, CT_DIR_REPLY, CT_STATE_CLOSED,
    CT_STATE_CLOSE_WAIT, CT_STATE_ESTABLISHED, CT_STATE_SYN_SENT, CT_STATE_TIME_WAIT,
    CT_STATE_UDP_REPLIED, CT_STATE_UDP_UNREPLIED, PROTO_TCP,
};

use super::*;
use crate::{dataplane::fake::FakeDataplane, reconcile::RemovedBackend};

const S: u64 = 1_000_000_000;
const T: CtTimeouts = CtTimeouts::DEFAULT;

/// Both entries of a flow from client 10.244.1.2:`port` to frontend 10.96.0.10:80 on
/// backend 10.244.2.2:8080 (frontend id 1, backend id `backend`), created at 0, last seen
/// at `fwd_seen` (client's direction) and `rep_seen` (backend's).
fn flow(
    proto: u8,
    port: u16,
    state: u8,
    backend: u32,
    fwd_seen: u64,
    rep_seen: u64,
) -> [(CtKey, CtEntry); 2] {
    let fwd_key = CtKey {
        src_addr: [10, 244, 1, 2],
        dst_addr: [10, 96, 0, 10],
        src_port: port,
        dst_port: 80,
        proto,
        _pad: [0; 3],
    };
    let fwd = CtEntry {
        src_addr: [10, 244, 1, 2],
        dst_addr: [10, 244, 2, 2],
        src_port: port,
        dst_port: 8080,
        dir: CT_DIR_FORWARD,
        flags: 0,
        tcp_flags: 0,
        state,
        backend_id: backend,
        frontend_id: 1,
        created_ns: 0,
        last_seen_ns: fwd_seen,
        packets: 1,
        bytes: 60,
    };
    let rep_key = ct_peer_key(&fwd_key, &fwd);
    let rep = CtEntry {
        src_addr: [10, 96, 0, 10],
        dst_addr: [10, 244, 1, 2],
        src_port: 80,
        dst_port: port,
        dir: CT_DIR_REPLY,
        last_seen_ns: rep_seen,
        ..fwd
    };
    assert_eq!(
        ct_peer_key(&rep_key, &rep),
        fwd_key,
        "the test flow pairs up"
    );
    [(fwd_key, fwd), (rep_key, rep)]
}

fn table(flows: &[[(CtKey, CtEntry); 2]]) -> BTreeMap<CtKey, CtEntry> {
    flows.iter().flatten().copied().collect()
}

fn planned(table: &BTreeMap<CtKey, CtEntry>, now: u64) -> Vec<CtKey> {
    let mut keys = gc_plan(table, now, &T, usize::MAX);
    keys.sort();
    keys
}

fn keys_of(flows: &[[(CtKey, CtEntry); 2]]) -> Vec<CtKey> {
    let mut keys: Vec<CtKey> = flows.iter().flatten().map(|(k, _)| *k).collect();
    keys.sort();
    keys
}

#[test]
fn an_expired_pair_is_removed_whole() {
    let dead = flow(PROTO_TCP, 40_000, CT_STATE_ESTABLISHED, 1, 5 * S, 5 * S);
    let live = flow(
        PROTO_TCP,
        40_001,
        CT_STATE_ESTABLISHED,
        1,
        5 * S,
        86_000 * S,
    );
    let t = table(&[dead, live]);
    assert_eq!(planned(&t, (86_400 + 6) * S), keys_of(&[dead]));
    assert_eq!(
        planned(&t, (86_400 + 5) * S),
        vec![],
        "not yet: exactly the timeout"
    );
}

#[test]
fn one_fresh_side_keeps_both() {
    // A download: the client's direction went quiet 200 s ago, the backend still sends.
    let f = flow(PROTO_UDP, 40_000, CT_STATE_UDP_REPLIED, 1, 0, 250 * S);
    let t = table(&[f]);
    assert!(
        T.expired(PROTO_UDP, &f[0].1, 251 * S),
        "the forward side alone is expired"
    );
    assert_eq!(planned(&t, 251 * S), vec![]);
    let [(fk, fe), (rk, re)] = f;
    assert_eq!(verdict(&fk, &fe, Some(&re), 251 * S, &T), Verdict::Keep);
    assert_eq!(verdict(&rk, &re, Some(&fe), 251 * S, &T), Verdict::Keep);
}

#[test]
fn an_orphan_goes_when_expired_and_stays_while_fresh() {
    let [(fk, fe), _] = flow(PROTO_TCP, 40_000, CT_STATE_SYN_SENT, 1, 0, 0);
    let t: BTreeMap<CtKey, CtEntry> = [(fk, fe)].into();
    assert_eq!(planned(&t, 121 * S), vec![fk]);
    assert_eq!(planned(&t, 119 * S), vec![]);
    assert_eq!(
        verdict(&fk, &fe, None, 121 * S, &T),
        Verdict::Delete { with_peer: false }
    );
}

#[test]
fn closed_flows_last_ten_seconds_and_live_ones_their_state_timeout() {
    for (state, lifetime_s) in [
        (CT_STATE_TIME_WAIT, 10),
        (CT_STATE_CLOSED, 10),
        (CT_STATE_SYN_SENT, 120),
        (CT_STATE_CLOSE_WAIT, 3_600),
        (CT_STATE_ESTABLISHED, 86_400),
    ] {
        let f = flow(PROTO_TCP, 40_000, state, 1, 7 * S, 7 * S);
        let t = table(&[f]);
        assert_eq!(
            planned(&t, (7 + lifetime_s) * S),
            vec![],
            "state {state} at its timeout"
        );
        assert_eq!(
            planned(&t, (7 + lifetime_s) * S + 1),
            keys_of(&[f]),
            "state {state} past its timeout"
        );
    }
}

#[test]
fn udp_gets_the_stream_timeout_only_when_answered_and_lasting() {
    // Answered, still active 3 s after it started: a stream, 120 s.
    let stream = flow(PROTO_UDP, 40_000, CT_STATE_UDP_REPLIED, 1, 3 * S, 3 * S);
    // A query and its answer within 1 ms: 30 s.
    let dns = flow(
        PROTO_UDP,
        40_001,
        CT_STATE_UDP_REPLIED,
        1,
        S / 1000,
        S / 1000,
    );
    // Never answered, however long it sent: 30 s.
    let oneway = flow(PROTO_UDP, 40_002, CT_STATE_UDP_UNREPLIED, 1, 10 * S, 0);
    let t = table(&[stream, dns, oneway]);
    assert_eq!(planned(&t, 35 * S), keys_of(&[dns]));
    assert_eq!(planned(&t, 41 * S), keys_of(&[dns, oneway]));
    assert_eq!(planned(&t, 124 * S), keys_of(&[dns, oneway, stream]));
    assert_eq!(planned(&t, 123 * S), keys_of(&[dns, oneway]));
}

#[test]
fn a_tuple_taken_over_by_another_flow_neither_protects_nor_goes() {
    // An old closed flow whose reply tuple a new flow (same backend tuple, other client
    // port before SNAT remapping) now holds: the peer key of the old forward entry is the
    // new flow's reply entry, which pairs back to the new forward entry, not the old one.
    let [(old_k, old_e), _] = flow(PROTO_TCP, 40_000, CT_STATE_CLOSED, 1, 0, 0);
    let [(new_fk, mut new_fe), (_, mut new_re)] =
        flow(PROTO_TCP, 40_001, CT_STATE_ESTABLISHED, 1, 30 * S, 30 * S);
    // The new flow's reply tuple equals the old flow's: backend → 10.244.1.2:40000.
    new_fe.src_port = 40_000;
    new_re.dst_port = 40_001;
    let new_rk = ct_peer_key(&new_fk, &new_fe);
    assert_eq!(new_rk, ct_peer_key(&old_k, &old_e), "the same tuple");
    assert_eq!(ct_peer_key(&new_rk, &new_re), new_fk);
    let t: BTreeMap<CtKey, CtEntry> = [(old_k, old_e), (new_fk, new_fe), (new_rk, new_re)].into();
    assert_eq!(planned(&t, 31 * S), vec![old_k]);
    assert_eq!(
        verdict(&old_k, &old_e, Some(&new_re), 31 * S, &T),
        Verdict::Delete { with_peer: false }
    );
}

#[test]
fn a_pass_deletes_at_most_its_limit_and_never_splits_a_pair() {
    let flows: Vec<_> = (0..5)
        .map(|i| flow(PROTO_TCP, 40_000 + i, CT_STATE_CLOSED, 1, 0, 0))
        .collect();
    let t = table(&flows);
    let mut scan = GcScan::new(11 * S, T);
    for (k, e) in &t {
        scan.add(k, e);
    }
    let (groups, capped) = scan.plan(5);
    assert!(capped);
    assert_eq!(groups.len(), 2);
    assert!(groups.iter().all(|g| g.len() == 2));
    let (groups, capped) = scan.plan(10);
    assert!(!capped);
    assert_eq!(groups.len(), 5);
}

#[test]
fn gc_pass_on_the_fake_removes_what_the_plan_says_and_catches_up() {
    let dead: Vec<_> = (0..4)
        .map(|i| flow(PROTO_UDP, 40_000 + i, CT_STATE_UDP_UNREPLIED, 1, 0, 0))
        .collect();
    let live = flow(PROTO_UDP, 41_000, CT_STATE_UDP_REPLIED, 1, 40 * S, 40 * S);
    let mut fake = FakeDataplane::new();
    fake.ct = table(&dead);
    fake.ct.extend(live);
    let stats = gc_pass(&mut fake, 45 * S, &T, 4).expect("pass");
    assert_eq!((stats.scanned, stats.expired, stats.removed), (10, 8, 4));
    assert!(stats.capped);
    let stats = gc_pass(&mut fake, 45 * S, &T, 4).expect("second pass");
    assert_eq!((stats.scanned, stats.removed, stats.capped), (6, 4, false));
    assert_eq!(fake.ct, table(&[live]));
}

#[test]
fn the_collector_counts_its_work_in_the_metrics() {
    let now = monotonic_now_ns().expect("clock");
    let dead = flow(
        PROTO_UDP,
        40_000,
        CT_STATE_UDP_UNREPLIED,
        1,
        now - 31 * S,
        now - 31 * S,
    );
    let live = flow(PROTO_UDP, 40_001, CT_STATE_UDP_REPLIED, 7, now, now);
    let mut fake = FakeDataplane::new();
    fake.ct = table(&[dead, live]);
    let metrics = Metrics::new(std::path::PathBuf::from("/nonexistent"));
    let mut gc = Collector::new(fake, T, Duration::from_secs(10), metrics.clone());
    assert!(!gc.pass(), "nothing left for a catch-up pass");
    assert_eq!(gc.dp.ct, table(&[live]));
    gc.flush(&[(1, 7)].into());
    assert!(gc.dp.ct.is_empty());
    let text = metrics.render_for_tests();
    for line in [
        "svc_conntrack_gc_passes_total 1",
        "svc_conntrack_gc_scanned_entries_total 4",
        "svc_conntrack_gc_removed_entries_total 2",
        "svc_conntrack_flushed_entries_total 2",
        "svc_map_entries{map=\"SVC_CT\"} 2",
        "svc_map_capacity{map=\"SVC_CT\"} 262144",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

#[test]
fn udp_flush_takes_both_entries_of_the_removed_pairs_only() {
    let gone = flow(PROTO_UDP, 40_000, CT_STATE_UDP_REPLIED, 7, S, S);
    let stays_other_backend = flow(PROTO_UDP, 40_001, CT_STATE_UDP_REPLIED, 8, S, S);
    let stays_tcp = flow(PROTO_TCP, 40_002, CT_STATE_ESTABLISHED, 7, S, S);
    let mut other_frontend = flow(PROTO_UDP, 40_003, CT_STATE_UDP_REPLIED, 7, S, S);
    for (_, e) in &mut other_frontend {
        e.frontend_id = 2;
    }
    let mut fake = FakeDataplane::new();
    fake.ct = table(&[gone, stays_other_backend, stays_tcp, other_frontend]);
    let removed: HashSet<(u32, u32)> = [(1, 7)].into();
    assert_eq!(flush_udp(&mut fake, &removed).expect("flush"), 2);
    assert_eq!(
        fake.ct,
        table(&[stays_other_backend, stays_tcp, other_frontend])
    );
    assert_eq!(flush_udp(&mut fake, &HashSet::new()).expect("no-op"), 0);
}

#[test]
fn affinity_flush_takes_removed_pairs_and_deleted_frontends() {
    let entry = |frontend_id: u32, client: u8, backend_id: u32| {
        (
            AffinityKey {
                frontend_id,
                client_addr: [10, 244, 1, client],
            },
            Affinity {
                backend_id,
                backend_addr: [10, 244, 2, backend_id as u8],
                backend_port: 8080,
                _pad: [0; 6],
                last_used_ns: S,
            },
        )
    };
    let mut fake = FakeDataplane::new();
    fake.affinity = [
        entry(1, 1, 7), // removed pair (1, 7)
        entry(1, 2, 8), // same frontend, another backend: stays
        entry(2, 1, 7), // another frontend with the same backend: stays
        entry(3, 1, 9), // deleted frontend 3
        entry(3, 2, 4), // deleted frontend 3
    ]
    .into();
    let removals = Removals {
        backends: vec![RemovedBackend {
            frontend_id: 1,
            proto: PROTO_TCP,
            backend_id: 7,
        }],
        frontend_ids: vec![3],
    };
    assert_eq!(flush_affinity(&mut fake, &removals).expect("flush"), 3);
    let left: Vec<_> = fake
        .affinity
        .keys()
        .map(|k| (k.frontend_id, k.client_addr[3]))
        .collect();
    assert_eq!(left, vec![(1, 2), (2, 1)]);
}

/// `fd00::a.b.c.d`: the IPv6 twin of an IPv4 address in these tests.
fn six(a: [u8; 4]) -> svc_common::Addr6 {
    let mut out = [0; 16];
    out[0] = 0xfd;
    out[12..].copy_from_slice(&a);
    out.into()
}

/// [`flow`] as an IPv6 flow (every address through [`six`]).
fn flow6(
    proto: u8,
    port: u16,
    state: u8,
    backend: u32,
    fwd_seen: u64,
    rep_seen: u64,
) -> [(CtKey6, CtEntry6); 2] {
    flow(proto, port, state, backend, fwd_seen, rep_seen).map(|(k, e)| {
        let key = CtKey6::new(
            six(k.src_addr),
            six(k.dst_addr),
            k.src_port,
            k.dst_port,
            k.proto,
        );
        let entry = CtEntry6 {
            src_addr: six(e.src_addr),
            dst_addr: six(e.dst_addr),
            src_port: e.src_port,
            dst_port: e.dst_port,
            dir: e.dir,
            flags: e.flags,
            tcp_flags: e.tcp_flags,
            state: e.state,
            backend_id: e.backend_id,
            frontend_id: e.frontend_id,
            created_ns: e.created_ns,
            last_seen_ns: e.last_seen_ns,
            packets: e.packets,
            bytes: e.bytes,
        };
        (key, entry)
    })
}

fn table6(flows: &[[(CtKey6, CtEntry6); 2]]) -> BTreeMap<CtKey6, CtEntry6> {
    flows.iter().flatten().copied().collect()
}

#[test]
fn ipv6_flows_expire_pair_up_and_are_pruned_like_ipv4_ones() {
    let [(fk, fe), (rk, re)] = flow6(PROTO_TCP, 40_000, CT_STATE_ESTABLISHED, 7, 0, 0);
    assert_eq!(ct_peer_key(&fk, &fe), rk, "the IPv6 test flow pairs up");
    assert_eq!(ct_peer_key(&rk, &re), fk);
    // The same table of cases as IPv4: a dead pair goes whole, one fresh side keeps both.
    let dead: Vec<_> = (0..4)
        .map(|i| flow6(PROTO_UDP, 40_000 + i, CT_STATE_UDP_UNREPLIED, 1, 0, 0))
        .collect();
    let live = flow6(PROTO_UDP, 41_000, CT_STATE_UDP_REPLIED, 1, 40 * S, 40 * S);
    let half = flow6(PROTO_UDP, 42_000, CT_STATE_UDP_REPLIED, 1, 0, 40 * S);
    let mut fake = FakeDataplane::new();
    fake.ct6 = table6(&dead);
    fake.ct6.extend(live);
    fake.ct6.extend(half);
    let stats = gc_pass6(&mut fake, 45 * S, &T, 4).expect("pass");
    assert_eq!((stats.scanned, stats.expired, stats.removed), (12, 9, 4));
    assert!(stats.capped);
    let stats = gc_pass6(&mut fake, 45 * S, &T, 4).expect("second pass");
    assert_eq!((stats.scanned, stats.removed, stats.capped), (8, 4, false));
    assert_eq!(fake.ct6, table6(&[live, half]));
    // The IPv4 map is another map: untouched by the IPv6 pass.
    assert!(fake.ct.is_empty());
}

#[test]
fn the_collector_prunes_both_families_and_flushes_removed_ipv6_backends() {
    let now = monotonic_now_ns().expect("clock");
    let old = now - 31 * S;
    let dead4 = flow(PROTO_UDP, 40_000, CT_STATE_UDP_UNREPLIED, 1, old, old);
    let dead6 = flow6(PROTO_UDP, 40_000, CT_STATE_UDP_UNREPLIED, 1, old, old);
    let live6 = flow6(PROTO_UDP, 40_001, CT_STATE_UDP_REPLIED, 7, now, now);
    let tcp6 = flow6(PROTO_TCP, 40_002, CT_STATE_ESTABLISHED, 7, now, now);
    let mut fake = FakeDataplane::new();
    fake.ct = table(&[dead4]);
    fake.ct6 = table6(&[dead6, live6, tcp6]);
    let metrics = Metrics::new(std::path::PathBuf::from("/nonexistent"));
    let mut gc = Collector::new(fake, T, Duration::from_secs(10), metrics.clone());
    assert!(!gc.pass());
    assert!(gc.dp.ct.is_empty());
    assert_eq!(gc.dp.ct6, table6(&[live6, tcp6]));
    // Backend 7 leaves frontend 1: its UDP flow goes, its TCP connection stays (as IPv4).
    gc.flush(&[(1, 7)].into());
    assert_eq!(gc.dp.ct6, table6(&[tcp6]));
    let text = metrics.render_for_tests();
    for line in [
        "svc_conntrack_gc_scanned_entries_total 8",
        "svc_conntrack_gc_removed_entries_total 4",
        "svc_conntrack_flushed_entries_total 2",
        "svc_map_entries{map=\"SVC_CT6\"} 4",
        "svc_map_capacity{map=\"SVC_CT6\"} 262144",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

#[test]
fn ipv6_affinity_of_removed_pairs_and_deleted_frontends_is_flushed() {
    let entry = |frontend_id: u32, client: u8, backend_id: u32| {
        (
            svc_common::AffinityKey6 {
                frontend_id,
                client_addr: six([10, 244, 1, client]),
            },
            Affinity6 {
                backend_id,
                backend_addr: six([10, 244, 2, backend_id as u8]),
                backend_port: 8080,
                _pad: [0; 2],
                last_used_ns: S,
            },
        )
    };
    let mut fake = FakeDataplane::new();
    fake.affinity6 = [entry(1, 1, 7), entry(1, 2, 8), entry(3, 1, 9)].into();
    let removals = Removals {
        backends: vec![RemovedBackend {
            frontend_id: 1,
            proto: PROTO_TCP,
            backend_id: 7,
        }],
        frontend_ids: vec![3],
    };
    assert_eq!(flush_affinity(&mut fake, &removals).expect("flush"), 2);
    let left: Vec<_> = fake
        .affinity6
        .keys()
        .map(|k| (k.frontend_id, k.client_addr.octets[15]))
        .collect();
    assert_eq!(left, vec![(1, 2)]);
}
