//! Persistent parents across a reboot: a persistent parent restored in a
//! new boot is a registration (one `MDEV_STATE=registered` uevent, one
//! `ParentRegistered`); a restart within the same boot emits nothing new.
//! A reboot is an emptied `--runtime-dir` (a tmpfs in real life). The
//! daemon injects its uevents into this test's private network namespace,
//! where a kernel-group listener counts them.
//!
//! Needs root and dbus-daemon; skipped without them, or fails when `CI` is
//! set.

mod common;

use std::fs;
use std::time::Duration;

use common::bus::DbusDaemon;
use common::daemon::{wait_ready, Daemon, DaemonOptions};
use common::prereq::{open_tempdir, run};
use common::registry_client::{
    connect, good_type, lifetime, register_raw, registry_proxy, snapshot,
};
use common::registry_signals::{decode_signal, registry_signals, RegistrySignal};
use common::sysfs_fixture::FakeSysfs;
use futures_util::{FutureExt, StreamExt};
use mdevreg::netlink::{RecvOutcome, UeventListener};
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

/// Starts the daemon, subscribed (by `client`) before it owns its name, and
/// returns it with the subscription.
async fn start(
    bus: &DbusDaemon,
    options: &DaemonOptions,
    work: &std::path::Path,
    client: &Connection,
) -> (Daemon, zbus::MessageStream) {
    let signals = registry_signals(client).await;
    let mut daemon = Daemon::spawn(bus.address(), options, work);
    wait_ready(client, &mut daemon).await;
    (daemon, signals)
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
            let tree = FakeSysfs::new();
            let bus = DbusDaemon::start_permissive();
            let work = open_tempdir("mdevreg-reboot-");
            let state = work.path().join("state");
            let runtime = work.path().join("run");
            fs::create_dir_all(&state).expect("state dir");
            let mut options = DaemonOptions::new(tree.root(), &state);
            options.emit = "inject";
            options.netlink = false;
            options.runtime_dir = Some(runtime.clone());
            let client = connect(bus.address()).await;
            let mut listener = UeventListener::open().expect("uevent listener");

            // First boot: register persistent P, stop.
            let (mut daemon, _signals) = start(&bus, &options, work.path(), &client).await;
            register_raw(
                &client,
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
            assert!(runtime.join("boot-id").is_file(), "no boot marker");

            // Reboot: the runtime directory is empty again.
            fs::remove_dir_all(&runtime).expect("empty the runtime dir");
            fs::create_dir_all(&runtime).expect("runtime dir");
            let (mut daemon, mut signals) = start(&bus, &options, work.path(), &client).await;
            let seen = signals_of_the_start(&client, &mut signals).await;
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
                let (mut daemon, mut signals) = start(&bus, &options, work.path(), &client).await;
                let seen = signals_of_the_start(&client, &mut signals).await;
                assert!(
                    seen.is_empty(),
                    "restart in the same boot announced {seen:?}"
                );
                let seqnum = snapshot(&client).await.seqnum;
                daemon.signal(nix::sys::signal::Signal::SIGTERM);
                daemon
                    .wait_exit(Duration::from_secs(20))
                    .expect("mdevregd stops on SIGTERM");
                seqnum
            };
            // The parent is still there, with the number of its announcement.
            let (_daemon, _signals) = start(&bus, &options, work.path(), &client).await;
            let now = snapshot(&client).await;
            assert_eq!(now.names(), [PARENT]);
            assert_eq!(now.seqnum, before);
            // No uevent for it since the announcement (the injected ones are
            // broadcast before the call or start that caused them returns).
            assert_eq!(drain_states(&mut listener), Vec::<String>::new());
        },
    );
}
