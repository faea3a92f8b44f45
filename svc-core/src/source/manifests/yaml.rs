//! Manifest files → decoded objects: each file split into its documents (line numbers kept the
//! file's), each document identified by `apiVersion`/`kind` (`v1/List` items one by one) and
//! decoded into its k8s-openapi type, with a [`Problem`] for what is skipped or fails and for a
//! second definition of the same object. [`Loader::finish`] then hands the objects to the API
//! server's steps (`allocate`, `mirror`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::model::{ObjectRef, Objects, Problem};

use super::allocate::{allocate, apply_service_defaults};
use super::mirror::mirror_endpoints;
use super::Options;

/// Splits a multi-document YAML text at `---` lines. Each non-blank document is returned
/// prefixed with as many newlines as lines precede it, so serde's line numbers are the file's.
/// (Splitting ourselves rather than with serde_yaml's multi-document reader keeps a syntax error
/// in one document from losing the documents after it.)
pub(super) fn split_documents(text: &str) -> Vec<String> {
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
pub(super) enum Doc<'a> {
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
pub(super) struct Loader {
    services: BTreeMap<ObjectRef, (String, Service)>,
    endpoints: BTreeMap<ObjectRef, (String, Endpoints)>,
    slices: BTreeMap<ObjectRef, (String, EndpointSlice)>,
    pub(super) problems: Vec<Problem>,
}

impl Loader {
    pub(super) fn document(&mut self, origin: &str, doc: Doc<'_>, value: &Value) {
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
    pub(super) fn finish(self, options: &Options) -> Objects {
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
