//! Acceptance tests of the D-Bus face of `mdevregd`, with real components
//! only: a private dbus-daemon, the real daemon binary on a fake sysfs tree,
//! and clients that are not ours (`busctl`, `gdbus`, run as root or as uid
//! 65534 through `setpriv`) beside the zbus proxies generated from the
//! server definitions.
//!
//! Each test runs in its own network namespace (`common::prereq::run`); without
//! root or a tool it is skipped, or fails under `CI`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::daemon::Setup;
use common::prereq::{open_tempdir, run};
use common::registry_client::{connect, BUS_NAME, ROOT_PATH};
use common::sysfs_fixture::{FakeSysfs, ParentSpec};
use futures_util::StreamExt;
use mdevreg::dbus::{Error, MdevType1Proxy, Parent1Proxy, Registry1Proxy};
use zbus::proxy::CacheProperties;
use zbus::OwnedVariant;

const VGPU_PATH: &str = "/org/mdevreg/Registry1/parent/vgpu0";
/// `t-1` escaped as a path label.
const VGPU_TYPE_PATH: &str = "/org/mdevreg/Registry1/parent/vgpu0/type/t_2d1";
const MTTY_PATH: &str = "/org/mdevreg/Registry1/parent/mtty";

/// `gdbus monitor` on the daemon's name, its lines collected by a thread.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Monitor {
    /// Starts `gdbus monitor --dest org.mdevreg.Registry1` and waits until
    /// it follows the name.
    fn start(address: &str) -> Monitor {
        let mut child = Command::new("gdbus")
            .args(["monitor", "--address", address, "--dest", BUS_NAME])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gdbus monitor");
        let stdout = child.stdout.take().expect("gdbus stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut monitor = Monitor {
            child,
            lines,
            seen: Vec::new(),
        };
        monitor.wait_for(
            |line| line.contains("is owned by"),
            "gdbus monitor to start",
        );
        monitor
    }

    /// Reads lines until one satisfies `want`; returns its index in `seen`.
    fn wait_for(&mut self, want: impl Fn(&str) -> bool, what: &str) -> usize {
        if let Some(index) = self.seen.iter().position(|line| want(line)) {
            return index;
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line);
                    if want(self.seen.last().expect("just pushed")) {
                        return self.seen.len() - 1;
                    }
                }
                Err(_) => panic!(
                    "no monitor line for {what} within 15 s; lines:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command (optionally as uid/gid 65534) and returns its output.
fn command(program: &str, args: &[&str], as_nobody: bool) -> Output {
    common::command_as(program, as_nobody)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("run {program}: {err}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `gdbus call` of a Registry1 method on the root object.
fn gdbus_call(address: &str, method: &str, args: &[&str], as_nobody: bool) -> Output {
    let member = format!("org.mdevreg.Registry1.{method}");
    let mut all = vec![
        "call",
        "--address",
        address,
        "--dest",
        BUS_NAME,
        "--object-path",
        ROOT_PATH,
        "--method",
        &member,
    ];
    all.extend_from_slice(args);
    command("gdbus", &all, as_nobody)
}

/// `busctl get-property` of one property, its value as busctl prints it.
fn busctl_property(address: &str, path: &str, interface: &str, property: &str) -> String {
    let bus = format!("--address={address}");
    let output = command(
        "busctl",
        &[&bus, "get-property", BUS_NAME, path, interface, property],
        false,
    );
    assert!(
        output.status.success(),
        "busctl get-property {path} {property}: {}",
        text(&output.stderr)
    );
    text(&output.stdout).trim().to_owned()
}

/// `busctl call RegisterParent` of `vgpu0` with one type `t-1`; `lifetime`
/// adds the option.
fn busctl_register(address: &str, lifetime: Option<&str>) -> Output {
    let bus = format!("--address={address}");
    let mut args = vec![
        bus.as_str(),
        "call",
        BUS_NAME,
        ROOT_PATH,
        "org.mdevreg.Registry1",
        "RegisterParent",
        "sa{sv}aa{sv}",
        "vgpu0",
    ];
    match lifetime {
        Some(lifetime) => args.extend_from_slice(&["1", "Lifetime", "s", lifetime]),
        None => args.push("0"),
    }
    args.extend_from_slice(&[
        "1",
        "4",
        "Id",
        "s",
        "t-1",
        "DeviceApi",
        "s",
        "vfio-pci",
        "AvailableInstances",
        "u",
        "3",
        "Name",
        "s",
        "tiny",
    ]);
    command("busctl", &args, false)
}

fn assert_contains(haystack: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            haystack.contains(needle),
            "{needle:?} missing in:\n{haystack}"
        );
    }
}

/// busctl registers an owner-bound parent; gdbus monitor sees the objects
/// and their properties arrive, then ParentRegistered; busctl's connection
/// closes on exit and ParentUnregistered plus InterfacesRemoved follow.
#[test]
fn owner_bound_registration_by_busctl_comes_and_goes() {
    run(
        "owner_bound_registration_by_busctl_comes_and_goes",
        &["busctl", "gdbus"],
        || async {
            let tree = FakeSysfs::new();
            tree.add_parent(&ParentSpec::mtty());
            let setup = Setup::start(tree.root(), |options| options.emit = "none").await;
            let address = setup.bus.address().to_owned();
            let mut monitor = Monitor::start(&address);

            let output = busctl_register(&address, None);
            assert!(output.status.success(), "busctl: {}", text(&output.stderr));
            assert_eq!(text(&output.stdout).trim(), format!("o \"{VGPU_PATH}\""));

            let parent_added = monitor.wait_for(
                |l| {
                    l.contains("InterfacesAdded")
                        && l.contains(&format!("(objectpath '{VGPU_PATH}',"))
                },
                "InterfacesAdded of the parent",
            );
            assert_contains(
                &monitor.seen[parent_added],
                &[
                    "'org.mdevreg.Parent1'",
                    "'Name': <'vgpu0'>",
                    "'DevPath': <'/devices/virtual/mdevreg/vgpu0'>",
                    "'Subsystem': <'mdevreg'>",
                    "'Driver': <''>",
                    "'Source': <'userspace'>",
                    "'Lifetime': <'owner'>",
                    "'Owner': <':",
                    &format!("'Types': <[objectpath '{VGPU_TYPE_PATH}']>"),
                ],
            );
            let type_added = monitor.wait_for(
                |l| {
                    l.contains("InterfacesAdded")
                        && l.contains(&format!("(objectpath '{VGPU_TYPE_PATH}',"))
                },
                "InterfacesAdded of the type",
            );
            assert_contains(
                &monitor.seen[type_added],
                &[
                    "'org.mdevreg.MdevType1'",
                    "'Id': <'t-1'>",
                    "'Name': <'tiny'>",
                    "'DeviceApi': <'vfio-pci'>",
                    "'AvailableInstances': <uint32 3>",
                    "'Devices': <@as []>",
                    &format!("'Parent': <objectpath '{VGPU_PATH}'>"),
                ],
            );
            let registered = monitor.wait_for(
                |l| l.contains("org.mdevreg.Registry1.ParentRegistered"),
                "ParentRegistered",
            );
            assert_contains(
                &monitor.seen[registered],
                &[&format!(
                    "(objectpath '{VGPU_PATH}', 'vgpu0', 'userspace', uint64 "
                )],
            );
            assert!(parent_added < registered && type_added < registered);

            // busctl has exited: its connection is gone, and so is the parent.
            let unregistered = monitor.wait_for(
                |l| l.contains("org.mdevreg.Registry1.ParentUnregistered"),
                "ParentUnregistered",
            );
            assert_contains(
                &monitor.seen[unregistered],
                &[&format!(
                    "(objectpath '{VGPU_PATH}', 'vgpu0', 'userspace', uint64 "
                )],
            );
            let parent_removed = monitor.wait_for(
                |l| {
                    l.contains("InterfacesRemoved")
                        && l.contains(&format!("'{VGPU_PATH}', ['org.mdevreg.Parent1']"))
                },
                "InterfacesRemoved of the parent",
            );
            let type_removed = monitor.wait_for(
                |l| {
                    l.contains("InterfacesRemoved")
                        && l.contains(&format!("'{VGPU_TYPE_PATH}', ['org.mdevreg.MdevType1']"))
                },
                "InterfacesRemoved of the type",
            );
            assert!(registered < parent_removed && registered < type_removed);
            let seqnum = |line: &str| -> u64 {
                let tail = line.rsplit("uint64 ").next().expect("uint64");
                tail.trim_end_matches(')').parse().expect("seqnum")
            };
            assert!(seqnum(&monitor.seen[unregistered]) > seqnum(&monitor.seen[registered]));

            let output = gdbus_call(&address, "ListParents", &[], false);
            assert_eq!(
                text(&output.stdout).trim(),
                format!("([objectpath '{MTTY_PATH}'],)")
            );
        },
    );
}

/// A persistent registration outlives busctl; every property of Parent1
/// and MdevType1 reads back with busctl, kernel parents show their source.
#[test]
fn persistent_registration_properties_read_with_busctl() {
    run(
        "persistent_registration_properties_read_with_busctl",
        &["busctl", "gdbus"],
        || async {
            let tree = FakeSysfs::new();
            tree.add_parent(&ParentSpec::mtty());
            let setup = Setup::start(tree.root(), |options| options.emit = "none").await;
            let address = setup.bus.address().to_owned();

            let output = busctl_register(&address, Some("persistent"));
            assert!(output.status.success(), "busctl: {}", text(&output.stderr));

            let parent =
                |name: &str| busctl_property(&address, VGPU_PATH, "org.mdevreg.Parent1", name);
            assert_eq!(parent("Name"), "s \"vgpu0\"");
            assert_eq!(parent("DevPath"), "s \"/devices/virtual/mdevreg/vgpu0\"");
            assert_eq!(parent("Subsystem"), "s \"mdevreg\"");
            assert_eq!(parent("Driver"), "s \"\"");
            assert_eq!(parent("Source"), "s \"userspace\"");
            assert_eq!(parent("Lifetime"), "s \"persistent\"");
            assert_eq!(parent("Types"), format!("ao 1 \"{VGPU_TYPE_PATH}\""));
            // Event 1 registered mtty at startup, event 2 is this one.
            assert_eq!(parent("RegisteredSeqNum"), "t 2");
            // busctl has left: a persistent parent stays, without an owner.
            let deadline = Instant::now() + Duration::from_secs(10);
            while parent("Owner") != "s \"\"" {
                assert!(Instant::now() < deadline, "Owner still {}", parent("Owner"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }

            let mdev_type = |name: &str| {
                busctl_property(&address, VGPU_TYPE_PATH, "org.mdevreg.MdevType1", name)
            };
            assert_eq!(mdev_type("Id"), "s \"t-1\"");
            assert_eq!(mdev_type("Name"), "s \"tiny\"");
            assert_eq!(mdev_type("Description"), "s \"\"");
            assert_eq!(mdev_type("DeviceApi"), "s \"vfio-pci\"");
            assert_eq!(mdev_type("AvailableInstances"), "u 3");
            assert_eq!(mdev_type("Devices"), "as 0");
            assert_eq!(mdev_type("Parent"), format!("o \"{VGPU_PATH}\""));

            let mtty =
                |name: &str| busctl_property(&address, MTTY_PATH, "org.mdevreg.Parent1", name);
            assert_eq!(mtty("Source"), "s \"kernel\"");
            assert_eq!(mtty("Lifetime"), "s \"kernel\"");
            assert_eq!(mtty("Owner"), "s \"\"");
            assert_eq!(mtty("DevPath"), "s \"/devices/virtual/mtty/mtty\"");
            assert_eq!(mtty("Subsystem"), "s \"mtty\"");

            let parents = busctl_property(&address, ROOT_PATH, "org.mdevreg.Registry1", "Parents");
            assert_eq!(parents, format!("ao 2 \"{MTTY_PATH}\" \"{VGPU_PATH}\""));
            let version = busctl_property(&address, ROOT_PATH, "org.mdevreg.Registry1", "Version");
            assert_eq!(version, format!("s \"{}\"", env!("CARGO_PKG_VERSION")));

            let bus = format!("--address={address}");
            let tree_output = command("busctl", &[&bus, "tree", BUS_NAME], false);
            assert_contains(
                &text(&tree_output.stdout),
                &[VGPU_PATH, VGPU_TYPE_PATH, MTTY_PATH, "/type/mtty_2d1"],
            );
        },
    );
}

/// uid 65534 gets AccessDenied on every mutating method and can still
/// read; root is accepted with the same arguments.
#[test]
fn unprivileged_caller_is_denied_but_can_read() {
    run(
        "unprivileged_caller_is_denied_but_can_read",
        &["gdbus", "setpriv"],
        || async {
            let tree = FakeSysfs::new();
            tree.add_parent(&ParentSpec::mtty());
            let setup = Setup::start(tree.root(), |options| options.emit = "none").await;
            let address = setup.bus.address().to_owned();
            let denied = "org.mdevreg.Registry1.Error.AccessDenied";
            let types = r#"[{"Id": <"t-1">, "DeviceApi": <"vfio-pci">}]"#;
            let options = r#"{"Lifetime": <"persistent">}"#;

            let calls: [(&str, Vec<&str>); 4] = [
                ("RegisterParent", vec!["vgpu0", options, types]),
                ("UnregisterParent", vec!["mtty"]),
                ("UnregisterParent", vec!["no-such-parent"]),
                ("Rescan", vec![]),
            ];
            for (method, args) in &calls {
                let output = gdbus_call(&address, method, args, true);
                assert!(!output.status.success(), "{method} as nobody succeeded");
                assert_contains(&text(&output.stderr), &[denied, "uid 65534"]);
            }

            let output = gdbus_call(&address, "ListParents", &[], true);
            assert!(output.status.success(), "{}", text(&output.stderr));
            assert_eq!(
                text(&output.stdout).trim(),
                format!("([objectpath '{MTTY_PATH}'],)")
            );
            let output = gdbus_call(&address, "GetParent", &["mtty"], true);
            assert_eq!(
                text(&output.stdout).trim(),
                format!("(objectpath '{MTTY_PATH}',)")
            );
            let output = command(
                "gdbus",
                &[
                    "call",
                    "--address",
                    &address,
                    "--dest",
                    BUS_NAME,
                    "--object-path",
                    ROOT_PATH,
                    "--method",
                    "org.freedesktop.DBus.ObjectManager.GetManagedObjects",
                ],
                true,
            );
            assert!(output.status.success(), "{}", text(&output.stderr));
            assert_contains(
                &text(&output.stdout),
                &[MTTY_PATH, "'org.mdevreg.MdevType1'"],
            );

            // Nothing changed, and root succeeds with the very same call.
            let output = gdbus_call(&address, "ListParents", &[], false);
            assert_eq!(
                text(&output.stdout).trim(),
                format!("([objectpath '{MTTY_PATH}'],)")
            );
            let output = gdbus_call(
                &address,
                "RegisterParent",
                &["vgpu0", options, types],
                false,
            );
            assert!(output.status.success(), "{}", text(&output.stderr));
            let output = gdbus_call(&address, "Rescan", &[], false);
            assert!(output.status.success(), "{}", text(&output.stderr));
            let output = gdbus_call(&address, "ListParents", &[], false);
            assert_eq!(
                text(&output.stdout).trim(),
                format!("([objectpath '{MTTY_PATH}', '{VGPU_PATH}'],)")
            );
            assert!(
                setup.daemon.log().contains("denied: "),
                "no log line for a denial"
            );
        },
    );
}

fn string(value: &str) -> OwnedVariant {
    OwnedVariant::from(zbus::Str::from(value.to_owned()))
}

fn type_entry(id: &str) -> HashMap<String, OwnedVariant> {
    HashMap::from([
        ("Id".to_owned(), string(id)),
        ("DeviceApi".to_owned(), string("vfio-pci")),
        ("AvailableInstances".to_owned(), OwnedVariant::from(2u32)),
    ])
}

/// The generated proxies (what the CLI uses) get typed errors back, and
/// signals and properties through the generated methods.
#[test]
fn generated_proxies_see_typed_errors_and_signals() {
    run(
        "generated_proxies_see_typed_errors_and_signals",
        &[],
        || async {
            let tree = FakeSysfs::new();
            tree.add_parent(&ParentSpec::mtty());
            let setup = Setup::start(tree.root(), |options| options.emit = "none").await;
            let first = connect(setup.bus.address()).await;
            let second = connect(setup.bus.address()).await;
            let proxy = |connection| async move {
                Registry1Proxy::builder(connection)
                    .cache_properties(CacheProperties::No)
                    .build()
                    .await
                    .expect("Registry1 proxy")
            };
            let registry = proxy(&first).await;
            let other = proxy(&second).await;
            let mut registered = registry
                .receive_parent_registered()
                .await
                .expect("subscribe");

            let path = registry
                .register_parent("vgpu0", HashMap::new(), vec![type_entry("t-1")])
                .await
                .expect("register");
            assert_eq!(path.as_str(), VGPU_PATH);
            let signal = tokio::time::timeout(Duration::from_secs(10), registered.next())
                .await
                .expect("ParentRegistered in time")
                .expect("signal stream");
            let args = signal.args().expect("signal args");
            assert_eq!(args.parent().as_str(), VGPU_PATH);
            assert_eq!((*args.name(), *args.source()), ("vgpu0", "userspace"));
            assert_eq!(*args.seqnum(), registry.seq_num().await.expect("SeqNum"));

            let parent = Parent1Proxy::builder(&first)
                .path(VGPU_PATH)
                .cache_properties(CacheProperties::No)
                .build()
                .await
                .expect("Parent1 proxy");
            let owner = first.unique_name().expect("unique name").to_string();
            assert_eq!(parent.owner().await.expect("Owner"), owner);
            assert_eq!(parent.lifetime().await.expect("Lifetime"), "owner");
            let mdev_type = MdevType1Proxy::builder(&first)
                .path(VGPU_TYPE_PATH)
                .cache_properties(CacheProperties::No)
                .build()
                .await
                .expect("MdevType1 proxy");
            assert_eq!(
                mdev_type
                    .available_instances()
                    .await
                    .expect("AvailableInstances"),
                2
            );

            let taken = registry
                .register_parent("vgpu0", HashMap::new(), vec![type_entry("t-1")])
                .await;
            assert!(
                matches!(taken, Err(Error::AlreadyRegistered(_))),
                "{taken:?}"
            );
            let kernel_name = registry
                .register_parent("mtty", HashMap::new(), vec![type_entry("t-1")])
                .await;
            assert!(
                matches!(kernel_name, Err(Error::AlreadyRegistered(_))),
                "{kernel_name:?}"
            );
            let mut unknown_key = type_entry("t-1");
            unknown_key.insert("Colour".to_owned(), string("red"));
            let invalid = registry
                .register_parent("vgpu1", HashMap::new(), vec![unknown_key])
                .await;
            assert!(
                matches!(invalid, Err(Error::InvalidArgument(ref m)) if m.contains("Colour")),
                "{invalid:?}"
            );
            let duplicate = registry
                .register_parent(
                    "vgpu1",
                    HashMap::new(),
                    vec![type_entry("a"), type_entry("a")],
                )
                .await;
            assert!(
                matches!(duplicate, Err(Error::InvalidArgument(_))),
                "{duplicate:?}"
            );
            let long = "d".repeat(4097);
            let mut long_entry = type_entry("t-1");
            long_entry.insert("Description".to_owned(), string(&long));
            let limit = registry
                .register_parent("vgpu1", HashMap::new(), vec![long_entry])
                .await;
            assert!(matches!(limit, Err(Error::LimitExceeded(_))), "{limit:?}");

            let kernel = registry.unregister_parent("mtty").await;
            assert!(matches!(kernel, Err(Error::NotOwner(_))), "{kernel:?}");
            let not_mine = other.unregister_parent("vgpu0").await;
            assert!(matches!(not_mine, Err(Error::NotOwner(_))), "{not_mine:?}");
            let missing = registry.get_parent("vgpu9").await;
            assert!(
                matches!(missing, Err(Error::NotRegistered(_))),
                "{missing:?}"
            );
            let missing = registry.unregister_parent("vgpu9").await;
            assert!(
                matches!(missing, Err(Error::NotRegistered(_))),
                "{missing:?}"
            );

            registry
                .unregister_parent("vgpu0")
                .await
                .expect("unregister by its owner");
            let parents = registry.list_parents().await.expect("ListParents");
            assert_eq!(
                parents.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                [MTTY_PATH]
            );
            assert_eq!(other.parents().await.expect("Parents"), parents);
            let stats = registry.stats().await.expect("Stats");
            assert!(stats.contains_key("uevents_rejected"), "{stats:?}");
        },
    );
}

/// `--bus embedded=ADDRESS` prints the address on stdout, serves on it
/// with no other bus, and SIGTERM stops it with status 0 and saved state.
#[test]
fn embedded_bus_serves_and_stops_on_sigterm() {
    run(
        "embedded_bus_serves_and_stops_on_sigterm",
        &["busctl"],
        || async {
            let tree = FakeSysfs::new();
            tree.add_parent(&ParentSpec::mtty());
            let work = open_tempdir("mdevreg-embedded-");
            let socket = work.path().join("bus");
            let state = work.path().join("state");
            let mut child = Command::new(env!("CARGO_BIN_EXE_mdevregd"))
                .arg(format!("--bus=embedded=unix:path={}", socket.display()))
                .arg("--sysfs-root")
                .arg(tree.root())
                .arg("--state-dir")
                .arg(&state)
                .arg("--runtime-dir")
                .arg(&state)
                .args(["--emit", "none"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn mdevregd");
            let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
            let mut line = String::new();
            stdout.read_line(&mut line).expect("read the address");
            let address = line.trim().to_owned();
            assert!(
                address.starts_with(&format!("unix:path={}", socket.display())),
                "printed {line:?}"
            );

            let client = connect(&address).await;
            let dbus = zbus::fdo::DBusProxy::new(&client).await.expect("DBusProxy");
            let deadline = Instant::now() + Duration::from_secs(20);
            while !dbus
                .name_has_owner(BUS_NAME.try_into().expect("name"))
                .await
                .unwrap_or(false)
            {
                assert!(
                    Instant::now() < deadline,
                    "name not owned on the embedded bus"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let output = busctl_register(&address, Some("persistent"));
            assert!(output.status.success(), "busctl: {}", text(&output.stderr));
            let parents = busctl_property(&address, ROOT_PATH, "org.mdevreg.Registry1", "Parents");
            assert_eq!(parents, format!("ao 2 \"{MTTY_PATH}\" \"{VGPU_PATH}\""));

            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            let status = loop {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "mdevregd did not stop on SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert!(status.success(), "exit status {status}");
            let saved = std::fs::read_to_string(state.join("persistent-registrations.json"))
                .expect("persistent state file");
            assert!(saved.contains("\"vgpu0\""), "{saved}");
            assert!(!socket.exists(), "the embedded bus socket was left behind");
        },
    );
}
