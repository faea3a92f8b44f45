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
            assert_eq!(by_changes.store().objects, full, "{context}");
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
