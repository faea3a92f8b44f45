//! Documents: kinds read and skipped, bad documents, `v1/List`, redefinitions, line numbers.

use super::*;
use crate::source::manifests::yaml::{split_documents, Document};

#[test]
fn unknown_kinds_and_bad_documents_are_problems_and_the_rest_loads() {
    let objects = load(&[
        (
            "a.yaml",
            "\
# leading comment
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
---
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: shop}
spec:
  ports:
    - port: eighty
---
---
apiVersion: v1
kind: Service
metadata: {name: good}
spec: {ports: [{port: 80}]}
---
key: [unclosed
---
just: a map
",
        ),
        ("b.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: also-good}\nspec: {ports: [{port: 81}]}\n"),
    ]);
    let names: Vec<String> = objects.services.keys().map(ToString::to_string).collect();
    assert_eq!(names, ["default/also-good", "default/good"]);
    let shown: Vec<String> = objects.problems.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 4, "{shown:#?}");
    assert!(
        shown[0].starts_with("a.yaml#1 (Deployment default/web): apps/v1/Deployment is not read"),
        "{}",
        shown[0]
    );
    assert!(
        shown[1].starts_with("a.yaml#2 (Service shop/bad): spec.ports[0].port: invalid i32"),
        "{}",
        shown[1]
    );
    assert!(
        shown[1].contains("line 12"),
        "line numbers are the file's: {}",
        shown[1]
    );
    assert!(shown[2].starts_with("a.yaml#4: not YAML"), "{}", shown[2]);
    assert!(
        shown[3].starts_with("a.yaml#5: kind: missing"),
        "{}",
        shown[3]
    );
}

#[test]
fn list_items_are_loaded() {
    let objects = load(&[(
        "list.yaml",
        "\
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Service
    metadata: {name: one, namespace: ns}
    spec: {ports: [{port: 80}]}
  - apiVersion: v1
    kind: ConfigMap
    metadata: {name: cfg}
",
    )]);
    assert!(objects.services.contains_key(&r("ns", "one")));
    assert_eq!(objects.problems.len(), 1);
    assert!(objects.problems[0]
        .object
        .starts_with("list.yaml#1.items[1]"));
}

#[test]
fn later_definition_of_the_same_object_wins() {
    let objects = load(&[
        ("a.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: 10.96.0.50, ports: [{port: 80}]}\n"),
        ("b.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: default}\nspec: {clusterIP: 10.96.0.51, ports: [{port: 80}]}\n"),
    ]);
    assert_eq!(
        cluster_ip(&objects, "default", "x").as_deref(),
        Some("10.96.0.51")
    );
    assert_eq!(objects.problems.len(), 1);
}

#[test]
fn split_documents_keeps_file_line_numbers() {
    let text = "a: 1\n---\n\nb: 2\n--- c: 3\n...\n";
    let docs = split_documents(text);
    let doc = |text, lines_before| Document { text, lines_before };
    assert_eq!(
        docs,
        [doc("a: 1\n", 0), doc("\n\nb: 2\n", 1), doc(" c: 3\n", 4)]
    );
    // Slices of the file, not padded copies: splitting is linear in the file's length.
    let file = text.as_bytes().as_ptr_range();
    assert!(docs.iter().all(|d| file.contains(&d.text.as_ptr())));
    // Locations in a later document are the file's lines.
    let docs = split_documents("a: 1\n---\n# two\nb: [\n");
    let err = docs[1].value().expect_err("not YAML");
    assert!(err.contains("line 4"), "{err}");
}
