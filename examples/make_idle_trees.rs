//! Builds the two trees of the idle-cost figures in BENCHMARKS.md:
//! `DIR/mdev` (1000 mdev parents × 32 types, no instances) and `DIR/vfio`
//! (8 L40S-like GPUs × 16 vendor-VFIO VFs, one vGPU placed per GPU).
//!
//! ```sh
//! cargo run --release --example make_idle_trees -- /tmp/idle
//! ```

#[path = "../tests/common/sysfs_fixture.rs"]
mod sysfs_fixture;

use sysfs_fixture::{many_parents, FakeSysfs, VfioGpuSpec};

fn main() {
    let dir =
        std::path::PathBuf::from(std::env::args().nth(1).expect("usage: make_idle_trees DIR"));
    let mdev = FakeSysfs::at(dir.join("mdev"));
    many_parents(&mdev, 1000, 32, 0);
    let vfio = FakeSysfs::at(dir.join("vfio"));
    for gpu in 0..8u32 {
        let bus = 0x41 + 0x10 * gpu;
        let spec = VfioGpuSpec::l40s(
            &format!(
                "/devices/pci0000:{bus:02x}/0000:{bus:02x}:01.1/0000:{:02x}:00.0",
                bus + 1
            ),
            16,
        );
        vfio.add_vfio_gpu(&spec);
        let first = spec.vf_names()[0].clone();
        vfio.set_vgpu(&spec, &first, 1150);
    }
    println!("{}", dir.display());
}
