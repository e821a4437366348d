//! Unit and property tests of the registry state machine.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::test_support::{pci_parent, user_parent};

fn mtype(id: &str, avail: u32) -> MdevType {
    MdevType {
        id: id.into(),
        name: format!("name of {id}").into(),
        description: "".into(),
        device_api: "vfio-pci".into(),
        available_instances: avail,
        devices: Vec::new(),
    }
}

fn kinfo(name: &str, avail: u32) -> ParentInfo {
    pci_parent(
        name,
        "i915",
        vec![mtype("i915-GVTg_V5_4", avail), mtype("i915-GVTg_V5_8", 1)],
    )
}

fn uinfo(name: &str) -> ParentInfo {
    user_parent(name, vec![mtype("test-1", 4)])
}

fn register(name: &str, owner: &str, lifetime: Lifetime) -> Input {
    register_as(name, owner, lifetime, 0)
}

fn register_as(name: &str, owner: &str, lifetime: Lifetime, uid: u32) -> Input {
    Input::Register {
        info: uinfo(name),
        owner: owner.to_owned(),
        lifetime,
        uid,
    }
}

fn unregister(name: &str, caller: &str, uid: u32) -> Input {
    Input::Unregister {
        name: name.into(),
        caller: caller.into(),
        uid,
    }
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events
        .iter()
        .map(|e| match e.kind {
            EventKind::ParentRegistered { .. } => "registered",
            EventKind::ParentUnregistered { .. } => "unregistered",
            EventKind::ParentUpdated { .. } => "updated",
            EventKind::TypeAdded { .. } => "type-added",
            EventKind::TypeRemoved { .. } => "type-removed",
            EventKind::TypeUpdated { .. } => "type-updated",
        })
        .collect()
}

#[test]
fn kernel_scan_registers_then_is_idempotent() {
    let mut r = Registry::new();
    let ev = r
        .apply(Input::KernelScan(vec![kinfo("b", 1), kinfo("a", 2)]))
        .unwrap();
    assert_eq!(kinds(&ev), ["registered", "registered"]);
    assert_eq!(ev[0].parent_name(), "a");
    assert_eq!((ev[0].seqnum, ev[1].seqnum), (1, 2));
    assert_eq!(r.get("a").unwrap().registered_seqnum, 1);
    assert_eq!(r.get("a").unwrap().source, Source::Kernel);
    let again = r
        .apply(Input::KernelScan(vec![kinfo("a", 2), kinfo("b", 1)]))
        .unwrap();
    assert!(again.is_empty());
    assert_eq!(r.seqnum(), 2);
}

#[test]
fn kernel_scan_diffs_types_and_removes_gone_parents() {
    let mut r = Registry::new();
    r.apply(Input::KernelScan(vec![kinfo("a", 2), kinfo("b", 1)]))
        .unwrap();
    let mut a = kinfo("a", 1);
    a.types[1]
        .devices
        .push("1a2b3c4d-0000-0000-0000-000000000000".into());
    a.types.push(mtype("i915-GVTg_V5_2", 1));
    let ev = r.apply(Input::KernelScan(vec![a])).unwrap();
    assert_eq!(
        kinds(&ev),
        ["unregistered", "type-added", "type-updated", "type-updated"]
    );
    assert_eq!(ev[0].parent_name(), "b");
    match &ev[2].kind {
        EventKind::TypeUpdated { before, after, .. } => {
            assert_eq!(
                (before.available_instances, after.available_instances),
                (2, 1)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(r.get("b").is_none());
}

#[test]
fn kernel_parent_hint_adds_updates_and_removes() {
    let mut r = Registry::new();
    let ev = r
        .apply(Input::KernelParent {
            devpath: kinfo("a", 1).devpath,
            info: Some(kinfo("a", 1)),
        })
        .unwrap();
    assert_eq!(kinds(&ev), ["registered"]);
    let mut moved = kinfo("a", 1);
    moved.driver = "other".into();
    let ev = r
        .apply(Input::KernelParent {
            devpath: moved.devpath.clone(),
            info: Some(moved),
        })
        .unwrap();
    assert_eq!(kinds(&ev), ["updated"]);
    let ev = r
        .apply(Input::KernelParent {
            devpath: kinfo("a", 1).devpath,
            info: None,
        })
        .unwrap();
    assert_eq!(kinds(&ev), ["unregistered"]);
    assert!(r.is_empty());
}

fn vinfo(name: &str, avail: u32) -> ParentInfo {
    ParentInfo {
        backend: Backend::NvidiaVfio,
        physical_device: "0000:41:00.0".to_owned(),
        driver: "nvidia".to_owned(),
        ..kinfo(name, avail)
    }
}

#[test]
fn backend_scan_touches_only_its_backend() {
    let mut registry = Registry::new();
    registry
        .apply(Input::KernelScan(vec![
            kinfo("0000:00:02.0", 1),
            vinfo("0000:41:00.4", 1),
            vinfo("0000:41:00.5", 1),
        ]))
        .unwrap();
    // One VF gone, one changed, one new; the mdev parent is not in the
    // list and stays.
    let events = registry
        .apply(Input::BackendScan {
            backend: Backend::NvidiaVfio,
            parents: vec![vinfo("0000:41:00.5", 0), vinfo("0000:41:00.6", 1)],
        })
        .unwrap();
    assert_eq!(
        kinds(&events),
        ["unregistered", "type-updated", "registered"]
    );
    let names: Vec<&str> = registry.parents().map(|p| p.name()).collect();
    assert_eq!(names, ["0000:00:02.0", "0000:41:00.5", "0000:41:00.6"]);
    // An mdev parent passed in a vendor scan is ignored, not registered.
    let events = registry
        .apply(Input::BackendScan {
            backend: Backend::NvidiaVfio,
            parents: vec![
                vinfo("0000:41:00.5", 0),
                vinfo("0000:41:00.6", 1),
                kinfo("mtty", 1),
            ],
        })
        .unwrap();
    assert!(events.is_empty(), "{events:?}");
    // Vendor parents are never owners of a devpath re-read one by one.
    assert_eq!(
        registry.kernel_devpath_owner("/devices/pci0000:00/0000:41:00.5"),
        None
    );
    assert_eq!(
        registry.kernel_devpath_owner("/devices/pci0000:00/0000:00:02.0"),
        Some("/devices/pci0000:00/0000:00:02.0")
    );
    // The count behind `has_vendor_kernel_parents` follows them.
    assert!(registry.has_vendor_kernel_parents());
    registry
        .apply(Input::BackendScan {
            backend: Backend::NvidiaVfio,
            parents: vec![],
        })
        .unwrap();
    assert!(!registry.has_vendor_kernel_parents());
}

#[test]
fn devpath_owner_matches_parent_and_children_only() {
    let mut r = Registry::new();
    r.apply(Input::KernelScan(vec![kinfo("0000:00:02.0", 1)]))
        .unwrap();
    let dp = "/devices/pci0000:00/0000:00:02.0";
    assert_eq!(r.kernel_devpath_owner(dp), Some(dp));
    assert_eq!(
        r.kernel_devpath_owner(&format!("{dp}/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001")),
        Some(dp)
    );
    assert_eq!(r.kernel_devpath_owner(&format!("{dp}1")), None);
    assert_eq!(r.kernel_devpath_owner("/devices/pci0000:00"), None);
}

#[test]
fn userspace_register_unregister_and_errors() {
    let mut r = Registry::new();
    let ev = r.apply(register("u", ":1.5", Lifetime::Owner)).unwrap();
    assert_eq!(kinds(&ev), ["registered"]);
    let p = r.get("u").unwrap();
    assert_eq!(
        (p.source, p.lifetime, p.owner.as_str()),
        (Source::Userspace, Lifetime::Owner, ":1.5")
    );
    assert_eq!(
        r.apply(register("u", ":1.6", Lifetime::Owner)),
        Err(Error::AlreadyRegistered("u".into()))
    );
    assert_eq!(
        r.apply(unregister("u", ":1.6", 0)),
        Err(Error::NotOwner("u".into()))
    );
    assert_eq!(
        r.apply(unregister("x", ":1.5", 0)),
        Err(Error::NotRegistered("x".into()))
    );
    let ev = r.apply(unregister("u", ":1.5", 0)).unwrap();
    assert_eq!(kinds(&ev), ["unregistered"]);
    assert_eq!(r.seqnum(), 2);
}

#[test]
fn kernel_parents_cannot_be_unregistered_by_request() {
    let mut r = Registry::new();
    r.apply(Input::KernelScan(vec![kinfo("k", 1)])).unwrap();
    assert_eq!(
        r.apply(unregister("k", ":1.1", 0)),
        Err(Error::NotOwner("k".into()))
    );
    assert_eq!(
        r.apply(register("k", ":1.1", Lifetime::Owner)),
        Err(Error::AlreadyRegistered("k".into()))
    );
}

#[test]
fn owner_gone_drops_owner_bound_and_orphans_persistent() {
    let mut r = Registry::new();
    r.apply(register("a", ":1.1", Lifetime::Owner)).unwrap();
    r.apply(register("p", ":1.1", Lifetime::Persistent))
        .unwrap();
    r.apply(register("b", ":1.2", Lifetime::Owner)).unwrap();
    let ev = r
        .apply(Input::OwnerGone {
            owner: ":1.1".into(),
        })
        .unwrap();
    assert_eq!(kinds(&ev), ["unregistered", "updated"]);
    assert!(r.get("a").is_none());
    assert_eq!(r.get("p").unwrap().owner, "");
    assert!(r.get("b").is_some());
    // A persistent parent can be unregistered by another caller.
    let ev = r.apply(unregister("p", ":1.9", 0)).unwrap();
    assert_eq!(kinds(&ev), ["unregistered"]);
    // Gone twice, or an empty owner, changes nothing.
    assert!(r
        .apply(Input::OwnerGone {
            owner: ":1.1".into()
        })
        .unwrap()
        .is_empty());
    assert!(r
        .apply(Input::OwnerGone {
            owner: String::new()
        })
        .unwrap()
        .is_empty());
}

#[test]
fn kernel_parent_waits_for_name_held_by_userspace() {
    let mut r = Registry::new();
    r.apply(register("clash", ":1.1", Lifetime::Owner)).unwrap();
    let ev = r.apply(Input::KernelScan(vec![kinfo("clash", 3)])).unwrap();
    assert!(ev.is_empty());
    assert_eq!(r.waiting().count(), 1);
    assert_eq!(r.get("clash").unwrap().source, Source::Userspace);
    let ev = r
        .apply(Input::OwnerGone {
            owner: ":1.1".into(),
        })
        .unwrap();
    assert_eq!(kinds(&ev), ["unregistered", "registered"]);
    assert_eq!(r.get("clash").unwrap().source, Source::Kernel);
    assert_eq!(r.waiting().count(), 0);
}

#[test]
fn waiting_kernel_parent_that_vanishes_is_forgotten() {
    let mut r = Registry::new();
    r.apply(register("clash", ":1.1", Lifetime::Owner)).unwrap();
    r.apply(Input::KernelScan(vec![kinfo("clash", 3)])).unwrap();
    r.apply(Input::KernelParent {
        devpath: kinfo("clash", 3).devpath,
        info: None,
    })
    .unwrap();
    assert_eq!(r.waiting().count(), 0);
    let ev = r
        .apply(Input::OwnerGone {
            owner: ":1.1".into(),
        })
        .unwrap();
    assert_eq!(kinds(&ev), ["unregistered"]);
    assert!(r.is_empty());
}

#[test]
fn per_owner_limit() {
    let mut r = Registry::new();
    for i in 0..MAX_PARENTS_PER_OWNER {
        r.apply(register(&format!("p{i}"), ":1.1", Lifetime::Owner))
            .unwrap();
    }
    let before = r.clone();
    assert_eq!(
        r.apply(register("one-more", ":1.1", Lifetime::Owner)),
        Err(Error::LimitExceeded(":1.1".into()))
    );
    assert_eq!(r, before);
    r.apply(register("other", ":1.2", Lifetime::Owner)).unwrap();
}

#[test]
fn restore_continues_numbering_and_rejects_duplicates() {
    let p = Parent {
        info: uinfo("kept"),
        source: Source::Userspace,
        owner: ":1.4".into(),
        lifetime: Lifetime::Persistent,
        registered_seqnum: 41,
        uid: 0,
    };
    let (mut r, rejected) = Registry::restore(vec![p.clone(), p.clone()], 7);
    assert_eq!(rejected.len(), 1);
    assert_eq!(r.seqnum(), 41);
    assert_eq!(r.get("kept").unwrap().registered_seqnum, 41);
    let ev = r.apply(register("new", ":1.5", Lifetime::Owner)).unwrap();
    assert_eq!(ev[0].seqnum, 42);
}

#[test]
fn unprivileged_parent_never_shadows_a_kernel_parent() {
    // Re-read of one devpath.
    let mut r = Registry::new();
    r.apply(register_as("clash", ":1.1", Lifetime::Owner, 1000))
        .unwrap();
    let ev = r
        .apply(Input::KernelParent {
            devpath: kinfo("clash", 3).devpath,
            info: Some(kinfo("clash", 3)),
        })
        .unwrap();
    assert_eq!(kinds(&ev), ["unregistered", "registered"]);
    match (&ev[0].kind, &ev[1].kind) {
        (
            EventKind::ParentUnregistered { parent: gone },
            EventKind::ParentRegistered { parent: new },
        ) => {
            assert_eq!((gone.source, gone.uid), (Source::Userspace, 1000));
            assert_eq!(new.source, Source::Kernel);
        }
        other => panic!("unexpected events {other:?}"),
    }
    assert_eq!(r.get("clash").unwrap().source, Source::Kernel);
    assert_eq!(r.waiting().count(), 0);

    // A full scan, persistent parent, and one restored from a state file.
    let restored = Parent {
        info: uinfo("kept"),
        source: Source::Userspace,
        owner: String::new(),
        lifetime: Lifetime::Persistent,
        registered_seqnum: 3,
        uid: 1000,
    };
    let (mut r, _) = Registry::restore(vec![restored], 3);
    r.apply(register_as("p", ":1.2", Lifetime::Persistent, 1000))
        .unwrap();
    let ev = r
        .apply(Input::KernelScan(vec![kinfo("p", 1), kinfo("kept", 1)]))
        .unwrap();
    assert_eq!(
        kinds(&ev),
        ["unregistered", "registered", "unregistered", "registered"]
    );
    assert!(r.parents().all(|p| p.source == Source::Kernel));
    // The name is the kernel's now: registering it again is refused.
    assert_eq!(
        r.apply(register_as("p", ":1.2", Lifetime::Owner, 1000)),
        Err(Error::AlreadyRegistered("p".into()))
    );
}

#[test]
fn root_keeps_first_come_first_served() {
    let mut r = Registry::new();
    r.apply(register_as("clash", ":1.1", Lifetime::Persistent, 0))
        .unwrap();
    let ev = r.apply(Input::KernelScan(vec![kinfo("clash", 3)])).unwrap();
    assert!(ev.is_empty());
    assert_eq!(r.get("clash").unwrap().source, Source::Userspace);
    assert_eq!(r.waiting().count(), 1);
}

#[test]
fn per_uid_limit_spans_connections_and_lifetimes() {
    let mut r = Registry::new();
    let half = MAX_PARENTS_PER_UID / 2;
    for i in 0..half {
        r.apply(register_as(&format!("a{i}"), ":1.1", Lifetime::Owner, 1000))
            .unwrap();
    }
    for i in half..MAX_PARENTS_PER_UID {
        r.apply(register_as(
            &format!("b{i}"),
            ":1.2",
            Lifetime::Persistent,
            1000,
        ))
        .unwrap();
    }
    let before = r.clone();
    assert_eq!(
        r.apply(register_as("one-more", ":1.3", Lifetime::Owner, 1000)),
        Err(Error::UidLimitExceeded(1000))
    );
    assert_eq!(r, before);
    // Another uid, and root, are not held back by uid 1000's parents.
    r.apply(register_as("other", ":1.4", Lifetime::Owner, 1001))
        .unwrap();
    r.apply(register_as("root", ":1.3", Lifetime::Owner, 0))
        .unwrap();
    // Freeing one makes room again.
    r.apply(unregister("a0", ":1.1", 1000)).unwrap();
    r.apply(register_as("one-more", ":1.3", Lifetime::Owner, 1000))
        .unwrap();
}

#[test]
fn persistent_parents_are_unregistered_by_root_or_their_uid() {
    let mut r = Registry::new();
    r.apply(register_as("mine", ":1.1", Lifetime::Persistent, 1000))
        .unwrap();
    r.apply(register_as("roots", ":1.2", Lifetime::Persistent, 0))
        .unwrap();
    assert_eq!(
        r.apply(unregister("roots", ":1.3", 1000)),
        Err(Error::NotOwner("roots".into()))
    );
    assert_eq!(
        r.apply(unregister("mine", ":1.4", 1001)),
        Err(Error::NotOwner("mine".into()))
    );
    assert_eq!(
        kinds(&r.apply(unregister("mine", ":1.5", 1000)).unwrap()),
        ["unregistered"]
    );
    assert_eq!(
        kinds(&r.apply(unregister("roots", ":1.6", 0)).unwrap()),
        ["unregistered"]
    );
}

#[test]
fn a_new_boot_registers_persistent_parents_again() {
    let restored = |name: &str, lifetime, seqnum| Parent {
        info: uinfo(name),
        source: Source::Userspace,
        owner: ":1.4".into(),
        lifetime,
        registered_seqnum: seqnum,
        uid: 0,
    };
    let (mut r, _) = Registry::restore(
        vec![
            restored("kept", Lifetime::Persistent, 5),
            restored("bound", Lifetime::Owner, 6),
        ],
        9,
    );
    r.apply(Input::KernelScan(vec![kinfo("k", 1)])).unwrap();
    let ev = r.apply(Input::NewBoot).unwrap();
    assert_eq!(kinds(&ev), ["registered"]);
    assert_eq!(ev[0].parent_name(), "kept");
    assert_eq!(ev[0].seqnum, 11);
    let kept = r.get("kept").unwrap();
    assert_eq!((kept.registered_seqnum, kept.owner.as_str()), (11, ""));
    // Only persistent userspace parents: the owner-bound one is not
    // announced (its owner leaving is what removes it).
    assert_eq!(r.get("bound").unwrap().registered_seqnum, 6);
    assert_eq!(r.get("k").unwrap().registered_seqnum, 10);
}

// ---- property tests ----

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
const OWNERS: [&str; 3] = [":1.1", ":1.2", ":1.3"];
/// The uid behind each of [`OWNERS`]: root, and one user on two connections.
const OWNER_UIDS: [u32; 3] = [0, 1000, 1000];

fn arb_kinfo() -> impl Strategy<Value = ParentInfo> {
    (0..NAMES.len(), 0u32..3, any::<bool>()).prop_map(|(n, avail, extra)| {
        let mut info = kinfo(NAMES[n], avail);
        if extra {
            info.types.push(mtype("extra", avail));
        }
        info
    })
}

fn arb_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        prop::collection::vec(arb_kinfo(), 0..5).prop_map(Input::KernelScan),
        (arb_kinfo(), any::<bool>()).prop_map(|(info, present)| Input::KernelParent {
            devpath: info.devpath.clone(),
            info: present.then_some(info),
        }),
        (0..NAMES.len(), 0..OWNERS.len(), any::<bool>()).prop_map(|(n, o, persistent)| {
            register_as(
                NAMES[n],
                OWNERS[o],
                if persistent {
                    Lifetime::Persistent
                } else {
                    Lifetime::Owner
                },
                OWNER_UIDS[o],
            )
        }),
        (0..NAMES.len(), 0..OWNERS.len()).prop_map(|(n, o)| unregister(
            NAMES[n],
            OWNERS[o],
            OWNER_UIDS[o]
        )),
        (0..OWNERS.len()).prop_map(|o| Input::OwnerGone {
            owner: OWNERS[o].into()
        }),
        Just(Input::NewBoot),
    ]
}

/// What sysfs holds according to the inputs so far: the model the registry's
/// kernel side must agree with.
fn update_sysfs_model(model: &mut BTreeMap<String, ParentInfo>, input: &Input) {
    match input {
        Input::KernelScan(infos) => {
            model.clear();
            for info in infos {
                let mut info = info.clone();
                info.normalize();
                model.entry(info.name.clone()).or_insert(info);
            }
        }
        Input::KernelParent { devpath, info } => {
            model.retain(|_, i| &i.devpath != devpath);
            if let Some(info) = info {
                let mut info = info.clone();
                info.normalize();
                model.insert(info.name.clone(), info);
            }
        }
        _ => {}
    }
}

fn check_invariants(r: &Registry, sysfs: &BTreeMap<String, ParentInfo>) {
    // The counts and the index are what a walk over every parent gives.
    let mut walked = Counts::default();
    for parent in r.parents() {
        walked.add(parent);
    }
    assert_eq!(r.counts, walked, "counts kept by put/take");
    assert_eq!(
        r.userspace_parents().map(|p| p.name()).collect::<Vec<_>>(),
        r.parents()
            .filter(|p| p.source == Source::Userspace)
            .map(|p| p.name())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        r.has_vendor_kernel_parents(),
        r.parents()
            .any(|p| p.source == Source::Kernel && p.info.backend == Backend::NvidiaVfio)
    );
    for (name, p) in &r.parents {
        assert_eq!(name, p.name());
        assert!(p.registered_seqnum <= r.seqnum);
        match p.source {
            Source::Kernel => assert_eq!(Some(&p.info), sysfs.get(name)),
            Source::Userspace => assert_ne!(p.lifetime, Lifetime::Kernel),
        }
    }
    for (name, info) in &r.waiting {
        assert_eq!(
            r.parents[name].source,
            Source::Userspace,
            "waiting {name} not shadowed"
        );
        assert_eq!(
            r.parents[name].uid, 0,
            "{name}: only root shadows the kernel"
        );
        assert_eq!(Some(info), sysfs.get(name));
    }
    // Every parent sysfs holds is registered or waiting.
    for name in sysfs.keys() {
        let p = &r.parents[name];
        assert!(p.source == Source::Kernel || r.waiting.contains_key(name));
    }
    for owner in OWNERS {
        assert!(r.parents.values().filter(|p| p.owner == owner).count() <= MAX_PARENTS_PER_OWNER);
    }
    for uid in OWNER_UIDS.into_iter().filter(|&uid| uid != 0) {
        assert!(
            r.parents
                .values()
                .filter(|p| p.is_unprivileged() && p.uid == uid)
                .count()
                <= MAX_PARENTS_PER_UID
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_sequence_keeps_invariants(inputs in prop::collection::vec(arb_input(), 0..40)) {
        let mut r = Registry::new();
        let mut sysfs = BTreeMap::new();
        for input in inputs {
            let before = r.clone();
            let last = r.seqnum();
            match r.apply(input.clone()) {
                Ok(events) => {
                    update_sysfs_model(&mut sysfs, &input);
                    let mut prev = last;
                    for e in &events {
                        prop_assert!(e.seqnum == prev + 1, "seqnum not strictly consecutive");
                        prev = e.seqnum;
                    }
                    prop_assert_eq!(r.seqnum(), prev);
                }
                Err(_) => prop_assert_eq!(&r, &before, "refused input changed the registry"),
            }
            check_invariants(&r, &sysfs);
        }
    }

    #[test]
    fn replaying_the_events_gives_the_same_registry(
        inputs in prop::collection::vec(arb_input(), 0..40),
    ) {
        let mut r = Registry::new();
        let mut shown = r.clone();
        for input in inputs {
            if let Ok(events) = r.apply(input) {
                shown.replay(&events);
            }
            prop_assert_eq!(shown.seqnum(), r.seqnum());
            prop_assert_eq!(&shown.parents, &r.parents);
            prop_assert_eq!(&shown.counts, &r.counts);
            prop_assert_eq!(&shown.kernel_devpaths, &r.kernel_devpaths);
            prop_assert_eq!(shown.vendor_kernel_parents, r.vendor_kernel_parents);
        }
    }

    #[test]
    fn snapshot_applied_twice_yields_nothing(
        prefix in prop::collection::vec(arb_input(), 0..20),
        scan in prop::collection::vec(arb_kinfo(), 0..5),
    ) {
        let mut r = Registry::new();
        for input in prefix {
            let _ = r.apply(input);
        }
        r.apply(Input::KernelScan(scan.clone())).unwrap();
        let again = r.apply(Input::KernelScan(scan.clone())).unwrap();
        prop_assert!(again.is_empty());
        // Re-reading each parent the scan kept, one by one, finds nothing new.
        let mut kept = BTreeMap::new();
        for info in scan {
            kept.entry(info.name.clone()).or_insert(info);
        }
        for info in kept.into_values() {
            let ev = r
                .apply(Input::KernelParent { devpath: info.devpath.clone(), info: Some(info) })
                .unwrap();
            prop_assert!(ev.is_empty(), "re-read after scan changed the registry: {:?}", ev);
        }
        let state = r.clone();
        let ev = r.apply(Input::KernelScan(Vec::new())).unwrap();
        let ev2 = r.apply(Input::KernelScan(Vec::new())).unwrap();
        prop_assert!(ev2.is_empty());
        prop_assert!(ev.len() <= state.len());
    }

    #[test]
    fn register_then_unregister_returns_to_start(
        prefix in prop::collection::vec(arb_input(), 0..20),
        persistent in any::<bool>(),
    ) {
        let mut r = Registry::new();
        for input in prefix {
            let _ = r.apply(input);
        }
        let start = r.clone();
        let lifetime = if persistent { Lifetime::Persistent } else { Lifetime::Owner };
        let reg = r.apply(register("fresh", ":1.77", lifetime)).unwrap();
        prop_assert_eq!(kinds(&reg), ["registered"]);
        let unreg = r.apply(unregister("fresh", ":1.77", 0)).unwrap();
        prop_assert_eq!(kinds(&unreg), ["unregistered"]);
        prop_assert_eq!(&r.parents, &start.parents);
        prop_assert_eq!(&r.waiting, &start.waiting);
        prop_assert_eq!(r.seqnum(), start.seqnum() + 2);
    }
}
