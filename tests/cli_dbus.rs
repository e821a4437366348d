//! The `mdevreg` CLI against the real daemon over a real bus: a private
//! dbus-daemon, the built `mdevregd` on a fake sysfs tree, and the built
//! `mdevreg` driven as a user would (exit codes, stdout, stderr, signals).
//!
//! Needs `dbus-daemon`: without it the tests skip with a message, unless env
//! `CI` is set, where they fail.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::bus::DbusDaemon;
use common::daemon::{Daemon, DaemonOptions};
use common::prereq::{open_tempdir, require_tools};
use common::sysfs_fixture::{populate_mixed, FakeSysfs, ParentSpec, TypeSpec};
use mdevreg::label;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const CLI: &str = env!("CARGO_BIN_EXE_mdevreg");

/// How long to wait for a process to show something.
const PATIENCE: Duration = Duration::from_secs(10);

/// Starts a private permissive bus, or reports the missing prerequisite
/// (`None`: skip).
fn start_bus(test: &str) -> Option<DbusDaemon> {
    if !require_tools(test, &["dbus-daemon"]) {
        return None;
    }
    Some(DbusDaemon::start_permissive())
}

/// A running `mdevregd` serving a tree on a bus (`--emit none`, no netlink),
/// its state and log in a temporary directory, out of the test output.
struct ServingDaemon {
    daemon: Daemon,
    _state: tempfile::TempDir,
}

impl ServingDaemon {
    fn start(bus: &DbusDaemon, tree: &Path) -> ServingDaemon {
        let state = open_tempdir("mdevreg-state-");
        let mut options = DaemonOptions::new(tree, state.path());
        options.emit = "none";
        options.netlink = false;
        options.verbose = false;
        let mut daemon = Daemon::spawn(bus.address(), &options, state.path());
        // Ready once it answers on the bus.
        let deadline = Instant::now() + PATIENCE;
        loop {
            if mdevreg(bus, &["stats"]).status.success() {
                return ServingDaemon {
                    daemon,
                    _state: state,
                };
            }
            daemon.assert_alive("before answering on the bus");
            assert!(Instant::now() < deadline, "mdevregd did not come up");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits (bounded) for the exit.
    fn stop(mut self) {
        if self.daemon.is_alive() {
            self.daemon.signal(Signal::SIGTERM);
            let exited = self.daemon.wait_exit(PATIENCE);
            assert!(exited.is_some(), "mdevregd did not exit on SIGTERM");
        }
    }
}

fn signal_child(child: &Child, sig: Signal) {
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
    kill(pid, sig).expect("send signal");
}

/// Sends `sig` and waits (bounded) for the exit; returns the exit code.
fn terminate(child: &mut Child, sig: Signal) -> Option<i32> {
    if let Ok(Some(status)) = child.try_wait() {
        return status.code();
    }
    signal_child(child, sig);
    wait_exit(child)
}

fn wait_exit(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit", child.id());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `mdevreg --bus <bus> ARGS...` to completion.
/// `DumpTypes(parent)` called with busctl: the document string.
fn busctl_dump_types(bus: &DbusDaemon, parent: &str) -> String {
    let output = Command::new("busctl")
        .arg(format!("--address={}", bus.address()))
        .args([
            "--json=short",
            "call",
            "org.mdevreg.Registry1",
            "/org/mdevreg/Registry1",
            "org.mdevreg.Registry1",
            "DumpTypes",
            "s",
            parent,
        ])
        .output()
        .expect("run busctl");
    assert!(
        output.status.success(),
        "busctl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reply: Value = serde_json::from_slice(&output.stdout).expect("busctl JSON");
    reply["data"][0].as_str().expect("a string").to_owned()
}

fn mdevreg(bus: &DbusDaemon, args: &[&str]) -> Output {
    mdevreg_on(bus.address(), args)
}

fn mdevreg_on(address: &str, args: &[&str]) -> Output {
    Command::new(CLI)
        .args(["--bus", address])
        .args(args)
        .env_remove("MDEVREG_BUS")
        .output()
        .expect("run mdevreg")
}

fn direct(tree: &Path, args: &[&str]) -> Output {
    Command::new(CLI)
        .args(args)
        .arg("--sysfs-root")
        .arg(tree)
        .output()
        .expect("run mdevreg")
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "mdevreg failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

fn json_of(output: &Output) -> Value {
    serde_json::from_str(&stdout_of(output)).expect("JSON output")
}

/// Asserts a failure: exit `code`, nothing on stdout, exactly one stderr
/// line starting `mdevreg: ` and containing `needle`.
fn assert_fails(output: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "stdout: {:?}", output.stdout);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr:?}");
    assert!(lines[0].starts_with("mdevreg: "), "{stderr:?}");
    assert!(lines[0].contains(needle), "{needle:?} not in {stderr:?}");
}

/// Lines of a child's stdout, read on a thread.
struct LineReader {
    lines: mpsc::Receiver<String>,
}

impl LineReader {
    fn new(stdout: ChildStdout) -> LineReader {
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        LineReader { lines }
    }

    fn next_within(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    fn next(&self) -> String {
        self.next_within(PATIENCE)
            .expect("a line within the time limit")
    }
}

fn spawn_piped(address: &str, args: &[&str]) -> (Child, LineReader) {
    let mut child = Command::new(CLI)
        .args(["--bus", address])
        .args(args)
        .env_remove("MDEVREG_BUS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mdevreg");
    let reader = LineReader::new(child.stdout.take().expect("piped stdout"));
    (child, reader)
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
    }
    text
}

/// Registers and unregisters a probe parent until `monitors` have all
/// printed its events: from then on they are subscribed.
fn wait_subscribed(bus: &DbusDaemon, monitors: &[&LineReader]) {
    let deadline = Instant::now() + PATIENCE;
    let mut seen = vec![false; monitors.len()];
    while seen.iter().any(|s| !s) {
        assert!(Instant::now() < deadline, "monitor never saw the probe");
        stdout_of(&mdevreg(
            bus,
            &[
                "register",
                "probe",
                "--persistent",
                "--type",
                "p-1,vfio-pci,1",
            ],
        ));
        stdout_of(&mdevreg(bus, &["unregister", "probe"]));
        for (index, monitor) in monitors.iter().enumerate() {
            while let Some(line) = monitor.next_within(Duration::from_millis(300)) {
                assert!(line.contains("probe"), "unexpected event {line:?}");
                seen[index] = true;
            }
        }
    }
}

fn tree_with(parents: &[ParentSpec]) -> FakeSysfs {
    let tree = FakeSysfs::new();
    for parent in parents {
        tree.add_parent(parent);
    }
    tree
}

#[test]
fn types_and_list_match_the_direct_mode() {
    let Some(bus) = start_bus("types_and_list_match_the_direct_mode") else {
        return;
    };
    let mixed = FakeSysfs::new();
    populate_mixed(&mixed);
    let presets = [
        ("empty", FakeSysfs::new()),
        ("gvt", tree_with(&[ParentSpec::gvt()])),
        (
            "samples",
            tree_with(&[ParentSpec::mtty(), ParentSpec::mdpy(), ParentSpec::mbochs()]),
        ),
        (
            "s390",
            tree_with(&[
                ParentSpec::vfio_ap_matrix(),
                ParentSpec::vfio_ccw("0.0.0013"),
            ]),
        ),
        ("mixed", mixed),
    ];
    for (preset, tree) in &presets {
        let daemon = ServingDaemon::start(&bus, tree.root());
        for args in [
            &["types", "--json"][..],
            &["types"][..],
            &["types", "--json", "--parent", "mtty"][..],
            &["types", "--json", "--parent", "nope"][..],
            &["list", "--json"][..],
            &["list"][..],
        ] {
            let via_daemon = stdout_of(&mdevreg(&bus, args));
            let scanned = stdout_of(&direct(tree.root(), args));
            if args.contains(&"--json") {
                let daemon_doc: Value = serde_json::from_str(&via_daemon).expect("JSON");
                let direct_doc: Value = serde_json::from_str(&scanned).expect("JSON");
                assert_eq!(daemon_doc, direct_doc, "{preset}: {args:?}");
            }
            // Same printer in both modes: the same bytes.
            assert_eq!(via_daemon, scanned, "{preset}: {args:?}");
        }
        // The string form of the document (what busctl and gdbus users
        // call) is the same document as the file the CLI reads.
        if require_tools("types_and_list_match_the_direct_mode", &["busctl"]) {
            for parent in ["", "mtty"] {
                let dumped = busctl_dump_types(&bus, parent);
                let mut args = vec!["types", "--json"];
                if !parent.is_empty() {
                    args.extend(["--parent", parent]);
                }
                let scanned = stdout_of(&direct(tree.root(), &args));
                assert_eq!(
                    format!("{dumped}\n"),
                    scanned,
                    "{preset}: DumpTypes {parent:?}"
                );
            }
        }
        daemon.stop();
    }
    // The comparison can fail: the mixed tree really lists its parents.
    let doc = json_of(&direct(presets[4].1.root(), &["types", "--json"]));
    assert_eq!(doc[0].as_object().map(|o| o.len()), Some(8), "{doc}");
}

#[test]
fn show_and_list_describe_parents() {
    let Some(bus) = start_bus("show_and_list_describe_parents") else {
        return;
    };
    let tree = FakeSysfs::new();
    populate_mixed(&tree);
    let _daemon = ServingDaemon::start(&bus, tree.root());

    let shown = json_of(&mdevreg(&bus, &["show", "0000:00:02.0", "--json"]));
    assert_eq!(shown["name"], "0000:00:02.0");
    assert_eq!(shown["devpath"], "/devices/pci0000:00/0000:00:02.0");
    assert_eq!(shown["subsystem"], "pci");
    assert_eq!(shown["driver"], "i915");
    assert_eq!(shown["source"], "kernel");
    assert_eq!(shown["lifetime"], "kernel");
    let types = shown["types"].as_array().expect("types");
    assert_eq!(types.len(), 4);
    assert_eq!(types[2]["id"], "i915-GVTg_V5_4");
    assert_eq!(types[2]["devices"].as_array().map(Vec::len), Some(2));

    let list = json_of(&mdevreg(&bus, &["list", "--json"]));
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names.len(), 8);
    assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
    // `show --json` is the `list --json` entry.
    let entry = list
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "0000:00:02.0"))
        .expect("listed");
    assert_eq!(entry, &shown);

    let text = stdout_of(&mdevreg(&bus, &["show", "mtty"]));
    assert!(
        text.starts_with("mtty\n  DevPath:   /devices/virtual/mtty/mtty\n"),
        "{text}"
    );
    assert!(
        text.contains("    mtty-2 (vfio-pci, 12 available) Dual port serial\n"),
        "{text}"
    );

    assert_fails(&mdevreg(&bus, &["show", "nope"]), 1, "no parent named nope");

    let stats = json_of(&mdevreg(&bus, &["stats", "--json"]));
    assert_eq!(stats["parents"], 8);
    assert!(stats["seqnum"].as_u64().is_some_and(|n| n >= 8), "{stats}");
    assert!(stats["counters"].is_object(), "{stats}");
    assert!(stdout_of(&mdevreg(&bus, &["stats"])).contains("Parents:  8\n"));
}

#[test]
fn register_holds_until_interrupted_and_monitor_sees_it() {
    let Some(bus) = start_bus("register_holds_until_interrupted_and_monitor_sees_it") else {
        return;
    };
    let tree = tree_with(&[ParentSpec::mtty()]);
    let _daemon = ServingDaemon::start(&bus, tree.root());
    let (mut json_monitor, json_lines) = spawn_piped(bus.address(), &["monitor", "--json"]);
    let (mut text_monitor, text_lines) = spawn_piped(bus.address(), &["monitor"]);
    wait_subscribed(&bus, &[&json_lines, &text_lines]);

    let (mut holder, holder_lines) = spawn_piped(
        bus.address(),
        &[
            "register",
            "vgpu0",
            "--type",
            "vg-1,vfio-pci,4,Small,a, b",
            "--type",
            "vg-2,vfio-ccw,0",
            "--driver",
            "vgpud",
        ],
    );
    let path = label::parent_path("vgpu0");
    assert_eq!(holder_lines.next(), path);

    let registered: Value = serde_json::from_str(&json_lines.next()).expect("JSON line");
    assert_eq!(registered["event"], "registered");
    assert_eq!(registered["name"], "vgpu0");
    assert_eq!(registered["source"], "userspace");
    assert_eq!(registered["path"], path.as_str());
    let seqnum = registered["seqnum"].as_u64().expect("seqnum");
    let line = text_lines.next();
    assert_eq!(
        line,
        format!("REGISTERED   seqnum={seqnum} name=vgpu0 source=userspace path={path}")
    );

    // Held while the command runs.
    let shown = json_of(&mdevreg(&bus, &["show", "vgpu0", "--json"]));
    assert_eq!(shown["lifetime"], "owner");
    assert_eq!(shown["driver"], "vgpud");
    assert!(
        shown["owner"].as_str().is_some_and(|o| o.starts_with(':')),
        "{shown}"
    );
    assert_eq!(shown["types"][0]["description"], "a, b");
    assert_eq!(shown["types"][1]["device_api"], "vfio-ccw");
    let types = json_of(&mdevreg(&bus, &["types", "--json", "--parent", "vgpu0"]));
    assert_eq!(
        types[0]["vgpu0"][0]["vg-1"]["available_instances"], 4,
        "{types}"
    );
    // Another connection may not take it away.
    assert_fails(&mdevreg(&bus, &["unregister", "vgpu0"]), 1, "NotOwner");

    assert_eq!(terminate(&mut holder, Signal::SIGINT), Some(0));
    assert_eq!(stderr_of(&mut holder), "");
    let unregistered: Value = serde_json::from_str(&json_lines.next()).expect("JSON line");
    assert_eq!(unregistered["event"], "unregistered");
    assert_eq!(unregistered["name"], "vgpu0");
    assert!(unregistered["seqnum"].as_u64().is_some_and(|n| n > seqnum));
    assert!(text_lines.next().starts_with("UNREGISTERED seqnum="));
    assert_fails(
        &mdevreg(&bus, &["show", "vgpu0"]),
        1,
        "no parent named vgpu0",
    );

    assert_eq!(terminate(&mut json_monitor, Signal::SIGINT), Some(0));
    assert_eq!(terminate(&mut text_monitor, Signal::SIGTERM), Some(0));
    assert_eq!(stderr_of(&mut json_monitor), "");
}

#[test]
fn persistent_registration_and_unregister() {
    let Some(bus) = start_bus("persistent_registration_and_unregister") else {
        return;
    };
    let tree = FakeSysfs::new();
    let _daemon = ServingDaemon::start(&bus, tree.root());
    let output = mdevreg(
        &bus,
        &[
            "register",
            "keep",
            "--persistent",
            "--type",
            "k-1,vfio-pci,2",
            "--devpath",
            "/devices/virtual/mdevreg/kept",
        ],
    );
    assert_eq!(
        stdout_of(&output),
        format!("{}\n", label::parent_path("keep"))
    );
    let shown = json_of(&mdevreg(&bus, &["show", "keep", "--json"]));
    assert_eq!(shown["lifetime"], "persistent");
    assert_eq!(shown["devpath"], "/devices/virtual/mdevreg/kept");
    assert_eq!(shown["subsystem"], "mdevreg");

    assert_fails(
        &mdevreg(&bus, &["register", "keep", "--type", "k-1,vfio-pci,2"]),
        1,
        "org.mdevreg.Registry1.Error.AlreadyRegistered",
    );
    let unregistered = mdevreg(&bus, &["unregister", "keep"]);
    assert_eq!(stdout_of(&unregistered), "");
    assert_eq!(
        json_of(&mdevreg(&bus, &["list", "--json"])),
        Value::Array(vec![])
    );
    assert_fails(
        &mdevreg(&bus, &["unregister", "keep"]),
        1,
        "org.mdevreg.Registry1.Error.NotRegistered",
    );
    // An invalid name is refused by the daemon with its typed error.
    assert_fails(
        &mdevreg(&bus, &["register", "a/b", "--type", "k-1,vfio-pci,2"]),
        1,
        "org.mdevreg.Registry1.Error.InvalidArgument",
    );
}

#[test]
fn usage_and_runtime_errors() {
    let Some(bus) = start_bus("usage_and_runtime_errors") else {
        return;
    };
    // Usage errors win over anything on the bus: exit 2.
    for (spec, needle) in [
        ("t,vfio-pci,many", "AVAIL \"many\" is not a number"),
        ("t,vfio-pci", "expected ID,API,AVAIL"),
        ("t,vfio-pci,99999999999", "AVAIL"),
    ] {
        assert_fails(
            &mdevreg_on(
                "unix:path=/nonexistent/bus",
                &["register", "x", "--type", spec],
            ),
            2,
            needle,
        );
    }
    let missing_type = mdevreg(&bus, &["register", "x"]);
    assert_eq!(missing_type.status.code(), Some(2));

    // No bus: one line naming the bus.
    assert_fails(
        &mdevreg_on("unix:path=/nonexistent/bus", &["list"]),
        1,
        "cannot connect to the bus at unix:path=/nonexistent/bus",
    );
    // A bus without the daemon.
    for args in [
        &["types", "--json"][..],
        &["unregister", "x"][..],
        &["stats"][..],
    ] {
        assert_fails(&mdevreg(&bus, args), 1, "mdevregd is not running");
    }

    // The daemon leaving ends an owner-bound registration: exit 1.
    let tree = tree_with(&[ParentSpec::new("/devices/virtual/t/t")
        .subsystem("class/t")
        .with_type(TypeSpec::new("t-1", "vfio-pci", 1))]);
    let daemon = ServingDaemon::start(&bus, tree.root());
    assert_fails(
        &mdevreg(&bus, &["show", "nope", "--json"]),
        1,
        "no parent named nope",
    );
    let (mut holder, holder_lines) = spawn_piped(
        bus.address(),
        &["register", "held", "--type", "h-1,vfio-pci,1"],
    );
    assert_eq!(holder_lines.next(), label::parent_path("held"));
    daemon.stop();
    assert_eq!(wait_exit(&mut holder), Some(1));
    let stderr = stderr_of(&mut holder);
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.starts_with("mdevreg: mdevregd left the bus; the registration of held is gone"),
        "{stderr:?}"
    );
}
