//! Reads NVIDIA vendor-specific VFIO parents (vGPU software 17+, SPEC §1.10)
//! from a sysfs tree into plain [`ParentInfo`] data.
//!
//! On those hosts `class/mdev_bus` is empty: every SR-IOV virtual function
//! bound to `nvidia` has a `nvidia/` directory with `creatable_vgpu_types`
//! and `current_vgpu_type`, and the VF itself becomes the vGPU. Such a VF is
//! a parent with [`Backend::NvidiaVfio`]:
//! - name = its PCI address, devpath, `subsystem` and `driver` as for any
//!   device, `physical_device` = the name its `physfn` link points to;
//! - one type per `creatable_vgpu_types` line, id `nvidia-<ID>` (the same
//!   numbers as the mdev type ids), `name` the vGPU name, `device_api`
//!   `vfio-pci`, `available_instances` 1 while the VF lists the type and
//!   holds no vGPU, else 0;
//! - the vGPU the VF holds (`current_vgpu_type` ≠ 0) is that type's one
//!   instance, named by the VF's PCI address (there is no mdev UUID); the
//!   type is added when the VF does not list it (a VF holding a vGPU usually
//!   lists nothing), with its name taken from any VF read in the same batch
//!   that lists it, else empty.
//!
//! Tolerance: a header-only (or empty) `creatable_vgpu_types` is a parent
//! with no creatable type; a malformed line is a [`Warning`] naming the file
//! and line, and the good lines still count; an unreadable or malformed
//! `current_vgpu_type` is a warning and reads as 0.
//!
//! [`scan`] enumerates `bus/pci/devices/*/nvidia/` (links and files);
//! [`poll`] re-reads only the two small files of parents already known, for
//! the daemon's periodic check (writing `current_vgpu_type` sends no uevent,
//! and it changes the siblings' lists).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::{Backend, MdevType, ParentInfo, SharedStr};
use crate::paths::{
    devpath_name, SysfsRoot, CREATABLE_VGPU_TYPES, CURRENT_VGPU_TYPE, NVIDIA_VFIO_DIR, PHYSFN_LINK,
};
use crate::sysfs::{self, Warning};

/// Prefix of the type ids of vendor-VFIO parents (`nvidia-1145`).
pub const TYPE_ID_PREFIX: &str = "nvidia-";
/// The device API of every vendor-VFIO vGPU (the VF is a PCI device).
pub const DEVICE_API: &str = "vfio-pci";

/// One line of `creatable_vgpu_types`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VgpuType {
    pub id: u32,
    pub name: String,
}

/// What the two files of one VF say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VfState {
    /// Types the VF can create now, in file order, ids unique.
    pub creatable: Vec<VgpuType>,
    /// The vGPU type the VF holds, 0 for none.
    pub current: u32,
}

/// The type id of vGPU type number `id`: `nvidia-<id>`.
pub fn type_id(id: u32) -> String {
    format!("{TYPE_ID_PREFIX}{id}")
}

/// Parses `creatable_vgpu_types` (`path` only names it in warnings): an
/// optional header `ID : vGPU Name`, then `<id> : <name>` lines. Blank
/// lines are ignored; a line without `:` or with a non-decimal or zero id,
/// and a repeated id, are warned about and skipped.
pub fn parse_creatable(text: &str, path: &Path, warnings: &mut Vec<Warning>) -> Vec<VgpuType> {
    let mut types: Vec<VgpuType> = Vec::new();
    let mut first = true;
    for (index, raw) in text.split('\n').enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let is_first = std::mem::take(&mut first);
        let parsed = line
            .split_once(':')
            .map(|(id, name)| (id.trim(), name.trim()));
        if is_first && parsed.is_some_and(|(id, _)| id.eq_ignore_ascii_case("ID")) {
            continue;
        }
        let good = parsed.and_then(|(id, name)| {
            let digits = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
            let id = id.parse::<u32>().ok().filter(|id| digits && *id != 0)?;
            Some(VgpuType {
                id,
                name: name.to_string(),
            })
        });
        let Some(vgpu_type) = good else {
            let shown: String = line.chars().take(60).collect();
            warnings.push(Warning::new(
                path,
                format!(
                    "line {}: {shown:?} is not `<id> : <name>`; skipped",
                    index + 1
                ),
            ));
            continue;
        };
        if types.iter().any(|t| t.id == vgpu_type.id) {
            warnings.push(Warning::new(
                path,
                format!(
                    "line {}: type {} listed twice; skipped",
                    index + 1,
                    vgpu_type.id
                ),
            ));
            continue;
        }
        types.push(vgpu_type);
    }
    types
}

/// Parses `current_vgpu_type`: a decimal id, 0 for none.
pub fn parse_current(text: &str) -> Result<u32, String> {
    let trimmed = text.trim();
    trimmed.parse::<u32>().map_err(|_| {
        let shown: String = trimmed.chars().take(40).collect();
        format!("not a vGPU type id: {shown:?}; read as 0")
    })
}

/// `<device>/nvidia`.
pub fn vfio_dir(device_dir: &Path) -> PathBuf {
    device_dir.join(NVIDIA_VFIO_DIR)
}

/// Whether `device_dir` is a vendor-VFIO VF (has a `nvidia/` directory).
pub fn is_vendor_vf(device_dir: &Path) -> bool {
    std::fs::symlink_metadata(vfio_dir(device_dir)).is_ok_and(|meta| meta.is_dir())
}

/// `sriov_totalvfs`: the attribute of a PCI device that can have VFs.
const SRIOV_TOTALVFS: &str = "sriov_totalvfs";

/// Whether a uevent about the PCI device at `device_dir` can concern a
/// vendor-VFIO VF while none is known: the device is a VF (`physfn`), has
/// a `nvidia/` directory, or can have VFs (`sriov_totalvfs`). A device
/// that is none of these (most PCI devices, every mdev parent that is no
/// SR-IOV function) or is gone cannot; at most three `lstat`s instead of a
/// walk of every PCI device. (A VF gets `physfn` and `nvidia/` before its
/// driver's `bind` uevent.)
pub fn may_concern_vfs(device_dir: &Path) -> bool {
    [PHYSFN_LINK, NVIDIA_VFIO_DIR, SRIOV_TOTALVFS]
        .iter()
        .any(|name| std::fs::symlink_metadata(device_dir.join(name)).is_ok())
}

/// Reads the two files of the VF at `device_dir`; `None` when it has no
/// `nvidia/` directory (any more). Problems go to `warnings`.
pub fn read_vf_state(device_dir: &Path, warnings: &mut Vec<Warning>) -> Option<VfState> {
    let dir = vfio_dir(device_dir);
    let creatable_path = dir.join(CREATABLE_VGPU_TYPES);
    let creatable = match sysfs::read_attr_string(&creatable_path) {
        Ok(Some(text)) => parse_creatable(&text, &creatable_path, warnings),
        Ok(None) => {
            if !is_vendor_vf(device_dir) {
                return None;
            }
            warnings.push(Warning::new(&creatable_path, "missing; no creatable type"));
            Vec::new()
        }
        Err(warning) => {
            warnings.push(Warning::new(
                warning.path,
                format!("{}; no creatable type", warning.message),
            ));
            Vec::new()
        }
    };
    let current_path = dir.join(CURRENT_VGPU_TYPE);
    let current = match sysfs::read_attr_string(&current_path) {
        Ok(Some(text)) => parse_current(&text).unwrap_or_else(|message| {
            warnings.push(Warning::new(&current_path, message));
            0
        }),
        Ok(None) => {
            if !is_vendor_vf(device_dir) {
                return None;
            }
            warnings.push(Warning::new(&current_path, "missing; read as 0"));
            0
        }
        Err(warning) => {
            warnings.push(Warning::new(
                warning.path,
                format!("{}; read as 0", warning.message),
            ));
            0
        }
    };
    Some(VfState { creatable, current })
}

/// The types of a VF in `state` (see the module doc); `vf_name` names the
/// instance of the vGPU it holds, `held_name` that vGPU's type name when
/// the VF does not list it. Sorted by id.
pub fn vf_types(state: &VfState, vf_name: &str, held_name: &str) -> Vec<MdevType> {
    let free = u32::from(state.current == 0);
    let mut types: Vec<MdevType> = state
        .creatable
        .iter()
        .map(|t| MdevType {
            id: type_id(t.id).into(),
            name: t.name.as_str().into(),
            description: SharedStr::default(),
            device_api: DEVICE_API.into(),
            available_instances: free,
            devices: Vec::new(),
        })
        .collect();
    if state.current != 0 {
        let held = type_id(state.current);
        match types.iter_mut().find(|t| t.id == held) {
            Some(t) => t.devices = vec![vf_name.to_string()],
            None => types.push(MdevType {
                id: held.into(),
                name: held_name.into(),
                description: SharedStr::default(),
                device_api: DEVICE_API.into(),
                available_instances: 0,
                devices: vec![vf_name.to_string()],
            }),
        }
    }
    types.sort_by(|a, b| a.id.cmp(&b.id));
    types
}

/// vGPU type names by id, from every list in `states` (first name wins).
fn names_by_id<'a>(states: impl Iterator<Item = &'a VfState>) -> BTreeMap<u32, &'a str> {
    let mut names = BTreeMap::new();
    for state in states {
        for t in &state.creatable {
            if !t.name.is_empty() {
                names.entry(t.id).or_insert(t.name.as_str());
            }
        }
    }
    names
}

/// A VF read from sysfs: its identity (links) and its state.
#[derive(Clone, Debug)]
struct ReadVf {
    info: ParentInfo,
    state: VfState,
}

/// Every vendor-VFIO VF below `bus/pci/devices`, sorted by name, with
/// their types. `root` must be canonical (as [`sysfs::scan`] makes it). A
/// tree without `bus/pci/devices` has none and gives no warning.
pub fn scan(root: &SysfsRoot, warnings: &mut Vec<Warning>) -> Vec<ParentInfo> {
    let dir = root.pci_devices_dir();
    let names = match sysfs::list_dir(&dir, warnings) {
        Ok(names) => names.unwrap_or_default(),
        Err(warning) => {
            warnings.push(warning);
            return Vec::new();
        }
    };
    let mut read = Vec::new();
    for name in names {
        let link = dir.join(&name);
        // Cheap test first: most PCI devices are not vendor VFs.
        if !is_vendor_vf(&link) {
            continue;
        }
        let devpath = match sysfs::resolve_devpath(root, &link) {
            Ok(devpath) => devpath,
            Err(warning) => {
                warnings.push(warning);
                continue;
            }
        };
        if let Some(vf) = read_vf(root, &devpath, warnings) {
            read.push(vf);
        }
    }
    finish(read)
}

/// [`scan`] of a root that need not be canonical; the parents and the
/// warnings.
pub fn scan_root(root: &SysfsRoot) -> (Vec<ParentInfo>, Vec<Warning>) {
    let mut warnings = Vec::new();
    let parents = match root.canonicalize() {
        Ok(canonical) => scan(&canonical, &mut warnings),
        Err(err) => {
            warnings.push(Warning::new(
                root.path(),
                format!("cannot open sysfs root: {err}"),
            ));
            Vec::new()
        }
    };
    (parents, warnings)
}

/// Reads the VF at `devpath` (links and files); `None` when it is not a
/// vendor-VFIO VF.
fn read_vf(root: &SysfsRoot, devpath: &str, warnings: &mut Vec<Warning>) -> Option<ReadVf> {
    let device_dir = root.devpath_to_path(devpath)?;
    let state = read_vf_state(&device_dir, warnings)?;
    let info = ParentInfo {
        name: devpath_name(devpath).to_string(),
        devpath: devpath.to_string(),
        subsystem: sysfs::link_name_or_empty(&device_dir.join("subsystem"), warnings),
        driver: sysfs::link_name_or_empty(&device_dir.join("driver"), warnings),
        backend: Backend::NvidiaVfio,
        physical_device: sysfs::link_name_or_empty(&device_dir.join(PHYSFN_LINK), warnings),
        types: Vec::new(),
    };
    Some(ReadVf { info, state })
}

/// Fills in the types of every VF read, naming held vGPU types from the
/// lists of the whole batch.
fn finish(read: Vec<ReadVf>) -> Vec<ParentInfo> {
    let names = names_by_id(read.iter().map(|vf| &vf.state));
    let mut parents: Vec<ParentInfo> = read
        .iter()
        .map(|vf| {
            let held_name = names.get(&vf.state.current).copied().unwrap_or("");
            ParentInfo {
                types: vf_types(&vf.state, &vf.info.name, held_name),
                ..vf.info.clone()
            }
        })
        .collect();
    parents.sort_by(|a, b| a.name.cmp(&b.name));
    parents
}

/// What [`poll`] found for one known parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Polled {
    /// The two files still say what the known parent says.
    Unchanged,
    /// Its types changed: the parent with the new types.
    Changed(ParentInfo),
    /// Its `nvidia/` directory is gone: re-read the devpath in full.
    Gone,
}

/// Re-reads only `nvidia/creatable_vgpu_types` and
/// `nvidia/current_vgpu_type` of each `known` vendor-VFIO parent (others
/// are [`Polled::Unchanged`]) and compares; one result per parent, in
/// order. Held types are named from the lists of all parents polled, as
/// [`scan`] names them.
pub fn poll(root: &SysfsRoot, known: &[&ParentInfo], warnings: &mut Vec<Warning>) -> Vec<Polled> {
    let states: Vec<Option<VfState>> = known
        .iter()
        .map(|info| {
            if info.backend != Backend::NvidiaVfio {
                return None;
            }
            let device_dir = root.devpath_to_path(&info.devpath)?;
            read_vf_state(&device_dir, warnings)
        })
        .collect();
    let names = names_by_id(states.iter().flatten());
    known
        .iter()
        .zip(&states)
        .map(|(info, state)| {
            if info.backend != Backend::NvidiaVfio {
                return Polled::Unchanged;
            }
            let Some(state) = state else {
                return Polled::Gone;
            };
            let held_name = names.get(&state.current).copied().unwrap_or("");
            let types = vf_types(state, &info.name, held_name);
            if types == info.types {
                Polled::Unchanged
            } else {
                let mut changed = (*info).clone();
                changed.types = types;
                Polled::Changed(changed)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Vec<VgpuType>, Vec<Warning>) {
        let mut warnings = Vec::new();
        let types = parse_creatable(text, Path::new("/x/creatable_vgpu_types"), &mut warnings);
        (types, warnings)
    }

    fn vgpu(id: u32, name: &str) -> VgpuType {
        VgpuType {
            id,
            name: name.to_string(),
        }
    }

    #[test]
    fn parses_the_driver_format() {
        let text = "ID    : vGPU Name\n1145  : NVIDIA L40S-1B\n1146  : NVIDIA L40S-2B\n2164  : NVIDIA L40S-3B\n";
        let (types, warnings) = parse(text);
        assert_eq!(
            types,
            [
                vgpu(1145, "NVIDIA L40S-1B"),
                vgpu(1146, "NVIDIA L40S-2B"),
                vgpu(2164, "NVIDIA L40S-3B")
            ]
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn header_only_and_empty_files_have_no_types_and_no_warnings() {
        for text in ["ID    : vGPU Name\n", "", "\n", "ID : vGPU Name"] {
            assert_eq!(parse(text), (Vec::new(), Vec::new()), "{text:?}");
        }
    }

    #[test]
    fn malformed_lines_warn_with_file_and_line_and_good_lines_count() {
        let text = "ID    : vGPU Name\n1145  : NVIDIA L40S-1B\ngarbage\nx12 : bad\n0 : zero\n-3 : neg\n1146 : NVIDIA L40S-2B\n1145 : again\n";
        let (types, warnings) = parse(text);
        assert_eq!(
            types,
            [vgpu(1145, "NVIDIA L40S-1B"), vgpu(1146, "NVIDIA L40S-2B")]
        );
        let messages: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(messages.len(), 5, "{messages:?}");
        assert!(messages[0].starts_with("/x/creatable_vgpu_types: line 3: \"garbage\""));
        assert!(messages[1].contains("line 4"));
        assert!(messages[4].contains("line 8: type 1145 listed twice"));
    }

    #[test]
    fn headerless_file_and_colons_in_names() {
        let (types, warnings) = parse("12 : A: B\n");
        assert_eq!(types, [vgpu(12, "A: B")]);
        assert!(warnings.is_empty());
    }

    #[test]
    fn current_type_parses_or_explains() {
        assert_eq!(parse_current("0\n"), Ok(0));
        assert_eq!(parse_current("1146\n"), Ok(1146));
        assert!(parse_current("").is_err());
        assert!(parse_current("nvidia-1\n").is_err());
    }

    #[test]
    fn types_of_a_free_and_a_busy_vf() {
        let free = VfState {
            creatable: vec![vgpu(1146, "B"), vgpu(1145, "A")],
            current: 0,
        };
        let types = vf_types(&free, "0000:41:00.4", "");
        assert_eq!(
            types
                .iter()
                .map(|t| (t.id.as_str(), t.available_instances))
                .collect::<Vec<_>>(),
            [("nvidia-1145", 1), ("nvidia-1146", 1)]
        );
        assert!(types
            .iter()
            .all(|t| t.device_api == "vfio-pci" && t.devices.is_empty()));

        let busy = VfState {
            creatable: Vec::new(),
            current: 1146,
        };
        let types = vf_types(&busy, "0000:41:00.4", "NVIDIA L40S-2B");
        assert_eq!(types.len(), 1);
        assert_eq!(types[0].id, "nvidia-1146");
        assert_eq!(types[0].name, "NVIDIA L40S-2B");
        assert_eq!(types[0].available_instances, 0);
        assert_eq!(types[0].devices, ["0000:41:00.4"]);

        // A busy VF that still lists types offers none of them.
        let listed = VfState {
            creatable: vec![vgpu(1146, "B"), vgpu(1145, "A")],
            current: 1146,
        };
        let types = vf_types(&listed, "vf", "ignored");
        assert!(types.iter().all(|t| t.available_instances == 0));
        assert_eq!(types[1].name, "B");
        assert_eq!(types[1].devices, ["vf"]);
    }

    #[test]
    fn only_sriov_functions_and_vendor_vfs_may_concern_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = |name: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir(&path).expect("device dir");
            path
        };
        let plain = device("0000:00:02.0");
        assert!(!may_concern_vfs(&plain));
        assert!(!may_concern_vfs(&dir.path().join("gone")));
        let pf = device("0000:41:00.0");
        std::fs::write(pf.join("sriov_totalvfs"), "32\n").expect("write");
        assert!(may_concern_vfs(&pf));
        let vf = device("0000:41:00.4");
        std::os::unix::fs::symlink("../0000:41:00.0", vf.join(PHYSFN_LINK)).expect("link");
        assert!(may_concern_vfs(&vf));
        let bound = device("0000:42:00.4");
        std::fs::create_dir(bound.join(NVIDIA_VFIO_DIR)).expect("nvidia dir");
        assert!(may_concern_vfs(&bound));
    }
}
