//! The object store of the fake API server: objects, the global resourceVersion, the bounded
//! event history watches replay from, list snapshots for pagination, and what the real API
//! server does to an object on the way in (metadata, Service defaulting and allocation).
//!
//! Everything here is synchronous and runs under one `std::sync::Mutex` (see
//! [`super::Shared`]): a write and the event it produces are one atomic step, so a watch that
//! reads "events after RV X" never sees a torn state. Objects are kept as `serde_json::Value`
//! with `kind`/`apiVersion` set (as GET and watch events return them) behind `Arc`, so lists,
//! snapshots and history share them instead of copying.

// What each child owns (see its first lines); the resources, errors, events and the store's
// reads, writes, lists and watch history stay here.
mod admission;
mod filter;
mod json;

pub(crate) use filter::Filter;
pub(crate) use json::{merge_patch, meta_mut};

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::{json, Value};

use admission::Allocations;
use json::{key, ns_name, rfc3339_now, strip_meta_status, without_type};

/// The Service CIDR ClusterIPs are allocated from and validated against (kind's default).
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 16);
/// The secondary (IPv6) service range: the server is dual-stack, as kind's dual-stack
/// clusters are (`--service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/112`).
pub const SERVICE_CIDR6: (std::net::Ipv6Addr, u8) = (
    std::net::Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0),
    112,
);
/// The NodePort range (`--service-node-port-range` default).
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;
/// List snapshots kept for `continue` tokens; an older token gets 410 Expired, as a real
/// server's does once etcd compacted its revision.
const SNAPSHOT_CAP: usize = 32;

/// The resources the fake serves. The agent watches Services, EndpointSlices and Nodes;
/// Endpoints exist so `kubectl apply` of manifests that contain them succeeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// `v1` Services (namespaced).
    Services,
    /// `v1` Endpoints (namespaced). Stored only: not mirrored to EndpointSlices.
    Endpoints,
    /// `discovery.k8s.io/v1` EndpointSlices (namespaced).
    EndpointSlices,
    /// `v1` Nodes (cluster-scoped).
    Nodes,
}

impl Resource {
    /// Every served resource, in discovery order.
    pub const ALL: [Resource; 4] = [
        Resource::Services,
        Resource::Endpoints,
        Resource::EndpointSlices,
        Resource::Nodes,
    ];

    /// API group (`""` is the core group).
    pub fn group(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io",
            _ => "",
        }
    }

    /// `apiVersion` of objects of this resource.
    pub fn api_version(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    /// `kind` of one object.
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::Endpoints => "Endpoints",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
        }
    }

    /// The URL path segment (plural resource name).
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::Endpoints => "endpoints",
            Resource::EndpointSlices => "endpointslices",
            Resource::Nodes => "nodes",
        }
    }

    /// Whether objects live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Resource::Nodes)
    }

    /// kubectl's short names (served in discovery so `kubectl get svc` resolves).
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Resource::Services => &["svc"],
            Resource::Endpoints => &["ep"],
            Resource::EndpointSlices => &[],
            Resource::Nodes => &["no"],
        }
    }

    /// The resource whose objects have this `apiVersion` and `kind`.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| r.api_version() == api_version && r.kind() == kind)
    }

    /// The resource served at `/{api,apis/<group>}/<version>/<plural>`.
    pub(crate) fn from_path(group_version: &str, plural: &str) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| r.api_version() == group_version && r.plural() == plural)
    }
}

/// An API error, as the real server reports it: HTTP code, machine-readable `reason` and a
/// message. Serialised as a `v1/Status` (see [`ApiError::status`]); returned as is by the
/// in-process object operations so tests can assert on the code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code (404, 409, 410, 422, …).
    pub code: u16,
    /// `Status.reason`: `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `Expired`,
    /// `BadRequest`, `MethodNotAllowed`, `UnsupportedMediaType`.
    pub reason: &'static str,
    /// Human-readable message, worded like the real server's where tests may look at it.
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn not_found(res: Resource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res.plural()),
        )
    }

    pub(crate) fn invalid(res: Resource, name: &str, detail: impl std::fmt::Display) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {detail}", res.kind()),
        )
    }

    /// The `v1/Status` object the real server sends for this error.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

/// Watch event types stored in the history (BOOKMARK and ERROR are never stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One write, as the history keeps it. `prev` is the object before a MODIFIED so a
/// selector-filtered watch can turn it into ADDED/DELETED the way the real watch cache does.
pub(crate) struct Event {
    rv: u64,
    resource: Resource,
    kind: EventType,
    object: Arc<Value>,
    prev: Option<Arc<Value>>,
}

/// A consistent list result being paged through with `continue` tokens.
struct Snapshot {
    id: u64,
    rv: u64,
    items: Arc<Vec<Arc<Value>>>,
}

/// Namespace and name of an object; the namespace is `""` for cluster-scoped resources.
type Key = (String, String);

/// All state of the fake API server. See the module docs.
pub(crate) struct Store {
    /// The global resourceVersion: the RV of the latest write (or silent bump).
    rv: u64,
    /// Source of `metadata.uid` values and `generateName` suffixes.
    serial: u64,
    objects: BTreeMap<Resource, BTreeMap<Key, Arc<Value>>>,
    /// Writes in RV order, at most `history_cap` of them.
    history: VecDeque<Event>,
    history_cap: usize,
    /// A watch may resume from RV X only if `X >= resumable_from`: every event after X is
    /// then still in `history`. Raised by eviction and by [`Store::expire`].
    resumable_from: u64,
    snapshots: VecDeque<Snapshot>,
    /// ClusterIPs and NodePorts held by stored Services, kept by [`Store::commit`], so
    /// allocating for one Service is O(1) instead of a scan of all of them (which made
    /// creating 10k Services take minutes in a debug build).
    allocated: Allocations,
}

impl Store {
    pub(crate) fn new(history_cap: usize) -> Store {
        Store {
            // Real clusters never show RV 0 or 1 for objects; start somewhere recognisable.
            rv: 1000,
            serial: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            resumable_from: 0,
            snapshots: VecDeque::new(),
            allocated: Allocations::default(),
        }
    }

    /// The current global resourceVersion.
    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    /// One object, with kind/apiVersion.
    pub(crate) fn get(&self, res: Resource, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        self.objects
            .get(&res)
            .and_then(|m| m.get(&key(res, ns, name)))
            .cloned()
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    /// Every object of `res` in `namespace` (or all namespaces), in (namespace, name) order.
    pub(crate) fn all(&self, res: Resource, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .get(&res)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
            .map(|(_, o)| (**o).clone())
            .collect()
    }

    /// POST: creates `obj` (namespace defaulted from `ns`), 409 AlreadyExists if present.
    pub(crate) fn create(
        &mut self,
        res: Resource,
        ns: &str,
        obj: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let mut obj = self.check_type(res, ns, obj)?;
        let meta = meta_mut(&mut obj);
        if meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    self.serial += 1;
                    let name = format!("{prefix}{:05x}", self.serial & 0xfffff);
                    meta.insert("name".into(), Value::String(name));
                }
                _ => {
                    return Err(ApiError::invalid(
                        res,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ))
                }
            }
        }
        let (ns, name) = ns_name(&obj);
        if self.get(res, &ns, &name).is_ok() {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", res.plural()),
            ));
        }
        if res == Resource::Services {
            self.prepare_service(&mut obj, None, &ns, &name)?;
        }
        self.serial += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.serial);
        let meta = meta_mut(&mut obj);
        meta.insert("uid".into(), Value::String(uid));
        meta.insert("creationTimestamp".into(), Value::String(rfc3339_now()));
        meta.insert("generation".into(), json!(1));
        for transient in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(transient);
        }
        let out = self.commit(res, EventType::Added, obj, None);
        self.mirror_after_write(res, &ns, &name);
        Ok(out)
    }

    /// PUT: replaces an existing object, keeping uid and creationTimestamp. A non-empty
    /// `metadata.resourceVersion` in `obj` must equal the stored one (409 Conflict otherwise),
    /// as optimistic concurrency on the real server. `status_only` is the `/status`
    /// subresource: only `status` is taken from `obj`.
    pub(crate) fn update(
        &mut self,
        res: Resource,
        ns: &str,
        name: &str,
        obj: Value,
        status_only: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let old = self.get(res, ns, name)?;
        let mut obj = self.check_type(res, ns, obj)?;
        let (_, body_name) = ns_name(&obj);
        if body_name.is_empty() {
            meta_mut(&mut obj).insert("name".into(), Value::String(name.to_owned()));
        } else if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL \
                 ({name})"
            )));
        }
        let given_rv = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let old_rv = old["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if !given_rv.is_empty() && given_rv != old_rv {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been \
                     modified; please apply your changes to the latest version and try again",
                    res.plural()
                ),
            ));
        }
        if status_only {
            let status = obj.get("status").cloned();
            obj = (*old).clone();
            match status {
                Some(status) => obj["status"] = status,
                None => {
                    if let Some(map) = obj.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
        } else if res == Resource::Services {
            self.prepare_service(&mut obj, Some(&old), ns, name)?;
        }
        let changed_body = strip_meta_status(&obj) != strip_meta_status(&old);
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let meta = meta_mut(&mut obj);
        for kept in ["uid", "creationTimestamp"] {
            if let Some(v) = old["metadata"].get(kept) {
                meta.insert(kept.into(), v.clone());
            }
        }
        let generation = if changed_body {
            generation + 1
        } else {
            generation
        };
        meta.insert("generation".into(), json!(generation));
        let out = self.commit(res, EventType::Modified, obj, Some(old));
        self.mirror_after_write(res, ns, name);
        Ok(out)
    }

    /// DELETE: removes the object (no finalizers, no grace period) and returns it as last
    /// seen, with the resourceVersion of the deletion, as the DELETED event carries it.
    pub(crate) fn delete(
        &mut self,
        res: Resource,
        ns: &str,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        let old = self.get(res, ns, name)?;
        let out = self.commit(res, EventType::Deleted, (*old).clone(), Some(old));
        self.mirror_after_write(res, ns, name);
        Ok(out)
    }

    /// The EndpointSlice mirroring controller of kube-controller-manager: a hand-written
    /// `Endpoints` for a Service without a selector is mirrored into EndpointSlices (the same
    /// conversion the agent's `--manifests` source applies, `mirror_endpoints`), kept in step
    /// with every write to the Endpoints or the Service, and removed when it no longer applies.
    /// Proxies read only slices, so without this the seed's no-selector Service could not work
    /// through the API server.
    fn mirror_after_write(&mut self, res: Resource, ns: &str, name: &str) {
        use k8s_openapi::api::core::v1::{Endpoints, Service};
        use svc_core::{
            model::{ObjectRef, LABEL_SERVICE_NAME},
            source::manifests::{mirror_endpoints, LABEL_MANAGED_BY, MIRRORING_CONTROLLER},
        };
        if !matches!(res, Resource::Endpoints | Resource::Services) {
            return;
        }
        let typed =
            |r: Resource| -> Option<Value> { self.get(r, ns, name).ok().map(|v| (*v).clone()) };
        let endpoints: Option<Endpoints> =
            typed(Resource::Endpoints).and_then(|v| serde_json::from_value(v).ok());
        let service: Option<Service> =
            typed(Resource::Services).and_then(|v| serde_json::from_value(v).ok());
        let mut problems = Vec::new();
        let wanted = match &endpoints {
            Some(ep) => mirror_endpoints(
                &ObjectRef::new(ns, name),
                ep,
                service.as_ref(),
                &mut problems,
            ),
            None => Vec::new(),
        };
        let mut wanted: BTreeMap<String, Value> = wanted
            .into_iter()
            .filter_map(|slice| serde_json::to_value(&slice).ok())
            .map(|mut v| {
                v["apiVersion"] = json!("discovery.k8s.io/v1");
                v["kind"] = json!("EndpointSlice");
                (
                    v["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    v,
                )
            })
            .collect();
        let existing: Vec<(String, Value)> = self
            .all(Resource::EndpointSlices, Some(ns))
            .into_iter()
            .filter(|s| {
                let labels = &s["metadata"]["labels"];
                labels[LABEL_MANAGED_BY] == json!(MIRRORING_CONTROLLER)
                    && labels[LABEL_SERVICE_NAME] == json!(name)
            })
            .map(|s| {
                (
                    s["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    s,
                )
            })
            .collect();
        for (slice_name, old) in existing {
            match wanted.remove(&slice_name) {
                Some(new) => {
                    let same = new["endpoints"] == old["endpoints"]
                        && new["ports"] == old["ports"]
                        && new["metadata"]["labels"] == old["metadata"]["labels"];
                    if !same {
                        let _ = self.update(Resource::EndpointSlices, ns, &slice_name, new, false);
                    }
                }
                None => {
                    let _ = self.delete(Resource::EndpointSlices, ns, &slice_name);
                }
            }
        }
        for (_, new) in wanted {
            let _ = self.create(Resource::EndpointSlices, ns, new);
        }
    }

    /// Stamps the next RV on `obj`, stores it (or removes it for Deleted) and appends the event.
    fn commit(
        &mut self,
        res: Resource,
        kind: EventType,
        mut obj: Value,
        prev: Option<Arc<Value>>,
    ) -> Arc<Value> {
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        let (ns, name) = ns_name(&obj);
        let obj = Arc::new(obj);
        let map = self.objects.entry(res).or_default();
        if res == Resource::Services {
            let key = (ns.clone(), name.clone());
            if let Some(old) = map.get(&key) {
                self.allocated.update(&key, old, false);
            }
            if kind != EventType::Deleted {
                self.allocated.update(&key, &obj, true);
            }
        }
        if kind == EventType::Deleted {
            map.remove(&(ns, name));
        } else {
            map.insert((ns, name), obj.clone());
        }
        if self.history.len() >= self.history_cap {
            if let Some(evicted) = self.history.pop_front() {
                self.resumable_from = self.resumable_from.max(evicted.rv);
            }
        }
        self.history.push_back(Event {
            rv: self.rv,
            resource: res,
            kind,
            object: obj.clone(),
            prev,
        });
        obj
    }

    /// Compacts: forgets the whole history and list snapshots and bumps the RV without an
    /// event, so any watch resuming from an RV seen so far gets 410 Expired, while a fresh
    /// list (which returns the new RV) can be watched from.
    pub(crate) fn expire(&mut self) {
        self.rv += 1;
        self.resumable_from = self.rv;
        self.history.clear();
        self.snapshots.clear();
    }

    /// A list response (`kind: <Kind>List`): items without kind/apiVersion, as the real server
    /// sends them. With `limit`, results are paged from a snapshot taken by the first page, so
    /// every page is consistent with the list RV; `continue` tokens name the snapshot.
    pub(crate) fn list(
        &mut self,
        res: Resource,
        filter: &Filter,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<Value, ApiError> {
        let (rv, items, offset) = match continue_token.filter(|t| !t.is_empty()) {
            Some(token) => {
                let expired = || {
                    ApiError::new(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent \
                         list result. You can start a new list without the continue \
                         parameter.",
                    )
                };
                let (id, offset) = token
                    .split_once('.')
                    .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<usize>().ok()?)))
                    .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
                let snap = self
                    .snapshots
                    .iter()
                    .find(|s| s.id == id)
                    .ok_or_else(expired)?;
                (snap.rv, snap.items.clone(), offset)
            }
            None => {
                let items: Vec<Arc<Value>> = self
                    .objects
                    .get(&res)
                    .into_iter()
                    .flat_map(|m| m.values())
                    .filter(|o| filter.matches(o))
                    .cloned()
                    .collect();
                (self.rv, Arc::new(items), 0)
            }
        };
        let end = match limit.filter(|&l| l > 0) {
            Some(l) => offset.saturating_add(l).min(items.len()),
            None => items.len(),
        };
        let page: Vec<Value> = items
            .get(offset..end)
            .unwrap_or_default()
            .iter()
            .map(|o| without_type(o))
            .collect();
        let mut metadata = json!({ "resourceVersion": rv.to_string() });
        if end < items.len() {
            // Reuse the snapshot of an earlier page, or keep this one for the next pages.
            let id = match continue_token.and_then(|t| t.split_once('.')) {
                Some((id, _)) => id.to_owned(),
                None => {
                    self.serial += 1;
                    if self.snapshots.len() >= SNAPSHOT_CAP {
                        self.snapshots.pop_front();
                    }
                    self.snapshots.push_back(Snapshot {
                        id: self.serial,
                        rv,
                        items: items.clone(),
                    });
                    self.serial.to_string()
                }
            };
            metadata["continue"] = Value::String(format!("{id}.{end}"));
            metadata["remainingItemCount"] = json!(items.len() - end);
        }
        Ok(json!({
            "kind": format!("{}List", res.kind()),
            "apiVersion": res.api_version(),
            "metadata": metadata,
            "items": page,
        }))
    }

    /// Watch events for the objects `filter` selects, as the real server would send them to
    /// a watch starting now "from the beginning": ADDED for every object, and the RV they are
    /// current at.
    pub(crate) fn initial_events(&self, res: Resource, filter: &Filter) -> (Vec<Value>, u64) {
        let events = self
            .objects
            .get(&res)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|o| filter.matches(o))
            .map(|o| json!({ "type": "ADDED", "object": **o }))
            .collect();
        (events, self.rv)
    }

    /// Watch events after `cursor` for `filter`, and the RV the watcher is then current at;
    /// `Err(Expired)` when events after `cursor` were compacted away. Modifications that move
    /// an object into or out of the selection become ADDED or DELETED (the latter carrying the
    /// previous object with the new RV), as in the real watch cache.
    pub(crate) fn events_after(
        &self,
        res: Resource,
        cursor: u64,
        filter: &Filter,
    ) -> Result<(Vec<Value>, u64), ApiError> {
        if cursor < self.resumable_from {
            return Err(ApiError::new(
                410,
                "Expired",
                format!(
                    "too old resource version: {cursor} ({})",
                    self.resumable_from
                ),
            ));
        }
        let start = self.history.partition_point(|e| e.rv <= cursor);
        let mut out = Vec::new();
        for ev in self.history.range(start..) {
            if ev.resource != res {
                continue;
            }
            let now = ev.kind != EventType::Deleted && filter.matches(&ev.object);
            let before = match ev.kind {
                EventType::Added => false,
                EventType::Modified => ev.prev.as_deref().is_some_and(|p| filter.matches(p)),
                EventType::Deleted => filter.matches(&ev.object),
            };
            let (ty, obj) = match (before, now) {
                (false, true) if ev.kind == EventType::Added => ("ADDED", (*ev.object).clone()),
                (false, true) => ("ADDED", (*ev.object).clone()),
                (true, true) => ("MODIFIED", (*ev.object).clone()),
                (true, false) if ev.kind == EventType::Deleted => ("DELETED", (*ev.object).clone()),
                (true, false) => {
                    let mut prev = ev.prev.as_deref().cloned().unwrap_or(Value::Null);
                    meta_mut(&mut prev)
                        .insert("resourceVersion".into(), Value::String(ev.rv.to_string()));
                    ("DELETED", prev)
                }
                (false, false) => continue,
            };
            out.push(json!({ "type": ty, "object": obj }));
        }
        Ok((out, self.rv))
    }
}
