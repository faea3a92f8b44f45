//! The REST surface of the fake API server: routing, discovery documents, list/get/write
//! handlers, and watch streams.
//!
//! Paths served (`{g}/{v}` is `api/v1` or `apis/discovery.k8s.io/v1`):
//! `/version`, `/healthz`, `/readyz`, `/livez`, `/api`, `/api/v1`, `/apis`,
//! `/apis/discovery.k8s.io[/v1]`, `/{g}/{v}/{plural}` (all namespaces; cluster-scoped),
//! `/{g}/{v}/namespaces/{ns}/{plural}[/{name}[/status]]`, `/{g}/{v}/{plural}/{name}[/status]`
//! (cluster-scoped). Everything else is a 404 `Status`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::store::{merge_patch, ApiError, Filter, Resource};
use super::{ConnState, Shared};

/// Response body: a whole JSON document, or a watch stream.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Largest request body accepted (a Service or slice is a few KiB; kubectl's are < 1 MiB).
const MAX_BODY: usize = 8 << 20;

/// Handles one request. Never fails: errors become `Status` responses.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    req: Request<Incoming>,
) -> Response<Body> {
    match route(shared, conn, req).await {
        Ok(resp) => resp,
        Err(err) => json_response(err.code, &err.status()),
    }
}

/// The parsed query string (only the parameters we honour).
#[derive(Default)]
struct Query {
    watch: bool,
    resource_version: Option<String>,
    allow_bookmarks: bool,
    send_initial_events: bool,
    timeout_seconds: Option<u64>,
    limit: Option<usize>,
    continue_token: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> Result<Query, ApiError> {
        let mut q = Query::default();
        let truthy = |v: &str| v == "true" || v == "1";
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let v = v.into_owned();
            match &*k {
                "watch" => q.watch = truthy(&v),
                "resourceVersion" => q.resource_version = Some(v),
                "allowWatchBookmarks" => q.allow_bookmarks = truthy(&v),
                "sendInitialEvents" => q.send_initial_events = truthy(&v),
                "timeoutSeconds" => {
                    q.timeout_seconds = Some(v.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid timeoutSeconds {v:?}"))
                    })?)
                }
                "limit" => {
                    q.limit = Some(
                        v.parse()
                            .map_err(|_| ApiError::bad_request(format!("invalid limit {v:?}")))?,
                    )
                }
                "continue" => q.continue_token = Some(v),
                "labelSelector" => q.label_selector = Some(v),
                "fieldSelector" => q.field_selector = Some(v),
                // resourceVersionMatch, pretty, propagationPolicy, fieldManager, dryRun…:
                // ignored (dryRun is never sent by the clients we serve).
                _ => {}
            }
        }
        Ok(q)
    }
}

/// What a resource path names.
struct Target {
    res: Resource,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_target(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
        _ => return None,
    };
    let res = Resource::from_path(&gv, plural)?;
    // A namespaced object must be addressed inside its namespace, a cluster-scoped one not.
    if res.namespaced() != namespace.is_some() && name.is_some() {
        return None;
    }
    if !res.namespaced() && namespace.is_some() {
        return None;
    }
    Some(Target {
        res,
        namespace,
        name,
        status,
    })
}

async fn route(
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_owned();
    let query = Query::parse(req.uri().query())?;
    let method = req.method().clone();
    // kubectl get asks for server-side printing; other clients want the objects.
    let as_table = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    if method == Method::GET {
        if let Some(doc) = discovery(&path) {
            return Ok(json_response(200, &doc));
        }
        if matches!(path.as_str(), "/healthz" | "/readyz" | "/livez") {
            return Ok(text_response(200, "ok"));
        }
    }
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let target = parse_target(&path).ok_or_else(not_found)?;
    let ns = target.namespace.clone().unwrap_or_default();
    match (&method, target.name.as_deref()) {
        (&Method::GET, None) => {
            let filter = Filter::parse(
                target.namespace.clone(),
                query.label_selector.as_deref(),
                query.field_selector.as_deref(),
            )?;
            if query.watch {
                return Ok(watch(shared, conn, target.res, filter, &query));
            }
            let counts = shared.counts(target.res);
            counts.list_pages.fetch_add(1, Ordering::Relaxed);
            if query.continue_token.as_deref().unwrap_or("").is_empty() {
                counts.lists.fetch_add(1, Ordering::Relaxed);
            }
            let list = shared.store().list(
                target.res,
                &filter,
                query.limit,
                query.continue_token.as_deref(),
            )?;
            if as_table {
                let items = list["items"].as_array().cloned().unwrap_or_default();
                return Ok(json_response(
                    200,
                    &table(target.res, &items, list["metadata"].clone()),
                ));
            }
            Ok(json_response(200, &list))
        }
        (&Method::GET, Some(name)) => {
            if query.watch {
                // Old-style watch of one object: a field-selected watch of the collection.
                let filter = Filter::parse(
                    target.namespace.clone(),
                    query.label_selector.as_deref(),
                    Some(&format!("metadata.name={name}")),
                )?;
                return Ok(watch(shared, conn, target.res, filter, &query));
            }
            let obj = shared.store().get(target.res, &ns, name)?;
            if as_table {
                let meta = json!({ "resourceVersion": obj["metadata"]["resourceVersion"] });
                return Ok(json_response(
                    200,
                    &table(target.res, std::slice::from_ref(&obj), meta),
                ));
            }
            Ok(json_response(200, &obj))
        }
        (&Method::POST, None) => {
            let body = read_json(req).await?;
            let obj = shared.write(|s| s.create(target.res, &ns, body))?;
            Ok(json_response(201, &obj))
        }
        (&Method::PUT, Some(name)) => {
            let body = read_json(req).await?;
            let obj = shared.write(|s| s.update(target.res, &ns, name, body, target.status))?;
            Ok(json_response(200, &obj))
        }
        (&Method::PATCH, Some(name)) => {
            let content_type = req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let strategic = content_type.starts_with("application/strategic-merge-patch+json");
            let apply = content_type.starts_with("application/apply-patch");
            if !strategic && !apply && !content_type.starts_with("application/merge-patch+json") {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unsupported format: {content_type}"),
                ));
            }
            let patch = read_json(req).await?;
            let status = target.status;
            let obj = shared.write(|s| match s.get(target.res, &ns, name) {
                Ok(current) => {
                    let mut merged = (*current).clone();
                    merge_patch(&mut merged, &patch, strategic, "");
                    s.update(target.res, &ns, name, merged, status)
                }
                // Server-side apply creates what does not exist.
                Err(e) if apply && e.code == 404 => s.create(target.res, &ns, patch),
                Err(e) => Err(e),
            })?;
            Ok(json_response(200, &obj))
        }
        (&Method::DELETE, Some(name)) => {
            let obj = shared.write(|s| s.delete(target.res, &ns, name))?;
            Ok(json_response(200, &obj))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
        )),
    }
}

/// Reads and parses a JSON (or YAML, which kubectl never sends but people do) request body.
async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .or_else(|_| {
            serde_saphyr::from_slice_with_options(
                &bytes,
                serde_saphyr::options! { strict_booleans: true },
            )
        })
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
}

pub(crate) fn json_response(code: u16, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn text_response(code: u16, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp
}

/// A `meta.k8s.io/v1` Table of `items` with the columns `kubectl get` shows for the kind
/// (Services: type, cluster IP, external IP, ports; slices: address type, ports, endpoints),
/// so humans debugging a test with kubectl see what they would see on a cluster.
fn table(res: Resource, items: &[Value], metadata: Value) -> Value {
    let str_of = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let none_if_empty = |s: String| if s.is_empty() { "<none>".to_owned() } else { s };
    let joined = |values: Vec<String>| none_if_empty(values.join(","));
    let columns: &[&str] = match res {
        Resource::Services => &[
            "Name",
            "Type",
            "Cluster-IP",
            "External-IP",
            "Port(s)",
            "Age",
        ],
        Resource::EndpointSlices => &["Name", "AddressType", "Ports", "Endpoints", "Age"],
        Resource::Endpoints => &["Name", "Endpoints", "Age"],
        Resource::Nodes => &["Name", "Status", "Age"],
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let name = str_of(&o["metadata"]["name"]);
            let age = age(
                o["metadata"]["creationTimestamp"].as_str().unwrap_or(""),
                now,
            );
            let spec = &o["spec"];
            let cells: Vec<String> = match res {
                Resource::Services => {
                    let mut external: Vec<String> = spec["externalIPs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(str_of)
                        .collect();
                    external.extend(
                        o["status"]["loadBalancer"]["ingress"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|i| str_of(&i["ip"])),
                    );
                    let ports = spec["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| match p["nodePort"].as_u64() {
                            Some(n) => format!("{}:{n}/{}", p["port"], str_of(&p["protocol"])),
                            None => format!("{}/{}", p["port"], str_of(&p["protocol"])),
                        })
                        .collect();
                    vec![
                        name,
                        str_of(&spec["type"]),
                        none_if_empty(str_of(&spec["clusterIP"])),
                        joined(external),
                        joined(ports),
                        age,
                    ]
                }
                Resource::EndpointSlices => {
                    let ports = o["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| p["port"].to_string())
                        .collect();
                    let addrs = o["endpoints"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                        .map(|a| str_of(&a))
                        .collect();
                    vec![
                        name,
                        str_of(&o["addressType"]),
                        joined(ports),
                        joined(addrs),
                        age,
                    ]
                }
                Resource::Endpoints => {
                    let addrs = o["subsets"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
                        .map(|a| str_of(&a["ip"]))
                        .collect();
                    vec![name, joined(addrs), age]
                }
                Resource::Nodes => vec![name, "Ready".to_owned(), age],
            };
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"],
                },
            })
        })
        .collect();
    let definitions: Vec<Value> = columns
        .iter()
        .map(|c| json!({ "name": c, "type": "string", "format": "", "description": "", "priority": 0 }))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

/// kubectl's short age format (`42s`, `5m3s`, `3h`, `2d`) of an RFC 3339 timestamp.
fn age(created: &str, now: u64) -> String {
    let parse = || -> Option<u64> {
        let (date, time) = created.trim_end_matches('Z').split_once('T')?;
        let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
        let (y, m, day) = (d.next()??, d.next()??, d.next()??);
        let mut t = time.split(':').map(|x| x.parse::<u64>().ok());
        let (h, min, s) = (t.next()??, t.next()??, t.next()??);
        // days_from_civil (Howard Hinnant).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
        Some(days * 86_400 + h * 3600 + min * 60 + s)
    };
    let Some(secs) = parse().map(|t| now.saturating_sub(t)) else {
        return "<unknown>".to_owned();
    };
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Legacy (non-aggregated) discovery documents: enough for kubectl to map `svc`, `service`,
/// `endpointslices` … to URLs. kubectl asks for aggregated discovery first and falls back to
/// these when the response is plain JSON.
fn discovery(path: &str) -> Option<Value> {
    let resources = |gv: &str| -> Value {
        let list: Vec<Value> = Resource::ALL
            .into_iter()
            .filter(|r| r.api_version() == gv)
            .flat_map(|r| {
                let main = json!({
                    "name": r.plural(),
                    "singularName": r.kind().to_lowercase(),
                    "namespaced": r.namespaced(),
                    "kind": r.kind(),
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                    "shortNames": r.short_names(),
                });
                let status = json!({
                    "name": format!("{}/status", r.plural()),
                    "singularName": "",
                    "namespaced": r.namespaced(),
                    "kind": r.kind(),
                    "verbs": ["get", "patch", "update"],
                });
                [main, status]
            })
            .collect();
        json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": gv,
            "resources": list,
        })
    };
    let group = json!({
        "name": "discovery.k8s.io",
        "versions": [{ "groupVersion": "discovery.k8s.io/v1", "version": "v1" }],
        "preferredVersion": { "groupVersion": "discovery.k8s.io/v1", "version": "v1" },
    });
    match path.trim_end_matches('/') {
        "/version" => Some(json!({
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0-svclb-fake",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.24.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        })),
        "/api" => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [],
        })),
        "/api/v1" => Some(resources("v1")),
        "/apis" => Some(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [group],
        })),
        "/apis/discovery.k8s.io" => {
            let mut g = group;
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            Some(g)
        }
        "/apis/discovery.k8s.io/v1" => Some(resources("discovery.k8s.io/v1")),
        _ => None,
    }
}

/// Starts a watch response: HTTP 200, `Content-Type: application/json`, chunked, one event
/// per line. See [`WatchStream::next_chunk`] for what is sent when.
fn watch(
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    res: Resource,
    filter: Filter,
    query: &Query,
) -> Response<Body> {
    let counts = shared.counts(res);
    counts.watches.fetch_add(1, Ordering::Relaxed);
    counts.open_watches.fetch_add(1, Ordering::Relaxed);
    conn.watches.fetch_add(1, Ordering::Relaxed);
    let mut changed = shared.changed.subscribe();
    let control = shared.control.subscribe();
    let expire_epoch = *control.borrow();
    let rv = query.resource_version.as_deref().unwrap_or("");
    let from_start = rv.is_empty() || rv == "0" || query.send_initial_events;
    let mut queue = VecDeque::new();
    let mut done = false;
    // Mark the current value seen before reading the store: a write after this wakes us.
    changed.borrow_and_update();
    let cursor = if from_start {
        let (events, cursor) = shared.store().initial_events(res, &filter);
        queue.extend(events.iter().map(line));
        if query.send_initial_events {
            queue.push_back(line(&bookmark(res, cursor, true)));
        }
        cursor
    } else {
        match rv.parse::<u64>() {
            Ok(cursor) => cursor,
            Err(_) => {
                let err = ApiError::bad_request(format!("invalid resourceVersion {rv:?}"));
                queue.push_back(line(&json!({ "type": "ERROR", "object": err.status() })));
                done = true;
                0
            }
        }
    };
    let bookmark_every = shared.options.bookmark_interval;
    let stream = WatchStream {
        guard: WatchGuard {
            shared: shared.clone(),
            conn,
            res,
        },
        shared,
        res,
        filter,
        cursor,
        queue,
        done,
        changed,
        control,
        expire_epoch,
        bookmarks: query.allow_bookmarks,
        bookmark_every,
        next_bookmark: Instant::now() + bookmark_every,
        deadline: query
            .timeout_seconds
            .filter(|&s| s > 0)
            .map(|s| Instant::now() + Duration::from_secs(s)),
    };
    let frames = futures::stream::unfold(stream, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), s))
    });
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Keeps the open-watch counters right however the stream ends (finished, client gone,
/// connection aborted by fault injection).
struct WatchGuard {
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    res: Resource,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.shared
            .counts(self.res)
            .open_watches
            .fetch_sub(1, Ordering::Relaxed);
        self.conn.watches.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One watch in progress: a cursor into the store's history plus what is queued to send.
struct WatchStream {
    guard: WatchGuard,
    shared: Arc<Shared>,
    res: Resource,
    filter: Filter,
    /// Every event with RV <= cursor has been queued (or filtered out).
    cursor: u64,
    queue: VecDeque<Bytes>,
    /// No more events after the queue drains (timeout, 410, server shutting down).
    done: bool,
    changed: watch::Receiver<u64>,
    control: watch::Receiver<u64>,
    expire_epoch: u64,
    bookmarks: bool,
    bookmark_every: Duration,
    next_bookmark: Instant,
    deadline: Option<Instant>,
}

impl WatchStream {
    /// The next line to send, or `None` to end the response (cleanly, with the last chunk).
    /// Sends: queued events; new events from the history as writes happen; a 410 ERROR and
    /// the end when the cursor was compacted away or [`super::ApiServer::expire_watches`]
    /// ran; a BOOKMARK every `bookmark_interval` when asked for; the end at `timeoutSeconds`.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        let _ = &self.guard;
        loop {
            if let Some(chunk) = self.queue.pop_front() {
                return Some(chunk);
            }
            if self.done {
                return None;
            }
            self.changed.borrow_and_update();
            let result = self
                .shared
                .store()
                .events_after(self.res, self.cursor, &self.filter);
            match result {
                Ok((events, cursor)) => {
                    self.queue.extend(events.iter().map(line));
                    self.cursor = cursor;
                }
                Err(err) => {
                    self.queue
                        .push_back(line(&json!({ "type": "ERROR", "object": err.status() })));
                    self.done = true;
                }
            }
            if !self.queue.is_empty() {
                continue;
            }
            let deadline = self.deadline;
            tokio::select! {
                r = self.changed.changed() => {
                    if r.is_err() {
                        self.done = true;
                    }
                }
                r = self.control.changed() => {
                    let epoch = *self.control.borrow_and_update();
                    if r.is_err() {
                        self.done = true;
                    } else if epoch != self.expire_epoch {
                        // The history is gone: tell this watcher so, as a compaction would.
                        self.expire_epoch = epoch;
                        let err = ApiError::new(
                            410,
                            "Expired",
                            format!("too old resource version: {} ({})", self.cursor,
                                self.shared.store().rv()),
                        );
                        self.queue.push_back(line(
                            &json!({ "type": "ERROR", "object": err.status() }),
                        ));
                        self.done = true;
                    }
                }
                () = tokio::time::sleep_until(self.next_bookmark), if self.bookmarks => {
                    self.next_bookmark = Instant::now() + self.bookmark_every;
                    self.queue.push_back(line(&bookmark(self.res, self.cursor, false)));
                }
                () = sleep_until_opt(deadline) => {
                    self.done = true;
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => futures::future::pending().await,
    }
}

/// A BOOKMARK event: only kind, apiVersion and the resourceVersion (and, ending the initial
/// events of a streaming list, the `k8s.io/initial-events-end` annotation).
fn bookmark(res: Resource, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({ "resourceVersion": rv.to_string(), "creationTimestamp": null });
    if initial_end {
        meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    json!({
        "type": "BOOKMARK",
        "object": { "kind": res.kind(), "apiVersion": res.api_version(), "metadata": meta },
    })
}

fn line(event: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(event).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}
