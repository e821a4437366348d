//! Parity with the real mdevctl (Debian 1.2.0): for generated trees,
//! `mdevctl types [--parent P] [--dumpjson]` run in a private mount namespace
//! with the tree bind-mounted over /sys must print the same document (and
//! the same text) as `mdevreg types [--parent P] [--json] --sysfs-root TREE`.
//!
//! Two ways, as mdevctl's own `testdata/types` cases do it:
//! - golden files (`tests/golden/mdevctl/<case>.json` and `.txt`, what
//!   mdevctl printed for each case in [`CASES`]): `golden_files_match` runs
//!   unprivileged, with no mdevctl, and compares mdevreg's output with them;
//! - live, as root: mdevctl itself runs on the same trees, its output must
//!   equal mdevreg's and the golden files (so they cannot go stale);
//!   `MDEVREG_UPDATE_GOLDEN=1` rewrites them from mdevctl's output.
//!
//! The live tests need root, `unshare` and `mdevctl`: without them they skip
//! with a message, unless env `CI` is set, where they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::prereq;
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

/// Whether the live test can run (see [`prereq::missing_prerequisite`]).
fn ready(test: &str) -> bool {
    match missing_prerequisite() {
        None => true,
        Some(why) => prereq::missing_prerequisite::<()>(test, &why).is_some(),
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

fn golden_path(case: &str, kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/mdevctl")
        .join(format!("{case}.{kind}"))
}

/// Checks mdevctl's output `bytes` against the golden file of `case`
/// (rewrites it instead with `MDEVREG_UPDATE_GOLDEN=1`).
fn check_golden(case: &str, kind: &str, bytes: &[u8]) {
    let path = golden_path(case, kind);
    if std::env::var_os("MDEVREG_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("golden dir")).expect("golden dir");
        std::fs::write(&path, bytes).expect("write golden file");
        return;
    }
    let golden = std::fs::read(&path).unwrap_or_else(|err| {
        panic!(
            "{}: {err} (MDEVREG_UPDATE_GOLDEN=1 writes it)",
            path.display()
        )
    });
    assert_eq!(
        text(&golden),
        text(bytes),
        "{} is not what mdevctl prints now (MDEVREG_UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
}

/// Compares JSON (as values and as bytes) and text output of both tools,
/// and mdevctl's with the golden files of `case`; returns the parsed
/// document.
fn assert_types_parity(tree: &impl TreeRoot, parent: Option<&str>, case: &str) -> Value {
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

    check_golden(case, "json", &theirs.stdout);
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
    check_golden(case, "txt", &theirs_text.stdout);
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

/// A generated or committed tree, as a case builds it.
enum Tree {
    Fake(FakeSysfs),
    Example(PathBuf),
}

impl TreeRoot for Tree {
    fn tree_root(&self) -> &Path {
        match self {
            Tree::Fake(tree) => tree.root(),
            Tree::Example(path) => path,
        }
    }
}

/// One parity case: a tree and the `--parent` filter.
struct Case {
    name: &'static str,
    build: fn() -> Tree,
    parent: Option<&'static str>,
}

/// Every case with golden files.
const CASES: &[Case] = &[
    Case {
        name: "empty",
        build: || Tree::Fake(FakeSysfs::new()),
        parent: None,
    },
    Case {
        name: "gvt",
        build: gvt,
        parent: None,
    },
    Case {
        name: "virtual_sample_drivers",
        build: virtual_sample_drivers,
        parent: None,
    },
    Case {
        name: "s390",
        build: s390,
        parent: None,
    },
    Case {
        name: "nvidia_many_types",
        build: nvidia_many_types,
        parent: None,
    },
    Case {
        name: "mixed",
        build: mixed,
        parent: None,
    },
    Case {
        name: "odd_text_and_numbers",
        build: odd_text_and_numbers,
        parent: None,
    },
    Case {
        name: "parent_filter_mtty",
        build: mixed_with_notypes,
        parent: Some("mtty"),
    },
    Case {
        name: "parent_filter_notypes",
        build: mixed_with_notypes,
        parent: Some("notypes"),
    },
    Case {
        name: "parent_filter_absent",
        build: mixed_with_notypes,
        parent: Some("absent"),
    },
    Case {
        name: "mixed_without_a_bad_type",
        build: mixed_without_a_bad_type,
        parent: None,
    },
    Case {
        name: "example_gvt",
        build: || Tree::Example(example_tree("gvt")),
        parent: None,
    },
    Case {
        name: "example_mixed",
        build: || Tree::Example(example_tree("mixed")),
        parent: None,
    },
    Case {
        name: "example_nvidia_mixed",
        build: || Tree::Example(example_tree("nvidia-mixed")),
        parent: None,
    },
];

fn gvt() -> Tree {
    let tree = FakeSysfs::new();
    tree.add_parent(&ParentSpec::gvt());
    tree.add_instance("0000:00:02.0", "i915-GVTg_V5_8", &uuid_for(1));
    Tree::Fake(tree)
}

fn virtual_sample_drivers() -> Tree {
    let tree = FakeSysfs::new();
    tree.add_parent(&ParentSpec::mtty());
    tree.add_parent(&ParentSpec::mdpy());
    tree.add_parent(&ParentSpec::mbochs());
    Tree::Fake(tree)
}

fn s390() -> Tree {
    let tree = FakeSysfs::new();
    tree.add_parent(&ParentSpec::vfio_ap_matrix());
    tree.add_parent(&ParentSpec::vfio_ccw("0.0.0013"));
    tree.add_parent(&ParentSpec::vfio_ccw("0.0.0014"));
    Tree::Fake(tree)
}

fn nvidia_many_types() -> Tree {
    let tree = FakeSysfs::new();
    let spec = ParentSpec::nvidia("0000:3b:00.0", 40)
        .with_type(TypeSpec::new("nvidia-99", "vfio-pci", 1).name("short id"))
        .with_type(TypeSpec::new("nvidia-1000", "vfio-pci", 2).name("long id"));
    tree.add_parent(&spec);
    Tree::Fake(tree)
}

fn mixed() -> Tree {
    let tree = FakeSysfs::new();
    populate_mixed(&tree);
    Tree::Fake(tree)
}

fn odd_text_and_numbers() -> Tree {
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
    Tree::Fake(tree)
}

fn mixed_with_notypes() -> Tree {
    let tree = FakeSysfs::new();
    populate_mixed(&tree);
    tree.add_parent(&ParentSpec::new("/devices/virtual/none/notypes"));
    Tree::Fake(tree)
}

fn mixed_without_a_bad_type() -> Tree {
    let tree = FakeSysfs::new();
    populate_mixed(&tree);
    tree.remove_type("0000:00:02.0", "i915-GVTg_V5_2");
    Tree::Fake(tree)
}

/// Builds `name`'s tree and checks parity live; the tree and the document.
fn live_case(name: &str) -> (Tree, Value) {
    let case = CASES
        .iter()
        .find(|case| case.name == name)
        .unwrap_or_else(|| panic!("no case {name}"));
    let tree = (case.build)();
    let doc = assert_types_parity(&tree, case.parent, case.name);
    (tree, doc)
}

/// Unprivileged, no mdevctl: mdevreg prints exactly what mdevctl printed
/// for every case (JSON and text).
#[test]
fn golden_files_match() {
    for case in CASES {
        let tree = (case.build)();
        for (kind, json) in [("json", true), ("txt", false)] {
            let mut args = vec!["types"];
            if json {
                args.push("--json");
            }
            args.extend(parent_args(case.parent));
            let ours = mdevreg(&tree, &args);
            assert!(
                ours.status.success() && ours.stderr.is_empty(),
                "{} {kind}: {}",
                case.name,
                text(&ours.stderr)
            );
            let path = golden_path(case.name, kind);
            let golden =
                std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
            assert_eq!(
                text(&ours.stdout),
                text(&golden),
                "mdevreg {args:?} differs from {}",
                path.display()
            );
        }
    }
}

#[test]
fn empty_tree() {
    if !ready("empty_tree") {
        return;
    }
    assert_eq!(live_case("empty").1, json!([]));
}

#[test]
fn gvt_tree() {
    if !ready("gvt_tree") {
        return;
    }
    let (_tree, doc) = live_case("gvt");
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
    let (_tree, doc) = live_case("virtual_sample_drivers");
    assert_eq!(parent_names(&doc), ["mbochs", "mdpy", "mtty"]);
}

#[test]
fn s390_tree() {
    if !ready("s390_tree") {
        return;
    }
    let (_tree, doc) = live_case("s390");
    assert_eq!(parent_names(&doc), ["0.0.0013", "0.0.0014", "matrix"]);
}

#[test]
fn nvidia_tree_with_many_types_and_mixed_id_lengths() {
    if !ready("nvidia_tree_with_many_types_and_mixed_id_lengths") {
        return;
    }
    let (_tree, doc) = live_case("nvidia_many_types");
    assert_eq!(doc[0]["0000:3b:00.0"].as_array().map(Vec::len), Some(42));
}

#[test]
fn mixed_tree() {
    if !ready("mixed_tree") {
        return;
    }
    let (_tree, doc) = live_case("mixed");
    assert_eq!(parent_names(&doc).len(), 8);
}

#[test]
fn odd_text_and_numbers_tree() {
    if !ready("odd_text_and_numbers_tree") {
        return;
    }
    let (_tree, doc) = live_case("odd_text_and_numbers");
    assert_eq!(doc[0]["empty"], json!([]));
    assert_eq!(doc[0]["odd"][0]["odd-1"]["available_instances"], 5);
}

#[test]
fn parent_filter() {
    if !ready("parent_filter") {
        return;
    }
    let (_tree, doc) = live_case("parent_filter_mtty");
    assert_eq!(parent_names(&doc), ["mtty"]);
    assert_eq!(
        live_case("parent_filter_notypes").1,
        json!([{ "notypes": [] }])
    );
    assert_eq!(live_case("parent_filter_absent").1, json!([]));
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
    assert_types_parity(&tree, None, "mixed_without_a_bad_type");
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
    for name in ["example_gvt", "example_mixed", "example_nvidia_mixed"] {
        let (_tree, doc) = live_case(name);
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
