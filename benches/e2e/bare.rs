//! The bare responder: what the bus itself costs, as a reference for
//! mdevregd in the same run (issue 12, Deliver 4).
//!
//! A zbus service on the benchmark's private bus, on a thread of its own
//! with a single-threaded tokio runtime (as mdevregd's event loop has), and
//! without registry, state files or sysfs:
//! - it answers `RegisterParent` and `UnregisterParent` calls (their
//!   arguments deserialized, nothing checked) with the messages mdevregd
//!   sends for a registration and an unregistration — the same signals,
//!   from the same object paths and interfaces, with the same bodies, then
//!   the same reply, written together as mdevregd writes them. The messages
//!   are not typed in here: [`capture`] records what mdevregd sent for one
//!   cycle, and the responder builds new messages from those bodies for
//!   every call, so the reference follows whatever mdevregd emits;
//! - while its relay is on ([`RelayMode::One`]), it turns each kernel uevent
//!   with `MDEV_STATE=registered` received on netlink group 1 (the same
//!   listener code mdevregd uses) into one `ParentRegistered`-shaped signal
//!   (`o s s t`) naming the device;
//! - as the "contract relay" ([`RelayMode::Contract`]) it sends for each
//!   such uevent the messages mdevregd sends for a kernel parent's
//!   registration, in the same order and with the same sizes — the
//!   ObjectManager's `InterfacesAdded` for the parent and each of its types,
//!   `ParentRegistered` (naming the device), the root's `PropertiesChanged`
//!   — built for every event from bodies recorded from mdevregd
//!   ([`EventScript`]), written together as mdevregd writes them. What the
//!   contract's messages cost on the bus, without registry or sysfs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use mdevreg::netlink::{RecvOutcome, UeventListener};
use zbus::message::Type as MessageType;
use zbus::{
    Connection, MatchRule, Message, MessageStream, OwnedObjectPath, OwnedStructure, OwnedVariant,
};

/// The responder's well-known name.
pub const BARE_NAME: &str = "org.mdevreg.Bare1";

/// One signal as mdevregd sent it.
#[derive(Debug)]
pub struct Recorded {
    pub path: OwnedObjectPath,
    pub interface: String,
    pub member: String,
    pub body: OwnedStructure,
    /// Signature and length of the body as received (for the report and
    /// the check that the copies match).
    pub signature: String,
    pub body_len: usize,
}

impl Recorded {
    fn of(message: &Message) -> Result<Recorded, String> {
        let header = message.header();
        let body = message.body();
        let signature = body.signature().to_string();
        let body_len = body.len();
        Ok(Recorded {
            path: header
                .path()
                .ok_or("a signal without a path")?
                .to_owned()
                .into(),
            interface: header
                .interface()
                .ok_or("a signal without an interface")?
                .to_string(),
            member: header
                .member()
                .ok_or("a signal without a member")?
                .to_string(),
            body: body
                .deserialize()
                .map_err(|err| format!("signal body ({signature}): {err}"))?,
            signature,
            body_len,
        })
    }

    /// A new signal message with this body.
    fn build(&self) -> zbus::Result<Message> {
        Message::signal(
            self.path.as_ref(),
            self.interface.as_str(),
            self.member.as_str(),
        )
        .build(&self.body)
    }

    /// `Member (signature, N bytes)` for the report.
    pub fn describe(&self) -> String {
        format!(
            "{}.{} ({}, {} B)",
            self.interface.rsplit('.').next().unwrap_or(&self.interface),
            self.member,
            self.signature,
            self.body_len
        )
    }
}

/// `(member, signature, body length)` of each of `signals`.
pub fn shape_of(signals: &[Recorded]) -> Vec<(String, String, usize)> {
    signals
        .iter()
        .map(|signal| {
            (
                signal.member.clone(),
                signal.signature.clone(),
                signal.body_len,
            )
        })
        .collect()
}

/// `Member (signature, N B), ...` for the report.
pub fn describe_all(signals: &[Recorded]) -> String {
    signals
        .iter()
        .map(Recorded::describe)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What mdevregd sent for one kernel parent's `MDEV_STATE=registered`
/// uevent (the contract relay's script).
#[derive(Debug)]
pub struct EventScript {
    /// The signals, in order.
    pub signals: Vec<Recorded>,
}

impl EventScript {
    /// The messages for a uevent about `name`: the recorded ones built
    /// anew, `ParentRegistered` naming `name` (the recorded parent's name
    /// has the same length, so the sizes stay).
    fn messages(&self, name: &str, seqnum: u64) -> Vec<Message> {
        let mut messages = Vec::with_capacity(self.signals.len());
        for signal in &self.signals {
            let built = if signal.member == "ParentRegistered" {
                parent_registered(name, seqnum)
            } else {
                signal.build()
            };
            match built {
                Ok(message) => messages.push(message),
                Err(err) => eprintln!("e2e: contract relay: signal not built: {err}"),
            }
        }
        messages
    }
}

/// What one register + unregister cycle of mdevregd sent.
#[derive(Debug)]
pub struct Script {
    /// Signals sent for `RegisterParent`, in order, before its reply.
    pub register: Vec<Recorded>,
    /// `RegisterParent`'s reply: the new parent's object path.
    pub register_reply: OwnedObjectPath,
    /// Signals sent for `UnregisterParent`, in order, before its reply.
    pub unregister: Vec<Recorded>,
}

impl Script {
    /// One line per call for the report.
    pub fn describe(&self) -> String {
        format!(
            "RegisterParent: {}, then the reply (o); UnregisterParent: {}, then the reply ()",
            describe_all(&self.register),
            describe_all(&self.unregister)
        )
    }

    /// `(member, signature, body length)` of each signal of both calls.
    pub fn shape(&self) -> Vec<(String, String, usize)> {
        let mut shape = shape_of(&self.register);
        shape.extend(shape_of(&self.unregister));
        shape
    }
}

/// Subscribes to every signal `sender` (a unique name) sends; the stream
/// for [`record`].
pub async fn signals_of(connection: &Connection, sender: &str) -> Result<MessageStream, String> {
    let rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender(sender.to_owned())
        .build()
        .map_err(|err| format!("match rule: {err}"))?;
    MessageStream::for_match_rule(rule, connection, std::num::NonZeroUsize::new(256))
        .await
        .map_err(|err| format!("subscribe to the signals of {sender}: {err}"))
}

/// Every message on `stream` until it has been quiet for `quiet`.
pub async fn record(stream: &mut MessageStream, quiet: Duration) -> Result<Vec<Recorded>, String> {
    let mut recorded = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(quiet, stream.next()).await {
        let message = message.map_err(|err| format!("signal: {err}"))?;
        recorded.push(Recorded::of(&message)?);
    }
    Ok(recorded)
}

/// Records one register + unregister cycle on `registry` (a proxy for
/// `org.mdevreg.Registry1` of the daemon whose unique name is `sender`).
pub async fn capture(
    connection: &Connection,
    sender: &str,
    registry: &zbus::Proxy<'_>,
    args: &RegisterArgs<'_>,
) -> Result<Script, String> {
    let mut stream = signals_of(connection, sender).await?;
    // Nothing before the call counts (a late signal of something else).
    let _ = record(&mut stream, Duration::from_millis(50)).await?;
    let register_reply: OwnedObjectPath = registry
        .call("RegisterParent", &(args.name, &args.options, &args.types))
        .await
        .map_err(|err| format!("RegisterParent: {err}"))?;
    let register = record(&mut stream, Duration::from_millis(300)).await?;
    let () = registry
        .call("UnregisterParent", &(args.name,))
        .await
        .map_err(|err| format!("UnregisterParent: {err}"))?;
    let unregister = record(&mut stream, Duration::from_millis(300)).await?;
    if register.is_empty() || unregister.is_empty() {
        return Err("mdevregd sent no signals for a registration".into());
    }
    Ok(Script {
        register,
        register_reply,
        unregister,
    })
}

/// The arguments of the benchmark's `RegisterParent` calls.
pub struct RegisterArgs<'a> {
    pub name: &'a str,
    pub options: HashMap<&'a str, zbus::Variant<'a>>,
    pub types: Vec<HashMap<&'a str, zbus::Variant<'a>>>,
}

impl RegisterArgs<'static> {
    /// One owner-bound parent with one type.
    pub fn bench() -> RegisterArgs<'static> {
        RegisterArgs {
            name: "bench-cycle",
            options: HashMap::new(),
            types: vec![HashMap::from([
                ("Id", zbus::Variant::from("bench-1")),
                ("DeviceApi", zbus::Variant::from("vfio-pci")),
                ("AvailableInstances", zbus::Variant::from(4u32)),
            ])],
        }
    }
}

/// What the relay does with a kernel uevent with `MDEV_STATE=registered`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RelayMode {
    /// Received and dropped.
    Off = 0,
    /// One `ParentRegistered`-shaped signal (the bare relay).
    One = 1,
    /// The messages mdevregd sends for it ([`EventScript`]; off until
    /// [`Bare::set_contract`]).
    Contract = 2,
}

/// The running responder; stopped and joined on drop.
pub struct Bare {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// A [`RelayMode`].
    relay: Arc<AtomicU8>,
    /// The contract relay's script.
    contract: Arc<Mutex<Option<Arc<EventScript>>>>,
    /// Its unique name on the bus.
    pub unique_name: String,
}

impl Bare {
    /// Starts the responder on the bus at `address` with `script`; returns
    /// once it owns [`BARE_NAME`] and its uevent listener is open.
    pub fn start(address: &str, script: Script) -> Result<Bare, String> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let relay = Arc::new(AtomicU8::new(RelayMode::Off as u8));
        let contract = Arc::new(Mutex::new(None));
        let relay_state = RelayState {
            mode: Arc::clone(&relay),
            contract: Arc::clone(&contract),
        };
        let address = address.to_owned();
        let thread = std::thread::Builder::new()
            .name("bare-responder".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = ready_tx.send(Err(format!("tokio: {err}")));
                        return;
                    }
                };
                runtime.block_on(serve(address, script, relay_state, ready_tx, stop_rx));
            })
            .map_err(|err| format!("bare responder thread: {err}"))?;
        let unique_name = match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(name)) => name,
            Ok(Err(err)) => return Err(err),
            Err(_) => return Err("the bare responder did not start within 30 s".into()),
        };
        Ok(Bare {
            stop: Some(stop_tx),
            thread: Some(thread),
            relay,
            contract,
            unique_name,
        })
    }

    pub fn set_relay(&self, mode: RelayMode) {
        self.relay.store(mode as u8, Ordering::SeqCst);
    }

    /// Gives the contract relay its script.
    pub fn set_contract(&self, script: EventScript) {
        *self
            .contract
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(script));
    }
}

/// What the relay task reads: the mode, the contract relay's script.
struct RelayState {
    mode: Arc<AtomicU8>,
    contract: Arc<Mutex<Option<Arc<EventScript>>>>,
}

impl Drop for Bare {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    address: String,
    script: Script,
    relay: RelayState,
    ready: std::sync::mpsc::Sender<Result<String, String>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let started = async {
        let connection = zbus::connection::Builder::address(address.as_str())
            .name(BARE_NAME)
            .build()
            .await
            .map_err(|err| format!("bare responder connection: {err}"))?;
        let unique = connection
            .unique_name()
            .map(|name| name.to_string())
            .ok_or("bare responder without a unique name")?;
        let rule = MatchRule::builder()
            .msg_type(MessageType::MethodCall)
            .destination(unique.clone())
            .build()
            .map_err(|err| format!("match rule: {err}"))?;
        let calls = MessageStream::for_match_rule(rule, &connection, None)
            .await
            .map_err(|err| format!("bare responder calls: {err}"))?;
        let listener =
            UeventListener::open().map_err(|err| format!("bare responder listener: {err}"))?;
        Ok::<_, String>((connection, unique, calls, listener))
    }
    .await;
    let (connection, unique, calls, listener) = match started {
        Ok(started) => started,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let _ = ready.send(Ok(unique));
    let relay_task = tokio::spawn(relay_uevents(connection.clone(), listener, relay));
    tokio::select! {
        () = answer_calls(&connection, calls, &script) => {}
        _ = stop => {}
    }
    relay_task.abort();
}

/// `RegisterParent` / `UnregisterParent` answered with the script's
/// messages; anything else gets an error.
async fn answer_calls(connection: &Connection, mut calls: MessageStream, script: &Script) {
    type RegisterBody = (
        String,
        HashMap<String, OwnedVariant>,
        Vec<HashMap<String, OwnedVariant>>,
    );
    while let Some(Ok(call)) = calls.next().await {
        let header = call.header();
        let body = call.body();
        let messages = match header.member().map(|member| member.as_str()) {
            Some("RegisterParent") => match body.deserialize::<RegisterBody>() {
                Ok(_) => reply_with(&call, &script.register, &script.register_reply),
                Err(err) => error_reply(&call, &err.to_string()),
            },
            Some("UnregisterParent") => match body.deserialize::<String>() {
                Ok(_) => reply_with(&call, &script.unregister, &()),
                Err(err) => error_reply(&call, &err.to_string()),
            },
            _ => error_reply(&call, "the bare responder answers only (Un)RegisterParent"),
        };
        if let Err(err) = connection.send_all(&messages).await {
            eprintln!("e2e: bare responder: cannot send: {err}");
        }
    }
}

/// The signals of `signals`, built anew, then the reply holding `value`.
fn reply_with<T>(call: &Message, signals: &[Recorded], value: &T) -> Vec<Message>
where
    T: serde::Serialize + zbus::DynamicType,
{
    let mut messages = Vec::with_capacity(signals.len() + 1);
    for signal in signals {
        match signal.build() {
            Ok(message) => messages.push(message),
            Err(err) => eprintln!("e2e: bare responder: signal not built: {err}"),
        }
    }
    match Message::method_return(&call.header()).build(value) {
        Ok(reply) => messages.push(reply),
        Err(err) => eprintln!("e2e: bare responder: reply not built: {err}"),
    }
    messages
}

fn error_reply(call: &Message, text: &str) -> Vec<Message> {
    Message::error(&call.header(), "org.freedesktop.DBus.Error.Failed")
        .build(&text)
        .map(|message| vec![message])
        .unwrap_or_default()
}

/// Per kernel uevent with `MDEV_STATE=registered`: one
/// `ParentRegistered`-shaped signal ([`RelayMode::One`]), or the contract's
/// messages ([`RelayMode::Contract`]).
async fn relay_uevents(connection: Connection, mut listener: UeventListener, relay: RelayState) {
    let mut seqnum = 0u64;
    loop {
        let event = match listener.recv().await {
            Ok(RecvOutcome::Event(event)) => event,
            Ok(_) => continue,
            Err(err) => {
                eprintln!("e2e: bare relay: {err}");
                return;
            }
        };
        let mode = relay.mode.load(Ordering::Relaxed);
        if mode == RelayMode::Off as u8 || event.get("MDEV_STATE") != Some("registered") {
            continue;
        }
        seqnum += 1;
        let name = mdevreg::paths::devpath_name(&event.devpath);
        if mode == RelayMode::Contract as u8 {
            let script = relay
                .contract
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let Some(script) = script else {
                continue;
            };
            let messages = script.messages(name, seqnum);
            if let Err(err) = connection.send_all(&messages).await {
                eprintln!("e2e: contract relay: cannot send: {err}");
            }
            continue;
        }
        match parent_registered(name, seqnum) {
            Ok(signal) => {
                if let Err(err) = connection.send(&signal).await {
                    eprintln!("e2e: bare relay: cannot send: {err}");
                }
            }
            Err(err) => eprintln!("e2e: bare relay: signal not built: {err}"),
        }
    }
}

/// A `ParentRegistered` signal (`o s s t`) naming the kernel parent `name`.
fn parent_registered(name: &str, seqnum: u64) -> zbus::Result<Message> {
    let path = mdevreg::label::parent_path(name);
    let object = zbus::ObjectPath::try_from(path.as_str())?;
    Message::signal(
        mdevreg::label::ROOT_PATH,
        "org.mdevreg.Registry1",
        "ParentRegistered",
    )
    .build(&(object, name, "kernel", seqnum))
}
