//! Acceptance tests of `mdevregd` restarts: registrations survive `kill -9`
//! (owner-bound ones re-adopted while their owner is connected, persistent
//! ones always) with no ParentRegistered sent twice; owners that left while
//! the daemon was down are cleaned up; SIGTERM flushes state and releases
//! the name; a corrupt state file is moved aside; losing the bus ends the
//! daemon with a failure status (so systemd restarts it).
//!
//! Real dbus-daemon and daemon binary, in a fresh network namespace; needs
//! root (skipped without, failed under `CI`).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::daemon::Setup;
use common::prereq::run;
use common::registry_client::{connect, eventually, parent_names, registry_proxy, BUS_NAME};
use common::sysfs_fixture::{FakeSysfs, ParentSpec};
use futures_util::StreamExt;
use mdevreg::dbus::{Parent1Proxy, Registry1Proxy};
use nix::sys::signal::Signal;
use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedVariant};

fn string(value: &str) -> OwnedVariant {
    OwnedVariant::from(zbus::Str::from(value.to_owned()))
}

/// Registers `name` with one type; `persistent` selects the lifetime.
async fn register(registry: &Registry1Proxy<'_>, name: &str, persistent: bool) {
    let mut options = HashMap::new();
    if persistent {
        options.insert("Lifetime".to_owned(), string("persistent"));
    }
    let types = vec![HashMap::from([
        ("Id".to_owned(), string("t-1")),
        ("DeviceApi".to_owned(), string("vfio-pci")),
        ("AvailableInstances".to_owned(), OwnedVariant::from(2u32)),
    ])];
    registry
        .register_parent(name, options, types)
        .await
        .unwrap_or_else(|err| panic!("register {name}: {err}"));
}

/// Every ParentRegistered / ParentUnregistered seen on `connection`, as
/// `"+name"` / `"-name"`, collected by background tasks.
struct SignalLog {
    seen: Arc<Mutex<Vec<String>>>,
}

impl SignalLog {
    async fn start(connection: &Connection) -> SignalLog {
        let registry = registry_proxy(connection).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut registered = registry
            .receive_parent_registered()
            .await
            .expect("subscribe");
        let mut unregistered = registry
            .receive_parent_unregistered()
            .await
            .expect("subscribe");
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(signal) = registered.next().await {
                let name = signal.args().expect("args").name().to_string();
                log.lock().unwrap().push(format!("+{name}"));
            }
        });
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(signal) = unregistered.next().await {
                let name = signal.args().expect("args").name().to_string();
                log.lock().unwrap().push(format!("-{name}"));
            }
        });
        SignalLog { seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self, entry: &str) -> usize {
        self.seen().iter().filter(|seen| *seen == entry).count()
    }
}

async fn parent_proxy<'c>(connection: &'c Connection, name: &str) -> Parent1Proxy<'c> {
    Parent1Proxy::builder(connection)
        .path(mdevreg::label::parent_path(name))
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("Parent1 proxy")
}

/// `kill -9` with an owner-bound and a persistent registration; the new
/// daemon has both (the owner is still connected), ParentRegistered came
/// once per registration, and the re-adopted one still follows its owner.
#[test]
fn kill_9_keeps_registrations_without_second_signals() {
    run(
        "kill_9_keeps_registrations_without_second_signals",
        &[],
        || async {
            let tree = FakeSysfs::new();
            tree.add_parent(&ParentSpec::mtty());
            let mut setup = Setup::start(tree.root(), |options| options.emit = "none").await;
            let watcher = connect(setup.bus.address()).await;
            let signals = SignalLog::start(&watcher).await;
            let owner = connect(setup.bus.address()).await;
            let owner_name = owner.unique_name().expect("unique name").to_string();
            register(&registry_proxy(&owner).await, "owned0", false).await;
            register(&setup.registry().await, "kept0", true).await;
            let seqnum_before = setup.registry().await.seq_num().await.expect("SeqNum");
            eventually("both ParentRegistered", || async {
                (signals.count("+owned0") == 1 && signals.count("+kept0") == 1).then_some(())
            })
            .await;

            setup.daemon.signal(Signal::SIGKILL);
            setup.restart_daemon().await;
            let registry = setup.registry().await;
            assert_eq!(parent_names(&registry).await, ["kept0", "mtty", "owned0"]);
            let owned = parent_proxy(&setup.client, "owned0").await;
            assert_eq!(owned.owner().await.expect("Owner"), owner_name);
            assert_eq!(owned.lifetime().await.expect("Lifetime"), "owner");
            let kept = parent_proxy(&setup.client, "kept0").await;
            assert_eq!(kept.lifetime().await.expect("Lifetime"), "persistent");
            assert!(registry.seq_num().await.expect("SeqNum") >= seqnum_before);
            assert!(
                setup.daemon.log().contains("re-adopted"),
                "{}",
                setup.daemon.log()
            );

            // Give any stray signal time to arrive, then count.
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(signals.seen(), ["+owned0", "+kept0"]);

            // The re-adopted registration still ends with its owner.
            owner.close().await.expect("close the owner connection");
            eventually("owned0 to go with its owner", || async {
                (signals.count("-owned0") == 1).then_some(())
            })
            .await;
            assert_eq!(parent_names(&registry).await, ["kept0", "mtty"]);
            assert_eq!(signals.count("+owned0"), 1);
            assert_eq!(signals.count("+kept0"), 1);
        },
    );
}

/// An owner that leaves while the daemon is down: its owner-bound parent is
/// unregistered (with the signal) when the daemon comes back; the
/// persistent parent of the same owner stays, without an owner.
#[test]
fn owner_gone_during_downtime_is_cleaned_up() {
    run("owner_gone_during_downtime_is_cleaned_up", &[], || async {
        let tree = FakeSysfs::new();
        let mut setup = Setup::start(tree.root(), |options| options.emit = "none").await;
        let watcher = connect(setup.bus.address()).await;
        let signals = SignalLog::start(&watcher).await;
        let owner = connect(setup.bus.address()).await;
        let owner_registry = registry_proxy(&owner).await;
        register(&owner_registry, "owned0", false).await;
        register(&owner_registry, "kept0", true).await;

        setup.daemon.signal(Signal::SIGKILL);
        assert!(setup.daemon.wait_exit(Duration::from_secs(5)).is_some());
        owner.close().await.expect("close the owner connection");
        setup.restart_daemon().await;

        let registry = setup.registry().await;
        eventually("owned0 to be unregistered", || async {
            (signals.count("-owned0") == 1).then_some(())
        })
        .await;
        assert_eq!(parent_names(&registry).await, ["kept0"]);
        let kept = parent_proxy(&setup.client, "kept0").await;
        eventually("kept0 to lose its owner", || async {
            kept.owner().await.ok().filter(String::is_empty).map(|_| ())
        })
        .await;
        let state =
            std::fs::read_to_string(setup.options.state_dir.join("owner-registrations.json"))
                .expect("owner state file");
        assert!(!state.contains("owned0"), "{state}");
        assert_eq!(signals.count("+kept0"), 1);
    });
}

/// SIGTERM: exit status 0, the name released, state on disk; the next
/// daemon has the persistent registration with its sequence number.
#[test]
fn sigterm_flushes_state_and_releases_the_name() {
    run(
        "sigterm_flushes_state_and_releases_the_name",
        &[],
        || async {
            let tree = FakeSysfs::new();
            let mut setup = Setup::start(tree.root(), |options| options.emit = "none").await;
            register(&setup.registry().await, "kept0", true).await;
            let registered_seqnum = parent_proxy(&setup.client, "kept0")
                .await
                .registered_seq_num()
                .await
                .expect("RegisteredSeqNum");
            let seqnum = setup.registry().await.seq_num().await.expect("SeqNum");

            setup.daemon.signal(Signal::SIGTERM);
            let status = setup
                .daemon
                .wait_exit(Duration::from_secs(10))
                .expect("mdevregd stops on SIGTERM");
            assert!(status.success(), "exit status {status}");
            let dbus = zbus::fdo::DBusProxy::new(&setup.client)
                .await
                .expect("DBusProxy");
            let owned = dbus
                .name_has_owner(BUS_NAME.try_into().expect("name"))
                .await
                .expect("NameHasOwner");
            assert!(!owned, "the name is still owned after exit");
            assert!(setup.daemon.log().contains("SIGTERM received"));

            setup.restart_daemon().await;
            let registry = setup.registry().await;
            assert_eq!(parent_names(&registry).await, ["kept0"]);
            let kept = parent_proxy(&setup.client, "kept0").await;
            assert_eq!(
                kept.registered_seq_num().await.expect("RegisteredSeqNum"),
                registered_seqnum
            );
            assert!(registry.seq_num().await.expect("SeqNum") >= seqnum);
            // New events are numbered above the old ones.
            register(&registry, "new0", true).await;
            let new = parent_proxy(&setup.client, "new0").await;
            assert!(new.registered_seq_num().await.expect("RegisteredSeqNum") > seqnum);
        },
    );
}

/// A corrupt state file is moved aside with a warning; the daemon starts
/// and saves new registrations.
#[test]
fn corrupt_state_file_is_moved_aside() {
    run("corrupt_state_file_is_moved_aside", &[], || async {
        let tree = FakeSysfs::new();
        tree.add_parent(&ParentSpec::mtty());
        let mut setup = Setup::start(tree.root(), |options| options.emit = "none").await;
        setup.daemon.signal(Signal::SIGKILL);
        assert!(setup.daemon.wait_exit(Duration::from_secs(5)).is_some());
        let state_file = setup
            .options
            .state_dir
            .join("persistent-registrations.json");
        std::fs::write(
            &state_file,
            b"{\"format\": \"mdevreg-state\", \"version\": 1, garbage",
        )
        .expect("write garbage");

        setup.restart_daemon().await;
        let registry = setup.registry().await;
        assert_eq!(parent_names(&registry).await, ["mtty"]);
        let aside: Vec<String> = std::fs::read_dir(&setup.options.state_dir)
            .expect("list state dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| name.starts_with("persistent-registrations.json.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "moved-aside files: {aside:?}");
        assert!(
            setup.daemon.log().contains("moved to"),
            "{}",
            setup.daemon.log()
        );

        register(&registry, "kept0", true).await;
        let saved = std::fs::read_to_string(&state_file).expect("state file");
        assert!(saved.contains("\"kept0\""), "{saved}");
    });
}

/// The bus goes away: the daemon exits promptly with a failure status.
#[test]
fn losing_the_bus_is_a_failure_exit() {
    run("losing_the_bus_is_a_failure_exit", &[], || async {
        let tree = FakeSysfs::new();
        let mut setup = Setup::start(tree.root(), |options| options.emit = "none").await;
        setup.bus.kill();
        let status = setup
            .daemon
            .wait_exit(Duration::from_secs(10))
            .expect("mdevregd exits when the bus goes");
        assert!(!status.success(), "exit status {status}");
        assert!(
            setup.daemon.log().contains("connection was lost"),
            "{}",
            setup.daemon.log()
        );
    });
}
