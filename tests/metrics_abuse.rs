//! Hostile HTTP clients against `mdevregd --metrics-listen`: 200 concurrent
//! connections, slowloris clients, a 1 MiB request head and a 1 MiB request
//! body, all at once. D-Bus calls keep being answered while it lasts (their
//! latency is measured against a quiet baseline), the daemon's memory does
//! not grow with it, slow clients are cut off, and a normal scrape works
//! during and after.
//!
//! Needs root (a private network namespace, so the loopback port is ours).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::daemon::Setup;
use common::prereq::run;
use common::prometheus::{http_get, loopback_up};
use common::sysfs_fixture::{many_parents, FakeSysfs};

const PORT: u16 = 19300;
const CONNECTIONS: usize = 200;
const SLOWLORIS: usize = 20;
const ABUSE_TIME: Duration = Duration::from_secs(6);
const QUIET_TIME: Duration = Duration::from_secs(2);

/// Latencies of `ListParents` calls made back to back for `time`.
async fn call_latencies(setup: &Setup, time: Duration) -> Vec<Duration> {
    let registry = setup.registry().await;
    let mut samples = Vec::new();
    let end = Instant::now() + time;
    while Instant::now() < end {
        let started = Instant::now();
        registry.list_parents().await.expect("ListParents");
        samples.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    samples.sort();
    samples
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn scrape_ok() -> bool {
    matches!(http_get(PORT, "/metrics"), Some((200, body)) if String::from_utf8_lossy(&body).contains("mdevreg_parent_info{"))
}

#[test]
fn hostile_clients_stall_neither_dbus_nor_memory() {
    run(
        "hostile_clients_stall_neither_dbus_nor_memory",
        &["ip"],
        || async {
            loopback_up();
            // On a tmpfs: thousands of small files and links are built and
            // removed much faster there than on a busy disk.
            let shm = tempfile::Builder::new()
                .prefix("mdevreg-abuse-")
                .tempdir_in("/dev/shm")
                .expect("tempdir on /dev/shm");
            let tree = FakeSysfs::at(shm.path().join("sys"));
            many_parents(&tree, 100, 32, 1);
            let setup = Setup::start(tree.root(), |options| {
                options.verbose = false;
                options.emit = "none";
                options.extra_args =
                    vec!["--metrics-listen".to_owned(), format!("127.0.0.1:{PORT}")];
            })
            .await;
            assert!(scrape_ok(), "no scrape before the abuse");
            // Warm: the exposition rendered and cached, the heap settled.
            for _ in 0..5 {
                assert!(scrape_ok());
            }
            let quiet = call_latencies(&setup, QUIET_TIME).await;
            let rss_before = setup.daemon.rss_kib();

            let stop = Arc::new(AtomicBool::new(false));
            let cut_off = Arc::new(AtomicUsize::new(0));
            let mut abusers = Vec::new();
            // 200 connections held open, idle.
            {
                let stop = Arc::clone(&stop);
                abusers.push(thread::spawn(move || {
                    let held: Vec<TcpStream> = (0..CONNECTIONS)
                        .filter_map(|_| TcpStream::connect(("127.0.0.1", PORT)).ok())
                        .collect();
                    while !stop.load(Ordering::Relaxed) {
                        thread::sleep(Duration::from_millis(50));
                    }
                    drop(held);
                }));
            }
            // Slowloris: one header byte every 100 ms, never finishing.
            for _ in 0..SLOWLORIS {
                let stop = Arc::clone(&stop);
                let cut_off = Arc::clone(&cut_off);
                abusers.push(thread::spawn(move || {
                    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", PORT)) else {
                        return;
                    };
                    let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
                    for byte in head.iter().cycle() {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        if stream.write_all(&[*byte]).is_err() {
                            cut_off.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        thread::sleep(Duration::from_millis(100));
                    }
                }));
            }
            // A 1 MiB request head, and a 1 MiB body on GET, over and over.
            {
                let stop = Arc::clone(&stop);
                abusers.push(thread::spawn(move || {
                    let mut big_head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
                    big_head.extend(std::iter::repeat_n(b'a', 1 << 20));
                    big_head.extend_from_slice(b"\r\n\r\n");
                    let mut big_body = format!(
                        "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                        1 << 20
                    )
                    .into_bytes();
                    big_body.extend(std::iter::repeat_n(b'b', 1 << 20));
                    while !stop.load(Ordering::Relaxed) {
                        for request in [&big_head, &big_body] {
                            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", PORT)) {
                                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                                let _ = stream.write_all(request);
                                let mut sink = Vec::new();
                                let _ = stream.read_to_end(&mut sink);
                            }
                        }
                    }
                }));
            }

            let abused = call_latencies(&setup, ABUSE_TIME).await;
            let rss_during = setup.daemon.rss_kib();
            // Honest scrapers still get through now and then (connections
            // over the limit are closed, so retry).
            let deadline = Instant::now() + Duration::from_secs(30);
            while !scrape_ok() {
                assert!(Instant::now() < deadline, "no scrape got through the abuse");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Slowloris clients are cut off by the header timeout (5 s).
            let deadline = Instant::now() + Duration::from_secs(30);
            while cut_off.load(Ordering::Relaxed) < SLOWLORIS {
                assert!(
                    Instant::now() < deadline,
                    "only {} of {SLOWLORIS} slowloris clients were cut off",
                    cut_off.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            stop.store(true, Ordering::Relaxed);
            for abuser in abusers {
                abuser.join().expect("abuser thread");
            }
            assert!(scrape_ok(), "no scrape after the abuse");
            let rss_after = setup.daemon.rss_kib();

            let (q50, q99) = (percentile(&quiet, 0.5), percentile(&quiet, 0.99));
            let (a50, a99, amax) = (
                percentile(&abused, 0.5),
                percentile(&abused, 0.99),
                *abused.last().expect("samples"),
            );
            eprintln!(
                "ListParents latency: quiet p50 {q50:?} p99 {q99:?} ({} calls); \
                 under abuse p50 {a50:?} p99 {a99:?} max {amax:?} ({} calls); \
                 RSS before {rss_before} KiB, during {rss_during} KiB, after {rss_after} KiB",
                quiet.len(),
                abused.len()
            );
            // Wide bounds (a loaded 2-core machine): calls keep flowing, not
            // queued behind the HTTP clients.
            assert!(
                a50 <= q50 * 5 + Duration::from_millis(20),
                "median call latency {a50:?} under abuse, {q50:?} quiet"
            );
            assert!(
                amax < Duration::from_secs(1),
                "a call took {amax:?} under abuse"
            );
            // At least half the quiet call rate (calls per second).
            let quiet_rate = quiet.len() as f64 / QUIET_TIME.as_secs_f64();
            let abused_rate = abused.len() as f64 / ABUSE_TIME.as_secs_f64();
            assert!(
                abused_rate * 2.0 >= quiet_rate,
                "{abused_rate:.0} calls/s under abuse, {quiet_rate:.0} quiet"
            );
            // Memory: bounded while it lasts, back afterwards.
            assert!(
                rss_during < rss_before + 16 * 1024,
                "RSS grew from {rss_before} to {rss_during} KiB under abuse"
            );
            assert!(
                rss_after < rss_before + 8 * 1024,
                "RSS grew from {rss_before} to {rss_after} KiB after abuse"
            );
            let mut daemon = setup.daemon;
            daemon.assert_alive("after the abuse");
        },
    );
}
