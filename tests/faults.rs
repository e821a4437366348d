//! Faults around a running `mdevregd`: a registrant SIGKILLed, the daemon
//! SIGKILLed during a burst of registrations, state files that cannot be
//! written, corrupt state files, the bus daemon killed, and a kernel
//! receive-buffer overflow. After each, the
//! registry must hold exactly what it should: nothing lost, nothing
//! duplicated, nothing stale.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::io::BufReader;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{wait_ready, Daemon, Setup};
use common::helper_process::{helper_next_line, helper_role, helper_say, spawn_helper};
use common::prereq::run;
use common::registry_client;
use common::registry_client::{
    connect, good_type, lifetime, register_raw, wait_for_registry, Dict,
};
use common::registry_signals::{next_signal, registry_signals};
use common::sysfs_fixture::{FakeSysfs, ParentSpec};
use mdevreg::netlink::UeventEmitter;
use mdevreg::uevent::Uevent;

/// The helper that registers owner-bound parents and then waits to be killed.
#[test]
#[ignore = "entry point of helper processes (common::helper_process), not a test"]
fn helper_process() {
    match helper_role().as_deref() {
        None => {}
        Some("registrant") => {
            let address = std::env::var("MDEVREG_TEST_BUS").unwrap();
            let prefix = std::env::var("MDEVREG_TEST_PREFIX").unwrap();
            let count: usize = std::env::var("MDEVREG_TEST_COUNT")
                .unwrap()
                .parse()
                .unwrap();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let connection = connect(&address).await;
                    for index in 0..count {
                        register_raw(
                            &connection,
                            &format!("{prefix}-{index}"),
                            &Dict::new(),
                            &[good_type("t-1"), good_type("t-2")],
                        )
                        .await
                        .expect("register as registrant");
                    }
                    helper_say("READY");
                    // Stay until killed, or until the bus goes away (so a
                    // failed test leaves no process behind).
                    let bus = zbus::fdo::DBusProxy::new(&connection).await.unwrap();
                    while bus.get_id().await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                });
        }
        Some(other) => panic!("unknown helper role {other}"),
    }
}

#[test]
fn killed_registrant_loses_its_parents_within_a_second() {
    run(
        "killed_registrant_loses_its_parents_within_a_second",
        &[],
        || async {
            let tree = FakeSysfs::new();
            tree.add_parent(&ParentSpec::mtty());
            let mut setup = Setup::start(tree.root(), |_| {}).await;
            let mut signals = registry_signals(&setup.client).await;
            const TRIALS: usize = 5;
            const PER_REGISTRANT: usize = 4;
            let mut worst = Duration::ZERO;
            for trial in 0..TRIALS {
                let prefix = format!("victim{trial}");
                let mut child = spawn_helper(
                    "registrant",
                    &[
                        ("MDEVREG_TEST_BUS", setup.bus.address().to_owned()),
                        ("MDEVREG_TEST_PREFIX", prefix.clone()),
                        ("MDEVREG_TEST_COUNT", PER_REGISTRANT.to_string()),
                    ],
                    false,
                );
                let mut stdout = BufReader::new(child.stdout.take().unwrap());
                let ready = tokio::task::spawn_blocking(move || helper_next_line(&mut stdout))
                    .await
                    .unwrap();
                assert_eq!(
                    ready.as_deref(),
                    Some("READY"),
                    "registrant did not get ready"
                );
                let names: BTreeSet<String> = (0..PER_REGISTRANT)
                    .map(|i| format!("{prefix}-{i}"))
                    .collect();
                let mut registered = BTreeSet::new();
                while registered.len() < PER_REGISTRANT {
                    let signal = next_signal(&mut signals, Duration::from_secs(5))
                        .await
                        .expect("ParentRegistered for the registrant's parents");
                    if signal.member == "ParentRegistered" && names.contains(&signal.name) {
                        registered.insert(signal.name);
                    }
                }

                child.kill().expect("SIGKILL the registrant");
                let killed_at = Instant::now();
                let mut gone = BTreeSet::new();
                while gone.len() < PER_REGISTRANT {
                    let signal = next_signal(&mut signals, Duration::from_secs(5))
                        .await
                        .unwrap_or_else(|| {
                            panic!("no ParentUnregistered after the kill; got {gone:?}")
                        });
                    if signal.member == "ParentUnregistered" && names.contains(&signal.name) {
                        assert_eq!(signal.source, "userspace");
                        gone.insert(signal.name);
                    }
                }
                let took = killed_at.elapsed();
                let _ = child.wait();
                worst = worst.max(took);
                assert!(
                    took <= Duration::from_secs(1),
                    "trial {trial}: parents unregistered {took:?} after the registrant died"
                );
                let now = setup.snapshot().await;
                assert_eq!(now.names(), ["mtty"], "trial {trial}");
            }
            setup.daemon.assert_alive("after the registrants died");
            eprintln!(
            "FIGURES registrant-killed: {TRIALS} registrants x {PER_REGISTRANT} parents SIGKILLed, all unregistered with signals, worst {worst:?}"
        );
        },
    );
}

/// Registers persistent parents `<prefix>-<n>` one after another until a
/// call fails; pushes each acknowledged name.
async fn register_until_failure(
    address: String,
    prefix: String,
    options: Dict<'static>,
    acknowledged: Arc<Mutex<Vec<String>>>,
    attempted: Arc<Mutex<HashSet<String>>>,
) {
    let connection = connect(&address).await;
    for index in 0.. {
        let name = format!("{prefix}-{index}");
        attempted.lock().unwrap().insert(name.clone());
        match register_raw(&connection, &name, &options, &[good_type("t-1")]).await {
            Ok(_) => acknowledged.lock().unwrap().push(name),
            Err(_) => break,
        }
    }
    // Owner-bound registrations must outlive the daemon restart: keep the
    // connection until the test drops the task.
    std::future::pending::<()>().await;
}

#[test]
fn daemon_killed_during_a_burst_keeps_every_acknowledged_registration() {
    run(
        "daemon_killed_during_a_burst_keeps_every_acknowledged_registration",
        &[],
        || async {
            let tree = FakeSysfs::new();
            tree.add_parent(&ParentSpec::mtty());
            let mut setup = Setup::start(tree.root(), |_| {}).await;
            const CYCLES: usize = 3;
            const WRITERS: usize = 4;
            let mut total_acknowledged = 0;
            let mut expected_persistent: BTreeSet<String> = BTreeSet::new();
            let mut tried_ever: HashSet<String> = HashSet::new();
            let mut last_seqnum = setup.snapshot().await.seqnum;
            for cycle in 0..CYCLES {
                let acknowledged = Arc::new(Mutex::new(Vec::new()));
                let attempted = Arc::new(Mutex::new(HashSet::new()));
                let mut writers = Vec::new();
                for writer in 0..WRITERS {
                    // Half the writers register persistent parents, half
                    // owner-bound ones (their owners stay on the bus).
                    let (prefix, options) = if writer % 2 == 0 {
                        (format!("keep{cycle}w{writer}"), lifetime("persistent"))
                    } else {
                        (format!("own{cycle}w{writer}"), Dict::new())
                    };
                    writers.push(tokio::spawn(register_until_failure(
                        setup.bus.address().to_owned(),
                        prefix,
                        options,
                        acknowledged.clone(),
                        attempted.clone(),
                    )));
                }
                // Kill the daemon in the middle of the burst.
                let threshold = 60 + 40 * cycle;
                let deadline = Instant::now() + Duration::from_secs(60);
                while acknowledged.lock().unwrap().len() < threshold {
                    assert!(
                        Instant::now() < deadline,
                        "burst too slow: {:?}",
                        acknowledged.lock().unwrap().len()
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                last_seqnum = last_seqnum.max(setup.snapshot().await.seqnum);
                setup.daemon.kill();
                tokio::time::sleep(Duration::from_millis(200)).await;
                let acked: Vec<String> = acknowledged.lock().unwrap().clone();
                let tried: HashSet<String> = attempted.lock().unwrap().clone();
                total_acknowledged += acked.len();
                tried_ever.extend(tried.iter().cloned());

                setup.daemon =
                    Daemon::spawn(setup.bus.address(), &setup.options, setup.work.path());
                wait_ready(&setup.client, &mut setup.daemon).await;
                let after = setup.snapshot().await;
                let names = after.names();
                let unique: BTreeSet<&String> = names.iter().collect();
                assert_eq!(
                    unique.len(),
                    names.len(),
                    "duplicated parents after restart: {names:?}"
                );
                let lost: Vec<&String> = acked.iter().filter(|n| !names.contains(n)).collect();
                for name in &acked {
                    if name.starts_with("keep") {
                        expected_persistent.insert(name.clone());
                    }
                }
                let lost_persistent: Vec<&String> = expected_persistent
                    .iter()
                    .filter(|n| !names.contains(n))
                    .collect();
                assert!(
                lost.is_empty() && lost_persistent.is_empty(),
                "cycle {cycle}: {} acknowledged registrations lost after the restart: {lost:?} {lost_persistent:?}; log:\n{}",
                lost.len() + lost_persistent.len(),
                setup.daemon.log_tail()
            );
                // Only names that were tried can appear (at most one in flight per writer).
                let foreign: Vec<&String> = names
                    .iter()
                    .filter(|n| *n != "mtty" && !tried_ever.contains(*n))
                    .collect();
                assert!(foreign.is_empty(), "unexpected parents: {foreign:?}");
                let unacked_present = names
                    .iter()
                    .filter(|n| tried.contains(*n) && !acked.contains(n))
                    .count();
                assert!(
                    unacked_present <= WRITERS,
                    "{unacked_present} unacknowledged parents present"
                );
                assert!(
                    after.seqnum >= last_seqnum,
                    "SeqNum went back from {last_seqnum} to {} after the restart",
                    after.seqnum
                );
                last_seqnum = after.seqnum;
                eprintln!(
                "cycle {cycle}: {} acknowledged, {} present after restart, {unacked_present} in flight present",
                acked.len(),
                names.len()
            );
                for task in writers {
                    task.abort();
                }
                // Owner-bound parents go with their owners.
                let (now, ok) = wait_for_registry(&setup.client, Duration::from_secs(5), |s| {
                    s.names().iter().all(|n| !n.starts_with("own"))
                })
                .await;
                assert!(
                    ok,
                    "owner-bound parents stayed after their owners left: {:?}",
                    now.names()
                );
            }
            // The state file holds every persistent registration once.
            let state = std::fs::read_to_string(
                setup
                    .options
                    .state_dir
                    .join("persistent-registrations.json"),
            )
            .expect("persistent state file");
            let json: serde_json::Value = serde_json::from_str(&state).expect("state file is JSON");
            let stored: Vec<String> = json["registrations"]
                .as_array()
                .expect("registrations array")
                .iter()
                .map(|record| {
                    record["parent"]["info"]["name"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned()
                })
                .collect();
            let unique: BTreeSet<&String> = stored.iter().collect();
            assert_eq!(
                unique.len(),
                stored.len(),
                "duplicate records in the state file"
            );
            for name in &expected_persistent {
                assert!(stored.contains(name), "{name} missing from the state file");
            }
            setup.daemon.assert_alive("after the kill cycles");
            eprintln!(
            "FIGURES daemon-killed-in-burst: {CYCLES} SIGKILLs, {total_acknowledged} acknowledged registrations, 0 lost, 0 duplicated"
        );
        },
    );
}

/// The state directory cannot be written (a file stands where it was:
/// ENOTDIR, which stops root as well): registrations arriving together,
/// which share one write, are all refused with an error and never shown —
/// no signal, not in the registry. Once it can be written again, they work.
#[test]
fn registrations_that_cannot_be_saved_are_refused_and_never_shown() {
    run(
        "registrations_that_cannot_be_saved_are_refused_and_never_shown",
        &[],
        || async {
            let tree = FakeSysfs::new();
            tree.add_parent(&ParentSpec::mtty());
            let setup = Setup::start(tree.root(), |_| {}).await;
            let state_dir = setup.options.state_dir.clone();
            let mut signals = registry_signals(&setup.client).await;
            let aside = state_dir.with_extension("aside");
            std::fs::rename(&state_dir, &aside).expect("move the state dir away");
            std::fs::write(&state_dir, b"not a directory").expect("a file in its place");

            const CALLERS: usize = 6;
            let mut calls = Vec::new();
            for index in 0..CALLERS {
                let address = setup.bus.address().to_owned();
                calls.push(tokio::spawn(async move {
                    let connection = connect(&address).await;
                    let options = if index % 2 == 0 {
                        lifetime("persistent")
                    } else {
                        Dict::new()
                    };
                    let name = format!("unsaved-{index}");
                    let result =
                        register_raw(&connection, &name, &options, &[good_type("t-1")]).await;
                    (
                        name,
                        result.map(|_| ()).map_err(|err| err.to_string()),
                        connection,
                    )
                }));
            }
            let mut connections = Vec::new();
            for call in calls {
                let (name, result, connection) = call.await.expect("caller");
                match result {
                    Err(err) => assert!(err.contains("cannot save state"), "{name}: {err}"),
                    Ok(()) => panic!("{name} was acknowledged without a state file"),
                }
                connections.push(connection);
            }
            let names = setup.snapshot().await.names();
            assert_eq!(names, ["mtty"], "refused registrations are in the registry");

            // Writable again: a registration works and is the first signal
            // since — none of the refused ones was ever shown.
            std::fs::remove_file(&state_dir).expect("remove the file");
            std::fs::rename(&aside, &state_dir).expect("state dir back");
            register_raw(
                &setup.client,
                "saved",
                &lifetime("persistent"),
                &[good_type("t-1")],
            )
            .await
            .expect("RegisterParent once the state can be written");
            let first = next_signal(&mut signals, Duration::from_secs(10))
                .await
                .expect("a signal");
            assert_eq!(
                (first.member.as_str(), first.name.as_str()),
                ("ParentRegistered", "saved"),
                "a refused registration was shown"
            );
            let state = std::fs::read_to_string(state_dir.join("persistent-registrations.json"))
                .expect("state file");
            assert!(
                state.contains("\"saved\"") && !state.contains("unsaved-"),
                "{state}"
            );
            drop(connections);
            eprintln!(
                "FIGURES unsaved: {CALLERS} concurrent registrations refused with the state dir unwritable, none shown; the next one saved and shown"
            );
        },
    );
}

#[test]
fn corrupt_state_files_are_moved_aside() {
    run("corrupt_state_files_are_moved_aside", &[], || async {
        let tree = FakeSysfs::new();
        tree.add_parent(&ParentSpec::mtty());
        let mut setup = Setup::start(tree.root(), |_| {}).await;
        let state_dir = setup.options.state_dir.clone();
        let corruptions: [(&str, Vec<u8>); 7] = [
            ("binary junk", vec![0xff, 0x00, 0x13, 0x37]),
            (
                "truncated JSON",
                br#"{"format":"mdevreg-state","version":1,"last_seqnum":5,"registrations":[{"par"#
                    .to_vec(),
            ),
            ("empty file", Vec::new()),
            (
                "future version",
                br#"{"format":"mdevreg-state","version":999,"last_seqnum":5,"registrations":[]}"#
                    .to_vec(),
            ),
            ("foreign JSON", br#"[1,2,3]"#.to_vec()),
            ("10 MiB of spaces", vec![b' '; 10 << 20]),
            (
                "non-UTF-8 in a string",
                b"{\"format\":\"mdevreg-\xff\"}".to_vec(),
            ),
        ];
        for (label, bytes) in &corruptions {
            setup.daemon.kill();
            for file in ["persistent-registrations.json", "owner-registrations.json"] {
                std::fs::write(state_dir.join(file), bytes).unwrap();
            }
            let moved_before = moved_aside(&state_dir);
            setup.daemon = Daemon::spawn(setup.bus.address(), &setup.options, setup.work.path());
            wait_ready(&setup.client, &mut setup.daemon).await;
            setup.daemon.assert_alive(label);
            assert_eq!(setup.snapshot().await.names(), ["mtty"], "{label}");
            let moved = moved_aside(&state_dir);
            assert_eq!(
                moved - moved_before,
                2,
                "{label}: both files should be moved aside; dir: {:?}",
                std::fs::read_dir(&state_dir)
                    .unwrap()
                    .flatten()
                    .map(|e| e.file_name())
                    .collect::<Vec<_>>()
            );
            // The daemon works and saves a good file again.
            register_raw(
                &setup.client,
                "after-corruption",
                &lifetime("persistent"),
                &[good_type("t-1")],
            )
            .await
            .unwrap_or_else(|err| panic!("{label}: register after start: {err}"));
            setup.restart_daemon().await;
            assert_eq!(
                setup.snapshot().await.names(),
                ["after-corruption", "mtty"],
                "{label}"
            );
            registry_client::unregister(&setup.client, "after-corruption")
                .await
                .unwrap();
        }
        eprintln!("FIGURES corrupt-state: {} corruptions x 2 files, all moved aside, daemon started each time", corruptions.len());
    });
}

/// Number of `*.corrupt-*` files in `dir`.
fn moved_aside(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().contains(".corrupt-"))
        .count()
}

#[test]
fn bus_daemon_killed_makes_mdevregd_exit_and_a_restart_restores_state() {
    run(
        "bus_daemon_killed_makes_mdevregd_exit_and_a_restart_restores_state",
        &[],
        || async {
            let tree = FakeSysfs::new();
            tree.add_parent(&ParentSpec::mtty());
            let mut setup = Setup::start(tree.root(), |_| {}).await;
            for name in ["keep-a", "keep-b"] {
                register_raw(
                    &setup.client,
                    name,
                    &lifetime("persistent"),
                    &[good_type("t-1")],
                )
                .await
                .expect("register persistent");
            }
            let before = setup.snapshot().await;
            assert_eq!(before.names(), ["keep-a", "keep-b", "mtty"]);

            setup.bus.kill();
            let killed_at = Instant::now();
            let status = setup
                .daemon
                .wait_exit(Duration::from_secs(5))
                .unwrap_or_else(|| {
                    panic!(
                        "mdevregd still running 5 s after the bus died; log:\n{}",
                        setup.daemon.log_tail()
                    )
                });
            let took = killed_at.elapsed();
            assert!(
                !status.success(),
                "mdevregd exited with {status} after losing the bus"
            );
            setup.daemon.assert_no_panic("after losing the bus");

            setup.bus.restart();
            setup.client = connect(setup.bus.address()).await;
            setup.daemon = Daemon::spawn(setup.bus.address(), &setup.options, setup.work.path());
            wait_ready(&setup.client, &mut setup.daemon).await;
            let after = setup.snapshot().await;
            assert_eq!(after.names(), ["keep-a", "keep-b", "mtty"]);
            eprintln!("FIGURES bus-killed: mdevregd exited ({status}) {took:?} after the bus died; 2/2 persistent registrations restored");
        },
    );
}

/// Netlink drop count (`Drops` of /proc/PID/net/netlink) of the daemon's
/// group-1 listener.
fn listener_drops(pid: u32) -> u64 {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/netlink")).unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 10
                && fields[1] == "15"
                && fields[3] == "00000001"
                && inodes.contains(fields[9]))
            .then(|| fields[8].parse::<u64>().ok())
            .flatten()
        })
        .sum()
}

#[test]
fn receive_buffer_overflow_triggers_a_rescan_and_convergence() {
    run(
        "receive_buffer_overflow_triggers_a_rescan_and_convergence",
        &[],
        || async {
            let tree = FakeSysfs::new();
            tree.add_parent(&ParentSpec::mtty());
            let mut setup = Setup::start(tree.root(), |options| {
                options.emit = "none";
                options.verbose = false;
            })
            .await;
            assert_eq!(setup.snapshot().await.names(), ["mtty"]);
            let stats_before = registry_client::stats(&setup.client).await;

            // Freeze the daemon, change sysfs behind its back, and flood its
            // socket with kernel events until the kernel drops some.
            setup.daemon.signal(nix::sys::signal::Signal::SIGSTOP);
            tree.remove_parent("mtty");
            tree.add_parent(&ParentSpec::mdpy());
            let mut emitter = UeventEmitter::open().expect("emitter");
            let flood =
                Uevent::new("change", "/devices/virtual/flood/flood").with("SUBSYSTEM", "flood");
            let mut injected = 0u64;
            let started = Instant::now();
            while listener_drops(setup.daemon.pid()) == 0 {
                for _ in 0..2000 {
                    emitter.inject(&flood).expect("inject");
                }
                injected += 2000;
                assert!(injected < 2_000_000, "no drops after {injected} events");
            }
            let drops = listener_drops(setup.daemon.pid());
            setup.daemon.signal(nix::sys::signal::Signal::SIGCONT);
            let flood_took = started.elapsed();

            let resumed = Instant::now();
            let (now, converged) = wait_for_registry(&setup.client, Duration::from_secs(60), |s| {
                s.names() == ["mdpy"]
            })
            .await;
            assert!(
                converged,
                "no convergence after the overflow: {:?}; log:\n{}",
                now.names(),
                setup.daemon.log_tail()
            );
            let converge_took = resumed.elapsed();
            let stats_after = registry_client::stats(&setup.client).await;
            let grown: Vec<(String, u64)> = stats_after
                .iter()
                .filter(|(k, v)| stats_before.get(*k).copied().unwrap_or(0) < **v)
                .map(|(k, v)| (k.clone(), v - stats_before.get(k).copied().unwrap_or(0)))
                .collect();
            assert!(
                grown
                    .iter()
                    .any(|(k, _)| k.contains("overflow") || k.contains("enobufs")),
                "the overflow is not counted; counters grew: {grown:?}"
            );
            assert!(
                grown.iter().any(|(k, _)| k.contains("rescan")),
                "no rescan counted; counters grew: {grown:?}"
            );
            setup.daemon.assert_alive("after the overflow");
            eprintln!(
            "FIGURES overflow: {injected} events injected in {flood_took:?}, {drops} dropped by the kernel, converged {converge_took:?} after SIGCONT; counters grew {grown:?}"
        );
        },
    );
}
