//! A simulated fleet scraped by a real Prometheus: 20 mdevregd hosts on
//! different fake sysfs trees (NVIDIA-, GVT- and s390-like), each on its own
//! private dbus-daemon with `--metrics-listen` on a loopback port, plus one
//! host whose `--metrics-textfile` goes through a real node_exporter's
//! textfile collector. PromQL over Prometheus' HTTP API must give the sums
//! computed from the fixture specs; after a userspace registration and a
//! sysfs change (announced by a real injected kernel uevent) on some hosts,
//! the next scrape of each shows them.
//!
//! Needs root (network namespace, uevent injection) and Debian's
//! `prometheus`, `prometheus-node-exporter`, `dbus-daemon` and `ip`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::bus::DbusDaemon;
use common::daemon::{wait_ready, Daemon, DaemonOptions};
use common::prereq::{open_tempdir, run};
use common::prometheus::{loopback_up, sample_value, NodeExporter, Prometheus};
use common::registry_client::{connect, registry_proxy};
use common::sysfs_fixture::{uuid_for, FakeSysfs, ParentSpec};
use mdevreg::client::TypeArg;
use mdevreg::dbus::MdevType1Proxy;
use mdevreg::netlink::UeventEmitter;
use mdevreg::uevent::Uevent;
use zbus::proxy::CacheProperties;
use zbus::Connection;

const LISTEN_HOSTS: usize = 20;
const FIRST_PORT: u16 = 19100;
const NODE_EXPORTER_PORT: u16 = 19200;
const PROMETHEUS_PORT: u16 = 19090;
/// How long the fleet may take to be scraped, or a change to show.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(120);

/// What a host's tree holds, from the specs it was built from.
#[derive(Default)]
struct Expected {
    /// Type name -> available instances, summed over the fleet.
    available_by_name: BTreeMap<String, u64>,
    parents: u64,
    instances: u64,
}

impl Expected {
    fn add_parent(&mut self, spec: &ParentSpec) {
        self.parents += 1;
        for mdev_type in &spec.types {
            *self
                .available_by_name
                .entry(mdev_type.name.clone().unwrap_or_default())
                .or_default() += u64::from(mdev_type.available_instances);
        }
    }
}

/// One host: its tree, bus, daemon and the connection we use on it.
struct Host {
    tree: FakeSysfs,
    _bus: DbusDaemon,
    daemon: Daemon,
    client: Connection,
    /// `instance` label Prometheus gives its series.
    instance: String,
    /// The NVIDIA-like host's first GPU, if it is one.
    gpu: Option<ParentSpec>,
}

/// Builds host `index`'s tree: every third host NVIDIA-like (two GPUs),
/// GVT-like, or s390-like (subchannels and an AP matrix).
fn build_tree(index: usize, expected: &mut Expected) -> (FakeSysfs, Option<ParentSpec>) {
    let tree = FakeSysfs::new();
    let mut add = |spec: &ParentSpec| {
        tree.add_parent(spec);
        expected.add_parent(spec);
    };
    let mut gpu = None;
    match index % 3 {
        0 => {
            let first = ParentSpec::nvidia(&format!("0000:{:02x}:00.0", 0x10 + index), 8);
            let second = ParentSpec::nvidia(&format!("0000:{:02x}:00.0", 0x80 + index), 4);
            add(&first);
            add(&second);
            tree.add_instance(first.name(), "nvidia-101", &uuid_for(1000 + index as u64));
            expected.instances += 1;
            gpu = Some(first);
        }
        1 => {
            add(&ParentSpec::gvt());
            add(&ParentSpec::mdpy());
            tree.add_instance(
                "0000:00:02.0",
                "i915-GVTg_V5_4",
                &uuid_for(2000 + index as u64),
            );
            expected.instances += 1;
        }
        _ => {
            for k in 0..3 {
                add(&ParentSpec::vfio_ccw(&format!("0.0.{:02x}{k:02x}", index)));
            }
            add(&ParentSpec::vfio_ap_matrix());
        }
    }
    (tree, gpu)
}

async fn start_host(
    index: usize,
    expected: &mut Expected,
    work: &std::path::Path,
    metrics_args: Vec<String>,
    instance: String,
) -> Host {
    let (tree, gpu) = build_tree(index, expected);
    let bus = DbusDaemon::start_permissive();
    let state = work.join(format!("state-{index}"));
    fs::create_dir_all(&state).expect("state dir");
    let mut options = DaemonOptions::new(tree.root(), &state);
    // No injection probe: it would cost every other daemon a SEQNUM.
    options.emit = "none";
    options.verbose = false;
    options.extra_args = metrics_args;
    let mut daemon = Daemon::spawn(bus.address(), &options, work);
    let client = connect(bus.address()).await;
    wait_ready(&client, &mut daemon).await;
    Host {
        tree,
        _bus: bus,
        daemon,
        client,
        instance,
        gpu,
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// `sum by (name) (mdevreg_type_available_instances)` as a map (an empty
/// name is a series without the label).
fn available_by_name(prometheus: &Prometheus) -> BTreeMap<String, u64> {
    prometheus
        .query("sum by (name) (mdevreg_type_available_instances)")
        .iter()
        .map(|sample| {
            let name = sample["metric"]["name"].as_str().unwrap_or("").to_owned();
            (name, sample_value(sample) as u64)
        })
        .collect()
}

/// Waits until Prometheus has scraped every target in `instances` at a
/// time after `since` (Unix seconds).
fn wait_scraped_after(prometheus: &Prometheus, instances: &[&str], since: f64) {
    let deadline = Instant::now() + SCRAPE_TIMEOUT;
    for instance in instances {
        loop {
            let scraped = prometheus.scalar(&format!("timestamp(up{{instance=\"{instance}\"}})"));
            if scraped.is_some_and(|at| at > since) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{instance} was not scraped again after the change"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

async fn register(client: &Connection, name: &str, type_id: &str, type_name: &str, available: u32) {
    let mdev_type = TypeArg {
        id: type_id.to_owned(),
        device_api: "vfio-pci".to_owned(),
        available_instances: available,
        name: Some(type_name.to_owned()),
        description: None,
    };
    registry_proxy(client)
        .await
        .register_parent(name, HashMap::new(), vec![mdev_type.to_dict()])
        .await
        .unwrap_or_else(|err| panic!("RegisterParent {name}: {err}"));
}

#[test]
fn a_fleet_scraped_by_prometheus_adds_up() {
    run(
        "a_fleet_scraped_by_prometheus_adds_up",
        &["prometheus", "prometheus-node-exporter", "ip"],
        || async {
            loopback_up();
            let work = open_tempdir("mdevreg-fleet-");
            let mut expected = Expected::default();
            let mut hosts = Vec::new();
            for index in 0..LISTEN_HOSTS {
                let port = FIRST_PORT + index as u16;
                hosts.push(
                    start_host(
                        index,
                        &mut expected,
                        work.path(),
                        vec!["--metrics-listen".to_owned(), format!("127.0.0.1:{port}")],
                        format!("127.0.0.1:{port}"),
                    )
                    .await,
                );
            }
            // The textfile host (NVIDIA-like: index 21 % 3 == 0).
            let textfile_dir: PathBuf = work.path().join("textfile");
            fs::create_dir_all(&textfile_dir).expect("textfile dir");
            let textfile = textfile_dir.join("mdevreg.prom");
            let textfile_host = start_host(
                21,
                &mut expected,
                work.path(),
                vec![
                    "--metrics-textfile".to_owned(),
                    textfile.display().to_string(),
                ],
                format!("127.0.0.1:{NODE_EXPORTER_PORT}"),
            )
            .await;
            let _node_exporter =
                NodeExporter::start(&textfile_dir, work.path(), NODE_EXPORTER_PORT);

            let targets: Vec<String> = (0..LISTEN_HOSTS)
                .map(|i| format!("'127.0.0.1:{}'", FIRST_PORT + i as u16))
                .collect();
            let config = format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: mdevreg\n    static_configs:\n      - targets: [{}]\n  \
                 - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{NODE_EXPORTER_PORT}']\n",
                targets.join(", ")
            );
            let prometheus_dir = work.path().join("prometheus");
            fs::create_dir_all(&prometheus_dir).expect("prometheus dir");
            let prometheus = Prometheus::start(&prometheus_dir, &config, PROMETHEUS_PORT);

            // Every target up, every host's registry in.
            let fleet = LISTEN_HOSTS as f64 + 1.0;
            let deadline = Instant::now() + SCRAPE_TIMEOUT;
            loop {
                let up = prometheus.scalar("count(up == 1)").unwrap_or(0.0);
                let hosts_seen = prometheus
                    .scalar("count(count by (instance) (mdevreg_parent_info))")
                    .unwrap_or(0.0);
                if up == fleet && hosts_seen == fleet {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "fleet not scraped: {up} targets up, {hosts_seen} hosts with parents; {:?}",
                    prometheus.query("up")
                );
                std::thread::sleep(Duration::from_millis(200));
            }

            assert_eq!(available_by_name(&prometheus), expected.available_by_name);
            assert_eq!(
                prometheus.scalar("count(mdevreg_parent_info)"),
                Some(expected.parents as f64)
            );
            assert_eq!(
                prometheus.scalar("sum(mdevreg_type_instances)"),
                Some(expected.instances as f64)
            );
            assert_eq!(
                prometheus.scalar("count(mdevreg_build_info)"),
                Some(fleet),
                "every host, textfile included"
            );
            assert_eq!(
                prometheus.scalar("sum(node_textfile_scrape_error)"),
                Some(0.0),
                "node_exporter read the textfile"
            );
            // Counters come through both ways, typed as counters.
            assert_eq!(
                prometheus.scalar("count(mdevreg_rescans_total)"),
                Some(fleet)
            );

            // Changes: a registration on a GVT-like host and on the
            // textfile host, and a sysfs change on an NVIDIA-like host,
            // announced by a kernel uevent.
            register(&hosts[1].client, "fleet-demo", "demo-1", "Fleet Demo", 5).await;
            register(
                &textfile_host.client,
                "fleet-textfile",
                "demo-1",
                "Fleet Demo",
                7,
            )
            .await;
            *expected
                .available_by_name
                .entry("Fleet Demo".to_owned())
                .or_default() += 12;
            let gpu = hosts[3].gpu.clone().expect("host 3 is NVIDIA-like");
            let changed = gpu.types[0].clone();
            hosts[3]
                .tree
                .set_available_instances(gpu.name(), &changed.id, 1);
            *expected
                .available_by_name
                .get_mut(changed.name.as_deref().unwrap_or(""))
                .expect("known name") -= u64::from(changed.available_instances) - 1;
            UeventEmitter::open()
                .expect("uevent emitter")
                .inject(&Uevent::new("change", &gpu.devpath).with("SUBSYSTEM", "pci"))
                .expect("inject (needs CAP_SYS_ADMIN)");
            // Wait until the daemon has re-read it (its own D-Bus view).
            let type_proxy = MdevType1Proxy::builder(&hosts[3].client)
                .path(mdevreg::dbus::type_object_path(gpu.name(), &changed.id))
                .cache_properties(CacheProperties::No)
                .build()
                .await
                .expect("MdevType1 proxy");
            let deadline = Instant::now() + SCRAPE_TIMEOUT;
            while type_proxy
                .available_instances()
                .await
                .expect("AvailableInstances")
                != 1
            {
                assert!(Instant::now() < deadline, "host 3 never re-read its GPU");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The textfile is rewritten on the change.
            let deadline = Instant::now() + SCRAPE_TIMEOUT;
            while !fs::read_to_string(&textfile)
                .unwrap_or_default()
                .contains("parent=\"fleet-textfile\"")
            {
                assert!(Instant::now() < deadline, "the textfile was not rewritten");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }

            let changed_at = unix_now();
            wait_scraped_after(
                &prometheus,
                &[
                    hosts[1].instance.as_str(),
                    hosts[3].instance.as_str(),
                    textfile_host.instance.as_str(),
                ],
                changed_at,
            );
            assert_eq!(available_by_name(&prometheus), expected.available_by_name);
            assert_eq!(
                prometheus.scalar("count(mdevreg_parent_info{source=\"userspace\"})"),
                Some(2.0)
            );
            assert_eq!(
                prometheus.scalar(&format!(
                    "mdevreg_type_available_instances{{instance=\"{}\",parent=\"{}\",type=\"{}\"}}",
                    hosts[3].instance,
                    gpu.name(),
                    changed.id
                )),
                Some(1.0)
            );
            assert_eq!(
                prometheus.scalar(&format!(
                    "mdevreg_registrations_total{{instance=\"{}\",source=\"userspace\"}}",
                    hosts[1].instance
                )),
                Some(1.0)
            );
            let mut textfile_host = textfile_host;
            for host in hosts.iter_mut().chain(std::iter::once(&mut textfile_host)) {
                host.daemon.assert_alive("after the fleet test");
            }
        },
    );
}
