//! The README quick start, run as an unprivileged user (uid/gid 65534
//! through `setpriv`, a clean environment with its own `HOME` and
//! `XDG_RUNTIME_DIR`): `mdevregd --bus embedded --sysfs-root
//! examples/sysfs/mixed` with no state flags, then `mdevreg list`, `types
//! --json`, `monitor` and `register` against the printed address. The
//! daemon keeps its state under `$XDG_RUNTIME_DIR/mdevreg` and
//! `~/.local/state/mdevreg`, its own uid may register on its embedded bus,
//! and another uid cannot reach that bus.
//!
//! Needs root (to drop to uid 65534) and `setpriv`.

mod common;

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::lines::LineReader;
use common::prereq::{find_in_path, prerequisites};
use common::NOBODY;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const DAEMON: &str = env!("CARGO_BIN_EXE_mdevregd");
const CLI: &str = env!("CARGO_BIN_EXE_mdevreg");
/// Wide bounds: the machine may be loaded.
const PATIENCE: Duration = Duration::from_secs(30);

/// A home directory for uid `NOBODY` with a private runtime directory.
struct UserEnv {
    _dir: tempfile::TempDir,
    home: PathBuf,
    runtime: PathBuf,
}

impl UserEnv {
    fn new() -> UserEnv {
        let dir = common::prereq::open_tempdir("mdevreg-quick-start-");
        let home = dir.path().join("home");
        let runtime = dir.path().join("run");
        for path in [&home, &runtime] {
            fs::create_dir(path).expect("create directory");
            chown(path, Some(NOBODY), Some(NOBODY)).expect("chown to 65534");
            fs::set_permissions(path, fs::Permissions::from_mode(0o700)).expect("chmod 0700");
        }
        UserEnv {
            _dir: dir,
            home,
            runtime,
        }
    }

    /// `program ARGS` as uid/gid 65534 with only this environment.
    fn command(&self, program: &str, uid: u32) -> Command {
        let mut command = Command::new(find_in_path("setpriv").expect("setpriv"));
        command
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(program)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &self.home)
            .env("XDG_RUNTIME_DIR", &self.runtime)
            .stdin(Stdio::null());
        command
    }
}

/// `mdevregd --bus embedded --sysfs-root TREE` as the user: the process,
/// the address it printed, its stderr lines.
fn start_daemon(user: &UserEnv, tree: &Path) -> (Killed, String, LineReader) {
    let mut daemon = user.command(DAEMON, NOBODY);
    daemon
        .args(["--bus", "embedded", "--sysfs-root"])
        .arg(tree)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut daemon = Killed(daemon.spawn().expect("spawn mdevregd"));
    let stdout = LineReader::new(daemon.0.stdout.take().expect("stdout"));
    let stderr = LineReader::new(daemon.0.stderr.take().expect("stderr"));
    let address = stdout.expect_within(PATIENCE, "mdevregd prints its bus address");
    assert!(address.starts_with("unix:"), "{address}");
    (daemon, address, stderr)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn interrupt(child: &mut Child) -> Option<i32> {
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
    kill(pid, Signal::SIGINT).expect("SIGINT");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        assert!(Instant::now() < deadline, "{} ignored SIGINT", child.id());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ok_stdout(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8")
}

#[test]
fn quick_start_as_an_unprivileged_user() {
    const TEST: &str = "quick_start_as_an_unprivileged_user";
    if !prerequisites(TEST, &["setpriv"]) {
        return;
    }
    let user = UserEnv::new();
    let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sysfs/mixed");
    let (mut daemon, address, stderr) = start_daemon(&user, &tree);

    let cli = |args: &[&str]| {
        user.command(CLI, NOBODY)
            .env("MDEVREG_BUS", &address)
            .args(args)
            .output()
            .expect("run mdevreg")
    };
    // The address comes once the registry is served: the first call works.
    let list = ok_stdout(&cli(&["list"]), "list right after the address");
    assert!(
        list.contains("0000:00:02.0") && list.contains("mtty"),
        "{list}"
    );
    let types = ok_stdout(&cli(&["types", "--json"]), "types --json");
    let types: serde_json::Value = serde_json::from_str(&types).expect("JSON");
    assert!(types[0].get("mtty").is_some(), "{types}");

    let mut monitor = user.command(CLI, NOBODY);
    monitor
        .env("MDEVREG_BUS", &address)
        .arg("monitor")
        .stdout(Stdio::piped());
    let mut monitor = Killed(monitor.spawn().expect("spawn monitor"));
    let events = LineReader::new(monitor.0.stdout.take().expect("stdout"));
    // Subscribed once a probe registration shows (own uid may register).
    let deadline = Instant::now() + PATIENCE;
    loop {
        ok_stdout(
            &cli(&[
                "register",
                "probe",
                "--persistent",
                "--type",
                "p-1,vfio-pci,1",
            ]),
            "register --persistent as the daemon's own uid",
        );
        ok_stdout(&cli(&["unregister", "probe"]), "unregister");
        let mut seen = false;
        while let Some(line) = events.next_within(Duration::from_millis(500)) {
            assert!(line.contains("probe"), "unexpected event {line:?}");
            seen = true;
        }
        if seen {
            break;
        }
        assert!(Instant::now() < deadline, "monitor never saw the probe");
    }

    // The README's register, held while it runs.
    let mut register = user.command(CLI, NOBODY);
    register
        .env("MDEVREG_BUS", &address)
        .args(["register", "demo", "--type", "demo-1,vfio-pci,4,Demo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut register = Killed(register.spawn().expect("spawn register"));
    let held = LineReader::new(register.0.stdout.take().expect("stdout"));
    assert_eq!(
        held.expect_within(PATIENCE, "register prints the object path"),
        "/org/mdevreg/Registry1/parent/demo"
    );
    let event = events.expect_within(PATIENCE, "monitor shows demo registered");
    assert!(
        event.starts_with("REGISTERED") && event.contains("name=demo"),
        "{event}"
    );
    assert!(ok_stdout(&cli(&["list"]), "list").contains("demo"));
    let state = user.runtime.join("mdevreg/owner-registrations.json");
    let saved = fs::read_to_string(&state).expect("owner-bound state in $XDG_RUNTIME_DIR/mdevreg");
    assert!(saved.contains("\"demo\""), "{saved}");

    // The bus socket lies in the user's private runtime directory: another
    // uid cannot even connect (the daemon's trust in its own uid on this bus
    // is safe).
    let other = user
        .command(CLI, NOBODY - 1)
        .env("MDEVREG_BUS", &address)
        .args(["register", "x", "--persistent", "--type", "x-1,vfio-pci,1"])
        .output()
        .expect("run mdevreg");
    assert_eq!(other.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );

    assert_eq!(interrupt(&mut register.0), Some(0));
    let event = events.expect_within(PATIENCE, "monitor shows demo unregistered");
    assert!(
        event.starts_with("UNREGISTERED") && event.contains("name=demo"),
        "{event}"
    );
    assert_eq!(interrupt(&mut monitor.0), Some(0));
    assert_eq!(interrupt(&mut daemon.0), Some(0));
    let mut log = Vec::new();
    while let Some(line) = stderr.next_within(Duration::from_secs(1)) {
        log.push(line);
    }
    let log = log.join("\n");
    assert!(!log.contains("Permission denied"), "{log}");
    // Without the privilege to emit uevents, said once, not at each change.
    assert!(!log.contains("cannot emit"), "{log}");
    assert!(
        user.home
            .join(".local/state/mdevreg/persistent-registrations.json")
            .is_file(),
        "persistent state under ~/.local/state/mdevreg; log:\n{log}"
    );

    // A daemon stopped while an owner-bound registration was held: a new
    // embedded bus reuses unique names, so the old registration must not be
    // restored (its "owner left" would hit the new holder of the name).
    let held = |address: &str| {
        let mut register = user.command(CLI, NOBODY);
        register
            .env("MDEVREG_BUS", address)
            .args(["register", "demo", "--type", "demo-1,vfio-pci,4,Demo"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut register = Killed(register.spawn().expect("spawn register"));
        let out = LineReader::new(register.0.stdout.take().expect("stdout"));
        out.expect_within(PATIENCE, "register prints the object path");
        register
    };
    let (mut daemon, address, _stderr) = start_daemon(&user, &tree);
    let _first = held(&address);
    assert_eq!(interrupt(&mut daemon.0), Some(0));
    let (mut daemon, address, stderr_again) = start_daemon(&user, &tree);
    let _second = held(&address);
    for _ in 0..3 {
        let show = user
            .command(CLI, NOBODY)
            .env("MDEVREG_BUS", &address)
            .args(["show", "demo"])
            .output()
            .expect("run mdevreg");
        ok_stdout(&show, "show demo while register holds it");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(interrupt(&mut daemon.0), Some(0));
    let mut log = Vec::new();
    while let Some(line) = stderr_again.next_within(Duration::from_secs(1)) {
        log.push(line);
    }
    let log = log.join("\n");
    assert!(
        log.contains("owner-bound registrations of the previous one dropped"),
        "{log}"
    );
}
