//! Reads mdev parents, their types and instances from a sysfs tree into plain
//! [`ParentInfo`] data, with plain `std::fs`.
//!
//! What is read (all below a [`SysfsRoot`]):
//! - `class/mdev_bus/<name>`: a symlink per parent, resolved to its devpath;
//!   the parent's name is the devpath's last component (the kernel names
//!   the link after the device, so the two agree);
//! - `<parent>/subsystem`, `<parent>/driver` and `<parent>/physfn` (the
//!   physical function of an SR-IOV VF): symlinks, basename taken (empty
//!   when absent);
//! - `<parent>/mdev_supported_types/<id>/`: `device_api`, `available_instances`
//!   (required), `name`, `description` (optional), `devices/<uuid>` (not by
//!   [`scan_types`]);
//! - `bus/mdev/devices/<uuid>` (by [`scan`] only): links to `<parent>/<uuid>`
//!   whose `mdev_type` link names the type; instances found there but missing
//!   from the type's `devices/` are merged in;
//! - `bus/pci/devices/*/nvidia/`: NVIDIA vendor-specific VFIO parents, read
//!   by [`crate::nvidia_vfio`] (by both [`scan`] and [`scan_types`]).
//!
//! Text is normalised as mdevctl 1.2.0 does (checked by running it): `name`
//! and `device_api` have surrounding whitespace trimmed; `description` is
//! trimmed and then every inner `\n` becomes `", "`. `available_instances` is
//! trimmed and parsed as any `u32` (mdevctl stops at 2^31-1).
//!
//! Robustness policy: one bad entry never hides the good ones. Everything
//! wrong is reported as a [`Warning`] naming the path, and
//! - a type whose `device_api` or `available_instances` is missing,
//!   unreadable, not UTF-8, too big or (for the number) not a `u32` is
//!   skipped; its parent is still reported with its other types. A parent
//!   whose types are all bad is still reported, with zero types: it is
//!   registered with the kernel, and mdevctl itself lists a parent without
//!   types as `"parent": []`;
//! - a `name` or `description` that is not UTF-8 is kept with invalid bytes
//!   replaced (U+FFFD); one that cannot be read is treated as absent;
//! - a `class/mdev_bus` entry that is dangling, loops, points outside the
//!   tree's `devices/`, or has no `mdev_supported_types` directory is skipped;
//! - directory entries whose names are not UTF-8 are skipped, and so are
//!   `devices/` entries that are not hyphenated UUIDs;
//! - every attribute is read at most [`MAX_ATTR_BYTES`] (a larger file is an
//!   error), opened non-blocking and accepted only if it is a regular file
//!   (checked without `fstat` where a positional read already tells, see
//!   `read_into`; the one gap: a character device that allows positional
//!   reads and gives a short non-empty one, such as `/dev/kmsg`).
//!
//! All file system access goes through [`read_attr_string`], [`read_attr_u32`],
//! [`read_link_name`] and [`list_dir`] (plus `canonicalize` for links), or
//! their variants relative to an open directory; every attribute read ends
//! in `read_into`.
//!
//! Speed (the work is almost all system calls): [`scan`] reads parents and
//! `bus/mdev/devices` links on up to `available_parallelism()` threads and
//! merges in name order, so results and warnings do not depend on threads;
//! [`scan_types`] reads no instances (4 files per type, no directory
//! listing); type attributes are opened relative to the parent's open
//! `mdev_supported_types` directory and read with one `pread` into a buffer
//! reused for the whole parent (open, read, close: 3 system calls, and no
//! allocation per file unless a warning needs the path); directory entry
//! types come from the listing; the usual instance link is resolved with
//! `readlinkat` + `lstat` instead of `canonicalize`'s one `readlink` per
//! path component.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::model::{Backend, MdevType, ParentInfo, SharedStr};
use crate::nvidia_vfio;
use crate::paths::{devpath_name, supported_types_dir, SysfsRoot, PHYSFN_LINK};

/// Largest attribute file accepted (a sysfs attribute is at most one page;
/// this leaves room for large pages).
pub const MAX_ATTR_BYTES: usize = 64 * 1024;

/// Something wrong found while reading, with the path it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub path: PathBuf,
    pub message: String,
}

impl Warning {
    pub fn new(path: impl Into<PathBuf>, message: impl Into<String>) -> Warning {
        Warning {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

/// Result of a full scan: the parents that could be read, sorted by name,
/// and everything that was skipped or odd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub parents: Vec<ParentInfo>,
    pub warnings: Vec<Warning>,
}

/// Result of re-reading one parent by devpath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParentRead {
    /// The device is an mdev parent; warnings about skipped parts.
    Parent(ParentInfo, Vec<Warning>),
    /// The device is gone or has no `mdev_supported_types` directory.
    NotAParent,
    /// The devpath is invalid or the type directory cannot be listed.
    Bad(Warning),
}

/// Reads every parent under `class/mdev_bus` (see the module doc), with
/// its types and their instances.
///
/// A tree without `class/mdev_bus` has no parents and gives no warning.
pub fn scan(root: &SysfsRoot) -> Scan {
    scan_with(root, Instances::Read)
}

/// [`scan`] without instances: the same parents, types and warnings, minus
/// everything about instances (each type's `devices` is empty; neither the
/// types' `devices/` directories nor `bus/mdev/devices` are read). For
/// `types`, which, like `mdevctl types`, does not show instances.
pub fn scan_types(root: &SysfsRoot) -> Scan {
    scan_with(root, Instances::Skip)
}

/// Whether a scan reads mdev instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Instances {
    Read,
    Skip,
}

fn scan_with(root: &SysfsRoot, instances: Instances) -> Scan {
    let mut warnings = Vec::new();
    let root = match root.canonicalize() {
        Ok(root) => root,
        Err(err) => {
            warnings.push(Warning::new(
                root.path(),
                format!("cannot open sysfs root: {}", describe_io_error(&err)),
            ));
            return Scan {
                parents: Vec::new(),
                warnings,
            };
        }
    };
    let bus_dir = root.mdev_bus_dir();
    let link_names = match list_dir(&bus_dir, &mut warnings) {
        Ok(names) => names.unwrap_or_default(),
        Err(warning) => {
            warnings.push(warning);
            Vec::new()
        }
    };

    // The links are read by name from `class/mdev_bus` held open, when it
    // is canonical (see `BusLinks`).
    let bus_links = BusLinks::new(&bus_dir);
    // Parents are read in parallel (the work is almost all system calls);
    // the results are merged in link-name order, so the outcome and the
    // order of warnings do not depend on the number of threads.
    let reads = parallel_map(&link_names, |link_name| {
        let link = bus_dir.join(link_name);
        let devpath = match bus_links
            .as_ref()
            .and_then(|links| links.resolve(link_name))
        {
            Some(target) => root.path_to_devpath(&target).ok_or(()),
            None => Err(()),
        };
        let read = devpath
            .or_else(|()| resolve_devpath(&root, &link))
            .map(|devpath| read_parent_with(&root, &devpath, instances));
        (link, read)
    });

    let mut parents: BTreeMap<String, ParentInfo> = BTreeMap::new();
    for (link, read) in reads {
        let read = match read {
            Ok(read) => read,
            Err(warning) => {
                warnings.push(warning);
                continue;
            }
        };
        match read {
            ParentRead::Parent(info, parent_warnings) => {
                warnings.extend(parent_warnings);
                if let Some(existing) = parents.get(&info.name) {
                    if existing.devpath != info.devpath {
                        warnings.push(Warning::new(
                            link,
                            format!(
                                "parent name {:?} already used by {}; skipped",
                                info.name, existing.devpath
                            ),
                        ));
                    }
                    continue;
                }
                parents.insert(info.name.clone(), info);
            }
            ParentRead::NotAParent => warnings.push(Warning::new(
                link,
                "device has no mdev_supported_types directory; skipped",
            )),
            ParentRead::Bad(warning) => warnings.push(warning),
        }
    }

    if instances == Instances::Read {
        merge_bus_instances(&root, &mut parents, &mut warnings);
    }
    // NVIDIA vendor-specific VFIO virtual functions (their vGPU is the VF
    // itself: nothing in `bus/mdev/devices`). A device that is an mdev
    // parent too stays an mdev parent.
    for info in nvidia_vfio::scan(&root, &mut warnings) {
        if let Some(existing) = parents.get(&info.name) {
            if existing.devpath != info.devpath {
                warnings.push(Warning::new(
                    &info.devpath,
                    format!(
                        "parent name {:?} already used by {}; skipped",
                        info.name, existing.devpath
                    ),
                ));
            }
            continue;
        }
        parents.insert(info.name.clone(), info);
    }
    Scan {
        parents: parents.into_values().collect(),
        warnings,
    }
}

/// `class/mdev_bus` held open, to resolve its links with fewer system
/// calls than `fs::canonicalize` (which reads every component of every
/// link's path): the usual link (`../../devices/.../<name>`) is resolved
/// lexically from the directory, the canonical form of the directory it
/// lands in is worked out once per directory (tens of thousands of s390
/// subchannels share `/devices/css0`), and the last component is checked to
/// be a real directory — a `readlinkat` and an `lstat` per parent.
///
/// Exact: `class/mdev_bus` is canonical (checked), so each leading `..`
/// pops a real component, as `realpath` pops it; the directory is
/// canonicalized; and a last component that is not a symlink adds itself.
/// Anything else (an absolute target, `.` or `..` after a name, a dangling
/// or symlinked last component) gives `None`: resolve it the slow way.
struct BusLinks<'a> {
    dir: &'a Path,
    fd: OwnedFd,
    /// Canonical forms of the directories links landed in.
    dirs: std::sync::Mutex<HashMap<PathBuf, Option<PathBuf>>>,
}

impl<'a> BusLinks<'a> {
    fn new(dir: &'a Path) -> Option<BusLinks<'a>> {
        if fs::canonicalize(dir).ok()? != dir {
            return None;
        }
        Some(BusLinks {
            dir,
            fd: open_dir_fd(dir)?,
            dirs: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// What `fs::canonicalize(dir/name)` gives, when the fast way can tell.
    fn resolve(&self, name: &str) -> Option<PathBuf> {
        let target = PathBuf::from(nix::fcntl::readlinkat(&self.fd, name).ok()?);
        let mut lexical = self.dir.to_path_buf();
        let mut names_started = false;
        for component in target.components() {
            match component {
                Component::ParentDir if !names_started => {
                    if !lexical.pop() {
                        return None;
                    }
                }
                Component::Normal(part) => {
                    names_started = true;
                    lexical.push(part);
                }
                _ => return None,
            }
        }
        let last = lexical.file_name()?.to_owned();
        let parent = lexical.parent()?;
        let canonical_parent = {
            let mut dirs = self
                .dirs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            dirs.entry(parent.to_path_buf())
                .or_insert_with(|| fs::canonicalize(parent).ok())
                .clone()?
        };
        let resolved = canonical_parent.join(last);
        let meta = fs::symlink_metadata(&resolved).ok()?;
        meta.is_dir().then_some(resolved)
    }
}

/// Fewest items worth a thread of their own.
const ITEMS_PER_THREAD: usize = 16;

/// `items.iter().map(work)` spread over up to `available_parallelism()`
/// scoped threads; results in item order. Each thread takes the next item
/// not yet taken, so a thread that is slowed down (by other load on the
/// machine, or by a parent with many types) does not hold the others up.
/// Items of a thread that cannot be started or fails are done on this
/// thread.
fn parallel_map<T, R, F>(items: &[T], work: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len() / ITEMS_PER_THREAD)
        .max(1);
    if threads == 1 {
        return items.iter().map(&work).collect();
    }
    let next_item = AtomicUsize::new(0);
    let take_items = || {
        let mut done = Vec::new();
        loop {
            let index = next_item.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(index) else {
                return done;
            };
            done.push((index, work(item)));
        }
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (1..threads)
            .map(|_| {
                std::thread::Builder::new()
                    .name("mdevreg-scan".to_string())
                    .spawn_scoped(scope, take_items)
            })
            .collect();
        // This thread takes items too.
        let mut results: Vec<Option<R>> =
            std::iter::repeat_with(|| None).take(items.len()).collect();
        let mut store = |done: Vec<(usize, R)>| {
            for (index, result) in done {
                results[index] = Some(result);
            }
        };
        store(take_items());
        for handle in handles.into_iter().flatten() {
            if let Ok(done) = handle.join() {
                store(done);
            }
        }
        results
            .into_iter()
            .zip(items)
            .map(|(result, item)| result.unwrap_or_else(|| work(item)))
            .collect()
    })
}

/// Reads the parent registered under `name` in `class/mdev_bus`, if there
/// is one (`NotAParent` when the link is missing or dangling). `name` must
/// be a valid parent name (no `/`).
pub fn read_parent_by_name(root: &SysfsRoot, name: &str) -> ParentRead {
    let root = match root.canonicalize() {
        Ok(root) => root,
        Err(err) => {
            return ParentRead::Bad(Warning::new(
                root.path(),
                format!("cannot open sysfs root: {}", describe_io_error(&err)),
            ))
        }
    };
    let link = root.mdev_bus_dir().join(name);
    match fs::symlink_metadata(&link) {
        Ok(_) => {}
        Err(err) if is_missing(&err) => return ParentRead::NotAParent,
        Err(err) => return ParentRead::Bad(Warning::new(link, describe_io_error(&err))),
    }
    match fs::canonicalize(&link) {
        Err(err) if is_missing(&err) => ParentRead::NotAParent,
        _ => match resolve_devpath(&root, &link) {
            Ok(devpath) => read_parent(&root, &devpath),
            Err(warning) => ParentRead::Bad(warning),
        },
    }
}

/// Re-reads the parent at `devpath` (`/devices/...`); its name is the last
/// component. Instances come from each type's `devices/` directory only.
pub fn read_parent(root: &SysfsRoot, devpath: &str) -> ParentRead {
    read_parent_with(root, devpath, Instances::Read)
}

fn read_parent_with(root: &SysfsRoot, devpath: &str, instances: Instances) -> ParentRead {
    let Some(device_dir) = root.devpath_to_path(devpath) else {
        return ParentRead::Bad(Warning::new(devpath, "not a valid device path"));
    };
    let types_dir = supported_types_dir(&device_dir);
    // One open: the check that it is a directory (not a link), its listing,
    // and the descriptor each attribute is opened relative to (walking
    // `<type>/<file>` only, not the whole path again).
    let types_fd = match open_types_dir(&types_dir) {
        Ok(Some(fd)) => fd,
        Ok(None) => return ParentRead::NotAParent,
        Err(warning) => return ParentRead::Bad(warning),
    };
    let mut warnings = Vec::new();
    let type_entries = list_fd(types_fd.as_fd(), &types_dir, true, &mut warnings);
    let subsystem = link_name_or_empty(&device_dir.join("subsystem"), &mut warnings);
    let driver = link_name_or_empty(&device_dir.join("driver"), &mut warnings);
    let physical_device = link_name_or_empty(&device_dir.join(PHYSFN_LINK), &mut warnings);
    let mut reader = TypeReader::new(types_fd.as_fd(), &types_dir);

    let mut types = Vec::with_capacity(type_entries.len());
    for (id, is_dir) in type_entries {
        // Only directories are types; mdevctl ignores other entries too.
        // The type comes from the directory entry (no system call where the
        // file system reports it) and, like `symlink_metadata`, does not
        // follow symlinks.
        match is_dir {
            Ok(true) => {}
            Ok(false) => continue,
            Err(err) if is_missing(&err) => continue,
            Err(err) => {
                warnings.push(Warning::new(types_dir.join(&id), describe_io_error(&err)));
                continue;
            }
        }
        match read_type(&mut reader, id, instances, &mut warnings) {
            Ok(mdev_type) => types.push(mdev_type),
            Err(warning) => warnings.push(warning),
        }
    }

    let mut info = ParentInfo {
        name: devpath_name(devpath).to_string(),
        devpath: devpath.to_string(),
        subsystem,
        driver,
        backend: Backend::Mdev,
        physical_device,
        types,
    };
    info.normalize();
    ParentRead::Parent(info, warnings)
}

/// Opens a parent's `mdev_supported_types` for [`list_fd`] and
/// [`TypeReader`]: `Ok(None)` when it is missing, not a directory, or a
/// symlink (no parent there), as `symlink_metadata` would tell.
fn open_types_dir(types_dir: &Path) -> Result<Option<OwnedFd>, Warning> {
    use rustix::fs::{Mode, OFlags, CWD};
    match rustix::fs::openat(
        CWD,
        types_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        // Missing, a path component or the entry itself no directory, or a
        // symlink (`O_NOFOLLOW`).
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
            Ok(None)
        }
        Err(errno) => Err(Warning::new(
            types_dir,
            describe_io_error(&io::Error::from(errno)),
        )),
    }
}

/// The entries of the directory open at `fd` (at `path`, for messages),
/// sorted by name, each with (if `kinds`) whether it is a directory: from
/// the directory entry (`getdents64` straight into a buffer: no
/// `fstat`/`fcntl` of `opendir`), else an `lstat` relative to it. Names
/// that are not UTF-8 are left out with a warning, as [`list_dir`] does.
fn list_fd(
    fd: BorrowedFd<'_>,
    path: &Path,
    kinds: bool,
    warnings: &mut Vec<Warning>,
) -> Vec<(String, io::Result<bool>)> {
    use rustix::fs::{FileType, RawDir};
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    let mut entries = RawDir::new(fd, &mut buf);
    let mut named = Vec::new();
    let mut unknown = Vec::new();
    while let Some(entry) = entries.next() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(errno) => {
                warnings.push(Warning::new(
                    path,
                    describe_io_error(&io::Error::from(errno)),
                ));
                // A failed read does not move on.
                break;
            }
        };
        let raw = entry.file_name().to_bytes();
        if raw == b"." || raw == b".." {
            continue;
        }
        let Ok(name) = std::str::from_utf8(raw) else {
            use std::os::unix::ffi::OsStrExt;
            warnings.push(Warning::new(
                path.join(std::ffi::OsStr::from_bytes(raw)),
                "name is not valid UTF-8; skipped",
            ));
            continue;
        };
        match entry.file_type() {
            FileType::Unknown if kinds => unknown.push(name.to_owned()),
            kind => named.push((name.to_owned(), Ok(kind == FileType::Directory))),
        }
    }
    // The file system did not say (`DT_UNKNOWN`): ask, without following.
    for name in unknown {
        let kind = rustix::fs::statat(fd, name.as_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .map(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Directory)
            .map_err(io::Error::from);
        named.push((name, kind));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Reads the files of one parent's type directories: opens `<id>/<file>`
/// relative to the `mdev_supported_types` descriptor and reads into one
/// buffer, reused for every file. Nothing is allocated per file unless
/// something is wrong (a [`Warning`] needs the full path).
struct TypeReader<'a> {
    types_fd: BorrowedFd<'a>,
    /// `mdev_supported_types`, for messages.
    types_dir: &'a Path,
    /// `<id>/<file>`, rebuilt for each open.
    rel: String,
    /// Holds the file last read.
    buf: Vec<u8>,
}

impl<'a> TypeReader<'a> {
    fn new(types_fd: BorrowedFd<'a>, types_dir: &'a Path) -> TypeReader<'a> {
        TypeReader {
            types_fd,
            types_dir,
            rel: String::new(),
            buf: Vec::new(),
        }
    }

    /// Opens `<id>/<file>` read-only, non-blocking (a planted FIFO cannot
    /// hang us).
    fn open(&mut self, id: &str, file: &str) -> io::Result<fs::File> {
        self.rel.clear();
        self.rel.push_str(id);
        self.rel.push('/');
        self.rel.push_str(file);
        nix::fcntl::openat(
            self.types_fd,
            self.rel.as_str(),
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_NONBLOCK
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map(fs::File::from)
        .map_err(|errno| io::Error::from_raw_os_error(errno as i32))
    }

    /// The UUIDs in `<id>/devices/` (see [`instance_names`]), listed
    /// through a descriptor opened relative to `mdev_supported_types`; a
    /// missing directory gives none.
    fn devices(&mut self, id: &str, warnings: &mut Vec<Warning>) -> Vec<String> {
        let devices_dir = type_file_path(self.types_dir, id, "devices");
        self.rel.clear();
        self.rel.push_str(id);
        self.rel.push_str("/devices");
        // Followed if a link, as `read_dir` does.
        let opened = rustix::fs::openat(
            self.types_fd,
            self.rel.as_str(),
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        );
        let fd = match opened {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Vec::new(),
            Err(errno) => {
                warnings.push(Warning::new(
                    &devices_dir,
                    describe_io_error(&io::Error::from(errno)),
                ));
                return Vec::new();
            }
        };
        let names = list_fd(fd.as_fd(), &devices_dir, false, warnings)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        instance_names(&devices_dir, names, warnings)
    }

    /// The contents of `<id>/<file>` (see [`read_attr_bytes`]); `Ok(None)`
    /// when it does not exist.
    fn read(&mut self, id: &str, file: &str) -> Result<Option<&[u8]>, Warning> {
        let opened = match self.open(id, file) {
            Ok(opened) => opened,
            Err(err) if is_missing(&err) => return Ok(None),
            Err(err) => {
                return Err(Warning::new(
                    type_file_path(self.types_dir, id, file),
                    describe_io_error(&err),
                ))
            }
        };
        match read_into(&opened, &mut self.buf) {
            Ok(len) => Ok(Some(&self.buf[..len])),
            Err(failure) => Err(Warning::new(
                type_file_path(self.types_dir, id, file),
                failure.to_string(),
            )),
        }
    }
}

/// `<types_dir>/<id>/<file>`.
fn type_file_path(types_dir: &Path, id: &str, file: &str) -> PathBuf {
    let mut path = types_dir.join(id);
    path.push(file);
    path
}

/// Opens a directory as a descriptor to open files relative to.
pub(crate) fn open_dir_fd(path: &Path) -> Option<OwnedFd> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()
}

/// Reads type directory `id`; `Err` when a required attribute is bad (the
/// type is then skipped), non-fatal problems go to `warnings`.
fn read_type(
    reader: &mut TypeReader<'_>,
    id: String,
    instances: Instances,
    warnings: &mut Vec<Warning>,
) -> Result<MdevType, Warning> {
    let types_dir = reader.types_dir;
    let device_api = SharedStr::new(required_attr(reader, &id, "device_api")?);
    let available_instances = parse_u32(required_attr(reader, &id, "available_instances")?)
        .map_err(|message| {
            Warning::new(
                type_file_path(types_dir, &id, "available_instances"),
                message,
            )
        })?;
    let name = read_optional_text(reader, &id, "name", normalize_name, warnings);
    let description =
        read_optional_text(reader, &id, "description", normalize_description, warnings);
    let devices = match instances {
        Instances::Read => reader.devices(&id, warnings),
        Instances::Skip => Vec::new(),
    };
    Ok(MdevType {
        id: id.into(),
        name: name.into(),
        description: description.into(),
        device_api,
        available_instances,
        devices,
    })
}

/// The trimmed text of required attribute `<id>/<file>`; `Err` (the type
/// is skipped) when it is missing or bad.
fn required_attr<'r>(
    reader: &'r mut TypeReader<'_>,
    id: &str,
    file: &str,
) -> Result<&'r str, Warning> {
    let types_dir = reader.types_dir;
    let warn = |message: &str| Warning::new(type_file_path(types_dir, id, file), message);
    let bytes = reader
        .read(id, file)?
        .ok_or_else(|| warn("missing; type skipped"))?;
    required_text(bytes).map(str::trim).map_err(warn)
}

/// A required attribute's text, untrimmed, or why it is refused: a NUL byte
/// (no D-Bus string, JSON consumer or C reader of ours could carry it) or
/// invalid UTF-8.
fn required_text(bytes: &[u8]) -> Result<&str, &'static str> {
    if bytes.contains(&0) {
        return Err("contains a NUL byte");
    }
    std::str::from_utf8(bytes).map_err(|_| "not valid UTF-8")
}

/// `name` or `description`, normalised by `normalize`: absent or
/// unreadable gives "", non-UTF-8 is converted lossily, NUL bytes are
/// dropped; each with a warning except plain absence.
fn read_optional_text(
    reader: &mut TypeReader<'_>,
    id: &str,
    file: &str,
    normalize: fn(&str) -> String,
    warnings: &mut Vec<Warning>,
) -> String {
    let types_dir = reader.types_dir;
    let bytes = match reader.read(id, file) {
        Ok(None) => return String::new(),
        Ok(Some(bytes)) => bytes,
        Err(warning) => {
            warnings.push(Warning::new(
                warning.path,
                format!("{}; treated as absent", warning.message),
            ));
            return String::new();
        }
    };
    // The usual case, straight from the buffer.
    if !bytes.contains(&0) {
        if let Ok(text) = std::str::from_utf8(bytes) {
            return normalize(text);
        }
    }
    let path = type_file_path(types_dir, id, file);
    let mut bytes = bytes.to_vec();
    if bytes.contains(&0) {
        warnings.push(Warning::new(&path, "contains NUL bytes; removed"));
        bytes.retain(|&b| b != 0);
    }
    let text = String::from_utf8(bytes).unwrap_or_else(|err| {
        warnings.push(Warning::new(
            &path,
            "not valid UTF-8; invalid bytes replaced",
        ));
        String::from_utf8_lossy(err.as_bytes()).into_owned()
    });
    normalize(&text)
}

/// The UUIDs among `names` (of `devices_dir`), in order; other names with a
/// warning.
fn instance_names(
    devices_dir: &Path,
    names: Vec<String>,
    warnings: &mut Vec<Warning>,
) -> Vec<String> {
    let mut devices = Vec::with_capacity(names.len());
    for name in names {
        if is_instance_name(&name) {
            devices.push(name);
        } else {
            warnings.push(Warning::new(
                devices_dir.join(&name),
                "not a UUID; instance skipped",
            ));
        }
    }
    devices
}

/// Adds instances listed in `bus/mdev/devices` that their type's `devices/`
/// directory lacks. Instances of unknown parents or types are ignored (they
/// appear while a parent is being registered or removed).
fn merge_bus_instances(
    root: &SysfsRoot,
    parents: &mut BTreeMap<String, ParentInfo>,
    warnings: &mut Vec<Warning>,
) {
    let bus_devices = root.mdev_devices_dir();
    let names = match list_dir(&bus_devices, warnings) {
        Ok(names) => names.unwrap_or_default(),
        Err(warning) => {
            warnings.push(warning);
            return;
        }
    };
    // Device directories of the parents found, all canonical.
    let parent_dirs: HashSet<PathBuf> = parents
        .values()
        .filter_map(|parent| root.devpath_to_path(&parent.devpath))
        .collect();
    // The fast resolution below walks `..` lexically from `bus/mdev/devices`,
    // which is right only when that directory itself is canonical.
    // Held open so each link is read by its name alone.
    let bus_devices_fd = fs::canonicalize(&bus_devices)
        .is_ok_and(|dir| dir == bus_devices)
        .then(|| open_dir_fd(&bus_devices))
        .flatten();
    // Links are resolved in parallel, then applied in name order.
    let found = parallel_map(&names, |uuid| {
        bus_instance(
            root,
            &bus_devices,
            uuid,
            bus_devices_fd.as_ref(),
            &parent_dirs,
        )
    });
    for (uuid, found) in names.into_iter().zip(found) {
        let (parent_devpath, type_id) = match found {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(warning) => {
                warnings.push(warning);
                continue;
            }
        };
        let Some(parent) = parents.get_mut(devpath_name(&parent_devpath)) else {
            continue;
        };
        if parent.devpath != parent_devpath {
            continue;
        }
        if let Some(mdev_type) = parent.types.iter_mut().find(|t| t.id == type_id) {
            if let Err(pos) = mdev_type.devices.binary_search(&uuid) {
                mdev_type.devices.insert(pos, uuid);
            }
        }
    }
}

/// The parent devpath and type id of the instance behind
/// `bus/mdev/devices/<uuid>`; `Ok(None)` when it has no `mdev_type` link.
fn bus_instance(
    root: &SysfsRoot,
    bus_devices: &Path,
    uuid: &str,
    bus_devices_fd: Option<&OwnedFd>,
    parent_dirs: &HashSet<PathBuf>,
) -> Result<Option<(String, String)>, Warning> {
    let link = bus_devices.join(uuid);
    if !is_instance_name(uuid) {
        return Err(Warning::new(link, "not a UUID; instance skipped"));
    }
    let fast =
        bus_devices_fd.and_then(|fd| resolve_instance_link(bus_devices, fd, uuid, parent_dirs));
    let instance_dir = fast
        .map_or_else(|| fs::canonicalize(&link), Ok)
        .map_err(|err| Warning::new(&link, describe_link_error(&err)))?;
    let Some(parent_devpath) = instance_dir
        .parent()
        .and_then(|parent| root.path_to_devpath(parent))
    else {
        return Err(Warning::new(link, "does not point below devices/"));
    };
    Ok(read_link_name(&instance_dir.join("mdev_type"))?.map(|type_id| (parent_devpath, type_id)))
}

/// What `fs::canonicalize(link)` gives for the usual instance link
/// (`../../../devices/.../<parent>/<uuid>`, to a real directory below a known
/// parent), in two system calls instead of one `readlink` per component
/// (`bus_devices_fd` is `bus_devices` held open, `name` the link's name);
/// `None` for anything else, which then goes the slow way.
///
/// Exact because `bus_devices` (checked by the caller) and every directory in `parent_dirs` are
/// canonical (no symlinks in them), the target is leading `..` followed by
/// plain names, and the last component is checked not to be a symlink.
fn resolve_instance_link(
    bus_devices: &Path,
    bus_devices_fd: &OwnedFd,
    name: &str,
    parent_dirs: &HashSet<PathBuf>,
) -> Option<PathBuf> {
    let target = PathBuf::from(nix::fcntl::readlinkat(bus_devices_fd, name).ok()?);
    let mut resolved = bus_devices.to_path_buf();
    let mut names_started = false;
    for component in target.components() {
        match component {
            Component::ParentDir if !names_started => {
                if !resolved.pop() {
                    return None;
                }
            }
            Component::Normal(name) => {
                names_started = true;
                resolved.push(name);
            }
            _ => return None,
        }
    }
    if !parent_dirs.contains(resolved.parent()?) {
        return None;
    }
    let meta = fs::symlink_metadata(&resolved).ok()?;
    meta.is_dir().then_some(resolved)
}

/// Resolves a `class/mdev_bus` link to the devpath it points to.
pub(crate) fn resolve_devpath(canonical_root: &SysfsRoot, link: &Path) -> Result<String, Warning> {
    let target =
        fs::canonicalize(link).map_err(|err| Warning::new(link, describe_link_error(&err)))?;
    canonical_root.path_to_devpath(&target).ok_or_else(|| {
        Warning::new(
            link,
            format!(
                "points to {}, not below devices/; skipped",
                target.display()
            ),
        )
    })
}

pub(crate) fn link_name_or_empty(path: &Path, warnings: &mut Vec<Warning>) -> String {
    match read_link_name(path) {
        Ok(name) => name.unwrap_or_default(),
        Err(warning) => {
            warnings.push(warning);
            String::new()
        }
    }
}

/// `name` as mdevctl shows it: surrounding whitespace trimmed.
pub fn normalize_name(raw: &str) -> String {
    raw.trim().to_string()
}

/// `description` as mdevctl shows it: trimmed, inner newlines as `", "`.
pub fn normalize_description(raw: &str) -> String {
    raw.trim().replace('\n', ", ")
}

/// Whether a directory entry name is an mdev instance name (hyphenated UUID).
pub fn is_instance_name(name: &str) -> bool {
    name.len() == 36 && uuid::Uuid::try_parse(name).is_ok()
}

/// Reads at most [`MAX_ATTR_BYTES`] of a regular file; `Ok(None)` when it
/// does not exist.
fn read_attr_bytes(path: &Path) -> Result<Option<Vec<u8>>, Warning> {
    let file = match open_nonblocking(path) {
        Ok(file) => file,
        Err(err) if is_missing(&err) => return Ok(None),
        Err(err) => return Err(Warning::new(path, describe_io_error(&err))),
    };
    let mut bytes = Vec::new();
    let len =
        read_into(&file, &mut bytes).map_err(|failure| Warning::new(path, failure.to_string()))?;
    bytes.truncate(len);
    Ok(Some(bytes))
}

/// Non-blocking so a FIFO planted in the tree cannot hang the reader.
pub(crate) fn open_nonblocking(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
}

/// Why the contents of an open file were refused.
#[derive(Debug)]
enum ReadFailure {
    Io(io::Error),
    NotRegular,
    TooLarge,
}

impl fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadFailure::Io(err) => f.write_str(&describe_io_error(err)),
            ReadFailure::NotRegular => f.write_str("not a regular file"),
            ReadFailure::TooLarge => write!(f, "larger than {MAX_ATTR_BYTES} bytes"),
        }
    }
}

/// Size of the first read of a file: a sysfs attribute is at most a page.
const FIRST_READ: usize = 4096;

/// Reads the open `file` from its start into `buf` (grown as needed); the
/// length read. Only a regular file of at most [`MAX_ATTR_BYTES`] is
/// accepted.
///
/// The usual attribute takes one positional read and no `fstat`: a first
/// read that returns some bytes but less than asked is a regular file's
/// whole content. Pipes, FIFOs, sockets and terminals refuse positional
/// reads (`ESPIPE`), and a regular file that gives a short read is at its
/// end (that is how regular files behave on Linux; sysfs gives a whole
/// attribute in one read). A first read that returns nothing, fills the
/// buffer or fails is followed by an `fstat`, and anything but a regular
/// file is refused then. So a non-regular file can only get through if it
/// is a character device that allows positional reads and answers with a
/// short non-empty one (such as `/dev/kmsg`); the file was opened
/// non-blocking, so the read cannot hang either way.
fn read_into(file: &fs::File, buf: &mut Vec<u8>) -> Result<usize, ReadFailure> {
    if buf.len() < FIRST_READ {
        buf.resize(FIRST_READ, 0);
    }
    let first = read_at_retrying(file, &mut buf[..FIRST_READ], 0);
    if let Ok(len @ 1..FIRST_READ) = first {
        return Ok(len);
    }
    // Empty, full or failed: rare for an attribute, so check what it is.
    let meta = file.metadata().map_err(ReadFailure::Io)?;
    if !meta.is_file() {
        return Err(ReadFailure::NotRegular);
    }
    let mut filled = first.map_err(ReadFailure::Io)?;
    if filled < FIRST_READ {
        return Ok(filled);
    }
    let limit = MAX_ATTR_BYTES + 1;
    buf.resize(limit, 0);
    while filled < limit {
        match read_at_retrying(file, &mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(len) => filled += len,
            Err(err) => return Err(ReadFailure::Io(err)),
        }
    }
    if filled > MAX_ATTR_BYTES {
        return Err(ReadFailure::TooLarge);
    }
    Ok(filled)
}

/// Reads the open attribute `file` from its start into `buf` (see
/// [`read_into`]): the length, or a code telling failures apart for
/// comparisons (the errno, or a negative code for a refused file).
pub(crate) fn read_open_attr(file: &fs::File, buf: &mut Vec<u8>) -> Result<usize, i32> {
    read_into(file, buf).map_err(|failure| match failure {
        ReadFailure::Io(err) => err.raw_os_error().unwrap_or(-1),
        ReadFailure::NotRegular => -2,
        ReadFailure::TooLarge => -3,
    })
}

/// `pread`, repeated when interrupted by a signal.
fn read_at_retrying(file: &fs::File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        match file.read_at(buf, offset) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}

/// Reads an attribute as UTF-8 text, untrimmed; `Ok(None)` when absent.
/// A NUL byte is an error: no D-Bus string, JSON consumer or C reader of
/// ours could carry it.
pub fn read_attr_string(path: &Path) -> Result<Option<String>, Warning> {
    let Some(bytes) = read_attr_bytes(path)? else {
        return Ok(None);
    };
    if bytes.contains(&0) {
        return Err(Warning::new(path, "contains a NUL byte"));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| Warning::new(path, "not valid UTF-8"))
}

/// Reads an attribute holding one unsigned 32-bit number (surrounding
/// whitespace allowed); `Ok(None)` when absent.
pub fn read_attr_u32(path: &Path) -> Result<Option<u32>, Warning> {
    let Some(text) = read_attr_string(path)? else {
        return Ok(None);
    };
    parse_u32(text.trim())
        .map(Some)
        .map_err(|message| Warning::new(path, message))
}

/// A trimmed `u32` attribute's value, or the message saying it is not one.
fn parse_u32(trimmed: &str) -> Result<u32, String> {
    trimmed.parse::<u32>().map_err(|_| {
        let shown: String = trimmed.chars().take(40).collect();
        format!("not a number in 0..={}: {shown:?}", u32::MAX)
    })
}

/// The last component of a symlink's target (`driver -> ../drivers/i915`
/// gives `i915`); `Ok(None)` when the link does not exist.
pub fn read_link_name(path: &Path) -> Result<Option<String>, Warning> {
    let target = match fs::read_link(path) {
        Ok(target) => target,
        Err(err) if is_missing(&err) => return Ok(None),
        Err(err) if err.kind() == io::ErrorKind::InvalidInput => {
            return Err(Warning::new(path, "not a symlink"))
        }
        Err(err) => return Err(Warning::new(path, describe_io_error(&err))),
    };
    let name = target.file_name().ok_or_else(|| {
        Warning::new(
            path,
            format!("link target {} has no name", target.display()),
        )
    })?;
    name.to_str()
        .map(|name| Some(name.to_string()))
        .ok_or_else(|| Warning::new(path, "link target name is not valid UTF-8"))
}

/// Names in a directory, sorted; `Ok(None)` when it does not exist. Entries
/// whose names are not UTF-8 are left out with a warning.
pub fn list_dir(path: &Path, warnings: &mut Vec<Warning>) -> Result<Option<Vec<String>>, Warning> {
    let typed = list_dir_typed(path, warnings)?;
    Ok(typed.map(|entries| entries.into_iter().map(|(name, _)| name).collect()))
}

/// A directory entry's name and type.
type TypedEntry = (String, io::Result<fs::FileType>);

/// Like [`list_dir`], with each entry's type as `symlink_metadata` would
/// give it (taken from the directory entry when the file system reports it).
fn list_dir_typed(
    path: &Path,
    warnings: &mut Vec<Warning>,
) -> Result<Option<Vec<TypedEntry>>, Warning> {
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(err) if is_missing(&err) => return Ok(None),
        Err(err) => return Err(Warning::new(path, describe_io_error(&err))),
    };
    let mut named = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                warnings.push(Warning::new(path, describe_io_error(&err)));
                continue;
            }
        };
        match entry.file_name().into_string() {
            Ok(name) => named.push((name, entry.file_type())),
            Err(raw) => warnings.push(Warning::new(
                path.join(raw),
                "name is not valid UTF-8; skipped",
            )),
        }
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Some(named))
}

/// Not there: missing, or a path component is not a directory.
fn is_missing(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn is_symlink_loop(err: &io::Error) -> bool {
    err.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32)
}

fn describe_io_error(err: &io::Error) -> String {
    if is_symlink_loop(err) {
        "symlink loop".to_string()
    } else {
        err.to_string()
    }
}

fn describe_link_error(err: &io::Error) -> String {
    if is_missing(err) {
        "dangling link; skipped".to_string()
    } else {
        format!("{}; skipped", describe_io_error(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn normalises_like_mdevctl() {
        assert_eq!(normalize_name("  GVTg_V5_4 \n"), "GVTg_V5_4");
        assert_eq!(normalize_name("na\nme"), "na\nme");
        assert_eq!(
            normalize_description("low_gm_size: 128MB\nfence: 4\n\n"),
            "low_gm_size: 128MB, fence: 4"
        );
        assert_eq!(
            normalize_description("\n\nfoo\r\n\tbar\n\n"),
            "foo\r, \tbar"
        );
        assert_eq!(normalize_description("a\n\nb"), "a, , b");
        assert_eq!(normalize_description(" \n \n"), "");
    }

    #[test]
    fn instance_names_are_hyphenated_uuids() {
        assert!(is_instance_name("83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"));
        assert!(!is_instance_name("83b8f4f2509f382f3c1ee6bfe0fa1001"));
        assert!(!is_instance_name(
            "urn:uuid:83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
        ));
        assert!(!is_instance_name(".gitkeep"));
    }

    #[test]
    fn read_attr_u32_accepts_any_u32() {
        let dir = tmp();
        let path = dir.path().join("n");
        for (text, want) in [
            ("0\n", 0),
            (" 7 \n", 7),
            ("+3", 3),
            ("4294967295\n", u32::MAX),
        ] {
            fs::write(&path, text).unwrap();
            assert_eq!(read_attr_u32(&path), Ok(Some(want)), "{text:?}");
        }
    }

    #[test]
    fn read_attr_u32_rejects_garbage() {
        let dir = tmp();
        let path = dir.path().join("n");
        for text in ["", "abc", "-1", "4294967296", "1 2", "0x10"] {
            fs::write(&path, text).unwrap();
            let warning = read_attr_u32(&path).unwrap_err();
            assert_eq!(warning.path, path);
            assert!(warning.message.contains("not a number"), "{warning}");
        }
        fs::write(&path, b"\xff1").unwrap();
        assert!(read_attr_u32(&path).unwrap_err().message.contains("UTF-8"));
    }

    #[test]
    fn read_attr_missing_is_none() {
        let dir = tmp();
        assert_eq!(read_attr_string(&dir.path().join("nope")), Ok(None));
        // A path component that is a file, not a directory.
        fs::write(dir.path().join("f"), "x").unwrap();
        assert_eq!(read_attr_string(&dir.path().join("f/nope")), Ok(None));
    }

    #[test]
    fn read_attr_caps_size() {
        let dir = tmp();
        let path = dir.path().join("big");
        fs::write(&path, vec![b'a'; MAX_ATTR_BYTES]).unwrap();
        assert_eq!(
            read_attr_string(&path).unwrap().unwrap().len(),
            MAX_ATTR_BYTES
        );
        fs::write(&path, vec![b'a'; MAX_ATTR_BYTES + 1]).unwrap();
        assert!(read_attr_string(&path)
            .unwrap_err()
            .message
            .contains("larger"));
    }

    #[test]
    fn read_attr_refuses_directories_fifos_and_loops() {
        let dir = tmp();
        fs::create_dir(dir.path().join("d")).unwrap();
        assert!(read_attr_string(&dir.path().join("d")).is_err());
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(
            read_attr_string(&fifo).unwrap_err().message,
            "not a regular file"
        );
        let looped = dir.path().join("loop");
        symlink("loop", &looped).unwrap();
        assert_eq!(
            read_attr_string(&looped).unwrap_err().message,
            "symlink loop"
        );
    }

    #[test]
    fn read_link_name_takes_basename() {
        let dir = tmp();
        let link = dir.path().join("driver");
        symlink("../../../bus/pci/drivers/i915", &link).unwrap();
        assert_eq!(read_link_name(&link), Ok(Some("i915".to_string())));
        assert_eq!(read_link_name(&dir.path().join("none")), Ok(None));
        fs::write(dir.path().join("file"), "").unwrap();
        assert!(read_link_name(&dir.path().join("file")).is_err());
        let odd = dir.path().join("odd");
        symlink("..", &odd).unwrap();
        assert!(read_link_name(&odd).is_err());
        let raw = dir.path().join("raw");
        symlink(std::ffi::OsStr::from_bytes(b"x/\xff"), &raw).unwrap();
        assert!(read_link_name(&raw).unwrap_err().message.contains("UTF-8"));
    }

    #[test]
    fn list_dir_sorts_and_skips_non_utf8() {
        let dir = tmp();
        for name in ["b", "a", "c"] {
            fs::write(dir.path().join(name), "").unwrap();
        }
        fs::write(dir.path().join(std::ffi::OsStr::from_bytes(b"\xffx")), "").unwrap();
        let mut warnings = Vec::new();
        assert_eq!(
            list_dir(dir.path(), &mut warnings),
            Ok(Some(vec![
                "a".to_string(),
                "b".to_string(),
                "c".to_string()
            ]))
        );
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].to_string().contains("not valid UTF-8"));
        assert_eq!(list_dir(&dir.path().join("none"), &mut warnings), Ok(None));
    }

    #[test]
    fn warning_display_names_path() {
        let warning = Warning::new("/x/y", "bad");
        assert_eq!(warning.to_string(), "/x/y: bad");
    }

    #[test]
    fn read_parent_rejects_bad_devpath_and_reports_non_parents() {
        let dir = tmp();
        let root = SysfsRoot::new(dir.path());
        assert!(matches!(
            read_parent(&root, "/devices/../x"),
            ParentRead::Bad(_)
        ));
        assert_eq!(read_parent(&root, "/devices/none"), ParentRead::NotAParent);
        fs::create_dir_all(dir.path().join("devices/plain")).unwrap();
        assert_eq!(read_parent(&root, "/devices/plain"), ParentRead::NotAParent);
    }

    #[test]
    fn only_a_real_types_directory_makes_a_parent_and_only_directories_in_it_types() {
        let dir = tmp();
        let root = SysfsRoot::new(dir.path());
        let devices = dir.path().join("devices");
        // `mdev_supported_types` a file, a FIFO, a link to a directory:
        // no parent (as `symlink_metadata` tells), nothing hangs.
        fs::create_dir_all(devices.join("file")).unwrap();
        fs::write(devices.join("file/mdev_supported_types"), "").unwrap();
        fs::create_dir_all(devices.join("fifo")).unwrap();
        nix::unistd::mkfifo(
            &devices.join("fifo/mdev_supported_types"),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .unwrap();
        let types = write_type(
            dir.path(),
            "t-1",
            &[
                ("device_api", b"vfio-pci\n"),
                ("available_instances", b"2\n"),
            ],
        )
        .parent()
        .unwrap()
        .to_path_buf();
        fs::create_dir_all(devices.join("linked")).unwrap();
        std::os::unix::fs::symlink(
            "../p/mdev_supported_types",
            devices.join("linked/mdev_supported_types"),
        )
        .unwrap();
        for name in ["file", "fifo", "linked"] {
            assert_eq!(
                read_parent(&root, &format!("/devices/{name}")),
                ParentRead::NotAParent,
                "{name}"
            );
        }
        // In a real one: a type directory is a type; a file, a link to a
        // type directory and a FIFO are not.
        fs::write(types.join("stray"), "").unwrap();
        std::os::unix::fs::symlink("t-1", types.join("t-2")).unwrap();
        nix::unistd::mkfifo(&types.join("t-3"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        match read_parent(&root, "/devices/p") {
            ParentRead::Parent(info, warnings) => {
                let ids: Vec<&str> = info.types.iter().map(|t| t.id.as_ref()).collect();
                assert_eq!(ids, ["t-1"]);
                assert_eq!(info.types[0].available_instances, 2);
                assert!(warnings.is_empty(), "{warnings:?}");
            }
            other => panic!("not read as a parent: {other:?}"),
        }
    }

    #[test]
    fn parallel_map_keeps_item_order() {
        let items: Vec<u32> = (0..1000).collect();
        let doubled = parallel_map(&items, |n| n * 2);
        assert_eq!(doubled, items.iter().map(|n| n * 2).collect::<Vec<_>>());
        assert!(parallel_map(&[] as &[u32], |n| *n).is_empty());
    }

    #[test]
    fn parallel_map_redoes_the_items_of_a_failed_thread() {
        let items: Vec<u32> = (0..1000).collect();
        let doubled = parallel_map(&items, |n| {
            // Every helper thread dies on its first item.
            assert_ne!(std::thread::current().name(), Some("mdevreg-scan"));
            n * 2
        });
        assert_eq!(doubled, items.iter().map(|n| n * 2).collect::<Vec<_>>());
    }

    #[test]
    fn fast_instance_link_matches_canonicalize_or_declines() {
        let dir = tmp();
        let root = fs::canonicalize(dir.path()).unwrap();
        let bus = root.join("bus/mdev/devices");
        fs::create_dir_all(&bus).unwrap();
        fs::create_dir_all(root.join("devices/p/real")).unwrap();
        fs::create_dir_all(root.join("devices/q/elsewhere")).unwrap();
        symlink("../q/elsewhere", root.join("devices/p/linked")).unwrap();
        let parent_dirs: HashSet<PathBuf> = [root.join("devices/p")].into_iter().collect();
        for (name, target) in [
            ("real", "../../../devices/p/real"),
            ("linked", "../../../devices/p/linked"),
            ("dangling", "../../../devices/p/none"),
            ("other", "../../../devices/q/elsewhere"),
            ("dotted", "../../../devices/p/../p/real"),
        ] {
            symlink(target, bus.join(name)).unwrap();
        }
        let bus_fd = open_dir_fd(&bus).unwrap();
        let fast = |name: &str| resolve_instance_link(&bus, &bus_fd, name, &parent_dirs);
        assert_eq!(
            fast("real"),
            Some(fs::canonicalize(bus.join("real")).unwrap())
        );
        // A symlinked instance, a dangling link, an unknown parent and a
        // `..` after a name all go the slow (canonicalize) way.
        for name in ["linked", "dangling", "other", "dotted"] {
            assert_eq!(fast(name), None, "{name}");
        }
    }

    #[test]
    fn fast_bus_link_matches_canonicalize_or_declines() {
        let dir = tmp();
        let root = fs::canonicalize(dir.path()).unwrap();
        let bus = root.join("class/mdev_bus");
        fs::create_dir_all(&bus).unwrap();
        fs::create_dir_all(root.join("devices/css0/0.0.0001")).unwrap();
        fs::create_dir_all(root.join("devices/real/0.0.0002")).unwrap();
        fs::create_dir_all(root.join("devices/q/elsewhere")).unwrap();
        // A directory on the way that is a symlink: canonicalized once.
        symlink("real", root.join("devices/css1")).unwrap();
        symlink("../q/elsewhere", root.join("devices/css0/linked")).unwrap();
        for (name, target) in [
            ("0.0.0001", "../../devices/css0/0.0.0001"),
            ("0.0.0002", "../../devices/css1/0.0.0002"),
            ("linked", "../../devices/css0/linked"),
            ("dangling", "../../devices/css0/none"),
            ("dotted", "../../devices/css0/../css0/0.0.0001"),
            ("absolute", "/devices/css0/0.0.0001"),
        ] {
            symlink(target, bus.join(name)).unwrap();
        }
        let links = BusLinks::new(&bus).expect("canonical class/mdev_bus");
        for name in ["0.0.0001", "0.0.0002", "0.0.0002"] {
            assert_eq!(
                links.resolve(name),
                Some(fs::canonicalize(bus.join(name)).unwrap()),
                "{name}"
            );
        }
        // A symlinked parent device, a dangling link, `..` after a name and
        // an absolute target go the slow (canonicalize) way.
        for name in ["linked", "dangling", "dotted", "absolute"] {
            assert_eq!(links.resolve(name), None, "{name}");
        }
        // Not canonical itself: no fast way at all.
        symlink("mdev_bus", root.join("class/alias")).unwrap();
        assert!(BusLinks::new(&root.join("class/alias")).is_none());
    }

    /// Writes type `id` of parent `devices/p` (linked from
    /// `class/mdev_bus/p`) with the given files; returns the type directory.
    fn write_type(root: &Path, id: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let type_dir = root.join("devices/p/mdev_supported_types").join(id);
        fs::create_dir_all(type_dir.join("devices")).unwrap();
        for (name, contents) in files {
            fs::write(type_dir.join(name), contents).unwrap();
        }
        let link = root.join("class/mdev_bus/p");
        if fs::symlink_metadata(&link).is_err() {
            fs::create_dir_all(root.join("class/mdev_bus")).unwrap();
            symlink("../../devices/p", &link).unwrap();
        }
        type_dir
    }

    /// Adds instance `uuid` of type `id` of parent `p`: listed in the
    /// type's `devices/` when `in_type_dir`, always in `bus/mdev/devices`.
    fn write_instance(root: &Path, id: &str, uuid: &str, in_type_dir: bool) {
        fs::create_dir_all(root.join("devices/p").join(uuid)).unwrap();
        symlink(
            format!("../mdev_supported_types/{id}"),
            root.join("devices/p").join(uuid).join("mdev_type"),
        )
        .unwrap();
        fs::create_dir_all(root.join("bus/mdev/devices")).unwrap();
        symlink(
            format!("../../../devices/p/{uuid}"),
            root.join("bus/mdev/devices").join(uuid),
        )
        .unwrap();
        if in_type_dir {
            symlink(
                format!("../../../{uuid}"),
                root.join("devices/p/mdev_supported_types")
                    .join(id)
                    .join("devices")
                    .join(uuid),
            )
            .unwrap();
        }
    }

    /// `scan` with every type's instances dropped.
    fn without_instances(mut scan: Scan) -> Scan {
        for parent in &mut scan.parents {
            for mdev_type in &mut parent.types {
                mdev_type.devices.clear();
            }
        }
        scan
    }

    #[test]
    fn scan_types_is_scan_without_instances_on_the_example_trees() {
        for tree in ["gvt", "mixed", "broken"] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/sysfs")
                .join(tree);
            let root = SysfsRoot::new(&dir);
            let full = scan(&root);
            assert!(
                full.parents
                    .iter()
                    .flat_map(|parent| &parent.types)
                    .any(|mdev_type| !mdev_type.devices.is_empty()),
                "{tree}: has instances"
            );
            let types_only = scan_types(&root);
            assert!(!types_only.parents.is_empty(), "{tree}");
            assert_eq!(types_only, without_instances(full), "{tree}");
        }
    }

    #[test]
    fn scan_types_skips_bad_types_with_the_same_warnings() {
        let dir = tmp();
        let root = fs::canonicalize(dir.path()).unwrap();
        let good = write_type(
            &root,
            "t-good",
            &[
                ("device_api", b" vfio-pci\n"),
                ("available_instances", b"7\n"),
                ("name", b" Good \n"),
                ("description", b"a\nb\n"),
            ],
        );
        write_instance(&root, "t-good", &uuid(1), true);
        write_instance(&root, "t-good", &uuid(2), false);
        fs::write(good.join("devices/.gitkeep"), "").unwrap();
        let odd = write_type(
            &root,
            "t-odd",
            &[
                ("device_api", b"vfio-ccw"),
                ("available_instances", b"0"),
                ("name", b"na\0me\xff"),
                ("description", &[b'x'; MAX_ATTR_BYTES + 1]),
            ],
        );
        let no_api = write_type(&root, "t-no-api", &[("available_instances", b"1")]);
        let nul_api = write_type(
            &root,
            "t-nul-api",
            &[("device_api", b"vfio\0"), ("available_instances", b"1")],
        );
        let bad_count = write_type(
            &root,
            "t-bad-count",
            &[
                ("device_api", b"vfio-pci"),
                ("available_instances", b"-1\n"),
            ],
        );
        let fifo = write_type(&root, "t-fifo", &[("device_api", b"vfio-pci")]);
        nix::unistd::mkfifo(
            &fifo.join("available_instances"),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .unwrap();
        let dir_count = write_type(&root, "t-dir", &[("device_api", b"vfio-pci")]);
        fs::create_dir(dir_count.join("available_instances")).unwrap();

        let root = SysfsRoot::new(&root);
        let full = scan(&root);
        let types_only = scan_types(&root);
        // The full scan found both instances (one only via bus/mdev/devices)
        // and warned about `.gitkeep`; the types-only scan read neither.
        let full_good = full.parents[0].get_type("t-good").unwrap();
        assert_eq!(full_good.devices, [uuid(1), uuid(2)]);
        let gitkeep = good.join("devices/.gitkeep");
        assert!(full.warnings.iter().any(|w| w.path == gitkeep));
        let mut expected = without_instances(full);
        expected.warnings.retain(|w| w.path != gitkeep);
        assert_eq!(types_only, expected);

        let parent = &types_only.parents[0];
        let ids: Vec<&str> = parent.types.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["t-good", "t-odd"]);
        assert_eq!(
            parent.types[0],
            MdevType {
                id: "t-good".into(),
                name: "Good".into(),
                description: "a, b".into(),
                device_api: "vfio-pci".into(),
                available_instances: 7,
                devices: Vec::new(),
            }
        );
        assert_eq!(parent.types[1].name, "name\u{fffd}");
        assert_eq!(parent.types[1].description, "");
        let found: Vec<(PathBuf, &str)> = types_only
            .warnings
            .iter()
            .map(|w| (w.path.clone(), w.message.as_str()))
            .collect();
        let count_message = format!("not a number in 0..={}: \"-1\"", u32::MAX);
        let big_message = format!("larger than {MAX_ATTR_BYTES} bytes; treated as absent");
        assert_eq!(
            found,
            [
                (
                    bad_count.join("available_instances"),
                    count_message.as_str()
                ),
                (dir_count.join("available_instances"), "not a regular file"),
                (fifo.join("available_instances"), "not a regular file"),
                (no_api.join("device_api"), "missing; type skipped"),
                (nul_api.join("device_api"), "contains a NUL byte"),
                (odd.join("name"), "contains NUL bytes; removed"),
                (odd.join("name"), "not valid UTF-8; invalid bytes replaced"),
                (odd.join("description"), big_message.as_str()),
            ]
        );
    }

    fn uuid(n: u64) -> String {
        format!("00000000-0000-4000-8000-{n:012x}")
    }

    #[test]
    fn read_attr_around_the_first_read_size() {
        let dir = tmp();
        let path = dir.path().join("attr");
        for len in [
            0,
            1,
            FIRST_READ - 1,
            FIRST_READ,
            FIRST_READ + 1,
            3 * FIRST_READ,
        ] {
            let contents: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            fs::write(&path, &contents).unwrap();
            assert_eq!(
                read_attr_string(&path),
                Ok(Some(String::from_utf8(contents).unwrap())),
                "{len}"
            );
        }
        // A buffer grown by a big file still reads small ones right.
        let mut buf = Vec::new();
        fs::write(&path, vec![b'x'; 3 * FIRST_READ]).unwrap();
        assert_eq!(
            read_into(&fs::File::open(&path).unwrap(), &mut buf).unwrap(),
            3 * FIRST_READ
        );
        fs::write(&path, "short").unwrap();
        let len = read_into(&fs::File::open(&path).unwrap(), &mut buf).unwrap();
        assert_eq!(&buf[..len], b"short");
    }

    #[test]
    fn scan_of_missing_root_warns() {
        let dir = tmp();
        let scan = scan(&SysfsRoot::new(dir.path().join("none")));
        assert!(scan.parents.is_empty());
        assert_eq!(scan.warnings.len(), 1);
    }

    #[test]
    fn scan_of_tree_without_mdev_bus_is_empty_and_quiet() {
        let dir = tmp();
        assert_eq!(scan(&SysfsRoot::new(dir.path())), Scan::default());
    }
}
