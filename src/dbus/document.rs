//! The `mdevctl types --dumpjson` document of the registry in a sealed
//! memfd: rendered straight into the file (the daemon never holds the
//! megabytes of a large tree in its own memory), handed to clients as a
//! file descriptor (`DumpTypesByFileDescriptor`, as systemd's
//! `DumpByFileDescriptor`) so the bus does not copy it either.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::AsRawFd;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

use crate::mdevctl_json;
use crate::model::ParentInfo;

/// Writes the document of `parents` (only `only_parent` if given) to a new
/// memfd, sealed against any change.
pub fn render<'a>(
    parents: impl IntoIterator<Item = &'a ParentInfo>,
    only_parent: Option<&str>,
) -> io::Result<File> {
    let fd = memfd_create(
        c"mdevreg-types.json",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let file = File::from(fd);
    let mut writer = BufWriter::with_capacity(64 * 1024, &file);
    mdevctl_json::write_types_json_pretty(&mut writer, parents, only_parent)?;
    writer.flush()?;
    drop(writer);
    fcntl(
        &file,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(file)
}

/// A new read-only open file of `memfd`, at offset 0 (its own offset, so
/// readers do not disturb each other or the cached original).
pub fn reopen(memfd: &File) -> io::Result<File> {
    File::open(format!("/proc/self/fd/{}", memfd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::model::MdevType;

    #[test]
    fn document_is_sealed_and_reread_from_the_start() {
        let parent = ParentInfo {
            name: "mtty".into(),
            devpath: "/devices/virtual/mtty/mtty".into(),
            subsystem: "mtty".into(),
            driver: String::new(),
            types: vec![MdevType {
                id: "mtty-1".into(),
                name: "Single port serial".into(),
                description: String::new(),
                device_api: "vfio-pci".into(),
                available_instances: 24,
                devices: Vec::new(),
            }],
        };
        let memfd = render([&parent], None).expect("render");
        let expected = mdevctl_json::types_json_pretty(std::slice::from_ref(&parent), None);
        for _ in 0..2 {
            let mut text = String::new();
            reopen(&memfd)
                .expect("reopen")
                .read_to_string(&mut text)
                .expect("read");
            assert_eq!(text, expected);
        }
        // Sealed: a writable reopen may exist, but writing fails.
        let writable = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", memfd.as_raw_fd()));
        if let Ok(mut writable) = writable {
            assert!(writable.write_all(b"x").is_err());
        }
    }
}
