//! The registry state machine: pure, no I/O, no async.
//!
//! Inputs are sysfs snapshots (all parents, or one re-read devpath), userspace
//! register/unregister requests and "owner left the bus"; every accepted input
//! returns the [`Event`]s it caused, each with its own strictly increasing
//! sequence number. Adapters turn events into D-Bus signals, uevents and state
//! files; nothing here knows about them.
//!
//! Name collisions between sources: a userspace registration of a name held
//! by any parent fails with [`Error::AlreadyRegistered`]. A kernel parent
//! that appears in sysfs under a name a userspace parent holds:
//! - if root registered that parent, **first come, first served**: the
//!   kernel parent is kept *waiting* (not registered, no events) and is
//!   registered as soon as the userspace parent goes;
//! - if a non-root uid did (polkit let it in), the userspace parent never
//!   shadows the kernel: it is unregistered and the kernel parent registers,
//!   in that order.
//!
//! Bounds: at most [`MAX_PARENTS_PER_OWNER`] userspace parents per owner
//! connection and, for non-root uids, [`MAX_PARENTS_PER_UID`] per uid over
//! all its connections and lifetimes.
//!
//! Unregistering: kernel parents only leave with their sysfs tree
//! ([`Error::NotOwner`] over D-Bus); owner-bound parents only by their owner
//! connection (or when it leaves the bus); persistent parents by root or by
//! the uid that registered them (the adapter decides who gets this far).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::model::{Backend, Lifetime, MdevType, Parent, ParentInfo, Source};

/// At most this many userspace parents per owner connection.
pub const MAX_PARENTS_PER_OWNER: usize = 256;
/// At most this many userspace parents per non-root uid, over all its
/// connections and both lifetimes.
pub const MAX_PARENTS_PER_UID: usize = 256;

/// Something that happened outside the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A full sysfs scan: every kernel parent present now.
    KernelScan(Vec<ParentInfo>),
    /// A scan of one backend's kernel parents only (the vendor-VFIO VFs,
    /// re-read together): every kernel parent of `backend` present now;
    /// kernel parents of other backends are left alone.
    BackendScan {
        backend: Backend,
        parents: Vec<ParentInfo>,
    },
    /// A re-read of one devpath: `Some` if a parent is there, `None` if not.
    KernelParent {
        devpath: String,
        info: Option<ParentInfo>,
    },
    /// A userspace registration by bus connection `owner`, whose uid the
    /// bus reported as `uid`.
    Register {
        info: ParentInfo,
        owner: String,
        lifetime: Lifetime,
        uid: u32,
    },
    /// A userspace unregistration requested by bus connection `caller` of
    /// uid `uid`.
    Unregister {
        name: String,
        caller: String,
        uid: u32,
    },
    /// Bus connection `owner` left the bus.
    OwnerGone { owner: String },
    /// The daemon starts in a new boot: every persistent userspace parent
    /// (restored from its state file) is registered again, as far as the
    /// world can tell (one `ParentRegistered` each, with a new sequence
    /// number), since nothing of the old boot saw it.
    NewBoot,
}

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    ParentRegistered {
        parent: Parent,
    },
    ParentUnregistered {
        parent: Parent,
    },
    /// Devpath, subsystem, driver, backend, physical device or owner changed
    /// (type changes come as their own events after this one).
    ParentUpdated {
        before: Parent,
        after: Parent,
    },
    TypeAdded {
        parent: String,
        mdev_type: MdevType,
    },
    TypeRemoved {
        parent: String,
        mdev_type: MdevType,
    },
    /// Any attribute of a type changed: availability, instances, name, ...
    TypeUpdated {
        parent: String,
        before: MdevType,
        after: MdevType,
    },
}

/// A registry event with its sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub seqnum: u64,
    pub kind: EventKind,
}

impl Event {
    /// Name of the parent the event is about.
    pub fn parent_name(&self) -> &str {
        match &self.kind {
            EventKind::ParentRegistered { parent } | EventKind::ParentUnregistered { parent } => {
                parent.name()
            }
            EventKind::ParentUpdated { after, .. } => after.name(),
            EventKind::TypeAdded { parent, .. }
            | EventKind::TypeRemoved { parent, .. }
            | EventKind::TypeUpdated { parent, .. } => parent,
        }
    }
}

/// A request the registry refuses. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("parent {0:?} is already registered")]
    AlreadyRegistered(String),
    #[error("parent {0:?} is not registered")]
    NotRegistered(String),
    #[error("parent {0:?} is not owned by the caller")]
    NotOwner(String),
    #[error("owner {0:?} already holds {MAX_PARENTS_PER_OWNER} parents")]
    LimitExceeded(String),
    #[error("uid {0} already holds {MAX_PARENTS_PER_UID} userspace parents")]
    UidLimitExceeded(u32),
}

/// The registry: registered parents by name, waiting kernel parents, and the
/// last sequence number handed out.
///
/// Cheap to clone: each parent is shared (`Arc`) between clones, so a
/// snapshot costs one map of pointers and a change copies only the parent
/// it touches (the daemon publishes one per commit for its readers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    parents: BTreeMap<String, Arc<Parent>>,
    /// Devpath → names of the registered kernel parents there (a re-read
    /// looks its devpath up instead of walking every parent).
    kernel_devpaths: BTreeMap<String, BTreeSet<String>>,
    /// Kernel parents whose name a userspace parent holds.
    waiting: BTreeMap<String, ParentInfo>,
    seqnum: u64,
    /// Registered kernel parents of the vendor-VFIO backend (the daemon
    /// polls only while there are some; asked after every input).
    vendor_kernel_parents: usize,
    /// Kept with `parents` by `put` and `take`: what a registration checks,
    /// the state writer and the loop ask, without walking every parent
    /// (a host may have tens of thousands of kernel parents).
    counts: Counts,
}

/// A kernel parent of the vendor-VFIO backend.
fn is_vendor_kernel(parent: &Parent) -> bool {
    parent.source == Source::Kernel && parent.info.backend == Backend::NvidiaVfio
}

/// Counts and an index derived from the registered parents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Counts {
    /// Parents per owner (unique bus name; kernel parents have none).
    by_owner: BTreeMap<String, usize>,
    /// Userspace parents of non-root callers, per uid.
    unprivileged_by_uid: BTreeMap<u32, usize>,
    /// Names of the userspace parents.
    userspace: BTreeSet<String>,
}

impl Counts {
    fn add(&mut self, parent: &Parent) {
        if !parent.owner.is_empty() {
            *self.by_owner.entry(parent.owner.clone()).or_default() += 1;
        }
        if parent.is_unprivileged() {
            *self.unprivileged_by_uid.entry(parent.uid).or_default() += 1;
        }
        if parent.source == Source::Userspace {
            self.userspace.insert(parent.name().to_owned());
        }
    }

    fn remove(&mut self, parent: &Parent) {
        fn decrement<K: Ord>(map: &mut BTreeMap<K, usize>, key: &K) {
            if let Some(count) = map.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    map.remove(key);
                }
            }
        }
        if !parent.owner.is_empty() {
            decrement(&mut self.by_owner, &parent.owner);
        }
        if parent.is_unprivileged() {
            decrement(&mut self.unprivileged_by_uid, &parent.uid);
        }
        if parent.source == Source::Userspace {
            self.userspace.remove(parent.name());
        }
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding `parents` (restored from state files) without
    /// emitting events; numbering continues above `last_seqnum` and above
    /// every restored `registered_seqnum`. Later duplicates of a name are
    /// returned, not restored.
    pub fn restore(parents: Vec<Parent>, last_seqnum: u64) -> (Self, Vec<Parent>) {
        let mut registry = Self {
            seqnum: last_seqnum,
            ..Self::default()
        };
        let mut rejected = Vec::new();
        for mut parent in parents {
            parent.info.normalize();
            registry.seqnum = registry.seqnum.max(parent.registered_seqnum);
            if registry.parents.contains_key(parent.name()) {
                rejected.push(parent);
            } else {
                registry.put(parent);
            }
        }
        (registry, rejected)
    }

    /// Sequence number of the last event (0 before any).
    pub fn seqnum(&self) -> u64 {
        self.seqnum
    }

    pub fn get(&self, name: &str) -> Option<&Parent> {
        self.parents.get(name).map(Arc::as_ref)
    }

    /// Registered parents, sorted by name.
    pub fn parents(&self) -> impl Iterator<Item = &Parent> {
        self.parents.values().map(Arc::as_ref)
    }

    /// Registered parents, sorted by name, as the shared values a clone of
    /// this registry holds too: a parent no change touched is the same
    /// `Arc` in the next snapshot (the metrics cache keys on that).
    pub fn shared_parents(&self) -> impl Iterator<Item = &Arc<Parent>> {
        self.parents.values()
    }

    /// The userspace parents, sorted by name (what the state files hold).
    pub fn userspace_parents(&self) -> impl Iterator<Item = &Parent> {
        self.counts
            .userspace
            .iter()
            .filter_map(|name| self.get(name))
    }

    /// Adds (or replaces) a registered parent, keeping the indexes.
    fn put(&mut self, parent: Parent) {
        // The value replaced is dropped: no copy of it if a snapshot
        // shares it.
        self.take_shared(parent.name());
        self.counts.add(&parent);
        if is_vendor_kernel(&parent) {
            self.vendor_kernel_parents += 1;
        }
        if parent.source == Source::Kernel {
            self.kernel_devpaths
                .entry(parent.info.devpath.clone())
                .or_default()
                .insert(parent.name().to_owned());
        }
        self.parents
            .insert(parent.name().to_owned(), Arc::new(parent));
    }

    /// Removes a registered parent, keeping the indexes.
    fn take(&mut self, name: &str) -> Option<Parent> {
        self.take_shared(name).map(Arc::unwrap_or_clone)
    }

    /// [`Registry::take`] without making the value its own.
    fn take_shared(&mut self, name: &str) -> Option<Arc<Parent>> {
        let parent = self.parents.remove(name)?;
        self.counts.remove(&parent);
        if is_vendor_kernel(&parent) {
            self.vendor_kernel_parents -= 1;
        }
        if parent.source == Source::Kernel {
            if let Some(names) = self.kernel_devpaths.get_mut(&parent.info.devpath) {
                names.remove(name);
                if names.is_empty() {
                    self.kernel_devpaths.remove(&parent.info.devpath);
                }
            }
        }
        Some(parent)
    }

    pub fn len(&self) -> usize {
        self.parents.len()
    }

    /// Whether a kernel parent of the vendor-VFIO backend is registered.
    pub fn has_vendor_kernel_parents(&self) -> bool {
        self.vendor_kernel_parents > 0
    }

    pub fn is_empty(&self) -> bool {
        self.parents.is_empty()
    }

    /// Kernel parents waiting for their name to be freed.
    pub fn waiting(&self) -> impl Iterator<Item = &ParentInfo> {
        self.waiting.values()
    }

    /// The kernel mdev parent (registered or waiting) whose devpath is
    /// `devpath` or an ancestor of it (an mdev instance below the parent,
    /// say). Vendor-VFIO parents are not mdev parents: they are re-read
    /// together with their siblings, never one by one.
    pub fn kernel_devpath_owner(&self, devpath: &str) -> Option<&str> {
        // The devpath itself, then each directory above it: a lookup each.
        let mut candidate = devpath;
        loop {
            if let Some((registered, names)) = self.kernel_devpaths.get_key_value(candidate) {
                let mdev = names.iter().any(|name| {
                    self.parents
                        .get(name)
                        .is_some_and(|parent| parent.info.backend == Backend::Mdev)
                });
                if mdev {
                    return Some(registered.as_str());
                }
            }
            match candidate.rsplit_once('/') {
                Some((above, _)) if !above.is_empty() => candidate = above,
                _ => break,
            }
        }
        self.waiting
            .values()
            .filter(|info| info.backend == Backend::Mdev)
            .find(|info| is_same_or_below(devpath, &info.devpath))
            .map(|info| info.devpath.as_str())
    }

    /// Applies one input; returns the events it caused, or why it was refused.
    pub fn apply(&mut self, input: Input) -> Result<Vec<Event>, Error> {
        let mut events = Vec::new();
        match input {
            Input::KernelScan(infos) => self.kernel_scan(infos, None, &mut events),
            Input::BackendScan { backend, parents } => {
                self.kernel_scan(parents, Some(backend), &mut events)
            }
            Input::KernelParent { devpath, info } => match info {
                Some(info) => {
                    // A stale entry at the same devpath under another name
                    // must not linger.
                    self.kernel_absent_except(&info.devpath, &info.name, &mut events);
                    self.kernel_present(info, &mut events)
                }
                None => self.kernel_absent(&devpath, &mut events),
            },
            Input::Register {
                info,
                owner,
                lifetime,
                uid,
            } => self.register(info, owner, lifetime, uid, &mut events)?,
            Input::Unregister { name, caller, uid } => {
                self.unregister(&name, &caller, uid, &mut events)?
            }
            Input::OwnerGone { owner } => self.owner_gone(&owner, &mut events),
            Input::NewBoot => self.new_boot(&mut events),
        }
        Ok(events)
    }

    /// Brings a copy of the registry up to date with `events`, which
    /// another copy emitted (the registry readers see follows the one the
    /// daemon changes, commit by commit, once each commit is shown). Each
    /// event sets what it shows (a parent or type present, changed or
    /// gone) whatever this copy held, so events that are never shown (a
    /// registration taken back because it could not be saved) leave no
    /// trace. Kernel parents waiting for a name are not tracked: they show
    /// in no event.
    pub fn replay(&mut self, events: &[Event]) {
        for event in events {
            match &event.kind {
                EventKind::ParentRegistered { parent } => self.put(parent.clone()),
                EventKind::ParentUpdated { after, .. } => self.put(after.clone()),
                EventKind::ParentUnregistered { parent } => {
                    self.take_shared(parent.name());
                }
                EventKind::TypeAdded { parent, mdev_type }
                | EventKind::TypeUpdated {
                    parent,
                    after: mdev_type,
                    ..
                } => self.with_types(parent, |types| {
                    match types.binary_search_by(|t| t.id.cmp(&mdev_type.id)) {
                        Ok(at) => types[at] = mdev_type.clone(),
                        Err(at) => types.insert(at, mdev_type.clone()),
                    }
                }),
                EventKind::TypeRemoved { parent, mdev_type } => self.with_types(parent, |types| {
                    types.retain(|t| t.id != mdev_type.id);
                }),
            }
            self.seqnum = self.seqnum.max(event.seqnum);
        }
    }

    /// Changes the types of parent `name` (copied first if a snapshot
    /// shares it); nothing if there is no such parent.
    fn with_types(&mut self, name: &str, change: impl FnOnce(&mut Vec<MdevType>)) {
        if let Some(parent) = self.parents.get_mut(name) {
            change(&mut Arc::make_mut(parent).info.types);
        }
    }

    fn push(&mut self, events: &mut Vec<Event>, kind: EventKind) {
        self.seqnum += 1;
        events.push(Event {
            seqnum: self.seqnum,
            kind,
        });
    }

    /// A scan of all kernel parents, or (with `only`) of one backend's.
    fn kernel_scan(
        &mut self,
        infos: Vec<ParentInfo>,
        only: Option<Backend>,
        events: &mut Vec<Event>,
    ) {
        let covered = |info: &ParentInfo| only.is_none_or(|backend| info.backend == backend);
        let mut seen = BTreeMap::new();
        for mut info in infos.into_iter().filter(|info| covered(info)) {
            info.normalize();
            seen.entry(info.name.clone()).or_insert(info);
        }
        let gone: Vec<String> = match only {
            // None of that backend is registered: nothing can be gone, and
            // every parent is not walked (a re-read of the vendor-VFIO
            // parents follows every uevent about a PCI device).
            Some(Backend::NvidiaVfio) if self.vendor_kernel_parents == 0 => Vec::new(),
            _ => self
                .parents
                .values()
                .filter(|p| {
                    p.source == Source::Kernel && covered(&p.info) && !seen.contains_key(p.name())
                })
                .map(|p| p.name().to_owned())
                .collect(),
        };
        for name in gone {
            self.remove(&name, events);
        }
        self.waiting
            .retain(|name, info| !covered(info) || seen.contains_key(name));
        for info in seen.into_values() {
            self.kernel_present(info, events);
        }
    }

    fn kernel_present(&mut self, mut info: ParentInfo, events: &mut Vec<Event>) {
        info.normalize();
        match self.parents.get(&info.name) {
            None => {
                let parent = Parent {
                    info,
                    source: Source::Kernel,
                    owner: String::new(),
                    lifetime: Lifetime::Kernel,
                    registered_seqnum: self.seqnum + 1,
                    uid: 0,
                };
                self.insert(parent, events);
            }
            Some(existing) if existing.is_unprivileged() => {
                // Never shadows the kernel: the userspace parent goes first
                // (remove() then registers the kernel parent waiting for it).
                let name = info.name.clone();
                self.waiting.insert(name.clone(), info);
                self.remove(&name, events);
            }
            Some(existing) if existing.source == Source::Userspace => {
                self.waiting.insert(info.name.clone(), info);
            }
            Some(existing) => {
                let before = Arc::clone(existing);
                self.update_kernel(before, info, events);
            }
        }
    }

    fn kernel_absent(&mut self, devpath: &str, events: &mut Vec<Event>) {
        self.kernel_absent_except(devpath, "", events);
    }

    /// Drops kernel parents (registered or waiting) at `devpath`, except the
    /// one called `keep`.
    fn kernel_absent_except(&mut self, devpath: &str, keep: &str, events: &mut Vec<Event>) {
        self.waiting
            .retain(|name, info| name == keep || info.devpath != devpath);
        let gone: Vec<String> = self
            .kernel_devpaths
            .get(devpath)
            .map(|names| names.iter().filter(|name| *name != keep).cloned().collect())
            .unwrap_or_default();
        for name in gone {
            self.remove(&name, events);
        }
    }

    /// A kernel parent read again: events for what changed. Nothing is
    /// copied when nothing did (a rescan of an unchanged host).
    fn update_kernel(&mut self, before: Arc<Parent>, info: ParentInfo, events: &mut Vec<Event>) {
        let name = before.name().to_owned();
        let attrs_changed = before.info.devpath != info.devpath
            || before.info.subsystem != info.subsystem
            || before.info.driver != info.driver
            || before.info.backend != info.backend
            || before.info.physical_device != info.physical_device;
        let mut kinds = Vec::new();
        diff_types(&name, &before.info.types, &info.types, &mut kinds);
        if !attrs_changed && kinds.is_empty() {
            return;
        }
        let before = Arc::unwrap_or_clone(before);
        let mut after = before.clone();
        after.info = info;
        self.put(after.clone());
        if attrs_changed {
            self.push(events, EventKind::ParentUpdated { before, after });
        }
        for kind in kinds {
            self.push(events, kind);
        }
    }

    fn register(
        &mut self,
        mut info: ParentInfo,
        owner: String,
        lifetime: Lifetime,
        uid: u32,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        if self.parents.contains_key(&info.name) {
            return Err(Error::AlreadyRegistered(info.name));
        }
        let held = self.counts.by_owner.get(&owner).copied().unwrap_or(0);
        if held >= MAX_PARENTS_PER_OWNER {
            return Err(Error::LimitExceeded(owner));
        }
        if uid != 0 {
            let held = self
                .counts
                .unprivileged_by_uid
                .get(&uid)
                .copied()
                .unwrap_or(0);
            if held >= MAX_PARENTS_PER_UID {
                return Err(Error::UidLimitExceeded(uid));
            }
        }
        info.normalize();
        let parent = Parent {
            info,
            source: Source::Userspace,
            owner,
            lifetime: match lifetime {
                Lifetime::Kernel => Lifetime::Owner,
                other => other,
            },
            registered_seqnum: self.seqnum + 1,
            uid,
        };
        self.insert(parent, events);
        Ok(())
    }

    fn unregister(
        &mut self,
        name: &str,
        caller: &str,
        uid: u32,
        events: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let parent = self
            .parents
            .get(name)
            .ok_or_else(|| Error::NotRegistered(name.to_owned()))?;
        let allowed = match parent.lifetime {
            Lifetime::Kernel => false,
            Lifetime::Owner => parent.owner == caller,
            Lifetime::Persistent => uid == 0 || parent.uid == uid,
        };
        if !allowed {
            return Err(Error::NotOwner(name.to_owned()));
        }
        self.remove(name, events);
        Ok(())
    }

    fn owner_gone(&mut self, owner: &str, events: &mut Vec<Event>) {
        if owner.is_empty() {
            return;
        }
        let held: Vec<(String, Lifetime)> = self
            .parents
            .values()
            .filter(|p| p.owner == owner)
            .map(|p| (p.name().to_owned(), p.lifetime))
            .collect();
        for (name, lifetime) in held {
            if lifetime == Lifetime::Owner {
                self.remove(&name, events);
            } else if let Some(before) = self.get(&name).cloned() {
                let mut after = before.clone();
                after.owner.clear();
                self.put(after.clone());
                self.push(events, EventKind::ParentUpdated { before, after });
            }
        }
    }

    fn new_boot(&mut self, events: &mut Vec<Event>) {
        let persistent: Vec<String> = self
            .parents
            .values()
            .filter(|p| p.source == Source::Userspace && p.lifetime == Lifetime::Persistent)
            .map(|p| p.name().to_owned())
            .collect();
        for name in persistent {
            if let Some(mut parent) = self.take(&name) {
                // Its old connection is of the old boot.
                parent.owner.clear();
                self.insert(parent, events);
            }
        }
    }

    fn insert(&mut self, mut parent: Parent, events: &mut Vec<Event>) {
        parent.registered_seqnum = self.seqnum + 1;
        self.put(parent.clone());
        self.push(events, EventKind::ParentRegistered { parent });
    }

    /// Removes a registered parent; a kernel parent waiting for the name
    /// takes it.
    fn remove(&mut self, name: &str, events: &mut Vec<Event>) {
        let Some(parent) = self.take(name) else {
            return;
        };
        let was_userspace = parent.source == Source::Userspace;
        self.push(events, EventKind::ParentUnregistered { parent });
        if was_userspace {
            if let Some(info) = self.waiting.remove(name) {
                self.kernel_present(info, events);
            }
        }
    }
}

/// Whether `devpath` is `ancestor` or lies below it.
fn is_same_or_below(devpath: &str, ancestor: &str) -> bool {
    devpath == ancestor
        || (devpath.starts_with(ancestor) && devpath.as_bytes().get(ancestor.len()) == Some(&b'/'))
}

/// Type events turning `before` into `after` (both sorted by id).
fn diff_types(parent: &str, before: &[MdevType], after: &[MdevType], out: &mut Vec<EventKind>) {
    let (mut i, mut j) = (0, 0);
    while i < before.len() || j < after.len() {
        let order = match (before.get(i), after.get(j)) {
            (Some(b), Some(a)) => b.id.cmp(&a.id),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                out.push(EventKind::TypeRemoved {
                    parent: parent.to_owned(),
                    mdev_type: before[i].clone(),
                });
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(EventKind::TypeAdded {
                    parent: parent.to_owned(),
                    mdev_type: after[j].clone(),
                });
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if before[i] != after[j] {
                    out.push(EventKind::TypeUpdated {
                        parent: parent.to_owned(),
                        before: before[i].clone(),
                        after: after[j].clone(),
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
