//! The event loop of mdevregd: one task owns the [`Registry`] and wires the
//! sources (sysfs scans, kernel uevent hints, D-Bus requests, owners leaving
//! the bus) to the sinks (state files, uevents, D-Bus objects and signals).
//!
//! Every input goes the same way: apply to the registry → save the state
//! files if a userspace parent changed (before replying, so an acknowledged
//! registration survives `kill -9`) → emit one uevent per userspace
//! (un)registration → update objects and send signals → reply. Interfaces
//! read snapshots the loop updates; no lock is held across I/O.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use zbus::fdo::{DBusProxy, RequestNameFlags, RequestNameReply};
use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedObjectPath};

use crate::boundary;
use crate::cli::EmitMode;
use crate::dbus::{self, signals, validate, Request, Server, SharedRegistry, Stats};
use crate::emit::{Emitted, MdevState, UeventSink, SEQNUM_KEY};
use crate::label::BUS_NAME;
use crate::model::{Lifetime, Parent, Source};
use crate::netlink::{RecvOutcome, SeqnumTracker, UeventListener};
use crate::paths::SysfsRoot;
use crate::persist::{StateStores, StoredRegistration};
use crate::registry::{Event, EventKind, Input, Registry};
use crate::sysfs::{self, ParentRead};
use crate::uevent::{Reject, Uevent};

/// Depth of the request and source channels. A full source channel stalls
/// the netlink reader; the kernel then drops events and the listener reports
/// an overflow, which triggers a rescan.
const CHANNEL_DEPTH: usize = 1024;
/// Injected events whose echo is awaited, at most; older ones are forgotten.
const MAX_PENDING_ECHOES: usize = 4096;
/// Quiet time after a burst of inputs before freed heap is handed back.
const IDLE_TRIM_DELAY: Duration = Duration::from_secs(1);

/// Names of the counters in the `Stats` property.
pub mod counters {
    /// Kernel uevents that passed the trust check.
    pub const UEVENTS: &str = "uevents_received";
    /// Own injected events seen again (recognised by MDEVREG_SEQNUM).
    pub const OWN_EVENTS: &str = "uevents_own";
    /// Events about devices that are not (and are not under) an mdev parent.
    pub const IGNORED: &str = "uevents_ignored";
    /// Messages dropped by the trust check (all reasons).
    pub const REJECTED: &str = "uevents_rejected";
    /// Prefix of the per-reason rejection counters.
    pub const REJECTED_PREFIX: &str = "uevents_rejected_";
    /// Receive buffer overflows (ENOBUFS).
    pub const OVERFLOWS: &str = "netlink_overflows";
    /// Gaps in the kernel SEQNUM sequence.
    pub const SEQNUM_GAPS: &str = "seqnum_gaps";
    /// Full sysfs rescans (overflow, gap, Rescan()).
    pub const RESCANS: &str = "rescans";
    /// Uevents emitted by injection / broadcast, and failures.
    pub const INJECTED: &str = "uevents_injected";
    pub const BROADCAST: &str = "uevents_broadcast";
    pub const EMIT_FAILURES: &str = "uevent_emit_failures";
    /// State file saves that failed.
    pub const SAVE_FAILURES: &str = "state_save_failures";
    /// Uevents of userspace parents not emitted because their location
    /// now names a kernel device or subsystem.
    pub const BOUNDARY_REFUSALS: &str = "uevents_refused_boundary";

    /// Every fixed counter, shown as 0 until bumped.
    pub const ALL: [&str; 13] = [
        BOUNDARY_REFUSALS,
        UEVENTS,
        OWN_EVENTS,
        IGNORED,
        REJECTED,
        OVERFLOWS,
        SEQNUM_GAPS,
        RESCANS,
        INJECTED,
        BROADCAST,
        EMIT_FAILURES,
        SAVE_FAILURES,
        "parents_restored",
    ];
}

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
    #[error("the bus connection was lost")]
    BusLost,
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

/// A message from a source other than a D-Bus request.
#[derive(Debug)]
enum SourceMessage {
    /// A trusted kernel uevent: a hint to re-read its devpath.
    Uevent(UeventHint),
    /// Events may have been lost: rescan everything.
    Resync(&'static str),
    /// A unique bus name left the bus.
    OwnerGone(String),
}

/// Runs the daemon on `connection` until `shutdown` completes (returns
/// `Ok`) or the bus connection is lost (returns [`DaemonError::BusLost`]).
/// State is saved and the name released on the way out.
pub async fn run(
    connection: Connection,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let stats = Arc::new(Stats::default());
    for key in counters::ALL {
        stats.add(key, 0);
    }

    // The injection probe costs every listener one SEQNUM: probe first.
    let sink = UeventSink::open(config.emit).map_err(DaemonError::Emit)?;
    log::info!("{}", sink.describe());
    let listener = if config.netlink {
        let listener = match config.receive_buffer {
            Some(bytes) => UeventListener::with_receive_buffer(bytes),
            None => UeventListener::open(),
        };
        Some(listener.map_err(DaemonError::Listener)?)
    } else {
        log::info!("not listening for kernel uevents (--no-netlink)");
        None
    };

    let registry = restore(&config.stores, &stats);
    let (requests_tx, requests_rx) = mpsc::channel(CHANNEL_DEPTH);
    let (sources_tx, sources_rx) = mpsc::channel(CHANNEL_DEPTH);
    let bus = DBusProxy::builder(&connection)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let registry: SharedRegistry = Arc::new(RwLock::new(registry));
    let server = Server::new(
        connection.clone(),
        Arc::clone(&registry),
        Arc::clone(&stats),
        requests_tx,
        bus.clone(),
    );

    let mut daemon = Daemon {
        registry,
        connection: connection.clone(),
        server: Arc::clone(&server),
        sink,
        stats: Arc::clone(&stats),
        sysfs_root: config.sysfs_root.clone(),
        stores: config.stores.clone(),
        bus: bus.clone(),
        pending_echoes: PendingEchoes::default(),
        scan_job: None,
        gone_owners: GoneOwners::default(),
    };
    // Sysfs first, so the tree served below is complete.
    daemon.initial_scan();
    let server_task = server.start().await?;
    daemon.save_state();

    // Watch owners leave before checking the restored ones, so none is missed.
    let owner_watch = spawn_owner_watch(&bus, sources_tx.clone()).await?;
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
    log::info!(
        "serving {BUS_NAME} as {} with {} parents (last event {})",
        connection
            .unique_name()
            .map(|name| name.to_string())
            .unwrap_or_default(),
        daemon.reg().len(),
        daemon.reg().seqnum()
    );
    daemon.check_restored_owners().await;
    let netlink_task = listener.map(|listener| {
        tokio::spawn(read_uevents(
            listener,
            sources_tx.clone(),
            Arc::clone(&stats),
        ))
    });
    drop(sources_tx);

    let result = daemon
        .run_loop(&connection, requests_rx, sources_rx, shutdown)
        .await;

    owner_watch.abort();
    server_task.abort();
    if let Some(task) = netlink_task {
        task.abort();
    }
    daemon.save_state();
    if result.is_ok() {
        if let Err(err) = bus.release_name(bus_name).await {
            log::warn!("cannot release {BUS_NAME}: {err}");
        }
        log::info!("stopped");
    }
    result
}

/// Loads both state files and rebuilds the registry without events.
fn restore(stores: &StateStores, stats: &Stats) -> Registry {
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
    stats.add("parents_restored", registry.len() as u64);
    registry
}

/// Forwards `NameOwnerChanged` of unique names leaving the bus.
async fn spawn_owner_watch(
    bus: &DBusProxy<'static>,
    sources: mpsc::Sender<SourceMessage>,
) -> zbus::Result<tokio::task::JoinHandle<()>> {
    // arg2 (new owner) empty: a name lost its owner.
    let mut stream = bus.receive_name_owner_changed_with_args(&[(2, "")]).await?;
    Ok(tokio::spawn(async move {
        while let Some(signal) = stream.next().await {
            let Ok(args) = signal.args() else {
                continue;
            };
            let name = args.name().to_string();
            if !name.starts_with(':') || args.new_owner().is_some() {
                continue;
            }
            if sources.send(SourceMessage::OwnerGone(name)).await.is_err() {
                return;
            }
        }
    }))
}

/// Reads the uevent listener and forwards hints, gaps and overflows.
async fn read_uevents(
    mut listener: UeventListener,
    sources: mpsc::Sender<SourceMessage>,
    stats: Arc<Stats>,
) {
    let mut tracker = SeqnumTracker::new();
    loop {
        let message = match listener.recv().await {
            Ok(RecvOutcome::Event(event)) => {
                stats.bump(counters::UEVENTS);
                if let Some(gap) = event.seqnum().and_then(|seqnum| tracker.observe(seqnum)) {
                    stats.bump(counters::SEQNUM_GAPS);
                    log::debug!(
                        "uevent SEQNUM gap: expected {}, got {}; rescanning",
                        gap.expected,
                        gap.got
                    );
                    if sources
                        .send(SourceMessage::Resync("SEQNUM gap"))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                // Only the hint is queued: the decoded environment is freed
                // here, so a backlog (our own echoes under load) stays small.
                SourceMessage::Uevent(UeventHint::of(event))
            }
            Ok(RecvOutcome::Rejected(reject)) => {
                stats.bump(counters::REJECTED);
                stats.bump(&format!(
                    "{}{}",
                    counters::REJECTED_PREFIX,
                    reject_key(&reject)
                ));
                log::debug!("dropped a netlink message: {reject}");
                continue;
            }
            Ok(RecvOutcome::Overflow) => {
                stats.bump(counters::OVERFLOWS);
                tracker.reset();
                log::info!("uevent receive buffer overflowed; rescanning");
                SourceMessage::Resync("receive buffer overflow")
            }
            Err(err) => {
                log::error!("uevent listener: {err}; rescanning");
                tracker.reset();
                // Do not spin on a persistent error.
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                SourceMessage::Resync("listener error")
            }
        };
        if sources.send(message).await.is_err() {
            return;
        }
    }
}

/// Short stable name of a rejection reason, for counters.
pub fn reject_key(reject: &Reject) -> &'static str {
    match reject {
        Reject::Truncated => "truncated",
        Reject::NotKernelGroup { .. } => "not_kernel_group",
        Reject::NotFromKernelPort { .. } => "not_kernel_port",
        Reject::NoCredentials => "no_credentials",
        Reject::NonRootSender { .. } => "non_root_sender",
        Reject::LibudevFormat => "libudev_format",
        Reject::Malformed(_) => "malformed",
    }
}

/// What the event loop needs of a trusted kernel uevent: the devpath to
/// re-read and, for one of our own injected events, its `MDEVREG_SEQNUM`.
#[derive(Debug)]
struct UeventHint {
    devpath: String,
    echo_seqnum: Option<u64>,
}

impl UeventHint {
    fn of(event: Uevent) -> UeventHint {
        let echo_seqnum = event
            .get(SEQNUM_KEY)
            .and_then(|value| value.parse::<u64>().ok());
        UeventHint {
            devpath: event.devpath,
            echo_seqnum,
        }
    }
}

/// Registry sequence numbers of injected events not yet seen again.
#[derive(Debug, Default)]
struct PendingEchoes {
    seqnums: BTreeSet<u64>,
}

impl PendingEchoes {
    fn insert(&mut self, seqnum: u64) {
        self.seqnums.insert(seqnum);
        while self.seqnums.len() > MAX_PENDING_ECHOES {
            self.seqnums.pop_first();
        }
    }

    /// Whether `event` is one of ours coming back (and forgets it).
    fn take(&mut self, event: &UeventHint) -> bool {
        event
            .echo_seqnum
            .is_some_and(|seqnum| self.seqnums.remove(&seqnum))
    }
}

/// Hands freed heap back to the kernel once the loop has been quiet for
/// [`IDLE_TRIM_DELAY`] after handling inputs.
///
/// A burst (many clients registering at once) raises the heap by the
/// objects and in-flight calls of that moment; once they are freed, glibc
/// keeps the pages as holes below longer-lived allocations, which its
/// automatic trim of the heap top never reaches.
struct IdleTrim {
    timer: Pin<Box<Sleep>>,
    last_input: Instant,
    /// Inputs were handled since the last trim.
    armed: bool,
}

impl IdleTrim {
    fn new() -> IdleTrim {
        IdleTrim {
            timer: Box::pin(tokio::time::sleep(IDLE_TRIM_DELAY)),
            last_input: Instant::now(),
            armed: false,
        }
    }

    /// Cheap on the hot path: the timer is only re-armed when it fires.
    fn note_input(&mut self) {
        self.last_input = Instant::now();
        if !self.armed {
            self.armed = true;
            self.timer.as_mut().reset(self.last_input + IDLE_TRIM_DELAY);
        }
    }

    fn timer_fired(&mut self) {
        let due = self.last_input + IDLE_TRIM_DELAY;
        if due > Instant::now() {
            self.timer.as_mut().reset(due);
        } else {
            self.armed = false;
            release_freed_memory();
        }
    }
}

/// Returns whole free pages of every malloc arena to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_memory() {
    // SAFETY: malloc_trim takes no pointers; it walks glibc's own arenas
    // under their locks and madvise()s free pages away.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Other allocators return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

struct Daemon {
    /// Shared with the D-Bus server, which only reads it.
    registry: SharedRegistry,
    connection: Connection,
    server: Arc<Server>,
    sink: UeventSink,
    stats: Arc<Stats>,
    sysfs_root: SysfsRoot,
    stores: StateStores,
    bus: DBusProxy<'static>,
    pending_echoes: PendingEchoes,
    /// The background rescan running, if any.
    scan_job: Option<ScanJob>,
    gone_owners: GoneOwners,
}

/// Unique names seen leaving the bus, the most recent ones (a bus never
/// reuses a unique name, so membership is final).
#[derive(Default)]
struct GoneOwners {
    order: std::collections::VecDeque<String>,
    names: HashSet<String>,
}

impl GoneOwners {
    const MAX: usize = 4096;

    fn insert(&mut self, name: &str) {
        if !self.names.insert(name.to_owned()) {
            return;
        }
        self.order.push_back(name.to_owned());
        if self.order.len() > Self::MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.names.remove(&oldest);
            }
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }
}

/// A full rescan running on a blocking thread.
struct ScanJob {
    handle: tokio::task::JoinHandle<sysfs::Scan>,
    /// Devpaths re-read while it ran.
    touched: BTreeSet<String>,
    /// Another resync was asked for meanwhile.
    again: Option<&'static str>,
}

impl Daemon {
    /// The registry, for reading (the server may read at the same time).
    fn reg(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies `input` to the registry (the only writer).
    fn apply(&self, input: Input) -> Result<Vec<Event>, crate::registry::Error> {
        self.registry
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .apply(input)
    }

    async fn run_loop(
        &mut self,
        connection: &Connection,
        mut requests: mpsc::Receiver<Request>,
        mut sources: mpsc::Receiver<SourceMessage>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DaemonError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut closed = std::pin::pin!(connection.closed());
        let mut idle_trim = IdleTrim::new();
        loop {
            // Not biased: preferring requests would leave kernel uevents
            // (our own echoes, under load) queued up to CHANNEL_DEPTH, and
            // the netlink socket overflowing behind them.
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = &mut closed => return Err(DaemonError::BusLost),
                Some(request) = requests.recv() => {
                    self.handle_request(request).await;
                    idle_trim.note_input();
                }
                Some(first) = sources.recv() => {
                    let mut batch = vec![first];
                    while let Ok(next) = sources.try_recv() {
                        batch.push(next);
                    }
                    self.handle_sources(batch).await;
                    idle_trim.note_input();
                }
                scan = async {
                    match self.scan_job.as_mut() {
                        Some(job) => (&mut job.handle).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.scan_finished(scan).await;
                    idle_trim.note_input();
                }
                () = &mut idle_trim.timer, if idle_trim.armed => idle_trim.timer_fired(),
            }
        }
    }

    /// Carries out a mutating call and replies to it. The reply goes out in
    /// the same write as the call's signals, after them: a caller that has
    /// its reply has been sent every signal of its change.
    async fn handle_request(&mut self, request: Request) {
        match request {
            Request::Register {
                registration,
                owner,
                uid,
                call,
            } => {
                let (result, mut messages) = match self.register(registration, &owner, uid) {
                    Ok((path, messages)) => (Ok(path), messages),
                    Err(err) => (Err(err), Vec::new()),
                };
                let registered = result.is_ok();
                messages.extend(dbus::reply_to(&call, result));
                signals::send(&self.connection, messages).await;
                // The registrant may have left between its call and now; its
                // NameOwnerChanged was then handled already and found nothing.
                if registered && self.gone_owners.contains(&owner) {
                    self.owner_gone(owner).await;
                }
            }
            Request::Unregister {
                name,
                caller,
                uid,
                call,
            } => {
                let (result, mut messages) = match self.unregister(name, caller, uid) {
                    Ok(messages) => (Ok(()), messages),
                    Err(err) => (Err(err), Vec::new()),
                };
                messages.extend(dbus::reply_to(&call, result));
                signals::send(&self.connection, messages).await;
            }
            Request::Rescan { call } => {
                self.rescan("Rescan()").await;
                let reply: Vec<_> = dbus::reply_to(&call, Ok(())).into_iter().collect();
                signals::send(&self.connection, reply).await;
            }
        }
    }

    /// Registers, saves, emits the uevent; returns the object path and the
    /// signals to send.
    fn register(
        &mut self,
        registration: validate::Registration,
        owner: &str,
        uid: u32,
    ) -> Result<(OwnedObjectPath, Vec<zbus::Message>), dbus::Error> {
        let name = registration.info.name.clone();
        let lifetime = registration.lifetime;
        // Every caller, root too: a userspace parent names no kernel device.
        boundary::check(
            &self.sysfs_root,
            &registration.info.devpath,
            &registration.info.subsystem,
        )
        .map_err(|crossing| {
            log::info!("RegisterParent {name:?} from {owner} refused: {crossing}");
            dbus::Error::InvalidArgument(crossing.to_string())
        })?;
        let input = Input::Register {
            info: registration.info,
            owner: owner.to_owned(),
            lifetime,
            uid,
        };
        let events = self.apply(input).map_err(|err| {
            log::info!("RegisterParent from {owner} refused: {err}");
            dbus::Error::from(err)
        })?;
        if let Err(err) = self.try_save_stores(&[lifetime]) {
            // Not acknowledged unless it would survive a restart: undo.
            log::error!("cannot save state, refusing registration of {name:?}: {err}");
            let _ = self.apply(Input::Unregister {
                name: name.clone(),
                caller: owner.to_owned(),
                uid,
            });
            return Err(dbus::Error::failed(format!("cannot save state: {err}")));
        }
        let messages = self.publish_messages(&events);
        log::info!(
            "registered userspace parent {name:?} for {owner} (lifetime {})",
            lifetime.as_str()
        );
        Ok((dbus::parent_object_path(&name), messages))
    }

    /// Unregisters, saves, emits the uevent; returns the signals to send.
    fn unregister(
        &mut self,
        name: String,
        caller: String,
        uid: u32,
    ) -> Result<Vec<zbus::Message>, dbus::Error> {
        let events = self
            .apply(Input::Unregister {
                name: name.clone(),
                caller: caller.clone(),
                uid,
            })
            .map_err(|err| {
                log::info!("UnregisterParent from {caller} refused: {err}");
                dbus::Error::from(err)
            })?;
        self.save_if_userspace(&events);
        let messages = self.publish_messages(&events);
        log::info!("unregistered userspace parent {name:?} at the request of {caller}");
        Ok(messages)
    }

    /// Re-adopts restored registrations whose owner is still connected;
    /// the others go through the normal "owner gone" path.
    async fn check_restored_owners(&mut self) {
        let owners: BTreeSet<String> = self
            .reg()
            .parents()
            .filter(|parent| parent.source == Source::Userspace && !parent.owner.is_empty())
            .map(|parent| parent.owner.clone())
            .collect();
        for owner in owners {
            let present = match zbus::names::BusName::try_from(owner.as_str()) {
                Ok(name) => match self.bus.name_has_owner(name).await {
                    Ok(present) => present,
                    Err(err) => {
                        log::warn!("cannot ask the bus about {owner}: {err}; keeping it");
                        true
                    }
                },
                Err(_) => false,
            };
            if present {
                log::info!("re-adopted the registrations of {owner}, still on the bus");
            } else {
                log::info!("owner {owner} of restored registrations has left the bus");
                self.owner_gone(owner).await;
            }
        }
    }

    async fn owner_gone(&mut self, owner: String) {
        self.server.forget_caller(&owner);
        self.gone_owners.insert(&owner);
        let Ok(events) = self.apply(Input::OwnerGone {
            owner: owner.clone(),
        }) else {
            return;
        };
        if events.is_empty() {
            return;
        }
        self.save_if_userspace(&events);
        self.publish(&events).await;
        let count = |unregistered: bool| {
            events
                .iter()
                .filter(|event| match event.kind {
                    EventKind::ParentUnregistered { .. } => unregistered,
                    EventKind::ParentUpdated { .. } => !unregistered,
                    _ => false,
                })
                .count()
        };
        log::info!(
            "{owner} left the bus: {} owner-bound parents unregistered, {} persistent ones kept",
            count(true),
            count(false)
        );
    }

    async fn handle_sources(&mut self, batch: Vec<SourceMessage>) {
        // Devpaths with the number of events about each.
        let mut devpaths: BTreeMap<String, u64> = BTreeMap::new();
        let mut resync = None;
        for message in batch {
            match message {
                SourceMessage::Uevent(event) => {
                    if self.pending_echoes.take(&event) {
                        self.stats.bump(counters::OWN_EVENTS);
                        log::debug!("own uevent for {} seen again", event.devpath);
                        continue;
                    }
                    *devpaths.entry(event.devpath).or_default() += 1;
                }
                SourceMessage::Resync(reason) => resync = Some(reason),
                SourceMessage::OwnerGone(owner) => self.owner_gone(owner).await,
            }
        }
        if let Some(reason) = resync {
            self.start_rescan(reason);
        }
        let mut inputs = Vec::new();
        let mut seen = HashSet::new();
        for (devpath, copies) in devpaths {
            match self.kernel_input(&devpath) {
                Some(input) => {
                    let key = match &input {
                        Input::KernelParent { devpath, .. } => devpath.clone(),
                        _ => String::new(),
                    };
                    if let Some(job) = self.scan_job.as_mut() {
                        job.touched.insert(key.clone());
                    }
                    if seen.insert(key) {
                        inputs.push(input);
                    }
                }
                None => {
                    log::debug!("{copies} uevents for {devpath}: no mdev parent there");
                    self.stats.add(counters::IGNORED, copies);
                }
            }
        }
        let mut events = Vec::new();
        for input in inputs {
            if let Ok(more) = self.apply(input) {
                events.extend(more);
            }
        }
        self.save_if_userspace(&events);
        self.publish(&events).await;
    }

    /// The re-read a uevent on `devpath` calls for: the known kernel parent
    /// at or above it, else the device itself or its parent directory (an
    /// mdev instance below a parent) if that is an mdev parent.
    fn kernel_input(&self, devpath: &str) -> Option<Input> {
        let known = self.reg().kernel_devpath_owner(devpath).map(str::to_owned);
        if let Some(parent_devpath) = known {
            return match sysfs::read_parent(&self.sysfs_root, &parent_devpath) {
                ParentRead::Parent(info, warnings) => {
                    log_warnings(&warnings);
                    Some(Input::KernelParent {
                        devpath: parent_devpath,
                        info: Some(info),
                    })
                }
                ParentRead::NotAParent => Some(Input::KernelParent {
                    devpath: parent_devpath,
                    info: None,
                }),
                // Unreadable is not gone: keep what is known.
                ParentRead::Bad(warning) => {
                    log::warn!("cannot re-read parent: {warning}");
                    None
                }
            };
        }
        let above = devpath.rsplit_once('/').map(|(dir, _)| dir);
        for candidate in std::iter::once(devpath).chain(above) {
            if let ParentRead::Parent(info, warnings) =
                sysfs::read_parent(&self.sysfs_root, candidate)
            {
                log_warnings(&warnings);
                return Some(Input::KernelParent {
                    devpath: candidate.to_owned(),
                    info: Some(info),
                });
            }
        }
        None
    }

    fn initial_scan(&mut self) {
        let scan = sysfs::scan(&self.sysfs_root);
        log_warnings(&scan.warnings);
        let found = scan.parents.len();
        // Before serving: the tree is built from the result, no signals.
        // One parent at a time, so the events (each holding a copy of its
        // parent) are dropped as they come instead of doubling the peak.
        // The registry holds no kernel parents yet: nothing can be gone.
        for info in scan.parents {
            let _ = self.apply(Input::KernelParent {
                devpath: info.devpath.clone(),
                info: Some(info),
            });
        }
        log::info!(
            "found {found} kernel mdev parents under {}",
            self.sysfs_root.path().display()
        );
    }

    /// Starts a full rescan on a blocking thread (a SEQNUM gap or an
    /// overflow): uevents keep being handled meanwhile. One runs at a time;
    /// a resync asked for during it runs once it is done.
    fn start_rescan(&mut self, reason: &'static str) {
        if let Some(job) = self.scan_job.as_mut() {
            job.again = Some(reason);
            return;
        }
        self.stats.bump(counters::RESCANS);
        log::info!("rescanning sysfs ({reason})");
        let root = self.sysfs_root.clone();
        self.scan_job = Some(ScanJob {
            handle: tokio::task::spawn_blocking(move || sysfs::scan(&root)),
            touched: BTreeSet::new(),
            again: None,
        });
    }

    /// Applies a background scan. Parents re-read while it ran are read
    /// again, as the scan may predate what those reads saw.
    async fn scan_finished(&mut self, scan: Result<sysfs::Scan, tokio::task::JoinError>) {
        let Some(job) = self.scan_job.take() else {
            return;
        };
        match scan {
            Ok(mut scan) => {
                log_warnings(&scan.warnings);
                for devpath in &job.touched {
                    scan.parents.retain(|parent| &parent.devpath != devpath);
                    if let ParentRead::Parent(info, warnings) =
                        sysfs::read_parent(&self.sysfs_root, devpath)
                    {
                        log_warnings(&warnings);
                        // First in the list: it wins over a stale namesake.
                        scan.parents.insert(0, info);
                    }
                }
                let events = self
                    .apply(Input::KernelScan(scan.parents))
                    .unwrap_or_default();
                self.save_if_userspace(&events);
                self.publish(&events).await;
            }
            Err(err) => log::error!("sysfs rescan failed: {err}"),
        }
        if let Some(reason) = job.again {
            self.start_rescan(reason);
        }
    }

    async fn rescan(&mut self, reason: &str) {
        self.stats.bump(counters::RESCANS);
        log::info!("rescanning sysfs ({reason})");
        let scan = sysfs::scan(&self.sysfs_root);
        log_warnings(&scan.warnings);
        let events = self
            .apply(Input::KernelScan(scan.parents))
            .unwrap_or_default();
        self.save_if_userspace(&events);
        self.publish(&events).await;
    }

    /// Emits uevents for userspace transitions, then shows the events on
    /// the bus.
    async fn publish(&mut self, events: &[Event]) {
        let messages = self.publish_messages(events);
        signals::send(&self.connection, messages).await;
    }

    /// Emits uevents for userspace transitions and returns the signals
    /// showing `events` (for the caller to send, in order).
    fn publish_messages(&mut self, events: &[Event]) -> Vec<zbus::Message> {
        for event in events {
            let (parent, state) = match &event.kind {
                EventKind::ParentRegistered { parent } => (parent, MdevState::Registered),
                EventKind::ParentUnregistered { parent } => (parent, MdevState::Unregistered),
                _ => continue,
            };
            log::info!(
                "event {}: {} parent {:?} {}",
                event.seqnum,
                parent.source.as_str(),
                parent.name(),
                state.as_str()
            );
            self.emit_uevent(parent, state, event.seqnum);
        }
        signals::build(&self.reg(), events)
    }

    fn emit_uevent(&mut self, parent: &Parent, state: MdevState, seqnum: u64) {
        if parent.source == Source::Userspace {
            // Checked again: a device may have appeared there since.
            if let Err(crossing) = boundary::check(
                &self.sysfs_root,
                &parent.info.devpath,
                &parent.info.subsystem,
            ) {
                self.stats.bump(counters::BOUNDARY_REFUSALS);
                log::warn!(
                    "not emitting the {} uevent of {:?}: {crossing}",
                    state.as_str(),
                    parent.name()
                );
                return;
            }
        }
        match self.sink.emit(parent, state, seqnum) {
            Ok(Emitted::Injected) => {
                self.stats.bump(counters::INJECTED);
                self.pending_echoes.insert(seqnum);
            }
            Ok(Emitted::Broadcast) => self.stats.bump(counters::BROADCAST),
            Ok(Emitted::Nothing) => {}
            Err(err) => {
                self.stats.bump(counters::EMIT_FAILURES);
                log::warn!(
                    "cannot emit the {} uevent of {:?}: {err}",
                    state.as_str(),
                    parent.name()
                );
            }
        }
    }

    /// Saves the state files whose registrations `events` changed.
    fn save_if_userspace(&mut self, events: &[Event]) {
        let mut lifetimes: Vec<Lifetime> = events.iter().filter_map(userspace_lifetime).collect();
        lifetimes.sort_by_key(|lifetime| lifetime.as_str());
        lifetimes.dedup();
        if lifetimes.is_empty() {
            return;
        }
        if let Err(err) = self.try_save_stores(&lifetimes) {
            self.stats.bump(counters::SAVE_FAILURES);
            log::error!("cannot save state: {err}");
        }
    }

    fn save_state(&mut self) {
        if let Err(err) = self.try_save_state() {
            self.stats.bump(counters::SAVE_FAILURES);
            log::error!("cannot save state: {err}");
        }
    }

    /// Writes both state files from the registry.
    fn try_save_state(&self) -> io::Result<()> {
        self.try_save_stores(&[Lifetime::Owner, Lifetime::Persistent])
    }

    /// Writes the state files of `lifetimes` from the registry.
    fn try_save_stores(&self, lifetimes: &[Lifetime]) -> io::Result<()> {
        for store in [&self.stores.owner, &self.stores.persistent] {
            if !lifetimes.contains(&store.lifetime()) {
                continue;
            }
            let (seqnum, records) = {
                let registry = self.reg();
                let records: Vec<StoredRegistration> = registry
                    .parents()
                    .filter(|parent| {
                        parent.source == Source::Userspace && parent.lifetime == store.lifetime()
                    })
                    .map(|parent| StoredRegistration {
                        parent: parent.clone(),
                    })
                    .collect();
                (registry.seqnum(), records)
            };
            store.save(seqnum, &records).map_err(|err| {
                io::Error::new(err.kind(), format!("{}: {err}", store.path().display()))
            })?;
        }
        Ok(())
    }
}

/// The lifetime (state file) of the userspace registration `event`
/// changes; `None` if it changes no state file.
fn userspace_lifetime(event: &Event) -> Option<Lifetime> {
    let parent = match &event.kind {
        EventKind::ParentRegistered { parent } | EventKind::ParentUnregistered { parent } => parent,
        EventKind::ParentUpdated { after, .. } => after,
        _ => return None,
    };
    (parent.source == Source::Userspace).then_some(parent.lifetime)
}

fn log_warnings(warnings: &[sysfs::Warning]) {
    for warning in warnings {
        log::warn!("sysfs: {warning}");
    }
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

    #[test]
    fn echoes_are_recognised_once() {
        let mut pending = PendingEchoes::default();
        pending.insert(5);
        let hint = UeventHint::of;
        let ours = hint(Uevent::new("change", "/devices/virtual/mdevreg/a").with(SEQNUM_KEY, "5"));
        let other = hint(Uevent::new("change", "/devices/virtual/mdevreg/a").with(SEQNUM_KEY, "6"));
        let plain = hint(Uevent::new("change", "/devices/virtual/mdevreg/a"));
        assert!(!pending.take(&other));
        assert!(!pending.take(&plain));
        assert!(pending.take(&ours));
        assert!(!pending.take(&ours));
        for seqnum in 0..(MAX_PENDING_ECHOES as u64 + 10) {
            pending.insert(seqnum);
        }
        assert_eq!(pending.seqnums.len(), MAX_PENDING_ECHOES);
        assert_eq!(pending.seqnums.first(), Some(&10));
    }

    #[test]
    fn reject_keys_are_distinct() {
        use crate::uevent::DecodeError;
        let rejects = [
            Reject::Truncated,
            Reject::NotKernelGroup { groups: 2 },
            Reject::NotFromKernelPort { port: 9 },
            Reject::NoCredentials,
            Reject::NonRootSender { uid: 1 },
            Reject::LibudevFormat,
            Reject::Malformed(DecodeError::Header),
        ];
        let keys: HashSet<&str> = rejects.iter().map(reject_key).collect();
        assert_eq!(keys.len(), rejects.len());
    }

    #[test]
    fn userspace_events_trigger_saves() {
        use crate::model::{Lifetime, ParentInfo};
        let parent = |source| Parent {
            info: ParentInfo {
                name: "p".into(),
                ..ParentInfo::default()
            },
            source,
            owner: String::new(),
            lifetime: Lifetime::Persistent,
            registered_seqnum: 1,
            uid: 0,
        };
        let registered = |source| Event {
            seqnum: 1,
            kind: EventKind::ParentRegistered {
                parent: parent(source),
            },
        };
        assert_eq!(
            userspace_lifetime(&registered(Source::Userspace)),
            Some(Lifetime::Persistent)
        );
        assert_eq!(userspace_lifetime(&registered(Source::Kernel)), None);
    }
}
