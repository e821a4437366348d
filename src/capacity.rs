//! vGPU capacity per physical GPU: the types of all parents that share one
//! physical device (the SR-IOV siblings of a PF, for both backends),
//! aggregated per type. Pure functions from parents to figures and text,
//! used by the daemon's `GetCapacity` and by `mdevreg capacity`.
//!
//! What the figures mean:
//! - `creatable`: the sum of the siblings' `AvailableInstances` for the
//!   type. A vendor-VFIO VF lists a type (and counts 1) while one more vGPU
//!   of it can be placed on the GPU, so with N free VFs listing it the
//!   figure is N. It is an **upper bound, not a promise**: the VFs share one
//!   framebuffer, and placing one vGPU shrinks the others' lists (to types
//!   of the same size in the default homogeneous mode; a type using the
//!   whole framebuffer empties them). Mixing sizes, the figures for
//!   different types cannot be added up either.
//! - `holding`: how many instances of the type exist on the GPU's parents
//!   (for vendor VFIO: VFs holding a vGPU of the type).
//!
//! A parent's physical device is its `PhysicalDevice` (the `physfn` link)
//! when it has one; a PCI parent without one (a GPU without SR-IOV, in mdev
//! mode) is its own physical device; other parents (sample drivers, s390,
//! userspace parents) have none and are left out.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::model::ParentInfo;

/// One type on one physical device (or on all of them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CapacityRow {
    /// Type id (`nvidia-1145`).
    pub id: String,
    /// Type name, the first non-empty one among the siblings.
    pub name: String,
    /// Sum of the siblings' available instances (an upper bound).
    pub creatable: u32,
    /// Instances of the type on the siblings.
    pub holding: u32,
}

/// The types of one physical device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PhysicalCapacity {
    /// PCI address of the physical device.
    pub physical_device: String,
    /// Parents (VFs, or the device itself) sharing it, sorted.
    pub parents: Vec<String>,
    /// Per type, sorted by id.
    pub types: Vec<CapacityRow>,
}

/// The physical device `info` belongs to (see the module doc).
pub fn physical_device_of(info: &ParentInfo) -> Option<&str> {
    if !info.physical_device.is_empty() {
        Some(&info.physical_device)
    } else if info.subsystem == "pci" {
        Some(&info.name)
    } else {
        None
    }
}

/// Capacity of every physical device, sorted by address.
pub fn by_physical_device<'a>(
    parents: impl IntoIterator<Item = &'a ParentInfo>,
) -> Vec<PhysicalCapacity> {
    let mut devices: BTreeMap<&str, (Vec<String>, BTreeMap<String, CapacityRow>)> = BTreeMap::new();
    for info in parents {
        let Some(physical) = physical_device_of(info) else {
            continue;
        };
        let (names, rows) = devices.entry(physical).or_default();
        names.push(info.name.clone());
        add_types(rows, info);
    }
    devices
        .into_iter()
        .map(|(physical, (mut names, rows))| {
            names.sort();
            PhysicalCapacity {
                physical_device: physical.to_string(),
                parents: names,
                types: rows.into_values().collect(),
            }
        })
        .collect()
}

/// Why `GetCapacity(physical_device)` gives no rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryError {
    /// Not empty and not a PCI address as sysfs writes it.
    Malformed,
    /// No registered parent is on that physical device.
    Unknown,
}

/// Whether `name` is a PCI address as sysfs writes it: `DDDD:BB:DD.F`,
/// lowercase hex, a domain of 4 to 8 digits (VMD domains have 5), function
/// 0 to 7.
pub fn is_pci_address(name: &str) -> bool {
    let hex = |part: &str, min: usize, max: usize| {
        (min..=max).contains(&part.len())
            && part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let Some((rest, function)) = name.rsplit_once('.') else {
        return false;
    };
    let mut parts = rest.split(':');
    let (Some(domain), Some(bus), Some(device), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    hex(domain, 4, 8)
        && hex(bus, 2, 2)
        && hex(device, 2, 2)
        && function.len() == 1
        && (b'0'..=b'7').contains(&function.as_bytes()[0])
}

/// `GetCapacity(physical_device)`: the types of that physical device, or
/// with `""` of all physical devices together (empty when there is none).
/// A name that is not a PCI address is [`QueryError::Malformed`]; one that
/// no parent is on, [`QueryError::Unknown`] (a device whose parents list
/// no type gives no rows and no error).
pub fn query<'a>(
    parents: impl IntoIterator<Item = &'a ParentInfo>,
    physical_device: &str,
) -> Result<Vec<CapacityRow>, QueryError> {
    if physical_device.is_empty() {
        return Ok(rows_for(parents, ""));
    }
    if !is_pci_address(physical_device) {
        return Err(QueryError::Malformed);
    }
    let on_it: Vec<&ParentInfo> = parents
        .into_iter()
        .filter(|info| physical_device_of(info) == Some(physical_device))
        .collect();
    if on_it.is_empty() {
        return Err(QueryError::Unknown);
    }
    Ok(rows_for(on_it, physical_device))
}

/// The rows of the types of one physical device, or with `""` of all
/// physical devices together; empty for an unknown device (see [`query`]
/// for `GetCapacity`'s answer).
pub fn rows_for<'a>(
    parents: impl IntoIterator<Item = &'a ParentInfo>,
    physical_device: &str,
) -> Vec<CapacityRow> {
    let mut rows = BTreeMap::new();
    for info in parents {
        let Some(physical) = physical_device_of(info) else {
            continue;
        };
        if physical_device.is_empty() || physical == physical_device {
            add_types(&mut rows, info);
        }
    }
    rows.into_values().collect()
}

fn add_types(rows: &mut BTreeMap<String, CapacityRow>, info: &ParentInfo) {
    for t in &info.types {
        let row = rows.entry(t.id.to_string()).or_insert_with(|| CapacityRow {
            id: t.id.to_string(),
            ..CapacityRow::default()
        });
        if row.name.is_empty() {
            row.name = t.name.to_string();
        }
        row.creatable = row.creatable.saturating_add(t.available_instances);
        let held = u32::try_from(t.devices.len()).unwrap_or(u32::MAX);
        row.holding = row.holding.saturating_add(held);
    }
}

/// `mdevreg capacity` text:
///
/// ```text
/// 0000:41:00.0 (4 parents)
///   TYPE         CREATABLE  HOLDING  NAME
///   nvidia-1146          3        1  NVIDIA L40S-2B
/// ```
pub fn text(devices: &[PhysicalCapacity]) -> String {
    if devices.is_empty() {
        return "No physical devices with vGPU parents.\n".to_string();
    }
    let mut out = String::new();
    for (index, device) in devices.iter().enumerate() {
        if index > 0 {
            out.push('\n');
        }
        let count = device.parents.len();
        let plural = if count == 1 { "" } else { "s" };
        let _ = writeln!(out, "{} ({count} parent{plural})", device.physical_device);
        if device.types.is_empty() {
            let _ = writeln!(out, "  no types");
            continue;
        }
        let width = device
            .types
            .iter()
            .map(|row| row.id.len())
            .max()
            .unwrap_or(0)
            .max("TYPE".len());
        let _ = writeln!(out, "  {:<width$}  CREATABLE  HOLDING  NAME", "TYPE");
        for row in &device.types {
            let _ = writeln!(
                out,
                "  {:<width$}  {:>9}  {:>7}  {}",
                row.id, row.creatable, row.holding, row.name
            );
        }
    }
    out
}

/// `mdevreg capacity --json`: an array of
/// `{"physical_device", "parents", "types": [{"id", "name", "creatable", "holding"}]}`.
pub fn json(devices: &[PhysicalCapacity]) -> serde_json::Value {
    serde_json::to_value(devices).unwrap_or_else(|_| serde_json::Value::Array(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backend, MdevType};

    fn t(id: &str, name: &str, avail: u32, devices: &[&str]) -> MdevType {
        MdevType {
            id: id.into(),
            name: name.into(),
            device_api: "vfio-pci".into(),
            available_instances: avail,
            devices: devices.iter().map(|d| d.to_string()).collect(),
            ..MdevType::default()
        }
    }

    fn vf(name: &str, pf: &str, types: Vec<MdevType>) -> ParentInfo {
        ParentInfo {
            name: name.to_string(),
            devpath: format!("/devices/pci0000:40/{pf}/{name}"),
            subsystem: "pci".to_string(),
            driver: "nvidia".to_string(),
            backend: Backend::NvidiaVfio,
            physical_device: pf.to_string(),
            types,
        }
    }

    #[test]
    fn aggregates_siblings_per_physical_device() {
        let parents = [
            vf(
                "0000:41:00.4",
                "0000:41:00.0",
                vec![t("nvidia-2", "", 0, &["0000:41:00.4"])],
            ),
            vf(
                "0000:41:00.5",
                "0000:41:00.0",
                vec![t("nvidia-2", "B", 1, &[])],
            ),
            vf(
                "0000:41:00.6",
                "0000:41:00.0",
                vec![t("nvidia-2", "B", 1, &[])],
            ),
            vf(
                "0000:c1:00.4",
                "0000:c1:00.0",
                vec![t("nvidia-1", "A", 1, &[]), t("nvidia-2", "B", 1, &[])],
            ),
            // Not on any physical GPU.
            ParentInfo {
                name: "mtty".to_string(),
                subsystem: "mtty".to_string(),
                types: vec![t("mtty-1", "x", 24, &[])],
                ..ParentInfo::default()
            },
            // A PCI parent without SR-IOV is its own physical device.
            ParentInfo {
                name: "0000:00:02.0".to_string(),
                subsystem: "pci".to_string(),
                types: vec![t("i915-GVTg_V5_4", "GVTg_V5_4", 5, &["u1", "u2"])],
                ..ParentInfo::default()
            },
        ];
        let devices = by_physical_device(&parents);
        let names: Vec<&str> = devices.iter().map(|d| d.physical_device.as_str()).collect();
        assert_eq!(names, ["0000:00:02.0", "0000:41:00.0", "0000:c1:00.0"]);
        assert_eq!(devices[0].types[0].holding, 2);
        assert_eq!(devices[1].parents.len(), 3);
        assert_eq!(
            devices[1].types,
            [CapacityRow {
                id: "nvidia-2".to_string(),
                name: "B".to_string(),
                creatable: 2,
                holding: 1
            }]
        );
        assert_eq!(devices[2].types.len(), 2);

        let all = rows_for(&parents, "");
        let two = all.iter().find(|row| row.id == "nvidia-2").unwrap();
        assert_eq!((two.creatable, two.holding), (3, 1));
        assert_eq!(rows_for(&parents, "0000:41:00.0"), devices[1].types);
        assert!(rows_for(&parents, "0000:99:00.0").is_empty());

        assert_eq!(query(&parents, "").unwrap(), all);
        assert_eq!(query(&parents, "0000:41:00.0").unwrap(), devices[1].types);
        assert_eq!(query(&parents, "0000:99:00.0"), Err(QueryError::Unknown));
        for bad in [
            "x",
            "0000:41:00",
            "0000:41:00.8",
            "0000:C1:00.0",
            " 0000:41:00.0",
        ] {
            assert_eq!(query(&parents, bad), Err(QueryError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn pci_addresses() {
        for good in [
            "0000:41:00.0",
            "0000:c1:1f.7",
            "10000:01:00.1",
            "ffffffff:ff:ff.0",
        ] {
            assert!(is_pci_address(good), "{good:?}");
        }
        for bad in [
            "",
            "000:41:00.0",
            "0000:41:00.",
            "0000:41:00.00",
            "0000:41:0.0",
            "0000:4g:00.0",
            "0000:41:00:00.0",
            "123456789:41:00.0",
            "0000:41:00.0\n",
            "mtty",
        ] {
            assert!(!is_pci_address(bad), "{bad:?}");
        }
    }

    #[test]
    fn text_and_json_shapes() {
        let parents = [vf(
            "0000:41:00.5",
            "0000:41:00.0",
            vec![t("nvidia-1146", "NVIDIA L40S-2B", 3, &["x"])],
        )];
        let devices = by_physical_device(&parents);
        assert_eq!(
            text(&devices),
            "0000:41:00.0 (1 parent)\n  TYPE         CREATABLE  HOLDING  NAME\n  nvidia-1146          3        1  NVIDIA L40S-2B\n"
        );
        assert_eq!(
            json(&devices),
            serde_json::json!([{
                "physical_device": "0000:41:00.0",
                "parents": ["0000:41:00.5"],
                "types": [{"id": "nvidia-1146", "name": "NVIDIA L40S-2B", "creatable": 3, "holding": 1}]
            }])
        );
        assert_eq!(text(&[]), "No physical devices with vGPU parents.\n");
    }
}
