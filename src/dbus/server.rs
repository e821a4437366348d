//! Answers method calls to the registry's objects straight from the shared
//! [`Registry`]: the root object (`Registry1`, ObjectManager), one object
//! per parent and per type, their ancestors, and the standard `Peer`,
//! `Introspectable` and `Properties` interfaces on each.
//!
//! Objects are not materialised: a path is decoded to a parent name and
//! type id and looked up when a call arrives, so the daemon holds each
//! parent's data once however many types it has. Queries are answered in
//! arrival order under a short read lock; mutating calls are checked
//! (caller authorised by [`auth::authorize`], arguments) on their own task and handed to the event loop
//! as [`Request`]s, which replies once the change is applied and visible.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, RwLock};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use zbus::fdo::{self, DBusProxy};
use zbus::message::{Flags, Header, Type as MessageType};
use zbus::{Connection, MatchRule, Message, MessageStream, OwnedObjectPath, OwnedVariant};

use super::auth::{self, Action, Ask, AuthPolicy};
use super::document::DocumentCache;
use super::errors::Error;
use super::interfaces::{
    self, Interface, Object, INTROSPECTABLE, MDEV_TYPE1, OBJECT_MANAGER, PARENT1, PEER, PROPERTIES,
    REGISTRY1,
};
use super::readers::{self, ReaderLimits, WritersFirst, WRITERS_FIRST_MAX};
use super::values::{self, ManagedObjects, PropMap};
use super::{document, lock, validate, Request};
use crate::capacity;
use crate::daemon::{self, Counters};
use crate::label;
use crate::registry::Registry;

/// The registry as the event loop (writer) and the server (readers) share
/// it: the snapshot of the last commit, immutable. A reader clones the `Arc`
/// (the lock is held for that only) and answers from it for as long as it
/// takes; the writer changes its own copy (`Arc::make_mut`: the parent map
/// is copied only while a reader still holds the previous snapshot).
pub type SharedRegistry = Arc<RwLock<Arc<Registry>>>;

/// The current snapshot of `shared`.
pub fn snapshot(shared: &SharedRegistry) -> Arc<Registry> {
    Arc::clone(
        &shared
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// Most callers' uids remembered (unique names are never reused on a bus,
/// so an entry can only go stale by its connection leaving).
const UID_CACHE_MAX: usize = 1024;

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    /// `/`, `/org`, `/org/mdevreg`: ancestors of the root, with one child.
    Ancestor(&'static str),
    Root,
    /// `<root>/parent`
    ParentsDir,
    Parent(String),
    /// `<parent>/type`
    TypesDir(String),
    Type(String, String),
}

impl Node {
    fn interfaces(&self) -> &'static [&'static Interface] {
        match self {
            Node::Root => &[&REGISTRY1],
            Node::Parent(_) => &[&PARENT1],
            Node::Type(..) => &[&MDEV_TYPE1],
            _ => &[],
        }
    }
}

/// Decodes `path`; `None` for paths outside the tree. Labels must be in
/// canonical form (one path per object).
fn classify(path: &str) -> Option<Node> {
    match path {
        "/" => return Some(Node::Ancestor("org")),
        "/org" => return Some(Node::Ancestor("mdevreg")),
        "/org/mdevreg" => return Some(Node::Ancestor("Registry1")),
        label::ROOT_PATH => return Some(Node::Root),
        _ => {}
    }
    if path == label::PARENT_PATH_PREFIX.trim_end_matches('/') {
        return Some(Node::ParentsDir);
    }
    if let Some(name) = label::parse_parent_path(path) {
        return (label::parent_path(&name) == path).then_some(Node::Parent(name));
    }
    if let Some(parent_path) = path.strip_suffix("/type") {
        let name = label::parse_parent_path(parent_path)?;
        return (label::parent_path(&name) == parent_path).then_some(Node::TypesDir(name));
    }
    let (name, id) = label::parse_type_path(path)?;
    (label::type_path(&name, &id) == path).then_some(Node::Type(name, id))
}

/// A reply to send: a body, or an error.
enum Reply {
    Message(zbus::Result<Message>),
    Fdo(fdo::Error),
    Registry(Error),
}

fn unknown_method(interface: &str, member: &str) -> Reply {
    Reply::Fdo(fdo::Error::UnknownMethod(format!(
        "Unknown method '{member}' on interface '{interface}'"
    )))
}

/// `UnknownMethod` if `interface` has no method `member`, `InvalidArgs` if
/// the body is not its in-arguments; `None` if the call may proceed.
fn check_call(message: &Message, interface: &str, member: &str) -> Option<Reply> {
    let Some(expected) = interfaces::call_signature(interface, member) else {
        return Some(unknown_method(interface, member));
    };
    let body = message.body();
    let got = body.signature().to_string_no_parens();
    (got != expected).then(|| {
        Reply::Fdo(fdo::Error::InvalidArgs(format!(
            "{interface}.{member} takes ({expected}), not ({got})"
        )))
    })
}

fn invalid_args(err: zbus::Error) -> Reply {
    Reply::Fdo(fdo::Error::InvalidArgs(format!("invalid arguments: {err}")))
}

/// The method-call side of the D-Bus service.
pub struct Server {
    connection: Connection,
    registry: SharedRegistry,
    stats: Arc<Counters>,
    requests: mpsc::Sender<Request>,
    bus: DBusProxy<'static>,
    uids: Mutex<HashMap<String, u32>>,
    /// Bounds on large replies being built and sent.
    readers: ReaderLimits,
    /// Writes waiting for their answer (large replies let them go first).
    writers: WritersFirst,
    /// Who may call the mutating methods.
    auth: AuthPolicy,
    /// The last whole `DumpTypes` document and the sequence number it shows.
    types_cache: DocumentCache,
}

impl Server {
    pub fn new(
        connection: Connection,
        registry: SharedRegistry,
        stats: Arc<Counters>,
        requests: mpsc::Sender<Request>,
        bus: DBusProxy<'static>,
        auth: AuthPolicy,
    ) -> Arc<Server> {
        Arc::new(Server {
            connection,
            registry,
            stats,
            requests,
            bus,
            uids: Mutex::new(HashMap::new()),
            readers: ReaderLimits::default(),
            writers: WritersFirst::default(),
            auth,
            types_cache: DocumentCache::default(),
        })
    }

    /// Starts answering method calls; the task ends with the connection.
    pub async fn start(self: &Arc<Self>) -> zbus::Result<tokio::task::JoinHandle<()>> {
        let mut rule = MatchRule::builder().msg_type(MessageType::MethodCall);
        if let Some(unique) = self.connection.unique_name() {
            rule = rule.destination(unique.to_string());
        }
        let mut stream =
            MessageStream::for_match_rule(rule.build()?, &self.connection, None).await?;
        let server = Arc::clone(self);
        Ok(tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                match message {
                    Ok(message) => server.handle(message).await,
                    Err(err) => log::debug!("unreadable message: {err}"),
                }
            }
        }))
    }

    /// The event loop answered `count` writes (`RegisterParent`,
    /// `UnregisterParent`; see [`readers::WritersFirst`]).
    pub fn writes_answered(&self, count: usize) {
        self.writers.answered(count);
    }

    /// Forgets the uid of a connection that left the bus.
    pub fn forget_caller(&self, unique_name: &str) {
        lock(&self.uids).remove(unique_name);
    }

    async fn handle(self: &Arc<Self>, message: Message) {
        let header = message.header();
        if header.message_type() != MessageType::MethodCall {
            return;
        }
        let no_reply = header.primary().flags().contains(Flags::NO_REPLY_EXPECTED);
        if header
            .member()
            .is_some_and(|member| readers::is_large(member))
        {
            // Off this task and the event loop: built on a blocking thread
            // from the snapshot, within the caller's uid's bound.
            let server = Arc::clone(self);
            tokio::spawn(async move { server.large_read(message, no_reply).await });
            return;
        }
        let reply = match self.route(&message, &header) {
            Some(reply) => reply,
            None => {
                // A mutating call: checked and queued on its own task.
                let write = header.member().is_some_and(|m| readers::is_write(m));
                if write {
                    self.writers.enter();
                }
                let server = Arc::clone(self);
                tokio::spawn(async move {
                    let header = message.header();
                    if let Some(reply) = server.mutate(&message, &header).await {
                        server.send(&header, reply, no_reply).await;
                        if write {
                            server.writers.answered(1);
                        }
                    }
                });
                return;
            }
        };
        self.send(&header, reply, no_reply).await;
    }

    /// Answers a call whose reply grows with the registry: waits for a
    /// turn of its caller's uid, builds the reply on a blocking thread, and
    /// holds the turn until the reply is written.
    async fn large_read(self: Arc<Self>, message: Message, no_reply: bool) {
        let header = message.header();
        let uid = match auth::caller(&header) {
            Ok(caller) => self.caller_uid(&caller).await.ok(),
            Err(_) => None,
        };
        let _permit = self.readers.acquire(uid).await;
        let server = Arc::clone(&self);
        let call = message.clone();
        let built = tokio::task::spawn_blocking(move || {
            // Not while a full rescan runs (see `daemon::memory_turn`).
            let _turn = daemon::memory_turn();
            let header = call.header();
            server.route(&call, &header)
        })
        .await;
        let reply = match built {
            Ok(Some(reply)) => reply,
            // Only mutating calls route to `None`, and none is large.
            Ok(None) => unknown_method(REGISTRY1.name, "(none)"),
            Err(err) => Reply::Fdo(fdo::Error::Failed(format!("reply not built: {err}"))),
        };
        let size = match &reply {
            Reply::Message(Ok(message)) => message.data().len(),
            _ => 0,
        };
        self.writers.wait_idle(WRITERS_FIRST_MAX).await;
        let bytes = self.send(&header, reply, no_reply).await;
        if bytes >= readers::READ_WHOLE_MIN_BYTES {
            self.until_the_bus_has_read_it().await;
        }
        if size >= daemon::TRIM_AFTER_REPLY_BYTES {
            // Its buffers are freed now; hand their pages back before the
            // next large reply is built (see `daemon::trim`).
            let _ = tokio::task::spawn_blocking(daemon::release_freed_memory).await;
        }
    }

    /// Returns once the bus has read everything sent so far (at most
    /// [`readers::READ_WHOLE_MAX`]): a call to the bus driver, queued behind
    /// it on the connection, is answered only after it. A large reply keeps
    /// its turn until then, so the next one is neither built (CPU the bus
    /// needs to read this one) nor put on the socket (where a writer's
    /// answer would queue behind both) before.
    async fn until_the_bus_has_read_it(&self) {
        let call = self.connection.call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "GetId",
            &(),
        );
        match tokio::time::timeout(readers::READ_WHOLE_MAX, call).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => log::debug!("GetId after a large reply: {err}"),
            Err(_) => log::debug!(
                "the bus has not read a large reply within {:?}",
                readers::READ_WHOLE_MAX
            ),
        }
    }

    /// The uid of unique name `caller`, asked of the bus once per
    /// connection.
    async fn caller_uid(&self, caller: &str) -> zbus::Result<u32> {
        let cached = lock(&self.uids).get(caller).copied();
        match cached {
            Some(uid) => Ok(uid),
            None => auth::sender_uid(&self.bus, caller).await.inspect(|&uid| {
                let mut uids = lock(&self.uids);
                if uids.len() >= UID_CACHE_MAX {
                    uids.clear();
                }
                uids.insert(caller.to_owned(), uid);
            }),
        }
    }

    /// Sends `reply` (unless the caller wants none); returns the bytes of
    /// the message sent (0 for an error reply or none).
    async fn send(&self, header: &Header<'_>, reply: Reply, no_reply: bool) -> usize {
        if no_reply {
            return 0;
        }
        let mut bytes = 0;
        let result = match reply {
            Reply::Message(Ok(message)) => {
                bytes = message.data().len();
                self.connection.send(&message).await
            }
            Reply::Message(Err(err)) => {
                log::warn!("cannot build a reply: {err}");
                self.connection
                    .reply_dbus_error(header, fdo::Error::Failed(err.to_string()))
                    .await
            }
            Reply::Fdo(err) => self.connection.reply_dbus_error(header, err).await,
            Reply::Registry(err) => self.connection.reply_dbus_error(header, err).await,
        };
        match result {
            Ok(()) => bytes,
            Err(err) => {
                log::debug!("cannot send a reply: {err}");
                0
            }
        }
    }

    /// Answers a query; `None` for the mutating `Registry1` methods.
    fn route(&self, message: &Message, header: &Header<'_>) -> Option<Reply> {
        let (Some(path), Some(member)) = (header.path(), header.member()) else {
            return Some(Reply::Fdo(fdo::Error::Failed(
                "method call without path or member".to_owned(),
            )));
        };
        let member = member.as_str();
        let interface = header.interface().map(|i| i.as_str());
        if interface == Some(PEER)
            || (interface.is_none() && matches!(member, "Ping" | "GetMachineId"))
        {
            if let Some(refusal) = check_call(message, PEER, member) {
                return Some(refusal);
            }
            return Some(self.peer(header, member));
        }
        let Some(node) = classify(path.as_str()) else {
            return Some(Reply::Fdo(fdo::Error::UnknownObject(format!(
                "Unknown object '{path}'"
            ))));
        };
        // The registry decides what exists below the root.
        if !self.exists(&node) {
            return Some(Reply::Fdo(fdo::Error::UnknownObject(format!(
                "Unknown object '{path}'"
            ))));
        }
        let interface = match interface {
            Some(interface) => interface,
            None => match self.interface_of(&node, member) {
                Some(interface) => interface,
                None => return Some(unknown_method("(none)", member)),
            },
        };
        let on_node = [INTROSPECTABLE, PROPERTIES].contains(&interface)
            || (interface == OBJECT_MANAGER && node == Node::Root)
            || node.interfaces().iter().any(|i| i.name == interface);
        if !on_node {
            return Some(unknown_interface(interface));
        }
        // Unknown methods and bodies that are not the in-arguments are
        // refused here, before anything is looked up or done.
        if let Some(refusal) = check_call(message, interface, member) {
            return Some(refusal);
        }
        match interface {
            INTROSPECTABLE if member == "Introspect" => Some(self.introspect(header, &node)),
            PROPERTIES => Some(self.properties(message, header, &node, member)),
            OBJECT_MANAGER if node == Node::Root => {
                if member == "GetManagedObjects" {
                    let registry = self.read();
                    Some(Reply::Message(
                        Message::method_return(header).build(&ManagedObjects(&registry)),
                    ))
                } else {
                    Some(unknown_method(interface, member))
                }
            }
            name if name == REGISTRY1.name && node == Node::Root => {
                self.registry_query(message, header, member)
            }
            INTROSPECTABLE => Some(unknown_method(interface, member)),
            _ => Some(Reply::Fdo(fdo::Error::UnknownInterface(format!(
                "Unknown interface '{interface}'"
            )))),
        }
    }

    /// The interface of `node` that has a method `member` (calls may omit it).
    fn interface_of(&self, node: &Node, member: &str) -> Option<&'static str> {
        match member {
            "Introspect" => return Some(INTROSPECTABLE),
            "Get" | "GetAll" | "Set" => return Some(PROPERTIES),
            "GetManagedObjects" if *node == Node::Root => return Some(OBJECT_MANAGER),
            _ => {}
        }
        node.interfaces()
            .iter()
            .find(|i| i.methods.iter().any(|m| m.name == member))
            .map(|i| i.name)
    }

    /// The registry as of the last commit (no lock held while it is used).
    fn read(&self) -> Arc<Registry> {
        snapshot(&self.registry)
    }

    fn exists(&self, node: &Node) -> bool {
        let registry = self.read();
        match node {
            Node::Ancestor(_) | Node::Root => true,
            Node::ParentsDir => !registry.is_empty(),
            Node::Parent(name) => registry.get(name).is_some(),
            Node::TypesDir(name) => registry
                .get(name)
                .is_some_and(|parent| !parent.info.types.is_empty()),
            Node::Type(name, id) => registry
                .get(name)
                .is_some_and(|parent| parent.info.get_type(id).is_some()),
        }
    }

    fn peer(&self, header: &Header<'_>, member: &str) -> Reply {
        match member {
            "Ping" => Reply::Message(Message::method_return(header).build(&())),
            "GetMachineId" => match machine_id() {
                Some(id) => Reply::Message(Message::method_return(header).build(&id)),
                None => Reply::Fdo(fdo::Error::Failed("no machine id".to_owned())),
            },
            _ => unknown_method(PEER, member),
        }
    }

    fn introspect(&self, header: &Header<'_>, node: &Node) -> Reply {
        let registry = self.read();
        let xml = match node {
            Node::Ancestor(child) => interfaces::node_xml(&[], false, [*child]),
            Node::Root => {
                let children = (!registry.is_empty()).then_some("parent");
                interfaces::node_xml(&[&REGISTRY1], true, children)
            }
            Node::ParentsDir => {
                let labels: Vec<String> = registry
                    .parents()
                    .map(|p| label::escape(p.name()))
                    .collect();
                interfaces::node_xml(&[], false, labels.iter().map(String::as_str))
            }
            Node::Parent(name) => {
                let has_types = registry.get(name).is_some_and(|p| !p.info.types.is_empty());
                interfaces::node_xml(&[&PARENT1], false, has_types.then_some("type"))
            }
            Node::TypesDir(name) => {
                let mut labels: Vec<String> = registry
                    .get(name)
                    .map(|p| {
                        p.info
                            .types
                            .iter()
                            .map(|t| label::escape(t.id.as_str()))
                            .collect()
                    })
                    .unwrap_or_default();
                labels.sort();
                interfaces::node_xml(&[], false, labels.iter().map(String::as_str))
            }
            Node::Type(..) => interfaces::node_xml(&[&MDEV_TYPE1], false, None),
        };
        drop(registry);
        Reply::Message(Message::method_return(header).build(&xml))
    }

    /// The object behind `node` whose interface is called `interface`
    /// (`Err(true)`: a standard interface, without properties; `Err(false)`:
    /// no such interface, or the object is gone).
    fn object<'r>(
        &'r self,
        registry: &'r Registry,
        node: &'r Node,
        interface: &str,
    ) -> Result<(&'static Interface, Object<'r>), bool> {
        if [PEER, INTROSPECTABLE, PROPERTIES].contains(&interface)
            || (interface == OBJECT_MANAGER && *node == Node::Root)
        {
            return Err(true);
        }
        let found = values::find_interface(node.interfaces(), interface).ok_or(false)?;
        let object = match node {
            Node::Root => Object::Root {
                registry,
                stats: &self.stats,
            },
            Node::Parent(name) => Object::Parent(registry.get(name).ok_or(false)?),
            Node::Type(name, id) => Object::Type {
                parent: name,
                mdev_type: registry
                    .get(name)
                    .and_then(|p| p.info.get_type(id))
                    .ok_or(false)?,
            },
            _ => return Err(false),
        };
        Ok((found, object))
    }

    fn properties(
        &self,
        message: &Message,
        header: &Header<'_>,
        node: &Node,
        member: &str,
    ) -> Reply {
        let body = message.body();
        match member {
            "Get" => {
                let (interface, name): (String, String) = match body.deserialize() {
                    Ok(args) => args,
                    Err(err) => return invalid_args(err),
                };
                let registry = self.read();
                let (found, object) = match self.object(&registry, node, &interface) {
                    Ok(found) => found,
                    Err(true) => return unknown_property(&name),
                    Err(false) => return unknown_interface(&interface),
                };
                match found.property(&name).and_then(|p| (p.get)(object)) {
                    Some(value) => Reply::Message(Message::method_return(header).build(&value)),
                    None => unknown_property(&name),
                }
            }
            "GetAll" => {
                let interface: String = match body.deserialize() {
                    Ok(args) => args,
                    Err(err) => return invalid_args(err),
                };
                let registry = self.read();
                let all = match self.object(&registry, node, &interface) {
                    Ok((found, object)) => PropMap(interfaces::all_values(found, object)),
                    Err(true) => PropMap::default(),
                    Err(false) => return unknown_interface(&interface),
                };
                Reply::Message(Message::method_return(header).build(&all))
            }
            "Set" => {
                let (interface, name, _value): (String, String, OwnedVariant) =
                    match body.deserialize() {
                        Ok(args) => args,
                        Err(err) => return invalid_args(err),
                    };
                let known = values::find_interface(node.interfaces(), &interface)
                    .and_then(|i| i.property(&name));
                if known.is_some() {
                    Reply::Fdo(fdo::Error::PropertyReadOnly(format!(
                        "Property '{name}' is read-only"
                    )))
                } else if values::find_interface(node.interfaces(), &interface).is_some() {
                    Reply::Fdo(fdo::Error::UnknownProperty(format!(
                        "Unknown property '{name}'"
                    )))
                } else {
                    unknown_interface(&interface)
                }
            }
            _ => unknown_method(PROPERTIES, member),
        }
    }

    /// The read-only `Registry1` methods; `None` for the mutating ones.
    fn registry_query(
        &self,
        message: &Message,
        header: &Header<'_>,
        member: &str,
    ) -> Option<Reply> {
        let body = message.body();
        let reply = match member {
            "ListParents" => {
                let paths: Vec<OwnedObjectPath> = self
                    .read()
                    .parents()
                    .filter_map(|p| OwnedObjectPath::try_from(label::parent_path(p.name())).ok())
                    .collect();
                Reply::Message(Message::method_return(header).build(&paths))
            }
            "GetParent" => {
                let name: String = match body.deserialize() {
                    Ok(name) => name,
                    Err(err) => return Some(invalid_args(err)),
                };
                if self.read().get(&name).is_some() {
                    match OwnedObjectPath::try_from(label::parent_path(&name)) {
                        Ok(path) => Reply::Message(Message::method_return(header).build(&path)),
                        Err(err) => Reply::Message(Err(err)),
                    }
                } else {
                    Reply::Registry(Error::NotRegistered(format!(
                        "parent {} is not registered",
                        validate::quoted(&name)
                    )))
                }
            }
            "DumpTypes" => {
                let parent: String = match body.deserialize() {
                    Ok(parent) => parent,
                    Err(err) => return Some(invalid_args(err)),
                };
                let document = self.types_document(&parent).and_then(|mut file| {
                    let mut text = String::new();
                    file.read_to_string(&mut text).map(|_| text)
                });
                match document {
                    Ok(text) => Reply::Message(Message::method_return(header).build(&text)),
                    Err(err) => Reply::Fdo(fdo::Error::IOError(format!(
                        "cannot render the types document: {err}"
                    ))),
                }
            }
            "DumpParentsByFileDescriptor" => {
                let parent: String = match body.deserialize() {
                    Ok(parent) => parent,
                    Err(err) => return Some(invalid_args(err)),
                };
                let only = (!parent.is_empty()).then_some(parent.as_str());
                let file = {
                    let registry = self.read();
                    document::render_parents(registry.parents(), only)
                };
                fd_reply(
                    header,
                    file.and_then(|file| document::reopen(&file)),
                    "parents",
                )
            }
            "GetCapacity" => {
                let physical_device: String = match body.deserialize() {
                    Ok(physical_device) => physical_device,
                    Err(err) => return Some(invalid_args(err)),
                };
                let rows = {
                    let registry = self.read();
                    capacity::query(registry.parents().map(|p| &p.info), &physical_device)
                };
                match rows {
                    Ok(rows) => {
                        let rows: Vec<(String, String, u32, u32)> = rows
                            .into_iter()
                            .map(|row| (row.id, row.name, row.creatable, row.holding))
                            .collect();
                        Reply::Message(Message::method_return(header).build(&rows))
                    }
                    Err(capacity::QueryError::Malformed) => {
                        Reply::Registry(Error::InvalidArgument(format!(
                            "physical device {} is not a PCI address as sysfs writes it \
                             (DDDD:BB:DD.F, lowercase hex); \"\" asks for all",
                            validate::quoted(&physical_device)
                        )))
                    }
                    Err(capacity::QueryError::Unknown) => {
                        Reply::Registry(Error::NotRegistered(format!(
                            "no parent is on physical device {}",
                            validate::quoted(&physical_device)
                        )))
                    }
                }
            }
            "DumpTypesByFileDescriptor" => {
                let parent: String = match body.deserialize() {
                    Ok(parent) => parent,
                    Err(err) => return Some(invalid_args(err)),
                };
                fd_reply(header, self.types_document(&parent), "types")
            }
            "RegisterParent" | "UnregisterParent" | "Rescan" => return None,
            _ => unknown_method(REGISTRY1.name, member),
        };
        Some(reply)
    }

    /// The `DumpTypes` document as a read-only file of its own (offset 0).
    /// It is written to a sealed memfd, never held in the daemon's memory;
    /// the whole document is kept until the registry changes (every change
    /// has a new sequence number), so a warm daemon only opens it again.
    fn types_document(&self, parent: &str) -> io::Result<File> {
        let registry = self.read();
        if !parent.is_empty() {
            let file = document::render(registry.parents().map(|p| &p.info), Some(parent))?;
            drop(registry);
            return document::reopen(&file);
        }
        self.types_cache.get_or_render(
            registry.seqnum(),
            || self.read().seqnum(),
            || document::render(registry.parents().map(|p| &p.info), None),
        )
    }

    /// `RegisterParent`, `UnregisterParent`, `Rescan`: valid arguments, an
    /// authorised caller ([`auth::authorize`]: uid 0, the daemon's own uid
    /// on its own bus, or polkit), for callers other than root the default
    /// location, then the event loop, which replies (`None` here); a
    /// refused call gets its error reply from here.
    async fn mutate(&self, message: &Message, header: &Header<'_>) -> Option<Reply> {
        let member = header.member().map(|m| m.as_str()).unwrap_or_default();
        let body = message.body();
        // Arguments are checked for their types before the caller, as a
        // generated interface does.
        let request = match member {
            "RegisterParent" => {
                type Args = (
                    String,
                    HashMap<String, OwnedVariant>,
                    Vec<HashMap<String, OwnedVariant>>,
                );
                let (name, options, types): Args = match body.deserialize() {
                    Ok(args) => args,
                    Err(err) => return Some(invalid_args(err)),
                };
                self.register_request(message, header, &name, &options, &types)
                    .await
            }
            "UnregisterParent" => {
                let name: String = match body.deserialize() {
                    Ok(name) => name,
                    Err(err) => return Some(invalid_args(err)),
                };
                self.authorized(header, Ask::new(Action::UnregisterParent, &name))
                    .await
                    .map(|caller| Request::Unregister {
                        name,
                        caller: caller.name,
                        uid: caller.uid,
                        call: message.clone(),
                    })
            }
            _ => self
                .authorized(header, Ask::new(Action::Rescan, ""))
                .await
                .map(|_| Request::Rescan {
                    call: message.clone(),
                }),
        };
        match request {
            Ok(request) => match self.requests.send(request).await {
                Ok(()) => None,
                Err(_) => Some(Reply::Registry(Error::failed("mdevregd is shutting down"))),
            },
            Err(err) => Some(Reply::Registry(err)),
        }
    }

    /// Checks a `RegisterParent` call: arguments, caller, location.
    async fn register_request(
        &self,
        message: &Message,
        header: &Header<'_>,
        name: &str,
        options: &HashMap<String, OwnedVariant>,
        types: &[HashMap<String, OwnedVariant>],
    ) -> Result<Request, Error> {
        let refused = |who: &str, violation: validate::Violation| {
            log::info!(
                "RegisterParent {} from {who} refused: {violation}",
                validate::quoted(name)
            );
            Error::from(violation)
        };
        let registration = validate::registration(name, options, types).map_err(|violation| {
            let who = header.sender().map(|s| s.to_string()).unwrap_or_default();
            refused(&who, violation)
        })?;
        let ask = Ask {
            action: Action::RegisterParent,
            parent: name,
            allow_interaction: registration.allow_interaction,
        };
        let caller = self.authorized(header, ask).await?;
        if caller.uid != auth::PRIVILEGED_UID {
            validate::require_default_location(&registration)
                .map_err(|violation| refused(&caller.name, violation))?;
        }
        Ok(Request::Register {
            registration,
            owner: caller.name,
            uid: caller.uid,
            call: message.clone(),
        })
    }

    /// The caller if [`auth::authorize`] lets it do `ask` (its uid is
    /// asked of the bus once per connection); a denial is logged.
    async fn authorized(&self, header: &Header<'_>, ask: Ask<'_>) -> Result<Identified, Error> {
        let method = ask.action.method();
        let caller = auth::caller(header)?;
        let uid = self.caller_uid(&caller).await;
        let result = match uid {
            Ok(uid) => {
                let who = auth::Caller { name: &caller, uid };
                auth::authorize(&self.auth, Some(&self.connection), ask, who)
                    .await
                    .map(|()| uid)
            }
            Err(err) => Err(Error::AccessDenied(format!(
                "{method}: cannot determine the uid of {caller}: {err}"
            ))),
        };
        match result {
            Ok(uid) => Ok(Identified { name: caller, uid }),
            Err(err) => {
                log::info!("denied: {err}");
                Err(err)
            }
        }
    }
}

/// An authorised caller: unique bus name and uid as the bus reports them.
struct Identified {
    name: String,
    uid: u32,
}

/// The reply handing over a rendered `what` document, or the error that
/// kept it from being rendered.
fn fd_reply(header: &Header<'_>, file: io::Result<File>, what: &str) -> Reply {
    match file {
        Ok(file) => Reply::Message(
            Message::method_return(header).build(&zbus::Fd::from(OwnedFd::from(file))),
        ),
        Err(err) => Reply::Fdo(fdo::Error::IOError(format!(
            "cannot render the {what} document: {err}"
        ))),
    }
}

fn unknown_property(name: &str) -> Reply {
    Reply::Fdo(fdo::Error::UnknownProperty(format!(
        "Unknown property '{name}'"
    )))
}

fn unknown_interface(interface: &str) -> Reply {
    Reply::Fdo(fdo::Error::UnknownInterface(format!(
        "Unknown interface '{interface}'"
    )))
}

/// `/etc/machine-id` (or D-Bus's copy), trimmed.
fn machine_id() -> Option<String> {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_classify() {
        assert_eq!(classify("/"), Some(Node::Ancestor("org")));
        assert_eq!(classify("/org/mdevreg/Registry1"), Some(Node::Root));
        assert_eq!(
            classify("/org/mdevreg/Registry1/parent"),
            Some(Node::ParentsDir)
        );
        assert_eq!(
            classify("/org/mdevreg/Registry1/parent/mtty"),
            Some(Node::Parent("mtty".to_owned()))
        );
        assert_eq!(
            classify("/org/mdevreg/Registry1/parent/mtty/type"),
            Some(Node::TypesDir("mtty".to_owned()))
        );
        assert_eq!(
            classify("/org/mdevreg/Registry1/parent/mtty/type/mtty_2d1"),
            Some(Node::Type("mtty".to_owned(), "mtty-1".to_owned()))
        );
        // Non-canonical labels and foreign paths name nothing.
        assert_eq!(classify("/org/mdevreg/Registry1/parent/_6dtty"), None);
        assert_eq!(classify("/org/other"), None);
        assert_eq!(classify("/org/mdevreg/Registry1/parent/a/b"), None);
    }
}
