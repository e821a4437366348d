//! Generated hostile sysfs trees: a byte string is read as a list of
//! mutations applied to a small valid tree (one parent, two types, one
//! instance), and the reader's invariants are checked on the result.
//!
//! Shared by the `sysfs_reader` fuzz target (through `#[path]`) and the
//! property test in `tests/hostile_sysfs.rs`; depends on std and mdevreg only.
//! Every mutation stays inside the tree root: created names never hold `/`
//! and are never `.` or `..` (symlink *targets* may point anywhere, which is
//! what the reader must survive).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use mdevreg::paths::SysfsRoot;
use mdevreg::sysfs::{read_parent, scan, ParentRead, Scan};

/// Root-relative paths of the base tree that mutations aim at.
const TARGETS: [&str; 16] = [
    "class/mdev_bus",
    "class/mdev_bus/p0",
    "devices/virtual/gen/p0",
    "devices/virtual/gen/p0/mdev_supported_types",
    "devices/virtual/gen/p0/mdev_supported_types/gen-1",
    "devices/virtual/gen/p0/mdev_supported_types/gen-1/available_instances",
    "devices/virtual/gen/p0/mdev_supported_types/gen-1/device_api",
    "devices/virtual/gen/p0/mdev_supported_types/gen-1/name",
    "devices/virtual/gen/p0/mdev_supported_types/gen-1/description",
    "devices/virtual/gen/p0/mdev_supported_types/gen-1/devices",
    "devices/virtual/gen/p0/mdev_supported_types/gen-2",
    "devices/virtual/gen/p0/subsystem",
    "devices/virtual/gen/p0/driver",
    "bus/mdev/devices",
    "devices/virtual/gen/p0/00000000-0000-4000-8000-000000000001",
    "devices",
];

/// Names mutations create (besides raw ones taken from the input).
const NAMES: [&[u8]; 14] = [
    b"mdev_supported_types",
    b"available_instances",
    b"device_api",
    b"description",
    b"name",
    b"devices",
    b"mdev_type",
    b"p1",
    b"gen-3",
    b"00000000-0000-4000-8000-000000000002",
    b"\xff\xfe",
    b"caf\xc3\xa9",
    b"x y",
    b"-",
];

/// Symlink targets (relative ones are resolved from the link's directory).
const LINK_TARGETS: [&[u8]; 12] = [
    b"../../devices/virtual/gen/p0",
    b"../../../devices/virtual/gen/p0",
    b"..",
    b".",
    b"loop",
    b"/",
    b"/etc/hostname",
    b"/dev/zero",
    b"/proc/version",
    b"../../../../../../../../../../..",
    b"gen-1",
    b"\xff",
];

/// File contents.
const CONTENTS: [&[u8]; 12] = [
    b"4\n",
    b"0",
    b"4294967295\n",
    b"4294967296\n",
    b"-1\n",
    b"  7  \n",
    b"vfio-pci\n",
    b"",
    b"\xff\xfe\xfd",
    b"line one\nline two\n",
    b"\0\0\0",
    b"0x10",
];

/// Builds the base tree in `root` (which must exist and be empty).
pub fn base_tree(root: &Path) {
    let parent = root.join("devices/virtual/gen/p0");
    for id in ["gen-1", "gen-2"] {
        let type_dir = parent.join("mdev_supported_types").join(id);
        fs::create_dir_all(type_dir.join("devices")).unwrap();
        fs::write(type_dir.join("available_instances"), "2\n").unwrap();
        fs::write(type_dir.join("device_api"), "vfio-pci\n").unwrap();
        fs::write(type_dir.join("name"), format!("{id} name\n")).unwrap();
        fs::write(type_dir.join("description"), "a\nb\n").unwrap();
    }
    fs::create_dir_all(root.join("class/mdev_bus")).unwrap();
    fs::create_dir_all(root.join("class/gen")).unwrap();
    fs::create_dir_all(root.join("bus/mdev/devices")).unwrap();
    symlink(
        "../../devices/virtual/gen/p0",
        root.join("class/mdev_bus/p0"),
    )
    .unwrap();
    symlink("../../../class/gen", parent.join("subsystem")).unwrap();
    let instance = parent.join("00000000-0000-4000-8000-000000000001");
    fs::create_dir_all(&instance).unwrap();
    symlink("../mdev_supported_types/gen-1", instance.join("mdev_type")).unwrap();
    symlink(
        "../../../00000000-0000-4000-8000-000000000001",
        parent.join("mdev_supported_types/gen-1/devices/00000000-0000-4000-8000-000000000001"),
    )
    .unwrap();
    symlink(
        "../../../devices/virtual/gen/p0/00000000-0000-4000-8000-000000000001",
        root.join("bus/mdev/devices/00000000-0000-4000-8000-000000000001"),
    )
    .unwrap();
}

/// Reads bytes of the input one at a time (zeros once it runs out).
struct Input<'a> {
    bytes: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((first, rest)) => {
                self.bytes = rest;
                *first
            }
            None => 0,
        }
    }

    fn pick<'t, T>(&mut self, items: &'t [T]) -> &'t T {
        &items[usize::from(self.byte()) % items.len()]
    }

    /// A name: from [`NAMES`], or up to 12 raw input bytes without `/`
    /// and NUL (never `.` or `..`).
    fn name(&mut self) -> Vec<u8> {
        let choice = self.byte();
        if choice < 200 {
            return self.pick(&NAMES).to_vec();
        }
        let length = usize::from(self.byte() % 12) + 1;
        let mut name: Vec<u8> = (0..length)
            .map(|_| self.byte())
            .filter(|b| *b != b'/' && *b != 0)
            .collect();
        if name.is_empty() || name == b"." || name == b".." {
            name = b"raw".to_vec();
        }
        name
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Removes whatever is at `path` (a link itself, not its target).
fn remove(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let _ = fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Applies the mutations `data` describes to the tree at `root` (at most 32).
/// File system errors are ignored: a mutation that cannot be applied is
/// simply skipped.
pub fn mutate(root: &Path, data: &[u8]) {
    let mut input = Input { bytes: data };
    for _ in 0..32 {
        if input.is_empty() {
            break;
        }
        let op = input.byte() % 8;
        let target = root.join(input.pick(&TARGETS));
        // Half the mutations hit the target itself, half a new child of it.
        let path = if input.byte().is_multiple_of(2) {
            target
        } else {
            target.join(OsStr::from_bytes(&input.name()))
        };
        match op {
            0 => remove(&path),
            1 => {
                remove(&path);
                let _ = fs::create_dir_all(&path);
            }
            2 | 3 => {
                remove(&path);
                let _ = fs::write(&path, input.pick(&CONTENTS));
            }
            4 => {
                remove(&path);
                let link_target = if input.byte().is_multiple_of(4) {
                    path.file_name()
                        .map(|n| n.as_bytes().to_vec())
                        .unwrap_or_default()
                } else {
                    input.pick(&LINK_TARGETS).to_vec()
                };
                let _ = symlink(OsStr::from_bytes(&link_target), &path);
            }
            5 => {
                // A big file: up to 160 KiB of one byte.
                remove(&path);
                let size = usize::from(input.byte()) * 640;
                let _ = fs::write(&path, vec![input.byte(); size]);
            }
            6 => {
                // A special file (a unix socket: opening it fails with ENXIO).
                remove(&path);
                let _ = std::os::unix::net::UnixListener::bind(&path);
            }
            _ => {
                // A second parent link to the same or another device.
                let name = input.name();
                let link = root.join("class/mdev_bus").join(OsStr::from_bytes(&name));
                remove(&link);
                let target = input.pick(&LINK_TARGETS).to_vec();
                let _ = symlink(OsStr::from_bytes(&target), link);
            }
        }
    }
}

/// Scans `root` twice and checks the reader's invariants; panics on a
/// violation. Returns the scan.
pub fn check_reader(root: &Path) -> Scan {
    let sysfs = SysfsRoot::new(root);
    let first = scan(&sysfs);
    for parent in &first.parents {
        assert!(!parent.name.is_empty(), "empty parent name: {parent:?}");
        assert!(
            parent.devpath.starts_with("/devices/"),
            "devpath outside /devices: {parent:?}"
        );
        assert!(
            parent.devpath.ends_with(&format!("/{}", parent.name)),
            "name is not the devpath's last component: {parent:?}"
        );
        let mut ids: Vec<&str> = parent.types.iter().map(|t| t.id.as_str()).collect();
        assert!(
            ids.iter().all(|id| !id.is_empty() && !id.contains('/')),
            "{parent:?}"
        );
        // Everything read ends up in D-Bus strings, which cannot hold NUL.
        // (An empty device_api is kept, as mdevctl keeps it.)
        let texts = [
            parent.name.as_str(),
            &parent.devpath,
            &parent.subsystem,
            &parent.driver,
        ];
        let type_texts = parent.types.iter().flat_map(|t| {
            [&*t.id, &*t.name, &*t.description, &*t.device_api]
                .into_iter()
                .chain(t.devices.iter().map(String::as_str))
        });
        for text in texts.into_iter().chain(type_texts) {
            assert!(!text.contains('\0'), "NUL in {text:?}: {parent:?}");
        }
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count, "duplicate type ids: {parent:?}");
        // Re-reading one parent never panics and finds it again.
        match read_parent(&sysfs, &parent.devpath) {
            ParentRead::Parent(info, _) => assert_eq!(info.name, parent.name),
            other => panic!("{} scanned but re-read as {other:?}", parent.devpath),
        }
    }
    let mut names: Vec<&str> = first.parents.iter().map(|p| p.name.as_str()).collect();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "duplicate parents: {names:?}");
    // Nothing changed in between: the same answer.
    let second = scan(&sysfs);
    assert_eq!(first, second, "two scans of an unchanged tree differ");
    first
}

/// A scratch directory for one generated tree, emptied before each use.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// `base/<name>`; removed when dropped.
    pub fn new(base: &Path, name: &str) -> Scratch {
        Scratch {
            path: base.join(name),
        }
    }

    /// An empty directory holding a fresh base tree with `data` applied.
    pub fn tree(&self, data: &[u8]) -> &Path {
        remove(&self.path);
        fs::create_dir_all(&self.path).unwrap();
        base_tree(&self.path);
        mutate(&self.path, data);
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove(&self.path);
    }
}
