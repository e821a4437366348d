//! The sysfs root and every location mdevreg reads or writes below it.
//!
//! All sysfs paths in the crate are built here from one owned [`SysfsRoot`],
//! so the whole program runs against a fake tree (`--sysfs-root DIR`) in
//! tests. Only the CLI default names the real `/sys`.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Directory under a parent device holding one directory per mdev type.
pub const SUPPORTED_TYPES_DIR: &str = "mdev_supported_types";

/// Directory under an NVIDIA vendor-specific VFIO virtual function holding
/// its vGPU files (SPEC §1.10).
pub const NVIDIA_VFIO_DIR: &str = "nvidia";
/// `<vf>/nvidia/creatable_vgpu_types`: header, then `ID : name` lines.
pub const CREATABLE_VGPU_TYPES: &str = "creatable_vgpu_types";
/// `<vf>/nvidia/current_vgpu_type`: the id of the vGPU the VF holds, 0 for none.
pub const CURRENT_VGPU_TYPE: &str = "current_vgpu_type";
/// `<vf>/physfn`: link to the physical function of an SR-IOV virtual function.
pub const PHYSFN_LINK: &str = "physfn";

/// The root of a sysfs tree (the real `/sys` or a fake one in a directory).
///
/// Cheap to clone, `Send + Sync`, holds no open files.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SysfsRoot {
    root: PathBuf,
}

impl SysfsRoot {
    /// Wraps `root` as given; it is not checked or canonicalised.
    pub fn new(root: impl Into<PathBuf>) -> SysfsRoot {
        SysfsRoot { root: root.into() }
    }

    /// The same root with symlinks and relative parts resolved, which is what
    /// [`SysfsRoot::path_to_devpath`] needs to strip canonical paths.
    pub fn canonicalize(&self) -> io::Result<SysfsRoot> {
        Ok(SysfsRoot {
            root: std::fs::canonicalize(&self.root)?,
        })
    }

    /// The root directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `ROOT/class/mdev_bus`: one symlink per registered mdev parent.
    pub fn mdev_bus_dir(&self) -> PathBuf {
        self.root.join("class").join("mdev_bus")
    }

    /// `ROOT/bus/mdev/devices`: one symlink per active mdev instance.
    pub fn mdev_devices_dir(&self) -> PathBuf {
        self.root.join("bus").join("mdev").join("devices")
    }

    /// `ROOT/bus/pci/devices`: one symlink per PCI device, where vendor
    /// VFIO virtual functions are found.
    pub fn pci_devices_dir(&self) -> PathBuf {
        self.root.join("bus").join("pci").join("devices")
    }

    /// Maps a kernel device path (`/devices/...`, as in a uevent's `DEVPATH`)
    /// to its directory below the root.
    ///
    /// `None` unless `devpath` is absolute, starts with `/devices/`, and has
    /// no `.`, `..` or empty components and no NUL byte, so the result never
    /// leaves the tree lexically.
    pub fn devpath_to_path(&self, devpath: &str) -> Option<PathBuf> {
        let rest = devpath.strip_prefix('/')?;
        if rest.contains('\0') {
            return None;
        }
        let mut parts = rest.split('/');
        if parts.next() != Some("devices") {
            return None;
        }
        let mut path = self.root.join("devices");
        let mut depth = 0usize;
        for part in parts {
            if part.is_empty() || part == "." || part == ".." {
                return None;
            }
            path.push(part);
            depth += 1;
        }
        if depth == 0 {
            return None;
        }
        Some(path)
    }

    /// The inverse of [`SysfsRoot::devpath_to_path`]: strips the root from
    /// `path` and returns `/devices/...`, or `None` when the path is outside
    /// the root, not below `devices/`, not UTF-8, or has `.`/`..` parts.
    ///
    /// Compares lexically: pass canonical paths to a canonical root.
    pub fn path_to_devpath(&self, path: &Path) -> Option<String> {
        let rest = path.strip_prefix(&self.root).ok()?;
        let mut devpath = String::new();
        for (index, component) in rest.components().enumerate() {
            let Component::Normal(part) = component else {
                return None;
            };
            let part = part.to_str()?;
            if index == 0 && part != "devices" {
                return None;
            }
            devpath.push('/');
            devpath.push_str(part);
        }
        // At least `/devices/<something>`.
        if devpath.len() <= "/devices/".len() {
            return None;
        }
        Some(devpath)
    }

    /// `ROOT<devpath>/uevent`, the file that triggers a synthetic uevent.
    pub fn uevent_file(&self, devpath: &str) -> Option<PathBuf> {
        Some(self.devpath_to_path(devpath)?.join("uevent"))
    }
}

/// `<device>/mdev_supported_types`.
pub fn supported_types_dir(device_dir: &Path) -> PathBuf {
    device_dir.join(SUPPORTED_TYPES_DIR)
}

/// `<type dir>/devices`: one symlink per instance of that type.
pub fn type_devices_dir(type_dir: &Path) -> PathBuf {
    type_dir.join("devices")
}

/// The last component of a devpath (the kernel device name).
pub fn devpath_name(devpath: &str) -> &str {
    devpath.rsplit('/').next().unwrap_or(devpath)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> SysfsRoot {
        SysfsRoot::new("/tmp/fake")
    }

    #[test]
    fn named_locations() {
        let r = root();
        assert_eq!(r.mdev_bus_dir(), Path::new("/tmp/fake/class/mdev_bus"));
        assert_eq!(
            r.mdev_devices_dir(),
            Path::new("/tmp/fake/bus/mdev/devices")
        );
        assert_eq!(
            r.uevent_file("/devices/virtual/mtty/mtty"),
            Some(PathBuf::from("/tmp/fake/devices/virtual/mtty/mtty/uevent"))
        );
        assert_eq!(
            supported_types_dir(Path::new("/x/dev")),
            Path::new("/x/dev/mdev_supported_types")
        );
        assert_eq!(
            type_devices_dir(Path::new("/x/t")),
            Path::new("/x/t/devices")
        );
    }

    #[test]
    fn devpath_to_path_accepts_device_paths() {
        assert_eq!(
            root().devpath_to_path("/devices/pci0000:00/0000:00:02.0"),
            Some(PathBuf::from("/tmp/fake/devices/pci0000:00/0000:00:02.0"))
        );
    }

    #[test]
    fn devpath_to_path_refuses_escapes_and_odd_shapes() {
        for bad in [
            "",
            "/",
            "devices/x",
            "/devices",
            "/devices/",
            "/devices/../etc",
            "/devices/a/../../etc",
            "/devices/./a",
            "/devices//a",
            "/devices/a/",
            "/module/vfio",
            "/devices/a\0b",
        ] {
            assert_eq!(root().devpath_to_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn path_to_devpath_round_trips() {
        let r = root();
        let devpath = "/devices/css0/0.0.0013";
        let path = r.devpath_to_path(devpath).unwrap();
        assert_eq!(r.path_to_devpath(&path).as_deref(), Some(devpath));
    }

    #[test]
    fn path_to_devpath_refuses_outside_paths() {
        let r = root();
        assert_eq!(r.path_to_devpath(Path::new("/etc/passwd")), None);
        assert_eq!(
            r.path_to_devpath(Path::new("/tmp/fake/class/mdev_bus/x")),
            None
        );
        assert_eq!(r.path_to_devpath(Path::new("/tmp/fake/devices")), None);
        assert_eq!(r.path_to_devpath(Path::new("/tmp/fake/devices/../x")), None);
        assert_eq!(r.path_to_devpath(Path::new("/tmp/fakeX/devices/a")), None);
    }

    #[test]
    fn path_to_devpath_refuses_non_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let path = Path::new("/tmp/fake/devices").join(std::ffi::OsStr::from_bytes(b"a\xff"));
        assert_eq!(root().path_to_devpath(&path), None);
    }

    #[test]
    fn devpath_name_is_last_component() {
        assert_eq!(devpath_name("/devices/vfio_ap/matrix"), "matrix");
        assert_eq!(devpath_name("matrix"), "matrix");
    }

    proptest::proptest! {
        #[test]
        fn devpath_mapping_stays_inside_and_round_trips(devpath in "/devices(/[a-z.:0-9]{0,4}){0,5}|(/[a-z.]{0,3}){0,4}|\\PC{0,20}") {
            let r = root();
            if let Some(path) = r.devpath_to_path(&devpath) {
                let rest = path.strip_prefix(r.path()).unwrap();
                proptest::prop_assert!(rest.components().all(|c| matches!(c, Component::Normal(_))));
                proptest::prop_assert_eq!(r.path_to_devpath(&path), Some(devpath));
            }
        }
    }

    #[test]
    fn root_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<SysfsRoot>();
    }
}
