//! Readers see only what was shown: commits made by a real `Core`, held by
//! a real `SaveQueue` while their write is in flight, carried out (or undone)
//! as the event loop does it, with the writes told how they ended.

use std::collections::VecDeque;

use super::*;
use crate::daemon::commit::Commit;
use crate::daemon::core::Core;
use crate::daemon::saves::{Released, SaveQueue, Step, WriteId};
use crate::daemon::test_support::{core, failed, ok, register};
use crate::model::Lifetime;

fn push(queue: &mut SaveQueue, core: &Core, commit: Commit) -> Step {
    queue.push(commit, || core.registry())
}

/// What [`crate::daemon::event_loop`] does with a step: each released
/// commit is shown (the sink), or undone and the undo queued. Returns the
/// write started, if any.
fn carry(core: &mut Core, queue: &mut SaveQueue, shown: &Shown, step: Step) -> Option<WriteId> {
    let mut started = step.start.map(|write| write.id);
    let mut ready: VecDeque<Released> = step.ready.into();
    while let Some(Released { commit, failed, .. }) = ready.pop_front() {
        match failed {
            Some(err) if commit.undo_unless_saved.is_some() => {
                let undone = core.undo(commit, &err);
                let step = push(queue, core, undone);
                started = step.start.map(|write| write.id).or(started);
                ready.extend(step.ready);
            }
            _ => shown.show(&commit.events),
        }
    }
    started
}

fn seen(shown: &Shown) -> Vec<String> {
    shown
        .snapshot()
        .parents()
        .map(|parent| parent.name().to_owned())
        .collect()
}

/// Shown and applied agree once nothing is held (the sequence number
/// readers see stops at the last event shown: the events of an undone
/// registration never are).
fn assert_caught_up(core: &Core, shown: &Shown) {
    let (applied, shown) = (core.registry(), shown.snapshot());
    assert_eq!(
        applied.parents().collect::<Vec<_>>(),
        shown.parents().collect::<Vec<_>>()
    );
    assert!(shown.seqnum() <= applied.seqnum());
}

#[test]
fn readers_see_a_registration_only_once_its_state_is_durable() {
    let (mut core, _) = core();
    let mut queue = SaveQueue::new();
    let shown = Shown::new(&core.registry());
    let commit = register(&mut core, "a", ":1.1", Lifetime::Persistent);
    let step = push(&mut queue, &core, commit);
    carry(&mut core, &mut queue, &shown, step);
    // Applied (the next call is checked against it), not shown: its write
    // is in flight.
    assert!(core.registry().get("a").is_some());
    assert!(seen(&shown).is_empty(), "{:?}", seen(&shown));
    // A second one arrives meanwhile: it waits for the next write.
    let commit = register(&mut core, "b", ":1.2", Lifetime::Owner);
    let step = push(&mut queue, &core, commit);
    carry(&mut core, &mut queue, &shown, step);
    assert!(seen(&shown).is_empty());
    let step = queue.finished(ok(1));
    carry(&mut core, &mut queue, &shown, step);
    assert_eq!(seen(&shown), ["a"]);
    let step = queue.finished(ok(2));
    carry(&mut core, &mut queue, &shown, step);
    assert_eq!(seen(&shown), ["a", "b"]);
    assert!(queue.is_idle());
    assert_caught_up(&core, &shown);
    assert_eq!(shown.snapshot().seqnum(), core.registry().seqnum());
    // An unregistration is shown once durable too.
    let commit = core.unregister("a".to_owned(), ":1.1".to_owned(), 0, method_call());
    let step = push(&mut queue, &core, commit);
    carry(&mut core, &mut queue, &shown, step);
    assert_eq!(seen(&shown), ["a", "b"]);
    let step = queue.finished(ok(3));
    carry(&mut core, &mut queue, &shown, step);
    assert_eq!(seen(&shown), ["b"]);
    assert_caught_up(&core, &shown);
}

#[test]
fn readers_never_see_a_registration_that_could_not_be_saved() {
    let (mut core, _) = core();
    let mut queue = SaveQueue::new();
    let shown = Shown::new(&core.registry());
    let commit = register(&mut core, "p", ":1.1", Lifetime::Persistent);
    let step = push(&mut queue, &core, commit);
    carry(&mut core, &mut queue, &shown, step);
    // Its owner leaves while it is written, and another registration comes.
    let commit = core.owner_gone(":1.1".to_owned());
    let step = push(&mut queue, &core, commit);
    carry(&mut core, &mut queue, &shown, step);
    let commit = register(&mut core, "q", ":1.2", Lifetime::Persistent);
    let step = push(&mut queue, &core, commit);
    carry(&mut core, &mut queue, &shown, step);
    // The write fails: `p` is taken back.
    let step = queue.finished(failed(1, Lifetime::Persistent));
    let mut write = carry(&mut core, &mut queue, &shown, step);
    assert!(seen(&shown).is_empty(), "{:?}", seen(&shown));
    assert!(core.registry().get("p").is_none());
    // The next writes succeed: `q` shows, `p` never did.
    while let Some(id) = write {
        let step = queue.finished(ok(id));
        write = carry(&mut core, &mut queue, &shown, step);
        assert!(
            !seen(&shown).contains(&"p".to_owned()),
            "{:?}",
            seen(&shown)
        );
    }
    assert!(queue.is_idle());
    assert_eq!(seen(&shown), ["q"]);
    assert_caught_up(&core, &shown);
}

fn method_call() -> zbus::Message {
    crate::test_support::method_call("UnregisterParent")
}
