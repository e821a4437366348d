//! Spoofing (the class of CVE-2009-1185, where udev trusted netlink messages
//! from userspace): forged uevents sent to a running `mdevregd` in its own
//! network namespace must not change the registry, and each is counted in
//! the `Stats` property.
//!
//! The forged messages name a parent that exists in the fake sysfs tree but
//! was added silently after the daemon started (no kernel event): if the
//! daemon accepted any of them as a hint it would re-read that parent and
//! register it, so the test can fail. A real kernel-injected event for the
//! same devpath then registers it (the positive control), and injected
//! events for devpaths without an mdev tree change nothing.

mod common;

use std::collections::BTreeMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use common::daemon::Setup;
use common::helper_process::{helper_role, helper_say, run_helper, run_helper_as};
use common::prereq::run;
use common::registry_client::{stats, RegistrySnapshot};
use common::sysfs_fixture::{FakeSysfs, ParentSpec};
use common::uevent_netlink::userspace_uevent_socket;
use mdevreg::netlink::{RecvOutcome, UeventEmitter, UeventListener};
use mdevreg::uevent::{
    accept_kernel, encode_injection, encode_kernel, encode_libudev, Reject, Uevent,
};
use nix::sys::socket::{self, ControlMessage, MsgFlags, NetlinkAddr, UnixCredentials};

/// Forged messages sent per row.
const COPIES: u64 = 50;
/// How long the daemon gets to count a message.
const WAIT: Duration = Duration::from_secs(10);

/// The helper run as uid 65534: it sends the forged event as an ordinary
/// user would (a unicast to the daemon's port) and reports whether the
/// kernel lets it multicast to group 1 or inject.
#[test]
#[ignore = "entry point of helper processes (common::helper_process), not a test"]
fn helper_process() {
    match helper_role().as_deref() {
        None => {}
        Some("forge-as-nobody") => forge_as_nobody(),
        Some(other) => panic!("unknown helper role {other}"),
    }
}

fn forge_as_nobody() {
    let port: u32 = std::env::var("MDEVREG_TEST_PORT").unwrap().parse().unwrap();
    let devpath = std::env::var("MDEVREG_TEST_DEVPATH").unwrap();
    let copies: u64 = std::env::var("MDEVREG_TEST_COPIES")
        .unwrap()
        .parse()
        .unwrap();
    helper_say(&format!("uid {}", nix::unistd::getuid()));
    let socket = userspace_uevent_socket();
    let bytes = encode_kernel(&forged_event(&devpath, 1)).unwrap();
    let multicast = socket::sendto(
        socket.as_raw_fd(),
        &bytes,
        &NetlinkAddr::new(0, 1),
        MsgFlags::empty(),
    );
    helper_say(&format!("multicast {multicast:?}"));
    let injection = encode_injection(&injectable_event(&devpath, "registered"), 1).unwrap();
    let inject = socket::sendto(
        socket.as_raw_fd(),
        &injection,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .and_then(|_| {
        // The kernel answers an injection with an NLMSG_ERROR carrying -errno.
        let mut reply = [0u8; 256];
        let length = socket::recv(socket.as_raw_fd(), &mut reply, MsgFlags::empty())?;
        let status = i32::from_ne_bytes(reply[16..20].try_into().unwrap());
        assert!(length >= 20);
        Ok(status)
    });
    helper_say(&format!("inject {inject:?}"));
    let unicast: nix::Result<u64> = (0..copies)
        .map(|_| {
            socket::sendto(
                socket.as_raw_fd(),
                &bytes,
                &NetlinkAddr::new(port, 0),
                MsgFlags::empty(),
            )
        })
        .try_fold(0, |sent, result| result.map(|_| sent + 1));
    helper_say(&format!("unicast {unicast:?}"));
    if multicast.is_ok() {
        // With CAP_NET_ADMIN: the multicast went out, send the rest.
        for _ in 1..copies {
            let _ = socket::sendto(
                socket.as_raw_fd(),
                &bytes,
                &NetlinkAddr::new(0, 1),
                MsgFlags::empty(),
            );
        }
    }
}

/// A group-1-looking uevent for `devpath` that says a parent registered.
fn forged_event(devpath: &str, seqnum: u64) -> Uevent {
    Uevent::new("change", devpath)
        .with("SUBSYSTEM", "mdpy")
        .with("MDEV_STATE", "registered")
        .with("SEQNUM", seqnum.to_string())
}

/// The same without SEQNUM, as injections carry it.
fn injectable_event(devpath: &str, state: &str) -> Uevent {
    Uevent::new("change", devpath)
        .with("SUBSYSTEM", "mdpy")
        .with("MDEV_STATE", state)
}

/// The netlink port of the daemon's group-1 listener: the
/// NETLINK_KOBJECT_UEVENT socket in group 1 among the daemon's descriptors.
fn daemon_listener_port(pid: u32) -> u32 {
    let mut inodes = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list daemon fds") {
        let Ok(target) = std::fs::read_link(entry.unwrap().path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            inodes.push(inode.to_owned());
        }
    }
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/netlink")).unwrap();
    // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
    let ports: Vec<u32> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let wanted = fields.len() >= 10
                && fields[1] == "15"
                && fields[3] == "00000001"
                && inodes.iter().any(|inode| inode == fields[9]);
            wanted.then(|| fields[2].parse().ok()).flatten()
        })
        .collect();
    assert_eq!(
        ports.len(),
        1,
        "daemon's uevent listener ports: {ports:?}\n{table}"
    );
    ports[0]
}

/// Sends `bytes` to `to` with explicit SCM_CREDENTIALS.
fn send_with_credentials(socket: &OwnedFd, bytes: &[u8], to: NetlinkAddr, uid: u32) {
    let credentials = UnixCredentials::from(nix::libc::ucred {
        pid: std::process::id() as i32,
        uid,
        gid: uid,
    });
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmCredentials(&credentials)];
    socket::sendmsg(
        socket.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::empty(),
        Some(&to),
    )
    .expect("sendmsg with credentials");
}

/// Counters that grew from `before` to `after`, with their growth.
fn grown(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(key, value)| {
            let old = before.get(key).copied().unwrap_or(0);
            (*value > old).then(|| (key.clone(), value - old))
        })
        .collect()
}

/// Waits until a counter whose name contains one of `keys` grew by at least
/// `count` since `before`; returns all counters that grew. Panics after WAIT.
async fn wait_counted(
    setup: &Setup,
    before: &BTreeMap<String, u64>,
    keys: &[&str],
    count: u64,
    row: &str,
) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let delta = grown(before, &stats(&setup.client).await);
        let counted: u64 = delta
            .iter()
            .filter(|(key, _)| keys.iter().any(|wanted| key.contains(wanted)))
            .map(|(_, grew)| grew)
            .sum();
        if counted >= count {
            return delta;
        }
        assert!(
            Instant::now() < deadline,
            "{row}: {count} messages not counted under {keys:?} within {WAIT:?}; counters grew: {delta:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts the registry is `expected` and the daemon alive.
async fn assert_unchanged(setup: &mut Setup, expected: &RegistrySnapshot, row: &str) {
    setup.daemon.assert_alive(row);
    let now = setup.snapshot().await;
    assert_eq!(
        &now,
        expected,
        "{row}: the registry changed; stats {:?}; log:\n{}",
        stats(&setup.client).await,
        setup.daemon.log_tail()
    );
}

/// The next outcome about `devpath` (or any rejection) on the test's own
/// listener: proves the forged message really went out on group 1 and
/// shows what the trust check makes of it.
async fn watched(listener: &mut UeventListener, devpath: &str) -> RecvOutcome {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let outcome = tokio::time::timeout_at(deadline, listener.recv())
            .await
            .unwrap_or_else(|_| panic!("nothing about {devpath} on group 1 within {WAIT:?}"))
            .expect("recv");
        match &outcome {
            RecvOutcome::Event(event) if event.devpath != devpath => continue,
            _ => return outcome,
        }
    }
}

/// Drains the test listener (host events leak into the namespace).
fn drain(listener: &mut UeventListener) {
    while let Ok(Some(_)) = listener.try_recv() {}
}

#[test]
fn spoofed_uevents_change_nothing() {
    run("spoofed_uevents_change_nothing", &["setpriv"], || async {
        let tree = FakeSysfs::new();
        tree.add_parent(&ParentSpec::mtty());
        let mut setup = Setup::start(tree.root(), |options| options.emit = "none").await;
        let baseline = setup.snapshot().await;
        assert_eq!(baseline.names(), ["mtty"], "kernel parent read at start");

        // The bait: a parent in sysfs the daemon has not been told about.
        let hidden = ParentSpec::mdpy();
        tree.add_parent(&hidden);
        let devpath = hidden.devpath.clone();
        let port = daemon_listener_port(setup.daemon.pid());
        let mut watcher = UeventListener::open().expect("test listener");
        let forger = userspace_uevent_socket();
        let forger_port = socket::getsockname::<NetlinkAddr>(forger.as_raw_fd())
            .unwrap()
            .pid();
        let mut tried = 0u64;

        // 1. Multicast on group 1 from a userspace port (root may send it).
        let before = stats(&setup.client).await;
        for copy in 0..COPIES {
            let bytes = encode_kernel(&forged_event(&devpath, 1_000_000 + copy)).unwrap();
            socket::sendto(
                forger.as_raw_fd(),
                &bytes,
                &NetlinkAddr::new(0, 1),
                MsgFlags::empty(),
            )
            .expect("multicast to group 1");
        }
        assert_eq!(
            watched(&mut watcher, &devpath).await,
            RecvOutcome::Rejected(Reject::NotFromKernelPort { port: forger_port })
        );
        let delta = wait_counted(
            &setup,
            &before,
            &["rejected_not_kernel_port"],
            COPIES,
            "group-1 multicast",
        )
        .await;
        assert_unchanged(&mut setup, &baseline, "group-1 multicast").await;
        eprintln!("ROW multicast-from-userspace-port: {COPIES} sent, counted {delta:?}");
        tried += COPIES;

        // 2. Unicast straight to the daemon's port, from root.
        let before = stats(&setup.client).await;
        let bytes = encode_kernel(&forged_event(&devpath, 7)).unwrap();
        for _ in 0..COPIES {
            socket::sendto(
                forger.as_raw_fd(),
                &bytes,
                &NetlinkAddr::new(port, 0),
                MsgFlags::empty(),
            )
            .expect("unicast to the daemon");
        }
        let delta = wait_counted(
            &setup,
            &before,
            &["rejected_not_kernel_group"],
            COPIES,
            "unicast",
        )
        .await;
        assert_unchanged(&mut setup, &baseline, "unicast to the daemon").await;
        eprintln!("ROW unicast-to-daemon-port: {COPIES} sent, counted {delta:?}");
        tried += COPIES;

        // 3. An unprivileged process can send the daemon nothing at all:
        //    the kernel refuses it unicast to another port, multicast on
        //    group 1, and injection (NETLINK_KOBJECT_UEVENT allows only
        //    non-root *receiving*).
        let helper_env = [
            ("MDEVREG_TEST_PORT", port.to_string()),
            ("MDEVREG_TEST_DEVPATH", devpath.clone()),
            ("MDEVREG_TEST_COPIES", COPIES.to_string()),
        ];
        let before = stats(&setup.client).await;
        let lines = run_helper("forge-as-nobody", &helper_env, true);
        let eperm = -nix::libc::EPERM;
        assert_eq!(
            lines,
            [
                "uid 65534".to_owned(),
                "multicast Err(EPERM)".to_owned(),
                format!("inject Ok({eperm})"),
                "unicast Err(EPERM)".to_owned(),
            ]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(grown(&before, &stats(&setup.client).await), BTreeMap::new());
        assert_unchanged(&mut setup, &baseline, "uid 65534 without capabilities").await;
        eprintln!("ROW uid-65534-without-capabilities: multicast, unicast and injection refused by the kernel (EPERM)");
        tried += 3;

        // 3b. The same uid with CAP_NET_ADMIN (a capability-holding service)
        //     gets its unicast and group-1 multicast through, carrying its
        //     real uid: both refused by the daemon.
        drain(&mut watcher);
        let before = stats(&setup.client).await;
        let lines = run_helper_as(
            "forge-as-nobody",
            &helper_env,
            Some(&["--inh-caps=+net_admin", "--ambient-caps=+net_admin"]),
        );
        assert_eq!(
            lines,
            [
                "uid 65534".to_owned(),
                "multicast Ok(".to_owned()
                    + &encode_kernel(&forged_event(&devpath, 1))
                        .unwrap()
                        .len()
                        .to_string()
                    + ")",
                format!("inject Ok({eperm})"),
                format!("unicast Ok({COPIES})"),
            ]
        );
        let delta = wait_counted(
            &setup,
            &before,
            &["rejected_not_kernel_group"],
            COPIES,
            "uid 65534 unicast",
        )
        .await;
        let delta_port = wait_counted(
            &setup,
            &before,
            &["rejected_not_kernel_port"],
            COPIES,
            "uid 65534 multicast",
        )
        .await;
        assert_unchanged(&mut setup, &baseline, "uid 65534 with CAP_NET_ADMIN").await;
        eprintln!(
            "ROW uid-65534-with-cap-net-admin: {} sent, counted {delta:?} {delta_port:?}",
            2 * COPIES
        );
        tried += 2 * COPIES;

        // 4. Credentials claiming uid 65534 on a message the kernel itself
        //    broadcasts (root may claim any uid): port 0, group 1, uid != 0.
        drain(&mut watcher);
        let before = stats(&setup.client).await;
        let injection = encode_injection(&injectable_event(&devpath, "registered"), 1).unwrap();
        for _ in 0..COPIES {
            send_with_credentials(&forger, &injection, NetlinkAddr::new(0, 0), common::NOBODY);
        }
        assert_eq!(
            watched(&mut watcher, &devpath).await,
            RecvOutcome::Rejected(Reject::NonRootSender {
                uid: common::NOBODY
            })
        );
        let delta = wait_counted(
            &setup,
            &before,
            &["rejected_non_root_sender"],
            COPIES,
            "uid 65534 via kernel",
        )
        .await;
        assert_unchanged(&mut setup, &baseline, "kernel broadcast with uid 65534").await;
        eprintln!("ROW injected-with-uid-65534: {COPIES} sent, counted {delta:?}");
        tried += COPIES;

        // 5. A libudev-format message on group 1 from userspace.
        drain(&mut watcher);
        let before = stats(&setup.client).await;
        let libudev = encode_libudev(&forged_event(&devpath, 9), &["mdevreg"]).unwrap();
        for _ in 0..COPIES {
            socket::sendto(
                forger.as_raw_fd(),
                &libudev,
                &NetlinkAddr::new(0, 1),
                MsgFlags::empty(),
            )
            .expect("libudev message on group 1");
        }
        let delta = wait_counted(
            &setup,
            &before,
            &["rejected_not_kernel_port"],
            COPIES,
            "libudev on group 1",
        )
        .await;
        assert_unchanged(&mut setup, &baseline, "libudev message on group 1").await;
        eprintln!("ROW libudev-on-group-1: {COPIES} sent, counted {delta:?}");
        tried += COPIES;

        // 6. Garbage and truncated datagrams on group 1 and by unicast.
        let before = stats(&setup.client).await;
        let garbage: [&[u8]; 5] = [
            b"",
            b"\0\0\0\0",
            b"change@/devices/virtual/mdpy/mdpy",
            &[0xff; 9000],
            b"change@/devices/virtual/mdpy/mdpy\0MDEV_STATE=registered\0SEQNUM=x\0",
        ];
        for bytes in garbage {
            for to in [NetlinkAddr::new(0, 1), NetlinkAddr::new(port, 0)] {
                let _ = socket::sendto(forger.as_raw_fd(), bytes, &to, MsgFlags::empty());
            }
        }
        let delta = wait_counted(&setup, &before, &["uevents_rejected_"], 8, "garbage").await;
        assert_unchanged(&mut setup, &baseline, "garbage datagrams").await;
        eprintln!("ROW garbage-datagrams: 10 sent, counted {delta:?}");
        tried += 10;

        // 7. A libudev-format message on group 2 with root credentials: the
        //    daemon does not listen there; nothing may change.
        let libudev = encode_libudev(&forged_event(&devpath, 11), &[]).unwrap();
        for _ in 0..COPIES {
            send_with_credentials(&forger, &libudev, NetlinkAddr::new(0, 2), 0);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_unchanged(&mut setup, &baseline, "libudev message on group 2").await;
        eprintln!("ROW libudev-on-group-2: {COPIES} sent, none accepted");
        tried += COPIES;

        // Positive control: a real kernel event for the hidden parent's
        // devpath makes the daemon read it. Without this, every row above
        // would pass against a daemon that ignores netlink altogether.
        let mut emitter = UeventEmitter::open().expect("emitter");
        emitter
            .inject(&injectable_event(&devpath, "registered"))
            .expect("inject as root");
        let deadline = Instant::now() + WAIT;
        let registered = loop {
            let now = setup.snapshot().await;
            if now.names().contains(&"mdpy".to_owned()) {
                break now;
            }
            assert!(
                Instant::now() < deadline,
                "a genuine kernel event did not register the parent; log:\n{}",
                setup.daemon.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(registered.names(), ["mdpy", "mtty"]);

        // 8. Genuine (injected, kernel-broadcast, uid 0) events that sysfs
        //    does not back: no mdev tree at the devpath, a parent said to be
        //    gone that is still there, paths escaping the tree, an instance
        //    that does not exist.
        // Devpaths with no mdev tree at all: read, found to be nothing,
        // counted as ignored.
        let no_tree = [
            injectable_event("/devices/virtual/evil/evil", "registered"),
            injectable_event("/devices/pci0000:00/0000:00:1f.0", "registered"),
            Uevent::new(
                "add",
                "/devices/virtual/evil/evil/00000000-0000-4000-8000-00000000dead",
            )
            .with("SUBSYSTEM", "mdev"),
        ];
        // Claims about real parents that sysfs contradicts: re-read, no change.
        let contradicted = [
            injectable_event("/devices/virtual/mtty/mtty", "unregistered"),
            injectable_event("/devices/virtual/mtty/mtty/../../../../etc", "registered"),
            Uevent::new("remove", "/devices/virtual/mtty/mtty").with("SUBSYSTEM", "mtty"),
            Uevent::new(
                "add",
                "/devices/virtual/mdpy/mdpy/00000000-0000-4000-8000-00000000dead",
            )
            .with("SUBSYSTEM", "mdev")
            .with("MDEV_TYPE", "mdpy-vga"),
        ];
        let before = stats(&setup.client).await;
        let per_event = COPIES / 5;
        for event in no_tree.iter().chain(&contradicted) {
            for _ in 0..per_event {
                emitter.inject(event).expect("inject");
            }
        }
        let injected = per_event * (no_tree.len() + contradicted.len()) as u64;
        let delta =
            wait_counted(&setup, &before, &["uevents_received"], injected, "injected").await;
        assert_unchanged(
            &mut setup,
            &registered,
            "injected events without an mdev tree",
        )
        .await;
        // Each event without an mdev tree should be counted as ignored.
        let no_tree_sent = per_event * no_tree.len() as u64;
        let ignored = grown(&before, &stats(&setup.client).await)
            .get("uevents_ignored")
            .copied()
            .unwrap_or(0);
        eprintln!(
            "ROW injected-without-mdev-tree: {no_tree_sent} injected, uevents_ignored +{ignored}"
        );
        eprintln!(
            "ROW injected-contradicted-by-sysfs: {} injected, counted {delta:?}",
            per_event * contradicted.len() as u64
        );
        setup.daemon.assert_no_panic("after all spoofing rows");
        tried += injected;
        eprintln!("TOTAL spoofed messages: {tried}");

        // The same counters through the CLI (`mdevreg stats --json`).
        let property = stats(&setup.client).await;
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_mdevreg"))
            .args(["--bus", setup.bus.address(), "stats", "--json"])
            .output()
            .expect("run mdevreg stats");
        assert!(
            output.status.success(),
            "mdevreg stats: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let document: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("mdevreg stats --json prints JSON");
        for key in [
            "uevents_rejected_not_kernel_port",
            "uevents_rejected_not_kernel_group",
            "uevents_rejected_non_root_sender",
        ] {
            let shown = document["counters"][key].as_u64();
            assert_eq!(shown, property.get(key).copied(), "{key} in mdevreg stats");
            assert!(shown.unwrap_or(0) >= COPIES, "{key}: {shown:?}");
        }
        assert!(
            ignored >= no_tree_sent,
            "uevents_ignored must count every event without an mdev tree: {no_tree_sent} sent, +{ignored} counted (all else passed)"
        );
    });
}

/// Messages without SCM_CREDENTIALS cannot be produced from outside: the
/// kernel attaches the sender's credentials to every netlink datagram for a
/// receiver with SO_PASSCRED. The daemon's receive path (the same function
/// the daemon calls) refuses them all the same.
#[test]
fn messages_without_credentials_are_rejected() {
    let bytes = encode_kernel(&forged_event("/devices/virtual/mdpy/mdpy", 3)).unwrap();
    assert_eq!(
        accept_kernel(0, 1, None, &bytes),
        Err(Reject::NoCredentials)
    );
    // Everything else right, with credentials: accepted.
    let root = mdevreg::uevent::Credentials {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    assert!(accept_kernel(0, 1, Some(root), &bytes).is_ok());
}
