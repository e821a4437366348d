//! Writes never queue behind reads: 40 concurrent `GetManagedObjects` on
//! the 1000 × 32 tree from an unprivileged caller (uid 65534 through
//! `setpriv`, allowed by the bus policy to read) while root registers and
//! unregisters a parent. Each root call must be answered promptly (the
//! issue's target is 50 ms; the bound asserted here is wider, for a loaded
//! 2-core machine) and the daemon's peak memory must stay bounded. The
//! figures are printed (`FIGURES readers-vs-writers: ...`) for
//! RELIABILITY.md. The owner-bound state file is on a tmpfs, as
//! `/run/mdevreg` is on a real host (on this machine `/run` is not).
//! `MDEVREG_TEST_DAEMON=target/release/mdevregd` measures a release build.
//!
//! The same run measures the bus's floor beside it: the same readers and
//! writes against a bare responder ([`common::bare_reader`]) on a bus of its
//! own, which answers `GetManagedObjects` with the daemon's own reply body
//! (one at a time) and the writes at once, without registry, state or
//! signals (`FIGURES readers-vs-writers bare: ...`). `MDEVREG_RVW_READERS`
//! sets the number of readers (default 40).
//!
//! Needs root (to drop to uid 65534), `setpriv` and `busctl`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use common::bare_reader::{BareReader, ManagedObjects};
use common::bus::DbusDaemon;
use common::daemon::{daemon_binary, wait_ready, Daemon, DaemonOptions, Setup};
use common::prereq::run;
use common::registry_client::{
    connect, good_type, register_raw, unregister, Dict, BUS_NAME, ROOT_PATH,
};
use common::registry_signals::{next_signal, registry_signals};
use common::socket_proxy::SocketProxy;
use common::sysfs_fixture::{many_parents, FakeSysfs};
use zbus::Connection;

/// Concurrent readers, unless `MDEVREG_RVW_READERS` says otherwise.
const READERS: usize = 40;
/// Asserted bound on one root RegisterParent or UnregisterParent: a
/// regression bound. The target is 50 ms, below the bus's floor:
/// dbus-daemon reads a connection 4 KiB per turn of its loop and needs 80 ms
/// and more for one 17 MiB reply, and a write answered meanwhile waits for
/// the rest of it; the bare responder in the same run has the same maximum
/// (123–332 ms measured, RELIABILITY.md; 2.4 s for the debug daemon and
/// 1.4 s for the bare responder in one run at load 10). Before the large
/// replies went one at a time behind the writers: 1.04 s (release).
const WRITE_BOUND: Duration = Duration::from_secs(5);
/// Asserted bound on the daemon's peak RSS. The target is 64 MiB;
/// measured 52.8–62.3 MiB (release) and 57.3–67.3 MiB (debug): base 17 / 23
/// MiB plus one 17 MiB reply built (zbus serializes the body, then copies
/// it behind the header), plus, in some runs, a freed growth step of the
/// body left resident until the trim after the reply (RELIABILITY.md).
/// 13 MiB above the largest figure; the code before the shared type texts,
/// the trims and the memory turn reached 85.1–88.5 MiB (release) here.
const PEAK_RSS_MIB: f64 = 80.0;

fn reader(address: &str) -> Child {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "busctl",
            &format!("--address={address}"),
            "--timeout=300",
            "--quiet",
            "call",
            "org.mdevreg.Registry1",
            "/org/mdevreg/Registry1",
            "org.freedesktop.DBus.ObjectManager",
            "GetManagedObjects",
        ])
        .env("HOME", "/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn setpriv busctl")
}

/// The daemon's whole object tree, as the raw reply message (its size is
/// part of the report).
async fn get_managed_objects(client: &Connection) -> zbus::Result<zbus::Message> {
    client
        .call_method(
            Some(BUS_NAME),
            ROOT_PATH,
            Some("org.freedesktop.DBus.ObjectManager"),
            "GetManagedObjects",
            &(),
        )
        .await
}

fn vm_hwm_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// A `/proc/PID/status` field in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .expect("status field")
        / 1024.0
}

/// What one round of readers and writes gave.
struct Round {
    readers: usize,
    readers_took: Duration,
    /// Every root call's latency, in order.
    latencies: Vec<Duration>,
    /// Readers still running when each pair of calls started.
    busy_during: Vec<usize>,
    /// Largest `VmRSS` of `pid` seen meanwhile (MiB).
    rss_max: f64,
}

impl Round {
    /// Calls made while at least half the readers were still running.
    fn loaded(&self) -> usize {
        self.latencies
            .iter()
            .zip(self.busy_during.iter().flat_map(|&n| [n, n]))
            .filter(|(_, running)| *running >= self.readers / 2)
            .count()
    }

    fn sorted(&self) -> Vec<Duration> {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
    }

    /// `N root calls during them (M with >= R readers running): median,
    /// p99, max, over 50 ms`.
    fn describe(&self) -> String {
        let sorted = self.sorted();
        let over_target = sorted
            .iter()
            .filter(|latency| **latency > Duration::from_millis(50))
            .count();
        format!(
            "{} readers done in {:.1} s; {} root calls during them ({} with >= {} readers running): \
             median {:.1} ms, p99 {:.1} ms, max {:.1} ms, {over_target} over 50 ms",
            self.readers,
            self.readers_took.as_secs_f64(),
            self.latencies.len(),
            self.loaded(),
            self.readers / 2,
            ms(percentile(&sorted, 50)),
            ms(percentile(&sorted, 99)),
            ms(*sorted.last().expect("latencies")),
        )
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The `p`th percentile of `sorted` (nearest rank below).
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn readers_wanted() -> usize {
    std::env::var("MDEVREG_RVW_READERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(READERS)
}

/// Starts `readers` `GetManagedObjects` by uid 65534 on the bus at
/// `address` and registers and unregisters a parent as root on `client`
/// until every reader is done (at least 5 cycles); `pid`'s RSS is watched.
async fn round(address: &str, client: &Connection, readers: usize, pid: Option<u32>) -> Round {
    let types: Vec<Dict<'_>> = vec![good_type("rw-1")];
    let options = Dict::new();
    let mut children: Vec<Child> = (0..readers).map(|_| reader(address)).collect();
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut busy_during = Vec::new();
    let mut rss_max: f64 = 0.0;
    loop {
        let mut running = 0;
        for child in children.iter_mut() {
            if child.try_wait().expect("try_wait").is_none() {
                running += 1;
            }
        }
        if running == 0 && latencies.len() >= 10 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "readers still running after 600 s"
        );
        busy_during.push(running);
        if let Some(pid) = pid {
            rss_max = rss_max.max(status_mib(pid, "VmRSS:"));
        }
        let call = Instant::now();
        register_raw(client, "rw-parent", &options, &types)
            .await
            .expect("RegisterParent");
        latencies.push(call.elapsed());
        let call = Instant::now();
        unregister(client, "rw-parent")
            .await
            .expect("UnregisterParent");
        latencies.push(call.elapsed());
    }
    let readers_took = started.elapsed();
    for mut child in children {
        let status = child.wait().expect("wait busctl");
        let mut err = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            use std::io::Read;
            let _ = stderr.read_to_string(&mut err);
        }
        assert!(status.success(), "a reader failed: {status} {err}");
    }
    Round {
        readers,
        readers_took,
        latencies,
        busy_during,
        rss_max,
    }
}

#[test]
fn root_writes_are_answered_while_unprivileged_readers_fetch_the_tree() {
    run(
        "root_writes_are_answered_while_unprivileged_readers_fetch_the_tree",
        &["setpriv", "busctl"],
        || async {
            // On a tmpfs, as sysfs is (removing 200,000 files from this
            // machine's disk takes minutes).
            let tree = FakeSysfs::on_tmpfs();
            many_parents(&tree, 1000, 32, 1);
            let runtime = tempfile::Builder::new()
                .prefix("mdevreg-runtime-")
                .tempdir_in("/dev/shm")
                .expect("runtime dir on tmpfs");
            let runtime_dir = runtime.path().to_path_buf();
            let setup = Setup::start(tree.root(), move |options| {
                options.runtime_dir = Some(runtime_dir);
            })
            .await;
            let pid = setup.daemon.pid();
            let rss_before = vm_hwm_mib(pid);
            // The size of one reply, for the report; its body is what the
            // bare responder answers with.
            let reply = get_managed_objects(&setup.client)
                .await
                .expect("GetManagedObjects");
            let reply_mib = reply.data().len() as f64 / (1024.0 * 1024.0);
            let after_one = vm_hwm_mib(pid);
            let body: ManagedObjects = reply.body().deserialize().expect("a{oa{sa{sv}}}");
            drop(reply);
            let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
            let readers = readers_wanted();

            let daemon = round(setup.bus.address(), &setup.client, readers, Some(pid)).await;
            let peak = vm_hwm_mib(pid);
            let load_between = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

            // The floor: the same on a bare responder, on a bus of the same kind.
            let bare_bus = DbusDaemon::start_permissive_high_limits();
            let bare = BareReader::start(bare_bus.address(), Arc::new(body));
            let bare_client = connect(bare_bus.address()).await;
            let floor = round(bare_bus.address(), &bare_client, readers, None).await;
            let large = {
                let replies = bare.replies.lock().expect("replies");
                let mut built = replies.built.clone();
                let mut written = replies.written.clone();
                let mut drained = replies.drained.clone();
                built.sort();
                written.sort();
                drained.sort();
                format!(
                    "{} large replies: built in median {:.1} ms; written in median {:.1} ms, \
                     max {:.1} ms; read whole by the bus after median {:.1} ms, min {:.1} ms, max {:.1} ms",
                    written.len(),
                    ms(percentile(&built, 50)),
                    ms(percentile(&written, 50)),
                    ms(*written.last().expect("large replies written")),
                    ms(percentile(&drained, 50)),
                    ms(*drained.first().expect("large replies drained")),
                    ms(*drained.last().expect("large replies drained")),
                )
            };
            drop(bare);

            println!(
                "FIGURES readers-vs-writers: daemon {}; GetManagedObjects ({reply_mib:.1} MiB each) \
                 by uid 65534 on 1000x32: {}; daemon VmHWM {:.1} MiB before, {after_one:.1} MiB \
                 after one reply, {:.1} MiB after all (VmRSS seen up to {:.1} MiB, {:.1} MiB at \
                 the end); load average at start {}",
                daemon_binary().display(),
                daemon.describe(),
                rss_before,
                peak,
                daemon.rss_max,
                status_mib(pid, "VmRSS:"),
                load.trim()
            );
            println!(
                "FIGURES readers-vs-writers bare: the bus's floor, same run: a bare responder \
                 answering with the same body: {}; {large}; load average at start {}",
                floor.describe(),
                load_between.trim()
            );
            let max = *daemon.sorted().last().expect("latencies");
            assert!(
                daemon.loaded() > 0,
                "no root call was made while the readers ran"
            );
            assert!(
                floor.loaded() > 0,
                "no root call was made while the readers of the bare responder ran"
            );
            assert!(
                max <= WRITE_BOUND,
                "a root call took {max:?} while readers ran (bound {WRITE_BOUND:?})"
            );
            assert!(
                peak <= PEAK_RSS_MIB,
                "daemon peak RSS {peak:.1} MiB > {PEAK_RSS_MIB} MiB"
            );
        },
    );
}

/// The socket path of a `unix:path=...` address.
fn socket_path(address: &str) -> std::path::PathBuf {
    let rest = address
        .strip_prefix("unix:path=")
        .expect("a unix:path= address");
    std::path::PathBuf::from(rest.split(',').next().expect("path"))
}

/// The event loop does not wait for the bus socket: while a large reply
/// holds it (the daemon reaches the bus through a proxy that stops reading
/// the daemon's bytes in the middle of a `GetManagedObjects` reply), two
/// root registrations are still applied, saved and carried out by the loop
/// (their `event N: userspace parent ... registered` lines, which the sink
/// logs before it hands the signals over). Before the sender task the loop
/// stopped in the first one's signals until the reply was written, and the
/// second was never applied. Once the proxy lets the bytes through, the
/// reply and both answers arrive, and the signals in order.
#[test]
fn the_loop_goes_on_while_a_large_reply_holds_the_bus_socket() {
    run(
        "the_loop_goes_on_while_a_large_reply_holds_the_bus_socket",
        &[],
        || async {
            // A 1.7 MiB reply: many times what the socket buffers hold.
            let tree = FakeSysfs::on_tmpfs();
            many_parents(&tree, 100, 32, 1);
            let bus = DbusDaemon::start_permissive_high_limits();
            let work = common::prereq::open_tempdir("mdevreg-work-");
            let state_dir = work.path().join("state");
            std::fs::create_dir_all(&state_dir).expect("state dir");
            let proxy =
                SocketProxy::start(&work.path().join("proxy.sock"), &socket_path(bus.address()));
            let options = DaemonOptions::new(tree.root(), &state_dir);
            let mut daemon = Daemon::spawn(&proxy.address(), &options, work.path());
            let client = connect(bus.address()).await;
            wait_ready(&client, &mut daemon).await;
            let types: Vec<Dict<'_>> = vec![good_type("rw-1")];
            let options = Dict::new();
            // The daemon learns the client's uid now (later it could not
            // ask the bus).
            register_raw(&client, "rw-warm", &options, &types)
                .await
                .expect("RegisterParent");
            unregister(&client, "rw-warm")
                .await
                .expect("UnregisterParent");
            let monitor = connect(bus.address()).await;
            let mut signals = registry_signals(&monitor).await;

            // Held once 256 KiB of the reply have passed.
            proxy.hold_after(256 * 1024);
            let reader = {
                let client = client.clone();
                tokio::spawn(async move { get_managed_objects(&client).await })
            };
            let held_at = proxy
                .wait_held(Duration::from_secs(120))
                .expect("the large reply reaches the proxy");
            let writes: Vec<_> = ["rw-a", "rw-b"]
                .into_iter()
                .map(|name| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let types: Vec<Dict<'_>> = vec![good_type("rw-1")];
                        register_raw(&client, name, &Dict::new(), &types).await
                    })
                })
                .collect();
            // Both carried out by the loop while the reply holds the socket.
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let log = daemon.log();
                if ["rw-a", "rw-b"]
                    .iter()
                    .all(|name| log.contains(&format!("userspace parent {name:?} registered")))
                {
                    break;
                }
                daemon.assert_alive("while the socket is held");
                assert!(
                    Instant::now() < deadline,
                    "the loop did not carry out both registrations while a large reply held \
                     the socket; log:\n{}",
                    daemon.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(
                proxy.forwarded(),
                held_at,
                "the daemon's socket stayed held meanwhile"
            );
            assert!(!reader.is_finished(), "the large reply is still on its way");
            proxy.release();
            let reply = reader
                .await
                .expect("reader task")
                .expect("GetManagedObjects");
            assert!(
                reply.data().len() > 1024 * 1024,
                "the whole reply ({} bytes)",
                reply.data().len()
            );
            for write in writes {
                write
                    .await
                    .expect("write task")
                    .expect("RegisterParent answered");
            }
            let mut seen = Vec::new();
            while seen.len() < 2 {
                let signal = next_signal(&mut signals, Duration::from_secs(60))
                    .await
                    .expect("the ParentRegistered signals");
                assert_eq!(signal.member, "ParentRegistered", "{signal:?}");
                seen.push(signal);
            }
            let mut names: Vec<&str> = seen.iter().map(|signal| signal.name.as_str()).collect();
            names.sort();
            assert_eq!(names, ["rw-a", "rw-b"], "both signals: {seen:?}");
            assert!(seen[0].seqnum < seen[1].seqnum, "in order: {seen:?}");
            daemon.assert_no_panic("after the socket was released");
        },
    );
}
