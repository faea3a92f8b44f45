//! Full service maps and one oversized Service, end to end (needs root).
//!
//! One node runs a client pod and two backends. Valid Services sit beside one that is a
//! mistake or a hostile tenant: 3 000 ports, one EndpointSlice with 5 000 endpoints and 100
//! ports (100 × 5 000 slots and backends, more than a Service may take). Before the budget
//! (`svc_core::budget`), the agent's first plan failed with E2BIG on `SVC_BACKENDS` and wrote
//! nothing after it: 0 frontends, every Service of the node unreachable. Now the valid Services
//! are programmed and served, the offender is refused and named (log, metric), and with maps
//! sized small enough to fill, a full map still applies removals and lets a refused Service in
//! as soon as space returns. The same over IPv6, whose maps have budgets of their own: an
//! IPv6 offender beside dual-stack and IPv6 Services in the dual-stack topology.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use svc_common::PROTO_TCP;
use svc_testkit::{
    agent::{fkey, ready_endpoints_yaml, Agent, ManifestDir},
    probe::Summary,
    topology::{require_root, NsChild, Topology, TopologySpec},
};

/// A ClusterIP Service `name` at `ip` with `ports` TCP ports from 80 up, target 8080 up.
fn service_yaml(name: &str, ip: &str, ports: u16) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  type: ClusterIP\n  clusterIP: {ip}\n  ports:\n"
    );
    for i in 0..ports {
        let _ = write!(
            yaml,
            "    - name: p{i}\n      protocol: TCP\n      port: {}\n      targetPort: {}\n",
            80 + i,
            8080 + i
        );
    }
    yaml
}

/// `name`'s EndpointSlice: `endpoints` on ports 8080 up (`ports` of them, named as the
/// Service's).
fn slice_yaml(name: &str, ports: u16, endpoints: &[(String, usize)]) -> String {
    slice_yaml_of(name, "1", "IPv4", ports, endpoints)
}

/// [`slice_yaml`] named `{name}-{suffix}`, of address type `family`.
fn slice_yaml_of(
    name: &str,
    suffix: &str,
    family: &str,
    ports: u16,
    endpoints: &[(String, usize)],
) -> String {
    let mut yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{suffix}\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\n\
         addressType: {family}\nports:\n"
    );
    for i in 0..ports {
        let _ = write!(
            yaml,
            "  - name: p{i}\n    protocol: TCP\n    port: {}\n",
            8080 + i
        );
    }
    yaml.push_str("endpoints:\n");
    yaml.push_str(&ready_endpoints_yaml(endpoints));
    yaml
}

struct Scene {
    _servers: Vec<NsChild>,
    manifests: ManifestDir,
    t: Topology,
}

impl Scene {
    fn start() -> Self {
        Self::start_with(false)
    }

    /// The scene, in the dual-stack topology when `dual`.
    fn start_with(dual: bool) -> Self {
        let t = Topology::build(
            &TopologySpec::new()
                .node(&["client", "be1", "be2"])
                .dual_stack(dual),
        )
        .expect("building the topology");
        let servers = t
            .serve(&["be1", "be2"], &["--tcp", "8080"])
            .expect("starting the backend servers");
        let manifests = ManifestDir::new(&t).expect("manifest dir");
        Self {
            _servers: servers,
            manifests,
            t,
        }
    }

    fn endpoints(&self, pods: &[&str]) -> Vec<(String, usize)> {
        pods.iter()
            .map(|p| (self.t.pod_ip(p).to_string(), 1))
            .collect()
    }

    /// Writes Service `name` (one port, 80 → 8080) with `pods` as endpoints.
    fn write_small(&self, name: &str, ip: &str, ports: u16, pods: &[&str]) {
        self.manifests
            .write(&format!("{name}.yaml"), &service_yaml(name, ip, ports))
            .unwrap();
        self.manifests
            .write(
                &format!("{name}-slice.yaml"),
                &slice_yaml(name, ports, &self.endpoints(pods)),
            )
            .unwrap();
    }

    fn tcp(&self, target: &str, count: u32) -> Summary {
        Summary::tcp_from(&self.t, self.t.pod_ns("client"), target, count)
            .expect("running the client")
    }
}

fn assert_all_ok(s: &Summary, count: u64, what: &str) {
    assert_eq!(s.ok, count, "{what}: {s:?}");
}

/// Valid `web` and `api` beside the offender: 3 000 ports; one slice of 5 000 endpoints
/// (never sent to) and 100 ports.
fn oversized_scene() -> Scene {
    let scene = Scene::start();
    scene.write_small("web", "10.96.0.10", 1, &["be1", "be2"]);
    scene.write_small("api", "10.96.0.11", 1, &["be2"]);
    let hostile_eps: Vec<(String, usize)> = (0..5000u32)
        .map(|i| (format!("10.201.{}.{}", i / 250, 1 + i % 250), 1))
        .collect();
    scene
        .manifests
        .write("hostile.yaml", &service_yaml("hostile", "10.96.0.50", 3000))
        .unwrap();
    scene
        .manifests
        .write(
            "hostile-slice.yaml",
            &slice_yaml("hostile", 100, &hostile_eps),
        )
        .unwrap();
    scene
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn an_oversized_service_is_refused_and_every_valid_service_is_served() {
    require_root();
    let scene = oversized_scene();
    let mut agent = Agent::start(&scene.t, 1, scene.manifests.path(), &[]).expect("agent");
    let want = BTreeMap::from([
        (fkey([10, 96, 0, 10], 80, PROTO_TCP), 2),
        (fkey([10, 96, 0, 11], 80, PROTO_TCP), 1),
    ]);
    agent
        .wait_frontends(&want, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log()));
    let frontends = agent.frontends().unwrap();
    assert_eq!(
        frontends
            .keys()
            .filter(|k| k.addr == [10, 96, 0, 50])
            .count(),
        0,
        "nothing of the offender is programmed"
    );
    assert_eq!(frontends.len(), 2);
    assert_all_ok(&scene.tcp("10.96.0.10:80", 20), 20, "web");
    assert_all_ok(&scene.tcp("10.96.0.11:80", 20), 20, "api");

    let log = agent.log();
    let refusal = log
        .lines()
        .find(|l| l.contains("refused: Service default/hostile"))
        .unwrap_or_else(|| panic!("the offender is named in the log:\n{log}"));
    assert!(
        refusal.contains("endpoints: needs 500000 entries of SVC_SLOTS"),
        "{refusal}"
    );
    assert_eq!(
        agent.metric(&scene.t, "svc_services_refused").unwrap(),
        1.0,
        "refused Services metric"
    );
    assert!(
        !log.contains("E2BIG") && !log.contains("Argument list too long"),
        "no write failed:\n{log}"
    );
    agent.stop().unwrap();
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn a_full_map_applies_removals_and_lets_a_refused_service_in_when_space_returns() {
    require_root();
    let scene = Scene::start();
    scene.write_small("web", "10.96.0.10", 1, &["be1", "be2"]);
    // 14 ports: with web and api, SVC_FRONTENDS (16) is full.
    scene.write_small("filler", "10.96.0.20", 14, &["be1"]);
    scene.write_small("api", "10.96.0.11", 1, &["be2"]);
    let mut agent = Agent::start(
        &scene.t,
        1,
        scene.manifests.path(),
        &["--max-frontends", "16", "--max-service-share", "100"],
    )
    .expect("agent");
    let mut want = BTreeMap::from([
        (fkey([10, 96, 0, 10], 80, PROTO_TCP), 2),
        (fkey([10, 96, 0, 11], 80, PROTO_TCP), 1),
    ]);
    for p in 0..14 {
        want.insert(fkey([10, 96, 0, 20], 80 + p, PROTO_TCP), 1);
    }
    agent
        .wait_frontends(&want, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log()));

    // One more Service does not fit: refused and reported; the others keep working.
    scene.write_small("late", "10.96.0.30", 1, &["be1"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("refused: Service default/late") {
        assert!(
            std::time::Instant::now() < deadline,
            "late is reported:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent.log().contains("the map is full"), "{}", agent.log());
    assert_eq!(agent.metric(&scene.t, "svc_services_refused").unwrap(), 1.0);
    assert_eq!(agent.frontends().unwrap().len(), 16);
    assert_all_ok(&scene.tcp("10.96.0.10:80", 20), 20, "web while full");

    // Removing filler while the map is full is applied, and late gets in with it.
    scene.manifests.remove("filler.yaml").unwrap();
    scene.manifests.remove("filler-slice.yaml").unwrap();
    let want = BTreeMap::from([
        (fkey([10, 96, 0, 10], 80, PROTO_TCP), 2),
        (fkey([10, 96, 0, 11], 80, PROTO_TCP), 1),
        (fkey([10, 96, 0, 30], 80, PROTO_TCP), 1),
    ]);
    agent
        .wait_frontends(&want, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log()));
    assert_eq!(agent.frontends().unwrap().len(), 3, "filler is gone");
    let late = scene.tcp("10.96.0.30:80", 20);
    assert_all_ok(&late, 20, "late once space returned");
    assert_eq!(late.by_backend.get("be1").copied(), Some(20));
    assert_all_ok(&scene.tcp("10.96.0.11:80", 20), 20, "api");
    assert_eq!(agent.metric(&scene.t, "svc_services_refused").unwrap(), 0.0);
    agent.stop().unwrap();
}

/// IPv6: `web` dual-stack and `api` IPv6-only beside an IPv6-only offender of the same size
/// as `hostile` (3 000 ports, 5 000 IPv6 endpoints × 100 ports). The IPv6 maps have budgets of
/// their own (`SVC_FRONTENDS6`, `SVC_BACKENDS6`; the slots are shared): the offender is refused
/// and named, nothing of it is programmed, and both families of the valid Services are served.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn an_oversized_ipv6_service_is_refused_and_every_valid_service_is_served() {
    require_root();
    let scene = Scene::start_with(true);
    let m = &scene.manifests;
    let ipv6 = |yaml: String, ips: &str| {
        yaml.replace("  type: ClusterIP\n", &format!("  type: ClusterIP\n{ips}"))
    };
    let eps6 = |pods: &[&str]| -> Vec<(String, usize)> {
        pods.iter()
            .map(|p| (scene.t.pod_ip6(p).to_string(), 1))
            .collect()
    };
    m.write(
        "web.yaml",
        &ipv6(
            service_yaml("web", "10.96.0.10", 1),
            "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  \
             clusterIPs: [10.96.0.10, \"fd00:10:96::10\"]\n",
        ),
    )
    .unwrap();
    m.write(
        "web-slice.yaml",
        &slice_yaml("web", 1, &scene.endpoints(&["be1", "be2"])),
    )
    .unwrap();
    m.write(
        "web-slice6.yaml",
        &slice_yaml_of("web", "6", "IPv6", 1, &eps6(&["be1", "be2"])),
    )
    .unwrap();
    m.write(
        "api.yaml",
        &service_yaml("api", "\"fd00:10:96::11\"", 1).replace(
            "  type: ClusterIP\n",
            "  type: ClusterIP\n  ipFamilies: [IPv6]\n",
        ),
    )
    .unwrap();
    m.write(
        "api-slice6.yaml",
        &slice_yaml_of("api", "6", "IPv6", 1, &eps6(&["be2"])),
    )
    .unwrap();
    let hostile_eps: Vec<(String, usize)> = (0..5000u32)
        .map(|i| (format!("fd00:201::{:x}", i + 1), 1))
        .collect();
    m.write(
        "hostile6.yaml",
        &service_yaml("hostile6", "\"fd00:10:96::50\"", 3000).replace(
            "  type: ClusterIP\n",
            "  type: ClusterIP\n  ipFamilies: [IPv6]\n",
        ),
    )
    .unwrap();
    m.write(
        "hostile6-slice.yaml",
        &slice_yaml_of("hostile6", "6", "IPv6", 100, &hostile_eps),
    )
    .unwrap();
    let mut agent = Agent::start(&scene.t, 1, m.path(), &[]).expect("agent");
    agent
        .wait_frontends(
            &BTreeMap::from([(fkey([10, 96, 0, 10], 80, PROTO_TCP), 2)]),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = agent.log();
        if log.contains("refused: Service default/hostile6") {
            assert!(
                !log.contains("E2BIG") && !log.contains("Argument list too long"),
                "no write failed:\n{log}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the IPv6 offender is named in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let snap = agent.snapshot().unwrap();
    let offender: std::net::Ipv6Addr = "fd00:10:96::50".parse().unwrap();
    assert!(
        !snap
            .frontends6
            .keys()
            .any(|k| std::net::Ipv6Addr::from(k.addr) == offender),
        "nothing of the IPv6 offender is programmed"
    );
    assert_eq!(snap.frontends6.len(), 2, "web's and api's IPv6 frontends");
    assert_all_ok(&scene.tcp("[fd00:10:96::10]:80", 20), 20, "web over IPv6");
    assert_all_ok(&scene.tcp("10.96.0.10:80", 20), 20, "web over IPv4");
    assert_all_ok(&scene.tcp("[fd00:10:96::11]:80", 20), 20, "api over IPv6");
    assert_eq!(
        agent.metric(&scene.t, "svc_services_refused").unwrap(),
        1.0,
        "refused Services metric"
    );
    agent.stop().unwrap();
}

/// The control: with the budget switched off (`--fault-inject no-budget`) the same objects
/// leave the valid Services unprogrammed — the failure the test above guards against.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn without_the_budget_the_oversized_service_takes_every_service_down() {
    require_root();
    let scene = oversized_scene();
    let mut agent = Agent::start(
        &scene.t,
        1,
        scene.manifests.path(),
        &["--fault-inject", "no-budget"],
    )
    .expect("agent");
    agent.wait_loaded().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !agent.log().contains("E2BIG") && !agent.log().contains("Argument list too long") {
        assert!(
            std::time::Instant::now() < deadline,
            "the plan must fail on a full map:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let frontends = agent.frontends().unwrap();
    let served = [[10, 96, 0, 10], [10, 96, 0, 11]]
        .iter()
        .filter(|ip| frontends.keys().any(|k| k.addr == **ip))
        .count();
    assert!(
        served < 2,
        "without the budget, the valid Services are not both programmed"
    );
    assert!(
        scene.tcp("10.96.0.10:80", 5).ok + scene.tcp("10.96.0.11:80", 5).ok < 10,
        "and not both served"
    );
}
