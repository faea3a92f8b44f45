//! Torn updates: the datapath between any two map writes of a reconcile (needs root).
//!
//! For each change the agent makes to a Service (add, remove, scale up and down, replace every
//! backend, to no endpoints and back, port change, target-port change, two Services sharing
//! backends), the agent's own planner ([`svc_core::reconcile::plan`]) produces the map writes
//! from the old state to the new one. They are applied to a real datapath one at a time, and
//! after **each** write new TCP flows from several client ports are sent to every frontend of
//! either state through `svc_pod_ingress`. Each must be treated as the old Service or the new
//! one treats it: the same verdict and counter as one of the two states, and, when translated,
//! a backend of one of the two — never a drop neither state gives, never a backend of neither.
//!
//! Service type and policy changes come from the model itself (k8s objects → desired state):
//! ClusterIP ↔ NodePort ↔ LoadBalancer, `externalTrafficPolicy` Cluster ↔ Local, the local
//! endpoint leaving and arriving under Local, `loadBalancerSourceRanges` added, changed and
//! removed; these are probed from pods and from the uplink (`svc_uplink_ingress`, inside an
//! [`XdpNode`]), to the NodePort and the LoadBalancer IP as well. A translated flow may count
//! as any translation either state gives (local and remote backends count differently).
//!
//! The controls: the same writes in a wrong order (every frontend before its slots and
//! backends; the `FRONTEND_F_EXTERNAL_SCOPE` flag before its scoped entry) must be caught, so
//! the check is shown to fail when the order is broken.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use svc_common::{Backend, FrontendKey, Hook, PROTO_TCP, SCOPE_ANY};
use svc_core::{
    dataplane::{Dataplane, MapOp},
    model::{Desired, DesiredFrontend, ObjectRef},
    reconcile::{plan, Programmed},
};
use svc_testkit::fixtures::*;

/// What one new flow got: the program's verdict, the counters that moved at the pod ingress
/// hook, and where the packet was sent (destination address and port of the output).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Outcome {
    retval: u32,
    reasons: Vec<String>,
    dst: Option<SocketAddrV4>,
}

/// A Service state: frontend port on 10.96.0.`ip` → backend endpoints `10.244.1.N:port`.
type State = Vec<(u8, u16, &'static str, Vec<(u8, u16)>)>;

fn key(ip: u8, port: u16) -> FrontendKey {
    FrontendKey {
        addr: [10, 96, 0, ip],
        port,
        proto: PROTO_TCP,
        scope: SCOPE_ANY,
    }
}

fn desired(state: &State) -> Desired {
    let mut d = Desired::default();
    for (ip, port, service, backends) in state {
        let mut backends: Vec<Backend> = backends
            .iter()
            .map(|&(n, p)| Backend {
                addr: [10, 244, 1, n],
                port: p,
                proto: PROTO_TCP,
                flags: 0,
            })
            .collect();
        backends.sort();
        d.frontends.insert(
            key(*ip, *port),
            DesiredFrontend {
                service: ObjectRef::new("default", *service),
                port_name: String::new(),
                backends,
                affinity_timeout_s: 0,
                flags: 0,
                source_ranges: vec![],
            },
        );
    }
    d
}

/// Writes one planned op to the fixture's maps through the agent's pinned dataplane.
fn write(dp: &mut Datapath, op: &MapOp) {
    dp.apply(op.clone()).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Client ports each frontend is probed from: different hashes, so different slots.
const PORTS: [u16; 6] = [40001, 40117, 40233, 41002, 45555, 50123];

/// Where probes enter: a pod's veth (`svc_pod_ingress`, from [`CLIENT_POD`]) or the uplink
/// (`svc_uplink_ingress`, from [`EXT_CLIENT`], on the [`XdpNode`]'s uplink).
#[derive(Clone, Copy)]
enum Entry {
    Pod,
    Uplink(u32),
}

impl Entry {
    fn client(self, port: u16) -> SocketAddrV4 {
        match self {
            Entry::Pod => SocketAddrV4::new(*CLIENT_POD.ip(), port),
            Entry::Uplink(_) => SocketAddrV4::new(*EXT_CLIENT.ip(), port),
        }
    }

    fn hook(self) -> Hook {
        match self {
            Entry::Pod => Hook::PodIngress,
            Entry::Uplink(_) => Hook::UplinkIngress,
        }
    }

    fn run(self, dp: &Datapath, syn: &Pkt) -> RunResult {
        match self {
            Entry::Pod => dp.run(Program::Ingress.name(), &syn.build(), 1),
            Entry::Uplink(ifindex) => dp.run_on(
                Program::UplinkIngress.name(),
                &syn.build_eth(EXT_CLIENT_MAC, NODE_MAC),
                ifindex,
            ),
        }
        .unwrap()
    }
}

/// Sends a new TCP flow from every port in [`PORTS`] to every frontend address in `targets`.
fn probe(
    dp: &mut Datapath,
    entry: Entry,
    targets: &BTreeSet<SocketAddrV4>,
) -> BTreeMap<(SocketAddrV4, u16), Outcome> {
    let mut out = BTreeMap::new();
    let hook = format!("{}/", entry.hook().name());
    for &target in targets {
        for port in PORTS {
            // A new flow each time: no entry from an earlier probe may decide it.
            let ct = dp.ct_keys();
            dp.ct_delete(&ct).expect("clearing conntrack");
            let syn = Pkt::tcp(entry.client(port), target, TCP_SYN);
            let before = dp.counters();
            let r = entry.run(dp, &syn);
            let after = dp.counters();
            let reasons = (0..after.len())
                .filter(|&i| after[i] != before[i])
                .map(stat_name)
                .filter(|n| n.starts_with(&hook))
                .collect();
            out.insert(
                (target, port),
                Outcome {
                    retval: r.retval,
                    reasons,
                    dst: destination(&r.output),
                },
            );
        }
    }
    out
}

/// The IPv4 destination and TCP destination port of an Ethernet frame.
fn destination(frame: &[u8]) -> Option<SocketAddrV4> {
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let addr = Ipv4Addr::new(*ip.get(16)?, ip[17], ip[18], ip[19]);
    let port = u16::from_be_bytes([*ip.get(ihl + 2)?, *ip.get(ihl + 3)?]);
    Some(SocketAddrV4::new(addr, port))
}

/// Every backend either state translates `target` to (any scope).
fn backends_of(a: &Desired, b: &Desired, target: SocketAddrV4) -> BTreeSet<SocketAddrV4> {
    [a, b]
        .iter()
        .flat_map(|d| d.frontends.iter())
        .filter(|(k, _)| k.addr == target.ip().octets() && k.port == target.port())
        .flat_map(|(_, f)| f.backends.iter())
        .map(|b| SocketAddrV4::new(Ipv4Addr::from(b.addr), b.port))
        .collect()
}

/// Whether the flow to `target` was translated to a backend: sent on to neither the address
/// it was sent to nor back to the client (a reject).
fn translated(o: &Outcome, target: SocketAddrV4, client: Ipv4Addr) -> bool {
    o.dst.is_some_and(|d| d != target && *d.ip() != client)
}

/// Whether `got` (a flow to `target` mid-update) is how the old or the new state treats it.
/// Not translated: the same verdict, counters and destination as one state gives this very
/// flow. Translated: a verdict and counters one of the states gives some flow to `target`
/// (local and remote backends count differently), and a backend of either state (the slot
/// a flow hashes to may hold either state's backend mid-update).
fn allowed(
    got: &Outcome,
    this: [&Outcome; 2],
    any: &[&Outcome],
    target: SocketAddrV4,
    client: Ipv4Addr,
    backends: &BTreeSet<SocketAddrV4>,
) -> bool {
    if translated(got, target, client) {
        any.iter().any(|o| {
            translated(o, target, client) && (o.retval, &o.reasons) == (got.retval, &got.reasons)
        }) && got.dst.is_some_and(|d| backends.contains(&d))
    } else {
        this.contains(&got)
    }
}

thread_local! {
    /// Every counter the probes of this thread saw move in the old and new states, so a test
    /// can show its probes reach what it means to test.
    static SEEN: std::cell::RefCell<BTreeSet<String>> = Default::default();
}

/// Empties the service maps.
fn clear(dp: &mut Datapath) {
    let snap = dp.maps.snapshot().expect("reading the service maps");
    let ops = snap
        .frontends
        .keys()
        .map(|&key| MapOp::DeleteFrontend { key })
        .chain(snap.slots.keys().map(|&key| MapOp::DeleteSlot { key }))
        .chain(snap.backends.keys().map(|&id| MapOp::DeleteBackend { id }))
        .chain(
            snap.source_ranges
                .iter()
                .map(|&range| MapOp::DeleteSourceRange { range }),
        );
    for op in ops {
        write(dp, &op);
    }
}

/// Programs `from`, then the plan to `to` one write at a time (`order` may reorder it),
/// probing after each write from `entries`. Returns every violation found.
fn run_change(
    dp: &mut Datapath,
    entries: &[(Entry, BTreeSet<SocketAddrV4>)],
    from: &Desired,
    to: &Desired,
    order: impl Fn(Vec<MapOp>) -> Vec<MapOp>,
) -> Vec<String> {
    clear(dp);
    let first = plan(&Programmed::default(), from);
    for op in &first.ops {
        write(dp, op);
    }
    let second = plan(&first.next, to);
    let probe_all = |dp: &mut Datapath| -> Vec<_> {
        entries
            .iter()
            .map(|(entry, targets)| probe(dp, *entry, targets))
            .collect()
    };
    let old = probe_all(dp);
    let mut seen = Vec::new();
    for (i, op) in order(second.ops).into_iter().enumerate() {
        write(dp, &op);
        seen.push((i, op, probe_all(dp)));
    }
    let new = probe_all(dp);
    for per_entry in old.iter().chain(&new) {
        for o in per_entry.values() {
            SEEN.with(|seen| seen.borrow_mut().extend(o.reasons.iter().cloned()));
        }
    }
    let mut violations = Vec::new();
    for (i, op, outcomes) in seen {
        for (e, per_entry) in outcomes.iter().enumerate() {
            let client = *entries[e].0.client(0).ip();
            for (&(target, port), got) in per_entry {
                let this = [&old[e][&(target, port)], &new[e][&(target, port)]];
                let any: Vec<&Outcome> = old[e]
                    .iter()
                    .chain(new[e].iter())
                    .filter(|((t, _), _)| *t == target)
                    .map(|(_, o)| o)
                    .collect();
                let backends = backends_of(from, to, target);
                if !allowed(got, this, &any, target, client, &backends) {
                    violations.push(format!(
                        "after write {i} ({op:?}): flow from port {port} to {target}: got \
                         {got:?}; old state gives {:?}, new state {:?}",
                        this[0], this[1]
                    ));
                }
            }
        }
    }
    violations
}

/// The changes the agent makes, as (name, old state, new state).
fn changes() -> Vec<(&'static str, State, State)> {
    let web = |b: &[(u8, u16)]| (10u8, 80u16, "web", b.to_vec());
    vec![
        ("add a Service", vec![], vec![web(&[(3, 8080), (4, 8080)])]),
        (
            "remove a Service",
            vec![web(&[(3, 8080), (4, 8080)])],
            vec![],
        ),
        (
            "scale up 1 → 4",
            vec![web(&[(3, 8080)])],
            vec![web(&[(3, 8080), (4, 8080), (5, 8080), (6, 8080)])],
        ),
        (
            "scale down 4 → 1",
            vec![web(&[(3, 8080), (4, 8080), (5, 8080), (6, 8080)])],
            vec![web(&[(5, 8080)])],
        ),
        (
            "replace every backend (rollout)",
            vec![web(&[(3, 8080), (4, 8080)])],
            vec![web(&[(7, 8080), (8, 8080), (9, 8080)])],
        ),
        (
            "to no endpoints",
            vec![web(&[(3, 8080), (4, 8080)])],
            vec![web(&[])],
        ),
        ("from no endpoints", vec![web(&[])], vec![web(&[(3, 8080)])]),
        (
            "port change 80 → 8081",
            vec![web(&[(3, 8080)])],
            vec![(10, 8081, "web", vec![(3, 8080)])],
        ),
        (
            "target port change 8080 → 9090",
            vec![web(&[(3, 8080), (4, 8080)])],
            vec![web(&[(3, 9090), (4, 9090)])],
        ),
        (
            "two Services share backends, one is removed, the other scales",
            vec![
                web(&[(3, 8080), (4, 8080)]),
                (11, 80, "api", vec![(4, 8080), (5, 8080)]),
            ],
            vec![(11, 80, "api", vec![(4, 8080), (5, 8080), (3, 8080)])],
        ),
        (
            "a Service with two ports loses one and gains another",
            vec![web(&[(3, 8080)]), (10, 443, "web", vec![(3, 8443)])],
            vec![
                web(&[(3, 8080), (4, 8080)]),
                (10, 8443, "web", vec![(4, 8443)]),
            ],
        ),
    ]
}

fn datapath() -> Datapath {
    if let Err(e) = read_object() {
        panic!("{e:#}");
    }
    require_root();
    Datapath::load().unwrap_or_else(|e| panic!("{e:#}"))
}

/// The frontends of `states`, as pod-ingress probe targets.
fn pod_targets(states: &[&Desired]) -> BTreeSet<SocketAddrV4> {
    states
        .iter()
        .flat_map(|d| d.frontends.keys())
        .map(|k| SocketAddrV4::new(Ipv4Addr::from(k.addr), k.port))
        .collect()
}

/// Runs every change in `changes` through `run_change` with `order`; returns the names of
/// the changes with violations and the report.
fn run_all(
    dp: &mut Datapath,
    changes: &[(&'static str, Desired, Desired)],
    uplink: Option<(u32, &BTreeSet<SocketAddrV4>)>,
    order: impl Fn(Vec<MapOp>) -> Vec<MapOp> + Copy,
) -> (Vec<&'static str>, Vec<String>, usize) {
    let (mut names, mut report, mut writes) = (Vec::new(), Vec::new(), 0);
    for (name, from, to) in changes {
        writes += plan(&plan(&Programmed::default(), from).next, to).ops.len();
        let mut entries = vec![(Entry::Pod, pod_targets(&[from, to]))];
        if let Some((ifindex, targets)) = uplink {
            entries.push((Entry::Uplink(ifindex), targets.clone()));
        }
        let v = run_change(dp, &entries, from, to, order);
        if !v.is_empty() {
            names.push(*name);
        }
        report.extend(v.into_iter().map(|v| format!("{name}: {v}")));
    }
    (names, report, writes)
}

fn pod_changes() -> Vec<(&'static str, Desired, Desired)> {
    changes()
        .into_iter()
        .map(|(n, a, b)| (n, desired(&a), desired(&b)))
        .collect()
}

/// A broken planner: every PutFrontend (and slot deletion) before the rest.
fn frontends_first(ops: Vec<MapOp>) -> Vec<MapOp> {
    let (mut first, rest): (Vec<_>, Vec<_>) = ops
        .into_iter()
        .partition(|op| matches!(op, MapOp::PutFrontend { .. } | MapOp::DeleteSlot { .. }));
    first.extend(rest);
    first
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn every_write_of_every_change_shows_the_old_or_the_new_service() {
    let mut dp = datapath();
    let changes = pod_changes();
    let (_, report, writes) = run_all(&mut dp, &changes, None, |ops| ops);
    println!(
        "{} changes, {writes} writes, {} flows per frontend probed after each",
        changes.len(),
        PORTS.len()
    );
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn writing_frontends_before_their_slots_is_caught() {
    let mut dp = datapath();
    let (caught, _, _) = run_all(&mut dp, &pod_changes(), None, frontends_first);
    // (A shrink writes the count first anyway, so only growing changes can show it.)
    for must in [
        "add a Service",
        "scale up 1 → 4",
        "replace every backend (rollout)",
    ] {
        assert!(
            caught.contains(&must),
            "the broken order must be caught on {must:?}; caught on {caught:?}"
        );
    }
}

// --- Service type and policy changes, from the model, probed from the uplink too ------------

const LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const LOCAL_EP: &str = "10.244.1.3";
const REMOTE_EPS: [&str; 2] = ["10.244.2.2", "10.244.2.3"];

/// `web` as the model sees it: `kind` ClusterIP/NodePort/LoadBalancer, `policy` its
/// externalTrafficPolicy, `ranges` its loadBalancerSourceRanges, with `local` (on this node)
/// and the remote endpoints.
fn scene(kind: &str, policy: &str, ranges: &[&str], local: bool) -> Desired {
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
    use serde_json::json;
    use svc_core::model::{self, NodeContext, Objects};
    let mut spec = json!({
        "type": kind,
        "clusterIP": "10.96.0.10",
        "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}],
    });
    if kind != "ClusterIP" {
        spec["ports"][0]["nodePort"] = json!(NODEPORT.port());
        spec["externalTrafficPolicy"] = json!(policy);
    }
    if !ranges.is_empty() {
        spec["loadBalancerSourceRanges"] = json!(ranges);
    }
    let mut service = json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": spec,
    });
    if kind == "LoadBalancer" {
        service["status"] = json!({"loadBalancer": {"ingress": [{"ip": LB_IP.to_string()}]}});
    }
    let mut endpoints: Vec<_> = REMOTE_EPS
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "node2"}))
        .collect();
    if local {
        endpoints.push(
            json!({"addresses": [LOCAL_EP], "conditions": {"ready": true}, "nodeName": "node1"}),
        );
    }
    let slice = json!({
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    });
    let web = ObjectRef::new("default", "web");
    let objects = Objects {
        services: BTreeMap::from([(
            web.clone(),
            serde_json::from_value::<Service>(service).unwrap(),
        )]),
        slices: BTreeMap::from([(
            ObjectRef::new("default", "web-1"),
            serde_json::from_value::<EndpointSlice>(slice).unwrap(),
        )]),
        problems: vec![],
    };
    let node = NodeContext {
        node_name: "node1".into(),
        node_ips: vec![NODE_IP],
        ..NodeContext::default()
    };
    let d = model::desired(&objects, &node);
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    d
}

fn policy_changes() -> Vec<(&'static str, Desired, Desired)> {
    let cluster_ip = scene("ClusterIP", "", &[], true);
    let np = scene("NodePort", "Cluster", &[], true);
    let np_local = scene("NodePort", "Local", &[], true);
    let np_local_remote_only = scene("NodePort", "Local", &[], false);
    let lb = scene("LoadBalancer", "Cluster", &[], true);
    let lb_local = scene("LoadBalancer", "Local", &[], true);
    let lb_allow = scene(
        "LoadBalancer",
        "Cluster",
        &[&format!("{}/32", EXT_CLIENT.ip())],
        true,
    );
    let lb_deny = scene("LoadBalancer", "Cluster", &["198.51.100.0/24"], true);
    vec![
        ("ClusterIP → NodePort", cluster_ip.clone(), np.clone()),
        ("NodePort → ClusterIP", np.clone(), cluster_ip),
        (
            "externalTrafficPolicy Cluster → Local",
            np.clone(),
            np_local.clone(),
        ),
        (
            "externalTrafficPolicy Local → Cluster",
            np_local.clone(),
            np.clone(),
        ),
        (
            "Local: the local endpoint leaves",
            np_local.clone(),
            np_local_remote_only.clone(),
        ),
        (
            "Local: a local endpoint arrives",
            np_local_remote_only,
            np_local,
        ),
        ("NodePort → LoadBalancer", np.clone(), lb.clone()),
        ("LoadBalancer → NodePort", lb.clone(), np),
        ("LoadBalancer Cluster → Local", lb.clone(), lb_local.clone()),
        ("LoadBalancer Local → Cluster", lb_local, lb.clone()),
        (
            "source ranges added (client allowed)",
            lb.clone(),
            lb_allow.clone(),
        ),
        (
            "source ranges changed (client denied)",
            lb_allow.clone(),
            lb_deny.clone(),
        ),
        (
            "source ranges changed (client allowed)",
            lb_deny.clone(),
            lb_allow,
        ),
        ("source ranges removed", lb_deny, lb),
    ]
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn type_and_policy_changes_show_the_old_or_the_new_service_from_pods_and_outside() {
    node_datapath_test(
        NodePrograms {
            xdp: false,
            uplink_tc: true,
        },
        |dp, uplink| {
            let changes = policy_changes();
            let targets = BTreeSet::from([NODEPORT, SocketAddrV4::new(LB_IP, 80)]);
            let (_, report, writes) =
                run_all(dp, &changes, Some((uplink.ifindex, &targets)), |ops| ops);
            let seen = SEEN.with(|s| s.borrow().clone());
            println!(
                "{} changes, {writes} writes, {} flows per frontend probed after each; \
                 outcomes: {seen:?}",
                changes.len(),
                PORTS.len()
            );
            assert!(report.is_empty(), "{}", report.join("\n"));
            for must in [
                "uplink_ingress/dnat_new",
                "uplink_ingress/policy_drop",
                "uplink_ingress/source_range_denied",
                "uplink_ingress/not_service",
            ] {
                assert!(seen.contains(must), "the probes never saw {must}: {seen:?}");
            }
        },
    );
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (BPF_PROG_TEST_RUN)")]
fn a_flag_written_before_its_scoped_entry_is_caught() {
    node_datapath_test(
        NodePrograms {
            xdp: false,
            uplink_tc: true,
        },
        |dp, uplink| {
            // A broken planner: the SCOPE_ANY entries (with FRONTEND_F_EXTERNAL_SCOPE) before
            // everything else, so the uplink finds the flag and no scoped entry yet.
            let broken = |ops: Vec<MapOp>| {
                let (mut first, rest): (Vec<_>, Vec<_>) = ops.into_iter().partition(
                    |op| matches!(op, MapOp::PutFrontend { key, .. } if key.scope == SCOPE_ANY),
                );
                first.extend(rest);
                first
            };
            let targets = BTreeSet::from([NODEPORT, SocketAddrV4::new(LB_IP, 80)]);
            let (caught, _, _) = run_all(
                dp,
                &policy_changes(),
                Some((uplink.ifindex, &targets)),
                broken,
            );
            assert!(
                caught.contains(&"externalTrafficPolicy Cluster → Local"),
                "caught on {caught:?}"
            );
        },
    );
}
