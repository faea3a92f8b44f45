//! The static source: a directory of YAML manifests (`--manifests DIR`), read as an API server
//! would have accepted them from `kubectl apply -f DIR`.
//!
//! # What "as an API server would" means here
//! - Every `*.yaml` / `*.yml` file in the directory (not recursive, hidden names skipped, sorted
//!   by name, symlinks followed so a mounted ConfigMap works) is split into its `---` documents.
//!   Each document is identified by `apiVersion`/`kind` and decoded into the k8s-openapi type:
//!   `v1/Service`, `v1/Endpoints`, `discovery.k8s.io/v1/EndpointSlice`, and `v1/List` of those.
//!   Anything else is skipped with a [`Problem`]; a document that fails to decode is a
//!   [`Problem`] naming the file, the document (1-based among non-empty documents) and serde's
//!   message with its line number in the file. Neither stops the rest from loading.
//! - Defaults: namespace `default`, `type: ClusterIP`, port protocol `TCP`, `targetPort = port`.
//! - A Service without `spec.clusterIP` gets one **allocated** from `--service-cidr`, and a
//!   NodePort/LoadBalancer port without `nodePort` gets one from the node-port range. There is no
//!   API server to remember allocations, and every node's agent must reach the same answer from
//!   the same directory, so allocation is a pure function of the directory's contents: FNV-1a of
//!   `namespace/name` picks the starting point, linear probing resolves collisions, Services are
//!   processed in (namespace, name) order, and user-chosen values are reserved first.
//! - A Service whose user-chosen `clusterIP` or `nodePort` is already taken by another Service is
//!   refused (the API server would refuse to create it); the smaller (namespace, name) keeps it.
//! - A hand-written `v1/Endpoints` for a selector-less Service is converted to EndpointSlices the
//!   way Kubernetes' endpointslicemirroring controller does (see [`mirror_endpoints`]).
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::hash::Hasher;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use fnv::FnvHasher;
use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

pub use crate::model::Objects;
use crate::model::{Ipv4Cidr, ObjectRef, Problem, LABEL_SERVICE_NAME};

/// Label the mirroring controller sets on the slices it writes, naming itself.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`] on mirrored slices.
pub const MIRRORING_CONTROLLER: &str = "endpointslicemirroring-controller.k8s.io";
/// An `Endpoints` carrying this label with value `"true"` is not mirrored.
pub const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Endpoints per mirrored slice, the mirroring controller's default `maxEndpointsPerSubset`.
pub const MAX_ENDPOINTS_PER_MIRRORED_SLICE: usize = 1000;
/// Annotations the mirroring controller does not copy from `Endpoints` to its slices.
const NOT_MIRRORED_ANNOTATIONS: [&str; 2] = [
    "endpoints.kubernetes.io/last-change-trigger-time",
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// The directory could not be read. Problems inside it (unreadable files, bad documents) are
/// not errors: they are reported in [`Objects::problems`] and the rest still loads, because one
/// bad file must not take every Service on the node down with it.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Listing the manifest directory failed (missing, not a directory, permission).
    #[error("reading manifest directory {}: {source}", dir.display())]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What the allocations need that the manifests do not say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Where ClusterIPs are allocated (`--service-cidr`). The network, broadcast and first host
    /// (`.1`, conventionally the `kubernetes` Service) addresses are never allocated.
    pub service_cidr: Ipv4Cidr,
    /// Where NodePorts are allocated (the API server's `--service-node-port-range`).
    pub node_port_range: RangeInclusive<u16>,
}

impl Default for Options {
    /// `10.96.0.0/16` and `30000-32767`, the kubeadm/kind defaults.
    fn default() -> Self {
        Self {
            service_cidr: Ipv4Cidr::default(),
            node_port_range: 30000..=32767,
        }
    }
}

/// Loads `dir` with the default [`Options`]. See the module docs for what loading means.
pub fn load_dir(dir: &Path) -> Result<Objects, SourceError> {
    load_dir_with(dir, &Options::default())
}

/// Loads `dir`: reads its manifest files and hands them to [`load_texts`]. Only failing to list
/// the directory is an error; an unreadable file is a [`Problem`].
pub fn load_dir_with(dir: &Path, options: &Options) -> Result<Objects, SourceError> {
    let files = manifest_files(dir).map_err(|source| SourceError::ReadDir {
        dir: dir.to_owned(),
        source,
    })?;
    let mut texts = Vec::with_capacity(files.len());
    let mut problems = Vec::new();
    for (name, path) in files {
        match fs::read_to_string(&path) {
            Ok(text) => texts.push((name, text)),
            Err(e) => problems.push(Problem::new(name, "", format!("reading: {e}"))),
        }
    }
    let mut objects = load_texts(&texts, options);
    problems.append(&mut objects.problems);
    objects.problems = problems;
    Ok(objects)
}

/// A cheap change detector for `dir`: a hash of the manifest files' names, sizes and
/// modification times. The runtime polls it and reloads only when it changes, instead of
/// re-parsing every file on every tick. (Editors that rewrite a file within the same mtime tick
/// and keep its size are missed until the next change; acceptable for a static source.)
pub fn dir_fingerprint(dir: &Path) -> io::Result<u64> {
    let mut hash = FnvHasher::default();
    for (name, path) in manifest_files(dir)? {
        // A file deleted between listing and stat simply counts as gone.
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        hash.write(name.as_bytes());
        hash.write(&[0]);
        hash.write(&meta.len().to_le_bytes());
        hash.write(&mtime.to_le_bytes());
    }
    Ok(hash.finish())
}

/// The manifest files of `dir`, sorted by name: `*.yaml`/`*.yml`, regular files or symlinks to
/// them, names not starting with `.` (a mounted ConfigMap's `..data` bookkeeping).
fn manifest_files(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let path = entry.path();
        if fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push((name, path));
        }
    }
    files.sort();
    Ok(files)
}

/// Loads manifests given as `(file name, contents)` pairs, in that order (later definitions of
/// the same object win, as with a second `kubectl apply`). Pure: [`load_dir_with`] is this plus
/// file reading, and tests call it directly.
pub fn load_texts(files: &[(String, String)], options: &Options) -> Objects {
    let mut loader = Loader::default();
    for (file, text) in files {
        for (index, padded) in split_documents(text).into_iter().enumerate() {
            let origin = format!("{file}#{}", index + 1);
            match serde_yaml::from_str::<Value>(&padded) {
                Ok(Value::Null) => {}
                Ok(value) => loader.document(&origin, Doc::Text(&padded), &value),
                Err(e) => loader
                    .problems
                    .push(Problem::new(origin, "", format!("not YAML: {e}"))),
            }
        }
    }
    loader.finish(options)
}

/// Splits a multi-document YAML text at `---` lines. Each non-blank document is returned
/// prefixed with as many newlines as lines precede it, so serde's line numbers are the file's.
/// (Splitting ourselves rather than with serde_yaml's multi-document reader keeps a syntax error
/// in one document from losing the documents after it.)
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start_line = 0;
    let mut flush = |current: &mut String, start_line: usize| {
        let blank = current
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
        if !blank {
            docs.push(format!("{}{}", "\n".repeat(start_line), current));
        }
        current.clear();
    };
    for (n, line) in text.lines().enumerate() {
        let marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if marker || line == "..." {
            flush(&mut current, start_line);
            start_line = n;
            if marker {
                // Content after the marker on the same line belongs to the new document; keep
                // its column.
                current.push_str("   ");
                current.push_str(&line[3..]);
            }
            current.push('\n');
        } else {
            if current.is_empty() {
                start_line = n;
            }
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current, start_line);
    docs
}

/// A document to decode: its text (for errors with line numbers) or, inside a `List`, a value.
enum Doc<'a> {
    Text(&'a str),
    Value(&'a Value),
}

impl Doc<'_> {
    fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_yaml::Error> {
        match self {
            Doc::Text(text) => serde_yaml::from_str(text),
            Doc::Value(value) => serde_yaml::from_value((*value).clone()),
        }
    }
}

/// Objects as decoded, before defaulting, allocation and mirroring. Each remembers the document
/// it came from for duplicate reports.
#[derive(Default)]
struct Loader {
    services: BTreeMap<ObjectRef, (String, Service)>,
    endpoints: BTreeMap<ObjectRef, (String, Endpoints)>,
    slices: BTreeMap<ObjectRef, (String, EndpointSlice)>,
    problems: Vec<Problem>,
}

impl Loader {
    fn document(&mut self, origin: &str, doc: Doc<'_>, value: &Value) {
        let text = |key: &str| value.get(key).and_then(Value::as_str);
        let (api_version, kind) = (text("apiVersion").unwrap_or(""), text("kind"));
        let Some(kind) = kind else {
            self.problems
                .push(Problem::new(origin, "kind", "missing; document skipped"));
            return;
        };
        let described = describe(kind, value);
        let problems = &mut self.problems;
        let decode_failed = |problems: &mut Vec<Problem>, e: serde_yaml::Error| {
            problems.push(Problem::new(
                format!("{origin} ({described})"),
                "",
                e.to_string(),
            ))
        };
        match (api_version, kind) {
            ("v1", "Service") => match doc.decode::<Service>() {
                Ok(obj) => insert(&mut self.services, "Service", origin, obj, problems),
                Err(e) => decode_failed(problems, e),
            },
            ("v1", "Endpoints") => match doc.decode::<Endpoints>() {
                Ok(obj) => insert(&mut self.endpoints, "Endpoints", origin, obj, problems),
                Err(e) => decode_failed(problems, e),
            },
            ("discovery.k8s.io/v1", "EndpointSlice") => match doc.decode::<EndpointSlice>() {
                Ok(obj) => insert(&mut self.slices, "EndpointSlice", origin, obj, problems),
                Err(e) => decode_failed(problems, e),
            },
            ("v1", "List") => match value.get("items") {
                Some(Value::Sequence(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        self.document(&format!("{origin}.items[{i}]"), Doc::Value(item), item);
                    }
                }
                None | Some(Value::Null) => {}
                Some(_) => self
                    .problems
                    .push(Problem::new(origin, "items", "not a list")),
            },
            _ => self.problems.push(Problem::new(
                format!("{origin} ({described})"),
                "",
                format!("{api_version}/{kind} is not read by svc-lb; skipped"),
            )),
        }
    }

    /// Defaulting, allocation, mirroring: turns the decoded objects into [`Objects`].
    fn finish(self, options: &Options) -> Objects {
        let Loader {
            services,
            endpoints,
            slices,
            mut problems,
        } = self;
        let mut services: BTreeMap<ObjectRef, Service> =
            services.into_iter().map(|(r, (_, s))| (r, s)).collect();
        let mut slices: BTreeMap<ObjectRef, EndpointSlice> =
            slices.into_iter().map(|(r, (_, s))| (r, s)).collect();
        for svc in services.values_mut() {
            apply_service_defaults(svc);
        }
        allocate(&mut services, options, &mut problems);
        for (ep_ref, (_, ep)) in &endpoints {
            for slice in mirror_endpoints(ep_ref, ep, services.get(ep_ref), &mut problems) {
                let Some(slice_ref) = ObjectRef::from_meta(&slice.metadata) else {
                    continue;
                };
                if slices.contains_key(&slice_ref) {
                    problems.push(Problem::new(
                        format!("Endpoints {ep_ref}"),
                        "",
                        format!(
                            "mirrored slice name {slice_ref} is taken by an EndpointSlice in \
                             the manifests; not mirrored"
                        ),
                    ));
                    continue;
                }
                slices.insert(slice_ref, slice);
            }
        }
        Objects {
            services,
            slices,
            problems,
        }
    }
}

/// `"Service default/foo"` from a raw document, as far as it can be known.
fn describe(kind: &str, value: &Value) -> String {
    let meta = value.get("metadata");
    let field = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    match field("name") {
        Some(name) => format!("{kind} {}/{name}", field("namespace").unwrap_or("default")),
        None => kind.to_owned(),
    }
}

/// Files a decoded object under its namespace/name (defaulting the namespace in the object too).
fn insert<T>(
    map: &mut BTreeMap<ObjectRef, (String, T)>,
    kind: &str,
    origin: &str,
    mut obj: T,
    problems: &mut Vec<Problem>,
) where
    T: k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    let Some(obj_ref) = ObjectRef::from_meta(obj.metadata()) else {
        problems.push(Problem::new(
            format!("{origin} ({kind})"),
            "metadata.name",
            "required",
        ));
        return;
    };
    obj.metadata_mut().namespace = Some(obj_ref.namespace.clone());
    if let Some((previous, _)) = map.insert(obj_ref.clone(), (origin.to_owned(), obj)) {
        problems.push(Problem::new(
            format!("{kind} {obj_ref}"),
            "",
            format!("defined in {previous} and again in {origin}; the later definition wins"),
        ));
    }
}

/// The API server's defaults that matter downstream.
fn apply_service_defaults(svc: &mut Service) {
    let spec = svc.spec.get_or_insert_default();
    spec.type_.get_or_insert_with(|| "ClusterIP".to_owned());
    spec.session_affinity
        .get_or_insert_with(|| "None".to_owned());
    for port in spec.ports.iter_mut().flatten() {
        port.protocol.get_or_insert_with(|| "TCP".to_owned());
        port.target_port.get_or_insert(IntOrString::Int(port.port));
    }
    // `clusterIP` and `clusterIPs[0]` are the same address; either may be the one given.
    let first = spec
        .cluster_ips
        .as_ref()
        .and_then(|ips| ips.first())
        .cloned();
    match (spec.cluster_ip.as_deref(), first) {
        (None | Some(""), Some(first)) => spec.cluster_ip = Some(first),
        (Some(ip), None) if !ip.is_empty() => spec.cluster_ips = Some(vec![ip.to_owned()]),
        _ => {}
    }
}

fn service_type(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("ClusterIP")
}

fn wants_node_ports(svc: &Service) -> bool {
    match service_type(svc) {
        "NodePort" => true,
        "LoadBalancer" => {
            svc.spec
                .as_ref()
                .and_then(|s| s.allocate_load_balancer_node_ports)
                != Some(false)
        }
        _ => false,
    }
}

/// Reserves user-chosen ClusterIPs and NodePorts (refusing Services that reuse one), then
/// allocates the missing ones. See the module docs for why it is a pure function of the input.
fn allocate(
    services: &mut BTreeMap<ObjectRef, Service>,
    options: &Options,
    problems: &mut Vec<Problem>,
) {
    let mut ips: HashMap<Ipv4Addr, ObjectRef> = HashMap::new();
    let mut node_ports: HashMap<u16, ObjectRef> = HashMap::new();
    let mut refused = Vec::new();

    // Pass 1: user-chosen values, first come (in ObjectRef order) first served.
    for (svc_ref, svc) in services.iter() {
        let object = format!("Service {svc_ref}");
        let spec = svc.spec.as_ref();
        let chosen_ip = match spec.and_then(|s| s.cluster_ip.as_deref()) {
            _ if service_type(svc) == "ExternalName" => None,
            Some(text) => text.parse::<Ipv4Addr>().ok(),
            None => None,
        };
        let mut chosen_ports = Vec::new();
        if wants_node_ports(svc) {
            for (i, port) in spec
                .and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
                .enumerate()
            {
                if let Some(n) = port.node_port.and_then(|n| u16::try_from(n).ok()) {
                    chosen_ports.push((i, n));
                }
            }
        }
        let ip_conflict = chosen_ip.and_then(|ip| ips.get(&ip).map(|owner| (ip, owner)));
        let port_conflict = chosen_ports
            .iter()
            .find_map(|(i, n)| node_ports.get(n).map(|owner| (*i, *n, owner)));
        if let Some((ip, owner)) = ip_conflict {
            problems.push(Problem::new(
                &object,
                "spec.clusterIP",
                format!("{ip} is already allocated to Service {owner}; Service refused"),
            ));
            refused.push(svc_ref.clone());
            continue;
        }
        if let Some((i, n, owner)) = port_conflict {
            problems.push(Problem::new(
                &object,
                format!("spec.ports[{i}].nodePort"),
                format!("{n} is already allocated to Service {owner}; Service refused"),
            ));
            refused.push(svc_ref.clone());
            continue;
        }
        if let Some(ip) = chosen_ip {
            if !options.service_cidr.contains(ip) {
                problems.push(Problem::new(
                    &object,
                    "spec.clusterIP",
                    format!(
                        "{ip} is outside the service CIDR {}; accepted",
                        options.service_cidr
                    ),
                ));
            }
            ips.insert(ip, svc_ref.clone());
        }
        for (i, n) in chosen_ports {
            if !options.node_port_range.contains(&n) {
                problems.push(Problem::new(
                    &object,
                    format!("spec.ports[{i}].nodePort"),
                    format!(
                        "{n} is outside the node-port range {}-{}; accepted",
                        options.node_port_range.start(),
                        options.node_port_range.end()
                    ),
                ));
            }
            node_ports.insert(n, svc_ref.clone());
        }
    }
    for svc_ref in refused {
        services.remove(&svc_ref);
    }

    // Pass 2: allocations, in ObjectRef order.
    let cidr = options.service_cidr;
    // Candidates: network+2 ..= broadcast-1 (not the network, the `.1`, or the broadcast).
    let first_ip = u64::from(u32::from(cidr.network())) + 2;
    let last_ip = u64::from(u32::from(cidr.broadcast())).saturating_sub(1);
    let ip_count = (last_ip + 1).saturating_sub(first_ip);
    let first_port = u64::from(*options.node_port_range.start());
    let port_count = (u64::from(*options.node_port_range.end()) + 1).saturating_sub(first_port);
    let mut full = Vec::new();
    for (svc_ref, svc) in services.iter_mut() {
        let object = format!("Service {svc_ref}");
        let needs_ip = service_type(svc) != "ExternalName"
            && svc
                .spec
                .as_ref()
                .is_some_and(|s| s.cluster_ip.as_deref().unwrap_or("").is_empty());
        let node_ports_wanted = wants_node_ports(svc);
        let spec = svc.spec.get_or_insert_default();
        if needs_ip {
            let key = svc_ref.to_string();
            let found = probe(&key, ip_count, |offset| {
                let Ok(candidate) = u32::try_from(first_ip + offset) else {
                    return None;
                };
                let ip = Ipv4Addr::from(candidate);
                (!ips.contains_key(&ip)).then_some(ip)
            });
            let Some(ip) = found else {
                problems.push(Problem::new(
                    &object,
                    "spec.clusterIP",
                    format!("no free address left in the service CIDR {cidr}; Service refused"),
                ));
                full.push(svc_ref.clone());
                continue;
            };
            ips.insert(ip, svc_ref.clone());
            spec.cluster_ip = Some(ip.to_string());
            spec.cluster_ips = Some(vec![ip.to_string()]);
            spec.ip_families
                .get_or_insert_with(|| vec!["IPv4".to_owned()]);
            spec.ip_family_policy
                .get_or_insert_with(|| "SingleStack".to_owned());
        } else if spec.cluster_ip.as_deref() == Some("None") {
            spec.cluster_ips
                .get_or_insert_with(|| vec!["None".to_owned()]);
        }
        if !node_ports_wanted {
            continue;
        }
        for (i, port) in spec.ports.iter_mut().flatten().enumerate() {
            if port.node_port.is_some() {
                continue;
            }
            let which = match port.name.as_deref() {
                Some(name) if !name.is_empty() => name.to_owned(),
                _ => format!(
                    "{}/{}",
                    port.port,
                    port.protocol.as_deref().unwrap_or("TCP")
                ),
            };
            let found = probe(&format!("{svc_ref}/{which}"), port_count, |offset| {
                let n = u16::try_from(first_port + offset).ok()?;
                (!node_ports.contains_key(&n)).then_some(n)
            });
            match found {
                Some(n) => {
                    node_ports.insert(n, svc_ref.clone());
                    port.node_port = Some(i32::from(n));
                }
                None => problems.push(Problem::new(
                    &object,
                    format!("spec.ports[{i}].nodePort"),
                    "no free node port left in the range; port left without one",
                )),
            }
        }
    }
    for svc_ref in full {
        services.remove(&svc_ref);
    }
}

/// Linear probing over `0..count` starting at FNV-1a(`key`) mod `count`; returns the first
/// candidate `accept` takes. `accept` returns `None` for taken candidates. Allocation must give
/// the same answer on every node and across releases: std's `DefaultHasher` is seeded per
/// process and its algorithm may change, FNV-1a (64 bit, the `fnv` crate) is specified.
fn probe<T>(key: &str, count: u64, mut accept: impl FnMut(u64) -> Option<T>) -> Option<T> {
    if count == 0 {
        return None;
    }
    let mut hash = FnvHasher::default();
    hash.write(key.as_bytes());
    let start = hash.finish() % count;
    (0..count).find_map(|k| accept((start + k) % count))
}

/// Converts a hand-written `v1/Endpoints` into EndpointSlices as Kubernetes'
/// endpointslicemirroring controller does, or returns nothing when it would not mirror:
/// the Endpoints is labelled [`LABEL_SKIP_MIRROR`]`: "true"`, its Service does not exist, or the
/// Service has a selector (then the Service's slices come from its pods, not from here).
///
/// Subsets with the same ports share slices; each address family gets its own slices (IPv4
/// `<name>-mirror-<n>`, IPv6 `<name>-mirror-ipv6-<n>`; the real controller uses random
/// suffixes, ours must be deterministic), at most [`MAX_ENDPOINTS_PER_MIRRORED_SLICE`] endpoints
/// each. `addresses` become `ready: true`, `notReadyAddresses` `ready: false`; hostname,
/// nodeName and targetRef are carried. Slices are labelled with [`LABEL_SERVICE_NAME`] and
/// [`LABEL_MANAGED_BY`], and keep the Endpoints' own labels and annotations.
pub fn mirror_endpoints(
    ep_ref: &ObjectRef,
    ep: &Endpoints,
    service: Option<&Service>,
    problems: &mut Vec<Problem>,
) -> Vec<EndpointSlice> {
    let object = format!("Endpoints {ep_ref}");
    let labels = ep.metadata.labels.as_ref();
    if labels
        .and_then(|l| l.get(LABEL_SKIP_MIRROR))
        .map(String::as_str)
        == Some("true")
    {
        return Vec::new();
    }
    let Some(service) = service else {
        problems.push(Problem::new(
            &object,
            "",
            "no Service of that name; not mirrored",
        ));
        return Vec::new();
    };
    if service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty())
    {
        problems.push(Problem::new(
            &object,
            "",
            "its Service has a selector, so its endpoints come from the selected pods; \
             not mirrored",
        ));
        return Vec::new();
    }

    // Subsets grouped by their (sorted) port list, in first-seen order.
    struct Group<'a> {
        key: Vec<(String, i32, String)>,
        ports: Vec<EndpointPort>,
        v4: Vec<(IpAddr, bool, &'a EndpointAddress)>,
        v6: Vec<(IpAddr, bool, &'a EndpointAddress)>,
    }
    let mut groups: Vec<Group<'_>> = Vec::new();
    for (i, subset) in ep.subsets.iter().flatten().enumerate() {
        let ports: Vec<EndpointPort> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: p.name.clone(),
                port: Some(p.port),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".to_owned())),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let mut key: Vec<_> = ports
            .iter()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.port.unwrap_or(0),
                    p.protocol.clone().unwrap_or_default(),
                )
            })
            .collect();
        key.sort();
        let at = match groups.iter().position(|g| g.key == key) {
            Some(at) => at,
            None => {
                groups.push(Group {
                    key,
                    ports,
                    v4: Vec::new(),
                    v6: Vec::new(),
                });
                groups.len() - 1
            }
        };
        let group = &mut groups[at];
        let lists = [
            ("addresses", &subset.addresses, true),
            ("notReadyAddresses", &subset.not_ready_addresses, false),
        ];
        for (field, list, ready) in lists {
            for (j, address) in list.iter().flatten().enumerate() {
                match address.ip.parse::<IpAddr>() {
                    Ok(ip @ IpAddr::V4(_)) => group.v4.push((ip, ready, address)),
                    Ok(ip @ IpAddr::V6(_)) => group.v6.push((ip, ready, address)),
                    Err(_) => problems.push(Problem::new(
                        &object,
                        format!("subsets[{i}].{field}[{j}].ip"),
                        format!("{:?} is not an IP address; not mirrored", address.ip),
                    )),
                }
            }
        }
    }

    let mut slice_labels = labels.cloned().unwrap_or_default();
    slice_labels.insert(LABEL_SERVICE_NAME.to_owned(), ep_ref.name.clone());
    slice_labels.insert(LABEL_MANAGED_BY.to_owned(), MIRRORING_CONTROLLER.to_owned());
    let annotations = ep.metadata.annotations.as_ref().map(|a| {
        a.iter()
            .filter(|(k, _)| !NOT_MIRRORED_ANNOTATIONS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    });
    let mut slices = Vec::new();
    let mut counters = [0usize; 2];
    for group in &groups {
        for (family, addrs) in [(0, &group.v4), (1, &group.v6)] {
            let mut seen = std::collections::HashSet::new();
            let unique: Vec<_> = addrs.iter().filter(|(ip, _, _)| seen.insert(*ip)).collect();
            for chunk in unique.chunks(MAX_ENDPOINTS_PER_MIRRORED_SLICE) {
                let n = counters[family];
                counters[family] += 1;
                let (name, address_type) = match family {
                    0 => (format!("{}-mirror-{n}", ep_ref.name), "IPv4"),
                    _ => (format!("{}-mirror-ipv6-{n}", ep_ref.name), "IPv6"),
                };
                slices.push(EndpointSlice {
                    metadata: ObjectMeta {
                        name: Some(name),
                        namespace: Some(ep_ref.namespace.clone()),
                        labels: Some(slice_labels.clone()),
                        annotations: annotations.clone().filter(|a| !a.is_empty()),
                        ..ObjectMeta::default()
                    },
                    address_type: address_type.to_owned(),
                    ports: Some(group.ports.clone()),
                    endpoints: chunk
                        .iter()
                        .map(|(ip, ready, address)| Endpoint {
                            addresses: vec![ip.to_string()],
                            conditions: Some(EndpointConditions {
                                ready: Some(*ready),
                                ..EndpointConditions::default()
                            }),
                            hostname: address.hostname.clone(),
                            node_name: address.node_name.clone(),
                            target_ref: address.target_ref.clone(),
                            ..Endpoint::default()
                        })
                        .collect(),
                });
            }
        }
    }
    slices
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{desired, NodeContext};
    use svc_common::{Backend, FrontendKey, PROTO_TCP, SCOPE_ANY};

    /// The seed document's manifests (kubernetes-service-summary), plus the hand-written
    /// Endpoints the "Services without selectors" section implies.
    const SEED_TEST_APP: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: test-app
spec:
  selector:
    app: test-app-link
  ports:
    - protocol: TCP
      port: 9000
      targetPort: 9000
";
    const SEED_NO_SELECTOR: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: test-app-no-selector
spec:
  ports:
    - protocol: TCP
      port: 30050
      targetPort: 30050
---
apiVersion: v1
kind: Endpoints
metadata:
  name: test-app-no-selector
subsets:
  - addresses:
      - ip: 192.0.2.42
        nodeName: node-b
      - ip: 2001:db8::42
    notReadyAddresses:
      - ip: 192.0.2.43
    ports:
      - port: 30050
";
    const SEED_CIP: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: test-cip-service
spec:
  type: ClusterIP
  clusterIP: 10.96.211.115
  selector:
    app: test-app-link
  ports:
    - protocol: TCP
      port: 9000
      targetPort: 9000
";
    const SEED_NODEPORT: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: test-service
spec:
  type: NodePort
  selector:
    app.kubernetes.io/name: MyApp
  ports:
      # By default and for convenience, the `targetPort` is set to the same value as the `port` field.
    - port: 80
      targetPort: 80
      # Optional field
      nodePort: 30007
";
    const SEED_LB: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: my-service
spec:
  selector:
    app.kubernetes.io/name: MyApp
  ports:
    - protocol: TCP
      port: 80
      targetPort: 9376
  clusterIP: 10.0.171.239
  type: LoadBalancer
status:
  loadBalancer:
    ingress:
    - ip: 192.0.2.127
";
    const SEED_EXTERNAL_NAME: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: my-service
  namespace: prod
spec:
  type: ExternalName
  externalName: my.database.example.com
";
    /// The seed's externalIPs example with its `80.11.12.10` replaced by `198.51.100.10`: test
    /// addresses come from the documentation ranges only (DESIGN §3).
    const SEED_EXTERNAL_IP: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: test-external-ip
spec:
  selector:
    app.kubernetes.io/name: MyApp
  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: 9376
  externalIPs:
    - 198.51.100.10
";

    fn seed_files() -> Vec<(String, String)> {
        [
            ("test_app.yml", SEED_TEST_APP),
            ("test_app_service_no_selector.yml", SEED_NO_SELECTOR),
            ("test_cluster.ip.yml", SEED_CIP),
            ("nodeport.yaml", SEED_NODEPORT),
            ("lb.yaml", SEED_LB),
            ("external-name.yaml", SEED_EXTERNAL_NAME),
            ("test_external_ip.yml", SEED_EXTERNAL_IP),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect()
    }

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "svc-agent-manifests-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&path).expect("create temp dir");
            Self(path)
        }

        fn write(&self, name: &str, text: &str) {
            fs::write(self.0.join(name), text).expect("write manifest");
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn r(ns: &str, name: &str) -> ObjectRef {
        ObjectRef::new(ns, name)
    }

    fn cluster_ip(objects: &Objects, ns: &str, name: &str) -> Option<String> {
        objects
            .services
            .get(&r(ns, name))?
            .spec
            .as_ref()?
            .cluster_ip
            .clone()
    }

    fn load(files: &[(&str, &str)]) -> Objects {
        let files: Vec<_> = files
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        load_texts(&files, &Options::default())
    }

    #[test]
    fn seed_manifests_load_as_the_api_server_would_accept_them() {
        let dir = TempDir::new("seed");
        for (name, text) in seed_files() {
            dir.write(&name, &text);
        }
        dir.write("README.md", "not a manifest");
        let objects = load_dir(&dir.0).expect("load");
        let names: Vec<String> = objects.services.keys().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "default/my-service",
                "default/test-app",
                "default/test-app-no-selector",
                "default/test-cip-service",
                "default/test-external-ip",
                "default/test-service",
                "prod/my-service",
            ]
        );
        let cidr = Ipv4Cidr::default();
        for name in [
            "test-app",
            "test-app-no-selector",
            "test-external-ip",
            "test-service",
        ] {
            let ip: Ipv4Addr = cluster_ip(&objects, "default", name)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{name} has an allocated clusterIP"));
            assert!(cidr.contains(ip) && ip.octets()[2..] != [0, 0] && ip.octets()[2..] != [0, 1]);
            assert_ne!(ip.octets()[2..], [255, 255]);
            let spec = objects.services[&r("default", name)]
                .spec
                .as_ref()
                .expect("spec");
            assert_eq!(spec.cluster_ips, Some(vec![ip.to_string()]));
        }
        assert_eq!(
            cluster_ip(&objects, "default", "test-cip-service").as_deref(),
            Some("10.96.211.115")
        );
        assert_eq!(
            cluster_ip(&objects, "default", "my-service").as_deref(),
            Some("10.0.171.239")
        );
        assert_eq!(cluster_ip(&objects, "prod", "my-service"), None);

        let port = |name: &str| {
            objects.services[&r("default", name)]
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .and_then(|p| p.first().cloned())
                .expect("port")
        };
        assert_eq!(port("test-service").node_port, Some(30007));
        let lb_node_port = port("my-service")
            .node_port
            .expect("LoadBalancer gets a nodePort");
        assert!((30000..=32767).contains(&lb_node_port) && lb_node_port != 30007);
        assert_eq!(port("test-app").node_port, None);
        assert_eq!(port("test-app").protocol.as_deref(), Some("TCP"));
        let lb = &objects.services[&r("default", "my-service")];
        let ingress = lb
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref());
        assert_eq!(
            ingress
                .and_then(|i| i.first())
                .and_then(|i| i.ip.as_deref()),
            Some("192.0.2.127")
        );
        let ext = objects.services[&r("default", "test-external-ip")]
            .spec
            .as_ref()
            .and_then(|s| s.external_ips.clone());
        assert_eq!(ext, Some(vec!["198.51.100.10".to_owned()]));

        // Only the out-of-CIDR clusterIP is worth a word.
        assert_eq!(objects.problems.len(), 1, "{:?}", objects.problems);
        assert_eq!(objects.problems[0].field, "spec.clusterIP");

        // The frontends the model derives from them: one ClusterIP frontend per Service with a
        // clusterIP, plus two NodePorts on the node address, the LB IP and the external IP
        // (seed_north_south_services_serve_node_ports_lb_and_external_ips checks those);
        // ExternalName none; only the mirrored Service has (IPv4, ready) backends.
        let node = NodeContext {
            node_name: "node-a".into(),
            node_ips: vec![Ipv4Addr::new(172, 18, 0, 2)],
            ..Default::default()
        };
        let d = desired(&objects, &node);
        assert_eq!(d.frontends.len(), 10, "{:#?}", d.frontends.keys());
        let cip = FrontendKey {
            addr: [10, 96, 211, 115],
            port: 9000,
            proto: PROTO_TCP,
            scope: SCOPE_ANY,
        };
        assert!(d.frontends[&cip].backends.is_empty());
        let no_sel_ip: Ipv4Addr = cluster_ip(&objects, "default", "test-app-no-selector")
            .and_then(|s| s.parse().ok())
            .expect("ip");
        let no_sel = FrontendKey {
            addr: no_sel_ip.octets(),
            port: 30050,
            proto: PROTO_TCP,
            scope: SCOPE_ANY,
        };
        assert_eq!(
            d.frontends[&no_sel].backends,
            vec![Backend {
                addr: [192, 0, 2, 42],
                port: 30050,
                proto: PROTO_TCP,
                flags: 0
            }]
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
    }

    #[test]
    fn seed_north_south_services_serve_node_ports_lb_and_external_ips() {
        use svc_common::{FRONTEND_F_EXTERNAL_IP, FRONTEND_F_NODEPORT};
        let objects = load(&[
            ("nodeport.yaml", SEED_NODEPORT),
            ("lb.yaml", SEED_LB),
            ("test_external_ip.yml", SEED_EXTERNAL_IP),
        ]);
        let node = NodeContext {
            node_name: "node-a".into(),
            node_ips: vec![Ipv4Addr::new(172, 18, 0, 2)],
            ..Default::default()
        };
        let d = desired(&objects, &node);
        let key = |addr: [u8; 4], port: u16| FrontendKey {
            addr,
            port,
            proto: PROTO_TCP,
            scope: SCOPE_ANY,
        };
        let ip_of = |name: &str| -> [u8; 4] {
            cluster_ip(&objects, "default", name)
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
                .expect("clusterIP")
                .octets()
        };
        let lb_node_port = objects.services[&r("default", "my-service")]
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p.first())
            .and_then(|p| p.node_port)
            .and_then(|n| u16::try_from(n).ok())
            .expect("allocated nodePort");
        let node_ip = [172, 18, 0, 2];
        let got: BTreeMap<FrontendKey, (String, u32)> = d
            .frontends
            .iter()
            .map(|(k, f)| (*k, (f.service.name.clone(), f.flags)))
            .collect();
        let want: BTreeMap<FrontendKey, (String, u32)> = [
            (key(ip_of("test-service"), 80), ("test-service", 0)),
            (key(node_ip, 30007), ("test-service", FRONTEND_F_NODEPORT)),
            (key([10, 0, 171, 239], 80), ("my-service", 0)),
            (
                key(node_ip, lb_node_port),
                ("my-service", FRONTEND_F_NODEPORT),
            ),
            (
                key([192, 0, 2, 127], 80),
                ("my-service", FRONTEND_F_EXTERNAL_IP),
            ),
            (key(ip_of("test-external-ip"), 80), ("test-external-ip", 0)),
            (
                key([198, 51, 100, 10], 80),
                ("test-external-ip", FRONTEND_F_EXTERNAL_IP),
            ),
        ]
        .into_iter()
        .map(|(k, (n, f))| (k, (n.to_owned(), f)))
        .collect();
        assert_eq!(got, want);
        assert!(d.problems.is_empty(), "{:?}", d.problems);
    }

    #[test]
    fn endpoints_of_selectorless_service_are_mirrored_like_the_controller() {
        let objects = load(&[("a.yaml", SEED_NO_SELECTOR)]);
        let names: Vec<String> = objects.slices.keys().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "default/test-app-no-selector-mirror-0",
                "default/test-app-no-selector-mirror-ipv6-0"
            ]
        );
        let v4 = &objects.slices[&r("default", "test-app-no-selector-mirror-0")];
        assert_eq!(v4.address_type, "IPv4");
        let labels = v4.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(LABEL_SERVICE_NAME).map(String::as_str),
            Some("test-app-no-selector")
        );
        assert_eq!(
            labels.get(LABEL_MANAGED_BY).map(String::as_str),
            Some(MIRRORING_CONTROLLER)
        );
        let ports = v4.ports.clone().unwrap_or_default();
        assert_eq!(
            ports,
            vec![EndpointPort {
                name: None,
                port: Some(30050),
                protocol: Some("TCP".into()),
                app_protocol: None
            }]
        );
        let eps: Vec<_> = v4
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.addresses.clone(),
                    e.conditions.as_ref().and_then(|c| c.ready),
                    e.node_name.clone(),
                )
            })
            .collect();
        assert_eq!(
            eps,
            vec![
                (
                    vec!["192.0.2.42".to_owned()],
                    Some(true),
                    Some("node-b".to_owned())
                ),
                (vec!["192.0.2.43".to_owned()], Some(false), None),
            ]
        );
        let v6 = &objects.slices[&r("default", "test-app-no-selector-mirror-ipv6-0")];
        assert_eq!(v6.address_type, "IPv6");
        assert_eq!(v6.endpoints.len(), 1);
    }

    #[test]
    fn subsets_with_the_same_ports_share_a_slice() {
        let objects = load(&[(
            "a.yaml",
            "\
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {ports: [{name: a, port: 80}, {name: b, port: 81}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: ext}
subsets:
  - addresses: [{ip: 192.0.2.1}]
    ports: [{name: a, port: 80}, {name: b, port: 81}]
  - addresses: [{ip: 192.0.2.2}]
    ports: [{name: b, port: 81}, {name: a, port: 80}]
  - addresses: [{ip: 192.0.2.3}]
    ports: [{name: a, port: 8080}]
",
        )]);
        assert_eq!(objects.slices.len(), 2);
        assert_eq!(
            objects.slices[&r("default", "ext-mirror-0")]
                .endpoints
                .len(),
            2
        );
        assert_eq!(
            objects.slices[&r("default", "ext-mirror-1")]
                .endpoints
                .len(),
            1
        );
    }

    #[test]
    fn endpoints_are_not_mirrored_for_selector_missing_service_or_skip_label() {
        let objects = load(&[(
            "a.yaml",
            "\
apiVersion: v1
kind: Service
metadata: {name: sel}
spec: {selector: {app: x}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: sel}
subsets: [{addresses: [{ip: 192.0.2.1}], ports: [{port: 80}]}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: orphan}
subsets: [{addresses: [{ip: 192.0.2.1}], ports: [{port: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: skip}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Endpoints
metadata:
  name: skip
  labels: {endpointslice.kubernetes.io/skip-mirror: \"true\"}
subsets: [{addresses: [{ip: 192.0.2.1}], ports: [{port: 80}]}]
",
        )]);
        assert!(objects.slices.is_empty(), "{:?}", objects.slices.keys());
        let objs: Vec<_> = objects.problems.iter().map(|p| p.object.as_str()).collect();
        assert_eq!(objs, ["Endpoints default/orphan", "Endpoints default/sel"]);
    }

    #[test]
    fn unknown_kinds_and_bad_documents_are_problems_and_the_rest_loads() {
        let objects = load(&[
            (
                "a.yaml",
                "\
# leading comment
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: shop}
spec:
  ports:
    - port: eighty
---
---
apiVersion: v1
kind: Service
metadata: {name: good}
spec: {ports: [{port: 80}]}
---
key: [unclosed
---
just: a map
",
            ),
            ("b.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: also-good}\nspec: {ports: [{port: 81}]}\n"),
        ]);
        let names: Vec<String> = objects.services.keys().map(ToString::to_string).collect();
        assert_eq!(names, ["default/also-good", "default/good"]);
        let shown: Vec<String> = objects.problems.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 4, "{shown:#?}");
        assert!(
            shown[0]
                .starts_with("a.yaml#1 (Deployment default/web): apps/v1/Deployment is not read"),
            "{}",
            shown[0]
        );
        assert!(
            shown[1].starts_with("a.yaml#2 (Service shop/bad): spec.ports[0].port: invalid type"),
            "{}",
            shown[1]
        );
        assert!(
            shown[1].contains("line 12"),
            "line numbers are the file's: {}",
            shown[1]
        );
        assert!(shown[2].starts_with("a.yaml#4: not YAML"), "{}", shown[2]);
        assert!(
            shown[3].starts_with("a.yaml#5: kind: missing"),
            "{}",
            shown[3]
        );
    }

    #[test]
    fn list_items_are_loaded() {
        let objects = load(&[(
            "list.yaml",
            "\
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Service
    metadata: {name: one, namespace: ns}
    spec: {ports: [{port: 80}]}
  - apiVersion: v1
    kind: ConfigMap
    metadata: {name: cfg}
",
        )]);
        assert!(objects.services.contains_key(&r("ns", "one")));
        assert_eq!(objects.problems.len(), 1);
        assert!(objects.problems[0]
            .object
            .starts_with("list.yaml#1.items[1]"));
    }

    #[test]
    fn later_definition_of_the_same_object_wins() {
        let objects = load(&[
            ("a.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: 10.96.0.50, ports: [{port: 80}]}\n"),
            ("b.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: default}\nspec: {clusterIP: 10.96.0.51, ports: [{port: 80}]}\n"),
        ]);
        assert_eq!(
            cluster_ip(&objects, "default", "x").as_deref(),
            Some("10.96.0.51")
        );
        assert_eq!(objects.problems.len(), 1);
    }

    fn svc_yaml(ns: &str, name: &str, extra: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{ports: [{{port: 80}}]{extra}}}\n---\n")
    }

    #[test]
    fn cluster_ip_allocation_is_deterministic_and_independent_of_file_order() {
        let services: Vec<String> = (0..50)
            .map(|i| svc_yaml("ns", &format!("s{i}"), ""))
            .collect();
        let forward: Vec<(String, String)> = services
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("{i:03}.yaml"), t.clone()))
            .collect();
        let mut backward = forward.clone();
        backward.reverse();
        let a = load_texts(&forward, &Options::default());
        let b = load_texts(&backward, &Options::default());
        assert_eq!(a.services, b.services);
        let mut seen = std::collections::HashSet::new();
        for svc in a.services.values() {
            let ip = svc
                .spec
                .as_ref()
                .and_then(|s| s.cluster_ip.clone())
                .expect("allocated");
            assert!(seen.insert(ip), "no two Services share an address");
        }
    }

    #[test]
    fn allocation_probes_past_user_chosen_addresses_and_skips_reserved_ones() {
        // A /30 has exactly one allocatable address (.2): network .0, .1 and broadcast .3 are not.
        let options = Options {
            service_cidr: "10.0.0.0/30".parse().expect("cidr"),
            ..Options::default()
        };
        let texts = vec![(
            "a.yaml".to_owned(),
            svc_yaml("ns", "auto", "") + &svc_yaml("ns", "auto2", ""),
        )];
        let objects = load_texts(&texts, &options);
        assert_eq!(
            cluster_ip(&objects, "ns", "auto").as_deref(),
            Some("10.0.0.2")
        );
        assert!(
            !objects.services.contains_key(&r("ns", "auto2")),
            "CIDR full: refused"
        );
        assert!(objects
            .problems
            .iter()
            .any(|p| p.object == "Service ns/auto2" && p.message.contains("no free address")));

        // The user-chosen .2 is taken first even though the auto Service sorts before it.
        let texts = vec![(
            "a.yaml".to_owned(),
            svc_yaml("ns", "a-auto", "") + &svc_yaml("ns", "z-user", ", clusterIP: 10.0.0.2"),
        )];
        let objects = load_texts(&texts, &options);
        assert_eq!(
            cluster_ip(&objects, "ns", "z-user").as_deref(),
            Some("10.0.0.2")
        );
        assert!(!objects.services.contains_key(&r("ns", "a-auto")));

        // In a roomy CIDR, an auto Service whose hash lands on a user's address probes onward.
        let probe_start = |name: &str| {
            let mut h = FnvHasher::default();
            h.write(format!("ns/{name}").as_bytes());
            Ipv4Addr::from((10u32 << 24 | 96 << 16) + 2 + (h.finish() % 65533) as u32)
        };
        let natural = probe_start("auto");
        let texts = vec![(
            "a.yaml".to_owned(),
            svc_yaml("ns", "auto", "")
                + &svc_yaml("ns", "user", &format!(", clusterIP: {natural}")),
        )];
        let objects = load_texts(&texts, &Options::default());
        let got: Ipv4Addr = cluster_ip(&objects, "ns", "auto")
            .and_then(|s| s.parse().ok())
            .expect("ip");
        assert_ne!(got, natural);
        assert_eq!(u32::from(got), u32::from(natural) + 1);
    }

    #[test]
    fn duplicate_user_cluster_ip_or_node_port_refuses_the_later_service() {
        let texts = vec![(
            "a.yaml".to_owned(),
            svc_yaml("ns", "a", ", clusterIP: 10.96.0.50")
                + &svc_yaml("ns", "b", ", clusterIP: 10.96.0.50")
                + "apiVersion: v1\nkind: Service\nmetadata: {name: c, namespace: ns}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 30100}]}\n---\n"
                + "apiVersion: v1\nkind: Service\nmetadata: {name: d, namespace: ns}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 30100}]}\n",
        )];
        let objects = load_texts(&texts, &Options::default());
        let names: Vec<String> = objects.services.keys().map(ToString::to_string).collect();
        assert_eq!(names, ["ns/a", "ns/c"]);
        assert_eq!(objects.problems.len(), 2, "{:?}", objects.problems);
    }

    #[test]
    fn headless_and_external_name_services_get_no_cluster_ip() {
        let objects = load(&[(
            "a.yaml",
            &(svc_yaml("ns", "headless", ", clusterIP: None")
                + "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: ns}\nspec: {type: ExternalName, externalName: db.example.com}\n"),
        )]);
        assert_eq!(
            cluster_ip(&objects, "ns", "headless").as_deref(),
            Some("None")
        );
        let spec = objects.services[&r("ns", "headless")]
            .spec
            .clone()
            .expect("spec");
        assert_eq!(spec.cluster_ips, Some(vec!["None".to_owned()]));
        assert_eq!(cluster_ip(&objects, "ns", "ext"), None);
    }

    #[test]
    fn load_balancer_without_node_port_allocation_gets_none() {
        let objects = load(&[(
            "a.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: lb}\nspec: {type: LoadBalancer, allocateLoadBalancerNodePorts: false, ports: [{port: 80}]}\n",
        )]);
        let spec = objects.services[&r("default", "lb")]
            .spec
            .clone()
            .expect("spec");
        assert_eq!(
            spec.ports.and_then(|p| p.first().and_then(|p| p.node_port)),
            None
        );
    }

    #[test]
    fn load_dir_reports_unreadable_dir_as_error_and_skips_other_files() {
        let dir = TempDir::new("errors");
        assert!(load_dir(&dir.0.join("missing")).is_err());
        dir.write(".hidden.yaml", "garbage: [");
        dir.write("notes.txt", "garbage: [");
        fs::create_dir(dir.0.join("sub.yaml")).expect("mkdir");
        dir.write("empty.yaml", "");
        let objects = load_dir(&dir.0).expect("load");
        assert_eq!(objects, Objects::default());
    }

    #[test]
    fn dir_fingerprint_changes_with_manifest_files_only() {
        let dir = TempDir::new("fingerprint");
        let empty = dir_fingerprint(&dir.0).expect("fingerprint");
        dir.write("a.yaml", SEED_TEST_APP);
        let one = dir_fingerprint(&dir.0).expect("fingerprint");
        assert_ne!(empty, one);
        assert_eq!(one, dir_fingerprint(&dir.0).expect("fingerprint"));
        dir.write("notes.txt", "x");
        assert_eq!(one, dir_fingerprint(&dir.0).expect("fingerprint"));
        dir.write("a.yaml", SEED_CIP);
        assert_ne!(one, dir_fingerprint(&dir.0).expect("fingerprint"));
        assert!(dir_fingerprint(&dir.0.join("missing")).is_err());
    }

    #[test]
    fn split_documents_keeps_file_line_numbers() {
        let docs = split_documents("a: 1\n---\n\nb: 2\n--- c: 3\n...\n");
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0], "a: 1\n");
        assert_eq!(docs[1], "\n   \n\nb: 2\n");
        assert_eq!(docs[2], "\n\n\n\n    c: 3\n");
    }
}
