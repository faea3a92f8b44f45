//! The incremental load ([`ManifestDir`]): each file's decoded items are kept with the file's
//! identity, and the merged state (which definition of each object wins, the redefinition
//! reports, the allocations, the mirrored slices) is kept in indexes, so a poll re-reads and
//! re-decodes only the files that changed and reports only the objects that changed
//! ([`ObjectChanges`]). What it holds equals what [`super::load_dir_with`] would load from
//! the directory at the same moment (`tests/cache.rs` checks it over random edit sequences).
//!
//! Cost of a poll: one `stat` per file, then O(changed files) for reading, decoding, the
//! winners and redefinitions. Allocation is a function of every Service in the directory: it
//! runs again (over the cached, decoded Services: no file is read or decoded again, no Service
//! is cloned) only when a changed file adds, removes or changes what allocation reads of a
//! Service (its type, `clusterIP`, ports), which is O(Services) hash-map work. Mirroring is
//! redone for the Endpoints whose object, Service or slice names changed. The problem list is
//! assembled again when anything changed: O(files + problems).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::model::{ObjectRef, Objects, Problem};
use crate::store::{Change, ObjectChanges};

use super::allocate::{allocation_inputs, apply_allocation, decide, Allocation};
use super::mirror::mirror_endpoints;
use super::yaml::{accept_mirrored, parse_file, redefined, Item, Kind, Object};
use super::{manifest_files, Options, SourceError};

/// What a file is, as far as telling a changed one goes: size, modification and change times
/// (nanoseconds), inode and device (a mounted ConfigMap swaps the file for a new inode). A
/// rewrite in place within one timestamp tick (file systems stamp with a coarse clock) that
/// keeps the size is missed until the file changes again; acceptable for a static source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
}

impl FileId {
    fn of(meta: &Metadata) -> Self {
        Self {
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }
}

/// One file as last read.
#[derive(Debug)]
struct CachedFile {
    /// `None` when reading failed: read again at every poll, as a full load would.
    id: Option<FileId>,
    read_error: Option<Problem>,
    items: Vec<Item>,
    /// Where `items` has problems.
    problems: Vec<usize>,
}

impl CachedFile {
    fn new(id: Option<FileId>, read_error: Option<Problem>, items: Vec<Item>) -> Self {
        let problems = (0..items.len())
            .filter(|&i| matches!(items[i], Item::Problem(_)))
            .collect();
        Self {
            id,
            read_error,
            items,
            problems,
        }
    }
}

/// Where a definition is: file name, index among the file's items.
type At = (String, usize);

/// The mirrored slices of one Endpoints, and the problems mirroring it gave.
#[derive(Debug, Default)]
struct Mirror {
    slices: Vec<(ObjectRef, EndpointSlice)>,
    problems: Vec<Problem>,
}

/// What a poll of [`ManifestDir::refresh`] found.
#[derive(Debug)]
pub enum Update {
    /// The first load: every object ([`crate::engine::Event::Objects`]).
    Load(Objects),
    /// What changed since the previous update ([`crate::engine::Event::Changes`]).
    Changes(ObjectChanges),
}

/// A manifest directory, loaded incrementally. See the module docs of `cache.rs`.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    options: Options,
    files: BTreeMap<String, CachedFile>,
    /// Every definition of each object, by kind: the last one wins.
    defs: [BTreeMap<ObjectRef, BTreeSet<At>>; 3],
    /// The redefinition reports, by where the later definition is.
    redefined: BTreeMap<At, Problem>,
    /// The allocation of each winning Service definition, and its problems.
    allocations: BTreeMap<ObjectRef, Allocation>,
    allocation_problems: Vec<Problem>,
    /// By winning Endpoints definition.
    mirrors: BTreeMap<ObjectRef, Mirror>,
    /// The problems of the last update.
    problems: Vec<Problem>,
    /// An update has been returned: the next ones are [`Update::Changes`].
    loaded: bool,
    /// How many times allocation ran (tests check it is skipped when it may be).
    pub(super) allocation_runs: u64,
}

impl ManifestDir {
    /// A directory nothing has been read from yet.
    pub fn new(dir: impl Into<PathBuf>, options: Options) -> Self {
        Self {
            dir: dir.into(),
            options,
            files: BTreeMap::new(),
            defs: Default::default(),
            redefined: BTreeMap::new(),
            allocations: BTreeMap::new(),
            allocation_problems: Vec::new(),
            mirrors: BTreeMap::new(),
            problems: Vec::new(),
            loaded: false,
            allocation_runs: 0,
        }
    }

    /// Lists the directory, stats every manifest file and reads those that are new or changed
    /// (and those that could not be read last time). The first call returns [`Update::Load`];
    /// later ones [`Update::Changes`], or `None` when no object and no problem changed. Only
    /// failing to list the directory is an error, and then nothing is changed.
    pub fn refresh(&mut self) -> Result<Option<Update>, SourceError> {
        let listed = manifest_files(&self.dir).map_err(|source| SourceError::ReadDir {
            dir: self.dir.clone(),
            source,
        })?;
        let mut edits: Vec<(String, Option<CachedFile>)> = Vec::new();
        let mut present = BTreeSet::new();
        for (name, path, meta) in listed {
            let id = FileId::of(&meta);
            present.insert(name.clone());
            if self.files.get(&name).is_some_and(|f| f.id == Some(id)) {
                continue;
            }
            // Identity first: a write during the read changes it, and the next poll reads again.
            let file = match fs::read_to_string(&path) {
                Ok(text) => CachedFile::new(Some(id), None, parse_file(&name, &text)),
                Err(e) => {
                    let problem = Problem::new(&name, "", format!("reading: {e}"));
                    CachedFile::new(None, Some(problem), Vec::new())
                }
            };
            edits.push((name, Some(file)));
        }
        for name in self.files.keys() {
            if !present.contains(name) {
                edits.push((name.clone(), None));
            }
        }
        Ok(self.update(edits))
    }

    /// [`Self::refresh`] with the files' contents given: `(name, Some(text))` sets a file,
    /// `(name, None)` removes it. For tests and benchmarks, which need no directory.
    pub fn update_texts(&mut self, edits: &[(String, Option<String>)]) -> Option<Update> {
        let edits = edits
            .iter()
            .map(|(name, text)| {
                let file = text
                    .as_ref()
                    .map(|text| CachedFile::new(None, None, parse_file(name, text)));
                (name.clone(), file)
            })
            .collect();
        self.update(edits)
    }

    /// Every object and problem now: what a full load of the same files gives.
    pub fn objects(&self) -> Objects {
        let services = self.defs[Kind::Service as usize]
            .keys()
            .filter_map(|r| Some((r.clone(), self.service(r)?)))
            .collect();
        let mut slices: BTreeMap<ObjectRef, EndpointSlice> = self.defs[Kind::Slice as usize]
            .keys()
            .filter_map(|r| Some((r.clone(), self.manifest_slice(r)?)))
            .collect();
        for mirror in self.mirrors.values() {
            slices.extend(mirror.slices.iter().cloned());
        }
        Objects {
            services,
            slices,
            problems: self.problems.clone(),
        }
    }

    fn update(&mut self, edits: Vec<(String, Option<CachedFile>)>) -> Option<Update> {
        let first = !self.loaded;
        self.loaded = true;
        // Objects defined in a changed file, before or after the change.
        let mut affected: [BTreeSet<ObjectRef>; 3] = Default::default();
        for (name, new) in &edits {
            let old = self.files.get(name).map(|f| f.items.as_slice());
            let new = new.as_ref().map(|f| f.items.as_slice());
            for item in old.into_iter().chain(new).flatten() {
                if let Item::Object {
                    obj_ref, object, ..
                } = item
                {
                    affected[object.kind() as usize].insert(obj_ref.clone());
                }
            }
        }
        // Their state before (nothing to compare with at the first load).
        let mut services_before: BTreeMap<ObjectRef, Option<Service>> = BTreeMap::new();
        let mut inputs_before = Vec::new();
        let mut slices_before: BTreeMap<ObjectRef, Option<EndpointSlice>> = BTreeMap::new();
        if !first {
            for r in &affected[Kind::Service as usize] {
                services_before.insert(r.clone(), self.service(r));
                inputs_before.push(self.winner_service(r).cloned());
            }
            for r in &affected[Kind::Slice as usize] {
                slices_before.insert(r.clone(), self.slice(r));
            }
        }

        self.replace_files(edits, &affected);

        // Allocation, when what it reads changed.
        let inputs_changed = affected[Kind::Service as usize]
            .iter()
            .zip(&inputs_before)
            .any(|(r, before)| {
                let now = self.winner_service(r);
                before.as_ref().map(allocation_inputs) != now.map(allocation_inputs)
            });
        let mut reallocated = BTreeMap::new();
        if first || inputs_changed {
            reallocated = self.allocate(&affected[Kind::Service as usize]);
        }
        // Services changed by their own definitions, or by the allocation of others (their
        // state before: their unchanged definition with the old allocation).
        for (r, old) in &reallocated {
            if !services_before.contains_key(r) && !first {
                let before = self
                    .winner_service(r)
                    .and_then(|svc| allocated(svc, old.as_ref()));
                services_before.insert(r.clone(), before);
            }
        }
        let services_changed: BTreeSet<ObjectRef> = affected[Kind::Service as usize]
            .iter()
            .chain(reallocated.keys())
            .cloned()
            .collect();

        // Mirroring of the Endpoints whose object, Service or slice names changed.
        let mut mirror_again: BTreeSet<ObjectRef> = affected[Kind::Endpoints as usize].clone();
        mirror_again.extend(services_changed.iter().cloned());
        mirror_again.extend(
            affected[Kind::Slice as usize]
                .iter()
                .filter_map(mirror_owner),
        );
        for ep_ref in &mirror_again {
            let old = self.remirror(ep_ref);
            for (slice_ref, slice) in old.slices {
                if !first {
                    slices_before.entry(slice_ref).or_insert(Some(slice));
                }
            }
            for (slice_ref, _) in self.mirrors.get(ep_ref).map_or(&[][..], |m| &m.slices) {
                if !first && !slices_before.contains_key(slice_ref) {
                    // Not mirrored before; a manifest slice of that name would have taken it.
                    slices_before.insert(slice_ref.clone(), None);
                }
            }
        }

        let problems = self.assemble_problems();
        let problems_changed = problems != self.problems;
        self.problems = problems;
        if first {
            return Some(Update::Load(self.objects()));
        }
        let mut changes = ObjectChanges {
            problems: problems_changed.then(|| self.problems.clone()),
            ..ObjectChanges::default()
        };
        for (r, before) in services_before {
            if let Some(change) = change(before, self.service(&r)) {
                changes.services.push(change);
            }
        }
        for (r, before) in slices_before {
            if let Some(change) = change(before, self.slice(&r)) {
                changes.slices.push(change);
            }
        }
        (!changes.is_empty()).then_some(Update::Changes(changes))
    }

    /// Replaces the edited files, keeping the definitions and redefinition reports of the
    /// `affected` objects in step.
    fn replace_files(
        &mut self,
        edits: Vec<(String, Option<CachedFile>)>,
        affected: &[BTreeSet<ObjectRef>; 3],
    ) {
        for (kind, refs) in affected.iter().enumerate() {
            for r in refs {
                for at in self.defs[kind].get(r).into_iter().flatten() {
                    self.redefined.remove(at);
                }
            }
        }
        for (name, new) in edits {
            if let Some(old) = self.files.remove(&name) {
                for (i, item) in old.items.iter().enumerate() {
                    if let Item::Object {
                        obj_ref, object, ..
                    } = item
                    {
                        let defs = &mut self.defs[object.kind() as usize];
                        if let Some(set) = defs.get_mut(obj_ref) {
                            set.remove(&(name.clone(), i));
                            if set.is_empty() {
                                defs.remove(obj_ref);
                            }
                        }
                    }
                }
            }
            if let Some(new) = new {
                for (i, item) in new.items.iter().enumerate() {
                    if let Item::Object {
                        obj_ref, object, ..
                    } = item
                    {
                        self.defs[object.kind() as usize]
                            .entry(obj_ref.clone())
                            .or_default()
                            .insert((name.clone(), i));
                    }
                }
                self.files.insert(name, new);
            }
        }
        for (kind, refs) in affected.iter().enumerate() {
            let kind = [Kind::Service, Kind::Endpoints, Kind::Slice][kind];
            for r in refs {
                let Some(defs) = self.defs[kind as usize].get(r) else {
                    continue;
                };
                let defs: Vec<&At> = defs.iter().collect();
                for pair in defs.windows(2) {
                    let (previous, at) = (pair[0], pair[1]);
                    let problem = redefined(kind, r, self.origin(previous), self.origin(at));
                    self.redefined.insert(at.clone(), problem);
                }
            }
        }
    }

    /// Allocates over every winning Service definition; returns the Services whose allocation
    /// changed, with the previous one. Only those entries are written: no map is rebuilt.
    /// `edited`: the Services a changed file defined, before or after.
    fn allocate(
        &mut self,
        edited: &BTreeSet<ObjectRef>,
    ) -> BTreeMap<ObjectRef, Option<Allocation>> {
        self.allocation_runs += 1;
        let winners: Vec<(&ObjectRef, &Service)> = self.defs[Kind::Service as usize]
            .iter()
            .filter_map(|(r, defs)| match self.object(defs.last()?)? {
                Object::Service(svc) => Some((r, svc)),
                _ => None,
            })
            .collect();
        let mut problems = Vec::new();
        let decided = decide(&winners, &self.options, &mut problems);
        let changed: Vec<(ObjectRef, Allocation)> = winners
            .iter()
            .zip(decided)
            .filter(|((r, _), a)| self.allocations.get(*r) != Some(a))
            .map(|((r, _), a)| ((*r).clone(), a))
            .collect();
        self.allocation_problems = problems;
        let mut previous = BTreeMap::new();
        // Services no longer defined: only those a changed file defined.
        for r in edited {
            if !self.defs[Kind::Service as usize].contains_key(r) {
                if let Some(old) = self.allocations.remove(r) {
                    previous.insert(r.clone(), Some(old));
                }
            }
        }
        for (r, a) in changed {
            let old = self.allocations.insert(r.clone(), a);
            previous.insert(r, old);
        }
        previous
    }

    /// Mirrors `ep_ref` again; returns what it mirrored before.
    fn remirror(&mut self, ep_ref: &ObjectRef) -> Mirror {
        let old = self.mirrors.remove(ep_ref).unwrap_or_default();
        let Some(ep) = self.winner_endpoints(ep_ref) else {
            return old;
        };
        let service = self.service(ep_ref);
        let mut problems = Vec::new();
        let mirrored = mirror_endpoints(ep_ref, ep, service.as_ref(), &mut problems);
        let slice_defs = &self.defs[Kind::Slice as usize];
        let slices = accept_mirrored(ep_ref, mirrored, &mut problems, |r| {
            slice_defs.contains_key(r)
        });
        self.mirrors
            .insert(ep_ref.clone(), Mirror { slices, problems });
        old
    }

    /// Read errors (file order), each file's problems with its redefinition reports (document
    /// order), allocation's, mirroring's (Endpoints order): a full load's order.
    fn assemble_problems(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = self
            .files
            .values()
            .filter_map(|f| f.read_error.clone())
            .collect();
        // Both in (file, index) order: merged, without walking the files' objects.
        let mut redefined = self.redefined.iter().peekable();
        for (name, file) in &self.files {
            let mut own = file.problems.iter().copied().peekable();
            loop {
                let redefined_at = redefined
                    .peek()
                    .filter(|((f, _), _)| f == name)
                    .map(|((_, at), _)| *at);
                let take_own = match (own.peek(), redefined_at) {
                    (None, None) => break,
                    (Some(&i), Some(at)) => i < at,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                };
                if take_own {
                    if let Some(Item::Problem(p)) = own.next().map(|i| &file.items[i]) {
                        problems.push(p.clone());
                    }
                } else if let Some((_, p)) = redefined.next() {
                    problems.push(p.clone());
                }
            }
        }
        problems.extend(self.allocation_problems.iter().cloned());
        for mirror in self.mirrors.values() {
            problems.extend(mirror.problems.iter().cloned());
        }
        problems
    }

    fn object(&self, (file, index): &At) -> Option<&Object> {
        match self.files.get(file)?.items.get(*index)? {
            Item::Object { object, .. } => Some(object),
            Item::Problem(_) => None,
        }
    }

    fn origin(&self, (file, index): &At) -> &str {
        match self.files.get(file).and_then(|f| f.items.get(*index)) {
            Some(Item::Object { origin, .. }) => origin,
            _ => "",
        }
    }

    fn winner(&self, kind: Kind, r: &ObjectRef) -> Option<&Object> {
        self.object(self.defs[kind as usize].get(r)?.last()?)
    }

    fn winner_service(&self, r: &ObjectRef) -> Option<&Service> {
        match self.winner(Kind::Service, r)? {
            Object::Service(svc) => Some(svc),
            _ => None,
        }
    }

    fn winner_endpoints(&self, r: &ObjectRef) -> Option<&Endpoints> {
        match self.winner(Kind::Endpoints, r)? {
            Object::Endpoints(ep) => Some(ep),
            _ => None,
        }
    }

    /// The Service as loaded: its winning definition, allocated; `None` when refused.
    fn service(&self, r: &ObjectRef) -> Option<Service> {
        allocated(self.winner_service(r)?, self.allocations.get(r))
    }

    /// The EndpointSlice of that name a manifest defines.
    fn manifest_slice(&self, r: &ObjectRef) -> Option<EndpointSlice> {
        match self.winner(Kind::Slice, r)? {
            Object::Slice(slice) => Some(slice.clone()),
            _ => None,
        }
    }

    /// The EndpointSlice as loaded: a manifest's, else a mirrored one.
    fn slice(&self, r: &ObjectRef) -> Option<EndpointSlice> {
        self.manifest_slice(r).or_else(|| {
            let mirror = self.mirrors.get(&mirror_owner(r)?)?;
            let (_, slice) = mirror.slices.iter().find(|(s, _)| s == r)?;
            Some(slice.clone())
        })
    }
}

/// `svc` with `allocation` written in; `None` when refused (or never allocated).
fn allocated(svc: &Service, allocation: Option<&Allocation>) -> Option<Service> {
    match allocation? {
        Allocation::Refused => None,
        kept => {
            let mut svc = svc.clone();
            apply_allocation(&mut svc, kept);
            Some(svc)
        }
    }
}

/// The Endpoints whose mirrored slices may have this name (`<name>-mirror-<n>`,
/// `<name>-mirror-ipv6-<n>`): the only one, since `<n>` is a number.
pub(super) fn mirror_owner(slice: &ObjectRef) -> Option<ObjectRef> {
    let rest = slice.name.trim_end_matches(|c: char| c.is_ascii_digit());
    if rest.len() == slice.name.len() {
        return None;
    }
    let owner = rest
        .strip_suffix("-mirror-")
        .or_else(|| rest.strip_suffix("-mirror-ipv6-"))?;
    Some(ObjectRef::new(slice.namespace.clone(), owner))
}

/// The change from `before` to `after`, if any.
fn change<K: PartialEq>(before: Option<K>, after: Option<K>) -> Option<Change<K>> {
    match (before, after) {
        (before, Some(after)) if before.as_ref() != Some(&after) => Some(Change::Upsert(after)),
        (Some(before), None) => Some(Change::Delete(before)),
        _ => None,
    }
}
