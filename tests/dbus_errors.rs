//! Standard D-Bus errors, table-driven over the interface tables of
//! `mdevreg::dbus::interfaces` and the standard interfaces mdevregd serves:
//! an unknown method on each interface of an object that has it gets
//! `org.freedesktop.DBus.Error.UnknownMethod`; every method called with a
//! body whose signature is not its in-arguments gets
//! `org.freedesktop.DBus.Error.InvalidArgs` and changes nothing (registry,
//! sequence number, counters: a `Rescan("x")` does not rescan). Raw zbus
//! calls from a root client, on a private dbus-daemon.

mod common;

use std::collections::HashMap;

use common::daemon::Setup;
use common::prereq::run;
use common::registry_client::{stats, BUS_NAME, ROOT_PATH};
use common::sysfs_fixture::{FakeSysfs, ParentSpec};
use mdevreg::dbus::interfaces::{
    Interface, INTROSPECTABLE, MDEV_TYPE1, OBJECT_MANAGER, PARENT1, PEER, PROPERTIES, REGISTRY1,
};
use mdevreg::label;
use zbus::{Connection, OwnedVariant};

const UNKNOWN_METHOD: &str = "org.freedesktop.DBus.Error.UnknownMethod";
const INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";

/// The standard methods mdevregd answers, with their in-arguments.
const STANDARD: &[(&str, &str, &str)] = &[
    (PEER, "Ping", ""),
    (PEER, "GetMachineId", ""),
    (INTROSPECTABLE, "Introspect", ""),
    (PROPERTIES, "Get", "ss"),
    (PROPERTIES, "GetAll", "s"),
    (PROPERTIES, "Set", "ssv"),
    (OBJECT_MANAGER, "GetManagedObjects", ""),
];

/// Methods with their in-arguments.
type Methods = Vec<(&'static str, String)>;
/// One object's interface and its methods.
type Row = (String, &'static str, Methods);

/// A message body of one of a few shapes.
#[derive(Clone, Copy, Debug)]
enum Body {
    Empty,
    Str,
    U32,
    Four,
}

impl Body {
    const ALL: [Body; 4] = [Body::Empty, Body::Str, Body::U32, Body::Four];

    fn signature(self) -> &'static str {
        match self {
            Body::Empty => "",
            Body::Str => "s",
            Body::U32 => "u",
            Body::Four => "sssy",
        }
    }
}

/// Calls `interface.member` on `path` with `body`; the error name, if any.
async fn call(
    client: &Connection,
    path: &str,
    interface: &str,
    member: &str,
    body: Body,
) -> Option<String> {
    let result = match body {
        Body::Empty => {
            client
                .call_method(Some(BUS_NAME), path, Some(interface), member, &())
                .await
        }
        Body::Str => {
            client
                .call_method(Some(BUS_NAME), path, Some(interface), member, &("x",))
                .await
        }
        Body::U32 => {
            client
                .call_method(Some(BUS_NAME), path, Some(interface), member, &(42u32,))
                .await
        }
        Body::Four => {
            client
                .call_method(
                    Some(BUS_NAME),
                    path,
                    Some(interface),
                    member,
                    &("a", "b", "c", 1u8),
                )
                .await
        }
    };
    match result {
        Ok(_) => None,
        Err(zbus::Error::MethodError(name, _, _)) => Some(name.as_str().to_owned()),
        Err(zbus::Error::FDO(err)) => Some(zbus::DBusError::name(&*err).as_str().to_owned()),
        Err(other) => Some(format!("not an error reply: {other}")),
    }
}

/// Everything a misdirected call could have changed.
#[derive(Debug, PartialEq)]
struct Observable {
    parents: Vec<String>,
    seqnum: u64,
    counters: std::collections::BTreeMap<String, u64>,
}

async fn observe(setup: &Setup) -> Observable {
    let snapshot = setup.snapshot().await;
    Observable {
        parents: snapshot.names(),
        seqnum: snapshot.seqnum,
        counters: stats(&setup.client).await,
    }
}

#[test]
fn unknown_methods_and_wrong_bodies_get_standard_errors() {
    run(
        "unknown_methods_and_wrong_bodies_get_standard_errors",
        &[],
        || async {
            let tree = FakeSysfs::new();
            tree.add_parent(&ParentSpec::mtty());
            let setup = Setup::start(tree.root(), |options| {
                options.netlink = false;
                options.emit = "none";
            })
            .await;
            let types = vec![HashMap::from([
                ("Id".to_owned(), OwnedVariant::from(zbus::Str::from("v-1"))),
                (
                    "DeviceApi".to_owned(),
                    OwnedVariant::from(zbus::Str::from("vfio-pci")),
                ),
            ])];
            let options = HashMap::from([(
                "Lifetime".to_owned(),
                OwnedVariant::from(zbus::Str::from("persistent")),
            )]);
            setup
                .registry()
                .await
                .register_parent("vgpu0", options, types)
                .await
                .expect("RegisterParent");
            let parent_path = label::parent_path("vgpu0");
            let type_path = label::type_path("vgpu0", "v-1");

            // (object, interface, methods with in-arguments)
            let mut table: Vec<Row> = Vec::new();
            let methods = |interface: &Interface| -> Methods {
                interface
                    .methods
                    .iter()
                    .map(|m| (m.name, m.in_signature()))
                    .collect()
            };
            table.push((ROOT_PATH.to_owned(), REGISTRY1.name, methods(&REGISTRY1)));
            table.push((parent_path.clone(), PARENT1.name, methods(&PARENT1)));
            table.push((type_path.clone(), MDEV_TYPE1.name, methods(&MDEV_TYPE1)));
            for path in [ROOT_PATH.to_owned(), parent_path.clone(), type_path.clone()] {
                for (interface, member, signature) in STANDARD {
                    if *interface == OBJECT_MANAGER && path != ROOT_PATH {
                        continue;
                    }
                    match table
                        .iter_mut()
                        .find(|(p, i, _)| *p == path && i == interface)
                    {
                        Some((_, _, list)) => list.push((member, (*signature).to_owned())),
                        None => table.push((
                            path.clone(),
                            interface,
                            vec![(member, (*signature).to_owned())],
                        )),
                    }
                }
            }

            let before = observe(&setup).await;
            let mut checked = 0;
            for (path, interface, methods) in &table {
                let error = call(&setup.client, path, interface, "NoSuchMethod", Body::Empty).await;
                assert_eq!(
                    error.as_deref(),
                    Some(UNKNOWN_METHOD),
                    "{path} {interface}.NoSuchMethod"
                );
                for (member, signature) in methods {
                    for body in Body::ALL {
                        if body.signature() == signature {
                            continue;
                        }
                        let error = call(&setup.client, path, interface, member, body).await;
                        assert_eq!(
                            error.as_deref(),
                            Some(INVALID_ARGS),
                            "{path} {interface}.{member}({}) where it takes ({signature})",
                            body.signature()
                        );
                        checked += 1;
                    }
                }
            }
            // Every Registry1 method, the standard ones on three objects.
            assert!(
                checked >= 3 * (REGISTRY1.methods.len() + 6 * 3),
                "{checked}"
            );
            let after = observe(&setup).await;
            assert_eq!(before, after, "a refused call changed something");
            assert!(after.parents.contains(&"vgpu0".to_owned()));

            // The right bodies still work (the table is not all refusals).
            assert_eq!(
                call(
                    &setup.client,
                    ROOT_PATH,
                    REGISTRY1.name,
                    "ListParents",
                    Body::Empty
                )
                .await,
                None
            );
            assert_eq!(
                call(&setup.client, ROOT_PATH, PEER, "Ping", Body::Empty).await,
                None
            );
            setup.daemon.assert_no_panic("after the refused calls");
        },
    );
}

/// `Registry1.Stats` lists its keys in sorted order on the wire (a client
/// printing the dict as it comes, like gdbus, shows a stable order).
#[test]
fn stats_keys_come_sorted() {
    run("stats_keys_come_sorted", &["gdbus"], || async {
        let tree = FakeSysfs::new();
        let setup = Setup::start(tree.root(), |options| {
            options.netlink = false;
            options.emit = "none";
        })
        .await;
        let output = std::process::Command::new("gdbus")
            .args(["call", "--address", setup.bus.address(), "--dest", BUS_NAME])
            .args(["--object-path", ROOT_PATH])
            .args(["--method", "org.freedesktop.DBus.Properties.Get"])
            .args([REGISTRY1.name, "Stats"])
            .output()
            .expect("run gdbus");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{text}");
        // `{'key': uint64 N, ...}`: the quoted strings followed by a colon.
        let keys: Vec<&str> = text
            .split('\'')
            .collect::<Vec<_>>()
            .chunks(2)
            .filter_map(|pair| match pair {
                [_, key] => Some(*key),
                _ => None,
            })
            .collect();
        assert!(keys.len() >= 5, "{text}");
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted, "{text}");
    });
}
