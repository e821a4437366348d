//! The text logger end to end: zbus's `tracing` events reach `log` at trace
//! level with `-vv`, and are hidden at the default verbosity. Each case runs
//! in its own process (the logger is global), started from this binary.

use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};

use mdevreg::bus_host::EmbeddedBus;

/// Env var telling a child process which verbosity to run with.
const CHILD_ENV: &str = "MDEVREG_LOGGING_TEST_VERBOSITY";

#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// In the child: log through the real logger while zbus talks to a bus,
/// then print what was logged.
#[test]
fn child_logs_a_bus_session() {
    let Some(verbosity) = std::env::var(CHILD_ENV).ok() else {
        return; // Only meaningful when started by the tests below.
    };
    let buffer = SharedBuffer::default();
    mdevreg::logging::init_to(verbosity.parse().unwrap(), Box::new(buffer.clone())).unwrap();
    log::info!(target: "mdevreg::test", "own info line");
    log::debug!(target: "mdevreg::test", "own debug line");

    let bus = EmbeddedBus::start(None).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let connection = zbus::connection::Builder::address(bus.address())
            .build()
            .await
            .unwrap();
        let dbus = zbus::fdo::DBusProxy::new(&connection).await.unwrap();
        dbus.list_names().await.unwrap();
    });
    drop(bus);
    log::logger().flush();
    let logged = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    println!("BEGIN-LOG\n{logged}END-LOG");
}

fn run_child(verbosity: u8) -> String {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_logs_a_bus_session",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, verbosity.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let start = stdout.find("BEGIN-LOG\n").expect("child log") + "BEGIN-LOG\n".len();
    let end = stdout.find("END-LOG").expect("child log end");
    stdout[start..end].to_owned()
}

#[test]
fn very_verbose_shows_zbus_trace_events() {
    let logged = run_child(2);
    assert!(
        logged.contains(": INFO  mdevreg::test: own info line"),
        "{logged}"
    );
    assert!(
        logged.contains(": DEBUG mdevreg::test: own debug line"),
        "{logged}"
    );
    assert!(
        logged.lines().any(|line| line.contains("TRACE zbus")),
        "no zbus trace events:\n{logged}"
    );
    assert!(
        logged.lines().any(|line| line.contains(" busd")),
        "no busd events:\n{logged}"
    );
}

#[test]
fn default_verbosity_hides_dependency_chatter() {
    let logged = run_child(0);
    assert!(logged.contains("own info line"), "{logged}");
    assert!(!logged.contains("own debug line"), "{logged}");
    for line in logged.lines() {
        let dependency = !line.contains(" mdevreg::");
        let level_shown = line.contains(" WARN ") || line.contains(" ERROR ");
        assert!(
            !dependency || level_shown,
            "dependency line at default verbosity: {line}"
        );
    }
}
