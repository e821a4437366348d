//! The D-Bus side of mdevregd: the three interfaces (`Registry1` on the root
//! object beside the ObjectManager, `Parent1` and `MdevType1` objects), their
//! typed errors, caller authorisation, argument validation, and [`Objects`],
//! the sink that turns registry events into objects, properties and signals.
//!
//! The client proxies are generated from the server definitions:
//! [`Registry1Proxy`], [`Parent1Proxy`], [`MdevType1Proxy`] (and their
//! blocking twins are not generated: the CLI is async).

pub mod auth;
pub mod errors;
mod parent_iface;
mod registry_iface;
mod type_iface;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, OwnedObjectPath};

pub use errors::Error;
pub use parent_iface::{Parent1, Parent1Proxy, ParentData};
pub use registry_iface::{Registry1, Registry1Proxy, RootSnapshot, Stats};
pub use type_iface::{MdevType1, MdevType1Proxy};

use crate::label;
use crate::model::{MdevType, Parent};
use crate::registry::{Event, EventKind, Registry};

/// A mutating call, checked and handed from the `Registry1` interface to the
/// event loop, which replies once the change is applied, persisted, emitted
/// and visible on the bus.
#[derive(Debug)]
pub enum Request {
    Register {
        registration: validate::Registration,
        /// Unique bus name of the caller.
        owner: String,
        reply: oneshot::Sender<Result<OwnedObjectPath, Error>>,
    },
    Unregister {
        name: String,
        /// Unique bus name of the caller.
        caller: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Rescan {
        reply: oneshot::Sender<Result<(), Error>>,
    },
}

/// Locks `mutex`; a poisoned lock (a panic elsewhere) still yields the data,
/// which is only ever replaced whole.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Object path of the parent called `name`.
pub fn parent_object_path(name: &str) -> OwnedObjectPath {
    object_path(label::parent_path(name))
}

/// Object path of type `type_id` of parent `parent`.
pub fn type_object_path(parent: &str, type_id: &str) -> OwnedObjectPath {
    object_path(label::type_path(parent, type_id))
}

fn object_path(path: String) -> OwnedObjectPath {
    // Labels are [A-Za-z0-9_]+ by construction, so the path is valid.
    OwnedObjectPath::try_from(path).expect("escaped labels form a valid object path")
}

struct ParentObject {
    path: OwnedObjectPath,
    iface: Parent1,
    types: BTreeMap<String, TypeObject>,
}

struct TypeObject {
    path: OwnedObjectPath,
    iface: MdevType1,
}

/// The object tree of the registry: serves it on a connection and keeps it
/// in step with registry events. Owned by the event loop.
pub struct Objects {
    connection: Connection,
    root: Arc<Mutex<RootSnapshot>>,
    registry1: Registry1,
    parents: BTreeMap<String, ParentObject>,
}

impl Objects {
    /// Serves `registry1` and the objects of every parent in `registry` on
    /// `connection`, then the ObjectManager at the root (which announces the
    /// objects already there). Emits no registry signals.
    pub async fn serve(
        connection: &Connection,
        registry1: Registry1,
        root: Arc<Mutex<RootSnapshot>>,
        registry: &Registry,
    ) -> zbus::Result<Objects> {
        let server = connection.object_server();
        server.at(label::ROOT_PATH, registry1.clone()).await?;
        let mut objects = Objects {
            connection: connection.clone(),
            root,
            registry1,
            parents: BTreeMap::new(),
        };
        for parent in registry.parents() {
            objects.add_parent(parent).await?;
        }
        lock(&objects.root).seqnum = registry.seqnum();
        server
            .at(label::ROOT_PATH, zbus::fdo::ObjectManager)
            .await?;
        Ok(objects)
    }

    /// Removes every object this tree added (at shutdown).
    pub async fn clear(&mut self) {
        let names: Vec<String> = self.parents.keys().cloned().collect();
        for name in names {
            if let Err(err) = self.remove_parent(&name).await {
                log::debug!("removing object of {name:?}: {err}");
            }
        }
    }

    /// Shows `events` (in order) on the bus: objects added and removed,
    /// properties changed, `ParentRegistered`/`ParentUnregistered` sent.
    /// A failure to send is logged, never fatal: the objects stay in step
    /// with the registry.
    pub async fn apply(&mut self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let parents_before: Vec<String> = self.parents.keys().cloned().collect();
        for event in events {
            if let Err(err) = self.apply_one(event).await {
                log::warn!(
                    "D-Bus update for event {} ({}) failed: {err}",
                    event.seqnum,
                    event.parent_name()
                );
            }
        }
        let last_seqnum = events.last().map_or(0, |event| event.seqnum);
        lock(&self.root).seqnum = last_seqnum;
        let parents_changed = !self.parents.keys().eq(parents_before.iter());
        let emitter = match SignalEmitter::new(&self.connection, label::ROOT_PATH) {
            Ok(emitter) => emitter,
            Err(err) => {
                log::warn!("cannot signal on {}: {err}", label::ROOT_PATH);
                return;
            }
        };
        if parents_changed {
            log_failure("Parents", self.registry1.parents_changed(&emitter).await);
        }
        log_failure("SeqNum", self.registry1.seq_num_changed(&emitter).await);
    }

    async fn apply_one(&mut self, event: &Event) -> zbus::Result<()> {
        match &event.kind {
            EventKind::ParentRegistered { parent } => {
                let path = self.add_parent(parent).await?;
                let emitter = SignalEmitter::new(&self.connection, label::ROOT_PATH)?;
                Registry1::parent_registered(
                    &emitter,
                    path.as_ref(),
                    parent.name(),
                    parent.source.as_str(),
                    event.seqnum,
                )
                .await
            }
            EventKind::ParentUnregistered { parent } => {
                let path = parent_object_path(parent.name());
                self.remove_parent(parent.name()).await?;
                let emitter = SignalEmitter::new(&self.connection, label::ROOT_PATH)?;
                Registry1::parent_unregistered(
                    &emitter,
                    path.as_ref(),
                    parent.name(),
                    parent.source.as_str(),
                    event.seqnum,
                )
                .await
            }
            EventKind::ParentUpdated { before, after } => self.update_parent(before, after).await,
            EventKind::TypeAdded { parent, mdev_type } => self.add_type(parent, mdev_type).await,
            EventKind::TypeRemoved { parent, mdev_type } => {
                self.remove_type(parent, &mdev_type.id).await
            }
            EventKind::TypeUpdated {
                parent,
                before,
                after,
            } => self.update_type(parent, before, after).await,
        }
    }

    async fn add_parent(&mut self, parent: &Parent) -> zbus::Result<OwnedObjectPath> {
        let name = parent.name().to_owned();
        if self.parents.contains_key(&name) {
            // Out of step (cannot happen with a consistent registry):
            // replace the old objects rather than keep stale ones.
            log::warn!("parent object {name:?} already exists; replacing it");
            self.remove_parent(&name).await?;
        }
        let path = parent_object_path(&name);
        let type_paths = parent
            .info
            .types
            .iter()
            .map(|t| type_object_path(&name, &t.id))
            .collect();
        let iface = Parent1::new(ParentData {
            parent: parent.clone(),
            type_paths,
        });
        let server = self.connection.object_server();
        server.at(path.as_ref(), iface.clone()).await?;
        let mut object = ParentObject {
            path: path.clone(),
            iface,
            types: BTreeMap::new(),
        };
        for mdev_type in &parent.info.types {
            let type_object = TypeObject {
                path: type_object_path(&name, &mdev_type.id),
                iface: MdevType1::new(path.clone(), mdev_type.clone()),
            };
            server
                .at(type_object.path.as_ref(), type_object.iface.clone())
                .await?;
            object.types.insert(mdev_type.id.clone(), type_object);
        }
        self.parents.insert(name.clone(), object);
        lock(&self.root).parents.insert(name, path.clone());
        Ok(path)
    }

    async fn remove_parent(&mut self, name: &str) -> zbus::Result<()> {
        lock(&self.root).parents.remove(name);
        let Some(object) = self.parents.remove(name) else {
            return Ok(());
        };
        let server = self.connection.object_server();
        for type_object in object.types.values() {
            server
                .remove::<MdevType1, _>(type_object.path.as_ref())
                .await?;
        }
        server.remove::<Parent1, _>(object.path.as_ref()).await?;
        Ok(())
    }

    async fn update_parent(&mut self, before: &Parent, after: &Parent) -> zbus::Result<()> {
        let Some(object) = self.parents.get(after.name()) else {
            return Err(zbus::Error::InterfaceNotFound);
        };
        let mut data = object.iface.data();
        data.parent = after.clone();
        object.iface.set_data(data);
        let emitter = SignalEmitter::new(&self.connection, object.path.as_ref())?;
        let iface = &object.iface;
        if before.info.devpath != after.info.devpath {
            iface.dev_path_changed(&emitter).await?;
        }
        if before.info.subsystem != after.info.subsystem {
            iface.subsystem_changed(&emitter).await?;
        }
        if before.info.driver != after.info.driver {
            iface.driver_changed(&emitter).await?;
        }
        if before.owner != after.owner {
            iface.owner_changed(&emitter).await?;
        }
        Ok(())
    }

    async fn add_type(&mut self, parent: &str, mdev_type: &MdevType) -> zbus::Result<()> {
        let Some(object) = self.parents.get_mut(parent) else {
            return Err(zbus::Error::InterfaceNotFound);
        };
        let type_object = TypeObject {
            path: type_object_path(parent, &mdev_type.id),
            iface: MdevType1::new(object.path.clone(), mdev_type.clone()),
        };
        let server = self.connection.object_server();
        server
            .at(type_object.path.as_ref(), type_object.iface.clone())
            .await?;
        object.types.insert(mdev_type.id.clone(), type_object);
        Self::types_changed(&self.connection, object).await
    }

    async fn remove_type(&mut self, parent: &str, type_id: &str) -> zbus::Result<()> {
        let Some(object) = self.parents.get_mut(parent) else {
            return Err(zbus::Error::InterfaceNotFound);
        };
        if let Some(type_object) = object.types.remove(type_id) {
            self.connection
                .object_server()
                .remove::<MdevType1, _>(type_object.path.as_ref())
                .await?;
        }
        Self::types_changed(&self.connection, object).await
    }

    /// Updates a parent's `Types` from its type objects and signals it.
    async fn types_changed(connection: &Connection, object: &ParentObject) -> zbus::Result<()> {
        let mut data = object.iface.data();
        data.type_paths = object.types.values().map(|t| t.path.clone()).collect();
        object.iface.set_data(data);
        let emitter = SignalEmitter::new(connection, object.path.as_ref())?;
        object.iface.types_changed(&emitter).await
    }

    async fn update_type(
        &mut self,
        parent: &str,
        before: &MdevType,
        after: &MdevType,
    ) -> zbus::Result<()> {
        let Some(type_object) = self
            .parents
            .get(parent)
            .and_then(|object| object.types.get(&after.id))
        else {
            return Err(zbus::Error::InterfaceNotFound);
        };
        type_object.iface.set_data(after.clone());
        let emitter = SignalEmitter::new(&self.connection, type_object.path.as_ref())?;
        let iface = &type_object.iface;
        if before.name != after.name {
            iface.name_changed(&emitter).await?;
        }
        if before.description != after.description {
            iface.description_changed(&emitter).await?;
        }
        if before.device_api != after.device_api {
            iface.device_api_changed(&emitter).await?;
        }
        if before.available_instances != after.available_instances {
            iface.available_instances_changed(&emitter).await?;
        }
        if before.devices != after.devices {
            iface.devices_changed(&emitter).await?;
        }
        Ok(())
    }
}

fn log_failure(what: &str, result: zbus::Result<()>) {
    if let Err(err) = result {
        log::warn!("cannot signal the change of {what}: {err}");
    }
}
