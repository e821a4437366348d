//! The daemon's core: no sockets, no files, no bus. It owns the registry's
//! write side and the bookkeeping around it — injected events whose echo
//! is awaited, owners seen leaving the bus, the background scan and the
//! devpaths re-read while it runs — and turns each input into one
//! [`Commit`] for the sink. Sysfs is read only through [`ParentReader`],
//! so tests hand it a map.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::io;
use std::sync::Arc;

use zbus::Message;

use super::commit::{Commit, PendingReply, ReplyValue, Undo};
use super::counters::{Counter, Counters};
use super::sources::{Hint, SourceMessage};
use crate::boundary::{self, Crossing};
use crate::dbus::{self, validate, SharedRegistry};
use crate::model::{Backend, ParentInfo, Source};
use crate::nvidia_vfio::{self, Polled};
use crate::paths::SysfsRoot;
use crate::registry::{Event, EventKind, Input, Registry};
use crate::sysfs::{self, ParentRead, Scan};

/// Injected events whose echo is awaited, at most; older ones are forgotten.
pub const MAX_PENDING_ECHOES: usize = 4096;

/// Reads one parent by devpath (sysfs in the daemon, a map in tests), and
/// the NVIDIA vendor-VFIO parents, which are always read together.
pub trait ParentReader {
    fn read_parent(&self, devpath: &str) -> ParentRead;

    /// Whether a userspace parent at `devpath` with `subsystem` would cross
    /// into the kernel's devices ([`crate::boundary`]).
    fn check_location(&self, devpath: &str, subsystem: &str) -> Result<(), Crossing>;

    /// Every vendor-VFIO parent now, or `None` when this reader cannot say
    /// (then nothing about them changes).
    fn vendor_parents(&self) -> Option<Vec<ParentInfo>> {
        None
    }

    /// Whether a uevent about the PCI device at `devpath` can concern a
    /// vendor-VFIO parent while none is registered (else the vendor-VFIO
    /// parents are not re-read for it); a reader that cannot tell says yes.
    fn may_concern_vendor_parents(&self, _devpath: &str) -> bool {
        true
    }

    /// The two-file check of the `known` vendor-VFIO parents
    /// ([`nvidia_vfio::poll`]), one result each.
    fn vendor_poll(&self, known: &[&ParentInfo]) -> Vec<Polled> {
        vec![Polled::Unchanged; known.len()]
    }
}

impl ParentReader for SysfsRoot {
    fn read_parent(&self, devpath: &str) -> ParentRead {
        sysfs::read_parent(self, devpath)
    }

    fn check_location(&self, devpath: &str, subsystem: &str) -> Result<(), Crossing> {
        boundary::check(self, devpath, subsystem)
    }

    fn vendor_parents(&self) -> Option<Vec<ParentInfo>> {
        let (parents, warnings) = nvidia_vfio::scan_root(self);
        log_warnings(&warnings);
        Some(parents)
    }

    fn may_concern_vendor_parents(&self, devpath: &str) -> bool {
        self.devpath_to_path(devpath)
            .is_some_and(|dir| nvidia_vfio::may_concern_vfs(&dir))
    }

    fn vendor_poll(&self, known: &[&ParentInfo]) -> Vec<Polled> {
        let mut warnings = Vec::new();
        let polled = nvidia_vfio::poll(self, known, &mut warnings);
        // Every interval: the same problems would flood the journal. They
        // were logged as warnings by the scan that found the parent.
        for warning in warnings {
            log::debug!("sysfs: {warning}");
        }
        polled
    }
}

/// Whether `devpath` names a PCI device (`.../0000:41:00.4`): a uevent
/// about one may concern a vendor-VFIO VF or its PF.
pub fn is_pci_devpath(devpath: &str) -> bool {
    let name = crate::paths::devpath_name(devpath).as_bytes();
    // DDDD:BB:DD.F
    name.len() == 12
        && name[4] == b':'
        && name[7] == b':'
        && name[10] == b'.'
        && name
            .iter()
            .enumerate()
            .all(|(i, b)| matches!(i, 4 | 7 | 10) || b.is_ascii_hexdigit())
}

/// The registry's only writer and the state around it.
pub struct Core {
    /// Shared with the D-Bus server, which only reads it.
    registry: SharedRegistry,
    counters: Arc<Counters>,
    pending_echoes: PendingEchoes,
    gone_owners: GoneOwners,
    scan: ScanBook,
}

/// The background rescan, as the core sees it.
#[derive(Debug, Default)]
struct ScanBook {
    /// A scan runs.
    running: bool,
    /// Devpaths re-read while it runs.
    touched: BTreeSet<String>,
    /// `Rescan()` calls it answers.
    calls: Vec<Message>,
    /// Another rescan was asked for meanwhile.
    again: Option<&'static str>,
    /// `Rescan()` calls that came while it ran: the next scan answers them
    /// (this one may have read sysfs before the caller changed it).
    calls_next: Vec<Message>,
}

impl Core {
    pub fn new(registry: SharedRegistry, counters: Arc<Counters>) -> Core {
        Core {
            registry,
            counters,
            pending_echoes: PendingEchoes::default(),
            gone_owners: GoneOwners::default(),
            scan: ScanBook::default(),
        }
    }

    /// The registry as of now.
    pub fn registry(&self) -> Arc<Registry> {
        dbus::snapshot(&self.registry)
    }

    /// Applies `input` to the registry (the only writer). Readers keep the
    /// snapshot they hold; the parent map is copied only if one does.
    fn apply(&self, input: Input) -> Result<Vec<Event>, crate::registry::Error> {
        let mut shared = self
            .registry
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::make_mut(&mut shared).apply(input)
    }

    /// Loads the first scan, before anything is served: no commit (the
    /// tree is built from it, no signals). One parent at a time, so the
    /// events (each holding a copy of its parent) are dropped as they come
    /// instead of doubling the peak.
    pub fn load_initial(&mut self, scan: Scan) {
        // The registry holds no kernel parents yet: nothing can be gone.
        for info in scan.parents {
            let events = self.apply(Input::KernelParent {
                devpath: info.devpath.clone(),
                info: Some(info),
            });
            for event in events.iter().flatten() {
                self.counters.registry_event(&event.kind);
            }
        }
    }

    /// `RegisterParent` from `owner` (of `uid`): its location checked
    /// against sysfs (for every caller), then applied at once; the caller
    /// is told once the state file is written (else [`Core::undo`]).
    pub fn register(
        &mut self,
        registration: validate::Registration,
        owner: String,
        uid: u32,
        call: Message,
        reader: &dyn ParentReader,
    ) -> Commit {
        let name = registration.info.name.clone();
        let lifetime = registration.lifetime;
        if let Err(crossing) =
            reader.check_location(&registration.info.devpath, &registration.info.subsystem)
        {
            log::info!("RegisterParent {name:?} from {owner} refused: {crossing}");
            return refused(call, dbus::Error::InvalidArgument(crossing.to_string()));
        }
        let input = Input::Register {
            info: registration.info,
            owner: owner.clone(),
            lifetime,
            uid,
        };
        match self.apply(input) {
            Ok(events) => {
                // The info line is the sink's, once the registration is
                // durable and shown (one line per transition).
                log::debug!(
                    "registered userspace parent {name:?} for {owner} (lifetime {})",
                    lifetime.as_str()
                );
                let registered = events.iter().find_map(|event| match &event.kind {
                    EventKind::ParentRegistered { parent } if parent.name() == name => {
                        Some((parent.registered_seqnum, parent.lifetime))
                    }
                    _ => None,
                });
                let (seqnum, lifetime) = registered.unwrap_or((0, lifetime));
                Commit {
                    events,
                    save: vec![lifetime],
                    undo_unless_saved: Some(Undo {
                        name: name.clone(),
                        owner: owner.clone(),
                        uid,
                        seqnum,
                        lifetime,
                    }),
                    replies: vec![PendingReply::new(
                        call,
                        Ok(ReplyValue::Path(dbus::parent_object_path(&name))),
                    )],
                    // The registrant may have left between its call and
                    // now; its NameOwnerChanged then found nothing.
                    recheck_owner: Some(owner),
                    ..Commit::default()
                }
            }
            Err(err) => {
                log::info!("RegisterParent from {owner} refused: {err}");
                refused(call, dbus::Error::from(err))
            }
        }
    }

    /// Takes back a registration whose state file could not be written:
    /// its events are never shown, the caller gets an error. Later commits
    /// may already have touched the name (they were held behind this one,
    /// and the sink dropped their events about this registration,
    /// [`Commit::forget_registration`]): it is removed only if the registry
    /// still holds this very registration (same `registered_seqnum`); an
    /// unregistration or a new registration of the name meanwhile stays.
    /// What the removal causes besides (a kernel parent waiting for the
    /// name takes it) is shown. The state file is written again (a failed
    /// write may have left the new file in place), and the error reply
    /// waits for that write.
    pub fn undo(&mut self, commit: Commit, err: &io::Error) -> Commit {
        let Some(undo) = commit.undo_unless_saved else {
            return commit;
        };
        log::error!(
            "cannot save state, refusing registration of {:?}: {err}",
            undo.name
        );
        let still_held = self
            .registry()
            .get(&undo.name)
            .is_some_and(|parent| parent.registered_seqnum == undo.seqnum);
        let mut events = Vec::new();
        if still_held {
            events = self
                .apply(Input::Unregister {
                    name: undo.name.clone(),
                    caller: undo.owner,
                    uid: undo.uid,
                })
                .unwrap_or_default();
        }
        let error = dbus::Error::failed(format!("cannot save state: {err}"));
        let mut undone = Commit::of_events(events);
        undone.forget_registration(&undo.name, undo.seqnum);
        if !undone.save.contains(&undo.lifetime) {
            undone.save.push(undo.lifetime);
        }
        if let Some(reply) = commit.replies.into_iter().next() {
            undone
                .replies
                .push(PendingReply::new(reply.call, Err(error)));
        }
        undone
    }

    /// `UnregisterParent` by `caller` (of `uid`).
    pub fn unregister(&mut self, name: String, caller: String, uid: u32, call: Message) -> Commit {
        let input = Input::Unregister {
            name: name.clone(),
            caller: caller.clone(),
            uid,
        };
        match self.apply(input) {
            Ok(events) => {
                // The sink's info line names the owner; the caller may be
                // root acting for it.
                log::debug!("unregistered userspace parent {name:?} at the request of {caller}");
                let mut commit = Commit::of_events(events);
                commit
                    .replies
                    .push(PendingReply::new(call, Ok(ReplyValue::Unit)));
                commit
            }
            Err(err) => {
                log::info!("UnregisterParent from {caller} refused: {err}");
                refused(call, dbus::Error::from(err))
            }
        }
    }

    /// `owner` left the bus: its owner-bound parents go, persistent ones
    /// lose their owner.
    pub fn owner_gone(&mut self, owner: String) -> Commit {
        self.gone_owners.insert(&owner);
        let events = self
            .apply(Input::OwnerGone {
                owner: owner.clone(),
            })
            .unwrap_or_default();
        if !events.is_empty() {
            let count = |unregistered: bool| {
                events
                    .iter()
                    .filter(|event| match event.kind {
                        EventKind::ParentUnregistered { .. } => unregistered,
                        EventKind::ParentUpdated { .. } => !unregistered,
                        _ => false,
                    })
                    .count()
            };
            log::info!(
                "{owner} left the bus: {} owner-bound parents unregistered, {} persistent ones kept",
                count(true),
                count(false)
            );
        }
        let mut commit = Commit::of_events(events);
        commit.forget_callers.push(owner);
        commit
    }

    /// After a registration by `owner` was answered: if `owner` has left
    /// the bus meanwhile, what its leaving does now.
    pub fn owner_left_meanwhile(&mut self, owner: String) -> Option<Commit> {
        self.gone_owners
            .contains(&owner)
            .then(|| self.owner_gone(owner))
    }

    /// The daemon starts in a new boot: every restored persistent parent
    /// is registered again as far as the world can tell (its uevent and
    /// signals, once; the state file records the new sequence numbers).
    pub fn new_boot(&mut self) -> Commit {
        let events = self.apply(Input::NewBoot).unwrap_or_default();
        if !events.is_empty() {
            log::info!(
                "new boot: announcing {} restored persistent parents",
                events.len()
            );
        }
        Commit::of_events(events)
    }

    /// Owners of restored registrations, to ask the bus about.
    pub fn userspace_owners(&self) -> BTreeSet<String> {
        self.registry()
            .parents()
            .filter(|parent| parent.source == Source::Userspace && !parent.owner.is_empty())
            .map(|parent| parent.owner.clone())
            .collect()
    }

    /// Remembers injected events (by registry sequence number) whose echo
    /// will come back on the uevent socket.
    pub fn expect_echoes(&mut self, seqnums: impl IntoIterator<Item = u64>) {
        for seqnum in seqnums {
            self.pending_echoes.insert(seqnum);
        }
    }

    /// A batch of source messages, in order: one commit per owner that
    /// left, then one for every hinted devpath re-read (a rescan asked for
    /// is started by the last).
    pub fn sources(&mut self, batch: Vec<SourceMessage>, reader: &dyn ParentReader) -> Vec<Commit> {
        let mut commits = Vec::new();
        // Devpaths with the number of hints about each.
        let mut devpaths: BTreeMap<String, u64> = BTreeMap::new();
        let mut resync = None;
        for message in batch {
            match message {
                SourceMessage::Hint(hint) => {
                    if self.pending_echoes.take(&hint) {
                        self.counters.bump(Counter::UeventsOwn);
                        log::debug!("own uevent for {} seen again", hint.devpath);
                        continue;
                    }
                    *devpaths.entry(hint.devpath).or_default() += 1;
                }
                SourceMessage::Resync(reason) => resync = Some(reason),
                SourceMessage::OwnerGone(owner) => commits.push(self.owner_gone(owner)),
            }
        }
        let start_scan = resync.and_then(|reason| self.request_scan(reason));
        let mut inputs = Vec::new();
        // A PCI device changed (a VF added, bound, unbound, removed, or its
        // PF): the vendor-VFIO VFs are re-read together, siblings included.
        // While none is registered, only for a device that can be one or
        // have some (not for every GPU or NIC event).
        let vendor_known = self.has_vendor_parents();
        if devpaths.keys().any(|devpath| {
            is_pci_devpath(devpath) && (vendor_known || reader.may_concern_vendor_parents(devpath))
        }) {
            inputs.extend(self.vendor_input(reader));
        }
        let mut seen = HashSet::new();
        for (devpath, copies) in devpaths {
            match self.kernel_input(&devpath, reader) {
                Some((key, input)) => {
                    if self.scan.running {
                        self.scan.touched.insert(key.clone());
                    }
                    if seen.insert(key) {
                        inputs.push(input);
                    }
                }
                None => {
                    log::debug!("{copies} uevents for {devpath}: no mdev parent there");
                    self.counters.add(Counter::UeventsIgnored, copies);
                }
            }
        }
        let mut events = Vec::new();
        for input in inputs {
            if let Ok(more) = self.apply(input) {
                events.extend(more);
            }
        }
        let mut commit = Commit::of_events(events);
        commit.start_scan = start_scan;
        if !commit.is_empty() {
            commits.push(commit);
        }
        commits
    }

    /// The re-read a hint on `devpath` calls for, with the parent devpath
    /// it reads: the known kernel parent at or above it, else the device
    /// itself or its parent directory (an mdev instance below a parent) if
    /// that is an mdev parent.
    fn kernel_input(&self, devpath: &str, reader: &dyn ParentReader) -> Option<(String, Input)> {
        let known = self
            .registry()
            .kernel_devpath_owner(devpath)
            .map(str::to_owned);
        if let Some(parent_devpath) = known {
            let info = match reader.read_parent(&parent_devpath) {
                ParentRead::Parent(info, warnings) => {
                    log_warnings(&warnings);
                    Some(info)
                }
                ParentRead::NotAParent => None,
                // Unreadable is not gone: keep what is known.
                ParentRead::Bad(warning) => {
                    log::warn!("cannot re-read parent: {warning}");
                    return None;
                }
            };
            let input = Input::KernelParent {
                devpath: parent_devpath.clone(),
                info,
            };
            return Some((parent_devpath, input));
        }
        let above = devpath.rsplit_once('/').map(|(dir, _)| dir);
        for candidate in std::iter::once(devpath).chain(above) {
            if let ParentRead::Parent(info, warnings) = reader.read_parent(candidate) {
                log_warnings(&warnings);
                let input = Input::KernelParent {
                    devpath: candidate.to_owned(),
                    info: Some(info),
                };
                return Some((candidate.to_owned(), input));
            }
        }
        None
    }

    /// The re-read of every vendor-VFIO parent, if the reader can do it.
    fn vendor_input(&self, reader: &dyn ParentReader) -> Option<Input> {
        reader.vendor_parents().map(|parents| Input::BackendScan {
            backend: Backend::NvidiaVfio,
            parents,
        })
    }

    /// Whether any vendor-VFIO parent is registered: only then is there
    /// anything to poll.
    pub fn has_vendor_parents(&self) -> bool {
        self.registry().has_vendor_kernel_parents()
    }

    /// The periodic check of the vendor-VFIO parents (placing or removing a
    /// vGPU sends no uevent and changes the siblings' lists): their two
    /// files are re-read and what changed is applied; a VF whose `nvidia/`
    /// is gone makes all of them be re-read in full.
    pub fn poll(&mut self, reader: &dyn ParentReader) -> Commit {
        // Compared in the snapshot, not copied; only what changed is.
        let registry = self.registry();
        let known: Vec<&ParentInfo> = registry
            .parents()
            .filter(|parent| {
                parent.source == Source::Kernel && parent.info.backend == Backend::NvidiaVfio
            })
            .map(|parent| &parent.info)
            .collect();
        let polled = reader.vendor_poll(&known);
        drop(known);
        drop(registry);
        let inputs: Vec<Input> = if polled.contains(&Polled::Gone) {
            self.vendor_input(reader).into_iter().collect()
        } else {
            polled
                .into_iter()
                .filter_map(|polled| match polled {
                    Polled::Changed(info) => Some(Input::KernelParent {
                        devpath: info.devpath.clone(),
                        info: Some(info),
                    }),
                    _ => None,
                })
                .collect()
        };
        let mut events = Vec::new();
        for input in inputs {
            if let Ok(more) = self.apply(input) {
                events.extend(more);
            }
        }
        Commit::of_events(events)
    }

    /// A full rescan is wanted: `Some(reason)` if the caller is to start
    /// one now; `None` if one runs (it runs again once it is done).
    pub fn request_scan(&mut self, reason: &'static str) -> Option<&'static str> {
        self.request_scan_for(reason, Vec::new())
    }

    /// `Rescan()`: like [`Core::request_scan`]; `call` is answered once a
    /// scan started after it is applied.
    pub fn rescan_call(&mut self, call: Message) -> Option<&'static str> {
        self.request_scan_for("Rescan()", vec![call])
    }

    fn request_scan_for(
        &mut self,
        reason: &'static str,
        calls: Vec<Message>,
    ) -> Option<&'static str> {
        if self.scan.running {
            self.scan.again = Some(reason);
            self.scan.calls_next.extend(calls);
            return None;
        }
        self.scan = ScanBook {
            running: true,
            calls,
            ..ScanBook::default()
        };
        self.counters.bump(Counter::Rescans);
        log::info!("rescanning sysfs ({reason})");
        Some(reason)
    }

    /// The background scan finished (`Err`: it failed). Parents re-read
    /// while it ran are read again, as the scan may predate what those
    /// reads saw.
    pub fn scan_finished(
        &mut self,
        scan: Result<Scan, String>,
        reader: &dyn ParentReader,
    ) -> Commit {
        let book = std::mem::take(&mut self.scan);
        let failed = scan.is_err();
        let mut commit = match scan {
            Ok(mut scan) => {
                log_warnings(&scan.warnings);
                for devpath in &book.touched {
                    scan.parents.retain(|parent| &parent.devpath != devpath);
                    if let ParentRead::Parent(info, warnings) = reader.read_parent(devpath) {
                        log_warnings(&warnings);
                        // First in the list: it wins over a stale namesake.
                        scan.parents.insert(0, info);
                    }
                }
                // The vendor-VFIO parents may have been re-read (or polled)
                // while it ran: read them again, as of now.
                if let Some(vendor) = reader.vendor_parents() {
                    scan.parents
                        .retain(|parent| parent.backend != Backend::NvidiaVfio);
                    scan.parents.extend(vendor);
                }
                let events = self
                    .apply(Input::KernelScan(scan.parents))
                    .unwrap_or_default();
                Commit::of_events(events)
            }
            Err(err) => {
                log::error!("sysfs rescan failed: {err}");
                Commit::default()
            }
        };
        commit.replies = book
            .calls
            .into_iter()
            .map(|call| {
                let result = if failed {
                    Err(dbus::Error::failed("the sysfs rescan failed"))
                } else {
                    Ok(ReplyValue::Unit)
                };
                PendingReply::new(call, result)
            })
            .collect();
        commit.start_scan = book
            .again
            .and_then(|reason| self.request_scan_for(reason, book.calls_next));
        commit
    }
}

/// A refused call: nothing changed, only the error reply.
fn refused(call: Message, error: dbus::Error) -> Commit {
    Commit {
        replies: vec![PendingReply::new(call, Err(error))],
        ..Commit::default()
    }
}

pub fn log_warnings(warnings: &[sysfs::Warning]) {
    for warning in warnings {
        log::warn!("sysfs: {warning}");
    }
}

/// Registry sequence numbers of injected events not yet seen again.
#[derive(Debug, Default)]
struct PendingEchoes {
    seqnums: BTreeSet<u64>,
}

impl PendingEchoes {
    fn insert(&mut self, seqnum: u64) {
        self.seqnums.insert(seqnum);
        while self.seqnums.len() > MAX_PENDING_ECHOES {
            self.seqnums.pop_first();
        }
    }

    /// Whether `hint` is one of ours coming back (and forgets it).
    fn take(&mut self, hint: &Hint) -> bool {
        hint.echo_seqnum
            .is_some_and(|seqnum| self.seqnums.remove(&seqnum))
    }
}

/// Unique names seen leaving the bus, the most recent ones (a bus never
/// reuses a unique name, so membership is final).
#[derive(Default)]
struct GoneOwners {
    order: VecDeque<String>,
    names: HashSet<String>,
}

impl GoneOwners {
    const MAX: usize = 4096;

    fn insert(&mut self, name: &str) {
        if !self.names.insert(name.to_owned()) {
            return;
        }
        self.order.push_back(name.to_owned());
        if self.order.len() > Self::MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.names.remove(&oldest);
            }
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }
}

#[cfg(test)]
mod tests;
