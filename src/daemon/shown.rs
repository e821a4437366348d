//! The registry as readers see it: only what has been shown.
//!
//! The core applies every input to its registry at once (it must, to
//! decide the next one), but a registration is shown — uevent, signals,
//! reply — only once its state file is durable, and it is taken back
//! without a trace if the file cannot be written ([`super::saves`]). The
//! read-only calls (`GetManagedObjects`, `ListParents`, properties, the
//! documents, metrics) are answered from a second registry that the sink
//! brings up to date with each commit's events as it carries the commit
//! out ([`Registry::replay`]), right before handing its signals to the
//! sender: a reader never sees a registration whose save is still in
//! flight or failed, and never a change the signals have not announced
//! (it may see one a moment before its signal is on the bus).
//!
//! The copy shares every parent with the core's registry (`Arc`s) until an
//! event replaces it; replaying a commit costs what its events hold. The
//! core's own registry is never held by a reader, so changing it never
//! copies its map.

use std::sync::{Arc, RwLock};

use crate::dbus::SharedRegistry;
use crate::registry::{Event, Registry};

/// What readers are answered from.
#[derive(Clone, Debug)]
pub struct Shown(SharedRegistry);

impl Shown {
    /// Readers see `registry` (what the daemon starts with is shown).
    pub fn new(registry: &Registry) -> Shown {
        Shown(Arc::new(RwLock::new(Arc::new(registry.clone()))))
    }

    /// Starts over from `registry` (at start-up, before anything is served).
    pub fn reset(&self, registry: &Registry) {
        *self.write() = Arc::new(registry.clone());
    }

    /// The handle the server and the metrics read.
    pub fn shared(&self) -> SharedRegistry {
        Arc::clone(&self.0)
    }

    /// The registry readers see now.
    pub fn snapshot(&self) -> Arc<Registry> {
        crate::dbus::snapshot(&self.0)
    }

    /// Shows `events` (a commit being carried out). A reader holding the
    /// previous snapshot keeps it; the map is copied only then.
    pub fn show(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        Arc::make_mut(&mut self.write()).replay(events);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Arc<Registry>> {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
