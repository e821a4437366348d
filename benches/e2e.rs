//! End-to-end benchmark of mdevreg against real components: mdevctl in a
//! private mount namespace, a private dbus-daemon, mdevregd in a private
//! network namespace with real kernel uevent injection. Writes `BENCHMARKS.md`
//! and `target/bench/results.json`.
//!
//! Run with `cargo bench --bench e2e` as root (needs `unshare`, `mount`,
//! `mdevctl`, `dbus-daemon`). Without `--bench` in its arguments (as under
//! `cargo test --all-targets`) it only prints how to run it. Set
//! `MDEVREG_BENCH_QUICK=1` for a small tree and few events (a smoke run of the
//! harness, numbers not comparable).
//!
//! The process re-executes itself under `unshare --mount --net` (argument
//! `__inside`); inside, the fake tree is bind-mounted over `/sys` so mdevctl
//! reads it, and every injected uevent stays in the private network namespace.

#[path = "e2e/bare.rs"]
mod bare;
#[path = "../tests/common/sysfs_fixture.rs"]
mod sysfs_fixture;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mdevreg::netlink::UeventEmitter;
use mdevreg::uevent::Uevent;
use serde_json::{json, Value};
use sysfs_fixture::{FakeSysfs, ParentSpec, TypeSpec};

const BUS_NAME: &str = "org.mdevreg.Registry1";
const ROOT_PATH: &str = "/org/mdevreg/Registry1";
const MDEVREG: &str = env!("CARGO_BIN_EXE_mdevreg");
const MDEVREGD: &str = env!("CARGO_BIN_EXE_mdevregd");
/// Another mdevregd binary to measure (a copy of an earlier build, for a
/// before/after comparison with the same harness); the built one when unset.
const DAEMON_OVERRIDE: &str = "MDEVREG_TEST_DAEMON";
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const INSIDE_ARG: &str = "__inside";
/// Receive buffer asked for the daemon's uevent socket in the flood.
const FLOOD_RECEIVE_BUFFER: usize = 64 * 1024;
/// A flood run that has not converged this long after its first injection
/// counts as not converged.
const FLOOD_DEADLINE_SECONDS: u64 = 300;

/// Sizes of one run.
#[derive(Clone, Copy, Debug)]
struct Scale {
    parents: u32,
    types: u32,
    /// Instances per type.
    instances: u32,
    scan_rounds: usize,
    query_rounds: usize,
    startup_rounds: usize,
    latency_events: usize,
    rate_rounds: usize,
    rate_window: Duration,
    flood_events: usize,
    flood_runs: usize,
    /// Latency events in a row for one side (mdevregd or the relay) before
    /// the other's turn.
    latency_block: usize,
    /// Parent counts of the scaling rows (× 1 type each).
    scaling_parents: &'static [u32],
    scaling_rounds: usize,
}

impl Scale {
    fn full() -> Scale {
        Scale {
            parents: 1000,
            types: 32,
            instances: 1,
            scan_rounds: 9,
            query_rounds: 9,
            startup_rounds: 5,
            latency_events: 1000,
            rate_rounds: 5,
            rate_window: Duration::from_secs(1),
            flood_events: 100_000,
            flood_runs: 3,
            latency_block: 50,
            scaling_parents: &[10_000, 30_000],
            scaling_rounds: 5,
        }
    }

    fn quick() -> Scale {
        Scale {
            parents: 50,
            types: 8,
            instances: 1,
            scan_rounds: 3,
            query_rounds: 3,
            startup_rounds: 2,
            latency_events: 50,
            rate_rounds: 2,
            rate_window: Duration::from_millis(300),
            flood_events: 5_000,
            flood_runs: 1,
            latency_block: 10,
            scaling_parents: &[500, 1_500],
            scaling_rounds: 2,
        }
    }
}

/// Whether `phase` is selected by `MDEVREG_BENCH_PHASES` (comma-separated:
/// scan, startup, query, rate, latency, flood, scaling; all when unset).
fn phase_enabled(phase: &str) -> bool {
    match std::env::var("MDEVREG_BENCH_PHASES") {
        Ok(list) => list.split(',').any(|item| item.trim() == phase),
        Err(_) => true,
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(INSIDE_ARG) {
        return inside(&args[2..]);
    }
    if !args.iter().any(|arg| arg == "--bench") {
        println!(
            "e2e: the end-to-end benchmark runs only under `cargo bench --bench e2e` (as root)"
        );
        return ExitCode::SUCCESS;
    }
    outside()
}

/// Checks the prerequisites and re-executes this program in private mount and
/// network namespaces.
fn outside() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("e2e: needs root (mount and network namespaces, uevent injection)");
        return ExitCode::FAILURE;
    }
    let mut missing = Vec::new();
    for tool in ["unshare", "mount", "mdevctl", "dbus-daemon"] {
        if which(tool).is_none() {
            missing.push(tool);
        }
    }
    if !missing.is_empty() {
        eprintln!(
            "e2e: missing {} (Debian: apt-get install util-linux mount mdevctl dbus-daemon)",
            missing.join(", ")
        );
        return ExitCode::FAILURE;
    }
    for binary in [MDEVREG, &daemon_binary()] {
        if !Path::new(binary).exists() {
            eprintln!("e2e: {binary} is missing; run `cargo build --release --bins`");
            return ExitCode::FAILURE;
        }
    }
    let Ok(me) = std::env::current_exe() else {
        eprintln!("e2e: cannot find my own executable");
        return ExitCode::FAILURE;
    };
    let status = Command::new("unshare")
        .args(["--mount", "--net", "--propagation", "private", "--"])
        .arg(me)
        .arg(INSIDE_ARG)
        .status();
    match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("e2e: benchmark failed ({status})");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("e2e: cannot run unshare: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The mdevregd binary measured: `MDEVREG_TEST_DAEMON` if set, else the
/// one cargo built.
fn daemon_binary() -> String {
    std::env::var(DAEMON_OVERRIDE).unwrap_or_else(|_| MDEVREGD.to_owned())
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Everything measured; `None` where a phase failed (the reason is in
/// `notes`).
#[derive(Default, Debug)]
struct Results {
    machine: String,
    scale: String,
    notes: Vec<String>,
    scan_mdevctl_ms: Vec<f64>,
    scan_mdevreg_ms: Vec<f64>,
    scan_outputs_equal: Option<bool>,
    query_mdevctl_ms: Vec<f64>,
    query_mdevreg_ms: Vec<f64>,
    query_outputs_equal: Option<bool>,
    startup_ms: Vec<f64>,
    rss_mib: Option<f64>,
    rss_mib_startup: Option<f64>,
    rss_mib_end: Option<f64>,
    latency_us: Vec<f64>,
    raw_netlink_us: Vec<f64>,
    latency_missed: usize,
    /// The bare relay: injection → its one signal.
    relay_us: Vec<f64>,
    relay_missed: usize,
    /// The contract relay: injection → its ParentRegistered, sent after
    /// the InterfacesAdded of the parent and its types.
    contract_us: Vec<f64>,
    contract_missed: usize,
    /// What mdevregd sends for one latency event (the contract relay's
    /// script).
    contract_script: Option<String>,
    /// The contract relay's messages have the members, signatures and body
    /// sizes of mdevregd's.
    contract_same_shape: Option<bool>,
    /// CPU time over the latency blocks of each side.
    latency_cpu: LatencyCpu,
    register_cycles_per_s: Vec<f64>,
    register_cycles_per_s_disk: Vec<f64>,
    echo_calls_per_s: Vec<f64>,
    /// The bare responder's register + unregister cycles.
    bare_cycles_per_s: Vec<f64>,
    /// What mdevregd sends per cycle (the bare responder's script).
    bare_script: Option<String>,
    /// The bare responder's messages have the members, signatures and body
    /// sizes of mdevregd's.
    bare_same_shape: Option<bool>,
    /// One row per parent count of the scaling phase.
    scaling: Vec<ScalingRow>,
    /// CPU time per register cycle (mdevregd, dbus-daemon).
    cycle_cpu: Option<CycleCpu>,
    flood_runs: Vec<FloodRun>,
    flood_receive_buffer_flag: bool,
    latency_block: usize,
}

/// Startup and full rescans of an N × 1 tree against the direct scan.
#[derive(Debug, Default)]
struct ScalingRow {
    parents: u32,
    build_seconds: f64,
    direct_scan_ms: Vec<f64>,
    startup_ms: Vec<f64>,
    rescan_ms: Vec<f64>,
    rss_mib: Option<f64>,
}

#[derive(Debug)]
struct FloodRun {
    events: usize,
    inject_seconds: f64,
    converged: bool,
    seconds: f64,
    /// mdevregd counters at the end of the run.
    stats: String,
}

fn inside(_args: &[String]) -> ExitCode {
    let scale = if std::env::var_os("MDEVREG_BENCH_QUICK").is_some() {
        Scale::quick()
    } else {
        Scale::full()
    };
    let mut results = Results {
        machine: machine_line(),
        scale: format!(
            "{} parents × {} types, {} instance(s) per type",
            scale.parents, scale.types, scale.instances
        ),
        latency_block: scale.latency_block,
        ..Results::default()
    };
    eprintln!("e2e: {}", results.machine);
    eprintln!("e2e: building the tree ({})", results.scale);
    let started = Instant::now();
    let mut tree_mount = None;
    let tree = match std::env::var_os("MDEVREG_BENCH_TREE_DIR") {
        // Profiling aid: a kept tree, built once and reused as it is.
        Some(dir) => {
            let reuse = Path::new(&dir).join("class/mdev_bus").is_dir();
            let tree = FakeSysfs::at(PathBuf::from(dir));
            if !reuse {
                sysfs_fixture::many_parents(&tree, scale.parents, scale.types, scale.instances);
            }
            tree
        }
        None => {
            // On tmpfs, as sysfs lives in memory too (and far quicker to build).
            let tree_dir =
                std::env::temp_dir().join(format!("mdevreg-bench-tree-{}", std::process::id()));
            if let Err(err) = std::fs::create_dir_all(&tree_dir) {
                eprintln!("e2e: cannot create {}: {err}", tree_dir.display());
                return ExitCode::FAILURE;
            }
            if let Err(err) = run_checked(
                "mount",
                &["-t", "tmpfs", "mdevreg-bench-tree", path_str(&tree_dir)],
            ) {
                eprintln!("e2e: cannot mount a tmpfs for the tree: {err}");
                return ExitCode::FAILURE;
            }
            let tree = FakeSysfs::at(&tree_dir);
            tree_mount = Some(tree_dir);
            sysfs_fixture::many_parents(&tree, scale.parents, scale.types, 0);
            add_instances(&tree, scale.parents, scale.types, scale.instances);
            tree
        }
    };
    eprintln!(
        "e2e: tree ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Err(err) = run_checked("mount", &["--bind", path_str(tree.root()), "/sys"]) {
        eprintln!("e2e: cannot bind-mount the tree over /sys: {err}");
        return ExitCode::FAILURE;
    }
    let work = match tempfile::Builder::new().prefix("mdevreg-bench-").tempdir() {
        Ok(work) => work,
        Err(err) => {
            eprintln!("e2e: cannot create a work directory: {err}");
            return ExitCode::FAILURE;
        }
    };

    if phase_enabled("scan") {
        scan_phase(&tree, scale, &mut results);
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("e2e: cannot start tokio: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(err) = runtime.block_on(daemon_phases(&tree, work.path(), scale, &mut results)) {
        eprintln!("e2e: daemon phases stopped: {err}");
        results
            .notes
            .push(format!("daemon phases stopped early: {err}"));
    }
    drop(runtime);
    let _ = run_checked("umount", &["/sys"]);
    if let Some(dir) = tree_mount {
        drop(tree);
        let _ = run_checked("umount", &[path_str(&dir)]);
        let _ = std::fs::remove_dir(&dir);
    }

    match write_reports(&results) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("e2e: cannot write the reports: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Adds `per_type` instances to every type of the `many_parents` tree, laid
/// out exactly as `FakeSysfs::add_instance` does, numbering IOMMU groups with
/// a counter (`add_instance` counts `kernel/iommu_groups` each time, which is
/// quadratic for 32,000 instances).
fn add_instances(tree: &FakeSysfs, parents: u32, types: u32, per_type: u32) {
    let mut group = 0u64;
    let mut next_uuid = 0x1_0000u64;
    for index in 0..parents {
        let parent_rel = format!("devices/pci0000:00/{}", pci_name(index));
        for type_index in 0..types {
            let type_id = format!("nvidia-{}", 100 + type_index);
            for _ in 0..per_type {
                let uuid = sysfs_fixture::uuid_for(next_uuid);
                next_uuid += 1;
                let instance_rel = format!("{parent_rel}/{uuid}");
                tree.link(
                    &format!("{instance_rel}/mdev_type"),
                    &format!("{parent_rel}/mdev_supported_types/{type_id}"),
                );
                tree.write_file(format!("{instance_rel}/remove"), "");
                tree.write_file(
                    format!("{instance_rel}/uevent"),
                    format!("MDEV_TYPE={type_id}\n"),
                );
                tree.link(&format!("{instance_rel}/subsystem"), "bus/mdev");
                tree.link(
                    &format!("{instance_rel}/driver"),
                    "bus/mdev/drivers/vfio_mdev",
                );
                tree.write_file(format!("kernel/iommu_groups/{group}/type"), "DMA\n");
                tree.link(
                    &format!("{instance_rel}/iommu_group"),
                    &format!("kernel/iommu_groups/{group}"),
                );
                group += 1;
                tree.link(
                    &format!("{parent_rel}/mdev_supported_types/{type_id}/devices/{uuid}"),
                    &instance_rel,
                );
                tree.link(&format!("bus/mdev/devices/{uuid}"), &instance_rel);
            }
        }
    }
}

// ----- phase 1: direct scan, mdevctl vs mdevreg --sysfs-root -----

fn scan_phase(tree: &FakeSysfs, scale: Scale, results: &mut Results) {
    eprintln!("e2e: scan: mdevctl types --dumpjson vs mdevreg types --json --sysfs-root");
    let root = path_str(tree.root()).to_owned();
    let mdevctl = || timed_output("mdevctl", &["types", "--dumpjson"]);
    let direct = || timed_output(MDEVREG, &["types", "--json", "--sysfs-root", &root]);
    // Warm-up round, also the output comparison.
    match (mdevctl(), direct()) {
        (Ok((_, a)), Ok((_, b))) => results.scan_outputs_equal = Some(same_json(&a, &b)),
        (Err(err), _) | (_, Err(err)) => {
            results.notes.push(format!("scan phase: {err}"));
            return;
        }
    }
    for round in 0..scale.scan_rounds {
        // Alternate which one goes first.
        let order: [bool; 2] = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_mdevctl in order {
            let sample = if is_mdevctl { mdevctl() } else { direct() };
            match sample {
                Ok((elapsed, _)) if is_mdevctl => results.scan_mdevctl_ms.push(ms(elapsed)),
                Ok((elapsed, _)) => results.scan_mdevreg_ms.push(ms(elapsed)),
                Err(err) => {
                    results.notes.push(format!("scan phase: {err}"));
                    return;
                }
            }
        }
    }
    eprintln!(
        "e2e: scan medians: mdevctl {:.1} ms, mdevreg {:.1} ms",
        median(&results.scan_mdevctl_ms),
        median(&results.scan_mdevreg_ms)
    );
}

// ----- phases 2..: the daemon -----

/// A private dbus-daemon on a path socket; killed on drop.
struct PrivateBus {
    child: Child,
    address: String,
}

impl PrivateBus {
    fn start(dir: &Path) -> Result<PrivateBus, String> {
        let socket = dir.join("bus");
        let config = dir.join("bus.conf");
        let text = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
            socket.display()
        );
        std::fs::write(&config, text).map_err(|err| format!("write bus config: {err}"))?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|err| format!("start dbus-daemon: {err}"))?;
        let stdout = child.stdout.take().ok_or("dbus-daemon without stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|err| format!("read the bus address: {err}"))?;
        let address = line.trim().to_owned();
        if address.is_empty() {
            let _ = child.kill();
            return Err("dbus-daemon printed no address".into());
        }
        Ok(PrivateBus { child, address })
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running mdevregd; SIGTERM and wait on drop.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

#[derive(Clone)]
struct DaemonSetup<'a> {
    tree: &'a FakeSysfs,
    bus_address: String,
    state_dir: PathBuf,
    log: PathBuf,
    receive_buffer_flag: bool,
    /// The private dbus-daemon (its CPU time is read around the register
    /// windows).
    bus_pid: u32,
}

impl DaemonSetup<'_> {
    fn spawn(&self, receive_buffer: Option<usize>) -> Result<Daemon, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|err| format!("open daemon log: {err}"))?;
        // Profiling aid: `MDEVREG_BENCH_DAEMON_WRAPPER="perf record -g -o F --"`.
        // `{n}` in it becomes the number of this start.
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let start_number = STARTS.fetch_add(1, Ordering::Relaxed);
        let wrapper = std::env::var("MDEVREG_BENCH_DAEMON_WRAPPER")
            .unwrap_or_default()
            .replace("{n}", &start_number.to_string());
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(words).arg(daemon_binary());
                command
            }
            None => Command::new(daemon_binary()),
        };
        command
            .args(["--bus", &self.bus_address, "--sysfs-root"])
            .arg(self.tree.root())
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--runtime-dir")
            .arg(&self.state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let (Some(bytes), true) = (receive_buffer, self.receive_buffer_flag) {
            command.arg(format!("--receive-buffer={bytes}"));
        }
        let child = command
            .spawn()
            .map_err(|err| format!("start mdevregd: {err}"))?;
        Ok(Daemon { child })
    }

    /// Starts the daemon and waits until it owns the bus name; returns the
    /// time from spawn to NameOwnerChanged.
    async fn start_and_wait(
        &self,
        bus: &zbus::fdo::DBusProxy<'_>,
        receive_buffer: Option<usize>,
    ) -> Result<(Daemon, Duration), String> {
        let mut owner_changes = bus
            .receive_name_owner_changed_with_args(&[(0, BUS_NAME)])
            .await
            .map_err(|err| format!("subscribe NameOwnerChanged: {err}"))?;
        let started = Instant::now();
        let mut daemon = self.spawn(receive_buffer)?;
        let deadline = Duration::from_secs(120);
        loop {
            let next = tokio::time::timeout(Duration::from_millis(500), owner_changes.next()).await;
            match next {
                Ok(Some(signal)) => {
                    if let Ok(args) = signal.args() {
                        if args.new_owner().is_some() {
                            return Ok((daemon, started.elapsed()));
                        }
                    }
                }
                Ok(None) => return Err("NameOwnerChanged stream ended".into()),
                Err(_) => {
                    if let Ok(Some(status)) = daemon.child.try_wait() {
                        return Err(format!(
                            "mdevregd exited ({status}) before taking the name; log: {}",
                            self.log.display()
                        ));
                    }
                    if started.elapsed() > deadline {
                        return Err("mdevregd did not take the name within 120 s".into());
                    }
                }
            }
        }
    }

    /// Stops the daemon and waits until its name is gone from the bus.
    async fn stop_and_wait(&self, bus: &zbus::fdo::DBusProxy<'_>, daemon: Daemon) {
        daemon.stop();
        for _ in 0..1000 {
            match bus
                .name_has_owner(BUS_NAME.try_into().expect("valid name"))
                .await
            {
                Ok(false) | Err(_) => return,
                Ok(true) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }
}

async fn daemon_phases(
    tree: &FakeSysfs,
    work: &Path,
    scale: Scale,
    results: &mut Results,
) -> Result<(), String> {
    let bus = PrivateBus::start(work)?;
    eprintln!("e2e: private bus at {}", bus.address);
    let connection = zbus::connection::Builder::address(bus.address.as_str())
        .build()
        .await
        .map_err(|err| format!("connect to the private bus: {err}"))?;
    let dbus = zbus::fdo::DBusProxy::new(&connection)
        .await
        .map_err(|err| format!("DBus proxy: {err}"))?;
    // The state directory on tmpfs, as /run/mdevreg is (owner-bound
    // registrations live there).
    let state_dir = work.join("state");
    std::fs::create_dir_all(&state_dir).map_err(|err| format!("state dir: {err}"))?;
    run_checked(
        "mount",
        &["-t", "tmpfs", "mdevreg-bench-state", path_str(&state_dir)],
    )?;
    let receive_buffer_flag = daemon_has_flag("--receive-buffer");
    results.flood_receive_buffer_flag = receive_buffer_flag;
    let setup = DaemonSetup {
        tree,
        bus_address: bus.address.clone(),
        state_dir,
        log: work.join("mdevregd.log"),
        receive_buffer_flag,
        bus_pid: bus.child.id(),
    };

    // Startup: spawn → name acquired, several times.
    let startup_rounds = if phase_enabled("startup") {
        scale.startup_rounds
    } else {
        0
    };
    eprintln!("e2e: startup ({startup_rounds} rounds)");
    for _ in 0..startup_rounds {
        let (daemon, elapsed) = setup.start_and_wait(&dbus, None).await?;
        results.startup_ms.push(ms(elapsed));
        setup.stop_and_wait(&dbus, daemon).await;
    }
    eprintln!("e2e: startup median {:.1} ms", median(&results.startup_ms));

    let (daemon, _) = setup.start_and_wait(&dbus, None).await?;
    results.rss_mib_startup = vm_hwm_mib(daemon.pid());
    let result = measure_with_daemon(&setup, &daemon, &connection, scale, results).await;
    results.rss_mib_end = vm_hwm_mib(daemon.pid());
    setup.stop_and_wait(&dbus, daemon).await;
    result?;

    if phase_enabled("rate") {
        // The same cycles with the state directory on disk (fsync costs).
        let disk_setup = DaemonSetup {
            state_dir: work.join("state-disk"),
            ..setup.clone()
        };
        std::fs::create_dir_all(&disk_setup.state_dir)
            .map_err(|err| format!("state dir: {err}"))?;
        let (daemon, _) = disk_setup.start_and_wait(&dbus, None).await?;
        let rates = rate_rounds(&connection, false, None, 1, scale.rate_window).await;
        setup.stop_and_wait(&dbus, daemon).await;
        match rates {
            Ok(rates) => results.register_cycles_per_s_disk = rates.register,
            Err(err) => results
                .notes
                .push(format!("register cycles, state on disk: {err}")),
        }
    }
    if phase_enabled("flood") {
        flood_phase(&setup, &dbus, scale, results).await;
    }
    if phase_enabled("scaling") {
        for &parents in scale.scaling_parents {
            match scaling_row(&setup, work, &dbus, &connection, scale, parents).await {
                Ok(row) => results.scaling.push(row),
                Err(err) => results
                    .notes
                    .push(format!("scaling, {parents} parents: {err}")),
            }
        }
    }
    drop(bus);
    // So that the work directory can be removed.
    let _ = run_checked("umount", &[path_str(&setup.state_dir)]);
    Ok(())
}

/// `mdevregd --help` mentions `flag`.
fn daemon_has_flag(flag: &str) -> bool {
    Command::new(daemon_binary())
        .arg("--help")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).contains(flag))
        .unwrap_or(false)
}

async fn measure_with_daemon(
    setup: &DaemonSetup<'_>,
    daemon: &Daemon,
    connection: &zbus::Connection,
    scale: Scale,
    results: &mut Results,
) -> Result<(), String> {
    if phase_enabled("query") {
        query_phase(&setup.bus_address, scale, results);
    }
    results.rss_mib = vm_hwm_mib(daemon.pid());
    eprintln!("e2e: daemon VmHWM {:?} MiB", results.rss_mib);
    let bare = if phase_enabled("rate") || phase_enabled("latency") {
        match start_bare(setup, connection, results).await {
            Ok(bare) => Some(bare),
            Err(err) => {
                results.notes.push(format!("bare responder: {err}"));
                None
            }
        }
    } else {
        None
    };
    if phase_enabled("rate") {
        let cpu = CpuWatch {
            daemon: daemon.pid(),
            bus: setup.bus_pid,
        };
        if let Err(err) = rate_phase(connection, bare.as_ref(), &cpu, scale, results).await {
            results.notes.push(format!("register/echo phase: {err}"));
        }
    }
    if phase_enabled("latency") {
        let cpu = CpuWatch {
            daemon: daemon.pid(),
            bus: setup.bus_pid,
        };
        if let Err(err) =
            latency_phase(setup.tree, connection, bare.as_ref(), &cpu, scale, results).await
        {
            results.notes.push(format!("latency phase: {err}"));
        }
    }
    drop(bare);
    Ok(())
}

/// Records what mdevregd sends for one register + unregister cycle, starts
/// the bare responder with it, and checks that a cycle of the responder
/// sends the same shapes.
async fn start_bare(
    setup: &DaemonSetup<'_>,
    connection: &zbus::Connection,
    results: &mut Results,
) -> Result<bare::Bare, String> {
    let owner = daemon_unique_name(connection).await?;
    let args = bare::RegisterArgs::bench();
    let registry = registry_proxy(connection, BUS_NAME, "registry").await?;
    let script = bare::capture(connection, &owner, &registry, &args).await?;
    eprintln!("e2e: mdevregd sends per cycle: {}", script.describe());
    results.bare_script = Some(script.describe());
    let (shape, reply) = (script.shape(), script.register_reply.clone());
    let started = bare::Bare::start(&setup.bus_address, script)?;
    let bare_proxy = registry_proxy(connection, bare::BARE_NAME, "bare").await?;
    let copy = bare::capture(connection, &started.unique_name, &bare_proxy, &args).await?;
    let same = copy.shape() == shape && copy.register_reply == reply;
    if !same {
        results.notes.push(format!(
            "the bare responder's messages differ from mdevregd's: {}",
            copy.describe()
        ));
    }
    results.bare_same_shape = Some(same);
    Ok(started)
}

// ----- query: mdevctl vs mdevreg types --json from the daemon -----// ----- query: mdevctl vs mdevreg types --json from the daemon -----

fn query_phase(bus_address: &str, scale: Scale, results: &mut Results) {
    eprintln!("e2e: query: mdevctl types --dumpjson vs mdevreg --bus … types --json");
    let mdevctl = || timed_output("mdevctl", &["types", "--dumpjson"]);
    let query = || timed_output(MDEVREG, &["--bus", bus_address, "types", "--json"]);
    match (mdevctl(), query()) {
        (Ok((_, a)), Ok((_, b))) => results.query_outputs_equal = Some(same_json(&a, &b)),
        (Err(err), _) | (_, Err(err)) => {
            results.notes.push(format!("query phase: {err}"));
            return;
        }
    }
    for round in 0..scale.query_rounds {
        let order: [bool; 2] = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_mdevctl in order {
            let sample = if is_mdevctl { mdevctl() } else { query() };
            match sample {
                Ok((elapsed, _)) if is_mdevctl => results.query_mdevctl_ms.push(ms(elapsed)),
                Ok((elapsed, _)) => results.query_mdevreg_ms.push(ms(elapsed)),
                Err(err) => {
                    results.notes.push(format!("query phase: {err}"));
                    return;
                }
            }
        }
    }
    eprintln!(
        "e2e: query medians: mdevctl {:.1} ms, mdevreg {:.2} ms",
        median(&results.query_mdevctl_ms),
        median(&results.query_mdevreg_ms)
    );
}

// ----- register cycles: mdevregd vs the bare responder vs echo calls -----

async fn rate_phase(
    connection: &zbus::Connection,
    bare: Option<&bare::Bare>,
    cpu: &CpuWatch,
    scale: Scale,
    results: &mut Results,
) -> Result<(), String> {
    eprintln!("e2e: RegisterParent+UnregisterParent cycles: mdevregd vs bare responder; Peer.Ping");
    let rates = rate_rounds(
        connection,
        bare.is_some(),
        Some(cpu),
        scale.rate_rounds,
        scale.rate_window,
    )
    .await?;
    results.register_cycles_per_s = rates.register;
    results.bare_cycles_per_s = rates.bare;
    results.echo_calls_per_s = rates.echo;
    results.cycle_cpu = Some(rates.cpu);
    eprintln!(
        "e2e: register cycles {:.0}/s, bare responder {:.0}/s, echo calls {:.0}/s",
        median(&results.register_cycles_per_s),
        median(&results.bare_cycles_per_s),
        median(&results.echo_calls_per_s)
    );
    Ok(())
}

/// Per-window rates of [`rate_rounds`].
#[derive(Default)]
struct Rates {
    register: Vec<f64>,
    bare: Vec<f64>,
    echo: Vec<f64>,
    cpu: CycleCpu,
}

/// Processes whose CPU time is read around the register windows.
struct CpuWatch {
    daemon: u32,
    bus: u32,
}

/// CPU time spent over the register windows, and the cycles made in them.
#[derive(Clone, Copy, Debug, Default)]
struct CycleCpu {
    daemon_cycles: u64,
    daemon_cpu_s: f64,
    bus_cpu_s_daemon_windows: f64,
    bare_cycles: u64,
    bus_cpu_s_bare_windows: f64,
}

impl CycleCpu {
    /// CPU microseconds per cycle: mdevregd's, the bus's for mdevregd's
    /// cycles, the bus's for the bare responder's.
    fn per_cycle_us(&self) -> (f64, f64, f64) {
        let per = |seconds: f64, cycles: u64| ratio(seconds * 1e6, cycles as f64);
        (
            per(self.daemon_cpu_s, self.daemon_cycles),
            per(self.bus_cpu_s_daemon_windows, self.daemon_cycles),
            per(self.bus_cpu_s_bare_windows, self.bare_cycles),
        )
    }
}

/// User + system CPU seconds of process `pid` so far (all its threads).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces), from field 3.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<f64>().ok());
    // utime and stime are fields 14 and 15: indexes 11 and 12 here.
    match (ticks(11), ticks(12)) {
        // In USER_HZ ticks, 100 per second on Linux (fixed by its ABI).
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

/// A proxy for the registry object of `destination` (mdevregd's name or
/// the bare responder's); `what` names it in the error.
/// The unique bus name that owns [`BUS_NAME`] (mdevregd's connection).
async fn daemon_unique_name(connection: &zbus::Connection) -> Result<String, String> {
    let dbus = zbus::fdo::DBusProxy::new(connection)
        .await
        .map_err(|err| format!("DBus proxy: {err}"))?;
    Ok(dbus
        .get_name_owner(BUS_NAME.try_into().expect("valid name"))
        .await
        .map_err(|err| format!("owner of {BUS_NAME}: {err}"))?
        .to_string())
}

async fn registry_proxy(
    connection: &zbus::Connection,
    destination: &'static str,
    what: &str,
) -> Result<zbus::Proxy<'static>, String> {
    zbus::Proxy::new(connection, destination, ROOT_PATH, "org.mdevreg.Registry1")
        .await
        .map_err(|err| format!("{what} proxy: {err}"))
}

/// `rounds` rounds of a window of register/unregister cycles on mdevregd,
/// one on the bare responder (when `with_bare`), and one of Peer.Ping
/// calls to mdevregd; which goes first alternates by round.
async fn rate_rounds(
    connection: &zbus::Connection,
    with_bare: bool,
    cpu: Option<&CpuWatch>,
    rounds: usize,
    window: Duration,
) -> Result<Rates, String> {
    let registry = registry_proxy(connection, BUS_NAME, "registry").await?;
    let bare_proxy = registry_proxy(connection, bare::BARE_NAME, "bare").await?;
    let peer = zbus::fdo::PeerProxy::builder(connection)
        .destination(BUS_NAME)
        .path(ROOT_PATH)
        .build()
        .await
        .map_err(|err| format!("peer proxy: {err}"))?;
    let args = bare::RegisterArgs::bench();
    let mut rates = Rates::default();
    #[derive(Clone, Copy)]
    enum Side {
        Daemon,
        Bare,
        Echo,
    }
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Side::Daemon, Side::Bare, Side::Echo]
        } else {
            [Side::Echo, Side::Bare, Side::Daemon]
        };
        for side in order {
            // Profiling aid: `MDEVREG_BENCH_RATE_SIDES=daemon` runs only
            // mdevregd's windows (a profile of the register path alone).
            if let Ok(sides) = std::env::var("MDEVREG_BENCH_RATE_SIDES") {
                let name = match side {
                    Side::Daemon => "daemon",
                    Side::Bare => "bare",
                    Side::Echo => "echo",
                };
                if !sides.split(',').any(|item| item.trim() == name) {
                    continue;
                }
            }
            let before = cpu.map(|cpu| (cpu_seconds(cpu.daemon), cpu_seconds(cpu.bus)));
            match side {
                Side::Daemon => {
                    let (rate, cycles) = register_cycles(&registry, &args, window).await?;
                    rates.register.push(rate);
                    if let (Some(cpu), Some((daemon, bus))) = (cpu, before) {
                        rates.cpu.daemon_cycles += cycles;
                        rates.cpu.daemon_cpu_s += cpu_seconds(cpu.daemon) - daemon;
                        rates.cpu.bus_cpu_s_daemon_windows += cpu_seconds(cpu.bus) - bus;
                    }
                }
                Side::Bare if with_bare => {
                    let (rate, cycles) = register_cycles(&bare_proxy, &args, window).await?;
                    rates.bare.push(rate);
                    if let (Some(cpu), Some((_, bus))) = (cpu, before) {
                        rates.cpu.bare_cycles += cycles;
                        rates.cpu.bus_cpu_s_bare_windows += cpu_seconds(cpu.bus) - bus;
                    }
                }
                Side::Bare => {}
                Side::Echo => {
                    let started = Instant::now();
                    let mut calls = 0u64;
                    while started.elapsed() < window {
                        peer.ping()
                            .await
                            .map_err(|err| format!("Peer.Ping: {err}"))?;
                        calls += 1;
                    }
                    rates
                        .echo
                        .push(calls as f64 / started.elapsed().as_secs_f64());
                }
            }
        }
    }
    Ok(rates)
}

/// Sequential RegisterParent + UnregisterParent cycles on `registry` for
/// `window`: cycles per second, and cycles.
async fn register_cycles(
    registry: &zbus::Proxy<'_>,
    args: &bare::RegisterArgs<'_>,
    window: Duration,
) -> Result<(f64, u64), String> {
    let started = Instant::now();
    let mut cycles = 0u64;
    while started.elapsed() < window {
        let _: zbus::OwnedObjectPath = registry
            .call("RegisterParent", &(args.name, &args.options, &args.types))
            .await
            .map_err(|err| format!("RegisterParent: {err}"))?;
        let () = registry
            .call("UnregisterParent", &(args.name,))
            .await
            .map_err(|err| format!("UnregisterParent: {err}"))?;
        cycles += 1;
    }
    Ok((cycles as f64 / started.elapsed().as_secs_f64(), cycles))
}

/// mdevregd's `Stats` property (counters: uevents, rescans, gaps, ...).
async fn daemon_stats(connection: &zbus::Connection) -> Result<BTreeMap<String, u64>, String> {
    let registry: zbus::Proxy<'_> = zbus::proxy::Builder::new(connection)
        .destination(BUS_NAME)
        .path(ROOT_PATH)
        .interface("org.mdevreg.Registry1")
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(|err| format!("registry proxy: {err}"))?;
    let stats: HashMap<String, u64> = registry
        .get_property("Stats")
        .await
        .map_err(|err| format!("Stats: {err}"))?;
    Ok(stats.into_iter().collect())
}

/// The counters worth reporting (non-zero ones about uevents and rescans).
fn stats_line(stats: &BTreeMap<String, u64>) -> String {
    stats
        .iter()
        .filter(|(key, value)| **value > 0 && !key.starts_with("parents"))
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ----- latency: injected MDEV_STATE=registered → ParentRegistered -----

/// A plain group-1 listener on its own thread, timestamping each datagram by
/// the devpath in its header.
struct RawListener {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    arrivals: std_mpsc::Receiver<(String, Instant)>,
}

impl RawListener {
    fn start() -> Result<RawListener, String> {
        use nix::sys::socket::{
            bind, setsockopt, socket, sockopt, AddressFamily, NetlinkAddr, SockFlag, SockProtocol,
            SockType,
        };
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .map_err(|err| format!("raw listener socket: {err}"))?;
        let _ = setsockopt(&fd, sockopt::RcvBufForce, &(16 * 1024 * 1024));
        setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(0, 100_000),
        )
        .map_err(|err| format!("raw listener timeout: {err}"))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 1))
            .map_err(|err| format!("raw listener bind: {err}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (sender, arrivals) = std_mpsc::channel();
        let stop_flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buffer = vec![0u8; 8192];
            while !stop_flag.load(Ordering::Relaxed) {
                match nix::sys::socket::recv(
                    fd.as_raw_fd(),
                    &mut buffer,
                    nix::sys::socket::MsgFlags::empty(),
                ) {
                    Ok(len) => {
                        let now = Instant::now();
                        let header_end = buffer[..len].iter().position(|&b| b == 0).unwrap_or(len);
                        let header = String::from_utf8_lossy(&buffer[..header_end]);
                        if let Some((_, devpath)) = header.split_once('@') {
                            let _ = sender.send((devpath.to_owned(), now));
                        }
                    }
                    Err(_) => continue,
                }
            }
        });
        Ok(RawListener {
            stop,
            thread: Some(thread),
            arrivals,
        })
    }
}

impl Drop for RawListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Forwards `(name, arrival)` of ParentRegistered / ParentUnregistered
/// sent by `sender` (mdevregd's or the bare responder's name).
async fn watch_signal(
    connection: &zbus::Connection,
    sender: &'static str,
    signal: &'static str,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>, String> {
    let registry = zbus::Proxy::new(connection, sender, ROOT_PATH, "org.mdevreg.Registry1")
        .await
        .map_err(|err| format!("registry proxy: {err}"))?;
    let mut stream = registry
        .receive_signal(signal)
        .await
        .map_err(|err| format!("subscribe {signal}: {err}"))?;
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _registry = registry;
        while let Some(message) = stream.next().await {
            let now = Instant::now();
            let body = message.body();
            if let Ok((_, name, _, _)) =
                body.deserialize::<(zbus::ObjectPath<'_>, String, String, u64)>()
            {
                if sender.send((name, now)).is_err() {
                    return;
                }
            }
        }
    });
    Ok(receiver)
}

/// Waits for `name` on `receiver`, skipping other names.
async fn wait_for_name(
    receiver: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>,
    name: &str,
    timeout: Duration,
) -> Option<Instant> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Some((got, at))) if got == name => return Some(at),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Latency events of the relay use `latency_parent(RELAY_INDEX_OFFSET + i)`.
const RELAY_INDEX_OFFSET: usize = 0x8000;

/// A parent outside the big tree (PCI domain 0001) for latency event `index`.
fn latency_parent(index: usize) -> ParentSpec {
    let pci_name = format!(
        "0001:{:02x}:{:02x}.{}",
        (index >> 8) & 0xff,
        (index >> 3) & 0x1f,
        index & 7
    );
    let mut spec = ParentSpec::pci(&pci_name, "nvidia");
    for type_index in 0..4 {
        spec = spec.with_type(
            TypeSpec::new(&format!("nvidia-{}", 100 + type_index), "vfio-pci", 16)
                .name(&format!("GRID T4-{type_index}Q")),
        );
    }
    spec
}

fn state_event(spec: &ParentSpec, state: &str) -> Uevent {
    Uevent::new("change", spec.devpath.as_str())
        .with("SUBSYSTEM", "pci")
        .with("DRIVER", "nvidia")
        .with("MDEV_STATE", state)
}

/// Injects the "registered" change event of `spec`, notes when in
/// `injected` and waits for its name on `receiver`: the latency in µs, or
/// `None` if it did not come within `timeout`.
async fn inject_and_wait(
    emitter: &mut UeventEmitter,
    spec: &ParentSpec,
    receiver: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>,
    injected: &mut Vec<(String, Instant)>,
    timeout: Duration,
) -> Result<Option<f64>, String> {
    let event = state_event(spec, "registered");
    let sent = Instant::now();
    emitter
        .inject(&event)
        .map_err(|err| format!("inject: {err}"))?;
    injected.push((spec.devpath.clone(), sent));
    Ok(wait_for_name(receiver, spec.name(), timeout)
        .await
        .map(|at| us(at - sent)))
}

/// Latency events of the contract relay use
/// `latency_parent(CONTRACT_INDEX_OFFSET + i)`.
const CONTRACT_INDEX_OFFSET: usize = 0x4000;
/// The parent whose registration is recorded for the contract relay, and
/// the device of the contract relay's recorded event.
const RECORD_INDEX: usize = 0xc000;

/// The sides of the latency phase, taking turns by block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LatencySide {
    Daemon,
    Relay,
    Contract,
}

/// CPU time (from the scheduler, ns resolution) over each side's latency
/// blocks.
#[derive(Clone, Copy, Debug, Default)]
struct LatencyCpu {
    daemon_events: u64,
    /// mdevregd's main thread (its event loop, where a uevent is handled)
    /// over its own blocks (each event: the registration and the
    /// unregistration of a parent). Rescans for SEQNUM gaps (other
    /// namespaces' uevents) run on other threads and are not counted.
    daemon_cpu_s: f64,
    bus_cpu_s_daemon: f64,
    relay_events: u64,
    bus_cpu_s_relay: f64,
    contract_events: u64,
    bus_cpu_s_contract: f64,
}

impl LatencyCpu {
    /// CPU microseconds per latency event: mdevregd's, and the bus's for
    /// mdevregd's, the relay's and the contract relay's events.
    fn per_event_us(&self) -> (f64, f64, f64, f64) {
        let per = |seconds: f64, events: u64| ratio(seconds * 1e6, events as f64);
        (
            per(self.daemon_cpu_s, self.daemon_events),
            per(self.bus_cpu_s_daemon, self.daemon_events),
            per(self.bus_cpu_s_relay, self.relay_events),
            per(self.bus_cpu_s_contract, self.contract_events),
        )
    }
}

/// Run time of the main thread of `pid` so far, in seconds, from
/// `/proc/PID/task/PID/schedstat` (nanoseconds).
fn run_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/schedstat"))
        .ok()
        .and_then(|text| {
            text.split_whitespace()
                .next()
                .and_then(|field| field.parse::<u64>().ok())
        })
        .map_or(f64::NAN, |ns| ns as f64 / 1e9)
}

/// Records the signals mdevregd (unique name `owner`) sends for the
/// `registered` uevent of a new kernel parent, and checks that the
/// contract relay sends the same shapes for one of its events.
async fn record_contract(
    tree: &FakeSysfs,
    connection: &zbus::Connection,
    bare: &bare::Bare,
    emitter: &mut UeventEmitter,
    results: &mut Results,
) -> Result<(), String> {
    let owner = daemon_unique_name(connection).await?;
    let quiet = Duration::from_millis(300);
    let mut stream = bare::signals_of(connection, &owner).await?;
    let _ = bare::record(&mut stream, Duration::from_millis(50)).await?;
    let spec = latency_parent(RECORD_INDEX);
    tree.add_parent(&spec);
    emitter
        .inject(&state_event(&spec, "registered"))
        .map_err(|err| format!("inject: {err}"))?;
    let signals = bare::record(&mut stream, quiet).await?;
    tree.remove_parent(spec.name());
    emitter
        .inject(&state_event(&spec, "unregistered"))
        .map_err(|err| format!("inject: {err}"))?;
    let _ = bare::record(&mut stream, quiet).await?;
    if !signals
        .iter()
        .any(|signal| signal.member == "ParentRegistered")
    {
        return Err(format!(
            "mdevregd sent no ParentRegistered for a new kernel parent (sent: {})",
            bare::describe_all(&signals)
        ));
    }
    let shape = bare::shape_of(&signals);
    eprintln!(
        "e2e: mdevregd sends per kernel parent registration: {}",
        bare::describe_all(&signals)
    );
    results.contract_script = Some(bare::describe_all(&signals));
    bare.set_contract(bare::EventScript { signals });
    // One event of the contract relay, recorded the same way (a device of
    // the same name length: the same sizes).
    let mut copy_stream = bare::signals_of(connection, &bare.unique_name).await?;
    let _ = bare::record(&mut copy_stream, Duration::from_millis(50)).await?;
    bare.set_relay(bare::RelayMode::Contract);
    let copy_spec = latency_parent(RECORD_INDEX + 1);
    emitter
        .inject(&state_event(&copy_spec, "registered"))
        .map_err(|err| format!("inject: {err}"))?;
    let copy = bare::record(&mut copy_stream, quiet).await?;
    bare.set_relay(bare::RelayMode::Off);
    let same = bare::shape_of(&copy) == shape;
    if !same {
        results.notes.push(format!(
            "the contract relay's messages differ from mdevregd's: {}",
            bare::describe_all(&copy)
        ));
    }
    results.contract_same_shape = Some(same);
    Ok(())
}

async fn latency_phase(
    tree: &FakeSysfs,
    connection: &zbus::Connection,
    bare: Option<&bare::Bare>,
    cpu: &CpuWatch,
    scale: Scale,
    results: &mut Results,
) -> Result<(), String> {
    let mut emitter = UeventEmitter::open().map_err(|err| format!("emitter: {err}"))?;
    let mut sides = vec![LatencySide::Daemon];
    if let Some(bare) = bare {
        sides.push(LatencySide::Relay);
        match record_contract(tree, connection, bare, &mut emitter, results).await {
            Ok(()) => sides.push(LatencySide::Contract),
            Err(err) => results.notes.push(format!("contract relay: {err}")),
        }
    }
    // Profiling aid: `MDEVREG_BENCH_LATENCY_SIDES=daemon` runs only
    // mdevregd's blocks (a profile of the uevent path alone).
    if let Ok(wanted) = std::env::var("MDEVREG_BENCH_LATENCY_SIDES") {
        sides.retain(|side| {
            let name = match side {
                LatencySide::Daemon => "daemon",
                LatencySide::Relay => "relay",
                LatencySide::Contract => "contract",
            };
            wanted.split(',').any(|item| item.trim() == name)
        });
        if sides.is_empty() {
            return Err(format!(
                "MDEVREG_BENCH_LATENCY_SIDES={wanted} names no side"
            ));
        }
    }
    eprintln!(
        "e2e: latency ({} injected events for each of {:?}, blocks of {})",
        scale.latency_events, sides, scale.latency_block
    );
    let mut registered = watch_signal(connection, BUS_NAME, "ParentRegistered").await?;
    let mut unregistered = watch_signal(connection, BUS_NAME, "ParentUnregistered").await?;
    let mut relayed = match bare {
        Some(_) => Some(watch_signal(connection, bare::BARE_NAME, "ParentRegistered").await?),
        None => None,
    };
    let raw = RawListener::start()?;
    let mut injected: Vec<(String, Instant)> = Vec::new();
    let timeout = Duration::from_secs(2);
    // A stuck daemon must not hold the whole run up.
    let budget = Duration::from_secs(600);
    let phase_started = Instant::now();
    let block = scale.latency_block.max(1);
    let cpu_now = || (run_seconds(cpu.daemon), run_seconds(cpu.bus));
    let mut block_cpu = cpu_now();
    for step in 0..scale.latency_events * sides.len() {
        if phase_started.elapsed() > budget {
            results.notes.push(format!(
                "latency phase stopped after {step} events: over its {} s budget",
                budget.as_secs()
            ));
            break;
        }
        // Blocks take turns: mdevregd's events, the relay's, the contract
        // relay's.
        let block_number = step / block;
        let side = sides[block_number % sides.len()];
        let index = (block_number / sides.len()) * block + step % block;
        if step % block == 0 {
            if let Some(bare) = bare {
                bare.set_relay(match side {
                    LatencySide::Daemon => bare::RelayMode::Off,
                    LatencySide::Relay => bare::RelayMode::One,
                    LatencySide::Contract => bare::RelayMode::Contract,
                });
            }
            block_cpu = cpu_now();
        }
        match (side, relayed.as_mut()) {
            (LatencySide::Daemon, _) | (_, None) => {
                let spec = latency_parent(index);
                tree.add_parent(&spec);
                match inject_and_wait(&mut emitter, &spec, &mut registered, &mut injected, timeout)
                    .await?
                {
                    Some(latency) => results.latency_us.push(latency),
                    None => results.latency_missed += 1,
                }
                // Take it away again, as the kernel does, so the registry
                // stays small.
                tree.remove_parent(spec.name());
                emitter
                    .inject(&state_event(&spec, "unregistered"))
                    .map_err(|err| format!("inject: {err}"))?;
                let _ = wait_for_name(&mut unregistered, spec.name(), timeout).await;
            }
            (relay_side, Some(relayed)) => {
                // Devpaths of their own (the raw listener tells events
                // apart by devpath). The same event about a device that is
                // no parent: mdevregd looks and finds nothing, the relay
                // sends its signal(s).
                let offset = if relay_side == LatencySide::Relay {
                    RELAY_INDEX_OFFSET
                } else {
                    CONTRACT_INDEX_OFFSET
                };
                let spec = latency_parent(offset + index);
                let got =
                    inject_and_wait(&mut emitter, &spec, relayed, &mut injected, timeout).await?;
                let (samples, missed) = if relay_side == LatencySide::Relay {
                    (&mut results.relay_us, &mut results.relay_missed)
                } else {
                    (&mut results.contract_us, &mut results.contract_missed)
                };
                match got {
                    Some(latency) => samples.push(latency),
                    None => *missed += 1,
                }
            }
        }
        let block_end = (step + 1) % block == 0 || step + 1 == scale.latency_events * sides.len();
        if block_end {
            let (daemon, bus) = cpu_now();
            let (daemon, bus) = (daemon - block_cpu.0, bus - block_cpu.1);
            let events = (step % block + 1) as u64;
            let c = &mut results.latency_cpu;
            match side {
                LatencySide::Daemon => {
                    c.daemon_events += events;
                    c.daemon_cpu_s += daemon;
                    c.bus_cpu_s_daemon += bus;
                }
                LatencySide::Relay => {
                    c.relay_events += events;
                    c.bus_cpu_s_relay += bus;
                }
                LatencySide::Contract => {
                    c.contract_events += events;
                    c.bus_cpu_s_contract += bus;
                }
            }
        }
    }
    if let Some(bare) = bare {
        bare.set_relay(bare::RelayMode::Off);
    }
    // Let the raw listener drain, then match its arrivals to the injections.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut first_arrival: HashMap<String, Instant> = HashMap::new();
    while let Ok((devpath, at)) = raw.arrivals.try_recv() {
        first_arrival.entry(devpath).or_insert(at);
    }
    for (devpath, sent) in &injected {
        if let Some(at) = first_arrival.get(devpath) {
            results.raw_netlink_us.push(us(*at - *sent));
        }
    }
    drop(raw);
    match daemon_stats(connection).await {
        Ok(stats) => results.notes.push(format!(
            "mdevregd counters after the register and latency phases: {}",
            stats_line(&stats)
        )),
        Err(err) => results
            .notes
            .push(format!("cannot read mdevregd Stats: {err}")),
    }
    let (daemon_cpu, bus_daemon, bus_relay, bus_contract) = results.latency_cpu.per_event_us();
    eprintln!(
        "e2e: latency p50 {:.0} µs p99 {:.0} µs (missed {}); relay p50 {:.0} µs p99 {:.0} µs (missed {}); \
         contract relay p50 {:.0} µs p99 {:.0} µs (missed {}); raw netlink p50 {:.0} µs; \
         CPU per event: mdevregd {:.0} µs, dbus-daemon {:.0} / {:.0} / {:.0} µs (mdevregd / relay / contract relay)",
        median(&results.latency_us),
        percentile(&results.latency_us, 0.99),
        results.latency_missed,
        median(&results.relay_us),
        percentile(&results.relay_us, 0.99),
        results.relay_missed,
        median(&results.contract_us),
        percentile(&results.contract_us, 0.99),
        results.contract_missed,
        median(&results.raw_netlink_us),
        daemon_cpu,
        bus_daemon,
        bus_relay,
        bus_contract,
    );
    Ok(())
}

// ----- scaling: startup and full rescans of N × 1 trees -----

/// `Rescan()` calls timed after each start of the scaling phase.
const RESCANS_PER_START: usize = 3;

/// `parents` s390-like subchannel parents (`vfio_ccw`, one type each)
/// under `/devices/css0`, on a tmpfs of their own; startup (spawn → name)
/// and `Rescan()` of the daemon on it, alternating with the direct scan
/// (`mdevreg types --json --sysfs-root`).
async fn scaling_row(
    setup: &DaemonSetup<'_>,
    work: &Path,
    dbus: &zbus::fdo::DBusProxy<'_>,
    connection: &zbus::Connection,
    scale: Scale,
    parents: u32,
) -> Result<ScalingRow, String> {
    eprintln!("e2e: scaling: {parents} × 1 tree");
    let dir = work.join(format!("scale-tree-{parents}"));
    std::fs::create_dir_all(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    run_checked(
        "mount",
        &["-t", "tmpfs", "mdevreg-bench-scale", path_str(&dir)],
    )?;
    let result = async {
        let started = Instant::now();
        let tree = FakeSysfs::at(&dir);
        for index in 0..parents {
            // Subchannel ids 0.0.0000 .. 0.0.ffff, then the next set.
            let id = format!("0.{}.{:04x}", index >> 16, index & 0xffff);
            tree.add_parent(&ParentSpec::vfio_ccw(&id));
        }
        let mut row = ScalingRow {
            parents,
            build_seconds: started.elapsed().as_secs_f64(),
            ..ScalingRow::default()
        };
        eprintln!("e2e: scaling: tree built in {:.1} s", row.build_seconds);
        let state_dir = setup.state_dir.join(format!("scale-{parents}"));
        std::fs::create_dir_all(&state_dir).map_err(|err| format!("state dir: {err}"))?;
        let scale_setup = DaemonSetup {
            tree: &tree,
            state_dir,
            ..setup.clone()
        };
        let root = path_str(tree.root()).to_owned();
        let direct = || timed_output(MDEVREG, &["types", "--json", "--sysfs-root", &root]);
        let registry = zbus::Proxy::new(connection, BUS_NAME, ROOT_PATH, "org.mdevreg.Registry1")
            .await
            .map_err(|err| format!("registry proxy: {err}"))?;
        // Warm-up (page cache, dentries), not counted.
        direct()?;
        for round in 0..scale.scaling_rounds {
            if round % 2 == 1 {
                row.direct_scan_ms.push(ms(direct()?.0));
            }
            let (daemon, elapsed) = scale_setup.start_and_wait(dbus, None).await?;
            row.startup_ms.push(ms(elapsed));
            for _ in 0..RESCANS_PER_START {
                let started = Instant::now();
                let () = registry
                    .call("Rescan", &())
                    .await
                    .map_err(|err| format!("Rescan: {err}"))?;
                row.rescan_ms.push(ms(started.elapsed()));
            }
            row.rss_mib = vm_hwm_mib(daemon.pid());
            scale_setup.stop_and_wait(dbus, daemon).await;
            if round % 2 == 0 {
                row.direct_scan_ms.push(ms(direct()?.0));
            }
        }
        eprintln!(
            "e2e: scaling {parents} × 1: direct scan {:.0} ms, startup {:.0} ms, Rescan() {:.0} ms",
            median(&row.direct_scan_ms),
            median(&row.startup_ms),
            median(&row.rescan_ms)
        );
        Ok(row)
    }
    .await;
    let _ = run_checked("umount", &[path_str(&dir)]);
    let _ = std::fs::remove_dir(&dir);
    result
}

// ----- flood: many events, small receive buffer, convergence -----

fn pci_name(index: u32) -> String {
    format!(
        "0000:{:02x}:{:02x}.{}",
        (index >> 8) & 0xff,
        (index >> 3) & 0x1f,
        index & 7
    )
}

async fn flood_phase(
    setup: &DaemonSetup<'_>,
    dbus: &zbus::fdo::DBusProxy<'_>,
    scale: Scale,
    results: &mut Results,
) {
    if !setup.receive_buffer_flag {
        results.notes.push(
            "flood: mdevregd has no --receive-buffer flag; it ran with its default buffer".into(),
        );
    }
    for run in 0..scale.flood_runs {
        eprintln!(
            "e2e: flood run {} ({} events over {} parents)",
            run + 1,
            scale.flood_events,
            scale.parents
        );
        match flood_run(setup, dbus, scale, run).await {
            Ok(flood) => {
                eprintln!(
                    "e2e: flood: injected in {:.2} s, converged {} after {:.2} s ({})",
                    flood.inject_seconds, flood.converged, flood.seconds, flood.stats
                );
                results.notes.push(format!(
                    "flood run {}: {} events injected in {:.2} s; mdevregd counters: {}",
                    run + 1,
                    flood.events,
                    flood.inject_seconds,
                    flood.stats
                ));
                results.flood_runs.push(flood);
            }
            Err(err) => {
                results.notes.push(format!("flood run {}: {err}", run + 1));
                results.flood_runs.push(FloodRun {
                    events: 0,
                    inject_seconds: 0.0,
                    converged: false,
                    seconds: 0.0,
                    stats: String::new(),
                });
            }
        }
    }
}

async fn flood_run(
    setup: &DaemonSetup<'_>,
    dbus: &zbus::fdo::DBusProxy<'_>,
    scale: Scale,
    run: usize,
) -> Result<FloodRun, String> {
    let (daemon, _) = setup
        .start_and_wait(dbus, Some(FLOOD_RECEIVE_BUFFER))
        .await?;
    let tree = setup.tree;
    let mut emitter = UeventEmitter::open().map_err(|err| format!("emitter: {err}"))?;
    let parents = scale.parents as usize;
    // A few parents leave during each run (distinct per run).
    let leaving: Vec<u32> = (0..10u32)
        .map(|k| (k * 97 + run as u32 * 13 + 5) % scale.parents)
        .collect();
    let names: Vec<String> = (0..scale.parents).map(pci_name).collect();
    let started = Instant::now();
    for event_index in 0..scale.flood_events {
        let parent_index = (event_index % parents) as u32;
        let name = &names[parent_index as usize];
        let devpath = format!("/devices/pci0000:00/{name}");
        let round = event_index / parents;
        if leaving.contains(&parent_index) && round == 1 {
            if tree.parent_dir_exists(name) {
                tree.remove_parent(name);
            }
            let event = Uevent::new("change", devpath.as_str())
                .with("SUBSYSTEM", "pci")
                .with("DRIVER", "nvidia")
                .with("MDEV_STATE", "unregistered");
            emitter
                .inject(&event)
                .map_err(|err| format!("inject: {err}"))?;
            continue;
        }
        if !tree.parent_dir_exists(name) {
            // Gone in this or an earlier run: a hint about nothing.
            let event = Uevent::new("change", devpath.as_str()).with("SUBSYSTEM", "pci");
            emitter
                .inject(&event)
                .map_err(|err| format!("inject: {err}"))?;
            continue;
        }
        let type_id = format!("nvidia-{}", 100 + (round as u32 % scale.types));
        let available = ((event_index * 7 + run) % 17) as u32;
        let attribute = tree.path(format!(
            "{devpath}/mdev_supported_types/{type_id}/available_instances"
        ));
        std::fs::write(attribute, format!("{available}\n"))
            .map_err(|err| format!("write available_instances: {err}"))?;
        let event = Uevent::new("change", devpath.as_str())
            .with("SUBSYSTEM", "pci")
            .with("DRIVER", "nvidia");
        emitter
            .inject(&event)
            .map_err(|err| format!("inject: {err}"))?;
    }
    let inject_seconds = started.elapsed().as_secs_f64();
    // Converged when the daemon's answer equals a direct scan.
    let root = path_str(tree.root()).to_owned();
    let (_, truth) = timed_output(MDEVREG, &["types", "--json", "--sysfs-root", &root])?;
    let deadline = Duration::from_secs(FLOOD_DEADLINE_SECONDS);
    let mut converged = false;
    let mut seconds = 0.0;
    while started.elapsed() < deadline {
        if let Ok((_, answer)) =
            timed_output(MDEVREG, &["--bus", &setup.bus_address, "types", "--json"])
        {
            if same_json(&truth, &answer) {
                converged = true;
                seconds = started.elapsed().as_secs_f64();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !converged {
        seconds = started.elapsed().as_secs_f64();
    }
    let stats = daemon_stats(dbus.inner().connection()).await.ok();
    setup.stop_and_wait(dbus, daemon).await;
    Ok(FloodRun {
        events: scale.flood_events,
        inject_seconds,
        converged,
        seconds,
        stats: stats.map(|stats| stats_line(&stats)).unwrap_or_default(),
    })
}

trait TreeExt {
    fn parent_dir_exists(&self, name: &str) -> bool;
}

impl TreeExt for FakeSysfs {
    /// The parent is registered in sysfs (its `class/mdev_bus` link exists).
    fn parent_dir_exists(&self, name: &str) -> bool {
        std::fs::symlink_metadata(self.path("class/mdev_bus").join(name)).is_ok()
    }
}

// ----- helpers -----

/// Runs `program args`, returns its wall time and stdout; fails on a non-zero
/// exit.
fn timed_output(program: &str, args: &[&str]) -> Result<(Duration, Vec<u8>), String> {
    let started = Instant::now();
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("run {program}: {err}"))?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        return Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok((elapsed, output.stdout))
}

fn run_checked(program: &str, args: &[&str]) -> Result<(), String> {
    timed_output(program, args).map(|_| ())
}

fn same_json(a: &[u8], b: &[u8]) -> bool {
    match (
        serde_json::from_slice::<Value>(a),
        serde_json::from_slice::<Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn us(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000_000.0
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

fn median(samples: &[f64]) -> f64 {
    percentile(samples, 0.5)
}

/// Nearest-rank percentile; NaN for no samples.
fn percentile(samples: &[f64], fraction: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let sorted = sorted(samples);
    let rank = ((fraction * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn vm_hwm_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn machine_line() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text
                .lines()
                .find(|line| line.starts_with("MemTotal:"))?
                .to_owned();
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!(", {:.1} GiB RAM", kib / 1024.0 / 1024.0))
        })
        .unwrap_or_default();
    format!("Linux {kernel}, {model}, {cores} cores{memory}")
}

// ----- reports -----

/// A number for JSON: `null` when not measured.
fn number(value: f64) -> Value {
    if value.is_finite() {
        json!((value * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        f64::NAN
    }
}

/// Largest row ÷ smallest row of the scaling phase (30k / 10k).
#[derive(Clone, Copy)]
struct Growth {
    small: u32,
    large: u32,
    startup: f64,
    rescan: f64,
}

fn scaling_growth(results: &Results) -> Option<Growth> {
    let small = results.scaling.iter().min_by_key(|row| row.parents)?;
    let large = results.scaling.iter().max_by_key(|row| row.parents)?;
    (large.parents > small.parents).then(|| Growth {
        small: small.parents,
        large: large.parents,
        startup: ratio(median(&large.startup_ms), median(&small.startup_ms)),
        rescan: ratio(median(&large.rescan_ms), median(&small.rescan_ms)),
    })
}

struct Summary {
    scan_ratio: f64,
    query_ratio: f64,
    latency_p50: f64,
    latency_p99: f64,
    raw_p50: f64,
    relay_p50: f64,
    relay_p99: f64,
    /// mdevregd's latency p50 ÷ the relay's.
    latency_ratio_vs_bare: f64,
    contract_p50: f64,
    contract_p99: f64,
    /// mdevregd's latency p50 ÷ the contract relay's.
    latency_ratio_vs_contract_relay: f64,
    /// The contract relay's p50 ÷ the bare relay's: what the contract's
    /// messages alone cost against one signal.
    contract_ratio_vs_bare: f64,
    register_rate: f64,
    bare_rate: f64,
    /// mdevregd's register cycles/s ÷ the bare responder's.
    register_ratio_vs_bare: f64,
    disk_rate: f64,
    echo_rate: f64,
    flood_converged: bool,
    flood_seconds: f64,
    flood_events: usize,
    rss: f64,
    startup: f64,
}

fn summarize(results: &Results) -> Summary {
    let flood_ok =
        !results.flood_runs.is_empty() && results.flood_runs.iter().all(|run| run.converged);
    Summary {
        scan_ratio: ratio(
            median(&results.scan_mdevctl_ms),
            median(&results.scan_mdevreg_ms),
        ),
        query_ratio: ratio(
            median(&results.query_mdevctl_ms),
            median(&results.query_mdevreg_ms),
        ),
        latency_p50: median(&results.latency_us),
        latency_p99: percentile(&results.latency_us, 0.99),
        raw_p50: median(&results.raw_netlink_us),
        relay_p50: median(&results.relay_us),
        relay_p99: percentile(&results.relay_us, 0.99),
        latency_ratio_vs_bare: ratio(median(&results.latency_us), median(&results.relay_us)),
        contract_p50: median(&results.contract_us),
        contract_p99: percentile(&results.contract_us, 0.99),
        latency_ratio_vs_contract_relay: ratio(
            median(&results.latency_us),
            median(&results.contract_us),
        ),
        contract_ratio_vs_bare: ratio(median(&results.contract_us), median(&results.relay_us)),
        register_rate: median(&results.register_cycles_per_s),
        bare_rate: median(&results.bare_cycles_per_s),
        register_ratio_vs_bare: ratio(
            median(&results.register_cycles_per_s),
            median(&results.bare_cycles_per_s),
        ),
        disk_rate: median(&results.register_cycles_per_s_disk),
        echo_rate: median(&results.echo_calls_per_s),
        flood_converged: flood_ok,
        flood_seconds: results
            .flood_runs
            .iter()
            .map(|run| run.seconds)
            .fold(f64::NAN, f64::max),
        flood_events: results
            .flood_runs
            .first()
            .map(|run| run.events)
            .unwrap_or(0),
        rss: results.rss_mib.unwrap_or(f64::NAN),
        startup: median(&results.startup_ms),
    }
}

fn write_reports(results: &Results) -> Result<(), String> {
    let summary = summarize(results);
    let rss_startup: Vec<f64> = results.rss_mib_startup.into_iter().collect();
    let samples: BTreeMap<&str, &Vec<f64>> = BTreeMap::from([
        ("rss_mib_after_startup", &rss_startup),
        ("scan_mdevctl_ms", &results.scan_mdevctl_ms),
        ("scan_mdevreg_ms", &results.scan_mdevreg_ms),
        ("query_mdevctl_ms", &results.query_mdevctl_ms),
        ("query_mdevreg_ms", &results.query_mdevreg_ms),
        ("startup_ms", &results.startup_ms),
        ("register_cycles_per_s", &results.register_cycles_per_s),
        ("bus_echo_calls_per_s", &results.echo_calls_per_s),
        (
            "register_cycles_per_s_state_on_disk",
            &results.register_cycles_per_s_disk,
        ),
        ("bare_register_cycles_per_s", &results.bare_cycles_per_s),
    ]);
    let scaling: Vec<Value> = results
        .scaling
        .iter()
        .map(|row| {
            json!({
                "parents": row.parents,
                "types_per_parent": 1,
                "direct_scan_ms": number(median(&row.direct_scan_ms)),
                "startup_ms": number(median(&row.startup_ms)),
                "rescan_ms": number(median(&row.rescan_ms)),
                "startup_vs_direct_scan": number(ratio(median(&row.startup_ms), median(&row.direct_scan_ms))),
                "rescan_vs_direct_scan": number(ratio(median(&row.rescan_ms), median(&row.direct_scan_ms))),
                "rss_mib": number(row.rss_mib.unwrap_or(f64::NAN)),
                "samples": {
                    "direct_scan_ms": row.direct_scan_ms,
                    "startup_ms": row.startup_ms,
                    "rescan_ms": row.rescan_ms,
                },
            })
        })
        .collect();
    let growth = scaling_growth(results);
    let latency_cpu = {
        let (daemon, bus, relay, contract) = results.latency_cpu.per_event_us();
        json!({
            "mdevregd": number(daemon),
            "dbus_daemon_for_mdevregd": number(bus),
            "dbus_daemon_for_relay": number(relay),
            "dbus_daemon_for_contract_relay": number(contract),
        })
    };
    let document = json!({
        "machine": results.machine,
        "scan_ratio_vs_mdevctl": number(summary.scan_ratio),
        "query_ratio_vs_mdevctl": number(summary.query_ratio),
        "latency_p50_us": number(summary.latency_p50),
        "latency_p99_us": number(summary.latency_p99),
        "raw_netlink_p50_us": number(summary.raw_p50),
        "relay_p50_us": number(summary.relay_p50),
        "relay_p99_us": number(summary.relay_p99),
        "latency_ratio_vs_bare": number(summary.latency_ratio_vs_bare),
        "contract_relay_p50_us": number(summary.contract_p50),
        "contract_relay_p99_us": number(summary.contract_p99),
        "latency_ratio_vs_contract_relay": number(summary.latency_ratio_vs_contract_relay),
        "contract_relay_ratio_vs_bare": number(summary.contract_ratio_vs_bare),
        "contract_relay_same_messages": results.contract_same_shape,
        "cpu_us_per_latency_event": latency_cpu,
        "register_cycles_per_s": number(summary.register_rate),
        "bare_register_cycles_per_s": number(summary.bare_rate),
        "register_ratio_vs_bare": number(summary.register_ratio_vs_bare),
        "register_cycles_per_s_state_on_disk": number(summary.disk_rate),
        "bare_same_messages": results.bare_same_shape,
        "cpu_us_per_cycle": results.cycle_cpu.map(|cpu| {
            let (daemon, bus, bus_bare) = cpu.per_cycle_us();
            json!({
                "mdevregd": number(daemon),
                "dbus_daemon_for_mdevregd": number(bus),
                "dbus_daemon_for_bare": number(bus_bare),
            })
        }),
        "bus_echo_calls_per_s": number(summary.echo_rate),
        "scaling": scaling,
        "scaling_startup_growth": growth.map(|g| number(g.startup)),
        "scaling_rescan_growth": growth.map(|g| number(g.rescan)),
        "flood_events": summary.flood_events,
        "flood_converged": summary.flood_converged,
        "flood_seconds": number(summary.flood_seconds),
        "rss_mib_1000x32": number(summary.rss),
        "startup_ms_1000x32": number(summary.startup),
        "samples": samples,
    });
    let target = Path::new(MANIFEST_DIR).join("target/bench");
    std::fs::create_dir_all(&target).map_err(|err| format!("{}: {err}", target.display()))?;
    // A quick or partial run must not replace the full run's reports.
    let partial = std::env::var_os("MDEVREG_BENCH_QUICK").is_some()
        || std::env::var_os("MDEVREG_BENCH_PHASES").is_some()
        || std::env::var_os("MDEVREG_BENCH_DAEMON_WRAPPER").is_some()
        || std::env::var_os("MDEVREG_BENCH_RATE_SIDES").is_some()
        || std::env::var_os("MDEVREG_BENCH_LATENCY_SIDES").is_some()
        || std::env::var_os("MDEVREG_BENCH_TREE_DIR").is_some()
        || std::env::var_os(DAEMON_OVERRIDE).is_some();
    let (json_path, markdown_path) = if partial {
        (
            target.join("results-partial.json"),
            target.join("BENCHMARKS-partial.md"),
        )
    } else {
        (
            target.join("results.json"),
            Path::new(MANIFEST_DIR).join("BENCHMARKS.md"),
        )
    };
    let text = serde_json::to_string_pretty(&document).map_err(|err| err.to_string())?;
    std::fs::write(&json_path, text + "\n")
        .map_err(|err| format!("{}: {err}", json_path.display()))?;
    // Sections other benchmarks keep in BENCHMARKS.md (`cargo bench --bench
    // metrics`, `benches/idle-cost.sh`) stay, between their markers.
    let mut report = markdown(results, &summary);
    let previous = std::fs::read_to_string(&markdown_path).unwrap_or_default();
    for (begin_marker, end_marker) in KEPT_SECTIONS {
        if let (Some(begin), Some(end)) = (previous.find(begin_marker), previous.find(end_marker)) {
            if end > begin {
                report.push('\n');
                report.push_str(&previous[begin..end + end_marker.len()]);
                report.push('\n');
            }
        }
    }
    std::fs::write(&markdown_path, report)
        .map_err(|err| format!("{}: {err}", markdown_path.display()))?;
    eprintln!(
        "e2e: wrote {} and {}",
        json_path.display(),
        markdown_path.display()
    );
    Ok(())
}

/// The latency block size of the run (what the report says).
fn results_block(results: &Results) -> usize {
    results.latency_block
}

/// Why `seqnum_gaps` shows up in a private network namespace.
fn results_gap_note(text: &mut String) {
    let _ = writeln!(
        text,
        "- `seqnum_gaps` below: the kernel's uevent SEQNUM counter is global, but events \
         injected in another network namespace, or about a device of another namespace (the \
         `lo` of every new `unshare -n`), are delivered only there. Anything else on the \
         machine doing that (other test suites, containers starting) shows up here as gaps; \
         mdevregd treats each gap as a loss and rescans the whole tree on a blocking thread \
         (uevents and calls keep being handled meanwhile; parents re-read during the scan are \
         read again when it ends), so gaps cost CPU, not a stalled event loop."
    );
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

fn fmt(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "n/a".into()
    }
}

/// `30000` as `30,000`.
fn thousands(n: u32) -> String {
    let digits = n.to_string();
    let mut text = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

fn markdown(results: &Results, s: &Summary) -> String {
    let scan_ms = median(&results.scan_mdevreg_ms);
    let mut text = String::new();
    let _ = writeln!(text, "# Benchmarks\n");
    let _ = writeln!(
        text,
        "Generated by `cargo bench --bench e2e` (as root); do not edit by hand.\n"
    );
    let _ = writeln!(text, "Machine: {}  ", results.machine);
    let _ = writeln!(text, "Tree: {}\n", results.scale);
    let _ = writeln!(text, "| measure | result | target | |");
    let _ = writeln!(text, "| --- | --- | --- | --- |");
    let mut row = |name: &str, value: String, target: &str, met: bool| {
        let _ = writeln!(text, "| {name} | {value} | {target} | {} |", verdict(met));
    };
    row(
        "scan ratio (mdevctl `types --dumpjson` / `mdevreg types --json --sysfs-root`)",
        format!(
            "{}× ({} ms / {} ms)",
            fmt(s.scan_ratio, 1),
            fmt(median(&results.scan_mdevctl_ms), 1),
            fmt(scan_ms, 1)
        ),
        "≥ 3",
        s.scan_ratio >= 3.0,
    );
    row(
        "query ratio (mdevctl / `mdevreg types --json` from the daemon)",
        format!(
            "{}× ({} ms / {} ms)",
            fmt(s.query_ratio, 1),
            fmt(median(&results.query_mdevctl_ms), 1),
            fmt(median(&results.query_mdevreg_ms), 2)
        ),
        "≥ 20",
        s.query_ratio >= 20.0,
    );
    row(
        "latency p50, injected `MDEV_STATE=registered` → ParentRegistered",
        format!(
            "{} µs ({}× the bare relay's p50, `latency_ratio_vs_bare`; {}× the contract relay's, \
             `latency_ratio_vs_contract_relay`)",
            fmt(s.latency_p50, 0),
            fmt(s.latency_ratio_vs_bare, 2),
            fmt(s.latency_ratio_vs_contract_relay, 2)
        ),
        "≤ 1.5× the relay's p50",
        s.latency_ratio_vs_bare <= 1.5,
    );
    row(
        "latency p99",
        format!(
            "{} µs ({} events, {} missed)",
            fmt(s.latency_p99, 0),
            results.latency_us.len() + results.latency_missed,
            results.latency_missed
        ),
        "≤ 1000 µs",
        s.latency_p99 <= 1000.0 && results.latency_missed == 0,
    );
    row(
        "bare relay: injection → its one signal (same bus, same listener code)",
        format!(
            "p50 {} µs, p99 {} µs ({} events, {} missed)",
            fmt(s.relay_p50, 0),
            fmt(s.relay_p99, 0),
            results.relay_us.len() + results.relay_missed,
            results.relay_missed
        ),
        "reference",
        true,
    );
    row(
        "contract relay: injection → its ParentRegistered, after the InterfacesAdded of the parent and \
         each type, then PropertiesChanged (the messages mdevregd sends for it, same sizes; no registry/sysfs)",
        format!(
            "p50 {} µs ({}× the bare relay's), p99 {} µs ({} events, {} missed)",
            fmt(s.contract_p50, 0),
            fmt(s.contract_ratio_vs_bare, 2),
            fmt(s.contract_p99, 0),
            results.contract_us.len() + results.contract_missed,
            results.contract_missed
        ),
        "reference",
        true,
    );
    {
        let (daemon, bus, relay, contract) = results.latency_cpu.per_event_us();
        row(
            "CPU per latency event (scheduler run time over each side's blocks)",
            format!(
                "mdevregd's loop thread {} µs (a parent's registration and unregistration); dbus-daemon {} µs for \
                 mdevregd's, {} µs for the bare relay's, {} µs for the contract relay's",
                fmt(daemon, 0),
                fmt(bus, 0),
                fmt(relay, 0),
                fmt(contract, 0)
            ),
            "information",
            true,
        );
    }
    row(
        "raw netlink p50 (injection → plain group-1 listener)",
        format!("{} µs", fmt(s.raw_p50, 0)),
        "reference",
        true,
    );
    let windows = |rates: &[f64]| {
        rates
            .iter()
            .map(|rate| fmt(*rate, 0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    row(
        "RegisterParent+UnregisterParent cycles/s (one client)",
        format!(
            "{} ({}% of the bare responder, `register_ratio_vs_bare`; windows: {})",
            fmt(s.register_rate, 0),
            fmt(100.0 * s.register_ratio_vs_bare, 0),
            windows(&results.register_cycles_per_s)
        ),
        "≥ 70% of the bare responder and ≥ 3116 (2× 1,558)",
        s.register_ratio_vs_bare >= 0.7 && s.register_rate >= 2.0 * 1558.0,
    );
    row(
        "bare responder cycles/s (the same calls answered with the same messages, no registry/state/sysfs)",
        format!(
            "{} (windows: {})",
            fmt(s.bare_rate, 0),
            windows(&results.bare_cycles_per_s)
        ),
        "reference",
        true,
    );
    if let Some(cpu) = results.cycle_cpu {
        let (daemon, bus, bus_bare) = cpu.per_cycle_us();
        row(
            "CPU per register cycle (user + system, over the windows)",
            format!(
                "mdevregd {} µs; dbus-daemon {} µs for mdevregd's cycles, {} µs for the bare responder's",
                fmt(daemon, 0),
                fmt(bus, 0),
                fmt(bus_bare, 0)
            ),
            "information",
            true,
        );
    }
    row(
        "… mdevregd with `--state-dir` on disk (fsync)",
        fmt(s.disk_rate, 0),
        "information",
        true,
    );
    row(
        "bus echo calls/s (Peer.Ping to mdevregd)",
        format!(
            "{} (register cycles are {}% of it)",
            fmt(s.echo_rate, 0),
            fmt(100.0 * ratio(s.register_rate, s.echo_rate), 0)
        ),
        "reference",
        true,
    );
    let flood_detail = results
        .flood_runs
        .iter()
        .map(|run| {
            format!(
                "{} in {} s",
                if run.converged {
                    "converged"
                } else {
                    "NOT converged"
                },
                fmt(run.seconds, 2)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    row(
        "flood: events over all parents, small receive buffer",
        format!(
            "{} events × {} runs: {}",
            s.flood_events,
            results.flood_runs.len(),
            flood_detail
        ),
        "converges every time",
        s.flood_converged,
    );
    row(
        "daemon peak RSS (VmHWM) holding the tree",
        format!("{} MiB", fmt(s.rss, 1)),
        "≤ 32 MiB",
        s.rss <= 32.0,
    );
    row(
        "daemon startup (spawn → name acquired)",
        format!(
            "{} ms (direct scan {} ms)",
            fmt(s.startup, 0),
            fmt(scan_ms, 0)
        ),
        "≤ 2× direct scan",
        s.startup <= 2.0 * scan_ms,
    );
    let growth = scaling_growth(results);
    for row_data in &results.scaling {
        let direct = median(&row_data.direct_scan_ms);
        for (what, samples) in [
            ("daemon startup", &row_data.startup_ms),
            ("full rescan (`Rescan()` over D-Bus)", &row_data.rescan_ms),
        ] {
            let value = median(samples);
            let is_large = growth.is_some_and(|g| g.large == row_data.parents);
            let grew = growth.map(|g| {
                if what == "daemon startup" {
                    g.startup
                } else {
                    g.rescan
                }
            });
            let (target, met) = match (is_large, grew, growth) {
                (true, Some(grew), Some(g)) => (
                    format!(
                        "≤ 2× direct scan; {}/{} ≤ 3.5×",
                        thousands(g.large),
                        thousands(g.small)
                    ),
                    value <= 2.0 * direct && grew <= 3.5,
                ),
                _ => ("≤ 2× direct scan".to_owned(), value <= 2.0 * direct),
            };
            let growth_text = match (is_large, grew, growth) {
                (true, Some(grew), Some(g)) => {
                    format!("; {}× the {} × 1 figure", fmt(grew, 2), thousands(g.small))
                }
                _ => String::new(),
            };
            row(
                &format!("{what}, {} parents × 1 type", thousands(row_data.parents)),
                format!(
                    "{} ms ({}× the direct scan's {} ms{growth_text})",
                    fmt(value, 0),
                    fmt(ratio(value, direct), 2),
                    fmt(direct, 0)
                ),
                &target,
                met,
            );
        }
    }
    let _ = writeln!(text);
    let _ = writeln!(text, "## Method\n");
    let _ = writeln!(
        text,
        "- One run, one machine: each pair is measured alternately (which one goes first \
         alternates by round), and medians are compared; every command is a spawned process \
         timed from spawn to exit, output captured through a pipe."
    );
    let _ = writeln!(
        text,
        "- The fake tree is built by `tests/common/sysfs_fixture.rs` (`many_parents`; instances \
         added in the same layout as `FakeSysfs::add_instance`) on a tmpfs and bind-mounted over `/sys` in a private mount namespace, where \
         Debian's mdevctl 1.2.0 reads it; mdevreg reads the same directory with `--sysfs-root`. \
         Outputs compared as JSON: scan {}, query {}.",
        match results.scan_outputs_equal {
            Some(true) => "identical",
            Some(false) => "**different**",
            None => "not compared",
        },
        match results.query_outputs_equal {
            Some(true) => "identical",
            Some(false) => "**different**",
            None => "not compared",
        }
    );
    let _ = writeln!(
        text,
        "- A private dbus-daemon on a path socket; mdevregd (release build, default `--emit auto`) \
         and the benchmark run in a private network namespace, so kernel uevent injection \
         (`UeventEmitter::inject`) reaches only them. Latency: for each event a new parent tree is \
         created, `change` with `MDEV_STATE=registered` injected, and the time to the \
         ParentRegistered signal at a zbus client measured; the parent is then removed and \
         `unregistered` injected (not timed). The raw figure is the same injections seen by a \
         plain group-1 socket on its own thread."
    );
    let _ = writeln!(
        text,
        "- The bare responder (`benches/e2e/bare.rs`): a zbus service on the same bus, on a thread \
         with a single-threaded tokio runtime like mdevregd's loop, without registry, state or \
         sysfs. It first records the signals mdevregd sends for one register + unregister cycle \
         and then answers each call (arguments deserialized, nothing checked) with new messages \
         built from those bodies, signals and reply written together as mdevregd writes them; \
         the same messages checked by recording one of its cycles too: {}. Per cycle: {}. Its relay \
         turns each kernel uevent with `MDEV_STATE=registered` (mdevreg's listener code) into one \
         `ParentRegistered`-shaped signal. Its contract relay sends for each such uevent the \
         messages mdevregd sends for a new kernel parent, in mdevregd's order, built anew from \
         bodies recorded from mdevregd for one latency parent (ParentRegistered naming the \
         device; names of the same length, so the same sizes): {}; checked by recording one of \
         its events: {}. Latency events take turns in blocks of {} between mdevregd (a new \
         parent, as above), the relay and the contract relay (the same event about a device that \
         is no parent: mdevregd looks and finds nothing), the relay off or in the other mode \
         during the others' blocks. CPU per latency event: the scheduler's run time \
         (`/proc/PID/task/PID/schedstat`) of mdevregd's main thread (its event loop: rescans \
         for SEQNUM gaps run on other threads) and of dbus-daemon summed over each side's \
         blocks, divided by its events.",
        match results.bare_same_shape {
            Some(true) => "same members, signatures and body sizes",
            Some(false) => "**different** (see notes)",
            None => "not checked",
        },
        results.bare_script.as_deref().unwrap_or("not recorded"),
        results.contract_script.as_deref().unwrap_or("not recorded"),
        match results.contract_same_shape {
            Some(true) => "same members, signatures and body sizes",
            Some(false) => "**different** (see notes)",
            None => "not checked",
        },
        results_block(results)
    );
    let _ = writeln!(
        text,
        "- Register cycles: sequential RegisterParent + UnregisterParent (owner lifetime, one \
         type) from one connection for {} rounds of a window on mdevregd, one on the bare \
         responder and one of `org.freedesktop.DBus.Peer.Ping` to mdevregd (the order reversed \
         every other round); medians of the per-window rates. `--state-dir` is a tmpfs (as \
         `/run/mdevreg` is); one more window runs with it on disk.",
        results.register_cycles_per_s.len()
    );
    if !results.scaling.is_empty() {
        let _ = writeln!(
            text,
            "- Scaling: trees of N s390-like subchannel parents (`vfio_ccw`, one type each, all in \
             `/devices/css0`) on a tmpfs of their own (built in {}); for each round the direct scan \
             (`mdevreg types --json --sysfs-root`, spawn to exit) and a daemon start (spawn → name \
             acquired, the tree loaded) followed by {RESCANS_PER_START} `Rescan()` calls (call → reply: a scan on a \
             blocking thread and its result applied), the direct scan before or after the daemon by \
             turns; medians. Peak RSS of the daemon: {}.",
            results
                .scaling
                .iter()
                .map(|row| format!("{} s", fmt(row.build_seconds, 1)))
                .collect::<Vec<_>>()
                .join(", "),
            results
                .scaling
                .iter()
                .map(|row| format!(
                    "{} MiB for {}",
                    fmt(row.rss_mib.unwrap_or(f64::NAN), 1),
                    thousands(row.parents)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(
        text,
        "- Flood: mdevregd restarted with {}; events change `available_instances` of one type of \
         each parent in turn (a few parents unregister), each followed by an injected `change`; \
         converged when `mdevreg types --json` from the daemon equals a direct scan (polled), \
         within {FLOOD_DEADLINE_SECONDS} s; the time counts from the first injection.",
        if results.flood_receive_buffer_flag {
            format!(
                "`--receive-buffer={FLOOD_RECEIVE_BUFFER}` (small only once mdevregd applies \
                 the flag to its uevent socket; its counters below show the buffer it had)"
            )
        } else {
            "its default receive buffer (no `--receive-buffer` flag)".to_owned()
        }
    );
    let _ = writeln!(
        text,
        "- RSS: VmHWM of mdevregd after startup and the query rounds (the table's figure); \
         {} MiB right after startup, {} MiB at the end of the latency phase.",
        fmt(results.rss_mib_startup.unwrap_or(f64::NAN), 1),
        fmt(results.rss_mib_end.unwrap_or(f64::NAN), 1)
    );
    if results
        .notes
        .iter()
        .any(|note| note.contains("seqnum_gaps="))
    {
        results_gap_note(&mut text);
    }
    if !results.notes.is_empty() {
        let _ = writeln!(text, "\n## Notes\n");
        for note in &results.notes {
            let _ = writeln!(text, "- {note}");
        }
    }
    text
}

/// Markers of the section `cargo bench --bench metrics` writes.
const METRICS_SECTION_BEGIN: &str = "<!-- metrics bench: begin -->";
const METRICS_SECTION_END: &str = "<!-- metrics bench: end -->";
/// Every section of BENCHMARKS.md that another benchmark writes, by markers.
const KEPT_SECTIONS: &[(&str, &str)] = &[
    (METRICS_SECTION_BEGIN, METRICS_SECTION_END),
    ("<!-- idle cost: begin -->", "<!-- idle cost: end -->"),
    ("<!-- state saves: begin -->", "<!-- state saves: end -->"),
    ("<!-- memory: begin -->", "<!-- memory: end -->"),
    (PROFILE_SECTION_BEGIN, PROFILE_SECTION_END),
];
/// Markers of the profile paragraph (written by hand from `perf` runs,
/// see its text).
const PROFILE_SECTION_BEGIN: &str = "<!-- profile: begin -->";
const PROFILE_SECTION_END: &str = "<!-- profile: end -->";
