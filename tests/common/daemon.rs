//! The `mdevregd` process harness: [`DaemonOptions`] for its command line,
//! [`Daemon`] (spawn the real binary with its output in a log file, signal,
//! kill, wait for the exit, read the log, check it is alive and has not
//! panicked), [`wait_ready`] for its bus name, and [`Setup`]: a private bus
//! (see [`super::bus`]), a state directory and a daemon on a fake sysfs tree
//! with a root client connection.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mdevreg::dbus::Registry1Proxy;
use zbus::Connection;

use super::bus::DbusDaemon;
use super::prereq::open_tempdir;
use super::registry_client::{
    connect, list_parents, registry_proxy, snapshot, RegistrySnapshot, BUS_NAME,
};

/// How long a daemon may take to own its name.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How many log lines [`Daemon::log_tail`] keeps.
const LOG_TAIL_LINES: usize = 40;

/// How to start `mdevregd`.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub sysfs_root: PathBuf,
    pub state_dir: PathBuf,
    /// `--emit` value.
    pub emit: &'static str,
    /// Listen for kernel uevents (else `--no-netlink`).
    pub netlink: bool,
    /// `-v` (debug logs: rejections and reconciliation details).
    pub verbose: bool,
    /// `--runtime-dir` (owner-bound state, boot marker); `None`: the state
    /// directory.
    pub runtime_dir: Option<PathBuf>,
    /// More arguments, appended as given (`--metrics-listen ...`).
    pub extra_args: Vec<String>,
}

impl DaemonOptions {
    /// `--emit auto`, netlink on, `-v`.
    pub fn new(sysfs_root: &Path, state_dir: &Path) -> DaemonOptions {
        DaemonOptions {
            sysfs_root: sysfs_root.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            emit: "auto",
            netlink: true,
            verbose: true,
            runtime_dir: None,
            extra_args: Vec::new(),
        }
    }
}

/// The daemon binary: `MDEVREG_TEST_DAEMON` if set (a release build, for
/// load figures), else this crate's `mdevregd` as cargo built it.
pub fn daemon_binary() -> PathBuf {
    std::env::var_os("MDEVREG_TEST_DAEMON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mdevregd")))
}

/// Counts the daemons started by this process, to name their log files.
static DAEMON_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A running `mdevregd`, stdout and stderr in its own log file. Dropping it
/// kills it.
pub struct Daemon {
    child: Child,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `mdevregd --bus ADDRESS ...` with its log in a new file
    /// `log_dir/mdevregd-N.log`. Does not wait for it to be ready: see
    /// [`wait_ready`].
    pub fn spawn(bus_address: &str, options: &DaemonOptions, log_dir: &Path) -> Daemon {
        let index = DAEMON_COUNTER.fetch_add(1, Ordering::Relaxed);
        let log_path = log_dir.join(format!("mdevregd-{index}.log"));
        let log = fs::File::create(&log_path).expect("create daemon log");
        let mut command = Command::new(daemon_binary());
        command
            .arg("--bus")
            .arg(bus_address)
            .arg("--sysfs-root")
            .arg(&options.sysfs_root)
            .arg("--state-dir")
            .arg(&options.state_dir)
            .arg("--runtime-dir")
            .arg(options.runtime_dir.as_ref().unwrap_or(&options.state_dir))
            .arg("--emit")
            .arg(options.emit);
        if !options.netlink {
            command.arg("--no-netlink");
        }
        if options.verbose {
            command.arg("-v");
        }
        command.args(&options.extra_args);
        let child = command
            .env_remove("JOURNAL_STREAM")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn mdevregd");
        Daemon {
            child,
            log_path,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn is_alive(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// The exit status, if it has exited (reaps it).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait mdevregd");
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if self.exit_status().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal mdevregd");
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(&self.log_path) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Panics (with the end of the log) if the daemon exited or panicked.
    pub fn assert_alive(&mut self, when: &str) {
        if let Some(status) = self.exit_status() {
            panic!(
                "mdevregd exited ({status}) {when}; log:\n{}",
                self.log_tail()
            );
        }
        self.assert_no_panic(when);
    }

    /// Panics if the log shows a Rust panic.
    pub fn assert_no_panic(&self, when: &str) {
        let log = self.log();
        assert!(
            !log.contains("panicked at"),
            "mdevregd panicked {when}; log:\n{}",
            self.log_tail()
        );
    }

    /// Resident set size in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until the daemon owns its name and answers `ListParents`; panics
/// (with its log) if it exits, panics or takes over [`START_TIMEOUT`].
pub async fn wait_ready(connection: &Connection, daemon: &mut Daemon) {
    let dbus = zbus::fdo::DBusProxy::new(connection)
        .await
        .expect("DBusProxy");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        daemon.assert_alive("while starting");
        let owned = dbus
            .name_has_owner(BUS_NAME.try_into().expect("bus name"))
            .await
            .unwrap_or(false);
        if owned && list_parents(connection).await.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "mdevregd did not own {BUS_NAME} within {START_TIMEOUT:?}; log:\n{}",
            daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A private bus, a work directory (state directory and daemon logs), a
/// daemon on them and a root client connection.
pub struct Setup {
    /// Permissive, with high limits: the daemon's own checks are under test.
    pub bus: DbusDaemon,
    pub work: tempfile::TempDir,
    pub options: DaemonOptions,
    pub daemon: Daemon,
    pub client: Connection,
}

impl Setup {
    /// Starts a bus and a daemon on `sysfs_root` (state in a new temporary
    /// directory; options from [`DaemonOptions::new`], then `configure`),
    /// connects a root client and waits until the daemon serves.
    pub async fn start(sysfs_root: &Path, configure: impl FnOnce(&mut DaemonOptions)) -> Setup {
        let bus = DbusDaemon::start_permissive_high_limits();
        let work = open_tempdir("mdevreg-work-");
        let state_dir = work.path().join("state");
        fs::create_dir_all(&state_dir).expect("create state dir");
        let mut options = DaemonOptions::new(sysfs_root, &state_dir);
        configure(&mut options);
        let mut daemon = Daemon::spawn(bus.address(), &options, work.path());
        let client = connect(bus.address()).await;
        wait_ready(&client, &mut daemon).await;
        Setup {
            bus,
            work,
            options,
            daemon,
            client,
        }
    }

    /// Kills the daemon (if it still runs), starts a new one with the same
    /// options and waits until it serves.
    pub async fn restart_daemon(&mut self) {
        self.daemon.kill();
        self.daemon = Daemon::spawn(self.bus.address(), &self.options, self.work.path());
        wait_ready(&self.client, &mut self.daemon).await;
    }

    /// A `Registry1` proxy on the root client.
    pub async fn registry(&self) -> Registry1Proxy<'static> {
        registry_proxy(&self.client).await
    }

    /// The registry as the root client sees it.
    pub async fn snapshot(&self) -> RegistrySnapshot {
        snapshot(&self.client).await
    }
}
