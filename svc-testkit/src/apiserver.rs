//! A fake Kubernetes API server for tests: the real REST protocol (lists with pagination,
//! chunked watch streams with resume, bookmarks and 410 Expired, `Status` errors, discovery)
//! for Services, Endpoints, EndpointSlices and Nodes, served in-process so `svc-agent` (kube-rs
//! watcher + reflector) and `kubectl` talk to it exactly as to a cluster, with fault injection
//! a real cluster cannot give on demand.
//!
//! # Layout
//! - [`ApiServer`] (this file): the test-facing handle — start on a caller-bound listener,
//!   synchronous object operations, fault injection, request counters. Its server thread runs
//!   a current-thread tokio runtime with an accept loop and one task per connection
//!   (hyper HTTP/1.1).
//! - `store`: objects, the global resourceVersion, the bounded event history, list snapshots
//!   for `continue`, and what the server does to objects on write (metadata, Service
//!   defaulting and ClusterIP/NodePort allocation).
//! - `http`: routing, discovery documents, handlers and watch streams.
//!
//! # Network safety
//! The server never binds anything itself: it serves the `std::net::TcpListener` it is given.
//! Network tests bind it inside a namespace they created (a thread from
//! [`crate::topology::Topology::run_in`] binds `172.18.0.1:0` in the underlay namespace; the
//! socket keeps that namespace whichever thread serves it); protocol tests bind `127.0.0.1:0`.
//!
//! # Protocol as served
//! - One global resourceVersion (a decimal string), bumped by every write; objects carry
//!   `uid`, `creationTimestamp`, `generation`, `resourceVersion`. GET and watch events return
//!   objects with `kind`/`apiVersion`; list items have neither (as the real server).
//! - `GET` collection: list; `limit` + `continue` page through a snapshot taken by the first
//!   page (every page reports the first page's RV; an evicted snapshot's token gets 410).
//!   `resourceVersion`/`resourceVersionMatch` on lists are accepted and ignored: lists are
//!   always served at the latest RV, which satisfies every `NotOlderThan` request.
//! - `?watch=true`: 200, `application/json`, chunked, one `{"type","object"}` line per event.
//!   `resourceVersion` absent or `"0"`, or `sendInitialEvents=true`: ADDED for every current
//!   object first (then, for `sendInitialEvents`, a BOOKMARK annotated
//!   `k8s.io/initial-events-end: "true"`). Otherwise events after that RV are replayed from the
//!   history ([`Options::history_cap`] events); an RV older than the history gets one ERROR
//!   event with a 410 `Expired` `Status` and the stream ends. `allowWatchBookmarks=true` gets a
//!   BOOKMARK every [`Options::bookmark_interval`]; `timeoutSeconds` ends the stream cleanly.
//!   Selector-filtered watches turn modifications that enter or leave the selection into
//!   ADDED/DELETED, as the real watch cache does.
//! - Writes: `POST` (201; 409 AlreadyExists), `PUT` (404 if missing; 409 Conflict when a
//!   given `resourceVersion` is stale), `PATCH` (merge patch, server-side apply treated as
//!   create-or-merge, and the subset of strategic merge patch `kubectl apply` sends for these
//!   kinds), `DELETE` (returns the object). `/status` subresources take only `status`.
//!   Services get the API server's defaults and a ClusterIP from 10.96.0.0/16 and NodePorts
//!   from 30000-32767 when not given; a taken or out-of-range one is 422 Invalid.

mod http;
mod store;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use store::Store;
pub use store::{ApiError, Resource, NODE_PORT_RANGE, SERVICE_CIDR, SERVICE_CIDR6};

/// Tunables of an [`ApiServer`]; the defaults suit tests.
#[derive(Clone, Debug)]
pub struct Options {
    /// How often a watch that allowed bookmarks gets a BOOKMARK. Real servers send one about
    /// every minute; tests want to see them quickly. Default 1 s.
    pub bookmark_interval: Duration,
    /// Events kept for watch resumption; a resume from before the oldest kept event gets 410
    /// Expired. Bounds memory. Default 10 000.
    pub history_cap: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bookmark_interval: Duration::from_secs(1),
            history_cap: 10_000,
        }
    }
}

/// Requests served for one resource since the server started (see [`ApiServer::requests`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// List requests without a `continue` token: each is a (re)list from scratch.
    pub lists: u64,
    /// List requests including continuation pages.
    pub list_pages: u64,
    /// Watch requests (including those answered with 410).
    pub watches: u64,
    /// Watch streams open right now.
    pub open_watches: u64,
}

/// Per-resource request counters, updated by the HTTP handlers.
#[derive(Default)]
pub(crate) struct ResourceCounts {
    lists: AtomicU64,
    list_pages: AtomicU64,
    watches: AtomicU64,
    open_watches: AtomicU64,
}

/// Per-connection state the handlers update: whether it carries a watch right now.
#[derive(Default)]
pub(crate) struct ConnState {
    watches: AtomicUsize,
}

/// A live connection, as fault injection sees it.
struct ConnEntry {
    abort: tokio::task::AbortHandle,
    /// Set before aborting to make the close a TCP RST (see [`ResettingStream`]).
    reset: Arc<AtomicBool>,
    state: Arc<ConnState>,
}

/// State shared by the server thread and the test-facing handle.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// The store's RV after each write; watch streams wait on it.
    changed: watch::Sender<u64>,
    /// When the latest write was committed and watch streams were woken (see
    /// [`ApiServer::last_write_at`]).
    last_write: Mutex<Option<Instant>>,
    /// Epoch bumped by [`ApiServer::expire_watches`]; open watch streams then send 410.
    control: watch::Sender<u64>,
    conns: Mutex<HashMap<u64, ConnEntry>>,
    next_conn: AtomicU64,
    /// While set, new connections are reset as soon as they are accepted.
    away: AtomicBool,
    counts: HashMap<Resource, ResourceCounts>,
    options: Options,
}

impl Shared {
    /// The store. A panic while holding the lock cannot leave it half-written in a way later
    /// tests care about, so a poisoned lock is used as is.
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, ConnEntry>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn counts(&self, res: Resource) -> &ResourceCounts {
        match self.counts.get(&res) {
            Some(c) => c,
            None => unreachable!("counters exist for every Resource"),
        }
    }

    /// Runs a write and wakes every watch stream.
    fn write<T>(&self, f: impl FnOnce(&mut Store) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let mut store = self.store();
        let result = f(&mut store);
        let rv = store.rv();
        // Stamped under the store lock, so no watch stream (some wake up on their own, e.g.
        // for a bookmark) can have read the write before this instant.
        *self.last_write.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        drop(store);
        self.changed.send_replace(rv);
        result
    }

    /// Aborts the connection tasks `pick` selects, closing their sockets with a TCP RST, and
    /// waits (up to 5 s) until they are gone. Returns how many there were.
    fn reset_connections(&self, pick: impl Fn(&ConnEntry) -> bool) -> usize {
        let ids: Vec<u64> = self
            .conns()
            .iter()
            .filter(|(_, c)| pick(c))
            .map(|(id, c)| {
                c.reset.store(true, Ordering::SeqCst);
                c.abort.abort();
                *id
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let conns = self.conns();
            if ids.iter().all(|id| !conns.contains_key(id)) {
                break;
            }
            drop(conns);
            std::thread::sleep(Duration::from_millis(2));
        }
        ids.len()
    }
}

/// A running fake API server. Dropping it stops the server thread and closes every
/// connection.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Serves `listener` (already bound by the caller, in whatever network namespace it
    /// should live in) on a new thread with its own tokio runtime, with default [`Options`].
    pub fn start(listener: std::net::TcpListener) -> Result<ApiServer> {
        Self::start_with(listener, Options::default())
    }

    /// The network tests' arrangement: `t`'s underlay namespace gets 172.18.0.1/16 on its
    /// bridge, the server listens there (every node reaches it over its eth0), and a
    /// kubeconfig for it is written to `kubeconfig`.
    pub fn start_in_underlay(
        t: &crate::topology::Topology,
        kubeconfig: &Path,
    ) -> Result<ApiServer> {
        let underlay = t.underlay_ns().to_owned();
        t.ip(&underlay, "addr add 172.18.0.1/16 dev br0")?;
        let listener = t
            .run_in(&underlay, || std::net::TcpListener::bind("172.18.0.1:0"))?
            .context("binding the API server in the underlay namespace")?;
        let api = Self::start(listener).context("starting the fake API server")?;
        api.write_kubeconfig(kubeconfig)?;
        Ok(api)
    }

    /// Creates topology node `n`'s Node object, as a kubelet registers it: named
    /// [`crate::agent::node_name`], its underlay address as InternalIP, with `labels`.
    pub fn create_node(
        &self,
        t: &crate::topology::Topology,
        n: usize,
        labels: &[(&str, &str)],
    ) -> Result<(), ApiError> {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        self.create_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": crate::agent::node_name(n), "labels": labels},
            "status": {"addresses": [{"type": "InternalIP", "address": t.node_ip(n).to_string()}]}
        }))
        .map(drop)
    }

    /// [`ApiServer::start`] with explicit [`Options`].
    pub fn start_with(listener: std::net::TcpListener, options: Options) -> Result<ApiServer> {
        let addr = listener.local_addr().context("listener address")?;
        listener
            .set_nonblocking(true)
            .context("making the listener non-blocking")?;
        let (changed, _) = watch::channel(0);
        let (control, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(options.history_cap)),
            changed,
            last_write: Mutex::new(None),
            control,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            away: AtomicBool::new(false),
            counts: Resource::ALL
                .into_iter()
                .map(|r| (r, ResourceCounts::default()))
                .collect(),
            options,
        });
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("apiserver-{}", addr.port()))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let listener = {
                    let _guard = rt.enter();
                    tokio::net::TcpListener::from_std(listener)
                };
                let listener = match listener {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                rt.block_on(accept_loop(thread_shared.clone(), listener, stop_rx));
                for (_, conn) in thread_shared.conns().drain() {
                    conn.abort.abort();
                }
                rt.shutdown_timeout(Duration::from_secs(2));
            })
            .context("spawning the API server thread")?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("API server thread exited before starting"))?
            .context("starting the API server runtime")?;
        Ok(ApiServer {
            shared,
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// `http://<addr>`: the server URL for kubeconfigs.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes a kubeconfig for this server to `path` (see [`write_kubeconfig`]).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        write_kubeconfig(path, &self.url())
    }

    /// When the latest write (through this handle or over HTTP) was committed, before any watch
    /// stream could see it: the start of a programming-latency measurement. Timing from the write
    /// return instead is wrong on a busy machine: waking the watchers can preempt the writing
    /// thread until a client has already acted on the event.
    pub fn last_write_at(&self) -> Option<Instant> {
        *self
            .shared
            .last_write
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The current global resourceVersion (the RV of the latest write).
    pub fn resource_version(&self) -> u64 {
        self.shared.store().rv()
    }

    // --- objects ---------------------------------------------------------------------------

    /// Creates a typed object (409 AlreadyExists if present); returns it as stored (with
    /// allocations and metadata). Namespaced objects without a namespace go to `default`.
    pub fn create<K: k8s_openapi::Resource + Serialize + DeserializeOwned>(
        &self,
        obj: &K,
    ) -> Result<K, ApiError> {
        from_value(self.create_value(to_value(obj)?)?)
    }

    /// Replaces a typed object unconditionally (any `resourceVersion` in it is ignored); 404
    /// if it does not exist.
    pub fn replace<K: k8s_openapi::Resource + Serialize + DeserializeOwned>(
        &self,
        obj: &K,
    ) -> Result<K, ApiError> {
        from_value(self.replace_value(to_value(obj)?)?)
    }

    /// Creates or replaces a typed object (what `kubectl apply` amounts to).
    pub fn apply<K: k8s_openapi::Resource + Serialize + DeserializeOwned>(
        &self,
        obj: &K,
    ) -> Result<K, ApiError> {
        from_value(self.apply_value(to_value(obj)?)?)
    }

    /// The object `namespace/name` (namespace ignored for cluster-scoped kinds), or `None`.
    pub fn get<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<K>, ApiError> {
        match self.get_value(K::API_VERSION, K::KIND, namespace, name) {
            Ok(v) => from_value(v).map(Some),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes `namespace/name`; returns the object as deleted. 404 if missing.
    pub fn delete<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<K, ApiError> {
        from_value(self.delete_value(K::API_VERSION, K::KIND, namespace, name)?)
    }

    /// [`ApiServer::create`] for an untyped object (`apiVersion` and `kind` required).
    pub fn create_value(&self, obj: Value) -> Result<Value, ApiError> {
        let (res, ns) = resource_of(&obj)?;
        self.shared
            .write(|s| s.create(res, &ns, obj))
            .map(|o| (*o).clone())
    }

    /// [`ApiServer::replace`] for an untyped object.
    pub fn replace_value(&self, mut obj: Value) -> Result<Value, ApiError> {
        let (res, ns) = resource_of(&obj)?;
        store::meta_mut(&mut obj).remove("resourceVersion");
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        self.shared
            .write(|s| s.update(res, &ns, &name, obj, false))
            .map(|o| (*o).clone())
    }

    /// [`ApiServer::apply`] for an untyped object: create, or replace if it exists.
    pub fn apply_value(&self, mut obj: Value) -> Result<Value, ApiError> {
        let (res, ns) = resource_of(&obj)?;
        store::meta_mut(&mut obj).remove("resourceVersion");
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        self.shared
            .write(|s| {
                if !name.is_empty() && s.get(res, &ns, &name).is_ok() {
                    s.update(res, &ns, &name, obj, false)
                } else {
                    s.create(res, &ns, obj)
                }
            })
            .map(|o| (*o).clone())
    }

    /// [`ApiServer::get`] for an untyped object; 404 as an error.
    pub fn get_value(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let res = resource_of_type(api_version, kind)?;
        self.shared
            .store()
            .get(res, namespace, name)
            .map(|o| (*o).clone())
    }

    /// Every object of `res` (in `namespace`, or all), with kind/apiVersion, ordered by
    /// namespace and name: the server's truth to compare a client's cache against.
    pub fn list_values(&self, res: Resource, namespace: Option<&str>) -> Vec<Value> {
        self.shared.store().all(res, namespace)
    }

    /// [`ApiServer::delete`] for an untyped object.
    pub fn delete_value(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let res = resource_of_type(api_version, kind)?;
        self.shared
            .write(|s| s.delete(res, namespace, name))
            .map(|o| (*o).clone())
    }

    /// Applies every document of a multi-document YAML text (as `kubectl apply -f` would, but
    /// replacing rather than three-way merging); `kind: List` documents apply their items.
    /// Stops at the first document that fails. Returns the stored objects.
    pub fn apply_yaml(&self, yaml: &str) -> Result<Vec<Value>> {
        let mut applied = Vec::new();
        let mut text = yaml.as_bytes();
        // Document by document, so the ones before a broken one are applied; empty documents
        // are skipped (and not counted). YAML 1.2 booleans only, as the agent reads them.
        let docs = serde_saphyr::read_with_options::<_, Value>(
            &mut text,
            serde_saphyr::options! { strict_booleans: true },
        );
        for (i, value) in docs.enumerate() {
            let value = value.with_context(|| format!("YAML document {}", i + 1))?;
            if value.is_null() {
                continue;
            }
            let items = if value["kind"] == "List" {
                value["items"].as_array().cloned().unwrap_or_default()
            } else {
                vec![value]
            };
            for item in items {
                let what = format!(
                    "{} {}",
                    item["kind"].as_str().unwrap_or("?"),
                    item["metadata"]["name"].as_str().unwrap_or("?")
                );
                applied.push(
                    self.apply_value(item)
                        .with_context(|| format!("applying {what} (document {})", i + 1))?,
                );
            }
        }
        Ok(applied)
    }

    // --- fault injection -------------------------------------------------------------------

    /// Closes every connection that carries an open watch abruptly: the socket is reset (TCP
    /// RST) in the middle of the chunked response, without an ERROR event or the final
    /// chunk. A client sees its watch stream fail with a connection error and, like kube-rs's
    /// watcher, re-watches from its last RV (which still works: the history is kept). Returns
    /// once those connections are closed; returns their number.
    pub fn drop_watches(&self) -> usize {
        self.shared
            .reset_connections(|c| c.state.watches.load(Ordering::SeqCst) > 0)
    }

    /// Compacts the history, as etcd compaction does: the RV is bumped without an event, and
    /// every watch that resumes from an RV seen so far gets an ERROR event with a 410
    /// `Expired` `Status` and the end of its stream. Every open watch gets that ERROR now
    /// (then its response ends cleanly), and outstanding `continue` tokens expire. A kube-rs
    /// watcher then relists, visible in [`RequestCounts::lists`].
    pub fn expire_watches(&self) {
        let rv = {
            let mut store = self.shared.store();
            store.expire();
            store.rv()
        };
        self.shared.control.send_modify(|epoch| *epoch += 1);
        self.shared.changed.send_replace(rv);
    }

    /// Makes the server unreachable until [`ApiServer::come_back`]: every open connection
    /// (watches, idle keep-alive ones) is reset (TCP RST), and every new connection is
    /// accepted and reset at once, so a client sees "connection reset by peer" on each try,
    /// promptly (no hang, no timeout). The store keeps taking writes through this handle
    /// meanwhile, so tests can change objects "during the outage".
    pub fn go_away(&self) {
        self.shared.away.store(true, Ordering::SeqCst);
        self.shared.reset_connections(|_| true);
    }

    /// Ends [`ApiServer::go_away`]: new connections are served again.
    pub fn come_back(&self) {
        self.shared.away.store(false, Ordering::SeqCst);
    }

    /// [`ApiServer::go_away`], sleep `outage` on the calling thread, [`ApiServer::come_back`].
    pub fn pause(&self, outage: Duration) {
        self.go_away();
        std::thread::sleep(outage);
        self.come_back();
    }

    /// Requests served for `res` so far.
    pub fn requests(&self, res: Resource) -> RequestCounts {
        let c = self.shared.counts(res);
        RequestCounts {
            lists: c.lists.load(Ordering::SeqCst),
            list_pages: c.list_pages.load(Ordering::SeqCst),
            watches: c.watches.load(Ordering::SeqCst),
            open_watches: c.open_watches.load(Ordering::SeqCst),
        }
    }

    /// Waits until at least `n` watches of `res` are open (a client finished its initial
    /// list and is watching); false on timeout. Polls every 10 ms.
    pub fn wait_for_watches(&self, res: Resource, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.requests(res).open_watches >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes a minimal kubeconfig naming `server_url` (`http://…`: kube-rs and kubectl both
/// accept plain http, so no TLS material is needed) with a user without credentials and a
/// current context whose namespace is `default`.
pub fn write_kubeconfig(path: &Path, server_url: &str) -> Result<()> {
    let text = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: fake\n  cluster:\n    server: {server_url}\n\
         users:\n\
         - name: fake\n  user: {{}}\n\
         contexts:\n\
         - name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
         current-context: fake\n"
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn to_value<K: Serialize>(obj: &K) -> Result<Value, ApiError> {
    serde_json::to_value(obj).map_err(|e| ApiError::bad_request(format!("serialising: {e}")))
}

fn from_value<K: DeserializeOwned>(value: Value) -> Result<K, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("decoding: {e}")))
}

fn resource_of_type(api_version: &str, kind: &str) -> Result<Resource, ApiError> {
    Resource::from_type(api_version, kind).ok_or_else(|| {
        ApiError::new(
            404,
            "NotFound",
            format!("the server doesn't have a resource type for {api_version}/{kind}"),
        )
    })
}

/// Resource and namespace of an untyped object.
fn resource_of(obj: &Value) -> Result<(Resource, String), ApiError> {
    let res = resource_of_type(
        obj["apiVersion"].as_str().unwrap_or(""),
        obj["kind"].as_str().unwrap_or(""),
    )?;
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    Ok((res, ns.to_owned()))
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // EMFILE and friends: back off instead of spinning; the listener stays usable.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if shared.away.load(Ordering::SeqCst) {
            let _ = stream.set_zero_linger();
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        serve(&shared, stream);
    }
}

/// Serves one connection on its own task, registered for fault injection.
fn serve(shared: &Arc<Shared>, stream: TcpStream) {
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let reset = Arc::new(AtomicBool::new(false));
    let state = Arc::new(ConnState::default());
    let io = TokioIo::new(ResettingStream {
        inner: stream,
        reset: reset.clone(),
    });
    let task_shared = shared.clone();
    let task_state = state.clone();
    // Hold the registry while spawning so the task cannot deregister before it is registered.
    let mut conns = shared.conns();
    let task = tokio::spawn(async move {
        let _registered = Registered {
            shared: task_shared.clone(),
            id,
        };
        let svc = service_fn(move |req| {
            let shared = task_shared.clone();
            let state = task_state.clone();
            async move { Ok::<_, Infallible>(http::handle(shared, state, req).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await;
    });
    conns.insert(
        id,
        ConnEntry {
            abort: task.abort_handle(),
            reset,
            state,
        },
    );
}

/// Removes a connection from the registry when its task ends or is aborted.
struct Registered {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.conns().remove(&self.id);
    }
}

/// A TCP stream that, when dropped with `reset` set, closes with an RST instead of a FIN
/// (`SO_LINGER` 0): an abrupt failure as a crashed server or a middlebox would cause, rather
/// than an orderly end of the connection.
struct ResettingStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettingStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for ResettingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
