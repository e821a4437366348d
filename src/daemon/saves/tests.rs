//! The grouping of state saves and what a failed write does, without a
//! file or a thread: commits are made by a real `Core` on a registry in
//! memory, the writes are told how they ended.

use std::cell::Cell;

use super::*;
use crate::daemon::commit::Undo;
use crate::daemon::test_support::{core, failed, ok, register};
use crate::model::Lifetime;
use crate::registry::Event;
use crate::test_support::{method_call, user_registration};

/// `push` with a registry that must not be asked for (no type events).
fn push(queue: &mut SaveQueue, commit: Commit) -> Step {
    queue.push(commit, || {
        panic!("the registry is read only for type events")
    })
}

/// (kind, parent name) of each event.
fn shown(commit: &Commit) -> Vec<(&'static str, String)> {
    commit
        .events
        .iter()
        .map(|Event { kind, .. }| match kind {
            EventKind::ParentRegistered { parent } => ("registered", parent.name().to_owned()),
            EventKind::ParentUnregistered { parent } => ("unregistered", parent.name().to_owned()),
            EventKind::ParentUpdated { after, .. } => ("updated", after.name().to_owned()),
            EventKind::TypeAdded { parent, .. }
            | EventKind::TypeRemoved { parent, .. }
            | EventKind::TypeUpdated { parent, .. } => ("type", parent.clone()),
        })
        .collect()
}

fn names_of(ready: &[Released]) -> Vec<Vec<(&'static str, String)>> {
    ready
        .iter()
        .map(|released| shown(&released.commit))
        .collect()
}

#[test]
fn a_commit_saving_nothing_passes_at_once_when_nothing_waits() {
    let mut queue = SaveQueue::new();
    let commit = Commit {
        forget_callers: vec![":1.9".to_owned()],
        ..Commit::default()
    };
    let step = push(&mut queue, commit);
    assert_eq!(step.ready.len(), 1);
    assert!(step.start.is_none());
    assert!(queue.is_idle());
}

#[test]
fn registrations_arriving_during_a_write_share_the_next_one() {
    let (mut core, _) = core();
    let mut queue = SaveQueue::new();
    // The first starts a write at once.
    let step = push(
        &mut queue,
        register(&mut core, "a", ":1.1", Lifetime::Owner),
    );
    assert!(step.ready.is_empty(), "not shown before it is durable");
    assert_eq!(
        step.start,
        Some(Write {
            id: 1,
            lifetimes: vec![Lifetime::Owner]
        })
    );
    // Four more while it is in flight: no write of their own.
    for (name, lifetime) in [
        ("b", Lifetime::Owner),
        ("c", Lifetime::Persistent),
        ("d", Lifetime::Owner),
    ] {
        let step = push(&mut queue, register(&mut core, name, ":1.2", lifetime));
        assert!(step.ready.is_empty() && step.start.is_none());
    }
    let unregistered = core.unregister("a".to_owned(), ":1.1".to_owned(), 0, method_call("U"));
    let step = push(&mut queue, unregistered);
    assert!(step.ready.is_empty() && step.start.is_none());
    // Saving nothing, but behind them: it waits too, to keep the order.
    let step = push(
        &mut queue,
        Commit {
            forget_callers: vec![":1.9".to_owned()],
            ..Commit::default()
        },
    );
    assert!(step.ready.is_empty() && step.start.is_none());
    assert_eq!(queue.held(), 6);

    // The first write is durable: only the first registration is shown;
    // one write for the four others, covering both files.
    let step = queue.finished(ok(1));
    assert_eq!(
        names_of(&step.ready),
        [vec![("registered", "a".to_owned())]]
    );
    assert!(step.ready[0].failed.is_none());
    assert_eq!(
        step.start,
        Some(Write {
            id: 2,
            lifetimes: vec![Lifetime::Owner, Lifetime::Persistent]
        })
    );
    let step = queue.finished(ok(2));
    assert_eq!(
        names_of(&step.ready),
        [
            vec![("registered", "b".to_owned())],
            vec![("registered", "c".to_owned())],
            vec![("registered", "d".to_owned())],
            vec![("unregistered", "a".to_owned())],
            vec![],
        ]
    );
    assert!(step.ready.iter().all(|released| released.failed.is_none()));
    assert!(step.start.is_none());
    assert!(queue.is_idle());
}

#[test]
fn a_failed_write_fails_only_the_registrations_of_that_file() {
    let (mut core, _) = core();
    let mut queue = SaveQueue::new();
    let first = push(
        &mut queue,
        register(&mut core, "a", ":1.1", Lifetime::Owner),
    );
    assert_eq!(first.start.map(|write| write.id), Some(1));
    push(
        &mut queue,
        register(&mut core, "keep", ":1.2", Lifetime::Persistent),
    );
    push(
        &mut queue,
        register(&mut core, "own", ":1.2", Lifetime::Owner),
    );
    assert_eq!(queue.finished(ok(1)).ready.len(), 1);
    let step = queue.finished(failed(2, Lifetime::Persistent));
    let outcome: Vec<(String, bool)> = step
        .ready
        .iter()
        .map(|released| {
            (
                shown(&released.commit)[0].1.clone(),
                released.failed.is_some(),
            )
        })
        .collect();
    assert_eq!(
        outcome,
        [("keep".to_owned(), true), ("own".to_owned(), false)]
    );
}

#[test]
fn an_undone_registration_is_not_shown_by_the_commits_behind_it() {
    let (mut core, _) = core();
    let mut queue = SaveQueue::new();
    // A persistent registration whose write will fail...
    let registered = register(&mut core, "p", ":1.1", Lifetime::Persistent);
    let seqnum = registered.events[0].seqnum;
    assert_eq!(
        registered.undo_unless_saved,
        Some(Undo {
            name: "p".to_owned(),
            owner: ":1.1".to_owned(),
            uid: 0,
            seqnum,
            lifetime: Lifetime::Persistent,
        })
    );
    let step = push(&mut queue, registered);
    assert_eq!(step.start.map(|write| write.id), Some(1));
    // ...and, while it is written, its owner leaves (it loses its owner),
    // then root unregisters it, then registers the name again.
    let gone = core.owner_gone(":1.1".to_owned());
    assert_eq!(shown(&gone), [("updated", "p".to_owned())]);
    push(&mut queue, gone);
    let unregistered = core.unregister("p".to_owned(), ":1.5".to_owned(), 0, method_call("U"));
    push(&mut queue, unregistered);
    let again = register(&mut core, "p", ":1.6", Lifetime::Owner);
    push(&mut queue, again);
    assert_eq!(queue.held(), 4);

    let step = queue.finished(failed(1, Lifetime::Persistent));
    assert_eq!(step.ready.len(), 1);
    assert!(step.ready[0].failed.is_some());
    // The next write (theirs) has started; what they show of the undone
    // registration is gone, the new registration stays.
    assert_eq!(step.start.map(|write| write.id), Some(2));
    let Released { commit, failed, .. } = step.ready.into_iter().next().expect("released");
    let err = failed.expect("failed");
    let undone = core.undo(commit, &err);
    // The registry no longer holds that registration: nothing to remove,
    // nothing to show; the state file is written again; the caller hears.
    assert!(undone.events.is_empty(), "{:?}", shown(&undone));
    assert_eq!(undone.save, [Lifetime::Persistent]);
    assert!(matches!(
        undone.replies.first().map(|reply| &reply.result),
        Some(Err(_))
    ));
    push(&mut queue, undone);
    let step = queue.finished(ok(2));
    assert_eq!(
        names_of(&step.ready),
        [vec![], vec![], vec![("registered", "p".to_owned())]]
    );
    // The undo's rewrite, then its error reply.
    assert_eq!(step.start.map(|write| write.id), Some(3));
    let step = queue.finished(ok(3));
    assert_eq!(step.ready.len(), 1);
    assert!(step.ready[0].commit.replies[0].result.is_err());
    assert!(queue.is_idle());
    let registry = core.registry();
    let parent = registry.get("p").expect("the new registration stays");
    assert_eq!(parent.owner, ":1.6");
}

#[test]
fn an_undone_registration_still_held_is_removed_without_a_trace() {
    let (mut core, _) = core();
    let mut queue = SaveQueue::new();
    push(
        &mut queue,
        register(&mut core, "p", ":1.1", Lifetime::Persistent),
    );
    // Its owner leaves while it is written: the update is dropped with it.
    push(&mut queue, core.owner_gone(":1.1".to_owned()));
    let step = queue.finished(failed(1, Lifetime::Persistent));
    let mut ready = step.ready.into_iter();
    let first = ready.next().expect("released");
    let undone = core.undo(first.commit, &first.failed.expect("failed"));
    assert!(undone.events.is_empty(), "{:?}", shown(&undone));
    assert!(core.registry().get("p").is_none());
    let step = queue.finished(ok(2));
    assert_eq!(names_of(&step.ready), [Vec::new()]);
    // Carried out like any commit; the loop pushes the undo next.
    let step = push(&mut queue, undone);
    assert!(step.start.is_some());
}

#[test]
fn a_waiting_commit_with_type_events_keeps_the_registry_it_left() {
    let (mut core, _) = core();
    let mut queue = SaveQueue::new();
    push(
        &mut queue,
        register(&mut core, "a", ":1.1", Lifetime::Owner),
    );
    let asked = Cell::new(0);
    let types = Commit::of_events(vec![Event {
        seqnum: 99,
        kind: EventKind::TypeRemoved {
            parent: "k".to_owned(),
            mdev_type: user_registration("k", Lifetime::Owner).info.types[0].clone(),
        },
    }]);
    queue.push(types, || {
        asked.set(asked.get() + 1);
        core.registry()
    });
    assert_eq!(asked.get(), 1);
    let step = queue.finished(ok(1));
    assert_eq!(step.ready.len(), 2);
    assert!(step.ready[0].registry.is_none());
    assert!(step.ready[1].registry.is_some());
}
