//! The embedded busd bus: real zbus clients and real busctl talk through it.

use std::process::Command;
use std::time::Duration;

mod common;

use common::prereq;
use mdevreg::bus_host::EmbeddedBus;
use mdevreg::label::BUS_NAME;

const TEST_PATH: &str = "/org/mdevreg/Test";
const TEST_INTERFACE: &str = "org.mdevreg.Test1";

struct Echo;

#[zbus::interface(name = "org.mdevreg.Test1")]
impl Echo {
    fn echo(&self, text: String) -> String {
        format!("echo: {text}")
    }
}

async fn serve_echo(address: &str) -> zbus::Connection {
    zbus::connection::Builder::address(address)
        .name(BUS_NAME)
        // zbus allows replacement by default; busd has no policy to stop a
        // client from taking the name over, so the daemon must refuse it.
        .allow_name_replacements(false)
        .serve_at(TEST_PATH, Echo)
        .build()
        .await
        .expect("service connection")
}

async fn call_echo(client: &zbus::Connection, text: &str) -> zbus::Result<String> {
    let reply = client
        .call_method(
            Some(BUS_NAME),
            TEST_PATH,
            Some(TEST_INTERFACE),
            "Echo",
            &(text,),
        )
        .await?;
    reply.body().deserialize::<String>()
}

/// Runs `busctl --address=ADDRESS ARGS...`, optionally inside `unshare -n`.
fn busctl(address: &str, args: &[&str], new_netns: bool) -> std::process::Output {
    let mut command = if new_netns {
        let mut command = Command::new("unshare");
        command.args(["-n", "busctl"]);
        command
    } else {
        Command::new("busctl")
    };
    command
        .arg(format!("--address={address}"))
        .args(args)
        .output()
        .expect("run busctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_talk_through_the_embedded_bus() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bus");
    let bus = EmbeddedBus::start(Some(&format!("unix:path={}", socket.display()))).unwrap();
    assert!(bus.address().starts_with("unix:path="), "{}", bus.address());
    assert!(bus.address().contains(",guid="), "{}", bus.address());
    assert_eq!(bus.socket_path(), Some(socket.as_path()));
    assert!(bus.is_running());

    let service = serve_echo(bus.address()).await;
    let client = zbus::connection::Builder::address(bus.address())
        .build()
        .await
        .unwrap();
    assert_eq!(call_echo(&client, "hi").await.unwrap(), "echo: hi");

    // The name is owned once; another client cannot take it over.
    let dbus = zbus::fdo::DBusProxy::new(&client).await.unwrap();
    let reply = dbus
        .request_name(
            BUS_NAME.try_into().unwrap(),
            zbus::fdo::RequestNameFlags::REPLACE_EXISTING
                | zbus::fdo::RequestNameFlags::DO_NOT_QUEUE,
        )
        .await
        .unwrap();
    assert_eq!(reply, zbus::fdo::RequestNameReply::Exists);
    // The bus tells who is calling: what the daemon's uid check relies on.
    let uid = dbus
        .get_connection_unix_user(service.unique_name().unwrap().clone().into())
        .await
        .unwrap();
    assert_eq!(uid, nix::unistd::getuid().as_raw());

    if prereq::require_tools("two_clients_talk_through_the_embedded_bus", &["busctl"]) {
        let address = bus.address().to_owned();
        let listed = tokio::task::spawn_blocking(move || busctl(&address, &["list"], false))
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&listed.stdout);
        assert!(
            listed.status.success(),
            "busctl list: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
        assert!(stdout.contains(BUS_NAME), "{stdout}");

        let address = bus.address().to_owned();
        let called = tokio::task::spawn_blocking(move || {
            busctl(
                &address,
                &[
                    "call",
                    BUS_NAME,
                    TEST_PATH,
                    TEST_INTERFACE,
                    "Echo",
                    "s",
                    "from busctl",
                ],
                false,
            )
        })
        .await
        .unwrap();
        assert!(
            called.status.success(),
            "busctl call: {}",
            String::from_utf8_lossy(&called.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&called.stdout).trim(),
            "s \"echo: from busctl\""
        );
    }

    // Stopping disconnects the clients and removes the socket.
    tokio::task::spawn_blocking(move || bus.stop())
        .await
        .unwrap();
    assert!(!socket.exists());
    let after_stop = tokio::time::timeout(Duration::from_secs(10), call_echo(&client, "late"))
        .await
        .expect("a call after stop must fail, not hang");
    assert!(after_stop.is_err(), "{after_stop:?}");
    drop(service);
}

#[test]
fn default_address_is_a_path_socket_in_a_fresh_directory() {
    let bus = EmbeddedBus::start(None).unwrap();
    assert!(bus.address().starts_with("unix:path="), "{}", bus.address());
    let socket = bus.socket_path().unwrap().to_owned();
    let dir = socket.parent().unwrap().to_owned();
    assert!(
        dir.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("mdevreg-bus-"),
        "{}",
        dir.display()
    );
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let metadata = std::fs::metadata(&socket).unwrap();
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.permissions().mode() & 0o777, 0o666);

    // A second bus gets its own directory.
    let other = EmbeddedBus::start(None).unwrap();
    assert_ne!(other.address(), bus.address());
    drop(other);

    drop(bus);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn reachable_from_another_network_namespace() {
    const TEST: &str = "reachable_from_another_network_namespace";
    if !prereq::require_tools(TEST, &["busctl", "unshare"]) {
        return;
    }
    let probe = Command::new("unshare").args(["-n", "true"]).status();
    if !probe.is_ok_and(|status| status.success()) {
        prereq::missing_prerequisite::<()>(TEST, "unshare -n not permitted (needs root)");
        return;
    }
    let bus = EmbeddedBus::start(None).unwrap();
    let listed = busctl(bus.address(), &["list"], true);
    assert!(
        listed.status.success(),
        "busctl list in a new netns: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("org.freedesktop.DBus"));
}

#[test]
fn listening_on_a_taken_path_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix:path={}", dir.path().join("bus").display());
    let first = EmbeddedBus::start(Some(&address)).unwrap();
    let second = EmbeddedBus::start(Some(&address));
    assert!(second.is_err());
    drop(first);
}
