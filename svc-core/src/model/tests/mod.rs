//! The model's table tests. This file holds the helpers every test file shares ([`svc`],
//! [`svc_labelled`] and [`slice`] also serve reconcile's and the engine's tests) and the tests of
//! the entry points themselves (conflicts between Services, determinism, `desired_for*`); each
//! child file tests one concern.

mod cidr;
mod endpoints;
mod families;
mod frontends;
mod health;
mod service;
mod slim;
mod source_ranges;
mod topology;
mod traffic_policy;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::json;
use svc_common::{
    Backend, FrontendKey, BACKEND_F_LOCAL, BACKEND_F_TERMINATING, FRONTEND_F_DENY_NODE,
    FRONTEND_F_DROP_NO_BACKEND, FRONTEND_F_EXTERNAL_IP, FRONTEND_F_EXTERNAL_SCOPE,
    FRONTEND_F_NODEPORT, FRONTEND_F_SOURCE_RANGES, PROTO_TCP, PROTO_UDP, SCOPE_ANY, SCOPE_EXTERNAL,
};

use super::*;

pub(crate) fn svc(ns: &str, name: &str, spec: serde_json::Value) -> (ObjectRef, Service) {
    svc_labelled(ns, name, json!({}), spec)
}

pub(crate) fn svc_labelled(
    ns: &str,
    name: &str,
    labels: serde_json::Value,
    spec: serde_json::Value,
) -> (ObjectRef, Service) {
    let value = json!({
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": spec,
    });
    let svc = serde_json::from_value(value).expect("test Service");
    (ObjectRef::new(ns, name), svc)
}

pub(crate) fn slice(
    ns: &str,
    name: &str,
    service: &str,
    body: serde_json::Value,
) -> (ObjectRef, EndpointSlice) {
    let mut value = json!({
        "metadata": {"namespace": ns, "name": name,
                     "labels": {LABEL_SERVICE_NAME: service}},
        "addressType": "IPv4",
        "endpoints": [],
    });
    merge(&mut value, body);
    let slice = serde_json::from_value(value).expect("test EndpointSlice");
    (ObjectRef::new(ns, name), slice)
}

fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

pub(crate) fn objects(
    services: Vec<(ObjectRef, Service)>,
    slices: Vec<(ObjectRef, EndpointSlice)>,
) -> Objects {
    Objects {
        services: services.into_iter().collect(),
        slices: slices.into_iter().collect(),
        problems: vec![],
    }
}

fn node() -> NodeContext {
    NodeContext {
        node_name: "node-a".into(),
        node_ips: vec![Ipv4Addr::new(172, 18, 0, 2)],
        ..Default::default()
    }
}

fn key(ip: [u8; 4], port: u16, proto: u8) -> FrontendKey {
    FrontendKey {
        addr: ip,
        port,
        proto,
        scope: SCOPE_ANY,
    }
}

fn be(ip: [u8; 4], port: u16) -> Backend {
    Backend {
        addr: ip,
        port,
        proto: PROTO_TCP,
        flags: 0,
    }
}

fn ep(ip: &str) -> serde_json::Value {
    json!({"addresses": [ip]})
}

fn ep_cond(
    ip: &str,
    ready: Option<bool>,
    serving: Option<bool>,
    term: Option<bool>,
) -> serde_json::Value {
    json!({"addresses": [ip], "conditions": {"ready": ready, "serving": serving, "terminating": term}})
}

fn web_slice(name: &str, port: i32, eps: Vec<serde_json::Value>) -> (ObjectRef, EndpointSlice) {
    slice(
        "default",
        name,
        "web",
        json!({"ports": [{"name": "", "port": port}], "endpoints": eps}),
    )
}

fn web(spec_extra: serde_json::Value) -> (ObjectRef, Service) {
    let mut spec = json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]});
    merge(&mut spec, spec_extra);
    svc("default", "web", spec)
}

fn only(d: &Desired) -> &DesiredFrontend {
    assert_eq!(d.frontends.len(), 1, "{d:#?}");
    d.frontends.values().next().expect("one frontend")
}

fn has_problem(d: &Desired, field: &str, needle: &str) -> bool {
    d.problems
        .iter()
        .any(|p| p.field == field && p.message.contains(needle))
}

#[test]
fn frontend_claimed_twice_goes_to_the_first_service() {
    let d = desired(
        &objects(
            vec![
                svc(
                    "default",
                    "b",
                    json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
                ),
                svc(
                    "default",
                    "a",
                    json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}),
                ),
            ],
            vec![],
        ),
        &node(),
    );
    assert_eq!(only(&d).service, ObjectRef::new("default", "a"));
    assert_eq!(d.problems.len(), 1);
    assert_eq!(d.problems[0].object, "Service default/b");
}

#[test]
fn bad_service_does_not_prevent_others() {
    let d = desired(
        &objects(
            vec![
                svc(
                    "default",
                    "bad",
                    json!({"clusterIP": "x", "type": "Weird", "ports": [{"port": 80}]}),
                ),
                svc("default", "nospec", json!(null)),
                web(json!({})),
            ],
            vec![],
        ),
        &node(),
    );
    assert_eq!(only(&d).service, ObjectRef::new("default", "web"));
    assert_eq!(d.problems.len(), 2, "{:?}", d.problems);
}

#[test]
fn output_is_deterministic_whatever_the_input_order() {
    let build = |rev: bool| {
        let mut eps = vec![ep("10.244.1.9"), ep("10.244.1.1"), ep("10.244.1.5")];
        if rev {
            eps.reverse();
        }
        desired(
            &objects(vec![web(json!({}))], vec![web_slice("web-1", 80, eps)]),
            &node(),
        )
    };
    assert_eq!(build(false), build(true));
}

#[test]
fn desired_for_limits_itself_to_the_named_services() {
    let objs = objects(
        vec![
            web(json!({})),
            svc(
                "default",
                "api",
                json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}),
            ),
        ],
        vec![web_slice("web-1", 80, vec![ep("10.244.1.5")])],
    );
    let set: BTreeSet<_> = [
        ObjectRef::new("default", "web"),
        ObjectRef::new("default", "gone"),
    ]
    .into();
    let part = desired_for(&objs, &node(), &set);
    let full = desired(&objs, &node());
    assert_eq!(part.frontends.len(), 1);
    let (k, f) = part.frontends.iter().next().expect("frontend");
    assert_eq!(full.frontends.get(k), Some(f));
}

#[test]
fn slice_owners_follow_moves_and_deletes_and_match_desired_for() {
    let api = svc(
        "default",
        "api",
        json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}),
    );
    let mut objs = objects(
        vec![web(json!({})), api],
        vec![
            web_slice("web-1", 80, vec![ep("10.244.1.5")]),
            web_slice("web-2", 80, vec![ep("10.244.1.6")]),
        ],
    );
    // The owners index follows the slim slices, as the store keeps it.
    let owner = |objs: &Objects, r: &ObjectRef| {
        objs.slices
            .get(r)
            .and_then(|s| label(&s.metadata, LABEL_SERVICE_NAME))
            .map(str::to_owned)
    };
    let mut owners = SliceOwners::build(&SlimObjects::of(&objs).slices);
    // web-2 moves to api; web-1 is deleted; a slice without the label is ignored.
    let (r2, moved) = slice(
        "default",
        "web-2",
        "api",
        json!({"ports": [{"port": 80}], "endpoints": [ep("10.244.1.7")]}),
    );
    let before = owner(&objs, &r2);
    objs.slices.insert(r2.clone(), moved);
    owners.update(&r2, before.as_deref(), owner(&objs, &r2).as_deref());
    let r1 = ObjectRef::new("default", "web-1");
    let before = owner(&objs, &r1);
    objs.slices.remove(&r1);
    owners.update(&r1, before.as_deref(), None);
    let (r3, mut orphan) = web_slice("orphan", 80, vec![ep("10.244.1.8")]);
    orphan.metadata.labels = None;
    objs.slices.insert(r3.clone(), orphan);
    owners.update(&r3, None, owner(&objs, &r3).as_deref());

    let slim = SlimObjects::of(&objs);
    assert_eq!(owners, SliceOwners::build(&slim.slices));
    let set: BTreeSet<_> = [
        ObjectRef::new("default", "web"),
        ObjectRef::new("default", "api"),
    ]
    .into();
    assert_eq!(
        desired_for_indexed(&slim, &node(), &set, &owners),
        desired_for(&objs, &node(), &set)
    );
}

// ---- North-south frontends and traffic policies ----

const NODE_IP: [u8; 4] = [172, 18, 0, 2];
/// A second node address, outside the kind network (an "ExternalIP" of the Node).
const NODE_IP_PUBLIC: [u8; 4] = [203, 0, 113, 2];

fn cidrs(list: &[&str]) -> Vec<Ipv4Net> {
    list.iter().map(|c| parse_cidr(c).expect("cidr")).collect()
}

fn node_with(nodeport_addresses: &[&str]) -> NodeContext {
    NodeContext {
        node_ips: vec![Ipv4Addr::from(NODE_IP), Ipv4Addr::from(NODE_IP_PUBLIC)],
        nodeport_addresses: cidrs(nodeport_addresses),
        ..node()
    }
}

/// An endpoint on node `node`.
fn ep_on(ip: &str, node: &str) -> serde_json::Value {
    json!({"addresses": [ip], "nodeName": node})
}

fn local(b: Backend) -> Backend {
    Backend {
        flags: b.flags | BACKEND_F_LOCAL,
        ..b
    }
}

fn external(k: FrontendKey) -> FrontendKey {
    FrontendKey {
        scope: SCOPE_EXTERNAL,
        ..k
    }
}

/// `web` as a NodePort Service on nodePort 30080, with `extra` merged into its spec.
fn web_np(extra: serde_json::Value) -> (ObjectRef, Service) {
    let mut spec = json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]});
    merge(&mut spec, extra);
    web(spec)
}

/// One endpoint on this node (node-a) and one on node-b.
fn local_and_remote() -> Vec<(ObjectRef, EndpointSlice)> {
    vec![web_slice(
        "web-1",
        8080,
        vec![ep_on("10.244.1.5", "node-a"), ep_on("10.244.2.7", "node-b")],
    )]
}

/// Frontend key → (flags, backends), the part of a [`Desired`] these tests compare.
fn summary(d: &Desired) -> BTreeMap<FrontendKey, (u32, Vec<Backend>)> {
    d.frontends
        .iter()
        .map(|(k, f)| (*k, (f.flags, f.backends.clone())))
        .collect()
}
