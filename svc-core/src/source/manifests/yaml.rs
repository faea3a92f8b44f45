//! Manifest files → decoded objects: each file split into its documents (line numbers kept the
//! file's), each document identified by `apiVersion`/`kind` (`v1/List` items one by one) and
//! decoded into its k8s-openapi type, with a [`Problem`] for what is skipped or fails and for a
//! second definition of the same object. [`Loader::finish`] then hands the objects to the API
//! server's steps (`allocate`, `mirror`).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
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

/// A decoded object, its namespace defaulted (and, for a Service, the API server's defaults
/// applied: they are the object's own, whichever definition wins).
// Every variant is hundreds of bytes, and each object is moved once into its file's items:
// boxing would add an allocation per object and save little.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Object {
    Service(Service),
    Endpoints(Endpoints),
    Slice(EndpointSlice),
}

/// The kinds of [`Object`], for indexes and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Kind {
    Service,
    Endpoints,
    Slice,
}

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Endpoints => "Endpoints",
            Kind::Slice => "EndpointSlice",
        }
    }
}

impl Object {
    pub(super) fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::Endpoints(_) => Kind::Endpoints,
            Object::Slice(_) => Kind::Slice,
        }
    }
}

/// What one document (or `List` item) of a file gave, in the file's order: a problem, or an
/// object with the document it came from (`a.yaml#2`, for redefinition reports).
// Problems are the rare variant; objects are not boxed (see `Object`).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Item {
    Problem(Problem),
    Object {
        origin: String,
        obj_ref: ObjectRef,
        object: Object,
    },
}

/// Splits one file into its documents and decodes them: everything loading needs from the
/// file, independent of every other file (so a cache can keep it per file).
pub(super) fn parse_file(file: &str, text: &str) -> Vec<Item> {
    let mut loader = Loader::default();
    for (index, doc) in split_documents(text).into_iter().enumerate() {
        let origin = format!("{file}#{}", index + 1);
        match doc.value() {
            Ok(Value::Null) => {}
            Ok(value) => loader.document(&origin, Doc::Text(doc), &value),
            Err(e) => loader.problem(Problem::new(origin, "", format!("not YAML: {e}"))),
        }
    }
    loader.items
}

/// The items of one file as they are decoded.
#[derive(Default)]
struct Loader {
    items: Vec<Item>,
}

impl Loader {
    fn problem(&mut self, problem: Problem) {
        self.items.push(Item::Problem(problem));
    }

    fn document(&mut self, origin: &str, doc: Doc<'_>, value: &Value) {
        let text = |key: &str| value.get(key).and_then(Value::as_str);
        let (api_version, kind) = (text("apiVersion").unwrap_or(""), text("kind"));
        let Some(kind) = kind else {
            self.problem(Problem::new(origin, "kind", "missing; document skipped"));
            return;
        };
        let described = describe(kind, value);
        let decode_failed =
            |e: DecodeError| Problem::new(format!("{origin} ({described})"), e.field, e.message);
        let item = match (api_version, kind) {
            ("v1", "Service") => doc.decode::<Service>().map(|mut svc| {
                apply_service_defaults(&mut svc);
                Object::Service(svc)
            }),
            ("v1", "Endpoints") => doc.decode::<Endpoints>().map(Object::Endpoints),
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                doc.decode::<EndpointSlice>().map(Object::Slice)
            }
            ("v1", "List") => {
                match value.get("items") {
                    Some(Value::Array(items)) => {
                        for (i, item) in items.iter().enumerate() {
                            self.document(&format!("{origin}.items[{i}]"), Doc::Value(item), item);
                        }
                    }
                    None | Some(Value::Null) => {}
                    Some(_) => self.problem(Problem::new(origin, "items", "not a list")),
                }
                return;
            }
            _ => {
                self.problem(Problem::new(
                    format!("{origin} ({described})"),
                    "",
                    format!("{api_version}/{kind} is not read by svc-lb; skipped"),
                ));
                return;
            }
        };
        match item {
            Ok(object) => self.object(origin, object),
            Err(e) => self.problem(decode_failed(e)),
        }
    }

    /// Files a decoded object under its namespace/name, defaulting the namespace in the object.
    fn object(&mut self, origin: &str, mut object: Object) {
        let kind = object.kind();
        let meta = match &mut object {
            Object::Service(o) => &mut o.metadata,
            Object::Endpoints(o) => &mut o.metadata,
            Object::Slice(o) => &mut o.metadata,
        };
        let Some(obj_ref) = ObjectRef::from_meta(meta) else {
            self.problem(Problem::new(
                format!("{origin} ({})", kind.name()),
                "metadata.name",
                "required",
            ));
            return;
        };
        meta.namespace = Some(obj_ref.namespace.clone());
        self.items.push(Item::Object {
            origin: origin.to_owned(),
            obj_ref,
            object,
        });
    }
}

/// The problem reported for a second definition of an object: the later one wins.
pub(super) fn redefined(kind: Kind, obj_ref: &ObjectRef, previous: &str, origin: &str) -> Problem {
    Problem::new(
        format!("{} {obj_ref}", kind.name()),
        "",
        format!("defined in {previous} and again in {origin}; the later definition wins"),
    )
}

/// A full load: the files' items, in order, with later definitions winning, then allocation
/// and mirroring. The reference for what [`super::ManifestDir`] maintains incrementally.
pub(super) fn assemble<'a>(
    files: impl IntoIterator<Item = &'a [Item]>,
    options: &Options,
    mut problems: Vec<Problem>,
) -> Objects {
    let mut services: BTreeMap<ObjectRef, (&str, &Service)> = BTreeMap::new();
    let mut endpoints: BTreeMap<ObjectRef, (&str, &Endpoints)> = BTreeMap::new();
    let mut slices: BTreeMap<ObjectRef, (&str, &EndpointSlice)> = BTreeMap::new();
    for item in files.into_iter().flatten() {
        let (origin, obj_ref, object) = match item {
            Item::Problem(p) => {
                problems.push(p.clone());
                continue;
            }
            Item::Object {
                origin,
                obj_ref,
                object,
            } => (origin.as_str(), obj_ref, object),
        };
        let previous = match object {
            Object::Service(o) => services.insert(obj_ref.clone(), (origin, o)).map(|p| p.0),
            Object::Endpoints(o) => endpoints.insert(obj_ref.clone(), (origin, o)).map(|p| p.0),
            Object::Slice(o) => slices.insert(obj_ref.clone(), (origin, o)).map(|p| p.0),
        };
        if let Some(previous) = previous {
            problems.push(redefined(object.kind(), obj_ref, previous, origin));
        }
    }
    let mut services: BTreeMap<ObjectRef, Service> = services
        .into_iter()
        .map(|(r, (_, s))| (r, s.clone()))
        .collect();
    let mut slices: BTreeMap<ObjectRef, EndpointSlice> = slices
        .into_iter()
        .map(|(r, (_, s))| (r, s.clone()))
        .collect();
    allocate(&mut services, options, &mut problems);
    for (ep_ref, (_, ep)) in &endpoints {
        let mirrored = mirror_endpoints(ep_ref, ep, services.get(ep_ref), &mut problems);
        for (slice_ref, slice) in
            accept_mirrored(ep_ref, mirrored, &mut problems, |r| slices.contains_key(r))
        {
            slices.insert(slice_ref, slice);
        }
    }
    Objects {
        services,
        slices,
        problems,
    }
}

/// The mirrored slices of Endpoints `ep_ref` that may be added: not those whose name an
/// EndpointSlice of the manifests already has (`taken`), which are reported.
pub(super) fn accept_mirrored(
    ep_ref: &ObjectRef,
    mirrored: Vec<EndpointSlice>,
    problems: &mut Vec<Problem>,
    taken: impl Fn(&ObjectRef) -> bool,
) -> Vec<(ObjectRef, EndpointSlice)> {
    let mut accepted = Vec::new();
    for slice in mirrored {
        let Some(slice_ref) = ObjectRef::from_meta(&slice.metadata) else {
            continue;
        };
        if taken(&slice_ref) {
            problems.push(Problem::new(
                format!("Endpoints {ep_ref}"),
                "",
                format!(
                    "mirrored slice name {slice_ref} is taken by an EndpointSlice in the \
                     manifests; not mirrored"
                ),
            ));
            continue;
        }
        accepted.push((slice_ref, slice));
    }
    accepted
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
