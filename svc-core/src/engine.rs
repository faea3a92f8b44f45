//! The engine: one loop from events to map writes, over any [`Dataplane`].
//!
//! Both sources produce the same [`Event`]s: the manifests source a complete set of objects
//! at its first load ([`Event::Objects`]) and then what changed in its directory, as one batch
//! ([`Event::Changes`]), the API source one watcher delta at a time ([`Event::Delta`]); the
//! agent's interface watch adds [`Event::Interface`]. The engine
//! keeps them in a [`Store`], plans what they touched (every Service after a load, a Node
//! change, a failed write and each [`EngineConfig::resync`] period; only the touched Services
//! otherwise) and writes the plan through the [`Dataplane`]. What the agent does around it —
//! metrics, `/healthz`, the conntrack collector, health-check servers, the SNAT source,
//! attaching programs to interfaces — is behind [`Hooks`], so tests drive the whole loop with
//! [`crate::dataplane::fake::FakeDataplane`], a recording hook and paused tokio time
//! (`tests` below: recovery after a failed write, the periodic resync).
//!
//! The engine starts no runtime and spawns nothing: [`Engine::run`] is a future the caller
//! drives, with shutdown passed in.
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Node;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::budget;
use crate::dataplane::{Dataplane, DataplaneError, MapOp};
use crate::family::AnyFrontendKey;
use crate::model::{self, Desired, HealthCheck, NodeContext, ObjectRef, Objects, Problem};
use crate::reconcile::{self, Programmed, Removals};
use crate::store::{self, Delta, ObjectChanges, Store, Touched};

/// What the engine consumes. `I` is the agent's interface event ([`Hooks::Interface`]),
/// passed to [`Hooks::interface`] in order with everything else.
// A delta carries its object inline (see `Delta`): moved once through the channel.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event<I> {
    /// Every object, read at the given instant (the manifests source's first load).
    Objects(Objects, Instant),
    /// What changed since, read at the given instant (the manifests source's later polls).
    Changes(ObjectChanges, Instant),
    /// One change from a watcher (the API source).
    Delta(Delta),
    /// An interface appeared, changed or went.
    Interface(I),
}

impl<I> From<Delta> for Event<I> {
    fn from(delta: Delta) -> Self {
        Event::Delta(delta)
    }
}

/// Period of the full plan with [`EngineConfig::resync`] (the agent's API source).
pub const FULL_RESYNC: Duration = Duration::from_secs(60);
/// After a failed write the maps are re-read and a full plan is tried again this long after,
/// doubling with each failure in a row up to [`RETRY_MAX`] (kube-proxy retries a failed sync
/// too, rather than waiting for the next change: a quiet cluster may send none).
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// The longest wait between two retries.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// How the engine plans.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// This node as the command line describes it (see [`store::node_context`]).
    pub node: NodeContext,
    /// A full plan this often (`None`: never), which settles what incremental plans cannot
    /// see — a frontend address claimed by two Services, one of them unchanged — as
    /// kube-proxy resyncs periodically. With nothing to change it writes nothing.
    pub resync: Option<Duration>,
    /// How often [`Hooks::heartbeat`] is called while the loop runs.
    pub heartbeat: Duration,
    /// `--max-service-share`.
    pub service_share: u8,
    /// `--fault-inject no-budget`: let every Service in.
    pub no_budget: bool,
    /// `--fault-inject stall-programming`: write nothing after the first sync.
    pub stall_programming: bool,
    /// Trigger times before this are not measured (kube-proxy measures only changes made
    /// after it started).
    pub started_at: SystemTime,
}

/// What the agent does around the engine. Every method has a default that does nothing, so a
/// test implements only what it records.
#[allow(async_fn_in_trait)] // Used generically only; no `Send` bound is needed.
pub trait Hooks<D: Dataplane> {
    /// The agent's interface event (tests: `()`).
    type Interface;
    /// A change arrived that the maps do not reflect yet.
    fn queued(&mut self) {}
    /// The loop went round ([`EngineConfig::heartbeat`]).
    fn heartbeat(&mut self) {}
    /// A watcher delta arrived (before it is applied).
    fn delta(&mut self, _delta: &Delta) {}
    /// The Node object after a batch of deltas (`None`: not seen, or deleted).
    fn node_seen(&mut self, _node: Option<&Node>) {}
    /// The Node changed, or a full plan follows a failure: before planning (the SNAT source).
    async fn node_changed(&mut self, _node: Option<&Node>) {}
    /// An interface event, with the current Node object.
    async fn interface(&mut self, _event: Self::Interface, _node: Option<&Node>) {}
    /// A problem seen for the first time (or seen again by an incremental plan).
    fn problem(&mut self, _problem: &Problem) {}
    /// How many Services the budget refuses now (after each admission).
    fn refused(&mut self, _count: usize) {}
    /// One operation was written.
    fn wrote(&mut self, _op: &MapOp) {}
    /// A write failed; the maps are re-read and the next plan is full.
    fn write_failed(&mut self, _error: &DataplaneError) {}
    /// A plan that changed something reached the maps, `latency` after its oldest change
    /// arrived.
    fn programmed(&mut self, _latency: Duration) {}
    /// A plan was written in full: how long planning and writing took, and the trigger times
    /// of the EndpointSlice changes it carried.
    fn synced(&mut self, _took: Duration, _triggers: &[SystemTime]) {}
    /// Entries used and capacity of each service map after a plan.
    fn fill(&mut self, _used: budget::Entries, _capacity: budget::Entries) {}
    /// A plan removed these pairs and frontends (also after a failed write): the agent deletes
    /// their session affinity and UDP flows.
    fn removed(&mut self, _dp: &mut D, _removals: &Removals) {}
    /// Whether a `healthCheckNodePort` server runs for this Service.
    fn serves_health_check(&self, _service: &ObjectRef) -> bool {
        false
    }
    /// The health checks the objects ask for now.
    async fn health_checks(&mut self, _checks: Vec<HealthCheck>) {}
    /// A full plan reached the maps: the agent is ready.
    fn ready(&mut self) {}
}

/// The programmed state, the maps it describes, and what the engine remembers between plans.
pub struct Engine<D: Dataplane, H: Hooks<D>> {
    dp: D,
    hooks: H,
    cfg: EngineConfig,
    store: Store,
    programmed: Programmed,
    /// Problems reported by the last full plan, so each is reported once.
    last_problems: BTreeSet<String>,
    /// Services [`budget::admit`] did not let in, with why (reported when it changes). They
    /// are planned again with every change, so they get in as soon as space returns.
    refused: BTreeMap<ObjectRef, String>,
    /// The next plan must be full: first sync, or `programmed` was re-read from the maps.
    needs_full: bool,
    /// Trigger times of EndpointSlice changes not yet written to the maps.
    triggers: Vec<SystemTime>,
    /// A plan has been written in full once.
    synced_once: bool,
    /// Which Services lost which frontend to another, so they are planned when it is let go.
    contested: Contested,
}

/// The frontends Services claim but lost to another Service ([`Desired::lost`]), as of the
/// last plan that planned each loser, both ways round.
#[derive(Debug, Default)]
struct Contested {
    losers: BTreeMap<AnyFrontendKey, BTreeSet<ObjectRef>>,
    lost_by: BTreeMap<ObjectRef, BTreeSet<AnyFrontendKey>>,
}

impl Contested {
    /// `planned` were planned again and lost `lost`: their earlier losses are forgotten.
    fn replan(&mut self, planned: &BTreeSet<ObjectRef>, lost: &[(AnyFrontendKey, ObjectRef)]) {
        for svc in planned {
            for key in self.lost_by.remove(svc).into_iter().flatten() {
                if let Some(losers) = self.losers.get_mut(&key) {
                    losers.remove(svc);
                    if losers.is_empty() {
                        self.losers.remove(&key);
                    }
                }
            }
        }
        for (key, svc) in lost {
            self.losers.entry(*key).or_default().insert(svc.clone());
            self.lost_by.entry(svc.clone()).or_default().insert(*key);
        }
    }

    fn losers(&self, key: &AnyFrontendKey) -> impl Iterator<Item = &ObjectRef> {
        self.losers.get(key).into_iter().flatten()
    }
}

impl<D: Dataplane, H: Hooks<D>> Engine<D, H> {
    /// An engine that adopts what `dp` holds (an earlier agent's pinned maps): the first plan
    /// then writes only what differs, and traffic through unchanged Services is undisturbed.
    pub fn new(dp: D, hooks: H, cfg: EngineConfig) -> Result<Self, DataplaneError> {
        let snapshot = dp.snapshot()?;
        info!(
            frontends = snapshot.frontends.len(),
            backends = snapshot.backends.len(),
            frontends6 = snapshot.frontends6.len(),
            backends6 = snapshot.backends6.len(),
            "adopted the service maps"
        );
        Ok(Self {
            programmed: Programmed::from_snapshot(&snapshot),
            dp,
            hooks,
            cfg,
            store: Store::default(),
            last_problems: BTreeSet::new(),
            refused: BTreeMap::new(),
            needs_full: true,
            triggers: Vec::new(),
            synced_once: false,
            contested: Contested::default(),
        })
    }

    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    pub fn hooks(&self) -> &H {
        &self.hooks
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Consumes `events` until `shutdown` completes or every sender is gone, with the
    /// heartbeat and the periodic full plan on tokio's clock. Returns the engine.
    pub async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<Event<H::Interface>>,
        shutdown: impl Future<Output = ()>,
    ) -> Self {
        let mut heartbeat = tokio::time::interval(self.cfg.heartbeat);
        let mut resync = self
            .cfg
            .resync
            .map(|period| tokio::time::interval_at(tokio::time::Instant::now() + period, period));
        let mut shutdown = std::pin::pin!(shutdown);
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut backoff = RETRY_MIN;
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = heartbeat.tick() => self.hooks.heartbeat(),
                _ = until(retry_at) => {
                    retry_at = None;
                    self.resync().await;
                }
                _ = tick(&mut resync) => self.resync().await,
                event = events.recv() => {
                    let Some(event) = event else { break };
                    let mut batch = vec![event];
                    // Take everything already queued: one plan for a burst of events.
                    while let Ok(event) = events.try_recv() {
                        batch.push(event);
                    }
                    self.handle(batch).await;
                }
            }
            if self.needs_full && self.store.ready() {
                // A write failed (a first plan that never ran is not waiting for a retry:
                // the store was not ready, and the event that makes it ready plans).
                if retry_at.is_none() {
                    retry_at = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            } else {
                retry_at = None;
                backoff = RETRY_MIN;
            }
        }
        self
    }

    /// A full plan now, if every kind has listed: the periodic one, and the retry after a
    /// failed write.
    pub async fn resync(&mut self) {
        if self.store.ready() {
            self.plan_all(Instant::now(), false).await;
        }
    }

    /// Plans every Service and syncs the health checks. `node_changed`: the Node's addresses
    /// or zone changed (the SNAT source is chosen again first, as after a failure).
    async fn plan_all(&mut self, since: Instant, node_changed: bool) {
        if self.needs_full || node_changed {
            // The Node object may have brought (new) addresses.
            self.hooks.node_changed(self.store.node.as_ref()).await;
        }
        let node = self.node_context();
        if self.full(&node, since) {
            self.hooks.ready();
        }
        let checks = model::slim_health_checks(&self.store.objects, &node);
        self.hooks.health_checks(checks).await;
    }

    /// Applies a batch of events and plans what they touched.
    pub async fn handle(&mut self, events: Vec<Event<H::Interface>>) {
        let mut touched = Touched::default();
        let mut deltas = false;
        for event in events {
            match event {
                Event::Objects(objects, at) => self.store.load(objects, at, &mut touched),
                Event::Changes(changes, at) => {
                    if let Some(problems) = &changes.problems {
                        self.source_problems(problems);
                    }
                    self.store.apply_changes(changes, at, &mut touched);
                }
                Event::Delta(delta) => {
                    deltas = true;
                    self.hooks.delta(&delta);
                    self.store.apply(delta, &mut touched);
                }
                Event::Interface(event) => {
                    self.hooks.interface(event, self.store.node.as_ref()).await;
                }
            }
        }
        if deltas {
            self.hooks.node_seen(self.store.node.as_ref());
        }
        if touched.loaded || touched.node || !touched.services.is_empty() {
            self.hooks.queued();
        }
        let started_at = self.cfg.started_at;
        self.triggers
            .extend(touched.triggers.iter().filter(|t| **t >= started_at));
        if !self.store.ready() {
            return;
        }
        let oldest = touched.oldest.unwrap_or_else(Instant::now);
        if self.needs_full || touched.node || touched.loaded {
            self.plan_all(oldest, touched.node).await;
        } else if !touched.services.is_empty() {
            let node = self.node_context();
            self.incremental(&node, &touched.services, oldest);
            // Health checks cost a pass over every Service and slice: redo them only when a
            // touched Service has (or had) a health-check port.
            let concerned = touched.services.iter().any(|r| {
                self.hooks.serves_health_check(r)
                    || self.store.objects.services.get(r).is_some_and(|svc| {
                        svc.spec
                            .as_ref()
                            .is_some_and(|s| s.health_check_node_port.is_some())
                    })
            });
            if concerned {
                let checks = model::slim_health_checks(&self.store.objects, &node);
                self.hooks.health_checks(checks).await;
            }
        }
    }

    /// The source's problems are about to become `problems`: reports those it did not have
    /// (and no full plan reported), as a full plan over the new objects would.
    fn source_problems(&mut self, problems: &[Problem]) {
        let old: BTreeSet<String> = self
            .store
            .objects
            .problems
            .iter()
            .map(ToString::to_string)
            .collect();
        for p in problems {
            let text = p.to_string();
            if !old.contains(&text) && !self.last_problems.contains(&text) {
                warn!("skipped: {p}");
                self.hooks.problem(p);
            }
        }
        self.last_problems.retain(|text| !old.contains(text));
        self.last_problems
            .extend(problems.iter().map(ToString::to_string));
    }

    fn node_context(&self) -> NodeContext {
        store::node_context(&self.cfg.node, self.store.node.as_ref())
    }

    /// Plans every Service. Returns whether every write succeeded.
    fn full(&mut self, node: &NodeContext, since: Instant) -> bool {
        let started = Instant::now();
        let objects = &self.store.objects;
        let mut desired = model::slim_desired(objects, node);
        let problems: Vec<&Problem> = objects.problems.iter().chain(&desired.problems).collect();
        let texts: BTreeSet<String> = problems.iter().map(|p| p.to_string()).collect();
        for p in problems {
            if !self.last_problems.contains(&p.to_string()) {
                warn!("skipped: {p}");
                self.hooks.problem(p);
            }
        }
        self.last_problems = texts;
        self.contested = Contested::default();
        self.contested.replan(&BTreeSet::new(), &desired.lost);
        let services = objects.services.len();
        let admission = self.admit(&mut desired, None);
        let (ops, removals) =
            reconcile::plan_in_place_holding(&mut self.programmed, &desired, &admission.held);
        let ok = self.apply(&ops, &removals, since, started);
        if ok {
            self.needs_full = false;
            info!(
                services,
                frontends = desired.frontends.len(),
                frontends6 = desired.frontends6.len(),
                writes = ops.len(),
                "full sync: maps match the desired state"
            );
        }
        ok
    }

    /// Plans only `services`: O(those Services), nothing proportional to the cluster (the
    /// slices come from the store's index, and the plan advances `programmed` in place).
    fn incremental(&mut self, node: &NodeContext, services: &BTreeSet<ObjectRef>, since: Instant) {
        let started = Instant::now();
        let objects = &self.store.objects;
        let owners = &self.store.slice_owners;
        // Refused Services are planned again with every change: this one may have made room.
        let mut scope = services.clone();
        scope.extend(self.refused.keys().cloned());
        let mut desired = model::desired_for_indexed(objects, node, &scope, owners);
        // Services outside the scope that a full plan would settle a claim with: the holder
        // of a key one of them claims (an external IP equal to another Service's ClusterIP,
        // say), and those that lost a key one of them no longer claims. Plan them too, until
        // there are none, so the model settles every claim as a full plan would.
        loop {
            let mut more: BTreeSet<ObjectRef> = desired
                .keys()
                .filter_map(|k| {
                    self.programmed
                        .frontends()
                        .get(&k)?
                        .owner
                        .as_deref()
                        .cloned()
                })
                .collect();
            for svc in &scope {
                for key in self.programmed.frontends_of(svc) {
                    if !desired.contains(key) {
                        more.extend(self.contested.losers(key).cloned());
                    }
                }
            }
            more.retain(|svc| !scope.contains(svc));
            if more.is_empty() {
                break;
            }
            scope.extend(more);
            desired = model::desired_for_indexed(objects, node, &scope, owners);
        }
        self.contested.replan(&scope, &desired.lost);
        for p in &desired.problems {
            warn!("skipped: {p}");
            self.hooks.problem(p);
        }
        let admission = self.admit(&mut desired, Some(&scope));
        // Held Services keep their frontends: leave them out of the plan altogether.
        for held in &admission.held {
            scope.remove(held);
        }
        let (ops, removals) =
            reconcile::plan_services_in_place(&mut self.programmed, &desired, &scope);
        if self.apply(&ops, &removals, since, started) {
            info!(
                services = services.len(),
                writes = ops.len(),
                "synced changed services"
            );
        }
    }

    /// Lets into `desired` only the Services of `scope` (`None`: all) that fit into the
    /// service maps ([`budget::admit`]), and reports each change in what is refused.
    fn admit(
        &mut self,
        desired: &mut Desired,
        scope: Option<&BTreeSet<ObjectRef>>,
    ) -> budget::Admission {
        if self.cfg.no_budget {
            warn!("fault injected: every Service planned, fitting the maps or not");
            return budget::Admission::default();
        }
        let capacity = self.dp.service_capacity().unwrap_or_else(|e| {
            error!("{e}; assuming the ABI's map sizes");
            budget::Entries::abi()
        });
        let limits = budget::Limits {
            capacity,
            service_share_percent: self.cfg.service_share,
        };
        let admission = budget::admit(&self.programmed, desired, scope, &limits);
        let in_scope = |s: &ObjectRef| scope.is_none_or(|set| set.contains(s));
        self.refused.retain(|svc, _| {
            let keep = !in_scope(svc) || admission.problems.contains_key(svc);
            if !keep {
                info!(service = %svc, "Service fits into the service maps now: programmed");
            }
            keep
        });
        for (svc, p) in &admission.problems {
            let text = p.to_string();
            if self.refused.get(svc) != Some(&text) {
                warn!("refused: {text}");
                self.hooks.problem(p);
                self.refused.insert(svc.clone(), text);
            }
        }
        self.hooks.refused(self.refused.len());
        admission
    }

    /// Writes `ops`, which the caller has already planned into `programmed` (in place: cloning
    /// the whole state per event cost ~8 ms at 10k Services / 100k backends). On failure
    /// `programmed` is ahead of the maps, so it is re-read from them and the next plan is full.
    /// Then hands what the plan removed to [`Hooks::removed`], also after a failed write:
    /// clearing flows of a pair that is still live only re-balances them. Returns whether
    /// every write succeeded. `started`: when planning began (for kube-proxy's sync duration).
    fn apply(
        &mut self,
        ops: &[MapOp],
        removals: &Removals,
        since: Instant,
        started: Instant,
    ) -> bool {
        if self.cfg.stall_programming && self.synced_once {
            warn!(writes = ops.len(), "fault injected: not writing the maps");
            return false;
        }
        let ok = self.write(ops, since);
        if !removals.is_empty() {
            self.hooks.removed(&mut self.dp, removals);
        }
        if ok {
            self.synced_once = true;
            self.hooks.synced(started.elapsed(), &self.triggers);
            self.triggers.clear();
        }
        ok
    }

    fn write(&mut self, ops: &[MapOp], since: Instant) -> bool {
        for op in ops {
            if let Err(e) = self.dp.apply(op) {
                error!("{e}");
                self.hooks.write_failed(&e);
                match self.dp.snapshot() {
                    Ok(s) => self.programmed = Programmed::from_snapshot(&s),
                    Err(e) => error!("{e}"),
                }
                self.needs_full = true;
                return false;
            }
            self.hooks.wrote(op);
        }
        // Latency of a change reaching the maps: a plan that writes nothing (nothing changed,
        // or a periodic resync) is no such change.
        if !ops.is_empty() {
            self.hooks.programmed(since.elapsed());
        }
        if let Ok(capacity) = self.dp.service_capacity() {
            self.hooks.fill(budget::usage(&self.programmed), capacity);
        }
        true
    }
}

/// Completes at `at`; never, without one.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next tick of an optional interval; never, without one.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
