//! Documents: kinds read and skipped, bad documents, `v1/List`, redefinitions, line numbers.

use super::*;

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
        shown[1].starts_with("a.yaml#2 (Service shop/bad): spec.ports[0].port: invalid type"),
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
    let docs = split_documents("a: 1\n---\n\nb: 2\n--- c: 3\n...\n");
    assert_eq!(docs.len(), 3);
    assert_eq!(docs[0], "a: 1\n");
    assert_eq!(docs[1], "\n   \n\nb: 2\n");
    assert_eq!(docs[2], "\n\n\n\n    c: 3\n");
}
