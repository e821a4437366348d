//! The bus's floor for `tests/readers_vs_writers.rs`: a bare responder
//! that owns `org.mdevreg.Registry1` on a private bus of its own (the same
//! kind of bus the daemon gets), without registry, state or sysfs.
//!
//! - `GetManagedObjects` is answered with the body the daemon sent for the
//!   same tree (captured once by the test: same signature, same values,
//!   same size), built on a blocking thread; one large reply at a time,
//!   and the next one is built only once the bus has read the last one
//!   (so the responder's own work never slows the bus down while it
//!   reads: the best case for the writes);
//! - `RegisterParent` and `UnregisterParent` are answered at once with a
//!   small reply (an object path, nothing), without signals.
//!
//! A root write answered by this responder while readers fetch the tree
//! waits only for what the bus does: the large reply ahead of it on the
//! responder's one connection must be read whole by dbus-daemon first. The
//! time each large reply took to write (`connection.send`, i.e. until its
//! last byte was in the socket) is recorded, and the time until the bus had
//! read and routed it all (a `GetId` call to the bus sent right behind it
//! came back).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use zbus::message::Type as MessageType;
use zbus::{fdo, Connection, MatchRule, Message, MessageStream, OwnedObjectPath, OwnedVariant};

use super::registry_client::BUS_NAME;

/// `a{oa{sa{sv}}}`, as `GetManagedObjects` returns it.
/// (Paths in hash order: the size is the daemon's, the order may differ.)
pub type ManagedObjects =
    HashMap<OwnedObjectPath, BTreeMap<String, BTreeMap<String, OwnedVariant>>>;

/// How the large replies went.
#[derive(Debug, Default)]
pub struct LargeReplies {
    /// Time to build each reply (blocking thread).
    pub built: Vec<Duration>,
    /// Time each reply took to write, from its first byte to its last in
    /// the socket.
    pub written: Vec<Duration>,
    /// Time from each reply's first byte until the bus had read and
    /// routed all of it (a call to the bus sent right after it came back):
    /// what a write answered just after the reply started waits.
    pub drained: Vec<Duration>,
}

/// The responder, on a thread of its own with a one-thread tokio runtime
/// (as mdevregd's loop). Stops when dropped.
pub struct BareReader {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub replies: Arc<Mutex<LargeReplies>>,
}

impl BareReader {
    /// Connects to `address`, owns [`BUS_NAME`] and serves until dropped.
    /// Returns once the name is owned.
    pub fn start(address: &str, body: Arc<ManagedObjects>) -> BareReader {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let replies = Arc::new(Mutex::new(LargeReplies::default()));
        let address = address.to_owned();
        let thread_replies = Arc::clone(&replies);
        let thread = std::thread::Builder::new()
            .name("bare-reader".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("bare reader runtime");
                runtime.block_on(async move {
                    let connection = zbus::connection::Builder::address(address.as_str())
                        .name(BUS_NAME)
                        .build()
                        .await;
                    let connection = match connection {
                        Ok(connection) => connection,
                        Err(err) => {
                            let _ = ready_tx.send(Err(format!("bare reader: {err}")));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    tokio::select! {
                        () = serve(connection, body, thread_replies) => {}
                        _ = stopped => {}
                    }
                });
            })
            .expect("spawn the bare reader");
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the bare reader starts")
            .expect("the bare reader owns its name");
        BareReader {
            stop: Some(stop),
            thread: Some(thread),
            replies,
        }
    }
}

impl Drop for BareReader {
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
    connection: Connection,
    body: Arc<ManagedObjects>,
    replies: Arc<Mutex<LargeReplies>>,
) {
    let mut rule = MatchRule::builder().msg_type(MessageType::MethodCall);
    if let Some(unique) = connection.unique_name() {
        rule = rule.destination(unique.to_string());
    }
    let mut stream = MessageStream::for_match_rule(rule.build().expect("rule"), &connection, None)
        .await
        .expect("method call stream");
    // One large reply built and sent at a time, as the daemon does.
    let large = Arc::new(tokio::sync::Semaphore::new(1));
    while let Some(Ok(call)) = stream.next().await {
        let header = call.header();
        let member = header.member().map(|m| m.to_string()).unwrap_or_default();
        match member.as_str() {
            "GetManagedObjects" => {
                let connection = connection.clone();
                let body = Arc::clone(&body);
                let large = Arc::clone(&large);
                let replies = Arc::clone(&replies);
                tokio::spawn(async move {
                    let _turn = large.acquire_owned().await.expect("never closed");
                    let started = Instant::now();
                    let reply = tokio::task::spawn_blocking(move || {
                        Message::method_return(&call.header()).build(&*body)
                    })
                    .await
                    .expect("build task")
                    .expect("build the reply");
                    let built = started.elapsed();
                    let started = Instant::now();
                    let sent = connection.send(&reply).await;
                    let written = started.elapsed();
                    drop(reply);
                    {
                        let mut replies = replies.lock().expect("replies");
                        replies.built.push(built);
                        if sent.is_ok() {
                            replies.written.push(written);
                        }
                    }
                    // A call to the bus (`GetId`), queued behind the reply: its
                    // answer comes once dbus-daemon has read and routed the
                    // whole reply. The next reply is built only then, so nothing
                    // of the responder competes with the bus for the CPU
                    // while it reads one.
                    let pinged = connection
                        .call_method(
                            Some("org.freedesktop.DBus"),
                            "/org/freedesktop/DBus",
                            Some("org.freedesktop.DBus"),
                            "GetId",
                            &(),
                        )
                        .await;
                    if pinged.is_ok() {
                        replies
                            .lock()
                            .expect("replies")
                            .drained
                            .push(started.elapsed());
                    }
                    drop(_turn);
                });
            }
            "RegisterParent" => {
                let path = OwnedObjectPath::try_from("/org/mdevreg/Registry1/parent/rw_2dparent")
                    .expect("path");
                let reply = Message::method_return(&header).build(&path).expect("reply");
                let _ = connection.send(&reply).await;
            }
            "UnregisterParent" => {
                let reply = Message::method_return(&header).build(&()).expect("reply");
                let _ = connection.send(&reply).await;
            }
            other => {
                let _ = connection
                    .reply_dbus_error(
                        &header,
                        fdo::Error::UnknownMethod(format!("the bare reader has no {other}")),
                    )
                    .await;
            }
        }
    }
}
