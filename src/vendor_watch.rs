//! The cheap check behind the vendor-VFIO poll (`--poll-interval`): says
//! whether the two small files of any known VF (`nvidia/creatable_vgpu_types`
//! and `nvidia/current_vgpu_type`) changed since it last looked, so the
//! daemon re-reads and compares the parents ([`crate::nvidia_vfio::poll`])
//! only then. An idle host costs no parsing, no copy of any parent, no
//! commit.
//!
//! Steady state, per file and poll: one `pread` at offset 0 of the file,
//! kept open, into a buffer reused for every file, compared with the bytes
//! seen last; on a tree that is not sysfs, one `fstat` of it too. No path
//! walk, no allocation.
//!
//! Re-reading a kept descriptor: a sysfs attribute produces its contents
//! again (the driver's `show`) on every read from offset 0, and once the
//! attribute is removed (driver unbound, VF gone) the read fails with
//! `ENODEV`; a sysfs file is never replaced under its name. A file of a
//! fake tree (`--sysfs-root`, the tests) may be rewritten in place, which
//! the `pread` sees, or replaced (renamed over, or removed with its
//! directory), which it does not: its link count is 0 then (the `fstat`),
//! and it is opened again relative to the VF's `nvidia/` directory, kept
//! open too. (A file replaced while another hard link to it remains is not
//! noticed; no tree is built that way.) Any failure drops the VF's kept
//! descriptors, which are opened again by path at the next poll, so a
//! `nvidia/` directory removed and created again is seen.
//!
//! Descriptors: three per VF (the directory, two files) for the first VFs
//! up to half the soft limit of open files (raised to the hard limit, see
//! [`raise_open_files_limit`]); further VFs are read by path (open, read,
//! close).
//!
//! Soundness: what is seen is recorded before the daemon's re-read, so the
//! registry is never older than what was seen (a change in between is seen
//! again at the next poll); and when the registry's view of a VF changes by
//! another path (a uevent's re-read, a rescan) what was seen of it is
//! forgotten, so a file going back to an earlier value is not missed.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::model::{Backend, ParentInfo, Source};
use crate::nvidia_vfio;
use crate::paths::{SysfsRoot, CREATABLE_VGPU_TYPES, CURRENT_VGPU_TYPE};
use crate::registry::Registry;
use crate::sysfs;

/// Descriptors kept per VF: its `nvidia/` directory and the two files.
const FDS_PER_VF: u64 = 3;

/// Raises the soft limit of open files to the hard limit (systemd starts
/// services with 1024 for the sake of `select()`, which the daemon never
/// uses); the soft limit now.
pub fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// What was seen of one file last.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Nothing yet (or forgotten): the next look counts as a change.
    Nothing,
    Bytes(Vec<u8>),
    /// Reading failed with this code ([`sysfs::read_open_attr`]; an errno).
    Failed(i32),
}

#[derive(Debug)]
struct WatchedFile {
    name: &'static str,
    /// `<nvidia dir>/<name>`, for VFs read by path.
    path: PathBuf,
    /// The kept file.
    kept: Option<fs::File>,
    seen: Seen,
}

#[derive(Debug)]
struct WatchedVf {
    devpath: String,
    /// Of the registry's types of the VF when last synced.
    fingerprint: u64,
    /// `<root><devpath>/nvidia`; `None` when the devpath does not map
    /// into the root (then every look fails).
    dir_path: Option<PathBuf>,
    /// Whether descriptors are kept for it (within the budget).
    keep: bool,
    dir: Option<OwnedFd>,
    files: [WatchedFile; 2],
}

/// The state of the check: the known VFs and what was seen of them.
#[derive(Debug)]
pub struct VendorWatch {
    root: SysfsRoot,
    vfs: Vec<WatchedVf>,
    /// Registry sequence number the list was synced at.
    synced: Option<u64>,
    /// Read buffer, reused for every file.
    buf: Vec<u8>,
    /// How many VFs may keep descriptors.
    keep_budget: usize,
    /// Whether kept files may be replaced under their name (not sysfs).
    replaceable: bool,
}

/// How [`VendorWatch::sync`] treats a VF whose registry view changed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Changed {
    /// Forget what was seen: the registry changed by another path.
    Forget,
    /// Keep it: the daemon's re-read that follows a look changed it.
    Keep,
}

impl VendorWatch {
    /// A watch of the vendor-VFIO VFs below `root`; `open_files_limit` is the
    /// soft limit of open files (half of it may be kept open here).
    pub fn new(root: SysfsRoot, open_files_limit: u64) -> VendorWatch {
        let budget = open_files_limit / 2 / FDS_PER_VF;
        let sysfs = nix::sys::statfs::statfs(root.path())
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::SYSFS_MAGIC);
        VendorWatch {
            replaceable: !sysfs,
            root,
            vfs: Vec::new(),
            synced: None,
            buf: Vec::new(),
            keep_budget: usize::try_from(budget).unwrap_or(usize::MAX),
        }
    }

    /// Looks at the two files of every kernel vendor-VFIO parent of
    /// `registry`: whether any may have changed since the last look (or
    /// is new, or its registry view changed by another path). When it
    /// says so, the caller re-reads and applies, then calls
    /// [`VendorWatch::accept`].
    pub fn check(&mut self, registry: &Registry) -> bool {
        let mut changed = false;
        if self.synced != Some(registry.seqnum()) {
            changed = self.sync(registry, Changed::Forget);
        }
        for vf in &mut self.vfs {
            changed |= vf.look(&mut self.buf, self.replaceable);
        }
        changed
    }

    /// After the re-read that followed a [`VendorWatch::check`] saying
    /// "changed" was applied: takes the registry's new view of the VFs
    /// without forgetting what was seen (the re-read came after it).
    pub fn accept(&mut self, registry: &Registry) {
        self.sync(registry, Changed::Keep);
    }

    /// VFs watched now.
    pub fn len(&self) -> usize {
        self.vfs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vfs.is_empty()
    }

    /// Descriptors kept open now.
    pub fn kept_fds(&self) -> usize {
        self.vfs
            .iter()
            .map(|vf| {
                usize::from(vf.dir.is_some()) + vf.files.iter().filter(|f| f.kept.is_some()).count()
            })
            .sum()
    }

    /// Makes the list the registry's kernel vendor-VFIO parents (in its
    /// order), keeping what was seen of those already known whose view did
    /// not change (or, with [`Changed::Keep`], of all known). Whether any
    /// VF is new or forgotten.
    fn sync(&mut self, registry: &Registry, changed: Changed) -> bool {
        self.synced = Some(registry.seqnum());
        let mut old: HashMap<String, WatchedVf> = std::mem::take(&mut self.vfs)
            .into_iter()
            .map(|vf| (vf.devpath.clone(), vf))
            .collect();
        let mut fresh = false;
        let vendor = registry.parents().filter(|parent| {
            parent.source == Source::Kernel && parent.info.backend == Backend::NvidiaVfio
        });
        for parent in vendor {
            let fingerprint = fingerprint(&parent.info);
            let vf = match old.remove(&parent.info.devpath) {
                Some(mut vf) => {
                    if vf.fingerprint != fingerprint {
                        vf.fingerprint = fingerprint;
                        if changed == Changed::Forget {
                            vf.forget();
                            fresh = true;
                        }
                    }
                    vf
                }
                None => {
                    fresh = true;
                    WatchedVf::new(&self.root, &parent.info.devpath, fingerprint)
                }
            };
            self.vfs.push(vf);
        }
        // Descriptors only for the first VFs within the budget.
        for (index, vf) in self.vfs.iter_mut().enumerate() {
            vf.keep = index < self.keep_budget;
            if !vf.keep {
                vf.close();
            }
        }
        fresh
    }
}

/// A digest of what the registry says of a VF's types.
fn fingerprint(info: &ParentInfo) -> u64 {
    let mut hasher = DefaultHasher::new();
    info.types.hash(&mut hasher);
    hasher.finish()
}

impl WatchedVf {
    fn new(root: &SysfsRoot, devpath: &str, fingerprint: u64) -> WatchedVf {
        let dir_path = root
            .devpath_to_path(devpath)
            .map(|device| nvidia_vfio::vfio_dir(&device));
        let file = |name: &'static str| WatchedFile {
            name,
            path: dir_path
                .as_ref()
                .map(|dir| dir.join(name))
                .unwrap_or_default(),
            kept: None,
            seen: Seen::Nothing,
        };
        WatchedVf {
            devpath: devpath.to_owned(),
            fingerprint,
            keep: false,
            dir: None,
            files: [file(CREATABLE_VGPU_TYPES), file(CURRENT_VGPU_TYPE)],
            dir_path,
        }
    }

    fn forget(&mut self) {
        for file in &mut self.files {
            file.seen = Seen::Nothing;
        }
    }

    fn close(&mut self) {
        self.dir = None;
        for file in &mut self.files {
            file.kept = None;
        }
    }

    /// Reads both files; whether either differs from what was seen (which
    /// is updated).
    fn look(&mut self, buf: &mut Vec<u8>, replaceable: bool) -> bool {
        let mut changed = false;
        for index in 0..self.files.len() {
            let read = self.read(index, buf, replaceable);
            if read.is_err() {
                // Opened again by path next time.
                self.close();
            }
            let file = &mut self.files[index];
            let same = match (&file.seen, &read) {
                (Seen::Bytes(seen), Ok(len)) => seen.as_slice() == &buf[..*len],
                (Seen::Failed(seen), Err(code)) => seen == code,
                _ => false,
            };
            if !same {
                changed = true;
                file.seen = match read {
                    Ok(len) => match std::mem::replace(&mut file.seen, Seen::Nothing) {
                        Seen::Bytes(mut bytes) => {
                            bytes.clear();
                            bytes.extend_from_slice(&buf[..len]);
                            Seen::Bytes(bytes)
                        }
                        _ => Seen::Bytes(buf[..len].to_vec()),
                    },
                    Err(code) => Seen::Failed(code),
                };
            }
        }
        changed
    }

    /// The contents of file `index` into `buf`: its length, or a failure
    /// code.
    fn read(&mut self, index: usize, buf: &mut Vec<u8>, replaceable: bool) -> Result<usize, i32> {
        if self.dir_path.is_none() {
            return Err(Errno::ENOENT as i32);
        }
        if !self.keep {
            let file = sysfs::open_nonblocking(&self.files[index].path)
                .map_err(|err| err.raw_os_error().unwrap_or(-1))?;
            return sysfs::read_open_attr(&file, buf);
        }
        let file = &mut self.files[index];
        if replaceable {
            // Replaced (or removed) since it was opened?
            if let Some(kept) = &file.kept {
                let gone = nix::sys::stat::fstat(kept).map_or(true, |stat| stat.st_nlink == 0);
                if gone {
                    file.kept = None;
                }
            }
        }
        let kept = match &mut file.kept {
            Some(kept) => kept,
            slot => {
                if self.dir.is_none() {
                    let dir_path = self.dir_path.as_deref().unwrap_or(Path::new(""));
                    self.dir = Some(sysfs::open_dir_fd(dir_path).ok_or(Errno::ENOENT as i32)?);
                }
                let Some(dir) = self.dir.as_ref() else {
                    return Err(Errno::ENOENT as i32);
                };
                let opened = nix::fcntl::openat(
                    dir,
                    file.name,
                    OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|errno| errno as i32)?;
                slot.insert(fs::File::from(opened))
            }
        };
        sysfs::read_open_attr(kept, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MdevType;
    use crate::registry::Input;

    const DEVPATH: &str = "/devices/pci0000:40/0000:40:01.1/0000:41:00.4";

    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Tree {
            let tree = Tree {
                dir: tempfile::tempdir().expect("tempdir"),
            };
            tree.write(CREATABLE_VGPU_TYPES, "ID : vGPU Name\n1145 : A\n");
            tree.write(CURRENT_VGPU_TYPE, "0\n");
            tree
        }

        fn nvidia(&self) -> PathBuf {
            self.dir.path().join(&DEVPATH[1..]).join("nvidia")
        }

        fn write(&self, name: &str, text: &str) {
            fs::create_dir_all(self.nvidia()).expect("mkdir");
            fs::write(self.nvidia().join(name), text).expect("write");
        }

        fn root(&self) -> SysfsRoot {
            SysfsRoot::new(self.dir.path())
        }
    }

    fn registry_with(types: Vec<MdevType>) -> Registry {
        let mut registry = Registry::new();
        let info = ParentInfo {
            name: "0000:41:00.4".into(),
            devpath: DEVPATH.into(),
            subsystem: "pci".into(),
            driver: "nvidia".into(),
            backend: Backend::NvidiaVfio,
            physical_device: "0000:41:00.0".into(),
            types,
        };
        registry
            .apply(Input::BackendScan {
                backend: Backend::NvidiaVfio,
                parents: vec![info],
            })
            .expect("apply");
        registry
    }

    fn one_type(available: u32) -> Vec<MdevType> {
        vec![MdevType {
            id: "nvidia-1145".into(),
            name: "A".into(),
            device_api: "vfio-pci".into(),
            available_instances: available,
            ..MdevType::default()
        }]
    }

    #[test]
    fn sees_in_place_writes_renames_and_removal() {
        let tree = Tree::new();
        let registry = registry_with(one_type(1));
        let mut watch = VendorWatch::new(tree.root(), 1024);
        assert!(watch.check(&registry), "a new VF counts as a change");
        watch.accept(&registry);
        assert!(!watch.check(&registry));
        assert!(!watch.check(&registry));
        assert_eq!(watch.kept_fds(), 3);

        // Rewritten in place (the fixture's way): the kept fd sees it.
        tree.write(CURRENT_VGPU_TYPE, "1145\n");
        assert!(watch.check(&registry));
        assert!(!watch.check(&registry), "seen once");

        // Replaced by rename: the old file has no link left.
        let temp = tree.nvidia().join(".new");
        fs::write(&temp, "0\n").expect("write");
        fs::rename(&temp, tree.nvidia().join(CURRENT_VGPU_TYPE)).expect("rename");
        assert!(watch.check(&registry));
        assert!(!watch.check(&registry));

        // The nvidia/ directory removed, then created again.
        fs::remove_dir_all(tree.nvidia()).expect("rm");
        assert!(watch.check(&registry), "gone is a change");
        assert!(!watch.check(&registry), "still gone: no change");
        tree.write(CREATABLE_VGPU_TYPES, "ID : vGPU Name\n1145 : A\n");
        tree.write(CURRENT_VGPU_TYPE, "0\n");
        assert!(watch.check(&registry), "back again");
        assert!(!watch.check(&registry));
        assert_eq!(watch.kept_fds(), 3, "opened again");
    }

    #[test]
    fn forgets_a_vf_the_registry_changed_by_another_path() {
        let tree = Tree::new();
        let registry = registry_with(one_type(1));
        let mut watch = VendorWatch::new(tree.root(), 1024);
        watch.check(&registry);
        watch.accept(&registry);
        // The file goes A -> B, a uevent's re-read puts B in the registry,
        // then the file goes back to A: the poll must still re-read.
        let mut updated = registry.clone();
        updated
            .apply(Input::BackendScan {
                backend: Backend::NvidiaVfio,
                parents: vec![ParentInfo {
                    types: one_type(0),
                    ..registry.parents().next().expect("one").info.clone()
                }],
            })
            .expect("apply");
        assert_ne!(updated.seqnum(), registry.seqnum());
        assert!(watch.check(&updated), "its view changed: forgotten");
        watch.accept(&updated);
        assert!(!watch.check(&updated));

        // accept() keeps what was seen although the view changed.
        let mut again = updated.clone();
        again
            .apply(Input::BackendScan {
                backend: Backend::NvidiaVfio,
                parents: vec![ParentInfo {
                    types: one_type(1),
                    ..updated.parents().next().expect("one").info.clone()
                }],
            })
            .expect("apply");
        watch.accept(&again);
        assert!(!watch.check(&again));
    }

    #[test]
    fn over_the_budget_reads_by_path_and_keeps_nothing() {
        let tree = Tree::new();
        let registry = registry_with(one_type(1));
        let mut watch = VendorWatch::new(tree.root(), 0);
        assert!(watch.check(&registry));
        assert!(!watch.check(&registry));
        assert_eq!(watch.kept_fds(), 0);
        tree.write(CURRENT_VGPU_TYPE, "1145\n");
        assert!(watch.check(&registry));
        assert!(!watch.check(&registry));
        assert_eq!(watch.len(), 1);
    }

    /// The sysfs semantics the kept descriptors rely on, on the real
    /// /sys: a kept attribute read again at offset 0 shows its new value
    /// (`lo`'s packet counter, bumped by a datagram to 127.0.0.1), with no
    /// `fstat` (sysfs is recognised).
    #[test]
    fn a_kept_sysfs_attribute_is_read_again_from_offset_0() {
        let statistics = Path::new("/sys/class/net/lo/statistics");
        if !statistics.join("rx_packets").exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "no /sys/class/net/lo/statistics/rx_packets"
            );
            eprintln!("skipped: no /sys/class/net/lo/statistics/rx_packets");
            return;
        }
        let watch = VendorWatch::new(SysfsRoot::new("/sys"), 1024);
        assert!(!watch.replaceable, "/sys is sysfs");
        let file = |name: &'static str| WatchedFile {
            name,
            path: statistics.join(name),
            kept: None,
            seen: Seen::Nothing,
        };
        let mut vf = WatchedVf {
            devpath: String::new(),
            fingerprint: 0,
            dir_path: Some(statistics.to_path_buf()),
            keep: true,
            dir: None,
            files: [file("rx_packets"), file("tx_packets")],
        };
        let mut buf = Vec::new();
        assert!(vf.look(&mut buf, false), "first look");
        let Seen::Bytes(first) = &vf.files[0].seen else {
            panic!("{:?}", vf.files[0].seen);
        };
        let first: u64 = String::from_utf8_lossy(first)
            .trim()
            .parse()
            .expect("count");
        // Bump the counter until the kept descriptor shows it.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let target = socket.local_addr().expect("addr");
        let mut changed = false;
        for _ in 0..100 {
            socket.send_to(b"x", target).expect("send");
            if vf.look(&mut buf, false) {
                changed = true;
                break;
            }
        }
        assert!(changed, "the kept fd never showed a new value");
        let Seen::Bytes(now) = &vf.files[0].seen else {
            panic!("{:?}", vf.files[0].seen);
        };
        let now: u64 = String::from_utf8_lossy(now).trim().parse().expect("count");
        assert!(now > first, "{first} -> {now}");
        assert!(
            vf.files[0].kept.is_some() && vf.dir.is_some(),
            "read through kept fds"
        );
    }

    #[test]
    fn a_host_without_vendor_parents_watches_nothing() {
        let tree = Tree::new();
        let mut watch = VendorWatch::new(tree.root(), 1024);
        let registry = Registry::new();
        assert!(!watch.check(&registry));
        assert!(watch.is_empty());
    }
}
