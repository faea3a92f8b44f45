//! `healthCheckNodePort` servers for `externalTrafficPolicy: Local` Services, answering as
//! kube-proxy's do: external load balancers probe every node and send traffic only to nodes
//! that answer 200, i.e. those with a local endpoint (the others drop it).
//!
//! One listener per health-check port on all of the node's addresses; the answer is read from
//! shared state at request time, so a change of endpoints needs no restart of the listener.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, RwLock},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::model::{HealthCheck, ObjectRef};

/// What one health-check port reports.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    service: ObjectRef,
    local_endpoints: usize,
}

/// The running health-check listeners.
#[derive(Default)]
pub struct HealthServers {
    state: Arc<RwLock<BTreeMap<u16, Entry>>>,
    listeners: BTreeMap<u16, JoinHandle<()>>,
}

impl HealthServers {
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
                        .with_state((self.state.clone(), *port));
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

type Shared = (Arc<RwLock<BTreeMap<u16, Entry>>>, u16);

/// kube-proxy's answer: `{"service":{"namespace":…,"name":…},"localEndpoints":N,
/// "serviceProxyHealthy":true}`, 200 with local endpoints, 503 without.
async fn answer(State((state, port)): State<Shared>) -> impl IntoResponse {
    let entry = state
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&port)
        .cloned();
    let Some(entry) = entry else {
        return (StatusCode::NOT_FOUND, String::new());
    };
    let body = serde_json::json!({
        "service": {"namespace": entry.service.namespace, "name": entry.service.name},
        "localEndpoints": entry.local_endpoints,
        "serviceProxyHealthy": true,
    })
    .to_string();
    let code = if entry.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}
