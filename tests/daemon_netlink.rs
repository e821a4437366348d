//! Acceptance tests of `mdevregd` and the kernel's uevent netlink, inside a
//! fresh network namespace per test: real kernel-injected uevents make the
//! daemon re-read the fake sysfs tree; a forged multicast from userspace is
//! dropped and counted; the daemon's own emissions reach a real libudev
//! monitor (broadcast) or a group-1 listener with a kernel SEQNUM
//! (injection), and the daemon recognises its injected events coming back.
//!
//! Needs root (namespaces, injection, group sends); skipped without it, or
//! failed when `CI` is set.

mod common;

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::daemon::Setup;
use common::prereq::run;
use common::registry_client::{eventually, parent_names};
use common::sysfs_fixture::{FakeSysfs, ParentSpec};
use common::uevent_netlink::{poll_monitor, udev_property, userspace_uevent_socket};
use futures_util::StreamExt;
use mdevreg::dbus::{MdevType1Proxy, Registry1Proxy};
use mdevreg::netlink::{RecvOutcome, UeventEmitter, UeventListener};
use mdevreg::uevent::{encode_kernel, Uevent};
use nix::sys::socket::{self, MsgFlags, NetlinkAddr};
use zbus::proxy::CacheProperties;
use zbus::OwnedVariant;

const MTTY_DEVPATH: &str = "/devices/virtual/mtty/mtty";
const MTTY_TYPE_PATH: &str = "/org/mdevreg/Registry1/parent/mtty/type/mtty_2d2";
const VGPU_DEVPATH: &str = "/devices/virtual/mdevreg/vgpu0";
const INSTANCE_UUID: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";

fn mtty_event(action: &str, devpath: &str, subsystem: &str) -> Uevent {
    Uevent::new(action, devpath).with("SUBSYSTEM", subsystem)
}

/// Has the kernel number and broadcast `event` in this namespace.
fn inject(event: &Uevent) {
    UeventEmitter::open()
        .expect("uevent emitter")
        .inject(event)
        .expect("inject (needs CAP_SYS_ADMIN)");
}

/// Multicasts `bytes` on group 1 from a userspace socket (port != 0).
fn multicast_from_userspace(bytes: &[u8]) {
    let fd = userspace_uevent_socket();
    socket::sendto(
        fd.as_raw_fd(),
        bytes,
        &NetlinkAddr::new(0, 1),
        MsgFlags::empty(),
    )
    .expect("multicast to group 1 (needs CAP_NET_ADMIN)");
}

async fn stat(registry: &Registry1Proxy<'_>, key: &str) -> u64 {
    registry
        .stats()
        .await
        .expect("Stats")
        .get(key)
        .copied()
        .unwrap_or(0)
}

/// A kernel-format `MDEV_STATE=registered` uevent for a devpath in the tree
/// registers the parent (source `kernel`); the same message multicast from
/// userspace is dropped and counted. Instance add/remove below the parent
/// update the type; `MDEV_STATE=unregistered` unregisters it.
#[test]
fn kernel_uevents_drive_the_registry_and_forgeries_do_not() {
    run(
        "kernel_uevents_drive_the_registry_and_forgeries_do_not",
        &[],
        || async {
            let tree = FakeSysfs::new();
            let setup = Setup::start(tree.root(), |options| options.emit = "none").await;
            let registry = setup.registry().await;
            let mut registered = registry
                .receive_parent_registered()
                .await
                .expect("subscribe");
            let mut unregistered = registry
                .receive_parent_unregistered()
                .await
                .expect("subscribe");
            assert!(parent_names(&registry).await.is_empty());

            // The parent appears in sysfs; the kernel has not told anyone yet.
            tree.add_parent(&ParentSpec::mtty());
            let registered_event =
                mtty_event("change", MTTY_DEVPATH, "mtty").with("MDEV_STATE", "registered");

            // Forged: the kernel format, SEQNUM and all, but from a userspace port.
            let mut forged = registered_event.clone();
            forged.set("SEQNUM", "999999");
            let rejected_before = stat(&registry, "uevents_rejected_not_kernel_port").await;
            multicast_from_userspace(&encode_kernel(&forged).expect("encode"));
            eventually("the forged event to be counted", || async {
                (stat(&registry, "uevents_rejected_not_kernel_port").await > rejected_before)
                    .then_some(())
            })
            .await;
            assert!(stat(&registry, "uevents_rejected").await >= 1);
            assert!(
                parent_names(&registry).await.is_empty(),
                "a forged event registered"
            );

            // The same event through the kernel.
            inject(&registered_event);
            let signal = tokio::time::timeout(Duration::from_secs(10), registered.next())
                .await
                .expect("ParentRegistered in time")
                .expect("stream");
            let args = signal.args().expect("args");
            assert_eq!((*args.name(), *args.source()), ("mtty", "kernel"));
            assert_eq!(parent_names(&setup.registry().await).await, ["mtty"]);

            // An mdev instance is created below the parent.
            let mdev_type = MdevType1Proxy::builder(&setup.client)
                .path(MTTY_TYPE_PATH)
                .cache_properties(CacheProperties::No)
                .build()
                .await
                .expect("MdevType1 proxy");
            assert_eq!(mdev_type.available_instances().await.expect("avail"), 12);
            tree.add_instance("mtty", "mtty-2", INSTANCE_UUID);
            tree.set_available_instances("mtty", "mtty-2", 11);
            let instance = format!("{MTTY_DEVPATH}/{INSTANCE_UUID}");
            inject(&mtty_event("add", &instance, "mdev").with("MDEV_TYPE", "mtty-2"));
            eventually("AvailableInstances 11", || async {
                (mdev_type.available_instances().await.ok() == Some(11)).then_some(())
            })
            .await;
            assert_eq!(mdev_type.devices().await.expect("Devices"), [INSTANCE_UUID]);

            tree.remove_instance("mtty", INSTANCE_UUID);
            tree.set_available_instances("mtty", "mtty-2", 12);
            inject(&mtty_event("remove", &instance, "mdev"));
            eventually("the instance to go", || async {
                mdev_type
                    .devices()
                    .await
                    .ok()
                    .filter(|devices| devices.is_empty())
                    .map(|_| ())
            })
            .await;
            assert_eq!(mdev_type.available_instances().await.expect("avail"), 12);

            // Events about unrelated devices change nothing and are counted.
            let ignored_before = stat(&registry, "uevents_ignored").await;
            inject(&mtty_event("add", "/devices/virtual/net/dummy0", "net"));
            eventually("the unrelated event to be counted", || async {
                (stat(&registry, "uevents_ignored").await > ignored_before).then_some(())
            })
            .await;

            // The kernel unregisters the parent.
            tree.remove_parent("mtty");
            inject(&mtty_event("change", MTTY_DEVPATH, "mtty").with("MDEV_STATE", "unregistered"));
            let signal = tokio::time::timeout(Duration::from_secs(10), unregistered.next())
                .await
                .expect("ParentUnregistered in time")
                .expect("stream");
            let args = signal.args().expect("args");
            assert_eq!((*args.name(), *args.source()), ("mtty", "kernel"));
            assert!(parent_names(&registry).await.is_empty());
            assert!(stat(&registry, "uevents_received").await >= 4);
        },
    );
}

fn string(value: &str) -> OwnedVariant {
    OwnedVariant::from(zbus::Str::from(value.to_owned()))
}

/// Registers `vgpu0` (owner-bound, one type) through the proxy; returns the
/// registry sequence number of the registration.
async fn register_vgpu(registry: &Registry1Proxy<'_>) -> u64 {
    let types = vec![HashMap::from([
        ("Id".to_owned(), string("t-1")),
        ("DeviceApi".to_owned(), string("vfio-pci")),
        ("AvailableInstances".to_owned(), OwnedVariant::from(1u32)),
    ])];
    registry
        .register_parent("vgpu0", HashMap::new(), types)
        .await
        .expect("RegisterParent");
    registry.seq_num().await.expect("SeqNum")
}

/// With `--emit broadcast`, a real libudev monitor filtering on subsystem
/// `mdevreg` receives exactly one event per userspace transition; a
/// monitor for another subsystem receives none (the hashes are right).
#[test]
fn broadcast_reaches_a_libudev_monitor() {
    run("broadcast_reaches_a_libudev_monitor", &[], || async {
        let tree = FakeSysfs::new();
        let setup = Setup::start(tree.root(), |options| options.emit = "broadcast").await;
        assert!(
            setup.daemon.log().contains("libudev broadcast"),
            "startup log names the mode"
        );
        let listen = |builder: std::io::Result<udev::MonitorBuilder>| {
            builder.and_then(|b| b.listen()).expect("libudev monitor")
        };
        let mdevreg_monitor =
            listen(udev::MonitorBuilder::new().and_then(|b| b.match_subsystem("mdevreg")));
        let tag_monitor = listen(udev::MonitorBuilder::new().and_then(|b| b.match_tag("mdevreg")));
        let other_monitor =
            listen(udev::MonitorBuilder::new().and_then(|b| b.match_subsystem("block")));

        let registry = setup.registry().await;
        let seqnum = register_vgpu(&registry).await;
        let event = poll_monitor(&mdevreg_monitor, Duration::from_secs(10))
            .expect("the libudev monitor got the registration");
        assert_eq!(event.event_type(), udev::EventType::Change);
        assert_eq!(event.devpath().to_string_lossy(), VGPU_DEVPATH);
        assert_eq!(udev_property(&event, "SUBSYSTEM"), "mdevreg");
        assert_eq!(udev_property(&event, "MDEV_STATE"), "registered");
        assert_eq!(udev_property(&event, "MDEV_PARENT"), "vgpu0");
        assert_eq!(udev_property(&event, "MDEVREG_SEQNUM"), seqnum.to_string());
        assert_eq!(event.sequence_number(), seqnum);
        assert!(
            poll_monitor(&tag_monitor, Duration::from_secs(5)).is_some(),
            "a tag-match monitor got nothing: tag or bloom filter wrong"
        );

        registry
            .unregister_parent("vgpu0")
            .await
            .expect("UnregisterParent");
        let event = poll_monitor(&mdevreg_monitor, Duration::from_secs(10))
            .expect("the libudev monitor got the unregistration");
        assert_eq!(udev_property(&event, "MDEV_STATE"), "unregistered");
        assert_eq!(
            udev_property(&event, "MDEVREG_SEQNUM"),
            registry.seq_num().await.expect("SeqNum").to_string()
        );

        // Exactly one event per transition, none for other subsystems.
        assert!(poll_monitor(&mdevreg_monitor, Duration::from_millis(500)).is_none());
        assert!(poll_monitor(&other_monitor, Duration::from_millis(100)).is_none());
        assert_eq!(stat(&registry, "uevents_broadcast").await, 2);
        assert_eq!(stat(&registry, "uevent_emit_failures").await, 0);
    });
}

/// Reads `listener` until an event for `devpath` arrives (10 s at most).
async fn next_event_for(listener: &mut UeventListener, devpath: &str) -> Option<Uevent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, listener.recv()).await {
            Err(_elapsed) => return None,
            Ok(Ok(RecvOutcome::Event(event))) if event.devpath == devpath => return Some(event),
            Ok(Ok(_)) => continue,
            Ok(Err(err)) => panic!("uevent listener: {err}"),
        }
    }
}

/// With `--emit inject`, a group-1 listener sees the registration as a
/// kernel event (trusted, with a kernel SEQNUM); the daemon recognises the
/// echo and counts it once, without a second registry event.
#[test]
fn injection_is_seen_on_group_1_with_a_kernel_seqnum() {
    run(
        "injection_is_seen_on_group_1_with_a_kernel_seqnum",
        &[],
        || async {
            let tree = FakeSysfs::new();
            let setup = Setup::start(tree.root(), |options| options.emit = "inject").await;
            assert!(
                setup.daemon.log().contains("kernel injection"),
                "startup log names the mode"
            );
            let mut listener = UeventListener::open().expect("uevent listener");
            let registry = setup.registry().await;

            let seqnum = register_vgpu(&registry).await;
            let event = next_event_for(&mut listener, VGPU_DEVPATH)
                .await
                .expect("the injected registration on group 1");
            assert_eq!(event.action, "change");
            assert_eq!(event.get("SUBSYSTEM"), Some("mdevreg"));
            assert_eq!(event.get("MDEV_STATE"), Some("registered"));
            assert_eq!(event.get("MDEV_PARENT"), Some("vgpu0"));
            assert_eq!(
                event.get("MDEVREG_SEQNUM"),
                Some(seqnum.to_string().as_str())
            );
            assert!(event.seqnum().is_some_and(|kernel| kernel > 0), "{event:?}");

            eventually("the daemon to see its own event", || async {
                (stat(&registry, "uevents_own").await == 1).then_some(())
            })
            .await;
            assert_eq!(stat(&registry, "uevents_injected").await, 1);
            // The echo did not become a registry event of its own.
            assert_eq!(registry.seq_num().await.expect("SeqNum"), seqnum);
            assert_eq!(parent_names(&registry).await, ["vgpu0"]);

            registry
                .unregister_parent("vgpu0")
                .await
                .expect("UnregisterParent");
            let event = next_event_for(&mut listener, VGPU_DEVPATH)
                .await
                .expect("the injected unregistration on group 1");
            assert_eq!(event.get("MDEV_STATE"), Some("unregistered"));
            eventually("the second echo", || async {
                (stat(&registry, "uevents_own").await == 2).then_some(())
            })
            .await;
            // One event per transition.
            let extra = tokio::time::timeout(
                Duration::from_millis(500),
                next_event_for(&mut listener, VGPU_DEVPATH),
            )
            .await;
            assert!(!matches!(extra, Ok(Some(_))), "a second uevent: {extra:?}");
            assert_eq!(stat(&registry, "uevents_injected").await, 2);
        },
    );
}
