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
    /// Devpath of the physical function when this parent is an SR-IOV VF
    /// (written as the `physfn` link).
    pub physfn: Option<String>,
    pub types: Vec<TypeSpec>,
}

impl ParentSpec {
    pub fn new(devpath: &str) -> ParentSpec {
        ParentSpec {
            devpath: devpath.to_string(),
            subsystem: None,
            driver: None,
            physfn: None,
            types: Vec::new(),
        }
    }

    /// Makes the parent a virtual function of the device at `pf_devpath`.
    pub fn physfn(mut self, pf_devpath: &str) -> ParentSpec {
        self.physfn = Some(pf_devpath.to_string());
        self
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
        FakeSysfs::in_tempdir(tempfile::Builder::new().prefix("mdevreg-sysfs-").tempdir())
    }

    /// An empty tree in a new temporary directory on /dev/shm: a tmpfs, as
    /// sysfs is (and quick to remove, even with 100,000s of files).
    pub fn on_tmpfs() -> FakeSysfs {
        FakeSysfs::in_tempdir(
            tempfile::Builder::new()
                .prefix("mdevreg-sysfs-")
                .tempdir_in("/dev/shm"),
        )
    }

    fn in_tempdir(tempdir: std::io::Result<tempfile::TempDir>) -> FakeSysfs {
        let tempdir = tempdir.expect("create temporary directory");
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
        if let Some(physfn) = &spec.physfn {
            self.link(&format!("{rel}/physfn"), physfn);
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

/// One vGPU type of an NVIDIA GPU in vendor-specific VFIO mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VgpuTypeSpec {
    /// The numeric id (`creatable_vgpu_types` column 1; type `nvidia-<id>`).
    pub id: u32,
    pub name: String,
    /// Framebuffer it takes, in GB (decides what still fits, see
    /// [`FakeSysfs::set_vgpu`]).
    pub framebuffer_gb: u32,
}

/// An NVIDIA GPU in vendor-specific VFIO mode (vGPU 17+, SPEC §1.10): the
/// PF (`sriov_totalvfs`, `sriov_numvfs`, `virtfnN`, no `nvidia/`) and its
/// VFs (`physfn`, `driver -> nvidia`, `iommu_group`, `nvidia/` with
/// `creatable_vgpu_types` and `current_vgpu_type`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfioGpuSpec {
    /// Devpath of the PF; its last component is the PF address.
    pub pf_devpath: String,
    pub n_vfs: u32,
    pub framebuffer_gb: u32,
    /// In the driver's order (not sorted by id).
    pub types: Vec<VgpuTypeSpec>,
    /// PCI device id (vendor is NVIDIA, 10de), the same for PF and VFs.
    pub device_id: String,
}

impl VfioGpuSpec {
    /// An L40S-like GPU (48 GB, 13 types: B and Q profiles) at `pf_devpath`.
    pub fn l40s(pf_devpath: &str, n_vfs: u32) -> VfioGpuSpec {
        let types = [
            (1145, "NVIDIA L40S-1B", 1),
            (1146, "NVIDIA L40S-2B", 2),
            (2164, "NVIDIA L40S-3B", 3),
            (1147, "NVIDIA L40S-1Q", 1),
            (1148, "NVIDIA L40S-2Q", 2),
            (1149, "NVIDIA L40S-3Q", 3),
            (1150, "NVIDIA L40S-4Q", 4),
            (1151, "NVIDIA L40S-6Q", 6),
            (1152, "NVIDIA L40S-8Q", 8),
            (1153, "NVIDIA L40S-12Q", 12),
            (1154, "NVIDIA L40S-16Q", 16),
            (1155, "NVIDIA L40S-24Q", 24),
            (1156, "NVIDIA L40S-48Q", 48),
        ]
        .into_iter()
        .map(|(id, name, framebuffer_gb)| VgpuTypeSpec {
            id,
            name: name.to_string(),
            framebuffer_gb,
        })
        .collect();
        VfioGpuSpec {
            pf_devpath: pf_devpath.to_string(),
            n_vfs,
            framebuffer_gb: 48,
            types,
            device_id: "26b9".to_string(),
        }
    }

    /// The PF address (last devpath component).
    pub fn pf_name(&self) -> &str {
        self.pf_devpath
            .rsplit('/')
            .next()
            .unwrap_or(&self.pf_devpath)
    }

    /// VF addresses: function 4 onwards on the PF's bus (`0000:41:00.4`,
    /// `0000:41:00.5`, ..., `0000:41:01.0`, ...), as on real hosts.
    pub fn vf_names(&self) -> Vec<String> {
        let pf = self.pf_name();
        let (bus, _) = pf.rsplit_once(':').expect("PCI address");
        (0..self.n_vfs)
            .map(|index| {
                let devfn = 4 + index;
                format!("{bus}:{:02x}.{}", devfn / 8, devfn % 8)
            })
            .collect()
    }

    /// Devpath of VF `vf` (a sibling directory of the PF, as the kernel
    /// places VFs on the same bus).
    pub fn vf_devpath(&self, vf: &str) -> String {
        let (dir, _) = self.pf_devpath.rsplit_once('/').expect("devpath");
        format!("{dir}/{vf}")
    }

    fn vgpu_type(&self, id: u32) -> Option<&VgpuTypeSpec> {
        self.types.iter().find(|t| t.id == id)
    }
}

/// `creatable_vgpu_types` as the driver writes it: header, then the id
/// left-justified to width 5, ` : `, the name.
pub fn creatable_file<'a>(types: impl IntoIterator<Item = &'a VgpuTypeSpec>) -> String {
    let mut text = "ID    : vGPU Name\n".to_string();
    for t in types {
        text.push_str(&format!("{:<5} : {}\n", t.id, t.name));
    }
    text
}

impl FakeSysfs {
    /// Adds a vendor-VFIO GPU: the PF, `n_vfs` VFs bound to `nvidia` with no
    /// vGPU (each lists every type), and the `bus/pci/devices` links.
    pub fn add_vfio_gpu(&self, spec: &VfioGpuSpec) {
        let pf_rel = spec.pf_devpath.trim_start_matches('/').to_string();
        self.add_pci_device(&pf_rel, spec);
        self.write_file(format!("{pf_rel}/sriov_totalvfs"), "32\n");
        self.write_file(
            format!("{pf_rel}/sriov_numvfs"),
            format!("{}\n", spec.n_vfs),
        );
        for (index, vf) in spec.vf_names().iter().enumerate() {
            let vf_rel = spec.vf_devpath(vf).trim_start_matches('/').to_string();
            self.add_pci_device(&vf_rel, spec);
            self.link(&format!("{vf_rel}/physfn"), &pf_rel);
            self.link(&format!("{pf_rel}/virtfn{index}"), &vf_rel);
            self.write_file(format!("{vf_rel}/nvidia/current_vgpu_type"), "0\n");
            // Outputs of newer drivers, empty until a vGPU exists.
            self.write_file(format!("{vf_rel}/nvidia/vgpu_params"), "");
            self.write_file(format!("{vf_rel}/nvidia/placement_id"), "");
        }
        self.refresh_vfio_lists(spec);
    }

    /// A PCI device of `spec`'s GPU at root-relative `rel`, bound to
    /// `nvidia`, with the kernel's `uevent` properties and an IOMMU group.
    fn add_pci_device(&self, rel: &str, spec: &VfioGpuSpec) {
        let name = rel.rsplit('/').next().unwrap_or(rel).to_string();
        fs::create_dir_all(self.path(rel)).expect("create PCI device");
        self.ensure_dir_with_files("bus/pci", &["drivers_probe", "uevent"]);
        self.link(&format!("{rel}/subsystem"), "bus/pci");
        self.ensure_dir_with_files("bus/pci/drivers/nvidia", &["bind", "unbind", "uevent"]);
        self.link(&format!("{rel}/driver"), "bus/pci/drivers/nvidia");
        self.link(&format!("bus/pci/devices/{name}"), rel);
        self.write_file(format!("{rel}/vendor"), "0x10de\n");
        self.write_file(format!("{rel}/device"), format!("0x{}\n", spec.device_id));
        let id = spec.device_id.to_uppercase();
        self.write_file(
            format!("{rel}/uevent"),
            format!(
                "DRIVER=nvidia\nPCI_CLASS=30200\nPCI_ID=10DE:{id}\nPCI_SUBSYS_ID=10DE:1851\nPCI_SLOT_NAME={name}\nMODALIAS=pci:v000010DEd0000{id}sv000010DEsd00001851bc03sc02i00\n"
            ),
        );
        let group = self.next_iommu_group();
        self.write_file(format!("kernel/iommu_groups/{group}/type"), "DMA\n");
        self.link(
            &format!("{rel}/iommu_group"),
            &format!("kernel/iommu_groups/{group}"),
        );
    }

    /// Places a vGPU of type `id` on VF `vf` (0 destroys it), as writing
    /// `current_vgpu_type` does, and rewrites every sibling's
    /// `creatable_vgpu_types` as the driver would (no uevent either way).
    pub fn set_vgpu(&self, spec: &VfioGpuSpec, vf: &str, id: u32) {
        self.write_file(
            format!("{}/nvidia/current_vgpu_type", spec.vf_devpath(vf)),
            format!("{id}\n"),
        );
        self.refresh_vfio_lists(spec);
    }

    /// The vGPU type VF `vf` holds (0 for none), read back.
    pub fn current_vgpu(&self, spec: &VfioGpuSpec, vf: &str) -> u32 {
        let path = self.path(format!("{}/nvidia/current_vgpu_type", spec.vf_devpath(vf)));
        fs::read_to_string(path)
            .expect("read current_vgpu_type")
            .trim()
            .parse()
            .expect("a number")
    }

    /// Rewrites each VF's `creatable_vgpu_types` from the vGPUs placed, in
    /// the driver's default homogeneous mode: with nothing placed every
    /// type is listed; once vGPUs of one size are placed, a free VF lists
    /// the types of that size while one more fits in the framebuffer; a VF
    /// holding a vGPU lists nothing (the header alone).
    pub fn refresh_vfio_lists(&self, spec: &VfioGpuSpec) {
        let vfs = spec.vf_names();
        let placed: Vec<&VgpuTypeSpec> = vfs
            .iter()
            .filter_map(|vf| spec.vgpu_type(self.current_vgpu(spec, vf)))
            .collect();
        let used: u32 = placed.iter().map(|t| t.framebuffer_gb).sum();
        let listed: Vec<&VgpuTypeSpec> = match placed.first() {
            None => spec.types.iter().collect(),
            Some(first) if used + first.framebuffer_gb <= spec.framebuffer_gb => spec
                .types
                .iter()
                .filter(|t| t.framebuffer_gb == first.framebuffer_gb)
                .collect(),
            Some(_) => Vec::new(),
        };
        for vf in &vfs {
            let text = if self.current_vgpu(spec, vf) == 0 {
                creatable_file(listed.iter().copied())
            } else {
                creatable_file([])
            };
            self.write_file(
                format!("{}/nvidia/creatable_vgpu_types", spec.vf_devpath(vf)),
                text,
            );
        }
    }

    /// Disables SR-IOV on the GPU as `sriov_numvfs = 0` does: every VF
    /// directory, `virtfnN` and `bus/pci/devices` link goes.
    pub fn remove_vfio_vfs(&self, spec: &VfioGpuSpec) {
        let pf_rel = spec.pf_devpath.trim_start_matches('/');
        for (index, vf) in spec.vf_names().iter().enumerate() {
            let _ = fs::remove_file(self.path(format!("{pf_rel}/virtfn{index}")));
            let _ = fs::remove_file(self.path(format!("bus/pci/devices/{vf}")));
            fs::remove_dir_all(self.path(spec.vf_devpath(vf))).expect("remove VF");
        }
        self.write_file(format!("{pf_rel}/sriov_numvfs"), "0\n");
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
pub const EXAMPLE_TREES: &[&str] = &["gvt", "mixed", "broken", "nvidia-vfio", "nvidia-mixed"];

/// GPU A of the vendor-VFIO examples: an L40S-like PF with 4 VFs.
pub fn l40s_a() -> VfioGpuSpec {
    VfioGpuSpec::l40s("/devices/pci0000:40/0000:40:01.1/0000:41:00.0", 4)
}

/// GPU B of the vendor-VFIO examples: an L40S-like PF with 4 VFs.
pub fn l40s_b() -> VfioGpuSpec {
    VfioGpuSpec::l40s("/devices/pci0000:c0/0000:c0:01.1/0000:c1:00.0", 4)
}

/// PF of the Ampere (A40-like) GPU of the `nvidia-mixed` example, in mdev
/// mode: its VFs are mdev parents.
pub const A40_PF_DEVPATH: &str = "/devices/pci0000:80/0000:80:01.1/0000:81:00.0";

/// `nvidia-vfio`: two L40S-like GPUs with 4 VFs each. On `0000:41:00.0`,
/// VF `0000:41:00.4` holds an L40S-2B vGPU (its list is the header alone)
/// and its siblings list the 2 GB types; on `0000:c1:00.0` nothing is
/// placed, VF `0000:c1:00.5` has one malformed line among good ones, and VF
/// `0000:c1:00.7` lists nothing (header only).
pub fn populate_nvidia_vfio(tree: &FakeSysfs) {
    let (a, b) = (l40s_a(), l40s_b());
    tree.add_vfio_gpu(&a);
    tree.add_vfio_gpu(&b);
    tree.set_vgpu(&a, "0000:41:00.4", 1146);
    let types: Vec<&VgpuTypeSpec> = b.types.iter().take(3).collect();
    let good = creatable_file(types.iter().copied());
    let (header, lines) = good.split_once('\n').expect("header");
    tree.write_file(
        format!(
            "{}/nvidia/creatable_vgpu_types",
            b.vf_devpath("0000:c1:00.5")
        ),
        format!("{header}\n{}this line is not a type\n", lines),
    );
    tree.write_file(
        format!(
            "{}/nvidia/creatable_vgpu_types",
            b.vf_devpath("0000:c1:00.7")
        ),
        creatable_file([]),
    );
}

/// `nvidia-mixed`: a host with both backends. mdev parents (GVT-g, mtty),
/// an A40-like GPU in mdev mode (PF `0000:81:00.0`, VFs `0000:81:00.4` and
/// `0000:81:00.5` are mdev parents with a `physfn`, one holding an mdev),
/// and an L40S-like GPU in vendor-specific VFIO mode (`0000:41:00.0`, 4 VFs,
/// VF `0000:41:00.4` holding an L40S-4Q).
pub fn populate_nvidia_mixed(tree: &FakeSysfs) {
    tree.add_parent(&ParentSpec::gvt());
    tree.add_parent(&ParentSpec::mtty());
    let pf_rel = A40_PF_DEVPATH.trim_start_matches('/');
    fs::create_dir_all(tree.path(pf_rel)).expect("create A40 PF");
    tree.link(&format!("{pf_rel}/subsystem"), "bus/pci");
    tree.link("bus/pci/devices/0000:81:00.0", pf_rel);
    tree.write_file(format!("{pf_rel}/sriov_numvfs"), "2\n");
    for (index, vf) in ["0000:81:00.4", "0000:81:00.5"].iter().enumerate() {
        let devpath = format!("/devices/pci0000:80/0000:80:01.1/{vf}");
        let spec = ParentSpec::new(&devpath)
            .subsystem("bus/pci")
            .driver("bus/pci/drivers/nvidia")
            .physfn(A40_PF_DEVPATH)
            .with_type(
                TypeSpec::new("nvidia-557", "vfio-pci", 1 - index as u32).name("NVIDIA A40-4Q"),
            )
            .with_type(
                TypeSpec::new("nvidia-558", "vfio-pci", 1 - index as u32).name("NVIDIA A40-8Q"),
            );
        tree.add_parent(&spec);
        tree.link(
            &format!("{pf_rel}/virtfn{index}"),
            devpath.trim_start_matches('/'),
        );
        tree.link(
            &format!("bus/pci/devices/{vf}"),
            devpath.trim_start_matches('/'),
        );
    }
    tree.add_instance("0000:81:00.5", "nvidia-557", &uuid_for(0x81));
    let a = l40s_a();
    tree.add_vfio_gpu(&a);
    tree.set_vgpu(&a, "0000:41:00.4", 1150);
}

/// Writes sample tree `name` (one of [`EXAMPLE_TREES`]) with its root at
/// `dir`, which must not exist yet. Empty directories are removed at the end
/// (git does not keep them), so the tree on disk is what a checkout gives.
///
/// - `gvt`: Intel GVT-g on `0000:00:02.0` with two instances;
/// - `mixed`: [`populate_mixed`];
/// - `nvidia-vfio`: [`populate_nvidia_vfio`];
/// - `nvidia-mixed`: [`populate_nvidia_mixed`];
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
        "nvidia-vfio" => populate_nvidia_vfio(&tree),
        "nvidia-mixed" => populate_nvidia_mixed(&tree),
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
