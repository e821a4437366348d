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
use serde::Serializer;

use crate::model::{Backend, Parent, ParentInfo};

/// Writes the document of the mdev parents among `parents` (only
/// `only_parent` if given) to a new memfd, sealed against any change. Like
/// mdevctl's, it leaves vendor-VFIO parents out (`types --backend all`
/// renders them on the client side).
pub fn render<'a>(
    parents: impl IntoIterator<Item = &'a ParentInfo>,
    only_parent: Option<&str>,
) -> io::Result<File> {
    let mdev = parents.into_iter().filter(|p| p.backend == Backend::Mdev);
    render_with(|writer| mdevctl_json::write_types_json_pretty(writer, mdev, only_parent))
}

/// Writes `parents` (only the one called `only_parent` if given) as a JSON
/// array in their serde form (that of the state files) to a sealed memfd:
/// what `DumpParentsByFileDescriptor` hands out for `list` and `show`.
pub fn render_parents<'a>(
    parents: impl Iterator<Item = &'a Parent>,
    only_parent: Option<&str>,
) -> io::Result<File> {
    render_with(|writer| {
        let selected = parents.filter(|p| only_parent.is_none_or(|name| p.name() == name));
        let mut serializer = serde_json::Serializer::new(writer);
        serializer.collect_seq(selected).map_err(io::Error::other)
    })
}

/// A new memfd holding what `write` writes, sealed against any change.
fn render_with(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<File> {
    let fd = memfd_create(
        c"mdevreg-document.json",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let file = File::from(fd);
    let mut writer = BufWriter::with_capacity(64 * 1024, &file);
    write(&mut writer)?;
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
            backend: Default::default(),
            physical_device: String::new(),
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
        // The parents' form reads back as the same parents.
        let kernel = crate::mdevctl_json::kernel_parent(parent.clone());
        let memfd_parents = render_parents([&kernel].into_iter(), None).expect("render");
        let mut text = String::new();
        reopen(&memfd_parents)
            .expect("reopen")
            .read_to_string(&mut text)
            .expect("read");
        let back: Vec<Parent> = serde_json::from_str(&text).expect("parents JSON");
        assert_eq!(back, std::slice::from_ref(&kernel));
        let none = render_parents([&kernel].into_iter(), Some("other")).expect("render");
        let mut text = String::new();
        reopen(&none)
            .expect("reopen")
            .read_to_string(&mut text)
            .expect("read");
        assert_eq!(text, "[]");

        // Sealed: a writable reopen may exist, but writing fails.
        let writable = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", memfd.as_raw_fd()));
        if let Ok(mut writable) = writable {
            assert!(writable.write_all(b"x").is_err());
        }
    }
}
