//! Grouped state saves, the bookkeeping (no I/O): which commits wait for
//! which write of the state files, and what to do when a write ends.
//!
//! A commit that changes a state file is shown (uevents, signals, reply)
//! only once a write started after it is durable. One write is in flight
//! at a time, on the [writer thread](super::writer); the commits that
//! arrive meanwhile all go into the next write, which covers every state
//! file they touch — one write per file for the whole group, however many
//! registrations it holds. Commits are shown in the order they were made:
//! one that saves nothing but arrives behind a waiting one waits too.
//!
//! A write that fails fails the registrations waiting for it
//! ([`Released::failed`]); the loop has the core undo each
//! ([`super::core::Core::undo`]). Commits behind a failed registration may
//! already show more of it (its owner left, it was unregistered): those
//! events are dropped here before anything of the group is shown, so the
//! world never hears of a registration that was undone.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use super::commit::Commit;
use crate::model::Lifetime;
use crate::registry::{EventKind, Registry};

/// Numbers the writes, from 1.
pub type WriteId = u64;

/// A write of the state files to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub id: WriteId,
    /// The state files it rewrites (each once).
    pub lifetimes: Vec<Lifetime>,
}

/// How a write ended: the state files that could not be written.
#[derive(Debug, Default)]
pub struct Written {
    pub id: WriteId,
    pub failed: Vec<(Lifetime, Arc<io::Error>)>,
}

/// A commit free to be carried out.
#[derive(Debug)]
pub struct Released {
    pub commit: Commit,
    /// Its state file could not be written (a registration is to be
    /// undone; anything else is shown anyway, as the registry has it).
    pub failed: Option<Arc<io::Error>>,
    /// The registry as the commit left it, when it waited and its signals
    /// read the registry (type events); `None`: the current one.
    pub registry: Option<Arc<Registry>>,
}

/// What the loop does next: carry these out, in order, and start this write.
#[derive(Debug, Default)]
pub struct Step {
    pub ready: Vec<Released>,
    pub start: Option<Write>,
}

/// A commit waiting.
#[derive(Debug)]
struct Held {
    commit: Commit,
    /// The write after which it is durable (`None`: it saves nothing).
    write: Option<WriteId>,
    registry: Option<Arc<Registry>>,
}

/// The commits waiting for a write, and the writes.
#[derive(Debug, Default)]
pub struct SaveQueue {
    held: VecDeque<Held>,
    /// The write in flight.
    in_flight: Option<WriteId>,
    /// State files the next write covers.
    next: Vec<Lifetime>,
    /// The id of the last write started.
    last_id: WriteId,
}

impl SaveQueue {
    pub fn new() -> SaveQueue {
        SaveQueue::default()
    }

    /// Nothing waits and no write is in flight.
    pub fn is_idle(&self) -> bool {
        self.held.is_empty() && self.in_flight.is_none()
    }

    /// Commits waiting.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// A new commit. `registry` gives the registry as of now (taken only if
    /// the commit must wait and its signals read the registry).
    pub fn push(&mut self, commit: Commit, registry: impl FnOnce() -> Arc<Registry>) -> Step {
        if commit.save.is_empty() && self.held.is_empty() {
            return Step {
                ready: vec![Released {
                    commit,
                    failed: None,
                    registry: None,
                }],
                start: None,
            };
        }
        let write = (!commit.save.is_empty()).then(|| {
            for lifetime in &commit.save {
                if !self.next.contains(lifetime) {
                    self.next.push(*lifetime);
                }
            }
            self.last_id + 1
        });
        let reads_registry = commit.events.iter().any(|event| {
            matches!(
                event.kind,
                EventKind::TypeAdded { .. }
                    | EventKind::TypeRemoved { .. }
                    | EventKind::TypeUpdated { .. }
            )
        });
        self.held.push_back(Held {
            commit,
            write,
            registry: reads_registry.then(registry),
        });
        Step {
            ready: Vec::new(),
            start: self.start_next(),
        }
    }

    /// State files to write again without a commit waiting for them (after
    /// an undo): in the next write.
    pub fn rewrite(&mut self, lifetimes: &[Lifetime]) -> Option<Write> {
        for lifetime in lifetimes {
            if !self.next.contains(lifetime) {
                self.next.push(*lifetime);
            }
        }
        self.start_next()
    }

    /// The write in flight ended: the commits it made durable (and those
    /// behind them that save nothing) are released, in order; the next
    /// write starts if commits wait for it.
    pub fn finished(&mut self, written: Written) -> Step {
        if self.in_flight == Some(written.id) {
            self.in_flight = None;
        }
        let mut ready = Vec::new();
        while let Some(front) = self.held.front() {
            if front.write.is_some_and(|id| id > written.id) {
                break;
            }
            let Some(held) = self.held.pop_front() else {
                break;
            };
            let failed = written
                .failed
                .iter()
                .find(|(lifetime, _)| held.write.is_some() && held.commit.save.contains(lifetime))
                .map(|(_, err)| Arc::clone(err));
            ready.push(Released {
                commit: held.commit,
                failed,
                registry: held.registry,
            });
        }
        // Undone registrations must not show in what follows them.
        for index in 0..ready.len() {
            let undone = match (&ready[index].failed, &ready[index].commit.undo_unless_saved) {
                (Some(_), Some(undo)) => (undo.name.clone(), undo.seqnum),
                _ => continue,
            };
            let later = ready[index + 1..]
                .iter_mut()
                .map(|released| &mut released.commit)
                .chain(self.held.iter_mut().map(|held| &mut held.commit));
            for commit in later {
                commit.forget_registration(&undone.0, undone.1);
            }
        }
        Step {
            ready,
            start: self.start_next(),
        }
    }

    fn start_next(&mut self) -> Option<Write> {
        if self.in_flight.is_some() || self.next.is_empty() {
            return None;
        }
        self.last_id += 1;
        self.in_flight = Some(self.last_id);
        let mut lifetimes = std::mem::take(&mut self.next);
        lifetimes.sort_by_key(|lifetime| lifetime.as_str());
        Some(Write {
            id: self.last_id,
            lifetimes,
        })
    }
}

#[cfg(test)]
mod tests;
