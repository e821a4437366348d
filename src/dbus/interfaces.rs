//! The one source of truth for mdevreg's three D-Bus interfaces: their
//! methods, signals and properties (name, type, EmitsChangedSignal
//! behaviour and how each value is read from the registry), from which
//! everything else derives:
//!
//! - the introspection XML of every node ([`node_xml`]), which
//!   `tests/introspection_xml.rs` compares with the shipped
//!   `dbus/org.mdevreg.Registry1.xml` (checked with xmllint and
//!   gdbus-codegen) and with the running daemon;
//! - `Properties.Get`/`GetAll`, `GetManagedObjects` and `InterfacesAdded`
//!   (the `get` of each [`Property`]);
//! - `PropertiesChanged` (the properties whose value differs, compared
//!   through the same `get`);
//! - the in-argument check of every method call (a body whose signature is
//!   not the method's in-arguments gets `InvalidArgs`);
//! - the client proxies [`Registry1Proxy`], [`Parent1Proxy`] and
//!   [`MdevType1Proxy`]: each property's Rust type gives both the proxy
//!   accessor and the D-Bus signature in the tables.
//!
//! **Adding a property is a one-place change**: one line in the
//! `properties!` invocation of its interface below (accessor name, Rust
//! type, D-Bus name, [`Emits`], the expression reading it), plus the same
//! line in `dbus/org.mdevreg.Registry1.xml` (the test says what is
//! missing). Methods and signals are listed in the [`Interface`] constants
//! below; a new method also needs its arm in the server and the proxy.

use std::collections::HashMap;
use std::fmt::Write as _;

use zbus::zvariant::Type;
use zbus::Signature;
use zbus::{ObjectPath, OwnedObjectPath, OwnedVariant};

use super::errors::Error;
use super::values::{type_paths, PropValue};
use crate::daemon::Counters;
use crate::label;
use crate::model::{MdevType, Parent};
use crate::registry::Registry;

/// One argument of a method or signal.
#[derive(Debug)]
pub struct Arg {
    pub name: &'static str,
    pub signature: &'static str,
    /// Output argument of a method (signals' arguments have no direction).
    pub out: bool,
}

/// A method or a signal.
#[derive(Debug)]
pub struct Member {
    pub name: &'static str,
    pub args: &'static [Arg],
}

impl Member {
    /// The signature a call's body must have: the in-arguments, in order.
    pub fn in_signature(&self) -> String {
        self.args
            .iter()
            .filter(|arg| !arg.out)
            .map(|arg| arg.signature)
            .collect()
    }
}

/// How a property's changes are signalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emits {
    /// `PropertiesChanged` with the new value.
    Value,
    /// `PropertiesChanged` naming it as invalidated (a large value).
    Invalidates,
    /// Never changes.
    Const,
    /// Changes without a signal.
    Never,
}

/// The object a property is read from.
#[derive(Clone, Copy)]
pub enum Object<'a> {
    /// The root object: the registry and the daemon's counters.
    Root {
        registry: &'a Registry,
        stats: &'a Counters,
    },
    Parent(&'a Parent),
    Type {
        parent: &'a str,
        mdev_type: &'a MdevType,
    },
}

/// Reads a property of an object (`None`: the object has no such interface).
pub type Getter = for<'a> fn(Object<'a>) -> Option<PropValue<'a>>;

/// A read-only property.
pub struct Property {
    pub name: &'static str,
    /// From the Rust type the proxy reads it as.
    pub signature: &'static Signature,
    pub emits: Emits,
    pub get: Getter,
}

impl std::fmt::Debug for Property {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Property")
            .field("name", &self.name)
            .field("signature", &self.signature.to_string())
            .field("emits", &self.emits)
            .finish()
    }
}

/// One interface.
#[derive(Debug)]
pub struct Interface {
    pub name: &'static str,
    pub methods: &'static [Member],
    pub signals: &'static [Member],
    pub properties: &'static [Property],
}

impl Interface {
    /// The property called `name`.
    pub fn property(&self, name: &str) -> Option<&'static Property> {
        self.properties.iter().find(|p| p.name == name)
    }

    /// The method called `name`.
    pub fn method(&self, name: &str) -> Option<&'static Member> {
        self.methods.iter().find(|m| m.name == name)
    }
}

const fn arg_in(name: &'static str, signature: &'static str) -> Arg {
    Arg {
        name,
        signature,
        out: false,
    }
}

const fn arg_out(name: &'static str, signature: &'static str) -> Arg {
    Arg {
        name,
        signature,
        out: true,
    }
}

/// Declares the property table `$table` of an interface and its client
/// proxy `$proxy` from one list: for each property its proxy accessor, Rust
/// type (giving the D-Bus signature), D-Bus name, [`Emits`] and the
/// expression reading it from the object matched by `$object`. Items in
/// `methods { ... }` (methods, signals; `&self` is implied) are added to the
/// proxy trait.
macro_rules! properties {
    (
        $(#[$proxy_doc:meta])*
        proxy $proxy:ident ($($proxy_attr:tt)*);
        $table:ident for $object:pat => {
            $(
                $(#[$doc:meta])*
                $accessor:ident: $ty:ty = $name:literal, $emits:ident, $get:expr;
            )*
        }
        methods {
            $(
                $(#[$method_attr:meta])*
                fn $method:ident($($arg:ident: $arg_ty:ty),* $(,)?) -> $ret:ty;
            )*
        }
    ) => {
        const $table: &[Property] = &[
            $(
                Property {
                    name: $name,
                    signature: <$ty as Type>::SIGNATURE,
                    emits: Emits::$emits,
                    get: |object| match object {
                        #[allow(unused_variables)]
                        $object => Some($get),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    },
                },
            )*
        ];

        $(#[$proxy_doc])*
        #[zbus::proxy($($proxy_attr)*)]
        pub trait $proxy {
            $(
                $(#[$method_attr])*
                fn $method(&self, $($arg: $arg_ty),*) -> $ret;
            )*
            $(
                $(#[$doc])*
                #[zbus(property, name = $name)]
                fn $accessor(&self) -> zbus::Result<$ty>;
            )*
        }
    };
}

properties! {
    /// `org.mdevreg.Registry1` on the root object.
    proxy Registry1 (
        interface = "org.mdevreg.Registry1",
        default_service = "org.mdevreg.Registry1",
        default_path = "/org/mdevreg/Registry1"
    );
    REGISTRY1_PROPERTIES for Object::Root { registry, stats } => {
        /// Version of mdevregd.
        version: String = "Version", Const, PropValue::Str(env!("CARGO_PKG_VERSION"));
        /// Sequence number of the last registry event (shown: one whose
        /// state file is still being written is not counted yet).
        seq_num: u64 = "SeqNum", Never, PropValue::U64(stats.shown_seqnum());
        /// Object paths of all registered parents, sorted by name.
        parents: Vec<OwnedObjectPath> = "Parents", Invalidates, PropValue::Paths(
            registry.parents().map(|p| label::parent_path(p.name())).collect()
        );
        /// Daemon counters, keys in sorted order.
        stats: HashMap<String, u64> = "Stats", Never, PropValue::Counters(stats.snapshot());
    }
    methods {
        /// Object paths of all registered parents, sorted by name.
        fn list_parents() -> Result<Vec<OwnedObjectPath>, Error>;

        /// Object path of the parent called `name`.
        fn get_parent(name: &str) -> Result<OwnedObjectPath, Error>;

        /// Registers a userspace parent.
        fn register_parent(
            name: &str,
            options: HashMap<String, OwnedVariant>,
            types: Vec<HashMap<String, OwnedVariant>>,
        ) -> Result<OwnedObjectPath, Error>;

        /// Unregisters a userspace parent.
        fn unregister_parent(name: &str) -> Result<(), Error>;

        /// Re-reads all of sysfs and reconciles.
        fn rescan() -> Result<(), Error>;

        /// The `mdevctl types --dumpjson` document of the registry (pretty
        /// printed, no final newline); only `parent` if not empty.
        fn dump_types(parent: &str) -> Result<String, Error>;

        /// [`dump_types`](Self::dump_types) as a read-only file (offset 0).
        fn dump_types_by_file_descriptor(parent: &str) -> Result<zbus::OwnedFd, Error>;

        /// Every parent (only `parent` if not empty) as a JSON array of the
        /// registry's parents, in a read-only file (offset 0).
        fn dump_parents_by_file_descriptor(parent: &str) -> Result<zbus::OwnedFd, Error>;

        /// vGPU capacity of one physical device (all of them when
        /// `physical_device` is empty), aggregated over the parents sharing
        /// it: per type its id, name, how many more the siblings list as
        /// creatable now (an upper bound) and how many they hold. Not a PCI
        /// address: `InvalidArgument`; no parent on it: `NotRegistered`.
        fn get_capacity(physical_device: &str) -> Result<Vec<(String, String, u32, u32)>, Error>;

        /// A parent was registered (source `kernel` or `userspace`).
        #[zbus(signal)]
        fn parent_registered(
            parent: ObjectPath<'_>,
            name: &str,
            source: &str,
            seqnum: u64,
        ) -> zbus::Result<()>;

        /// A parent was unregistered (source `kernel` or `userspace`).
        #[zbus(signal)]
        fn parent_unregistered(
            parent: ObjectPath<'_>,
            name: &str,
            source: &str,
            seqnum: u64,
        ) -> zbus::Result<()>;
    }
}

properties! {
    /// `org.mdevreg.Parent1` on a parent object.
    proxy Parent1 (
        interface = "org.mdevreg.Parent1",
        default_service = "org.mdevreg.Registry1"
    );
    PARENT1_PROPERTIES for Object::Parent(parent) => {
        name: String = "Name", Const, PropValue::Str(parent.name());
        dev_path: String = "DevPath", Value, PropValue::Str(&parent.info.devpath);
        subsystem: String = "Subsystem", Value, PropValue::Str(&parent.info.subsystem);
        driver: String = "Driver", Value, PropValue::Str(&parent.info.driver);
        /// `mdev` or `nvidia-vfio` (NVIDIA vendor-specific VFIO).
        backend: String = "Backend", Value, PropValue::Str(parent.info.backend.as_str());
        /// PCI address of the physical function (from `physfn`), empty when none.
        physical_device: String = "PhysicalDevice", Value,
            PropValue::Str(&parent.info.physical_device);
        /// `kernel` or `userspace`.
        source: String = "Source", Const, PropValue::Str(parent.source.as_str());
        /// Unique bus name of the owner (empty for kernel parents).
        owner: String = "Owner", Value, PropValue::Str(&parent.owner);
        lifetime: String = "Lifetime", Const, PropValue::Str(parent.lifetime.as_str());
        registered_seq_num: u64 = "RegisteredSeqNum", Const,
            PropValue::U64(parent.registered_seqnum);
        /// Object paths of the parent's types, in type id order.
        types: Vec<OwnedObjectPath> = "Types", Value, PropValue::Paths(type_paths(parent));
    }
    methods {}
}

properties! {
    /// `org.mdevreg.MdevType1` on a type object.
    proxy MdevType1 (
        interface = "org.mdevreg.MdevType1",
        default_service = "org.mdevreg.Registry1"
    );
    MDEV_TYPE1_PROPERTIES for Object::Type { parent, mdev_type } => {
        id: String = "Id", Const, PropValue::Str(&mdev_type.id);
        name: String = "Name", Value, PropValue::Str(&mdev_type.name);
        description: String = "Description", Value, PropValue::Str(&mdev_type.description);
        device_api: String = "DeviceApi", Value, PropValue::Str(&mdev_type.device_api);
        available_instances: u32 = "AvailableInstances", Value,
            PropValue::U32(mdev_type.available_instances);
        /// UUIDs of the type's mdev instances.
        devices: Vec<String> = "Devices", Value, PropValue::Strs(&mdev_type.devices);
        parent: OwnedObjectPath = "Parent", Const, PropValue::Path(label::parent_path(parent));
    }
    methods {}
}

const PARENT_SIGNAL_ARGS: &[Arg] = &[
    arg_in("parent", "o"),
    arg_in("name", "s"),
    arg_in("source", "s"),
    arg_in("seqnum", "t"),
];

/// `org.mdevreg.Registry1` on the root object.
pub const REGISTRY1: Interface = Interface {
    name: "org.mdevreg.Registry1",
    methods: &[
        Member {
            name: "ListParents",
            args: &[arg_out("parents", "ao")],
        },
        Member {
            name: "GetParent",
            args: &[arg_in("name", "s"), arg_out("parent", "o")],
        },
        Member {
            name: "RegisterParent",
            args: &[
                arg_in("name", "s"),
                arg_in("options", "a{sv}"),
                arg_in("types", "aa{sv}"),
                arg_out("parent", "o"),
            ],
        },
        Member {
            name: "UnregisterParent",
            args: &[arg_in("name", "s")],
        },
        Member {
            name: "Rescan",
            args: &[],
        },
        Member {
            name: "DumpTypes",
            args: &[arg_in("parent", "s"), arg_out("document", "s")],
        },
        Member {
            name: "DumpTypesByFileDescriptor",
            args: &[arg_in("parent", "s"), arg_out("document", "h")],
        },
        Member {
            name: "DumpParentsByFileDescriptor",
            args: &[arg_in("parent", "s"), arg_out("document", "h")],
        },
        Member {
            name: "GetCapacity",
            args: &[
                arg_in("physical_device", "s"),
                arg_out("capacity", "a(ssuu)"),
            ],
        },
    ],
    signals: &[
        Member {
            name: "ParentRegistered",
            args: PARENT_SIGNAL_ARGS,
        },
        Member {
            name: "ParentUnregistered",
            args: PARENT_SIGNAL_ARGS,
        },
    ],
    properties: REGISTRY1_PROPERTIES,
};

/// `org.mdevreg.Parent1` on each parent object.
pub const PARENT1: Interface = Interface {
    name: "org.mdevreg.Parent1",
    methods: &[],
    signals: &[],
    properties: PARENT1_PROPERTIES,
};

/// `org.mdevreg.MdevType1` on each type object.
pub const MDEV_TYPE1: Interface = Interface {
    name: "org.mdevreg.MdevType1",
    methods: &[],
    signals: &[],
    properties: MDEV_TYPE1_PROPERTIES,
};

pub const PEER: &str = "org.freedesktop.DBus.Peer";
pub const INTROSPECTABLE: &str = "org.freedesktop.DBus.Introspectable";
pub const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
pub const OBJECT_MANAGER: &str = "org.freedesktop.DBus.ObjectManager";

/// In-arguments of the standard interfaces' methods that mdevreg answers.
const STANDARD_METHODS: &[(&str, &str, &str)] = &[
    (PEER, "Ping", ""),
    (PEER, "GetMachineId", ""),
    (INTROSPECTABLE, "Introspect", ""),
    (PROPERTIES, "Get", "ss"),
    (PROPERTIES, "GetAll", "s"),
    (PROPERTIES, "Set", "ssv"),
    (OBJECT_MANAGER, "GetManagedObjects", ""),
];

/// The signature the body of a call of `interface.member` must have (its
/// in-arguments, without parentheses); `None` if there is no such method.
pub fn call_signature(interface: &str, member: &str) -> Option<String> {
    if let Some((_, _, signature)) = STANDARD_METHODS
        .iter()
        .find(|(i, m, _)| *i == interface && *m == member)
    {
        return Some((*signature).to_owned());
    }
    [&REGISTRY1, &PARENT1, &MDEV_TYPE1]
        .into_iter()
        .find(|i| i.name == interface)?
        .method(member)
        .map(Member::in_signature)
}

/// The standard interfaces every node has.
const STANDARD_XML: &str = r#"  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping">
    </method>
    <method name="GetMachineId">
      <arg type="s" direction="out"/>
    </method>
  </interface>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect">
      <arg type="s" direction="out"/>
    </method>
  </interface>
  <interface name="org.freedesktop.DBus.Properties">
    <method name="Get">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="property_name" type="s" direction="in"/>
      <arg type="v" direction="out"/>
    </method>
    <method name="Set">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="property_name" type="s" direction="in"/>
      <arg name="value" type="v" direction="in"/>
    </method>
    <method name="GetAll">
      <arg name="interface_name" type="s" direction="in"/>
      <arg type="a{sv}" direction="out"/>
    </method>
    <signal name="PropertiesChanged">
      <arg name="interface_name" type="s"/>
      <arg name="changed_properties" type="a{sv}"/>
      <arg name="invalidated_properties" type="as"/>
    </signal>
  </interface>
"#;

const OBJECT_MANAGER_XML: &str = r#"  <interface name="org.freedesktop.DBus.ObjectManager">
    <method name="GetManagedObjects">
      <arg type="a{oa{sa{sv}}}" direction="out"/>
    </method>
    <signal name="InterfacesAdded">
      <arg name="object_path" type="o"/>
      <arg name="interfaces_and_properties" type="a{sa{sv}}"/>
    </signal>
    <signal name="InterfacesRemoved">
      <arg name="object_path" type="o"/>
      <arg name="interfaces" type="as"/>
    </signal>
  </interface>
"#;

/// Introspection XML of a node with `interfaces` (besides the standard
/// ones), the ObjectManager if `object_manager`, and `children`.
pub fn node_xml<'a>(
    interfaces: &[&Interface],
    object_manager: bool,
    children: impl IntoIterator<Item = &'a str>,
) -> String {
    let mut xml = String::from(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \
         \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>\n",
    );
    xml.push_str(STANDARD_XML);
    if object_manager {
        xml.push_str(OBJECT_MANAGER_XML);
    }
    for interface in interfaces {
        interface_xml(interface, &mut xml);
    }
    for child in children {
        let _ = writeln!(xml, "  <node name=\"{child}\"/>");
    }
    xml.push_str("</node>\n");
    xml
}

fn interface_xml(interface: &Interface, xml: &mut String) {
    let _ = writeln!(xml, "  <interface name=\"{}\">", interface.name);
    for method in interface.methods {
        let _ = writeln!(xml, "    <method name=\"{}\">", method.name);
        for arg in method.args {
            let direction = if arg.out { "out" } else { "in" };
            let _ = writeln!(
                xml,
                "      <arg name=\"{}\" type=\"{}\" direction=\"{direction}\"/>",
                arg.name, arg.signature
            );
        }
        xml.push_str("    </method>\n");
    }
    for signal in interface.signals {
        let _ = writeln!(xml, "    <signal name=\"{}\">", signal.name);
        for arg in signal.args {
            let _ = writeln!(
                xml,
                "      <arg name=\"{}\" type=\"{}\"/>",
                arg.name, arg.signature
            );
        }
        xml.push_str("    </signal>\n");
    }
    for property in interface.properties {
        let annotation = match property.emits {
            Emits::Value => None,
            Emits::Invalidates => Some("invalidates"),
            Emits::Const => Some("const"),
            Emits::Never => Some("false"),
        };
        match annotation {
            None => {
                let _ = writeln!(
                    xml,
                    "    <property name=\"{}\" type=\"{}\" access=\"read\"/>",
                    property.name, property.signature
                );
            }
            Some(value) => {
                let _ = writeln!(
                    xml,
                    "    <property name=\"{}\" type=\"{}\" access=\"read\">\n      \
                     <annotation name=\"org.freedesktop.DBus.Property.EmitsChangedSignal\" \
                     value=\"{value}\"/>\n    </property>",
                    property.name, property.signature
                );
            }
        }
    }
    xml.push_str("  </interface>\n");
}

/// The value of every property of `interface` on `object`, in table order
/// (empty if `object` does not have `interface`).
pub fn all_values<'a>(
    interface: &Interface,
    object: Object<'a>,
) -> Vec<(&'static str, PropValue<'a>)> {
    interface
        .properties
        .iter()
        .filter_map(|property| (property.get)(object).map(|value| (property.name, value)))
        .collect()
}

/// The names of the properties of `interface` that signal their new value
/// (`Emits::Value`) and whose value differs between `before` and `after`.
pub fn changed_values(
    interface: &Interface,
    before: Object<'_>,
    after: Object<'_>,
) -> Vec<&'static str> {
    interface
        .properties
        .iter()
        .filter(|property| property.emits == Emits::Value)
        .filter(|property| (property.get)(before) != (property.get)(after))
        .map(|property| property.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Lifetime, ParentInfo, Source};

    fn sample() -> Parent {
        Parent {
            info: ParentInfo {
                name: "mtty".into(),
                devpath: "/devices/virtual/mtty/mtty".into(),
                subsystem: "mtty".into(),
                driver: "mtty".into(),
                backend: Default::default(),
                physical_device: String::new(),
                types: vec![MdevType {
                    id: "mtty-1".into(),
                    name: "Single port".into(),
                    description: "".into(),
                    device_api: "vfio-pci".into(),
                    available_instances: 3,
                    devices: vec!["83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".into()],
                }],
            },
            source: Source::Kernel,
            owner: String::new(),
            lifetime: Lifetime::Kernel,
            registered_seqnum: 1,
            uid: 0,
        }
    }

    #[test]
    fn signatures_parse() {
        for interface in [&REGISTRY1, &PARENT1, &MDEV_TYPE1] {
            for member in interface.methods.iter().chain(interface.signals) {
                for arg in member.args {
                    assert!(
                        zbus::Signature::try_from(arg.signature).is_ok(),
                        "{}.{}",
                        interface.name,
                        member.name
                    );
                }
            }
        }
    }

    /// Every getter yields a value of its declared (proxy) type, on its own
    /// object only.
    #[test]
    fn getters_match_declared_types() {
        let parent = sample();
        let registry = Registry::new();
        let stats = Counters::new();
        stats.bump(crate::daemon::Counter::UeventsReceived);
        let objects = [
            (
                &REGISTRY1,
                Object::Root {
                    registry: &registry,
                    stats: &stats,
                },
            ),
            (&PARENT1, Object::Parent(&parent)),
            (
                &MDEV_TYPE1,
                Object::Type {
                    parent: "mtty",
                    mdev_type: &parent.info.types[0],
                },
            ),
        ];
        for (interface, object) in objects {
            let values = all_values(interface, object);
            assert_eq!(
                values.len(),
                interface.properties.len(),
                "{}",
                interface.name
            );
            for (property, (name, value)) in interface.properties.iter().zip(&values) {
                assert_eq!(property.name, *name);
                assert_eq!(
                    value.signature(),
                    property.signature.to_string(),
                    "{}.{name}",
                    interface.name
                );
            }
            for (other, other_object) in objects {
                if !std::ptr::eq(other, interface) {
                    assert!(all_values(interface, other_object).is_empty());
                }
            }
        }
    }

    #[test]
    fn changed_values_compare_through_getters() {
        let before = sample();
        let mut after = before.clone();
        after.owner = ":1.5".into();
        after.info.driver = "other".into();
        assert_eq!(
            changed_values(&PARENT1, Object::Parent(&before), Object::Parent(&after)),
            ["Driver", "Owner"]
        );
        let mut mdev_type = before.info.types[0].clone();
        mdev_type.available_instances = 2;
        assert_eq!(
            changed_values(
                &MDEV_TYPE1,
                Object::Type {
                    parent: "mtty",
                    mdev_type: &before.info.types[0]
                },
                Object::Type {
                    parent: "mtty",
                    mdev_type: &mdev_type
                }
            ),
            ["AvailableInstances"]
        );
    }

    #[test]
    fn call_signatures() {
        assert_eq!(call_signature(PROPERTIES, "Get").as_deref(), Some("ss"));
        assert_eq!(call_signature(PEER, "Ping").as_deref(), Some(""));
        assert_eq!(
            call_signature(REGISTRY1.name, "GetParent").as_deref(),
            Some("s")
        );
        assert_eq!(call_signature(PARENT1.name, "Frob"), None);
        assert_eq!(call_signature("org.example.Other", "Ping"), None);
    }

    #[test]
    fn in_signatures() {
        assert_eq!(
            REGISTRY1.method("RegisterParent").unwrap().in_signature(),
            "sa{sv}aa{sv}"
        );
        assert_eq!(REGISTRY1.method("Rescan").unwrap().in_signature(), "");
        assert_eq!(REGISTRY1.method("ListParents").unwrap().in_signature(), "");
    }

    #[test]
    fn xml_lists_interfaces_and_children() {
        let xml = node_xml(&[&PARENT1], false, ["type"]);
        assert!(xml.contains("<interface name=\"org.mdevreg.Parent1\">"));
        assert!(xml.contains("<property name=\"Types\" type=\"ao\" access=\"read\"/>"));
        assert!(xml.contains("value=\"const\""));
        assert!(xml.contains("<node name=\"type\"/>"));
        assert!(!xml.contains("ObjectManager"));
        assert_eq!(xml.matches("<interface ").count(), 4);
    }
}
