//! kube-proxy's operational interface, end to end (needs root): an agent following the fake
//! API server in a node namespace answers kube-proxy's `/healthz` and `/livez` on
//! `--healthz-bind-address` (0.0.0.0:10256) with kube-proxy's JSON, reports a node tainted for
//! deletion on `/healthz` only, exports kube-proxy's metrics (network programming latency from
//! the EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time`), and, when it stops
//! writing the maps (`--fault-inject stall-programming`), turns 503 within 2 × `--sync-period`
//! on both routes and on the `healthCheckNodePort` (`serviceProxyHealthy: false`).
//!
//! Every request is made from inside the node's namespace, to the agent's bind addresses there.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use svc_testkit::{
    agent::{http_get, node_name, Agent, ManifestDir},
    apiserver::ApiServer,
    topology::{require_root, Topology, TopologySpec},
};

/// `--sync-period` for these agents: the health timeout is twice this.
const SYNC_PERIOD: Duration = Duration::from_secs(1);
const HEALTH_CHECK_PORT: u16 = 32100;

struct Scene {
    api: ApiServer,
    kubeconfig: std::path::PathBuf,
    _dir: ManifestDir,
    t: Topology,
}

impl Scene {
    fn start() -> Self {
        let t =
            Topology::build(&TopologySpec::new().node(&["be1"])).expect("building the topology");
        let dir = ManifestDir::new(&t).unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let api = ApiServer::start_in_underlay(&t, &kubeconfig).expect("starting the API server");
        let s = Self {
            api,
            kubeconfig,
            _dir: dir,
            t,
        };
        s.api.apply_value(s.node(false)).unwrap();
        s.api
            .apply_value(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {
                    "type": "LoadBalancer",
                    "clusterIP": "10.96.0.20",
                    "externalTrafficPolicy": "Local",
                    "healthCheckNodePort": HEALTH_CHECK_PORT,
                    "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}]
                }
            }))
            .unwrap();
        s.api.apply_value(s.slice(8080, None)).unwrap();
        s
    }

    /// This node's Node object, tainted for deletion by the Cluster Autoscaler or not.
    fn node(&self, to_be_deleted: bool) -> Value {
        let taints = if to_be_deleted {
            json!([{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}])
        } else {
            json!([])
        };
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node_name(1)},
            "spec": {"taints": taints},
            "status": {"addresses": [{"type": "InternalIP", "address": self.t.node_ip(1).to_string()}]}
        })
    }

    /// `web`'s slice: be1 on `port`, with a last-change-trigger-time when given.
    fn slice(&self, port: u16, trigger: Option<SystemTime>) -> Value {
        let mut annotations = serde_json::Map::new();
        if let Some(t) = trigger {
            let ts = k8s_openapi::jiff::Timestamp::try_from(t).unwrap();
            annotations.insert(
                "endpoints.kubernetes.io/last-change-trigger-time".into(),
                ts.to_string().into(),
            );
        }
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": "web-1", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"},
                "annotations": annotations
            },
            "addressType": "IPv4",
            "ports": [{"port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [self.t.pod_ip("be1").to_string()], "nodeName": node_name(1)}]
        })
    }

    fn agent(&self, extra: &[&str]) -> Agent {
        let period = format!("{}s", SYNC_PERIOD.as_secs());
        let mut args = vec!["--sync-period", period.as_str()];
        args.extend_from_slice(extra);
        let mut agent =
            Agent::start_kube(&self.t, 1, &self.kubeconfig, &args).expect("starting the agent");
        agent
            .wait_healthy(&self.t, Duration::from_secs(20))
            .unwrap();
        agent
    }

    /// GET from the healthCheckNodePort, at the node's address inside its namespace.
    fn health_check(&self) -> (u16, Value) {
        let addr = format!("{}:{HEALTH_CHECK_PORT}", self.t.node_ip(1));
        let (code, body) = http_get(&self.t, &self.t.node(1).ns, &addr, "/").unwrap();
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

/// Go's `time.Time.String()` without the monotonic part: `2025-12-01 02:02:12.5 +0000 UTC`.
fn is_go_time(text: &str) -> bool {
    let Some(rest) = text.strip_suffix(" +0000 UTC") else {
        return false;
    };
    let (date_time, frac) = rest.split_once('.').unwrap_or((rest, "0"));
    let shape = date_time
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect::<String>();
    shape == "9999-99-99 99:99:99" && !frac.is_empty() && frac.chars().all(|c| c.is_ascii_digit())
}

/// kube-proxy's JSON: exactly `keys`, the times as Go prints them, `nodeEligible` a bool.
fn assert_shape(body: &str, with_node: bool) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let want: &[&str] = if with_node {
        &["currentTime", "lastUpdated", "nodeEligible"]
    } else {
        &["currentTime", "lastUpdated"]
    };
    assert_eq!(keys, want, "{body}");
    for key in ["lastUpdated", "currentTime"] {
        assert!(
            v[key].as_str().is_some_and(is_go_time),
            "{key} is not a Go time: {body}"
        );
    }
    if with_node {
        assert!(v["nodeEligible"].is_boolean(), "{body}");
    }
    v
}

/// Polls `get` until it answers `code`, within `timeout`; returns the body and when.
fn wait_code(
    mut get: impl FnMut() -> (u16, String),
    code: u16,
    timeout: Duration,
) -> (String, Instant) {
    let deadline = Instant::now() + timeout;
    loop {
        let (got, body) = get();
        if got == code {
            return (body, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "no {code} within {timeout:?}; last {got}: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metric_with_samples(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in /metrics:\n{body}"))
}

#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn health_metrics_and_stalled_programming_as_kube_proxy_reports_them() {
    require_root();
    let s = Scene::start();
    let t = &s.t;

    // A healthy agent: 200 on both routes, kube-proxy's JSON.
    let agent = s.agent(&[]);
    let get = |path: &str| agent.healthz_get(t, path).unwrap();
    let (code, body) = get("/healthz");
    assert_eq!(code, 200, "{body}");
    let v = assert_shape(&body, true);
    assert_eq!(v["nodeEligible"], true);
    // Healthy: lastUpdated is reported as now (kube-proxy's compatibility rule).
    assert_eq!(v["lastUpdated"], v["currentTime"]);
    let (code, body) = get("/livez");
    assert_eq!(code, 200, "{body}");
    assert_shape(&body, false);
    let (code, hc) = s.health_check();
    assert_eq!(code, 200, "{hc}");
    assert_eq!(hc["serviceProxyHealthy"], true);
    assert_eq!(hc["localEndpoints"], 1);

    // An EndpointSlice change triggered a second ago is measured from its trigger time.
    let triggered = SystemTime::now() - Duration::from_secs(1);
    s.api.apply_value(s.slice(8081, Some(triggered))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (code, body) = agent.http_get(t, "/metrics").unwrap();
        assert_eq!(code, 200);
        let count = body
            .lines()
            .find_map(|l| l.strip_prefix("kubeproxy_network_programming_duration_seconds_count "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if count >= 1.0 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no network programming sample:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let sum = metric_with_samples(
        &metrics,
        "kubeproxy_network_programming_duration_seconds_sum",
    );
    assert!(
        (1.0..10.0).contains(&sum),
        "programmed {sum} s after a trigger 1 s old"
    );
    assert!(
        metric_with_samples(
            &metrics,
            "kubeproxy_sync_proxy_rules_duration_seconds_count"
        ) >= 1.0
    );
    let last = metric_with_samples(
        &metrics,
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 60.0..=now + 1.0).contains(&last),
        "last sync {last}, now {now}"
    );
    assert!(metrics.contains("kubeproxy_proxy_healthz_total{code=\"200\"}"));
    assert!(metrics
        .lines()
        .any(|l| l.starts_with("svc_map_writes_total ")));

    // A node tainted for deletion: /healthz says so, /livez does not care.
    s.api.apply_value(s.node(true)).unwrap();
    let (body, _) = wait_code(|| get("/healthz"), 503, Duration::from_secs(10));
    assert_eq!(assert_shape(&body, true)["nodeEligible"], false);
    assert_eq!(get("/livez").0, 200);
    s.api.apply_value(s.node(false)).unwrap();
    wait_code(|| get("/healthz"), 200, Duration::from_secs(10));
    let mut agent = agent;
    agent.stop().unwrap();
    drop(agent);

    // An agent that stops writing the maps after its first sync: healthy until a change has
    // waited 2 × --sync-period, then 503 everywhere, the health-check port included.
    let agent = s.agent(&["--fault-inject", "stall-programming"]);
    let get = |path: &str| agent.healthz_get(t, path).unwrap();
    assert_eq!(get("/healthz").0, 200);
    assert_eq!(s.health_check().0, 200);
    let changed = Instant::now();
    s.api.apply_value(s.slice(8082, None)).unwrap();
    let timeout = 2 * SYNC_PERIOD;
    let (body, at) = wait_code(|| get("/livez"), 503, timeout + Duration::from_secs(5));
    assert!(
        at - changed >= timeout,
        "503 after {:?}, before the {timeout:?} timeout",
        at - changed
    );
    let v = assert_shape(&body, false);
    assert_ne!(v["lastUpdated"], v["currentTime"], "{body}");
    let (code, body) = get("/healthz");
    assert_eq!(code, 503, "{body}");
    assert_eq!(assert_shape(&body, true)["nodeEligible"], true);
    let (code, hc) = s.health_check();
    assert_eq!(code, 503, "{hc}");
    assert_eq!(hc["serviceProxyHealthy"], false);
    assert_eq!(hc["localEndpoints"], 1);
    assert!(
        agent.log().contains("fault injected: not writing the maps"),
        "{}",
        agent.log()
    );
}
