//! Builds fake sysfs trees in a directory, laid out as the kernel lays them
//! out (real files and relative symlinks), for tests, benchmarks and the
//! sample trees in `examples/sysfs/`.
//!
//! Depends only on std, tempfile and the mdevreg library, so a bench can use
//! it with `#[path = "../tests/common/sysfs_fixture.rs"] mod sysfs_fixture;`.
//!
//! Builder methods panic on I/O errors: a fixture that cannot be built is a
//! broken test environment, not a case under test.
#![allow(dead_code)]

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

/// One `mdev_supported_types/<id>/` directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeSpec {
    pub id: String,
    /// Written to `name` (with a trailing newline) when set.
    pub name: Option<String>,
    /// Written to `description` as given (newlines kept) when set.
    pub description: Option<String>,
    pub device_api: String,
    pub available_instances: u32,
}

impl TypeSpec {
    pub fn new(id: &str, device_api: &str, available_instances: u32) -> TypeSpec {
        TypeSpec {
            id: id.to_string(),
            name: None,
            description: None,
            device_api: device_api.to_string(),
            available_instances,
        }
    }

    pub fn name(mut self, name: &str) -> TypeSpec {
        self.name = Some(name.to_string());
        self
    }

    pub fn description(mut self, description: &str) -> TypeSpec {
        self.description = Some(description.to_string());
        self
    }
}

/// A parent device: its devpath, where its `subsystem` and `driver` links
/// point (root-relative, e.g. `bus/pci` and `bus/pci/drivers/i915`), its types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentSpec {
    /// `/devices/...`; the last component is the parent name.
    pub devpath: String,
    /// Root-relative target of the `subsystem` link (`bus/pci`, `class/mtty`).
    pub subsystem: Option<String>,
    /// Root-relative target of the `driver` link (`bus/pci/drivers/i915`).
    pub driver: Option<String>,
    pub types: Vec<TypeSpec>,
}

impl ParentSpec {
    pub fn new(devpath: &str) -> ParentSpec {
        ParentSpec {
            devpath: devpath.to_string(),
            subsystem: None,
            driver: None,
            types: Vec::new(),
        }
    }

    /// The parent name: last component of the devpath.
    pub fn name(&self) -> &str {
        self.devpath.rsplit('/').next().unwrap_or(&self.devpath)
    }

    pub fn subsystem(mut self, target: &str) -> ParentSpec {
        self.subsystem = Some(target.to_string());
        self
    }

    pub fn driver(mut self, target: &str) -> ParentSpec {
        self.driver = Some(target.to_string());
        self
    }

    pub fn with_type(mut self, mdev_type: TypeSpec) -> ParentSpec {
        self.types.push(mdev_type);
        self
    }

    /// A PCI device `/devices/pci0000:00/<pci_name>` bound to `driver`.
    pub fn pci(pci_name: &str, driver: &str) -> ParentSpec {
        ParentSpec::new(&format!("/devices/pci0000:00/{pci_name}"))
            .subsystem("bus/pci")
            .driver(&format!("bus/pci/drivers/{driver}"))
    }

    /// Intel GVT-g on the integrated GPU `0000:00:02.0` (i915), four types
    /// with the kernel's multi-line descriptions.
    pub fn gvt() -> ParentSpec {
        let gvt_type = |suffix: &str, low: u32, high: u32, res: &str, weight: u32, avail: u32| {
            TypeSpec::new(&format!("i915-GVTg_V5_{suffix}"), "vfio-pci", avail)
                .name(&format!("GVTg_V5_{suffix}"))
                .description(&format!(
                    "low_gm_size: {low}MB\nhigh_gm_size: {high}MB\nfence: 4\nresolution: {res}\nweight: {weight}\n"
                ))
        };
        ParentSpec::pci("0000:00:02.0", "i915")
            .with_type(gvt_type("1", 512, 2048, "1920x1200", 16, 1))
            .with_type(gvt_type("2", 256, 1024, "1920x1200", 8, 2))
            .with_type(gvt_type("4", 128, 512, "1920x1200", 4, 5))
            .with_type(gvt_type("8", 64, 384, "1024x768", 2, 7))
    }

    /// The `mtty` sample driver: a virtual class device, no description.
    pub fn mtty() -> ParentSpec {
        ParentSpec::new("/devices/virtual/mtty/mtty")
            .subsystem("class/mtty")
            .with_type(TypeSpec::new("mtty-1", "vfio-pci", 24).name("Single port serial"))
            .with_type(TypeSpec::new("mtty-2", "vfio-pci", 12).name("Dual port serial"))
    }

    /// The `mdpy` sample display driver.
    pub fn mdpy() -> ParentSpec {
        let mdpy_type = |id: &str, name: &str, res: &str| {
            TypeSpec::new(id, "vfio-pci", 4)
                .name(name)
                .description(&format!("virtual display, {res}, framebuffer 16 MB\n"))
        };
        ParentSpec::new("/devices/virtual/mdpy/mdpy")
            .subsystem("class/mdpy")
            .with_type(mdpy_type("mdpy-vga", "vga", "640x480"))
            .with_type(mdpy_type("mdpy-xga", "xga", "1024x768"))
            .with_type(mdpy_type("mdpy-hd", "hd", "1920x1080"))
    }

    /// The `mbochs` sample display driver.
    pub fn mbochs() -> ParentSpec {
        ParentSpec::new("/devices/virtual/mbochs/mbochs")
            .subsystem("class/mbochs")
            .with_type(
                TypeSpec::new("mbochs-1", "vfio-pci", 16)
                    .name("small")
                    .description("virtual display, 64 MB video memory\n"),
            )
            .with_type(
                TypeSpec::new("mbochs-2", "vfio-pci", 8)
                    .name("medium")
                    .description("virtual display, 128 MB video memory\n"),
            )
            .with_type(
                TypeSpec::new("mbochs-4", "vfio-pci", 4)
                    .name("large")
                    .description("virtual display, 256 MB video memory\n"),
            )
    }

    /// s390 vfio_ap: the `matrix` device on the matrix bus.
    pub fn vfio_ap_matrix() -> ParentSpec {
        ParentSpec::new("/devices/vfio_ap/matrix")
            .subsystem("bus/matrix")
            .driver("bus/matrix/drivers/vfio_ap")
            .with_type(
                TypeSpec::new("vfio_ap-passthrough", "vfio-ap", 65535)
                    .name("VFIO AP Passthrough Device"),
            )
    }

    /// s390 vfio_ccw: an I/O subchannel such as `0.0.0013` on `css0`.
    pub fn vfio_ccw(subchannel: &str) -> ParentSpec {
        ParentSpec::new(&format!("/devices/css0/{subchannel}"))
            .subsystem("bus/css")
            .driver("bus/css/drivers/vfio_ccw")
            .with_type(
                TypeSpec::new("vfio_ccw-io", "vfio-ccw", 1).name("I/O subchannel (Non-QDIO)"),
            )
    }

    /// An NVIDIA vGPU card behind a bridge, with `n_types` types
    /// `nvidia-<100+i>` and multi-line descriptions.
    pub fn nvidia(pci_name: &str, n_types: u32) -> ParentSpec {
        let mut spec = ParentSpec::new(&format!("/devices/pci0000:00/0000:00:03.1/{pci_name}"))
            .subsystem("bus/pci")
            .driver("bus/pci/drivers/nvidia");
        for i in 0..n_types {
            let framebuffer = 1024 << (i % 4);
            spec = spec.with_type(
                TypeSpec::new(&format!("nvidia-{}", 100 + i), "vfio-pci", 32 / (1 + i % 8))
                    .name(&format!("GRID P40-{}Q", framebuffer / 1024))
                    .description(&format!(
                        "num_heads=4, frl_config=60,\nframebuffer={framebuffer}M\nmax_resolution=5120x2880\nmax_instance={}\n",
                        32 / (1 + i % 8)
                    )),
            );
        }
        spec
    }
}

/// A deterministic UUID for instance number `n` (`00000000-0000-4000-8000-<n>`).
pub fn uuid_for(n: u64) -> String {
    format!("00000000-0000-4000-8000-{:012x}", n & 0xffff_ffff_ffff)
}

/// A fake sysfs tree; the temporary directory (if any) lives as long as this.
pub struct FakeSysfs {
    root: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
    /// The next free IOMMU group number (`usize::MAX` until first used).
    next_group: std::sync::atomic::AtomicUsize,
}

impl FakeSysfs {
    /// An empty tree (`devices/`, `class/mdev_bus/`, `bus/mdev/devices/`) in
    /// a new temporary directory.
    pub fn new() -> FakeSysfs {
        let tempdir = tempfile::Builder::new()
            .prefix("mdevreg-sysfs-")
            .tempdir()
            .expect("create temporary directory");
        let root = fs::canonicalize(tempdir.path()).expect("canonicalize tempdir");
        let tree = FakeSysfs {
            root,
            _tempdir: Some(tempdir),
            next_group: std::sync::atomic::AtomicUsize::new(usize::MAX),
        };
        tree.skeleton();
        tree
    }

    /// An empty tree in `path` (created if needed, kept afterwards).
    pub fn at(path: impl Into<PathBuf>) -> FakeSysfs {
        let path = path.into();
        fs::create_dir_all(&path).expect("create tree root");
        let root = fs::canonicalize(&path).expect("canonicalize tree root");
        let tree = FakeSysfs {
            root,
            _tempdir: None,
            next_group: std::sync::atomic::AtomicUsize::new(usize::MAX),
        };
        tree.skeleton();
        tree
    }

    fn skeleton(&self) {
        for dir in [
            "devices",
            "class/mdev_bus",
            "bus/mdev/devices",
            "bus/mdev/drivers/vfio_mdev",
        ] {
            fs::create_dir_all(self.root.join(dir)).expect("create skeleton");
        }
        self.write_file("bus/mdev/drivers/vfio_mdev/bind", "");
        self.write_file("bus/mdev/drivers/vfio_mdev/unbind", "");
    }

    /// The tree's root directory (what `--sysfs-root` takes).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn sysfs_root(&self) -> mdevreg::paths::SysfsRoot {
        mdevreg::paths::SysfsRoot::new(&self.root)
    }

    /// `rel` below the root; a leading `/` is ignored, and a path already
    /// inside the root is taken as it is.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        let rel = rel.as_ref();
        if rel.starts_with(&self.root) {
            return rel.to_path_buf();
        }
        self.root.join(rel.strip_prefix("/").unwrap_or(rel))
    }

    /// Creates the device (if needed), its links, its types, and the
    /// `class/mdev_bus/<name>` link. Returns the device directory.
    pub fn add_parent(&self, spec: &ParentSpec) -> PathBuf {
        let rel = spec.devpath.trim_start_matches('/').to_string();
        let dir = self.path(&rel);
        fs::create_dir_all(&dir).expect("create parent device");
        let mut uevent = String::new();
        if let Some(subsystem) = &spec.subsystem {
            self.ensure_subsystem(subsystem, spec.name(), &rel);
            self.link(&format!("{rel}/subsystem"), subsystem);
        }
        if let Some(driver) = &spec.driver {
            self.ensure_dir_with_files(driver, &["bind", "unbind", "uevent"]);
            self.link(&format!("{rel}/driver"), driver);
            let driver_name = driver.rsplit('/').next().unwrap_or(driver);
            uevent.push_str(&format!("DRIVER={driver_name}\n"));
        }
        self.write_file(format!("{rel}/uevent"), &uevent);
        fs::create_dir_all(dir.join("mdev_supported_types")).expect("create mdev_supported_types");
        for mdev_type in &spec.types {
            self.write_type(&rel, mdev_type);
        }
        self.link(&format!("class/mdev_bus/{}", spec.name()), &rel);
        dir
    }

    /// A subsystem target (`bus/pci` or `class/mtty`) exists and is not
    /// empty; class devices also get their `class/<c>/<name>` link.
    fn ensure_subsystem(&self, subsystem: &str, name: &str, device_rel: &str) {
        if subsystem.starts_with("class/") {
            fs::create_dir_all(self.path(subsystem)).expect("create class");
            let class_link = format!("{subsystem}/{name}");
            if fs::symlink_metadata(self.path(&class_link)).is_err() {
                self.link(&class_link, device_rel);
            }
        } else {
            self.ensure_dir_with_files(subsystem, &["drivers_probe", "uevent"]);
        }
    }

    fn ensure_dir_with_files(&self, rel: &str, files: &[&str]) {
        fs::create_dir_all(self.path(rel)).expect("create directory");
        for file in files {
            let path = self.path(rel).join(file);
            if !path.exists() {
                fs::write(path, "").expect("write file");
            }
        }
    }

    fn write_type(&self, parent_rel: &str, mdev_type: &TypeSpec) {
        let type_rel = format!("{parent_rel}/mdev_supported_types/{}", mdev_type.id);
        fs::create_dir_all(self.path(&type_rel).join("devices")).expect("create type");
        if let Some(name) = &mdev_type.name {
            self.write_file(format!("{type_rel}/name"), format!("{name}\n"));
        }
        if let Some(description) = &mdev_type.description {
            self.write_file(format!("{type_rel}/description"), description);
        }
        self.write_file(
            format!("{type_rel}/device_api"),
            format!("{}\n", mdev_type.device_api),
        );
        self.write_file(
            format!("{type_rel}/available_instances"),
            format!("{}\n", mdev_type.available_instances),
        );
        self.write_file(format!("{type_rel}/create"), "");
    }

    /// Adds a type to an existing parent.
    pub fn add_type(&self, parent: &str, mdev_type: &TypeSpec) {
        let rel = self.parent_rel(parent);
        self.write_type(&rel, mdev_type);
    }

    /// Removes a type directory (and nothing else) from a parent.
    pub fn remove_type(&self, parent: &str, type_id: &str) {
        fs::remove_dir_all(self.type_dir(parent, type_id)).expect("remove type");
    }

    /// The parent's devpath, read back from its `class/mdev_bus` link.
    pub fn devpath(&self, parent: &str) -> String {
        format!("/{}", self.parent_rel(parent))
    }

    /// The parent's device directory.
    pub fn parent_dir(&self, parent: &str) -> PathBuf {
        self.path(self.parent_rel(parent))
    }

    pub fn type_dir(&self, parent: &str, type_id: &str) -> PathBuf {
        self.parent_dir(parent)
            .join("mdev_supported_types")
            .join(type_id)
    }

    /// Root-relative device path of a parent, from `class/mdev_bus/<parent>`.
    fn parent_rel(&self, parent: &str) -> String {
        let link = self.path("class/mdev_bus").join(parent);
        let target = fs::read_link(&link).expect("parent link exists");
        let mut parts: Vec<String> = vec!["class".into(), "mdev_bus".into()];
        for component in target.components() {
            match component {
                Component::ParentDir => {
                    parts.pop();
                }
                Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
                _ => {}
            }
        }
        parts.join("/")
    }

    /// Writes a new value to `available_instances`.
    pub fn set_available_instances(&self, parent: &str, type_id: &str, count: u32) {
        fs::write(
            self.type_dir(parent, type_id).join("available_instances"),
            format!("{count}\n"),
        )
        .expect("write available_instances");
    }

    /// Creates an active mdev instance the way the kernel shows it.
    pub fn add_instance(&self, parent: &str, type_id: &str, uuid: &str) {
        let parent_rel = self.parent_rel(parent);
        let instance_rel = format!("{parent_rel}/{uuid}");
        fs::create_dir_all(self.path(&instance_rel)).expect("create instance");
        self.link(
            &format!("{instance_rel}/mdev_type"),
            &format!("{parent_rel}/mdev_supported_types/{type_id}"),
        );
        self.write_file(format!("{instance_rel}/remove"), "");
        self.write_file(
            format!("{instance_rel}/uevent"),
            format!("MDEV_TYPE={type_id}\n"),
        );
        self.link(&format!("{instance_rel}/subsystem"), "bus/mdev");
        self.link(
            &format!("{instance_rel}/driver"),
            "bus/mdev/drivers/vfio_mdev",
        );
        let group = self.next_iommu_group();
        self.write_file(format!("kernel/iommu_groups/{group}/type"), "DMA\n");
        self.link(
            &format!("{instance_rel}/iommu_group"),
            &format!("kernel/iommu_groups/{group}"),
        );
        self.link(
            &format!("{parent_rel}/mdev_supported_types/{type_id}/devices/{uuid}"),
            &instance_rel,
        );
        self.link(&format!("bus/mdev/devices/{uuid}"), &instance_rel);
    }

    /// A group number not yet used: counted from the existing groups once,
    /// then incremented (skipping any number that exists already).
    fn next_iommu_group(&self) -> usize {
        use std::sync::atomic::Ordering;
        let mut group = self.next_group.load(Ordering::Relaxed);
        if group == usize::MAX {
            group = fs::read_dir(self.path("kernel/iommu_groups"))
                .map(|entries| entries.count())
                .unwrap_or(0);
        }
        while self.path(format!("kernel/iommu_groups/{group}")).exists() {
            group += 1;
        }
        self.next_group.store(group + 1, Ordering::Relaxed);
        group
    }

    /// Removes an instance (its directory and both links to it).
    pub fn remove_instance(&self, parent: &str, uuid: &str) {
        let instance = self.parent_dir(parent).join(uuid);
        if let Ok(target) = fs::read_link(instance.join("mdev_type")) {
            if let Some(type_id) = target.file_name() {
                let _ = fs::remove_file(
                    self.type_dir(parent, &type_id.to_string_lossy())
                        .join("devices")
                        .join(uuid),
                );
            }
        }
        let _ = fs::remove_file(self.path("bus/mdev/devices").join(uuid));
        fs::remove_dir_all(instance).expect("remove instance");
    }

    /// Unregisters a parent as the kernel does: its instances, its
    /// `class/mdev_bus` link and its `mdev_supported_types` go; the device
    /// directory itself stays.
    pub fn remove_parent(&self, parent: &str) {
        let dir = self.parent_dir(parent);
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if fs::symlink_metadata(entry.path().join("mdev_type")).is_ok() {
                    self.remove_instance(parent, &name);
                }
            }
        }
        fs::remove_file(self.path("class/mdev_bus").join(parent)).expect("remove class link");
        fs::remove_dir_all(dir.join("mdev_supported_types")).expect("remove types");
    }

    // ----- hostile helpers -----

    /// Removes one file (or symlink) below the root.
    pub fn remove_file(&self, rel: impl AsRef<Path>) {
        fs::remove_file(self.path(rel)).expect("remove file");
    }

    /// Writes (creating parent directories) raw bytes below the root.
    pub fn write_file(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) {
        let path = self.path(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).expect("create directory");
        }
        fs::write(path, contents).expect("write file");
    }

    /// Replaces `rel` with a symlink to itself (opening it gives ELOOP).
    pub fn symlink_loop(&self, rel: impl AsRef<Path>) {
        let path = self.path(rel);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path).expect("remove directory"),
            Ok(_) => fs::remove_file(&path).expect("remove file"),
            Err(_) => {}
        }
        let name = path.file_name().expect("a file name").to_owned();
        symlink(name, &path).expect("create loop");
    }

    /// Replaces `rel` with a file of `size` bytes of digits.
    pub fn write_huge_file(&self, rel: impl AsRef<Path>, size: usize) {
        self.write_file(rel, vec![b'7'; size]);
    }

    /// Adds `class/mdev_bus/<name>` pointing to a device that does not exist.
    pub fn add_dangling_parent_link(&self, name: &str) {
        self.link(
            &format!("class/mdev_bus/{name}"),
            &format!("devices/pci0000:00/{name}"),
        );
    }

    /// Creates a directory with a raw (possibly non-UTF-8) name in `rel_dir`.
    pub fn mkdir_raw(&self, rel_dir: impl AsRef<Path>, name: &[u8]) -> PathBuf {
        let path = self.path(rel_dir).join(std::ffi::OsStr::from_bytes(name));
        fs::create_dir_all(&path).expect("create raw directory");
        path
    }

    /// Creates a symlink with a raw name in `rel_dir` to a raw target.
    pub fn symlink_raw(&self, rel_dir: impl AsRef<Path>, name: &[u8], target: &[u8]) {
        let path = self.path(rel_dir).join(std::ffi::OsStr::from_bytes(name));
        symlink(std::ffi::OsStr::from_bytes(target), path).expect("create raw symlink");
    }

    /// A relative symlink at root-relative `link_rel` to root-relative `target_rel`.
    pub fn link(&self, link_rel: &str, target_rel: &str) {
        let link_rel = link_rel.trim_start_matches('/');
        let target_rel = target_rel.trim_start_matches('/');
        let depth = Path::new(link_rel).components().count().saturating_sub(1);
        let target = format!("{}{}", "../".repeat(depth), target_rel);
        let link = self.path(link_rel);
        if let Some(dir) = link.parent() {
            fs::create_dir_all(dir).expect("create link directory");
        }
        symlink(target, link).expect("create symlink");
    }
}

impl Default for FakeSysfs {
    fn default() -> FakeSysfs {
        FakeSysfs::new()
    }
}

/// Every preset at once, with a few instances: GVT-g, mtty, mdpy, mbochs,
/// vfio_ap, two vfio_ccw subchannels and an NVIDIA card with 12 types.
pub fn populate_mixed(tree: &FakeSysfs) {
    tree.add_parent(&ParentSpec::gvt());
    tree.add_parent(&ParentSpec::mtty());
    tree.add_parent(&ParentSpec::mdpy());
    tree.add_parent(&ParentSpec::mbochs());
    tree.add_parent(&ParentSpec::vfio_ap_matrix());
    tree.add_parent(&ParentSpec::vfio_ccw("0.0.0013"));
    tree.add_parent(&ParentSpec::vfio_ccw("0.0.0014"));
    tree.add_parent(&ParentSpec::nvidia("0000:3b:00.0", 12));
    tree.add_instance("0000:00:02.0", "i915-GVTg_V5_4", &uuid_for(1));
    tree.add_instance("0000:00:02.0", "i915-GVTg_V5_4", &uuid_for(2));
    tree.add_instance("mtty", "mtty-2", &uuid_for(3));
    tree.add_instance("0.0.0013", "vfio_ccw-io", &uuid_for(4));
    tree.add_instance("0000:3b:00.0", "nvidia-105", &uuid_for(5));
}

/// `n_parents` NVIDIA-style PCI parents `0000:BB:DD.F`, each with `n_types`
/// types and `instances_per_type` instances per type (benchmarks: 1000×32).
pub fn many_parents(tree: &FakeSysfs, n_parents: u32, n_types: u32, instances_per_type: u32) {
    let mut next_uuid = 0x1_0000u64;
    for index in 0..n_parents {
        let pci_name = format!(
            "0000:{:02x}:{:02x}.{}",
            (index >> 8) & 0xff,
            (index >> 3) & 0x1f,
            index & 7
        );
        let mut spec = ParentSpec::pci(&pci_name, "nvidia");
        for type_index in 0..n_types {
            spec = spec.with_type(
                TypeSpec::new(&format!("nvidia-{}", 100 + type_index), "vfio-pci", 16)
                    .name(&format!("GRID T4-{type_index}Q"))
                    .description(&format!(
                        "num_heads=4\nframebuffer={}M\nmax_resolution=7680x4320\n",
                        1024 * (1 + type_index % 16)
                    )),
            );
        }
        tree.add_parent(&spec);
        for type_index in 0..n_types {
            for _ in 0..instances_per_type {
                tree.add_instance(
                    &pci_name,
                    &format!("nvidia-{}", 100 + type_index),
                    &uuid_for(next_uuid),
                );
                next_uuid += 1;
            }
        }
    }
}

/// The sample trees committed under `examples/sysfs/`.
pub const EXAMPLE_TREES: &[&str] = &["gvt", "mixed", "broken"];

/// Writes sample tree `name` (one of [`EXAMPLE_TREES`]) with its root at
/// `dir`, which must not exist yet. Empty directories are removed at the end
/// (git does not keep them), so the tree on disk is what a checkout gives.
///
/// - `gvt`: Intel GVT-g on `0000:00:02.0` with two instances;
/// - `mixed`: [`populate_mixed`];
/// - `broken`: `mixed` plus a type without `device_api`, a type whose
///   `available_instances` is not a number, and a dangling parent link
///   (mdevctl refuses this tree; mdevreg warns and lists the rest).
pub fn write_example_tree(name: &str, dir: &Path) {
    assert!(!dir.exists(), "{} exists already", dir.display());
    let tree = FakeSysfs::at(dir);
    match name {
        "gvt" => {
            tree.add_parent(&ParentSpec::gvt());
            tree.add_instance("0000:00:02.0", "i915-GVTg_V5_4", &uuid_for(1));
            tree.add_instance("0000:00:02.0", "i915-GVTg_V5_8", &uuid_for(2));
        }
        "mixed" => populate_mixed(&tree),
        "broken" => {
            populate_mixed(&tree);
            tree.remove_file(
                tree.type_dir("0000:00:02.0", "i915-GVTg_V5_2")
                    .join("device_api"),
            );
            tree.write_file(
                tree.type_dir("mtty", "mtty-1").join("available_instances"),
                "lots\n",
            );
            tree.add_dangling_parent_link("0000:00:09.0");
        }
        other => panic!("unknown example tree {other:?}"),
    }
    prune_empty_dirs(tree.root());
}

/// Removes empty directories below `dir` (not `dir` itself), bottom-up.
pub fn prune_empty_dirs(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_dir() {
            let path = entry.path();
            prune_empty_dirs(&path);
            // Fails (and is left alone) when not empty.
            let _ = fs::remove_dir(&path);
        }
    }
}
