//! Persistent parents across a reboot: a persistent parent restored in a
//! new boot is a registration (one `MDEV_STATE=registered` uevent, one
//! `ParentRegistered`); a restart within the same boot emits nothing new.
//! A reboot is an emptied `--runtime-dir` (a tmpfs in real life). The
//! daemon injects its uevents into this test's private network namespace,
//! where a kernel-group listener counts them, and (second test) a real
//! systemd-udevd with the shipped rules processes them
//! (`common::udevd`, as in tests/udev_rules.rs).
//!
//! Needs root and dbus-daemon (and systemd-udevd, unshare, mount for the
//! second test); skipped without them, or fails when `CI` is
//! set.

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use common::bus::DbusDaemon;
use common::daemon::{wait_ready, Daemon, DaemonOptions};
use common::prereq::{open_tempdir, run};
use common::registry_client::{
    connect, good_type, lifetime, register_raw, registry_proxy, snapshot,
};
use common::registry_signals::{decode_signal, registry_signals, RegistrySignal};
use common::sysfs_fixture::FakeSysfs;
use common::udevd::{inner_dir, run_inner, Monitor, Udevd};
use futures_util::{FutureExt, StreamExt};
use mdevreg::netlink::{RecvOutcome, UeventEmitter, UeventListener};
use mdevreg::uevent::Uevent;
use zbus::Connection;

const PARENT: &str = "boot0";
const DEVPATH: &str = "/devices/virtual/mdevreg/boot0";

/// Uevents with `MDEV_STATE` for [`DEVPATH`] queued on `listener`, without
/// waiting for more.
fn drain_states(listener: &mut UeventListener) -> Vec<String> {
    let mut states = Vec::new();
    while let Some(outcome) = listener.try_recv().expect("uevent listener") {
        if let RecvOutcome::Event(event) = outcome {
            if event.devpath == DEVPATH {
                states.extend(event.get("MDEV_STATE").map(str::to_owned));
            }
        }
    }
    states
}

/// Waits for the next uevent with `MDEV_STATE` for [`DEVPATH`].
async fn next_state(listener: &mut UeventListener) -> String {
    let wait = async {
        loop {
            if let RecvOutcome::Event(event) = listener.recv().await.expect("uevent listener") {
                if event.devpath == DEVPATH {
                    if let Some(state) = event.get("MDEV_STATE") {
                        return state.to_owned();
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .expect("a uevent for the parent within 15 s")
}

/// One host across boots: a fake tree, a bus, a state directory that
/// survives reboots and a runtime directory that does not, and a client.
struct Boots {
    /// Held: the tree's directory lives as long as the host.
    _tree: FakeSysfs,
    bus: DbusDaemon,
    work: tempfile::TempDir,
    runtime: PathBuf,
    options: DaemonOptions,
    client: Connection,
}

impl Boots {
    /// A host whose daemon injects its uevents (no netlink listening).
    async fn new(prefix: &str) -> Boots {
        let tree = FakeSysfs::new();
        let bus = DbusDaemon::start_permissive();
        let work = open_tempdir(prefix);
        let state = work.path().join("state");
        let runtime = work.path().join("run");
        fs::create_dir_all(&state).expect("state dir");
        let mut options = DaemonOptions::new(tree.root(), &state);
        options.emit = "inject";
        options.netlink = false;
        options.runtime_dir = Some(runtime.clone());
        let client = connect(bus.address()).await;
        Boots {
            _tree: tree,
            bus,
            work,
            runtime,
            options,
            client,
        }
    }

    /// Starts the daemon, subscribed (by the client) before it owns its
    /// name, and returns it with the subscription.
    async fn start(&self) -> (Daemon, zbus::MessageStream) {
        let signals = registry_signals(&self.client).await;
        let mut daemon = Daemon::spawn(self.bus.address(), &self.options, self.work.path());
        wait_ready(&self.client, &mut daemon).await;
        (daemon, signals)
    }

    /// A reboot: the runtime directory is empty again.
    fn reboot(&self) {
        fs::remove_dir_all(&self.runtime).expect("empty the runtime dir");
        fs::create_dir_all(&self.runtime).expect("runtime dir");
    }
}

/// The registry signals for [`PARENT`] the start sent: a `Rescan` is
/// answered by the event loop, which starts after the start-up work, and
/// its reply comes after every signal of that work on this connection (as
/// every injected uevent does, sent before the signals).
async fn signals_of_the_start(
    client: &Connection,
    signals: &mut zbus::MessageStream,
) -> Vec<RegistrySignal> {
    registry_proxy(client).await.rescan().await.expect("Rescan");
    let mut seen = Vec::new();
    while let Some(Some(Ok(message))) = signals.next().now_or_never() {
        seen.extend(decode_signal(&message));
    }
    seen.retain(|signal| signal.name == PARENT);
    seen
}

#[test]
fn persistent_parents_are_announced_once_per_boot() {
    run(
        "persistent_parents_are_announced_once_per_boot",
        &[],
        || async {
            let host = Boots::new("mdevreg-reboot-").await;
            let mut listener = UeventListener::open().expect("uevent listener");

            // First boot: register persistent P, stop.
            let (mut daemon, _signals) = host.start().await;
            register_raw(
                &host.client,
                PARENT,
                &lifetime("persistent"),
                &[good_type("b-1")],
            )
            .await
            .expect("register boot0");
            assert_eq!(next_state(&mut listener).await, "registered");
            daemon.signal(nix::sys::signal::Signal::SIGTERM);
            daemon
                .wait_exit(Duration::from_secs(20))
                .expect("mdevregd stops on SIGTERM");
            assert!(host.runtime.join("boot-id").is_file(), "no boot marker");

            host.reboot();
            let (mut daemon, mut signals) = host.start().await;
            let seen = signals_of_the_start(&host.client, &mut signals).await;
            let members: Vec<&str> = seen.iter().map(|s| s.member.as_str()).collect();
            assert_eq!(members, ["ParentRegistered"], "{seen:?}");
            assert_eq!(seen[0].source, "userspace");
            assert_eq!(drain_states(&mut listener), ["registered"]);
            daemon.signal(nix::sys::signal::Signal::SIGTERM);
            daemon
                .wait_exit(Duration::from_secs(20))
                .expect("mdevregd stops on SIGTERM");

            // A restart in the same boot: nothing new.
            let before = {
                let (mut daemon, mut signals) = host.start().await;
                let seen = signals_of_the_start(&host.client, &mut signals).await;
                assert!(
                    seen.is_empty(),
                    "restart in the same boot announced {seen:?}"
                );
                let seqnum = snapshot(&host.client).await.seqnum;
                daemon.signal(nix::sys::signal::Signal::SIGTERM);
                daemon
                    .wait_exit(Duration::from_secs(20))
                    .expect("mdevregd stops on SIGTERM");
                seqnum
            };
            // The parent is still there, with the number of its announcement.
            let (_daemon, _signals) = host.start().await;
            let now = snapshot(&host.client).await;
            assert_eq!(now.names(), [PARENT]);
            assert_eq!(now.seqnum, before);
            // No uevent for it since the announcement (the injected ones are
            // broadcast before the call or start that caused them returns).
            assert_eq!(drain_states(&mut listener), Vec::<String>::new());
        },
    );
}

/// Property of the test's own marker uevents.
const MARKER: &str = "MDEVREG_TEST_MARKER";

/// The `MDEV_STATE`s udevd processed for [`DEVPATH`] since the last call:
/// injects a marker uevent for [`DEVPATH`] (no `MDEV_STATE`, so no parent
/// event to the rules) and collects the processed events up to it. The
/// daemon's uevents were broadcast before the call or start that caused
/// them returned, so they have lower kernel sequence numbers, and udevd
/// processes the events of one devpath in that order.
fn states_at_udevd(monitor: &mut Monitor, marker: &str) -> Vec<String> {
    let event = Uevent::new("change", DEVPATH)
        .with("SUBSYSTEM", "mdevreg")
        .with(MARKER, marker);
    UeventEmitter::open()
        .expect("uevent netlink socket")
        .inject(&event)
        .expect("inject the marker uevent");
    let seen = monitor.until(
        DEVPATH,
        |event| event.get(MARKER) == Some(marker),
        Duration::from_secs(30),
    );
    let mut states = Vec::new();
    for event in &seen {
        if let Some(state) = event.get("MDEV_STATE") {
            assert_eq!(event.get("MDEVREG_PARENT"), Some(PARENT), "{event:#?}");
            let tags = event.get("TAGS").unwrap_or_default();
            assert!(tags.split(':').any(|tag| tag == "mdevreg"), "{event:#?}");
            states.push(state.to_owned());
        }
    }
    states
}

fn stop(mut daemon: Daemon) {
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon
        .wait_exit(Duration::from_secs(20))
        .expect("mdevregd stops on SIGTERM");
}

#[test]
fn persistent_parents_are_announced_once_per_boot_at_udevd() {
    run_inner(
        "persistent_parents_are_announced_once_per_boot_at_udevd",
        "inner_reboot_at_udevd",
        &["dbus-daemon"],
    );
}

/// The half that runs inside `unshare -n -m`; does nothing when run directly.
#[test]
#[ignore = "run by persistent_parents_are_announced_once_per_boot_at_udevd inside unshare -n -m"]
fn inner_reboot_at_udevd() {
    let Some(udev_work) = inner_dir() else {
        return;
    };
    run("inner_reboot_at_udevd", &[], move || async move {
        // udevd, the daemon and the marker injections share this thread's
        // network namespace.
        let hooks_dir = udev_work.join("hooks.d");
        fs::create_dir_all(&hooks_dir).expect("hooks dir");
        let _udevd = Udevd::start(
            &udev_work,
            Some(&format!(
                "ENV{{MDEVREG_HOOKS_DIR}}=\"{}\"\n",
                hooks_dir.display()
            )),
        );
        let mut monitor = Monitor::new();

        let host = Boots::new("mdevreg-reboot-udevd-").await;

        // First boot: register persistent P, stop.
        let (daemon, _signals) = host.start().await;
        register_raw(
            &host.client,
            PARENT,
            &lifetime("persistent"),
            &[good_type("b-1")],
        )
        .await
        .expect("register boot0");
        assert_eq!(states_at_udevd(&mut monitor, "1"), ["registered"]);
        stop(daemon);

        host.reboot();
        let (daemon, mut signals) = host.start().await;
        let seen = signals_of_the_start(&host.client, &mut signals).await;
        let members: Vec<&str> = seen.iter().map(|s| s.member.as_str()).collect();
        assert_eq!(members, ["ParentRegistered"], "{seen:?}");
        assert_eq!(seen[0].source, "userspace");
        assert_eq!(states_at_udevd(&mut monitor, "2"), ["registered"]);
        stop(daemon);

        // A restart in the same boot: nothing reaches udevd.
        let (daemon, mut signals) = host.start().await;
        let seen = signals_of_the_start(&host.client, &mut signals).await;
        assert!(
            seen.is_empty(),
            "restart in the same boot announced {seen:?}"
        );
        assert_eq!(snapshot(&host.client).await.names(), [PARENT]);
        assert_eq!(states_at_udevd(&mut monitor, "3"), Vec::<String>::new());
        stop(daemon);
    });
}
