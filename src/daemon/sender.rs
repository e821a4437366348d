//! The sender: the one task that writes the loop's messages (signals and
//! replies) to the bus, first in, first out, so the loop never waits on the
//! bus socket.
//!
//! The socket is shared: while a large read-only reply is being written
//! (17 MiB for `GetManagedObjects` of a 1000 × 32 tree, which dbus-daemon
//! reads a few KiB per turn of its loop: a few hundred ms) every other
//! write to it waits. If the loop wrote its signals itself it would stop
//! for that long, and kernel uevents would pile up in its channel. The sink
//! hands each commit's messages here instead, in the order it carries the
//! commits out (state files durable → uevents → signals and reply), and
//! goes on; the order on the bus is the order of the queue. Messages that
//! are queued when the task gets to write are written together (one write
//! of the socket, one wake-up of the bus).
//!
//! The queue is bounded ([`QUEUE_DEPTH`] commits): a loop that outruns the
//! bus for that long waits for it, as it did before, instead of holding an
//! unbounded backlog in memory.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use zbus::{Connection, Message};

use crate::dbus::{signals, Server};

/// Commits whose messages may wait for the socket, at most.
pub const QUEUE_DEPTH: usize = 1024;

/// Messages written together at most (one `send_all`).
const BATCH_MAX: usize = 256;

/// One commit's messages.
struct Outgoing {
    messages: Vec<Message>,
    /// `RegisterParent`/`UnregisterParent` calls these messages answer
    /// (see [`crate::dbus::readers::WritersFirst`]): counted as answered
    /// once written.
    writes: usize,
    /// Told once everything queued before it is written.
    flushed: Option<oneshot::Sender<()>>,
}

/// The loop's side of the sender.
pub struct Sender {
    queue: mpsc::Sender<Outgoing>,
    task: JoinHandle<()>,
}

impl Sender {
    /// Starts the task writing to `connection`; writes it makes are
    /// reported to `server` (`None` in tests without one).
    pub fn start(connection: Connection, server: Option<Arc<Server>>) -> Sender {
        let (queue, receiver) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::spawn(write_all(connection, server, receiver));
        Sender { queue, task }
    }

    /// Queues `messages` (in order, after everything queued before);
    /// `writes` of them answer `RegisterParent`/`UnregisterParent`. Waits
    /// only while the queue is full.
    pub async fn send(&self, messages: Vec<Message>, writes: usize) {
        if messages.is_empty() && writes == 0 {
            return;
        }
        let outgoing = Outgoing {
            messages,
            writes,
            flushed: None,
        };
        if self.queue.send(outgoing).await.is_err() {
            log::warn!("the sender task is gone: messages dropped");
        }
    }

    /// Returns once everything queued so far is written (or could not be).
    pub async fn flush(&self) {
        let (flushed, written) = oneshot::channel();
        let marker = Outgoing {
            messages: Vec::new(),
            writes: 0,
            flushed: Some(flushed),
        };
        if self.queue.send(marker).await.is_ok() {
            let _ = written.await;
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The task: takes what is queued (up to [`BATCH_MAX`] commits), writes it
/// in one go, then tells who waits.
async fn write_all(
    connection: Connection,
    server: Option<Arc<Server>>,
    mut receiver: mpsc::Receiver<Outgoing>,
) {
    let mut batch = Vec::new();
    while receiver.recv_many(&mut batch, BATCH_MAX).await > 0 {
        let mut messages = Vec::new();
        let mut writes = 0;
        let mut flushed = Vec::new();
        for outgoing in batch.drain(..) {
            messages.extend(outgoing.messages);
            writes += outgoing.writes;
            flushed.extend(outgoing.flushed);
        }
        if !messages.is_empty() {
            signals::send(&connection, messages).await;
        }
        if let Some(server) = &server {
            server.writes_answered(writes);
        }
        for flushed in flushed {
            let _ = flushed.send(());
        }
    }
}
