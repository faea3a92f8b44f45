//! Hostile objects: property tests of the model (and of the planner fed by it) over arbitrary
//! Services and EndpointSlices, of the kind a `--manifests` directory or a careless (or
//! malicious) user with Service rights can produce: long port lists with duplicates, protocols
//! and addresses that are no such thing, ClusterIPs shared by several Services, names at and past
//! the length limits, Unicode, slices labelled for the wrong Service, out-of-range numbers.
//!
//! Every target is its own test, run with [`cases`] cases (10 000 unless `PROPTEST_CASES` says
//! otherwise; `PROPTEST_RNG_SEED` fixes the seed). Seeds are random per run, so each CI run
//! explores new objects; a failure prints the shrunk objects as JSON manifests, which is the
//! reproducer. Nothing is written to disk (no regression files).
//!
//! 1. Target 1, [`desired_never_panics_and_names_every_problem`]: `desired()` (and the
//!    incremental `desired_for*`, and `health_checks`) never panic; every problem names an
//!    object given and a non-empty field of it; the output is well formed (sorted backends, no
//!    refused address, source-range flags matching ranges, scoped entries paired) and bounded by
//!    the input, in entries, in memory allocated and in time.
//! 2. Target 2, [`refusals_are_local`]: adding one hostile Service (and its slices) to valid
//!    Services changes none of their frontends, except the keys it claims first. What the model
//!    does, and this test pins: an address:port:protocol claimed by two Services goes to the
//!    smallest `namespace/name` (`desired()`'s walk order), the other gets a problem at the
//!    field that claimed it. So a hostile Service sorting *before* a valid one takes exactly the
//!    keys they share (with their `SCOPE_EXTERNAL` siblings), whether it claims them as
//!    ClusterIP, NodePort, external or ingress IP, and the valid Service is told (one problem
//!    per key taken); one sorting after gets nothing there and is told. Nothing else of the
//!    valid Services changes, and they gain nothing.
//!    [`hostile_slices_only_add_endpoints`]: a hostile slice labelled for a valid Service costs
//!    only its own bad endpoints: that Service keeps every frontend and every backend.
//! 3. Target 3, [`hostile_sequences_keep_the_invariant_and_converge`]: reconcile.rs's
//!    `random_sequences_keep_the_invariant_and_converge` drives the planner with synthetic
//!    `Desired`s; this feeds it the model's output for sequences of hostile changes (Services
//!    added or removed, slices put or removed) instead, through both paths the agent uses
//!    (incremental `plan_services` for the touched Services, then a full `plan`), applying every
//!    op to the `FakeDataplane`, which checks the update-order invariant after each one. After
//!    each step a second plan is empty (converged) and no frontend of an untouched Service was
//!    lost (except a key a touched Service claims first, as in 2); after the last, the maps hold
//!    what the planner believes and adopting them plans nothing.
//!
//! [`one_slice_of_10k_endpoints_in_a_service_of_3000_ports`] is the one-off size case. The last
//! three tests are defects the targets found, reduced to plain objects.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the library.
#![allow(unused_crate_dependencies)]
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use svc_common::{
    FrontendKey, BACKEND_F_LOCAL, BACKEND_F_TERMINATING, FRONTEND_F_EXTERNAL_SCOPE,
    FRONTEND_F_SOURCE_RANGES, MAX_BACKENDS_PER_FRONTEND, PROTO_TCP, PROTO_UDP, SCOPE_ANY,
    SCOPE_EXTERNAL,
};
use svc_core::dataplane::fake::FakeDataplane;
use svc_core::dataplane::{Dataplane, MapOp};
use svc_core::model::{
    desired, desired_for, desired_for_indexed, health_checks, Desired, NodeContext, ObjectRef,
    Objects, SliceOwners, LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME,
    MAX_AFFINITY_TIMEOUT_S,
};
use svc_core::reconcile::{plan, plan_in_place, plan_services_in_place, Plan, Programmed};

// ---------------------------------------------------------------------------------------------
// Memory: a counting allocator, per thread, so one call's peak can be read back.

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    // `try_with`: never panic inside the allocator, even while the thread is torn down.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the bookkeeping allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` (a non-zero-size layout) is passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (that is, from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; `new_size` is the caller's, valid.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// CPU time this thread has used: what bounds are checked against, since wall time on a
/// loaded CI machine says more about the neighbours than about the code.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `f`, returning its result, the CPU time it took and the most bytes it had allocated at
/// once on this thread beyond what was live before (its result included).
fn measured<T>(f: impl FnOnce() -> T) -> (T, Duration, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let start = thread_cpu();
    let out = f();
    let took = thread_cpu().saturating_sub(start);
    let peak = PEAK.with(Cell::get) - base;
    (out, took, peak.max(0) as usize)
}

// ---------------------------------------------------------------------------------------------
// Runner.

/// Cases per target: `PROPTEST_CASES`, else 10 000 (the acceptance: at least that many
/// in CI, which runs `cargo test --workspace`).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        // A failure shrinks for a bounded time, then reports what it has.
        max_shrink_iters: 4_096,
        max_shrink_time: 60_000,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Runs one target and prints its case count and runtime (`--nocapture` shows them).
fn run<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: fmt::Debug,
{
    let mut runner = runner();
    let start = Instant::now();
    let result = runner.run(&strategy, test);
    eprintln!("{name}: {} cases in {:.1?}", cases(), start.elapsed());
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Objects as JSON manifests (as the model's own tests build them), printed compactly on failure.

/// One object's manifest; `Debug` prints it as the JSON to put in a file to reproduce.
#[derive(Clone)]
struct Manifest(Value);

impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The key a source would file the object under (an unnamed one under `""`: sources refuse
/// those, but the model must cope with whatever it is handed).
fn object_ref(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectRef {
    ObjectRef::from_meta(meta).unwrap_or_else(|| {
        ObjectRef::new(meta.namespace.clone().unwrap_or_default(), String::new())
    })
}

fn to_service(m: &Manifest) -> Result<(ObjectRef, Service), TestCaseError> {
    let svc: Service = serde_json::from_value(m.0.clone())
        .map_err(|e| TestCaseError::fail(format!("generator made no Service: {e}: {m:?}")))?;
    Ok((object_ref(&svc.metadata), svc))
}

fn to_slice(m: &Manifest) -> Result<(ObjectRef, EndpointSlice), TestCaseError> {
    let slice: EndpointSlice = serde_json::from_value(m.0.clone())
        .map_err(|e| TestCaseError::fail(format!("generator made no EndpointSlice: {e}: {m:?}")))?;
    Ok((object_ref(&slice.metadata), slice))
}

fn objects(services: &[Manifest], slices: &[Manifest]) -> Result<Objects, TestCaseError> {
    let mut o = Objects::default();
    for m in services {
        let (r, s) = to_service(m)?;
        o.services.insert(r, s);
    }
    for m in slices {
        let (r, s) = to_slice(m)?;
        o.slices.insert(r, s);
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Generators. Each object field is decoded from a few bits of one `u64` (its *seed*) and picks
// from a small pool, so collisions (names, addresses, ports) are likely; pool entries marked
// "arbitrary" take any i32, any IPv4 address or any Unicode text from a stream derived from the
// seed. Proptest then has one value per port or endpoint to generate and shrink, not a tree of
// a dozen: that keeps 10 000 cases of a debug build within seconds. Seed 0 decodes to the
// first (plainest) entry of every pool, which is where shrinking heads.

const NODE_IP: &str = "172.18.0.2";

/// A seed being decoded: `take` reads its bits from the low end; `wide` draws arbitrary data
/// from a splitmix64 stream seeded by it.
struct Bits {
    direct: u64,
    stream: u64,
}

impl Bits {
    fn new(seed: u64) -> Self {
        Self {
            direct: seed,
            stream: seed,
        }
    }

    fn take(&mut self, bits: u32) -> usize {
        let v = self.direct & ((1 << bits) - 1);
        self.direct >>= bits;
        v as usize
    }

    fn wide(&mut self) -> u64 {
        self.stream = self.stream.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.stream;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// An entry of `pool` (of 2^`bits` entries), by `bits` bits of the seed.
    fn pick<T: Clone>(&mut self, bits: u32, pool: &[T]) -> T {
        debug_assert_eq!(pool.len(), 1 << bits);
        pool[self.take(bits)].clone()
    }

    fn any_i32(&mut self) -> i32 {
        self.wide() as i32
    }

    fn any_ipv4(&mut self) -> String {
        Ipv4Addr::from(self.wide() as u32).to_string()
    }

    /// 1-12 arbitrary Unicode scalar values, control characters and all.
    fn any_text(&mut self) -> String {
        let len = 1 + self.wide() % 12;
        (0..len)
            .map(|_| {
                let w = self.wide();
                // Mostly the BMP, where most scripts (and the bidi controls) are.
                let c = if w & 3 == 0 {
                    w >> 2
                } else {
                    (w >> 2) & 0xffff
                };
                char::from_u32((c % 0x11_0000) as u32).unwrap_or('\u{fffd}')
            })
            .collect()
    }
}

/// A text field's choice: absent, given, or arbitrary Unicode.
#[derive(Clone, Copy)]
enum Text {
    Absent,
    Is(&'static str),
    /// `"n".repeat(63)` and the like: names at and past the length limits.
    Repeat(&'static str, usize),
    Unicode,
}

impl Text {
    fn decode(self, b: &mut Bits) -> Option<String> {
        match self {
            Text::Absent => None,
            Text::Is(s) => Some(s.to_owned()),
            Text::Repeat(s, n) => Some(s.repeat(n)),
            Text::Unicode => Some(b.any_text()),
        }
    }
}

use Text::{Absent, Is, Repeat, Unicode};

/// A number field's choice.
#[derive(Clone, Copy)]
enum Num {
    Absent,
    Is(i32),
    Any,
}

impl Num {
    fn decode(self, b: &mut Bits) -> Option<i32> {
        match self {
            Num::Absent => None,
            Num::Is(n) => Some(n),
            Num::Any => Some(b.any_i32()),
        }
    }
}

/// An address field's choice.
#[derive(Clone, Copy)]
enum Addr {
    Is(&'static str),
    AnyIpv4,
    Unicode,
}

impl Addr {
    fn decode(self, b: &mut Bits) -> String {
        match self {
            Addr::Is(s) => s.to_owned(),
            Addr::AnyIpv4 => b.any_ipv4(),
            Addr::Unicode => b.any_text(),
        }
    }
}

/// Object names: colliding short ones (`a` sorts before and `z` after the valid Services'
/// `m0`…), empty, the DNS label limit (63) and one past it, the subdomain limit (253), Unicode.
#[rustfmt::skip]
const NAMES: [Text; 16] = [
    Is("web"), Is("db"), Is("a"), Is("z"), Is("web"), Is("db"), Is("a"), Is("z"),
    Is("web"), Is("a"), Is(""), Repeat("n", 63), Repeat("n", 64), Repeat("x", 253),
    Is("ünïcødé-名前-🦀"), Unicode,
];
#[rustfmt::skip]
const NAMESPACES: [Text; 8] = [
    Is("default"), Is("default"), Is("default"), Is("default"), Is(""), Is("aaa"),
    Is("kube-system"), Unicode,
];
#[rustfmt::skip]
const PORT_NAMES: [Text; 16] = [
    Absent, Is(""), Is("http"), Is("dns"), Is("p0"), Is("p1"), Is("p2"), Absent, Is("http"),
    Is("p0"), Is("p1"), Repeat("p", 15), Repeat("p", 64), Is("\u{202e}evil\u{0}nul"), Unicode,
    Is("dns"),
];
#[rustfmt::skip]
const PROTOCOLS: [Text; 8] = [
    Absent, Is("TCP"), Is("UDP"), Is("TCP"), Absent, Is("SCTP"), Is("tcp"), Unicode,
];
/// Port numbers: the usual ones (colliding), the bounds and past them, anything.
#[rustfmt::skip]
const PORTS: [Num; 16] = [
    Num::Is(80), Num::Is(443), Num::Is(53), Num::Is(8080), Num::Is(80), Num::Is(443),
    Num::Is(0), Num::Is(-1), Num::Is(1), Num::Is(65_535), Num::Is(65_536), Num::Is(i32::MIN),
    Num::Is(i32::MAX), Num::Any, Num::Is(80), Num::Is(8080),
];
/// nodePort values: those of the valid Services (30000 + 10 i + j), 0, out of range, anything.
#[rustfmt::skip]
const NODE_PORTS: [Num; 8] = [
    Num::Absent, Num::Absent, Num::Is(30_000), Num::Is(30_001), Num::Is(30_010), Num::Is(0),
    Num::Is(65_536), Num::Any,
];
#[rustfmt::skip]
const SLICE_PORTS: [Num; 8] = [
    Num::Is(8080), Num::Is(8081), Num::Is(8082), Num::Absent, Num::Is(0), Num::Is(-1),
    Num::Is(65_536), Num::Any,
];
/// ClusterIPs, external and ingress IPs: the valid Services' ClusterIPs, external IPs and the
/// node's address (so conflicts happen), IPv6, `None`, and no address at all.
#[rustfmt::skip]
const ADDRESSES: [Addr; 32] = [
    Addr::Is("10.96.0.1"), Addr::Is("10.96.0.2"), Addr::Is("10.96.1.1"), Addr::Is("10.96.1.2"),
    Addr::Is("192.0.2.1"), Addr::Is("198.51.100.1"), Addr::Is(NODE_IP), Addr::Is("10.96.0.1"),
    Addr::Is("10.96.1.1"), Addr::Is("10.96.0.2"), Addr::Is("192.0.2.2"), Addr::Is("10.96.1.3"),
    Addr::Is("10.96.0.1"), Addr::Is("10.96.1.2"), Addr::Is("192.0.2.1"), Addr::Is("10.96.0.3"),
    Addr::Is("None"), Addr::Is(""), Addr::Is("fd00::1"), Addr::Is("::ffff:10.96.0.1"),
    Addr::Is("10.96.0.256"), Addr::Is("010.096.000.001"), Addr::Is(" 10.96.0.1"),
    Addr::Is("0.0.0.0"), Addr::Is("255.255.255.255"), Addr::Is("127.0.0.1"),
    Addr::Is("10.96.0.1/32"), Addr::Is("1.2.3"), Addr::AnyIpv4, Addr::AnyIpv4, Addr::Unicode,
    Addr::Is("٣.٣.٣.٣"),
];
/// Endpoint addresses: pod addresses (colliding), the node's own, every range the API server
/// refuses (unspecified, loopback, link-local, link-local multicast), IPv6, not addresses.
#[rustfmt::skip]
const ENDPOINT_ADDRESSES: [Addr; 16] = [
    Addr::Is("10.244.0.1"), Addr::Is("10.244.0.2"), Addr::Is("10.244.1.1"), Addr::Is(NODE_IP),
    Addr::Is("10.244.0.1"), Addr::Is("10.244.0.3"), Addr::Is("0.0.0.0"), Addr::Is("127.0.0.1"),
    Addr::Is("169.254.169.254"), Addr::Is("224.0.0.251"), Addr::Is("255.255.255.255"),
    Addr::Is("fd00::5"), Addr::Is("10.244.0.01"), Addr::Is("10.244.0.1:80"), Addr::AnyIpv4,
    Addr::Unicode,
];
#[rustfmt::skip]
const SOURCE_RANGES: [Addr; 16] = [
    Addr::Is("203.0.113.0/24"), Addr::Is("0.0.0.0/0"), Addr::Is("172.18.0.0/16"),
    Addr::Is("203.0.113.0/24"), Addr::Is("fd00::/8"), Addr::Is("1.2.3.4/33"), Addr::Is("1.2.3.4"),
    Addr::Is(" 10.0.0.0/8 "), Addr::Is("010.0.0.0/8"), Addr::Is("10.0.0.0/+8"),
    Addr::Is("::/129"), Addr::Is(""), Addr::Is("10.0.0.0/08"), Addr::Is("1.2.3.4/-1"),
    Addr::Is("0.0.0.0/0"), Addr::Unicode,
];

#[rustfmt::skip]
const PROXY_LABELS: [Text; 8] = [
    Absent, Absent, Absent, Absent, Absent, Is("svc-lb"), Is("svc-lb"), Is(""),
];
#[rustfmt::skip]
const TYPES: [Text; 8] = [
    Absent, Is("ClusterIP"), Is("NodePort"), Is("LoadBalancer"), Is("NodePort"),
    Is("LoadBalancer"), Is("ExternalName"), Is("Bogus"),
];
#[rustfmt::skip]
const AFFINITIES: [Text; 8] = [
    Absent, Absent, Is("ClientIP"), Is("None"), Is("Sticky"), Absent, Is("ClientIP"), Absent,
];
#[rustfmt::skip]
const TIMEOUTS: [Num; 8] = [
    Num::Absent, Num::Is(60), Num::Is(0), Num::Is(86_401), Num::Any, Num::Absent, Num::Absent,
    Num::Is(86_400),
];
const POLICIES: [Text; 4] = [Absent, Is("Local"), Is("Cluster"), Is("Both")];
#[rustfmt::skip]
const INGRESS_MODES: [Text; 8] = [
    Absent, Absent, Is("VIP"), Is("Proxy"), Absent, Is("Teleport"), Absent, Is(""),
];

fn put(m: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
    if let Some(v) = value {
        m.insert(key.to_owned(), v.into());
    }
}

/// A list of 0-3 addresses from `pool`, absent one time in `1 << absent_bits`.
fn address_list<const N: usize>(b: &mut Bits, absent_bits: u32, pool: &[Addr; N]) -> Option<Value> {
    if b.take(absent_bits) == 0 {
        return None;
    }
    let bits = N.trailing_zeros();
    let n = b.take(2).min(3);
    Some(
        (0..n)
            .map(|_| b.pick(bits, pool).decode(b))
            .collect::<Vec<_>>()
            .into(),
    )
}

fn service_port(seed: u64) -> Value {
    let b = &mut Bits::new(seed);
    let mut m = Map::new();
    put(&mut m, "name", b.pick(4, &PORT_NAMES).decode(b));
    put(&mut m, "port", b.pick(4, &PORTS).decode(b).or(Some(80)));
    put(&mut m, "protocol", b.pick(3, &PROTOCOLS).decode(b));
    put(&mut m, "nodePort", b.pick(3, &NODE_PORTS).decode(b));
    Value::Object(m)
}

/// An arbitrary Service: `meta` and `spec` seeds decode its metadata and scalar fields, `lists`
/// its address lists; `ports` its ports (up to 49 in target 1, with duplicates).
fn service(meta: u64, spec_seed: u64, lists: u64, ports: &[u64]) -> Manifest {
    let b = &mut Bits::new(meta);
    let name = b.pick(4, &NAMES).decode(b);
    let ns = b.pick(3, &NAMESPACES).decode(b);
    let proxy = b.pick(3, &PROXY_LABELS).decode(b);
    let no_spec = b.take(5) == 31;
    let mut labels = Map::new();
    put(&mut labels, LABEL_SERVICE_PROXY_NAME, proxy);
    let mut m = Map::new();
    m.insert(
        "metadata".into(),
        json!({"name": name, "namespace": ns, "labels": labels}),
    );

    let b = &mut Bits::new(spec_seed);
    let mut spec = Map::new();
    put(&mut spec, "type", b.pick(3, &TYPES).decode(b));
    if b.take(3) != 0 {
        spec.insert("clusterIP".into(), b.pick(5, &ADDRESSES).decode(b).into());
    }
    put(
        &mut spec,
        "sessionAffinity",
        b.pick(3, &AFFINITIES).decode(b),
    );
    put(
        &mut spec,
        "sessionAffinityConfig",
        b.pick(3, &TIMEOUTS)
            .decode(b)
            .map(|t| json!({"clientIP": {"timeoutSeconds": t}})),
    );
    put(
        &mut spec,
        "externalTrafficPolicy",
        b.pick(2, &POLICIES).decode(b),
    );
    put(
        &mut spec,
        "internalTrafficPolicy",
        b.pick(2, &POLICIES).decode(b),
    );
    put(
        &mut spec,
        "healthCheckNodePort",
        b.pick(3, &NODE_PORTS).decode(b),
    );
    if b.take(4) != 0 {
        spec.insert(
            "ports".into(),
            ports
                .iter()
                .map(|&p| service_port(p))
                .collect::<Vec<_>>()
                .into(),
        );
    }

    let b = &mut Bits::new(lists);
    put(
        &mut spec,
        "clusterIPs",
        address_list(b, 2, &ADDRESSES).filter(|_| b.take(1) == 0),
    );
    put(&mut spec, "externalIPs", address_list(b, 1, &ADDRESSES));
    put(
        &mut spec,
        "loadBalancerSourceRanges",
        address_list(b, 2, &SOURCE_RANGES),
    );
    if b.take(2) != 0 {
        let n = b.take(2).min(3);
        let ingress: Vec<Value> = (0..n)
            .map(|_| {
                let mut i = Map::new();
                if b.take(3) != 0 {
                    i.insert("ip".into(), b.pick(5, &ADDRESSES).decode(b).into());
                }
                put(&mut i, "ipMode", b.pick(3, &INGRESS_MODES).decode(b));
                Value::Object(i)
            })
            .collect();
        m.insert(
            "status".into(),
            json!({"loadBalancer": {"ingress": ingress}}),
        );
    }
    if !no_spec {
        m.insert("spec".into(), Value::Object(spec));
    }
    Manifest(Value::Object(m))
}

fn endpoint(seed: u64) -> Value {
    let b = &mut Bits::new(seed);
    let count = [1, 1, 1, 1, 1, 1, 0, 2][b.take(3)];
    let addresses: Vec<String> = (0..count)
        .map(|_| b.pick(4, &ENDPOINT_ADDRESSES).decode(b))
        .collect();
    let mut m = Map::new();
    m.insert("addresses".into(), addresses.into());
    if b.take(1) == 1 {
        let mut cond = || [None, Some(true), Some(false), None][b.take(2)];
        m.insert(
            "conditions".into(),
            json!({"ready": cond(), "serving": cond(), "terminating": cond()}),
        );
    }
    put(
        &mut m,
        "nodeName",
        b.pick(2, &[Absent, Is("node-a"), Is("node-b"), Is("")])
            .decode(b),
    );
    if b.take(2) == 3 {
        let zones = [
            json!([]),
            json!([{"name": "zone-a"}]),
            json!([{"name": "zone-b"}]),
            json!([{"name": ""}]),
        ];
        let nodes = [
            json!([]),
            json!([{"name": "node-a"}]),
            json!([{"name": "node-b"}]),
            json!([{"name": "node-a"}, {"name": "node-b"}]),
        ];
        m.insert(
            "hints".into(),
            json!({"forZones": zones[b.take(2)], "forNodes": nodes[b.take(2)]}),
        );
    }
    Value::Object(m)
}

fn slice_port(seed: u64) -> Value {
    let b = &mut Bits::new(seed);
    let mut m = Map::new();
    put(&mut m, "name", b.pick(4, &PORT_NAMES).decode(b));
    put(&mut m, "port", b.pick(3, &SLICE_PORTS).decode(b));
    put(&mut m, "protocol", b.pick(3, &PROTOCOLS).decode(b));
    Value::Object(m)
}

/// An arbitrary EndpointSlice; its service-name label (if any) is drawn from the same pool as
/// Service names.
fn slice(meta: u64, ports: &[u64], endpoints: &[u64]) -> Manifest {
    let b = &mut Bits::new(meta);
    let name = b.pick(4, &NAMES).decode(b);
    let ns = b.pick(3, &NAMESPACES).decode(b);
    let service = if b.take(4) == 15 {
        None
    } else {
        b.pick(4, &NAMES).decode(b)
    };
    let headless = (b.take(5) == 31).then_some("");
    let family = [
        "IPv4", "IPv4", "IPv4", "IPv4", "IPv4", "IPv6", "FQDN", "ipv4",
    ][b.take(3)];
    let mut labels = Map::new();
    put(&mut labels, LABEL_SERVICE_NAME, service);
    put(&mut labels, LABEL_HEADLESS, headless);
    let mut m = Map::new();
    m.insert(
        "metadata".into(),
        json!({"name": name, "namespace": ns, "labels": labels}),
    );
    m.insert("addressType".into(), family.into());
    if b.take(3) != 7 {
        m.insert(
            "ports".into(),
            ports
                .iter()
                .map(|&p| slice_port(p))
                .collect::<Vec<_>>()
                .into(),
        );
    }
    m.insert(
        "endpoints".into(),
        endpoints
            .iter()
            .map(|&e| endpoint(e))
            .collect::<Vec<_>>()
            .into(),
    );
    Manifest(Value::Object(m))
}

fn seeds(max: usize) -> prop::collection::VecStrategy<prop::num::u64::Any> {
    prop::collection::vec(any::<u64>(), 0..max)
}

/// An arbitrary Service with up to `max_ports - 1` ports.
fn hostile_service(max_ports: usize) -> BoxedStrategy<Manifest> {
    (any::<u64>(), any::<u64>(), any::<u64>(), seeds(max_ports))
        .prop_map(|(meta, spec, lists, ports)| service(meta, spec, lists, &ports))
        .boxed()
}

/// An arbitrary EndpointSlice with up to `max_endpoints - 1` endpoints and 5 ports.
fn hostile_slice(max_endpoints: usize) -> BoxedStrategy<Manifest> {
    (any::<u64>(), seeds(6), seeds(max_endpoints))
        .prop_map(|(meta, ports, endpoints)| slice(meta, &ports, &endpoints))
        .boxed()
}

/// Sets a slice's namespace and service-name label, so it belongs to `owner`.
fn label_for(slice: &mut Manifest, owner: &ObjectRef) {
    let meta = &mut slice.0["metadata"];
    meta["namespace"] = owner.namespace.clone().into();
    meta["labels"][LABEL_SERVICE_NAME] = owner.name.clone().into();
}

/// The node: plain; with a zone and localhost NodePorts; with `--external-ip-cidrs`; or with a
/// `--service-proxy-name`.
fn node_context() -> BoxedStrategy<NodeContext> {
    (0..4u8)
        .prop_map(|n| {
            let mut node = base_node();
            match n {
                1 => {
                    node.zone = Some("zone-a".into());
                    node.nodeport_addresses = vec![
                        "127.0.0.0/8".parse().expect("cidr"),
                        "172.18.0.0/16".parse().expect("cidr"),
                    ];
                }
                2 => node.external_ip_cidrs = Some(vec!["192.0.2.0/24".parse().expect("cidr")]),
                3 => node.service_proxy_name = Some("svc-lb".into()),
                _ => {}
            }
            node
        })
        .boxed()
}

fn base_node() -> NodeContext {
    NodeContext {
        node_name: "node-a".into(),
        node_ips: vec![NODE_IP.parse().expect("node IP")],
        ..Default::default()
    }
}

/// Valid Services `default/m0`…: distinct ClusterIPs 10.96.1.(i+1), distinct ports with
/// distinct names `p<j>` and nodePorts 30000 + 10 i + j, external IP 192.0.2.(i+1), ingress
/// 198.51.100.(i+1); one slice `m<i>-0` of ready, unhinted endpoints 10.244.(100+i).(k+1).
/// `desired()` finds no problem in them (checked).
fn valid_services(max: usize) -> BoxedStrategy<Vec<(Manifest, Manifest)>> {
    let one = (
        0..3usize,
        prop::collection::vec((0..4usize, any::<bool>()), 1..5),
        any::<bool>(),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        prop::collection::vec(any::<bool>(), 0..5),
    );
    prop::collection::vec(one, 1..=max)
        .prop_map(|all| {
            all.into_iter()
                .enumerate()
                .map(|(i, (ty, ports, ext, (etp, itp, affinity, ranges), eps))| {
                    valid_service(i, ty, ports, ext, etp, itp, affinity, ranges, &eps)
                })
                .collect()
        })
        .boxed()
}

#[allow(clippy::too_many_arguments)]
fn valid_service(
    i: usize,
    ty: usize,
    ports: Vec<(usize, bool)>,
    ext: bool,
    etp: bool,
    itp: bool,
    affinity: bool,
    ranges: bool,
    endpoints: &[bool],
) -> (Manifest, Manifest) {
    let ty = ["ClusterIP", "NodePort", "LoadBalancer"][ty];
    let mut seen = BTreeSet::new();
    let ports: Vec<(usize, u16, &str)> = ports
        .into_iter()
        .filter(|p| seen.insert(*p))
        .enumerate()
        .map(|(j, (p, udp))| (j, [80, 443, 53, 8080][p], if udp { "UDP" } else { "TCP" }))
        .collect();
    let svc_ports: Vec<Value> = ports
        .iter()
        .map(|&(j, port, proto)| {
            let mut m = json!({"name": format!("p{j}"), "port": port, "protocol": proto});
            if ty != "ClusterIP" {
                m["nodePort"] = (30_000 + 10 * i + j).into();
            }
            m
        })
        .collect();
    let mut spec = json!({
        "type": ty,
        "clusterIP": format!("10.96.1.{}", i + 1),
        "clusterIPs": [format!("10.96.1.{}", i + 1)],
        "ports": svc_ports,
        "externalTrafficPolicy": if etp { "Local" } else { "Cluster" },
        "internalTrafficPolicy": if itp { "Local" } else { "Cluster" },
    });
    if ext {
        spec["externalIPs"] = json!([format!("192.0.2.{}", i + 1)]);
    }
    if affinity {
        spec["sessionAffinity"] = "ClientIP".into();
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 60}});
    }
    if ranges {
        spec["loadBalancerSourceRanges"] = json!(["203.0.113.0/24"]);
    }
    let mut svc = json!({
        "metadata": {"namespace": "default", "name": format!("m{i}")},
        "spec": spec,
    });
    if ty == "LoadBalancer" {
        svc["status"] =
            json!({"loadBalancer": {"ingress": [{"ip": format!("198.51.100.{}", i + 1)}]}});
    }
    let slice_ports: Vec<Value> = ports
        .iter()
        .map(|&(j, _, proto)| json!({"name": format!("p{j}"), "port": 8080 + j, "protocol": proto}))
        .collect();
    let eps: Vec<Value> = endpoints
        .iter()
        .enumerate()
        .map(|(k, local)| {
            json!({
                "addresses": [format!("10.244.{}.{}", 100 + i, k + 1)],
                "conditions": {"ready": true},
                "nodeName": if *local { "node-a" } else { "node-b" },
            })
        })
        .collect();
    let slice = json!({
        "metadata": {"namespace": "default", "name": format!("m{i}-0"),
                     "labels": {LABEL_SERVICE_NAME: format!("m{i}")}},
        "addressType": "IPv4",
        "ports": slice_ports,
        "endpoints": eps,
    });
    (Manifest(svc), Manifest(slice))
}

// ---------------------------------------------------------------------------------------------
// Checks.

/// Whether the API server would refuse `addr` as an endpoint (what no backend may be).
fn refused(addr: [u8; 4]) -> bool {
    let ip = Ipv4Addr::from(addr);
    ip.is_unspecified() || ip.is_loopback() || ip.is_link_local() || addr[..3] == [224, 0, 0]
}

fn len_of(v: Option<&Value>) -> usize {
    v.and_then(Value::as_array).map_or(0, Vec::len)
}

/// What `desired()` may produce at most for `objects` on `node`: (frontends, problems).
/// Frontends: two (both scopes) per port and address; problems: a few per field given.
fn bounds(services: &[Manifest], slices: &[Manifest], node: &NodeContext) -> (usize, usize) {
    let (mut frontends, mut problems) = (0, 0);
    let node_ports = node.nodeport_ips().len();
    for s in services {
        let spec = &s.0["spec"];
        let ingress = len_of(s.0.pointer("/status/loadBalancer/ingress"));
        let addrs = 1
            + len_of(spec.get("clusterIPs"))
            + node_ports
            + len_of(spec.get("externalIPs"))
            + ingress;
        let ports = len_of(spec.get("ports"));
        frontends += 2 * ports * addrs;
        problems += 8 + ports * (5 + addrs) + addrs + len_of(spec.get("loadBalancerSourceRanges"));
    }
    for s in slices {
        problems += len_of(s.0.get("ports")) + len_of(s.0.get("endpoints"));
    }
    (frontends, problems)
}

/// Everything target 1 asserts about one `desired()` result.
fn check_desired(objects: &Objects, d: &Desired) -> Result<(), TestCaseError> {
    let services: BTreeSet<String> = objects
        .services
        .keys()
        .map(|r| format!("Service {r}"))
        .collect();
    let slices: BTreeSet<String> = objects
        .slices
        .keys()
        .map(|r| format!("EndpointSlice {r}"))
        .collect();
    for p in &d.problems {
        prop_assert!(!p.field.is_empty(), "problem without a field: {p:?}");
        prop_assert!(!p.message.is_empty(), "problem without a message: {p:?}");
        if services.contains(&p.object) {
            prop_assert!(
                p.field.starts_with("spec") || p.field.starts_with("status"),
                "Service field {:?} is no field of a Service: {p:?}",
                p.field
            );
        } else if slices.contains(&p.object) {
            prop_assert!(
                p.field.starts_with("ports[") || p.field.starts_with("endpoints["),
                "EndpointSlice field {:?} is no field of a slice: {p:?}",
                p.field
            );
        } else {
            prop_assert!(false, "problem names no object given: {p:?}");
        }
    }
    for (key, fe) in &d.frontends {
        prop_assert!(
            objects.services.contains_key(&fe.service),
            "{key:?}: {fe:?}"
        );
        prop_assert!(
            key.port != 0 && [PROTO_TCP, PROTO_UDP].contains(&key.proto),
            "{key:?}"
        );
        prop_assert!(
            key.scope == SCOPE_ANY || key.scope == SCOPE_EXTERNAL,
            "{key:?}"
        );
        prop_assert!(
            fe.backends.windows(2).all(|w| w[0] < w[1]),
            "{key:?}: backends not sorted and distinct: {:?}",
            fe.backends
        );
        prop_assert!(fe.backends.len() <= MAX_BACKENDS_PER_FRONTEND as usize);
        for b in &fe.backends {
            prop_assert!(!refused(b.addr), "{key:?}: refused address {b:?}");
            prop_assert!(b.port != 0 && b.proto == key.proto, "{key:?}: {b:?}");
            prop_assert!(
                b.flags & !(BACKEND_F_LOCAL | BACKEND_F_TERMINATING) == 0,
                "{b:?}"
            );
        }
        prop_assert_eq!(
            fe.flags & FRONTEND_F_SOURCE_RANGES != 0,
            !fe.source_ranges.is_empty(),
            "{:?}: {:?}",
            key,
            fe
        );
        prop_assert!(fe.source_ranges.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(fe.affinity_timeout_s <= MAX_AFFINITY_TIMEOUT_S);
        let any = FrontendKey {
            scope: SCOPE_ANY,
            ..*key
        };
        let scoped = FrontendKey {
            scope: SCOPE_EXTERNAL,
            ..*key
        };
        if key.scope == SCOPE_ANY && fe.flags & FRONTEND_F_EXTERNAL_SCOPE != 0 {
            let sibling = d.frontends.get(&scoped);
            prop_assert!(
                sibling.is_some_and(|s| s.service == fe.service),
                "{key:?} says it has a scoped entry: {sibling:?}"
            );
        }
        if key.scope == SCOPE_EXTERNAL {
            let sibling = d.frontends.get(&any);
            prop_assert!(
                sibling.is_some_and(
                    |s| s.service == fe.service && s.flags & FRONTEND_F_EXTERNAL_SCOPE != 0
                ),
                "{key:?} is a scoped entry without its SCOPE_ANY one: {sibling:?}"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Target 1.

#[derive(Clone, Debug)]
struct Hostile {
    services: Vec<Manifest>,
    slices: Vec<Manifest>,
}

fn hostile_objects(max_ports: usize, max_endpoints: usize) -> BoxedStrategy<Hostile> {
    (
        prop::collection::vec(hostile_service(max_ports), 0..5),
        prop::collection::vec(hostile_slice(max_endpoints), 0..6),
    )
        .prop_map(|(services, slices)| Hostile { services, slices })
        .boxed()
}

#[test]
fn desired_never_panics_and_names_every_problem() {
    let worst = Cell::new((Duration::ZERO, 0usize, 0f64));
    // Coverage: how often each kind of problem (field without indices) came up.
    let fields = RefCell::new(BTreeMap::<String, usize>::new());
    let served = Cell::new(0usize);
    run(
        "desired_never_panics_and_names_every_problem",
        (hostile_objects(50, 20), node_context()),
        |(h, node)| {
            let objects = objects(&h.services, &h.slices)?;
            let (d, took, peak) = measured(|| desired(&objects, &node));
            check_desired(&objects, &d)?;
            served.set(served.get() + usize::from(!d.frontends.is_empty()));
            for p in &d.problems {
                let kind: String = p
                    .field
                    .split('[')
                    .map(|s| s.split_once(']').map_or(s, |(_, r)| r))
                    .collect::<Vec<_>>()
                    .join("[]");
                *fields.borrow_mut().entry(kind).or_default() += 1;
            }

            // Bounded: entries by the input; memory by input and output; time, generously.
            let (max_frontends, max_problems) = bounds(&h.services, &h.slices, &node);
            prop_assert!(
                d.frontends.len() <= max_frontends,
                "{} frontends",
                d.frontends.len()
            );
            prop_assert!(
                d.problems.len() <= max_problems,
                "{} problems",
                d.problems.len()
            );
            let input: usize = h
                .services
                .iter()
                .chain(&h.slices)
                .map(|m| m.0.to_string().len())
                .sum();
            let output: usize = d
                .frontends
                .values()
                .map(|f| 1 + f.backends.len())
                .sum::<usize>()
                + d.problems.len();
            let allowed = 64 * 1024 + 32 * input + 1024 * output;
            prop_assert!(
                peak <= allowed,
                "{peak} bytes allocated at once; {allowed} allowed"
            );
            prop_assert!(
                took < Duration::from_secs(1),
                "desired() took {took:?} of CPU"
            );
            let (t, p, r) = worst.get();
            worst.set((
                t.max(took),
                p.max(peak),
                r.max(peak as f64 / allowed as f64),
            ));

            // One backend per address:port of a frontend (kube-proxy keeps one endpoint per
            // address:port; see one_endpoint_address_on_two_nodes_is_one_backend).
            for (key, f) in &d.frontends {
                let at: BTreeSet<([u8; 4], u16)> =
                    f.backends.iter().map(|b| (b.addr, b.port)).collect();
                prop_assert_eq!(at.len(), f.backends.len(), "{:?}: {:?}", key, f.backends);
            }

            // Deterministic, and the incremental paths see the same objects the same way.
            prop_assert_eq!(&desired(&objects, &node), &d);
            let all: BTreeSet<ObjectRef> = objects.services.keys().cloned().collect();
            prop_assert_eq!(&desired_for(&objects, &node, &all), &d);
            let owners = SliceOwners::build(&objects.slices);
            prop_assert_eq!(&desired_for_indexed(&objects, &node, &all, &owners), &d);
            for hc in health_checks(&objects, &node) {
                prop_assert!(objects.services.contains_key(&hc.service) && hc.port != 0);
            }
            Ok(())
        },
    );
    let (t, p, r) = worst.get();
    eprintln!(
        "  slowest desired(): {t:.1?} of CPU; most allocated at once: {p} bytes ({:.0}% of the \
         bound)",
        r * 100.0
    );
    eprintln!(
        "  cases serving something: {}; problems by field: {:?}",
        served.get(),
        fields.borrow()
    );
}

// ---------------------------------------------------------------------------------------------
// Target 2.

/// Points `hostile` at one address:port of `victim` (a valid Service's manifest), the way
/// `how` says: its ClusterIP, an external IP, a LoadBalancer ingress IP (both the CVE-2020-8554
/// shape), or its NodePort. Most random objects would never meet the valid ones otherwise.
fn aim_at(hostile: &mut Manifest, victim: &Manifest, how: usize) {
    let vspec = &victim.0["spec"];
    let vip = vspec["clusterIP"].clone();
    let mut port = vspec["ports"][0].clone();
    let Some(spec) = hostile.0.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    match how {
        0 => {
            spec.insert("clusterIP".into(), vip);
            spec.remove("clusterIPs");
        }
        1 => drop(spec.insert("externalIPs".into(), json!([vip]))),
        2 => {
            spec.insert("type".into(), "LoadBalancer".into());
            hostile.0["status"] = json!({"loadBalancer": {"ingress": [{"ip": vip}]}});
        }
        _ => {
            spec.insert("type".into(), "NodePort".into());
            port["port"] = 9999.into();
        }
    }
    let Some(spec) = hostile.0.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    match spec.get_mut("ports").and_then(Value::as_array_mut) {
        Some(ports) => ports.push(port),
        None => drop(spec.insert("ports".into(), json!([port]))),
    }
}

#[test]
fn refusals_are_local() {
    let strategy = (
        valid_services(4),
        hostile_service(12),
        prop::option::of((any::<Index>(), 0..4usize)),
        prop::collection::vec((any::<bool>(), hostile_slice(8)), 0..3),
    );
    // Coverage: cases where the hostile Service took keys, and where it lost a conflict.
    let (took_keys, lost) = (Cell::new(0usize), Cell::new(0usize));
    run(
        "refusals_are_local",
        strategy,
        |(valid, mut hostile, aim, hostile_slices)| {
            if let Some((victim, how)) = aim {
                aim_at(&mut hostile, &victim.get(&valid).0, how);
            }
            let node = base_node();
            let (svcs, slices): (Vec<Manifest>, Vec<Manifest>) = valid.into_iter().unzip();
            let base_objects = objects(&svcs, &slices)?;
            let base = desired(&base_objects, &node);
            prop_assert!(
                base.problems.is_empty(),
                "valid Services have problems: {:?}",
                base.problems
            );
            prop_assert!(!base.frontends.is_empty());

            let (h_ref, _) = to_service(&hostile)?;
            prop_assume!(!base_objects.services.contains_key(&h_ref));
            let mut all_svcs = svcs.clone();
            all_svcs.push(hostile);
            let mut all_slices = slices.clone();
            for (own, mut s) in hostile_slices {
                if own {
                    label_for(&mut s, &h_ref);
                }
                all_slices.push(s);
            }
            let with_objects = objects(&all_svcs, &all_slices)?;
            // Slices that replace a valid one or join a valid Service are the next test's business.
            for (r, s) in &with_objects.slices {
                let owner = s
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_SERVICE_NAME))
                    .map(|n| ObjectRef::new(r.namespace.clone(), n.clone()));
                prop_assume!(base_objects.slices.get(r).is_none_or(|b| b == s));
                prop_assume!(
                    base_objects.slices.contains_key(r)
                        || !owner.is_some_and(|o| base_objects.services.contains_key(&o))
                );
            }
            let with = desired(&with_objects, &node);

            // Every frontend of a valid Service is unchanged, unless the hostile one took its key
            // (the SCOPE_ANY one: the scoped sibling goes with it) by sorting first.
            let mut taken = BTreeMap::<ObjectRef, usize>::new();
            for (key, fe) in &base.frontends {
                if with.frontends.get(key) == Some(fe) {
                    continue;
                }
                let any = FrontendKey {
                    scope: SCOPE_ANY,
                    ..*key
                };
                let owner = with.frontends.get(&any).map(|f| &f.service);
                prop_assert!(
                    owner == Some(&h_ref) && h_ref < fe.service,
                    "{key:?} of {} changed by adding {h_ref}: {:?} -> {:?}",
                    fe.service,
                    fe,
                    with.frontends.get(key)
                );
                if key.scope == SCOPE_ANY {
                    *taken.entry(fe.service.clone()).or_default() += 1;
                }
            }
            // Valid Services gain nothing either.
            for (key, fe) in &with.frontends {
                if fe.service != h_ref {
                    prop_assert_eq!(base.frontends.get(key), Some(fe), "{:?} appeared", key);
                }
            }
            // Each key taken is reported on the valid Service, at a field; nothing else is.
            let mut told = BTreeMap::<ObjectRef, usize>::new();
            for p in &with.problems {
                let Some(victim) = base_objects
                    .services
                    .keys()
                    .find(|r| p.object == format!("Service {r}"))
                else {
                    prop_assert!(
                        p.object == format!("Service {h_ref}")
                            || p.object.starts_with("EndpointSlice "),
                        "problem on an object not added: {p:?}"
                    );
                    continue;
                };
                prop_assert!(
                    !p.field.is_empty()
                        && p.message
                            .contains(&format!("already served for Service {h_ref}")),
                    "valid Service {victim} refused for another reason: {p:?}"
                );
                *told.entry(victim.clone()).or_default() += 1;
            }
            took_keys.set(took_keys.get() + usize::from(!taken.is_empty()));
            prop_assert_eq!(taken, told);
            let h_object = format!("Service {h_ref}");
            lost.set(
                lost.get()
                    + usize::from(with.problems.iter().any(|p| {
                        p.object == h_object
                            && p.message.contains("already served for Service default/m")
                    })),
            );
            check_desired(&with_objects, &with)?;
            Ok(())
        },
    );
    eprintln!(
        "  cases where the hostile Service took keys first: {}; lost a conflict: {}",
        took_keys.get(),
        lost.get()
    );
}

#[test]
fn hostile_slices_only_add_endpoints() {
    let strategy = (
        valid_services(4),
        prop::collection::vec((any::<Index>(), hostile_slice(12)), 1..4),
    );
    run(
        "hostile_slices_only_add_endpoints",
        strategy,
        |(valid, extra)| {
            let node = base_node();
            let (svcs, slices): (Vec<Manifest>, Vec<Manifest>) = valid.into_iter().unzip();
            let base_objects = objects(&svcs, &slices)?;
            let base = desired(&base_objects, &node);
            prop_assert!(base.problems.is_empty(), "{:?}", base.problems);
            let refs: Vec<ObjectRef> = base_objects.services.keys().cloned().collect();
            let mut all_slices = slices.clone();
            for (n, (i, mut s)) in extra.into_iter().enumerate() {
                label_for(&mut s, i.get(&refs));
                // A distinct name: one that replaced a slice would not be *adding* endpoints.
                let name = format!(
                    "{}-extra{n}",
                    s.0["metadata"]["name"].as_str().unwrap_or("")
                );
                s.0["metadata"]["name"] = name.into();
                all_slices.push(s);
            }
            let with_objects = objects(&svcs, &all_slices)?;
            prop_assert_eq!(with_objects.slices.len(), all_slices.len());
            let with = desired(&with_objects, &node);
            check_desired(&with_objects, &with)?;
            prop_assert_eq!(
                base.frontends.keys().collect::<Vec<_>>(),
                with.frontends.keys().collect::<Vec<_>>()
            );
            for (key, before) in &base.frontends {
                let after = &with.frontends[key];
                let tuple = |b: &svc_common::Backend| (b.addr, b.port, b.proto);
                let had: BTreeSet<_> = before.backends.iter().map(tuple).collect();
                let has: BTreeSet<_> = after.backends.iter().map(tuple).collect();
                prop_assert!(
                    had.is_subset(&has),
                    "{key:?} lost backends: {before:?} -> {after:?}"
                );
                prop_assert_eq!(&before.service, &after.service);
                prop_assert_eq!(&before.source_ranges, &after.source_ranges);
                prop_assert_eq!(before.affinity_timeout_s, after.affinity_timeout_s);
            }
            // The slices' problems are theirs.
            for p in &with.problems {
                prop_assert!(p.object.starts_with("EndpointSlice "), "{p:?}");
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Target 3.

#[derive(Clone, Debug)]
enum Step {
    /// A hostile Service, with slices labelled for it.
    AddService(Manifest, Vec<Manifest>),
    RemoveService(Index),
    /// A hostile slice labelled for one of the Services there are (or as generated).
    PutSlice(Option<Index>, Manifest),
    RemoveSlice(Index),
}

fn step() -> BoxedStrategy<Step> {
    prop_oneof![
        3 => (hostile_service(6), prop::collection::vec(hostile_slice(6), 0..2))
            .prop_map(|(s, slices)| Step::AddService(s, slices)),
        1 => any::<Index>().prop_map(Step::RemoveService),
        2 => (prop::option::weighted(0.8, any::<Index>()), hostile_slice(6))
            .prop_map(|(i, s)| Step::PutSlice(i, s)),
        1 => any::<Index>().prop_map(Step::RemoveSlice),
    ]
    .boxed()
}

/// The Service a slice belongs to (its label, in its namespace).
fn owner(slice_ref: &ObjectRef, slice: &EndpointSlice) -> Option<ObjectRef> {
    let name = slice.metadata.labels.as_ref()?.get(LABEL_SERVICE_NAME)?;
    Some(ObjectRef::new(slice_ref.namespace.clone(), name.clone()))
}

fn keys<V>(m: &BTreeMap<ObjectRef, V>) -> Vec<ObjectRef> {
    m.keys().cloned().collect()
}

/// Applies `step` to `o`; returns the Services whose own frontends may have changed: those
/// put or removed, and the owners (before and after) of slices put or removed.
fn apply_step(o: &mut Objects, step: &Step) -> Result<BTreeSet<ObjectRef>, TestCaseError> {
    let mut touched = BTreeSet::new();
    let mut put_slice = |o: &mut Objects, r: ObjectRef, s: EndpointSlice| {
        touched.extend(owner(&r, &s));
        if let Some(old) = o.slices.insert(r.clone(), s) {
            touched.extend(owner(&r, &old));
        }
    };
    match step {
        Step::AddService(svc, slices) => {
            let (r, s) = to_service(svc)?;
            for slice in slices {
                let mut slice = slice.clone();
                label_for(&mut slice, &r);
                let (sr, sl) = to_slice(&slice)?;
                put_slice(o, sr, sl);
            }
            o.services.insert(r.clone(), s);
            touched.insert(r);
        }
        Step::RemoveService(i) => {
            if !o.services.is_empty() {
                let r = i.get(&keys(&o.services)).clone();
                o.services.remove(&r);
                touched.insert(r);
            }
        }
        Step::PutSlice(i, slice) => {
            let mut slice = slice.clone();
            if let Some(i) = i.filter(|_| !o.services.is_empty()) {
                label_for(&mut slice, i.get(&keys(&o.services)));
            }
            let (r, s) = to_slice(&slice)?;
            put_slice(o, r, s);
        }
        Step::RemoveSlice(i) => {
            if !o.slices.is_empty() {
                let r = i.get(&keys(&o.slices)).clone();
                let old = o.slices.remove(&r).expect("listed");
                touched.extend(owner(&r, &old));
            }
        }
    }
    Ok(touched)
}

/// Applies `ops` to the fake, which checks the update-order invariant after every one.
fn apply_ops(fake: &mut FakeDataplane, ops: &[MapOp]) -> Result<(), TestCaseError> {
    for op in ops {
        if let Err(e) = fake.apply(op) {
            return Err(TestCaseError::fail(format!("{e}\nplan: {ops:#?}")));
        }
    }
    Ok(())
}

/// [`apply_ops`], then the fake must hold what the plan says it leads to.
fn apply(fake: &mut FakeDataplane, p: &Plan) -> Result<(), TestCaseError> {
    apply_ops(fake, &p.ops)?;
    prop_assert_eq!(&fake.snapshot, &p.next.to_snapshot());
    fake.check_all().map_err(TestCaseError::fail)?;
    Ok(())
}

/// Whether `ops` write any frontend of `keys` (its entry or its slots), given their ids.
fn writes_to(ops: &[MapOp], keys: &BTreeSet<FrontendKey>, ids: &BTreeSet<u32>) -> bool {
    ops.iter().any(|op| match op {
        MapOp::PutFrontend { key, .. } | MapOp::DeleteFrontend { key } => keys.contains(key),
        MapOp::PutSlot { key, .. } | MapOp::DeleteSlot { key } => ids.contains(&key.frontend_id),
        _ => false,
    })
}

#[test]
fn hostile_sequences_keep_the_invariant_and_converge() {
    let strategy = (valid_services(3), prop::collection::vec(step(), 1..4));
    // Coverage, and a measure of what the incremental plan alone does: steps where it rewrote a
    // frontend of an untouched Service for a touched one, which the full plan then gave back.
    let (steps_run, hijacked) = (Cell::new(0usize), Cell::new(0usize));
    run(
        "hostile_sequences_keep_the_invariant_and_converge",
        strategy,
        |(valid, steps)| {
            let node = base_node();
            let (svcs, slices): (Vec<Manifest>, Vec<Manifest>) = valid.into_iter().unzip();
            let mut objects = objects(&svcs, &slices)?;
            let mut fake = FakeDataplane::default();
            let mut last = desired(&objects, &node);
            let first = plan(&Programmed::default(), &last);
            apply(&mut fake, &first)?;
            let mut state = first.next;
            for (n, step) in steps.iter().enumerate() {
                let changed = apply_step(&mut objects, step)?;
                steps_run.set(steps_run.get() + 1);

                // The incremental path, as the agent runs it for a batch of changes…
                let partial = desired_for(&objects, &node, &changed);
                let (incremental_ops, _) = plan_services_in_place(&mut state, &partial, &changed);
                apply_ops(&mut fake, &incremental_ops)?;
                // …then the full plan that settles what it cannot see.
                let d = desired(&objects, &node);
                let (ops, _) = plan_in_place(&mut state, &d);
                apply_ops(&mut fake, &ops)?;

                // Converged: nothing left to write, from the state or (last step, for time) from
                // the maps re-read; and the maps hold what the state says.
                let again = plan(&state, &d);
                prop_assert!(again.ops.is_empty(), "second plan writes {:?}", again.ops);
                prop_assert!(fake.snapshot.frontends.keys().eq(d.frontends.keys()));
                if n + 1 == steps.len() {
                    prop_assert_eq!(&fake.snapshot, &state.to_snapshot());
                    fake.check_all().map_err(TestCaseError::fail)?;
                    check_desired(&objects, &d)?;
                    let adopted = plan(&Programmed::from_snapshot(&fake.snapshot), &d);
                    prop_assert!(adopted.ops.is_empty(), "adopting writes {:?}", adopted.ops);
                }

                // Nothing already programmed for an untouched Service was lost, unless a touched
                // Service sorting before it now claims the key.
                let mut kept = BTreeSet::new();
                for (key, fe) in &last.frontends {
                    if changed.contains(&fe.service) {
                        continue;
                    }
                    if d.frontends.get(key) == Some(fe) {
                        kept.insert(*key);
                        continue;
                    }
                    let any = FrontendKey {
                        scope: SCOPE_ANY,
                        ..*key
                    };
                    let owner = d.frontends.get(&any).map(|f| &f.service);
                    prop_assert!(
                        owner.is_some_and(|o| changed.contains(o) && *o < fe.service),
                        "{key:?} of untouched {} lost after {step:?}: now {:?}",
                        fe.service,
                        d.frontends.get(key)
                    );
                }
                let ids: BTreeSet<u32> = kept
                    .iter()
                    .filter_map(|k| state.frontends().get(k))
                    .map(|f| f.id)
                    .collect();
                hijacked
                    .set(hijacked.get() + usize::from(writes_to(&incremental_ops, &kept, &ids)));
                last = d;
            }
            Ok(())
        },
    );
    eprintln!(
        "  steps: {}; steps whose incremental plan wrote to a frontend an untouched Service \
         keeps (given back by the full plan): {}",
        steps_run.get(),
        hijacked.get()
    );
    assert_eq!(
        hijacked.get(),
        0,
        "the incremental plan must leave frontends of Services outside its scope alone"
    );
}

// ---------------------------------------------------------------------------------------------
// The one-off size case.

/// One Service with 3 000 ports (NodePort, `externalTrafficPolicy: Local`), one slice of 10 000
/// ready endpoints and 100 ports: `desired()` completes, in bounded time and memory, without a
/// problem. Prints both.
#[test]
fn one_slice_of_10k_endpoints_in_a_service_of_3000_ports() {
    let ports: Vec<Value> = (0..3_000)
        .map(|j| json!({"name": format!("p{j}"), "port": 1 + j, "nodePort": 30_000 + j}))
        .collect();
    let svc = json!({
        "metadata": {"namespace": "default", "name": "big"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": ports,
                 "externalTrafficPolicy": "Local"},
    });
    let slice_ports: Vec<Value> = (0..100)
        .map(|j| json!({"name": format!("p{j}"), "port": 8_000 + j}))
        .collect();
    let eps: Vec<Value> = (0..10_000u32)
        .map(|k| {
            let [_, _, c, d] = k.to_be_bytes();
            json!({"addresses": [format!("10.1.{c}.{d}")],
                   "nodeName": if k % 10 == 0 { "node-a" } else { "node-b" }})
        })
        .collect();
    let slice = json!({
        "metadata": {"namespace": "default", "name": "big-0",
                     "labels": {LABEL_SERVICE_NAME: "big"}},
        "addressType": "IPv4",
        "ports": slice_ports,
        "endpoints": eps,
    });
    let objects = objects(&[Manifest(svc)], &[Manifest(slice)]).expect("objects");
    let node = base_node();
    let (d, took, peak) = measured(|| desired(&objects, &node));
    eprintln!(
        "desired() of 3000 ports x 10000 endpoints: {took:.2?} of CPU, {} frontends, {} MiB \
         allocated at once",
        d.frontends.len(),
        peak >> 20
    );
    assert!(
        d.problems.is_empty(),
        "{:?}",
        &d.problems[..d.problems.len().min(5)]
    );
    // Per port: the ClusterIP, and the NodePort on the node's address in both scopes.
    assert_eq!(d.frontends.len(), 3 * 3_000);
    let full = d
        .frontends
        .values()
        .filter(|f| f.backends.len() == 10_000)
        .count();
    let local = d
        .frontends
        .values()
        .filter(|f| f.backends.len() == 1_000)
        .count();
    assert_eq!((full, local), (200, 100));
    // Linear: ~300 frontends of 10 000 backends (12 bytes each) is ~36 MB; allow 8x.
    assert!(peak < 300 << 20, "{peak} bytes");
    assert!(took < Duration::from_secs(60), "{took:?} of CPU");
}

/// Found by [`hostile_sequences_keep_the_invariant_and_converge`], reduced to ordinary objects:
/// `externalTrafficPolicy: Local` → `Cluster` while this node's only endpoint is terminating
/// (so the `SCOPE_EXTERNAL` entry names a backend the `SCOPE_ANY` one does not). The scoped
/// entry is removed after its sibling is rewritten, but its backend must not go before it.
#[test]
fn etp_local_to_cluster_with_a_terminating_local_endpoint() {
    let svc = |etp: &str| {
        Manifest(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "externalIPs": ["192.0.2.10"],
                     "ports": [{"port": 80}], "externalTrafficPolicy": etp},
        }))
    };
    let slice = Manifest(json!({
        "metadata": {"namespace": "default", "name": "web-0",
                     "labels": {LABEL_SERVICE_NAME: "web"}},
        "addressType": "IPv4",
        "ports": [{"port": 8080}],
        "endpoints": [
            {"addresses": ["10.244.0.5"], "nodeName": "node-a",
             "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.244.1.5"], "nodeName": "node-b"},
        ],
    }));
    let node = base_node();
    let mut fake = FakeDataplane::default();
    let mut state = Programmed::default();
    for etp in ["Local", "Cluster"] {
        let objects = objects(&[svc(etp)], std::slice::from_ref(&slice)).expect("objects");
        let p = plan(&state, &desired(&objects, &node));
        apply(&mut fake, &p).unwrap_or_else(|e| panic!("externalTrafficPolicy {etp}: {e}"));
        state = p.next;
    }
}

/// Found by [`hostile_sequences_keep_the_invariant_and_converge`] (its "incremental plan wrote
/// to a frontend an untouched Service keeps" count): the incremental path (`desired_for` +
/// `plan_services`, what the agent runs for every batch of changes) does not see Services
/// outside the batch, so a new Service whose external IP is another Service's ClusterIP takes
/// that ClusterIP:port over (CVE-2020-8554's shape) although `desired()` gives it to the
/// Service that had it (the smaller name) and refuses the newcomer. The full plan gives it back;
/// the agent runs one every 60 s, so the takeover lasted up to that, and again after every
/// change to the newcomer. Fixed: the incremental plan leaves frontends of Services outside
/// its scope alone (and the engine widens the scope to their holders).
#[test]
fn incremental_plan_leaves_a_frontend_another_service_owns() {
    let svc = |name: &str, spec: Value| {
        Manifest(json!({"metadata": {"namespace": "default", "name": name}, "spec": spec}))
    };
    let slice = |name: &str, ip: &str| {
        Manifest(json!({
            "metadata": {"namespace": "default", "name": format!("{name}-0"),
                         "labels": {LABEL_SERVICE_NAME: name}},
            "addressType": "IPv4",
            "ports": [{"port": 8080}],
            "endpoints": [{"addresses": [ip]}],
        }))
    };
    let aaa = svc(
        "aaa",
        json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
    );
    let zzz = svc(
        "zzz",
        json!({"clusterIP": "10.96.0.20", "externalIPs": ["10.96.0.10"], "ports": [{"port": 80}]}),
    );
    let node = base_node();
    let before =
        objects(std::slice::from_ref(&aaa), &[slice("aaa", "10.244.0.1")]).expect("objects");
    let p = plan(&Programmed::default(), &desired(&before, &node));
    let mut fake = FakeDataplane::default();
    apply(&mut fake, &p).expect("first plan");
    let mut state = p.next;

    let after = objects(
        &[aaa, zzz],
        &[slice("aaa", "10.244.0.1"), slice("zzz", "10.244.9.9")],
    )
    .expect("objects");
    let full = desired(&after, &node);
    let key = FrontendKey {
        addr: [10, 96, 0, 10],
        port: 80,
        proto: PROTO_TCP,
        scope: SCOPE_ANY,
    };
    assert_eq!(
        full.frontends[&key].service,
        ObjectRef::new("default", "aaa")
    );
    let scope: BTreeSet<_> = [ObjectRef::new("default", "zzz")].into();
    let (ops, _) = plan_services_in_place(&mut state, &desired_for(&after, &node, &scope), &scope);
    apply_ops(&mut fake, &ops).expect("incremental plan");
    assert_eq!(
        state.frontends()[&key].owner,
        Some(ObjectRef::new("default", "aaa")),
        "10.96.0.10:80 was taken over by the incremental plan: {ops:?}"
    );
}

/// Found by [`desired_never_panics_and_names_every_problem`] (which now checks that no
/// address:port is a backend twice): the same endpoint address twice,
/// once on this node and once not (two slices, or one hand-written slice), becomes two backends
/// `10.244.0.2:8080` and `10.244.0.2:8080 LOCAL` of one frontend, so that pod gets twice the
/// share of new flows. kube-proxy keeps one endpoint per address:port, the local one if any
/// (pkg/proxy/endpointslicecache.go `addEndpoints` deduplicates them, favouring `isLocal`).
#[test]
fn one_endpoint_address_on_two_nodes_is_one_backend() {
    let svc = Manifest(json!({
        "metadata": {"namespace": "default", "name": "web"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
    }));
    let slice = Manifest(json!({
        "metadata": {"namespace": "default", "name": "web-0",
                     "labels": {LABEL_SERVICE_NAME: "web"}},
        "addressType": "IPv4",
        "ports": [{"port": 8080}],
        "endpoints": [
            {"addresses": ["10.244.0.2"], "nodeName": "node-a"},
            {"addresses": ["10.244.0.2"], "nodeName": "node-b"},
        ],
    }));
    let objects = objects(&[svc], &[slice]).expect("objects");
    let d = desired(&objects, &base_node());
    let backends = &d.frontends.values().next().expect("a frontend").backends;
    assert_eq!(backends.len(), 1, "{backends:?}");
    assert_eq!(backends[0].flags, BACKEND_F_LOCAL, "{backends:?}");
}
