//! Load: 50 concurrent clients each doing 1,000 register/unregister cycles
//! against a running `mdevregd` while 5 monitors listen. Every monitor must
//! see one gap-free, duplicate-free run of registry sequence numbers (one
//! signal per transition, in order), the final registry must be empty, and
//! the daemon's RSS must come back to within 10% of where it started.
//!
//! Sizes can be lowered for a quick local run with `MDEVREG_LOAD_CLIENTS`
//! and `MDEVREG_LOAD_CYCLES`; the defaults are the issue's.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::Setup;
use common::prereq::run;
use common::registry_client::{connect, good_type, register_raw, unregister, Dict};
use common::registry_signals::{decode_signal, registry_signals};
use common::sysfs_fixture::FakeSysfs;

const MONITORS: usize = 5;

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// What one monitor saw: (member, parent name, seqnum) in arrival order.
type Seen = Vec<(String, String, u64)>;

async fn monitor(stream: zbus::MessageStream, expected: usize, timeout: Duration) -> Seen {
    use futures_util::StreamExt;
    let mut stream = stream;
    let mut seen = Vec::with_capacity(expected);
    let deadline = tokio::time::Instant::now() + timeout;
    while seen.len() < expected {
        let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, stream.next()).await else {
            break;
        };
        if let Some(signal) = decode_signal(&message) {
            seen.push((signal.member, signal.name, signal.seqnum));
        }
    }
    seen
}

/// Checks one monitor's view; returns a description of each problem.
fn problems(seen: &Seen, first: u64, expected: usize, cycles: usize) -> Vec<String> {
    let mut problems = Vec::new();
    if seen.len() != expected {
        problems.push(format!("{} signals, expected {expected}", seen.len()));
    }
    let mut gaps = 0;
    let mut duplicates = 0;
    let mut last = first - 1;
    for (_, _, seqnum) in seen {
        if *seqnum <= last {
            duplicates += 1;
        } else if *seqnum != last + 1 {
            gaps += 1;
        }
        last = last.max(*seqnum);
    }
    if gaps > 0 || duplicates > 0 {
        problems.push(format!(
            "{gaps} gaps, {duplicates} repeated or out-of-order seqnums"
        ));
    }
    // Per parent: registered, unregistered, registered, ... `cycles` times.
    let mut per_name: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (member, name, _) in seen {
        per_name.entry(name).or_default().push(member);
    }
    for (name, members) in per_name {
        let wanted = if name.starts_with("load-") {
            2 * cycles
        } else {
            2
        };
        let alternating = members.len() == wanted
            && members.iter().enumerate().all(|(index, member)| {
                *member
                    == if index % 2 == 0 {
                        "ParentRegistered"
                    } else {
                        "ParentUnregistered"
                    }
            });
        if !alternating {
            problems.push(format!(
                "{name}: {} signals, not alternating",
                members.len()
            ));
        }
    }
    problems
}

#[test]
fn fifty_clients_cycling_while_five_monitors_listen() {
    run(
        "fifty_clients_cycling_while_five_monitors_listen",
        &[],
        || async {
            let clients = env_or("MDEVREG_LOAD_CLIENTS", 50);
            let cycles = env_or("MDEVREG_LOAD_CYCLES", 1000);
            let transitions = 2 * clients * cycles;
            let tree = FakeSysfs::new();
            // State on tmpfs, as /run/mdevreg is on a real system: every
            // transition rewrites (and fsyncs) the owner-bound state file.
            let state = tempfile::Builder::new()
                .prefix("mdevreg-load-state-")
                .tempdir_in(if Path::new("/dev/shm").is_dir() {
                    "/dev/shm"
                } else {
                    "/tmp"
                })
                .expect("state directory");
            let state_dir = state.path().to_path_buf();
            let mut setup = Setup::start(tree.root(), move |options| {
                options.verbose = false;
                options.state_dir = state_dir;
            })
            .await;
            let start = setup.snapshot().await;
            assert!(start.parents.is_empty());
            // Monitors see the warm-up cycle too.
            let first_seqnum = start.seqnum + 1;
            let signals = transitions + 2;

            let mut monitors = Vec::new();
            for _ in 0..MONITORS {
                let connection = connect(setup.bus.address()).await;
                let stream = registry_signals(&connection).await;
                monitors.push(tokio::spawn(async move {
                    let seen = monitor(stream, signals, Duration::from_secs(3600)).await;
                    drop(connection);
                    seen
                }));
            }
            // A short warm-up, then the baseline RSS.
            register_raw(&setup.client, "warm-up", &Dict::new(), &[good_type("t-1")])
                .await
                .expect("warm-up");
            unregister(&setup.client, "warm-up").await.expect("warm-up");
            tokio::time::sleep(Duration::from_millis(200)).await;
            let rss_start = setup.daemon.rss_kib();

            // RSS over time: growth that levels off is the allocator keeping
            // freed memory; growth that keeps climbing is a leak.
            let pid = setup.daemon.pid();
            let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sampler = {
                let samples = samples.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                        else {
                            return;
                        };
                        let rss = status
                            .lines()
                            .find_map(|line| line.strip_prefix("VmRSS:"))
                            .and_then(|rest| rest.split_whitespace().next())
                            .and_then(|kib| kib.parse::<u64>().ok())
                            .unwrap_or(0);
                        samples.lock().unwrap().push(rss);
                    }
                })
            };
            let started = Instant::now();
            let mut workers = Vec::new();
            for client in 0..clients {
                let address = setup.bus.address().to_owned();
                workers.push(tokio::spawn(async move {
                    let connection = connect(&address).await;
                    let name = format!("load-{client}");
                    let types = [good_type("t-1"), good_type("t-2")];
                    for cycle in 0..cycles {
                        register_raw(&connection, &name, &Dict::new(), &types)
                            .await
                            .unwrap_or_else(|err| panic!("{name} cycle {cycle}: register: {err}"));
                        unregister(&connection, &name).await.unwrap_or_else(|err| {
                            panic!("{name} cycle {cycle}: unregister: {err}")
                        });
                    }
                }));
            }
            for worker in workers {
                worker.await.expect("client task");
            }
            let calls_took = started.elapsed();
            sampler.abort();
            let samples: Vec<u64> = samples.lock().unwrap().clone();
            setup.daemon.assert_alive("after the load");

            let mut failures = Vec::new();
            for (index, task) in monitors.into_iter().enumerate() {
                let seen = task.await.expect("monitor task");
                for problem in problems(&seen, first_seqnum, signals, cycles) {
                    failures.push(format!("monitor {index}: {problem}"));
                }
            }
            let all_seen = started.elapsed();
            let end = setup.snapshot().await;
            if !end.parents.is_empty() {
                failures.push(format!("registry not empty: {:?}", end.names()));
            }
            let expected_seqnum = first_seqnum - 1 + signals as u64;
            if end.seqnum != expected_seqnum {
                failures.push(format!(
                    "SeqNum {} after the load, expected {expected_seqnum}",
                    end.seqnum
                ));
            }

            // RSS back within 10% of the start (allow the allocator a moment).
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut rss_end = setup.daemon.rss_kib();
            while rss_end * 10 > rss_start * 11 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(250)).await;
                rss_end = setup.daemon.rss_kib();
            }
            if rss_end * 10 > rss_start * 11 {
                failures.push(format!(
                    "RSS {rss_end} KiB after the load, {rss_start} KiB at the start (> +10%)"
                ));
            }
            eprintln!(
            "FIGURES load: {clients} clients x {cycles} cycles = {transitions} transitions, {MONITORS} monitors; calls {calls_took:?} ({:.0}/s), all signals seen after {all_seen:?}; RSS {rss_start} -> {rss_end} KiB (every 5 s during the load: {samples:?})",
            transitions as f64 / calls_took.as_secs_f64()
        );
            assert!(
                failures.is_empty(),
                "load test failed:\n{}",
                failures.join("\n")
            );
        },
    );
}
