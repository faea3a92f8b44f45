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

#[test]
fn symlinks_are_followed_as_a_mounted_config_map_swaps_them() {
    use std::os::unix::fs::symlink;
    // A ConfigMap volume: `a.yaml -> ..data/a.yaml`, `..data -> ..v1`; an update writes `..v2`
    // and swaps `..data` with a rename. Hidden names are not manifests themselves.
    let dir = TempDir::new("configmap");
    let version = |v: &str, text: &str| {
        fs::create_dir(dir.0.join(v)).expect("mkdir");
        fs::write(dir.0.join(v).join("a.yaml"), text).expect("write");
        symlink(v, dir.0.join("..data_tmp")).expect("symlink");
        fs::rename(dir.0.join("..data_tmp"), dir.0.join("..data")).expect("swap");
    };
    version("..v1", SEED_TEST_APP);
    symlink("..data/a.yaml", dir.0.join("a.yaml")).expect("symlink");
    symlink("..v1", dir.0.join("dir.yaml")).expect("a symlink to a directory");
    symlink("missing.yaml", dir.0.join("dangling.yaml")).expect("a dangling symlink");
    let mut cache = ManifestDir::new(&dir.0, Options::default());
    let Ok(Some(Update::Load(objects))) = cache.refresh() else {
        panic!("a load");
    };
    assert_eq!(objects.services.len(), 1);
    assert_eq!(objects, load_dir(&dir.0).expect("load"));
    assert!(cache.refresh().expect("refresh").is_none());
    // Same size, new file behind the link: a change all the same.
    version("..v2", &SEED_TEST_APP.replace("9000", "9001"));
    let Ok(Some(Update::Changes(changes))) = cache.refresh() else {
        panic!("a change");
    };
    assert_eq!(changes.services.len(), 1);
    assert_eq!(cache.objects(), load_dir(&dir.0).expect("load"));
}
