//! Is this daemon start the first of this boot? Persistent parents restored
//! in a new boot are registrations as far as the world can tell (uevent and
//! signals, once); a restart within the same boot emits nothing new.
//!
//! Decided by a marker file in the runtime directory (a tmpfs, emptied by a
//! reboot) holding the kernel's boot id: no marker, or one naming another
//! boot (a runtime directory that survived the reboot), means a new boot.
//! The marker is written once the restored parents were announced.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// File name of the marker in the runtime directory.
pub const MARKER_FILE: &str = "boot-id";
/// The kernel's id of the running boot.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The decision (pure): `marker` is the marker file's contents (`None`
/// when there is none), `boot_id` the running boot's id (`None` if it
/// cannot be read).
pub fn is_new_boot(marker: Option<&str>, boot_id: Option<&str>) -> bool {
    match (marker.map(str::trim), boot_id.map(str::trim)) {
        (None, _) => true,
        (Some(marker), Some(boot_id)) => marker != boot_id,
        (Some(_), None) => false,
    }
}

/// The running boot's id, if the kernel tells.
pub fn current_boot_id() -> Option<String> {
    fs::read_to_string(BOOT_ID_PATH)
        .ok()
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
}

/// The marker in `runtime_dir`.
pub fn marker_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(MARKER_FILE)
}

/// Reads the marker of `runtime_dir` and decides. An unreadable marker
/// (other than missing) counts as the same boot: announcing again is the
/// visible mistake, staying quiet the safe one.
pub fn detect(runtime_dir: &Path, boot_id: Option<&str>) -> bool {
    match fs::read_to_string(marker_path(runtime_dir)) {
        Ok(marker) => is_new_boot(Some(&marker), boot_id),
        Err(err) if err.kind() == io::ErrorKind::NotFound => is_new_boot(None, boot_id),
        Err(err) => {
            log::warn!(
                "cannot read {}: {err}; assuming the same boot",
                marker_path(runtime_dir).display()
            );
            false
        }
    }
}

/// Writes the marker atomically (temp file, fsync, rename), creating
/// `runtime_dir` if needed.
pub fn mark(runtime_dir: &Path, boot_id: Option<&str>) -> io::Result<()> {
    fs::create_dir_all(runtime_dir)?;
    let path = marker_path(runtime_dir);
    let temp = runtime_dir.join(format!(".{MARKER_FILE}.tmp"));
    {
        let mut file = fs::File::create(&temp)?;
        writeln!(file, "{}", boot_id.unwrap_or("unknown"))?;
        file.sync_all()?;
    }
    fs::rename(&temp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision() {
        assert!(is_new_boot(None, Some("a")));
        assert!(is_new_boot(None, None));
        assert!(is_new_boot(Some("a\n"), Some("b")));
        assert!(!is_new_boot(Some("a\n"), Some("a")));
        assert!(!is_new_boot(Some("a"), None));
    }

    #[test]
    fn marker_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("run");
        assert!(detect(&runtime, Some("boot-1")));
        mark(&runtime, Some("boot-1")).unwrap();
        assert!(!detect(&runtime, Some("boot-1")));
        assert!(detect(&runtime, Some("boot-2")));
        fs::remove_file(marker_path(&runtime)).unwrap();
        assert!(detect(&runtime, Some("boot-1")));
    }
}
