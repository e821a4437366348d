//! The D-Bus side of mdevregd: the three interfaces (`Registry1` on the root
//! object beside the ObjectManager, `Parent1` and `MdevType1` objects) as
//! data ([`interfaces`], the one place that names their members and
//! properties, and where a property is added), the [`server`] answering calls from the shared
//! registry, the [`signals`] built from registry events, their typed errors,
//! caller authorisation, argument validation, and the client proxies
//! ([`Registry1Proxy`], [`Parent1Proxy`], [`MdevType1Proxy`]).

pub mod auth;
mod document;
pub mod errors;
pub mod interfaces;
pub mod polkit;
pub mod readers;
pub mod server;
pub mod signals;
pub mod validate;
mod values;

use std::sync::{Mutex, MutexGuard, PoisonError};

use zbus::{Message, OwnedObjectPath};

pub use errors::Error;
pub use interfaces::{MdevType1Proxy, Parent1Proxy, Registry1Proxy};
pub use server::{snapshot, Server, SharedRegistry};

use crate::label;

/// A mutating call, checked and handed from the server to the event loop,
/// which replies to `call` once the change is applied, persisted, emitted
/// and its signals sent.
#[derive(Debug)]
pub enum Request {
    Register {
        registration: validate::Registration,
        /// Unique bus name of the caller.
        owner: String,
        /// The caller's uid, as the bus reported it.
        uid: u32,
        call: Message,
    },
    Unregister {
        name: String,
        /// Unique bus name of the caller.
        caller: String,
        /// The caller's uid, as the bus reported it.
        uid: u32,
        call: Message,
    },
    Rescan {
        call: Message,
    },
}

/// The reply to `call`: `result`'s value or error; none if the caller
/// asked for none (or it cannot be built, which is logged).
pub fn reply_to<T>(call: &Message, result: Result<T, Error>) -> Option<Message>
where
    T: serde::Serialize + zbus::DynamicType,
{
    let header = call.header();
    if header
        .primary()
        .flags()
        .contains(zbus::message::Flags::NO_REPLY_EXPECTED)
    {
        return None;
    }
    let reply = match result {
        Ok(value) => Message::method_return(&header).build(&value),
        Err(err) => zbus::DBusError::create_reply(&err, &header),
    };
    reply
        .inspect_err(|err| log::warn!("cannot build a reply: {err}"))
        .ok()
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
