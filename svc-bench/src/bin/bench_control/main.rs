//! Control-plane benchmark (DESIGN §5): how long the real `svc-agent` takes to make the pinned
//! maps right, at 1k and 10k Services with 10 endpoints each (10k / 100k endpoints).
//!
//! `cargo xtask bench` runs this as root (after the per-packet benchmark); `cargo xtask bench
//! --only control` runs it alone. Figures are printed and written to `target/bench/control.json`,
//! never asserted: they depend on the machine and on what else it is doing.
//!
//! # What is measured, and from where
//! The agent is the real binary (`SVC_AGENT_BIN`, which xtask points at a release build;
//! otherwise the debug build next to this binary — the output says which), in the node
//! namespace of a one-node [`Topology`], reading the in-process fake API server
//! ([`svc_testkit::apiserver`]) that listens on 172.18.0.1 in the topology's underlay namespace.
//! Every figure is taken from outside the agent, from what a packet would see: the pinned
//! `SVC_FRONTENDS` map, read by this process.
//! - **Full sync**: every object exists before the agent starts. From spawning the process to
//!   (a) every frontend present with its backend count, (b) `/healthz` answering 200. Polled
//!   every [`FULL_SYNC_POLL`], so both carry up to that much quantisation. The agent's own log
//!   timestamps split the time into phases (datapath loaded and pinned maps adopted; lists
//!   complete; full sync written) and give the number of map writes.
//! - **Single changes** at that size: EndpointSlice updates adding or removing one endpoint of a
//!   Service picked by a fixed-seed PRNG, then Service creations and deletions. Each is timed from
//!   the API server committing the write ([`ApiServer::last_write_at`], taken as it wakes the
//!   watch streams; timing from the write call's return reads ~0 whenever that wake-up preempts
//!   this thread until the agent is done) to the frontend's `backend_count` (or presence) in the
//!   map being the new one, polled every [`CHANGE_POLL`]. The count is the last write of a grow and the
//!   first of a shrink (Cilium's order, ARCHITECTURE.md), so it flips exactly when the datapath
//!   starts using the new set. Changes are sequential: each waits for the previous to land.
//! - **The agent's histogram** `svc_programming_latency_seconds` (delta receipt → last map
//!   write, so it excludes the watch delivery) over the same single changes, by diffing the
//!   buckets before and after; quantiles are interpolated within buckets as Prometheus'
//!   `histogram_quantile` does, so they are only as fine as the ×2 buckets.
//! - **Memory**: the agent's VmRSS and VmHWM (`/proc/PID/status`) after the full sync.
//! - **The `--manifests` source**: the same objects as YAML files, full sync only.
//!
//! The fake API server runs in this (debug-built) process: serving the initial lists is part
//! of the full-sync time (the "lists complete" phase shows how much), as a real API server's
//! would be; for single changes it adds one small watch event's serialisation.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use svc_agent::dataplane::read::FrontendLookup;
use svc_common::{Frontend, FrontendKey, PROTO_TCP, SCOPE_ANY};
use svc_testkit::{
    agent::{workspace_bin, Agent, ManifestDir},
    apiserver::ApiServer,
    topology::{is_root, Topology, TopologySpec},
};

/// Endpoints per Service in the initial state.
const ENDPOINTS: usize = 10;
/// Endpoint slots per Service in the address plan ([`endpoint_ip`]): single changes keep the
/// count between 1 and this.
const ENDPOINT_SLOTS: usize = 16;
/// Service port, and the port its endpoints listen on.
const SERVICE_PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const NAMESPACE: &str = "default";
/// Poll interval while waiting for a full sync: reading 10k frontends costs ~10k syscalls.
const FULL_SYNC_POLL: Duration = Duration::from_millis(100);
/// Poll interval while waiting for a single change: one map lookup.
const CHANGE_POLL: Duration = Duration::from_micros(200);
/// A single change not visible after this is counted as timed out (and reported).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
const FULL_SYNC_TIMEOUT: Duration = Duration::from_secs(180);
/// Seed of the change sequence, so two runs make the same changes.
const SEED: u64 = 0x5eed_c0de;

#[derive(Parser)]
#[command(about = "Programming latency, full sync time and memory of svc-agent")]
struct Args {
    /// Service counts to measure at (each Service has one TCP port and 10 endpoints).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000])]
    services: Vec<usize>,
    /// EndpointSlice updates (one endpoint added or removed) per size.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Service creations, and as many deletions, per size.
    #[arg(long, default_value_t = 50)]
    service_changes: usize,
    /// Skip the `--manifests` full-sync comparison.
    #[arg(long)]
    no_manifests: bool,
    /// Services per manifest file (each file holds their Services and EndpointSlices).
    #[arg(long, default_value_t = 500)]
    per_file: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        is_root(),
        "needs root (network namespaces, BPF maps): run the benchmark as root"
    );
    let started = Instant::now();
    let agent_bin = workspace_bin("svc-agent")?;
    let build = if agent_bin.components().any(|c| c.as_os_str() == "release") {
        "release"
    } else {
        "debug"
    };
    println!(
        "control-plane benchmark: agent {} ({build} build), kernel {}",
        agent_bin.display(),
        kernel_release()
    );
    let mut sizes = Vec::new();
    for &n in &args.services {
        let size = measure_size(n, &args).with_context(|| format!("{n} Services"))?;
        print_size(&size);
        sizes.push(size);
    }
    let path = svc_testkit::fixtures::workspace_root().join("target/bench/control.json");
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let doc = json!({
        "agent": agent_bin.display().to_string(),
        "agent_build": build,
        "kernel": kernel_release(),
        "endpoints_per_service": ENDPOINTS,
        "sizes": sizes.iter().map(Size::to_json).collect::<Vec<_>>(),
    });
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "wrote {} in {:.0} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Everything measured at one size.
struct Size {
    services: usize,
    /// Seconds to create the objects in the fake API server (context, not a result).
    setup_s: f64,
    kube: FullSync,
    manifests: Option<FullSync>,
    slice_changes: Samples,
    service_creates: Samples,
    service_deletes: Samples,
    /// The agent's histogram over the slice changes.
    histogram: Option<HistogramDelta>,
}

impl Size {
    fn to_json(&self) -> Value {
        json!({
            "services": self.services,
            "endpoints": self.services * ENDPOINTS,
            "api_setup_s": self.setup_s,
            "full_sync_kube": self.kube.to_json(),
            "full_sync_manifests": self.manifests.as_ref().map(FullSync::to_json),
            "slice_change_ms": self.slice_changes.to_json(),
            "service_create_ms": self.service_creates.to_json(),
            "service_delete_ms": self.service_deletes.to_json(),
            "agent_histogram_slice_changes": self.histogram.as_ref().map(|h| json!({
                "count": h.count,
                "p50_ms": h.quantile(0.5).map(|s| s * 1e3),
                "p99_ms": h.quantile(0.99).map(|s| s * 1e3),
                "buckets": h.buckets.iter().map(|(le, n)| json!([le, n])).collect::<Vec<_>>(),
            })),
        })
    }
}

/// One full sync, timed from spawning the agent.
struct FullSync {
    /// Every frontend in the map with its backend count.
    maps_right_s: f64,
    /// `/healthz` answered 200.
    healthy_s: f64,
    /// From the agent's log: pinned maps adopted (datapath loaded).
    loaded_s: Option<f64>,
    /// From the agent's log: the last "list complete" (API source only).
    listed_s: Option<f64>,
    /// From the agent's log: "full sync: maps match the desired state".
    synced_s: Option<f64>,
    /// `writes=` of that line.
    writes: Option<u64>,
    vm_rss_kib: Option<u64>,
    vm_hwm_kib: Option<u64>,
}

impl FullSync {
    fn to_json(&self) -> Value {
        json!({
            "maps_right_s": self.maps_right_s,
            "healthz_200_s": self.healthy_s,
            "log_datapath_loaded_s": self.loaded_s,
            "log_lists_complete_s": self.listed_s,
            "log_full_sync_s": self.synced_s,
            "map_writes": self.writes,
            "vm_rss_kib": self.vm_rss_kib,
            "vm_hwm_kib": self.vm_hwm_kib,
        })
    }
}

/// Latencies of one kind of change, in milliseconds, plus how many never showed up.
#[derive(Default)]
struct Samples {
    ms: Vec<f64>,
    timeouts: usize,
}

impl Samples {
    /// Nearest-rank quantile.
    fn quantile(&self, q: f64) -> Option<f64> {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
        v.get(rank - 1).copied()
    }

    fn to_json(&self) -> Value {
        json!({
            "samples": self.ms.len(),
            "timeouts": self.timeouts,
            "p50": self.quantile(0.5),
            "p90": self.quantile(0.9),
            "p99": self.quantile(0.99),
            "max": self.quantile(1.0),
            "min": self.quantile(0.0),
        })
    }
}

fn measure_size(n: usize, args: &Args) -> Result<Size> {
    println!("\n== {n} Services × {ENDPOINTS} endpoints: API-server source");
    let t = Topology::build(&TopologySpec::new().node(&[]))?;
    let ul = t.underlay_ns().to_owned();
    // The API server's address lives on the underlay bridge: reachable from the node
    // namespace over its eth0, and nowhere else.
    t.ip(&ul, "addr add 172.18.0.1/16 dev br0")?;
    let listener = t
        .run_in(&ul, || TcpListener::bind("172.18.0.1:0"))?
        .context("binding the fake API server in the underlay namespace")?;
    let server = ApiServer::start(listener)?;
    let kubeconfig = std::env::temp_dir().join(format!("{}kubeconfig", t.prefix()));
    let _kubeconfig_guard = RemoveOnDrop(kubeconfig.clone());
    server.write_kubeconfig(&kubeconfig)?;

    let setup = Instant::now();
    // Services first: a Service write makes the fake server look at the namespace's slices
    // (Endpoints mirroring), which would make creating them after the slices quadratic.
    for i in 0..n {
        server.create_value(service(i))?;
    }
    let mut endpoints: Vec<BTreeSet<usize>> = vec![(0..ENDPOINTS).collect(); n];
    for (i, eps) in endpoints.iter().enumerate() {
        server.create_value(slice(i, eps))?;
    }
    let setup_s = setup.elapsed().as_secs_f64();
    println!("   {n} Services and EndpointSlices created in {setup_s:.1} s");

    let want: Vec<(FrontendKey, u32)> = (0..n)
        .map(|i| (frontend_key(i), ENDPOINTS as u32))
        .collect();
    let spawned = SystemTime::now();
    let clock = Instant::now();
    let mut agent = Agent::start_kube(&t, 1, &kubeconfig, &[])?;
    let kube = wait_full_sync(&t, &mut agent, &want, spawned, clock)?;
    println!(
        "   full sync: maps right {:.2} s, healthz {:.2} s",
        kube.maps_right_s, kube.healthy_s
    );

    let map = frontend_map(&agent)?;
    let before = histogram(&t, &agent).ok();
    let slice_changes = slice_changes(&server, &map, &mut endpoints, args.changes)?;
    let after = histogram(&t, &agent).ok();
    let histogram = before.zip(after).map(|(b, a)| a.minus(&b));
    let (service_creates, service_deletes) =
        service_changes(&server, &map, n, args.service_changes)?;
    let log = agent.stop()?;
    ensure!(
        !log.contains(" ERROR "),
        "the agent logged errors:\n{}",
        tail(&log, 40)
    );
    drop(agent);
    drop(server);
    drop(t);

    let manifests = if args.no_manifests {
        None
    } else {
        println!(
            "== {n} Services × {ENDPOINTS} endpoints: --manifests source, {} Services per file",
            args.per_file
        );
        Some(manifests_full_sync(n, args.per_file.max(1), &want)?)
    };
    Ok(Size {
        services: n,
        setup_s,
        kube,
        manifests,
        slice_changes,
        service_creates,
        service_deletes,
        histogram,
    })
}

/// The same objects as YAML files, and an agent reading them.
fn manifests_full_sync(n: usize, per_file: usize, want: &[(FrontendKey, u32)]) -> Result<FullSync> {
    let t = Topology::build(&TopologySpec::new().node(&[]))?;
    let dir = ManifestDir::new(&t)?;
    let eps: BTreeSet<usize> = (0..ENDPOINTS).collect();
    // By default 500 Services per file: a few files, as a generated bundle would be.
    for first in (0..n).step_by(per_file) {
        let mut yaml = String::new();
        for i in first..(first + per_file).min(n) {
            for obj in [service(i), slice(i, &eps)] {
                yaml.push_str("---\n");
                yaml.push_str(&serde_yaml::to_string(&obj)?);
            }
        }
        dir.write(&format!("svc-{first:05}.yaml"), &yaml)?;
    }
    let spawned = SystemTime::now();
    let clock = Instant::now();
    let mut agent = Agent::start(&t, 1, dir.path(), &[])?;
    let sync = wait_full_sync(&t, &mut agent, want, spawned, clock)?;
    println!(
        "   full sync: maps right {:.2} s, healthz {:.2} s",
        sync.maps_right_s, sync.healthy_s
    );
    agent.stop()?;
    Ok(sync)
}

/// Polls until every frontend of `want` is in the map with its count (and nothing else is) and
/// `/healthz` answers 200, then reads the agent's memory and log.
fn wait_full_sync(
    t: &Topology,
    agent: &mut Agent,
    want: &[(FrontendKey, u32)],
    spawned: SystemTime,
    clock: Instant,
) -> Result<FullSync> {
    let mut map: Option<FrontendMap> = None;
    let mut maps_right = None;
    let mut healthy = None;
    while maps_right.is_none() || healthy.is_none() {
        if clock.elapsed() > FULL_SYNC_TIMEOUT {
            bail!(
                "no full sync within {FULL_SYNC_TIMEOUT:?} (maps right: {maps_right:?}, \
                 healthy: {healthy:?}); agent log:\n{}",
                tail(&agent.log(), 40)
            );
        }
        // An exited agent leaves a zombie whose command line is empty.
        if clock.elapsed() > Duration::from_secs(2) && agent_pid(agent.bpffs()).is_none() {
            bail!(
                "the agent exited during its first sync:\n{}",
                tail(&agent.log(), 40)
            );
        }
        if maps_right.is_none() {
            if map.is_none() {
                map = frontend_map(agent).ok();
            }
            if let Some(m) = &map {
                // Newest writes first: the frontends are written in key order, so while the
                // sync is under way the first lookup already fails.
                let all = want.iter().rev().all(|(k, count)| {
                    m.get(k)
                        .is_ok_and(|f| f.is_some_and(|f| f.backend_count == *count))
                });
                if all && m.len() == want.len() {
                    maps_right = Some(clock.elapsed());
                }
            }
        }
        if healthy.is_none() && matches!(agent.http_get(t, "/healthz"), Ok((200, _))) {
            healthy = Some(clock.elapsed());
        }
        std::thread::sleep(FULL_SYNC_POLL);
    }
    let status = agent_pid(agent.bpffs())
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .unwrap_or_default();
    let log = agent.log();
    let at = |needle: &str| log_time(&log, needle, spawned);
    let listed = [at("kind=\"Service\""), at("kind=\"EndpointSlice\"")]
        .into_iter()
        .flatten()
        .reduce(f64::max);
    Ok(FullSync {
        maps_right_s: maps_right.unwrap_or_default().as_secs_f64(),
        healthy_s: healthy.unwrap_or_default().as_secs_f64(),
        loaded_s: at("adopted the service maps"),
        listed_s: listed,
        synced_s: at("full sync: maps match"),
        writes: log
            .lines()
            .find(|l| l.contains("full sync: maps match"))
            .and_then(|l| field(l, "writes=")),
        vm_rss_kib: proc_status_kib(&status, "VmRSS:"),
        vm_hwm_kib: proc_status_kib(&status, "VmHWM:"),
    })
}

/// `changes` EndpointSlice updates, each adding or removing one endpoint of a random Service.
fn slice_changes(
    server: &ApiServer,
    map: &FrontendMap,
    endpoints: &mut [BTreeSet<usize>],
    changes: usize,
) -> Result<Samples> {
    let mut rng = Rng(SEED);
    let mut samples = Samples::default();
    for _ in 0..changes {
        let i = rng.below(endpoints.len());
        let eps = &mut endpoints[i];
        let grow = match eps.len() {
            1 => true,
            ENDPOINT_SLOTS => false,
            _ => rng.below(2) == 0,
        };
        if grow {
            let free: Vec<usize> = (0..ENDPOINT_SLOTS).filter(|j| !eps.contains(j)).collect();
            eps.insert(free[rng.below(free.len())]);
        } else {
            let used: Vec<usize> = eps.iter().copied().collect();
            eps.remove(&used[rng.below(used.len())]);
        }
        let count = eps.len() as u32;
        let key = frontend_key(i);
        server.replace_value(slice(i, eps))?;
        let written = committed(server);
        record(
            &mut samples,
            wait_for(map, &key, |f| f.is_some_and(|f| f.backend_count == count)),
            written,
        );
    }
    Ok(samples)
}

/// `count` new Services (their slices created first, untimed), then their deletion.
fn service_changes(
    server: &ApiServer,
    map: &FrontendMap,
    n: usize,
    count: usize,
) -> Result<(Samples, Samples)> {
    let eps: BTreeSet<usize> = (0..ENDPOINTS).collect();
    let (mut creates, mut deletes) = (Samples::default(), Samples::default());
    for i in n..n + count {
        server.create_value(slice(i, &eps))?;
        server.create_value(service(i))?;
        let written = committed(server);
        let key = frontend_key(i);
        let want = ENDPOINTS as u32;
        record(
            &mut creates,
            wait_for(map, &key, |f| f.is_some_and(|f| f.backend_count == want)),
            written,
        );
    }
    for i in n..n + count {
        server.delete_value("v1", "Service", NAMESPACE, &service_name(i))?;
        let written = committed(server);
        record(
            &mut deletes,
            wait_for(map, &frontend_key(i), |f| f.is_none()),
            written,
        );
        server.delete_value(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            NAMESPACE,
            &slice_name(i),
        )?;
    }
    Ok((creates, deletes))
}

/// When the write just made was committed (see [`ApiServer::last_write_at`] for why not "now").
fn committed(server: &ApiServer) -> Instant {
    server.last_write_at().unwrap_or_else(Instant::now)
}

fn record(samples: &mut Samples, landed: Option<Instant>, written: Instant) {
    match landed {
        Some(at) => samples.ms.push((at - written).as_secs_f64() * 1e3),
        None => samples.timeouts += 1,
    }
}

type FrontendMap = FrontendLookup;

/// The agent's pinned frontend map, opened once and looked up directly (no agent involved).
fn frontend_map(agent: &Agent) -> Result<FrontendMap> {
    Ok(FrontendLookup::open(agent.bpffs())?)
}

/// Spins (with [`CHANGE_POLL`] sleeps) until `done` holds for `key`'s entry; when it first
/// did, or `None` after [`CHANGE_TIMEOUT`].
fn wait_for(
    map: &FrontendMap,
    key: &FrontendKey,
    done: impl Fn(Option<Frontend>) -> bool,
) -> Option<Instant> {
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    loop {
        let Ok(entry) = map.get(key) else {
            return None;
        };
        if done(entry) {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(CHANGE_POLL);
    }
}

fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

fn slice_name(i: usize) -> String {
    format!("svc-{i:05}-bench")
}

/// ClusterIP of Service `i`: 10.96.1.1 onwards, 250 per /24, set explicitly so both sources
/// (API server, manifests) give the same frontends.
fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (1 + i / 250) as u8, (1 + i % 250) as u8)
}

fn frontend_key(i: usize) -> FrontendKey {
    FrontendKey {
        addr: cluster_ip(i).octets(),
        port: SERVICE_PORT,
        proto: PROTO_TCP,
        scope: SCOPE_ANY,
    }
}

/// Endpoint `j` of Service `i`: distinct for every pair (10.128.0.0/9), so each endpoint is its
/// own backend entry, as pod addresses are.
fn endpoint_ip(i: usize, j: usize) -> Ipv4Addr {
    let k = (i * ENDPOINT_SLOTS + j) as u32;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + k)
}

fn service(i: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(i), "namespace": NAMESPACE},
        "spec": {
            "clusterIP": cluster_ip(i).to_string(),
            "selector": {"app": service_name(i)},
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": TARGET_PORT, "protocol": "TCP"}],
        },
    })
}

fn slice(i: usize, endpoints: &BTreeSet<usize>) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(i),
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": service_name(i)},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|&j| json!({
            "addresses": [endpoint_ip(i, j).to_string()],
            "conditions": {"ready": true},
            "nodeName": "node1",
        })).collect::<Vec<_>>(),
    })
}

/// splitmix64: a fixed, dependency-free sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Cumulative `svc_programming_latency_seconds` buckets: (upper bound, count).
struct HistogramDelta {
    buckets: Vec<(f64, u64)>,
    count: u64,
}

impl HistogramDelta {
    fn minus(&self, earlier: &HistogramDelta) -> HistogramDelta {
        HistogramDelta {
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(&(le, a), &(_, b))| (le, a.saturating_sub(b)))
                .collect(),
            count: self.count.saturating_sub(earlier.count),
        }
    }

    /// Prometheus' `histogram_quantile`: linear within the bucket holding the rank.
    fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut lower = (0.0, 0u64);
        for &(le, cum) in &self.buckets {
            if cum as f64 >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let in_bucket = (cum - lower.1) as f64;
                let frac = if in_bucket > 0.0 {
                    (rank - lower.1 as f64) / in_bucket
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * frac);
            }
            lower = (le, cum);
        }
        None
    }
}

fn histogram(t: &Topology, agent: &Agent) -> Result<HistogramDelta> {
    let (code, body) = agent.http_get(t, "/metrics")?;
    ensure!(code == 200, "/metrics answered {code}");
    let name = "svc_programming_latency_seconds";
    let mut buckets = Vec::new();
    let mut count = 0;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(le) = rest
            .strip_prefix("_bucket{le=\"")
            .and_then(|r| r.split('"').next())
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()?
            };
            buckets.push((le, value.unwrap_or_default() as u64));
        } else if rest.starts_with("_count") {
            count = value.unwrap_or_default() as u64;
        }
    }
    ensure!(!buckets.is_empty(), "{name} not in /metrics");
    Ok(HistogramDelta { buckets, count })
}

/// Seconds from `spawned` to the timestamp of the first log line containing `needle`.
/// tracing-subscriber's default timer prints UTC RFC 3339 (`2025-11-26T05:28:19.123456Z`).
fn log_time(log: &str, needle: &str, spawned: SystemTime) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(needle))?;
    let stamp = line.split_whitespace().next()?;
    let time = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    let of_day = h * 3600.0 + m * 60.0 + s;
    let start = spawned.duration_since(UNIX_EPOCH).ok()?.as_secs_f64() % 86_400.0;
    Some((of_day - start).rem_euclid(86_400.0))
}

/// `key=123` in a log line.
fn field(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn proc_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The agent's pid: the process whose command line names its (topology-unique) bpffs directory.
fn agent_pid(bpffs: &Path) -> Option<u32> {
    let want = bpffs.to_str()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_agent = args.first().is_some_and(|a| a.ends_with(b"svc-agent"))
            && args.contains(&want.as_bytes());
        is_agent.then_some(pid)
    })
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Removes a file when dropped (the kubeconfig), failure included.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2} s"))
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "-".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
}

fn print_size(s: &Size) {
    let mut out = String::new();
    let n = s.services;
    let _ = writeln!(
        out,
        "\n{n} Services / {} endpoints (objects created in the fake API server in {:.1} s)",
        n * ENDPOINTS,
        s.setup_s
    );
    let _ = writeln!(
        out,
        "  full sync (from spawn)   maps right  healthz  | log: loaded  listed   synced   writes  | VmRSS   VmHWM"
    );
    for (name, f) in [
        ("API server", Some(&s.kube)),
        ("--manifests", s.manifests.as_ref()),
    ] {
        let Some(f) = f else { continue };
        let _ = writeln!(
            out,
            "  {name:<24} {:>9.2} s {:>6.2} s | {:>9} {:>8} {:>8} {:>8} | {:>7} {:>7}",
            f.maps_right_s,
            f.healthy_s,
            secs(f.loaded_s),
            secs(f.listed_s),
            secs(f.synced_s),
            f.writes.map_or_else(|| "-".into(), |w| w.to_string()),
            mib(f.vm_rss_kib),
            mib(f.vm_hwm_kib),
        );
    }
    let _ = writeln!(
        out,
        "  single changes (ms, API commit → map)    samples     p50     p90     p99     max  timeouts"
    );
    for (name, v) in [
        ("EndpointSlice ±1 endpoint", &s.slice_changes),
        ("Service create", &s.service_creates),
        ("Service delete", &s.service_deletes),
    ] {
        let _ = writeln!(
            out,
            "  {name:<40} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9}",
            v.ms.len(),
            ms(v.quantile(0.5)),
            ms(v.quantile(0.9)),
            ms(v.quantile(0.99)),
            ms(v.quantile(1.0)),
            v.timeouts
        );
    }
    if let Some(h) = &s.histogram {
        let _ = writeln!(
            out,
            "  agent's histogram over the slice changes: {} observations, p50 ≈ {} ms, \
             p99 ≈ {} ms\n    (interpolated in ×2 buckets from {} ms; from receipt of the watch \
             event, so without its delivery)",
            h.count,
            ms(h.quantile(0.5).map(|v| v * 1e3)),
            ms(h.quantile(0.99).map(|v| v * 1e3)),
            h.buckets.first().map_or(0.0, |b| b.0 * 1e3),
        );
    }
    print!("{out}");
}
