//! The `mdevctl types --dumpjson` document of the registry in a sealed
//! memfd: rendered straight into the file (the daemon never holds the
//! megabytes of a large tree in its own memory), handed to clients as a
//! file descriptor (`DumpTypesByFileDescriptor`, as systemd's
//! `DumpByFileDescriptor`) so the bus does not copy it either. The whole
//! document is kept in a [`DocumentCache`] until the registry changes; it
//! is rendered outside the cache's lock.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, PoisonError};

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

/// The last rendered document and the registry sequence number it shows.
///
/// The lock is held only to look at the slot or to fill it, never while a
/// document is rendered (hundreds of milliseconds on a large tree): readers
/// of the cached document and renderers of a newer one do not wait for a
/// renderer. Two callers missing the cache at once may both render; the
/// first installs its document, if it is still current.
#[derive(Debug, Default)]
pub struct DocumentCache {
    slot: Mutex<Option<(u64, File)>>,
}

impl DocumentCache {
    /// The document of sequence number `seqnum` as a file of its own: the
    /// cached one if it shows `seqnum`, else what `render` makes (outside
    /// the lock), installed if nothing newer is cached and `seqnum` is
    /// still `current()` (a registry that moved on meanwhile would make it
    /// a document nobody asks for again).
    pub fn get_or_render(
        &self,
        seqnum: u64,
        current: impl FnOnce() -> u64,
        render: impl FnOnce() -> io::Result<File>,
    ) -> io::Result<File> {
        if let Some((cached, file)) = self.lock().as_ref() {
            if *cached == seqnum {
                return reopen(file);
            }
        }
        let file = render()?;
        let reopened = reopen(&file)?;
        let still_current = current() == seqnum;
        let mut slot = self.lock();
        let newer_cached = slot.as_ref().is_some_and(|(cached, _)| *cached >= seqnum);
        if still_current && !newer_cached {
            *slot = Some((seqnum, file));
        }
        Ok(reopened)
    }

    /// The sequence number of the cached document.
    #[cfg(test)]
    pub fn cached(&self) -> Option<u64> {
        self.lock().as_ref().map(|(seqnum, _)| *seqnum)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, File)>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
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
                description: "".into(),
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

    fn text(file: io::Result<File>) -> String {
        let mut text = String::new();
        file.expect("document")
            .read_to_string(&mut text)
            .expect("read");
        text
    }

    fn doc(text: &str) -> io::Result<File> {
        render_with(|writer| writer.write_all(text.as_bytes()))
    }

    #[test]
    fn documents_are_rendered_outside_the_cache_lock_and_installed_if_current() {
        let cache = DocumentCache::default();
        // Rendering does not hold the lock: another caller can read the
        // cache meanwhile (try_lock would fail under the lock).
        let first = cache.get_or_render(
            5,
            || 5,
            || {
                assert!(cache.slot.try_lock().is_ok(), "rendered under the lock");
                // A caller of the same number meanwhile renders its own.
                let meanwhile = cache.get_or_render(5, || 5, || doc("five, meanwhile"));
                assert_eq!(text(meanwhile), "five, meanwhile");
                doc("five")
            },
        );
        // Each caller gets what it rendered; the first installed wins.
        assert_eq!(text(first), "five");
        assert_eq!(cache.cached(), Some(5));
        let cached = cache.get_or_render(5, || 5, || panic!("must come from the cache"));
        assert_eq!(text(cached), "five, meanwhile");
        // A document of a registry that moved on during the render is
        // served but not installed.
        let stale = cache.get_or_render(6, || 7, || doc("six"));
        assert_eq!(text(stale), "six");
        assert_eq!(cache.cached(), Some(5));
        // A newer one is installed; an older one rendered late is not.
        assert_eq!(text(cache.get_or_render(7, || 7, || doc("seven"))), "seven");
        let late = cache.get_or_render(6, || 6, || doc("six, late"));
        assert_eq!(text(late), "six, late");
        assert_eq!(cache.cached(), Some(7));
        // A render that fails is an error for its caller, nothing more.
        let failed = cache.get_or_render(8, || 8, || Err(io::Error::other("no memfd")));
        assert!(failed.is_err());
        assert_eq!(cache.cached(), Some(7));
    }
}
