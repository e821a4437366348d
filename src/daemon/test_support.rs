//! Fixtures shared by the daemon's unit tests (core, saves, shown; test
//! builds only): a core on an empty registry in memory, a sysfs with nothing
//! in it, a userspace registration made the usual way, and how a state
//! write ended.

use std::io;
use std::sync::{Arc, RwLock};

use super::commit::Commit;
use super::core::{Core, ParentReader};
use super::counters::Counters;
use super::saves::{WriteId, Written};
use crate::boundary::Crossing;
use crate::dbus::SharedRegistry;
use crate::model::Lifetime;
use crate::registry::Registry;
use crate::sysfs::ParentRead;
use crate::test_support::{method_call, user_registration};

/// No sysfs: no device anywhere, every location free.
pub(super) struct NoSysfs;

impl ParentReader for NoSysfs {
    fn read_parent(&self, _devpath: &str) -> ParentRead {
        ParentRead::NotAParent
    }

    fn check_location(&self, _devpath: &str, _subsystem: &str) -> Result<(), Crossing> {
        Ok(())
    }
}

/// A core on an empty registry, and the counters it counts in.
pub(super) fn core() -> (Core, Arc<Counters>) {
    let counters = Arc::new(Counters::new());
    let registry: SharedRegistry = Arc::new(RwLock::new(Arc::new(Registry::new())));
    (Core::new(registry, Arc::clone(&counters)), counters)
}

/// `name` (see [`user_registration`]) registered by `owner` (uid 0) with
/// the core, no sysfs behind it.
pub(super) fn register(core: &mut Core, name: &str, owner: &str, lifetime: Lifetime) -> Commit {
    core.register(
        user_registration(name, lifetime),
        owner.to_owned(),
        0,
        method_call("RegisterParent"),
        &NoSysfs,
    )
}

/// The state write `id` ended well.
pub(super) fn ok(id: WriteId) -> Written {
    Written {
        id,
        failed: Vec::new(),
    }
}

/// The state write `id` failed (disk full) for the file of `lifetime`.
pub(super) fn failed(id: WriteId, lifetime: Lifetime) -> Written {
    Written {
        id,
        failed: vec![(
            lifetime,
            Arc::new(io::Error::new(io::ErrorKind::StorageFull, "disk full")),
        )],
    }
}
