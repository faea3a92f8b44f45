//! The objects the model reads, kept current from deltas (pure; the API-server source feeds it).
//!
//! The watchers (`svc-agent`'s `source::kube`) send [`Delta`]s to the agent's main loop, which
//! owns the objects ([`SlimObjects`]) and applies them with [`Store::apply`], learning which Services each delta
//! touched. A (re)list arrives as one [`Change::Resync`] carrying the complete new set (kube-rs
//! buffers pages between `Init` and `InitDone` for us to replace atomically), so a relist after
//! a 410 or a reconnect is applied as a single diff, and an empty list during start-up can never
//! be mistaken for "delete everything": nothing is planned until every kind has completed its
//! first list ([`Store::ready`]).
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Instant, SystemTime},
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use crate::model::{
    Interner, NodeContext, ObjectRef, Objects, Problem, SliceOwners, SlimObjects, SlimService,
    SlimSlice, LABEL_TOPOLOGY_ZONE,
};
/// A change to one kind of object.
#[derive(Debug)]
pub enum Change<K> {
    /// The complete current set (first list, or a relist after 410 / reconnect).
    Resync(Vec<K>),
    /// Created or updated.
    Upsert(K),
    /// Deleted (the last state seen).
    Delete(K),
}

impl<K> Change<K> {
    /// The same change with each object mapped by `f`; objects it maps to `None` are left
    /// out, and a single change of such an object is no change (`None`).
    pub fn filter_map<T>(self, mut f: impl FnMut(K) -> Option<T>) -> Option<Change<T>> {
        Some(match self {
            Change::Resync(all) => Change::Resync(all.into_iter().filter_map(f).collect()),
            Change::Upsert(k) => Change::Upsert(f(k)?),
            Change::Delete(k) => Change::Delete(f(k)?),
        })
    }
}

/// What a watcher task reports to the main loop, stamped with when it was received (for the
/// programming-latency histogram).
// Objects are moved through the channel once each; boxing them would add an allocation per
// delta to save stack space in a short-lived value.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Delta {
    /// Services with their references, already read into the model's form
    /// ([`SlimService::of`]) by the watcher ([`Delta::services`] converts full ones).
    Services(Change<(ObjectRef, SlimService)>, Instant),
    /// EndpointSlices with their references, already read into the model's form
    /// ([`SlimSlice::keyed`]): the watcher converts each as it arrives, so a list is never
    /// buffered as full objects ([`Delta::slices`] converts full ones).
    Slices(Change<(ObjectRef, SlimSlice)>, Instant),
    Node(Change<Node>, Instant),
    /// A watcher hit an error (it retries with backoff by itself); for metrics and logs.
    WatchError {
        kind: &'static str,
        error: String,
    },
}

/// What changed in a source that knows its complete state (the manifests source, see
/// `source::manifests::ManifestDir`), applied as one batch with [`Store::apply_changes`]:
/// only `Upsert` and `Delete`.
#[derive(Debug, Default)]
pub struct ObjectChanges {
    pub services: Vec<Change<Service>>,
    pub slices: Vec<Change<EndpointSlice>>,
    /// The source's complete problem list, when it changed.
    pub problems: Option<Vec<Problem>>,
}

impl ObjectChanges {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty() && self.problems.is_none()
    }
}

impl Delta {
    /// [`Delta::Services`] of full Services; `None` for a single change of a Service without
    /// a name (which the store would ignore).
    pub fn services(change: Change<Service>, at: Instant) -> Option<Self> {
        let mut names = Interner::default();
        let change = change.filter_map(|s| SlimService::keyed(s, &mut names))?;
        Some(Delta::Services(change, at))
    }

    /// [`Delta::Slices`] of full EndpointSlices; `None` for a single change of a slice without
    /// a name (which the store would ignore).
    pub fn slices(change: Change<EndpointSlice>, at: Instant) -> Option<Self> {
        let mut names = Interner::default();
        let change = change.filter_map(|s| SlimSlice::keyed(&s, &mut names))?;
        Some(Delta::Slices(change, at))
    }
}

/// The objects the model reads, kept current from deltas, in their slim form
/// ([`SlimObjects`]): Services with only the fields the model reads, EndpointSlices as
/// [`SlimSlice`]s.
#[derive(Debug, Default)]
pub struct Store {
    pub objects: SlimObjects,
    /// Slices by Service, kept in step with `objects.slices`, so planning one changed Service
    /// does not walk every slice ([`crate::model::desired_for_indexed`]).
    pub slice_owners: SliceOwners,
    /// This node's Node object, once seen.
    pub node: Option<Node>,
    listed: BTreeSet<&'static str>,
}

/// What applying a batch of deltas touched.
#[derive(Debug, Default)]
pub struct Touched {
    /// Services whose frontends or backends may have changed.
    pub services: BTreeSet<ObjectRef>,
    /// The Node's addresses or zone changed: they feed every Service (local endpoints,
    /// NodePorts, topology hints), so plan all.
    pub node: bool,
    /// Every object was replaced ([`Store::load`]): plan all.
    pub loaded: bool,
    /// Earliest receive time among the deltas applied (for programming latency).
    pub oldest: Option<Instant>,
    /// The [`LAST_CHANGE_TRIGGER_TIME`]s of the EndpointSlices that changed (for kube-proxy's
    /// network programming latency).
    pub triggers: Vec<SystemTime>,
}

/// The annotation the EndpointSlice controller sets to when the change it mirrors happened
/// (a Pod or Service change), RFC 3339.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// An EndpointSlice's [`LAST_CHANGE_TRIGGER_TIME`], if present and well formed.
pub fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let text = slice
        .metadata
        .annotations
        .as_ref()?
        .get(LAST_CHANGE_TRIGGER_TIME)?;
    let ts: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    // Through a duration since the epoch: jiff's `From<Timestamp> for SystemTime` needs its
    // `std` feature, which only the agent's dependencies switch on.
    let since_epoch = ts.as_duration();
    if since_epoch.is_negative() {
        return None;
    }
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(
        since_epoch.as_secs() as u64,
        since_epoch.subsec_nanos() as u32,
    ))
}

impl Store {
    /// True once Services, EndpointSlices and the Node have each completed a first list.
    pub fn ready(&self) -> bool {
        self.listed.len() == 3
    }

    /// Replaces every object with `objects` (the manifests source's complete set, read at
    /// `at`): the store is then ready, as after every kind's first list. The Node object is
    /// left as it is (the manifests source has none).
    pub fn load(&mut self, objects: Objects, at: Instant, touched: &mut Touched) {
        touched.oldest = Some(touched.oldest.map_or(at, |o| o.min(at)));
        touched.loaded = true;
        self.objects = SlimObjects::from_objects(objects);
        self.slice_owners = SliceOwners::build(&self.objects.slices);
        self.listed.extend(["Service", "EndpointSlice", "Node"]);
    }

    /// Applies a source's changes, received at `at`, as the deltas they are (the source's
    /// problems replace [`Objects::problems`]).
    pub fn apply_changes(&mut self, changes: ObjectChanges, at: Instant, touched: &mut Touched) {
        for change in changes.services {
            if let Some(delta) = Delta::services(change, at) {
                self.apply(delta, touched);
            }
        }
        for change in changes.slices {
            if let Some(delta) = Delta::slices(change, at) {
                self.apply(delta, touched);
            }
        }
        if let Some(problems) = changes.problems {
            self.objects.problems = problems;
        }
    }

    /// Applies one delta, recording what it touched.
    pub fn apply(&mut self, delta: Delta, touched: &mut Touched) {
        let mut stamp = |t: Instant| {
            touched.oldest = Some(touched.oldest.map_or(t, |o| o.min(t)));
        };
        match delta {
            Delta::Services(change, at) => {
                stamp(at);
                if matches!(change, Change::Resync(_)) {
                    self.listed.insert("Service");
                }
                apply_change(&mut self.objects.services, change, |r, _| {
                    touched.services.insert(r.clone());
                });
            }
            Delta::Slices(change, at) => {
                stamp(at);
                let one = match &change {
                    Change::Upsert((r, _)) | Change::Delete((r, _)) => Some(r.clone()),
                    Change::Resync(_) => None,
                };
                let resync = matches!(change, Change::Resync(_));
                if resync {
                    self.listed.insert("EndpointSlice");
                }
                let old_owner = one
                    .as_ref()
                    .and_then(|r| self.objects.slices.get(r))
                    .and_then(|s| s.service.clone());
                // Trigger times of the versions the callback sees (old and new of each change).
                let mut seen: BTreeSet<(ObjectRef, SystemTime)> = BTreeSet::new();
                apply_change(&mut self.objects.slices, change, |r, slice| {
                    if let Some(t) = slice.trigger {
                        seen.insert((r.clone(), t));
                    }
                    if let Some(name) = &slice.service {
                        touched
                            .services
                            .insert(ObjectRef::new(r.namespace.clone(), &**name));
                    }
                });
                // A slice that changed carries the trigger time of its new version (kube-proxy
                // records it for every slice update that changes the slice).
                touched
                    .triggers
                    .extend(seen.into_iter().filter_map(|(r, t)| {
                        (self.objects.slices.get(&r).and_then(|s| s.trigger) == Some(t))
                            .then_some(t)
                    }));
                if resync {
                    self.slice_owners = SliceOwners::build(&self.objects.slices);
                } else if let Some(r) = one {
                    let new_owner = self
                        .objects
                        .slices
                        .get(&r)
                        .and_then(|s| s.service.as_deref());
                    self.slice_owners
                        .update(&r, old_owner.as_deref(), new_owner);
                }
            }
            Delta::Node(change, at) => {
                stamp(at);
                let before = self.node.clone();
                match change {
                    Change::Resync(mut nodes) => {
                        self.listed.insert("Node");
                        self.node = nodes.pop();
                    }
                    Change::Upsert(n) => self.node = Some(n),
                    Change::Delete(_) => self.node = None,
                }
                let what_counts = |n: &Node| (n.status.clone(), node_zone(n));
                if before.as_ref().map(what_counts) != self.node.as_ref().map(what_counts) {
                    touched.node = true;
                }
            }
            Delta::WatchError { .. } => {}
        }
    }
}

/// Applies `change` (objects with their references) to `map`, calling `touched` with every
/// object (old and new state) that differs, so both the Service a slice used to name and the
/// one it names now are re-planned.
fn apply_change<V: PartialEq>(
    map: &mut BTreeMap<ObjectRef, V>,
    change: Change<(ObjectRef, V)>,
    mut touched: impl FnMut(&ObjectRef, &V),
) {
    match change {
        Change::Upsert((r, obj)) => {
            if let Some(old) = map.get(&r) {
                if *old == obj {
                    return;
                }
                touched(&r, old);
            }
            touched(&r, &obj);
            map.insert(r, obj);
        }
        Change::Delete((r, _)) => {
            if let Some(old) = map.remove(&r) {
                touched(&r, &old);
            }
        }
        Change::Resync(all) => {
            let new: BTreeMap<ObjectRef, V> = all.into_iter().collect();
            for (r, old) in map.iter() {
                if new.get(r) != Some(old) {
                    touched(r, old);
                }
            }
            for (r, obj) in &new {
                if map.get(r) != Some(obj) {
                    touched(r, obj);
                }
            }
            *map = new;
        }
    }
}

/// What the model knows of this node: `flags` (the command line's view: its `node_ips` are
/// `--node-ip`, no zone), plus what its Node object says when the API server is the source:
/// its InternalIP/ExternalIP addresses (merged, de-duplicated, sorted) and its zone.
/// `--manifests` has no Node object, so no zone there (zone hints are then ignored, as on an
/// unlabelled node).
pub fn node_context(flags: &NodeContext, node: Option<&Node>) -> NodeContext {
    let mut ips: BTreeSet<std::net::Ipv4Addr> = flags.node_ips.iter().copied().collect();
    let mut ips6: BTreeSet<std::net::Ipv6Addr> = flags.node_ips6.iter().copied().collect();
    if let Some(node) = node {
        ips.extend(node_addresses(node));
        let (internal6, external6) = node_addresses_by_type6(node);
        ips6.extend(internal6.into_iter().chain(external6));
    }
    NodeContext {
        node_ips: ips.into_iter().collect(),
        node_ips6: ips6.into_iter().collect(),
        zone: node.and_then(node_zone),
        ..flags.clone()
    }
}

/// This node's addresses from its Node object (InternalIP and ExternalIP, IPv4).
pub fn node_addresses(node: &Node) -> Vec<std::net::Ipv4Addr> {
    let (mut all, external) = node_addresses_by_type(node);
    all.extend(external);
    all
}

/// The Node's IPv4 `InternalIP` and `ExternalIP` addresses, each in the object's order.
pub fn node_addresses_by_type(node: &Node) -> (Vec<std::net::Ipv4Addr>, Vec<std::net::Ipv4Addr>) {
    addresses_by_type(node)
}

/// The Node's IPv6 `InternalIP` and `ExternalIP` addresses, each in the object's order (a
/// dual-stack node lists one of each family per type).
pub fn node_addresses_by_type6(node: &Node) -> (Vec<std::net::Ipv6Addr>, Vec<std::net::Ipv6Addr>) {
    addresses_by_type(node)
}

/// The Node's `InternalIP` and `ExternalIP` addresses that parse as `T`.
fn addresses_by_type<T: std::str::FromStr>(node: &Node) -> (Vec<T>, Vec<T>) {
    let of = |kind: &str| -> Vec<T> {
        node.status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == kind)
            .filter_map(|a| a.address.parse().ok())
            .collect()
    };
    (of("InternalIP"), of("ExternalIP"))
}

/// This node's zone: its Node object's [`LABEL_TOPOLOGY_ZONE`] label, `None` when absent or
/// empty.
pub fn node_zone(node: &Node) -> Option<String> {
    node.metadata
        .labels
        .as_ref()?
        .get(LABEL_TOPOLOGY_ZONE)
        .filter(|z| !z.is_empty())
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LABEL_SERVICE_NAME;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(name: &str, ip: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                cluster_ip: Some(ip.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(name: &str, service: &str) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some([(LABEL_SERVICE_NAME.to_string(), service.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: vec![],
            ports: None,
        }
    }

    fn now() -> Instant {
        Instant::now()
    }

    #[test]
    fn nothing_is_ready_until_every_kind_has_listed() {
        let mut store = Store::default();
        let mut t = Touched::default();
        store.apply(
            Delta::services(Change::Resync(vec![]), now()).expect("a named Service"),
            &mut t,
        );
        store.apply(
            Delta::slices(Change::Resync(vec![]), now()).expect("a named slice"),
            &mut t,
        );
        assert!(
            !store.ready(),
            "an empty Service list alone must not allow programming"
        );
        store.apply(Delta::Node(Change::Resync(vec![]), now()), &mut t);
        assert!(store.ready());
    }

    #[test]
    fn relist_touches_only_what_changed() {
        let mut store = Store::default();
        let mut t = Touched::default();
        store.apply(
            Delta::services(
                Change::Resync(vec![svc("a", "10.96.0.1"), svc("b", "10.96.0.2")]),
                now(),
            )
            .expect("a named Service"),
            &mut t,
        );
        let mut t = Touched::default();
        store.apply(
            Delta::services(
                Change::Resync(vec![svc("a", "10.96.0.1"), svc("c", "10.96.0.3")]),
                now(),
            )
            .expect("a named Service"),
            &mut t,
        );
        let names: Vec<_> = t.services.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["b", "c"], "a is unchanged, b deleted, c new");
        assert_eq!(store.objects.services.len(), 2);
    }

    #[test]
    fn a_slice_moving_between_services_touches_both() {
        let mut store = Store::default();
        let mut t = Touched::default();
        store.apply(
            Delta::slices(Change::Upsert(slice("s1", "web")), now()).expect("a named slice"),
            &mut t,
        );
        let mut t = Touched::default();
        store.apply(
            Delta::slices(Change::Upsert(slice("s1", "api")), now()).expect("a named slice"),
            &mut t,
        );
        let names: Vec<_> = t.services.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["api", "web"]);
        assert_eq!(
            store.slice_owners,
            SliceOwners::build(&store.objects.slices)
        );
        let api = ObjectRef::new("default", "api");
        assert_eq!(store.slice_owners.slices_of(&api).count(), 1);
    }

    #[test]
    fn node_context_merges_the_nodes_addresses_of_both_families() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-a"},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "172.18.0.2"},
                {"type": "InternalIP", "address": "fd00:18::2"},
                {"type": "ExternalIP", "address": "2001:db8::2"},
                {"type": "Hostname", "address": "node-a"},
            ]},
        }))
        .expect("Node");
        let flags = NodeContext {
            node_ips: vec!["172.18.0.9".parse().expect("IPv4")],
            node_ips6: vec!["fd00:18::9".parse().expect("IPv6")],
            ..NodeContext::default()
        };
        let ctx = node_context(&flags, Some(&node));
        let v6 = |t: &str| t.parse::<std::net::Ipv6Addr>().expect("IPv6");
        assert_eq!(
            ctx.node_ips,
            vec![
                "172.18.0.2".parse::<std::net::Ipv4Addr>().expect("IPv4"),
                "172.18.0.9".parse().expect("IPv4")
            ]
        );
        assert_eq!(
            ctx.node_ips6,
            vec![v6("2001:db8::2"), v6("fd00:18::2"), v6("fd00:18::9")]
        );
        assert_eq!(
            node_addresses_by_type6(&node),
            (vec![v6("fd00:18::2")], vec![v6("2001:db8::2")])
        );
    }

    #[test]
    fn an_unchanged_upsert_touches_nothing() {
        let mut store = Store::default();
        let mut t = Touched::default();
        store.apply(
            Delta::services(Change::Upsert(svc("a", "10.96.0.1")), now()).expect("a named Service"),
            &mut t,
        );
        let mut t = Touched::default();
        store.apply(
            Delta::services(Change::Upsert(svc("a", "10.96.0.1")), now()).expect("a named Service"),
            &mut t,
        );
        assert!(t.services.is_empty());
    }

    #[test]
    fn a_change_the_model_does_not_read_touches_nothing() {
        // kube-proxy's caches compare what they keep, not the objects: a new resourceVersion,
        // annotation or targetRef re-plans nothing.
        let mut store = Store::default();
        let mut t = Touched::default();
        let mut s = slice("s1", "web");
        s.endpoints = vec![k8s_openapi::api::discovery::v1::Endpoint {
            addresses: vec!["10.244.1.5".into()],
            ..Default::default()
        }];
        store.apply(
            Delta::services(Change::Upsert(svc("web", "10.96.0.1")), now())
                .expect("a named Service"),
            &mut t,
        );
        store.apply(
            Delta::slices(Change::Upsert(s.clone()), now()).expect("a named slice"),
            &mut t,
        );
        let mut t = Touched::default();
        let mut v = svc("web", "10.96.0.1");
        v.metadata.resource_version = Some("2".into());
        v.metadata.annotations = Some([("note".to_string(), "x".to_string())].into());
        store.apply(
            Delta::services(Change::Upsert(v), now()).expect("a named Service"),
            &mut t,
        );
        s.metadata.resource_version = Some("2".into());
        s.endpoints[0].target_ref = Some(k8s_openapi::api::core::v1::ObjectReference {
            name: Some("web-1".into()),
            ..Default::default()
        });
        store.apply(
            Delta::slices(Change::Upsert(s.clone()), now()).expect("a named slice"),
            &mut t,
        );
        assert!(t.services.is_empty(), "{:?}", t.services);
        // What the model reads does touch.
        s.endpoints[0].addresses = vec!["10.244.1.6".into()];
        store.apply(
            Delta::slices(Change::Upsert(s), now()).expect("a named slice"),
            &mut t,
        );
        assert_eq!(t.services.len(), 1);
    }

    #[test]
    fn deleting_a_slice_touches_its_service() {
        let mut store = Store::default();
        let mut t = Touched::default();
        store.apply(
            Delta::slices(Change::Upsert(slice("s1", "web")), now()).expect("a named slice"),
            &mut t,
        );
        let mut t = Touched::default();
        store.apply(
            Delta::slices(Change::Delete(slice("s1", "web")), now()).expect("a named slice"),
            &mut t,
        );
        assert_eq!(
            t.services
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["web"]
        );
        assert!(store.objects.slices.is_empty());
        assert_eq!(store.slice_owners, SliceOwners::default());
    }

    #[test]
    fn a_zone_label_change_touches_the_node_and_other_labels_do_not() {
        let node = |labels: &[(&str, &str)]| Node {
            metadata: ObjectMeta {
                name: Some("node-a".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut store = Store::default();
        let mut t = Touched::default();
        store.apply(Delta::Node(Change::Upsert(node(&[])), now()), &mut t);
        assert_eq!(store.node.as_ref().and_then(node_zone), None);
        for (labels, touches, zone) in [
            (vec![(LABEL_TOPOLOGY_ZONE, "zone-a")], true, Some("zone-a")),
            (
                vec![(LABEL_TOPOLOGY_ZONE, "zone-a"), ("team", "x")],
                false,
                Some("zone-a"),
            ),
            (vec![(LABEL_TOPOLOGY_ZONE, "zone-b")], true, Some("zone-b")),
            (vec![(LABEL_TOPOLOGY_ZONE, "")], true, None),
        ] {
            let mut t = Touched::default();
            store.apply(Delta::Node(Change::Upsert(node(&labels)), now()), &mut t);
            assert_eq!(t.node, touches, "{labels:?}");
            assert_eq!(
                store.node.as_ref().and_then(node_zone).as_deref(),
                zone,
                "{labels:?}"
            );
        }
    }

    #[test]
    fn changed_slices_report_their_trigger_time_once() {
        let with_trigger = |name: &str, t: &str, port: i32| {
            let mut s = slice(name, "web");
            s.metadata.annotations =
                Some([(LAST_CHANGE_TRIGGER_TIME.to_string(), t.to_string())].into());
            s.ports = Some(vec![k8s_openapi::api::discovery::v1::EndpointPort {
                port: Some(port),
                ..Default::default()
            }]);
            s
        };
        // Seconds since the epoch, written out so the parsing is checked, not repeated.
        let at = |ms: u64| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        let mut store = Store::default();
        let mut t = Touched::default();
        let first = with_trigger("a", "2025-12-01T02:00:00Z", 80);
        store.apply(
            Delta::slices(Change::Resync(vec![first.clone()]), now()).expect("a named slice"),
            &mut t,
        );
        assert_eq!(t.triggers, [at(1_764_554_400_000)]);
        // The same slice again (a relist): no change, no trigger.
        let mut t = Touched::default();
        store.apply(
            Delta::slices(Change::Resync(vec![first]), now()).expect("a named slice"),
            &mut t,
        );
        assert!(t.triggers.is_empty());
        // An update: the new version's trigger time only.
        let mut t = Touched::default();
        let second = with_trigger("a", "2025-12-01T02:00:05.5Z", 81);
        store.apply(
            Delta::slices(Change::Upsert(second), now()).expect("a named slice"),
            &mut t,
        );
        assert_eq!(t.triggers, [at(1_764_554_405_500)]);
        // No annotation, or a malformed one: nothing to measure.
        let mut t = Touched::default();
        store.apply(
            Delta::slices(Change::Upsert(with_trigger("b", "yesterday", 80)), now())
                .expect("a named slice"),
            &mut t,
        );
        store.apply(
            Delta::slices(Change::Upsert(slice("c", "web")), now()).expect("a named slice"),
            &mut t,
        );
        assert!(t.triggers.is_empty());
        assert!(t.services.contains(&ObjectRef::new("default", "web")));
    }
}
