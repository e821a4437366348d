//! The D-Bus half of the `mdevreg` CLI: every command that asks mdevregd
//! (`types`, `list`, `show`, `stats`, `monitor`, `register`, `unregister`).
//!
//! Calls go through the proxies generated from the daemon's own interface
//! definitions ([`Registry1Proxy`]): `types --json` reads the document the
//! daemon renders (`DumpTypesByFileDescriptor`); `types`, `list` and `show`
//! read the parents in one `DumpParentsByFileDescriptor` call and print them
//! with the same code as the direct (`--sysfs-root`) mode, so both modes
//! print the same bytes for the same tree. There are no fallbacks: an error
//! of the call or of the document is reported.
//!
//! Failures are a [`ClientError`]: a usage error (exit 2) or a runtime error
//! (exit 1), each one line naming the cause.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Read, Write};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::signal::unix::{signal, Signal, SignalKind};
use zbus::fdo::DBusProxy;
use zbus::message::Type as MessageType;
use zbus::proxy::CacheProperties;
use zbus::{Connection, DBusError, MatchRule, MessageStream, OwnedObjectPath, OwnedVariant, Str};

use crate::cli::{BackendFilter, Command, RegisterArgs, WaitArgs};
use crate::dbus::interfaces::{MDEV_TYPE1, REGISTRY1};
use crate::dbus::{Error as RegistryError, Registry1Proxy};
use crate::label;
use crate::mdevctl_json::{parent_json, parent_text};
use crate::metrics;
use crate::model::{Lifetime, Parent, ParentInfo};
use crate::report;
use crate::wait;

/// D-Bus interface names of the signals `monitor` shows.
const TYPE_IFACE: &str = MDEV_TYPE1.name;
const REGISTRY_IFACE: &str = REGISTRY1.name;
const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";

/// How long one method call may take (the D-Bus reference default).
const METHOD_TIMEOUT: Duration = Duration::from_secs(25);

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// Bad command-line input (exit code 2).
    Usage(String),
    /// Anything else: no bus, no daemon, an error reply (exit code 1).
    Runtime(String),
}

impl ClientError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => 2,
            ClientError::Runtime(_) => 1,
        }
    }

    fn output(err: io::Error) -> ClientError {
        ClientError::Runtime(format!("cannot write output: {err}"))
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Usage(message) | ClientError::Runtime(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ClientError {}

/// Which bus to reach the daemon on (`--bus` / `MDEVREG_BUS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusTarget {
    System,
    Session,
    /// A D-Bus address such as `unix:path=/run/x`.
    Address(String),
}

impl BusTarget {
    /// Parses `system`, `session` or a D-Bus address.
    pub fn parse(text: &str) -> Result<BusTarget, ClientError> {
        match text {
            "system" => Ok(BusTarget::System),
            "session" => Ok(BusTarget::Session),
            "" => Err(ClientError::Usage(
                "--bus needs `system`, `session` or a D-Bus address".to_owned(),
            )),
            address => Ok(BusTarget::Address(address.to_owned())),
        }
    }

    /// `the system bus`, `the session bus`, `the bus at <address>`.
    pub fn describe(&self) -> String {
        match self {
            BusTarget::System => "the system bus".to_owned(),
            BusTarget::Session => "the session bus".to_owned(),
            BusTarget::Address(address) => format!("the bus at {address}"),
        }
    }

    /// Connects (and says hello) to this bus.
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        let builder = match self {
            BusTarget::System => zbus::connection::Builder::system(),
            BusTarget::Session => zbus::connection::Builder::session(),
            BusTarget::Address(address) => zbus::connection::Builder::address(address.as_str()),
        };
        builder
            .method_timeout(METHOD_TIMEOUT)
            .build()
            .await
            .map_err(|err| {
                ClientError::Runtime(format!(
                    "cannot connect to {}: {}",
                    self.describe(),
                    describe_zbus(&err)
                ))
            })
    }
}

/// One `--type ID,API,AVAIL[,NAME[,DESC]]` of `register`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeArg {
    pub id: String,
    pub device_api: String,
    pub available_instances: u32,
    pub name: Option<String>,
    /// The rest of the spec after the fourth comma (may hold commas).
    pub description: Option<String>,
}

impl TypeArg {
    /// Parses `ID,API,AVAIL[,NAME[,DESC]]`; the message names what is wrong.
    pub fn parse(spec: &str) -> Result<TypeArg, String> {
        let mut fields = spec.splitn(5, ',');
        let id = fields.next().unwrap_or_default();
        let (Some(device_api), Some(avail)) = (fields.next(), fields.next()) else {
            return Err(format!(
                "invalid --type {spec:?}: expected ID,API,AVAIL[,NAME[,DESC]]"
            ));
        };
        if id.is_empty() {
            return Err(format!("invalid --type {spec:?}: ID is empty"));
        }
        if device_api.is_empty() {
            return Err(format!("invalid --type {spec:?}: API is empty"));
        }
        let available_instances = avail.trim().parse::<u32>().map_err(|_| {
            format!(
                "invalid --type {spec:?}: AVAIL {avail:?} is not a number from 0 to {}",
                u32::MAX
            )
        })?;
        Ok(TypeArg {
            id: id.to_owned(),
            device_api: device_api.to_owned(),
            available_instances,
            name: fields.next().map(str::to_owned),
            description: fields.next().map(str::to_owned),
        })
    }

    /// The `a{sv}` entry of `RegisterParent`'s `types` argument.
    pub fn to_dict(&self) -> HashMap<String, OwnedVariant> {
        let mut dict = HashMap::new();
        dict.insert("Id".to_owned(), string_variant(&self.id));
        dict.insert("DeviceApi".to_owned(), string_variant(&self.device_api));
        dict.insert(
            "AvailableInstances".to_owned(),
            OwnedVariant::from(self.available_instances),
        );
        if let Some(name) = &self.name {
            dict.insert("Name".to_owned(), string_variant(name));
        }
        if let Some(description) = &self.description {
            dict.insert("Description".to_owned(), string_variant(description));
        }
        dict
    }
}

/// A checked `register` request: what `RegisterParent` gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub name: String,
    pub options: HashMap<String, OwnedVariant>,
    pub types: Vec<HashMap<String, OwnedVariant>>,
    pub persistent: bool,
}

impl Registration {
    /// Checks the `register` arguments (usage errors, before any bus I/O);
    /// the daemon checks the rest.
    pub fn from_args(args: &RegisterArgs) -> Result<Registration, ClientError> {
        let mut type_args: Vec<TypeArg> = Vec::with_capacity(args.types.len());
        for spec in &args.types {
            let type_arg = TypeArg::parse(spec).map_err(ClientError::Usage)?;
            if type_args.iter().any(|seen| seen.id == type_arg.id) {
                return Err(ClientError::Usage(format!(
                    "invalid --type {spec:?}: type id {:?} given twice",
                    type_arg.id
                )));
            }
            type_args.push(type_arg);
        }
        let mut options = HashMap::new();
        for (key, value) in [
            ("DevPath", &args.devpath),
            ("Subsystem", &args.subsystem),
            ("Driver", &args.driver),
        ] {
            if let Some(value) = value {
                options.insert(key.to_owned(), string_variant(value));
            }
        }
        let lifetime = if args.persistent {
            Lifetime::Persistent
        } else {
            Lifetime::Owner
        };
        options.insert("Lifetime".to_owned(), string_variant(lifetime.as_str()));
        Ok(Registration {
            name: args.name.clone(),
            options,
            types: type_args.iter().map(TypeArg::to_dict).collect(),
            persistent: args.persistent,
        })
    }
}

fn string_variant(text: &str) -> OwnedVariant {
    OwnedVariant::from(Str::from(text.to_owned()))
}

/// The condition of `wait`, or a usage error for a bad parent name.
pub fn wait_condition(args: &WaitArgs) -> Result<wait::Condition, ClientError> {
    if !crate::persist::is_valid_parent_name(&args.parent) {
        return Err(ClientError::Usage(format!(
            "invalid parent name {:?}: want 1..=255 bytes of [A-Za-z0-9:._-], not . or ..",
            args.parent
        )));
    }
    Ok(wait::Condition {
        parent: args.parent.clone(),
        type_id: args.type_id.clone(),
        available: args.available,
    })
}

/// Runs a daemon command on a fresh current-thread runtime. `types` and
/// `list` with `--sysfs-root` are not daemon commands (see [`report`]).
pub fn run(bus: &str, command: Command, out: &mut dyn Write) -> Result<(), ClientError> {
    // Usage errors first, so they win over a missing bus.
    let target = BusTarget::parse(bus)?;
    let registration = match &command {
        Command::Register(args) => Some(Registration::from_args(args)?),
        _ => None,
    };
    if let Command::Wait(args) = &command {
        wait_condition(args)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Runtime(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        match (command, registration) {
            (Command::Register(_), Some(registration)) => {
                register(&target, &registration, out).await
            }
            // Monitor subscribes before anything else is asked or printed.
            (Command::Monitor { json }, _) => monitor(&target, json, out).await,
            (Command::Wait(args), _) => {
                let condition = wait_condition(&args)?;
                wait::wait_dbus(&target, &condition, args.timeout, &mut io::stderr()).await
            }
            (command, _) => run_query(&target, command, out).await,
        }
    })
}

/// The one-shot commands: connect, ask, print, flush.
async fn run_query(
    target: &BusTarget,
    command: Command,
    out: &mut dyn Write,
) -> Result<(), ClientError> {
    let conn = target.connect().await?;
    match command {
        Command::Types {
            parent,
            json,
            backend,
            ..
        } => {
            // The daemon's documents are mdevctl's (mdev parents only).
            if json && backend == BackendFilter::Mdev {
                // One call: the daemon renders the document itself, into a
                // file it passes over.
                let registry = registry_proxy(&conn, target).await?;
                let only = parent.as_deref().unwrap_or("");
                let fd = registry
                    .dump_types_by_file_descriptor(only)
                    .await
                    .map_err(|e| registry_error(e, target))?;
                let document = read_document(fd).map_err(|e| {
                    ClientError::Runtime(format!("cannot read the types document of mdevregd: {e}"))
                })?;
                return out
                    .write_all(&document)
                    .and_then(|()| out.write_all(b"\n"))
                    .and_then(|()| out.flush())
                    .map_err(ClientError::output);
            }
            let parents = fetch_parents(&conn, target, parent.as_deref()).await?;
            let infos: Vec<ParentInfo> = parents.into_iter().map(|p| p.info).collect();
            let infos = report::select_backend(infos, backend);
            report::write_types(&infos, parent.as_deref(), json, out).map_err(ClientError::output)
        }
        Command::Capacity { json, .. } => {
            let parents = fetch_parents(&conn, target, None).await?;
            report::write_capacity(parents.iter().map(|p| &p.info), json, out)
                .map_err(ClientError::output)
        }
        Command::List { json, .. } => {
            let parents = fetch_parents(&conn, target, None).await?;
            report::write_list(&parents, json, out).map_err(ClientError::output)
        }
        Command::Show { parent, json } => {
            let parents = fetch_parents(&conn, target, Some(&parent)).await?;
            let Some(found) = parents.iter().find(|p| p.info.name == parent) else {
                return Err(ClientError::Runtime(format!("no parent named {parent}")));
            };
            if json {
                let text = serde_json::to_string_pretty(&parent_json(found))
                    .map_err(|e| ClientError::output(io::Error::other(e)))?;
                writeln!(out, "{text}").map_err(ClientError::output)
            } else {
                out.write_all(parent_text(found).as_bytes())
                    .map_err(ClientError::output)
            }
        }
        Command::Stats { json } => stats(&conn, target, json, out).await,
        Command::Metrics { openmetrics, .. } => metrics(&conn, target, openmetrics, out).await,
        Command::Unregister { name } => {
            let registry = registry_proxy(&conn, target).await?;
            registry
                .unregister_parent(&name)
                .await
                .map_err(|e| registry_error(e, target))
        }
        // Dispatched by `run`, never passed here.
        Command::Monitor { .. } | Command::Register(_) | Command::Wait(_) => Ok(()),
    }?;
    out.flush().map_err(ClientError::output)
}

async fn registry_proxy<'c>(
    conn: &'c Connection,
    target: &BusTarget,
) -> Result<Registry1Proxy<'c>, ClientError> {
    Registry1Proxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(RegistryError::from)
        .map_err(|e| registry_error(e, target))
}

/// All of a document the daemon handed over as a file descriptor.
fn read_document(fd: zbus::OwnedFd) -> io::Result<Vec<u8>> {
    let mut document = Vec::new();
    std::fs::File::from(std::os::fd::OwnedFd::from(fd)).read_to_end(&mut document)?;
    Ok(document)
}

/// Every parent with its types (or just `only`), sorted by name, from the
/// file `DumpParentsByFileDescriptor` returns. Any failure (an error reply,
/// an unreadable or malformed document) is reported, never papered over.
pub async fn fetch_parents(
    conn: &Connection,
    target: &BusTarget,
    only: Option<&str>,
) -> Result<Vec<Parent>, ClientError> {
    let registry = registry_proxy(conn, target).await?;
    let fd = registry
        .dump_parents_by_file_descriptor(only.unwrap_or(""))
        .await
        .map_err(|e| registry_error(e, target))?;
    let document = read_document(fd).map_err(|e| {
        ClientError::Runtime(format!("cannot read the parents document of mdevregd: {e}"))
    })?;
    let mut parents = parse_parents(&document)?;
    for parent in &mut parents {
        parent.info.normalize();
    }
    parents.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    Ok(parents)
}

/// The parents of a `DumpParentsByFileDescriptor` document.
fn parse_parents(document: &[u8]) -> Result<Vec<Parent>, ClientError> {
    serde_json::from_slice(document)
        .map_err(|e| ClientError::Runtime(format!("malformed parents document from mdevregd: {e}")))
}

type Props = HashMap<String, OwnedVariant>;

fn take<T>(props: &mut Props, key: &str) -> Result<T, String>
where
    T: TryFrom<OwnedVariant>,
    T::Error: fmt::Display,
{
    let value = props
        .remove(key)
        .ok_or_else(|| format!("property {key} is missing"))?;
    let signature = value.value_signature().to_string();
    T::try_from(value).map_err(|err| format!("property {key} has type {signature}: {err}"))
}

/// `stats [--json]`: version, last sequence number, parent count, counters.
async fn stats(
    conn: &Connection,
    target: &BusTarget,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), ClientError> {
    let registry = registry_proxy(conn, target).await?;
    let failed = |e: zbus::Error| registry_error(RegistryError::from(e), target);
    let version = registry.version().await.map_err(failed)?;
    let seqnum = registry.seq_num().await.map_err(failed)?;
    let parents = registry.parents().await.map_err(failed)?.len();
    let counters: BTreeMap<String, u64> = registry
        .stats()
        .await
        .map_err(failed)?
        .into_iter()
        .collect();
    if json {
        let document = serde_json::json!({
            "version": version,
            "seqnum": seqnum,
            "parents": parents,
            "counters": counters,
        });
        let text = serde_json::to_string_pretty(&document)
            .map_err(|e| ClientError::output(io::Error::other(e)))?;
        writeln!(out, "{text}").map_err(ClientError::output)
    } else {
        let mut text = format!("Version:  {version}\nSeqNum:   {seqnum}\nParents:  {parents}\n");
        if counters.is_empty() {
            text.push_str("Counters: none\n");
        } else {
            text.push_str("Counters:\n");
            let width = counters.keys().map(String::len).max().unwrap_or(0);
            for (key, value) in &counters {
                text.push_str(&format!("  {key:<width$}  {value}\n"));
            }
        }
        out.write_all(text.as_bytes()).map_err(ClientError::output)
    }
}

/// `metrics`: the daemon's parents, sequence number and counters, rendered
/// here with the code the daemon serves them with.
async fn metrics(
    conn: &Connection,
    target: &BusTarget,
    openmetrics: bool,
    out: &mut dyn Write,
) -> Result<(), ClientError> {
    let registry = registry_proxy(conn, target).await?;
    let failed = |e: zbus::Error| registry_error(RegistryError::from(e), target);
    let seqnum = registry.seq_num().await.map_err(failed)?;
    let stats: BTreeMap<String, u64> = registry
        .stats()
        .await
        .map_err(failed)?
        .into_iter()
        .collect();
    let parents = fetch_parents(conn, target, None).await?;
    let format = if openmetrics {
        metrics::Format::OpenMetrics
    } else {
        metrics::Format::Text
    };
    let exposition = metrics::render(
        std::sync::Arc::new(metrics::ParentList {
            seqnum,
            parents: parents.into_iter().map(std::sync::Arc::new).collect(),
        }),
        Some(&metrics::counters_from_stats(&stats)),
        format,
    );
    for chunk in exposition.chunks() {
        out.write_all(chunk).map_err(ClientError::output)?;
    }
    Ok(())
}

/// One line of `monitor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum MonitorEvent {
    Registered {
        seqnum: u64,
        name: String,
        source: String,
        path: String,
    },
    Unregistered {
        seqnum: u64,
        name: String,
        source: String,
        path: String,
    },
    /// `AvailableInstances` and/or `Devices` of a type changed.
    TypeChanged {
        parent: String,
        #[serde(rename = "type")]
        type_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        available_instances: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        devices: Option<Vec<String>>,
        path: String,
    },
}

impl MonitorEvent {
    /// The event a signal from the daemon stands for, if it is one `monitor`
    /// shows.
    pub fn from_message(msg: &zbus::Message) -> Option<MonitorEvent> {
        let header = msg.header();
        let interface = header.interface()?.as_str();
        let member = header.member()?.as_str();
        match (interface, member) {
            (REGISTRY_IFACE, "ParentRegistered" | "ParentUnregistered") => {
                // The signature `osst` of both signals (checked while
                // deserialising, so a drift shows up as no output).
                let (path, name, source, seqnum): (OwnedObjectPath, String, String, u64) =
                    msg.body().deserialize().ok()?;
                let path = path.as_str().to_owned();
                Some(if member == "ParentRegistered" {
                    MonitorEvent::Registered {
                        seqnum,
                        name,
                        source,
                        path,
                    }
                } else {
                    MonitorEvent::Unregistered {
                        seqnum,
                        name,
                        source,
                        path,
                    }
                })
            }
            (PROPERTIES_IFACE, "PropertiesChanged") => {
                let path = header.path()?.as_str().to_owned();
                let (changed_iface, mut changed, _invalidated): (String, Props, Vec<String>) =
                    msg.body().deserialize().ok()?;
                if changed_iface != TYPE_IFACE {
                    return None;
                }
                let available_instances = take::<u32>(&mut changed, "AvailableInstances").ok();
                let devices = take::<Vec<String>>(&mut changed, "Devices").ok();
                if available_instances.is_none() && devices.is_none() {
                    return None;
                }
                let (parent, type_id) = label::parse_type_path(&path)?;
                Some(MonitorEvent::TypeChanged {
                    parent,
                    type_id,
                    available_instances,
                    devices,
                    path,
                })
            }
            _ => None,
        }
    }

    /// The line printed for this event (without newline).
    pub fn line(&self, json: bool) -> String {
        if json {
            return serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned());
        }
        match self {
            MonitorEvent::Registered {
                seqnum,
                name,
                source,
                path,
            } => format!("REGISTERED   seqnum={seqnum} name={name} source={source} path={path}"),
            MonitorEvent::Unregistered {
                seqnum,
                name,
                source,
                path,
            } => format!("UNREGISTERED seqnum={seqnum} name={name} source={source} path={path}"),
            MonitorEvent::TypeChanged {
                parent,
                type_id,
                available_instances,
                devices,
                path,
            } => {
                let mut line = format!("TYPE-CHANGED parent={parent} type={type_id}");
                if let Some(count) = available_instances {
                    line.push_str(&format!(" available_instances={count}"));
                }
                if let Some(devices) = devices {
                    line.push_str(&format!(" devices={}", devices.join(",")));
                }
                line.push_str(&format!(" path={path}"));
                line
            }
        }
    }
}

/// SIGINT and SIGTERM, installed before anything is subscribed or printed.
struct Interrupts {
    interrupt: Signal,
    terminate: Signal,
}

impl Interrupts {
    fn install() -> Result<Interrupts, ClientError> {
        let install = |kind| {
            signal(kind).map_err(|e| ClientError::Runtime(format!("cannot handle signals: {e}")))
        };
        Ok(Interrupts {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// `monitor [--json]`: subscribes to every signal of the daemon's objects,
/// then prints one flushed line per registry event (and type change) until
/// SIGINT or SIGTERM. Waits for the daemon if it is not running yet.
async fn monitor(target: &BusTarget, json: bool, out: &mut dyn Write) -> Result<(), ClientError> {
    let mut interrupts = Interrupts::install()?;
    let conn = target.connect().await?;
    let rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender(label::BUS_NAME)
        .path_namespace(label::ROOT_PATH)
        .build()
        .map_err(|e| runtime_zbus(&e, target))?;
    let mut stream = MessageStream::for_match_rule(rule, &conn, None)
        .await
        .map_err(|e| runtime_zbus(&e, target))?;
    loop {
        tokio::select! {
            _ = interrupts.wait() => return Ok(()),
            next = stream.next() => match next {
                Some(Ok(msg)) => {
                    if let Some(event) = MonitorEvent::from_message(&msg) {
                        writeln!(out, "{}", event.line(json)).map_err(ClientError::output)?;
                        out.flush().map_err(ClientError::output)?;
                    }
                }
                Some(Err(err)) => {
                    return Err(ClientError::Runtime(format!(
                        "lost the connection to {}: {}", target.describe(), describe_zbus(&err)
                    )));
                }
                None => {
                    return Err(ClientError::Runtime(format!(
                        "lost the connection to {}", target.describe()
                    )));
                }
            },
        }
    }
}

/// `register`: registers, prints the object path, then (owner-bound) holds
/// the registration until SIGINT/SIGTERM and unregisters it explicitly.
/// Fails if the daemon leaves the bus (the registration is gone with it).
async fn register(
    target: &BusTarget,
    registration: &Registration,
    out: &mut dyn Write,
) -> Result<(), ClientError> {
    let mut interrupts = Interrupts::install()?;
    let conn = target.connect().await?;
    let registry = registry_proxy(&conn, target).await?;
    // Subscribed before registering so a daemon exit right after the reply
    // is not missed.
    let bus = DBusProxy::new(&conn)
        .await
        .map_err(|e| runtime_zbus(&e, target))?;
    let mut owner_changes = bus
        .receive_name_owner_changed_with_args(&[(0, label::BUS_NAME)])
        .await
        .map_err(|e| runtime_zbus(&e, target))?;
    let path = registry
        .register_parent(
            &registration.name,
            registration.options.clone(),
            registration.types.clone(),
        )
        .await
        .map_err(|e| registry_error(e, target))?;
    writeln!(out, "{}", path.as_str()).map_err(ClientError::output)?;
    out.flush().map_err(ClientError::output)?;
    if registration.persistent {
        return Ok(());
    }
    let gone = |why: &str| {
        ClientError::Runtime(format!(
            "{why}; the registration of {} is gone",
            registration.name
        ))
    };
    loop {
        tokio::select! {
            _ = interrupts.wait() => {
                return registry
                    .unregister_parent(&registration.name)
                    .await
                    .map_err(|e| registry_error(e, target));
            }
            change = owner_changes.next() => {
                let Some(change) = change else {
                    return Err(gone(&format!("lost the connection to {}", target.describe())));
                };
                // A change from no owner to an owner happened before our
                // registration (the daemon just started): not a departure.
                let left = change
                    .args()
                    .map(|args| args.old_owner().is_some())
                    .unwrap_or(true);
                if left {
                    return Err(gone("mdevregd left the bus"));
                }
            }
            _ = conn.closed() => {
                return Err(gone(&format!("lost the connection to {}", target.describe())));
            }
        }
    }
}

/// Whether `err` is the bus saying nobody owns `org.mdevreg.Registry1`.
pub fn is_no_daemon_error(err: &zbus::Error) -> bool {
    reply_name(err).is_some_and(|(name, _)| NO_DAEMON_ERRORS.contains(&name.as_str()))
}

/// Error names meaning nobody owns `org.mdevreg.Registry1`.
const NO_DAEMON_ERRORS: [&str; 2] = [
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
];

fn no_daemon(target: &BusTarget) -> ClientError {
    ClientError::Runtime(format!(
        "mdevregd is not running on {} (nobody owns {})",
        target.describe(),
        label::BUS_NAME
    ))
}

/// The error name and description of a zbus error that is an error reply.
fn reply_name(err: &zbus::Error) -> Option<(String, Option<String>)> {
    match err {
        zbus::Error::MethodError(name, description, _) => {
            Some((name.as_str().to_owned(), description.clone()))
        }
        zbus::Error::FDO(fdo) => Some((
            fdo.name().as_str().to_owned(),
            fdo.description().map(str::to_owned),
        )),
        _ => None,
    }
}

/// One line for a zbus error: `<error name>: <message>` for error replies.
pub fn describe_zbus(err: &zbus::Error) -> String {
    match reply_name(err) {
        Some((name, Some(description))) => format!("{name}: {description}"),
        Some((name, None)) => name,
        None => err.to_string(),
    }
}

fn runtime_zbus(err: &zbus::Error, target: &BusTarget) -> ClientError {
    match reply_name(err) {
        Some((name, _)) if NO_DAEMON_ERRORS.contains(&name.as_str()) => no_daemon(target),
        _ => ClientError::Runtime(describe_zbus(err)),
    }
}

/// An error reply of the registry: `org.mdevreg.Registry1.Error.<Kind>: <message>`.
fn registry_error(err: RegistryError, target: &BusTarget) -> ClientError {
    match err {
        RegistryError::ZBus(inner) => runtime_zbus(&inner, target),
        typed => ClientError::Runtime(typed.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register_args(types: &[&str]) -> RegisterArgs {
        RegisterArgs {
            name: "p".to_owned(),
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            devpath: None,
            subsystem: Some("pci".to_owned()),
            driver: None,
            persistent: false,
        }
    }

    #[test]
    fn parses_type_specs() {
        assert_eq!(
            TypeArg::parse("mtty-1,vfio-pci,24").unwrap(),
            TypeArg {
                id: "mtty-1".into(),
                device_api: "vfio-pci".into(),
                available_instances: 24,
                name: None,
                description: None,
            }
        );
        let full = TypeArg::parse("t,vfio-ccw,4294967295,My name,a, b, c").unwrap();
        assert_eq!(full.available_instances, u32::MAX);
        assert_eq!(full.name.as_deref(), Some("My name"));
        assert_eq!(full.description.as_deref(), Some("a, b, c"));
        let empty_name = TypeArg::parse("t,vfio-pci,1,").unwrap();
        assert_eq!(empty_name.name.as_deref(), Some(""));
    }

    #[test]
    fn rejects_bad_type_specs() {
        for (spec, needle) in [
            ("t,vfio-pci,many", "AVAIL \"many\""),
            ("t,vfio-pci,-1", "AVAIL"),
            ("t,vfio-pci,4294967296", "AVAIL"),
            ("t,vfio-pci", "expected ID,API,AVAIL"),
            ("", "expected ID,API,AVAIL"),
            (",vfio-pci,1", "ID is empty"),
            ("t,,1", "API is empty"),
        ] {
            let message = TypeArg::parse(spec).unwrap_err();
            assert!(message.contains(needle), "{spec:?}: {message}");
        }
    }

    #[test]
    fn registration_builds_the_dbus_arguments() {
        let reg =
            Registration::from_args(&register_args(&["a,vfio-pci,2,N", "b,vfio-ap,0"])).unwrap();
        assert_eq!(reg.types.len(), 2);
        assert_eq!(reg.types[0]["Id"], string_variant("a"));
        assert_eq!(reg.types[0]["AvailableInstances"], OwnedVariant::from(2u32));
        assert_eq!(reg.types[0]["Name"], string_variant("N"));
        assert!(!reg.types[1].contains_key("Name"));
        assert_eq!(reg.options["Subsystem"], string_variant("pci"));
        assert_eq!(reg.options["Lifetime"], string_variant("owner"));
        assert!(!reg.options.contains_key("DevPath"));
        // Every key is one the daemon knows.
        for key in reg.options.keys() {
            assert!(
                crate::dbus::validate::OPTION_KEYS.contains(&key.as_str()),
                "{key}"
            );
        }
        let full = TypeArg::parse("t,vfio-pci,1,n,d").unwrap().to_dict();
        for key in full.keys() {
            assert!(
                crate::dbus::validate::TYPE_KEYS.contains(&key.as_str()),
                "{key}"
            );
        }
        let mut persistent = register_args(&["a,vfio-pci,2"]);
        persistent.persistent = true;
        let reg = Registration::from_args(&persistent).unwrap();
        assert_eq!(reg.options["Lifetime"], string_variant("persistent"));
    }

    #[test]
    fn registration_usage_errors() {
        let err = Registration::from_args(&register_args(&["a,vfio-pci,x"])).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err =
            Registration::from_args(&register_args(&["a,vfio-pci,1", "a,vfio-ap,2"])).unwrap_err();
        assert!(
            matches!(err, ClientError::Usage(ref m) if m.contains("twice")),
            "{err:?}"
        );
    }

    #[test]
    fn parses_bus_targets() {
        assert_eq!(BusTarget::parse("system").unwrap(), BusTarget::System);
        assert_eq!(BusTarget::parse("session").unwrap(), BusTarget::Session);
        assert_eq!(
            BusTarget::parse("unix:path=/run/x").unwrap().describe(),
            "the bus at unix:path=/run/x"
        );
        assert_eq!(BusTarget::parse("").unwrap_err().exit_code(), 2);
    }

    #[test]
    fn parents_document_errors_are_reported() {
        let parent = crate::model::Parent {
            info: ParentInfo {
                name: "p".into(),
                ..ParentInfo::default()
            },
            source: crate::model::Source::Userspace,
            owner: ":1.7".into(),
            lifetime: crate::model::Lifetime::Owner,
            registered_seqnum: 9,
            uid: 0,
        };
        let document = serde_json::to_vec(&[&parent]).unwrap();
        assert_eq!(parse_parents(&document).unwrap(), [parent]);
        for bad in [&b"{}"[..], b"[{\"info\": 1}]", b"", b"\xff"] {
            let err = parse_parents(bad).unwrap_err();
            assert_eq!(err.exit_code(), 1);
            let text = err.to_string();
            assert!(text.starts_with("malformed parents document"), "{text}");
            assert_eq!(text.lines().count(), 1, "{text}");
        }
    }

    #[test]
    fn monitor_lines() {
        let event = MonitorEvent::Registered {
            seqnum: 12,
            name: "0000:00:02.0".into(),
            source: "kernel".into(),
            path: label::parent_path("0000:00:02.0"),
        };
        assert_eq!(
            event.line(false),
            "REGISTERED   seqnum=12 name=0000:00:02.0 source=kernel path=/org/mdevreg/Registry1/parent/_30000_3a00_3a02_2e0"
        );
        assert_eq!(
            event.line(true),
            r#"{"event":"registered","seqnum":12,"name":"0000:00:02.0","source":"kernel","path":"/org/mdevreg/Registry1/parent/_30000_3a00_3a02_2e0"}"#
        );
        let event = MonitorEvent::TypeChanged {
            parent: "mtty".into(),
            type_id: "mtty-2".into(),
            available_instances: Some(11),
            devices: None,
            path: label::type_path("mtty", "mtty-2"),
        };
        assert!(event
            .line(false)
            .starts_with("TYPE-CHANGED parent=mtty type=mtty-2 available_instances=11 path="));
        assert!(event.line(true).starts_with(r#"{"event":"type-changed","parent":"mtty","type":"mtty-2","available_instances":11,"path":"#));
    }

    #[test]
    fn monitor_decodes_signals() {
        let signal = zbus::Message::signal(label::ROOT_PATH, REGISTRY_IFACE, "ParentUnregistered")
            .build(&(
                zbus::ObjectPath::try_from(label::parent_path("p")).unwrap(),
                "p",
                "userspace",
                7u64,
            ))
            .unwrap();
        assert_eq!(
            MonitorEvent::from_message(&signal),
            Some(MonitorEvent::Unregistered {
                seqnum: 7,
                name: "p".into(),
                source: "userspace".into(),
                path: label::parent_path("p"),
            })
        );
        let type_path = label::type_path("p", "t-1");
        let mut changed: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
        changed.insert("AvailableInstances", zbus::Variant::from(5u32));
        let signal =
            zbus::Message::signal(type_path.as_str(), PROPERTIES_IFACE, "PropertiesChanged")
                .build(&(TYPE_IFACE, changed, Vec::<String>::new()))
                .unwrap();
        assert_eq!(
            MonitorEvent::from_message(&signal),
            Some(MonitorEvent::TypeChanged {
                parent: "p".into(),
                type_id: "t-1".into(),
                available_instances: Some(5),
                devices: None,
                path: type_path.clone(),
            })
        );
        // Other properties and interfaces are not shown.
        let mut changed: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
        changed.insert("SeqNum", zbus::Variant::from(5u64));
        let signal = zbus::Message::signal(label::ROOT_PATH, PROPERTIES_IFACE, "PropertiesChanged")
            .build(&(REGISTRY_IFACE, changed, Vec::<String>::new()))
            .unwrap();
        assert_eq!(MonitorEvent::from_message(&signal), None);
    }

    #[test]
    fn describes_error_replies() {
        let err = RegistryError::AccessDenied("uid 1000 may not call RegisterParent".into());
        let target = BusTarget::System;
        assert_eq!(
            registry_error(err, &target).to_string(),
            "org.mdevreg.Registry1.Error.AccessDenied: uid 1000 may not call RegisterParent"
        );
        let err = zbus::Error::from(zbus::fdo::Error::ServiceUnknown("no".into()));
        assert_eq!(
            runtime_zbus(&err, &target).to_string(),
            "mdevregd is not running on the system bus (nobody owns org.mdevreg.Registry1)"
        );
    }
}
