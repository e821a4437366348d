//! The client side of the daemon tests: the daemon's bus name and paths,
//! zbus connections, `Registry1` proxies, raw calls (any variant may be
//! sent), registry snapshots and counters, D-Bus error names, and polling
//! until a condition holds.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use mdevreg::dbus::Registry1Proxy;
use zbus::proxy::CacheProperties;
use zbus::{Connection, DBusError, OwnedObjectPath, Variant};

pub const BUS_NAME: &str = "org.mdevreg.Registry1";
pub const ROOT_PATH: &str = "/org/mdevreg/Registry1";
pub const REGISTRY_IFACE: &str = "org.mdevreg.Registry1";

/// How long [`eventually`] polls.
const EVENTUALLY_TIMEOUT: Duration = Duration::from_secs(15);

/// A new client connection to `address`.
pub async fn connect(address: &str) -> Connection {
    zbus::connection::Builder::address(address)
        .build()
        .await
        .unwrap_or_else(|err| panic!("connect to {address}: {err}"))
}

/// A `Registry1` proxy that never caches properties.
pub async fn registry_proxy(connection: &Connection) -> Registry1Proxy<'static> {
    Registry1Proxy::builder(connection)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("Registry1 proxy")
}

/// `ListParents` by a raw call.
pub async fn list_parents(connection: &Connection) -> zbus::Result<Vec<OwnedObjectPath>> {
    let reply = connection
        .call_method(
            Some(BUS_NAME),
            ROOT_PATH,
            Some(REGISTRY_IFACE),
            "ListParents",
            &(),
        )
        .await?;
    reply.body().deserialize()
}

/// The registered parents' names (unescaped from their object paths), in
/// the daemon's order.
pub async fn parent_names(registry: &Registry1Proxy<'_>) -> Vec<String> {
    registry
        .list_parents()
        .await
        .expect("ListParents")
        .iter()
        .map(|path| mdevreg::label::parse_parent_path(path.as_str()).expect("parent path"))
        .collect()
}

/// Polls `check` every 20 ms until it returns `Some`, for up to 15 s;
/// panics naming `what` after that.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + EVENTUALLY_TIMEOUT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The prefix of the daemon's D-Bus error names.
pub const ERROR_PREFIX: &str = "org.mdevreg.Registry1.Error.";

/// What a test compares before and after a hostile input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrySnapshot {
    pub parents: Vec<OwnedObjectPath>,
    pub seqnum: u64,
}

impl RegistrySnapshot {
    /// Parent names (unescaped from the object paths).
    pub fn names(&self) -> Vec<String> {
        self.parents
            .iter()
            .map(|path| {
                mdevreg::label::parse_parent_path(path.as_str())
                    .unwrap_or_else(|| panic!("not a parent path: {path}"))
            })
            .collect()
    }
}

/// The registry as clients see it: the parents' paths (sorted) and `SeqNum`.
pub async fn snapshot(connection: &Connection) -> RegistrySnapshot {
    let proxy = registry_proxy(connection).await;
    let mut parents = list_parents(connection).await.expect("ListParents");
    parents.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    RegistrySnapshot {
        parents,
        seqnum: proxy.seq_num().await.expect("SeqNum"),
    }
}

/// Polls [`snapshot`] until `done` holds or `timeout` passes; returns the
/// last snapshot and whether `done` held.
pub async fn wait_for_registry(
    connection: &Connection,
    timeout: Duration,
    done: impl Fn(&RegistrySnapshot) -> bool,
) -> (RegistrySnapshot, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = snapshot(connection).await;
        if done(&now) {
            return (now, true);
        }
        if Instant::now() >= deadline {
            return (now, false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The daemon's counters (`Stats` property).
pub async fn stats(connection: &Connection) -> BTreeMap<String, u64> {
    registry_proxy(connection)
        .await
        .stats()
        .await
        .expect("Stats")
        .into_iter()
        .collect()
}

/// The D-Bus error name of a failed call (`org.mdevreg.Registry1.Error.X`,
/// `org.freedesktop.DBus.Error.X`), or a description of a non-D-Bus error.
pub fn error_name(error: &zbus::Error) -> String {
    match error {
        zbus::Error::MethodError(name, _, _) => name.as_str().to_owned(),
        zbus::Error::FDO(fdo) => fdo.name().as_str().to_owned(),
        other => format!("(not a D-Bus error reply: {other})"),
    }
}

/// One `a{sv}` dictionary as sent on the wire.
pub type Dict<'a> = HashMap<&'static str, Variant<'a>>;

/// `RegisterParent(name, options, types)` by a raw call, so that any variant
/// may be sent.
pub async fn register_raw(
    connection: &Connection,
    name: &str,
    options: &Dict<'_>,
    types: &[Dict<'_>],
) -> zbus::Result<OwnedObjectPath> {
    let reply = connection
        .call_method(
            Some(BUS_NAME),
            ROOT_PATH,
            Some(REGISTRY_IFACE),
            "RegisterParent",
            &(name, options, types),
        )
        .await?;
    reply.body().deserialize()
}

/// `UnregisterParent(name)` by a raw call.
pub async fn unregister(connection: &Connection, name: &str) -> zbus::Result<()> {
    connection
        .call_method(
            Some(BUS_NAME),
            ROOT_PATH,
            Some(REGISTRY_IFACE),
            "UnregisterParent",
            &(name,),
        )
        .await?;
    Ok(())
}

/// A valid type entry.
pub fn good_type(id: &str) -> Dict<'static> {
    HashMap::from([
        ("Id", Variant::from(id.to_owned())),
        ("DeviceApi", Variant::from("vfio-pci")),
        ("AvailableInstances", Variant::from(4u32)),
        ("Name", Variant::from("test type")),
    ])
}

/// Options with `Lifetime` set.
pub fn lifetime(value: &'static str) -> Dict<'static> {
    HashMap::from([("Lifetime", Variant::from(value))])
}
