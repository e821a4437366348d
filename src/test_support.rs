//! Fixtures shared by the unit tests of several modules (test builds
//! only): model values and registries built the same way everywhere.

use crate::model::{MdevType, ParentInfo};
use crate::registry::{Input, Registry};

/// A vfio-pci type with `available` free instances and `devices` mdevs
/// (made-up UUIDs, numbered from 0).
pub(crate) fn mdev_type(id: &str, name: &str, available: u32, devices: usize) -> MdevType {
    MdevType {
        id: id.to_owned(),
        name: name.to_owned(),
        description: String::new(),
        device_api: "vfio-pci".to_owned(),
        available_instances: available,
        devices: (0..devices)
            .map(|n| format!("00000000-0000-4000-8000-{n:012x}"))
            .collect(),
    }
}

/// A kernel PCI parent `name` bound to nvidia, with `types`.
pub(crate) fn nvidia_parent(name: &str, types: Vec<MdevType>) -> ParentInfo {
    ParentInfo {
        name: name.to_owned(),
        devpath: format!("/devices/pci0000:00/{name}"),
        subsystem: "pci".to_owned(),
        driver: "nvidia".to_owned(),
        backend: Default::default(),
        physical_device: String::new(),
        types,
    }
}

/// A registry holding what one kernel scan found: `parents`.
pub(crate) fn scanned(parents: Vec<ParentInfo>) -> Registry {
    let mut registry = Registry::new();
    registry
        .apply(Input::KernelScan(parents))
        .expect("a scan is always accepted");
    registry
}
