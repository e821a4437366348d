//! The uevent sink for vendor-VFIO parents (SPEC §7): their registration
//! and unregistration are announced by a synthetic `change` uevent written
//! to the VF's own sysfs `uevent` file, so the event carries the device's
//! real kernel properties (udev keeps its database from them) plus
//!
//! ```text
//! SYNTH_UUID=<uuid> SYNTH_ARG_MDEVSTATE=registered|unregistered SYNTH_ARG_MDEVREGBACKEND=nvidiavfio
//! ```
//!
//! (the kernel allows only `[A-Za-z0-9]` in synthetic keys and values, SPEC
//! §1.6); `udev-rules/70-mdevreg.rules` turns them into `MDEV_STATE` and
//! `MDEVREG_BACKEND=nvidia-vfio`. Writing needs write access to that one
//! file, nothing else of `/sys`: under the shipped unit (read-only `/sys`)
//! `mdevreg-uevent-writer` does it ([`crate::uevent_writer`]), with the
//! same [`change_line`] and [`write_line`].

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::emit::MdevState;
use crate::paths::SysfsRoot;

/// Synthetic key carrying the state (`SYNTH_ARG_MDEVSTATE`).
pub const STATE_KEY: &str = "MDEVSTATE";
/// Synthetic key carrying the backend (`SYNTH_ARG_MDEVREGBACKEND`).
pub const BACKEND_KEY: &str = "MDEVREGBACKEND";
/// Value of [`BACKEND_KEY`] for NVIDIA vendor-specific VFIO; the rules
/// turn it into `MDEVREG_BACKEND=nvidia-vfio`.
pub const BACKEND_NVIDIA_VFIO: &str = "nvidiavfio";

/// The line written to the `uevent` file.
pub fn change_line(state: MdevState, uuid: &uuid::Uuid) -> String {
    format!(
        "change {} {STATE_KEY}={} {BACKEND_KEY}={BACKEND_NVIDIA_VFIO}\n",
        uuid.hyphenated(),
        state.as_str()
    )
}

/// Writes the synthetic `change` for the device at `devpath` (below
/// `root`) in one `write`; returns the `SYNTH_UUID` used. The file is never
/// created (a device without one is gone).
pub fn write_change(root: &SysfsRoot, devpath: &str, state: MdevState) -> io::Result<uuid::Uuid> {
    let path = uevent_path(root, devpath)?;
    let uuid = uuid::Uuid::new_v4();
    let line = change_line(state, &uuid);
    write_line(&path, &line)?;
    Ok(uuid)
}

/// Writes `line` into the existing `uevent` file at `path` in one `write`:
/// never created, never through a symlink (`O_NOFOLLOW`; std adds
/// `O_CLOEXEC`).
pub fn write_line(path: &Path, line: &str) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    let written = file.write(line.as_bytes())?;
    if written != line.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write to {}", path.display()),
        ));
    }
    Ok(())
}

fn uevent_path(root: &SysfsRoot, devpath: &str) -> io::Result<PathBuf> {
    root.uevent_file(devpath).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a valid device path: {devpath:?}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_uses_only_keys_the_kernel_accepts() {
        let uuid = uuid::Uuid::nil();
        let line = change_line(MdevState::Registered, &uuid);
        assert_eq!(
            line,
            "change 00000000-0000-0000-0000-000000000000 MDEVSTATE=registered MDEVREGBACKEND=nvidiavfio\n"
        );
        for arg in line.trim_end().split(' ').skip(2) {
            let (key, value) = arg.split_once('=').unwrap();
            assert!(key.bytes().all(|b| b.is_ascii_alphanumeric()), "{key}");
            assert!(value.bytes().all(|b| b.is_ascii_alphanumeric()), "{value}");
        }
    }

    #[test]
    fn writes_into_an_existing_uevent_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = SysfsRoot::new(dir.path());
        let device = dir.path().join("devices/pci0000:40/0000:41:00.4");
        std::fs::create_dir_all(&device).unwrap();
        std::fs::write(
            device.join("uevent"),
            "DRIVER=nvidia\nPCI_SLOT_NAME=0000:41:00.4\n",
        )
        .unwrap();
        let uuid = write_change(
            &root,
            "/devices/pci0000:40/0000:41:00.4",
            MdevState::Unregistered,
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(device.join("uevent")).unwrap(),
            change_line(MdevState::Unregistered, &uuid)
        );
        let gone = write_change(&root, "/devices/pci0000:40/none", MdevState::Registered);
        assert_eq!(gone.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(!dir.path().join("devices/pci0000:40/none").exists());
        let bad = write_change(&root, "/devices/../etc", MdevState::Registered);
        assert_eq!(bad.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
