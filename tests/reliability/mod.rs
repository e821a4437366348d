//! Harness of the reliability suites (`spoofing`, `hostile_dbus`,
//! `hostile_sysfs`, `faults`, `load`): a private dbus-daemon on a path
//! socket, the real `mdevregd` binary started in the test's own network
//! namespace, zbus clients, and helper processes (this test binary run again
//! in a helper role, optionally as uid 65534 through `setpriv`).
//!
//! Every suite runs its body with [`run`]: inside a fresh network namespace
//! (so the daemon's injected uevents and the tests' forged ones never reach
//! the host), on a multi-thread tokio runtime. Missing root or tools skip
//! the test, or fail it when `CI` is set.
#![allow(dead_code)]

pub mod tree_ops;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mdevreg::dbus::Registry1Proxy;
use zbus::proxy::CacheProperties;
use zbus::{Connection, DBusError, OwnedObjectPath, Variant};

use crate::common::netns::{in_new_netns, missing_prerequisite};

pub const BUS_NAME: &str = "org.mdevreg.Registry1";
pub const ROOT_PATH: &str = "/org/mdevreg/Registry1";
pub const REGISTRY_IFACE: &str = "org.mdevreg.Registry1";
pub const ERROR_PREFIX: &str = "org.mdevreg.Registry1.Error.";
/// The unprivileged uid helper processes run as.
pub const NOBODY: u32 = 65534;
/// How long a daemon may take to own its name.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Environment variable selecting a helper role in a re-run test binary.
pub const HELPER_ROLE_ENV: &str = "MDEVREG_TEST_HELPER_ROLE";
/// Prefix of the lines a helper process prints for its parent.
pub const HELPER_LINE_PREFIX: &str = "HELPER ";

/// Checks root and `tools` (looked up in PATH); reports what is missing
/// (skip, or panic under `CI`).
pub fn prerequisites(test: &str, tools: &[&str]) -> bool {
    if !nix::unistd::geteuid().is_root() {
        return missing_prerequisite::<()>(test, "needs root").is_some();
    }
    for tool in tools {
        if find_in_path(tool).is_none() {
            return missing_prerequisite::<()>(test, &format!("{tool} not found in PATH"))
                .is_some();
        }
    }
    true
}

/// The full path of `tool` in PATH.
pub fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Runs `body` on a multi-thread runtime inside a new network namespace,
/// after checking root and `tools` (dbus-daemon always). Child processes
/// spawned by the body share the namespace.
pub fn run<F, Fut>(test: &'static str, tools: &[&str], body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let mut needed = vec!["dbus-daemon"];
    needed.extend_from_slice(tools);
    if !prerequisites(test, &needed) {
        return;
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

/// A temporary directory that uid 65534 can enter and read (mode 0755).
pub fn open_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temporary directory");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
    dir
}

// ----- the private bus -----

/// A private `dbus-daemon` listening on a path socket (reachable from every
/// network namespace), with generous limits and a policy that lets every
/// uid connect, own names and call anything: the daemon's own uid check is
/// what is under test, not the bus policy.
pub struct PrivateBus {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Kept open: dbus-daemon must not get SIGPIPE.
    _stdout: Option<BufReader<ChildStdout>>,
    address: String,
}

impl PrivateBus {
    pub fn start() -> PrivateBus {
        let dir = open_tempdir("mdevreg-bus-");
        let mut bus = PrivateBus {
            dir,
            child: None,
            _stdout: None,
            address: String::new(),
        };
        bus.spawn();
        bus
    }

    fn socket_path(&self) -> PathBuf {
        self.dir.path().join("bus.sock")
    }

    fn spawn(&mut self) {
        let socket = self.socket_path();
        let _ = fs::remove_file(&socket);
        let config = self.dir.path().join("bus.conf");
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
        self.address = address;
        self.child = Some(child);
        self._stdout = Some(stdout);
    }

    /// The bus address (`unix:path=...,guid=...`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Kills the bus daemon (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self._stdout = None;
    }

    /// Starts a new bus daemon on the same socket path (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
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
  <limit name="max_incoming_bytes">1000000000</limit>
  <limit name="max_incoming_unix_fds">250000000</limit>
  <limit name="max_outgoing_bytes">1000000000</limit>
  <limit name="max_outgoing_unix_fds">250000000</limit>
  <limit name="max_message_size">134217728</limit>
  <limit name="max_message_unix_fds">4096</limit>
  <limit name="service_start_timeout">120000</limit>
  <limit name="auth_timeout">240000</limit>
  <limit name="pending_fd_timeout">150000</limit>
  <limit name="max_completed_connections">100000</limit>
  <limit name="max_incomplete_connections">10000</limit>
  <limit name="max_connections_per_user">100000</limit>
  <limit name="max_pending_service_starts">10000</limit>
  <limit name="max_names_per_connection">50000</limit>
  <limit name="max_match_rules_per_connection">50000</limit>
  <limit name="max_replies_per_connection">50000</limit>
</busconfig>
"#,
        socket.display()
    )
}

// ----- the daemon -----

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
}

impl DaemonOptions {
    pub fn new(sysfs_root: &Path, state_dir: &Path) -> DaemonOptions {
        DaemonOptions {
            sysfs_root: sysfs_root.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            emit: "auto",
            netlink: true,
            verbose: true,
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

/// A running `mdevregd` (this crate's binary), its stderr in a log file.
/// Dropping it kills it.
pub struct Daemon {
    child: Child,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

/// Counts the daemons started by this process, to name their log files.
static DAEMON_COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Daemon {
    /// Starts `mdevregd --bus ADDRESS ...` with its log in `log_dir`. Does
    /// not wait for it to be ready: see [`wait_ready`].
    pub fn spawn(bus_address: &str, options: &DaemonOptions, log_dir: &Path) -> Daemon {
        let index = DAEMON_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
            .arg("--emit")
            .arg(options.emit);
        if !options.netlink {
            command.arg("--no-netlink");
        }
        if options.verbose {
            command.arg("-v");
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
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Panics (with the log) if the daemon panicked or exited.
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

/// A fresh client connection to `address`.
pub async fn connect(address: &str) -> Connection {
    zbus::connection::Builder::address(address)
        .build()
        .await
        .unwrap_or_else(|err| panic!("connect to {address}: {err}"))
}

/// Waits until the daemon owns its name and answers `ListParents`.
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

/// A bus, a sysfs tree, a state directory, and a daemon on them.
pub struct Setup {
    pub bus: PrivateBus,
    pub work: tempfile::TempDir,
    pub options: DaemonOptions,
    pub daemon: Daemon,
    pub client: Connection,
}

impl Setup {
    /// Starts a bus and a daemon on `sysfs_root` (state in a new temporary
    /// directory), and connects a root client.
    pub async fn start(sysfs_root: &Path, configure: impl FnOnce(&mut DaemonOptions)) -> Setup {
        let bus = PrivateBus::start();
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

    /// Kills the daemon and starts a new one with the same options.
    pub async fn restart_daemon(&mut self) {
        self.daemon.kill();
        self.daemon = Daemon::spawn(self.bus.address(), &self.options, self.work.path());
        wait_ready(&self.client, &mut self.daemon).await;
    }

    pub async fn registry(&self) -> Registry1Proxy<'static> {
        registry_proxy(&self.client).await
    }

    /// The registry as clients see it.
    pub async fn snapshot(&self) -> RegistrySnapshot {
        snapshot(&self.client).await
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

/// `ListParents` by a raw call.
pub async fn list_parents(connection: &Connection) -> zbus::Result<Vec<OwnedObjectPath>> {
    let reply = connection
        .call_method(
            Some(BUS_NAME),
            ROOT_PATH,
            Some(REGISTRY_IFACE),
            "ListParents",
            &(),
        )
        .await?;
    reply.body().deserialize()
}

/// What a test compares before and after a hostile input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrySnapshot {
    pub parents: Vec<OwnedObjectPath>,
    pub seqnum: u64,
}

impl RegistrySnapshot {
    /// Parent names (unescaped from the object paths).
    pub fn names(&self) -> Vec<String> {
        self.parents
            .iter()
            .map(|path| {
                mdevreg::label::parse_parent_path(path.as_str())
                    .unwrap_or_else(|| panic!("not a parent path: {path}"))
            })
            .collect()
    }
}

pub async fn snapshot(connection: &Connection) -> RegistrySnapshot {
    let proxy = registry_proxy(connection).await;
    let mut parents = list_parents(connection).await.expect("ListParents");
    parents.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    RegistrySnapshot {
        parents,
        seqnum: proxy.seq_num().await.expect("SeqNum"),
    }
}

/// The daemon's counters (`Stats` property).
pub async fn stats(connection: &Connection) -> BTreeMap<String, u64> {
    registry_proxy(connection)
        .await
        .stats()
        .await
        .expect("Stats")
        .into_iter()
        .collect()
}

/// The D-Bus error name of a failed call (`org.mdevreg.Registry1.Error.X`,
/// `org.freedesktop.DBus.Error.X`), or a description of a non-D-Bus error.
pub fn error_name(error: &zbus::Error) -> String {
    match error {
        zbus::Error::MethodError(name, _, _) => name.as_str().to_owned(),
        zbus::Error::FDO(fdo) => fdo.name().as_str().to_owned(),
        other => format!("(not a D-Bus error reply: {other})"),
    }
}

/// One `a{sv}` dictionary as sent on the wire.
pub type Dict<'a> = HashMap<&'static str, Variant<'a>>;

/// `RegisterParent(name, options, types)` by a raw call, so that any variant
/// may be sent.
pub async fn register_raw(
    connection: &Connection,
    name: &str,
    options: &Dict<'_>,
    types: &[Dict<'_>],
) -> zbus::Result<OwnedObjectPath> {
    let reply = connection
        .call_method(
            Some(BUS_NAME),
            ROOT_PATH,
            Some(REGISTRY_IFACE),
            "RegisterParent",
            &(name, options, types),
        )
        .await?;
    reply.body().deserialize()
}

/// `UnregisterParent(name)`.
pub async fn unregister(connection: &Connection, name: &str) -> zbus::Result<()> {
    connection
        .call_method(
            Some(BUS_NAME),
            ROOT_PATH,
            Some(REGISTRY_IFACE),
            "UnregisterParent",
            &(name,),
        )
        .await?;
    Ok(())
}

/// A valid type entry.
pub fn good_type(id: &str) -> Dict<'static> {
    HashMap::from([
        ("Id", Variant::from(id.to_owned())),
        ("DeviceApi", Variant::from("vfio-pci")),
        ("AvailableInstances", Variant::from(4u32)),
        ("Name", Variant::from("test type")),
    ])
}

/// Options with `Lifetime` set.
pub fn lifetime(value: &'static str) -> Dict<'static> {
    HashMap::from([("Lifetime", Variant::from(value))])
}

// ----- helper processes -----

/// Runs this test binary again as a helper: only the test `helper_process`,
/// with [`HELPER_ROLE_ENV`] set to `role` and `env`; as uid/gid 65534 when
/// `as_nobody` (through `setpriv`). Its stdout is piped.
pub fn spawn_helper(role: &str, env: &[(&str, String)], as_nobody: bool) -> Child {
    spawn_helper_as(role, env, as_nobody.then_some(&[][..]))
}

/// [`spawn_helper`] with the uid/gid 65534 case given extra `setpriv`
/// arguments (capabilities, say) when `nobody_args` is `Some`.
pub fn spawn_helper_as(role: &str, env: &[(&str, String)], nobody_args: Option<&[&str]>) -> Child {
    let exe = std::env::current_exe().expect("current test binary");
    let mut command = if let Some(extra) = nobody_args {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .args(extra)
            .arg("--")
            .arg(exe);
        command
    } else {
        Command::new(exe)
    };
    command
        .args([
            "--exact",
            "helper_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ROLE_ENV, role)
        .env_remove("CI")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("spawn helper process")
}

/// The helper role of this process, if it is a helper.
pub fn helper_role() -> Option<String> {
    std::env::var(HELPER_ROLE_ENV).ok()
}

/// Prints one line for the parent process.
pub fn helper_say(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{HELPER_LINE_PREFIX}{text}");
    let _ = stdout.flush();
}

/// Reads the helper's next line (without the prefix); `None` at EOF.
pub fn helper_next_line(stdout: &mut BufReader<ChildStdout>) -> Option<String> {
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).ok()? == 0 {
            return None;
        }
        // libtest may print "test helper_process ... " before the first line.
        if let Some(at) = line.find(HELPER_LINE_PREFIX) {
            return Some(line[at + HELPER_LINE_PREFIX.len()..].trim_end().to_owned());
        }
    }
}

/// Runs a helper to completion and returns its lines.
pub fn run_helper(role: &str, env: &[(&str, String)], as_nobody: bool) -> Vec<String> {
    run_helper_as(role, env, as_nobody.then_some(&[][..]))
}

/// [`run_helper`] with extra `setpriv` arguments (see [`spawn_helper_as`]).
pub fn run_helper_as(
    role: &str,
    env: &[(&str, String)],
    nobody_args: Option<&[&str]>,
) -> Vec<String> {
    let mut child = spawn_helper_as(role, env, nobody_args);
    let mut stdout = BufReader::new(child.stdout.take().expect("helper stdout"));
    let mut lines = Vec::new();
    while let Some(line) = helper_next_line(&mut stdout) {
        lines.push(line);
    }
    let status = child.wait().expect("wait for helper");
    assert!(
        status.success(),
        "helper {role} failed ({status}): {lines:?}"
    );
    lines
}

// ----- registry signals -----

/// One `ParentRegistered` or `ParentUnregistered` signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrySignal {
    /// `ParentRegistered` or `ParentUnregistered`.
    pub member: String,
    pub name: String,
    pub source: String,
    pub seqnum: u64,
}

/// A stream of the daemon's `Registry1` signals on `connection`, in bus
/// order, with a queue large enough never to stall the connection.
pub async fn registry_signals(connection: &Connection) -> zbus::MessageStream {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(REGISTRY_IFACE)
        .path(ROOT_PATH)
        .build()
        .expect("match rule");
    zbus::MessageStream::for_match_rule(rule, connection, std::num::NonZeroUsize::new(1 << 20))
        .await
        .expect("subscribe to Registry1 signals")
}

/// Decodes a registry signal; `None` for other messages.
pub fn decode_signal(message: &zbus::Message) -> Option<RegistrySignal> {
    let header = message.header();
    let member = header.member()?.as_str().to_owned();
    if member != "ParentRegistered" && member != "ParentUnregistered" {
        return None;
    }
    let (_path, name, source, seqnum): (OwnedObjectPath, String, String, u64) =
        message.body().deserialize().ok()?;
    Some(RegistrySignal {
        member,
        name,
        source,
        seqnum,
    })
}

/// The next registry signal within `timeout`.
pub async fn next_signal(
    stream: &mut zbus::MessageStream,
    timeout: Duration,
) -> Option<RegistrySignal> {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let message = tokio::time::timeout_at(deadline, stream.next())
            .await
            .ok()??
            .ok()?;
        if let Some(signal) = decode_signal(&message) {
            return Some(signal);
        }
    }
}

/// Polls `snapshot` until `done` holds or `timeout` passes; returns the last
/// snapshot and whether `done` held.
pub async fn wait_for_registry(
    connection: &Connection,
    timeout: Duration,
    done: impl Fn(&RegistrySnapshot) -> bool,
) -> (RegistrySnapshot, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = snapshot(connection).await;
        if done(&now) {
            return (now, true);
        }
        if Instant::now() >= deadline {
            return (now, false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
