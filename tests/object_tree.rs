//! The object tree as generic D-Bus clients see it: mdevregd answers calls
//! for its objects from the registry (no object server nodes), so these
//! check that what it announces is what it serves — `busctl tree` walks
//! every node by introspection, every managed object answers `GetAll` and
//! `Get` with exactly what `GetManagedObjects` reported, and paths, members,
//! interfaces and properties that do not exist get the standard errors.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use common::daemon::Setup;
use common::prereq::run;
use common::registry_client::{BUS_NAME, ROOT_PATH};
use common::sysfs_fixture::{FakeSysfs, ParentSpec};
use mdevreg::label;
use zbus::fdo::{ObjectManagerProxy, PropertiesProxy};
use zbus::names::InterfaceName;
use zbus::{Connection, OwnedVariant};

fn tree() -> FakeSysfs {
    let tree = FakeSysfs::new();
    tree.add_parent(&ParentSpec::mtty());
    tree.add_parent(&ParentSpec::gvt());
    tree
}

/// Registers a userspace parent with two types from the root client.
async fn register_vgpu(setup: &Setup) {
    let entry = |id: &str| {
        HashMap::from([
            (
                "Id".to_owned(),
                OwnedVariant::from(zbus::Str::from(id.to_owned())),
            ),
            (
                "DeviceApi".to_owned(),
                OwnedVariant::from(zbus::Str::from("vfio-pci")),
            ),
        ])
    };
    setup
        .registry()
        .await
        .register_parent(
            "vgpu0",
            HashMap::from([(
                "Lifetime".to_owned(),
                OwnedVariant::from(zbus::Str::from("persistent")),
            )]),
            vec![entry("t-1"), entry("t.2")],
        )
        .await
        .expect("RegisterParent");
}

#[test]
fn busctl_tree_walks_every_object() {
    run("busctl_tree_walks_every_object", &["busctl"], || async {
        let tree = tree();
        let setup = Setup::start(tree.root(), |_| {}).await;
        register_vgpu(&setup).await;

        let output = Command::new("busctl")
            .arg(format!("--address={}", setup.bus.address()))
            .args(["tree", "--list", BUS_NAME])
            .output()
            .expect("run busctl");
        assert!(
            output.status.success(),
            "busctl tree: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let seen: BTreeSet<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect();

        let mut expected: BTreeSet<String> = ["/", "/org", "/org/mdevreg", ROOT_PATH]
            .into_iter()
            .map(str::to_owned)
            .collect();
        expected.insert(format!("{ROOT_PATH}/parent"));
        let parents: [(&str, Vec<&str>); 3] = [
            ("mtty", vec!["mtty-1", "mtty-2"]),
            (
                "0000:00:02.0",
                vec![
                    "i915-GVTg_V5_1",
                    "i915-GVTg_V5_2",
                    "i915-GVTg_V5_4",
                    "i915-GVTg_V5_8",
                ],
            ),
            ("vgpu0", vec!["t-1", "t.2"]),
        ];
        for (parent, types) in &parents {
            expected.insert(label::parent_path(parent));
            expected.insert(format!("{}/type", label::parent_path(parent)));
            for id in types {
                expected.insert(label::type_path(parent, id));
            }
        }
        assert_eq!(seen, expected);
    });
}

#[test]
fn managed_objects_answer_get_and_get_all_alike() {
    run(
        "managed_objects_answer_get_and_get_all_alike",
        &[],
        || async {
            let tree = tree();
            let setup = Setup::start(tree.root(), |_| {}).await;
            register_vgpu(&setup).await;
            let client = &setup.client;

            let manager = ObjectManagerProxy::builder(client)
                .destination(BUS_NAME)
                .path(ROOT_PATH)
                .build()
                .await
                .expect("ObjectManager proxy");
            let objects = manager
                .get_managed_objects()
                .await
                .expect("GetManagedObjects");
            // 3 parents, 2 + 4 + 2 types.
            assert_eq!(objects.len(), 3 + 8, "{:?}", objects.keys());
            for (path, interfaces) in &objects {
                assert_eq!(interfaces.len(), 1, "{path}: {:?}", interfaces.keys());
                let properties = PropertiesProxy::builder(client)
                    .destination(BUS_NAME)
                    .path(path.clone())
                    .build()
                    .await
                    .expect("Properties proxy");
                for (interface, managed) in interfaces {
                    let name = InterfaceName::try_from(interface.as_str()).expect("name");
                    let all = properties.get_all(name.clone()).await.expect("GetAll");
                    assert_eq!(&all, managed, "{path} {interface}");
                    for (property, value) in managed {
                        let single = properties
                            .get(name.clone(), property)
                            .await
                            .unwrap_or_else(|err| panic!("{path} Get {property}: {err}"));
                        assert_eq!(&single, value, "{path} {property}");
                    }
                }
            }
            // The parent's Types list exactly its type objects.
            let vgpu = objects
                .iter()
                .find(|(path, _)| path.as_str() == label::parent_path("vgpu0"))
                .map(|(_, interfaces)| &interfaces["org.mdevreg.Parent1"])
                .expect("vgpu0 object");
            let types: Vec<zbus::OwnedObjectPath> = vgpu["Types"]
                .try_clone()
                .expect("clone")
                .try_into()
                .expect("ao");
            let types: Vec<&str> = types.iter().map(|p| p.as_str()).collect();
            assert_eq!(
                types,
                [
                    label::type_path("vgpu0", "t-1"),
                    label::type_path("vgpu0", "t.2")
                ]
            );
        },
    );
}

/// The error name of a failed call, or "ok".
async fn outcome(
    client: &Connection,
    path: &str,
    interface: Option<&str>,
    member: &str,
    body: &(impl serde::Serialize + zbus::DynamicType),
) -> String {
    match client
        .call_method(Some(BUS_NAME), path, interface, member, body)
        .await
    {
        Ok(_) => "ok".to_owned(),
        Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
        Err(zbus::Error::FDO(err)) => zbus::DBusError::name(&*err).to_string(),
        Err(err) => format!("other error: {err}"),
    }
}

#[test]
fn missing_things_get_standard_errors() {
    run("missing_things_get_standard_errors", &[], || async {
        let tree = tree();
        let setup = Setup::start(tree.root(), |_| {}).await;
        let client = &setup.client;
        let props = Some("org.freedesktop.DBus.Properties");
        let mtty = label::parent_path("mtty");
        let cases: Vec<(String, Option<&str>, &str, String)> = vec![
            (
                format!("{ROOT_PATH}/parent/nope"),
                props,
                "GetAll",
                outcome(
                    client,
                    &format!("{ROOT_PATH}/parent/nope"),
                    props,
                    "GetAll",
                    &("org.mdevreg.Parent1",),
                )
                .await,
            ),
            (
                // "mtty" with its first letter escaped: not the canonical label.
                format!("{ROOT_PATH}/parent/_6dtty"),
                props,
                "GetAll",
                outcome(
                    client,
                    &format!("{ROOT_PATH}/parent/_6dtty"),
                    props,
                    "GetAll",
                    &("org.mdevreg.Parent1",),
                )
                .await,
            ),
            (
                mtty.clone(),
                props,
                "Get",
                outcome(
                    client,
                    &mtty,
                    props,
                    "Get",
                    &("org.mdevreg.Parent1", "Nope"),
                )
                .await,
            ),
            (
                mtty.clone(),
                props,
                "Set",
                outcome(
                    client,
                    &mtty,
                    props,
                    "Set",
                    &("org.mdevreg.Parent1", "Name", zbus::Variant::from("x")),
                )
                .await,
            ),
            (
                mtty.clone(),
                props,
                "GetAll",
                outcome(client, &mtty, props, "GetAll", &("org.example.Nope",)).await,
            ),
            (
                ROOT_PATH.to_owned(),
                Some("org.mdevreg.Registry1"),
                "Nope",
                outcome(
                    client,
                    ROOT_PATH,
                    Some("org.mdevreg.Registry1"),
                    "Nope",
                    &(),
                )
                .await,
            ),
            (
                ROOT_PATH.to_owned(),
                Some("org.mdevreg.Registry1"),
                "GetParent",
                outcome(
                    client,
                    ROOT_PATH,
                    Some("org.mdevreg.Registry1"),
                    "GetParent",
                    &(42u32,),
                )
                .await,
            ),
        ];
        let got: Vec<&str> = cases.iter().map(|case| case.3.as_str()).collect();
        assert_eq!(
            got,
            [
                "org.freedesktop.DBus.Error.UnknownObject",
                "org.freedesktop.DBus.Error.UnknownObject",
                "org.freedesktop.DBus.Error.UnknownProperty",
                "org.freedesktop.DBus.Error.PropertyReadOnly",
                "org.freedesktop.DBus.Error.UnknownInterface",
                "org.freedesktop.DBus.Error.UnknownMethod",
                "org.freedesktop.DBus.Error.InvalidArgs",
            ],
            "{cases:?}"
        );

        // Peer works on any path; a call may leave the interface out.
        assert_eq!(
            outcome(
                client,
                "/no/such/object",
                Some("org.freedesktop.DBus.Peer"),
                "Ping",
                &()
            )
            .await,
            "ok"
        );
        let reply = client
            .call_method(Some(BUS_NAME), ROOT_PATH, None::<&str>, "ListParents", &())
            .await
            .expect("ListParents without interface");
        let parents: Vec<zbus::OwnedObjectPath> = reply.body().deserialize().expect("ao");
        assert_eq!(parents.len(), 2);

        // Introspection lists the children of an intermediate node.
        let reply = client
            .call_method(
                Some(BUS_NAME),
                format!("{mtty}/type").as_str(),
                Some("org.freedesktop.DBus.Introspectable"),
                "Introspect",
                &(),
            )
            .await
            .expect("Introspect");
        let xml: String = reply.body().deserialize().expect("s");
        assert!(xml.contains("<node name=\"mtty_2d1\"/>"), "{xml}");
        assert!(xml.contains("<node name=\"mtty_2d2\"/>"), "{xml}");
        assert!(!xml.contains("org.mdevreg.MdevType1"), "{xml}");
    });
}

/// Reads all of a file descriptor handed over by the daemon.
fn read_fd(fd: zbus::OwnedFd) -> String {
    use std::io::Read;
    let mut file = std::fs::File::from(std::os::fd::OwnedFd::from(fd));
    let mut text = String::new();
    file.read_to_string(&mut text).expect("read the document");
    text
}

#[test]
fn documents_by_file_descriptor_match_the_calls() {
    run(
        "documents_by_file_descriptor_match_the_calls",
        &[],
        || async {
            let tree = tree();
            let setup = Setup::start(tree.root(), |_| {}).await;
            register_vgpu(&setup).await;
            let registry = setup.registry().await;

            // The types document: the same by string and by file, twice (the
            // second from the cache, read again from offset 0).
            let by_string = registry.dump_types("").await.expect("DumpTypes");
            for _ in 0..2 {
                let fd = registry
                    .dump_types_by_file_descriptor("")
                    .await
                    .expect("DumpTypesByFileDescriptor");
                assert_eq!(read_fd(fd), by_string);
            }
            let doc: serde_json::Value = serde_json::from_str(&by_string).expect("JSON");
            let names: Vec<&String> = doc[0].as_object().expect("object").keys().collect();
            assert_eq!(names, ["0000:00:02.0", "mtty", "vgpu0"]);

            // The parents document: every registered parent, or just one.
            let fd = registry
                .dump_parents_by_file_descriptor("")
                .await
                .expect("DumpParentsByFileDescriptor");
            let parents: Vec<mdevreg::model::Parent> =
                serde_json::from_str(&read_fd(fd)).expect("parents JSON");
            let listed: Vec<String> = registry
                .list_parents()
                .await
                .expect("ListParents")
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect();
            let dumped: Vec<String> = parents
                .iter()
                .map(|p| label::parent_path(p.name()))
                .collect();
            assert_eq!(dumped, listed);
            let fd = registry
                .dump_parents_by_file_descriptor("vgpu0")
                .await
                .expect("DumpParentsByFileDescriptor vgpu0");
            let one: Vec<mdevreg::model::Parent> =
                serde_json::from_str(&read_fd(fd)).expect("parents JSON");
            assert_eq!(one.len(), 1);
            assert_eq!(one[0].source, mdevreg::model::Source::Userspace);
            let ids: Vec<&str> = one[0].info.types.iter().map(|t| t.id.as_str()).collect();
            assert_eq!(ids, ["t-1", "t.2"]);
        },
    );
}
