//! The fake API server (`svc_testkit::apiserver`) against the clients that will use it: kube-rs's
//! watcher + reflector (what svc-agent runs) and kubectl. Everything listens on 127.0.0.1; no
//! root needed.
//!
//! Convergence checks compare the reflector's cache with the server's objects by
//! `namespace/name → resourceVersion`: equal maps mean the client saw every last write.
// `unused_crate_dependencies` judges each target alone, and a binary or test target sees every
// dependency of its package while it uses a few: the lint is for the libraries.
#![allow(unused_crate_dependencies)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Config, ResourceExt};
use serde_json::Value;
use svc_testkit::apiserver::{ApiServer, Resource};

/// How long convergence may take. Generous: a watcher that backs off after an outage waits
/// up to its backoff cap, and CI shares two cores.
const CONVERGE: Duration = Duration::from_secs(60);

/// A server on 127.0.0.1 and a kube-rs client built from a kubeconfig file, as the agent
/// builds its client.
async fn setup() -> (ApiServer, Client, PathBuf) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let server = ApiServer::start(listener).expect("start fake API server");
    let dir = std::env::temp_dir().join(format!(
        "svclb-apiserver-{}-{}",
        std::process::id(),
        server.addr().port()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).expect("read kubeconfig"),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("kube-rs accepts the kubeconfig");
    let client = Client::try_from(config).expect("client for an http URL without TLS");
    (server, client, kubeconfig)
}

fn service(name: &str, port: i32, labels: &[(&str, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                port,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn slice(name: &str, service: &str, ips: &[&str]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some([("kubernetes.io/service-name".into(), service.into())].into()),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: ips
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![(*ip).into()],
                ..Endpoint::default()
            })
            .collect(),
        ports: None,
    }
}

/// Runs a reflector over `api` on the test runtime; returns its store once the first list
/// is in.
async fn reflect<K>(api: Api<K>, config: watcher::Config) -> Store<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync,
    K: 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    tokio::spawn(stream.for_each(|_| futures::future::ready(())));
    tokio::time::timeout(CONVERGE, reader.wait_until_ready())
        .await
        .expect("initial list in time")
        .expect("reflector running");
    reader
}

fn cache_rvs<K>(store: &Store<K>) -> BTreeMap<String, String>
where
    K: kube::Resource + Clone,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .state()
        .iter()
        .map(|o| {
            (
                format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()),
                o.resource_version().unwrap_or_default(),
            )
        })
        .collect()
}

fn server_rvs(
    server: &ApiServer,
    res: Resource,
    keep: impl Fn(&Value) -> bool,
) -> BTreeMap<String, String> {
    server
        .list_values(res, None)
        .iter()
        .filter(|o| keep(o))
        .map(|o| {
            let m = &o["metadata"];
            (
                format!(
                    "{}/{}",
                    m["namespace"].as_str().unwrap_or(""),
                    m["name"].as_str().unwrap_or("")
                ),
                m["resourceVersion"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Polls `check` every 20 ms until it is true; panics with `what` after [`CONVERGE`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + CONVERGE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn converged<K>(server: &ApiServer, res: Resource, store: &Store<K>)
where
    K: kube::Resource + Clone,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut last = (BTreeMap::new(), BTreeMap::new());
    let check = || {
        last = (server_rvs(server, res, |_| true), cache_rvs(store));
        last.0 == last.1
    };
    let deadline = Instant::now() + CONVERGE;
    let mut check = check;
    while !check() {
        if Instant::now() >= deadline {
            panic!(
                "{res:?}: cache never matched the server\nserver {:?}\ncache  {:?}",
                last.0, last.1
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs blocking fault-injection calls off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

fn run<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn reflectors_converge_through_creates_updates_and_deletes() {
    run(async {
        let (server, client, _) = setup().await;
        server.create(&service("a", 80, &[])).expect("create a");
        server
            .create(&slice("a-1", "a", &["10.244.1.2"]))
            .expect("create a-1");
        let node = Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        server.create(&node).expect("create node");

        let services = reflect(Api::<Service>::all(client.clone()), Default::default()).await;
        let slices = reflect(
            Api::<EndpointSlice>::all(client.clone()),
            Default::default(),
        )
        .await;
        let nodes = reflect(Api::<Node>::all(client.clone()), Default::default()).await;
        converged(&server, Resource::Services, &services).await;
        converged(&server, Resource::EndpointSlices, &slices).await;
        converged(&server, Resource::Nodes, &nodes).await;

        for i in 0..20 {
            server
                .create(&service(&format!("s{i}"), 1000 + i, &[]))
                .expect("create");
        }
        server.replace(&service("a", 81, &[])).expect("update a");
        server
            .delete::<Service>("default", "s3")
            .expect("delete s3");
        server
            .apply(&slice("a-1", "a", &["10.244.1.2", "10.244.2.2"]))
            .expect("update slice");
        server
            .create(&slice("a-2", "a", &["10.244.1.9"]))
            .expect("create a-2");
        server
            .delete::<EndpointSlice>("default", "a-2")
            .expect("delete a-2");
        server.delete::<Node>("", "n1").expect("delete node");
        converged(&server, Resource::Services, &services).await;
        converged(&server, Resource::EndpointSlices, &slices).await;
        converged(&server, Resource::Nodes, &nodes).await;

        let a = services
            .state()
            .into_iter()
            .find(|s| s.name_any() == "a")
            .expect("a cached");
        let spec = a.spec.as_ref().expect("spec");
        assert_eq!(spec.ports.as_ref().expect("ports")[0].port, 81);
        let ip: std::net::Ipv4Addr = spec
            .cluster_ip
            .as_deref()
            .expect("clusterIP allocated")
            .parse()
            .expect("an IPv4 clusterIP");
        assert_eq!(ip.octets()[..2], [10, 96], "allocated from 10.96.0.0/16");
        assert_eq!(
            a.metadata.generation,
            Some(2),
            "spec change bumps generation"
        );
        assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
        // The watchers listed once each and then only watched.
        assert_eq!(server.requests(Resource::Services).lists, 1);
        assert_eq!(server.requests(Resource::Endpoints).lists, 0);
    });
}

#[test]
fn lists_page_by_500_with_continue_tokens() {
    run(async {
        let (server, client, _) = setup().await;
        for i in 0..1203 {
            server
                .create(&service(&format!("p{i:04}"), 80, &[]))
                .expect("create");
        }
        let api = Api::<Service>::namespaced(client.clone(), "default");
        let first = api
            .list(&ListParams::default().limit(500))
            .await
            .expect("page 1");
        assert_eq!(first.items.len(), 500);
        let token = first.metadata.continue_.clone().expect("continue token");
        assert_eq!(first.metadata.remaining_item_count, Some(703));
        // A write between pages is not in the paged result: pages come from one snapshot.
        server.create(&service("p0000x", 80, &[])).expect("create");
        let second = api
            .list(&ListParams::default().limit(500).continue_token(&token))
            .await
            .expect("page 2");
        assert_eq!(second.items.len(), 500);
        assert_eq!(
            second.metadata.resource_version,
            first.metadata.resource_version
        );
        assert!(second.items.iter().all(|s| s.name_any() != "p0000x"));

        let before = server.requests(Resource::Services);
        let services = reflect(Api::<Service>::all(client.clone()), Default::default()).await;
        converged(&server, Resource::Services, &services).await;
        assert_eq!(services.state().len(), 1204);
        let after = server.requests(Resource::Services);
        assert_eq!(after.lists - before.lists, 1, "one list");
        assert_eq!(after.list_pages - before.list_pages, 3, "of three pages");
    });
}

#[test]
fn expired_history_makes_the_watcher_relist() {
    run(async {
        let (server, client, _) = setup().await;
        server.create(&service("a", 80, &[])).expect("create");
        let old_rv = server.resource_version().to_string();
        let services = reflect(Api::<Service>::all(client.clone()), Default::default()).await;
        assert!(server.wait_for_watches(Resource::Services, 1, CONVERGE));
        let lists = server.requests(Resource::Services).lists;

        server.expire_watches();
        server.create(&service("b", 80, &[])).expect("create");
        server.delete::<Service>("default", "a").expect("delete");
        converged(&server, Resource::Services, &services).await;
        assert!(
            server.requests(Resource::Services).lists > lists,
            "410 made the watcher list again"
        );

        // A resume from before the compaction gets the ERROR event a real server sends.
        let api = Api::<Service>::all(client.clone());
        let mut stream = api
            .watch(&WatchParams::default(), &old_rv)
            .await
            .expect("watch")
            .boxed();
        match stream.next().await {
            Some(Ok(WatchEvent::Error(status))) => {
                assert_eq!(status.code, 410);
                assert_eq!(status.reason, "Expired");
            }
            other => panic!("expected 410 ERROR, got {other:?}"),
        }
    });
}

#[test]
fn dropped_watches_resume_without_relisting_or_losing_updates() {
    run(async {
        let (server, client, _) = setup().await;
        let server = Arc::new(server);
        server.create(&service("a", 80, &[])).expect("create");
        let services = reflect(Api::<Service>::all(client.clone()), Default::default()).await;
        assert!(server.wait_for_watches(Resource::Services, 1, CONVERGE));
        let before = server.requests(Resource::Services);

        let s = server.clone();
        let dropped = blocking(move || s.drop_watches()).await;
        assert_eq!(dropped, 1);
        // Written while the watcher is disconnected: must arrive through the resumed watch.
        server.replace(&service("a", 8080, &[])).expect("update");
        server.create(&service("b", 80, &[])).expect("create");
        converged(&server, Resource::Services, &services).await;
        let after = server.requests(Resource::Services);
        assert_eq!(after.lists, before.lists, "resumed from its RV, no relist");
        assert!(after.watches > before.watches, "watched again");
    });
}

#[test]
fn watcher_recovers_from_an_outage() {
    run(async {
        let (server, client, _) = setup().await;
        let server = Arc::new(server);
        server.create(&service("a", 80, &[])).expect("create");
        let services = reflect(Api::<Service>::all(client.clone()), Default::default()).await;
        assert!(server.wait_for_watches(Resource::Services, 1, CONVERGE));

        let s = server.clone();
        blocking(move || s.go_away()).await;
        assert_eq!(server.requests(Resource::Services).open_watches, 0);
        let api = Api::<Service>::all(client.clone());
        assert!(
            api.list(&ListParams::default()).await.is_err(),
            "unreachable while away"
        );
        server.replace(&service("a", 81, &[])).expect("update");
        server.create(&service("b", 80, &[])).expect("create");
        tokio::time::sleep(Duration::from_secs(3)).await;
        server.come_back();
        converged(&server, Resource::Services, &services).await;
        assert!(api.list(&ListParams::default()).await.is_ok());
    });
}

#[test]
fn watches_get_bookmarks_and_timeouts() {
    run(async {
        let (server, client, _) = setup().await;
        server.create(&service("a", 80, &[])).expect("create");
        let rv = server.resource_version().to_string();
        let api = Api::<Service>::all(client.clone());
        let mut stream = api
            .watch(&WatchParams::default().timeout(3), &rv)
            .await
            .expect("watch")
            .boxed();
        let mut bookmarks = 0;
        let started = Instant::now();
        while let Some(event) = stream.next().await {
            match event.expect("event") {
                WatchEvent::Bookmark(b) => {
                    assert_eq!(b.metadata.resource_version, rv);
                    bookmarks += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(bookmarks >= 1, "a bookmark every second");
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "timeoutSeconds ends it"
        );

        // Streaming list: initial events, then the bookmark that ends them.
        let services = reflect(api, watcher::Config::default().streaming_lists()).await;
        converged(&server, Resource::Services, &services).await;
        server.create(&service("b", 80, &[])).expect("create");
        converged(&server, Resource::Services, &services).await;
    });
}

#[test]
fn selectors_filter_lists_and_watches() {
    run(async {
        let (server, client, _) = setup().await;
        server
            .create(&service("a", 80, &[("app", "x")]))
            .expect("a");
        server
            .create(&service("b", 80, &[("app", "y")]))
            .expect("b");
        server.create(&service("c", 80, &[])).expect("c");
        let api = Api::<Service>::all(client.clone());
        let names = |list: kube::api::ObjectList<Service>| -> Vec<String> {
            list.items.iter().map(|s| s.name_any()).collect()
        };
        for (selector, want) in [
            ("app=x", vec!["a"]),
            ("app==x", vec!["a"]),
            ("app!=x", vec!["b", "c"]),
            ("app", vec!["a", "b"]),
            ("!app", vec!["c"]),
            ("app in (x,y)", vec!["a", "b"]),
            ("app notin (x)", vec!["b", "c"]),
            ("app=x,app", vec!["a"]),
        ] {
            let got = names(
                api.list(&ListParams::default().labels(selector))
                    .await
                    .expect("list"),
            );
            assert_eq!(got, want, "labelSelector {selector}");
        }
        let got = names(
            api.list(&ListParams::default().fields("metadata.name=b"))
                .await
                .expect("list"),
        );
        assert_eq!(got, vec!["b"]);
        let got = names(
            api.list(&ListParams::default().fields("metadata.namespace=kube-system"))
                .await
                .expect("list"),
        );
        assert!(got.is_empty());

        let x = reflect(api.clone(), watcher::Config::default().labels("app=x")).await;
        let named = reflect(
            api.clone(),
            watcher::Config::default().fields("metadata.name=c"),
        )
        .await;
        let in_x = |v: &Value| v["metadata"]["labels"]["app"] == "x";
        let want = || server_rvs(&server, Resource::Services, in_x);
        eventually("app=x cache", || cache_rvs(&x) == want()).await;
        // Moving into and out of the selection: ADDED and DELETED for this watcher.
        server
            .replace(&service("c", 80, &[("app", "x")]))
            .expect("c joins");
        server
            .replace(&service("a", 80, &[("app", "z")]))
            .expect("a leaves");
        eventually("app=x cache after moves", || cache_rvs(&x) == want()).await;
        assert_eq!(x.state().len(), 1);
        let only_c = || {
            server_rvs(&server, Resource::Services, |v| {
                v["metadata"]["name"] == "c"
            })
        };
        eventually("name=c cache", || cache_rvs(&named) == only_c()).await;
    });
}

#[test]
fn errors_are_status_objects_with_the_right_codes() {
    run(async {
        let (server, client, _) = setup().await;
        let api = Api::<Service>::namespaced(client.clone(), "default");
        let created = api
            .create(&PostParams::default(), &service("a", 80, &[]))
            .await
            .expect("create over HTTP");
        let code = |e: kube::Error| match e {
            kube::Error::Api(s) => (s.code, s.reason),
            other => panic!("not an API error: {other:?}"),
        };
        let dup = api
            .create(&PostParams::default(), &service("a", 80, &[]))
            .await;
        assert_eq!(
            code(dup.expect_err("duplicate")),
            (409, "AlreadyExists".into())
        );
        let missing = api.get("nope").await;
        assert_eq!(
            code(missing.expect_err("missing")),
            (404, "NotFound".into())
        );
        let mut stale = created.clone();
        stale.metadata.resource_version = Some("1".into());
        let conflict = api.replace("a", &PostParams::default(), &stale).await;
        assert_eq!(
            code(conflict.expect_err("stale RV")),
            (409, "Conflict".into())
        );
        let mut taken = service("b", 80, &[]);
        taken.spec.as_mut().expect("spec").cluster_ip = created.spec.expect("spec").cluster_ip;
        let clash = api.create(&PostParams::default(), &taken).await;
        assert_eq!(
            code(clash.expect_err("clusterIP taken")),
            (422, "Invalid".into())
        );

        let mut np = service("np", 80, &[]);
        np.spec.as_mut().expect("spec").type_ = Some("NodePort".into());
        let np = server.create(&np).expect("NodePort service");
        let port = np.spec.expect("spec").ports.expect("ports")[0].node_port;
        assert!(
            port.is_some_and(|p| (30000..=32767).contains(&p)),
            "nodePort {port:?}"
        );
        let deleted = api.delete("a", &Default::default()).await.expect("delete");
        assert!(deleted.is_left(), "the deleted object comes back");

        // Dual-stack: the server has an IPv6 range too (kind's dual-stack layout).
        let mut dual = service("dual", 80, &[]);
        dual.spec.as_mut().expect("spec").ip_family_policy = Some("PreferDualStack".into());
        let dual = api
            .create(&PostParams::default(), &dual)
            .await
            .expect("a PreferDualStack Service");
        let spec = dual.spec.expect("spec");
        let ips = spec.cluster_ips.clone().expect("clusterIPs");
        assert_eq!(ips.len(), 2, "{ips:?}");
        assert!(ips[0].parse::<std::net::Ipv4Addr>().is_ok(), "{ips:?}");
        let v6: std::net::Ipv6Addr = ips[1].parse().expect("an IPv6 ClusterIP");
        assert!(
            v6.segments()[..7] == [0xfd00, 0x10, 0x96, 0, 0, 0, 0],
            "{v6}"
        );
        assert_eq!(spec.cluster_ip.as_ref(), Some(&ips[0]));
        assert_eq!(
            spec.ip_families.as_deref(),
            Some(&["IPv4".to_owned(), "IPv6".to_owned()][..])
        );
        // The same IPv6 address for another Service, or one outside the range: 422.
        for (name, ip) in [("clash6", ips[1].as_str()), ("outside6", "2001:db8::1")] {
            let mut s = service(name, 80, &[]);
            let spec = s.spec.as_mut().expect("spec");
            spec.ip_families = Some(vec!["IPv6".into()]);
            spec.cluster_ip = Some(ip.into());
            let refused = api.create(&PostParams::default(), &s).await;
            assert_eq!(
                code(refused.expect_err(name)),
                (422, "Invalid".into()),
                "{name}"
            );
        }
        // RequireDualStack with the families inconsistent with the addresses: 422.
        let mut bad = service("bad-families", 80, &[]);
        let spec = bad.spec.as_mut().expect("spec");
        spec.ip_family_policy = Some("RequireDualStack".into());
        spec.ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
        spec.cluster_ips = Some(vec!["10.96.9.9".into()]);
        let refused = api.create(&PostParams::default(), &bad).await;
        assert_eq!(
            code(refused.expect_err("families")),
            (422, "Invalid".into())
        );
    });
}

/// kubectl against the fake: discovery, `apply` (create, then strategic-merge PATCH),
/// `get`, `delete`. Ignored where the tests were built without kubectl on PATH (tests/build.rs).
#[test]
#[cfg_attr(svc_no_kubectl, ignore = "needs kubectl on PATH")]
fn kubectl_apply_get_delete() {
    if let Err(e) = Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
    {
        panic!("running kubectl: {e} (the tests were built with kubectl on PATH)");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (server, _client, kubeconfig) = rt.block_on(setup());
    let dir = kubeconfig.parent().expect("dir").to_owned();
    let kubectl = |args: &[&str]| -> String {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let manifest = |port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    \
             app: web\n  ports:\n  - name: http\n    port: {port}\n    targetPort: 8080\n  \
             - name: metrics\n    port: 9090\n---\napiVersion: discovery.k8s.io/v1\nkind: \
             EndpointSlice\nmetadata:\n  name: web-1\n  labels:\n    \
             kubernetes.io/service-name: web\naddressType: IPv4\nendpoints:\n- addresses: \
             [\"10.244.1.2\"]\nports:\n- name: http\n  port: 8080\n"
        )
    };
    let file = dir.join("web.yaml");
    std::fs::write(&file, manifest(80)).expect("manifest");
    let file_arg = file.to_str().expect("utf-8 path");
    kubectl(&["apply", "--validate=false", "-f", file_arg]);
    let svc: Service = server.get("default", "web").expect("get").expect("created");
    let ip = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("ip");
    let got = kubectl(&["get", "svc", "web", "-o", "json"]);
    assert!(got.contains(&ip), "kubectl get shows the clusterIP: {got}");
    // Server-side printing: the columns kubectl shows for a real cluster.
    let table = kubectl(&["get", "services"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("web"))
        .unwrap_or_default();
    assert!(table.starts_with("NAME"), "{table}");
    assert!(row.contains("ClusterIP") && row.contains(&ip), "{table}");
    assert!(row.contains("80/TCP,9090/TCP"), "{table}");
    let slices = kubectl(&["get", "endpointslices", "-A"]);
    assert!(
        slices.contains("default") && slices.contains("10.244.1.2"),
        "{slices}"
    );

    // Re-apply with a changed port: kubectl sends a strategic merge patch.
    std::fs::write(&file, manifest(81)).expect("manifest");
    kubectl(&["apply", "--validate=false", "-f", file_arg]);
    let svc: Service = server.get("default", "web").expect("get").expect("present");
    let spec = svc.spec.expect("spec");
    let ports: Vec<i32> = spec.ports.expect("ports").iter().map(|p| p.port).collect();
    assert_eq!(ports, vec![81, 9090]);
    assert_eq!(
        spec.cluster_ip.as_deref(),
        Some(ip.as_str()),
        "clusterIP kept"
    );

    kubectl(&["delete", "-f", file_arg]);
    assert!(server
        .get::<Service>("default", "web")
        .expect("get")
        .is_none());
    assert!(server
        .get::<EndpointSlice>("default", "web-1")
        .expect("get")
        .is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The network tests' arrangement: the server bound to 172.18.0.1 inside the underlay
/// namespace (the socket keeps that namespace though another thread serves it), a kube-rs
/// client in a node namespace reaching it over the node's eth0. Needs root.
#[test]
#[cfg_attr(svc_unprivileged, ignore = "needs root (network namespaces)")]
fn serves_inside_the_underlay_namespace() {
    use svc_testkit::topology::{require_root, Topology, TopologySpec};
    require_root();
    let topo = Topology::build(&TopologySpec::new().node(&[])).expect("topology");
    let ul = topo.underlay_ns().to_owned();
    topo.ip(&ul, "addr add 172.18.0.1/16 dev br0")
        .expect("address on br0");
    let listener = topo
        .run_in(&ul, || TcpListener::bind("172.18.0.1:0"))
        .expect("thread in the underlay")
        .expect("bind 172.18.0.1");
    let server = ApiServer::start(listener).expect("start");
    server.create(&service("a", 80, &[])).expect("create");
    let url = server.url();
    let names = topo
        .run_in(&topo.node(1).ns.clone(), move || {
            run(async move {
                let config = Config::new(url.parse().expect("url"));
                let client = Client::try_from(config).expect("client");
                let list = Api::<Service>::all(client)
                    .list(&ListParams::default())
                    .await
                    .expect("list from the node namespace");
                list.items.iter().map(|s| s.name_any()).collect::<Vec<_>>()
            })
        })
        .expect("thread in the node");
    assert_eq!(names, vec!["a"]);
    drop(server);
}
