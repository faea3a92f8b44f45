//! The static source: a directory of YAML manifests (`--manifests DIR`), read as an API server
//! would have accepted them from `kubectl apply -f DIR`.
//!
//! # What "as an API server would" means here
//! - Every `*.yaml` / `*.yml` file in the directory (not recursive, hidden names skipped, sorted
//!   by name, symlinks followed so a mounted ConfigMap works) is split into its `---` documents.
//!   Each document is identified by `apiVersion`/`kind` and decoded into the k8s-openapi type:
//!   `v1/Service`, `v1/Endpoints`, `discovery.k8s.io/v1/EndpointSlice`, and `v1/List` of those.
//!   Anything else is skipped with a [`Problem`]; a document that is not YAML or fails to
//!   decode is a [`Problem`] naming the file, the document (1-based among non-empty documents),
//!   the field when the parser points at one, and the parser's message with its line and column
//!   in the file. Neither stops the rest from loading.
//! - Defaults: namespace `default`, `type: ClusterIP`, port protocol `TCP`, `targetPort = port`.
//! - A Service without `spec.clusterIP` gets one **allocated** from `--service-cidr`, one per
//!   family of its `ipFamilies` (defaulted as the API server does: a dual-stack policy gets an
//!   IPv6 ClusterIP too when `--service-cidr` has an IPv6 range; see `allocate`), and a
//!   NodePort/LoadBalancer port without `nodePort` gets one from the node-port range. There is no
//!   API server to remember allocations, and every node's agent must reach the same answer from
//!   the same directory, so allocation is a pure function of the directory's contents: FNV-1a of
//!   `namespace/name` picks the starting point, linear probing resolves collisions, Services are
//!   processed in (namespace, name) order, and user-chosen values are reserved first.
//! - A Service whose user-chosen `clusterIP` or `nodePort` is already taken by another Service is
//!   refused (the API server would refuse to create it); the smaller (namespace, name) keeps it.
//! - A hand-written `v1/Endpoints` for a selector-less Service is converted to EndpointSlices the
//!   way Kubernetes' endpointslicemirroring controller does (see [`mirror_endpoints`]).
//!
//! [`load_dir_with`] reads everything, every time. The agent polls with [`ManifestDir`]
//! instead: it keeps each file's decoded objects and re-reads only the files whose identity
//! (size, mtime, ctime, inode) changed, and reports what changed in the objects as
//! [`crate::store::ObjectChanges`]; what it holds equals what [`load_dir_with`] loads.

// What each child owns (see its first lines); the rules above are documented here, where
// `svc_core::source::manifests` renders them.
mod allocate;
mod cache;
mod mirror;
mod yaml;

pub use allocate::{families, given_ips, Fam};
pub use cache::{ManifestDir, Update};
pub use mirror::{
    mirror_endpoints, LABEL_MANAGED_BY, LABEL_SKIP_MIRROR, MAX_ENDPOINTS_PER_MIRRORED_SLICE,
    MIRRORING_CONTROLLER,
};

use std::fs;
use std::io;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

pub use crate::model::Objects;
use crate::model::{default_service_cidr, Ipv4Net, Ipv6Net, Problem};

use yaml::{assemble, parse_file, Item};

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
    pub service_cidr: Ipv4Net,
    /// Where IPv6 ClusterIPs are allocated (`--service-cidr`'s second range); `None`: the
    /// cluster is IPv4 single-stack (IPv6 ClusterIPs can still be given).
    pub service_cidr6: Option<Ipv6Net>,
    /// Where NodePorts are allocated (the API server's `--service-node-port-range`).
    pub node_port_range: RangeInclusive<u16>,
}

impl Default for Options {
    /// `10.96.0.0/16` and `30000-32767`, the kubeadm/kind defaults.
    fn default() -> Self {
        Self {
            service_cidr: default_service_cidr(),
            service_cidr6: None,
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
    for (name, path, _) in files {
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

/// The manifest files of `dir`, sorted by name, with their metadata: `*.yaml`/`*.yml`, regular
/// files or symlinks to them, names not starting with `.` (a mounted ConfigMap's `..data`
/// bookkeeping). A file deleted between listing and stat simply counts as gone.
fn manifest_files(dir: &Path) -> io::Result<Vec<(String, PathBuf, fs::Metadata)>> {
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
        // Through the directory's entry (no lookup of the whole path) unless it is a symlink,
        // which is followed: one stat per file is most of what a poll costs.
        let meta = match entry.file_type() {
            Ok(t) if !t.is_symlink() => entry.metadata(),
            _ => fs::metadata(&path),
        };
        match meta {
            Ok(meta) if meta.is_file() => files.push((name, path, meta)),
            _ => {}
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// Loads manifests given as `(file name, contents)` pairs, in that order (later definitions of
/// the same object win, as with a second `kubectl apply`). Pure: [`load_dir_with`] is this plus
/// file reading, and tests call it directly.
pub fn load_texts(files: &[(String, String)], options: &Options) -> Objects {
    let items: Vec<Vec<Item>> = files
        .iter()
        .map(|(file, text)| parse_file(file, text))
        .collect();
    assemble(items.iter().map(Vec::as_slice), options, Vec::new())
}

#[cfg(test)]
pub(crate) mod tests;
