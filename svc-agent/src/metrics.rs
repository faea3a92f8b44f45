//! Prometheus metrics and `/healthz`, served on `--metrics-bind-address` (alias
//! `--metrics-addr`): ours, named `svc_*`, and kube-proxy's `kubeproxy_*` for what the agent
//! does the same job for (kubernetes pkg/proxy/metrics/metrics.go: names, help and buckets), so
//! dashboards and alerts written for kube-proxy keep working.
//!
//! Datapath counters are read from the pinned `SVC_STATS` map at scrape time, so they are
//! exact and cost nothing between scrapes.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use svc_common::{stat_index, ALL_HOOKS, ALL_REASONS};
use tracing::{info, warn};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabel {
    pub kind: String,
    /// Field path with list indices removed (`spec.ports[].port`), to bound cardinality.
    pub field: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PacketLabel {
    pub hook: String,
    pub reason: &'static str,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Seconds from receiving an object change to the maps reflecting it.
    pub programming_latency: Histogram,
    /// Map writes performed (a restart that finds nothing to change adds 0).
    pub map_writes: Counter,
    /// Map writes that failed.
    pub sync_errors: Counter,
    /// Watch errors by kind (the watcher retries with backoff).
    pub watch_errors: Family<KindLabel, Counter>,
    /// Objects (or parts of them) refused, by kind and field.
    pub objects_skipped: Family<SkipLabel, Counter>,
    /// Services not programmed (or held as programmed before) because they do not fit into
    /// the service maps or over the per-Service budget (`svc_core::budget`), now.
    pub services_refused: Gauge,
    /// Entries in each service map and its capacity: the fill ratio is their quotient. The
    /// LRU maps (conntrack, affinity, socket, fragments) are counted by each GC pass.
    pub map_entries: Family<MapLabel, Gauge>,
    pub map_capacity: Family<MapLabel, Gauge>,
    /// `map_entries / map_capacity` of the LRU maps, as of the last GC pass.
    pub map_fill_ratio: Family<MapLabel, Gauge<f64, AtomicU64>>,
    /// Conntrack garbage collection: passes, entries read, entries deleted as expired.
    pub ct_gc_passes: Counter,
    pub ct_gc_scanned: Counter,
    pub ct_gc_removed: Counter,
    /// Wall time of the last pass, in seconds.
    pub ct_gc_last_pass_seconds: Gauge<f64, AtomicU64>,
    /// Passes or flushes that failed (map read or delete errors).
    pub ct_gc_errors: Counter,
    /// UDP conntrack entries deleted because their endpoint left its Service.
    pub ct_flushed: Counter,
    /// Session-affinity entries deleted because their endpoint or frontend went away.
    pub affinity_flushed: Counter,
    packets: Family<PacketLabel, Gauge>,
    /// kube-proxy's `kubeproxy_sync_proxy_rules_duration_seconds`: one plan and its writes.
    pub kp_sync_duration: Histogram,
    /// kube-proxy's `kubeproxy_network_programming_duration_seconds`: from an EndpointSlice's
    /// `endpoints.kubernetes.io/last-change-trigger-time` to the maps reflecting it.
    pub kp_network_programming: Histogram,
    /// kube-proxy's `kubeproxy_sync_proxy_rules_last_timestamp_seconds` (Unix time).
    pub kp_last_sync: Gauge<f64, AtomicU64>,
    /// kube-proxy's `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds` (Unix time).
    pub kp_last_queued: Gauge<f64, AtomicU64>,
    /// kube-proxy's `kubeproxy_proxy_healthz_total` / `kubeproxy_proxy_livez_total` by code.
    kp_healthz: Family<CodeLabel, Counter>,
    kp_livez: Family<CodeLabel, Counter>,
    /// Set once the datapath is loaded and every source has completed its first sync.
    pub ready: AtomicBool,
    bpffs: PathBuf,
}

impl Metrics {
    pub fn new(bpffs: PathBuf) -> Arc<Self> {
        let m = Self {
            registry: Mutex::new(Registry::default()),
            programming_latency: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 18),
            ),
            map_writes: Counter::default(),
            sync_errors: Counter::default(),
            watch_errors: Family::default(),
            objects_skipped: Family::default(),
            services_refused: Gauge::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            map_fill_ratio: Family::default(),
            ct_gc_passes: Counter::default(),
            ct_gc_scanned: Counter::default(),
            ct_gc_removed: Counter::default(),
            ct_gc_last_pass_seconds: Gauge::default(),
            ct_gc_errors: Counter::default(),
            ct_flushed: Counter::default(),
            affinity_flushed: Counter::default(),
            packets: Family::default(),
            kp_sync_duration: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
            ),
            kp_network_programming: Histogram::new(network_programming_buckets()),
            kp_last_sync: Gauge::default(),
            kp_last_queued: Gauge::default(),
            kp_healthz: Family::default(),
            kp_livez: Family::default(),
            ready: AtomicBool::new(false),
            bpffs,
        };
        {
            let mut root = m.registry.lock().expect("fresh mutex");
            root.register(
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                m.kp_sync_duration.clone(),
            );
            root.register(
                "kubeproxy_network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                m.kp_network_programming.clone(),
            );
            root.register(
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
                m.kp_last_sync.clone(),
            );
            root.register(
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
                m.kp_last_queued.clone(),
            );
            root.register(
                "kubeproxy_proxy_healthz",
                "Cumulative proxy healthz HTTP status",
                m.kp_healthz.clone(),
            );
            root.register(
                "kubeproxy_proxy_livez",
                "Cumulative proxy livez HTTP status",
                m.kp_livez.clone(),
            );
            let r = root.sub_registry_with_prefix("svc");
            r.register(
                "programming_latency_seconds",
                "Time from an object change reaching the agent to the maps reflecting it",
                m.programming_latency.clone(),
            );
            r.register(
                "map_writes",
                "BPF map writes performed",
                m.map_writes.clone(),
            );
            r.register(
                "sync_errors",
                "BPF map writes that failed",
                m.sync_errors.clone(),
            );
            r.register(
                "watch_errors",
                "API watch errors by kind",
                m.watch_errors.clone(),
            );
            r.register(
                "objects_skipped",
                "Objects or parts of objects refused, by kind and field",
                m.objects_skipped.clone(),
            );
            r.register(
                "services_refused",
                "Services not programmed, or kept as programmed before, because they do not fit \
                 into the service maps or exceed the per-Service budget",
                m.services_refused.clone(),
            );
            r.register(
                "map_entries",
                "Entries in each map (LRU maps as of the last conntrack GC pass)",
                m.map_entries.clone(),
            );
            r.register(
                "map_capacity",
                "Capacity of each map",
                m.map_capacity.clone(),
            );
            r.register(
                "map_fill_ratio",
                "Entries over capacity of each LRU map, as of the last conntrack GC pass",
                m.map_fill_ratio.clone(),
            );
            r.register(
                "conntrack_gc_passes",
                "Conntrack garbage-collection passes",
                m.ct_gc_passes.clone(),
            );
            r.register(
                "conntrack_gc_scanned_entries",
                "Conntrack entries read by garbage-collection passes",
                m.ct_gc_scanned.clone(),
            );
            r.register(
                "conntrack_gc_removed_entries",
                "Conntrack entries deleted as expired by garbage-collection passes",
                m.ct_gc_removed.clone(),
            );
            r.register(
                "conntrack_gc_last_pass_seconds",
                "Wall time of the last conntrack garbage-collection pass",
                m.ct_gc_last_pass_seconds.clone(),
            );
            r.register(
                "conntrack_gc_errors",
                "Conntrack garbage-collection passes or flushes that failed",
                m.ct_gc_errors.clone(),
            );
            r.register(
                "conntrack_flushed_entries",
                "UDP conntrack entries deleted because their endpoint left its Service",
                m.ct_flushed.clone(),
            );
            r.register(
                "affinity_flushed_entries",
                "Session-affinity entries deleted because their endpoint or frontend went away",
                m.affinity_flushed.clone(),
            );
            r.register(
                "datapath_packets",
                "Packets seen by the datapath, by hook and reason (from the pinned SVC_STATS map)",
                m.packets.clone(),
            );
        }
        Arc::new(m)
    }

    /// A plan that took `took` has brought the maps in step with the objects.
    pub fn synced(&self, took: Duration) {
        self.kp_sync_duration.observe(took.as_secs_f64());
        self.kp_last_sync.set(unix_seconds(SystemTime::now()));
    }

    /// A change was received that the maps do not reflect yet.
    pub fn queued(&self) {
        self.kp_last_queued.set(unix_seconds(SystemTime::now()));
    }

    /// The maps now reflect EndpointSlice changes triggered at `triggers`
    /// (`endpoints.kubernetes.io/last-change-trigger-time`).
    pub fn network_programmed(&self, triggers: &[SystemTime]) {
        let now = SystemTime::now();
        for t in triggers {
            // A trigger time ahead of this node's clock (clock skew) counts as 0, not negative.
            let took = now.duration_since(*t).unwrap_or_default();
            self.kp_network_programming.observe(took.as_secs_f64());
        }
    }

    pub fn proxy_healthz(&self, code: u16) {
        self.kp_healthz.get_or_create(&code_label(code)).inc();
    }

    pub fn proxy_livez(&self, code: u16) {
        self.kp_livez.get_or_create(&code_label(code)).inc();
    }

    /// Records how full an LRU map is.
    pub fn set_fill(&self, fill: crate::dataplane::MapFill) {
        let label = MapLabel { map: fill.map };
        self.map_entries
            .get_or_create(&label)
            .set(fill.entries as i64);
        self.map_capacity
            .get_or_create(&label)
            .set(i64::from(fill.capacity));
        self.map_fill_ratio
            .get_or_create(&label)
            .set(fill.entries as f64 / f64::from(fill.capacity.max(1)));
    }

    /// Counts a refused object or field (`Service default/web`, `spec.ports[0].port`).
    pub fn skipped(&self, object: &str, field: &str) {
        let kind = object
            .split_whitespace()
            .next()
            .unwrap_or("unknown")
            .to_string();
        let mut f = String::with_capacity(field.len());
        let mut in_index = false;
        for c in field.chars() {
            match c {
                '[' => {
                    in_index = true;
                    f.push('[');
                }
                ']' => {
                    in_index = false;
                    f.push(']');
                }
                _ if in_index => {}
                _ => f.push(c),
            }
        }
        self.objects_skipped
            .get_or_create(&SkipLabel { kind, field: f })
            .inc();
    }

    fn refresh_packets(&self) {
        // Before the agent pinned its maps there is nothing to report yet.
        let Ok(stats) = crate::dataplane::read::read_stats(&self.bpffs) else {
            return;
        };
        for hook in ALL_HOOKS {
            for (reason, name) in ALL_REASONS {
                if let Some(per_cpu) = stats.get(stat_index(hook, reason) as usize) {
                    let total: u64 = per_cpu.iter().sum();
                    self.packets
                        .get_or_create(&PacketLabel {
                            hook: hook.name().to_string(),
                            reason: name,
                        })
                        .set(total as i64);
                }
            }
        }
    }

    /// The text `/metrics` serves, for other modules' tests.
    #[cfg(test)]
    pub fn render_for_tests(&self) -> String {
        self.render()
    }

    fn render(&self) -> String {
        self.refresh_packets();
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            warn!("encoding metrics: {e}");
        }
        out
    }
}

fn code_label(code: u16) -> CodeLabel {
    CodeLabel {
        code: if code == 200 { "200" } else { "503" },
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// kube-proxy's buckets for network programming latency: 0, 0.25 s, 0.5 s, 1–59 s by 1 s,
/// 60–115 s by 5 s, 2–5 min by 30 s.
fn network_programming_buckets() -> Vec<f64> {
    let linear =
        |start: f64, width: f64, count: u32| (0..count).map(move |i| start + width * f64::from(i));
    std::iter::once(0.0)
        .chain(linear(0.25, 0.25, 2))
        .chain(linear(1.0, 1.0, 59))
        .chain(linear(60.0, 5.0, 12))
        .chain(linear(120.0, 30.0, 7))
        .collect()
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

/// The health route: 200 once the first full sync has been programmed, 503 before. The
/// DaemonSet's probes use it (deploy/svc-lb.yaml, checked by tests/tests/deploy_manifests.rs).
pub const HEALTHZ_PATH: &str = "/healthz";

async fn healthz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not synced yet\n")
    }
}

/// Serves `/metrics` and `/healthz` on `addr` (`--metrics-bind-address`) until the runtime
/// stops.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<()> {
    let app = Router::new()
        .route("/metrics", get(self::metrics))
        .route(HEALTHZ_PATH, get(healthz))
        .with_state(metrics);
    spawn_server(addr, app, "--metrics-bind-address", "/metrics and /healthz").await
}

/// Binds `addr` (the address of `flag`) and serves `app` on it from a task of its own until
/// the runtime stops; `what` names the routes in the logs.
pub async fn spawn_server(addr: SocketAddr, app: Router, flag: &str, what: &str) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {flag} {addr}"))?;
    info!(%addr, "serving {what}");
    let what = what.to_string();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!("server of {what} stopped: {e}");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_fields_lose_their_indices() {
        let m = Metrics::new(PathBuf::from("/nonexistent"));
        m.skipped("Service default/web", "spec.ports[3].port");
        m.skipped("Service default/api", "spec.ports[0].port");
        let text = m.render();
        assert!(
            text.contains(
                "svc_objects_skipped_total{kind=\"Service\",field=\"spec.ports[].port\"} 2"
            ),
            "{text}"
        );
    }

    #[test]
    fn kube_proxy_metrics_keep_their_names_beside_ours() {
        let m = Metrics::new(PathBuf::from("/nonexistent"));
        m.queued();
        m.synced(Duration::from_millis(3));
        m.network_programmed(&[SystemTime::now() - Duration::from_secs(2)]);
        m.proxy_healthz(503);
        let text = m.render();
        for line in [
            "kubeproxy_sync_proxy_rules_duration_seconds_count 1",
            "kubeproxy_network_programming_duration_seconds_count 1",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"2.0\"} 0",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"3.0\"} 1",
            "kubeproxy_proxy_healthz_total{code=\"503\"} 1",
            "svc_map_writes_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
        for name in [
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds ",
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds ",
        ] {
            let value: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} not in:\n{text}"));
            assert!(value > 1.7e9, "{name}{value}");
        }
        let buckets = network_programming_buckets();
        assert_eq!(buckets.len(), 1 + 2 + 59 + 12 + 7);
        assert_eq!(buckets.last(), Some(&300.0));
    }
}
