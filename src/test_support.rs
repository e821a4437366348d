//! Fixtures shared by the unit tests of several modules (test builds
//! only): model values and registries built the same way everywhere.

use zbus::Message;

use crate::dbus::validate;
use crate::model::{Lifetime, MdevType, ParentInfo};
use crate::registry::{Input, Registry};

/// A vfio-pci type with `available` free instances and `devices` mdevs
/// (made-up UUIDs, numbered from 0).
pub(crate) fn mdev_type(id: &str, name: &str, available: u32, devices: usize) -> MdevType {
    MdevType {
        id: id.into(),
        name: name.into(),
        description: "".into(),
        device_api: "vfio-pci".into(),
        available_instances: available,
        devices: (0..devices)
            .map(|n| format!("00000000-0000-4000-8000-{n:012x}"))
            .collect(),
    }
}

/// A kernel PCI parent `name` bound to `driver`, with `types`.
pub(crate) fn pci_parent(name: &str, driver: &str, types: Vec<MdevType>) -> ParentInfo {
    ParentInfo {
        name: name.to_owned(),
        devpath: format!("/devices/pci0000:00/{name}"),
        subsystem: "pci".to_owned(),
        driver: driver.to_owned(),
        backend: Default::default(),
        physical_device: String::new(),
        types,
    }
}

/// A kernel PCI parent `name` bound to nvidia, with `types`.
pub(crate) fn nvidia_parent(name: &str, types: Vec<MdevType>) -> ParentInfo {
    pci_parent(name, "nvidia", types)
}

/// A userspace parent `name` (under /devices/virtual/mdevreg), with `types`.
pub(crate) fn user_parent(name: &str, types: Vec<MdevType>) -> ParentInfo {
    ParentInfo {
        name: name.to_owned(),
        devpath: format!("/devices/virtual/mdevreg/{name}"),
        subsystem: "mdevreg".to_owned(),
        driver: String::new(),
        backend: Default::default(),
        physical_device: String::new(),
        types,
    }
}

/// Two P40 GPUs as a scan finds them: 0000:3b:00.0 with two types (2
/// mdevs of the first), 0000:3c:00.0 with one (4 mdevs).
pub(crate) fn two_p40s() -> Vec<ParentInfo> {
    vec![
        nvidia_parent(
            "0000:3b:00.0",
            vec![
                mdev_type("nvidia-100", "GRID P40-1Q", 24, 2),
                mdev_type("nvidia-101", "GRID P40-2Q", 12, 0),
            ],
        ),
        nvidia_parent(
            "0000:3c:00.0",
            vec![mdev_type("nvidia-100", "GRID P40-1Q", 20, 4)],
        ),
    ]
}

/// A registry holding what one kernel scan found: `parents`.
pub(crate) fn scanned(parents: Vec<ParentInfo>) -> Registry {
    let mut registry = Registry::new();
    registry
        .apply(Input::KernelScan(parents))
        .expect("a scan is always accepted");
    registry
}

/// A userspace registration of `name` (one "demo-1" type, 4 free), as
/// the D-Bus validation hands it to the daemon's core.
pub(crate) fn user_registration(name: &str, lifetime: Lifetime) -> validate::Registration {
    validate::Registration {
        info: user_parent(name, vec![mdev_type("demo-1", "", 4, 0)]),
        lifetime,
        allow_interaction: false,
    }
}

/// An unsent call of `member` on the registry object (no arguments), to
/// stand for the caller's message.
pub(crate) fn method_call(member: &str) -> Message {
    Message::method_call("/org/mdevreg/Registry1", member)
        .build(&())
        .expect("message")
}
