//! `org.mdevreg.Parent1`: one object per registered parent, read-only. The
//! event loop keeps a clone of each object's interface and updates the
//! shared data in place, then signals the changed properties.

use std::sync::{Arc, Mutex};

use zbus::OwnedObjectPath;

use super::lock;
use crate::model::Parent;

/// What a parent object shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentData {
    pub parent: Parent,
    /// Object paths of its type objects, sorted by type id.
    pub type_paths: Vec<OwnedObjectPath>,
}

/// The `org.mdevreg.Parent1` interface. Clones share the data.
#[derive(Clone, Debug)]
pub struct Parent1 {
    data: Arc<Mutex<ParentData>>,
}

impl Parent1 {
    pub fn new(data: ParentData) -> Parent1 {
        Parent1 {
            data: Arc::new(Mutex::new(data)),
        }
    }

    /// A copy of the current data.
    pub fn data(&self) -> ParentData {
        lock(&self.data).clone()
    }

    /// Replaces the data (the caller then signals what changed).
    pub fn set_data(&self, data: ParentData) {
        *lock(&self.data) = data;
    }
}

#[zbus::interface(
    name = "org.mdevreg.Parent1",
    proxy(default_service = "org.mdevreg.Registry1")
)]
impl Parent1 {
    /// Parent name: kernel device name or registered name.
    #[zbus(property(emits_changed_signal = "const"))]
    fn name(&self) -> String {
        lock(&self.data).parent.info.name.clone()
    }

    /// Device path (`/devices/...`).
    #[zbus(property, name = "DevPath")]
    fn dev_path(&self) -> String {
        lock(&self.data).parent.info.devpath.clone()
    }

    /// Subsystem of the parent device.
    #[zbus(property)]
    fn subsystem(&self) -> String {
        lock(&self.data).parent.info.subsystem.clone()
    }

    /// Bound driver, empty if none.
    #[zbus(property)]
    fn driver(&self) -> String {
        lock(&self.data).parent.info.driver.clone()
    }

    /// `kernel` or `userspace`.
    #[zbus(property(emits_changed_signal = "const"))]
    fn source(&self) -> String {
        lock(&self.data).parent.source.as_str().to_owned()
    }

    /// Unique bus name of the registrant; empty for kernel parents and for
    /// persistent parents whose registrant has left.
    #[zbus(property)]
    fn owner(&self) -> String {
        lock(&self.data).parent.owner.clone()
    }

    /// `kernel`, `owner` or `persistent`.
    #[zbus(property(emits_changed_signal = "const"))]
    fn lifetime(&self) -> String {
        lock(&self.data).parent.lifetime.as_str().to_owned()
    }

    /// Sequence number of the parent's `ParentRegistered` event.
    #[zbus(property(emits_changed_signal = "const"), name = "RegisteredSeqNum")]
    fn registered_seq_num(&self) -> u64 {
        lock(&self.data).parent.registered_seqnum
    }

    /// Object paths of the parent's types.
    #[zbus(property)]
    fn types(&self) -> Vec<OwnedObjectPath> {
        lock(&self.data).type_paths.clone()
    }
}
