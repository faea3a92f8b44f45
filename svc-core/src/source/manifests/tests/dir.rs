//! The directory: which files count, and the change fingerprint.

use super::*;

#[test]
fn load_dir_reports_unreadable_dir_as_error_and_skips_other_files() {
    let dir = TempDir::new("errors");
    assert!(load_dir(&dir.0.join("missing")).is_err());
    dir.write(".hidden.yaml", "garbage: [");
    dir.write("notes.txt", "garbage: [");
    fs::create_dir(dir.0.join("sub.yaml")).expect("mkdir");
    dir.write("empty.yaml", "");
    let objects = load_dir(&dir.0).expect("load");
    assert_eq!(objects, Objects::default());
}

#[test]
fn dir_fingerprint_changes_with_manifest_files_only() {
    let dir = TempDir::new("fingerprint");
    let empty = dir_fingerprint(&dir.0).expect("fingerprint");
    dir.write("a.yaml", SEED_TEST_APP);
    let one = dir_fingerprint(&dir.0).expect("fingerprint");
    assert_ne!(empty, one);
    assert_eq!(one, dir_fingerprint(&dir.0).expect("fingerprint"));
    dir.write("notes.txt", "x");
    assert_eq!(one, dir_fingerprint(&dir.0).expect("fingerprint"));
    dir.write("a.yaml", SEED_CIP);
    assert_ne!(one, dir_fingerprint(&dir.0).expect("fingerprint"));
    assert!(dir_fingerprint(&dir.0.join("missing")).is_err());
}
