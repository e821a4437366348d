//! Harness of the daemon acceptance tests (`daemon_dbus`, `daemon_netlink`,
//! `daemon_restart`): a private dbus-daemon on a path socket, the real
//! `mdevregd` binary on a fake sysfs tree, zbus clients, and the checks for
//! root and tools (skip, or fail when `CI` is set).
//!
//! Every test body runs through [`run`]: in a fresh network namespace (so
//! injected and forged uevents never reach the host), on a multi-thread
//! tokio runtime; processes it spawns share the namespace.
#![allow(dead_code)]

use std::fs;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mdevreg::dbus::Registry1Proxy;
use zbus::proxy::CacheProperties;
use zbus::Connection;

use crate::common::netns::{in_new_netns, missing_prerequisite};

pub const BUS_NAME: &str = "org.mdevreg.Registry1";
pub const ROOT_PATH: &str = "/org/mdevreg/Registry1";
/// The unprivileged uid of `setpriv` callers.
pub const NOBODY: u32 = 65534;
/// How long a daemon may take to own its name.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether `tool` is in PATH.
pub fn have_tool(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Runs `body` in a new network namespace on a multi-thread runtime after
/// checking root and `tools` (dbus-daemon always); skips (or fails under
/// `CI`) when one is missing.
pub fn run<F, Fut>(test: &'static str, tools: &[&str], body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    if !nix::unistd::geteuid().is_root() {
        missing_prerequisite::<()>(test, "needs root");
        return;
    }
    for tool in std::iter::once(&"dbus-daemon").chain(tools) {
        if !have_tool(tool) {
            missing_prerequisite::<()>(test, &format!("{tool} not found in PATH"));
            return;
        }
    }
    in_new_netns(test, move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(body())
    });
}

/// A temporary directory uid 65534 can enter (mode 0755).
pub fn open_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temporary directory");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
    dir
}

/// A private dbus-daemon on a path socket whose policy lets every uid
/// connect, own and call: the daemon's own uid check is under test.
pub struct PrivateBus {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Kept open so dbus-daemon never gets SIGPIPE.
    _stdout: Option<BufReader<ChildStdout>>,
    address: String,
}

impl PrivateBus {
    pub fn start() -> PrivateBus {
        let dir = open_tempdir("mdevreg-bus-");
        let socket = dir.path().join("bus.sock");
        let config = dir.path().join("bus.conf");
        fs::write(&config, bus_config(&socket)).expect("write bus config");
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile", "--print-address"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dbus-daemon");
        let mut stdout = BufReader::new(child.stdout.take().expect("dbus-daemon stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read bus address");
        let address = line.trim().to_owned();
        assert!(
            address.starts_with("unix:path="),
            "dbus-daemon printed {line:?}"
        );
        PrivateBus {
            dir,
            child: Some(child),
            _stdout: Some(stdout),
            address,
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the bus (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self._stdout = None;
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        self.kill();
    }
}

fn bus_config(socket: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"#,
        socket.display()
    )
}

/// How to start `mdevregd`.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub sysfs_root: PathBuf,
    pub state_dir: PathBuf,
    /// `--emit` value.
    pub emit: &'static str,
    /// Listen for kernel uevents (else `--no-netlink`).
    pub netlink: bool,
}

/// A running `mdevregd`, stdout and stderr in a log file. Killed on drop.
pub struct Daemon {
    child: Child,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `mdevregd --bus ADDRESS -v ...`, log in `log_path`.
    pub fn spawn(bus_address: &str, options: &DaemonOptions, log_path: &Path) -> Daemon {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("open daemon log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_mdevregd"));
        command
            .arg("--bus")
            .arg(bus_address)
            .arg("--sysfs-root")
            .arg(&options.sysfs_root)
            .arg("--state-dir")
            .arg(&options.state_dir)
            .args(["--emit", options.emit, "-v"]);
        if !options.netlink {
            command.arg("--no-netlink");
        }
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
            log_path: log_path.to_path_buf(),
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
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

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal mdevregd");
    }

    /// The log so far (every daemon of a setup appends to the same file).
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(&self.log_path) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Panics with the log if the daemon has exited or panicked.
    pub fn assert_alive(&mut self, when: &str) {
        if let Some(status) = self.exit_status() {
            panic!("mdevregd exited ({status}) {when}; log:\n{}", self.log());
        }
        assert!(
            !self.log().contains("panicked at"),
            "mdevregd panicked {when}; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A new client connection to `address`.
pub async fn connect(address: &str) -> Connection {
    zbus::connection::Builder::address(address)
        .build()
        .await
        .unwrap_or_else(|err| panic!("connect to {address}: {err}"))
}

/// Waits until the daemon owns its name and answers ListParents.
pub async fn wait_ready(connection: &Connection, daemon: &mut Daemon) {
    let dbus = zbus::fdo::DBusProxy::new(connection)
        .await
        .expect("DBusProxy");
    let registry = registry_proxy(connection).await;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        daemon.assert_alive("while starting");
        let owned = dbus
            .name_has_owner(BUS_NAME.try_into().expect("bus name"))
            .await
            .unwrap_or(false);
        if owned && registry.list_parents().await.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "mdevregd did not own {BUS_NAME} within {START_TIMEOUT:?}; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `Registry1` proxy that never caches properties.
pub async fn registry_proxy(connection: &Connection) -> Registry1Proxy<'static> {
    Registry1Proxy::builder(connection)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("Registry1 proxy")
}

/// A bus, a state directory, a daemon on them, and a root client.
pub struct Setup {
    pub bus: PrivateBus,
    pub work: tempfile::TempDir,
    pub options: DaemonOptions,
    pub daemon: Daemon,
    pub client: Connection,
}

impl Setup {
    /// Starts a bus and a daemon on `sysfs_root` (`--emit emit`, netlink on)
    /// and waits until it serves.
    pub async fn start(sysfs_root: &Path, emit: &'static str) -> Setup {
        let bus = PrivateBus::start();
        let work = open_tempdir("mdevreg-work-");
        let state_dir = work.path().join("state");
        fs::create_dir_all(&state_dir).expect("create state dir");
        let options = DaemonOptions {
            sysfs_root: sysfs_root.to_path_buf(),
            state_dir,
            emit,
            netlink: true,
        };
        let mut daemon = Daemon::spawn(bus.address(), &options, &work.path().join("mdevregd.log"));
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

    /// Starts another daemon with the same options (after the last one
    /// exited or was killed) and waits until it serves.
    pub async fn restart_daemon(&mut self) {
        self.daemon.kill();
        self.daemon = Daemon::spawn(
            self.bus.address(),
            &self.options,
            &self.work.path().join("mdevregd.log"),
        );
        wait_ready(&self.client, &mut self.daemon).await;
    }

    pub async fn registry(&self) -> Registry1Proxy<'static> {
        registry_proxy(&self.client).await
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for up to 15 s.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
