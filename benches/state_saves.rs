//! What grouping the state saves buys: RegisterParent + UnregisterParent
//! cycles per second with the state directory on disk (every change is
//! written, fsync'd, renamed and the directory fsync'd before the caller
//! hears), for 1, 4 and 16 concurrent clients, each on its own bus
//! connection and with its own parent name. Persistent registrations, so
//! the file on disk (`--state-dir`) is the one written.
//!
//! `cargo bench --bench state_saves` (as root: a private network namespace
//! and a private bus). `MDEVREG_TEST_DAEMON=/path/to/mdevregd` measures
//! another build (an older one, for a before/after);
//! `MDEVREG_BENCH_WINDOW_MS` sets each window (default 3000);
//! `MDEVREG_BENCH_STATE_PARENT=/dev/shm` puts the state directory on a
//! tmpfs instead (what the hand-off to the writer thread costs when the
//! write itself is cheap, as in `/run/mdevreg`).
//! Prints one `FIGURES state-saves:` line per client count.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::{daemon_binary, Setup};
use common::registry_client::{connect, good_type, lifetime, register_raw, unregister};
use common::sysfs_fixture::{many_parents, FakeSysfs};

const CLIENTS: [usize; 3] = [1, 4, 16];

fn main() -> ExitCode {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("state_saves: runs only under `cargo bench --bench state_saves` (as root)");
        return ExitCode::SUCCESS;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("state_saves: needs root (network namespace, private bus)");
        return ExitCode::FAILURE;
    }
    let window = Duration::from_millis(
        std::env::var("MDEVREG_BENCH_WINDOW_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(3000),
    );
    common::prereq::run("state_saves", &[], move || async move {
        bench(window).await;
    });
    ExitCode::SUCCESS
}

async fn bench(window: Duration) {
    // The daemon also holds a realistic tree (the e2e benchmark's), on a
    // tmpfs as sysfs is (and quick to remove: not the disk under test).
    let tree = FakeSysfs::on_tmpfs();
    many_parents(&tree, 1000, 32, 1);
    let state_parent = std::env::var_os("MDEVREG_BENCH_STATE_PARENT").map(|dir| {
        tempfile::Builder::new()
            .prefix("mdevreg-state-")
            .tempdir_in(dir)
            .expect("state dir")
    });
    let state_dir = state_parent.as_ref().map(|dir| dir.path().to_path_buf());
    let mut setup = Setup::start(tree.root(), move |options| {
        options.verbose = false;
        if let Some(dir) = state_dir {
            options.state_dir = dir;
        }
    })
    .await;
    let state_dir = setup.options.state_dir.clone();
    println!(
        "state_saves: {} with --state-dir {} (on {}); load average {}",
        daemon_binary().display(),
        state_dir.display(),
        filesystem_of(&state_dir),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    for clients in CLIENTS {
        let cycles = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for client in 0..clients {
            let address = setup.bus.address().to_owned();
            let cycles = Arc::clone(&cycles);
            let stop = Arc::clone(&stop);
            tasks.push(tokio::spawn(async move {
                let connection = connect(&address).await;
                let name = format!("saves-{client}");
                let options = lifetime("persistent");
                let types = [good_type("t-1")];
                let mut worst = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    register_raw(&connection, &name, &options, &types)
                        .await
                        .expect("RegisterParent");
                    unregister(&connection, &name)
                        .await
                        .expect("UnregisterParent");
                    worst = worst.max(started.elapsed());
                    cycles.fetch_add(1, Ordering::Relaxed);
                }
                worst
            }));
        }
        let started = Instant::now();
        tokio::time::sleep(window).await;
        stop.store(true, Ordering::Relaxed);
        let mut worst = Duration::ZERO;
        for task in tasks {
            worst = worst.max(task.await.expect("client"));
        }
        let elapsed = started.elapsed().as_secs_f64();
        let done = cycles.load(Ordering::Relaxed);
        println!(
            "FIGURES state-saves: {clients} clients: {:.0} register+unregister cycles/s ({done} in {elapsed:.1} s), slowest cycle {:.1} ms",
            done as f64 / elapsed,
            worst.as_secs_f64() * 1000.0
        );
    }
    setup.daemon.assert_alive("after the state-saves benchmark");
}

/// The file system type holding `path` (from /proc/self/mounts).
fn filesystem_of(path: &std::path::Path) -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 2 && path.starts_with(fields[1]))
                .then(|| (fields[1].len(), format!("{} {}", fields[2], fields[0])))
        })
        .max()
        .map(|(_, fs)| fs)
        .unwrap_or_else(|| "?".to_owned())
}
