//! Prometheus exposition costs on the 1000 × 32 registry: render time and
//! size, the allocation of a render and of a cached scrape, and HTTP scrape
//! latency through the real listener on loopback (cached, and right after
//! a registry change). No root needed.
//!
//! `cargo bench --bench metrics` prints the figures and writes them into
//! the marked metrics section of `BENCHMARKS.md` and into
//! `target/bench/metrics.json`; under `cargo test --all-targets` it runs a
//! small tree once as a smoke test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use mdevreg::metrics::http::{ExpositionSource, Limits, MetricsListener};
use mdevreg::metrics::{counters_from_stats, ExpositionCache, Format, MetricsSource, RegistryView};
use mdevreg::model::{MdevType, ParentInfo};
use mdevreg::registry::{Input, Registry};

/// Counts allocated bytes (total and peak live) for the whole process.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: same layout as asked of us.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
        PEAK.fetch_max(live, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated (in total) and the peak of live bytes above the start,
/// while `f` runs.
fn allocation<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let start_total = ALLOCATED.load(Ordering::Relaxed);
    let start_live = LIVE.load(Ordering::Relaxed);
    PEAK.store(start_live, Ordering::Relaxed);
    let value = f();
    let total = ALLOCATED.load(Ordering::Relaxed) - start_total;
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(start_live);
    (value, total, peak)
}

fn parent_info(index: u32, n_types: u32) -> ParentInfo {
    let name = format!(
        "0000:{:02x}:{:02x}.{}",
        (index >> 8) & 0xff,
        (index >> 3) & 0x1f,
        index & 7
    );
    let types = (0..n_types)
        .map(|type_index| MdevType {
            id: format!("nvidia-{}", 100 + type_index),
            name: format!("GRID T4-{type_index}Q"),
            description: format!("num_heads=4, framebuffer={}M", 1024 * (1 + type_index % 16)),
            device_api: "vfio-pci".to_owned(),
            available_instances: 16,
            devices: vec![format!(
                "00000000-0000-4000-8000-{:012x}",
                index * n_types + type_index
            )],
        })
        .collect();
    ParentInfo {
        devpath: format!("/devices/pci0000:00/{name}"),
        name,
        subsystem: "pci".to_owned(),
        driver: "nvidia".to_owned(),
        backend: Default::default(),
        physical_device: String::new(),
        types,
    }
}

fn registry(n_parents: u32, n_types: u32) -> Registry {
    let mut registry = Registry::new();
    let _ = registry.apply(Input::KernelScan(
        (0..n_parents).map(|i| parent_info(i, n_types)).collect(),
    ));
    registry
}

/// Changes one type of parent 0 (a new sequence number).
fn touch(shared: &RwLock<Arc<Registry>>, round: u32) {
    let mut info = parent_info(0, 32);
    info.types[0].available_instances = round % 16;
    let _ = Arc::make_mut(&mut shared.write().expect("lock")).apply(Input::KernelParent {
        devpath: info.devpath.clone(),
        info: Some(info),
    });
}

/// CPU time of this thread (the render runs on it).
fn thread_cpu() -> Duration {
    let mut now = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe {
        nix::libc::clock_gettime(nix::libc::CLOCK_THREAD_CPUTIME_ID, &mut now);
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

/// One scrape: connect, GET /metrics, read the whole response.
fn scrape(listener: &MetricsListener, accept: &str) -> usize {
    let mut stream = TcpStream::connect(listener.local_addr()).expect("connect");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: bench\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read");
    assert!(
        response.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "scrape failed"
    );
    response.len()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let (n_parents, n_types, rounds, scrapes) = if full {
        (1000, 32, 21, 201)
    } else {
        (20, 4, 3, 5)
    };
    let shared = Arc::new(RwLock::new(Arc::new(registry(n_parents, n_types))));
    let view: Arc<dyn RegistryView> = shared.clone();

    // Cold renders: a new cache each time.
    let mut render_times = Vec::new();
    let mut render_cpu = Vec::new();
    let mut size = 0;
    let mut render_alloc = (0, 0);
    for _ in 0..rounds {
        let cache = ExpositionCache::new();
        let started = Instant::now();
        let cpu = thread_cpu();
        let (text, total, peak) = allocation(|| cache.registry_part(&view));
        render_cpu.push(thread_cpu() - cpu);
        render_times.push(started.elapsed());
        size = text.len();
        render_alloc = (total, peak);
    }
    let render = median(&mut render_times);
    let render_cpu = median(&mut render_cpu);

    // Re-render after a change, with the cache sized by the last text.
    let cache = ExpositionCache::new();
    let _ = cache.registry_part(&view);
    let mut rerender_times = Vec::new();
    let mut rerender_cpu = Vec::new();
    let mut rerender_alloc = (0, 0);
    for round in 0..rounds {
        touch(&shared, round as u32);
        let started = Instant::now();
        let cpu = thread_cpu();
        let (_, total, peak) = allocation(|| cache.registry_part(&view));
        rerender_cpu.push(thread_cpu() - cpu);
        rerender_times.push(started.elapsed());
        rerender_alloc = (total, peak);
    }
    let rerender = median(&mut rerender_times);
    let rerender_cpu = median(&mut rerender_cpu);

    // A cached exposition with the counters, as a scrape gets it.
    let source = Arc::new(MetricsSource::new(Arc::clone(&view), || {
        counters_from_stats(&Default::default())
    }));
    let _ = source.exposition(Format::OpenMetrics);
    let mut cached_times = Vec::new();
    let mut cached_alloc = (0, 0);
    for _ in 0..rounds {
        let started = Instant::now();
        let (_, total, peak) = allocation(|| source.exposition(Format::OpenMetrics));
        cached_times.push(started.elapsed());
        cached_alloc = (total, peak);
    }
    let cached = median(&mut cached_times);

    // HTTP scrapes through the listener on loopback.
    let listener = MetricsListener::spawn(
        MetricsListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind"),
        source.clone(),
        Limits::default(),
    )
    .expect("listener");
    let openmetrics = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let mut scrape_times = Vec::new();
    let mut response_len = 0;
    for _ in 0..scrapes {
        let started = Instant::now();
        response_len = scrape(&listener, openmetrics);
        scrape_times.push(started.elapsed());
    }
    let scrape_p50 = median(&mut scrape_times);
    let scrape_p99 = percentile(&mut scrape_times, 0.99);
    let mut changed_times = Vec::new();
    for round in 0..rounds {
        touch(&shared, 100 + round as u32);
        let started = Instant::now();
        scrape(&listener, openmetrics);
        changed_times.push(started.elapsed());
    }
    let changed_p50 = median(&mut changed_times);
    let changed_max = *changed_times.iter().max().expect("samples");
    drop(listener);

    let lines = [
        format!(
            "| render, cold (new cache) | {:.1} ms wall, {:.1} ms CPU, median of {rounds} | {:.1} MiB allocated, peak {:.1} MiB live |",
            ms(render),
            ms(render_cpu),
            mib(render_alloc.0),
            mib(render_alloc.1)
        ),
        format!(
            "| render after a change (cache sized by the last text) | {:.1} ms wall, {:.1} ms CPU, median of {rounds} | {:.1} MiB allocated, peak {:.1} MiB live |",
            ms(rerender),
            ms(rerender_cpu),
            mib(rerender_alloc.0),
            mib(rerender_alloc.1)
        ),
        format!(
            "| exposition served from the cache (+ counters) | {:.3} ms median of {rounds} | {:.1} KiB allocated |",
            ms(cached),
            cached_alloc.0 as f64 / 1024.0
        ),
        format!(
            "| HTTP scrape, cached, loopback (connect + GET + read all) | p50 {:.1} ms, p99 {:.1} ms of {scrapes} | {:.1} MiB response |",
            ms(scrape_p50),
            ms(scrape_p99),
            mib(response_len)
        ),
        format!(
            "| HTTP scrape right after a registry change | p50 {:.1} ms, max {:.1} ms of {rounds} | includes the re-render |",
            ms(changed_p50),
            ms(changed_max)
        ),
    ];
    println!(
        "metrics bench: {n_parents} parents x {n_types} types, exposition {size} bytes ({:.1} MiB)",
        mib(size)
    );
    for line in &lines {
        println!("{line}");
    }
    if !full {
        return;
    }
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    let section = format!(
        "{BEGIN}\n## Prometheus metrics (`cargo bench --bench metrics`)\n\n\
         Registry of {n_parents} parents × {n_types} types (1 instance each), in memory; \
         exposition {size} bytes ({:.1} MiB, {} series). Machine: {machine}, {cores} cores, \
         load average {load} at the end of the run (other work shared the machine: wall \
         times stretch with it, CPU times are the render's own cost). Allocation counted by \
         a counting global allocator in the bench.\n\n\
         | measure | time | size / allocation |\n| --- | --- | --- |\n{}\n{END}\n",
        mib(size),
        n_parents * (1 + 3 * n_types) + 2,
        lines.join("\n")
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, replace_section(&current, &section)).expect("write BENCHMARKS.md");
    let json = format!(
        "{{\"parents\":{n_parents},\"types\":{n_types},\"exposition_bytes\":{size},\
         \"render_ms\":{:.3},\"render_cpu_ms\":{:.3},\"render_alloc_bytes\":{},\"render_peak_bytes\":{},\
         \"rerender_ms\":{:.3},\"rerender_cpu_ms\":{:.3},\"rerender_alloc_bytes\":{},\"cached_ms\":{:.4},\
         \"cached_alloc_bytes\":{},\"scrape_p50_ms\":{:.3},\"scrape_p99_ms\":{:.3},\
         \"scrape_after_change_p50_ms\":{:.3},\"scrape_after_change_max_ms\":{:.3}}}\n",
        ms(render),
        ms(render_cpu),
        render_alloc.0,
        render_alloc.1,
        ms(rerender),
        ms(rerender_cpu),
        rerender_alloc.0,
        ms(cached),
        cached_alloc.0,
        ms(scrape_p50),
        ms(scrape_p99),
        ms(changed_p50),
        ms(changed_max)
    );
    let dir = target_dir().join("bench");
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(dir.join("metrics.json"), json).expect("write metrics.json");
    println!(
        "wrote BENCHMARKS.md and {}",
        dir.join("metrics.json").display()
    );
}

const BEGIN: &str = "<!-- metrics bench: begin -->";
const END: &str = "<!-- metrics bench: end -->";

/// `current` with the marked section replaced by `section` (appended if
/// there is none).
fn replace_section(current: &str, section: &str) -> String {
    match (current.find(BEGIN), current.find(END)) {
        (Some(begin), Some(end)) if end > begin => {
            let after = &current[end + END.len()..];
            format!(
                "{}{}{}",
                &current[..begin],
                section,
                after.strip_prefix('\n').unwrap_or(after)
            )
        }
        _ => format!(
            "{}\n{section}",
            current.trim_end_matches('\n').to_owned() + "\n"
        ),
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}
