//! A private dbus-daemon for tests: started with a given configuration on a
//! `unix:path=` socket in its own temp dir (mode 0755, so other uids can
//! reach it, and reachable from every network namespace), its address read
//! from `--print-address`, restartable on the same socket, killed on drop.
//! [`system_bus_config`] writes a configuration shaped like Debian's
//! system.conf (default deny) that includes the files under test;
//! [`permissive_config`] and [`permissive_high_limits_config`] let everyone
//! do anything, so that the daemon's own checks are what is under test.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

/// A running dbus-daemon. Killed and reaped on drop.
pub struct DbusDaemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Kept open so dbus-daemon never gets SIGPIPE writing to it.
    _stdout: Option<BufReader<ChildStdout>>,
    address: String,
}

impl DbusDaemon {
    /// Starts `dbus-daemon --nofork` with the configuration that `config`
    /// returns for the socket path it is given. Panics when the daemon does
    /// not start (a test prerequisite checked by the caller).
    pub fn start(config: impl FnOnce(&Path) -> String) -> DbusDaemon {
        let dir = tempfile::Builder::new()
            .prefix("mdevreg-dbus-")
            .tempdir()
            .expect("create bus temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod bus temp dir");
        let socket = dir.path().join(SOCKET_NAME);
        fs::write(dir.path().join(CONFIG_NAME), config(&socket)).expect("write bus config");
        let mut bus = DbusDaemon {
            dir,
            child: None,
            _stdout: None,
            address: String::new(),
        };
        bus.spawn();
        bus
    }

    /// Spawns dbus-daemon on the configuration in the temp dir and reads its
    /// address. Panics when it does not start.
    fn spawn(&mut self) {
        let config_path = self.dir.path().join(CONFIG_NAME);
        let _ = fs::remove_file(self.dir.path().join(SOCKET_NAME));
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config_path.display()))
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
        if !address.starts_with("unix:path=") {
            let _ = child.kill();
            let status = child.wait();
            panic!(
                "dbus-daemon printed {line:?} and exited with {status:?}; config:\n{}",
                fs::read_to_string(&config_path).unwrap_or_default()
            );
        }
        self.child = Some(child);
        self._stdout = Some(stdout);
        self.address = address;
    }

    /// A bus where everyone may connect, own and call anything.
    pub fn start_permissive() -> DbusDaemon {
        DbusDaemon::start(permissive_config)
    }

    /// A bus like [`start_permissive`](Self::start_permissive) with every
    /// limit raised (see [`permissive_high_limits_config`]).
    pub fn start_permissive_high_limits() -> DbusDaemon {
        DbusDaemon::start(permissive_high_limits_config)
    }

    /// A system-bus-style bus (see [`system_bus_config`]) including `policies`.
    pub fn start_system_like(policies: &[PathBuf]) -> DbusDaemon {
        DbusDaemon::start(|socket| system_bus_config(socket, policies))
    }

    /// The D-Bus address, `unix:path=...,guid=...` (a new guid after
    /// [`restart`](Self::restart)).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The bus's temp dir (mode 0755), also usable for test files.
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

    /// Kills the bus and starts a new dbus-daemon with the same
    /// configuration on the same socket path; clients must reconnect.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// File names in the bus's temp dir.
const SOCKET_NAME: &str = "bus.sock";
const CONFIG_NAME: &str = "bus.conf";

const DOCTYPE: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">"#;

/// Everyone may connect, own every name and send everything.
pub fn permissive_config(socket: &Path) -> String {
    permissive_config_with(socket, "")
}

/// [`permissive_config`] with dbus-daemon's limits raised far above what a
/// test sends (message sizes, connections, match rules, pending replies,
/// timeouts), so that hostile or heavy clients meet the daemon under test,
/// not the bus's own limits.
pub fn permissive_high_limits_config(socket: &Path) -> String {
    permissive_config_with(socket, HIGH_LIMITS)
}

const HIGH_LIMITS: &str = r#"  <limit name="max_incoming_bytes">1000000000</limit>
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
"#;

/// The permissive policy listening on `socket`, with `extra` elements
/// (one per line, indented) before the end.
fn permissive_config_with(socket: &Path, extra: &str) -> String {
    format!(
        r#"{DOCTYPE}
<busconfig>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
{extra}</busconfig>
"#,
        socket.display()
    )
}

/// The policy part of Debian's /usr/share/dbus-1/system.conf (default
/// context: nobody owns names, method calls are denied unless a policy file
/// allows them, replies and signals pass), listening on `socket`, without
/// the daemon-process settings (user, fork, pid file, activation helper),
/// followed by an `<include>` of each file in `policies`.
pub fn system_bus_config(socket: &Path, policies: &[PathBuf]) -> String {
    let includes: String = policies
        .iter()
        .map(|path| format!("  <include>{}</include>\n", path.display()))
        .collect();
    format!(
        r#"{DOCTYPE}
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus" />
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus.Debug.Stats"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
{includes}</busconfig>
"#,
        socket.display()
    )
}
