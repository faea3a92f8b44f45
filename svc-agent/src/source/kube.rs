//! The API-server source: kube-rs watchers for Services, EndpointSlices and this node's Node.
//!
//! Each watcher runs in its own task and sends [`Delta`]s to the agent's main loop, which
//! applies them to its [`svc_core::store::Store`].
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client,
};
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use svc_core::store::{Change, Delta};

/// Starts the three watchers, which send their deltas on `tx` (as the receiver's event type)
/// until it is closed.
pub fn start<E: From<Delta> + Send + 'static>(
    client: Client,
    node_name: &str,
    tx: mpsc::UnboundedSender<E>,
) {
    spawn_watch(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        "Service",
        tx.clone(),
        Delta::Services,
    );
    spawn_watch(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
        "EndpointSlice",
        tx.clone(),
        Delta::Slices,
    );
    spawn_watch(
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        "Node",
        tx,
        Delta::Node,
    );
}

fn spawn_watch<K, E>(
    api: Api<K>,
    config: watcher::Config,
    kind: &'static str,
    tx: mpsc::UnboundedSender<E>,
    wrap: fn(Change<K>, Instant) -> Delta,
) where
    E: From<Delta> + Send + 'static,
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, config).default_backoff().boxed();
        let mut buffer: Option<Vec<K>> = None;
        while let Some(event) = stream.next().await {
            let delta = match event {
                Ok(watcher::Event::Init) => {
                    buffer = Some(Vec::new());
                    continue;
                }
                Ok(watcher::Event::InitApply(obj)) => {
                    buffer.get_or_insert_with(Vec::new).push(obj);
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    let all = buffer.take().unwrap_or_default();
                    info!(kind, objects = all.len(), "list complete");
                    wrap(Change::Resync(all), Instant::now())
                }
                Ok(watcher::Event::Apply(obj)) => wrap(Change::Upsert(obj), Instant::now()),
                Ok(watcher::Event::Delete(obj)) => wrap(Change::Delete(obj), Instant::now()),
                Err(e) => {
                    warn!(kind, "watch error (retrying with backoff): {e}");
                    Delta::WatchError {
                        kind,
                        error: e.to_string(),
                    }
                }
            };
            if tx.send(E::from(delta)).is_err() {
                return;
            }
        }
    });
}
