//! NVIDIA vendor-specific VFIO parents (SPEC §1.10) read from fake sysfs
//! trees: enumeration, the tolerant file parsing, `list`, `types --backend`
//! and `capacity` in direct mode, for a vendor-VFIO host and a mixed one.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::sysfs_fixture::{
    l40s_a, l40s_b, populate_nvidia_mixed, populate_nvidia_vfio, FakeSysfs, A40_PF_DEVPATH,
};
use mdevreg::model::{Backend, ParentInfo};
use mdevreg::sysfs::{self, Scan};
use serde_json::Value;

fn mdevreg_on(tree: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mdevreg"))
        .args(args)
        .arg("--sysfs-root")
        .arg(tree)
        .env_remove("MDEVREG_BUS")
        .output()
        .expect("run mdevreg")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn parent<'a>(scan: &'a Scan, name: &str) -> &'a ParentInfo {
    scan.parents
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no parent {name}"))
}

fn avail(info: &ParentInfo) -> Vec<(&str, u32)> {
    info.types
        .iter()
        .map(|t| (t.id.as_str(), t.available_instances))
        .collect()
}

#[test]
fn enumerates_vfs_of_both_gpus_with_their_types() {
    let tree = FakeSysfs::new();
    populate_nvidia_vfio(&tree);
    let scan = sysfs::scan(&tree.sysfs_root());
    let names: Vec<&str> = scan.parents.iter().map(|p| p.name.as_str()).collect();
    let mut expected = l40s_a().vf_names();
    expected.extend(l40s_b().vf_names());
    assert_eq!(names, expected);
    for info in &scan.parents {
        assert_eq!(info.backend, Backend::NvidiaVfio, "{}", info.name);
        assert_eq!(info.subsystem, "pci");
        assert_eq!(info.driver, "nvidia");
        let pf = if info.name.starts_with("0000:41:") {
            "0000:41:00.0"
        } else {
            "0000:c1:00.0"
        };
        assert_eq!(info.physical_device, pf);
        assert!(info.devpath.ends_with(&format!("/{}", info.name)));
        assert!(info.types.iter().all(|t| t.device_api == "vfio-pci"));
    }

    // The VF holding an L40S-2B: its list is the header alone; its vGPU is
    // its one instance, named from a sibling's list.
    let held = parent(&scan, "0000:41:00.4");
    assert_eq!(held.types.len(), 1);
    assert_eq!(held.types[0].id, "nvidia-1146");
    assert_eq!(held.types[0].name, "NVIDIA L40S-2B");
    assert_eq!(held.types[0].available_instances, 0);
    assert_eq!(held.types[0].devices, ["0000:41:00.4"]);
    // Its siblings list the 2 GB types only, one each.
    let sibling = parent(&scan, "0000:41:00.5");
    assert_eq!(
        avail(sibling),
        [("nvidia-1146", 1), ("nvidia-1148", 1)],
        "homogeneous placement"
    );
    // The idle GPU's VFs list all 13 types.
    assert_eq!(parent(&scan, "0000:c1:00.4").types.len(), 13);
    // Header only: a parent with no type, and no warning.
    assert!(parent(&scan, "0000:c1:00.7").types.is_empty());
    // One malformed line: one warning naming the file, good lines kept.
    let malformed = parent(&scan, "0000:c1:00.5");
    assert_eq!(
        avail(malformed),
        [("nvidia-1145", 1), ("nvidia-1146", 1), ("nvidia-2164", 1)]
    );
    assert_eq!(scan.warnings.len(), 1, "{:?}", scan.warnings);
    let warning = scan.warnings[0].to_string();
    assert!(
        warning.contains("0000:c1:00.5/nvidia/creatable_vgpu_types: line 5"),
        "{warning}"
    );
    assert!(warning.contains("this line is not a type"), "{warning}");
}

#[test]
fn mixed_host_has_both_backends_and_physical_devices() {
    let tree = FakeSysfs::new();
    populate_nvidia_mixed(&tree);
    let scan = sysfs::scan(&tree.sysfs_root());
    assert!(scan.warnings.is_empty(), "{:?}", scan.warnings);
    let by_backend = |backend| {
        scan.parents
            .iter()
            .filter(|p| p.backend == backend)
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        by_backend(Backend::Mdev),
        ["0000:00:02.0", "0000:81:00.4", "0000:81:00.5", "mtty"]
    );
    assert_eq!(by_backend(Backend::NvidiaVfio), l40s_a().vf_names());
    // mdev parents that are VFs have their PF too; others have none.
    let a40_pf = A40_PF_DEVPATH.rsplit('/').next().unwrap();
    assert_eq!(parent(&scan, "0000:81:00.4").physical_device, a40_pf);
    assert_eq!(parent(&scan, "0000:00:02.0").physical_device, "");
    assert_eq!(parent(&scan, "mtty").physical_device, "");
    // scan_types reads the same vendor parents (they have no mdev instances
    // to leave out, only the VF itself).
    let types_only = sysfs::scan_types(&tree.sysfs_root());
    let vendor: Vec<&ParentInfo> = types_only
        .parents
        .iter()
        .filter(|p| p.backend == Backend::NvidiaVfio)
        .collect();
    assert_eq!(vendor.len(), 4);
    assert_eq!(
        vendor[0],
        parent(&scan, "0000:41:00.4"),
        "the held vGPU is shown by both"
    );
}

#[test]
fn vfs_without_nvidia_dir_or_bound_elsewhere_are_not_parents() {
    let tree = FakeSysfs::new();
    let gpu = l40s_a();
    tree.add_vfio_gpu(&gpu);
    // Unbound from nvidia (e.g. bound to vfio-pci for passthrough): the
    // nvidia/ directory goes with the driver.
    let vf = gpu.vf_names()[1].clone();
    std::fs::remove_dir_all(tree.path(format!("{}/nvidia", gpu.vf_devpath(&vf)))).unwrap();
    let scan = sysfs::scan(&tree.sysfs_root());
    assert_eq!(scan.parents.len(), 3);
    assert!(scan.parents.iter().all(|p| p.name != vf));
    assert!(scan.warnings.is_empty(), "{:?}", scan.warnings);
    // Unreadable current_vgpu_type: a warning, read as 0.
    let other = gpu.vf_names()[2].clone();
    tree.write_file(
        format!("{}/nvidia/current_vgpu_type", gpu.vf_devpath(&other)),
        "busy\n",
    );
    let scan = sysfs::scan(&tree.sysfs_root());
    assert_eq!(scan.warnings.len(), 1, "{:?}", scan.warnings);
    assert!(scan.warnings[0]
        .to_string()
        .contains("current_vgpu_type: not a vGPU type id"));
    assert_eq!(parent(&scan, &other).types.len(), 13);
}

#[test]
fn types_backend_filter_and_shape() {
    let tree = FakeSysfs::new();
    populate_nvidia_mixed(&tree);
    let default = mdevreg_on(tree.root(), &["types", "--json"]);
    assert!(default.status.success(), "{}", stderr(&default));
    let doc: Value = serde_json::from_str(&stdout(&default)).unwrap();
    let names: Vec<&String> = doc[0].as_object().unwrap().keys().collect();
    assert_eq!(
        names,
        ["0000:00:02.0", "0000:81:00.4", "0000:81:00.5", "mtty"]
    );
    let explicit = mdevreg_on(tree.root(), &["types", "--json", "--backend", "mdev"]);
    assert_eq!(stdout(&explicit), stdout(&default));

    let all = mdevreg_on(tree.root(), &["types", "--json", "--backend", "all"]);
    assert!(all.status.success(), "{}", stderr(&all));
    let doc: Value = serde_json::from_str(&stdout(&all)).unwrap();
    let parents = doc[0].as_object().unwrap();
    assert_eq!(parents.len(), 8);
    assert_eq!(
        parents["0000:41:00.5"][0],
        serde_json::json!({"nvidia-1150": {"available_instances": 1, "device_api": "vfio-pci", "name": "NVIDIA L40S-4Q"}})
    );
    assert_eq!(
        parents["0000:41:00.4"],
        serde_json::json!([{"nvidia-1150": {"available_instances": 0, "device_api": "vfio-pci", "name": "NVIDIA L40S-4Q"}}])
    );

    let text = mdevreg_on(tree.root(), &["types", "--backend", "all"]);
    assert!(stdout(&text).contains("0000:41:00.6\n  nvidia-1150\n    Available instances: 1\n    Device API: vfio-pci\n    Name: NVIDIA L40S-4Q\n"));
    let bad = mdevreg_on(tree.root(), &["types", "--backend", "nvidia"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn list_shows_backend_and_physical_device() {
    let tree = FakeSysfs::new();
    populate_nvidia_mixed(&tree);
    let out = mdevreg_on(tree.root(), &["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "0000:41:00.4\n  DevPath:   /devices/pci0000:40/0000:40:01.1/0000:41:00.4\n  Subsystem: pci\n  Driver:    nvidia\n  Backend:   nvidia-vfio\n  Physical:  0000:41:00.0\n  Source:    kernel\n  Types:\n    nvidia-1150 (vfio-pci, 0 available) NVIDIA L40S-4Q\n      0000:41:00.4\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("0000:81:00.5\n  DevPath:   /devices/pci0000:80/0000:80:01.1/0000:81:00.5\n  Subsystem: pci\n  Driver:    nvidia\n  Backend:   mdev\n  Physical:  0000:81:00.0\n"),
        "{text}"
    );
    assert!(text.contains("mtty\n  DevPath:   /devices/virtual/mtty/mtty\n  Subsystem: mtty\n  Backend:   mdev\n  Source:    kernel\n"), "{text}");

    let out = mdevreg_on(tree.root(), &["list", "--json"]);
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let vf = doc
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "0000:41:00.6")
        .unwrap();
    assert_eq!(vf["backend"], "nvidia-vfio");
    assert_eq!(vf["physical_device"], "0000:41:00.0");
    assert_eq!(vf["types"][0]["available_instances"], 1);
}

/// `(type id, creatable, holding)` of one physical device in `capacity --json`.
fn capacity_rows(doc: &Value, physical: &str) -> Vec<(String, u64, u64)> {
    let device = doc
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["physical_device"] == physical)
        .unwrap_or_else(|| panic!("no {physical} in {doc}"));
    device["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["id"].as_str().unwrap().to_string(),
                row["creatable"].as_u64().unwrap(),
                row["holding"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn capacity_per_physical_gpu_for_both_backends() {
    let tree = FakeSysfs::new();
    populate_nvidia_vfio(&tree);
    let out = mdevreg_on(tree.root(), &["capacity", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc.as_array().unwrap().len(), 2);
    // GPU A: one L40S-2B placed, three free VFs list the 2 GB types.
    assert_eq!(
        capacity_rows(&doc, "0000:41:00.0"),
        [
            ("nvidia-1146".to_string(), 3, 1),
            ("nvidia-1148".to_string(), 3, 0)
        ]
    );
    // GPU B: 4 VFs; .5 lists 3 types (and a bad line), .7 none.
    let b = capacity_rows(&doc, "0000:c1:00.0");
    assert_eq!(b.len(), 13);
    let row = |id: &str| b.iter().find(|r| r.0 == id).unwrap().clone();
    assert_eq!(row("nvidia-1145"), ("nvidia-1145".to_string(), 3, 0));
    assert_eq!(row("nvidia-1156"), ("nvidia-1156".to_string(), 2, 0));

    let text = stdout(&mdevreg_on(tree.root(), &["capacity"]));
    assert!(
        text.starts_with("0000:41:00.0 (4 parents)\n  TYPE         CREATABLE  HOLDING  NAME\n  nvidia-1146          3        1  NVIDIA L40S-2B\n"),
        "{text}"
    );

    // Mixed: the A40's mdev VFs are siblings too.
    let tree = FakeSysfs::new();
    populate_nvidia_mixed(&tree);
    let doc: Value =
        serde_json::from_str(&stdout(&mdevreg_on(tree.root(), &["capacity", "--json"]))).unwrap();
    assert_eq!(
        capacity_rows(&doc, "0000:81:00.0"),
        [
            ("nvidia-557".to_string(), 1, 1),
            ("nvidia-558".to_string(), 1, 0)
        ]
    );
    assert_eq!(
        capacity_rows(&doc, "0000:41:00.0"),
        [("nvidia-1150".to_string(), 3, 1)]
    );
    // The integrated GPU (no SR-IOV) is its own physical device; mtty has none.
    assert!(doc
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["physical_device"] == "0000:00:02.0"));
    assert!(doc
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["physical_device"] != "mtty"));
}

#[test]
fn placing_a_vgpu_shrinks_the_siblings_lists() {
    let tree = FakeSysfs::new();
    let gpu = l40s_b();
    tree.add_vfio_gpu(&gpu);
    let vfs = gpu.vf_names();
    tree.set_vgpu(&gpu, &vfs[0], 1156); // the whole 48 GB
    let scan = sysfs::scan(&tree.sysfs_root());
    for vf in &vfs[1..] {
        assert!(parent(&scan, vf).types.is_empty(), "{vf}");
    }
    assert_eq!(parent(&scan, &vfs[0]).types[0].name, "");
    tree.set_vgpu(&gpu, &vfs[0], 0);
    tree.set_vgpu(&gpu, &vfs[0], 1155); // 24 GB: one more fits
    let scan = sysfs::scan(&tree.sysfs_root());
    assert_eq!(avail(parent(&scan, &vfs[1])), [("nvidia-1155", 1)]);
    assert_eq!(parent(&scan, &vfs[0]).types[0].name, "NVIDIA L40S-24Q");
}
