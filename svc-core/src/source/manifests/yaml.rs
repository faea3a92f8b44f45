//! Manifest files → decoded objects: each file split into its documents (line numbers kept the
//! file's), each document identified by `apiVersion`/`kind` (`v1/List` items one by one) and
//! decoded into its k8s-openapi type, with a [`Problem`] for what is skipped or fails and for a
//! second definition of the same object. [`Loader::finish`] then hands the objects to the API
//! server's steps (`allocate`, `mirror`).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::{DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::model::{ObjectRef, Objects, Problem};

use super::allocate::{allocate, apply_service_defaults};
use super::mirror::mirror_endpoints;
use super::Options;

/// One document of a manifest file, as [`split_documents`] cuts it: its text, borrowed from the
/// file, and how many of the file's lines precede it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Document<'a> {
    pub(super) text: &'a str,
    pub(super) lines_before: u64,
}

/// Splits a multi-document YAML text at its `---` and `...` lines, in one pass, into the
/// non-blank documents (not only whitespace and comments). Each is a slice of `text`: no copy,
/// no padding, so loading a file costs time in proportion to its length however many documents
/// it holds. Error locations are turned into the file's lines with [`Document::lines_before`].
///
/// Content after `---` on the marker line belongs to the new document: its slice starts right
/// after the marker (so columns on that one line count from there). serde-saphyr's own multi-document readers are not used: they stop at the
/// first syntax error (the whole file for `from_multiple`, the rest of it for `read`), while one
/// broken document must not lose the documents after it; and they decode every document into
/// one type, while a manifest's type is known only once its `kind` is read.
pub(super) fn split_documents(text: &str) -> Vec<Document<'_>> {
    fn push<'a>(docs: &mut Vec<Document<'a>>, text: &'a str, lines_before: u64) {
        let blank = text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
        if !blank {
            docs.push(Document { text, lines_before });
        }
    }
    let mut docs = Vec::new();
    // The current document starts at byte `start`, after `start_line` lines.
    let (mut start, mut start_line) = (0, 0);
    let mut offset = 0;
    for (n, raw) in (0u64..).zip(text.split_inclusive('\n')) {
        let line = raw.strip_suffix('\n').unwrap_or(raw);
        let line = line.strip_suffix('\r').unwrap_or(line);
        let marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if marker || line == "..." {
            push(&mut docs, &text[start..offset], start_line);
            (start, start_line) = if marker {
                (offset + 3, n)
            } else {
                (offset + raw.len(), n + 1)
            };
        }
        offset += raw.len();
    }
    push(&mut docs, &text[start..], start_line);
    docs
}

/// Parsing options: YAML 1.2 booleans only (`yes`, `on` stay strings, as serde_yaml read them),
/// and no source snippet kept for errors, which become one-line [`Problem`]s.
fn parse_options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true, with_snippet: false }
}

/// A parse or decode error as one line for an operator, its location in the file's lines.
fn render(e: &serde_saphyr::Error, lines_before: u64) -> String {
    e.render_with_options(serde_saphyr::render_options! {
        formatter: &serde_saphyr::UserMessageFormatter,
        snippets: serde_saphyr::SnippetMode::Off,
        line_offset: lines_before,
    })
}

impl Document<'_> {
    /// The document as a generic value (`Null` when it holds none), from which its `apiVersion`
    /// and `kind` are read; `Err` (the message) when it is not YAML.
    pub(super) fn value(&self) -> Result<Value, String> {
        serde_saphyr::from_str_with_options(self.text, parse_options())
            .map_err(|e| render(&e, self.lines_before))
    }

    /// The document decoded as `T` straight from its text, so an error carries its line and
    /// column in the file and, when the crate points at a node, that node's field path.
    fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        serde_saphyr::from_str_with_options(self.text, parse_options()).map_err(|e| DecodeError {
            field: e
                .location()
                .and_then(|at| path_at(self.text, (at.line(), at.column())))
                .unwrap_or_default(),
            message: render(&e, self.lines_before),
        })
    }
}

/// Why a document did not decode: the field path when known (else empty), and the message.
struct DecodeError {
    field: String,
    message: String,
}

/// A document to decode: its text (for errors with line numbers) or, inside a `List`, a value.
pub(super) enum Doc<'a> {
    Text(Document<'a>),
    Value(&'a Value),
}

impl Doc<'_> {
    fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        match self {
            Doc::Text(doc) => doc.decode(),
            Doc::Value(value) => {
                serde_json::from_value((*value).clone()).map_err(|e| DecodeError {
                    field: String::new(),
                    message: e.to_string(),
                })
            }
        }
    }
}

/// The field path (`spec.ports[0].port`) of the node of `text` at `at` (line, column, as the
/// crate counts them in `text`), if one starts exactly there. Only run for a document that
/// failed to decode.
fn path_at(text: &str, at: (u64, u64)) -> Option<String> {
    fn walk(path: &str, node: &Node, at: (u64, u64), found: &mut Option<String>) {
        let mut visit = |child: String, spanned: &Spanned<Node>| {
            let loc = &spanned.referenced;
            if (loc.line(), loc.column()) == at {
                *found = Some(child.clone());
            }
            walk(&child, &spanned.value, at, found);
        };
        match node {
            Node::Map(entries) => {
                for (key, value) in entries {
                    let child = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    visit(child, value);
                }
            }
            Node::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    visit(format!("{path}[{i}]"), item);
                }
            }
            Node::Leaf => {}
        }
    }
    let root: Node = serde_saphyr::from_str_with_options(text, parse_options()).ok()?;
    let mut found = None;
    walk("", &root, at, &mut found);
    found
}

/// A document's shape with where each node starts, for [`path_at`]. Keys that are not strings
/// are read as their text.
enum Node {
    Map(Vec<(String, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Leaf,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_i128<E>(self, _: i128) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_u128<E>(self, _: u128) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<Key, Spanned<Node>>()? {
                    entries.push((entry.0 .0, entry.1));
                }
                Ok(Node::Map(entries))
            }
        }
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// A mapping key as text, whatever its YAML type (`80: x` is key `80`).
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Ok(Key(match value {
            Value::String(s) => s,
            other => other.to_string(),
        }))
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
        let decode_failed = |problems: &mut Vec<Problem>, e: DecodeError| {
            problems.push(Problem::new(
                format!("{origin} ({described})"),
                e.field,
                e.message,
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
                Some(Value::Array(items)) => {
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
