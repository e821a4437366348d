//! The shape of mdevreg's three D-Bus interfaces as data (methods, signals,
//! properties with their EmitsChangedSignal behaviour), and the
//! introspection XML built from it for every node of the object tree.
//!
//! The server answers `Properties.GetAll` and `Introspect` from these tables,
//! so what is announced and what is served cannot drift apart;
//! `tests/introspection_xml.rs` checks the shipped XML against the daemon.

use std::fmt::Write as _;

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

/// A read-only property.
#[derive(Debug)]
pub struct Property {
    pub name: &'static str,
    pub signature: &'static str,
    pub emits: Emits,
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

const fn prop(name: &'static str, signature: &'static str, emits: Emits) -> Property {
    Property {
        name,
        signature,
        emits,
    }
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
    properties: &[
        prop("Version", "s", Emits::Const),
        prop("SeqNum", "t", Emits::Value),
        prop("Parents", "ao", Emits::Invalidates),
        prop("Stats", "a{st}", Emits::Never),
    ],
};

/// `org.mdevreg.Parent1` on each parent object.
pub const PARENT1: Interface = Interface {
    name: "org.mdevreg.Parent1",
    methods: &[],
    signals: &[],
    properties: &[
        prop("Name", "s", Emits::Const),
        prop("DevPath", "s", Emits::Value),
        prop("Subsystem", "s", Emits::Value),
        prop("Driver", "s", Emits::Value),
        prop("Source", "s", Emits::Const),
        prop("Owner", "s", Emits::Value),
        prop("Lifetime", "s", Emits::Const),
        prop("RegisteredSeqNum", "t", Emits::Const),
        prop("Types", "ao", Emits::Value),
    ],
};

/// `org.mdevreg.MdevType1` on each type object.
pub const MDEV_TYPE1: Interface = Interface {
    name: "org.mdevreg.MdevType1",
    methods: &[],
    signals: &[],
    properties: &[
        prop("Id", "s", Emits::Const),
        prop("Name", "s", Emits::Value),
        prop("Description", "s", Emits::Value),
        prop("DeviceApi", "s", Emits::Value),
        prop("AvailableInstances", "u", Emits::Value),
        prop("Devices", "as", Emits::Value),
        prop("Parent", "o", Emits::Const),
    ],
};

pub const PEER: &str = "org.freedesktop.DBus.Peer";
pub const INTROSPECTABLE: &str = "org.freedesktop.DBus.Introspectable";
pub const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
pub const OBJECT_MANAGER: &str = "org.freedesktop.DBus.ObjectManager";

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

#[cfg(test)]
mod tests {
    use super::*;

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
            for property in interface.properties {
                assert!(zbus::Signature::try_from(property.signature).is_ok());
            }
        }
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
