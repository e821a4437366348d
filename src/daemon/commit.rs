//! [`Commit`]: everything one input changed, as the core hands it to the
//! sink — the registry events, which state files to write (and whether the
//! caller may only hear "ok" once they are written), the uevents to emit,
//! the reply to send, and what the loop does next.

use zbus::{Message, OwnedObjectPath};

use crate::dbus;
use crate::emit::MdevState;
use crate::model::{Lifetime, Parent};
use crate::registry::{Event, EventKind};

/// One input's outcome, carried out by [`super::sink::Sink::carry_out`] in
/// a fixed order: state files → uevents → signals and reply (one write) →
/// follow-ups.
#[derive(Debug, Default)]
pub struct Commit {
    /// Registry events, in sequence order (already applied).
    pub events: Vec<Event>,
    /// State files to rewrite (deduplicated).
    pub save: Vec<Lifetime>,
    /// A registration: if its state file cannot be written it is undone
    /// ([`super::core::Core::undo`]) and the caller gets an error.
    pub undo_unless_saved: Option<Undo>,
    /// Replies to method calls, sent after the signals.
    pub replies: Vec<PendingReply>,
    /// Unique names to forget in the server's caller cache.
    pub forget_callers: Vec<String>,
    /// After this commit, check whether this owner left the bus meanwhile
    /// ([`super::core::Core::owner_left_meanwhile`]).
    pub recheck_owner: Option<String>,
    /// A background rescan to start, for this reason.
    pub start_scan: Option<&'static str>,
}

/// How to take back a registration that could not be made durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undo {
    pub name: String,
    pub owner: String,
    /// The registrant's uid.
    pub uid: u32,
    /// The registration's sequence number (`registered_seqnum`): later
    /// commits may already have unregistered the name, or registered it
    /// again; only this registration is taken back.
    pub seqnum: u64,
    /// The state file it is kept in.
    pub lifetime: Lifetime,
}

/// A method call waiting for its answer.
#[derive(Debug)]
pub struct PendingReply {
    pub call: Message,
    pub result: Result<ReplyValue, dbus::Error>,
}

/// The value of a successful mutating call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyValue {
    /// `RegisterParent`: the new parent's object.
    Path(OwnedObjectPath),
    /// `UnregisterParent`, `Rescan`.
    Unit,
}

impl PendingReply {
    pub fn new(call: Message, result: Result<ReplyValue, dbus::Error>) -> PendingReply {
        PendingReply { call, result }
    }

    /// The reply message (none if the caller asked for none).
    pub fn message(self) -> Option<Message> {
        match self.result {
            Ok(ReplyValue::Path(path)) => dbus::reply_to(&self.call, Ok(path)),
            Ok(ReplyValue::Unit) => dbus::reply_to(&self.call, Ok(())),
            Err(err) => dbus::reply_to::<()>(&self.call, Err(err)),
        }
    }
}

impl Commit {
    /// A commit showing `events`, saving the state files they touch.
    pub fn of_events(events: Vec<Event>) -> Commit {
        let save = lifetimes_to_save(&events);
        Commit {
            events,
            save,
            ..Commit::default()
        }
    }

    /// Drops the events about the registration of `name` made by event
    /// `seqnum` (one that is being undone: the world never saw it, so it
    /// must not see it change or go either). Events of other registrations
    /// of that name (a waiting kernel parent taking it, a new
    /// registration) stay.
    pub fn forget_registration(&mut self, name: &str, seqnum: u64) {
        self.events
            .retain(|event| !is_about_registration(event, name, seqnum));
    }

    /// Whether carrying it out does nothing at all.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.save.is_empty()
            && self.replies.is_empty()
            && self.forget_callers.is_empty()
            && self.recheck_owner.is_none()
            && self.start_scan.is_none()
    }

    /// The uevents to emit: one per (un)registration (the sink skips
    /// kernel parents, whose uevent the kernel sent).
    pub fn transitions(&self) -> impl Iterator<Item = (&Parent, MdevState, u64)> {
        self.events.iter().filter_map(|event| match &event.kind {
            EventKind::ParentRegistered { parent } => {
                Some((parent, MdevState::Registered, event.seqnum))
            }
            EventKind::ParentUnregistered { parent } => {
                Some((parent, MdevState::Unregistered, event.seqnum))
            }
            _ => None,
        })
    }
}

/// The state files (by lifetime) whose registrations `events` change,
/// each once.
pub fn lifetimes_to_save(events: &[Event]) -> Vec<Lifetime> {
    let mut lifetimes: Vec<Lifetime> = events.iter().filter_map(userspace_lifetime).collect();
    lifetimes.sort_by_key(|lifetime| lifetime.as_str());
    lifetimes.dedup();
    lifetimes
}

/// Whether `event` shows the registration of `name` made by event `seqnum`
/// (its registration, an update or its unregistration).
pub fn is_about_registration(event: &Event, name: &str, seqnum: u64) -> bool {
    let parent = match &event.kind {
        EventKind::ParentRegistered { parent } | EventKind::ParentUnregistered { parent } => parent,
        EventKind::ParentUpdated { after, .. } => after,
        // Type events come only from sysfs re-reads: kernel parents.
        _ => return false,
    };
    parent.name() == name && parent.registered_seqnum == seqnum
}

/// The lifetime (state file) of the userspace registration `event`
/// changes; `None` if it changes no state file.
pub fn userspace_lifetime(event: &Event) -> Option<Lifetime> {
    let parent = match &event.kind {
        EventKind::ParentRegistered { parent } | EventKind::ParentUnregistered { parent } => parent,
        EventKind::ParentUpdated { after, .. } => after,
        _ => return None,
    };
    (parent.source == crate::model::Source::Userspace).then_some(parent.lifetime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ParentInfo, Source};

    fn registered(source: Source, lifetime: Lifetime, seqnum: u64) -> Event {
        Event {
            seqnum,
            kind: EventKind::ParentRegistered {
                parent: Parent {
                    info: ParentInfo {
                        name: format!("p{seqnum}"),
                        ..ParentInfo::default()
                    },
                    source,
                    owner: String::new(),
                    lifetime,
                    registered_seqnum: seqnum,
                    uid: 0,
                },
            },
        }
    }

    #[test]
    fn userspace_events_trigger_saves() {
        assert_eq!(
            userspace_lifetime(&registered(Source::Userspace, Lifetime::Persistent, 1)),
            Some(Lifetime::Persistent)
        );
        assert_eq!(
            userspace_lifetime(&registered(Source::Kernel, Lifetime::Kernel, 1)),
            None
        );
        let commit = Commit::of_events(vec![
            registered(Source::Userspace, Lifetime::Persistent, 1),
            registered(Source::Kernel, Lifetime::Kernel, 2),
            registered(Source::Userspace, Lifetime::Owner, 3),
            registered(Source::Userspace, Lifetime::Persistent, 4),
        ]);
        assert_eq!(commit.save, vec![Lifetime::Owner, Lifetime::Persistent]);
        assert_eq!(commit.transitions().count(), 4);
        assert!(Commit::default().is_empty());
    }

    #[test]
    fn replies_answer_their_call() {
        let call = Message::method_call("/org/mdevreg/Registry1", "RegisterParent")
            .build(&())
            .expect("call");
        let path = OwnedObjectPath::try_from("/org/mdevreg/Registry1/parent/p").expect("path");
        let ok = PendingReply::new(call.clone(), Ok(ReplyValue::Path(path)))
            .message()
            .expect("a reply");
        assert_eq!(ok.message_type(), zbus::message::Type::MethodReturn);
        let refused = PendingReply::new(call, Err(dbus::Error::NotOwner("not yours".to_owned())))
            .message()
            .expect("an error reply");
        assert_eq!(
            refused.header().error_name().map(|name| name.as_str()),
            Some("org.mdevreg.Registry1.Error.NotOwner")
        );
    }
}
