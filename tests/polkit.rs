//! polkit authorisation of the mutators with a real `polkitd` on a private
//! system-type bus that includes the shipped bus policy (everyone may call
//! the mutators; mdevregd decides) and polkit's own. polkitd runs in its own
//! mount namespace with the shipped action file and the test's rules file
//! (tests/common/polkit.rs); callers are `gdbus` as uid 65534 (`setpriv`)
//! or root.
//!
//! - uid 65534 is denied without a rule, allowed with a rule that grants
//!   it, and the rule sees the parent name (it grants `granted*` only);
//! - unprivileged callers get the default DevPath and Subsystem only;
//! - polkitd stopped: root still works, uid 65534 gets an AccessDenied that
//!   names polkit as missing;
//! - a per-uid bound over all of the uid's connections: LimitExceeded;
//! - an unprivileged parent yields to a kernel parent of the same name,
//!   root's keeps first-come.
//!
//! Needs root, dbus-daemon, gdbus, setpriv, unshare and polkitd; skipped
//! without them, or fails when `CI` is set.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::bus::DbusDaemon;
use common::daemon::{wait_ready, Daemon, DaemonOptions};
use common::gdbus::{assert_error, assert_ok, register_as_nobody, registry_call_as_nobody};
use common::polkit::{Polkitd, POLKITD, POLKIT_BUS_POLICY, POLKIT_NAME};
use common::prereq::missing_prerequisite;
use common::prereq::{open_tempdir, run};
use common::registry_client::{connect, good_type, lifetime, register_raw, snapshot, Dict};
use common::registry_signals::{next_signal, registry_signals};
use common::sysfs_fixture::{FakeSysfs, ParentSpec, TypeSpec};
use zbus::Connection;

/// Grants uid 65534 (user `nobody`) every mdevreg action on parents whose
/// name starts with `granted`, and Rescan; logs what it saw.
const RULES: &str = r#"
polkit.addRule(function(action, subject) {
    if (action.id.indexOf("org.mdevreg.") != 0) {
        return polkit.Result.NOT_HANDLED;
    }
    var parent = action.lookup("parent") || "";
    polkit.log("mdevreg-test action=" + action.id + " parent=" + parent + " user=" + subject.user);
    if (subject.user == "nobody" &&
        (action.id == "org.mdevreg.rescan" || parent.indexOf("granted") == 0)) {
        return polkit.Result.YES;
    }
    return polkit.Result.NOT_HANDLED;
});
"#;

const DENIED: &str = "org.mdevreg.Registry1.Error.AccessDenied";
const INVALID: &str = "org.mdevreg.Registry1.Error.InvalidArgument";
const LIMIT: &str = "org.mdevreg.Registry1.Error.LimitExceeded";
const PERSISTENT: &str = "{'Lifetime': <'persistent'>}";
const TOOLS: &[&str] = &["gdbus", "setpriv", "unshare"];

fn shipped_bus_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/org.mdevreg.Registry1.conf")
}

fn polkitd_present(test: &str) -> bool {
    if Path::new(POLKITD).is_file() && Path::new(POLKIT_BUS_POLICY).is_file() {
        return true;
    }
    missing_prerequisite::<()>(test, &format!("{POLKITD} (package polkitd) not installed"));
    false
}

/// A system-like bus with both policies, mdevregd on `sysfs_root` (no
/// netlink, no uevents) and a root client.
struct Host {
    bus: DbusDaemon,
    _work: tempfile::TempDir,
    daemon: Daemon,
    client: Connection,
}

impl Host {
    async fn start(sysfs_root: &Path) -> Host {
        let bus = DbusDaemon::start_system_like(&[
            shipped_bus_policy(),
            PathBuf::from(POLKIT_BUS_POLICY),
        ]);
        let work = open_tempdir("mdevreg-polkit-work-");
        let state = work.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let mut options = DaemonOptions::new(sysfs_root, &state);
        options.emit = "none";
        options.netlink = false;
        let mut daemon = Daemon::spawn(bus.address(), &options, work.path());
        let client = connect(bus.address()).await;
        wait_ready(&client, &mut daemon).await;
        Host {
            bus,
            _work: work,
            daemon,
            client,
        }
    }

    fn address(&self) -> &str {
        self.bus.address()
    }

    async fn polkitd(&self, rules: Option<&str>) -> Polkitd {
        let mut polkitd = Polkitd::start(self.address(), rules);
        polkitd.wait_ready(&self.client).await;
        polkitd
    }

    /// Stops polkitd and waits until its name is gone from the bus.
    async fn stop_polkitd(&self, polkitd: &mut Polkitd) {
        polkitd.stop();
        let dbus = zbus::fdo::DBusProxy::new(&self.client)
            .await
            .expect("DBusProxy");
        common::registry_client::eventually("polkitd to leave the bus", || {
            let dbus = dbus.clone();
            async move {
                let owned = dbus
                    .name_has_owner(POLKIT_NAME.try_into().expect("name"))
                    .await
                    .unwrap_or(true);
                (!owned).then_some(())
            }
        })
        .await;
    }

    /// Registered parent names, sorted.
    async fn names(&self) -> Vec<String> {
        let mut names = snapshot(&self.client).await.names();
        names.sort();
        names
    }

    /// A `Parent1` property of `name`, by the root client.
    async fn parent_property(&self, name: &str, property: &str) -> String {
        let reply = self
            .client
            .call_method(
                Some("org.mdevreg.Registry1"),
                mdevreg::label::parent_path(name).as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &("org.mdevreg.Parent1", property),
            )
            .await
            .unwrap_or_else(|err| panic!("Get {name}.{property}: {err}"));
        let value: zbus::OwnedVariant = reply.body().deserialize().expect("variant");
        String::try_from(value).expect("string property")
    }
}

#[test]
fn polkit_decides_for_unprivileged_callers_per_parent() {
    const TEST: &str = "polkit_decides_for_unprivileged_callers_per_parent";
    if !polkitd_present(TEST) {
        return;
    }
    run(TEST, TOOLS, || async {
        let tree = FakeSysfs::new();
        let mut host = Host::start(tree.root()).await;
        let address = host.address().to_owned();

        // No rules: the actions' defaults (auth_admin) refuse a caller that
        // did not allow interaction.
        let mut polkitd = host.polkitd(None).await;
        let refused = register_as_nobody(&address, "granted0", PERSISTENT);
        assert_error(
            &refused,
            DENIED,
            "polkit did not authorise",
            "without a rule",
        );
        assert_error(&refused, DENIED, "uid 65534", "without a rule");
        host.stop_polkitd(&mut polkitd).await;

        // The rule grants `granted*` to nobody, and sees the parent name.
        let mut polkitd = host.polkitd(Some(RULES)).await;
        let path = assert_ok(
            &register_as_nobody(&address, "granted0", PERSISTENT),
            "RegisterParent granted0 as uid 65534 with the rule",
        );
        assert!(path.contains("/parent/granted0"), "{path}");
        assert_error(
            &register_as_nobody(&address, "other0", PERSISTENT),
            DENIED,
            "org.mdevreg.register-parent",
            "RegisterParent other0 (not granted by the rule)",
        );
        let log = polkitd.log();
        for seen in [
            "action=org.mdevreg.register-parent parent=granted0 user=nobody",
            "action=org.mdevreg.register-parent parent=other0 user=nobody",
        ] {
            assert!(
                log.contains(seen),
                "the rule did not see {seen:?}; log:\n{log}"
            );
        }
        assert_eq!(host.names().await, ["granted0"]);
        // Unprivileged parents live at the default place.
        assert_eq!(
            host.parent_property("granted0", "DevPath").await,
            "/devices/virtual/mdevreg/granted0"
        );
        assert_eq!(
            host.parent_property("granted0", "Subsystem").await,
            "mdevreg"
        );

        // Only root chooses the location, even with polkit's blessing.
        for options in [
            "{'DevPath': <'/devices/virtual/mdevreg/elsewhere'>}",
            "{'DevPath': <'/devices/virtual/net/lo'>}",
            "{'Subsystem': <'block'>}",
        ] {
            assert_error(
                &register_as_nobody(&address, "granted1", options),
                INVALID,
                "only root may choose",
                options,
            );
        }
        // Spelling out the defaults is fine.
        assert_ok(
            &register_as_nobody(
                &address,
                "granted1",
                "{'Lifetime': <'persistent'>, 'DevPath': <'/devices/virtual/mdevreg/granted1'>, 'Subsystem': <'mdevreg'>}",
            ),
            "RegisterParent with the default location spelled out",
        );

        // Rescan and UnregisterParent through polkit too.
        assert_ok(
            &registry_call_as_nobody(&address, "Rescan", &[]),
            "Rescan as uid 65534",
        );
        assert_ok(
            &registry_call_as_nobody(&address, "UnregisterParent", &["granted1"]),
            "UnregisterParent granted1 as uid 65534",
        );
        assert!(polkitd
            .log()
            .contains("action=org.mdevreg.unregister-parent parent=granted1"));
        // Root's persistent parent is not uid 65534's to remove, whatever
        // polkit says.
        register_raw(
            &host.client,
            "granted-root",
            &lifetime("persistent"),
            &[good_type("r-1")],
        )
        .await
        .expect("root registers granted-root");
        assert_error(
            &registry_call_as_nobody(&address, "UnregisterParent", &["granted-root"]),
            "org.mdevreg.Registry1.Error.NotOwner",
            "granted-root",
            "UnregisterParent of root's parent as uid 65534",
        );

        // polkitd gone: root still works, nobody is told polkit is missing.
        host.stop_polkitd(&mut polkitd).await;
        let refused = register_as_nobody(&address, "granted2", PERSISTENT);
        assert_error(&refused, DENIED, "polkit is missing", "without polkitd");
        assert_error(&refused, DENIED, POLKIT_NAME, "without polkitd");
        register_raw(&host.client, "root0", &Dict::new(), &[good_type("r-1")])
            .await
            .expect("root registers without polkitd");
        assert_eq!(host.names().await, ["granted-root", "granted0", "root0"]);
        host.daemon.assert_alive("after the polkit calls");
    });
}

#[test]
fn per_uid_bound_spans_connections() {
    const TEST: &str = "per_uid_bound_spans_connections";
    if !polkitd_present(TEST) {
        return;
    }
    run(TEST, TOOLS, || async {
        let tree = FakeSysfs::new();
        let host = Host::start(tree.root()).await;
        let _polkitd = host.polkitd(Some(RULES)).await;
        let bound = mdevreg::registry::MAX_PARENTS_PER_UID;
        // Each gdbus call is a connection of its own holding one parent:
        // the per-owner bound never applies, the per-uid one does.
        for i in 0..bound {
            assert_ok(
                &register_as_nobody(host.address(), &format!("granted{i}"), PERSISTENT),
                &format!("registration {i} of uid 65534"),
            );
        }
        assert_error(
            &register_as_nobody(host.address(), "granted-over", PERSISTENT),
            LIMIT,
            "uid 65534",
            "one registration over the per-uid bound",
        );
        assert_eq!(host.names().await.len(), bound);
        // Root is not held back by uid 65534's parents.
        register_raw(&host.client, "root0", &Dict::new(), &[good_type("r-1")])
            .await
            .expect("root registers");
        // Freeing one makes room.
        assert_ok(
            &registry_call_as_nobody(host.address(), "UnregisterParent", &["granted0"]),
            "UnregisterParent granted0",
        );
        assert_ok(
            &register_as_nobody(host.address(), "granted-over", PERSISTENT),
            "registration after freeing one",
        );
    });
}

#[test]
fn unprivileged_parent_yields_to_a_kernel_parent() {
    const TEST: &str = "unprivileged_parent_yields_to_a_kernel_parent";
    if !polkitd_present(TEST) {
        return;
    }
    run(TEST, TOOLS, || async {
        let tree = FakeSysfs::new();
        let host = Host::start(tree.root()).await;
        let _polkitd = host.polkitd(Some(RULES)).await;
        assert_ok(
            &register_as_nobody(host.address(), "granted0", PERSISTENT),
            "RegisterParent granted0 as uid 65534",
        );
        register_raw(
            &host.client,
            "granted-root",
            &lifetime("persistent"),
            &[good_type("r-1")],
        )
        .await
        .expect("root registers granted-root");

        // Kernel parents of both names appear; a Rescan finds them.
        for name in ["granted0", "granted-root"] {
            tree.add_parent(
                &ParentSpec::new(&format!("/devices/virtual/mtty/{name}"))
                    .with_type(TypeSpec::new("mtty-1", "vfio-pci", 2)),
            );
        }
        let mut signals = registry_signals(&host.client).await;
        assert_ok(
            &common::gdbus::gdbus_call(
                host.address(),
                false,
                "org.mdevreg.Registry1",
                "/org/mdevreg/Registry1",
                "org.mdevreg.Registry1.Rescan",
                &[],
            ),
            "Rescan as root",
        );
        let first = next_signal(&mut signals, Duration::from_secs(15))
            .await
            .expect("first signal");
        let second = next_signal(&mut signals, Duration::from_secs(15))
            .await
            .expect("second signal");
        let seen =
            [&first, &second].map(|s| (s.member.as_str(), s.name.as_str(), s.source.as_str()));
        assert_eq!(
            seen,
            [
                ("ParentUnregistered", "granted0", "userspace"),
                ("ParentRegistered", "granted0", "kernel"),
            ]
        );
        assert_eq!(second.seqnum, first.seqnum + 1);
        // Root's registration keeps the name (first come, first served):
        // nothing happened after those two.
        assert_eq!(snapshot(&host.client).await.seqnum, second.seqnum);
        assert_eq!(host.parent_property("granted0", "Source").await, "kernel");
        assert_eq!(
            host.parent_property("granted-root", "Source").await,
            "userspace"
        );
    });
}
