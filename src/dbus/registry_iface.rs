//! `org.mdevreg.Registry1` on the root object: queries answered from a
//! snapshot the event loop keeps current, mutating calls checked (caller
//! uid, arguments) and handed to the event loop as [`Request`]s.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use zbus::fdo::DBusProxy;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{ObjectPath, OwnedObjectPath, OwnedVariant};

use super::errors::Error;
use super::{auth, lock, validate, Request};

/// What the root object shows; the event loop replaces it after each change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootSnapshot {
    /// Sequence number of the last registry event.
    pub seqnum: u64,
    /// Object path of every registered parent, by name.
    pub parents: BTreeMap<String, OwnedObjectPath>,
}

/// Named counters behind the `Stats` property (dropped uevents by reason,
/// rescans, own events seen again, ...). Cheap to bump from any task.
#[derive(Debug, Default)]
pub struct Stats {
    counters: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    /// Adds one to `key`.
    pub fn bump(&self, key: &str) {
        self.add(key, 1);
    }

    /// Adds `count` to `key`.
    pub fn add(&self, key: &str, count: u64) {
        let mut counters = lock(&self.counters);
        match counters.get_mut(key) {
            Some(value) => *value = value.saturating_add(count),
            None => {
                counters.insert(key.to_owned(), count);
            }
        }
    }

    /// The value of `key` (0 if never bumped).
    pub fn get(&self, key: &str) -> u64 {
        lock(&self.counters).get(key).copied().unwrap_or(0)
    }

    /// All counters.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        lock(&self.counters).clone()
    }
}

/// The `org.mdevreg.Registry1` interface. Clones share the snapshot.
#[derive(Clone, Debug)]
pub struct Registry1 {
    root: Arc<Mutex<RootSnapshot>>,
    stats: Arc<Stats>,
    requests: mpsc::Sender<Request>,
    bus: DBusProxy<'static>,
}

impl Registry1 {
    /// An interface answering from `root` and `stats`, sending mutating
    /// requests to `requests`, asking `bus` for callers' uids.
    pub fn new(
        root: Arc<Mutex<RootSnapshot>>,
        stats: Arc<Stats>,
        requests: mpsc::Sender<Request>,
        bus: DBusProxy<'static>,
    ) -> Registry1 {
        Registry1 {
            root,
            stats,
            requests,
            bus,
        }
    }

    /// Sends `request` to the event loop and waits for its reply.
    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Request,
    ) -> Result<T, Error> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.requests
            .send(make(reply_tx))
            .await
            .map_err(|_| Error::failed("mdevregd is shutting down"))?;
        reply_rx
            .await
            .map_err(|_| Error::failed("mdevregd is shutting down"))?
    }
}

#[zbus::interface(
    name = "org.mdevreg.Registry1",
    proxy(
        default_service = "org.mdevreg.Registry1",
        default_path = "/org/mdevreg/Registry1"
    )
)]
impl Registry1 {
    /// Object paths of all registered parents, sorted by name.
    async fn list_parents(&self) -> Vec<OwnedObjectPath> {
        lock(&self.root).parents.values().cloned().collect()
    }

    /// Object path of the parent called `name`.
    async fn get_parent(&self, name: &str) -> Result<OwnedObjectPath, Error> {
        lock(&self.root).parents.get(name).cloned().ok_or_else(|| {
            Error::NotRegistered(format!(
                "parent {} is not registered",
                validate::quoted(name)
            ))
        })
    }

    /// Registers a userspace parent (caller uid 0 only).
    async fn register_parent(
        &self,
        #[zbus(header)] header: Header<'_>,
        name: &str,
        options: HashMap<String, OwnedVariant>,
        types: Vec<HashMap<String, OwnedVariant>>,
    ) -> Result<OwnedObjectPath, Error> {
        let owner = auth::require_root(&self.bus, &header, "RegisterParent").await?;
        let registration = validate::registration(name, &options, &types).map_err(|violation| {
            log::info!(
                "RegisterParent {} from {owner} refused: {violation}",
                validate::quoted(name)
            );
            Error::from(violation)
        })?;
        self.submit(|reply| Request::Register {
            registration,
            owner,
            reply,
        })
        .await
    }

    /// Unregisters a userspace parent (caller uid 0 only; an owner-bound
    /// parent only by its owner).
    async fn unregister_parent(
        &self,
        #[zbus(header)] header: Header<'_>,
        name: &str,
    ) -> Result<(), Error> {
        let caller = auth::require_root(&self.bus, &header, "UnregisterParent").await?;
        self.submit(|reply| Request::Unregister {
            name: name.to_owned(),
            caller,
            reply,
        })
        .await
    }

    /// Re-reads all of sysfs and reconciles (caller uid 0 only).
    async fn rescan(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        auth::require_root(&self.bus, &header, "Rescan").await?;
        self.submit(|reply| Request::Rescan { reply }).await
    }

    /// A parent was registered (source `kernel` or `userspace`).
    #[zbus(signal)]
    pub async fn parent_registered(
        emitter: &SignalEmitter<'_>,
        parent: ObjectPath<'_>,
        name: &str,
        source: &str,
        seqnum: u64,
    ) -> zbus::Result<()>;

    /// A parent was unregistered (source `kernel` or `userspace`).
    #[zbus(signal)]
    pub async fn parent_unregistered(
        emitter: &SignalEmitter<'_>,
        parent: ObjectPath<'_>,
        name: &str,
        source: &str,
        seqnum: u64,
    ) -> zbus::Result<()>;

    /// Version of mdevregd.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    /// Sequence number of the last registry event.
    #[zbus(property, name = "SeqNum")]
    fn seq_num(&self) -> u64 {
        lock(&self.root).seqnum
    }

    /// Object paths of all registered parents, sorted by name.
    #[zbus(property)]
    fn parents(&self) -> Vec<OwnedObjectPath> {
        lock(&self.root).parents.values().cloned().collect()
    }

    /// Daemon counters (uevents dropped by reason, rescans, ...). Not
    /// signalled on change: read it when needed.
    #[zbus(property(emits_changed_signal = "false"))]
    fn stats(&self) -> HashMap<String, u64> {
        self.stats.snapshot().into_iter().collect()
    }
}
