//! The agent's side of the conntrack lifecycle: the garbage collector that removes expired
//! flows from `SVC_CT`, and the flushes that follow endpoint removal.
//!
//! # Expiry (the rule the datapath applies too)
//! An entry is expired when [`CtTimeouts::expired`] says so for its state and idle time. A flow
//! is two entries (forward and reply, each stamped by the packets of its own direction), so an
//! expired entry is removed only when its peer — the entry keyed
//! [`ct_peer_key`]`(key, entry)`, if that one pairs back — is missing or expired as well: an
//! idle reply direction of a busy one-way stream stays. Both entries of a dead flow go in the
//! same pass.
//!
//! # Bounded passes
//! A pass reads the whole map with `BPF_MAP_LOOKUP_BATCH` (~65 ms of kernel time per 100k
//! entries, docs/BENCHMARKS.md), decides
//! with [`GcScan`] (pure), re-reads each entry it is about to delete (a packet may have revived
//! it since the scan) and deletes at most [`MAX_DELETES_PER_PASS`] entries. A pass that hit the
//! bound is followed by another one a second later instead of a full interval.
//!
//! # Endpoint removal
//! kube-proxy deletes the UDP conntrack entries of endpoints that leave a Service, so the
//! next datagram is balanced afresh instead of following a dead or departed pod for another
//! 30 s. The reconciler reports which (frontend, backend) pairs a plan removed
//! ([`crate::reconcile::Removals`]); the collector's flush thread deletes the matching UDP entries
//! (both directions) as soon as it is told ([`udp_flush_keys`]). TCP entries stay: an
//! established connection keeps its backend (graceful termination), as with netfilter. Session
//! affinity of removed pairs and of deleted frontends is cleared by the reconciling task itself,
//! synchronously ([`affinity_flush_keys`]), so a frontend id reused by a later plan never finds
//! another Service's affinity entries.
use std::{
    collections::{HashMap, HashSet},
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use foldhash::{HashMap as FastMap, HashMapExt, HashSet as FastSet, HashSetExt};
use svc_common::{
    ct_peer_key, Affinity, AffinityKey, CtEntry, CtKey, CtTimeouts, MAP_CONNTRACK, PROTO_UDP,
};
use tracing::{debug, error, info, warn};

use crate::{
    dataplane::{Dataplane, DataplaneError, MapFill},
    metrics::Metrics,
    reconcile::Removals,
};

/// Most entries one pass deletes: half the default map, about 0.5 s of kernel time (3–4 µs
/// per deleted entry for the re-read and the delete, docs/BENCHMARKS.md).
pub const MAX_DELETES_PER_PASS: usize = 131_072;
/// Delay before the next pass when one stopped at [`MAX_DELETES_PER_PASS`].
pub const CATCH_UP_DELAY: Duration = Duration::from_secs(1);
/// Fill ratio above which a map is reported (at most every [`FILL_WARN_EVERY`] per map).
pub const FILL_WARN_RATIO: f64 = 0.9;
/// See [`FILL_WARN_RATIO`].
pub const FILL_WARN_EVERY: Duration = Duration::from_secs(300);

/// `CLOCK_MONOTONIC` now, in ns: the clock of `bpf_ktime_get_ns`, which stamps conntrack.
pub fn monotonic_now_ns() -> std::io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// What the collector does with one entry, given its peer (the entry at
/// `ct_peer_key(key, entry)`, `None` if absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Fresh, or expired with a fresh peer.
    Keep,
    /// Expired; `with_peer` when its peer pairs back and is expired too (delete both).
    Delete { with_peer: bool },
}

/// The collector's rule for one entry (see the module docs).
pub fn verdict(
    key: &CtKey,
    entry: &CtEntry,
    peer: Option<&CtEntry>,
    now_ns: u64,
    t: &CtTimeouts,
) -> Verdict {
    if !t.expired(key.proto, entry, now_ns) {
        return Verdict::Keep;
    }
    let peer_key = ct_peer_key(key, entry);
    match peer {
        // Another flow's entry holds the tuple (its reply tuple was taken over after this flow
        // closed): not our peer, it neither protects nor goes with this entry.
        Some(p) if ct_peer_key(&peer_key, p) != *key => Verdict::Delete { with_peer: false },
        Some(p) if t.expired(peer_key.proto, p, now_ns) => Verdict::Delete { with_peer: true },
        Some(_) => Verdict::Keep,
        None => Verdict::Delete { with_peer: false },
    }
}

/// One pass's decision, built while the map is read (pure: no map I/O). Memory: the keys of
/// every entry (32 bytes each with its peer key), released after the pass.
pub struct GcScan {
    now_ns: u64,
    timeouts: CtTimeouts,
    /// Fresh entries: key → the key of its peer.
    fresh: FastMap<CtKey, CtKey>,
    /// Expired entries, in scan order: (key, peer key).
    expired: Vec<(CtKey, CtKey)>,
    /// Entries seen.
    pub scanned: usize,
}

impl GcScan {
    pub fn new(now_ns: u64, timeouts: CtTimeouts) -> Self {
        Self {
            now_ns,
            timeouts,
            fresh: FastMap::new(),
            expired: Vec::new(),
            scanned: 0,
        }
    }

    /// Notes one entry of the map.
    pub fn add(&mut self, key: &CtKey, entry: &CtEntry) {
        self.scanned += 1;
        let peer = ct_peer_key(key, entry);
        if self.timeouts.expired(key.proto, entry, self.now_ns) {
            self.expired.push((*key, peer));
        } else {
            self.fresh.insert(*key, peer);
        }
    }

    /// Expired entries seen (deletable or protected by a fresh peer).
    pub fn expired_count(&self) -> usize {
        self.expired.len()
    }

    /// The flows to delete, each as its one or two keys, at most `limit` keys in all (a pair
    /// is never split), and whether more were left for a later pass. Same rule as
    /// [`verdict`]; an expired peer counts as pairing back when its own peer key is this entry.
    pub fn plan(&self, limit: usize) -> (Vec<Vec<CtKey>>, bool) {
        let mut expired: FastMap<&CtKey, &CtKey> = FastMap::with_capacity(self.expired.len());
        expired.extend(self.expired.iter().map(|(k, p)| (k, p)));
        let mut taken: FastSet<CtKey> = FastSet::new();
        let mut groups = Vec::new();
        let mut keys = 0;
        for (key, peer) in &self.expired {
            if taken.contains(key) {
                continue;
            }
            let group = match (self.fresh.get(peer), expired.get(peer)) {
                // A fresh peer that pairs back keeps this entry.
                (Some(back), _) if back == key => continue,
                (_, Some(back)) if *back == key => vec![*key, *peer],
                // Absent, or another flow's entry.
                _ => vec![*key],
            };
            if keys + group.len() > limit {
                return (groups, true);
            }
            keys += group.len();
            taken.extend(group.iter().copied());
            groups.push(group);
        }
        (groups, false)
    }
}

/// [`GcScan`] over a whole table at once: the keys to delete at `now_ns`.
pub fn gc_plan<'a>(
    entries: impl IntoIterator<Item = (&'a CtKey, &'a CtEntry)>,
    now_ns: u64,
    timeouts: &CtTimeouts,
    limit: usize,
) -> Vec<CtKey> {
    let mut scan = GcScan::new(now_ns, *timeouts);
    for (k, e) in entries {
        scan.add(k, e);
    }
    scan.plan(limit).0.into_iter().flatten().collect()
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Entries read.
    pub scanned: usize,
    /// Entries expired by their own timeout (some kept by a fresh peer).
    pub expired: usize,
    /// Entries deleted.
    pub removed: usize,
    /// Entries planned for deletion but revived by a packet before it (kept).
    pub revived: usize,
    /// The pass stopped at its bound; more is left for the next one.
    pub capped: bool,
}

/// One garbage-collection pass over the conntrack map at `now_ns`, deleting at most `limit`
/// entries.
pub fn gc_pass<D: Dataplane + ?Sized>(
    dp: &mut D,
    now_ns: u64,
    timeouts: &CtTimeouts,
    limit: usize,
) -> Result<PassStats, DataplaneError> {
    let mut scan = GcScan::new(now_ns, *timeouts);
    dp.ct_scan(&mut |keys, entries| {
        for (k, e) in keys.iter().zip(entries) {
            scan.add(k, e);
        }
    })?;
    let (groups, capped) = scan.plan(limit);
    let mut stats = PassStats {
        scanned: scan.scanned,
        expired: scan.expired_count(),
        capped,
        ..PassStats::default()
    };
    drop(scan);
    // A packet since the scan may have refreshed an entry, or a SYN reopened its tuple as a new
    // flow: re-read each group just before deleting it and keep it if any entry is now fresh.
    // Each group is deleted right after its re-read: deleting all groups in one batch at the
    // end left a window of many milliseconds in which a client could reuse a port, its new
    // flow's entry landing under a key already judged expired, and be deleted with the old
    // (seen: one connection in 17 000 lost its forward entry mid-exchange). A map has no
    // compare-and-delete, so a window of a few microseconds remains.
    for group in groups {
        let mut alive = false;
        for key in &group {
            if let Some(e) = dp.ct_get(key)? {
                alive |= !timeouts.expired(key.proto, &e, now_ns);
            }
        }
        if alive {
            stats.revived += group.len();
        } else {
            stats.removed += dp.ct_delete(&group)?;
        }
    }
    Ok(stats)
}

/// The UDP conntrack entries to delete after `removed` (frontend id, backend id) pairs left
/// their frontends: every entry, forward or reply, of a UDP flow of one of those pairs.
pub fn udp_flush_keys<'a>(
    entries: impl IntoIterator<Item = (&'a CtKey, &'a CtEntry)>,
    removed: &HashSet<(u32, u32)>,
) -> Vec<CtKey> {
    entries
        .into_iter()
        .filter(|(k, e)| k.proto == PROTO_UDP && removed.contains(&(e.frontend_id, e.backend_id)))
        .map(|(k, _)| *k)
        .collect()
}

/// Deletes the UDP conntrack entries of `removed` pairs (see [`udp_flush_keys`]). Returns how
/// many were deleted.
pub fn flush_udp<D: Dataplane + ?Sized>(
    dp: &mut D,
    removed: &HashSet<(u32, u32)>,
) -> Result<usize, DataplaneError> {
    if removed.is_empty() {
        return Ok(0);
    }
    let mut keys = Vec::new();
    dp.ct_scan(&mut |k, e| keys.extend(udp_flush_keys(k.iter().zip(e), removed)))?;
    dp.ct_delete(&keys)
}

/// The affinity entries to delete after a plan: those naming a removed (frontend id, backend
/// id) pair, and every entry of a deleted frontend id.
pub fn affinity_flush_keys<'a>(
    entries: impl IntoIterator<Item = (&'a AffinityKey, &'a Affinity)>,
    removals: &Removals,
) -> Vec<AffinityKey> {
    let pairs: HashSet<(u32, u32)> = removals
        .backends
        .iter()
        .map(|r| (r.frontend_id, r.backend_id))
        .collect();
    let ids: HashSet<u32> = removals.frontend_ids.iter().copied().collect();
    entries
        .into_iter()
        .filter(|(k, a)| {
            ids.contains(&k.frontend_id) || pairs.contains(&(k.frontend_id, a.backend_id))
        })
        .map(|(k, _)| *k)
        .collect()
}

/// Deletes the affinity entries [`affinity_flush_keys`] names. Returns how many were deleted.
pub fn flush_affinity<D: Dataplane + ?Sized>(
    dp: &mut D,
    removals: &Removals,
) -> Result<usize, DataplaneError> {
    if removals.backends.is_empty() && removals.frontend_ids.is_empty() {
        return Ok(0);
    }
    let mut entries = Vec::new();
    dp.affinity_scan(&mut |k, a| entries.extend(k.iter().copied().zip(a.iter().copied())))?;
    let keys = affinity_flush_keys(entries.iter().map(|(k, a)| (k, a)), removals);
    dp.affinity_delete(&keys)
}

/// Messages to the collector's flush thread.
#[derive(Debug)]
pub enum Request {
    /// Delete the UDP entries of these (frontend id, backend id) pairs now.
    FlushUdp(Vec<(u32, u32)>),
}

/// The running collector, as the reconciling task holds it. Dropping it stops both threads.
pub struct CollectorHandle {
    flush: mpsc::Sender<Request>,
    /// Never sent on: its drop wakes and stops the GC thread.
    _stop: mpsc::Sender<()>,
}

impl CollectorHandle {
    /// Asks for the UDP flows of `pairs` to be deleted now. `false` if the flush thread has
    /// stopped.
    pub fn flush_udp(&self, pairs: Vec<(u32, u32)>) -> bool {
        self.flush.send(Request::FlushUdp(pairs)).is_ok()
    }
}

/// The collector: its own handles on the maps, run on threads of its own so that a pass over
/// a million entries never delays the reconciling task. Passes and flushes run on separate
/// threads (each with its own map handle), so a flush never waits for a pass in progress.
pub struct Collector<D: Dataplane> {
    pub dp: D,
    pub timeouts: CtTimeouts,
    pub interval: Duration,
    pub metrics: Arc<Metrics>,
    /// Last fill warning per map.
    warned: HashMap<&'static str, Instant>,
}

impl<D: Dataplane + Send + 'static> Collector<D> {
    pub fn new(dp: D, timeouts: CtTimeouts, interval: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            dp,
            timeouts,
            interval,
            metrics,
            warned: HashMap::new(),
        }
    }

    /// Starts the GC thread (passes on `self.dp`) and the flush thread (on `flush_dp`, a
    /// second handle on the same maps).
    pub fn spawn(self, flush_dp: D) -> std::io::Result<CollectorHandle> {
        let (flush, flush_rx) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel();
        let flusher = Collector::new(flush_dp, self.timeouts, self.interval, self.metrics.clone());
        std::thread::Builder::new()
            .name("conntrack-flush".into())
            .spawn(move || flusher.run_flushes(flush_rx))?;
        std::thread::Builder::new()
            .name("conntrack-gc".into())
            .spawn(move || self.run_passes(stop_rx))?;
        Ok(CollectorHandle { flush, _stop: stop })
    }

    fn run_passes(mut self, stop: mpsc::Receiver<()>) {
        let mut delay = Duration::ZERO;
        while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(delay) {
            delay = if self.pass() {
                CATCH_UP_DELAY
            } else {
                self.interval
            };
        }
    }

    fn run_flushes(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            // Everything queued meanwhile goes in the same scan.
            let mut pairs: HashSet<(u32, u32)> = HashSet::new();
            for req in std::iter::once(first).chain(rx.try_iter()) {
                match req {
                    Request::FlushUdp(p) => pairs.extend(p),
                }
            }
            self.flush(&pairs);
        }
    }

    /// Deletes the UDP entries of `pairs`.
    pub fn flush(&mut self, pairs: &HashSet<(u32, u32)>) {
        let started = Instant::now();
        match flush_udp(&mut self.dp, pairs) {
            Ok(n) => {
                self.metrics.ct_flushed.inc_by(n as u64);
                info!(
                    pairs = pairs.len(),
                    deleted = n,
                    ms = started.elapsed().as_millis() as u64,
                    "UDP conntrack of removed endpoints flushed"
                );
            }
            Err(e) => {
                self.metrics.ct_gc_errors.inc();
                error!("flushing UDP conntrack of removed endpoints: {e}");
            }
        }
    }

    /// One pass, with its metrics and fill checks. Returns whether it stopped at its bound.
    pub fn pass(&mut self) -> bool {
        let now = match monotonic_now_ns() {
            Ok(n) => n,
            Err(e) => {
                error!("reading CLOCK_MONOTONIC: {e}");
                return false;
            }
        };
        let started = Instant::now();
        let cpu_started = thread_cpu_ns();
        let stats = match gc_pass(&mut self.dp, now, &self.timeouts, MAX_DELETES_PER_PASS) {
            Ok(s) => s,
            Err(e) => {
                self.metrics.ct_gc_errors.inc();
                error!("conntrack garbage collection: {e}");
                return false;
            }
        };
        let elapsed = started.elapsed();
        let m = &self.metrics;
        m.ct_gc_passes.inc();
        m.ct_gc_scanned.inc_by(stats.scanned as u64);
        m.ct_gc_removed.inc_by(stats.removed as u64);
        m.ct_gc_last_pass_seconds.set(elapsed.as_secs_f64());
        // Entries after the pass: what was read minus what went.
        let ct = MapFill {
            map: MAP_CONNTRACK,
            entries: stats.scanned.saturating_sub(stats.removed),
            capacity: self.dp.ct_capacity(),
        };
        let mut fills = vec![ct];
        match self.dp.lru_fill() {
            Ok(f) => fills.extend(f),
            Err(e) => warn!("counting LRU map entries: {e}"),
        }
        for fill in fills {
            self.note_fill(fill);
        }
        debug!(
            scanned = stats.scanned,
            expired = stats.expired,
            removed = stats.removed,
            revived = stats.revived,
            capped = stats.capped,
            ms = elapsed.as_millis() as u64,
            cpu_ms = thread_cpu_ns().saturating_sub(cpu_started) / 1_000_000,
            "conntrack GC pass"
        );
        stats.capped
    }

    fn note_fill(&mut self, fill: MapFill) {
        self.metrics.set_fill(fill);
        let ratio = fill.entries as f64 / f64::from(fill.capacity.max(1));
        if ratio > FILL_WARN_RATIO {
            let due = self
                .warned
                .get(fill.map)
                .is_none_or(|at| at.elapsed() >= FILL_WARN_EVERY);
            if due {
                self.warned.insert(fill.map, Instant::now());
                warn!(
                    map = fill.map,
                    entries = fill.entries,
                    capacity = fill.capacity,
                    "map is {:.0} % full: the least recently used entries are being evicted{}",
                    ratio * 100.0,
                    if fill.map == MAP_CONNTRACK {
                        " (flows lose their backend); raise --conntrack-max or lower the timeouts"
                    } else {
                        ""
                    }
                );
            }
        }
    }
}

/// CPU time of the calling thread, in ns (`CLOCK_THREAD_CPUTIME_ID`); 0 if unavailable.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use svc_common::{
        CT_DIR_FORWARD, CT_DIR_REPLY, CT_STATE_CLOSED, CT_STATE_CLOSE_WAIT, CT_STATE_ESTABLISHED,
        CT_STATE_SYN_SENT, CT_STATE_TIME_WAIT, CT_STATE_UDP_REPLIED, CT_STATE_UDP_UNREPLIED,
        PROTO_TCP,
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
        let t: BTreeMap<CtKey, CtEntry> =
            [(old_k, old_e), (new_fk, new_fe), (new_rk, new_re)].into();
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
}
