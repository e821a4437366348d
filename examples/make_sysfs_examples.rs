//! Regenerates the sample sysfs trees in `examples/sysfs/` (see
//! `EXAMPLE_TREES` in `tests/common/sysfs_fixture.rs`):
//!
//! ```sh
//! cargo run --example make_sysfs_examples
//! mdevreg types --sysfs-root examples/sysfs/mixed
//! ```

#[path = "../tests/common/sysfs_fixture.rs"]
mod sysfs_fixture;

use std::path::Path;

fn main() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join("sysfs");
    for name in sysfs_fixture::EXAMPLE_TREES {
        let dir = base.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove old tree");
        }
        sysfs_fixture::write_example_tree(name, &dir);
        println!("wrote {}", dir.display());
    }
}
