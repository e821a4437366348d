//! State files: round trip, crash safety and every kind of damaged file.

use std::fs;
use std::path::Path;

use mdevreg::model::{Lifetime, MdevType, Parent, ParentInfo, Source};
use mdevreg::persist::{
    LoadOutcome, StateStore, StateStores, StoredRegistration, MAX_STATE_FILE_BYTES,
};

fn record(name: &str, lifetime: Lifetime, seqnum: u64) -> StoredRegistration {
    StoredRegistration {
        parent: Parent {
            info: ParentInfo {
                name: name.to_owned(),
                devpath: format!("/devices/virtual/mdevreg/{name}"),
                subsystem: "mdevreg".to_owned(),
                driver: String::new(),
                backend: Default::default(),
                physical_device: String::new(),
                types: vec![MdevType {
                    id: "mtty-2".into(),
                    name: "Dual-port serial".into(),
                    description: "line one, line two".into(),
                    device_api: "vfio-pci".into(),
                    available_instances: u32::MAX,
                    devices: vec!["83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".to_owned()],
                }],
            },
            source: Source::Userspace,
            owner: if lifetime == Lifetime::Owner {
                ":1.42".to_owned()
            } else {
                String::new()
            },
            lifetime,
            registered_seqnum: seqnum,
            uid: 0,
        },
    }
}

fn persistent_store(dir: &Path) -> StateStore {
    StateStores::in_dir(dir).persistent
}

/// Names of the files in `dir`, sorted.
fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Asserts the outcome is empty, warns, and the file went to `*.corrupt-*`.
fn assert_moved_aside(store: &StateStore, outcome: &LoadOutcome, why: &str) {
    assert!(outcome.records.is_empty(), "{why}: {outcome:?}");
    assert_eq!(outcome.last_seqnum, 0, "{why}");
    assert_eq!(outcome.warnings.len(), 1, "{why}: {outcome:?}");
    assert!(
        outcome.warnings[0].contains("moved to"),
        "{why}: {outcome:?}"
    );
    assert!(!store.path().exists(), "{why}: file still in place");
    let dir = store.path().parent().unwrap();
    let file_name = store.path().file_name().unwrap().to_string_lossy();
    let aside: Vec<String> = dir_entries(dir)
        .into_iter()
        .filter(|name| name.starts_with(&format!("{file_name}.corrupt-")))
        .collect();
    assert_eq!(aside.len(), 1, "{why}: {:?}", dir_entries(dir));
    // Loading again is quiet: the damaged file is out of the way.
    let again = store.load();
    assert!(
        again.warnings.is_empty() && again.records.is_empty(),
        "{why}"
    );
}

#[test]
fn missing_file_is_empty_without_warning() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = persistent_store(&dir.path().join("not-yet")).load();
    assert_eq!(outcome, LoadOutcome::default());
}

#[test]
fn round_trip_keeps_records_and_seqnum() {
    let dir = tempfile::tempdir().unwrap();
    // The directory is created on first save.
    let stores = StateStores::in_dir(&dir.path().join("state"));
    let persistent = vec![
        record("mtty", Lifetime::Persistent, 3),
        record("0000:00:02.0", Lifetime::Persistent, 7),
    ];
    let owner = vec![record("gpu-a", Lifetime::Owner, 5)];
    stores.persistent.save(40, &persistent).unwrap();
    stores.owner.save(41, &owner).unwrap();

    let loaded = stores.persistent.load();
    assert_eq!(loaded.records, persistent);
    assert_eq!(loaded.last_seqnum, 40);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let loaded = stores.owner.load();
    assert_eq!(loaded.records, owner);
    assert_eq!(loaded.last_seqnum, 41);

    // Saving again replaces the contents.
    stores.persistent.save(42, &[]).unwrap();
    let loaded = stores.persistent.load();
    assert!(loaded.records.is_empty());
    assert_eq!(loaded.last_seqnum, 42);
    // Only the two state files are there: no temp files left.
    assert_eq!(dir_entries(&dir.path().join("state")).len(), 2);
}

#[test]
fn seqnum_is_at_least_the_highest_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = persistent_store(dir.path());
    store
        .save(2, &[record("a", Lifetime::Persistent, 9)])
        .unwrap();
    assert_eq!(store.load().last_seqnum, 9);
}

#[test]
fn leftover_temp_file_is_ignored_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = persistent_store(dir.path());
    let good = vec![record("kept", Lifetime::Persistent, 1)];
    store.save(1, &good).unwrap();
    // A crash between writing the temp file and the rename leaves this.
    let file_name = store.path().file_name().unwrap().to_string_lossy();
    let temp = dir.path().join(format!(".{file_name}.tmp-999-0"));
    fs::write(&temp, b"{\"format\": \"mdevreg-state\", \"vers").unwrap();

    let loaded = store.load();
    assert_eq!(loaded.records, good);
    assert!(!temp.exists());
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);

    // A crash before the first rename: only a temp file, no state file.
    fs::remove_file(store.path()).unwrap();
    fs::write(&temp, b"garbage").unwrap();
    let loaded = store.load();
    assert!(loaded.records.is_empty());
    assert!(!temp.exists());
}

#[test]
fn corrupt_file_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let store = persistent_store(dir.path());
    fs::write(store.path(), b"\x00\xffnot json at all").unwrap();
    let outcome = store.load();
    assert_moved_aside(&store, &outcome, "garbage");
}

#[test]
fn truncated_file_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let store = persistent_store(dir.path());
    store
        .save(5, &[record("a", Lifetime::Persistent, 1)])
        .unwrap();
    let full = fs::read(store.path()).unwrap();
    fs::write(store.path(), &full[..full.len() / 2]).unwrap();
    let outcome = store.load();
    assert_moved_aside(&store, &outcome, "truncated");
}

#[test]
fn empty_file_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let store = persistent_store(dir.path());
    fs::write(store.path(), b"").unwrap();
    let outcome = store.load();
    assert_moved_aside(&store, &outcome, "empty");
}

#[test]
fn huge_file_is_moved_aside_unread() {
    let dir = tempfile::tempdir().unwrap();
    let store = persistent_store(dir.path());
    // Sparse: no disk space used, but over the limit.
    let file = fs::File::create(store.path()).unwrap();
    file.set_len(MAX_STATE_FILE_BYTES + 1).unwrap();
    drop(file);
    let outcome = store.load();
    assert_moved_aside(&store, &outcome, "huge");
    assert!(
        outcome.warnings[0].contains("limit"),
        "{:?}",
        outcome.warnings
    );
}

#[test]
fn other_version_or_format_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let store = persistent_store(dir.path());
    fs::write(
        store.path(),
        br#"{"format": "mdevreg-state", "version": 2, "last_seqnum": 1, "registrations": []}"#,
    )
    .unwrap();
    let outcome = store.load();
    assert_moved_aside(&store, &outcome, "version 2");
    assert!(
        outcome.warnings[0].contains("version 2"),
        "{:?}",
        outcome.warnings
    );

    let dir = tempfile::tempdir().unwrap();
    let store = persistent_store(dir.path());
    fs::write(
        store.path(),
        br#"{"format": "something-else", "version": 1, "last_seqnum": 1, "registrations": []}"#,
    )
    .unwrap();
    let outcome = store.load();
    assert_moved_aside(&store, &outcome, "foreign format");
}

#[test]
fn directory_in_place_of_the_file_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let store = persistent_store(dir.path());
    fs::create_dir(store.path()).unwrap();
    let outcome = store.load();
    assert_moved_aside(&store, &outcome, "directory");
    // And saving works afterwards.
    store.save(1, &[]).unwrap();
    assert!(store.path().is_file());
}

#[test]
fn invalid_records_are_dropped_with_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let store = persistent_store(dir.path());
    let good = record("good", Lifetime::Persistent, 1);
    let mut bad_name = record("../etc", Lifetime::Persistent, 2);
    bad_name.parent.info.devpath = "/devices/x".to_owned();
    let wrong_lifetime = record("owner-one", Lifetime::Owner, 3);
    let mut kernel = record("kernel-one", Lifetime::Persistent, 4);
    kernel.parent.source = Source::Kernel;
    let mut long_string = record("long", Lifetime::Persistent, 5);
    long_string.parent.info.driver = "d".repeat(4097);
    let mut dup_types = record("duptypes", Lifetime::Persistent, 6);
    let first_type = dup_types.parent.info.types[0].clone();
    dup_types.parent.info.types.push(first_type);
    let mut too_many_types = record("manytypes", Lifetime::Persistent, 7);
    too_many_types.parent.info.types = (0..1025)
        .map(|i| MdevType {
            id: format!("t-{i}").into(),
            device_api: "vfio-pci".into(),
            ..MdevType::default()
        })
        .collect();
    let duplicate = record("good", Lifetime::Persistent, 8);
    let records = vec![
        good.clone(),
        bad_name,
        wrong_lifetime,
        kernel,
        long_string,
        dup_types,
        too_many_types,
        duplicate,
    ];
    store.save(1, &records).unwrap();

    // Plus one record that does not even have the right shape.
    let mut document: serde_json::Value =
        serde_json::from_slice(&fs::read(store.path()).unwrap()).unwrap();
    document["registrations"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"parent": {"info": 5}}));
    fs::write(store.path(), serde_json::to_vec(&document).unwrap()).unwrap();

    let outcome = store.load();
    assert_eq!(outcome.records, vec![good]);
    assert_eq!(outcome.warnings.len(), 8, "{:#?}", outcome.warnings);
    // Dropped records do not raise the seqnum.
    assert_eq!(outcome.last_seqnum, 1);
    // The file itself stays: it was readable.
    assert!(store.path().exists());
}

#[test]
fn save_into_unwritable_location_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    fs::write(&blocker, b"x").unwrap();
    let store = persistent_store(&blocker.join("sub"));
    assert!(store.save(1, &[]).is_err());
}
