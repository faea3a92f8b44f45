//! The directory: which files count, for a load and for changes.

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
fn only_manifest_files_are_read_for_changes() {
    let dir = TempDir::new("changes");
    let mut cache = ManifestDir::new(&dir.0, Options::default());
    assert!(matches!(cache.refresh(), Ok(Some(Update::Load(_)))));
    assert!(cache.refresh().expect("refresh").is_none());
    dir.write("a.yaml", SEED_TEST_APP);
    assert!(matches!(cache.refresh(), Ok(Some(Update::Changes(_)))));
    dir.write("notes.txt", "x");
    dir.write(".hidden.yaml", SEED_CIP);
    assert!(cache.refresh().expect("refresh").is_none());
    dir.write("a.yaml", SEED_CIP);
    assert!(matches!(cache.refresh(), Ok(Some(Update::Changes(_)))));
    assert_eq!(cache.objects(), load_dir(&dir.0).expect("load"));
    assert!(ManifestDir::new(dir.0.join("missing"), Options::default())
        .refresh()
        .is_err());
}
