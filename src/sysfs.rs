//! Reads mdev parents, their types and instances from a sysfs tree into plain
//! [`ParentInfo`] data, with plain `std::fs`.
//!
//! What is read (all below a [`SysfsRoot`]):
//! - `class/mdev_bus/<name>`: a symlink per parent, resolved to its devpath;
//!   the parent's name is the devpath's last component (the kernel names
//!   the link after the device, so the two agree);
//! - `<parent>/subsystem` and `<parent>/driver`: symlinks, basename taken
//!   (empty when absent);
//! - `<parent>/mdev_supported_types/<id>/`: `device_api`, `available_instances`
//!   (required), `name`, `description` (optional), `devices/<uuid>`;
//! - `bus/mdev/devices/<uuid>` (by [`scan`] only): links to `<parent>/<uuid>`
//!   whose `mdev_type` link names the type; instances found there but missing
//!   from the type's `devices/` are merged in.
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
//!   error), opened non-blocking and accepted only if it is a regular file.
//!
//! All file system access goes through [`read_attr_string`], [`read_attr_u32`],
//! [`read_link_name`] and [`list_dir`] (plus `canonicalize` for links), or
//! their variants relative to an open directory.
//!
//! Speed (a scan reads ~25 files and links per type): [`scan`] reads parents
//! and `bus/mdev/devices` links on up to `available_parallelism()` threads and
//! merges in name order, so results and warnings do not depend on threads;
//! type attributes are opened relative to the parent's open
//! `mdev_supported_types` directory; directory entry types come from the
//! listing; the usual instance link is resolved with `readlinkat` + `lstat`
//! instead of `canonicalize`'s one `readlink` per path component; a short
//! read of a regular file is its end.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use crate::model::{MdevType, ParentInfo};
use crate::paths::{devpath_name, supported_types_dir, SysfsRoot};

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

/// Reads every parent under `class/mdev_bus` (see the module doc).
///
/// A tree without `class/mdev_bus` has no parents and gives no warning.
pub fn scan(root: &SysfsRoot) -> Scan {
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

    // Parents are read in parallel (the work is almost all system calls);
    // the results are merged in link-name order, so the outcome and the
    // order of warnings do not depend on the number of threads.
    let reads = parallel_map(&link_names, |link_name| {
        let link = bus_dir.join(link_name);
        let read = resolve_devpath(&root, &link).map(|devpath| read_parent(&root, &devpath));
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

    merge_bus_instances(&root, &mut parents, &mut warnings);
    Scan {
        parents: parents.into_values().collect(),
        warnings,
    }
}

/// Fewest items worth a thread of their own.
const ITEMS_PER_THREAD: usize = 16;

/// `items.iter().map(work)` spread over up to `available_parallelism()`
/// scoped threads, each taking one contiguous chunk; results in item order.
/// A chunk whose thread cannot be started (or fails) is done on this thread.
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
    let chunk_len = items.len().div_ceil(threads);
    let work = &work;
    std::thread::scope(|scope| {
        let mut chunks = items.chunks(chunk_len);
        // This thread does the first chunk itself.
        let first = chunks.next().unwrap_or(&[]);
        let handles: Vec<_> = chunks
            .map(|chunk| {
                let handle = std::thread::Builder::new()
                    .name("mdevreg-scan".to_string())
                    .spawn_scoped(scope, move || chunk.iter().map(work).collect::<Vec<R>>());
                (chunk, handle)
            })
            .collect();
        let mut results: Vec<R> = first.iter().map(work).collect();
        results.reserve(items.len() - results.len());
        for (chunk, handle) in handles {
            match handle
                .map_err(|_| ())
                .and_then(|h| h.join().map_err(|_| ()))
            {
                Ok(chunk_results) => results.extend(chunk_results),
                Err(()) => results.extend(chunk.iter().map(work)),
            }
        }
        results
    })
}

/// Re-reads the parent at `devpath` (`/devices/...`); its name is the last
/// component. Instances come from each type's `devices/` directory only.
pub fn read_parent(root: &SysfsRoot, devpath: &str) -> ParentRead {
    let Some(device_dir) = root.devpath_to_path(devpath) else {
        return ParentRead::Bad(Warning::new(devpath, "not a valid device path"));
    };
    let types_dir = supported_types_dir(&device_dir);
    match fs::symlink_metadata(&types_dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return ParentRead::NotAParent,
        Err(err) if is_missing(&err) => return ParentRead::NotAParent,
        Err(err) => return ParentRead::Bad(Warning::new(types_dir, describe_io_error(&err))),
    }

    let mut warnings = Vec::new();
    let type_entries = match list_dir_typed(&types_dir, &mut warnings) {
        Ok(Some(entries)) => entries,
        // Vanished between the two calls.
        Ok(None) => return ParentRead::NotAParent,
        Err(warning) => return ParentRead::Bad(warning),
    };
    let subsystem = link_name_or_empty(&device_dir.join("subsystem"), &mut warnings);
    let driver = link_name_or_empty(&device_dir.join("driver"), &mut warnings);
    // Held open so each attribute open walks `<type>/<file>` only, not the
    // whole path again; without it (it vanished) full paths are used.
    let types_fd = open_dir_fd(&types_dir);

    let mut types = Vec::with_capacity(type_entries.len());
    for (id, file_type) in type_entries {
        let type_dir = types_dir.join(&id);
        // Only directories are types; mdevctl ignores other entries too.
        // The type comes from the directory entry (no system call where the
        // file system reports it) and, like `symlink_metadata`, does not
        // follow symlinks.
        match file_type {
            Ok(file_type) if file_type.is_dir() => {}
            Ok(_) => continue,
            Err(err) if is_missing(&err) => continue,
            Err(err) => {
                warnings.push(Warning::new(type_dir, describe_io_error(&err)));
                continue;
            }
        }
        match read_type(
            AttrDir::new(types_fd.as_ref(), &type_dir, &id),
            &mut warnings,
        ) {
            Ok(mdev_type) => types.push(mdev_type),
            Err(warning) => warnings.push(warning),
        }
    }

    let mut info = ParentInfo {
        name: devpath_name(devpath).to_string(),
        devpath: devpath.to_string(),
        subsystem,
        driver,
        types,
    };
    info.normalize();
    ParentRead::Parent(info, warnings)
}

/// A type directory, with the `mdev_supported_types` descriptor it can be
/// reached from: files below it are opened relative to that descriptor.
#[derive(Clone, Copy)]
struct AttrDir<'a> {
    types_fd: Option<&'a OwnedFd>,
    /// Full path, for messages (and for opening when there is no descriptor).
    path: &'a Path,
    /// The type id: the path relative to the descriptor.
    id: &'a str,
}

impl<'a> AttrDir<'a> {
    fn new(types_fd: Option<&'a OwnedFd>, path: &'a Path, id: &'a str) -> AttrDir<'a> {
        AttrDir { types_fd, path, id }
    }

    /// `<type>/<file>`: the full path and the one relative to the descriptor.
    fn file(&self, name: &str) -> AttrFile<'a> {
        AttrFile {
            types_fd: self.types_fd,
            path: self.path.join(name),
            rel: format!("{}/{name}", self.id),
        }
    }
}

/// One file below an [`AttrDir`].
struct AttrFile<'a> {
    types_fd: Option<&'a OwnedFd>,
    path: PathBuf,
    rel: String,
}

impl AttrFile<'_> {
    /// Opens read-only, non-blocking (a planted FIFO cannot hang us).
    fn open(&self) -> io::Result<fs::File> {
        let flags = nix::fcntl::OFlag::O_RDONLY
            | nix::fcntl::OFlag::O_NONBLOCK
            | nix::fcntl::OFlag::O_CLOEXEC;
        match self.types_fd {
            Some(fd) => {
                nix::fcntl::openat(fd, self.rel.as_str(), flags, nix::sys::stat::Mode::empty())
                    .map(fs::File::from)
                    .map_err(|errno| io::Error::from_raw_os_error(errno as i32))
            }
            None => open_nonblocking(&self.path),
        }
    }
}

/// Opens a directory as a descriptor to open files relative to.
fn open_dir_fd(path: &Path) -> Option<OwnedFd> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()
}

/// Reads one type directory; `Err` when a required attribute is bad (the
/// type is then skipped), non-fatal problems go to `warnings`.
fn read_type(type_dir: AttrDir<'_>, warnings: &mut Vec<Warning>) -> Result<MdevType, Warning> {
    let device_api_file = type_dir.file("device_api");
    let device_api = attr_string(read_attr_file(&device_api_file)?, &device_api_file.path)?
        .ok_or_else(|| Warning::new(&device_api_file.path, "missing; type skipped"))?;
    let avail_file = type_dir.file("available_instances");
    let available_instances = attr_u32(
        attr_string(read_attr_file(&avail_file)?, &avail_file.path)?,
        &avail_file.path,
    )?
    .ok_or_else(|| Warning::new(&avail_file.path, "missing; type skipped"))?;
    let name = read_optional_text(&type_dir.file("name"), warnings);
    let description = read_optional_text(&type_dir.file("description"), warnings);
    let devices = read_type_devices(&type_dir.file("devices"), warnings);
    Ok(MdevType {
        id: type_dir.id.to_string(),
        name: normalize_name(&name),
        description: normalize_description(&description),
        device_api: device_api.trim().to_string(),
        available_instances,
        devices,
    })
}

/// `name` or `description`: absent or unreadable gives "", non-UTF-8 is
/// converted lossily, NUL bytes are dropped; each with a warning except
/// plain absence.
fn read_optional_text(file: &AttrFile<'_>, warnings: &mut Vec<Warning>) -> String {
    let path = file.path.as_path();
    let mut bytes = match read_attr_file(file) {
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
    if bytes.contains(&0) {
        warnings.push(Warning::new(path, "contains NUL bytes; removed"));
        bytes.retain(|&b| b != 0);
    }
    String::from_utf8(bytes).unwrap_or_else(|err| {
        warnings.push(Warning::new(
            path,
            "not valid UTF-8; invalid bytes replaced",
        ));
        String::from_utf8_lossy(err.as_bytes()).into_owned()
    })
}

/// UUIDs in `<type>/devices/`, sorted; missing directory gives none.
fn read_type_devices(devices_dir: &AttrFile<'_>, warnings: &mut Vec<Warning>) -> Vec<String> {
    let names = match list_dir(&devices_dir.path, warnings) {
        Ok(names) => names.unwrap_or_default(),
        Err(warning) => {
            warnings.push(warning);
            return Vec::new();
        }
    };
    let mut devices = Vec::with_capacity(names.len());
    for name in names {
        if is_instance_name(&name) {
            devices.push(name);
        } else {
            warnings.push(Warning::new(
                devices_dir.path.join(&name),
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
fn resolve_devpath(canonical_root: &SysfsRoot, link: &Path) -> Result<String, Warning> {
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

fn link_name_or_empty(path: &Path, warnings: &mut Vec<Warning>) -> String {
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
    read_opened(open_nonblocking(path), path)
}

/// [`read_attr_bytes`] for a file below a type directory.
fn read_attr_file(file: &AttrFile<'_>) -> Result<Option<Vec<u8>>, Warning> {
    read_opened(file.open(), &file.path)
}

/// Non-blocking so a FIFO planted in the tree cannot hang the reader.
fn open_nonblocking(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
}

/// The rest of [`read_attr_bytes`] once the open was tried.
fn read_opened(file: io::Result<fs::File>, path: &Path) -> Result<Option<Vec<u8>>, Warning> {
    let file = match file {
        Ok(file) => file,
        Err(err) if is_missing(&err) => return Ok(None),
        Err(err) => return Err(Warning::new(path, describe_io_error(&err))),
    };
    let meta = file
        .metadata()
        .map_err(|err| Warning::new(path, describe_io_error(&err)))?;
    if !meta.is_file() {
        return Err(Warning::new(path, "not a regular file"));
    }
    read_regular_file(file, path).map(Some)
}

/// Reads an open regular file to its end, at most [`MAX_ATTR_BYTES`].
///
/// A read that returns less than asked is taken as the end: that is how a
/// regular file behaves on Linux (sysfs gives a whole attribute in one
/// read), and it saves the extra read that would only return 0.
fn read_regular_file(mut file: fs::File, path: &Path) -> Result<Vec<u8>, Warning> {
    // Attributes are short; start on the stack, spill to the heap if not.
    let mut small = [0u8; 4096];
    let mut filled = 0;
    loop {
        match file.read(&mut small[filled..]) {
            Ok(0) => return Ok(small[..filled].to_vec()),
            Ok(n) => {
                filled += n;
                if filled < small.len() {
                    return Ok(small[..filled].to_vec());
                }
                break;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Warning::new(path, describe_io_error(&err))),
        }
    }
    let mut bytes = small.to_vec();
    let limit = MAX_ATTR_BYTES + 1;
    bytes.resize(limit, 0);
    loop {
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if filled == limit {
                    break;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Warning::new(path, describe_io_error(&err))),
        }
    }
    if filled > MAX_ATTR_BYTES {
        return Err(Warning::new(
            path,
            format!("larger than {MAX_ATTR_BYTES} bytes"),
        ));
    }
    bytes.truncate(filled);
    Ok(bytes)
}

/// Reads an attribute as UTF-8 text, untrimmed; `Ok(None)` when absent.
/// A NUL byte is an error: no D-Bus string, JSON consumer or C reader of
/// ours could carry it.
pub fn read_attr_string(path: &Path) -> Result<Option<String>, Warning> {
    attr_string(read_attr_bytes(path)?, path)
}

fn attr_string(bytes: Option<Vec<u8>>, path: &Path) -> Result<Option<String>, Warning> {
    match bytes {
        None => Ok(None),
        Some(bytes) if bytes.contains(&0) => Err(Warning::new(path, "contains a NUL byte")),
        Some(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| Warning::new(path, "not valid UTF-8")),
    }
}

/// Reads an attribute holding one unsigned 32-bit number (surrounding
/// whitespace allowed); `Ok(None)` when absent.
pub fn read_attr_u32(path: &Path) -> Result<Option<u32>, Warning> {
    attr_u32(read_attr_string(path)?, path)
}

fn attr_u32(text: Option<String>, path: &Path) -> Result<Option<u32>, Warning> {
    let Some(text) = text else {
        return Ok(None);
    };
    let trimmed = text.trim();
    trimmed.parse::<u32>().map(Some).map_err(|_| {
        let shown: String = trimmed.chars().take(40).collect();
        Warning::new(path, format!("not a number in 0..={}: {shown:?}", u32::MAX))
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
    fn parallel_map_keeps_item_order() {
        let items: Vec<u32> = (0..1000).collect();
        let doubled = parallel_map(&items, |n| n * 2);
        assert_eq!(doubled, items.iter().map(|n| n * 2).collect::<Vec<_>>());
        assert!(parallel_map(&[] as &[u32], |n| *n).is_empty());
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
