//! The manifests source's changes ([`Event::Changes`]) leave the maps as its full loads
//! ([`Event::Objects`]) would, over random edit sequences of a manifest directory.

use super::*;
use crate::source::manifests::tests::cache::{file, Rng};
use crate::source::manifests::{load_texts, ManifestDir, Options, Update};

/// Problems the hooks were given, by text.
#[derive(Clone, Default)]
struct Problems(Rc<RefCell<Vec<String>>>);

impl Hooks<Shared> for Problems {
    type Interface = ();
    fn problem(&mut self, problem: &Problem) {
        self.0.borrow_mut().push(problem.to_string());
    }
}

fn engine() -> (Engine<Shared, Problems>, Shared, Problems) {
    let (dp, hooks) = (Shared::default(), Problems::default());
    let engine = Engine::new(dp.clone(), hooks.clone(), config(None)).expect("the fake reads");
    (engine, dp, hooks)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn changes_program_what_full_loads_program() {
    const FILES: [&str; 4] = ["a.yaml", "b.yaml", "c.yml", "d.yaml"];
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut cache = ManifestDir::new("unused", Options::default());
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        // `by_changes` gets the first load and then changes; `by_loads` a full load each time.
        let (mut by_changes, maps, _) = engine();
        let (mut by_loads, full_maps, _) = engine();
        for step in 0..20 {
            let mut edits = Vec::new();
            for _ in 0..1 + rng.below(2) {
                let name = rng.pick(&FILES).to_owned();
                let text = (rng.below(4) != 0).then(|| file(&mut rng));
                match &text {
                    Some(text) => files.insert(name.clone(), text.clone()),
                    None => files.remove(&name),
                };
                edits.push((name, text));
            }
            let texts: Vec<(String, String)> = files.clone().into_iter().collect();
            let full = load_texts(&texts, &Options::default());
            match cache.update_texts(&edits) {
                Some(Update::Load(objects)) => {
                    by_changes
                        .handle(vec![Event::Objects(objects, Instant::now())])
                        .await;
                }
                Some(Update::Changes(changes)) => {
                    by_changes
                        .handle(vec![Event::Changes(changes, Instant::now())])
                        .await;
                }
                None => {}
            }
            by_loads
                .handle(vec![Event::Objects(full.clone(), Instant::now())])
                .await;
            let context = format!("seed {seed} step {step}: files {texts:#?}");
            assert_eq!(
                by_changes.store().objects,
                crate::model::SlimObjects::from_objects(full.clone()),
                "{context}"
            );
            assert_eq!(
                canonical(&maps.0.borrow().snapshot),
                canonical(&full_maps.0.borrow().snapshot),
                "{context}"
            );
            maps.0.borrow().check_all().expect("never half-built");
        }
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_problem_is_reported_when_it_appears_and_again_after_it_was_gone() {
    let good = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n";
    let bad = "key: [unclosed\n";
    let (mut engine, _, reported) = engine();
    let mut cache = ManifestDir::new("unused", Options::default());
    // (edit, problems reported by it)
    let steps: [(&str, Option<&str>, &[&str]); 5] = [
        ("a.yaml", Some(bad), &["a.yaml#1"]),
        ("b.yaml", Some(bad), &["b.yaml#1"]),
        ("c.yaml", Some(good), &[]),
        ("a.yaml", None, &[]),
        ("a.yaml", Some(bad), &["a.yaml#1"]),
    ];
    for (file, text, expected) in steps {
        let edit = [(file.to_owned(), text.map(str::to_owned))];
        let event = match cache.update_texts(&edit) {
            Some(Update::Load(objects)) => Event::Objects(objects, Instant::now()),
            Some(Update::Changes(changes)) => Event::Changes(changes, Instant::now()),
            None => continue,
        };
        engine.handle(vec![event]).await;
        let seen: Vec<String> = reported.0.borrow_mut().drain(..).collect();
        assert_eq!(seen.len(), expected.len(), "{file}: {seen:?}");
        for (seen, expected) in seen.iter().zip(expected) {
            assert!(seen.starts_with(expected), "{file}: {seen}");
        }
    }
    assert_eq!(engine.store().objects.problems.len(), 2);
}

/// A manifest file of Services `range`, each with one EndpointSlice of 10 endpoints; the
/// Service `bump` (if in range) has its first endpoint moved, `port` its extra port.
fn bench_file(range: std::ops::Range<usize>, bump: Option<usize>, port: Option<usize>) -> String {
    let mut text = String::new();
    for i in range {
        let extra = if port == Some(i) {
            ", {name: extra, port: 81}"
        } else {
            ""
        };
        text += &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i:05}, namespace: bench}}\n\
             spec: {{selector: {{app: svc-{i:05}}}, ports: [{{name: http, port: 80, targetPort: 8080}}{extra}]}}\n---\n"
        );
        let endpoints: Vec<String> = (0..10)
            .map(|j| {
                let k = (i * 16 + j + usize::from(bump == Some(i) && j == 0) * 10) as u32;
                let ip =
                    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 128, 0, 0)) + k);
                format!("{{addresses: [\"{ip}\"]}}")
            })
            .collect();
        text += &format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: svc-{i:05}-1, namespace: bench, labels: {{kubernetes.io/service-name: svc-{i:05}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]\n---\n",
            endpoints.join(", ")
        );
    }
    text
}

/// This process's resident memory, MiB (0 where /proc is not there).
fn rss_mib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// What one changed file costs at 10k Services, before (every file read and decoded again, a
/// full plan) and now (that file, the changed objects planned). Printed, not asserted; run with
/// `cargo test --release -p svc-core one_file_change_cost -- --ignored --nocapture`.
#[tokio::test(flavor = "current_thread")]
#[ignore = "a measurement: prints figures, run in release"]
async fn one_file_change_cost_at_10k_services() {
    const SERVICES: usize = 10_000;
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1e3;
    for per_file in [500, 50, 1] {
        let dir = std::env::temp_dir().join(format!(
            "svc-core-manifests-bench-{}-{per_file}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let name = |f: usize| format!("f{f:05}.yaml");
        let write = |f: usize, bump: Option<usize>, port: Option<usize>| {
            let range = f * per_file..(f + 1) * per_file;
            std::fs::write(dir.join(name(f)), bench_file(range, bump, port)).unwrap();
        };
        for f in 0..SERVICES / per_file {
            write(f, None, None);
        }
        let options = Options::default();
        let (mut full_engine, _, _) = engine();
        let (mut engine, _, _) = engine();
        let rss0 = rss_mib();
        let t = std::time::Instant::now();
        let objects = crate::source::manifests::load_dir_with(&dir, &options).unwrap();
        let full_load = ms(t);
        full_engine
            .handle(vec![Event::Objects(objects, Instant::now())])
            .await;
        let rss1 = rss_mib();
        let mut cache = ManifestDir::new(&dir, options.clone());
        let t = std::time::Instant::now();
        let Ok(Some(Update::Load(objects))) = cache.refresh() else {
            panic!("a first load");
        };
        let first = ms(t);
        engine
            .handle(vec![Event::Objects(objects, Instant::now())])
            .await;
        let rss2 = rss_mib();
        let t = std::time::Instant::now();
        assert!(cache.refresh().unwrap().is_none());
        let idle = ms(t);
        // Rough (the allocator keeps what it freed, so only the first layout's figures mean
        // anything): an engine with its objects, then another with its objects plus the cache.
        if per_file == 500 {
            println!(
                "VmRSS growth: full load + engine {} MiB, then ManifestDir + engine {} MiB",
                rss1 - rss0,
                rss2 - rss1
            );
        }
        println!(
            "{SERVICES} Services, {per_file} per file: full load {full_load:.1} ms, \
             ManifestDir first load {first:.1} ms, a poll with nothing changed {idle:.2} ms"
        );
        // The Service in the middle of the directory: one endpoint moved, then a port added
        // (allocation runs again), then both undone.
        let s = SERVICES / 2;
        let f = s / per_file;
        for (what, bump, port) in [
            ("an endpoint moved", Some(s), None),
            ("a port added", Some(s), Some(s)),
            ("both undone", None, None),
        ] {
            // mtime granularity: make sure the identity changes even within one tick.
            std::fs::remove_file(dir.join(name(f))).unwrap();
            write(f, bump, port);
            let t = std::time::Instant::now();
            let objects = crate::source::manifests::load_dir_with(&dir, &options).unwrap();
            let before_load = ms(t);
            let t = std::time::Instant::now();
            full_engine
                .handle(vec![Event::Objects(objects, Instant::now())])
                .await;
            let before_plan = ms(t);
            let t = std::time::Instant::now();
            let Ok(Some(Update::Changes(changes))) = cache.refresh() else {
                panic!("a change");
            };
            let after_load = ms(t);
            let t = std::time::Instant::now();
            engine
                .handle(vec![Event::Changes(changes, Instant::now())])
                .await;
            let after_plan = ms(t);
            println!(
                "  {what}: before {before_load:.1} ms load + {before_plan:.1} ms full plan; \
                 now {after_load:.2} ms refresh + {after_plan:.2} ms plan"
            );
        }
        assert_eq!(engine.store().objects, full_engine.store().objects);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A dual-stack Service from manifests: both families' maps are written, and a change of the
/// Service to SingleStack IPv4 takes the IPv6 side away and leaves the IPv4 side as it was.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_dual_stack_manifest_programs_both_families_and_a_family_change_removes_one() {
    let manifest = |families: &str, ips: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
             spec:\n  ipFamilyPolicy: PreferDualStack\n  ipFamilies: {families}\n  \
             clusterIP: 10.96.0.10\n  clusterIPs: {ips}\n  ports: [{{port: 80, targetPort: 8080}}]\n\
             ---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web-v4, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
             addressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{{addresses: [10.244.1.5]}}]\n\
             ---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web-v6, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
             addressType: IPv6\nports: [{{port: 8080}}]\n\
             endpoints: [{{addresses: [\"fd00:10:244:1::5\"]}}, {{addresses: [\"fd00:10:244:1::6\"]}}]\n"
        )
    };
    let load = |text: String| load_texts(&[("web.yaml".to_owned(), text)], &Options::default());
    let (mut engine, maps, problems) = engine();
    let dual = load(manifest("[IPv4, IPv6]", "[10.96.0.10, \"fd00:10:96::10\"]"));
    assert!(dual.problems.is_empty(), "{:?}", dual.problems);
    engine
        .handle(vec![Event::Objects(dual, Instant::now())])
        .await;
    assert!(problems.0.borrow().is_empty(), "{:?}", problems.0.borrow());
    let v4_before = canonical(&maps.0.borrow().snapshot);
    {
        let snap = &maps.0.borrow().snapshot;
        assert_eq!((snap.frontends.len(), snap.backends.len()), (1, 1));
        assert_eq!((snap.frontends6.len(), snap.backends6.len()), (1, 2));
    }
    let single = load(manifest("[IPv4]", "[10.96.0.10]"));
    engine
        .handle(vec![Event::Objects(single, Instant::now())])
        .await;
    let fake = maps.0.borrow();
    assert!(fake.snapshot.frontends6.is_empty() && fake.snapshot.backends6.is_empty());
    assert_eq!(canonical(&fake.snapshot), v4_before, "IPv4 unchanged");
    fake.check_all().expect("never half-built");
}
