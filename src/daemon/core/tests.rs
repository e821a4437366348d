//! The core's tricky cases, unprivileged: no bus, no sysfs, no netlink.
//! Sysfs is a map ([`FakeSysfs`]); calls are unsent messages.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::*;
use crate::daemon::test_support::{core, register};
use crate::model::{Lifetime, MdevType, ParentInfo};
use crate::sysfs::Warning;
use crate::test_support::{method_call, pci_parent, user_registration};

/// A sysfs stand-in: devpath → what a re-read finds (absent: not a parent).
#[derive(Default)]
struct FakeSysfs {
    parents: RefCell<BTreeMap<String, ParentRead>>,
    reads: RefCell<Vec<String>>,
}

impl FakeSysfs {
    fn put(&self, info: ParentInfo) {
        self.parents
            .borrow_mut()
            .insert(info.devpath.clone(), ParentRead::Parent(info, Vec::new()));
    }

    fn remove(&self, devpath: &str) {
        self.parents.borrow_mut().remove(devpath);
    }

    fn break_read(&self, devpath: &str) {
        self.parents.borrow_mut().insert(
            devpath.to_owned(),
            ParentRead::Bad(Warning::new(devpath, "unreadable")),
        );
    }

    fn reads(&self) -> Vec<String> {
        std::mem::take(&mut *self.reads.borrow_mut())
    }
}

impl ParentReader for FakeSysfs {
    fn read_parent(&self, devpath: &str) -> ParentRead {
        self.reads.borrow_mut().push(devpath.to_owned());
        self.parents
            .borrow()
            .get(devpath)
            .cloned()
            .unwrap_or(ParentRead::NotAParent)
    }

    /// Only the parents put here are devices.
    fn check_location(&self, devpath: &str, _subsystem: &str) -> Result<(), Crossing> {
        match self.parents.borrow().contains_key(devpath) {
            true => Err(Crossing::IsDevice(devpath.to_owned())),
            false => Ok(()),
        }
    }
}

fn mtype(id: &str, available: u32) -> MdevType {
    MdevType {
        id: id.into(),
        name: "".into(),
        description: "".into(),
        device_api: "vfio-pci".into(),
        available_instances: available,
        devices: Vec::new(),
    }
}

fn kernel(name: &str, available: u32) -> ParentInfo {
    pci_parent(name, "i915", vec![mtype("i915-GVTg_V5_4", available)])
}

fn hint(devpath: &str) -> SourceMessage {
    SourceMessage::Hint(Hint::reread(devpath))
}

fn kinds(commit: &Commit) -> Vec<&'static str> {
    commit
        .events
        .iter()
        .map(|event| match event.kind {
            EventKind::ParentRegistered { .. } => "registered",
            EventKind::ParentUnregistered { .. } => "unregistered",
            EventKind::ParentUpdated { .. } => "updated",
            EventKind::TypeAdded { .. } => "type-added",
            EventKind::TypeRemoved { .. } => "type-removed",
            EventKind::TypeUpdated { .. } => "type-updated",
        })
        .collect()
}

fn available(core: &Core, name: &str) -> Option<u32> {
    core.registry()
        .get(name)
        .map(|parent| parent.info.types[0].available_instances)
}

#[test]
fn a_hint_re_reads_the_parent_at_or_above_its_devpath() {
    let (mut core, counters) = core();
    let sysfs = FakeSysfs::default();
    sysfs.put(kernel("0000:00:02.0", 4));
    // An mdev instance below a parent not known yet: the parent is found.
    let commits = core.sources(
        vec![hint("/devices/pci0000:00/0000:00:02.0/1234-uuid")],
        &sysfs,
    );
    assert_eq!(commits.len(), 1);
    assert_eq!(kinds(&commits[0]), ["registered"]);
    assert!(commits[0].save.is_empty(), "kernel parents are not saved");
    // Known now: a hint below it reads the parent itself, once per batch.
    sysfs.reads();
    sysfs.put(kernel("0000:00:02.0", 3));
    let commits = core.sources(
        vec![
            hint("/devices/pci0000:00/0000:00:02.0/a"),
            hint("/devices/pci0000:00/0000:00:02.0/b"),
            hint("/devices/pci0000:00/0000:00:02.0"),
        ],
        &sysfs,
    );
    assert_eq!(sysfs.reads(), ["/devices/pci0000:00/0000:00:02.0"; 3]);
    assert_eq!(kinds(&commits[0]), ["type-updated"]);
    assert_eq!(available(&core, "0000:00:02.0"), Some(3));
    // Unrelated devices are counted, not read into the registry.
    let commits = core.sources(vec![hint("/devices/virtual/net/lo")], &sysfs);
    assert!(commits.is_empty());
    assert_eq!(counters.get(Counter::UeventsIgnored), 1);
}

#[test]
fn an_unreadable_parent_is_kept_and_a_vanished_one_goes() {
    let (mut core, _) = core();
    let sysfs = FakeSysfs::default();
    let info = kernel("0000:00:02.0", 4);
    let devpath = info.devpath.clone();
    sysfs.put(info);
    core.sources(vec![hint(&devpath)], &sysfs);
    sysfs.break_read(&devpath);
    assert!(core.sources(vec![hint(&devpath)], &sysfs).is_empty());
    assert!(core.registry().get("0000:00:02.0").is_some());
    sysfs.remove(&devpath);
    let commits = core.sources(vec![hint(&devpath)], &sysfs);
    assert_eq!(kinds(&commits[0]), ["unregistered"]);
}

#[test]
fn own_echoes_are_recognised_once() {
    let (mut core, counters) = core();
    let sysfs = FakeSysfs::default();
    core.expect_echoes([5]);
    let ours = |seqnum| {
        SourceMessage::Hint(Hint {
            devpath: "/devices/virtual/mdevreg/a".to_owned(),
            echo_seqnum: Some(seqnum),
        })
    };
    assert!(core.sources(vec![ours(5)], &sysfs).is_empty());
    assert_eq!(counters.get(Counter::UeventsOwn), 1);
    assert!(sysfs.reads().is_empty(), "an echo is not re-read");
    // The same echo again, or another number, is an ordinary hint.
    core.sources(vec![ours(5), ours(6)], &sysfs);
    assert_eq!(counters.get(Counter::UeventsOwn), 1);
    assert_eq!(counters.get(Counter::UeventsIgnored), 2);
    // Bounded: the oldest are forgotten.
    core.expect_echoes(0..(MAX_PENDING_ECHOES as u64 + 10));
    assert_eq!(core.pending_echoes.seqnums.len(), MAX_PENDING_ECHOES);
    assert_eq!(core.pending_echoes.seqnums.first(), Some(&10));
}

#[test]
fn parents_re_read_during_a_scan_are_read_again_before_it_is_applied() {
    let (mut core, counters) = core();
    let sysfs = FakeSysfs::default();
    let a = kernel("a", 1);
    let b = kernel("b", 1);
    let c = kernel("c", 1);
    for info in [&a, &b, &c] {
        sysfs.put(info.clone());
    }
    core.load_initial(Scan {
        parents: vec![a.clone(), b.clone(), c.clone()],
        warnings: Vec::new(),
    });
    assert_eq!(core.request_scan("SEQNUM gap"), Some("SEQNUM gap"));
    // The scan thread reads the tree as it is now...
    let stale = Scan {
        parents: vec![a.clone(), b.clone(), c.clone()],
        warnings: Vec::new(),
    };
    // ...then, before it is applied, a and b change and are re-read.
    sysfs.put(kernel("a", 2));
    sysfs.remove(&b.devpath);
    let commits = core.sources(vec![hint(&a.devpath), hint(&b.devpath)], &sysfs);
    assert_eq!(kinds(&commits[0]), ["type-updated", "unregistered"]);
    // a changes once more after its re-read.
    sysfs.put(kernel("a", 3));
    sysfs.reads();
    let commit = core.scan_finished(Ok(stale), &sysfs);
    let mut reads = sysfs.reads();
    reads.sort();
    assert_eq!(reads, [a.devpath.clone(), b.devpath.clone()]);
    // The stale scan neither brings b back nor rolls a back to 1.
    assert_eq!(kinds(&commit), ["type-updated"]);
    assert_eq!(available(&core, "a"), Some(3));
    assert!(core.registry().get("b").is_none());
    assert_eq!(available(&core, "c"), Some(1));
    assert_eq!(commit.start_scan, None);
    assert_eq!(counters.get(Counter::Rescans), 1);
    // The next scan starts with nothing touched.
    assert_eq!(core.request_scan("again"), Some("again"));
    let commit = core.scan_finished(
        Ok(Scan {
            parents: vec![kernel("a", 3), c.clone()],
            warnings: Vec::new(),
        }),
        &sysfs,
    );
    assert!(commit.events.is_empty());
}

#[test]
fn a_rescan_asked_for_during_one_runs_after_it() {
    let (mut core, counters) = core();
    let sysfs = FakeSysfs::default();
    assert!(core.request_scan("receive buffer overflow").is_some());
    let commits = core.sources(vec![SourceMessage::Resync("SEQNUM gap")], &sysfs);
    assert!(commits.is_empty(), "nothing to do until the scan ends");
    assert_eq!(counters.get(Counter::Rescans), 1);
    let commit = core.scan_finished(Err("thread panicked".to_owned()), &sysfs);
    assert_eq!(commit.start_scan, Some("SEQNUM gap"));
    assert_eq!(counters.get(Counter::Rescans), 2);
    let commit = core.scan_finished(
        Ok(Scan {
            parents: Vec::new(),
            warnings: Vec::new(),
        }),
        &sysfs,
    );
    assert_eq!(commit.start_scan, None);
}

#[test]
fn a_registration_is_saved_before_it_is_answered_and_undone_if_that_fails() {
    let (mut core, _) = core();
    let commit = register(&mut core, "demo", ":1.7", Lifetime::Persistent);
    assert_eq!(kinds(&commit), ["registered"]);
    assert_eq!(commit.save, [Lifetime::Persistent]);
    assert_eq!(
        commit.undo_unless_saved,
        Some(Undo {
            name: "demo".to_owned(),
            owner: ":1.7".to_owned(),
            uid: 0,
            seqnum: commit.events[0].seqnum,
            lifetime: Lifetime::Persistent,
        })
    );
    assert!(matches!(
        commit.replies.first().map(|reply| &reply.result),
        Some(Ok(ReplyValue::Path(_)))
    ));
    let seqnum = core.registry().seqnum();
    // The sink could not write the state file.
    let err = io::Error::new(io::ErrorKind::StorageFull, "disk full");
    let undone = core.undo(commit, &err);
    assert!(core.registry().get("demo").is_none());
    assert!(undone.events.is_empty(), "never shown: {:?}", undone.events);
    // The file is written again (the failed write may have left it), and
    // the error reply waits for that.
    assert_eq!(undone.save, [Lifetime::Persistent]);
    assert!(undone.undo_unless_saved.is_none() && undone.recheck_owner.is_none());
    match undone.replies.into_iter().next().map(|reply| reply.result) {
        Some(Err(err)) => assert!(err.to_string().contains("disk full"), "{err}"),
        other => panic!("expected an error reply, got {other:?}"),
    }
    // Numbers keep increasing; the name is free again.
    assert!(core.registry().seqnum() > seqnum);
    let again = register(&mut core, "demo", ":1.7", Lifetime::Owner);
    assert_eq!(kinds(&again), ["registered"]);
    assert_eq!(again.save, [Lifetime::Owner]);
}

#[test]
fn a_refused_call_changes_nothing_and_gets_its_error() {
    let (mut core, _) = core();
    let first = register(&mut core, "demo", ":1.7", Lifetime::Owner);
    assert_eq!(kinds(&first), ["registered"]);
    let taken = register(&mut core, "demo", ":1.8", Lifetime::Owner);
    assert!(taken.events.is_empty() && taken.save.is_empty());
    assert!(taken.undo_unless_saved.is_none() && taken.recheck_owner.is_none());
    assert!(matches!(
        taken.replies.into_iter().next().map(|reply| reply.result),
        Some(Err(dbus::Error::AlreadyRegistered(_)))
    ));
    let not_owner = core.unregister("demo".to_owned(), ":1.8".to_owned(), 0, method_call("U"));
    assert!(matches!(
        not_owner
            .replies
            .into_iter()
            .next()
            .map(|reply| reply.result),
        Some(Err(dbus::Error::NotOwner(_)))
    ));
    let unregistered = core.unregister("demo".to_owned(), ":1.7".to_owned(), 0, method_call("U"));
    assert_eq!(kinds(&unregistered), ["unregistered"]);
    assert_eq!(unregistered.save, [Lifetime::Owner]);
    assert!(matches!(
        unregistered
            .replies
            .into_iter()
            .next()
            .map(|reply| reply.result),
        Some(Ok(ReplyValue::Unit))
    ));
}

#[test]
fn an_owner_leaving_between_its_call_and_the_reply_loses_the_registration() {
    let (mut core, _) = core();
    // :1.9 leaves while its RegisterParent is queued: nothing to remove yet.
    let gone = core.owner_gone(":1.9".to_owned());
    assert!(gone.events.is_empty());
    assert_eq!(gone.forget_callers, [":1.9"]);
    let commit = register(&mut core, "late", ":1.9", Lifetime::Owner);
    assert_eq!(kinds(&commit), ["registered"]);
    let owner = commit
        .recheck_owner
        .clone()
        .expect("recheck after the reply");
    // After the reply went out, the loop asks again.
    let after = core.owner_left_meanwhile(owner).expect("the owner is gone");
    assert_eq!(kinds(&after), ["unregistered"]);
    assert_eq!(after.save, [Lifetime::Owner]);
    assert!(core.registry().get("late").is_none());
    // An owner still on the bus keeps its registration.
    let kept = register(&mut core, "kept", ":1.10", Lifetime::Owner);
    assert!(core
        .owner_left_meanwhile(kept.recheck_owner.expect("recheck"))
        .is_none());
    assert!(core.registry().get("kept").is_some());
    // A persistent parent survives its owner, without the owner.
    register(&mut core, "stays", ":1.10", Lifetime::Persistent);
    let commits = core.sources(
        vec![SourceMessage::OwnerGone(":1.10".to_owned())],
        &FakeSysfs::default(),
    );
    assert_eq!(commits.len(), 1);
    assert_eq!(kinds(&commits[0]), ["unregistered", "updated"]);
    assert_eq!(commits[0].save, [Lifetime::Owner, Lifetime::Persistent]);
    assert_eq!(
        core.registry()
            .get("stays")
            .map(|parent| parent.owner.clone()),
        Some(String::new())
    );
    assert!(core.userspace_owners().is_empty());
}

#[test]
fn a_kernel_parent_waiting_for_a_userspace_name_takes_it_when_freed() {
    let (mut core, _) = core();
    let sysfs = FakeSysfs::default();
    register(&mut core, "0000:00:02.0", ":1.3", Lifetime::Owner);
    let info = kernel("0000:00:02.0", 4);
    sysfs.put(info.clone());
    let commits = core.sources(vec![hint(&info.devpath)], &sysfs);
    assert!(commits.is_empty(), "waits while the name is taken");
    let commits = core.sources(vec![SourceMessage::OwnerGone(":1.3".to_owned())], &sysfs);
    assert_eq!(kinds(&commits[0]), ["unregistered", "registered"]);
    let transitions: Vec<_> = commits[0]
        .transitions()
        .map(|(parent, state, _)| (parent.source, state))
        .collect();
    assert_eq!(
        transitions,
        [
            (Source::Userspace, crate::emit::MdevState::Unregistered),
            (Source::Kernel, crate::emit::MdevState::Registered)
        ]
    );
}

#[test]
fn undoing_a_registration_lets_a_waiting_kernel_parent_take_the_name_and_shows_only_that() {
    let (mut core, _) = core();
    let sysfs = FakeSysfs::default();
    let commit = register(&mut core, "0000:00:02.0", ":1.3", Lifetime::Owner);
    // While its state file is written, the kernel parent of that name
    // appears: it waits for the name.
    let info = kernel("0000:00:02.0", 4);
    sysfs.put(info.clone());
    assert!(core.sources(vec![hint(&info.devpath)], &sysfs).is_empty());
    let err = io::Error::new(io::ErrorKind::PermissionDenied, "read-only");
    let undone = core.undo(commit, &err);
    // The userspace registration was never shown: only the kernel parent
    // taking the name is.
    let transitions: Vec<_> = undone
        .transitions()
        .map(|(parent, state, _)| (parent.source, state))
        .collect();
    assert_eq!(
        transitions,
        [(Source::Kernel, crate::emit::MdevState::Registered)]
    );
    assert_eq!(undone.save, [Lifetime::Owner]);
    let registry = core.registry();
    assert_eq!(
        registry.get("0000:00:02.0").map(|parent| parent.source),
        Some(Source::Kernel)
    );
}

#[test]
fn a_registration_at_a_kernel_device_is_refused_and_changes_nothing() {
    let (mut core, _) = core();
    let sysfs = FakeSysfs::default();
    sysfs.put(kernel("0000:00:02.0", 1));
    let mut hostile = user_registration("hostile", Lifetime::Persistent);
    hostile.info.devpath = kernel("0000:00:02.0", 1).devpath;
    let before = Registry::clone(&core.registry());
    let commit = core.register(
        hostile,
        ":1.7".to_owned(),
        0,
        method_call("RegisterParent"),
        &sysfs,
    );
    assert!(commit.events.is_empty() && commit.save.is_empty());
    match commit.replies.into_iter().next().map(|reply| reply.result) {
        Some(Err(dbus::Error::InvalidArgument(message))) => {
            assert!(message.contains("existing sysfs device"), "{message}")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert_eq!(*core.registry(), before);
}

#[test]
fn rescan_calls_are_answered_by_a_scan_that_started_after_them() {
    let (mut core, counters) = core();
    let sysfs = FakeSysfs::default();
    let empty = || {
        Ok(Scan {
            parents: Vec::new(),
            warnings: Vec::new(),
        })
    };
    assert_eq!(core.rescan_call(method_call("Rescan")), Some("Rescan()"));
    // A second call while the scan runs waits for the next one.
    assert_eq!(core.rescan_call(method_call("Rescan")), None);
    let first = core.scan_finished(empty(), &sysfs);
    assert_eq!(first.replies.len(), 1);
    assert_eq!(first.start_scan, Some("Rescan()"));
    let second = core.scan_finished(empty(), &sysfs);
    assert_eq!(second.replies.len(), 1);
    assert!(matches!(second.replies[0].result, Ok(ReplyValue::Unit)));
    assert_eq!(second.start_scan, None);
    assert_eq!(counters.get(Counter::Rescans), 2);
    // A scan that failed answers with an error.
    core.rescan_call(method_call("Rescan"));
    let failed = core.scan_finished(Err("panicked".to_owned()), &sysfs);
    assert!(failed.replies[0].result.is_err());
}

#[test]
fn the_initial_load_counts_kernel_registrations() {
    let (mut core, counters) = core();
    core.load_initial(Scan {
        parents: vec![kernel("a", 1), kernel("b", 1)],
        warnings: Vec::new(),
    });
    assert_eq!(counters.get(Counter::RegistrationsKernel), 2);
    assert_eq!(counters.get(Counter::UnregistrationsKernel), 0);
}

/// No mdev parents; counts the re-reads of the vendor-VFIO parents, and
/// says which PCI devices can concern them.
struct VendorProbe {
    /// Devpaths of devices that are (or can have) vendor-VFIO VFs.
    related: Vec<String>,
    /// What a re-read of the vendor-VFIO parents finds.
    vfs: Vec<ParentInfo>,
    rereads: std::cell::Cell<usize>,
}

impl ParentReader for VendorProbe {
    fn read_parent(&self, _devpath: &str) -> ParentRead {
        ParentRead::NotAParent
    }

    fn check_location(&self, _devpath: &str, _subsystem: &str) -> Result<(), Crossing> {
        Ok(())
    }

    fn vendor_parents(&self) -> Option<Vec<ParentInfo>> {
        self.rereads.set(self.rereads.get() + 1);
        Some(self.vfs.clone())
    }

    fn may_concern_vendor_parents(&self, devpath: &str) -> bool {
        self.related.iter().any(|related| related == devpath)
    }
}

#[test]
fn vendor_parents_are_re_read_for_pci_devices_that_can_concern_them() {
    let (mut core, _) = core();
    let vf_devpath = "/devices/pci0000:40/0000:40:01.0/0000:41:00.4";
    let mut vf = pci_parent("0000:41:00.4", "nvidia", vec![mtype("nvidia-100", 1)]);
    vf.devpath = vf_devpath.to_owned();
    vf.backend = Backend::NvidiaVfio;
    let probe = VendorProbe {
        related: vec![vf_devpath.to_owned()],
        vfs: vec![vf],
        rereads: std::cell::Cell::new(0),
    };
    // A GPU or NIC that is no SR-IOV function, none registered: not re-read.
    let plain = "/devices/pci0000:00/0000:00:02.0";
    assert!(core.sources(vec![hint(plain)], &probe).is_empty());
    assert_eq!(probe.rereads.get(), 0);
    // Not a PCI device: never.
    core.sources(vec![hint("/devices/virtual/net/lo")], &probe);
    assert_eq!(probe.rereads.get(), 0);
    // The VF: re-read, found, registered.
    let commits = core.sources(vec![hint(vf_devpath)], &probe);
    assert_eq!(probe.rereads.get(), 1);
    assert_eq!(kinds(&commits[0])[0], "registered");
    assert!(core.has_vendor_parents());
    // Once one is registered, any PCI device's uevent re-reads them (a VF
    // that is gone has no files to look at).
    core.sources(vec![hint(plain)], &probe);
    assert_eq!(probe.rereads.get(), 2);
}
