//! The daemon's `ParentRegistered` / `ParentUnregistered` signals as a test
//! sees them: a subscription with a queue that never stalls the connection,
//! decoding, and waiting for the next one.

use std::time::Duration;

use zbus::{Connection, OwnedObjectPath};

use super::registry_client::{REGISTRY_IFACE, ROOT_PATH};

/// One `ParentRegistered` or `ParentUnregistered` signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrySignal {
    /// `ParentRegistered` or `ParentUnregistered`.
    pub member: String,
    pub name: String,
    pub source: String,
    pub seqnum: u64,
}

/// A stream of the daemon's `Registry1` signals on `connection`, in bus
/// order, with a queue large enough never to stall the connection.
pub async fn registry_signals(connection: &Connection) -> zbus::MessageStream {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(REGISTRY_IFACE)
        .path(ROOT_PATH)
        .build()
        .expect("match rule");
    zbus::MessageStream::for_match_rule(rule, connection, std::num::NonZeroUsize::new(1 << 20))
        .await
        .expect("subscribe to Registry1 signals")
}

/// Decodes a registry signal; `None` for other messages.
pub fn decode_signal(message: &zbus::Message) -> Option<RegistrySignal> {
    let header = message.header();
    let member = header.member()?.as_str().to_owned();
    if member != "ParentRegistered" && member != "ParentUnregistered" {
        return None;
    }
    let (_path, name, source, seqnum): (OwnedObjectPath, String, String, u64) =
        message.body().deserialize().ok()?;
    Some(RegistrySignal {
        member,
        name,
        source,
        seqnum,
    })
}

/// The next registry signal within `timeout`.
pub async fn next_signal(
    stream: &mut zbus::MessageStream,
    timeout: Duration,
) -> Option<RegistrySignal> {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let message = tokio::time::timeout_at(deadline, stream.next())
            .await
            .ok()??
            .ok()?;
        if let Some(signal) = decode_signal(&message) {
            return Some(signal);
        }
    }
}
