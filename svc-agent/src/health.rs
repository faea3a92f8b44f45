//! The agent's health answers, as kube-proxy gives them:
//! - [`ProxyHealth`] and [`serve_proxy_health`]: `/healthz` and `/livez` on
//!   `--healthz-bind-address` (kube-proxy's port 10256), which say whether the agent keeps the
//!   datapath's maps in step with the cluster;
//! - [`HealthServers`]: the `healthCheckNodePort` servers of `externalTrafficPolicy: Local`
//!   Services. External load balancers probe every node and send traffic only to nodes that
//!   answer 200, i.e. those with a local endpoint (the others drop it) whose proxy is healthy.
//!
//! One listener per health-check port on all of the node's addresses; the answer is read from
//! shared state at request time, so a change of endpoints needs no restart of the listener.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use k8s_openapi::api::core::v1::Node;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::{
    metrics::Metrics,
    model::{HealthCheck, ObjectRef},
};

/// The taint the Cluster Autoscaler puts on a node it is about to delete (kube-proxy's
/// `ToBeDeletedTaint`).
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// A moment, on the monotonic clock (for ages) and the wall clock (for reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    mono: Instant,
    wall: SystemTime,
}

impl Stamp {
    fn now() -> Self {
        Self {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct ProxyState {
    /// The maps last matched the objects (kube-proxy's `lastUpdated`).
    last_updated: Stamp,
    /// The oldest change received and not yet written to the maps (kube-proxy's
    /// `oldestPendingQueued`); `None` when the maps are up to date.
    oldest_pending: Option<Stamp>,
    /// The sync loop last went round. Not in kube-proxy (whose sync loop cannot stall without
    /// a pending change): a loop that stops reading events would otherwise never queue one.
    heartbeat: Instant,
    /// The node is neither being deleted nor tainted for deletion.
    node_eligible: bool,
    /// The Node object has been seen (its disappearance then means it was deleted).
    node_seen: bool,
}

/// What `/healthz`, `/livez` and the `healthCheckNodePort` servers report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyStatus {
    /// The maps are in step: no change has waited longer than the timeout, and the sync loop
    /// is running.
    pub healthy: bool,
    /// When the maps last matched the objects.
    pub last_updated: SystemTime,
    pub node_eligible: bool,
}

/// Whether the agent keeps the datapath programmed, by kube-proxy's rules (its
/// `ProxyHealthServer`, kubernetes pkg/proxy/healthcheck/proxy_health.go): unhealthy once a
/// change has been pending for longer than the timeout (kube-proxy: 2 × `syncPeriod`), healthy
/// otherwise, start-up included; `/healthz` is also unhealthy while the node is being deleted.
#[derive(Debug)]
pub struct ProxyHealth {
    timeout: Duration,
    state: Mutex<ProxyState>,
}

impl ProxyHealth {
    /// Starts with the first sync pending (kube-proxy marks itself updated when its sync loop
    /// starts, and the first list of Services queues a change at once).
    pub fn new(timeout: Duration) -> Arc<Self> {
        let now = Stamp::now();
        Arc::new(Self {
            timeout,
            state: Mutex::new(ProxyState {
                last_updated: now,
                oldest_pending: Some(now),
                heartbeat: now.mono,
                node_eligible: true,
                node_seen: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProxyState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A change arrived that the maps do not reflect yet (kube-proxy's `QueuedUpdate`).
    pub fn queued(&self) {
        let mut s = self.lock();
        s.oldest_pending.get_or_insert_with(Stamp::now);
    }

    /// The maps now reflect every change received (kube-proxy's `Updated`).
    pub fn updated(&self) {
        let mut s = self.lock();
        s.oldest_pending = None;
        s.last_updated = Stamp::now();
    }

    /// The sync loop is running.
    pub fn heartbeat(&self) {
        self.lock().heartbeat = Instant::now();
    }

    /// Records whether the node is eligible (kube-proxy's `SyncNode`). `None`: no Node object,
    /// eligible until one has been seen (start-up, `--manifests`), deleted after.
    pub fn sync_node(&self, node: Option<&Node>) {
        let mut s = self.lock();
        s.node_eligible = match node {
            Some(node) => node_eligible(node),
            None => !s.node_seen,
        };
        s.node_seen |= node.is_some();
    }

    /// How often the sync loop must at least go round for [`ProxyHealth::heartbeat`].
    pub fn heartbeat_period(&self) -> Duration {
        (self.timeout / 4).max(Duration::from_millis(50))
    }

    pub fn status(&self) -> ProxyStatus {
        let s = *self.lock();
        status_at(&s, Instant::now(), self.timeout)
    }
}

/// kube-proxy's `isHealthy`, plus the heartbeat.
fn status_at(s: &ProxyState, now: Instant, timeout: Duration) -> ProxyStatus {
    let late = |since: Instant| now.saturating_duration_since(since) >= timeout;
    let pending_late = s.oldest_pending.is_some_and(|p| late(p.mono));
    ProxyStatus {
        healthy: !pending_late && !late(s.heartbeat),
        last_updated: s.last_updated.wall,
        node_eligible: s.node_eligible,
    }
}

/// kube-proxy's node eligibility: not being deleted, not tainted for deletion.
pub fn node_eligible(node: &Node) -> bool {
    node.metadata.deletion_timestamp.is_none()
        && !node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
}

/// A time as Go's `time.Time.String()` writes it (what kube-proxy's `%q` prints), without the
/// monotonic-clock suffix: `2006-01-02 15:04:05.123456789 +0000 UTC`.
pub fn go_time(t: SystemTime) -> String {
    use k8s_openapi::jiff::Timestamp;
    let Ok(ts) = Timestamp::try_from(t) else {
        return "0001-01-01 00:00:00 +0000 UTC".into();
    };
    let nanos = ts.subsec_nanosecond();
    let frac = if nanos > 0 {
        format!(".{nanos:09}").trim_end_matches('0').to_string()
    } else {
        String::new()
    };
    format!("{}{frac} +0000 UTC", ts.strftime("%Y-%m-%d %H:%M:%S"))
}

/// The body and status of `/healthz` (`with_node`) or `/livez`, byte for byte as kube-proxy
/// writes them. Healthy: 200 and `lastUpdated` = `currentTime` (kube-proxy keeps that quirk for
/// compatibility); unhealthy: 503 and the last time the maps were up to date.
pub fn proxy_answer(status: ProxyStatus, now: SystemTime, with_node: bool) -> (u16, String) {
    let healthy = status.healthy && (!with_node || status.node_eligible);
    let last = if healthy { now } else { status.last_updated };
    let (last, now) = (go_time(last), go_time(now));
    let body = if with_node {
        format!(
            r#"{{"lastUpdated": "{last}","currentTime": "{now}", "nodeEligible": {}}}"#,
            status.node_eligible
        )
    } else {
        format!(r#"{{"lastUpdated": "{last}","currentTime": "{now}"}}"#)
    };
    (if healthy { 200 } else { 503 }, body)
}

type ProxyShared = (Arc<ProxyHealth>, Arc<Metrics>);

fn json_response(code: u16, body: String) -> axum::response::Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn healthz(State((health, metrics)): State<ProxyShared>) -> axum::response::Response {
    let (code, body) = proxy_answer(health.status(), SystemTime::now(), true);
    metrics.proxy_healthz(code);
    json_response(code, body)
}

async fn livez(State((health, metrics)): State<ProxyShared>) -> axum::response::Response {
    let (code, body) = proxy_answer(health.status(), SystemTime::now(), false);
    metrics.proxy_livez(code);
    json_response(code, body)
}

/// Serves `/healthz` and `/livez` on `addr` (`--healthz-bind-address`) until the runtime stops.
pub async fn serve_proxy_health(
    addr: SocketAddr,
    health: Arc<ProxyHealth>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state((health, metrics));
    crate::metrics::spawn_server(
        addr,
        app,
        "--healthz-bind-address",
        "kube-proxy's /healthz and /livez",
    )
    .await
}

/// What one health-check port reports.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    service: ObjectRef,
    local_endpoints: usize,
}

/// The running health-check listeners.
pub struct HealthServers {
    state: Arc<RwLock<BTreeMap<u16, Entry>>>,
    listeners: BTreeMap<u16, JoinHandle<()>>,
    /// The agent's own health, reported as `serviceProxyHealthy`.
    proxy: Arc<ProxyHealth>,
}

impl HealthServers {
    pub fn new(proxy: Arc<ProxyHealth>) -> Self {
        Self {
            state: Arc::default(),
            listeners: BTreeMap::new(),
            proxy,
        }
    }

    /// Whether a health-check port is served for `service`.
    pub fn serves(&self, service: &ObjectRef) -> bool {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|e| &e.service == service)
    }

    /// Serves exactly `checks`: new ports start listening, vanished ones stop, counts update.
    pub async fn sync(&mut self, checks: &[HealthCheck]) {
        let wanted: BTreeMap<u16, Entry> = checks
            .iter()
            .map(|c| {
                (
                    c.port,
                    Entry {
                        service: c.service.clone(),
                        local_endpoints: c.local_endpoints,
                    },
                )
            })
            .collect();
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = wanted.clone();
        self.listeners.retain(|port, task| {
            let keep = wanted.contains_key(port);
            if !keep {
                task.abort();
                info!(port, "health-check server stopped");
            }
            keep
        });
        for port in wanted.keys() {
            if self.listeners.contains_key(port) {
                continue;
            }
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, *port));
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    let app = Router::new()
                        .route("/", get(answer))
                        .route("/healthz", get(answer))
                        .with_state((self.state.clone(), *port, self.proxy.clone()));
                    info!(port, "health-check server listening");
                    self.listeners.insert(
                        *port,
                        tokio::spawn(async move {
                            if let Err(e) = axum::serve(listener, app).await {
                                warn!("health-check server stopped: {e}");
                            }
                        }),
                    );
                }
                Err(e) => warn!(port, "cannot serve healthCheckNodePort: {e}"),
            }
        }
    }
}

type Shared = (Arc<RwLock<BTreeMap<u16, Entry>>>, u16, Arc<ProxyHealth>);

/// kube-proxy's answer (pkg/proxy/healthcheck/service_health.go): `{"service":{"namespace":…,
/// "name":…},"localEndpoints":N,"serviceProxyHealthy":…}`, 200 with local endpoints and a
/// healthy proxy ([`ProxyHealth`], the node's eligibility aside, as kube-proxy's `IsHealthy`),
/// 503 otherwise; the endpoint count also goes in `X-Load-Balancing-Endpoint-Weight`.
async fn answer(State((state, port, proxy)): State<Shared>) -> axum::response::Response {
    let entry = state
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&port)
        .cloned();
    let Some(entry) = entry else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let healthy = proxy.status().healthy;
    let body = serde_json::json!({
        "service": {"namespace": entry.service.namespace, "name": entry.service.name},
        "localEndpoints": entry.local_endpoints,
        "serviceProxyHealthy": healthy,
    })
    .to_string();
    let code = if entry.local_endpoints > 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (
                header::HeaderName::from_static("x-load-balancing-endpoint-weight"),
                entry.local_endpoints.to_string(),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{
        api::core::v1::{NodeSpec, Taint},
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    };

    fn state(pending_for: Option<u64>, beat_ago: u64, eligible: bool) -> (ProxyState, Instant) {
        let start = Instant::now();
        let now = start + Duration::from_secs(1000);
        let stamp = |ago: u64| Stamp {
            mono: now - Duration::from_secs(ago),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        (
            ProxyState {
                last_updated: stamp(100),
                oldest_pending: pending_for.map(stamp),
                heartbeat: now - Duration::from_secs(beat_ago),
                node_eligible: eligible,
                node_seen: true,
            },
            now,
        )
    }

    #[test]
    fn a_change_pending_longer_than_the_timeout_is_unhealthy() {
        let timeout = Duration::from_secs(60);
        for (pending, beat, healthy) in [
            (None, 0, true),
            // kube-proxy: nothing pending, however long ago the last sync (no change to make).
            (None, 59, true),
            (Some(59), 0, true),
            (Some(60), 0, false),
            (Some(3600), 0, false),
            // The sync loop has stopped going round.
            (None, 60, false),
        ] {
            let (s, now) = state(pending, beat, true);
            assert_eq!(
                status_at(&s, now, timeout).healthy,
                healthy,
                "pending {pending:?}, heartbeat {beat}s ago"
            );
        }
    }

    #[test]
    fn healthz_adds_the_node_and_livez_does_not() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_764_554_532_123_456_000);
        let last = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_554_000);
        let status = |healthy, node_eligible| ProxyStatus {
            healthy,
            last_updated: last,
            node_eligible,
        };
        assert_eq!(
            proxy_answer(status(true, true), now, true),
            (
                200,
                r#"{"lastUpdated": "2025-12-01 02:02:12.123456 +0000 UTC","currentTime": "2025-12-01 02:02:12.123456 +0000 UTC", "nodeEligible": true}"#
                    .into()
            )
        );
        let (code, body) = proxy_answer(status(true, false), now, true);
        assert_eq!(code, 503);
        assert!(
            body.starts_with(r#"{"lastUpdated": "2025-12-01 01:53:20 +0000 UTC","#),
            "{body}"
        );
        assert!(body.ends_with(r#""nodeEligible": false}"#), "{body}");
        assert_eq!(proxy_answer(status(true, false), now, false).0, 200);
        let (code, body) = proxy_answer(status(false, true), now, false);
        assert_eq!(code, 503);
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(json["lastUpdated"], "2025-12-01 01:53:20 +0000 UTC");
        assert_eq!(json.as_object().map(|o| o.len()), Some(2));
    }

    #[test]
    fn a_node_being_deleted_or_tainted_for_deletion_is_not_eligible() {
        let mut node = Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(node_eligible(&node));
        node.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: TO_BE_DELETED_TAINT.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(!node_eligible(&node));
        node.spec = None;
        node.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert!(!node_eligible(&node));
        let health = ProxyHealth::new(Duration::from_secs(60));
        // No Node object yet (start-up, or --manifests): eligible, as kube-proxy starts.
        health.sync_node(None);
        assert!(health.status().node_eligible);
        health.sync_node(Some(&node));
        assert!(!health.status().node_eligible);
        node.metadata.deletion_timestamp = None;
        health.sync_node(Some(&node));
        assert!(health.status().node_eligible);
        // Seen, then gone: deleted.
        health.sync_node(None);
        assert!(!health.status().node_eligible);
    }
}
