//! Checks the shipped `dbus/org.mdevreg.Registry1.xml`: xmllint and
//! gdbus-codegen accept it; it describes the interface tables of
//! `src/dbus/interfaces.rs`; and it matches what the running `mdevregd`
//! reports: the daemon on a private dbus-daemon serves a
//! kernel parent from a fake sysfs tree, `gdbus introspect --xml` reads the
//! root, parent and type objects, and the `org.mdevreg.*` interfaces are
//! compared as normalised models (methods with their arguments' names, types
//! and directions, signals, properties with type, access and the
//! EmitsChangedSignal annotation). Standard `org.freedesktop.*` interfaces,
//! comments and documentation annotations are ignored; zbus leaves output
//! arguments unnamed, so an unnamed output argument matches any name.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::bus::DbusDaemon;
use common::prereq;
use common::sysfs_fixture::{FakeSysfs, ParentSpec};

const BUS_NAME: &str = "org.mdevreg.Registry1";
const ROOT_PATH: &str = "/org/mdevreg/Registry1";
const MTTY_PATH: &str = "/org/mdevreg/Registry1/parent/mtty";
const MTTY_TYPE_PATH: &str = "/org/mdevreg/Registry1/parent/mtty/type/mtty_2d1";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Arg {
    name: Option<String>,
    signature: String,
    direction: String,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Interface {
    methods: BTreeMap<String, Vec<Arg>>,
    signals: BTreeMap<String, Vec<Arg>>,
    /// name -> (type, access, EmitsChangedSignal or "true")
    properties: BTreeMap<String, (String, String, String)>,
}

/// One element: its name, attributes, and whether it closes (`</x>`) or
/// is empty (`<x/>`).
struct Tag {
    name: String,
    attrs: BTreeMap<String, String>,
    closing: bool,
    self_closing: bool,
}

/// The elements of `xml`, read by a real XML parser (quick-xml, with
/// comment and end-tag checks on); any well-formedness error panics with
/// its position.
fn tags(xml: &str) -> Vec<Tag> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().check_comments = true;
    reader.config_mut().check_end_names = true;
    let mut out = Vec::new();
    loop {
        let event = reader.read_event().unwrap_or_else(|err| {
            panic!(
                "not well-formed XML at byte {}: {err}",
                reader.error_position()
            )
        });
        let (element, closing, self_closing) = match event {
            Event::Start(element) => (element, false, false),
            Event::Empty(element) => (element, false, true),
            Event::End(end) => {
                out.push(Tag {
                    name: end.name().as_ref().to_owned(),
                    attrs: BTreeMap::new(),
                    closing: true,
                    self_closing: false,
                });
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let mut attrs = BTreeMap::new();
        for attr in element.attributes() {
            let attr = attr.expect("well-formed attribute");
            let value = attr
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .expect("attribute value");
            attrs.insert(attr.key.as_ref().to_owned(), value.into_owned());
        }
        out.push(Tag {
            name: element.name().as_ref().to_owned(),
            attrs,
            closing,
            self_closing,
        });
    }
    out
}

/// The `org.mdevreg.*` interfaces of an introspection document.
fn model(xml: &str) -> BTreeMap<String, Interface> {
    let mut interfaces = BTreeMap::new();
    let mut interface: Option<(String, Interface)> = None;
    // The member being read: ("method" | "signal" | "property", name).
    let mut member: Option<(String, String)> = None;
    for tag in tags(xml) {
        let attr = |key: &str| tag.attrs.get(key).cloned().unwrap_or_default();
        match (tag.name.as_str(), tag.closing) {
            ("interface", false) => interface = Some((attr("name"), Interface::default())),
            ("interface", true) => {
                let (name, parsed) = interface.take().expect("interface open");
                if name.starts_with("org.mdevreg.") {
                    interfaces.insert(name, parsed);
                }
            }
            ("method" | "signal" | "property", false) => {
                let (_, current) = interface.as_mut().expect("member inside an interface");
                let name = attr("name");
                match tag.name.as_str() {
                    "method" => {
                        current.methods.insert(name.clone(), Vec::new());
                    }
                    "signal" => {
                        current.signals.insert(name.clone(), Vec::new());
                    }
                    _ => {
                        current
                            .properties
                            .insert(name.clone(), (attr("type"), attr("access"), "true".into()));
                    }
                }
                if !tag.self_closing {
                    member = Some((tag.name.clone(), name));
                }
            }
            ("method" | "signal" | "property", true) => member = None,
            ("arg", false) => {
                let (_, current) = interface.as_mut().expect("arg inside an interface");
                let (kind, name) = member.as_ref().expect("arg inside a member");
                let default_direction = if kind == "method" { "in" } else { "out" };
                let arg = Arg {
                    name: tag.attrs.get("name").cloned(),
                    signature: attr("type"),
                    direction: tag
                        .attrs
                        .get("direction")
                        .cloned()
                        .unwrap_or_else(|| default_direction.to_owned()),
                };
                let args = if kind == "method" {
                    current.methods.get_mut(name)
                } else {
                    current.signals.get_mut(name)
                };
                args.expect("member recorded").push(arg);
            }
            ("annotation", false) => {
                if attr("name") != "org.freedesktop.DBus.Property.EmitsChangedSignal" {
                    continue;
                }
                if let (Some((_, current)), Some((kind, name))) = (interface.as_mut(), &member) {
                    if kind == "property" {
                        if let Some(property) = current.properties.get_mut(name) {
                            property.2 = attr("value");
                        }
                    }
                }
            }
            _ => {}
        }
    }
    interfaces
}

/// Lets an unnamed output argument of the daemon stand for the named one of
/// the file (zbus does not name output arguments).
fn adopt_out_arg_names(
    daemon: &mut BTreeMap<String, Interface>,
    file: &BTreeMap<String, Interface>,
) {
    for (iface_name, iface) in daemon.iter_mut() {
        let Some(file_iface) = file.get(iface_name) else {
            continue;
        };
        for (method, args) in iface.methods.iter_mut() {
            let Some(file_args) = file_iface.methods.get(method) else {
                continue;
            };
            for (arg, file_arg) in args.iter_mut().zip(file_args) {
                if arg.direction == "out" && arg.name.is_none() {
                    arg.name = file_arg.name.clone();
                }
            }
        }
    }
}

fn introspect(address: &str, path: &str) -> String {
    let output = Command::new("gdbus")
        .args([
            "introspect",
            "--xml",
            "--address",
            address,
            "--dest",
            BUS_NAME,
        ])
        .args(["--object-path", path])
        .stdin(Stdio::null())
        .output()
        .expect("run gdbus introspect");
    assert!(
        output.status.success(),
        "gdbus introspect {path}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn shipped_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/org.mdevreg.Registry1.xml")
}

/// `xmllint --noout` and `gdbus-codegen` (the tools a distribution and a
/// GLib client use on the installed file) accept the shipped XML.
#[test]
fn shipped_xml_is_accepted_by_xmllint_and_gdbus_codegen() {
    const TEST: &str = "shipped_xml_is_accepted_by_xmllint_and_gdbus_codegen";
    if !prereq::require_tools(TEST, &["xmllint", "gdbus-codegen"]) {
        return;
    }
    let file = shipped_path();
    let output = Command::new("xmllint")
        .arg("--noout")
        .arg(&file)
        .output()
        .expect("run xmllint");
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "xmllint --noout {}: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let out_dir = tempfile::tempdir().expect("output dir");
    let output = Command::new("gdbus-codegen")
        .current_dir(out_dir.path())
        .args([
            "--interface-prefix",
            "org.mdevreg.",
            "--c-namespace",
            "Mdevreg",
        ])
        .args(["--generate-c-code", "mdevreg-generated"])
        .arg(&file)
        .output()
        .expect("run gdbus-codegen");
    assert!(
        output.status.success(),
        "gdbus-codegen {}: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let header = std::fs::read_to_string(out_dir.path().join("mdevreg-generated.h"))
        .expect("generated header");
    for symbol in [
        "mdevreg_registry1_call_register_parent",
        "mdevreg_parent1_get_dev_path",
        "mdevreg_mdev_type1_get_available_instances",
    ] {
        assert!(header.contains(symbol), "gdbus-codegen made no {symbol}");
    }
}

/// The shipped file describes exactly the interfaces of
/// `mdevreg::dbus::interfaces` (the tables the daemon serves from).
#[test]
fn shipped_xml_matches_the_interface_tables() {
    use mdevreg::dbus::interfaces::{node_xml, MDEV_TYPE1, PARENT1, REGISTRY1};
    let file_model = model(&std::fs::read_to_string(shipped_path()).expect("read shipped XML"));
    let tables = model(&node_xml(&[&REGISTRY1, &PARENT1, &MDEV_TYPE1], true, None));
    assert_eq!(
        file_model.keys().collect::<Vec<_>>(),
        tables.keys().collect::<Vec<_>>()
    );
    for (name, table) in &tables {
        assert_eq!(
            &file_model[name], table,
            "{name}: dbus/org.mdevreg.Registry1.xml (left) differs from src/dbus/interfaces.rs (right)"
        );
    }
}

/// The parser the models use rejects what xmllint rejects (the bug the
/// old hand-written tag scanner missed).
#[test]
#[should_panic(expected = "not well-formed")]
fn model_rejects_double_hyphen_in_comments() {
    model("<node><!-- mdevctl types --dumpjson --></node>");
}

#[test]
fn shipped_introspection_matches_the_daemon() {
    const TEST: &str = "shipped_introspection_matches_the_daemon";
    if !prereq::require_tools(TEST, &["dbus-daemon", "gdbus"]) {
        return;
    }
    let file_path = shipped_path();
    let file_xml = std::fs::read_to_string(&file_path).expect("read shipped XML");
    let file_model = model(&file_xml);
    assert_eq!(
        file_model.keys().collect::<Vec<_>>(),
        [
            "org.mdevreg.MdevType1",
            "org.mdevreg.Parent1",
            "org.mdevreg.Registry1"
        ],
        "the shipped file describes all three interfaces"
    );

    let sysfs = FakeSysfs::new();
    sysfs.add_parent(&ParentSpec::mtty());
    let bus = DbusDaemon::start_permissive();
    let state = tempfile::tempdir().expect("state dir");
    let log_path = bus.dir().join("mdevregd.log");
    let log = std::fs::File::create(&log_path).expect("daemon log");
    let mut daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_mdevregd"))
            .args(["--bus", bus.address()])
            .arg("--sysfs-root")
            .arg(sysfs.root())
            .arg("--state-dir")
            .arg(state.path())
            .arg("--runtime-dir")
            .arg(state.path())
            .args(["--emit", "none", "--no-netlink"])
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn mdevregd"),
    );

    // Wait until the type object of the fake parent is served.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut served = BTreeMap::new();
    loop {
        if let Some(status) = daemon.0.try_wait().expect("try_wait") {
            panic!(
                "mdevregd exited ({status}); log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        let type_xml = Command::new("gdbus")
            .args([
                "introspect",
                "--xml",
                "--address",
                bus.address(),
                "--dest",
                BUS_NAME,
            ])
            .args(["--object-path", MTTY_TYPE_PATH])
            .stdin(Stdio::null())
            .output()
            .expect("run gdbus introspect");
        let text = String::from_utf8_lossy(&type_xml.stdout).into_owned();
        if type_xml.status.success() && text.contains("org.mdevreg.MdevType1") {
            served.extend(model(&text));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mdevregd never served {MTTY_TYPE_PATH}; log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        sleep(Duration::from_millis(100));
    }
    served.extend(model(&introspect(bus.address(), MTTY_PATH)));
    served.extend(model(&introspect(bus.address(), ROOT_PATH)));
    adopt_out_arg_names(&mut served, &file_model);

    for (name, shipped) in &file_model {
        let running = served
            .get(name)
            .unwrap_or_else(|| panic!("the daemon does not serve {name}"));
        assert_eq!(
            running,
            shipped,
            "{name}: the daemon (left) differs from {} (right)",
            file_path.display()
        );
    }
    assert_eq!(
        served.keys().collect::<Vec<_>>(),
        file_model.keys().collect::<Vec<_>>(),
        "the daemon serves an org.mdevreg interface the file lacks"
    );
}
