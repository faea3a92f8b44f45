//! The engine's loop over the in-memory fake, on paused tokio time: what a source's events
//! write, recovery after failed writes (with backoff), the periodic full plan, shutdown.
use std::cell::RefCell;
use std::rc::Rc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use svc_common::{
    Affinity, Affinity6, AffinityKey, AffinityKey6, CtEntry, CtEntry6, CtKey, CtKey6, FrontendKey,
    PROTO_TCP, SCOPE_ANY,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, Instant as TokioInstant};

use super::*;
use crate::dataplane::fake::{canonical, FakeDataplane};
use crate::dataplane::{MapFill, MapSnapshot};
use crate::model::tests::{objects, slice, svc};
use crate::store::Change;

/// The fake, shared with the test script while the engine owns its handle.
#[derive(Clone, Default)]
struct Shared(Rc<RefCell<FakeDataplane>>);

impl Dataplane for Shared {
    fn apply(&mut self, op: &MapOp) -> Result<(), DataplaneError> {
        self.0.borrow_mut().apply(op)
    }
    fn snapshot(&self) -> Result<MapSnapshot, DataplaneError> {
        self.0.borrow().snapshot()
    }
    fn ct_scan(&self, each: &mut dyn FnMut(&[CtKey], &[CtEntry])) -> Result<usize, DataplaneError> {
        self.0.borrow().ct_scan(each)
    }
    fn ct_get(&self, key: &CtKey) -> Result<Option<CtEntry>, DataplaneError> {
        self.0.borrow().ct_get(key)
    }
    fn ct_delete(&mut self, keys: &[CtKey]) -> Result<usize, DataplaneError> {
        self.0.borrow_mut().ct_delete(keys)
    }
    fn ct_capacity(&self) -> u32 {
        self.0.borrow().ct_capacity()
    }
    fn service_capacity(&self) -> Result<budget::Entries, DataplaneError> {
        self.0.borrow().service_capacity()
    }
    fn affinity_scan(
        &self,
        each: &mut dyn FnMut(&[AffinityKey], &[Affinity]),
    ) -> Result<usize, DataplaneError> {
        self.0.borrow().affinity_scan(each)
    }
    fn affinity_delete(&mut self, keys: &[AffinityKey]) -> Result<usize, DataplaneError> {
        self.0.borrow_mut().affinity_delete(keys)
    }
    fn ct6_scan(
        &self,
        each: &mut dyn FnMut(&[CtKey6], &[CtEntry6]),
    ) -> Result<usize, DataplaneError> {
        self.0.borrow().ct6_scan(each)
    }
    fn ct6_get(&self, key: &CtKey6) -> Result<Option<CtEntry6>, DataplaneError> {
        self.0.borrow().ct6_get(key)
    }
    fn ct6_delete(&mut self, keys: &[CtKey6]) -> Result<usize, DataplaneError> {
        self.0.borrow_mut().ct6_delete(keys)
    }
    fn affinity6_scan(
        &self,
        each: &mut dyn FnMut(&[AffinityKey6], &[Affinity6]),
    ) -> Result<usize, DataplaneError> {
        self.0.borrow().affinity6_scan(each)
    }
    fn affinity6_delete(&mut self, keys: &[AffinityKey6]) -> Result<usize, DataplaneError> {
        self.0.borrow_mut().affinity6_delete(keys)
    }
    fn lru_fill(&self) -> Result<Vec<MapFill>, DataplaneError> {
        self.0.borrow().lru_fill()
    }
}

/// What the hooks saw, with tokio's (paused) clock.
#[derive(Default)]
struct Seen {
    failed: Vec<TokioInstant>,
    synced: Vec<TokioInstant>,
    node_changed: usize,
    ready: usize,
    queued: usize,
    heartbeats: usize,
    removed_frontends: Vec<u32>,
}

#[derive(Clone, Default)]
struct Recorder(Rc<RefCell<Seen>>);

impl Hooks<Shared> for Recorder {
    type Interface = ();
    fn queued(&mut self) {
        self.0.borrow_mut().queued += 1;
    }
    fn heartbeat(&mut self) {
        self.0.borrow_mut().heartbeats += 1;
    }
    async fn node_changed(&mut self, _node: Option<&Node>) {
        self.0.borrow_mut().node_changed += 1;
    }
    fn write_failed(&mut self, _error: &DataplaneError) {
        self.0.borrow_mut().failed.push(TokioInstant::now());
    }
    fn synced(&mut self, _took: Duration, _triggers: &[SystemTime]) {
        self.0.borrow_mut().synced.push(TokioInstant::now());
    }
    fn removed(&mut self, _dp: &mut Shared, removals: &Removals) {
        self.0
            .borrow_mut()
            .removed_frontends
            .extend(&removals.frontend_ids);
    }
    fn ready(&mut self) {
        self.0.borrow_mut().ready += 1;
    }
}

fn config(resync: Option<Duration>) -> EngineConfig {
    EngineConfig {
        node: NodeContext {
            node_name: "node-a".into(),
            node_ips: vec!["172.18.0.2".parse().unwrap()],
            ..Default::default()
        },
        resync,
        heartbeat: Duration::from_secs(1),
        service_share: 100,
        no_budget: false,
        stall_programming: false,
        started_at: SystemTime::UNIX_EPOCH,
    }
}

fn web() -> (ObjectRef, Service) {
    svc(
        "default",
        "web",
        json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80, "targetPort": 8080}]}),
    )
}

fn web_slice(ips: &[&str]) -> (ObjectRef, EndpointSlice) {
    let eps: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
    slice(
        "default",
        "web-1",
        "web",
        json!({"ports": [{"name": "", "port": 8080}], "endpoints": eps}),
    )
}

/// What the maps hold when `objects` are planned from scratch on a fresh fake: the expected
/// end state of every recovery, computed without the engine.
fn planned_from_scratch(objects: &Objects) -> MapSnapshot {
    let desired = model::desired(objects, &config(None).node);
    let mut fresh = FakeDataplane::new();
    let plan = reconcile::plan(&Programmed::default(), &desired);
    for op in &plan.ops {
        fresh.apply(op).expect("a plan from scratch applies");
    }
    fresh.snapshot
}

fn key(addr: [u8; 4], port: u16) -> FrontendKey {
    FrontendKey {
        addr,
        port,
        proto: PROTO_TCP,
        scope: SCOPE_ANY,
    }
}

/// Runs the engine and `script` together on the test's (paused) runtime; the script ends the
/// loop by returning. Returns the engine as `run` left it.
async fn drive(
    dp: Shared,
    hooks: Recorder,
    cfg: EngineConfig,
    script: impl AsyncFnOnce(mpsc::UnboundedSender<Event<()>>),
) -> Engine<Shared, Recorder> {
    let engine = Engine::new(dp, hooks, cfg).expect("the fake reads");
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let stop = async move {
        let _ = stop_rx.await;
    };
    let (engine, ()) = tokio::join!(engine.run(rx, stop), async move {
        script(tx).await;
        let _ = stop_tx.send(());
    });
    engine
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_manifests_load_is_written_in_full() {
    let dp = Shared::default();
    let seen = Recorder::default();
    let objs = objects(vec![web()], vec![web_slice(&["10.244.1.5", "10.244.2.7"])]);
    let expected = planned_from_scratch(&objs);
    let (maps, rec) = (dp.clone(), seen.clone());
    drive(dp, seen, config(None), async move |tx| {
        tx.send(Event::Objects(objs, Instant::now())).unwrap();
        sleep(Duration::from_millis(10)).await;
        assert_eq!(canonical(&maps.0.borrow().snapshot), canonical(&expected));
        assert!(maps
            .0
            .borrow()
            .snapshot
            .frontends
            .contains_key(&key([10, 96, 0, 10], 80)));
        let seen = rec.0.borrow();
        assert_eq!((seen.ready, seen.synced.len(), seen.queued), (1, 1, 1));
        // The first full plan chooses the SNAT source (node_changed) once.
        assert_eq!(seen.node_changed, 1);
    })
    .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failed_write_is_retried_with_backoff_until_the_maps_match() {
    let dp = Shared::default();
    // The first plan writes 2 backends, 2 slots, 1 frontend: its 4th write (a slot) fails;
    // so does the first write of the first retry (the 5th apply call overall).
    dp.0.borrow_mut().fail_writes = [4, 5].into();
    let seen = Recorder::default();
    let objs = objects(vec![web()], vec![web_slice(&["10.244.1.5", "10.244.2.7"])]);
    let expected = planned_from_scratch(&objs);
    let (maps, rec) = (dp.clone(), seen.clone());
    let engine = drive(dp, seen, config(None), async move |tx| {
        let t0 = TokioInstant::now();
        tx.send(Event::Objects(objs, Instant::now())).unwrap();
        sleep(Duration::from_millis(10)).await;
        {
            // Half written, as the kernel left it, and never half-built for a packet: no
            // frontend yet (the fake checks the update order after every write).
            let maps = maps.0.borrow();
            assert!(maps.snapshot.frontends.is_empty());
            assert_eq!(maps.snapshot.backends.len(), 2);
            maps.check_all().unwrap();
            assert_eq!(rec.0.borrow().failed, [t0]);
        }
        // First retry after 1 s (fails again), second 2 s after that.
        sleep(Duration::from_millis(1_500)).await;
        assert_eq!(rec.0.borrow().failed, [t0, t0 + RETRY_MIN]);
        assert!(maps.0.borrow().snapshot.frontends.is_empty());
        sleep(Duration::from_secs(2)).await;
        assert_eq!(canonical(&maps.0.borrow().snapshot), canonical(&expected));
        let seen = rec.0.borrow();
        assert_eq!(seen.synced, [t0 + RETRY_MIN * 3]);
        assert_eq!(seen.ready, 1);
        // Each full plan after a failure chooses the SNAT source again.
        assert_eq!(seen.node_changed, 3);
    })
    .await;
    // Nothing more was tried once the maps matched.
    assert_eq!(engine.hooks().0.borrow().failed.len(), 2);
    assert!(!engine.needs_full);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failed_incremental_write_makes_the_next_plan_full() {
    let dp = Shared::default();
    let seen = Recorder::default();
    let first = objects(vec![web()], vec![web_slice(&["10.244.1.5"])]);
    let (maps, rec) = (dp.clone(), seen.clone());
    drive(dp, seen, config(None), async move |tx| {
        for delta in api_lists(&first) {
            tx.send(Event::Delta(delta)).unwrap();
        }
        sleep(Duration::from_millis(10)).await;
        assert_eq!(rec.0.borrow().synced.len(), 1);
        // A second endpoint: its backend write fails.
        let writes = maps.0.borrow().writes;
        maps.0.borrow_mut().fail_writes = [writes + 1].into();
        let (_, slice) = web_slice(&["10.244.1.5", "10.244.2.7"]);
        tx.send(Event::Delta(
            Delta::slices(Change::Upsert(slice), Instant::now()).expect("a named slice"),
        ))
        .unwrap();
        sleep(Duration::from_millis(10)).await;
        assert_eq!(rec.0.borrow().failed.len(), 1);
        assert_eq!(maps.0.borrow().snapshot.backends.len(), 1);
        // The retry is a full plan from the maps as they are.
        sleep(RETRY_MIN).await;
        let now = objects(vec![web()], vec![web_slice(&["10.244.1.5", "10.244.2.7"])]);
        assert_eq!(
            canonical(&maps.0.borrow().snapshot),
            canonical(&planned_from_scratch(&now))
        );
    })
    .await;
}

/// The three first lists of the API source, as the watchers report them.
fn api_lists(objs: &Objects) -> Vec<Delta> {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]},
    }))
    .unwrap();
    vec![
        Delta::services(
            Change::Resync(objs.services.values().cloned().collect()),
            Instant::now(),
        )
        .expect("a named Service"),
        Delta::slices(
            Change::Resync(objs.slices.values().cloned().collect()),
            Instant::now(),
        )
        .expect("a named slice"),
        Delta::Node(Change::Resync(vec![node]), Instant::now()),
    ]
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn nothing_is_planned_before_every_kind_has_listed() {
    let dp = Shared::default();
    let seen = Recorder::default();
    let objs = objects(vec![web()], vec![web_slice(&["10.244.1.5"])]);
    let (maps, rec) = (dp.clone(), seen.clone());
    drive(dp, seen, config(Some(FULL_RESYNC)), async move |tx| {
        let mut lists = api_lists(&objs);
        let node = lists.pop().unwrap();
        for delta in lists {
            tx.send(Event::Delta(delta)).unwrap();
        }
        // Not even the periodic plan writes before the Node has listed.
        sleep(FULL_RESYNC * 2).await;
        assert_eq!(maps.0.borrow().writes, 0);
        assert_eq!(rec.0.borrow().ready, 0);
        tx.send(Event::Delta(node)).unwrap();
        sleep(Duration::from_millis(10)).await;
        assert_eq!(rec.0.borrow().ready, 1);
        assert_eq!(
            canonical(&maps.0.borrow().snapshot),
            canonical(&planned_from_scratch(&objs))
        );
    })
    .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_freed_address_goes_to_the_other_claimant_at_once() {
    // Two Services claim 10.96.0.10:80: `a` as its ClusterIP, `b` as an external IP. `a`
    // sorts first and holds it. Deleting `a` re-plans `b` with it: `b`, untouched, gets the
    // address in the same plan, as a full plan would give it.
    let a = svc(
        "default",
        "a",
        json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
    );
    let b = svc(
        "default",
        "b",
        json!({"clusterIP": "10.96.0.11", "externalIPs": ["10.96.0.10"], "ports": [{"port": 80}]}),
    );
    let b_slice = slice(
        "default",
        "b-1",
        "b",
        json!({"ports": [{"name": "", "port": 80}], "endpoints": [{"addresses": ["10.244.3.3"]}]}),
    );
    let objs = objects(vec![a.clone(), b.clone()], vec![b_slice.clone()]);
    let dp = Shared::default();
    let seen = Recorder::default();
    let (maps, rec) = (dp.clone(), seen.clone());
    drive(dp, seen, config(Some(FULL_RESYNC)), async move |tx| {
        let t0 = TokioInstant::now();
        for delta in api_lists(&objs) {
            tx.send(Event::Delta(delta)).unwrap();
        }
        sleep(Duration::from_millis(10)).await;
        let contested = key([10, 96, 0, 10], 80);
        let held_by_a = maps.0.borrow().snapshot.frontends[&contested];
        assert_eq!(held_by_a.backend_count, 0, "a has no endpoints: it rejects");
        tx.send(Event::Delta(
            Delta::services(Change::Delete(a.1), Instant::now()).expect("a named Service"),
        ))
        .unwrap();
        sleep(Duration::from_millis(10)).await;
        let synced = rec.0.borrow().synced.clone();
        assert_eq!(synced.len(), 2, "the list, the delete: no full plan yet");
        let after = objects(vec![b], vec![b_slice]);
        assert_eq!(
            canonical(&maps.0.borrow().snapshot),
            canonical(&planned_from_scratch(&after))
        );
        assert_eq!(
            maps.0.borrow().snapshot.frontends[&contested].backend_count,
            1
        );
        // The periodic plan, 60 s after the start, finds nothing left to write.
        let writes = maps.0.borrow().writes;
        sleep(FULL_RESYNC).await;
        assert_eq!(rec.0.borrow().synced.last(), Some(&(t0 + FULL_RESYNC)));
        assert_eq!(maps.0.borrow().writes, writes);
    })
    .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_loop_ends_when_the_sources_are_gone_and_beats_meanwhile() {
    let engine = Engine::new(Shared::default(), Recorder::default(), config(None)).unwrap();
    let (tx, rx) = mpsc::unbounded_channel::<Event<()>>();
    let sender = async move {
        sleep(Duration::from_millis(3_500)).await;
        drop(tx);
    };
    let (engine, ()) = tokio::join!(engine.run(rx, std::future::pending()), sender);
    // Ticks at 0, 1, 2 and 3 s.
    assert_eq!(engine.hooks().0.borrow().heartbeats, 4);
}

mod manifests;
