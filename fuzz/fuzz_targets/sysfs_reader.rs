//! Drives the sysfs reader (`scan`, `read_parent`) over generated trees: the
//! input is read as up to 32 mutations (files, directories, symlinks with
//! any target, loops, special files, big and garbage contents, non-UTF-8
//! names) of a small valid tree, and the reader must neither panic nor hang
//! nor break its invariants (see `tests/common/tree_ops.rs`, shared
//! with the property test in `tests/hostile_sysfs.rs`).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/tree_ops.rs"]
mod tree_ops;

const SCRATCH_PREFIX: &str = "mdevreg-fuzz-sysfs-";

/// One scratch tree per fuzzing process, on tmpfs when there is one.
/// libFuzzer ends the process with `exit`, so the tree is never dropped:
/// trees of processes that are gone are removed here instead.
fn scratch() -> &'static tree_ops::Scratch {
    static SCRATCH: OnceLock<tree_ops::Scratch> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        remove_stale_trees(&base);
        tree_ops::Scratch::new(&base, &format!("{SCRATCH_PREFIX}{}", std::process::id()))
    })
}

fn remove_stale_trees(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(SCRATCH_PREFIX)) else {
            continue;
        };
        if !PathBuf::from("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    tree_ops::check_reader(scratch().tree(data));
});
