//! Acceptance test of the shipped bus policy `dbus/org.mdevreg.Registry1.conf`
//! on a real dbus-daemon whose configuration is shaped like the system bus
//! (default deny) and includes the policy file: root's mdevregd owns the name
//! and root may call RegisterParent; uid 65534 (through `setpriv`) may read
//! (GetManagedObjects, ListParents, GetParent, DumpTypes and the
//! `Dump*ByFileDescriptor` methods, Properties, Introspect, Peer, and every
//! read verb of the `mdevreg` CLI) and call the mutators, which mdevregd
//! refuses itself (no polkit on this bus; tests/polkit.rs has a real
//! polkitd), but the bus rejects its claim on the name. Clients are `gdbus`
//! and the CLI. Without root or a tool the test is
//! skipped, or fails when `CI` is set.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::bus::DbusDaemon;
use common::gdbus::gdbus_call;
use common::lines::LineReader;
use common::prereq;

const BUS_NAME: &str = "org.mdevreg.Registry1";
const ROOT_PATH: &str = "/org/mdevreg/Registry1";
const IFACE: &str = "org.mdevreg.Registry1";
const PARENT: &str = "policy0";
const PARENT_PATH: &str = "/org/mdevreg/Registry1/parent/policy0";
/// What dbus-daemon answers when its policy rejects a message.
const BUS_DENIAL: &str = "org.freedesktop.DBus.Error.AccessDenied";
/// What mdevregd answers a caller it does not authorise.
const DAEMON_DENIAL: &str = "org.mdevreg.Registry1.Error.AccessDenied";

fn shipped_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/org.mdevreg.Registry1.conf")
}

/// `mdevregd` on `address` with an empty fake sysfs, no netlink, no uevents.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(address: &str, work: &Path) -> Daemon {
        let sysfs = work.join("sysfs");
        let state = work.join("state");
        for dir in [
            "sysfs/devices",
            "sysfs/class/mdev_bus",
            "sysfs/bus/mdev/devices",
            "state",
        ] {
            std::fs::create_dir_all(work.join(dir)).expect("create work dirs");
        }
        let log = work.join("mdevregd.log");
        let log_file = std::fs::File::create(&log).expect("daemon log");
        let child = Command::new(env!("CARGO_BIN_EXE_mdevregd"))
            .arg("--bus")
            .arg(address)
            .arg("--sysfs-root")
            .arg(&sysfs)
            .arg("--state-dir")
            .arg(&state)
            .arg("--runtime-dir")
            .arg(&state)
            .args(["--emit", "none", "--no-netlink", "-v"])
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file)
            .spawn()
            .expect("spawn mdevregd");
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait mdevregd")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(output: &Output) -> String {
    format!(
        "status {}; stdout: {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

fn call_ok(address: &str, as_nobody: bool, path: &str, method: &str, args: &[&str]) -> String {
    let output = gdbus_call(address, as_nobody, BUS_NAME, path, method, args);
    assert!(
        output.status.success(),
        "{method} as {} failed: {}",
        if as_nobody { "uid 65534" } else { "root" },
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts mdevregd (not the bus) refused the call: the bus let it through
/// and the daemon answered with its own AccessDenied, naming polkit as
/// missing (there is no polkitd on this bus).
fn assert_denied_by_daemon(output: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains(DAEMON_DENIAL)
            && stderr.contains("polkit is missing")
            && !stderr.contains("Rejected send message"),
        "{what} by uid 65534 should reach mdevregd and be refused there: {}",
        text(output)
    );
}

fn name_has_owner(address: &str) -> bool {
    let output = gdbus_call(
        address,
        false,
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.NameHasOwner",
        &[BUS_NAME],
    );
    String::from_utf8_lossy(&output.stdout).contains("true")
}

/// Root (to drop to uid 65534) and the tools.
fn prerequisites_present(test: &str) -> bool {
    prereq::prerequisites(test, &["dbus-daemon", "gdbus", "setpriv"])
}

#[test]
fn policy_lets_root_own_and_mutate_and_everyone_read() {
    if !prerequisites_present("policy_lets_root_own_and_mutate_and_everyone_read") {
        return;
    }
    let bus = DbusDaemon::start_system_like(&[shipped_policy()]);
    let address = bus.address().to_owned();

    // Only root may own the name.
    let claim = gdbus_call(
        &address,
        true,
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.RequestName",
        &[BUS_NAME, "0"],
    );
    assert!(
        !claim.status.success() && String::from_utf8_lossy(&claim.stderr).contains(BUS_DENIAL),
        "uid 65534 must not own {BUS_NAME}: {}",
        text(&claim)
    );

    let work = tempfile::tempdir().expect("work dir");
    let mut daemon = Daemon::start(&address, work.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !name_has_owner(&address) {
        if let Some(status) = daemon.exited() {
            panic!(
                "mdevregd exited ({status}) before owning {BUS_NAME}; log:\n{}",
                daemon.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "mdevregd did not own {BUS_NAME}; log:\n{}",
            daemon.log()
        );
        sleep(Duration::from_millis(50));
    }

    // Root registers a parent (persistent: gdbus leaves the bus right away).
    let registered = call_ok(
        &address,
        false,
        ROOT_PATH,
        &format!("{IFACE}.RegisterParent"),
        &[
            PARENT,
            "{'Lifetime': <'persistent'>}",
            "[{'Id': <'policy-1'>, 'DeviceApi': <'vfio-pci'>, 'AvailableInstances': <uint32 2>}]",
        ],
    );
    assert!(
        registered.contains(PARENT_PATH),
        "RegisterParent returned {registered}"
    );

    // Everyone reads.
    let managed = call_ok(
        &address,
        true,
        ROOT_PATH,
        "org.freedesktop.DBus.ObjectManager.GetManagedObjects",
        &[],
    );
    assert!(
        managed.contains(PARENT_PATH) && managed.contains("org.mdevreg.Parent1"),
        "GetManagedObjects as uid 65534: {managed}"
    );
    let parents = call_ok(
        &address,
        true,
        ROOT_PATH,
        &format!("{IFACE}.ListParents"),
        &[],
    );
    assert!(parents.contains(PARENT_PATH), "ListParents: {parents}");
    let parent = call_ok(
        &address,
        true,
        ROOT_PATH,
        &format!("{IFACE}.GetParent"),
        &[PARENT],
    );
    assert!(parent.contains(PARENT_PATH), "GetParent: {parent}");
    let name = call_ok(
        &address,
        true,
        PARENT_PATH,
        "org.freedesktop.DBus.Properties.Get",
        &["org.mdevreg.Parent1", "Name"],
    );
    assert!(name.contains(PARENT), "Parent1.Name: {name}");
    call_ok(
        &address,
        true,
        ROOT_PATH,
        "org.freedesktop.DBus.Properties.GetAll",
        &[IFACE],
    );
    let xml = call_ok(
        &address,
        true,
        ROOT_PATH,
        "org.freedesktop.DBus.Introspectable.Introspect",
        &[],
    );
    assert!(xml.contains(IFACE), "Introspect: {xml}");
    call_ok(
        &address,
        true,
        ROOT_PATH,
        "org.freedesktop.DBus.Peer.Ping",
        &[],
    );
    // Every read-only method of Registry1, as the interface tables list it.
    let types = call_ok(
        &address,
        true,
        ROOT_PATH,
        &format!("{IFACE}.DumpTypes"),
        &[""],
    );
    assert!(types.contains("policy-1"), "DumpTypes: {types}");
    for method in ["DumpTypesByFileDescriptor", "DumpParentsByFileDescriptor"] {
        let reply = call_ok(
            &address,
            true,
            ROOT_PATH,
            &format!("{IFACE}.{method}"),
            &[""],
        );
        assert!(reply.contains("handle"), "{method}: {reply}");
    }

    // The bus lets uid 65534's mutating calls through (as udisks2's policy
    // does); mdevregd refuses them: not root, and no polkit on this bus.
    let register = gdbus_call(
        &address,
        true,
        BUS_NAME,
        ROOT_PATH,
        &format!("{IFACE}.RegisterParent"),
        &[
            "policy1",
            "@a{sv} {}",
            "[{'Id': <'policy-1'>, 'DeviceApi': <'vfio-pci'>}]",
        ],
    );
    assert_denied_by_daemon(&register, "RegisterParent");
    let unregister = gdbus_call(
        &address,
        true,
        BUS_NAME,
        ROOT_PATH,
        &format!("{IFACE}.UnregisterParent"),
        &[PARENT],
    );
    assert_denied_by_daemon(&unregister, "UnregisterParent");
    let rescan = gdbus_call(
        &address,
        true,
        BUS_NAME,
        ROOT_PATH,
        &format!("{IFACE}.Rescan"),
        &[],
    );
    assert_denied_by_daemon(&rescan, "Rescan");
    let after = call_ok(
        &address,
        true,
        ROOT_PATH,
        &format!("{IFACE}.ListParents"),
        &[],
    );
    assert!(
        after.contains(PARENT_PATH) && !after.contains("policy1"),
        "{after}"
    );

    // Root's mutating calls pass.
    call_ok(&address, false, ROOT_PATH, &format!("{IFACE}.Rescan"), &[]);
    call_ok(
        &address,
        false,
        ROOT_PATH,
        &format!("{IFACE}.UnregisterParent"),
        &[PARENT],
    );
    let empty = call_ok(
        &address,
        true,
        ROOT_PATH,
        &format!("{IFACE}.ListParents"),
        &[],
    );
    assert!(
        !empty.contains(PARENT_PATH),
        "after UnregisterParent: {empty}"
    );
    assert!(
        daemon.exited().is_none(),
        "mdevregd died; log:\n{}",
        daemon.log()
    );
}

/// `mdevreg ARGS` on `address`, as root or as uid 65534.
fn cli(address: &str, as_nobody: bool, args: &[&str]) -> Command {
    let mut command = common::command_as(env!("CARGO_BIN_EXE_mdevreg"), as_nobody);
    command
        .args(["--bus", address])
        .args(args)
        .env_remove("MDEVREG_BUS")
        .stdin(Stdio::null());
    command
}

/// Acceptance (issue 14): uid 65534 runs every read verb of the CLI on a
/// system-like bus with the shipped policy, and each one succeeds. The
/// client has no fallbacks, so success means the fast path (the
/// `Dump*ByFileDescriptor` methods) was allowed.
#[test]
fn unprivileged_cli_reads_everything() {
    const TEST: &str = "unprivileged_cli_reads_everything";
    if !prerequisites_present(TEST) {
        return;
    }
    let bus = DbusDaemon::start_system_like(&[shipped_policy()]);
    let address = bus.address().to_owned();
    let work = tempfile::tempdir().expect("work dir");
    let mut daemon = Daemon::start(&address, work.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !name_has_owner(&address) {
        assert!(
            daemon.exited().is_none() && Instant::now() < deadline,
            "mdevregd did not own {BUS_NAME}; log:\n{}",
            daemon.log()
        );
        sleep(Duration::from_millis(50));
    }
    let run = |as_nobody: bool, args: &[&str]| {
        let output = cli(&address, as_nobody, args)
            .output()
            .expect("run mdevreg");
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "mdevreg {args:?} as {}: {}",
            if as_nobody { "uid 65534" } else { "root" },
            text(&output)
        );
        String::from_utf8(output.stdout).expect("UTF-8")
    };
    run(
        false,
        &[
            "register",
            PARENT,
            "--persistent",
            "--type",
            "policy-1,vfio-pci,2,Policy",
        ],
    );

    let reads: &[&[&str]] = &[
        &["types"],
        &["types", "--json"],
        &["types", "--parent", PARENT, "--json"],
        &["list"],
        &["list", "--json"],
        &["show", PARENT],
        &["show", PARENT, "--json"],
        &["stats"],
    ];
    for args in reads {
        let as_nobody = run(true, args);
        assert!(
            as_nobody.contains(PARENT) || args[0] == "stats",
            "mdevreg {args:?}: {as_nobody}"
        );
        // The same answer as root gets.
        if args[0] != "stats" {
            assert_eq!(as_nobody, run(false, args), "mdevreg {args:?}");
        }
    }

    let mut monitor = cli(&address, true, &["monitor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn monitor");
    let lines = LineReader::new(monitor.stdout.take().expect("stdout"));
    // Subscribed once a probe registration by root shows up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        run(
            false,
            &[
                "register",
                "probe",
                "--persistent",
                "--type",
                "p-1,vfio-pci,1",
            ],
        );
        run(false, &["unregister", "probe"]);
        if let Some(line) = lines.next_within(Duration::from_millis(500)) {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "monitor as uid 65534 saw nothing"
        );
    };
    assert!(line.contains("name=probe"), "{line}");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(monitor.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = monitor.wait().expect("wait monitor");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut monitor.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(
        status.success() && stderr.is_empty(),
        "monitor: {status} {stderr}"
    );
    assert!(
        daemon.exited().is_none(),
        "mdevregd died; log:\n{}",
        daemon.log()
    );
}

/// Control: on the same system-like bus without our policy file, not even
/// root's mdevregd gets the name, so the policy file is what grants it.
#[test]
fn without_the_policy_root_cannot_own_the_name() {
    if !prerequisites_present("without_the_policy_root_cannot_own_the_name") {
        return;
    }
    let bus = DbusDaemon::start_system_like(&[]);
    let work = tempfile::tempdir().expect("work dir");
    let mut daemon = Daemon::start(bus.address(), work.path());
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && daemon.exited().is_none() {
        assert!(
            !name_has_owner(bus.address()),
            "mdevregd owned {BUS_NAME} without the policy file; log:\n{}",
            daemon.log()
        );
        sleep(Duration::from_millis(100));
    }
    assert!(!name_has_owner(bus.address()));
}
