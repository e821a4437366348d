//! The sink: carries a [`Commit`] out, always in the same order —
//!
//! 1. the state files it touches: written before the commit reaches the
//!    sink, on the state writer thread, grouped with the commits around it
//!    ([`super::saves`], [`super::writer`]); a registration that could not
//!    be made durable never reaches it (the core undoes it);
//! 2. one uevent per userspace (un)registration (injected or broadcast),
//!    and per vendor-VFIO (un)registration (a synthetic `change` written to
//!    the VF's `uevent` file, directly or by `mdevreg-uevent-writer`);
//! 3. the D-Bus signals showing its events, then the reply, in one write
//!    (a caller holding its reply has been sent every signal of it), by
//!    the [sender](super::sender) task, first in first out: the loop does
//!    not wait for the bus socket;
//! 4. follow-ups: forgotten callers, the [`CommitObserver`]s.
//!
//! Readers are answered from the [`Shown`] registry, which takes the
//! commit's events at step 3, before its signals are handed over: never a
//! registration whose state file is not durable.
//!
//! Nothing here decides anything; a new output is one more step here (or
//! an observer), fed by every commit.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::commit::Commit;
use super::counters::{Counter, Counters};
use super::sender::Sender;
use super::shown::Shown;
use super::writer;
use crate::boundary;
use crate::dbus::{signals, Server, SharedRegistry};
use crate::emit::{Emitted, MdevState, UeventSink};
use crate::model::{Backend, Lifetime, Parent, Source};
use crate::paths::SysfsRoot;
use crate::persist::StateStores;
use crate::registry::Registry;
use crate::synth_uevent;
use crate::uevent_writer;

/// Sees every commit once it is carried out (a metrics renderer, say),
/// with the registry as the commit left it.
pub trait CommitObserver: Send {
    fn committed(&mut self, registry: &Registry, commit: &Commit);
}

/// What the loop does after a commit.
#[derive(Debug, Default)]
pub struct FollowUp {
    /// Registry sequence numbers of injected uevents (their echo comes back).
    pub injected: Vec<u64>,
    /// See [`Commit::recheck_owner`].
    pub recheck_owner: Option<String>,
    /// See [`Commit::start_scan`].
    pub start_scan: Option<&'static str>,
}

/// Every output of the daemon.
pub struct Sink {
    /// Writes the signals and replies, in the order they are handed over.
    pub sender: Sender,
    pub registry: SharedRegistry,
    /// What readers see: each commit's events once it is carried out.
    pub shown: Shown,
    pub server: Arc<Server>,
    pub uevents: UeventSink,
    pub stores: StateStores,
    pub counters: Arc<Counters>,
    pub observers: Vec<Box<dyn CommitObserver>>,
    /// Where the synthetic uevents of vendor-VFIO parents are written, and
    /// userspace parents' locations checked again before each uevent
    /// ([`crate::boundary`]).
    pub sysfs_root: SysfsRoot,
    /// Where mdevreg-uevent-writer listens (`--uevent-writer`); `None`:
    /// the synthetic uevents are written directly.
    pub uevent_writer: Option<PathBuf>,
}

impl Sink {
    fn reg(&self) -> Arc<Registry> {
        crate::dbus::snapshot(&self.registry)
    }

    /// Carries `commit` out (see the module doc for the order), its state
    /// files already written. Its signals are built from `registry` (the
    /// registry as the commit left it, when it waited for a write and other
    /// commits changed the registry since), else from the current one.
    pub async fn carry_out(&mut self, commit: Commit, registry: Option<Arc<Registry>>) -> FollowUp {
        let mut follow_up = FollowUp {
            injected: Vec::new(),
            recheck_owner: None,
            start_scan: commit.start_scan,
        };
        for (parent, state, seqnum) in commit.transitions() {
            // One line per transition; a userspace parent's owner and
            // lifetime with it.
            if parent.source == Source::Userspace {
                log::info!(
                    "event {seqnum}: userspace parent {:?} {} (owner {}, lifetime {})",
                    parent.name(),
                    state.as_str(),
                    if parent.owner.is_empty() {
                        "none"
                    } else {
                        &parent.owner
                    },
                    parent.lifetime.as_str()
                );
            } else {
                log::info!(
                    "event {seqnum}: {} parent {:?} {}",
                    parent.source.as_str(),
                    parent.name(),
                    state.as_str()
                );
            }
            if parent.source == Source::Userspace {
                // Checked again: a device may have appeared there since.
                let location = boundary::check(
                    &self.sysfs_root,
                    &parent.info.devpath,
                    &parent.info.subsystem,
                );
                if let Err(crossing) = location {
                    self.counters.bump(Counter::UeventsRefusedBoundary);
                    log::warn!(
                        "not emitting the {} uevent of {:?}: {crossing}",
                        state.as_str(),
                        parent.name()
                    );
                    continue;
                }
            }
            if parent.source == Source::Kernel && parent.info.backend == Backend::NvidiaVfio {
                self.synthetic_uevent(parent, state).await;
                continue;
            }
            match self.uevents.emit(parent, state, seqnum) {
                Ok(Emitted::Injected) => {
                    self.counters.bump(Counter::UeventsInjected);
                    follow_up.injected.push(seqnum);
                }
                Ok(Emitted::Broadcast) => self.counters.bump(Counter::UeventsBroadcast),
                Ok(Emitted::Nothing) => {}
                Err(err) => {
                    self.counters.bump(Counter::UeventEmitFailures);
                    log::warn!(
                        "cannot emit the {} uevent of {:?}: {err}",
                        state.as_str(),
                        parent.name()
                    );
                }
            }
        }
        for event in &commit.events {
            self.counters.registry_event(&event.kind);
        }
        if let Some(last) = commit.events.last() {
            self.counters.show_seqnum(last.seqnum);
        }
        // Readers see it from now on (its state is durable, its uevents are
        // out, its signals are handed over next).
        self.shown.show(&commit.events);
        let mut messages = signals::build(&registry.unwrap_or_else(|| self.reg()), &commit.events);
        let mut commit = commit;
        let replied_ok =
            !commit.replies.is_empty() && commit.replies.iter().all(|reply| reply.result.is_ok());
        let mut writes = 0;
        for reply in std::mem::take(&mut commit.replies) {
            let write = reply
                .call
                .header()
                .member()
                .is_some_and(|member| crate::dbus::readers::is_write(member.as_str()));
            writes += usize::from(write);
            messages.extend(reply.message());
        }
        // Written by the sender task, in this order after what went before:
        // the loop goes on while the socket is busy (a large reply).
        self.sender.send(messages, writes).await;
        for caller in &commit.forget_callers {
            self.server.forget_caller(caller);
        }
        if replied_ok {
            follow_up.recheck_owner = commit.recheck_owner.take();
        }
        if !self.observers.is_empty() {
            let registry = self.reg();
            for observer in &mut self.observers {
                observer.committed(&registry, &commit);
            }
        }
        follow_up
    }

    /// A vendor-VFIO VF has no mdev core to announce it: writes the
    /// synthetic `change` to its own `uevent` file, so the event carries its
    /// kernel properties. A VF that is gone (its unregistration after
    /// `sriov_numvfs = 0`) has no file left: that is expected, not counted.
    /// With `--uevent-writer` the privileged writer does it (an async
    /// exchange on a local socket, bounded by
    /// [`uevent_writer::CLIENT_TIMEOUT`]: the loop's thread never blocks);
    /// else a direct write (a sysfs attribute: no wait).
    async fn synthetic_uevent(&self, parent: &Parent, state: MdevState) {
        let written = match &self.uevent_writer {
            Some(socket) => uevent_writer::request(socket, &parent.info.devpath, state).await,
            None => synth_uevent::write_change(&self.sysfs_root, &parent.info.devpath, state),
        };
        match written {
            Ok(uuid) => {
                self.counters.bump(Counter::UeventsSynthetic);
                log::debug!(
                    "wrote the synthetic {} uevent of {:?} (SYNTH_UUID={uuid})",
                    state.as_str(),
                    parent.name()
                );
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => log::debug!(
                "no synthetic {} uevent for {:?}: the device is gone",
                state.as_str(),
                parent.name()
            ),
            Err(err) => {
                self.counters.bump(Counter::UeventEmitFailures);
                // Under the shipped unit /sys is read-only
                // (ProtectKernelTunables=): say what opens these files.
                let hint = if err.raw_os_error() == Some(nix::libc::EROFS) {
                    "; /sys is read-only for mdevregd: start it with \
                     --uevent-writer (mdevreg-uevent-writer.socket)"
                } else {
                    ""
                };
                log::warn!(
                    "cannot write the synthetic {} uevent of {:?}: {err}{hint}",
                    state.as_str(),
                    parent.name()
                );
            }
        }
    }

    /// Returns once every signal and reply handed over so far is written
    /// (or could not be).
    pub async fn flush(&self) {
        self.sender.flush().await;
    }

    /// Writes both state files from the registry (at start and at exit,
    /// not while serving); a failure is logged and counted.
    pub fn save_all(&mut self) {
        let files = writer::records(&self.reg(), &[Lifetime::Owner, Lifetime::Persistent]);
        let outcomes = writer::write(&self.stores, files);
        for (_, result) in outcomes {
            if let Err(err) = result {
                self.counters.bump(Counter::StateSaveFailures);
                log::error!("cannot save state: {err}");
            }
        }
    }
}
