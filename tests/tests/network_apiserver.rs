//! The API-server source end to end (needs root): agents in node namespaces follow the fake
//! Kubernetes API server (svc_testkit::apiserver) through an ordinary kubeconfig, exactly the code
//! path they take in a cluster. The server listens on 172.18.0.1 in the underlay namespace,
//! where the nodes reach it over their eth0.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Service;
use svc_common::{FrontendKey, PROTO_TCP};
use svc_core::dataplane::fake::canonical;
use svc_testkit::{
    agent::{fkey, node_name, workspace_bin, Agent, ManifestDir},
    apiserver::{ApiServer, Resource},
    probe::{HoldSummary, Summary},
    topology::{require_root, NsChild, Topology, TopologySpec},
};

const PROBE: &str = env!("CARGO_BIN_EXE_svc-probe");

struct KubeScene {
    agents: Vec<Agent>,
    _servers: Vec<NsChild>,
    api: ApiServer,
    kubeconfig: PathBuf,
    _dir: ManifestDir,
    t: Topology,
}

impl KubeScene {
    fn start() -> Self {
        Self::start_with(false)
    }

    /// The scene, in the dual-stack topology when `dual`.
    fn start_with(dual: bool) -> Self {
        let t = Topology::build(
            &TopologySpec::new()
                .node(&["client", "be1"])
                .node(&["be2", "be3"])
                .dual_stack(dual),
        )
        .expect("building the topology");
        let mut servers = Vec::new();
        for be in ["be1", "be2", "be3"] {
            let mut s = t
                .spawn(
                    t.pod_ns(be),
                    &[PROBE, "serve", "--id", be, "--tcp", "8080,9000,30050"],
                )
                .expect("starting a backend server");
            s.wait_for_line(Duration::from_secs(5), |l| l == "ready")
                .unwrap();
            servers.push(s);
        }
        let dir = ManifestDir::new(&t).unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let api = ApiServer::start_in_underlay(&t, &kubeconfig).unwrap();
        for n in 1..=2 {
            api.create_node(&t, n, &[]).unwrap();
        }
        let mut agents = Vec::new();
        for n in 1..=2 {
            let mut agent = Agent::start_kube(&t, n, &kubeconfig, &[]).expect("starting the agent");
            agent.wait_healthy(&t, Duration::from_secs(20)).unwrap();
            agents.push(agent);
        }
        Self {
            agents,
            _servers: servers,
            api,
            kubeconfig,
            _dir: dir,
            t,
        }
    }

    /// kubectl against the fake API server, from the underlay namespace where it listens.
    fn kubectl(&self, args: &[&str]) -> String {
        let mut cmd = vec!["kubectl", "--kubeconfig", self.kubeconfig.to_str().unwrap()];
        cmd.extend_from_slice(args);
        self.t.exec_ok(self.t.underlay_ns(), &cmd).unwrap()
    }

    fn pod_ip(&self, pod: &str) -> String {
        self.t.pod_ip(pod).to_string()
    }

    /// An EndpointSlice for `service` with the named pods' addresses on `port`.
    fn slice(&self, service: &str, name: &str, port: u16, pods: &[&str]) -> String {
        let mut eps = String::new();
        for p in pods {
            let node = self.t.pod(p).node;
            eps.push_str(&format!(
                "  - addresses: [\"{}\"]\n    nodeName: {}\n",
                self.pod_ip(p),
                node_name(node)
            ));
        }
        if pods.is_empty() {
            eps.push_str("  []\n");
        }
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  \
             namespace: default\n  labels:\n    kubernetes.io/service-name: {service}\n\
             addressType: IPv4\nports:\n  - port: {port}\n    protocol: TCP\nendpoints:\n{eps}"
        )
    }

    /// An IPv6 EndpointSlice for `service` with the named pods' IPv6 addresses on `port`.
    fn slice6(&self, service: &str, name: &str, port: u16, pods: &[&str]) -> String {
        let v4 = self.slice(service, name, port, pods);
        let mut v6 = v4.replace("addressType: IPv4", "addressType: IPv6");
        for p in pods {
            v6 = v6.replace(
                &format!("[\"{}\"]", self.pod_ip(p)),
                &format!("[\"{}\"]", self.t.pod_ip6(p)),
            );
        }
        v6
    }

    /// The ClusterIPs the API server gave Service `name`.
    fn cluster_ips(&self, name: &str) -> Vec<String> {
        let svc: Service = self
            .api
            .get("default", name)
            .unwrap()
            .expect("service exists");
        svc.spec.unwrap().cluster_ips.unwrap_or_default()
    }

    /// [`Self::tcp`] until all `count` connections succeed (the agents program what the API
    /// server just got), for at most 20 s; the last summary.
    fn tcp_until_served(&self, target: &str, count: u32) -> Summary {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.tcp(target, count);
            if r.ok == u64::from(count) || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Waits until every agent's frontend map holds exactly `want` (key → backend count).
    fn expect(&mut self, want: &BTreeMap<FrontendKey, u32>) {
        for agent in &mut self.agents {
            agent.wait_frontends(want, Duration::from_secs(20)).unwrap();
        }
    }

    fn tcp(&self, target: &str, count: u32) -> Summary {
        let out = self
            .t
            .exec_ok(
                self.t.pod_ns("client"),
                &[
                    PROBE,
                    "tcp",
                    "--target",
                    target,
                    "--count",
                    &count.to_string(),
                    "--timeout-ms",
                    "2000",
                    "--parallel",
                    "4",
                ],
            )
            .unwrap();
        Summary::from_output(&out).unwrap()
    }

    fn cluster_ip(&self, name: &str) -> [u8; 4] {
        let svc: Service = self
            .api
            .get("default", name)
            .unwrap()
            .expect("service exists");
        let ip: std::net::Ipv4Addr = svc.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
        ip.octets()
    }
}

fn ip_str(a: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(a).to_string()
}

/// The seed document's ClusterIP walkthrough, replayed with kubectl against the fake API
/// server (from inside the underlay namespace, where the server listens).
#[test]
#[cfg_attr(
    any(svc_unprivileged, svc_no_kubectl),
    ignore = "needs root (network namespaces) and kubectl"
)]
fn seed_services_follow_the_api_server() {
    require_root();
    let mut s = KubeScene::start();
    // The seed's manifests, verbatim but for the selector-less Service's hand-written
    // Endpoints (the seed says you must create them; their address is a pod here).
    let dir = s._dir.path().to_owned();
    std::fs::write(
        dir.join("test_app.yml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: test-app\nspec:\n  selector:\n    \
         app: test-app-link\n  ports:\n    - protocol: TCP\n      port: 9000\n      targetPort: 9000\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("test_app_service_no_selector.yml"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: test-app-no-selector\nspec:\n  \
             ports:\n    - protocol: TCP\n      port: 30050\n      targetPort: 30050\n---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: test-app-no-selector\nsubsets:\n  \
             - addresses:\n      - ip: {}\n    ports:\n      - port: 30050\n",
            s.pod_ip("be3")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("test_cluster.ip.yml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: test-cip-service\nspec:\n  type: \
         ClusterIP\n  clusterIP: 10.96.211.115\n  selector:\n    app: test-app-link\n  ports:\n    \
         - protocol: TCP\n      port: 9000\n      targetPort: 9000\n",
    )
    .unwrap();
    for f in [
        "test_app.yml",
        "test_app_service_no_selector.yml",
        "test_cluster.ip.yml",
    ] {
        let out = s.kubectl(&[
            "apply",
            "--validate=false",
            "-f",
            dir.join(f).to_str().unwrap(),
        ]);
        assert!(out.contains("created"), "kubectl apply {f}: {out}");
    }
    let svcs = s.kubectl(&["get", "svc"]);
    assert!(
        svcs.contains("test-cip-service") && svcs.contains("10.96.211.115"),
        "{svcs}"
    );
    // The pods behind the selector: their EndpointSlices (an EndpointSlice controller's job).
    s.api
        .apply_yaml(&s.slice("test-app", "test-app-1", 9000, &["be1", "be2"]))
        .unwrap();
    s.api
        .apply_yaml(&s.slice("test-cip-service", "test-cip-1", 9000, &["be1", "be2"]))
        .unwrap();

    let app_ip = s.cluster_ip("test-app");
    let no_sel_ip = s.cluster_ip("test-app-no-selector");
    let cip = [10, 96, 211, 115];
    let mut want = BTreeMap::from([
        (fkey(app_ip, 9000, PROTO_TCP), 2),
        (fkey(no_sel_ip, 30050, PROTO_TCP), 1),
        (fkey(cip, 9000, PROTO_TCP), 2),
    ]);
    s.expect(&want);
    // `svc-agent trace --service` through the API server (a field-selected list: the agent's
    // ClusterRole allows list, not get). Node 1's tracer for test-cip-service must show that
    // Service's flows only, not test-app's (the same backends and port), which go first below.
    let agent_bin = workspace_bin("svc-agent").unwrap();
    let tracer =
        s.t.spawn_nsenter(
            s.t.underlay_ns(),
            &[
                agent_bin.to_str().unwrap(),
                "trace",
                "--service",
                "default/test-cip-service",
                "--kubeconfig",
                s.kubeconfig.to_str().unwrap(),
                "--bpffs",
                s.agents[0].bpffs().to_str().unwrap(),
                "-o",
                "json",
                "--count",
                "1",
            ],
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !tracer.stderr().contains("tracing in slot") {
        assert!(
            Instant::now() < deadline,
            "tracer did not start: {}",
            tracer.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for (ip, port, backends) in [
        (app_ip, 9000, vec!["be1", "be2"]),
        (no_sel_ip, 30050, vec!["be3"]),
        (cip, 9000, vec!["be1", "be2"]),
    ] {
        let target = format!("{}:{port}", ip_str(ip));
        let r = s.tcp(&target, 40);
        assert_eq!((r.ok, r.failed), (40, 0), "{target}: {r:?}");
        assert_eq!(r.reply_from, vec![target.clone()]);
        assert_eq!(
            r.by_backend.keys().map(String::as_str).collect::<Vec<_>>(),
            backends,
            "{target}: {r:?}"
        );
    }
    let traced = tracer.finish(Duration::from_secs(10)).unwrap();
    assert!(traced.status.success(), "tracer: {}", traced.stderr);
    let event: serde_json::Value = serde_json::from_str(
        traced
            .stdout
            .lines()
            .next()
            .unwrap_or_else(|| panic!("no event; stderr: {}", traced.stderr)),
    )
    .unwrap();
    assert_eq!(event["frontend"], "10.96.211.115:9000/TCP", "{event}");
    assert_eq!(event["reason"], "dnat_new", "{event}");

    // Scale up and down.
    s.api
        .apply_yaml(&s.slice("test-app", "test-app-1", 9000, &["be1", "be2", "be3"]))
        .unwrap();
    want.insert(fkey(app_ip, 9000, PROTO_TCP), 3);
    s.expect(&want);
    s.api
        .apply_yaml(&s.slice("test-app", "test-app-1", 9000, &["be2"]))
        .unwrap();
    want.insert(fkey(app_ip, 9000, PROTO_TCP), 1);
    s.expect(&want);
    let r = s.tcp(&format!("{}:9000", ip_str(app_ip)), 20);
    assert_eq!(
        r.by_backend.keys().collect::<Vec<_>>(),
        vec!["be2"],
        "{r:?}"
    );

    // Change the port: the old frontend goes, the new one serves.
    let mut svc: Service = s.api.get("default", "test-app").unwrap().unwrap();
    svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 9001;
    s.api.replace(&svc).unwrap();
    want.remove(&fkey(app_ip, 9000, PROTO_TCP));
    want.insert(fkey(app_ip, 9001, PROTO_TCP), 1);
    s.expect(&want);
    let r = s.tcp(&format!("{}:9001", ip_str(app_ip)), 20);
    assert_eq!((r.ok, r.failed), (20, 0), "{r:?}");

    // Delete and recreate.
    s.kubectl(&["delete", "-f", dir.join("test_app.yml").to_str().unwrap()]);
    want.remove(&fkey(app_ip, 9001, PROTO_TCP));
    s.expect(&want);
    s.kubectl(&[
        "apply",
        "--validate=false",
        "-f",
        dir.join("test_app.yml").to_str().unwrap(),
    ]);
    let app_ip = s.cluster_ip("test-app");
    want.insert(fkey(app_ip, 9000, PROTO_TCP), 1);
    s.expect(&want);
    let r = s.tcp(&format!("{}:9000", ip_str(app_ip)), 20);
    assert_eq!((r.ok, r.failed), (20, 0), "{r:?}");

    // Deleting every Service removes every map entry they owned: frontends, slots, backends.
    for f in [
        "test_app.yml",
        "test_app_service_no_selector.yml",
        "test_cluster.ip.yml",
    ] {
        s.kubectl(&["delete", "-f", dir.join(f).to_str().unwrap()]);
    }
    s.expect(&BTreeMap::new());
    for agent in &s.agents {
        let snap = agent.snapshot().unwrap();
        assert!(
            snap.frontends.is_empty() && snap.slots.is_empty() && snap.backends.is_empty(),
            "maps must be empty after every Service is deleted: {snap:?}"
        );
    }
}

/// The seed's Services made dual-stack (`ipFamilyPolicy: PreferDualStack` added), applied with
/// kubectl to the fake API server, which allocates an IPv6 ClusterIP beside the IPv4 one (and
/// beside the user-chosen 10.96.211.115), in the dual-stack topology. IPv6 EndpointSlices
/// beside the IPv4 ones, as the EndpointSlice controller writes one per family. Both families
/// serve both backends; a scaled IPv6 slice changes IPv6 only; deleting the Service removes
/// both families' frontends. The selector-less Service keeps its hand-written IPv4 Endpoints.
#[test]
#[cfg_attr(
    any(svc_unprivileged, svc_no_kubectl),
    ignore = "needs root (network namespaces) and kubectl"
)]
fn dual_stack_seed_services_follow_the_api_server() {
    require_root();
    let s = KubeScene::start_with(true);
    let dir = s._dir.path().to_owned();
    let dual = "  ipFamilyPolicy: PreferDualStack\n";
    std::fs::write(
        dir.join("test_app.yml"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: test-app\nspec:\n{dual}  selector:\n    \
             app: test-app-link\n  ports:\n    - protocol: TCP\n      port: 9000\n      targetPort: 9000\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("test_cluster.ip.yml"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: test-cip-service\nspec:\n  type: \
             ClusterIP\n{dual}  clusterIP: 10.96.211.115\n  selector:\n    app: test-app-link\n  ports:\n    \
             - protocol: TCP\n      port: 9000\n      targetPort: 9000\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("test_app_service_no_selector.yml"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: test-app-no-selector\nspec:\n  \
             ports:\n    - protocol: TCP\n      port: 30050\n      targetPort: 30050\n---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: test-app-no-selector\nsubsets:\n  \
             - addresses:\n      - ip: {}\n    ports:\n      - port: 30050\n",
            s.pod_ip("be3")
        ),
    )
    .unwrap();
    for f in [
        "test_app.yml",
        "test_app_service_no_selector.yml",
        "test_cluster.ip.yml",
    ] {
        let out = s.kubectl(&[
            "apply",
            "--validate=false",
            "-f",
            dir.join(f).to_str().unwrap(),
        ]);
        assert!(out.contains("created"), "kubectl apply {f}: {out}");
    }
    for (svc, slice) in [("test-app", "test-app"), ("test-cip-service", "test-cip")] {
        s.api
            .apply_yaml(&s.slice(svc, &format!("{slice}-1"), 9000, &["be1", "be2"]))
            .unwrap();
        s.api
            .apply_yaml(&s.slice6(svc, &format!("{slice}-6"), 9000, &["be1", "be2"]))
            .unwrap();
    }
    let app = s.cluster_ips("test-app");
    let cip = s.cluster_ips("test-cip-service");
    assert_eq!(app.len(), 2, "test-app is dual-stack: {app:?}");
    assert_eq!(cip[0], "10.96.211.115", "{cip:?}");
    assert_eq!(cip.len(), 2, "test-cip-service is dual-stack: {cip:?}");
    for ips in [&app, &cip] {
        assert!(
            ips[1].starts_with("fd00:10:96::"),
            "an IPv6 ClusterIP from the IPv6 range: {ips:?}"
        );
    }
    let targets = |ips: &[String]| [format!("{}:9000", ips[0]), format!("[{}]:9000", ips[1])];
    for target in targets(&app).iter().chain(&targets(&cip)) {
        let r = s.tcp_until_served(target, 40);
        assert_eq!((r.ok, r.failed), (40, 0), "{target}: {r:?}");
        assert_eq!(r.reply_from, vec![target.clone()], "{target}: {r:?}");
        assert_eq!(
            r.by_backend.keys().map(String::as_str).collect::<Vec<_>>(),
            ["be1", "be2"],
            "{target}: {r:?}"
        );
    }
    let no_sel = format!("{}:30050", s.cluster_ips("test-app-no-selector")[0]);
    let r = s.tcp_until_served(&no_sel, 20);
    assert_eq!((r.ok, r.failed), (20, 0), "{no_sel}: {r:?}");

    // Scale the IPv6 slice down: IPv6 follows, IPv4 keeps both.
    s.api
        .apply_yaml(&s.slice6("test-app", "test-app-6", 9000, &["be2"]))
        .unwrap();
    let [app4, app6] = targets(&app);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = s.tcp(&app6, 20);
        if r.ok == 20 && r.by_backend.keys().collect::<Vec<_>>() == ["be2"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{app6} still not be2 only: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let r = s.tcp(&app4, 40);
    assert_eq!(
        r.by_backend.keys().map(String::as_str).collect::<Vec<_>>(),
        ["be1", "be2"],
        "{app4}: {r:?}"
    );

    // Delete test-app: both families' frontends go.
    s.kubectl(&["delete", "-f", dir.join("test_app.yml").to_str().unwrap()]);
    let v6: std::net::Ipv6Addr = app[1].parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    'agents: for agent in &s.agents {
        loop {
            let snap = agent.snapshot().unwrap();
            let v6_left = snap
                .frontends6
                .keys()
                .any(|k| std::net::Ipv6Addr::from(k.addr) == v6);
            let v4_left = snap.frontends.keys().any(|k| ip_str(k.addr) == app[0]);
            if !v6_left && !v4_left {
                continue 'agents;
            }
            assert!(
                Instant::now() < deadline,
                "node {}: test-app's frontends remain (IPv4 {v4_left}, IPv6 {v6_left})",
                agent.node
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // The other Service's IPv6 frontend still serves.
    let r = s.tcp(&targets(&cip)[1], 20);
    assert_eq!((r.ok, r.failed), (20, 0), "{r:?}");
}

/// The API server drops the watches, expires them (410), and goes away for 30 s; changes made
/// meanwhile arrive, forwarding never stops, and the maps end equal to a fresh agent's.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn watch_faults_never_stop_forwarding_and_converge() {
    require_root();
    let mut s = KubeScene::start();
    let web = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  \
               clusterIP: 10.96.0.10\n  ports:\n    - {port: 80, targetPort: 8080, protocol: TCP}\n";
    s.api.apply_yaml(web).unwrap();
    s.api
        .apply_yaml(&s.slice("web", "web-1", 8080, &["be1", "be2", "be3"]))
        .unwrap();
    let vip = [10, 96, 0, 10];
    s.expect(&BTreeMap::from([(fkey(vip, 80, PROTO_TCP), 3)]));

    let mut hold =
        s.t.spawn(
            s.t.pod_ns("client"),
            &[
                PROBE,
                "hold",
                "--target",
                "10.96.0.10:80",
                "--conns",
                "20",
                "--duration-s",
                "120",
                "--interval-ms",
                "200",
            ],
        )
        .unwrap();
    hold.wait_for_line(Duration::from_secs(10), |l| l == "ready")
        .unwrap();

    // 1. Watches dropped mid-stream: resumed from their resourceVersion.
    s.api.drop_watches();
    s.api
        .apply_yaml(&s.slice("web", "web-1", 8080, &["be1", "be2"]))
        .unwrap();
    s.expect(&BTreeMap::from([(fkey(vip, 80, PROTO_TCP), 2)]));

    // 2. 410 Expired: the watchers relist, applied as one diff.
    let lists = s.api.requests(Resource::EndpointSlices).lists;
    s.api.expire_watches();
    s.api
        .apply_yaml(&s.slice("web", "web-1", 8080, &["be1", "be2", "be3"]))
        .unwrap();
    s.expect(&BTreeMap::from([(fkey(vip, 80, PROTO_TCP), 3)]));
    assert!(
        s.api.requests(Resource::EndpointSlices).lists > lists,
        "a 410 must cause a relist"
    );

    // 3. Gone for 30 s; changes made meanwhile; traffic keeps flowing on what is programmed.
    s.api.go_away();
    let outage = Instant::now();
    s.api
        .apply_yaml(&s.slice("web", "web-1", 8080, &["be3"]))
        .unwrap();
    s.api
        .apply_yaml(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: late\n  namespace: default\nspec:\n  \
             clusterIP: 10.96.0.20\n  ports:\n    - {port: 80, targetPort: 8080, protocol: TCP}\n",
        )
        .unwrap();
    s.api
        .apply_yaml(&s.slice("late", "late-1", 8080, &["be1"]))
        .unwrap();
    let during = s.tcp("10.96.0.10:80", 50);
    assert_eq!(
        (during.ok, during.failed),
        (50, 0),
        "forwarding must not stop during the outage: {during:?}"
    );
    std::thread::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed()));
    s.api.come_back();
    let want = BTreeMap::from([
        (fkey(vip, 80, PROTO_TCP), 1),
        (fkey([10, 96, 0, 20], 80, PROTO_TCP), 1),
    ]);
    // After 30 s of failures each watcher is deep in kube-rs's default backoff (0.8 s doubling
    // to 30 s, with jitter, as client-go's reflectors back off for kube-proxy): its next try
    // can be up to ~30 s away. The agent keeps that standard backoff (thousands of nodes must
    // not hammer a recovering API server); the test gives it that long.
    for agent in &mut s.agents {
        agent
            .wait_frontends(&want, Duration::from_secs(60))
            .unwrap();
    }

    hold.signal(libc::SIGTERM).unwrap();
    let done = hold.finish(Duration::from_secs(20)).unwrap();
    let summary = HoldSummary::from_output(&done.stdout).unwrap();
    assert_eq!(
        (summary.broken, summary.failed),
        (0, 0),
        "long-lived connections across all faults: {summary:?}"
    );

    // The maps equal those of an agent started now from scratch on the same node (compared
    // without ids; backends' `local` flag is per node).
    for agent in &s.agents {
        let tag = format!("fresh{}", agent.node);
        let mut fresh = Agent::start_reference_kube(&s.t, agent.node, &s.kubeconfig, &tag).unwrap();
        fresh
            .wait_frontends(&want, Duration::from_secs(20))
            .unwrap();
        assert_eq!(
            canonical(&agent.snapshot().unwrap()),
            canonical(&fresh.snapshot().unwrap()),
            "agent on node {} vs a fresh agent there",
            agent.node
        );
    }
}
