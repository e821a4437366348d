//! mdevregd's daemon: sources → a pure core → one sink.
//!
//! **The data path.** Every input reaches the [event loop](event_loop) on
//! one of two channels: D-Bus mutating calls as [`crate::dbus::Request`]s
//! (the [`crate::dbus::Server`] checks the caller and the arguments on its
//! own task, and answers read-only calls itself), and everything else as
//! [`sources::SourceMessage`]s from the source tasks in [`sources`]
//! (kernel uevent hints, gaps and overflows; owners leaving the bus; full
//! sysfs scans on a blocking thread). The loop hands each input to the
//! [`core::Core`], which holds the registry's write side and its
//! bookkeeping (injected events whose echo is awaited, owners gone, the
//! background scan and the devpaths re-read meanwhile), does no I/O (sysfs
//! only through [`core::ParentReader`]) and returns one [`Commit`]: the
//! registry events, the state files to write, the uevents, the reply, and
//! what follows (an undo if the state file cannot be written, an owner to
//! re-check, a rescan to start). A commit that changes a state file waits
//! in the [`saves::SaveQueue`] until a write after it is durable: the
//! [`writer`] thread writes the files off the loop, one write at a time
//! (a file on tmpfs, a memory copy, is written on the loop instead),
//! and the commits that arrive during a write share the next one. The
//! [`sink::Sink`] then carries every commit out in one fixed order — state
//! files (written by then), uevents, signals then the reply in one write
//! (handed to the [`sender`] task, which writes them to the bus in that
//! order while the loop goes on), observers; readers are answered from a
//! copy of the registry it brings up to date as it shows each commit
//! ([`shown`]: never a registration whose state is not durable) — and the
//! loop feeds back what it learnt
//! ([`sink::FollowUp`]). Counters are a struct of atomics
//! ([`counters::Counters`]) shared by all of them.
//!
//! **Plugging in.** A new source (another backend, a poller) is a task
//! holding a clone of the sources `Sender`: a [`sources::Hint`] has a
//! devpath re-read and diffed, `Resync` rescans; add a `SourceMessage`
//! variant plus a `Core` method returning a `Commit` only for a new kind of
//! input. A new output is one more step in [`sink::Sink::carry_out`], or a
//! [`sink::CommitObserver`] pushed on `Sink::observers` (sees every commit
//! with the registry it left). Startup work that must be shown (say,
//! re-announcing restored parents) is a `Core` method whose commit [`run`]
//! carries out before the loop starts, like [`event_loop::EventLoop::check_restored_owners`]
//! and [`Core::new_boot`] (persistent parents restored in a new boot,
//! decided by [`crate::boot`]).

mod commit;
mod core;
pub mod counters;
mod event_loop;
mod poll_timer;
mod saves;
mod sender;
mod shown;
mod sink;
mod sources;
#[cfg(test)]
mod test_support;
mod trim;
mod writer;

use std::io;
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use zbus::fdo::{DBusProxy, RequestNameFlags, RequestNameReply};
use zbus::proxy::CacheProperties;
use zbus::Connection;

pub use self::commit::{Commit, PendingReply, ReplyValue, Undo};
pub use self::core::{Core, ParentReader};
pub use self::counters::{last_uevent_seconds, Counter, Counters, RejectKind, LAST_UEVENT_KEY};
pub use self::saves::{Released, SaveQueue, Step, Write, Written};
pub use self::sink::{CommitObserver, FollowUp, Sink};
pub use self::sources::{Hint, SourceMessage};
pub use self::trim::{memory_turn, release_freed_memory, tune_allocator, TRIM_AFTER_REPLY_BYTES};

use self::event_loop::EventLoop;
use crate::boot;
use crate::cli::EmitMode;
use crate::dbus::auth::AuthPolicy;
use crate::dbus::{validate, Server, SharedRegistry};
use crate::emit::UeventSink;
use crate::label::BUS_NAME;
use crate::metrics::outputs::{ChangeNotifier, MetricsConfig, MetricsError, MetricsOutputs};
use crate::metrics::{counter_values, MetricsSource, RegistryView};
use crate::netlink::UeventListener;
use crate::paths::SysfsRoot;
use crate::persist::StateStores;
use crate::registry::Registry;
use crate::sysfs;

/// Depth of the request and source channels. A full source channel stalls
/// the netlink reader; the kernel then drops events and the listener reports
/// an overflow, which triggers a rescan.
const CHANNEL_DEPTH: usize = 1024;

/// What the daemon runs on.
#[derive(Clone, Debug)]
pub struct Config {
    pub sysfs_root: SysfsRoot,
    pub stores: StateStores,
    pub emit: EmitMode,
    /// Listen for kernel uevents (off: sysfs is read at start and on Rescan).
    pub netlink: bool,
    /// Receive buffer of the uevent socket in bytes (`None`: the default).
    pub receive_buffer: Option<usize>,
    /// Who may call the mutating methods besides uid 0.
    pub auth: AuthPolicy,
    /// The runtime directory (emptied by a reboot), where the boot marker
    /// lives ([`crate::boot`]).
    pub runtime_dir: std::path::PathBuf,
    /// How often NVIDIA vendor-VFIO parents are checked (`--poll-interval`).
    pub poll_interval: std::time::Duration,
    /// Prometheus metrics outputs (`--metrics-listen`, `--metrics-textfile`).
    pub metrics: MetricsConfig,
    /// The socket of mdevreg-uevent-writer (`--uevent-writer`), which
    /// writes vendor-VFIO synthetic uevents for a daemon whose `/sys` is
    /// read-only; `None`: written directly.
    pub uevent_writer: Option<std::path::PathBuf>,
}

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("the name {BUS_NAME} is already owned on this bus")]
    NameTaken,
    #[error("uevent emission: {0}")]
    Emit(io::Error),
    #[error("kernel uevent listener: {0}")]
    Listener(io::Error),
    #[error("state writer thread: {0}")]
    Writer(io::Error),
    #[error("the bus connection was lost")]
    BusLost,
    #[error("{0}")]
    Metrics(#[from] MetricsError),
    #[error("vendor-VFIO poll timer: {0}")]
    PollTimer(io::Error),
}

/// Where to connect, from `--bus`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusChoice {
    System,
    Session,
    /// Host a bus in-process, on this address or a fresh socket.
    Embedded(Option<String>),
    /// A D-Bus address such as `unix:path=/run/x`.
    Address(String),
}

impl BusChoice {
    /// Parses `system`, `session`, `embedded`, `embedded=ADDRESS` or an
    /// address.
    pub fn parse(text: &str) -> BusChoice {
        match text {
            "system" => BusChoice::System,
            "session" => BusChoice::Session,
            "embedded" => BusChoice::Embedded(None),
            other => match other.strip_prefix("embedded=") {
                Some(address) if !address.is_empty() => {
                    BusChoice::Embedded(Some(address.to_owned()))
                }
                Some(_) => BusChoice::Embedded(None),
                None => BusChoice::Address(other.to_owned()),
            },
        }
    }

    /// Connects to the bus (for `Embedded`, the caller passes the started
    /// bus's address as `Address` instead).
    pub async fn connect(&self) -> zbus::Result<Connection> {
        match self {
            BusChoice::System => Connection::system().await,
            BusChoice::Session => Connection::session().await,
            BusChoice::Address(address) | BusChoice::Embedded(Some(address)) => {
                zbus::connection::Builder::address(address.as_str())
                    .build()
                    .await
            }
            BusChoice::Embedded(None) => Err(zbus::Error::Address(
                "an embedded bus must be started before connecting".into(),
            )),
        }
    }
}

/// Runs the daemon on `connection` until `shutdown` completes (returns
/// `Ok`) or the bus connection is lost (returns [`DaemonError::BusLost`]).
/// State is saved and the name released on the way out.
pub async fn run(
    connection: Connection,
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let counters = Arc::new(Counters::new());

    // The injection probe costs every listener one SEQNUM: probe first.
    let uevents = UeventSink::open(config.emit).map_err(DaemonError::Emit)?;
    log::info!("{}", uevents.describe());
    let listener = if config.netlink {
        let listener = match config.receive_buffer {
            Some(bytes) => UeventListener::with_receive_buffer(bytes),
            None => UeventListener::open(),
        };
        let listener = listener.map_err(DaemonError::Listener)?;
        // Listening from here (events queue in the socket): the "last
        // uevent" time starts now, so the first metrics carry it.
        counters.mark_uevent();
        Some(listener)
    } else {
        log::info!("not listening for kernel uevents (--no-netlink)");
        None
    };

    let registry = restore(&config.stores, &counters);
    let (requests_tx, requests_rx) = mpsc::channel(CHANNEL_DEPTH);
    let (sources_tx, sources_rx) = mpsc::channel(CHANNEL_DEPTH);
    let bus = DBusProxy::builder(&connection)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let registry: SharedRegistry = Arc::new(RwLock::new(Arc::new(registry)));
    // Readers are answered from their own copy, brought up to date as
    // commits are shown (filled below, once the tree is read).
    let shown = shown::Shown::new(&Registry::new());
    let server = Server::new(
        connection.clone(),
        shown.shared(),
        Arc::clone(&counters),
        requests_tx,
        bus.clone(),
        config.auth,
    );

    let mut core = Core::new(Arc::clone(&registry), Arc::clone(&counters));
    // Sysfs first, so the tree served below is complete.
    let scan = sysfs::scan(&config.sysfs_root);
    core::log_warnings(&scan.warnings);
    let found = scan.parents.len();
    core.load_initial(scan);
    shown.reset(&core.registry());
    log::info!(
        "found {found} kernel mdev parents under {}",
        config.sysfs_root.path().display()
    );
    // Metrics once the registry holds the tree; a port or a file that
    // cannot be used fails the start.
    let metrics = if config.metrics.is_enabled() {
        let view: Arc<dyn RegistryView> = shown.shared();
        let values = Arc::clone(&counters);
        let source = Arc::new(MetricsSource::new(view, move || counter_values(&values)));
        Some(MetricsOutputs::start(&config.metrics, source).await?)
    } else {
        None
    };
    let mut observers: Vec<Box<dyn CommitObserver>> = Vec::new();
    if let Some(outputs) = &metrics {
        observers.push(Box::new(MetricsObserver(outputs.notifier())));
    }
    let mut daemon = EventLoop {
        core,
        sink: Sink {
            sender: sender::Sender::start(connection.clone(), Some(Arc::clone(&server))),
            registry: Arc::clone(&registry),
            shown,
            server: Arc::clone(&server),
            uevents,
            stores: config.stores.clone(),
            counters: Arc::clone(&counters),
            observers,
            sysfs_root: config.sysfs_root.clone(),
            uevent_writer: config.uevent_writer.clone(),
        },
        sysfs_root: config.sysfs_root.clone(),
        bus: bus.clone(),
        scan_job: None,
        poll_timer: poll_timer::PollTimer::new(config.poll_interval)
            .map_err(DaemonError::PollTimer)?,
        vendor_watch: crate::vendor_watch::VendorWatch::new(
            config.sysfs_root.clone(),
            crate::vendor_watch::raise_open_files_limit(),
        ),
        saves: SaveQueue::new(),
        writer: writer::StateWriter::start(config.stores.clone()).map_err(DaemonError::Writer)?,
    };
    // What the daemon starts with is shown: restored and scanned.
    counters.show_seqnum(daemon.core.registry().seqnum());
    let server_task = server.start().await?;
    daemon.sink.save_all();

    // Watch owners leave before checking the restored ones, so none is missed.
    let owner_watch = sources::spawn_owner_watch(&bus, sources_tx.clone()).await?;
    // Asked of the bus directly: `Connection::request_name` expects zbus's
    // object server (and warns without one); `server` answers the calls.
    let bus_name = zbus::names::WellKnownName::from_static_str_unchecked(BUS_NAME);
    match bus
        .request_name(bus_name.clone(), RequestNameFlags::DO_NOT_QUEUE)
        .await
        .map_err(zbus::Error::from)?
    {
        RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner => {}
        RequestNameReply::Exists | RequestNameReply::InQueue => return Err(DaemonError::NameTaken),
    }
    {
        let registry = daemon.core.registry();
        log::info!(
            "serving {BUS_NAME} as {} with {} parents (last event {})",
            connection
                .unique_name()
                .map(|name| name.to_string())
                .unwrap_or_default(),
            registry.len(),
            registry.seqnum()
        );
    }
    daemon.check_restored_owners().await;
    daemon.settle().await;
    // A new boot: restored persistent parents are registrations to the
    // world (uevent + signals, once); a restart in the same boot is silent.
    let boot_id = boot::current_boot_id();
    if boot::detect(&config.runtime_dir, boot_id.as_deref()) {
        let commit = daemon.core.new_boot();
        daemon.commit(commit).await;
        daemon.settle().await;
    }
    if let Err(err) = boot::mark(&config.runtime_dir, boot_id.as_deref()) {
        log::warn!(
            "cannot write the boot marker in {}: {err}; the next start will announce persistent parents again",
            config.runtime_dir.display()
        );
    }
    let netlink_task = listener.map(|listener| {
        tokio::spawn(sources::read_uevents(
            listener,
            sources_tx.clone(),
            Arc::clone(&counters),
        ))
    });
    drop(sources_tx);
    // The start-up scan's buffers and the copies of its parents the
    // registry did not keep are freed by now, partly in the arena of a
    // scan thread no later allocation reuses: hand the pages back (the
    // idle trim follows inputs only).
    trim::release_freed_memory();

    let result = daemon
        .run(&connection, requests_rx, sources_rx, shutdown)
        .await;

    owner_watch.abort();
    server_task.abort();
    if let Some(task) = netlink_task {
        task.abort();
    }
    // Callers waiting for a write are answered (their state is written),
    // and what the loop handed to the sender is written to the bus.
    daemon.settle().await;
    daemon.sink.flush().await;
    daemon.sink.save_all();
    drop(metrics);
    if result.is_ok() {
        if let Err(err) = bus.release_name(bus_name).await {
            log::warn!("cannot release {BUS_NAME}: {err}");
        }
        log::info!("stopped");
    }
    result
}

/// Tells the metrics outputs about every commit (the textfile is
/// rewritten when its content changed).
struct MetricsObserver(ChangeNotifier);

impl CommitObserver for MetricsObserver {
    fn committed(&mut self, _registry: &Registry, _commit: &Commit) {
        self.0.changed();
    }
}

/// Loads both state files and rebuilds the registry without events.
fn restore(stores: &StateStores, counters: &Counters) -> Registry {
    let mut parents = Vec::new();
    let mut last_seqnum = 0;
    for store in [&stores.owner, &stores.persistent] {
        let outcome = store.load();
        for warning in &outcome.warnings {
            log::warn!("{warning}");
        }
        last_seqnum = last_seqnum.max(outcome.last_seqnum);
        parents.extend(outcome.records.into_iter().map(|record| record.parent));
    }
    let (registry, rejected) = Registry::restore(parents, last_seqnum);
    for parent in rejected {
        log::warn!(
            "state: dropped a second registration of {} ({})",
            validate::quoted(parent.name()),
            parent.lifetime.as_str()
        );
    }
    if !registry.is_empty() {
        log::info!(
            "restored {} userspace registrations from the state files",
            registry.len()
        );
    }
    counters.add(Counter::ParentsRestored, registry.len() as u64);
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_choices() {
        assert_eq!(BusChoice::parse("system"), BusChoice::System);
        assert_eq!(BusChoice::parse("session"), BusChoice::Session);
        assert_eq!(BusChoice::parse("embedded"), BusChoice::Embedded(None));
        assert_eq!(BusChoice::parse("embedded="), BusChoice::Embedded(None));
        assert_eq!(
            BusChoice::parse("embedded=unix:path=/run/x"),
            BusChoice::Embedded(Some("unix:path=/run/x".into()))
        );
        assert_eq!(
            BusChoice::parse("unix:path=/run/x"),
            BusChoice::Address("unix:path=/run/x".into())
        );
    }
}
