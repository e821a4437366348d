//! Checks the shipped `dbus/org.mdevreg.Registry1.xml` against what the
//! running `mdevregd` reports: the daemon on a private dbus-daemon serves a
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
use common::netns::missing_prerequisite;
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

/// One `<...>` tag: its name, attributes, and whether it closes (`</x>`) or
/// is self-closing (`<x/>`).
struct Tag {
    name: String,
    attrs: BTreeMap<String, String>,
    closing: bool,
    self_closing: bool,
}

fn tags(xml: &str) -> Vec<Tag> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        rest = &rest[start..];
        if rest.starts_with("<!--") {
            let end = rest.find("-->").expect("unterminated comment");
            rest = &rest[end + 3..];
            continue;
        }
        let end = rest.find('>').expect("unterminated tag");
        let body = &rest[1..end];
        rest = &rest[end + 1..];
        if body.starts_with('!') || body.starts_with('?') {
            continue;
        }
        let closing = body.starts_with('/');
        let self_closing = body.ends_with('/');
        let body = body.trim_start_matches('/').trim_end_matches('/');
        let (name, mut attr_text) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
        let mut attrs = BTreeMap::new();
        while let Some(eq) = attr_text.find('=') {
            let key = attr_text[..eq].trim().to_owned();
            let after = attr_text[eq + 1..].trim_start();
            let quote = after.chars().next().expect("attribute value");
            let value_end = after[1..].find(quote).expect("closing quote") + 1;
            attrs.insert(key, after[1..value_end].to_owned());
            attr_text = &after[value_end + 1..];
        }
        out.push(Tag {
            name: name.to_owned(),
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

fn have_tool(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

#[test]
fn shipped_introspection_matches_the_daemon() {
    const TEST: &str = "shipped_introspection_matches_the_daemon";
    for tool in ["dbus-daemon", "gdbus"] {
        if !have_tool(tool) {
            missing_prerequisite::<()>(TEST, &format!("{tool} not found in PATH"));
            return;
        }
    }
    let file_path: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/org.mdevreg.Registry1.xml");
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
