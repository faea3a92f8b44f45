//! The conntrack collector and flushes against real (unpinned) kernel maps of the datapath's
//! layouts. They create BPF maps, so they need root (or CAP_BPF) and are `#[ignore]`d:
//!
//! ```text
//! cargo test -p svc-agent --test conntrack_maps -- --ignored --nocapture
//! ```
//!
//! `gc_pass_over_a_million_entries` is the benchmark quoted in docs/BENCHMARKS.md; build it
//! optimised for figures worth quoting (see there for the command).
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the library.
#![allow(unused_crate_dependencies)]
use std::{
    collections::{BTreeMap, HashSet},
    time::Instant,
};

use aya::maps::IterableMap;
use svc_agent::{
    conntrack::{flush_udp, gc_pass, gc_plan, monotonic_now_ns, MAX_DELETES_PER_PASS},
    dataplane::{pinned::PinnedMaps, Dataplane},
};
use svc_common::{
    ct_peer_key, CtEntry, CtKey, CtTimeouts, CT_DIR_FORWARD, CT_DIR_REPLY, CT_STATE_CLOSED,
    CT_STATE_ESTABLISHED, CT_STATE_SYN_SENT, CT_STATE_UDP_REPLIED, CT_STATE_UDP_UNREPLIED,
    MAP_CONNTRACK, PROTO_TCP, PROTO_UDP,
};

const S: u64 = 1_000_000_000;

/// Flow `i`: client 10.(i)/16 port from i → frontend 10.96.0.10:80, backend 10.244.x.y:8080,
/// both entries. `state`, `proto` and the two last-seen times are the caller's.
fn flow(i: u32, proto: u8, state: u8, fwd_seen: u64, rep_seen: u64) -> [(CtKey, CtEntry); 2] {
    let client = [10, 1 + (i >> 24) as u8, (i >> 16) as u8, (i >> 8) as u8];
    let port = 1024 + (i & 0xff) as u16 * 200;
    let fk = CtKey {
        src_addr: client,
        dst_addr: [10, 96, 0, 10],
        src_port: port,
        dst_port: 80,
        proto,
        _pad: [0; 3],
    };
    let backend = 1 + i % 7;
    let fe = CtEntry {
        src_addr: client,
        dst_addr: [10, 244, 1, backend as u8],
        src_port: port,
        dst_port: 8080,
        dir: CT_DIR_FORWARD,
        flags: 0,
        tcp_flags: 0,
        state,
        backend_id: backend,
        frontend_id: 1 + i % 3,
        created_ns: fwd_seen.min(rep_seen),
        last_seen_ns: fwd_seen,
        packets: 1,
        bytes: 100,
    };
    let rk = ct_peer_key(&fk, &fe);
    let re = CtEntry {
        src_addr: [10, 96, 0, 10],
        dst_addr: client,
        src_port: 80,
        dst_port: port,
        dir: CT_DIR_REPLY,
        last_seen_ns: rep_seen,
        ..fe
    };
    [(fk, fe), (rk, re)]
}

/// A mix of every case, keyed distinctly: expired pairs, pairs with one fresh side, orphans
/// (only the forward entry), fresh flows. `expired_share` in 0..=100.
fn mixed(n: u32, now: u64, expired_share: u32) -> BTreeMap<CtKey, CtEntry> {
    let mut table = BTreeMap::new();
    for i in 0..n {
        let expired = i % 100 < expired_share;
        let [(fk, fe), (rk, re)] = match (expired, i % 4) {
            (true, 0) => flow(i, PROTO_TCP, CT_STATE_CLOSED, now - 11 * S, now - 11 * S),
            (true, 1) => flow(
                i,
                PROTO_UDP,
                CT_STATE_UDP_UNREPLIED,
                now - 40 * S,
                now - 40 * S,
            ),
            (true, 2) => flow(
                i,
                PROTO_TCP,
                CT_STATE_SYN_SENT,
                now - 130 * S,
                now - 130 * S,
            ),
            // Expired forward side, fresh reply side: kept.
            (true, _) => flow(i, PROTO_UDP, CT_STATE_UDP_REPLIED, now - 200 * S, now - S),
            (false, _) => flow(i, PROTO_TCP, CT_STATE_ESTABLISHED, now - S, now - S),
        };
        table.insert(fk, fe);
        // Every 10th flow is an orphan.
        if i % 10 != 9 {
            table.insert(rk, re);
        }
    }
    table
}

fn fill(maps: &mut PinnedMaps, table: &BTreeMap<CtKey, CtEntry>) {
    for (k, e) in table {
        maps.ct_insert(k, e).expect("insert into SVC_CT");
    }
}

fn read_all(maps: &PinnedMaps) -> BTreeMap<CtKey, CtEntry> {
    let mut out = BTreeMap::new();
    let n = maps
        .ct_scan(&mut |k, e| out.extend(k.iter().copied().zip(e.iter().copied())))
        .expect("scan");
    assert_eq!(n, out.len(), "no entry seen twice");
    out
}

#[test]
#[ignore = "creates BPF maps: needs root"]
fn real_map_gc_matches_the_pure_plan_and_flushes_udp() {
    let now = monotonic_now_ns().expect("clock");
    let table = mixed(20_000, now, 60);
    let mut maps = PinnedMaps::standalone(65_536).expect("create maps (root?)");
    fill(&mut maps, &table);
    assert_eq!(
        read_all(&maps),
        table,
        "the batch scan reads back what was written"
    );
    // `inspect conntrack` reads the same through a pin.
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/svc-ct-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bpffs directory");
    maps.flows
        .ct
        .map()
        .pin(dir.join(MAP_CONNTRACK))
        .expect("pin");
    let read = svc_agent::inspect::read_conntrack(&dir);
    std::fs::remove_file(dir.join(MAP_CONNTRACK)).expect("unpin");
    std::fs::remove_dir(&dir).expect("remove bpffs directory");
    assert_eq!(read.expect("inspect reads the pin"), table);

    let t = CtTimeouts::DEFAULT;
    let planned: HashSet<CtKey> = gc_plan(&table, now, &t, usize::MAX).into_iter().collect();
    assert!(!planned.is_empty() && planned.len() < table.len());
    let stats = gc_pass(&mut maps, now, &t, usize::MAX).expect("pass");
    assert_eq!(stats.removed, planned.len());
    assert_eq!((stats.revived, stats.capped), (0, false));
    let left = read_all(&maps);
    let want: BTreeMap<CtKey, CtEntry> = table
        .iter()
        .filter(|(k, _)| !planned.contains(k))
        .map(|(k, e)| (*k, *e))
        .collect();
    assert_eq!(left, want);
    // Deleting absent keys (gone meanwhile) is no error and counts nothing.
    let gone: Vec<CtKey> = planned.iter().take(10).copied().collect();
    assert_eq!(maps.ct_delete(&gone).expect("delete absent"), 0);

    // A bounded pass on a fresh copy stops at its bound and never splits a pair.
    let mut maps = PinnedMaps::standalone(65_536).expect("create maps");
    fill(&mut maps, &table);
    let stats = gc_pass(&mut maps, now, &t, 1_001).expect("bounded pass");
    assert!(stats.capped && stats.removed <= 1_001 && stats.removed >= 999);
    let left = read_all(&maps);
    for (k, e) in &left {
        let peer = ct_peer_key(k, e);
        if table.contains_key(&peer) && planned.contains(k) {
            assert!(left.contains_key(&peer), "pair split at {k:?}");
        }
    }

    // UDP flush of (frontend 1, backend 1): both entries of those UDP flows only.
    let removed: HashSet<(u32, u32)> = [(1, 1)].into();
    let before = read_all(&maps);
    let n = flush_udp(&mut maps, &removed).expect("flush");
    let after = read_all(&maps);
    assert_eq!(before.len() - after.len(), n);
    assert!(n > 0);
    assert!(after
        .iter()
        .all(|(k, e)| !(k.proto == PROTO_UDP && (e.frontend_id, e.backend_id) == (1, 1))));
    assert!(after
        .iter()
        .any(|(k, e)| k.proto == PROTO_TCP && (e.frontend_id, e.backend_id) == (1, 1)));
    let fills = maps.lru_fill().expect("fill");
    assert!(
        fills.iter().all(|f| f.entries == 0 && f.capacity > 0),
        "{fills:?}"
    );
}

/// Thread CPU time split into user and system, in ms.
fn thread_cpu_ms() -> (f64, f64) {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let ms = |tv: libc::timeval| tv.tv_sec as f64 * 1e3 + tv.tv_usec as f64 / 1e3;
    (ms(ru.ru_utime), ms(ru.ru_stime))
}

fn measure<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let (u0, s0) = thread_cpu_ms();
    let started = Instant::now();
    let out = f();
    let wall = started.elapsed().as_secs_f64() * 1e3;
    let (u1, s1) = thread_cpu_ms();
    println!(
        "{what:<58} wall {wall:>8.1} ms   cpu user {:>7.1} ms  sys {:>7.1} ms",
        u1 - u0,
        s1 - s0
    );
    out
}

#[test]
#[ignore = "creates a 1M-entry BPF map: needs root; a benchmark (docs/BENCHMARKS.md)"]
fn gc_pass_over_a_million_entries() {
    const ENTRIES: u32 = 1 << 20;
    // Headroom over the entries: an LRU map evicts before it is nominally full (per-CPU free
    // lists), and this run must not lose entries to eviction.
    const CAPACITY: u32 = ENTRIES + ENTRIES / 4;
    let now = monotonic_now_ns().expect("clock");
    let mut maps = PinnedMaps::standalone(CAPACITY).expect("create maps (root?)");
    // Half the flows expired, both entries each (closed TCP / unanswered UDP), half fresh.
    let t = CtTimeouts::DEFAULT;
    measure("fill: 1,048,576 entries (one update syscall each)", || {
        for i in 0..ENTRIES / 2 {
            let pair = if i % 2 == 0 {
                flow(i, PROTO_TCP, CT_STATE_ESTABLISHED, now - S, now - S)
            } else if i % 4 == 1 {
                flow(i, PROTO_TCP, CT_STATE_CLOSED, now - 20 * S, now - 20 * S)
            } else {
                flow(
                    i,
                    PROTO_UDP,
                    CT_STATE_UDP_UNREPLIED,
                    now - 40 * S,
                    now - 40 * S,
                )
            };
            for (k, e) in pair {
                maps.ct_insert(&k, &e).expect("insert");
            }
        }
    });
    let n = measure("scan: BPF_MAP_LOOKUP_BATCH, 8192 per call", || {
        maps.ct_scan(&mut |_, _| {}).expect("scan")
    });
    assert_eq!(n, ENTRIES as usize, "nothing evicted while filling");
    // The one walk outside the dataplane: aya's own per-entry iteration, the alternative the
    // dataplane's batch walk was chosen over, measured beside it.
    let n = measure("scan: aya HashMap::iter (get_next_key + lookup)", || {
        maps.flows.ct.iter().filter(|r| r.is_ok()).count()
    });
    assert_eq!(n, ENTRIES as usize);
    let stats = measure(
        &format!("GC pass, production bound ({MAX_DELETES_PER_PASS} deletions)"),
        || gc_pass(&mut maps, now, &t, MAX_DELETES_PER_PASS).expect("pass"),
    );
    println!("    {stats:?}");
    assert_eq!(stats.scanned, ENTRIES as usize);
    assert_eq!(stats.expired, ENTRIES as usize / 2);
    assert_eq!(stats.removed, MAX_DELETES_PER_PASS);
    assert!(stats.capped);
    let stats = measure("GC pass, unbounded (the remaining expired entries)", || {
        gc_pass(&mut maps, now, &t, usize::MAX).expect("pass")
    });
    println!("    {stats:?}");
    assert_eq!(stats.removed, ENTRIES as usize / 2 - MAX_DELETES_PER_PASS);
    let stats = measure("GC pass, nothing to delete (524,288 fresh entries)", || {
        gc_pass(&mut maps, now, &t, MAX_DELETES_PER_PASS).expect("pass")
    });
    println!("    {stats:?}");
    assert_eq!((stats.scanned, stats.removed), (ENTRIES as usize / 2, 0));
    let removed: HashSet<(u32, u32)> = [(1, 1)].into();
    measure("UDP flush scan over 524,288 entries", || {
        flush_udp(&mut maps, &removed).expect("flush")
    });
    println!(
        "    {MAP_CONNTRACK}: {} of {} entries left; kernel memory (fdinfo memlock) {} MiB",
        maps.ct_keys().expect("scan").len(),
        maps.ct_capacity(),
        memlock(&maps) >> 20
    );
}

/// `memlock` of the conntrack map's fd (`/proc/self/fdinfo`): the kernel memory it takes.
fn memlock(maps: &PinnedMaps) -> u64 {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = maps.flows.ct.map().fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).expect("fdinfo");
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("memlock in fdinfo")
}
