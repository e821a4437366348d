//! Helpers shared by the integration tests; each test crate uses a subset.
#![allow(dead_code)]

pub mod bus;
pub mod daemon;
pub mod gdbus;
pub mod helper_process;
pub mod lines;
pub mod metrics;
pub mod netns;
pub mod polkit;
pub mod prereq;
pub mod prometheus;
pub mod registry_client;
pub mod registry_signals;
pub mod sysfs_fixture;
pub mod tree_ops;
pub mod udevd;
pub mod uevent_netlink;

/// The unprivileged uid (and gid) that tests drop to through `setpriv`.
pub const NOBODY: u32 = 65534;
