//! Parity with the real mdevctl (Debian 1.2.0): for generated trees,
//! `mdevctl types [--parent P] [--dumpjson]` run in a private mount namespace
//! with the tree bind-mounted over /sys must print the same document (and
//! the same text) as `mdevreg types [--parent P] [--json] --sysfs-root TREE`.
//!
//! Needs root, `unshare` and `mdevctl`: without them the tests skip with a
//! message, unless env `CI` is set, where they fail.

mod common;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::sysfs_fixture::{populate_mixed, uuid_for, FakeSysfs, ParentSpec, TypeSpec};
use serde_json::{json, Value};

/// A generated tree or a committed sample tree.
trait TreeRoot {
    fn tree_root(&self) -> &Path;
}

impl TreeRoot for FakeSysfs {
    fn tree_root(&self) -> &Path {
        self.root()
    }
}

impl TreeRoot for PathBuf {
    fn tree_root(&self) -> &Path {
        self
    }
}

/// Runs in `unshare -m`: `$0` is the tree, the rest are mdevctl's arguments.
const IN_NAMESPACE: &str = r#"mount --make-rprivate / && mount --bind "$0" /sys && mkdir -p /etc/mdevctl.d && exec mdevctl "$@""#;

fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".to_string());
    }
    match Command::new("mdevctl").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => return Some(format!("mdevctl --version failed: {:?}", out.status)),
        Err(err) => return Some(format!("mdevctl not runnable: {err}")),
    }
    match Command::new("unshare").args(["-m", "true"]).status() {
        Ok(status) if status.success() => None,
        Ok(status) => Some(format!("unshare -m true failed: {status:?}")),
        Err(err) => Some(format!("unshare not runnable: {err}")),
    }
}

/// Whether the test can run; panics in CI when it cannot.
fn ready(test: &str) -> bool {
    match missing_prerequisite() {
        None => true,
        Some(why) if env::var_os("CI").is_some() => {
            panic!("{test}: prerequisite missing in CI: {why}")
        }
        Some(why) => {
            eprintln!("{test}: skipped: {why}");
            false
        }
    }
}

fn mdevctl(tree: &impl TreeRoot, args: &[&str]) -> Output {
    Command::new("unshare")
        .args(["-m", "sh", "-c", IN_NAMESPACE])
        .arg(tree.tree_root())
        .args(args)
        .output()
        .expect("run mdevctl in a mount namespace")
}

fn mdevreg(tree: &impl TreeRoot, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mdevreg"))
        .args(args)
        .arg("--sysfs-root")
        .arg(tree.tree_root())
        .output()
        .expect("run mdevreg")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn parent_args(parent: Option<&str>) -> Vec<&str> {
    parent.map(|p| vec!["--parent", p]).unwrap_or_default()
}

/// Compares JSON (as values and as bytes) and text output of both tools;
/// returns the parsed document.
fn assert_types_parity(tree: &impl TreeRoot, parent: Option<&str>) -> Value {
    let mut theirs_args = vec!["types", "--dumpjson"];
    theirs_args.extend(parent_args(parent));
    let theirs = mdevctl(tree, &theirs_args);
    assert!(
        theirs.status.success(),
        "mdevctl failed: {}",
        text(&theirs.stderr)
    );
    let mut ours_args = vec!["types", "--json"];
    ours_args.extend(parent_args(parent));
    let ours = mdevreg(tree, &ours_args);
    assert!(
        ours.status.success(),
        "mdevreg failed: {}",
        text(&ours.stderr)
    );
    assert_eq!(
        text(&ours.stderr),
        "",
        "no warnings expected on a good tree"
    );

    let theirs_doc: Value = serde_json::from_slice(&theirs.stdout).expect("mdevctl JSON");
    let ours_doc: Value = serde_json::from_slice(&ours.stdout).expect("mdevreg JSON");
    assert_eq!(ours_doc, theirs_doc);
    assert_eq!(
        text(&ours.stdout),
        text(&theirs.stdout),
        "byte-for-byte JSON"
    );

    let mut theirs_text_args = vec!["types"];
    theirs_text_args.extend(parent_args(parent));
    let theirs_text = mdevctl(tree, &theirs_text_args);
    assert!(theirs_text.status.success());
    let mut ours_text_args = vec!["types"];
    ours_text_args.extend(parent_args(parent));
    let ours_text = mdevreg(tree, &ours_text_args);
    assert!(ours_text.status.success());
    assert_eq!(
        text(&ours_text.stdout),
        text(&theirs_text.stdout),
        "text output"
    );
    ours_doc
}

/// Parent names in a types document.
fn parent_names(doc: &Value) -> Vec<String> {
    match doc
        .as_array()
        .and_then(|a| a.first())
        .and_then(Value::as_object)
    {
        Some(parents) => parents.keys().cloned().collect(),
        None => Vec::new(),
    }
}

#[test]
fn empty_tree() {
    if !ready("empty_tree") {
        return;
    }
    let tree = FakeSysfs::new();
    assert_eq!(assert_types_parity(&tree, None), json!([]));
}

#[test]
fn gvt_tree() {
    if !ready("gvt_tree") {
        return;
    }
    let tree = FakeSysfs::new();
    tree.add_parent(&ParentSpec::gvt());
    tree.add_instance("0000:00:02.0", "i915-GVTg_V5_8", &uuid_for(1));
    let doc = assert_types_parity(&tree, None);
    assert_eq!(
        doc[0]["0000:00:02.0"][2]["i915-GVTg_V5_4"]["description"],
        "low_gm_size: 128MB, high_gm_size: 512MB, fence: 4, resolution: 1920x1200, weight: 4"
    );
}

#[test]
fn virtual_sample_drivers_tree() {
    if !ready("virtual_sample_drivers_tree") {
        return;
    }
    let tree = FakeSysfs::new();
    tree.add_parent(&ParentSpec::mtty());
    tree.add_parent(&ParentSpec::mdpy());
    tree.add_parent(&ParentSpec::mbochs());
    let doc = assert_types_parity(&tree, None);
    assert_eq!(parent_names(&doc), ["mbochs", "mdpy", "mtty"]);
}

#[test]
fn s390_tree() {
    if !ready("s390_tree") {
        return;
    }
    let tree = FakeSysfs::new();
    tree.add_parent(&ParentSpec::vfio_ap_matrix());
    tree.add_parent(&ParentSpec::vfio_ccw("0.0.0013"));
    tree.add_parent(&ParentSpec::vfio_ccw("0.0.0014"));
    let doc = assert_types_parity(&tree, None);
    assert_eq!(parent_names(&doc), ["0.0.0013", "0.0.0014", "matrix"]);
}

#[test]
fn nvidia_tree_with_many_types_and_mixed_id_lengths() {
    if !ready("nvidia_tree_with_many_types_and_mixed_id_lengths") {
        return;
    }
    let tree = FakeSysfs::new();
    let spec = ParentSpec::nvidia("0000:3b:00.0", 40)
        .with_type(TypeSpec::new("nvidia-99", "vfio-pci", 1).name("short id"))
        .with_type(TypeSpec::new("nvidia-1000", "vfio-pci", 2).name("long id"));
    tree.add_parent(&spec);
    let doc = assert_types_parity(&tree, None);
    assert_eq!(doc[0]["0000:3b:00.0"].as_array().map(Vec::len), Some(42));
}

#[test]
fn mixed_tree() {
    if !ready("mixed_tree") {
        return;
    }
    let tree = FakeSysfs::new();
    populate_mixed(&tree);
    let doc = assert_types_parity(&tree, None);
    assert_eq!(parent_names(&doc).len(), 8);
}

#[test]
fn odd_text_and_numbers() {
    if !ready("odd_text_and_numbers") {
        return;
    }
    let tree = FakeSysfs::new();
    tree.add_parent(
        &ParentSpec::new("/devices/virtual/odd/odd")
            .with_type(TypeSpec::new("odd-1", "vfio-pci", 0).name("  spaced name \t"))
            .with_type(
                TypeSpec::new("odd-2", "vfio-platform", i32::MAX as u32)
                    .description("\n\n  a\n\nb\r\n\tc ünïcode \"quoted\" \\ \n\n"),
            )
            .with_type(
                TypeSpec::new("odd-3", "vfio-amba", 1)
                    .name("\n")
                    .description(" \n "),
            ),
    );
    // A parent whose every type is gone still counts, with no types.
    tree.add_parent(&ParentSpec::new("/devices/virtual/odd/empty"));
    let odd = tree.type_dir("odd", "odd-1");
    tree.write_file(odd.join("device_api"), " vfio-pci \n");
    tree.write_file(odd.join("available_instances"), " +5 \n");
    let doc = assert_types_parity(&tree, None);
    assert_eq!(doc[0]["empty"], json!([]));
    assert_eq!(doc[0]["odd"][0]["odd-1"]["available_instances"], 5);
}

#[test]
fn parent_filter() {
    if !ready("parent_filter") {
        return;
    }
    let tree = FakeSysfs::new();
    populate_mixed(&tree);
    tree.add_parent(&ParentSpec::new("/devices/virtual/none/notypes"));
    let doc = assert_types_parity(&tree, Some("mtty"));
    assert_eq!(parent_names(&doc), ["mtty"]);
    assert_eq!(
        assert_types_parity(&tree, Some("notypes")),
        json!([{ "notypes": [] }])
    );
    assert_eq!(assert_types_parity(&tree, Some("absent")), json!([]));
}

#[test]
fn type_without_device_api_fails_mdevctl_but_not_mdevreg() {
    if !ready("type_without_device_api_fails_mdevctl_but_not_mdevreg") {
        return;
    }
    let tree = FakeSysfs::new();
    populate_mixed(&tree);
    let bad = tree
        .type_dir("0000:00:02.0", "i915-GVTg_V5_2")
        .join("device_api");
    std::fs::remove_file(&bad).unwrap();

    let theirs = mdevctl(&tree, &["types", "--dumpjson"]);
    assert!(
        !theirs.status.success(),
        "mdevctl should fail on the bad type"
    );

    let ours = mdevreg(&tree, &["types", "--json"]);
    assert!(ours.status.success(), "{}", text(&ours.stderr));
    let stderr = text(&ours.stderr);
    assert!(stderr.contains(&bad.display().to_string()), "{stderr}");
    let doc: Value = serde_json::from_slice(&ours.stdout).unwrap();
    assert_eq!(parent_names(&doc).len(), 8);
    let gvt_types: Vec<String> = doc[0]["0000:00:02.0"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t.as_object().unwrap().keys().cloned())
        .collect();
    assert_eq!(
        gvt_types,
        ["i915-GVTg_V5_1", "i915-GVTg_V5_4", "i915-GVTg_V5_8"]
    );

    // Without the bad type both tools agree again.
    tree.remove_type("0000:00:02.0", "i915-GVTg_V5_2");
    assert_types_parity(&tree, None);
}

#[test]
fn available_instances_above_i32_fails_mdevctl_but_not_mdevreg() {
    if !ready("available_instances_above_i32_fails_mdevctl_but_not_mdevreg") {
        return;
    }
    let tree = FakeSysfs::new();
    tree.add_parent(
        &ParentSpec::new("/devices/virtual/big/big").with_type(TypeSpec::new(
            "big-1",
            "vfio-pci",
            u32::MAX,
        )),
    );
    assert!(!mdevctl(&tree, &["types", "--dumpjson"]).status.success());
    let ours = mdevreg(&tree, &["types", "--json"]);
    assert!(ours.status.success());
    let doc: Value = serde_json::from_slice(&ours.stdout).unwrap();
    assert_eq!(doc[0]["big"][0]["big-1"]["available_instances"], u32::MAX);
}

fn example_tree(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join("sysfs")
        .join(name)
}

#[test]
fn committed_example_trees() {
    if !ready("committed_example_trees") {
        return;
    }
    // `nvidia-mixed` has NVIDIA vendor-specific VFIO VFs beside the mdev
    // parents: mdevctl does not see them, and neither does `types` by default.
    for name in ["gvt", "mixed", "nvidia-mixed"] {
        let doc = assert_types_parity(&example_tree(name), None);
        assert!(!parent_names(&doc).is_empty(), "{name}");
    }
    // A vendor-VFIO-only host: both print the empty document (mdevreg warns
    // about the sample's malformed `creatable_vgpu_types` line).
    let vfio = example_tree("nvidia-vfio");
    let theirs = mdevctl(&vfio, &["types", "--dumpjson"]);
    assert!(theirs.status.success(), "{}", text(&theirs.stderr));
    let ours = mdevreg(&vfio, &["types", "--json"]);
    assert!(ours.status.success(), "{}", text(&ours.stderr));
    assert_eq!(text(&ours.stdout), text(&theirs.stdout));
    assert_eq!(text(&ours.stdout).trim(), "[]");
    // The broken sample is refused by mdevctl and read with warnings by mdevreg.
    let broken = example_tree("broken");
    assert!(!mdevctl(&broken, &["types", "--dumpjson"]).status.success());
    let ours = mdevreg(&broken, &["types", "--json"]);
    assert!(ours.status.success());
    assert_eq!(
        text(&ours.stderr).lines().count(),
        3,
        "{}",
        text(&ours.stderr)
    );
}
