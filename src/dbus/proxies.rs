//! Client proxies of the three interfaces (what the CLI and the tests call),
//! declared to match [`super::interfaces`]; errors come back typed as
//! [`Error`].

use std::collections::HashMap;

use zbus::{ObjectPath, OwnedObjectPath, OwnedVariant};

use super::errors::Error;

/// `org.mdevreg.Registry1` on the root object.
#[zbus::proxy(
    interface = "org.mdevreg.Registry1",
    default_service = "org.mdevreg.Registry1",
    default_path = "/org/mdevreg/Registry1"
)]
pub trait Registry1 {
    /// Object paths of all registered parents, sorted by name.
    fn list_parents(&self) -> Result<Vec<OwnedObjectPath>, Error>;

    /// Object path of the parent called `name`.
    fn get_parent(&self, name: &str) -> Result<OwnedObjectPath, Error>;

    /// Registers a userspace parent (caller uid 0 only).
    fn register_parent(
        &self,
        name: &str,
        options: HashMap<String, OwnedVariant>,
        types: Vec<HashMap<String, OwnedVariant>>,
    ) -> Result<OwnedObjectPath, Error>;

    /// Unregisters a userspace parent (caller uid 0 only).
    fn unregister_parent(&self, name: &str) -> Result<(), Error>;

    /// Re-reads all of sysfs and reconciles (caller uid 0 only).
    fn rescan(&self) -> Result<(), Error>;

    /// The `mdevctl types --dumpjson` document of the registry (pretty
    /// printed, no final newline); only `parent` if not empty.
    fn dump_types(&self, parent: &str) -> Result<String, Error>;

    /// [`dump_types`](Self::dump_types) as a read-only file (offset 0).
    fn dump_types_by_file_descriptor(&self, parent: &str) -> Result<zbus::OwnedFd, Error>;

    /// Every parent (only `parent` if not empty) as a JSON array of the
    /// registry's parents, in a read-only file (offset 0).
    fn dump_parents_by_file_descriptor(&self, parent: &str) -> Result<zbus::OwnedFd, Error>;

    /// A parent was registered (source `kernel` or `userspace`).
    #[zbus(signal)]
    fn parent_registered(
        &self,
        parent: ObjectPath<'_>,
        name: &str,
        source: &str,
        seqnum: u64,
    ) -> zbus::Result<()>;

    /// A parent was unregistered (source `kernel` or `userspace`).
    #[zbus(signal)]
    fn parent_unregistered(
        &self,
        parent: ObjectPath<'_>,
        name: &str,
        source: &str,
        seqnum: u64,
    ) -> zbus::Result<()>;

    /// Version of mdevregd.
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    /// Sequence number of the last registry event.
    #[zbus(property, name = "SeqNum")]
    fn seq_num(&self) -> zbus::Result<u64>;

    /// Object paths of all registered parents, sorted by name.
    #[zbus(property)]
    fn parents(&self) -> zbus::Result<Vec<OwnedObjectPath>>;

    /// Daemon counters.
    #[zbus(property)]
    fn stats(&self) -> zbus::Result<HashMap<String, u64>>;
}

/// `org.mdevreg.Parent1` on a parent object.
#[zbus::proxy(
    interface = "org.mdevreg.Parent1",
    default_service = "org.mdevreg.Registry1"
)]
pub trait Parent1 {
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property, name = "DevPath")]
    fn dev_path(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn subsystem(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn driver(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn source(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn owner(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn lifetime(&self) -> zbus::Result<String>;
    #[zbus(property, name = "RegisteredSeqNum")]
    fn registered_seq_num(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn types(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
}

/// `org.mdevreg.MdevType1` on a type object.
#[zbus::proxy(
    interface = "org.mdevreg.MdevType1",
    default_service = "org.mdevreg.Registry1"
)]
pub trait MdevType1 {
    #[zbus(property)]
    fn id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn description(&self) -> zbus::Result<String>;
    #[zbus(property, name = "DeviceApi")]
    fn device_api(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn available_instances(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn devices(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property)]
    fn parent(&self) -> zbus::Result<OwnedObjectPath>;
}
