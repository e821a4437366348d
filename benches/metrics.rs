//! Prometheus exposition costs on the 1000 × 32 registry: render time and
//! size, the allocation of a render (whole, and incremental after a change
//! of one parent or of all) and of a cached scrape, and HTTP scrapes through
//! the real listener on loopback (cached, and the first after a change:
//! wall time, CPU time of the process, bytes allocated). No root needed.
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

use mdevreg::metrics::exposition::render_registry;
use mdevreg::metrics::http::{ExpositionSource, Limits, MetricsListener};
use mdevreg::metrics::textfile::TextfileWriter;
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
            id: format!("nvidia-{}", 100 + type_index).into(),
            name: format!("GRID T4-{type_index}Q").into(),
            description: format!("num_heads=4, framebuffer={}M", 1024 * (1 + type_index % 16))
                .into(),
            device_api: "vfio-pci".into(),
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

/// Changes one type of every parent, as a rescan finding everything
/// changed would (a new `Arc` for each parent).
fn touch_all(shared: &RwLock<Arc<Registry>>, n_parents: u32, n_types: u32, round: u32) {
    let infos = (0..n_parents)
        .map(|index| {
            let mut info = parent_info(index, n_types);
            info.types[0].available_instances = round % 16;
            info
        })
        .collect();
    let _ = Arc::make_mut(&mut shared.write().expect("lock")).apply(Input::KernelScan(infos));
}

fn cpu_clock(clock: nix::libc::clockid_t) -> Duration {
    let mut now = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe {
        nix::libc::clock_gettime(clock, &mut now);
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// CPU time of this thread (a direct render runs on it).
fn thread_cpu() -> Duration {
    cpu_clock(nix::libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the whole process (a scrape: the listener's threads and
/// the client reading).
fn process_cpu() -> Duration {
    cpu_clock(nix::libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// Wall time, CPU time and allocation (total, peak live) of `f`, with
/// `cpu` the clock to read.
struct Cost {
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
    allocated: Vec<usize>,
    peak: Vec<usize>,
}

impl Cost {
    fn new() -> Cost {
        Cost {
            wall: Vec::new(),
            cpu: Vec::new(),
            allocated: Vec::new(),
            peak: Vec::new(),
        }
    }

    fn measure<T>(&mut self, cpu: fn() -> Duration, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let cpu_start = cpu();
        let (value, total, peak) = allocation(f);
        self.cpu.push(cpu() - cpu_start);
        self.wall.push(started.elapsed());
        self.allocated.push(total);
        self.peak.push(peak);
        value
    }

    /// "p50 W ms wall (max M), C ms CPU" and "A MiB allocated (max), peak L MiB live".
    fn line(&mut self, what: &str) -> String {
        let rounds = self.wall.len();
        let max_wall = *self.wall.iter().max().expect("samples");
        let max_alloc = *self.allocated.iter().max().expect("samples");
        let max_peak = *self.peak.iter().max().expect("samples");
        format!(
            "| {what} | p50 {:.1} ms wall (max {:.1}), {:.1} ms CPU (median), {rounds} rounds | {:.2} MiB allocated (max {:.2}), peak {:.2} MiB live |",
            ms(median(&mut self.wall)),
            ms(max_wall),
            ms(median(&mut self.cpu)),
            mib(median_bytes(&mut self.allocated)),
            mib(max_alloc),
            mib(max_peak),
        )
    }
}

fn median_bytes(samples: &mut [usize]) -> usize {
    samples.sort();
    samples[samples.len() / 2]
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// One scrape: connect, GET /metrics, read the whole response (into a
/// small buffer: the client's own allocation stays out of the figures);
/// returns its length.
fn scrape(listener: &MetricsListener, accept: &str) -> usize {
    let mut stream = TcpStream::connect(listener.local_addr()).expect("connect");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: bench\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut buffer = [0u8; 16 * 1024];
    // The status line comes in the first read (hyper writes the head in one
    // piece).
    let mut total = stream.read(&mut buffer).expect("read");
    assert!(
        buffer[..total].starts_with(b"HTTP/1.1 200 OK\r\n"),
        "scrape failed"
    );
    loop {
        match stream.read(&mut buffer).expect("read") {
            0 => break,
            read => total += read,
        }
    }
    total
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
    let load_at_start = load_average();
    let shared = Arc::new(RwLock::new(Arc::new(registry(n_parents, n_types))));
    let view: Arc<dyn RegistryView> = shared.clone();

    // The reference: the registry part rendered whole, in one text.
    let mut whole = Cost::new();
    let mut size = 0;
    for _ in 0..rounds {
        size = whole
            .measure(thread_cpu, || render_registry(Arc::clone(&view), 64 * 1024))
            .0
            .len();
    }

    // Cold: a new cache each time, every fragment rendered.
    let mut cold = Cost::new();
    let mut chunks = 0;
    for _ in 0..rounds {
        let cache = ExpositionCache::new();
        let part = cold.measure(thread_cpu, || cache.registry_part(&view));
        assert_eq!(part.len, size, "fragments and whole render differ in size");
        chunks = part.chunks.len();
    }

    // The first render after a change of one parent, and of every parent.
    let cache = ExpositionCache::new();
    let _ = cache.registry_part(&view);
    let mut one = Cost::new();
    let mut one_stats = Default::default();
    for round in 0..rounds {
        touch(&shared, round as u32);
        one.measure(thread_cpu, || cache.registry_part(&view));
        one_stats = cache.last_render();
    }
    let mut all = Cost::new();
    for round in 0..rounds.min(11) {
        touch_all(&shared, n_parents, n_types, round as u32);
        all.measure(thread_cpu, || cache.registry_part(&view));
    }
    // Still byte for byte the whole render.
    assert_eq!(
        cache.registry_part(&view).to_vec(),
        render_registry(Arc::clone(&view), 0).0.into_bytes()
    );

    // A cached exposition with the counters, as a scrape gets it.
    let source = Arc::new(MetricsSource::new(Arc::clone(&view), || {
        counters_from_stats(&Default::default())
    }));
    let _ = source.exposition(Format::OpenMetrics);
    let mut cached = Cost::new();
    for _ in 0..rounds {
        cached.measure(thread_cpu, || source.exposition(Format::OpenMetrics));
    }

    // The textfile after a change of one parent: render, then the atomic
    // rewrite from the chunks (temporary file + rename, in /dev/shm when
    // there is one, so the disk does not dominate).
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir");
    let mut writer = TextfileWriter::new(&dir.path().join("mdevreg.prom")).expect("writer");
    let mut textfile = Cost::new();
    for round in 0..rounds {
        touch(&shared, 200 + round as u32);
        let wrote = textfile.measure(thread_cpu, || {
            writer
                .write(&source.exposition(Format::Text))
                .expect("write the textfile")
        });
        assert!(wrote);
    }
    drop(dir);

    // HTTP scrapes through the listener on loopback.
    let listener = MetricsListener::spawn(
        MetricsListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind"),
        source.clone(),
        Limits::default(),
    )
    .expect("listener");
    let openmetrics = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let mut scrape_cached = Cost::new();
    let mut response_len = 0;
    for _ in 0..scrapes {
        response_len = scrape_cached.measure(process_cpu, || scrape(&listener, openmetrics));
    }
    let mut scrape_one = Cost::new();
    for round in 0..rounds {
        touch(&shared, 100 + round as u32);
        scrape_one.measure(process_cpu, || scrape(&listener, openmetrics));
    }
    let mut scrape_all = Cost::new();
    for round in 0..rounds.min(11) {
        touch_all(&shared, n_parents, n_types, 100 + round as u32);
        scrape_all.measure(process_cpu, || scrape(&listener, openmetrics));
    }
    drop(listener);

    let lines = [
        whole.line("registry part rendered whole, one text (the reference)"),
        cold.line(&format!(
            "registry part from an empty cache ({chunks} fragments)"
        )),
        one.line(&format!(
            "**first render after a change of one parent** ({} fragments encoded, {} reused)",
            one_stats.encoded, one_stats.reused
        )),
        all.line("first render after a change of every parent (a rescan finding all changed)"),
        cached.line("exposition served from the cache (+ counters)"),
        textfile.line("textfile rewrite after a change of one parent (render, hash, write, rename; tmpfs)"),
        scrape_cached.line(&format!(
            "HTTP scrape, cached, loopback (connect + GET + read all; CPU of the process) — {:.1} MiB response",
            mib(response_len)
        )),
        scrape_one.line("**HTTP scrape, first after a change of one parent** (includes the render)"),
        scrape_all.line("HTTP scrape, first after a change of every parent"),
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
    let load = load_average();
    let section = format!(
        "{BEGIN}\n## Prometheus metrics (`cargo bench --bench metrics`)\n\n\
         Registry of {n_parents} parents × {n_types} types (1 instance each), in memory; \
         exposition {size} bytes ({:.1} MiB, {} series). Machine: {machine}, {cores} cores, \
         load average {load_at_start} at the start of the run and {load} at the end (other \
         work shared the machine: wall times stretch with it; CPU times are the render's own \
         cost, for a scrape the whole process's: listener and client). Allocation counted by \
         a counting global allocator in the bench (the whole process).\n\n\
         The registry part is kept as fragments, one per (family, parent) and one per \
         physical device, with the parents they were rendered from (`src/metrics/cache.rs`); \
         after a change only the fragments of parents that changed are encoded again, and a \
         scrape streams the shared chunks (no copy of the text). The rows in bold are the \
         acceptance: the first scrape after a change stays under 50 ms and a few MiB.\n\n\
         | measure | time | allocation |\n| --- | --- | --- |\n{}\n{END}\n",
        mib(size),
        n_parents * (1 + 3 * n_types) + 2,
        lines.join("\n")
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, replace_section(&current, &section)).expect("write BENCHMARKS.md");
    let json = format!(
        "{{\"parents\":{n_parents},\"types\":{n_types},\"exposition_bytes\":{size},\"lines\":{:?}}}\n",
        lines
    );
    let dir = target_dir().join("bench");
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(dir.join("metrics.json"), json).expect("write metrics.json");
    println!(
        "wrote BENCHMARKS.md and {}",
        dir.join("metrics.json").display()
    );
}

/// The 1-minute load average.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
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
