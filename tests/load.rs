//! Load: 50 concurrent clients each doing 1,000 register/unregister cycles
//! against a running `mdevregd` while 5 monitors listen. Every monitor must
//! see one gap-free, duplicate-free run of registry sequence numbers (one
//! signal per transition, in order), the final registry must be empty, and
//! the daemon's memory must not grow from one round to the next.
//!
//! The cycles run in two identical rounds. A leak grows with the work
//! done; allocator warm-up (arenas, caches, freed pages kept) does not, and
//! is done in the first round. So the memory check compares steady states:
//! the settled RSS after the second round against the settled RSS after the
//! first, with a margin ([`growth_allowed_kib`]) far above what a loaded
//! machine adds and far below what a leak of one small allocation per
//! transition would. The start-to-end growth is printed, not asserted.
//!
//! Sizes can be lowered for a quick local run with `MDEVREG_LOAD_CLIENTS`
//! and `MDEVREG_LOAD_CYCLES` (per client, over both rounds); the defaults
//! are the issue's.

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

/// How much the settled RSS may grow from the first round to the second:
/// a quarter of the first or 4 MiB, whichever is larger. 50,000
/// transitions leaking 100 bytes each would add 4.8 MiB.
fn growth_allowed_kib(after_first: u64) -> u64 {
    (after_first / 4).max(4096)
}

/// The daemon's RSS once it is quiet: the smallest of samples taken every
/// 250 ms over 3 s, starting after its one-second idle trim can have run.
async fn settled_rss(pid: u32) -> u64 {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut smallest = u64::MAX;
    for _ in 0..12 {
        smallest = smallest.min(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    smallest
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// `clients` connections each doing `cycles` register/unregister cycles.
async fn round(address: &str, clients: usize, cycles: usize, round: usize) {
    let mut workers = Vec::new();
    for client in 0..clients {
        let address = address.to_owned();
        workers.push(tokio::spawn(async move {
            let connection = connect(&address).await;
            let name = format!("load-{client}");
            let types = [good_type("t-1"), good_type("t-2")];
            for cycle in 0..cycles {
                register_raw(&connection, &name, &Dict::new(), &types)
                    .await
                    .unwrap_or_else(|err| {
                        panic!("{name} round {round} cycle {cycle}: register: {err}")
                    });
                unregister(&connection, &name).await.unwrap_or_else(|err| {
                    panic!("{name} round {round} cycle {cycle}: unregister: {err}")
                });
            }
        }));
    }
    for worker in workers {
        worker.await.expect("client task");
    }
}

#[test]
fn fifty_clients_cycling_while_five_monitors_listen() {
    run(
        "fifty_clients_cycling_while_five_monitors_listen",
        &[],
        || async {
            let clients = env_or("MDEVREG_LOAD_CLIENTS", 50);
            // Per client, over two rounds of half each.
            let cycles = env_or("MDEVREG_LOAD_CYCLES", 1000).max(2) / 2 * 2;
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
            let rss_start = settled_rss(setup.daemon.pid()).await;

            // RSS over time: growth that levels off is the allocator keeping
            // freed memory; growth that keeps climbing is a leak.
            let pid = setup.daemon.pid();
            let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sampler = {
                let samples = samples.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        samples.lock().unwrap().push(rss_kib(pid));
                    }
                })
            };
            let started = Instant::now();
            round(setup.bus.address(), clients, cycles / 2, 1).await;
            let rss_first = settled_rss(pid).await;
            round(setup.bus.address(), clients, cycles / 2, 2).await;
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

            // Steady state after the second round against after the first.
            let rss_second = settled_rss(pid).await;
            let allowed = growth_allowed_kib(rss_first);
            if rss_second > rss_first + allowed {
                failures.push(format!(
                    "RSS {rss_second} KiB settled after the second round, {rss_first} KiB after \
                     the first (> +{allowed} KiB): memory grows with the work done"
                ));
            }
            eprintln!(
            "FIGURES load: {clients} clients x {cycles} cycles = {transitions} transitions, {MONITORS} monitors; calls {calls_took:?} ({:.0}/s), all signals seen after {all_seen:?}; RSS settled: {rss_start} KiB at the start, {rss_first} KiB after round 1, {rss_second} KiB after round 2 (allowed +{allowed} KiB); every 5 s during the load: {samples:?}",
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
