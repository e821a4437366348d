//! Plain data describing mdev parents, their types and instances, as read from
//! sysfs or registered over D-Bus. No I/O here.

use serde::{Deserialize, Serialize};

pub use crate::shared_str::SharedStr;

/// One mdev type of a parent (`<parent>/mdev_supported_types/<id>/`).
///
/// Its texts are [`SharedStr`]s: they repeat across the parents of one
/// model (1000 GPUs, 1000 copies of each type's id, name, description and
/// device API), and shared they are held once however many parents and
/// copies (events, snapshots) there are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MdevType {
    /// Type id, the directory name, e.g. `i915-GVTg_V5_4`.
    pub id: SharedStr,
    /// Contents of `name` (trimmed), empty when absent.
    pub name: SharedStr,
    /// Contents of `description` (trimmed), empty when absent.
    pub description: SharedStr,
    /// Contents of `device_api`, e.g. `vfio-pci`.
    pub device_api: SharedStr,
    /// Contents of `available_instances`.
    pub available_instances: u32,
    /// UUIDs of the mdev instances of this type, sorted.
    pub devices: Vec<String>,
}

/// A parent device as seen by a source (sysfs or a userspace registrant).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentInfo {
    /// Parent name: the device's kernel name (`0000:00:02.0`) or the registered name.
    pub name: String,
    /// Device path below the sysfs root, starting with `/devices/`.
    pub devpath: String,
    /// Subsystem of the parent device (`pci`, `css`, `mdevreg`, ...), empty if unknown.
    pub subsystem: String,
    /// Bound driver name, empty if none.
    pub driver: String,
    /// How vGPUs are created on this parent: mdev (`mdev_supported_types`)
    /// or NVIDIA's vendor-specific VFIO (`nvidia/current_vgpu_type`).
    #[serde(default)]
    pub backend: Backend,
    /// PCI address of the physical function this parent is a virtual
    /// function of (the `physfn` link), empty when none.
    #[serde(default)]
    pub physical_device: String,
    /// Supported types, sorted by id, ids unique.
    pub types: Vec<MdevType>,
}

impl ParentInfo {
    /// Sorts types by id and each type's device list, the canonical form the
    /// registry compares.
    pub fn normalize(&mut self) {
        self.types.sort_by(|a, b| a.id.cmp(&b.id));
        for t in &mut self.types {
            t.devices.sort();
        }
    }

    pub fn get_type(&self, id: &str) -> Option<&MdevType> {
        self.types.iter().find(|t| t.id == id)
    }
}

/// How instances are created on a parent (SPEC §1.10, §7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Backend {
    /// The kernel's mdev core: `mdev_supported_types/<id>/create`; also
    /// every userspace parent.
    #[default]
    #[serde(rename = "mdev")]
    Mdev,
    /// NVIDIA's vendor-specific VFIO (vGPU 17+): an SR-IOV virtual function
    /// bound to `nvidia` with `nvidia/creatable_vgpu_types` and
    /// `nvidia/current_vgpu_type`; the VF itself is the vGPU.
    #[serde(rename = "nvidia-vfio")]
    NvidiaVfio,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Mdev => "mdev",
            Backend::NvidiaVfio => "nvidia-vfio",
        }
    }

    /// Parses `mdev` or `nvidia-vfio`.
    pub fn parse(text: &str) -> Option<Backend> {
        match text {
            "mdev" => Some(Backend::Mdev),
            "nvidia-vfio" => Some(Backend::NvidiaVfio),
            _ => None,
        }
    }
}

/// Where a parent comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Found in sysfs under `class/mdev_bus`.
    Kernel,
    /// Registered over D-Bus by a userspace provider.
    Userspace,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Kernel => "kernel",
            Source::Userspace => "userspace",
        }
    }
}

/// How long a registration lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifetime {
    /// A kernel parent: lives as long as its sysfs tree.
    Kernel,
    /// Userspace, unregistered when the owning bus connection leaves.
    Owner,
    /// Userspace, kept (across daemon restarts too) until unregistered.
    Persistent,
}

impl Lifetime {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifetime::Kernel => "kernel",
            Lifetime::Owner => "owner",
            Lifetime::Persistent => "persistent",
        }
    }

    /// Parses the D-Bus `Lifetime` option (`owner` or `persistent`).
    pub fn parse_option(s: &str) -> Option<Lifetime> {
        match s {
            "owner" => Some(Lifetime::Owner),
            "persistent" => Some(Lifetime::Persistent),
            _ => None,
        }
    }
}

/// A registered parent: what the registry holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    pub info: ParentInfo,
    pub source: Source,
    /// Unique bus name of the registrant; empty for kernel parents and for
    /// persistent parents whose registrant has left.
    pub owner: String,
    pub lifetime: Lifetime,
    /// Registry sequence number of the `ParentRegistered` event.
    pub registered_seqnum: u64,
    /// Uid of the registrant as the bus reported it: 0 for kernel parents,
    /// root's registrations and state files written before it was kept
    /// (only root could register then).
    #[serde(default)]
    pub uid: u32,
}

impl Parent {
    /// A userspace parent registered by a non-root uid (polkit let it in):
    /// it never shadows a kernel parent and counts against its uid's bound.
    pub fn is_unprivileged(&self) -> bool {
        self.source == Source::Userspace && self.uid != 0
    }
}

impl Parent {
    pub fn name(&self) -> &str {
        &self.info.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_round_trip() {
        for backend in [Backend::Mdev, Backend::NvidiaVfio] {
            assert_eq!(Backend::parse(backend.as_str()), Some(backend));
            assert_eq!(
                serde_json::to_value(backend).unwrap(),
                serde_json::Value::String(backend.as_str().to_string())
            );
        }
        assert_eq!(Backend::parse("nvidia"), None);
    }

    #[test]
    fn parent_info_without_the_new_fields_reads_as_mdev() {
        // A state file written before backends existed.
        let info: ParentInfo = serde_json::from_str(
            r#"{"name":"p","devpath":"/devices/virtual/mdevreg/p","subsystem":"mdevreg","driver":"","types":[]}"#,
        )
        .unwrap();
        assert_eq!(info.backend, Backend::Mdev);
        assert_eq!(info.physical_device, "");
    }
}
