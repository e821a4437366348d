//! The boundary between userspace parents and the kernel's devices.
//!
//! A userspace parent's uevent looks like a kernel one to udevd, so its
//! `DevPath` must name no device of this machine and its `Subsystem` none of
//! the kernel's: otherwise udevd would run (say) the block rules on
//! `loop0` from a message that lacks loop0's real properties. Rules:
//! - `DevPath` must not exist below the sysfs root (an existing path is a
//!   device or lies above devices), and none of its ancestors may be a
//!   device (a directory holding `uevent`) or a plain file;
//! - `Subsystem` must not be a kernel subsystem: no `<root>/bus/<name>` and
//!   no `<root>/class/<name>`.
//!
//! Checked for every caller at registration and again before every uevent
//! emitted for a userspace parent (a device may have appeared since).
//! Reads sysfs with `symlink_metadata` only; never follows a link.

use std::io;
use std::path::Path;

use crate::paths::SysfsRoot;

/// Why a userspace parent's location crosses into the kernel's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Crossing {
    #[error("DevPath {0} is an existing sysfs device")]
    IsDevice(String),
    #[error("DevPath {0} lies above existing sysfs devices")]
    AboveDevices(String),
    #[error("DevPath {devpath} lies below the sysfs device {device}")]
    BelowDevice { devpath: String, device: String },
    #[error("DevPath {0} is not a device path below the sysfs root")]
    NotADevPath(String),
    #[error("Subsystem {0} is a kernel subsystem (under /sys/bus or /sys/class)")]
    KernelSubsystem(String),
    #[error("cannot check DevPath {devpath} against sysfs: {error}")]
    Unreadable { devpath: String, error: String },
}

/// Checks `devpath` and `subsystem` of a userspace parent against the tree
/// at `root`.
pub fn check(root: &SysfsRoot, devpath: &str, subsystem: &str) -> Result<(), Crossing> {
    check_devpath(root, devpath)?;
    check_subsystem(root, subsystem)
}

/// The `DevPath` half of [`check`].
pub fn check_devpath(root: &SysfsRoot, devpath: &str) -> Result<(), Crossing> {
    let Some(path) = root.devpath_to_path(devpath) else {
        return Err(Crossing::NotADevPath(devpath.to_owned()));
    };
    let unreadable = |error: io::Error| Crossing::Unreadable {
        devpath: devpath.to_owned(),
        error: error.to_string(),
    };
    if exists(&path).map_err(unreadable)? {
        return Err(if exists(&path.join("uevent")).map_err(unreadable)? {
            Crossing::IsDevice(devpath.to_owned())
        } else {
            Crossing::AboveDevices(devpath.to_owned())
        });
    }
    // Ancestors, nearest first, down to `/devices/<x>`.
    let mut ancestor = devpath;
    while let Some((above, _)) = ancestor.rsplit_once('/') {
        if above == "/devices" || above.is_empty() {
            break;
        }
        ancestor = above;
        let Some(dir) = root.devpath_to_path(ancestor) else {
            break;
        };
        let below = || Crossing::BelowDevice {
            devpath: devpath.to_owned(),
            device: ancestor.to_owned(),
        };
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if !meta.is_dir() => return Err(below()),
            Ok(_) => {
                if exists(&dir.join("uevent")).map_err(unreadable)? {
                    return Err(below());
                }
            }
            Err(err) if is_absent(&err) => {}
            Err(err) => return Err(unreadable(err)),
        }
    }
    Ok(())
}

/// The `Subsystem` half of [`check`].
pub fn check_subsystem(root: &SysfsRoot, subsystem: &str) -> Result<(), Crossing> {
    // A subsystem is a single path component (checked by validation);
    // anything else is refused here too rather than joined.
    if subsystem.is_empty() || subsystem.contains('/') || subsystem == "." || subsystem == ".." {
        return Err(Crossing::KernelSubsystem(subsystem.to_owned()));
    }
    for dir in ["bus", "class"] {
        let path = root.path().join(dir).join(subsystem);
        match exists(&path) {
            Ok(false) => {}
            Ok(true) => return Err(Crossing::KernelSubsystem(subsystem.to_owned())),
            Err(error) => {
                return Err(Crossing::Unreadable {
                    devpath: format!("(subsystem {subsystem})"),
                    error: error.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// Whether anything (file, directory, link) is at `path`.
fn exists(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if is_absent(&err) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Not there: missing, or a path component is not a directory.
fn is_absent(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(nix::libc::ENOTDIR)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// A small tree: a PCI device with a child, a virtual net device, and
    /// the `pci` bus and `net` class.
    fn tree() -> (tempfile::TempDir, SysfsRoot) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for device in [
            "devices/pci0000:00",
            "devices/pci0000:00/0000:00:02.0",
            "devices/virtual/net/lo",
        ] {
            fs::create_dir_all(root.join(device)).unwrap();
            fs::write(root.join(device).join("uevent"), "").unwrap();
        }
        fs::write(
            root.join("devices/pci0000:00/0000:00:02.0/vendor"),
            "0x8086\n",
        )
        .unwrap();
        for dir in ["bus/pci", "class/net", "class/mdev_bus"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        let sysfs = SysfsRoot::new(root);
        (dir, sysfs)
    }

    #[test]
    fn the_default_location_passes() {
        let (_dir, root) = tree();
        assert_eq!(
            check(&root, "/devices/virtual/mdevreg/p0", "mdevreg"),
            Ok(())
        );
        assert_eq!(check(&root, "/devices/elsewhere/p0", "vfio-user"), Ok(()));
    }

    #[test]
    fn devices_their_ancestors_and_descendants_are_refused() {
        let (_dir, root) = tree();
        let cases = [
            (
                "/devices/virtual/net/lo",
                Crossing::IsDevice("/devices/virtual/net/lo".into()),
            ),
            (
                "/devices/pci0000:00/0000:00:02.0",
                Crossing::IsDevice("/devices/pci0000:00/0000:00:02.0".into()),
            ),
            (
                "/devices/virtual/net",
                Crossing::AboveDevices("/devices/virtual/net".into()),
            ),
            (
                "/devices/virtual",
                Crossing::AboveDevices("/devices/virtual".into()),
            ),
            (
                "/devices/virtual/net/lo/fake",
                Crossing::BelowDevice {
                    devpath: "/devices/virtual/net/lo/fake".into(),
                    device: "/devices/virtual/net/lo".into(),
                },
            ),
            (
                "/devices/pci0000:00/0000:00:02.0/a/b",
                Crossing::BelowDevice {
                    devpath: "/devices/pci0000:00/0000:00:02.0/a/b".into(),
                    device: "/devices/pci0000:00/0000:00:02.0".into(),
                },
            ),
            (
                "/devices/pci0000:00/0000:00:02.0/vendor/x",
                Crossing::BelowDevice {
                    devpath: "/devices/pci0000:00/0000:00:02.0/vendor/x".into(),
                    device: "/devices/pci0000:00/0000:00:02.0/vendor".into(),
                },
            ),
            ("/etc/passwd", Crossing::NotADevPath("/etc/passwd".into())),
        ];
        for (devpath, want) in cases {
            assert_eq!(check(&root, devpath, "mdevreg"), Err(want), "{devpath}");
        }
    }

    #[test]
    fn kernel_subsystems_are_refused() {
        let (_dir, root) = tree();
        for subsystem in ["pci", "net", "mdev_bus", "..", "a/b", ""] {
            assert_eq!(
                check(&root, "/devices/virtual/mdevreg/p0", subsystem),
                Err(Crossing::KernelSubsystem(subsystem.into())),
                "{subsystem}"
            );
        }
    }

    #[test]
    fn this_machines_sysfs_is_respected() {
        // Read-only checks against the real /sys: lo always exists, and
        // every kernel has the `net` class and the `platform` bus.
        let root = SysfsRoot::new("/sys");
        assert!(matches!(
            check(&root, "/devices/virtual/net/lo", "mdevreg"),
            Err(Crossing::IsDevice(_))
        ));
        assert!(matches!(
            check(&root, "/devices/virtual/mdevreg/p0", "net"),
            Err(Crossing::KernelSubsystem(_))
        ));
        assert!(matches!(
            check(&root, "/devices/virtual/mdevreg/p0", "platform"),
            Err(Crossing::KernelSubsystem(_))
        ));
        assert_eq!(
            check(&root, "/devices/virtual/mdevreg/p0", "mdevreg"),
            Ok(())
        );
    }
}
