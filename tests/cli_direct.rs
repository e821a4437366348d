//! The `mdevreg` binary in its direct mode (`--sysfs-root`, no daemon):
//! exit codes, `types` and `list` output, warnings, and the sample trees in
//! `examples/sysfs/`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::sysfs_fixture::{
    populate_mixed, uuid_for, write_example_tree, FakeSysfs, EXAMPLE_TREES,
};
use serde_json::Value;

fn mdevreg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mdevreg"))
        .args(args)
        .env_remove("MDEVREG_BUS")
        .output()
        .expect("run mdevreg")
}

fn mdevreg_on(tree: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    let root = tree.to_str().expect("UTF-8 temp path");
    all.extend(["--sysfs-root", root]);
    mdevreg(&all)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join("sysfs")
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["bogus"][..],
        &["types", "--no-such-flag"][..],
        &["types", "--parent"][..],
        &["show"][..],
    ] {
        let out = mdevreg(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{args:?}");
    }
}

#[test]
fn help_and_version_exit_0() {
    let out = mdevreg(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("types"));
    let out = mdevreg(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).starts_with("mdevreg "));
}

#[test]
fn missing_root_exits_1_with_one_line() {
    let tree = FakeSysfs::new();
    let missing = tree.root().join("nope");
    for command in ["types", "list"] {
        let out = mdevreg_on(&missing, &[command]);
        assert_eq!(out.status.code(), Some(1), "{command}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("mdevreg: cannot read sysfs root"), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }
}

#[test]
fn daemon_commands_without_a_daemon_exit_1() {
    // A bus address nobody listens on: the command cannot succeed.
    let out = mdevreg(&[
        "--bus",
        "unix:path=/nonexistent/mdevreg-test-bus",
        "show",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).starts_with("mdevreg: "));
}

#[test]
fn types_json_lists_every_parent() {
    let tree = FakeSysfs::new();
    populate_mixed(&tree);
    let out = mdevreg_on(tree.root(), &["types", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc[0].as_object().unwrap().len(), 8);
    assert_eq!(doc[0]["mtty"][1]["mtty-2"]["name"], "Dual port serial");

    let out = mdevreg_on(tree.root(), &["types", "--json", "--parent", "matrix"]);
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        doc[0].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["matrix"]
    );
}

#[test]
fn empty_tree_prints_empty_array() {
    let tree = FakeSysfs::new();
    let out = mdevreg_on(tree.root(), &["types", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "[]\n");
    let out = mdevreg_on(tree.root(), &["list", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn list_json_has_parents_types_and_devices() {
    let tree = FakeSysfs::new();
    populate_mixed(&tree);
    let out = mdevreg_on(tree.root(), &["list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let parents = doc.as_array().unwrap();
    assert_eq!(parents.len(), 8);
    let gvt = parents
        .iter()
        .find(|p| p["name"] == "0000:00:02.0")
        .unwrap();
    assert_eq!(gvt["devpath"], "/devices/pci0000:00/0000:00:02.0");
    assert_eq!(gvt["subsystem"], "pci");
    assert_eq!(gvt["driver"], "i915");
    assert_eq!(gvt["source"], "kernel");
    let v5_4 = gvt["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "i915-GVTg_V5_4")
        .unwrap();
    assert_eq!(v5_4["device_api"], "vfio-pci");
    assert_eq!(v5_4["available_instances"], 5);
    assert_eq!(
        v5_4["devices"],
        serde_json::json!([uuid_for(1), uuid_for(2)])
    );
}

#[test]
fn list_text_names_parents() {
    let tree = FakeSysfs::new();
    populate_mixed(&tree);
    let out = mdevreg_on(tree.root(), &["list"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.contains("0000:00:02.0\n  DevPath:   /devices/pci0000:00/0000:00:02.0\n"),
        "{text}"
    );
    assert!(text.contains(&format!("      {}\n", uuid_for(3))), "{text}");
}

#[test]
fn warnings_go_to_stderr_and_exit_stays_0() {
    let tree = FakeSysfs::new();
    populate_mixed(&tree);
    let bad = tree
        .type_dir("mdpy", "mdpy-xga")
        .join("available_instances");
    fs::write(&bad, "-5\n").unwrap();
    let out = mdevreg_on(tree.root(), &["types", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(err.starts_with("mdevreg: warning: "), "{err}");
    assert!(err.contains(&bad.display().to_string()), "{err}");
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc[0]["mdpy"].as_array().unwrap().len(), 2);
}

#[test]
fn relative_root_works() {
    let out = Command::new(env!("CARGO_BIN_EXE_mdevreg"))
        .args(["types", "--json", "--sysfs-root", "sysfs/gvt"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc[0]["0000:00:02.0"].as_array().unwrap().len(), 4);
}

#[test]
fn example_trees_read_as_documented() {
    for name in ["gvt", "mixed"] {
        let out = mdevreg_on(&examples_dir().join(name), &["list", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{name}");
        assert_eq!(stderr(&out), "", "{name}: no warnings expected");
        assert!(!serde_json::from_str::<Value>(&stdout(&out))
            .unwrap()
            .as_array()
            .unwrap()
            .is_empty());
    }
    let out = mdevreg_on(&examples_dir().join("broken"), &["types"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stderr(&out).lines().count(), 3, "{}", stderr(&out));
}

/// Every entry below `dir`: relative path → file contents, link target or
/// "dir".
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(base).unwrap().to_path_buf();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.insert(
                    rel,
                    format!("-> {}", fs::read_link(&path).unwrap().display()),
                );
            } else if meta.is_dir() {
                out.insert(rel, "dir".to_string());
                walk(base, &path, out);
            } else {
                out.insert(
                    rel,
                    String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn example_trees_are_up_to_date() {
    let scratch = tempfile::tempdir().unwrap();
    for name in EXAMPLE_TREES {
        let fresh = scratch.path().join(name);
        write_example_tree(name, &fresh);
        assert!(
            snapshot(&fresh) == snapshot(&examples_dir().join(name)),
            "examples/sysfs/{name} is stale: run `cargo run --example make_sysfs_examples`"
        );
    }
}
