//! Output formats of the `types` and `list` commands: the exact document of
//! `mdevctl types --dumpjson` (1.2.0), mdevctl's `types` text, and mdevreg's
//! own `list` text and JSON. Pure functions from parents to text.
//!
//! The types JSON is printed in mdevctl's key order (`available_instances`,
//! `device_api`, `name`, `description`) with serde_json's pretty printer, as
//! mdevctl does, so the bytes match mdevctl's for the same tree.

use std::fmt::Write as _;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::{json, Value};

use crate::model::{MdevType, Parent, ParentInfo};

/// The `mdevctl types --dumpjson` document as a JSON value: `[]` without
/// parents, else `[ { "<parent>": [ { "<type-id>": {...} }, ... ], ... } ]`.
///
/// `only_parent` keeps just that parent (`[]` when it is not there), like
/// `mdevctl types --parent P --dumpjson`.
pub fn types_document(parents: &[ParentInfo], only_parent: Option<&str>) -> Value {
    serde_json::to_value(TypesDocument::new(parents, only_parent))
        .unwrap_or_else(|_| Value::Array(Vec::new()))
}

/// [`types_document`] printed as mdevctl prints it (pretty, mdevctl's key
/// order), without the final newline.
pub fn types_json_pretty(parents: &[ParentInfo], only_parent: Option<&str>) -> String {
    serde_json::to_string_pretty(&TypesDocument::new(parents, only_parent))
        .unwrap_or_else(|_| "[]".to_string())
}

/// [`types_json_pretty`] of borrowed parents (the daemon's registry),
/// written to `writer`.
pub fn write_types_json_pretty<'a>(
    writer: impl std::io::Write,
    parents: impl IntoIterator<Item = &'a ParentInfo>,
    only_parent: Option<&str>,
) -> std::io::Result<()> {
    let document = TypesDocument {
        parents: selected_parents(parents, only_parent),
    };
    serde_json::to_writer_pretty(writer, &document).map_err(std::io::Error::other)
}

/// `mdevctl types` text output, including its final empty line:
///
/// ```text
/// 0000:00:02.0
///   i915-GVTg_V5_4
///     Available instances: 2
///     Device API: vfio-pci
///     Name: GVTg_V5_4
///     Description: low_gm_size: 128MB, high_gm_size: 512MB
///
/// ```
pub fn types_text(parents: &[ParentInfo], only_parent: Option<&str>) -> String {
    let mut text = String::new();
    for parent in selected_parents(parents, only_parent) {
        let _ = writeln!(text, "{}", parent.name);
        for mdev_type in sorted_types(&parent.types) {
            let _ = writeln!(text, "  {}", mdev_type.id);
            let _ = writeln!(
                text,
                "    Available instances: {}",
                mdev_type.available_instances
            );
            let _ = writeln!(text, "    Device API: {}", mdev_type.device_api);
            if !mdev_type.name.is_empty() {
                let _ = writeln!(text, "    Name: {}", mdev_type.name);
            }
            if !mdev_type.description.is_empty() {
                let _ = writeln!(text, "    Description: {}", mdev_type.description);
            }
        }
    }
    text.push('\n');
    text
}

/// A kernel parent as the registry would hold it, for the direct (no
/// daemon) mode of `list`.
pub fn kernel_parent(info: ParentInfo) -> Parent {
    Parent {
        info,
        source: crate::model::Source::Kernel,
        owner: String::new(),
        lifetime: crate::model::Lifetime::Kernel,
        registered_seqnum: 0,
        uid: 0,
    }
}

/// One parent as a JSON object: `name`, `devpath`, `subsystem`, `driver`,
/// `backend`, `physical_device`, `source`, `owner`, `lifetime`, `types` (each with `id`, `name`,
/// `description`, `device_api`, `available_instances`, `devices`).
pub fn parent_json(parent: &Parent) -> Value {
    let types: Vec<Value> = sorted_types(&parent.info.types)
        .into_iter()
        .map(|t| {
            json!({
                "id": t.id,
                "name": t.name,
                "description": t.description,
                "device_api": t.device_api,
                "available_instances": t.available_instances,
                "devices": t.devices,
            })
        })
        .collect();
    json!({
        "name": parent.info.name,
        "devpath": parent.info.devpath,
        "subsystem": parent.info.subsystem,
        "driver": parent.info.driver,
        "backend": parent.info.backend.as_str(),
        "physical_device": parent.info.physical_device,
        "source": parent.source.as_str(),
        "owner": parent.owner,
        "lifetime": parent.lifetime.as_str(),
        "types": types,
    })
}

/// `list --json`: an array of [`parent_json`] objects sorted by name.
pub fn list_document(parents: &[Parent]) -> Value {
    let mut sorted: Vec<&Parent> = parents.iter().collect();
    sorted.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    Value::Array(sorted.into_iter().map(parent_json).collect())
}

/// One parent as text (the block `list` prints per parent, and `show`):
///
/// ```text
/// 0000:00:02.0
///   DevPath:   /devices/pci0000:00/0000:00:02.0
///   Subsystem: pci
///   Driver:    i915
///   Backend:   mdev
///   Source:    kernel
///   Types:
///     i915-GVTg_V5_4 (vfio-pci, 2 available) GVTg_V5_4
///       83b8f4f2-509f-382f-3c1e-e6bfe0fa1001
/// ```
///
/// `Physical:` (the PF of an SR-IOV VF) appears when there is one, `Owner:`
/// and `Lifetime:` lines for userspace parents. The instances of a
/// vendor-VFIO parent are the VF itself (its PCI address).
pub fn parent_text(parent: &Parent) -> String {
    let info = &parent.info;
    let mut text = String::new();
    let _ = writeln!(text, "{}", info.name);
    let _ = writeln!(text, "  DevPath:   {}", info.devpath);
    let _ = writeln!(text, "  Subsystem: {}", info.subsystem);
    if !info.driver.is_empty() {
        let _ = writeln!(text, "  Driver:    {}", info.driver);
    }
    let _ = writeln!(text, "  Backend:   {}", info.backend.as_str());
    if !info.physical_device.is_empty() {
        let _ = writeln!(text, "  Physical:  {}", info.physical_device);
    }
    let _ = writeln!(text, "  Source:    {}", parent.source.as_str());
    if parent.source != crate::model::Source::Kernel {
        let _ = writeln!(text, "  Lifetime:  {}", parent.lifetime.as_str());
        if !parent.owner.is_empty() {
            let _ = writeln!(text, "  Owner:     {}", parent.owner);
        }
    }
    if info.types.is_empty() {
        let _ = writeln!(text, "  Types:     none");
    } else {
        let _ = writeln!(text, "  Types:");
    }
    for t in sorted_types(&info.types) {
        let _ = write!(
            text,
            "    {} ({}, {} available)",
            t.id, t.device_api, t.available_instances
        );
        if !t.name.is_empty() {
            let _ = write!(text, " {}", t.name);
        }
        text.push('\n');
        for uuid in &t.devices {
            let _ = writeln!(text, "      {uuid}");
        }
    }
    text
}

/// `list` text: the [`parent_text`] blocks sorted by name, or a line saying
/// there are none.
pub fn list_text(parents: &[Parent]) -> String {
    if parents.is_empty() {
        return "No mdev parents.\n".to_string();
    }
    let mut sorted: Vec<&Parent> = parents.iter().collect();
    sorted.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    sorted
        .into_iter()
        .map(parent_text)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parents sorted by name, duplicates after the first dropped, filtered.
fn selected_parents<'a>(
    parents: impl IntoIterator<Item = &'a ParentInfo>,
    only_parent: Option<&str>,
) -> Vec<&'a ParentInfo> {
    let mut selected: Vec<&ParentInfo> = parents
        .into_iter()
        .filter(|p| only_parent.is_none_or(|name| p.name == name))
        .collect();
    selected.sort_by(|a, b| a.name.cmp(&b.name));
    selected.dedup_by(|a, b| a.name == b.name);
    selected
}

fn sorted_types(types: &[MdevType]) -> Vec<&MdevType> {
    let mut sorted: Vec<&MdevType> = types.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    sorted
}

/// The whole document; serialises in mdevctl's order.
struct TypesDocument<'a> {
    parents: Vec<&'a ParentInfo>,
}

impl<'a> TypesDocument<'a> {
    fn new(parents: &'a [ParentInfo], only_parent: Option<&str>) -> TypesDocument<'a> {
        TypesDocument {
            parents: selected_parents(parents, only_parent),
        }
    }
}

impl Serialize for TypesDocument<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.parents.is_empty() {
            return serializer.serialize_seq(Some(0))?.end();
        }
        let mut seq = serializer.serialize_seq(Some(1))?;
        seq.serialize_element(&ParentsObject(&self.parents))?;
        seq.end()
    }
}

/// `{ "<parent>": [ ... ], ... }`
struct ParentsObject<'a>(&'a [&'a ParentInfo]);

impl Serialize for ParentsObject<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for parent in self.0 {
            map.serialize_entry(&parent.name, &TypeList(sorted_types(&parent.types)))?;
        }
        map.end()
    }
}

/// `[ { "<type-id>": {...} }, ... ]`
struct TypeList<'a>(Vec<&'a MdevType>);

impl Serialize for TypeList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for mdev_type in &self.0 {
            seq.serialize_element(&TypeEntry(mdev_type))?;
        }
        seq.end()
    }
}

struct TypeEntry<'a>(&'a MdevType);

impl Serialize for TypeEntry<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(
            &t.id,
            &TypeFields {
                available_instances: t.available_instances,
                device_api: &t.device_api,
                name: &t.name,
                description: &t.description,
            },
        )?;
        map.end()
    }
}

#[derive(Serialize)]
struct TypeFields<'a> {
    available_instances: u32,
    device_api: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mdev_type(id: &str, name: &str, description: &str, avail: u32) -> MdevType {
        MdevType {
            id: id.into(),
            name: name.into(),
            description: description.into(),
            device_api: "vfio-pci".into(),
            available_instances: avail,
            devices: Vec::new(),
        }
    }

    fn parent(name: &str, types: Vec<MdevType>) -> ParentInfo {
        ParentInfo {
            name: name.to_string(),
            devpath: format!("/devices/virtual/x/{name}"),
            subsystem: "x".to_string(),
            driver: String::new(),
            backend: Default::default(),
            physical_device: String::new(),
            types,
        }
    }

    #[test]
    fn empty_is_empty_array() {
        assert_eq!(types_document(&[], None), json!([]));
        assert_eq!(types_json_pretty(&[], None), "[]");
        assert_eq!(types_text(&[], None), "\n");
    }

    #[test]
    fn document_shape_and_omitted_fields() {
        let parents = [
            parent("p2", vec![]),
            parent(
                "p1",
                vec![mdev_type("t-2", "", "", 0), mdev_type("t-1", "N", "D", 3)],
            ),
        ];
        assert_eq!(
            types_document(&parents, None),
            json!([{
                "p1": [
                    {"t-1": {"available_instances": 3, "device_api": "vfio-pci", "name": "N", "description": "D"}},
                    {"t-2": {"available_instances": 0, "device_api": "vfio-pci"}}
                ],
                "p2": []
            }])
        );
        assert_eq!(types_document(&parents, Some("p2")), json!([{ "p2": [] }]));
        assert_eq!(types_document(&parents, Some("p3")), json!([]));
    }

    #[test]
    fn pretty_output_uses_mdevctl_key_order() {
        let parents = [parent(
            "p1",
            vec![mdev_type("t-1", "N", "D", 4_000_000_000)],
        )];
        let expected = r#"[
  {
    "p1": [
      {
        "t-1": {
          "available_instances": 4000000000,
          "device_api": "vfio-pci",
          "name": "N",
          "description": "D"
        }
      }
    ]
  }
]"#;
        assert_eq!(types_json_pretty(&parents, None), expected);
    }

    #[test]
    fn text_matches_mdevctl_layout() {
        let parents = [
            parent(
                "p1",
                vec![
                    mdev_type("t-1", "N", "a, b", 7),
                    mdev_type("t-2", "", "", 0),
                ],
            ),
            parent("p2", vec![]),
        ];
        assert_eq!(
            types_text(&parents, None),
            "p1\n  t-1\n    Available instances: 7\n    Device API: vfio-pci\n    Name: N\n    Description: a, b\n  t-2\n    Available instances: 0\n    Device API: vfio-pci\np2\n\n"
        );
    }

    #[test]
    fn list_document_has_all_fields() {
        let mut info = parent("p1", vec![mdev_type("t-1", "N", "D", 1)]);
        info.types[0].devices = vec!["83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".to_string()];
        let doc = list_document(&[kernel_parent(info)]);
        assert_eq!(
            doc,
            json!([{
                "name": "p1",
                "devpath": "/devices/virtual/x/p1",
                "subsystem": "x",
                "driver": "",
                "backend": "mdev",
                "physical_device": "",
                "source": "kernel",
                "owner": "",
                "lifetime": "kernel",
                "types": [{
                    "id": "t-1", "name": "N", "description": "D", "device_api": "vfio-pci",
                    "available_instances": 1,
                    "devices": ["83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"]
                }]
            }])
        );
    }

    #[test]
    fn list_text_shows_types_and_devices() {
        let mut info = parent("p1", vec![mdev_type("t-1", "N", "D", 1)]);
        info.types[0].devices = vec!["83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".to_string()];
        let text = list_text(&[kernel_parent(info)]);
        assert!(
            text.starts_with("p1\n  DevPath:   /devices/virtual/x/p1\n"),
            "{text}"
        );
        assert!(
            text.contains("    t-1 (vfio-pci, 1 available) N\n      83b8f4f2-"),
            "{text}"
        );
        assert_eq!(list_text(&[]), "No mdev parents.\n");
    }
}
