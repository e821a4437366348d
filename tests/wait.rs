//! `mdevreg wait` against a real daemon on a private bus, and with
//! `--sysfs-root` against a fake tree and the kernel's uevent netlink
//! (inside a private network namespace, injected events stay there).
//!
//! - started before the parent appears: returns when it registers (the
//!   delay after the test sees `ParentRegistered` is printed; the target
//!   is 50 ms, asserted with a wide margin for a loaded machine);
//! - already there: returns at once, without a "waiting" line;
//! - timeout: exit 1 with one line naming what is missing;
//! - a type that appears later, and its AvailableInstances going 0 → 2;
//! - usage errors: exit 2;
//! - `--sysfs-root`: returns on the kernel uevent of the parent.
//!
//! The "waiting" line on stderr is printed after the subscription and the
//! first check, so a test that has read it knows the wait cannot miss what
//! comes next. Needs root and dbus-daemon; skipped without them, or fails
//! when `CI` is set.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::Setup;
use common::prereq::run;
use common::registry_client::{good_type, register_raw, Dict};
use common::registry_signals::{next_signal, registry_signals};
use common::sysfs_fixture::{FakeSysfs, ParentSpec, TypeSpec};
use mdevreg::netlink::UeventEmitter;
use mdevreg::uevent::Uevent;

/// Generous: the target (50 ms) is a figure to report, not a test bound.
const RETURN_BOUND: Duration = Duration::from_secs(2);

/// `mdevreg wait ARGS` on `bus` (none: direct mode), stderr piped.
fn spawn_wait(bus: Option<&str>, args: &[&str]) -> (Child, BufReader<ChildStderr>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mdevreg"));
    if let Some(bus) = bus {
        command.args(["--bus", bus]);
    }
    let mut child = command
        .arg("wait")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mdevreg wait");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    (child, stderr)
}

/// The next stderr line of the wait (blocking, on a blocking thread).
async fn next_line(stderr: BufReader<ChildStderr>) -> (String, BufReader<ChildStderr>) {
    tokio::task::spawn_blocking(move || {
        let mut stderr = stderr;
        let mut line = String::new();
        stderr.read_line(&mut line).expect("read stderr");
        (line.trim_end().to_owned(), stderr)
    })
    .await
    .expect("reader thread")
}

/// Waits for the process to exit (on a blocking thread); its exit code and
/// when it was seen exiting.
async fn exit_of(mut child: Child) -> (i32, Instant) {
    tokio::task::spawn_blocking(move || {
        let status = child.wait().expect("wait for mdevreg");
        (status.code().unwrap_or(-1), Instant::now())
    })
    .await
    .expect("waiter thread")
}

fn started(setup: &Setup) -> String {
    setup.bus.address().to_owned()
}

#[test]
fn wait_returns_when_the_parent_registers() {
    run("wait_returns_when_the_parent_registers", &[], || async {
        let tree = FakeSysfs::new();
        let setup = Setup::start(tree.root(), |o| {
            o.emit = "none";
            o.netlink = false;
        })
        .await;
        let address = started(&setup);
        let (child, stderr) = spawn_wait(Some(&address), &["late0", "--timeout", "60"]);
        let (line, _stderr) = next_line(stderr).await;
        assert_eq!(line, "mdevreg: waiting: parent late0 is not registered");
        let exited = tokio::spawn(exit_of(child));
        let mut signals = registry_signals(&setup.client).await;
        register_raw(&setup.client, "late0", &Dict::new(), &[good_type("l-1")])
            .await
            .expect("register late0");
        let signal = next_signal(&mut signals, Duration::from_secs(15))
            .await
            .expect("ParentRegistered");
        let seen = Instant::now();
        assert_eq!(
            (signal.member.as_str(), signal.name.as_str()),
            ("ParentRegistered", "late0")
        );
        let (code, at) = exited.await.expect("exit");
        assert_eq!(code, 0);
        let delay = at.saturating_duration_since(seen);
        eprintln!("mdevreg wait returned {delay:?} after the test saw ParentRegistered");
        assert!(
            delay < RETURN_BOUND,
            "returned {delay:?} after ParentRegistered"
        );
    });
}

#[test]
fn wait_returns_at_once_when_already_there_and_fails_on_timeout() {
    run(
        "wait_returns_at_once_when_already_there_and_fails_on_timeout",
        &[],
        || async {
            let tree = FakeSysfs::new();
            tree.add_parent(&ParentSpec::mtty());
            let setup = Setup::start(tree.root(), |o| {
                o.emit = "none";
                o.netlink = false;
            })
            .await;
            let address = started(&setup);
            let output = Command::new(env!("CARGO_BIN_EXE_mdevreg"))
                .args(["--bus", &address, "wait", "mtty", "--type", "mtty-2"])
                .args(["--available", "12", "--timeout", "30"])
                .output()
                .expect("run mdevreg wait");
            assert_eq!(output.status.code(), Some(0), "{output:?}");
            assert!(output.stderr.is_empty(), "{output:?}");

            for (args, line) in [
                (
                    &["nope0", "--timeout", "0.5"][..],
                    "mdevreg: timed out after 0.5 s: parent nope0 is not registered",
                ),
                (
                    &["mtty", "--type", "mtty-9", "--timeout", "0.2"][..],
                    "mdevreg: timed out after 0.2 s: parent mtty has no type mtty-9",
                ),
                (
                    &["mtty", "--type", "mtty-2", "--available", "13", "--timeout", "0.2"][..],
                    "mdevreg: timed out after 0.2 s: type mtty-2 of parent mtty has 12 available instances, not 13",
                ),
            ] {
                let output = Command::new(env!("CARGO_BIN_EXE_mdevreg"))
                    .args(["--bus", &address, "wait"])
                    .args(args)
                    .output()
                    .expect("run mdevreg wait");
                assert_eq!(output.status.code(), Some(1), "{args:?}: {output:?}");
                let stderr = String::from_utf8_lossy(&output.stderr);
                let lines: Vec<&str> = stderr.lines().collect();
                // The "waiting" line, then the one-line failure.
                assert_eq!(lines.len(), 2, "{args:?}: {stderr}");
                assert_eq!(lines[1], line, "{args:?}");
            }

            // Usage errors.
            for args in [
                &["bad/name"][..],
                &["mtty", "--timeout", "-1"],
                &["mtty", "--available", "x"],
                &[],
            ] {
                let output = Command::new(env!("CARGO_BIN_EXE_mdevreg"))
                    .args(["--bus", &address, "wait"])
                    .args(args)
                    .output()
                    .expect("run mdevreg wait");
                assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
            }
        },
    );
}

#[test]
fn wait_follows_a_type_and_its_availability() {
    run("wait_follows_a_type_and_its_availability", &[], || async {
        let tree = FakeSysfs::new();
        let spec = ParentSpec::new("/devices/virtual/mtty/mtty")
            .with_type(TypeSpec::new("mtty-1", "vfio-pci", 24));
        tree.add_parent(&spec);
        let setup = Setup::start(tree.root(), |o| {
            o.emit = "none";
            o.netlink = false;
        })
        .await;
        let address = started(&setup);
        let registry = setup.registry().await;
        let (mut child, stderr) = spawn_wait(
            Some(&address),
            &[
                "mtty",
                "--type",
                "mtty-2",
                "--available",
                "2",
                "--timeout",
                "60",
            ],
        );
        let (line, _stderr) = next_line(stderr).await;
        assert_eq!(line, "mdevreg: waiting: parent mtty has no type mtty-2");

        // The type appears with no instance available: still waiting.
        tree.add_type("mtty", &TypeSpec::new("mtty-2", "vfio-pci", 0));
        registry.rescan().await.expect("Rescan");
        assert!(child.try_wait().expect("try_wait").is_none());

        // 0 → 2: it returns.
        tree.set_available_instances("mtty", "mtty-2", 2);
        let before = Instant::now();
        registry.rescan().await.expect("Rescan");
        let (code, at) = exit_of(child).await;
        assert_eq!(code, 0);
        let delay = at.saturating_duration_since(before);
        eprintln!("mdevreg wait returned {delay:?} after the Rescan that made 2 available");
        assert!(delay < RETURN_BOUND, "{delay:?}");
    });
}

#[test]
fn wait_on_a_sysfs_root_follows_kernel_uevents() {
    run(
        "wait_on_a_sysfs_root_follows_kernel_uevents",
        &[],
        || async {
            let tree = FakeSysfs::new();
            let root = tree.root().display().to_string();
            let (child, stderr) =
                spawn_wait(None, &["mtty", "--sysfs-root", &root, "--timeout", "60"]);
            let (line, _stderr) = next_line(stderr).await;
            assert_eq!(line, "mdevreg: waiting: parent mtty is not registered");
            let exited = tokio::spawn(exit_of(child));

            // The parent appears; the kernel (here: an injection in this
            // network namespace) says so.
            let spec = ParentSpec::mtty();
            tree.add_parent(&spec);
            let before = Instant::now();
            let mut emitter = UeventEmitter::open().expect("uevent emitter");
            emitter
                .inject(
                    &Uevent::new("change", &spec.devpath)
                        .with("SUBSYSTEM", "mtty")
                        .with("MDEV_STATE", "registered"),
                )
                .expect("inject");
            let (code, at) = exited.await.expect("exit");
            assert_eq!(code, 0);
            let delay = at.saturating_duration_since(before);
            eprintln!("mdevreg wait --sysfs-root returned {delay:?} after the uevent");
            assert!(delay < RETURN_BOUND, "{delay:?}");
            assert!(Path::new(&root).join("class/mdev_bus/mtty").exists());
        },
    );
}
