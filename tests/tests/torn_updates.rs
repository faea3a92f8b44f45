//! Torn updates: the datapath between any two map writes of a reconcile (needs root).
//!
//! For each change the agent makes to a Service (add, remove, scale up and down, replace every
//! backend, to no endpoints and back, port change, target-port change, two Services sharing
//! backends), the agent's own planner ([`svc_agent::reconcile::plan`]) produces the map writes
//! from the old state to the new one. They are applied to a real datapath one at a time, and
//! after **each** write new TCP flows from several client ports are sent to every frontend of
//! either state through `svc_pod_ingress`. Each must be treated as the old Service or the new
//! one treats it: the same verdict and counter as one of the two states, and, when translated,
//! a backend of one of the two — never a drop neither state gives, never a backend of neither.
//!
//! The control: the same writes in a wrong order (every frontend before its slots and
//! backends) must be caught, so the check is shown to fail when the order is broken.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use aya::maps::lpm_trie::Key;
use svc_agent::{
    dataplane::MapOp,
    model::{Desired, DesiredFrontend, ObjectRef},
    reconcile::{plan, Programmed},
};
use svc_common::{Backend, FrontendKey, Hook, PROTO_TCP, SCOPE_ANY, SOURCE_RANGE_ALLOW};
use tests::fixtures::*;

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

/// Backends a state translates `key` to.
fn backends_of(state: &State, k: &FrontendKey) -> BTreeSet<SocketAddrV4> {
    state
        .iter()
        .filter(|(ip, port, _, _)| key(*ip, *port) == *k)
        .flat_map(|(_, _, _, b)| b.iter())
        .map(|&(n, p)| SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, n), p))
        .collect()
}

/// Writes one planned op to the fixture's maps, as the agent's pinned dataplane does.
fn write(dp: &mut Datapath, op: &MapOp) {
    let r = match op {
        MapOp::PutBackend { id, backend } => dp.backends.insert(id, backend, 0),
        MapOp::PutSlot { key, slot } => dp.slots.insert(key, slot, 0),
        MapOp::PutFrontend { key, value } => dp.frontends.insert(key, value, 0),
        MapOp::DeleteFrontend { key } => dp.frontends.remove(key),
        MapOp::DeleteSlot { key } => dp.slots.remove(key),
        MapOp::DeleteBackend { id } => dp.backends.remove(id),
        MapOp::PutSourceRange { range } => {
            let (len, k) = range.map_key();
            dp.source_ranges
                .insert(&Key::new(len, k), SOURCE_RANGE_ALLOW, 0)
        }
        MapOp::DeleteSourceRange { range } => {
            let (len, k) = range.map_key();
            dp.source_ranges.remove(&Key::new(len, k))
        }
    };
    r.unwrap_or_else(|e| panic!("{op:?}: {e}"));
}

/// Client ports each frontend is probed from: different hashes, so different slots.
const PORTS: [u16; 6] = [40001, 40117, 40233, 41002, 45555, 50123];

/// Sends a new TCP flow from every port in [`PORTS`] to every frontend in `keys`.
fn probe(dp: &mut Datapath, keys: &BTreeSet<FrontendKey>) -> BTreeMap<(FrontendKey, u16), Outcome> {
    let mut out = BTreeMap::new();
    for k in keys {
        let vip = SocketAddrV4::new(Ipv4Addr::from(k.addr), k.port);
        for port in PORTS {
            // A new flow each time: no entry from an earlier probe may decide it.
            let ct: Vec<_> = dp.ct.keys().filter_map(Result::ok).collect();
            for c in ct {
                let _ = dp.ct.remove(&c);
            }
            let syn = Pkt::tcp(SocketAddrV4::new(*CLIENT_POD.ip(), port), vip, TCP_SYN);
            let before = dp.counters();
            let r = dp.run(Program::Ingress.name(), &syn.build(), 1).unwrap();
            let after = dp.counters();
            let reasons = (0..after.len())
                .filter(|&i| after[i] != before[i])
                .map(stat_name)
                .filter(|n| n.starts_with(&format!("{:?}/", Hook::PodIngress)))
                .collect();
            out.insert((*k, port), Outcome {
                retval: r.retval,
                reasons,
                dst: destination(&r.output),
            });
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

/// Whether `got` is how the old or the new state treats the flow: the same verdict and
/// counters as one of them, and a translated destination among that state's backends (the
/// slot a flow hashes to may hold either state's backend mid-update).
fn allowed(got: &Outcome, old: &Outcome, new: &Outcome, k: &FrontendKey, a: &State, b: &State) -> bool {
    let translated = |o: &Outcome| o.reasons.iter().any(|r| r.ends_with("/dnat_new"));
    [(old, a), (new, b)].iter().any(|(o, state)| {
        if (o.retval, &o.reasons) != (got.retval, &got.reasons) {
            return false;
        }
        if translated(o) {
            let union: BTreeSet<_> = backends_of(a, k).union(&backends_of(b, k)).copied().collect();
            got.dst.is_some_and(|d| union.contains(&d)) && !backends_of(state, k).is_empty()
        } else {
            got.dst == o.dst
        }
    })
}

/// Applies `from`, then the plan to `to` one write at a time (`order` may reorder it), probing
/// after each write. Returns every violation found.
fn run_change(
    dp: &mut Datapath,
    from: &State,
    to: &State,
    order: impl Fn(Vec<MapOp>) -> Vec<MapOp>,
) -> Vec<String> {
    // Start clean: the previous scenario's frontends and slots and backends go.
    let keys: Vec<_> = dp.frontends.keys().filter_map(Result::ok).collect();
    for k in keys {
        dp.frontends.remove(&k).unwrap();
    }
    let slots: Vec<_> = dp.slots.keys().filter_map(Result::ok).collect();
    for k in slots {
        dp.slots.remove(&k).unwrap();
    }
    let backends: Vec<_> = dp.backends.keys().filter_map(Result::ok).collect();
    for k in backends {
        dp.backends.remove(&k).unwrap();
    }
    let first = plan(&Programmed::default(), &desired(from));
    for op in &first.ops {
        write(dp, op);
    }
    let second = plan(&first.next, &desired(to));
    let keys: BTreeSet<FrontendKey> = desired(from)
        .frontends
        .keys()
        .chain(desired(to).frontends.keys())
        .copied()
        .collect();
    let old = probe(dp, &keys);
    let ops = order(second.ops.clone());
    let mut seen = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        write(dp, op);
        seen.push((i, op.clone(), probe(dp, &keys)));
    }
    let new = probe(dp, &keys);
    let mut violations = Vec::new();
    for (i, op, outcomes) in seen {
        for (probe_key, got) in outcomes {
            let (o, n) = (&old[&probe_key], &new[&probe_key]);
            if !allowed(&got, o, n, &probe_key.0, from, to) {
                violations.push(format!(
                    "after write {i} ({op:?}): flow from port {} to {:?}: got {got:?}; \
                     old state gives {o:?}, new state {n:?}",
                    probe_key.1, probe_key.0
                ));
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
        ("remove a Service", vec![web(&[(3, 8080), (4, 8080)])], vec![]),
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
            vec![web(&[(3, 8080), (4, 8080)]), (10, 8443, "web", vec![(4, 8443)])],
        ),
    ]
}

fn datapath() -> Option<Datapath> {
    if let Err(e) = read_object() {
        panic!("{e:#}");
    }
    require_root()?;
    Some(Datapath::load().unwrap_or_else(|e| panic!("{e:#}")))
}

#[test]
fn every_write_of_every_change_shows_the_old_or_the_new_service() {
    let Some(mut dp) = datapath() else { return };
    let mut report = Vec::new();
    let mut writes = 0;
    for (name, from, to) in changes() {
        writes += plan(&plan(&Programmed::default(), &desired(&from)).next, &desired(&to))
            .ops
            .len();
        for v in run_change(&mut dp, &from, &to, |ops| ops) {
            report.push(format!("{name}: {v}"));
        }
    }
    println!(
        "{} changes, {writes} writes, {} flows probed after each",
        changes().len(),
        PORTS.len()
    );
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
fn writing_frontends_before_their_slots_is_caught() {
    let Some(mut dp) = datapath() else { return };
    // A broken planner: every PutFrontend first, and deletions of slots and backends before
    // the frontend that counts them.
    let broken = |ops: Vec<MapOp>| {
        let (mut first, rest): (Vec<_>, Vec<_>) = ops
            .into_iter()
            .partition(|op| matches!(op, MapOp::PutFrontend { .. } | MapOp::DeleteSlot { .. }));
        first.extend(rest);
        first
    };
    let mut caught = Vec::new();
    for (name, from, to) in changes() {
        if !run_change(&mut dp, &from, &to, broken).is_empty() {
            caught.push(name);
        }
    }
    // (A shrink writes the count first anyway, so only growing changes can show it.)
    for must in ["add a Service", "scale up 1 → 4", "replace every backend (rollout)"] {
        assert!(
            caught.contains(&must),
            "the broken order must be caught on {must:?}; caught on {caught:?}"
        );
    }
}
