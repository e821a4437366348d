//! The netlink paths against the real kernel, each test inside its own network
//! namespace: injection and reception on group 1, rejection of userspace
//! senders, receive-buffer overflow, and libudev-format broadcasts read by a
//! real libudev monitor and by `udevadm monitor`. Needs root; without it the
//! tests skip (or fail when `CI` is set).

mod common;

use common::uevent_netlink::{poll_monitor, userspace_uevent_socket};

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::netns::{in_new_netns, runtime};
use common::prereq::missing_prerequisite;
use mdevreg::netlink::{RecvOutcome, SeqnumTracker, UeventEmitter, UeventListener};
use mdevreg::uevent::{encode_injection, encode_kernel, Reject, Uevent};
use nix::sys::socket::{self, MsgFlags, NetlinkAddr};

const WAIT: Duration = Duration::from_secs(5);

fn mdevreg_event(name: &str) -> Uevent {
    Uevent::new("change", format!("/devices/virtual/mdevreg/{name}"))
        .with("SUBSYSTEM", "mdevreg")
        .with("MDEV_STATE", "registered")
        .with("MDEV_PARENT", name)
        .with("MDEVREG_SEQNUM", "1")
}

/// Receives until an outcome about `devpath` (or any rejection/overflow)
/// arrives; events of host devices leak into the namespace and are skipped.
async fn next_outcome_for(listener: &mut UeventListener, devpath: &str) -> RecvOutcome {
    const PROBE_DEVPATH: &str = "/devices/virtual/mdevreg/probe";
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let outcome = tokio::time::timeout_at(deadline, listener.recv())
            .await
            .unwrap_or_else(|_| panic!("no uevent for {devpath} within {WAIT:?}"))
            .expect("recv");
        match &outcome {
            RecvOutcome::Event(event) if event.devpath == PROBE_DEVPATH => {
                panic!("the injection probe was broadcast")
            }
            RecvOutcome::Event(event) if event.devpath != devpath => continue,
            _ => return outcome,
        }
    }
}

fn port_of(fd: &std::os::fd::OwnedFd) -> u32 {
    socket::getsockname::<NetlinkAddr>(fd.as_raw_fd())
        .expect("getsockname")
        .pid()
}

#[test]
fn injected_event_comes_back_from_the_kernel() {
    in_new_netns("injected_event_comes_back_from_the_kernel", || {
        runtime().block_on(async {
            let mut listener = UeventListener::open().expect("listener");
            let mut emitter = UeventEmitter::open().expect("emitter");
            assert!(emitter.probe_injection().expect("probe"), "root may inject");

            let sent = mdevreg_event("inject1");
            emitter.inject(&sent).expect("inject");
            let RecvOutcome::Event(received) = next_outcome_for(&mut listener, &sent.devpath).await
            else {
                panic!("injected event rejected");
            };
            // Accepted means: group 1, sender port 0, SCM_CREDENTIALS uid 0.
            let seqnum = received.seqnum().expect("kernel appended SEQNUM");
            let mut expected = sent.clone();
            expected.env.push(("SEQNUM".into(), seqnum.to_string()));
            assert_eq!(received, expected);

            // A second injection gets a later number.
            emitter.inject(&sent).expect("inject again");
            let RecvOutcome::Event(again) = next_outcome_for(&mut listener, &sent.devpath).await
            else {
                panic!("second injected event rejected");
            };
            assert!(again.seqnum().unwrap() > seqnum);

            // The largest injection the encoder allows fits the kernel's
            // 2048-byte limit with a SEQNUM appended, and decodes back.
            let mut largest = Uevent::new("change", "/devices/virtual/mdevreg/big")
                .with("SUBSYSTEM", "mdevreg")
                .with("FILL", "");
            let size = encode_injection(&largest, 0).unwrap().len();
            largest.set("FILL", "x".repeat(2020 - size));
            assert_eq!(encode_injection(&largest, 0).unwrap().len(), 2020);
            emitter.inject(&largest).expect("inject the largest event");
            let RecvOutcome::Event(big) = next_outcome_for(&mut listener, &largest.devpath).await
            else {
                panic!("largest injected event rejected");
            };
            assert_eq!(big.env[..big.env.len() - 1], largest.env[..]);
            // One byte more is refused by the encoder, not the kernel.
            largest.set("FILL", "x".repeat(2021 - size));
            let error = emitter.inject(&largest).unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);

            // SEQNUM in an injected event is refused before sending.
            let with_seqnum = sent.clone().with("SEQNUM", "5");
            let error = emitter.inject(&with_seqnum).unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
        })
    });
}

#[test]
fn userspace_senders_are_rejected() {
    in_new_netns("userspace_senders_are_rejected", || {
        runtime().block_on(async {
            let mut listener = UeventListener::open().expect("listener");
            let listener_port = listener.port().expect("port");
            let forger = userspace_uevent_socket();
            let forger_port = port_of(&forger);
            let forged = mdevreg_event("forged").with("SEQNUM", "99");
            let bytes = encode_kernel(&forged).unwrap();

            // Root may multicast to group 1 (CAP_NET_ADMIN); the message is
            // delivered, from the sender's own port, and must be rejected.
            socket::sendto(
                forger.as_raw_fd(),
                &bytes,
                &NetlinkAddr::new(0, 1),
                MsgFlags::empty(),
            )
            .expect("multicast to group 1 as root");
            assert_eq!(
                next_outcome_for(&mut listener, &forged.devpath).await,
                RecvOutcome::Rejected(Reject::NotFromKernelPort { port: forger_port })
            );

            // A unicast straight to the listener carries no group.
            socket::sendto(
                forger.as_raw_fd(),
                &bytes,
                &NetlinkAddr::new(listener_port, 0),
                MsgFlags::empty(),
            )
            .expect("unicast to the listener");
            assert_eq!(
                next_outcome_for(&mut listener, &forged.devpath).await,
                RecvOutcome::Rejected(Reject::NotKernelGroup { groups: 0 })
            );
        })
    });
}

#[test]
fn small_receive_buffer_overflows() {
    in_new_netns("small_receive_buffer_overflows", || {
        runtime().block_on(async {
            let mut listener = UeventListener::with_receive_buffer(4096).expect("listener");
            let granted = listener.receive_buffer_bytes().expect("rcvbuf");
            assert!(granted < 64 * 1024, "receive buffer {granted} not small");
            let mut emitter = UeventEmitter::open().expect("emitter");
            let sent = mdevreg_event("flood");
            let injected = 200;
            for _ in 0..injected {
                emitter.inject(&sent).expect("inject");
            }

            let mut overflows = 0;
            let mut received = 0;
            let mut tracker = SeqnumTracker::new();
            let mut gaps = 0;
            while let Some(outcome) = listener.try_recv().expect("try_recv") {
                match outcome {
                    RecvOutcome::Overflow => overflows += 1,
                    RecvOutcome::Event(event) if event.devpath == sent.devpath => {
                        received += 1;
                        gaps += usize::from(tracker.observe(event.seqnum().unwrap()).is_some());
                    }
                    RecvOutcome::Event(_) => {}
                    RecvOutcome::Rejected(reject) => panic!("rejected: {reject}"),
                }
            }
            assert!(overflows >= 1, "no ENOBUFS after {injected} events");
            assert!(received < injected, "all {received} events fitted");
            assert!(received > 0, "nothing queued at all");
            eprintln!("buffer {granted}: {received}/{injected} received, {overflows} overflow, {gaps} gaps");

            // After the overflow the socket keeps working.
            emitter.inject(&sent).expect("inject after overflow");
            assert!(matches!(
                next_outcome_for(&mut listener, &sent.devpath).await,
                RecvOutcome::Event(_)
            ));
        })
    });
}

/// libudev (and udevadm) monitors silently join no group unless udevd runs
/// (`/run/udev/control`) or `/dev` is a devtmpfs (sd-device's container check).
fn libudev_monitors_enabled() -> bool {
    let dev_is_devtmpfs = std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let fstype = fields.iter().skip_while(|f| **f != "-").nth(1);
            fields.get(4) == Some(&"/dev") && fstype == Some(&"devtmpfs")
        })
    });
    dev_is_devtmpfs || std::path::Path::new("/run/udev/control").exists()
}

#[test]
fn libudev_monitor_receives_broadcast() {
    if !libudev_monitors_enabled() {
        missing_prerequisite::<()>(
            "libudev_monitor_receives_broadcast",
            "libudev monitors are disabled here (no udevd, /dev not devtmpfs)",
        );
        return;
    }
    in_new_netns("libudev_monitor_receives_broadcast", || {
        let listen = |builder: std::io::Result<udev::MonitorBuilder>| {
            builder.and_then(|b| b.listen()).expect("libudev monitor")
        };
        let by_subsystem =
            listen(udev::MonitorBuilder::new().and_then(|b| b.match_subsystem("mdevreg")));
        let by_tag = listen(udev::MonitorBuilder::new().and_then(|b| b.match_tag("mdevreg")));
        let other_subsystem =
            listen(udev::MonitorBuilder::new().and_then(|b| b.match_subsystem("block")));
        let other_tag = listen(udev::MonitorBuilder::new().and_then(|b| b.match_tag("uaccess")));

        let emitter = UeventEmitter::open().expect("emitter");
        let event = mdevreg_event("bcast").with("SEQNUM", "4242");
        emitter
            .broadcast_libudev(&event, &["mdevreg"])
            .expect("broadcast");

        // The kernel's BPF filters compare our subsystem hash and tag bloom:
        // reception through a filter proves they are right.
        for monitor in [&by_subsystem, &by_tag] {
            let received = poll_monitor(monitor, WAIT).expect("libudev monitor got nothing");
            assert_eq!(received.event_type(), udev::EventType::Change);
            assert_eq!(received.sequence_number(), 4242);
            assert_eq!(received.devpath(), "/devices/virtual/mdevreg/bcast");
            let device = received.device();
            assert_eq!(device.subsystem().unwrap(), "mdevreg");
            assert_eq!(device.property_value("MDEV_STATE").unwrap(), "registered");
            assert_eq!(device.property_value("MDEV_PARENT").unwrap(), "bcast");
            assert_eq!(device.property_value("MDEVREG_SEQNUM").unwrap(), "1");
        }
        for monitor in [&other_subsystem, &other_tag] {
            assert!(poll_monitor(monitor, Duration::from_millis(300)).is_none());
        }
    });
}

#[test]
fn udevadm_monitor_prints_broadcast() {
    if !libudev_monitors_enabled() {
        missing_prerequisite::<()>(
            "udevadm_monitor_prints_broadcast",
            "libudev monitors are disabled here (no udevd, /dev not devtmpfs)",
        );
        return;
    }
    in_new_netns("udevadm_monitor_prints_broadcast", || {
        let spawned = Command::new("udevadm")
            .args([
                "monitor",
                "--udev",
                "--property",
                "--subsystem-match=mdevreg",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                return missing_prerequisite::<()>(
                    "udevadm_monitor_prints_broadcast",
                    &format!("udevadm: {error}"),
                );
            }
        };
        let (lines_tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let wait_for = |wanted: &str| -> Vec<String> {
            let deadline = Instant::now() + WAIT;
            let mut seen = Vec::new();
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match lines.recv_timeout(left) {
                    Ok(line) => {
                        let done = line.contains(wanted);
                        seen.push(line);
                        if done {
                            return seen;
                        }
                    }
                    Err(_) => break,
                }
            }
            panic!("udevadm never printed {wanted:?}; got {seen:?}");
        };
        // udevadm prints its banner once the socket is listening.
        wait_for("UDEV - the event which udev sends out");
        let emitter = UeventEmitter::open().expect("emitter");
        let event = mdevreg_event("udevadm").with("SEQNUM", "77");
        emitter.broadcast_libudev(&event, &[]).expect("broadcast");
        // Properties print in message order; SEQNUM is the last one.
        let printed = wait_for("SEQNUM=77");
        let _ = child.kill();
        let _ = child.wait();
        let text = printed.join("\n");
        assert!(
            text.contains("change   /devices/virtual/mdevreg/udevadm (mdevreg)"),
            "{text}"
        );
        assert!(text.contains("\nMDEV_STATE=registered\n"), "{text}");
        assert!(text.contains("\nMDEV_PARENT=udevadm\n"), "{text}");
        Some(())
    });
}

/// Env var that makes [`unprivileged_child`] run (it is `#[ignore]`d otherwise).
const CHILD_ENV: &str = "MDEVREG_NETLINK_UNPRIVILEGED_CHILD";

#[test]
fn unprivileged_sender_is_refused() {
    in_new_netns("unprivileged_sender_is_refused", || {
        use std::os::unix::process::CommandExt;
        // Re-run this test binary as nobody (no capabilities), inside this
        // namespace, executing only the child half below.
        let output = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "unprivileged_child", "--ignored", "--nocapture"])
            .env(CHILD_ENV, "1")
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run the unprivileged child");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains("1 passed"), "child did not run:\n{stdout}");
    });
}

#[test]
#[ignore = "runs only as the child of unprivileged_sender_is_refused"]
fn unprivileged_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    assert_ne!(nix::unistd::geteuid().as_raw(), 0, "child must not be root");
    let mut emitter = UeventEmitter::open().expect("emitter");
    assert!(
        !emitter.probe_injection().expect("probe"),
        "nobody may not inject"
    );
    let error = emitter.inject(&mdevreg_event("denied")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(nix::libc::EPERM), "{error}");
    let event = mdevreg_event("denied").with("SEQNUM", "1");
    let error = emitter.broadcast_libudev(&event, &[]).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(nix::libc::EPERM), "{error}");
    // Anyone may listen to group 1.
    let _listener = runtime()
        .block_on(async { UeventListener::open() })
        .expect("listener");
}
