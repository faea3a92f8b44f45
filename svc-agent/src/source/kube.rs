//! The API-server source: kube-rs watchers for Services, EndpointSlices and this node's Node.
//!
//! Each watcher runs in its own task and sends [`Delta`]s to the agent's main loop, which
//! applies them to its [`svc_core::store::Store`]. Objects are made slim as they arrive, before
//! a list is buffered: Services become [`SlimService`]s and EndpointSlices [`SlimSlice`]s, with
//! only the fields the model reads and repeated names (node, zone, port, type) shared within
//! the watcher, so the full objects (managedFields, annotations, targetRefs…) never pile up,
//! not even during a list of the whole cluster.
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

use svc_core::model::{Interner, SlimService, SlimSlice};
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
        slim_with_names(SlimService::keyed),
        Delta::Services,
    );
    spawn_watch(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
        "EndpointSlice",
        tx.clone(),
        slim_with_names(|slice: EndpointSlice, names: &mut Interner| {
            SlimSlice::keyed(&slice, names)
        }),
        Delta::Slices,
    );
    spawn_watch(
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        "Node",
        tx,
        Some,
        Delta::Node,
    );
}

/// `slim` with names shared across the objects of one watcher; names no object uses any
/// more (nodes, zones that are gone) are forgotten now and then.
fn slim_with_names<K, T>(
    slim: impl Fn(K, &mut Interner) -> Option<T> + Send + 'static,
) -> impl FnMut(K) -> Option<T> + Send + 'static {
    let mut names = Interner::default();
    let mut since_prune = 0usize;
    move |obj| {
        since_prune += 1;
        if since_prune >= PRUNE_EVERY && names.len() > PRUNE_ABOVE {
            names.prune();
            since_prune = 0;
        }
        slim(obj, &mut names)
    }
}

/// A watcher's shared names are pruned after this many objects…
const PRUNE_EVERY: usize = 100_000;
/// …when it holds more than this many (a cluster's node, zone and port names).
const PRUNE_ABOVE: usize = 1_000;

/// Watches `api`, maps each object with `slim` as it arrives (`None`: dropped), and sends the
/// changes wrapped by `wrap`.
fn spawn_watch<K, T, E>(
    api: Api<K>,
    config: watcher::Config,
    kind: &'static str,
    tx: mpsc::UnboundedSender<E>,
    mut slim: impl FnMut(K) -> Option<T> + Send + 'static,
    wrap: fn(Change<T>, Instant) -> Delta,
) where
    T: Send + 'static,
    E: From<Delta> + Send + 'static,
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, config).default_backoff().boxed();
        let mut buffer: Option<Vec<T>> = None;
        while let Some(event) = stream.next().await {
            let delta = match event {
                Ok(watcher::Event::Init) => {
                    buffer = Some(Vec::new());
                    continue;
                }
                Ok(watcher::Event::InitApply(obj)) => {
                    buffer.get_or_insert_with(Vec::new).extend(slim(obj));
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    let all = buffer.take().unwrap_or_default();
                    info!(kind, objects = all.len(), "list complete");
                    wrap(Change::Resync(all), Instant::now())
                }
                Ok(watcher::Event::Apply(obj)) => match slim(obj) {
                    Some(obj) => wrap(Change::Upsert(obj), Instant::now()),
                    None => continue,
                },
                Ok(watcher::Event::Delete(obj)) => match slim(obj) {
                    Some(obj) => wrap(Change::Delete(obj), Instant::now()),
                    None => continue,
                },
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
