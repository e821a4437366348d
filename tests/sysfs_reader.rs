//! The sysfs reader on realistic and hostile fake trees: good parents are
//! always read, everything wrong becomes a warning naming its path, nothing
//! panics or hangs.

mod common;

use std::fs;

use common::sysfs_fixture::{
    many_parents, populate_mixed, uuid_for, FakeSysfs, ParentSpec, TypeSpec,
};
use mdevreg::model::ParentInfo;
use mdevreg::sysfs::{read_parent, scan, ParentRead, Scan, Warning};

fn names(scan: &Scan) -> Vec<&str> {
    scan.parents.iter().map(|p| p.name.as_str()).collect()
}

fn parent<'a>(scan: &'a Scan, name: &str) -> &'a ParentInfo {
    scan.parents
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("parent {name} missing from {:?}", names(scan)))
}

fn type_ids(info: &ParentInfo) -> Vec<&str> {
    info.types.iter().map(|t| t.id.as_str()).collect()
}

/// Exactly one warning, about `path`, whose message contains `needle`.
fn assert_one_warning(warnings: &[Warning], path: &std::path::Path, needle: &str) {
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert_eq!(warnings[0].path, path, "{warnings:#?}");
    assert!(warnings[0].message.contains(needle), "{warnings:#?}");
}

fn gvt_tree() -> FakeSysfs {
    let tree = FakeSysfs::new();
    tree.add_parent(&ParentSpec::gvt());
    tree.add_parent(&ParentSpec::mtty());
    tree
}

#[test]
fn mixed_tree_is_read_completely() {
    let tree = FakeSysfs::new();
    populate_mixed(&tree);
    let scan = scan(&tree.sysfs_root());
    assert_eq!(scan.warnings, []);
    assert_eq!(
        names(&scan),
        [
            "0.0.0013",
            "0.0.0014",
            "0000:00:02.0",
            "0000:3b:00.0",
            "matrix",
            "mbochs",
            "mdpy",
            "mtty"
        ]
    );

    let gvt = parent(&scan, "0000:00:02.0");
    assert_eq!(gvt.devpath, "/devices/pci0000:00/0000:00:02.0");
    assert_eq!(
        (gvt.subsystem.as_str(), gvt.driver.as_str()),
        ("pci", "i915")
    );
    assert_eq!(
        type_ids(gvt),
        [
            "i915-GVTg_V5_1",
            "i915-GVTg_V5_2",
            "i915-GVTg_V5_4",
            "i915-GVTg_V5_8"
        ]
    );
    let v5_4 = gvt.get_type("i915-GVTg_V5_4").unwrap();
    assert_eq!(v5_4.name, "GVTg_V5_4");
    assert_eq!(v5_4.device_api, "vfio-pci");
    assert_eq!(v5_4.available_instances, 5);
    assert_eq!(
        v5_4.description,
        "low_gm_size: 128MB, high_gm_size: 512MB, fence: 4, resolution: 1920x1200, weight: 4"
    );
    assert_eq!(v5_4.devices, [uuid_for(1), uuid_for(2)]);

    let mtty = parent(&scan, "mtty");
    assert_eq!(mtty.devpath, "/devices/virtual/mtty/mtty");
    assert_eq!(
        (mtty.subsystem.as_str(), mtty.driver.as_str()),
        ("mtty", "")
    );
    assert_eq!(mtty.get_type("mtty-2").unwrap().devices, [uuid_for(3)]);
    assert_eq!(mtty.get_type("mtty-1").unwrap().description, "");

    let ccw = parent(&scan, "0.0.0013");
    assert_eq!(ccw.devpath, "/devices/css0/0.0.0013");
    assert_eq!(
        (ccw.subsystem.as_str(), ccw.driver.as_str()),
        ("css", "vfio_ccw")
    );
    assert_eq!(ccw.get_type("vfio_ccw-io").unwrap().device_api, "vfio-ccw");

    let ap = parent(&scan, "matrix");
    assert_eq!(
        (ap.subsystem.as_str(), ap.driver.as_str()),
        ("matrix", "vfio_ap")
    );
    assert_eq!(ap.types[0].available_instances, 65535);
    assert_eq!(parent(&scan, "0000:3b:00.0").types.len(), 12);
}

#[test]
fn read_parent_matches_scan() {
    let tree = FakeSysfs::new();
    populate_mixed(&tree);
    let root = tree.sysfs_root();
    let scan = scan(&root);
    for info in &scan.parents {
        match read_parent(&root, &info.devpath) {
            ParentRead::Parent(read, warnings) => {
                assert_eq!(&read, info);
                assert_eq!(warnings, []);
            }
            other => panic!("{}: {other:?}", info.devpath),
        }
    }
}

#[test]
fn root_given_with_dotdot_components_works() {
    let tree = gvt_tree();
    // Links resolve to canonical paths; the root is canonicalised to match.
    let detour = tree.root().join("devices").join("..");
    let scan = scan(&mdevreg::paths::SysfsRoot::new(detour));
    assert_eq!(scan.warnings, []);
    assert_eq!(names(&scan), ["0000:00:02.0", "mtty"]);
}

#[test]
fn missing_device_api_skips_only_that_type() {
    let tree = gvt_tree();
    let bad = tree
        .type_dir("0000:00:02.0", "i915-GVTg_V5_2")
        .join("device_api");
    fs::remove_file(&bad).unwrap();
    let scan = scan(&tree.sysfs_root());
    assert_one_warning(&scan.warnings, &bad, "missing");
    assert_eq!(
        type_ids(parent(&scan, "0000:00:02.0")),
        ["i915-GVTg_V5_1", "i915-GVTg_V5_4", "i915-GVTg_V5_8"]
    );
    assert_eq!(parent(&scan, "mtty").types.len(), 2);
}

#[test]
fn garbage_available_instances_is_a_warning() {
    for garbage in ["abc\n", "-1\n", "4294967296\n", "", "3 4\n", "\u{7}"] {
        let tree = gvt_tree();
        let bad = tree.type_dir("mtty", "mtty-1").join("available_instances");
        fs::write(&bad, garbage).unwrap();
        let scan = scan(&tree.sysfs_root());
        assert_one_warning(&scan.warnings, &bad, "not a number");
        assert_eq!(type_ids(parent(&scan, "mtty")), ["mtty-2"], "{garbage:?}");
        assert_eq!(parent(&scan, "0000:00:02.0").types.len(), 4);
    }
}

#[test]
fn non_utf8_device_api_is_a_warning() {
    let tree = gvt_tree();
    let bad = tree.type_dir("mtty", "mtty-2").join("device_api");
    fs::write(&bad, b"vfio-\xffpci\n").unwrap();
    let scan = scan(&tree.sysfs_root());
    assert_one_warning(&scan.warnings, &bad, "UTF-8");
    assert_eq!(type_ids(parent(&scan, "mtty")), ["mtty-1"]);
}

#[test]
fn non_utf8_name_is_kept_lossily() {
    let tree = gvt_tree();
    let bad = tree.type_dir("mtty", "mtty-2").join("name");
    fs::write(&bad, b"Dual \xff port\n").unwrap();
    let scan = scan(&tree.sysfs_root());
    assert_one_warning(&scan.warnings, &bad, "UTF-8");
    assert_eq!(
        parent(&scan, "mtty").get_type("mtty-2").unwrap().name,
        "Dual \u{fffd} port"
    );
}

#[test]
fn all_types_bad_keeps_parent_without_types() {
    let tree = gvt_tree();
    for id in ["mtty-1", "mtty-2"] {
        fs::write(tree.type_dir("mtty", id).join("available_instances"), "x").unwrap();
    }
    let scan = scan(&tree.sysfs_root());
    assert_eq!(scan.warnings.len(), 2, "{:#?}", scan.warnings);
    assert_eq!(parent(&scan, "mtty").types, []);
    assert_eq!(names(&scan), ["0000:00:02.0", "mtty"]);
}

#[test]
fn huge_files_are_refused_without_reading_them_whole() {
    let tree = gvt_tree();
    let description = tree
        .type_dir("0000:00:02.0", "i915-GVTg_V5_1")
        .join("description");
    tree.write_huge_file(&description, 10 << 20);
    let avail = tree.type_dir("mtty", "mtty-1").join("available_instances");
    tree.write_huge_file(&avail, 10 << 20);
    let scan = scan(&tree.sysfs_root());
    assert_eq!(scan.warnings.len(), 2, "{:#?}", scan.warnings);
    assert!(scan
        .warnings
        .iter()
        .all(|w| w.message.contains("larger than 65536")));
    // A too-big description is treated as absent; the type stays.
    let gvt = parent(&scan, "0000:00:02.0");
    assert_eq!(gvt.get_type("i915-GVTg_V5_1").unwrap().description, "");
    assert_eq!(type_ids(parent(&scan, "mtty")), ["mtty-2"]);
}

#[test]
fn symlink_loops_are_warnings() {
    let tree = gvt_tree();
    tree.add_parent(&ParentSpec::mdpy());
    // A looping attribute, a looping parent link and a looping types dir.
    let avail = tree.type_dir("mtty", "mtty-1").join("available_instances");
    tree.symlink_loop(&avail);
    tree.symlink_loop("class/mdev_bus/loop");
    let types_dir = tree.parent_dir("mdpy").join("mdev_supported_types");
    tree.symlink_loop(&types_dir);
    let scan = scan(&tree.sysfs_root());
    assert_eq!(names(&scan), ["0000:00:02.0", "mtty"]);
    assert_eq!(type_ids(parent(&scan, "mtty")), ["mtty-2"]);
    let text: Vec<String> = scan.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 3, "{text:#?}");
    assert!(
        text.iter()
            .any(|w| w.contains("available_instances: symlink loop")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|w| w.contains("class/mdev_bus/loop: symlink loop")),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|w| w.contains("class/mdev_bus/mdpy")),
        "{text:#?}"
    );
}

#[test]
fn dangling_and_escaping_parent_links_are_skipped() {
    let tree = gvt_tree();
    tree.add_dangling_parent_link("0000:00:09.0");
    std::os::unix::fs::symlink("/etc", tree.path("class/mdev_bus/etc")).unwrap();
    fs::create_dir(tree.path("class/mdev_bus/plain-dir")).unwrap();
    let scan = scan(&tree.sysfs_root());
    assert_eq!(names(&scan), ["0000:00:02.0", "mtty"]);
    let text: Vec<String> = scan.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 3, "{text:#?}");
    assert!(
        text.iter()
            .any(|w| w.contains("0000:00:09.0: dangling link")),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|w| w.contains("etc: points to /etc")),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|w| w.contains("plain-dir: points to")),
        "{text:#?}"
    );
}

#[test]
fn non_utf8_names_are_skipped() {
    let tree = gvt_tree();
    let bad_type = tree.mkdir_raw(
        tree.parent_dir("mtty").join("mdev_supported_types"),
        b"mtty-\xff",
    );
    tree.symlink_raw(
        "class/mdev_bus",
        b"bad\xfe",
        b"../../devices/virtual/mtty/mtty",
    );
    tree.symlink_raw(
        tree.type_dir("mtty", "mtty-1").join("devices"),
        b"\xfe-uuid",
        b"../../../nothing",
    );
    let scan = scan(&tree.sysfs_root());
    assert_eq!(names(&scan), ["0000:00:02.0", "mtty"]);
    assert_eq!(type_ids(parent(&scan, "mtty")), ["mtty-1", "mtty-2"]);
    assert_eq!(scan.warnings.len(), 3, "{:#?}", scan.warnings);
    assert!(scan
        .warnings
        .iter()
        .all(|w| w.message.contains("not valid UTF-8")));
    assert!(scan.warnings.iter().any(|w| w.path == bad_type));
}

#[test]
fn non_uuid_instance_names_are_skipped() {
    let tree = gvt_tree();
    tree.add_instance("mtty", "mtty-1", &uuid_for(9));
    let devices = tree.type_dir("mtty", "mtty-1").join("devices");
    tree.write_file(devices.join(".gitkeep"), "");
    let scan = scan(&tree.sysfs_root());
    assert_one_warning(&scan.warnings, &devices.join(".gitkeep"), "not a UUID");
    assert_eq!(
        parent(&scan, "mtty").get_type("mtty-1").unwrap().devices,
        [uuid_for(9)]
    );
}

#[test]
fn fifo_attribute_does_not_hang() {
    let tree = gvt_tree();
    let avail = tree.type_dir("mtty", "mtty-1").join("available_instances");
    fs::remove_file(&avail).unwrap();
    nix::unistd::mkfifo(&avail, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let scan = scan(&tree.sysfs_root());
    assert_one_warning(&scan.warnings, &avail, "not a regular file");
}

#[test]
fn missing_optional_parts_are_quiet() {
    let tree = FakeSysfs::new();
    // No subsystem, no driver, no name, no description, no devices dir.
    tree.add_parent(
        &ParentSpec::new("/devices/platform/bare").with_type(TypeSpec::new(
            "bare-1",
            "vfio-platform",
            2,
        )),
    );
    fs::remove_dir(tree.type_dir("bare", "bare-1").join("devices")).unwrap();
    // A plain file among the type directories is ignored, like mdevctl does.
    tree.write_file(
        tree.parent_dir("bare").join("mdev_supported_types/README"),
        "x",
    );
    let scan = scan(&tree.sysfs_root());
    assert_eq!(scan.warnings, []);
    let bare = parent(&scan, "bare");
    assert_eq!((bare.subsystem.as_str(), bare.driver.as_str()), ("", ""));
    assert_eq!(type_ids(bare), ["bare-1"]);
}

#[test]
fn parent_without_types_dir_is_skipped_with_warning() {
    let tree = gvt_tree();
    let mtty_types = tree.parent_dir("mtty").join("mdev_supported_types");
    fs::remove_dir_all(&mtty_types).unwrap();
    let scan = scan(&tree.sysfs_root());
    assert_one_warning(
        &scan.warnings,
        &tree.path("class/mdev_bus/mtty"),
        "no mdev_supported_types",
    );
    assert_eq!(names(&scan), ["0000:00:02.0"]);
}

#[test]
fn vanished_parent_is_not_a_parent() {
    let tree = gvt_tree();
    tree.add_instance("mtty", "mtty-1", &uuid_for(1));
    let root = tree.sysfs_root();
    let devpath = tree.devpath("mtty");
    assert!(matches!(
        read_parent(&root, &devpath),
        ParentRead::Parent(..)
    ));
    tree.remove_parent("mtty");
    assert_eq!(read_parent(&root, &devpath), ParentRead::NotAParent);
    fs::remove_dir_all(tree.path(&devpath)).unwrap();
    assert_eq!(read_parent(&root, &devpath), ParentRead::NotAParent);
    let scan = scan(&root);
    assert_eq!(scan.warnings, []);
    assert_eq!(names(&scan), ["0000:00:02.0"]);
}

#[test]
fn read_parent_refuses_bad_devpaths() {
    let tree = gvt_tree();
    let root = tree.sysfs_root();
    for devpath in [
        "/devices/../../etc",
        "devices/x",
        "/module/vfio",
        "/devices",
    ] {
        assert!(
            matches!(read_parent(&root, devpath), ParentRead::Bad(_)),
            "{devpath}"
        );
    }
}

#[test]
fn instances_only_on_the_mdev_bus_are_merged_by_scan() {
    let tree = gvt_tree();
    tree.add_instance("mtty", "mtty-1", &uuid_for(1));
    tree.add_instance("mtty", "mtty-1", &uuid_for(2));
    // Drop the type's own link to instance 2: only bus/mdev/devices knows it.
    fs::remove_file(
        tree.type_dir("mtty", "mtty-1")
            .join("devices")
            .join(uuid_for(2)),
    )
    .unwrap();
    let root = tree.sysfs_root();
    let scan = scan(&root);
    assert_eq!(scan.warnings, []);
    assert_eq!(
        parent(&scan, "mtty").get_type("mtty-1").unwrap().devices,
        [uuid_for(1), uuid_for(2)]
    );
    // read_parent looks at the type's devices/ only.
    let ParentRead::Parent(info, _) = read_parent(&root, &tree.devpath("mtty")) else {
        panic!("mtty should be a parent");
    };
    assert_eq!(info.get_type("mtty-1").unwrap().devices, [uuid_for(1)]);
}

#[test]
fn dangling_bus_instance_is_a_warning() {
    let tree = gvt_tree();
    tree.link(
        &format!("bus/mdev/devices/{}", uuid_for(7)),
        "devices/virtual/mtty/mtty/gone",
    );
    let scan = scan(&tree.sysfs_root());
    assert_one_warning(
        &scan.warnings,
        &tree.path(format!("bus/mdev/devices/{}", uuid_for(7))),
        "dangling",
    );
}

#[test]
fn many_parents_generator() {
    let tree = FakeSysfs::new();
    many_parents(&tree, 20, 4, 2);
    let scan = scan(&tree.sysfs_root());
    assert_eq!(scan.warnings, []);
    assert_eq!(scan.parents.len(), 20);
    for info in &scan.parents {
        assert_eq!(info.types.len(), 4);
        assert!(info.types.iter().all(|t| t.devices.len() == 2));
    }
}
