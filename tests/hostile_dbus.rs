//! Hostile D-Bus input to a running `mdevregd`, table-driven: one row per
//! case, each sent as a raw message (so any variant type can be sent), each
//! expected to return its typed error while the registry (ListParents and
//! SeqNum) stays as it was and the daemon stays up. Valid registrations
//! before and after the table prove the daemon was not refusing everything.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::daemon::Setup;
use common::helper_process::{helper_role, helper_say, run_helper};
use common::prereq::run;
use common::registry_client;
use common::registry_client::{
    connect, error_name, good_type, lifetime, register_raw, unregister, Dict, BUS_NAME,
    ERROR_PREFIX, REGISTRY_IFACE, ROOT_PATH,
};
use common::sysfs_fixture::{FakeSysfs, ParentSpec};
use zbus::{ObjectPath, Variant};

const INVALID: &str = "InvalidArgument";
const LIMIT: &str = "LimitExceeded";
const TAKEN: &str = "AlreadyRegistered";
const NOT_OWNER: &str = "NotOwner";
const NOT_REGISTERED: &str = "NotRegistered";
const ACCESS_DENIED: &str = "AccessDenied";
/// zbus's reply to a body that does not match the method signature.
const INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";

const MIB: usize = 1 << 20;

/// The helper run as uid 65534: tries every mutating method and prints the
/// error names it gets.
#[test]
#[ignore = "entry point of helper processes (common::helper_process), not a test"]
fn helper_process() {
    match helper_role().as_deref() {
        None => {}
        Some("call-as-nobody") => call_as_nobody(),
        Some(other) => panic!("unknown helper role {other}"),
    }
}

fn call_as_nobody() {
    let address = std::env::var("MDEVREG_TEST_BUS").unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            helper_say(&format!("uid {}", nix::unistd::getuid()));
            let connection = connect(&address).await;
            let result = register_raw(
                &connection,
                "nobody-parent",
                &lifetime("persistent"),
                &[good_type("t-1")],
            )
            .await;
            helper_say(&format!("RegisterParent {}", outcome(result.map(|_| ()))));
            let result = unregister(&connection, "mtty").await;
            helper_say(&format!("UnregisterParent {}", outcome(result)));
            let result = unregister(&connection, "taken").await;
            helper_say(&format!("UnregisterParent-userspace {}", outcome(result)));
            let result = connection
                .call_method(
                    Some(BUS_NAME),
                    ROOT_PATH,
                    Some(REGISTRY_IFACE),
                    "Rescan",
                    &(),
                )
                .await;
            helper_say(&format!("Rescan {}", outcome(result.map(|_| ()))));
            // Reading stays open to everyone.
            let result = registry_client::list_parents(&connection).await;
            helper_say(&format!("ListParents {}", outcome(result.map(|_| ()))));
        });
}

fn outcome(result: zbus::Result<()>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(err) => error_name(&err),
    }
}

/// A string variant.
fn s(text: &str) -> Variant<'static> {
    Variant::from(text.to_owned())
}

fn dict(entries: Vec<(&'static str, Variant<'static>)>) -> Dict<'static> {
    entries.into_iter().collect()
}

/// `good_type(id)` with `key` replaced by `value` (or removed when `None`).
fn type_with(key: &'static str, value: Option<Variant<'static>>) -> Dict<'static> {
    let mut entry = good_type("t-1");
    match value {
        Some(value) => {
            entry.insert(key, value);
        }
        None => {
            entry.remove(key);
        }
    }
    entry
}

/// What a row calls.
enum Call {
    Register {
        name: String,
        options: Dict<'static>,
        types: Vec<Dict<'static>>,
    },
    /// `RegisterParent` with a body of another signature.
    RegisterWrongSignature(WrongBody),
    Unregister(String),
    GetParent(String),
}

enum WrongBody {
    NameAndNumber,
    StringOptions,
}

struct Row {
    label: String,
    call: Call,
    /// The short name (`InvalidArgument`) of an mdevreg error, or a full
    /// error name.
    expect: &'static str,
}

fn register(
    label: &str,
    name: &str,
    options: Dict<'static>,
    types: Vec<Dict<'static>>,
    expect: &'static str,
) -> Row {
    Row {
        label: label.to_owned(),
        call: Call::Register {
            name: name.to_owned(),
            options,
            types,
        },
        expect,
    }
}

/// Every hostile case, in the order run.
fn table() -> Vec<Row> {
    let no_options = Dict::new;
    let one_type = || vec![good_type("t-1")];
    let mut rows = Vec::new();

    // Names.
    for (label, name, expect) in [
        ("name with /", "a/b", INVALID),
        ("name ..", "..", INVALID),
        ("name .", ".", INVALID),
        ("name ../../etc/passwd", "../../etc/passwd", INVALID),
        ("name starting with /", "/abs", INVALID),
        ("name non-ASCII (Latin-1 range)", "grüße", INVALID),
        ("name non-ASCII (CJK)", "日本", INVALID),
        ("name empty", "", INVALID),
        ("name with space", "a b", INVALID),
        ("name with newline", "a\nb", INVALID),
        ("name with control byte", "\u{1}ctl", INVALID),
        ("name with backslash", "a\\b", INVALID),
    ] {
        rows.push(register(label, name, no_options(), one_type(), expect));
    }
    rows.push(register(
        "name of 256 bytes",
        &"x".repeat(256),
        no_options(),
        one_type(),
        INVALID,
    ));
    rows.push(register(
        "name of 4097 bytes",
        &"x".repeat(4097),
        no_options(),
        one_type(),
        LIMIT,
    ));
    rows.push(register(
        "name of 1 MiB",
        &"x".repeat(MIB),
        no_options(),
        one_type(),
        LIMIT,
    ));

    // Options: wrong variant types, bad values, unknown keys.
    let nested = Variant::Variant(Box::new(s("owner")));
    let object_path = Variant::from(ObjectPath::try_from("/devices/x").unwrap());
    for (label, options, expect) in [
        (
            "option DevPath of type u",
            dict(vec![("DevPath", Variant::from(3u32))]),
            INVALID,
        ),
        (
            "option Lifetime as nested variant",
            dict(vec![("Lifetime", nested)]),
            INVALID,
        ),
        (
            "option Subsystem of type as",
            dict(vec![("Subsystem", Variant::from(vec!["a", "b"]))]),
            INVALID,
        ),
        (
            "option Driver of type b",
            dict(vec![("Driver", Variant::from(true))]),
            INVALID,
        ),
        (
            "option DevPath of type o",
            dict(vec![("DevPath", object_path)]),
            INVALID,
        ),
        (
            "option Lifetime forever",
            dict(vec![("Lifetime", s("forever"))]),
            INVALID,
        ),
        (
            "unknown option Colour",
            dict(vec![("Colour", s("red"))]),
            INVALID,
        ),
        (
            "unknown option lifetime (case)",
            dict(vec![("lifetime", s("owner"))]),
            INVALID,
        ),
        (
            "option DevPath outside /devices",
            dict(vec![("DevPath", s("/etc/passwd"))]),
            INVALID,
        ),
        (
            "option DevPath with ..",
            dict(vec![("DevPath", s("/devices/../../etc"))]),
            INVALID,
        ),
        (
            "option DevPath of 1 MiB",
            dict(vec![(
                "DevPath",
                s(&format!("/devices/{}", "d".repeat(MIB))),
            )]),
            LIMIT,
        ),
        (
            "option Subsystem with /",
            dict(vec![("Subsystem", s("a/b"))]),
            INVALID,
        ),
        (
            "option Driver of 1 MiB",
            dict(vec![("Driver", s(&"d".repeat(MIB)))]),
            LIMIT,
        ),
    ] {
        rows.push(register(label, "hostile", options, one_type(), expect));
    }

    // Types.
    for (label, entry, expect) in [
        ("type without Id", type_with("Id", None), INVALID),
        (
            "type without DeviceApi",
            type_with("DeviceApi", None),
            INVALID,
        ),
        (
            "type AvailableInstances of type i",
            type_with("AvailableInstances", Some(Variant::from(4i32))),
            INVALID,
        ),
        (
            "type AvailableInstances of type s",
            type_with("AvailableInstances", Some(s("4"))),
            INVALID,
        ),
        (
            "type AvailableInstances of type t",
            type_with("AvailableInstances", Some(Variant::from(4u64))),
            INVALID,
        ),
        ("type Id with /", type_with("Id", Some(s("a/b"))), INVALID),
        ("type Id ..", type_with("Id", Some(s(".."))), INVALID),
        ("type Id empty", type_with("Id", Some(s(""))), INVALID),
        (
            "type Id non-ASCII",
            type_with("Id", Some(s("typ-é"))),
            INVALID,
        ),
        (
            "type Id of type ay",
            type_with("Id", Some(Variant::from(b"t-1".to_vec()))),
            INVALID,
        ),
        (
            "type Name of type u",
            type_with("Name", Some(Variant::from(1u32))),
            INVALID,
        ),
        (
            "unknown type key",
            type_with("Colour", Some(s("red"))),
            INVALID,
        ),
        (
            "type Description of 1 MiB",
            type_with("Description", Some(s(&"d".repeat(MIB)))),
            LIMIT,
        ),
        (
            "type Name of 1 MiB",
            type_with("Name", Some(s(&"n".repeat(MIB)))),
            LIMIT,
        ),
        (
            "type DeviceApi of 1 MiB",
            type_with("DeviceApi", Some(s(&"v".repeat(MIB)))),
            LIMIT,
        ),
        ("type entry empty", Dict::new(), INVALID),
    ] {
        rows.push(register(
            label,
            "hostile",
            no_options(),
            vec![entry],
            expect,
        ));
    }
    rows.push(register(
        "duplicate type Id",
        "hostile",
        no_options(),
        vec![good_type("t-1"), good_type("t-2"), good_type("t-1")],
        INVALID,
    ));
    rows.push(register(
        "bad type after 1000 good ones",
        "hostile",
        no_options(),
        (0..1000)
            .map(|i| good_type(&format!("t-{i}")))
            .chain([type_with("Id", None)])
            .collect(),
        INVALID,
    ));
    rows.push(register(
        "1025 types",
        "hostile",
        no_options(),
        (0..1025).map(|i| good_type(&format!("t-{i}"))).collect(),
        LIMIT,
    ));
    rows.push(register(
        "100,000 types",
        "hostile",
        no_options(),
        (0..100_000).map(|i| good_type(&format!("t-{i}"))).collect(),
        LIMIT,
    ));

    // Bodies of another signature.
    rows.push(Row {
        label: "body (su) instead of (sa{sv}aa{sv})".into(),
        call: Call::RegisterWrongSignature(WrongBody::NameAndNumber),
        expect: INVALID_ARGS,
    });
    rows.push(Row {
        label: "options a{ss} instead of a{sv}".into(),
        call: Call::RegisterWrongSignature(WrongBody::StringOptions),
        expect: INVALID_ARGS,
    });

    // Names in use, parents not ours, parents that do not exist.
    rows.push(register(
        "name of a kernel parent",
        "mtty",
        no_options(),
        one_type(),
        TAKEN,
    ));
    rows.push(register(
        "name of a userspace parent",
        "taken",
        lifetime("persistent"),
        one_type(),
        TAKEN,
    ));
    for (label, name, expect) in [
        ("unregister a kernel parent", "mtty", NOT_OWNER),
        ("unregister another owner's parent", "taken", NOT_OWNER),
        (
            "unregister an unknown parent",
            "nothing-here",
            NOT_REGISTERED,
        ),
        ("unregister ../mtty", "../mtty", NOT_REGISTERED),
        ("unregister 1 MiB name", &"x".repeat(MIB), NOT_REGISTERED),
    ] {
        rows.push(Row {
            label: label.into(),
            call: Call::Unregister(name.to_owned()),
            expect,
        });
    }
    rows.push(Row {
        label: "GetParent of an unknown parent".into(),
        call: Call::GetParent("nothing-here".into()),
        expect: NOT_REGISTERED,
    });
    rows.push(Row {
        label: "GetParent with /".into(),
        call: Call::GetParent("a/../mtty".into()),
        expect: NOT_REGISTERED,
    });
    rows
}

async fn call(connection: &zbus::Connection, call: &Call) -> zbus::Result<()> {
    match call {
        Call::Register {
            name,
            options,
            types,
        } => register_raw(connection, name, options, types)
            .await
            .map(|_| ()),
        Call::RegisterWrongSignature(body) => match body {
            WrongBody::NameAndNumber => connection
                .call_method(
                    Some(BUS_NAME),
                    ROOT_PATH,
                    Some(REGISTRY_IFACE),
                    "RegisterParent",
                    &("hostile", 5u32),
                )
                .await
                .map(|_| ()),
            WrongBody::StringOptions => {
                let options: HashMap<&str, &str> = HashMap::from([("Lifetime", "owner")]);
                let types: Vec<HashMap<&str, &str>> = vec![HashMap::from([("Id", "t-1")])];
                connection
                    .call_method(
                        Some(BUS_NAME),
                        ROOT_PATH,
                        Some(REGISTRY_IFACE),
                        "RegisterParent",
                        &("hostile", options, types),
                    )
                    .await
                    .map(|_| ())
            }
        },
        Call::Unregister(name) => unregister(connection, name).await,
        Call::GetParent(name) => connection
            .call_method(
                Some(BUS_NAME),
                ROOT_PATH,
                Some(REGISTRY_IFACE),
                "GetParent",
                &(name.as_str(),),
            )
            .await
            .map(|_| ()),
    }
}

fn full_name(expect: &str) -> String {
    if expect.contains('.') {
        expect.to_owned()
    } else {
        format!("{ERROR_PREFIX}{expect}")
    }
}

#[test]
fn hostile_dbus_input_gets_typed_errors() {
    run(
        "hostile_dbus_input_gets_typed_errors",
        &["setpriv"],
        || async {
            let tree = FakeSysfs::new();
            tree.add_parent(&ParentSpec::mtty());
            let mut setup = Setup::start(tree.root(), |options| options.emit = "none").await;

            // Another root client owns the userspace parent "taken".
            let other = connect(setup.bus.address()).await;
            register_raw(&other, "taken", &Dict::new(), &[good_type("t-1")])
                .await
                .expect("register taken");
            // Positive control: a valid registration works and can be undone.
            let path = register_raw(&setup.client, "control", &Dict::new(), &[good_type("t-1")])
                .await
                .expect("a valid registration is accepted");
            assert_eq!(path.as_str(), "/org/mdevreg/Registry1/parent/control");
            unregister(&setup.client, "control")
                .await
                .expect("unregister control");

            let rows = table();
            let mut failures = Vec::new();
            let started = Instant::now();
            for row in &rows {
                let before = setup.snapshot().await;
                let result = call(&setup.client, &row.call).await;
                setup.daemon.assert_alive(&row.label);
                let after = setup.snapshot().await;
                let wanted = full_name(row.expect);
                let got = match &result {
                    Ok(()) => "success".to_owned(),
                    Err(err) => error_name(err),
                };
                eprintln!(
                    "ROW {:<45} expect {:<17} got {}",
                    row.label, row.expect, got
                );
                if got != wanted {
                    failures.push(format!(
                        "{}: expected {wanted}, got {got} ({result:?})",
                        row.label
                    ));
                }
                if after != before {
                    failures.push(format!(
                        "{}: registry changed from {before:?} to {after:?}",
                        row.label
                    ));
                    // Undo a wrongly accepted registration so later rows start clean.
                    if let Call::Register { name, .. } = &row.call {
                        let _ = unregister(&setup.client, name).await;
                    }
                }
            }
            eprintln!("{} rows in {:?}", rows.len(), started.elapsed());

            // Unprivileged callers are refused every mutating method.
            let before = setup.snapshot().await;
            let lines = run_helper(
                "call-as-nobody",
                &[("MDEVREG_TEST_BUS", setup.bus.address().to_owned())],
                true,
            );
            let denied = full_name(ACCESS_DENIED);
            let expected_lines = [
                "uid 65534".to_owned(),
                format!("RegisterParent {denied}"),
                format!("UnregisterParent {denied}"),
                format!("UnregisterParent-userspace {denied}"),
                format!("Rescan {denied}"),
                "ListParents ok".to_owned(),
            ];
            for line in &lines {
                eprintln!("ROW uid 65534: {line}");
            }
            if lines != expected_lines {
                failures.push(format!(
                    "uid 65534: expected {expected_lines:?}, got {lines:?}"
                ));
            }
            if setup.snapshot().await != before {
                failures.push("uid 65534: registry changed".into());
            }

            // Too many parents for one owner: 256 pass, the 257th is refused and
            // changes nothing; when the owner leaves, all 256 go.
            let greedy = connect(setup.bus.address()).await;
            let before_greedy = setup.snapshot().await;
            for index in 0..256 {
                register_raw(
                    &greedy,
                    &format!("greedy-{index}"),
                    &Dict::new(),
                    &[good_type("t-1")],
                )
                .await
                .unwrap_or_else(|err| panic!("greedy-{index} of 256: {err}"));
            }
            let full = setup.snapshot().await;
            let result =
                register_raw(&greedy, "greedy-256", &Dict::new(), &[good_type("t-1")]).await;
            let got = result
                .as_ref()
                .map_or_else(error_name, |_| "success".to_owned());
            eprintln!(
                "ROW {:<45} expect {:<17} got {}",
                "257th parent of one owner", LIMIT, got
            );
            if got != full_name(LIMIT) {
                failures.push(format!(
                    "257th parent of one owner: expected {LIMIT}, got {got}"
                ));
            }
            if setup.snapshot().await != full {
                failures.push("257th parent of one owner: registry changed".into());
            }
            drop(greedy);
            let deadline = Instant::now() + Duration::from_secs(5);
            while setup.snapshot().await.parents != before_greedy.parents {
                assert!(
                    Instant::now() < deadline,
                    "the owner left but its parents stayed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }

            // Still serving: a valid registration after the whole table.
            register_raw(
                &setup.client,
                "control",
                &lifetime("persistent"),
                &[good_type("t-1")],
            )
            .await
            .expect("a valid registration after the hostile table");
            unregister(&setup.client, "control")
                .await
                .expect("unregister control");
            setup.daemon.assert_alive("after the hostile table");
            eprintln!(
                "TOTAL {} rows + 4 uid-65534 calls + 257-parent row, {} failures",
                rows.len(),
                failures.len()
            );
            assert!(
                failures.is_empty(),
                "hostile D-Bus rows failed:\n{}",
                failures.join("\n")
            );
        },
    );
}
