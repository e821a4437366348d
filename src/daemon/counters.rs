//! The daemon's counters: one atomic per [`Counter`] and per kind of
//! rejected netlink message, bumped from any task without a lock or a
//! string, read whole for the `Stats` property (and any other renderer).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::uevent::Reject;

/// What is counted. The name of each is its key in the `Stats` property.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Kernel uevents that passed the trust check.
    UeventsReceived,
    /// Own injected events seen again (recognised by MDEVREG_SEQNUM).
    UeventsOwn,
    /// Events about devices that are not (and are not under) an mdev parent.
    UeventsIgnored,
    /// Messages dropped by the trust check (all reasons; per reason in
    /// [`RejectKind`]).
    UeventsRejected,
    /// Receive buffer overflows (ENOBUFS).
    NetlinkOverflows,
    /// Gaps in the kernel SEQNUM sequence.
    SeqnumGaps,
    /// Full sysfs rescans (overflow, gap, Rescan()).
    Rescans,
    /// Uevents emitted by injection.
    UeventsInjected,
    /// Uevents emitted by broadcast.
    UeventsBroadcast,
    /// Uevents that could not be emitted.
    UeventEmitFailures,
    /// State file saves that failed.
    StateSaveFailures,
    /// Userspace registrations restored from the state files at start.
    ParentsRestored,
    /// Uevents of userspace parents not emitted because their location
    /// now names a kernel device or subsystem ([`crate::boundary`]).
    UeventsRefusedBoundary,
    /// Parents registered (ParentRegistered events), by source.
    RegistrationsKernel,
    RegistrationsUserspace,
    /// Parents unregistered (ParentUnregistered events), by source.
    UnregistrationsKernel,
    UnregistrationsUserspace,
    /// Synthetic `change` uevents written to vendor-VFIO VFs' `uevent` files.
    UeventsSynthetic,
    /// Checks of the vendor-VFIO VFs' files (`--poll-interval`).
    VendorPolls,
}

impl Counter {
    /// Every counter, in the order they are shown.
    pub const ALL: [Counter; 19] = [
        Counter::UeventsReceived,
        Counter::UeventsOwn,
        Counter::UeventsIgnored,
        Counter::UeventsRejected,
        Counter::NetlinkOverflows,
        Counter::SeqnumGaps,
        Counter::Rescans,
        Counter::UeventsInjected,
        Counter::UeventsBroadcast,
        Counter::UeventEmitFailures,
        Counter::StateSaveFailures,
        Counter::ParentsRestored,
        Counter::UeventsRefusedBoundary,
        Counter::RegistrationsKernel,
        Counter::RegistrationsUserspace,
        Counter::UnregistrationsKernel,
        Counter::UnregistrationsUserspace,
        Counter::UeventsSynthetic,
        Counter::VendorPolls,
    ];

    /// Stable key (the `Stats` property, `mdevreg stats`).
    pub fn name(self) -> &'static str {
        match self {
            Counter::UeventsReceived => "uevents_received",
            Counter::UeventsOwn => "uevents_own",
            Counter::UeventsIgnored => "uevents_ignored",
            Counter::UeventsRejected => "uevents_rejected",
            Counter::NetlinkOverflows => "netlink_overflows",
            Counter::SeqnumGaps => "seqnum_gaps",
            Counter::Rescans => "rescans",
            Counter::UeventsInjected => "uevents_injected",
            Counter::UeventsBroadcast => "uevents_broadcast",
            Counter::UeventEmitFailures => "uevent_emit_failures",
            Counter::StateSaveFailures => "state_save_failures",
            Counter::ParentsRestored => "parents_restored",
            Counter::UeventsRefusedBoundary => "uevents_refused_boundary",
            Counter::RegistrationsKernel => "registrations_kernel",
            Counter::RegistrationsUserspace => "registrations_userspace",
            Counter::UnregistrationsKernel => "unregistrations_kernel",
            Counter::UnregistrationsUserspace => "unregistrations_userspace",
            Counter::UeventsSynthetic => "uevents_synthetic",
            Counter::VendorPolls => "vendor_polls",
        }
    }

    /// One line saying what it counts (for renderers that want help text).
    pub fn help(self) -> &'static str {
        match self {
            Counter::UeventsReceived => "Kernel uevents that passed the trust check.",
            Counter::UeventsOwn => "Own injected uevents seen again.",
            Counter::UeventsIgnored => "Uevents about devices that are no mdev parent.",
            Counter::UeventsRejected => "Netlink messages dropped by the trust check.",
            Counter::NetlinkOverflows => "Uevent receive buffer overflows.",
            Counter::SeqnumGaps => "Gaps in the kernel uevent SEQNUM sequence.",
            Counter::Rescans => "Full sysfs rescans.",
            Counter::UeventsInjected => "Uevents emitted by kernel injection.",
            Counter::UeventsBroadcast => "Uevents emitted as libudev broadcasts.",
            Counter::UeventEmitFailures => "Uevents that could not be emitted.",
            Counter::StateSaveFailures => "State file saves that failed.",
            Counter::ParentsRestored => "Registrations restored from the state files.",
            Counter::UeventsRefusedBoundary => {
                "Uevents of userspace parents not sent: their location is a kernel device's."
            }
            Counter::RegistrationsKernel => "Kernel parents registered.",
            Counter::RegistrationsUserspace => "Userspace parents registered.",
            Counter::UnregistrationsKernel => "Kernel parents unregistered.",
            Counter::UnregistrationsUserspace => "Userspace parents unregistered.",
            Counter::UeventsSynthetic => {
                "Synthetic change uevents written for vendor-VFIO parents."
            }
            Counter::VendorPolls => "Checks of the vendor-VFIO virtual functions' files.",
        }
    }
}

/// Why a netlink message was rejected, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectKind {
    Truncated,
    NotKernelGroup,
    NotKernelPort,
    NoCredentials,
    NonRootSender,
    LibudevFormat,
    Malformed,
}

impl RejectKind {
    pub const ALL: [RejectKind; 7] = [
        RejectKind::Truncated,
        RejectKind::NotKernelGroup,
        RejectKind::NotKernelPort,
        RejectKind::NoCredentials,
        RejectKind::NonRootSender,
        RejectKind::LibudevFormat,
        RejectKind::Malformed,
    ];

    pub fn of(reject: &Reject) -> RejectKind {
        match reject {
            Reject::Truncated => RejectKind::Truncated,
            Reject::NotKernelGroup { .. } => RejectKind::NotKernelGroup,
            Reject::NotFromKernelPort { .. } => RejectKind::NotKernelPort,
            Reject::NoCredentials => RejectKind::NoCredentials,
            Reject::NonRootSender { .. } => RejectKind::NonRootSender,
            Reject::LibudevFormat => RejectKind::LibudevFormat,
            Reject::Malformed(_) => RejectKind::Malformed,
        }
    }

    /// Short stable name; the `Stats` key is `uevents_rejected_<name>`.
    pub fn name(self) -> &'static str {
        match self {
            RejectKind::Truncated => "truncated",
            RejectKind::NotKernelGroup => "not_kernel_group",
            RejectKind::NotKernelPort => "not_kernel_port",
            RejectKind::NoCredentials => "no_credentials",
            RejectKind::NonRootSender => "non_root_sender",
            RejectKind::LibudevFormat => "libudev_format",
            RejectKind::Malformed => "malformed",
        }
    }

    /// The `Stats` key.
    pub fn key(self) -> &'static str {
        match self {
            RejectKind::Truncated => "uevents_rejected_truncated",
            RejectKind::NotKernelGroup => "uevents_rejected_not_kernel_group",
            RejectKind::NotKernelPort => "uevents_rejected_not_kernel_port",
            RejectKind::NoCredentials => "uevents_rejected_no_credentials",
            RejectKind::NonRootSender => "uevents_rejected_non_root_sender",
            RejectKind::LibudevFormat => "uevents_rejected_libudev_format",
            RejectKind::Malformed => "uevents_rejected_malformed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The `Stats` key holding the Unix time in milliseconds of the last
/// kernel uevent received (or of the start of listening); 0 when the daemon
/// does not listen. Not a counter: a time, so that a client (`mdevreg
/// metrics`) shows the same `mdevreg_last_uevent_timestamp_seconds` as the
/// daemon's own outputs.
pub const LAST_UEVENT_KEY: &str = "last_uevent_timestamp_ms";

/// [`LAST_UEVENT_KEY`]'s value in seconds; `None` for 0 (not listening).
pub fn last_uevent_seconds(ms: u64) -> Option<f64> {
    match ms {
        0 => None,
        ms => Some(ms as f64 / 1000.0),
    }
}

/// The counters: shared (`Arc`) by the sources, the loop and the D-Bus
/// server. Relaxed atomics: each value is exact, the set is not a
/// consistent cut (it never needs to be).
#[derive(Debug, Default)]
pub struct Counters {
    values: [AtomicU64; Counter::ALL.len()],
    rejected: [AtomicU64; RejectKind::ALL.len()],
    /// Unix time in ms of the last kernel uevent received (or of the start
    /// of listening); 0 before.
    last_uevent_ms: AtomicU64,
    /// Sequence number of the last registry event shown (signalled), or of
    /// the state the daemon started with: the `SeqNum` property. Events
    /// applied but waiting for their state file are not counted, so a
    /// number once read is never reused after a crash.
    shown_seqnum: AtomicU64,
}

impl Counters {
    pub fn new() -> Counters {
        Counters::default()
    }

    /// Adds one to `counter`.
    pub fn bump(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Adds `count` to `counter`.
    pub fn add(&self, counter: Counter, count: u64) {
        self.values[counter as usize].fetch_add(count, Ordering::Relaxed);
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize].load(Ordering::Relaxed)
    }

    /// Counts a rejected netlink message: the total and its reason.
    pub fn reject(&self, reject: &Reject) {
        self.bump(Counter::UeventsRejected);
        self.rejected[RejectKind::of(reject).index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a registry event about a parent registering or leaving.
    pub fn registry_event(&self, kind: &crate::registry::EventKind) {
        use crate::model::Source;
        use crate::registry::EventKind;
        let counter = match kind {
            EventKind::ParentRegistered { parent } => match parent.source {
                Source::Kernel => Counter::RegistrationsKernel,
                Source::Userspace => Counter::RegistrationsUserspace,
            },
            EventKind::ParentUnregistered { parent } => match parent.source {
                Source::Kernel => Counter::UnregistrationsKernel,
                Source::Userspace => Counter::UnregistrationsUserspace,
            },
            _ => return,
        };
        self.bump(counter);
    }

    /// Events up to `seqnum` are shown (or the daemon starts with them).
    pub fn show_seqnum(&self, seqnum: u64) {
        self.shown_seqnum.fetch_max(seqnum, Ordering::Relaxed);
    }

    /// See [`Counters::show_seqnum`].
    pub fn shown_seqnum(&self) -> u64 {
        self.shown_seqnum.load(Ordering::Relaxed)
    }

    /// Records now as the time of the last kernel uevent (called at the
    /// start of listening too).
    pub fn mark_uevent(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        self.last_uevent_ms.store(now, Ordering::Relaxed);
    }

    /// Unix time in seconds of the last kernel uevent (or of the start of
    /// listening); `None` when not listening.
    pub fn last_uevent_seconds(&self) -> Option<f64> {
        last_uevent_seconds(self.last_uevent_ms.load(Ordering::Relaxed))
    }

    pub fn rejected(&self, kind: RejectKind) -> u64 {
        self.rejected[kind.index()].load(Ordering::Relaxed)
    }

    /// Every counter by its `Stats` key, zeros included, and
    /// [`LAST_UEVENT_KEY`] (the time of the last kernel uevent, 0 when not
    /// listening).
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut all: BTreeMap<String, u64> = Counter::ALL
            .iter()
            .map(|&counter| (counter.name().to_owned(), self.get(counter)))
            .collect();
        for kind in RejectKind::ALL {
            all.insert(kind.key().to_owned(), self.rejected(kind));
        }
        all.insert(
            LAST_UEVENT_KEY.to_owned(),
            self.last_uevent_ms.load(Ordering::Relaxed),
        );
        all
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::uevent::DecodeError;

    #[test]
    fn names_are_distinct_and_every_counter_is_shown() {
        let counters = Counters::new();
        let snapshot = counters.snapshot();
        assert_eq!(
            snapshot.len(),
            Counter::ALL.len() + RejectKind::ALL.len() + 1
        );
        assert!(snapshot.values().all(|&value| value == 0));
        assert_eq!(snapshot.get(LAST_UEVENT_KEY), Some(&0));
        for (index, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index, "ALL is in declaration order");
        }
        for (index, kind) in RejectKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), index);
            assert_eq!(kind.key(), format!("uevents_rejected_{}", kind.name()));
        }
        // The metrics' `reason` label values are these names.
        assert_eq!(
            crate::metrics::REJECT_REASONS,
            RejectKind::ALL.map(RejectKind::name)
        );
    }

    #[test]
    fn the_last_uevent_time_is_in_the_snapshot_in_milliseconds() {
        let counters = Counters::new();
        assert_eq!(counters.last_uevent_seconds(), None);
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64;
        counters.mark_uevent();
        let ms = counters.snapshot()[LAST_UEVENT_KEY];
        assert!(ms >= before, "{ms} < {before}");
        // What a client computes from the key is what the daemon shows.
        assert_eq!(last_uevent_seconds(ms), counters.last_uevent_seconds());
        assert_eq!(last_uevent_seconds(1_500), Some(1.5));
    }

    #[test]
    fn registrations_and_unregistrations_count_by_source() {
        use crate::model::{Lifetime, Parent, ParentInfo, Source};
        use crate::registry::EventKind;
        let parent = |source| Parent {
            info: ParentInfo::default(),
            source,
            owner: String::new(),
            lifetime: Lifetime::Kernel,
            registered_seqnum: 1,
            uid: 0,
        };
        let counters = Counters::new();
        for kind in [
            EventKind::ParentRegistered {
                parent: parent(Source::Kernel),
            },
            EventKind::ParentRegistered {
                parent: parent(Source::Userspace),
            },
            EventKind::ParentRegistered {
                parent: parent(Source::Userspace),
            },
            EventKind::ParentUnregistered {
                parent: parent(Source::Userspace),
            },
            EventKind::ParentUpdated {
                before: parent(Source::Kernel),
                after: parent(Source::Kernel),
            },
        ] {
            counters.registry_event(&kind);
        }
        let snapshot = counters.snapshot();
        assert_eq!(snapshot["registrations_kernel"], 1);
        assert_eq!(snapshot["registrations_userspace"], 2);
        assert_eq!(snapshot["unregistrations_kernel"], 0);
        assert_eq!(snapshot["unregistrations_userspace"], 1);
        // The exposition reads those keys.
        let values = crate::metrics::counters_from_stats(&snapshot);
        assert_eq!(values.registrations, [("kernel", 1), ("userspace", 2)]);
        assert_eq!(values.unregistrations, [("kernel", 0), ("userspace", 1)]);
    }

    #[test]
    fn rejections_count_by_reason_and_in_total() {
        let rejects = [
            Reject::Truncated,
            Reject::NotKernelGroup { groups: 2 },
            Reject::NotFromKernelPort { port: 9 },
            Reject::NoCredentials,
            Reject::NonRootSender { uid: 1 },
            Reject::LibudevFormat,
            Reject::Malformed(DecodeError::Header),
        ];
        let kinds: HashSet<RejectKind> = rejects.iter().map(RejectKind::of).collect();
        assert_eq!(kinds.len(), rejects.len());
        let counters = Counters::new();
        for reject in &rejects {
            counters.reject(reject);
        }
        counters.reject(&Reject::NoCredentials);
        assert_eq!(counters.get(Counter::UeventsRejected), 8);
        assert_eq!(counters.rejected(RejectKind::NoCredentials), 2);
        assert_eq!(counters.snapshot()["uevents_rejected_not_kernel_port"], 1);
        counters.add(Counter::Rescans, 3);
        assert_eq!(counters.snapshot()["rescans"], 3);
    }
}
