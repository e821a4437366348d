//! Hostile sysfs beyond `tests/sysfs_reader.rs`: parents vanishing while a
//! scan runs (a concurrent thread), files unreadable to an unprivileged
//! reader (uid 65534 in a child process), generated trees (property test,
//! also a fuzz target), and a running `mdevregd` on a tree with every kind
//! of damage: a warning for each, no panic, the good parents still served.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::daemon::Setup;
use common::helper_process::{helper_role, helper_say, run_helper};
use common::prereq;
use common::prereq::{open_tempdir, run};
use common::registry_client;
use common::sysfs_fixture::{FakeSysfs, ParentSpec, TypeSpec};
use common::tree_ops;
use mdevreg::dbus::Parent1Proxy;
use mdevreg::paths::SysfsRoot;
use mdevreg::sysfs::{read_parent, scan};
use proptest::prelude::*;
use zbus::proxy::CacheProperties;

/// The helper run as uid 65534: scans the tree and prints what it found.
#[test]
#[ignore = "entry point of helper processes (common::helper_process), not a test"]
fn helper_process() {
    match helper_role().as_deref() {
        None => {}
        Some("scan-as-nobody") => {
            let root = std::env::var("MDEVREG_TEST_SYSFS").unwrap();
            helper_say(&format!("uid {}", nix::unistd::getuid()));
            let result = scan(&SysfsRoot::new(root));
            for parent in &result.parents {
                let ids: Vec<&str> = parent.types.iter().map(|t| t.id.as_str()).collect();
                helper_say(&format!("parent {} {}", parent.name, ids.join(",")));
            }
            for warning in &result.warnings {
                helper_say(&format!("warning {warning}"));
            }
        }
        Some(other) => panic!("unknown helper role {other}"),
    }
}

fn flapping_spec(index: usize) -> ParentSpec {
    ParentSpec::new(&format!("/devices/virtual/flap/flap-{index}"))
        .subsystem("class/flap")
        .with_type(TypeSpec::new(&format!("flap-{index}a"), "vfio-pci", 1))
        .with_type(TypeSpec::new(&format!("flap-{index}b"), "vfio-pci", 2))
}

/// Adds and removes `count` parents (the whole device directory too) in
/// a loop until `stop`; returns the number of flips.
fn spawn_flapper(
    root: &Path,
    count: usize,
    stop: Arc<AtomicBool>,
    flips: Arc<AtomicU64>,
) -> thread::JoinHandle<()> {
    let tree = FakeSysfs::at(root);
    thread::spawn(move || {
        let specs: Vec<ParentSpec> = (0..count).map(flapping_spec).collect();
        while !stop.load(Ordering::Relaxed) {
            for spec in &specs {
                tree.add_parent(spec);
                flips.fetch_add(1, Ordering::Relaxed);
            }
            for spec in &specs {
                // As the kernel does (links and types first), then the device.
                tree.remove_parent(spec.name());
                fs::remove_dir_all(tree.path(&spec.devpath)).expect("remove device");
                flips.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

#[test]
fn parents_vanishing_during_scans_never_hide_the_stable_ones() {
    let tree = FakeSysfs::new();
    tree.add_parent(&ParentSpec::gvt());
    tree.add_parent(&ParentSpec::mtty());
    let root = tree.sysfs_root();
    let stable = scan(&root);
    assert_eq!(stable.warnings, []);

    let stop = Arc::new(AtomicBool::new(false));
    let flips = Arc::new(AtomicU64::new(0));
    let flapper = spawn_flapper(tree.root(), 8, stop.clone(), flips.clone());
    let started = Instant::now();
    let (mut scans, mut seen_flapping, mut warnings) = (0u64, 0u64, 0u64);
    while started.elapsed() < Duration::from_secs(3) || scans < 100 {
        let result = scan(&root);
        for good in &stable.parents {
            let found = result.parents.iter().find(|p| p.name == good.name);
            assert_eq!(
                found,
                Some(good),
                "scan {scans}: stable parent changed or missing"
            );
        }
        for parent in &result.parents {
            if parent.name.starts_with("flap-") {
                seen_flapping += 1;
                // A flapping parent is read whole or with types missing, never wrong.
                assert!(
                    parent
                        .types
                        .iter()
                        .all(|t| t.id.starts_with(&parent.name[..])),
                    "{parent:?}"
                );
            } else {
                assert!(
                    stable.parents.iter().any(|p| p.name == parent.name),
                    "{parent:?}"
                );
            }
        }
        // read_parent on a devpath that comes and goes.
        let _ = read_parent(&root, "/devices/virtual/flap/flap-3");
        warnings += result.warnings.len() as u64;
        scans += 1;
    }
    stop.store(true, Ordering::Relaxed);
    flapper.join().expect("flapper thread");
    eprintln!(
        "FIGURES vanishing-parents: {scans} scans during {} add/remove flips, {seen_flapping} flapping parents seen, {warnings} warnings, stable parents always complete",
        flips.load(Ordering::Relaxed)
    );
    assert!(seen_flapping > 0, "the flapper never overlapped a scan");
}

#[test]
fn unreadable_files_are_warnings_for_an_unprivileged_reader() {
    if !prereq::prerequisites(
        "unreadable_files_are_warnings_for_an_unprivileged_reader",
        &["setpriv"],
    ) {
        return;
    }
    let dir = open_tempdir("mdevreg-unreadable-");
    let tree = FakeSysfs::at(dir.path().join("sys"));
    tree.add_parent(&ParentSpec::gvt());
    tree.add_parent(&ParentSpec::mtty());
    tree.add_parent(&ParentSpec::mdpy());
    let mode_000 = fs::Permissions::from_mode(0o000);
    let unreadable_count = tree.type_dir("mtty", "mtty-1").join("available_instances");
    fs::set_permissions(&unreadable_count, mode_000.clone()).unwrap();
    let unreadable_name = tree.type_dir("0000:00:02.0", "i915-GVTg_V5_2").join("name");
    fs::set_permissions(&unreadable_name, mode_000.clone()).unwrap();
    let unreadable_types = tree.parent_dir("mdpy").join("mdev_supported_types");
    fs::set_permissions(&unreadable_types, mode_000).unwrap();

    let lines = run_helper(
        "scan-as-nobody",
        &[("MDEVREG_TEST_SYSFS", tree.root().display().to_string())],
        true,
    );
    let text = lines.join("\n");
    assert_eq!(lines[0], "uid 65534", "{text}");
    let parents: Vec<&String> = lines.iter().filter(|l| l.starts_with("parent ")).collect();
    assert_eq!(
        parents,
        [
            "parent 0000:00:02.0 i915-GVTg_V5_1,i915-GVTg_V5_2,i915-GVTg_V5_4,i915-GVTg_V5_8",
            "parent mtty mtty-2",
        ],
        "{text}"
    );
    let warnings: Vec<&String> = lines.iter().filter(|l| l.starts_with("warning ")).collect();
    for path in [&unreadable_count, &unreadable_name, &unreadable_types] {
        let wanted = format!("warning {}: ", path.display());
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with(&wanted) && w.contains("ermission")),
            "no permission warning for {}: {text}",
            path.display()
        );
    }
    assert_eq!(warnings.len(), 3, "{text}");
    eprintln!("FIGURES unreadable-files: 3 unreadable paths, 3 warnings, 2 good parents read");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random mutations of a valid tree never make the reader panic, hang,
    /// or break its invariants (see `tree_ops::check_reader`).
    #[test]
    fn generated_trees_keep_the_reader_invariants(data in proptest::collection::vec(any::<u8>(), 0..160)) {
        let base = tempfile::tempdir().unwrap();
        let scratch = tree_ops::Scratch::new(base.path(), "tree");
        tree_ops::check_reader(scratch.tree(&data));
    }
}

/// Inputs the fuzz target found, kept as fixed cases: an empty
/// `device_api` file (kept, as mdevctl keeps it) and NUL bytes in a
/// `description` (must not come through).
#[test]
fn generated_tree_regressions() {
    let base = tempfile::tempdir().unwrap();
    let scratch = tree_ops::Scratch::new(base.path(), "tree");
    for data in [&b"}f"[..], &[2, 8, 0, 10][..]] {
        tree_ops::check_reader(scratch.tree(data));
    }
}

/// The path of type `id` of `parent` on the bus.
fn type_path(parent: &str, id: &str) -> String {
    mdevreg::label::type_path(parent, id)
}

async fn served_types(setup: &Setup, parent: &str) -> BTreeSet<String> {
    let proxy = Parent1Proxy::builder(&setup.client)
        .path(mdevreg::label::parent_path(parent))
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .unwrap();
    proxy
        .types()
        .await
        .unwrap_or_else(|err| panic!("Types of {parent}: {err}"))
        .into_iter()
        .map(|path| path.to_string())
        .collect()
}

async fn rescan(setup: &Setup) -> zbus::Result<()> {
    setup
        .client
        .call_method(
            Some(registry_client::BUS_NAME),
            registry_client::ROOT_PATH,
            Some(registry_client::REGISTRY_IFACE),
            "Rescan",
            &(),
        )
        .await
        .map(|_| ())
}

#[test]
fn daemon_serves_the_good_parents_of_a_hostile_tree() {
    run(
        "daemon_serves_the_good_parents_of_a_hostile_tree",
        &[],
        || async {
            let dir = open_tempdir("mdevreg-hostile-tree-");
            let tree = FakeSysfs::at(dir.path().join("sys"));
            tree.add_parent(&ParentSpec::gvt());
            tree.add_parent(&ParentSpec::mtty());
            tree.add_parent(&ParentSpec::mdpy());
            tree.add_parent(&ParentSpec::mbochs());
            tree.add_parent(&ParentSpec::nvidia("0000:3b:00.0", 3));
            // One of each kind of damage.
            tree.symlink_loop("class/mdev_bus/loop");
            tree.add_dangling_parent_link("0000:00:09.0");
            fs::write(
                tree.type_dir("mtty", "mtty-1").join("available_instances"),
                "many\n",
            )
            .unwrap();
            let huge = tree
                .type_dir("0000:00:02.0", "i915-GVTg_V5_1")
                .join("description");
            tree.write_huge_file(&huge, 10 << 20);
            tree.mkdir_raw(
                tree.parent_dir("mtty").join("mdev_supported_types"),
                b"mtty-\xff",
            );
            tree.symlink_loop(tree.parent_dir("mdpy").join("mdev_supported_types"));
            let fifo = tree
                .type_dir("0000:3b:00.0", "nvidia-101")
                .join("device_api");
            fs::remove_file(&fifo).unwrap();
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
            let huge_count = tree
                .type_dir("0000:3b:00.0", "nvidia-102")
                .join("available_instances");
            tree.write_huge_file(&huge_count, 10 << 20);
            let damaged = [
                "class/mdev_bus/loop".to_owned(),
                "0000:00:09.0".to_owned(),
                "mtty-1/available_instances".to_owned(),
                "i915-GVTg_V5_1/description".to_owned(),
                "mtty-".to_owned(),
                "mdpy".to_owned(),
                "nvidia-101/device_api".to_owned(),
                "nvidia-102/available_instances".to_owned(),
            ];

            let mut setup = Setup::start(tree.root(), |options| options.emit = "none").await;
            setup.daemon.assert_alive("after reading the hostile tree");
            let served = setup.snapshot().await;
            assert_eq!(
                served.names(),
                ["0000:00:02.0", "0000:3b:00.0", "mbochs", "mtty"]
            );
            let expect_types = |parent: &str, ids: &[&str]| -> BTreeSet<String> {
                ids.iter().map(|id| type_path(parent, id)).collect()
            };
            assert_eq!(
                served_types(&setup, "mtty").await,
                expect_types("mtty", &["mtty-2"])
            );
            assert_eq!(
                served_types(&setup, "0000:00:02.0").await,
                expect_types(
                    "0000:00:02.0",
                    &[
                        "i915-GVTg_V5_1",
                        "i915-GVTg_V5_2",
                        "i915-GVTg_V5_4",
                        "i915-GVTg_V5_8"
                    ]
                )
            );
            assert_eq!(
                served_types(&setup, "0000:3b:00.0").await,
                expect_types("0000:3b:00.0", &["nvidia-100"])
            );
            assert_eq!(served_types(&setup, "mbochs").await.len(), 3);
            let log = setup.daemon.log();
            let warning_lines: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
            let unmentioned: Vec<&String> = damaged
                .iter()
                .filter(|needle| {
                    !warning_lines
                        .iter()
                        .any(|line| line.contains(needle.as_str()))
                })
                .collect();
            assert!(
                unmentioned.is_empty(),
                "no warning names {unmentioned:?}; warnings:\n{}",
                warning_lines.join("\n")
            );

            // Parents vanish and reappear while Rescan runs, over and over.
            let stop = Arc::new(AtomicBool::new(false));
            let flips = Arc::new(AtomicU64::new(0));
            let flapper = spawn_flapper(tree.root(), 8, stop.clone(), flips.clone());
            let started = Instant::now();
            let mut rescans = 0;
            while started.elapsed() < Duration::from_secs(3) {
                rescan(&setup).await.expect("Rescan while parents vanish");
                rescans += 1;
                let names = setup.snapshot().await.names();
                for good in ["0000:00:02.0", "0000:3b:00.0", "mbochs", "mtty"] {
                    assert!(
                        names.iter().any(|n| n == good),
                        "{good} lost during rescans: {names:?}"
                    );
                }
            }
            stop.store(true, Ordering::Relaxed);
            flapper.join().expect("flapper thread");
            setup
                .daemon
                .assert_alive("after rescans with vanishing parents");

            // The flappers are gone and one parent is removed: a rescan converges.
            tree.remove_parent("mbochs");
            rescan(&setup).await.expect("final Rescan");
            assert_eq!(
                setup.snapshot().await.names(),
                ["0000:00:02.0", "0000:3b:00.0", "mtty"]
            );
            setup.daemon.assert_alive("at the end");
            eprintln!(
            "FIGURES hostile-tree-daemon: {} kinds of damage warned about, {rescans} rescans during {} flips, good parents always served",
            damaged.len(),
            flips.load(Ordering::Relaxed)
        );
        },
    );
}

/// NUL bytes in text attributes (the kernel never writes them, a hostile
/// or broken tree may): D-Bus strings cannot carry NUL, so they must not
/// reach the bus as they are, and the daemon must start and serve.
#[test]
fn nul_bytes_in_attributes_do_not_break_the_daemon() {
    run(
        "nul_bytes_in_attributes_do_not_break_the_daemon",
        &[],
        || async {
            let tree = FakeSysfs::new();
            tree.add_parent(&ParentSpec::mtty());
            tree.add_parent(&ParentSpec::mbochs());
            fs::write(
                tree.type_dir("mbochs", "mbochs-1").join("description"),
                "64 MB\0video\n",
            )
            .unwrap();
            fs::write(
                tree.type_dir("mbochs", "mbochs-2").join("name"),
                "med\0ium\n",
            )
            .unwrap();
            let mut setup = Setup::start(tree.root(), |options| options.emit = "none").await;
            setup.daemon.assert_alive("after reading NUL bytes");
            assert_eq!(setup.snapshot().await.names(), ["mbochs", "mtty"]);
            // Every object, the NUL-damaged types included, can be read.
            let managed = zbus::fdo::ObjectManagerProxy::builder(&setup.client)
                .destination(registry_client::BUS_NAME)
                .path(registry_client::ROOT_PATH)
                .build()
                .await
                .unwrap()
                .get_managed_objects()
                .await;
            let managed = managed.unwrap_or_else(|err| panic!("GetManagedObjects fails: {err}"));
            assert!(managed.len() >= 1 + 1 + 3, "{} objects", managed.len());
            for id in ["mbochs-1", "mbochs-2"] {
                let type_proxy = zbus::Proxy::new(
                    &setup.client,
                    registry_client::BUS_NAME,
                    type_path("mbochs", id),
                    "org.mdevreg.MdevType1",
                )
                .await
                .unwrap();
                for property in ["Name", "Description"] {
                    let value: zbus::Result<String> = type_proxy.get_property(property).await;
                    let value = value.unwrap_or_else(|err| panic!("{id} {property}: {err}"));
                    assert!(!value.contains('\0'), "{id} {property}: {value:?}");
                }
            }
            setup
                .daemon
                .assert_alive("after clients read the NUL-damaged types");
        },
    );
}
