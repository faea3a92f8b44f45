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

// What each module owns (see its first lines): measure.rs the full syncs and timed changes of
// one size; objects.rs the Services and EndpointSlices written; agent_stats.rs what is read
// back from the agent (latency histogram, log, memory).
mod agent_stats;
mod measure;
mod objects;

use agent_stats::*;
use measure::*;
use objects::*;

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
