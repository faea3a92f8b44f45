//! The incremental load: after any sequence of file edits, [`ManifestDir`] holds what a full
//! load of the same files gives, and its changes turn the previous full load into the new one
//! with nothing unchanged in them.

use std::time::Instant;

use super::*;
use crate::model::{SliceOwners, SlimObjects};
use crate::store::{Change, ObjectChanges, Store, Touched};

/// xorshift64*: deterministic, so a failing seed reproduces.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub(crate) fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

const NAMESPACES: [&str; 2] = ["default", "prod"];
const NAMES: [&str; 5] = ["s0", "s1", "s2", "s3", "s4"];

/// One random document: Services (with and without chosen addresses and node ports, of every
/// type), Endpoints, EndpointSlices (some named as mirrored ones would be), Lists, documents
/// that fail, and redefinitions (the name pools are small).
fn document(rng: &mut Rng) -> String {
    let ns = rng.pick(&NAMESPACES);
    let name = rng.pick(&NAMES);
    match rng.below(10) {
        0..=3 => {
            let kind = rng.pick(&["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]);
            let ip = rng.pick(&[
                "",
                "10.96.0.10",
                "10.96.0.11",
                "None",
                "192.0.2.5",
                "\"fd00:10:96::3\"",
            ]);
            let ip = if ip.is_empty() {
                String::new()
            } else {
                format!(", clusterIP: {ip}")
            };
            let node_port = rng.pick(&["", ", nodePort: 30001", ", nodePort: 30002"]);
            let port = rng.pick(&["80", "81"]);
            let port_name = rng.pick(&["", ", name: http"]);
            let selector = rng.pick(&["", ", selector: {app: x}"]);
            let extra = rng.pick(&["", ", {port: 443, name: https}"]);
            // An address another Service may have as its ClusterIP: a contested frontend.
            let external = rng.pick(&["", "", ", externalIPs: [10.96.0.10]"]);
            // Families: the dual-stack policies and an IPv6-only Service compete for the
            // (small) IPv6 range too.
            let family = rng.pick(&[
                "",
                "",
                ", ipFamilyPolicy: PreferDualStack",
                ", ipFamilyPolicy: RequireDualStack",
                ", ipFamilies: [IPv6]",
            ]);
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
                 spec: {{type: {kind}{ip}{family}{selector}{external}, ports: [{{port: {port}{port_name}{node_port}}}{extra}]}}\n"
            )
        }
        4..=5 => {
            let ip = rng.pick(&["192.0.2.1", "192.0.2.2", "2001:db8::1", "bogus"]);
            let port = rng.pick(&["8080", "8081"]);
            let skip = rng.pick(&["", ", labels: {endpointslice.kubernetes.io/skip-mirror: \"true\"}"]);
            format!(
                "apiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}, namespace: {ns}{skip}}}\n\
                 subsets: [{{addresses: [{{ip: \"{ip}\"}}], ports: [{{port: {port}}}]}}]\n"
            )
        }
        6..=7 => {
            let slice = rng.pick(&["-mirror-0", "-mirror-ipv6-0", "-abc", "-mirror-1"]);
            let ip = rng.pick(&["192.0.2.7", "192.0.2.8"]);
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: {name}{slice}, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
                 addressType: IPv4\nendpoints: [{{addresses: [\"{ip}\"]}}]\nports: [{{port: 8080}}]\n"
            )
        }
        8 => format!(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  \
             metadata: {{name: {name}, namespace: {ns}}}\n  spec: {{ports: [{{port: 82}}]}}\n"
        ),
        _ => rng
            .pick(&[
                "key: [unclosed\n",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
                "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {ports: [{port: eighty}]}\n",
                "apiVersion: v1\nkind: Service\nspec: {}\n",
                "just: a map\n",
            ])
            .to_owned(),
    }
}

/// A random manifest file of up to 4 documents.
pub(crate) fn file(rng: &mut Rng) -> String {
    let docs: Vec<String> = (0..rng.below(5)).map(|_| document(rng)).collect();
    docs.join("---\n")
}

/// Applies `changes` to `objects` as the engine's store does.
fn apply(store: &mut Store, changes: ObjectChanges) {
    store.apply_changes(changes, Instant::now(), &mut Touched::default());
}

/// Every change changes something: an upsert differs from what was there, a delete removes
/// something that was.
fn assert_minimal(before: &Objects, changes: &ObjectChanges) {
    let key = |meta| ObjectRef::from_meta(meta).expect("named");
    for change in &changes.services {
        match change {
            Change::Upsert(s) => assert_ne!(before.services.get(&key(&s.metadata)), Some(s)),
            Change::Delete(s) => assert!(before.services.contains_key(&key(&s.metadata))),
            Change::Resync(_) => panic!("a resync in manifest changes"),
        }
    }
    for change in &changes.slices {
        match change {
            Change::Upsert(s) => assert_ne!(before.slices.get(&key(&s.metadata)), Some(s)),
            Change::Delete(s) => assert!(before.slices.contains_key(&key(&s.metadata))),
            Change::Resync(_) => panic!("a resync in manifest changes"),
        }
    }
    if let Some(problems) = &changes.problems {
        assert_ne!(problems, &before.problems);
    }
}

#[test]
fn random_edits_give_what_a_full_load_gives() {
    const FILES: [&str; 4] = ["a.yaml", "b.yaml", "c.yml", "d.yaml"];
    // A small CIDR and node-port range, so allocation runs out and refuses some Services.
    let options = [
        Options::default(),
        Options {
            service_cidr: "10.96.0.0/29".parse().expect("cidr"),
            service_cidr6: Some("fd00:10:96::/125".parse().expect("cidr")),
            node_port_range: 30000..=30003,
        },
    ];
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let options = &options[(seed % 2) as usize];
        let mut cache = ManifestDir::new("unused", options.clone());
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        let mut store = Store::default();
        // The full objects of the previous step (the store keeps slim ones).
        let mut before = Objects::default();
        for step in 0..25 {
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
            let full = load_texts(&texts, options);
            let context = format!("seed {seed} step {step}: files {texts:#?}");
            let update = cache.update_texts(&edits);
            assert_eq!(cache.objects(), full, "{context}");
            match update {
                Some(Update::Load(objects)) => {
                    assert_eq!(step, 0, "{context}");
                    assert_eq!(objects, full, "{context}");
                    store.load(objects, Instant::now(), &mut Touched::default());
                }
                Some(Update::Changes(changes)) => {
                    assert_ne!(step, 0, "{context}");
                    assert_minimal(&before, &changes);
                    apply(&mut store, changes);
                }
                None => assert_ne!(step, 0, "{context}"),
            }
            let slim = SlimObjects::from_objects(full.clone());
            assert_eq!(
                store.slice_owners,
                SliceOwners::build(&slim.slices),
                "{context}"
            );
            assert_eq!(store.objects, slim, "{context}");
            before = full;
        }
    }
}

#[test]
fn an_edit_that_changes_nothing_is_no_update() {
    let mut cache = ManifestDir::new("unused", Options::default());
    let edit = |text: &str| vec![("a.yaml".to_owned(), Some(text.to_owned()))];
    let one = svc_yaml("ns", "a", "");
    assert!(matches!(
        cache.update_texts(&edit(&one)),
        Some(Update::Load(_))
    ));
    assert!(cache.update_texts(&edit(&one)).is_none(), "same text");
    // A comment, or the same Service moved to another file: the objects are the same.
    assert!(cache.update_texts(&edit(&format!("# hi\n{one}"))).is_none());
    let moved = [
        ("a.yaml".to_owned(), None),
        ("b.yaml".to_owned(), Some(one.clone())),
    ];
    assert!(cache.update_texts(&moved).is_none());
}

#[test]
fn changes_carry_only_what_changed() {
    let mut cache = ManifestDir::new("unused", Options::default());
    let files: Vec<(String, Option<String>)> = (0..10)
        .map(|i| {
            (
                format!("f{i}.yaml"),
                Some(svc_yaml("ns", &format!("s{i}"), "")),
            )
        })
        .collect();
    assert!(matches!(cache.update_texts(&files), Some(Update::Load(_))));
    // One Service's port changes: that Service alone (its allocation is unchanged).
    let edit = [(
        "f3.yaml".to_owned(),
        Some(svc_yaml("ns", "s3", ", selector: {a: b}")),
    )];
    let Some(Update::Changes(changes)) = cache.update_texts(&edit) else {
        panic!("a change");
    };
    let names: Vec<_> = changes
        .services
        .iter()
        .map(|c| match c {
            Change::Upsert(s) => ("upsert", s.metadata.name.clone()),
            Change::Delete(s) => ("delete", s.metadata.name.clone()),
            Change::Resync(_) => ("resync", None),
        })
        .collect();
    assert_eq!(names, [("upsert", Some("s3".to_owned()))]);
    assert!(changes.slices.is_empty() && changes.problems.is_none());
    // A file goes: its Service is deleted.
    let Some(Update::Changes(changes)) = cache.update_texts(&[("f4.yaml".to_owned(), None)]) else {
        panic!("a change");
    };
    assert!(
        matches!(&changes.services[..], [Change::Delete(s)] if s.metadata.name.as_deref() == Some("s4"))
    );
}

#[test]
fn a_chosen_address_freed_lets_the_refused_service_in() {
    // b wants a's address and is refused; when a's file goes, b is added, with no edit of its own.
    let mut cache = ManifestDir::new("unused", Options::default());
    let files = [
        (
            "a.yaml".to_owned(),
            Some(svc_yaml("ns", "a", ", clusterIP: 10.96.0.50")),
        ),
        (
            "b.yaml".to_owned(),
            Some(svc_yaml("ns", "b", ", clusterIP: 10.96.0.50")),
        ),
    ];
    let Some(Update::Load(objects)) = cache.update_texts(&files) else {
        panic!("a load");
    };
    assert!(!objects.services.contains_key(&r("ns", "b")));
    assert_eq!(objects.problems.len(), 1);
    let Some(Update::Changes(changes)) = cache.update_texts(&[("a.yaml".to_owned(), None)]) else {
        panic!("a change");
    };
    let mut seen: Vec<_> = changes
        .services
        .iter()
        .map(|c| match c {
            Change::Upsert(s) => format!("upsert {}", s.metadata.name.as_deref().unwrap_or("")),
            Change::Delete(s) => format!("delete {}", s.metadata.name.as_deref().unwrap_or("")),
            Change::Resync(_) => "resync".to_owned(),
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["delete a", "upsert b"]);
    assert_eq!(changes.problems, Some(Vec::new()), "the refusal is gone");
}

#[test]
fn mirror_owner_names_the_only_endpoints_that_can_mirror_a_slice() {
    for (slice, owner) in [
        ("web-mirror-0", Some("web")),
        ("web-mirror-12", Some("web")),
        ("web-mirror-ipv6-3", Some("web")),
        ("a-mirror-ipv6-mirror-1", Some("a-mirror-ipv6")),
        ("a-mirror-b-mirror-ipv6-0", Some("a-mirror-b")),
        ("web-mirror-", None),
        ("web-abc", None),
        ("web-7", None),
        ("mirror-0", None),
    ] {
        assert_eq!(
            super::super::cache::mirror_owner(&r("ns", slice)),
            owner.map(|o| r("ns", o)),
            "{slice}"
        );
    }
}

#[test]
fn refresh_reads_only_changed_files_and_retries_unreadable_ones() {
    let dir = TempDir::new("cache");
    dir.write("a.yaml", &svc_yaml("ns", "a", ""));
    dir.write("b.yaml", &svc_yaml("ns", "b", ""));
    let mut cache = ManifestDir::new(&dir.0, Options::default());
    let Ok(Some(Update::Load(objects))) = cache.refresh() else {
        panic!("a load");
    };
    assert_eq!(objects, load_dir(&dir.0).expect("load"));
    assert!(
        cache.refresh().expect("refresh").is_none(),
        "nothing changed"
    );

    // Not UTF-8: a read error for that file, the rest stays.
    fs::write(dir.0.join("b.yaml"), b"\xff\xfe").expect("write");
    let Ok(Some(Update::Changes(changes))) = cache.refresh() else {
        panic!("a change");
    };
    assert_eq!(changes.services.len(), 1, "b is gone");
    let problems = changes.problems.expect("a read error");
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].to_string().starts_with("b.yaml: reading:"),
        "{}",
        problems[0]
    );
    assert_eq!(cache.objects(), load_dir(&dir.0).expect("load"));
    // Still unreadable: read again, same result, nothing to send.
    assert!(cache.refresh().expect("refresh").is_none());

    dir.write("b.yaml", &svc_yaml("ns", "b", ""));
    dir.write("c.yaml", &svc_yaml("ns", "c", ""));
    fs::remove_file(dir.0.join("a.yaml")).expect("remove");
    let Ok(Some(Update::Changes(changes))) = cache.refresh() else {
        panic!("a change");
    };
    assert_eq!(changes.services.len(), 3, "a deleted, b and c added");
    assert_eq!(changes.problems, Some(Vec::new()));
    assert_eq!(cache.objects(), load_dir(&dir.0).expect("load"));

    // The directory goes: an error, and what was loaded stays.
    let path = dir.0.clone();
    drop(dir);
    assert!(cache.refresh().is_err());
    assert_eq!(cache.objects().services.len(), 2);
    assert!(!path.exists());
}

#[test]
fn allocation_runs_again_when_what_it_reads_changes_and_only_then() {
    // b wants what a has and is refused. Each edit of a changes one thing allocation reads
    // (its clusterIP, a nodePort, its type), or nothing it reads (a selector): b follows, or
    // stays out.
    let svc = |name: &str, spec: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec: {spec}\n")
    };
    let ip = |ip: &str, extra: &str| format!("{{clusterIP: {ip}, ports: [{{port: 80}}]{extra}}}");
    let np = |kind: &str, port: u16| {
        format!("{{type: {kind}, ports: [{{port: 80, nodePort: {port}}}]}}")
    };
    // (a before, b, a after, allocation runs again, b admitted after)
    let (ip50, np1) = (ip("10.96.0.50", ""), np("NodePort", 30001));
    for (a_before, b_chooses, a_after, reallocates, b_admitted) in [
        (&ip50, &ip50, ip("10.96.0.51", ""), true, true),
        (&ip50, &ip50, "{ports: [{port: 80}]}".to_owned(), true, true),
        (&np1, &np1, np("NodePort", 30002), true, true),
        (&np1, &np1, np("ClusterIP", 30001), true, true),
        (
            &ip50,
            &ip50,
            ip("10.96.0.50", ", selector: {x: y}"),
            false,
            false,
        ),
        (&np1, &np1, np("LoadBalancer", 30001), true, false),
    ] {
        let mut cache = ManifestDir::new("unused", Options::default());
        let files = [
            ("a.yaml".to_owned(), Some(svc("a", a_before))),
            ("b.yaml".to_owned(), Some(svc("b", b_chooses))),
        ];
        cache.update_texts(&files);
        assert!(
            !cache.objects().services.contains_key(&r("ns", "b")),
            "{a_before}"
        );
        let runs = cache.allocation_runs;
        cache.update_texts(&[("a.yaml".to_owned(), Some(svc("a", &a_after)))]);
        assert_eq!(
            cache.allocation_runs,
            runs + u64::from(reallocates),
            "{a_after}"
        );
        let objects = cache.objects();
        assert_eq!(
            objects.services.contains_key(&r("ns", "b")),
            b_admitted,
            "{a_after}"
        );
        let texts = [
            ("a.yaml".to_owned(), svc("a", &a_after)),
            ("b.yaml".to_owned(), svc("b", b_chooses)),
        ];
        assert_eq!(
            objects,
            load_texts(&texts, &Options::default()),
            "{a_after}"
        );
    }
}
