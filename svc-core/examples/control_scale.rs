//! Where the control plane's memory and time go at scale, in-process, without root.
//!
//! Builds the agent's pure state the way the API source does, for N Services of one TCP port
//! with one EndpointSlice of 10 ready endpoints each (bench_control's objects, shaped as the
//! fake API server serves them: uid, creationTimestamp, generation, resourceVersion and the
//! Service defaults), then prints:
//! - bytes per Service of each structure, from a counting global allocator: the decoded
//!   objects (what a watcher buffers during its first list), the store (objects, slice index),
//!   the desired state and the plan of a full sync (transient), the programmed state;
//! - the time of a full sync (store, model, budget, plan, through [`Engine`] over a dataplane
//!   that accepts every write) and of single changes (p50/p99), in-process;
//! - the process's VmRSS / VmHWM.
//!
//! `--realistic` decorates the objects as a real cluster's are (managedFields, the
//! last-applied annotation, owner references, targetRefs, zones, trigger times), to show what
//! the agent must not keep. Figures are printed, never asserted.
//!
//! `cargo run --release -p svc-core --example control_scale -- 10000 [--realistic]`
// Examples see every dev-dependency of their package and use a few.
#![allow(unused_crate_dependencies)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};
use svc_common::{
    Affinity, Affinity6, AffinityKey, AffinityKey6, CtEntry, CtEntry6, CtKey, CtKey6,
};
use svc_core::budget::Entries;
use svc_core::dataplane::{Dataplane, DataplaneError, MapFill, MapOp, MapSnapshot};
use svc_core::engine::{Engine, EngineConfig, Event, Hooks};
use svc_core::model::{
    self, Interner, NodeContext, ObjectRef, SliceOwners, SlimService, SlimSlice,
};
use svc_core::reconcile::{self, Programmed};
use svc_core::store::{Change, Delta, Store, Touched};

/// The system allocator, counting the bytes it has handed out and not taken back.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// caller's obligations are `System`'s; the counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (see the impl).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is (see the impl).
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (see the impl).
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is (see the impl).
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Live bytes now, with the peak reset to them.
fn mark() -> usize {
    let now = live();
    PEAK.store(now, Ordering::Relaxed);
    now
}

const ENDPOINTS: usize = 10;
const ENDPOINT_SLOTS: usize = 16;
const NODE: &str = "node1";

fn service_name(i: usize) -> String {
    format!("svc-{i:06}")
}

fn cluster_ip(i: usize) -> String {
    // 10.96.0.0/12 holds 1M addresses: enough for every size here.
    let k = (1 + i) as u32;
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) + k).to_string()
}

fn endpoint_ip(i: usize, j: usize) -> String {
    let k = (i * ENDPOINT_SLOTS + j) as u32;
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 128, 0, 0)) + k).to_string()
}

fn uid(kind: u8, i: usize) -> String {
    format!("{kind:08x}-0000-4000-8000-{i:012x}")
}

fn service(i: usize, realistic: bool) -> Service {
    let name = service_name(i);
    let mut v = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name, "namespace": "default", "uid": uid(1, i),
            "creationTimestamp": "2026-11-26T10:00:00Z", "generation": 1,
            "resourceVersion": (1000 + i).to_string(),
        },
        "spec": {
            "type": "ClusterIP", "clusterIP": cluster_ip(i), "clusterIPs": [cluster_ip(i)],
            "selector": {"app": name}, "sessionAffinity": "None", "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
        "status": {"loadBalancer": {}},
    });
    if realistic {
        let meta = &mut v["metadata"];
        meta["labels"] = json!({"app": name, "app.kubernetes.io/part-of": "bench", "team": "t1"});
        let applied = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "labels": meta["labels"]},
            "spec": v["spec"]});
        v["metadata"]["annotations"] = json!({
            "kubectl.kubernetes.io/last-applied-configuration": applied.to_string(),
        });
        v["metadata"]["managedFields"] = json!([{
            "manager": "kubectl-client-side-apply", "operation": "Update",
            "apiVersion": "v1", "time": "2026-11-26T10:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:annotations": {".": {},
                "f:kubectl.kubernetes.io/last-applied-configuration": {}},
                "f:labels": {".": {}, "f:app": {}, "f:app.kubernetes.io/part-of": {}, "f:team": {}}},
                "f:spec": {"f:internalTrafficPolicy": {}, "f:ports": {".": {},
                "k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {},
                "f:protocol": {}, "f:targetPort": {}}}, "f:selector": {}, "f:sessionAffinity": {},
                "f:type": {}}},
        }]);
    }
    serde_json::from_value(v).expect("a Service")
}

fn slice(i: usize, endpoints: u16, realistic: bool) -> EndpointSlice {
    let name = service_name(i);
    let eps: Vec<Value> = (0..ENDPOINT_SLOTS)
        .filter(|j| endpoints & (1 << j) != 0)
        .map(|j| {
            let mut ep = json!({
                "addresses": [endpoint_ip(i, j)], "conditions": {"ready": true}, "nodeName": NODE,
            });
            if realistic {
                ep["conditions"] = json!({"ready": true, "serving": true, "terminating": false});
                ep["zone"] = json!("zone-a");
                ep["targetRef"] = json!({"kind": "Pod", "namespace": "default",
                    "name": format!("{name}-7d9c5b6f4-{j:05x}"), "uid": uid(3, i * 16 + j)});
            }
            ep
        })
        .collect();
    let mut v = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-bench"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": name}, "uid": uid(2, i),
            "creationTimestamp": "2026-11-26T10:00:00Z", "generation": 1,
            "resourceVersion": (2000 + i).to_string(),
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps,
    });
    if realistic {
        let meta = &mut v["metadata"];
        meta["labels"]["endpointslice.kubernetes.io/managed-by"] =
            json!("endpointslice-controller.k8s.io");
        meta["labels"]["app"] = json!(name);
        meta["generateName"] = json!(format!("{name}-"));
        meta["annotations"] = json!({
            "endpoints.kubernetes.io/last-change-trigger-time": "2026-11-26T10:00:00Z",
        });
        meta["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Service", "name": name,
            "uid": uid(1, i), "controller": true, "blockOwnerDeletion": true}]);
        let fields: serde_json::Map<String, Value> = (0..ENDPOINT_SLOTS)
            .filter(|j| endpoints & (1 << j) != 0)
            .map(|j| {
                (
                    format!("k:{{\"addresses\":[\"{}\"]}}", endpoint_ip(i, j)),
                    json!({".": {}, "f:addresses": {}, "f:conditions": {".": {}, "f:ready": {},
                        "f:serving": {}, "f:terminating": {}}, "f:nodeName": {},
                        "f:targetRef": {}, "f:zone": {}}),
                )
            })
            .collect();
        meta["managedFields"] = json!([{
            "manager": "kube-controller-manager", "operation": "Update",
            "apiVersion": "discovery.k8s.io/v1", "time": "2026-11-26T10:00:00Z",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:addressType": {}, "f:endpoints": fields,
                "f:metadata": {"f:annotations": {".": {}, "f:endpoints.kubernetes.io/last-change-trigger-time": {}},
                "f:generateName": {}, "f:labels": {".": {}, "f:app": {},
                "f:endpointslice.kubernetes.io/managed-by": {}, "f:kubernetes.io/service-name": {}},
                "f:ownerReferences": {".": {}, "k:{\"uid\":\"x\"}": {}}}, "f:ports": {}},
        }]);
    }
    serde_json::from_value(v).expect("an EndpointSlice")
}

/// Service `i` as the watcher delivers it: with its reference, read into the model's form.
fn slim(i: usize, realistic: bool, names: &mut Interner) -> (ObjectRef, SlimService) {
    SlimService::keyed(service(i, realistic), names).expect("a named Service")
}

/// Slice `i` as the watcher delivers it: with its reference, read into the model's form.
fn keyed(
    i: usize,
    endpoints: u16,
    realistic: bool,
    names: &mut Interner,
) -> (ObjectRef, SlimSlice) {
    SlimSlice::keyed(&slice(i, endpoints, realistic), names).expect("a named slice")
}

fn node() -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]},
    }))
    .expect("a Node")
}

fn node_context() -> NodeContext {
    NodeContext {
        node_name: NODE.into(),
        node_ips: vec!["172.18.0.2".parse().expect("an address")],
        ..Default::default()
    }
}

/// Accepts every write, holds nothing: what is measured is the agent's side only.
struct NullDataplane {
    writes: usize,
}

impl Dataplane for NullDataplane {
    fn apply(&mut self, _op: &MapOp) -> Result<(), DataplaneError> {
        self.writes += 1;
        Ok(())
    }
    fn snapshot(&self) -> Result<MapSnapshot, DataplaneError> {
        Ok(MapSnapshot::default())
    }
    fn ct_scan(&self, _: &mut dyn FnMut(&[CtKey], &[CtEntry])) -> Result<usize, DataplaneError> {
        Ok(0)
    }
    fn ct_get(&self, _: &CtKey) -> Result<Option<CtEntry>, DataplaneError> {
        Ok(None)
    }
    fn ct_delete(&mut self, _: &[CtKey]) -> Result<usize, DataplaneError> {
        Ok(0)
    }
    fn ct_capacity(&self) -> u32 {
        0
    }
    fn service_capacity(&self) -> Result<Entries, DataplaneError> {
        // Maps sized for the largest clusters (the agent's --*-max flags).
        Ok(Entries {
            frontends: 1 << 21,
            slots: 1 << 24,
            backends: 1 << 22,
            source_ranges: 1 << 16,
            frontends6: 1 << 21,
            backends6: 1 << 22,
            source_ranges6: 1 << 16,
        })
    }
    fn affinity_scan(
        &self,
        _: &mut dyn FnMut(&[AffinityKey], &[Affinity]),
    ) -> Result<usize, DataplaneError> {
        Ok(0)
    }
    fn affinity_delete(&mut self, _: &[AffinityKey]) -> Result<usize, DataplaneError> {
        Ok(0)
    }
    fn ct6_scan(&self, _: &mut dyn FnMut(&[CtKey6], &[CtEntry6])) -> Result<usize, DataplaneError> {
        Ok(0)
    }
    fn ct6_get(&self, _: &CtKey6) -> Result<Option<CtEntry6>, DataplaneError> {
        Ok(None)
    }
    fn ct6_delete(&mut self, _: &[CtKey6]) -> Result<usize, DataplaneError> {
        Ok(0)
    }
    fn affinity6_scan(
        &self,
        _: &mut dyn FnMut(&[AffinityKey6], &[Affinity6]),
    ) -> Result<usize, DataplaneError> {
        Ok(0)
    }
    fn affinity6_delete(&mut self, _: &[AffinityKey6]) -> Result<usize, DataplaneError> {
        Ok(0)
    }
    fn lru_fill(&self) -> Result<Vec<MapFill>, DataplaneError> {
        Ok(Vec::new())
    }
}

struct NoHooks;

impl Hooks<NullDataplane> for NoHooks {
    type Interface = ();
}

/// splitmix64, as bench_control's.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

fn proc_status(key: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .map(|l| l[key.len()..].trim().to_owned())
        })
        .unwrap_or_default()
}

struct Table {
    n: usize,
}

impl Table {
    fn row(&self, what: &str, bytes: usize) {
        println!(
            "  {what:<48} {:>10.1} MiB {:>8} B/Service",
            bytes as f64 / (1 << 20) as f64,
            bytes / self.n
        );
    }
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10_000);
    let realistic = args.iter().any(|a| a == "--realistic");
    let t = Table { n };
    let full = (1u16 << ENDPOINTS) - 1;
    println!(
        "{n} Services × 1 TCP port, 1 EndpointSlice × {ENDPOINTS} ready endpoints each{}",
        if realistic {
            ", realistic metadata"
        } else {
            ""
        }
    );

    // 1. Accounting, structure by structure, through the store and the planner directly.
    println!("memory (live bytes from the allocator):");
    let m0 = mark();
    // As the watchers do: each object made slim as it is decoded, before it is buffered.
    let mut names = Interner::default();
    let services: Vec<_> = (0..n).map(|i| slim(i, realistic, &mut names)).collect();
    let m1 = live();
    t.row("slim Services (a watcher's list buffer)", m1 - m0);
    let mut names = Interner::default();
    let slices: Vec<_> = (0..n)
        .map(|i| keyed(i, full, realistic, &mut names))
        .collect();
    let m2 = live();
    t.row("slim EndpointSlices (a watcher's list buffer)", m2 - m1);
    let mut store = Store::default();
    let mut touched = Touched::default();
    let now = Instant::now();
    store.apply(Delta::Services(Change::Resync(services), now), &mut touched);
    store.apply(Delta::Slices(Change::Resync(slices), now), &mut touched);
    store.apply(Delta::Node(Change::Resync(vec![node()]), now), &mut touched);
    drop(touched);
    let m3 = live();
    t.row("store: objects, slice index, node", m3 - m0);
    let owners = SliceOwners::build(&store.objects.slices);
    t.row("  of which the slice index (SliceOwners)", live() - m3);
    drop(owners);
    let ctx = node_context();
    let m4 = mark();
    let started = Instant::now();
    let desired = model::slim_desired(&store.objects, &ctx);
    let t_desired = started.elapsed();
    t.row("desired state of a full plan (transient)", live() - m4);
    let m5 = live();
    let mut programmed = Programmed::default();
    let started = Instant::now();
    let (ops, removals) = reconcile::plan_in_place(&mut programmed, &desired);
    let t_plan = started.elapsed();
    let m6 = live();
    let ops_bytes = ops.capacity() * std::mem::size_of::<MapOp>();
    t.row("map operations of a full plan (transient)", ops_bytes);
    t.row("programmed state", m6 - m5 - ops_bytes);
    let writes = ops.len();
    drop((ops, removals, desired));
    t.row(
        "peak above the store during the full plan",
        PEAK.load(Ordering::Relaxed) - m3,
    );
    t.row("kept: store + programmed", live() - m0);
    println!(
        "  full plan: model {:.0} ms, plan {:.0} ms, {writes} writes",
        t_desired.as_secs_f64() * 1e3,
        t_plan.as_secs_f64() * 1e3
    );
    drop((store, programmed));

    // 2. Timings through the engine, as the agent runs it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let cfg = EngineConfig {
        node: node_context(),
        resync: None,
        heartbeat: Duration::from_secs(3600),
        service_share: 10,
        no_budget: false,
        stall_programming: false,
        started_at: std::time::SystemTime::now(),
    };
    let mut engine = Engine::new(NullDataplane { writes: 0 }, NoHooks, cfg).expect("an engine");
    let services: Vec<_> = (0..n).map(|i| slim(i, realistic, &mut names)).collect();
    let slices: Vec<_> = (0..n)
        .map(|i| keyed(i, full, realistic, &mut names))
        .collect();
    let now = Instant::now();
    let started = Instant::now();
    rt.block_on(engine.handle(vec![
        Event::Delta(Delta::Services(Change::Resync(services), now)),
        Event::Delta(Delta::Slices(Change::Resync(slices), now)),
        Event::Delta(Delta::Node(Change::Resync(vec![node()]), now)),
    ]));
    println!(
        "engine full sync (lists applied, model, budget, plan, {} writes): {:.0} ms",
        engine.dataplane().writes,
        started.elapsed().as_secs_f64() * 1e3
    );
    let mut endpoints = vec![full; n];
    let mut rng = Rng(0x5eed_c0de);
    let mut times = Vec::new();
    for _ in 0..200 {
        let i = rng.below(n);
        let j = rng.below(ENDPOINT_SLOTS);
        let next = endpoints[i] ^ (1 << j);
        if next != 0 {
            endpoints[i] = next;
        }
        let obj = keyed(i, endpoints[i], realistic, &mut names);
        let started = Instant::now();
        rt.block_on(engine.handle(vec![Event::Delta(Delta::Slices(
            Change::Upsert(obj),
            Instant::now(),
        ))]));
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "engine, 200 EndpointSlice ±1 endpoint: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        quantile(&times, 0.5),
        quantile(&times, 0.99),
        quantile(&times, 1.0)
    );
    let mut times = Vec::new();
    for k in 0..50 {
        let i = n + k;
        let (svc, sl) = (
            slim(i, realistic, &mut names),
            keyed(i, full, realistic, &mut names),
        );
        rt.block_on(engine.handle(vec![Event::Delta(Delta::Slices(
            Change::Upsert(sl),
            Instant::now(),
        ))]));
        let started = Instant::now();
        rt.block_on(engine.handle(vec![Event::Delta(Delta::Services(
            Change::Upsert(svc.clone()),
            Instant::now(),
        ))]));
        times.push(started.elapsed());
        let started = Instant::now();
        rt.block_on(engine.handle(vec![Event::Delta(Delta::Services(
            Change::Delete(svc),
            Instant::now(),
        ))]));
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "engine, 50 Service creates + 50 deletes: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        quantile(&times, 0.5),
        quantile(&times, 0.99),
        quantile(&times, 1.0)
    );
    println!(
        "process: VmRSS {}, VmHWM {} (engine state live: {:.1} MiB)",
        proc_status("VmRSS:"),
        proc_status("VmHWM:"),
        live() as f64 / (1 << 20) as f64
    );
}
