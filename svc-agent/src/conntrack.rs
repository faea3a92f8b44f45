//! The agent's side of the conntrack lifecycle: the garbage collector that removes expired
//! flows from `SVC_CT` and `SVC_CT6`, and the flushes that follow endpoint removal.
//!
//! Both families follow the same rules, written once over [`CtFamily`] (the map's address
//! width): a pass scans and prunes `SVC_CT`, then `SVC_CT6`, each bounded by
//! [`MAX_DELETES_PER_PASS`]; a flush deletes the UDP flows of removed (frontend, backend)
//! pairs from both (ids are one space over both families, so a pair names one family's flows).
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
    ct_peer_key, Addr, AffinityKey, AffinityKey6, AffinityKeyOf, CtEntry, CtEntryOf, CtKey,
    CtKeyOf, CtTimeouts, MAP_CONNTRACK, MAP_CONNTRACK6, PROTO_UDP,
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

/// A conntrack family: how the collector reaches its conntrack and affinity maps through a
/// [`Dataplane`].
#[expect(
    clippy::type_complexity,
    reason = "the callbacks are the Dataplane trait's own, spelled per family"
)]
pub trait CtFamily: Addr {
    /// The conntrack map's name.
    const CT_MAP: &'static str;
    /// [`Dataplane::ct_scan`] or [`Dataplane::ct6_scan`].
    fn scan<D: Dataplane + ?Sized>(
        dp: &D,
        each: &mut dyn FnMut(&[CtKeyOf<Self>], &[CtEntryOf<Self>]),
    ) -> Result<usize, DataplaneError>;
    /// [`Dataplane::ct_get`] or [`Dataplane::ct6_get`].
    fn get<D: Dataplane + ?Sized>(
        dp: &D,
        key: &CtKeyOf<Self>,
    ) -> Result<Option<CtEntryOf<Self>>, DataplaneError>;
    /// [`Dataplane::ct_delete`] or [`Dataplane::ct6_delete`].
    fn delete<D: Dataplane + ?Sized>(
        dp: &mut D,
        keys: &[CtKeyOf<Self>],
    ) -> Result<usize, DataplaneError>;
    /// [`Dataplane::affinity_scan`] or [`Dataplane::affinity6_scan`].
    fn affinity_scan<D: Dataplane + ?Sized>(
        dp: &D,
        each: &mut dyn FnMut(&[AffinityKeyOf<Self>], &[Self::Affinity]),
    ) -> Result<usize, DataplaneError>;
    /// [`Dataplane::affinity_delete`] or [`Dataplane::affinity6_delete`].
    fn affinity_delete<D: Dataplane + ?Sized>(
        dp: &mut D,
        keys: &[AffinityKeyOf<Self>],
    ) -> Result<usize, DataplaneError>;
}

impl CtFamily for [u8; 4] {
    const CT_MAP: &'static str = MAP_CONNTRACK;
    fn scan<D: Dataplane + ?Sized>(
        dp: &D,
        each: &mut dyn FnMut(&[CtKey], &[CtEntry]),
    ) -> Result<usize, DataplaneError> {
        dp.ct_scan(each)
    }
    fn get<D: Dataplane + ?Sized>(dp: &D, key: &CtKey) -> Result<Option<CtEntry>, DataplaneError> {
        dp.ct_get(key)
    }
    fn delete<D: Dataplane + ?Sized>(dp: &mut D, keys: &[CtKey]) -> Result<usize, DataplaneError> {
        dp.ct_delete(keys)
    }
    fn affinity_scan<D: Dataplane + ?Sized>(
        dp: &D,
        each: &mut dyn FnMut(&[AffinityKey], &[svc_common::Affinity]),
    ) -> Result<usize, DataplaneError> {
        dp.affinity_scan(each)
    }
    fn affinity_delete<D: Dataplane + ?Sized>(
        dp: &mut D,
        keys: &[AffinityKey],
    ) -> Result<usize, DataplaneError> {
        dp.affinity_delete(keys)
    }
}

impl CtFamily for svc_common::Addr6 {
    const CT_MAP: &'static str = MAP_CONNTRACK6;
    fn scan<D: Dataplane + ?Sized>(
        dp: &D,
        each: &mut dyn FnMut(&[svc_common::CtKey6], &[svc_common::CtEntry6]),
    ) -> Result<usize, DataplaneError> {
        dp.ct6_scan(each)
    }
    fn get<D: Dataplane + ?Sized>(
        dp: &D,
        key: &svc_common::CtKey6,
    ) -> Result<Option<svc_common::CtEntry6>, DataplaneError> {
        dp.ct6_get(key)
    }
    fn delete<D: Dataplane + ?Sized>(
        dp: &mut D,
        keys: &[svc_common::CtKey6],
    ) -> Result<usize, DataplaneError> {
        dp.ct6_delete(keys)
    }
    fn affinity_scan<D: Dataplane + ?Sized>(
        dp: &D,
        each: &mut dyn FnMut(&[AffinityKey6], &[svc_common::Affinity6]),
    ) -> Result<usize, DataplaneError> {
        dp.affinity6_scan(each)
    }
    fn affinity_delete<D: Dataplane + ?Sized>(
        dp: &mut D,
        keys: &[AffinityKey6],
    ) -> Result<usize, DataplaneError> {
        dp.affinity6_delete(keys)
    }
}

/// The collector's rule for one entry (see the module docs).
pub fn verdict<A: Addr>(
    key: &CtKeyOf<A>,
    entry: &CtEntryOf<A>,
    peer: Option<&CtEntryOf<A>>,
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
/// every entry (32 bytes each with its peer key for IPv4, 80 for IPv6), released after the
/// pass.
pub struct GcScan<A: Addr = [u8; 4]> {
    now_ns: u64,
    timeouts: CtTimeouts,
    /// Fresh entries: key → the key of its peer.
    fresh: FastMap<CtKeyOf<A>, CtKeyOf<A>>,
    /// Expired entries, in scan order: (key, peer key).
    expired: Vec<(CtKeyOf<A>, CtKeyOf<A>)>,
    /// Entries seen.
    pub scanned: usize,
}

impl<A: Addr> GcScan<A> {
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
    pub fn add(&mut self, key: &CtKeyOf<A>, entry: &CtEntryOf<A>) {
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
    pub fn plan(&self, limit: usize) -> (Vec<Vec<CtKeyOf<A>>>, bool) {
        let mut expired: FastMap<&CtKeyOf<A>, &CtKeyOf<A>> =
            FastMap::with_capacity(self.expired.len());
        expired.extend(self.expired.iter().map(|(k, p)| (k, p)));
        let mut taken: FastSet<CtKeyOf<A>> = FastSet::new();
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
pub fn gc_plan<'a, A: Addr>(
    entries: impl IntoIterator<Item = (&'a CtKeyOf<A>, &'a CtEntryOf<A>)>,
    now_ns: u64,
    timeouts: &CtTimeouts,
    limit: usize,
) -> Vec<CtKeyOf<A>> {
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

impl PassStats {
    /// Both families' passes as one.
    fn plus(self, o: PassStats) -> PassStats {
        PassStats {
            scanned: self.scanned + o.scanned,
            expired: self.expired + o.expired,
            removed: self.removed + o.removed,
            revived: self.revived + o.revived,
            capped: self.capped || o.capped,
        }
    }
}

/// One garbage-collection pass over the IPv4 conntrack map at `now_ns`, deleting at most
/// `limit` entries.
pub fn gc_pass<D: Dataplane + ?Sized>(
    dp: &mut D,
    now_ns: u64,
    timeouts: &CtTimeouts,
    limit: usize,
) -> Result<PassStats, DataplaneError> {
    gc_pass_of::<[u8; 4], D>(dp, now_ns, timeouts, limit)
}

/// [`gc_pass`] over the IPv6 conntrack map (`SVC_CT6`): the same rules.
pub fn gc_pass6<D: Dataplane + ?Sized>(
    dp: &mut D,
    now_ns: u64,
    timeouts: &CtTimeouts,
    limit: usize,
) -> Result<PassStats, DataplaneError> {
    gc_pass_of::<svc_common::Addr6, D>(dp, now_ns, timeouts, limit)
}

fn gc_pass_of<A: CtFamily, D: Dataplane + ?Sized>(
    dp: &mut D,
    now_ns: u64,
    timeouts: &CtTimeouts,
    limit: usize,
) -> Result<PassStats, DataplaneError> {
    let mut scan = GcScan::<A>::new(now_ns, *timeouts);
    A::scan(dp, &mut |keys, entries| {
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
            if let Some(e) = A::get(dp, key)? {
                alive |= !timeouts.expired(key.proto, &e, now_ns);
            }
        }
        if alive {
            stats.revived += group.len();
        } else {
            stats.removed += A::delete(dp, &group)?;
        }
    }
    Ok(stats)
}

/// The UDP conntrack entries to delete after `removed` (frontend id, backend id) pairs left
/// their frontends: every entry, forward or reply, of a UDP flow of one of those pairs.
pub fn udp_flush_keys<'a, A: Addr>(
    entries: impl IntoIterator<Item = (&'a CtKeyOf<A>, &'a CtEntryOf<A>)>,
    removed: &HashSet<(u32, u32)>,
) -> Vec<CtKeyOf<A>> {
    entries
        .into_iter()
        .filter(|(k, e)| k.proto == PROTO_UDP && removed.contains(&(e.frontend_id, e.backend_id)))
        .map(|(k, _)| *k)
        .collect()
}

/// Deletes the UDP conntrack entries of `removed` pairs (see [`udp_flush_keys`]) from both
/// families' maps. Returns how many were deleted.
pub fn flush_udp<D: Dataplane + ?Sized>(
    dp: &mut D,
    removed: &HashSet<(u32, u32)>,
) -> Result<usize, DataplaneError> {
    if removed.is_empty() {
        return Ok(0);
    }
    Ok(flush_udp_of::<[u8; 4], D>(dp, removed)?
        + flush_udp_of::<svc_common::Addr6, D>(dp, removed)?)
}

fn flush_udp_of<A: CtFamily, D: Dataplane + ?Sized>(
    dp: &mut D,
    removed: &HashSet<(u32, u32)>,
) -> Result<usize, DataplaneError> {
    let mut keys = Vec::new();
    A::scan(dp, &mut |k, e| {
        keys.extend(udp_flush_keys(k.iter().zip(e), removed))
    })?;
    A::delete(dp, &keys)
}

/// The affinity entries to delete after a plan: those naming a removed (frontend id, backend
/// id) pair, and every entry of a deleted frontend id.
pub fn affinity_flush_keys<'a, A: Addr>(
    entries: impl IntoIterator<Item = (&'a AffinityKeyOf<A>, &'a A::Affinity)>,
    removals: &Removals,
) -> Vec<AffinityKeyOf<A>> {
    let pairs: HashSet<(u32, u32)> = removals
        .backends
        .iter()
        .map(|r| (r.frontend_id, r.backend_id))
        .collect();
    let ids: HashSet<u32> = removals.frontend_ids.iter().copied().collect();
    entries
        .into_iter()
        .filter(|(k, a)| {
            ids.contains(&k.frontend_id) || pairs.contains(&(k.frontend_id, A::affinity_parts(a).0))
        })
        .map(|(k, _)| *k)
        .collect()
}

/// Deletes the affinity entries [`affinity_flush_keys`] names, from both families' maps.
/// Returns how many were deleted.
pub fn flush_affinity<D: Dataplane + ?Sized>(
    dp: &mut D,
    removals: &Removals,
) -> Result<usize, DataplaneError> {
    if removals.backends.is_empty() && removals.frontend_ids.is_empty() {
        return Ok(0);
    }
    Ok(flush_affinity_of::<[u8; 4], D>(dp, removals)?
        + flush_affinity_of::<svc_common::Addr6, D>(dp, removals)?)
}

fn flush_affinity_of<A: CtFamily, D: Dataplane + ?Sized>(
    dp: &mut D,
    removals: &Removals,
) -> Result<usize, DataplaneError> {
    let mut entries = Vec::new();
    A::affinity_scan(dp, &mut |k, a| {
        entries.extend(k.iter().copied().zip(a.iter().copied()))
    })?;
    let keys = affinity_flush_keys::<A>(entries.iter().map(|(k, a)| (k, a)), removals);
    A::affinity_delete(dp, &keys)
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
        let limit = MAX_DELETES_PER_PASS;
        let stats = match gc_pass(&mut self.dp, now, &self.timeouts, limit) {
            Ok(s) => s,
            Err(e) => {
                self.metrics.ct_gc_errors.inc();
                error!("conntrack garbage collection: {e}");
                return false;
            }
        };
        let stats6 = match gc_pass6(&mut self.dp, now, &self.timeouts, limit) {
            Ok(s) => s,
            Err(e) => {
                self.metrics.ct_gc_errors.inc();
                error!("conntrack garbage collection (IPv6): {e}");
                PassStats::default()
            }
        };
        let both = stats.plus(stats6);
        let elapsed = started.elapsed();
        let m = &self.metrics;
        m.ct_gc_passes.inc();
        m.ct_gc_scanned.inc_by(both.scanned as u64);
        m.ct_gc_removed.inc_by(both.removed as u64);
        m.ct_gc_last_pass_seconds.set(elapsed.as_secs_f64());
        // Entries after the pass: what was read minus what went. SVC_CT6 has SVC_CT's size.
        let ct = MapFill {
            map: MAP_CONNTRACK,
            entries: stats.scanned.saturating_sub(stats.removed),
            capacity: self.dp.ct_capacity(),
        };
        let ct6 = MapFill {
            map: MAP_CONNTRACK6,
            entries: stats6.scanned.saturating_sub(stats6.removed),
            capacity: self.dp.ct_capacity(),
        };
        let mut fills = vec![ct, ct6];
        match self.dp.lru_fill() {
            Ok(f) => fills.extend(f),
            Err(e) => warn!("counting LRU map entries: {e}"),
        }
        for fill in fills {
            self.note_fill(fill);
        }
        debug!(
            scanned = both.scanned,
            expired = both.expired,
            removed = both.removed,
            revived = both.revived,
            capped = both.capped,
            scanned6 = stats6.scanned,
            ms = elapsed.as_millis() as u64,
            cpu_ms = thread_cpu_ns().saturating_sub(cpu_started) / 1_000_000,
            "conntrack GC pass"
        );
        both.capped
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
                    if fill.map == MAP_CONNTRACK || fill.map == MAP_CONNTRACK6 {
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
mod tests;
