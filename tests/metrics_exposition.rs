//! `mdevreg metrics --sysfs-root` (the exposition without a daemon):
//! `promtool check metrics` accepts it for every sample tree and for hostile
//! names, and its values are those of the tree. With a daemon (root, a
//! private network namespace): what `--metrics-listen` serves, what
//! `--metrics-textfile` writes and what `mdevreg metrics` prints pass
//! promtool and show the same parents and types.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::metrics::{parse, promtool_check, samples};
use common::prereq::require_tools;
use common::sysfs_fixture::{
    many_parents, write_example_tree, FakeSysfs, ParentSpec, TypeSpec, EXAMPLE_TREES,
};

fn metrics(tree: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mdevreg"))
        .arg("metrics")
        .arg("--sysfs-root")
        .arg(tree)
        .args(extra)
        .env_remove("MDEVREG_BUS")
        .output()
        .expect("run mdevreg metrics")
}

fn checked(tree: &Path, extra: &[&str]) -> String {
    let out = metrics(tree, extra);
    assert!(
        out.status.success(),
        "mdevreg metrics failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 exposition")
}

#[test]
fn promtool_accepts_every_sample_tree_in_both_formats() {
    if !require_tools("promtool_accepts_every_sample_tree", &["promtool"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for name in EXAMPLE_TREES {
        let tree = dir.path().join(name);
        write_example_tree(name, &tree);
        for extra in [&[][..], &["--openmetrics"][..]] {
            let text = checked(&tree, extra);
            assert!(text.contains("mdevreg_parent_info{"), "{name}: {text}");
            let (ok, printed) = promtool_check(text.as_bytes());
            assert!(
                ok,
                "{name} {extra:?}: promtool check metrics:\n{printed}\n{text}"
            );
        }
    }
}

#[test]
fn promtool_rejects_what_it_should() {
    // The check above can fail: promtool lints what breaks the conventions.
    if !require_tools("promtool_rejects_what_it_should", &["promtool"]) {
        return;
    }
    let (ok, printed) = promtool_check(
        b"# HELP mdevreg_things Things.\n# TYPE mdevreg_things counter\nmdevreg_things 1\n",
    );
    assert!(!ok, "a counter without _total passed: {printed}");
}

#[test]
fn hostile_names_are_escaped() {
    if !require_tools("hostile_names_are_escaped", &["promtool"]) {
        return;
    }
    let tree = FakeSysfs::new();
    tree.add_parent(
        &ParentSpec::pci("0000:00:04.0", "weird").with_type(
            TypeSpec::new("weird-1", "vfio-pci", 3).name("a \"quoted\" \\ name\twith tab"),
        ),
    );
    // A newline inside the name (trimmed only at the ends).
    tree.add_parent(
        &ParentSpec::pci("0000:00:05.0", "weird")
            .with_type(TypeSpec::new("weird-2", "vfio-pci", 4).name("first\nsecond")),
    );
    let text = checked(tree.root(), &[]);
    let (ok, printed) = promtool_check(text.as_bytes());
    assert!(ok, "promtool check metrics:\n{printed}\n{text}");
    let all = parse(&text);
    let names: Vec<&str> = samples(&all, "mdevreg_type_available_instances")
        .iter()
        .map(|s| s.label("name"))
        .collect();
    assert_eq!(names, ["a \"quoted\" \\ name\twith tab", "first\nsecond"]);
}

#[test]
fn values_are_those_of_the_tree() {
    let tree = FakeSysfs::new();
    many_parents(&tree, 12, 6, 1);
    tree.add_parent(&ParentSpec::gvt());
    tree.add_parent(&ParentSpec::vfio_ccw("0.0.0042"));
    let text = checked(tree.root(), &[]);
    let all = parse(&text);
    assert_eq!(samples(&all, "mdevreg_parent_info").len(), 14);
    // many_parents: 16 available and one instance per type.
    let nvidia: Vec<_> = samples(&all, "mdevreg_type_available_instances")
        .into_iter()
        .filter(|s| s.label("type").starts_with("nvidia-"))
        .collect();
    assert_eq!(nvidia.len(), 12 * 6);
    assert!(nvidia.iter().all(|s| s.value == 16.0));
    let instances: f64 = samples(&all, "mdevreg_type_instances")
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(instances, 72.0);
    let gvt = ParentSpec::gvt();
    for mdev_type in &gvt.types {
        let found = samples(&all, "mdevreg_type_available_instances")
            .into_iter()
            .find(|s| s.label("parent") == gvt.name() && s.label("type") == mdev_type.id)
            .unwrap_or_else(|| panic!("no sample for {}", mdev_type.id));
        assert_eq!(found.value, f64::from(mdev_type.available_instances));
        assert_eq!(found.label("device_api"), mdev_type.device_api);
    }
}

#[test]
fn a_missing_root_is_a_one_line_error() {
    let out = metrics(Path::new("/nonexistent-mdevreg-root"), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent-mdevreg-root"), "{err}");
    assert!(out.stdout.is_empty());
}

/// The registry lines of an exposition (counters and build info aside).
fn registry_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|line| {
            [
                "mdevreg_parent_info",
                "mdevreg_type_",
                "mdevreg_physical_",
                "mdevreg_registry_seqnum",
            ]
            .iter()
            .any(|prefix| line.starts_with(prefix))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_daemon_serves_what_mdevreg_metrics_prints() {
    use common::daemon::Setup;
    use common::prometheus::{http_get, loopback_up};
    use common::sysfs_fixture::populate_mixed;

    common::prereq::run(
        "the_daemon_serves_what_mdevreg_metrics_prints",
        &["promtool", "ip"],
        || async {
            loopback_up();
            let tree = FakeSysfs::new();
            populate_mixed(&tree);
            let textfile_dir = tempfile::tempdir().expect("tempdir");
            let textfile = textfile_dir.path().join("mdevreg.prom");
            let setup = Setup::start(tree.root(), |options| {
                options.emit = "none";
                options.extra_args = vec![
                    "--metrics-listen".to_owned(),
                    "127.0.0.1:19400".to_owned(),
                    "--metrics-textfile".to_owned(),
                    textfile.display().to_string(),
                ];
            })
            .await;
            let (status, served) = http_get(19400, "/metrics").expect("scrape");
            assert_eq!(status, 200);
            let served = String::from_utf8(served).expect("UTF-8");
            let (ok, printed) = promtool_check(served.as_bytes());
            assert!(
                ok,
                "promtool on the daemon's exposition:\n{printed}\n{served}"
            );

            let out = Command::new(env!("CARGO_BIN_EXE_mdevreg"))
                .args(["--bus", setup.bus.address(), "metrics"])
                .output()
                .expect("run mdevreg metrics");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let printed_text = String::from_utf8(out.stdout).expect("UTF-8");
            let (ok, lint) = promtool_check(printed_text.as_bytes());
            assert!(ok, "promtool on mdevreg metrics:\n{lint}");
            assert!(!registry_lines(&served).is_empty());
            assert_eq!(registry_lines(&printed_text), registry_lines(&served));
            assert!(
                printed_text.contains("\nmdevreg_rescans_total "),
                "{printed_text}"
            );

            let direct = checked(tree.root(), &[]);
            let file = std::fs::read_to_string(&textfile).expect("textfile written at start");
            let (ok, lint) = promtool_check(file.as_bytes());
            assert!(ok, "promtool on the textfile:\n{lint}");
            // The same parents and types in all four; the sequence numbers
            // differ (the daemon counts its startup events its own way).
            let without_seqnum = |text: &str| -> Vec<String> {
                registry_lines(text)
                    .into_iter()
                    .filter(|line| !line.starts_with("mdevreg_registry_seqnum"))
                    .collect()
            };
            assert_eq!(without_seqnum(&direct), without_seqnum(&served));
            assert_eq!(without_seqnum(&file), without_seqnum(&served));

            // The daemon's three outputs carry the same families, the time
            // of the last uevent included (`mdevreg metrics` reads it from
            // `Stats`); its value is the time the daemon started listening
            // or a later uevent's.
            let families = |text: &str| -> Vec<String> {
                text.lines()
                    .filter_map(|line| line.strip_prefix("# TYPE "))
                    .map(str::to_owned)
                    .collect()
            };
            assert_eq!(families(&printed_text), families(&served));
            assert_eq!(families(&file), families(&served));
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs_f64();
            for (what, text) in [
                ("listen", &served),
                ("mdevreg metrics", &printed_text),
                ("textfile", &file),
            ] {
                let seconds: f64 = text
                    .lines()
                    .find_map(|line| line.strip_prefix("mdevreg_last_uevent_timestamp_seconds "))
                    .unwrap_or_else(|| panic!("{what}: no last uevent time in:\n{text}"))
                    .parse()
                    .unwrap_or_else(|err| panic!("{what}: last uevent time: {err}"));
                assert!(
                    seconds > now - 600.0 && seconds <= now + 1.0,
                    "{what}: last uevent at {seconds}, now {now}"
                );
            }

            // A userspace registration and its unregistration are counted,
            // by source, the same in `Stats` (`mdevreg metrics`) and in the
            // daemon's own exposition.
            let cli = |args: &[&str]| {
                let out = Command::new(env!("CARGO_BIN_EXE_mdevreg"))
                    .args(["--bus", setup.bus.address()])
                    .args(args)
                    .output()
                    .expect("run mdevreg");
                assert!(
                    out.status.success(),
                    "mdevreg {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout).expect("UTF-8")
            };
            cli(&[
                "register",
                "metrics-demo",
                "--type",
                "demo-1,vfio-pci,4",
                "--persistent",
            ]);
            cli(&["unregister", "metrics-demo"]);
            let printed_text = cli(&["metrics"]);
            let (status, served) = http_get(19400, "/metrics").expect("scrape");
            assert_eq!(status, 200);
            let served = String::from_utf8(served).expect("UTF-8");
            for line in [
                r#"mdevreg_registrations_total{source="userspace"} 1"#,
                r#"mdevreg_unregistrations_total{source="userspace"} 1"#,
                r#"mdevreg_unregistrations_total{source="kernel"} 0"#,
            ] {
                assert!(
                    printed_text.lines().any(|l| l == line),
                    "mdevreg metrics lacks {line:?}:\n{printed_text}"
                );
                assert!(
                    served.lines().any(|l| l == line),
                    "the listener lacks {line:?}:\n{served}"
                );
            }
            let kernel_parents = samples(&parse(&printed_text), "mdevreg_parent_info").len();
            assert!(
                printed_text.lines().any(|l| l
                    == format!(
                        r#"mdevreg_registrations_total{{source="kernel"}} {kernel_parents}"#
                    )),
                "{printed_text}"
            );
        },
    );
}
