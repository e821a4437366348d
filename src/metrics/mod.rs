//! Prometheus metrics: the registry and the daemon's counters in
//! Prometheus' exposition formats ([`exposition`], pure; [`cache`] keeps it
//! per registry sequence number and re-renders only changed parents), and the two ways out of the daemon: a file
//! for node_exporter's textfile collector ([`textfile`]) and an HTTP
//! listener answering `GET /metrics` ([`http`]). `mdevreg metrics` prints
//! the same exposition.

pub mod cache;
pub mod exposition;
pub mod http;
pub mod outputs;
pub mod textfile;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use cache::ExpositionCache;
pub use exposition::{
    render, CounterValues, Exposition, Format, ParentList, RegistryPart, RegistryView,
};

use crate::daemon::{last_uevent_seconds, Counter, Counters, RejectKind, LAST_UEVENT_KEY};

/// Rejection reasons, as the `reason` label shows them (the keys of
/// [`crate::daemon::RejectKind::name`]).
pub const REJECT_REASONS: [&str; 7] = [
    "truncated",
    "not_kernel_group",
    "not_kernel_port",
    "no_credentials",
    "non_root_sender",
    "libudev_format",
    "malformed",
];

/// The daemon's named counters (the `Stats` property) as the exposition
/// shows them; counters never bumped are 0, and the last uevent's time
/// comes from the `last_uevent_timestamp_ms` key (absent or 0: no gauge). `mdevreg metrics` uses it on
/// the `Stats` it reads, the daemon on its own counters.
pub fn counters_from_stats(stats: &BTreeMap<String, u64>) -> CounterValues {
    let get = |counter: Counter| stats.get(counter.name()).copied().unwrap_or(0);
    CounterValues {
        uevents_received: get(Counter::UeventsReceived),
        uevents_rejected: RejectKind::ALL
            .iter()
            .map(|kind| (kind.name(), stats.get(kind.key()).copied().unwrap_or(0)))
            .collect(),
        rescans: get(Counter::Rescans),
        netlink_overflows: get(Counter::NetlinkOverflows),
        uevent_seqnum_gaps: get(Counter::SeqnumGaps),
        registrations: vec![
            ("kernel", get(Counter::RegistrationsKernel)),
            ("userspace", get(Counter::RegistrationsUserspace)),
        ],
        unregistrations: vec![
            ("kernel", get(Counter::UnregistrationsKernel)),
            ("userspace", get(Counter::UnregistrationsUserspace)),
        ],
        uevents_emitted: vec![
            ("inject", get(Counter::UeventsInjected)),
            ("broadcast", get(Counter::UeventsBroadcast)),
        ],
        uevent_emit_failures: get(Counter::UeventEmitFailures),
        state_save_failures: get(Counter::StateSaveFailures),
        last_uevent_timestamp_seconds: last_uevent_seconds(
            stats.get(LAST_UEVENT_KEY).copied().unwrap_or(0),
        ),
    }
}

/// The daemon's own counters as the exposition shows them: the same
/// `Stats` a client reads, so both show the same values.
pub fn counter_values(counters: &Counters) -> CounterValues {
    counters_from_stats(&counters.snapshot())
}

/// The daemon's exposition: its registry (read through `view`), the
/// rendering cache and its counters; what both ways out serve.
pub struct MetricsSource {
    view: Arc<dyn RegistryView>,
    cache: ExpositionCache,
    counters: Box<dyn Fn() -> CounterValues + Send + Sync>,
}

impl MetricsSource {
    pub fn new(
        view: Arc<dyn RegistryView>,
        counters: impl Fn() -> CounterValues + Send + Sync + 'static,
    ) -> MetricsSource {
        MetricsSource {
            view,
            cache: ExpositionCache::new(),
            counters: Box::new(counters),
        }
    }

    /// The registry's sequence number now (cheap).
    pub fn seqnum(&self) -> u64 {
        self.view.seqnum()
    }
}

impl http::ExpositionSource for MetricsSource {
    fn exposition(&self, format: Format) -> Exposition {
        let counters = (self.counters)();
        self.cache.exposition(&self.view, Some(&counters), format)
    }
}

impl std::fmt::Debug for MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSource")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}
