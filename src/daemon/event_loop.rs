//! The loop: a thin `select!` over the sources, each input handed to the
//! core and the resulting commits to the sink, in arrival order; plus the
//! vendor-VFIO poll timer, armed only while such parents exist (a poll
//! costs a look at the VFs' files, [`VendorWatch`]; the core re-reads and
//! compares parents, and a commit is made, only when one changed). A commit
//! that changes a state file waits in the [`SaveQueue`] until the
//! [state writer](super::writer) has made a write after it durable; the
//! loop goes on meanwhile.

use std::collections::VecDeque;
use std::future::Future;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zbus::fdo::DBusProxy;
use zbus::Connection;

use super::commit::Commit;
use super::core::Core;
use super::counters::Counter;
use super::poll_timer::PollTimer;
use super::saves::{Released, SaveQueue, Step, Write, Written};
use super::sink::Sink;
use super::sources::{self, SourceMessage};
use super::trim::IdleTrim;
use super::writer::StateWriter;
use super::DaemonError;
use crate::dbus::Request;
use crate::paths::SysfsRoot;
use crate::sysfs;
use crate::vendor_watch::VendorWatch;

pub struct EventLoop {
    pub core: Core,
    pub sink: Sink,
    pub sysfs_root: SysfsRoot,
    pub bus: DBusProxy<'static>,
    /// The background rescan running, if any.
    pub scan_job: Option<JoinHandle<sysfs::Scan>>,
    /// Ticks every `--poll-interval` while vendor-VFIO parents exist.
    pub poll_timer: PollTimer,
    /// What was seen of the vendor-VFIO parents' files.
    pub vendor_watch: VendorWatch,
    /// Commits waiting for their state files to be written.
    pub saves: SaveQueue,
    /// The thread writing them.
    pub writer: StateWriter,
}

impl EventLoop {
    pub async fn run(
        &mut self,
        connection: &Connection,
        mut requests: mpsc::Receiver<Request>,
        mut sources: mpsc::Receiver<SourceMessage>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DaemonError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut closed = std::pin::pin!(connection.closed());
        let mut idle_trim = IdleTrim::new();
        // The poll runs only while vendor-VFIO parents exist: a host
        // without any never wakes up for it.
        self.update_poll_timer();
        loop {
            // Not biased: preferring requests would leave kernel uevents
            // (our own echoes, under load) queued up to the channel depth,
            // and the netlink socket overflowing behind them.
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = &mut closed => return Err(DaemonError::BusLost),
                Some(request) = requests.recv() => {
                    self.request(request).await;
                    idle_trim.note_input();
                }
                Some(first) = sources.recv() => {
                    let mut batch = vec![first];
                    while let Ok(next) = sources.try_recv() {
                        batch.push(next);
                    }
                    let commits = self.core.sources(batch, &self.sysfs_root);
                    for commit in commits {
                        self.commit(commit).await;
                    }
                    idle_trim.note_input();
                }
                Some(written) = self.writer.done.recv() => {
                    self.written(written).await;
                    idle_trim.note_input();
                }
                scan = scan_done(&mut self.scan_job) => {
                    self.scan_job = None;
                    let scan = scan.map_err(|err| err.to_string());
                    let commit = self.core.scan_finished(scan, &self.sysfs_root);
                    self.commit(commit).await;
                    idle_trim.note_input();
                }
                tick = self.poll_timer.tick(), if self.poll_timer.is_armed() => {
                    match tick {
                        Ok(_) => self.poll().await,
                        Err(err) => {
                            log::error!("vendor-VFIO poll timer: {err}; polling stops");
                            let _ = self.poll_timer.disarm();
                        }
                    }
                }
                () = &mut idle_trim.timer, if idle_trim.armed => idle_trim.timer_fired(),
            }
            self.update_poll_timer();
        }
    }

    /// Arms the poll timer while vendor-VFIO parents exist, else disarms it.
    fn update_poll_timer(&mut self) {
        let wanted = self.core.has_vendor_parents();
        if wanted == self.poll_timer.is_armed() {
            return;
        }
        let result = if wanted {
            self.poll_timer.arm()
        } else {
            self.poll_timer.disarm()
        };
        if let Err(err) = result {
            log::error!("vendor-VFIO poll timer: {err}");
        }
    }

    /// One vendor-VFIO poll: a look at the files; a re-read, compare and
    /// commit only when one changed.
    async fn poll(&mut self) {
        self.sink.counters.bump(Counter::VendorPolls);
        if !self.vendor_watch.check(&self.core.registry()) {
            return;
        }
        let commit = self.core.poll(&self.sysfs_root);
        self.vendor_watch.accept(&self.core.registry());
        if !commit.is_empty() {
            self.commit(commit).await;
        }
    }

    /// A mutating call: the core decides, the sink carries it out and
    /// replies.
    async fn request(&mut self, request: Request) {
        let commit = match request {
            Request::Register {
                registration,
                owner,
                uid,
                call,
            } => self
                .core
                .register(registration, owner, uid, call, &self.sysfs_root),
            Request::Unregister {
                name,
                caller,
                uid,
                call,
            } => self.core.unregister(name, caller, uid, call),
            Request::Rescan { call } => Commit {
                start_scan: self.core.rescan_call(call),
                ..Commit::default()
            },
        };
        self.commit(commit).await;
    }

    /// Carries `commit` out once its state files are written (at once if
    /// it saves nothing and nothing waits), then what follows from it (an
    /// undo if they could not be, an owner that left meanwhile, a rescan to
    /// start).
    pub async fn commit(&mut self, commit: Commit) {
        let core = &self.core;
        let step = self.saves.push(commit, || core.registry());
        self.carry(step).await;
    }

    /// A write of the state files ended.
    async fn written(&mut self, written: Written) {
        for (lifetime, err) in &written.failed {
            self.sink.counters.bump(super::Counter::StateSaveFailures);
            log::error!("cannot save the {} state: {err}", lifetime.as_str());
        }
        let step = self.saves.finished(written);
        self.carry(step).await;
    }

    /// Answers every caller waiting for a write: waits for the writes in
    /// flight and those they start (at start-up and on the way out).
    pub async fn settle(&mut self) {
        while !self.saves.is_idle() {
            match self.writer.done.recv().await {
                Some(written) => self.written(written).await,
                None => {
                    log::error!(
                        "the state writer is gone; {} commits not carried out",
                        self.saves.held()
                    );
                    return;
                }
            }
        }
    }

    /// Carries out what `step` released, in order, and starts its write.
    async fn carry(&mut self, step: Step) {
        let mut ready: VecDeque<Released> = step.ready.into();
        self.start_write(step.start);
        while let Some(Released {
            commit,
            failed,
            registry,
        }) = ready.pop_front()
        {
            let next = match failed {
                Some(err) if commit.undo_unless_saved.is_some() => {
                    Some(self.core.undo(commit, &err))
                }
                _ => {
                    let follow_up = self.sink.carry_out(commit, registry).await;
                    self.core.expect_echoes(follow_up.injected);
                    if follow_up.start_scan.is_some() && self.scan_job.is_none() {
                        self.scan_job = Some(sources::spawn_scan(&self.sysfs_root));
                    }
                    follow_up
                        .recheck_owner
                        .and_then(|owner| self.core.owner_left_meanwhile(owner))
                }
            };
            if let Some(next) = next {
                let core = &self.core;
                let step = self.saves.push(next, || core.registry());
                ready.extend(step.ready);
                self.start_write(step.start);
            }
        }
    }

    fn start_write(&self, write: Option<Write>) {
        if let Some(write) = write {
            self.writer.start_write(write, &self.core.registry());
        }
    }

    /// Re-adopts restored registrations whose owner is still connected;
    /// the others go through the normal "owner gone" path.
    pub async fn check_restored_owners(&mut self) {
        for owner in self.core.userspace_owners() {
            let present = match zbus::names::BusName::try_from(owner.as_str()) {
                Ok(name) => match self.bus.name_has_owner(name).await {
                    Ok(present) => present,
                    Err(err) => {
                        log::warn!("cannot ask the bus about {owner}: {err}; keeping it");
                        true
                    }
                },
                Err(_) => false,
            };
            if present {
                log::info!("re-adopted the registrations of {owner}, still on the bus");
            } else {
                log::info!("owner {owner} of restored registrations has left the bus");
                let commit = self.core.owner_gone(owner);
                self.commit(commit).await;
            }
        }
    }
}

/// The background scan's result, once it has one (never without one).
async fn scan_done(
    job: &mut Option<JoinHandle<sysfs::Scan>>,
) -> Result<sysfs::Scan, tokio::task::JoinError> {
    match job.as_mut() {
        Some(job) => job.await,
        None => std::future::pending().await,
    }
}
