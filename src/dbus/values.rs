//! Property values of registry objects and the message bodies built from
//! them (`a{sv}`, `a{sa{sv}}`, `a{oa{sa{sv}}}`), serialised straight from
//! the registry's data: no intermediate maps or variant trees, so answering
//! `GetManagedObjects` over tens of thousands of types costs one pass and
//! the reply's own bytes.

use std::collections::{BTreeMap, HashMap};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use zbus::as_variant;
use zbus::{OwnedObjectPath, OwnedVariant, Signature, Type};

use super::interfaces::{all_values, Interface, Object, MDEV_TYPE1, PARENT1};
use crate::label;
use crate::model::{MdevType, Parent};
use crate::registry::Registry;

/// One property value, serialised as a variant.
#[derive(Debug, PartialEq)]
pub enum PropValue<'a> {
    Str(&'a str),
    U32(u32),
    U64(u64),
    Path(String),
    Paths(Vec<String>),
    Strs(&'a [String]),
    Counters(BTreeMap<String, u64>),
}

impl PropValue<'_> {
    /// The D-Bus signature of the value inside the variant.
    pub fn signature(&self) -> &'static str {
        match self {
            PropValue::Str(_) => "s",
            PropValue::U32(_) => "u",
            PropValue::U64(_) => "t",
            PropValue::Path(_) => "o",
            PropValue::Paths(_) => "ao",
            PropValue::Strs(_) => "as",
            PropValue::Counters(_) => "a{st}",
        }
    }
}

impl Type for PropValue<'_> {
    const SIGNATURE: &'static Signature = &Signature::Variant;
}

impl Serialize for PropValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            PropValue::Str(value) => as_variant::Serialize(value).serialize(serializer),
            PropValue::U32(value) => as_variant::Serialize(value).serialize(serializer),
            PropValue::U64(value) => as_variant::Serialize(value).serialize(serializer),
            PropValue::Path(path) => {
                as_variant::Serialize(&object_path(path)).serialize(serializer)
            }
            PropValue::Paths(paths) => {
                let paths: Vec<OwnedObjectPath> = paths.iter().map(|p| object_path(p)).collect();
                as_variant::Serialize(&paths).serialize(serializer)
            }
            PropValue::Strs(values) => as_variant::Serialize(values).serialize(serializer),
            // In key order (a BTreeMap serialises sorted), stable for readers.
            PropValue::Counters(counters) => as_variant::Serialize(counters).serialize(serializer),
        }
    }
}

/// An object path built from escaped labels (always valid).
fn object_path(path: &str) -> OwnedObjectPath {
    OwnedObjectPath::try_from(path).unwrap_or_else(|_| OwnedObjectPath::default())
}

/// `a{sv}`: properties by name.
#[derive(Debug, Default)]
pub struct PropMap<'a>(pub Vec<(&'static str, PropValue<'a>)>);

impl Type for PropMap<'_> {
    const SIGNATURE: &'static Signature = <HashMap<String, OwnedVariant>>::SIGNATURE;
}

impl Serialize for PropMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// `a{sa{sv}}`: one object's interfaces with their properties.
#[derive(Debug)]
pub struct IfaceMap<'a>(pub Vec<(&'static str, PropMap<'a>)>);

impl Type for IfaceMap<'_> {
    const SIGNATURE: &'static Signature =
        <HashMap<String, HashMap<String, OwnedVariant>>>::SIGNATURE;
}

impl Serialize for IfaceMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, props) in &self.0 {
            map.serialize_entry(name, props)?;
        }
        map.end()
    }
}

/// Every `org.mdevreg.Parent1` property of `parent`.
pub fn parent_props(parent: &Parent) -> PropMap<'_> {
    PropMap(all_values(&PARENT1, Object::Parent(parent)))
}

/// Object paths of `parent`'s types, in type id order.
pub fn type_paths(parent: &Parent) -> Vec<String> {
    let mut ids: Vec<&str> = parent.info.types.iter().map(|t| t.id.as_str()).collect();
    ids.sort_unstable();
    ids.into_iter()
        .map(|id| label::type_path(parent.name(), id))
        .collect()
}

/// Every `org.mdevreg.MdevType1` property of `mdev_type` of `parent_name`.
pub fn type_props<'a>(parent_name: &'a str, mdev_type: &'a MdevType) -> PropMap<'a> {
    PropMap(all_values(
        &MDEV_TYPE1,
        Object::Type {
            parent: parent_name,
            mdev_type,
        },
    ))
}

/// The interfaces of a parent object, for `InterfacesAdded` and
/// `GetManagedObjects`.
pub fn parent_ifaces(parent: &Parent) -> IfaceMap<'_> {
    IfaceMap(vec![(PARENT1.name, parent_props(parent))])
}

/// The interfaces of a type object.
pub fn type_ifaces<'a>(parent_name: &'a str, mdev_type: &'a MdevType) -> IfaceMap<'a> {
    IfaceMap(vec![(MDEV_TYPE1.name, type_props(parent_name, mdev_type))])
}

/// Only the properties of `all` named in `names` (for `PropertiesChanged`).
pub fn only<'a>(all: PropMap<'a>, names: &[&str]) -> PropMap<'a> {
    PropMap(
        all.0
            .into_iter()
            .filter(|(name, _)| names.contains(name))
            .collect(),
    )
}

/// The interface called `name` among `candidates`.
pub fn find_interface(candidates: &[&'static Interface], name: &str) -> Option<&'static Interface> {
    candidates.iter().copied().find(|i| i.name == name)
}

/// `a{oa{sa{sv}}}`: every parent and type object of `registry`.
pub struct ManagedObjects<'a>(pub &'a Registry);

impl Type for ManagedObjects<'_> {
    const SIGNATURE: &'static Signature =
        <HashMap<OwnedObjectPath, HashMap<String, HashMap<String, OwnedVariant>>>>::SIGNATURE;
}

impl Serialize for ManagedObjects<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let count = self
            .0
            .parents()
            .map(|p| 1 + p.info.types.len())
            .sum::<usize>();
        let mut map = serializer.serialize_map(Some(count))?;
        for parent in self.0.parents() {
            let path = label::parent_path(parent.name());
            map.serialize_entry(&object_path(&path), &parent_ifaces(parent))?;
            for mdev_type in &parent.info.types {
                let path = label::type_path(parent.name(), &mdev_type.id);
                map.serialize_entry(&object_path(&path), &type_ifaces(parent.name(), mdev_type))?;
            }
        }
        map.end()
    }
}
