//! Hostile registrations at the boundary between userspace parents and the
//! kernel's devices, against this machine's real `/sys` (`--sysfs-root
//! /sys`): a `DevPath` that is, lies below or above a real device (`lo`,
//! `loop0` when present, a PCI device when present) or a kernel `Subsystem`
//! (`net`, `block`, `pci`) is `InvalidArgument` for root, and uid 65534 with
//! polkit's blessing may not choose a location at all; the registry is
//! unchanged after each. And on a fake tree: a device appearing at a
//! registered parent's `DevPath` stops its next uevent (checked again
//! before each emission).
//!
//! Needs root, dbus-daemon, gdbus, setpriv, unshare and polkitd; skipped
//! without them, or fails when `CI` is set.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::bus::DbusDaemon;
use common::daemon::{wait_ready, Daemon, DaemonOptions, Setup};
use common::gdbus::{assert_error, assert_ok, register_as_nobody};
use common::polkit::{Polkitd, POLKITD, POLKIT_BUS_POLICY};
use common::prereq::missing_prerequisite;
use common::prereq::{open_tempdir, run};
use common::registry_client::{
    connect, error_name, good_type, register_raw, snapshot, stats, unregister, Dict,
};
use common::sysfs_fixture::FakeSysfs;
use zbus::Variant;

const INVALID: &str = "org.mdevreg.Registry1.Error.InvalidArgument";

/// Grants uid 65534 everything mdevreg asks about.
const RULES: &str = r#"
polkit.addRule(function(action, subject) {
    if (action.id.indexOf("org.mdevreg.") == 0 && subject.user == "nobody") {
        return polkit.Result.YES;
    }
    return polkit.Result.NOT_HANDLED;
});
"#;

/// Devpaths of real devices of this machine: `lo` always, `loop0` and the
/// first PCI device when there are.
fn real_devices() -> Vec<String> {
    let mut devices = vec!["/devices/virtual/net/lo".to_owned()];
    if Path::new("/sys/devices/virtual/block/loop0/uevent").exists() {
        devices.push("/devices/virtual/block/loop0".to_owned());
    }
    let pci = std::fs::read_dir("/sys/bus/pci/devices")
        .ok()
        .and_then(|mut entries| entries.next())
        .and_then(|entry| entry.ok())
        .and_then(|entry| std::fs::canonicalize(entry.path()).ok())
        .and_then(|path| {
            path.strip_prefix("/sys")
                .ok()
                .map(|rel| format!("/{}", rel.display()))
        });
    devices.extend(pci);
    devices
}

/// `(DevPath, Subsystem)` pairs that cross into the kernel's devices.
fn hostile_locations() -> Vec<(String, &'static str)> {
    let mut cases = Vec::new();
    for device in real_devices() {
        let subsystem = if device.contains("/block/") {
            "block"
        } else if device.contains("/net/") {
            "net"
        } else {
            "pci"
        };
        // The device itself, with its own subsystem and with ours.
        cases.push((device.clone(), subsystem));
        cases.push((device.clone(), "mdevreg"));
        // Below it, and above it.
        cases.push((format!("{device}/mdevreg0"), "mdevreg"));
        let above = device.rsplit_once('/').map(|(dir, _)| dir.to_owned());
        cases.extend(above.map(|dir| (dir, "mdevreg")));
    }
    // Kernel subsystems at the default place.
    for subsystem in ["net", "block", "pci", "platform"] {
        cases.push(("/devices/virtual/mdevreg/hostile0".to_owned(), subsystem));
    }
    cases
}

#[test]
fn kernel_devices_and_subsystems_are_refused_for_root_and_polkit_users() {
    const TEST: &str = "kernel_devices_and_subsystems_are_refused_for_root_and_polkit_users";
    if !Path::new(POLKITD).is_file() {
        missing_prerequisite::<()>(TEST, &format!("{POLKITD} (package polkitd) not installed"));
        return;
    }
    run(TEST, &["gdbus", "setpriv", "unshare"], || async {
        let policy =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dbus/org.mdevreg.Registry1.conf");
        let bus = DbusDaemon::start_system_like(&[policy, PathBuf::from(POLKIT_BUS_POLICY)]);
        let work = open_tempdir("mdevreg-boundary-");
        let state = work.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        // This machine's sysfs; nothing is emitted (--emit none).
        let mut options = DaemonOptions::new(Path::new("/sys"), &state);
        options.emit = "none";
        options.netlink = false;
        let mut daemon = Daemon::spawn(bus.address(), &options, work.path());
        let client = connect(bus.address()).await;
        wait_ready(&client, &mut daemon).await;
        let mut polkitd = Polkitd::start(bus.address(), Some(RULES));
        polkitd.wait_ready(&client).await;
        let before = snapshot(&client).await;

        let cases = hostile_locations();
        assert!(cases.len() >= 8, "{cases:?}");
        for (devpath, subsystem) in &cases {
            let what = format!("DevPath={devpath} Subsystem={subsystem}");
            let options: Dict = HashMap::from([
                ("DevPath", Variant::from(devpath.as_str())),
                ("Subsystem", Variant::from(*subsystem)),
            ]);
            let err = register_raw(&client, "hostile0", &options, &[good_type("h-1")])
                .await
                .expect_err(&format!("root registered {what}"));
            assert_eq!(error_name(&err), INVALID, "root, {what}: {err}");
            let gvariant = format!("{{'DevPath': <'{devpath}'>, 'Subsystem': <'{subsystem}'>}}");
            assert_error(
                &register_as_nobody(bus.address(), "hostile0", &gvariant),
                INVALID,
                "only root may choose",
                &format!("uid 65534 (polkit allows), {what}"),
            );
            assert_eq!(snapshot(&client).await, before, "after {what}");
        }
        // The messages say what is wrong.
        let options: Dict = HashMap::from([("DevPath", Variant::from("/devices/virtual/net/lo"))]);
        let err = register_raw(&client, "hostile0", &options, &[good_type("h-1")])
            .await
            .expect_err("lo");
        assert!(
            err.to_string().contains("is an existing sysfs device"),
            "{err}"
        );

        // The default place is fine for both, even under a device's name.
        register_raw(&client, "lo", &Dict::new(), &[good_type("h-1")])
            .await
            .expect("root registers lo at the default place");
        assert_ok(
            &register_as_nobody(bus.address(), "loop0", "{'Lifetime': <'persistent'>}"),
            "uid 65534 registers loop0 at the default place",
        );
        daemon.assert_alive("after the hostile registrations");
    });
}

#[test]
fn a_device_appearing_at_a_devpath_stops_its_uevents() {
    const TEST: &str = "a_device_appearing_at_a_devpath_stops_its_uevents";
    run(TEST, &[], || async {
        let tree = FakeSysfs::new();
        let setup = Setup::start(tree.root(), |options| {
            options.emit = "none";
            options.netlink = false;
        })
        .await;
        let options: Dict =
            HashMap::from([("DevPath", Variant::from("/devices/virtual/later/p0"))]);
        register_raw(&setup.client, "p0", &options, &[good_type("p-1")])
            .await
            .expect("register p0");
        assert_eq!(stats(&setup.client).await["uevents_refused_boundary"], 0);
        // A device appears where p0 claimed to be.
        tree.write_file("devices/virtual/later/p0/uevent", "");
        unregister(&setup.client, "p0")
            .await
            .expect("unregister p0");
        assert_eq!(stats(&setup.client).await["uevents_refused_boundary"], 1);
        assert!(
            setup
                .daemon
                .log()
                .contains("not emitting the unregistered uevent"),
            "{}",
            setup.daemon.log_tail()
        );
    });
}
