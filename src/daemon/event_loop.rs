//! The loop: a thin `select!` over the sources, each input handed to the
//! core and the resulting commits to the sink, in arrival order; plus the
//! vendor-VFIO poll timer, armed only while such parents exist. A poll
//! costs a look at the VFs' files ([`VendorWatch`]); the core re-reads and
//! compares parents, and a commit is carried out, only when one changed.

use std::future::Future;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zbus::fdo::DBusProxy;
use zbus::Connection;

use super::commit::Commit;
use super::core::Core;
use super::counters::Counter;
use super::poll_timer::PollTimer;
use super::sink::{Carried, Sink};
use super::sources::{self, SourceMessage};
use super::trim::IdleTrim;
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
                scan = async {
                    match self.scan_job.as_mut() {
                        Some(job) => job.await,
                        None => std::future::pending().await,
                    }
                } => {
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

    /// Carries `commit` out, then what follows from it (an undo, an owner
    /// that left meanwhile, a rescan to start).
    pub async fn commit(&mut self, commit: Commit) {
        let mut next = Some(commit);
        while let Some(commit) = next.take() {
            match self.sink.carry_out(commit).await {
                Carried::NotDurable(commit, err) => next = Some(self.core.undo(commit, &err)),
                Carried::Done(follow_up) => {
                    self.core.expect_echoes(follow_up.injected);
                    if follow_up.start_scan.is_some() && self.scan_job.is_none() {
                        self.scan_job = Some(sources::spawn_scan(&self.sysfs_root));
                    }
                    if let Some(owner) = follow_up.recheck_owner {
                        next = self.core.owner_left_meanwhile(owner);
                    }
                }
            }
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
