//! The object store of the fake API server: objects, the global resourceVersion, the bounded
//! event history watches replay from, list snapshots for pagination, and what the real API
//! server does to an object on the way in (metadata, Service defaulting and allocation).
//!
//! Everything here is synchronous and runs under one `std::sync::Mutex` (see
//! [`super::Shared`]): a write and the event it produces are one atomic step, so a watch that
//! reads "events after RV X" never sees a torn state. Objects are kept as `serde_json::Value`
//! with `kind`/`apiVersion` set (as GET and watch events return them) behind `Arc`, so lists,
//! snapshots and history share them instead of copying.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

/// The Service CIDR ClusterIPs are allocated from and validated against (kind's default).
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 16);
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

/// `labelSelector` and `fieldSelector` of a list or watch, plus the namespace of the URL.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    pub namespace: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<(String, bool, String)>,
}

#[derive(Clone, Debug)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, HashSet<String>),
    NotIn(String, HashSet<String>),
}

impl Filter {
    /// Parses the selectors as the real server does: equality (`k=v`, `k==v`, `k!=v`),
    /// existence (`k`, `!k`) and set-based (`k in (a,b)`, `k notin (a,b)`) label requirements,
    /// comma-separated; `metadata.name` and `metadata.namespace` field requirements.
    pub fn parse(
        namespace: Option<String>,
        label_selector: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<Filter, ApiError> {
        let mut filter = Filter {
            namespace,
            ..Filter::default()
        };
        for term in split_top_level(label_selector.unwrap_or("")) {
            filter.labels.push(parse_label_req(&term)?);
        }
        for term in field_selector.unwrap_or("").split(',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (key, eq, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: '{term}'"
                )));
            };
            let key = key.trim();
            if key != "metadata.name" && key != "metadata.namespace" {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {key}"
                )));
            }
            filter
                .fields
                .push((key.to_owned(), eq, value.trim().to_owned()));
        }
        Ok(filter)
    }

    /// Whether `obj` is in the URL's namespace and matches both selectors.
    pub fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        let ns = meta["namespace"].as_str().unwrap_or("");
        if self.namespace.as_deref().is_some_and(|want| want != ns) {
            return false;
        }
        let name = meta["name"].as_str().unwrap_or("");
        let fields_ok = self.fields.iter().all(|(key, eq, value)| {
            let actual = if key == "metadata.name" { name } else { ns };
            (actual == value) == *eq
        });
        let labels = meta["labels"].as_object();
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        fields_ok
            && self.labels.iter().all(|req| match req {
                LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
                LabelReq::Ne(k, v) => label(k) != Some(v.as_str()),
                LabelReq::Exists(k) => label(k).is_some(),
                LabelReq::NotExists(k) => label(k).is_none(),
                LabelReq::In(k, set) => label(k).is_some_and(|v| set.contains(v)),
                LabelReq::NotIn(k, set) => label(k).is_none_or(|v| !set.contains(v)),
            })
    }
}

/// Splits a label selector at commas outside parentheses (`a in (x,y),b` is two terms).
fn split_top_level(s: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    terms.push(current);
    terms
        .into_iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_label_req(term: &str) -> Result<LabelReq, ApiError> {
    let bad = || ApiError::bad_request(format!("unable to parse requirement: {term:?}"));
    let set = |rest: &str| -> Result<HashSet<String>, ApiError> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(bad)?;
        Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelReq::NotExists(key.trim().to_owned()));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(LabelReq::Ne(k.trim().to_owned(), v.trim().to_owned()));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(LabelReq::Eq(k.trim().to_owned(), v.trim().to_owned()));
    }
    if let Some((k, rest)) = term.split_once(" notin ") {
        return Ok(LabelReq::NotIn(k.trim().to_owned(), set(rest)?));
    }
    if let Some((k, rest)) = term.split_once(" in ") {
        return Ok(LabelReq::In(k.trim().to_owned(), set(rest)?));
    }
    if term.contains(char::is_whitespace) || term.contains(['(', ')', '<', '>']) {
        return Err(bad());
    }
    Ok(LabelReq::Exists(term.to_owned()))
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

/// Which Service holds each allocated ClusterIP and NodePort.
#[derive(Default)]
struct Allocations {
    ips: HashMap<Ipv4Addr, Key>,
    node_ports: HashMap<u64, Key>,
}

impl Allocations {
    /// Adds (`held`) or releases (`!held`) what `svc` holds, for Service `key`.
    fn update(&mut self, key: &Key, svc: &Value, held: bool) {
        let ip = svc["spec"]["clusterIP"]
            .as_str()
            .and_then(|s| s.parse::<Ipv4Addr>().ok());
        let ports = svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["nodePort"].as_u64());
        if held {
            self.ips.extend(ip.map(|ip| (ip, key.clone())));
            self.node_ports.extend(ports.map(|n| (n, key.clone())));
        } else {
            if let Some(ip) = ip {
                if self.ips.get(&ip) == Some(key) {
                    self.ips.remove(&ip);
                }
            }
            for n in ports {
                if self.node_ports.get(&n) == Some(key) {
                    self.node_ports.remove(&n);
                }
            }
        }
    }
}

impl Store {
    pub fn new(history_cap: usize) -> Store {
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
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// One object, with kind/apiVersion.
    pub fn get(&self, res: Resource, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        self.objects
            .get(&res)
            .and_then(|m| m.get(&key(res, ns, name)))
            .cloned()
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    /// Every object of `res` in `namespace` (or all namespaces), in (namespace, name) order.
    pub fn all(&self, res: Resource, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .get(&res)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
            .map(|(_, o)| (**o).clone())
            .collect()
    }

    /// POST: creates `obj` (namespace defaulted from `ns`), 409 AlreadyExists if present.
    pub fn create(&mut self, res: Resource, ns: &str, obj: Value) -> Result<Arc<Value>, ApiError> {
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
    pub fn update(
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
    pub fn delete(&mut self, res: Resource, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
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
    pub fn expire(&mut self) {
        self.rv += 1;
        self.resumable_from = self.rv;
        self.history.clear();
        self.snapshots.clear();
    }

    /// A list response (`kind: <Kind>List`): items without kind/apiVersion, as the real server
    /// sends them. With `limit`, results are paged from a snapshot taken by the first page, so
    /// every page is consistent with the list RV; `continue` tokens name the snapshot.
    pub fn list(
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
    pub fn initial_events(&self, res: Resource, filter: &Filter) -> (Vec<Value>, u64) {
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
    pub fn events_after(
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

    /// Checks kind/apiVersion and namespace of a body against the URL, fills them in when
    /// absent, and drops a namespace from cluster-scoped objects.
    fn check_type(&self, res: Resource, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
        let Some(map) = obj.as_object_mut() else {
            return Err(ApiError::bad_request("the body is not a JSON object"));
        };
        for (field, want) in [("apiVersion", res.api_version()), ("kind", res.kind())] {
            match map.get(field).and_then(Value::as_str) {
                None | Some("") => {
                    map.insert(field.into(), Value::String(want.into()));
                }
                Some(got) if got == want => {}
                Some(got) => {
                    return Err(ApiError::bad_request(format!(
                        "{field} {got} does not match the resource {} ({want})",
                        res.plural()
                    )))
                }
            }
        }
        let meta = meta_mut(&mut obj);
        if res.namespaced() {
            let want = if ns.is_empty() { "default" } else { ns };
            match meta.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    meta.insert("namespace".into(), Value::String(want.into()));
                }
                Some(got) if got == want => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace \
                         sent on the request",
                    ))
                }
            }
        } else {
            meta.remove("namespace");
        }
        Ok(obj)
    }

    /// What the API server does to a Service on create/update: defaults (`type`,
    /// `sessionAffinity`, `ipFamilies`, policies, port `protocol`/`targetPort`), keeps the
    /// allocated `clusterIP`/`nodePort`s of the old object when the new one omits them, checks
    /// user-chosen ones (range, not taken: 422 Invalid) and allocates the missing ones.
    /// Allocation is the static source's scheme (svc_core::source::manifests): FNV-1a of
    /// `namespace/name` picks the start, linear probing skips taken values, so the same
    /// manifests get the same addresses from either source when nothing collides.
    fn prepare_service(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
        ns: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        let invalid = |detail: String| ApiError::invalid(Resource::Services, name, detail);
        let me = (ns.to_owned(), name.to_owned());
        let used_ip = |ip: &Ipv4Addr| self.allocated.ips.get(ip).is_some_and(|k| *k != me);
        let used_port = |n: &u64| self.allocated.node_ports.get(n).is_some_and(|k| *k != me);
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
        let old_spec = old.map(|o| &o["spec"]);
        let spec = obj["spec"]
            .as_object_mut()
            .ok_or_else(|| invalid("spec".into()))?;
        let ty = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_owned();
        if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty.as_str()) {
            return Err(invalid(format!("spec.type: Unsupported value: \"{ty}\"")));
        }
        spec.insert("type".into(), Value::String(ty.clone()));
        default(spec, "sessionAffinity", json!("None"));
        if ty != "ExternalName" {
            let given = spec.get("clusterIP").and_then(Value::as_str).unwrap_or("");
            if given.is_empty() {
                if let Some(old_ip) = old_spec.and_then(|s| s["clusterIP"].as_str()) {
                    spec.insert("clusterIP".into(), json!(old_ip));
                    spec.insert(
                        "clusterIPs".into(),
                        old_spec.map_or(json!([old_ip]), |s| s["clusterIPs"].clone()),
                    );
                }
            }
            let given = spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let (net, bits) = SERVICE_CIDR;
            let base = u32::from(net);
            let size = 1u64 << (32 - bits);
            if given.is_empty() {
                // Candidates: network+2 ..= broadcast-1, as the static source.
                let count = size - 3;
                let ip = probe(&format!("{ns}/{name}"), count, |off| {
                    let ip = Ipv4Addr::from(base.wrapping_add(u32::try_from(off + 2).ok()?));
                    (!used_ip(&ip)).then_some(ip)
                })
                .ok_or_else(|| invalid("spec.clusterIP: no free address".into()))?;
                spec.insert("clusterIP".into(), json!(ip.to_string()));
                spec.insert("clusterIPs".into(), json!([ip.to_string()]));
            } else if given == "None" {
                default(spec, "clusterIPs", json!(["None"]));
            } else {
                let ip: Ipv4Addr = given.parse().map_err(|_| {
                    invalid(format!(
                        "spec.clusterIPs[0]: Invalid value: \"{given}\": must be a valid IP"
                    ))
                })?;
                let offset = u64::from(u32::from(ip).wrapping_sub(base));
                if offset >= size {
                    return Err(invalid(format!(
                        "spec.clusterIPs: Invalid value: [\"{given}\"]: failed to allocate IP \
                         {given}: the provided IP ({given}) is not in the valid range. The \
                         range of valid IPs is {net}/{bits}"
                    )));
                }
                if used_ip(&ip) {
                    return Err(invalid(format!(
                        "spec.clusterIPs: Invalid value: [\"{given}\"]: failed to allocate IP \
                         {given}: provided IP is already allocated"
                    )));
                }
                default(spec, "clusterIPs", json!([given]));
            }
            default(spec, "ipFamilies", json!(["IPv4"]));
            default(spec, "ipFamilyPolicy", json!("SingleStack"));
            default(spec, "internalTrafficPolicy", json!("Cluster"));
        }
        let lb = ty == "LoadBalancer";
        if lb {
            default(spec, "allocateLoadBalancerNodePorts", json!(true));
        }
        if lb || ty == "NodePort" {
            default(spec, "externalTrafficPolicy", json!("Cluster"));
        }
        let wants_node_ports = ty == "NodePort"
            || (lb && spec.get("allocateLoadBalancerNodePorts") != Some(&json!(false)));
        let old_ports = old_spec.and_then(|s| s["ports"].as_array());
        let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) else {
            return Ok(());
        };
        let mut mine = HashSet::new();
        for (i, port) in ports.iter_mut().enumerate() {
            let Some(p) = port.as_object_mut() else {
                return Err(invalid(format!("spec.ports[{i}]: must be an object")));
            };
            default(p, "protocol", json!("TCP"));
            let number = p.get("port").cloned().unwrap_or(Value::Null);
            default(p, "targetPort", number.clone());
            if !wants_node_ports {
                if ty == "ClusterIP" && p.get("nodePort").is_some_and(|n| n != &json!(0)) {
                    return Err(invalid(format!(
                        "spec.ports[{i}].nodePort: Forbidden: may not be used when `type` is \
                         'ClusterIP'"
                    )));
                }
                continue;
            }
            if p.get("nodePort").and_then(Value::as_u64).unwrap_or(0) == 0 {
                let same = old_ports
                    .into_iter()
                    .flatten()
                    .find(|o| o["port"] == number && o["protocol"] == p["protocol"]);
                match same.and_then(|o| o["nodePort"].as_u64()) {
                    Some(n) => {
                        p.insert("nodePort".into(), json!(n));
                    }
                    None => {
                        p.remove("nodePort");
                    }
                }
            }
            if let Some(n) = p.get("nodePort").and_then(Value::as_u64) {
                let in_range = u16::try_from(n).is_ok_and(|n| NODE_PORT_RANGE.contains(&n));
                if !in_range {
                    return Err(invalid(format!(
                        "spec.ports[{i}].nodePort: Invalid value: {n}: provided port is not in \
                         the valid range. The range of valid ports is 30000-32767"
                    )));
                }
                if used_port(&n) || !mine.insert(n) {
                    return Err(invalid(format!(
                        "spec.ports[{i}].nodePort: Invalid value: {n}: provided port is already \
                         allocated"
                    )));
                }
            }
        }
        for port in ports.iter_mut() {
            let Some(p) = port.as_object_mut() else {
                continue;
            };
            if !wants_node_ports || p.contains_key("nodePort") {
                continue;
            }
            let which = match p.get("name").and_then(Value::as_str) {
                Some(n) if !n.is_empty() => n.to_owned(),
                _ => format!(
                    "{}/{}",
                    p.get("port").cloned().unwrap_or(Value::Null),
                    p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                ),
            };
            let first = u64::from(*NODE_PORT_RANGE.start());
            let count = u64::from(*NODE_PORT_RANGE.end()) + 1 - first;
            let n = probe(&format!("{ns}/{name}/{which}"), count, |off| {
                let n = first + off;
                (!used_port(&n) && !mine.contains(&n)).then_some(n)
            })
            .ok_or_else(|| invalid("spec.ports: no free node port".into()))?;
            mine.insert(n);
            p.insert("nodePort".into(), json!(n));
        }
        Ok(())
    }
}

fn default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.into(), value);
    }
}

fn key(res: Resource, ns: &str, name: &str) -> Key {
    let ns = if res.namespaced() { ns } else { "" };
    (ns.to_owned(), name.to_owned())
}

fn ns_name(obj: &Value) -> Key {
    let meta = &obj["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("").to_owned(),
        meta["name"].as_str().unwrap_or("").to_owned(),
    )
}

/// `obj.metadata` as a map, created (and `obj` turned into an object) if needed.
pub(crate) fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(meta) => meta,
        None => unreachable!("metadata was just made an object"),
    }
}

/// The object without kind/apiVersion (how items appear in a list).
fn without_type(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(map) = obj.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    obj
}

/// The object without metadata and status: what `generation` tracks.
fn strip_meta_status(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(map) = obj.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    obj
}

/// Linear probing over `0..count` from FNV-1a(`key`) mod `count` (the static source's scheme).
fn probe<T>(key: &str, count: u64, mut accept: impl FnMut(u64) -> Option<T>) -> Option<T> {
    if count == 0 {
        return None;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key.as_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let start = hash % count;
    (0..count).find_map(|k| accept((start + k) % count))
}

/// The current time as RFC 3339 UTC with second precision (`metadata.creationTimestamp`).
pub(crate) fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// RFC 7386 JSON merge patch, extended with the parts of strategic merge patch that
/// `kubectl apply` sends for our kinds: `$`-directives are dropped, and lists with a merge key
/// (`spec.ports` of a Service, keyed by `port`) merge element-wise, honouring
/// `$setElementOrder/<field>` and `{"$patch": "delete"}` elements. Other lists are replaced.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value, strategic: bool, path: &str) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if strategic && patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch.clone();
        if let Some(m) = replaced.as_object_mut() {
            m.remove("$patch");
        }
        *target = replaced;
        return;
    }
    if !target.is_object() {
        *target = json!({});
    }
    let Some(target_map) = target.as_object_mut() else {
        return;
    };
    for (k, v) in patch_map {
        if k.starts_with('$') {
            continue;
        }
        let child = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        if v.is_null() {
            target_map.remove(k);
            continue;
        }
        let merge_key = (strategic && child == "spec.ports").then_some("port");
        match (merge_key, v.as_array()) {
            (Some(mk), Some(items)) => {
                let order = patch_map
                    .get(&format!("$setElementOrder/{k}"))
                    .and_then(Value::as_array);
                let current = target_map
                    .get(k)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                target_map.insert(k.clone(), merge_keyed_list(current, items, order, mk));
            }
            _ => {
                let slot = target_map.entry(k.clone()).or_insert(Value::Null);
                if v.is_object() {
                    merge_patch(slot, v, strategic, &child);
                } else {
                    *slot = v.clone();
                }
            }
        }
    }
}

fn merge_keyed_list(
    current: Vec<Value>,
    patch: &[Value],
    order: Option<&Vec<Value>>,
    mk: &str,
) -> Value {
    let mut by_key: HashMap<String, Value> = HashMap::new();
    let mut keys: Vec<String> = Vec::new();
    for item in current {
        let k = item[mk].to_string();
        keys.push(k.clone());
        by_key.insert(k, item);
    }
    for item in patch {
        let k = item[mk].to_string();
        if item["$patch"].as_str() == Some("delete") {
            by_key.remove(&k);
            continue;
        }
        let slot = by_key.entry(k.clone()).or_insert_with(|| {
            keys.push(k.clone());
            json!({})
        });
        merge_patch(slot, item, true, "");
    }
    if let Some(order) = order {
        let ordered: Vec<String> = order.iter().map(|o| o[mk].to_string()).collect();
        keys.sort_by_key(|k| ordered.iter().position(|o| o == k).unwrap_or(usize::MAX));
    }
    let mut seen = HashSet::new();
    Value::Array(
        keys.into_iter()
            .filter(|k| seen.insert(k.clone()))
            .filter_map(|k| by_key.remove(&k))
            .collect(),
    )
}
